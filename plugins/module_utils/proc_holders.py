# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Whether a process on this host holds a member's files: open file descriptors and flocks.

Files are compared by device and inode, not by name: a process in another mount namespace (a
container, or another lab host on the same machine) sees its own data directory under the same
name. Read-only: /proc only. Standard library only: this runs on the targets.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any, Collection, Iterable, Mapping

    FileIds = Mapping[tuple[int, int], str]


def file_ids(root: str, names: Iterable[str]) -> dict[tuple[int, int], str]:
    """{(st_dev, st_ino): name} for the names (relative to root) that exist."""
    ids = {}
    for name in names:
        try:
            st = os.stat(os.path.join(root, name))
        except OSError:
            continue
        ids[(st.st_dev, st.st_ino)] = name
    return ids


def open_fds(pid: int | str) -> list[tuple[str, str]]:
    """[(fd, "/proc/PID/fd/FD")] of process pid: empty when it is gone or not ours to see."""
    fd_dir = "/proc/%s/fd" % pid
    try:
        return [(fd, os.path.join(fd_dir, fd)) for fd in os.listdir(fd_dir)]
    except OSError:
        return []


def holder(files: FileIds, locks: Collection[str] = ()) -> dict[str, Any]:
    """Who holds `files` ({(dev, ino): name}): a flock on one of `locks` (names), or an open fd.

    Returns {"running": bool or None, "evidence": str[, "pid": int]}."""
    lock_inodes = {str(ino): name for (_dev, ino), name in files.items() if name in locks}
    if lock_inodes:
        try:
            with open("/proc/locks") as handle:
                for line in handle:
                    fields = line.split()
                    if len(fields) > 5 and fields[4] != "-1" and fields[5].rsplit(":", 1)[-1] in lock_inodes:
                        return {"running": True, "evidence": "pid %s locks %s"
                                % (fields[4], lock_inodes[fields[5].rsplit(":", 1)[-1]]),
                                "pid": int(fields[4]) if fields[4].isdigit() else None}
        except OSError:
            pass
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return {"running": None, "evidence": "no /proc"}
    for pid in pids:
        for _fd, fd_path in open_fds(pid):
            try:
                st = os.stat(fd_path)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in files:
                return {"running": True, "evidence": "pid %s has %s open" % (pid, files[(st.st_dev, st.st_ino)]),
                        "pid": int(pid)}
    return {"running": False, "evidence": "no process has a file of the directory open"}
