#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: dqlite_reconfigure
short_description: Rewrite a stopped dqlite member's membership with the real tool, exactly once
version_added: 0.1.0
description:
  - Writes the new membership as go-dqlite YAML and runs the real reconfigure command (the
    go-dqlite shell's C(.reconfigure), as MicroK8s, k8s-snap and microcluster do) on the
    directory. dqlite appends ONE closed segment C(N-N), N = last index + 1, holding a
    configuration entry with term 1.
  - Exactly once. Before running, the directory must end at O(expected_last_index) (the plan's
    number). If it already ends at O(expected_last_index) + 1 with a configuration entry equal to
    the new membership, the reconfigure already happened and nothing is run. Anything else fails
    without running the tool, because the directory is not what the plan was made from.
    Running it twice, or on two members, forks the log for good (lxd#13524).
  - Then makes the go-dqlite app's own files agree with the new membership (written here, in
    Python, as the app writes them) - C(cluster.yaml) lists the new membership, and C(info.yaml)
    this member's entry in it (its address changes when the plan gives it a new one).
  - Returns the raft files the other members get from this one (RV(raft_files)), so no caller
    picks files by name.
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
  membership:
    description: The new membership, each with C(id), C(address) and C(role) (V(voter), V(stand-by), V(spare)).
    type: list
    elements: dict
    required: true
  expected_last_index:
    description: The last log index the plan saw on this member.
    type: int
    required: true
  command:
    description:
      - The reconfigure command as a list of arguments. C({dir}) and C({yaml}) are replaced by the
        data directory and the membership file.
      - "For example C([dqlite, -s, 10.0.0.1:9001, demo, .reconfigure {dir} {yaml}])."
    type: list
    elements: str
    required: true
  yaml_path:
    description: Where to write the membership YAML the command reads (outside the data directory is fine).
    type: path
    required: true
  member_id:
    description: This member's ID in O(membership); its entry is written to C(info.yaml).
    type: int
    required: true
  identity:
    description:
      - Where the product keeps the member's identity, as in M(quorum.recovery.dqlite_info).
      - V(app) writes the membership as go-dqlite YAML and afterwards the app's C(cluster.yaml) and C(info.yaml).
      - V(lxd-local-db) writes it as the YAML C(lxd cluster edit) reads (members with id, name,
        address, role; the names from LXD's C(local.db) beside O(path)) and writes no app files -
        LXD's own command updates C(local.db) itself.
    type: str
    choices: [app, lxd-local-db]
    default: app
  stdin:
    description: Feed the membership YAML to the command on its standard input (C(lxd cluster edit)) as well.
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Reconfigure the winner once
  quorum.recovery.dqlite_reconfigure:
    path: /var/snap/microk8s/current/var/kubernetes/backend
    membership:
      - {id: 3297041220608546238, address: "10.0.0.1:19001", role: voter}
    expected_last_index: 1509
    yaml_path: /var/backups/quorum-recovery/r1/cluster.yaml
    member_id: 3297041220608546238
    command: [/snap/microk8s/current/bin/dqlite, -s, "127.0.0.1:19001", -c, "{dir}/cluster.crt", -k,
              "{dir}/cluster.key", k8s, ".reconfigure {dir} {yaml}"]
"""

RETURN = r"""
segment:
  description: The name of the segment holding the new configuration.
  returned: success
  type: str
  sample: "0000000000001510-0000000000001510"
already_done:
  description: True when the directory already held this reconfigure, so nothing was run.
  returned: success
  type: bool
raft_files:
  description: The files the other members get from this one - snapshots, their C(.meta), closed segments.
  returned: success
  type: list
  elements: str
  sample: ["snapshot-1-1024-123", "snapshot-1-1024-123.meta", "0000000000001025-0000000000001509"]
written:
  description: The go-dqlite app files rewritten to match the new membership (C(cluster.yaml), C(info.yaml)).
  returned: success
  type: list
  elements: str
stdout:
  description: What the reconfigure command printed.
  returned: when it ran
  type: str
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.quorum.recovery.plugins.module_utils import dqlite_datadir
from ansible_collections.quorum.recovery.plugins.module_utils import dqlite_plan
from ansible_collections.quorum.recovery.plugins.module_utils import lxd_localdb
from ansible_collections.quorum.recovery.plugins.module_utils import datadir_archive as arch


def raft_files(facts):
    """What a restored member needs from this one: every snapshot with its .meta, the closed
    segments raft loads (the open ones hold nothing after a reconfigure, which closes its segment),
    and this member's metadata1/metadata2, which a restored member takes only when it has no sound
    pair of its own (dqlite_restore keeps its own term and vote): a member whose data directory
    was lost whole would otherwise start with none, and the go-dqlite app bootstraps the node with
    the bootstrap ID when it has none."""
    snapshots = facts.get("snapshots") or []
    metadata = sorted(name for name, parsed in ((facts.get("metadata") or {}).get("files") or {}).items()
                      if "error" not in parsed)
    return ([s["file"] for s in snapshots if s.get("file")] + [s["meta_file"] for s in snapshots if s.get("meta_file")]
            + [s["file"] for s in facts.get("segments") or [] if s["kind"] == "closed" and not s.get("ignored")]
            + metadata)


def _write_app_files(module, path, membership, member_id):
    """cluster.yaml and info.yaml as the new membership says; returns the names rewritten."""
    if module.params["identity"] != "app":
        return []  # the product's own command keeps its node-local files (LXD: local.db)
    own = [s for s in membership if int(s["id"]) == member_id]
    if not own:
        module.fail_json(msg="member_id=%d is not in the membership %s" % (member_id, membership))
    written = []
    cluster = dqlite_plan.node_yaml(membership)
    try:
        with open(os.path.join(path, "cluster.yaml"), encoding="utf-8") as handle:
            same = sorted(dqlite_plan.parse_nodes(handle.read())) == sorted(dqlite_plan.parse_nodes(cluster))
    except (OSError, ValueError):
        same = False
    if not same:
        written.append(("cluster.yaml", cluster))
    info = dqlite_plan.info_yaml(own[0])
    if dqlite_plan.node_differs(os.path.join(path, "info.yaml"), info):
        written.append(("info.yaml", info))
    for name, content in written:
        if not module.check_mode:
            arch.write_atomic(os.path.join(path, name), content.encode(), 0o600)
    written = [name for name, _content in written]
    return written


def _lxd_own_address(module, path, membership, member_id):
    """LXD's edit rewrites raft_nodes but not the member's own address keys: when the plan moves
    this member, local.db must name its new address, or LXD listens on the old one."""
    if module.params["identity"] != "lxd-local-db":
        return []
    try:
        changes = lxd_localdb.changes_needed(path, membership, member_id)
        if changes and not module.check_mode:
            lxd_localdb.apply(path, changes, os.path.dirname(module.params["yaml_path"]))
    except Exception as exc:  # sqlite3.Error, OSError, KeyError
        module.fail_json(msg="cannot bring LXD's %s in line with the membership: %s"
                         % (dqlite_datadir.lxd_local_db_path(path), exc))
    return ["local.db"] if changes else []


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            membership=dict(type="list", elements="dict", required=True),
            expected_last_index=dict(type="int", required=True),
            command=dict(type="list", elements="str", required=True),
            yaml_path=dict(type="path", required=True),
            member_id=dict(type="int", required=True),
            identity=dict(type="str", choices=["app", "lxd-local-db"], default="app"),
            stdin=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    path, expected = module.params["path"], module.params["expected_last_index"]
    membership = module.params["membership"]
    for server in membership:
        if set(server) < {"id", "address", "role"} or server["role"] not in dqlite_plan.APP_ROLE_NUMBERS:
            module.fail_json(msg="membership entry %r needs id, address and role (voter, stand-by or spare)" % server)
    if not any(s["role"] == "voter" for s in membership):
        module.fail_json(msg="membership has no voter")
    if not os.path.isdir(path):
        module.fail_json(msg="path %s is not a directory" % path)
    identity = module.params["identity"]
    facts = dqlite_datadir.inspect_datadir(path, "quick", identity=identity)
    segment = "%016d-%016d" % (expected + 1, expected + 1)
    if facts["running"]["running"]:
        module.fail_json(msg="dqlite is running on %s (%s); stop it first" % (path, facts["running"]["evidence"]))
    if dqlite_plan.reconfigured(facts, membership, expected + 1):
        written = _write_app_files(module, path, membership, module.params["member_id"])
        written += _lxd_own_address(module, path, membership, module.params["member_id"])
        module.exit_json(changed=bool(written), already_done=True, segment=segment, raft_files=raft_files(facts),
                         written=written)
    last = (facts.get("log") or {}).get("last_index")
    if last != expected:
        module.fail_json(msg="%s ends at index %s, but the plan expects %d (or %d after its reconfigure): the "
                         "directory changed since the plan was made; not running the reconfigure"
                         % (path, last, expected, expected + 1), member=facts)
    if facts["verdict"] != "healthy":
        module.fail_json(msg="%s is %s; the plan only reconfigures a healthy member" % (path, facts["verdict"]),
                         member=facts)
    if module.check_mode:
        module.exit_json(changed=True, already_done=False, segment=segment, raft_files=[], written=[])
    yaml_path = module.params["yaml_path"]
    os.makedirs(os.path.dirname(yaml_path), mode=0o700, exist_ok=True)
    if identity == "lxd-local-db":
        try:
            names = {n["id"]: n["name"] for n in dqlite_datadir.read_lxd_local_db(path)[1]}
            text = dqlite_plan.lxd_members_yaml(membership, names)
        except KeyError as exc:
            module.fail_json(msg="member %s of the membership has no name in %s; not running the reconfigure"
                             % (exc, dqlite_datadir.lxd_local_db_path(path)))
        except Exception as exc:  # sqlite3.Error, OSError
            module.fail_json(msg="cannot read LXD's %s: %s" % (dqlite_datadir.lxd_local_db_path(path), exc))
    else:
        text = dqlite_plan.node_yaml(membership)
    arch.write_atomic(yaml_path, text.encode())
    argv = [a.replace("{dir}", path).replace("{yaml}", yaml_path) for a in module.params["command"]]
    rc, out, err = module.run_command(argv, data=text if module.params["stdin"] else None,
                                      binary_data=True)
    after = dqlite_datadir.inspect_datadir(path, "quick", identity=identity)
    if rc != 0 or not dqlite_plan.reconfigured(after, membership, expected + 1):
        module.fail_json(msg="the reconfigure command %s did not append %s with the new membership (rc %d): %s"
                         % (argv, segment, rc, (err or out).strip()), stdout=out, stderr=err, member=after)
    written = _write_app_files(module, path, membership, module.params["member_id"])
    written += _lxd_own_address(module, path, membership, module.params["member_id"])
    module.exit_json(changed=True, already_done=False, segment=segment, stdout=out, raft_files=raft_files(after),
                     written=written)


if __name__ == "__main__":
    main()
