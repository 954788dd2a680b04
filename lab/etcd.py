"""etcd on the lab's hosts: one member per host, in version 3.4 or 3.5, plain or TLS.

The member's service definition, the lab's own PKI for the TLS mode, readiness, member list,
status and health, and the second inventory (inventory-etcd.yml) that tells the recover role
about this etcd.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .base import ETCD_BIN_DIRS, ETCD_CLIENT_PORT, ETCD_DIR, PKI_DIR, Host, LabError, run
from .hosts import Hosts

DEFAULT_ETCD_VERSION = "3.4"


def wanted_etcd_version(version: str | None = None) -> str:
    """The etcd version asked for: the argument, else QRLAB_ETCD_VERSION, else 3.4."""
    version = version or os.environ.get("QRLAB_ETCD_VERSION") or DEFAULT_ETCD_VERSION
    if version not in ETCD_BIN_DIRS:
        raise LabError("etcd version %r: the lab runs %s" % (version, " or ".join(sorted(ETCD_BIN_DIRS))))
    return version


def wanted_etcd_tls(tls: bool | None = None) -> bool:
    """TLS asked for: the argument, else QRLAB_ETCD_TLS (1/true/yes/on), else off."""
    if tls is not None:
        return bool(tls)
    return os.environ.get("QRLAB_ETCD_TLS", "").strip().lower() in ("1", "true", "yes", "on")


class EtcdEngine(Hosts):
    """The etcd cluster: one member per host, started through the host's service script."""

    # what this Lab object was asked for; a lab that is up answers with what it recorded
    _etcd_version_wanted = DEFAULT_ETCD_VERSION
    _etcd_tls_wanted = False

    # ------------------------------------------------------------- settings
    @property
    def etcd_version(self) -> str:
        """"3.4" or "3.5": the lab's etcd."""
        return self._recorded().get("etcd_version", self._etcd_version_wanted)

    @property
    def etcd_tls(self) -> bool:
        """True when etcd serves clients and peers over https and asks both for certificates."""
        return bool(self._recorded().get("etcd_tls", self._etcd_tls_wanted))

    @property
    def etcd_bin_dir(self) -> str:
        """Where the lab's etcd, etcdctl (and for 3.5 etcdutl) are, the same path on every host."""
        return ETCD_BIN_DIRS[self.etcd_version]

    @property
    def etcd_client_tls(self) -> dict:
        """The client certificate files, as the hosts see them; {} without TLS."""
        if not self.etcd_tls:
            return {}
        return {"cacert": PKI_DIR + "/ca.crt", "cert": PKI_DIR + "/client.crt", "key": PKI_DIR + "/client.key"}

    @property
    def etcd_inventory_path(self) -> Path:
        return self.state / "inventory-etcd.yml"

    def _host_fields(self) -> dict:
        return dict(super()._host_fields(), etcd_tls=self.etcd_tls)

    def _etcd_tools(self, version: str) -> tuple[str, ...]:
        return tuple(os.path.join(ETCD_BIN_DIRS[version], tool) for tool in ("etcd", "etcdctl"))

    # -------------------------------------------------------------- service
    def _write_etcd_service(self, host: Host, hosts: list[Host], etcd_snapshot_count: int) -> None:
        cluster = ",".join("%s=%s" % (h.name, h.etcd_peer_url) for h in hosts)
        etcd = [os.path.join(self.etcd_bin_dir, "etcd"), "--name", host.name, "--data-dir", ETCD_DIR,
                "--listen-client-urls", "%s,%s" % (host.etcd_client_url, host.etcd_local_client_url),
                "--advertise-client-urls", host.etcd_client_url,
                "--listen-peer-urls", host.etcd_peer_url,
                "--initial-advertise-peer-urls", host.etcd_peer_url,
                "--initial-cluster", cluster, "--initial-cluster-token", "qrlab",
                "--initial-cluster-state", "new", "--snapshot-count", str(etcd_snapshot_count)]
        if host.etcd_tls:
            etcd += ["--cert-file", PKI_DIR + "/server.crt", "--key-file", PKI_DIR + "/server.key",
                     "--client-cert-auth", "--trusted-ca-file", PKI_DIR + "/ca.crt",
                     "--peer-cert-file", PKI_DIR + "/peer.crt", "--peer-key-file", PKI_DIR + "/peer.key",
                     "--peer-client-cert-auth", "--peer-trusted-ca-file", PKI_DIR + "/ca.crt"]
        (host.private("etc") / "services" / "etcd.json").write_text(json.dumps(
            {"argv": etcd, "stop_timeout": 15, "ready_port": ETCD_CLIENT_PORT}, indent=1))

    # ------------------------------------------------------------------ PKI
    @property
    def _pki(self) -> Path:
        return self.state / "pki"  # the CA's key stays here, outside every host

    def _make_etcd_pki(self, hosts: list[Host]) -> None:
        """A CA, one client certificate, and per host a server and a peer certificate, each host's
        copied into its private PKI_DIR. Server certificates may also act as clients: etcd's
        gRPC gateway dials the member's own gRPC port with the server certificate."""
        pki = self._pki
        pki.mkdir(parents=True, exist_ok=True)
        if not (pki / "ca.crt").exists():
            run(["openssl", "req", "-x509", "-new", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                 "-keyout", pki / "ca.key", "-out", pki / "ca.crt", "-days", "3650", "-subj", "/CN=qrlab etcd CA",
                 "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        if not (pki / "client.crt").exists():
            self._issue(pki / "client", "qrlab-client", "clientAuth", None)
        for host in hosts:
            self._issue_etcd_host_certs(host)

    def _issue_etcd_host_certs(self, host: Host) -> None:
        target = host.private("etc") / "pki"
        target.mkdir(mode=0o700, exist_ok=True)
        san = "IP:%s,IP:127.0.0.1,DNS:localhost" % host.address
        for kind in ("server", "peer"):
            self._issue(target / kind, "%s-%s" % (host.name, kind), "serverAuth,clientAuth", san)
        for name in ("ca.crt", "client.crt", "client.key"):
            shutil.copy2(self._pki / name, target / name)

    def _issue(self, base: Path, common_name: str, usage: str, san: str | None) -> None:
        """base.key and base.crt, signed by the lab's CA."""
        ext = ["basicConstraints=CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment",
               "extendedKeyUsage=%s" % usage]
        if san:
            ext.append("subjectAltName=%s" % san)
        extfile = base.with_suffix(".ext")
        extfile.write_text("\n".join(ext) + "\n")
        csr = base.with_suffix(".csr")
        run(["openssl", "req", "-new", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-keyout", base.with_suffix(".key"), "-out", csr, "-subj", "/CN=" + common_name])
        run(["openssl", "x509", "-req", "-in", csr, "-CA", self._pki / "ca.crt", "-CAkey", self._pki / "ca.key",
             "-CAcreateserial", "-days", "3650", "-extfile", extfile, "-out", base.with_suffix(".crt")])
        csr.unlink()
        extfile.unlink()
        base.with_suffix(".key").chmod(0o600)

    # -------------------------------------------------------------- clients
    def etcdctl(self, host: Host, *args, check=True, timeout=60):
        """The lab's etcdctl, inside the host, at the host's member, with the client certificate."""
        tls = [item for key, path in self.etcd_client_tls.items() for item in ("--" + key, path)]
        return self.exec(host, [os.path.join(self.etcd_bin_dir, "etcdctl"), "--endpoints", host.etcd_client_url,
                                *tls, *args], check=check, timeout=timeout)

    def start_etcd(self, hosts: list[Host]) -> None:
        self.start_all(hosts, "etcd")
        self._wait(lambda: self.etcd_ready(hosts), 60, "etcd cluster health")

    def etcd_members(self, host: Host) -> list[dict]:
        proc = self.etcdctl(host, "-w", "json", "--command-timeout=5s", "member", "list")
        return json.loads(proc.stdout).get("members", [])

    def etcd_status(self, host: Host) -> dict | None:
        proc = self.etcdctl(host, "-w", "json", "--command-timeout=3s", "endpoint", "status", check=False)
        if proc.returncode:
            return None
        return json.loads(proc.stdout)[0]["Status"]

    def etcd_health(self, host: Host) -> dict:
        """`etcdctl endpoint health` of the host's member: {"endpoint", "health", "took"[, "error"]}."""
        proc = self.etcdctl(host, "-w", "json", "--command-timeout=5s", "endpoint", "health", check=False)
        try:
            return json.loads(proc.stdout)[0]
        except (ValueError, IndexError, KeyError):
            return {"endpoint": host.etcd_client_url, "health": False, "error": (proc.stderr or proc.stdout).strip()}

    def etcd_ready(self, hosts: list[Host]) -> bool:
        statuses = [self.etcd_status(h) for h in hosts]
        if any(s is None for s in statuses):
            return False
        leaders = {s["leader"] for s in statuses}
        return len(leaders) == 1 and 0 not in leaders

    # ------------------------------------------------------------ inventory
    def _etcd_inventory_group(self, hosts: list[Host]) -> dict:
        """The group that tells the recover role about this etcd (inventory-etcd.yml)."""
        return {"hosts": {h.name: None for h in hosts}, "vars": {
            "recover_engine": "etcd",
            "recover_flavor": "etcd",
            "recover_group": "etcd",
            "recover_data_dir": ETCD_DIR,
            "recover_service_control": "commands",
            "recover_service_commands": {
                action: "%s etcd %s" % (" ".join(self.service_cmd), action) for action in ("start", "stop", "status")},
            "recover_etcd_bin_dir": self.etcd_bin_dir,
            "recover_etcd_tls": self.etcd_client_tls,
            "recover_client_url": "%s://127.0.0.1:%d" % ("https" if self.etcd_tls else "http", ETCD_CLIENT_PORT),
        }}

    @staticmethod
    def _etcd_host_vars(host: Host) -> dict:
        return {"etcd_client_url": host.etcd_client_url, "etcd_peer_url": host.etcd_peer_url}
