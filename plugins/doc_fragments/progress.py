# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The progress options of the modules whose long runs report progress (module_utils/progress:
PROGRESS_OPTIONS, Progress.for_module)."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  progress_file:
    description:
      - Where to write progress records (phase, bytes done of total, rate) while the module runs,
        at most one per O(progress_interval). The newest records stay in the file when the module
        ends; M(quorum.recovery.progress_wait) shows them and removes the file.
      - Use a new name for every run, so that no reader takes an earlier run's records for this one's.
      - For a task run with C(async) and C(poll=0), read by M(quorum.recovery.progress_wait).
      - Nothing is written in check mode.
    type: path
  progress_interval:
    description: Seconds between two progress records.
    type: float
    default: 1.0
"""
