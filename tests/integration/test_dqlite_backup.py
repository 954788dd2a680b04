"""The online copy of a dqlite member (module dqlite_backup) against the REAL lab: 3 dqlite-demo
members under continuous writes of 8 KB rows (dqlite-demo takes a snapshot every 1,024 entries
and a segment holds ~400 such rows: the member snapshots, closes and removes segments DURING the
copies). Every copy must load (the facts reader's full check) and, started alone on loopback,
hold at least the rows the cluster had acknowledged before the copy began. A member killed in the
middle of a copy is a clear failure and leaves nothing under the copy's name.

The flavor data below (how the go-dqlite demo app starts, is reconfigured and is asked) is what
the backup role passes for the go-dqlite-app flavor.
"""
from __future__ import annotations

import json
import os
import time

import pytest

from conftest import fingerprint, run_ansible

from ansible_collections.quorum.recovery.plugins.module_utils import dqlite_backup as backup
from ansible_collections.quorum.recovery.plugins.module_utils import dqlite_datadir
from ansible_collections.quorum.recovery.plugins.module_utils.refused import Refused

DEMO_FLAVOR = {
    "verify_argv": ["dqlite-demo", "--api", "{api}", "--db", "{address}", "--dir", "{dir}"],
    "verify_query": ["dqlite", "-s", "{address}", "demo", "SELECT COUNT(*) FROM model"],
    "verify_reconfigure_argv": ["dqlite", "-s", "file://{data_dir}/cluster.yaml", "demo",
                                ".reconfigure {data_dir} {yaml}"],
    "verify_data_subdir": "{address}",
}
ROW_SIZE = 8000


def _module(lab, host, args, check=False):
    proc = run_ansible("ansible", host.name, "-m", "quorum.recovery.dqlite_backup", "-a", json.dumps(args),
                       *(["--check"] if check else []), inventory=lab.inventory_path, check=False)
    text = proc.stdout
    result = json.JSONDecoder().raw_decode(text[text.index(" => {") + 4:])[0]
    result["_failed"] = proc.returncode != 0
    return result


def _rows(lab, host):
    """Rows the cluster acknowledged: a count through the leader (a committed read)."""
    proc = lab.exec(host, ["dqlite", "-s", host.dqlite_address, "demo", "SELECT COUNT(*) FROM model"], timeout=60)
    return int(proc.stdout.strip().splitlines()[-1])


def _leader(lab):
    address = lab.dqlite_leader(lab.hosts()[0])
    return next(h for h in lab.hosts() if h.dqlite_address == address)


def _writer(lab, host, prefix):
    return lab.spawn(host, [*lab.client_cmd, "dqlite-put", "--api", host.dqlite_api, "--prefix", prefix,
                            "--count", "1000000", "--size", str(ROW_SIZE)])


def _copies_under_writes(lab, rounds, started_every, tag):
    """Copy the leader's data `rounds` times (in-process, from the host's real path) while a
    writer writes; start every `started_every`-th copy alone. Returns what each copy saw."""
    hosts = lab.hosts()
    leader = _leader(lab)
    src = str(leader.real_path(leader.dqlite_data_dir))
    writer = _writer(lab, hosts[0], "w%s-" % tag)
    seen = []
    try:
        time.sleep(2)
        for number in range(rounds):
            acked = _rows(lab, leader)
            dest = str(leader.real_path("/var/backups/qr-test/%s-%03d" % (tag, number)))
            copied = backup.copy_online(src, dest)
            entry = {"acked": acked, "position": copied["position"], "snapshot": copied["snapshot_index"],
                     "retries": copied["retries"], "files": [f["name"] for f in copied["files"]],
                     "warnings": copied["warnings"]}
            # the copy loads: copy_online ran the full check; it is run again here, on the folder as named
            assert backup.check_copy(os.path.join(dest, "raft"))["log"]["last_index"] == copied["position"]["index"]
            if number % started_every == 0:
                read = backup.verify_started_alone(dest, str(leader.real_path("/var/tmp")), DEMO_FLAVOR["verify_argv"],
                                                   DEMO_FLAVOR["verify_query"], DEMO_FLAVOR["verify_reconfigure_argv"],
                                                   DEMO_FLAVOR["verify_data_subdir"])
                entry["rows"] = read["rows"]
                assert read["isolated"]
                assert read["rows"] >= acked, (number, read, acked)
            seen.append(entry)
    finally:
        lab.stop_spawned(writer, grace=5)
    return seen


def _check_churn(seen):
    snapshots = {entry["snapshot"] for entry in seen}
    closed = [{n for n in entry["files"] if n[5:6].isdigit()} for entry in seen]
    assert len(snapshots) >= 2, "the member took no snapshot between copies: %s" % seen
    assert any(a != b for a, b in zip(closed, closed[1:])), "no segment closed or removed between copies"
    indexes = [entry["position"]["index"] for entry in seen]
    assert indexes == sorted(indexes) and indexes[-1] > indexes[0]
    assert all(entry["rows"] >= entry["acked"] for entry in seen if "rows" in entry)


def test_copies_under_continuous_writes_load_and_start_with_every_acknowledged_row(lab):
    seen = _copies_under_writes(lab, rounds=6, started_every=3, tag="ci")
    _check_churn(seen)
    print(json.dumps([{k: v for k, v in e.items() if k != "files"} for e in seen]))


def test_module_copies_a_running_member_and_verifies_it_started_alone(lab):
    leader = _leader(lab)
    writer = _writer(lab, lab.hosts()[0], "mod-")
    try:
        time.sleep(1)
        acked = _rows(lab, leader)
        args = dict(path=leader.dqlite_data_dir, dest="/var/backups/qr-test/module-1", verify="started",
                    progress_file="/var/tmp/qr-test-progress-1", **DEMO_FLAVOR)
        result = _module(lab, leader, args)
    finally:
        lab.stop_spawned(writer, grace=5)
    assert not result["_failed"], result
    assert result["changed"] and result["rows"] >= acked and result["verified"]["result"] == "ok"
    assert result["verified"]["how"] == "facts-full+dqlite-started-alone"
    dest = leader.real_path("/var/backups/qr-test/module-1")
    manifest = json.loads((dest / "MANIFEST.json").read_text())
    assert manifest["verified"]["rows"] == result["rows"] and manifest["files"] == result["files"]
    phases = [p["phase"] for p in result["progress"]]
    # a round retaken (files moved under the copy) shows as one more copy phase
    assert phases[0] == "copy" and "check" in phases and phases.count("copy") == result["retries"] + 1, phases
    assert not [n for n in os.listdir(dest.parent) if "partial" in n or n.startswith("dqlite-verify-")]


def test_module_check_mode_and_idempotence_on_a_stopped_member(lab):
    host = next(h for h in lab.hosts() if h != _leader(lab))
    lab.service(host, "dqlite", "stop")
    try:
        args = dict(path=host.dqlite_data_dir, dest="/var/backups/qr-test/stopped", verify="facts")
        before = fingerprint(host.real_path(host.dqlite_data_dir), ctime=True)
        shown = _module(lab, host, args, check=True)
        assert shown["changed"] and not shown["_failed"] and "raft/metadata1" in [f["name"] for f in shown["files"]]
        assert not host.real_path("/var/backups/qr-test/stopped").exists()
        made = _module(lab, host, args)
        assert made["changed"] and not made["existed"] and made["verified"]["how"] == "facts-full", made
        again_check = _module(lab, host, args, check=True)
        again = _module(lab, host, args)
        assert not again_check["changed"] and not again["changed"] and again["existed"], again
        assert again["position"] == made["position"] and again["files"] == made["files"]
        assert fingerprint(host.real_path(host.dqlite_data_dir), ctime=True) == before  # the member untouched
        # a dest holding something else is refused, never replaced
        other = dict(args, dest="/var/backups/qr-test/not-a-copy")
        host.real_path("/var/backups/qr-test/not-a-copy").mkdir()
        refused = _module(lab, host, other)
        assert refused["_failed"] and "not a complete copy" in refused["msg"]
    finally:
        lab.service(host, "dqlite", "start")
    lab._wait(lambda: lab._dqlite_settled(lab.hosts(), 3), 60, "dqlite voters")


def test_member_killed_mid_copy_is_a_clear_failure_and_leaves_no_copy(lab):
    host = next(h for h in lab.hosts() if h != _leader(lab))
    src = str(host.real_path(host.dqlite_data_dir))
    dest = host.real_path("/var/backups/qr-test/killed")
    writer = _writer(lab, _leader(lab), "kill-")

    class KillAtFirstChunk:
        killed = False

        def phase(self, name, total=None):
            pass

        def advance(self, count):
            if not self.killed:
                self.killed = True
                lab.kill(host, "dqlite")

    try:
        # a member holds its open segment open once it appends (a freshly restarted, idle one holds
        # nothing open, and then nothing tells it runs): wait until the writes reach it
        lab._wait(lambda: dqlite_datadir.is_running(src)["running"], 30, "dqlite on %s to hold its files" % host.name)
        with pytest.raises(Refused, match="stopped during the copy"):
            backup.copy_online(src, str(dest), progress=KillAtFirstChunk())
    finally:
        lab.stop_spawned(writer, grace=5)
        lab.service(host, "dqlite", "start", check=False)
    assert not dest.exists()
    assert not [n for n in os.listdir(dest.parent) if n.startswith(".killed")]


@pytest.mark.full
def test_many_copies_under_writes_full(lab):
    seen = _copies_under_writes(lab, rounds=80, started_every=4, tag="full")
    _check_churn(seen)
    print(json.dumps({"copies": len(seen), "retries": sum(e["retries"] for e in seen),
                      "snapshots": sorted({e["snapshot"] for e in seen})}))
