# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A backup's payload and manifest as docs/backup-format.md defines them, written atomically;
and their check on arrival at a destination.

The payload is a plain tar of the files given, MANIFEST.json last; with age recipients the tar
is streamed through `age` and only the ciphertext reaches the disk. Payload first, manifest
second, each to a temporary name, fsync'd, renamed, the folder fsync'd: a backup exists only
when its manifest does.
Standard library only: this runs on members and backup hosts.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import queue
import re
import subprocess
import tarfile
import threading
import time

from ansible_collections.quorum.recovery.plugins.module_utils import datadir_archive as arch

FORMAT = "quorum.recovery/backup/1"
NAME_RE = re.compile(r"^(?P<cluster>[A-Za-z0-9][A-Za-z0-9._-]*)-(?P<engine>dqlite|etcd)-(?P<counter>[0-9]{10})-"
                     r"(?P<stamp>[0-9]{8}T[0-9]{6}Z)$")
AGE_RECIPIENT_RE = re.compile(r"^age1[02-9ac-hj-np-z]{58}$")


class PayloadError(Exception):
    """The payload or manifest is missing, damaged or does not match; the message names the file."""


def backup_name(cluster: str, engine: str, counter: int, created_epoch: float) -> str:
    return "%s-%s-%010d-%s" % (cluster, engine, counter, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(created_epoch)))


def payload_file(name: str, encrypted: bool) -> str:
    return name + (".tar.age" if encrypted else ".tar")


class _DigestThread:
    """sha256 of what is fed to it, computed in a thread of its own: hashlib lets go of the GIL on
    large buffers, so the payload's digest and its files' digests (taken while they are read) cost
    the time of one pass on two cores, not of two. hexdigest() once, at the end."""

    def __init__(self):
        self.digest = hashlib.sha256()
        self.queue: queue.Queue = queue.Queue(maxsize=16)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        for chunk in iter(self.queue.get, None):
            self.digest.update(chunk)

    def update(self, data):
        self.queue.put(bytes(data))  # a copy: the writer may reuse its buffer

    def hexdigest(self):
        self.queue.put(None)
        self.thread.join()
        return self.digest.hexdigest()


class _Sink:
    """Where the tar goes: straight to the file, or into age's stdin (age's stdout to the file)."""

    def __init__(self, handle, age_argv):
        self.handle, self.digest, self.size = handle, _DigestThread(), 0
        self.proc = self.reader = None
        self.error = None
        if age_argv:
            self.proc = subprocess.Popen(age_argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,  # pylint: disable=consider-using-with
                                         stderr=subprocess.PIPE)
            self.reader = threading.Thread(target=self._drain, daemon=True)
            self.reader.start()

    def _drain(self):
        try:
            for chunk in iter(lambda: self.proc.stdout.read(arch.CHUNK), b""):
                self._out(chunk)
        except OSError as exc:
            self.error = exc

    def _out(self, data):
        self.handle.write(data)
        self.digest.update(data)
        self.size += len(data)

    def write(self, data):
        if self.proc:
            self.proc.stdin.write(data)
        else:
            self._out(data)
        return len(data)

    def finish(self):
        if not self.proc:
            return
        self.proc.stdin.close()
        self.reader.join()
        err = self.proc.stderr.read().decode("utf-8", "replace").strip()
        if self.proc.wait() or self.error:
            raise PayloadError("age failed (%s): %s" % (self.proc.returncode, err or self.error))


def write_backup(folder: str, name: str, files: list[dict], manifest: dict, recipients: list[str] | None = None,
                 age: str = "age", progress=arch.NO_PROGRESS) -> dict:
    """Write NAME.tar[.age] then NAME.json into folder. files: [{src, name}] (name = the path in
    the tar; an optional sha256 it must still have). Returns the manifest as written."""
    recipients = list(recipients or [])
    for recipient in recipients:
        if not AGE_RECIPIENT_RE.match(recipient):
            raise PayloadError("recipient %r is not an age public key (age1...)" % recipient)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    age_argv = [age] + [x for r in recipients for x in ("-r", r)] if recipients else None
    dest = os.path.join(folder, payload_file(name, bool(recipients)))
    entries = []
    progress.phase("pack", sum(os.path.getsize(f["src"]) for f in files))
    with arch._atomic(dest, 0o600) as (raw, _tmp):  # pylint: disable=protected-access
        sink = _Sink(raw, age_argv)
        try:
            with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
                for item in files:
                    with open(item["src"], "rb") as handle:
                        info = tar.gettarinfo(item["src"], arcname=item["name"], fileobj=handle)
                        info.uid = info.gid = 0
                        info.uname = info.gname = ""
                        reader = arch._HashingReader(handle, progress)  # pylint: disable=protected-access
                        tar.addfile(info, reader)
                        if reader.size != info.size:
                            raise PayloadError("%s changed size while it was packed" % item["src"])
                        if item.get("sha256") and reader.digest.hexdigest() != item["sha256"]:
                            raise PayloadError("%s has sha256 %s, not %s as it was copied: it changed since"
                                               % (item["src"], reader.digest.hexdigest(), item["sha256"]))
                    entries.append({"name": item["name"], "size": info.size, "sha256": reader.digest.hexdigest()})
                blob = json.dumps({"format": FORMAT, "name": name, "files": entries}, indent=1, sort_keys=True).encode()
                info = tarfile.TarInfo("MANIFEST.json")
                info.size, info.mode, info.mtime = len(blob), 0o600, int(time.time())
                tar.addfile(info, io.BytesIO(blob))
        finally:
            sink.finish()
    written = dict(manifest)
    written.update(format=FORMAT, name=name, files=entries,
                   payload={"file": os.path.basename(dest), "size": sink.size, "sha256": sink.digest.hexdigest(),
                            "encrypted": bool(recipients), "recipients": recipients})
    arch.write_atomic(os.path.join(folder, name + ".json"),
                      (json.dumps(written, indent=1, sort_keys=True) + "\n").encode(), 0o600)
    return written


def read_manifest(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            found = json.load(handle)
    except (OSError, ValueError) as exc:
        raise PayloadError("manifest %s cannot be read: %s" % (path, exc))
    if not isinstance(found, dict) or found.get("format") != FORMAT or not NAME_RE.match(str(found.get("name"))):
        raise PayloadError("manifest %s is not a %s manifest with a valid name" % (path, FORMAT))
    payload = found.get("payload")
    if not isinstance(payload, dict) or not {"file", "size", "sha256"} <= set(payload):
        raise PayloadError("manifest %s has no payload entry (file, size, sha256)" % path)
    return found


def check_payload(path: str, manifest: dict, progress=arch.NO_PROGRESS) -> None:
    """The payload file at path is the one the manifest describes (size and sha256)."""
    want = manifest["payload"]
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise PayloadError("payload %s of %s is missing: %s" % (path, manifest["name"], exc))
    if size != want["size"]:
        raise PayloadError("payload %s has %d bytes, its manifest says %d" % (path, size, want["size"]))
    progress.phase("sha256", size)
    digest = arch.sha256_file(path, progress)
    if digest != want["sha256"]:
        raise PayloadError("payload %s has sha256 %s, its manifest says %s" % (path, digest, want["sha256"]))
