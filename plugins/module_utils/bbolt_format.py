# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The bbolt file format (etcd's member/snap/db), read page by page, read-only.

PRIVATE to this collection: may change without notice. Standard library only.

Layout facts (etcd-io/bbolt page.go, db.go, bucket.go, node.go, tx_check.go), all little-endian:
- page header 16 bytes: id u64, flags u16 (branch 0x01, leaf 0x02, meta 0x04, freelist 0x10),
  count u16, overflow u32; a page spans (overflow + 1) * page size bytes;
- meta (pages 0 and 1, at offset 16): magic 0xED0CDAED, version 2, page size, flags, root bucket
  {pgid, sequence}, freelist pgid, high-water pgid, txid, checksum = FNV-1a 64 of the 56 bytes
  before it (a checksum of 0 is accepted, as bbolt does); bbolt uses the valid meta with the
  higher txid, else the other one;
- branch element 16 bytes: pos u32, ksize u32, pgid u64; leaf element 16 bytes: flags u32
  (1 = bucket), pos u32, ksize u32, vsize u32; pos is relative to the element;
- a bucket value is {root pgid u64, sequence u64}, followed by an inline leaf page when root is 0.
"""

from __future__ import annotations

import json
import struct
from typing import TYPE_CHECKING

from ansible_collections.quorum.recovery.plugins.module_utils.etcd_format import crc32c

if TYPE_CHECKING:
    from typing import Any, Iterator

    from ansible_collections.quorum.recovery.plugins.module_utils.ondisk import Bytes

    Item = tuple[int, memoryview, memoryview]  # (element flags, key, value) of a leaf

MAGIC, VERSION = 0xED0CDAED, 2
BRANCH, LEAF, META, FREELIST = 0x01, 0x02, 0x04, 0x10
BUCKET_LEAF = 0x01
NO_FREELIST = 0xFFFFFFFFFFFFFFFF
_META = struct.Struct("<IIIIQQQQQQ")
_HEADER = struct.Struct("<QHHI")
_ELEMENT = struct.Struct("<IIII")
_BRANCH_ELEMENT = struct.Struct("<IIQ")
MAX_DEPTH = 64


class BoltError(ValueError):
    """A structural fault; the message says what and where (page id, file offset)."""

    def __init__(self, message: str, offset: int | None = None, page: int | None = None) -> None:
        super().__init__(message)
        self.offset = offset
        self.page = page


def fnv64a(data: Bytes) -> int:
    value = 0xCBF29CE484222325
    for byte in bytes(data):
        value = ((value ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return value


def parse_meta(data: Bytes, offset: int) -> dict[str, Any]:
    """The meta struct of the page at `offset` -> dict with `error` None or what is wrong."""
    if offset + 16 + _META.size > len(data):
        return {"offset": offset, "error": "file too short for a meta page at offset %d" % offset}
    fields = _META.unpack_from(data, offset + 16)
    meta = dict(zip(("magic", "version", "page_size", "flags", "root", "root_sequence", "freelist", "pgid", "txid",
                     "checksum"), fields))
    meta["offset"] = offset
    meta["error"] = None
    if meta["magic"] != MAGIC:
        meta["error"] = "magic %08x is not bbolt's (ErrInvalid)" % meta["magic"]
    elif meta["version"] != VERSION:
        meta["error"] = "version %d (ErrVersionMismatch)" % meta["version"]
    else:
        expected = fnv64a(memoryview(data)[offset + 16:offset + 16 + 56])
        if meta["checksum"] != 0 and meta["checksum"] != expected:
            meta["error"] = "checksum %016x, contents hash to %016x (ErrChecksum)" % (meta["checksum"], expected)
    return meta


def read_metas(data: Bytes) -> dict[str, Any]:
    """Both meta pages and the one bbolt would use (or None when both are bad)."""
    first = parse_meta(data, 0)
    # bbolt takes the page size from meta 0 when it validates, else assumes the OS page size
    page_size = first["page_size"] if first["error"] is None else 4096
    if first["error"] is None and page_size not in (512, 1024, 2048, 4096, 8192, 16384, 32768, 65536):
        first["error"] = "page size %d is not a power of two in 512..65536" % page_size
        page_size = 4096
    second = parse_meta(data, page_size)
    valid = [m for m in (first, second) if m["error"] is None]
    chosen = max(valid, key=lambda m: m["txid"]) if valid else None
    return {"page_size": page_size, "metas": [first, second], "chosen": chosen}


class Bolt:
    """A bbolt file in memory; walk() visits every reachable page once and checks it."""

    def __init__(self, data: Bytes, meta: dict[str, Any], page_size: int) -> None:
        self.data = memoryview(data)
        self.meta = meta
        self.page_size = page_size
        self.visited: dict[int, str] = {}  # page id: where it was reached from
        self.errors: list[dict[str, Any]] = []

    def _page(self, pgid, expect, where):
        offset = pgid * self.page_size
        if pgid < 2 or pgid >= self.meta["pgid"]:
            raise BoltError("%s points to page %d, outside the allocated pages 2..%d" % (where, pgid,
                            self.meta["pgid"] - 1), offset, pgid)
        if offset + 16 > len(self.data):
            raise BoltError("%s points to page %d at offset %d, past the end of the file (%d bytes)"
                            % (where, pgid, offset, len(self.data)), offset, pgid)
        page_id, flags, count, overflow = _HEADER.unpack_from(self.data, offset)
        span = (overflow + 1) * self.page_size
        if page_id != pgid:
            raise BoltError("page %d at offset %d says it is page %d" % (pgid, offset, page_id), offset, pgid)
        if not flags & expect:
            raise BoltError("page %d at offset %d has flags %#x, expected %s" % (
                pgid, offset, flags, "branch or leaf" if expect == BRANCH | LEAF else hex(expect)), offset, pgid)
        if offset + span > len(self.data):
            raise BoltError("page %d at offset %d spans %d bytes, past the end of the file (%d bytes)"
                            % (pgid, offset, span, len(self.data)), offset, pgid)
        if pgid + overflow >= self.meta["pgid"]:
            raise BoltError("page %d overflows past the high-water page %d" % (pgid, self.meta["pgid"]), offset, pgid)
        for covered in range(pgid, pgid + overflow + 1):
            if covered in self.visited:
                raise BoltError("page %d is referenced twice (also from %s)" % (covered, self.visited[covered]),
                                offset, pgid)
            self.visited[covered] = where
        return offset, flags, count, span

    def _leaf_items(self, base, count, span, pgid):
        """(flags, key, value) of a leaf page whose header is at `base` in self.data."""
        items = []
        previous = None
        for i in range(count):
            element = base + 16 + i * 16
            if element + 16 > base + span:
                raise BoltError("leaf page %d: element %d lies outside the page" % (pgid, i), element, pgid)
            flags, pos, ksize, vsize = _ELEMENT.unpack_from(self.data, element)
            start = element + pos
            if start + ksize + vsize > base + span:
                raise BoltError("leaf page %d: element %d key/value runs outside the page" % (pgid, i), element, pgid)
            key = self.data[start:start + ksize]
            if previous is not None and bytes(key) <= previous:
                raise BoltError("leaf page %d: keys out of order at element %d" % (pgid, i), element, pgid)
            previous = bytes(key)
            items.append((flags, key, self.data[start + ksize:start + ksize + vsize]))
        return items

    def iterate(self, root: int, where: str, depth: int = 0) -> Iterator[Item]:
        """Yield (flags, key, value) of the bucket rooted at page `root`, in key order."""
        if depth > MAX_DEPTH:
            raise BoltError("%s: tree deeper than %d levels (a cycle?)" % (where, MAX_DEPTH), None, root)
        offset, flags, count, span = self._page(root, BRANCH | LEAF, where)
        if flags & LEAF:
            yield from self._leaf_items(offset, count, span, root)
            return
        children = []
        for i in range(count):
            element = offset + 16 + i * 16
            if element + 16 > offset + span:
                raise BoltError("branch page %d: element %d lies outside the page" % (root, i), element, root)
            _pos, _ksize, child = _BRANCH_ELEMENT.unpack_from(self.data, element)
            children.append(child)
        for i, child in enumerate(children):
            yield from self.iterate(child, "branch page %d element %d" % (root, i), depth + 1)

    def bucket(self, value: memoryview, where: str) -> Iterator[Item]:
        """Items of the bucket whose {root, sequence} header is `value`."""
        if len(value) < 16:
            raise BoltError("%s: bucket header of %d bytes" % (where, len(value)))
        root = struct.unpack_from("<Q", value, 0)[0]
        if root:
            return self.iterate(root, where)
        inline = value[16:]
        if len(inline) < 16:
            raise BoltError("%s: inline bucket without a page header" % where)
        _id, flags, count, _overflow = _HEADER.unpack_from(inline, 0)
        if not flags & LEAF:
            raise BoltError("%s: inline bucket page has flags %#x" % (where, flags))
        sub = Bolt(bytes(inline), self.meta, self.page_size)
        return iter(sub._leaf_items(0, count, len(inline), 0))  # pylint: disable=protected-access

    def freelist(self) -> list[int] | None:
        """Free page ids, or None when bbolt did not persist a freelist (NoFreelistSync)."""
        pgid = self.meta["freelist"]
        if pgid == NO_FREELIST:
            return None
        offset, _flags, count, span = self._page(pgid, FREELIST, "meta freelist")
        start = offset + 16
        if count == 0xFFFF:
            count = struct.unpack_from("<Q", self.data, start)[0]
            start += 8
        if start + count * 8 > offset + span:
            raise BoltError("freelist page %d: %d ids do not fit the page" % (pgid, count), offset, pgid)
        return list(struct.unpack_from("<%dQ" % count, self.data, start))

    def last_item(self, root: int, where: str, depth: int = 0) -> Item | None:
        """The last (flags, key, value) of a bucket, descending only the rightmost path."""
        if depth > MAX_DEPTH:
            raise BoltError("%s: tree deeper than %d levels (a cycle?)" % (where, MAX_DEPTH), None, root)
        offset, flags, count, span = self._page(root, BRANCH | LEAF, where)
        if not count:
            return None
        if flags & LEAF:
            return self._leaf_items(offset, count, span, root)[-1]
        _pos, _ksize, child = _BRANCH_ELEMENT.unpack_from(self.data, offset + 16 + (count - 1) * 16)
        return self.last_item(child, "branch page %d element %d" % (root, count - 1), depth + 1)


def _u64_be(value):
    return struct.unpack(">Q", bytes(value))[0] if len(value) == 8 else None


def read_etcd_db(data: Bytes, full: bool = True) -> dict[str, Any]:
    """etcd's backend: meta pages, a page-tree walk, and the meta/key/members/cluster buckets.

    Returns a dict; `errors` lists structural faults (bbolt would panic or refuse), and
    `snapshot_status` is what `etcdctl snapshot status` prints for the same file (full only).
    """
    size = len(data)
    metas = read_metas(data)
    result = {"size": size, "page_size": metas["page_size"], "metas": [
        {k: m.get(k) for k in ("offset", "error", "txid", "pgid", "root", "freelist", "checksum")}
        for m in metas["metas"]], "meta_used": None, "errors": [], "warnings": [], "buckets": {},
        "consistent_index": None, "term": None, "conf_state": None, "storage_version": None,
        "cluster_version": None, "members": {}, "members_removed": [], "revision": None, "revisions": None,
        "snapshot_status": None, "freelist_persisted": None}
    meta = metas["chosen"]
    if meta is None:
        result["errors"].append({"offset": 0, "page": 0, "message": "both meta pages are invalid: %s; %s" % (
            metas["metas"][0]["error"], metas["metas"][1]["error"])})
        return result
    result["meta_used"] = 0 if meta["offset"] == 0 else 1
    page_size = metas["page_size"]
    high_water = meta["pgid"] * page_size
    if size < high_water:
        result["errors"].append({"offset": size, "page": size // page_size, "message": (
            "file is %d bytes but the meta page (txid %d) says pages reach %d bytes: truncated" % (
                size, meta["txid"], high_water))})
    elif size % page_size:
        result["warnings"].append("file size %d is not a multiple of the page size %d" % (size, page_size))
    bolt = Bolt(data, meta, page_size)
    hasher = [0]
    total_key = [0]

    def feed(*chunks):
        for chunk in chunks:
            hasher[0] = crc32c(chunk, hasher[0])
    try:
        for flags, raw_name, value in bolt.iterate(meta["root"], "root bucket"):
            name = bytes(raw_name).decode("utf-8", "replace")
            if not flags & BUCKET_LEAF:
                raise BoltError("root bucket holds a plain key %r" % name)
            if full:
                feed(name.encode())
            if name == "key" and not full:
                root = struct.unpack_from("<Q", value, 0)[0] if len(value) >= 16 else 0
                if root:
                    last = bolt.last_item(root, "bucket key")
                else:
                    last = ([None] + list(bolt.bucket(value, "bucket key")))[-1]
                result["buckets"][name] = None
                if last is not None:
                    result["revision"] = _u64_be(bytes(last[1])[:8])
                continue
            count, last_key = 0, None
            for _iflags, key, item in bolt.bucket(value, "bucket %s" % name):
                count += 1
                last_key = key
                if full:
                    feed(key, item)
                _remember(result, name, key, item)
            result["buckets"][name] = count
            total_key[0] += count
            if name == "key":
                result["revisions"] = count
                result["revision"] = _u64_be(bytes(last_key)[:8]) if last_key is not None else 0
        if full:
            free = bolt.freelist()
            result["freelist_persisted"] = free is not None
            if free is not None:
                free_set = set(free)
                unreachable = [p for p in range(2, meta["pgid"]) if p not in bolt.visited and p not in free_set]
                if unreachable:
                    result["warnings"].append("%d pages neither reachable nor free (first %d): bbolt check reports "
                                              "them, etcd runs" % (len(unreachable), unreachable[0]))
    except BoltError as exc:
        result["errors"].append({"offset": exc.offset, "page": exc.page, "message": str(exc)})
    except (struct.error, IndexError, ValueError) as exc:
        result["errors"].append({"offset": None, "page": None, "message": "unreadable structure: %s" % exc})
    if full and not result["errors"]:
        result["snapshot_status"] = {"hash": hasher[0], "revision": result["revision"] or 0,
                                     "total_key": total_key[0], "total_size": meta["pgid"] * page_size}
    return result


def _remember(result, bucket, key, value):
    if bucket == "meta":
        name = bytes(key).decode("utf-8", "replace")
        if name == "consistent_index":
            result["consistent_index"] = _u64_be(value)
        elif name == "term":
            result["term"] = _u64_be(value)
        elif name == "confState":
            try:
                result["conf_state"] = json.loads(bytes(value).decode("utf-8"))
            except ValueError:
                result["conf_state"] = {"error": "not JSON"}
        elif name == "storageVersion":
            result["storage_version"] = bytes(value).decode("utf-8", "replace")
    elif bucket == "members":
        try:
            attrs = json.loads(bytes(value).decode("utf-8"))
        except ValueError:
            attrs = {}
        member_id = bytes(key).decode("utf-8", "replace")
        result["members"][member_id] = {"peer_urls": attrs.get("peerURLs") or [],
                                        "is_learner": bool(attrs.get("isLearner")), "name": attrs.get("name", "")}
    elif bucket == "members_removed":
        result["members_removed"].append(bytes(key).decode("utf-8", "replace"))
    elif bucket == "cluster" and bytes(key) == b"clusterVersion":
        result["cluster_version"] = bytes(value).decode("utf-8", "replace")
