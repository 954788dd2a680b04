# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Carry out the repair actions the inspection (dqlite_datadir.inspect_datadir) proposes for one
dqlite data directory, never deleting data: a quarantined file is moved into the quarantine
folder, a segment is cut only after its original was copied there and checked.

PRIVATE to this collection: may change without notice. Standard library only.

The quarantine folder's manifest.json lists one entry per file (file, from, to, size, sha256 of
the original, action "moved" or "cut", cut_to and the cut file's sha256, the problems it
answers, and done). Entries are written before the step (done false) and marked done after it,
so a run killed half way is finished by the next one, and a repair already done is recognised
from the manifest and the files (a resumed recovery runs the same repairs again).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
from typing import Callable

from ansible_collections.quorum.recovery.plugins.module_utils import datadir_archive as arch
from ansible_collections.quorum.recovery.plugins.module_utils import dqlite_datadir
from ansible_collections.quorum.recovery.plugins.module_utils.refused import Refused

MANIFEST = "manifest.json"
MOVED, CUT = "moved", "cut"


def requested_steps(repairs: list) -> list[dict]:
    """One step per file from the repair actions, in the shape the inspection proposes them
    (`{"quarantine": [names]}` or `{"truncate": {"file", "length"}}`): {"file", "action",
    "cut_to", "input"}. A file both quarantined and cut is only moved: the move keeps it whole."""
    steps, reasons = {}, []
    for i, action in enumerate(repairs):
        where = "repairs[%d]" % i
        if not isinstance(action, dict) or len(action) != 1 or not set(action) <= {"quarantine", "truncate"}:
            reasons.append("%s: %r is not a repair action; give {quarantine: [file names]} or "
                           "{truncate: {file: name, length: bytes}}, as the inspection's problems[].action do"
                           % (where, action))
            continue
        if "quarantine" in action:
            names = action["quarantine"]
            if not isinstance(names, list) or not names:
                reasons.append("%s: quarantine takes a non-empty list of file names, not %r" % (where, names))
                continue
            for name in names:
                bad = _bad_name(name)
                if bad:
                    reasons.append("%s: quarantine %s" % (where, bad))
                else:
                    steps[name] = {"file": name, "action": MOVED, "cut_to": None, "input": where}
            continue
        cut = action["truncate"]
        if not isinstance(cut, dict) or set(cut) != {"file", "length"}:
            reasons.append("%s: truncate takes {file: name, length: bytes}, not %r" % (where, cut))
            continue
        bad, length = _bad_name(cut["file"]), _length(cut["length"])
        if bad or length is None:
            reasons.append("%s: truncate %s" % (where, bad or "length %r is not a number of bytes" % (cut["length"],)))
        elif cut["file"] not in steps:
            steps[cut["file"]] = {"file": cut["file"], "action": CUT, "cut_to": length, "input": where}
        elif steps[cut["file"]]["action"] == CUT and steps[cut["file"]]["cut_to"] != length:
            reasons.append("%s: truncate %s to %d bytes, but %s cuts it to %d" % (
                where, cut["file"], length, steps[cut["file"]]["input"], steps[cut["file"]]["cut_to"]))
    if reasons:
        raise Refused("; ".join(reasons) + "; nothing was changed")
    return list(steps.values())


def _bad_name(name) -> str | None:
    if not isinstance(name, str) or not name or name in (".", "..") or os.path.basename(name) != name:
        return "takes file names inside path, not %r" % (name,)
    return None


def _length(value) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def proposed(member: dict) -> tuple[set, dict]:
    """The files the inspection proposes to quarantine, and to cut (file -> length)."""
    quarantine, cut = set(), {}
    for problem in member.get("problems", []):
        action = problem.get("action") or {}
        quarantine.update(action.get("quarantine", []))
        if "truncate" in action:
            cut[action["truncate"]["file"]] = action["truncate"]["length"]
    return quarantine, cut


def read_manifest(quarantine_dir: str) -> list[dict]:
    try:
        with open(os.path.join(quarantine_dir, MANIFEST)) as handle:
            return json.load(handle)
    except FileNotFoundError:
        return []


def listing(path: str) -> dict:
    """The directory as name -> size, read from disk (the diff's before and after)."""
    return {name: os.lstat(os.path.join(path, name)).st_size for name in sorted(os.listdir(path))}


def _sha256_prefix(path: str, length: int) -> str:
    digest, left = hashlib.sha256(), length
    with open(path, "rb") as handle:
        while left:
            chunk = handle.read(min(arch.CHUNK, left))
            if not chunk:
                break
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def _recorded(manifest: list[dict], step: dict) -> dict | None:
    """The newest manifest entry for this very step (same file, action and cut point)."""
    for entry in reversed(manifest):
        if entry["file"] == step["file"] and entry["action"] == step["action"] and \
                entry.get("cut_to") == step["cut_to"]:
            return entry
    return None


def step_state(path: str, quarantine_dir: str, step: dict, manifest: list[dict]) -> str:
    """V(done): the manifest records this step and the files show it done; V(resume): an earlier
    run recorded it (its inspection proposed it) and the file is still the one it recorded;
    V(new): never recorded, so the current inspection must propose it."""
    source, kept = os.path.join(path, step["file"]), os.path.join(quarantine_dir, step["file"])
    entry = _recorded(manifest, step)
    if entry is None:
        return "new"
    kept_whole = os.path.isfile(kept) and arch.sha256_file(kept) == entry["sha256"]
    if step["action"] == MOVED:
        if not os.path.exists(source) and kept_whole:
            return "done"
    elif kept_whole and os.path.isfile(source) and os.path.getsize(source) == step["cut_to"] \
            and arch.sha256_file(source) == entry.get("cut_sha256"):
        return "done"
    if os.path.isfile(source) and arch.sha256_file(source) == entry["sha256"]:
        return "resume"
    return "new"


def plan_steps(path: str, quarantine_dir: str, steps: list[dict], member: dict) -> list[dict]:
    """Decide every step before any change: its state, and the manifest entry of each step still
    to do. Refuses, naming the input, a step the inspection does not propose, a file that is not
    there, or a quarantined copy that would be overwritten."""
    manifest = read_manifest(quarantine_dir)
    quarantine, cut = proposed(member)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    reasons, planned = [], []
    for step in steps:
        state = step_state(path, quarantine_dir, step, manifest)
        name, source, kept = step["file"], os.path.join(path, step["file"]), os.path.join(quarantine_dir, step["file"])
        if state == "new":
            what = "quarantine %s" % name if step["action"] == MOVED else "truncate %s to %d bytes" % (name, step["cut_to"])
            if not os.path.isfile(source):
                reasons.append("%s: %s: %s is not a file in %s" % (step["input"], what, name, path))
                continue
            if step["action"] == MOVED and name not in quarantine:
                reasons.append("%s: %s: no problem the inspection found proposes it" % (step["input"], what))
                continue
            if step["action"] == CUT and cut.get(name) != step["cut_to"]:
                reasons.append("%s: %s: %s" % (step["input"], what, "the inspection proposes cutting it at byte %d"
                                               % cut[name] if name in cut else "no problem the inspection found "
                                               "proposes a cut of it"))
                continue
            if os.path.lexists(kept):
                reasons.append("%s: %s: %s already exists, and a quarantined file is never overwritten"
                               % (step["input"], what, kept))
                continue
        entry = None
        if state != "done":
            entry = {"file": name, "from": source, "to": kept, "size": os.path.getsize(source),
                     "sha256": arch.sha256_file(source), "action": step["action"], "time": stamp,
                     "reasons": [p["message"] for p in member.get("problems", [])
                                 if name in ((p.get("action") or {}).get("quarantine", []))
                                 or ((p.get("action") or {}).get("truncate") or {}).get("file") == name],
                     "done": False}
            if step["action"] == CUT:
                entry["cut_to"] = step["cut_to"]
                entry["cut_sha256"] = _sha256_prefix(source, step["cut_to"])
        planned.append(dict(step, state=state, entry=entry))
    if reasons:
        raise Refused("; ".join(reasons) + "; nothing was changed", member=member)
    return planned


def _copy_checked(source: str, kept: str, sha256: str) -> None:
    """Copy to a temporary name in the quarantine folder, check it, then give it its name: a
    killed copy never carries the real name."""
    partial = kept + ".partial"
    shutil.copy2(source, partial)
    with open(partial, "rb") as handle:
        os.fsync(handle.fileno())
    if arch.sha256_file(partial) != sha256:
        raise Refused("the copy of %s in the quarantine does not match the original; it was not changed" % source)
    os.replace(partial, kept)


def _write_manifest(quarantine_dir: str, manifest: list[dict]) -> None:
    arch.write_atomic(os.path.join(quarantine_dir, MANIFEST), json.dumps(manifest, indent=2).encode(), mode=0o644)


def apply_steps(path: str, quarantine_dir: str, planned: list[dict]) -> list[dict]:
    """Carry out the steps not done yet; returns their manifest entries."""
    todo = [p for p in planned if p["state"] != "done"]
    if not todo:
        return []
    os.makedirs(quarantine_dir, mode=0o700, exist_ok=True)
    manifest = read_manifest(quarantine_dir)
    fresh = [p["entry"] for p in todo if p["state"] == "new"]
    for step in todo:
        if step["state"] == "resume":  # an earlier run recorded it: finish that entry
            step["entry"] = _recorded(manifest, step)
    manifest += fresh
    _write_manifest(quarantine_dir, manifest)  # the intent, before any change
    for step in todo:
        entry = step["entry"]
        if entry["action"] == MOVED:
            try:
                os.rename(entry["from"], entry["to"])  # the quarantine folder is beside path: a rename
            except OSError:
                _copy_checked(entry["from"], entry["to"], entry["sha256"])
                os.unlink(entry["from"])  # only once a checked copy holds it
        else:
            if not (os.path.isfile(entry["to"]) and arch.sha256_file(entry["to"]) == entry["sha256"]):
                _copy_checked(entry["from"], entry["to"], entry["sha256"])
            with open(entry["from"], "r+b") as handle:
                handle.truncate(entry["cut_to"])
                os.fsync(handle.fileno())
        entry["done"] = True
        _write_manifest(quarantine_dir, manifest)
    return [p["entry"] for p in todo]


def repair(path: str, repairs: list, quarantine_dir: str, inspect: Callable[[str], dict],
           check_mode: bool = False) -> dict:
    """Inspect `path`, check every repair against what the inspection proposes, and carry out
    those not done yet (none in check mode). Returns changed, moved (file -> where the original
    is), cut (file -> length), manifest (this run's entries), quarantine_dir, member (the
    inspection after the repair; before it in check mode) and diff (listings before and after,
    the after predicted in check mode). Raises Refused (details: member, the inspection the refusal was
    decided on, when there was one) with nothing changed."""
    path = path.rstrip("/") or "/"
    if not os.path.isdir(path):
        raise Refused("path %s is not a directory; nothing was changed" % path)
    steps = requested_steps(repairs)
    running = dqlite_datadir.is_running(path)["running"]
    if running:  # no lock: a restore never works where dqlite runs, and the engine's locks must not block
        return _repair_locked(path, steps, quarantine_dir, inspect, check_mode)
    with arch.locked(path, shared=check_mode):  # no restore of this collection works on it meanwhile
        return _repair_locked(path, steps, quarantine_dir, inspect, check_mode)


def _repair_locked(path, steps, quarantine_dir, inspect, check_mode):
    member = inspect(path)
    planned = plan_steps(path, quarantine_dir, steps, member)
    todo = [p for p in planned if p["state"] != "done"]
    if todo and member.get("running", {}).get("running"):
        raise Refused("dqlite is running on %s (%s): stop it before repairing; nothing was changed"
                      % (path, member["running"].get("evidence")), member=member)
    before = listing(path)
    moved = {p["file"]: p["entry"]["to"] for p in todo}
    cut = {p["file"]: p["cut_to"] for p in todo if p["action"] == CUT}
    if check_mode:
        after = {n: (cut.get(n, size)) for n, size in before.items() if n not in moved or n in cut}
        entries = [p["entry"] for p in todo]
    else:
        entries = apply_steps(path, quarantine_dir, planned)
        after = listing(path)
        if todo:
            member = inspect(path)
    return {"changed": bool(todo), "moved": moved, "cut": cut, "manifest": entries, "quarantine_dir": quarantine_dir,
            "member": member, "diff": {"before": before, "after": after, "before_header": path, "after_header": path}}
