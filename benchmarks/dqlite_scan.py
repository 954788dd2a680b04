"""Full-depth scan of a ~1 GiB dqlite data directory against `cat` of the same files.

    python3 benchmarks/dqlite_scan.py [--dir DIR] [--size-mib 1024] [--runs 5]

Builds the directory once (if DIR has no segments): 8 MiB closed segments of one-entry
batches with 8 KiB payloads (the size of a dqlite WAL frame batch for a small write), an open
segment, metadata, and a 64 MiB snapshot compressed by the real `lz4` tool (an LZ4 frame
with 64 KiB independent blocks, content size and content checksum, as raft's
compress.c asks liblz4 for). The segments are encoder-built with the
format written by tests/dqlite_builder.py, using the collection's own CRC for speed (the unit
tests check it bit for bit against the slow reference). Then, warm cache, several runs of:
`cat FILES > /dev/null`, inspect_datadir(depth=full), inspect_datadir(depth=quick), and the
parts (closed segments only, the snapshot's LZ4 frame only; its MiB/s counts DECODED bytes).
Prints a JSON summary.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import struct
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "build" / "collections"))

from ansible_collections.quorum.recovery.plugins.module_utils import dqlite_datadir  # noqa: E402
from ansible_collections.quorum.recovery.plugins.module_utils import dqlite_format as fmt  # noqa: E402

SEGMENT = 8 * 1024 * 1024
PAYLOAD = 8192


def _batch(term, payload):
    header = struct.pack("<Q", 1) + struct.pack("<QB3xI", term, fmt.ENTRY_COMMAND, len(payload))
    return struct.pack("<II", fmt.crc32(header), fmt.crc32(payload)) + header + payload


def _page(rng, index):
    """An SQLite-WAL-like frame: a little varying data, mostly zeros and repeats."""
    row = (b"key%08d=" % index) + bytes(rng.getrandbits(8) for _byte in range(200))
    return (row * 8).ljust(PAYLOAD, b"\0")


def build(directory: Path, size_mib: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(1)
    (directory / "metadata1").write_bytes(struct.pack("<4Q", 1, 1, 2, 1))
    (directory / "metadata2").write_bytes(struct.pack("<4Q", 1, 2, 2, 1))
    (directory / "info.yaml").write_text("Address: 10.0.0.1:9001\nID: 1\nRole: 0\n")
    (directory / "cluster.yaml").write_text("- Address: 10.0.0.1:9001\n  ID: 1\n  Role: 0\n")
    conf = b"\x01" + struct.pack("<Q", 1) + struct.pack("<Q", 1) + b"10.0.0.1:9001\0" + b"\x01"
    conf += b"\0" * (-len(conf) % 8)
    snapshot_bytes = 64 * 1024 * 1024
    budget = size_mib * 1024 * 1024 - snapshot_bytes // 2
    index, written = 1, 0
    pages = [_page(rng, i) for i in range(64)]
    while written + SEGMENT <= budget:
        first = index
        body = [struct.pack("<Q", 1)]
        size = 8
        if index == 1:
            first_batch = struct.pack("<Q", 1) + struct.pack("<QB3xI", 1, fmt.ENTRY_CHANGE, len(conf))
            blob = struct.pack("<II", fmt.crc32(first_batch), fmt.crc32(conf)) + first_batch + conf
            body.append(blob)
            size += len(blob)
            index += 1
        while size + 40 + PAYLOAD <= SEGMENT:
            blob = _batch(2, pages[index % 64][:PAYLOAD - 8] + struct.pack("<Q", index))
            body.append(blob)
            size += len(blob)
            index += 1
        (directory / ("%016d-%016d" % (first, index - 1))).write_bytes(b"".join(body))
        written += size
    snap_index = index - 1000
    raw = directory / "snapshot.raw"
    with open(raw, "wb") as handle:
        for i in range(snapshot_bytes // 4096):
            handle.write(pages[i % 64][:4096])
    name = "snapshot-2-%d-123456" % snap_index
    subprocess.run(["lz4", "-q", "-f", "-B4", "--content-size", str(raw), str(directory / name)], check=True)
    raw.unlink()
    tail = struct.pack("<QQ", 1, len(conf))
    meta = struct.pack("<QQ", 1, fmt.crc32(conf, fmt.crc32(tail))) + tail + conf
    (directory / (name + ".meta")).write_bytes(meta)
    opened = [struct.pack("<Q", 1)] + [_batch(2, pages[i % 64]) for i in range(100)]
    blob = b"".join(opened)
    (directory / "open-1").write_bytes(blob + b"\0" * (SEGMENT - len(blob)))


def _timed(call, runs):
    times = []
    for _run in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", default="/var/tmp/dqlite-bench")
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    directory = Path(args.dir)
    if not directory.is_dir() or not any(fmt.CLOSED_SEGMENT_RE.match(n) for n in os.listdir(directory)):
        start = time.perf_counter()
        build(directory, args.size_mib)
        print("built %s in %.1f s" % (directory, time.perf_counter() - start), file=sys.stderr)
    files = sorted(str(p) for p in directory.iterdir())
    total = sum(os.path.getsize(f) for f in files)
    snapshot = [f for f in files if fmt.SNAPSHOT_RE.match(os.path.basename(f))][0]

    def cat():
        subprocess.run(["cat", *files], stdout=subprocess.DEVNULL, check=True)

    def scan(depth):
        member = dqlite_datadir.inspect_datadir(str(directory), depth)
        assert member["verdict"] == "healthy", member["problems"]

    def snapshot_only():
        with open(snapshot, "rb") as handle:
            fmt.verify_lz4_frame(handle.read(), full=True)

    def segments_only():
        for name in files:
            if fmt.CLOSED_SEGMENT_RE.match(os.path.basename(name)):
                with open(name, "rb") as handle:
                    assert fmt.parse_segment(handle.read(), full=True)["error"] is None

    cat()  # warm the cache
    results = {"cat": _timed(cat, args.runs), "full": _timed(lambda: scan("full"), args.runs),
               "segments_only_full": _timed(segments_only, args.runs),
               "quick": _timed(lambda: scan("quick"), args.runs),
               "snapshot_lz4_full": _timed(snapshot_only, max(1, args.runs // 2))}
    snap_size = os.path.getsize(snapshot)
    with open(snapshot, "rb") as handle:
        decoded = fmt.verify_lz4_frame(handle.read())["decoded_size"]
    summary = {
        "machine": {"cpu": _cpu(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "kernel": platform.release()},
        "data_dir": {"files": len(files), "bytes": total, "snapshot_bytes": snap_size,
                     "snapshot_decoded_bytes": decoded},
        "seconds": {k: [round(t, 3) for t in v] for k, v in results.items()},
        "best_mib_per_s": {k: round((decoded if k.startswith("snapshot") else total) / min(v) / 2 ** 20, 1)
                           for k, v in results.items()},
    }
    summary["full_vs_cat"] = round(min(results["cat"]) / min(results["full"]), 3)
    print(json.dumps(summary, indent=1))


def _cpu():
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
