# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The recovery plan, for every engine, made on the controller from every member's summary.

PRIVATE to this collection: may change without notice. Standard library only.

Pure functions over the engine-neutral summaries the inspectors fill in (module_utils/member.py):
elect the most advanced member (term of the last entry, then last index: Raft's own election
rule; then the engine's tie-break), compute the new membership, give every host its part, and
refuse, with every reason at once, when the choice is not safe. A member that needs a repair
is planned as it will read after the repair, so the plan shown (and --check) is the plan carried
out, and every refusal comes before the first change. What only an engine knows (membership
roles, the step that builds the restore source) is in its hook module (dqlite_plan, etcd_plan).
Nothing here touches a host.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

import hashlib
import json

from ansible_collections.quorum.recovery.plugins.module_utils import dqlite_plan, etcd_plan
from ansible_collections.quorum.recovery.plugins.module_utils.member import (
    ERROR, HEALTHY, REPAIRABLE, UNUSABLE)

ENGINES = {"dqlite": dqlite_plan, "etcd": etcd_plan}


class PlanRefused(Exception):
    """The plan is not safe; `reasons` says why, one sentence each."""

    def __init__(self, reasons: list, partial: dict | None = None) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = list(reasons)
        self.partial = partial or {}


def position(summary: dict, repaired: bool = False) -> tuple:
    """(term of the last entry, last index): the order Raft itself uses to pick a leader; for a
    member to be repaired, where its log ends after the repair."""
    after = (summary or {}).get("after_repair") if repaired else None
    source = after or summary or {}
    return (source.get("last_term") or 0, source.get("last_index") or 0)


def rank_key(summary: dict) -> tuple:
    """Position after any repair, then the engine's tie-break (etcd: applied index, revision)."""
    repaired = (summary or {}).get("verdict") == REPAIRABLE
    return position(summary, repaired) + tuple((summary or {}).get("tie_break") or ())


def fmt_pos(pos: tuple) -> str:
    return "term %d index %d" % tuple(pos[:2])


def _digest(summary):
    after = summary.get("after_repair") if summary.get("verdict") == REPAIRABLE else None
    return (after or summary).get("last_entry_sha256")


def _identity(host, summary, hosts):
    """(member id, address): the member's own, else found by its inventory address among the voters."""
    if summary.get("member_id") is not None:
        return summary["member_id"], summary.get("address")
    address = hosts.get(host)
    for voter in summary.get("voters") or []:
        if address and voter["address"] == address:
            return voter["id"], address
    return None, address


def _identify_missing(ids, current, members, hosts):
    """A member whose data directory is gone knows nothing of itself: find it among the other
    members' voters by its configured address, or by its name (etcd names members, often by host)."""
    for host in sorted(members):
        if ids[host] is not None or members[host].get("exists"):
            continue
        for other in sorted(members):
            for voter in members[other].get("voters") or []:
                if (hosts.get(host) and voter["address"] == hosts[host]) or voter.get("name") == host:
                    ids[host], current[host] = voter["id"], voter["address"]
                    break
            if ids[host] is not None:
                break


def _clusters(members, ids):
    """Groups of members that belong to one cluster: by the engine's cluster key where every
    member has one, else by voter IDs they share (dqlite keeps no cluster ID)."""
    keys = {h: members[h].get("cluster_key") for h in members}
    if members and all(keys.values()):
        groups = {}
        for host in sorted(members):
            groups.setdefault(keys[host], []).append(host)
        return list(groups.values())
    groups = []
    for host in sorted(members):
        mine = {v["id"] for v in members[host].get("voters") or []}
        if ids.get(host) is not None:
            mine.add(ids[host])
        joined = [g for g in groups if g["ids"] & mine]
        merged = {"hosts": [host] + [h for g in joined for h in g["hosts"]], "ids": set(mine).union(*[g["ids"] for g in joined])}
        groups = [g for g in groups if g not in joined] + [merged]
    return [sorted(g["hosts"]) for g in groups]


def _is_lost(voter, lost, hosts):
    names = {str(x) for x in lost}
    if str(voter["id"]) in names or voter["address"] in names or voter.get("name") in names:
        return True
    # a declared-lost host's configured address: its member address (recover_address), or, when it
    # has none (a flavor that finds the address in info.yaml, such as microk8s), the host itself
    # (the role passes its ansible_host), which then names the voter at that host on any port
    at_host = voter["address"].rsplit(":", 1)[0]
    return any(hosts.get(name) in (voter["address"], at_host) for name in names if hosts.get(name))


def _address_reasons(members, current, hosts, addresses):
    """Refusals for addresses that would bring the cluster up broken. A member whose host lost
    the address its summary names (address_local), or whose inventory address (recover_address)
    differs from it, moved: rebuilt under its old address it would not start and the others
    would keep calling the old one. Only recover_addresses says what the new address is."""
    reasons = []
    for host in sorted(members):
        facts = members[host]
        if not facts.get("exists"):
            continue
        old, configured, new = current[host], hosts.get(host) or "", addresses.get(host)
        where = facts.get("address_source") or "its data directory"
        engine = facts.get("engine") or "engine"
        hint = 'recover_addresses={"%s": "<its new address>:<port>"}' % host
        if new is None and facts.get("address_local") is False:
            reasons.append("%s: its %s address %s (%s) is not an address of the host any more; if the host's "
                           "address changed, name the new one with %s, otherwise give the host its address back"
                           % (host, engine, old, where, hint if not configured or configured == old else
                              'recover_addresses={"%s": "%s"}' % (host, configured)))
        elif new is None and configured and old and configured != old:
            reasons.append("%s: the inventory's recover_address %s differs from %s in its %s; if the member's "
                           "address changed, set recover_addresses={\"%s\": \"%s\"}, otherwise correct "
                           "recover_address" % (host, configured, old, where, host, configured))
        elif new is not None and facts.get("new_address_local") is False:
            reasons.append("recover_addresses gives %s the address %s, which is not an address of that host: "
                           "%s could not listen on it" % (host, new, engine))
        elif new is not None and configured and configured != new:
            reasons.append("recover_addresses gives %s the address %s but its recover_address in the inventory is "
                           "%s: make them agree (the checks after the start connect to recover_address)"
                           % (host, new, configured))
    taken = {}
    for host in sorted(members):
        address = addresses.get(host, current[host])
        if address and address in taken:
            reasons.append("%s and %s would both have the address %s in the new membership"
                           % (taken[address], host, address))
        taken.setdefault(address, host)
    return reasons


def problems_text(summary: dict) -> str:
    problems = [p for p in (summary or {}).get("problems", []) if p.get("severity") == ERROR]
    if not problems:
        return "no errors" if (summary or {}).get("exists", True) else "no data directory"
    return "; ".join("%s: %s" % (p["file"], p["message"]) for p in problems[:3]) + (
        " (+%d more)" % (len(problems) - 3) if len(problems) > 3 else "")


def parting_index(mine: dict, theirs: dict) -> int | None:
    """The last index at which two logs agree, from where each term begins (Raft's Log Matching:
    entries with the same index and term are the same, and so is everything before them).
    None when a log's terms are unknown. Entries below both snapshots are committed, so equal."""
    a, b = mine.get("terms"), theirs.get("terms")
    if a is None or b is None:
        return None
    end = min(mine.get("last_index") or 0, theirs.get("last_index") or 0)

    def term_at(starts, index):
        found = [t for t, first in starts if first <= index]
        return found[-1] if found else None

    # terms only change where a term begins: the highest agreeing index is the shorter end or
    # just before (or at) one of those beginnings
    for index in sorted({end} | {first + d for _t, first in a + b for d in (-1, 0)}, reverse=True):
        if 0 < index <= end and term_at(a, index) is not None and term_at(a, index) == term_at(b, index):
            return index
    return min(mine.get("snapshot_index") or 0, theirs.get("snapshot_index") or 0)


def _loss_if_chosen(host, members, chosen):
    """What choosing `host` instead of the winner would lose, in one sentence."""
    mine, win = members[host], members[chosen]
    if members[host].get("verdict") == UNUSABLE:
        return "cannot be the source (%s)" % problems_text(mine)
    pos, win_pos = position(mine, mine.get("verdict") == REPAIRABLE), position(win, win.get("verdict") == REPAIRABLE)
    parted = parting_index(dict(mine, last_term=pos[0], last_index=pos[1]),
                           dict(win, last_term=win_pos[0], last_index=win_pos[1]))
    if pos == win_pos:
        return "nothing: same last entry as the winner"
    if parted is not None and parted < pos[1]:
        return ("its log parts from the winner's after index %d: choosing it would drop the winner's entries "
                "%d-%d (%d), and its own entries %d-%d are an unacknowledged tail from term %d that the recovery drops"
                % (parted, parted + 1, win_pos[1], win_pos[1] - parted, parted + 1, pos[1], pos[0]))
    if pos[0] == win_pos[0] or parted == pos[1]:
        return "choosing it would lose the %d entries %d-%d" % (win_pos[1] - pos[1], pos[1] + 1, win_pos[1])
    return "choosing it would lose the winner's entries after its last one (an older term: %s)" % fmt_pos(pos)


def make_plan(engine: str, members: dict, lost: Iterable = (), winner: str | None = None,
              addresses: dict | None = None, hosts: dict | None = None, max_voters: int = 3,
              allow_repairs: bool = True, accept_loss: bool = False, source_options: dict | None = None,
              backup: dict | None = None) -> dict:
    """Plan a recovery. members: {host: summary}; lost: declared lost members (inventory names,
    addresses, IDs or names); winner: an operator override; addresses: {host: new address};
    hosts: {host: configured address}; allow_repairs=False on the pass after the repairs (a
    member still needing one is then refused); source_options: the engine's choices for the
    restore source (etcd: raw_db); backup: the backup to restore instead of a member's data
    (see _backup_plan). Raises PlanRefused with every reason at once."""
    hooks = ENGINES[engine]
    addresses, hosts = dict(addresses or {}), dict(hosts or {})
    members = {h: dict(s or {}) for h, s in members.items()}
    if backup:
        return _backup_plan(engine, members, backup, lost=lost, winner=winner, addresses=addresses, hosts=hosts,
                            max_voters=max_voters)
    reasons, warnings, why = [], [], []
    if not members:
        raise PlanRefused(["no member's facts to plan from: every member is declared lost or unreachable"])
    ids, current = {}, {}
    for host in sorted(members):
        ids[host], current[host] = _identity(host, members[host], hosts)
        if members[host].get("exists") and ids[host] is None:
            source = members[host].get("address_source") or "identity file"
            reasons.append("%s: its member ID is unknown (no %s, and its address %s is not among its voters); "
                           "restore it or declare the member lost" % (host, source, current[host]))
    _identify_missing(ids, current, members, hosts)
    reasons += _address_reasons(members, current, hosts, addresses)
    groups = _clusters({h: s for h, s in members.items() if s.get("exists")}, ids)
    if len(groups) > 1:
        reasons.append("members from different clusters (%s): %s" % (
            "cluster IDs differ" if all(members[h].get("cluster_key") for g in groups for h in g)
            else "no member ID in common", " vs ".join("{%s}" % ", ".join(g) for g in groups)))
    verdicts = {h: members[h].get("verdict", UNUSABLE) for h in members}
    repairable = {h for h in members if verdicts[h] == REPAIRABLE}
    pos = {h: position(members[h], h in repairable) for h in members}
    # at the same rank a member that needs no repair goes first: repair only what the plan needs
    candidates = sorted((h for h in members if verdicts[h] in (HEALTHY, REPAIRABLE)),
                        key=lambda h: tuple(-k for k in rank_key(members[h])) + (h in repairable, h))
    if not candidates:
        reasons.append("no usable member: %s" % ", ".join(
            "%s is %s (%s)" % (h, verdicts[h], problems_text(members[h])) for h in sorted(members)))
        raise PlanRefused(reasons)

    chosen = candidates[0]
    top = [h for h in candidates if pos[h] == pos[chosen]]
    if len(top) > 1 and len({_digest(members[h]) for h in top}) > 1:
        reasons.append("%s end at the same %s with different last entries: their logs diverge (as when a "
                       "reconfigure ran on more than one member); pick by hand from the safety archives"
                       % (" and ".join(top), fmt_pos(pos[chosen])))
    if winner:
        if winner not in members:
            reasons.append("recover_winner=%s is not a reachable surviving member (members: %s)"
                           % (winner, ", ".join(sorted(members))))
        elif verdicts[winner] == UNUSABLE:
            reasons.append("recover_winner=%s is unusable (%s)" % (winner, problems_text(members[winner])))
        elif pos[winner] < pos[chosen]:
            reasons.append("recover_winner=%s is at %s, behind %s at %s: it would lose the entries in between"
                           % (winner, fmt_pos(pos[winner]), chosen, fmt_pos(pos[chosen])))
        else:
            chosen = winner
            why.append("%s chosen by recover_winner, and no usable member is ahead of it" % winner)
    if not why:
        why.append("%s holds the most advanced log among the usable members: %s%s" % (
            chosen, fmt_pos(pos[chosen]), " (after its repair)" if chosen in repairable else ""))
        tied = [h for h in top if h != chosen]
        if tied:
            same = [h for h in tied if rank_key(members[h]) == rank_key(members[chosen])]
            why.append("tied with %s, same last entry; %s wins %s" % (
                ", ".join(tied), chosen, "by name" if same else "on %s" % hooks.TIE_BREAK))

    repairs = {}
    if chosen in repairable:
        if not allow_repairs:
            reasons.append("%s is still repairable after its repair (%s); repair it by hand or declare it lost"
                           % (chosen, problems_text(members[chosen])))
        elif (members[chosen].get("after_repair") or {}).get("repairs"):
            repairs[chosen] = list(members[chosen]["after_repair"]["repairs"])
            why.append("%s needs a repair before it can be the source (%s); the others are rebuilt from it, so "
                       "their own damage is moved aside with their files, not repaired"
                       % (chosen, problems_text(members[chosen])))

    losses = {}
    for host in sorted(members):
        if host == chosen:
            continue
        losses[host] = _loss_if_chosen(host, members, chosen)
        if verdicts[host] == UNUSABLE:
            why.append("%s is unusable and cannot be the source: %s" % (host, problems_text(members[host])))
        else:
            behind = pos[chosen][1] - pos[host][1]
            why.append("%s is at %s (%s)%s" % (host, fmt_pos(pos[host]),
                                               "same position" if pos[host] == pos[chosen] else
                                               "%d entries behind" % behind if pos[host][0] == pos[chosen][0] else
                                               "an older term",
                                               "; its damage needs no repair, it is rebuilt from the winner: %s"
                                               % problems_text(members[host]) if host in repairable else ""))

    # The winner must hold what every other member's newest snapshot holds (those entries were
    # applied, so committed).
    win_pos = pos[chosen]
    for host in sorted(members):
        snap = members[host].get("snapshot_index") or 0
        if host != chosen and snap > win_pos[1]:
            reasons.append("%s has a snapshot at index %d, beyond the winner %s's last index %d: the winner lacks "
                           "committed entries" % (host, snap, chosen, win_pos[1]))
    # A member that campaigned alone raised its current term past every log term; it must not win.
    top_log_term = max(p[0] for p in pos.values())
    for host in sorted(members):
        current_term = members[host].get("current_term") or 0
        if current_term > top_log_term and hooks.FLAG_LONE_CAMPAIGN:
            warnings.append("%s's current term %d is above every member's last log term (%d): it campaigned alone "
                            "while cut off; ranked by its log, not by that term" % (host, current_term, top_log_term))

    # Unusable members that claim to be ahead hold entries no one else has.
    voters_of_winner = {v["id"]: v for v in members[chosen].get("voters") or []}
    voter_ids = {i for i, v in voters_of_winner.items() if v.get("role", "voter") == "voter"}
    seen = {ids[h] for h in members if verdicts[h] != UNUSABLE and ids[h] in voter_ids}
    majority = len(seen) * 2 > len(voter_ids) if voter_ids else False
    if majority:
        why.append("the members read include %d of the %d voters, a majority: by Raft's election rule the most "
                   "advanced of them holds every committed entry" % (len(seen), len(voter_ids)))
    else:
        warnings.append("only %d of the %d voters could be read: nothing proves the winner holds every committed "
                        "entry; entries only the lost members had are gone" % (len(seen), len(voter_ids)))
    for host in sorted(members):
        if verdicts[host] == UNUSABLE and pos[host] > win_pos:
            text = ("%s is unusable but claims %s, ahead of the winner: entries only it holds will be dropped"
                    % (host, fmt_pos(pos[host])))
            if majority:
                warnings.append(text + " (not committed: a majority of voters lacks them)")
            elif accept_loss:
                warnings.append(text + " (accepted: recover_accept_loss)")
            else:
                reasons.append(text + "; they may be committed, so repair it, or set recover_accept_loss=true")

    # The new membership: every voter of the winner's configuration is a survivor or declared lost.
    survivors = sorted(members)
    for name in sorted({str(x) for x in lost}):
        if name not in hosts and not any(_is_lost(v, [name], hosts) for v in voters_of_winner.values()):
            reasons.append("recover_lost names %s, which is neither an inventory member nor a member of %s's "
                           "membership (%s); a misspelt name would leave the real one in" % (
                               name, chosen, ", ".join(sorted("%s %s" % (v.get("name") or v["id"], v["address"])
                                                              for v in voters_of_winner.values()))))
    by_id = {ids[h]: h for h in survivors if ids[h] is not None}
    for voter in voters_of_winner.values():
        if voter["id"] not in by_id and not _is_lost(voter, lost, hosts):
            reasons.append("member %s at %s is in the membership but neither a reachable inventory member nor "
                           "declared lost (recover_lost)" % (voter["id"], voter["address"]))
    for host in survivors:
        if ids[host] is not None and voters_of_winner and ids[host] not in voters_of_winner:
            reasons.append("%s (member %s) is not in the winner's membership; declare it lost to leave it out"
                           % (host, ids[host]))
    partial = {"winner": chosen, "why": why, "warnings": warnings, "repairs": repairs, "losses": losses}
    if reasons:
        raise PlanRefused(reasons, partial)

    order = [chosen] + [h for h in survivors if h != chosen]
    roles = hooks.roles(order, {h: (voters_of_winner.get(ids[h]) or {}).get("role") for h in order}, max_voters)
    membership = [{"host": h, "id": ids[h], "address": addresses.get(h, current[h]), "role": roles[h]}
                  for h in order]
    for entry in membership:  # engines that name their members (etcd) keep the names
        known = (voters_of_winner.get(entry["id"]) or {}).get("name")
        if known or getattr(hooks, "NAMED", False):
            entry["name"] = known or entry["host"]
    lost_members = [{"id": v["id"], "address": v["address"]} for v in voters_of_winner.values() if v["id"] not in by_id]
    source = hooks.source(chosen, members[chosen], pos[chosen], dict(source_options or {}))
    if source.get("loses"):  # an operator's opt-in to a source that drops entries: said, every time
        warnings.append(source["loses"])
    why.extend(_hint_disagrees(members, pos, chosen))
    return _assemble(engine, members, chosen, membership, lost_members, source, current, verdicts, pos,
                     why, warnings, losses, repairs)


def _assemble(engine, members, chosen, membership, lost_members, source, current, verdicts, pos,
              why, warnings, losses, repairs):
    """The plan as every caller gets it, from what the election (or the backup's plan) decided."""
    hooks = ENGINES[engine]
    survivors = sorted(members)
    ids = {m["host"]: m["id"] for m in membership}
    roles = {m["host"]: m["role"] for m in membership}
    moved = {m["host"]: m["address"] for m in membership if m["address"] != current[m["host"]]}
    for host in sorted(moved):
        why.append("%s's address changes from %s to %s (recover_addresses): the new membership names the new one"
                   % (host, current[host], moved[host]))
    parts = {}
    for host in survivors:
        part = "winner" if host == chosen else "restore"
        parts[host] = {"part": part, "id": ids[host], "role": roles[host], "new_address": moved.get(host),
                       "repairs": repairs.get(host, []),
                       "actions": hooks.actions(part, chosen, source, moved.get(host), repairs.get(host))}
    fates = {h: "winner" if h == chosen else "restore from %s" % chosen for h in survivors}
    for voter in lost_members:
        fates["member %s (%s)" % (voter["id"], voter["address"])] = "lost: removed from the membership"
    table_rows = [{"host": h, "id": ids[h], "address": current[h], "new_address": moved.get(h),
                   "verdict": verdicts[h], "last_term": pos[h][0], "last_index": pos[h][1],
                   "snapshot_index": members[h].get("snapshot_index") or 0, "fate": fates[h],
                   "new_role": roles[h], "if_chosen": losses.get(h, ""), "hint": members[h].get("hint")}
                  for h in survivors]
    plan = {"engine": engine, "winner": chosen, "why": why, "warnings": warnings, "members": table_rows,
            "membership": membership, "lost": lost_members, "source": source, "parts": parts, "fates": fates,
            "repairs": repairs, "notes": _notes(members, chosen) + list(getattr(hooks, "notes", _no_notes)(members, chosen))}
    plan["hash"] = plan_hash(plan)
    plan["table"] = render_table(plan)
    plan["picture"] = render_picture(members, plan)
    return plan


def _backup_member(host, backup_members, hosts, inventory_addresses):
    """The member of the backup's membership this host is: by its recover_address (the member's
    address), else by name (etcd names members, often by host), else by its ansible_host in the
    member's address."""
    for match in (lambda m: hosts.get(host) and m["address"] == hosts[host],
                  lambda m: m.get("name") == host,
                  lambda m: inventory_addresses.get(host) and _address_host(m["address"]) == inventory_addresses[host]):
        found = [m for m in backup_members if match(m)]
        if len(found) == 1:
            return found[0]
    return None


def _address_host(address):
    """The host part of a member address (http://10.0.0.1:2380 or 10.0.0.1:9000)."""
    rest = str(address or "").split("://", 1)[-1]
    return rest.rsplit(":", 1)[0].strip("[]")


def _backup_plan(engine, members, backup, lost=(), winner=None, addresses=None, hosts=None, max_voters=3):
    """A recovery whose source is a backup (the module_utils/backup_choice.py choice) instead of a
    member's data: every member may have lost its data (etcd_info/dqlite_info say exists=false).
    backup: {name, counter, cluster_id, position {term, index[, revision, keys]}, membership
    [{id, name, address}], source_host, newer (names of newer verified whole backups), newest,
    confirm_rollback (recover_confirm_rollback), inventory_addresses {host: ansible_host}}.
    The winner is the member that receives it (recover_winner, else the backup's source host,
    else the first by name). A rollback - a member whose usable data is ahead of the backup's
    position, or a newer verified backup - is refused unless confirm_rollback names the backup."""
    hooks = ENGINES[engine]
    addresses, hosts = dict(addresses or {}), dict(hosts or {})
    name = backup["name"]
    bpos = backup.get("position") or {}
    at = (int(bpos.get("term") or 0), int(bpos.get("index") or 0))
    reasons, warnings, why = [], [], []
    if not members:
        raise PlanRefused(["no member to restore backup %s on: every member is declared lost or unreachable" % name])
    backup_members = [dict(m, id=str(m["id"])) for m in backup.get("membership") or []]
    if not backup_members:  # a backup made before its manifest recorded the membership
        missing = sorted(h for h in members if not hosts.get(h))
        if missing:
            reasons.append("backup %s records no membership: set recover_address (the member's address) for %s"
                           % (name, ", ".join(missing)))
        backup_members = [{"id": None, "name": h, "address": hosts.get(h) or ""} for h in sorted(members)]
    mapped, taken = {}, {}
    for host in sorted(members):
        found = _backup_member(host, backup_members, hosts, dict(backup.get("inventory_addresses") or {}))
        if found is None:
            reasons.append("%s matches no member of backup %s's membership (%s) by recover_address, name or "
                           "ansible_host; set its recover_address to its member's address" % (
                               host, name, ", ".join("%s %s" % (m.get("name") or m["id"], m["address"])
                                                     for m in backup_members)))
        elif id(found) in taken:
            reasons.append("%s and %s both match member %s (%s) of backup %s; set recover_address for each"
                           % (taken[id(found)], host, found.get("name") or found["id"], found["address"], name))
        else:
            mapped[host], taken[id(found)] = found, host
    unmapped = [m for m in backup_members if id(m) not in taken]
    for m in unmapped:
        if not _is_lost(m, lost, hosts):
            reasons.append("member %s at %s is in backup %s's membership but neither a reachable inventory member nor "
                           "declared lost (recover_lost)" % (m.get("name") or m["id"], m["address"], name))
    if winner and winner not in members:
        reasons.append("recover_winner=%s is not a reachable surviving member (members: %s)"
                       % (winner, ", ".join(sorted(members))))
    chosen = (winner if winner in members else
              backup.get("source_host") if backup.get("source_host") in members else sorted(members)[0])
    why.append("%s receives backup %s (counter %s, %s%s) and is the source of every other member%s" % (
        chosen, name, backup.get("counter"), fmt_pos(at),
        ", revision %s, %s keys" % (bpos["revision"], bpos.get("keys")) if "revision" in bpos else "",
        " (recover_winner)" if winner == chosen else " (the backup's source host)"
        if chosen == backup.get("source_host") else ""))

    verdicts = {h: members[h].get("verdict", UNUSABLE) for h in members}
    pos = {h: position(members[h], verdicts[h] == REPAIRABLE) for h in members}
    lose = []
    for host in sorted(members):
        summary = members[host]
        if not summary.get("exists"):
            why.append("%s has no data directory: it is rebuilt from the backup" % host)
            continue
        if summary.get("cluster_key") and backup.get("cluster_id") and summary["cluster_key"] != backup["cluster_id"]:
            warnings.append("%s holds data of cluster %s, backup %s is of cluster %s: its data is moved aside"
                            % (host, summary["cluster_key"], name, backup["cluster_id"]))
        if pos[host] > at and verdicts[host] in (HEALTHY, REPAIRABLE):
            lose.append("%s holds %s, %s the backup's %s: its entries %d-%d would be LOST" % (
                host, fmt_pos(pos[host]), "ahead of" if pos[host][0] == at[0] else "in a newer term than",
                fmt_pos(at), at[1] + 1, pos[host][1]) if pos[host][1] > at[1] else
                "%s holds %s, in a newer term than the backup's %s: its log would be LOST" % (
                    host, fmt_pos(pos[host]), fmt_pos(at)))
        elif pos[host] > at:
            warnings.append("%s is %s but claims %s, ahead of the backup: whatever it holds beyond the backup is not "
                            "restored (its files are moved aside)" % (host, verdicts[host], fmt_pos(pos[host])))
        else:
            why.append("%s is at %s, not ahead of the backup: nothing of it is lost" % (host, fmt_pos(pos[host])))
    if backup.get("newer"):
        lose.append("backup %s is older than the newest verified backup%s %s: what those hold beyond it would be "
                    "LOST" % (name, "s" if len(backup["newer"]) > 1 else "", ", ".join(backup["newer"])))
    if lose:
        text = "restoring backup %s is a ROLLBACK: %s" % (name, "; ".join(lose))
        if backup.get("confirm_rollback") == name:
            warnings.append(text + " (confirmed: recover_confirm_rollback=%s)" % name)
        else:
            reasons.append(text + ". To roll back anyway set recover_confirm_rollback=%s" % name)
    elif backup.get("confirm_rollback") and backup["confirm_rollback"] != name:
        warnings.append("recover_confirm_rollback=%s names another backup than the one restored (%s); it is not "
                        "needed: nothing is rolled back" % (backup["confirm_rollback"], name))
    partial = {"winner": chosen, "why": why, "warnings": warnings, "repairs": {}, "losses": {}}
    if reasons:
        raise PlanRefused(reasons, partial)

    order = [chosen] + [h for h in sorted(members) if h != chosen]
    roles = hooks.roles(order, {h: "voter" for h in order}, max_voters)
    current = {h: mapped[h]["address"] for h in members}
    membership = []
    for host in order:
        entry = {"host": host, "id": mapped[host]["id"], "address": addresses.get(host, current[host]),
                 "role": roles[host]}
        if mapped[host].get("name") or getattr(hooks, "NAMED", False):
            entry["name"] = mapped[host].get("name") or host
        membership.append(entry)
    lost_members = [{"id": m["id"], "address": m["address"]} for m in unmapped]
    source = {"host": chosen, "step": "backup", "backup": name, "counter": backup.get("counter"),
              "expected_last_index": at[1], "term": at[0]}
    source.update({k: bpos[k] for k in ("revision", "keys") if k in bpos})
    source = hooks.backup_source(source)
    losses = {h: "nothing: every member is rebuilt from backup %s" % name for h in members if h != chosen}
    return _assemble(engine, members, chosen, membership, lost_members, source, current, verdicts, pos,
                     why, warnings, losses, {})


def _hint_disagrees(members, pos, chosen):
    """Where a product's own position hint (LXD: the newest closed segment's end) would pick
    another member than the election: said in the plan, and the election's pick stands."""
    hinted = {h: (members[h].get("hint") or {}).get("last_index") for h in members}
    hinted = {h: i for h, i in hinted.items() if i is not None}
    if not hinted or chosen not in hinted:
        return []
    name = next(members[h]["hint"]["name"] for h in hinted)
    top = max(hinted.values())
    if hinted[chosen] == top:
        return []
    by_hint = sorted(h for h, i in hinted.items() if i == top)
    return ["%s would pick %s (%d) over %s (%d); it counts closed segments only, so the election's last term "
            "and index, open segments included, pick %s at %s" % (
                name, " or ".join(by_hint), top, chosen, hinted[chosen], chosen, fmt_pos(pos[chosen]))]


def _no_notes(_members, _chosen):
    return []


def _notes(members, chosen):
    """Each warning or note the inspections found, and whether it matters to this recovery."""
    notes = []
    for host in sorted(members):
        for p in members[host].get("problems") or []:
            if p["severity"] == ERROR:
                continue
            if host != chosen:
                matters = "does not matter: its files are moved aside and replaced by the winner's"
            elif p.get("remedy") in (None, "", "none needed") or "from the plan" in (p.get("remedy") or ""):
                matters = "does not matter: %s" % (p.get("remedy") or "none needed")
            else:
                matters = "on the winner: %s" % p["remedy"]
            notes.append("%s: %s%s - %s" % (host, ("%s: " % p["file"]) if p.get("file") else "", p["message"],
                                            matters))
    return notes


def plan_hash(plan: dict) -> str:
    """A digest of what the recovery will do: winner, membership, source point, repairs, positions."""
    core = {k: plan[k] for k in ("winner", "membership", "source", "lost", "repairs")}
    core["positions"] = [[m["host"], m["last_term"], m["last_index"]] for m in plan["members"]]
    return hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()


def render_table(plan: dict) -> list:
    # a product's own position hint (LXD's latest closed segment), beside the election's numbers
    hints = [m.get("hint") for m in plan["members"] if m.get("hint")]
    hint_head = ("%s (not elected on)" % hints[0]["name"],) if hints else ()
    head = ("member", "id", "address", "verdict", "last term", "last index") + hint_head + (
        "snapshot", "new role", "fate")
    rows = [head]
    for m in plan["members"]:
        address = m["address"] or "?"
        if m.get("new_address"):
            address += " -> " + m["new_address"]
        hint = (str((m.get("hint") or {}).get("last_index", "-")),) if hints else ()
        rows.append((m["host"], str(m["id"]), address, m["verdict"], str(m["last_term"]),
                     str(m["last_index"])) + hint + (str(m["snapshot_index"]), m["new_role"], m["fate"]))
    for s in plan["lost"]:
        rows.append(("-", str(s["id"]), s["address"], "lost", "-", "-") + (("-",) if hints else ())
                    + ("-", "-", "removed (declared lost)"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def render_picture(members: dict, plan: dict, width: int = 40) -> list:
    """Each member's log drawn to one scale: snapshot (S), log entries (=), its end."""
    top = max([position(f)[1] for f in members.values()] + [1])
    lines = ["index 0%s%d" % (" " * (width - len(str(top)) + 1), top)]
    winner = plan["winner"]
    win_end = position(members[winner], members[winner].get("verdict") == REPAIRABLE)
    for host in sorted(members, key=lambda h: (h != winner, h)):
        facts = members[host]
        cells = [" "] * width
        snap = facts.get("snapshot_index") or 0
        first = facts.get("first_index") or (snap + 1)
        last = facts.get("last_index") or 0

        def col(index):
            return min(width - 1, int(index * (width - 1) / top))
        for i in range(col(first), col(last) + 1 if last else 0):
            cells[i] = "="
        if snap:
            cells[col(snap)] = "S"
        pos = position(facts)
        if host == winner:
            note = "<- winner" + (" (after its repair: %s)" % fmt_pos(win_end) if win_end != pos else "")
        elif pos == win_end:
            note = "same end as the winner"
        elif pos[0] != win_end[0]:
            note = "last term %d vs winner's %d: diverges after the common prefix" % (pos[0], win_end[0]) \
                if pos[0] > 0 else "empty"
        else:
            note = "%d behind" % (win_end[1] - pos[1]) if pos[1] <= win_end[1] else "%d ahead" % (pos[1] - win_end[1])
        flag = "" if facts.get("verdict") == HEALTHY else " [%s]" % facts.get("verdict", UNUSABLE)
        lines.append("%-6s |%s| t%d:%d %s%s" % (host, "".join(cells), pos[0], pos[1], note, flag))
    lines.append("S = newest snapshot, = = log entries; ends are (last term):(last index)")
    return lines
