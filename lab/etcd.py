"""etcd on the lab's hosts: one member per host, its service definition, readiness and status."""
from __future__ import annotations

import json

from .base import ETCD_CLIENT_PORT, ETCD_DIR, ETCD_PEER_PORT, Host
from .hosts import Hosts


class EtcdEngine(Hosts):
    """The etcd cluster: one member per host, started through the host's service script."""

    ETCD_TOOLS = ("etcd", "etcdctl")

    def _write_etcd_service(self, host: Host, hosts: list[Host], etcd_snapshot_count: int) -> None:
        cluster = ",".join("%s=http://%s:%d" % (h.name, h.address, ETCD_PEER_PORT) for h in hosts)
        etcd = ["etcd", "--name", host.name, "--data-dir", ETCD_DIR,
                "--listen-client-urls", "http://%s:%d,http://127.0.0.1:%d" % (host.address, ETCD_CLIENT_PORT, ETCD_CLIENT_PORT),
                "--advertise-client-urls", host.etcd_client_url,
                "--listen-peer-urls", "http://%s:%d" % (host.address, ETCD_PEER_PORT),
                "--initial-advertise-peer-urls", "http://%s:%d" % (host.address, ETCD_PEER_PORT),
                "--initial-cluster", cluster, "--initial-cluster-token", "qrlab",
                "--initial-cluster-state", "new", "--snapshot-count", str(etcd_snapshot_count)]
        (host.private("etc") / "services" / "etcd.json").write_text(json.dumps(
            {"argv": etcd, "stop_timeout": 15, "ready_port": ETCD_CLIENT_PORT}, indent=1))

    def start_etcd(self, hosts: list[Host]) -> None:
        self.start_all(hosts, "etcd")
        self._wait(lambda: self.etcd_ready(hosts), 60, "etcd cluster health")

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
