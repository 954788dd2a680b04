#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: dqlite_info
short_description: Read a dqlite data directory offline, verify it, and name what is broken
version_added: 0.1.0
description:
  - Reads one member's dqlite data directory exactly as raft's loader does, without starting
    or running any dqlite tool (each of them modifies the directory), and reports its identity,
    cached and authoritative membership, metadata, snapshots, segments, the index and TERM of
    its last log entry, whether dqlite is running on it, every problem found, and a verdict
    V(healthy), V(repairable) or V(unusable).
  - Every problem names the file, the index range, what dqlite itself would do at start, what
    data would be lost, and the remedy.
  - Strictly read-only. M(quorum.recovery.dqlite_repair) carries out the repair actions it proposes.
  - On a member where dqlite is stopped, waits while M(quorum.recovery.dqlite_restore) or
    M(quorum.recovery.dqlite_repair) works on O(path) (one left working by an interrupted playbook
    holds a lock on the folder), so it never reads a directory half restored or half repaired.
author:
  - quorum.recovery maintainers (@quorum-recovery)
extends_documentation_fragment:
  - quorum.recovery.attributes
attributes:
  check_mode:
    support: full
    details: Changes nothing in any mode, so check mode runs the same inspection.
  diff_mode:
    support: none
  idempotent:
    support: full
options:
  path:
    description:
      - The member's raft data directory, the one holding C(metadata1), segments and snapshots
        (for the go-dqlite app layout, C(<dir>/<db address>)).
    type: path
    required: true
  depth:
    description:
      - V(full) verifies every batch checksum and decodes every LZ4 snapshot frame.
      - V(quick) verifies headers, every batch header checksum, the last batch of each segment,
        metadata and snapshot frame structure; for large fleets.
    type: str
    choices: [quick, full]
    default: full
  lz4_engine:
    description:
      - What checks the contents of LZ4-compressed snapshots at O(depth=full) (frame and block
        checksums, block structure, content size, content checksum). The frame's structure is
        always walked by the module itself.
      - V(auto) uses the first the member has of V(library) (the Python C(lz4.frame) binding,
        Debian/Ubuntu package C(python3-lz4)), V(tool) (the C(lz4) command, run as C(lz4 -t),
        which only reads), and V(python) (this collection's standard-library decoder, about
        10 MiB/s of snapshot content).
      - When a C engine rejects a frame, the standard-library decoder runs too, to name the block
        and offset.
      - Naming an engine the member lacks fails before anything is read.
    type: str
    choices: [auto, library, tool, python]
    default: auto
  auto_recovery:
    description:
      - Whether the node's raft retries a corrupt load once after renaming the corrupt LAST
        closed segment, or a corrupt open segment and every open segment after it, to
        C(corrupt-<ns>-<name>). On by default in raft 0.14 and later (Debian's libraft 0.15
        included, measured) and in dqlite's in-tree raft; V(false) predicts raft older than 0.14
        or a node started with C(dqlite_node_set_auto_recovery(false)), which refuses instead.
    type: bool
    default: true
  new_address:
    description:
      - The dqlite address (C(host:port)) this member is to be started with when its host's
        address changed. Checked like C(info.yaml)'s address and reported in RV(member.new_address_local).
    type: str
  identity:
    description:
      - Where the member's own ID and address are kept. V(app) is the go-dqlite app's C(info.yaml)
        and C(cluster.yaml) in O(path) (MicroK8s, k8s-snap, microcluster).
      - V(lxd-local-db) is LXD's node-local C(database/local.db) beside O(path) (C(database/global)),
        read opened immutable (table C(raft_nodes) and the key C(cluster.https_address)); the
        result then also carries RV(member.product_hint), LXD's own idea of the member's position.
    type: str
    choices: [app, lxd-local-db]
    default: app
"""

EXAMPLES = r"""
- name: Inspect the member's dqlite data directory (read-only)
  quorum.recovery.dqlite_info:
    path: /var/snap/microk8s/current/var/kubernetes/backend
  register: dqlite

- name: Show the verdict and the last entry
  ansible.builtin.debug:
    msg: "{{ dqlite.member.verdict }} at term {{ dqlite.member.log.last_term }} index {{ dqlite.member.log.last_index }}"

- name: Carry out the repairs the inspection proposes, keeping the originals
  quorum.recovery.dqlite_repair:
    path: /var/snap/microk8s/current/var/kubernetes/backend
    repairs: "{{ dqlite.member.problems | map(attribute='action') | select | rejectattr('write', 'defined') | list }}"
    quarantine_dir: /var/snap/microk8s/current/var/kubernetes/backend.quarantine/manual-1
  when: dqlite.member.verdict == 'repairable'
"""

RETURN = r"""
member:
  description: What the inspection found.
  returned: always
  type: dict
  contains:
    summary:
      description:
        - The engine-neutral summary the recovery plan reads (the same fields from M(quorum.recovery.dqlite_info)
          and M(quorum.recovery.etcd_info); docs/member_summary.md says what each means).
        - C(engine), C(path), C(exists), C(cluster_key) (etcd's cluster ID; dqlite has none), C(member_id),
          C(address) and C(address_source), C(address_local), C(last_term), C(last_index), C(first_index),
          C(snapshot_index), C(last_entry_sha256), C(current_term) (the term the member voted in; above every
          log term after a lone campaign), C(commit) (etcd), C(tie_break) (compared after term and index), C(terms)
          (where each term of the log begins), C(voters) (C(id), C(address), C(role)), C(verdict), C(running),
          C(after_repair) (where the log ends once the proposed repairs are made, with C(repairs)), and
          C(problems) (C(severity), C(file), C(message), C(range), C(engine_would), C(data_lost), C(remedy), C(repair)).
      type: dict
      sample: {"engine": "dqlite", "member_id": 3297041220608546238, "last_term": 2, "last_index": 4120, "verdict": "healthy"}
    verdict:
      description: V(healthy), V(repairable) (one reviewed local step fixes it) or V(unusable).
      type: str
      sample: healthy
    log:
      description: Snapshot index/term, first and last index, and the TERM of the last entry.
      type: dict
      sample: {"first_index": 1, "last_index": 1505, "last_term": 1, "snapshot_index": 1024, "snapshot_term": 1}
    product_hint:
      description:
        - With O(identity=lxd-local-db), what LXD itself calls this member's position (the "Latest
          dqlite segment ID" of C(lxd cluster edit)) - the end index of the newest CLOSED segment,
          blind to open segments and terms. Shown beside the election's numbers; never elected on.
      type: dict
      sample: {"name": "LXD latest segment", "last_index": 23}
    identity:
      description: This node's ID, address and role from C(info.yaml) (or LXD's C(local.db)).
      type: dict
      sample: {"id": 3297041220608546238, "address": "10.0.0.1:9001", "role": "voter"}
    cluster_yaml:
      description: The cached membership in C(cluster.yaml) (not authoritative).
      type: list
      elements: dict
    membership:
      description: The authoritative membership (newest CHANGE entry or snapshot configuration) and where the cached files disagree.
      type: dict
    metadata:
      description: Both metadata files and the current one (version, term, voted_for).
      type: dict
    lz4_engine:
      description: What checked snapshot contents (V(library), V(tool) or V(python)); null at V(quick) depth.
      type: str
      sample: library
    snapshots:
      description:
        - Every snapshot with term, index, timestamp, size, configuration and data check.
        - For an LZ4 frame, C(data.checked_by) says which engine checked its contents
          (V(structure only) at V(quick) depth).
      type: list
      elements: dict
    segments:
      description: Every segment with its index range, batches, entries, last term and first error.
      type: list
      elements: dict
    problems:
      description:
        - Each problem with severity (V(error), V(warning), V(info)), file, index_range, message,
          dqlite_would, data_lost, remedy and action.
        - The action is what one reviewed step would do, in the shape
          M(quorum.recovery.dqlite_repair) takes in its O(quorum.recovery.dqlite_repair#module:repairs);
          C(quarantine) lists files to move aside, C(truncate) names a file and the length to cut it to,
          C(write) names a yaml file the recovery writes from its plan; null when only a rebuild from
          another member helps.
      type: list
      elements: dict
      sample:
        - severity: error
          file: "0000000000003966-0000000000004018"
          index_range: [3966, 4018]
          message: "closed segment: header checksum mismatch in batch 1 at byte 8"
          dqlite_would: "rename 0000000000003966-0000000000004018 to corrupt-<ns>-<name> (auto-recovery), then start with last index 3965"
          data_lost: "entries 3966-4018 of this segment"
          remedy: "quarantine it if no other member is behind index 3966"
          action:
            quarantine: ["0000000000003966-0000000000004018"]
    prediction:
      description:
        - A replay of what dqlite does to this directory at start, checked against real dqlite
          (docs/dqlite_info.md has the measured table).
        - Its outcome is V(starts), V(refuses) (exits with raft's or go-dqlite's message),
          V(crashes) (dies without a useful message) or V(hangs) (spins for ever, as raft does on
          a truncated LZ4 snapshot).
        - When it starts, C(last_index) is the last index it keeps; C(removed),
          C(renamed_to_corrupt), C(truncated) (file to byte offset) and C(closed_as) (open segment
          to the closed name it gets) are the changes start-up makes to the directory;
          C(attempts) is 2 when raft's auto-recovery retried the load.
      type: dict
      sample: {"starts": true, "outcome": "starts", "reason": null, "first_failure": null, "last_index": 4775,
               "attempts": 1, "removed": ["open-3"], "renamed_to_corrupt": [], "truncated": {},
               "closed_as": {"open-2": "0000000000004437-0000000000004775"}}
    running:
      description: Whether a process holds the directory's files open, and the evidence.
      type: dict
    address_local:
      description:
        - Whether this host holds the address in C(info.yaml) (checked by binding a socket to it on
          port 0, then closing it); V(false) when the host's address changed since the node last
          ran, null when it cannot tell (no C(info.yaml), a name that does not resolve).
      type: bool
      sample: true
    new_address_local:
      description: Whether this host holds O(new_address) (same check as RV(member.address_local)).
      type: bool
      returned: when O(new_address) is given
      sample: true
"""

import contextlib
import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.quorum.recovery.plugins.module_utils import dqlite_datadir
from ansible_collections.quorum.recovery.plugins.module_utils import datadir_archive as arch


@contextlib.contextmanager
def _settled(path):
    """Wait until no restore or repair of this collection works on `path` (one left working by
    an interrupted playbook holds the folder's lock), so the directory is never read half
    restored; hold the lock shared while reading. A member where dqlite runs is read as it is:
    a restore never runs there, and the engine's own locks must not make this wait."""
    if dqlite_datadir.is_running(path)["running"]:
        yield
        return
    with arch.locked(path, shared=True):
        yield


def _inspect(module, path):
    facts = dqlite_datadir.inspect_datadir(path, module.params["depth"], module.params["auto_recovery"],
                                           module.params["lz4_engine"], module.params["identity"])
    if module.params["new_address"]:
        facts["new_address_local"] = dqlite_datadir.address_is_local(module.params["new_address"])
        facts["summary"]["new_address_local"] = facts["new_address_local"]
    return facts


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            depth=dict(type="str", choices=["quick", "full"], default="full"),
            lz4_engine=dict(type="str", choices=["auto", "library", "tool", "python"], default="auto"),
            auto_recovery=dict(type="bool", default=True),
            new_address=dict(type="str"),
            identity=dict(type="str", choices=["app", "lxd-local-db"], default="app"),
        ),
        supports_check_mode=True,
    )
    path = module.params["path"]
    if not os.path.exists(path):
        # a member whose data directory is gone is a fact too (verdict unusable), not an error:
        # the plan rebuilds it from the winner or refuses, naming it
        module.exit_json(changed=False, member=_inspect(module, path))
    if not os.path.isdir(path):
        module.fail_json(msg="path %s is not a directory" % path)
    with _settled(path):
        try:
            facts = _inspect(module, path)
        except OSError as exc:
            module.fail_json(msg="cannot read %s: %s" % (path, exc))
        except ValueError as exc:
            module.fail_json(msg="lz4_engine=%s: %s" % (module.params["lz4_engine"], exc))
    module.exit_json(changed=False, member=facts)


if __name__ == "__main__":
    main()
