#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: etcd_replay
short_description: Build the restore snapshot from a stopped etcd member's whole log, dropping no entry
version_added: 0.1.0
description:
  - Builds, ONCE, on the member the plan chose, the snapshot every member is then restored from,
    keeping every entry of the member's log, also those beyond its persisted HardState commit.
  - C(etcd --force-new-cluster) alone (and every field procedure built on it) applies entries only up
    to the member's persisted HardState commit and drops the ones after it, even when a client was
    told its write succeeded. This module copies C(member) of O(path) to a scratch directory, appends
    to the copy's newest WAL file a HardState whose commit is the last index (term and vote kept, the
    CRC chain continued, a torn tail zeroed), starts etcd with C(--force-new-cluster) on the copy alone,
    on loopback ports, in a network namespace of its own when it can (root, C(unshare), C(nsenter) and
    C(ip)), waits until it has applied O(expected_last_index), saves C(etcdctl snapshot save) to O(dest)
    (temporary name, fsync, rename), stops that etcd (SIGTERM, then SIGKILL, by its PID) and removes the
    copy, always, also when a step fails.
  - Writes a manifest beside O(dest) (O(dest) plus C(.json)) with the snapshot's sha256 and size,
    its revision and key count and the positions it was made from. A O(dest) whose manifest has the
    same O(expected_last_index) and whose sha256 matches is left alone (changed=false), nothing is started.
  - Never writes under O(path). Refuses, changing nothing, when etcd runs on O(path), when O(path) does
    not end at O(expected_last_index) (the plan chose this member for that position), when the etcd the
    inspection predicts would not start on it, or when O(bin_dir) has no etcd or etcdctl.
  - Tested against etcd 3.4.23 and 3.5.16.
  - Long runs can report progress to O(progress_file) for M(quorum.recovery.progress_wait).
author:
  - quorum.recovery maintainers (@quorum-recovery)
extends_documentation_fragment:
  - quorum.recovery.attributes
  - quorum.recovery.progress
attributes:
  check_mode:
    support: full
    details: Inspects O(path) and says what it would do; starts nothing and writes nothing.
  diff_mode:
    support: none
  idempotent:
    support: full
options:
  path:
    description:
      - The chosen member's data directory (etcd's C(--data-dir), holding C(member/wal) and C(member/snap)).
        Read only. The member's etcd must be stopped.
    type: path
    required: true
  dest:
    description: The snapshot file to write (its folder is created). The manifest goes to O(dest) plus C(.json).
    type: path
    required: true
  expected_last_index:
    description: The last log index the plan saw on this member. The module refuses a member that ends elsewhere.
    type: int
    required: true
  bin_dir:
    description: The folder holding the C(etcd) and C(etcdctl) of the member's etcd version.
    type: path
    default: /usr/bin
  scratch:
    description:
      - The folder in which the scratch copy of C(member) is made (a new temporary folder inside it, removed at
        the end). It needs room for a copy of C(member). Defaults to the folder of O(dest).
    type: path
  isolation:
    description:
      - V(auto) starts the scratch etcd in a network namespace of its own when it can, else on free
        127.0.0.1 ports; V(netns) requires the namespace; V(loopback) uses free 127.0.0.1 ports.
      - The copy lists the old peers. Alone with C(--force-new-cluster) it does not call them, and in its own
        namespace it cannot.
    type: str
    choices: [auto, netns, loopback]
    default: auto
  timeout:
    description: Seconds to wait for the scratch etcd to serve and apply O(expected_last_index), and for each etcdctl call.
    type: int
    default: 300
  key_limit:
    description: At most this many keys in RV(keys_touched); RV(more_keys) counts the rest.
    type: int
    default: 100
"""

EXAMPLES = r"""
- name: Build the restore snapshot on the chosen member, keeping the entries beyond its commit
  quorum.recovery.etcd_replay:
    path: /var/lib/etcd
    dest: /var/backups/quorum-recovery/r20261121/replayed.db
    expected_last_index: "{{ plan.winner.last_index }}"
    bin_dir: /usr/local/bin
  register: replay

- name: Say what the replay kept
  ansible.builtin.debug:
    msg: "{{ replay.beyond_commit }} entries beyond the commit kept; revision {{ replay.revision }}"
"""

RETURN = r"""
dest:
  description: The snapshot file.
  returned: always
  type: str
  sample: /var/backups/quorum-recovery/r20261121/replayed.db
manifest:
  description: The manifest file beside O(dest).
  returned: always
  type: str
  sample: /var/backups/quorum-recovery/r20261121/replayed.db.json
sha256:
  description: SHA-256 of the snapshot file (null in check mode).
  returned: always
  type: str
  sample: 5b0e1c3f1a7c0a4e9d58b1d3f5e0a1b2c3d4e5f60718293a4b5c6d7e8f901234
size:
  description: Size of the snapshot file in bytes (null in check mode).
  returned: always
  type: int
  sample: 2125856
revision:
  description: The keyspace revision of the snapshot (null in check mode).
  returned: always
  type: int
  sample: 1503
key_count:
  description: The number of keys in the snapshot's keyspace (C(etcdctl get) over every key; null in check mode).
  returned: always
  type: int
  sample: 1500
applied_index:
  description: The raft index the scratch etcd had applied when the snapshot was saved (null in check mode).
  returned: always
  type: int
  sample: 1512
last_index:
  description: The last index of the member's log (equal to O(expected_last_index)).
  returned: always
  type: int
  sample: 1510
commit_before:
  description: The HardState commit the member had persisted.
  returned: always
  type: int
  sample: 1460
consistent_index:
  description: The member db's consistent_index (null when the db has none).
  returned: always
  type: int
  sample: 1400
beyond_commit:
  description: Entries after RV(commit_before), which C(--force-new-cluster) alone would drop; kept here.
  returned: always
  type: int
  sample: 50
beyond_db:
  description: Entries after what the member's db holds (its consistent_index, or the loaded snapshot).
  returned: always
  type: int
  sample: 110
keys_touched:
  description:
    - The keys written or deleted by the entries after min(RV(commit_before), what the db holds), sorted and
      unique, at most O(key_limit). Keys are UTF-8 text with backslash escapes for other bytes; a deleted range
      is written C([key, range_end\)), C([key, ...\)) when it runs to the end of the keyspace.
    - Both branches of a transaction are listed; which one ran depends on its compares.
  returned: always
  type: list
  elements: str
  sample: ["/registry/pods/default/web-1", "[/tmp/, /tmp0)"]
more_keys:
  description: Keys touched beyond the O(key_limit) listed.
  returned: always
  type: int
  sample: 0
etcd_version:
  description: The version the scratch etcd reported (null in check mode).
  returned: always
  type: str
  sample: 3.5.16
isolated:
  description: True when the scratch etcd ran in a network namespace of its own (null in check mode).
  returned: always
  type: bool
msg:
  description: In check mode, what the module would do.
  returned: in check mode, when a replay would run
  type: str
already_done:
  description: True when O(dest) and its manifest already held this replay, so nothing was started.
  returned: always
  type: bool
appended:
  description: The HardState appended to the copy (file, offset, frame_size, bytes zeroed after it, hard_state).
  returned: when a replay ran
  type: dict
  sample: {"file": "0000000000000000-0000000000000000.wal", "offset": 301224, "frame_size": 24, "zeroed": 0,
           "hard_state": {"term": 2, "vote": 1, "commit": 1510}}
seconds:
  description: How long each step took (copy, start, snapshot, stop).
  returned: when a replay ran
  type: dict
log_tail:
  description: The last lines of the scratch etcd's log.
  returned: on failure, once etcd was started
  type: list
  elements: str
progress:
  description: Each finished phase with its bytes and seconds.
  returned: always
  type: list
  elements: dict
"""

import contextlib
import json
import os
import shutil
import tempfile
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.quorum.recovery.plugins.module_utils import datadir_archive as arch
from ansible_collections.quorum.recovery.plugins.module_utils import etcd_datadir
from ansible_collections.quorum.recovery.plugins.module_utils import etcd_wal_write
from ansible_collections.quorum.recovery.plugins.module_utils import progress as prog
from ansible_collections.quorum.recovery.plugins.module_utils.etcd_scratch import ScratchEtcd
from ansible_collections.quorum.recovery.plugins.module_utils.ondisk import FormatError
from ansible_collections.quorum.recovery.plugins.module_utils.refused import Refused


def _sha256(path, progress):
    progress.phase("sha256", os.path.getsize(path))
    return arch.sha256_file(path, progress)


def _load_manifest(path):
    try:
        with open(path, encoding="utf-8") as handle:
            found = json.load(handle)
        return found if isinstance(found, dict) else None
    except (OSError, ValueError):
        return None


def already_done(dest, manifest_path, expected, progress):
    """The manifest when dest holds this replay already (same expected_last_index, sha256 matches)."""
    manifest = _load_manifest(manifest_path)
    if not manifest or manifest.get("expected_last_index") != expected or not os.path.isfile(dest):
        return None
    if os.path.getsize(dest) != manifest.get("size") or _sha256(dest, progress) != manifest.get("sha256"):
        return None
    return manifest


def _positions(facts):
    log, db = facts["log"], facts.get("db") or {}
    beyond = facts["unapplied"] or {}
    return {"last_index": log["last_index"], "commit_before": (log.get("hard_state") or {}).get("commit"),
            "consistent_index": db.get("consistent_index"), "beyond_commit": beyond.get("beyond_commit"),
            "beyond_db": beyond.get("beyond_db"), "keys_touched": beyond.get("keys", []),
            "more_keys": beyond.get("more_keys", 0)}


# ---------------------------------------------------------------------------- the steps
def _leftovers(folder, names):
    """What the copy leaves out: etcd preallocates its next WAL file (N.tmp) itself, and .broken
    files are what it cut away."""
    return [n for n in names if n.endswith(".broken") or (os.path.basename(folder) == "wal" and n.endswith(".tmp"))]


def _copy_member(path, work, progress):
    source = os.path.join(path, "member")
    progress.phase("copy", sum(os.path.getsize(os.path.join(root, n)) for root, _d, names in os.walk(source)
                               for n in set(names) - set(_leftovers(root, names))))

    def copy(src, dst):
        shutil.copy2(src, dst)
        progress.advance(os.path.getsize(src))
    shutil.copytree(source, os.path.join(work, "member"), copy_function=copy, symlinks=True, ignore=_leftovers)


def _own_name(facts):
    own = [v for v in facts["membership"]["voters"] + facts["membership"]["learners"] if v["id"] == facts["member_id"]]
    return (own[0]["name"] if own else "") or "replay"


def _replay(module, facts, progress, seconds):
    """Copy, append, start, snapshot; returns what the snapshot is. Stops etcd and removes the copy."""
    p = module.params
    dest, expected = p["dest"], p["expected_last_index"]
    scratch = p["scratch"] or os.path.dirname(dest)
    os.makedirs(os.path.dirname(dest), mode=0o700, exist_ok=True)
    os.makedirs(scratch, mode=0o700, exist_ok=True)
    for name in os.listdir(scratch):  # a killed run's scratch copy: our own, never member data
        if name.startswith(".etcd-replay-") and os.path.isdir(os.path.join(scratch, name)):
            shutil.rmtree(os.path.join(scratch, name), ignore_errors=True)
    work = tempfile.mkdtemp(prefix=".etcd-replay-", dir=scratch)
    tmp = "%s.tmp-%d" % (dest, os.getpid())
    etcd, result = None, {}
    try:
        started = time.monotonic()
        _copy_member(p["path"], work, progress)
        data_dir = os.path.join(work, "data")
        os.mkdir(data_dir, 0o700)
        os.rename(os.path.join(work, "member"), os.path.join(data_dir, "member"))
        hard = facts["log"]["hard_state"] or {}
        appended = etcd_wal_write.append_hard_state(os.path.join(data_dir, "member", "wal"), hard.get("term", 0),
                                                    hard.get("vote", 0), expected)
        check = etcd_datadir.inspect_datadir(data_dir, "quick")
        if (check["log"]["hard_state"] or {}).get("commit") != expected or check["wal"]["error"] \
                or check["log"]["last_index"] != expected:
            raise RuntimeError("the copy does not read back with HardState commit %d: %s, WAL error %s"
                               % (expected, check["log"], check["wal"]["error"]))
        seconds["copy"] = round(time.monotonic() - started, 3)
        progress.phase("replay")
        started = time.monotonic()
        etcd = ScratchEtcd(p["bin_dir"], data_dir, _own_name(facts), p["timeout"])
        etcd.start(p["isolation"])
        status = etcd.wait_applied(expected)
        seconds["start"] = round(time.monotonic() - started, 3)
        progress.phase("snapshot")
        started = time.monotonic()
        etcd.etcdctl_json("snapshot", "save", tmp)
        keys = etcd.etcdctl_json("get", "", "--prefix", "--keys-only", "--limit", "1")
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        seconds["snapshot"] = round(time.monotonic() - started, 3)
        result = {"revision": int(keys["header"]["revision"]), "key_count": int(keys.get("count", 0)),
                  "applied_index": status.get("raftAppliedIndex", status.get("raftIndex")),
                  "etcd_version": status.get("version"), "isolated": bool(etcd.netns),
                  "appended": {k: appended[k] for k in ("file", "offset", "frame_size", "zeroed", "hard_state")}}
    except (RuntimeError, OSError, FormatError, ValueError, KeyError) as exc:
        tail = etcd.log_tail() if etcd else None
        for leftover in (tmp, tmp + ".part"):  # etcdctl snapshot save writes NAME.part, then renames it
            if os.path.exists(leftover):
                os.unlink(leftover)
        raise Refused("replay of %s failed: %s" % (p["path"], exc), **({"log_tail": tail} if tail else {}))
    finally:
        started = time.monotonic()
        if etcd:
            etcd.stop()
        shutil.rmtree(work, ignore_errors=True)
        seconds["stop"] = round(time.monotonic() - started, 3)
    result["size"] = os.path.getsize(tmp)
    result["sha256"] = _sha256(tmp, progress)
    return tmp, result


def run(module, progress):
    p = module.params
    dest = p["dest"] = os.path.abspath(p["dest"])
    path, expected = p["path"], p["expected_last_index"]
    manifest_path = dest + ".json"
    done = already_done(dest, manifest_path, expected, progress)
    if done:
        keep = ("sha256", "size", "revision", "key_count", "applied_index", "last_index", "commit_before",
                "consistent_index", "beyond_commit", "beyond_db", "keys_touched", "more_keys", "etcd_version")
        return dict({k: done.get(k) for k in keep}, changed=False, already_done=True, dest=dest,
                    manifest=manifest_path, isolated=done.get("isolated"))
    if os.path.exists(dest) and not os.path.isfile(manifest_path):
        raise Refused("dest %s exists and has no manifest %s: it is not a snapshot this module wrote; move it away "
                      "or choose another dest" % (dest, manifest_path))
    if not os.path.isdir(os.path.join(path, "member")):
        raise Refused("path %s is not an etcd data directory (no %s)" % (path, os.path.join(path, "member")))
    for tool in ("etcd", "etcdctl"):
        if not os.access(os.path.join(p["bin_dir"], tool), os.X_OK):
            raise Refused("bin_dir %s has no executable %s" % (p["bin_dir"], tool))
    running = etcd_datadir.is_running(path)
    if running["running"]:
        raise Refused("etcd is running on path %s (%s); stop it first" % (path, running["evidence"]))
    facts = etcd_datadir.inspect_datadir(path, "quick", p["key_limit"])
    if not facts["prediction"]["starts"]:
        raise Refused("etcd would not start on path %s (%s: %s); the plan should not have chosen it"
                      % (path, facts["prediction"]["outcome"], facts["prediction"]["reason"]))
    positions = _positions(facts)
    if positions["last_index"] != expected:
        raise Refused("path %s ends at index %s, but expected_last_index is %d: the member changed since the plan "
                      "chose it, or the plan chose another member" % (path, positions["last_index"], expected),
                      **positions)
    result = dict(positions, dest=dest, manifest=manifest_path, already_done=False, changed=True, sha256=None,
                  size=None, revision=None, key_count=None, applied_index=None, etcd_version=None, isolated=None)
    if module.check_mode:
        result["msg"] = ("would copy %s/member, append a HardState with commit %d (the member has %s) to the copy, "
                         "start etcd --force-new-cluster on it alone, keep the %s entries beyond the commit, and save "
                         "the snapshot to %s" % (path, expected, positions["commit_before"],
                                                 positions["beyond_commit"], dest))
        return result
    seconds: dict = {}
    tmp, made = _replay(module, facts, progress, seconds)
    result.update(made, seconds=seconds)
    manifest = {k: result[k] for k in ("sha256", "size", "revision", "key_count", "applied_index", "last_index",
                                       "commit_before", "consistent_index", "beyond_commit", "beyond_db",
                                       "keys_touched", "more_keys", "etcd_version", "isolated")}
    manifest.update(expected_last_index=expected, member_id=facts["member_id"], cluster_id=facts["cluster_id"],
                    path=path, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    try:
        # the manifest first: a dest without one is never taken for a finished replay
        arch.write_atomic(manifest_path, json.dumps(manifest, indent=1, sort_keys=True).encode())
        os.rename(tmp, dest)
        arch.fsync_dir(os.path.dirname(dest))
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return result


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            dest=dict(type="path", required=True),
            expected_last_index=dict(type="int", required=True),
            bin_dir=dict(type="path", default="/usr/bin"),
            scratch=dict(type="path"),
            isolation=dict(type="str", choices=["auto", "netns", "loopback"], default="auto"),
            timeout=dict(type="int", default=300),
            key_limit=dict(type="int", default=100, no_log=False),
            **prog.PROGRESS_OPTIONS
        ),
        supports_check_mode=True,
    )
    progress = prog.Progress.for_module(module)
    try:
        # two runs on one member never replay at once: a re-run of a killed playbook waits for the
        # run it left working, then finds its snapshot
        with arch.locked(module.params["path"], progress.waiting, min(progress.interval, 1.0)) \
                if os.path.isdir(module.params["path"]) else contextlib.nullcontext():
            result = run(module, progress)
    except Refused as exc:
        progress.close()
        module.fail_json(msg=str(exc), progress=progress.summary(), **exc.details)
    except OSError as exc:
        progress.close()
        module.fail_json(msg="dest %s: %s" % (module.params["dest"], exc), progress=progress.summary())
    progress.close()
    module.exit_json(progress=progress.summary(), **result)


if __name__ == "__main__":
    main()
