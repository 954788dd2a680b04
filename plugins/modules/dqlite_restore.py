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
  - The member must be stopped. A member whose data directory was lost whole gets it again (mode
    C(0700); its parent must exist), and its C(info.yaml) from the plan.
  - With O(stage=backup) the archive is a backup's raft files (made on the controller from a
    backup, docs/backup-format.md) put on the member that rebuilds the cluster from it, BEFORE its
    reconfigure; the directory must then end at O(expected_last_index) with the backup's last
    term. When it already holds the reconfigure to O(membership) (at O(expected_last_index) + 1),
    the backup was put there by an earlier run and nothing changes.
  - Two runs on the same O(path) never work at once (they lock that folder). A run waits for an
    earlier one that is still working (an asynchronous run left behind by an interrupted
    playbook), then finds the directory restored and changes nothing. Unpacked copies that a
    killed run left beside O(path) (C(path.incoming-PID)) are removed then.
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
    description:
      - File names that belong to this node and are kept (C(info.yaml); for k8s-snap also the TLS pair).
      - The member's own C(metadata1) and C(metadata2) (its term and vote) are always kept when they
        are sound, whatever this says.
    type: list
    elements: str
    default: [info.yaml]
  membership:
    description:
      - The new membership, each with C(id), C(address) and C(role), as the plan gives it. The
        module writes C(cluster.yaml) from it, and C(info.yaml) from this member's entry when that
        differs from the node-local one (a member whose address changed), in Python, as the
        go-dqlite app writes them.
    type: list
    elements: dict
    required: true
  member_id:
    description: This member's ID in O(membership).
    type: int
    required: true
  expected_last_index:
    description:
      - The last index the winner's log has after its reconfigure. After the restore the module
        reads the directory again and fails, naming what differs, unless it is healthy, ends at this
        index with the reconfigure's term-1 entry and holds the planned membership.
    type: int
    required: true
  aside_dir:
    description: Where the replaced files go. Must be on the same filesystem as O(path) to be a rename.
    type: path
    required: true
  identity:
    description:
      - Where the product keeps the member's identity, as in M(quorum.recovery.dqlite_info).
        V(app) writes the go-dqlite app's C(cluster.yaml) (and C(info.yaml) for a member that moved).
      - V(lxd-local-db) writes neither - LXD keeps its identity and member list in C(local.db)
        beside O(path), outside the directory, so never moved or replaced. Instead its table
        C(raft_nodes) is set to O(membership) (what LXD 6.2+ ships as C(raft_nodes.yaml)) and, for
        a member whose address changed, the address keys that named the old one; the file as it
        was is kept as C(local.db.before) in O(aside_dir).
      - With V(lxd-local-db) the member also gets C(patch.global.sql) beside C(local.db) - every
        member's address in the global C(nodes) table, as C(lxd cluster edit) leaves it on the
        winner and LXD 6.2+ writes it on every member it restores. LXD runs it (then removes it)
        when its daemon opens the global database, in the transaction where it checks that a row
        has its own address; on the winner alone, a moved member that reached a quorum first
        exited on that check. A different file already there is moved into O(aside_dir) first.
    type: str
    choices: [app, lxd-local-db]
    default: app
  stage:
    description:
      - V(restored) (the other members, from the winner's archive after its reconfigure) checks
        that the directory ends at O(expected_last_index) with the reconfigure's term-1 entry and
        holds O(membership).
      - V(backup) (the winner, from a backup's raft files before its reconfigure) checks that it
        ends at O(expected_last_index) and is healthy, and recognises a directory the reconfigure
        already followed.
    type: str
    choices: [restored, backup]
    default: restored
"""

EXAMPLES = r"""
- name: Restore a member from the winner's archive
  quorum.recovery.dqlite_restore:
    path: /var/snap/microk8s/current/var/kubernetes/backend
    archive: /var/backups/quorum-recovery/r1/source.tar.gz
    checksum: "{{ source.archive_sha256 }}"
    node_local: [info.yaml, cluster.crt, cluster.key]
    membership: "{{ plan.membership }}"
    member_id: 3297041220608546238
    expected_last_index: 1510
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
progress:
  description: >-
    Each phase of the run (V(wait) for an earlier run, V(verify) the archive, V(compare) the current files, V(extract),
    V(check) the result) with the bytes it read and the seconds it took.
  returned: success
  type: list
  elements: dict
  sample: [{"phase": "verify", "bytes": 301989888, "seconds": 3.1}, {"phase": "extract", "bytes": 301989888, "seconds": 9.8}]
created:
  description: The data directory, when it was lost whole and made again.
  returned: when it was made
  type: str
already_reconfigured:
  description: With O(stage=backup), true when the directory already held the reconfigure that follows the backup.
  returned: when it did
  type: bool
local_db:
  description: With O(identity=lxd-local-db), what was set in LXD's C(local.db) (C(raft_nodes), C(config)).
  returned: when it changed
  type: list
  elements: str
local_db_kept:
  description: Where LXD's C(local.db) as it was before is kept.
  returned: when it changed
  type: str
global_patch:
  description: With O(identity=lxd-local-db), the C(patch.global.sql) written (or, in check mode, to be written).
  returned: when it changed
  type: str
global_patch_kept:
  description: Where a C(patch.global.sql) with other statements that was already there went.
  returned: when there was one
  type: str
"""

import os
import re
import shutil

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.quorum.recovery.plugins.module_utils import datadir_archive as arch
from ansible_collections.quorum.recovery.plugins.module_utils import dqlite_datadir
from ansible_collections.quorum.recovery.plugins.module_utils import dqlite_format
from ansible_collections.quorum.recovery.plugins.module_utils import dqlite_plan
from ansible_collections.quorum.recovery.plugins.module_utils import lxd_localdb
from ansible_collections.quorum.recovery.plugins.module_utils import progress as prog
from ansible_collections.quorum.recovery.plugins.module_utils.refused import Refused


def _data_dir(module, path):
    """The member's data directory; one lost whole is made again (its parent must exist: a parent
    that is missing too says the path is wrong, not that the data is gone). Returns whether it
    was (or, in check mode, would be) made."""
    if os.path.isdir(path):
        return False
    parent = os.path.dirname(path)
    if os.path.lexists(path) or not os.path.isdir(parent):
        module.fail_json(msg="path %s is not a directory%s; nothing was changed" % (
            path, "" if os.path.lexists(path) else " and its parent %s does not exist either (is the data "
                                                   "directory right?)" % parent))
    if not module.check_mode:
        os.mkdir(path, 0o700)
        arch.fsync_dir(parent)
    return True


def _current(path, node_local, progress, phase):
    names = [name for name in arch.list_files(path) if name not in node_local]
    progress.phase(phase, sum(os.path.getsize(os.path.join(path, name)) for name in names))
    return {name: arch.sha256_file(os.path.join(path, name), progress) for name in names}


def _remove_stale_incoming(path):
    """Unpacked copies of the archive (path.incoming-PID) whose run was killed; the archive
    itself is kept, so they hold nothing that is not there. Call only while holding the lock."""
    folder, base = os.path.split(path)
    pattern = re.compile(re.escape(base) + r"\.incoming-\d+$")
    for name in sorted(os.listdir(folder)):
        if pattern.match(name) and os.path.isdir(os.path.join(folder, name)):
            shutil.rmtree(os.path.join(folder, name))


def _own_metadata(path):
    """The member's metadata1/metadata2 (its own term and vote), kept like node-local files when
    they are sound: raft must never forget a term or a vote, and the go-dqlite app bootstraps a
    node with the bootstrap ID that has none (seen here: a restored first node refused to start,
    raft_bootstrap() failing on the log it was given). Unsound ones go aside with the rest."""
    versions = {}
    for name in ("metadata1", "metadata2"):
        try:
            with open(os.path.join(path, name), "rb") as handle:
                versions[name] = dqlite_format.parse_metadata(handle.read())["version"]
        except FileNotFoundError:
            continue
        except (OSError, dqlite_format.FormatError):
            return set()
    if len(set(versions.values())) != len(versions):
        return set()  # both at one version: raft refuses such a pair
    return set(versions)


def _info_to_write(path, content):
    """Whether info.yaml must be rewritten: only when it names another ID or address than the
    plan (a member whose address changed); its role and layout are the app's own business."""
    return dqlite_plan.node_differs(os.path.join(path, "info.yaml"), content)


def _check(path, p):
    """The directory as the plan wants it after the restore, or the reason it is not."""
    facts = dqlite_datadir.inspect_datadir(path, "quick", identity=p["identity"])
    log = facts.get("log") or {}
    servers = ((facts.get("membership") or {}).get("authoritative") or {}).get("servers") or []
    want = sorted(int(s["id"]) for s in p["membership"])
    found = []
    if facts["verdict"] != "healthy":
        found.append("verdict %s" % facts["verdict"])
    if p["stage"] == "backup":  # before the reconfigure: the backup's own position and membership
        if log.get("last_index") != p["expected_last_index"]:
            found.append("last index %s (want %d)" % (log.get("last_index"), p["expected_last_index"]))
        return facts, found
    if (log.get("last_term"), log.get("last_index")) != (1, p["expected_last_index"]):
        found.append("last term/index %s/%s (want 1/%d)" % (log.get("last_term"), log.get("last_index"),
                                                            p["expected_last_index"]))
    if sorted(s["id"] for s in servers) != want:
        found.append("membership %s (want %s)" % (sorted(s["id"] for s in servers), want))
    return facts, found


def _restore(module, path, node_local, progress):
    p = module.params
    try:
        manifest = arch.verify(p["archive"], p["checksum"], progress=progress)
    except arch.ArchiveError as exc:
        raise Refused("the winner's archive failed its check on arrival: %s; nothing was changed" % exc)
    wanted = {e["name"]: e["sha256"] for e in manifest["files"] if e["name"] not in node_local}
    app = p["identity"] == "app"
    if app:
        wanted["cluster.yaml"] = arch.hashlib.sha256(p["cluster_yaml"].encode()).hexdigest()
    info = app and _info_to_write(path, p["info_yaml"])
    current = _current(path, node_local, progress, "compare")
    if current == wanted:
        if info and not module.check_mode:
            arch.write_atomic(os.path.join(path, "info.yaml"), p["info_yaml"].encode(), 0o600)
        return dict(changed=bool(info), moved_aside=[], restored=["info.yaml"] if info else [], aside=None)
    if module.check_mode:
        return dict(changed=True, moved_aside=sorted(current), restored=sorted(wanted), aside=p["aside_dir"])
    _remove_stale_incoming(path)
    incoming = "%s.incoming-%d" % (path, os.getpid())
    os.makedirs(incoming, mode=0o700)
    try:
        arch.verify(p["archive"], p["checksum"], extract_to=incoming, progress=progress)
        aside = arch.unused_path(p["aside_dir"], "%s/again-%d")
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
        if app:
            arch.write_atomic(os.path.join(path, "cluster.yaml"), p["cluster_yaml"].encode(), 0o600)
        if info:  # node-local, kept above; its address changes with the member's
            arch.write_atomic(os.path.join(path, "info.yaml"), p["info_yaml"].encode(), 0o600)
    finally:
        shutil.rmtree(incoming, ignore_errors=True)  # only our own unpacked copy
    after = _current(path, node_local, progress, "check")
    if after != wanted:
        bad = sorted(n for n in set(after) | set(wanted) if after.get(n) != wanted.get(n))
        raise Refused("after the restore %s does not match the winner's archive: %s; the replaced files are "
                      "in %s" % (path, ", ".join(bad), aside), aside=aside)
    return dict(changed=True, moved_aside=moved, restored=sorted(restored), aside=aside)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            archive=dict(type="path", required=True),
            checksum=dict(type="str", required=True),
            node_local=dict(type="list", elements="str", default=["info.yaml"]),
            membership=dict(type="list", elements="dict", required=True),
            member_id=dict(type="int", required=True),
            expected_last_index=dict(type="int", required=True),
            aside_dir=dict(type="path", required=True),
            identity=dict(type="str", choices=["app", "lxd-local-db"], default="app"),
            stage=dict(type="str", choices=["restored", "backup"], default="restored"),
            **prog.PROGRESS_OPTIONS
        ),
        supports_check_mode=True,
    )
    p = module.params
    path = p["path"].rstrip("/")
    node_local = set(p["node_local"]) | _own_metadata(path)
    own = [s for s in p["membership"] if int(s["id"]) == p["member_id"]]
    if not own:
        module.fail_json(msg="member_id=%d is not in the membership %s" % (p["member_id"], p["membership"]))
    p["cluster_yaml"], p["info_yaml"] = dqlite_plan.node_yaml(p["membership"]), dqlite_plan.info_yaml(own[0])
    if p["identity"] == "lxd-local-db":
        try:  # before anything changes: an address the patch cannot carry
            lxd_localdb.global_patch(p["membership"])
        except ValueError as exc:
            module.fail_json(msg="membership: %s; nothing was changed" % exc)
    created = _data_dir(module, path)
    if created and module.check_mode:
        module.exit_json(changed=True, created=path, moved_aside=[], restored=[], aside=None, progress=[])
    if dqlite_datadir.is_running(path)["running"]:
        module.fail_json(msg="dqlite is running on %s; stop it first" % path)
    if p["stage"] == "backup":
        facts = dqlite_datadir.inspect_datadir(path, "quick", identity=p["identity"])
        if dqlite_plan.reconfigured(facts, p["membership"], p["expected_last_index"] + 1):
            module.exit_json(changed=False, moved_aside=[], restored=[], aside=None, already_reconfigured=True,
                             progress=[])
    progress = prog.Progress.for_module(module)
    try:
        with arch.locked(path, progress.waiting, min(progress.interval, 1.0)) as waited:
            if waited:
                progress.waited(waited)
            result = _restore(module, path, node_local, progress)
    except Refused as exc:
        progress.close()
        module.fail_json(msg=str(exc), progress=progress.summary(), **exc.details)
    progress.close()
    if p["identity"] == "lxd-local-db":
        try:
            # the winner's `lxd cluster edit` left patch.global.sql (the addresses in the global
            # nodes table) on the winner alone; every member gets it, so the address is right
            # whichever member's daemon opens the global database first (lxd_localdb.global_patch)
            if lxd_localdb.global_patch_needed(path, p["membership"]):
                result["changed"] = True
                result["global_patch"] = lxd_localdb.global_patch_path(path)
                if not module.check_mode:
                    kept = lxd_localdb.write_global_patch(path, p["membership"], result.get("aside") or p["aside_dir"])
                    if kept:
                        result["global_patch_kept"] = kept
            local = lxd_localdb.changes_needed(path, p["membership"], p["member_id"])
            if local:
                result["changed"] = True
                result["local_db"] = sorted(local)
                if not module.check_mode:
                    result["local_db_kept"] = lxd_localdb.apply(path, local, result.get("aside") or p["aside_dir"])
        except Exception as exc:  # sqlite3.Error, OSError, KeyError
            module.fail_json(msg="cannot bring LXD's %s in line with the membership: %s"
                             % (dqlite_datadir.lxd_local_db_path(path), exc), **result)
    if not module.check_mode:
        facts, found = _check(path, p)
        if found:
            module.fail_json(msg="%s does not match the winner after the restore: %s; the replaced files are in %s"
                             % (path, ", ".join(found), result.get("aside") or p["aside_dir"]),
                             progress=progress.summary(), summary=facts.get("summary"), **result)
    if created:
        result.update(changed=True, created=path)
    module.exit_json(progress=progress.summary(), **result)


if __name__ == "__main__":
    main()
