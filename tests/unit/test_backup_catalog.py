"""The backup catalog (module_utils/backup_catalog) on real folders built as docs/backup-format.md
says (tests/backup_builder.py): what is a backup and what is not, manifest validation that names
the file and key, payload verification down to one flipped byte, orphaning and its interruption,
the counter rule, which backups a new one makes orphans, and removals under the folder's lock."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from backup_builder import flip_byte, make_backup, name_of
from conftest import COLLECTIONS

from ansible_collections.quorum.recovery.plugins.module_utils import backup_catalog as bc
from ansible_collections.quorum.recovery.plugins.module_utils import datadir_archive as arch

T0 = 1_764_633_600  # 2025-12-02T00:00:00Z
C, E = "prod", "etcd"


def _folder(tmp_path):
    return tmp_path / C / E


def _files(tmp_path):
    return sorted(os.listdir(_folder(tmp_path)))


def test_backups_by_counter_and_what_is_not_a_backup(tmp_path):
    for counter in (3, 1, 2):
        make_backup(tmp_path, C, E, counter, T0 + counter * 3600)
    make_backup(tmp_path, C, E, 4, T0 + 4 * 3600, manifest=False)  # payload written, manifest not: interrupted
    partial = _folder(tmp_path) / (".%s.tar.partial-999999" % name_of(C, E, 5, T0 + 5 * 3600))
    partial.write_bytes(b"half")
    tmp = _folder(tmp_path) / ("orphan-%s.json.tmp-999998" % name_of(C, E, 1, T0 + 3600))
    tmp.write_bytes(b"{")
    (_folder(tmp_path) / "notes.txt").write_text("operator's note")
    catalog = bc.read_catalog(str(tmp_path), C, E, now=T0 + 6 * 3600)
    assert [b.counter for b in catalog.backups] == [1, 2, 3]
    assert [i["name"] for i in catalog.interrupted] == [name_of(C, E, 4, T0 + 4 * 3600)]
    assert {t["file"]: (t["kind"], t["pid"], t["writer_alive"]) for t in catalog.temporaries} == {
        partial.name: ("partial", 999999, False), tmp.name: ("tmp", 999998, False)}
    assert catalog.unknown == ["notes.txt"]
    assert catalog.newest_verified().counter == 3
    assert any("interrupted write" in w for w in catalog.warnings)
    entry = catalog.to_dict(T0 + 6 * 3600, "h:/d")["backups"][-1]
    assert entry["age_seconds"] == 3 * 3600 and entry["where"] == "h:/d" and entry["verified"] is True
    assert entry["position"] == {"term": 2, "index": 300, "revision": 270, "keys": 1000}


def test_newest_verified_skips_unverified_failed_and_orphans(tmp_path):
    make_backup(tmp_path, C, E, 1, T0)
    make_backup(tmp_path, C, E, 2, T0 + 10, verified="failed")
    make_backup(tmp_path, C, E, 3, T0 + 20, verified=None)
    make_backup(tmp_path, C, E, 4, T0 + 30, orphan=True)
    catalog = bc.read_catalog(str(tmp_path), C, E)
    assert catalog.newest_verified().counter == 1
    assert [b.verification for b in catalog.backups] == ["ok", "failed", "none", "ok"]
    assert [b.orphan for b in catalog.backups] == [False, False, False, True]


def test_a_missing_folder_is_an_empty_catalog(tmp_path):
    catalog = bc.read_catalog(str(tmp_path / "none"), C, E)
    assert not catalog.exists and catalog.backups == [] and catalog.newest_verified() is None


@pytest.mark.parametrize("change, key", [
    (lambda m: m.pop("counter"), "counter is missing"),
    (lambda m: m.update(format="other/1"), "format"),
    (lambda m: m.update(counter="7"), "counter must be an integer"),
    (lambda m: m.update(created_epoch=m["created_epoch"] + 1), "created_epoch"),
    (lambda m: m.update(created="yesterday"), "created is 'yesterday'"),
    (lambda m: m["position"].pop("index"), "position must be an object"),
    (lambda m: m["payload"].update(sha256="ABC"), "payload.sha256"),
    (lambda m: m["payload"].update(encrypted="no"), "payload.encrypted"),
    (lambda m: m.update(verified={"result": "maybe", "how": "x", "at": "y"}), "key verified"),
    (lambda m: m.update(engine="consul"), "engine is 'consul'"),
    (lambda m: m.update(orphaned="yes"), "key orphaned"),
])
def test_an_invalid_manifest_is_named_with_its_key_and_never_a_backup(tmp_path, change, key):
    doc = make_backup(tmp_path, C, E, 1, T0)
    make_backup(tmp_path, C, E, 2, T0 + 60)
    path = _folder(tmp_path) / (doc["name"] + ".json")
    change(doc)
    path.write_text(json.dumps(doc))
    with pytest.raises(bc.ManifestError) as err:
        bc.load_manifest(str(path))
    assert str(path) in str(err.value) and key in str(err.value)
    catalog = bc.read_catalog(str(tmp_path), C, E)
    assert [b.counter for b in catalog.backups] == [2]
    assert catalog.invalid[0]["file"] == path.name and key in catalog.invalid[0]["error"]


def test_not_json_is_named(tmp_path):
    doc = make_backup(tmp_path, C, E, 1, T0)
    path = _folder(tmp_path) / (doc["name"] + ".json")
    path.write_text("{not json")
    with pytest.raises(bc.ManifestError, match="%s: not JSON" % path):
        bc.load_manifest(str(path))


def test_a_manifest_of_another_backup_under_this_name_is_refused(tmp_path):
    doc = make_backup(tmp_path, C, E, 1, T0)
    other = make_backup(tmp_path, C, E, 2, T0 + 60)
    os.replace(_folder(tmp_path) / (other["name"] + ".json"), _folder(tmp_path) / (doc["name"] + ".json"))
    catalog = bc.read_catalog(str(tmp_path), C, E)
    assert catalog.backups == [] and "the file is named for" in catalog.invalid[0]["error"]
    assert len(catalog.interrupted) == 2  # both payloads now lack their manifest


@pytest.mark.parametrize("encrypted", [False, True])
def test_one_flipped_byte_is_detected(tmp_path, encrypted):
    doc = make_backup(tmp_path, C, E, 1, T0, encrypted=encrypted)
    payload = _folder(tmp_path) / doc["payload"]["file"]
    assert bc.verify_payload(str(payload)) == doc["payload"]["sha256"]
    flip_byte(payload)
    with pytest.raises(bc.PayloadError, match="payload %s has sha256 [0-9a-f]{64}, its manifest says %s" % (payload, doc["payload"]["sha256"])):
        bc.verify_payload(str(payload))
    catalog = bc.read_catalog(str(tmp_path), C, E)
    assert catalog.backups[0].verified  # the manifest alone says ok ...
    assert not catalog.backups[0].check_payload()  # ... the payload does not match it
    assert catalog.backups[0].verification == "failed" and catalog.newest_verified() is None


def test_a_truncated_or_missing_payload_is_not_verified(tmp_path):
    first = make_backup(tmp_path, C, E, 1, T0)
    second = make_backup(tmp_path, C, E, 2, T0 + 60)
    with open(_folder(tmp_path) / second["payload"]["file"], "r+b") as handle:
        handle.truncate(100)
    with pytest.raises(bc.PayloadError, match="has 100 bytes, its manifest says"):
        bc.verify_payload(str(_folder(tmp_path) / second["payload"]["file"]))
    os.unlink(_folder(tmp_path) / first["payload"]["file"])
    catalog = bc.read_catalog(str(tmp_path), C, E)
    assert catalog.backups[0].verification == "failed" and "is missing" in catalog.backups[0].payload_error
    catalog.backups[1].check_payload()
    assert catalog.newest_verified() is None


def test_orphan_renames_both_files_and_records_why(tmp_path):
    doc = make_backup(tmp_path, C, E, 1, T0)
    make_backup(tmp_path, C, E, 2, T0 + 60)
    catalog = bc.read_catalog(str(tmp_path), C, E)
    with bc.exclusive(catalog.folder):
        catalog.orphan(doc["name"], "position ahead of backup 2", "test", now=T0 + 120)
    assert _files(tmp_path) == sorted([name_of(C, E, 2, T0 + 60) + ".json", name_of(C, E, 2, T0 + 60) + ".tar",
                                       "orphan-%s.json" % doc["name"], "orphan-%s.tar" % doc["name"]])
    again = bc.read_catalog(str(tmp_path), C, E)
    orphan = again.get(doc["name"])
    assert orphan.orphan and orphan.manifest["orphaned"] == {"at": "2025-12-02T00:02:00Z",
                                                             "reason": "position ahead of backup 2", "by": "test"}
    assert orphan.check_payload()  # the payload is the same bytes under the new name
    assert oct(os.stat(orphan.manifest_path).st_mode & 0o777) == "0o600"
    with pytest.raises(bc.CatalogError, match="orphans are never removed"):
        again.remove(doc["name"])


@pytest.mark.parametrize("stop_after", ["manifest", "payload"])
def test_an_interrupted_orphaning_reads_as_an_orphan_and_is_finished(tmp_path, stop_after):
    doc = make_backup(tmp_path, C, E, 1, T0)
    folder = _folder(tmp_path)
    marked = dict(doc, orphaned={"at": "2025-12-02T00:02:00Z", "reason": "r", "by": "b"})
    arch.write_atomic(str(folder / ("orphan-%s.json" % doc["name"])), json.dumps(marked).encode())
    if stop_after == "payload":
        os.rename(folder / (doc["name"] + ".tar"), folder / ("orphan-%s.tar" % doc["name"]))
    catalog = bc.read_catalog(str(tmp_path), C, E)
    assert catalog.orphaning_incomplete == [doc["name"]]
    assert [b.orphan for b in catalog.backups] == [True] and catalog.newest_verified() is None
    assert catalog.backups[0].check_payload()
    with bc.exclusive(catalog.folder):
        assert catalog.finish_orphaning("test") == [doc["name"]]
    assert _files(tmp_path) == ["orphan-%s.json" % doc["name"], "orphan-%s.tar" % doc["name"]]
    assert bc.read_catalog(str(tmp_path), C, E).orphaning_incomplete == []


def test_remove_takes_the_manifest_first_and_remove_stale_only_what_is_no_backup(tmp_path):
    first = make_backup(tmp_path, C, E, 1, T0)
    make_backup(tmp_path, C, E, 2, T0 + 60)
    make_backup(tmp_path, C, E, 3, T0 + 120, manifest=False)
    (_folder(tmp_path) / (".%s.json.partial-999999" % name_of(C, E, 4, T0 + 180))).write_bytes(b"{")
    catalog = bc.read_catalog(str(tmp_path), C, E)
    with bc.exclusive(catalog.folder):
        assert catalog.remove(first["name"]) == [first["name"] + ".json", first["name"] + ".tar"]
        removed = catalog.remove_stale()
    assert removed == sorted([".%s.json.partial-999999" % name_of(C, E, 4, T0 + 180), name_of(C, E, 3, T0 + 120) + ".tar"])
    assert _files(tmp_path) == [name_of(C, E, 2, T0 + 60) + ".json", name_of(C, E, 2, T0 + 60) + ".tar"]


def test_a_writer_holding_the_lock_keeps_its_temporaries(tmp_path):
    """A live writer (another process holding the folder's lock) is waited for: exclusive() gives
    up with Busy and nothing is removed."""
    make_backup(tmp_path, C, E, 1, T0)
    folder = _folder(tmp_path)
    partial = folder / (".%s.tar.partial-1" % name_of(C, E, 2, T0 + 60))
    partial.write_bytes(b"being written")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, %r)\n"
        "from ansible_collections.quorum.recovery.plugins.module_utils import datadir_archive as a\n"
        "with a.locked(%r):\n    print('held', flush=True); time.sleep(30)\n") % (str(COLLECTIONS), str(folder))],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        began = time.monotonic()
        with pytest.raises(bc.Busy, match="held its lock"):
            with bc.exclusive(str(folder), timeout=0.5):
                bc.read_catalog(str(tmp_path), C, E).remove_stale()
        assert time.monotonic() - began < 5
        assert partial.exists()
    finally:
        holder.kill()
        holder.wait()
    with bc.exclusive(str(folder), timeout=5):
        assert bc.read_catalog(str(tmp_path), C, E).remove_stale() == [partial.name]


def test_next_counter_never_reuses_one(tmp_path):
    make_backup(tmp_path / "a", C, E, 4, T0)
    make_backup(tmp_path / "a", C, E, 6, T0 + 60, orphan=True)
    make_backup(tmp_path / "b", C, E, 5, T0 + 30)
    make_backup(tmp_path / "b", C, E, 8, T0 + 90, manifest=False)
    a = bc.read_catalog(str(tmp_path / "a"), C, E)
    b = bc.read_catalog(str(tmp_path / "b"), C, E)
    assert bc.next_counter([a]) == 7  # the orphan's counter is spent too
    assert bc.next_counter([a, b]) == 9  # and an interrupted write's
    assert bc.next_counter([a.to_dict(T0, "a"), b.to_dict(T0, "b")]) == 9  # catalogs as the module returns them
    assert bc.next_counter([a], member_counters=[None, 12, 3]) == 13  # a member remembers more than any destination
    assert bc.next_counter([], []) == 1
    with pytest.raises(bc.CatalogError, match="member_counters: 'x'"):
        bc.next_counter([a], ["x"])
    # a manifest that does not validate is no backup, but its counter was handed out
    broken = make_backup(tmp_path / "c", C, E, 11, T0 + 120)
    manifest = bc.folder_of(str(tmp_path / "c"), C, E) + "/" + name_of(C, E, 11, T0 + 120) + ".json"
    with open(manifest, "w") as handle:
        handle.write("{not json")
    c = bc.read_catalog(str(tmp_path / "c"), C, E)
    assert not c.backups and c.invalid, broken
    assert bc.next_counter([a, b, c]) == 12
    assert bc.next_counter([c.to_dict(T0, "c")]) == 12


def test_next_counter_filter_is_the_catalog_reading(tmp_path):
    """The role takes its counter with the filter quorum.recovery.backup_next_counter, from the
    catalogs backup_catalog returns: the same reading as next_counter, errors as filter errors."""
    from ansible.errors import AnsibleFilterError
    from ansible_collections.quorum.recovery.plugins.filter.backup_next_counter import FilterModule

    counter = FilterModule().filters()["backup_next_counter"]
    make_backup(tmp_path / "a", C, E, 4, T0)
    listed = [bc.read_catalog(str(tmp_path / "a"), C, E).to_dict(T0, "a")]
    assert counter(listed) == 5
    assert counter(listed, [None, 9]) == 10
    assert counter([], []) == 1
    with pytest.raises(AnsibleFilterError, match="member_counters: 'x'"):
        counter(listed, ["x"])


def test_plan_orphans_positions_ahead_and_other_cluster_ids(tmp_path):
    make_backup(tmp_path, C, E, 1, T0, term=2, index=100)
    make_backup(tmp_path, C, E, 2, T0 + 60, term=2, index=500)  # ahead of the new one: data it would lose
    make_backup(tmp_path, C, E, 3, T0 + 120, term=3, index=50)  # a higher term is ahead even at a lower index
    make_backup(tmp_path, C, E, 4, T0 + 180, term=1, index=10, cluster_id="beef0002")
    make_backup(tmp_path, C, E, 5, T0 + 240, term=9, index=999, orphan=True)  # already an orphan
    catalog = bc.read_catalog(str(tmp_path), C, E)
    new = make_backup(tmp_path / "new", C, E, 6, T0 + 300, term=2, index=300)
    planned = bc.plan_orphans(catalog, new)
    assert [(p["counter"]) for p in planned] == [2, 3, 4]
    assert "position (term 2, index 500) is ahead" in planned[0]["reason"]
    assert "cluster_id beef0002 differs" in planned[2]["reason"]
    same = make_backup(tmp_path / "same", C, E, 6, T0 + 300, term=3, index=50)
    assert [p["counter"] for p in bc.plan_orphans(catalog, same)] == [4]  # the same position is not ahead


def test_bad_names_are_refused(tmp_path):
    with pytest.raises(bc.CatalogError, match="engine=consul"):
        bc.read_catalog(str(tmp_path), C, "consul")
    with pytest.raises(bc.CatalogError, match=r"cluster=\.\./x"):
        bc.read_catalog(str(tmp_path), "../x", E)


def test_newest_good_skips_a_damaged_newest_for_the_previous_one(tmp_path):
    make_backup(tmp_path, C, E, 1, T0)
    make_backup(tmp_path, C, E, 2, T0 + 60)
    third = make_backup(tmp_path, C, E, 3, T0 + 120)
    make_backup(tmp_path, C, E, 4, T0 + 180, verified="failed")
    flip_byte(_folder(tmp_path) / third["payload"]["file"])
    catalog = bc.read_catalog(str(tmp_path), C, E)
    assert catalog.newest_verified().counter == 3  # the manifests alone
    assert catalog.newest_good().counter == 2
    assert [b.payload_checked for b in catalog.backups] == [False, True, True, False]  # 1 was not read
    assert catalog.newest_verified().counter == 2
    assert any("sha256" in w and third["name"] in w for w in catalog.warnings)


def _module(tmp_path, **args):
    """Run the backup_catalog module as Ansible runs it on a target (a process reading its JSON
    arguments), from the installed collection; returns its JSON result."""
    argfile = tmp_path / "args.json"
    argfile.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    env = dict(os.environ, PYTHONPATH=str(COLLECTIONS))
    proc = subprocess.run([sys.executable, "-m", "ansible_collections.quorum.recovery.plugins.modules.backup_catalog",
                           str(argfile)], capture_output=True, text=True, env=env, check=False)
    return json.loads(proc.stdout)


def test_the_module_finds_the_newest_good_backup_for_a_restore(tmp_path):
    dest = tmp_path / "dest"
    make_backup(dest, C, E, 1, T0)
    second = make_backup(dest, C, E, 2, T0 + 60)
    flip_byte(dest / C / E / second["payload"]["file"])
    result = _module(tmp_path, dest_dir=str(dest), cluster=C, engine=E, state="verified", until_good=True, where="w")
    catalog = result["catalogs"][0]
    assert catalog["newest_verified"] == name_of(C, E, 1, T0) and result["changed"] is False
    assert [(b["counter"], b["verification"], b["payload_checked"]) for b in catalog["backups"]] == [
        (1, "ok", True), (2, "failed", True)]
    assert any("sha256" in str(w) and second["name"] in str(w) for w in result["warnings"])  # 2.19: structured


def test_the_module_refuses_bad_input_naming_it(tmp_path):
    make_backup(tmp_path / "dest", C, E, 1, T0)
    before = sorted(os.listdir(tmp_path / "dest" / C / E))
    bad = _module(tmp_path, dest_dir=str(tmp_path / "dest"), cluster=C, engine=E, state="pruned", policy={"daily": -1})
    assert bad["failed"] and bad["msg"] == "policy.daily=-1: expected a whole number >= 0"
    bad = _module(tmp_path, dest_dir=str(tmp_path / "dest"), cluster="a/b", engine=E)
    assert bad["failed"] and bad["msg"].startswith("cluster=a/b: a cluster's name is")
    bad = _module(tmp_path, dest_dir=str(tmp_path / "dest"), cluster=C, engine=E, state="verified", newest=0)
    assert bad["failed"] and bad["msg"] == "newest=0: expected a number of backups >= 1"
    assert sorted(os.listdir(tmp_path / "dest" / C / E)) == before


def test_the_catalog_reads_what_the_backup_writer_writes(tmp_path):
    """backup_payload.write_backup (what the backup role packs with) and this reader agree on the
    format: its manifest validates, its payload verifies, and one flipped byte is caught."""
    from ansible_collections.quorum.recovery.plugins.module_utils import backup_payload as bp
    snapshot = tmp_path / "snapshot.db"
    snapshot.write_bytes(os.urandom(50_000))
    name = bp.backup_name(C, E, 7, T0)
    written = bp.write_backup(str(_folder(tmp_path)), name, [{"src": str(snapshot), "name": "snapshot.db"}], {
        "cluster": C, "cluster_id": "cafe0001", "engine": E, "flavor": "etcd", "engine_version": "3.4.23", "counter": 7,
        "created": "2025-12-02T00:00:00Z", "created_epoch": T0,
        "source": {"host": "h1", "address": "10.0.0.1", "member_id": "1", "chosen": "elected", "why": "most advanced"},
        "position": {"term": 3, "index": 420, "revision": 400, "keys": 12},
        "verified": {"at": "2025-12-02T00:01:00Z", "how": "etcd-started-alone", "result": "ok", "details": ""}})
    catalog = bc.read_catalog(str(tmp_path), C, E)
    assert catalog.invalid == [] and [b.name for b in catalog.backups] == [name]
    assert catalog.newest_good().manifest == written
    flip_byte(_folder(tmp_path) / written["payload"]["file"], offset=10_000)
    with pytest.raises(bc.PayloadError, match="has sha256"):
        bc.verify_payload(str(_folder(tmp_path) / written["payload"]["file"]))
