# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the recovery plan (module_utils/election.py) needs to know that only etcd knows.

PRIVATE to this collection: may change without notice. Standard library only.

etcd members are all voters after a rebuild (learners are promoted or re-added later by the
operator); the restore source is built ONCE on the winner from its whole log, up to its last
index, not only up to its HardState commit (issue: etcd recovery; the plan already says how many
entries lie beyond commit).
"""
from __future__ import annotations

# after (last term, last index): what the member applied (commit or consistent_index), then its
# db revision (etcd_datadir.summary fills tie_break in that order)
TIE_BREAK = "applied index, then db revision"
# a member that campaigned alone has a HardState term above every log term: flag it, never rank by it
FLAG_LONE_CAMPAIGN = True


def roles(order: list, old_roles: dict, max_voters: int) -> dict:
    """Every surviving member is a voter of the rebuilt cluster."""
    return {host: "voter" for host in order}


def source(winner: str, summary: dict, position: tuple) -> dict:
    commit = summary.get("commit") or 0
    return {"host": winner, "step": "replay", "expected_last_index": position[1], "commit": commit,
            "beyond_commit": max(0, position[1] - commit)}


def actions(part: str, winner: str, source: dict, new_address: str | None, repairs: list | None) -> list:
    done = ["stop", "safety archive"]
    if part == "winner":
        done.append("replay its whole log to index %d (%d entries beyond its commit) into a hashed snapshot"
                    % (source["expected_last_index"], source["beyond_commit"]))
    done += ["restore the snapshot into a new data directory (the old one moved aside)", "start"]
    return done
