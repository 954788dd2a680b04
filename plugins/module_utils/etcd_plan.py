# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the recovery plan (module_utils/election.py) needs to know that only etcd knows.

PRIVATE to this collection: may change without notice. Standard library only.

etcd members are all voters after a rebuild (learners are promoted or re-added later by the
operator); the restore source is built ONCE on the winner from its whole log, up to its last
index, not only up to its HardState commit: etcd --force-new-cluster (and every procedure that
restarts one member alone) drops the entries beyond the persisted commit, even those a client
was told had succeeded. The restored members get new member IDs and one new cluster ID, both
derived by etcd from the peer URLs and the cluster token (member_id, cluster_id below).
"""
from __future__ import annotations

import hashlib
import struct

# after (last term, last index): what the member applied (commit or consistent_index), then its
# db revision (etcd_datadir.summary fills tie_break in that order)
TIE_BREAK = "applied index, then db revision"
# a member that campaigned alone has a HardState term above every log term: flag it, never rank by it
FLAG_LONE_CAMPAIGN = True
# every member of the new cluster needs a name (--initial-cluster name=URL): one added but never
# started has none in the log, and gets its inventory name
NAMED = True


def roles(order: list, old_roles: dict, max_voters: int) -> dict:
    """Every surviving member is a voter of the rebuilt cluster."""
    return {host: "voter" for host in order}


def backup_source(source: dict) -> dict:
    """A backup as the source (election._backup_plan): its snapshot is the winner's source.db, as
    the plan says it; nothing engine-specific to add."""
    return source


def source(winner: str, summary: dict, position: tuple, options: dict | None = None) -> dict:
    """The winner's whole log replayed (default), or, on the operator's opt-in (raw_db), its db as
    it is: then the entries beyond the db are lost, and the plan names them."""
    commit = summary.get("commit") or 0
    unapplied = summary.get("unapplied") or {}
    found = {"host": winner, "step": "replay", "expected_last_index": position[1], "commit": commit,
             "beyond_commit": max(0, position[1] - commit), "beyond_db": unapplied.get("beyond_db", 0)}
    if (options or {}).get("raw_db"):
        lost = found["beyond_db"]
        found.update(step="raw-db", db_index=position[1] - lost)
        found["loses"] = ("recover_etcd_raw_db: %s's db is restored as it is, without replaying its log: %s"
                          % (winner, "the entries %d..%d (%d) in its WAL are LOST%s" % (
                              position[1] - lost + 1, position[1], lost, _keys_text(unapplied))
                             if lost else "its db holds every entry of its log, nothing is lost"))
    return found


def actions(part: str, winner: str, source: dict, new_address: str | None, repairs: list | None) -> list:
    done = ["stop", "safety archive"]
    if part == "winner" and source["step"] == "backup":
        done.append("receive backup %s's snapshot (%s, revision %s, %s keys) as the source, checked against its "
                    "manifest, ONCE" % (source["backup"], "term %s index %s" % (source["term"], source["expected_last_index"]),
                                        source.get("revision"), source.get("keys")))
    elif part == "winner" and source["step"] == "raw-db":
        done.append("copy its db as it is, to index %d (the entries after it are LOST), ONCE" % source["db_index"])
    elif part == "winner":
        done.append("replay its whole log to index %d (%d entries beyond its commit) into a hashed snapshot, ONCE"
                    % (source["expected_last_index"], source["beyond_commit"]))
    done.append("restore the snapshot into a new member directory (the old one moved aside)%s"
                % (" under its new peer URL %s" % new_address if new_address else ""))
    done.append("start")
    return done


def _keys_text(unapplied: dict) -> str:
    keys = unapplied.get("keys") or []
    if not keys:
        return ""
    more = unapplied.get("more_keys") or 0
    return "; keys: %s%s" % (", ".join(keys), " and %d more" % more if more else "")


def notes(members: dict, chosen: str) -> list:
    """Per member, what its WAL holds that no db and no persisted commit covers, and whether this
    recovery keeps it (only the winner's log is replayed; the others' logs are contained in it)."""
    said = []
    commits = [s.get("commit") or 0 for s in members.values() if s.get("exists")]
    top_commit = max(commits) if commits else 0
    for host in sorted(members):
        summary = members[host]
        if not summary.get("exists"):
            continue
        unapplied = summary.get("unapplied") or {}
        last = summary.get("last_index") or 0
        beyond_db = unapplied.get("beyond_db", 0)
        beyond_commit = unapplied.get("beyond_commit", max(0, last - (summary.get("commit") or 0)))
        if not (beyond_db or beyond_commit):
            continue
        fate = ("kept: the winner's whole log is replayed" if host == chosen else
                "kept where the winner's log holds them (the winner's log is the longest of the newest term)")
        said.append("%s: %d entries in its WAL are in no db of its own, %d lie beyond its persisted commit %d%s - %s"
                    % (host, beyond_db, beyond_commit, summary.get("commit") or 0, _keys_text(unapplied), fate))
    winner = members.get(chosen) or {}
    beyond_all = max(0, (winner.get("last_index") or 0) - top_commit)
    if beyond_all:
        said.append("%s's log holds %d entries beyond every member's persisted commit (%d): etcd --force-new-cluster "
                    "or a raw db copy would drop them although a client may have been told they succeeded; this "
                    "recovery replays them" % (chosen, beyond_all, top_commit))
    return said


def member_id(peer_urls: list, token: str) -> str:
    """The member ID etcd gives a member of a new cluster (etcdserver/api/membership NewMember,
    without a time): the first 8 bytes of sha1(sorted peer URLs joined, then the token), hex."""
    digest = hashlib.sha1(("".join(sorted(peer_urls)) + token).encode()).digest()
    return "%x" % struct.unpack(">Q", digest[:8])[0]


def cluster_id(member_ids: list) -> str:
    """The cluster ID etcd derives from its members' IDs (RaftCluster.genID): sha1 of the sorted
    IDs as 8-byte big-endian numbers, first 8 bytes, hex."""
    packed = b"".join(struct.pack(">Q", int(m, 16)) for m in sorted(member_ids, key=lambda m: int(m, 16)))
    return "%x" % struct.unpack(">Q", hashlib.sha1(packed).digest()[:8])[0]
