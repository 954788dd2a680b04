"""Full-depth scan of a ~1 GiB dqlite data directory against `cat` of the same files.

    python3 benchmarks/dqlite_scan.py [--shape segments|snapshots] [--dir DIR] [--runs 3]
                                      [--engines library,tool,python] [--cold]

Two shapes of ~1 GiB, each built once into DIR (default /var/tmp/dqlite-bench-SHAPE):
- `segments`: the worst case for the reader: 8 MiB closed segments of one-entry batches with
  8 KiB payloads (~1 GiB), an open segment, and one 64 MiB snapshot that lz4 squeezes to a few MB.
- `snapshots`: what a busy dqlite member actually holds: raft keeps only ~8,192 trailing
  entries (~80 MiB of segments at 8 KiB a write), the rest is its two newest snapshots, here
  ~470 MiB each on disk (SQLite-like pages, half random bytes, LZ4 frames from the real lz4 tool
  with raft's settings: 64 KiB blocks, content size, content checksum).
Segments are encoder-built with the format in tests/dqlite_builder.py, using the collection's
own CRC (the unit tests check it bit for bit against the slow reference).

Then several runs of: `cat FILES > /dev/null`, inspect_datadir(depth=full) with each LZ4 engine
asked for, and inspect_datadir(depth=quick). Warm page cache by default; with --cold the page
cache is dropped (/proc/sys/vm/drop_caches, root) before every run of everything, so each run
reads from the disk as after a power cut. Prints a JSON summary.
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


def _lz4_snapshot(directory: Path, name: str, pages, count: int, page_size: int) -> None:
    raw = directory / "snapshot.raw"
    with open(raw, "wb") as handle:
        for i in range(count):
            handle.write(pages[i % len(pages)][:page_size])
    subprocess.run(["lz4", "-q", "-f", "-B4", "--content-size", str(raw), str(directory / name)], check=True)
    raw.unlink()


def _write_meta(directory: Path, name: str, conf: bytes) -> None:
    tail = struct.pack("<QQ", 1, len(conf))
    meta = struct.pack("<QQ", 1, fmt.crc32(conf, fmt.crc32(tail))) + tail + conf
    (directory / (name + ".meta")).write_bytes(meta)


def build(directory: Path, size_mib: int, shape: str = "segments") -> None:
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
    if shape == "snapshots":
        budget = 80 * 1024 * 1024
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
    if shape == "snapshots":
        # SQLite-like 4 KiB pages, half random bytes, 256 KiB before a page repeats (past LZ4's
        # 64 KiB window): lz4 halves them; two snapshots fill the rest
        half = [bytes(rng.getrandbits(8) for _b in range(2048)) for _i in range(64)]
        pages = [h + (b"row%05d" % i) * 256 for i, h in enumerate(half)]
        pages = [p[:4096] for p in pages]
        each = (size_mib * 1024 * 1024 - budget) // 2
        for n, snap in enumerate((snap_index - 1024, snap_index)):
            count = each * 2 // 4096  # compressed to about half
            name = "snapshot-2-%d-12345%d" % (snap, n)
            # vary the content between the two snapshots and across pages
            variants = [bytes(b ^ ((i * 7 + n) & 0xFF) for b in p[:64]) + p[64:] for i, p in enumerate(pages)]
            _lz4_snapshot(directory, name, variants, count, 4096)
            _write_meta(directory, name, conf)
    else:
        name = "snapshot-2-%d-123456" % snap_index
        _lz4_snapshot(directory, name, pages, snapshot_bytes // 4096, 4096)
        _write_meta(directory, name, conf)
    opened = [struct.pack("<Q", 1)] + [_batch(2, pages[i % 64]) for i in range(100)]
    blob = b"".join(opened)
    (directory / "open-1").write_bytes(blob + b"\0" * (SEGMENT - len(blob)))


def _drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as handle:
        handle.write("3\n")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", choices=["segments", "snapshots"], default="segments")
    parser.add_argument("--dir")
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--engines", default="library,tool,python",
                        help="LZ4 engines for the full scan, comma-separated (python is slow on snapshots)")
    parser.add_argument("--cold", action="store_true", help="drop the page cache before every run (root)")
    args = parser.parse_args()
    directory = Path(args.dir or "/var/tmp/dqlite-bench-%s" % args.shape)
    if not directory.is_dir() or not any(fmt.CLOSED_SEGMENT_RE.match(n) for n in os.listdir(directory)):
        start = time.perf_counter()
        build(directory, args.size_mib, args.shape)
        print("built %s in %.1f s" % (directory, time.perf_counter() - start), file=sys.stderr)
    files = sorted(str(p) for p in directory.iterdir())
    total = sum(os.path.getsize(f) for f in files)
    snapshots = [f for f in files if fmt.SNAPSHOT_RE.match(os.path.basename(f))]

    def cat():
        subprocess.run(["cat", *files], stdout=subprocess.DEVNULL, check=True)

    def scan(depth, engine="auto"):
        member = dqlite_datadir.inspect_datadir(str(directory), depth, lz4=engine)
        assert member["verdict"] == "healthy", member["problems"]
        if depth == "full":
            assert {s["data"]["checked_by"] for s in member["snapshots"]} == {engine}, member["snapshots"]

    def timed(call, runs):
        times = []
        for _run in range(runs):
            if args.cold:
                _drop_caches()
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        return times

    if not args.cold:
        cat()  # warm the cache
    results = {"cat": timed(cat, args.runs), "quick": timed(lambda: scan("quick"), args.runs)}
    for engine in args.engines.split(","):
        runs = 1 if engine == "python" and args.shape == "snapshots" else args.runs
        results["full_" + engine] = timed(lambda engine=engine: scan("full", engine), runs)
    summary = {
        "machine": {"cpu": _cpu(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "kernel": platform.release(), "loadavg_before": os.getloadavg()},
        "shape": args.shape, "cache": "cold" if args.cold else "warm",
        "data_dir": {"path": str(directory), "files": len(files), "bytes": total,
                     "snapshot_bytes": sum(os.path.getsize(f) for f in snapshots)},
        "seconds": {k: [round(t, 3) for t in v] for k, v in results.items()},
        "best_mib_per_s": {k: round(total / min(v) / 2 ** 20, 1) for k, v in results.items()},
        "best_vs_cat": {k: round(min(results["cat"]) / min(v), 3) for k, v in results.items()},
    }
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
