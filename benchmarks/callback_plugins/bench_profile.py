# Benchmark-only callback (not shipped with the collection): wall time of every task of a
# playbook run, written as JSON to $BENCH_PROFILE_OUT when the run ends. What
# ansible.posix.profile_tasks prints, plus per-task host counts (ran / skipped), so that the
# number of module executions (remote round trips) can be told apart from tasks that only skip.
# ansible-core 2.19 has no builtin profile_tasks or timer callback (they live in ansible.posix,
# which this repository's venv does not install); recover_vs_manual.py enables this one with
# ANSIBLE_CALLBACK_PLUGINS=benchmarks/callback_plugins ANSIBLE_CALLBACKS_ENABLED=bench_profile.
from __future__ import annotations

import json
import os
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = r"""
name: bench_profile
type: aggregate
short_description: per-task wall times as JSON (benchmarks only)
description:
  - Writes every task's wall time and its per-host results to the file named by BENCH_PROFILE_OUT.
requirements:
  - enable in the callbacks_enabled setting
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "bench_profile"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self.t0 = time.monotonic()
        self.tasks = []
        self.current = None

    def _close(self):
        if self.current is not None:
            self.current["seconds"] = round(time.monotonic() - self.current.pop("_start"), 3)
            self.tasks.append(self.current)
            self.current = None

    def _start(self, task, handler=False):
        self._close()
        self.current = {"name": task.get_name(), "action": task.action, "handler": handler,
                        "path": task.get_path() or "", "async": bool(getattr(task, "async_val", 0)),
                        "at": round(time.monotonic() - self.t0, 3), "_start": time.monotonic(),
                        "ok": 0, "changed": 0, "skipped": 0, "failed": 0, "unreachable": 0}

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._start(task)

    def v2_playbook_on_handler_task_start(self, task):
        self._start(task, handler=True)

    def _count(self, key, result=None):
        if self.current is not None:
            self.current[key] += 1
            if key == "ok" and result is not None and result._result.get("changed"):
                self.current["changed"] += 1
            if result is not None and result._result.get("attempts"):
                self.current["attempts"] = max(self.current.get("attempts", 0), result._result["attempts"])

    def v2_runner_on_ok(self, result):
        self._count("ok", result)

    def v2_runner_on_skipped(self, result):
        self._count("skipped")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._count("failed", result)

    def v2_runner_on_unreachable(self, result):
        self._count("unreachable")

    def v2_playbook_on_stats(self, stats):
        self._close()
        out = os.environ.get("BENCH_PROFILE_OUT")
        if out:
            with open(out, "w") as handle:
                json.dump({"total_seconds": round(time.monotonic() - self.t0, 3), "tasks": self.tasks}, handle, indent=1)
