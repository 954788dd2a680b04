#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: datadir_archive
short_description: Archive a data directory with a checksummed manifest, or verify such an archive
version_added: 0.1.0
description:
  - With O(state=present), writes a gzip'd tar of the files of O(path) to O(dest), with a
    C(MANIFEST.json) listing every file's size and sha256 and a C(dest.sha256) file beside it.
    The archive is written under a temporary name, fsync'd and renamed, with mode C(0600).
  - An existing archive is never overwritten; it is verified instead and the module reports no
    change. So a safety archive taken before a recovery stays the one taken BEFORE any change,
    however often the recovery is re-run.
  - With O(state=verified), only checks that O(dest) matches its checksum and every file its
    manifest.
  - Never deletes or changes anything in O(path).
  - Two runs on the same O(dest) folder never work at once (they lock that folder). A run waits
    for an earlier one that is still working, for example an asynchronous run left behind by an
    interrupted playbook, then finds its archive and verifies it. Temporary files that a killed
    run left beside O(dest) (never under the real name) are removed then.
  - Long runs can report progress to O(progress_file) for M(quorum.recovery.progress_wait).
author:
  - quorum.recovery maintainers (@quorum-recovery)
extends_documentation_fragment:
  - quorum.recovery.attributes
  - quorum.recovery.progress
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  idempotent:
    support: full
options:
  path:
    description: The directory to archive. Required with O(state=present).
    type: path
  dest:
    description: The archive file to write or verify.
    type: path
    required: true
  include:
    description: Only these file names (relative to O(path)); all regular files when omitted.
    type: list
    elements: str
  exclude:
    description: File names (or relative paths) to leave out.
    type: list
    elements: str
    default: []
  extra:
    description: Facts recorded in the manifest (recovery id, source host, log position).
    type: dict
    default: {}
  state:
    description: V(present) creates the archive unless it exists; V(verified) only checks it.
    type: str
    choices: [present, verified]
    default: present
  checksum:
    description: The expected sha256 of the archive file (else C(dest.sha256) is used).
    type: str
"""

EXAMPLES = r"""
- name: Safety archive of a member's data directory before any change
  quorum.recovery.datadir_archive:
    path: /var/snap/microk8s/current/var/kubernetes/backend
    dest: /var/backups/quorum-recovery/r20261121/safety-node1.tar.gz
    extra:
      recovery_id: r20261121
      host: node1

- name: Archive in the background, showing progress on the controller
  quorum.recovery.datadir_archive:
    path: /var/snap/microk8s/current/var/kubernetes/backend
    dest: /var/backups/quorum-recovery/r20261121/safety-node1.tar.gz
    progress_file: /var/backups/quorum-recovery/r20261121/progress-safety.json
  async: 21600
  poll: 0
  register: archive_job

- name: Show its progress until it ends
  quorum.recovery.progress_wait:
    jid: "{{ archive_job.ansible_job_id }}"
    progress_file: /var/backups/quorum-recovery/r20261121/progress-safety.json
  register: archive

- name: Verify an archive that arrived on another member
  quorum.recovery.datadir_archive:
    dest: /var/backups/quorum-recovery/r20261121/source.tar.gz
    checksum: "{{ source_archive.archive_sha256 }}"
    state: verified
"""

RETURN = r"""
archive_sha256:
  description: sha256 of the archive file.
  returned: success
  type: str
manifest:
  description: The archive's manifest (files with size and sha256, the O(extra) facts, creation time).
  returned: success
  type: dict
existed:
  description: Whether the archive was already there (then it was verified, not rewritten).
  returned: success
  type: bool
progress:
  description: Each phase of the run (V(wait), V(archive), V(verify)) with the bytes it read and the seconds it took.
  returned: success
  type: list
  elements: dict
  sample: [{"phase": "archive", "bytes": 1288490188, "seconds": 12.4}, {"phase": "verify", "bytes": 301989888, "seconds": 3.1}]
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.quorum.recovery.plugins.module_utils import datadir_archive as arch
from ansible_collections.quorum.recovery.plugins.module_utils import progress as prog
from ansible_collections.quorum.recovery.plugins.module_utils.refused import Refused


def _run(module, progress):
    p = module.params
    dest, path = p["dest"], p["path"]
    if p["state"] == "verified" or os.path.exists(dest):
        try:
            manifest = arch.verify(dest, p["checksum"], progress=progress)
        except arch.ArchiveError as exc:
            raise Refused("archive check failed: %s" % exc)
        return dict(changed=False, existed=True, manifest=manifest, archive_sha256=manifest["archive_sha256"])
    if not os.path.isdir(path):
        raise Refused("path %s is not a directory; nothing was written" % path)
    files = arch.list_files(path, p["include"], p["exclude"])
    if p["include"] is not None:
        missing = sorted(set(p["include"]) - set(files))
        if missing:
            raise Refused("include names files that are not in %s: %s; nothing was written"
                          % (path, ", ".join(missing)))
    if module.check_mode:
        return dict(changed=True, existed=False, manifest={"files": [{"name": f} for f in files]},
                    archive_sha256=None)
    try:
        arch.remove_stale_temporaries(dest)
        manifest = arch.create(path, dest, files, p["extra"], progress=progress)
        manifest = arch.verify(dest, progress=progress)  # read back what was written before calling it done
    except (OSError, arch.ArchiveError) as exc:
        raise Refused("archiving %s to %s failed: %s" % (path, dest, exc))
    return dict(changed=True, existed=False, manifest=manifest, archive_sha256=manifest["archive_sha256"])


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path"),
            dest=dict(type="path", required=True),
            include=dict(type="list", elements="str"),
            exclude=dict(type="list", elements="str", default=[]),
            extra=dict(type="dict", default={}),
            state=dict(type="str", choices=["present", "verified"], default="present"),
            checksum=dict(type="str"),
            **prog.PROGRESS_OPTIONS
        ),
        required_if=[("state", "present", ["path"])],
        supports_check_mode=True,
    )
    folder = os.path.dirname(os.path.abspath(module.params["dest"]))
    progress = prog.Progress.for_module(module)
    try:
        if not module.check_mode and module.params["state"] == "present":
            os.makedirs(folder, mode=0o700, exist_ok=True)
        if os.path.isdir(folder):
            with arch.locked(folder, progress.waiting, min(progress.interval, 1.0)) as waited:
                if waited:
                    progress.waited(waited)
                result = _run(module, progress)
        else:
            result = _run(module, progress)
    except Refused as exc:
        progress.close()
        module.fail_json(msg=str(exc), progress=progress.summary())
    except OSError as exc:
        progress.close()
        module.fail_json(msg="%s: %s" % (module.params["dest"], exc), progress=progress.summary())
    progress.close()
    module.exit_json(progress=progress.summary(), **result)


if __name__ == "__main__":
    main()
