# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Checksummed, atomic archives of a data directory, and their verified extraction.

An archive is a gzip'd tar whose last member, MANIFEST.json, lists every file with its size and
sha256, plus whatever the caller records (recovery id, source host, log position). Beside it,
NAME.sha256 holds the digest of the archive file itself. Archives are written to a temporary
name, fsync'd and renamed, so a half-written archive never carries a real name.
Long reads and writes report to an optional progress object (module_utils.progress.Progress:
phase(name, total), advance(bytes)); `locked` keeps two runs of a module (an asynchronous one left
by an interrupted playbook, and the re-run's) from working on the same files at once.
Standard library only: this runs on the targets.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import re
import tarfile
import time
import zlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any, Callable, Collection, Iterator, Protocol

    class ProgressSink(Protocol):
        """What the long steps report to: module_utils.progress.Progress, or NO_PROGRESS."""

        def phase(self, name: str, total: int | None = None) -> None:
            pass

        def advance(self, count: int) -> None:
            pass

MANIFEST = "MANIFEST.json"
CHUNK = 1 << 20


class ArchiveError(Exception):
    """The archive is missing, damaged or does not match; the message names the file."""


class _NoProgress:
    def phase(self, name: str, total: int | None = None) -> None:
        pass

    def advance(self, count: int) -> None:
        pass


NO_PROGRESS = _NoProgress()


def sha256_file(path: str, progress: ProgressSink = NO_PROGRESS) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
            progress.advance(len(chunk))
    return digest.hexdigest()


@contextlib.contextmanager
def locked(directory: str, on_wait: Callable[[float], object] | None = None, interval: float = 1.0,
           shared: bool = False) -> Iterator[float]:
    """Hold a lock on `directory` (flock on the directory itself: no lock file); exclusive for
    a writer, `shared` for a reader that must not see a writer's work half done.

    While another process holds it (an asynchronous run left working by an interrupted
    playbook), waits, calling on_wait(seconds waited so far) every `interval` seconds; yields
    the seconds it waited. The kernel releases the lock when its holder ends, however it ends
    (SIGKILL included), so a dead holder never blocks anyone."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        began, waited = time.monotonic(), 0.0
        while True:
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                waited = time.monotonic() - began
                if on_wait:
                    on_wait(waited)
                time.sleep(max(0.05, interval))
        yield time.monotonic() - began if waited else 0.0
    finally:
        os.close(fd)  # releases the lock


def list_files(root: str, include: Collection[str] | None = None, exclude: Collection[str] = ()) -> list[str]:
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
    def __init__(self, handle, progress=NO_PROGRESS):
        self.handle, self.digest, self.size, self.progress = handle, hashlib.sha256(), 0, progress

    def read(self, size=-1):
        data = self.handle.read(size)
        self.digest.update(data)
        self.size += len(data)
        self.progress.advance(len(data))
        return data


class _HashingWriter:
    """The archive's sha256 computed from the bytes as they are written (no second read)."""

    def __init__(self, handle):
        self.handle, self.digest = handle, hashlib.sha256()

    def write(self, data):
        self.digest.update(data)
        return self.handle.write(data)

    def flush(self):
        self.handle.flush()


def unused_path(base: str, nth: str = "%s-%d") -> str:
    """base when nothing is there (not even a dangling link), else the first `nth % (base, n)`,
    n = 2, 3, ..., that is free: where something is moved or kept aside without ever overwriting
    what an earlier run put there."""
    if not os.path.lexists(base):
        return base
    n = 2
    while os.path.lexists(nth % (base, n)):
        n += 1
    return nth % (base, n)


def fsync_dir(path: str) -> None:
    """Make a rename or a new name in the folder `path` durable."""
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
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def write_atomic(path: str, data: bytes, mode: int = 0o600) -> None:
    with _atomic(path, mode) as (handle, _tmp):
        handle.write(data)


def remove_stale_temporaries(path: str) -> list[str]:
    """Remove what _atomic left beside `path` when its writer was killed (path.tmp-PID).

    Call only while holding the lock of path's folder: then no live writer owns them. They never
    carried the real name, so nothing ever trusted them; this only gives the space back."""
    folder, base = os.path.split(os.path.abspath(path))
    pattern = re.compile(re.escape(base) + r"(\.sha256)?\.tmp-\d+$")
    removed = []
    for name in sorted(os.listdir(folder)):
        if pattern.match(name):
            os.unlink(os.path.join(folder, name))
            removed.append(name)
    return removed


def create(root: str, dest: str, files: Collection[str], extra: dict[str, Any] | None = None, mode: int = 0o600,
           progress: ProgressSink = NO_PROGRESS) -> dict[str, Any]:
    """Archive `files` (relative to root) to dest atomically; returns the manifest."""
    os.makedirs(os.path.dirname(os.path.abspath(dest)), mode=0o700, exist_ok=True)
    entries = []
    progress.phase("archive", sum(os.path.getsize(os.path.join(root, rel)) for rel in files))
    with _atomic(dest, mode) as (raw, _tmp):
        out = _HashingWriter(raw)
        # a write-only stream: the stub wants a whole file object, gzip only writes and flushes
        with tarfile.open(fileobj=out, mode="w:gz", compresslevel=1) as tar:  # type: ignore[call-overload]
            for rel in files:
                full = os.path.join(root, rel)
                with open(full, "rb") as handle:
                    info = tar.gettarinfo(full, arcname=rel, fileobj=handle)
                    reader = _HashingReader(handle, progress)
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
        digest = out.digest.hexdigest()
    write_atomic(dest + ".sha256", ("%s  %s\n" % (digest, os.path.basename(dest))).encode(), mode)
    manifest["archive_sha256"] = digest
    return manifest


def recorded_digest(dest: str) -> str | None:
    try:
        with open(dest + ".sha256") as handle:
            return handle.read().split()[0]
    except (OSError, IndexError):
        return None


def _safe_member(member):
    name = member.name
    if name.startswith("/") or ".." in name.split("/") or not (member.isfile() or member.isdir()):
        raise ArchiveError("unsafe or unexpected member %r" % name)


def verify(dest: str, expected_sha256: str | None = None, extract_to: str | None = None,
           progress: ProgressSink = NO_PROGRESS) -> dict[str, Any]:
    """Check the archive's digest and every file against its manifest; optionally extract.

    One sequential read of the archive: its sha256 is computed from the same bytes the tar reader
    consumes (an extraction goes to a folder the caller throws away unless this returns).
    Returns the manifest. Raises ArchiveError naming what does not match."""
    if not os.path.isfile(dest):
        raise ArchiveError("%s does not exist" % dest)
    wanted = expected_sha256 or recorded_digest(dest)
    if wanted is None:
        raise ArchiveError("%s has no %s.sha256 and no expected checksum was given" % (dest, dest))
    progress.phase("extract" if extract_to is not None else "verify", os.path.getsize(dest))
    seen: dict[str, str] = {}
    manifest, unreadable = None, None
    with open(dest, "rb") as raw:
        reader = _HashingReader(raw, progress)
        try:
            manifest = _read_members(reader, seen, extract_to)
        except (tarfile.TarError, OSError, EOFError, ValueError, zlib.error) as exc:
            unreadable = exc
        for _chunk in iter(lambda: reader.read(CHUNK), b""):
            pass  # the rest of the file (tar end blocks, gzip trailer) belongs to the digest too
    digest = reader.digest.hexdigest()
    if digest != wanted:
        raise ArchiveError("%s: sha256 %s, expected %s" % (dest, digest, wanted))
    if unreadable is not None:
        raise ArchiveError("%s is unreadable: %s" % (dest, unreadable))
    if manifest is None:
        raise ArchiveError("%s has no %s" % (dest, MANIFEST))
    listed = {e["name"]: e["sha256"] for e in manifest["files"]}
    if listed != seen:
        bad = sorted(n for n in set(listed) | set(seen) if listed.get(n) != seen.get(n))
        raise ArchiveError("%s: files do not match its manifest: %s" % (dest, ", ".join(bad)))
    manifest["archive_sha256"] = digest
    return manifest


def _read_members(reader, seen, extract_to):
    """Hash (and extract) every member of the tar stream; returns the manifest, or None."""
    manifest = None
    with tarfile.open(fileobj=reader, mode="r|gz") as tar:
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
    return manifest
