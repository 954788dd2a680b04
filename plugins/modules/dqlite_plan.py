#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: dqlite_plan
short_description: Plan a dqlite recovery from every member's facts (run on the controller)
version_added: 0.1.0
description:
  - Elects the most advanced healthy member by the term of its last log entry, then its last
    index (Raft's own rule; never by metadata term, file names or times), computes the new
    membership (declared lost members removed, changed addresses applied, an odd number of
    voters), lists each member's fate and actions, and explains why.
  - Refuses, with every reason, when the choice is not safe - members from different clusters,
    no usable member, a winner lacking what another member's snapshot holds, a tie at the same
    position with different last entries (divergent logs), an override that picks a member
    behind another, a member of the membership that is neither reachable nor declared lost.
  - When a repairable member ranks at or above the best healthy one, returns C(stage=repair)
    with the repairs to make first (the caller applies them, re-reads the facts and plans again
    with O(allow_repairs=false)).
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
  members:
    description: "Inventory host name -> the C(member) that M(quorum.recovery.dqlite_info) returned, for every
      reachable member not declared lost."
    type: dict
    required: true
  lost:
    description: Declared lost members, by inventory name, dqlite address or node ID.
    type: list
    elements: str
    default: []
  hosts:
    description: Inventory host name -> its configured dqlite address (to match declared lost hosts).
    type: dict
    default: {}
  winner:
    description: An operator's choice of winner; refused if any healthy member is ahead of it.
    type: str
  addresses:
    description: Inventory host name -> the member's NEW dqlite address, for members whose address changed.
    type: dict
    default: {}
  max_voters:
    description: The most voters the new membership gets (the go-dqlite app keeps 3).
    type: int
    default: 3
  allow_repairs:
    description: Whether the plan may ask for repairs first (false on the pass after the repairs).
    type: bool
    default: true
  accept_loss:
    description: Go on although an unusable member claims entries the winner lacks and no majority proves them
      uncommitted.
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Plan from every member's facts
  quorum.recovery.dqlite_plan:
    members: "{{ dict(ansible_play_hosts | zip(ansible_play_hosts | map('extract', hostvars, ['_facts', 'member']))) }}"
    lost: "{{ recover_lost }}"
  delegate_to: localhost
  run_once: true
  register: plan
"""

RETURN = r"""
plan:
  description: The plan. C(stage) is V(repair) (only C(repairs) and C(why) are set) or V(final).
  returned: success
  type: dict
  contains:
    winner:
      description: The elected member.
      type: str
    why:
      description: The reasons for the choice, one sentence each.
      type: list
      elements: str
    warnings:
      description: What the plan cannot prove.
      type: list
      elements: str
    membership:
      description: The new membership, each with host, id, address and role.
      type: list
      elements: dict
    reconfigure:
      description: The winner, its expected last index and the segment the reconfigure appends.
      type: dict
    table:
      description: The members as a table, one line each.
      type: list
      elements: str
    picture:
      description: Each member's log drawn to one scale.
      type: list
      elements: str
    hash:
      description: Digest of the winner, the membership, the reconfigure point and the positions.
      type: str
reasons:
  description: Why the plan was refused.
  returned: failure
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.quorum.recovery.plugins.module_utils import dqlite_plan


def main():
    module = AnsibleModule(
        argument_spec=dict(
            members=dict(type="dict", required=True),
            lost=dict(type="list", elements="str", default=[]),
            hosts=dict(type="dict", default={}),
            winner=dict(type="str"),
            addresses=dict(type="dict", default={}),
            max_voters=dict(type="int", default=3),
            allow_repairs=dict(type="bool", default=True),
            accept_loss=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if p["max_voters"] < 1:
        module.fail_json(msg="max_voters must be at least 1, got %d" % p["max_voters"])
    try:
        plan = dqlite_plan.make_plan(p["members"], lost=p["lost"], winner=p["winner"], addresses=p["addresses"],
                                     hosts=p["hosts"], max_voters=p["max_voters"], allow_repairs=p["allow_repairs"],
                                     accept_loss=p["accept_loss"])
    except dqlite_plan.PlanRefused as exc:
        module.fail_json(msg="refusing to recover: " + " | ".join(exc.reasons), reasons=exc.reasons,
                         partial=exc.partial)
    module.exit_json(changed=False, plan=plan)


if __name__ == "__main__":
    main()
