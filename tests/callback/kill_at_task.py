# Used ONLY by tests/integration/test_recover_resume.py (enabled there through
# ANSIBLE_CALLBACK_PLUGINS and ANSIBLE_CALLBACKS_ENABLED): SIGKILLs ansible-playbook itself right
# after a target task, named by QR_KILL_TASK (task name) and QR_KILL_OCCURRENCE (its n-th start
# in the run): when the next task starts (the linear strategy starts a task only once the
# previous one finished on every host), or when the play ends. QR_TASK_LOG: append
# "<number>\t<task name>" for every task started, and "KILL\t..." before the kill.
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = """
name: kill_at_task
type: aggregate
short_description: SIGKILL ansible-playbook right after a given task (tests only)
description:
  - Counts task starts by name; SIGKILLs its own process once the target task has finished.
requirements:
  - enabled with ANSIBLE_CALLBACKS_ENABLED=kill_at_task
"""

import os
import signal

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "kill_at_task"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super(CallbackModule, self).__init__()
        self._count = 0
        self._seen = {}
        self._last = None
        self._target = (os.environ.get("QR_KILL_TASK", ""), int(os.environ.get("QR_KILL_OCCURRENCE", "0") or 0))
        self._log = os.environ.get("QR_TASK_LOG", "")

    def _write(self, line):
        if self._log:
            with open(self._log, "a") as f:
                f.write(line + "\n")

    def _maybe_kill(self, before):
        if self._target[0] and self._last == self._target:
            self._write("KILL\t%d\tafter %s #%d, before %s" % (self._count, self._last[0], self._last[1], before))
            os.kill(os.getpid(), signal.SIGKILL)

    def _started(self, name):
        self._maybe_kill(name)
        self._count += 1
        self._seen[name] = self._seen.get(name, 0) + 1
        self._last = (name, self._seen[name])
        self._write("%d\t%s" % (self._count, name))

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._started(task.get_name())

    def v2_playbook_on_handler_task_start(self, task):
        self._started(task.get_name())

    def v2_playbook_on_stats(self, stats):
        self._maybe_kill("the end of the play")
