# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A scratch etcd: `etcd --force-new-cluster` started alone on a COPY of a member directory, to
replay its log and take a snapshot from it (module etcd_replay).

PRIVATE to this collection: may change without notice. Standard library only.

It listens on 127.0.0.1 only: in a network namespace of its own when this process may make one
(root, unshare, nsenter, ip; etcdctl then runs inside it through nsenter), else on free ports.
The copy lists the old peers; alone with --force-new-cluster it does not call them, and in its
own namespace it could not. It is one process whose PID is known (unshare and the shell exec
into it), and stop() ends it by that PID: SIGTERM, then SIGKILL after STOP_GRACE seconds.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import time

STOP_GRACE = 10  # seconds between SIGTERM and SIGKILL


def restore_tool(bin_dir):
    """(name, path) of the tool that restores a snapshot: etcdutl (3.5+), else etcdctl (3.4);
    None when bin_dir has neither."""
    for name in ("etcdutl", "etcdctl"):
        candidate = os.path.join(bin_dir, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return name, candidate
    return None


def restore_snapshot(bin_dir, snapshot, data_dir, name, peers, token, own_peer_url, extra=()):
    """`snapshot restore` of `snapshot` into the new folder `data_dir` for member `name` of the
    cluster `peers` [(name, peer URL)]; returns the argv it ran. Raises RuntimeError with the
    tool's message when it fails (data_dir may then hold a partial restore: the caller's own)."""
    found = restore_tool(bin_dir)
    if not found:
        raise RuntimeError("bin_dir=%s has neither etcdutl nor etcdctl" % bin_dir)
    tool_name, tool = found
    argv = [tool, "snapshot", "restore", snapshot, "--name", name,
            "--initial-cluster", ",".join("%s=%s" % (n, a) for n, a in peers),
            "--initial-cluster-token", token, "--initial-advertise-peer-urls", own_peer_url,
            "--data-dir", data_dir] + list(extra)
    proc = subprocess.run(argv, capture_output=True, text=True, env=dict(os.environ, ETCDCTL_API="3"), check=False)
    if proc.returncode:
        raise RuntimeError("%s snapshot restore failed (%d): %s"
                           % (tool_name, proc.returncode, (proc.stderr or proc.stdout).strip()[-1500:]))
    return argv


def _die_with_parent():
    """Run in the child before exec: the kernel SIGKILLs the scratch etcd when the module's process
    ends, however it ends (a playbook killed mid-run, a module killed by its async wrapper), so no
    scratch etcd outlives the run that started it. PR_SET_PDEATHSIG survives the exec of unshare,
    the shell and etcd."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def netns_tools():
    """(unshare, nsenter, ip) when this process may make a network namespace, else None."""
    if os.geteuid() != 0:
        return None
    search = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    tools = tuple(shutil.which(t, path=search) for t in ("unshare", "nsenter", "ip"))
    if not all(tools):
        return None
    probe = subprocess.run([tools[0], "--net", "--", tools[2], "link", "set", "lo", "up"], capture_output=True,
                           check=False, timeout=30)
    return tools if probe.returncode == 0 else None


class ScratchEtcd:
    """etcd --force-new-cluster on the copy, alone; stop() ends it by its PID, always."""

    def __init__(self, bin_dir: str, data_dir: str, name: str, timeout: int) -> None:
        self.data_dir, self.timeout = data_dir, timeout
        self.etcd, self.etcdctl = os.path.join(bin_dir, "etcd"), os.path.join(bin_dir, "etcdctl")
        self.log_path = os.path.join(os.path.dirname(data_dir), "etcd.log")
        self.name = name
        self.proc: subprocess.Popen | None = None
        self.netns: tuple | None = None
        self.client = ""

    def start(self, isolation: str) -> None:
        tools = netns_tools() if isolation != "loopback" else None
        if isolation == "netns" and not tools:
            raise RuntimeError("isolation=netns, but no network namespace can be made here (it needs root, "
                               "unshare, nsenter and ip)")
        client_port, peer_port = (2379, 2380) if tools else (_free_port(), _free_port())
        self.client = "http://127.0.0.1:%d" % client_port
        argv = [self.etcd, "--name", self.name, "--data-dir", self.data_dir, "--force-new-cluster",
                "--listen-client-urls", self.client, "--advertise-client-urls", self.client,
                "--listen-peer-urls", "http://127.0.0.1:%d" % peer_port, "--logger", "zap",
                "--log-outputs", "stderr"]
        if tools:
            unshare, _nsenter, ip = tools
            # unshare execs the shell and the shell execs etcd: one process, whose PID is Popen's
            argv = [unshare, "--net", "--", "/bin/sh", "-c", '"$0" link set lo up && exec "$@"', ip] + argv
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,  # pylint: disable=consider-using-with
                                         close_fds=True, preexec_fn=_die_with_parent)  # pylint: disable=subprocess-popen-preexec-fn
        self.netns = tools

    def etcdctl_json(self, *args, timeout=None):
        timeout = timeout or self.timeout
        argv = [self.etcdctl, "--endpoints", self.client, "--dial-timeout", "2s",
                "--command-timeout", "%ds" % max(2, timeout), "-w", "json"] + list(args)
        if self.netns:
            argv = [self.netns[1], "--net=/proc/%d/ns/net" % self.proc.pid, "--"] + argv
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout + 10,
                                  env=dict(os.environ, ETCDCTL_API="3"))
        except subprocess.TimeoutExpired:
            raise RuntimeError("etcdctl %s did not return within %ds" % (" ".join(args), timeout + 10)) from None
        if proc.returncode:
            raise RuntimeError((proc.stderr or proc.stdout).strip()[-500:] or "exit code %d" % proc.returncode)
        return json.loads(proc.stdout) if proc.stdout.strip().startswith(("{", "[")) else proc.stdout

    def wait_applied(self, index):
        """Endpoint status once it has a leader and applied `index` (3.4 and 3.5 both report
        raftAppliedIndex; raftIndex, the last index raft holds, is the fallback)."""
        deadline, last_error = time.monotonic() + self.timeout, "no answer yet"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("etcd exited with code %d before it served" % self.proc.returncode)
            try:
                status = self.etcdctl_json("endpoint", "status", timeout=5)[0]["Status"]
                applied = status.get("raftAppliedIndex", status.get("raftIndex", 0))
                if status.get("leader") and applied >= index:
                    return status
                last_error = "leader %s, applied index %s" % (status.get("leader"), applied)
            except (RuntimeError, ValueError, KeyError, IndexError) as exc:
                last_error = str(exc)
            time.sleep(0.3)
        raise RuntimeError("etcd did not serve with applied index >= %d within %ds (last: %s)"
                           % (index, self.timeout, last_error))

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def log_tail(self, lines=30):
        try:
            with open(self.log_path, "rb") as handle:
                handle.seek(max(0, os.path.getsize(self.log_path) - 65536))
                text = handle.read().decode("utf-8", "replace")
        except OSError:
            return []
        return [line[:500] for line in text.splitlines()[-lines:]]
