"""The dqlite backup copy (dqlite_backup.copy_online) of a ~1 GiB data directory against `tar` of
the same directory.

    python3 benchmarks/dqlite_backup_copy.py [--shape log|segments|snapshots] [--runs 3] [--cold]

The data directories are the ones benchmarks/dqlite_scan.py builds (encoder-built, real format,
CRCs and LZ4 frames; see its docstring), built on first use into /var/tmp/dqlite-bench-SHAPE.
`log` is `segments` without its snapshot (hard links to the same files, in
/var/tmp/dqlite-bench-log): the log from index 1, which the copy must take whole, so the copy and
tar move the same ~1 GiB. (`segments` has a snapshot near its end: the copy then takes a few MB.)

Runs, each into a fresh folder under /var/tmp/dqlite-bench-out (removed before every run):
- `tar`: `tar -cf OUT.tar -C DIR .`, then `sync OUT.tar` (the copy fsyncs what it writes, so tar's
  output is flushed too);
- `copy_quick`: copy_online(depth=quick): the copy, the sha256 of every file, fsyncs, the
  structure check of the copy (what verify=none does);
- `copy_full`: copy_online(depth=full): the same with the facts reader's full check of the copy
  (every batch CRC, every snapshot decoded: what verify=facts, the default, does);
- `check_full`: the full check alone, on the copy the previous run left (the verification timed
  apart from the copy).
The copy takes the files raft loads (the newest snapshot, the segments after it); tar takes the
whole directory. Both ratios are printed: seconds to back up the member (what an operator waits
for) and MiB/s of bytes each wrote. Warm page cache by default; --cold drops it before every
run (root). Prints a JSON summary.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dqlite_scan import REPO, _cpu, _drop_caches, build  # noqa: E402  (REPO puts the collection on sys.path)

from ansible_collections.quorum.recovery.plugins.module_utils import dqlite_backup  # noqa: E402
from ansible_collections.quorum.recovery.plugins.module_utils import dqlite_format as fmt  # noqa: E402

OUT = Path("/var/tmp/dqlite-bench-out")


def _built(shape, size_mib):
    directory = Path("/var/tmp/dqlite-bench-%s" % shape)
    if not directory.is_dir() or not any(fmt.CLOSED_SEGMENT_RE.match(n) for n in os.listdir(directory)):
        start = time.perf_counter()
        build(directory, size_mib, shape)
        print("built %s in %.1f s" % (directory, time.perf_counter() - start), file=sys.stderr)
    return directory


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", choices=["log", "segments", "snapshots"], default="log")
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cold", action="store_true", help="drop the page cache before every run (root)")
    args = parser.parse_args()
    directory = _built("segments" if args.shape == "log" else args.shape, args.size_mib)
    if args.shape == "log":
        log = Path("/var/tmp/dqlite-bench-log")
        if not log.is_dir():
            log.mkdir()
            for name in os.listdir(directory):
                if not name.startswith("snapshot-"):
                    os.link(directory / name, log / name)
        directory = log
    total = sum(p.stat().st_size for p in directory.iterdir())
    written = {}

    def fresh():
        shutil.rmtree(OUT, ignore_errors=True)
        OUT.mkdir(parents=True)

    def tar():
        subprocess.run(["tar", "-cf", str(OUT / "member.tar"), "-C", str(directory), "."], check=True)
        subprocess.run(["sync", str(OUT / "member.tar")], check=True)
        written["tar"] = (OUT / "member.tar").stat().st_size

    def copy(depth):
        result = dqlite_backup.copy_online(str(directory), str(OUT / "copy"), depth=depth)
        written["copy_" + depth] = sum(f["size"] for f in result["files"])

    def check():
        dqlite_backup.check_copy(str(OUT / "copy" / "raft"))
        written["check_full"] = sum(p.stat().st_size for p in (OUT / "copy" / "raft").iterdir())

    def timed(call, runs, clean=True):
        times = []
        for _run in range(runs):
            if clean:
                fresh()
            if args.cold:
                _drop_caches()
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        return times

    if not args.cold:
        subprocess.run(["cat", *map(str, directory.iterdir())], stdout=subprocess.DEVNULL, check=True)
    results = {"tar": timed(tar, args.runs), "copy_quick": timed(lambda: copy("quick"), args.runs),
               "copy_full": timed(lambda: copy("full"), args.runs)}
    results["check_full"] = timed(check, args.runs, clean=False)
    shutil.rmtree(OUT, ignore_errors=True)
    best = {k: min(v) for k, v in results.items()}
    summary = {
        "machine": {"cpu": _cpu(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "kernel": platform.release(), "loadavg_before": os.getloadavg()},
        "shape": args.shape, "cache": "cold" if args.cold else "warm",
        "data_dir": {"path": str(directory), "files": len(os.listdir(directory)), "bytes": total},
        "bytes_written": written,
        "seconds": {k: [round(t, 3) for t in v] for k, v in results.items()},
        "best_mib_per_s_written": {k: round(written[k] / best[k] / 2 ** 20, 1) for k in best},
        "time_ratio_vs_tar": {k: round(best["tar"] / best[k], 3) for k in best if k != "tar"},
        "throughput_ratio_vs_tar": {k: round((written[k] / best[k]) / (written["tar"] / best["tar"]), 3)
                                    for k in best if k != "tar"},
        "collection": str(REPO),
    }
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
