#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: backup_store
short_description: Take a backup that arrived at a destination into its folder, checked, under its real name
version_added: 0.1.0
description:
  - Runs where backups are kept (a backup host, or the controller as localhost). Reads the manifest that arrived
    (O(manifest)), checks the payload that arrived (O(payload)) against it (size and sha256), then renames the
    payload and then the manifest into O(folder), fsyncing the folder, so a backup is listed only once it is whole.
  - A payload that does not match its manifest is refused (a transfer that went wrong), and nothing under a real
    name changes; the arrived files are left where they are for a look.
  - A backup already stored with the same payload sha256 is left alone (changed=false).
  - Never lets a newer backup be overwritten or pruned by older data - the backups already there whose raft
    position is ahead of the new one's (the cluster was rolled back or rebuilt from older data), or of another
    cluster ID, are renamed C(orphan-NAME) first (kept, never pruned, never restored without naming them) and
    listed in RV(orphaned).
author:
  - quorum.recovery maintainers (@quorum-recovery)
extends_documentation_fragment:
  - quorum.recovery.attributes
attributes:
  check_mode:
    support: full
    details: Checks the arrived files, moves nothing.
  diff_mode:
    support: none
  idempotent:
    support: full
options:
  folder:
    description: The cluster's backup folder at this destination (C(DEST/CLUSTER/ENGINE)); made with mode 0700.
    type: path
    required: true
  payload:
    description: The payload as it arrived (on the same filesystem as O(folder)).
    type: path
    required: true
  manifest:
    description: The manifest as it arrived.
    type: path
    required: true
"""

EXAMPLES = r"""
- name: Take the arrived backup in
  quorum.recovery.backup_store:
    folder: /srv/backups/prod/etcd
    payload: /srv/backups/prod/etcd/.incoming/prod-etcd-0000000042-20261202T031500Z.tar.age
    manifest: /srv/backups/prod/etcd/.incoming/prod-etcd-0000000042-20261202T031500Z.json
"""

RETURN = r"""
name:
  description: The backup's name.
  returned: always
  type: str
stored:
  description: The payload and manifest paths under their real names.
  returned: always
  type: list
  elements: str
orphaned:
  description: The backups this one made orphans (name, counter, reason).
  returned: always
  type: list
  elements: dict
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.quorum.recovery.plugins.module_utils import backup_catalog as bc
from ansible_collections.quorum.recovery.plugins.module_utils import backup_payload as bp
from ansible_collections.quorum.recovery.plugins.module_utils import datadir_archive as arch


def main():
    module = AnsibleModule(
        argument_spec=dict(
            folder=dict(type="path", required=True),
            payload=dict(type="path", required=True),
            manifest=dict(type="path", required=True),
        ),
        supports_check_mode=True,
    )
    p = module.params
    result = dict(changed=False, name=None, stored=[], orphaned=[])
    try:
        manifest = bp.read_manifest(p["manifest"])
        name = manifest["name"]
        final_payload = os.path.join(p["folder"], manifest["payload"]["file"])
        final_manifest = os.path.join(p["folder"], name + ".json")
        result.update(name=name, stored=[final_payload, final_manifest])
        if os.path.exists(final_manifest):
            stored = bp.read_manifest(final_manifest)
            if stored["payload"]["sha256"] != manifest["payload"]["sha256"]:
                raise bp.PayloadError("%s is already stored with another payload (sha256 %s, this one %s)"
                                      % (name, stored["payload"]["sha256"], manifest["payload"]["sha256"]))
            bp.check_payload(final_payload, stored)
            module.exit_json(**result)
        bp.check_payload(p["payload"], manifest)
        bc.validate_manifest(manifest, p["manifest"])
        dest_dir = os.path.dirname(os.path.dirname(os.path.abspath(p["folder"])))
        if bc.folder_of(dest_dir, manifest["cluster"], manifest["engine"]) != os.path.abspath(p["folder"]):
            raise bp.PayloadError("folder=%s is not DEST/%s/%s, where backups of this cluster and engine are kept"
                                  % (p["folder"], manifest["cluster"], manifest["engine"]))
        if module.check_mode:
            result["changed"] = True
            module.exit_json(**result)
        os.makedirs(p["folder"], mode=0o700, exist_ok=True)
        with arch.locked(p["folder"]):
            catalog = bc.read_catalog(dest_dir, manifest["cluster"], manifest["engine"])
            for found in bc.plan_orphans(catalog, manifest):
                catalog.orphan(found["name"], found["reason"], by=name)
                result["orphaned"].append(found)
            os.replace(p["payload"], final_payload)
            arch.fsync_dir(p["folder"])
            os.replace(p["manifest"], final_manifest)
            arch.fsync_dir(p["folder"])
    except (bp.PayloadError, bc.CatalogError, OSError) as exc:
        module.fail_json(msg="%s; nothing under a backup's name changed" % exc, **result)
    result["changed"] = True
    module.exit_json(**result)


if __name__ == "__main__":
    main()
