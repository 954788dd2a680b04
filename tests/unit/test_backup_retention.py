"""Retention (module_utils/backup_retention.plan) with faked times: exactly what the policy says,
at the bucket boundaries (hour, UTC day, ISO week across a year's end, month), with many backups
an hour, with gaps, with a clock in the future; orphans and the newest verified never removed;
unverified backups never fill a slot."""
from __future__ import annotations

import calendar
import random

import pytest

from ansible_collections.quorum.recovery.plugins.module_utils import backup_retention as br

H, D = 3600, 86400


def at(text: str) -> int:
    """'2026-12-31 23:59:59' (UTC) -> epoch."""
    return calendar.timegm(tuple(int(x) for x in text.replace("-", " ").replace(":", " ").split()) + (0, 0, 0))


def b(counter, created, verification="ok", orphan=False):
    return {"name": "b%03d" % counter, "counter": counter, "created_epoch": created, "verification": verification,
            "orphan": orphan}


def kept(result):
    return sorted(k["counter"] for k in result["keep"])


def removed(result):
    return sorted(r["counter"] for r in result["remove"])


def test_keep_last_keeps_the_n_newest_verified():
    backups = [b(i, at("2026-12-01 00:00:00") + i * H) for i in range(1, 11)]
    result = br.plan(backups, {"keep_last": 3}, now=at("2026-12-01 12:00:00"))
    assert kept(result) == [8, 9, 10] and removed(result) == list(range(1, 8))
    reasons = {k["counter"]: k["reason"] for k in result["keep"]}
    assert reasons[10] == "newest verified backup (never removed); keep_last 1/3"
    assert reasons[8] == "keep_last 3/3"
    assert {r["reason"] for r in result["remove"]} == {"kept by no rule of the policy"}
    assert [k["counter"] for k in result["keep"]] == [10, 9, 8]  # newest first


def test_many_backups_an_hour_keep_the_newest_of_each_hour():
    # four an hour (at :00, :15, :30, :45) from 00:00 to 04:45
    backups = [b(i + 1, at("2026-12-01 00:00:00") + i * 900) for i in range(20)]
    result = br.plan(backups, {"hourly": 3}, now=at("2026-12-01 05:00:00"))
    assert kept(result) == [12, 16, 20]  # 02:45, 03:45, 04:45
    assert {k["counter"]: k["reason"] for k in result["keep"]}[12] == "hourly 2026-12-01T02 (3/3)"


def test_hour_and_day_boundaries_are_exact():
    backups = [b(1, at("2026-12-01 23:59:59")), b(2, at("2026-12-02 00:00:00")), b(3, at("2026-12-02 00:59:59")),
               b(4, at("2026-12-02 01:00:00"))]
    now = at("2026-12-02 02:00:00")
    assert kept(br.plan(backups, {"hourly": 2}, now)) == [3, 4]  # 00:59:59 and 01:00:00 are two hours
    assert kept(br.plan(backups, {"hourly": 3}, now)) == [1, 3, 4]  # 23:59:59 is the previous hour
    assert kept(br.plan(backups, {"daily": 2}, now)) == [1, 4]  # 23:59:59 is the previous UTC day


def test_iso_weeks_across_the_year_end_and_months():
    # 2026-12-27 is a Sunday (2026-W52 ends), 2026-12-28 Monday starts W53, which holds 2027-01-01..03;
    # 2027-01-04 (Monday) starts 2027-W01
    backups = [b(1, at("2026-12-27 23:59:59")), b(2, at("2026-12-28 00:00:00")), b(3, at("2026-12-31 23:59:59")),
               b(4, at("2027-01-03 12:00:00")), b(5, at("2027-01-04 00:00:00"))]
    now = at("2027-01-05 00:00:00")
    weekly = br.plan(backups, {"weekly": 3}, now)
    assert kept(weekly) == [1, 4, 5]
    assert {k["counter"]: k["reason"] for k in weekly["keep"]}[4] == "weekly 2026-W53 (2/3)"
    monthly = br.plan(backups, {"monthly": 2}, now)
    assert kept(monthly) == [3, 5]  # the last backup of December, the newest of January
    assert kept(br.plan(backups, {"monthly": 1}, now)) == [5]


def test_a_gap_does_not_use_up_the_policy():
    """Periods that have a backup are counted (borg, restic): after a week without backups the
    last hours before the gap are still kept."""
    before = [b(i, at("2026-12-01 10:00:00") + (i - 1) * H) for i in (1, 2, 3)]
    after = [b(i, at("2026-12-08 10:00:00") + (i - 4) * H) for i in (4, 5)]
    result = br.plan(before + after, {"hourly": 4}, now=at("2026-12-08 12:00:00"))
    assert kept(result) == [2, 3, 4, 5]
    assert removed(result) == [1]


def test_a_year_of_six_hourly_backups_with_a_layered_policy():
    start = at("2026-01-01 00:00:00")
    backups = [b(i + 1, start + i * 6 * H) for i in range(365 * 4)]  # 00, 06, 12, 18h every day of 2026
    now = at("2026-12-31 20:00:00")
    result = br.plan(backups, {"keep_last": 2, "daily": 3, "weekly": 2, "monthly": 3}, now)
    name = {x["created_epoch"]: x["counter"] for x in backups}
    expected = {
        name[at("2026-12-31 18:00:00")],  # newest, keep_last, daily, weekly, monthly
        name[at("2026-12-31 12:00:00")],  # keep_last 2
        name[at("2026-12-30 18:00:00")], name[at("2026-12-29 18:00:00")],  # daily 2, 3
        name[at("2026-12-27 18:00:00")],  # weekly: Sunday closes 2026-W52
        name[at("2026-11-30 18:00:00")], name[at("2026-10-31 18:00:00")],  # monthly: November, October
    }
    assert kept(result) == sorted(expected)
    assert len(result["remove"]) == len(backups) - len(expected)


def test_max_age_caps_every_rule_but_not_the_newest_verified_nor_orphans():
    backups = [b(1, at("2026-01-01 00:00:00"), orphan=True), b(2, at("2026-06-01 00:00:00")),
               b(3, at("2026-11-20 00:00:00")), b(4, at("2026-11-30 00:00:00"))]
    result = br.plan(backups, {"keep_last": 12, "max_age": "15d"}, now=at("2026-12-01 00:00:00"))
    assert kept(result) == [1, 3, 4]
    assert {r["counter"]: r["reason"] for r in result["remove"]} == {2: "older than max_age 1296000 s (age 15811200 s)"}
    # everything too old: the newest verified stays, as the one restore would take
    old = br.plan(backups, {"keep_last": 5, "max_age": 60}, now=at("2026-12-01 00:00:00"))
    assert kept(old) == [1, 4]
    assert {k["counter"]: k["reason"] for k in old["keep"]} == {
        1: "orphan (never removed)", 4: "newest verified backup (never removed)"}


def test_unverified_backups_never_fill_a_slot():
    backups = [b(1, at("2026-12-01 00:00:00")), b(2, at("2026-12-01 01:00:00")),
               b(3, at("2026-12-01 02:00:00"), "failed"), b(4, at("2026-12-01 03:00:00"), "none"),
               b(5, at("2026-12-01 04:00:00")), b(6, at("2026-12-01 05:00:00"), "failed"),
               b(7, at("2026-12-01 06:00:00"), "none")]
    result = br.plan(backups, {"hourly": 3}, now=at("2026-12-01 07:00:00"))
    # hours 06 and 05 have no verified backup: the slots go to 04, 01 and 00
    assert kept(result) == [1, 2, 5, 7]
    reasons = {r["counter"]: r["reason"] for r in result["remove"]}
    assert reasons == {3: "verification failed: never counts for a rule", 4: "not verified, older than the newest verified backup b005",
                       6: "verification failed: never counts for a rule"}
    assert {k["counter"]: k["reason"] for k in result["keep"]}[7] == "not verified yet, newer than the newest verified backup"


def test_without_any_verified_backup_nothing_unchecked_is_removed():
    backups = [b(1, at("2026-12-01 00:00:00"), "none"), b(2, at("2026-12-01 01:00:00"), "failed"),
               b(3, at("2026-12-01 02:00:00"), "none")]
    result = br.plan(backups, {"keep_last": 1}, now=at("2026-12-01 03:00:00"))
    assert kept(result) == [1, 3] and removed(result) == [2]
    assert any("no verified backup" in w for w in result["warnings"])


def test_a_clock_in_the_future():
    """Backups stamped after `now` (the destination's clock, or now's, is wrong): they keep their
    places by counter, max_age never removes them, and the result says so."""
    now = at("2026-12-01 12:00:00")
    backups = [b(1, now - 2 * D), b(2, now - D), b(3, now + 3 * H), b(4, now + 5 * D)]
    result = br.plan(backups, {"keep_last": 2, "max_age": "1d"}, now)
    assert kept(result) == [3, 4] and removed(result) == [1, 2]
    assert len(result["warnings"]) == 2 and "a clock in the future" in result["warnings"][0]
    # the counter decides the order, not the clock: a backup made after the clock was set back
    skewed = [b(1, now - H), b(2, now + D), b(3, now - 30 * 60)]  # 2 had a clock one day ahead
    assert kept(br.plan(skewed, {"keep_last": 1}, now)) == [3]
    assert kept(br.plan(skewed, {"daily": 2}, now)) == [2, 3]


def test_the_result_does_not_depend_on_the_input_order():
    backups = [b(i, at("2026-11-01 00:00:00") + i * 5 * H, "failed" if i % 7 == 0 else "ok", orphan=i % 11 == 0)
               for i in range(1, 200)]
    policy = {"keep_last": 3, "hourly": 5, "daily": 4, "weekly": 2, "monthly": 2}
    first = br.plan(backups, policy, now=at("2026-12-15 00:00:00"))
    shuffled = list(backups)
    random.Random(7).shuffle(shuffled)
    assert br.plan(shuffled, policy, now=at("2026-12-15 00:00:00")) == first
    assert {k["counter"] for k in first["keep"]} >= {i for i in range(1, 200) if i % 11 == 0}


def test_verified_flag_is_accepted_instead_of_verification():
    backups = [{"name": "a", "counter": 1, "created_epoch": 0, "verified": True, "orphan": False},
               {"name": "b", "counter": 2, "created_epoch": 10, "verified": False, "orphan": False}]
    result = br.plan(backups, {"keep_last": 1}, now=20)
    assert kept(result) == [1, 2]  # b never checked and newer: kept until superseded


@pytest.mark.parametrize("policy, message", [
    ({"keep_lats": 3}, "unknown key keep_lats"),
    ({"hourly": -1}, "policy.hourly=-1"),
    ({"daily": "many"}, "policy.daily='many'"),
    ({"daily": True}, "policy.daily=True"),
    ({}, "no rule keeps anything"),
    ({"keep_last": 0, "max_age": "30d"}, "no rule keeps anything"),
    ({"keep_last": 1, "max_age": "30 days"}, "policy.max_age='30 days'"),
    ({"keep_last": 1, "max_age": 0}, "policy.max_age=0"),
    ("keep_last=3", "policy: expected a dict"),
])
def test_a_bad_policy_is_refused_naming_the_key(policy, message):
    with pytest.raises(br.PolicyError) as err:
        br.plan([b(1, 0)], policy, now=10)
    assert message in str(err.value)


def test_durations():
    assert [br.parse_duration(v) for v in (90, "90", "90s", "45m", "36h", "30d", "2w")] == [
        90, 90, 90, 2700, 129600, 2592000, 1209600]
