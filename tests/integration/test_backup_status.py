"""playbooks/backup_status.yml and backup_catalog's prune, run for real with ansible-playbook on
real backup folders (tests/backup_builder.py: real tar payloads, manifests per
docs/backup-format.md). The destinations are folders on this machine: the group backup_hosts is
localhost over the local connection, and the controller's own folder; reading folders needs no
lab. Asserted: the table per cluster, the stale warning and failure, the .prom file (parsed, and
checked by promtool), and that prune in check mode changes nothing while a real prune removes
exactly the policy's set (orphans and the newest verified kept) and a second prune nothing."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from backup_builder import flip_byte, make_backup, name_of
from conftest import fingerprint, run_ansible

from ansible_collections.quorum.recovery.plugins.module_utils import backup_status as bs

H = 3600


@pytest.fixture()
def site(tmp_path):
    """Destination A (backup host) with prod's etcd and edge's dqlite; the controller's folder B
    with a copy of prod's older backups; an inventory whose backup_hosts is localhost."""
    now = int(time.time())
    a, b, textfile = tmp_path / "hostA", tmp_path / "controller", tmp_path / "textfile"
    textfile.mkdir()
    # prod etcd: 1 is an orphan (taken before the cluster was rebuilt from older data: its
    # position is ahead), then 2..9 one an hour (the newest 1 h old), 10 failed its verification,
    # 11 was interrupted before its manifest; the controller holds copies of 2 and 3
    make_backup(a, "prod", "etcd", 1, now - 10 * H, orphan=True, term=9, index=99999)
    for counter in range(2, 10):
        make_backup(a, "prod", "etcd", counter, now - (10 - counter) * H)
    make_backup(a, "prod", "etcd", 10, now - 30 * 60, verified="failed")
    make_backup(a, "prod", "etcd", 11, now - 20 * 60, manifest=False)
    for counter in (2, 3):
        make_backup(b, "prod", "etcd", counter, now - (10 - counter) * H)
    make_backup(a, "edge", "dqlite", 5, now - 5 * H)  # edge: the newest verified is 5 h old
    doc = make_backup(a, "edge", "dqlite", 4, now - 6 * H)
    flip_byte(a / "edge" / "dqlite" / doc["payload"]["file"])
    inventory = tmp_path / "inventory.ini"
    inventory.write_text("[backup_hosts]\nlocalhost ansible_connection=local ansible_python_interpreter=%s\n" % sys.executable)
    return {"now": now, "a": a, "b": b, "textfile": textfile, "inventory": inventory, "tmp": tmp_path}


def _status(site, *args, check=True, **extra):
    extra = dict(dict(backup_dest_dir=str(site["a"]), backup_controller_dir=str(site["b"]), backup_status_max_age="3h",
                      backup_status_metrics_file=str(site["textfile"] / "quorum_recovery_backup.prom")), **extra)
    return run_ansible("ansible-playbook", "playbooks/backup_status.yml", "-e", json.dumps(extra), *args,
                       inventory=site["inventory"], check=check)


def _table_rows(stdout, cluster):
    """The heading and rows of a cluster's table as printed by the debug task (one quoted line each)."""
    lines = [line.strip().strip('",').strip() for line in stdout.splitlines()]
    start = next(i for i, line in enumerate(lines) if line.startswith(cluster + ":"))
    rows = []
    for line in lines[start + 2:]:
        if not line or not line[0].isdigit():
            break
        rows.append(line)
    return lines[start], rows


def test_status_table_warning_and_metrics(site):
    before = fingerprint(site["tmp"] / "hostA")
    proc = _status(site, backup_status_verify=True)
    out = proc.stdout + proc.stderr
    where_a, where_b = "localhost:%s" % site["a"], "controller:%s" % site["b"]
    head, rows = _table_rows(proc.stdout, "prod etcd")
    assert head.startswith("prod etcd: 12 backups at 2 destinations; newest verified: %s (1h0"
                           % name_of("prod", "etcd", 9, site["now"] - H)) and head.endswith("old, at %s)" % where_a)
    assert [(r.split()[0], r.split()[-2]) for r in rows] == [
        ("10", where_a), ("9", where_a), ("8", where_a), ("7", where_a), ("6", where_a), ("5", where_a), ("4", where_a),
        ("3", where_b), ("3", where_a), ("2", where_b), ("2", where_a), ("1", where_a)]
    assert rows[0].split()[1:4] == ["2/1000", "rev", "900"] and " FAILED " in rows[0]
    assert rows[1].split()[4] in ("1h00m", "1h01m") and " yes, sha256 ok " in rows[1]
    assert rows[-1].split()[1] == "9/99999" and " orphan " in rows[-1]
    head, rows = _table_rows(proc.stdout, "edge dqlite")
    assert head.startswith("edge dqlite: 2 backups at 1 destination; newest verified: %s (5h"
                           % name_of("edge", "dqlite", 5, site["now"] - 5 * H))
    assert [(r.split()[0], r.split()[5]) for r in rows] == [("5", "yes,"), ("4", "FAILED")]  # the flipped byte, found by verify
    assert "interrupted write (no manifest, not a backup): %s.tar" % name_of("prod", "etcd", 11, site["now"] - 20 * 60) in out
    # edge is stale (5 h > 3 h), prod is not (1 h)
    edge = name_of("edge", "dqlite", 5, site["now"] - 5 * H)
    assert "edge dqlite: the newest verified backup %s (at %s) is 5h" % (edge, where_a) in " ".join(out.split())
    assert "prod etcd: the newest" not in out
    text = (site["textfile"] / "quorum_recovery_backup.prom").read_text()
    samples = {(n, s["cluster"], s["destination"]): v for n, s, v in bs.parse_metrics(text)["samples"]}
    assert samples[("quorum_recovery_backup_newest_verified_timestamp_seconds", "prod", where_a)] == site["now"] - H
    assert samples[("quorum_recovery_backup_newest_verified_sequence", "prod", where_a)] == 9
    assert samples[("quorum_recovery_backup_newest_verified_sequence", "prod", where_b)] == 3
    assert samples[("quorum_recovery_backup_verification_failures", "edge", where_a)] == 1
    assert samples[("quorum_recovery_backup_verification_failures", "prod", where_a)] == 1
    assert samples[("quorum_recovery_backups", "prod", where_a)] == 10  # 1 (the orphan) to 10
    assert samples[("quorum_recovery_backup_orphans", "prod", where_a)] == 1
    assert samples[("quorum_recovery_backup_interrupted_writes", "prod", where_a)] == 1
    assert oct(os.stat(site["textfile"] / "quorum_recovery_backup.prom").st_mode & 0o777) == "0o644"
    assert os.listdir(site["textfile"]) == ["quorum_recovery_backup.prom"]  # no temporary left
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: scripts/setup installs it (Debian package prometheus)"
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr
    assert fingerprint(site["tmp"] / "hostA") == before  # status only reads
    # again in --check, asked to fail when stale, with a threshold nothing passes: no failure, no
    # warning, and the metrics file is not rewritten
    mtime = os.stat(site["textfile"] / "quorum_recovery_backup.prom").st_mtime_ns
    again = _status(site, "--check", backup_status_verify=True, backup_status_fail_on_stale=True, backup_status_max_age="6h")
    assert "the newest verified backup" not in again.stdout + again.stderr
    assert os.stat(site["textfile"] / "quorum_recovery_backup.prom").st_mtime_ns == mtime


def test_stale_fails_when_asked(site):
    proc = _status(site, check=False, backup_status_fail_on_stale=True)
    assert proc.returncode != 0
    assert "edge dqlite: the newest verified backup" in proc.stdout and "backup_status_max_age=3h" in proc.stdout
    assert "prod etcd: the newest" not in proc.stdout


def _prune(site, *args, **extra):
    result = site["tmp"] / "pruned.json"
    extra = dict(dict(dest_dir=str(site["a"]), cluster="prod", engine="etcd", result_file=str(result)), **extra)
    run_ansible("ansible-playbook", "tests/integration/playbooks/backup_prune.yml", "-e", json.dumps(extra), *args,
                inventory=site["inventory"])
    return json.loads(result.read_text())


def test_prune_check_mode_removes_nothing_and_the_real_run_exactly_the_policy(site):
    folder = site["a"] / "prod" / "etcd"
    policy = {"keep_last": 2, "hourly": 4}
    before = fingerprint(folder)
    checked = _prune(site, "--check", policy=policy, remove_stale=True)
    assert fingerprint(folder) == before
    # hourly 4 keeps 9, 8, 7, 6 (one an hour); keep_last 2 is within them; 10 failed; 1 is an orphan
    assert sorted(r["counter"] for r in checked["removed"]) == [2, 3, 4, 5, 10] and checked["changed"] is True
    kept = {k["counter"]: k["reason"] for k in checked["kept"]}
    assert sorted(kept) == [1, 6, 7, 8, 9] and kept[1] == "orphan (never removed)"
    assert kept[9].startswith("newest verified backup (never removed); keep_last 1/2; hourly")
    interrupted = name_of("prod", "etcd", 11, site["now"] - 20 * 60) + ".tar"
    assert checked["stale_removed"] == [str(folder / interrupted)]
    real = _prune(site, policy=policy, remove_stale=True)
    assert sorted(r["counter"] for r in real["removed"]) == [2, 3, 4, 5, 10] and real["changed"] is True
    left = sorted(os.listdir(folder))
    expected = sorted([name_of("prod", "etcd", c, site["now"] - (10 - c) * H) + ext for c in (6, 7, 8, 9)
                       for ext in (".json", ".tar")]
                      + ["orphan-%s%s" % (name_of("prod", "etcd", 1, site["now"] - 10 * H), ext) for ext in (".json", ".tar")])
    assert left == expected
    for name in left:  # what is left is untouched
        assert fingerprint(folder)[name] == before[name]
    again = _prune(site, policy=policy, remove_stale=True)
    assert again["changed"] is False and again["removed"] == [] and again["stale_removed"] == []
    assert sorted(os.listdir(folder)) == expected


def test_bad_policy_is_refused_and_nothing_changes(site):
    folder = site["a"] / "prod" / "etcd"
    before = fingerprint(folder, ctime=True)
    result = site["tmp"] / "pruned.json"
    extra = dict(dest_dir=str(site["a"]), cluster="prod", engine="etcd", result_file=str(result),
                 policy={"keep_lats": 2}, remove_stale=True)
    proc = run_ansible("ansible-playbook", "tests/integration/playbooks/backup_prune.yml", "-e", json.dumps(extra),
                       inventory=site["inventory"], check=False)
    assert proc.returncode != 0
    assert "policy: unknown key keep_lats; the keys are keep_last, hourly, daily, weekly, monthly, max_age" in proc.stdout
    assert fingerprint(folder, ctime=True) == before and not result.exists()


def test_an_unreachable_backup_host_is_named(site):
    """A backup host that cannot be reached (a closed port on loopback): the report still comes,
    from the destinations that answered, and names the one that did not."""
    site["inventory"].write_text(site["inventory"].read_text() + "ghost ansible_host=127.0.0.1 ansible_port=1 "
                                 "ansible_connection=ssh ansible_ssh_common_args='-o ConnectTimeout=3'\n")
    proc = _status(site, check=False)
    assert proc.returncode == 4  # ansible-playbook's exit code for an unreachable host
    assert "ghost could not be read: its backups are not in this report" in " ".join((proc.stdout + proc.stderr).split())
    assert "prod etcd: 12 backups at 2 destinations" in proc.stdout
