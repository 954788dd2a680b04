"""Real single-member etcd data directories for the replay tests, made by REAL etcd (3.4.23 from
Debian, 3.5.16 unpacked in the lab's engines folder) on free 127.0.0.1 ports, in a temporary
folder, and always stopped by PID (SIGKILL is the point: a crash).

member_behind() makes the case the replay exists for: a log whose tail is beyond the persisted
HardState commit AND beyond what the db holds. etcd writes the db in 100 ms batches and the WAL
at every Ready, so a crash leaves a db behind its WAL; here the db from an earlier crash is put
back (a real, consistent bbolt file, behind the WAL), and a HardState with a lower commit is
appended (the collection's own writer: it can write any commit), as a member that crashed before
it heard of the commit of its last entries persists it.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

ENGINES = {"3.4": Path("/usr/bin"), "3.5": Path("/var/lib/quorum-recovery-lab/engines/etcd-3.5.16/usr/bin")}
VERSIONS = {"3.4": "3.4.23", "3.5": "3.5.16"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _b64(text) -> str:
    return base64.b64encode(text if isinstance(text, bytes) else text.encode()).decode()


class Solo:
    """One etcd process on data_dir; a new cluster of one unless the directory has a WAL."""

    def __init__(self, bin_dir: Path, data_dir: Path, name: str = "solo", force_new_cluster: bool = False):
        self.bin_dir, self.data_dir = Path(bin_dir), Path(data_dir)
        client, peer = free_port(), free_port()
        self.client, self.peer = "http://127.0.0.1:%d" % client, "http://127.0.0.1:%d" % peer
        argv = [str(self.bin_dir / "etcd"), "--name", name, "--data-dir", str(self.data_dir),
                "--listen-client-urls", self.client, "--advertise-client-urls", self.client,
                "--listen-peer-urls", self.peer, "--initial-advertise-peer-urls", self.peer,
                "--initial-cluster", "%s=%s" % (name, self.peer), "--logger", "zap", "--log-outputs", "stderr"]
        if force_new_cluster:
            argv.append("--force-new-cluster")
        self.log = Path(str(self.data_dir) + ".%d.log" % time.monotonic_ns())
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log)  # pylint: disable=consider-using-with

    def __enter__(self):
        return self

    def __exit__(self, *_exc):
        self.kill()

    def wait(self, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("etcd exited %s: %s" % (self.proc.returncode, self.log.read_text()[-3000:]))
            try:
                status = self.ctl("endpoint", "status")[0]["Status"]
                if status.get("leader"):
                    return status
            except (AssertionError, ValueError, KeyError):
                pass
            time.sleep(0.2)
        raise AssertionError("etcd did not serve in %ss: %s" % (timeout, self.log.read_text()[-3000:]))

    def ctl(self, *args):
        proc = subprocess.run([str(self.bin_dir / "etcdctl"), "--endpoints", self.client, "-w", "json",
                               "--dial-timeout=2s", "--command-timeout=20s", *args], capture_output=True, text=True,
                              timeout=60, check=False, env=dict(os.environ, ETCDCTL_API="3"))
        if proc.returncode:
            raise AssertionError("etcdctl %s: %s" % (" ".join(args), proc.stderr))
        return json.loads(proc.stdout)

    def call(self, what: str, body: dict) -> dict:
        request = urllib.request.Request(self.client + "/v3/kv/" + what, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read())

    def put(self, key, value) -> int:
        return int(self.call("put", {"key": _b64(key), "value": _b64(value)})["header"]["revision"])

    def delete(self, key, range_end=None) -> dict:
        body = {"key": _b64(key)}
        if range_end is not None:
            body["range_end"] = _b64(range_end)
        return self.call("deleterange", body)

    def txn(self, puts=(), deletes=()) -> dict:
        ops = [{"requestPut": {"key": _b64(k), "value": _b64(v)}} for k, v in puts]
        ops += [{"requestDeleteRange": {"key": _b64(k)}} for k in deletes]
        return self.call("txn", {"success": ops})

    def keys(self) -> dict:
        """{key: value} of every key (bytes)."""
        found = self.ctl("get", "", "--prefix")
        return {base64.b64decode(kv["key"]): base64.b64decode(kv.get("value", "")) for kv in found.get("kvs", [])}

    def kill(self, sig=signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def member_behind(root: Path, version: str, keys: int = 500, tail: int = 50, committed_tail: int = 10) -> dict:
    """A real member directory root/data: `keys` puts, of which the last `tail` (and a delete, a
    range delete and a transaction) are beyond the db, and all but `committed_tail` of those
    beyond the HardState commit. Returns what was written, and where."""
    bin_dir = ENGINES[version]
    data = root / "data"
    early = {}
    with Solo(bin_dir, data) as etcd:
        etcd.wait()
        for i in range(keys - tail):
            key = "/k/%05d" % i
            etcd.put(key, "v%d" % i)
            early[key.encode()] = b"v%d" % i
        etcd.put("/gone/a", "1")
        etcd.put("/gone/b", "2")
        etcd.put("/range/a", "1")
        etcd.put("/range/b", "2")
        time.sleep(0.5)  # the db's batch interval is 100 ms: let it catch up with the WAL
        ci_status = etcd.wait()
    shutil.copy2(data / "member" / "snap" / "db", root / "db.early")
    late = {}
    with Solo(bin_dir, data) as etcd:
        status = etcd.wait()
        for i in range(keys - tail, keys):
            key = "/k/%05d" % i
            etcd.put(key, "v%d" % i)
            late[key.encode()] = b"v%d" % i
        etcd.delete("/gone/a")
        etcd.delete("/range/", "/range0")
        etcd.txn(puts=[("/txn/x", "X"), ("/txn/\xff".encode("latin-1"), "Y")], deletes=["/gone/b"])
        late[b"/txn/x"], late[b"/txn/\xff"] = b"X", b"Y"
        final = etcd.wait()
        time.sleep(0.3)
    expected = {**early, **late}
    shutil.copy2(root / "db.early", data / "member" / "snap" / "db")  # the db behind its WAL
    return {"data": data, "expected": expected, "late": late, "first_status": ci_status, "restart_status": status,
            "final_status": final, "bin_dir": bin_dir, "committed_tail": committed_tail}
