"""The corruption matrix: damaged SCRATCH COPIES of real dqlite data directories from the lab.

For each case the module must name the right file and remedy, and its replay of raft's
start-up (member.prediction) must match what real dqlite does with the same bytes:
- dqlite-demo started on a copy, inside the host: does it start, what does it rename to
  corrupt-*, remove, or close (open-N to START-END), and why does it refuse;
- `.reconfigure` (go-dqlite shell) on another copy: the N-N segment it appends says which
  last index raft kept (N - 1).
Bases: the lab's members after a clean stop (idle, then after churn: snapshots and several
closed segments) and after a SIGKILL mid-write (open segments). Every measured row is written
to build/dqlite-matrix.json for docs/dqlite_info.md.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import time

import pytest

from conftest import REPO, run_ansible

from ansible_collections.quorum.recovery.plugins.module_utils import dqlite_format as fmt

MATRIX = "/var/tmp/matrix"
RESULTS = REPO / "build" / "dqlite-matrix.json"


# ------------------------------------------------------------------ helpers on a scratch dir
def _closed(d):
    return sorted(n for n in os.listdir(d) if fmt.CLOSED_SEGMENT_RE.match(n))


def _opened(d):
    return sorted((n for n in os.listdir(d) if fmt.OPEN_SEGMENT_RE.match(n)), key=lambda n: int(n[5:]))


def _snapshots(d):
    """(data, meta) names, oldest first."""
    metas = sorted((n for n in os.listdir(d) if fmt.SNAPSHOT_META_RE.match(n)),
                   key=lambda n: int(fmt.SNAPSHOT_META_RE.match(n).group(2)))
    return [(m[:-5], m) for m in metas]


def _flip(d, name, offset):
    with open(os.path.join(d, name), "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))


def _truncate(d, name, length):
    os.truncate(os.path.join(d, name), length)


def _batches(d, name, closed=True):
    with open(os.path.join(d, name), "rb") as handle:
        return fmt.parse_segment(handle.read(), closed=closed)["batches"]


def _remove(d, *names):
    for name in names:
        os.unlink(os.path.join(d, name))


def _current_metadata(d):
    versions = {}
    for name in ("metadata1", "metadata2"):
        with open(os.path.join(d, name), "rb") as handle:
            versions[name] = struct.unpack("<4Q", handle.read())[1]
    return max(versions, key=versions.get), min(versions, key=versions.get)


def _rewrite_yaml(d, name, old, new):
    path = os.path.join(d, name)
    with open(path) as handle:
        text = handle.read()
    assert old in text, (name, text)
    with open(path, "w") as handle:
        handle.write(text.replace(old, new))


# ------------------------------------------------------------------ the cases
# Each: base, damage(d) -> the file the module must blame (None: no problem expected),
# expected verdict, and a word the remedy must contain.
def _header_flip(pick):
    def damage(d):
        name = pick(_closed(d))
        _flip(d, name, 8 + 16)  # the first entry's term, inside batch 1's header
        return name
    return damage


def _payload_flip(pick):
    def damage(d):
        name = pick(_closed(d))
        last = _batches(d, name)[-1]
        _flip(d, name, last["data_range"][0])
        return name
    return damage


def _wrong_count(d):
    name = _closed(d)[-1]
    first, last = (int(x) for x in name.split("-"))
    renamed = "%016d-%016d" % (first, last + 1)
    os.rename(os.path.join(d, name), os.path.join(d, renamed))
    return renamed


def _truncated_closed(d):
    name = _closed(d)[-1]
    _truncate(d, name, _batches(d, name)[-1]["offset"] + 20)
    return name


def _gap(pick):
    def damage(d):
        name = pick(_closed(d))
        _remove(d, name)
        return name
    return damage


def _gap_after_snapshot(d):
    _remove(d, _closed(d)[-2])
    return _closed(d)[-1]


def _behind_snapshot(d):
    snap = int(fmt.SNAPSHOT_RE.match(_snapshots(d)[-1][0]).group(2))
    doomed = [n for n in _closed(d) if int(n.split("-")[1]) > snap - 100]
    _remove(d, *doomed)
    return None


def _behind_snapshot_with_open(d):
    """The newest closed segment ends before the snapshot and an open segment follows it,
    whose entries also end before the snapshot (raft#373)."""
    snap = int(fmt.SNAPSHOT_RE.match(_snapshots(d)[-1][0]).group(2))
    closed = _closed(d)
    _remove(d, *[n for n in closed if int(n.split("-")[1]) >= snap])
    last = _closed(d)[-1]
    os.rename(os.path.join(d, last), os.path.join(d, "open-1"))
    return None  # measured: raft closes open-1, fails, and its retry skips every segment


def _open_with_batches(d, least):
    for name in reversed(_opened(d)):
        if len(_batches(d, name, closed=False)) >= least:
            return name
    raise AssertionError("no open segment with %d batches in %s" % (least, os.listdir(d)))


def _open_bad_batch(d):
    name = _open_with_batches(d, 3)
    batches = _batches(d, name, closed=False)
    _flip(d, name, batches[len(batches) // 2]["offset"] + 24)
    return name


def _open_truncated(d):
    name = _open_with_batches(d, 2)
    _truncate(d, name, _batches(d, name, closed=False)[-1]["offset"] + 30)
    return name


def _open_format_unknown(d):
    name = _open_with_batches(d, 1)
    _flip(d, name, 0)
    return name


def _meta_corrupt(d):
    _flip(d, _snapshots(d)[-1][1], 40)
    return _snapshots(d)[-1][1]


def _snapshot_truncated(d):
    data = _snapshots(d)[-1][0]
    _truncate(d, data, os.path.getsize(os.path.join(d, data)) // 2)
    return data


def _snapshot_flip(d):
    """32 bytes flipped mid-frame. One byte is not enough (measured): a flipped match offset in
    a run of zeros can decode to the very same content, which both dqlite and the module accept."""
    data = _snapshots(d)[-1][0]
    middle = os.path.getsize(os.path.join(d, data)) // 2
    for offset in range(middle, middle + 32):
        _flip(d, data, offset)
    return data


def _snapshot_empty(d):
    data = _snapshots(d)[-1][0]
    _truncate(d, data, 0)
    return data


def _meta_only(d):
    data, meta = _snapshots(d)[-1]
    _remove(d, data)
    return meta


def _data_only(d):
    data, meta = _snapshots(d)[-1]
    _remove(d, meta)
    return data


def _metadata_torn(d):
    current, _older = _current_metadata(d)
    _truncate(d, current, 20)
    return current


def _metadata_same_version(d):
    current, older = _current_metadata(d)
    shutil.copyfile(os.path.join(d, current), os.path.join(d, older))
    return "metadata"  # either file


def _metadata_bad_format(d):
    current, _older = _current_metadata(d)
    _flip(d, current, 0)
    return current


def _metadata_too_long(d):
    current, _older = _current_metadata(d)
    with open(os.path.join(d, current), "ab") as handle:
        handle.write(b"\0")
    return current


def _info_missing(d):
    _remove(d, "info.yaml")
    return "info.yaml"


def _info_other_address(d):
    _rewrite_yaml(d, "info.yaml", ".11:9001", ".19:9001")
    return "info.yaml"


def _cluster_missing(d):
    _remove(d, "cluster.yaml")
    return "cluster.yaml"


def _cluster_other_address(d):
    _rewrite_yaml(d, "cluster.yaml", ".12:9001", ".19:9001")
    return "cluster.yaml"


CASES = {
    # name: (base, damage, verdict, remedy word)
    "healthy-idle": ("idle", lambda d: None, "healthy", None),
    "healthy-churned": ("churned", lambda d: None, "healthy", None),
    "healthy-killed": ("killed", lambda d: None, "healthy", None),
    "closed-header-flip-last": ("churned", _header_flip(lambda c: c[-1]), "repairable", "quarantine"),
    "closed-header-flip-middle": ("churned", _header_flip(lambda c: c[-2]), "unusable", "rebuild"),
    "closed-header-flip-behind-snapshot": ("churned", _header_flip(lambda c: c[1]), "repairable", "quarantine"),
    "closed-payload-flip-last": ("churned", _payload_flip(lambda c: c[-1]), "repairable", "quarantine"),
    "closed-payload-flip-middle": ("churned", _payload_flip(lambda c: c[-2]), "unusable", "rebuild"),
    "closed-wrong-entry-count": ("churned", _wrong_count, "repairable", "quarantine"),
    "closed-truncated-last": ("churned", _truncated_closed, "repairable", "quarantine"),
    "gap-behind-snapshot": ("churned", _gap(lambda c: c[2]), "healthy", None),
    "segment-past-snapshot": ("churned", _gap_after_snapshot, "unusable", "rebuild"),
    "closed-all-behind-snapshot": ("churned", _behind_snapshot, "healthy", None),
    "last-entry-behind-snapshot": ("churned", _behind_snapshot_with_open, "healthy", None),
    "open-bad-batch-nonzero-after": ("killed", _open_bad_batch, "repairable", "cut"),
    "open-truncated-in-batch": ("killed", _open_truncated, "repairable", "cut"),
    "meta-corrupt": ("churned", _meta_corrupt, "repairable", "quarantine"),
    "open-format-unknown": ("killed", _open_format_unknown, "repairable", "quarantine"),
    "snapshot-data-truncated": ("churned", _snapshot_truncated, "repairable", "quarantine"),
    "snapshot-data-flipped": ("churned", _snapshot_flip, "repairable", "quarantine"),
    "snapshot-data-empty": ("churned", _snapshot_empty, "healthy", None),
    "snapshot-meta-without-data": ("churned", _meta_only, "healthy", None),
    "snapshot-data-without-meta": ("churned", _data_only, "healthy", None),
    "metadata-torn": ("churned", _metadata_torn, "healthy", None),
    "metadata-same-version": ("churned", _metadata_same_version, "repairable", "quarantine"),
    "metadata-bad-format": ("churned", _metadata_bad_format, "repairable", "quarantine"),
    "metadata-too-long": ("churned", _metadata_too_long, "repairable", "quarantine"),
    "info-yaml-missing": ("churned", _info_missing, "repairable", "info.yaml"),
    "info-yaml-other-address": ("churned", _info_other_address, "repairable", "info.yaml"),
    "cluster-yaml-missing": ("churned", _cluster_missing, "repairable", "cluster.yaml"),
    "cluster-yaml-other-address": ("churned", _cluster_other_address, "healthy", None),
}


# ------------------------------------------------------------------ real dqlite on a copy
def _copy_case(host, case, to):
    src = host.real_path("%s/%s" % (MATRIX, case))
    dst = host.real_path("%s/%s" % (to, case))
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, symlinks=True)
    return dst / host.dqlite_address


def _real_start(lab, host, case, timeout=15.0):
    """dqlite-demo on a copy of the case: ("started"|"exited"|"hung", log tail, files after).
    --verbose makes a started node log its search for a leader; a refusal exits at once
    with raft's message."""
    directory = _copy_case(host, case, "/var/tmp/start")
    log = host.real_path("/var/tmp/start/%s.log" % case)
    with open(log, "wb") as out:
        proc = lab.spawn(host, ["dqlite-demo", "--verbose", "--api", "%s:18001" % host.address,
                                "--db", host.dqlite_address, "--dir", "/var/tmp/start/%s" % case],
                         stdout=out, stderr=subprocess.STDOUT)
    outcome = "hung"
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                outcome = "exited"
                break
            if b"no known leader" in log.read_bytes() or b"attempt 1:" in log.read_bytes():
                outcome = "started"
                break
            time.sleep(0.05)
    finally:
        lab.stop_spawned(proc, grace=0)
    text = log.read_text(errors="replace")
    reason = next((line for line in text.splitlines() if line.startswith("Error:")), None)
    if outcome == "exited":
        outcome = "refuses" if reason else "crashes"
    files = sorted(os.listdir(directory)) if directory.is_dir() else []
    return {"outcome": {"started": "starts", "hung": "hangs"}.get(outcome, outcome), "returncode": proc.returncode,
            "error": reason, "tail": text.strip().splitlines()[-3:], "files": files}


def _real_reconfigure(lab, host, case):
    """.reconfigure on a copy: raft loads the dir and appends one segment N-N, N = last + 1."""
    directory = _copy_case(host, case, "/var/tmp/reconf")
    inside = "/var/tmp/reconf/%s/%s" % (case, host.dqlite_address)
    try:
        proc = lab.exec(host, ["dqlite", "-s", host.dqlite_address, "demo",
                               ".reconfigure %s %s/cluster.yaml" % (inside, inside)], check=False, timeout=30)
    except subprocess.TimeoutExpired:  # subprocess.run has killed it
        return {"returncode": None, "output": "hung", "last_index": None, "files": sorted(os.listdir(directory))}
    files = sorted(os.listdir(directory))
    singles = [n for n in files if fmt.CLOSED_SEGMENT_RE.match(n) and n[:16] == n[17:]]
    last = max((int(n[:16]) for n in singles), default=None)
    return {"returncode": proc.returncode, "output": (proc.stdout + proc.stderr).strip()[-300:],
            "last_index": last - 1 if last is not None and proc.returncode == 0 else None, "files": files}


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def matrix(lab):
    """Build every case (one lab, scratch copies), run the module once over all of them
    through ansible, and return {case: (blamed file, member facts)}."""
    hosts = lab.hosts()
    host = hosts[0]
    bases = {}

    def keep(tag):
        for h in hosts:
            dst = host.real_path("/var/tmp/base/%s-%s" % (tag, h.name))
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(h.real_path(h.dqlite_data_dir), dst, symlinks=True)
        bases[tag] = host.real_path("/var/tmp/base/%s-%s" % (tag, host.name))

    for h in hosts:
        lab.service(h, "dqlite", "stop")
    keep("idle")
    lab.start_all(hosts, "dqlite")
    lab._wait(lambda: lab._dqlite_settled(hosts, 3), 60, "dqlite voters")
    lab.churn(host, "dqlite", count=3000, size=64)
    for h in hosts:
        lab.service(h, "dqlite", "stop")
    keep("churned")
    lab.start_all(hosts, "dqlite")
    lab._wait(lambda: lab._dqlite_settled(hosts, 3), 60, "dqlite voters")
    lab.power_off_mid_write(host, "dqlite", "midwrite", count=3000, seconds=1.5)
    keep("killed")

    blamed = {}
    shutil.rmtree(host.real_path(MATRIX), ignore_errors=True)
    for case, (base, damage, _verdict, _remedy) in CASES.items():
        directory = host.real_path("%s/%s/%s" % (MATRIX, case, host.dqlite_address))
        shutil.copytree(bases[base], directory, symlinks=True)
        blamed[case] = damage(str(directory))
    # the healthy dirs of the other members, too: no false alarm anywhere
    extra = {}
    for tag in ("idle", "churned", "killed"):
        for h in hosts[1:]:
            case = "healthy-%s-%s" % (tag, h.name)
            shutil.copytree(host.real_path("/var/tmp/base/%s-%s" % (tag, h.name)),
                            host.real_path("%s/%s/%s" % (MATRIX, case, host.dqlite_address)), symlinks=True)
            extra[case] = None
    names = list(CASES) + list(extra)
    playbook = host.real_path("%s/facts.yml" % MATRIX)
    playbook.write_text(json.dumps([{
        "hosts": host.name, "gather_facts": False, "tasks": [
            {"name": "inspect every case", "quorum.recovery.dqlite_info": {
                "path": "%s/{{ item }}/%s" % (MATRIX, host.dqlite_address)},
             "loop": names, "register": "facts"},
            {"name": "keep the results", "ansible.builtin.copy": {
                "content": "{{ facts.results | map(attribute='member') | list | to_json }}",
                "dest": "%s/results.json" % MATRIX, "mode": "0600"}}]}]))
    run_ansible("ansible-playbook", playbook, inventory=lab.inventory_path)
    members = json.loads(host.real_path("%s/results.json" % MATRIX).read_text())
    facts = {name: (blamed.get(name), member) for name, member in zip(names, members)}
    return facts


@pytest.mark.parametrize("case", list(CASES))
def test_module_prediction_matches_real_dqlite(lab, matrix, case):
    host = lab.hosts()[0]
    blamed, member = matrix[case]
    _base, _damage, verdict, remedy = CASES[case]
    pred = member["prediction"]
    started = _real_start(lab, host, case)
    # what a started raft kept; a refused one has nothing to tell (measured: on a truncated
    # LZ4 snapshot the shell's .reconfigure spins instead of failing)
    reconf = _real_reconfigure(lab, host, case) if started["outcome"] == "starts" else None
    row = {"prediction": pred, "verdict": member["verdict"], "start": started, "reconfigure": reconf,
           "problems": [(p["severity"], p["file"], p["message"], p["dqlite_would"], p["remedy"])
                        for p in member["problems"]], "blamed": blamed}
    _record(case, row)

    # 1. what the module predicts is what real dqlite does
    assert started["outcome"] == pred["outcome"], (pred, started)
    if started["error"] and pred["outcome"] == "refuses":
        assert _words(pred["reason"]) & _words(started["error"]), (pred["reason"], started["error"])
    if pred["starts"]:
        assert reconf["last_index"] == pred["last_index"], (pred, reconf)
        renamed = sorted(n.split("-", 2)[2] for n in started["files"] if n.startswith("corrupt-"))
        assert renamed == sorted(pred["renamed_to_corrupt"]), (pred, started["files"])
        for name in pred["removed"]:
            assert name not in started["files"], (name, started["files"])
        for original, closed_as in pred["closed_as"].items():
            assert closed_as in started["files"] and original not in started["files"], (pred, started["files"])

    # 2. the right file, verdict and remedy
    assert member["verdict"] == verdict, (member["verdict"], member["problems"])
    if blamed is None or verdict == "healthy":
        assert not [p for p in member["problems"] if p["severity"] == "error"], member["problems"]
    if blamed is not None and verdict != "healthy":
        named = [p for p in member["problems"] if p["severity"] == "error" and blamed in (p["file"] or "")]
        assert named, (blamed, member["problems"])
        if remedy:
            assert any(remedy in p["remedy"] or remedy in json.dumps(p["action"]) for p in named), named


def _apply_actions(host, case, member):
    """Do what the actions of the errors say, on a fresh copy named <case>-repaired: move
    quarantined files out, cut segments, write yaml files from the undamaged base."""
    base = CASES[case][0]
    repaired = "%s-repaired" % case
    src = host.real_path("%s/%s" % (MATRIX, case))
    dst = host.real_path("%s/%s" % (MATRIX, repaired))
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, symlinks=True)
    directory = dst / host.dqlite_address
    aside = host.real_path("%s/%s.quarantine" % (MATRIX, repaired))
    aside.mkdir(exist_ok=True)
    for problem in member["problems"]:
        action = problem["action"] or {}
        if problem["severity"] != "error":
            continue
        for name in action.get("quarantine", []):
            if (directory / name).exists():
                shutil.move(str(directory / name), str(aside / name))
        if "truncate" in action:
            os.truncate(directory / action["truncate"]["file"], action["truncate"]["length"])
        if "write" in action:
            shutil.copyfile(host.real_path("/var/tmp/base/%s-%s/%s" % (base, host.name, action["write"])),
                            directory / action["write"])
    return repaired


@pytest.mark.parametrize("case", [c for c, spec in CASES.items() if spec[2] == "repairable"])
def test_the_proposed_repair_makes_real_dqlite_start(lab, matrix, case):
    host = lab.hosts()[0]
    _blamed, member = matrix[case]
    repaired = _apply_actions(host, case, member)
    started = _real_start(lab, host, repaired)
    assert started["outcome"] == "starts", started
    _record(repaired, {"start": started})


def test_no_false_alarm_on_other_members(matrix):
    for case, (_blamed, member) in matrix.items():
        if case.startswith("healthy-") and case not in CASES:
            assert member["verdict"] == "healthy", (case, member["problems"])
            assert member["prediction"]["starts"], (case, member["prediction"])
            assert member["prediction"]["last_index"] == member["log"]["last_index"], case


def _words(text):
    """The file names and the distinctive words of an error message."""
    return {w for w in re.split(r"[^a-z0-9.-]+", text.lower()) if len(w) >= 6} - {"segment", "snapshot", "closed"}


def _record(case, row):
    rows = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    rows[case] = row
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(rows, indent=1, sort_keys=True))
