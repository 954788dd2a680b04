"""The runbook's rollback (docs/dqlite-runbook.md, section 5), run as written, in the lab.

The shell block of the runbook is taken from the document itself (only its example values are
replaced by this lab's), so the document cannot drift from what was tested: after a real
recovery, every member is rolled back from its safety archive, each directory then holds exactly
the files of the archive's manifest (the runbook's own check), no member holds the recovery's
reconfigure entry any more, and the cluster, started again, serves every key.
"""
from __future__ import annotations

import json
import os
import re

from conftest import REPO, run_ansible
from test_recover_resume import _term1_changes


def _runbook_script() -> str:
    text = (REPO / "docs" / "dqlite-runbook.md").read_text()
    section = text[text.index("## 5. Rolling back"):]
    return re.search(r"```sh\n(.*?)```", section, re.S).group(1)


def test_rollback_from_the_safety_archives_as_the_runbook_says(lab, tmp_path):
    hosts = lab.hosts()
    lab.power_off("dqlite")
    before = {h.name: sorted(n for n in os.listdir(h.real_path(h.dqlite_data_dir))) for h in hosts}
    floor = max(int(n.split("-")[1]) for names in before.values() for n in names if n[:1].isdigit() and "-" in n)
    run_ansible("ansible-playbook", "playbooks/recover.yml", "-e", "recover_confirm=yes",
                "-e", "recover_controller_dir=%s" % (tmp_path / "controller"), inventory=lab.inventory_path)
    journal = json.loads(hosts[0].real_path("/var/backups/quorum-recovery/journal.json").read_text())
    rid, segment = journal["recovery_id"], journal["plan"]["source"]["segment"]
    assert all(segment in os.listdir(h.real_path(h.dqlite_data_dir)) for h in hosts)

    script = _runbook_script()
    for host in hosts:  # step 1 of the runbook: stop dqlite on every member first
        lab.service(host, "dqlite", "stop")
    for host in hosts:
        mine = script.replace("/var/lib/qrlab/", "%s/" % lab.state)
        mine = re.sub(r"(?m)^R=\S+", "R=%s" % rid, mine)
        mine = re.sub(r"(?m)^H=\S+", "H=%s" % host.name, mine)
        mine = re.sub(r"(?m)^DIR=\S+", "DIR=%s" % host.dqlite_data_dir, mine)
        proc = lab.exec(host, ["sh", "-c", "set -eu\n" + mine], check=False)
        assert proc.returncode == 0, (host.name, proc.stdout, proc.stderr)
        assert re.search(r"(?m)^ok \d+ files$", proc.stdout), proc.stdout
        path = host.real_path(host.dqlite_data_dir)
        assert segment not in os.listdir(path)
        assert _term1_changes(path, above=floor) == [], host.name
        aside = [n for n in os.listdir(path.parent) if n.startswith(path.name + ".before-rollback-")]
        assert len(aside) == 1 and segment in os.listdir(path.parent / aside[0])  # moved aside, kept
    lab.start_all(hosts, "dqlite")
    lab._wait(lambda: lab._dqlite_settled(hosts, 3), 60, "dqlite voters after the rollback")
    for host in hosts:
        assert lab.check_keys(host, "dqlite", 1000, "key").get("ok"), host.name
