"""recover.yml on REAL broken etcd clusters in the lab (etcd 3.4.23 and 3.5.16, plain and TLS):
real SSH, real ansible-playbook, the real etcd, etcdctl and etcdutl.

Each scenario breaks a fresh lab cluster the way the field reports show, runs the playbook with
`-e recover_engine=etcd` on the lab's etcd inventory, and checks that every key acknowledged
before the break is readable from every surviving member (serializable reads: each member
answers from its own copy), that every member is healthy and on ONE new cluster ID, that the
membership is the planned one, and that the source snapshot was built once. Zero loss under a
power cut with many writers, measured over many runs, is tests/integration/test_etcd_zero_loss.py.

Tiers: the default tier (CI) runs the partitioned-member case on 3.4 and the TLS power cut on
3.5, plus the bad inputs; the rest (marker `full`) runs on both versions in scripts/test-full.
"""
from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import time

import pytest

from conftest import Lab, fingerprint, run_ansible

PLAYBOOK = "playbooks/recover.yml"
STATE_DIR = "/var/backups/quorum-recovery"
ETCD_DIR = "/var/lib/etcd"


@pytest.fixture
def fresh_lab():
    the_lab = Lab()
    try:
        yield the_lab
    finally:
        the_lab.down()


def _recover(lab, *extra, check=True, playbook=PLAYBOOK, args=()):
    argv = [playbook, "-e", "recover_engine=etcd", "-e", "recover_confirm=yes", *args]
    for item in extra:
        argv += ["-e", item if isinstance(item, str) else json.dumps(item)]
    return run_ansible("ansible-playbook", *argv, inventory=lab.etcd_inventory_path, check=check)


def _plan_winner(output):
    match = re.search(r'"winner: (\w+)"', output)
    assert match, output[-3000:]
    return match.group(1)


def _keys(lab, host) -> set:
    proc = lab.etcdctl(host, "get", "", "--prefix", "--keys-only", "--consistency", "s", "-w", "json")
    return {base64.b64decode(kv["key"]).decode() for kv in json.loads(proc.stdout).get("kvs", [])}


def _status(lab, host) -> dict:
    return json.loads(lab.etcdctl(host, "endpoint", "status", "-w", "json").stdout)[0]["Status"]


def _write_acked(lab, host, count=300) -> set:
    """`count` keys written through `host`, each acknowledged before the next: the keys, as the
    lab's client names them."""
    lab.churn(host, "etcd", count, 64, prefix="acked")
    return {"acked%06d" % i for i in range(count)}


def _assert_recovered(lab, survivors, must_have: set, output: str, replayed=True):
    """Every key in must_have on every survivor, every survivor healthy with a leader, one
    cluster ID, the planned membership, the source replayed once."""
    clusters, leaders = set(), set()
    for host in survivors:
        missing = must_have - _keys(lab, host)
        assert not missing, (host.name, len(missing), sorted(missing)[:10])
        status = _status(lab, host)
        clusters.add(status["header"]["cluster_id"])
        leaders.add(status["leader"])
        health = lab.etcdctl(host, "endpoint", "health", check=False)
        assert health.returncode == 0 and "is healthy" in health.stdout + health.stderr, health
    assert len(clusters) == 1 and len(leaders) == 1 and 0 not in leaders, (clusters, leaders)
    members = json.loads(lab.etcdctl(survivors[0], "member", "list", "-w", "json").stdout)["members"]
    assert sorted(m["name"] for m in members) == sorted(h.name for h in survivors), members
    assert sorted(m["peerURLs"][0] for m in members) == sorted(h.etcd_peer_url for h in survivors), members
    # the snapshot every member was restored from was made once, on the winner
    winner = lab.host(_plan_winner(output))
    replays = [p for h in survivors for p in h.real_path(STATE_DIR).glob("*/source.db.json")]
    assert len(replays) == int(replayed) and all(p.is_relative_to(winner.real_path(STATE_DIR)) for p in replays), \
        replays
    assert "recovery r" in output and ": COMPLETE" in output, output[-3000:]


def _data_fingerprint(lab, hosts) -> dict:
    return {(host.name, name): found for host in hosts for name, found in fingerprint(host.real_path(ETCD_DIR)).items()}


def _second_run_changes_nothing(lab):
    again = _recover(lab)
    assert "nothing to do" in again.stdout and re.search(r"changed=0 ", again.stdout), again.stdout[-2000:]


def _partitioned_member_does_not_win(lab):
    hosts = lab.up(3, keys=500)
    h1, h2, h3 = hosts
    majority = {(_status(lab, h) or {}).get("header", {}).get("member_id") for h in (h1, h2)}
    lab.partition(h3)
    # a leader ON the majority side: right after the cut h1 may still name h3, the old leader, and
    # a write then times out ("possibly due to previous leader failure")
    lab._wait(lambda: (_status(lab, h1) or {}).get("leader") in majority - {None}, 60, "a leader on the majority side")
    acked = _write_acked(lab, h1)  # acknowledged while h3 is cut off
    time.sleep(3)  # h3, alone, campaigns: its HardState term rises above every log term
    lab.power_off("etcd")
    lab.heal(h3)
    before = _data_fingerprint(lab, hosts)
    shown = _recover(lab, args=["--check"])
    assert _plan_winner(shown.stdout) in ("h1", "h2"), shown.stdout[-3000:]
    assert _data_fingerprint(lab, hosts) == before, "--check changed a data directory"
    assert not any(h.real_path(STATE_DIR).exists() for h in hosts), "--check wrote a journal"
    proc = _recover(lab)
    assert _plan_winner(proc.stdout) in ("h1", "h2"), "h3 was cut off, yet won:\n" + proc.stdout[-3000:]
    _assert_recovered(lab, hosts, acked, proc.stdout)
    _second_run_changes_nothing(lab)


def test_a_partitioned_member_does_not_win_and_check_mode_changes_nothing(fresh_lab):
    _partitioned_member_does_not_win(fresh_lab)


def test_power_cut_with_tls_on_3_5(fresh_lab):
    lab = fresh_lab
    hosts = lab.up(3, keys=300, etcd_version="3.5", etcd_tls=True)
    cut = lab.power_off_mid_writes(seconds=3)
    assert cut["acknowledged"], cut
    proc = _recover(lab)
    assert "https://" in proc.stdout  # the plan names the members by their TLS peer URLs
    _assert_recovered(lab, hosts, cut["acknowledged"], proc.stdout)
    _second_run_changes_nothing(lab)


VERSIONS = [pytest.param("3.4", id="3.4"), pytest.param("3.5", id="3.5")]


@pytest.mark.full
@pytest.mark.parametrize("version", ["3.5"])
def test_a_partitioned_member_does_not_win_full(version):
    lab = Lab(etcd_version=version)
    try:
        _partitioned_member_does_not_win(lab)
    finally:
        lab.down()


@pytest.mark.full
@pytest.mark.parametrize("version", VERSIONS)
def test_two_of_three_lost_for_good(fresh_lab, version):
    lab = fresh_lab
    hosts = lab.up(3, keys=500, etcd_version=version)
    h1, h2, h3 = hosts
    acked = _write_acked(lab, h1)
    for host in (h2, h3):
        lab.kill(host, "etcd")
        lab.kill(host, "dqlite")
        lab.partition(host)  # gone: no process, no network
    lab.service(h1, "etcd", "stop")
    refused = _recover(lab, check=False)
    assert refused.returncode != 0 and "unreachable and not declared lost: h2, h3" in refused.stdout, \
        refused.stdout[-3000:]
    proc = _recover(lab, {"recover_lost": ["h2", "h3"]})
    assert _plan_winner(proc.stdout) == "h1"
    _assert_recovered(lab, [h1], acked, proc.stdout)


def _first_wal(host):
    wal = host.real_path(ETCD_DIR) / "member" / "wal"
    return sorted(n for n in os.listdir(wal) if n.endswith(".wal"))[0]


@pytest.mark.full
@pytest.mark.parametrize("version", VERSIONS)
def test_a_member_with_a_corrupt_wal_and_one_with_a_corrupt_db(fresh_lab, version):
    lab = fresh_lab
    hosts = lab.up(3, keys=500, etcd_version=version)
    h1, h2, h3 = hosts
    acked = _write_acked(lab, h1)
    lab.power_off("etcd")
    # a CRC break in the middle of h2's log, and a bbolt page of h3's db overwritten
    lab.corrupt(h2, "%s/member/wal/%s" % (ETCD_DIR, _first_wal(h2)), offset=20000, flip=8)
    lab.corrupt(h3, ETCD_DIR + "/member/snap/db", offset=4096 * 6 + 100, flip=64)
    shown = run_ansible("ansible-playbook", "playbooks/inspect.yml", "-e", "recover_engine=etcd",
                        inventory=lab.etcd_inventory_path)
    assert "unusable" in shown.stdout, shown.stdout[-3000:]
    proc = _recover(lab, {"recover_accept_loss": True})
    assert _plan_winner(proc.stdout) == "h1", proc.stdout[-3000:]
    _assert_recovered(lab, hosts, acked, proc.stdout)
    # the damaged directories were moved aside inside the data dir, not deleted
    for host in (h2, h3):
        aside = [n for n in os.listdir(host.real_path(ETCD_DIR)) if n.startswith("member.replaced-")]
        assert len(aside) == 1, (host.name, os.listdir(host.real_path(ETCD_DIR)))


@pytest.mark.full
@pytest.mark.parametrize("version", VERSIONS)
def test_a_member_whose_peer_address_changed(fresh_lab, version):
    lab = fresh_lab
    hosts = lab.up(3, keys=500, etcd_version=version)
    h1, h2, h3 = hosts
    acked = _write_acked(lab, h1)
    lab.power_off("etcd")
    lab.service(h3, "dqlite", "stop")
    new = str(lab.subnet.network_address + 23)
    moved = lab.readdress(h3, new)
    refused = _recover(lab, check=False, args=["--check"])
    assert refused.returncode != 0 and "is not an address of the host any more" in refused.stdout, \
        refused.stdout[-3000:]
    proc = _recover(lab, {"recover_addresses": {"h3": moved.etcd_peer_url}})
    assert moved.etcd_peer_url in proc.stdout
    _assert_recovered(lab, [h1, h2, moved], acked, proc.stdout)


@pytest.mark.full
@pytest.mark.parametrize("version", VERSIONS)
def test_five_members_losing_three(fresh_lab, version):
    lab = fresh_lab
    hosts = lab.up(5, keys=500, etcd_version=version)
    acked = _write_acked(lab, hosts[0])
    for host in hosts[2:]:
        lab.kill(host, "etcd")
        lab.kill(host, "dqlite")
        lab.partition(host)
    for host in hosts[:2]:
        lab.service(host, "etcd", "stop")
    proc = _recover(lab, {"recover_lost": [h.name for h in hosts[2:]]})
    _assert_recovered(lab, hosts[:2], acked, proc.stdout)


@pytest.mark.full
def test_a_raw_db_restore_only_on_opt_in_names_what_it_loses(fresh_lab):
    lab = fresh_lab
    hosts = lab.up(3, keys=300)
    cut = lab.power_off_mid_writes(seconds=3)
    shown = _recover(lab, {"recover_etcd_raw_db": True}, args=["--check"])
    assert "recover_etcd_raw_db: " in shown.stdout and "db is restored as it is" in shown.stdout, shown.stdout[-3000:]
    proc = _recover(lab, {"recover_etcd_raw_db": True})
    winner = lab.host(_plan_winner(proc.stdout))
    assert "copy its db as it is" in proc.stdout
    kept = _keys(lab, winner)
    _assert_recovered(lab, hosts, kept & cut["acknowledged"], proc.stdout, replayed=False)
    lost = re.search(r"the entries (\d+)\.\.(\d+) \((\d+)\) in its WAL are LOST", proc.stdout)
    assert lost or "nothing is lost" in proc.stdout, proc.stdout[-3000:]


# ------------------------------------------------------------------ bad inputs
@pytest.fixture(scope="module")
def etcd_lab():
    the_lab = Lab()
    try:
        the_lab.up(3, keys=200)
        yield the_lab
    finally:
        the_lab.down()


def _etcd_pids(lab) -> dict:
    return {h.name: int((h.private("run") / "qrlab" / "etcd.pid").read_text()) for h in lab.hosts()}


@contextlib.contextmanager
def _frozen(lab):
    """The running cluster, every etcd stopped with SIGSTOP (still running, silent): any change to
    a data directory meanwhile is the playbook's."""
    pids = _etcd_pids(lab)
    try:
        for pid in pids.values():
            os.kill(pid, signal.SIGSTOP)
        yield _data_fingerprint(lab, lab.hosts()), pids
    finally:
        for pid in pids.values():
            os.kill(pid, signal.SIGCONT)


CONFIRM = {"recover_confirm": "yes"}
BAD_INPUTS = [
    ("unknown-flavor", {"recover_flavor": "kubeadmm"}, "recover_flavor=kubeadmm: unknown flavor of etcd; choose one "
     "of etcd, kubeadm (or k3s, rke2, inspect only)"),
    ("k3s-is-inspect-only", {"recover_flavor": "k3s"},
     ("recover_flavor=k3s: this flavor is inspect-only here", "--cluster-reset-restore-path")),
    ("tls-unknown-key", {"recover_etcd_tls": {"ca": "/etc/ca.pem"}}, "recover_etcd_tls="),
    ("tls-relative-path", {"recover_etcd_tls": {"cacert": "ca.pem"}}, "recover_etcd_tls="),
    ("tls-file-missing", {"recover_etcd_tls": {"cacert": "/etc/qrlab/none/ca.pem"}},
     "client TLS file /etc/qrlab/none/ca.pem missing or unreadable"),
    ("client-url-not-a-url", {"recover_client_url": "127.0.0.1:2379"}, "recover_client_url=127.0.0.1:2379"),
    ("bin-dir-relative", {"recover_etcd_bin_dir": "usr/bin"}, "recover_etcd_bin_dir=usr/bin: an absolute path"),
    ("bin-dir-without-etcd", {"recover_etcd_bin_dir": "/var/empty"},
     ("h1: no etcd in recover_etcd_bin_dir=/var/empty", "neither etcdutl nor etcdctl")),
    ("bump-without-support", {"recover_etcd_bump_revision": 1000},
     "/usr/bin/etcdctl has no --bump-revision"),
    ("bump-negative", {"recover_etcd_bump_revision": -7}, "recover_etcd_bump_revision=-7"),
    ("address-not-a-url", {"recover_addresses": {"h2": "10.0.0.7:2380"}},
     "recover_addresses={'h2': '10.0.0.7:2380'}: keys must be hosts of etcd and values peer URL"),
    ("lost-host-port", {"recover_lost": ["10.0.0.7:2380"]}, "recover_lost=['10.0.0.7:2380']: every entry"),
    ("misspelt-tls", {"recover_etcd_tsl": {}}, "unknown variable recover_etcd_tsl, did you mean recover_etcd_tls?"),
    ("tls-a-string", {"recover_etcd_tls": "/etc/ca.pem"}, "recover_etcd_tls"),
]


@pytest.mark.parametrize("extra,message", [b[1:] for b in BAD_INPUTS], ids=[b[0] for b in BAD_INPUTS])
def test_bad_etcd_input_is_refused_by_name_and_nothing_changes(etcd_lab, tmp_path, extra, message):
    lab = etcd_lab
    controller = tmp_path / "controller"
    with _frozen(lab) as (before, pids):
        proc = _recover(lab, dict(extra, recover_controller_dir=str(controller)), check=False)
        output = proc.stdout + proc.stderr
        assert proc.returncode != 0, output[-3000:]
        for part in message if isinstance(message, tuple) else (message,):
            assert part in output, (part, output[-3000:])
        assert _data_fingerprint(lab, lab.hosts()) == before, extra
    assert _etcd_pids(lab) == pids and all(lab.service(h, "etcd", "status", check=False).returncode == 0
                                           for h in lab.hosts()), "etcd was stopped"
    assert not any(h.real_path(STATE_DIR).exists() for h in lab.hosts()) and not controller.exists()


def test_a_lost_name_that_matches_no_member_is_refused_in_check_mode(etcd_lab):
    proc = _recover(etcd_lab, {"recover_lost": ["h9"]}, check=False, args=["--check"])
    assert proc.returncode != 0 and "recover_lost names h9, which is neither an inventory member" in proc.stdout, \
        proc.stdout[-3000:]
