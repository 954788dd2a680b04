"""The restore's choice of backup (module_utils/backup_choice.py) on real backups written by
backup_payload.write_backup in a temporary folder (real age for the encrypted ones), and the
plan from a backup (election.make_plan with backup=...)."""
from __future__ import annotations

import os
import subprocess
import time

import pytest

from ansible_collections.quorum.recovery.plugins.module_utils import backup_choice as bc
from ansible_collections.quorum.recovery.plugins.module_utils import backup_payload as bp
from ansible_collections.quorum.recovery.plugins.module_utils import election


def _backup(folder, tmp_path, counter, verified="ok", recipients=None, data=None):
    src = tmp_path / ("snap-%d.db" % counter)
    src.write_bytes(data or os.urandom(4096))
    created = 1764648000 + counter * 3600
    name = bp.backup_name("etcd", "etcd", counter, created)
    return bp.write_backup(str(folder), name, [{"src": str(src), "name": "snapshot.db"}],
                           {"counter": counter, "verified": {"result": verified, "how": "test", "at": "now"}
                            if verified else None, "position": {"term": 2, "index": 100 * counter},
                            "cluster": "etcd", "engine": "etcd", "cluster_id": "9bef102e7ff8238a", "flavor": "etcd",
                            "engine_version": "3.4.23", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created)),
                            "created_epoch": created, "source": {"host": "h1"}}, recipients=recipients)


def _flip(path, offset):
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))


def test_newest_verified_whole_backup_is_chosen_and_a_damaged_one_is_skipped_by_name(tmp_path):
    store = tmp_path / "store" / "etcd" / "etcd"  # DEST/CLUSTER/ENGINE, as backups are kept
    first, second, third = (_backup(store, tmp_path, n) for n in (1, 2, 3))
    unverified = _backup(store, tmp_path, 4, verified="failed")
    assert bc.choose({"h4": bc.walk(str(store), "newest")}, "newest")["name"] == third["name"]
    _flip(store / third["payload"]["file"], third["payload"]["size"] // 2)
    listing = bc.walk(str(store), "newest")
    assert set(listing["checked"]) == {third["name"], second["name"]}  # stopped at the first whole one
    chosen = bc.choose({"h4": listing}, "newest")
    assert chosen["name"] == second["name"] and chosen["newer"] == []
    assert any(third["name"] in w and "DAMAGED" in w and second["name"] in w for w in chosen["warnings"])
    assert chosen["newest"] == third["name"] and unverified["name"] not in chosen["newer"]
    # the same backup whole at another destination is used from there, and said
    other = tmp_path / "controller" / "etcd" / "etcd"
    other.mkdir(parents=True)
    for file_name in (third["payload"]["file"], third["name"] + ".json"):
        (other / file_name).write_bytes((store / file_name).read_bytes())
    _flip(other / third["payload"]["file"], third["payload"]["size"] // 2)  # the copy there is the whole one
    both = bc.choose({"localhost": bc.walk(str(other), "newest"), "h4": listing}, "newest", ["localhost", "h4"])
    assert both["name"] == third["name"] and both["where"] == "localhost"
    assert any("damaged at h4" in w and "whole copy at localhost is used" in w for w in both["warnings"])
    _flip(other / third["payload"]["file"], 7)  # damaged there too: back to the second
    assert bc.choose({"localhost": bc.walk(str(other), "newest"), "h4": listing}, "newest",
                     ["localhost", "h4"])["name"] == second["name"]
    # a named older backup lists the newer whole ones (a rollback)
    named = bc.choose({"h4": bc.walk(str(store), first["name"])}, first["name"])
    assert named["name"] == first["name"] and named["newer"] == [second["name"]]


def test_refusals_name_the_input(tmp_path):
    store = tmp_path / "store" / "etcd" / "etcd"  # DEST/CLUSTER/ENGINE, as backups are kept
    with pytest.raises(bc.ChoiceError, match="recover_from_backup=newest: no verified backup"):
        bc.choose({"h4": bc.walk(str(store), "newest")}, "newest")
    only = _backup(store, tmp_path, 1)
    with pytest.raises(bc.ChoiceError, match="recover_from_backup=etcd-etcd-0000000009-.*: no such backup"):
        bc.choose({"h4": bc.walk(str(store), "etcd-etcd-0000000009-20261202T000000Z")},
                  "etcd-etcd-0000000009-20261202T000000Z")
    _flip(store / only["payload"]["file"], 10)
    with pytest.raises(bc.ChoiceError, match="damaged"):
        bc.choose({"h4": bc.walk(str(store), "newest")}, "newest")


def test_open_plain_and_encrypted_and_a_wrong_or_missing_identity_writes_nothing(tmp_path):
    identity = subprocess.run(["age-keygen"], capture_output=True, text=True, check=True).stdout
    recipient = subprocess.run(["age-keygen", "-y"], input=identity, capture_output=True, text=True,
                               check=True).stdout.strip()
    wrong = subprocess.run(["age-keygen"], capture_output=True, text=True, check=True).stdout
    data = os.urandom(200000)
    store = tmp_path / "store" / "etcd" / "etcd"  # DEST/CLUSTER/ENGINE, as backups are kept
    plain = _backup(store, tmp_path, 1, data=data)
    sealed = _backup(store, tmp_path, 2, recipients=[recipient], data=data)
    out = bc.open_payload(str(store / plain["payload"]["file"]), plain, str(tmp_path / "p"))
    assert out["changed"] and (tmp_path / "p" / "snapshot.db").read_bytes() == data
    assert not bc.open_payload(str(store / plain["payload"]["file"]), plain, str(tmp_path / "p"))["changed"]
    for given, said in ((wrong, "recover_backup_identity does not decrypt"), ("", "is encrypted with age")):
        with pytest.raises(bc.ChoiceError, match=said):
            bc.open_payload(str(store / sealed["payload"]["file"]), sealed, str(tmp_path / "s"), given)
        assert not [n for n in os.listdir(tmp_path) if n == "s" or n.startswith("s.")]  # nothing, not even a partial copy
    bc.open_payload(str(store / sealed["payload"]["file"]), sealed, str(tmp_path / "s"), identity)
    assert (tmp_path / "s" / "snapshot.db").read_bytes() == data


MISSING = {"exists": False, "verdict": "unusable", "engine": "etcd", "problems": []}
BACKUP = {"name": "etcd-etcd-0000000003-20261202T040000Z", "counter": 3, "cluster_id": "c1",
          "position": {"term": 2, "index": 1010, "revision": 1001, "keys": 1000},
          "membership": [{"id": "a%d" % i, "name": "m%d" % i, "address": "http://10.0.0.%d:2380" % i} for i in (1, 2, 3)],
          "source_host": "h2", "newer": [], "confirm_rollback": "",
          "inventory_addresses": {"h%d" % i: "10.0.0.%d" % i for i in (1, 2, 3)}}


def test_plan_from_a_backup_maps_hosts_by_address_and_refuses_a_rollback_unless_confirmed():
    plan = election.make_plan("etcd", {h: MISSING for h in ("h1", "h2", "h3")}, backup=BACKUP)
    assert plan["winner"] == "h2" and plan["source"]["step"] == "backup"
    assert plan["source"]["backup"] == BACKUP["name"] and plan["source"]["expected_last_index"] == 1010
    assert {m["host"]: m["name"] for m in plan["membership"]} == {"h1": "m1", "h2": "m2", "h3": "m3"}
    ahead = {"exists": True, "verdict": "healthy", "engine": "etcd", "last_term": 2, "last_index": 1015,
             "problems": [], "cluster_key": "c1", "member_id": "a1"}
    members = {"h1": ahead, "h2": MISSING, "h3": MISSING}
    with pytest.raises(election.PlanRefused) as refused:
        election.make_plan("etcd", members, backup=BACKUP)
    assert "h1 holds term 2 index 1015" in refused.value.reasons[0] and "1011-1015" in refused.value.reasons[0]
    assert "recover_confirm_rollback=%s" % BACKUP["name"] in refused.value.reasons[0]
    confirmed = election.make_plan("etcd", members, backup=dict(BACKUP, confirm_rollback=BACKUP["name"]))
    assert any("ROLLBACK" in w and "confirmed" in w for w in confirmed["warnings"])
    with pytest.raises(election.PlanRefused, match="older than the newest verified backup"):
        election.make_plan("etcd", {h: MISSING for h in ("h1", "h2", "h3")},
                           backup=dict(BACKUP, newer=["etcd-etcd-0000000004-20261202T050000Z"]))
    # a member of the backup's membership that is neither reachable nor declared lost
    with pytest.raises(election.PlanRefused, match="m3 at http://10.0.0.3:2380 is in backup"):
        election.make_plan("etcd", {"h1": MISSING, "h2": MISSING}, backup=BACKUP)
    lost = election.make_plan("etcd", {"h1": MISSING, "h2": MISSING}, lost=["m3"], backup=BACKUP)
    assert [m["host"] for m in lost["membership"]] == ["h2", "h1"] and lost["lost"][0]["id"] == "a3"


def test_dqlite_plan_from_a_backup_names_the_reconfigure_after_the_backup_and_each_part():
    """dqlite: the winner receives the backup's raft files and appends the reconfigure segment at
    the backup's index + 1 (the same N-N every dqlite recovery names); hosts map to the backup's
    members by their dqlite address (recover_address), whatever their data says."""
    backup = dict(BACKUP, name="dqlite-dqlite-0000000003-20261202T040000Z", cluster_id="1,2,3",
                  position={"term": 4, "index": 2040},
                  membership=[{"id": str(i), "address": "10.0.0.%d:9001" % i, "role": "voter"} for i in (1, 2, 3)])
    missing = dict(MISSING, engine="dqlite")
    hosts = {"h%d" % i: "10.0.0.%d:9001" % i for i in (1, 2, 3)}
    plan = election.make_plan("dqlite", {h: missing for h in hosts}, backup=backup, hosts=hosts)
    assert plan["source"]["step"] == "backup" and plan["source"]["segment"] == "%016d-%016d" % (2041, 2041)
    assert plan["winner"] == "h2"  # the backup's source host
    assert {m["host"]: int(m["id"]) for m in plan["membership"]} == {"h1": 1, "h2": 2, "h3": 3}
    winner = plan["parts"]["h2"]["actions"]
    assert any("receive backup %s's raft files" % backup["name"] in a for a in winner), winner
    assert any("restore h2's raft files" in a for a in plan["parts"]["h1"]["actions"])
    # a member ahead of the backup: a rollback, refused unless confirmed
    ahead = {"exists": True, "verdict": "healthy", "engine": "dqlite", "last_term": 4, "last_index": 2050,
             "problems": [], "member_id": 1, "address": "10.0.0.1:9001"}
    with pytest.raises(election.PlanRefused, match="entries 2041-2050 would be LOST"):
        election.make_plan("dqlite", dict({h: missing for h in hosts}, h1=ahead), backup=backup, hosts=hosts)
