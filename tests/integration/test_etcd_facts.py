"""etcd_facts against REAL etcd 3.4 data directories from the lab.

Oracles: `etcdctl snapshot status` on a copy of the same db (revision, key count, hash, size);
`etcdctl endpoint status` of the member while it ran (raft index and term), including a member
that runs alone (--force-new-cluster on a scratch copy); a member that campaigned while cut off
ranks below the members with the longer log. The corruption matrix damages scratch copies of a
real member directory. The module runs over SSH and must leave every byte and file time alone.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import struct
import time

import pytest

from conftest import run_ansible

from ansible_collections.quorum.recovery.plugins.module_utils import etcd_datadir

SOLO_CLIENT = "http://127.0.0.1:23791"


def _fingerprint(directory):
    out = {}
    for root, _dirs, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            st = os.stat(path)
            with open(path, "rb") as f:
                out[os.path.relpath(path, directory)] = (hashlib.sha256(f.read()).hexdigest(), st.st_size,
                                                         st.st_mtime_ns, st.st_ctime_ns)
    return out


def _facts(lab, hosts="etcd", path="/var/lib/etcd", depth="full"):
    proc = run_ansible("ansible", hosts, "-m", "quorum.recovery.etcd_facts", "-a", "path=%s depth=%s" % (path, depth),
                       "-o", inventory=lab.inventory_path)
    facts = {}
    for line in proc.stdout.splitlines():
        host, _sep, rest = line.partition(" | ")
        facts[host] = json.loads(rest[rest.index("{"):])["member"]
    return facts


def _snapshot_status(lab, host, db="/var/lib/etcd/member/snap/db"):
    lab.exec(host, ["cp", db, "/var/tmp/db.status"])
    return json.loads(lab.exec(host, ["etcdctl", "snapshot", "status", "-w", "json", "/var/tmp/db.status"]).stdout)


def _errors(member):
    return [p for p in member["problems"] if p["severity"] == "error"]


def test_offline_facts_equal_what_etcd_reports_and_nothing_changes(lab):
    hosts = lab.hosts()
    lab.churn(hosts[0], "etcd", count=300, size=64)
    time.sleep(1.0)  # let followers apply
    status = {h.name: lab.etcd_status(h) for h in hosts}
    lab.power_off("etcd")
    before = {h.name: _fingerprint(h.real_path("/var/lib/etcd")) for h in hosts}
    facts = _facts(lab)
    quick = _facts(lab, depth="quick")
    assert {h.name: _fingerprint(h.real_path("/var/lib/etcd")) for h in hosts} == before, "module changed a dir"
    for host in hosts:
        member, running = facts[host.name], status[host.name]
        assert member["verdict"] == "healthy" and not _errors(member), (host.name, member["problems"])
        assert member["running"]["running"] is False
        assert member["member_id"] == "%x" % running["header"]["member_id"]
        assert member["cluster_id"] == "%x" % running["header"]["cluster_id"]
        assert (member["log"]["last_index"], member["log"]["last_term"]) == (running["raftIndex"], running["raftTerm"])
        assert member["revision"] == running["header"]["revision"]
        oracle = _snapshot_status(lab, host)
        assert member["db"]["snapshot_status"] == {"hash": oracle["hash"], "revision": oracle["revision"],
                                                   "total_key": oracle["totalKey"], "total_size": oracle["totalSize"]}
        assert member["key_count"] == oracle["totalKey"]
        assert {v["name"] for v in member["membership"]["voters"]} == {h.name for h in hosts}
        assert quick[host.name]["log"] == member["log"] and quick[host.name]["revision"] == member["revision"]
    lab.start_etcd(hosts)


def test_a_member_running_alone_reports_what_the_files_say(lab):
    host = lab.hosts()[0]
    lab.service(host, "etcd", "stop")
    lab.exec(host, ["sh", "-c", "rm -rf /var/tmp/solo && cp -a /var/lib/etcd /var/tmp/solo"])
    lab.service(host, "etcd", "start")
    solo = lab.spawn(host, ["etcd", "--name", host.name, "--data-dir", "/var/tmp/solo", "--force-new-cluster",
                            "--listen-client-urls", SOLO_CLIENT, "--advertise-client-urls", SOLO_CLIENT,
                            "--listen-peer-urls", "http://127.0.0.1:23801"])
    try:
        status = None
        for _try in range(60):
            proc = lab.exec(host, ["etcdctl", "--endpoints", SOLO_CLIENT, "-w", "json", "--command-timeout=2s",
                                   "endpoint", "status"], check=False)
            if proc.returncode == 0 and json.loads(proc.stdout)[0]["Status"]["leader"]:
                lab.exec(host, ["etcdctl", "--endpoints", SOLO_CLIENT, "put", "solo", "1"])
                time.sleep(0.5)
                status = json.loads(lab.exec(host, ["etcdctl", "--endpoints", SOLO_CLIENT, "-w", "json",
                                                    "endpoint", "status"]).stdout)[0]["Status"]
                break
            time.sleep(0.5)
        assert status, "the solo etcd never elected itself"
    finally:
        solo.terminate()
        solo.wait(timeout=30)
    member = _facts(lab, host.name, "/var/tmp/solo")[host.name]
    assert member["verdict"] == "healthy", member["problems"]
    assert (member["log"]["last_index"], member["log"]["last_term"]) == (status["raftIndex"], status["raftTerm"])
    assert member["log"]["hard_state"]["term"] == status["raftTerm"]
    assert member["revision"] == status["header"]["revision"]
    assert [v["id"] for v in member["membership"]["voters"]] == ["%x" % status["header"]["member_id"]]


def test_a_member_that_campaigned_while_partitioned_ranks_below_the_longer_logs(lab, tmp_path_factory):
    hosts = lab.hosts()
    lab._wait(lambda: lab.etcd_ready(hosts), 60, "etcd leader")
    leader_id = lab.etcd_status(hosts[0])["leader"]
    follower = next(h for h in hosts if lab.etcd_status(h)["header"]["member_id"] != leader_id)
    writer = next(h for h in hosts if h is not follower)
    # keep a db copy from before the churn, for the missing .snap.db case of the matrix
    lab.exec(writer, ["cp", "/var/lib/etcd/member/snap/db", "/var/tmp/db.before"])
    lab.partition(follower)
    try:
        time.sleep(5)  # it campaigns, raising its HardState term, and cannot append anything
        lab.churn(writer, "etcd", count=1200, size=64)
        lab.power_off("etcd")
    finally:
        lab.heal(follower)
    facts = _facts(lab)
    ranked = etcd_datadir.rank_members(facts)
    assert ranked["order"][-1] == follower.name and not ranked["excluded"], ranked
    stale = facts[follower.name]
    for host in hosts:
        if host is not follower:
            assert facts[host.name]["log"]["last_index"] > stale["log"]["last_index"] + 1000
            assert stale["log"]["hard_state"]["term"] > facts[host.name]["log"]["hard_state"]["term"]
    # a copy of the real, busy directory for the matrix below
    scratch = tmp_path_factory.getbasetemp() / "etcd-real"
    shutil.copytree(writer.real_path("/var/lib/etcd"), scratch)
    shutil.copy(writer.real_path("/var/tmp/db.before"), scratch.parent / "db.before")
    shutil.copy(writer.real_path("/var/tmp/db.before"), hosts[0].real_path("/var/tmp/db.before"))
    lab.start_etcd(hosts)


def _real_copy(tmp_path_factory, tag):
    source = tmp_path_factory.getbasetemp() / "etcd-real"
    if not source.exists():
        pytest.skip("needs the directory kept by the partition test")
    target = tmp_path_factory.mktemp(tag) / "etcd"
    shutil.copytree(source, target)
    return target


def _wal(path):
    wal_dir = path / "member" / "wal"
    return wal_dir / sorted(n for n in os.listdir(wal_dir) if n.endswith(".wal"))[-1]


def _frames(data):
    """(offset, total length) of each frame: the test's own reading of the framing."""
    pos, out = 0, []
    while pos + 8 <= len(data):
        word = struct.unpack_from("<Q", data, pos)[0]
        if not word:
            break
        length = (word & ((1 << 56) - 1)) + ((word >> 56) & 7 if word >> 63 else 0)
        out.append((pos, 8 + length))
        pos += 8 + length
    return out


def _flip(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def _key_bucket_branch(db):
    """The page id of the key bucket's root when it is a branch page (test-side bbolt reading)."""
    metas = [(struct.unpack_from("<Q", db, off + 64)[0], struct.unpack_from("<Q", db, off + 32)[0])
             for off in (0, 4096)]  # (txid, root bucket page) of each meta page
    root = max(metas)[1]
    base = root * 4096
    count = struct.unpack_from("<H", db, base + 10)[0]
    for i in range(count):
        element = base + 16 + i * 16
        _flags, pos, ksize, _vsize = struct.unpack_from("<IIII", db, element)
        if db[element + pos:element + pos + ksize] == b"key":
            child = struct.unpack_from("<Q", db, element + pos + ksize)[0]
            assert struct.unpack_from("<H", db, child * 4096 + 8)[0] == 0x01, "key bucket root is not a branch"
            return child
    raise AssertionError("no key bucket")


def _other_cluster_db(lab, host):
    """The db of a brand-new one-member cluster (other name, token, IDs), run inside the host."""
    client, peer = "http://127.0.0.1:23792", "http://127.0.0.1:23802"
    lab.exec(host, ["rm", "-rf", "/var/tmp/othercluster"])
    other = lab.spawn(host, ["etcd", "--name", "other", "--data-dir", "/var/tmp/othercluster",
                             "--initial-cluster", "other=" + peer, "--initial-advertise-peer-urls", peer,
                             "--listen-peer-urls", peer, "--listen-client-urls", client,
                             "--advertise-client-urls", client, "--initial-cluster-token", "other"])
    try:
        for _try in range(60):
            if lab.exec(host, ["etcdctl", "--endpoints", client, "--command-timeout=2s", "put", "other", "1"],
                        check=False).returncode == 0:
                break
            time.sleep(0.5)
        else:
            raise AssertionError("the other cluster never served")
    finally:
        other.terminate()
        other.wait(timeout=30)
    return host.real_path("/var/tmp/othercluster/member/snap/db")


CASES = ["crc-mid-wal", "torn-last-wal", "no-wal", "corrupt-snap", "missing-snap-db", "meta-one", "meta-both",
         "page-outside", "truncated-db", "other-cluster"]


WORDS = {"crc-mid-wal": "crc mismatch", "torn-last-wal": "torn write", "no-wal": "no WAL files",
         "corrupt-snap": "crc mismatch", "missing-snap-db": "is missing", "meta-one": "checksum",
         "meta-both": "both meta pages", "page-outside": "page 1048576", "truncated-db": "truncated",
         "other-cluster": "another cluster"}


@pytest.mark.parametrize("case", CASES)
def test_corruption_matrix_on_real_directory_copies(lab, tmp_path_factory, case):
    path = _real_copy(tmp_path_factory, case)
    wal, db = _wal(path), path / "member" / "snap" / "db"
    data = wal.read_bytes()
    frames = _frames(data)
    snaps = sorted(n for n in os.listdir(path / "member" / "snap") if n.endswith(".snap"))
    expect_file, expect = None, "unusable"
    if case == "crc-mid-wal":
        offset, _length = next(f for f in frames[len(frames) // 2:] if f[1] > 64)
        _flip(wal, offset + 40)  # inside the record's data: the chained CRC breaks
        expect_file = wal.name
    elif case == "torn-last-wal":
        offset, length = frames[-1]
        with open(wal, "r+b") as f:
            f.truncate(offset + length - 3)
        expect_file, expect = wal.name, "repairable"
    elif case == "no-wal":
        os.remove(wal)
        expect_file = "member/wal"
    elif case == "corrupt-snap":
        _flip(path / "member" / "snap" / snaps[-1], 20)
        expect_file, expect = snaps[-1], "repairable"
    elif case == "missing-snap-db":
        shutil.copy(path.parent.parent / "db.before", db)  # the db as it was two snapshots ago
        expect_file = "member/snap/%016x.snap.db" % int(snaps[-1].split("-")[1][:16], 16)
    elif case in ("meta-one", "meta-both"):
        for page in (0, 1) if case == "meta-both" else (0,):
            _flip(db, page * 4096 + 16 + 48)  # txid byte: the FNV checksum no longer matches
        expect_file, expect = "member/snap/db", "repairable" if case == "meta-one" else "unusable"
    elif case == "page-outside":
        raw = bytearray(db.read_bytes())
        struct.pack_into("<Q", raw, _key_bucket_branch(raw) * 4096 + 16 + 8, 1 << 20)
        db.write_bytes(bytes(raw))
        expect_file = "member/snap/db"
    elif case == "truncated-db":
        with open(db, "r+b") as f:
            f.truncate(os.path.getsize(db) // 2)
        expect_file = "member/snap/db"
    elif case == "other-cluster":
        host = lab.hosts()[0]
        shutil.copy(_other_cluster_db(lab, host), db)
        expect_file = "member/snap/db"
    member = etcd_datadir.inspect_datadir(str(path), "full")
    errors = _errors(member)
    assert member["verdict"] == expect, (case, member["problems"])
    assert any(e["file"] == expect_file and WORDS[case] in e["message"] for e in errors), (case, errors)
    assert all(p["etcd_would"] and p["data_lost"] and p["remedy"] for p in errors)


def test_fuzzed_real_directory_never_crashes(tmp_path_factory):
    path = _real_copy(tmp_path_factory, "fuzz")
    wal = _wal(path)
    end = _frames(wal.read_bytes())[-1]
    end = end[0] + end[1]
    victims = [(wal, end + 64)] + [(path / "member" / "snap" / n, None) for n in os.listdir(path / "member" / "snap")]
    rng = random.Random(2024)
    for _round in range(40):
        victim, limit = rng.choice(victims)
        original = victim.read_bytes()
        size = limit or len(original)
        try:
            if rng.random() < 0.3:
                with open(victim, "r+b") as f:
                    f.truncate(rng.randrange(size + 1))
            else:
                for _flip_no in range(rng.randrange(1, 8)):
                    _flip(victim, rng.randrange(size))
            member = etcd_datadir.inspect_datadir(str(path), rng.choice(["full", "quick"]))
            assert member["verdict"] in ("healthy", "repairable", "unusable")
        finally:
            victim.write_bytes(original)


@pytest.fixture(autouse=True)
def _members_back(lab):
    yield
    hosts = lab.hosts()
    if not all(lab.service(h, "etcd", "status", check=False).returncode == 0 for h in hosts):
        for host in hosts:
            lab.service(host, "etcd", "stop", check=False)
        lab.start_etcd(hosts)
