"""The hosts of the lab: each a persisted mount namespace plus a network namespace.

Each host's mount namespace bind-mounts private directories over the real engine, run, tmp and
home paths (base.PRIVATE_PATHS); its network namespace is joined by a veth to a bridge in the
root namespace, and it runs its own sshd. Everything the lab starts runs inside its hosts'
namespaces, so teardown finds every lab process by its namespace and ends it by PID, and
nothing else. This part knows no engine: engines (lab/etcd.py, lab/dqlite.py) run through
exec(), spawn() and service().
"""
from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from .base import BRIDGE, DEFAULT_STATE, DEFAULT_SUBNET, FILES, MAX_HOSTS, PRIVATE_PATHS, Host, LabError, run


class Hosts:
    """Layout, commands inside hosts, set-up and teardown of the fleet."""

    def __init__(self, state: Path | str = DEFAULT_STATE, subnet: str = DEFAULT_SUBNET):
        self.state = Path(state)
        self.subnet = ipaddress.ip_network(subnet)
        self.bridge_address = str(self.subnet.network_address + 1)

    # ----------------------------------------------------------------- layout
    def hosts(self, count: int | None = None) -> list[Host]:
        recorded = self._recorded()
        if count is None:
            count = recorded.get("hosts", 0)
        moved = recorded.get("addresses", {})  # hosts given a new address by readdress()
        return [Host("h%d" % i, i, moved.get("h%d" % i, str(self.subnet.network_address + 10 + i)), self.state,
                     **self._host_fields())
                for i in range(1, count + 1)]

    def _host_fields(self) -> dict:
        """Host fields an engine sets from the lab's settings (say, etcd's TLS mode)."""
        return {}

    @property
    def backup_host(self) -> Host | None:
        """The lab's backup host (up(backup_host=True)): sshd only, no engine; the next host after
        the members."""
        recorded = self._recorded()
        if not recorded.get("backup_host"):
            return None
        return self.hosts(recorded.get("hosts", 0) + 1)[-1]

    def host(self, name: str) -> Host:
        if self.backup_host and self.backup_host.name == name:
            return self.backup_host
        for host in self.hosts():
            if host.name == name:
                return host
        raise LabError("no lab host named %r (hosts: %s)"
                       % (name, ", ".join(h.name for h in self.hosts()) or "none, the lab is down"))

    @property
    def inventory_path(self) -> Path:
        return self.state / "inventory.yml"

    @property
    def ssh_key(self) -> Path:
        return self.state / "ssh" / "id_ed25519"

    def _recorded(self) -> dict:
        try:
            return json.loads((self.state / "lab.json").read_text())
        except (OSError, ValueError):
            return {}

    def _record(self, **values) -> None:
        data = self._recorded()
        data.update(values)
        self.state.mkdir(parents=True, exist_ok=True)
        (self.state / "lab.json").write_text(json.dumps(data, indent=2))

    # --------------------------------------------------------------- commands
    @property
    def service_cmd(self) -> list[str]:
        """The host's service control, as a playbook would call it instead of systemctl."""
        return ["/usr/bin/python3", str(self.state / "bin" / "qrlab_service.py")]

    @property
    def client_cmd(self) -> list[str]:
        return ["/usr/bin/python3", str(self.state / "bin" / "qrlab_client.py")]

    @staticmethod
    def enter(host: Host, argv) -> list[str]:
        """argv, run inside the host's network and mount namespaces."""
        return ["nsenter", "--net=/run/netns/" + host.netns, "--mount=" + str(host.mntns), "--",
                *[str(a) for a in argv]]

    def exec(self, host: Host, argv, check=True, timeout=600, input=None):
        """Run argv inside the host and wait for it."""
        return run(self.enter(host, argv), check=check, timeout=timeout, input=input, cwd="/")

    def spawn(self, host: Host, argv, **kw) -> subprocess.Popen:
        """Start argv inside the host without waiting; the caller ends it."""
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        return subprocess.Popen(self.enter(host, argv), cwd="/", **kw)

    @staticmethod
    def stop_spawned(proc: subprocess.Popen, grace: float = 30) -> bool:
        """End a process spawn() started: SIGTERM, up to `grace` seconds, then SIGKILL (at once
        when grace is 0, for a daemon that may hang). True when it was still running."""
        if proc.poll() is not None:
            return False
        if grace > 0:
            proc.terminate()
            try:
                proc.wait(timeout=grace)
                return True
            except subprocess.TimeoutExpired:
                pass
        proc.kill()
        proc.wait(timeout=30)
        return True

    def service(self, host: Host, name: str, action: str, check=True):
        return self.exec(host, [*self.service_cmd, name, action], check=check)

    def client(self, host: Host, *args) -> dict:
        proc = self.exec(host, [*self.client_cmd, *args], check=False)
        try:
            result = json.loads(proc.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            detail = (proc.stderr or proc.stdout).strip()
            raise LabError("qrlab-client %s on %s: %s" % (" ".join(args), host.name, detail))
        if "error" in result:
            raise LabError("qrlab-client %s on %s: %s" % (" ".join(args), host.name, result["error"]))
        return result

    def _preflight(self, engine_tools=()) -> None:
        """Refuse early, before anything is made, when the machine cannot hold the lab."""
        if os.geteuid() != 0:
            raise LabError("the lab needs root (namespaces, mounts, links)")
        for tool in ("ip", "nsenter", "unshare", "mount", "umount", "ssh-keygen", "/usr/sbin/sshd",
                     "/usr/bin/python3", *engine_tools):
            if not shutil.which(tool):
                raise LabError("%s is not installed (see README: the set-up command installs it)" % tool)
        if self.subnet.prefixlen > 28 or not self.subnet.is_private:
            raise LabError("lab subnet %s must be a private range of at least /28" % self.subnet)

    def _make_dirs(self, hosts: list[Host]) -> None:
        for sub in ("ns", "bin", "ssh", "cp"):
            (self.state / sub).mkdir(parents=True, exist_ok=True)
        for name in ("qrlab_service.py", "qrlab_client.py"):
            shutil.copy2(FILES / name, self.state / "bin" / name)
        created = []
        for mounted in PRIVATE_PATHS.values():
            # Mount points must exist in the root namespace; remember the ones we made.
            missing = []
            path = Path(mounted)
            while not path.exists():
                missing.append(str(path))
                path = path.parent
            Path(mounted).mkdir(parents=True, exist_ok=True)
            created.extend(missing)
            # Another lab's `down` rmdirs the empty mount points it made, and removing a directory
            # detaches every bind mount on it in every namespace (ours included: the hosts lose
            # their data, config and log dirs mid-run). A file in it, here in the root namespace
            # (hidden under the mounts), makes that rmdir fail for every lab.
            keep = Path(mounted) / ".qrlab-mountpoint"
            if not keep.exists():
                keep.write_text("mount point of the quorum.recovery labs; keeps it from being removed under them\n")
        self._record(created=created)
        for host in hosts:
            for key in PRIVATE_PATHS:
                host.private(key).mkdir(parents=True, exist_ok=True)
            host.private("tmp").chmod(0o1777)
            host.private("vartmp").chmod(0o1777)
            host.private("root").chmod(0o700)
            for sub in ("sshd", "qrlab"):
                (host.private("run") / sub).mkdir(exist_ok=True)
            (host.private("etc") / "services").mkdir(exist_ok=True)
        # A private mount for the namespace files, so binding nsfs files onto them is allowed
        # and does not propagate anywhere.
        ns = self.state / "ns"
        if not self._is_mountpoint(ns):
            run(["mount", "--bind", ns, ns])
        run(["mount", "--make-private", ns])

    def _make_mount_ns(self, host: Host) -> None:
        host.mntns.touch()
        run(["unshare", "--mount=%s" % host.mntns, "--propagation", "private", "true"])
        script = ["set -e",
                  # drop this namespace's copy of the other hosts' namespace files
                  "umount -l %s || true" % (self.state / "ns"),
                  # and of any other lab's namespaces (several labs may share this machine)
                  "awk '$3 == \"nsfs\" {print $2}' /proc/self/mounts | while read -r m; do"
                  " umount -l \"$m\" || true; done"]
        for key, mounted in PRIVATE_PATHS.items():
            script.append("mount --bind %s %s" % (host.private(key), mounted))
        run(["nsenter", "--mount=%s" % host.mntns, "--", "sh", "-c", "\n".join(script)])

    def _make_network(self, hosts: list[Host]) -> None:
        run(["ip", "link", "add", BRIDGE, "type", "bridge"])
        run(["ip", "addr", "add", "%s/%d" % (self.bridge_address, self.subnet.prefixlen), "dev", BRIDGE])
        run(["ip", "link", "set", BRIDGE, "up"])
        for host in hosts:
            run(["ip", "netns", "add", host.netns])
            run(["ip", "link", "add", host.veth, "type", "veth", "peer", "name", "eth0",
                 "netns", host.netns])
            run(["ip", "link", "set", host.veth, "master", BRIDGE, "up"])
            inside = ["ip", "netns", "exec", host.netns]
            run(inside + ["ip", "link", "set", "lo", "up"])
            run(inside + ["ip", "addr", "add", "%s/%d" % (host.address, self.subnet.prefixlen), "dev", "eth0"])
            run(inside + ["ip", "link", "set", "eth0", "up"])
        self.check_routes(hosts)

    def check_routes(self, hosts: list[Host]) -> None:
        """Refuse to go on unless every lab address is routed to the lab bridge from here."""
        for host in hosts:
            out = run(["ip", "route", "get", host.address]).stdout
            if "dev %s " % BRIDGE not in out + " ":
                raise LabError("lab address %s is not routed to %s (ip route get: %s); refusing to "
                               "send it a packet" % (host.address, BRIDGE, out.strip()))
            inside = run(["ip", "netns", "exec", host.netns, "ip", "route", "show", "default"]).stdout
            if inside.strip():
                raise LabError("lab host %s has a default route: %s" % (host.name, inside.strip()))

    def _start_sshd(self, hosts: list[Host]) -> None:
        if not self.ssh_key.exists():
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "qrlab", "-f", self.ssh_key])
        pub = Path(str(self.ssh_key) + ".pub").read_text()
        for host in hosts:
            etc = host.private("etc")
            key = etc / "ssh_host_ed25519_key"
            if not key.exists():
                run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", host.name, "-f", key])
            (etc / "authorized_keys").write_text(pub)
            (etc / "sshd_config").write_text("\n".join([
                "ListenAddress %s" % host.address,
                "HostKey /etc/qrlab/ssh_host_ed25519_key",
                "AuthorizedKeysFile /etc/qrlab/authorized_keys",
                "PermitRootLogin prohibit-password",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",
                "UseDNS no",
                "PidFile /run/qrlab/sshd.pid",
                "Subsystem sftp /usr/lib/openssh/sftp-server",
                "MaxStartups 100:30:200",
                "MaxSessions 50",
                ""]))
            self.exec(host, ["/usr/sbin/sshd", "-f", "/etc/qrlab/sshd_config"])
        self._write_known_hosts()
        for host in hosts:
            self._wait(lambda h=host: self.ssh(h, ["true"], check=False).returncode == 0, 20,
                       "sshd on %s" % host.name)

    def _write_known_hosts(self) -> None:
        known = []
        for host in self.hosts(MAX_HOSTS):  # the members and the backup host, if any
            key = host.private("etc") / "ssh_host_ed25519_key.pub"
            if key.exists():
                known.append("%s %s" % (host.address, " ".join(key.read_text().split()[:2])))
        (self.state / "ssh" / "known_hosts").write_text("\n".join(known) + "\n")

    def ssh_args(self) -> list[str]:
        return ["-i", str(self.ssh_key), "-o", "UserKnownHostsFile=%s" % (self.state / "ssh" / "known_hosts"),
                "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
                "-o", "ControlMaster=auto", "-o", "ControlPersist=60s",
                "-o", "ControlPath=%s/%%C" % (self.state / "cp")]

    def ssh(self, host: Host, argv, check=True):
        return run(["ssh", *self.ssh_args(), "root@" + host.address, *argv], check=check, timeout=60)

    # --------------------------------------------------------------- services
    def start_all(self, hosts: list[Host], service: str) -> None:
        """Start a service on every host at once: a restarted member waits for a quorum of its
        peers before it serves, so starting them one by one would wait forever."""
        procs = [self.spawn(h, [*self.service_cmd, service, "start"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
                 for h in hosts]
        failed = []
        for host, proc in zip(hosts, procs):
            _out, err = proc.communicate(timeout=180)
            if proc.returncode:
                failed.append("%s: %s%s" % (host.name, err.strip(), self._log_tail(host, service)))
        if failed:
            raise LabError("%s did not start on %s" % (service, "; ".join(failed)))

    def _log_tail(self, host: Host, service: str) -> str:
        try:
            lines = (host.private("log") / (service + ".log")).read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n--- last lines of %s.log on %s ---\n%s" % (service, host.name, "\n".join(lines[-15:]))

    # ------------------------------------------------------------------- down
    def lab_processes(self) -> list[int]:
        """PIDs of processes inside any lab host namespace (so: started by the lab or its users)."""
        inodes = set()
        for host in self.hosts(MAX_HOSTS):
            for path in (Path("/run/netns") / host.netns, host.mntns):
                try:
                    if path.stat().st_size == 0 and self._is_mountpoint(path):
                        inodes.add(path.stat().st_ino)
                except OSError:
                    pass
        pids = []
        if not inodes:
            return pids
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            for ns in ("net", "mnt"):
                try:
                    if os.stat(entry / "ns" / ns).st_ino in inodes:
                        pids.append(int(entry.name))
                        break
                except OSError:
                    pass
        return pids

    def down(self, keep_state: bool = False) -> None:
        self._close_ssh_masters()
        pids = self.lab_processes()
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and any(self._alive(p) for p in pids):
                time.sleep(0.05)
            pids = [p for p in pids if self._alive(p)]
            if not pids:
                break
        if pids:
            raise LabError("lab processes did not die: %s" % pids)
        for host in self.hosts(MAX_HOSTS):
            if (Path("/run/netns") / host.netns).exists():
                run(["ip", "netns", "del", host.netns])
            # the veth usually goes with its namespace; delete it if it outlived it
            if Path("/sys/class/net", host.veth).exists():
                run(["ip", "link", "del", host.veth], check=False)
            if host.mntns.exists() and self._is_mountpoint(host.mntns):
                run(["umount", host.mntns])
        if Path("/sys/class/net", BRIDGE).exists():
            run(["ip", "link", "del", BRIDGE])
        stale = [h.veth for h in self.hosts(MAX_HOSTS) if Path("/sys/class/net", h.veth).exists()]
        if stale:
            raise LabError("lab links still present: %s" % stale)
        ns = self.state / "ns"
        while self._is_mountpoint(ns):
            run(["umount", ns])
        leftover = [m for m in self._mounts() if m == str(self.state) or m.startswith(str(self.state) + "/")]
        if leftover:
            raise LabError("lab mounts still present, not removing %s: %s" % (self.state, leftover))
        created = self._recorded().get("created", [])
        if not keep_state and self.state.exists():
            shutil.rmtree(self.state)
            for path in sorted(created, key=len, reverse=True):
                try:
                    os.rmdir(path)  # only the empty mount points the lab itself made
                except OSError:
                    pass
        elif self.state.exists():
            self._record(up=False)

    def _close_ssh_masters(self) -> None:
        cp = self.state / "cp"
        if not cp.is_dir():
            return
        for sock in cp.iterdir():
            run(["ssh", "-o", "ControlPath=%s" % sock, "-O", "exit", "lab"], check=False, timeout=10)

    @staticmethod
    def _alive(pid: int) -> bool:
        try:
            stat = Path("/proc/%d/stat" % pid).read_text()
        except OSError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")

    @staticmethod
    def _mounts() -> list[str]:
        with open("/proc/self/mountinfo") as f:
            return [line.split()[4].replace("\\040", " ") for line in f]

    def _is_mountpoint(self, path: Path) -> bool:
        return str(path) in self._mounts()

    @staticmethod
    def _wait(predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if predicate():
                    return
            except (LabError, ValueError, KeyError, subprocess.TimeoutExpired):
                pass
            time.sleep(0.5)
        raise LabError("timed out after %ss waiting for %s" % (timeout, what))
