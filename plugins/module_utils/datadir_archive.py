# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Checksummed, atomic archives of a data directory, and their verified extraction.

An archive is a gzip'd tar whose last member, MANIFEST.json, lists every file with its size and
sha256, plus whatever the caller records (recovery id, source host, log position). Beside it,
NAME.sha256 holds the digest of the archive file itself. Archives are written to a temporary
name, fsync'd and renamed, so a half-written archive never carries a real name.
Standard library only: this runs on the targets.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tarfile
import time

MANIFEST = "MANIFEST.json"
CHUNK = 1 << 20


class ArchiveError(Exception):
    """The archive is missing, damaged or does not match; the message names the file."""


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def list_files(root, include=None, exclude=()):
    """Regular files under root (relative names, sorted). include: names or None for all."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            if not os.path.isfile(full) or os.path.islink(full):
                continue  # sockets, fifos and links are not data
            if include is not None and rel not in include:
                continue
            if rel in exclude or name in exclude:
                continue
            out.append(rel)
    return out


class _HashingReader:
    def __init__(self, handle):
        self.handle, self.digest, self.size = handle, hashlib.sha256(), 0

    def read(self, size=-1):
        data = self.handle.read(size)
        self.digest.update(data)
        self.size += len(data)
        return data


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _atomic(path, mode):
    """Write to a temporary name beside path; on success fsync, rename and fsync the folder,
    on any error remove the temporary file. Yields (handle, temporary path)."""
    tmp = "%s.tmp-%d" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle, tmp
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.rename(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def write_atomic(path, data, mode=0o600):
    with _atomic(path, mode) as (handle, _tmp):
        handle.write(data)


def create(root, dest, files, extra=None, mode=0o600):
    """Archive `files` (relative to root) to dest atomically; returns the manifest."""
    os.makedirs(os.path.dirname(os.path.abspath(dest)), mode=0o700, exist_ok=True)
    entries = []
    with _atomic(dest, mode) as (raw, tmp):
        with tarfile.open(fileobj=raw, mode="w:gz", compresslevel=1) as tar:
            for rel in files:
                full = os.path.join(root, rel)
                with open(full, "rb") as handle:
                    info = tar.gettarinfo(full, arcname=rel, fileobj=handle)
                    reader = _HashingReader(handle)
                    tar.addfile(info, reader)
                    if reader.size != info.size:
                        raise ArchiveError("%s changed size while it was archived" % full)
                entries.append({"name": rel, "size": info.size, "sha256": reader.digest.hexdigest(),
                                "mode": info.mode & 0o7777, "mtime": info.mtime})
            manifest = dict(extra or {})
            manifest.update(source_dir=root, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                            files=entries, total_bytes=sum(e["size"] for e in entries))
            blob = json.dumps(manifest, indent=1, sort_keys=True).encode()
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mode, info.mtime = len(blob), 0o600, int(time.time())
            tar.addfile(info, io.BytesIO(blob))
        raw.flush()
        digest = sha256_file(tmp)
    write_atomic(dest + ".sha256", ("%s  %s\n" % (digest, os.path.basename(dest))).encode(), mode)
    manifest["archive_sha256"] = digest
    return manifest


def recorded_digest(dest):
    try:
        with open(dest + ".sha256") as handle:
            return handle.read().split()[0]
    except (OSError, IndexError):
        return None


def _safe_member(member):
    name = member.name
    if name.startswith("/") or ".." in name.split("/") or not (member.isfile() or member.isdir()):
        raise ArchiveError("unsafe or unexpected member %r" % name)


def verify(dest, expected_sha256=None, extract_to=None):
    """Check the archive's digest and every file against its manifest; optionally extract.

    Returns the manifest. Raises ArchiveError naming what does not match."""
    if not os.path.isfile(dest):
        raise ArchiveError("%s does not exist" % dest)
    digest = sha256_file(dest)
    wanted = expected_sha256 or recorded_digest(dest)
    if wanted is None:
        raise ArchiveError("%s has no %s.sha256 and no expected checksum was given" % (dest, dest))
    if digest != wanted:
        raise ArchiveError("%s: sha256 %s, expected %s" % (dest, digest, wanted))
    seen, manifest = {}, None
    try:
        with tarfile.open(dest, mode="r:gz") as tar:
            for member in tar:
                _safe_member(member)
                if member.isdir():
                    continue
                handle = tar.extractfile(member)
                if member.name == MANIFEST:
                    manifest = json.loads(handle.read().decode())
                    continue
                out = None
                if extract_to is not None:
                    target = os.path.join(extract_to, member.name)
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    out = open(target, "wb")
                try:
                    file_digest = hashlib.sha256()
                    for chunk in iter(lambda: handle.read(CHUNK), b""):
                        file_digest.update(chunk)
                        if out:
                            out.write(chunk)
                    if out:
                        out.flush()
                        os.fsync(out.fileno())
                finally:
                    if out:
                        out.close()
                if extract_to is not None:
                    os.chmod(target, member.mode & 0o7777)
                    os.utime(target, (member.mtime, member.mtime))
                seen[member.name] = file_digest.hexdigest()
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        raise ArchiveError("%s is unreadable: %s" % (dest, exc))
    if manifest is None:
        raise ArchiveError("%s has no %s" % (dest, MANIFEST))
    listed = {e["name"]: e["sha256"] for e in manifest["files"]}
    if listed != seen:
        bad = sorted(n for n in set(listed) | set(seen) if listed.get(n) != seen.get(n))
        raise ArchiveError("%s: files do not match its manifest: %s" % (dest, ", ".join(bad)))
    manifest["archive_sha256"] = digest
    return manifest
