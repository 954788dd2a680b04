# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""LXD's node-local database (database/local.db) made to agree with a recovered membership.

Private to this collection; may change without notice.

LXD 5.0 keeps, per member, the raft member list (table raft_nodes: id, address, role, name) and
its own cluster address (config keys cluster.https_address, core.https_address) in local.db,
beside the raft directory database/global. After a recovery only the member where LXD's own
command ran has the new list; LXD 6.2+ ships it to the others as raft_nodes.yaml inside
lxd_recovery_db.tar.gz. For 5.0 this writes the same thing into each restored member's local.db,
and a member's new address where its address changed. The file as it was is copied aside first.

The members' addresses also live in the GLOBAL database (table nodes), which only a running
cluster can change. `lxd cluster edit` leaves database/patch.global.sql (UPDATE nodes SET address
...) on the member where it ran; each daemon runs that file at start, in the same transaction in
which it then marks its own row of nodes by its own address ("updated 0 rows instead of 1" and the
daemon exits when no row has that address yet). With the file on the winner alone, a moved member
that reaches a quorum without the winner (the winner still starting) dies on that check. LXD 6.2+
writes the file on every member that unpacks its recovery tarball; global_patch() is that file for
each restored member, so whichever member runs it first, every later check finds the new address.
"""
from __future__ import annotations

import os
import shutil
import sqlite3

from ansible_collections.quorum.recovery.plugins.module_utils import datadir_archive, dqlite_datadir

ROLE_NUMBERS = {"voter": 0, "stand-by": 1, "spare": 2}
ADDRESS_KEYS = ("cluster.https_address", "core.https_address")
# beside global/ and local.db; LXD runs it, then removes it, when the daemon opens the global database
GLOBAL_PATCH = "patch.global.sql"


def changes_needed(path: str, membership: list, member_id: int) -> dict:
    """What differs between local.db and the membership: {"raft_nodes": [...], "config": {key: value}}
    (empty when nothing does). Read opened immutable: nothing is written."""
    address, nodes = dqlite_datadir.read_lxd_local_db(path)
    names = {n["id"]: n["name"] for n in nodes}
    want = sorted((int(m["id"]), m["address"], ROLE_NUMBERS[m["role"]], names.get(int(m["id"])) or m.get("name") or "")
                  for m in membership)
    have = sorted((n["id"], n["address"], ROLE_NUMBERS.get(n["role"], -1), n["name"]) for n in nodes)
    out: dict = {}
    if want != have:
        out["raft_nodes"] = want
    own = [m for m in membership if int(m["id"]) == int(member_id)]
    old = [n["address"] for n in nodes if n["id"] == int(member_id)]
    if own and old and own[0]["address"] != old[0]:
        conn = sqlite3.connect("file:%s?immutable=1" % dqlite_datadir.lxd_local_db_path(path), uri=True)
        try:
            config = dict(conn.execute("SELECT key, value FROM config").fetchall())
        finally:
            conn.close()
        # only keys that name the old address: a wildcard listener ("[::]:8443") stays as it is
        moved = {k: own[0]["address"] for k in ADDRESS_KEYS if config.get(k) == old[0]}
        if moved:
            out["config"] = moved
    return out


def apply(path: str, changes: dict, keep_dir: str) -> str | None:
    """Write `changes` (from changes_needed) into local.db in one transaction, after copying the
    file into keep_dir (never overwriting an earlier copy). Returns where the copy is."""
    if not changes:
        return None
    db = dqlite_datadir.lxd_local_db_path(path)
    os.makedirs(keep_dir, mode=0o700, exist_ok=True)
    kept = os.path.join(keep_dir, "local.db.before")
    if not os.path.exists(kept):
        shutil.copy2(db, kept)
    conn = sqlite3.connect(db)
    try:
        with conn:
            if "raft_nodes" in changes:
                conn.execute("DELETE FROM raft_nodes")
                conn.executemany("INSERT INTO raft_nodes (id, address, role, name) VALUES (?, ?, ?, ?)",
                                 changes["raft_nodes"])
            for key, value in (changes.get("config") or {}).items():
                conn.execute("UPDATE config SET value = ? WHERE key = ?", (value, key))
    finally:
        conn.close()
    return kept


def global_patch_path(path: str) -> str:
    return os.path.join(os.path.dirname(os.path.normpath(path)), GLOBAL_PATCH)


def global_patch(membership: list) -> str:
    """What LXD writes into patch.global.sql for this membership: every member's address in the
    global nodes table, by raft ID as LXD does (its own 5.0 and 6.2+ code alike)."""
    lines = []
    for member in sorted(membership, key=lambda m: int(m["id"])):
        address = str(member["address"])
        if any(c in address for c in "'\\\n\r;"):
            raise ValueError("address %r of member %s cannot go into %s" % (address, member["id"], GLOBAL_PATCH))
        lines.append("UPDATE nodes SET address = '%s' WHERE id = %d;\n" % (address, int(member["id"])))
    return "".join(lines)


def global_patch_needed(path: str, membership: list) -> bool:
    """Whether database/patch.global.sql does not already hold exactly global_patch(membership)."""
    try:
        with open(global_patch_path(path), encoding="utf-8") as handle:
            return handle.read() != global_patch(membership)
    except FileNotFoundError:
        return True


def write_global_patch(path: str, membership: list, keep_dir: str) -> str | None:
    """Write patch.global.sql for this membership (atomically, mode 0600 as LXD 6.2+ does). A file
    already there with other statements is moved into keep_dir first, never overwritten; returns
    where it went (None when there was none)."""
    target = global_patch_path(path)
    kept = None
    if os.path.exists(target):
        os.makedirs(keep_dir, mode=0o700, exist_ok=True)
        kept = datadir_archive.unused_path(os.path.join(keep_dir, GLOBAL_PATCH + ".before"))
        shutil.move(target, kept)
    datadir_archive.write_atomic(target, global_patch(membership).encode(), 0o600)
    return kept
