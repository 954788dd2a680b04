"""etcd_replay against REAL etcd 3.4.23 and 3.5.16, run by real `ansible` on localhost.

The member is made by real etcd (tests/etcd_solo.py): 500 puts, a crash, 50 more puts, a delete,
a range delete and a transaction, a crash; its db is put back to the one of the first crash (a db
behind its WAL, as a crash inside etcd's 100 ms batch leaves it) and a HardState with a commit 10
entries past the db is appended, as a member that did not hear of the last commits persists it.

Oracles: plain `etcd --force-new-cluster` on a copy (loses the keys beyond the commit and brings
back the deleted ones); the snapshot restored by the version's own tool (`etcdctl snapshot restore`
on 3.4, `etcdutl` on 3.5) and served by etcd, read key by key; `snapshot status` for the revision;
sha256 of the file; the member directory's bytes and mtimes before and after.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time

import pytest

from conftest import run_ansible
from conftest import fingerprint
from etcd_solo import ENGINES, VERSIONS, Solo, member_behind

from ansible_collections.quorum.recovery.plugins.module_utils import etcd_datadir, etcd_wal_write

pytestmark = pytest.mark.skipif(not all((b / "etcd").exists() for b in ENGINES.values()),
                                reason="etcd 3.4 and 3.5 binaries are not installed")


@pytest.fixture(scope="module")
def inventory(tmp_path_factory):
    path = tmp_path_factory.mktemp("inventory") / "hosts"
    path.write_text("localhost ansible_connection=local ansible_python_interpreter=%s\n"
                    % os.path.realpath(os.sys.executable))
    return path


def replay(inventory, check=False, **args):
    """The module through `ansible`: (ok, result)."""
    extra = ["--check"] if check else []
    proc = run_ansible("ansible", "localhost", "-o", *extra, "-m", "quorum.recovery.etcd_replay", "-a",
                       json.dumps({k: str(v) for k, v in args.items()}), inventory=inventory, check=False)
    line = next(line for line in proc.stdout.splitlines() if line.startswith("localhost | "))
    return " | FAILED" not in line, json.loads(line[line.index("{"):])


@pytest.fixture(scope="module", params=sorted(ENGINES))
def member(request, tmp_path_factory):
    """A member whose last 45 entries are beyond its HardState commit and 55 beyond its db."""
    version = request.param
    root = tmp_path_factory.mktemp("etcd-%s" % version)
    made = member_behind(root, version)
    facts = etcd_datadir.inspect_datadir(str(made["data"]), "quick")
    hard = facts["log"]["hard_state"]
    commit = facts["db"]["consistent_index"] + made["committed_tail"]
    etcd_wal_write.append_hard_state(str(made["data"] / "member" / "wal"), hard["term"], hard["vote"], commit)
    made.update(version=version, root=root, commit=commit, last_index=facts["log"]["last_index"],
                consistent_index=facts["db"]["consistent_index"])
    return made


def _restore_and_read(member, snapshot, where):
    """Restore the snapshot with the version's own tool, serve it, and read every key."""
    bin_dir = member["bin_dir"]
    tool = [str(bin_dir / "etcdutl")] if member["version"] != "3.4" else [str(bin_dir / "etcdctl")]
    subprocess.run(tool + ["snapshot", "restore", str(snapshot), "--data-dir", str(where), "--name", "r",
                           "--initial-cluster", "r=http://127.0.0.1:1", "--initial-advertise-peer-urls",
                           "http://127.0.0.1:1"], check=True, capture_output=True, timeout=120,
                   env=dict(os.environ, ETCDCTL_API="3"))
    with Solo(bin_dir, where, name="r") as etcd:
        status = etcd.wait()
        return etcd.keys(), status


def _snapshot_status(member, snapshot):
    bin_dir = member["bin_dir"]
    tool = str(bin_dir / ("etcdutl" if member["version"] != "3.4" else "etcdctl"))
    out = subprocess.run([tool, "snapshot", "status", "-w", "json", str(snapshot)], check=True, capture_output=True,
                         text=True, timeout=60, env=dict(os.environ, ETCDCTL_API="3")).stdout
    return json.loads(out)


def test_replay_keeps_every_entry_that_force_new_cluster_drops(member, inventory, tmp_path):
    data, expected, version = member["data"], member["expected"], member["version"]
    last, commit = member["last_index"], member["commit"]
    before = fingerprint(data)

    # what the files say lies beyond, read by the key parser from the entries real etcd wrote
    summary = etcd_datadir.inspect_datadir(str(data), "quick", key_limit=1000)["summary"]["unapplied"]
    assert summary["beyond_commit"] == last - commit == 45 and summary["beyond_db"] == 55, summary
    touched = set(summary["keys"])
    assert {k.decode("utf-8", "backslashreplace") for k in member["late"]} <= touched
    assert {"/gone/a", "/gone/b", "[/range/, /range0)", "/txn/\\xff"} <= touched

    # (a) plain --force-new-cluster on a copy: the entries beyond the commit are gone
    plain_dir = tmp_path / "plain"
    shutil.copytree(data, plain_dir)
    with Solo(ENGINES[version], plain_dir, force_new_cluster=True) as plain:
        plain.wait()
        plain_keys = plain.keys()
    lost = set(expected) - set(plain_keys)
    assert lost and lost <= set(member["late"]), "plain force-new-cluster kept everything: no case to test"
    assert b"/gone/a" in plain_keys, "the delete beyond the commit should be lost too (the key comes back)"

    # (b) check mode: says what it would do, writes nothing
    out = tmp_path / "out"
    args = dict(path=data, dest=out / "replayed.db", expected_last_index=last, bin_dir=ENGINES[version])
    ok, dry = replay(inventory, check=True, **args)
    assert ok and dry["changed"] is True and dry["sha256"] is None, dry
    assert "commit %d" % last in dry["msg"] and "keep the %d entries" % (last - commit) in dry["msg"]
    assert (dry["last_index"], dry["commit_before"], dry["beyond_commit"]) == (last, commit, last - commit)
    assert not out.exists(), "check mode wrote something"

    # the replay
    started = time.monotonic()
    ok, done = replay(inventory, **args)
    took = time.monotonic() - started
    assert ok and done["changed"] is True and done["already_done"] is False, done
    assert done["etcd_version"] == VERSIONS[version] and done["isolated"] is (os.geteuid() == 0)
    assert done["applied_index"] >= last and done["last_index"] == last
    assert (done["commit_before"], done["beyond_commit"], done["beyond_db"]) == (commit, last - commit, 55)
    assert done["consistent_index"] == member["consistent_index"]
    assert done["appended"]["hard_state"]["commit"] == last
    assert done["key_count"] == len(expected)
    snapshot = out / "replayed.db"
    with open(snapshot, "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()
    manifest = json.loads((out / "replayed.db.json").read_text())
    assert digest == done["sha256"] == manifest["sha256"] and snapshot.stat().st_size == done["size"] == manifest["size"]
    assert manifest["expected_last_index"] == last and manifest["revision"] == done["revision"]
    assert manifest["beyond_commit"] == last - commit and manifest["etcd_version"] == VERSIONS[version]
    assert sorted(os.listdir(out)) == ["replayed.db", "replayed.db.json"], "scratch copy or temporary file left"
    status = _snapshot_status(member, snapshot)
    assert status["revision"] == done["revision"], status
    assert done["size"] % 512 == 32, "etcdctl snapshot save appends a 32-byte sha256 trailer"
    restored, served = _restore_and_read(member, snapshot, tmp_path / "restored")
    assert restored == expected, "keys differ: missing %s, extra %s" % (
        sorted(set(expected) - set(restored))[:10], sorted(set(restored) - set(expected))[:10])
    assert served["header"]["revision"] == done["revision"]
    print("\n%s: replay of %d entries (%d beyond the commit) into %d keys took %.1f s in ansible (%s)"
          % (version, last, last - commit, len(expected), took, done["seconds"]))

    # idempotent: the second run, and its check mode, start nothing and change nothing
    mtime = snapshot.stat().st_mtime_ns
    ok, again = replay(inventory, **args)
    assert ok and again["changed"] is False and again["already_done"] is True and again["sha256"] == digest, again
    ok, again_dry = replay(inventory, check=True, **args)
    assert ok and again_dry["changed"] is False
    assert snapshot.stat().st_mtime_ns == mtime
    assert fingerprint(data) == before, "the module changed the member's data directory"


def test_bad_inputs_fail_naming_the_input_and_change_nothing(member, inventory, tmp_path):
    data, version, last = member["data"], member["version"], member["last_index"]
    before = fingerprint(data)
    out = tmp_path / "out"
    base = dict(path=data, dest=out / "replayed.db", expected_last_index=last, bin_dir=ENGINES[version])

    ok, missing = replay(inventory, **{**base, "path": tmp_path / "nothing-here"})
    assert not ok and "path %s" % (tmp_path / "nothing-here") in missing["msg"], missing

    ok, wrong = replay(inventory, **{**base, "expected_last_index": last - 3})
    assert not ok and "expected_last_index is %d" % (last - 3) in wrong["msg"] and str(data) in wrong["msg"], wrong
    assert "ends at index %d" % last in wrong["msg"]

    empty = tmp_path / "empty-bin"
    empty.mkdir()
    ok, no_etcd = replay(inventory, **{**base, "bin_dir": empty})
    assert not ok and "bin_dir %s has no executable etcd" % empty in no_etcd["msg"], no_etcd

    busy = tmp_path / "busy"
    shutil.copytree(data, busy)
    with Solo(ENGINES[version], busy) as etcd:  # the copy, restarted as the member it is
        etcd.wait()
        ok, running = replay(inventory, **{**base, "path": busy})
    assert not ok and "etcd is running on path %s" % busy in running["msg"], running

    assert not out.exists(), "a refused run wrote something"
    assert fingerprint(data) == before


@pytest.mark.full
def test_replay_on_loopback_ports_without_a_namespace(member, inventory, tmp_path):
    """The fallback when no network namespace can be made: free 127.0.0.1 ports."""
    out = tmp_path / "out"
    ok, done = replay(inventory, path=member["data"], dest=out / "replayed.db", expected_last_index=member["last_index"],
                      bin_dir=ENGINES[member["version"]], isolation="loopback")
    assert ok and done["isolated"] is False and done["key_count"] == len(member["expected"]), done
    restored, _status = _restore_and_read(member, out / "replayed.db", tmp_path / "restored")
    assert restored == member["expected"]


def test_a_failing_or_hanging_scratch_etcd_is_stopped_and_its_copy_removed(member, inventory, tmp_path):
    """An etcd that dies at once, and one that never serves: the module fails with the log's tail,
    ends the process by its PID, and leaves no scratch copy, temporary snapshot or manifest."""
    real = ENGINES[member["version"]]
    for case, body, timeout in (("dies", 'echo "boom: cannot start" >&2; exit 3', 30),
                                ("hangs", 'echo $$ > "%s"; exec sleep 600' % (tmp_path / "hangs.pid"), 3)):
        bin_dir = tmp_path / case
        bin_dir.mkdir()
        (bin_dir / "etcd").write_text("#!/bin/sh\n%s\n" % body)
        (bin_dir / "etcd").chmod(0o755)
        (bin_dir / "etcdctl").symlink_to(real / "etcdctl")
        out = tmp_path / ("out-" + case)
        started = time.monotonic()
        ok, failed = replay(inventory, path=member["data"], dest=out / "replayed.db", bin_dir=bin_dir,
                            expected_last_index=member["last_index"], timeout=timeout)
        assert not ok and "replay of %s failed" % member["data"] in failed["msg"], failed
        assert os.listdir(out) == [], "left behind: %s" % os.listdir(out)
        if case == "dies":
            assert "exited with code 3" in failed["msg"] and any("boom" in line for line in failed["log_tail"])
        else:
            assert "did not serve" in failed["msg"] and time.monotonic() - started < 60
            pid = int((tmp_path / "hangs.pid").read_text())
            assert not os.path.exists("/proc/%d" % pid) or "sleep" not in open("/proc/%d/cmdline" % pid).read(), \
                "the hanging etcd (pid %d) was not stopped" % pid
