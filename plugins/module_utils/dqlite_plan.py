# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the recovery plan (module_utils/election.py) needs to know that only dqlite knows.

PRIVATE to this collection: may change without notice. Standard library only.

The new membership's roles (the go-dqlite app's voter, stand-by and spare), the step that builds
the restore source (`.reconfigure` ONCE on the winner, which appends one configuration entry in
a new closed segment), each host's actions in words, and the files the go-dqlite app keeps
beside the raft data (info.yaml: ID, address, role; cluster.yaml: every node), written here in
Python so that no template renders a format dqlite reads.
"""
from __future__ import annotations

from ansible_collections.quorum.recovery.plugins.module_utils import dqlite_format as fmt

ROLE_ORDER = {"voter": 0, "stand-by": 1, "spare": 2}
# the go-dqlite app's numbers for the roles in info.yaml and cluster.yaml
APP_ROLE_NUMBERS = {"voter": 0, "stand-by": 1, "spare": 2}
# nothing beyond (last term, last index): two dqlite logs that end alike hold the same entries
TIE_BREAK = "name"
# dqlite's metadata term is above the last log term after any election whose leader has not
# written yet (seen in the lab: term 3 with every entry in term 1), so it proves no lone campaign
FLAG_LONE_CAMPAIGN = False


def roles(order: list, old_roles: dict, max_voters: int) -> dict:
    """Voters first (the winner, then former voters), an odd count of at most max_voters; the
    others stand-by, or spare if they were."""
    voters = max(1, min(max_voters, len(order)))
    if voters % 2 == 0:
        voters -= 1
    ranked = sorted(order, key=lambda h: (h != order[0], ROLE_ORDER.get(old_roles.get(h) or "", 3)))
    out = {}
    for i, host in enumerate(ranked):
        if i < voters:
            out[host] = "voter"
        else:
            out[host] = "spare" if old_roles.get(host) == "spare" else "stand-by"
    return out


def segment_name(first: int, last: int) -> str:
    """A closed segment's file name."""
    return "%016d-%016d" % (first, last)


def source(winner: str, summary: dict, position: tuple, options: dict | None = None) -> dict:
    """The reconfigure: ONCE on the winner, appending one entry after its last index. options may
    name the product's own command that does it (`tool`, words for the plan; LXD's)."""
    last_index = position[1]
    out = {"host": winner, "step": "reconfigure", "expected_last_index": last_index,
           "segment": segment_name(last_index + 1, last_index + 1)}
    tool = (options or {}).get("tool")
    if tool:
        out["tool"] = tool
    return out


def backup_source(source: dict) -> dict:
    """A backup as the source (election._backup_plan): the winner receives its raft files, then
    the same reconfigure appends one entry after the backup's last index."""
    last_index = source["expected_last_index"]
    return dict(source, segment=segment_name(last_index + 1, last_index + 1))


def actions(part: str, winner: str, source: dict, new_address: str | None, repairs: list | None) -> list:
    """One host's part of the recovery, in words, in the order it happens."""
    done = ["stop", "safety archive"]
    if repairs:
        done.append("repair (%s), originals kept in the quarantine folder" % describe_repairs(repairs))
    if part == "winner" and source["step"] == "backup":
        done.append("receive backup %s's raft files (term %s index %s) into its data directory (its own moved "
                    "aside), write the new membership and run .reconfigure ONCE" % (
                        source["backup"], source["term"], source["expected_last_index"]))
    elif part == "winner":
        done.append("write the new membership and run %s ONCE (appends %s)"
                    % (source.get("tool") or ".reconfigure", source["segment"]))
    if new_address:
        done.append("write info.yaml with its new address %s" % new_address)
    if part == "winner":
        done += ["archive raft files", "start first"]
    else:
        done += ["move its raft files aside", "restore %s's raft files (keep node-local files)" % winner, "start"]
    return done


def describe_repairs(repairs: list) -> str:
    words = []
    for action in repairs:
        if action.get("quarantine"):
            words.append("move aside %s" % ", ".join(action["quarantine"]))
        if action.get("truncate"):
            words.append("cut %s at byte %d" % (action["truncate"]["file"], action["truncate"]["length"]))
        if action.get("write"):
            words.append("write %s from the plan" % action["write"])
    return "; ".join(words)


def node_yaml(nodes: list) -> str:
    """cluster.yaml (every node) or info.yaml (one node, not a list) as the go-dqlite app writes
    them: Address, ID, Role (the app's numbers)."""
    def block(node, lead):
        pad = " " * len(lead)
        return "%sAddress: %s\n%sID: %d\n%sRole: %d\n" % (
            lead, node["address"], pad, int(node["id"]), pad, APP_ROLE_NUMBERS[node["role"]])
    return "".join(block(n, "- ") for n in nodes)


def lxd_members_yaml(nodes: list, names: dict) -> str:
    """The YAML `lxd cluster edit` reads on stdin: members with id, name, address and role
    (voter, stand-by, spare). `names` maps each ID to LXD's name for it (from local.db). In the
    order of the IDs, as LXD lists them: it compares the list entry by entry and refuses a
    "changed member ID" otherwise."""
    lines = ["members:"]
    for node in sorted(nodes, key=lambda n: int(n["id"])):
        lines += ["- id: %d" % int(node["id"]), "  name: %s" % names[int(node["id"])],
                  "  address: %s" % node["address"], "  role: %s" % node["role"]]
    return "\n".join(lines) + "\n"


def info_yaml(node: dict) -> str:
    return "Address: %s\nID: %d\nRole: %d\n" % (node["address"], int(node["id"]), APP_ROLE_NUMBERS[node["role"]])


def parse_nodes(text: str) -> list:
    """(id, address, role number) of every node in a cluster.yaml or info.yaml text; ValueError
    when it does not parse."""
    try:
        return [(int(n["ID"]), n["Address"], int(n["Role"])) for n in fmt.parse_node_yaml(text)]
    except (fmt.FormatError, KeyError, TypeError) as exc:
        raise ValueError(str(exc))


def node_differs(path: str, content: str) -> bool:
    """Whether the info.yaml at path names another ID or address than `content` (missing or
    unreadable: True). The role number is not compared: the app keeps it up to date itself."""
    try:
        with open(path, encoding="utf-8") as handle:
            have = parse_nodes(handle.read())
    except (OSError, ValueError):
        return True
    want = parse_nodes(content)
    return [(i, a) for i, a, _r in have] != [(i, a) for i, a, _r in want]


def reconfigured(facts: dict, membership: list, index: int) -> bool:
    """Whether a directory's facts (dqlite_datadir, quick) end with the reconfigure to
    `membership`: a term-1 configuration entry at `index` listing exactly those servers."""
    want = sorted((int(s["id"]), s["address"], s["role"]) for s in membership)
    log = facts.get("log") or {}
    if log.get("last_index") != index or log.get("last_term") != 1:
        return False
    for segment in facts.get("segments", []):
        for change in segment.get("changes", []):
            if change["index"] == index and isinstance(change["servers"], list):
                return sorted((s["id"], s["address"], s["role"]) for s in change["servers"]) == want
    return False
