# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run the recovery_journal module, and with O(controller_echo) also write the journal it
returns to that file on the controller and set it as the fact O(fact) (see the module doc).

One task instead of three (write, keep, echo): the echo is a plain file write here on the
controller, not a module run delegated to localhost, and the fact needs no set_fact."""
from __future__ import annotations

import json
import os
import tempfile

from ansible.plugins.action import ActionBase


def write_echo(path: str, journal: dict) -> None:
    """Atomically: several hosts' tasks write the same journal at once."""
    folder = os.path.dirname(path)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".journal-")
    try:
        with os.fdopen(handle, "w") as out:
            out.write(json.dumps(journal, indent=2, sort_keys=True) + "\n")
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        args = dict(self._task.args)
        echo, fact = args.pop("controller_echo", None), args.pop("fact", None)
        result.update(self._execute_module(module_name="quorum.recovery.recovery_journal", module_args=args,
                                           task_vars=task_vars))
        if result.get("failed") or result.get("skipped"):
            return result
        if echo and result.get("journal") is not None and not self._task.check_mode:
            write_echo(echo, result["journal"])
        if fact:
            result["ansible_facts"] = {fact: result.get("journal")}
        return result
