"""The etcd readers (WAL, .snap, bbolt) and the verdict, against exact bytes built by the
test-side encoder, including the 3.5/3.6 layouts the lab's etcd 3.4 cannot produce."""
from __future__ import annotations

import os
import random
import struct

import pytest

import etcd_builder as eb

from ansible_collections.quorum.recovery.plugins.module_utils import bbolt_format as bolt
from ansible_collections.quorum.recovery.plugins.module_utils import etcd_datadir as dd
from ansible_collections.quorum.recovery.plugins.module_utils import etcd_format as fmt


def test_crc32c_check_value_bitwise_reference_and_chaining():
    assert fmt.crc32c_python(b"123456789") == 0xE3069283 == eb.crc32c_bitwise(b"123456789")
    rng = random.Random(4)
    for size in (0, 1, 7, 8, 63, 64, 65, 1000, 4099):
        data = bytes(rng.randrange(256) for _byte in range(size))
        init = rng.randrange(1 << 32)
        assert fmt.crc32c_python(data) == eb.crc32c_bitwise(data)
        assert fmt.crc32c_python(data, init) == eb.crc32c_bitwise(data, init)
        assert fmt.crc32c(data, init) == fmt.crc32c_python(data, init)  # the C path, when there is one
    assert fmt.crc32c_python(b" world", fmt.crc32c_python(b"hello")) == fmt.crc32c_python(b"hello world")


def test_crc32c_uses_a_c_module_when_one_is_importable():
    try:
        import crc32c  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    except ImportError:
        assert fmt.CRC32C_IMPLEMENTATION in ("python", "google_crc32c")
    else:
        assert fmt.CRC32C_IMPLEMENTATION == "crc32c"


def _dir(tmp_path, wal=None, snaps=None, db=None):
    if db is None:
        db = eb.etcd_db(consistent_index=10)
    return eb.member_dir(str(tmp_path), wal or eb.simple_wal(), snaps, db)


def _inspect(path, depth="full"):
    facts = dd.inspect_datadir(path, depth)
    return facts, [p for p in facts["problems"] if p["severity"] == "error"]


def test_healthy_directory_reports_ids_log_hard_state_db_and_membership(tmp_path):
    path = _dir(tmp_path)
    for depth in ("full", "quick"):
        facts, errors = _inspect(path, depth)
        assert not errors and facts["verdict"] == "healthy", errors
        assert facts["member_id"] == "1" and facts["cluster_id"] == "c1"
        assert facts["log"]["last_index"] == 10 and facts["log"]["last_term"] == 2
        assert facts["log"]["hard_state"] == {"term": 2, "vote": 1, "commit": 10}
        assert facts["revision"] == 20 and facts["db"]["consistent_index"] == 10
        assert [v["id"] for v in facts["membership"]["voters"]] == ["1"]
        assert facts["membership"]["voters"][0]["name"] == "m1"
        assert facts["layout"] == "3.4"
    assert facts["key_count"] is None  # quick: no full count
    full, _errors = _inspect(path)
    # etcdctl snapshot status counts the keys of every bucket: 20 revisions + 1 + 1 + 1
    assert full["key_count"] == 23 and full["db"]["snapshot_status"]["total_size"] == 7 * 4096
    assert [f["crc_checked"] for f in full["wal"]["files"]] == [True, True]
    assert [f["crc_checked"] for f in _inspect(path, "quick")[0]["wal"]["files"]] == [False, True]
    wal = eb.simple_wal(entries=12, files=4)
    facts, errors = _inspect(_dir(tmp_path / "four", wal), "quick")  # crc records of unhashed files
    assert not errors and facts["log"]["last_index"] == 12


def test_a_later_entry_with_a_lower_index_truncates_the_tail(tmp_path):
    wal = eb.simple_wal(entries=6, files=1)
    wal.add(eb.ENTRY, eb.entry(3, 4))  # new leader overwrote index 4
    wal.add(eb.STATE, eb.hard_state(3, 1, 4))
    facts, errors = _inspect(_dir(tmp_path, wal))
    assert not errors and (facts["log"]["last_index"], facts["log"]["last_term"]) == (4, 3)
    assert facts["prediction"]["outcome"] == "starts"


def test_hard_state_commit_beyond_the_last_entry_makes_raft_panic(tmp_path):
    wal = eb.simple_wal(entries=6, files=1)
    wal.add(eb.ENTRY, eb.entry(3, 4))  # overwrites index 4 although commit 6 was persisted
    facts, errors = _inspect(_dir(tmp_path, wal))
    assert facts["verdict"] == "unusable" and "beyond the last entry 4" in errors[0]["message"]
    assert facts["prediction"]["outcome"] == "panics"
    assert facts["prediction"]["error"] == "state.commit 6 is out of range"


def test_torn_tail_is_repairable_and_names_file_and_offset(tmp_path):
    wal = eb.simple_wal(entries=6, files=2)
    wal.add(eb.ENTRY, eb.entry(2, 7, 0, b"v" * 1500))  # spans sectors
    name, data = wal.files[-1]
    last_offset = wal.offsets[-1][1]
    # power loss: the sectors after the first one the record touches never reached the disk
    wal.files[-1] = (name, bytearray(data[:(last_offset // 512 + 1) * 512]))
    facts, errors = _inspect(_dir(tmp_path, wal, db=eb.etcd_db(consistent_index=5)))
    assert facts["verdict"] == "repairable", errors
    assert errors[0]["file"] == name and errors[0]["offset"] == last_offset and errors[0]["repairable"]
    assert "truncate it at offset %d" % last_offset in errors[0]["etcd_would"]
    assert facts["log"]["last_index"] == 6  # entry 7 was the torn record
    assert facts["prediction"]["outcome"] == "starts"
    assert facts["prediction"]["changes"] == [{"action": "truncate", "file": name, "offset": last_offset,
                                               "keep": name + ".broken"}]
    # the same record with one sector of garbage instead of zeros is corruption, not a torn write
    wal.files[-1] = (name, bytearray(data[:(last_offset // 512 + 1) * 512] + b"\x55" * 2048))
    facts, errors = _inspect(_dir(tmp_path / "garbage", wal, db=eb.etcd_db(consistent_index=5)))
    assert facts["verdict"] == "unusable" and errors[0]["offset"] == last_offset


def test_crc_break_mid_log_is_unusable_with_the_right_file_and_offset(tmp_path):
    wal = eb.simple_wal(entries=8, files=2)
    file_no, offset = wal.offsets[4]
    name, data = wal.files[file_no]
    data[offset + 12] ^= 0x01  # a byte inside the record's data
    facts, errors = _inspect(_dir(tmp_path, wal))
    assert facts["verdict"] == "unusable"
    assert errors[0]["file"] == name == wal.files[0][0] and errors[0]["offset"] == offset
    assert "refuse to start" in errors[0]["etcd_would"]
    assert facts["prediction"] == {"starts": False, "outcome": "refuses", "error": "walpb: crc mismatch", "file": name,
                                   "reason": errors[0]["message"], "changes": [], "last_index": None}


def test_crc_break_in_the_last_file_without_a_zero_sector_is_not_torn(tmp_path):
    wal = eb.simple_wal(entries=8, files=2)
    file_no, offset = wal.offsets[-3]
    wal.files[file_no][1][offset + 12] ^= 0x01
    facts, errors = _inspect(_dir(tmp_path, wal))
    assert facts["verdict"] == "unusable" and errors[0]["file"] == wal.files[-1][0]


def test_missing_wal_in_the_sequence_is_unusable(tmp_path):
    wal = eb.simple_wal(entries=9, files=3)
    path = _dir(tmp_path, wal)
    os.remove(os.path.join(path, "member", "wal", wal.files[1][0]))
    for depth in ("full", "quick"):  # quick does not hash the first file: the names still tell
        facts, errors = _inspect(path, depth)
        assert facts["verdict"] == "unusable" and errors[0]["file"] == wal.files[2][0]
        assert "sequence" in errors[0]["message"] and len(errors) == 1, errors
        assert facts["prediction"]["outcome"] == "refuses" and facts["prediction"]["error"] == "wal: crc mismatch"


def _four_files_snapshot_in_the_third():
    """Files 0..3, entries 1..16 (4 a file), a snapshot at index 10 (in file 2), .snap and db at 10."""
    wal = eb.Wal()
    wal.cut(0, 0)
    wal.add(eb.METADATA, eb.metadata(1, 0xC1))
    wal.add(eb.SNAPSHOT, eb.wal_snapshot(0, 0))
    for index in range(1, 17):
        if index in (5, 9, 13):
            wal.cut(len(wal.files), index)
            wal.add(eb.METADATA, eb.metadata(1, 0xC1))
        payload = eb.conf_change(1, 0, "m1", ["http://10.0.0.1:2380"]) if index == 1 else b"put %d" % index
        wal.add(eb.ENTRY, eb.entry(2, index, 1 if index == 1 else 0, payload))
        wal.add(eb.STATE, eb.hard_state(2, 1, index))
        if index == 10:
            wal.add(eb.SNAPSHOT, eb.wal_snapshot(10, 2))
    snaps = {"0000000000000002-000000000000000a.snap": eb.snap_file(2, 10, voters=[1])}
    return wal, snaps


@pytest.mark.parametrize("depth", ["full", "quick"])
def test_missing_wal_before_the_snapshot_file_is_repairable_by_archiving_the_older_files(tmp_path, depth):
    wal, snaps = _four_files_snapshot_in_the_third()
    path = _dir(tmp_path, wal, snaps, eb.etcd_db(consistent_index=10))
    facts, errors = _inspect(path, depth)
    assert not errors and facts["prediction"]["outcome"] == "starts" and facts["log"]["last_index"] == 16
    assert facts["wal"]["selected_from"] == wal.files[2][0]
    os.remove(os.path.join(path, "member", "wal", wal.files[1][0]))
    facts, errors = _inspect(path, depth)
    # etcd reads every file from the first: the chain breaks at file 2, so it refuses to start ...
    assert facts["prediction"]["outcome"] == "refuses" and facts["prediction"]["error"] == "wal: crc mismatch"
    assert [e["file"] for e in errors] == [wal.files[2][0]] and "sequence" in errors[0]["message"]
    # ... and moving file 0 away leaves files 2 and 3, which hold the snapshot and all after it
    assert facts["verdict"] == "repairable" and errors[0]["repairable"]
    assert wal.files[0][0] in errors[0]["remedy"] and errors[0]["data_lost"].startswith("nothing")
    assert facts["wal"]["archive_first"] == [wal.files[0][0]] and facts["log"]["last_index"] == 16
    # the file that holds the snapshot missing: entries 11..12 are gone for good
    os.rename(os.path.join(path, "member", "wal", wal.files[0][0]), os.path.join(str(tmp_path), "moved"))
    os.rename(os.path.join(str(tmp_path), "moved"), os.path.join(path, "member", "wal", wal.files[0][0]))
    with open(os.path.join(path, "member", "wal", wal.files[1][0]), "wb") as handle:
        handle.write(bytes(wal.files[1][1]) + b"\0" * 4096)
    os.remove(os.path.join(path, "member", "wal", wal.files[2][0]))
    facts, errors = _inspect(path, depth)
    assert facts["verdict"] == "unusable" and [e["file"] for e in errors] == [wal.files[3][0]]
    assert facts["prediction"]["error"] == "wal: crc mismatch" and facts["log"]["last_index"] is None


def test_a_crc_break_before_a_gap_is_what_etcd_reports_and_the_gap_is_listed_too(tmp_path):
    wal = eb.simple_wal(entries=12, files=4)
    file_no, offset = wal.offsets[4]
    wal.files[file_no][1][offset + 12] ^= 0x01
    path = _dir(tmp_path, wal)
    os.remove(os.path.join(path, "member", "wal", wal.files[2][0]))
    facts, errors = _inspect(path)
    assert facts["prediction"]["error"] == "walpb: crc mismatch" and facts["prediction"]["file"] == wal.files[0][0]
    assert [e["file"] for e in errors] == [wal.files[0][0], wal.files[3][0]] and facts["verdict"] == "unusable"


def test_a_purged_prefix_is_not_a_gap(tmp_path):
    wal, snaps = _four_files_snapshot_in_the_third()
    path = _dir(tmp_path, wal, snaps, eb.etcd_db(consistent_index=10))
    for number in (0, 1):  # what --max-wals purging leaves: the oldest files gone
        os.remove(os.path.join(path, "member", "wal", wal.files[number][0]))
    facts, errors = _inspect(path)
    assert not errors and facts["verdict"] == "healthy" and facts["log"]["last_index"] == 16


def test_a_snap_without_a_wal_snapshot_record_is_skipped(tmp_path):
    wal, snaps = _four_files_snapshot_in_the_third()
    snaps["0000000000000002-000000000000000f.snap"] = eb.snap_file(2, 15, voters=[1])  # crash before the record
    facts, errors = _inspect(_dir(tmp_path, wal, snaps, eb.etcd_db(consistent_index=10)))
    assert not errors and facts["snapshot_loaded"]["index"] == 10, errors
    assert any(p["severity"] == "info" and p["file"].endswith("f.snap") for p in facts["problems"])
    assert facts["prediction"] == {"starts": True, "outcome": "starts", "error": None, "file": None, "reason": None,
                                   "changes": [], "last_index": 16}


def test_length_word_over_the_record_limit_is_refused_not_torn(tmp_path):
    wal = eb.simple_wal(entries=6, files=1)
    name, data = wal.files[-1]
    data.extend(struct.pack("<Q", 10 * 1024 * 1024) + b"\0" * 64)  # at the end of the data, in the last file
    facts, errors = _inspect(_dir(tmp_path, wal))
    assert facts["verdict"] == "unusable" and errors[0]["file"] == name
    assert facts["prediction"]["outcome"] == "refuses"
    assert facts["prediction"]["error"] == "wal: max entry size limit exceeded"


def test_partial_length_word_in_the_last_file_is_repaired_and_in_an_older_file_refused(tmp_path):
    wal = eb.simple_wal(entries=6, files=2)
    end = len(wal.files[-1][1])
    wal.write(os.path.join(str(tmp_path / "a"), "member", "wal"), prealloc=0)
    eb.member_dir(str(tmp_path / "a"), eb.Wal(), db=eb.etcd_db(consistent_index=6))
    with open(os.path.join(str(tmp_path / "a"), "member", "wal", wal.files[-1][0]), "ab") as handle:
        handle.write(b"\0\0\0")  # three bytes of a length word: Go's binary.Read says unexpected EOF
    facts, errors = _inspect(str(tmp_path / "a"))
    assert facts["verdict"] == "repairable" and errors[0]["offset"] == end
    assert facts["prediction"]["changes"][0]["offset"] == end
    first = os.path.join(str(tmp_path / "a"), "member", "wal", wal.files[0][0])
    with open(first, "r+b") as handle:
        handle.truncate(len(wal.files[0][1]) - 5)  # the older file's last record cut short
    facts, errors = _inspect(str(tmp_path / "a"))
    assert facts["verdict"] == "unusable" and errors[0]["file"] == wal.files[0][0]
    assert facts["prediction"]["outcome"] == "refuses" and facts["prediction"]["error"] == "unexpected EOF"


def test_no_wal_bootstraps_a_new_member(tmp_path):
    path = _dir(tmp_path)
    for name in os.listdir(os.path.join(path, "member", "wal")):
        os.remove(os.path.join(path, "member", "wal", name))
    facts, errors = _inspect(path)
    assert facts["verdict"] == "unusable" and errors[0]["file"] == "member/wal"
    assert facts["prediction"]["outcome"] == "new-member" and facts["revision"] == 20


def _snap_wal():
    """Entries 1..12; a snapshot at index 8 term 2 (WAL record and .snap)."""
    wal = eb.simple_wal(entries=8, files=1)
    wal.add(eb.SNAPSHOT, eb.wal_snapshot(8, 2))
    for index in range(9, 13):
        wal.add(eb.ENTRY, eb.entry(2, index, 0, b"x"))
    return wal


def test_corrupt_newest_snap_falls_back_to_the_wal(tmp_path):
    snap = bytearray(eb.snap_file(2, 8, voters=[1]))
    snap[-3] ^= 0xFF
    facts, errors = _inspect(_dir(tmp_path, _snap_wal(), {"0000000000000002-0000000000000008.snap": bytes(snap)}))
    assert errors and errors[0]["file"] == "0000000000000002-0000000000000008.snap"
    assert "crc mismatch" in errors[0]["message"] and ".broken" in errors[0]["etcd_would"]
    assert facts["verdict"] == "repairable" and facts["log"]["last_index"] == 12
    assert facts["snapshot_loaded"] is None


def test_snapshot_newer_than_db_needs_its_snap_db(tmp_path):
    snaps = {"0000000000000002-0000000000000008.snap": eb.snap_file(2, 8, voters=[1])}
    facts, errors = _inspect(_dir(tmp_path, _snap_wal(), snaps, eb.etcd_db(consistent_index=5)))
    assert facts["verdict"] == "unusable" and errors[0]["file"] == "member/snap/0000000000000008.snap.db"
    assert "failed to find database snapshot file" in errors[0]["etcd_would"]
    assert facts["prediction"]["outcome"] == "panics"
    assert facts["prediction"]["error"].startswith("failed to recover v3 backend from snapshot")
    assert facts["snapshot_loaded"]["index"] == 8 and facts["membership"]["voters"][0]["id"] == "1"
    with open(os.path.join(str(tmp_path), "member", "snap", "0000000000000008.snap.db"), "wb") as handle:
        handle.write(eb.etcd_db(consistent_index=8))
    facts, errors = _inspect(str(tmp_path))
    assert not errors and facts["verdict"] == "healthy"
    assert facts["prediction"]["changes"] == [{"action": "replace", "file": "member/snap/db",
                                               "with": "0000000000000008.snap.db"}]
    os.remove(os.path.join(str(tmp_path), "member", "snap", "db"))  # etcd creates an empty one, then the same
    facts, errors = _inspect(str(tmp_path))
    assert not errors and facts["prediction"]["changes"][0]["with"] == "0000000000000008.snap.db"


@pytest.mark.parametrize("pages, verdict", [((0,), "repairable"), ((1,), "repairable"), ((0, 1), "unusable")])
def test_bbolt_meta_checksum_bad_on_one_page_and_on_both(tmp_path, pages, verdict):
    db = bytearray(eb.etcd_db())
    for page in pages:
        db[page * 4096 + 16 + 40] ^= 0x01  # inside the meta struct (freelist pgid): checksum breaks
    facts, errors = _inspect(_dir(tmp_path, db=bytes(db)))
    assert facts["verdict"] == verdict and errors[0]["file"] == "member/snap/db"
    assert "checksum" in errors[0]["message"]
    if verdict == "repairable":
        assert facts["db"]["meta_used"] == 1 - pages[0] and facts["revision"] == 20
        assert facts["prediction"]["outcome"] == "starts"
    else:
        assert facts["prediction"] == {"starts": False, "outcome": "panics", "file": "member/snap/db",
                                       "error": "failed to open database: checksum error",
                                       "reason": errors[0]["message"], "changes": [], "last_index": None}


def test_bbolt_page_pointing_outside_the_file_and_a_truncated_db(tmp_path):
    db = bytearray(eb.etcd_db())
    struct.pack_into("<Q", db, 3 * 4096 + 16 + 16 + 8, 10_000)  # branch element 1 -> page 10000
    facts, errors = _inspect(_dir(tmp_path / "a", db=bytes(db)))
    assert facts["verdict"] == "unusable" and "page 10000" in errors[0]["message"]
    facts, errors = _inspect(_dir(tmp_path / "b", db=eb.etcd_db()[:5 * 4096]))
    assert facts["verdict"] == "unusable" and "truncated" in errors[0]["message"]


def test_db_from_another_cluster(tmp_path):
    facts, errors = _inspect(_dir(tmp_path, db=eb.etcd_db(members={0x99: "http://10.9.9.9:2380"})))
    assert facts["verdict"] == "unusable" and "another cluster" in errors[0]["message"]


def test_etcd_35_and_36_meta_keys_and_wal_conf_state(tmp_path):
    wal = eb.simple_wal(entries=8, files=1)
    wal.add(eb.SNAPSHOT, eb.wal_snapshot(8, 2, voters=[1]))  # 3.5+ carries the conf state
    db35 = eb.etcd_db(consistent_index=8, term=2, conf_voters=[1])
    facts, errors = _inspect(_dir(tmp_path / "35", wal, db=db35))
    assert not errors and facts["layout"] == "3.5"
    assert facts["db"]["term"] == 2 and facts["membership"]["db_conf_state"] == {"voters": [1]}
    db36 = eb.etcd_db(consistent_index=8, term=2, conf_voters=[1], storage_version="3.6.0")
    facts, errors = _inspect(_dir(tmp_path / "36", wal, db=db36))
    assert not errors and facts["layout"] == "3.6" and facts["db"]["storage_version"] == "3.6.0"
    assert fmt.parse_wal_snapshot(eb.wal_snapshot(8, 2, voters=[1, 2]))["conf_state"]["voters"] == ["1", "2"]


def test_snapshot_status_hash_is_crc32c_over_bucket_names_keys_and_values():
    db = eb.etcd_db(revisions=4)
    parsed = bolt.read_etcd_db(db)
    expected = 0
    layout = [(b"cluster", [(b"clusterVersion", b"3.4.0")]),
              (b"key", [(eb.revision_key(r), b"value-%d" % r) for r in range(1, 5)]),
              (b"members", [(b"1", b'{"id": 1, "peerURLs": ["http://10.0.0.1:2380"]}')]),
              (b"members_removed", []), (b"meta", [(b"consistent_index", struct.pack(">Q", 10))])]
    for name, items in layout:
        expected = eb.crc32c_bitwise(name, expected)
        for key, value in items:
            expected = eb.crc32c_bitwise(value, eb.crc32c_bitwise(key, expected))
    assert parsed["snapshot_status"] == {"hash": expected, "revision": 4, "total_key": 7, "total_size": 7 * 4096}


def test_fuzzed_directories_never_crash(tmp_path):
    rng = random.Random(11)
    wal = _snap_wal()
    snaps = {"0000000000000002-0000000000000008.snap": eb.snap_file(2, 8, voters=[1])}
    path = _dir(tmp_path, wal, snaps, eb.etcd_db(consistent_index=12))
    files = [os.path.join(root, n) for root, _d, names in os.walk(path) for n in names]
    for _round in range(150):
        victim = rng.choice(files)
        with open(victim, "rb") as handle:
            original = handle.read()
        data = bytearray(original)
        if rng.random() < 0.3:
            data = data[:rng.randrange(len(data) + 1)]
        else:
            for _flip in range(rng.randrange(1, 6)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        with open(victim, "wb") as handle:
            handle.write(data)
        try:
            for depth in ("full", "quick"):
                facts = dd.inspect_datadir(path, depth)
                assert facts["verdict"] in ("healthy", "repairable", "unusable")
        finally:
            with open(victim, "wb") as handle:
                handle.write(original)


def test_the_neutral_summary_carries_what_the_election_reads(tmp_path):
    facts, _errors = _inspect(_dir(tmp_path))
    summary = facts["summary"]
    assert summary["engine"] == "etcd" and summary["member_id"] == "1" and summary["cluster_key"] == "c1"
    assert (summary["last_term"], summary["last_index"], summary["current_term"], summary["commit"]) == (2, 10, 2, 10)
    assert summary["tie_break"] == [10, 20]  # applied (commit vs consistent_index), then the db revision
    assert [(v["id"], v["name"], v["role"]) for v in summary["voters"]] == [("1", "m1", "voter")]
    assert summary["verdict"] == facts["verdict"] and summary["problems"] == []
    assert summary["running"] is False
