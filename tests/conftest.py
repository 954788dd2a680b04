"""Shared test plumbing: the lab fixture and real ansible runs against the installed collection."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# the test modules take Lab from here
from lab import Lab, lab_class  # noqa: E402,F401  pylint: disable=unused-import

COLLECTIONS = Path(os.environ.get("ANSIBLE_COLLECTIONS_PATH", REPO / "build" / "collections"))
# Import the collection's code from where it is installed (scripts/setup), as users get it.
sys.path.insert(0, str(COLLECTIONS))
BIN = Path(sys.executable).parent


def ansible_env() -> dict:
    env = dict(os.environ)
    env.update(ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS), ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
               ANSIBLE_FORCE_COLOR="0", ANSIBLE_NOCOLOR="1", ANSIBLE_STDOUT_CALLBACK="default")
    return env


def run_ansible(tool: str, *args, inventory: Path, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(BIN / tool), "-i", str(inventory), *map(str, args)], capture_output=True,
                          text=True, env=ansible_env(), cwd=REPO, timeout=900, check=False)
    if check and proc.returncode:
        raise AssertionError("%s %s failed (%d):\n%s\n%s" % (tool, " ".join(map(str, args)), proc.returncode,
                                                             proc.stdout[-4000:], proc.stderr[-2000:]))
    return proc


def fingerprint(directory, ctime: bool = False) -> dict:
    """Every file under `directory`: relative name -> (sha256, size, mtime[, ctime]). Equal before
    and after a run = the run changed no byte and touched no file (ctime: not even its metadata)."""
    out = {}
    for root, _dirs, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            st = os.stat(path)
            with open(path, "rb") as handle:
                out[os.path.relpath(path, directory)] = (hashlib.sha256(handle.read()).hexdigest(), st.st_size,
                                                         st.st_mtime_ns) + ((st.st_ctime_ns,) if ctime else ())
    return out


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


DQLITE_SHAPES = ("microk8s", "k8s-snap")  # the lab's MicroK8s-shaped members (lab/microk8s.py)


def etcd_variant(variant: str | None) -> tuple[str | None, bool | None]:
    """"3.5+tls" -> ("3.5", True); "3.4" -> ("3.4", False); None (or a dqlite shape such as
    "microk8s" or "k8s-snap", or "backup": the lab with a backup host h4) -> the environment's (None, None)."""
    if not variant or variant in DQLITE_SHAPES or variant == "backup":
        return None, None
    version, _sep, tls = variant.partition("+")
    return version, tls == "tls"


@pytest.fixture(scope="module")
def lab(request):
    """A fresh 3-host lab per test module, always taken down, even when a test fails.

    Its etcd is the one QRLAB_ETCD_VERSION and QRLAB_ETCD_TLS ask for (default 3.4, no TLS);
    a test parametrized indirectly with a variant such as "3.5" or "3.5+tls" gets a lab of its
    own with that etcd (the module's other lab is taken down first: one lab at a time); with
    "microk8s" or "k8s-snap", a lab whose dqlite members have that shape (lab/microk8s.py) instead."""
    variant = getattr(request, "param", None)
    version, tls = etcd_variant(variant)
    the_lab = lab_class(variant if variant in DQLITE_SHAPES else None)(etcd_version=version, etcd_tls=tls)
    try:
        the_lab.up(3, keys=1000, backup_host=variant == "backup")
        yield the_lab
    finally:
        the_lab.down()
