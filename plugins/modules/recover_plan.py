#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: recover_plan
short_description: Plan a dqlite or etcd recovery from every member's summary (run on the controller)
version_added: 0.1.0
description:
  - One election for every engine. Elects the most advanced usable member by the term of its
    last log entry, then its last index (Raft's own rule; never by the current term a member
    raised while campaigning alone, file names or times), then the engine's tie-break (etcd -
    applied index, then db revision), computes the new membership (declared lost members
    removed, changed addresses applied; dqlite - an odd number of voters), gives every host its
    part (winner or restore, repairs, new address, role, actions), says what choosing each other
    member would lose, and explains why.
  - A member whose damage has a reviewed local repair is planned as it will read after the
    repair (the inspection's C(after_repair)); only the winner is repaired, the others are
    rebuilt from it. So the plan shown, also in check mode, is the plan carried out, and every
    refusal comes before the first change.
  - Refuses, with every reason, when the choice is not safe - members from different clusters,
    no usable member, a winner lacking what another member's snapshot holds, a tie at the same
    position with different last entries (divergent logs), an override that picks a member
    behind another, a member of the membership that is neither reachable nor declared lost, an
    unusable member ahead of the winner with no majority proving its extra entries uncommitted.
  - Pure computation, changes nothing; run it with C(delegate_to=localhost) and C(run_once).
author:
  - quorum.recovery maintainers (@quorum-recovery)
extends_documentation_fragment:
  - quorum.recovery.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  idempotent:
    support: full
options:
  engine:
    description: The engine whose members are planned.
    type: str
    choices: [dqlite, etcd]
    required: true
  members:
    description: "Inventory host name -> the C(summary) that M(quorum.recovery.dqlite_info) or
      M(quorum.recovery.etcd_info) returned, for every reachable member not declared lost."
    type: dict
    required: true
  lost:
    description: Declared lost members, by inventory name, address, member ID or member name.
    type: list
    elements: str
    default: []
  hosts:
    description: Inventory host name -> its configured address (to match declared lost hosts).
    type: dict
    default: {}
  winner:
    description: An operator's choice of winner; refused if any usable member is ahead of it.
    type: str
  addresses:
    description: Inventory host name -> the member's NEW address, for members whose address changed.
    type: dict
    default: {}
  max_voters:
    description: The most voters the new membership gets (dqlite; the go-dqlite app keeps 3).
    type: int
    default: 3
  allow_repairs:
    description: Whether the plan may ask for repairs (false on the pass after the repairs, which must find none).
    type: bool
    default: true
  accept_loss:
    description: Go on although an unusable member claims entries the winner lacks and no majority proves them
      uncommitted.
    type: bool
    default: false
  source_options:
    description:
      - The engine's choices for the restore source. etcd - V(raw_db=true) restores the winner's db as it is
        instead of replaying its whole log; the entries beyond the db are lost and the plan names them.
    type: dict
    default: {}
  backup:
    description:
      - The backup to restore instead of a member's data (chosen by M(quorum.recovery.backup_find) and the
        P(quorum.recovery.backup_choice#filter) filter) - C(name), C(counter), C(cluster_id), C(position) (C(term),
        C(index), etcd C(revision) and C(keys)), C(membership) (C(id), C(name), C(address) of each member when it was
        taken), C(source_host), C(newer) (newer verified whole backups), C(confirm_rollback)
        (recover_confirm_rollback) and C(inventory_addresses) (host -> ansible_host).
      - The source step becomes V(backup); members may have no data directory; hosts are matched to the backup's
        members by recover_address, name or ansible_host. A member whose usable data is ahead of the backup, or a
        newer verified backup, makes it a rollback, refused unless C(confirm_rollback) names the backup.
    type: dict
"""

EXAMPLES = r"""
- name: Plan from every member's summary
  quorum.recovery.recover_plan:
    engine: dqlite
    members: "{{ dict(ansible_play_hosts | zip(ansible_play_hosts | map('extract', hostvars, ['_info', 'member', 'summary']))) }}"
    lost: "{{ recover_lost }}"
  delegate_to: localhost
  run_once: true
  register: plan
"""

RETURN = r"""
plan:
  description: The plan.
  returned: success
  type: dict
  contains:
    engine:
      description: The engine planned for.
      type: str
      sample: dqlite
    winner:
      description: The elected member.
      type: str
      sample: h1
    why:
      description: The reasons for the choice, one sentence each.
      type: list
      elements: str
    warnings:
      description: What the plan cannot prove.
      type: list
      elements: str
    notes:
      description: Each warning or note the inspections found, and whether it matters to this recovery.
      type: list
      elements: str
    parts:
      description: "Inventory host -> its part: C(part) (V(winner) or V(restore)), C(id), C(role), C(new_address)
        (or null), C(repairs) (the repair actions to make first, only ever on the winner) and C(actions) in words."
      type: dict
    repairs:
      description: Inventory host -> the repair actions made before the source is built (empty when none).
      type: dict
    membership:
      description: The new membership, each with host, id, address and role.
      type: list
      elements: dict
    lost:
      description: The members removed from the membership (id, address).
      type: list
      elements: dict
    source:
      description: "How the restore source is built ONCE on the winner: C(host), C(step) (dqlite V(reconfigure), etcd
        V(replay) or V(raw-db); V(backup) from a backup, with its C(backup) name, C(counter) and C(term)),
        C(expected_last_index); dqlite C(segment) (the one the reconfigure appends); etcd C(commit) and
        C(beyond_commit)."
      type: dict
    members:
      description: One row per member - position (after any repair), verdict, fate, new role, and C(if_chosen),
        what choosing it instead of the winner would lose.
      type: list
      elements: dict
    table:
      description: The members as a table, one line each.
      type: list
      elements: str
    picture:
      description: Each member's log drawn to one scale.
      type: list
      elements: str
    hash:
      description: Digest of the winner, the membership, the source point, the repairs and the positions.
      type: str
reasons:
  description: Why the plan was refused.
  returned: failure
  type: list
  elements: str
partial:
  description: What the refused plan had decided (winner, why, warnings, repairs, losses).
  returned: failure
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.quorum.recovery.plugins.module_utils import election


def main():
    module = AnsibleModule(
        argument_spec=dict(
            engine=dict(type="str", required=True, choices=sorted(election.ENGINES)),
            members=dict(type="dict", required=True),
            lost=dict(type="list", elements="str", default=[]),
            hosts=dict(type="dict", default={}),
            winner=dict(type="str"),
            addresses=dict(type="dict", default={}),
            max_voters=dict(type="int", default=3),
            allow_repairs=dict(type="bool", default=True),
            accept_loss=dict(type="bool", default=False),
            source_options=dict(type="dict", default={}),
            backup=dict(type="dict"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if p["max_voters"] < 1:
        module.fail_json(msg="max_voters must be at least 1, got %d" % p["max_voters"])
    try:
        plan = election.make_plan(p["engine"], p["members"], lost=p["lost"], winner=p["winner"],
                                  addresses=p["addresses"], hosts=p["hosts"], max_voters=p["max_voters"],
                                  allow_repairs=p["allow_repairs"], accept_loss=p["accept_loss"],
                                  source_options=p["source_options"], backup=p["backup"])
    except election.PlanRefused as exc:
        module.fail_json(msg="refusing to recover: " + " | ".join(exc.reasons), reasons=exc.reasons,
                         partial=exc.partial)
    module.exit_json(changed=False, plan=plan)


if __name__ == "__main__":
    main()
