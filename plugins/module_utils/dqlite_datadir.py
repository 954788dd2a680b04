# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Inspect one dqlite data directory, read-only, and say what dqlite would do with it.

PRIVATE to this collection: may change without notice. Standard library only.

inspect_datadir() returns the member's facts: identity, cached and authoritative membership,
metadata, snapshots, segments, the last log entry (term and index), problems and a verdict.
It opens files for reading only and never renames, writes, locks or starts anything.
Predictions follow the raft loader (canonical/raft uv_load/uv_segment/uv_snapshot): the one
Debian ships (libraft 0.15, no automatic renaming of corrupt segments) unless told otherwise.
"""

from __future__ import annotations

import hashlib
import os
import struct

from ansible_collections.quorum.recovery.plugins.module_utils import dqlite_format as fmt

HEALTHY, REPAIRABLE, UNUSABLE = "healthy", "repairable", "unusable"
ERROR, WARNING, INFO = "error", "warning", "info"

NODE_LOCAL_FILES = ("info.yaml", "cluster.crt", "cluster.key", "localnode.yaml", "failure-domain",
                    "k8s-dqlite.sock", "dqlite-lock")


def _problem(severity, file, message, dqlite_would, data_lost, remedy, index_range=None, action=None):
    return {"severity": severity, "file": file, "index_range": index_range, "message": message,
            "dqlite_would": dqlite_would, "data_lost": data_lost, "remedy": remedy, "action": action}


def _read(path):
    with open(path, "rb") as handle:
        return handle.read()


def _classify(names):
    kinds = {"closed": [], "open": [], "snapshot": {}, "meta": {}, "metadata": [], "tmp": [], "corrupt": [],
             "other": []}
    for name in names:
        closed = fmt.CLOSED_SEGMENT_RE.match(name)
        opened = fmt.OPEN_SEGMENT_RE.match(name)
        snap = fmt.SNAPSHOT_RE.match(name)
        meta = fmt.SNAPSHOT_META_RE.match(name)
        if closed:
            kinds["closed"].append((int(closed.group(1)), int(closed.group(2)), name))
        elif opened:
            kinds["open"].append((int(opened.group(1)), name))
        elif snap:
            kinds["snapshot"][tuple(int(g) for g in snap.groups())] = name
        elif meta:
            kinds["meta"][tuple(int(g) for g in meta.groups())] = name
        elif name in ("metadata1", "metadata2"):
            kinds["metadata"].append(name)
        elif name.startswith("tmp-"):
            kinds["tmp"].append(name)
        elif name.startswith("corrupt-"):
            kinds["corrupt"].append(name)
        else:
            kinds["other"].append(name)
    kinds["closed"].sort()
    kinds["open"].sort()
    return kinds


def _inspect_metadata(path, kinds, problems):
    files, versions = {}, {}
    for name in ("metadata1", "metadata2"):
        if name not in kinds["metadata"]:
            continue
        data = _read(os.path.join(path, name))
        try:
            parsed = fmt.parse_metadata(data)
        except fmt.FormatError as exc:
            files[name] = {"error": str(exc), "size": len(data)}
            if len(data) < fmt.METADATA_SIZE:
                problems.append(_problem(
                    WARNING, name, "torn metadata file: %s" % exc, "delete %s and use the other file" % name,
                    "nothing (the other metadata file holds the previous term and vote)",
                    "none needed; dqlite removes it at start"))
            else:
                problems.append(_problem(
                    ERROR, name, "corrupt metadata file: %s" % exc, "refuse to start (malformed metadata)",
                    "the persisted term and vote in this file",
                    "quarantine %s if the other metadata file is valid; otherwise rebuild this member from the "
                    "winner" % name, action={"quarantine": [name]}))
            continue
        files[name] = parsed
        versions[name] = parsed["version"]
    chosen = None
    if len(versions) == 2 and versions["metadata1"] == versions["metadata2"]:
        problems.append(_problem(
            ERROR, "metadata1", "metadata1 and metadata2 are both at version %d" % versions["metadata1"],
            "refuse to start (corrupt metadata)", "nothing in the log; the term/vote pair is ambiguous",
            "quarantine the metadata file with the older mtime, or rebuild this member from the winner",
            action={"quarantine": ["metadata2"]}))
    if versions:
        name = max(versions, key=lambda n: versions[n])
        chosen = dict(files[name], file=name)
    return {"files": files, "current": chosen}


def _inspect_snapshots(path, kinds, full, problems):
    snapshots = []
    for key in sorted(set(kinds["snapshot"]) | set(kinds["meta"])):
        term, index, timestamp = key
        data_name, meta_name = kinds["snapshot"].get(key), kinds["meta"].get(key)
        entry = {"term": term, "index": index, "timestamp": timestamp, "file": data_name, "meta_file": meta_name,
                 "size": None, "status": "ok", "configuration_index": None, "servers": None, "data": None}
        if data_name is None or meta_name is None:
            present = data_name or meta_name
            entry["status"] = "orphan"
            problems.append(_problem(
                WARNING, present, "snapshot %d/%d has %s but not %s" % (
                    term, index, "data" if data_name else ".meta", ".meta" if data_name else "data"),
                "delete %s at start" % present, "nothing (an unfinished snapshot)", "none needed",
                index_range=[index, index]))
            snapshots.append(entry)
            continue
        data_path = os.path.join(path, data_name)
        entry["size"] = os.path.getsize(data_path)
        meta_data = _read(os.path.join(path, meta_name))
        try:
            meta = fmt.parse_snapshot_meta(meta_data)
            entry["configuration_index"] = meta["configuration_index"]
            entry["servers"] = meta["servers"]
        except fmt.FormatError as exc:
            entry["status"] = "corrupt"
            entry["meta_error"] = str(exc)
        if entry["size"] == 0:
            entry["status"] = "empty"
        else:
            data = _read(data_path)
            if fmt.is_lz4_frame(data):
                try:
                    entry["data"] = dict(fmt.verify_lz4_frame(data, full=full), format="lz4", ok=True)
                except fmt.FormatError as exc:
                    entry["data"] = {"format": "lz4", "ok": False, "error": str(exc), "offset": exc.offset}
                    entry["status"] = "corrupt"
            else:
                entry["data"] = {"format": "raw", "ok": True,
                                 "note": "uncompressed: raft keeps no checksum of raw snapshot data"}
        snapshots.append(entry)
    return snapshots


def _segment_facts(path, name, kind, first, last, full):
    data = _read(os.path.join(path, name))
    parsed = fmt.parse_segment(data, full=full, closed=(kind == "closed"))
    facts = {"file": name, "kind": kind, "size": len(data), "format": parsed["format"],
             "batches": len(parsed["batches"]), "entries": parsed["entries"], "error": parsed["error"],
             "end_offset": parsed["end"], "trailing_nonzero_bytes": parsed["trailing_nonzero_bytes"],
             "first_index": first, "last_index": last, "last_term": None, "changes": []}
    index = first
    for batch in parsed["batches"]:
        for term, etype, payload in fmt.entry_payloads(data, batch):
            if etype == fmt.ENTRY_CHANGE:
                try:
                    servers = fmt.parse_configuration(payload)
                except fmt.FormatError as exc:
                    servers = {"error": str(exc)}
                facts["changes"].append({"index": index, "term": term, "servers": servers})
            facts["last_term"] = term
            last = (term, etype, payload)
            index += 1
    if facts["last_term"] is not None:
        # Batches differ between members (each writes its own), entries do not: this digest
        # tells two logs that end at the same term and index apart.
        digest = hashlib.sha256(struct.pack("<QB", last[0], last[1]) + bytes(last[2])).hexdigest()
        facts["last_entry_sha256"] = digest
    return facts


def inspect_datadir(path, depth="full", raft_version="0.15"):
    """Everything dqlite_facts reports about one data directory (see the module's RETURN)."""
    full = depth == "full"
    problems = []
    result = {"path": path, "depth": depth, "exists": os.path.isdir(path), "problems": problems}
    if not result["exists"]:
        problems.append(_problem(ERROR, path, "data directory does not exist", "start as a new empty node",
                                 "everything this member held", "rebuild this member from the winner"))
        result["verdict"] = UNUSABLE
        return result
    names = sorted(os.listdir(path))
    kinds = _classify(names)
    result["files"] = names
    result["node_local_files"] = [n for n in names if n in NODE_LOCAL_FILES]
    result["identity"], result["cluster_yaml"] = _read_yaml_files(path, names, problems)
    result["metadata"] = _inspect_metadata(path, kinds, problems)
    snapshots = _inspect_snapshots(path, kinds, full, problems)
    result["snapshots"] = snapshots
    usable = [s for s in snapshots if s["status"] in ("ok", "corrupt")]
    newest = usable[-1] if usable else None  # raft loads the newest complete pair, good or bad
    if newest and newest["status"] == "corrupt":
        older = usable[-2] if len(usable) > 1 else None
        why = newest.get("meta_error") or (newest["data"] or {}).get("error")
        problems.append(_problem(
            ERROR, newest["file"], "newest snapshot %d/%d is corrupt: %s" % (newest["term"], newest["index"], why),
            "refuse to start: raft loads only the newest snapshot and does not fall back",
            "nothing if the log still holds every entry after the older snapshot; otherwise the entries "
            "up to index %d" % newest["index"],
            "quarantine %s and %s so dqlite loads %s" % (
                newest["file"], newest["meta_file"], older["file"] if older else "the log from index 1"),
            index_range=[newest["index"], newest["index"]],
            action={"quarantine": [newest["file"], newest["meta_file"]]}))
    result["segments"] = _inspect_log(path, kinds, newest, usable, full, problems, raft_version)
    result["log"] = _log_summary(result["segments"], newest, usable)
    result["membership"] = _membership(result, newest, problems)
    result["leftovers"] = {"tmp": kinds["tmp"], "corrupt": kinds["corrupt"]}
    if "join" in names:
        problems.append(_problem(WARNING, "join", "this node never finished joining its cluster",
                                 "retry the join at start", "nothing", "rebuild this member from the winner"))
    result["running"] = is_running(path)
    result["verdict"] = verdict(problems)
    return result


def _read_yaml_files(path, names, problems):
    identity, cluster = None, None
    for name in ("info.yaml", "cluster.yaml"):
        if name not in names:
            problems.append(_problem(
                WARNING if name == "cluster.yaml" else ERROR, name, "%s is missing" % name,
                "start without knowing %s" % ("its peers" if name == "cluster.yaml" else "its own ID and address"),
                "nothing in the database", "write %s from the plan" % name))
            continue
        try:
            with open(os.path.join(path, name), encoding="utf-8", errors="replace") as handle:
                nodes = fmt.parse_node_yaml(handle.read())
        except fmt.FormatError as exc:
            problems.append(_problem(ERROR, name, "%s is unreadable: %s" % (name, exc), "fail to start",
                                     "nothing in the database", "write %s from the plan" % name))
            continue
        nodes = [{"id": n["ID"], "address": n["Address"], "role": fmt.APP_ROLES.get(n["Role"], str(n["Role"]))}
                 for n in nodes]
        if name == "info.yaml":
            identity = nodes[0] if len(nodes) == 1 else None
            if identity is None:
                problems.append(_problem(ERROR, name, "info.yaml must describe exactly one node", "fail to start",
                                         "nothing in the database", "write info.yaml from the plan"))
        else:
            cluster = nodes
    return identity, cluster


def _inspect_log(path, kinds, newest, usable, full, problems, raft_version):
    snapshot_index = newest["index"] if newest else 0
    closed = kinds["closed"]
    segments = []
    for first, last, name in closed:
        facts = _segment_facts(path, name, "closed", first, last, full)
        segments.append(facts)
        expected = last - first + 1
        if facts["error"]:
            err = facts["error"]
            problems.append(_problem(
                ERROR, name, "closed segment: %s in batch %d at byte %d" % (err["message"], err["batch"], err["offset"]),
                "refuse to start" + (" (newer raft renames the LAST closed segment to corrupt-*)"
                                     if raft_version != "0.15" else ""),
                "entries %d-%d of this segment" % (first + facts["entries"], last),
                "if this is the newest closed segment and no other member is behind it: quarantine it "
                "(loses its entries); otherwise rebuild this member from the winner",
                index_range=[first, last], action={"quarantine": [name]}))
        elif facts["entries"] != expected:
            problems.append(_problem(
                ERROR, name, "found %d entries (expected %d)" % (facts["entries"], expected), "refuse to start",
                "the entries of this segment", "rebuild this member from the winner, or quarantine it if it is "
                "the newest closed segment", index_range=[first, last], action={"quarantine": [name]}))
    # the chain raft keeps: the newest contiguous run of closed segments
    chain_start = len(segments)
    for i in range(len(segments) - 1, -1, -1):
        if i == len(segments) - 1 or segments[i]["last_index"] + 1 == segments[i + 1]["first_index"]:
            chain_start = i
        else:
            break
    for i in range(chain_start):
        segments[i]["ignored"] = True
        problems.append(_problem(
            WARNING if snapshot_index else ERROR, segments[i]["file"],
            "not contiguous with the newer closed segments (gap before %s)" % segments[chain_start]["file"],
            "ignore it" if snapshot_index else "refuse to start (a gap in the log)",
            "nothing if the snapshot covers it" if snapshot_index else "the log after the gap",
            "none needed" if snapshot_index else "rebuild this member from the winner",
            index_range=[segments[i]["first_index"], segments[i]["last_index"]]))
    chain = segments[chain_start:]
    if chain:
        first_kept = chain[0]["first_index"]
        if snapshot_index and first_kept > snapshot_index + 1:
            problems.append(_problem(
                ERROR, chain[0]["file"], "closed segment %s is past last snapshot %d" % (chain[0]["file"], snapshot_index),
                "refuse to start", "entries %d-%d are missing from this member" % (snapshot_index + 1, first_kept - 1),
                "rebuild this member from the winner", index_range=[snapshot_index + 1, first_kept - 1]))
        elif not snapshot_index and first_kept != 1:
            problems.append(_problem(
                ERROR, chain[0]["file"], "the log starts at index %d and there is no snapshot" % first_kept,
                "refuse to start", "entries 1-%d" % (first_kept - 1), "rebuild this member from the winner",
                index_range=[1, first_kept - 1]))
    next_index = (chain[-1]["last_index"] + 1) if chain else snapshot_index + 1
    truncated_at = None
    for counter, name in kinds["open"]:
        facts = _segment_facts(path, name, "open", next_index, None, True)
        facts["counter"] = counter
        segments.append(facts)
        if facts["entries"]:
            facts["last_index"] = next_index + facts["entries"] - 1
        if truncated_at is not None and facts["entries"]:
            problems.append(_problem(
                ERROR, name, "open segment follows %s, which is cut short at batch %d: its entries would be "
                "loaded at the wrong index" % (truncated_at["file"], truncated_at["error"]["batch"]),
                "load them at index %d, splicing the log at the wrong place" % next_index,
                "entries from index %d on" % next_index,
                "quarantine %s (and every later open segment)" % name,
                index_range=[next_index, next_index + facts["entries"] - 1], action={"quarantine": [name]}))
        next_index += facts["entries"]
        error = facts["error"]
        if facts["format"] == 0 and facts["trailing_nonzero_bytes"]:
            problems.append(_problem(ERROR, name, "open segment has format 0 but non-zero content",
                                     "refuse to start (unexpected format version 0)", "nothing readable",
                                     "quarantine it", action={"quarantine": [name]}))
        elif error:
            truncated_at = facts
            short_read = error["message"].startswith("short read") or error["message"].startswith("file has only")
            after = error["nonzero_after_batch"]
            if short_read:
                problems.append(_problem(
                    ERROR, name, "open segment is cut inside batch %d at byte %d (%s)"
                    % (error["batch"], error["offset"], error["message"]),
                    "fail to start (an I/O error, not a decoding error; seen here: dqlite-demo dies with SIGSEGV "
                    "or SIGABRT and logs nothing useful)",
                    "only the incomplete batch %d, never acknowledged" % error["batch"],
                    "keep the original aside and cut the segment at byte %d, the end of the last complete batch"
                    % error["offset"], index_range=[next_index, next_index],
                    action={"truncate": {"file": name, "length": error["offset"]}}))
            elif after:
                problems.append(_problem(
                    ERROR, name,
                    "bad batch %d at byte %d (%s) followed by %d non-zero bytes"
                    % (error["batch"], error["offset"], error["message"], after),
                    "truncate the segment at byte %d and start" % error["offset"],
                    "whatever follows byte %d in %s (not readable as batches)" % (error["offset"], name),
                    "review: keep the original aside and let dqlite truncate, or rebuild this member",
                    index_range=[next_index, next_index], action={"truncate": {"file": name, "length": error["offset"]}}))
            else:
                problems.append(_problem(
                    WARNING, name, "torn last batch %d at byte %d (%s)" % (error["batch"], error["offset"], error["message"]),
                    "truncate the segment at byte %d and start" % error["offset"],
                    "only the torn batch, never acknowledged", "none needed", index_range=[next_index, next_index]))
    last_index = next_index - 1
    if newest and last_index < snapshot_index and segments:
        problems.append(_problem(
            ERROR, segments[-1]["file"], "last entry on disk %d is behind last snapshot %d" % (last_index, snapshot_index),
            "refuse to start", "nothing beyond the snapshot", "rebuild this member from the winner",
            index_range=[last_index, snapshot_index]))
    return segments


def _log_summary(segments, newest, usable):
    kept = [s for s in segments if not s.get("ignored") and s["entries"]]
    summary = {"snapshot_index": newest["index"] if newest else 0, "snapshot_term": newest["term"] if newest else 0,
               "first_index": kept[0]["first_index"] if kept else None, "last_index": 0, "last_term": 0,
               "source": "empty"}
    if newest:
        summary.update(last_index=newest["index"], last_term=newest["term"], source="snapshot")
    if kept and kept[-1]["last_index"] is not None and kept[-1]["last_index"] >= summary["last_index"]:
        summary.update(last_index=kept[-1]["last_index"], last_term=kept[-1]["last_term"], source=kept[-1]["file"],
                       last_entry_sha256=kept[-1].get("last_entry_sha256"))
    summary["snapshots"] = [s["index"] for s in usable]
    return summary


def _membership(result, newest, problems):
    changes = [c for s in result["segments"] if not s.get("ignored") for c in s["changes"]
               if isinstance(c["servers"], list)]
    authoritative = None
    if changes:
        latest = changes[-1]
        authoritative = {"source": "change entry", "index": latest["index"], "servers": latest["servers"]}
    if newest and newest.get("servers") and (authoritative is None or newest["configuration_index"] >= authoritative["index"]):
        authoritative = {"source": "snapshot %s" % newest["meta_file"], "index": newest["configuration_index"],
                         "servers": newest["servers"]}
    membership = {"authoritative": authoritative, "disagreements": []}
    if authoritative is None:
        return membership
    truth = {(s["id"], s["address"], s["role"]) for s in authoritative["servers"]}
    if result["cluster_yaml"] is not None:
        cached = {(n["id"], n["address"], n["role"]) for n in result["cluster_yaml"]}
        if cached != truth:
            membership["disagreements"].append({
                "file": "cluster.yaml", "only_in_file": sorted(cached - truth), "only_in_log": sorted(truth - cached)})
    if result["identity"] is not None:
        me = result["identity"]
        ids = {s["id"]: s for s in authoritative["servers"]}
        if me["id"] not in ids:
            membership["disagreements"].append({"file": "info.yaml", "problem": "node %d is not in the membership"
                                                % me["id"]})
        elif ids[me["id"]]["address"] != me["address"]:
            membership["disagreements"].append({"file": "info.yaml", "problem": "address %s, membership says %s"
                                                % (me["address"], ids[me["id"]]["address"])})
    for item in membership["disagreements"]:
        problems.append(_problem(INFO, item["file"], "%s disagrees with the membership in the log: %s"
                                 % (item["file"], item.get("problem") or "cached list differs"),
                                 "use the log's membership", "nothing", "the recovery writes it from the plan"))
    return membership


def verdict(problems):
    """healthy: dqlite would start and keep every valid entry; repairable: one reviewed local step
    (quarantine or cut) makes it so; unusable: rebuild the member from another."""
    errors = [p for p in problems if p["severity"] == ERROR]
    if not errors:
        return HEALTHY
    if all(p.get("action") for p in errors):
        return REPAIRABLE
    return UNUSABLE


def is_running(path):
    """Whether any process holds a file in the directory open (dqlite keeps its segments open),
    or a lock on dqlite-lock (dqlite >= 1.16.5). Read-only: /proc only."""
    real = os.path.realpath(path)
    lock_inode = None
    try:
        lock_inode = os.stat(os.path.join(path, "dqlite-lock")).st_ino
    except OSError:
        pass
    if lock_inode is not None:
        try:
            with open("/proc/locks") as handle:
                for line in handle:
                    fields = line.split()
                    if len(fields) > 5 and fields[5].rsplit(":", 1)[-1] == str(lock_inode):
                        return {"running": True, "evidence": "lock on dqlite-lock"}
        except OSError:
            pass
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return {"running": None, "evidence": "no /proc"}
    for pid in pids:
        fd_dir = "/proc/%s/fd" % pid
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(os.path.join(fd_dir, fd))
            except OSError:
                continue
            if target.startswith(real + "/"):
                return {"running": True, "evidence": "pid %s has %s open" % (pid, target), "pid": int(pid)}
    return {"running": False, "evidence": "no process has a file of the directory open"}
