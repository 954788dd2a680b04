#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: etcd_backup
short_description: Save a snapshot of a running etcd member and prove it restores, on that member
version_added: 0.1.0
description:
  - Asks the member at O(endpoint) for its status (cluster ID, member ID, raft term and index, revision,
    version, leader); refuses, writing nothing, when it has no leader (a member that lost quorum serves no
    consistent snapshot).
  - Saves C(etcdctl snapshot save) to a temporary name beside O(dest) (its sha256 taken as the file arrives, not in a
    pass of its own), reads the snapshot's own status
    (revision, hash) and asks the member how many keys the keyspace held AT that revision.
  - With O(verify=true) restores the snapshot into a scratch folder beside O(dest), starts etcd on it alone on
    127.0.0.1 (in a network namespace of its own when it can), reads back its revision and key count, stops it
    by its PID and removes the scratch folder, always. The backup is verified when both equal what the member
    said; otherwise the module fails and O(dest) is not written.
  - Then fsyncs the snapshot and renames it to O(dest) (the folder fsync'd too), so a file under the real name
    is always a complete snapshot. A killed run leaves at most C(dest.tmp-PID) and a scratch folder, which the
    next run removes.
  - Never writes to the member's data directory; the member keeps running.
author:
  - quorum.recovery maintainers (@quorum-recovery)
extends_documentation_fragment:
  - quorum.recovery.attributes
  - quorum.recovery.progress
attributes:
  check_mode:
    support: full
    details: Asks the member for its status and says what it would save; writes nothing.
  diff_mode:
    support: none
  idempotent:
    support: none
    details: Every run saves a new snapshot (that is its purpose).
options:
  dest:
    description: The snapshot file to write (its folder is made, mode 0700).
    type: path
    required: true
  endpoint:
    description: The member's client URL.
    type: str
    required: true
  bin_dir:
    description: The folder with C(etcdctl), C(etcd) (for O(verify)) and C(etcdutl) (3.5+) of the member's version.
    type: path
    default: /usr/bin
  tls:
    description: Client TLS files for etcdctl, keys C(cacert), C(cert), C(key).
    type: dict
    default: {}
  verify:
    description: Restore the snapshot on a scratch copy, start it alone and compare its revision and key count.
    type: bool
    default: true
  timeout:
    description: Seconds for each etcdctl call and for the scratch etcd to serve.
    type: int
    default: 300
"""

EXAMPLES = r"""
- name: Save and verify a snapshot on the member the plan chose
  quorum.recovery.etcd_backup:
    dest: /var/backups/quorum-recovery/backup/work/snapshot.db
    endpoint: https://127.0.0.1:2379
    bin_dir: /usr/local/bin
    tls:
      cacert: /etc/kubernetes/pki/etcd/ca.crt
      cert: /etc/kubernetes/pki/etcd/healthcheck-client.crt
      key: /etc/kubernetes/pki/etcd/healthcheck-client.key
  register: snap
"""

RETURN = r"""
dest:
  description: The snapshot file.
  returned: always
  type: str
sha256:
  description: SHA-256 of the snapshot file (null in check mode).
  returned: always
  type: str
size:
  description: Its size in bytes (null in check mode).
  returned: always
  type: int
revision:
  description: The snapshot's keyspace revision (null in check mode).
  returned: always
  type: int
key_count:
  description: Keys in the keyspace at RV(revision), as the member answered (null in check mode).
  returned: always
  type: int
status:
  description: What the member said before the save (cluster_id and member_id in hex, term, index, revision, version, leader, db_size).
  returned: always
  type: dict
verified:
  description: The verification (at, how, result, details with what the scratch etcd read back), or null.
  returned: always
  type: dict
progress:
  description: Each finished phase with its bytes and seconds.
  returned: always
  type: list
  elements: dict
"""

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.quorum.recovery.plugins.module_utils import datadir_archive as arch
from ansible_collections.quorum.recovery.plugins.module_utils import progress as prog
from ansible_collections.quorum.recovery.plugins.module_utils.etcd_scratch import ScratchEtcd, restore_snapshot
from ansible_collections.quorum.recovery.plugins.module_utils.refused import Refused
from ansible_collections.quorum.recovery.plugins.module_utils.scratch_process import run_watched

SCRATCH_PREFIX = ".etcd-backup-verify-"
STALL_PROBE = 2.0  # seconds without a new byte of the snapshot before the member is asked if it still answers


def _etcdctl_argv(p, *args):
    argv = [os.path.join(p["bin_dir"], "etcdctl"), "--endpoints", p["endpoint"], "--dial-timeout", "5s",
            "--command-timeout", "%ds" % p["timeout"]]
    for key in ("cacert", "cert", "key"):
        if p["tls"].get(key):
            argv += ["--" + key, p["tls"][key]]
    return argv + list(args)


def _etcdctl(p, *args):
    try:
        proc = subprocess.run(_etcdctl_argv(p, *args), capture_output=True, text=True, check=False, timeout=p["timeout"] + 30,
                              env=dict(os.environ, ETCDCTL_API="3"))
    except subprocess.TimeoutExpired:
        raise Refused("etcdctl %s at %s did not answer within %ds" % (args[0], p["endpoint"], p["timeout"] + 30))
    if proc.returncode:
        said = _etcdctl_error(proc.stderr or proc.stdout)
        raise Refused("etcdctl %s at %s failed (%d): %s" % (" ".join(args[:2]), p["endpoint"], proc.returncode, said))
    return proc.stdout


def _json(text, what):
    try:
        return json.loads(text)
    except ValueError:
        raise Refused("%s: not JSON: %s" % (what, text.strip()[:300]))


def member_status(p):
    said = _json(_etcdctl(p, "endpoint", "status", "-w", "json"), "endpoint status")
    status = said[0]["Status"] if isinstance(said, list) and said else {}
    header = status.get("header", {})
    found = {"cluster_id": "%x" % header.get("cluster_id", 0), "member_id": "%x" % header.get("member_id", 0),
             "term": int(status.get("raftTerm", 0)), "index": int(status.get("raftIndex", 0)),
             "revision": int(header.get("revision", 0)), "version": status.get("version"),
             "leader": "%x" % status.get("leader", 0), "db_size": int(status.get("dbSize", 0))}
    if not status.get("leader"):
        raise Refused("the member at %s has no leader (%s): no consistent snapshot can be saved from it; nothing "
                      "was written" % (p["endpoint"], found))
    return found


def _snapshot_status(p, path):
    for tool in ("etcdutl", "etcdctl"):
        exe = os.path.join(p["bin_dir"], tool)
        if os.access(exe, os.X_OK):
            proc = subprocess.run([exe, "snapshot", "status", path, "-w", "json"], capture_output=True, text=True,
                                  check=False, env=dict(os.environ, ETCDCTL_API="3"))
            if proc.returncode:
                raise Refused("%s snapshot status %s failed: %s" % (tool, path, (proc.stderr or proc.stdout)[-500:]))
            return _json(proc.stdout, "snapshot status")
    raise Refused("bin_dir=%s has neither etcdutl nor etcdctl" % p["bin_dir"])


def _count_at(p, revision):
    said = _json(_etcdctl(p, "get", "", "--prefix", "--keys-only", "--limit", "1", "--rev", str(revision),
                          "-w", "json"), "get --rev")
    return int(said.get("count", 0))


def verify_snapshot(bin_dir, snapshot, work_parent, revision, keys, timeout):
    """Restore `snapshot` on a scratch folder inside work_parent, start it alone, read revision
    and key count; the verification record. Stops etcd and removes the folder, always."""
    work = tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=work_parent)
    etcd = None
    started = time.monotonic()
    try:
        data = os.path.join(work, "data")
        restore_snapshot(bin_dir, snapshot, data, "verify", [("verify", "http://127.0.0.1:2380")],
                         "quorum-recovery-verify", "http://127.0.0.1:2380")
        etcd = ScratchEtcd(bin_dir, data, "verify", timeout)
        etcd.start("auto")
        etcd.wait_applied(0)
        said = etcd.etcdctl_json("get", "", "--prefix", "--keys-only", "--limit", "1")
        read = {"revision": int(said["header"]["revision"]), "keys": int(said.get("count", 0)),
                "isolated": bool(etcd.netns)}
    except (RuntimeError, OSError, ValueError, KeyError) as exc:
        tail = etcd.log_tail() if etcd else []
        raise Refused("the snapshot did not restore and start on a scratch copy: %s %s" % (exc, " | ".join(tail[-5:])))
    finally:
        if etcd:
            etcd.stop()
        shutil.rmtree(work, ignore_errors=True)  # our own scratch copy
    ok = read["revision"] == revision and read["keys"] == keys
    return {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "how": "etcd-restored-and-started-alone",
            "result": "ok" if ok else "failed", "seconds": round(time.monotonic() - started, 3),
            "details": {"read_back": read, "expected": {"revision": revision, "keys": keys}}}


def _size(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _etcdctl_error(text):
    """What etcdctl said went wrong: its Error line and the errors of its JSON log lines, without
    the rest of the log or a Go stack trace."""
    said = []
    for line in (raw.strip() for raw in text.splitlines()):
        if line.startswith("{"):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("level") in ("warn", "error", "fatal") and record.get("error"):
                said.append("%s (%s)" % (record.get("msg", ""), record["error"]))
        elif line.startswith("Error") or "rpc error" in line:
            said.append(line)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return "; ".join(dict.fromkeys(said) or lines[-3:])[-800:]


class _Hasher:
    """sha256 of the file etcdctl is writing, read as it grows (etcdctl appends to PATH.part, then
    renames it to PATH: the same file), so the digest is ready when the save ends instead of taking
    a pass of its own; the pages are still in the cache."""

    def __init__(self, tmp):
        self.tmp, self.handle, self.digest, self.size = tmp, None, hashlib.sha256(), 0

    def catch_up(self):
        if self.handle is None:
            for path in (self.tmp + ".part", self.tmp):
                try:
                    self.handle = open(path, "rb")  # pylint: disable=consider-using-with
                    break
                except OSError:
                    continue
            else:
                return 0
        for chunk in iter(lambda: self.handle.read(arch.CHUNK), b""):
            self.digest.update(chunk)
            self.size += len(chunk)
        return self.size

    def close(self):
        if self.handle:
            self.handle.close()


def _save(p, tmp, progress):
    """etcdctl snapshot save to tmp, hashed as it arrives; returns its sha256. The bytes received
    are the progress. Whenever no byte arrived for
    STALL_PROBE seconds the member is asked whether it still answers: etcdctl would wait for a
    member that died (killed, stopped, its host down) until `timeout`, so after two unanswered
    questions in a row it is ended and the save fails at once, saying that the member went away."""
    state = {"got": 0, "unanswered": 0, "quiet_since": time.monotonic()}
    deadline = time.monotonic() + p["timeout"] + 30

    hasher = _Hasher(tmp)

    def tick():
        now = hasher.catch_up()
        if now > state["got"]:
            progress.advance(now - state["got"])
            state.update(got=now, unanswered=0, quiet_since=time.monotonic())
        elif time.monotonic() > deadline:
            return "etcdctl snapshot save did not finish within %ds" % (p["timeout"] + 30)
        elif time.monotonic() - state["quiet_since"] >= STALL_PROBE:
            state["quiet_since"] = time.monotonic()
            try:
                member_status(dict(p, timeout=5))
                state["unanswered"] = 0
            except Refused as probe:
                state["unanswered"] += 1
                if state["unanswered"] >= 2:
                    return "it answers no more: %s" % probe
        return None

    try:
        returncode, stderr, gone = run_watched(_etcdctl_argv(p, "snapshot", "save", tmp),
                                               dict(os.environ, ETCDCTL_API="3"), tick)
        if not returncode and not gone:
            hashed = hasher.catch_up()  # the rest, from the renamed file (the same one)
            if hashed != _size(tmp):
                raise Refused("the snapshot %s has %d bytes, but %d were read while etcdctl wrote it; nothing was "
                              "written" % (tmp, _size(tmp), hashed))
            progress.advance(hashed - state["got"])
            return hasher.digest.hexdigest()
    finally:
        hasher.close()
    said = _etcdctl_error(stderr)
    got = max(state["got"], _size(tmp + ".part"), _size(tmp))  # etcdctl removes its .part when it fails
    if returncode and not gone:
        try:
            member_status(dict(p, timeout=5))
        except Refused as probe:
            gone = "etcdctl said: %s; and the member answers no more: %s" % (said, probe)
    if gone:
        raise Refused("the member at %s went away while its snapshot was being saved (%d bytes received): it died, "
                      "was stopped or lost its leader; %s; the partial snapshot was removed, no backup was written"
                      % (p["endpoint"], got, gone))
    if returncode:
        raise Refused("etcdctl snapshot save at %s failed (%d) after %d bytes: %s; the partial snapshot was removed, "
                      "no backup was written" % (p["endpoint"], returncode, got, said))


def _remove_leftovers(dest):
    folder = os.path.dirname(dest)
    for name in os.listdir(folder):
        if name.startswith(SCRATCH_PREFIX) and os.path.isdir(os.path.join(folder, name)):
            shutil.rmtree(os.path.join(folder, name), ignore_errors=True)  # a killed run's scratch copy
    for name in os.listdir(folder):  # a killed run's etcdctl partial file, dest.tmp-PID.part
        if name.startswith(os.path.basename(dest) + ".tmp-") and name.endswith(".part"):
            os.unlink(os.path.join(folder, name))
    return arch.remove_stale_temporaries(dest)


def run(module, progress):
    p = module.params
    for tool in ["etcdctl"] + (["etcd"] if p["verify"] else []):
        if not os.access(os.path.join(p["bin_dir"], tool), os.X_OK):
            raise Refused("bin_dir=%s has no %s; nothing was written" % (p["bin_dir"], tool))
    status = member_status(p)
    result = dict(dest=p["dest"], sha256=None, size=None, revision=None, key_count=None, status=status, verified=None)
    if module.check_mode:
        return dict(result, changed=True, msg="would save a snapshot of %s (revision %d) to %s"
                    % (p["endpoint"], status["revision"], p["dest"]))
    folder = os.path.dirname(p["dest"])
    os.makedirs(folder, mode=0o700, exist_ok=True)
    with arch.locked(folder):
        _remove_leftovers(p["dest"])
        tmp = "%s.tmp-%d" % (p["dest"], os.getpid())
        try:
            progress.phase("snapshot save", status["db_size"] or None)
            digest = _save(p, tmp, progress)
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            said = _snapshot_status(p, tmp)
            revision = int(said["revision"])
            keys = _count_at(p, revision)
            size = os.path.getsize(tmp)
            verified = None
            if p["verify"]:
                progress.phase("verify")
                verified = verify_snapshot(p["bin_dir"], tmp, folder, revision, keys, p["timeout"])
                if verified["result"] != "ok":
                    raise Refused("the snapshot read back as %s on a scratch etcd, the member said %s; nothing was "
                                  "written" % (verified["details"]["read_back"], verified["details"]["expected"]))
            os.rename(tmp, p["dest"])
            arch.fsync_dir(folder)
        finally:
            for ours in (tmp, tmp + ".part"):  # etcdctl writes PATH.part, then renames it to PATH
                if os.path.exists(ours):
                    os.unlink(ours)  # our own partial snapshot, never a real name
    return dict(result, changed=True, sha256=digest, size=size, revision=revision, key_count=keys,
                snapshot_hash=said.get("hash"), verified=verified)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            dest=dict(type="path", required=True),
            endpoint=dict(type="str", required=True),
            bin_dir=dict(type="path", default="/usr/bin"),
            tls=dict(type="dict", default={}),
            verify=dict(type="bool", default=True),
            timeout=dict(type="int", default=300),
            **prog.PROGRESS_OPTIONS,
        ),
        supports_check_mode=True,
    )
    progress = prog.Progress.for_module(module)
    try:
        result = run(module, progress)
    except (Refused, OSError) as exc:
        progress.close()
        module.fail_json(msg="%s: %s" % (module.params["endpoint"], exc), progress=progress.summary())
    progress.close()
    module.exit_json(progress=progress.summary(), **result)


if __name__ == "__main__":
    main()
