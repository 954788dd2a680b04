#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: etcd_info
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
    would be lost, and the remedy. RV(member.prediction) predicts the start as a whole, in etcd's
    own order (it starts, refuses, panics or bootstraps a new member; the error it prints; the
    files it changes on the way, such as a truncated torn WAL tail). The prediction follows
    etcd 3.4.10 and later (and 3.5), and is checked by starting etcd 3.4.23 on damaged copies.
  - Strictly read-only. When O(endpoint) is given and the member answers, it also reports
    C(etcdctl endpoint status); a member that lost quorum does not answer, and the offline facts
    are what matters then. An endpoint that does not answer never fails the module; RV(online)
    says why (refused, timeout, TLS, ...) after at most O(timeout) seconds per etcdctl phase.
  - etcd 3.5 and 3.6 keep C(term), C(confState) and (3.6) C(storageVersion) in the db's meta
    bucket; they are reported when present.
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
  new_address:
    description:
      - The peer URL this member will have after the recovery, when its host's address changed
        (for example V(https://10.0.0.7:2380)). Checked like the member's own peer URL and
        reported in C(member.summary.new_address_local).
    type: str
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
    description:
      - Seconds to wait for O(endpoint), for each of etcdctl's C(--dial-timeout) and C(--command-timeout).
      - etcdctl is stopped (coreutils C(timeout)) if it has not returned after twice this plus 5 seconds.
    type: int
    default: 5
"""

EXAMPLES = r"""
- name: Inspect the member's etcd data directory (read-only)
  quorum.recovery.etcd_info:
    path: /var/lib/etcd
  register: etcd

- name: Show the verdict and the last entry
  ansible.builtin.debug:
    msg: "{{ etcd.member.verdict }} at term {{ etcd.member.log.last_term }} index {{ etcd.member.log.last_index }}"

- name: Inspect a kubeadm member and ask it for its status if it still answers
  quorum.recovery.etcd_info:
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
    summary:
      description: >-
        The member in the shape the recovery plan reads for every engine, with the same fields as
        M(quorum.recovery.dqlite_info)'s C(summary) (docs/member_summary.md): here C(cluster_key) is the cluster
        ID, C(current_term) and C(commit) come from the HardState, C(tie_break) is the applied index then the
        db revision. etcd only, C(unapplied) is RV(member.unapplied) without C(undecoded) (null when the WAL could
        not be read).
      type: dict
      sample: {"engine": "etcd", "member_id": "8e9e05c52164694d", "cluster_key": "cdf818194e3a8c32", "last_term": 2}
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
    unapplied:
      description:
        - What lies beyond what this member applied for sure, from its files alone (null when the WAL could
          not be read).
        - C(beyond_commit) counts the entries after the HardState commit, which C(etcd --force-new-cluster) drops
          even when a client was told they succeeded; C(beyond_db) the entries after what the db holds (its
          consistent_index, or the loaded snapshot), which a restore of the db alone loses.
        - C(keys) lists up to 20 keys (sorted, unique) written or deleted by the entries after min(commit, db),
          read from each entry's etcdserverpb.InternalRaftRequest (put, delete_range, both branches of a txn);
          UTF-8 text with backslash escapes for other bytes; a deleted range is written C([key, range_end\)), or
          C([key, ...\)) when it runs to the end of the keyspace. C(more_keys) counts the keys not listed.
        - C(undecoded) counts the entries there that are no InternalRaftRequest (etcd 3.4 proposes some v2
          requests, such as its member publish, bare).
        - M(quorum.recovery.etcd_replay) builds a snapshot that keeps all of it.
      type: dict
      sample: {"beyond_commit": 45, "beyond_db": 55, "keys": ["/gone/a", "/k/00450", "[/range/, /range0)"],
               "more_keys": 0, "undecoded": 1}
    snapshot_loaded:
      description: The C(.snap) etcd would load (file, term, index, conf_state with voters and learners), or null.
      type: dict
    snapshots:
      description: Every C(.snap) file, newest first, with its status (V(ok) or V(broken)) and error.
      type: list
      elements: dict
    wal:
      description: The WAL files read (records, end of data, whether their CRCs were checked), the first file
        read after the snapshot (C(selected_from)), the files to archive first when that repairs the
        directory (C(archive_first)), record counts, the first error and the first read error.
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
      description:
        - Each problem with severity, file, offset, message, etcd_would, data_lost, remedy and repairable.
        - C(stage) is its place in etcd's start-up (10 db open, 20 no WAL, 30 WAL check of every file, 40 .snap load,
          50 db against the snapshot, 60 WAL read, 70 raft, 80 running); C(etcd_start) what it alone makes etcd do
          (V(starts), V(refuses), V(panics), V(new-member)); C(etcd_error) the text etcd prints for it;
          C(etcd_change) the file change etcd makes for it at start (truncate, rename, replace), or null.
      type: list
      elements: dict
    prediction:
      description:
        - What etcd does when started on this directory, replayed in its own start-up order and checked
          against etcd 3.4.23 started on damaged copies (docs/etcd_info.md has the measured table).
        - C(outcome) is V(starts), V(refuses) (logs a fatal error, exits 1), V(panics) (a Go panic or a memory
          fault, exits 2) or V(new-member) (no WAL, so it bootstraps a fresh log); C(starts) is true for
          V(starts); C(error) is the text etcd prints (null when it cannot be predicted, as for a memory fault);
          C(file) and C(reason) name the problem that decides; C(changes) are the files it changes before that
          (truncates a torn WAL tail keeping a .broken copy, renames a broken .snap, moves a .snap.db over the
          db); C(last_index) is the last log index it keeps when it starts.
        - Starting is not serving. A member that lost quorum starts and serves nothing.
      type: dict
      sample: {"starts": true, "outcome": "starts", "error": null, "file": null, "reason": null, "last_index": 2511,
               "changes": [{"action": "truncate", "file": "0000000000000000-0000000000000000.wal", "offset": 405128,
                            "keep": "0000000000000000-0000000000000000.wal.broken"}]}
    running:
      description: Whether a process holds the directory's files open or locks its db, and the evidence.
      type: dict
      sample: {"running": false, "evidence": "no process has a file of the directory open"}
    crc32c:
      description: Which CRC-32C implementation ran (V(python), or a C module such as V(crc32c)).
      type: str
online:
  description:
    - The member's C(etcdctl endpoint status) when O(endpoint) is given (C(reachable=true), C(status)), or why it did
      not answer (C(reachable=false), C(reason) V(refused), V(unreachable), V(timeout), V(tls), V(auth), V(killed),
      V(no-etcdctl), V(output) or V(error), a one-line C(error) and the tail of C(etcdctl_output)).
    - C(seconds) is how long etcdctl took.
  returned: when O(endpoint) is given
  type: dict
  sample: {"endpoint": "http://10.0.0.1:2379", "reachable": true, "timeout": 5, "seconds": 0.05,
           "status": {"header": {"cluster_id": 6553794546237319832, "member_id": 1615585312521409475},
                      "version": "3.4.23", "dbSize": 126976, "leader": 8961569967019832602, "raftIndex": 1008,
                      "raftTerm": 2}}
"""

import json
import os
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.quorum.recovery.plugins.module_utils import etcd_datadir
from ansible_collections.quorum.recovery.plugins.module_utils import member


# what etcdctl's output says went wrong, most specific first: (reason, words, explanation)
_CAUSES = (
    ("refused", ("connection refused",), "nothing listens there (etcd is not running, or on another port)"),
    ("unreachable", ("no route to host", "network is unreachable", "no such host", "lookup "),
     "the address cannot be reached or resolved from this host"),
    ("tls", ("x509", "certificate", "tls:", "first record does not look like a TLS handshake"),
     "TLS failed: check the URL scheme (http/https), cacert, cert and key"),
    ("auth", ("authentication", "permission denied", "user name is empty"), "etcd refused the credentials"),
    ("timeout", ("deadline exceeded", "i/o timeout"),
     "no answer in time: a member that lost quorum (or is still starting) accepts connections and serves no "
     "requests, and a cut-off address never answers"),
)


def _endpoint_status(module):
    """`etcdctl endpoint status` against O(endpoint); never fails the module: an answer, or why not."""
    params = module.params
    seconds = max(1, params["timeout"])
    online = {"endpoint": params["endpoint"], "reachable": False, "timeout": seconds}
    etcdctl = module.get_bin_path(params["etcdctl"])
    if not etcdctl:
        online.update(reason="no-etcdctl", error="%s is not installed or not executable on this host: the offline "
                      "facts above do not need it" % params["etcdctl"])
        return online
    argv = [etcdctl, "--endpoints", params["endpoint"], "-w", "json", "--command-timeout", "%ds" % seconds,
            "--dial-timeout", "%ds" % seconds]
    for name in ("cacert", "cert", "key"):
        if params[name]:
            argv += ["--" + name, params[name]]
    argv += ["endpoint", "status"]
    # etcdctl bounds itself by the two timeouts; coreutils timeout bounds etcdctl, in case it does not
    limit = 2 * seconds + 5
    guard = module.get_bin_path("timeout")
    if guard:
        argv = [guard, "--kill-after=5", str(limit)] + argv
    started = time.monotonic()
    rc, out, err = module.run_command(argv, environ_update={"ETCDCTL_API": "3"})
    online["seconds"] = round(time.monotonic() - started, 2)
    if rc == 0:
        try:
            online.update(reachable=True, status=json.loads(out)[0]["Status"])
            return online
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            online.update(reason="output", error="etcdctl answered, but not as expected (%s): %s" % (exc, out[:500]))
            return online
    text = (err or "") + (out or "")
    online["etcdctl_output"] = text.strip()[-2000:]
    if guard and rc in (124, 137):
        online.update(reason="killed", error="etcdctl endpoint status on %s did not return within %ds and was "
                      "stopped" % (params["endpoint"], limit))
        return online
    last = [line for line in text.strip().splitlines() if line.strip()][-1:] or ["exit code %d" % rc]
    lowered = text.lower()
    reason, why = next(((r, e) for r, words, e in _CAUSES if any(w in lowered for w in words)),
                       ("error", "see etcdctl_output"))
    online.update(reason=reason, error="%s did not answer etcdctl endpoint status within %ds: %s (%s)"
                  % (params["endpoint"], seconds, why, last[0].strip()[:300]))
    return online


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            depth=dict(type="str", choices=["quick", "full"], default="full"),
            new_address=dict(type="str"),
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
    if not os.path.lexists(path):
        # a member whose data directory is gone (a replaced disk) is a member to rebuild
        module.exit_json(changed=False,
                         member={"path": path, "exists": False, "summary": member.missing("etcd", path)})
    if not os.path.isdir(path):
        module.fail_json(msg="path %s is not a directory" % path)
    try:
        facts = etcd_datadir.inspect_datadir(path, module.params["depth"])
    except (OSError, MemoryError) as exc:
        module.fail_json(msg="cannot read %s: %s" % (path, exc))
    summary = facts.get("summary") or {}
    summary["address_local"] = member.address_is_local(summary.get("address"))
    if module.params["new_address"]:
        summary["new_address_local"] = member.address_is_local(module.params["new_address"])
    result = {"changed": False, "member": facts}
    if module.params["endpoint"]:
        result["online"] = _endpoint_status(module)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
