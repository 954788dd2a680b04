"""Test-side encoder of etcd's on-disk formats (WAL, .snap, bbolt), written from the format
description (not from the readers under test), so unit tests can craft exact directories,
including the 3.5/3.6 layouts the lab cannot install."""
from __future__ import annotations

import json
import os
import struct


def crc32c_bitwise(data: bytes, crc: int = 0) -> int:
    """The slow, obvious reflected CRC-32C (poly 0x82F63B78), Go crc32.Update semantics."""
    crc ^= 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _bit in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def varint(value: int) -> bytes:
    out = b""
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out += bytes([byte | 0x80])
        else:
            return out + bytes([byte])


def field_int(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value)


def field_bytes(number: int, value: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(value)) + value


# ----------------------------------------------------------------- raft / etcd protobufs
def entry(term: int, index: int, etype: int = 0, data: bytes = b"") -> bytes:
    out = field_int(1, etype) + field_int(2, term) + field_int(3, index)
    return out + (field_bytes(4, data) if data else b"")


def conf_change(member_id: int, ctype: int = 0, name: str = "", peer_urls=()) -> bytes:
    context = json.dumps({"id": member_id, "peerURLs": list(peer_urls), "name": name}).encode()
    return field_int(1, 0) + field_int(2, ctype) + field_int(3, member_id) + field_bytes(4, context)


def hard_state(term: int, vote: int, commit: int) -> bytes:
    return field_int(1, term) + field_int(2, vote) + field_int(3, commit)


def metadata(member_id: int, cluster_id: int) -> bytes:
    return field_int(1, member_id) + field_int(2, cluster_id)


def conf_state(voters=(), learners=()) -> bytes:
    return b"".join(field_int(1, v) for v in voters) + b"".join(field_int(2, v) for v in learners)


def wal_snapshot(index: int, term: int, voters=None) -> bytes:
    out = field_int(1, index) + field_int(2, term)
    return out + (field_bytes(3, conf_state(voters)) if voters is not None else b"")


# ----------------------------------------------------------------- WAL files
METADATA, ENTRY, STATE, CRC, SNAPSHOT = 1, 2, 3, 4, 5


def frame(rtype: int, crc: int, data: bytes) -> bytes:
    record = field_int(1, rtype) + field_int(2, crc) + (field_bytes(3, data) if data else b"")
    pad = -len(record) % 8
    word = len(record) | ((0x80 | pad) << 56 if pad else 0)
    return struct.pack("<Q", word) + record + b"\0" * pad


class Wal:
    """Writes WAL files the way etcd does: a crc record first in each file, then records whose
    crc chains over the data of every record before them."""

    def __init__(self):
        self.crc = 0
        self.files: list[tuple[str, bytearray]] = []
        self.offsets: list[tuple[int, int]] = []  # (file number, offset) of every record

    def cut(self, seq: int, first_index: int) -> None:
        self.files.append(("%016x-%016x.wal" % (seq, first_index), bytearray()))
        self.files[-1][1].extend(frame(CRC, self.crc, b""))

    def add(self, rtype: int, data: bytes) -> None:
        self.crc = crc32c_bitwise(data, self.crc)
        self.offsets.append((len(self.files) - 1, len(self.files[-1][1])))
        self.files[-1][1].extend(frame(rtype, self.crc, data))

    def write(self, wal_dir: str, prealloc: int = 4096) -> None:
        os.makedirs(wal_dir, exist_ok=True)
        for name, data in self.files:
            with open(os.path.join(wal_dir, name), "wb") as handle:
                handle.write(bytes(data) + b"\0" * max(0, prealloc - len(data)))


def snap_file(term: int, index: int, voters=(), data: bytes = b"{}") -> bytes:
    meta = field_bytes(1, conf_state(voters)) + field_int(2, index) + field_int(3, term)
    payload = field_bytes(1, data) + field_bytes(2, meta)
    return field_int(1, crc32c_bitwise(payload)) + field_bytes(2, payload)


# ----------------------------------------------------------------- bbolt
PAGE = 4096


def fnv64a(data: bytes) -> int:
    value = 0xCBF29CE484222325
    for byte in data:
        value = ((value ^ byte) * 0x100000001B3) % (1 << 64)
    return value


def meta_page(pgid: int, root: int, high_water: int, txid: int, freelist: int = 2) -> bytes:
    body = struct.pack("<IIIIQQQQQ", 0xED0CDAED, 2, PAGE, 0, root, 0, freelist, high_water, txid)
    header = struct.pack("<QHHI", pgid, 0x04, 0, 0)
    return (header + body + struct.pack("<Q", fnv64a(body))).ljust(PAGE, b"\0")


def leaf(pgid: int, items: list[tuple[int, bytes, bytes]], size: int | None = None) -> bytes:
    """items: (flags, key, value), sorted by key; flags 1 marks a bucket."""
    header = struct.pack("<QHHI", pgid, 0x02, len(items), 0)
    elements, blobs = b"", b""
    base = 16 * len(items)
    for i, (flags, key, value) in enumerate(items):
        pos = base - 16 * i + len(blobs)
        elements += struct.pack("<IIII", flags, pos, len(key), len(value))
        blobs += key + value
    page = header + elements + blobs
    return page.ljust(size, b"\0") if size else page


def branch(pgid: int, children: list[tuple[bytes, int]]) -> bytes:
    header = struct.pack("<QHHI", pgid, 0x01, len(children), 0)
    elements, blobs = b"", b""
    base = 16 * len(children)
    for i, (key, child) in enumerate(children):
        elements += struct.pack("<IIQ", base - 16 * i + len(blobs), len(key), child)
        blobs += key
    return (header + elements + blobs).ljust(PAGE, b"\0")


def inline_bucket(items: list[tuple[bytes, bytes]]) -> bytes:
    return struct.pack("<QQ", 0, 0) + leaf(0, [(0, k, v) for k, v in items])


def revision_key(main: int, sub: int = 0) -> bytes:
    return struct.pack(">Q", main) + b"_" + struct.pack(">Q", sub)


def etcd_db(revisions: int = 20, consistent_index: int = 10, members=None, term: int | None = None,
            conf_voters=None, storage_version: str | None = None) -> bytes:
    """A small etcd backend: key bucket on two leaf pages under a branch page (pages 3-5),
    the other buckets inline in the root leaf page (page 6); meta pages at txid 4 and 5."""
    members = members or {0x1: "http://10.0.0.1:2380"}
    keys = [(revision_key(r), b"value-%d" % r) for r in range(1, revisions + 1)]
    half = len(keys) // 2
    pages = [leaf(4, [(0, k, v) for k, v in keys[:half]], PAGE), leaf(5, [(0, k, v) for k, v in keys[half:]], PAGE)]
    key_branch = branch(3, [(keys[0][0], 4), (keys[half][0], 5)])
    meta_items = [(b"consistent_index", struct.pack(">Q", consistent_index))]
    if conf_voters is not None:
        meta_items.append((b"confState", json.dumps({"voters": conf_voters}).encode()))
    if storage_version is not None:
        meta_items.append((b"storageVersion", storage_version.encode()))
    if term is not None:
        meta_items.append((b"term", struct.pack(">Q", term)))
    meta_items.sort()
    member_items = sorted((("%x" % mid).encode(), json.dumps({"id": mid, "peerURLs": [url]}).encode())
                          for mid, url in members.items())
    buckets = sorted([
        (b"cluster", inline_bucket([(b"clusterVersion", b"3.4.0")])),
        (b"key", struct.pack("<QQ", 3, 0)),
        (b"members", inline_bucket(member_items)),
        (b"members_removed", inline_bucket([])),
        (b"meta", inline_bucket(meta_items)),
    ])
    root = leaf(6, [(1, k, v) for k, v in buckets], PAGE)
    freelist = struct.pack("<QHHI", 2, 0x10, 0, 0).ljust(PAGE, b"\0")
    return (meta_page(0, 6, 7, 4) + meta_page(1, 6, 7, 5) + freelist + key_branch + pages[0] + pages[1] + root)


# ----------------------------------------------------------------- whole directories
def member_dir(root: str, wal: Wal, snaps: dict[str, bytes] = None, db: bytes | None = None,
               prealloc: int = 4096) -> str:
    """<root>/member/{wal,snap} from the parts; returns root."""
    wal.write(os.path.join(root, "member", "wal"), prealloc)
    snap_dir = os.path.join(root, "member", "snap")
    os.makedirs(snap_dir, exist_ok=True)
    for name, data in (snaps or {}).items():
        with open(os.path.join(snap_dir, name), "wb") as handle:
            handle.write(data)
    if db is not None:
        with open(os.path.join(snap_dir, "db"), "wb") as handle:
            handle.write(db)
    return root


def simple_wal(member_id: int = 0x1, cluster_id: int = 0xC1, entries: int = 10, term: int = 2,
               files: int = 2, hard_term: int | None = None) -> Wal:
    """A cluster of one member: bootstrap conf change at index 1 (term 1), then entries 2..N at
    `term`, cut into `files` files, a HardState after each entry."""
    wal = Wal()
    wal.cut(0, 0)
    wal.add(METADATA, metadata(member_id, cluster_id))
    wal.add(SNAPSHOT, wal_snapshot(0, 0))
    per_file = max(1, entries // files)
    for index in range(1, entries + 1):
        if index > 1 and (index - 1) % per_file == 0 and len(wal.files) < files:
            wal.cut(len(wal.files), index)
            wal.add(METADATA, metadata(member_id, cluster_id))
        if index == 1:
            wal.add(ENTRY, entry(1, 1, 1, conf_change(member_id, 0, "m1", ["http://10.0.0.1:2380"])))
            wal.add(STATE, hard_state(1, member_id, 1))
        else:
            wal.add(ENTRY, entry(term, index, 0, b"put key %d" % index))
            wal.add(STATE, hard_state(hard_term or term, member_id, index))
    return wal
