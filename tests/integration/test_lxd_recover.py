"""recover.yml on REAL broken LXD clusters in the lab: Debian's lxd 5.0.2, three daemons, each in its
own host's namespaces (lab/lxd.py), reached over real SSH by the real ansible-playbook.

LXD is a flavor of the dqlite backend (recover_flavor=lxd): the facts come from database/global
(the raft directory) and database/local.db (node-local: the member's identity and LXD's member
list), the reconfigure is LXD's own command run once on the winner, database/global goes to the
others and each keeps its own local.db. Each scenario checks, after the recovery: every config key,
project, profile and volume loaded before the break, read through EVERY member's own daemon; a new
write made after it, read back through every member; exactly one reconfigure entry in every
member's segment listing (the same N-N segment) and the journal naming the winner alone as the
member where the source was built; a second run that changes nothing.

Before any LXD daemon starts the lab refuses unless no route leaves the lab subnet in any host
namespace (test_routes_are_checked_before_lxd_starts): LXD looks up public image servers at start.
"""
from __future__ import annotations

import json
import re
import subprocess
import time

import pytest
import yaml

from conftest import BIN, REPO, Lab, ansible_env, fingerprint, run_ansible
from lab.base import LabError, run
from test_recover_resume import _term1_changes  # every term-1 CHANGE entry above an index, in any segment

PLAYBOOK = "playbooks/recover.yml"
BACKUPS = "/var/backups/quorum-recovery"


@pytest.fixture
def lxd_lab():
    the_lab = Lab()
    try:
        yield the_lab
    finally:
        the_lab.down()


def _up(lab, count=3):
    hosts = lab.up(count, keys=10, lxd=True)
    loaded = lab.load_lxd_data(hosts[0], hosts, count=5)
    assert len(loaded["config"]) == 5 and len(loaded["volumes"]) == count, loaded
    return hosts, loaded


def _up_and_cut_for_a_move(lab):
    """Up, loaded, every LXD member killed, and the lab's other engines stopped: a host's address
    can change then (lab.readdress)."""
    hosts, loaded = _up(lab)
    lab.power_off("lxd")
    for host in hosts:
        lab.service(host, "dqlite", "stop")
        lab.service(host, "etcd", "stop")
    return hosts, loaded


def _recover(lab, *extra, check=True, mode=()):
    args = [PLAYBOOK, "-e", "recover_group=lxd", *mode]
    if "--check" not in mode:
        args += ["-e", "recover_confirm=yes"]
    for item in extra:
        args += ["-e", item]
    return run_ansible("ansible-playbook", *args, inventory=lab.lxd_inventory_path, check=check)


def _plan_winner(output):
    match = re.search(r'"winner: (\w+)"', output)
    assert match, output[-3000:]
    return match.group(1)


def _global(host):
    return host.real_path("/var/lib/lxd/database/global")


def _last_index(host):
    from ansible_collections.quorum.recovery.plugins.module_utils import dqlite_datadir
    return dqlite_datadir.inspect_datadir(str(_global(host)), "quick", identity="lxd-local-db")["log"]["last_index"]


def _journal(host):
    return json.loads(host.real_path(BACKUPS + "/journal-lxd.json").read_text())


def _assert_recovered(lab, survivors, loaded, floor, tag):
    """Every member answers with exactly the survivors online and holds everything loaded; a new
    write on one is read back through every other; one reconfigure, on the winner only."""
    names = sorted(h.name for h in survivors)
    for host in survivors:
        members = lab.lxd_members(host)
        assert sorted(m["name"] for m in members) == names, (host.name, members)
        assert all(m["status"] == "Online" for m in members), (host.name, members)
        data = lab.lxd_data(host)
        lost_volumes = [v for v in loaded["volumes"] if v.split("@")[1] not in names]
        want = dict(loaded, volumes=sorted(set(loaded["volumes"]) - set(lost_volumes)))
        assert data == want, (host.name, data, want)
    lab.lxc(survivors[-1], "config", "set", "user.qr.%s" % tag, "written-after-recovery")
    for host in survivors:
        assert lab.lxd_data(host)["config"].get("user.qr.%s" % tag) == "written-after-recovery", host.name
    journal = _journal(survivors[0])
    plan = journal["plan"]
    assert plan["source"]["host"] == plan["winner"], plan["source"]
    n = plan["source"]["expected_last_index"] + 1
    segment = "%016d-%016d" % (n, n)
    assert n == floor + 1, ("the winner was not the most advanced member", n, floor)
    for host in survivors:
        assert _journal(host)["recovery_id"] == journal["recovery_id"]
        assert _term1_changes(_global(host), above=floor) == [(n, segment)], host.name
    return plan


def test_routes_are_checked_before_lxd_starts(lxd_lab):
    """No default route and no route out of the lab subnet in any host namespace, or no LXD."""
    lab = lxd_lab
    hosts = lab.up(3, keys=0)
    for host in hosts:
        inside = ["ip", "netns", "exec", host.netns]
        assert run(inside + ["ip", "route", "show", "default"]).stdout.strip() == ""
        got = run(inside + ["ip", "route", "get", str(lab.subnet.network_address + 1)]).stdout
        assert "dev eth0" in got and " via " not in got, got
        assert run(inside + ["ip", "route", "get", "1.1.1.1"], check=False).returncode != 0
    # a default route, or any route out of the subnet (here blackholes: they carry nothing), makes
    # the lab refuse before any daemon runs
    for route, refusal in (("default", "h3 has a default route"), ("1.1.1.0/24", "h3 has a route out of the lab subnet")):
        run(["ip", "netns", "exec", hosts[2].netns, "ip", "route", "add", "blackhole", route])
        with pytest.raises(LabError, match=refusal):
            lab.start_lxd(hosts)
        for host in hosts:
            assert lab.service(host, "lxd", "status", check=False).returncode != 0, host.name
        run(["ip", "netns", "exec", hosts[2].netns, "ip", "route", "del", "blackhole", route])
    lab.start_lxd(hosts)
    assert lab.lxd_settled(hosts)
    # LXD's own lookups of the image servers failed unsent
    log = (hosts[0].private("log") / "lxd-daemon.log").read_text()
    assert "network is unreachable" in log, log[-2000:]


def test_power_cut_of_all_three(lxd_lab):
    lab = lxd_lab
    hosts, loaded = _up(lab)
    lab.power_off("lxd")  # SIGKILL on every member
    floor = max(_last_index(h) for h in hosts)
    before = {h.name: fingerprint(h.real_path("/var/lib/lxd/database"), ctime=True) for h in hosts}
    checked = _recover(lab, mode=("--check",))
    assert "LXD latest segment (not elected on)" in checked.stdout, checked.stdout[-3000:]
    assert {h.name: fingerprint(h.real_path("/var/lib/lxd/database"), ctime=True) for h in hosts} == before
    proc = _recover(lab)
    winner = _plan_winner(proc.stdout)
    plan = _assert_recovered(lab, hosts, loaded, floor, "powercut")
    assert plan["winner"] == winner
    # LXD's own command ran on ONE member: the task changed the winner alone
    block = proc.stdout.split("Reconfigure ONCE, on the winner only, with the real tool]", 1)[1].split("\nTASK [", 1)[0]
    assert re.findall(r"^changed: \[(\w+)\]", block, flags=re.M) == [winner], block
    journal = _journal(hosts[0])
    assert "source-built" in journal["steps"]
    again = _recover(lab)
    assert "nothing to do" in again.stdout and not re.search(r"changed=[1-9]", again.stdout), again.stdout[-2000:]
    # the others run as they were: each kept its own local.db
    for host in hosts:
        assert (host.real_path("/var/lib/lxd/database/local.db")).exists()


@pytest.mark.full
def test_two_of_three_lost_for_good(lxd_lab):
    lab = lxd_lab
    hosts, loaded = _up(lab)
    h1, h2, h3 = hosts
    for host in (h2, h3):
        lab.kill(host, "lxd")
        lab.partition(host)  # gone: no process, no network
    lab.kill(h1, "lxd")
    floor = _last_index(h1)
    proc = _recover(lab, '{"recover_lost": ["h2", "h3"]}')
    assert _plan_winner(proc.stdout) == "h1"
    assert "recover-from-quorum-loss" in proc.stdout or "changed: [h1]" in proc.stdout
    _assert_recovered(lab, [h1], loaded, floor, "lost2")
    again = _recover(lab, '{"recover_lost": ["h2", "h3"]}')
    assert "nothing to do" in again.stdout and not re.search(r"changed=[1-9]", again.stdout), again.stdout[-2000:]


@pytest.mark.full
def test_lagging_member_and_lxd_hint_disagreeing_with_the_election(lxd_lab):
    """h1 (the bootstrap member, the only one with a closed segment beyond the first) is cut off
    while the others take writes in their open segments: LXD's hint (closed segments only) points
    at h1, the election (last term and index, open segments included) picks h2 or h3, and the
    recovery keeps every write h1 never saw."""
    lab = lxd_lab
    hosts, loaded = _up(lab)
    h1, h2, h3 = hosts
    lab.partition(h1)
    lab._wait(lambda: any("database-leader" in m["roles"] and m["status"] == "Online"
                          for m in lab.lxd_members(h2) if m["name"] != "h1"), 90, "a leader among h2 and h3")
    for i in range(5):
        lab.lxc(h2, "config", "set", "user.qr.lag%d" % i, "while-h1-was-away")
    loaded = lab.lxd_data(h2)
    lab.power_off("lxd")
    lab.heal(h1)
    floor = max(_last_index(h) for h in hosts)
    shown = _recover(lab, mode=("--check",))
    out = shown.stdout
    assert re.search(r"LXD latest segment would pick h1 \(\d+\) over h[23]", out), out[-4000:]
    winner = _plan_winner(out)
    assert winner in ("h2", "h3"), out[-3000:]
    _recover(lab)
    _assert_recovered(lab, hosts, loaded, floor, "lag")


@pytest.mark.full
def test_member_whose_address_changed(lxd_lab):
    """h2's machine gets a new address while the cluster is down. Told so (recover_addresses),
    the winner's `lxd cluster edit` gives the raft configuration h2's new address, and h2's
    local.db is brought in line (its raft_nodes and its own https address keys; the old file kept)."""
    lab = lxd_lab
    hosts, loaded = _up_and_cut_for_a_move(lab)
    new_ip = str(lab.subnet.network_address + 42)
    h2 = lab.readdress(hosts[1], new_ip)
    h1, h3 = hosts[0], hosts[2]
    floor = max(_last_index(h) for h in (h1, h2, h3))
    before = {h.name: fingerprint(h.real_path("/var/lib/lxd/database"), ctime=True) for h in (h1, h2, h3)}
    refused = _recover(lab, check=False)
    assert refused.returncode != 0 and "is not an address of the host any more" in refused.stdout, \
        refused.stdout[-3000:]
    assert {h.name: fingerprint(h.real_path("/var/lib/lxd/database"), ctime=True) for h in (h1, h2, h3)} == before
    addresses = '{"recover_addresses": {"h2": "%s:8443"}}' % new_ip
    try:
        proc = _recover(lab, addresses)
    except AssertionError as exc:  # what the moved member's LXD said, beside the playbook's output
        raise AssertionError("%s%s" % (exc, lab._log_tail(h2, "lxd-daemon"))) from None
    assert "10.254.94.12:8443 -> %s:8443" % new_ip in proc.stdout or "-> %s:8443" % new_ip in proc.stdout
    _assert_recovered(lab, [h1, h2, h3], loaded, floor, "moved")
    for host in (h1, h2, h3):
        urls = sorted(m["url"] for m in lab.lxd_members(host))
        assert "https://%s:8443" % new_ip in urls, (host.name, urls)
    kept = list(h2.real_path("/var/lib/lxd/database").glob("global.replaced-*/local.db.before"))
    assert kept, "h2's local.db as it was is not kept"
    again = _recover(lab, addresses)
    assert "nothing to do" in again.stdout and not re.search(r"changed=[1-9]", again.stdout), again.stdout[-2000:]


@pytest.mark.full
def test_moved_member_reaching_a_quorum_before_the_winner_starts(lxd_lab, tmp_path):
    """The start-order race of an address change, made certain. Each LXD daemon, opening the global
    database, runs database/patch.global.sql (the members' addresses in the nodes table), then marks
    its own row of nodes by its own address, in one transaction; no row with that address, and the
    daemon exits ("updated 0 rows instead of 1"). `lxd cluster edit` leaves that file on the winner
    only. Here the winner is slow to start (its start command waits 45 s: a slow disk, a loaded
    host): the moved member and the third reach a quorum without it. The moved member must be
    serving before the winner even runs, and the recovery must end with it Online at its new
    address on every member's list."""
    lab = lxd_lab
    hosts, loaded = _up_and_cut_for_a_move(lab)
    winner = _plan_winner(_recover(lab, mode=("--check",)).stdout)
    new_ip = str(lab.subnet.network_address + 43)
    moved = lab.readdress([h for h in hosts if h.name != winner][0], new_ip)
    hosts = lab.hosts()
    floor = max(_last_index(h) for h in hosts)
    # the operator's service commands, with the winner's start 45 s late
    inventory = yaml.safe_load(lab.lxd_inventory_path.read_text())
    commands = dict(inventory["all"]["children"]["lxd"]["vars"]["recover_service_commands"])
    commands["start"] = "sh -c 'sleep 45 && exec %s'" % commands["start"]
    inventory["all"]["hosts"][winner]["recover_service_commands"] = commands
    slow = tmp_path / "inventory-slow-winner.yml"
    slow.write_text(yaml.safe_dump(inventory, sort_keys=False))
    addresses = '{"recover_addresses": {"%s": "%s:8443"}}' % (moved.name, new_ip)
    log = tmp_path / "recover.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(BIN / "ansible-playbook"), "-i", str(slow), PLAYBOOK, "-e", "recover_group=lxd",
                                 "-e", "recover_confirm=yes", "-e", addresses],
                                stdout=out, stderr=subprocess.STDOUT, env=ansible_env(), cwd=REPO)
        served_first = False
        deadline = time.monotonic() + 900
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                if not served_first and lab.lxd_cmd(moved, "waitready", "--timeout", "1", check=False,
                                                    timeout=20).returncode == 0:
                    # ready, and the winner's daemon not started yet
                    served_first = lab.service(lab.host(winner), "lxd", "status", check=False).returncode != 0
                time.sleep(1)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    text = log.read_text()
    assert proc.returncode == 0, text[-4000:] + lab._log_tail(moved, "lxd-daemon")
    assert "winner: %s" % winner in text
    assert served_first, "the moved member was never serving before the winner started" + lab._log_tail(
        moved, "lxd-daemon")
    _assert_recovered(lab, hosts, loaded, floor, "early")
    for host in hosts:
        urls = sorted(m["url"] for m in lab.lxd_members(host))
        assert "https://%s:8443" % new_ip in urls, (host.name, urls)
