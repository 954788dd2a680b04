"""The start-up replay (prediction) on encoder-built data directories, with and without raft's
auto-recovery. The real-dqlite side of the same behaviour is tests/integration/test_dqlite_matrix.py."""
from __future__ import annotations

import os
import random

import pytest

from dqlite_builder import batch, configuration, metadata, segment, snapshot_meta

from ansible_collections.quorum.recovery.plugins.module_utils import dqlite_datadir
from ansible_collections.quorum.recovery.plugins.module_utils import dqlite_format as fmt

SERVERS = [(1, "10.0.0.1:9001", 1)]


def _entries(first, last, term=1):
    return [batch([(term, fmt.ENTRY_COMMAND, b"e%07d" % i)]) for i in range(first, last + 1)]


def _closed(directory, first, last):
    name = "%016d-%016d" % (first, last)
    blob = segment([batch([(1, fmt.ENTRY_CHANGE, configuration(SERVERS))])] + _entries(first + 1, last)) \
        if first == 1 else segment(_entries(first, last))
    (directory / name).write_bytes(blob)
    return name


def _datadir(directory, closed=((1, 10), (11, 20), (21, 30)), snapshot=None, opened=()):
    directory.mkdir(exist_ok=True)
    (directory / "metadata1").write_bytes(metadata(1, 1, 1))
    (directory / "metadata2").write_bytes(metadata(2, 1, 1))
    (directory / "info.yaml").write_text("Address: 10.0.0.1:9001\nID: 1\nRole: 0\n")
    (directory / "cluster.yaml").write_text("- Address: 10.0.0.1:9001\n  ID: 1\n  Role: 0\n")
    names = [_closed(directory, first, last) for first, last in closed]
    if snapshot:
        (directory / ("snapshot-1-%d-100" % snapshot)).write_bytes(b"raw sqlite pages" * 8)
        (directory / ("snapshot-1-%d-100.meta" % snapshot)).write_bytes(snapshot_meta(1, SERVERS))
    for counter, (first, last) in enumerate(opened, 1):
        (directory / ("open-%d" % counter)).write_bytes(segment(_entries(first, last), prealloc=4096))
    return names


def _flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _inspect(directory, auto_recovery=True):
    return dqlite_datadir.inspect_datadir(str(directory), "full", auto_recovery)


def test_healthy_dir_starts_with_every_entry(tmp_path):
    _datadir(tmp_path, opened=[(31, 33)])
    member = _inspect(tmp_path)
    assert member["verdict"] == "healthy", member["problems"]
    assert member["prediction"]["starts"] and member["prediction"]["last_index"] == 33 == member["log"]["last_index"]
    assert member["prediction"]["closed_as"] == {"open-1": "%016d-%016d" % (31, 33)}


def test_corrupt_last_closed_segment_is_renamed_with_auto_recovery_and_refused_without(tmp_path):
    names = _datadir(tmp_path, opened=[(31, 33)])
    _flip(tmp_path / names[-1], 8 + 16)  # header of its first batch
    on = _inspect(tmp_path, auto_recovery=True)
    pred = on["prediction"]
    assert pred["starts"] and pred["last_index"] == 20 and pred["attempts"] == 2
    assert pred["renamed_to_corrupt"] == [names[-1], "open-1"]  # closed segments load before open ones
    problem = next(p for p in on["problems"] if p["file"] == names[-1])
    assert "corrupt-" in problem["dqlite_would"] and "last index 20" in problem["dqlite_would"]
    assert on["verdict"] == "repairable"
    off = _inspect(tmp_path, auto_recovery=False)
    assert not off["prediction"]["starts"] and off["prediction"]["renamed_to_corrupt"] == []
    assert "header checksum" in off["prediction"]["reason"]
    problem = next(p for p in off["problems"] if p["file"] == names[-1])
    assert problem["dqlite_would"] == "refuse to start"


def test_corrupt_middle_segment_is_never_renamed(tmp_path):
    names = _datadir(tmp_path)
    _flip(tmp_path / names[1], 8 + 16)
    for auto in (True, False):
        member = _inspect(tmp_path, auto)
        assert not member["prediction"]["starts"] and member["prediction"]["renamed_to_corrupt"] == []
        assert member["verdict"] == "unusable"


def test_short_read_is_an_io_error_and_never_retried(tmp_path):
    names = _datadir(tmp_path)
    path = tmp_path / names[-1]
    path.write_bytes(path.read_bytes()[:-5])
    member = _inspect(tmp_path, True)
    assert not member["prediction"]["starts"] and member["prediction"]["attempts"] == 1
    assert member["prediction"]["renamed_to_corrupt"] == []


def test_open_segment_of_unknown_format_is_renamed_with_the_open_segments_after_it(tmp_path):
    _datadir(tmp_path, opened=[(31, 33), (34, 35)])
    _flip(tmp_path / "open-1", 0)
    on = _inspect(tmp_path, True)["prediction"]
    assert on["starts"] and on["last_index"] == 30 and on["renamed_to_corrupt"] == ["open-1", "open-2"]
    assert not _inspect(tmp_path, False)["prediction"]["starts"]


def test_last_entry_behind_snapshot_starts_on_the_retry_only_with_auto_recovery(tmp_path):
    _datadir(tmp_path, closed=((1, 10),), snapshot=40, opened=[(11, 15)])
    on = _inspect(tmp_path, True)
    assert on["prediction"]["starts"] and on["prediction"]["last_index"] == 40 and on["prediction"]["attempts"] == 2
    assert on["prediction"]["closed_as"] == {"open-1": "%016d-%016d" % (11, 15)}
    off = _inspect(tmp_path, False)
    assert not off["prediction"]["starts"] and "behind last snapshot" in off["prediction"]["reason"]
    assert off["verdict"] != "healthy"


def test_closed_segments_all_behind_the_snapshot_are_skipped(tmp_path):
    _datadir(tmp_path, closed=((1, 10), (11, 20)), snapshot=40)
    member = _inspect(tmp_path)
    assert member["prediction"]["starts"] and member["prediction"]["last_index"] == 40
    assert member["verdict"] == "healthy", member["problems"]


def test_gap_without_snapshot_is_refused(tmp_path):
    names = _datadir(tmp_path)
    os.unlink(tmp_path / names[1])
    member = _inspect(tmp_path)
    assert not member["prediction"]["starts"] and member["verdict"] == "unusable"


def test_fuzzed_directories_never_crash_the_inspection(tmp_path):
    rng = random.Random(99)
    for case in range(60):
        directory = tmp_path / str(case)
        _datadir(directory, snapshot=25 if case % 2 else None, opened=[(31, 34)])
        victims = sorted(os.listdir(directory))
        for _damage in range(rng.randint(1, 3)):
            path = directory / rng.choice(victims)
            if not path.exists():
                continue
            data = bytearray(path.read_bytes())
            roll = rng.random()
            if roll < 0.5 and data:
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
                path.write_bytes(bytes(data))
            elif roll < 0.8:
                path.write_bytes(bytes(data[:rng.randrange(len(data) + 1)]))
            else:
                path.unlink()
        for auto in (True, False):
            member = _inspect(directory, auto)
            assert member["verdict"] in ("healthy", "repairable", "unusable")
            if not member["prediction"]["starts"]:
                assert member["verdict"] != "healthy", member["problems"]


@pytest.mark.parametrize("depth", ["quick", "full"])
def test_depths_agree_on_a_healthy_dir(tmp_path, depth):
    _datadir(tmp_path, snapshot=25, opened=[(31, 33)])
    member = dqlite_datadir.inspect_datadir(str(tmp_path), depth)
    assert member["verdict"] == "healthy" and member["prediction"]["last_index"] == 33


@pytest.mark.parametrize("address, local", [
    ("127.0.0.1:9001", True),          # loopback: every host has it
    ("192.0.2.250:9001", False),       # TEST-NET-1: no host here holds it
    ("name.invalid:9001", None),       # does not resolve: cannot tell
    ("", None),
    ("no-port", None),
])
def test_address_is_local(address, local):
    assert dqlite_datadir.address_is_local(address) is local


def test_an_info_yaml_address_the_host_lost_is_a_warning_not_a_verdict(tmp_path):
    # the synthetic info.yaml names 10.0.0.1, which this test host does not hold: the member's
    # data is as good as before, only its address moved
    _datadir(tmp_path)
    member = _inspect(tmp_path)
    assert member["address_local"] is False
    assert member["verdict"] == "healthy", member["problems"]
    warning = next(p for p in member["problems"] if p["file"] == "info.yaml" and p["severity"] == "warning")
    assert "10.0.0.1:9001" in warning["message"] and "not an address of this host" in warning["message"]


def test_the_neutral_summary_carries_what_the_election_reads(tmp_path):
    _datadir(tmp_path, opened=[(31, 33)])
    summary = _inspect(tmp_path)["summary"]
    assert summary["engine"] == "dqlite" and summary["member_id"] == 1 and summary["address"] == "10.0.0.1:9001"
    assert (summary["last_term"], summary["last_index"], summary["snapshot_index"]) == (1, 33, 0)
    assert summary["voters"] == [{"id": 1, "address": "10.0.0.1:9001", "role": "voter"}]
    assert summary["terms"] == [[1, 1]] and summary["after_repair"] is None and summary["verdict"] == "healthy"


def test_after_repair_is_where_the_log_ends_once_the_proposed_repairs_are_done(tmp_path):
    # the open segment is cut inside its last batch: the cut keeps 31-32
    _datadir(tmp_path, opened=[(31, 33)])
    path = tmp_path / "open-1"
    data = path.read_bytes()
    last = data.rstrip(b"\0")
    path.write_bytes(last[:-4])
    member = _inspect(tmp_path)
    assert member["verdict"] == "repairable", member["problems"]
    after = member["summary"]["after_repair"]
    assert (after["last_term"], after["last_index"]) == (1, 32) == (member["summary"]["last_term"],
                                                                    member["summary"]["last_index"])
    assert after["repairs"] == [p["action"] for p in member["problems"] if p["severity"] == "error"
                                and "write" not in p["action"]]
    repairs = [p["repair"] for p in member["summary"]["problems"] if p["repair"]]
    assert [r["truncate"]["file"] for r in repairs] == ["open-1"]
