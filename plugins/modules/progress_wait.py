#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: progress_wait
short_description: Wait for an asynchronous job and print its progress on the controller's output
version_added: 0.1.0
description:
  - >-
    Waits for a job started with C(async) and C(poll=0) (M(quorum.recovery.datadir_archive),
    M(quorum.recovery.dqlite_restore)) and, while it runs, prints every new progress record the
    job writes to O(progress_file), one line each, for example
    "h1 [safety archive]: archive 412.0 MiB of 1.2 GiB (34%), 96.3 MiB/s, about 9 s left".
    When the job ends it prints one summary line (bytes and rate of each phase).
  - The lines are printed with Ansible's display, so they show in the output of
    C(ansible-playbook) with any stdout callback, and in AWX / ansible-runner job output.
  - Returns the job's own result (as M(ansible.builtin.async_status) does once the job finished),
    so it can be registered in place of the job's task; fails when the job failed. Once the job
    ended, shows the records from the middle of a phase that it wrote since the last look (a short
    job can end between two looks; its starts and ends are in the summary line), then removes the
    progress file and the job's status file.
  - Looks at the job every O(interval) seconds (the first looks come sooner); each look asks for
    the job's status with M(ansible.builtin.async_status) and reads the progress file with
    M(ansible.builtin.slurp). A few failed looks in a row (a network blip) are retried.
  - This is an action plugin; it runs on the controller.
author:
  - quorum.recovery maintainers (@quorum-recovery)
extends_documentation_fragment:
  - quorum.recovery.attributes
attributes:
  check_mode:
    support: full
    details: Waits for the job as in a normal run; the job itself decides what check mode means.
  diff_mode:
    support: none
  idempotent:
    support: N/A
    details: Reports the job's own C(changed).
options:
  jid:
    description: The job id (C(ansible_job_id)) of the task started with C(async) and C(poll=0).
    type: str
    required: true
  progress_file:
    description:
      - The progress file the job writes (its C(progress_file) option); removed once the job ended.
        Without it only the summary is printed.
      - A name used by one run only, so that an earlier run's records are never shown as this one's.
    type: str
  label:
    description: Shown after the host name in every line, to tell steps apart.
    type: str
    default: ""
  interval:
    description: Seconds between two looks at the job.
    type: float
    default: 2.0
  timeout:
    description:
      - Give up waiting after this many seconds (the job goes on working, and its own C(async)
        limit still applies). V(0) waits as long as the job runs.
    type: int
    default: 0
seealso:
  - module: ansible.builtin.async_status
"""

EXAMPLES = r"""
- name: Archive in the background
  quorum.recovery.datadir_archive:
    path: /var/snap/microk8s/current/var/kubernetes/backend
    dest: /var/backups/quorum-recovery/r1/safety-node1.tar.gz
    progress_file: /var/backups/quorum-recovery/r1/progress-safety.json
  async: 21600
  poll: 0
  register: archive_job

- name: Print its progress until it ends
  quorum.recovery.progress_wait:
    jid: "{{ archive_job.ansible_job_id }}"
    progress_file: /var/backups/quorum-recovery/r1/progress-safety.json
    label: safety archive
  register: archive

- name: Use the job's result
  ansible.builtin.debug:
    msg: "{{ archive.archive_sha256 }}"
"""

RETURN = r"""
ansible_job_id:
  description: The job id.
  returned: always
  type: str
  sample: j771224539519.4021
finished:
  description: Whether the job finished (false only when O(timeout) ran out).
  returned: always
  type: bool
  sample: true
"""
