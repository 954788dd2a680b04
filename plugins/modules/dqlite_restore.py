#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: dqlite_restore
short_description: Replace a stopped dqlite member's raft files with the winner's, keeping node-local files
version_added: 0.1.0
description:
  - Verifies the winner's archive (the file's sha256 and every file against the manifest), moves
    every file of the member's data directory except the node-local ones aside into
    O(aside_dir) (never deleting; an earlier, interrupted attempt's files are never overwritten),
    unpacks the winner's raft files, and writes the new C(cluster.yaml).
  - Idempotent. When the directory already holds exactly the archive's files (same names and
    sha256) and the wanted C(cluster.yaml), nothing changes.
  - The member must be stopped.
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
    description: The member's raft data directory.
    type: path
    required: true
  archive:
    description: The winner's archive (from M(quorum.recovery.datadir_archive)) on this member.
    type: path
    required: true
  checksum:
    description: The sha256 the archive had on the winner.
    type: str
    required: true
  node_local:
    description: File names that belong to this node and are kept (C(info.yaml); for k8s-snap also the TLS pair).
    type: list
    elements: str
    default: [info.yaml]
  cluster_yaml:
    description: The content of the new C(cluster.yaml).
    type: str
    required: true
  aside_dir:
    description: Where the replaced files go. Must be on the same filesystem as O(path) to be a rename.
    type: path
    required: true
"""

EXAMPLES = r"""
- name: Restore a member from the winner's archive
  quorum.recovery.dqlite_restore:
    path: /var/snap/microk8s/current/var/kubernetes/backend
    archive: /var/backups/quorum-recovery/r1/source.tar.gz
    checksum: "{{ source.archive_sha256 }}"
    node_local: [info.yaml, cluster.crt, cluster.key]
    cluster_yaml: "{{ new_cluster_yaml }}"
    aside_dir: /var/snap/microk8s/current/var/kubernetes/backend.replaced-r1
"""

RETURN = r"""
moved_aside:
  description: Files moved from the data directory into RV(aside), by name.
  returned: success
  type: list
  elements: str
aside:
  description: The folder that holds the replaced files.
  returned: success
  type: str
restored:
  description: Files unpacked from the archive.
  returned: success
  type: list
  elements: str
"""

import os
import shutil

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.quorum.recovery.plugins.module_utils import datadir_archive as arch
from ansible_collections.quorum.recovery.plugins.module_utils import dqlite_datadir


def _current(path, node_local):
    return {name: arch.sha256_file(os.path.join(path, name))
            for name in arch.list_files(path) if name not in node_local}


def _fresh_dir(base):
    if not os.path.exists(base):
        return base
    n = 2
    while os.path.exists("%s/again-%d" % (base, n)):
        n += 1
    return "%s/again-%d" % (base, n)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            archive=dict(type="path", required=True),
            checksum=dict(type="str", required=True),
            node_local=dict(type="list", elements="str", default=["info.yaml"]),
            cluster_yaml=dict(type="str", required=True),
            aside_dir=dict(type="path", required=True),
        ),
        supports_check_mode=True,
    )
    p = module.params
    path, node_local = p["path"].rstrip("/"), set(p["node_local"])
    if not os.path.isdir(path):
        module.fail_json(msg="path %s is not a directory" % path)
    if dqlite_datadir.is_running(path)["running"]:
        module.fail_json(msg="dqlite is running on %s; stop it first" % path)
    try:
        manifest = arch.verify(p["archive"], p["checksum"])
    except arch.ArchiveError as exc:
        module.fail_json(msg="the winner's archive failed its check on arrival: %s; nothing was changed" % exc)
    wanted = {e["name"]: e["sha256"] for e in manifest["files"] if e["name"] not in node_local}
    wanted["cluster.yaml"] = arch.hashlib.sha256(p["cluster_yaml"].encode()).hexdigest()
    current = _current(path, node_local)
    if current == wanted:
        module.exit_json(changed=False, moved_aside=[], restored=[], aside=None)
    if module.check_mode:
        module.exit_json(changed=True, moved_aside=sorted(current), restored=sorted(wanted), aside=p["aside_dir"])
    incoming = "%s.incoming-%d" % (path, os.getpid())
    os.makedirs(incoming, mode=0o700)
    try:
        arch.verify(p["archive"], p["checksum"], extract_to=incoming)
        aside = _fresh_dir(p["aside_dir"])
        os.makedirs(aside, mode=0o700)
        moved = []
        for name in sorted(os.listdir(path)):
            if name in node_local:
                continue
            shutil.move(os.path.join(path, name), os.path.join(aside, name))  # a rename on one filesystem
            moved.append(name)
        restored = []
        for name in arch.list_files(incoming):
            if name in node_local or name == arch.MANIFEST:
                continue
            target = os.path.join(path, name)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.rename(os.path.join(incoming, name), target)
            restored.append(name)
        arch.write_atomic(os.path.join(path, "cluster.yaml"), p["cluster_yaml"].encode(), 0o600)
    finally:
        shutil.rmtree(incoming, ignore_errors=True)  # only our own unpacked copy
    after = _current(path, node_local)
    if after != wanted:
        bad = sorted(n for n in set(after) | set(wanted) if after.get(n) != wanted.get(n))
        module.fail_json(msg="after the restore %s does not match the winner's archive: %s; the replaced files are "
                         "in %s" % (path, ", ".join(bad), aside), aside=aside)
    module.exit_json(changed=True, moved_aside=moved, restored=sorted(restored), aside=aside)


if __name__ == "__main__":
    main()
