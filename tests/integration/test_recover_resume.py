"""playbooks/recover.yml killed with SIGKILL after every task in turn, and re-run: it converges,
for dqlite and for etcd (parametrized by engine; what only an engine knows is a small class each:
how the chain breaks its cluster, what it checks after a completed recovery, and its marks).

How: tests/callback/kill_at_task.py (enabled only here) SIGKILLs ansible-playbook itself when the
task after the target starts, i.e. once the target task has finished on every host. A baseline
run of a fresh recovery lists its tasks (T of them, include headers and per-host meta tasks
counted); kill point K is "right after task K of that list", named by (task name, occurrence),
so it means the same place in a re-run, whose numbering shifts (a resumed run plans from the
journal and skips the stop and the rebuild once the members are starting).

The kill points form a chain, which keeps the cost to one partial run per point: the run killed at
K is followed by a re-run killed at K+1, and so on. Each run must end either killed at its point
(exit -9) or complete (exit 0); any failure fails the test. A complete run ends the chain: the
cluster is checked (below), broken again, and the point the completed run never reached is taken
again by a fresh run. Every recovery of the chain starts from a finished journal (a first
recovery is made before the baseline).

dqlite (Dqlite): broken by writing 20 keys, then a power-off of every member. After each completed
recovery:
- the reconfigure segment the journaled plan names (N-N) exists on every member, and above the
  highest index any member held before the recovery there is exactly ONE term-1 CHANGE entry
  on every member, at N (a second reconfigure, or one on another member, would add another);
- every key written so far (the lab's 1,000, and 20 more per break) reads back on every member.

etcd (Etcd): broken by writing 20 keys, then a power-off of every member (SIGKILL within a
millisecond) while two writers per host put keys for a second (lab.power_off_mid_writes). After
each completed recovery:
- the journaled plan replayed the most advanced member (its last index is the highest any member
  held before the recovery);
- the winner's run folder holds ONE source.db, whose sha256 its manifest (source.db.json) names,
  and etcd_replay reported changed=true exactly once over every run since the break (counted in
  the runs' logs: a re-run finds its own snapshot and leaves it);
- every member answers `endpoint health` true, all answer with ONE cluster ID, and every key
  written so far (the lab's 1,000, 20 more per break, and every key the writers were told was
  stored) reads back on every member (serializable: from its own copy).

microk8s (MicroK8s): the dqlite chain on MicroK8s-shaped members (lab --dqlite-shape microk8s),
recover_flavor=microk8s as shipped; its spread (every 40th task and the marks) runs in the full
tier only.

Kill points: [spread] (CI, scripts/test). dqlite: every 25th task, and right after and one past
the safety archive, the reconfigure, its journal record, the restore, the 'starting' record and
the winner's start. etcd: every 40th task, and right after the safety archives, the replay, its
journal record ('source-built'), the distribution's record, the restore, the 'starting' record
and the wait for the start commands. [full] (marker `full`: only scripts/test-full runs it, after
[spread] of the same engine on the same lab, so it starts from the cluster [spread] recovered)
takes every K = 1..T.

Measured, dqlite, on the lab (3 hosts, 1,000 keys, 2026-11-21):
a full uninterrupted recovery 54-72 s (72 s when it starts from a finished journal: the
already-done probe of the dead cluster waits out its 15 s timeout); T = 106 tasks (with the
playbook's group check);
an earlier, wider spread (every 10th task + 10 marks, 30 points): 37 runs, 1053 s, passed;
the full sweep (then QR_FULL_KILL_SWEEP=1, now [full]): 106 of 106 kill points killed and
converged, 118 runs, 8 chain completions, 11 recoveries checked, 2156 s (pytest 2172 s with the
lab's up and down), passed.
Since then the task list grew to T = 113 (progress of the long steps), and a recovery that starts
from a finished journal first lets the old cluster settle for up to 60 s (already_done.yml): on a
broken cluster every run of the chain now begins with that minute. The CI spread (18 points)
takes about 15 minutes; the full sweep, tried again on 2026-11-22, made 40 runs in 30 minutes
(77 s a run, each killed where planned; none of those early points reached a completed run, where
convergence is checked): the whole sweep would take hours now, and was stopped.
Measured, etcd 3.4, on the lab (3 hosts, 1,000 keys, 2 cores shared with two other labs, load
about 1.5 then), 2026-12-02: T = 120 tasks (from a finished journal); the CI spread took 10 points
(1, 41, 67, 74, 77, 81, 86, 91, 98, 104): 15 runs, every point killed where planned, 1 chain
completion, 4 recoveries checked, passed, 430 s (449 s with the lab's up and down; a whole
uninterrupted recovery 57 s). The full etcd sweep (120 points, about an hour at that speed) has
not been run yet.
Each run's log is kept in the test's tmp_path (run-NNN.log); the summary goes to
build/kill-sweep-{spread,full}.json (dqlite) and build/kill-sweep-etcd-{spread,full}.json.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from conftest import BIN, REPO, ansible_env
from lab.base import ETCD_DIR
from ansible_collections.quorum.recovery.plugins.module_utils import dqlite_datadir, dqlite_format, etcd_datadir

CALLBACKS = REPO / "tests" / "callback"
BACKUPS = "/var/backups/quorum-recovery"
CHANGE = 3
KEYS_PER_BREAK = 20


class Dqlite:
    """How the chain breaks a dqlite cluster, and what it checks after a completed recovery."""

    name = "dqlite"
    journal = "journal.json"  # the role keeps one journal per engine
    # CI's spread: every Nth task, and right after (and one past) each step that changes the cluster
    # or records that it did; a mark is (part of the task name, None or part of the name of a task
    # that must have come before)
    every, past = 25, (0, 1)
    marks = (("Safety archive", None), ("Reconfigure ONCE", None), ("(source-built)", None),
             ("Replace each other member", None), ("(starting)", None), ("Start the winner", None))

    def __init__(self, lab):
        self.lab = lab
        self.batches = [("key", 0, 1000)]  # (prefix, start, count) of every key written
        self.floor = None  # highest last index of any member when the current recovery began

    def inventory(self) -> list:
        return ["-i", str(self.lab.inventory_path)]

    def write_keys(self, number: int) -> None:
        """The break's keys, through the first host's member; remembered for the checks."""
        host = self.lab.hosts()[0]
        prefix = "brk%d-" % number
        self.lab.client(host, "dqlite-put", *self.lab.client_target(host, "dqlite"), "--prefix", prefix,
                        "--count", str(KEYS_PER_BREAK), "--size", "32")
        self.batches.append((prefix, 0, KEYS_PER_BREAK))

    def break_cluster(self, number: int) -> None:
        """Write more keys, then power off every dqlite member (SIGKILL)."""
        self.write_keys(number)
        self.lab.power_off("dqlite")
        self.floor = max(_inspect(h)["log"]["last_index"] for h in self.lab.hosts())

    def check_recovered(self, why: str, journal: dict, logs: list) -> None:
        """The journaled reconfigure segment (N-N) on every member, ONE term-1 CHANGE entry above the
        floor, at N, on every member; every key written so far on every member."""
        plan = journal["plan"]
        n = plan["source"]["expected_last_index"] + 1
        segment = plan["source"]["segment"]
        assert segment == "%016d-%016d" % (n, n)
        assert n == self.floor + 1, (why, "the winner was not the most advanced member", n, self.floor)
        for host in self.lab.hosts():
            path = host.real_path(host.dqlite_data_dir)
            names = os.listdir(path)
            assert segment in names, (why, host.name, sorted(names))
            changes = _term1_changes(path, above=self.floor)
            assert changes == [(n, segment)], (why, host.name, "term-1 CHANGE entries above %d" % self.floor,
                                               changes)
            for prefix, start, count in self.batches:
                result = self.lab.check_keys(host, "dqlite", count, prefix, start=start)
                assert result.get("ok"), (why, host.name, prefix, result)


class Etcd:
    """How the chain breaks an etcd cluster (power-off under writers on every host), and what it
    checks after a completed recovery."""

    name = "etcd"
    journal = "journal-etcd.json"
    every, past = 40, (0,)
    # right after the safety archives, the replay, its journal record, the distribution, the restore,
    # the 'starting' record and the start (the wait for the start commands after that record: the
    # same task waits for none in the status and stop phases before it)
    marks = (("showing its progress - safety archive", None), ("showing its progress - replay", None),
             ("(source-built)", None), ("(distributed)", None), ("showing its progress - restore", None),
             ("(starting)", None), ("Wait for every start command to finish", "(starting)"))
    # the replay runs as a background job: the wait for it reports what it changed
    REPLAY_TASK = "TASK [quorum.recovery.recover : Wait for the long step, showing its progress - replay of the winner's log]"

    def __init__(self, lab):
        self.lab = lab
        self.batches = [("key", 0, 1000)]
        self.acknowledged: set = set()  # keys the writers were told were stored, over every break
        self.top = None  # highest last index of any member when the current recovery began

    def inventory(self) -> list:
        return ["-i", str(self.lab.etcd_inventory_path), "-e", "recover_engine=etcd"]

    def break_cluster(self, number: int) -> None:
        """Write more keys, then power off every etcd member (SIGKILL) while writers on every host
        put keys: what etcd acknowledged must all come back."""
        host = self.lab.hosts()[0]
        prefix = "brk%d-" % number
        self.lab.client(host, "etcd-put", *self.lab.client_target(host, "etcd"), "--prefix", prefix,
                        "--count", str(KEYS_PER_BREAK), "--size", "32")
        self.batches.append((prefix, 0, KEYS_PER_BREAK))
        cut = self.lab.power_off_mid_writes("etcd", seconds=1.0, prefix="ack%d" % number)
        self.acknowledged |= cut["acknowledged"]
        self.top = max(etcd_datadir.inspect_datadir(str(h.real_path(ETCD_DIR)), "quick")["log"]["last_index"]
                       for h in self.lab.hosts())

    def check_recovered(self, why: str, journal: dict, logs: list) -> None:
        """The winner was the most advanced member; its run folder holds ONE source.db, the one its
        manifest names; etcd_replay changed something once over every run of this recovery; every
        member is healthy, in ONE cluster, and holds every key written so far."""
        source = journal["plan"]["source"]
        assert source["expected_last_index"] == self.top, (why, "the winner was not the most advanced member",
                                                           source, self.top)
        winner = next(h for h in self.lab.hosts() if h.name == source["host"])
        run_dir = winner.real_path("%s/%s" % (BACKUPS, journal["recovery_id"]))
        names = sorted(n for n in os.listdir(run_dir) if n.startswith("source.db"))
        assert names == ["source.db", "source.db.json"], (why, names)
        manifest = json.loads((run_dir / "source.db.json").read_text())
        assert hashlib.sha256((run_dir / "source.db").read_bytes()).hexdigest() == manifest["sha256"], why
        replays = sum(_changed_in(log, self.REPLAY_TASK) for log in logs)
        assert replays == 1, (why, "etcd_replay changed=true %d times over %s" % (replays, [p.name for p in logs]))
        clusters = set()
        for host in self.lab.hosts():
            health = self.lab.etcd_health(host)
            assert health.get("health") is True, (why, host.name, health)
            clusters.add(((self.lab.etcd_status(host) or {}).get("header") or {}).get("cluster_id"))
            for prefix, start, count in self.batches:
                result = self.lab.check_keys(host, "etcd", count, prefix, start=start)
                assert result.get("ok"), (why, host.name, prefix, result)
            missing = self.acknowledged - _etcd_keys(self.lab, host)
            assert not missing, (why, host.name, "acknowledged keys missing", sorted(missing)[:20])
        assert len(clusters) == 1 and None not in clusters, (why, clusters)


class MicroK8s(Dqlite):
    """The dqlite chain on MicroK8s-shaped members (lab/microk8s.py): recover_flavor=microk8s as
    shipped, TLS, the flat backend, database k8s; keys read back over TLS. The same break, checks
    and checks as Dqlite; a sparser spread: every 60th task, and right after the reconfigure, the
    restore of the others and the 'starting' record (the steps where a half-done run differs)."""

    every, past = 60, (0,)
    marks = (("Reconfigure ONCE", None), ("Replace each other member", None), ("(starting)", None))


class DqliteFromBackup(Dqlite):
    """The dqlite chain recovering FROM a backup (recover_from_backup=newest) on the lab with a
    backup host (h4): broken by writing 20 keys, taking a backup (playbooks/backup.yml, kept at h4
    only), then a power-off of every member and the move of every member's whole data directory
    away (kept on the lab's side). After each completed recovery: the journaled plan restored that
    backup; the reconfigure segment N-N, N = the backup's last index + 1, and exactly ONE term-1
    CHANGE entry above the backup's index, at N, on every member (the backup's files went to the
    winner only and were reconfigured once); every key written so far on every member."""

    marks = (("Archive the backup's folder", None), ("Bring the backup's files", None),
             ("Put the backup's raft files", None), ("Reconfigure ONCE", None), ("(source-built)", None),
             ("Replace each other member", None), ("(starting)", None))
    store = "/var/backups/quorum-recovery-store/dqlite/dqlite"

    def __init__(self, lab):
        super().__init__(lab)
        self.backup = None

    def inventory(self) -> list:
        return ["-i", str(self.lab.inventory_path), "-e", "recover_from_backup=newest"]

    def break_cluster(self, number: int) -> None:
        self.write_keys(number)
        store = self.lab.host("h4").real_path(self.store)
        before = {p.name for p in store.glob("*.json")} if store.is_dir() else set()
        proc = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(self.lab.inventory_path), "playbooks/backup.yml"],
                              capture_output=True, text=True, env=ansible_env(), cwd=REPO, timeout=900, check=False)
        assert proc.returncode == 0, proc.stdout[-4000:]
        new = sorted(n for n in {p.name for p in store.glob("*.json")} - before if not n.startswith("orphan-"))
        assert len(new) == 1, new
        self.backup = json.loads((store / new[0]).read_text())
        self.lab.power_off("dqlite")
        for h in self.lab.hosts():
            data = h.real_path(h.dqlite_data_dir)
            os.rename(data, "%s-lost-%d" % (data, time.time_ns()))
        self.floor = self.backup["position"]["index"]

    def check_recovered(self, why: str, journal: dict, logs: list) -> None:
        assert journal["plan"]["source"]["step"] == "backup", (why, journal["plan"]["source"])
        assert journal["plan"]["source"]["backup"] == self.backup["name"], (why, journal["plan"]["source"])
        super().check_recovered(why, journal, logs)


class Lxd:
    """LXD (the dqlite backend's lxd flavor) on the same lab: a real LXD 5.0.2 cluster beside the
    others (lab/lxd.py), brought up by the first break. Broken by a config write, then a power-off
    of every member (SIGKILL). After each completed recovery: the journaled reconfigure segment
    (N-N) on every member and ONE term-1 CHANGE entry above the highest index any member held
    before, at N, on every member (LXD's own command ran once, on one member); every config key,
    project, profile and volume written so far, read through every member's own daemon."""

    name = "lxd"
    journal = "journal-lxd.json"
    # a recovery takes 40-70 s: CI takes the first task and right after LXD's own reconfigure
    every, past = 1000, (0,)
    marks = (("Reconfigure ONCE", None),)

    def __init__(self, lab):
        self.lab = lab
        self.loaded: dict = {}
        self.floor = None

    def inventory(self) -> list:
        return ["-i", str(self.lab.lxd_inventory_path), "-e", "recover_group=lxd"]

    def _path(self, host) -> Path:
        return host.real_path("/var/lib/lxd/database/global")

    def break_cluster(self, number: int) -> None:
        hosts = self.lab.hosts()
        if not self.lab._recorded().get("lxd"):
            self.lab.add_lxd(hosts)
            self.lab.load_lxd_data(hosts[0], hosts, count=5)
        self.lab.lxc(hosts[0], "config", "set", "user.qr.brk%d" % number, "break-%d" % number)
        self.loaded = self.lab.lxd_data(hosts[0])
        self.lab.power_off("lxd")
        self.floor = max(dqlite_datadir.inspect_datadir(str(self._path(h)), "quick", identity="lxd-local-db")
                         ["log"]["last_index"] for h in hosts)

    def check_recovered(self, why: str, journal: dict, logs: list) -> None:
        plan = journal["plan"]
        n = plan["source"]["expected_last_index"] + 1
        segment = "%016d-%016d" % (n, n)
        assert n == self.floor + 1, (why, "the winner was not the most advanced member", n, self.floor)
        for host in self.lab.hosts():
            path = self._path(host)
            assert segment in os.listdir(path), (why, host.name, sorted(os.listdir(path)))
            changes = _term1_changes(path, above=self.floor)
            assert changes == [(n, segment)], (why, host.name, "term-1 CHANGE entries above %d" % self.floor, changes)
            members = self.lab.lxd_members(host)
            assert len(members) == 3 and all(m["status"] == "Online" for m in members), (why, host.name, members)
            assert self.lab.lxd_data(host) == self.loaded, (why, host.name)


ENGINES = {"dqlite": Dqlite, "etcd": Etcd, "microk8s": MicroK8s, "lxd": Lxd, "dqlite-backup": DqliteFromBackup}
# (engine, the lab fixture's variant, sweep): the microk8s chain needs a lab of that shape (the
# module's lab is taken down first); its spread is in the full tier only (a chain is at least
# three whole recoveries, ~4 min, before its first kill point: over CI's budget)
SWEEPS = [pytest.param("dqlite", None, "spread", id="dqlite-spread"),
          pytest.param("dqlite", None, "full", marks=pytest.mark.full, id="dqlite-full"),
          pytest.param("etcd", None, "spread", id="etcd-spread"),
          pytest.param("etcd", None, "full", marks=pytest.mark.full, id="etcd-full"),
          pytest.param("microk8s", "microk8s", "spread", marks=pytest.mark.full, id="microk8s-spread"),
          # the same chain on the k8s-snap layout (recover_flavor k8s-snap as shipped)
          pytest.param("microk8s", "k8s-snap", "spread", marks=pytest.mark.full, id="k8s-snap-spread"),
          # LXD's spread (a real LXD cluster beside the others, ~9 min under load) is over CI's budget:
          # CI runs test_lxd_recover's power cut (check mode, one reconfigure, second run) instead
          pytest.param("lxd", None, "spread", marks=pytest.mark.full, id="lxd-spread"),
          pytest.param("lxd", None, "full", marks=pytest.mark.full, id="lxd-full"),
          # recovery FROM a backup after every member's data directory was lost whole (lab with h4)
          pytest.param("dqlite-backup", "backup", "spread", marks=pytest.mark.full, id="dqlite-backup-spread")]


class Chain:
    def __init__(self, lab, engine, workdir: Path):
        self.lab = lab
        self.engine = engine
        self.workdir = workdir
        self.controller = workdir / "controller"
        self.runs = 0
        self.breaks = 0
        self.logs: list[Path] = []  # the logs of every run since the last break
        self.recoveries = []

    def playbook(self, kill=None, tasks_log=None) -> tuple[int, str]:
        self.runs += 1
        env = ansible_env()
        env.update(ANSIBLE_CALLBACK_PLUGINS=str(CALLBACKS), ANSIBLE_CALLBACKS_ENABLED="kill_at_task",
                   QR_KILL_TASK=kill[0] if kill else "", QR_KILL_OCCURRENCE=str(kill[1]) if kill else "0",
                   QR_TASK_LOG=str(tasks_log or ""))
        out = self.workdir / ("run-%03d.log" % self.runs)
        self.logs.append(out)
        with open(out, "w") as f:
            proc = subprocess.run([str(BIN / "ansible-playbook"), *self.engine.inventory(),
                                   "playbooks/recover.yml", "-e", "recover_confirm=yes",
                                   "-e", "recover_controller_dir=%s" % self.controller],
                                  stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO, timeout=900, check=False)
        return proc.returncode, out.read_text()

    def break_cluster(self):
        self.breaks += 1
        self.logs = []
        self.engine.break_cluster(self.breaks)

    def check_recovered(self, why: str):
        journals = [json.loads(h.real_path(BACKUPS + "/" + self.engine.journal).read_text()) for h in self.lab.hosts()]
        assert {j["recovery_id"] for j in journals} == {journals[0]["recovery_id"]}, why
        journal = journals[0]
        assert journal["status"] == "complete" and "verified" in journal["steps"], (why, journal["steps"])
        self.engine.check_recovered(why, journal, self.logs)
        self.recoveries.append(journal["recovery_id"])


def _inspect(host):
    return dqlite_datadir.inspect_datadir(str(host.real_path(host.dqlite_data_dir)), "quick")


def _term1_changes(path: Path, above: int) -> list:
    """(index, file) of every term-1 CHANGE entry above index `above`, closed and open segments."""
    found = []
    closed = sorted(n for n in os.listdir(path) if n[:1].isdigit() and "-" in n)
    for name in closed:
        first = int(name.split("-")[0])
        data = (path / name).read_bytes()
        seg = dqlite_format.parse_segment(data, full=True, closed=True)
        index = first
        for batch in seg["batches"]:
            for term, etype, _size in batch["entries"]:
                if term == 1 and etype == CHANGE and index > above:
                    found.append((index, name))
                index += 1
    for name in sorted(n for n in os.listdir(path) if n.startswith("open-")):
        seg = dqlite_format.parse_segment((path / name).read_bytes(), full=True, closed=False)
        for batch in seg["batches"]:
            for term, etype, _size in batch["entries"]:
                if term == 1 and etype == CHANGE:
                    found.append((None, name))  # a reconfigure only ever writes a closed segment
    return found


def _etcd_keys(lab, host) -> set:
    """Every key the member holds in its own store (serializable)."""
    out = lab.etcdctl(host, "get", "", "--prefix", "--keys-only", "--consistency", "s", "-w", "json").stdout
    return {base64.b64decode(kv["key"]).decode() for kv in json.loads(out).get("kvs", [])}


def _changed_in(log: Path, task_header: str) -> int:
    """How many hosts the default callback reported `changed` for under the task's header."""
    text = log.read_text()
    count = 0
    for part in text.split(task_header)[1:]:
        block = re.split(r"\n(?:TASK|RUNNING HANDLER|PLAY RECAP) \[", part, maxsplit=1)[0]
        count += len(re.findall(r"^changed: \[", block, flags=re.M))
    return count


def _tasks(log: Path) -> list[tuple[str, int]]:
    """The started tasks of a run as (name, occurrence of that name)."""
    seen, tasks = {}, []
    for line in log.read_text().splitlines():
        number, _tab, name = line.partition("\t")
        if not number.isdigit():
            continue
        seen[name] = seen.get(name, 0) + 1
        tasks.append((name, seen[name]))
    return tasks


def _spread(tasks, engine) -> list[int]:
    """CI's kill points: every Nth task, and right after (dqlite: and one past) each step that
    changes the cluster or records that it did."""
    points = set(range(1, len(tasks) + 1, engine.every))
    for k, (name, _occurrence) in enumerate(tasks, 1):
        before = [earlier for earlier, _occ in tasks[:k - 1]]
        if any(mark in name and (after is None or any(after in b for b in before)) for mark, after in engine.marks):
            points.update(k + d for d in engine.past)
    return sorted(p for p in points if 1 <= p <= len(tasks))


@pytest.mark.parametrize("engine, lab, sweep", SWEEPS, indirect=["lab"])
def test_killed_after_every_task_and_rerun_it_converges(lab, tmp_path, engine, sweep):
    chain = Chain(lab, ENGINES[engine](lab), tmp_path)
    started = time.monotonic()
    # A first recovery, so that every later one starts from a finished journal (as in the field
    # after the first time): the baseline then also lists the already-done check's tasks.
    chain.break_cluster()
    rc, out = chain.playbook()
    assert rc == 0, out[-4000:]
    chain.check_recovered("first recovery")
    # Baseline: a fresh recovery, uninterrupted, lists the tasks.
    chain.break_cluster()
    tasks_log = tmp_path / "tasks.log"
    t0 = time.monotonic()
    rc, out = chain.playbook(tasks_log=tasks_log)
    assert rc == 0, out[-4000:]
    baseline = time.monotonic() - t0
    # it began after a finished recovery, on a dead cluster: the engine runs on no member, so the run
    # does not let the cluster settle first (refused is not slow; it used to wait up to a minute)
    settle = out.split("Ask the cluster for its members until they are as planned, at most seconds 60]", 1)
    # (a recovery from a NEW backup never asks the old cluster: it does not end at "already done")
    assert isinstance(chain.engine, DqliteFromBackup) or (
        len(settle) == 2 and all(line.startswith("skipping:") for line in settle[1].split("\n")[1:4])), settle[-1][:600]
    chain.check_recovered("baseline")
    tasks = _tasks(tasks_log)
    assert len(tasks) > 50, tasks
    points = list(range(1, len(tasks) + 1)) if sweep == "full" else _spread(tasks, chain.engine)

    chain.break_cluster()
    killed, completed, log = 0, 0, []
    for k in points:
        target = tasks[k - 1]
        rc, out = chain.playbook(kill=target)
        if rc == 0:
            # the re-run went past this point without reaching it again (e.g. the rebuild is skipped
            # once the journal says the members are starting): it finished; check, break, take K fresh
            completed += 1
            chain.check_recovered("chain run completed before kill point %d %s" % (k, target))
            chain.break_cluster()
            rc, out = chain.playbook(kill=target)
        assert rc == -9, "kill point %d %s: exit %d\n%s" % (k, target, rc, out[-6000:])
        killed += 1
        log.append(k)
    # the last interruption is followed by an uninterrupted run
    rc, out = chain.playbook()
    assert rc == 0, out[-6000:]
    chain.check_recovered("final run")
    # a run on the recovered cluster has nothing to do
    rc, out = chain.playbook()
    assert rc == 0 and "nothing to do" in out, out[-3000:]
    summary = {"engine": engine, "T": len(tasks), "kill_points": len(points), "points": log,
               "killed": killed, "chain_completions": completed, "recoveries": len(chain.recoveries),
               "runs": chain.runs, "baseline_s": round(baseline), "total_s": round(time.monotonic() - started),
               "full": sweep == "full"}
    print("KILL SWEEP", json.dumps(summary))
    (REPO / "build").mkdir(exist_ok=True)
    name = "kill-sweep-%s.json" % sweep if engine == "dqlite" else "kill-sweep-%s-%s.json" % (engine, sweep)
    (REPO / "build" / name).write_text(json.dumps(summary) + "\n")
