"""dqlite on the lab's hosts: a go-dqlite app (dqlite-demo) per host, as MicroK8s runs its
datastore; its service definition, settling, nodes and leader."""
from __future__ import annotations

import json
from pathlib import Path

from .base import DQLITE_API_PORT, DQLITE_DIR, Host, LabError
from .hosts import Hosts


def expected_dqlite_voters(nodes: int) -> int:
    """Voters the go-dqlite app (dqlite-demo) settles on: it keeps an odd count, at most 3.

    Seen here: 1 node -> 1 voter; 2 -> 1 voter and a spare; 3 -> 3 voters; more -> 3 voters and
    stand-bys. dqlite-demo has no flag to change its target of 3 voters.
    """
    return 1 if nodes < 3 else 3


class DqliteEngine(Hosts):
    """The dqlite cluster: the first host bootstraps it, the others join."""

    DQLITE_TOOLS = ("dqlite-demo", "dqlite")
    DQLITE_DATABASE = "demo"

    def _dqlite_ask(self, host: Host, command: str) -> list[str]:
        """argv asking the host's member a shell command: .cluster (as JSON) or .leader."""
        return ["dqlite", "-s", host.dqlite_address, *(["-f", "json"] if command == ".cluster" else []),
                self.DQLITE_DATABASE, command]

    def _write_dqlite_service(self, host: Host, hosts: list[Host]) -> None:
        dqlite = ["dqlite-demo", "--api", host.dqlite_api, "--db", host.dqlite_address, "--dir", DQLITE_DIR]
        if host is not hosts[0]:
            dqlite += ["--join", hosts[0].dqlite_address]
        (host.private("etc") / "services" / "dqlite.json").write_text(json.dumps(
            {"argv": dqlite, "stop_timeout": 10, "ready_port": DQLITE_API_PORT, "ready_timeout": 60},
            indent=1))

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

    def dqlite_nodes(self, host: Host) -> list[dict]:
        proc = self.exec(host, self._dqlite_ask(host, ".cluster"),
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
        proc = self.exec(host, self._dqlite_ask(host, ".leader"), check=False, timeout=30)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    def _dqlite_inventory_group(self, hosts: list[Host]) -> dict:
        """How an operator's inventory tells the recover role about this layout."""
        return {"hosts": {h.name: None for h in hosts}, "vars": {
            "recover_flavor": "go-dqlite-app",
            "recover_data_dir": "{{ dqlite_data_dir }}",
            "recover_address": "{{ dqlite_address }}",
            "recover_service_control": "commands",
            "recover_service_commands": {
                action: "%s dqlite %s" % (" ".join(self.service_cmd), action)
                for action in ("start", "stop", "status")},
            "recover_verify_query": "SELECT COUNT(*) FROM model",
        }}

    @staticmethod
    def _dqlite_host_vars(host: Host) -> dict:
        return {"dqlite_address": host.dqlite_address, "dqlite_api": host.dqlite_api,
                "dqlite_data_dir": host.dqlite_data_dir}

    @staticmethod
    def _dqlite_moved_data(old: Host, new: Host) -> tuple[Path, Path]:
        """The go-dqlite app keeps its data in <dir>/<db address>: where it is, where it goes."""
        before, after = old.real_path(old.dqlite_data_dir), new.real_path(new.dqlite_data_dir)
        if before.exists() and after.exists():
            raise LabError("%s already exists on %s; not moving the dqlite data onto it" % (after, old.name))
        return before, after
