# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which backup a recovery restores (docs/backup-format.md): the newest VERIFIED backup whose
payload checks out (size and sha256), or the one the operator names.

PRIVATE to this collection: may change without notice. Standard library only.

Two halves. At each destination (a backup host, the controller) `walk` lists the manifests and
checks payloads from the newest verified one down, stopping at the first that checks out (or, for
a named backup, at that one): only what is needed is read. On the controller `choose` merges the
destinations' answers: a payload that fails its check at one destination may be whole at another;
one that fails everywhere is named in a warning and the previous one is taken.
The folder is read as the backup catalog (module_utils/backup_catalog.py) reads it for status and
retention; this adds only the restore's choice.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile

from ansible_collections.quorum.recovery.plugins.module_utils import backup_catalog as bc
from ansible_collections.quorum.recovery.plugins.module_utils import backup_payload as bp
from ansible_collections.quorum.recovery.plugins.module_utils import datadir_archive as arch

NEWEST = "newest"


class ChoiceError(Exception):
    """No backup can be restored as asked; the message says why and names the input."""


def verified(manifest: dict) -> bool:
    return ((manifest.get("verified") or {}).get("result")) == "ok"


def walk(folder: str, wanted: str, progress=None) -> dict:
    """At one destination: every manifest, and the payload checks made from the newest verified
    backup down to the first that checks out (wanted=newest) or to the named one.
    checked: {name: None (whole) or the error}."""
    # the catalog's reading of the folder (module_utils/backup_catalog.py): orphans, partial writes
    # and manifests that do not validate are no candidates
    folder = os.path.abspath(folder)
    engine_dir = os.path.dirname(folder)
    catalog = bc.read_catalog(os.path.dirname(engine_dir), os.path.basename(engine_dir), os.path.basename(folder))
    manifests = {b.name: b.manifest for b in catalog.backups if not b.orphan}
    unreadable = [entry["error"] for entry in catalog.invalid]
    checked: dict = {}
    for manifest in sorted(manifests.values(), key=lambda m: -int(m.get("counter") or 0)):
        if not verified(manifest) and manifest["name"] != wanted:
            continue
        try:
            kwargs = {"progress": progress} if progress else {}
            bp.check_payload(os.path.join(folder, manifest["payload"]["file"]), manifest, **kwargs)
            checked[manifest["name"]] = None
        except bp.PayloadError as exc:
            checked[manifest["name"]] = str(exc)
        if manifest["name"] == wanted or (wanted == NEWEST and checked[manifest["name"]] is None):
            break
    return {"folder": folder, "manifests": manifests, "checked": checked, "unreadable": unreadable}


def choose(listings: dict, wanted: str, order: list | None = None) -> dict:
    """listings: {destination: walk() result}; order: the destinations by preference (first the
    controller: no transfer). Returns {name, where, folder, manifest, warnings, newer, newest}:
    `newer` the backups newer than the chosen one that are verified and whole somewhere (a
    restore of the chosen one is then a rollback), `newest` the newest verified by its manifest."""
    order = list(order or sorted(listings))
    manifests: dict = {}
    for dest in order:
        for name, manifest in listings[dest]["manifests"].items():
            manifests.setdefault(name, manifest)
    warnings = ["%s: %s" % (dest, text) for dest in order for text in listings[dest].get("unreadable") or []]
    good: dict = {}
    bad: dict = {}
    for dest in order:
        for name, error in listings[dest]["checked"].items():
            if error is None:
                good.setdefault(name, dest)
            else:
                bad.setdefault(name, []).append("%s: %s" % (dest, error))
    by_counter = sorted(manifests.values(), key=lambda m: -int(m.get("counter") or 0))
    newest_verified = next((m["name"] for m in by_counter if verified(m)), None)
    where_text = ", ".join("%s (%s)" % (d, listings[d]["folder"]) for d in order) or "no destination"
    if wanted == NEWEST:
        chosen = next((m for m in by_counter if verified(m) and m["name"] in good), None)
        if chosen is None:
            raise ChoiceError("recover_from_backup=newest: no verified backup whose payload checks out at %s%s"
                              % (where_text, "".join("; %s is damaged (%s)" % (n, "; ".join(e))
                                                     for n, e in sorted(bad.items()))))
    else:
        chosen = manifests.get(wanted)
        if chosen is None:
            raise ChoiceError("recover_from_backup=%s: no such backup at %s (found: %s)" % (
                wanted, where_text, ", ".join(m["name"] for m in by_counter) or "none"))
        if wanted not in good:
            raise ChoiceError("recover_from_backup=%s: its payload does not check out anywhere (%s)"
                              % (wanted, "; ".join(bad.get(wanted) or ["not checked"])))
        if not verified(chosen):
            warnings.append("%s was never verified (%s): it is restored because recover_from_backup names it"
                            % (wanted, (chosen.get("verified") or {}).get("result") or "no verification"))
    counter = int(chosen.get("counter") or 0)
    for name in sorted(bad, key=lambda n: -int(manifests[n].get("counter") or 0)):
        if name in good:
            warnings.append("%s is damaged at %s; its whole copy at %s is used" % (name, "; ".join(bad[name]), good[name])
                            if name == chosen["name"] else
                            "%s is damaged at %s (whole at %s)" % (name, "; ".join(bad[name]), good[name]))
        elif int(manifests[name].get("counter") or 0) > counter:
            warnings.append("backup %s is DAMAGED at every destination that holds it (%s): skipped, the previous "
                            "verified backup %s is restored instead" % (name, "; ".join(bad[name]), chosen["name"]))
    newer = [m["name"] for m in by_counter if int(m.get("counter") or 0) > counter and verified(m) and m["name"] in good]
    return {"name": chosen["name"], "where": good[chosen["name"]], "folder": listings[good[chosen["name"]]]["folder"],
            "manifest": chosen, "warnings": warnings, "newer": newer, "newest": newest_verified}


def _identity_pipe(identity: str) -> int:
    """A pipe holding the identity, its read end returned: age reads it as /dev/fd/N, so the key
    never touches a disk (an age identity is far below a pipe's buffer)."""
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, identity.encode() + (b"" if identity.endswith("\n") else b"\n"))
    finally:
        os.close(write_end)
    return read_end


def _opened(dest: str, manifest: dict) -> bool:
    for entry in manifest.get("files") or []:
        path = os.path.join(dest, entry["name"])
        if not os.path.isfile(path) or os.path.getsize(path) != entry["size"] or arch.sha256_file(path) != entry["sha256"]:
            return False
    return bool(manifest.get("files"))


def open_payload(path: str, manifest: dict, dest: str, identity: str = "", age: str = "age") -> dict:
    """Check the payload at path (size, sha256), decrypt it with the identity when it is
    encrypted, and unpack the files its manifest lists into dest, each checked against the
    manifest's sha256; on any failure dest is not made. Runs on the controller only (the only
    place the identity ever is). Returns {changed, files: [{name, path, size, sha256}]}."""
    name = manifest["name"]
    entries = {e["name"]: e for e in manifest.get("files") or []}
    files = [{"name": n, "path": os.path.join(dest, n), "size": e["size"], "sha256": e["sha256"]}
             for n, e in sorted(entries.items())]
    if _opened(dest, manifest):
        return {"changed": False, "files": files}
    encrypted = bool(manifest["payload"].get("encrypted"))
    if encrypted and not identity.strip():
        raise ChoiceError("backup %s is encrypted with age (to %s): give the identity that decrypts it in "
                          "recover_backup_identity (from Ansible Vault); nothing was written"
                          % (name, ", ".join(manifest["payload"].get("recipients") or ["its recipients"])))
    bp.check_payload(path, manifest)
    for entry in entries:
        if entry.startswith("/") or ".." in entry.split("/"):
            raise ChoiceError("backup %s lists the file %r, outside its folder; refused" % (name, entry))
    work = "%s.partial-%d" % (dest, os.getpid())
    os.makedirs(work, mode=0o700)
    proc = None
    seen: dict = {}
    try:
        with open(path, "rb") as source:
            if encrypted:
                fd = _identity_pipe(identity)
                try:
                    proc = subprocess.Popen([age, "-d", "-i", "/dev/fd/%d" % fd], stdin=source,  # pylint: disable=consider-using-with
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(fd,))
                finally:
                    os.close(fd)
                stream = proc.stdout
            else:
                stream = source
            try:
                _unpack(stream, work, entries, seen)
            except (tarfile.TarError, OSError, EOFError) as exc:
                if proc is None:
                    raise ChoiceError("backup %s: its payload cannot be unpacked: %s" % (name, exc))
            if proc is not None:
                proc.stdout.read()  # type: ignore[union-attr]
                err = proc.stderr.read().decode("utf-8", "replace").strip()  # type: ignore[union-attr]
                if proc.wait():
                    raise ChoiceError("recover_backup_identity does not decrypt backup %s (age: %s); nothing was "
                                      "written" % (name, err or "exit %d" % proc.returncode))
        for entry_name, entry in entries.items():
            if seen.get(entry_name) != (entry["size"], entry["sha256"]):
                raise ChoiceError("backup %s: %s in its payload %s its manifest (size %s, sha256 %s)" % (
                    name, entry_name, "is missing from" if entry_name not in seen else "does not match",
                    entry["size"], entry["sha256"]))
        if os.path.lexists(dest):  # an earlier, incomplete open of this backup on the controller
            os.rename(dest, "%s.incomplete-%d" % (dest, os.getpid()))
        os.rename(work, dest)
        arch.fsync_dir(os.path.dirname(dest) or ".")
    except BaseException:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)  # only this run's own unpacked copy, on the controller
        raise
    return {"changed": True, "files": files}


def _unpack(stream, work: str, entries: dict, seen: dict) -> None:
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            if member.name not in entries or not member.isfile():
                continue
            target = os.path.join(work, member.name)
            os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
            digest, size = hashlib.sha256(), 0
            handle = tar.extractfile(member)
            if handle is None:
                continue
            with open(target, "wb") as out:
                os.fchmod(out.fileno(), 0o600)
                for chunk in iter(lambda: handle.read(arch.CHUNK), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            seen[member.name] = (size, digest.hexdigest())
