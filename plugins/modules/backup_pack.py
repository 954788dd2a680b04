#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: backup_pack
short_description: Pack a backup's files into its payload and manifest, encrypted with age on request
version_added: 0.1.0
description:
  - Writes the payload C(NAME.tar) (or C(NAME.tar.age) with O(recipients)) and then the manifest C(NAME.json) into
    O(folder), as docs/backup-format.md defines them; each to a temporary name, fsync'd, renamed, the folder
    fsync'd. A backup exists only when its manifest exists; a killed run leaves no file under a real name.
  - With O(recipients), the tar is streamed through C(age -r) and only ciphertext is written; the identity that
    decrypts it is never needed here.
  - The manifest is O(manifest) plus C(format), C(name), C(files) (name, size, sha256 of each file in the tar)
    and C(payload) (file, size, sha256 as stored, encrypted, recipients).
author:
  - quorum.recovery maintainers (@quorum-recovery)
extends_documentation_fragment:
  - quorum.recovery.attributes
  - quorum.recovery.progress
attributes:
  check_mode:
    support: full
    details: Checks the files and the recipients, writes nothing.
  diff_mode:
    support: none
  idempotent:
    support: full
    details: A O(name) whose manifest is already in O(folder) is left alone.
options:
  folder:
    description: Where the payload and manifest are written (made with mode 0700).
    type: path
    required: true
  name:
    description: The backup's name, C(CLUSTER-ENGINE-COUNTER-YYYYmmddTHHMMSSZ).
    type: str
    required: true
  root:
    description: The folder the O(files) are in (their C(name) is relative to it).
    type: path
    required: true
  files:
    description:
      - What goes into the tar, each with its C(name) (its path in the tar and below O(root)).
      - An entry that also has a C(sha256) (as the copy recorded it) must still have it when packed, or nothing is
        written.
    type: list
    elements: dict
    required: true
  manifest:
    description: The manifest's other keys (cluster, cluster_id, engine, flavor, counter, created, source, position, verified...).
    type: dict
    required: true
  recipients:
    description: age public keys (C(age1...)) to encrypt to; empty writes a plain tar.
    type: list
    elements: str
    default: []
  age:
    description: The age program.
    type: path
    default: age
"""

EXAMPLES = r"""
- name: Pack the snapshot, encrypted to the site's backup key
  quorum.recovery.backup_pack:
    folder: /var/backups/quorum-recovery/backup/outbox
    name: prod-etcd-0000000042-20261202T031500Z
    root: /var/backups/quorum-recovery/backup/work
    files:
      - {name: snapshot.db}
    manifest: "{{ backup_manifest }}"
    recipients: [age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p]
"""

RETURN = r"""
manifest:
  description: The manifest as written (in check mode, without C(files) and C(payload)).
  returned: always
  type: dict
payload:
  description: The payload's path.
  returned: always
  type: str
manifest_path:
  description: The manifest's path.
  returned: always
  type: str
progress:
  description: Each finished phase with its bytes and seconds.
  returned: always
  type: list
  elements: dict
"""

import os
import shutil

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.quorum.recovery.plugins.module_utils import backup_payload as bp
from ansible_collections.quorum.recovery.plugins.module_utils import datadir_archive as arch
from ansible_collections.quorum.recovery.plugins.module_utils import progress as prog


def main():
    module = AnsibleModule(
        argument_spec=dict(
            folder=dict(type="path", required=True),
            name=dict(type="str", required=True),
            root=dict(type="path", required=True),
            files=dict(type="list", elements="dict", required=True),
            manifest=dict(type="dict", required=True),
            recipients=dict(type="list", elements="str", default=[]),
            age=dict(type="path", default="age"),
            **prog.PROGRESS_OPTIONS
        ),
        supports_check_mode=True,
    )
    p = module.params
    payload = os.path.join(p["folder"], bp.payload_file(p["name"], bool(p["recipients"])))
    manifest_path = os.path.join(p["folder"], p["name"] + ".json")
    result = dict(changed=False, payload=payload, manifest_path=manifest_path, manifest=p["manifest"], progress=[])
    problems = []
    if not bp.NAME_RE.match(p["name"]):
        problems.append("name=%s is not CLUSTER-ENGINE-COUNTER(10 digits)-YYYYmmddTHHMMSSZ" % p["name"])
    files = []
    for item in p["files"]:
        name = item.get("name")
        src = os.path.join(p["root"], name) if isinstance(name, str) and name and ".." not in name.split("/") else None
        if not src or not os.path.isfile(src):
            problems.append("files: %s is not {name: a file below root=%s}" % (item, p["root"]))
        else:
            files.append(dict(item, src=src))
    problems += ["recipients: %r is not an age public key (age1...)" % r for r in p["recipients"]
                 if not bp.AGE_RECIPIENT_RE.match(r)]
    age = shutil.which(p["age"]) if p["recipients"] else None
    if p["recipients"] and not age:
        problems.append("age=%s: no such program here (install age to encrypt backups)" % p["age"])
    if problems:
        module.fail_json(msg="; ".join(problems) + "; nothing was written", **result)
    if os.path.exists(manifest_path):
        try:
            found = bp.read_manifest(manifest_path)
            bp.check_payload(payload, found)
        except bp.PayloadError as exc:
            module.fail_json(msg="%s already exists but does not hold this backup: %s; nothing was written"
                             % (manifest_path, exc), **result)
        result["manifest"] = found
        module.exit_json(**result)
    if module.check_mode:
        result["changed"] = True
        module.exit_json(**result)
    progress = prog.Progress.for_module(module)
    try:
        os.makedirs(p["folder"], mode=0o700, exist_ok=True)
        with arch.locked(p["folder"]):
            for stale in (payload, manifest_path):
                arch.remove_stale_temporaries(stale)
            written = bp.write_backup(p["folder"], p["name"], files, p["manifest"], p["recipients"], age or "age",
                                      progress)
    except (bp.PayloadError, OSError) as exc:
        progress.close()
        result["progress"] = progress.summary()
        module.fail_json(msg="%s: %s; no file under a backup's name was written" % (p["name"], exc), **result)
    progress.close()
    result.update(changed=True, manifest=written, progress=progress.summary())
    module.exit_json(**result)


if __name__ == "__main__":
    main()
