"""A MicroK8s-shaped dqlite member on the lab's hosts (`python -m lab up --dqlite-shape microk8s`),
and the same at k8s-snap's paths (`--dqlite-shape k8s-snap`).

The member is the project's own small program, lab/files/k8s-dqlite/main.go (built by
scripts/build-k8s-dqlite from Debian 12's go-dqlite sources), shaped like MicroK8s's k8s-dqlite:
its backend directory is /var/snap/microk8s/current/var/kubernetes/backend itself (raft files
directly in it, no <address> subdirectory), TLS both ways with ONE cluster.crt/cluster.key shared
by every node, the database "k8s" with kine's table, and the node-local files k8s-dqlite keeps
there (info.yaml, cluster.yaml, localnode.yaml, failure-domain, tuning.yaml; init.yaml at the
first start, update.yaml when asked to change address). In each host's mount namespace the dqlite
shell sits where the snap has it, /snap/microk8s/current/bin/dqlite (a private bind mount of
Debian's /usr/bin/dqlite), so the recover role's `microk8s` flavor is used as shipped and the
inventory overrides only service control (the lab has no systemd).

The lab's service name stays "dqlite" (kill, power-off, churn and the scenarios are the same for
both shapes); the key API the lab's client and faults use is the member's own (kine's etcd API
stood in by GET/PUT /KEY), and check_keys reads through the dqlite protocol over TLS instead.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .base import DQLITE_API_PORT, DQLITE_DIR, ENGINES_DIR, K8S_SNAP_DQLITE_DIR, Host, LabError, run
from .core import Lab

SHAPES = ("demo", "microk8s", "k8s-snap")
K8S_DQLITE = ENGINES_DIR / "qrlab-k8s-dqlite" / "qrlab-k8s-dqlite"


def wanted_dqlite_shape(shape: str | None = None) -> str:
    shape = shape or os.environ.get("QRLAB_DQLITE_SHAPE") or "demo"
    if shape not in SHAPES:
        raise LabError("dqlite shape %r: use one of %s (--dqlite-shape, env QRLAB_DQLITE_SHAPE)"
                       % (shape, ", ".join(SHAPES)))
    return shape


class MicroK8sDqlite:
    """The dqlite parts of the lab for the MicroK8s shape; mixed in before Lab (MicroK8sLab). The
    k8s-snap shape is the same member at k8s-snap's paths (K8sSnapDqlite: data only)."""

    DQLITE_TOOLS = ("dqlite", "openssl", str(K8S_DQLITE))
    DQLITE_DATABASE = "k8s"
    DQLITE_SHAPE = FLAVOR = "microk8s"  # the shape, and the recover role's flavor for it
    BACKEND = DQLITE_DIR
    SNAP_DIR = "/snap/microk8s"  # a private directory of each host in this shape
    SHELL = SNAP_DIR + "/current/bin/dqlite"  # the flavor's shell, where the snap has it

    def _host_fields(self) -> dict:
        return dict(super()._host_fields(), dqlite_backend=self.BACKEND)

    def _preflight(self, engine_tools=()) -> None:
        if not K8S_DQLITE.exists():
            raise LabError("%s is not built: run scripts/setup (or scripts/build-k8s-dqlite)" % K8S_DQLITE)
        super()._preflight(engine_tools)

    @property
    def _pki(self) -> Path:
        return self.state / "k8s-dqlite-pki"

    # ------------------------------------------------------------- the hosts
    def _make_dirs(self, hosts: list[Host]) -> None:
        super()._make_dirs(hosts)
        made = []
        path = Path(self.SNAP_DIR)
        while not path.exists():  # the mount point, in the root namespace: remembered, removed by down()
            made.append(str(path))
            path = path.parent
        Path(self.SNAP_DIR).mkdir(parents=True, exist_ok=True)
        keep = Path(self.SNAP_DIR) / ".qrlab-mountpoint"
        if not keep.exists():  # see Hosts._make_dirs: keeps another lab's down() from removing it
            keep.write_text("mount point of the quorum.recovery labs; keeps it from being removed under them\n")
        self._record(created=self._recorded().get("created", []) + made)
        for host in hosts:
            host.real_path(self.BACKEND).mkdir(exist_ok=True)
            bin_dir = host.root / ("snap-" + self.DQLITE_SHAPE) / "current" / "bin"
            bin_dir.mkdir(parents=True, exist_ok=True)
            (bin_dir / "dqlite").touch()
        self._make_cluster_cert()

    def _make_mount_ns(self, host: Host) -> None:
        super()._make_mount_ns(host)
        script = ["set -e", "mount --bind %s %s" % (host.root / ("snap-" + self.DQLITE_SHAPE), self.SNAP_DIR),
                  "mount --bind /usr/bin/dqlite %s" % self.SHELL]
        run(["nsenter", "--mount=%s" % host.mntns, "--", "sh", "-c", "\n".join(script)])

    def _make_cluster_cert(self) -> None:
        """One self-signed certificate for the whole cluster, as MicroK8s makes it (CN k8s); go-dqlite's
        dial side checks its first DNS name, so it carries one."""
        self._pki.mkdir(mode=0o700, exist_ok=True)
        if (self._pki / "cluster.crt").exists():
            return
        run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-sha256", "-days", "3650", "-nodes",
             "-keyout", self._pki / "cluster.key", "-out", self._pki / "cluster.crt", "-subj", "/CN=k8s",
             "-addext", "subjectAltName=DNS:k8s,IP:127.0.0.1"])

    # ---------------------------------------------------------- the service
    def _write_dqlite_service(self, host: Host, hosts: list[Host]) -> None:
        argv = [str(K8S_DQLITE), "serve", "--storage-dir", self.BACKEND, "--api", host.dqlite_api]
        (host.private("etc") / "services" / "dqlite.json").write_text(json.dumps(
            {"argv": argv, "stop_timeout": 10, "ready_port": DQLITE_API_PORT, "ready_timeout": 60}, indent=1))
        backend = host.real_path(self.BACKEND)
        if (backend / "info.yaml").exists():
            return  # initialised: it knows its address and cluster (readdress() leaves them stale)
        for name in ("cluster.crt", "cluster.key"):
            shutil.copy2(self._pki / name, backend / name)
            (backend / name).chmod(0o600)
        (backend / "failure-domain").write_text("1\n")
        # go-dqlite's own defaults, written out: the lab's snapshots come when dqlite-demo's do
        (backend / "tuning.yaml").write_text("snapshot:\n  threshold: 1024\n  trailing: 8192\n")
        cluster = [] if host is hosts[0] else [hosts[0].dqlite_address]
        (backend / "init.yaml").write_text("Address: %s\nCluster: [%s]\n" % (host.dqlite_address, ", ".join(cluster)))

    def _dqlite_ask(self, host: Host, command: str) -> list[str]:
        """The member's own client, not the shell (the role uses the shell): go-dqlite 1.11.5's shell
        hangs over TLS when the member asked is not the leader (see lab/files/k8s-dqlite/main.go)."""
        return [str(K8S_DQLITE), command.lstrip("."), "--storage-dir", self.BACKEND, "--server", host.dqlite_address]

    def _dqlite_inventory_group(self, hosts: list[Host]) -> dict:
        """The operator's inventory for a MicroK8s cluster on hosts without systemd: the flavor as
        shipped (its data directory, shell, database and TLS), only service control overridden."""
        return {"hosts": {h.name: None for h in hosts}, "vars": {
            "recover_flavor": self.FLAVOR,
            "recover_service_control": "commands",
            "recover_service_commands": {
                action: "%s dqlite %s" % (" ".join(self.service_cmd), action)
                for action in ("start", "stop", "status")},
        }}

    def _engine_data_moves(self, old: Host, new: Host) -> list:
        return []  # the backend directory is named after no address: nothing to rename

    # ---------------------------------------------------------------- data
    def check_keys(self, host: Host, engine: str, count: int, prefix: str = "key", start: int = 0,
                   size: int = 32) -> dict:
        """dqlite: read every key through the dqlite protocol over TLS (the backend's cluster
        certificate), asking this host's member for the leader; no HTTP in between."""
        if engine != "dqlite":
            return super().check_keys(host, engine, count, prefix, start, size)
        proc = self.exec(host, [str(K8S_DQLITE), "check", "--storage-dir", self.BACKEND,
                                "--server", host.dqlite_address, "--prefix", prefix, "--count", str(count),
                                "--start", str(start), "--size", str(size)], check=False)
        try:
            return json.loads(proc.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {"ok": False, "error": (proc.stderr or proc.stdout).strip()[-2000:]}


class K8sSnapDqlite(MicroK8sDqlite):
    """k8s-snap's k8s-dqlite: the same program and files as MicroK8s's, at k8s-snap's paths (what
    the role's k8s-snap flavor knows). k8s-snap's other dqlite database, k8sd's (a microcluster
    app), is not part of the lab: see docs/microk8s-runbook.md."""

    DQLITE_SHAPE = FLAVOR = "k8s-snap"
    BACKEND = K8S_SNAP_DQLITE_DIR
    SNAP_DIR = "/snap/k8s"
    SHELL = SNAP_DIR + "/current/bin/dqlite"


class MicroK8sLab(MicroK8sDqlite, Lab):
    """The lab with the MicroK8s-shaped dqlite member instead of dqlite-demo."""

    def up(self, *args, **kw):
        self._record(dqlite_shape=self.DQLITE_SHAPE)
        hosts = super().up(*args, **kw)
        self._record(dqlite_shape=self.DQLITE_SHAPE)  # up() started from a clean state
        return hosts


class K8sSnapLab(K8sSnapDqlite, MicroK8sLab):
    """The lab with k8s-snap-shaped dqlite members."""


def lab_class(shape: str | None = None, state: Path | str | None = None):
    """The Lab class for a dqlite shape: the one asked for, else the one the lab at `state` was
    brought up with, else env QRLAB_DQLITE_SHAPE, else dqlite-demo's."""
    if not shape and state:
        try:
            shape = json.loads((Path(state) / "lab.json").read_text()).get("dqlite_shape")
        except (OSError, ValueError):
            shape = None
    return {"microk8s": MicroK8sLab, "k8s-snap": K8sSnapLab}.get(wanted_dqlite_shape(shape), Lab)
