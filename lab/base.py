"""What every part of the lab shares: its names, paths and ports, the Host record, LabError, run().

Nothing here starts or changes anything except run(), which runs one command and waits.
"""
from __future__ import annotations

import os
import subprocess
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

# Engines the distribution does not ship in the wanted version are unpacked here
# (scripts/get-etcd35), outside every host's private paths, so every host runs the same binaries.
ENGINES_DIR = Path(os.environ.get("QR_ENGINES_DIR", "/var/lib/quorum-recovery-lab/engines"))
# etcd versions the lab runs: where each one's etcd, etcdctl (and etcdutl) are
ETCD_BIN_DIRS = {
    "3.4": "/usr/bin",  # Debian 12's etcd-server and etcd-client
    "3.5": str(ENGINES_DIR / "etcd-3.5.16" / "usr" / "bin"),  # Debian 13's, unpacked
}

ETCD_DIR = "/var/lib/etcd"
DQLITE_DIR = "/var/snap/microk8s/current/var/kubernetes/backend"
K8S_SNAP_DQLITE_DIR = "/var/snap/k8s/common/var/lib/k8s-dqlite"  # k8s-snap's backend (lab/microk8s.py)
ETCD_CLIENT_PORT, ETCD_PEER_PORT = 2379, 2380
DQLITE_DB_PORT, DQLITE_API_PORT = 9001, 8001
LXD_DIR = "/var/lib/lxd"  # Debian's lxd: its LXD_DIR (database/, server.crt, storage-pools/)
LXD_PORT = 8443
PKI_DIR = "/etc/qrlab/pki"  # in the private /etc/qrlab: each host sees only its own keys

# Paths every host sees as its own. Anything not listed here is shared by all hosts. An engine
# that joins the lab adds its data directory here.
PRIVATE_PATHS = {
    "etcd": ETCD_DIR,
    # the backend's parent, not the backend: a recovery stages and moves files NEXT TO a data
    # directory (backend.incoming-*, backend.replaced-*), and a rename across mounts fails (EXDEV)
    "dqlite": os.path.dirname(DQLITE_DIR),
    "k8s-snap": os.path.dirname(K8S_SNAP_DQLITE_DIR),
    "lxd": LXD_DIR,
    "run": "/run",
    "etc": "/etc/qrlab",
    "log": "/var/log/qrlab",
    "root": "/root",
    "tmp": "/tmp",
    "vartmp": "/var/tmp",
    "backups": "/var/backups",
}


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
    etcd_tls: bool = False  # etcd serves https on this host (the lab's TLS mode)
    # the backend directory that holds the raft files directly (k8s-dqlite, lab/microk8s.py);
    # empty: they are in DQLITE_DIR/<address> (the go-dqlite app dqlite-demo)
    dqlite_backend: str = ""

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
    def etcd_scheme(self) -> str:
        return "https" if self.etcd_tls else "http"

    @property
    def etcd_client_url(self) -> str:
        return "%s://%s:%d" % (self.etcd_scheme, self.address, ETCD_CLIENT_PORT)

    @property
    def etcd_peer_url(self) -> str:
        return "%s://%s:%d" % (self.etcd_scheme, self.address, ETCD_PEER_PORT)

    @property
    def etcd_local_client_url(self) -> str:
        """The member's client URL on the host's loopback (etcd listens there too)."""
        return "%s://127.0.0.1:%d" % (self.etcd_scheme, ETCD_CLIENT_PORT)

    @property
    def dqlite_address(self) -> str:
        return "%s:%d" % (self.address, DQLITE_DB_PORT)

    @property
    def dqlite_api(self) -> str:
        return "%s:%d" % (self.address, DQLITE_API_PORT)

    @property
    def dqlite_data_dir(self) -> str:
        return self.dqlite_backend or "%s/%s" % (DQLITE_DIR, self.dqlite_address)
