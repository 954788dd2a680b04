"""Time playbooks/recover.yml against the manual dqlite recovery, on the same lab, alternately.

For each configuration (lab3: 3 members at the lab's size; lab7: 7 members; big3: 3 members with
~1 GiB data directories) the script brings up ONE lab, then runs A B A B ...:

  A  ansible-playbook playbooks/recover.yml -e recover_confirm=yes   (go-dqlite-app flavor, the
     lab's inventory, as tests/integration runs it), with a new recover_state_dir and
     recover_controller_dir per run, so no earlier journal is seen;
  B  the manual procedure of the go-dqlite `.reconfigure` help and the MicroK8s "recover from lost
     quorum" page, over plain ssh (the lab's key and ssh options), one host after another: stop,
     tar backup of every member's data dir, list the raft files and read info.yaml, pick the member
     whose closed segment names end highest, write cluster.yaml on it, run `.reconfigure` once
     there, tar its snapshots, .meta, closed segments and cluster.yaml, scp that to the workstation
     and on to each other member, move their raft files aside (info.yaml and metadata1/2 kept:
     without its metadata the go-dqlite bootstrap node fails in raft_bootstrap at start), untar,
     start all, poll `.cluster` on the chosen member until it lists every member.

Before every run (either kind) the cluster is broken afresh: a writer on h1 puts keys and logs
each acknowledged one, and after --midwrite-seconds every member is powered off (SIGKILL, the
lab's power_off). The timer covers only the recovery. After every run, untimed, the script checks
that every acknowledged key (the lab's 1,000, the big keys, this run's acknowledged mid-write
keys) is readable and that `.cluster` lists every member; a run that fails this counts as failed,
not as a time, and the cluster is repaired (a member without metadata1/2 gets its own back from
its moved-aside folder; all started) so the configuration can go on. Backups and moved-aside files
are deleted between runs (disk space), untimed.

With --profile, one more broken cluster per configuration is recovered by the playbook with the
bench_profile callback (benchmarks/callback_plugins): per-task wall times, host counts. Not counted
in the medians.

Lab: QRLAB_NAME/QRLAB_STATE/QRLAB_SUBNET from the environment, default qrbn, /var/lib/qrbn,
10.254.83.0/24. The lab is taken down on every exit. Needs root; run from the repository (or
give --repo) after `bash scripts/setup`.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("QRLAB_NAME", "qrbn")
os.environ.setdefault("QRLAB_STATE", "/var/lib/qrbn")
os.environ.setdefault("QRLAB_SUBNET", "10.254.83.0/24")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lab.core import DQLITE_DIR, Lab, LabError, expected_dqlite_voters  # noqa: E402

HERE = Path(__file__).resolve().parent
CONFIGS = {"lab3": {"hosts": 3, "big": False}, "lab7": {"hosts": 7, "big": False},
           "big3": {"hosts": 3, "big": True}}
CLOSED = re.compile(r"^(\d{16})-(\d{16})$")

# Runs inside h1 (lab.spawn): PUTs keys one by one and prints each acknowledged index at once,
# so that the keys acknowledged before the power-off are known exactly.
WRITER = r"""
import sys
sys.path.insert(0, sys.argv[1])
import qrlab_client as c
api, prefix, size = sys.argv[2], sys.argv[3], int(sys.argv[4])
i = 0
while True:
    key = "%s%06d" % (prefix, i)
    if c._dqlite_request("http://%s/%s" % (api, key), "PUT", c.value_for(key, size)) != "done":
        sys.exit(1)
    print(i, flush=True)
    i += 1
"""


def log(msg):
    print("[%s] %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


def uptime():
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


class Bench:
    """The harness and the dqlite side. An engine's sibling script (recover_vs_manual_etcd.py)
    subclasses it and replaces the engine parts: CONFIGS, up, break_cluster, verify, repair,
    cleanup, final_check, run_manual, inventory_file and playbook_vars."""

    CONFIGS = CONFIGS
    ENGINE = "dqlite"

    def __init__(self, args):
        self.args = args
        self.lab = Lab()
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.inventory = None
        self.hosts = []
        self.acked = {}  # prefix -> (count, size): every key acknowledged so far in this lab
        self.seq = 0
        self.manual_log = None

    @staticmethod
    def report(records):
        """The tables of a list of configuration records."""
        return summarize(records)

    @staticmethod
    def add_arguments(parser):
        """This engine's own options."""
        parser.add_argument("--big-mib", type=int, default=1024, help="target size of a member's data dir for big3")
        parser.add_argument("--big-keys", type=int, default=64)
        parser.add_argument("--big-value", type=int, default=256 * 1024, help="bytes per value for big3's load")

    # ------------------------------------------------------------------ lab
    def up(self, config):
        spec = self.CONFIGS[config]
        log("lab up: %d hosts" % spec["hosts"])
        self.hosts = self.lab.up(spec["hosts"], keys=1000)
        self.acked = {"key": (1000, 32)}
        import yaml
        self.inventory = yaml.safe_load(self.lab.inventory_path.read_text())
        if spec["big"]:
            self.load_big()

    def datadir_bytes(self, host):
        root = host.real_path(host.dqlite_data_dir)
        return sum(p.stat().st_size for p in root.iterdir() if p.is_file())

    def load_big(self):
        """Overwrite the same --big-keys keys of --big-value bytes until h1's data directory holds
        --big-mib MiB: raft keeps the trailing entries (and two snapshots), so the directory grows
        while the database stays small."""
        h1 = self.hosts[0]
        want = self.args.big_mib * 2 ** 20
        t0 = time.monotonic()
        passes = 0
        while self.datadir_bytes(h1) < want:
            self.lab.churn(h1, "dqlite", self.args.big_keys, self.args.big_value, prefix="big")
            passes += 1
            if time.monotonic() - t0 > 1800:
                raise LabError("data directory did not reach %d MiB in 30 min" % self.args.big_mib)
        self.acked["big"] = (self.args.big_keys, self.args.big_value)
        sizes = {h.name: self.datadir_bytes(h) for h in self.hosts}
        log("big load: %d passes of %d x %d B in %.0f s; data dirs %s" % (
            passes, self.args.big_keys, self.args.big_value, time.monotonic() - t0,
            {k: "%.0f MiB" % (v / 2 ** 20) for k, v in sizes.items()}))

    def break_cluster(self, tag):
        """A fresh quorum loss: every member powered off while h1's writer is writing."""
        h1 = self.hosts[0]
        prefix = "mw%s" % tag
        writer = self.lab.spawn(h1, ["/usr/bin/python3", "-c", WRITER, str(self.lab.state / "bin"), h1.dqlite_api,
                                     prefix, str(self.args.midwrite_size)], stdout=subprocess.PIPE, text=True)
        try:
            time.sleep(self.args.midwrite_seconds)
            self.lab.power_off("dqlite")
        finally:
            writer.kill()
            out = writer.communicate(timeout=30)[0]
        done = [int(x) for x in out.split()]
        count = max(done) + 1 if done else 0
        if count:
            self.acked[prefix] = (count, self.args.midwrite_size)
        return prefix, count

    def sizes(self):
        return {h.name: self.datadir_bytes(h) for h in self.hosts}

    def cleanup(self, run_id):
        """Untimed: delete this run's backups, moved-aside files and controller copies."""
        for host in self.hosts:
            parent = host.real_path(DQLITE_DIR)
            for entry in parent.iterdir():
                if ".replaced-" in entry.name or ".aside-" in entry.name or entry.name.endswith(".quarantine"):
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
            shutil.rmtree(host.real_path("/var/backups/qrbench"), ignore_errors=True)
        shutil.rmtree(self.out / "ctl" / run_id, ignore_errors=True)
        shutil.rmtree(self.out / "manual" / run_id, ignore_errors=True)

    def verify(self, kind, prefix, timeout=120):
        """Untimed: every member listed by .cluster, every acknowledged key readable."""
        problems = []
        addresses = sorted(h.dqlite_address for h in self.hosts)
        deadline = time.monotonic() + timeout
        nodes = []
        while time.monotonic() < deadline:
            nodes = []
            for host in self.hosts:
                nodes = self.nodes(host)
                if nodes:
                    break
            if sorted(n["Address"] for n in nodes) == addresses and any(n["Role"] == "voter" for n in nodes):
                break
            time.sleep(1)
        else:
            problems.append(".cluster: %s" % nodes)
        for host in self.hosts:
            if self.lab.service(host, "dqlite", "status", check=False).returncode != 0:
                problems.append("%s: dqlite not running" % host.name)
        checked = {}
        wanted = ["key", prefix] + [p for p in self.acked if p == "big"]
        for p in wanted:
            if p not in self.acked:
                continue
            count, size = self.acked[p]
            result = self.lab.check_keys(self.hosts[0], "dqlite", count, p, size=size)
            checked[p] = count
            if not result.get("ok"):
                problems.append("%s keys: %s" % (p, result))
        return {"ok": not problems, "problems": problems, "checked": checked,
                "roles": sorted((n["Address"], n["Role"]) for n in nodes)}

    def repair(self):
        """Untimed, after a failed run only: get the lab's cluster healthy again so the
        configuration can go on. A member left without metadata1/2 (the playbook's restore moves
        them aside with the other files; on the go-dqlite bootstrap node h1 the start then fails in
        raft_bootstrap) gets its own copies back from its newest moved-aside folder; then every
        member is started. Returns what was done; raises LabError if the cluster stays down."""
        done = []
        for host in self.hosts:
            data = host.real_path(host.dqlite_data_dir)
            if (data / "metadata1").exists() or (data / "metadata2").exists():
                continue
            asides = sorted((p for p in data.parent.iterdir() if p.name.startswith(data.name + ".")
                             and p.is_dir() and ((p / "metadata1").exists() or (p / "metadata2").exists())),
                            key=lambda p: p.stat().st_mtime)
            if asides:
                for name in ("metadata1", "metadata2"):
                    if (asides[-1] / name).exists():
                        shutil.copy2(asides[-1] / name, data / name)
                done.append("%s: metadata1/2 back from %s" % (host.name, asides[-1].name))
        self.lab.start_all(self.hosts, "dqlite")
        done.append("started every member")
        self.lab._wait(lambda: sorted(n["Address"] for n in self.nodes(self.hosts[0]))
                       == sorted(h.dqlite_address for h in self.hosts), 120, "every member in .cluster")
        return done

    def safe_verify(self, kind, prefix):
        try:
            return self.verify(kind, prefix)
        except (LabError, subprocess.TimeoutExpired, ValueError, IndexError) as exc:
            return {"ok": False, "problems": ["verify raised %s" % str(exc)[-1000:]], "checked": {}, "roles": []}

    def nodes(self, host):
        try:
            return self.lab.dqlite_nodes(host)
        except subprocess.TimeoutExpired:
            return []

    def final_check(self):
        """Every key acknowledged over the whole configuration, once at its end."""
        bad = {}
        for p, (count, size) in sorted(self.acked.items()):
            result = self.lab.check_keys(self.hosts[0], "dqlite", count, p, size=size)
            if not result.get("ok"):
                bad[p] = result
        return {"ok": not bad, "prefixes": len(self.acked), "keys": sum(count for count, _size in self.acked.values()), "bad": bad}

    # -------------------------------------------------------------- playbook
    def ansible_env(self, profile_out=None):
        env = dict(os.environ)
        env.update(ANSIBLE_COLLECTIONS_PATH=str(self.args.collections), ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
                   ANSIBLE_FORCE_COLOR="0", ANSIBLE_NOCOLOR="1", ANSIBLE_STDOUT_CALLBACK="default")
        if profile_out:
            env.update(ANSIBLE_CALLBACK_PLUGINS=str(HERE / "callback_plugins"),
                       ANSIBLE_CALLBACKS_ENABLED="bench_profile", BENCH_PROFILE_OUT=str(profile_out))
        return env

    def inventory_file(self):
        return self.lab.inventory_path

    def playbook_vars(self):
        """Extra -e arguments of this engine's playbook runs."""
        return []

    def label(self, config):
        """The configuration's name in run ids and result files."""
        return config

    def playbook_argv(self, run_id):
        return [self.args.ansible_playbook, "-i", str(self.inventory_file()), self.args.playbook,
                *self.playbook_vars(), "-e", "recover_confirm=yes",
                "-e", "recover_state_dir=/var/backups/qrbench/%s" % run_id,
                "-e", "recover_controller_dir=%s" % (self.out / "ctl" / run_id)]

    def run_playbook(self, run_id, profile_out=None):
        argv = self.playbook_argv(run_id)
        t0 = time.monotonic()
        proc = subprocess.run(argv, capture_output=True, text=True, env=self.ansible_env(profile_out), cwd=REPO,
                              timeout=self.args.run_timeout, check=False)
        seconds = time.monotonic() - t0
        logfile = self.out / ("%s.log" % run_id)
        logfile.write_text("$ %s\n%s\n--- stderr ---\n%s" % (shlex.join(argv), proc.stdout, proc.stderr))
        winner = re.search(r'"winner: (\w+)"', proc.stdout)
        return {"seconds": round(seconds, 3), "rc": proc.returncode, "log": str(logfile),
                "winner": winner.group(1) if winner else None,
                "tasks_started": proc.stdout.count("\nTASK [")}

    # ---------------------------------------------------------------- manual
    def hv(self, host):
        return self.inventory["all"]["hosts"][host.name]

    def note(self, text):
        if self.manual_log is not None:
            self.manual_log.write(text if text.endswith("\n") else text + "\n")
            self.manual_log.flush()

    def ssh(self, host, command, input=None, check=True):
        """One ssh command; an ssh-level failure (rc 255: connection, control master) is retried
        once, as an operator retypes it; the command's own failures are not."""
        argv = ["ssh", *self.lab.ssh_args(), "root@" + host.address, command]
        for attempt in (1, 2):
            t = time.monotonic()
            proc = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=600, check=False)
            self.note("[%.2f s] %s$ %s\n-> rc %d\n%s%s" % (
                time.monotonic() - t, host.name, command, proc.returncode, proc.stdout[-3000:], proc.stderr[-3000:]))
            if proc.returncode != 255:
                break
        if check and proc.returncode:
            raise LabError("ssh %s %r: rc %d: %s" % (
                host.name, command, proc.returncode, (proc.stderr or proc.stdout).strip()[-2000:]))
        return proc

    def scp(self, src, dst):
        for attempt in (1, 2):
            t = time.monotonic()
            proc = subprocess.run(["scp", "-q", *self.lab.ssh_args(), src, dst], capture_output=True, text=True,
                                  timeout=600, check=False)
            self.note("[%.2f s] scp %s %s -> rc %d %s" % (time.monotonic() - t, src, dst, proc.returncode, proc.stderr))
            if proc.returncode == 0:
                break
        if proc.returncode:
            raise LabError("scp %s %s: %s" % (src, dst, proc.stderr.strip()))

    def run_manual(self, run_id):
        """The operator's procedure, timed phase by phase. Returns seconds, phases and the choice."""
        svc = self.inventory["all"]["vars"]["qrlab_service"]
        backup = "/var/backups/qrbench/%s" % run_id
        phases = {}
        t0 = last = time.monotonic()

        def mark(name):
            nonlocal last
            now = time.monotonic()
            phases[name] = round(now - last, 3)
            last = now

        # 1. stop dqlite everywhere (it is down after the power-off; the operator makes sure)
        for host in self.hosts:
            self.ssh(host, "%s dqlite stop; %s dqlite status; test $? -eq 3" % (svc, svc))
        mark("stop")
        # 2. back up every member's data dir, list its raft files, read its info.yaml
        listing, info = {}, {}
        for host in self.hosts:
            d = self.hv(host)["dqlite_data_dir"]
            out = self.ssh(host, "set -e; mkdir -p %s; tar -cf %s/backend.tar -C %s %s; ls -1 %s; echo ====; cat %s/info.yaml"
                           % (backup, backup, shlex.quote(os.path.dirname(d)), shlex.quote(os.path.basename(d)),
                              shlex.quote(d), shlex.quote(d))).stdout
            names, yaml_text = out.split("====\n", 1)
            listing[host.name] = names.split()
            info[host.name] = dict(line.split(": ", 1) for line in yaml_text.splitlines() if ": " in line)
        mark("backup+inspect")
        # 3. choose: the highest end index among the closed segment names (ties: first in the inventory)
        ends = {h.name: max([int(m.group(2)) for m in map(CLOSED.match, listing[h.name]) if m] or [0])
                for h in self.hosts}
        top = max(ends.values())
        winner = next(h for h in self.hosts if ends[h.name] == top)
        wd = self.hv(winner)["dqlite_data_dir"]
        # 4. cluster.yaml: every member by its info.yaml; the app's role targets (3 voters, then
        #    up to 3 stand-bys, then spares)
        voters = expected_dqlite_voters(len(self.hosts))
        lines = []
        # the chosen member first, so it stays a voter
        for i, host in enumerate([winner] + [h for h in self.hosts if h is not winner]):
            role = 0 if i < voters else 1 if i < voters + 3 else 2
            lines += ["- Address: %s" % info[host.name]["Address"], "  ID: %s" % info[host.name]["ID"],
                      "  Role: %d" % role]
        cluster_yaml = "\n".join(lines) + "\n"
        self.ssh(winner, "cat > %s/cluster.yaml" % shlex.quote(wd), input=cluster_yaml)
        mark("choose+cluster.yaml")
        # 5. .reconfigure ONCE on the chosen member, then list what it holds now
        out = self.ssh(winner, "set -e; dqlite -s %s demo %s; ls -1 %s" % (
            self.hv(winner)["dqlite_address"], shlex.quote(".reconfigure %s %s/cluster.yaml" % (wd, wd)),
            shlex.quote(wd))).stdout
        after = out.split()
        files = [n for n in after if n.startswith("snapshot-") or CLOSED.match(n) or n == "cluster.yaml"]
        mark("reconfigure")
        # 6. its raft files (snapshots, .meta, closed segments, cluster.yaml) to every other member
        self.ssh(winner, "cd %s && tar -cf %s/raft.tar %s" % (shlex.quote(wd), backup, " ".join(files)))
        local = self.out / "manual" / run_id
        local.mkdir(parents=True, exist_ok=True)
        self.scp("root@%s:%s/raft.tar" % (winner.address, backup), str(local / "raft.tar"))
        for host in self.hosts:
            if host is winner:
                continue
            d = shlex.quote(self.hv(host)["dqlite_data_dir"])
            self.scp(str(local / "raft.tar"), "root@%s:%s/raft.tar" % (host.address, backup))
            # the files .reconfigure's help names (snapshots, .meta, segments, open-*, cluster.yaml);
            # info.yaml AND metadata1/2 stay: without its metadata, the go-dqlite bootstrap node
            # (ID 3297041220608546238, h1 here) calls raft_bootstrap at start, which fails on the
            # copied 1-1 segment ("start node: raft_bootstrap():"), seen when h1 was not chosen
            self.ssh(host, "set -e; mkdir %s.aside-%s; cd %s; find . -maxdepth 1 -type f \\( -name 'snapshot-*' -o -name '[0-9]*-[0-9]*' -o -name 'open-*'"
                           " -o -name cluster.yaml \\) -exec mv -t %s.aside-%s {} +;"
                           " tar -xf %s/raft.tar -C %s; ls -1 %s" % (d, run_id, d, d, run_id, backup, d, d))
        mark("copy")
        # 7. start all (each start waits for its member: started side by side, as in several terminals)
        starts = [subprocess.Popen(["ssh", *self.lab.ssh_args(), "root@" + h.address, "%s dqlite start" % svc],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for h in self.hosts]
        for host, proc in zip(self.hosts, starts):
            _o, err = proc.communicate(timeout=300)
            if proc.returncode:
                raise LabError("start on %s: %s" % (host.name, err.strip()))
        mark("start")
        # 8. .cluster on the chosen member until it lists every member
        want = sorted(h.dqlite_address for h in self.hosts)
        deadline = time.monotonic() + 180
        while True:
            proc = self.ssh(winner, "timeout 15 dqlite -s %s -f json demo .cluster" % self.hv(winner)["dqlite_address"], check=False)
            try:
                seen = sorted(n["Address"] for n in json.loads(proc.stdout))
            except (ValueError, TypeError, KeyError):
                seen = []
            if seen == want:
                break
            if time.monotonic() > deadline:
                raise LabError(".cluster never listed every member: %s %s" % (proc.stdout, proc.stderr))
            time.sleep(1)
        mark("cluster")
        return {"seconds": round(time.monotonic() - t0, 3), "rc": 0, "phases": phases, "winner": winner.name,
                "closed_segment_ends": ends}

    # ------------------------------------------------------------------ runs
    def one(self, config, kind, i):
        self.seq += 1
        run_id = "%s-%02d-%s" % (config, i, kind)
        prefix, acked = self.break_cluster("%s%02d%s" % (config, i, kind[0]))
        sizes = self.sizes()
        load = os.getloadavg()[0]
        log("%s: broken (%d mid-write keys acknowledged; data dirs %.0f-%.0f MiB; load %.2f)" % (
            run_id, acked, min(sizes.values()) / 2 ** 20, max(sizes.values()) / 2 ** 20, load))
        try:
            if kind == "playbook":
                result = self.run_playbook(run_id)
            else:
                logfile = self.out / ("%s.log" % run_id)
                with open(logfile, "w") as self.manual_log:
                    try:
                        result = self.run_manual(run_id)
                    finally:
                        self.manual_log = None
                result["log"] = str(logfile)
        except (LabError, subprocess.TimeoutExpired) as exc:
            result = {"seconds": None, "rc": -1, "error": str(exc)[-3000:]}
            log("%s: %s" % (run_id, result["error"][-500:]))
        result.update(kind=kind, config=config, run=i, run_id=run_id, midwrite_acked=acked, load1=load,
                      datadir_mib={k: round(v / 2 ** 20, 1) for k, v in sizes.items()})
        result["verify"] = self.safe_verify(kind, prefix)
        result["ok"] = result["rc"] == 0 and result["verify"]["ok"]
        log("%s: %s %.1f s, winner %s, verify %s" % (
            run_id, "OK" if result["ok"] else "FAILED", result["seconds"] or -1, result.get("winner"),
            "ok" if result["verify"]["ok"] else result["verify"]["problems"]))
        if not result["ok"]:
            try:
                result["repair"] = self.repair()
                result["verify_after_repair"] = self.safe_verify(kind, prefix)
            except (LabError, subprocess.TimeoutExpired) as exc:
                result["repair"] = ["failed: %s" % str(exc)[-1000:]]
            log("%s: repair: %s; keys after it: %s" % (
                run_id, result["repair"], result.get("verify_after_repair", {}).get("ok")))
        if result["ok"] or not self.args.keep_failed:
            self.cleanup(run_id)
        return result

    def profile(self, config):
        run_id = "%s-profile" % config
        prefix, acked = self.break_cluster("%sprof" % config)
        out = self.out / ("%s.json" % run_id)
        result = self.run_playbook(run_id, profile_out=out)
        result["verify"] = self.safe_verify("playbook", prefix)
        result["ok"] = result["rc"] == 0 and result["verify"]["ok"]
        try:
            result["profile"] = json.loads(out.read_text())
        except (OSError, ValueError):
            result["profile"] = None
        if not result["ok"]:
            try:
                result["repair"] = self.repair()
                result["verify_after_repair"] = self.safe_verify("playbook", prefix)
            except (LabError, subprocess.TimeoutExpired) as exc:
                result["repair"] = ["failed: %s" % str(exc)[-1000:]]
            log("%s: repair: %s" % (run_id, result["repair"]))
        self.cleanup(run_id)
        log("%s: %s %.1f s" % (run_id, "OK" if result["ok"] else "FAILED", result["seconds"]))
        return result

    def config(self, config, runs):
        name = self.label(config)
        record = {"config": name, "hosts": self.CONFIGS[config]["hosts"], "uptime_before": uptime(), "runs": []}
        t0 = time.monotonic()
        try:
            self.up(config)
            record["datadir_mib_start"] = {k: round(v / 2 ** 20, 1) for k, v in self.sizes().items()}
            for i in range(runs):
                for kind in ("playbook", "manual"):
                    result = self.one(name, kind, i)
                    record["runs"].append(result)
                    self.save(record)
                    if not result["ok"] and self.args.stop_on_failure and not result.get("verify_after_repair", {}).get("ok"):
                        raise LabError("%s failed; stopping this configuration" % result["run_id"])
            if self.args.profile:
                record["profile"] = self.profile(name)
            if all(self.lab.service(h, self.ENGINE, "status", check=False).returncode == 0 for h in self.hosts):
                record["final_check"] = self.final_check()
            else:
                record["final_check"] = {"ok": False, "skipped": "a member is not running"}
        except (LabError, subprocess.TimeoutExpired) as exc:
            record["error"] = str(exc)[-3000:]
            log("%s: %s" % (config, record["error"]))
        finally:
            record["uptime_after"] = uptime()
            record["wall_seconds"] = round(time.monotonic() - t0, 1)
            self.save(record)
        return record

    def save(self, record):
        (self.out / ("%s.json" % record["config"])).write_text(json.dumps(record, indent=1))


# ------------------------------------------------------------------- report
def stats(values):
    return {"n": len(values), "median": statistics.median(values), "min": min(values), "max": max(values)} if values else None


def summarize(records):
    lines = ["| config | members | playbook median (min-max) s | manual median (min-max) s | playbook/manual | n (A/B) | failed |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    medians = {}
    for rec in records:
        ok = [r for r in rec["runs"] if r["ok"]]
        a = stats([r["seconds"] for r in ok if r["kind"] == "playbook"])
        b = stats([r["seconds"] for r in ok if r["kind"] == "manual"])
        failed = [r["run_id"] for r in rec["runs"] if not r["ok"]]
        medians[rec["config"]] = a["median"] if a else None
        # per-pair ratios (each playbook run over the manual run right after it)
        pairs = {}
        for r in ok:
            pairs.setdefault(r["run"], {})[r["kind"]] = r["seconds"]
        ratios = [p["playbook"] / p["manual"] for p in pairs.values() if len(p) == 2]

        def fmt(s):
            return "%.1f (%.1f-%.1f)" % (s["median"], s["min"], s["max"]) if s else "-"
        ratio = "%.2f" % (a["median"] / b["median"]) if a and b else "-"
        if ratios:
            ratio += " (pairs %.2f-%.2f)" % (min(ratios), max(ratios))
        lines.append("| %s | %d | %s | %s | %s | %s/%s | %s |" % (
            rec["config"], rec["hosts"], fmt(a), fmt(b), ratio, a["n"] if a else 0, b["n"] if b else 0,
            ", ".join(failed) or "0"))
    if medians.get("lab7") and medians.get("lab3"):
        lines.append("")
        lines.append("7 vs 3 members, playbook medians: %.1f / %.1f s = %.2f"
                     % (medians["lab7"], medians["lab3"], medians["lab7"] / medians["lab3"]))
    for rec in records:
        manual = [r for r in rec["runs"] if r["ok"] and r["kind"] == "manual"]
        if manual:
            phases = {k: statistics.median(r["phases"][k] for r in manual) for k in manual[0]["phases"]}
            lines.append("")
            lines.append("%s manual phases (median s): %s" % (rec["config"], ", ".join("%s %.1f" % kv for kv in phases.items())))
        prof = (rec.get("profile") or {}).get("profile")
        if prof:
            tasks = prof["tasks"]
            ran = sum(t["ok"] + t["failed"] for t in tasks)
            lines.append("")
            lines.append("%s profile run: %.1f s, %d tasks started (%d with a host that ran, %d host-task executions, "
                         "%d skipped host-tasks); slowest:" % (
                             rec["config"], prof["total_seconds"], len(tasks), sum(1 for t in tasks if t["ok"] + t["failed"]),
                             ran, sum(t["skipped"] for t in tasks)))
            for t in sorted(tasks, key=lambda t: -t["seconds"])[:12]:
                lines.append("  %6.2f s  %s (%s%s)" % (
                    t["seconds"], t["name"], t["action"], ", %d attempts" % t["attempts"] if t.get("attempts") else ""))
            lines.append("")
            lines.append("%s profile run by phase (roles/recover/tasks/main.yml; journal = the journal.yml tasks "
                         "inside the phases):" % rec["config"])
            lines.append("")
            lines.append("| phase | s | share | tasks | of which journal s |")
            lines.append("|---|---:|---:|---:|---:|")
            for phase, row in profile_phases(tasks).items():
                lines.append("| %s | %.1f | %.0f%% | %d | %.1f |" % (
                    phase, row["seconds"], 100 * row["seconds"] / prof["total_seconds"], row["tasks"], row["journal"]))
    return "\n".join(lines)


# task files that are steps inside a phase, not phases (their time goes to the phase they run in)
HELPER_FILES = {"journal", "wait_job", "service", "ask_cluster", "elect", "show_plan"}


def task_file(task):
    """roles/recover/tasks/etcd/restore.yml:5 -> "restore"; main.yml -> "main"; a playbook's own
    tasks (check_group.yml, the role's argument validation in recover.yml) -> "playbook"."""
    path = task["path"].rsplit(":", 1)[0]
    if "/roles/recover/tasks/" not in path:
        return "playbook"
    return Path(path).stem


def profile_phases(tasks):
    """Wall seconds per phase of the role, in run order. A task of main.yml (the include that
    opens a phase) counts to the phase that follows it, a helper (journal, waits, service
    commands) to the phase it runs in, the playbook's own first tasks to validate."""
    files = [task_file(t) for t in tasks]
    phases = [None if f in HELPER_FILES or f == "main" else ("validate" if f == "playbook" else f) for f in files]
    for i in reversed(range(len(tasks))):  # an opening main.yml task: the next phase
        if files[i] == "main":
            phases[i] = next((p for p in phases[i + 1:] if p), "report")
    current = "validate"
    for i, phase in enumerate(phases):  # a helper: the phase it runs in
        current = phase or current
        phases[i] = current
    table = {}
    for task, file_name, phase in zip(tasks, files, phases):
        row = table.setdefault(phase, {"seconds": 0.0, "tasks": 0, "journal": 0.0})
        row["seconds"] += task["seconds"]
        row["tasks"] += 1
        if file_name == "journal":
            row["journal"] += task["seconds"]
    return table


def main(argv=None, bench_class=Bench, description=__doc__):
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collections", default=str(REPO / "build" / "collections"),
                        help="ANSIBLE_COLLECTIONS_PATH holding quorum.recovery (default: ./build/collections)")
    parser.add_argument("--playbook", default="playbooks/recover.yml", help="relative to the repository")
    parser.add_argument("--ansible-playbook", default=str(Path(sys.executable).parent / "ansible-playbook")
                        if (Path(sys.executable).parent / "ansible-playbook").exists() else "ansible-playbook")
    parser.add_argument("--configs", nargs="+", choices=sorted(bench_class.CONFIGS), default=list(bench_class.CONFIGS))
    parser.add_argument("--runs", type=int, default=5, help="runs of EACH kind per configuration")
    parser.add_argument("--runs-big", type=int, help="runs of each kind for the big configuration (default: --runs)")
    bench_class.add_arguments(parser)
    parser.add_argument("--midwrite-seconds", type=float, default=2.0)
    parser.add_argument("--midwrite-size", type=int, default=200)
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True,
                        help="one extra profiled playbook run per configuration")
    parser.add_argument("--run-timeout", type=int, default=1800)
    parser.add_argument("--stop-on-failure", action=argparse.BooleanOptionalAction, default=True,
                        help="end a configuration at a failed run that the repair cannot bring back")
    parser.add_argument("--keep-failed", action="store_true", help="keep a failed run's backups and aside files")
    parser.add_argument("--out", default="/tmp/qrbench-%s" % time.strftime("%Y%m%dT%H%M%S"),
                        help="results (one JSON per configuration) and playbook logs")
    parser.add_argument("--summarize", nargs="+", metavar="JSON", help="only print the tables of earlier results")
    args = parser.parse_args(argv)
    if args.summarize:
        print(bench_class.report([json.loads(Path(p).read_text()) for p in args.summarize]))
        return 0
    args.collections = str(Path(args.collections).resolve())
    if not (Path(args.collections) / "ansible_collections" / "quorum" / "recovery").is_dir():
        parser.error("no quorum.recovery under %s (run scripts/setup)" % args.collections)

    def on_term(signum, _frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)

    bench = bench_class(args)
    log("out: %s; collections: %s; lab %s %s %s; %s" % (args.out, args.collections, os.environ["QRLAB_NAME"],
                                                        os.environ["QRLAB_STATE"], os.environ["QRLAB_SUBNET"], uptime()))
    records = []
    try:
        for config in args.configs:
            runs = args.runs_big if bench_class.CONFIGS[config]["big"] and args.runs_big else args.runs
            records.append(bench.config(config, runs))
            print(bench_class.report(records), flush=True)
    finally:
        log("lab down")
        bench.lab.down()
    (Path(args.out) / "summary.md").write_text(bench_class.report(records) + "\n")
    return 0 if all("error" not in r for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
