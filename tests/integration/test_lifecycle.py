"""`up` recovers from a crashed run; `down` leaves no process, namespace, link or mount behind."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO

from lab import Lab
from lab.core import BRIDGE, NAME, Host


def _lab_traces(lab: Lab) -> list[str]:
    traces = []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    # only THIS lab's names: other labs (QRLAB_NAME) may share the machine
    traces += ["netns " + line for line in netns.splitlines() if line.startswith(NAME + "-")]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=False).stdout
    veths = [Host("h%d" % i, i, "", lab.state).veth for i in range(1, 8)]
    traces += ["link " + name for name in [BRIDGE] + veths
               if (" %s:" % name) in links or (" %s@" % name) in links]
    with open("/proc/self/mountinfo") as f:
        traces += ["mount " + line.split()[4] for line in f if str(lab.state) in line.split()[4]]
    if lab.state.exists():
        traces.append("state dir %s" % lab.state)
    return traces


def test_up_after_a_crashed_up_and_down_leaves_nothing():
    lab = Lab()
    # Crash an `up` half way: kill -9 the lab command once its sshd processes exist.
    proc = subprocess.Popen([sys.executable, "-m", "lab", "up", "--hosts", "2", "--keys", "0"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    try:
        while not (lab.state / "hosts/h2/run/qrlab/sshd.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert lab.lab_processes(), "the crashed run should have left lab processes behind"
    assert _lab_traces(lab)

    try:
        lab.up(2, keys=10)
        assert lab.etcd_ready(lab.hosts())
        assert all(lab.check_keys(h, "dqlite", 10)["ok"] for h in lab.hosts())
        pids = lab.lab_processes()
        assert len(pids) >= 6  # sshd, etcd and dqlite-demo on each host at least
    finally:
        lab.down()
    assert not [p for p in pids if Lab._alive(p)]
    assert _lab_traces(lab) == []
    assert not Path("/var/snap").exists() or os.listdir("/var/snap")  # no empty mount point left behind
