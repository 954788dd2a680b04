"""Time playbooks/recover.yml against etcd's manual disaster recovery, on the same lab, alternately.

The etcd side of recover_vs_manual.py: the same harness (alternating runs, timing, logs, profile,
JSON, tables), with the engine parts replaced. For each configuration (etcd3: 3 members at the
lab's size, --keys keys; etcdbig3: the same plus --big-mib MiB of incompressible values) the
script brings up ONE lab (etcd --etcd-version) and runs A B A B ...:

  A  ansible-playbook -i inventory-etcd.yml playbooks/recover.yml -e recover_engine=etcd
     -e recover_confirm=yes, with a new recover_state_dir and recover_controller_dir per run;
  B  etcd's documented disaster recovery, over plain ssh (the lab's key and ssh options), one host
     after another: stop every member; look at every member's member/snap/db (`etcdctl snapshot
     save` needs a quorum, so the db file is the snapshot) and take the newest (mtime; ties: the
     first in the inventory); copy it to the workstation and on to every other member; on every
     member `etcdctl snapshot restore --skip-hash-check` (3.4; `etcdutl` on 3.5) with the
     members' names and peer URLs as --initial-cluster, a new token, into a new directory inside
     the data dir; the old member/ moved aside (kept), the restored one moved into place; start
     every member (side by side, as in several terminals); `etcdctl endpoint health` over every
     endpoint until all are healthy.

Before every run (either kind) the cluster is broken afresh with the lab's power_off_mid_writes:
a writer on every host puts keys to its own member and writes down each acknowledged one, then
every member is SIGKILLed in one loop. The timer covers only the recovery. After every run,
untimed: every member healthy under one leader, the lab's keys (values checked) and the big keys
(counted) on every member, and how many of this run's acknowledged keys each member holds. The
manual path keeps only what the chosen db held (entries only in the WAL are lost); the playbook
replays the winner's whole log. A lost acknowledged key is recorded (`acked_lost`), not a failed
run; a run fails when the cluster did not come back or the lab's or big keys are not all there.

Run as root from the repository after `bash scripts/setup`; the lab is QRLAB_NAME/QRLAB_STATE/
QRLAB_SUBNET from the environment, taken down on exit.
"""
from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from recover_vs_manual import Bench, log, main, stats, summarize  # noqa: E402  pylint: disable=wrong-import-position

from lab.core import ETCD_DIR, Lab, LabError  # noqa: E402  pylint: disable=wrong-import-position,wrong-import-order

CONFIGS = {"etcd3": {"hosts": 3, "big": False}, "etcdbig3": {"hosts": 3, "big": True}}

# Runs inside h1: puts --big-keys keys of --big-value incompressible bytes (shake_256 of the key,
# so a check could recompute them) through the gRPC gateway, on a few kept-alive connections.
BULK_WRITER = r"""
import base64, hashlib, http.client, json, sys, threading
host, port, prefix, count, size, threads = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
errors = []
def work(first):
    conn = http.client.HTTPConnection(host, port, timeout=60)
    for i in range(first, count, threads):
        key = "%s%06d" % (prefix, i)
        value = hashlib.shake_256(key.encode()).digest(size)
        body = json.dumps({"key": base64.b64encode(key.encode()).decode(), "value": base64.b64encode(value).decode()})
        conn.request("POST", "/v3/kv/put", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        reply = resp.read()
        if resp.status != 200:
            errors.append("%s: %d %s" % (key, resp.status, reply[:200]))
            return
workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
[w.start() for w in workers]
[w.join() for w in workers]
print(json.dumps({"written": count, "errors": errors}))
sys.exit(1 if errors else 0)
"""


class EtcdBench(Bench):
    """The etcd parts of the benchmark; everything else is Bench's."""

    CONFIGS = CONFIGS
    ENGINE = "etcd"

    def __init__(self, args):
        super().__init__(args)
        self.lab = Lab(etcd_version=args.etcd_version)
        self.kept = {}  # run prefix -> keys every member held after its run
        self.acked_keys = set()
        self.big = 0
        self.note_fault = None

    @staticmethod
    def add_arguments(parser):
        parser.add_argument("--etcd-version", default="3.4", choices=["3.4", "3.5"])
        parser.add_argument("--keys", type=int, default=1000, help="the lab's keys (32-byte values)")
        parser.add_argument("--big-mib", type=int, default=128, help="MiB of values etcdbig3 adds")
        parser.add_argument("--big-value", type=int, default=64 * 1024, help="bytes per value for etcdbig3's load")
        parser.add_argument("--big-threads", type=int, default=4, help="connections of etcdbig3's writer")

    @staticmethod
    def report(records):
        return summarize_etcd(records)

    def label(self, config):
        return "%s-%s" % (config, self.args.etcd_version)

    def inventory_file(self):
        return self.lab.etcd_inventory_path

    def playbook_vars(self):
        return ["-e", "recover_engine=etcd"]

    # ------------------------------------------------------------------ lab
    def up(self, config):
        spec = self.CONFIGS[config]
        log("lab up: %d hosts, etcd %s, %d keys" % (spec["hosts"], self.args.etcd_version, self.args.keys))
        self.hosts = self.lab.up(spec["hosts"], keys=self.args.keys, etcd_version=self.args.etcd_version)
        for host in self.hosts:  # the lab brings dqlite up too; this benchmark does not use it
            self.lab.service(host, "dqlite", "stop")
        import yaml
        self.inventory = yaml.safe_load(self.inventory_file().read_text())
        self.kept, self.acked_keys, self.big = {}, set(), 0
        if spec["big"]:
            self.load_big()

    def group_vars(self):
        return self.inventory["all"]["children"]["etcd"]["vars"]

    def datadir_bytes(self, host):
        root = host.real_path(ETCD_DIR) / "member"
        return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())

    def load_big(self):
        h1 = self.hosts[0]
        count = self.args.big_mib * 2 ** 20 // self.args.big_value
        t0 = time.monotonic()
        proc = self.lab.exec(h1, ["/usr/bin/python3", "-c", BULK_WRITER, h1.address, "2379", "big", str(count),
                                  str(self.args.big_value), str(self.args.big_threads)], check=False, timeout=1800)
        if proc.returncode:
            raise LabError("big load: %s %s" % (proc.stdout[-2000:], proc.stderr[-2000:]))
        self.big = count
        log("big load: %d x %d B in %.0f s; data dirs %s" % (
            count, self.args.big_value, time.monotonic() - t0,
            {k: "%.0f MiB" % (v / 2 ** 20) for k, v in self.sizes().items()}))

    def break_cluster(self, tag):
        """A fresh quorum loss: every member SIGKILLed while a writer on every host writes."""
        prefix = "mw" + re.sub(r"[^a-z0-9]", "", tag.lower())
        fault = self.lab.power_off_mid_writes("etcd", seconds=self.args.midwrite_seconds, prefix=prefix,
                                              size=self.args.midwrite_size)
        self.acked_keys = set(fault["acknowledged"])
        self.note_fault = {"kill_spread_ms": round(fault["kill_spread_ms"], 3), "writers": fault["writers"]}
        return prefix, len(self.acked_keys)

    def cleanup(self, run_id):
        """Untimed: this run's moved-aside member dirs, restore dirs, backups, controller copies."""
        for host in self.hosts:
            data = host.real_path(ETCD_DIR)
            for entry in data.iterdir():
                if entry.name.startswith(("member.replaced-", "member.aside-", "restore-")):
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
            shutil.rmtree(host.real_path("/var/backups/qrbench"), ignore_errors=True)
        shutil.rmtree(self.out / "ctl" / run_id, ignore_errors=True)
        shutil.rmtree(self.out / "manual" / run_id, ignore_errors=True)

    # --------------------------------------------------------------- checks
    def healthy(self):
        statuses = [self.lab.etcd_status(h) for h in self.hosts]
        leaders = {s["leader"] for s in statuses if s}
        return all(statuses) and len(leaders) == 1 and 0 not in leaders, statuses

    def keyspace(self, host):
        proc = self.lab.etcdctl(host, "get", "", "--prefix", "--keys-only", "--limit", "1", "-w", "json", "--consistency", "s",
                                check=False)
        try:
            return json.loads(proc.stdout).get("count", 0)
        except ValueError:
            return None

    def verify(self, kind, prefix, timeout=120):
        """Untimed: one leader, every member serving; the lab's and the big keys on every member;
        how many of this run's acknowledged keys each member holds."""
        problems = []
        deadline = time.monotonic() + timeout
        while True:
            ok, statuses = self.healthy()
            if ok or time.monotonic() > deadline:
                break
            time.sleep(1)
        if not ok:
            problems.append("no common leader: %s" % [s and (s["leader"], s["header"]["revision"]) for s in statuses])
        members = self.lab.etcd_members(self.hosts[0]) if ok else []
        if ok and sorted(m.get("name", "") for m in members) != sorted(h.name for h in self.hosts):
            problems.append("members: %s" % members)
        held, lost, total = {}, set(), {}
        for host in self.hosts:
            result = self.lab.check_keys(host, "etcd", self.args.keys, "key")
            if not result.get("ok"):
                problems.append("%s: lab keys %s" % (host.name, result))
            if self.big:
                found = len(self.lab.etcd_keys(host, "big"))
                if found != self.big:
                    problems.append("%s: %d of %d big keys" % (host.name, found, self.big))
            keys = self.lab.etcd_keys(host, prefix + "-")
            held[host.name] = keys
            lost |= self.acked_keys - keys
            total[host.name] = self.keyspace(host)
        kept = set.intersection(*held.values()) & self.acked_keys if held else set()
        self.kept[prefix] = kept
        if len({frozenset(k) for k in held.values()}) > 1:
            problems.append("members disagree on this run's keys: %s" % {k: len(v) for k, v in held.items()})
        return {"ok": not problems, "problems": problems, "acked": len(self.acked_keys), "acked_kept": len(kept),
                "acked_lost": len(lost), "first_lost": sorted(lost)[:10],
                "run_keys_held": {k: len(v) for k, v in held.items()}, "keyspace": total,
                "revision": {h.name: s["header"]["revision"] if s else None for h, s in zip(self.hosts, statuses)},
                "fault": self.note_fault}

    def repair(self):
        """Untimed, after a failed run: start every member and wait for one leader."""
        self.lab.start_all(self.hosts, "etcd")
        self.lab._wait(lambda: self.healthy()[0], 120, "one etcd leader")  # pylint: disable=protected-access
        return ["started every member"]

    def final_check(self):
        """At the end of a configuration: the lab's and big keys, and every run's kept keys, still
        on every member."""
        bad = {}
        for host in self.hosts:
            result = self.lab.check_keys(host, "etcd", self.args.keys, "key")
            if not result.get("ok"):
                bad["%s key" % host.name] = result
            if self.big and len(self.lab.etcd_keys(host, "big")) != self.big:
                bad["%s big" % host.name] = "missing big keys"
            for prefix, kept in self.kept.items():
                missing = kept - self.lab.etcd_keys(host, prefix + "-")
                if missing:
                    bad["%s %s" % (host.name, prefix)] = sorted(missing)[:5]
        return {"ok": not bad, "prefixes": len(self.kept), "keys": self.args.keys + self.big
                + sum(len(k) for k in self.kept.values()), "bad": bad}

    # ---------------------------------------------------------------- manual
    def etcd_tls_args(self):
        return " ".join("--%s %s" % (k, shlex.quote(v)) for k, v in self.lab.etcd_client_tls.items())

    def run_manual(self, run_id):
        """etcd's disaster recovery from a member's db file, timed phase by phase."""
        svc = self.inventory["all"]["vars"]["qrlab_service"]
        bin_dir = self.group_vars()["recover_etcd_bin_dir"]
        data = ETCD_DIR
        backup = "/var/backups/qrbench/%s" % run_id
        phases = {}
        t0 = last = time.monotonic()

        def mark(name):
            nonlocal last
            now = time.monotonic()
            phases[name] = round(now - last, 3)
            last = now

        # 1. stop etcd everywhere (it is down after the power-off; the operator makes sure)
        for host in self.hosts:
            self.ssh(host, "%s etcd stop; %s etcd status; test $? -eq 3" % (svc, svc))
        mark("stop")
        # 2. every member's db: its mtime and size; the newest is the snapshot (ties: first)
        dbs = {}
        for host in self.hosts:
            out = self.ssh(host, "stat -c '%%.9Y %%s' %s/member/snap/db" % data).stdout.split()
            dbs[host.name] = (float(out[0]), int(out[1]))
        newest = max(mtime for mtime, _size in dbs.values())
        winner = next(h for h in self.hosts if dbs[h.name][0] == newest)
        mark("inspect+choose")
        # 3. the db to the workstation and on to every other member
        self.ssh(winner, "mkdir -p %s && cp %s/member/snap/db %s/db" % (backup, data, backup))
        local = self.out / "manual" / run_id
        local.mkdir(parents=True, exist_ok=True)
        self.scp("root@%s:%s/db" % (winner.address, backup), str(local / "db"))
        for host in self.hosts:
            if host is not winner:
                self.ssh(host, "mkdir -p %s" % backup)
                self.scp(str(local / "db"), "root@%s:%s/db" % (host.address, backup))
        mark("copy")
        # 4. restore on every member into a new dir, old member/ aside, new one in place
        cluster = ",".join("%s=%s" % (h.name, self.hv(h)["etcd_peer_url"]) for h in self.hosts)
        tool = ("ETCDCTL_API=3 %s/etcdctl" if self.lab.etcd_version == "3.4" else "%s/etcdutl") % bin_dir
        for host in self.hosts:
            new = "%s/restore-%s" % (data, run_id)
            self.ssh(host, "set -e; %s snapshot restore %s/db --skip-hash-check --name %s --initial-cluster %s"
                           " --initial-cluster-token manual-%s --initial-advertise-peer-urls %s --data-dir %s;"
                           " mv %s/member %s/member.aside-%s; mv %s/member %s/member; rmdir %s" % (
                               tool, backup, host.name, cluster, run_id, self.hv(host)["etcd_peer_url"], new,
                               data, data, run_id, new, data, new))
        mark("restore")
        # 5. start all, side by side (a member's start waits for its client port)
        starts = [subprocess.Popen(["ssh", *self.lab.ssh_args(), "root@" + h.address, "%s etcd start" % svc],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for h in self.hosts]
        for host, proc in zip(self.hosts, starts):
            _o, err = proc.communicate(timeout=300)
            if proc.returncode:
                raise LabError("start on %s: %s" % (host.name, err.strip()))
        mark("start")
        # 6. endpoint health of every member, until all are healthy
        endpoints = ",".join(self.hv(h)["etcd_client_url"] for h in self.hosts)
        deadline = time.monotonic() + 180
        while True:
            proc = self.ssh(winner, "%s/etcdctl --endpoints %s %s --command-timeout=5s endpoint health" % (
                bin_dir, endpoints, self.etcd_tls_args()), check=False)
            if proc.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise LabError("endpoint health: %s %s" % (proc.stdout, proc.stderr))
            time.sleep(1)
        mark("health")
        return {"seconds": round(time.monotonic() - t0, 3), "rc": 0, "phases": phases, "winner": winner.name,
                "db": {k: {"mtime": v[0], "bytes": v[1]} for k, v in dbs.items()}}


def summarize_etcd(records):
    """The harness's tables, and what each side kept of the keys written before the kill."""
    lines = [summarize(records), "", "This run's mid-write keys on every member after the run (runs that recovered; "
             "held = the run's keys a member holds, acknowledged or not; the same on every member):", "",
             "| config | kind | runs | acknowledged, median (min-max) | held after, median (min-max) | "
             "acknowledged kept, median (min-max) | acknowledged lost, per run |", "|---|---|---:|---:|---:|---:|---|"]
    for rec in records:
        for kind in ("playbook", "manual"):
            runs = [r for r in rec["runs"] if r["kind"] == kind and r["rc"] == 0 and "acked" in r["verify"]]
            if not runs:
                continue
            acked = stats([r["verify"]["acked"] for r in runs])
            held = stats([min(r["verify"]["run_keys_held"].values()) for r in runs])
            kept = stats([r["verify"]["acked_kept"] for r in runs])
            lines.append("| %s | %s | %d | %s | %s | %s | %s |" % (
                rec["config"], kind, len(runs), fmt_int(acked), fmt_int(held), fmt_int(kept),
                ", ".join(str(r["verify"]["acked_lost"]) for r in runs)))
    return "\n".join(lines)


def fmt_int(stat):
    return "%d (%d-%d)" % (stat["median"], stat["min"], stat["max"])


if __name__ == "__main__":
    sys.exit(main(bench_class=EtcdBench, description=__doc__))
