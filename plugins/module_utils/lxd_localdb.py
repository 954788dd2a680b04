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
"""
from __future__ import annotations

import os
import shutil
import sqlite3

from ansible_collections.quorum.recovery.plugins.module_utils import dqlite_datadir

ROLE_NUMBERS = {"voter": 0, "stand-by": 1, "spare": 2}
ADDRESS_KEYS = ("cluster.https_address", "core.https_address")


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
