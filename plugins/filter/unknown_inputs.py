# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A misspelt input is ignored by Ansible: the role would run on its default instead."""
from __future__ import annotations

import difflib

DOCUMENTATION = r"""
name: unknown_inputs
short_description: Name the variables that look like inputs of a role but are none of them
version_added: 0.1.0
description:
  - Takes the names of the variables set for a host (inventory host and group variables, extra
    variables) and returns one sentence per name that starts with O(prefix) and is not a known
    input, with the closest known name when there is one (C(difflib)).
  - Names that do not start with O(prefix) are ignored, so a role's internal variables
    (C(_recover_*)) and everyone else's are never reported.
options:
  _input:
    description: The names of the variables set (for example C(hostvars[inventory_hostname].keys())).
    type: list
    elements: str
    required: true
  known:
    description: The role's inputs (the options of its C(meta/argument_specs.yml)).
    type: list
    elements: str
    required: true
  prefix:
    description: Only names starting with this are looked at.
    type: str
    default: recover_
"""

EXAMPLES = r"""
problems: "{{ hostvars[inventory_hostname].keys() | quorum.recovery.unknown_inputs(['recover_winner', 'recover_lost']) }}"
# -e recover_winer=h2 gives ["unknown variable recover_winer, did you mean recover_winner?"]
"""

RETURN = r"""
_value:
  description: One sentence per unknown name, sorted by name; empty when every name is known.
  type: list
  elements: str
"""


def unknown_inputs(names, known, prefix="recover_"):
    known = sorted(set(known))
    problems = []
    for name in sorted(set(names)):
        if not name.startswith(prefix) or name in known:
            continue
        close = difflib.get_close_matches(name, known, n=1)
        if close:
            problems.append("unknown variable %s, did you mean %s?" % (name, close[0]))
        else:
            problems.append("unknown variable %s: not an input of this role (its inputs: %s)"
                            % (name, ", ".join(known)))
    return problems


class FilterModule:
    def filters(self):
        return {"unknown_inputs": unknown_inputs}
