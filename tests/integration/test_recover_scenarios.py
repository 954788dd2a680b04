"""recover.yml on REAL broken dqlite clusters in the lab: real SSH, real ansible-playbook, real
dqlite-demo and the real `.reconfigure`.

Each scenario breaks a fresh lab cluster the way the field reports show, runs the playbook, and
checks that every key acknowledged before the break is readable from every surviving member,
that the reconfigure segment exists exactly once in every member's log, and that declared lost
members are gone from the membership.
"""
from __future__ import annotations

import hashlib
import json
import os
import re

import pytest

from conftest import lab_class, run_ansible
from ansible_collections.quorum.recovery.plugins.module_utils import dqlite_format

PLAYBOOK = "playbooks/recover.yml"


@pytest.fixture
def fresh_lab(request):
    """A lab per test, always taken down; a test parametrized indirectly with a dqlite shape
    ("microk8s", "k8s-snap": lab/microk8s.py) gets members of that shape, recovered with the
    flavor of that name as shipped."""
    the_lab = lab_class(getattr(request, "param", None))()
    try:
        yield the_lab
    finally:
        the_lab.down()


def _recover(lab, *extra, check=True):
    args = [PLAYBOOK, "-e", "recover_confirm=yes"]
    for item in extra:
        args += ["-e", item]
    return run_ansible("ansible-playbook", *args, inventory=lab.inventory_path, check=check)


def _plan_winner(output):
    match = re.search(r'"winner: (\w+)"', output)
    assert match, output[-3000:]
    return match.group(1)


def _reconfigure_segments(lab, host):
    """Term-1 configuration segments N-N that the reconfigure appends (one closed segment of one entry)."""
    names = os.listdir(host.real_path(host.dqlite_data_dir))
    return sorted(n for n in names if re.fullmatch(r"(\d{16})-\1", n) and n != "%016d-%016d" % (1, 1))


def _assert_recovered(lab, survivors, keys, voters):
    for host in survivors:
        for prefix, (count, size) in keys.items():
            result = lab.check_keys(host, "dqlite", count, prefix, size=size)
            assert result["ok"], (host.name, prefix, result)
    segments = {h.name: _reconfigure_segments(lab, h) for h in survivors}
    assert len(set(map(tuple, segments.values()))) == 1 and len(segments[survivors[0].name]) == 1, segments
    nodes = lab.dqlite_nodes(survivors[0])
    assert sorted(n["Address"] for n in nodes) == sorted(h.dqlite_address for h in survivors), nodes
    assert sum(n["Role"] == "voter" for n in nodes) == voters, nodes


def _lag(lab, laggard, writer):
    """Cut `laggard` off while `writer` (on the majority side) gets 300 acknowledged keys
    (prefix acked): the laggard falls behind. The caller powers the cluster off, then heals."""
    lab.partition(laggard)
    lab._wait(lambda: lab.dqlite_leader(writer) not in ("", laggard.dqlite_address), 60,
              "a leader on the majority side")
    lab.churn(writer, "dqlite", 300, 64, prefix="acked")


def test_lagging_member_then_all_powered_off_mid_write(fresh_lab):
    lab = fresh_lab
    hosts = lab.up(3, keys=1000)
    h1, h2, h3 = hosts
    _lag(lab, h3, h1)  # h3 falls behind
    lab.power_off_mid_write(h1, "dqlite", "busy", count=100000, size=64)  # every member, SIGKILL
    lab.heal(h3)
    # inspect.yml: read-only, shows the plan, and shows a refusal instead of failing on it
    shown = run_ansible("ansible-playbook", "playbooks/inspect.yml", inventory=lab.inventory_path)
    assert _plan_winner(shown.stdout) in ("h1", "h2") and "behind" in shown.stdout
    refused = run_ansible("ansible-playbook", "playbooks/inspect.yml", "-e", "recover_winner=h3",
                          inventory=lab.inventory_path)
    assert "REFUSED:" in refused.stdout and "recover_winner=h3 is at term" in refused.stdout, refused.stdout[-3000:]
    proc = _recover(lab)
    winner = _plan_winner(proc.stdout)
    assert winner in ("h1", "h2"), "h3 lagged, yet won:\n" + proc.stdout[-3000:]
    assert "h3" in proc.stdout and "behind" in proc.stdout
    _assert_recovered(lab, hosts, {"key": (1000, 32), "acked": (300, 64)}, voters=3)
    # a second run changes nothing
    again = _recover(lab)
    assert "nothing to do" in again.stdout and re.search(r"changed=0 ", again.stdout), again.stdout[-2000:]


# the dqlite shapes of the lab besides dqlite-demo's, in the full tier (test_microk8s_recover.py has
# MicroK8s's CI scenario)
SHAPES = ["demo", pytest.param("microk8s", marks=pytest.mark.full), pytest.param("k8s-snap", marks=pytest.mark.full)]


@pytest.mark.parametrize("fresh_lab", SHAPES, indirect=True)
def test_two_of_three_lost_for_good(fresh_lab):
    lab = fresh_lab
    hosts = lab.up(3, keys=1000)
    h1, h2, h3 = hosts
    for host in (h2, h3):
        lab.kill(host, "dqlite")
        lab.kill(host, "etcd")
        lab.partition(host)  # gone: no process, no network
    lab.service(h1, "dqlite", "stop")
    # undeclared, the unreachable members stop the run before any change
    refused = _recover(lab, check=False)
    assert refused.returncode != 0, refused.stdout[-2000:]
    if "unreachable and not declared lost: h2, h3" not in refused.stdout + refused.stderr:
        with open("/tmp/refused-output.txt", "w") as handle:
            handle.write(refused.stdout + "\n---stderr---\n" + refused.stderr)
        raise AssertionError("no refusal naming h2, h3 (output in /tmp/refused-output.txt)")
    proc = _recover(lab, '{"recover_lost": ["h2", "h3"]}')
    assert _plan_winner(proc.stdout) == "h1"
    assert "only 1 of the 3 voters" in proc.stdout
    _assert_recovered(lab, [h1], {"key": (1000, 32)}, voters=1)


def _newest_snapshot(host):
    return sorted(n for n in os.listdir(host.real_path(host.dqlite_data_dir))
                  if n.startswith("snapshot-") and not n.endswith(".meta"))[-1]


@pytest.mark.parametrize("fresh_lab", SHAPES, indirect=True)
def test_corrupt_newest_snapshot_on_the_two_most_advanced_and_corrupt_segment_on_another(fresh_lab):
    """h1 and h2 end level (a clean stop), each with a corrupt newest snapshot: one of them must be
    repaired to be the source, and only that one is (the other is rebuilt from it, its damaged
    snapshot moved aside with its files). The plan --check shows is the plan carried out, with the
    repair in it, and it comes before any change."""
    lab = fresh_lab
    hosts = lab.up(3, keys=1000)
    h1, h2, h3 = hosts
    lab.churn(h1, "dqlite", 2500, 200)  # dqlite snapshots every ~1024 entries
    for host in hosts:
        lab.service(host, "dqlite", "stop")
    newest = {h.name: _newest_snapshot(h) for h in (h1, h2)}
    for host in (h1, h2):
        lab.corrupt(host, "%s/%s" % (host.dqlite_data_dir, newest[host.name]), offset=200, flip=4)
    closed = sorted(n for n in os.listdir(h3.real_path(h3.dqlite_data_dir)) if re.fullmatch(r"\d{16}-\d{16}", n))
    middle = closed[len(closed) // 2]
    lab.corrupt(h3, "%s/%s" % (h3.dqlite_data_dir, middle), offset=40, flip=1)
    checked = run_ansible("ansible-playbook", PLAYBOOK, "--check", inventory=lab.inventory_path).stdout
    winner = _plan_winner(checked)
    other = "h2" if winner == "h1" else "h1"
    assert winner in ("h1", "h2"), checked[-4000:]
    shown = checked[checked.find("TASK [quorum.recovery.recover : The plan]"):][:6000]
    assert "repairs first" in shown and "%s: repair (move aside %s" % (winner, newest[winner]) in shown, shown
    assert "%s: repair" % other not in shown and "warnings:" in shown, shown
    assert middle in shown, shown  # h3's damaged segment is named in the plan
    proc = _recover(lab)
    assert _plan_winner(proc.stdout) == winner
    # the winner's damaged snapshot quarantined, never deleted; the other one never repaired
    winner_host, other_host = (h1, h2) if winner == "h1" else (h2, h1)
    quarantine = winner_host.real_path(winner_host.dqlite_data_dir + ".quarantine")
    moved = [n for _root, _dirs, files in os.walk(quarantine) for n in files]
    assert newest[winner] in moved and newest[winner] + ".meta" in moved and "manifest.json" in moved
    assert not os.path.exists(other_host.real_path(other_host.dqlite_data_dir + ".quarantine"))
    _assert_recovered(lab, hosts, {"key": (1000, 32), "churn": (2500, 200)}, voters=3)
    # the damaged files of the others are kept, never deleted: moved aside by the restore
    for host, name in ((other_host, newest[other]), (h3, middle)):
        parent = host.real_path(os.path.dirname(host.dqlite_data_dir))
        kept = [n for d in os.listdir(parent) if ".replaced-" in d
                for _root, _dirs, files in os.walk(os.path.join(parent, d)) for n in files]
        assert name in kept, (host.name, kept)
    assert "replaced files moved to" in proc.stdout and "originals in" in proc.stdout


def test_five_members_losing_three(fresh_lab):
    lab = fresh_lab
    hosts = lab.up(5, keys=1000)
    lost = hosts[:3]  # h1 bootstrapped the cluster; h1-h3 include the first voters
    survivors = hosts[3:]
    for host in lost:
        lab.kill(host, "dqlite")
        lab.kill(host, "etcd")
        lab.partition(host)
    for host in survivors:
        lab.service(host, "dqlite", "stop")
    proc = _recover(lab, '{"recover_lost": ["h1", "h2", "h3"]}')
    assert _plan_winner(proc.stdout) in ("h4", "h5")
    _assert_recovered(lab, survivors, {"key": (1000, 32)}, voters=1)


def test_a_cluster_that_does_not_come_back_fails_by_its_timeout_and_a_rerun_finishes(fresh_lab):
    lab = fresh_lab
    hosts = lab.up(3, keys=200)
    lab.power_off("dqlite")
    service = " ".join(lab.service_cmd)
    # a start command that starts nothing: the verification must give up at its timeout, naming it
    no_start = json.dumps({"recover_verify_timeout": 20, "recover_service_commands": {
        "start": "true", "stop": "%s dqlite stop" % service, "status": "%s dqlite status" % service}})
    stuck = _recover(lab, no_start, check=False)
    assert stuck.returncode != 0, stuck.stdout[-2000:]
    assert "did not reach the planned membership within 20 s" in stuck.stdout, stuck.stdout[-3000:]
    # the journal says the members were being started: a re-run only starts and verifies
    again = _recover(lab)
    assert "COMPLETE" in again.stdout and "Reconfigure ONCE" not in _ran_tasks(again.stdout), again.stdout[-3000:]
    _assert_recovered(lab, hosts, {"key": (200, 32)}, voters=3)


def _ran_tasks(output):
    """The names of the tasks that did something other than skip."""
    ran, name = [], None
    for line in output.splitlines():
        if line.startswith("TASK ["):
            name = line
        elif name and line.startswith(("ok:", "changed:")):
            ran.append(name)
            name = None
    return "\n".join(ran)


def test_member_whose_address_changed(fresh_lab):
    lab = fresh_lab
    hosts = lab.up(3, keys=1000)
    for host in hosts:  # the cluster is down while h2's machine gets a new address (a new lease)
        lab.service(host, "dqlite", "stop")
        lab.service(host, "etcd", "stop")
    old = hosts[1].dqlite_address
    new_ip = str(lab.subnet.network_address + 42)
    h2 = lab.readdress(hosts[1], new_ip)
    h1, h3 = hosts[0], hosts[2]
    assert h2.address == new_ip and lab.host("h2") == h2
    before = {h.name: sorted(os.listdir(h.real_path(h.dqlite_data_dir))) for h in (h1, h2, h3)}

    # Not told, the plan notices that h2's host no longer holds the address in its info.yaml and
    # refuses before any change: reconfigured under the old address, h2 would never start again
    # (go-dqlite: address in info.yaml does not match) and the others would call the old one.
    refused = _recover(lab, check=False)
    assert refused.returncode != 0, refused.stdout[-3000:]
    assert ("h2: its dqlite address %s (info.yaml) is not an address of the host any more" % old) in refused.stdout
    assert 'recover_addresses={\\"h2\\": \\"%s\\"}' % h2.dqlite_address in refused.stdout, refused.stdout[-3000:]
    assert re.search(r"changed=0 ", refused.stdout) and not re.search(r"changed=[1-9]", refused.stdout)
    assert {h.name: sorted(os.listdir(h.real_path(h.dqlite_data_dir))) for h in (h1, h2, h3)} == before

    addresses = '{"recover_addresses": {"h2": "%s"}}' % h2.dqlite_address
    proc = _recover(lab, addresses)
    out = proc.stdout
    assert "%s -> %s" % (old, h2.dqlite_address) in out, out[-4000:]
    # the restore wrote h2's node-local info.yaml with its new address (the old one is in its safety archive)
    info = (h2.real_path(h2.dqlite_data_dir) / "info.yaml").read_text()
    assert "Address: %s" % h2.dqlite_address in info, info
    _assert_recovered(lab, [h1, h2, h3], {"key": (1000, 32)}, voters=3)
    for host in (h1, h2, h3):  # every member, asked itself, names h2 by its new address only
        addresses_seen = sorted(n["Address"] for n in lab.dqlite_nodes(host))
        assert addresses_seen == sorted([h1.dqlite_address, h2.dqlite_address, h3.dqlite_address]), addresses_seen
    info = h2.real_path(h2.dqlite_data_dir + "/info.yaml").read_text()
    assert "Address: %s" % h2.dqlite_address in info, info
    # a second run changes nothing
    again = _recover(lab, addresses)
    assert "nothing to do" in again.stdout and re.search(r"changed=0 ", again.stdout), again.stdout[-2000:]
    assert not re.search(r"changed=[1-9]", again.stdout), again.stdout[-2000:]


def _torn_tail(lab, host):
    """Garbage after the last complete batch of the newest open segment: a batch whose write was
    cut by the power loss, so never acknowledged. Raft would cut it at start; the inspection
    proposes the same cut as a repair, so the member is repairable at the same position."""
    directory = host.real_path(host.dqlite_data_dir)
    opened = sorted((n for n in os.listdir(directory) if n.startswith("open-")
                     and dqlite_format.parse_segment((directory / n).read_bytes(), full=False, closed=False)["batches"]),
                    key=lambda n: int(n.split("-")[1]))
    name = opened[-1]
    end = dqlite_format.parse_segment((directory / name).read_bytes(), full=False, closed=False)["end"]
    lab.corrupt(host, "%s/%s" % (host.dqlite_data_dir, name), offset=end, flip=64)  # zeros -> 0xFF
    return name


def _tree(lab):
    """Every file next to and under each member's data directory: name -> (sha256, size, mtime)."""
    out = {}
    for host in lab.hosts():
        parent = host.real_path(os.path.dirname(host.dqlite_data_dir))
        for root, _dirs, files in os.walk(parent):
            for name in files:
                path = os.path.join(root, name)
                with open(path, "rb") as handle:
                    out[(host.name, os.path.relpath(path, parent))] = (
                        hashlib.sha256(handle.read()).hexdigest(), os.path.getsize(path), os.stat(path).st_mtime_ns)
        out[(host.name, "state")] = os.path.exists(host.real_path("/var/backups/quorum-recovery"))
    return out


def test_a_refused_override_changes_nothing_even_when_the_winner_needs_a_repair(fresh_lab):
    """recover_winner naming a member behind the others is refused by the ONE plan, before any
    change: no journal, no archive, no repair (the most advanced members need one), in --check and
    in a real run alike. Then, without the override, exactly one member (the winner) is repaired."""
    lab = fresh_lab
    hosts = lab.up(3, keys=1000)
    h1, h2, h3 = hosts
    _lag(lab, h3, h1)  # h3 falls behind
    lab.power_off("dqlite")  # every member, SIGKILL: the newest entries stay in open segments
    lab.heal(h3)
    torn = {h.name: _torn_tail(lab, h) for h in (h1, h2)}
    before = _tree(lab)
    for check in (True, False):
        args = [PLAYBOOK, "-e", "recover_winner=h3"] + (["--check"] if check else ["-e", "recover_confirm=yes"])
        proc = run_ansible("ansible-playbook", *args, inventory=lab.inventory_path, check=False)
        assert proc.returncode != 0, proc.stdout[-3000:]
        assert "recover_winner=h3 is at term" in proc.stdout and "behind" in proc.stdout, proc.stdout[-3000:]
        assert _tree(lab) == before, "a refused override changed files (check=%s)" % check
    proc = _recover(lab)
    winner = _plan_winner(proc.stdout)
    assert winner in ("h1", "h2")
    for host in (h1, h2):
        quarantine = host.real_path(host.dqlite_data_dir + ".quarantine")
        assert os.path.exists(quarantine) == (host.name == winner), (host.name, winner)
    _assert_recovered(lab, hosts, {"key": (1000, 32), "acked": (300, 64)}, voters=3)
    assert torn  # the torn segments were real open segments of h1 and h2


def test_the_first_node_lags_and_is_restored_from_another(fresh_lab):
    """h1 holds go-dqlite's bootstrap ID: restored from another member without its own
    metadata1/2 it bootstraps at start and dies (raft_bootstrap() fails on the log it was given).
    The restore keeps each member's own term and vote (found by benchmarks/recover_vs_manual.py)."""
    lab = fresh_lab
    hosts = lab.up(3, keys=1000)
    h1, h2, h3 = hosts
    _lag(lab, h1, h2)  # h1 falls behind
    lab.power_off("dqlite")
    lab.heal(h1)
    proc = _recover(lab)
    assert _plan_winner(proc.stdout) in ("h2", "h3"), proc.stdout[-3000:]
    _assert_recovered(lab, hosts, {"key": (1000, 32), "acked": (300, 64)}, voters=3)
    parent = h1.real_path(os.path.dirname(h1.dqlite_data_dir))
    aside = [n for d in os.listdir(parent) if ".replaced-" in d for n in os.listdir(os.path.join(parent, d))]
    assert aside and "metadata1" not in aside, aside  # kept in place, not moved aside
