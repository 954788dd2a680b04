# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The recovery plan for a dqlite cluster, made on the controller from every member's facts.

Pure functions over what dqlite_info returned for each member: elect the most advanced member
(term of the last entry, then last index: Raft's own election rule), compute the new
membership, list each host's fate and actions, and refuse with the reasons when the choice is
not safe. Nothing here touches a host.
"""
from __future__ import annotations

import hashlib
import json

HEALTHY, REPAIRABLE, UNUSABLE = "healthy", "repairable", "unusable"
ROLE_ORDER = {"voter": 0, "stand-by": 1, "spare": 2}


class PlanRefused(Exception):
    """The plan is not safe; `reasons` says why, one sentence each."""

    def __init__(self, reasons, partial=None):
        super().__init__("; ".join(reasons))
        self.reasons = list(reasons)
        self.partial = partial or {}


def position(facts):
    """(term of the last entry, last index): the order Raft itself uses to pick a leader."""
    log = (facts or {}).get("log") or {}
    return (log.get("last_term") or 0, log.get("last_index") or 0)


def _fmt_pos(pos):
    return "term %d index %d" % pos


def _identity(host, facts, hosts):
    """(id, address) of the member from info.yaml, else from the membership by its address."""
    ident = (facts or {}).get("identity")
    if ident:
        return ident["id"], ident["address"]
    address = hosts.get(host)
    membership = ((facts or {}).get("membership") or {}).get("authoritative") or {}
    for server in membership.get("servers") or []:
        if address and server["address"] == address:
            return server["id"], address
    return None, address


def _servers(facts):
    auth = ((facts or {}).get("membership") or {}).get("authoritative") or {}
    return auth.get("servers") or []


def _clusters(members, ids):
    """Group members whose membership lists share a server ID (or name each other)."""
    groups = []
    for host in sorted(members):
        mine = {s["id"] for s in _servers(members[host])}
        if ids.get(host) is not None:
            mine.add(ids[host])
        for group in groups:
            if group["ids"] & mine:
                group["hosts"].append(host)
                group["ids"] |= mine
                break
        else:
            groups.append({"hosts": [host], "ids": set(mine)})
    merged = True
    while merged:  # two groups joined by a later member
        merged = False
        for a in range(len(groups)):
            for b in range(a + 1, len(groups)):
                if groups[a]["ids"] & groups[b]["ids"]:
                    groups[a]["hosts"] += groups[b]["hosts"]
                    groups[a]["ids"] |= groups[b]["ids"]
                    del groups[b]
                    merged = True
                    break
            if merged:
                break
    return groups


def _is_lost(server, lost, hosts):
    names = {str(x) for x in lost}
    if str(server["id"]) in names or server["address"] in names:
        return True
    return any(hosts.get(name) == server["address"] for name in names)


def _address_reasons(members, current_address, hosts, addresses):
    """Refusals for addresses that would bring the cluster up broken. A member whose host lost
    the address its info.yaml names (dqlite_info' address_local), or whose inventory address
    (recover_address) differs from it, moved: reconfigured under its old address it would not
    start (go-dqlite refuses a --db address that differs from info.yaml, and cannot listen on an
    address its host lacks) and the others would keep calling the old one. Only recover_addresses
    says what the new address is."""
    reasons = []
    for host in sorted(members):
        facts = members[host] or {}
        if not facts.get("exists", False):
            continue
        old, configured, new = current_address[host], hosts.get(host) or "", addresses.get(host)
        hint = 'recover_addresses={"%s": "<its new address>:<port>"}' % host
        if new is None and facts.get("address_local") is False:
            reasons.append("%s: its dqlite address %s (info.yaml) is not an address of the host any more; if the "
                           "host's address changed, name the new one with %s, otherwise give the host its address "
                           "back" % (host, old, hint if not configured or configured == old else
                                     'recover_addresses={"%s": "%s"}' % (host, configured)))
        elif new is None and configured and old and configured != old:
            reasons.append("%s: the inventory's recover_address %s differs from %s in its info.yaml; if the "
                           "member's address changed, set recover_addresses={\"%s\": \"%s\"}, otherwise correct "
                           "recover_address" % (host, configured, old, host, configured))
        elif new is not None and facts.get("new_address_local") is False:
            reasons.append("recover_addresses gives %s the address %s, which is not an address of that host: "
                           "dqlite could not listen on it" % (host, new))
        elif new is not None and configured and configured != new:
            reasons.append("recover_addresses gives %s the address %s but its recover_address in the inventory is "
                           "%s: make them agree (the checks after the start connect to recover_address)"
                           % (host, new, configured))
    taken = {}
    for host in sorted(members):
        address = addresses.get(host, current_address[host])
        if address and address in taken:
            reasons.append("%s and %s would both have the address %s in the new membership" % (taken[address], host,
                                                                                               address))
        taken.setdefault(address, host)
    return reasons


def _plan_roles(order, old_roles, max_voters):
    """Voters first (the winner, then former voters), an odd count of at most max_voters."""
    voters = max(1, min(max_voters, len(order)))
    if voters % 2 == 0:
        voters -= 1
    ranked = sorted(order, key=lambda h: (h != order[0], ROLE_ORDER.get(old_roles.get(h), 3)))
    roles = {}
    for i, host in enumerate(ranked):
        if i < voters:
            roles[host] = "voter"
        else:
            roles[host] = "spare" if old_roles.get(host) == "spare" else "stand-by"
    return roles


def make_plan(members, lost=(), winner=None, addresses=None, hosts=None, max_voters=3,
              allow_repairs=True, accept_loss=False):
    """Plan a recovery. members: {host: dqlite_info member}; lost: declared lost members
    (inventory names, addresses or IDs); winner: an operator override; addresses: {host: new
    address}; hosts: {host: configured address}. Raises PlanRefused."""
    addresses = dict(addresses or {})
    hosts = dict(hosts or {})
    reasons, warnings, why = [], [], []
    if not members:
        raise PlanRefused(["no member's facts to plan from: every member is declared lost or unreachable"])
    ids, current_address = {}, {}
    for host in sorted(members):
        ids[host], current_address[host] = _identity(host, members[host], hosts)
        if not (members[host] or {}).get("exists", False):
            continue
        if ids[host] is None:
            reasons.append("%s: no info.yaml and its address %s is not in its membership, so its node ID is "
                           "unknown; restore info.yaml or declare it lost" % (host, current_address[host]))
    reasons += _address_reasons(members, current_address, hosts, addresses)
    groups = _clusters({h: f for h, f in members.items() if (f or {}).get("exists")}, ids)
    if len(groups) > 1:
        reasons.append("members from different clusters (no server ID in common): %s" %
                       " vs ".join("{%s}" % ", ".join(sorted(g["hosts"])) for g in groups))
    verdicts = {h: (members[h] or {}).get("verdict", UNUSABLE) for h in members}
    pos = {h: position(members[h]) for h in members}
    healthy = sorted((h for h in members if verdicts[h] == HEALTHY), key=lambda h: (-pos[h][0], -pos[h][1], h))
    repairable = [h for h in members if verdicts[h] == REPAIRABLE]
    best_healthy = pos[healthy[0]] if healthy else (-1, -1)

    repairs = {}
    for host in sorted(repairable):
        if pos[host] < best_healthy:
            continue  # restored from the winner anyway: no need to touch its files
        if not allow_repairs:
            reasons.append("%s is still %s after its repair (%s); repair it by hand or declare it lost"
                           % (host, verdicts[host], _problems_text(members[host])))
            continue
        actions = [p["action"] for p in members[host].get("problems", []) if p.get("action")]
        repairs[host] = actions
    if repairs and not reasons:
        return {"stage": "repair", "repairs": repairs, "recovery_id": None,
                "why": ["%s ranks at %s or above the best healthy member but needs a repair first: "
                        "%s" % (h, _fmt_pos(pos[h]), _problems_text(members[h])) for h in sorted(repairs)]}

    if not healthy:
        reasons.append("no usable member: %s" % ", ".join(
            "%s is %s (%s)" % (h, verdicts[h], _problems_text(members[h])) for h in sorted(members)) or "none")
        raise PlanRefused(reasons)

    chosen = healthy[0]
    top = [h for h in healthy if pos[h] == pos[chosen]]
    digests = {(members[h].get("log") or {}).get("last_entry_sha256") for h in top}
    if len(top) > 1 and len(digests) > 1:
        reasons.append("%s end at the same %s with different last entries: their logs diverge (as when "
                       ".reconfigure ran on more than one node); pick by hand from the safety archives"
                       % (" and ".join(top), _fmt_pos(pos[chosen])))
    if winner:
        if winner not in members:
            reasons.append("recover_winner=%s is not a reachable surviving member (members: %s)"
                           % (winner, ", ".join(sorted(members))))
        elif verdicts[winner] != HEALTHY:
            reasons.append("recover_winner=%s is %s, not healthy (%s)"
                           % (winner, verdicts[winner], _problems_text(members[winner])))
        elif pos[winner] < pos[chosen]:
            reasons.append("recover_winner=%s is at %s, behind %s at %s: it would lose the entries in between"
                           % (winner, _fmt_pos(pos[winner]), chosen, _fmt_pos(pos[chosen])))
        else:
            chosen = winner
            why.append("%s chosen by recover_winner, and no healthy member is ahead of it" % winner)
    if not why:
        why.append("%s holds the most advanced log among the healthy members: %s" % (chosen, _fmt_pos(pos[chosen])))
        if len(top) > 1:
            others = ", ".join(h for h in top if h != chosen)
            why.append("tied with %s, same last entry; %s wins by name" % (others, chosen))
    for host in sorted(members):
        if host == chosen:
            continue
        if verdicts[host] == HEALTHY:
            behind = pos[chosen][1] - pos[host][1]
            why.append("%s is at %s (%s)" % (host, _fmt_pos(pos[host]),
                                             "same position" if pos[host] == pos[chosen] else
                                             "%d entries behind" % behind if pos[host][0] == pos[chosen][0] else
                                             "an older term"))
        else:
            why.append("%s is %s and cannot be the source: %s" % (host, verdicts[host], _problems_text(members[host])))

    # The winner must hold what every other member's newest snapshot holds (those entries were
    # applied, so committed).
    win_pos = pos[chosen]
    for host in sorted(members):
        log = (members[host] or {}).get("log") or {}
        snap = log.get("snapshot_index") or 0
        if host != chosen and snap > win_pos[1]:
            reasons.append("%s has a snapshot at index %d, beyond the winner %s's last index %d: the winner lacks "
                           "committed entries" % (host, snap, chosen, win_pos[1]))

    # Unusable members that claim to be ahead hold entries no one else has.
    server_roles = {s["id"]: s["role"] for s in _servers(members[chosen])}
    voters = {i for i, r in server_roles.items() if r == "voter"}
    seen_voters = {ids[h] for h in members if verdicts[h] != UNUSABLE and ids[h] in voters}
    majority = len(seen_voters) * 2 > len(voters) if voters else False
    if majority:
        why.append("the members read include %d of the %d voters, a majority: by Raft's election rule the most "
                   "advanced of them holds every committed entry" % (len(seen_voters), len(voters)))
    else:
        warnings.append("only %d of the %d voters could be read: nothing proves the winner holds every committed "
                        "entry (raft does not store the commit index); entries only the lost members had are gone"
                        % (len(seen_voters), len(voters)))
    for host in sorted(members):
        if verdicts[host] != HEALTHY and pos[host] > win_pos:
            text = ("%s is %s but claims %s, ahead of the winner: entries only it holds will be dropped"
                    % (host, verdicts[host], _fmt_pos(pos[host])))
            if majority:
                warnings.append(text + " (not committed: a majority of voters lacks them)")
            elif accept_loss:
                warnings.append(text + " (accepted: recover_accept_loss)")
            else:
                reasons.append(text + "; they may be committed, so repair it, or set recover_accept_loss=true")

    # The new membership: every server of the winner's configuration is a survivor or declared lost.
    survivors = sorted(members)
    by_id = {ids[h]: h for h in survivors if ids[h] is not None}
    for server in _servers(members[chosen]):
        if server["id"] not in by_id and not _is_lost(server, lost, hosts):
            reasons.append("node %d at %s is in the membership but neither a reachable inventory member nor "
                           "declared lost (recover_lost)" % (server["id"], server["address"]))
    for host in survivors:
        if ids[host] is not None and server_roles and ids[host] not in server_roles:
            reasons.append("%s (node %s) is not in the winner's membership; declare it lost to leave it out"
                           % (host, ids[host]))
    if reasons:
        raise PlanRefused(reasons, {"winner": chosen, "why": why, "warnings": warnings})

    order = [chosen] + [h for h in survivors if h != chosen]
    roles = _plan_roles(order, {h: server_roles.get(ids[h]) for h in order}, max_voters)
    membership = [{"host": h, "id": ids[h], "address": addresses.get(h, current_address[h]), "role": roles[h]}
                  for h in order]
    lost_servers = [s for s in _servers(members[chosen]) if s["id"] not in by_id]
    last_index = win_pos[1]
    reconfigure = {"host": chosen, "expected_last_index": last_index,
                   "segment": "%016d-%016d" % (last_index + 1, last_index + 1)}
    moved = {s["host"]: s["address"] for s in membership if s["address"] != current_address[s["host"]]}
    for host in sorted(moved):
        why.append("%s's address changes from %s to %s (recover_addresses): the new membership names the new one "
                   "and its info.yaml is rewritten" % (host, current_address[host], moved[host]))
    fates, actions = {}, {}
    for host in survivors:
        readdress = ["write info.yaml with its new address %s" % moved[host]] if host in moved else []
        if host == chosen:
            fates[host] = "winner"
            actions[host] = ["stop", "safety archive", "write the new membership and run .reconfigure ONCE "
                             "(appends %s)" % reconfigure["segment"], *readdress, "archive raft files", "start first"]
        else:
            fates[host] = "restore from %s" % chosen
            actions[host] = ["stop", "safety archive", *readdress, "move its raft files aside",
                             "restore %s's raft files (keep node-local files)" % chosen, "start"]
    for server in lost_servers:
        fates["node %d (%s)" % (server["id"], server["address"])] = "lost: removed from the membership"
    members_table = []
    for host in survivors:
        log = (members[host] or {}).get("log") or {}
        members_table.append({"host": host, "id": ids[host], "address": current_address[host],
                              "new_address": moved.get(host),
                              "verdict": verdicts[host], "last_term": pos[host][0], "last_index": pos[host][1],
                              "snapshot_index": log.get("snapshot_index") or 0, "fate": fates[host],
                              "new_role": roles[host]})
    plan = {"stage": "final", "engine": "dqlite", "winner": chosen, "why": why, "warnings": warnings,
            "members": members_table, "membership": membership,
            "lost": [{"id": s["id"], "address": s["address"]} for s in lost_servers],
            "reconfigure": reconfigure, "fates": fates, "actions": actions, "repairs": {}}
    plan["hash"] = plan_hash(plan)
    plan["table"] = render_table(plan)
    plan["picture"] = render_picture(members, plan)
    return plan


def _problems_text(facts):
    problems = [p for p in (facts or {}).get("problems", []) if p.get("severity") == "error"]
    if not problems:
        return "no errors" if (facts or {}).get("exists", True) else "no data directory"
    return "; ".join("%s: %s" % (p["file"], p["message"]) for p in problems[:3]) + (
        " (+%d more)" % (len(problems) - 3) if len(problems) > 3 else "")


def plan_hash(plan):
    """A digest of what the recovery will do: winner, membership, reconfigure point, positions."""
    core = {k: plan[k] for k in ("winner", "membership", "reconfigure", "lost")}
    core["positions"] = [[m["host"], m["last_term"], m["last_index"], m["verdict"]] for m in plan["members"]]
    return hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()


def render_table(plan):
    head = ("member", "node id", "address", "verdict", "last term", "last index", "snapshot", "new role", "fate")
    rows = [head]
    for m in plan["members"]:
        address = m["address"] or "?"
        if m.get("new_address"):
            address += " -> " + m["new_address"]
        rows.append((m["host"], str(m["id"]), address, m["verdict"], str(m["last_term"]),
                     str(m["last_index"]), str(m["snapshot_index"]), m["new_role"], m["fate"]))
    for s in plan["lost"]:
        rows.append(("-", str(s["id"]), s["address"], "lost", "-", "-", "-", "-", "removed (declared lost)"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def render_picture(members, plan, width=40):
    """Each member's log drawn to one scale: snapshot (S), log entries (=), a gap (.), its end."""
    top = max([position(f)[1] for f in members.values()] + [1])
    lines = ["index 0%s%d" % (" " * (width - len(str(top)) + 1), top)]
    win_end = position(members[plan["winner"]])
    for host in sorted(members, key=lambda h: (h != plan["winner"], h)):
        facts = members[host] or {}
        log = facts.get("log") or {}
        cells = [" "] * width
        snap = log.get("snapshot_index") or 0
        first = log.get("first_index") or (snap + 1)
        last = log.get("last_index") or 0

        def col(index):
            return min(width - 1, int(index * (width - 1) / top))
        for i in range(col(first), col(last) + 1 if last else 0):
            cells[i] = "="
        if snap:
            cells[col(snap)] = "S"
        pos = position(facts)
        if host == plan["winner"]:
            note = "<- winner"
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
