"""Time playbooks/backup.yml against `etcdctl snapshot save` and `tar` of the same member, on
one lab with a ~1 GiB etcd keyspace, alternately.

The lab: 3 etcd members (--etcd-version) and a backup host (h4); --mib MiB of incompressible
values (benchmarks/recover_vs_manual_etcd.py's bulk writer, --value bytes each) loaded through
h1's gateway; dqlite stopped (not measured). Then, --runs times, in this order:

  S  `etcdctl snapshot save` on the member backup.yml would choose (the most advanced healthy
     one; the lab's leader), to a file in that member's /var/tmp: what an operator's cron does;
  T  `tar -cf` of that member's data directory (member/) to a file in its /var/tmp: the copy
     tools that do not know etcd do;
  P  `ansible-playbook playbooks/backup.yml -e recover_engine=etcd -e backup_verify=false`:
     snapshot save, sha256, pack, member -> controller -> h4, checked on arrival;
  V  the same with backup_verify=true: the difference P->V is the verification (restore on a
     scratch copy, started alone, revision and key count read back), timed separately as the
     issue asks.

Throughput is the snapshot's size over the wall time of each; the ratios P/S and P/T are what
the goal (>= 0.8) is about. The playbook runs are profiled per task (the bench_profile callback)
and split into the part on the member (snapshot, its checks, pack: what S and T do), the
shipping (member -> controller -> backup host, checked on arrival) and the rest (status,
counter, report round trips); the on-member ratios S/P_on_member and T/P_on_member are
reported beside the whole-run ones, and the verification is V's on-member time less P's.
`uptime` is recorded before and after each run. All files S and T wrote are removed after each run (they are the
benchmark's own, under /var/tmp/qrbench-*). Results: benchmarks/results/backup_vs_snapshot_etcd/latest.json (profiles beside it)
and a table printed for benchmarks/RESULTS.md.

Run as root from the repository after `bash scripts/setup`; the lab is QRLAB_NAME/QRLAB_STATE/
QRLAB_SUBNET from the environment (use a lab of its own), taken down on exit.
"""
from __future__ import annotations

import argparse
import json
import re
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from recover_vs_manual_etcd import BULK_WRITER  # noqa: E402  pylint: disable=wrong-import-position

from lab.core import ETCD_DIR, Lab, LabError  # noqa: E402  pylint: disable=wrong-import-position,wrong-import-order

RESULTS = REPO / "benchmarks" / "results" / "backup_vs_snapshot_etcd" / "latest.json"


def log(msg):
    print("[%s] %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


def env(profile=None):
    out = dict(os.environ)
    out.update(ANSIBLE_COLLECTIONS_PATH=os.environ.get("ANSIBLE_COLLECTIONS_PATH", str(REPO / "build" / "collections")),
               ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    if profile:  # per-task wall times (benchmarks/callback_plugins/bench_profile.py)
        out.update(ANSIBLE_CALLBACK_PLUGINS=str(REPO / "benchmarks" / "callback_plugins"),
                   ANSIBLE_CALLBACKS_ENABLED="bench_profile", BENCH_PROFILE_OUT=str(profile))
    return out


# Where backup.yml spends its time, by the role's task names (roles/backup/tasks/): on the member
# (the snapshot, its checks and the pack), shipping it off the node (transfers, checks on arrival,
# bookkeeping), and everything else (inputs, status, counter, report: round trips).
ON_MEMBER = ("Save the snapshot and prove it restores", "Wait for the long step", "Pack the backup with its manifest")
SHIPPING = ("Bring the payload and manifest to the controller", "Send the payload and manifest to", "Take it in on",
            "Keep it on the controller", "Make the incoming folder on", "Record on every member that this backup is stored",
            "Remove the outbox copy and the relay copy")


def phases(profile: Path) -> dict:
    tasks = json.loads(profile.read_text())["tasks"]
    out = {"on_member": 0.0, "shipping": 0.0, "other": 0.0, "tasks": {}}
    for task in tasks:
        name = task["name"].split(" : ")[-1]
        out["tasks"][name] = round(out["tasks"].get(name, 0.0) + task["seconds"], 3)
        kind = ("on_member" if name.startswith(ON_MEMBER) else "shipping" if name.startswith(SHIPPING) else "other")
        out[kind] += task["seconds"]
    out["total"] = json.loads(profile.read_text())["total_seconds"]
    return out


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def timed(argv, **kw):
    t0 = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, **kw)
    took = time.monotonic() - t0
    if proc.returncode:
        raise LabError("%s failed: %s %s" % (argv[:3], proc.stdout[-2000:], proc.stderr[-2000:]))
    return took, proc


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--etcd-version", default="3.4", choices=["3.4", "3.5"])
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--value", type=int, default=256 * 1024)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    lab = Lab(etcd_version=args.etcd_version)
    records = []
    try:
        log("lab up: 3 etcd members + backup host, etcd %s" % args.etcd_version)
        hosts = lab.up(3, keys=100, etcd_version=args.etcd_version, backup_host=True)
        for host in hosts:
            lab.service(host, "dqlite", "stop")
        count = args.mib * 2 ** 20 // args.value
        log("loading %d values of %d bytes (%d MiB)" % (count, args.value, args.mib))
        t0 = time.monotonic()
        proc = lab.exec(hosts[0], ["/usr/bin/python3", "-c", BULK_WRITER, hosts[0].address, "2379", "big", str(count),
                                   str(args.value), "4"], check=False, timeout=3600)
        if proc.returncode:
            raise LabError("load: %s %s" % (proc.stdout[-2000:], proc.stderr[-2000:]))
        log("loaded in %.0f s" % (time.monotonic() - t0))
        leader = next(h for h in hosts if lab.etcd_status(h) and lab.etcd_status(h)["leader"] == lab.etcd_status(h)["header"]["member_id"])
        etcdctl = [lab.etcd_bin_dir + "/etcdctl", "--endpoints", leader.etcd_client_url]
        store = lab.backup_host.real_path("/var/backups/quorum-recovery-store")
        for run in range(1, args.runs + 1):
            rec = {"run": run, "source": leader.name}
            snap = "/var/tmp/qrbench-%d.db" % run
            took = timed(lab.enter(leader, etcdctl + ["snapshot", "save", snap]), env=dict(os.environ, ETCDCTL_API="3"))[0]
            rec["snapshot_bytes"] = leader.real_path(snap).stat().st_size
            rec["S_snapshot_save_s"] = took
            leader.real_path(snap).unlink()
            tarball = "/var/tmp/qrbench-%d.tar" % run
            took = timed(lab.enter(leader, ["tar", "-cf", tarball, "-C", ETCD_DIR, "member"]))[0]
            rec["tar_bytes"] = leader.real_path(tarball).stat().st_size
            rec["T_tar_s"] = took
            leader.real_path(tarball).unlink()
            rec["uptime_before"] = load()
            for kind, verify in (("P", "false"), ("V", "true")):
                profile = RESULTS.parent / ("latest-profile-%d-%s.json" % (run, kind))
                RESULTS.parent.mkdir(parents=True, exist_ok=True)
                took, proc = timed([str(REPO / ".venv" / "bin" / "ansible-playbook"), "-i", str(lab.etcd_inventory_path),
                                    str(REPO / "playbooks" / "backup.yml"), "-e", "recover_engine=etcd",
                                    "-e", "backup_verify=%s" % verify, "-e", "backup_source=%s" % leader.name],
                                   env=env(profile), cwd=REPO, timeout=7200)
                rec["%s_playbook_%s_s" % (kind, "verify" if verify == "true" else "noverify")] = took
                spent = phases(profile)
                rec["%s_on_member_s" % kind] = spent["on_member"]
                rec["%s_shipping_s" % kind] = spent["shipping"]
                rec["%s_other_s" % kind] = spent["other"]
                rec["%s_tasks" % kind] = dict(sorted(spent["tasks"].items(), key=lambda kv: -kv[1])[:12])
                # the transfers' own lines ("fetched 1.2 GiB in 41.8 s", "sent ... in ... s"): the off-node part
                moved = re.findall(r"\]: (?:fetched|sent) [^\n]*? in ([0-9.]+) s", proc.stdout)
                rec["%s_transfers_s" % kind] = sum(float(x) for x in moved)
            newest = max(store.rglob("*.json"), key=lambda p: json.loads(p.read_text())["counter"])
            manifest = json.loads(newest.read_text())
            rec["payload_bytes"] = manifest["payload"]["size"]
            rec["verify_module_s"] = manifest["verified"]["seconds"]
            for payload in store.rglob("*.tar"):
                payload.unlink()  # the benchmark's own backups: keep the backup host's disk free
            size = rec["snapshot_bytes"]
            for key in ("S_snapshot_save_s", "T_tar_s", "P_playbook_noverify_s", "V_playbook_verify_s"):
                rec[key[:-2] + "_MiB_per_s"] = size / 2 ** 20 / rec[key]
            rec["ratio_P_to_S"] = rec["S_snapshot_save_s"] / rec["P_playbook_noverify_s"]
            rec["ratio_P_to_T"] = rec["T_tar_s"] / rec["P_playbook_noverify_s"]
            rec["verification_s"] = rec["V_on_member_s"] - rec["P_on_member_s"]  # the same steps, with verify
            # on the member alone (snapshot, its checks, pack with its hashes), timed by the role's own tasks
            rec["ratio_P_on_member_to_S"] = rec["S_snapshot_save_s"] / rec["P_on_member_s"]
            rec["ratio_P_on_member_to_T"] = rec["T_tar_s"] / rec["P_on_member_s"]
            rec["uptime_after"] = load()
            log(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in rec.items()}))
            RESULTS.write_text(json.dumps({"etcd_version": args.etcd_version, "mib": args.mib, "value": args.value,
                                           "records": records + [rec]}, indent=1) + "\n")  # kept if a later run dies
            records.append(rec)
    finally:
        lab.down()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"etcd_version": args.etcd_version, "mib": args.mib, "value": args.value,
                                   "records": records}, indent=1) + "\n")
    if records:
        print("\n| measure | median | runs |\n|---|---:|---:|")
        for key in records[0]:
            if isinstance(records[0][key], float):
                values = [r[key] for r in records]
                print("| %s | %.2f | %s |" % (key, statistics.median(values), ", ".join("%.2f" % v for v in values)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
