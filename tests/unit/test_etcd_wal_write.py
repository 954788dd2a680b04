"""The HardState writer (module_utils/etcd_wal_write) and the InternalRaftRequest key parser
(etcd_format.request_writes, etcd_datadir.unapplied), against exact bytes from the test-side
encoder (tests/etcd_builder.py). The CRC chain is checked with the builder's own bitwise CRC, not
with the reader under test. The parser on bytes real etcd 3.4 and 3.5 wrote is checked in
tests/integration/test_etcd_replay.py."""
from __future__ import annotations

import os
import struct

import pytest

import etcd_builder as eb

from ansible_collections.quorum.recovery.plugins.module_utils import etcd_datadir as dd
from ansible_collections.quorum.recovery.plugins.module_utils import etcd_format as fmt
from ansible_collections.quorum.recovery.plugins.module_utils import etcd_wal_write as ww
from ansible_collections.quorum.recovery.plugins.module_utils.ondisk import FormatError


# ----------------------------------------------------------------- etcdserverpb, encoded here
def put(key: bytes, value: bytes = b"v") -> bytes:
    return eb.field_bytes(1, key) + eb.field_bytes(2, value)


def delete_range(key: bytes, range_end: bytes = b"") -> bytes:
    return eb.field_bytes(1, key) + (eb.field_bytes(2, range_end) if range_end else b"")


def request_op(put_req=None, delete_req=None, txn_req=None) -> bytes:
    if put_req is not None:
        return eb.field_bytes(2, put_req)
    if delete_req is not None:
        return eb.field_bytes(3, delete_req)
    return eb.field_bytes(4, txn_req)


def txn(success=(), failure=()) -> bytes:
    compare = eb.field_bytes(1, eb.field_int(1, 0) + eb.field_bytes(3, b"/cmp"))  # a Compare the parser skips
    return compare + b"".join(eb.field_bytes(2, op) for op in success) + b"".join(
        eb.field_bytes(3, op) for op in failure)


def irr(request_id: int = 7, put_req=None, delete_req=None, txn_req=None, lease_grant=False) -> bytes:
    """etcdserverpb.InternalRaftRequest with a header (field 100), as etcd 3.4+ proposes it."""
    out = eb.field_bytes(100, eb.field_int(1, request_id)) + eb.field_int(1, request_id)
    if put_req is not None:
        out += eb.field_bytes(4, put_req)
    if delete_req is not None:
        out += eb.field_bytes(5, delete_req)
    if txn_req is not None:
        out += eb.field_bytes(6, txn_req)
    if lease_grant:
        out += eb.field_bytes(8, eb.field_int(1, 60) + eb.field_int(2, 99))
    return out


def v2_request(method: bytes = b"PUT", path: bytes = b"/0/members/1/attributes") -> bytes:
    """A bare etcd 3.4 v2 pb.Request {ID = 1, Method = 2, Path = 3, Val = 4}, as its publish proposes it."""
    return eb.field_int(1, 5) + eb.field_bytes(2, method) + eb.field_bytes(3, path) + eb.field_bytes(4, b"{}")


# ----------------------------------------------------------------- helpers
def _frames(data: bytes):
    """Every (offset, type, crc, data, end offset) of a WAL file, decoded here from the framing rules."""
    pos, out = 0, []
    while pos + 8 <= len(data):
        word = struct.unpack_from("<Q", data, pos)[0]
        if word == 0:
            break
        length = word & 0x00FFFFFFFFFFFFFF
        pad = (word >> 56) & 7 if word >> 63 else 0
        fields = fmt.proto_fields(data[pos + 8:pos + 8 + length])
        out.append((pos, fields.get(1, [0])[-1], fields.get(2, [0])[-1], bytes(fields.get(3, [b""])[-1]),
                    pos + 8 + length + pad))
        pos += 8 + length + pad
    return out


def _chain_ok(wal_dir: str) -> bool:
    crc = 0
    for name in sorted(n for n in os.listdir(wal_dir) if n.endswith(".wal")):
        with open(os.path.join(wal_dir, name), "rb") as handle:
            for _pos, rtype, rcrc, rdata, _end in _frames(handle.read()):
                if rtype == eb.CRC:
                    if crc and rcrc != crc:
                        return False
                    crc = rcrc
                    continue
                crc = eb.crc32c_bitwise(rdata, crc)
                if rcrc != crc:
                    return False
    return True


def _wal(entries: dict[int, bytes], commit: int, files: int = 2, member_id: int = 1) -> eb.Wal:
    """A one-member WAL: bootstrap conf change at 1, then `entries` {index: data}, each followed by
    a HardState whose commit never passes `commit` (a member that did not hear of the later commits)."""
    wal = eb.Wal()
    wal.cut(0, 0)
    wal.add(eb.METADATA, eb.metadata(member_id, 0xC1))
    wal.add(eb.SNAPSHOT, eb.wal_snapshot(0, 0))
    wal.add(eb.ENTRY, eb.entry(1, 1, 1, eb.conf_change(member_id, 0, "m1", ["http://10.0.0.1:2380"])))
    wal.add(eb.STATE, eb.hard_state(1, member_id, 1))
    last = max(entries)
    cut_at = 2 + (last - 1) // files
    for index in range(2, last + 1):
        if index == cut_at and files > 1:
            wal.cut(1, index)
            wal.add(eb.METADATA, eb.metadata(member_id, 0xC1))
            wal.add(eb.STATE, eb.hard_state(2, member_id, min(commit, index - 1)))
        wal.add(eb.ENTRY, eb.entry(2, index, 0, entries.get(index, b"")))
        wal.add(eb.STATE, eb.hard_state(2, member_id, min(commit, index)))
    return wal


def _member(tmp_path, entries, commit, consistent_index, files=2):
    return eb.member_dir(str(tmp_path), _wal(entries, commit, files), db=eb.etcd_db(consistent_index=consistent_index),
                         prealloc=16384)


def _last_wal(path):
    return ww.last_wal_file(os.path.join(path, "member", "wal"))


# ----------------------------------------------------------------- the writer
def test_append_sets_commit_to_the_last_index_and_continues_the_crc_chain(tmp_path):
    path = _member(tmp_path, {i: irr(i, put_req=put(b"/k/%d" % i)) for i in range(2, 21)}, commit=12,
                   consistent_index=12)
    before = dd.inspect_datadir(path)
    assert before["log"]["hard_state"] == {"term": 2, "vote": 1, "commit": 12} and before["log"]["last_index"] == 20
    with open(_last_wal(path), "rb") as handle:
        old = handle.read()
    done = ww.append_hard_state(os.path.join(path, "member", "wal"), 2, 1, 20)
    with open(_last_wal(path), "rb") as handle:
        new = handle.read()
    assert len(new) == len(old) and new[:done["offset"]] == old[:done["offset"]], "bytes before the frame changed"
    frames = _frames(new)
    assert [f[0] for f in frames] == [f[0] for f in _frames(old)] + [done["offset"]]
    last = frames[-1]
    assert last[1] == eb.STATE and fmt.parse_hard_state(last[3]) == {"term": 2, "vote": 1, "commit": 20}
    assert last[2] == done["crc"] and _chain_ok(os.path.join(path, "member", "wal"))
    assert not any(new[done["offset"] + done["frame_size"]:]) and done["zeroed"] == 0
    assert done["hard_state_before"]["commit"] == 12
    after = dd.inspect_datadir(path)
    assert after["log"]["hard_state"] == {"term": 2, "vote": 1, "commit": 20}
    assert after["log"]["last_index"] == 20 and after["wal"]["error"] is None and after["verdict"] == "healthy"
    assert after["wal"]["record_counts"]["state"] == before["wal"]["record_counts"]["state"] + 1
    assert after["unapplied"]["beyond_commit"] == 0 and before["unapplied"]["beyond_commit"] == 8


def test_append_lands_after_the_last_valid_record_and_zeroes_a_torn_tail(tmp_path):
    path = _member(tmp_path, {i: irr(i, put_req=put(b"/k/%d" % i)) for i in range(2, 11)}, commit=10,
                   consistent_index=10, files=1)
    wal = _last_wal(path)
    with open(wal, "rb") as handle:
        data = bytearray(handle.read())
    end = _frames(bytes(data))[-1][4]
    # an entry whose write was cut: a whole 512-byte sector of its body never reached the disk
    torn = eb.frame(eb.ENTRY, 0x1234, eb.entry(2, 11, 0, irr(11, put_req=put(b"/k/11", b"x" * 3000))))
    data[end:end + len(torn)] = torn
    sector = (end // 512 + 2) * 512
    data[sector:sector + 512] = b"\0" * 512
    with open(wal, "wb") as handle:
        handle.write(data)
    broken = dd.inspect_datadir(path)
    assert broken["wal"]["error"]["kind"] == "torn" and broken["wal"]["error"]["offset"] == end
    assert broken["log"]["last_index"] == 10
    done = ww.append_hard_state(os.path.join(path, "member", "wal"), 2, 1, 10)
    assert done["offset"] == end and done["zeroed"] > 0
    with open(wal, "rb") as handle:
        new = handle.read()
    assert not any(new[end + done["frame_size"]:]), "the torn tail is not zeroed"
    assert len(new) == len(data)
    fixed = dd.inspect_datadir(path)
    assert fixed["wal"]["error"] is None and fixed["log"]["last_index"] == 10
    assert fixed["log"]["hard_state"]["commit"] == 10 and _chain_ok(os.path.join(path, "member", "wal"))


def test_append_refuses_a_crc_break_before_the_end_and_changes_nothing(tmp_path):
    path = _member(tmp_path, {i: irr(i, put_req=put(b"/k/%d" % i)) for i in range(2, 21)}, commit=20,
                   consistent_index=20)
    wal = _last_wal(path)
    with open(wal, "rb") as handle:
        data = bytearray(handle.read())
    victim = _frames(bytes(data))[3]
    data[victim[0] + 20] ^= 0xFF  # inside an entry in the middle of the file: real corruption
    with open(wal, "wb") as handle:
        handle.write(data)
    with pytest.raises(FormatError, match="crc mismatch"):
        ww.append_hard_state(os.path.join(path, "member", "wal"), 2, 1, 20)
    with open(wal, "rb") as handle:
        assert handle.read() == bytes(data)


def test_encoders_match_the_test_side_encoder():
    for rtype, crc, data in ((eb.STATE, 0xDEADBEEF, eb.hard_state(5, 1 << 63, 300)), (eb.CRC, 7, b""),
                             (eb.ENTRY, 0, b"x" * 13)):
        assert fmt.encode_frame(rtype, crc, data) == eb.frame(rtype, crc, data)
    assert fmt.encode_hard_state(0, 0, 0) == eb.hard_state(0, 0, 0)
    assert fmt.encode_hard_state(3, 0x9CE5D0B1E1C6B8A2, 1 << 40) == eb.hard_state(3, 0x9CE5D0B1E1C6B8A2, 1 << 40)


# ----------------------------------------------------------------- the key parser
def test_request_writes_reads_puts_deletes_and_both_branches_of_nested_transactions():
    assert fmt.request_writes(irr(put_req=put(b"/a"))) == [("put", b"/a", None)]
    assert fmt.request_writes(irr(delete_req=delete_range(b"/r/", b"/r0"))) == [("delete", b"/r/", b"/r0")]
    assert fmt.request_writes(irr(delete_req=delete_range(b"/one"))) == [("delete", b"/one", None)]
    inner = txn(success=[request_op(put_req=put(b"/in"))])
    nested = txn(success=[request_op(put_req=put(b"/s")), request_op(delete_req=delete_range(b"/d", b"\0")),
                          request_op(txn_req=inner)],
                 failure=[request_op(put_req=put(b"/f"))])
    assert sorted(fmt.request_writes(irr(txn_req=nested))) == sorted(
        [("put", b"/s", None), ("delete", b"/d", b"\0"), ("put", b"/in", None), ("put", b"/f", None)])
    assert fmt.request_writes(irr(lease_grant=True)) == []
    assert fmt.request_writes(v2_request()) is None
    assert fmt.request_writes(v2_request(b"SYNC", b"")) is None
    assert fmt.request_writes(b"\xff\xff") is None


def test_key_text_escapes_what_is_not_utf8_and_writes_ranges():
    assert fmt.key_text(b"/registry/pods/default/web") == "/registry/pods/default/web"
    assert fmt.key_text("/é".encode()) == "/é"
    assert fmt.key_text(b"/bin/\xff\x00") == "/bin/\\xff\x00"
    assert fmt.key_text(b"/r/", b"/r0") == "[/r/, /r0)"
    assert fmt.key_text(b"/from", b"\0") == "[/from, ...)"


def test_unapplied_lists_the_keys_beyond_min_of_commit_and_consistent_index(tmp_path):
    entries = {i: irr(i, put_req=put(b"/k/%02d" % i)) for i in range(2, 31)}
    entries[25] = irr(25, delete_req=delete_range(b"/gone/", b"/gone0"))
    entries[26] = v2_request()
    entries[27] = irr(27, txn_req=txn(success=[request_op(put_req=put(b"/t/\xfe"))]))
    entries[28] = b""  # a leader's empty entry
    path = _member(tmp_path, entries, commit=22, consistent_index=18)
    facts = dd.inspect_datadir(path, "quick")
    beyond = facts["unapplied"]
    assert beyond["beyond_commit"] == 30 - 22 and beyond["beyond_db"] == 30 - 18
    want = sorted(["/k/%02d" % i for i in range(19, 31) if i not in (25, 26, 27, 28)] + ["[/gone/, /gone0)", "/t/\\xfe"])
    assert beyond["keys"] == want[:20] and beyond["more_keys"] == max(0, len(want) - 20)
    assert beyond["undecoded"] == 1
    assert facts["summary"]["unapplied"] == {k: beyond[k] for k in ("beyond_commit", "beyond_db", "keys", "more_keys")}
    # the db ahead of the commit: the floor is the commit
    ahead = dd.inspect_datadir(_member(tmp_path / "ahead", entries, commit=22, consistent_index=29), "quick")
    assert ahead["unapplied"]["beyond_db"] == 1 and ahead["unapplied"]["beyond_commit"] == 8
    assert ahead["unapplied"]["keys"][0] == "/k/23"
    capped = dd.inspect_datadir(path, "quick", key_limit=3)["unapplied"]
    assert capped["keys"] == want[:3] and capped["more_keys"] == len(want) - 3


def test_a_member_that_applied_everything_has_nothing_beyond(tmp_path):
    path = _member(tmp_path, {i: irr(i, put_req=put(b"/k/%d" % i)) for i in range(2, 11)}, commit=10,
                   consistent_index=10)
    assert dd.inspect_datadir(path)["summary"]["unapplied"] == {"beyond_commit": 0, "beyond_db": 0, "keys": [],
                                                                "more_keys": 0}
