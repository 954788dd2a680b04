# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Inspect one etcd data directory, read-only, and say what etcd would do with it.

PRIVATE to this collection: may change without notice. Standard library only.

inspect_datadir() follows etcd 3.4's start-up (etcdserver.NewServer): load the newest .snap
that decodes (broken ones are renamed *.broken), open the WAL at that snapshot (the last file
whose first index is at or before it, sequence numbers contiguous from there), ReadAll (a torn
tail in the last file is repaired by truncation, anything else is fatal), open the bbolt db,
and swap in <index>.snap.db when the snapshot is newer than the db's consistent_index.
It opens files for reading only and never renames, writes, locks or starts anything.
rank_members() is the offline election rule the recovery plan uses.
"""

from __future__ import annotations

import collections
import os

from ansible_collections.quorum.recovery.plugins.module_utils import bbolt_format as bolt
from ansible_collections.quorum.recovery.plugins.module_utils import etcd_format as fmt
from ansible_collections.quorum.recovery.plugins.module_utils import proc_holders

HEALTHY, REPAIRABLE, UNUSABLE = "healthy", "repairable", "unusable"
ERROR, WARNING, INFO = "error", "warning", "info"
REBUILD = "rebuild this member from the winner (restore the winner's snapshot here)"


def _problem(severity, file, message, etcd_would, data_lost, remedy, offset=None, repairable=False):
    return {"severity": severity, "file": file, "offset": offset, "message": message, "etcd_would": etcd_would,
            "data_lost": data_lost, "remedy": remedy, "repairable": repairable}


def _read(path):
    with open(path, "rb") as handle:
        return handle.read()


def _listdir(path):
    try:
        return sorted(os.listdir(path))
    except OSError:
        return None


def inspect_datadir(path, depth="full"):
    """Everything etcd_facts reports about one data directory (see the module's RETURN)."""
    full = depth == "full"
    problems = []
    result = {"path": path, "depth": depth, "exists": os.path.isdir(path), "problems": problems,
              "crc32c": fmt.CRC32C_IMPLEMENTATION, "member_id": None, "cluster_id": None}
    wal_dir, snap_dir = os.path.join(path, "member", "wal"), os.path.join(path, "member", "snap")
    wal_names, snap_names = _listdir(wal_dir), _listdir(snap_dir)
    if not result["exists"] or wal_names is None:
        problems.append(_problem(ERROR, "member/wal" if result["exists"] else path,
                                 "no member/wal directory: not an etcd data directory, or an empty one",
                                 "start as a brand-new member (and fail to join the old cluster)",
                                 "everything this member held", REBUILD))
        result["verdict"] = UNUSABLE
        result["running"] = is_running(path)
        return result
    snap_names = snap_names or []
    result["files"] = {"wal": wal_names, "snap": snap_names}
    snapshots, loaded = _inspect_snapshots(snap_dir, snap_names, problems)
    result["snapshots"] = snapshots
    result["snapshot_loaded"] = _public_snapshot(loaded)
    scan, selected = _inspect_wal(wal_dir, wal_names, loaded, full, problems)
    wal = scan.result() if scan else None
    result["wal"] = None if wal is None else {
        "files": wal["files"], "selected_from": selected, "record_counts": wal["record_counts"],
        "snapshot_records": len(wal["snapshots"]), "error": wal["error"]}
    if wal and wal["metadata"]:
        result["member_id"], result["cluster_id"] = wal["metadata"]["member_id"], wal["metadata"]["cluster_id"]
    result["log"] = {
        "last_index": wal["last_index"] if wal else None, "last_term": wal["last_term"] if wal else None,
        "hard_state": wal["hard_state"] if wal else None,
        "snapshot_index": loaded["index"] if loaded else 0, "snapshot_term": loaded["term"] if loaded else 0}
    result["db"] = _inspect_db(snap_dir, snap_names, loaded, full, problems)
    db = result["db"] or {}
    result["revision"] = db.get("revision")
    result["key_count"] = (db.get("snapshot_status") or {}).get("total_key")
    result["layout"] = "3.6" if db.get("storage_version") else ("3.5" if db.get("term") is not None else "3.4")
    result["membership"] = _membership(loaded, wal, db, problems)
    _cross_checks(result, wal, db, problems)
    result["leftovers"] = {"wal_tmp": [n for n in wal_names if n.endswith(".tmp")],
                           "broken": [n for n in wal_names + snap_names if n.endswith(".broken")]}
    result["running"] = is_running(path)
    result["verdict"] = verdict(problems)
    return result


def _public_snapshot(snap):
    if snap is None:
        return None
    return {k: snap[k] for k in ("file", "term", "index", "conf_state", "status", "data_size")}


def _inspect_snapshots(snap_dir, names, problems):
    """Every .snap, newest first, and the one etcd's snapshotter would load."""
    snapshots, loaded, broken = [], None, []
    for name in sorted((n for n in names if fmt.SNAP_NAME_RE.match(n)), reverse=True):
        term, index = (int(g, 16) for g in fmt.SNAP_NAME_RE.match(name).groups())
        entry = {"file": name, "term": term, "index": index, "status": "ok", "error": None, "conf_state": None,
                 "data_size": None, "members": {}}
        try:
            parsed = fmt.parse_snap(_read(os.path.join(snap_dir, name)))
            entry.update(conf_state=parsed["conf_state"], data_size=parsed["data_size"],
                         members=fmt.v2_store_members(parsed["data"]))
            if (parsed["term"], parsed["index"]) != (term, index):
                entry["status"] = "misnamed"
                problems.append(_problem(WARNING, name, "file name says term %d index %d, contents say %d/%d"
                                         % (term, index, parsed["term"], parsed["index"]),
                                         "load it by its contents", "nothing", "none needed"))
        except (fmt.FormatError, OSError) as exc:
            entry.update(status="broken", error=str(exc))
            broken.append(entry)
        snapshots.append(entry)
        if loaded is None and entry["status"] != "broken":
            loaded = entry
    for entry in broken:
        fallback = ("snapshot %s (index %d)" % (loaded["file"], loaded["index"]) if loaded
                    else "no snapshot: the WAL from its very first entry")
        problems.append(_problem(
            ERROR, entry["file"],
            "snapshot does not load: %s" % entry["error"],
            "rename it to %s.broken and load %s instead" % (entry["file"], fallback),
            "nothing if the WAL still holds every entry after %s; the WAL check below says"
            % ("index %d" % loaded["index"] if loaded else "index 0"),
            "none if the WAL check passes; otherwise %s" % REBUILD, offset=0, repairable=True))
    return snapshots, loaded


def _inspect_wal(wal_dir, names, loaded, full, problems):
    wals = []
    for name in names:
        match = fmt.WAL_NAME_RE.match(name)
        if match:
            wals.append((int(match.group(1), 16), int(match.group(2), 16), name))
    wals.sort()
    start_index, start_term = (loaded["index"], loaded["term"]) if loaded else (0, 0)
    if not wals:
        problems.append(_problem(ERROR, "member/wal", "no WAL files", "start as a brand-new member",
                                 "everything this member held", REBUILD))
        return None, None
    chosen = None
    for i, (_seq, first, _name) in enumerate(wals):
        if first <= start_index:
            chosen = i
    if chosen is None:
        problems.append(_problem(
            ERROR, wals[0][2], "the oldest WAL file starts at index %d, after the snapshot at index %d"
            % (wals[0][1], start_index), "fail to start (wal: file not found)",
            "every entry before index %d (purged, and not in a loadable snapshot)" % wals[0][1], REBUILD))
        return None, None
    selected = wals[chosen:]
    for earlier, later in zip(wals, wals[1:]):
        if later[0] != earlier[0] + 1:
            missing = "%016x..%016x" % (earlier[0] + 1, later[0] - 1)
            in_use = later in selected and earlier in selected
            problems.append(_problem(
                ERROR if in_use else INFO, later[2], "WAL sequence jumps from %s to %s: files %s are missing"
                % (earlier[2], later[2], missing),
                "fail to start (wal: file not found: sequence not continuous)" if in_use else
                "not read them (they precede the loaded snapshot)",
                "the entries of the missing files and everything after them" if in_use else "nothing",
                REBUILD if in_use else "none needed"))
            if in_use:
                return None, selected[0][2]
    scan = fmt.WalScan(start_index, start_term, full)
    for i, (_seq, _first, name) in enumerate(selected):
        scan.feed(name, _read(os.path.join(wal_dir, name)), i == len(selected) - 1)
        if scan.error:
            break
    error = scan.error
    if error:
        _wal_problem(error, scan, problems)
    elif not scan.snapshot_matched:
        problems.append(_problem(ERROR, selected[0][2], "no WAL snapshot record for the loaded snapshot (index %d, "
                                 "term %d)" % (start_index, start_term), "fail to start (wal: snapshot not found)",
                                 "the log cannot be replayed from the snapshot", REBUILD))
    return scan, selected[0][2]


def _wal_problem(error, scan, problems):
    where = "%s at offset %d" % (error["file"], error["offset"])
    good = "the log up to index %d (term %d) is intact" % (scan.last_index, scan.last_term)
    if error["kind"] in ("torn", "short") and error["in_last_file"]:
        after = error["data_bytes_after"] or 0
        problems.append(_problem(
            ERROR, error["file"], "torn write at the end of the log: %s in %s" % (error["message"], where),
            "repair it at start: copy the file to %s.broken and truncate it at offset %d (wal.Repair)"
            % (error["file"], error["offset"]),
            "the record being written at the power loss%s; %s" % (
                "" if after <= 1 << 20 else " and %d more bytes of written data after it" % after, good),
            "none needed: etcd repairs it itself (or truncate at offset %d after archiving the directory)"
            % error["offset"], offset=error["offset"], repairable=True))
        return
    problems.append(_problem(
        ERROR, error["file"], "%s in %s" % (error["message"], where),
        "refuse to start (failed to read WAL, cannot be repaired%s)" % (
            ": walpb: crc mismatch" if error["kind"] == "crc" else ""),
        "every entry after index %d that this member holds; %s" % (scan.last_index, good),
        REBUILD + "; if no member is further ahead, truncating the WAL at offset %d (after archiving) keeps "
        "the log up to index %d" % (error["offset"], scan.last_index), offset=error["offset"]))


def _inspect_db(snap_dir, names, loaded, full, problems):
    if "db" not in names:
        if loaded:
            problems.append(_problem(ERROR, "member/snap/db", "the bbolt db is missing",
                                     "create an empty db and look for %016x.snap.db" % loaded["index"],
                                     "the keyspace up to the snapshot", REBUILD))
        else:
            problems.append(_problem(WARNING, "member/snap/db", "the bbolt db is missing",
                                     "create an empty db and rebuild it from the whole WAL", "nothing", "none needed"))
        return None
    data = _read(os.path.join(snap_dir, "db"))
    db = bolt.read_etcd_db(data, full)
    name = "member/snap/db"
    bad = [m for m in db["metas"] if m["error"]]
    if db["meta_used"] is None:
        problems.append(_problem(ERROR, name, db["errors"][0]["message"], "refuse to start (bbolt: invalid database)",
                                 "the whole keyspace of this member", REBUILD, offset=0))
        return db
    if bad:
        other = db["metas"][db["meta_used"]]
        problems.append(_problem(
            ERROR, name, "meta page %d is invalid: %s" % (bad[0]["offset"] // db["page_size"], bad[0]["error"]),
            "open the db through meta page %s (txid %s); the next commit rewrites the bad page"
            % (db["meta_used"], other["txid"]),
            "at most the last write transaction (re-applied from the WAL, which holds it)",
            "none needed if the WAL check passes", offset=bad[0]["offset"], repairable=True))
    for error in db["errors"]:
        problems.append(_problem(
            ERROR, name, error["message"],
            "panic or crash (SIGBUS) when bbolt reads the page; `bbolt check` and `etcdctl snapshot status` fail",
            "the keys stored under the damaged page; the WAL cannot rebuild what the snapshot covers", REBUILD,
            offset=error["offset"]))
    for warning in db["warnings"]:
        problems.append(_problem(WARNING, name, warning, "run", "nothing", "none needed"))
    if loaded and db["consistent_index"] is not None and loaded["index"] > db["consistent_index"]:
        snap_db = "%016x.snap.db" % loaded["index"]
        if snap_db in names:
            problems.append(_problem(INFO, snap_db, "db is at consistent_index %s, behind the snapshot at index %s"
                                     % (db["consistent_index"], loaded["index"]),
                                     "replace member/snap/db with %s" % snap_db, "nothing", "none needed"))
        else:
            problems.append(_problem(
                ERROR, "member/snap/" + snap_db, "db is at consistent_index %s, behind the snapshot at index %s, and "
                "%s (the db received with that snapshot) is missing" % (db["consistent_index"], loaded["index"], snap_db),
                "refuse to start (failed to find database snapshot file)",
                "the keyspace changes between index %s and %s" % (db["consistent_index"], loaded["index"]), REBUILD))
    return db


def _membership(loaded, wal, db, problems):
    """Voters and learners as raft sees them: the loaded snapshot's conf state plus the conf
    changes after it in the log (3.5+ also keeps confState in the db: reported beside it)."""
    voters, learners, source = set(), set(), "none"
    names = {}
    if loaded and loaded.get("conf_state"):
        voters = set(loaded["conf_state"]["voters"])
        learners = set(loaded["conf_state"]["learners"])
        source = "snapshot %s" % loaded["file"]
        names.update(loaded.get("members") or {})
    for change in (wal or {}).get("conf_changes", []):
        source = "snapshot and WAL" if loaded else "WAL"
        for single in change.get("changes", [change]):
            member = single["member_id"]
            if single["type"] == "add":
                voters.add(member)
                learners.discard(member)
            elif single["type"] == "add_learner":
                learners.add(member)
                voters.discard(member)
            elif single["type"] == "remove":
                voters.discard(member)
                learners.discard(member)
            if single.get("name") is not None or single.get("peer_urls"):
                names.setdefault(member, {}).update(name=single.get("name", ""), peer_urls=single.get("peer_urls", []))
    for member_id, attrs in ((db or {}).get("members") or {}).items():
        names.setdefault(member_id, {}).setdefault("peer_urls", attrs["peer_urls"])
        if attrs.get("name"):
            names[member_id].setdefault("name", attrs["name"])

    def describe(ids):
        return [{"id": m, "name": names.get(m, {}).get("name", ""), "peer_urls": names.get(m, {}).get("peer_urls", [])}
                for m in sorted(ids)]
    return {"voters": describe(voters), "learners": describe(learners), "source": source,
            "db_members": sorted(((db or {}).get("members") or {}).keys()),
            "db_conf_state": (db or {}).get("conf_state")}


def _cross_checks(result, wal, db, problems):
    members = {m["id"] for m in result["membership"]["voters"] + result["membership"]["learners"]}
    db_members = set(result["membership"]["db_members"]) | set((db or {}).get("members_removed") or [])
    if members and db_members and not members & db_members:
        problems.append(_problem(
            ERROR, "member/snap/db", "the db lists members %s, none of which is in this member's log membership %s: "
            "the db belongs to another cluster" % (", ".join(sorted(db_members)), ", ".join(sorted(members))),
            "start and serve another cluster's keyspace under this cluster's log",
            "this member's own keyspace (the db is not its own)", REBUILD))
    if wal and db and db.get("consistent_index") is not None and wal["last_index"] is not None \
            and db["consistent_index"] > wal["last_index"] and not wal["error"]:
        problems.append(_problem(
            WARNING, "member/snap/db", "db consistent_index %d is beyond the last WAL entry %d"
            % (db["consistent_index"], wal["last_index"]), "start; raft and the db disagree on what is applied",
            "nothing visible here; the db was copied from elsewhere or the WAL lost its tail", REBUILD))
    if result["member_id"] and members and result["member_id"] not in members:
        problems.append(_problem(WARNING, "member/wal", "member %s is not in its own membership %s"
                                 % (result["member_id"], ", ".join(sorted(members))),
                                 "start as a removed member and stop", "nothing", REBUILD))


def verdict(problems):
    """healthy: etcd would start and keep every entry; repairable: etcd (or one reviewed local
    step) fixes it without losing committed data; unusable: rebuild the member from another."""
    errors = [p for p in problems if p["severity"] == ERROR]
    if not errors:
        return HEALTHY
    if all(p["repairable"] for p in errors):
        return REPAIRABLE
    return UNUSABLE


def rank_key(member):
    """(last log term, last index, max(commit, consistent_index), db revision): never HardState.term,
    which a member that campaigned alone has raised without growing its log."""
    log = member.get("log") or {}
    hard = log.get("hard_state") or {}
    applied = max(hard.get("commit") or 0, (member.get("db") or {}).get("consistent_index") or 0)
    return (log.get("last_term") or 0, log.get("last_index") or 0, applied, member.get("revision") or 0)


def rank_members(members):
    """Order members (a dict name -> inspect_datadir result) best first.

    Unusable members, and members whose cluster ID is not the majority's, are excluded with a reason.
    """
    excluded = {}
    counts = collections.Counter(m.get("cluster_id") for m in members.values() if m.get("cluster_id"))
    top = counts.most_common(2)
    cluster_id = top[0][0] if top and (len(top) == 1 or top[0][1] > top[1][1]) else None
    for name, member in members.items():
        if member.get("verdict") == UNUSABLE:
            excluded[name] = "unusable: " + "; ".join(p["message"] for p in member["problems"]
                                                      if p["severity"] == ERROR and not p["repairable"])
        elif cluster_id is None:
            excluded[name] = "cluster IDs disagree with no majority: %s" % dict(counts)
        elif member.get("cluster_id") != cluster_id:
            excluded[name] = "cluster ID %s, the others have %s" % (member.get("cluster_id"), cluster_id)
    order = sorted((n for n in members if n not in excluded), key=lambda n: (rank_key(members[n]), n), reverse=True)
    return {"order": order, "winner": order[0] if order else None, "cluster_id": cluster_id, "excluded": excluded,
            "keys": {n: list(rank_key(members[n])) for n in members}}


def is_running(path):
    """Whether a process holds a file of the member open (etcd keeps its WAL and db open) or a
    lock on member/snap/db (bbolt's flock), matched by device and inode (proc_holders)."""
    names = ["%s/%s" % (sub, name) for sub in ("member/wal", "member/snap")
             for name in _listdir(os.path.join(path, sub)) or []]
    return proc_holders.holder(proc_holders.file_ids(path, names), locks=("member/snap/db",))
