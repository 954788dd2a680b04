# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Wait for an asynchronous job and print its progress records as they come (see the module doc)."""
from __future__ import annotations

import base64
import shlex
import time

from ansible.errors import AnsibleConnectionFailure
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

from ansible_collections.quorum.recovery.plugins.module_utils import progress as prog

display = Display()

# The first looks come sooner, so a short job does not wait a whole poll period.
_FIRST_SLEEPS = (0.25, 0.5, 1.0)
_POLL_FAILURES = 5


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        _validation, args = self.validate_argument_spec(argument_spec=dict(
            jid=dict(type="str", required=True),
            progress_file=dict(type="str"),
            label=dict(type="str", default=""),
            interval=dict(type="float", default=2.0),
            timeout=dict(type="int", default=0),
        ))
        host = task_vars.get("inventory_hostname", "?") if task_vars else "?"
        try:
            job = self._wait(args, host, task_vars)
        finally:
            self._remove_tmp_path(self._connection._shell.tmpdir)
        result.update(job)
        return result

    def _wait(self, args, host, task_vars):
        async_dir = self._remote_expand_user(self.get_shell_option("async_dir", default="~/.ansible_async"))
        deadline = time.monotonic() + args["timeout"] if args["timeout"] > 0 else None
        shown, failures, looks = None, 0, 0
        while True:
            time.sleep(_FIRST_SLEEPS[looks] if looks < len(_FIRST_SLEEPS) else max(0.1, args["interval"]))
            looks += 1
            try:
                status = self._async_status(args["jid"], "status", async_dir, task_vars)
                ended = bool(status.get("finished") or status.get("failed"))
                if args["progress_file"]:
                    # once the job ended (maybe between two looks), its start, end and waits are
                    # in the summary: show only what happened midway
                    shown = self._show_new_records(args["progress_file"], shown, host, args["label"], task_vars,
                                                   ended)
                failures = 0
            except AnsibleConnectionFailure as exc:
                # a blip on a long job must not end the play while the job goes on working
                failures += 1
                if failures >= _POLL_FAILURES:
                    raise
                display.vvv("%s: progress_wait: look %d failed (%s), trying again" % (host, looks, exc))
                self._connection.reset()
                continue
            if ended:
                break
            if deadline is not None and time.monotonic() > deadline:
                return dict(failed=True, ansible_job_id=args["jid"],
                            msg="job %s still runs after %d s; it goes on working on %s (a re-run waits for it)"
                            % (args["jid"], args["timeout"], host))
        if args["progress_file"] and not self._task.check_mode:
            self._low_level_execute_command("rm -f -- %s" % shlex.quote(args["progress_file"]))
        if status.get("finished"):
            self._async_status(args["jid"], "cleanup", async_dir, task_vars)
        if not status.get("failed") and status.get("progress"):
            label = "%s [%s]" % (host, args["label"]) if args["label"] else host
            display.display(prog.format_summary(label, status["progress"]))
        for internal in ("started", "results_file", "stdout_lines", "stderr_lines"):
            status.pop(internal, None)
        return status

    def _async_status(self, jid, mode, async_dir, task_vars):
        return self._execute_module(module_name="ansible.legacy.async_status", task_vars=task_vars,
                                    module_args=dict(jid=jid, mode=mode, _async_dir=async_dir))

    def _show_new_records(self, path, shown, host, label, task_vars, ended=False):
        """Print the records not shown yet; `shown` is ((pid, seq), record) of the last one seen.

        Once the job `ended`, only the records from the middle of a phase."""
        read = self._execute_module(module_name="ansible.legacy.slurp", module_args=dict(src=path),
                                    task_vars=task_vars)
        if read.get("failed") or "content" not in read:
            return shown  # not written yet
        text = base64.b64decode(read["content"]).decode("utf-8", "replace")
        for record in prog.newer(prog.parse_records(text), shown[0] if shown else None):
            if prog.worth_showing(record, shown[1] if shown else None) and not (ended and not prog.midway(record)):
                display.display(prog.format_line(host, record, label))
            shown = ((record.get("pid"), record.get("seq", 0)), record)
        return shown
