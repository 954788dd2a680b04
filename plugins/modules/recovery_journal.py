#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: recovery_journal
short_description: Read or write a member's recovery journal, atomically
version_added: 0.1.0
description:
  - The journal records a recovery's id, the plan (and its hash) and every finished step, so a
    re-run after a crash, a kill or an unreachable host continues the SAME recovery. It never
    re-ranks the members and never runs the reconfigure twice.
  - Written to a temporary file, fsync'd and renamed (mode C(0600)); a finished recovery's
    journal is kept under C(history/) when a new one begins.
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
  path:
    description: The journal file.
    type: path
    required: true
  state:
    description:
      - V(read) returns the journal (or null).
      - V(present) writes O(journal), merging its C(steps) with the recorded ones when the recovery id matches.
      - V(archived) moves a finished journal into C(history/) beside it.
    type: str
    choices: [read, present, archived]
    default: read
  journal:
    description: The journal to write; needs C(recovery_id).
    type: dict
  controller_echo:
    description:
      - A file on the CONTROLLER to write the journal (as the task returns it) to, atomically, folders made
        as needed; the action plugin does it after the module ran, not in check mode.
    type: path
  fact:
    description: A fact to set to the journal the task returns (saves a set_fact).
    type: str
"""

EXAMPLES = r"""
- name: Read the journal
  quorum.recovery.recovery_journal:
    path: /var/backups/quorum-recovery/journal.json
  register: journal

- name: Record a finished step
  quorum.recovery.recovery_journal:
    path: /var/backups/quorum-recovery/journal.json
    state: present
    journal:
      recovery_id: "{{ recovery_id }}"
      steps: {reconfigured: "{{ now(utc=true).isoformat() }}"}
    controller_echo: "{{ lookup('env', 'HOME') }}/.quorum-recovery/{{ recovery_id }}/journal.json"
    fact: journal
"""

RETURN = r"""
journal:
  description: The journal after the call (null when there is none).
  returned: always
  type: dict
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.quorum.recovery.plugins.module_utils import datadir_archive as arch
from ansible_collections.quorum.recovery.plugins.module_utils import journal


def _read(module, path):
    if not os.path.exists(path):
        return None
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError) as exc:
        module.fail_json(msg="journal %s is unreadable (%s); move it aside by hand after checking it" % (path, exc))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            state=dict(type="str", choices=["read", "present", "archived"], default="read"),
            journal=dict(type="dict"),
            # handled on the controller by the action plugin, which never passes them on
            controller_echo=dict(type="path"),
            fact=dict(type="str"),
        ),
        required_if=[("state", "present", ["journal"])],
        supports_check_mode=True,
    )
    path, state = module.params["path"], module.params["state"]
    current = _read(module, path)
    if state == "read":
        module.exit_json(changed=False, journal=current)
    if state == "archived":
        if current is None:
            module.exit_json(changed=False, journal=None)
        target = os.path.join(os.path.dirname(path), "history", "%s.json" % current.get("recovery_id", "unknown"))
        if not module.check_mode:
            os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
            os.rename(path, target)
        module.exit_json(changed=True, journal=None)
    new = dict(module.params["journal"])
    if not new.get("recovery_id"):
        module.fail_json(msg="journal needs a recovery_id")
    if current and current.get("recovery_id") == new["recovery_id"]:
        merged = journal.unite([current, new])
    elif current and current.get("status") != "complete":
        module.fail_json(msg="journal %s belongs to recovery %s, still in progress; refusing to start %s"
                         % (path, current.get("recovery_id"), new["recovery_id"]), journal=current)
    else:
        merged = new
    if merged == current:
        module.exit_json(changed=False, journal=current)
    if not module.check_mode:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        if current and current.get("recovery_id") != merged["recovery_id"]:
            history = os.path.join(os.path.dirname(path), "history")
            os.makedirs(history, mode=0o700, exist_ok=True)
            os.rename(path, os.path.join(history, "%s.json" % current.get("recovery_id", "unknown")))
        arch.write_atomic(path, json.dumps(merged, indent=1, sort_keys=True).encode())
    module.exit_json(changed=True, journal=merged)


if __name__ == "__main__":
    main()
