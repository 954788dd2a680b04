"""The lab is real: SSH, private directories, etcd and dqlite clusters, data, and faults."""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, etcd_variant, run_ansible

PRIVATE_DIRS = ["/var/lib/etcd", "/var/snap/microk8s/current/var/kubernetes",
                "/var/snap/microk8s/current/var/kubernetes/backend", "/run", "/etc/qrlab",
                "/root", "/tmp", "/var/tmp", "/var/backups"]


def test_ansible_ping_reaches_every_host_over_ssh(lab):
    proc = run_ansible("ansible", "all", "-m", "ansible.builtin.ping", "-o", inventory=lab.inventory_path)
    assert sorted(re.findall(r"^(h\d) \| SUCCESS .*\"pong\"", proc.stdout, re.M)) == ["h1", "h2", "h3"]
    # and each answer comes from inside that host's own network namespace
    proc = run_ansible("ansible", "all", "-m", "ansible.builtin.command", "-a", "ip -4 -o addr show dev eth0",
                       "-o", inventory=lab.inventory_path)
    seen = dict(re.findall(r"^(h\d) \| CHANGED \| rc=0 \| \(stdout\) .* inet ([\d.]+)/", proc.stdout, re.M))
    assert seen == {h.name: h.address for h in lab.hosts()}, proc.stdout


def test_each_host_sees_only_its_own_private_dirs(lab):
    run_ansible("ansible-playbook", REPO / "tests/integration/playbooks/private_dirs.yml",
                "-e", "{\"private_dirs\": %s}" % str(PRIVATE_DIRS).replace("'", '"'), inventory=lab.inventory_path)
    for host in lab.hosts():
        for path in PRIVATE_DIRS:
            marker = host.real_path(path + "/qrlab-marker")
            assert marker.read_text().strip() == host.name, marker
    for path in PRIVATE_DIRS:  # nothing leaked into the machine's own paths
        assert not Path(path, "qrlab-marker").exists(), path


def test_etcd_has_every_member_started_and_one_leader(lab):
    hosts = lab.hosts()
    members = lab.etcd_members(hosts[0])
    assert sorted(m["name"] for m in members) == [h.name for h in hosts]
    assert all(m.get("clientURLs") for m in members), members  # started, not only added
    statuses = [lab.etcd_status(h) for h in hosts]
    leaders = {s["leader"] for s in statuses}
    assert len(leaders) == 1
    assert leaders.pop() in {s["header"]["member_id"] for s in statuses}


def test_dqlite_has_every_member_as_voter(lab):
    for host in lab.hosts():
        nodes = lab.dqlite_nodes(host)
        assert sorted(n["Address"] for n in nodes if n["Role"] == "voter") == [h.dqlite_address for h in lab.hosts()]
    assert lab.dqlite_leader(lab.hosts()[1]) in [h.dqlite_address for h in lab.hosts()]


def test_every_member_serves_every_key(lab):
    for host in lab.hosts():
        for engine in ("etcd", "dqlite"):
            result = lab.check_keys(host, engine, 1000)
            assert result["ok"] and result["found"] == 1000, (host.name, engine, result)
    # the check can fail: a key range that was never written is reported missing
    result = lab.check_keys(lab.hosts()[0], "etcd", 5, prefix="never-written")
    assert not result["ok"] and result["missing"] == 5


def test_kill_is_a_power_loss_and_the_member_comes_back(lab):
    h1, h2, h3 = lab.hosts()
    for engine in ("etcd", "dqlite"):
        pid = int(h3.private("run").joinpath("qrlab/%s.pid" % engine).read_text())
        lab.kill(h3, engine)
        assert not lab._alive(pid)
        assert lab.service(h3, engine, "status", check=False).returncode == 3
    assert lab.etcd_status(h3) is None
    assert lab.etcd_ready([h1, h2])  # two of three keep quorum
    lab.service(h3, "etcd", "start")
    lab.service(h3, "dqlite", "start")
    lab._wait(lambda: lab.etcd_ready(lab.hosts()), 30, "etcd back")
    assert lab.check_keys(h3, "dqlite", 1000)["ok"]


def test_partition_makes_a_peer_unreachable_and_heal_brings_it_back(lab):
    h1, h2 = lab.hosts()[:2]
    probe = ["python3", "-c", "import socket,sys; socket.create_connection((sys.argv[1], 22), 2)", h2.address]
    assert lab.exec(h1, probe, check=False).returncode == 0
    lab.partition(h2)
    try:
        assert lab.exec(h1, probe, check=False).returncode != 0
    finally:
        lab.heal(h2)
    lab._wait(lambda: lab.exec(h1, probe, check=False).returncode == 0, 10, "h2 reachable")


def test_corrupt_changes_exactly_the_named_bytes_on_that_host_only(lab):
    h1, h2 = lab.hosts()[:2]
    lab.exec(h2, ["sh", "-c", "head -c 4096 /dev/urandom > /var/tmp/victim"])
    before = h2.real_path("/var/tmp/victim").read_bytes()
    result = lab.corrupt(h2, "/var/tmp/victim", offset=100, flip=4)
    after = lab.exec(h2, ["od", "-An", "-tx1", "-v", "/var/tmp/victim"]).stdout.split()
    after = bytes(int(x, 16) for x in after)
    assert after[:100] == before[:100] and after[104:] == before[104:]
    assert all(a == b ^ 0xFF for a, b in zip(after[100:104], before[100:104]))
    assert result["before"] == before[100:104].hex()
    lab.corrupt(h2, "/var/tmp/victim", truncate=1000)
    assert lab.exec(h2, ["stat", "-c", "%s", "/var/tmp/victim"]).stdout.strip() == "1000"
    assert lab.exec(h1, ["test", "-e", "/var/tmp/victim"], check=False).returncode == 1


def test_enough_writes_make_snapshots_and_new_wal_files(lab):
    h1 = lab.hosts()[0]
    lab.churn(h1, "dqlite", count=2500, size=64)
    lab.churn(h1, "etcd", count=700, size=100_000)  # > 64 MB of WAL: the WAL is cut
    deadline = time.monotonic() + 30
    while True:
        missing = []
        for host in lab.hosts():
            dq = host.real_path(host.dqlite_data_dir)
            if not list(dq.glob("snapshot-*-*-*.meta")):
                missing.append("%s dqlite snapshot" % host.name)
            member = host.real_path("/var/lib/etcd/member")
            if not list(member.glob("snap/*.snap")):
                missing.append("%s etcd .snap" % host.name)
            if len(list(member.glob("wal/*.wal"))) < 2:
                missing.append("%s second WAL file" % host.name)
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert not missing
    for host in lab.hosts():
        for meta in host.real_path(host.dqlite_data_dir).glob("snapshot-*.meta"):
            assert meta.with_suffix("").exists()  # each .meta has its data file


# ------------------------------------------------------------------ etcd versions and TLS
ETCD_VARIANTS = ["3.4", "3.4+tls", "3.5", "3.5+tls"]
_NO_CERT_PROBE = """
import ssl, sys, urllib.request
context = ssl.create_default_context(cafile=sys.argv[2])
try:
    urllib.request.urlopen(sys.argv[1] + "/v3/kv/range", data=b'{"key": "a2V5"}', timeout=5, context=context)
except Exception as exc:  # refused: print why
    print(type(exc).__name__, exc)
    sys.exit(1)
"""


@pytest.mark.parametrize("lab", ETCD_VARIANTS, indirect=True)
def test_etcd_variant_is_healthy_in_the_version_asked_for(lab, request):
    version, tls = etcd_variant(request.node.callspec.params["lab"])
    assert (lab.etcd_version, lab.etcd_tls) == (version, tls)
    assert lab.etcd_bin_dir == ("/usr/bin" if version == "3.4" else "/var/lib/quorum-recovery-lab/engines/etcd-3.5.16/usr/bin")
    hosts = lab.hosts()
    for host in hosts:
        health = lab.etcd_health(host)
        assert health["health"] is True, (host.name, health)
        assert health["endpoint"] == "%s://%s:2379" % ("https" if tls else "http", host.address)
        assert lab.etcd_status(host)["version"].startswith(version + "."), host.name
        assert lab.check_keys(host, "etcd", 1000)["ok"], host.name  # loaded and read by the lab client
        argv = json.loads(host.private("etc").joinpath("services/etcd.json").read_text())["argv"]
        assert argv[0] == lab.etcd_bin_dir + "/etcd"
        assert ("--client-cert-auth" in argv and "--peer-client-cert-auth" in argv) == tls
    assert "etcdctl version: %s." % version in lab.etcdctl(hosts[0], "version").stdout
    assert sorted(m["name"] for m in lab.etcd_members(hosts[0])) == [h.name for h in hosts]

    group = yaml.safe_load(lab.etcd_inventory_path.read_text())["all"]["children"]["etcd"]["vars"]
    assert group["recover_etcd_bin_dir"] == lab.etcd_bin_dir
    assert group["recover_client_url"] == ("https" if tls else "http") + "://127.0.0.1:2379"
    assert group["recover_etcd_tls"] == lab.etcd_client_tls and bool(group["recover_etcd_tls"]) == tls
    for path in group["recover_etcd_tls"].values():
        assert all(h.real_path(path).is_file() for h in hosts), path
    status = group["recover_service_commands"]["status"].split()
    assert lab.exec(hosts[0], status, check=False).returncode == 0
    if tls:  # a client without a certificate is turned away, on every host
        for host in hosts:
            probe = lab.exec(host, ["python3", "-c", _NO_CERT_PROBE, host.etcd_client_url, "/etc/qrlab/pki/ca.crt"],
                             check=False)
            assert probe.returncode == 1, (host.name, probe.stdout, probe.stderr)


@pytest.mark.parametrize("lab", ETCD_VARIANTS, indirect=True)
def test_etcd_variant_power_cut_under_concurrent_writers(lab):
    hosts = lab.hosts()
    result = lab.power_off_mid_writes("etcd", seconds=2.0, prefix="acked")
    assert result["kill_spread_ms"] < 50, result["kill_spread_ms"]
    assert all(w.get("acknowledged", 0) > 0 for w in result["writers"].values()), result["writers"]
    assert len(result["writers"]) == len(hosts)
    assert all(lab.service(h, "etcd", "status", check=False).returncode == 3 for h in hosts)
    lab.start_etcd(hosts)  # etcd acknowledged a put only once it was on disk: none is lost
    assert not result["acknowledged"] - lab.etcd_keys(hosts[0], "acked")
