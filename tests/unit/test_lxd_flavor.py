"""The LXD flavor's pure parts: identity from LXD's local.db (a real sqlite file with LXD 5.0's
tables), LXD's own position hint beside the election's, the `lxd cluster edit` YAML, and the
node-local update of a restored member's local.db (the file kept)."""
from __future__ import annotations

import functools
import sqlite3

from dqlite_builder import batch, configuration, metadata, segment

from ansible_collections.quorum.recovery.plugins.module_utils import dqlite_datadir, dqlite_plan, election, lxd_localdb
from ansible_collections.quorum.recovery.plugins.module_utils import dqlite_format as fmt

SERVERS = [(1, "10.0.0.1:8443", 0), (2, "10.0.0.2:8443", 0), (3, "10.0.0.3:8443", 0)]


def _local_db(path, own="10.0.0.1:8443", nodes=tuple(SERVERS)):
    """LXD 5.0.2's local.db as `lxd init` leaves it (the two tables read here)."""
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("CREATE TABLE config (id INTEGER PRIMARY KEY, key TEXT NOT NULL, value TEXT, UNIQUE (key))")
        conn.execute("CREATE TABLE raft_nodes (id INTEGER PRIMARY KEY, address TEXT NOT NULL, role INTEGER NOT NULL "
                     "DEFAULT 0, name TEXT NOT NULL default '', UNIQUE (address))")
        conn.executemany("INSERT INTO config (key, value) VALUES (?, ?)",
                         [("cluster.https_address", own), ("core.https_address", own)])
        conn.executemany("INSERT INTO raft_nodes (id, address, role, name) VALUES (?, ?, ?, ?)",
                         [(i, a, r, "m%d" % i) for i, a, r in nodes])
    conn.close()


def _lxd_dir(tmp_path, open_last=40, own="10.0.0.1:8443"):
    """database/ with global/ (a closed segment to 23, an open one to open_last) and local.db."""
    glob = tmp_path / "database" / "global"
    glob.mkdir(parents=True)
    (glob / "metadata1").write_bytes(metadata(1, 1, 1))
    first = [batch([(1, fmt.ENTRY_CHANGE, configuration(SERVERS))])]
    first += [batch([(1, fmt.ENTRY_COMMAND, b"e%07d" % i)]) for i in range(2, 24)]
    (glob / ("%016d-%016d" % (1, 23))).write_bytes(segment(first))
    rest = [batch([(1, fmt.ENTRY_COMMAND, b"e%07d" % i)]) for i in range(24, open_last + 1)]
    (glob / "open-1").write_bytes(segment(rest, prealloc=4096))
    _local_db(str(tmp_path / "database" / "local.db"), own=own)
    return glob


def test_identity_and_names_come_from_local_db_and_the_hint_counts_closed_segments_only(tmp_path):
    glob = _lxd_dir(tmp_path)
    before = sorted(p.name for p in (tmp_path / "database").iterdir())
    facts = dqlite_datadir.inspect_datadir(str(glob), "full", identity="lxd-local-db")
    assert facts["identity"] == {"id": 1, "address": "10.0.0.1:8443", "role": "voter", "name": "m1"}
    assert facts["verdict"] == "healthy", facts["problems"]
    summary = facts["summary"]
    assert summary["address_source"] == "local.db" and summary["last_index"] == 40
    assert summary["hint"] == {"name": "LXD latest segment", "last_index": 23}
    assert [v.get("name") for v in summary["voters"]] == ["m1", "m2", "m3"]
    # read opened immutable: no journal, no -shm, nothing new beside it
    assert sorted(p.name for p in (tmp_path / "database").iterdir()) == before


def test_a_missing_local_db_is_an_error_naming_it(tmp_path):
    glob = _lxd_dir(tmp_path)
    (tmp_path / "database" / "local.db").unlink()
    facts = dqlite_datadir.inspect_datadir(str(glob), "quick", identity="lxd-local-db")
    assert facts["verdict"] != "healthy"
    assert any(p["file"] == "local.db" and "does not exist" in p["message"] for p in facts["problems"])


def _member(host, index, hint, ident):
    return {"engine": "dqlite", "exists": True, "verdict": "healthy", "member_id": ident,
            "address": "10.0.0.%d:8443" % ident, "address_source": "local.db", "last_term": 1,
            "last_index": index, "snapshot_index": 0, "first_index": 1, "last_entry_sha256": "d%d" % index,
            "voters": [{"id": i, "address": a, "role": "voter"} for i, a, _r in SERVERS], "problems": [],
            "terms": [[1, 1]], "after_repair": None, "tie_break": [],
            "hint": {"name": "LXD latest segment", "last_index": hint}}


def test_the_plan_shows_lxds_hint_and_elects_by_the_log_when_they_disagree():
    make = functools.partial(election.make_plan, "dqlite")
    # h1 closed a segment to 23 before it was cut off; h2 and h3 went on to 61 in open segments
    plan = make({"h1": _member("h1", 40, 23, 1), "h2": _member("h2", 61, 0, 2), "h3": _member("h3", 58, 0, 3)})
    assert plan["winner"] == "h2"
    assert "LXD latest segment (not elected on)" in plan["table"][0]
    assert any("LXD latest segment would pick h1 (23) over h2 (0)" in line for line in plan["why"]), plan["why"]
    # when they agree, nothing is said
    same = make({"h1": _member("h1", 61, 23, 1), "h2": _member("h2", 50, 0, 2), "h3": _member("h3", 50, 0, 3)})
    assert not any("would pick" in line for line in same["why"])


def test_the_edit_yaml_lists_members_in_lxds_order_of_ids():
    text = dqlite_plan.lxd_members_yaml(
        [{"id": 3, "address": "a3", "role": "spare"}, {"id": 1, "address": "a1", "role": "voter"}], {1: "m1", 3: "m3"})
    assert text == ("members:\n- id: 1\n  name: m1\n  address: a1\n  role: voter\n"
                    "- id: 3\n  name: m3\n  address: a3\n  role: spare\n")


def test_a_restored_members_local_db_gets_the_new_membership_and_its_new_address_the_old_file_kept(tmp_path):
    glob = _lxd_dir(tmp_path, own="10.0.0.2:8443")
    membership = [{"id": 1, "address": "10.0.0.1:8443", "role": "voter"},
                  {"id": 2, "address": "10.0.0.42:8443", "role": "voter"},
                  {"id": 3, "address": "10.0.0.3:8443", "role": "spare"}]
    changes = lxd_localdb.changes_needed(str(glob), membership, 2)
    assert changes["config"] == {"cluster.https_address": "10.0.0.42:8443", "core.https_address": "10.0.0.42:8443"}
    old = (tmp_path / "database" / "local.db").read_bytes()
    kept = lxd_localdb.apply(str(glob), changes, str(tmp_path / "aside"))
    assert open(kept, "rb").read() == old
    address, nodes = dqlite_datadir.read_lxd_local_db(str(glob))
    assert address == "10.0.0.42:8443"
    assert [(n["id"], n["address"], n["role"], n["name"]) for n in nodes] == [
        (1, "10.0.0.1:8443", "voter", "m1"), (2, "10.0.0.42:8443", "voter", "m2"), (3, "10.0.0.3:8443", "spare", "m3")]
    assert lxd_localdb.changes_needed(str(glob), membership, 2) == {}


def test_every_restored_member_gets_the_global_nodes_patch_a_different_one_kept(tmp_path):
    """patch.global.sql (the addresses in LXD's global nodes table) for a restored member: LXD's
    statements for every member, by raft ID; written once (a second call has nothing to do); a file
    already there with other statements is moved aside, never overwritten; run by a real sqlite on
    a nodes table, it gives the moved member its new address."""
    glob = _lxd_dir(tmp_path, own="10.0.0.3:8443")
    membership = [{"id": 2, "address": "10.0.0.42:8443", "role": "voter"},
                  {"id": 1, "address": "10.0.0.1:8443", "role": "voter"},
                  {"id": 3, "address": "10.0.0.3:8443", "role": "voter"}]
    text = lxd_localdb.global_patch(membership)
    assert text == ("UPDATE nodes SET address = '10.0.0.1:8443' WHERE id = 1;\n"
                    "UPDATE nodes SET address = '10.0.0.42:8443' WHERE id = 2;\n"
                    "UPDATE nodes SET address = '10.0.0.3:8443' WHERE id = 3;\n")
    target = tmp_path / "database" / "patch.global.sql"
    assert lxd_localdb.global_patch_path(str(glob)) == str(target)
    (tmp_path / "database" / "patch.global.sql").write_text("UPDATE nodes SET address = 'x' WHERE id = 9;\n")
    assert lxd_localdb.global_patch_needed(str(glob), membership)
    kept = lxd_localdb.write_global_patch(str(glob), membership, str(tmp_path / "aside"))
    assert open(kept).read() == "UPDATE nodes SET address = 'x' WHERE id = 9;\n"
    assert target.read_text() == text and (target.stat().st_mode & 0o777) == 0o600
    assert not lxd_localdb.global_patch_needed(str(glob), membership)
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE nodes (id INTEGER PRIMARY KEY, name TEXT, address TEXT)")
    conn.executemany("INSERT INTO nodes VALUES (?, ?, ?)", [(i, "m%d" % i, "10.0.0.%d:8443" % i) for i in (1, 2, 3)])
    conn.executescript(text)
    assert conn.execute("SELECT id FROM nodes WHERE address = '10.0.0.42:8443'").fetchall() == [(2,)]


def test_an_address_the_global_patch_cannot_carry_is_refused():
    try:
        lxd_localdb.global_patch([{"id": 1, "address": "10.0.0.1:8443'; DROP TABLE nodes; --", "role": "voter"}])
    except ValueError as exc:
        assert "member 1" in str(exc) and "patch.global.sql" in str(exc)
    else:
        raise AssertionError("an address with a quote went into the patch")
