"""The lab: this one machine turned into a small fleet of hosts.

Each host is a persisted mount namespace (private directories bind-mounted over the real
engine, run, tmp and home paths) plus a network namespace joined by a veth to a bridge in the
root namespace. Each runs its own sshd, and real etcd and dqlite members started through the
host's service script. Everything the lab starts runs inside its hosts' namespaces, so teardown
can find every lab process by its namespace and end it by PID, and nothing else.
"""
from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
FILES = HERE / "files"

# One machine can hold several labs side by side (say, two developers' test runs) when each has
# its own name, state directory and subnet. The name prefixes every bridge, netns and veth.
NAME = os.environ.get("QRLAB_NAME", "qrlab")
if not (NAME.isalnum() and NAME.islower() and 1 <= len(NAME) <= 8):
    raise SystemExit("QRLAB_NAME=%r: use 1-8 lowercase letters or digits" % NAME)
DEFAULT_STATE = Path(os.environ.get("QRLAB_STATE", "/var/lib/" + NAME))
DEFAULT_SUBNET = os.environ.get("QRLAB_SUBNET", "10.254.77.0/24")
BRIDGE = NAME + "0"
MAX_HOSTS = 7

ETCD_DIR = "/var/lib/etcd"
DQLITE_DIR = "/var/snap/microk8s/current/var/kubernetes/backend"
ETCD_CLIENT_PORT, ETCD_PEER_PORT = 2379, 2380
DQLITE_DB_PORT, DQLITE_API_PORT = 9001, 8001

# Paths every host sees as its own. Anything not listed here is shared by all hosts.
PRIVATE_PATHS = {
    "etcd": ETCD_DIR,
    "dqlite": DQLITE_DIR,
    "run": "/run",
    "etc": "/etc/qrlab",
    "log": "/var/log/qrlab",
    "root": "/root",
    "tmp": "/tmp",
    "vartmp": "/var/tmp",
    "backups": "/var/backups",
}


def expected_dqlite_voters(nodes: int) -> int:
    """Voters the go-dqlite app (dqlite-demo) settles on: it keeps an odd count, at most 3.

    Seen here: 1 node -> 1 voter; 2 -> 1 voter and a spare; 3 -> 3 voters; more -> 3 voters and
    stand-bys. dqlite-demo has no flag to change its target of 3 voters.
    """
    return 1 if nodes < 3 else 3


class LabError(RuntimeError):
    """The lab cannot do what was asked; the message says why."""


def run(argv, check=True, **kw):
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=False, **kw)
    if check and proc.returncode != 0:
        raise LabError("%s failed (%d): %s" % (" ".join(map(str, argv)), proc.returncode,
                                               (proc.stderr or proc.stdout).strip()))
    return proc


@dataclass(frozen=True)
class Host:
    name: str
    index: int
    address: str
    state: Path

    @property
    def netns(self) -> str:
        return NAME + "-" + self.name

    @property
    def veth(self) -> str:
        return "%sv%d" % ("qr" if NAME == "qrlab" else NAME, self.index)

    @property
    def mntns(self) -> Path:
        return self.state / "ns" / (self.name + ".mnt")

    @property
    def root(self) -> Path:
        return self.state / "hosts" / self.name

    def private(self, key: str) -> Path:
        return self.root / key

    def real_path(self, path: str) -> Path:
        """Where a path as this host sees it lives in the root namespace."""
        path = os.path.normpath(path)
        for key, mounted in sorted(PRIVATE_PATHS.items(), key=lambda kv: -len(kv[1])):
            if path == mounted or path.startswith(mounted + "/"):
                return self.private(key) / os.path.relpath(path, mounted)
        raise LabError("%s is not a private path of %s; shared paths cannot be faulted per host"
                       % (path, self.name))

    @property
    def etcd_client_url(self) -> str:
        return "http://%s:%d" % (self.address, ETCD_CLIENT_PORT)

    @property
    def dqlite_address(self) -> str:
        return "%s:%d" % (self.address, DQLITE_DB_PORT)

    @property
    def dqlite_api(self) -> str:
        return "%s:%d" % (self.address, DQLITE_API_PORT)

    @property
    def dqlite_data_dir(self) -> str:
        return "%s/%s" % (DQLITE_DIR, self.dqlite_address)


class Lab:
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
        return [Host("h%d" % i, i, moved.get("h%d" % i, str(self.subnet.network_address + 10 + i)), self.state)
                for i in range(1, count + 1)]

    def host(self, name: str) -> Host:
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

    # -------------------------------------------------------------------- up
    def up(self, count: int = 3, keys: int = 1000, etcd_snapshot_count: int = 1000) -> list[Host]:
        if not 1 <= count <= MAX_HOSTS:
            raise LabError("host count must be 1..%d, got %d" % (MAX_HOSTS, count))
        self._preflight()
        self.down()  # whatever a crashed run left behind
        hosts = self.hosts(count)
        self._record(hosts=count, subnet=str(self.subnet), created=[], up=False, addresses={},
                     etcd_snapshot_count=etcd_snapshot_count)
        try:
            self._make_dirs(hosts)
            for host in hosts:  # mount namespaces first, so none holds a netns mount
                self._make_mount_ns(host)
            self._make_network(hosts)
            self._start_sshd(hosts)
            self._write_services(hosts, etcd_snapshot_count)
            self._write_inventory(hosts)
            self.start_etcd(hosts)
            self.start_dqlite(hosts)
            if keys:
                self.load_keys(hosts[0], keys)
            self._record(up=True)
        except BaseException:
            self.down(keep_state=True)
            raise
        return hosts

    def _preflight(self) -> None:
        if os.geteuid() != 0:
            raise LabError("the lab needs root (namespaces, mounts, links)")
        for tool in ("ip", "nsenter", "unshare", "mount", "umount", "ssh-keygen", "/usr/sbin/sshd",
                     "etcd", "etcdctl", "dqlite-demo", "dqlite", "/usr/bin/python3"):
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
        for host in self.hosts():
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

    def _write_services(self, hosts: list[Host], etcd_snapshot_count: int) -> None:
        cluster = ",".join("%s=http://%s:%d" % (h.name, h.address, ETCD_PEER_PORT) for h in hosts)
        for host in hosts:
            etcd = ["etcd", "--name", host.name, "--data-dir", ETCD_DIR,
                    "--listen-client-urls", "http://%s:%d,http://127.0.0.1:%d" % (host.address, ETCD_CLIENT_PORT, ETCD_CLIENT_PORT),
                    "--advertise-client-urls", host.etcd_client_url,
                    "--listen-peer-urls", "http://%s:%d" % (host.address, ETCD_PEER_PORT),
                    "--initial-advertise-peer-urls", "http://%s:%d" % (host.address, ETCD_PEER_PORT),
                    "--initial-cluster", cluster, "--initial-cluster-token", "qrlab",
                    "--initial-cluster-state", "new", "--snapshot-count", str(etcd_snapshot_count)]
            dqlite = ["dqlite-demo", "--api", host.dqlite_api, "--db", host.dqlite_address, "--dir", DQLITE_DIR]
            if host is not hosts[0]:
                dqlite += ["--join", hosts[0].dqlite_address]
            services = host.private("etc") / "services"
            (services / "etcd.json").write_text(json.dumps(
                {"argv": etcd, "stop_timeout": 15, "ready_port": ETCD_CLIENT_PORT}, indent=1))
            (services / "dqlite.json").write_text(json.dumps(
                {"argv": dqlite, "stop_timeout": 10, "ready_port": DQLITE_API_PORT, "ready_timeout": 60},
                indent=1))

    def _write_inventory(self, hosts: list[Host]) -> None:
        import yaml  # controller side only

        ssh_args = " ".join(self.ssh_args()[2:])  # the key goes in its own variable
        inventory = {"all": {
            "vars": {
                "ansible_user": "root",
                "ansible_ssh_private_key_file": str(self.ssh_key),
                "ansible_ssh_args": ssh_args,
                "ansible_python_interpreter": "/usr/bin/python3",
                "qrlab_service": " ".join(self.service_cmd),
                "qrlab_client": " ".join(self.client_cmd),
                "etcd_data_dir": ETCD_DIR,
                "dqlite_dir": DQLITE_DIR,
            },
            "children": {
                "etcd": {"hosts": {h.name: None for h in hosts}},
                # how an operator's inventory tells the recover role about this layout
                "dqlite": {"hosts": {h.name: None for h in hosts}, "vars": {
                    "recover_flavor": "go-dqlite-app",
                    "recover_data_dir": "{{ dqlite_data_dir }}",
                    "recover_address": "{{ dqlite_address }}",
                    "recover_service_control": "commands",
                    "recover_service_commands": {
                        action: "%s dqlite %s" % (" ".join(self.service_cmd), action)
                        for action in ("start", "stop", "status")},
                    "recover_verify_query": "SELECT COUNT(*) FROM model",
                }},
            },
            "hosts": {h.name: {
                "ansible_host": h.address,
                "etcd_client_url": h.etcd_client_url,
                "dqlite_address": h.dqlite_address,
                "dqlite_api": h.dqlite_api,
                "dqlite_data_dir": h.dqlite_data_dir,
            } for h in hosts},
        }}
        self.inventory_path.write_text("# written by the quorum.recovery lab; rewritten on every `up`\n"
                                       + yaml.safe_dump(inventory, sort_keys=False))

    # ---------------------------------------------------------------- engines
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

    def start_etcd(self, hosts: list[Host]) -> None:
        self.start_all(hosts, "etcd")
        self._wait(lambda: self.etcd_ready(hosts), 60, "etcd cluster health")

    def start_dqlite(self, hosts: list[Host]) -> None:
        for host in hosts:  # the first bootstraps, the others join it one by one
            if self.service(host, "dqlite", "start", check=False).returncode:
                raise LabError("dqlite did not start on %s%s" % (host.name, self._log_tail(host, "dqlite")))
        want = expected_dqlite_voters(len(hosts))
        self._wait(lambda: self._dqlite_settled(hosts, want), 60,
                   "%d dqlite voters among %d nodes" % (want, len(hosts)))

    def _dqlite_settled(self, hosts: list[Host], voters: int) -> bool:
        nodes = self.dqlite_nodes(hosts[0])
        return (sorted(n["Address"] for n in nodes) == sorted(h.dqlite_address for h in hosts)
                and sum(1 for n in nodes if n["Role"] == "voter") == voters)

    def _log_tail(self, host: Host, service: str) -> str:
        try:
            lines = (host.private("log") / (service + ".log")).read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n--- last lines of %s.log on %s ---\n%s" % (service, host.name, "\n".join(lines[-15:]))

    def etcd_members(self, host: Host) -> list[dict]:
        proc = self.exec(host, ["etcdctl", "--endpoints", host.etcd_client_url, "-w", "json",
                                "--command-timeout=5s", "member", "list"])
        return json.loads(proc.stdout).get("members", [])

    def etcd_status(self, host: Host) -> dict | None:
        proc = self.exec(host, ["etcdctl", "--endpoints", host.etcd_client_url, "-w", "json",
                                "--command-timeout=3s", "endpoint", "status"], check=False)
        if proc.returncode:
            return None
        return json.loads(proc.stdout)[0]["Status"]

    def etcd_ready(self, hosts: list[Host]) -> bool:
        statuses = [self.etcd_status(h) for h in hosts]
        if any(s is None for s in statuses):
            return False
        leaders = {s["leader"] for s in statuses}
        return len(leaders) == 1 and 0 not in leaders

    def dqlite_nodes(self, host: Host) -> list[dict]:
        proc = self.exec(host, ["dqlite", "-s", host.dqlite_address, "-f", "json", "demo", ".cluster"],
                         check=False, timeout=30)
        if proc.returncode:
            return []
        try:
            nodes = json.loads(proc.stdout)
        except ValueError:
            return []
        roles = {0: "voter", 1: "stand-by", 2: "spare"}
        return [{"ID": n.get("ID"), "Address": n.get("Address"),
                 "Role": roles.get(n.get("Role"), str(n.get("Role")))} for n in nodes]

    def dqlite_leader(self, host: Host) -> str:
        proc = self.exec(host, ["dqlite", "-s", host.dqlite_address, "demo", ".leader"], check=False, timeout=30)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    @staticmethod
    def client_target(host: Host, engine: str) -> list[str]:
        """The qrlab-client arguments that point it at this host's member of an engine."""
        return ["--endpoint", host.etcd_client_url] if engine == "etcd" else ["--api", host.dqlite_api]

    def load_keys(self, host: Host, count: int, prefix: str = "key", start: int = 0, size: int = 32) -> None:
        for engine in ("etcd", "dqlite"):
            self.client(host, engine + "-put", *self.client_target(host, engine), "--prefix", prefix,
                        "--count", str(count), "--start", str(start), "--size", str(size))

    def check_keys(self, host: Host, engine: str, count: int, prefix: str = "key", start: int = 0,
                   size: int = 32) -> dict:
        proc = self.exec(host, [*self.client_cmd, engine + "-check", *self.client_target(host, engine), "--prefix", prefix,
                                "--count", str(count), "--start", str(start), "--size", str(size)], check=False)
        return json.loads(proc.stdout.strip().splitlines()[-1])

    # ----------------------------------------------------------------- faults
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
        for service in ("dqlite", "etcd"):
            if self.service(host, service, "status", check=False).returncode != 3:
                raise LabError("stop %s on %s before changing its address" % (service, host.name))
        old = host
        data_before = old.real_path(old.dqlite_data_dir)
        moved_host = Host(old.name, old.index, str(new_ip), old.state)
        data_after = moved_host.real_path(moved_host.dqlite_data_dir)
        if data_before.exists() and data_after.exists():
            raise LabError("%s already exists on %s; not moving the dqlite data onto it" % (data_after, old.name))
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
        if data_before.exists():
            data_before.rename(data_after)
        hosts = self.hosts()
        self._write_services(hosts, self._recorded().get("etcd_snapshot_count", 1000))
        self._write_inventory(hosts)
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

    # ----------------------------------------------------------------- report
    def table(self) -> str:
        hosts = self.hosts()
        if not hosts:
            return "the lab is down"
        dq_nodes = {}
        for host in hosts:
            dq_nodes = {n["Address"]: n for n in self.dqlite_nodes(host)} or dq_nodes
            if dq_nodes:
                break
        rows = [("host", "address", "sshd", "etcd", "etcd role", "etcd rev", "dqlite", "dqlite role")]
        for host in hosts:
            sshd = "up" if self.ssh(host, ["true"], check=False).returncode == 0 else "DOWN"
            etcd = self.service(host, "etcd", "status", check=False).returncode == 0
            dq = self.service(host, "dqlite", "status", check=False).returncode == 0
            status = self.etcd_status(host) if etcd else None
            role = "-"
            if status:
                role = "leader" if status["leader"] == status["header"]["member_id"] else "follower"
            rows.append((host.name, host.address, sshd, "running" if etcd else "stopped", role,
                         str(status["header"]["revision"]) if status else "-",
                         "running" if dq else "stopped",
                         dq_nodes.get(host.dqlite_address, {}).get("Role", "-")))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
