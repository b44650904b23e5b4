"""Time in one place: instants, durations, the injectable clock and per-value timestamp parsing."""

from __future__ import annotations

from datetime import datetime, timedelta

import pandas as pd
import pytest

from retrain.clock import (
    CalendarDuration,
    Window,
    format_duration,
    frozen_clock,
    now,
    parse_duration,
    parse_instant,
    parse_timestamps,
    years_before,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("60d", timedelta(days=60)),
        ("36h", timedelta(hours=36)),
        ("90m", timedelta(minutes=90)),
        (" 2 days ", timedelta(days=2)),
        ("1.5h", timedelta(minutes=90)),
    ],
)
def test_durations_read_days_hours_minutes(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected
    assert parse_duration(format_duration(expected)) == expected


@pytest.mark.parametrize(
    ("text", "months", "shown"),
    [("1mo", 1, "1mo"), ("3 months", 3, "3mo"), ("12mo", 12, "1y"), ("1y", 12, "1y"), ("2 years", 24, "2y")],
)
def test_durations_read_calendar_months_and_years(text: str, months: int, shown: str) -> None:
    duration = parse_duration(text)
    assert isinstance(duration, CalendarDuration) and duration.months == months
    assert format_duration(duration) == shown and parse_duration(shown).months == months
    assert timedelta(days=28 * months) < duration < timedelta(days=31 * months + 1)  # compares as a timedelta


@pytest.mark.parametrize(
    ("end", "start"),
    [
        (datetime(2013, 4, 1), datetime(2013, 3, 1)),  # 31-day March: 30d would start on 2 March
        (datetime(2013, 3, 1), datetime(2013, 2, 1)),  # 28-day February
        (datetime(2013, 3, 31, 6), datetime(2013, 2, 28, 6)),  # no 31 February: the month's last day
        (datetime(2012, 3, 1), datetime(2012, 2, 1)),
    ],
)
def test_a_window_in_months_covers_whole_calendar_months(end: datetime, start: datetime) -> None:
    assert Window.ending_at(end, parse_duration("1mo")).start == start
    assert Window.ending_at(datetime(2013, 4, 1), parse_duration("30d")).start == datetime(2013, 3, 2)
    assert Window.ending_at(datetime(2014, 1, 1), parse_duration("1y")).start == datetime(2013, 1, 1)


def test_a_calendar_duration_survives_a_config_round_trip() -> None:
    import pickle

    from retrain.config import MonitoringConfig, WindowConfig

    monitoring = MonitoringConfig(window="1mo", retrain_every="1y")
    dumped = monitoring.model_dump(mode="json")
    assert (dumped["window"], dumped["retrain_every"]) == ("1mo", "1y")
    assert MonitoringConfig.model_validate(dumped).window.months == 1  # type: ignore[attr-defined]
    assert pickle.loads(pickle.dumps(monitoring)).retrain_every.months == 12  # type: ignore[attr-defined]
    assert str(WindowConfig(lookback="3mo")) == "the 3mo before as_of"


@pytest.mark.parametrize("text", ["60", "d", "-3d", "0h", "3 weeks", "60dd", "0mo", "1.5mo"])
def test_bad_durations_are_named(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_instants_are_naive_utc() -> None:
    assert parse_instant("2013-04-01") == datetime(2013, 4, 1)
    assert parse_instant("2013-04-01T06:00+05:00") == datetime(2013, 4, 1, 1)
    assert parse_instant("2013-04-01T06:00Z") == datetime(2013, 4, 1, 6)
    with pytest.raises(ValueError, match="'01/04/2013' is not an ISO 8601"):
        parse_instant("01/04/2013")


def test_frozen_clock_is_restored() -> None:
    with frozen_clock("2013-03-01T12:00") as moment:
        assert now() == moment == datetime(2013, 3, 1, 12)
    assert now() > datetime(2020, 1, 1)


def test_window_is_half_open_and_ordered() -> None:
    window = Window.ending_at(datetime(2013, 4, 1), timedelta(days=60))
    assert window.start == datetime(2013, 1, 31) and str(window) == "[2013-01-31 00:00:00, 2013-04-01 00:00:00)"
    with pytest.raises(ValueError, match="must be after its start"):
        Window(datetime(2013, 4, 1), datetime(2013, 4, 1))


def test_one_offset_never_shifts_the_naive_values_around_it() -> None:
    """pandas' utc=True parse applies the last offset seen to the naive values after it; ours must not."""
    values = pd.Series(
        ["2013-01-01 05:00:00", "2013-01-01 06:00:00+05:00", "2013-01-01 07:00:00", "2013-01-01T06:00:00-03:00",
         " 2013-01-01 08:00:00 ", "2013-01-02", "not a date", None, "2013-01-01T08:00Z"]
    )
    parsed = parse_timestamps(values)
    assert parsed.values.tolist()[:6] == [
        pd.Timestamp("2013-01-01 05:00"), pd.Timestamp("2013-01-01 01:00"), pd.Timestamp("2013-01-01 07:00"),
        pd.Timestamp("2013-01-01 09:00"), pd.Timestamp("2013-01-01 08:00"), pd.Timestamp("2013-01-02"),
    ]
    assert parsed.values.iloc[8] == pd.Timestamp("2013-01-01 08:00")
    assert parsed.unparseable.tolist() == [False] * 6 + [True, False, False]
    assert parsed.had_offset.tolist() == [False, True, False, True, False, False, False, False, True]


def test_aware_datetime_column_is_converted() -> None:
    values = pd.Series(pd.to_datetime(["2013-01-01 06:00+05:00", "2013-01-01 07:00+05:00"], utc=True))
    parsed = parse_timestamps(values)
    assert parsed.values.tolist() == [pd.Timestamp("2013-01-01 01:00"), pd.Timestamp("2013-01-01 02:00")]


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (datetime(2024, 2, 29, 12), datetime(2023, 2, 28, 12)),
        (datetime(2024, 3, 1), datetime(2023, 3, 1)),
        (datetime(2013, 12, 31, 23, 59), datetime(2012, 12, 31, 23, 59)),
    ],
)
def test_a_year_before_is_the_same_day_or_28_february(moment: datetime, expected: datetime) -> None:
    assert years_before(moment, 1) == expected
