# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The next backup counter from what every destination's catalog and every member said
(module_utils/backup_catalog.py next_counter: the one reading of counters)."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError
from ansible_collections.quorum.recovery.plugins.module_utils import backup_catalog

DOCUMENTATION = r"""
name: backup_next_counter
short_description: The counter of a cluster's next backup, never one handed out before
version_added: 0.2.0
description:
  - One more than the highest counter in any destination's catalog (backups, orphans, interrupted writes,
    temporaries, manifests that do not validate) and any counter a member recorded as reserved.
  - Fails naming the value when a member's counter is not a whole number >= 0.
options:
  _input:
    description: The C(catalogs) that M(quorum.recovery.backup_catalog) returned at each destination, in one list.
    type: list
    elements: dict
    required: true
  member_counters:
    description: The counters the members recorded (a member that recorded none is left out or null).
    type: list
    elements: int
    default: []
"""

EXAMPLES = r"""
counter: "{{ listed.results | map(attribute='catalogs') | flatten | quorum.recovery.backup_next_counter([3, 5, none]) }}"
"""

RETURN = r"""
_value:
  description: The next counter (1 when nothing was ever handed out).
  type: int
"""


def backup_next_counter(catalogs, member_counters=()):
    try:
        return backup_catalog.next_counter(catalogs or [], member_counters or [])
    except backup_catalog.CatalogError as exc:
        raise AnsibleFilterError(str(exc))


class FilterModule:
    def filters(self):
        return {"backup_next_counter": backup_next_counter}
