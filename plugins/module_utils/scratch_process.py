# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One scratch daemon started alone on loopback, on a COPY of a member's data, and stopped by
its PID: what the etcd replay (etcd_scratch) and the dqlite backup check (dqlite_backup) share.

PRIVATE to this collection: may change without notice. Standard library only.

It listens on 127.0.0.1 only: in a network namespace of its own when this process may make one
(root, unshare, nsenter, ip; its clients then run inside it through nsenter), else on free ports
of the host's loopback. A copy lists the old peers; in its own namespace it could not call them.
It is one process whose PID is known (unshare and the shell exec into it), the kernel kills it
when the module's process ends (PR_SET_PDEATHSIG), and stop() ends it by that PID: SIGTERM, then
SIGKILL after STOP_GRACE seconds.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Callable

STOP_GRACE = 10  # seconds between SIGTERM and SIGKILL


def die_with_parent():
    """Run in the child before exec: the kernel SIGKILLs the scratch daemon when the module's
    process ends, however it ends (a playbook killed mid-run, a module killed by its async
    wrapper), so no scratch daemon outlives the run that started it. PR_SET_PDEATHSIG survives the
    exec of unshare, the shell and the daemon."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_watched(argv: list, env: dict | None, tick: Callable[[], str | None],
                interval: float = 0.25) -> tuple[int, str, str | None]:
    """Run a client (argv) to its end, calling tick() every `interval` seconds while it runs: when
    tick returns a reason, the client is SIGKILLed by its PID and waited for. Returns (returncode,
    what it wrote to stderr, the reason or None). The client dies with this process too."""
    reason = None
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, env=env,  # pylint: disable=consider-using-with
                                preexec_fn=die_with_parent)  # pylint: disable=subprocess-popen-preexec-fn
        try:
            while proc.poll() is None:
                time.sleep(interval)
                if proc.poll() is None:
                    reason = tick()
                    if reason:
                        break
        finally:
            if proc.poll() is None:
                proc.kill()  # our own client, by its PID
            proc.wait()
        err.seek(0)
        said = err.read().decode("utf-8", "replace")
    return proc.returncode, said, reason


def free_port() -> int:
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


class ScratchProcess:
    """A daemon started alone (launch()), its clients run beside it (run()), stopped by PID (stop())."""

    def __init__(self, log_path: str) -> None:
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.netns: tuple | None = None

    @staticmethod
    def isolation_tools(isolation: str):
        """The namespace tools for `isolation` (netns, loopback, auto), or None for the host's
        loopback; isolation=netns where no namespace can be made raises RuntimeError."""
        tools = netns_tools() if isolation != "loopback" else None
        if isolation == "netns" and not tools:
            raise RuntimeError("isolation=netns, but no network namespace can be made here (it needs root, "
                               "unshare, nsenter and ip)")
        return tools

    def launch(self, argv: list, tools) -> None:
        """Start argv (in a network namespace of its own when tools, from isolation_tools())."""
        if tools:
            unshare, _nsenter, ip = tools
            # unshare execs the shell and the shell execs the daemon: one process, whose PID is Popen's
            argv = [unshare, "--net", "--", "/bin/sh", "-c", '"$0" link set lo up && exec "$@"', ip] + list(argv)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,  # pylint: disable=consider-using-with
                                         close_fds=True, preexec_fn=die_with_parent)  # pylint: disable=subprocess-popen-preexec-fn
        self.netns = tools

    def inside(self, argv: list) -> list:
        """argv as run beside the daemon (inside its network namespace when it has one)."""
        if self.netns and self.proc is not None:
            return [self.netns[1], "--net=/proc/%d/ns/net" % self.proc.pid, "--"] + list(argv)
        return list(argv)

    def run(self, argv: list, timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
        """Run a client beside the daemon and wait for it (RuntimeError when it outlives timeout)."""
        try:
            return subprocess.run(self.inside(argv), capture_output=True, text=True, check=False, timeout=timeout,
                                  env=env)
        except subprocess.TimeoutExpired:
            raise RuntimeError("%s did not return within %ds" % (" ".join(argv), timeout)) from None

    def exited(self) -> int | None:
        """The daemon's exit code once it ended, else None."""
        return None if self.proc is None else self.proc.poll()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def log_tail(self, lines: int = 30) -> list:
        try:
            with open(self.log_path, "rb") as handle:
                handle.seek(max(0, os.path.getsize(self.log_path) - 65536))
                text = handle.read().decode("utf-8", "replace")
        except OSError:
            return []
        return [line[:500] for line in text.splitlines()[-lines:]]
