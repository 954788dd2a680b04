"""The online copy of a dqlite member's raft files on encoder-built data directories: what it
copies, where it cuts, and the member acting DURING the copy (closing an open segment, taking a
snapshot and removing old segments), done for real on the files between two reads of the copy.
The same against a real running dqlite cluster: tests/integration/test_dqlite_backup.py."""
from __future__ import annotations

import json
import os

import pytest

from conftest import fingerprint
from dqlite_builder import batch, configuration, metadata, segment, snapshot_meta

from ansible_collections.quorum.recovery.plugins.module_utils import dqlite_backup as backup
from ansible_collections.quorum.recovery.plugins.module_utils import dqlite_format as fmt

SERVERS = [(1, "10.0.0.1:9001", 1)]


def _entries(first, last, term=1):
    return [batch([(term, fmt.ENTRY_COMMAND, b"e%07d" % i)]) for i in range(first, last + 1)]


def _closed_blob(first, last):
    if first == 1:
        return segment([batch([(1, fmt.ENTRY_CHANGE, configuration(SERVERS))])] + _entries(2, last))
    return segment(_entries(first, last))


def _datadir(directory, closed=((1, 10), (11, 20), (21, 30)), snapshot=None, opened=((31, 33),), torn=False):
    directory.mkdir(exist_ok=True)
    (directory / "metadata1").write_bytes(metadata(1, 1, 1))
    (directory / "metadata2").write_bytes(metadata(2, 1, 1))
    (directory / "info.yaml").write_text("Address: 10.0.0.1:9001\nID: 1\nRole: 0\n")
    (directory / "cluster.yaml").write_text("- Address: 10.0.0.1:9001\n  ID: 1\n  Role: 0\n")
    (directory / "cluster.key").write_text("secret")
    for first, last in closed:
        (directory / ("%016d-%016d" % (first, last))).write_bytes(_closed_blob(first, last))
    if snapshot:
        _snapshot(directory, snapshot)
    for counter, (first, last) in enumerate(opened, 1):
        blob = segment(_entries(first, last))
        if torn:  # raft in the middle of writing the next batch: its header is there, its data not yet
            blob += batch(_entry_list(last + 1))[:36]
        (directory / ("open-%d" % counter)).write_bytes(blob + b"\0" * (4096 - len(blob) % 4096))


def _entry_list(index):
    return [(1, fmt.ENTRY_COMMAND, b"e%07d" % index)]


def _snapshot(directory, index, timestamp=100):
    (directory / ("snapshot-1-%d-%d" % (index, timestamp))).write_bytes(b"raw sqlite pages" * 8)
    (directory / ("snapshot-1-%d-%d.meta" % (index, timestamp))).write_bytes(snapshot_meta(1, SERVERS))


def _names(result):
    return sorted(f["name"] for f in result["files"])


def test_stopped_member_is_copied_whole_and_untouched(tmp_path):
    src = tmp_path / "member"
    _datadir(src, torn=True)
    before = fingerprint(src, ctime=True)
    result = backup.copy_online(str(src), str(tmp_path / "copy"))
    assert fingerprint(src, ctime=True) == before  # nothing written, renamed or touched under the member
    assert result["position"] == {"term": 1, "index": 33} and result["snapshot_index"] == 0
    assert _names(result) == ["node/cluster.yaml", "node/info.yaml", "raft/0000000000000001-0000000000000010",
                              "raft/0000000000000011-0000000000000020", "raft/0000000000000021-0000000000000030",
                              "raft/metadata1", "raft/metadata2", "raft/open-1"]  # never cluster.key
    # the open segment ends at its last complete batch: the torn one and the zero tail are not copied
    cut = (tmp_path / "copy" / "raft" / "open-1").read_bytes()
    assert cut == segment(_entries(31, 33))
    assert any("open-1" in w and "last complete batch" in w for w in result["warnings"])
    manifest = json.loads((tmp_path / "copy" / "MANIFEST.json").read_text())
    assert manifest["files"] == result["files"] and manifest["verified"]["result"] == "ok"
    assert backup.read_copy(str(tmp_path / "copy"))["position"] == result["position"]
    assert backup.check_copy(str(tmp_path / "copy" / "raft"))["log"]["last_index"] == 33
    assert sorted(os.listdir(tmp_path)) == ["copy", "member"]  # no temporary folder left


def test_only_the_newest_snapshot_and_the_segments_after_it_are_copied(tmp_path):
    src = tmp_path / "member"
    _datadir(src, closed=((1, 10), (11, 20), (21, 30)), snapshot=None, opened=((31, 33),))
    _snapshot(src, 12, 100)
    _snapshot(src, 25, 200)
    result = backup.copy_online(str(src), str(tmp_path / "copy"))
    raft = [n for n in _names(result) if n.startswith("raft/")]
    assert raft == ["raft/0000000000000021-0000000000000030", "raft/metadata1", "raft/metadata2", "raft/open-1",
                    "raft/snapshot-1-25-200", "raft/snapshot-1-25-200.meta"]
    assert result["position"]["index"] == 33 and result["snapshot_index"] == 25


def test_snapshot_past_every_closed_segment_keeps_the_last_one_to_number_the_open_segment(tmp_path):
    src = tmp_path / "member"
    _datadir(src, closed=((1, 10), (11, 20)), opened=((21, 40),))
    _snapshot(src, 35)  # raft took it while entries 21-40 were still in the open segment
    result = backup.copy_online(str(src), str(tmp_path / "copy"))
    assert "raft/0000000000000011-0000000000000020" in _names(result)
    assert result["position"]["index"] == 40


class _Member:
    """A progress sink that plays the member between two reads of the copy: at the n-th chunk
    copied, it changes the source directory the way raft does."""

    def __init__(self, at, act):
        self.at, self.act, self.calls = at, act, 0

    def phase(self, name, total=None):
        pass

    def advance(self, count):
        self.calls += 1
        if self.calls == self.at:
            self.act()


def test_open_segment_closed_and_new_entries_written_during_the_copy(tmp_path):
    src = tmp_path / "member"
    _datadir(src, opened=((31, 33),))

    def close_and_write():
        # raft fills open-1 (more entries), closes it by rename, and writes on in open-2
        full = segment(_entries(31, 36))
        (src / "open-1").write_bytes(full)
        os.rename(src / "open-1", src / ("%016d-%016d" % (31, 36)))
        (src / "open-2").write_bytes(segment(_entries(37, 38)) + b"\0" * 512)

    result = backup.copy_online(str(src), str(tmp_path / "copy"), progress=_Member(1, close_and_write))
    assert result["retries"] == 1, result["warnings"]
    assert "open-1 vanished" in " ".join(result["warnings"])
    assert result["position"]["index"] == 38
    assert backup.check_copy(str(tmp_path / "copy" / "raft"))["log"]["last_index"] == 38


def test_snapshot_taken_and_old_segments_removed_during_the_copy(tmp_path):
    src = tmp_path / "member"
    _datadir(src, closed=((1, 10), (11, 20), (21, 30)), opened=((31, 33),))

    def snapshot_and_prune():
        _snapshot(src, 30, 300)
        for name in ("0000000000000001-0000000000000010", "0000000000000011-0000000000000020"):
            os.unlink(src / name)

    result = backup.copy_online(str(src), str(tmp_path / "copy"), progress=_Member(1, snapshot_and_prune))
    assert result["retries"] == 1 and result["snapshot_index"] == 30
    raft = [n for n in _names(result) if n.startswith("raft/")]
    assert "raft/0000000000000001-0000000000000010" not in raft and "raft/snapshot-1-30-300" in raft
    assert result["position"]["index"] == 33


def test_a_segment_renamed_while_listed_is_caught_by_the_second_listing(tmp_path):
    """The first listing missed open-1 while raft renamed it (readdir may return neither name):
    the copy numbered open-2 from index 31. The second listing shows a closed segment at 31 that
    is not open-2: the round is retaken instead of splicing open-2's entries at 31."""
    src = tmp_path / "member"
    _datadir(src, opened=())
    (src / ("%016d-%016d" % (31, 36))).write_bytes(segment(_entries(31, 36)))
    (src / "open-2").write_bytes(segment(_entries(37, 38)))
    listing = backup._listing(str(src))  # pylint: disable=protected-access
    del listing["%016d-%016d" % (31, 36)]
    plan = backup.plan_copy(listing)
    assert plan["next_index"] == 31
    opened = [{"name": "open-2", "inode": listing["open-2"][0], "first_index": 31, "entries": 2}]
    with pytest.raises(backup._Moved, match="0000000000000031-0000000000000036 appeared"):  # pylint: disable=protected-access
        backup._check_open_segments_stayed(str(src), plan, opened)  # pylint: disable=protected-access
    opened[0]["first_index"] = 37
    plan["next_index"] = 37
    backup._check_open_segments_stayed(str(src), plan, opened)  # pylint: disable=protected-access


def test_files_that_keep_moving_fail_after_bounded_rounds_and_leave_no_copy(tmp_path):
    src = tmp_path / "member"
    _datadir(src, opened=((31, 33),))
    counter = [1]

    class Churn(_Member):
        def advance(self, count):  # every read of the copy sees open-N renamed away
            name = "open-%d" % counter[0]
            counter[0] += 1
            os.rename(src / name, src / ("open-%d" % counter[0]))

    with pytest.raises(backup.Refused, match="no consistent copy .* after 3 rounds"):
        backup.copy_online(str(src), str(tmp_path / "copy"), progress=Churn(0, None), max_rounds=3)
    assert sorted(os.listdir(tmp_path)) == ["member"]


def test_a_copy_that_does_not_load_fails_naming_the_file_and_leaves_nothing(tmp_path):
    src = tmp_path / "member"
    _datadir(src)
    data = bytearray((src / "0000000000000011-0000000000000020").read_bytes())
    data[8 + 16 + 3] ^= 0xFF  # the middle closed segment's first batch header
    (src / "0000000000000011-0000000000000020").write_bytes(bytes(data))
    with pytest.raises(backup.Refused, match="0000000000000011-0000000000000020: closed segment: header checksum"):
        backup.copy_online(str(src), str(tmp_path / "copy"))
    assert sorted(os.listdir(tmp_path)) == ["member"]


@pytest.mark.parametrize("case", ["exists", "inside", "gap", "no log"])
def test_bad_input_is_refused_naming_it_and_nothing_changes(tmp_path, case):
    src = tmp_path / "member"
    _datadir(src, closed=((1, 10), (21, 30)) if case == "gap" else ((1, 10),), opened=() if case != "exists" else ((11, 12),))
    if case == "no log":
        for name in os.listdir(src):
            if name[0].isdigit():
                os.unlink(src / name)
    dest = {"exists": tmp_path / "copy", "inside": src / "copy"}.get(case, tmp_path / "copy")
    if case == "exists":
        dest.mkdir()
    before = fingerprint(tmp_path)
    expected = {"exists": "already exists", "inside": "inside the member's directory",
                "gap": "starts at closed segment 0000000000000021-0000000000000030 and there is no snapshot",
                "no log": "nothing to back up"}[case]
    with pytest.raises(backup.Refused, match=expected):
        backup.copy_online(str(src), str(dest))
    assert fingerprint(tmp_path) == before
    assert not [n for n in os.listdir(tmp_path) if "partial" in n]


def test_read_copy_rejects_a_changed_file_and_would_copy_reads_nothing(tmp_path):
    src = tmp_path / "member"
    _datadir(src)
    backup.copy_online(str(src), str(tmp_path / "copy"))
    assert backup.read_copy(str(tmp_path / "copy")) is not None
    with open(tmp_path / "copy" / "raft" / "metadata1", "r+b") as handle:
        handle.write(b"\x02")
    assert backup.read_copy(str(tmp_path / "copy")) is None
    plan = backup.would_copy(str(src))
    assert [f["name"] for f in plan["files"]][-2:] == ["node/info.yaml", "node/cluster.yaml"]
    assert "raft/open-1" in [f["name"] for f in plan["files"]]


def test_stale_partial_copies_of_a_killed_run_are_removed(tmp_path):
    (tmp_path / ".copy.copy.partial-999999" / "raft").mkdir(parents=True)
    (tmp_path / ".other.copy.partial-1").mkdir()
    assert backup.remove_stale_partials(str(tmp_path / "copy")) == [".copy.copy.partial-999999"]
    assert sorted(os.listdir(tmp_path)) == [".other.copy.partial-1"]
