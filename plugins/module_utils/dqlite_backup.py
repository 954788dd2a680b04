# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A consistent copy of a dqlite member's raft files, taken while it runs (or stopped), and its
verification: the facts reader's full check, and the copy started alone on loopback.

PRIVATE to this collection: may change without notice. Standard library only: runs on members.

Why the copy is consistent while raft keeps writing (canonical/raft uv_*.c):
- a closed segment (FIRST-LAST) and a snapshot pair never change once they carry their names;
  raft may delete them (after a newer snapshot), never rewrite them;
- raft appends to one open segment at a time, in counter order, and closes a full one by
  truncating its unused tail and renaming it to FIRST-LAST (same inode);
- an open segment's entries have no index of their own: they follow the last closed segment.
So the copy lists the directory (name, inode), copies the newest complete snapshot pair and the
closed segments raft needs after it, then the open segments NEWEST FIRST (when a newer one holds
entries, every older one was full before it was read), each cut at its last complete batch, then
metadata1/metadata2 (terms only grow: read last, they are never behind the copied log). A file
that vanished, changed inode, or got renamed in a way that breaks the index arithmetic (checked
on a second listing: every open segment copied is still that open segment or the closed segment
starting at the index the copy gave it) starts another round, at most MAX_ROUNDS; files already
copied whose inode is unchanged are kept. Nothing is written, renamed or locked under the data
directory: it is opened for reading only.
The copy is written to a temporary folder beside the destination, checked by the facts reader's
FULL check, fsynced, then renamed to the destination: a copy that fails leaves no folder under
the destination's name.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
import subprocess
import tempfile
import time
from typing import TYPE_CHECKING

from ansible_collections.quorum.recovery.plugins.module_utils import datadir_archive as arch
from ansible_collections.quorum.recovery.plugins.module_utils import dqlite_datadir
from ansible_collections.quorum.recovery.plugins.module_utils import dqlite_format as fmt
from ansible_collections.quorum.recovery.plugins.module_utils import dqlite_plan
from ansible_collections.quorum.recovery.plugins.module_utils.datadir_archive import NO_PROGRESS
from ansible_collections.quorum.recovery.plugins.module_utils.refused import Refused
from ansible_collections.quorum.recovery.plugins.module_utils.scratch_process import ScratchProcess, free_port

if TYPE_CHECKING:
    from typing import Any

    from ansible_collections.quorum.recovery.plugins.module_utils.datadir_archive import ProgressSink

RAFT, NODE = "raft", "node"  # the payload's folders (docs/backup-format.md)
NODE_FILES = ("info.yaml", "cluster.yaml")  # kept for reference; never the TLS key
MANIFEST = "MANIFEST.json"
FORMAT = "quorum.recovery/dqlite-copy/1"
MAX_ROUNDS = 8
CHUNK = 1 << 20
COPY_PIECE = 8 << 20  # copied in the kernel, then hashed while cached


class _Moved(Exception):
    """A file of the plan vanished or changed under the copy: take another round."""


# ---------------------------------------------------------------------------- listing and plan
def _listing(data_dir: str) -> dict[str, tuple[int, int]]:
    """name -> (inode, size) of every regular file, read-only."""
    out = {}
    for name in os.listdir(data_dir):
        try:
            st = os.stat(os.path.join(data_dir, name))
        except FileNotFoundError:
            continue  # removed between the two calls
        if stat.S_ISREG(st.st_mode):
            out[name] = (st.st_ino, st.st_size)
    return out


def plan_copy(listing: dict[str, tuple[int, int]]) -> dict[str, Any]:
    """What to copy from a listing (name -> (inode, size)): the newest complete snapshot pair,
    the closed segments raft loads after it (or from index 1), the open segments with bytes, the
    metadata files. Raises Refused when the listing holds no loadable log."""
    kinds = dqlite_datadir._classify(sorted(listing))  # pylint: disable=protected-access
    pairs = [key for key in sorted(kinds["snapshot"]) if key in kinds["meta"]
             and listing[kinds["snapshot"][key]][1] > 0 and listing[kinds["meta"][key]][1] > 0]
    snapshot = None
    if pairs:  # raft loads the newest pair (term, index, timestamp), even when older ones exist
        key = pairs[-1]
        snapshot = {"term": key[0], "index": key[1], "file": kinds["snapshot"][key], "meta_file": kinds["meta"][key]}
    closed = kinds["closed"]
    chain: list = []
    for first, last, name in reversed(closed):  # the newest contiguous run, as raft keeps it
        if chain and last + 1 != chain[0][0]:
            break
        chain.insert(0, (first, last, name))
    if snapshot:
        needed = [c for c in chain if c[1] >= snapshot["index"]]
        chain = needed or chain[-1:]  # the last one still numbers the open segments after it
        if chain and chain[0][0] > snapshot["index"] + 1:
            raise Refused("closed segment %s starts after the newest snapshot %s (entries %d-%d are missing)"
                          % (chain[0][2], snapshot["file"], snapshot["index"] + 1, chain[0][0] - 1))
    elif chain and chain[0][0] != 1:
        raise Refused("the log starts at closed segment %s and there is no snapshot: no loadable log"
                      % chain[0][2])
    next_index = chain[-1][1] + 1 if chain else (snapshot["index"] + 1 if snapshot else 1)
    opened = [(counter, name) for counter, name in kinds["open"] if listing[name][1] >= 8]
    if not snapshot and not chain and not opened:
        raise Refused("no snapshot and no segment with entries: nothing to back up")
    return {"snapshot": snapshot, "closed": chain, "open": opened, "next_index": next_index,
            "metadata": sorted(kinds["metadata"]), "node": [n for n in NODE_FILES if n in listing],
            "bytes": sum(listing[n][1] for n in _immutable(snapshot, chain) + [n for _c, n in opened])}


def _immutable(snapshot, chain):
    return ([snapshot["meta_file"], snapshot["file"]] if snapshot else []) + [name for _f, _l, name in chain]


# ---------------------------------------------------------------------------- copying
def _open_same(path: str, inode: int):
    """The file at path, opened for reading, if it is still the inode the plan listed."""
    try:
        handle = open(path, "rb")  # pylint: disable=consider-using-with
    except FileNotFoundError:
        raise _Moved("%s vanished" % os.path.basename(path)) from None
    if os.fstat(handle.fileno()).st_ino != inode:
        handle.close()
        raise _Moved("%s was replaced" % os.path.basename(path))
    return handle


def _write(dest: str, chunks, progress: ProgressSink) -> dict[str, Any]:
    digest, size = hashlib.sha256(), 0
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        for chunk in chunks:
            out.write(chunk)
            digest.update(chunk)
            size += len(chunk)
            progress.advance(len(chunk))
    return {"size": size, "sha256": digest.hexdigest()}  # fsynced all at once before the rename: _fsync_tree


def _copy_immutable(src: str, dest: str, inode: int, progress: ProgressSink) -> dict[str, Any]:
    with _open_same(src, inode) as handle:
        if hasattr(os, "copy_file_range"):
            try:
                return _kernel_copy(handle, dest, progress)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                handle.seek(0)  # a file system without it: copy through this process
        return _write(dest, iter(lambda: handle.read(CHUNK), b""), progress)


def _kernel_copy(handle, dest: str, progress: ProgressSink) -> dict[str, Any]:
    """Copy in the kernel (copy_file_range: the bytes never pass through this process, measured
    three times faster than read and write here), then hash the copy as written, a piece at a time
    while that piece is still in the page cache: the manifest's sha256 is of the bytes that landed."""
    digest, size = hashlib.sha256(), 0
    buffer = bytearray(COPY_PIECE)
    fd = os.open(dest, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "r+b", buffering=0) as out:
            while True:
                count = os.copy_file_range(handle.fileno(), out.fileno(), COPY_PIECE)
                if not count:
                    break
                out.seek(size)
                view = memoryview(buffer)[:out.readinto(memoryview(buffer)[:count])]
                digest.update(view)
                size += len(view)
                out.seek(size)
                progress.advance(len(view))
    except BaseException:
        os.unlink(dest)
        raise
    return {"size": size, "sha256": digest.hexdigest()}


def _copy_open(src: str, dest: str, inode: int, progress: ProgressSink) -> dict[str, Any] | None:
    """An open segment up to its last complete batch (raft may be writing the next one); None
    when it holds no entry yet. Returns the file's facts plus entries and cut bytes."""
    with _open_same(src, inode) as handle:
        data = handle.read()
    parsed = fmt.parse_segment(data, full=True, closed=False)
    if not parsed["entries"]:
        return None
    kept = data[:parsed["end"]]
    facts = _write(dest, [kept], progress)
    facts.update(entries=parsed["entries"], cut=len(data) - parsed["end"],
                 torn=bool(parsed["error"]), last_term=parsed["batches"][-1]["entries"][-1][0])
    return facts


def _read_metadata(path: str) -> bytes | None:
    """A metadata file's 32 bytes; raft rewrites them in place, so a read that does not parse is
    read again (a few times) before it is copied as it is."""
    data = b""
    for _attempt in range(5):
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            return None
        try:
            fmt.parse_metadata(data)
            return data
        except fmt.FormatError:
            time.sleep(0.01)
    return data


def _holder(data_dir: str) -> dict:
    try:
        return dqlite_datadir.is_running(data_dir)
    except OSError:
        return {"running": None, "evidence": "cannot read %s" % data_dir}


def _round(data_dir, raft_dir, kept, progress, warnings):
    """One listing, copy and re-listing. kept: name -> (inode, facts) of immutable files already in
    raft_dir from earlier rounds. Returns (plan, copied facts by name, open segment facts)."""
    listing = _listing(data_dir)
    plan = plan_copy(listing)
    immutable = _immutable(plan["snapshot"], plan["closed"])
    for name in list(kept):  # an earlier round's file the plan no longer needs, or replaced since
        if name not in immutable or kept[name][0] != listing[name][0]:
            os.unlink(os.path.join(raft_dir, name))
            del kept[name]
    for name in os.listdir(raft_dir):
        if name not in kept:
            os.unlink(os.path.join(raft_dir, name))
    progress.phase("copy", plan["bytes"])
    copied = {}
    for name in immutable:
        if name in kept:
            copied[name] = kept[name][1]
            progress.advance(copied[name]["size"])
            continue
        copied[name] = _copy_immutable(os.path.join(data_dir, name), os.path.join(raft_dir, name),
                                       listing[name][0], progress)
        kept[name] = (listing[name][0], copied[name])
    opened = []
    for counter, name in reversed(plan["open"]):  # newest first: see the module's docstring
        facts = _copy_open(os.path.join(data_dir, name), os.path.join(raft_dir, name), listing[name][0], progress)
        if facts is None:
            continue
        facts.update(name=name, counter=counter, inode=listing[name][0])
        opened.insert(0, facts)
    index = plan["next_index"]
    for facts in opened:
        facts["first_index"] = index
        index += facts["entries"]
        if facts["torn"]:
            warnings.append("%s: copied up to its last complete batch; the batch raft was writing after it "
                            "is not in the copy" % facts["name"])
        copied[facts["name"]] = {"size": facts["size"], "sha256": facts["sha256"]}
    for name in plan["metadata"]:
        data = _read_metadata(os.path.join(data_dir, name))
        if data is not None:
            copied[name] = _write(os.path.join(raft_dir, name), [data], NO_PROGRESS)
    _check_open_segments_stayed(data_dir, plan, opened)
    return plan, copied, opened


def _check_open_segments_stayed(data_dir, plan, opened):
    """On a second listing: every open segment copied is still that open segment, or the closed
    segment that starts at the index the copy gave it (raft closes by renaming: same inode); no
    closed segment the copy does not know starts at or after the copy's first open index (the
    first listing missed a segment being renamed)."""
    after = _listing(data_dir)
    by_inode = {inode: name for name, (inode, _size) in after.items()}
    given = {facts["inode"]: facts["first_index"] for facts in opened}
    for facts in opened:
        now = by_inode.get(facts["inode"])
        if now is None:
            raise _Moved("%s was closed and removed before it could be checked" % facts["name"])
        match = fmt.CLOSED_SEGMENT_RE.match(now)
        if now != facts["name"] and not (match and int(match.group(1)) == facts["first_index"]):
            raise _Moved("%s is now %s, not the segment starting at %d" % (facts["name"], now, facts["first_index"]))
    for name, (inode, _size) in after.items():
        match = fmt.CLOSED_SEGMENT_RE.match(name)
        if match and int(match.group(1)) >= plan["next_index"] and given.get(inode) != int(match.group(1)):
            raise _Moved("closed segment %s appeared where the copy's open segments go" % name)


def check_copy(raft_dir: str, expected_last_index: int | None = None, lz4: str = "auto",
               depth: str = "full") -> dict[str, Any]:
    """The facts reader's check of a copied raft folder (as dqlite_info runs it, FULL depth by
    default: every checksum, every snapshot decoded). Returns the
    facts; raises Refused naming the file when raft would not load it whole. Problems about the
    app's own files (info.yaml, cluster.yaml: kept apart, in node/) do not count."""
    facts = dqlite_datadir.inspect_datadir(raft_dir, depth, True, lz4)
    errors = [p for p in facts["problems"] if p["severity"] == dqlite_datadir.ERROR and p["file"] not in NODE_FILES]
    prediction = facts["prediction"]
    if errors:
        first = errors[0]
        raise Refused("the copy does not load: %s: %s" % (first["file"] or raft_dir, first["message"]))
    if not prediction["starts"] or prediction["renamed_to_corrupt"] or prediction["last_index"] != facts["log"]["last_index"]:
        raise Refused("the copy does not load whole: dqlite would %s (%s)" % (
            prediction["outcome"], prediction["reason"] or "keep index %s of %s" % (
                prediction["last_index"], facts["log"]["last_index"])))
    if expected_last_index is not None and facts["log"]["last_index"] != expected_last_index:
        raise Refused("the copy loads up to index %s, but %d entries were copied" % (
            facts["log"]["last_index"], expected_last_index))
    return facts


def _position(facts):
    log = facts["log"]
    return {"term": log["last_term"], "index": log["last_index"]}


def _partial_name(dest_dir):
    parent, base = os.path.split(os.path.abspath(dest_dir))
    return os.path.join(parent, ".%s.copy.partial-%d" % (base, os.getpid()))


def copy_online(data_dir: str, dest_dir: str, progress: ProgressSink = NO_PROGRESS, lz4: str = "auto",
                max_rounds: int = MAX_ROUNDS, depth: str = "full") -> dict[str, Any]:
    """Copy the member's raft files (running or stopped) into dest_dir/raft, its info.yaml and
    cluster.yaml into dest_dir/node, check the copy loads (facts at `depth`, full by default), write
    dest_dir/MANIFEST.json and only then give the folder its name. dest_dir must not exist.

    Returns {files: [{name, size, sha256}] (names relative to dest_dir), position: {term, index},
    snapshot_index, retries, warnings, member_running, seconds}. Raises Refused naming what failed."""
    data_dir = os.path.abspath(data_dir)
    if not os.path.isdir(data_dir):
        raise Refused("path %s is not a directory" % data_dir)
    if os.path.lexists(dest_dir):
        raise Refused("dest %s already exists; a copy is only made into a new folder" % dest_dir)
    if os.path.abspath(dest_dir).startswith(data_dir + os.sep):
        raise Refused("dest %s is inside the member's directory %s; never written there" % (dest_dir, data_dir))
    parent = os.path.dirname(os.path.abspath(dest_dir))
    os.makedirs(parent, mode=0o700, exist_ok=True)
    tmp = _partial_name(dest_dir)
    began = time.monotonic()
    holder = _holder(data_dir)
    try:
        os.mkdir(tmp, 0o700)
        raft_dir, node_dir = os.path.join(tmp, RAFT), os.path.join(tmp, NODE)
        os.mkdir(raft_dir, 0o700)
        os.mkdir(node_dir, 0o700)
        result = _copy_rounds(data_dir, raft_dir, progress, lz4, max_rounds, depth, holder.get("running") is not False)
        _check_still_running(data_dir, holder)
        result.pop("moved")
        files = [{"name": "%s/%s" % (RAFT, name), **facts} for name, facts in sorted(result.pop("copied").items())]
        for name in result.pop("node"):
            try:
                facts = _copy_immutable(os.path.join(data_dir, name), os.path.join(node_dir, name),
                                        os.stat(os.path.join(data_dir, name)).st_ino, NO_PROGRESS)
            except (_Moved, FileNotFoundError):
                continue  # the app rewrites them atomically: this one is being replaced; reference only
            files.append({"name": "%s/%s" % (NODE, name), **facts})
        result.update(files=files, member_running=holder.get("running"),
                      seconds=round(time.monotonic() - began, 3))
        manifest = {"format": FORMAT, "source_dir": data_dir, "files": files, "position": result["position"],
                    "snapshot_index": result["snapshot_index"], "created": manifest_time(),
                    "verified": {"at": manifest_time(), "how": "facts-" + depth, "result": "ok"}}
        result["verified"] = manifest["verified"]
        arch.write_atomic(os.path.join(tmp, MANIFEST), json.dumps(manifest, indent=1, sort_keys=True).encode())
        _fsync_tree(tmp)
        os.rename(tmp, dest_dir)
        arch.fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # our own unfinished copy, never the member's files
        raise
    return result


def _fsync_tree(root):
    """Make every file and folder of the copy durable before it gets its name. One pass at the
    end instead of an fsync per file as it is written: the kernel writes the files back while
    the next ones are copied, and the copy does not wait for the disk file by file."""
    for folder, _dirs, names in os.walk(root):
        for name in names:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        arch.fsync_dir(folder)


def manifest_time() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _copy_rounds(data_dir, raft_dir, progress, lz4, max_rounds, depth, may_be_written):
    kept: dict = {}
    moved: list = []
    last_error = None
    for attempt in range(max_rounds):
        warnings: list = []
        try:
            plan, copied, opened = _round(data_dir, raft_dir, kept, progress, warnings)
        except _Moved as exc:
            moved.append(str(exc))
            continue
        except FileNotFoundError as exc:
            if not os.path.isdir(data_dir):
                raise Refused("the member's directory %s vanished during the copy" % data_dir) from None
            moved.append("%s vanished" % os.path.basename(exc.filename or "a file"))
            continue
        expected = plan["next_index"] + sum(f["entries"] for f in opened) - 1
        progress.phase("check", sum(f["size"] for f in copied.values()))
        try:
            facts = check_copy(raft_dir, expected if (opened or plan["closed"]) else None, lz4, depth)
        except Refused as exc:
            if not may_be_written:
                raise  # nothing writes there: the member's own files do not load
            # a snapshot copied while raft was still writing it under its name: take it again
            last_error = exc
            moved.append(str(exc))
            kept.clear()
            continue
        progress.advance(sum(f["size"] for f in copied.values()))
        return {"copied": copied, "node": plan["node"], "position": _position(facts),
                "snapshot_index": facts["log"]["snapshot_index"], "retries": attempt,
                "moved": moved, "warnings": warnings + ["round %d: %s" % (n + 1, m) for n, m in enumerate(moved)]}
    if last_error is not None and len(moved) == max_rounds and all(m == str(last_error) for m in moved):
        raise last_error
    raise Refused("no consistent copy of %s after %d rounds: files kept changing under it (%s)"
                  % (data_dir, max_rounds, "; ".join(moved[-3:])))


def _check_still_running(data_dir, holder):
    """A member that was running when the copy began must still run when it ends: one that
    died (killed, crashed) is not the healthy source the backup claims, even if its files copy.
    "Running" is what the facts reader sees in /proc: a process holding a file of the directory
    open. A member restarted and not yet written to holds none; its files do not change either,
    so its copy is consistent, but its death during the copy is not noticed."""
    if not holder.get("running"):
        return
    now = _holder(data_dir)
    if not now.get("running") or now.get("pid") != holder.get("pid"):
        raise Refused("the member at %s stopped during the copy (%s when it began; now: %s): not a backup of a "
                      "running member; copy it again once it runs, or stopped" % (
                          data_dir, holder.get("evidence"), now.get("evidence")))


# ---------------------------------------------------------------------------- an existing copy
def read_copy(dest_dir: str, progress: ProgressSink = NO_PROGRESS) -> dict[str, Any] | None:
    """The manifest of a complete copy at dest_dir whose every file matches it (size, sha256),
    else None."""
    try:
        with open(os.path.join(dest_dir, MANIFEST), encoding="utf-8") as handle:
            manifest = json.load(handle)
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return None
    progress.phase("verify", sum(f["size"] for f in manifest["files"]))
    for entry in manifest["files"]:
        path = os.path.join(dest_dir, entry["name"])
        if not os.path.isfile(path) or os.path.getsize(path) != entry["size"] \
                or arch.sha256_file(path, progress) != entry["sha256"]:
            return None
    return manifest


# ---------------------------------------------------------------------------- started alone
def _fill(argv: list, values: dict) -> list:
    out = []
    for arg in argv:
        for key, value in values.items():
            arg = arg.replace("{%s}" % key, str(value))
        out.append(arg)
    return out


def _own_id(raft_facts: dict, copy_dir: str) -> int:
    """The node ID the copy was taken from (node/info.yaml), else the membership's first voter."""
    servers = ((raft_facts.get("membership") or {}).get("authoritative") or {}).get("servers") or []
    try:
        with open(os.path.join(copy_dir, NODE, "info.yaml"), encoding="utf-8") as handle:
            own = fmt.parse_node_yaml(handle.read())[0]["ID"]
        if any(s["id"] == own for s in servers):
            return own
    except (OSError, fmt.FormatError, IndexError):
        pass
    voters = [s["id"] for s in servers if s["role"] == "voter"]
    if not voters:
        raise Refused("the copy at %s names no voter in its membership" % copy_dir)
    return voters[0]


def verify_started_alone(copy_dir: str, scratch_dir: str, start_argv: list, query_argv: list,
                         reconfigure_argv: list, data_subdir: str = "{address}", isolation: str = "auto",
                         timeout: int = 60, progress: ProgressSink = NO_PROGRESS) -> dict[str, Any]:
    """Start a scratch copy of copy_dir alone on 127.0.0.1 and read its data back; stop it, always.

    The flavor is data: reconfigure_argv (makes the scratch copy a one-node cluster), start_argv
    (the app, in the foreground) and query_argv (prints one answer) are argument lists in which
    {dir} (the app's --dir), {data_dir} (where its raft files are: {dir}/data_subdir), {address}
    (127.0.0.1:PORT, the database address), {api} (127.0.0.1:PORT, a second port) and {yaml}
    (the new membership) are replaced. In a network namespace of its own when this process may
    make one (isolation auto or netns), else on free loopback ports (isolation loopback).
    Returns {rows (the answer as an integer, or None), output, address, isolated, seconds, node_id}."""
    raft = os.path.join(copy_dir, RAFT)
    if not os.path.isdir(raft):
        raise Refused("%s has no %s/ folder: not a copy made by copy_online" % (copy_dir, RAFT))
    os.makedirs(scratch_dir, mode=0o700, exist_ok=True)
    work = tempfile.mkdtemp(prefix="dqlite-verify-", dir=scratch_dir)
    began = time.monotonic()
    daemon = ScratchProcess(os.path.join(work, "daemon.log"))
    try:
        tools = daemon.isolation_tools(isolation)
        address = "127.0.0.1:%d" % (9001 if tools else free_port())
        values = {"dir": os.path.join(work, "app"), "address": address, "yaml": os.path.join(work, "membership.yaml"),
                  "api": "127.0.0.1:%d" % (8001 if tools else free_port())}
        values["data_dir"] = os.path.join(values["dir"], _fill([data_subdir], values)[0]).rstrip("/")
        os.makedirs(values["data_dir"], mode=0o700)
        names = sorted(os.listdir(raft))
        progress.phase("scratch copy", sum(os.path.getsize(os.path.join(raft, n)) for n in names))
        for name in names:  # a copy, not links: raft truncates and renames open segments at start
            shutil.copyfile(os.path.join(raft, name), os.path.join(values["data_dir"], name))
            progress.advance(os.path.getsize(os.path.join(raft, name)))
        before = dqlite_datadir.inspect_datadir(values["data_dir"], "quick")
        node = {"id": _own_id(before, copy_dir), "address": address, "role": "voter"}
        arch.write_atomic(values["yaml"], dqlite_plan.node_yaml([node]).encode())
        # the app's own files, as the recovery writes them (the shell may read cluster.yaml as its store)
        arch.write_atomic(os.path.join(values["data_dir"], "cluster.yaml"), dqlite_plan.node_yaml([node]).encode())
        arch.write_atomic(os.path.join(values["data_dir"], "info.yaml"), dqlite_plan.info_yaml(node).encode())
        progress.phase("reconfigure")
        proc = subprocess.run(_fill(reconfigure_argv, values), capture_output=True, text=True, check=False,
                              timeout=timeout)
        after = dqlite_datadir.inspect_datadir(values["data_dir"], "quick")
        if proc.returncode or after["log"]["last_index"] != before["log"]["last_index"] + 1:
            raise Refused("reconfiguring the scratch copy to one node failed (rc %d, last index %s -> %s): %s"
                          % (proc.returncode, before["log"]["last_index"], after["log"]["last_index"],
                             (proc.stderr or proc.stdout).strip()[-500:]))
        progress.phase("start alone")
        daemon.launch(_fill(start_argv, values), tools)
        output = _wait_answer(daemon, _fill(query_argv, values), timeout)
        answer = output.strip().splitlines()[-1].strip() if output.strip() else ""
        return {"rows": int(answer) if answer.isdigit() else None, "output": output.strip()[-2000:],
                "address": address, "isolated": bool(tools), "node_id": node["id"],
                "seconds": round(time.monotonic() - began, 3)}
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        raise Refused("the copy at %s did not start alone: %s%s" % (
            copy_dir, exc, "; its log ends: %s" % " | ".join(daemon.log_tail(8)) if daemon.proc else "")) from None
    finally:
        daemon.stop()
        shutil.rmtree(work, ignore_errors=True)


def _wait_answer(daemon: ScratchProcess, argv: list, timeout: int) -> str:
    """The query's output once the app answers it, within timeout seconds."""
    deadline, last = time.monotonic() + timeout, "no answer yet"
    while time.monotonic() < deadline:
        code = daemon.exited()
        if code is not None:
            raise RuntimeError("the app exited with code %d before it answered" % code)
        try:
            proc = daemon.run(argv, timeout=max(5, min(15, deadline - time.monotonic())))
            if proc.returncode == 0 and proc.stdout.strip() and not proc.stdout.startswith("Error"):
                return proc.stdout
            last = (proc.stderr or proc.stdout).strip()[-300:] or "exit code %d" % proc.returncode
        except RuntimeError as exc:
            last = str(exc)
        time.sleep(0.5)
    raise RuntimeError("%s gave no answer within %ds (last: %s)" % (" ".join(argv), timeout, last))


def would_copy(data_dir: str) -> dict[str, Any]:
    """Check mode: what copy_online would copy now (one listing; nothing is read or written)."""
    if not os.path.isdir(data_dir):
        raise Refused("path %s is not a directory" % data_dir)
    listing = _listing(data_dir)
    plan = plan_copy(listing)
    names = _immutable(plan["snapshot"], plan["closed"]) + [n for _c, n in plan["open"]] + plan["metadata"]
    return {"files": [{"name": "%s/%s" % (RAFT, n), "size": listing[n][1]} for n in names]
            + [{"name": "%s/%s" % (NODE, n), "size": listing[n][1]} for n in plan["node"]],
            "snapshot_index": plan["snapshot"]["index"] if plan["snapshot"] else 0,
            "bytes": plan["bytes"]}


def remove_stale_partials(dest_dir: str) -> list[str]:
    """Remove the unfinished copies a killed run left beside dest_dir (.NAME.copy.partial-PID).

    Call only while holding the lock of dest_dir's parent (datadir_archive.locked): then no live
    run owns them. They never carried the real name, so nothing ever trusted them."""
    parent, base = os.path.split(os.path.abspath(dest_dir))
    prefix = ".%s.copy.partial-" % base
    removed = []
    for name in sorted(os.listdir(parent)):
        if name.startswith(prefix) and name[len(prefix):].isdigit():
            shutil.rmtree(os.path.join(parent, name))
            removed.append(name)
    return removed


def source_position(data_dir: str) -> dict[str, int] | None:
    """The member's log position now (quick facts; a running member's files may move under the
    read: tried a few times). None when it cannot be read."""
    for _attempt in range(3):
        try:
            facts = dqlite_datadir.inspect_datadir(data_dir, "quick")
            return _position(facts)
        except OSError:
            time.sleep(0.05)
    return None


def record_verification(dest_dir: str, verified: dict[str, Any]) -> dict[str, Any]:
    """Write `verified` into the copy's MANIFEST.json (atomically); returns the manifest."""
    path = os.path.join(dest_dir, MANIFEST)
    with open(path, encoding="utf-8") as handle:
        manifest = json.load(handle)
    manifest["verified"] = verified
    arch.write_atomic(path, json.dumps(manifest, indent=1, sort_keys=True).encode())
    return manifest
