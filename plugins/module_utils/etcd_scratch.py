# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A scratch etcd: `etcd --force-new-cluster` started alone on a COPY of a member directory, to
replay its log and take a snapshot from it (module etcd_replay).

PRIVATE to this collection: may change without notice. Standard library only.

It listens on 127.0.0.1 only: in a network namespace of its own when this process may make one
(etcdctl then runs inside it through nsenter), else on free ports: module_utils.scratch_process
starts, isolates and stops it. The copy lists the old peers; alone with --force-new-cluster it
does not call them.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

from ansible_collections.quorum.recovery.plugins.module_utils.scratch_process import ScratchProcess, free_port


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


class ScratchEtcd(ScratchProcess):
    """etcd --force-new-cluster on the copy, alone; stop() ends it by its PID, always."""

    def __init__(self, bin_dir: str, data_dir: str, name: str, timeout: int) -> None:
        super().__init__(os.path.join(os.path.dirname(data_dir), "etcd.log"))
        self.data_dir, self.timeout = data_dir, timeout
        self.etcd, self.etcdctl = os.path.join(bin_dir, "etcd"), os.path.join(bin_dir, "etcdctl")
        self.name = name
        self.client = ""

    def start(self, isolation: str) -> None:
        tools = self.isolation_tools(isolation)
        client_port, peer_port = (2379, 2380) if tools else (free_port(), free_port())
        self.client = "http://127.0.0.1:%d" % client_port
        argv = [self.etcd, "--name", self.name, "--data-dir", self.data_dir, "--force-new-cluster",
                "--listen-client-urls", self.client, "--advertise-client-urls", self.client,
                "--listen-peer-urls", "http://127.0.0.1:%d" % peer_port, "--logger", "zap",
                "--log-outputs", "stderr"]
        self.launch(argv, tools)

    def etcdctl_json(self, *args, timeout=None):
        timeout = timeout or self.timeout
        argv = [self.etcdctl, "--endpoints", self.client, "--dial-timeout", "2s",
                "--command-timeout", "%ds" % max(2, timeout), "-w", "json"] + list(args)
        proc = self.run(argv, timeout + 10, env=dict(os.environ, ETCDCTL_API="3"))
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
