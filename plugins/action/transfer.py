# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fetch a file from a host, or push one to it, with ansible.builtin.fetch / ansible.builtin.copy,
printing its progress while it moves and its size and rate afterwards (see the module doc)."""
from __future__ import annotations

import os
import shlex
import threading
import time

from ansible.errors import AnsibleActionFail, AnsibleError
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

from ansible_collections.quorum.recovery.plugins.module_utils import proc_holders
from ansible_collections.quorum.recovery.plugins.module_utils import progress as prog

display = Display()


def _children_of(pid):
    """PIDs of every process descended from `pid` (from /proc; empty where there is none)."""
    parents = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as handle:
                stat = handle.read()
        except OSError:
            continue
        # the command name (2nd field) is in parentheses and may hold spaces
        fields = stat[stat.rfind(")") + 2:].split()
        parents.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def file_position(path, pid=None):
    """How far a process started by this one (sftp, scp) has read or written `path`: the offset
    of its open file, from /proc/PID/fdinfo. None when no such process has it open."""
    real = os.path.realpath(path)
    for child in _children_of(pid or os.getpid()):
        for fd, fd_path in proc_holders.open_fds(child):
            try:
                if os.readlink(fd_path) != real:
                    continue
                with open("/proc/%d/fdinfo/%s" % (child, fd)) as handle:
                    for line in handle:
                        if line.startswith("pos:"):
                            return int(line.split()[1])
            except (OSError, ValueError):
                continue
    return None


class _Watcher(threading.Thread):
    """Prints the position of the local file in the transfer every `interval` seconds."""

    def __init__(self, who, phase, local_path, total, interval):
        super().__init__(daemon=True)
        self.who, self.phase, self.local_path, self.total, self.interval = who, phase, local_path, total, interval
        self.stop = threading.Event()
        self.started_at = time.monotonic()
        self.lines = 0

    def run(self):
        last = None
        while not self.stop.wait(self.interval):
            done = file_position(self.local_path)
            if done is None or done == last:
                continue
            last = done
            elapsed = time.monotonic() - self.started_at
            display.display(prog.format_line(self.who, {"phase": self.phase, "done": done, "total": self.total,
                                                        "rate": done / elapsed if elapsed > 0 else 0.0}))
            self.lines += 1


class ActionModule(ActionBase):
    TRANSFERS_FILES = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        _validation, args = self.validate_argument_spec(argument_spec=dict(
            src=dict(type="str", required=True),
            dest=dict(type="str", required=True),
            direction=dict(type="str", required=True, choices=["fetch", "push"]),
            mode=dict(type="str", default="0600"),
            label=dict(type="str", default=""),
            interval=dict(type="float", default=5.0),
            checksum=dict(type="bool", default=True),
        ))
        host = task_vars.get("inventory_hostname", "?") if task_vars else "?"
        who = "%s [%s]" % (host, args["label"]) if args["label"] else host
        if args["direction"] == "push":
            src = args["src"] if os.path.isabs(args["src"]) else self._find_needle("files", args["src"])
            action_name, phase, local = "ansible.legacy.copy", "send", src
            inner = dict(src=src, dest=args["dest"], mode=args["mode"])
            try:
                total = os.path.getsize(local)
            except OSError as exc:
                raise AnsibleActionFail("src %s: %s" % (args["src"], exc))
        else:
            action_name, phase, local = "ansible.legacy.fetch", "fetch", args["dest"]
            inner = dict(src=args["src"], dest=args["dest"], flat=True, validate_checksum=True)
            total = None
            if args["interval"] > 0 and not self._task.check_mode:
                stat = self._execute_remote_stat(args["src"], all_vars=task_vars, follow=True, checksum=False)
                total = stat.get("size") if stat.get("exists") else None
        if not args["checksum"] and not self._task.check_mode and not self._play_context.become:
            return self._direct(result, args, who, phase, local, total)
        task = self._task.copy()
        task.args.clear()
        task.args.update(inner)
        action = self._shared_loader_obj.action_loader.get(
            action_name, task=task, connection=self._connection, play_context=self._play_context,
            loader=self._loader, templar=self._templar, shared_loader_obj=self._shared_loader_obj)
        watcher = (_Watcher(who, phase, local, total, args["interval"])
                   if args["interval"] > 0 and not self._task.check_mode else None)
        began = time.monotonic()
        if watcher:
            watcher.start()
        try:
            result.update(action.run(task_vars=task_vars))
        finally:
            if watcher:
                watcher.stop.set()
                watcher.join()
        seconds = time.monotonic() - began
        if result.get("failed") or self._task.check_mode:
            return result
        if result.get("changed"):
            self._moved(result, who, phase, result.get("dest", local) if phase == "fetch" else local, seconds)
        else:
            display.display("%s: %s already holds the same file (same checksum); nothing moved"
                            % (who, "the controller" if phase == "fetch" else host))
            result["transfer"] = dict(bytes=0, seconds=round(seconds, 3), rate=0.0)
        return result

    @staticmethod
    def _moved(result, who, phase, path, seconds):
        size = os.path.getsize(path)
        rate = size / seconds if seconds > 0 else 0.0
        verb = "sent" if phase == "send" else "fetched"
        display.display("%s: %s %s in %.1f s (%s/s)" % (who, verb, prog.human_bytes(size), seconds, prog.human_bytes(rate)))
        result["transfer"] = dict(bytes=size, seconds=round(seconds, 3), rate=round(rate, 1))

    def _direct(self, result, args, who, phase, local, total):
        """checksum=false: the file moves over the connection as it is, without fetch's or copy's
        sha1 passes (one over the file at each end) and without their idempotence check; for a file
        that the next step checks against a digest of its own (backup_store: size and sha256 from the
        backup's manifest). Always moves, always changed; the mode is set after it arrived."""
        watcher = _Watcher(who, phase, local, total, args["interval"]) if args["interval"] > 0 else None
        began = time.monotonic()
        if watcher:
            watcher.start()
        try:
            if phase == "fetch":
                os.makedirs(os.path.dirname(os.path.abspath(args["dest"])), mode=0o700, exist_ok=True)
                self._connection.fetch_file(args["src"], args["dest"])
                os.chmod(args["dest"], int(args["mode"], 8))
            else:
                self._connection.put_file(local, args["dest"])
                said = self._low_level_execute_command("chmod %s %s" % (shlex.quote(args["mode"]), shlex.quote(args["dest"])))
                if said.get("rc"):
                    raise AnsibleError("chmod %s %s: %s" % (args["mode"], args["dest"], said.get("stderr", "").strip()))
        except (AnsibleError, OSError, ValueError) as exc:
            result.update(failed=True, msg="%s %s to %s: %s" % (phase, args["src"], args["dest"], exc))
            return result
        finally:
            if watcher:
                watcher.stop.set()
                watcher.join()
        result.update(changed=True, dest=args["dest"])
        self._moved(result, who, phase, args["dest"] if phase == "fetch" else local, time.monotonic() - began)
        return result
