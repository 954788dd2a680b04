"""LXD on the lab's hosts: Debian's lxd (5.0.2) daemon per host, clustered, as a product whose
database is dqlite (database/global) with its membership also kept node-locally
(database/local.db, table raft_nodes).

No systemd: each daemon is `lxd --group root --logfile ...` under the lab's service control,
with LXD_DIR = /var/lib/lxd private to the host. The first host bootstraps with
`lxd init --preseed` (cluster enabled, core.https_address on the host's address, image updates
off), the others join with a token from `lxc cluster add`.

SAFETY: LXD looks up public image servers when it starts. Every lxd daemon and every lxc/lxd
client runs inside its host's network and mount namespaces (exec()), and check_lxd_routes()
refuses to start anything unless each namespace has no default route and reaches the lab subnet
on its own link: a lookup then fails with "network is unreachable" before any packet is sent.
"""
from __future__ import annotations

import json

from .base import LXD_DIR, LXD_PORT, Host, LabError, run
from .hosts import Hosts

LXD_POOL = "local"  # a `dir` storage pool: the lab has no ZFS, LVM or btrfs


class LxdProduct(Hosts):
    """The LXD cluster: the first host bootstraps it, the others join with tokens."""

    LXD_TOOLS = ("lxd", "lxc")

    @staticmethod
    def lxd_env() -> list[str]:
        """What runs every lxd and lxc command (inside a host, by exec()): its own LXD_DIR."""
        return ["env", "LXD_DIR=" + LXD_DIR]

    def lxc(self, host: Host, *args, check=True, input=None, timeout=120):
        return self.exec(host, [*self.lxd_env(), "lxc", *args], check=check, input=input, timeout=timeout)

    def lxd_cmd(self, host: Host, *args, check=True, input=None, timeout=120):
        return self.exec(host, [*self.lxd_env(), "lxd", *args], check=check, input=input, timeout=timeout)

    def lxc_query(self, host: Host, path: str, timeout=60):
        proc = self.lxc(host, "query", path, timeout=timeout)
        return json.loads(proc.stdout)

    # ----------------------------------------------------------------- safety
    def check_lxd_routes(self, hosts: list[Host]) -> None:
        """Refuse unless every host namespace has no default route, reaches the lab subnet on its
        own link, and has no route out of it: LXD must fail its image-server lookups unsent."""
        self.check_routes(hosts)
        for host in hosts:
            inside = ["ip", "netns", "exec", host.netns]
            routes = run(inside + ["ip", "-4", "route", "show", "table", "all"]).stdout
            for line in routes.splitlines():
                words = line.split()
                if not words or words[0] in ("local", "broadcast"):
                    continue
                if words[0] in ("default", "blackhole", "unreachable", "prohibit") or "via" in words \
                        or str(self.subnet) not in line:
                    raise LabError("lab host %s has a route out of the lab subnet (%s); refusing to start LXD "
                                   "there" % (host.name, line.strip()))
            got = run(inside + ["ip", "route", "get", self.bridge_address]).stdout
            if "dev eth0 " not in got + " " or " via " in got:
                raise LabError("lab host %s does not reach %s on its own link (ip route get: %s); refusing to "
                               "start LXD there" % (host.name, self.bridge_address, got.strip()))
            out = run(inside + ["ip", "route", "get", "1.1.1.1"], check=False)
            if out.returncode == 0:
                raise LabError("lab host %s has a route to 1.1.1.1 (%s); refusing to start LXD there"
                               % (host.name, out.stdout.strip()))

    # ---------------------------------------------------------------- service
    def _write_lxd_service(self, host: Host) -> None:
        argv = [*self.lxd_env(), "lxd", "--group", "root", "--logfile", "/var/log/qrlab/lxd-daemon.log"]
        # no ready_port: a member that lost its peers opens it and still does not serve; the lab
        # and the recover role wait for the cluster itself
        (host.private("etc") / "services" / "lxd.json").write_text(json.dumps(
            {"argv": argv, "stop_timeout": 30}, indent=1))

    def start_lxd(self, hosts: list[Host]) -> None:
        """Bootstrap an LXD cluster on the first host and join the others to it."""
        self.check_lxd_routes(hosts)
        for host in hosts:
            self._write_lxd_service(host)
        first = hosts[0]
        self._start_lxd_daemon(first)
        self.lxd_cmd(first, "init", "--preseed", input=json.dumps({
            "config": {"core.https_address": "%s:%d" % (first.address, LXD_PORT),
                       "images.auto_update_interval": "0"},
            "storage_pools": [{"name": LXD_POOL, "driver": "dir"}],
            "profiles": [{"name": "default", "devices": {
                "root": {"path": "/", "pool": LXD_POOL, "type": "disk"}}}],
            "cluster": {"server_name": first.name, "enabled": True},
        }))
        for host in hosts[1:]:
            token = self.lxc(first, "cluster", "add", host.name).stdout.strip().splitlines()[-1].split()[-1]
            self._start_lxd_daemon(host)
            self.lxd_cmd(host, "init", "--preseed", timeout=180, input=json.dumps({
                "cluster": {"enabled": True, "server_name": host.name,
                            "server_address": "%s:%d" % (host.address, LXD_PORT),
                            "cluster_token": token,
                            "member_config": [{"entity": "storage-pool", "name": LXD_POOL,
                                               "key": "source", "value": ""}]},
            }))
        self._wait(lambda: self.lxd_settled(hosts), 90, "every LXD member online")
        self._record(lxd=True)

    def add_lxd(self, hosts: list[Host]) -> None:
        """An LXD cluster on a lab that is up (the lab's `up --lxd` does this last)."""
        self.start_lxd(hosts)
        self._write_lxd_inventory(hosts)

    def _start_lxd_daemon(self, host: Host) -> None:
        if self.service(host, "lxd", "start", check=False).returncode:
            raise LabError("lxd did not start on %s%s" % (host.name, self._log_tail(host, "lxd-daemon")))
        if self.lxd_cmd(host, "waitready", "--timeout", "60", check=False, timeout=90).returncode:
            raise LabError("lxd on %s not ready%s" % (host.name, self._log_tail(host, "lxd-daemon")))

    def lxd_members(self, host: Host) -> list[dict]:
        """`lxc cluster list` as data, asked on this host: name, url, roles, status."""
        proc = self.lxc(host, "query", "/1.0/cluster/members?recursion=1", check=False, timeout=30)
        if proc.returncode:
            return []
        return [{"name": m["server_name"], "url": m["url"], "roles": m.get("roles") or [], "status": m["status"]}
                for m in json.loads(proc.stdout)]

    def lxd_settled(self, hosts: list[Host]) -> bool:
        members = self.lxd_members(hosts[0])
        return (sorted(m["name"] for m in members) == sorted(h.name for h in hosts)
                and all(m["status"] == "Online" for m in members))

    def start_lxd_all(self, hosts: list[Host]) -> None:
        """Start every member's daemon at once (each waits for a quorum of its peers)."""
        self.start_all(hosts, "lxd")

    # ------------------------------------------------------------------- data
    def load_lxd_data(self, host: Host, hosts: list[Host], count: int = 5, tag: str = "qr") -> dict:
        """Config keys, projects, profiles and custom volumes (one per member, on the dir pool);
        returns what was written, as lxd_data() reads it back."""
        for i in range(count):
            self.lxc(host, "config", "set", "user.%s.key%d" % (tag, i), "value-%d" % i)
            self.lxc(host, "project", "create", "%s-project%d" % (tag, i), "-c", "user.%s=%d" % (tag, i))
            self.lxc(host, "profile", "create", "%s-profile%d" % (tag, i))
            self.lxc(host, "profile", "set", "%s-profile%d" % (tag, i), "user.%s" % tag, "profile-%d" % i)
        for member in hosts:
            self.lxc(host, "storage", "volume", "create", LXD_POOL, "%s-vol-%s" % (tag, member.name),
                     "--target", member.name)
        return self.lxd_data(host, tag)

    def lxd_data(self, host: Host, tag: str = "qr") -> dict:
        """What the cluster holds under `tag`, asked of this host's daemon."""
        server = self.lxc_query(host, "/1.0")
        projects = self.lxc_query(host, "/1.0/projects?recursion=1")
        profiles = self.lxc_query(host, "/1.0/profiles?recursion=1")
        volumes = self.lxc_query(host, "/1.0/storage-pools/%s/volumes?recursion=1" % LXD_POOL)
        return {
            "config": {k: v for k, v in server.get("config", {}).items() if k.startswith("user.%s." % tag)},
            "projects": sorted(p["name"] for p in projects if p["name"].startswith(tag + "-")),
            "profiles": {p["name"]: p["config"].get("user." + tag) for p in profiles if p["name"].startswith(tag + "-")},
            "volumes": sorted("%s@%s" % (v["name"], v.get("location", "")) for v in volumes
                              if v["type"] == "custom" and v["name"].startswith(tag + "-")),
        }

    def lxd_db_dir(self, host: Host):
        """Where the host's LXD database (global/ and local.db) lives, seen from the root namespace."""
        return host.real_path(LXD_DIR + "/database")

    def _lxd_inventory_group(self, hosts: list[Host]) -> dict:
        """How an operator's inventory tells the recover role about an LXD cluster in the lab."""
        return {"hosts": {h.name: None for h in hosts}, "vars": {
            "recover_engine": "dqlite",
            "recover_flavor": "lxd",
            "recover_data_dir": LXD_DIR + "/database/global",
            "recover_address": "{{ lxd_address }}",
            "recover_service_control": "commands",
            "recover_service_commands": {
                action: "%s lxd %s" % (" ".join(self.service_cmd), action) for action in ("start", "stop", "status")},
            "recover_group": "lxd",
        }}

    def _write_lxd_inventory(self, hosts: list[Host]) -> None:
        self._write_yaml(self.lxd_inventory_path, {"all": {
            "vars": {**self._connection_vars()},
            "children": {"lxd": self._lxd_inventory_group(hosts)},
            "hosts": {h.name: {"ansible_host": h.address, "lxd_address": "%s:%d" % (h.address, LXD_PORT)}
                      for h in hosts},
        }})

    @property
    def lxd_inventory_path(self):
        return self.state / "inventory-lxd.yml"
