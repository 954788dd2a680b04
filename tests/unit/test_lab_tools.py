"""Fast checks of the lab's pure parts: path mapping, fault arguments, the service script, the client."""
from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import REPO

from lab import Lab, LabError
from lab.core import Host


def _load(name: str):
    loader = importlib.machinery.SourceFileLoader(name[:-3], str(REPO / "lab/files" / name))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_real_path_maps_private_paths_and_refuses_shared_ones(tmp_path):
    host = Host("h2", 2, "10.254.77.12", tmp_path)
    assert host.real_path("/var/lib/etcd/member/wal/0.wal") == tmp_path / "hosts/h2/etcd/member/wal/0.wal"
    assert host.real_path("/var/snap/microk8s/current/var/kubernetes/backend/x:1/metadata1") == \
        tmp_path / "hosts/h2/dqlite/backend/x:1/metadata1"
    # the backend's parent is private too: the recovery stages and moves files next to the backend
    assert host.real_path("/var/snap/microk8s/current/var/kubernetes/backend.replaced-r1") == \
        tmp_path / "hosts/h2/dqlite/backend.replaced-r1"
    flat = Host("h2", 2, "10.254.77.12", tmp_path, dqlite_backend="/var/snap/microk8s/current/var/kubernetes/backend")  # the MicroK8s shape
    assert flat.dqlite_data_dir == "/var/snap/microk8s/current/var/kubernetes/backend"
    assert host.dqlite_data_dir == "/var/snap/microk8s/current/var/kubernetes/backend/10.254.77.12:9001"
    assert host.real_path("/run") == tmp_path / "hosts/h2/run/."
    with pytest.raises(LabError, match="not a private path"):
        host.real_path("/usr/bin/etcd")
    with pytest.raises(LabError, match="not a private path"):
        host.real_path("/var/lib/etcdX/file")


def test_corrupt_flips_and_truncates_and_rejects_bad_arguments(tmp_path):
    lab = Lab(tmp_path)
    host = Host("h1", 1, "10.254.77.11", tmp_path)
    victim = host.real_path("/var/tmp/f")
    victim.parent.mkdir(parents=True)
    victim.write_bytes(bytes(range(16)))
    result = lab.corrupt(host, "/var/tmp/f", offset=3, flip=2)
    assert victim.read_bytes() == bytes([0, 1, 2, 0xFC, 0xFB]) + bytes(range(5, 16))
    assert result == {"path": "/var/tmp/f", "offset": 3, "before": "0304", "after": "fcfb"}
    for bad in ({"offset": 15, "flip": 2}, {"offset": -1}, {"offset": None}, {"truncate": 17}):
        with pytest.raises(LabError):
            lab.corrupt(host, "/var/tmp/f", **bad)
    assert len(victim.read_bytes()) == 16  # refused calls changed nothing
    lab.corrupt(host, "/var/tmp/f", truncate=5)
    assert victim.read_bytes() == bytes([0, 1, 2, 0xFC, 0xFB])
    with pytest.raises(LabError, match="not a file"):
        lab.corrupt(host, "/var/tmp/missing", offset=0)


def test_up_refuses_a_bad_host_count_before_touching_anything(tmp_path):
    lab = Lab(tmp_path / "state")
    for count in (0, 8):
        with pytest.raises(LabError, match="host count"):
            lab.up(count)
    assert not (tmp_path / "state").exists()


def test_service_script_start_status_stop_kill(tmp_path, monkeypatch):
    svc = _load("qrlab_service.py")
    for attr, sub in (("CONF_DIR", "conf"), ("RUN_DIR", "run"), ("LOG_DIR", "log")):
        monkeypatch.setattr(svc, attr, str(tmp_path / sub))
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf/sleeper.json").write_text(json.dumps({"argv": ["sleep", "300"], "stop_timeout": 5}))
    (tmp_path / "conf/dies.json").write_text(json.dumps({"argv": ["false"]}))
    (tmp_path / "conf/deaf.json").write_text(json.dumps(
        {"argv": ["python3", "-c", "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"],
         "stop_timeout": 0.5}))

    assert svc.main(["x", "sleeper", "status"]) == 3
    assert svc.main(["x", "sleeper", "start"]) == 0
    pid = svc.read_pid("sleeper")
    assert svc.pid_alive(pid) and svc.main(["x", "sleeper", "status"]) == 0
    assert svc.main(["x", "sleeper", "start"]) == 0 and svc.read_pid("sleeper") == pid  # already running
    assert svc.main(["x", "sleeper", "stop"]) == 0
    assert not svc.pid_alive(pid) and svc.main(["x", "sleeper", "status"]) == 3

    assert svc.main(["x", "dies", "start"]) == 1  # a daemon that exits at once is a failed start

    assert svc.main(["x", "deaf", "start"]) == 0
    pid = svc.read_pid("deaf")
    assert svc.main(["x", "deaf", "stop"]) == 0  # escalated to SIGKILL after the timeout
    assert not svc.pid_alive(pid)

    assert svc.main(["x", "nosuch", "status"]) == 4
    assert svc.main(["x", "sleeper", "bogus"]) == 2


def test_service_script_sees_a_zombie_as_dead():
    svc = _load("qrlab_service.py")
    child = subprocess.Popen(["sleep", "300"])
    try:
        assert svc.pid_alive(child.pid)
        child.send_signal(signal.SIGKILL)
        for _attempt in range(100):
            if Path("/proc/%d/stat" % child.pid).read_text().rsplit(")", 1)[1].split()[0] == "Z":
                break
            time.sleep(0.01)
        assert not svc.pid_alive(child.pid)  # not reaped yet: a zombie, and dead
    finally:
        child.wait()


def test_client_values_are_deterministic_and_checked(tmp_path):
    client = _load("qrlab_client.py")
    assert client.value_for("key000001", 12) == b"key000001|ke"
    assert len(client.value_for("k", 100_000)) == 100_000

    class Args:
        prefix, count, start, size = "k", 3, 0, 8
    found = {"k000000": client.value_for("k000000", 8), "k000001": b"wrong"}
    result = client._compare(Args, found)
    assert result["missing"] == 1 and result["wrong"] == 1 and not result["ok"]
    assert result["first_missing"] == ["k000002"] and result["first_wrong"] == ["k000001"]
