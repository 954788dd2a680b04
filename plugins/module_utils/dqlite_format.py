# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The raft on-disk format used by dqlite (format 1), read exactly as raft reads it.

PRIVATE to this collection: may change without notice. Standard library only: this runs on
the members. Nothing here writes, renames or locks a file.

Layout facts (canonical/raft src/uv_segment.c, uv_snapshot.c, uv_metadata.c, byte.c):
- integers are little-endian;
- the checksum is CRC-32, polynomial 0x04C11DB7, MSB first, initial value 0, no final XOR;
- a segment is u64 format, then batches: u32 header crc, u32 data crc, u64 n,
  n x (u64 term, u8 type, 3 zero bytes, u32 size), then the payloads (each padded to 8);
- a snapshot .meta is u64 format, u64 crc, u64 configuration index, u64 configuration
  length, configuration; the crc covers bytes 16..32 and then the configuration.
"""

from __future__ import annotations

import mmap
import re
import shutil
import struct
import subprocess
import zlib
from typing import TYPE_CHECKING

from ansible_collections.quorum.recovery.plugins.module_utils.ondisk import FormatError

if TYPE_CHECKING:
    from typing import Any, Iterator

    from ansible_collections.quorum.recovery.plugins.module_utils.ondisk import Bytes

try:  # the lz4 Python binding (Debian python3-lz4), if the member has it: liblz4 in-process
    import lz4.frame as _lz4_frame
except ImportError:  # the standard library alone still checks every frame, only slower
    _lz4_frame = None

DISK_FORMAT = 1
METADATA_SIZE = 32
MAX_BATCH_ENTRIES = (8 * 1024 * 1024) // 32  # raft: UV__MAX_SEGMENT_SIZE / (4 * 8)
MAX_META_CONFIGURATION = 1024 * 1024

ENTRY_COMMAND, ENTRY_BARRIER, ENTRY_CHANGE = 1, 2, 3
ENTRY_TYPES = {ENTRY_COMMAND: "command", ENTRY_BARRIER: "barrier", ENTRY_CHANGE: "change"}

# raft numbers roles STANDBY=0, VOTER=1, SPARE=2; go-dqlite (info.yaml, cluster.yaml) uses
# voter=0, stand-by=1, spare=2. Both are converted to names at this boundary.
RAFT_ROLES = {0: "stand-by", 1: "voter", 2: "spare"}
APP_ROLES = {0: "voter", 1: "stand-by", 2: "spare"}

CLOSED_SEGMENT_RE = re.compile(r"^(\d{16})-(\d{16})$")
OPEN_SEGMENT_RE = re.compile(r"^open-(\d+)$")
SNAPSHOT_RE = re.compile(r"^snapshot-(\d+)-(\d+)-(\d+)$")
SNAPSHOT_META_RE = re.compile(r"^snapshot-(\d+)-(\d+)-(\d+)\.meta$")


# ---------------------------------------------------------------------------- checksum
def _reverse_bits(value, width):
    result = 0
    for _bit in range(width):
        result = (result << 1) | (value & 1)
        value >>= 1
    return result


_REFLECT_BYTES = bytes(_reverse_bits(b, 8) for b in range(256))


def _reverse32(value):
    return int.from_bytes(value.to_bytes(4, "little").translate(_REFLECT_BYTES), "big")


def reflect(data: Bytes) -> bytes:
    """data with every byte bit-reversed: what crc32_reflected() takes (one pass, in C)."""
    return bytes(data).translate(_REFLECT_BYTES)


def crc32_reflected(reflected: Bytes, crc: int = 0) -> int:
    """raft's CRC of the bytes whose reflection is `reflected` (a bytes or memoryview slice of
    reflect(data)): a large file is reflected once and its batches checked by slices."""
    return _reverse32(zlib.crc32(reflected, _reverse32(crc) ^ 0xFFFFFFFF) ^ 0xFFFFFFFF)


def crc32(data: Bytes, crc: int = 0) -> int:
    """raft's byteCrc32 (MSB-first CRC-32, init 0, no final XOR), continued from crc.

    The MSB-first CRC of data is the bit-reversal of the reflected CRC (zlib's, without its
    pre- and post-inversion) of data with every byte bit-reversed: so both steps run in C.
    """
    return crc32_reflected(reflect(data), crc)


def _u64(buf, offset):
    return struct.unpack_from("<Q", buf, offset)[0]


# ---------------------------------------------------------------------------- metadata
def parse_metadata(data: Bytes) -> dict[str, int]:
    """metadata1/metadata2: (format, version, term, voted_for). Raises FormatError."""
    if len(data) < METADATA_SIZE:
        raise FormatError("%d bytes, expected %d (a torn write: raft deletes such a file)"
                          % (len(data), METADATA_SIZE))
    if len(data) > METADATA_SIZE:
        raise FormatError("%d bytes, expected %d" % (len(data), METADATA_SIZE))
    fmt, version, term, vote = struct.unpack("<4Q", data)
    if fmt != DISK_FORMAT:
        raise FormatError("format %d, expected %d" % (fmt, DISK_FORMAT), 0)
    if version == 0:
        raise FormatError("version 0", 8)
    return {"format": fmt, "version": version, "term": term, "voted_for": vote}


# ---------------------------------------------------------------------------- configuration
def parse_configuration(data: bytes | bytearray) -> list[dict[str, Any]]:
    """A raft configuration (CHANGE entry payload, .meta body): list of servers."""
    if len(data) < 9:
        raise FormatError("configuration of %d bytes is too short" % len(data), 0)
    if data[0] != 1:
        raise FormatError("configuration format %d, expected 1" % data[0], 0)
    count = _u64(data, 1)
    offset = 9
    servers: list[dict[str, Any]] = []
    if count > len(data):
        raise FormatError("configuration claims %d servers in %d bytes" % (count, len(data)), 1)
    for _index in range(count):
        if offset + 8 > len(data):
            raise FormatError("configuration ends inside server %d" % len(servers), offset)
        server_id = _u64(data, offset)
        offset += 8
        end = data.find(b"\0", offset)
        if end < 0:
            raise FormatError("configuration: address of server %d is not terminated" % len(servers), offset)
        address = bytes(data[offset:end]).decode("utf-8", "replace")
        offset = end + 1
        if offset >= len(data):
            raise FormatError("configuration ends before the role of server %d" % len(servers), offset)
        role = data[offset]
        offset += 1
        if role not in RAFT_ROLES:
            raise FormatError("configuration: server %d has unknown role %d" % (server_id, role), offset - 1)
        servers.append({"id": server_id, "address": address, "role": RAFT_ROLES[role]})
    return servers


# ---------------------------------------------------------------------------- segments
def parse_segment(data: Bytes, full: bool = True, closed: bool = True) -> dict[str, Any]:
    """Walk a segment's batches the way raft's loader does.

    Returns a dict: format, batches (offset, entries: list of (term, type, size),
    data_checked), entries, end (offset after the last good batch), error (None or
    {"message", "offset", "batch", "nonzero_after_batch": non-zero bytes past where the bad
    batch claims to end}), trailing_nonzero_bytes (non-zero bytes from where
    reading stopped: 0 for a clean preallocated tail). With full=False, a closed segment has
    its header checksums and only its last batch's data checksum verified (quick depth).
    """
    result: dict[str, Any] = {"format": None, "batches": [], "entries": 0, "end": 0, "error": None,
                              "trailing_nonzero_bytes": 0}
    if len(data) < 8:
        result["error"] = {"message": "file has only %d bytes" % len(data), "offset": 0, "batch": 0,
                           "nonzero_after_batch": 0}
        return result
    fmt = _u64(data, 0)
    result["format"] = fmt
    if fmt == 0 and not closed:
        # a preallocated open segment that never received a batch
        result["end"] = 8
        result["trailing_nonzero_bytes"] = _nonzero(data, 8)
        return result
    if fmt != DISK_FORMAT:
        result["error"] = {"message": "segment format %d, expected %d" % (fmt, DISK_FORMAT), "offset": 0, "batch": 0,
                           "nonzero_after_batch": _nonzero(data, 8)}
        return result
    offset = 8
    size = len(data)
    check_data = full or not closed  # open segments hold the torn tail: always check them whole
    # Reading every byte: reflect the file once, then each batch's CRC is a slice of it. Quick
    # depth reads headers only: reflect just those.
    whole = memoryview(reflect(data)) if check_data else None

    def crc_ok(start, end, stored_at):
        """Whether raft's CRC of data[start:end] is the one stored (u32 LE) at stored_at."""
        if whole is None:
            return crc32(data[start:end]) == struct.unpack_from("<I", data, stored_at)[0]
        # In the reflected file the stored value reads, big-endian, as its own bit reversal:
        # compare in zlib's form and no value is reversed per batch (crc32_reflected's steps)
        return zlib.crc32(whole[start:end], 0xFFFFFFFF) ^ 0xFFFFFFFF == struct.unpack_from(">I", whole, stored_at)[0]

    while offset < size:
        if not closed and not any(data[offset:offset + 16]) and not any(data[offset:]):
            break  # open segments are preallocated and zero-filled after the last batch
        batch_no = len(result["batches"]) + 1
        error = None
        claimed_end = offset + 16
        if offset + 16 > size:
            error = "short read: %d bytes instead of 16 (batch preamble)" % (size - offset)
        else:
            crc_data = struct.unpack_from("<I", data, offset + 4)[0]
            count = _u64(data, offset + 8)
            header_len = 8 + 16 * count
            if count == 0:
                error = "entries count in preamble is zero"
            elif count > MAX_BATCH_ENTRIES:
                error = "entries count %d in preamble is too high" % count
            elif offset + 8 + header_len > size:
                error = "short read: batch header of %d entries runs past the end of the file" % count
            elif not crc_ok(offset + 8, offset + 8 + header_len, offset):
                error = "header checksum mismatch"
            else:
                entries = []
                data_len = 0
                for i in range(count):
                    base = offset + 16 + 16 * i
                    term, etype, esize = struct.unpack_from("<QB3xI", data, base)
                    entries.append((term, etype, esize))
                    data_len += esize
                    if esize % 8:
                        data_len += 8 - esize % 8
                data_start = offset + 8 + header_len
                claimed_end = data_start + data_len
                if data_start + data_len > size:
                    error = "short read: batch data of %d bytes runs past the end of the file" % data_len
                else:
                    batch = {"offset": offset, "entries": entries, "data_crc": crc_data,
                             "data_range": (data_start, data_start + data_len), "data_checked": False}
                    if check_data:
                        if not crc_ok(data_start, data_start + data_len, offset + 4):
                            error = "data checksum mismatch"
                        else:
                            batch["data_checked"] = True
                    if error is None:
                        result["batches"].append(batch)
                        result["entries"] += count
                        offset = data_start + data_len
                        continue
        result["error"] = {"message": error, "offset": offset, "batch": batch_no,
                           "nonzero_after_batch": _nonzero(data, min(claimed_end, size))}
        break
    result["end"] = offset
    if result["error"] is None and result["batches"] and not result["batches"][-1]["data_checked"]:
        last = result["batches"][-1]
        start, end = last["data_range"]
        if not crc_ok(start, end, last["offset"] + 4):
            result["batches"].pop()
            result["entries"] -= len(last["entries"])
            result["end"] = last["offset"]
            result["error"] = {"message": "data checksum mismatch", "offset": last["offset"],
                               "batch": len(result["batches"]) + 1, "nonzero_after_batch": _nonzero(data, end)}
        else:
            last["data_checked"] = True
    result["trailing_nonzero_bytes"] = _nonzero(data, result["end"])
    return result


def _nonzero(data, start):
    """Non-zero bytes from start on: data after where raft stops reading."""
    return len(data) - start - bytes(data).count(0, start)


def entry_payloads(data: Bytes, batch: dict[str, Any]) -> Iterator[tuple[int, int, Bytes]]:
    """Yield (term, type, payload bytes) for each entry of a parsed batch."""
    offset = batch["data_range"][0]
    for term, etype, esize in batch["entries"]:
        yield term, etype, data[offset:offset + esize]
        offset += esize + ((8 - esize % 8) % 8)


# ---------------------------------------------------------------------------- snapshots
def parse_snapshot_meta(data: bytes | bytearray) -> dict[str, Any]:
    """A snapshot .meta file: format, configuration index and servers. Raises FormatError."""
    if len(data) < 32:
        raise FormatError("%d bytes, shorter than the 32-byte header" % len(data), 0)
    fmt, crc, conf_index, conf_len = struct.unpack_from("<4Q", data, 0)
    if fmt != DISK_FORMAT:
        raise FormatError("format %d, expected %d" % (fmt, DISK_FORMAT), 0)
    if conf_len == 0:
        raise FormatError("no configuration data", 24)
    if conf_len > MAX_META_CONFIGURATION:
        raise FormatError("configuration data too big (%d bytes)" % conf_len, 24)
    if 32 + conf_len > len(data):
        raise FormatError("configuration of %d bytes runs past the end of the %d-byte file"
                          % (conf_len, len(data)), 32)
    configuration = data[32:32 + conf_len]
    actual = crc32(configuration, crc32(data[16:32]))
    if actual != (crc & 0xFFFFFFFF):
        raise FormatError("checksum mismatch (stored %08x, computed %08x)" % (crc & 0xFFFFFFFF, actual), 8)
    return {"format": fmt, "configuration_index": conf_index, "servers": parse_configuration(configuration)}


# ---------------------------------------------------------------------------- LZ4 frames
LZ4_MAGIC = 0x184D2204
_P1, _P2, _P3, _P4, _P5 = 2654435761, 2246822519, 3266489917, 668265263, 374761393
_M32 = 0xFFFFFFFF


def _rotl(value, bits):
    return ((value << bits) | (value >> (32 - bits))) & _M32


def xxh32(data: Bytes | mmap.mmap, seed: int = 0) -> int:
    """xxHash32, as LZ4 frames use it for header, block and content checksums.

    The 16-byte stripe loop is the hot path of a full snapshot check (pure Python, about 20 MB/s
    here): it iterates with struct.iter_unpack, keeps everything in locals, and masks a
    rotation only once, after its multiplication (the bits above 32 cannot reach the low 32).
    """
    view = memoryview(data).cast("B")
    length = len(view)
    offset = length - length % 16
    m32, p1, p2 = _M32, _P1, _P2
    if length >= 16:
        v1 = (seed + p1 + p2) & m32
        v2 = (seed + p2) & m32
        v3 = seed
        v4 = (seed - p1) & m32
        for a, b, c, d in struct.iter_unpack("<4I", view[:offset]):
            v1 = (v1 + a * p2) & m32
            v1 = ((v1 << 13) | (v1 >> 19)) * p1 & m32
            v2 = (v2 + b * p2) & m32
            v2 = ((v2 << 13) | (v2 >> 19)) * p1 & m32
            v3 = (v3 + c * p2) & m32
            v3 = ((v3 << 13) | (v3 >> 19)) * p1 & m32
            v4 = (v4 + d * p2) & m32
            v4 = ((v4 << 13) | (v4 >> 19)) * p1 & m32
        h = (_rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)) & m32
    else:
        offset = 0
        h = (seed + _P5) & m32
    h = (h + length) & m32
    while offset + 4 <= length:
        h = _rotl((h + struct.unpack_from("<I", view, offset)[0] * _P3) & m32, 17) * _P4 & m32
        offset += 4
    while offset < length:
        h = _rotl((h + view[offset] * _P5) & m32, 11) * p1 & m32
        offset += 1
    h ^= h >> 15
    h = h * p2 & m32
    h ^= h >> 13
    h = h * _P3 & m32
    h ^= h >> 16
    return h


def is_lz4_frame(data: Bytes | mmap.mmap) -> bool:
    return len(data) >= 4 and struct.unpack_from("<I", data, 0)[0] == LZ4_MAGIC


def _lz4_length(src, pos, length, what):
    """Add LZ4's extension bytes (255 means another follows) to a length; return it and the new position."""
    while True:
        if pos >= len(src):
            raise FormatError("LZ4 %s length runs past the block" % what, pos)
        extra = src[pos]
        pos += 1
        length += extra
        if extra != 255:
            return length, pos


def _lz4_block_decode(src, out):
    """Decode one LZ4 block, appending to out (the window of earlier blocks stays usable)."""
    pos, end = 0, len(src)
    while True:
        if pos >= end:
            raise FormatError("LZ4 block ends without its last literals", pos)
        token = src[pos]
        pos += 1
        lit = token >> 4
        if lit == 15:
            lit, pos = _lz4_length(src, pos, lit, "literal")
        if pos + lit > end:
            raise FormatError("LZ4 literals run past the block", pos)
        out += src[pos:pos + lit]
        pos += lit
        if pos == end:
            return
        if pos + 2 > end:
            raise FormatError("LZ4 match offset runs past the block", pos)
        distance = src[pos] | (src[pos + 1] << 8)
        pos += 2
        if distance == 0 or distance > len(out):
            raise FormatError("LZ4 match offset %d points before the start of the data" % distance, pos - 2)
        length = (token & 15) + 4
        if length == 19:
            length, pos = _lz4_length(src, pos, length, "match")
        start = len(out) - distance
        if length <= distance:
            out += out[start:start + length]
        else:
            pattern = bytes(out[start:])
            out += (pattern * (length // distance + 1))[:length]


def verify_lz4_frame(data: Bytes | mmap.mmap, full: bool = True) -> dict[str, Any]:
    """Check an LZ4 frame: header checksum, block structure, and (full) block checksums,
    content size and content checksum, by decoding it. Returns a summary dict; raises
    FormatError naming the offset of the first problem."""
    size = len(data)
    if not is_lz4_frame(data):
        raise FormatError("not an LZ4 frame (magic missing)", 0)
    if size < 7:
        raise FormatError("LZ4 frame header is truncated", 4)
    flg, bd = data[4], data[5]
    if flg >> 6 != 1:
        raise FormatError("LZ4 frame version %d, expected 1" % (flg >> 6), 4)
    block_checksum, has_size, content_checksum, has_dict = bool(flg & 0x10), bool(flg & 0x08), bool(flg & 0x04), bool(flg & 0x01)
    block_max = {4: 64 << 10, 5: 256 << 10, 6: 1 << 20, 7: 4 << 20}.get((bd >> 4) & 7)
    if block_max is None or bd & 0x8F:
        raise FormatError("LZ4 frame block descriptor 0x%02x is invalid" % bd, 5)
    pos = 6
    content_size = None
    if has_size:
        if size < pos + 8:
            raise FormatError("LZ4 frame header is truncated", pos)
        content_size = _u64(data, pos)
        pos += 8
    if has_dict:
        pos += 4
    if size < pos + 1:
        raise FormatError("LZ4 frame header is truncated", pos)
    if (xxh32(data[4:pos]) >> 8) & 0xFF != data[pos]:
        raise FormatError("LZ4 frame header checksum mismatch", pos)
    pos += 1
    out = bytearray()
    blocks = 0
    while True:
        if pos + 4 > size:
            raise FormatError("LZ4 frame truncated: block %d size missing" % (blocks + 1), pos)
        word = struct.unpack_from("<I", data, pos)[0]
        pos += 4
        if word == 0:
            break
        length = word & 0x7FFFFFFF
        if length > block_max:
            raise FormatError("LZ4 block %d of %d bytes exceeds the frame's maximum %d" % (blocks + 1, length, block_max), pos - 4)
        if pos + length + (4 if block_checksum else 0) > size:
            raise FormatError("LZ4 frame truncated inside block %d" % (blocks + 1), pos)
        if full:
            block = data[pos:pos + length]
            if block_checksum and xxh32(block) != struct.unpack_from("<I", data, pos + length)[0]:
                raise FormatError("LZ4 block %d checksum mismatch" % (blocks + 1), pos)
            if word & 0x80000000:
                out += block
            else:
                before = len(out)
                try:
                    _lz4_block_decode(block, out)
                except FormatError as exc:
                    raise FormatError("LZ4 block %d: %s" % (blocks + 1, exc), pos + (exc.offset or 0))
                if len(out) - before > block_max:
                    raise FormatError("LZ4 block %d decodes to more than the frame's maximum" % (blocks + 1), pos)
        pos += length + (4 if block_checksum else 0)
        blocks += 1
    if content_checksum:
        if pos + 4 > size:
            raise FormatError("LZ4 frame truncated: content checksum missing", pos)
        stored = struct.unpack_from("<I", data, pos)[0]
        if full and xxh32(bytes(out)) != stored:
            raise FormatError("LZ4 content checksum invalid", pos)
        pos += 4
    if full and content_size is not None and content_size != len(out):
        raise FormatError("LZ4 content size %d, but the blocks decode to %d bytes" % (content_size, len(out)), 6)
    return {"blocks": blocks, "frame_end": pos, "content_size": content_size,
            "decoded_size": len(out) if full else None, "trailing_bytes": size - pos,
            "content_checksum": content_checksum}


# The pure-Python decode above checks a frame to the bit, at about 10 MiB/s of content (the
# xxHash32 of the content is the cost). A member that has liblz4 (the Python binding or the lz4
# tool) can check the same things in C: frame and block checksums, block structure, content
# size and content checksum. The engines, in the order `auto` tries them:
LZ4_ENGINES = ("library", "tool", "python")
_LZ4_CHUNK = 1 << 20


def lz4_engine(choice: str = "auto") -> str:
    """The engine that checks LZ4 frame contents: `library` (lz4.frame), `tool` (the lz4
    command, read-only `-t`), or `python`. `auto` picks the first this host has; a named C
    engine the host lacks raises ValueError naming it."""
    have = {"library": _lz4_frame is not None, "tool": shutil.which("lz4") is not None, "python": True}
    if choice == "auto":
        return next(name for name in LZ4_ENGINES if have[name])
    if choice not in have:
        raise ValueError("lz4 engine %r: expected one of auto, %s" % (choice, ", ".join(LZ4_ENGINES)))
    if not have[choice]:
        raise ValueError("lz4 engine %r: not on this host (%s)" % (
            choice, "python3 module lz4.frame" if choice == "library" else "lz4 command on PATH"))
    return choice


def _chunks(handle, end=None):
    """The file's bytes from where handle is up to offset end (None: its end), in pieces of
    _LZ4_CHUNK."""
    while end is None or handle.tell() < end:
        chunk = handle.read(_LZ4_CHUNK if end is None else min(_LZ4_CHUNK, end - handle.tell()))
        if not chunk:
            return
        yield chunk


def _lz4_check_library(handle, end=None):
    """liblz4 through the binding: decode in bounded pieces up to the frame's end mark (or up
    to offset end), count and discard the output (the binding releases the GIL while liblz4
    works, and so do the reads, so snapshots can be checked in threads)."""
    decoder = _lz4_frame.LZ4FrameDecompressor()
    decoded = 0
    try:
        for chunk in _chunks(handle, end):
            decoded += len(decoder.decompress(chunk, max_length=_LZ4_CHUNK))
            while not decoder.needs_input and not decoder.eof:
                decoded += len(decoder.decompress(b"", max_length=_LZ4_CHUNK))
            if decoder.eof:
                break  # what follows the end mark is the structure walk's to report
    except RuntimeError as exc:  # the binding's error for every liblz4 LZ4F_* error
        raise FormatError("liblz4: %s" % exc)
    if not decoder.eof:
        raise FormatError("liblz4: the frame ends before its end mark")
    return decoded


def _lz4_check_tool(handle, end):
    """The lz4 command's integrity test (-t reads, writes nothing), fed the frame on stdin."""
    proc = subprocess.Popen([shutil.which("lz4"), "-t", "-q", "-"], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for chunk in _chunks(handle, end):
            proc.stdin.write(chunk)
        proc.stdin.close()
    except BrokenPipeError:  # lz4 stopped reading: it found the problem; its exit says which
        pass
    message = proc.stderr.read().decode("utf-8", "replace").strip().splitlines()
    if proc.wait() != 0:
        raise FormatError("lz4 -t: %s" % (message[-1] if message else "exit %d" % proc.returncode))
    return None


def check_lz4_file(path: str, full: bool = True, engine: str = "python") -> dict[str, Any]:
    """verify_lz4_frame on a snapshot file, its contents checked by `engine` (lz4_engine()).

    With a C engine the file is never held in memory: the frame's structure is walked on a
    read-only map of the file (one step per block, no block copied), then the frame is streamed
    to liblz4 in 1 MiB pieces. When the C engine rejects the contents, the pure-Python decode
    runs as well, to name the block and offset; if it finds nothing, the C engine's message is
    the finding. Raises FormatError."""
    with open(path, "rb") as handle:
        if full and engine == "python":
            return dict(verify_lz4_frame(handle.read(), full=True), checked_by="python")
        if full and engine == "library":
            # liblz4 first: it reads the file in order, and from a cold cache the reads and the
            # decode overlap; the structure walk after it then touches cached pages only. (Walked
            # first, the walk's page faults read the whole file with the GIL held, and the decode
            # could only start when it ended: twice the time of `lz4 -t` from a cold cache.)
            try:
                decoded = _lz4_check_library(handle)
            except FormatError as c_error:
                _exact_finding(handle, engine, c_error)
            summary = _walk_structure(handle)
            summary["decoded_size"] = decoded
            return dict(summary, checked_by=engine)
        summary = _walk_structure(handle)
        if not full:
            return dict(summary, checked_by="structure only")
        handle.seek(0)
        try:
            _lz4_check_tool(handle, summary["frame_end"])
        except FormatError as c_error:
            _exact_finding(handle, engine, c_error)
    summary["checked_by"] = engine
    return summary


def _walk_structure(handle):
    """verify_lz4_frame(full=False) on a read-only map of the open file."""
    with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        return verify_lz4_frame(mapped, full=False)  # indexing a map copies; nothing stays exported


def _exact_finding(handle, engine, c_error):
    """A C engine rejected the frame: raise what the structure walk or the pure-Python decode
    names (block, offset), or, if they find nothing, the C engine's own message."""
    _walk_structure(handle)
    handle.seek(0)
    try:
        verify_lz4_frame(handle.read(), full=True)
    except FormatError as exact:
        raise FormatError("%s (%s agrees: %s)" % (exact, engine, c_error), exact.offset)
    raise c_error


# ---------------------------------------------------------------------------- YAML files
def parse_node_yaml(text: str) -> list[dict[str, Any]]:
    """go-dqlite's info.yaml (one mapping) or cluster.yaml (a list of mappings) of ID,
    Address and Role. A parser for that shape only: targets have no YAML library."""
    nodes: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        stripped = line.lstrip()
        if stripped.startswith("- "):
            current = {}
            nodes.append(current)
            stripped = stripped[2:].lstrip()
        elif current is None:
            current = {}
            nodes.append(current)
        if ":" not in stripped:
            raise FormatError("line %d is not 'Key: value': %r" % (number, raw))
        key, value = (part.strip() for part in stripped.split(":", 1))
        value = value.strip("'\"")
        if key in ("ID", "Role"):
            try:
                current[key] = int(value)
            except ValueError:
                raise FormatError("line %d: %s is not a number: %r" % (number, key, value))
        else:
            current[key] = value
    for node in nodes:
        missing = [k for k in ("ID", "Address") if k not in node]
        if missing:
            raise FormatError("a node lacks %s" % ", ".join(missing))
        node.setdefault("Role", 0)
    return nodes
