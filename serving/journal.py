"""The prediction journal: every answered prediction on local disk before its response is sent.

A request appends its predictions to the journal (one `write` of JSON lines to a file opened `O_APPEND`) and
only then answers. Once `write` returns, the bytes are the kernel's: a `kill -9` of the server, an OOM kill or a
crash of Python loses none of them. A machine crash (power, kernel) can lose what the kernel had not written to
the disk yet; `journal_fsync` says how much of that to pay for: `always` (fsync before each answer), `interval`
(fsync every `journal_fsync_seconds` in the background: at most that much is lost), or `never`.

The journal is a folder of segments per model (under the settings' home, `journal/<model>/`), each a file of JSON
lines written by one server process, which holds an exclusive `flock` on it while it lives. The log writer
(`serving.prediction_log.PredictionLog`) reads the segments in order, inserts their rows into the warehouse, and
records how far it got beside each segment (`<segment>.shipped`, the byte offset, replaced atomically); a segment
fully shipped and no longer written is deleted. A segment whose lock can be taken belongs to a process that is
gone: the next server of the model adopts it and ships what it left. Shipping a row twice (the offset was not
recorded before a crash) is harmless: the prediction table's unique key skips a request id it holds.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal

from retrain.clock import wall_clock

logger = logging.getLogger(__name__)

FsyncPolicy = Literal["always", "interval", "never"]
SEGMENT_BYTES = 64 * 1024 * 1024  # a segment this large is closed for writing and a new one started
SUFFIX = ".jsonl"
SHIPPED_SUFFIX = ".shipped"


class JournalUnavailable(RuntimeError):
    """The journal cannot take a prediction (disk full, folder gone): it is not answered, so none is lost."""


@dataclass(eq=False)
class Segment:
    """One journal file: its path, a descriptor to read it, and (while this process may write it) the lock.

    `lock` is a descriptor of the segment's own that holds the `flock`: this process's own segments from
    creation, an adopted segment from adoption, until the segment is deleted or the journal closed.
    """

    path: Path
    lock: int
    own: bool
    writable: bool = False

    @property
    def shipped_path(self) -> Path:
        return self.path.with_suffix(SHIPPED_SUFFIX)

    @property
    def name(self) -> str:
        return self.path.name


@dataclass
class JournalPosition:
    """Where a read of a segment ended and what it held."""

    rows: list[dict[str, Any]]
    offset: int
    corrupt: int = 0  # lines that could not be read (cut short by a crash in the middle of a write)


@dataclass(eq=False)
class PredictionJournal:
    """The journal folder of one model, as one server process writes and ships it."""

    folder: Path
    fsync: FsyncPolicy = "interval"
    fsync_seconds: float = 1.0
    segment_bytes: int = SEGMENT_BYTES
    _current: Segment | None = None
    _write_fd: int = -1
    _written: int = 0
    _segments: list[Segment] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _dirty: bool = False
    _stop: threading.Event = field(default_factory=threading.Event)
    _syncer: threading.Thread | None = None

    # ------------------------------------------------------------------------------------------ writing

    def open(self) -> None:
        """Start this process's first segment (and the background fsync under the `interval` policy)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._start_segment()
        if self.fsync == "interval":
            self._stop.clear()
            self._syncer = threading.Thread(target=self._sync_now_and_then, name="retrain-journal-fsync", daemon=True)
            self._syncer.start()

    def append(self, rows: Sequence[Mapping[str, Any]]) -> int:
        """Append rows (one JSON line each) before they are answered; returns the bytes written.

        Raises:
            JournalUnavailable: the write failed: do not answer these predictions.
        """
        if not rows:
            return 0
        data = "".join(_LINE_JSON.encode(row) + "\n" for row in rows).encode()
        with self._lock:
            if self._write_fd < 0:
                raise JournalUnavailable("the prediction journal is closed")
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self._write_fd, view):]
                if self.fsync == "always":
                    os.fsync(self._write_fd)
                else:
                    self._dirty = True
            except OSError as error:
                raise JournalUnavailable(f"the prediction journal {self.folder} did not take the predictions: "
                                         f"{error}") from error
            self._written += len(data)
            if self._written >= self.segment_bytes:
                self._start_segment()
        return len(data)

    def close(self) -> None:
        """Stop writing: fsync, then let go of every segment (what is left unshipped stays for the next server)."""
        self._stop.set()
        if self._syncer is not None:
            self._syncer.join()
        with self._lock:
            self._close_for_writing()
            for segment in self._segments:
                os.close(segment.lock)
            self._segments.clear()
            self._current = None

    def _start_segment(self) -> None:
        stamp = wall_clock().strftime("%Y%m%dT%H%M%S%f")
        path = self.folder / f"{stamp}-{os.getpid()}-{uuid.uuid4().hex[:8]}{SUFFIX}"
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._close_for_writing()  # a full segment: its lock stays (on the segment's own descriptor) until shipped
        _fsync_folder(self.folder)
        self._write_fd, self._written = descriptor, 0
        self._current = Segment(path, os.dup(descriptor), own=True, writable=True)  # the dup shares the flock
        self._segments.append(self._current)

    def _close_for_writing(self) -> None:
        if self._write_fd < 0:
            return
        os.fsync(self._write_fd)
        os.close(self._write_fd)
        self._write_fd = -1
        if self._current is not None:
            self._current.writable = False

    def _sync_now_and_then(self) -> None:
        while not self._stop.wait(self.fsync_seconds):
            with self._lock:
                if not self._dirty or self._write_fd < 0:
                    continue
                self._dirty = False
                descriptor = os.dup(self._write_fd)
            try:
                os.fsync(descriptor)  # outside the lock: appends go on while the disk catches up
            except OSError as error:
                logger.error("prediction journal: fsync failed: %s", error)
            finally:
                os.close(descriptor)

    # ----------------------------------------------------------------------------------------- shipping

    def adopt_orphans(self) -> list[Segment]:
        """Take over the segments of server processes that are gone (their lock is free); returns them."""
        known = {segment.path for segment in self._segments}
        adopted = []
        for path in sorted(self.folder.glob(f"*{SUFFIX}")):
            if path in known:
                continue
            try:
                descriptor = os.open(path, os.O_RDONLY)
            except FileNotFoundError:  # shipped and deleted by another server meanwhile
                continue
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # its writer (or another shipper) lives
                os.close(descriptor)
                continue
            if not path.exists():  # deleted between our look and our lock
                os.close(descriptor)
                continue
            segment = Segment(path, descriptor, own=False)
            with self._lock:
                self._segments.append(segment)
            adopted.append(segment)
            logger.warning("prediction journal: shipping %s, left by a server process that is gone", path.name)
        return adopted

    def segments(self) -> list[Segment]:
        """The segments this process ships, oldest first."""
        with self._lock:
            return sorted(self._segments, key=lambda segment: segment.name)

    def shipped(self, segment: Segment) -> int:
        """How far `segment` was shipped (bytes), as recorded."""
        try:
            return int(segment.shipped_path.read_text(encoding="utf-8").strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def unshipped_bytes(self) -> int:
        return sum(max(_size(segment.path) - self.shipped(segment), 0) for segment in self.segments())

    def read(self, segment: Segment, offset: int, max_rows: int) -> JournalPosition:
        """Up to `max_rows` whole lines of `segment` from byte `offset`.

        A line still being written (no newline yet) is left for the next read; in a segment nobody writes any
        more, a last line without its newline was cut short by a crash during its write (its request was never
        answered), so it is skipped and counted as corrupt.
        """
        rows: list[dict[str, Any]] = []
        corrupt = 0
        with open(segment.path, "rb") as stream:
            stream.seek(offset)
            for line in _lines(stream, max_rows):
                if not line.endswith(b"\n"):
                    if segment.writable:
                        break
                    corrupt += 1
                    offset += len(line)
                    logger.error("prediction journal: %s ends in a line cut short (%d bytes), skipped",
                                 segment.name, len(line))
                    break
                offset += len(line)
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    corrupt += 1
                    logger.error("prediction journal: unreadable line at byte %d of %s, skipped", offset, segment.name)
        return JournalPosition(rows, offset, corrupt)

    def record_shipped(self, segment: Segment, offset: int) -> None:
        """Record that `segment` is shipped up to `offset` (written beside it, replaced atomically)."""
        temporary = segment.shipped_path.with_suffix(f"{SHIPPED_SUFFIX}.{os.getpid()}")
        temporary.write_text(str(offset), encoding="utf-8")
        os.replace(temporary, segment.shipped_path)

    def finish(self, segment: Segment) -> bool:
        """Delete `segment` if it is shipped to its end and nobody writes it any more; True when deleted."""
        if segment.writable or self.shipped(segment) < _size(segment.path):
            return False
        segment.path.unlink(missing_ok=True)
        segment.shipped_path.unlink(missing_ok=True)
        with self._lock:
            self._segments.remove(segment)
            os.close(segment.lock)
        return True

    def seal(self) -> None:
        """Stop writing (the server is stopping): the current segment can now be finished once shipped."""
        with self._lock:
            self._close_for_writing()


def _lines(stream: Any, limit: int) -> Iterator[bytes]:
    for _ in range(limit):
        line = stream.readline()
        if not line:
            return
        yield line


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _fsync_folder(folder: Path) -> None:
    """Make a new segment's name durable too (its folder entry), so a machine crash cannot lose the whole file."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _json_default(value: Any) -> Any:
    """Instants as ISO text (what `PredictionLog` parses back), numpy scalars as numbers."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"not JSON: {type(value).__name__}")


# One encoder for every line (json.dumps with options builds a new one per call): compact, instants as ISO text.
_LINE_JSON = json.JSONEncoder(separators=(",", ":"), default=_json_default)
