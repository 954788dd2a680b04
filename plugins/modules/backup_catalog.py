#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: backup_catalog
short_description: List, verify or prune the backups kept at a destination
version_added: 0.2.0
description:
  - Reads the backups of a cluster and engine kept in O(dest_dir)C(/<cluster>/<engine>/), laid out as
    C(docs/backup-format.md) says. A backup exists only when its manifest does; a payload without a
    manifest is reported as an interrupted write, never as a backup. Manifests that do not validate are
    reported with the file and key at fault, and never listed, chosen or removed.
  - With O(state=verified), checks the size and sha256 of each payload (or of the O(newest) ones) against
    its manifest; a backup whose payload does not match is reported as not verified.
  - With O(state=pruned), applies the retention O(policy). Orphans and the newest verified backup are
    never removed; before anything is removed, the payload of the newest verified backup is checked
    (and, if it does not match, the next one, until one does), so that prune never keeps a damaged
    backup as the good one. Each backup kept or removed is returned with the reason. In check mode
    it shows what would go and removes nothing.
  - O(remove_stale) removes the temporaries of dead writers (C(.NAME.*.partial-PID), C(*.tmp-PID)) and
    the payloads of interrupted writes, and finishes an interrupted orphaning.
  - What the operator should know (invalid manifests, interrupted writes, a clock in the future, failed checks)
    comes as Ansible warnings.
  - Everything that changes the folder holds its lock (the one the backup writer holds while it writes),
    so nothing is removed under a writer; listing and verifying take no lock.
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
  dest_dir:
    description: The destination folder that holds a folder per cluster.
    type: path
    required: true
  cluster:
    description:
      - The cluster's name (its folder under O(dest_dir)). Required with O(state=pruned).
      - Omitted with O(state=listed) or O(state=verified), every cluster found under O(dest_dir).
    type: str
  engine:
    description: The engine. Omitted with O(state=listed) or O(state=verified), every engine found.
    type: str
    choices: [dqlite, etcd]
  state:
    description: V(listed) reads the manifests; V(verified) also checks payloads; V(pruned) applies O(policy).
    type: str
    choices: [listed, verified, pruned]
    default: listed
  newest:
    description: With O(state=verified), check only the payloads of this many newest backups that are no orphans.
    type: int
  until_good:
    description:
      - With O(state=verified), check payloads newest first and stop at the first verified backup whose payload
        matches (the one C(newest_verified) then names), which is what a restore takes, read once.
    type: bool
    default: false
  policy:
    description:
      - The retention policy, required with O(state=pruned). Keys (at least one rule above 0)
        C(keep_last), C(hourly), C(daily), C(weekly), C(monthly) (whole numbers), and C(max_age)
        (seconds, or a number with s, m, h, d or w).
      - Periods count the newest hours, days, ISO weeks, months (UTC) that have a verified backup,
        as borg and restic do; C(max_age) caps every rule. See C(plugins/module_utils/backup_retention.py).
    type: dict
  remove_stale:
    description: Remove dead writers' temporaries and interrupted payloads (never a backup), under the folder's lock.
    type: bool
    default: false
  now:
    description: The time (Unix seconds) ages and the policy are measured from; for tests. Default the clock.
    type: float
  where:
    description: How this destination is named in the result (default C(<hostname>:<dest_dir>)).
    type: str
  lock_timeout:
    description: Seconds to wait for the folder's lock (a backup being written) before failing without a change.
    type: float
    default: 300
"""

EXAMPLES = r"""
- name: List the backups of cluster k8s kept on the backup host
  quorum.recovery.backup_catalog:
    dest_dir: /srv/backups/quorum-recovery
    cluster: k8s
    engine: dqlite
  register: catalog

- name: Check the sha256 of the three newest payloads
  quorum.recovery.backup_catalog:
    dest_dir: /srv/backups/quorum-recovery
    cluster: k8s
    engine: dqlite
    state: verified
    newest: 3

- name: Hourly for a day, daily for a month, weekly for a year
  quorum.recovery.backup_catalog:
    dest_dir: /srv/backups/quorum-recovery
    cluster: k8s
    engine: etcd
    state: pruned
    policy:
      keep_last: 3
      hourly: 24
      daily: 31
      weekly: 52
    remove_stale: true
"""

RETURN = r"""
catalogs:
  description: One entry per cluster and engine read.
  returned: always
  type: list
  elements: dict
  contains:
    cluster:
      description: The cluster's name.
      type: str
    engine:
      description: dqlite or etcd.
      type: str
    folder:
      description: The folder read.
      type: str
    where:
      description: The destination's name (O(where)).
      type: str
    exists:
      description: Whether the folder exists (a destination that has no backup yet does not).
      type: bool
    backups:
      description:
        - Every backup, by counter, oldest first, orphans included; each with name, file, counter, created,
          created_epoch, age_seconds, position, size, encrypted, verified (the manifest says ok and the payload,
          when checked, matches), verification (V(ok), V(failed) or V(none)), payload_checked, payload_error,
          orphan, orphaned, cluster_id, source, where.
      type: list
      elements: dict
    newest_verified:
      description: The name of the newest verified backup that is no orphan (what restore takes), or null.
      type: str
    interrupted:
      description: Payloads without a manifest (interrupted writes, never backups).
      type: list
      elements: dict
    temporaries:
      description: Temporaries of writers (file, pid, writer_alive, size, age_seconds).
      type: list
      elements: dict
    invalid:
      description: Manifests that do not validate (file, error naming the key).
      type: list
      elements: dict
    orphaning_incomplete:
      description: Backups whose renaming to orphan-NAME was interrupted (they count as orphans).
      type: list
      elements: str
  sample:
    - cluster: k8s
      engine: etcd
      folder: /srv/backups/quorum-recovery/k8s/etcd
      where: "backup1:/srv/backups/quorum-recovery"
      exists: true
      newest_verified: k8s-etcd-0000000042-20261202T030000Z
      backups:
        - name: k8s-etcd-0000000042-20261202T030000Z
          counter: 42
          created: "2026-12-02T03:00:00Z"
          age_seconds: 1800
          position: {term: 5, index: 10233, revision: 9120, keys: 1000}
          size: 20975616
          verified: true
          verification: ok
          orphan: false
          encrypted: false
          where: "backup1:/srv/backups/quorum-recovery"
      interrupted: []
      temporaries: []
      invalid: []
      orphaning_incomplete: []
kept:
  description: With O(state=pruned), the backups kept, newest first, each with name, counter and the reasons (every rule that keeps it).
  returned: state is pruned
  type: list
  elements: dict
  sample: [{"name": "k8s-etcd-0000000042-20261202T030000Z", "counter": 42, "reason": "newest verified backup (never removed)"}]
removed:
  description: With O(state=pruned), the backups removed (in check mode, that would be), each with name, counter, reason, files.
  returned: state is pruned
  type: list
  elements: dict
  sample: [{"name": "k8s-etcd-0000000007-20261101T030000Z", "counter": 7, "reason": "kept by no rule of the policy",
            "files": ["k8s-etcd-0000000007-20261101T030000Z.json", "k8s-etcd-0000000007-20261101T030000Z.tar"]}]
stale_removed:
  description: Temporaries and interrupted payloads removed with O(remove_stale) (in check mode, that would be).
  returned: always
  type: list
  elements: str
"""

import os
import socket
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.quorum.recovery.plugins.module_utils import backup_catalog as bc
from ansible_collections.quorum.recovery.plugins.module_utils import backup_retention as br


def _targets(p):
    if p["cluster"] and p["engine"]:
        return [(p["cluster"], p["engine"])]
    found = bc.discover(p["dest_dir"])
    return [(c, e) for c, e in found if (not p["cluster"] or c == p["cluster"]) and (not p["engine"] or e == p["engine"])]


def _verify(catalog, newest, until_good):
    if until_good:
        catalog.newest_good()
        return
    candidates = [b for b in reversed(catalog.backups) if not b.orphan]
    chosen = candidates[:newest] if newest is not None else list(reversed(catalog.backups))
    for backup in chosen:
        if not backup.check_payload():
            catalog.warnings.append("%s: verification failed: %s" % (backup.name, backup.payload_error))


def _prune(module, catalog, now, where, result):
    """Decide on the catalog read under the lock; act only outside check mode."""
    catalog.newest_good()  # the newest verified must really be good before anything goes
    decided = br.plan([b.to_dict(now, where) for b in catalog.backups], module.params["policy"], now)
    catalog.warnings.extend(decided["warnings"])
    for item in decided["keep"]:
        result["kept"].append(dict(item, where=where, cluster=catalog.cluster, engine=catalog.engine))
    for item in decided["remove"]:
        files = [os.path.basename(f) for f in catalog.get(item["name"]).files()]
        if not module.check_mode:
            files = catalog.remove(item["name"])
        result["removed"].append(dict(item, files=files, where=where, cluster=catalog.cluster, engine=catalog.engine))
    if catalog.orphaning_incomplete:
        result["changed"] = True
        if not module.check_mode:
            catalog.finish_orphaning(by="backup_catalog prune")


def _one(module, cluster, engine, now, where, result):
    p = module.params
    folder = bc.folder_of(p["dest_dir"], cluster, engine)
    changes = p["state"] == "pruned" or p["remove_stale"]
    if not changes or module.check_mode or not os.path.isdir(folder):
        catalog = bc.read_catalog(p["dest_dir"], cluster, engine, now)
        return _act(module, catalog, now, where, result)
    with bc.exclusive(folder, p["lock_timeout"]):
        catalog = bc.read_catalog(p["dest_dir"], cluster, engine, now)  # again, under the lock
        return _act(module, catalog, now, where, result)


def _act(module, catalog, now, where, result):
    p = module.params
    if p["state"] == "verified":
        _verify(catalog, p["newest"], p["until_good"])
    if p["state"] == "pruned":
        _prune(module, catalog, now, where, result)
    if p["remove_stale"]:
        stale = [t["file"] for t in catalog.temporaries] + [i["file"] for i in catalog.interrupted]
        if not module.check_mode:
            stale = catalog.remove_stale()
            if catalog.orphaning_incomplete:
                catalog.finish_orphaning(by="backup_catalog remove_stale")
        result["stale_removed"].extend(os.path.join(catalog.folder, f) for f in stale)
    result["warnings"].extend(catalog.warnings)
    result["catalogs"].append(catalog.to_dict(now, where))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            dest_dir=dict(type="path", required=True),
            cluster=dict(type="str"),
            engine=dict(type="str", choices=list(bc.ENGINES)),
            state=dict(type="str", choices=["listed", "verified", "pruned"], default="listed"),
            newest=dict(type="int"),
            until_good=dict(type="bool", default=False),
            policy=dict(type="dict"),
            remove_stale=dict(type="bool", default=False),
            now=dict(type="float"),
            where=dict(type="str"),
            lock_timeout=dict(type="float", default=300.0),
        ),
        required_if=[("state", "pruned", ["cluster", "engine", "policy"])],
        supports_check_mode=True,
    )
    p = module.params
    now = p["now"] if p["now"] is not None else time.time()
    where = p["where"] or "%s:%s" % (socket.gethostname(), p["dest_dir"])
    result = dict(changed=False, catalogs=[], warnings=[], stale_removed=[])  # warnings: module.warn at the end
    if p["state"] == "pruned":
        result.update(kept=[], removed=[])
    try:
        if p["newest"] is not None and p["newest"] < 1:
            raise bc.CatalogError("newest=%d: expected a number of backups >= 1" % p["newest"])
        if p["state"] == "pruned":
            br.validate_policy(p["policy"])  # a bad policy fails before any folder is touched
        bc.check_names(p["cluster"], p["engine"])
        for cluster, engine in _targets(p):
            _one(module, cluster, engine, now, where, result)
    except (bc.CatalogError, br.PolicyError) as exc:
        module.fail_json(msg=str(exc), **_warned(module, result))
    except OSError as exc:
        module.fail_json(msg="%s: %s" % (exc.filename or p["dest_dir"], exc.strerror), **_warned(module, result))
    result["changed"] = result["changed"] or bool(result.get("removed")) or bool(result["stale_removed"])
    module.exit_json(**_warned(module, result))


def _warned(module, result):
    for warning in result.pop("warnings"):
        module.warn(warning)
    return result


if __name__ == "__main__":
    main()
