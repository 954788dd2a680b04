# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""etcd's WAL and .snap formats (3.4, 3.5, 3.6), read the way etcd's own readers read them.

PRIVATE to this collection: may change without notice. Standard library only: this runs on
the members. Nothing here writes, renames or locks a file (etcd_wal_write.py appends to a copy).

Layout facts (etcd server/storage/wal: encoder.go, decoder.go, wal.go, repair.go; snap/snapshotter.go;
walpb, snappb, raftpb and etcdserverpb protobufs):
- a WAL file is a sequence of frames: u64 little-endian length word (low 56 bits = record length;
  if the top bit is set, (word >> 56) & 7 bytes of padding follow the record), a length of 0 or
  the end of the file ends the file's data;
- a record is protobuf {int64 type = 1; uint32 crc = 2; bytes data = 3}; crc is the running
  CRC-32C (Castagnoli) over the data of every record so far, except type 4 (crc) records, which
  carry the running value at the start of their file and reset it;
- a .snap file is protobuf {uint32 crc = 1; bytes data = 2}, crc = CRC-32C of data alone.
"""

from __future__ import annotations

import collections
import hashlib
import json
import re
import struct
from typing import TYPE_CHECKING

from ansible_collections.quorum.recovery.plugins.module_utils.ondisk import FormatError

if TYPE_CHECKING:
    from typing import Any, Union

    from ansible_collections.quorum.recovery.plugins.module_utils.ondisk import Bytes

    # a decoded protobuf field: an int (varint, fixed) or the bytes of a length-delimited one
    Field = Union[int, memoryview]

RECORD_METADATA, RECORD_ENTRY, RECORD_STATE, RECORD_CRC, RECORD_SNAPSHOT = 1, 2, 3, 4, 5
RECORD_TYPES = {RECORD_METADATA: "metadata", RECORD_ENTRY: "entry", RECORD_STATE: "state", RECORD_CRC: "crc",
                RECORD_SNAPSHOT: "snapshot"}
ENTRY_NORMAL, ENTRY_CONF_CHANGE, ENTRY_CONF_CHANGE_V2 = 0, 1, 2
CONF_CHANGE_TYPES = {0: "add", 1: "remove", 2: "update", 3: "add_learner"}
SECTOR = 512  # etcd's minSectorSize: the unit in which it recognises a torn write
WAL_SEGMENT_SIZE = 64 * 1000 * 1000

WAL_NAME_RE = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.wal$")
SNAP_NAME_RE = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.snap$")
SNAP_DB_NAME_RE = re.compile(r"^([0-9a-f]{16})\.snap\.db$")


# ---------------------------------------------------------------------------- CRC-32C
_POLY = 0x82F63B78  # Castagnoli, reflected
_T = []
_WIDE = None


def _byte_table():
    table = []
    for byte in range(256):
        crc = byte
        for _bit in range(8):
            crc = (crc >> 1) ^ _POLY if crc & 1 else crc >> 1
        table.append(crc)
    return table


_T.append(_byte_table())


def _wide_tables():
    """Four 65,536-entry tables: the CRC contribution of two bytes followed by 6, 4, 2 and 0
    zero bytes, so the loop below folds 8 bytes with 4 look-ups (about 2x the byte loop)."""
    global _WIDE  # pylint: disable=global-statement
    if _WIDE is None:
        while len(_T) < 8:
            base, prev = _T[0], _T[-1]
            _T.append([base[v & 0xFF] ^ (v >> 8) for v in prev])

        def two_bytes(k):
            low, high = _T[k + 1], _T[k]
            return [low[v & 0xFF] ^ high[v >> 8] for v in range(65536)]
        _WIDE = (two_bytes(6), two_bytes(4), two_bytes(2), two_bytes(0))
    return _WIDE


def crc32c_python(data: Bytes, crc: int = 0) -> int:
    """CRC-32C continued from crc, as Go's crc32.Update with the Castagnoli table."""
    crc ^= 0xFFFFFFFF
    view = memoryview(data)
    table = _T[0]
    whole = len(view) & ~7
    if whole >= 64:
        t6, t4, t2, t0 = _wide_tables()
        halves = iter(view[:whole].cast("B").cast("H"))
        for a, b, c, d in zip(halves, halves, halves, halves):
            crc = t6[a ^ (crc & 0xFFFF)] ^ t4[b ^ (crc >> 16)] ^ t2[c] ^ t0[d]
        view = view[whole:]
    for byte in view:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _c_implementation():
    """A C CRC-32C when the target has one (pip `crc32c` or `google-crc32c`), else None."""
    try:
        import crc32c as _mod  # pylint: disable=import-outside-toplevel
        if _mod.crc32c(b"123456789") == 0xE3069283:
            return "crc32c", lambda data, crc=0: _mod.crc32c(data, crc)
    except Exception:  # pylint: disable=broad-except  # any failure: use the pure-Python path
        pass
    try:
        import google_crc32c as _gmod  # pylint: disable=import-outside-toplevel
        if _gmod.extend(0, b"123456789") == 0xE3069283:
            return "google_crc32c", lambda data, crc=0: _gmod.extend(crc, bytes(data))
    except Exception:  # pylint: disable=broad-except
        pass
    return None


_C = _c_implementation()
CRC32C_IMPLEMENTATION = _C[0] if _C else "python"
crc32c = _C[1] if _C else crc32c_python


# ---------------------------------------------------------------------------- protobuf
def _varint(buf, pos, end):
    result, shift = 0, 0
    while True:
        if pos >= end:
            raise FormatError("protobuf: varint runs past the end", pos)
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise FormatError("protobuf: varint longer than 10 bytes", pos)


def proto_fields(buf: Bytes) -> dict[int, list[Field]]:
    """{field number: [values]}: ints for varint/fixed fields, memoryviews for length-delimited."""
    buf = memoryview(buf)
    pos, end = 0, len(buf)
    fields: dict[int, list[Field]] = {}
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise FormatError("protobuf: field number 0", pos)
        if wire == 0:
            value, pos = _varint(buf, pos, end)
        elif wire == 1:
            if pos + 8 > end:
                raise FormatError("protobuf: fixed64 runs past the end", pos)
            value = struct.unpack_from("<Q", buf, pos)[0]
            pos += 8
        elif wire == 2:
            size, pos = _varint(buf, pos, end)
            if pos + size > end:
                raise FormatError("protobuf: field %d length %d runs past the end" % (number, size), pos)
            value = buf[pos:pos + size]
            pos += size
        elif wire == 5:
            if pos + 4 > end:
                raise FormatError("protobuf: fixed32 runs past the end", pos)
            value = struct.unpack_from("<I", buf, pos)[0]
            pos += 4
        else:
            raise FormatError("protobuf: wire type %d" % wire, pos)
        fields.setdefault(number, []).append(value)
    return fields


def _one(fields, number, default=0):
    """The last value of a field (protobuf: the last one wins), of the default's kind."""
    values = fields.get(number)
    if not values:
        return default
    value = values[-1]
    if isinstance(value, int) != isinstance(default, int):
        raise FormatError("protobuf: field %d has the wrong wire type" % number)
    return value


def _uint64s(fields, number):
    """A repeated uint64, packed (proto3) or not (proto2, what raftpb uses)."""
    out = []
    for value in fields.get(number, []):
        if isinstance(value, int):
            out.append(value)
        else:  # packed
            pos = 0
            while pos < len(value):
                item, pos = _varint(value, pos, len(value))
                out.append(item)
    return out


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if not value:
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def _encode_int(number, value):
    return encode_varint(number << 3) + encode_varint(value)


def encode_hard_state(term: int, vote: int, commit: int) -> bytes:
    """raftpb.HardState as etcd marshals it: all three fields, even when zero (gogoproto, proto2)."""
    return _encode_int(1, term) + _encode_int(2, vote) + _encode_int(3, commit)


def encode_frame(rtype: int, crc: int, data: bytes) -> bytes:
    """One WAL frame as etcd's encoder writes it: the length word (top bit and padding size when
    the record is padded to 8 bytes), walpb.Record {type, crc, data}, the padding."""
    record = _encode_int(1, rtype) + _encode_int(2, crc)
    if data:
        record += encode_varint(3 << 3 | 2) + encode_varint(len(data)) + bytes(data)
    pad = -len(record) % 8
    word = len(record) | ((0x80 | pad) << 56 if pad else 0)
    return struct.pack("<Q", word) + record + b"\0" * pad


def parse_record(data: Bytes) -> tuple[int, int, memoryview]:
    """walpb.Record -> (type, crc, data)."""
    fields = proto_fields(data)
    return _one(fields, 1), _one(fields, 2), _one(fields, 3, b"")


def parse_entry(data: Bytes) -> tuple[int, int, int, memoryview]:
    """raftpb.Entry -> (term, index, type, data)."""
    fields = proto_fields(data)
    return _one(fields, 2), _one(fields, 3), _one(fields, 1), _one(fields, 4, b"")


def parse_hard_state(data: Bytes) -> dict[str, int]:
    fields = proto_fields(data)
    return {"term": _one(fields, 1), "vote": _one(fields, 2), "commit": _one(fields, 3)}


def parse_conf_state(data: Bytes) -> dict[str, Any]:
    fields = proto_fields(data)

    def ids(number):
        return ["%x" % value for value in _uint64s(fields, number)]
    return {"voters": ids(1), "learners": ids(2), "voters_outgoing": ids(3), "learners_next": ids(4),
            "auto_leave": bool(_one(fields, 5))}


def parse_wal_snapshot(data: Bytes) -> dict[str, Any]:
    """walpb.Snapshot {index = 1, term = 2, conf_state = 3 (3.5+)}."""
    fields = proto_fields(data)
    return {"index": _one(fields, 1), "term": _one(fields, 2),
            "conf_state": parse_conf_state(_one(fields, 3, b"")) if 3 in fields else None}


def parse_metadata(data: Bytes) -> dict[str, str]:
    """etcdserverpb.Metadata {NodeID = 1, ClusterID = 2}, as etcd prints IDs: lowercase hex."""
    fields = proto_fields(data)
    return {"member_id": "%x" % _one(fields, 1), "cluster_id": "%x" % _one(fields, 2)}


def parse_conf_change(data: Bytes, entry_type: int = ENTRY_CONF_CHANGE) -> dict[str, Any]:
    """raftpb.ConfChange {ID = 1, Type = 2, NodeID = 3, Context = 4}; V2 changes are listed raw."""
    fields = proto_fields(data)
    if entry_type == ENTRY_CONF_CHANGE_V2:
        changes = []
        for single in fields.get(2, []):
            if isinstance(single, int):
                raise FormatError("protobuf: ConfChangeV2 change has the wrong wire type")
            one = proto_fields(single)
            changes.append({"type": CONF_CHANGE_TYPES.get(_one(one, 1), str(_one(one, 1))),
                            "member_id": "%x" % _one(one, 2)})
        return {"v2": True, "changes": changes}
    change: dict[str, Any] = {"type": CONF_CHANGE_TYPES.get(_one(fields, 2), str(_one(fields, 2))),
                              "member_id": "%x" % _one(fields, 3)}
    context = _one(fields, 4, b"")
    if context:
        try:
            member = json.loads(bytes(context).decode("utf-8"))
            change["name"] = member.get("name", "")
            change["peer_urls"] = member.get("peerURLs") or []
            change["is_learner"] = bool(member.get("isLearner"))
        except (ValueError, AttributeError):
            pass
    return change


def parse_snap(data: Bytes) -> dict[str, Any]:
    """A .snap file -> {term, index, conf_state, data_size, data}; FormatError as etcd's
    snapshotter would refuse it (it then renames the file *.broken)."""
    if not data:
        raise FormatError("empty snapshot file", 0)
    try:
        fields = proto_fields(data)
        crc, payload = _one(fields, 1), _one(fields, 2, b"")
    except FormatError as exc:
        raise FormatError("not a snappb.Snapshot: %s" % exc, exc.offset)
    if not payload or crc == 0:
        raise FormatError("empty snapshot (no data or crc 0)", 0)
    actual = crc32c(payload)
    if actual != crc:
        raise FormatError("crc mismatch: stored %08x, data has %08x" % (crc, actual), 0)
    try:
        return _parse_raft_snapshot(payload)
    except FormatError as exc:
        raise FormatError("not a raftpb.Snapshot: %s" % exc, exc.offset)


def _parse_raft_snapshot(payload):
    snap = proto_fields(payload)
    meta = proto_fields(_one(snap, 2, b""))
    return {"index": _one(meta, 2), "term": _one(meta, 3),
            "conf_state": parse_conf_state(_one(meta, 1, b"")) if 1 in meta else None,
            "data_size": len(_one(snap, 1, b"")), "data": _one(snap, 1, b"")}


def v2_store_members(data: Bytes) -> dict[str, dict[str, Any]]:
    """Member names and peer URLs from a 3.4 .snap's v2 store JSON (/0/members/<id>); {} if none."""
    try:
        root = json.loads(bytes(data).decode("utf-8"))["Root"]
        listed = root["Children"]["0"]["Children"]["members"]["Children"] or {}
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return {}
    members: dict[str, dict[str, Any]] = {}
    for member_id, node in listed.items():
        entry = members.setdefault(member_id, {})
        for attr, value in ((node or {}).get("Children") or {}).items():
            try:
                value = json.loads((value or {}).get("Value") or "{}")
            except (ValueError, TypeError):
                continue
            if attr == "attributes":
                entry["name"] = value.get("name", "")
            elif attr == "raftAttributes":
                entry["peer_urls"] = value.get("peerURLs") or []
    return members


# ---------------------------------------------------------------------------- what an entry writes
# etcdserverpb (raft_internal.proto, rpc.proto; the same numbers in 3.4, 3.5 and 3.6):
# InternalRaftRequest {v2 = 2; put = 4; delete_range = 5; txn = 6; ...}, PutRequest {key = 1},
# DeleteRangeRequest {key = 1; range_end = 2}, TxnRequest {compare = 1; success = 2; failure = 3},
# RequestOp {request_range = 1; request_put = 2; request_delete_range = 3; request_txn = 4}
_IRR_V2, _IRR_PUT, _IRR_DELETE_RANGE, _IRR_TXN = 2, 4, 5, 6
_OP_PUT, _OP_DELETE_RANGE, _OP_TXN = 2, 3, 4


def _message(value):
    if isinstance(value, int):
        raise FormatError("protobuf: a message field has the wrong wire type")
    return proto_fields(value)


def _txn_writes(txn, out, depth=0):
    if depth > 16:
        raise FormatError("protobuf: transactions nested too deep")
    for branch in (2, 3):  # success, failure: which one ran depends on the compares
        for op in txn.get(branch, []):
            op = _message(op)
            for put in op.get(_OP_PUT, []):
                out.append(("put", bytes(_one(_message(put), 1, b"")), None))
            for deleted in op.get(_OP_DELETE_RANGE, []):
                fields = _message(deleted)
                out.append(("delete", bytes(_one(fields, 1, b"")), bytes(_one(fields, 2, b"")) or None))
            for nested in op.get(_OP_TXN, []):
                _txn_writes(_message(nested), out, depth + 1)


def request_writes(data: Bytes) -> list[tuple[str, bytes, bytes | None]] | None:
    """The keyspace writes of a normal entry's etcdserverpb.InternalRaftRequest, as
    (V(put) or V(delete), key, range_end or None), both branches of a transaction included;
    [] for a request that writes no key (lease, auth, compaction, member attributes, a v2
    request); None when the bytes are not an InternalRaftRequest (3.4 proposes v2 requests
    such as its member publish as a bare pb.Request, whose Method string is no message)."""
    try:
        fields = proto_fields(data)
        for v2 in fields.get(_IRR_V2, []):
            _message(v2)
        out: list[tuple[str, bytes, bytes | None]] = []
        for put in fields.get(_IRR_PUT, []):
            out.append(("put", bytes(_one(_message(put), 1, b"")), None))
        for deleted in fields.get(_IRR_DELETE_RANGE, []):
            one = _message(deleted)
            out.append(("delete", bytes(_one(one, 1, b"")), bytes(_one(one, 2, b"")) or None))
        for txn in fields.get(_IRR_TXN, []):
            _txn_writes(_message(txn), out)
    except FormatError:
        return None
    return out


def key_text(key: bytes, range_end: bytes | None = None) -> str:
    """A key as UTF-8 text, bytes that are not UTF-8 as backslash escapes (\\xff); a range as
    [key, range_end), [key, ...) for etcd's "every key from here" (range_end \\0)."""
    text = bytes(key).decode("utf-8", "backslashreplace")
    if range_end is None:
        return text
    if range_end == b"\0":
        return "[%s, ...)" % text
    return "[%s, %s)" % (text, bytes(range_end).decode("utf-8", "backslashreplace"))


# ---------------------------------------------------------------------------- WAL
MAX_RECORD_SIZE = 10 * 1024 * 1024  # etcd >= 3.4.10 maxWALEntrySizeLimit: a longer record is refused

# what etcd 3.4 says for each way a WAL read stops (wal and walpb packages)
ETCD_ERRORS = {"crc": "walpb: crc mismatch", "crc_record": "wal: crc mismatch", "short": "unexpected EOF",
               "torn": "unexpected EOF", "size": "wal: max entry size limit exceeded",
               "gap": "wal: slice bounds out of range", "metadata": "wal: conflicting metadata found",
               "type": "unexpected block type", "snapshot": "wal: snapshot mismatch", "decode": None}


def _torn(data, start, end):
    """etcd's isTornEntry: the frame body [start, end) touches a 512-byte sector (by file offset)
    that holds only zero bytes."""
    pos = start
    while pos < end:
        stop = min(end, (pos // SECTOR + 1) * SECTOR)
        if not any(data[pos:stop]):
            return True
        pos = stop
    return False


class WalScan:
    """Reads WAL files in name order the way etcd (3.4.10+, 3.5, 3.6) reads them at start, in one
    pass that plays both of its readers:

    - wal.ValidSnapshotEntries reads EVERY file from the first one: framing, the CRC chain (a
      file's crc record must continue the previous file's chain), snapshot and HardState records.
      Its errors (`self.error`, kind crc, crc_record, decode, size) make etcd refuse to start; a
      torn or short record (`torn`, `short`) only ends its reading.
    - WAL.ReadAll reads from file number `read_from` (the one holding the loaded snapshot):
      entries after the snapshot at (start_index, start_term), HardState, metadata, the snapshot
      record. Its own errors (`self.read_error`, kind gap, metadata, type, snapshot) stop only it.
      A torn/short record in the last file is what etcd repairs (wal.Repair truncates there).

    feed(name, data, last) once per file, in order; `last` marks the newest file of the directory.
    full=False checks record CRCs only in the last file (each file's crc record restarts the chain).
    keep_after (an index, e.g. the db's consistent_index) keeps in `kept` the (index, term, type,
    data) of the entries ReadAll would return beyond min(keep_after, HardState commit): what the
    db may not hold yet. It is pruned at every HardState record, as etcd's commit never goes back.
    """

    def __init__(self, start_index: int = 0, start_term: int = 0, full: bool = True, read_from: int = 0,
                 keep_after: int | None = None) -> None:
        self.start_index, self.start_term, self.full, self.read_from = start_index, start_term, full, read_from
        self.keep_after = keep_after
        self.kept: collections.deque[tuple[int, int, int, Bytes]] = collections.deque()
        self.last_index, self.last_term = start_index, start_term
        self.crc = 0
        self.crc_known = True
        self.hard_state: dict[str, int] | None = None  # the last HardState ReadAll sees
        # the last HardState ValidSnapshotEntries sees (its commit filters snapshots)
        self.vse_state: dict[str, int] | None = None
        self.metadata: dict[str, str] | None = None
        self.metadata_raw: bytes | None = None
        # the first metadata record of any file (IDs even when ReadAll fails)
        self.identity: dict[str, str] | None = None
        self.snapshots: list[dict[str, Any]] = []
        self.conf_changes: list[dict[str, Any]] = []
        self.snapshot_matched = False
        # [term, first index] of each term after the start, and the last entry (for its digest)
        self.terms: list[list[int]] = []
        self.last_entry: tuple[int, int, int, Bytes] | None = None
        self.error: dict[str, Any] | None = None
        self.read_error: dict[str, Any] | None = None
        self.files: list[dict[str, Any]] = []
        self.counts: dict[str, int] = dict.fromkeys(RECORD_TYPES.values(), 0)

    def feed(self, name: str, data: Bytes, last: bool) -> None:
        number = len(self.files)
        facts: dict[str, Any] = {
            "file": name, "size": len(data), "records": 0, "end_offset": 0, "crc_checked": self.full or last,
            "read_all": number >= self.read_from, "first_entry_index": None, "last_entry_index": None}
        self.files.append(facts)
        if self.error:
            return
        if not facts["crc_checked"]:
            self.crc_known = False
        view = memoryview(data)
        size, pos = len(data), 0
        while True:
            if pos + 8 > size:
                if pos < size:  # Go's binary.Read of a partial length word: io.ErrUnexpectedEOF
                    self._fail(name, pos, "short", "a length word cut short at the end of the file", data, last)
                break
            word = struct.unpack_from("<Q", view, pos)[0]
            if word == 0:
                break
            length = word & 0x00FFFFFFFFFFFFFF
            pad = (word >> 56) & 7 if word >> 63 else 0
            body = pos + 8
            if length >= MAX_RECORD_SIZE - pad:
                self._fail(name, pos, "size", "record length %d is over etcd's limit of %d bytes (a garbage length "
                           "word)" % (length, MAX_RECORD_SIZE), data, last)
                break
            if body + length + pad > size:
                self._fail(name, pos, "short", "record of %d bytes runs past the end of the file (%d bytes)"
                           % (length, size), data, last)
                break
            try:
                rtype, rcrc, rdata = parse_record(view[body:body + length])
            except FormatError as exc:
                kind = "torn" if last and _torn(view, body, body + length + pad) else "decode"
                self._fail(name, pos, kind, "record does not decode: %s" % exc, data, last)
                break
            if rtype != RECORD_CRC and facts["crc_checked"]:
                self.crc = crc32c(rdata, self.crc)
                if rcrc != self.crc:
                    kind = "torn" if last and _torn(view, body, body + length + pad) else "crc"
                    self._fail(name, pos, kind, "crc mismatch: record says %08x, the chain gives %08x"
                               % (rcrc, self.crc), data, last)
                    break
            try:
                self._apply(name, pos, rtype, rcrc, rdata, facts)
            except FormatError as exc:
                self._fail(name, pos, "decode", str(exc), data, last)
                break
            if self.error:
                break
            pos = body + length + pad
            facts["records"] += 1
            facts["end_offset"] = pos
        # the kept entries outlive this file's buffer: copy them out of it
        self.kept = collections.deque((i, t, e, bytes(d)) for i, t, e, d in self.kept)

    def _apply(self, name, pos, rtype, rcrc, rdata, facts):
        self.counts[RECORD_TYPES.get(rtype, "unknown")] = self.counts.get(RECORD_TYPES.get(rtype, "unknown"), 0) + 1
        reading = facts["read_all"] and self.read_error is None
        if rtype == RECORD_ENTRY:
            if reading:
                self._entry(name, pos, rdata, facts)
        elif rtype == RECORD_STATE:
            self.vse_state = parse_hard_state(rdata)
            if reading:
                self.hard_state = self.vse_state
                if self.keep_after is not None:
                    floor = min(self.keep_after, self.hard_state["commit"])
                    while self.kept and self.kept[0][0] <= floor:
                        self.kept.popleft()
        elif rtype == RECORD_METADATA:
            if self.identity is None:
                self.identity = parse_metadata(rdata)
            if reading:
                if self.metadata_raw is not None and bytes(rdata) != self.metadata_raw:
                    self._read_fail(name, pos, "metadata", "metadata record differs from the first one "
                                    "(ErrMetadataConflict)")
                    return
                if self.metadata_raw is None:
                    self.metadata_raw = bytes(rdata)
                    self.metadata = parse_metadata(rdata)
        elif rtype == RECORD_CRC:
            if self.crc_known and self.crc != 0 and rcrc != self.crc:
                self._fail(name, pos, "crc_record", "crc record says %08x, the previous file ended at %08x"
                           % (rcrc, self.crc), None, False)
                return
            # the chain is known from here on only if this file's records are hashed
            self.crc, self.crc_known = rcrc, facts["crc_checked"]
        elif rtype == RECORD_SNAPSHOT:
            snap = parse_wal_snapshot(rdata)
            snap["file"] = name
            self.snapshots.append(snap)
            if reading and snap["index"] == self.start_index:
                if snap["term"] != self.start_term:
                    self._read_fail(name, pos, "snapshot", "snapshot record %d has term %d, the loaded snapshot "
                                    "term %d (ErrSnapshotMismatch)" % (snap["index"], snap["term"], self.start_term))
                    return
                self.snapshot_matched = True
        elif reading:  # ValidSnapshotEntries skips record types it does not know; ReadAll fails
            self._read_fail(name, pos, "type", "unknown record type %d" % rtype)

    def _entry(self, name, pos, rdata, facts):
        term, index, etype, edata = parse_entry(rdata)
        if facts["first_entry_index"] is None:
            facts["first_entry_index"] = index
        facts["last_entry_index"] = index
        if index > self.start_index:
            if index > self.last_index + 1:
                self._read_fail(name, pos, "gap", "entry %d follows entry %d (ErrSliceOutOfRange)"
                                % (index, self.last_index))
                return
            if index <= self.last_index:
                self.conf_changes = [c for c in self.conf_changes if c["index"] < index]
                while self.kept and self.kept[-1][0] >= index:
                    self.kept.pop()
            self.last_index, self.last_term = index, term
            while self.terms and self.terms[-1][1] >= index:
                self.terms.pop()
            if not self.terms or self.terms[-1][0] != term:
                self.terms.append([term, index])
            self.last_entry = (index, term, etype, edata)
            if self.keep_after is not None:
                self.kept.append((index, term, etype, edata))
            if etype in (ENTRY_CONF_CHANGE, ENTRY_CONF_CHANGE_V2):
                change = parse_conf_change(edata, etype)
                change.update(index=index, term=term)
                self.conf_changes.append(change)

    def _fail(self, name, offset, kind, message, data, last):
        # how far written data reaches past the failure: what a truncation there would drop
        data_after = len(bytes(memoryview(data)[offset:]).rstrip(b"\0")) if data is not None else None
        self.error = {"file": name, "offset": offset, "kind": kind, "message": message, "in_last_file": bool(last),
                      "data_bytes_after": data_after, "in_read_all": self.files[-1]["read_all"],
                      "etcd_error": ETCD_ERRORS.get(kind)}

    def _read_fail(self, name, offset, kind, message):
        self.read_error = {"file": name, "offset": offset, "kind": kind, "message": message,
                           "etcd_error": ETCD_ERRORS.get(kind)}

    def valid_snapshots(self) -> set[tuple[int, int]]:
        """(index, term) of the WAL snapshot records at or below the last HardState commit:
        the snapshots etcd may load (snap.LoadNewestAvailable)."""
        commit = (self.vse_state or {}).get("commit", 0)
        return {(s["index"], s["term"]) for s in self.snapshots if s["index"] <= commit}

    def last_entry_sha256(self) -> str | None:
        """A digest of the last entry (term, type, data): equal on two members when their logs end
        with the same entry, so the plan can tell "same end" from "same position"."""
        if self.last_entry is None or self.last_entry[0] != self.last_index:
            return None  # the log ends at a snapshot, not at an entry
        _index, term, etype, edata = self.last_entry
        return hashlib.sha256(struct.pack("<QB", term, etype) + bytes(edata)).hexdigest()

    def result(self) -> dict[str, Any]:
        return {"last_index": self.last_index, "last_term": self.last_term, "hard_state": self.hard_state,
                "terms": [list(t) for t in self.terms], "last_entry_sha256": self.last_entry_sha256(),
                "metadata": self.metadata or self.identity, "snapshots": self.snapshots,
                "conf_changes": self.conf_changes, "snapshot_matched": self.snapshot_matched, "error": self.error,
                "read_error": self.read_error, "files": self.files, "record_counts": self.counts}
