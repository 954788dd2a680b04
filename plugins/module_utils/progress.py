# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Progress of a long step (archive, verify, restore) as small JSON records in a file.

A module that reads or writes gigabytes writes its progress here (bytes done of total, rate,
phase), at most one record per interval. The file holds the newest records (at most KEEP), one
JSON object a line, and is replaced whole (temporary file, rename), so a reader always sees
complete records and the file stays small however long the step runs. The controller (action
plugin quorum.recovery.progress_wait) reads it while the module runs asynchronously, prints
every record it has not shown yet (each carries the writer's pid and a sequence number), and
removes the file once the module ended; a file name is used by one run only (the role puts the
run's id in it), so a reader never takes an earlier run's records for this one's.
``format_line`` is the one place that says what a line looks like.
Progress is advice: writing it never fails the work it describes.
Private to this collection; may change without notice. Standard library only: runs on targets.
"""
from __future__ import annotations

import collections
import json
import os
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any, Callable, Iterable, Mapping

KEEP = 20

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def human_bytes(count: float) -> str:
    """1288490188 -> '1.2 GiB'; below 1 KiB: '512 B'."""
    value = float(count)
    for unit in _UNITS:
        if value < 1024 or unit == _UNITS[-1]:
            break
        value /= 1024
    return "%d B" % count if unit == "B" else "%.1f %s" % (value, unit)


def _human_seconds(seconds):
    seconds = int(round(seconds))
    if seconds < 60:
        return "%d s" % seconds
    if seconds < 3600:
        return "%d min %d s" % divmod(seconds, 60)
    hours, rest = divmod(seconds, 3600)
    return "%d h %d min" % (hours, rest // 60)


def format_line(host: str, record: Mapping[str, Any], label: str = "") -> str:
    """The line the operator sees for one progress record, e.g.
    'h1 [safety archive]: archive 412.0 MiB of 1.2 GiB (34%), 96.3 MiB/s, about 9 s left'."""
    done, total, rate = record.get("done", 0), record.get("total"), record.get("rate") or 0.0
    who = "%s [%s]" % (host, label) if label else host
    if record.get("phase") == "wait":
        return "%s: waiting for an earlier run of this step to finish (%s so far)" % (
            who, _human_seconds(record.get("elapsed", 0)))
    line = "%s: %s %s" % (who, record.get("phase", "working"), human_bytes(done))
    if total:
        line += " of %s (%d%%)" % (human_bytes(total), min(100, int(done * 100 / total)))
    if done:
        line += ", %s/s" % human_bytes(rate)
    if total and rate > 0 and done < total and (total - done) / rate >= 1:
        line += ", about %s left" % _human_seconds((total - done) / rate)
    return line


def format_summary(host: str, phases: Iterable[Mapping[str, Any]]) -> str:
    """One line for a finished step from its phases ({'phase','bytes','seconds'}), e.g.
    'h1: done: archive 1.2 GiB in 12 s (98.1 MiB/s); verify 1.1 GiB in 4 s (281.0 MiB/s)'."""
    parts = []
    for item in phases:
        seconds = item.get("seconds") or 0.0
        if item["phase"] == "wait":
            parts.append("waited %.1f s for an earlier run of this step to finish" % seconds)
            continue
        rate = item["bytes"] / seconds if seconds > 0 else 0.0
        parts.append("%s %s in %.1f s (%s/s)"
                     % (item["phase"], human_bytes(item["bytes"]), seconds, human_bytes(rate)))
    return "%s: done: %s" % (host, "; ".join(parts) if parts else "nothing to read or write")


# The options of a module whose long runs report progress (doc fragment quorum.recovery.progress).
PROGRESS_OPTIONS = dict(progress_file=dict(type="path"), progress_interval=dict(type="float", default=1.0))


class Progress:
    """Writes progress records to `path` (None: records nothing, still keeps the summary).

    phase(name, total) begins a phase; advance(n) counts n bytes done and writes a record when
    `interval` seconds passed since the last one; summary() lists every finished phase with its
    bytes and seconds (for the module's result); close() removes the file."""

    def __init__(self, path: str | None = None, interval: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path, self.interval, self.clock = path, float(interval), clock
        self.name: str | None = None
        self.total: int | None = None
        self.done = 0
        self.started = self.last_write = 0.0
        self.phases: list[dict[str, Any]] = []
        self.writes = 0  # records written; also each record's sequence number
        self.recent: collections.deque[str] = collections.deque(maxlen=KEEP)

    @classmethod
    def for_module(cls, module: Any) -> Progress:
        """The progress of a module with PROGRESS_OPTIONS: check mode writes nothing, not even progress."""
        return cls(None if module.check_mode else module.params["progress_file"], module.params["progress_interval"])

    def phase(self, name: str, total: int | None = None) -> None:
        self._end_phase()
        self.name, self.total, self.done = name, total, 0
        self.started = self.clock()
        self._write()

    def advance(self, count: int) -> None:
        self.done += count
        if self.clock() - self.last_write >= self.interval:
            self._write()

    def record(self) -> dict[str, Any]:
        elapsed = self.clock() - self.started
        return {"phase": self.name, "done": self.done, "total": self.total,
                "rate": self.done / elapsed if elapsed > 0 else 0.0, "elapsed": round(elapsed, 3),
                "pid": os.getpid(), "seq": self.writes, "time": time.time()}

    def waiting(self, seconds: float) -> None:
        """Record that this run has waited `seconds` so far for an earlier run of the step
        (the first call, then at most once per interval)."""
        if self.writes and self.clock() - self.last_write < self.interval:
            return
        self.name, self.total, self.done = "wait", None, 0
        self.started = self.clock() - seconds
        self._write()
        self.name = None

    def waited(self, seconds: float) -> None:
        """Note the time spent waiting for an earlier run of the step (in the summary)."""
        self.phases.append({"phase": "wait", "bytes": 0, "seconds": round(seconds, 3)})

    def summary(self) -> list[dict[str, Any]]:
        self._end_phase()
        return list(self.phases)

    def close(self) -> None:
        """Write the last record. The file stays: the reader takes the records it has not shown
        yet (a short step can end between two looks) and then removes it."""
        self._end_phase()

    def _end_phase(self):
        if self.name is not None:
            self._write()
            self.phases.append({"phase": self.name, "bytes": self.done,
                                "seconds": round(self.clock() - self.started, 3)})
            self.name = None

    def _write(self):
        self.last_write = self.clock()
        if not self.path:
            return
        self.recent.append(json.dumps(self.record(), sort_keys=True))
        tmp = "%s.tmp-%d" % (self.path, os.getpid())
        try:
            with open(tmp, "w") as handle:
                handle.write("\n".join(self.recent) + "\n")
            os.rename(tmp, self.path)  # a reader sees the old records or the new ones, never half
            self.writes += 1
        except (OSError, ValueError):
            self.path = None  # progress is advice: a full or read-only disk must not fail the work


def parse_records(text: str) -> list[dict[str, Any]]:
    """The complete records in the text of a progress file (an incomplete last line is skipped)."""
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "phase" in record:
            records.append(record)
    return records


def newer(records: Iterable[Mapping[str, Any]], last: tuple[Any, Any] | None) -> list[Mapping[str, Any]]:
    """The records after `last` ((pid, seq) of the last one shown, or None), oldest first.

    A record from another pid (a new run replaced the file) counts as newer."""
    out = []
    for record in records:
        key = (record.get("pid"), record.get("seq", 0))
        if last is None or key[0] != last[0] or key[1] > last[1]:
            out.append(record)
            last = key
    return out


def midway(record: Mapping[str, Any]) -> bool:
    """Whether the record is from the middle of a phase (some bytes done, not all)."""
    total = record.get("total")
    return record.get("phase") != "wait" and bool(total) and 0 < record.get("done", 0) < total


def worth_showing(record: Mapping[str, Any], previous: Mapping[str, Any] | None) -> bool:
    """False for a record that says nothing new: the same phase and bytes as the one before
    (a phase's closing record after its last read, a wait between two reads)."""
    if previous is None or record.get("phase") == "wait":
        return True
    return (record.get("phase"), record.get("done")) != (previous.get("phase"), previous.get("done"))
