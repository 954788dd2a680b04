#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: backup_status
short_description: Report on the backups read at every destination, optionally as node_exporter metrics
version_added: 0.2.0
description:
  - Takes the catalogs that M(quorum.recovery.backup_catalog) read at every destination and returns a
    table per cluster and engine (counter, position, age, size, verified, where), and the clusters whose
    newest verified backup (at any destination) is older than O(max_age), or missing, each with a message.
  - With O(metrics_file), writes the same as Prometheus metrics in node_exporter's textfile-collector format
    (labels cluster, engine, destination), atomically (a temporary name that does not end in C(.prom),
    fsync, rename), mode 0644. The file is rewritten only when its text changes.
  - Runs where the metrics file belongs, usually the controller or a host with node_exporter.
author:
  - quorum.recovery maintainers (@quorum-recovery)
extends_documentation_fragment:
  - quorum.recovery.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  idempotent:
    support: full
options:
  catalogs:
    description: The catalogs, as M(quorum.recovery.backup_catalog) returns them (its C(catalogs)), from every destination.
    type: list
    elements: dict
    required: true
  max_age:
    description: Age (seconds, or a number with s, m, h, d or w) beyond which the newest verified backup is stale.
    type: raw
    required: true
  metrics_file:
    description: Where to write the metrics (a C(.prom) file in node_exporter's textfile-collector folder); none when omitted.
    type: path
  unread:
    description: Destinations that could not be read (unreachable backup hosts); each is warned about.
    type: list
    elements: str
    default: []
  now:
    description: The time (Unix seconds) ages are measured from; for tests. Default the clock.
    type: float
"""

EXAMPLES = r"""
- name: Read the catalogs at a destination
  quorum.recovery.backup_catalog:
    dest_dir: /srv/backups/quorum-recovery
  register: read

- name: Report, and write metrics for node_exporter
  quorum.recovery.backup_status:
    catalogs: "{{ read.catalogs }}"
    max_age: 26h
    metrics_file: /var/lib/prometheus/node-exporter/quorum_recovery_backup.prom
  register: status
"""

RETURN = r"""
table:
  description: The table, one block per cluster and engine.
  returned: always
  type: str
  sample: |-
    k8s etcd: 2 backups at 1 destination; newest verified: k8s-etcd-0000000042-20261202T030000Z (30m00s old, at backup1:/srv/b)
      counter  position         age     size      verified  where              name
      42       5/10233 rev 9120 30m00s  20.0 MiB  yes       backup1:/srv/b     k8s-etcd-0000000042-20261202T030000Z
stale:
  description: The clusters whose newest verified backup is older than O(max_age) or missing (cluster, engine, newest, age_seconds, message).
  returned: always
  type: list
  elements: dict
metrics:
  description: The metrics text (written to O(metrics_file) when given).
  returned: always
  type: str
metrics_written:
  description: Whether O(metrics_file) was (in check mode, would be) rewritten.
  returned: always
  type: bool
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.quorum.recovery.plugins.module_utils import backup_retention as br
from ansible_collections.quorum.recovery.plugins.module_utils import backup_status as bs
from ansible_collections.quorum.recovery.plugins.module_utils import datadir_archive as arch

_NEEDED = ("cluster", "engine", "where", "backups")


def main():
    module = AnsibleModule(
        argument_spec=dict(
            catalogs=dict(type="list", elements="dict", required=True),
            max_age=dict(type="raw", required=True),
            metrics_file=dict(type="path"),
            unread=dict(type="list", elements="str", default=[]),
            now=dict(type="float"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        max_age = br.parse_duration(p["max_age"], "max_age")
    except br.PolicyError as exc:
        module.fail_json(msg=str(exc))
    for number, catalog in enumerate(p["catalogs"]):
        missing = [k for k in _NEEDED if k not in catalog]
        if missing:
            module.fail_json(msg="catalogs[%d] lacks %s: give the catalogs backup_catalog returns" % (number, ", ".join(missing)))
    result = bs.report(p["catalogs"], max_age, p["now"])
    written = False
    path = p["metrics_file"]
    if path:
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            module.fail_json(msg="metrics_file=%s: the folder %s does not exist; nothing was written" % (path, folder), **result)
        try:
            with open(path) as handle:
                written = handle.read() != result["metrics"]
        except FileNotFoundError:
            written = True
        if written and not module.check_mode:
            try:
                # write_atomic's temporary is PATH.tmp-PID: the collector reads only *.prom, never half a file
                arch.write_atomic(path, result["metrics"].encode(), mode=0o644)
            except OSError as exc:
                module.fail_json(msg="metrics_file=%s: %s" % (path, exc.strerror), **result)
    for item in result["stale"]:
        module.warn(item["message"])
    for where in p["unread"]:
        module.warn("%s could not be read: its backups are not in this report" % where)
    module.exit_json(changed=written, metrics_written=written, **result)


if __name__ == "__main__":
    main()
