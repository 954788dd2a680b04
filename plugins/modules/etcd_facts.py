#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: etcd_facts
short_description: Read an etcd data directory offline, verify it, and name what is broken
version_added: 0.1.0
description:
  - Reads one member's etcd data directory the way etcd 3.4 reads it at start, without starting
    etcd or running any etcd tool, and reports the cluster ID and member ID, the index and TERM
    of the last log entry, the HardState (term, vote, commit), the snapshot etcd would load
    (term, index, voters), the bbolt db's consistent_index (and term on 3.5+), its current
    revision and key count, the membership as the log and snapshots say it, whether etcd is
    running on it, every problem found, and a verdict V(healthy), V(repairable) or V(unusable).
  - Checks every WAL record against the chained CRC-32C, tells a torn tail (etcd truncates it
    at start) from corruption in the middle of the log (etcd refuses to start), checks each
    C(.snap) file's CRC-32C, the bbolt meta pages (FNV-1a checksums) and walks the whole bbolt
    page tree.
  - Every problem names the file, the byte offset, what etcd itself would do at start, what data
    would be lost, and the remedy.
  - Strictly read-only. When O(endpoint) is given and the member answers, it also reports
    C(etcdctl endpoint status); a member that lost quorum usually does not answer, and the
    offline facts are what matters then.
  - etcd 3.5 and 3.6 keep C(term), C(confState) and (3.6) C(storageVersion) in the db's meta
    bucket; they are reported when present. The start-up prediction follows 3.4, the version
    the lab tests run against.
author:
  - quorum.recovery maintainers (@quorum-recovery)
extends_documentation_fragment:
  - quorum.recovery.attributes
attributes:
  check_mode:
    support: full
    details: The module never changes anything, in check mode or not.
  diff_mode:
    support: none
  idempotent:
    support: full
options:
  path:
    description:
      - The member's data directory, the one holding C(member/wal) and C(member/snap)
        (etcd's C(--data-dir); kubeadm C(/var/lib/etcd), k3s C(/var/lib/rancher/k3s/server/db/etcd)).
    type: path
    required: true
  depth:
    description:
      - V(full) verifies the CRC of every WAL record in every file, walks every page of the db and
        computes the hash C(etcdctl snapshot status) prints.
      - V(quick) decodes every WAL record but verifies the CRC chain only in the last WAL file
        (each file starts with the running CRC), reads the db's meta pages, small buckets and the
        last key; no key count or hash. For large fleets.
    type: str
    choices: [quick, full]
    default: full
  endpoint:
    description:
      - A client URL of this member (for example V(https://10.0.0.1:2379)). When given, the module
        also runs C(etcdctl endpoint status) against it and reports the answer or the error.
    type: str
  etcdctl:
    description: The etcdctl command used for O(endpoint).
    type: path
    default: etcdctl
  cacert:
    description: CA bundle for O(endpoint) (C(--cacert)).
    type: path
  cert:
    description: Client certificate for O(endpoint) (C(--cert)).
    type: path
  key:
    description: Client key for O(endpoint) (C(--key)).
    type: path
  timeout:
    description: Seconds to wait for O(endpoint) (C(--command-timeout) and C(--dial-timeout)).
    type: int
    default: 5
"""

EXAMPLES = r"""
- name: Inspect the member's etcd data directory (read-only)
  quorum.recovery.etcd_facts:
    path: /var/lib/etcd
  register: etcd

- name: Show the verdict and the last entry
  ansible.builtin.debug:
    msg: "{{ etcd.member.verdict }} at term {{ etcd.member.log.last_term }} index {{ etcd.member.log.last_index }}"

- name: Inspect a kubeadm member and ask it for its status if it still answers
  quorum.recovery.etcd_facts:
    path: /var/lib/etcd
    depth: quick
    endpoint: https://127.0.0.1:2379
    cacert: /etc/kubernetes/pki/etcd/ca.crt
    cert: /etc/kubernetes/pki/etcd/healthcheck-client.crt
    key: /etc/kubernetes/pki/etcd/healthcheck-client.key
"""

RETURN = r"""
member:
  description: What the inspection found.
  returned: always
  type: dict
  contains:
    verdict:
      description: V(healthy), V(repairable) (etcd or one reviewed local step fixes it without losing committed
        data, for example a torn WAL tail) or V(unusable) (rebuild this member from another).
      type: str
      sample: healthy
    member_id:
      description: This member's ID, lowercase hex as etcdctl prints it (from the WAL metadata record).
      type: str
      sample: 166bb648312d53c3
    cluster_id:
      description: The cluster ID, lowercase hex (from the WAL metadata record).
      type: str
      sample: 5af592bf8b471a98
    log:
      description: The TERM and index of the last log entry, the HardState and the loaded snapshot's index and term.
      type: dict
      sample: {"last_index": 1008, "last_term": 2, "hard_state": {"term": 2, "vote": 8961569967019832602,
               "commit": 1007}, "snapshot_index": 1001, "snapshot_term": 2}
    snapshot_loaded:
      description: The C(.snap) etcd would load (file, term, index, conf_state with voters and learners), or null.
      type: dict
    snapshots:
      description: Every C(.snap) file, newest first, with its status (V(ok) or V(broken)) and error.
      type: list
      elements: dict
    wal:
      description: The WAL files read (records, end of data, whether their CRCs were checked), the first file
        read, record counts and the first error.
      type: dict
    db:
      description: The bbolt db - both meta pages, the one used, bucket sizes, consistent_index, term (3.5+),
        confState (3.5+), storageVersion (3.6), members, revision, structural errors, and the
        C(etcdctl snapshot status) numbers (hash, revision, total_key, total_size; depth full).
      type: dict
    revision:
      description: The db's current revision (the last key of the C(key) bucket).
      type: int
      sample: 1001
    key_count:
      description: Keys in all buckets, as C(etcdctl snapshot status) counts them (depth full, else null).
      type: int
      sample: 1006
    layout:
      description: V(3.4), V(3.5) (db meta has C(term)) or V(3.6) (db meta has C(storageVersion)).
      type: str
    membership:
      description: Voters and learners (id, name, peer_urls) from the loaded snapshot plus the WAL's conf changes,
        the member IDs the db lists, and the db's confState (3.5+).
      type: dict
    problems:
      description: Each problem with severity, file, offset, message, etcd_would, data_lost, remedy and repairable.
      type: list
      elements: dict
    running:
      description: Whether a process holds the directory's files open or locks its db, and the evidence.
      type: dict
      sample: {"running": false, "evidence": "no process has a file of the directory open"}
    crc32c:
      description: Which CRC-32C implementation ran (V(python), or a C module such as V(crc32c)).
      type: str
online:
  description: The member's C(etcdctl endpoint status) when O(endpoint) is given, or why it did not answer.
  returned: when O(endpoint) is given
  type: dict
  sample: {"reachable": true, "status": {"header": {"cluster_id": 6553794546237319832, "member_id": 1615585312521409475},
           "version": "3.4.23", "dbSize": 126976, "leader": 8961569967019832602, "raftIndex": 1008, "raftTerm": 2}}
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.quorum.recovery.plugins.module_utils import etcd_datadir


def _endpoint_status(module):
    params = module.params
    timeout = "%ds" % params["timeout"]
    argv = [params["etcdctl"], "--endpoints", params["endpoint"], "-w", "json", "--command-timeout", timeout,
            "--dial-timeout", timeout]
    for name in ("cacert", "cert", "key"):
        if params[name]:
            argv += ["--" + name, params[name]]
    argv += ["endpoint", "status"]
    rc, out, err = module.run_command(argv, environ_update={"ETCDCTL_API": "3"})
    if rc != 0:
        return {"reachable": False, "error": (err or out).strip()[-2000:]}
    try:
        return {"reachable": True, "status": json.loads(out)[0]["Status"]}
    except (ValueError, KeyError, IndexError) as exc:
        return {"reachable": False, "error": "unexpected etcdctl output (%s): %s" % (exc, out[:500])}


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            depth=dict(type="str", choices=["quick", "full"], default="full"),
            endpoint=dict(type="str"),
            etcdctl=dict(type="path", default="etcdctl"),
            cacert=dict(type="path"),
            cert=dict(type="path"),
            key=dict(type="path", no_log=False),
            timeout=dict(type="int", default=5),
        ),
        supports_check_mode=True,
    )
    path = module.params["path"]
    if not os.path.isdir(path):
        module.fail_json(msg="path %s is not a directory" % path)
    try:
        facts = etcd_datadir.inspect_datadir(path, module.params["depth"])
    except (OSError, MemoryError) as exc:
        module.fail_json(msg="cannot read %s: %s" % (path, exc))
    result = {"changed": False, "member": facts}
    if module.params["endpoint"]:
        result["online"] = _endpoint_status(module)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
