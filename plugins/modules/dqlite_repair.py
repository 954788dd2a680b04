#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: dqlite_repair
short_description: Carry out the repairs the inspection of a stopped dqlite member proposes, keeping every original
version_added: 0.1.0
description:
  - Inspects the member's dqlite data directory first, as M(quorum.recovery.dqlite_info) does, then
    carries out the repair actions given in O(repairs), in the shape that inspection proposes them
    in RV(quorum.recovery.dqlite_info#module:member.problems[].action).
  - >-
    V({quarantine: [files]}) moves the files into O(quarantine_dir); V({truncate: {file, length}})
    copies the open segment there, checks the copy, then cuts the segment.
  - Never deletes data. O(quarantine_dir) holds every original and a C(manifest.json) (file, size,
    sha256, action, the problems it answers).
  - Refuses, naming the input, any action the inspection does not propose, a file that is not
    there, and any change while dqlite runs on O(path); nothing is changed then.
  - A repair already done (the original in O(quarantine_dir), its manifest entry saying so) is not
    done again, so a resumed recovery can run the same repairs again; one killed half way is
    finished.
  - Waits while another run of this module or a M(quorum.recovery.dqlite_restore) works on O(path).
author:
  - quorum.recovery maintainers (@quorum-recovery)
extends_documentation_fragment:
  - quorum.recovery.attributes
attributes:
  check_mode:
    support: full
    details: Reports what would be moved or cut and where the originals would go; changes nothing.
  diff_mode:
    support: full
    details: The directory listing (file name and size) before and after, read back from disk; in
      check mode the after is predicted.
  idempotent:
    support: full
options:
  path:
    description:
      - The member's raft data directory, the one holding C(metadata1), segments and snapshots
        (for the go-dqlite app layout, C(<dir>/<db address>)).
    type: path
    required: true
  repairs:
    description:
      - >-
        The repair actions, each exactly as the inspection proposes it in
        RV(quorum.recovery.dqlite_info#module:member.problems[].action) (or the recovery plan in
        C(repairs[host])). V({write: ...}) actions are not repairs of this module (the recovery
        writes those files from its plan) and are refused.
      - >-
        V({quarantine: [file names]}) moves those files of O(path) into O(quarantine_dir).
      - >-
        V({truncate: {file: name, length: bytes}}) cuts an open segment at the end of its last
        complete batch, after keeping the original in O(quarantine_dir).
    type: list
    elements: dict
    required: true
  quarantine_dir:
    description:
      - Where the originals go, with C(manifest.json). One folder per recovery, beside O(path) on the
        same filesystem so that a move is a rename (the role passes C(<path>.quarantine/<recovery id>)).
    type: path
    required: true
seealso:
  - module: quorum.recovery.dqlite_info
"""

EXAMPLES = r"""
- name: Inspect the member's dqlite data directory (read-only)
  quorum.recovery.dqlite_info:
    path: /var/snap/microk8s/current/var/kubernetes/backend
  register: dqlite

- name: Carry out every repair the inspection proposes, keeping the originals
  quorum.recovery.dqlite_repair:
    path: /var/snap/microk8s/current/var/kubernetes/backend
    repairs: "{{ dqlite.member.problems | map(attribute='action') | select
      | rejectattr('write', 'defined') | list }}"
    quarantine_dir: /var/snap/microk8s/current/var/kubernetes/backend.quarantine/manual-1
  register: repaired

- name: Cut a torn open segment at the end of its last complete batch
  quorum.recovery.dqlite_repair:
    path: /var/snap/microk8s/current/var/kubernetes/backend
    repairs:
      - truncate: {file: open-2, length: 1482752}
    quarantine_dir: /var/snap/microk8s/current/var/kubernetes/backend.quarantine/manual-1
"""

RETURN = r"""
moved:
  description:
    - File name -> where its original went (would go, in check mode), for each file this run moved or
      cut; a cut file's original is a copy, the cut file stays in O(path).
    - Empty when every repair was already done.
  returned: success
  type: dict
  sample: {"snapshot-2-2048-1234": "/var/lib/x.quarantine/r1/snapshot-2-2048-1234"}
cut:
  description: File name -> the length in bytes it was (would be) cut to by this run.
  returned: success
  type: dict
  sample: {"open-2": 1482752}
manifest:
  description: The C(manifest.json) entries of the files this run moved or cut (would, in check mode).
  returned: success
  type: list
  elements: dict
  sample: [{"file": "open-2", "from": "/var/lib/x/open-2", "to": "/var/lib/x.quarantine/r1/open-2", "size": 1484800,
            "sha256": "...", "action": "cut", "cut_to": 1482752, "cut_sha256": "...", "time": "20260101T000000Z",
            "reasons": ["open segment is cut inside batch 12 at byte 1482752 (...)"], "done": true}]
quarantine_dir:
  description: The folder holding the originals and C(manifest.json).
  returned: success
  type: str
  sample: /var/lib/x.quarantine/r1
member:
  description:
    - The inspection after the repair (before it, in check mode), with the keys
      M(quorum.recovery.dqlite_info) returns in its RV(quorum.recovery.dqlite_info#module:member).
  returned: always
  type: dict
  sample: {"verdict": "healthy", "log": {"last_index": 1505, "last_term": 1}, "problems": []}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.quorum.recovery.plugins.module_utils import dqlite_datadir
from ansible_collections.quorum.recovery.plugins.module_utils import dqlite_repair
from ansible_collections.quorum.recovery.plugins.module_utils.refused import Refused


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            repairs=dict(type="list", elements="dict", required=True),
            quarantine_dir=dict(type="path", required=True),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        result = dqlite_repair.repair(p["path"], p["repairs"], p["quarantine_dir"], dqlite_datadir.inspect_datadir,
                                      check_mode=module.check_mode)
    except Refused as exc:
        module.fail_json(msg=str(exc), member=exc.details.get("member"))
    except OSError as exc:
        module.fail_json(msg="repairing %s: %s" % (p["path"], exc))
    diff = result.pop("diff")
    if module._diff:
        result["diff"] = diff
    module.exit_json(**result)


if __name__ == "__main__":
    main()
