"""dqlite_info against REAL dqlite data directories from the lab.

Oracle: `.reconfigure` (the real go-dqlite shell) run on a scratch copy appends one segment
N-N with N = last index + 1, so the module's last index must predict its name. The module
runs through real ansible over SSH and must leave every byte and file time unchanged.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess

import pytest

from conftest import run_ansible


def _fingerprint(directory):
    out = {}
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        st = os.stat(path)
        with open(path, "rb") as f:
            out[name] = (hashlib.sha256(f.read()).hexdigest(), st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    return out


def _facts(lab, hosts="dqlite", depth="full", lz4_engine="auto"):
    proc = run_ansible("ansible", hosts, "-m", "quorum.recovery.dqlite_info", "-a",
                       "path={{ dqlite_data_dir }} depth=%s lz4_engine=%s" % (depth, lz4_engine), "-o",
                       inventory=lab.inventory_path)
    facts = {}
    for line in proc.stdout.splitlines():
        host, _sep, rest = line.partition(" | ")
        facts[host] = json.loads(rest[rest.index("{"):])["member"]
    return facts


def _module_result(proc):
    """The JSON result of a one-host ad-hoc run (default callback: "host | STATUS => {...}", after
    the diff when --diff is given)."""
    text = proc.stdout
    return json.JSONDecoder().raw_decode(text[text.index(" => {") + 4:])[0]


def _reconfigure_scratch(lab, host, tag):
    """Copy the member's dir inside the host and run the real .reconfigure on the copy."""
    scratch = "/var/tmp/scratch-%s" % tag
    lab.exec(host, ["sh", "-c", "rm -rf %s && cp -a %s %s" % (scratch, host.dqlite_data_dir, scratch)])
    lab.exec(host, ["dqlite", "-s", host.dqlite_address, "demo",
                    ".reconfigure %s %s/cluster.yaml" % (scratch, scratch)], timeout=60)
    return sorted(os.listdir(host.real_path(scratch)))


def _check_oracle(lab, tag):
    hosts = lab.hosts()
    before = {h.name: _fingerprint(h.real_path(h.dqlite_data_dir)) for h in hosts}
    facts = _facts(lab)
    assert {h.name: _fingerprint(h.real_path(h.dqlite_data_dir)) for h in hosts} == before, "module changed a dir"
    for host in hosts:
        member = facts[host.name]
        errors = [p for p in member["problems"] if p["severity"] == "error"]
        assert member["verdict"] == "healthy" and not errors, (host.name, errors)  # no false alarm
        assert member["identity"]["address"] == host.dqlite_address
        assert member["running"]["running"] is False
        files = _reconfigure_scratch(lab, host, tag)
        expected = "%016d-%016d" % ((member["log"]["last_index"] + 1,) * 2)
        assert expected in files, (host.name, member["log"], files)
    return facts


def test_oracle_after_clean_stop_and_after_power_loss_mid_write(lab):
    hosts = lab.hosts()
    # 1. a clean stop of every member after the 1,000 keys the lab loaded
    for host in hosts:
        lab.service(host, "dqlite", "stop")
    _check_oracle(lab, "clean")
    # 2. busy: enough writes for snapshots, then SIGKILL of every member while writes continue
    lab.start_all(hosts, "dqlite")
    lab._wait(lambda: lab._dqlite_settled(hosts, 3), 60, "dqlite voters")
    lab.churn(hosts[0], "dqlite", count=2200, size=64)
    lab.power_off_mid_write(hosts[0], "dqlite", "midwrite", count=5000, seconds=2.0)
    facts = _check_oracle(lab, "killed")
    assert any(m["snapshots"] for m in facts.values()), "expected snapshots after 3,000+ writes"
    # the members agree on the committed prefix: the leader's log is at least as long as a majority's
    last = sorted(m["log"]["last_index"] for m in facts.values())
    assert last[1] > 3000


def test_quick_depth_agrees_with_full_on_healthy_dirs(lab):
    for host in lab.hosts():
        lab.service(host, "dqlite", "stop", check=False)
    full, quick = _facts(lab, depth="full"), _facts(lab, depth="quick")
    for name in full:
        assert quick[name]["log"] == full[name]["log"]
        assert quick[name]["verdict"] == full[name]["verdict"] == "healthy"
    # every LZ4 engine the targets have (Debian's python3-lz4, the lz4 tool, the standard
    # library) checks the real snapshots dqlite wrote, and agrees
    assert any(s["data"] and s["data"]["format"] == "lz4" for m in full.values() for s in m["snapshots"]), full
    for engine in ("library", "tool", "python"):
        checked = _facts(lab, depth="full", lz4_engine=engine)
        for name, member in checked.items():
            assert member["lz4_engine"] == engine and member["verdict"] == "healthy"
            for snap, reference in zip(member["snapshots"], full[name]["snapshots"]):
                if snap["data"] and snap["data"]["format"] == "lz4":
                    assert snap["data"]["ok"] and snap["data"]["checked_by"] == engine, snap
                    assert snap["data"]["frame_end"] == reference["data"]["frame_end"]


def test_truncated_open_segment_is_predicted_and_the_cut_makes_dqlite_start(lab):
    host = lab.hosts()[0]
    lab._wait(lambda: lab._dqlite_settled(lab.hosts(), 3), 60, "dqlite voters")
    # Power loss in the middle of a batch: the open segment ends inside its last batch.
    lab.power_off_mid_write(host, "dqlite", "torn", count=3000, seconds=1.5)
    member = _facts(lab, hosts=host.name)[host.name]
    opened = [s for s in member["segments"] if s["kind"] == "open" and s["batches"]]
    assert opened, member["segments"]
    victim = opened[-1]
    cut_at = victim["end_offset"] - 24  # inside the last complete batch's payload
    lab.corrupt(host, "%s/%s" % (host.dqlite_data_dir, victim["file"]), truncate=cut_at)
    member = _facts(lab, hosts=host.name)[host.name]
    torn = [p for p in member["problems"] if p["file"] == victim["file"] and p["severity"] == "error"]
    assert torn and "cut inside batch" in torn[0]["message"] and "fail to start" in torn[0]["dqlite_would"]
    assert member["verdict"] == "repairable"
    cut_to = torn[0]["action"]["truncate"]["length"]

    # Real dqlite on a scratch copy: it does not come up.
    assert not _starts(lab, host, "torn-asis")
    # dqlite_repair with the action as proposed: check mode first (shows it, changes nothing),
    # then the real run, then the same run again (a resumed recovery), which changes nothing.
    args = "-a", json.dumps({"path": host.dqlite_data_dir, "repairs": [torn[0]["action"]],
                             "quarantine_dir": "/var/tmp/quarantine"})
    before = _fingerprint(host.real_path(host.dqlite_data_dir))
    shown = _module_result(run_ansible("ansible", host.name, "-m", "quorum.recovery.dqlite_repair", "--check",
                                       "--diff", *args, inventory=lab.inventory_path))
    assert shown["changed"] and shown["cut"] == {victim["file"]: cut_to}
    assert shown["moved"] == {victim["file"]: "/var/tmp/quarantine/%s" % victim["file"]}
    assert _fingerprint(host.real_path(host.dqlite_data_dir)) == before
    assert not host.real_path("/var/tmp/quarantine").exists()
    proc = run_ansible("ansible", host.name, "-m", "quorum.recovery.dqlite_repair", "--diff", *args,
                       inventory=lab.inventory_path)
    done = _module_result(proc)
    # the diff shows the listing read back from disk: the segment's size before and after the cut
    assert '-    "%s": %d' % (victim["file"], cut_at) in proc.stdout, proc.stdout
    assert '+    "%s": %d' % (victim["file"], cut_to) in proc.stdout, proc.stdout
    assert done["changed"] and done["member"]["verdict"] == "healthy", done["member"]["problems"]
    assert os.path.getsize(host.real_path("%s/%s" % (host.dqlite_data_dir, victim["file"]))) == cut_to
    kept = host.real_path("/var/tmp/quarantine/%s" % victim["file"])
    assert os.path.getsize(kept) == cut_at  # the original, as it was, kept aside
    manifest = json.loads(host.real_path("/var/tmp/quarantine/manifest.json").read_text())
    assert manifest[0]["file"] == victim["file"] and manifest[0]["cut_to"] == cut_to and manifest[0]["done"]
    repaired = _fingerprint(host.real_path(host.dqlite_data_dir))
    again = _module_result(run_ansible("ansible", host.name, "-m", "quorum.recovery.dqlite_repair", *args,
                                       inventory=lab.inventory_path))
    assert not again["changed"] and again["moved"] == {}
    assert _fingerprint(host.real_path(host.dqlite_data_dir)) == repaired
    member = _facts(lab, hosts=host.name)[host.name]
    assert member["verdict"] == "healthy", member["problems"]
    assert _starts(lab, host, "torn-cut")


def _starts(lab, host, tag, wait=6.0):
    """Start real dqlite-demo on a scratch copy of the member's dir, inside the host; True if it
    is still alive after `wait` seconds (a member of a 3-node cluster waits for peers, alive)."""
    base = "/var/tmp/start-%s" % tag
    lab.exec(host, ["sh", "-c", "rm -rf {0} && mkdir -p {0} && cp -a {1} {0}/".format(base, host.dqlite_data_dir)])
    proc = lab.spawn(host, ["dqlite-demo", "--api", "%s:18001" % host.address, "--db", host.dqlite_address,
                            "--dir", base])
    try:
        try:
            proc.wait(timeout=wait)
            return False
        except subprocess.TimeoutExpired:
            return True
    finally:
        lab.stop_spawned(proc, grace=0)


@pytest.fixture(autouse=True)
def _members_back(lab):
    yield
    lab.start_all(lab.hosts(), "dqlite")  # leave the cluster running for the next test
