"""Progress of the long steps: the record writer and reader, the lines the operator sees, the
archive's progress phases, the folder lock that keeps an interrupted run's job and the re-run's
apart, and the controller's view of a transfer's offset. Real files, real processes, real time."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import COLLECTIONS

from ansible_collections.quorum.recovery.plugins.module_utils import datadir_archive as arch
from ansible_collections.quorum.recovery.plugins.module_utils import progress as prog
from ansible_collections.quorum.recovery.plugins.action.transfer import file_position


def _lines(path):
    return path.read_text().splitlines()


def test_records_are_complete_json_at_most_one_per_interval(tmp_path):
    path = tmp_path / "progress.json"
    progress = prog.Progress(str(path), interval=0.1)
    progress.phase("archive", 10_000)
    began = time.monotonic()
    while time.monotonic() - began < 0.55:
        progress.advance(1)
        time.sleep(0.001)
    done = progress.done
    progress.close()
    records = [json.loads(line) for line in _lines(path)]  # every line whole JSON
    # one at the phase start, one per 0.1 s (5 in 0.55 s), one closing the phase
    assert 3 <= len(records) <= 8, records
    assert [r["seq"] for r in records] == list(range(len(records)))
    assert {r["pid"] for r in records} == {os.getpid()}
    assert records[0]["done"] == 0 and records[-1]["done"] == done and records[-1]["total"] == 10_000
    assert all(r["phase"] == "archive" for r in records)
    assert records[-1]["rate"] > 0
    assert progress.summary() == [{"phase": "archive", "bytes": done, "seconds": pytest.approx(0.55, abs=0.2)}]


def test_the_file_keeps_only_the_newest_records(tmp_path):
    path = tmp_path / "progress.json"
    progress = prog.Progress(str(path), interval=0)
    progress.phase("verify", 100)
    for _step in range(100):
        progress.advance(1)
    records = prog.parse_records(path.read_text())
    assert len(records) == prog.KEEP
    assert records[-1]["done"] == 100 and records[-1]["seq"] == 100  # the phase start was seq 0


def test_a_reader_never_sees_half_a_record(tmp_path):
    path = tmp_path / "progress.json"
    progress = prog.Progress(str(path), interval=0)
    progress.phase("extract", 10 ** 9)
    stop = threading.Event()

    def write():
        while not stop.is_set():
            progress.advance(4096)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        reads = 0
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            try:
                text = path.read_text()
            except FileNotFoundError:
                continue
            for line in text.splitlines():
                json.loads(line)  # raises on a torn record
            reads += 1
    finally:
        stop.set()
        writer.join()
    assert reads > 10 and progress.writes > 10


def test_progress_is_advice_an_unwritable_file_does_not_fail_the_work(tmp_path):
    progress = prog.Progress(str(tmp_path / "no-such-folder" / "progress.json"), interval=0)
    progress.phase("archive", 10)
    progress.advance(10)
    progress.close()
    assert progress.summary()[0]["bytes"] == 10 and progress.writes == 0


def test_newer_takes_what_was_not_shown_and_a_new_writer_whole():
    records = [{"phase": "archive", "pid": 7, "seq": n} for n in range(5)]
    assert prog.newer(records, None) == records
    assert prog.newer(records, (7, 2)) == records[3:]
    assert prog.newer(records, (7, 4)) == []
    assert prog.newer(records, (6, 9)) == records  # another process wrote these
    assert prog.parse_records('{"phase": "a", "pid": 1, "seq": 0}\n{"phase": "a", "pi') == [
        {"phase": "a", "pid": 1, "seq": 0}]


@pytest.mark.parametrize("record, line", [
    ({"phase": "archive", "done": 432013312, "total": 1288490188, "rate": 100977049.6},
     "h1 [safety archive]: archive 412.0 MiB of 1.2 GiB (33%), 96.3 MiB/s, about 8 s left"),
    ({"phase": "archive", "done": 0, "total": 1288490188, "rate": 0.0},
     "h1 [safety archive]: archive 0 B of 1.2 GiB (0%)"),
    ({"phase": "verify", "done": 1288490188, "total": 1288490188, "rate": 300e6},
     "h1 [safety archive]: verify 1.2 GiB of 1.2 GiB (100%), 286.1 MiB/s"),
    ({"phase": "extract", "done": 512, "total": 10 * 2 ** 30, "rate": 10 * 2 ** 20},
     "h1 [safety archive]: extract 512 B of 10.0 GiB (0%), 10.0 MiB/s, about 17 min 4 s left"),
    ({"phase": "compare", "done": 0.0, "total": 100 * 2 ** 40, "rate": 0.0},
     "h1 [safety archive]: compare 0 B of 100.0 TiB (0%)"),
    ({"phase": "check", "done": 2 ** 30, "total": 101 * 2 ** 30, "rate": 10 * 2 ** 20},
     "h1 [safety archive]: check 1.0 GiB of 101.0 GiB (0%), 10.0 MiB/s, about 2 h 50 min left"),
    ({"phase": "wait", "elapsed": 75.2}, "h1 [safety archive]: waiting for an earlier run of this step to finish (1 min 15 s so far)"),
])
def test_format_line(record, line):
    assert prog.format_line("h1", record, "safety archive") == line


def test_format_summary_and_worth_showing():
    assert prog.format_summary("h2 [restore]", [
        {"phase": "wait", "bytes": 0, "seconds": 3.2},
        {"phase": "verify", "bytes": 2 ** 30, "seconds": 4.0}]) == (
        "h2 [restore]: done: waited 3.2 s for an earlier run of this step to finish; verify 1.0 GiB in 4.0 s (256.0 MiB/s)")
    assert prog.format_summary("h2", []) == "h2: done: nothing to read or write"
    end = {"phase": "extract", "done": 9}
    assert not prog.worth_showing({"phase": "extract", "done": 9, "seq": 4}, end)
    assert prog.worth_showing({"phase": "check", "done": 9}, end)
    assert prog.worth_showing(end, None)
    assert prog.midway({"phase": "extract", "done": 5, "total": 9})
    assert not prog.midway({"phase": "extract", "done": 9, "total": 9})
    assert not prog.midway({"phase": "extract", "done": 0, "total": 9})
    assert not prog.midway({"phase": "wait", "elapsed": 3})


def _datadir(root, sizes):
    root.mkdir()
    for n, size in enumerate(sizes):
        (root / ("%016d-%016d" % (n * 10 + 1, n * 10 + 10))).write_bytes(os.urandom(size))
    return sorted(os.listdir(root))


def test_create_and_verify_report_their_phases_with_every_byte(tmp_path):
    files = _datadir(tmp_path / "data", [300_000, 5, 1_000_000])
    dest = tmp_path / "out" / "a.tar.gz"
    path = tmp_path / "progress.json"
    progress = prog.Progress(str(path), interval=60)  # a record at each phase's start and end only
    manifest = arch.create(str(tmp_path / "data"), str(dest), files, progress=progress)
    arch.verify(str(dest), progress=progress)
    summary = progress.summary()
    assert [p["phase"] for p in summary] == ["archive", "verify"]
    assert summary[0]["bytes"] == 1_300_005 == manifest["total_bytes"]
    assert summary[1]["bytes"] == dest.stat().st_size
    records = prog.parse_records(path.read_text())
    assert [(r["phase"], r["done"], r["total"]) for r in records] == [
        ("archive", 0, 1_300_005), ("archive", 1_300_005, 1_300_005),
        ("verify", 0, dest.stat().st_size), ("verify", dest.stat().st_size, dest.stat().st_size)]
    # the digest computed while writing is the file's
    assert manifest["archive_sha256"] == arch.sha256_file(str(dest)) == arch.recorded_digest(str(dest))


def test_verify_names_a_digest_mismatch_before_a_damaged_stream(tmp_path):
    files = _datadir(tmp_path / "data", [200_000])
    dest = tmp_path / "a.tar.gz"
    manifest = arch.create(str(tmp_path / "data"), str(dest), files)
    blob = bytearray(dest.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    dest.write_bytes(bytes(blob))
    with pytest.raises(arch.ArchiveError, match="sha256 .*, expected %s" % manifest["archive_sha256"]):
        arch.verify(str(dest))
    dest.write_bytes(bytes(blob[:1000]))  # truncated
    with pytest.raises(arch.ArchiveError, match="sha256"):
        arch.verify(str(dest))


def test_verify_extracts_into_the_given_folder(tmp_path):
    files = _datadir(tmp_path / "data", [70_000, 3])
    dest = tmp_path / "a.tar.gz"
    arch.create(str(tmp_path / "data"), str(dest), files)
    out = tmp_path / "incoming"
    out.mkdir()
    arch.verify(str(dest), extract_to=str(out))
    for name in files:
        assert (out / name).read_bytes() == (tmp_path / "data" / name).read_bytes()


def test_remove_stale_temporaries_takes_only_what_a_killed_writer_left(tmp_path):
    dest = tmp_path / "safety-h1.tar.gz"
    for name in ("safety-h1.tar.gz.tmp-123", "safety-h1.tar.gz.sha256.tmp-9", "safety-h1.tar.gz",
                 "safety-h1.tar.gz.sha256", "safety-h2.tar.gz.tmp-5", "safety-h1.tar.gz.tmp-x"):
        (tmp_path / name).write_bytes(b"x")
    assert arch.remove_stale_temporaries(str(dest)) == ["safety-h1.tar.gz.sha256.tmp-9", "safety-h1.tar.gz.tmp-123"]
    assert sorted(os.listdir(tmp_path)) == ["safety-h1.tar.gz", "safety-h1.tar.gz.sha256", "safety-h1.tar.gz.tmp-x",
                                            "safety-h2.tar.gz.tmp-5"]


_HOLD = """
import sys, time
sys.path.insert(0, %r)
from ansible_collections.quorum.recovery.plugins.module_utils import datadir_archive as arch
with arch.locked(sys.argv[1]):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _holder(folder, seconds):
    proc = subprocess.Popen([sys.executable, "-c", _HOLD % str(COLLECTIONS), str(folder), str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_lock_waits_for_a_live_holder_and_reports_the_wait(tmp_path):
    holder = _holder(tmp_path, 0.8)
    ticks = []
    try:
        began = time.monotonic()
        with arch.locked(str(tmp_path), on_wait=ticks.append, interval=0.1) as waited:
            took = time.monotonic() - began
    finally:
        holder.wait(10)
    assert took >= 0.5 and waited >= 0.5, (took, waited)
    assert len(ticks) >= 3 and ticks == sorted(ticks)
    with arch.locked(str(tmp_path)) as waited:  # free now: no wait
        assert waited == 0.0


def test_lock_of_a_killed_holder_is_free_at_once(tmp_path):
    holder = _holder(tmp_path, 60)
    holder.send_signal(signal.SIGKILL)
    holder.wait(10)
    began = time.monotonic()
    with arch.locked(str(tmp_path)) as waited:
        assert waited == 0.0
    assert time.monotonic() - began < 1


def test_waiting_records_while_locked_out(tmp_path):
    path = tmp_path / "progress.json"
    progress = prog.Progress(str(path), interval=0.2)
    holder = _holder(tmp_path, 0.7)
    try:
        with arch.locked(str(tmp_path), progress.waiting, 0.05) as waited:
            progress.waited(waited)
    finally:
        holder.wait(10)
    waits = [r for r in prog.parse_records(path.read_text()) if r["phase"] == "wait"]
    assert 2 <= len(waits) <= 5, waits  # one every 0.2 s, not one per look (0.05 s)
    assert progress.summary()[0]["phase"] == "wait"


def test_file_position_reads_the_offset_of_a_child_process(tmp_path):
    path = tmp_path / "big"
    path.write_bytes(b"\0" * 100_000)
    reader = subprocess.Popen([sys.executable, "-c", "import sys,time; f=open(sys.argv[1],'rb',buffering=0); f.read(12345); "
                               "print('ok', flush=True); time.sleep(30)", str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().strip() == "ok"
        assert file_position(str(path)) == 12345
        assert file_position(str(tmp_path / "other")) is None
    finally:
        reader.kill()
        reader.wait()
