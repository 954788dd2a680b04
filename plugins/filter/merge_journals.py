# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters the recover role uses to read its journals."""
from __future__ import annotations

from ansible_collections.quorum.recovery.plugins.module_utils.journal import unite

DOCUMENTATION = r"""
name: merge_journals
short_description: Merge the recovery journals read from every member
version_added: 0.1.0
description:
  - Takes the journals read from every reachable member (nulls for members without one) and
    tells whether a recovery is in progress, finished, absent, or whether the copies conflict.
  - Copies of one recovery are merged, steps united, the copy with a final plan preferred.
options:
  _input:
    description: The journals (dicts or nulls).
    type: list
    elements: raw
    required: true
"""

EXAMPLES = r"""
state: "{{ journals | quorum.recovery.merge_journals }}"
"""

RETURN = r"""
_value:
  description: C(status) (none, active, complete or conflict), C(journal) (the merged one) and C(message).
  type: dict
"""


def merge_journals(journals):
    journals = [j for j in journals or [] if j]
    if not journals:
        return {"status": "none", "journal": None, "message": "no recovery journal on any member"}
    active = [j for j in journals if j.get("status") != "complete"]
    pool = active or journals
    ids = sorted({j.get("recovery_id") for j in pool})
    if len(ids) > 1:
        kind = "in progress" if active else "finished"
        return {"status": "conflict", "journal": None,
                "message": "members hold journals of different recoveries %s: %s; compare them and move the "
                           "stale ones aside by hand" % (kind, ", ".join(map(str, ids)))}
    merged = unite(sorted(pool, key=lambda j: (j.get("plan") is not None, len(j.get("steps") or {}))))
    if active:
        return {"status": "active", "journal": merged,
                "message": "recovery %s is in progress; this run continues it" % ids[0]}
    return {"status": "complete", "journal": merged, "message": "recovery %s finished" % ids[0]}


class FilterModule:
    def filters(self):
        return {"merge_journals": merge_journals}
