#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: backup_find
short_description: List the backups at one destination and check the payloads a restore would use
version_added: 0.1.0
description:
  - Runs where backups are kept (a backup host, or the controller as localhost), read-only. Reads every manifest in
    O(folder) (docs/backup-format.md; orphans and partial writes are never candidates) and checks payloads (size and
    sha256 against the manifest) from the newest verified backup down, stopping at the first whole one
    (O(wanted=newest)) or at the backup O(wanted) names, so only what a restore needs is read.
  - The controller merges the answers of every destination (module_utils/backup_choice.py) - a payload damaged at
    one destination may be whole at another.
author:
  - quorum.recovery maintainers (@quorum-recovery)
extends_documentation_fragment:
  - quorum.recovery.attributes
attributes:
  check_mode:
    support: full
    details: Reads only, in check mode too.
  diff_mode:
    support: none
  idempotent:
    support: full
options:
  folder:
    description: The cluster's backup folder at this destination (C(DEST/CLUSTER/ENGINE)); a missing folder holds no backups.
    type: path
    required: true
  wanted:
    description: V(newest) (the newest verified backup whose payload checks out), or a backup's name.
    type: str
    default: newest
"""

EXAMPLES = r"""
- name: List and check the backups at a backup host
  quorum.recovery.backup_find:
    folder: /var/backups/quorum-recovery-store/prod/etcd
    wanted: newest
  delegate_to: backup1
"""

RETURN = r"""
manifests:
  description: Backup name -> its manifest, for every readable manifest in the folder.
  returned: always
  type: dict
checked:
  description: Backup name -> null when its payload checks out, else the error naming the payload.
  returned: always
  type: dict
  sample: {"etcd-etcd-0000000007-20261202T041500Z": null}
unreadable:
  description: One sentence per manifest that cannot be read.
  returned: always
  type: list
  elements: str
folder:
  description: The folder read.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.quorum.recovery.plugins.module_utils import backup_catalog as bc
from ansible_collections.quorum.recovery.plugins.module_utils import backup_choice


def main():
    module = AnsibleModule(
        argument_spec=dict(folder=dict(type="path", required=True), wanted=dict(type="str", default="newest")),
        supports_check_mode=True,
    )
    try:
        found = backup_choice.walk(module.params["folder"], module.params["wanted"])
    except bc.CatalogError as exc:
        module.fail_json(msg="folder=%s: %s" % (module.params["folder"], exc))
    module.exit_json(changed=False, **found)


if __name__ == "__main__":
    main()
