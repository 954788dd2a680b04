"""playbooks/recover.yml killed with SIGKILL after every task in turn, and re-run: it converges.

How: tests/callback/kill_at_task.py (enabled only here) SIGKILLs ansible-playbook itself when the
task after the target starts, i.e. once the target task has finished on every host. A baseline
run of a fresh recovery lists its tasks (T of them, include headers and per-host meta tasks
counted); kill point K is "right after task K of that list", named by (task name, occurrence),
so it means the same place in a re-run, whose numbering shifts (a resumed run plans from the
journal and skips the stop and the rebuild once the members are starting).

The kill points form a chain, which keeps the cost to one partial run per point: the run killed at
K is followed by a re-run killed at K+1, and so on. Each run must end either killed at its point
(exit -9) or complete (exit 0); any failure fails the test. A complete run ends the chain: the
cluster is checked (below), broken again (power-off of every dqlite member after writing more
keys), and the point the completed run never reached is taken again by a fresh run. After each
completed recovery:
- the reconfigure segment the journaled plan names (N-N) exists on every member, and above the
  highest index any member held before the recovery there is exactly ONE term-1 CHANGE entry
  on every member, at N (a second reconfigure, or one on another member, would add another);
- every key written so far (the lab's 1,000, and 20 more per break) reads back on every member.

Kill points: [spread] (CI, scripts/test) takes every 25th task, and right after and one past the
safety archive, the reconfigure, its journal record, the restore, the 'starting' record and the
winner's start; [full] (marker `full`: only scripts/test-full runs it, after [spread] on the same
lab, so it starts from the cluster [spread] recovered) takes every K = 1..T.
Measured on the lab (3 hosts, 1,000 keys, 2026-11-21):
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
Each run's log is kept in the test's tmp_path (run-NNN.log); the summary goes to
build/kill-sweep-{spread,full}.json.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import BIN, REPO, ansible_env
from ansible_collections.quorum.recovery.plugins.module_utils import dqlite_datadir, dqlite_format

CALLBACKS = REPO / "tests" / "callback"
CHANGE = 3
KEYS_PER_BREAK = 20


class Chain:
    def __init__(self, lab, workdir: Path):
        self.lab = lab
        self.workdir = workdir
        self.controller = workdir / "controller"
        self.runs = 0
        self.batches = [("key", 0, 1000)]  # (prefix, start, count) of every key written
        self.breaks = 0
        self.floor = None  # highest last index of any member when the current recovery began
        self.recoveries = []

    def playbook(self, kill=None, tasks_log=None) -> tuple[int, str]:
        self.runs += 1
        env = ansible_env()
        env.update(ANSIBLE_CALLBACK_PLUGINS=str(CALLBACKS), ANSIBLE_CALLBACKS_ENABLED="kill_at_task",
                   QR_KILL_TASK=kill[0] if kill else "", QR_KILL_OCCURRENCE=str(kill[1]) if kill else "0",
                   QR_TASK_LOG=str(tasks_log or ""))
        out = self.workdir / ("run-%03d.log" % self.runs)
        with open(out, "w") as f:
            proc = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(self.lab.inventory_path),
                                   "playbooks/recover.yml", "-e", "recover_confirm=yes",
                                   "-e", "recover_controller_dir=%s" % self.controller],
                                  stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO, timeout=900, check=False)
        return proc.returncode, out.read_text()

    def break_cluster(self):
        """Write more keys, then power off every dqlite member (SIGKILL)."""
        self.breaks += 1
        host = self.lab.hosts()[0]
        prefix = "brk%d-" % self.breaks
        self.lab.client(host, "dqlite-put", *self.lab.client_target(host, "dqlite"), "--prefix", prefix,
                        "--count", str(KEYS_PER_BREAK), "--size", "32")
        self.batches.append((prefix, 0, KEYS_PER_BREAK))
        self.lab.power_off("dqlite")
        self.floor = max(_inspect(h)["log"]["last_index"] for h in self.lab.hosts())

    def check_recovered(self, why: str):
        hosts = self.lab.hosts()
        journals = [json.loads(h.real_path("/var/backups/quorum-recovery/journal.json").read_text()) for h in hosts]
        assert {j["recovery_id"] for j in journals} == {journals[0]["recovery_id"]}, why
        journal = journals[0]
        assert journal["status"] == "complete" and "verified" in journal["steps"], (why, journal["steps"])
        plan = journal["plan"]
        n = plan["source"]["expected_last_index"] + 1
        segment = plan["source"]["segment"]
        assert segment == "%016d-%016d" % (n, n)
        assert n == self.floor + 1, (why, "the winner was not the most advanced member", n, self.floor)
        for host in hosts:
            path = host.real_path(host.dqlite_data_dir)
            names = os.listdir(path)
            assert segment in names, (why, host.name, sorted(names))
            changes = _term1_changes(path, above=self.floor)
            assert changes == [(n, segment)], (why, host.name, "term-1 CHANGE entries above %d" % self.floor,
                                               changes)
            for prefix, start, count in self.batches:
                result = self.lab.check_keys(host, "dqlite", count, prefix, start=start)
                assert result.get("ok"), (why, host.name, prefix, result)
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


def _spread(tasks) -> list[int]:
    """CI's kill points: every 25th task, and right after (and one past) each step that changes the
    cluster or records that it did."""
    points = set(range(1, len(tasks) + 1, 25))
    marks = ("Safety archive", "Reconfigure ONCE", "(source-built)", "Replace each other member", "(starting)",
             "Start the winner")
    for k, (name, _occ) in enumerate(tasks, 1):
        if any(m in name for m in marks):
            points.update({k, k + 1})
    return sorted(p for p in points if 1 <= p <= len(tasks))


@pytest.mark.parametrize("sweep", ["spread", pytest.param("full", marks=pytest.mark.full)])
def test_killed_after_every_task_and_rerun_it_converges(lab, tmp_path, sweep):
    chain = Chain(lab, tmp_path)
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
    # it began after a finished recovery, on a dead cluster: dqlite runs on no member, so the run
    # does not let the cluster settle first (refused is not slow; it used to wait up to a minute)
    settle = out.split("Ask the cluster for its members until they are as planned, at most seconds 60]", 1)
    assert len(settle) == 2 and all(line.startswith("skipping:") for line in settle[1].split("\n")[1:4]), \
        settle[-1][:600]
    chain.check_recovered("baseline")
    tasks = _tasks(tasks_log)
    assert len(tasks) > 50, tasks
    points = list(range(1, len(tasks) + 1)) if sweep == "full" else _spread(tasks)

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
    summary = {"T": len(tasks), "kill_points": len(points), "killed": killed, "chain_completions": completed,
               "recoveries": len(chain.recoveries), "runs": chain.runs, "baseline_s": round(baseline),
               "total_s": round(time.monotonic() - started), "full": sweep == "full"}
    print("KILL SWEEP", json.dumps(summary))
    (REPO / "build").mkdir(exist_ok=True)
    (REPO / "build" / ("kill-sweep-%s.json" % sweep)).write_text(json.dumps(summary) + "\n")
