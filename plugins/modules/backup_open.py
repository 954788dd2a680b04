#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: backup_open
short_description: Check, decrypt and unpack a backup's payload on the controller, for a restore
version_added: 0.1.0
description:
  - Runs on the controller only (C(delegate_to=localhost)), the one place the age identity ever is. Checks the payload
    against its manifest (size and sha256), decrypts it with O(identity) when it is encrypted (the identity reaches
    C(age) through a pipe, never a file), and unpacks the files the manifest lists into O(dest), each checked against
    the manifest's sha256.
  - A missing or wrong identity, a damaged payload or a file that does not match - a clear error, and O(dest) is not
    made (this run's partial copy is removed).
  - A O(dest) that already holds every file as the manifest says is left alone (changed=false).
author:
  - quorum.recovery maintainers (@quorum-recovery)
extends_documentation_fragment:
  - quorum.recovery.attributes
attributes:
  check_mode:
    support: none
  diff_mode:
    support: none
  idempotent:
    support: full
options:
  payload:
    description: The payload file (C(NAME.tar) or C(NAME.tar.age)) on the controller.
    type: path
    required: true
  manifest:
    description: The backup's manifest (docs/backup-format.md).
    type: dict
    required: true
  dest:
    description: The folder the payload's files are unpacked into (made, mode 0700).
    type: path
    required: true
  identity:
    description: The age identity (C(AGE-SECRET-KEY-1...) lines) for an encrypted backup; from Ansible Vault.
    type: str
    default: ""
  age:
    description: The age program on the controller.
    type: str
    default: age
"""

EXAMPLES = r"""
- name: Open the chosen backup
  quorum.recovery.backup_open:
    payload: ~/.quorum-recovery/backups/prod-etcd-0000000042-20261202T031500Z.tar.age
    manifest: "{{ chosen.manifest }}"
    dest: ~/.quorum-recovery/backups/prod-etcd-0000000042-20261202T031500Z
    identity: "{{ vault_age_identity }}"
  delegate_to: localhost
  no_log: true
"""

RETURN = r"""
files:
  description: The unpacked files, each with name, path, size and sha256.
  returned: success
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.quorum.recovery.plugins.module_utils import backup_choice
from ansible_collections.quorum.recovery.plugins.module_utils import backup_payload as bp


def main():
    module = AnsibleModule(
        argument_spec=dict(
            payload=dict(type="path", required=True),
            manifest=dict(type="dict", required=True),
            dest=dict(type="path", required=True),
            identity=dict(type="str", default="", no_log=True),
            age=dict(type="str", default="age"),
        ),
        supports_check_mode=False,
    )
    p = module.params
    try:
        result = backup_choice.open_payload(p["payload"], p["manifest"], p["dest"], p["identity"], p["age"])
    except (backup_choice.ChoiceError, bp.PayloadError, OSError) as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
