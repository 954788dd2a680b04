"""etcd_info against REAL etcd data directories from the lab, in the lab's etcd version (3.4 or
3.5: QRLAB_ETCD_VERSION) and TLS mode (QRLAB_ETCD_TLS); every etcd and etcdctl the tests start is
the lab's own (Lab.etcd_bin_dir).

Oracles: `etcdctl snapshot status` on a copy of the same db (revision, key count, hash, size);
`etcdctl endpoint status` of the member while it ran (raft index and term), including a member
that runs alone (--force-new-cluster on a scratch copy); a member cut off from the others ranks
below the members with the longer log (on 3.4 it campaigns and raises its term; 3.5's pre-vote
keeps its term). The corruption matrix damages scratch copies of a real member directory, and
etcd itself is started on each (tests/etcd_oracle.py) to check what the module predicts it does;
so is a real four-file WAL with a file missing. `online` is checked against a member that answers
and several that do not. The module runs over SSH and must leave every byte and file time alone.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import struct
import time

import pytest

from conftest import fingerprint, run_ansible
from etcd_oracle import etcd_argv, etcdctl_argv, real_start, scratch_url

from ansible_collections.quorum.recovery.plugins.module_utils import election, etcd_datadir

SOLO_CLIENT_PORT, SOLO_PEER_PORT = 23791, 23801
# etcd 3.5 turned --pre-vote on by default (the lab does not set it): a member cut off from the
# others asks whether it could win before it campaigns, and never raises its term for nothing
PRE_VOTE = {"3.4": False, "3.5": True}


def _run(lab, hosts, args):
    """The module over SSH: {host: its whole result}."""
    proc = run_ansible("ansible", hosts, "-m", "quorum.recovery.etcd_info", "-a", args, "-o",
                       inventory=lab.inventory_path)
    results = {}
    for line in proc.stdout.splitlines():
        host, _sep, rest = line.partition(" | ")
        results[host] = json.loads(rest[rest.index("{"):])
    return results


def _facts(lab, hosts="etcd", path="/var/lib/etcd", depth="full"):
    return {host: result["member"] for host, result in _run(lab, hosts, "path=%s depth=%s" % (path, depth)).items()}


def _snapshot_status(lab, host, db="/var/lib/etcd/member/snap/db"):
    """`snapshot status` by the version's own tool (3.5's etcdctl still has it, deprecated for etcdutl)."""
    lab.exec(host, ["cp", db, "/var/tmp/db.status"])
    tool = "etcdctl" if lab.etcd_version == "3.4" else "etcdutl"
    return json.loads(lab.exec(host, [os.path.join(lab.etcd_bin_dir, tool), "snapshot", "status", "-w", "json",
                                      "/var/tmp/db.status"]).stdout)


def _online_args(lab):
    """etcd_info's options that make it ask the lab's etcd as the lab's own clients do."""
    tls = "".join(" %s=%s" % item for item in lab.etcd_client_tls.items())
    return "etcdctl=%s%s" % (os.path.join(lab.etcd_bin_dir, "etcdctl"), tls)


def _errors(member):
    return [p for p in member["problems"] if p["severity"] == "error"]


def test_offline_facts_equal_what_etcd_reports_and_nothing_changes(lab):
    hosts = lab.hosts()
    lab.churn(hosts[0], "etcd", count=300, size=64)
    time.sleep(1.0)  # let followers apply
    status = {h.name: lab.etcd_status(h) for h in hosts}
    lab.power_off("etcd")
    before = {h.name: fingerprint(h.real_path("/var/lib/etcd"), ctime=True) for h in hosts}
    facts = _facts(lab)
    quick = _facts(lab, depth="quick")
    assert {h.name: fingerprint(h.real_path("/var/lib/etcd"), ctime=True) for h in hosts} == before, "module changed a dir"
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


def test_online_endpoint_status_when_it_answers_and_a_clean_answer_when_it_does_not(lab):
    hosts = lab.hosts()
    lab._wait(lambda: lab.etcd_ready(hosts), 60, "etcd leader")
    status = {h.name: lab.etcd_status(h) for h in hosts}
    answered = _run(lab, "etcd", "path=/var/lib/etcd depth=quick endpoint={{ etcd_client_url }} timeout=3 "
                    + _online_args(lab))
    for host in hosts:
        online, member = answered[host.name]["online"], answered[host.name]["member"]
        assert online["reachable"] is True and online["endpoint"] == host.etcd_client_url, online
        header = online["status"]["header"]
        assert "%x" % header["member_id"] == member["member_id"] == "%x" % status[host.name]["header"]["member_id"]
        assert "%x" % header["cluster_id"] == member["cluster_id"]
        assert header["revision"] == status[host.name]["header"]["revision"]
        assert online["status"]["version"] == status[host.name]["version"], online["status"]
        assert online["status"]["version"].startswith(lab.etcd_version + ".")
        assert online["status"]["leader"] == status[host.name]["leader"]
        assert member["running"]["running"] is True
    # nothing listens there: refused, quickly, and the offline facts are all there
    refused = _run(lab, "h1", "path=/var/lib/etcd depth=quick endpoint=http://127.0.0.1:2 timeout=3 "
                   + _online_args(lab))["h1"]
    assert refused["online"]["reachable"] is False and refused["online"]["reason"] == "refused", refused["online"]
    assert "http://127.0.0.1:2" in refused["online"]["error"] and refused["online"]["seconds"] < 3 + 2
    assert refused["member"]["member_id"] == answered["h1"]["member"]["member_id"]
    # no etcdctl on the target: said, not a module failure
    missing = _run(lab, "h1", "path=/var/lib/etcd depth=quick endpoint=http://127.0.0.1:2379 "
                   "etcdctl=/nonexistent/etcdctl")["h1"]
    assert missing["online"]["reason"] == "no-etcdctl" and missing["member"]["member_id"]
    # quorum lost: h1 restarted alone opens its port and answers nothing; h2 is cut off
    lab.power_off("etcd")
    lab.service(hosts[0], "etcd", "start")
    lab.partition(hosts[1])
    try:
        started = time.monotonic()
        lost = _run(lab, "h1", "path=/var/lib/etcd depth=quick endpoint=%s timeout=2 %s"
                    % (hosts[0].etcd_client_url, _online_args(lab)))["h1"]
        cut = _run(lab, "h1", "path=/var/lib/etcd depth=quick endpoint=%s timeout=2 %s"
                   % (hosts[1].etcd_client_url, _online_args(lab)))["h1"]
        took = time.monotonic() - started
    finally:
        lab.heal(hosts[1])
    for online in (lost["online"], cut["online"]):
        assert online["reachable"] is False and online["reason"] == "timeout", online
        assert "did not answer" in online["error"] and "quorum" in online["error"]
        assert 2 <= online["seconds"] <= 2 * 2 + 5, online  # etcdctl's own timeouts bound it
    assert took < 60, "two module runs with an unanswering endpoint took %.0fs" % took
    assert lost["member"]["running"]["running"] is True and lost["member"]["member_id"]
    lab.service(hosts[0], "etcd", "stop")
    lab.start_etcd(hosts)


def test_a_member_running_alone_reports_what_the_files_say(lab):
    host = lab.hosts()[0]
    lab.service(host, "etcd", "stop")
    lab.exec(host, ["sh", "-c", "rm -rf /var/tmp/solo && cp -a /var/lib/etcd /var/tmp/solo"])
    lab.service(host, "etcd", "start")
    client = scratch_url(lab, SOLO_CLIENT_PORT)
    solo = lab.spawn(host, etcd_argv(lab, "--name", host.name, "--data-dir", "/var/tmp/solo", "--force-new-cluster",
                                     "--listen-client-urls", client, "--advertise-client-urls", client,
                                     "--listen-peer-urls", scratch_url(lab, SOLO_PEER_PORT)))
    try:
        status = None
        for _try in range(60):
            proc = lab.exec(host, etcdctl_argv(lab, client, "-w", "json", "--command-timeout=2s", "endpoint",
                                               "status"), check=False)
            if proc.returncode == 0 and json.loads(proc.stdout)[0]["Status"]["leader"]:
                lab.exec(host, etcdctl_argv(lab, client, "put", "solo", "1"))
                time.sleep(0.5)
                status = json.loads(lab.exec(host, etcdctl_argv(lab, client, "-w", "json", "endpoint",
                                                                "status")).stdout)[0]["Status"]
                break
            time.sleep(0.5)
        assert status, "the solo etcd never elected itself"
    finally:
        lab.stop_spawned(solo)
    member = _facts(lab, host.name, "/var/tmp/solo")[host.name]
    assert member["verdict"] == "healthy", member["problems"]
    assert (member["log"]["last_index"], member["log"]["last_term"]) == (status["raftIndex"], status["raftTerm"])
    assert member["log"]["hard_state"]["term"] == status["raftTerm"]
    assert member["revision"] == status["header"]["revision"]
    assert [v["id"] for v in member["membership"]["voters"]] == ["%x" % status["header"]["member_id"]]


def test_a_member_cut_off_while_the_others_write_ranks_below_the_longer_logs(lab, tmp_path_factory):
    """On 3.4 the cut-off member campaigns and raises its HardState term above every log term, and
    the plan warns about it; on 3.5 pre-vote keeps its term (nobody answers its pre-vote), so there
    is nothing to warn about. Either way its log is the short one, and it ranks last."""
    hosts = lab.hosts()
    lab._wait(lambda: lab.etcd_ready(hosts), 60, "etcd leader")
    leader_id = lab.etcd_status(hosts[0])["leader"]
    follower = next(h for h in hosts if lab.etcd_status(h)["header"]["member_id"] != leader_id)
    writer = next(h for h in hosts if h is not follower)
    # keep a db copy from before the churn, for the missing .snap.db case of the matrix
    lab.exec(writer, ["cp", "/var/lib/etcd/member/snap/db", "/var/tmp/db.before"])
    lab.partition(follower)
    try:
        time.sleep(5)  # its election timeout passes: 3.4 campaigns, 3.5 pre-votes; it cannot append anything
        lab.churn(writer, "etcd", count=1200, size=64)
        lab.power_off("etcd")
    finally:
        lab.heal(follower)
    # a copy of the real, busy directory for the matrix and the oracle below, kept first: a wrong
    # ranking must fail this test alone, not skip the thirteen that read the copy
    scratch = tmp_path_factory.getbasetemp() / "etcd-real"
    shutil.copytree(writer.real_path("/var/lib/etcd"), scratch)
    shutil.copy(writer.real_path("/var/tmp/db.before"), scratch.parent / "db.before")
    shutil.copy(writer.real_path("/var/tmp/db.before"), hosts[0].real_path("/var/tmp/db.before"))
    facts = _facts(lab)
    summaries = {name: member["summary"] for name, member in facts.items()}
    order = sorted(summaries, key=lambda name: election.rank_key(summaries[name]), reverse=True)
    assert order[-1] == follower.name and {s["verdict"] for s in summaries.values()} == {"healthy"}, summaries
    plan = election.make_plan("etcd", summaries)
    flagged = [w for w in plan["warnings"] if follower.name + "'s current term" in w]
    assert plan["winner"] != follower.name
    stale = facts[follower.name]
    for host in hosts:
        if host is not follower:
            assert facts[host.name]["log"]["last_index"] > stale["log"]["last_index"] + 1000
            if PRE_VOTE[lab.etcd_version]:
                assert stale["log"]["hard_state"]["term"] == facts[host.name]["log"]["hard_state"]["term"], facts
            else:
                assert stale["log"]["hard_state"]["term"] > facts[host.name]["log"]["hard_state"]["term"], facts
    if PRE_VOTE[lab.etcd_version]:
        assert not flagged, plan["warnings"]
    else:
        assert flagged, plan["warnings"]
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


def _pages_in_use(db):
    """Bytes up to the high-water page id of the newer meta page (test-side bbolt reading)."""
    _txid, pgid = max((struct.unpack_from("<Q", db, off + 64)[0], struct.unpack_from("<Q", db, off + 56)[0])
                      for off in (0, 4096))
    return pgid * 4096


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
    client, peer = scratch_url(lab, 23792), scratch_url(lab, 23802)
    lab.exec(host, ["rm", "-rf", "/var/tmp/othercluster"])
    other = lab.spawn(host, etcd_argv(lab, "--name", "other", "--data-dir", "/var/tmp/othercluster",
                                      "--initial-cluster", "other=" + peer, "--initial-advertise-peer-urls", peer,
                                      "--listen-peer-urls", peer, "--listen-client-urls", client,
                                      "--advertise-client-urls", client, "--initial-cluster-token", "other"))
    try:
        for _try in range(60):
            if lab.exec(host, etcdctl_argv(lab, client, "--command-timeout=2s", "put", "other", "1"),
                        check=False).returncode == 0:
                break
            time.sleep(0.5)
        else:
            raise AssertionError("the other cluster never served")
    finally:
        lab.stop_spawned(other)
    return host.real_path("/var/tmp/othercluster/member/snap/db")


CASES = ["crc-mid-wal", "torn-last-wal", "no-wal", "corrupt-snap", "missing-snap-db", "no-db", "meta-one",
         "meta-both", "page-outside", "truncated-db", "other-cluster"]


WORDS = {"crc-mid-wal": "crc mismatch", "torn-last-wal": "torn write", "no-wal": "no WAL files",
         "corrupt-snap": "crc mismatch", "missing-snap-db": "is missing", "no-db": "is missing", "meta-one": "checksum",
         "meta-both": "both meta pages", "page-outside": "page 1048576", "truncated-db": "truncated",
         "other-cluster": "another cluster"}


def _damage(lab, path, case, db_before):
    """Damage the copy at path as the case says; (the file the module must name, expected verdict)."""
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
        shutil.copy(db_before, db)  # the db as it was two snapshots ago
        expect_file = "member/snap/%016x.snap.db" % int(snaps[-1].split("-")[1][:16], 16)
    elif case == "no-db":
        os.remove(db)
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
        # half of the pages in use: etcd 3.5's bbolt file is 16 MiB long with a few hundred KiB in
        # use, and cutting only the unused tail is no damage at all (3.5 serves every key from it)
        with open(db, "r+b") as f:
            f.truncate(_pages_in_use(db.read_bytes()) // 2)
        expect_file = "member/snap/db"
    elif case == "other-cluster":
        host = lab.hosts()[0]
        shutil.copy(_other_cluster_db(lab, host), db)
        expect_file = "member/snap/db"
    return expect_file, expect


@pytest.mark.parametrize("case", CASES)
def test_corruption_matrix_on_real_directory_copies(lab, tmp_path_factory, case):
    path = _real_copy(tmp_path_factory, case)
    expect_file, expect = _damage(lab, path, case, tmp_path_factory.getbasetemp() / "db.before")
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


def _truncated_at(broken, repaired):
    """Where wal.Repair cut the file: the first frame of the .broken copy that the repaired file
    no longer holds byte for byte (etcd appended its own records from there)."""
    for offset, length in _frames(broken):
        if repaired[offset:offset + length] != broken[offset:offset + length]:
            return offset
    return None


def _oracle_row(case, member, plain, force):
    predicted = member["prediction"]
    return "| %s | %s%s%s | %s%s%s%s |" % (
        case, predicted["outcome"], " `%s`" % predicted["error"] if predicted["error"] else "",
        "; " + ", ".join("%s %s" % (c["action"], c["file"]) for c in predicted["changes"]) if predicted["changes"]
        else "", plain["outcome"], " `%s`" % plain["error"] if plain["error"] else "",
        "; " + ", ".join("%s %s" % (c["action"], c["file"]) for c in plain["changes"]) if plain["changes"] else "",
        "; alone with --force-new-cluster: %s at revision %s" % (force["outcome"], (force["status"] or {}).get(
            "header", {}).get("revision")) if force else "")


def test_real_etcd_start_on_every_damaged_copy_does_what_etcd_info_predicts(lab, tmp_path_factory):
    """The oracle for `prediction` and `etcd_would`: the lab's etcd itself, started on a scratch copy of
    each damaged directory inside h1, with every lab member stopped and h1 cut off, so a copy that
    knows the cluster's peers reaches none of them."""
    source, db_before = tmp_path_factory.getbasetemp() / "etcd-real", tmp_path_factory.getbasetemp() / "db.before"
    if not source.exists():
        pytest.skip("needs the directory kept by the partition test")
    hosts = lab.hosts()
    host = hosts[0]
    other_db = _other_cluster_db(lab, host)  # before the cut: it is a one-member cluster of its own anyway
    for member_host in hosts:
        lab.service(member_host, "etcd", "stop")
    rows, wrong = [], []
    lab.partition(host)
    try:
        for case in CASES:
            inside = "/var/tmp/oracle/" + case
            path = host.real_path(inside)
            shutil.rmtree(path, ignore_errors=True)
            path.parent.mkdir(exist_ok=True)
            shutil.copytree(source, path)
            wal = path / "member" / "wal" / _wal(path).name
            if case == "other-cluster":
                shutil.copy(other_db, path / "member" / "snap" / "db")
            else:
                _damage(lab, path, case, db_before)
            member = etcd_datadir.inspect_datadir(str(path), "full")
            predicted = member["prediction"]
            plain = real_start(lab, host, inside, name=host.name)
            force = None
            if plain["outcome"] in ("starts", "new-member"):
                force = real_start(lab, host, inside, name=host.name, force_new_cluster=True, timeout=30)
            rows.append(_oracle_row(case, member, plain, force))
            problems = []
            if plain["outcome"] != predicted["outcome"]:
                problems.append("outcome: predicted %s, etcd %s" % (predicted["outcome"], plain["outcome"]))
            if predicted["error"] and predicted["error"] not in (plain["error"] or ""):
                problems.append("error: predicted %r, etcd said %r" % (predicted["error"], plain["error"]))
            said = [{k: v for k, v in c.items() if k != "offset"} for c in predicted["changes"]]
            if said != plain["changes"]:
                problems.append("changes: predicted %s, etcd made %s" % (said, plain["changes"]))
            for change in predicted["changes"]:
                if change["action"] == "truncate" and plain["outcome"] == "starts":
                    cut = _truncated_at((wal.parent / change["keep"]).read_bytes(), wal.read_bytes())
                    if cut != change["offset"]:
                        problems.append("truncated at %s, predicted %s" % (cut, change["offset"]))
            if plain["outcome"] == "starts":  # the log raft loaded is the one the module read
                log = (member["log"]["last_index"], member["log"]["last_term"])
                if (plain["raft"]["last_index"], plain["raft"]["last_term"]) != log:
                    problems.append("raft loaded %s, module read %s" % (plain["raft"], log))
            if force:
                header = (force["status"] or {}).get("header", {})
                if force["outcome"] != "serves" or header.get("revision", -1) < (member["revision"] or 0):
                    problems.append("alone it %s at %s, module revision %s" % (force["outcome"], header,
                                                                               member["revision"]))
                if (plain["outcome"] == "starts") != ("%x" % header.get("cluster_id", 0) == member["cluster_id"]):
                    problems.append("cluster %x served, module %s" % (header.get("cluster_id", 0),
                                                                      member["cluster_id"]))
            if problems:
                wrong.append("%s: %s (etcd log %s)" % (case, "; ".join(problems), plain["log"]))
    finally:
        lab.heal(host)
    version = lab.exec(host, [os.path.join(lab.etcd_bin_dir, "etcd"), "--version"]).stdout.split()[2]  # etcd Version: X
    table = "| case | etcd_info predicts | etcd %s did |\n|---|---|---|\n" % version + "\n".join(rows)
    (tmp_path_factory.getbasetemp() / "etcd-oracle.md").write_text(table + "\n")
    print("\n" + table)
    assert not wrong, "\n".join(wrong) + "\n" + table


MULTI_CLIENT_PORT, MULTI_PEER_PORT = 23790, 23800


@pytest.fixture(scope="module")
def multiwal(lab):
    """A real one-member etcd data directory with four WAL files: etcd (3.4 and 3.5) cuts a WAL file at
    64,000,000 bytes (wal.SegmentSizeBytes, no flag changes it), so 210 puts of 1,000,000-byte
    values fill three and start a fourth; --snapshot-count 150 puts the .snap (index ~151) in the
    third. The old revisions are compacted and the db defragmented, to keep the copies small."""
    host = lab.hosts()[0]
    inside = "/var/tmp/multiwal"
    client, peer = scratch_url(lab, MULTI_CLIENT_PORT), scratch_url(lab, MULTI_PEER_PORT)
    lab.exec(host, ["rm", "-rf", inside])
    with open(host.real_path(inside + ".log"), "wb") as log:
        scratch = lab.spawn(host, etcd_argv(lab, "--name", "mw", "--data-dir", inside, "--listen-client-urls", client,
                                            "--advertise-client-urls", client, "--listen-peer-urls", peer,
                                            "--initial-advertise-peer-urls", peer, "--initial-cluster", "mw=" + peer,
                                            "--initial-cluster-token", "multiwal", "--snapshot-count", "150",
                                            "--logger", "zap", "--log-outputs", "stderr"), stderr=log)
    ctl = etcdctl_argv(lab, client, "--command-timeout=20s")
    try:
        lab._wait(lambda: lab.exec(host, [*ctl, "endpoint", "health"], check=False).returncode == 0, 30,
                  "the scratch etcd")
        lab.exec(host, ["sh", "-c", "head -c 750000 /dev/urandom | base64 -w0 > %s.value && for i in $(seq 210); "
                        "do %s put big < %s.value > /dev/null || exit 1; done" % (inside, " ".join(ctl), inside)])
        status = json.loads(lab.exec(host, [*ctl, "-w", "json", "endpoint", "status"]).stdout)[0]["Status"]
        lab.exec(host, [*ctl, "compact", str(status["header"]["revision"])])
        lab.exec(host, [*ctl, "defrag"])
        status = json.loads(lab.exec(host, [*ctl, "-w", "json", "endpoint", "status"]).stdout)[0]["Status"]
    finally:
        lab.stop_spawned(scratch)
    path = host.real_path(inside)
    names = sorted(n for n in os.listdir(path / "member" / "wal") if n.endswith(".wal"))
    yield {"host": host, "inside": inside, "path": path, "names": names, "status": status}
    shutil.rmtree(path, ignore_errors=True)


def test_a_missing_wal_file_in_a_real_multi_file_log(lab, multiwal):
    host, names = multiwal["host"], multiwal["names"]
    firsts = [int(n[17:33], 16) for n in names]
    healthy = etcd_datadir.inspect_datadir(str(multiwal["path"]), "full")
    snap = healthy["snapshot_loaded"]["index"]
    # the premises: four files, the loaded snapshot in the third
    assert len(names) == 4 and firsts[2] <= snap < firsts[3], (names, snap)
    assert healthy["verdict"] == "healthy" and healthy["prediction"]["outcome"] == "starts", healthy["problems"]
    assert healthy["wal"]["selected_from"] == names[2]
    assert healthy["log"]["last_index"] >= multiwal["status"]["raftIndex"]
    assert healthy["revision"] == multiwal["status"]["header"]["revision"]

    def copy_without(tag, victim):
        inside = "%s-%s" % (multiwal["inside"], tag)
        lab.exec(host, ["sh", "-c", "rm -rf %s %s.archived && cp -a %s %s && rm %s/member/wal/%s"
                        % (inside, inside, multiwal["inside"], inside, inside, victim)])
        return inside, host.real_path(inside)

    # A: the second file missing; the snapshot's file and all after it are there
    inside, path = copy_without("before", names[1])
    member = etcd_datadir.inspect_datadir(str(path), "full")
    gap = [p for p in member["problems"] if p["severity"] == "error"]
    assert [p["file"] for p in gap] == [names[2]] and names[1][:16] in gap[0]["message"], gap
    assert member["prediction"]["outcome"] == "refuses" and member["prediction"]["error"] == "wal: crc mismatch"
    assert member["verdict"] == "repairable" and member["wal"]["archive_first"] == [names[0]]
    over_ssh = _run(lab, host.name, "path=%s depth=quick" % inside)[host.name]["member"]
    assert over_ssh["prediction"] == member["prediction"] and over_ssh["verdict"] == "repairable"
    real = real_start(lab, host, inside, name="mw", serve=True)
    assert real["outcome"] == "refuses" and "wal: crc mismatch" in real["error"], real
    # the remedy, as the module words it: archive the files before the gap, and etcd serves it all
    lab.exec(host, ["sh", "-c", "mkdir %s.archived && mv %s %s.archived/" % (
        inside, " ".join("%s/member/wal/%s" % (inside, n) for n in member["wal"]["archive_first"]), inside)])
    real = real_start(lab, host, inside, name="mw", serve=True)
    assert real["outcome"] == "serves", real
    log = member["log"]
    assert (real["raft"]["last_index"], real["raft"]["last_term"]) == (log["last_index"], log["last_term"])
    assert real["status"]["header"]["revision"] == member["revision"] == healthy["revision"]
    lab.exec(host, ["rm", "-rf", inside, inside + ".archived"])

    # B: the third file missing: the snapshot's file, and the entries after the snapshot in it
    inside, path = copy_without("after", names[2])
    member = etcd_datadir.inspect_datadir(str(path), "full")
    gap = [p for p in member["problems"] if p["severity"] == "error"]
    assert [p["file"] for p in gap] == [names[3]] and member["verdict"] == "unusable", gap
    assert member["prediction"]["outcome"] == "refuses" and member["prediction"]["error"] == "wal: crc mismatch"
    real = real_start(lab, host, inside, name="mw", serve=True)
    assert real["outcome"] == "refuses" and "wal: crc mismatch" in real["error"], real
    lab.exec(host, ["rm", "-rf", inside])


@pytest.fixture(autouse=True)
def _members_back(lab):
    yield
    hosts = lab.hosts()
    if not all(lab.service(h, "etcd", "status", check=False).returncode == 0 for h in hosts):
        for host in hosts:
            lab.service(host, "etcd", "stop", check=False)
        lab.start_etcd(hosts)
