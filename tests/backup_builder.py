"""Backup folders as docs/backup-format.md lays them out, built from real files for the tests of
the catalog, retention and status: a real tar payload (etcd: a snapshot.db; dqlite: raft/ and
node/ files) with its MANIFEST.json last, and the manifest beside it with the payload's real size
and sha256. What the backup role writes is tested against the same reader; this only makes
folders with the states a reader must handle (orphans, interrupted writes, temporaries, failed
verification) without running a cluster."""
from __future__ import annotations

import calendar
import hashlib
import io
import json
import os
import tarfile
import time
from pathlib import Path

FORMAT = "quorum.recovery/backup/1"


def iso(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def epoch_of(text: str) -> int:
    return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ"))


def name_of(cluster: str, engine: str, counter: int, created: int) -> str:
    return "%s-%s-%010d-%s" % (cluster, engine, counter, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(created)))


def _payload(engine: str, counter: int, size: int) -> tuple[bytes, list[dict]]:
    """A plain tar: etcd snapshot.db, or dqlite raft files and node files; MANIFEST.json last."""
    seed = hashlib.sha256(b"%s-%d" % (engine.encode(), counter)).digest()
    body = (seed * (size // len(seed) + 1))[:size]
    if engine == "etcd":
        members = {"snapshot.db": body}
    else:
        members = {"raft/0000000000000001-0000000000000100": body, "raft/metadata1": seed[:16],
                   "node/info.yaml": b"ID: 1\nAddress: 127.0.0.1:9001\nRole: 0\n"}
    files = [{"name": n, "size": len(d), "sha256": hashlib.sha256(d).hexdigest()} for n, d in members.items()]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for member_name, data in list(members.items()) + [("MANIFEST.json", json.dumps({"files": files}).encode())]:
            info = tarfile.TarInfo(member_name)
            info.size, info.mode, info.mtime = len(data), 0o600, 0
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue(), files


def make_backup(dest_dir, cluster: str, engine: str, counter: int, created: int, *, term: int = 2, index: int | None = None,
                verified: str | None = "ok", cluster_id: str = "cafe0001", encrypted: bool = False, orphan: bool = False,
                size: int = 4096, manifest: bool = True, extra: dict | None = None) -> dict:
    """Write one backup (payload, then manifest) into dest_dir/cluster/engine; returns the manifest.
    verified: "ok", "failed" or None. manifest=False leaves the payload alone (an interrupted write)."""
    folder = Path(dest_dir) / cluster / engine
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    name = name_of(cluster, engine, counter, created)
    data, files = _payload(engine, counter, size)
    if encrypted:  # stands in for age's output: the catalog only checks size and sha256 of the stored bytes
        data = b"age-encryption.org/v1\n" + hashlib.sha512(data).digest() + data[::-1]
    ext = ".tar.age" if encrypted else ".tar"
    prefix = "orphan-" if orphan else ""
    (folder / (prefix + name + ext)).write_bytes(data)
    position = {"term": term, "index": counter * 100 if index is None else index}
    if engine == "etcd":
        position.update(revision=counter * 90, keys=1000)
    doc = {
        "format": FORMAT, "name": name, "cluster": cluster, "cluster_id": cluster_id, "engine": engine,
        "flavor": "etcd" if engine == "etcd" else "go-dqlite-app", "engine_version": "3.4.23" if engine == "etcd" else "1.1",
        "counter": counter, "created": iso(created), "created_epoch": created,
        "source": {"host": "h1", "address": "10.0.0.1", "member_id": "1", "chosen": "elected", "why": "most advanced"},
        "position": position, "files": files,
        "payload": {"file": name + ext, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                    "encrypted": encrypted, "recipients": ["age1test"] if encrypted else []},
        "verified": None if verified is None else {
            "at": iso(created + 60), "how": "facts-full+started-alone", "result": verified, "details": ""},
    }
    if orphan:
        doc["orphaned"] = {"at": iso(created + 120), "reason": "test", "by": "backup_builder"}
    doc.update(extra or {})
    if manifest:
        path = folder / (prefix + name + ".json")
        path.write_text(json.dumps(doc, indent=1, sort_keys=True))
        os.chmod(path, 0o600)
    return doc


def flip_byte(path, offset: int = 600) -> None:
    """Change one byte of a file in place (same size)."""
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x01]))
