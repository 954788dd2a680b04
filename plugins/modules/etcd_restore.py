#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: etcd_restore
short_description: Restore one etcd member from the recovery's snapshot, its old member directory moved aside
version_added: 0.2.0
description:
  - Runs on every member of the rebuilt cluster, with etcd stopped. Checks the snapshot's sha256 (unpacking it
    first from the archive the winner sent, when it is not there yet), restores it with the real tool
    (C(etcdutl snapshot restore) when O(bin_dir) has it, else C(etcdctl snapshot restore), as etcd 3.4 has
    it) into a new directory inside O(path), reads that directory back (cluster ID, member ID and peer URLs
    must be the ones etcd derives from O(membership) and O(token)), then swaps it in - the member's old
    C(member) directory is renamed to O(aside) inside O(path), never deleted - and syncs the folder.
  - Every member restored from the same snapshot with the same O(membership) and O(token) gets the same new
    cluster ID, so the restore is safe to run on each member, and again after a failure.
  - Idempotent. A member whose C(member) directory already reads as the planned member of the planned
    cluster is left alone (V(changed=false)). Two runs on the same O(path) never work at once.
  - The old directory stays inside O(path) (etcd warns about, and ignores, other names there) because
    O(path) is often a mount point of its own, where a rename to a sibling would turn into a copy.
author:
  - quorum.recovery maintainers (@quorum-recovery)
extends_documentation_fragment:
  - quorum.recovery.attributes
attributes:
  check_mode:
    support: full
    details: Says what it would restore and move aside; runs no tool and writes nothing.
  diff_mode:
    support: none
  idempotent:
    support: full
options:
  path:
    description: The member's data directory (etcd's C(--data-dir)); its C(member) directory is replaced.
    type: path
    required: true
  snapshot:
    description: The snapshot file to restore (made once on the winner by M(quorum.recovery.etcd_replay)).
    type: path
    required: true
  sha256:
    description: The snapshot's sha256, as the winner recorded it; a snapshot that differs is refused.
    type: str
    required: true
  archive:
    description:
      - The archive the winner sent, holding the snapshot under its file name. Unpacked (after its own
        check against O(checksum)) when O(snapshot) is not there yet.
    type: path
  checksum:
    description: The sha256 of O(archive) as the winner made it.
    type: str
  name:
    description: This member's name (etcd's C(--name)); it must be one of O(membership).
    type: str
    required: true
  membership:
    description:
      - Every member of the rebuilt cluster, each a dict with C(name) and C(address) (its peer URL); the
        recovery plan's C(membership). Other keys are ignored.
    type: list
    elements: dict
    required: true
  token:
    description: The new cluster's token (C(--initial-cluster-token)); the same on every member.
    type: str
    required: true
  bin_dir:
    description: The folder holding C(etcdutl) or C(etcdctl).
    type: path
    default: /usr/bin
  bump_revision:
    description:
      - Raise the restored revision by this much and mark the revisions in between compacted
        (C(--bump-revision) with C(--mark-compacted)), so that Kubernetes watchers never see a revision go
        back. Needs etcdutl 3.5.10+ or etcdctl 3.4.27+. V(0) does not bump.
    type: int
    default: 0
  skip_hash_check:
    description:
      - The snapshot is a raw copy of a member's C(member/snap/db), which has no hash trailer
        (C(--skip-hash-check)); O(sha256) is still checked.
    type: bool
    default: false
  aside:
    description: The name, inside O(path), the old C(member) directory is renamed to.
    type: str
    required: true
"""

EXAMPLES = r"""
- name: Restore every member from the snapshot the winner made
  quorum.recovery.etcd_restore:
    path: /var/lib/etcd
    snapshot: /var/backups/quorum-recovery/r1/source.db
    sha256: "{{ source_sha256 }}"
    archive: /var/backups/quorum-recovery/r1/source.tar.gz
    checksum: "{{ archive_sha256 }}"
    name: "{{ inventory_hostname }}"
    membership:
      - {name: etcd1, address: "https://10.0.0.1:2380"}
      - {name: etcd2, address: "https://10.0.0.2:2380"}
    token: quorum-recovery-r1
    aside: member.replaced-r1
"""

RETURN = r"""
member_id:
  description: The member ID etcd gave this member (hex).
  returned: success
  type: str
  sample: 5fdc7ffeaa3af4f9
cluster_id:
  description: The new cluster's ID (hex), the same on every member.
  returned: success
  type: str
  sample: 9bef102e7ff8238a
aside:
  description: Where the member's old C(member) directory went (inside O(path)); null when nothing moved.
  returned: success
  type: str
  sample: /var/lib/etcd/member.replaced-r1
tool:
  description: The restore command line that ran (empty when nothing had to be done).
  returned: success
  type: list
  elements: str
"""

import os
import shutil

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.quorum.recovery.plugins.module_utils import datadir_archive as arch
from ansible_collections.quorum.recovery.plugins.module_utils import etcd_datadir
from ansible_collections.quorum.recovery.plugins.module_utils import etcd_plan
from ansible_collections.quorum.recovery.plugins.module_utils import etcd_scratch
from ansible_collections.quorum.recovery.plugins.module_utils.refused import Refused

WORK = ".quorum-restore"  # inside path: the restore is made here, then renamed into place


def _reads_as(directory, want_member, want_cluster, peers):
    """What the restored (or current) member directory says, and what differs from the plan."""
    if not os.path.isdir(os.path.join(directory, "member")):
        return None, ["no member directory"]
    facts = etcd_datadir.inspect_datadir(directory, "quick")
    found = []
    if facts.get("cluster_id") != want_cluster:
        found.append("cluster ID %s (want %s)" % (facts.get("cluster_id"), want_cluster))
    if facts.get("member_id") != want_member:
        found.append("member ID %s (want %s)" % (facts.get("member_id"), want_member))
    # the log of a just-restored member names no member (names are published at the first start)
    have = sorted(v["address"] for v in (facts.get("summary") or {}).get("voters") or [])
    if have != sorted(a for _n, a in peers):
        found.append("peer URLs %s (want %s)" % (", ".join(have), ", ".join(sorted(a for _n, a in peers))))
    if facts.get("verdict") == "unusable":
        found.append("verdict unusable")
    return facts, found


def _snapshot(module):
    p = module.params
    snapshot = p["snapshot"]
    if not os.path.exists(snapshot):
        if not p["archive"]:
            raise Refused("snapshot %s does not exist (and no archive to unpack it from); nothing was changed"
                          % snapshot)
        if module.check_mode:
            return snapshot
        try:
            manifest = arch.verify(p["archive"], p["checksum"])
        except arch.ArchiveError as exc:
            raise Refused("the winner's archive failed its check on arrival: %s; nothing was changed" % exc)
        names = [e["name"] for e in manifest["files"]]
        if os.path.basename(snapshot) not in names:
            raise Refused("archive %s holds %s, not %s; nothing was changed"
                          % (p["archive"], ", ".join(names), os.path.basename(snapshot)))
        unpacked = "%s.incoming-%d" % (snapshot, os.getpid())
        os.makedirs(unpacked, mode=0o700)
        try:
            arch.verify(p["archive"], p["checksum"], extract_to=unpacked)
            os.rename(os.path.join(unpacked, os.path.basename(snapshot)), snapshot)
        finally:
            shutil.rmtree(unpacked, ignore_errors=True)  # our own unpacked copy
    digest = arch.sha256_file(snapshot)
    if digest != p["sha256"]:
        raise Refused("snapshot %s has sha256 %s, not %s as the winner made it; nothing was changed"
                      % (snapshot, digest, p["sha256"]))
    return snapshot


def _run_restore(module, snapshot, work, own, peers):
    p = module.params
    extra = (["--bump-revision", str(p["bump_revision"]), "--mark-compacted"] if p["bump_revision"] else []) \
        + (["--skip-hash-check"] if p["skip_hash_check"] else [])
    try:
        return etcd_scratch.restore_snapshot(p["bin_dir"], snapshot, work, own["name"], peers, p["token"],
                                             own["address"], extra)
    except RuntimeError as exc:
        raise Refused("%s; the member's own directory is untouched" % exc)


def _restore(module, path, own, peers, want_member, want_cluster):
    p = module.params
    member_dir = os.path.join(path, "member")
    _facts, differs = _reads_as(path, want_member, want_cluster, peers)
    if not differs:
        return dict(changed=False, aside=None, tool=[])
    aside = os.path.join(path, p["aside"])
    if module.check_mode:
        _snapshot(module)
        return dict(changed=True, aside=aside if os.path.exists(member_dir) else None, tool=[])
    snapshot = _snapshot(module)
    work = os.path.join(path, WORK)
    if os.path.lexists(work):
        shutil.rmtree(work)  # our own unfinished restore of an earlier run, never member data
    argv = _run_restore(module, snapshot, work, own, peers)
    _facts, differs = _reads_as(work, want_member, want_cluster, peers)
    if differs:
        raise Refused("the restored directory %s does not read as planned: %s; the member's own directory is "
                      "untouched" % (work, "; ".join(differs)))
    moved = None
    if os.path.lexists(member_dir):
        moved = arch.unused_path(aside)
        os.rename(member_dir, moved)
    os.rename(os.path.join(work, "member"), member_dir)
    os.rmdir(work)
    os.chmod(path, 0o700)
    arch.fsync_dir(path)
    return dict(changed=True, aside=moved, tool=argv)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            snapshot=dict(type="path", required=True),
            sha256=dict(type="str", required=True),
            archive=dict(type="path"),
            checksum=dict(type="str"),
            name=dict(type="str", required=True),
            membership=dict(type="list", elements="dict", required=True),
            token=dict(type="str", required=True, no_log=False),
            bin_dir=dict(type="path", default="/usr/bin"),
            bump_revision=dict(type="int", default=0),
            skip_hash_check=dict(type="bool", default=False),
            aside=dict(type="str", required=True),
        ),
        required_together=[("archive", "checksum")],
        supports_check_mode=True,
    )
    p = module.params
    path = p["path"].rstrip("/") or "/"
    for entry in p["membership"]:
        if not entry.get("name") or not entry.get("address"):
            module.fail_json(msg="membership: every member needs a name and an address (peer URL), got %s"
                             % entry)
    peers = [(e["name"], e["address"]) for e in p["membership"]]
    own = next((e for e in p["membership"] if e["name"] == p["name"]), None)
    if own is None:
        module.fail_json(msg="name=%s is not in the membership (%s)" % (p["name"], ", ".join(n for n, _a in peers)))
    if "/" in p["aside"] or p["aside"] in ("", ".", "..", "member", WORK):
        module.fail_json(msg="aside=%s: a plain name other than member, for a directory inside path" % p["aside"])
    if p["bump_revision"] < 0:
        module.fail_json(msg="bump_revision=%d: a whole number of revisions, 0 or more" % p["bump_revision"])
    if not os.path.isdir(path):
        module.fail_json(msg="path %s is not a directory" % path)
    if etcd_datadir.is_running(path)["running"]:
        module.fail_json(msg="etcd is running on %s; stop it first; nothing was changed" % path)
    ids = {n: etcd_plan.member_id([a], p["token"]) for n, a in peers}
    want_cluster = etcd_plan.cluster_id(list(ids.values()))
    try:
        with arch.locked(path):
            result = _restore(module, path, own, peers, ids[own["name"]], want_cluster)
    except (Refused, OSError, arch.ArchiveError) as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(member_id=ids[own["name"]], cluster_id=want_cluster, **result)


if __name__ == "__main__":
    main()
