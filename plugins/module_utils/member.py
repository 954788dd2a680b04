# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What every engine's inspector says about one member, in one shape.

PRIVATE to this collection: may change without notice. Standard library only.

dqlite_info and etcd_info read very different files, but the recovery only needs a few
facts from each member to elect a source and plan: these are the `summary` both fill in with
summary(). The statuses, the problem record and the verdict rule are shared here too, so an
engine's inspector only decodes its files and says what its engine would do with them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

import errno
import os
import socket
from urllib.parse import urlsplit

from ansible_collections.quorum.recovery.plugins.module_utils import proc_holders

HEALTHY, REPAIRABLE, UNUSABLE = "healthy", "repairable", "unusable"
ERROR, WARNING, INFO = "error", "warning", "info"


def problem(engine: str, severity: str, file: str | None, message: str, would: str, data_lost: str, remedy: str,
            **details) -> dict:
    """One finding: the file, what is wrong, what the engine itself would do at start
    (`<engine>_would`), what data that loses, the remedy, and engine-specific details (an index
    range or an offset, a repair action, the start-up stage...)."""
    found = {"severity": severity, "file": file, "message": message, engine + "_would": would,
             "data_lost": data_lost, "remedy": remedy}
    found.update(details)
    return found


def repair_of(found: dict) -> dict | bool | None:
    """The reviewed local step that fixes a problem: dqlite's `action` (quarantine, truncate,
    write) or True for what etcd repairs itself at start (`repairable`); None when only a
    rebuild from another member helps."""
    if found.get("action"):
        return found["action"]
    return True if found.get("repairable") else None


def verdict(problems: list) -> str:
    """healthy: the engine would start and keep every entry; repairable: every error has a
    reviewed local repair that loses no committed data; unusable: rebuild the member from another."""
    errors = [p for p in problems if p["severity"] == ERROR]
    if not errors:
        return HEALTHY
    if all(repair_of(p) for p in errors):
        return REPAIRABLE
    return UNUSABLE


def running(path: str, subdirs: tuple = ("",), locks: tuple = ()) -> dict:
    """Whether a process holds a file of the member's directories open, or one of `locks`:
    engines keep their log files open and lock their database. Read-only: /proc only."""
    names = []
    for sub in subdirs:
        try:
            listing = sorted(os.listdir(os.path.join(path, sub)))
        except OSError:
            continue
        names += [os.path.join(sub, n) if sub else n for n in listing
                  if os.path.isfile(os.path.join(path, sub, n))]
    return proc_holders.holder(proc_holders.file_ids(path, names), locks=locks)


def address_is_local(address: str | None) -> bool | None:
    """Whether this host holds the host part of a member address: "ip:port", "[ip6]:port",
    "name:port" (dqlite) or a URL such as "https://ip:2380" (etcd peer URLs). True, False, or
    None when it cannot tell (no address, a name that does not resolve, an unexpected error).
    The engine binds that address at start, so a member whose host lost it cannot start. Binds
    a socket to port 0 on it and closes it: nothing else on the host is touched. A host with
    net.ipv4.ip_nonlocal_bind=1 binds anything: True."""
    if not address:
        return None
    if "://" in address:
        try:
            host = urlsplit(address).hostname
        except ValueError:
            return None
    elif ":" in address:
        host = address.rpartition(":")[0].strip("[]")
    else:
        return None
    if not host:
        return None
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return None
    unknown = False
    for family, socktype, proto, _name, sockaddr in infos:
        try:
            with socket.socket(family, socktype, proto) as sock:
                sock.bind((sockaddr[0], 0) + tuple(sockaddr[2:]))
            return True
        except OSError as exc:
            if exc.errno != errno.EADDRNOTAVAIL:
                unknown = True
    return None if unknown or not infos else False


def summary(engine: str, facts: dict, *, member_id: int | str | None = None, cluster_key: str | None = None,
            address: str | None = None, address_source: str | None = None, voters: list | None = None,
            current_term: int | None = None, commit: int | None = None, tie_break: Iterable = (),
            terms: list | None = None, after_repair: dict | None = None, hint: dict | None = None) -> dict:
    """The engine-neutral summary of one member (see the modules' RETURN, `summary`).

    facts is the inspector's own result (path, exists, log, problems, verdict, running);
    the keyword arguments are what only the engine knows how to find. `terms` lists
    [term, first index] for each term the log after the snapshot holds, oldest first, so the
    plan can tell where two logs part; `after_repair` is the member's log position once its
    proposed repairs are done (None when it needs none); `hint` is the product's own idea of the
    member's position ({"name", "last_index"}, e.g. LXD's latest closed segment), shown, never
    elected on."""
    log = facts.get("log") or {}
    problems = facts.get("problems") or []
    return {
        "engine": engine,
        "path": facts.get("path"),
        "exists": bool(facts.get("exists")),
        "cluster_key": cluster_key,
        "member_id": member_id,
        "address": address,
        "address_source": address_source,
        "address_local": facts.get("address_local"),
        "new_address_local": facts.get("new_address_local"),
        "last_term": log.get("last_term") or 0,
        "last_index": log.get("last_index") or 0,
        "first_index": log.get("first_index"),
        "snapshot_index": log.get("snapshot_index") or 0,
        "last_entry_sha256": log.get("last_entry_sha256"),
        "current_term": current_term,
        "commit": commit,
        "tie_break": list(tie_break),
        "terms": terms,
        "voters": voters or [],
        "verdict": facts.get("verdict", UNUSABLE),
        "running": (facts.get("running") or {}).get("running"),
        "running_evidence": (facts.get("running") or {}).get("evidence"),
        "after_repair": after_repair,
        "hint": hint,
        "problems": [{"severity": p["severity"], "file": p["file"], "message": p["message"],
                      "range": p.get("index_range"), "engine_would": p.get(engine + "_would"),
                      "data_lost": p.get("data_lost"), "remedy": p.get("remedy"), "repair": repair_of(p)}
                     for p in problems],
    }


def missing(engine: str, path: str) -> dict:
    """The summary of a member whose data directory does not exist."""
    gone = problem(engine, ERROR, path, "data directory does not exist", "start as a new empty member",
                   "everything this member held", "rebuild this member from the winner")
    return summary(engine, {"path": path, "exists": False, "problems": [gone], "verdict": UNUSABLE})
