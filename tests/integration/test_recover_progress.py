"""What the operator sees while the long steps run: progress lines in the output of a real
ansible-playbook (default stdout callback) and of ansible-runner (what AWX shows), from real
async jobs on lab hosts over real SSH.

- A recovery of the lab's powered-off dqlite cluster prints, for every member, the summary of its
  safety archive, of the winner's archive, of the fetch to the controller and the push to every
  other member, and of every restore; with recover_progress_interval=0.02 the lab's small data
  directories (tens of MiB) still give progress lines from the middle of a phase. The progress
  files are gone afterwards, and a second run has nothing to do and prints no progress.
- A 128 MiB folder of random bytes (about 5 s of gzip here) shows that the lines come WHILE the
  job runs, not after it: the first line between 0% and 100% arrives seconds before the task's
  result; the fetch and the push print how far the file got while it moves.
- ansible-runner's stdout and its job events (type "verbose", what AWX displays) hold the lines.
- Since a killed playbook leaves its background jobs working, dqlite_info on a stopped member
  waits while a restore holds the data directory's lock (never reads it half restored), and does
  not wait where dqlite runs.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import threading
import time

import pytest

from conftest import BIN, REPO, ansible_env, run_ansible

LINE = re.compile(r"^(?P<host>\w+) \[(?P<label>[^\]]+)\]: (?P<phase>\w+) (?P<done>[\d.]+ [KMGT]?i?B) of "
                  r"(?P<total>[\d.]+ [KMGT]?i?B) \((?P<pct>\d+)%\)")
SUMMARY = re.compile(r"^(?P<host>\w+) \[(?P<label>[^\]]+)\]: done: (?P<rest>.*)$")
MOVED = re.compile(r"^(?P<host>\w+) \[(?P<label>[^\]]+)\]: (?P<verb>sent|fetched) [\d.]+ [KMGT]?i?B in [\d.]+ s "
                   r"\([\d.]+ [KMGT]?i?B/s\)$")


def _progress(lines):
    return [m.groupdict() for m in map(LINE.match, lines) if m]


def _section(out, task):
    """The output lines of one task (from its header to the next header)."""
    start = out.index("TASK [quorum.recovery.recover : %s" % task)
    end = out.find("\nTASK [", start + 1)
    return out[start:end].splitlines()


def test_a_recovery_shows_the_progress_of_every_long_step(lab, tmp_path):
    hosts = [h.name for h in lab.hosts()]
    lab.power_off("dqlite")
    proc = run_ansible("ansible-playbook", "playbooks/recover.yml", "-e", "recover_confirm=yes",
                       "-e", "recover_progress_interval=0.02", "-e", "recover_controller_dir=%s" % tmp_path,
                       inventory=lab.inventory_path)
    out = proc.stdout
    winner = re.search(r'"winner: (\w+)"', out).group(1)
    others = [h for h in hosts if h != winner]

    def summaries(lines, label):
        return {m["host"]: m["rest"] for m in map(SUMMARY.match, lines) if m and m["label"] == label}

    safety = _section(out, "Wait for the long step, showing its progress - safety archive")
    done = summaries(safety, "safety archive")
    assert sorted(done) == sorted(hosts), safety
    assert all(re.match(r"archive [\d.]+ \w+ in [\d.]+ s \([\d.]+ \w+/s\); verify ", v) for v in done.values()), done

    source = _section(out, "Wait for the long step, showing its progress - winner's archive")
    assert list(summaries(source, "winner's archive")) == [winner], source
    fetched = [m for m in map(MOVED.match, _section(out, "Bring the winner's archive")) if m]
    assert [(m["host"], m["verb"]) for m in fetched] == [(winner, "fetched")]
    sent = [m for m in map(MOVED.match, _section(out, "Send the winner's archive")) if m]
    assert sorted((m["host"], m["verb"]) for m in sent) == [(h, "sent") for h in sorted(others)]

    restore = _section(out, "Wait for the long step, showing its progress - restore")
    done = summaries(restore, "restore")
    assert sorted(done) == sorted(others), restore
    for rest in done.values():
        assert [p.split()[0] for p in rest.split("; ")] == ["verify", "compare", "extract", "check"], rest

    # lines from the middle of a phase: the lab's directories are small, so whether a look falls
    # inside a phase is a matter of timing; test_lines_come_while_the_job_runs proves them on a
    # 128 MiB folder. Here: whatever was printed belongs to a long step
    lines = _progress(out.splitlines())
    long_steps = {"safety archive", "winner's archive", "restore", "fetch the winner's archive",
                  "send the winner's archive"}
    assert {r["label"] for r in lines} <= long_steps, lines

    # the files the lines came from are removed once shown; the archives stay
    for host in lab.hosts():
        state = host.real_path("/var/backups/quorum-recovery")
        left = [os.path.join(d, n) for d, _dirs, names in os.walk(state) for n in names if n.startswith("progress-")]
        assert left == [], left
    assert lab.check_keys(lab.hosts()[0], "dqlite", 1000)["ok"]

    again = run_ansible("ansible-playbook", "playbooks/recover.yml", "-e", "recover_confirm=yes",
                        "-e", "recover_controller_dir=%s" % tmp_path, inventory=lab.inventory_path)
    assert "nothing to do" in again.stdout and re.search(r"changed=0 ", again.stdout), again.stdout[-3000:]
    assert not _progress(again.stdout.splitlines()), again.stdout[-3000:]


BIG = 128 << 20
INTERVAL = 0.2


@pytest.fixture(scope="module")
def big_folder(lab):
    host = lab.hosts()[1]
    folder = "/var/tmp/qr-progress-big"
    real = host.real_path(folder)
    real.mkdir(parents=True, exist_ok=True)
    with open(real / "data.bin", "wb") as handle:
        for _mib in range(BIG >> 20):
            handle.write(os.urandom(1 << 20))  # incompressible: gzip takes its time
    return host, folder


def _big_args(host, folder, controller_dir, run):
    return ["tests/integration/playbooks/progress_big.yml", "-e", "progress_host=%s" % host.name,
            "-e", "progress_dir=%s" % folder, "-e", "progress_interval=%s" % INTERVAL,
            "-e", "progress_controller_dir=%s" % controller_dir, "-e", "progress_run=%s" % run]


def test_lines_come_while_the_job_runs(lab, big_folder, tmp_path):
    host, folder = big_folder
    proc = subprocess.Popen([str(BIN / "ansible-playbook"), "-i", str(lab.inventory_path),
                             *_big_args(host, folder, tmp_path, "live")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ansible_env(), cwd=REPO)
    timed = []  # (seconds since start, line) as the line arrived on the pipe
    began = time.monotonic()
    for line in proc.stdout:
        timed.append((time.monotonic() - began, line.rstrip("\n")))
    assert proc.wait(timeout=600) == 0, "\n".join(line for _t, line in timed[-60:])
    text = "\n".join(line for _t, line in timed)

    def first(pattern, after=0.0):
        return next(t for t, line in timed if t >= after and re.search(pattern, line))

    header = first(r"TASK \[Wait for the archive")
    result = first(r"^changed: \[%s\]" % host.name, header)
    live = [(t, m.groupdict()) for t, m in ((t, LINE.match(line)) for t, line in timed)
            if m and m["label"] == "big archive" and m["phase"] == "archive" and 0 < int(m["pct"]) < 100]
    assert len(live) >= 3, text
    assert result - live[0][0] >= 1.0, ("the progress came only with the result", live[0][0], result, text)
    assert [int(r["pct"]) for _t, r in live] == sorted(int(r["pct"]) for _t, r in live)
    # the transfers: how far the file got while it moved, then the size and the rate
    moving = [m for m in map(LINE.match, text.splitlines()) if m and m["label"] in ("fetch big", "push big")]
    assert moving, text
    assert re.search(r"^%s \[fetch big\]: fetched 128\.\d MiB in " % host.name, text, re.M), text
    assert re.search(r"^%s \[push big\]: sent 128\.\d MiB in " % host.name, text, re.M), text


def test_ansible_runner_shows_the_lines_as_awx_does(lab, big_folder, tmp_path):
    host, folder = big_folder
    private = tmp_path / "runner"
    (private / "project").mkdir(parents=True)
    (private / "inventory").mkdir()
    (private / "inventory" / "hosts.yml").write_text(lab.inventory_path.read_text())
    playbook = REPO / "tests/integration/playbooks/progress_big.yml"
    (private / "project" / "progress_big.yml").write_text(playbook.read_text())
    args = _big_args(host, folder, tmp_path / "controller", "runner")[1:]
    extravars = {args[i + 1].split("=", 1)[0]: args[i + 1].split("=", 1)[1] for i in range(0, len(args), 2)}
    (private / "env").mkdir()
    (private / "env" / "extravars").write_text(json.dumps(extravars))
    env = ansible_env()
    proc = subprocess.run([str(BIN / "ansible-runner"), "run", str(private), "-p", "progress_big.yml"],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert re.search(r"^%s \[big archive\]: \w+ [\d.]+ [KMG]?i?B of " % host.name, proc.stdout, re.M), proc.stdout[-4000:]
    assert re.search(r"^%s \[big archive\]: done: " % host.name, proc.stdout, re.M), proc.stdout[-4000:]
    events = [json.loads(p.read_text()) for p in private.glob("artifacts/*/job_events/*.json")]
    shown = [e["stdout"] for e in events if e.get("event") == "verbose" and "[big archive]" in e.get("stdout", "")]
    assert any(LINE.match(s) for s in shown) and any(SUMMARY.match(s) for s in shown), shown


def _facts_seconds(lab, host, holding_for):
    """Seconds dqlite_info takes on `host` while this process holds the data directory's lock
    (as a restore left working by an interrupted playbook does) for `holding_for` seconds."""
    fd = os.open(host.real_path(host.dqlite_data_dir), os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    release = threading.Timer(holding_for, os.close, [fd])
    release.start()
    try:
        began = time.monotonic()
        run_ansible("ansible", host.name, "-m", "quorum.recovery.dqlite_info",
                    "-a", "path=%s depth=quick" % host.dqlite_data_dir, inventory=lab.inventory_path)
        return time.monotonic() - began
    finally:
        release.join()


def test_facts_never_read_a_directory_a_restore_holds(lab):
    h1, h2 = lab.hosts()[:2]
    lab.service(h1, "dqlite", "stop")  # a restore only runs on a stopped member
    try:
        assert _facts_seconds(lab, h1, 4.0) >= 3.5
    finally:
        lab.service(h1, "dqlite", "start")
    # where dqlite runs (a few writes: it holds its open segments), no restore of ours can be at
    # work: read at once, whatever holds a lock
    lab.churn(h2, "dqlite", 20, 32, prefix="facts")
    assert _facts_seconds(lab, h2, 8.0) < 7.0
