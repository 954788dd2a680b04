"""The recovery plan's election and refusals, on member summaries as dqlite_info and etcd_info
fill them in (module_utils/member.py).

These are synthetic summaries, so every branch of the rules can be reached; the integration
tests (test_recover_scenarios.py) run the same code on facts read from real broken lab clusters,
and test_member_summary.py checks that both inspectors fill the summary from real files.
"""
from __future__ import annotations

import functools

import pytest

from ansible_collections.quorum.recovery.plugins.module_utils import election


class dp:  # the dqlite engine's plan, as the role asks for it
    PlanRefused = election.PlanRefused
    make_plan = functools.partial(election.make_plan, "dqlite")


IDS = {"h1": 101, "h2": 102, "h3": 103, "h4": 104, "h5": 105}


def addr(host):
    return "10.0.0.%d:9001" % IDS[host]


def servers(hosts, roles=None):
    return [{"id": IDS[h], "address": addr(h), "role": (roles or {}).get(h, "voter")} for h in hosts]


def member(host, term, index, verdict="healthy", snap=0, digest="same", config=("h1", "h2", "h3"), problems=None,
           roles=None, terms=None, after_repair=None):
    return {"engine": "dqlite", "exists": True, "verdict": verdict, "member_id": IDS[host], "address": addr(host),
            "address_source": "info.yaml", "last_term": term, "last_index": index, "snapshot_index": snap,
            "first_index": 1, "last_entry_sha256": digest, "voters": servers(config, roles),
            "problems": problems or [], "terms": terms, "after_repair": after_repair, "tie_break": []}


def three(**over):
    base = {"h1": member("h1", 2, 100), "h2": member("h2", 2, 90), "h3": member("h3", 2, 80)}
    base.update(over)
    return base


def test_most_advanced_by_last_entry_term_then_index():
    # h3 campaigned alone (its metadata term would be high) but its LOG ends in an older term
    plan = dp.make_plan({"h1": member("h1", 3, 50), "h2": member("h2", 2, 400), "h3": member("h3", 2, 390)})
    assert plan["winner"] == "h1"
    assert plan["source"] == {"host": "h1", "step": "reconfigure", "expected_last_index": 50,
                              "segment": "0000000000000051-0000000000000051"}
    assert "term 3 index 50" in plan["why"][0]
    assert [m["fate"] for m in plan["members"]] == ["winner", "restore from h1", "restore from h1"]


def test_tie_with_same_last_entry_is_broken_by_name_and_with_different_entries_refused():
    plan = dp.make_plan(three(h2=member("h2", 2, 100), h1=member("h1", 2, 100)))
    assert plan["winner"] == "h1"
    with pytest.raises(dp.PlanRefused, match="diverge"):
        dp.make_plan(three(h2=member("h2", 2, 100, digest="other")))


def test_override_behind_another_member_is_refused_and_an_equal_one_accepted():
    with pytest.raises(dp.PlanRefused, match="recover_winner=h2 is at term 2 index 90, behind h1"):
        dp.make_plan(three(), winner="h2")
    plan = dp.make_plan(three(h2=member("h2", 2, 100)), winner="h2")
    assert plan["winner"] == "h2" and "recover_winner" in plan["why"][0]


def test_members_of_different_clusters_are_refused():
    other = member("h3", 5, 999, config=("h3",))
    with pytest.raises(dp.PlanRefused, match="different clusters"):
        dp.make_plan({"h1": member("h1", 2, 100, config=("h1", "h2")), "h2": member("h2", 2, 99, config=("h1", "h2")),
                      "h3": other})


def test_no_usable_member_is_refused_naming_each_problem():
    bad = [{"severity": "error", "file": "0000000000000001-0000000000000050", "message": "found 3 entries"}]
    with pytest.raises(dp.PlanRefused, match="no usable member.*found 3 entries"):
        dp.make_plan({"h1": member("h1", 2, 100, verdict="unusable", problems=bad)})


def test_winner_lacking_another_members_snapshot_is_refused():
    # h2's log ends in an older term, but its snapshot holds applied (so committed) entries up to 150
    with pytest.raises(dp.PlanRefused, match="h2 has a snapshot at index 150, beyond the winner h1's last index 100"):
        dp.make_plan(three(h2=member("h2", 1, 160, snap=150)))


def test_every_server_must_be_reachable_or_declared_lost():
    members = {"h1": member("h1", 2, 100)}
    with pytest.raises(dp.PlanRefused) as err:
        dp.make_plan(members)
    assert len(err.value.reasons) == 2 and "member 102 at 10.0.0.102:9001" in err.value.reasons[0]
    for lost in (["h2", "h3"], [addr("h2"), addr("h3")], [str(IDS["h2"]), str(IDS["h3"])]):
        plan = dp.make_plan(members, lost=lost, hosts={"h2": addr("h2"), "h3": addr("h3")})
        assert plan["membership"] == [{"host": "h1", "id": 101, "address": addr("h1"), "role": "voter"}]
        assert sorted(s["id"] for s in plan["lost"]) == [102, 103]
        assert any("only 1 of the 3 voters" in w for w in plan["warnings"])
    # a lost host with no recover_address (microk8s: the address is in info.yaml, which a lost host
    # cannot give): the role passes its ansible_host, which names the member at that host
    plan = dp.make_plan(members, lost=["h2", "h3"], hosts={"h1": "", "h2": "10.0.0.102", "h3": "10.0.0.103"})
    assert sorted(s["id"] for s in plan["lost"]) == [102, 103]
    with pytest.raises(dp.PlanRefused, match="member 103 at 10.0.0.103:9001 is in the membership but neither"):
        dp.make_plan(members, lost=["h2", "h3"], hosts={"h1": "", "h2": "10.0.0.102", "h3": "10.0.0.1"})


def torn(host, term, index, cut_at=None):
    """A member whose open segment is cut inside a batch: the repair cuts it at its last complete batch."""
    cut = {"truncate": {"file": "open-2", "length": 4096}}
    return member(host, term, index, verdict="repairable", problems=[
        {"severity": "error", "file": "open-2", "message": "cut inside batch 3", "repair": cut}],
        after_repair={"last_term": term, "last_index": cut_at or index, "snapshot_index": 0,
                      "last_entry_sha256": "same", "repairs": [cut]})


def test_a_repairable_member_ahead_is_planned_as_repaired_and_only_the_winner_is_repaired():
    cut = {"truncate": {"file": "open-2", "length": 4096}}
    plan = dp.make_plan(three(h1=torn("h1", 2, 120)))
    # the final plan, with the repair in it: --check shows what will be done
    assert plan["winner"] == "h1" and plan["repairs"] == {"h1": [cut]}
    assert plan["parts"]["h1"]["repairs"] == [cut] and plan["parts"]["h2"]["repairs"] == []
    assert any("cut open-2 at byte 4096" in a for a in plan["parts"]["h1"]["actions"])
    assert any("needs a repair before it can be the source" in w for w in plan["why"])
    with pytest.raises(dp.PlanRefused, match="h1 is still repairable after its repair"):
        dp.make_plan(three(h1=torn("h1", 2, 120)), allow_repairs=False)
    # behind the best healthy member: never repaired, it is rebuilt from the winner
    plan = dp.make_plan(three(h3=torn("h3", 2, 10)))
    assert plan["winner"] == "h1" and plan["repairs"] == {}
    assert "h3 is at term 2 index 10 (90 entries behind); its damage needs no repair, it is rebuilt from the " \
        "winner: open-2: cut inside batch 3" in plan["why"]
    # ahead before its repair, behind after it: not the winner, not repaired
    plan = dp.make_plan(three(h3=torn("h3", 2, 130, cut_at=95)))
    assert plan["winner"] == "h1" and plan["repairs"] == {}
    assert next(m for m in plan["members"] if m["host"] == "h3")["last_index"] == 95
    # level with a healthy member: the healthy one wins, nothing is repaired
    plan = dp.make_plan(three(h1=torn("h1", 2, 100), h2=member("h2", 2, 100)))
    assert plan["winner"] == "h2" and plan["repairs"] == {}


def test_a_refused_override_is_refused_before_any_repair():
    # the most advanced member needs a repair and the operator names one 30 entries behind: the
    # single plan refuses, so nothing (not even the repair) happens first
    with pytest.raises(dp.PlanRefused, match="recover_winner=h2 is at term 2 index 90, behind h1 at term 2 index 120") \
            as err:
        dp.make_plan(three(h1=torn("h1", 2, 120)), winner="h2")
    assert err.value.partial["repairs"] == {"h1": [{"truncate": {"file": "open-2", "length": 4096}}]}


def test_an_unusable_member_ahead_refuses_unless_a_majority_proves_its_extra_entries_uncommitted():
    bad = [{"severity": "error", "file": "x", "message": "closed segment: bad checksum"}]
    ahead = member("h3", 2, 500, verdict="unusable", problems=bad)
    plan = dp.make_plan(three(h3=ahead))  # h1 and h2 are 2 of 3 voters
    assert plan["winner"] == "h1" and any("not committed" in w for w in plan["warnings"])
    alone = {"h1": member("h1", 2, 100), "h3": ahead}
    with pytest.raises(dp.PlanRefused, match="recover_accept_loss"):
        dp.make_plan(alone, lost=["h2"], hosts={"h2": addr("h2")})
    plan = dp.make_plan(alone, lost=["h2"], hosts={"h2": addr("h2")}, accept_loss=True)
    assert any("accepted" in w for w in plan["warnings"])


@pytest.mark.parametrize("count,voters", [(1, 1), (2, 1), (3, 3), (4, 3), (5, 3)])
def test_new_membership_has_an_odd_number_of_voters_winner_first(count, voters):
    hosts = ["h1", "h2", "h3", "h4", "h5"][:count]
    members = {h: member(h, 2, 100 - i, config=tuple(IDS and ["h1", "h2", "h3", "h4", "h5"])) for i, h in enumerate(hosts)}
    lost = [h for h in IDS if h not in hosts]
    plan = dp.make_plan(members, lost=lost, hosts={h: addr(h) for h in IDS})
    roles = [m["role"] for m in plan["membership"]]
    assert plan["membership"][0]["host"] == "h1" and roles[0] == "voter"
    assert roles.count("voter") == voters and len(roles) == count


def test_a_changed_address_goes_into_the_new_membership():
    plan = dp.make_plan(three(), addresses={"h2": "10.9.9.9:9001"})
    assert {m["host"]: m["address"] for m in plan["membership"]}["h2"] == "10.9.9.9:9001"


def test_member_outside_the_winners_membership_is_refused():
    stray = member("h4", 2, 10)
    with pytest.raises(dp.PlanRefused, match=r"h4 \(member 104\) is not in the winner's membership"):
        dp.make_plan(three(h4=stray))


def test_plan_hash_is_stable_and_follows_the_decision():
    a, b = dp.make_plan(three()), dp.make_plan(three())
    assert a["hash"] == b["hash"]
    assert dp.make_plan(three(h2=member("h2", 2, 100)), winner="h2")["hash"] != a["hash"]


def test_table_and_picture_show_every_member():
    plan = dp.make_plan(three(h3=member("h3", 2, 80, snap=64)))
    assert len(plan["table"]) == 2 + 3
    assert plan["table"][2].split()[:3] == ["h1", "101", addr("h1")]
    lines = {line.split()[0]: line for line in plan["picture"][1:4]}
    assert "<- winner" in lines["h1"] and "20 behind" in lines["h3"] and "S" in lines["h3"]


def moved(host, **facts):
    """h's facts after its host's address changed: info.yaml and the log still name the old one."""
    return dict(member(host, 2, 90 if host == "h2" else 100), address_local=False, **facts)


def test_a_member_whose_host_lost_its_address_is_refused_until_the_new_one_is_given():
    with pytest.raises(dp.PlanRefused, match=r'h2: its dqlite address 10.0.0.102:9001 \(info.yaml\) is not an address '
                       r'of the host any more; .*recover_addresses=\{"h2": "<its new address>:<port>"\}'):
        dp.make_plan(three(h2=moved("h2")))
    # the inventory already names the new address: the refusal says exactly what to pass
    with pytest.raises(dp.PlanRefused, match=r'recover_addresses=\{"h2": "10.9.9.9:9001"\}'):
        dp.make_plan(three(h2=moved("h2")), hosts={"h1": addr("h1"), "h2": "10.9.9.9:9001", "h3": addr("h3")})
    plan = dp.make_plan(three(h2=moved("h2", new_address_local=True)), addresses={"h2": "10.9.9.9:9001"},
                        hosts={"h1": addr("h1"), "h2": "10.9.9.9:9001", "h3": addr("h3")})
    assert {m["host"]: m["address"] for m in plan["membership"]} == {
        "h1": addr("h1"), "h2": "10.9.9.9:9001", "h3": addr("h3")}
    row = next(m for m in plan["members"] if m["host"] == "h2")
    assert row["address"] == addr("h2") and row["new_address"] == "10.9.9.9:9001"
    assert any("10.0.0.102:9001 -> 10.9.9.9:9001" in line for line in plan["table"])
    assert "write info.yaml with its new address 10.9.9.9:9001" in plan["parts"]["h2"]["actions"]
    assert not any("info.yaml" in a for a in plan["parts"]["h3"]["actions"])
    assert any("h2's address changes from 10.0.0.102:9001 to 10.9.9.9:9001" in w for w in plan["why"])


def test_an_inventory_address_that_differs_from_info_yaml_is_refused_unless_declared():
    hosts = {"h1": addr("h1"), "h2": "10.9.9.9:9001", "h3": addr("h3")}
    with pytest.raises(dp.PlanRefused, match=r"h2: the inventory's recover_address 10.9.9.9:9001 differs from "
                       r"10.0.0.102:9001 in its info.yaml"):
        dp.make_plan(three(), hosts=hosts)
    assert dp.make_plan(three(), hosts=hosts, addresses={"h2": "10.9.9.9:9001"})["membership"][1]["address"] \
        == "10.9.9.9:9001"


@pytest.mark.parametrize("facts, addresses, hosts, match", [
    # a typo: the host does not hold the address given
    ({"new_address_local": False}, {"h2": "10.9.9.8:9001"}, {}, "10.9.9.8:9001, which is not an address of that host"),
    # the inventory still names another address; the checks after the start would ask the wrong one
    ({}, {"h2": "10.9.9.9:9001"}, {"h2": "10.9.9.8:9001"}, "make them agree"),
    # two members on one address
    ({}, {"h2": addr("h3")}, {}, "h2 and h3 would both have the address 10.0.0.103:9001"),
])
def test_a_new_address_that_cannot_work_is_refused(facts, addresses, hosts, match):
    with pytest.raises(dp.PlanRefused, match=match):
        dp.make_plan(three(h2=dict(member("h2", 2, 90), **facts)), addresses=addresses, hosts=hosts)


def test_unknown_address_locality_refuses_nothing():
    # facts from an older dqlite_facts, or a name that does not resolve: no address_local at all
    plan = dp.make_plan(three(h2=dict(member("h2", 2, 90), address_local=None)))
    assert plan["membership"][1]["address"] == addr("h2") and "new_address" in plan["members"][1]


def test_each_member_says_what_choosing_it_would_lose():
    # h2: the same term, 10 behind; h3: an old leader whose term-2 tail parted from the winner at 60
    plan = dp.make_plan({"h1": member("h1", 3, 100, terms=[[1, 1], [2, 41], [3, 61]]),
                         "h2": member("h2", 3, 90, terms=[[1, 1], [2, 41], [3, 61]]),
                         "h3": member("h3", 2, 75, terms=[[1, 1], [2, 41]])})
    loss = {m["host"]: m["if_chosen"] for m in plan["members"]}
    assert loss["h2"] == "choosing it would lose the 10 entries 91-100"
    assert loss["h3"].startswith("its log parts from the winner's after index 60: choosing it would drop the "
                                 "winner's entries 61-100 (40), and its own entries 61-75 are an unacknowledged tail")


@pytest.mark.parametrize("a, b, expected", [
    ([[1, 1], [2, 41]], [[1, 1], [2, 41]], 75),          # same terms: the shorter end
    ([[1, 1], [2, 41], [3, 61]], [[1, 1], [2, 41]], 60),  # b's term 2 goes on where a's term 3 began
    ([[1, 1], [3, 41]], [[1, 1], [2, 41]], 40),          # parted right at 41
    ([[5, 200]], [[4, 150], [5, 210]], 100),             # no common term after the snapshots: the snapshot
    (None, [[1, 1]], None),
])
def test_parting_index(a, b, expected):
    mine = {"terms": a, "last_index": 80, "snapshot_index": 100 if a == [[5, 200]] else 0}
    theirs = {"terms": b, "last_index": 75, "snapshot_index": 120 if a == [[5, 200]] else 0}
    assert election.parting_index(mine, theirs) == expected


def etcd(host, last_term, last_index, current_term, commit=0, cluster="c1", verdict="healthy", applied=0, rev=0):
    voters = [{"id": "%x" % IDS[h], "name": h, "address": "http://%s:2380" % addr(h).split(":", maxsplit=1)[0], "role": "voter"}
              for h in ("h1", "h2", "h3")]
    return {"engine": "etcd", "exists": True, "verdict": verdict, "member_id": "%x" % IDS[host],
            "cluster_key": cluster, "address": voters[int(host[1]) - 1]["address"], "address_source": "membership",
            "last_term": last_term, "last_index": last_index, "snapshot_index": 0, "current_term": current_term,
            "commit": commit, "tie_break": [max(commit, applied), rev], "voters": voters, "problems": [],
            "terms": None, "after_repair": None}


def test_etcd_ranks_by_log_never_by_the_term_of_a_lone_campaign_then_by_applied_index_and_revision():
    plan = election.make_plan("etcd", {"h1": etcd("h1", 2, 500, 2, 499), "h2": etcd("h2", 2, 498, 2, 498),
                                       "h3": etcd("h3", 2, 300, 9, 300)})
    assert plan["winner"] == "h1" and plan["source"]["beyond_commit"] == 1
    assert any("h3's current term 9 is above every member's last log term (2)" in w for w in plan["warnings"])
    assert [m["role"] for m in plan["membership"]] == ["voter"] * 3
    tie = election.make_plan("etcd", {"h1": etcd("h1", 2, 10, 2, 9, applied=10, rev=5),
                                      "h2": etcd("h2", 2, 10, 2, 10, applied=10, rev=7),
                                      "h3": etcd("h3", 2, 10, 2, 10, applied=10, rev=6)})
    assert tie["winner"] == "h2" and any("wins on applied index, then db revision" in w for w in tie["why"])
    with pytest.raises(election.PlanRefused, match=r"different clusters \(cluster IDs differ\)"):
        election.make_plan("etcd", {"h1": etcd("h1", 2, 10, 2), "h2": etcd("h2", 2, 10, 2, cluster="c2"),
                                    "h3": etcd("h3", 2, 10, 2)})


def test_notes_say_whether_a_warning_matters():
    note = {"severity": "info", "file": "cluster.yaml", "message": "cluster.yaml disagrees with the membership in "
            "the log", "remedy": "the recovery writes it from the plan"}
    plan = dp.make_plan(three(h1=member("h1", 2, 100, problems=[note]), h2=member("h2", 2, 90, problems=[note])))
    assert "h1: cluster.yaml: cluster.yaml disagrees with the membership in the log - does not matter: the " \
        "recovery writes it from the plan" in plan["notes"]
    assert any(n.startswith("h2:") and "replaced by the winner's" in n for n in plan["notes"])


def test_etcd_membership_keeps_names_and_a_member_without_data_is_found_by_its_name():
    gone = {"engine": "etcd", "exists": False, "verdict": "unusable", "problems": [], "voters": []}
    plan = election.make_plan("etcd", {"h1": etcd("h1", 2, 500, 2, 499), "h2": etcd("h2", 2, 498, 2, 498),
                                       "h3": gone})
    assert [(m["host"], m["name"]) for m in plan["membership"]] == [("h1", "h1"), ("h2", "h2"), ("h3", "h3")]
    assert plan["parts"]["h3"]["part"] == "restore" and plan["parts"]["h3"]["id"] == "%x" % IDS["h3"]


def test_a_lost_entry_that_names_no_member_is_refused():
    with pytest.raises(election.PlanRefused, match=r"recover_lost names h33, which is neither an inventory member"):
        election.make_plan("etcd", {"h1": etcd("h1", 2, 500, 2, 499), "h2": etcd("h2", 2, 498, 2, 498)},
                           lost=["h33"], hosts={"h1": "", "h2": ""})
    plan = election.make_plan("etcd", {"h1": etcd("h1", 2, 500, 2, 499), "h2": etcd("h2", 2, 498, 2, 498)},
                              lost=["h3"], hosts={"h1": "", "h2": ""})  # by its etcd name
    assert [m["host"] for m in plan["membership"]] == ["h1", "h2"] and len(plan["lost"]) == 1


def test_etcd_plan_says_what_lies_beyond_commit_and_derives_ids_like_etcd():
    from ansible_collections.quorum.recovery.plugins.module_utils import etcd_plan
    h1 = etcd("h1", 2, 500, 2, 490)
    h1["unapplied"] = {"beyond_commit": 10, "beyond_db": 12, "keys": ["a", "b"], "more_keys": 3}
    plan = election.make_plan("etcd", {"h1": h1, "h2": etcd("h2", 2, 498, 2, 495), "h3": etcd("h3", 2, 497, 2, 495)})
    assert "h1: 12 entries in its WAL are in no db of its own, 10 lie beyond its persisted commit 490; keys: a, b " \
        "and 3 more - kept: the winner's whole log is replayed" in plan["notes"]
    assert any("h1's log holds 5 entries beyond every member's persisted commit (495)" in n for n in plan["notes"])
    # IDs as a real etcd 3.4 lab cluster (token qrlab) has them
    ids = [etcd_plan.member_id(["http://10.254.77.%d:2380" % i], "qrlab") for i in (11, 12, 13)]
    assert ids == ["5fdc7ffeaa3af4f9", "50827998474de295", "5f66b2e44672d6d8"]
    assert etcd_plan.cluster_id(ids) == "9bef102e7ff8238a"


def test_etcd_raw_db_only_on_opt_in_and_the_plan_names_what_it_loses():
    h1 = etcd("h1", 2, 500, 2, 490)
    h1["unapplied"] = {"beyond_commit": 10, "beyond_db": 12, "keys": ["a"], "more_keys": 0}
    members = {"h1": h1, "h2": etcd("h2", 2, 498, 2, 495), "h3": etcd("h3", 2, 497, 2, 495)}
    replay = election.make_plan("etcd", members)
    assert replay["source"]["step"] == "replay" and not any("LOST" in w for w in replay["warnings"])
    raw = election.make_plan("etcd", members, source_options={"raw_db": True})
    assert raw["source"]["step"] == "raw-db" and raw["source"]["db_index"] == 488
    assert "recover_etcd_raw_db: h1's db is restored as it is, without replaying its log: the entries 489..500 " \
        "(12) in its WAL are LOST; keys: a" in raw["warnings"]
    assert any("copy its db as it is, to index 488" in a for a in raw["parts"]["h1"]["actions"])
    assert raw["hash"] != replay["hash"]
