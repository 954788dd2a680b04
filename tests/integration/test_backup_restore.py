"""Recovery FROM a backup (playbooks/recover.yml with recover_from_backup) on the real lab: 3 etcd
members and a backup host (h4, sshd only), real SSH, real ansible-playbook, backups taken by
playbooks/backup.yml and kept only at h4 (off the members).

Whole-cluster loss = every member's etcd killed (power off) and its data moved away: the data
directory is a bind mount inside the host (it cannot be renamed there), so its content (member/)
is moved out of it on the lab's side; the member then has an empty data directory, no log.

The same for dqlite (the lab's go-dqlite app members, flavor go-dqlite-app): every member's
data directory (raft files AND node-local info.yaml/cluster.yaml) moved away whole; the backup's
raft files are put on the winner, which is reconfigured once, and the others restored from it.

CI tier: the whole-cluster loss recovered from the newest off-node backup and a re-run with nothing
to do, etcd and dqlite (tests/unit/test_backup_choice.py covers the rollback refusal of the plan in
CI). Full tier: a rollback refused with nothing changed (etcd and dqlite), a corrupted newest
backup skipped for the previous one (etcd and dqlite), and an encrypted backup (wrong and missing
identity refused with nothing changed, the right one restores).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import time

import pytest

from conftest import REPO, fingerprint, run_ansible
from lab import Lab
from lab.base import DQLITE_DIR, ETCD_DIR
# blab: test_backup's lab fixture (3 etcd members and the backup host h4), used here by name
from test_backup import STATE, STORE, SUBDIR, blab, check_backup, manifests  # noqa: F401  # pylint: disable=unused-import


# What differs between the engines here: the inventory, extra vars, the folder at the backup host
# (CLUSTER/ENGINE, the cluster named after the inventory group), the members' data folder (the
# fingerprints), the journal's name; how every member loses its data and what a restore shows are
# the functions in LOSE and RESTORED below.
ENGINES = {
    "etcd": {"inventory": "etcd_inventory_path", "args": ["-e", "recover_engine=etcd"], "subdir": SUBDIR,
             "data": ETCD_DIR, "journal": "journal-etcd.json"},
    "dqlite": {"inventory": "inventory_path", "args": [], "subdir": "dqlite/dqlite", "data": DQLITE_DIR,
               "journal": "journal.json"},
}


def _store(lab: Lab, engine: str = "etcd"):
    return lab.host("h4").real_path(STORE + "/" + ENGINES[engine]["subdir"])


def _playbook(lab: Lab, name: str, engine: str, extra, check=True, more=()):
    args = list(ENGINES[engine]["args"]) + list(more)
    for item in extra:
        args += ["-e", item if isinstance(item, str) else json.dumps(item)]
    return run_ansible("ansible-playbook", REPO / "playbooks" / name, *args,
                       inventory=getattr(lab, ENGINES[engine]["inventory"]), check=check)


def recover(lab: Lab, tmp_path, *extra, check=True, engine="etcd"):
    return _playbook(lab, "recover.yml", engine, extra, check,
                     ["-e", "recover_confirm=yes", "-e", "recover_controller_dir=%s" % (tmp_path / "controller")])


def take_backup(lab: Lab, *extra, engine="etcd") -> dict:
    before = set(manifests(_store(lab, engine)))
    _playbook(lab, "backup.yml", engine, extra)
    # a backup after a restore (a new cluster ID) keeps the older ones as orphan-NAME: not new backups
    new = sorted(n for n in set(manifests(_store(lab, engine))) - before if not n.startswith("orphan-"))
    assert len(new) == 1, new
    return manifests(_store(lab, engine))[new[0]]


def lose_every_member(lab: Lab) -> None:
    """Power off every member and move its data away (kept on the lab's side, never deleted)."""
    lab.power_off("etcd")
    for host in lab.hosts():
        data = host.real_path(ETCD_DIR)
        os.rename(data / "member", "%s-lost-%d" % (data, time.time_ns()))
        assert os.listdir(data) == [] or all(n.startswith("member.replaced-") for n in os.listdir(data))


def keys_on(lab: Lab, host) -> int:
    said = json.loads(lab.etcdctl(host, "get", "", "--prefix", "--keys-only", "--limit", "1", "-w", "json",
                                  "--consistency", "s").stdout)
    return int(said.get("count", 0))


def assert_restored(lab: Lab, manifest: dict, out: str) -> None:
    assert "backup %s" % manifest["name"] in out
    assert "recovery r" in out and ": COMPLETE" in out, out[-3000:]
    for host in lab.hosts():
        assert keys_on(lab, host) == manifest["position"]["keys"], host.name
        assert lab.check_keys(host, "etcd", 1000, "key").get("ok"), host.name  # every key the lab wrote, by value
        assert sorted(m["name"] for m in lab.etcd_members(host)) == ["h1", "h2", "h3"]


def assert_rollback_refused(proc, newest: dict) -> None:
    """The run failed saying the restore is a rollback, what would be lost, and how to confirm it."""
    assert proc.returncode != 0
    assert "restoring backup %s is a ROLLBACK" % newest["name"] in proc.stdout, proc.stdout[-3000:]
    assert "would be LOST" in proc.stdout
    assert "recover_confirm_rollback=%s" % newest["name"] in proc.stdout


def fingerprints(lab: Lab, engine: str = "etcd") -> dict:
    found = {"h4": fingerprint(lab.host("h4").real_path(STORE))}
    for host in lab.hosts():
        for path in (ENGINES[engine]["data"], STATE):
            real = host.real_path(path)
            found["%s:%s" % (host.name, path)] = fingerprint(real) if real.exists() else {}
    return found


@pytest.mark.full
def test_rollback_without_confirmation_is_refused_and_changes_nothing(blab, tmp_path):
    newest = take_backup(blab)
    for i in range(5):  # the cluster moves on past the backup
        blab.etcdctl(blab.host("h1"), "put", "after-backup-%d" % i, "v")
    # etcd stopped first: a running etcd changes its own files (WAL preallocation, db) whatever the run does
    for host in blab.hosts():
        blab.service(host, "etcd", "stop")
    before = fingerprints(blab)
    try:
        assert_rollback_refused(recover(blab, tmp_path, "recover_from_backup=newest", check=False), newest)
        assert fingerprints(blab) == before
    finally:
        blab.start_etcd(blab.hosts())
    for host in blab.hosts():
        assert keys_on(blab, host) == newest["position"]["keys"] + 5


def test_whole_cluster_loss_recovered_from_the_newest_off_node_backup(blab, tmp_path):
    # the newest backup at h4 (the one the test before took; the cluster has moved on since), else a new one
    manifest = max(manifests(_store(blab)).values(), key=lambda m: m["counter"], default=None) or take_backup(blab)
    assert sorted(m["name"] for m in manifest["membership"]) == ["h1", "h2", "h3"]  # etcd lists members by ID
    lose_every_member(blab)
    out = recover(blab, tmp_path, "recover_from_backup=newest").stdout
    assert "restoring backup %s (counter %d" % (manifest["name"], manifest["counter"]) in out
    assert "from h4:%s" % (STORE + "/" + SUBDIR) in out
    assert_restored(blab, manifest, out)
    # the journal names the backup as the source; a re-run has nothing to do (never restores it again)
    journal = json.loads(blab.host("h1").real_path(STATE + "/" + ENGINES["etcd"]["journal"]).read_text())
    assert journal["plan"]["source"]["step"] == "backup" and journal["plan"]["source"]["backup"] == manifest["name"]
    assert journal["status"] == "complete"
    again = recover(blab, tmp_path, "recover_from_backup=newest").stdout
    assert "nothing to do" in again and "restoring backup" not in again


@pytest.mark.full
def test_encrypted_backup_wrong_identity_refused_right_one_restores(blab, tmp_path):
    identity = tmp_path / "identity.txt"
    subprocess.run(["age-keygen", "-o", str(identity)], capture_output=True, check=True)
    recipient = subprocess.run(["age-keygen", "-y", str(identity)], capture_output=True, text=True,
                               check=True).stdout.strip()
    wrong = tmp_path / "wrong.txt"
    subprocess.run(["age-keygen", "-o", str(wrong)], capture_output=True, check=True)
    manifest = take_backup(blab, {"backup_recipients": [recipient]})
    assert manifest["payload"]["encrypted"]
    lose_every_member(blab)
    before = fingerprints(blab)
    for extra, said in ((wrong, "recover_backup_identity does not decrypt backup %s" % manifest["name"]),
                        (None, "backup %s is encrypted with age" % manifest["name"])):
        given = [{"recover_backup_identity": extra.read_text()}] if extra else []
        proc = recover(blab, tmp_path, "recover_from_backup=newest", *given, check=False)
        assert proc.returncode != 0 and said in proc.stdout, proc.stdout[-3000:]
        assert "nothing was" in proc.stdout
        if extra:
            assert "AGE-SECRET-KEY" not in proc.stdout + proc.stderr
        assert fingerprints(blab) == before
        assert not (tmp_path / "controller" / "backups" / SUBDIR / manifest["name"] / "files").exists()
    proc = recover(blab, tmp_path, "recover_from_backup=newest", {"recover_backup_identity": identity.read_text()})
    assert "AGE-SECRET-KEY" not in proc.stdout + proc.stderr
    assert_restored(blab, manifest, proc.stdout)


# ------------------------------------------------------------------------------------------ dqlite
def lose_every_dqlite_member(lab: Lab) -> dict:
    """Power off every dqlite member and move its whole data directory away (raft files and the
    app's info.yaml and cluster.yaml: nothing of the member is left). Kept on the lab's side."""
    lab.power_off("dqlite")
    moved = {}
    for host in lab.hosts():
        data = host.real_path(host.dqlite_data_dir)
        moved[host.name] = "%s-lost-%d" % (data, time.time_ns())
        os.rename(data, moved[host.name])
        assert not data.exists()
    return moved


def dq_rows(lab: Lab, host) -> int:
    proc = lab.exec(host, ["dqlite", "-s", host.dqlite_address, "demo", "SELECT COUNT(*) FROM model"], check=False,
                    timeout=30)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.strip().splitlines()[-1])


def assert_dqlite_restored(lab: Lab, manifest: dict, out: str) -> None:
    assert "backup %s" % manifest["name"] in out
    assert "recovery r" in out and ": COMPLETE" in out, out[-3000:]
    hosts = lab.hosts()
    nodes = lab.dqlite_nodes(hosts[0])
    assert sorted(n["Address"] for n in nodes) == sorted(h.dqlite_address for h in hosts), nodes
    assert sorted(str(n["ID"]) for n in nodes) == sorted(str(m["id"]) for m in manifest["membership"])
    for host in hosts:
        assert lab.check_keys(host, "dqlite", 1000, "key").get("ok"), host.name  # every row the lab wrote, by value
        assert dq_rows(lab, host) == manifest["verified"]["rows"], host.name  # nothing more, nothing less
    # a new write through one member is read back through every other
    lab.client(hosts[1], "dqlite-put", *lab.client_target(hosts[1], "dqlite"), "--prefix", "after-restore",
               "--count", "3", "--start", "0", "--size", "16")
    for host in hosts:
        assert lab.check_keys(host, "dqlite", 3, "after-restore", size=16).get("ok"), host.name


def test_dqlite_whole_cluster_loss_recovered_from_the_newest_off_node_backup(blab, tmp_path):
    # the backup as test_backup's dqlite test checks it (that test runs in the full tier; this one
    # takes the same backup.yml run and then restores it)
    manifest = check_backup(_store(blab, "dqlite"), take_backup(blab, engine="dqlite")["name"])
    assert manifest["verified"]["how"] == "facts-full+dqlite-started-alone"
    assert manifest["verified"]["rows"] >= 1000  # the lab's 1000 rows, acknowledged before the backup
    names = [f["name"] for f in manifest["files"]]
    assert "node/info.yaml" in names and any(n.startswith("raft/") for n in names)
    lose_every_dqlite_member(blab)
    out = recover(blab, tmp_path, "recover_from_backup=newest", engine="dqlite").stdout
    assert "restoring backup %s (counter %d" % (manifest["name"], manifest["counter"]) in out
    assert "from h4:%s" % (STORE + "/" + ENGINES["dqlite"]["subdir"]) in out
    assert_dqlite_restored(blab, manifest, out)
    journal = json.loads(blab.host("h1").real_path(STATE + "/" + ENGINES["dqlite"]["journal"]).read_text())
    assert journal["plan"]["source"]["step"] == "backup" and journal["plan"]["source"]["backup"] == manifest["name"]
    assert journal["status"] == "complete"
    # the backup's raft files went to the winner only, and the reconfigure ran there only, once
    winner = journal["plan"]["winner"]
    for task in ("Put the backup's raft files in the winner's data directory", "Reconfigure ONCE"):
        section = out.split("TASK [quorum.recovery.recover : %s" % task, 1)[1].split("\nTASK [", 1)[0]
        assert re.findall(r"^(?:changed|ok): \[(\w+)", section, re.M) == [winner], (task, section)
    again = recover(blab, tmp_path, "recover_from_backup=newest", engine="dqlite").stdout
    assert "nothing to do" in again and "restoring backup" not in again


@pytest.mark.full
def test_dqlite_rollback_without_confirmation_is_refused_and_changes_nothing(blab, tmp_path):
    newest = take_backup(blab, engine="dqlite")
    hosts = blab.hosts()
    blab.client(hosts[0], "dqlite-put", *blab.client_target(hosts[0], "dqlite"), "--prefix", "after-backup",
                "--count", "5", "--start", "0", "--size", "16")
    for host in hosts:  # stopped first: a running member changes its own files whatever the run does
        blab.service(host, "dqlite", "stop")
    before = fingerprints(blab, "dqlite")
    try:
        assert_rollback_refused(recover(blab, tmp_path, "recover_from_backup=newest", check=False, engine="dqlite"),
                                newest)
        assert fingerprints(blab, "dqlite") == before
    finally:
        blab.start_all(hosts, "dqlite")  # together: a restarted member waits for a quorum before it serves
    for host in hosts:
        assert blab.check_keys(host, "dqlite", 5, "after-backup", size=16).get("ok"), host.name


LOSE = {"etcd": lose_every_member, "dqlite": lose_every_dqlite_member}
RESTORED = {"etcd": assert_restored, "dqlite": assert_dqlite_restored}


@pytest.mark.full
@pytest.mark.parametrize("engine", ["etcd", "dqlite"])
def test_corrupted_newest_backup_is_skipped_for_the_previous_one(blab, tmp_path, engine):
    previous = take_backup(blab, engine=engine)
    newest = take_backup(blab, engine=engine)
    payload = STORE + "/" + ENGINES[engine]["subdir"] + "/" + newest["payload"]["file"]
    blab.corrupt(blab.host("h4"), payload, offset=newest["payload"]["size"] // 2, flip=1)
    LOSE[engine](blab)
    out = recover(blab, tmp_path, "recover_from_backup=newest", engine=engine).stdout
    assert "WARNING: backup %s is DAMAGED" % newest["name"] in out, out[-3000:]
    assert "previous verified backup %s is restored instead" % previous["name"] in out
    assert "restoring backup %s" % previous["name"] in out
    RESTORED[engine](blab, previous, out)
