"""The backup status report (module_utils/backup_status): the table per cluster, the staleness
verdict across destinations, and the node_exporter textfile metrics, parsed back and checked with
Prometheus' own promtool (Debian package prometheus, installed by scripts/setup)."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from backup_builder import flip_byte, make_backup
from ansible_collections.quorum.recovery.plugins.module_utils import backup_catalog as bc
from ansible_collections.quorum.recovery.plugins.module_utils import backup_status as bs

T0 = 1_764_633_600  # 2025-12-02T00:00:00Z
H = 3600


def _catalogs(tmp_path):
    """Two destinations of cluster prod's etcd, and dqlite of cluster edge with one bad payload."""
    for counter in (1, 2, 3):
        make_backup(tmp_path / "b1", "prod", "etcd", counter, T0 + counter * H, size=2048 * counter)
    make_backup(tmp_path / "b1", "prod", "etcd", 4, T0 + 4 * H, verified="failed")
    make_backup(tmp_path / "ctl", "prod", "etcd", 2, T0 + 2 * H, size=4096)
    make_backup(tmp_path / "b1", "edge", "dqlite", 7, T0 + H, encrypted=True)
    make_backup(tmp_path / "b1", "edge", "dqlite", 8, T0 + 2 * H, orphan=True)
    doc = make_backup(tmp_path / "b1", "edge", "dqlite", 9, T0 + 3 * H)
    make_backup(tmp_path / "b1", "edge", "dqlite", 10, T0 + 4 * H, manifest=False)
    flip_byte(tmp_path / "b1" / "edge" / "dqlite" / doc["payload"]["file"])
    now = T0 + 5 * H
    out = []
    for dest, where in (("b1", "backup1:/srv/b"), ("ctl", 'ctl:/var/"odd"\\dir')):
        for cluster, engine in bc.discover(str(tmp_path / dest)):
            catalog = bc.read_catalog(str(tmp_path / dest), cluster, engine, now)
            for backup in catalog.backups:
                backup.check_payload()
            out.append(catalog.to_dict(now, where))
    return out, now


def test_table_per_cluster(tmp_path):
    catalogs, now = _catalogs(tmp_path)
    table = bs.render_table(catalogs, now)
    blocks = table.split("\n\n")
    assert blocks[0].splitlines()[0] == ("edge dqlite: 3 backups at 1 destination; newest verified: "
                                         "edge-dqlite-0000000007-20251202T010000Z (4h00m old, at backup1:/srv/b)")
    assert blocks[0].splitlines()[1].split() == ["counter", "position", "age", "size", "verified", "where", "name"]
    rows = [line.split() for line in blocks[0].splitlines()[2:5]]
    assert [r[0] for r in rows] == ["9", "8", "7"]
    edge = {b["counter"]: b for b in catalogs[0]["backups"]}
    assert rows[0][1:3] == ["2/900", "2h00m"] and " ".join(rows[0][3:5]) == bs.human_size(edge[9]["size"])
    assert rows[0][5] == "FAILED"  # the flipped byte
    assert rows[1][4:6] == ["KiB", "orphan"]
    assert "yes, sha256 ok, age-encrypted" in blocks[0].splitlines()[4]
    assert "interrupted write (no manifest, not a backup): edge-dqlite-0000000010-20251202T040000Z.tar" in blocks[0]
    prod = blocks[1].splitlines()
    assert prod[0].startswith("prod etcd: 5 backups at 2 destinations; newest verified: prod-etcd-0000000003")
    assert [line.split()[0] for line in prod[2:]] == ["4", "3", "2", "2", "1"]
    assert prod[2].split()[1:4] == ["2/400", "rev", "360"] and "FAILED" in prod[2]
    assert bs.render_table([], now) == "no backups found"


def test_stale_across_destinations(tmp_path):
    catalogs, now = _catalogs(tmp_path)
    assert bs.stale(catalogs, 5 * H, now) == []
    stale = bs.stale(catalogs, 2 * H, now)
    assert [(s["cluster"], s["newest"], s["age_seconds"]) for s in stale] == [
        ("edge", "edge-dqlite-0000000007-20251202T010000Z", 4 * H)]
    assert stale[0]["message"] == ("edge dqlite: the newest verified backup edge-dqlite-0000000007-20251202T010000Z "
                                   "(at backup1:/srv/b) is 4h00m old, more than 2h00m")
    # the newest VERIFIED counts: prod's counter 4 failed, 3 is 2 h old
    assert [s["cluster"] for s in bs.stale(catalogs, 2 * H - 1, now)] == ["edge", "prod"]
    none = [dict(c, backups=[dict(b, verified=False) for b in c["backups"]]) for c in catalogs]
    assert bs.stale(none, 10 * H, now)[0]["message"] == "edge dqlite: no verified backup at backup1:/srv/b"


def test_metrics_parse_and_say_what_they_should(tmp_path):
    catalogs, _now = _catalogs(tmp_path)
    text = bs.render_metrics(catalogs)
    parsed = bs.parse_metrics(text)
    names = [bs.PREFIX + n for n, _t, _h in bs.METRICS]
    assert sorted(parsed["type"]) == sorted(names) and sorted(parsed["help"]) == sorted(names)
    assert set(parsed["type"].values()) == {"gauge"}
    samples = {(n[len(bs.PREFIX):], s["cluster"], s["destination"]): v for n, s, v in parsed["samples"]}
    assert samples[("backup_newest_verified_timestamp_seconds", "prod", "backup1:/srv/b")] == T0 + 3 * H
    assert samples[("backup_newest_verified_sequence", "prod", "backup1:/srv/b")] == 3
    assert samples[("backup_newest_verified_size_bytes", "prod", "backup1:/srv/b")] == catalogs[1]["backups"][2]["size"]
    assert samples[("backup_newest_verified_sequence", "prod", 'ctl:/var/"odd"\\dir')] == 2  # escaped and read back
    assert samples[("backups", "prod", "backup1:/srv/b")] == 4
    assert samples[("backup_verification_failures", "prod", "backup1:/srv/b")] == 1
    assert samples[("backup_verification_failures", "edge", "backup1:/srv/b")] == 1  # the flipped byte
    assert samples[("backup_orphans", "edge", "backup1:/srv/b")] == 1
    assert samples[("backup_interrupted_writes", "edge", "backup1:/srv/b")] == 1
    assert {s["engine"] for _n, s, _v in parsed["samples"]} == {"etcd", "dqlite"}
    assert 'destination="ctl:/var/\\"odd\\"\\\\dir"' in text


def test_a_destination_without_a_verified_backup_has_time_zero_and_no_size(tmp_path):
    make_backup(tmp_path, "c", "etcd", 1, T0, verified=None)
    catalog = bc.read_catalog(str(tmp_path), "c", "etcd").to_dict(T0, "h:/d")
    samples = {n: v for n, _s, v in bs.parse_metrics(bs.render_metrics([catalog]))["samples"]}
    assert samples[bs.PREFIX + "backup_newest_verified_timestamp_seconds"] == 0
    assert bs.PREFIX + "backup_newest_verified_sequence" not in samples


def test_promtool_accepts_the_metrics(tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: scripts/setup installs it (Debian package prometheus)")
    catalogs, _now = _catalogs(tmp_path)
    proc = subprocess.run([promtool, "check", "metrics"], input=bs.render_metrics(catalogs), capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    broken = bs.render_metrics(catalogs).replace("# TYPE quorum_recovery_backups gauge\n", "")
    proc = subprocess.run([promtool, "check", "metrics"], input=broken + "bad line{\n", capture_output=True,
                          text=True, check=False)
    assert proc.returncode != 0  # promtool does refuse what is malformed


@pytest.mark.parametrize("text, message", [
    ("x 1", "does not end with a newline"),
    ("x 1\n", "before its # TYPE"),
    ("# TYPE x gauge\n# TYPE x gauge\n", "second TYPE"),
    ("# TYPE x gauge\nx{a=b} 1\n", "malformed labels"),
    ("# TYPE x gauge\nx{a=\"b\"} 1\nx{a=\"b\"} 2\n", "given twice"),
    ("# TYPE x gauge\nx one\n", "could not convert"),
])
def test_the_parser_refuses_malformed_text(text, message):
    with pytest.raises(ValueError, match=message):
        bs.parse_metrics(text)


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (59, "59s"), (61, "1m01s"), (3600, "1h00m"), (90061, "1d01h"),
                                           (-7200, "-2h00m")])
def test_human_age(seconds, text):
    assert bs.human_age(seconds) == text
