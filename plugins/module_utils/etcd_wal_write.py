# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one write this collection makes to an etcd WAL: a HardState record appended to the last
WAL file of a COPY of a member directory, so that etcd started on the copy commits the whole log.

PRIVATE to this collection: may change without notice. Standard library only.

Why: --force-new-cluster (and a member started alone) applies entries only up to the persisted
HardState.commit and drops the rest, even the ones a client was told succeeded. A HardState
whose commit is the last index makes etcd keep and apply every entry it holds.

How etcd itself appends (wal.go, encoder.go): it reads to the last valid record, keeps the
running CRC-32C, zeroes the rest of the file and writes the next frame there. This does the same:
the frame goes right after the last valid record of the newest file, its crc continues the chain
(crc = crc32c_update(previous crc, data)), and whatever follows it (a torn tail) is zeroed.
Never call this on a member's own directory: the module works on its scratch copy.
"""

from __future__ import annotations

import os
import struct

from ansible_collections.quorum.recovery.plugins.module_utils import etcd_format as fmt
from ansible_collections.quorum.recovery.plugins.module_utils.ondisk import FormatError

_ZEROS = b"\0" * (1 << 20)


def last_wal_file(wal_dir: str) -> str:
    names = sorted(n for n in os.listdir(wal_dir) if fmt.WAL_NAME_RE.match(n))
    if not names:
        raise FormatError("no WAL file in %s" % wal_dir)
    return os.path.join(wal_dir, names[-1])


def valid_end(data: fmt.Bytes, name: str = "the WAL file") -> tuple[int, int, dict | None]:
    """(offset just after the last valid record, running CRC there, last HardState) of ONE WAL
    file, read from its first record (a crc record starts every file). A torn or short tail ends
    the valid data; any other failure (a CRC break before the end, a record that does not decode)
    is corruption, and FormatError says where."""
    scan = fmt.WalScan(full=False, read_from=1)  # the framing and CRC chain only, no entries decoded
    scan.feed(name, data, True)
    if scan.error and scan.error["kind"] not in ("torn", "short"):
        raise FormatError("%s: %s at offset %d; not appending to a WAL that etcd would refuse"
                          % (name, scan.error["message"], scan.error["offset"]), scan.error["offset"])
    end = scan.files[0]["end_offset"]
    # the running CRC over the records before `end` (a failing record was already folded into scan.crc)
    view, pos, crc = memoryview(data), 0, 0
    while pos < end:
        word = struct.unpack_from("<Q", view, pos)[0]
        length = word & 0x00FFFFFFFFFFFFFF
        pad = (word >> 56) & 7 if word >> 63 else 0
        rtype, rcrc, rdata = fmt.parse_record(view[pos + 8:pos + 8 + length])
        crc = rcrc if rtype == fmt.RECORD_CRC else fmt.crc32c(rdata, crc)
        pos += 8 + length + pad
    return end, crc, scan.vse_state


def append_hard_state(wal_dir: str, term: int, vote: int, commit: int) -> dict:
    """Append HardState {term, vote, commit} to the newest WAL file of wal_dir (a copy) and zero
    what follows it; fsynced. Returns the file, the offset written at, the frame's size, the
    bytes zeroed after it, the CRC written and the HardState the file held before."""
    path = last_wal_file(wal_dir)
    name = os.path.basename(path)
    with open(path, "r+b") as handle:
        data = handle.read()
        end, crc, before = valid_end(data, name)
        payload = fmt.encode_hard_state(term, vote, commit)
        crc = fmt.crc32c(payload, crc)
        frame = fmt.encode_frame(fmt.RECORD_STATE, crc, payload)
        after = end + len(frame)
        written_after = len(data[after:].rstrip(b"\0")) if len(data) > after else 0
        handle.seek(end)
        handle.write(frame)
        left = written_after
        while left > 0:
            chunk = min(left, len(_ZEROS))
            handle.write(_ZEROS[:chunk])
            left -= chunk
        handle.flush()
        os.fsync(handle.fileno())
    return {"file": name, "offset": end, "frame_size": len(frame), "zeroed": written_after, "crc": crc,
            "hard_state": {"term": term, "vote": vote, "commit": commit}, "hard_state_before": before}
