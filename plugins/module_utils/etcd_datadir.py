# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Inspect one etcd data directory, read-only, and say what etcd would do with it.

PRIVATE to this collection: may change without notice. Standard library only.

inspect_datadir() follows etcd's start-up (etcdserver.NewServer, 3.4.10 and later, 3.5), in its
order, which is checked by starting Debian's etcd 3.4.23 on damaged copies of real directories
(tests/integration/test_etcd_info.py):
 1. open the bbolt db: both meta pages bad -> panic; etcd does not persist bbolt's freelist, so
    bbolt walks every reachable page to rebuild it, and a page out of place -> panic or fault;
 2. no WAL file at all: bootstrap as a new member;
 3. wal.ValidSnapshotEntries reads EVERY WAL file from the first one: a CRC break, or a crc
    record that does not continue the chain (a file missing in the middle) -> refuse; a torn
    or short record only ends its reading;
 4. load the newest .snap that decodes AND has a WAL snapshot record at or below the last
    HardState commit (snap.LoadNewestAvailable: broken ones are renamed *.broken on the way,
    unmatched ones skipped);
 5. if that snapshot is newer than the db's consistent_index, move <index>.snap.db over the db;
    none -> panic;
 6. open the WAL at the snapshot (the last file whose first index is at or before it, sequence
    numbers contiguous from there; else refuse) and ReadAll: a torn or short tail in the last
    file is repaired (wal.Repair keeps a .broken copy and truncates), anything else -> refuse;
 7. raft: a HardState commit beyond the last entry -> panic.
Each problem carries its stage, what it alone makes etcd do (`etcd_start`), the error etcd
prints and the file change etcd makes; predict_start() walks them in etcd's order (`prediction`).
It opens files for reading only and never renames, writes, locks or starts anything.
summary() fills in the engine-neutral member summary the recovery's election reads
(module_utils/member.py, module_utils/election.py).
"""

from __future__ import annotations

import os

from ansible_collections.quorum.recovery.plugins.module_utils import bbolt_format as bolt
from ansible_collections.quorum.recovery.plugins.module_utils import etcd_format as fmt
from ansible_collections.quorum.recovery.plugins.module_utils import member
from ansible_collections.quorum.recovery.plugins.module_utils.member import (  # noqa: F401 pylint: disable=unused-import
    ERROR, HEALTHY, INFO, REPAIRABLE, UNUSABLE, WARNING, verdict)  # the statuses, re-exported for the modules
REBUILD = "rebuild this member from the winner (restore the winner's snapshot here)"
# what etcd does at start: goes on (possibly after changing files), refuses (a fatal log line,
# exit 1), panics (a Go panic or a memory fault, exit 2), or bootstraps a brand-new member
STARTS, REFUSES, PANICS, NEW_MEMBER = "starts", "refuses", "panics", "new-member"
# the steps of etcd's start-up, in order (see the module docstring)
STAGE_DB, STAGE_NEW, STAGE_WAL_CHECK, STAGE_SNAP, STAGE_BACKEND, STAGE_WAL_READ, STAGE_RAFT, STAGE_RUN = (
    10, 20, 30, 40, 50, 60, 70, 80)
# bbolt's errors for a bad meta page (bbolt errors.go), as Open returns them for meta page 0
_BOLT_ERRORS = {"ErrInvalid": "invalid database", "ErrVersionMismatch": "version mismatch",
                "ErrChecksum": "checksum error"}


def _problem(severity, file, message, etcd_would, data_lost, remedy, offset=None, repairable=False,
             stage=STAGE_RUN, etcd_start=STARTS, etcd_error=None, etcd_change=None):
    return member.problem("etcd", severity, file, message, etcd_would, data_lost, remedy, offset=offset,
                          repairable=repairable, stage=stage, etcd_start=etcd_start, etcd_error=etcd_error,
                          etcd_change=etcd_change)


def _read(path):
    with open(path, "rb") as handle:
        return handle.read()


def _listdir(path):
    try:
        return sorted(os.listdir(path))
    except OSError:
        return None


def inspect_datadir(path: str, depth: str = "full", key_limit: int = 20) -> dict:
    """Everything etcd_info reports about one data directory (see the module's RETURN);
    `unapplied` lists at most key_limit keys."""
    full = depth == "full"
    problems: list = []
    result: dict = {"path": path, "depth": depth, "exists": os.path.isdir(path), "problems": problems,
                    "crc32c": fmt.CRC32C_IMPLEMENTATION, "member_id": None, "cluster_id": None}
    wal_dir, snap_dir = os.path.join(path, "member", "wal"), os.path.join(path, "member", "snap")
    wal_names, snap_names = _listdir(wal_dir), _listdir(snap_dir) or []
    wals = sorted((int(m.group(1), 16), int(m.group(2), 16), m.group(0))
                  for m in (fmt.WAL_NAME_RE.match(n) for n in wal_names or []) if m)
    db = _inspect_db(snap_dir, snap_names, full, problems) if result["exists"] else None
    result["db"] = db
    if not wals:
        where = path if not result["exists"] else "member/wal"
        what = ("the directory does not exist" if not result["exists"] else
                "no member/wal directory" if wal_names is None else "no WAL files in member/wal")
        problems.append(_problem(
            ERROR, where, "%s: not an etcd data directory, or one that lost its log" % what,
            "start as a brand-new member: bootstrap a fresh log from --initial-cluster (state new; the same flags "
            "and token give the same member and cluster IDs) or join through the peers (state existing)%s; "
            "either way it needs a live quorum to catch up" % (
                ", serving the db's old keyspace meanwhile" if db else ""),
            "this member's whole log", REBUILD, stage=STAGE_NEW, etcd_start=NEW_MEMBER))
        result.update(files={"wal": wal_names or [], "snap": snap_names}, snapshots=[], snapshot_loaded=None,
                      wal=None, log={"last_index": None, "last_term": None, "hard_state": None, "snapshot_index": 0,
                                     "snapshot_term": 0},
                      membership=_membership(None, None, db, problems), unapplied=None)
        _finish(result, db, problems, path)
        return result
    result["files"] = {"wal": wal_names, "snap": snap_names}
    snapshots = _read_snapshots(snap_dir, snap_names)
    keep_after = (db or {}).get("consistent_index") or 0  # no db, or no key: etcd starts from 0
    scan, read_from, loaded, used = _inspect_wal(wal_dir, wals, snapshots, full, problems, keep_after)
    checked = not any(p["stage"] == STAGE_WAL_CHECK and p["etcd_start"] != STARTS for p in problems)
    _snapshot_problems(snapshots, loaded, problems, checked)
    result["snapshots"] = [{k: v for k, v in s.items() if k != "data"} for s in snapshots]
    result["snapshot_loaded"] = _public_snapshot(loaded)
    wal = scan.result()
    result["wal"] = {"files": wal["files"], "selected_from": used[read_from][2] if read_from is not None else None,
                     "archive_first": [w[2] for w in wals if w not in used], "record_counts": wal["record_counts"],
                     "snapshot_records": len(wal["snapshots"]), "error": wal["error"], "read_error": wal["read_error"]}
    if wal["metadata"]:
        result["member_id"], result["cluster_id"] = wal["metadata"]["member_id"], wal["metadata"]["cluster_id"]
    read = read_from is not None
    result["log"] = {
        "last_index": wal["last_index"] if read else None, "last_term": wal["last_term"] if read else None,
        "hard_state": wal["hard_state"] if read else None,
        "snapshot_index": loaded["index"] if loaded else 0, "snapshot_term": loaded["term"] if loaded else 0,
        "terms": wal["terms"] if read else None,
        "last_entry_sha256": wal["last_entry_sha256"] if read else None}
    result["unapplied"] = unapplied(scan, loaded["index"] if loaded else 0, keep_after, key_limit) if read else None
    _backend_problems(db, snap_names, loaded, problems)
    result["membership"] = _membership(loaded, wal, db, problems)
    _cross_checks(result, wal, db, problems)
    result["leftovers"] = {"wal_tmp": [n for n in wal_names if n.endswith(".tmp")],
                           "broken": [n for n in wal_names + snap_names if n.endswith(".broken")]}
    _finish(result, db, problems, path)
    return result


def _finish(result, db, problems, path):
    db = db or {}
    result["revision"] = db.get("revision")
    result["key_count"] = (db.get("snapshot_status") or {}).get("total_key")
    result["layout"] = "3.6" if db.get("storage_version") else ("3.5" if db.get("term") is not None else "3.4")
    result["running"] = is_running(path)
    result["verdict"] = verdict(problems)
    result["prediction"] = predict_start(problems)
    if result["prediction"]["starts"]:
        result["prediction"]["last_index"] = (result.get("log") or {}).get("last_index")
    result["summary"] = summary(result)


def predict_start(problems: list) -> dict:
    """What etcd does when started on the directory: the first problem, in etcd's start-up order,
    that stops it (or bootstraps a new member), and the files it changes on the way there."""
    changes: list = []
    for _stage, _seq, problem in sorted((p["stage"], i, p) for i, p in enumerate(problems)):
        if problem["etcd_start"] != STARTS:
            return {"starts": False, "outcome": problem["etcd_start"], "error": problem["etcd_error"],
                    "file": problem["file"], "reason": problem["message"], "changes": changes, "last_index": None}
        if problem["etcd_change"]:
            changes.append(problem["etcd_change"])
    return {"starts": True, "outcome": STARTS, "error": None, "file": None, "reason": None, "changes": changes,
            "last_index": None}


def _public_snapshot(snap):
    if snap is None:
        return None
    return {k: snap[k] for k in ("file", "term", "index", "conf_state", "status", "data_size")}


def _read_snapshots(snap_dir, names):
    """Every .snap, newest first (by name, as etcd sorts them), decoded and CRC-checked."""
    snapshots = []
    for name in sorted((n for n in names if fmt.SNAP_NAME_RE.match(n)), reverse=True):
        term, index = (int(g, 16) for g in fmt.SNAP_NAME_RE.match(name).groups())
        entry = {"file": name, "term": term, "index": index, "status": "ok", "error": None, "conf_state": None,
                 "data_size": None, "members": {}, "misnamed": False}
        try:
            parsed = fmt.parse_snap(_read(os.path.join(snap_dir, name)))
            # etcd matches the CONTENTS against the WAL's snapshot records, not the name
            entry.update(conf_state=parsed["conf_state"], data_size=parsed["data_size"],
                         members=fmt.v2_store_members(parsed["data"]), term=parsed["term"], index=parsed["index"],
                         misnamed=(parsed["term"], parsed["index"]) != (term, index))
        except (fmt.FormatError, OSError) as exc:
            entry.update(status="broken", error=str(exc))
        snapshots.append(entry)
    return snapshots


def _snapshot_problems(snapshots, loaded, problems, checked=True):
    """snap.LoadNewestAvailable: newest first, a .snap that does not load is renamed *.broken, one
    without a WAL snapshot record (at or below the commit) is skipped; it stops at the loaded one.
    When the WAL check failed, the records after the failure are unknown: no skip is reported."""
    fallback = ("snapshot %s (index %d)" % (loaded["file"], loaded["index"]) if loaded
                else "no snapshot: the WAL from its very first entry")
    for entry in snapshots:
        if entry is loaded:
            break
        if entry["status"] == "broken":
            problems.append(_problem(
                ERROR, entry["file"], "snapshot does not load: %s" % entry["error"],
                "rename it to %s.broken and load %s instead" % (entry["file"], fallback),
                "nothing if the WAL still holds every entry after %s; the WAL check says"
                % ("index %d" % loaded["index"] if loaded else "index 0"),
                "none if the WAL check passes; otherwise %s" % REBUILD, offset=0, repairable=True, stage=STAGE_SNAP,
                etcd_change={"action": "rename", "file": entry["file"], "to": entry["file"] + ".broken"}))
        elif checked:
            problems.append(_problem(
                INFO, entry["file"], "snapshot at index %d (term %d) has no WAL snapshot record at or below the "
                "commit index: written just before a crash, or its WAL files are gone" % (entry["index"], entry["term"]),
                "skip it and load %s" % fallback, "nothing", "none needed", stage=STAGE_SNAP))
    for entry in snapshots:
        if entry["misnamed"]:
            problems.append(_problem(WARNING, entry["file"], "file name and contents disagree on term/index (contents "
                                     "say %d/%d)" % (entry["term"], entry["index"]), "go by its contents", "nothing",
                                     "none needed", stage=STAGE_SNAP))
    older_broken = [e for e in snapshots[snapshots.index(loaded) + 1:] if e["status"] == "broken"] if loaded else []
    for entry in older_broken:
        problems.append(_problem(WARNING, entry["file"], "older snapshot does not load: %s" % entry["error"],
                                 "not read it (a newer one loads)", "nothing", "none needed", stage=STAGE_SNAP))


def _search_index(wals, index):
    """etcd's selectWALFiles: the position of the last file whose first index is at or before
    `index`, if the sequence numbers are contiguous from there; else None (wal: file not found)."""
    for i in range(len(wals) - 1, -1, -1):
        if wals[i][1] <= index:
            if any(b[0] != a[0] + 1 for a, b in zip(wals[i:], wals[i + 1:])):
                return None
            return i
    return None


def _scan(wal_dir, wals, snap, full, keep_after=None):
    index, term = (snap["index"], snap["term"]) if snap else (0, 0)
    read_from = _search_index(wals, index)
    scan = fmt.WalScan(index, term, full, len(wals) if read_from is None else read_from, keep_after)
    for i, (_seq, _first, name) in enumerate(wals):
        scan.feed(name, _read(os.path.join(wal_dir, name)), i == len(wals) - 1)
        if scan.error:
            break
    return scan, read_from


def _wal_pipeline(wal_dir, wals, snapshots, full, keep_after=None):
    """Steps 3, 4 and 6 over these files: (scan, ReadAll's first file or None, loaded snapshot).
    One pass reads them when the newest loadable .snap is the one etcd picks (the usual case)."""
    candidates = [s for s in snapshots if s["status"] != "broken"]
    guess = candidates[0] if candidates else None
    scan, read_from = _scan(wal_dir, wals, guess, full, keep_after)
    valid = scan.valid_snapshots()
    loaded = next((s for s in candidates if (s["index"], s["term"]) in valid), None)
    if loaded is not guess:
        scan, read_from = _scan(wal_dir, wals, loaded, full, keep_after)
    return scan, read_from, loaded


def _first_gap(wals):
    for i in range(1, len(wals)):
        if wals[i][0] != wals[i - 1][0] + 1:
            return i
    return None


def _inspect_wal(wal_dir, wals, snapshots, full, problems, keep_after=None):
    """The WAL problems; returns (scan, read_from, loaded, files used). When etcd would refuse
    because of something in the older files (a missing file, a CRC break), it also tries what
    archiving those files would give: etcd reads from the first file present, so if the rest
    still holds the loaded snapshot and everything after it, one reviewed step repairs it."""
    scan, read_from, loaded = _wal_pipeline(wal_dir, wals, snapshots, full, keep_after)
    found = _wal_problems(scan, read_from, loaded, wals)
    gap = _first_gap(wals)
    error = scan.error if scan.error and scan.error["kind"] in ("crc", "crc_record", "decode", "size") else None
    error_at = [w[2] for w in wals].index(error["file"]) if error else None
    if gap is not None and (error_at is None or gap <= error_at):
        keep_from = gap
        first = _gap_problem(wals, gap)
        # the chain break etcd sees at the gap is this problem, not a second one
        found = [p for p in found if not (error and error["kind"] == "crc_record" and error_at == gap
                                          and p["file"] == wals[gap][2] and p["stage"] == STAGE_WAL_CHECK)]
        found.insert(0, first)
    elif error is not None:
        keep_from, first = error_at + 1, next(p for p in found if p["stage"] == STAGE_WAL_CHECK)
        if gap is not None:  # etcd stops at the error first; the gap is there all the same
            found.append(_gap_problem(wals, gap))
    else:
        problems.extend(found)
        return scan, read_from, loaded, wals
    if keep_from < len(wals):
        rest = wals[keep_from:]
        sim_scan, sim_from, sim_loaded = _wal_pipeline(wal_dir, rest, snapshots, full, keep_after)
        sim_found = _wal_problems(sim_scan, sim_from, sim_loaded, rest)
        if _first_gap(rest) is None and not any(p["etcd_start"] != STARTS for p in sim_found):
            archived = ", ".join(w[2] for w in wals[:keep_from])
            first.update(repairable=True, data_lost="nothing: the files before %s hold only entries the loaded "
                         "snapshot (index %d) covers" % (rest[0][2], sim_loaded["index"] if sim_loaded else 0),
                         remedy="archive (move out of member/wal, keep them) %s; etcd then reads from %s on, which "
                         "holds the loaded snapshot and every entry after it" % (archived, rest[0][2]))
            problems.append(first)
            problems.extend(sim_found)
            return sim_scan, sim_from, sim_loaded, rest
    problems.extend(found)
    return scan, read_from, loaded, wals


def _gap_problem(wals, gap):
    earlier, later = wals[gap - 1], wals[gap]
    return _problem(
        ERROR, later[2], "WAL sequence jumps from %s to %s: files %016x..%016x are missing"
        % (earlier[2], later[2], earlier[0] + 1, later[0] - 1),
        "refuse to start: 'wal: crc mismatch' (etcd reads every WAL file from the first one at start, and the crc "
        "record that opens %s does not continue the chain where %s ends)" % (later[2], earlier[2]),
        "the entries of the missing files (before index %d) and, as etcd cannot read past the gap, everything "
        "after them" % later[1], REBUILD, offset=0, stage=STAGE_WAL_CHECK, etcd_start=REFUSES,
        etcd_error="wal: crc mismatch")


def _wal_problems(scan, read_from, loaded, wals):
    """The problems of one pipeline run (see the module docstring, steps 3 and 6, and 7)."""
    found = []
    start = "the loaded snapshot (index %d)" % loaded["index"] if loaded else "index 0 (no snapshot loads)"
    if read_from is None and _first_gap(wals) is None:  # with a gap, the gap is the problem
        found.append(_problem(
            ERROR, wals[0][2], "no WAL file starts at or before %s: the oldest one, %s, starts at index %d"
            % (start, wals[0][2], wals[0][1]), "refuse to start: 'failed to open WAL: wal: file not found'",
            "every entry between %s and index %d (purged, and not in a loadable snapshot)" % (start, wals[0][1]),
            REBUILD, stage=STAGE_WAL_READ, etcd_start=REFUSES, etcd_error="wal: file not found"))
    error, read_error = scan.error, scan.read_error
    good = "the log up to index %d (term %d) is intact" % (scan.last_index, scan.last_term)
    if error:
        where = "%s at offset %d" % (error["file"], error["offset"])
        if error["kind"] in ("torn", "short") and error["in_last_file"]:
            after = error["data_bytes_after"] or 0
            found.append(_problem(
                ERROR, error["file"], "torn write at the end of the log: %s in %s" % (error["message"], where),
                "repair it at start: copy the file to %s.broken and truncate it at offset %d (wal.Repair)"
                % (error["file"], error["offset"]),
                "the record being written at the power loss%s; %s" % (
                    "" if after <= 1 << 20 else " and %d more bytes of written data after it" % after, good),
                "none needed: etcd repairs it itself (or truncate at offset %d after archiving the directory)"
                % error["offset"], offset=error["offset"], repairable=True, stage=STAGE_WAL_READ,
                etcd_change={"action": "truncate", "file": error["file"], "offset": error["offset"],
                             "keep": error["file"] + ".broken"}))
        elif error["kind"] in ("torn", "short"):
            found.append(_problem(
                ERROR, error["file"], "%s in %s, which is not the last WAL file" % (error["message"], where),
                "refuse to start: 'failed to read WAL, cannot be repaired: unexpected EOF' (wal.Repair only "
                "truncates the last file)", "every entry after index %d that this member holds; %s"
                % (scan.last_index, good), REBUILD, offset=error["offset"], stage=STAGE_WAL_READ,
                etcd_start=REFUSES, etcd_error="unexpected EOF"))
        else:
            said = ": '%s'" % error["etcd_error"] if error["etcd_error"] else ""
            found.append(_problem(
                ERROR, error["file"], "%s in %s" % (error["message"], where),
                "refuse to start%s (etcd checks every WAL file at start, wal.ValidSnapshotEntries, and cannot "
                "repair this)" % said,
                "every entry after the failing record that this member holds%s" % (
                    "; " + good if error["in_read_all"] else ""),
                REBUILD + "; if no member is further ahead, truncating the WAL at offset %d (after archiving) keeps "
                "what comes before it" % error["offset"], offset=error["offset"], stage=STAGE_WAL_CHECK,
                etcd_start=REFUSES, etcd_error=error["etcd_error"]))
    fatal_check = error and not (error["kind"] in ("torn", "short") and error["in_last_file"])
    if read_from is not None and read_error:
        found.append(_problem(
            ERROR, read_error["file"], "%s in %s at offset %d" % (read_error["message"], read_error["file"],
                                                                  read_error["offset"]),
            "refuse to start: 'failed to read WAL, cannot be repaired: %s'" % read_error["etcd_error"],
            "every entry after index %d that this member holds; %s" % (scan.last_index, good), REBUILD,
            offset=read_error["offset"], stage=STAGE_WAL_READ, etcd_start=REFUSES, etcd_error=read_error["etcd_error"]))
    elif read_from is not None and not fatal_check and not scan.snapshot_matched:
        found.append(_problem(
            ERROR, wals[read_from][2], "no WAL snapshot record for %s in %s and after" % (start, wals[read_from][2]),
            "refuse to start: 'failed to read WAL, cannot be repaired: wal: snapshot not found'",
            "the log cannot be replayed from the snapshot", REBUILD, stage=STAGE_WAL_READ, etcd_start=REFUSES,
            etcd_error="wal: snapshot not found"))
    elif read_from is not None and not fatal_check and scan.hard_state \
            and scan.hard_state["commit"] > scan.last_index:
        found.append(_problem(
            ERROR, wals[-1][2], "HardState commit %d is beyond the last entry %d" % (scan.hard_state["commit"],
                                                                                     scan.last_index),
            "panic at start: raft 'state.commit %d is out of range'" % scan.hard_state["commit"],
            "the committed entries after index %d" % scan.last_index, REBUILD, stage=STAGE_RAFT, etcd_start=PANICS,
            etcd_error="state.commit %d is out of range" % scan.hard_state["commit"]))
    return found


def _inspect_db(snap_dir, names, full, problems):
    """Step 1: bbolt opens the db (a missing one is created empty: see _backend_problems)."""
    if "db" not in names:
        return None
    data = _read(os.path.join(snap_dir, "db"))
    db = bolt.read_etcd_db(data, full)
    name = "member/snap/db"
    bad = [m for m in db["metas"] if m["error"]]
    if db["meta_used"] is None:
        code = db["metas"][0]["error"].rsplit("(", 1)[-1].rstrip(")") if "(" in db["metas"][0]["error"] else ""
        said = "failed to open database: %s" % _BOLT_ERRORS.get(code, "invalid database")
        problems.append(_problem(ERROR, name, db["errors"][0]["message"], "panic at start: '%s'" % said,
                                 "the whole keyspace of this member", REBUILD, offset=0, stage=STAGE_DB,
                                 etcd_start=PANICS, etcd_error=said))
        return db
    if bad:
        other = db["metas"][db["meta_used"]]
        problems.append(_problem(
            ERROR, name, "meta page %d is invalid: %s" % (bad[0]["offset"] // db["page_size"], bad[0]["error"]),
            "open the db through meta page %s (txid %s) and start; the next commit rewrites the bad page"
            % (db["meta_used"], other["txid"]),
            "at most the last write transaction (re-applied from the WAL, which holds it)",
            "none needed if the WAL check passes", offset=bad[0]["offset"], repairable=True, stage=STAGE_DB))
    walked = db["metas"][db["meta_used"]]["freelist"] == bolt.NO_FREELIST
    for error in db["errors"]:
        problems.append(_problem(
            ERROR, name, error["message"],
            "panic at start: %s (a memory fault, 'unexpected fault address', or 'freepages: failed to get all "
            "reachable pages'); `etcdctl snapshot status` fails too" % (
                "bbolt walks every page when it opens the db, to rebuild the freelist etcd does not persist"
                if walked else "when etcd reads the damaged page (it reads the whole key bucket at start)"),
            "the keys stored under the damaged page; the WAL cannot rebuild what the snapshot covers", REBUILD,
            offset=error["offset"], stage=STAGE_DB if walked else STAGE_BACKEND, etcd_start=PANICS))
    for warning in db["warnings"]:
        problems.append(_problem(WARNING, name, warning, "start", "nothing", "none needed", stage=STAGE_DB))
    return db


def _backend_problems(db, names, loaded, problems):
    """Step 5: a db behind the loaded snapshot is replaced by <index>.snap.db (received with it)."""
    if db is None:
        if not loaded:
            problems.append(_problem(WARNING, "member/snap/db", "the bbolt db is missing",
                                     "create an empty db and re-apply the whole WAL into it", "nothing", "none needed",
                                     stage=STAGE_BACKEND))
            return
        consistent_index, what = 0, "the bbolt db is missing (etcd creates an empty one)"
    elif db["meta_used"] is None or db["errors"]:
        return  # etcd panics opening it (step 1)
    else:
        consistent_index = db["consistent_index"] or 0  # no key: etcd reads 0
        what = "db is at consistent_index %s" % consistent_index
    if not loaded or loaded["index"] <= consistent_index:
        return
    snap_db = "%016x.snap.db" % loaded["index"]
    if snap_db in names:
        problems.append(_problem(INFO, snap_db, "%s, behind the snapshot at index %s" % (what, loaded["index"]),
                                 "move %s over member/snap/db" % snap_db, "nothing", "none needed",
                                 stage=STAGE_BACKEND, etcd_change={"action": "replace", "file": "member/snap/db",
                                                                   "with": snap_db}))
        return
    said = ("failed to recover v3 backend from snapshot: failed to find database snapshot file (snap: snapshot file "
            "doesn't exist)")
    problems.append(_problem(
        ERROR, "member/snap/" + snap_db, "%s, behind the snapshot at index %s, and %s (the db received with that "
        "snapshot) is missing" % (what, loaded["index"], snap_db), "panic at start: '%s'" % said,
        "the keyspace changes between index %s and %s" % (consistent_index, loaded["index"]), REBUILD,
        stage=STAGE_BACKEND, etcd_start=PANICS, etcd_error=said))


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
    fresh = result["log"]["last_index"] is not None and result["log"]["last_index"] <= len(members)
    if members and db_members and not members & db_members and fresh:
        # `snapshot restore` writes one conf change per member and leaves the snapshot's member
        # list in the db (3.4) until the first start applies them: a just-restored member
        problems.append(_problem(
            INFO, "member/snap/db", "the db still lists the snapshot's members %s; the log (%d entries, one per new "
            "member) names %s: a freshly restored member" % (", ".join(sorted(db_members)),
                                                             result["log"]["last_index"], ", ".join(sorted(members))),
            "start and apply its new membership", "nothing", "none needed"))
    elif members and db_members and not members & db_members:
        problems.append(_problem(
            ERROR, "member/snap/db", "the db lists members %s, none of which is in this member's log membership %s: "
            "the db belongs to another cluster" % (", ".join(sorted(db_members)), ", ".join(sorted(members))),
            "start and serve another cluster's keyspace under this cluster's log",
            "this member's own keyspace (the db is not its own)", REBUILD))
    last = result["log"]["last_index"]
    if wal and db and db.get("consistent_index") is not None and last is not None \
            and db["consistent_index"] > last and not wal["error"]:
        problems.append(_problem(
            WARNING, "member/snap/db", "db consistent_index %d is beyond the last WAL entry %d"
            % (db["consistent_index"], last), "start; raft and the db disagree on what is applied",
            "nothing visible here; the db was copied from elsewhere or the WAL lost its tail", REBUILD))
    if result["member_id"] and members and result["member_id"] not in members:
        problems.append(_problem(WARNING, "member/wal", "member %s is not in its own membership %s"
                                 % (result["member_id"], ", ".join(sorted(members))),
                                 "start as a removed member and stop", "nothing", REBUILD))


def unapplied(scan: fmt.WalScan, snapshot_index: int, consistent_index: int, key_limit: int = 20) -> dict:
    """What lies beyond what this member applied for sure, from a WalScan made with keep_after:
    `beyond_commit` entries after the HardState commit (what --force-new-cluster drops),
    `beyond_db` entries after what the db holds (its consistent_index, or the loaded snapshot),
    and the keys written or deleted by the entries after min(commit, db): sorted, unique, at
    most key_limit in `keys`, the rest counted in `more_keys`. `undecoded` counts the entries
    there that are no InternalRaftRequest (3.4's bare v2 requests, such as its member publish)."""
    commit = (scan.hard_state or {}).get("commit") or 0
    in_db = max(consistent_index or 0, snapshot_index or 0)
    floor = min(commit, in_db)
    keys: set[str] = set()
    undecoded = 0
    for index, _term, etype, data in scan.kept:
        if index <= floor or etype != fmt.ENTRY_NORMAL or not data:
            continue
        writes = fmt.request_writes(data)
        if writes is None:
            undecoded += 1
            continue
        keys.update(fmt.key_text(key, end) for _op, key, end in writes)
    ordered = sorted(keys)
    return {"beyond_commit": max(0, scan.last_index - commit), "beyond_db": max(0, scan.last_index - in_db),
            "keys": ordered[:key_limit], "more_keys": max(0, len(ordered) - key_limit), "undecoded": undecoded}


def is_running(path: str) -> dict:
    """Whether a process holds a file of the member open (etcd keeps its WAL and db open) or a
    lock on member/snap/db (bbolt's flock), matched by device and inode (proc_holders)."""
    return member.running(path, subdirs=("member/wal", "member/snap"), locks=("member/snap/db",))


def summary(result: dict) -> dict:
    """The engine-neutral summary (module_utils/member.py) of an inspect_datadir() result. The
    tie-break after (last term, last index) is what this member applied (HardState commit or the
    db's consistent_index, whichever is higher), then its db revision; never HardState.term,
    which a member that campaigned alone raised without growing its log."""
    log = result.get("log") or {}
    hard = log.get("hard_state") or {}
    db = result.get("db") or {}
    membership = result.get("membership") or {}
    voters = [{"id": m["id"], "name": m["name"], "address": (m["peer_urls"] or [""])[0], "role": role}
              for role, group in (("voter", "voters"), ("learner", "learners")) for m in membership.get(group) or []]
    own = next((v for v in voters if v["id"] == result.get("member_id")), {})
    applied = max(hard.get("commit") or 0, db.get("consistent_index") or 0)
    found = member.summary(
        "etcd", result, member_id=result.get("member_id"), cluster_key=result.get("cluster_id"),
        address=own.get("address") or None, address_source="membership" if own else None, voters=voters,
        current_term=hard.get("term"), commit=hard.get("commit"), tie_break=(applied, result.get("revision") or 0),
        terms=log.get("terms"))
    # etcd only: what a restore from this member's db alone, or --force-new-cluster, would lose
    beyond = result.get("unapplied")
    found["unapplied"] = None if beyond is None else {
        k: beyond[k] for k in ("beyond_commit", "beyond_db", "keys", "more_keys")}
    return found
