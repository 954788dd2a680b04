"""Faults the lab can inflict on its hosts: power loss, partitions, a new address, damaged bytes,
and enough writes to make the engines cut snapshots and new log files."""
from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import os
import signal
import subprocess
import time

from .base import Host, LabError, run
from .hosts import Hosts


@contextlib.contextmanager
def _realtime_priority():
    """Run the block at real-time priority (SCHED_FIFO), so that processes busy on every core
    cannot preempt it; at the usual priority when the machine refuses."""
    try:
        before = os.sched_getscheduler(0), os.sched_getparam(0)
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(50))
    except (AttributeError, OSError):
        yield
        return
    try:
        yield
    finally:
        os.sched_setscheduler(0, before[0], before[1])


class Faults(Hosts):
    """What goes wrong with machines, done to the lab's hosts. Engine-specific steps (a data
    directory named after an address, how a client reaches a member) come from the Lab that
    composes this with the engines: client_target(), _readdress_check(), _readdress_follow()."""

    def kill(self, host: Host, service: str) -> None:
        """Power loss of one engine: SIGKILL, no clean shutdown."""
        self.service(host, service, "kill")

    def power_off(self, service: str) -> None:
        for host in self.hosts():
            self.kill(host, service)

    def power_off_mid_write(self, host: Host, engine: str, prefix: str = "midwrite", count: int = 5000,
                            size: int = 200, seconds: float = 2.0) -> None:
        """Power loss of every member of an engine while a client on `host` is writing to it."""
        writer = self.spawn(host, [*self.client_cmd, engine + "-put", *self.client_target(host, engine),
                                   "--prefix", prefix, "--count", str(count), "--size", str(size)])
        try:
            time.sleep(seconds)
            self.power_off(engine)
        finally:
            writer.kill()
            writer.wait()

    def power_off_mid_writes(self, engine: str = "etcd", seconds: float = 2.0, prefix: str = "acked",
                             size: int = 200, writers_per_host: int = 1) -> dict:
        """Power loss of every member of an engine while clients on every host write to it.

        `writers_per_host` writers on each host (inside the host) put unique keys
        (<prefix>-<host>-<n>-<i>) to the host's own member and write down, fsynced, in the host's
        /var/tmp/qrlab-acks/, each key the engine acknowledged. After `seconds`,
        every member is SIGKILLed in one quick loop from here, then the writers are ended.
        Returns {"acknowledged": set of keys, "kill_spread_ms": time from the first kill to the
        last, "writers": {writer: acknowledged and failed puts}}. Only etcd has such a writer."""
        if engine != "etcd":
            raise LabError("power_off_mid_writes has a writer for etcd only, not %r" % engine)
        hosts = self.hosts()
        writers = []
        try:
            for host in hosts:
                for number in range(writers_per_host):
                    name = "%s-%s-%d-" % (prefix, host.name, number)
                    ack = "/var/tmp/qrlab-acks/%s.keys" % name.rstrip("-")
                    host.real_path(ack).parent.mkdir(exist_ok=True)
                    host.real_path(ack).unlink(missing_ok=True)
                    proc = self.spawn(host, [*self.client_cmd, "etcd-ack-writer", *self.client_target(host, engine),
                                             "--prefix", name, "--size", str(size), "--ack-file", ack],
                                      stdout=subprocess.PIPE, text=True)
                    writers.append((name, host, ack, proc))
            time.sleep(seconds)
            spread = self.kill_all_at_once(engine, hosts)
        finally:
            report = {}
            for name, host, ack, proc in writers:
                self.stop_spawned(proc, grace=10)
                with proc.stdout:
                    out = proc.stdout.read()
                try:
                    report[name] = json.loads(out.strip().splitlines()[-1])
                except (ValueError, IndexError):
                    report[name] = {"error": "no report (exit %s)" % proc.returncode}
        acknowledged = set()
        for name, host, ack, proc in writers:
            text = host.real_path(ack).read_text() if host.real_path(ack).exists() else ""
            acknowledged.update(line for line in text.split("\n")[:-1] if line)  # a last line without \n is torn
        return {"acknowledged": acknowledged, "kill_spread_ms": spread * 1000, "writers": report}

    def kill_all_at_once(self, service: str, hosts: list[Host] | None = None) -> float:
        """SIGKILL the service on every host within as short a time as this machine allows: the
        PIDs are read first, then killed in one loop. Returns the seconds from first to last kill."""
        pids = []
        lab_pids = set(self.lab_processes())
        for host in hosts or self.hosts():
            pid_file = host.private("run") / "qrlab" / (service + ".pid")
            try:
                pid = int(pid_file.read_text().strip())
            except (OSError, ValueError):
                raise LabError("%s is not running on %s (no pid file)" % (service, host.name))
            if pid not in lab_pids or not self._alive(pid):
                raise LabError("%s (pid %d) is not running on %s" % (service, pid, host.name))
            pids.append((host, pid_file, pid))
        times = []
        with _realtime_priority():  # the busy members must not delay the kills between them
            for _host, _pid_file, pid in pids:
                os.kill(pid, signal.SIGKILL)
                times.append(time.perf_counter())
        for host, pid_file, pid in pids:
            self._wait(lambda p=pid: not self._alive(p), 10, "%s (pid %d) on %s to die" % (service, pid, host.name))
            pid_file.unlink(missing_ok=True)  # as the service script's own kill does
        return times[-1] - times[0]

    def readdress(self, host: Host, new_address: str) -> Host:
        """The host's address changes, as when a machine moves to another network or DHCP hands
        it another lease: its link gets the new address and loses the old one, and sshd, the
        service definitions (dqlite-demo --api/--db, etcd URLs), known_hosts and the inventory
        follow. The engines' data stays on the host. The go-dqlite app keeps it in
        <dir>/<db address>, so that directory is renamed to the new address, as the operator who
        moved the node would do; what is IN it (info.yaml, cluster.yaml, the raft membership)
        still names the old address: that is what a recovery has to fix. etcd's membership is
        left naming the old peer URL too. Both engines must be stopped on the host first (a
        running daemon keeps its old sockets). Returns the host with its new address."""
        new_ip = ipaddress.ip_address(new_address)
        taken = {h.address: h.name for h in self.hosts() if h.name != host.name}
        if (new_ip not in self.subnet or new_ip in (self.subnet.network_address, self.subnet.broadcast_address)
                or str(new_ip) == self.bridge_address):
            raise LabError("%s is not a free host address of the lab subnet %s" % (new_ip, self.subnet))
        if str(new_ip) in taken:
            raise LabError("%s is already the address of %s" % (new_ip, taken[str(new_ip)]))
        for service in self.ENGINE_SERVICES:
            if self.service(host, service, "status", check=False).returncode != 3:
                raise LabError("stop %s on %s before changing its address" % (service, host.name))
        old = host
        data_moves = self._engine_data_moves(old, dataclasses.replace(old, address=str(new_ip)))
        self._close_ssh_masters()  # they point at the old address
        sshd_pid = (old.private("run") / "qrlab" / "sshd.pid")
        inside = ["ip", "netns", "exec", old.netns, "ip"]
        # the old one goes first: deleting a primary address also deletes the secondaries of its subnet
        run(inside + ["addr", "del", "%s/%d" % (old.address, self.subnet.prefixlen), "dev", "eth0"])
        run(inside + ["addr", "add", "%s/%d" % (new_ip, self.subnet.prefixlen), "dev", "eth0"])
        moved = dict(self._recorded().get("addresses", {}), **{old.name: str(new_ip)})
        self._record(addresses=moved)
        new = self.host(old.name)
        self.check_routes([new])
        # sshd listened on the old address only: end it (the lab started it) and start it anew
        try:
            pid = int(sshd_pid.read_text().strip())
        except (OSError, ValueError):
            pid = None
        if pid and self._alive(pid) and pid in self.lab_processes():
            os.kill(pid, signal.SIGTERM)
            self._wait(lambda: not self._alive(pid), 10, "sshd (pid %d) on %s to stop" % (pid, old.name))
        self._start_sshd([new])
        for before, after in data_moves:
            if before.exists():
                before.rename(after)
        self._follow_new_address(new)
        return new

    def partition(self, host: Host) -> None:
        run(["ip", "link", "set", host.veth, "down"])

    def heal(self, host: Host) -> None:
        run(["ip", "link", "set", host.veth, "up"])

    def corrupt(self, host: Host, path: str, offset: int | None = None, flip: int = 1,
                truncate: int | None = None) -> dict:
        """Flip `flip` bytes at `offset` (xor 0xFF), or truncate the file to `truncate` bytes."""
        real = host.real_path(path)
        if not real.is_file():
            raise LabError("%s on %s (%s) is not a file" % (path, host.name, real))
        size = real.stat().st_size
        if truncate is not None:
            if not 0 <= truncate <= size:
                raise LabError("cannot truncate %s (%d bytes) to %d" % (path, size, truncate))
            with open(real, "r+b") as f:
                f.truncate(truncate)
            return {"path": path, "truncated_from": size, "truncated_to": truncate}
        if offset is None or not 0 <= offset <= size - flip:
            raise LabError("offset %s is outside %s (%d bytes)" % (offset, path, size))
        with open(real, "r+b") as f:
            f.seek(offset)
            before = f.read(flip)
            f.seek(offset)
            f.write(bytes(b ^ 0xFF for b in before))
        return {"path": path, "offset": offset, "before": before.hex(), "after": bytes(b ^ 0xFF for b in before).hex()}

    def churn(self, host: Host, engine: str, count: int, size: int, prefix: str = "churn") -> None:
        """Enough writes to make dqlite take snapshots, or etcd cut WAL and .snap files."""
        self.client(host, engine + "-put", *self.client_target(host, engine), "--prefix", prefix,
                    "--count", str(count), "--size", str(size))
