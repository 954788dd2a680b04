#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: transfer
short_description: Fetch a file from a host or push one to it, showing the progress and the rate
version_added: 0.1.0
description:
  - With O(direction=fetch), runs M(ansible.builtin.fetch) (C(flat), C(validate_checksum)) from the
    host's O(src) to the controller's O(dest); with O(direction=push), runs M(ansible.builtin.copy)
    from the controller's O(src) to the host's O(dest). Their results, check mode and idempotence
    are unchanged; a file already there with the same checksum is not moved.
  - >-
    While the file moves, prints every O(interval) seconds how far it got, for example
    "h2 [send the winner's archive]: send 412.0 MiB of 1.2 GiB (34%), 86.5 MiB/s, about 9 s left".
    This reads the offset of the file that the transfer process (sftp or scp, started by the
    connection) holds open, from C(/proc) on the controller; where there is no C(/proc) (not Linux) or no such
    process (the C(piped) transfer method, connections other than ssh) no lines come while it
    moves.
  - >-
    Afterwards prints the size and the rate achieved, for example
    "h2 [send the winner's archive]: sent 1.2 GiB in 14.2 s (86.5 MiB/s)", or that nothing moved.
  - The lines are printed with Ansible's display, so they show in the output of
    C(ansible-playbook) with any stdout callback, and in AWX / ansible-runner job output.
  - This is an action plugin; it runs on the controller.
author:
  - quorum.recovery maintainers (@quorum-recovery)
extends_documentation_fragment:
  - quorum.recovery.attributes
attributes:
  check_mode:
    support: partial
    details: V(push) predicts as M(ansible.builtin.copy) does; V(fetch) is skipped in check mode, as M(ansible.builtin.fetch) is.
  diff_mode:
    support: none
  idempotent:
    support: full
options:
  src:
    description: The file to move (on the host for V(fetch), on the controller for V(push)).
    type: str
    required: true
  dest:
    description: Where it goes (a file path on the controller for V(fetch), on the host for V(push)).
    type: str
    required: true
  direction:
    description: V(fetch) brings O(src) from the host to the controller; V(push) sends it to the host.
    type: str
    required: true
    choices: [fetch, push]
  mode:
    description: The mode of O(dest) on the host, for V(push) (and on the controller for V(fetch) with O(checksum=false)).
    type: str
    default: "0600"
  label:
    description: Shown after the host name in every line, to tell transfers apart.
    type: str
    default: ""
  interval:
    description: Seconds between two progress lines while the file moves; V(0) prints only the line at the end.
    type: float
    default: 5.0
  checksum:
    description:
      - V(true) moves the file with M(ansible.builtin.fetch) or M(ansible.builtin.copy), which read it once more at
        each end for their sha1 and leave a file with the same checksum alone.
      - V(false) moves it over the connection as it is and sets O(mode) on O(dest) (for V(fetch) too), with no
        checksum and no idempotence; only for a file the next step checks against a digest of its own (a backup's
        payload, which M(quorum.recovery.backup_store) checks against the size and sha256 in its manifest). Ignored
        (as V(true)) in check mode and with become.
    type: bool
    default: true
seealso:
  - module: ansible.builtin.fetch
  - module: ansible.builtin.copy
"""

EXAMPLES = r"""
- name: Bring the winner's archive to the controller
  quorum.recovery.transfer:
    direction: fetch
    src: /var/backups/quorum-recovery/r1/source-node1.tar.gz
    dest: /home/ops/.quorum-recovery/r1/source-node1.tar.gz
    label: fetch the winner's archive

- name: Send it to every other member
  quorum.recovery.transfer:
    direction: push
    src: /home/ops/.quorum-recovery/r1/source-node1.tar.gz
    dest: /var/backups/quorum-recovery/r1/source.tar.gz
    mode: "0600"
    label: send the winner's archive
"""

RETURN = r"""
transfer:
  description: What moved - V(bytes), V(seconds) and V(rate) (bytes a second); V(bytes) is 0 when nothing moved.
  returned: success, not in check mode
  type: dict
  sample: {"bytes": 1288490188, "seconds": 14.2, "rate": 90738745.6}
dest:
  description: The destination, as M(ansible.builtin.fetch) or M(ansible.builtin.copy) return it.
  returned: success
  type: str
checksum:
  description: The sha1 checksum of the file, as M(ansible.builtin.fetch) or M(ansible.builtin.copy) return it.
  returned: success, with O(checksum=true)
  type: str
"""
