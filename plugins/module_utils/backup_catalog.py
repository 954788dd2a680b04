# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The backups kept in one destination folder, as docs/backup-format.md defines them.

A catalog is read from `<dest_dir>/<cluster>/<engine>/`: every manifest (`NAME.json`,
`orphan-NAME.json`) is validated and paired with its payload; a payload without a manifest is an
interrupted write (never a backup); `.NAME.*.partial-PID` and `*.tmp-PID` files are temporaries
of a writer. Reading takes no lock: manifests appear and change only by rename, so a reader never
sees half of one. Whatever CHANGES the folder (orphan, remove, remove_stale) must run while the
caller holds `exclusive(folder)` (datadir_archive.locked), the lock the backup writer holds while
it writes: then no live process owns a temporary, and nothing is renamed under a writer's feet.
The lock is not taken here, because a writer that already holds it (the backup module making a
new backup and orphaning older ones) would wait for itself.

Private to this collection; may change without notice. Standard library only: runs on targets.
"""
from __future__ import annotations

import calendar
import contextlib
import json
import os
import re
import time
from typing import TYPE_CHECKING

from ansible_collections.quorum.recovery.plugins.module_utils import backup_payload as bp
from ansible_collections.quorum.recovery.plugins.module_utils import datadir_archive as arch

if TYPE_CHECKING:
    from typing import Any, Iterable, Iterator

FORMAT = bp.FORMAT
ENGINES = ("dqlite", "etcd")
ORPHAN_PREFIX = "orphan-"
MANIFEST_EXT = ".json"
PAYLOAD_EXTS = (".tar.age", ".tar")  # longest first: NAME.tar.age is not NAME.tar + ".age"
CREATED_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
_NAME = bp.NAME_RE
_PARTIAL = re.compile(r"^\.(?P<name>.+-(?:dqlite|etcd)-\d{10}-\d{8}T\d{6}Z)\..*\.?partial-(?P<pid>\d+)$")
_TMP = re.compile(r"^(?P<base>.+)\.tmp-(?P<pid>\d+)$")  # datadir_archive.write_atomic's temporaries
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class CatalogError(Exception):
    """A manifest, payload or request that is not as docs/backup-format.md says; the message
    names the file (and key)."""


class ManifestError(CatalogError):
    pass


class PayloadError(CatalogError):
    pass


class Busy(CatalogError):
    """Another process held the folder's lock for longer than the caller wanted to wait."""


def folder_of(dest_dir: str, cluster: str, engine: str) -> str:
    return os.path.join(dest_dir, cluster, engine)


def parse_name(name: str) -> dict[str, Any] | None:
    """NAME (no extension, no orphan- prefix) -> {cluster, engine, counter, created_epoch}, or None."""
    match = _NAME.match(name)
    if not match:
        return None
    try:
        epoch = calendar.timegm(time.strptime(match["stamp"], STAMP_FORMAT))
    except ValueError:
        return None
    return {"cluster": match["cluster"], "engine": match["engine"], "counter": int(match["counter"]),
            "created_epoch": epoch}


backup_name = bp.backup_name  # the NAME a backup of cluster with counter made at created_epoch gets


def _split(filename: str) -> tuple[str, str, bool] | None:
    """A file name of the folder -> (NAME, extension, orphan), or None for any other file."""
    orphan = filename.startswith(ORPHAN_PREFIX)
    stem = filename[len(ORPHAN_PREFIX):] if orphan else filename
    for ext in (MANIFEST_EXT,) + PAYLOAD_EXTS:
        if stem.endswith(ext) and parse_name(stem[:-len(ext)]):
            return stem[:-len(ext)], ext, orphan
    return None


# --- the manifest ---------------------------------------------------------------------------

def _need(cond: bool, path: str, key: str, what: str) -> None:
    if not cond:
        raise ManifestError("%s: key %s %s" % (path, key, what))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_manifest(manifest: Any, path: str = "manifest") -> dict[str, Any]:
    """Check a manifest against docs/backup-format.md; returns it, or raises ManifestError naming
    `path` and the key."""
    if not isinstance(manifest, dict):
        raise ManifestError("%s: a manifest is one JSON object, found %s" % (path, type(manifest).__name__))
    for key in ("format", "name", "cluster", "cluster_id", "engine", "flavor", "engine_version", "counter",
                "created", "created_epoch", "source", "position", "files", "payload", "verified"):
        _need(key in manifest, path, key, "is missing")
    _need(manifest["format"] == FORMAT, path, "format", "is %r, expected %r" % (manifest["format"], FORMAT))
    for key in ("name", "cluster", "cluster_id", "flavor", "engine_version"):
        _need(isinstance(manifest[key], str) and manifest[key] != "", path, key, "must be a non-empty string")
    _need(manifest["engine"] in ENGINES, path, "engine", "is %r, expected one of %s" % (manifest["engine"], ", ".join(ENGINES)))
    _need(_is_int(manifest["counter"]) and manifest["counter"] >= 1, path, "counter", "must be an integer >= 1")
    try:
        created = calendar.timegm(time.strptime(manifest["created"], CREATED_FORMAT))
    except (TypeError, ValueError):
        raise ManifestError("%s: key created is %r, expected YYYY-mm-ddTHH:MM:SSZ" % (path, manifest["created"]))
    _need(_is_int(manifest["created_epoch"]) and manifest["created_epoch"] == created, path, "created_epoch",
          "is %r, expected %d (the same time as created %s)" % (manifest["created_epoch"], created, manifest["created"]))
    expected = backup_name(manifest["cluster"], manifest["engine"], manifest["counter"], created)
    _need(manifest["name"] == expected, path, "name",
          "is %r; cluster, engine, counter and created make it %r" % (manifest["name"], expected))
    _need(isinstance(manifest["source"], dict) and isinstance(manifest["source"].get("host"), str), path, "source",
          "must be an object with at least host")
    position = manifest["position"]
    _need(isinstance(position, dict) and _is_int(position.get("term")) and _is_int(position.get("index"))
          and position["term"] >= 0 and position["index"] >= 0, path, "position",
          "must be an object with integer term and index (>= 0), found %r" % (position,))
    files = manifest["files"]
    _need(isinstance(files, list) and all(
        isinstance(f, dict) and isinstance(f.get("name"), str) and _is_int(f.get("size"))
        and isinstance(f.get("sha256"), str) and _SHA256.match(f["sha256"]) for f in files),
        path, "files", "must be a list of {name, size, sha256}")
    payload = manifest["payload"]
    _need(isinstance(payload, dict), path, "payload", "must be an object {file, size, sha256, encrypted, recipients}")
    _need(isinstance(payload.get("encrypted"), bool), path, "payload.encrypted", "must be true or false")
    ext = ".tar.age" if payload["encrypted"] else ".tar"
    _need(payload.get("file") == manifest["name"] + ext, path, "payload.file",
          "is %r, expected %r" % (payload.get("file"), manifest["name"] + ext))
    _need(_is_int(payload.get("size")) and payload["size"] >= 0, path, "payload.size", "must be an integer >= 0")
    _need(isinstance(payload.get("sha256"), str) and bool(_SHA256.match(payload["sha256"])), path, "payload.sha256",
          "must be 64 lowercase hex digits")
    _need(isinstance(payload.get("recipients", []), list), path, "payload.recipients", "must be a list")
    verified = manifest["verified"]
    _need(verified is None or (isinstance(verified, dict) and verified.get("result") in ("ok", "failed")
                               and isinstance(verified.get("how"), str) and isinstance(verified.get("at"), str)),
          path, "verified", "must be null or {at, how, result: ok or failed, details}, found %r" % (verified,))
    orphaned = manifest.get("orphaned")
    _need(orphaned is None or (isinstance(orphaned, dict) and all(isinstance(orphaned.get(k), str)
                                                                  for k in ("at", "reason", "by"))),
          path, "orphaned", "must be absent or {at, reason, by}")
    return manifest


def load_manifest(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            manifest = json.loads(handle.read().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ManifestError("%s: not JSON: %s" % (path, exc))
    return validate_manifest(manifest, path)


def verify_payload(path: str, manifest: dict[str, Any] | None = None) -> str:
    """Check the payload file `path` (size, then sha256) against its manifest (read from beside it
    when not given); returns the sha256, or raises PayloadError naming the file."""
    if manifest is None:
        folder, filename = os.path.split(path)
        split = _split(filename)
        if split is None:
            raise PayloadError("%s is not a backup payload name (NAME.tar or NAME.tar.age)" % path)
        name, _ext, orphan = split
        manifest = load_manifest(os.path.join(folder, (ORPHAN_PREFIX if orphan else "") + name + MANIFEST_EXT))
    try:
        bp.check_payload(path, manifest)  # the same check as on arrival at the destination
    except bp.PayloadError as exc:
        raise PayloadError(str(exc))
    return manifest["payload"]["sha256"]


# --- one folder -----------------------------------------------------------------------------

class Backup:
    """A backup: a valid manifest in the folder (and the payload it names, if present)."""

    def __init__(self, manifest: dict[str, Any], manifest_path: str, payload_path: str | None, orphan: bool):
        self.manifest, self.manifest_path, self.payload_path = manifest, manifest_path, payload_path
        self.orphan = orphan or "orphaned" in manifest
        self.payload_error: str | None = None if payload_path else "payload %s is missing" % manifest["payload"]["file"]
        self.payload_checked = False

    name = property(lambda self: self.manifest["name"])
    counter = property(lambda self: self.manifest["counter"])
    created_epoch = property(lambda self: self.manifest["created_epoch"])
    cluster_id = property(lambda self: self.manifest["cluster_id"])

    @property
    def verification(self) -> str:
        """ok, failed (the manifest says so, or the payload does not match it) or none."""
        if self.payload_error:
            return "failed"
        recorded = self.manifest["verified"]
        return recorded["result"] if recorded else "none"

    @property
    def verified(self) -> bool:
        return self.verification == "ok"

    @property
    def candidate(self) -> bool:
        """May be restored or count as the newest good backup: verified and no orphan."""
        return self.verified and not self.orphan

    def check_payload(self) -> bool:
        """sha256 of the payload against the manifest; a mismatch makes this backup unverified."""
        if self.payload_path:
            try:
                verify_payload(self.payload_path, self.manifest)
            except PayloadError as exc:
                self.payload_error = str(exc)
        self.payload_checked = True
        return self.payload_error is None

    def files(self) -> list[str]:
        return [p for p in (self.manifest_path, self.payload_path) if p]

    def to_dict(self, now: float, where: str) -> dict[str, Any]:
        m = self.manifest
        return {
            "name": m["name"], "file": os.path.basename(self.manifest_path), "cluster": m["cluster"],
            "engine": m["engine"], "cluster_id": m["cluster_id"], "counter": m["counter"], "created": m["created"],
            "created_epoch": m["created_epoch"], "age_seconds": int(now - m["created_epoch"]),
            "position": m["position"], "size": m["payload"]["size"], "encrypted": m["payload"]["encrypted"],
            "payload": os.path.basename(self.payload_path) if self.payload_path else None,
            "verified": self.verified, "verification": self.verification, "verified_how": (m["verified"] or {}).get("how"),
            "payload_checked": self.payload_checked, "payload_error": self.payload_error,
            "orphan": self.orphan, "orphaned": m.get("orphaned"), "source": m["source"], "where": where,
        }


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Catalog:
    """What one folder holds. Build it with read_catalog()."""

    def __init__(self, folder: str, cluster: str, engine: str):
        self.folder, self.cluster, self.engine = folder, cluster, engine
        self.exists = os.path.isdir(folder)
        self.backups: list[Backup] = []  # by counter, oldest first; orphans included
        self.interrupted: list[dict[str, Any]] = []  # payloads without a manifest
        self.temporaries: list[dict[str, Any]] = []
        self.invalid: list[dict[str, Any]] = []  # manifests that do not validate: never a backup, never removed
        self.unknown: list[str] = []  # other files: never touched
        self.orphaning_incomplete: list[str] = []  # NAME.json left beside orphan-NAME.json by an interrupted orphan()
        self.warnings: list[str] = []

    def newest_verified(self) -> Backup | None:
        """The backup with the highest counter that is verified (manifest and, when checked, payload)
        and no orphan: what restore takes and status measures the age of."""
        good = [b for b in self.backups if b.candidate]
        return good[-1] if good else None

    def newest_good(self) -> Backup | None:
        """The newest verified backup whose payload matches its manifest now: payloads are checked
        newest first, and one that does not match (a flipped byte) stops being verified, so the
        next one is tried. What restore should take, and what prune must keep."""
        for backup in reversed(self.backups):
            if not backup.candidate:
                continue
            if backup.payload_checked or backup.check_payload():
                return backup
            self.warnings.append("%s: %s; not counted as verified" % (backup.name, backup.payload_error))
        return None

    def get(self, name: str) -> Backup:
        for backup in self.backups:
            if backup.name == name:
                return backup
        raise CatalogError("%s: no backup named %s" % (self.folder, name))

    def to_dict(self, now: float, where: str) -> dict[str, Any]:
        newest = self.newest_verified()
        return {
            "cluster": self.cluster, "engine": self.engine, "folder": self.folder, "where": where, "exists": self.exists,
            "backups": [b.to_dict(now, where) for b in self.backups],
            "newest_verified": newest.name if newest else None,
            "interrupted": self.interrupted, "temporaries": self.temporaries, "invalid": self.invalid,
            "unknown": self.unknown, "orphaning_incomplete": self.orphaning_incomplete, "warnings": self.warnings,
        }

    # --- changes: only while holding exclusive(self.folder) ---

    def orphan(self, name: str, reason: str, by: str, now: float | None = None) -> Backup:
        """Rename backup `name` (manifest and payload) to orphan-NAME; its manifest gains `orphaned`.

        Two files cannot be renamed in one step, so the order makes every instant safe: the
        orphan manifest is written first (atomically), so from then on the backup reads as an
        orphan; then the payload is renamed; then the old manifest goes. A run killed in between
        is finished by calling orphan() again (read_catalog lists it in orphaning_incomplete)."""
        backup = self.get(name)
        stamp = time.strftime(CREATED_FORMAT, time.gmtime(time.time() if now is None else now))
        manifest = dict(backup.manifest)
        manifest.setdefault("orphaned", {"at": stamp, "reason": reason, "by": by})
        target = os.path.join(self.folder, ORPHAN_PREFIX + name + MANIFEST_EXT)
        if backup.manifest_path != target:
            arch.write_atomic(target, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())
        payload = None
        if backup.payload_path:
            payload = os.path.join(self.folder, ORPHAN_PREFIX + manifest["payload"]["file"])
            if backup.payload_path != payload:
                os.rename(backup.payload_path, payload)
                arch.fsync_dir(self.folder)
        plain = os.path.join(self.folder, name + MANIFEST_EXT)
        if os.path.exists(plain):
            os.unlink(plain)
            arch.fsync_dir(self.folder)
        if name in self.orphaning_incomplete:
            self.orphaning_incomplete.remove(name)
        backup.manifest, backup.manifest_path, backup.payload_path, backup.orphan = manifest, target, payload, True
        return backup

    def remove(self, name: str) -> list[str]:
        """Remove a backup that is no orphan: manifest first (from then on it is no backup), then
        its payload. Returns the file names removed."""
        backup = self.get(name)
        if backup.orphan:
            raise CatalogError("%s: %s is an orphan; orphans are never removed" % (self.folder, name))
        removed = []
        for path in backup.files():
            os.unlink(path)
            arch.fsync_dir(self.folder)
            removed.append(os.path.basename(path))
        self.backups.remove(backup)
        return removed

    def remove_stale(self) -> list[str]:
        """Remove the temporaries of dead writers and the payloads of interrupted writes. Under the
        folder's exclusive lock no writer is working, so none of them is anyone's work in
        progress; none ever was a backup (no manifest named it)."""
        removed = []
        for temp in self.temporaries:
            if temp["kind"] == "tmp":
                removed.extend(arch.remove_stale_temporaries(os.path.join(self.folder, temp["base"])))
            else:
                path = os.path.join(self.folder, temp["file"])
                if os.path.exists(path):
                    os.unlink(path)
                    removed.append(temp["file"])
        for item in self.interrupted:
            os.unlink(os.path.join(self.folder, item["file"]))
            removed.append(item["file"])
        if removed:
            arch.fsync_dir(self.folder)
        self.temporaries, self.interrupted = [], []
        return sorted(set(removed))

    def finish_orphaning(self, by: str) -> list[str]:
        """Complete every orphan() that was interrupted (see orphan)."""
        done = []
        for name in list(self.orphaning_incomplete):
            self.orphan(name, "interrupted orphaning finished", by)
            done.append(name)
        return done


def check_names(cluster: str | None, engine: str | None) -> None:
    """CatalogError naming the input for a cluster or engine that cannot name a backup folder."""
    if engine is not None and engine not in ENGINES:
        raise CatalogError("engine=%s: expected one of %s" % (engine, ", ".join(ENGINES)))
    if cluster is not None and not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", cluster):
        raise CatalogError("cluster=%s: a cluster's name is letters, digits, _, . and -, starting with a letter "
                           "or digit (it names a folder and every backup file)" % cluster)


def read_catalog(dest_dir: str, cluster: str, engine: str, now: float | None = None) -> Catalog:
    """The catalog of <dest_dir>/<cluster>/<engine>; a missing folder is an empty catalog."""
    check_names(cluster, engine)
    now = time.time() if now is None else now
    catalog = Catalog(folder_of(dest_dir, cluster, engine), cluster, engine)
    if not catalog.exists:
        return catalog
    names = sorted(os.listdir(catalog.folder))
    manifests: dict[str, list[tuple[str, bool]]] = {}
    payloads: dict[tuple[str, bool], str] = {}
    for filename in names:
        path = os.path.join(catalog.folder, filename)
        if not os.path.isfile(path) or os.path.islink(path):
            catalog.unknown.append(filename)
            continue
        temp = _PARTIAL.match(filename) or _TMP.match(filename)
        if temp:
            st = os.stat(path)
            pid = int(temp["pid"])
            catalog.temporaries.append({
                "file": filename, "kind": "partial" if temp.re is _PARTIAL else "tmp",
                "base": temp.groupdict().get("base"), "pid": pid, "writer_alive": _pid_alive(pid),
                "size": st.st_size, "age_seconds": int(now - st.st_mtime)})
            continue
        split = _split(filename)
        if split is None:
            catalog.unknown.append(filename)
            continue
        name, ext, orphan = split
        parsed = parse_name(name)
        if parsed is None or parsed["cluster"] != cluster or parsed["engine"] != engine:
            catalog.unknown.append(filename)
            catalog.warnings.append("%s: %s is not a backup of %s %s; left alone" % (catalog.folder, filename, cluster, engine))
            continue
        if ext == MANIFEST_EXT:
            manifests.setdefault(name, []).append((path, orphan))
        else:
            payloads[(name, orphan)] = path
    claimed = set()
    for name in sorted(manifests, key=lambda n: parse_name(n)["counter"]):  # type: ignore[index]
        entries = manifests[name]
        if len(entries) == 2:  # NAME.json beside orphan-NAME.json: orphan() was interrupted
            catalog.orphaning_incomplete.append(name)
            catalog.warnings.append("%s: orphaning of %s was interrupted; it is an orphan, the next prune or "
                                    "orphan finishes the renames" % (catalog.folder, name))
            entries = [e for e in entries if e[1]]
        path, orphan = entries[0]
        try:
            manifest = load_manifest(path)
            _need(manifest["name"] == name, path, "name", "is %r, but the file is named for %s" % (manifest["name"], name))
            _need(manifest["cluster"] == cluster and manifest["engine"] == engine, path, "cluster",
                  "and engine are %s %s, but the folder is %s's %s" % (manifest["cluster"], manifest["engine"],
                                                                       cluster, engine))
        except ManifestError as exc:
            catalog.invalid.append({"file": os.path.basename(path), "error": str(exc)})
            catalog.warnings.append("%s; it is not listed as a backup and never removed" % exc)
            continue
        except OSError as exc:
            catalog.invalid.append({"file": os.path.basename(path), "error": "%s: %s" % (path, exc.strerror)})
            continue
        ext = manifest["payload"]["file"][len(name):]
        found = None
        for key in ((name, orphan), (name, not orphan)):  # an interrupted orphan() may have left either name
            if key in payloads and payloads[key].endswith(ext):
                found = payloads[key]
                claimed.add(key)
                break
        backup = Backup(manifest, path, found, orphan)
        if found is None:
            catalog.warnings.append("%s: payload %s of backup %s is missing; it is not a good backup"
                                    % (catalog.folder, manifest["payload"]["file"], name))
        catalog.backups.append(backup)
    for key, path in sorted(payloads.items()):
        if key not in claimed:
            catalog.interrupted.append({"name": key[0], "file": os.path.basename(path), "size": os.path.getsize(path)})
            catalog.warnings.append("%s: %s has no manifest: an interrupted write, not a backup"
                                    % (catalog.folder, os.path.basename(path)))
    catalog.backups.sort(key=lambda b: b.counter)
    return catalog


def discover(dest_dir: str) -> list[tuple[str, str]]:
    """Every (cluster, engine) folder under dest_dir, sorted."""
    out = []
    if os.path.isdir(dest_dir):
        for cluster in sorted(os.listdir(dest_dir)):
            for engine in ENGINES:
                if not cluster.startswith(".") and os.path.isdir(folder_of(dest_dir, cluster, engine)):
                    out.append((cluster, engine))
    return out


@contextlib.contextmanager
def exclusive(folder: str, timeout: float = 300.0) -> Iterator[float]:
    """datadir_archive.locked(folder), giving up with Busy after `timeout` seconds of waiting."""
    def on_wait(waited: float) -> None:
        if waited > timeout:
            raise Busy("%s: another process (a backup being written?) held its lock for %.0f s; nothing was changed"
                       % (folder, waited))
    with arch.locked(folder, on_wait, interval=min(1.0, max(timeout / 10, 0.05))) as waited:
        yield waited


# --- rules across catalogs --------------------------------------------------------------------

def _counters_of(catalog: Any) -> Iterable[int]:
    """Every counter a catalog (a Catalog or its to_dict()) shows: backups, orphans, interrupted
    payloads, temporaries and manifests that do not validate (by their file's name), since a
    counter that was ever handed out is never reused."""
    if isinstance(catalog, Catalog):
        yield from (b.counter for b in catalog.backups)
        names = [i["name"] for i in catalog.interrupted] + [t["file"] for t in catalog.temporaries + catalog.invalid]
    else:
        yield from (b["counter"] for b in catalog.get("backups", []))
        names = [i["name"] for i in catalog.get("interrupted", [])] + [
            t["file"] for t in catalog.get("temporaries", []) + catalog.get("invalid", [])]
    for name in names:
        match = re.search(r"-(?:dqlite|etcd)-(\d{10})-\d{8}T\d{6}Z", name)
        if match:
            yield int(match.group(1))


def next_counter(catalogs: Iterable[Any], member_counters: Iterable[int | None] = ()) -> int:
    """The counter of the next backup of a cluster: one more than the highest counter it ever had
    anywhere: in any destination's catalog (orphans, interrupted writes and temporaries too) and
    what the members recorded (`member_counters`, None for a member that recorded none). Counters
    thus never repeat, even when a destination was lost or wiped: any survivor remembers."""
    seen = [0]
    for catalog in catalogs:
        seen.extend(_counters_of(catalog))
    seen.extend(c for c in member_counters if c is not None)
    for counter in seen:
        if not _is_int(counter) or counter < 0:
            raise CatalogError("member_counters: %r is not a counter (an integer >= 0)" % (counter,))
    return max(seen) + 1


def position_key(position: dict[str, Any]) -> tuple[int, int]:
    """A raft position's order: last term, then last index."""
    return (position["term"], position["index"])


def plan_orphans(catalog: Catalog, new_manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Which backups of `catalog` the new backup (its manifest, validated) makes orphans: those
    (no orphan yet) whose position is ahead of the new one's (the cluster was rolled back or
    rebuilt from older data: the newer data would be lost if they were pruned or overwritten), and
    those of another cluster_id (another incarnation of the cluster). Each with its reason."""
    validate_manifest(new_manifest, "new_manifest")
    new_position = position_key(new_manifest["position"])
    out = []
    for backup in catalog.backups:
        if backup.orphan:
            continue
        reasons = []
        if backup.cluster_id != new_manifest["cluster_id"]:
            reasons.append("cluster_id %s differs from the new backup %s's %s"
                           % (backup.cluster_id, new_manifest["name"], new_manifest["cluster_id"]))
        position = position_key(backup.manifest["position"])
        if position > new_position:
            reasons.append("its position (term %d, index %d) is ahead of the new backup %s's (term %d, index %d)"
                           % (position + (new_manifest["name"],) + new_position))
        if reasons:
            out.append({"name": backup.name, "counter": backup.counter, "reason": "; ".join(reasons)})
    return out
