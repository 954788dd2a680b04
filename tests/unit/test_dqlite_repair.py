"""dqlite_repair's logic on real data directories written with the test-side encoder: it does
only what the inspection proposes, check mode changes nothing, a repair already done is not done
again (a resumed recovery runs it again), and the diff is the listing read back from disk."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from conftest import fingerprint
from dqlite_builder import batch, configuration, metadata, segment

from ansible_collections.quorum.recovery.plugins.module_utils import dqlite_datadir
from ansible_collections.quorum.recovery.plugins.module_utils import dqlite_format as fmt
from ansible_collections.quorum.recovery.plugins.module_utils import dqlite_repair as rep

SERVERS = [(1, "10.0.0.1:9001", 1)]
LAST_CLOSED = "%016d-%016d" % (21, 30)


def _entries(first, last):
    return [batch([(1, fmt.ENTRY_COMMAND, b"e%07d" % i)]) for i in range(first, last + 1)]


def _datadir(directory):
    """Three closed segments (1-30) and metadata, as a stopped member leaves them."""
    directory.mkdir()
    (directory / "metadata1").write_bytes(metadata(1, 1, 1))
    (directory / "metadata2").write_bytes(metadata(2, 1, 1))
    (directory / "info.yaml").write_text("Address: 10.0.0.1:9001\nID: 1\nRole: 0\n")
    (directory / "cluster.yaml").write_text("- Address: 10.0.0.1:9001\n  ID: 1\n  Role: 0\n")
    (directory / ("%016d-%016d" % (1, 10))).write_bytes(
        segment([batch([(1, fmt.ENTRY_CHANGE, configuration(SERVERS))])] + _entries(2, 10)))
    for first, last in ((11, 20), (21, 30)):
        (directory / ("%016d-%016d" % (first, last))).write_bytes(segment(_entries(first, last)))
    return directory


@pytest.fixture
def torn(tmp_path):
    """An open segment cut inside its last batch (power loss mid-write): the inspection proposes
    cutting it at the end of the last complete batch."""
    directory = _datadir(tmp_path / "backend")
    (directory / "open-1").write_bytes(segment(_entries(31, 33))[:-24])
    return directory


@pytest.fixture
def flipped(tmp_path):
    """The last closed segment's first batch header damaged: the inspection proposes quarantining it."""
    directory = _datadir(tmp_path / "backend")
    data = bytearray((directory / LAST_CLOSED).read_bytes())
    data[8 + 16] ^= 0xFF
    (directory / LAST_CLOSED).write_bytes(bytes(data))
    return directory


def _inspect(path):
    return dqlite_datadir.inspect_datadir(path, "full")


def _proposed(directory):
    return [p["action"] for p in _inspect(str(directory))["problems"] if p["action"]]


def _fingerprint(*directories):
    return {os.path.join(directory, name): found for directory in directories
            for name, found in fingerprint(directory).items()}


def _repair(directory, repairs, check_mode=False):
    return rep.repair(str(directory), repairs, str(directory) + ".quarantine/r1", _inspect, check_mode)


@pytest.mark.parametrize("repairs, named", [
    ([{"quarantine": ["%016d-%016d" % (1, 10)]}],
     "repairs[0]: quarantine 0000000000000001-0000000000000010: no problem the inspection found proposes it"),
    ([{"truncate": {"file": "open-1", "length": 64}}],
     "repairs[0]: truncate open-1 to 64 bytes: the inspection proposes cutting it at byte 88"),
    ([{"truncate": {"file": "open-1", "length": 88}}, {"quarantine": ["metadata1"]}], "repairs[1]: quarantine metadata1"),
    ([{"quarantine": ["no-such-file"]}], "repairs[0]: quarantine no-such-file: no-such-file is not a file in"),
    ([{"quarantine": ["../metadata1"]}], "repairs[0]: quarantine takes file names inside path"),
    ([{"write": "info.yaml"}], "repairs[0]: {'write': 'info.yaml'} is not a repair action"),
])
def test_an_action_the_inspection_does_not_propose_is_refused_and_nothing_changes(torn, repairs, named):
    before = _fingerprint(torn.parent)
    with pytest.raises(rep.Refused) as refused:
        _repair(torn, repairs)
    assert named in str(refused.value) and str(refused.value).endswith("nothing was changed"), str(refused.value)
    assert _fingerprint(torn.parent) == before
    assert not os.path.exists(str(torn) + ".quarantine")


def test_check_mode_reports_the_cut_and_where_the_original_goes_and_changes_nothing(torn):
    repairs = _proposed(torn)
    assert repairs == [{"truncate": {"file": "open-1", "length": 88}}]
    before = _fingerprint(torn.parent)
    result = _repair(torn, repairs, check_mode=True)
    assert result["changed"]
    assert result["moved"] == {"open-1": str(torn) + ".quarantine/r1/open-1"} and result["cut"] == {"open-1": 88}
    assert result["diff"]["before"]["open-1"] == os.path.getsize(torn / "open-1")
    assert result["diff"]["after"] == dict(result["diff"]["before"], **{"open-1": 88})
    assert result["member"]["verdict"] == "repairable"  # the inspection before: nothing was done
    assert _fingerprint(torn.parent) == before
    assert not os.path.exists(str(torn) + ".quarantine")


def test_the_cut_keeps_the_original_and_a_rerun_changes_nothing(torn):
    original = (torn / "open-1").read_bytes()
    repairs = _proposed(torn)
    result = _repair(torn, repairs)
    kept = torn.parent / "backend.quarantine" / "r1" / "open-1"
    assert result["changed"] and result["moved"] == {"open-1": str(kept)}
    assert (torn / "open-1").read_bytes() == original[:88] and kept.read_bytes() == original
    assert result["member"]["verdict"] == "healthy", result["member"]["problems"]
    manifest = json.loads((kept.parent / "manifest.json").read_text())
    assert [(e["file"], e["action"], e["cut_to"], e["done"]) for e in manifest] == [("open-1", "cut", 88, True)]
    assert "cut inside batch 3" in manifest[0]["reasons"][0]
    # the diff is the listing read back from disk
    assert result["diff"]["after"] == {n: os.path.getsize(torn / n) for n in os.listdir(torn)}
    assert result["diff"]["after"]["open-1"] == 88 and result["diff"]["before"]["open-1"] == len(original)

    # A resumed recovery runs the same repairs again: nothing to do, nothing changes.
    after = _fingerprint(torn.parent)
    again = _repair(torn, repairs)
    assert not again["changed"] and again["moved"] == {} and again["manifest"] == []
    assert again["diff"]["before"] == again["diff"]["after"] == result["diff"]["after"]
    assert _fingerprint(torn.parent) == after
    assert not _repair(torn, repairs, check_mode=True)["changed"]


def test_quarantine_moves_the_file_aside_and_a_rerun_changes_nothing(flipped):
    repairs = _proposed(flipped)
    assert repairs == [{"quarantine": [LAST_CLOSED]}]
    original = (flipped / LAST_CLOSED).read_bytes()
    result = _repair(flipped, repairs)
    kept = flipped.parent / "backend.quarantine" / "r1" / LAST_CLOSED
    assert result["changed"] and result["moved"] == {LAST_CLOSED: str(kept)} and result["cut"] == {}
    assert not (flipped / LAST_CLOSED).exists() and kept.read_bytes() == original
    assert LAST_CLOSED in result["diff"]["before"] and LAST_CLOSED not in result["diff"]["after"]
    assert result["member"]["verdict"] == "healthy" and result["member"]["log"]["last_index"] == 20
    after = _fingerprint(flipped.parent)
    again = _repair(flipped, repairs)
    assert not again["changed"] and again["moved"] == {}
    assert _fingerprint(flipped.parent) == after


def test_a_repair_killed_after_its_manifest_is_finished_by_the_rerun(flipped):
    """A run killed between writing its intent and the move: the next inspection may no longer
    propose the step, but the manifest recorded it for this very file (same sha256)."""
    repairs = _proposed(flipped)
    qdir = str(flipped) + ".quarantine/r1"
    planned = rep.plan_steps(str(flipped), qdir, rep.requested_steps(repairs), _inspect(str(flipped)))
    os.makedirs(qdir)
    with open(os.path.join(qdir, "manifest.json"), "w") as handle:
        json.dump([p["entry"] for p in planned], handle)
    # an inspection that proposes nothing any more: the manifest's record is what allows the step
    result = rep.repair(str(flipped), repairs, qdir, lambda path: dict(_inspect(path), problems=[]))
    assert result["changed"] and not (flipped / LAST_CLOSED).exists()
    manifest = json.loads(open(os.path.join(qdir, "manifest.json")).read())
    assert [(e["file"], e["done"]) for e in manifest] == [(LAST_CLOSED, True)]


def test_refused_while_a_process_holds_the_directory(torn):
    before = _fingerprint(torn.parent)
    with open(torn / "metadata1", "rb") as held:
        holder = subprocess.Popen(["sleep", "60"], stdin=held)
    try:
        with pytest.raises(rep.Refused) as refused:
            _repair(torn, _proposed(torn))
    finally:
        holder.kill()
        holder.wait()
    assert "dqlite is running on %s" % torn in str(refused.value) and "nothing was changed" in str(refused.value)
    assert _fingerprint(torn.parent) == before
