#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: dqlite_backup
short_description: Copy a dqlite member's raft files while it runs, consistently, and prove the copy loads
version_added: 0.2.0
description:
  - Copies the raft files of the member at O(path) into a new folder O(dest) in the backup
    payload's layout (docs/backup-format.md) - C(raft/) with the newest complete snapshot and its
    C(.meta), the closed segments raft loads after it, the open segments cut at their last
    complete batch and C(metadata1)/C(metadata2); C(node/) with C(info.yaml) and C(cluster.yaml)
    for reference (never the TLS key); C(MANIFEST.json) with every file's size and sha256, the
    copy's raft position and how it was verified.
  - The member may be running - closed segments and snapshots never change once named, open
    segments are copied newest first and cut at their last complete batch, and a second listing
    proves no segment was renamed under the copy; a file that vanished or moved (the member took
    a snapshot, closed or removed a segment) starts another round, a bounded number of times.
  - Nothing under O(path) is written, renamed or locked.
  - The copy is written to a temporary folder beside O(dest), checked with the facts reader
    (M(quorum.recovery.dqlite_info)'s check, full depth unless O(verify=none)), fsynced and only
    then renamed to O(dest). A failed copy leaves nothing under the name O(dest).
  - A member that was running when the copy began and is not when it ends (killed, crashed)
    fails the copy.
  - With O(verify=started), a scratch copy of the copy is reconfigured to one node, started alone
    on 127.0.0.1 (in a network namespace of its own when the module runs as root) with
    O(verify_argv), asked O(verify_query), and stopped, always. The start command, the query and
    the reconfigure command are the flavor's data, given by the caller.
  - Idempotent - an O(dest) that already holds a complete copy (every file matching its manifest)
    from the member's current position, verified as asked, is left alone. An O(dest) holding
    anything else is refused, never replaced.
  - Two runs on the same folder never work at once (they lock the parent folder of O(dest)).
author:
  - quorum.recovery maintainers (@quorum-recovery)
extends_documentation_fragment:
  - quorum.recovery.attributes
  - quorum.recovery.progress
attributes:
  check_mode:
    support: full
    details: Reports the files it would copy from one listing of O(path); writes nothing.
  diff_mode:
    support: none
  idempotent:
    support: full
    details: For a member whose position does not move (stopped, or not written to).
options:
  path:
    description: The member's raft data directory.
    type: path
    required: true
  dest:
    description: The folder to create the copy in. Must not exist, or hold this very copy.
    type: path
    required: true
  verify:
    description:
      - V(none) checks the copy's structure only (facts at quick depth).
      - V(facts) runs the facts reader's full check (every checksum, every snapshot decoded).
      - V(started) does V(facts), then starts a scratch copy alone and reads its data back.
    type: str
    choices: [none, facts, started]
    default: facts
  verify_argv:
    description:
      - The app's start command, in the foreground. Required with O(verify=started).
      - C({dir}) (the app's data folder), C({data_dir}) (where the raft files are, C({dir}/)O(verify_data_subdir)),
        C({address}) (C(127.0.0.1:PORT), the database address) and C({api}) (a second loopback address) are replaced.
      - "For example, the go-dqlite demo app: C([dqlite-demo, --api, '{api}', --db, '{address}', --dir, '{dir}'])."
    type: list
    elements: str
  verify_query:
    description:
      - The command that reads data back from the started copy and prints one number (a row count).
        Same replacements as O(verify_argv). Required with O(verify=started).
      - "For example C([dqlite, -s, '{address}', demo, 'SELECT COUNT(*) FROM model'])."
    type: list
    elements: str
  verify_reconfigure_argv:
    description:
      - The command that makes the scratch copy a one-node cluster; C({yaml}) is the new membership
        file, plus the replacements of O(verify_argv). Required with O(verify=started).
      - "For example C([dqlite, -s, 'file://{data_dir}/cluster.yaml', demo, '.reconfigure {data_dir} {yaml}'])."
    type: list
    elements: str
  verify_data_subdir:
    description:
      - Where the app keeps its raft files under C({dir}), with the same replacements; the
        go-dqlite demo app keeps them in C({dir}/{address}).
    type: str
    default: ""
  verify_scratch:
    description: Folder for the scratch copy; removed when the check ends. Default - the parent folder of O(dest).
    type: path
  verify_isolation:
    description:
      - V(auto) starts the copy in a network namespace of its own when it can, else on free loopback ports;
        V(netns) insists on the namespace; V(loopback) uses the host's loopback.
    type: str
    choices: [auto, netns, loopback]
    default: auto
  verify_timeout:
    description: Seconds the started copy has to answer O(verify_query).
    type: int
    default: 60
  lz4_engine:
    description: What checks snapshot contents (see M(quorum.recovery.dqlite_info)).
    type: str
    choices: [auto, library, tool, python]
    default: auto
"""

EXAMPLES = r"""
- name: Copy the member's raft files while it runs, and prove the copy starts
  quorum.recovery.dqlite_backup:
    path: /var/snap/microk8s/current/var/kubernetes/backend
    dest: /var/backups/quorum-recovery/dqlite-0000000042
    verify: started
    verify_argv: [dqlite-demo, --api, "{api}", --db, "{address}", --dir, "{dir}"]
    verify_query: [dqlite, -s, "{address}", demo, "SELECT COUNT(*) FROM model"]
    verify_reconfigure_argv: [dqlite, -s, "file://{data_dir}/cluster.yaml", demo, ".reconfigure {data_dir} {yaml}"]
    verify_data_subdir: "{address}"
    progress_file: /var/tmp/quorum-recovery-backup-42.progress
"""

RETURN = r"""
dest:
  description: The copy's folder.
  returned: always
  type: str
files:
  description: Every file of the copy, relative to RV(dest), with its size and sha256 (sizes only in check mode).
  returned: always
  type: list
  elements: dict
  sample: [{"name": "raft/0000000000000001-0000000000000532", "size": 4374528, "sha256": "3f5a..."}]
position:
  description: The raft term and index of the copy's last entry.
  returned: unless check mode
  type: dict
  sample: {"term": 1, "index": 4413}
snapshot_index:
  description: The index of the snapshot in the copy (0 when it has none).
  returned: always
  type: int
  sample: 4096
retries:
  description: Rounds taken again because files moved under the copy.
  returned: when a copy was made
  type: int
warnings_found:
  description: What the copy noticed (a torn batch left out, files that moved and why a round was retaken).
  returned: when a copy was made
  type: list
  elements: str
verified:
  description: How the copy was checked - C(at), C(how) (e.g. C(facts-full+dqlite-started-alone)), C(result), C(rows) when started.
  returned: unless check mode
  type: dict
  sample: {"at": "2026-12-02T04:10:00Z", "how": "facts-full+dqlite-started-alone", "result": "ok", "rows": 4200}
rows:
  description: What O(verify_query) printed, as a number, on the copy started alone.
  returned: when O(verify=started)
  type: int
existed:
  description: True when RV(dest) already held this copy and was left alone.
  returned: always
  type: bool
progress:
  description: Each phase with its bytes and seconds.
  returned: always
  type: list
  elements: dict
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.quorum.recovery.plugins.module_utils import datadir_archive as arch
from ansible_collections.quorum.recovery.plugins.module_utils import dqlite_backup as backup
from ansible_collections.quorum.recovery.plugins.module_utils import progress as prog


def _verify_started(p, dest, progress):
    scratch = p["verify_scratch"] or os.path.dirname(os.path.abspath(dest))
    read = backup.verify_started_alone(dest, scratch, p["verify_argv"], p["verify_query"], p["verify_reconfigure_argv"],
                                       p["verify_data_subdir"], p["verify_isolation"], p["verify_timeout"], progress)
    return read


def _existing(module, p, progress):
    """The result for a dest that already exists: left alone when it is this copy, else refused."""
    dest = p["dest"]
    manifest = backup.read_copy(dest, progress)
    if manifest is None:
        raise backup.Refused("dest %s already exists and is not a complete copy (missing or mismatching "
                             "MANIFEST.json); not replaced: choose a new dest" % dest)
    now = backup.source_position(p["path"])
    if now != manifest["position"]:
        raise backup.Refused("dest %s already holds a copy at position %s, the member is now at %s; not replaced: "
                             "choose a new dest" % (dest, manifest["position"], now))
    verified = manifest.get("verified") or {}
    result = dict(changed=False, existed=True, dest=dest, files=manifest["files"], position=manifest["position"],
                  snapshot_index=manifest["snapshot_index"], verified=verified)
    if p["verify"] != "none" and not verified.get("how", "").startswith("facts-full"):
        # made with verify=none: the full check is asked for now
        if module.check_mode:
            return dict(result, changed=True)
        backup.check_copy(os.path.join(dest, backup.RAFT), manifest["position"]["index"], p["lz4_engine"])
        verified = {"at": backup.manifest_time(), "how": "facts-full", "result": "ok"}
        backup.record_verification(dest, verified)
        result.update(verified=verified, changed=True)
    if p["verify"] == "started" and not (verified.get("result") == "ok" and "started" in verified.get("how", "")):
        if module.check_mode:
            return dict(result, changed=True)
        result.update(_start_and_record(p, dest, verified, progress), changed=True)
    elif p["verify"] == "started":
        result["rows"] = verified.get("rows")
    return result


def _start_and_record(p, dest, verified, progress):
    how = verified.get("how", "facts-full").split("+")[0] + "+dqlite-started-alone"
    try:
        read = _verify_started(p, dest, progress)
    except backup.Refused as exc:
        backup.record_verification(dest, {"at": backup.manifest_time(), "how": how, "result": "failed",
                                          "details": str(exc)})
        raise
    record = {"at": backup.manifest_time(), "how": how, "result": "ok" if read["rows"] is not None else "failed",
              "rows": read["rows"], "details": {k: read[k] for k in ("address", "isolated", "node_id", "seconds")}}
    backup.record_verification(dest, record)
    if read["rows"] is None:
        raise backup.Refused("the copy at %s started, but %s printed no number: %r" % (dest, p["verify_query"], read["output"]))
    return {"verified": record, "rows": read["rows"]}


def _run(module, p, progress):
    dest = p["dest"]
    if os.path.lexists(dest):
        return _existing(module, p, progress)
    if module.check_mode:
        plan = backup.would_copy(p["path"])
        return dict(changed=True, existed=False, dest=dest, files=plan["files"], snapshot_index=plan["snapshot_index"])
    backup.remove_stale_partials(dest)
    depth = "quick" if p["verify"] == "none" else "full"
    copied = backup.copy_online(p["path"], dest, progress, p["lz4_engine"], depth=depth)
    result = dict(changed=True, existed=False, dest=dest, files=copied["files"], position=copied["position"],
                  snapshot_index=copied["snapshot_index"], retries=copied["retries"],
                  warnings_found=copied["warnings"], verified=copied["verified"])
    if p["verify"] == "started":
        result.update(_start_and_record(p, dest, copied["verified"], progress))
    return result


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            dest=dict(type="path", required=True),
            verify=dict(type="str", choices=["none", "facts", "started"], default="facts"),
            verify_argv=dict(type="list", elements="str"),
            verify_query=dict(type="list", elements="str"),
            verify_reconfigure_argv=dict(type="list", elements="str"),
            verify_data_subdir=dict(type="str", default=""),
            verify_scratch=dict(type="path"),
            verify_isolation=dict(type="str", choices=["auto", "netns", "loopback"], default="auto"),
            verify_timeout=dict(type="int", default=60),
            lz4_engine=dict(type="str", choices=["auto", "library", "tool", "python"], default="auto"),
            **prog.PROGRESS_OPTIONS
        ),
        required_if=[("verify", "started", ["verify_argv", "verify_query", "verify_reconfigure_argv"])],
        supports_check_mode=True,
    )
    p = module.params
    if not os.path.isdir(p["path"]):
        module.fail_json(msg="path %s is not a directory" % p["path"])
    folder = os.path.dirname(os.path.abspath(p["dest"]))
    progress = prog.Progress.for_module(module)
    try:
        if not module.check_mode:
            os.makedirs(folder, mode=0o700, exist_ok=True)
        if os.path.isdir(folder):
            with arch.locked(folder, progress.waiting, min(progress.interval, 1.0)) as waited:
                if waited:
                    progress.waited(waited)
                result = _run(module, p, progress)
        else:
            result = _run(module, p, progress)
    except backup.Refused as exc:
        progress.close()
        module.fail_json(msg=str(exc), progress=progress.summary())
    except OSError as exc:
        progress.close()
        module.fail_json(msg="copying %s to %s: %s" % (p["path"], p["dest"], exc), progress=progress.summary())
    progress.close()
    module.exit_json(progress=progress.summary(), **result)


if __name__ == "__main__":
    main()
