"""Full WAL scan of 5 x 64 MB WAL files: etcd_info' reader with the pure-Python CRC-32C, with
the C one (pip `crc32c`, when installed), and `cat` for the cost of reading the bytes.

python3 benchmarks/etcd_wal_scan.py [--dir DIR] [--entry-size 1024]; prints a JSON line per path.
The files are written with the layout etcd uses (crc record first, chained CRCs, 64,000,000
bytes each, entries followed by HardState records).
"""
from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "build" / "collections"))

from ansible_collections.quorum.recovery.plugins.module_utils import etcd_format as fmt  # noqa: E402

SEGMENT = 64 * 1000 * 1000


def _varint(value):
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number, value):
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    return _varint(number << 3 | 2) + _varint(len(value)) + value


def _frame(rtype, crc, data):
    record = _field(1, rtype) + _field(2, crc) + (_field(3, data) if data else b"")
    pad = -len(record) % 8
    return struct.pack("<Q", len(record) | ((0x80 | pad) << 56 if pad else 0)) + record + b"\0" * pad


def write_wals(directory, files=5, entry_size=1024):
    crc, index = 0, 0
    payload = b"v" * entry_size
    for seq in range(files):
        out = bytearray(_frame(4, crc, b""))
        for rtype, data in ((1, _field(1, 1) + _field(2, 2)),):
            crc = fmt.crc32c(data, crc)
            out += _frame(rtype, crc, data)
        while len(out) < SEGMENT - 4 * entry_size:
            index += 1
            for rtype, data in ((2, _field(1, 0) + _field(2, 2) + _field(3, index) + _field(4, payload)),
                                (3, _field(1, 2) + _field(2, 1) + _field(3, index))):
                crc = fmt.crc32c(data, crc)
                out += _frame(rtype, crc, data)
        out += b"\0" * (SEGMENT - len(out))
        (Path(directory) / ("%016x-%016x.wal" % (seq, 1 if seq == 0 else index + 1))).write_bytes(out)
    return index


def scan(directory, full=True):
    names = sorted(n for n in os.listdir(directory) if n.endswith(".wal"))
    walscan = fmt.WalScan(0, 0, full)
    for i, name in enumerate(names):
        walscan.feed(name, (Path(directory) / name).read_bytes(), i == len(names) - 1)
    return walscan.result()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir")
    parser.add_argument("--entry-size", type=int, default=1024)
    args = parser.parse_args()
    directory = args.dir or tempfile.mkdtemp(prefix="walbench-")
    if not any(n.endswith(".wal") for n in os.listdir(directory)):
        entries = write_wals(directory, entry_size=args.entry_size)
    else:
        entries = None
    paths = sorted(str(p) for p in Path(directory).glob("*.wal"))
    total = sum(os.path.getsize(p) for p in paths)
    subprocess.run(["cat", *paths], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
    t0 = time.perf_counter()
    subprocess.run(["cat", *paths], stdout=subprocess.DEVNULL, check=True)
    rows = [{"path": "cat", "seconds": round(time.perf_counter() - t0, 3)}]
    c_impl = fmt.crc32c
    candidates = [("python", fmt.crc32c_python)]
    if fmt.CRC32C_IMPLEMENTATION != "python":
        candidates.append((fmt.CRC32C_IMPLEMENTATION, c_impl))
    for label, impl in candidates:
        fmt.crc32c = impl
        for full in (True, False):
            t0 = time.perf_counter()
            result = scan(directory, full)
            seconds = time.perf_counter() - t0
            assert result["error"] is None, result["error"]
            rows.append({"path": "%s crc, %s depth" % (label, "full" if full else "quick"),
                         "seconds": round(seconds, 2), "last_index": result["last_index"],
                         "records": sum(result["record_counts"].values())})
    fmt.crc32c = c_impl
    for row in rows:
        row["MB/s"] = round(total / 1e6 / row["seconds"], 1) if row["seconds"] else None
        print(json.dumps(dict(row, bytes=total, files=len(paths), entries_written=entries)))


if __name__ == "__main__":
    main()
