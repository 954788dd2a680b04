"""Backups (playbooks/backup.yml, role quorum.recovery.backup) on the real lab: 3 etcd members and a
backup host (h4, sshd only), real SSH, real ansible-playbook, and the AWX engine (ansible-runner)
run exactly as AWX runs a job: a private data dir with inventory, extra vars and env, no TTY.

What is checked on every backup taken here (check_backup): at every destination the manifest
names a payload whose size and sha256 match, the payload (decrypted when encrypted) is a tar
whose files match the manifest's sha256s, the verification says ok with the revision and key
count the member gave, and the counter is higher than every earlier one.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from conftest import BIN, REPO, ansible_env, fingerprint, run_ansible
from lab import Lab

STORE = "/var/backups/quorum-recovery-store"
SUBDIR = "etcd/etcd"  # CLUSTER/ENGINE: the cluster is named after the inventory group
STATE = "/var/backups/quorum-recovery"


@pytest.fixture(scope="module")
def blab():
    the_lab = Lab()
    try:
        the_lab.up(3, keys=1000, backup_host=True)
        yield the_lab
    finally:
        the_lab.down()


def _store_on(lab: Lab, host_name: str, subdir: str = SUBDIR) -> Path:
    """The backup folder as the host sees it, read from the controller (its private /var)."""
    return lab.host(host_name).real_path(STORE + "/" + subdir)


def manifests(folder: Path) -> dict:
    return {p.name[:-5]: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))} if folder.is_dir() else {}


def _tar_files(blob: bytes) -> dict:
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        return {m.name: hashlib.sha256(tar.extractfile(m).read()).hexdigest() for m in tar.getmembers()}


def check_backup(folder: Path, name: str, identity: Path | None = None) -> dict:
    manifest = json.loads((folder / (name + ".json")).read_text())
    payload = folder / manifest["payload"]["file"]
    blob = payload.read_bytes()
    assert len(blob) == manifest["payload"]["size"]
    assert hashlib.sha256(blob).hexdigest() == manifest["payload"]["sha256"]
    if manifest["payload"]["encrypted"]:
        assert blob.startswith(b"age-encryption.org/v1"), "an encrypted payload must be age ciphertext"
        if identity is None:  # another test's encrypted backup: whole as stored is all one can check here
            assert manifest["verified"]["result"] == "ok", manifest["verified"]
            return manifest
        blob = subprocess.run(["age", "-d", "-i", str(identity)], input=blob, capture_output=True, check=True).stdout
    inside = _tar_files(blob)
    for entry in manifest["files"]:
        assert inside[entry["name"]] == entry["sha256"], entry
    assert manifest["verified"]["result"] == "ok", manifest["verified"]
    if manifest["engine"] == "etcd":
        read_back = manifest["verified"]["details"]["read_back"]
        assert read_back["revision"] == manifest["position"]["revision"]
        assert read_back["keys"] == manifest["position"]["keys"]
    return manifest


def backup(lab: Lab, *extra, check=True):
    args = ["-e", "recover_engine=etcd"]
    for item in extra:
        args += ["-e", item if isinstance(item, str) else json.dumps(item)]
    return run_ansible("ansible-playbook", REPO / "playbooks" / "backup.yml", *args,
                       inventory=lab.etcd_inventory_path, check=check)


def test_backup_through_ansible_runner_as_awx_does(blab, tmp_path):
    """awx_backup.yml (the top-level wrapper AWX lists) run by ansible-runner with a private data
    dir: status successful, the backup at the backup host and the controller, verified, and the
    job's events carry the progress lines."""
    import ansible_runner  # the AWX engine, pinned in requirements.txt

    controller = tmp_path / "controller-store"
    private = tmp_path / "runner"
    (private / "inventory").mkdir(parents=True)
    shutil.copy(blab.etcd_inventory_path, private / "inventory" / "hosts.yml")
    env = ansible_env()
    before = {n: m["counter"] for n, m in manifests(_store_on(blab, "h4")).items()}
    result = ansible_runner.run(
        private_data_dir=str(private), project_dir=str(REPO), playbook="awx_backup.yml",
        extravars={"recover_engine": "etcd", "backup_controller_dir": str(controller), "backup_progress_interval": 0.2},
        # as in an EE: ansible-playbook on PATH, the collection installed where Ansible looks
        envvars={"PATH": "%s:%s" % (BIN, os.environ.get("PATH", "")),
                 **{k: env[k] for k in ("ANSIBLE_COLLECTIONS_PATH", "ANSIBLE_CONFIG")}},
        quiet=True)
    status = (private / "artifacts" / result.config.ident / "status").read_text().strip()
    stdout = "".join(e.get("stdout", "") + "\n" for e in result.events)
    assert status == "successful", stdout[-5000:]
    assert result.rc == 0
    at_h4 = manifests(_store_on(blab, "h4"))
    new = sorted(set(at_h4) - set(before))
    assert len(new) == 1, (new, stdout[-3000:])
    name = new[0]
    manifest = check_backup(_store_on(blab, "h4"), name)
    assert manifest["counter"] > max(before.values(), default=0)
    assert manifest["position"]["keys"] == 1000  # the lab loaded 1000 keys and nothing else
    assert manifest["source"]["chosen"] == "elected"
    mine = check_backup(controller / SUBDIR, name)
    assert mine["payload"]["sha256"] == manifest["payload"]["sha256"]
    # the transfers' progress and the background snapshot's wait reached the job's events
    assert re.search(r"\[%s\.tar to the controller\]: fetched .* in " % re.escape(name), stdout), stdout[-3000:]
    assert re.search(r"\[%s\.tar to h4\]: sent .* in " % re.escape(name), stdout), stdout[-3000:]
    assert "backup %s (counter %d)" % (name, manifest["counter"]) in stdout


@pytest.mark.full  # CI: test_backup_restore's dqlite whole-cluster loss takes and checks the same backup
def test_dqlite_backup_of_a_running_member_started_alone_and_read_back(blab):
    """backup.yml on the dqlite group (go-dqlite-app flavor): a consistent copy of the running
    elected member, started alone on loopback with every row the lab loaded read back, kept at h4."""
    store = _store_on(blab, "h4", "dqlite/dqlite")
    before = set(manifests(store))
    out = run_ansible("ansible-playbook", REPO / "playbooks" / "backup.yml", inventory=blab.inventory_path).stdout
    new = set(manifests(store)) - before
    assert len(new) == 1, out[-3000:]
    manifest = check_backup(store, new.pop())
    assert manifest["verified"]["how"] == "facts-full+dqlite-started-alone"
    assert manifest["verified"]["rows"] >= 1000  # the lab's 1000 rows, acknowledged before the backup
    names = [f["name"] for f in manifest["files"]]
    assert "node/info.yaml" in names and any(n.startswith("raft/") for n in names)
    assert not any(n.endswith((".key", ".crt")) for n in names)
    assert manifest["source"]["chosen"] == "elected" and manifest["position"]["index"] > 0


def test_encrypted_backup_round_trip_and_no_plaintext_on_the_backup_host(blab, tmp_path):
    identity = tmp_path / "identity.txt"
    subprocess.run(["age-keygen", "-o", str(identity)], capture_output=True, check=True)
    recipient = subprocess.run(["age-keygen", "-y", str(identity)], capture_output=True, text=True,
                               check=True).stdout.strip()
    before = set(manifests(_store_on(blab, "h4")))
    out = backup(blab, {"backup_recipients": [recipient]}).stdout
    name = (set(manifests(_store_on(blab, "h4"))) - before).pop()
    manifest = check_backup(_store_on(blab, "h4"), name, identity)
    assert manifest["payload"]["encrypted"] and manifest["payload"]["recipients"] == [recipient]
    assert "encrypted to 1 age recipient" in out
    # nothing of this backup on the backup host is plaintext (earlier tests stored plain ones):
    # no tar of it, and no file there (its arrival folder included) holds the snapshot's bytes
    snapshot_sha = {e["sha256"] for e in manifest["files"]}
    for root, _dirs, names in os.walk(blab.host("h4").real_path(STORE)):
        for file_name in names:
            if name not in file_name and ".incoming" not in root:
                continue
            data = Path(root, file_name).read_bytes()
            assert not file_name.endswith(".tar"), file_name
            assert hashlib.sha256(data).hexdigest() not in snapshot_sha
            assert b"MANIFEST.json" not in data, file_name  # the tar's own header would show it
    # a wrong identity cannot read it
    other = tmp_path / "other.txt"
    subprocess.run(["age-keygen", "-o", str(other)], capture_output=True, check=True)
    payload = _store_on(blab, "h4") / manifest["payload"]["file"]
    wrong = subprocess.run(["age", "-d", "-i", str(other), str(payload)], capture_output=True, check=False)
    assert wrong.returncode != 0 and b"no identity matched" in wrong.stderr


def _fingerprints(lab: Lab) -> dict:
    found = {"h4": fingerprint(lab.host("h4").real_path(STORE)) if lab.host("h4").real_path(STORE).exists() else {}}
    for host in lab.hosts():
        folder = host.real_path(STATE)
        found[host.name] = fingerprint(folder) if folder.exists() else {}
    return found


BAD_INPUTS = [
    ({"backup_cluster": "../prod"}, "backup_cluster=../prod"),
    ({"backup_source": "h9"}, "backup_source=h9: not a member of etcd"),
    ({"backup_recipients": ["not-a-key"]}, "backup_recipients=['not-a-key']"),
    ({"backup_recipients": "age1xyz"}, "backup_recipients=age1xyz"),
    ({"backup_retention": {"hourly": "many"}}, "backup_retention="),
    ({"backup_retention": {"yearly": 3}}, "backup_retention="),
    ({"backup_retention": {"keep_last": 0, "max_age": "30d"}}, "backup_retention="),
    ({"backup_retention": {"daily": 7, "max_age": "soon"}}, "backup_retention="),
    ({"backup_dest_dir": "relative/dir"}, "backup_dest_dir=relative/dir"),
    ({"backup_controller_dir": "/tmp/../etc"}, "backup_controller_dir=/tmp/../etc"),
    ({"backup_hosts_group": "etcd"}, "backup_hosts_group=etcd holds members of the cluster"),
    ({"backup_hosts_group": "nowhere"}, "no destination"),
    ({"backup_recipient": ["age1"]}, "unknown variable backup_recipient, did you mean backup_recipients?"),
    ({"backup_step_timeout": 0}, "backup_step_timeout=0"),
    ({"recover_flavor": "consul"}, "recover_flavor=consul"),
]


def test_bad_inputs_are_refused_naming_them_and_nothing_is_written(blab):
    before = _fingerprints(blab)
    for extra, expected in BAD_INPUTS:
        proc = backup(blab, extra, check=False)
        assert proc.returncode != 0, extra
        assert expected in proc.stdout, (extra, proc.stdout[-2500:])
        assert "nothing was written" in proc.stdout, (extra, proc.stdout[-2500:])
    assert _fingerprints(blab) == before


@pytest.mark.full
def test_operator_named_source_and_an_unhealthy_one(blab):
    before = set(manifests(_store_on(blab, "h4")))
    backup(blab, "backup_source=h1")
    name = (set(manifests(_store_on(blab, "h4"))) - before).pop()
    manifest = check_backup(_store_on(blab, "h4"), name)
    assert manifest["source"] == {**manifest["source"], "host": "h1", "chosen": "operator"}
    # a member that does not answer is never the source, and naming it is refused
    blab.kill(blab.host("h2"), "etcd")
    try:
        before = _fingerprints(blab)
        proc = backup(blab, "backup_source=h2", check=False)
        assert proc.returncode != 0
        assert "backup_source=h2 is not healthy" in proc.stdout, proc.stdout[-2500:]
        assert _fingerprints(blab)["h4"] == before["h4"]
        out = backup(blab).stdout
        assert re.search(r"source h[13] \(elected\)", out), out[-2500:]
    finally:
        blab.start_etcd([blab.host("h2")])


def _real_names(folder: Path) -> list[str]:
    return sorted(n for n in os.listdir(folder) if re.match(r"^etcd-etcd-\d{10}-\d{8}T\d{6}Z\.(tar|tar\.age|json)$", n)) \
        if folder.is_dir() else []


@pytest.mark.parametrize("after", [2.5, pytest.param(5.0, marks=pytest.mark.full),
                                   pytest.param(7.5, marks=pytest.mark.full)])
def test_killed_backup_leaves_nothing_partial_and_the_next_run_succeeds(blab, after):
    """ansible-playbook SIGKILLed (with every process it started) `after` seconds in: every file
    under a backup's real name at every destination is whole (a manifest's payload matches it; a
    payload without its manifest was renamed in whole and is no backup); the next run succeeds
    with a higher counter than any before, and no scratch etcd is left running."""
    store = _store_on(blab, "h4")
    counters_before = [m["counter"] for m in manifests(store).values()]
    proc = subprocess.Popen([str(BIN / "ansible-playbook"), "-i", str(blab.etcd_inventory_path),
                             str(REPO / "playbooks" / "backup.yml"), "-e", "recover_engine=etcd"],
                            env=ansible_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    time.sleep(after)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    time.sleep(1.0)  # the async job on the member finishes or dies with its module
    for name in _real_names(store):
        if name.endswith(".json"):
            check_backup(store, name[:-5])
    out = backup(blab).stdout
    after_run = manifests(store)
    newest = max(after_run.values(), key=lambda m: m["counter"])
    assert newest["counter"] > max(counters_before, default=0)
    assert "backup %s (counter %d)" % (newest["name"], newest["counter"]) in out
    counters = sorted(m["counter"] for m in after_run.values())
    assert len(counters) == len(set(counters))
    for host in blab.hosts():  # no scratch etcd left behind (a verify's etcd dies with its module)
        ps = blab.exec(host, ["ps", "-eo", "args"]).stdout
        assert "etcd-backup-verify" not in ps, ps


def test_ansible_builder_makes_the_execution_environment_context(tmp_path):
    context = tmp_path / "ee"
    proc = subprocess.run([str(BIN / "ansible-builder"), "create", "-f", str(REPO / "awx" / "execution-environment.yml"),
                           "-c", str(context), "--output-filename", "Containerfile"],
                          capture_output=True, text=True, cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    containerfile = (context / "Containerfile").read_text()
    assert "ARG EE_BASE_IMAGE" in containerfile
    tarballs = list((context / "_build" / "collection").glob("quorum-recovery-*.tar.gz"))
    assert len(tarballs) == 1, "the collection this checkout built goes into the EE"
    with tarfile.open(tarballs[0]) as tar:
        names = tar.getnames()
    assert "roles/backup/tasks/main.yml" in names and "plugins/modules/etcd_backup.py" in names
    requirements = (context / "_build" / "requirements.yml").read_text()
    assert "/build/quorum-recovery.tar.gz" in requirements
    assert re.search(r"^age \[platform:dpkg\]", (context / "_build" / "bindep.txt").read_text(), re.M)


def _timer(tmp_path, *extra, check=True):
    args = ["-e", "backup_timer_unit_dir=%s" % (tmp_path / "units"), "-e", "backup_timer_config_dir=%s" % (tmp_path / "cfg")]
    for item in extra:
        args += ["-e", item if isinstance(item, str) else json.dumps(item)]
    return run_ansible("ansible-playbook", REPO / "playbooks" / "backup_timer.yml", *args,
                       inventory=REPO / "tests" / "integration" / "localhost.ini", check=check)


@pytest.mark.full  # ~2 min; CI keeps the timer's input and calendar checks (the test below)
def test_systemd_timer_units_are_checked_installed_and_run_a_real_backup(blab, tmp_path):
    """backup_timer.yml writes units that systemd-analyze accepts; the service's own command line,
    run as systemd would run it (its Environment= and ExecStart=), takes a verified backup."""
    (tmp_path / "units").mkdir()
    out = _timer(tmp_path, "backup_timer_inventory=%s" % blab.etcd_inventory_path, "backup_cluster=etcd",
                 {"backup_timer_extra_vars": {"recover_engine": "etcd"}, "backup_timer_on_calendar": "*-*-* 00/4:15:00"}).stdout
    assert "systemd does not run here" in out
    service = (tmp_path / "units" / "quorum-recovery-backup-etcd.service").read_text()
    timer = (tmp_path / "units" / "quorum-recovery-backup-etcd.timer").read_text()
    assert "OnCalendar=*-*-* 00/4:15:00" in timer and "Persistent=true" in timer
    extra = tmp_path / "cfg" / "quorum-recovery-backup-etcd.yml"
    assert extra.stat().st_mode & 0o777 == 0o600 and "recover_engine: etcd" in extra.read_text()
    env = dict(os.environ)
    for line in service.splitlines():
        if line.startswith("Environment="):
            key, _sep, value = line[len("Environment="):].partition("=")
            env[key] = value
    execstart = [line[len("ExecStart="):] for line in service.splitlines() if line.startswith("ExecStart=")][0]
    before = set(manifests(_store_on(blab, "h4")))
    env.update(ANSIBLE_CONFIG=str(REPO / "ansible.cfg"))
    proc = subprocess.run(execstart.split(), env=env, capture_output=True, text=True, check=False, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    new = set(manifests(_store_on(blab, "h4"))) - before
    assert len(new) == 1
    check_backup(_store_on(blab, "h4"), new.pop())


def test_systemd_timer_bad_input_and_bad_calendar_install_nothing(tmp_path):
    (tmp_path / "units").mkdir()
    proc = _timer(tmp_path, "backup_timer_inventory=relative.yml", check=False)
    assert proc.returncode != 0 and "backup_timer_inventory=relative.yml" in proc.stdout
    assert not (tmp_path / "cfg").exists() and not list((tmp_path / "units").iterdir())
    proc = _timer(tmp_path, {"backup_timer_inventory": "/etc/ansible/hosts", "backup_timer_on_calendar": "every full moon"},
                  check=False)
    assert proc.returncode != 0 and "systemd-analyze" in proc.stdout, proc.stdout[-2000:]
    assert not list((tmp_path / "units").iterdir()), "a unit systemd-analyze refused was installed"


def test_retention_and_an_orphan_kept_through_backup_yml(blab):
    """A backup already at h4 whose position is ahead of the cluster's (as after a rollback of the
    cluster) is renamed orphan-NAME by the next backup and kept; retention keep_last 1 then leaves
    the newest backup and the orphan, removes the others, and says what it removed."""
    store = _store_on(blab, "h4")
    backup(blab)
    backup(blab)  # two backups at least, whatever ran before: one becomes the orphan, one is pruned
    names = sorted(manifests(store), key=lambda n: manifests(store)[n]["counter"])
    ahead = [n for n in names if not n.startswith("orphan-")][0]
    path = store / (ahead + ".json")
    manifest = json.loads(path.read_text())
    manifest["position"]["term"] += 1000  # a backup of data newer than the cluster holds now
    path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    before = manifests(store)
    out = backup(blab, {"backup_retention": {"keep_last": 1}}).stdout
    assert "kept %s as orphan-%s" % (ahead, ahead) in out, out[-3000:]
    after = manifests(store)
    assert after["orphan-" + ahead]["orphaned"]["by"] and (store / ("orphan-" + manifest["payload"]["file"])).exists()
    newest = max(m["counter"] for m in after.values())
    assert [m["counter"] for n, m in after.items() if not n.startswith("orphan-")] == [newest]
    removed = sorted(n for n in before if n != ahead and not n.startswith("orphan-"))
    assert removed and all(n not in after for n in removed)
    assert "%d removed by retention" % len(removed) in out, out[-3000:]
    assert all(not (store / (before[n]["payload"]["file"])).exists() for n in removed)


def _snapshot_saver(lab: Lab):
    """(host, pid) of an `etcdctl snapshot save` running inside one of this lab's hosts (they share
    the controller's PID namespace; the host is the one whose network namespace it runs in), or None."""
    by_netns = {os.stat("/run/netns/" + h.netns).st_ino: h for h in lab.hosts()}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            args = [a.decode(errors="replace") for a in Path(entry.path, "cmdline").read_bytes().split(b"\0")]
            netns = os.stat(Path(entry.path, "ns", "net")).st_ino
        except OSError:
            continue
        if os.path.basename(args[0]) == "etcdctl" and "snapshot" in args and "save" in args and netns in by_netns:
            return by_netns[netns], int(entry.name)
    return None


def _partial_bytes(host) -> int:
    """Bytes of the snapshot etcdctl is writing in the host's backup work folder (PATH.part)."""
    work = host.real_path(STATE + "/backup-etcd-etcd/work")
    try:
        return sum(p.stat().st_size for p in work.glob("snapshot.db.tmp-*.part"))
    except OSError:
        return 0


def _progress(host) -> dict:
    """The take's newest progress record on the host (etcd_backup writes them, one a line), or {}."""
    path = host.real_path(STATE + "/backup-etcd-etcd/progress-take.json")
    try:
        return json.loads(path.read_text().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return {}


@pytest.mark.full
def test_member_killed_mid_snapshot_fails_clearly_and_leaves_no_backup(blab, tmp_path):
    """The source member's etcd SIGKILLed (by PID, the lab's kill_all_at_once) while etcd_backup's
    `snapshot save` streams from it: the run fails naming the member and what happened, no file
    under a backup's real name exists at the backup host, the controller's store or the source's
    outbox, and nothing partial is left in the source's work folder; the reserved counter is not
    reused, and once the member is back the next run succeeds with a higher counter, verified.
    1 GiB of values make the save last long enough that the window is seen in the process
    list, the progress file (bytes received) and the growing partial file (the test's last: the values are deleted
    and the db defragmented). Without etcd_backup's watch, etcdctl waited --command-timeout (300 s)
    for the dead member; the failure must come within a minute."""
    h1 = blab.host("h1")
    blab.client(h1, "etcd-put", *blab.client_target(h1, "etcd"), "--prefix", "bulk", "--count", "2048",
                "--size", str(512 * 1024))
    store = _store_on(blab, "h4")
    controller = tmp_path / "controller-store"
    before = manifests(store)
    top_before = max((m["counter"] for m in before.values()), default=0)
    proc = subprocess.Popen([str(BIN / "ansible-playbook"), "-i", str(blab.etcd_inventory_path),
                             str(REPO / "playbooks" / "backup.yml"), "-e", "recover_engine=etcd",
                             "-e", "backup_controller_dir=%s" % controller, "-e", "backup_progress_interval=0.1"],
                            env=ansible_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    victim = None
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            found = _snapshot_saver(blab)
            said = _progress(found[0]) if found else {}
            if said.get("phase") == "snapshot save" and said.get("done", 0) > 0 and _partial_bytes(found[0]) > 0:
                victim = found[0]
                blab.kill_all_at_once("etcd", [victim])  # SIGKILL by the member's PID file, as power loss
                break
            time.sleep(0.05)
        killed_at = time.monotonic()
        out = proc.communicate(timeout=600)[0]
        failed_after = time.monotonic() - killed_at
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    try:
        assert victim is not None, "no snapshot save was seen running:\n" + out[-3000:]
        assert proc.returncode != 0, out[-3000:]
        assert failed_after < 60, "the run took %.0f s to fail after the kill" % failed_after
        work = victim.real_path(STATE + "/backup-etcd-etcd/work")
        # the failure names the member, the counter and what happened, and says nothing was written
        failed = re.search(r"backup (etcd-etcd-(\d{10})-\d{8}T\d{6}Z) \(counter (\d+)\) FAILED on its source (h\d)"
                           r" \(etcd\)[^\n]*", out)
        assert failed, out[-4000:]
        assert failed.group(4) == victim.name
        assert "went away while its snapshot was being saved" in failed.group(0), failed.group(0)
        received = re.search(r"\((\d+) bytes received\)", failed.group(0))
        assert received and int(received.group(1)) > 0, failed.group(0)
        assert "No backup was written at any destination" in failed.group(0)
        reserved = int(failed.group(3))
        assert reserved > top_before
        # nothing under the failed backup's name, nor any other new one, anywhere
        assert manifests(store) == before
        assert not any(failed.group(1) in n for n in (os.listdir(store) if store.is_dir() else []))
        assert not (controller / SUBDIR).exists() or not _real_names(controller / SUBDIR), \
            os.listdir(controller / SUBDIR)
        for host in blab.hosts():
            outbox = host.real_path(STATE + "/backup-etcd-etcd/outbox")
            assert not _real_names(outbox), (host.name, os.listdir(outbox))
        leftovers = sorted(os.listdir(work)) if work.is_dir() else []
        assert not any(n.startswith("snapshot.db") for n in leftovers), leftovers
        counter = json.loads(victim.real_path(STATE + "/backup-etcd-etcd/counter.json").read_text())
        assert counter["reserved"] == reserved and counter["stored"] < reserved, counter
    finally:
        if victim is not None:
            blab.start_etcd([victim])
    # the member back: the next run succeeds, with a counter above the one the failed run reserved
    out = backup(blab, "backup_controller_dir=%s" % controller).stdout
    after = manifests(store)
    new = sorted(set(after) - set(before))
    assert len(new) == 1, out[-3000:]
    manifest = check_backup(store, new[0])
    assert manifest["counter"] > reserved, (manifest["counter"], reserved)
    assert manifest["position"]["keys"] >= 3048  # the lab's 1000 and the 2048 values
    assert check_backup(controller / SUBDIR, new[0])["payload"]["sha256"] == manifest["payload"]["sha256"]
    blab.etcdctl(h1, "del", "bulk", "--prefix")
    revision = blab.etcd_status(h1)["header"]["revision"]
    blab.etcdctl(h1, "compact", str(revision), "--physical")
    for host in blab.hosts():
        blab.etcdctl(host, "defrag", timeout=300)
