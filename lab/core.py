"""The lab: this one machine turned into a small fleet of hosts running real etcd and dqlite.

The parts, one job each: lab/base.py (names, paths, ports, the Host record), lab/hosts.py
(namespaces, mounts, network, sshd, commands inside a host, teardown by PID), lab/etcd.py and
lab/dqlite.py (each engine's service, readiness and status), lab/faults.py (what goes wrong).
Lab composes them and owns what spans every engine: bringing the fleet up, the Ansible
inventory, the data client and the status table.

An engine that joins the lab (LXD, a MicroK8s-shaped member) is a module of its own like
lab/etcd.py: a mixin with its service definition, start and readiness; its private data
directory in base.PRIVATE_PATHS; then a line in each of Lab's ENGINE_SERVICES, up(),
_write_host_configs(), _engine_data_moves() and client_target().
"""
from __future__ import annotations

import json
from pathlib import Path

from .base import (BRIDGE, DEFAULT_STATE, DEFAULT_SUBNET, DQLITE_DIR, ETCD_DIR, MAX_HOSTS, NAME,
                   PRIVATE_PATHS, Host, LabError, run)
from .dqlite import DqliteEngine, expected_dqlite_voters
from .etcd import EtcdEngine, wanted_etcd_tls, wanted_etcd_version
from .faults import Faults
from .lxd import LxdProduct

# the names scripts, benchmarks and tests import from lab.core since it was one file
__all__ = ["BRIDGE", "DEFAULT_STATE", "DEFAULT_SUBNET", "DQLITE_DIR", "ETCD_DIR", "MAX_HOSTS", "NAME",
           "PRIVATE_PATHS", "Host", "Lab", "LabError", "expected_dqlite_voters", "run"]


class Lab(EtcdEngine, DqliteEngine, LxdProduct, Faults):
    """A fleet of lab hosts with an etcd and a dqlite cluster across them (and, with lxd=True,
    an LXD cluster)."""

    @property
    def ENGINE_SERVICES(self) -> tuple:  # noqa: N802 (was a constant before LXD was optional)
        """Services that hold engine data, in the order a host stops them."""
        return ("dqlite", "etcd") + (("lxd",) if self._recorded().get("lxd") else ())

    def __init__(self, state: Path | str = DEFAULT_STATE, subnet: str = DEFAULT_SUBNET,
                 etcd_version: str | None = None, etcd_tls: bool | None = None):
        """etcd_version "3.4" or "3.5" (default: env QRLAB_ETCD_VERSION, else 3.4) and etcd_tls
        (default: env QRLAB_ETCD_TLS=1) are what up() brings up; a lab that is up answers
        Lab.etcd_version and Lab.etcd_tls with what it was brought up with."""
        super().__init__(state, subnet)
        self._etcd_version_wanted = wanted_etcd_version(etcd_version)
        self._etcd_tls_wanted = wanted_etcd_tls(etcd_tls)

    def up(self, count: int = 3, keys: int = 1000, etcd_snapshot_count: int = 1000,
           etcd_version: str | None = None, etcd_tls: bool | None = None, backup_host: bool = False,
           lxd: bool = False) -> list[Host]:
        """Bring up `count` hosts with healthy etcd and dqlite clusters, `keys` keys in each, and
        with lxd=True an LXD cluster too (lab/lxd.py). etcd_version and etcd_tls default to what
        the Lab was made with. backup_host adds one more host, with sshd and no engine, in the
        inventories' group backup_hosts."""
        if not 1 <= count <= MAX_HOSTS - (1 if backup_host else 0):
            raise LabError("host count must be 1..%d, got %d" % (MAX_HOSTS, count))
        etcd_version = wanted_etcd_version(etcd_version or self._etcd_version_wanted)
        etcd_tls = self._etcd_tls_wanted if etcd_tls is None else bool(etcd_tls)
        self._preflight(self._etcd_tools(etcd_version) + self.DQLITE_TOOLS + (("openssl",) if etcd_tls else ())
                        + (self.LXD_TOOLS if lxd else ()))
        self.down()  # whatever a crashed run left behind
        self._record(hosts=count, subnet=str(self.subnet), created=[], up=False, addresses={},
                     etcd_snapshot_count=etcd_snapshot_count, etcd_version=etcd_version, etcd_tls=etcd_tls,
                     backup_host=backup_host, lxd=False)
        hosts = self.hosts(count)
        every = self.hosts(count + 1) if backup_host else hosts
        try:
            self._make_dirs(every)
            for host in every:  # mount namespaces first, so none holds a netns mount
                self._make_mount_ns(host)
            self._make_network(every)
            self._start_sshd(every)
            if etcd_tls:
                self._make_etcd_pki(hosts)
            self._write_host_configs(hosts)
            self.start_etcd(hosts)
            self.start_dqlite(hosts)
            if keys:
                self.load_keys(hosts[0], keys)
            if lxd:
                self.add_lxd(hosts)
            self._record(up=True)
        except BaseException:
            self.down(keep_state=True)
            raise
        return hosts

    def _write_host_configs(self, hosts: list[Host]) -> None:
        """Every host's service definitions and the inventory, for the hosts' addresses now."""
        etcd_snapshot_count = self._recorded().get("etcd_snapshot_count", 1000)
        for host in hosts:
            self._write_etcd_service(host, hosts, etcd_snapshot_count)
            self._write_dqlite_service(host, hosts)
        self._write_inventory(hosts)
        self._write_etcd_inventory(hosts)
        if self._recorded().get("lxd"):
            for host in hosts:
                self._write_lxd_service(host)
            self._write_lxd_inventory(hosts)

    def _engine_data_moves(self, old: Host, new: Host) -> list:
        """(before, after) data directories that follow a host to its new address."""
        return [self._dqlite_moved_data(old, new)]

    def _follow_new_address(self, host: Host) -> None:
        """After readdress(): the host's certificates name its new address, and every service
        definition and inventory names it too."""
        if self.etcd_tls:
            self._issue_etcd_host_certs(host)
        self._write_host_configs(self.hosts())

    def _connection_vars(self) -> dict:
        return {
            "ansible_user": "root",
            "ansible_ssh_private_key_file": str(self.ssh_key),
            "ansible_ssh_args": " ".join(self.ssh_args()[2:]),  # the key goes in its own variable
            "ansible_python_interpreter": "/usr/bin/python3",
            "qrlab_service": " ".join(self.service_cmd),
            "qrlab_client": " ".join(self.client_cmd),
        }

    def _write_inventory(self, hosts: list[Host]) -> None:
        """inventory.yml: every host in groups etcd and dqlite, the dqlite group carrying the
        recover role's variables."""
        inventory = {"all": {
            "vars": {
                **self._connection_vars(),
                "etcd_data_dir": ETCD_DIR,
                "dqlite_dir": DQLITE_DIR,
            },
            "children": {
                "etcd": {"hosts": {h.name: None for h in hosts}},
                "dqlite": self._dqlite_inventory_group(hosts),
                **self._backup_group(),
            },
            "hosts": {h.name: {
                "ansible_host": h.address,
                "etcd_client_url": h.etcd_client_url,
                **self._dqlite_host_vars(h),
            } for h in hosts},
        }}
        self._write_yaml(self.inventory_path, inventory)

    def _write_etcd_inventory(self, hosts: list[Host]) -> None:
        """inventory-etcd.yml: the same hosts with the recover role's variables for etcd. A
        second file, because group variables of two groups on the same hosts would collide."""
        self._write_yaml(self.etcd_inventory_path, {"all": {
            "vars": {**self._connection_vars(), "etcd_data_dir": ETCD_DIR},
            "children": {"etcd": self._etcd_inventory_group(hosts), **self._backup_group()},
            "hosts": {h.name: {"ansible_host": h.address, **self._etcd_host_vars(h)} for h in hosts},
        }})

    def _backup_group(self) -> dict:
        """The inventories' backup_hosts group: the backup host, when the lab has one."""
        host = self.backup_host
        return {"backup_hosts": {"hosts": {host.name: {"ansible_host": host.address}}}} if host else {}

    @staticmethod
    def _write_yaml(path: Path, inventory: dict) -> None:
        import yaml  # controller side only

        path.write_text("# written by the quorum.recovery lab; rewritten on every `up`\n"
                        + yaml.safe_dump(inventory, sort_keys=False))

    # ------------------------------------------------------------------- data
    def client_target(self, host: Host, engine: str) -> list[str]:
        """The qrlab-client arguments that point it at this host's member of an engine."""
        if engine == "etcd":
            return ["--endpoint", host.etcd_client_url,
                    *[item for key, path in self.etcd_client_tls.items() for item in ("--" + key, path)]]
        return ["--api", host.dqlite_api]

    def load_keys(self, host: Host, count: int, prefix: str = "key", start: int = 0, size: int = 32) -> None:
        for engine in ("etcd", "dqlite"):
            self.client(host, engine + "-put", *self.client_target(host, engine), "--prefix", prefix,
                        "--count", str(count), "--start", str(start), "--size", str(size))

    def etcd_keys(self, host: Host, prefix: str) -> set[str]:
        """The keys under `prefix` that the host's etcd member holds in its own store."""
        return set(self.client(host, "etcd-keys", *self.client_target(host, "etcd"), "--prefix", prefix)["keys"])

    def check_keys(self, host: Host, engine: str, count: int, prefix: str = "key", start: int = 0,
                   size: int = 32) -> dict:
        proc = self.exec(host, [*self.client_cmd, engine + "-check", *self.client_target(host, engine), "--prefix", prefix,
                                "--count", str(count), "--start", str(start), "--size", str(size)], check=False)
        return json.loads(proc.stdout.strip().splitlines()[-1])

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
