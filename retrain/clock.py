"""Time, owned in one place: "now", instants, durations and timestamp columns, all as naive UTC.

Retrain's convention is naive UTC everywhere (the warehouse, MLflow params, flow parameters), so an
aware value is converted once at the edge and nothing downstream compares aware with naive.

"Now" is read only through `now()`, and only where the wall clock is the point (an ingest's default
reference time, a ledger row's `recorded_at`, a served prediction's request time, a label's arrival); a flow
that depends on time takes `as_of` instead, so a replay of a year gives the same results as living through it.
Tests freeze the clock with `frozen_clock`.

Which clock each flow runs on when no `as_of` is given: the one rule. Every flow calls one of the two functions
below, and nothing else decides a default.

| flow | clock | default `as_of` |
|---|---|---|
| ingest-new-rows, ingest-when-new-rows | arrival (`arrival_as_of`) | `now()` |
| train-model, monitor-model | model (`model_as_of`) | just after the newest clean row |
| release-model, check-canary, promote-, reject-, roll-back-model | model (`model_as_of`) | the same |

Why: rows arrive on the wall clock (what is dated after now, plus the contract's tolerance, has not arrived yet);
the same data must give the same training snapshot and monitoring window whenever they run; a served prediction is
logged with its event time (the record's timestamp, else the request time) beside its request time, and a label
with the instant it matured, so the canary check, bake windows and monitoring select by event time on the model's
clock and a replay reads the same rows as a live system. Ledger rows carry that instant (`at`, by which `status`
orders them) and the wall time they were written (`recorded_at`).

A replay passes `as_of` to every flow, so each reads exactly what it would have read at that instant.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING

from retrain.errors import DataError

if TYPE_CHECKING:  # pandas, numpy and pyarrow load inside `parse_timestamps`: `retrain --help` needs none of them
    import numpy as np
    import pandas as pd

Clock = Callable[[], datetime]


def wall_clock() -> datetime:
    """The machine's clock as naive UTC."""
    return datetime.now(UTC).replace(tzinfo=None)


_clock: list[Clock] = [wall_clock]  # a one-slot stack, so `frozen_clock` can restore what it replaced


def now() -> datetime:
    """Now, as naive UTC, from the injected clock (the wall clock unless a test froze it)."""
    return _clock[-1]()


@contextlib.contextmanager
def frozen_clock(moment: datetime | str) -> Iterator[datetime]:
    """Make `now()` return `moment` inside the block (tests and replays); restores the clock after."""
    fixed = parse_instant(moment)
    _clock.append(lambda: fixed)
    try:
        yield fixed
    finally:
        _clock.pop()


class ReplayClock:
    """A clock a replay moves forward by hand: `now()` reads it while `replaying` holds it, in every thread (the
    prediction server of a replay stamps its requests with it). It never moves backwards."""

    def __init__(self, start: datetime | str) -> None:
        self.moment = parse_instant(start)

    def __call__(self) -> datetime:
        return self.moment

    def advance_to(self, moment: datetime) -> datetime:
        """Move to `moment`.

        Raises:
            ValueError: `moment` is before the clock's current instant.
        """
        if moment < self.moment:
            raise ValueError(f"a replay clock does not go back: {moment.isoformat()} < {self.moment.isoformat()}")
        self.moment = moment
        return moment


@contextlib.contextmanager
def replaying(clock: ReplayClock) -> Iterator[ReplayClock]:
    """Make `now()` read `clock` inside the block; restores the clock after."""
    _clock.append(clock)
    try:
        yield clock
    finally:
        _clock.pop()


JUST_AFTER = timedelta(microseconds=1)  # windows are half-open: as_of = newest + 1 µs includes the newest row


def model_as_of(as_of: datetime | None, newest: datetime | None, table: str) -> datetime:
    """The model's clock: the given instant (naive UTC), or just after the newest clean row, never the wall clock.

    Args:
        as_of: The instant asked for, if any.
        newest: The newest timestamp of the clean table (None when it holds no row).
        table: The clean table, for the message.

    Raises:
        DataError: nothing given and the clean table holds no row, so there is nothing to run on.
    """
    if as_of is not None:
        return as_naive_utc(as_of)
    if newest is None:
        raise DataError(f"table '{table}' holds no clean row yet: run `retrain ingest` first, or pass --as-of")
    return newest + JUST_AFTER


def shown(moment: datetime) -> str:
    """An instant as people read it, to the second (`2013-06-01 03:00:00`): in names, descriptions and reasons.

    Machines keep the exact value (`isoformat()`): the model's clock is just after the newest row, a microsecond
    after it, which a person need not read.
    """
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def arrival_as_of(as_of: datetime | None) -> datetime:
    """The arrival clock: the given instant (naive UTC), or now, for flows where what has happened by now matters."""
    return as_naive_utc(as_of) if as_of is not None else now()


def years_before(moment: datetime, years: int) -> datetime:
    """The same calendar instant `years` earlier; 29 February becomes 28 February in a year without one."""
    try:
        return moment.replace(year=moment.year - years)
    except ValueError:  # 29 February, and the target year is not a leap year
        return moment.replace(year=moment.year - years, day=28)


def as_naive_utc(moment: datetime) -> datetime:
    """Aware datetimes converted to UTC and made naive; naive ones are taken as UTC already."""
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo is not None else moment


# Every instant Retrain handles fits a pandas timestamp (nanoseconds since 1970 in 64 bits): windows, batches and
# the model's calendar features are computed in pandas. Whole microseconds, as Python's datetime holds them.
EARLIEST = datetime(1677, 9, 21, 0, 12, 43, 145225)
LATEST = datetime(2262, 4, 11, 23, 47, 16, 854775)


def check_supported(moment: datetime, what: object = None) -> datetime:
    """`moment` (naive UTC) if it lies in the range of instants Retrain handles, else a ValueError naming it.

    Args:
        moment: The instant, naive UTC.
        what: How the input was written, for the message (default: the instant).
    """
    if not EARLIEST <= moment <= LATEST:
        raise ValueError(f"{what if what is not None else moment.isoformat()!r} is {moment.isoformat()} UTC, outside "
                         f"the instants Retrain handles ({EARLIEST:%Y-%m-%d} to {LATEST:%Y-%m-%d}, pandas' range)")
    return moment


def parse_instant(value: datetime | date | str) -> datetime:
    """One instant from a datetime, a date or ISO 8601 text (`2013-04-01`, `2013-04-01T06:00+05:00`), as naive UTC
    in the range Retrain handles (`EARLIEST` to `LATEST`).

    Raises:
        ValueError: the text is not ISO 8601, or the instant (its offset applied) lies outside that range; the
            message quotes it.
    """
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day)
    else:
        text = value.strip()
        try:
            moment = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in "Zz" and text else text)
        except ValueError:
            raise ValueError(
                f"'{value}' is not an ISO 8601 date or time (e.g. 2013-04-01 or 2013-04-01T06:00)"
            ) from None
    try:
        naive = as_naive_utc(moment)
    except OverflowError:  # an offset pushed it past year 1 or 9999: outside the range as much as can be
        raise ValueError(f"{value!r} lies outside the instants Retrain handles once its UTC offset is applied "
                         f"({EARLIEST:%Y-%m-%d} to {LATEST:%Y-%m-%d}, pandas' range)") from None
    return check_supported(naive, value if isinstance(value, str) else None)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(d|h|m|days?|hours?|minutes?)\s*$", re.IGNORECASE)
_CALENDAR = re.compile(r"^\s*(\d+)\s*(mo|months?|y|years?)\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"d": 86_400, "h": 3_600, "m": 60}
MEAN_MONTH = timedelta(days=365.2425 / 12)  # a Gregorian month on average: how long a calendar month "is" elsewhere


class CalendarDuration(timedelta):
    """Whole calendar months (`1mo`, `3mo`, `1y` = 12 months): a window in months covers whole months.

    `30d` before 1 April starts on 2 March and drops 1 March; `1mo` before 1 April starts on 1 March. As a
    `timedelta` (comparisons such as "the model is older than retrain_every", sums, sorting) it is the mean
    Gregorian month times `months`; where a window starts, `shift_back` counts calendar months instead.
    """

    months: int

    def __new__(cls, months: int) -> CalendarDuration:
        if months <= 0:
            raise ValueError(f"a calendar duration must be at least one month, got {months}")
        duration = super().__new__(cls, seconds=round((MEAN_MONTH * months).total_seconds()))
        duration.months = months
        return duration

    def __reduce__(self) -> tuple[type[CalendarDuration], tuple[int]]:  # pickling (Prefect parameters, caches)
        return (CalendarDuration, (self.months,))

    def __repr__(self) -> str:
        return f"CalendarDuration(months={self.months})"

    def __str__(self) -> str:
        return format_duration(self)


def parse_duration(value: str | timedelta) -> timedelta:
    """A positive duration from `60d`, `36h`, `90m` (or `60 days`, `36 hours`), or calendar months and years
    from `1mo`, `3 months`, `1y` (a `CalendarDuration`); timedeltas pass through.

    Raises:
        ValueError: not a number followed by d, h, m, mo or y, or not positive.
    """
    if isinstance(value, timedelta):
        duration = value
    else:
        calendar = _CALENDAR.match(str(value))
        if calendar is not None:
            count = int(calendar.group(1))
            if count <= 0:
                raise ValueError(f"duration '{value}' must be positive")
            return CalendarDuration(count * (12 if calendar.group(2)[0].lower() == "y" else 1))
        match = _DURATION.match(str(value))
        if match is None:
            raise ValueError(f"'{value}' is not a duration: write a number and a unit, e.g. 60d, 36h, 90m, or 1mo "
                             "and 1y for calendar months and years")
        duration = timedelta(seconds=float(match.group(1)) * _UNIT_SECONDS[match.group(2)[0].lower()])
    if duration <= timedelta(0):
        raise ValueError(f"duration '{value}' must be positive")
    return duration


def format_duration(duration: timedelta) -> str:
    """The shortest exact form `parse_duration` reads back: `60d`, `36h`, `90m`, `1mo`, `1y`, or seconds as
    minutes."""
    if isinstance(duration, CalendarDuration):
        years, months = divmod(duration.months, 12)
        return f"{years}y" if not months else f"{duration.months}mo"
    seconds = duration.total_seconds()
    for unit in ("d", "h", "m"):
        count = seconds / _UNIT_SECONDS[unit]
        if count == int(count):
            return f"{int(count)}{unit}"
    return f"{seconds / 60:g}m"


def shift_back(moment: datetime, duration: timedelta) -> datetime:
    """`moment - duration`, counting calendar months for a `CalendarDuration` (31 March - 1mo = 28 February)."""
    if isinstance(duration, CalendarDuration):
        import pandas as pd  # here, not at import: commands that need no pandas do not load it

        return (pd.Timestamp(moment) - pd.DateOffset(months=duration.months)).to_pydatetime()
    return moment - duration


def shift_forward(moment: datetime, duration: timedelta) -> datetime:
    """`moment + duration`, counting calendar months for a `CalendarDuration`."""
    if isinstance(duration, CalendarDuration):
        import pandas as pd  # here, not at import: commands that need no pandas do not load it

        return (pd.Timestamp(moment) + pd.DateOffset(months=duration.months)).to_pydatetime()
    return moment + duration


@dataclass(frozen=True)
class Window:
    """A half-open time range `[start, end)`: adjacent windows never share a row."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.end <= self.start:
            raise ValueError(f"window end {self.end.isoformat()} must be after its start {self.start.isoformat()}")

    @classmethod
    def ending_at(cls, end: datetime, lookback: timedelta) -> Window:
        """The `lookback` before `end`: the training window of a model as of `end` (whole calendar months for a
        lookback in months)."""
        return cls(start=shift_back(end, lookback), end=end)

    def __str__(self) -> str:
        return f"[{shown(self.start)}, {shown(self.end)})"


# ------------------------------------------------------------------------------------ timestamp columns

# An explicit UTC offset after a time of day: `Z`, `+05:00`, `-0300`, `+05`. A date alone ("2013-01-02")
# ends in digits after a dash too, which is why a time must come first.
_OFFSET_SUFFIX = r"\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?\s*(?:[Zz]|[+-]\d{2}(?::?\d{2})?)\s*$"


@dataclass(frozen=True, eq=False)
class ParsedTimestamps:
    """A timestamp column parsed value by value: naive UTC values, and which inputs could not be parsed
    or carried an offset (and were converted to UTC)."""

    values: pd.Series
    unparseable: np.ndarray
    had_offset: np.ndarray


def parse_timestamps(values: pd.Series) -> ParsedTimestamps:
    """Parse ISO 8601 timestamps so that one value can never change another.

    pandas' `to_datetime(..., utc=True, format="ISO8601")` on a column mixing naive values and values
    with an offset applies the last offset seen to the naive values after it (measured: one `+05:00`
    shifted the naive rows of a whole batch by five hours). So the two forms are parsed apart: naive
    values stay as they are (taken as UTC), values with an offset are converted to UTC. Anything that
    is not ISO 8601 is unparseable: another format would be a guess (01/02 as Jan 2 or Feb 1).

    Args:
        values: The column as read: text, datetimes (aware or naive) or a mix, with nulls.
    """
    import numpy as np
    import pandas as pd
    import pyarrow as arrow
    import pyarrow.compute as arrow_compute

    size = len(values)
    nothing = np.zeros(size, dtype=bool)
    if pd.api.types.is_datetime64_any_dtype(values):
        aware = values.dt.tz is not None
        typed = values.dt.tz_convert("UTC").dt.tz_localize(None) if aware else values
        offsets = values.notna().to_numpy() if aware else nothing
        return ParsedTimestamps(typed.astype("datetime64[ns]"), nothing, offsets)
    objects = values.astype(object, copy=False)
    present = objects.notna().to_numpy()
    all_text = pd.api.types.infer_dtype(objects, skipna=True) in ("string", "empty")
    text = objects if all_text else objects.map(_as_text, na_action="ignore")
    if all_text:
        # The common case, first: pandas returns a naive column only when no value carried an offset (any
        # offset makes the result aware or mixed), and then one parse is right for every value. Measured on
        # 1M values: 0.11 s, against 0.37 s for finding the offsets first.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # mixed offsets warn; that case is parsed below
            naive = pd.to_datetime(text, errors="coerce", format="ISO8601")
        if naive.dtype == "datetime64[ns]":
            return ParsedTimestamps(naive, present & naive.isna().to_numpy(), nothing)
    has_offset = arrow_compute.fill_null(
        arrow_compute.match_substring_regex(
            arrow.array(text.to_numpy(), type=arrow.string(), from_pandas=True), _OFFSET_SUFFIX
        ),
        False,
    ).to_numpy(zero_copy_only=False)
    if not has_offset.any():  # the common case: one vectorised parse, leading and trailing spaces allowed
        parsed = pd.to_datetime(text, errors="coerce", format="ISO8601").astype("datetime64[ns]")
    else:
        parsed = pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns]")
        naive = present & ~has_offset
        parsed[naive] = pd.to_datetime(text[naive], errors="coerce", format="ISO8601").astype("datetime64[ns]")
        converted = pd.to_datetime(text[has_offset], errors="coerce", utc=True, format="ISO8601")
        parsed[has_offset] = converted.dt.tz_localize(None).astype("datetime64[ns]")
    unparseable = present & parsed.isna().to_numpy()
    return ParsedTimestamps(parsed, unparseable, has_offset & ~unparseable)


def _as_text(value: object) -> str:
    """A cell as ISO text: aware datetimes converted to UTC first (they carry their offset otherwise)."""
    if isinstance(value, datetime):  # a pandas Timestamp is a datetime
        return as_naive_utc(value).isoformat()
    return str(value)
