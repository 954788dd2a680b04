# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Inspect one dqlite data directory, read-only, and say what dqlite would do with it.

PRIVATE to this collection: may change without notice. Standard library only.

inspect_datadir() returns the member's facts: identity, cached and authoritative membership,
metadata, snapshots, segments, the last log entry (term and index), problems and a verdict.
It opens files for reading only and never renames, writes, locks or starts anything.
Predictions replay the raft loader (canonical/raft uv.c, uv_list.c, uv_segment.c,
uv_snapshot.c, uv_metadata.c), the same in raft 0.14 to 0.18 and in dqlite's in-tree raft:
auto-recovery (on by default) renames a corrupt LAST closed segment, or a corrupt open segment,
to corrupt-* and retries once. predict_start() is that replay; docs/dqlite_info.md has the
behaviour measured against real dqlite.
"""

from __future__ import annotations

import hashlib
import os
import struct
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.quorum.recovery.plugins.module_utils import dqlite_format as fmt
from ansible_collections.quorum.recovery.plugins.module_utils import member
from ansible_collections.quorum.recovery.plugins.module_utils.member import (  # noqa: F401 pylint: disable=unused-import
    address_is_local,
    ERROR, HEALTHY, INFO, REPAIRABLE, UNUSABLE, WARNING, verdict)  # the statuses, re-exported for the modules

BOOTSTRAP_ID = 0x2DC171858C3155BE  # go-dqlite's ID of the node that bootstraps a cluster
NODE_LOCAL_FILES = ("info.yaml", "cluster.crt", "cluster.key", "localnode.yaml", "failure-domain",
                    "k8s-dqlite.sock", "dqlite-lock")


def _problem(severity, file, message, dqlite_would, data_lost, remedy, index_range=None, action=None):
    return member.problem("dqlite", severity, file, message, dqlite_would, data_lost, remedy,
                          index_range=index_range, action=action)


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


def _inspect_snapshots(path, kinds, full, problems, pool, lz4_engine="python"):
    """Every snapshot's names, .meta and size; the check of its data file is submitted to pool.
    Returns (snapshots, checking): _collect_snapshot_checks(checking) waits for the checks."""
    snapshots, checks = [], []
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
            problems.append(_problem(
                WARNING, data_name, "snapshot %d/%d has an empty data file" % (term, index),
                "skip it and load the previous snapshot (an empty data file is an unfinished snapshot)",
                "nothing if the log still holds the entries after the previous snapshot", "none needed",
                index_range=[index, index]))
        else:
            checks.append((entry, data_path))
        snapshots.append(entry)
    return snapshots, [(entry, pool.submit(_snapshot_data, data_path, full, lz4_engine)) for entry, data_path in checks]


def _collect_snapshot_checks(checking):
    for entry, future in checking:
        entry["data"] = future.result()
        if not entry["data"]["ok"]:
            entry["status"] = "corrupt"


def _snapshot_data(path, full, lz4_engine):
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if not fmt.is_lz4_frame(magic):
        return {"format": "raw", "ok": True, "note": "uncompressed: raft keeps no checksum of raw snapshot data"}
    try:
        return dict(fmt.check_lz4_file(path, full, lz4_engine), format="lz4", ok=True)
    except fmt.FormatError as exc:
        return {"format": "lz4", "ok": False, "error": str(exc), "offset": exc.offset}


def _segment_facts(path, name, kind, first, last, full):
    data = _read(os.path.join(path, name))
    parsed = fmt.parse_segment(data, full=full, closed=(kind == "closed"))
    facts = {"file": name, "kind": kind, "size": len(data), "format": parsed["format"],
             "batches": len(parsed["batches"]), "entries": parsed["entries"], "error": parsed["error"],
             "end_offset": parsed["end"], "trailing_nonzero_bytes": parsed["trailing_nonzero_bytes"],
             "first_index": first, "last_index": last, "last_term": None, "changes": [], "term_starts": []}
    index = first
    term_now = None
    for batch in parsed["batches"]:
        entries = batch["entries"]
        if entries and (entries[0][0] != term_now or entries[-1][0] != term_now):
            for offset, (term, _etype, _size) in enumerate(entries):
                if term != term_now:
                    # where each term begins: two logs part where their terms first differ
                    facts["term_starts"].append([term, index + offset])
                    term_now = term
        # only CHANGE payloads are read; copying every payload would double a full scan's time
        if any(etype == fmt.ENTRY_CHANGE for _term, etype, _size in batch["entries"]):
            for offset, (term, etype, payload) in enumerate(fmt.entry_payloads(data, batch)):
                if etype == fmt.ENTRY_CHANGE:
                    try:
                        servers = fmt.parse_configuration(payload)
                    except fmt.FormatError as exc:
                        servers = {"error": str(exc)}
                    facts["changes"].append({"index": index + offset, "term": term, "servers": servers})
        index += len(batch["entries"])
        facts["last_term"] = batch["entries"][-1][0]
    if parsed["batches"]:
        # Batches differ between members (each writes its own), entries do not: this digest of
        # the last entry tells two logs that end at the same term and index apart.
        term, etype, payload = list(fmt.entry_payloads(data, parsed["batches"][-1]))[-1]
        facts["last_entry_sha256"] = hashlib.sha256(struct.pack("<QB", term, etype) + bytes(payload)).hexdigest()
    return facts


def _reuse_large_buffers():
    """Let the C allocator reuse the buffers of a scan instead of mapping fresh ones.

    Every segment is read whole (8 MiB by default) and, at full depth, reflected into a second
    buffer of its size. glibc serves a block above its mmap threshold (128 KiB at start) with a
    fresh mapping, which the kernel must fault in and zero, and unmaps it when freed: measured,
    that cost a third of a full scan of segments. Freeing one mapped block raises the threshold
    to that block's size (up to 32 MiB), after which such buffers come from the heap and are
    reused. Elsewhere this is one short-lived 16 MiB allocation."""
    block = bytearray(16 << 20)
    del block


def inspect_datadir(path: str, depth: str = "full", auto_recovery: bool = True, lz4: str = "auto",
                    identity: str = "app") -> dict:
    """Everything dqlite_info reports about one data directory (see the module's RETURN).

    lz4 picks what checks snapshot contents (dqlite_format.lz4_engine: auto, library, tool,
    python); a named engine the host lacks raises ValueError before anything is read.
    identity says where the member's own ID and address are kept: "app" (the go-dqlite app's
    info.yaml and cluster.yaml in the directory) or "lxd-local-db" (LXD: the node-local sqlite
    database ../local.db, its raft_nodes table and core.https_address)."""
    full = depth == "full"
    lz4_engine = fmt.lz4_engine(lz4)
    _reuse_large_buffers()
    problems: list = []
    result: dict = {"path": path, "depth": depth, "lz4_engine": lz4_engine if full else None,
                    "exists": os.path.isdir(path), "problems": problems}
    if not result["exists"]:
        problems.append(_problem(ERROR, path, "data directory does not exist", "start as a new empty node",
                                 "everything this member held", "rebuild this member from the winner"))
        result["verdict"] = UNUSABLE
        result["summary"] = member.summary("dqlite", result)
        return result
    names = sorted(os.listdir(path))
    kinds = _classify(names)
    result["files"] = names
    result["node_local_files"] = [n for n in names if n in NODE_LOCAL_FILES]
    result["identity_source"] = identity
    if identity == "lxd-local-db":
        result["identity"], result["cluster_yaml"] = lxd_local_db(path, problems)
        # LXD's names of the members (recover_lost may name them so)
        result["names"] = {n["id"]: n["name"] for n in result["cluster_yaml"] or [] if n.get("name")}
    else:
        result["identity"], result["cluster_yaml"] = _read_yaml_files(path, names, problems)
    result["metadata"] = _inspect_metadata(path, kinds, problems)
    # The contents of every snapshot are checked in threads while this thread reads the log:
    # liblz4 and file reads run without the GIL. Whether a snapshot's contents are good does
    # not change which snapshots raft loads (it loads the newest complete pair, good or bad).
    workers = max(1, min(len(kinds["snapshot"]), os.cpu_count() or 1)) if full and lz4_engine != "python" else 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        snapshots, checking = _inspect_snapshots(path, kinds, full, problems, pool, lz4_engine)
        usable = [s for s in snapshots if s["status"] in ("ok", "corrupt")]
        newest = usable[-1] if usable else None
        snapshot_problems = len(problems)
        result["segments"] = _inspect_log(path, kinds, newest, usable, full, problems, auto_recovery)
        _collect_snapshot_checks(checking)
    result["snapshots"] = snapshots
    if newest and newest["status"] == "corrupt":
        older = usable[-2] if len(usable) > 1 else None
        why = newest.get("meta_error") or (newest["data"] or {}).get("error")
        problems.insert(snapshot_problems, _problem(  # in the order of the files: before the log's
            ERROR, newest["meta_file"] if newest.get("meta_error") else newest["file"],
            "newest snapshot %d/%d is corrupt: %s" % (newest["term"], newest["index"], why),
            "refuse to start: raft loads only the newest snapshot and does not fall back",
            "nothing if the log still holds every entry after the older snapshot; otherwise the entries "
            "up to index %d" % newest["index"],
            "quarantine %s and %s so dqlite loads %s" % (
                newest["file"], newest["meta_file"], older["file"] if older else "the log from index 1"),
            index_range=[newest["index"], newest["index"]],
            action={"quarantine": [newest["file"], newest["meta_file"]]}))
    result["log"] = _log_summary(result["segments"], newest, usable)
    result["membership"] = _membership(result, newest, problems)
    result["prediction"] = predict_start(result["metadata"], snapshots, result["segments"], auto_recovery,
                                         _app_refusal(result, names, problems) if identity == "app" else None)
    result["product_hint"] = _lxd_hint(result["segments"]) if identity == "lxd-local-db" else None
    _explain_prediction(result["prediction"], result["log"], problems)
    result["leftovers"] = {"tmp": kinds["tmp"], "corrupt": kinds["corrupt"]}
    if "join" in names:
        problems.append(_problem(WARNING, "join", "this node never finished joining its cluster",
                                 "retry the join at start", "nothing", "rebuild this member from the winner"))
    result["running"] = is_running(path)
    result["address_local"] = _check_address_local(result["identity"], problems)
    result["verdict"] = verdict(problems)
    result["summary"] = _summary(result)
    return result


def _summary(result):
    identity = result.get("identity") or {}
    servers = ((result.get("membership") or {}).get("authoritative") or {}).get("servers") or []
    current = (result.get("metadata") or {}).get("current") or {}
    return member.summary(
        "dqlite", result, member_id=identity.get("id"), address=identity.get("address"),
        address_source=(LXD_LOCAL_DB if result.get("identity_source") == "lxd-local-db" else "info.yaml")
        if identity else None, hint=result.get("product_hint"),
        voters=[dict({"id": s["id"], "address": s["address"], "role": s["role"]},
                     **({"name": result["names"][s["id"]]} if s["id"] in (result.get("names") or {}) else {}))
                for s in servers],
        current_term=current.get("term"), terms=_term_starts(result["segments"]),
        after_repair=_after_repair(result))


def _term_starts(segments):
    """[term, first index] of every term in the log raft would load, oldest first."""
    starts = []
    for seg in segments:
        if seg.get("ignored") or not seg["entries"]:
            continue
        for term, index in seg.get("term_starts") or []:
            if not starts or starts[-1][0] != term:
                starts.append([term, index])
    return starts


def _after_repair(result):
    """The log position raft would load once every proposed repair is done: quarantined files
    gone (the open segments then load right after the closed chain that is left), cut segments
    ending at their last complete batch (their entries are counted that way already).
    None when the member needs no repair."""
    actions = [p["action"] for p in result["problems"] if p["severity"] == ERROR and p.get("action")]
    if not actions or result["verdict"] != REPAIRABLE:
        return None
    gone = {name for action in actions for name in action.get("quarantine", [])}
    snaps = [s for s in result["snapshots"] if s["status"] == "ok" and s["file"] not in gone
             and s["meta_file"] not in gone]
    snapshot_index, snapshot_term = (snaps[-1]["index"], snaps[-1]["term"]) if snaps else (0, 0)
    last = (snapshot_term, snapshot_index, None)
    closed = [s for s in result["segments"] if s["kind"] == "closed" and not s.get("ignored")
              and s["file"] not in gone and s["entries"]]
    if closed and closed[-1]["last_index"] >= snapshot_index:
        last = (closed[-1]["last_term"], closed[-1]["last_index"], closed[-1].get("last_entry_sha256"))
    next_index = max(last[1], snapshot_index) + 1 if closed else snapshot_index + 1
    for seg in result["segments"]:
        if seg["kind"] == "open" and seg["file"] not in gone and seg["entries"]:
            next_index += seg["entries"]
            last = (seg["last_term"], next_index - 1, seg.get("last_entry_sha256"))
    # writes (info.yaml, cluster.yaml) are not repairs of files: the recovery writes those from its plan
    return {"last_term": last[0], "last_index": last[1], "snapshot_index": snapshot_index,
            "last_entry_sha256": last[2], "repairs": [a for a in actions if "write" not in a]}


LXD_LOCAL_DB = "local.db"
LXD_ROLES = {0: "voter", 1: "stand-by", 2: "spare"}


def lxd_local_db_path(path):
    """LXD keeps database/global (the raft directory) beside database/local.db (node-local)."""
    return os.path.join(os.path.dirname(os.path.normpath(path)), LXD_LOCAL_DB)


def read_lxd_local_db(path):
    """(own address, [{id, address, role, name}]) from LXD's node-local database, opened
    immutable so not even a journal or -shm file is made; raises sqlite3.Error or OSError."""
    import sqlite3  # only this reader needs it

    db = lxd_local_db_path(path)
    if not os.path.isfile(db):
        raise OSError("%s does not exist" % db)
    conn = sqlite3.connect("file:%s?immutable=1" % db, uri=True)
    try:
        config = dict(conn.execute("SELECT key, value FROM config").fetchall())
        rows = conn.execute("SELECT * FROM raft_nodes").fetchall()
        columns = [c[0] for c in conn.execute("SELECT * FROM raft_nodes").description]
    finally:
        conn.close()
    nodes = []
    for row in rows:
        item = dict(zip(columns, row))
        nodes.append({"id": int(item["id"]), "address": item["address"],
                      "role": LXD_ROLES.get(item.get("role", 0), str(item.get("role"))), "name": item.get("name") or ""})
    return config.get("cluster.https_address") or config.get("core.https_address"), nodes


def lxd_local_db(path, problems):
    """LXD's identity of this member and the membership its local.db lists (a cache LXD writes,
    not the raft log's truth: reported as a disagreement when they differ)."""
    try:
        address, nodes = read_lxd_local_db(path)
    except (OSError, ValueError, KeyError) as exc:
        problems.append(_problem(ERROR, LXD_LOCAL_DB, "LXD's local.db is unreadable: %s" % exc,
                                 "fail to start", "this member's identity", "restore local.db from the safety archive"))
        return None, None
    except Exception as exc:  # sqlite3.Error without importing sqlite3 at module load
        problems.append(_problem(ERROR, LXD_LOCAL_DB, "LXD's local.db is unreadable: %s" % exc,
                                 "fail to start", "this member's identity", "restore local.db from the safety archive"))
        return None, None
    own = [n for n in nodes if n["address"] == address]
    if len(own) != 1:
        problems.append(_problem(ERROR, LXD_LOCAL_DB, "local.db's raft_nodes has no entry for this member's address %s"
                                 % address, "start as a non-database member", "this member's identity",
                                 "restore local.db from the safety archive"))
        return None, nodes
    me = own[0]
    return {"id": me["id"], "address": me["address"], "role": me["role"], "name": me["name"]}, nodes


def _lxd_hint(segments):
    """What LXD itself would call this member's position (`lxd cluster edit`: "Latest dqlite
    segment ID"): the end index of its newest CLOSED segment. It ignores open segments and terms,
    so it can name another member than the election does; the plan shows both."""
    closed = [s["last_index"] for s in segments if s.get("kind") == "closed" and s.get("last_index") is not None]
    return {"name": "LXD latest segment", "last_index": max(closed) if closed else 0}


def _check_address_local(identity, problems):
    """A member whose host no longer has the address in its info.yaml: the host's address
    changed (a new DHCP lease, a moved VM). Only a warning here: the data is as good as before,
    and the recovery gives the member its new address when told which one it is."""
    local = member.address_is_local(identity["address"]) if identity else None
    if local is False:
        problems.append(_problem(
            WARNING, "info.yaml", "address %s in info.yaml is not an address of this host (did the host's "
            "address change?)" % identity["address"],
            "fail to start: it cannot listen on %s (and go-dqlite refuses a --db address that differs from "
            "info.yaml)" % identity["address"], "nothing in the database",
            "recover with the member's new address, so the new membership and info.yaml name it"))
    return local


def _app_refusal(result, names, problems):
    """What the go-dqlite app (dqlite-demo, k8s-dqlite, LXD's and microcluster's nodes) checks
    before raft runs (app.New): info.yaml and cluster.yaml both present or both absent, and the
    address in info.yaml the one the node is started with. The module does not know the flag,
    so it takes the address the log's membership gives this node ID."""
    has_info, has_cluster = "info.yaml" in names, "cluster.yaml" in names
    if has_info != has_cluster:
        missing = "cluster.yaml" if has_info else "info.yaml"
        problems.append(_problem(
            ERROR, missing, "%s is missing and %s is not" % (missing, "info.yaml" if has_info else "cluster.yaml"),
            "refuse to start: inconsistent info.yaml and cluster.yaml (go-dqlite app)", "nothing in the database",
            "write %s (this node's %s) from the plan before starting" % (
                missing, "ID and address" if missing == "info.yaml" else "list of nodes"),
            action={"write": missing}))
        return "inconsistent info.yaml and cluster.yaml"
    if not has_info:
        problems.append(_problem(
            ERROR, "info.yaml", "info.yaml and cluster.yaml are both missing",
            "start as a NEW node with a new ID on top of this raft data", "this member's identity",
            "write info.yaml and cluster.yaml from the plan before starting", action={"write": "info.yaml"}))
        return None
    wrong_address = [d for d in result["membership"]["disagreements"] if d.get("address")]
    if wrong_address:
        item = wrong_address[0]
        problems.append(_problem(
            ERROR, "info.yaml", "info.yaml says address %s, the membership in the log says %s"
            % (item["address"], item["expected"]),
            "refuse to start when started with address %s: address %r in info.yaml does not match (go-dqlite app)"
            % (item["expected"], item["address"]), "nothing in the database",
            "write info.yaml from the plan (or start the node with the address info.yaml names)",
            action={"write": "info.yaml"}))
        return "address %r in info.yaml does not match %r" % (item["address"], item["expected"])
    if "join" in names and result["identity"] and result["identity"]["id"] == BOOTSTRAP_ID:
        return "bootstrap node can't join a cluster"
    return None


def _read_yaml_files(path, names, problems):
    identity, cluster = None, None
    for name in ("info.yaml", "cluster.yaml"):
        if name not in names:
            continue  # _app_refusal says what that means
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


def _read_ahead(path, names):
    """Ask the kernel to start reading these files into its page cache (posix_fadvise WILLNEED:
    it changes nothing on disk), so that from a cold cache the disk reads the next segments while
    this one is checked. Where the call is missing or fails, the scan only runs slower."""
    if not hasattr(os, "posix_fadvise"):
        return
    for name in names:
        try:
            fd = os.open(os.path.join(path, name), os.O_RDONLY)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)


def _inspect_log(path, kinds, newest, usable, full, problems, auto_recovery):
    snapshot_index = newest["index"] if newest else 0
    closed = kinds["closed"]
    segments = []
    for position, (first, last, name) in enumerate(closed):
        _read_ahead(path, [entry[2] for entry in closed[position + 1:position + 3]])  # cached: a no-op
        facts = _segment_facts(path, name, "closed", first, last, full)
        segments.append(facts)
        expected = last - first + 1
        if facts["error"]:
            err = facts["error"]
            message = "closed segment: %s in batch %d at byte %d" % (err["message"], err["batch"], err["offset"])
            lost = "entries %d-%d of this segment" % (first + facts["entries"], last)
        elif facts["entries"] != expected:
            message = "found %d entries (expected %d)" % (facts["entries"], expected)
            lost = "the entries of this segment"
        else:
            continue
        newer = [n for _f, _l, n in closed[position + 1:]]
        if not newer:
            remedy = ("quarantine it if no other member is behind index %d (its entries are lost here; the "
                      "cluster still has them if a majority does): dqlite then starts at index %d" % (first, first - 1))
            action = {"quarantine": [name]}
        elif snapshot_index and last <= snapshot_index:
            older = [n for _f, _l, n in closed[:position]]
            remedy = ("quarantine it and the %d older closed segments: the newest snapshot (index %d) covers "
                      "them, nothing is lost" % (len(older), snapshot_index))
            action = {"quarantine": older + [name]}
        else:
            remedy = ("rebuild this member from the winner (a judgement, not a repair: quarantining it and every "
                      "newer segment %s would lose entries %d-%d)" % (", ".join(newer), first, closed[-1][1]))
            action = None
        problems.append(_problem(ERROR, name, message, "refuse to start",  # refined by _explain_prediction
                                 lost, remedy, index_range=[first, last], action=action))
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
        if facts["format"] not in (None, 0, fmt.DISK_FORMAT) or (facts["format"] == 0 and facts["trailing_nonzero_bytes"]):
            later = [n for c, n in kinds["open"] if c > counter]
            problems.append(_problem(
                ERROR, name, "open segment has format %s, expected %d" % (facts["format"], fmt.DISK_FORMAT),
                "refuse to start (unexpected format version %s)" % facts["format"],  # refined by _explain_prediction
                "every entry in %s" % ", ".join([name] + later),
                "quarantine it and every later open segment (%s), as raft's auto-recovery would: the entries "
                "in them are lost here" % (", ".join(later) or "none"),
                index_range=[next_index, None], action={"quarantine": [name] + later}))
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
                    "review, then either cut it at byte %d (dqlite_repair keeps the original aside; dqlite "
                    "would truncate there itself at start) or rebuild this member from the winner" % error["offset"],
                    index_range=[next_index, next_index], action={"truncate": {"file": name, "length": error["offset"]}}))
            else:
                problems.append(_problem(
                    WARNING, name, "torn last batch %d at byte %d (%s)" % (error["batch"], error["offset"], error["message"]),
                    "truncate the segment at byte %d and start" % error["offset"],
                    "only the torn batch, never acknowledged", "none needed", index_range=[next_index, next_index]))
    return segments


def _explain_prediction(pred, log, problems):
    """Make each problem say what the replay of raft's start-up found, and make sure a start
    that fails or loses entries is never reported as healthy."""
    renamed = set(pred["renamed_to_corrupt"])
    if pred["starts"]:
        outcome = "start with last index %d" % pred["last_index"]
    else:
        outcome = "still refuse to start (%s)" % pred["reason"]
    for problem in problems:
        if problem["file"] in renamed and problem["severity"] == ERROR:
            problem["dqlite_would"] = ("rename %s to corrupt-<ns>-<name> (auto-recovery), then %s"
                                       % (", ".join(pred["renamed_to_corrupt"]), outcome))
    if pred["starts"] and pred["attempts"] > 1 and not pred["renamed_to_corrupt"]:
        problems.append(_problem(WARNING, None, "dqlite's first load fails (%s); its retry succeeds" % pred["first_failure"],
                                 "fail the first load, %s, retry and %s" % (_changes(pred), outcome),
                                 "nothing beyond what the newest snapshot holds", "none needed"))
    if not pred["starts"] and not any(p["severity"] == ERROR for p in problems):
        problems.append(_problem(ERROR, None, "dqlite would not start: %s" % pred["reason"],
                                 "refuse to start: %s" % pred["reason"], "the whole member until repaired",
                                 "rebuild this member from the winner"))
    elif not pred["starts"] and "behind last snapshot" in (pred["reason"] or ""):
        problems.append(_problem(ERROR, None, pred["reason"], "refuse to start", "nothing beyond the snapshot",
                                 "rebuild this member from the winner"))
    if pred["starts"] and pred["last_index"] < log["last_index"] and not any(
            p["severity"] == ERROR for p in problems):
        problems.append(_problem(ERROR, None, "dqlite would start with last index %d, below the %d on disk"
                                 % (pred["last_index"], log["last_index"]), outcome,
                                 "entries %d-%d" % (pred["last_index"] + 1, log["last_index"]),
                                 "rebuild this member from the winner"))


def _changes(pred):
    done = ["close %s as %s" % item for item in sorted(pred["closed_as"].items())]
    done += ["remove %s" % name for name in pred["removed"]]
    return "; ".join(done) or "change nothing"


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
    # where the app keeps its cached list and its own entry (LXD: both in local.db)
    lxd = result.get("identity_source") == "lxd-local-db"
    list_file, own_file = (LXD_LOCAL_DB, LXD_LOCAL_DB) if lxd else ("cluster.yaml", "info.yaml")
    if result["cluster_yaml"] is not None:
        cached = {(n["id"], n["address"], n["role"]) for n in result["cluster_yaml"]}
        if cached != truth:
            membership["disagreements"].append({
                "file": list_file, "only_in_file": sorted(cached - truth), "only_in_log": sorted(truth - cached)})
    if result["identity"] is not None:
        me = result["identity"]
        ids = {s["id"]: s for s in authoritative["servers"]}
        if me["id"] not in ids:
            membership["disagreements"].append({"file": own_file, "problem": "node %d is not in the membership"
                                                % me["id"]})
        elif ids[me["id"]]["address"] != me["address"]:
            membership["disagreements"].append({"file": own_file, "problem": "address %s, membership says %s"
                                                % (me["address"], ids[me["id"]]["address"]),
                                                "address": me["address"], "expected": ids[me["id"]]["address"]})
    for item in membership["disagreements"]:
        problems.append(_problem(INFO, item["file"], "%s disagrees with the membership in the log: %s"
                                 % (item["file"], item.get("problem") or "cached list differs"),
                                 "use the log's membership", "nothing", "the recovery writes it from the plan"))
    return membership


def is_running(path: str) -> dict:
    """Whether any process holds a file of the directory open (dqlite keeps its segments open),
    or a lock on dqlite-lock (dqlite >= 1.16.5). Read-only: /proc only."""
    return member.running(path, locks=("dqlite-lock",))


# ---------------------------------------------------------------------------- start-up replay
IO_ERROR, CORRUPT, HANG, CRASH = "io error", "corrupt", "hang", "crash"


def _closed_error(seg):
    """How raft's closed-segment loader fails on this file: (class, message) or None."""
    if seg["size"] == 0:
        return CORRUPT, "file is empty"
    err = seg["error"]
    if err:
        short = err["message"].startswith(("short read", "file has only"))
        return (IO_ERROR if short else CORRUPT), err["message"]
    expected = seg["last_index"] - seg["first_index"] + 1
    if seg["entries"] != expected:
        return CORRUPT, "found %d entries (expected %d)" % (seg["entries"], expected)
    return None


def predict_start(metadata: dict, snapshots: list, segments: list, auto_recovery: bool = True,
                  app_refusal: str | None = None) -> dict:
    """Replay what raft does to this directory at start (uvMetadataLoad, UvList and
    uvLoadSnapshotAndEntries of raft 0.14 to 0.18, the same code): which files it removes,
    truncates, closes or renames to corrupt-*, whether it starts, and the last index it keeps.

    Raft retries the load once after a corruption error (auto-recovery): the first pass has
    already closed the open segments it read and renamed the corrupt ones aside, so the second
    pass sees a changed directory. A short read (I/O error) is never retried: seen here,
    dqlite-demo then dies without a useful message.
    """
    pred: dict = {"starts": False, "outcome": "refuses", "reason": None, "first_failure": None, "last_index": None,
                  "attempts": 0, "removed": [], "renamed_to_corrupt": [], "truncated": {}, "closed_as": {}}
    if app_refusal:
        pred["reason"] = app_refusal
        return pred
    # Metadata errors end dqlite-demo with exit status 2 and no "Error:" line (measured).
    for name, info in sorted(metadata["files"].items()):
        if "error" in info:
            if info["size"] < fmt.METADATA_SIZE:
                pred["removed"].append(name)
            else:
                pred.update(outcome="crashes", reason="%s: %s" % (name, info["error"]))
                return pred
    versions = [info["version"] for info in metadata["files"].values() if "error" not in info]
    if len(versions) == 2 and versions[0] == versions[1]:
        pred.update(outcome="crashes", reason="metadata1 and metadata2 are both at version %d" % versions[0])
        return pred
    pred["removed"] += [s["file"] or s["meta_file"] for s in snapshots if s["status"] == "orphan"]
    loadable = [s for s in snapshots if s["status"] in ("ok", "corrupt")]
    newest = loadable[-1] if loadable else None
    files = [dict(s) for s in segments]  # the directory as raft changes it
    for depth in (0, 1):
        pred["attempts"] = depth + 1
        outcome, message = _load_once(newest, files, pred, auto_recovery)
        if outcome is None:
            pred.update(starts=True, outcome="starts", reason=None, last_index=message)
            return pred
        pred["reason"] = message
        pred["outcome"] = {HANG: "hangs", CRASH: "crashes"}.get(outcome, "refuses")
        pred["first_failure"] = pred["first_failure"] or message
        if outcome != CORRUPT or not auto_recovery:
            break
    return pred


def _load_once(newest, files, pred, auto_recovery):
    if newest is not None and newest["status"] == "corrupt":
        if newest.get("meta_error"):
            return CORRUPT, "read %s: %s" % (newest["meta_file"], newest["meta_error"])
        error = (newest["data"] or {}).get("error") or ""
        if "truncated" in error:
            # raft's Decompress() loops for ever when LZ4F_decompress() wants more input than
            # the file has (measured: dqlite-demo and .reconfigure spin at 100% CPU)
            return HANG, "decompress %s: %s" % (newest["file"], error)
        return IO_ERROR, "decompress %s: %s" % (newest["file"], error)
    live = [f for f in files if not f.get("gone")]
    closed = sorted((f for f in live if f["kind"] == "closed"), key=lambda f: f["first_index"])
    opened = sorted((f for f in live if f["kind"] == "open"), key=lambda f: f["counter"])
    start = 1
    if newest is not None:
        snap = newest["index"]
        if closed and closed[-1]["last_index"] < snap and not opened:
            closed = []  # every closed segment is behind the snapshot: none is loaded
        elif closed:
            first = len(closed) - 1
            while first > 0 and closed[first - 1]["last_index"] + 1 == closed[first]["first_index"]:
                first -= 1
            closed = closed[first:]
            if closed[0]["first_index"] > snap + 1:
                return CORRUPT, "closed segment %s is past last snapshot %s" % (closed[0]["file"], newest["file"])
        start = closed[0]["first_index"] if closed else snap + 1
    chain = closed + opened
    next_index = start
    for pos, seg in enumerate(chain):
        if seg["kind"] == "closed":
            if seg["first_index"] != next_index:
                return CORRUPT, "unexpected closed segment %s: first index should have been %d" % (
                    seg["file"], next_index)
            error = _closed_error(seg)
            if error:
                if error[0] == CORRUPT and auto_recovery and (pos + 1 == len(chain) or chain[pos + 1]["kind"] == "open"):
                    _rename_corrupt(chain[pos:], pred)
                return error[0], "load closed segment %s: %s" % (seg["file"], error[1])
            next_index = seg["last_index"] + 1
            continue
        name = seg["file"]
        if seg["size"] == 0 or (seg["format"] == 0 and not seg["trailing_nonzero_bytes"]):
            seg["gone"] = True
            pred["removed"].append(name)
            continue
        if seg["size"] < 8 or (seg["error"] and seg["error"]["message"].startswith("short read")):
            # measured: dqlite-demo dies of SIGSEGV here, without a message
            return CRASH, "load open segment %s: %s" % (name, (seg["error"] or {}).get("message", "short"))
        if seg["format"] != fmt.DISK_FORMAT:
            if auto_recovery:
                _rename_corrupt(chain[pos:], pred)
            return CORRUPT, "load open segment %s: unexpected format version %d" % (name, seg["format"])
        if not seg["entries"]:
            seg["gone"] = True
            pred["removed"].append(name)
            continue
        if seg["error"]:
            pred["truncated"][name] = seg["error"]["offset"]
        first, last = next_index, next_index + seg["entries"] - 1
        closed_name = "%016d-%016d" % (first, last)
        pred["closed_as"][name] = closed_name
        seg.update(kind="closed", file=closed_name, first_index=first, last_index=last, error=None,
                   size=seg["end_offset"])
        next_index = last + 1
    last_index = next_index - 1
    if newest is not None and last_index < newest["index"]:
        return CORRUPT, "last entry on disk has index %d, which is behind last snapshot's index %d" % (
            last_index, newest["index"])
    return None, last_index


def _rename_corrupt(segments, pred):
    for seg in segments:
        seg["gone"] = True
        pred["renamed_to_corrupt"].append(seg["file"])
