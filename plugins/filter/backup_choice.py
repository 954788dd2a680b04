# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The restore's choice of backup from what every destination said (module_utils/backup_choice.py)."""
from __future__ import annotations

from ansible_collections.quorum.recovery.plugins.module_utils import backup_choice

DOCUMENTATION = r"""
name: backup_choice
short_description: Choose the backup a recovery restores from every destination's backup_find answer
version_added: 0.1.0
description:
  - The newest verified backup whose payload is whole at some destination, or the named one; the damaged ones named
    in warnings; the newer verified ones listed (restoring the chosen one is then a rollback).
  - Never fails - a refusal comes back as C(error), for the role to stop on with its own message.
options:
  _input:
    description: Destination name -> the result of M(quorum.recovery.backup_find) there.
    type: dict
    required: true
  wanted:
    description: V(newest), or a backup's name.
    type: str
    required: true
  order:
    description: The destinations by preference (the payload is taken from the first that holds it whole).
    type: list
    elements: str
"""

EXAMPLES = r"""
chosen: "{{ found | quorum.recovery.backup_choice(recover_from_backup, ['localhost', 'backup1']) }}"
"""

RETURN = r"""
_value:
  description: C(name), C(where), C(folder), C(manifest), C(warnings), C(newer), C(newest); or C(error).
  type: dict
"""


def backup_choice_filter(listings, wanted, order=None):
    try:
        return backup_choice.choose(listings, wanted, order)
    except backup_choice.ChoiceError as exc:
        return {"error": str(exc)}


class FilterModule:
    def filters(self):
        return {"backup_choice": backup_choice_filter}
