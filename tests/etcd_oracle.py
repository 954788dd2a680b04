"""The real-start oracle: start the lab's etcd (3.4 or 3.5, Lab.etcd_bin_dir) on a scratch copy of
a data directory inside a lab host and record what it really does: refuses (a fatal log line and a
non-zero exit), panics, repairs something (a torn WAL tail, a broken .snap, a .snap.db swapped in),
starts, and (alone, with --force-new-cluster, or as a one-member cluster) serves.

etcd runs inside the host's namespaces on 127.0.0.1 scratch ports (https with the host's lab
certificates when the lab runs etcd over TLS), with zap JSON logging to a file next to the copy,
and is always stopped (by its PID) before the call returns. A copy of a member of a bigger cluster
knows its peers' lab addresses: the caller must make sure nothing answers there (stop the lab's
etcd members and partition the host), or the copy could disturb the live cluster.
"""
from __future__ import annotations

import json
import os
import re
import time

from lab.base import PKI_DIR

CLIENT_PORT, PEER_PORT = 23795, 23805
NEW_RAFT = re.compile(r"newRaft \S+ \[peers: \[[^\]]*\], term: (\d+), commit: (\d+), applied: (\d+), "
                      r"lastindex: (\d+), lastterm: (\d+)\]")
SERVING = "now serving peer/client/metrics"
# what the Go runtime prints when it dies of a signal or an unrecovered panic (not JSON)
RUNTIME_DEATH = ("panic: ", "fatal error: ", "unexpected fault address", "SIGSEGV", "SIGBUS")


def scratch_url(lab, port: int) -> str:
    """A 127.0.0.1 URL inside a host, in the scheme of the lab's etcd (the host certificates name 127.0.0.1)."""
    return "%s://127.0.0.1:%d" % ("https" if lab.etcd_tls else "http", port)


def etcd_argv(lab, *args) -> list:
    """The lab's etcd with args; in TLS mode it asks clients and peers for certificates as the lab's
    members do, so a scratch member of a TLS cluster runs as it would in its own cluster."""
    tls = []
    if lab.etcd_tls:
        tls = ["--cert-file", PKI_DIR + "/server.crt", "--key-file", PKI_DIR + "/server.key", "--client-cert-auth",
               "--trusted-ca-file", PKI_DIR + "/ca.crt", "--peer-cert-file", PKI_DIR + "/peer.crt",
               "--peer-key-file", PKI_DIR + "/peer.key", "--peer-client-cert-auth",
               "--peer-trusted-ca-file", PKI_DIR + "/ca.crt"]
    return [os.path.join(lab.etcd_bin_dir, "etcd"), *args, *tls]


def etcdctl_argv(lab, endpoint: str, *args) -> list:
    """The lab's etcdctl at endpoint (inside a host), with the client certificate in TLS mode."""
    tls = [item for key, path in lab.etcd_client_tls.items() for item in ("--" + key, path)]
    return [os.path.join(lab.etcd_bin_dir, "etcdctl"), "--endpoints", endpoint, *tls, *args]


def _listing(lab, host, data_dir):
    out = lab.exec(host, ["find", data_dir + "/member", "-type", "f", "-printf", "%P %s\\n"], check=False).stdout
    return dict((line.rsplit(" ", 1)[0], int(line.rsplit(" ", 1)[1])) for line in out.splitlines() if line.strip())


def _read_log(path):
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return [], []
    events, raw = [], []
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            raw.append(line)
            continue
        if isinstance(event, dict):
            events.append(event)
        else:
            raw.append(line)
    return events, raw


def _status(lab, host):
    proc = lab.exec(host, etcdctl_argv(lab, scratch_url(lab, CLIENT_PORT), "-w", "json", "--dial-timeout=1s",
                                       "--command-timeout=2s", "endpoint", "status"), check=False, timeout=30)
    if proc.returncode:
        return None
    status = json.loads(proc.stdout)[0]["Status"]
    return status if status.get("leader") else None


def real_start(lab, host, data_dir: str, name: str = "oracle", force_new_cluster: bool = False,
               serve: bool | None = None, timeout: float = 25.0, settle: float = 1.5) -> dict:
    """Start etcd on data_dir (a path inside the host) and report what it did.

    outcome: `refuses` (exited after a fatal log line), `panics` (a zap panic or a Go runtime
    death), `exits` (gone without either), `starts` (past start-up: listeners serving, alive
    `settle` seconds later), `serves` (answers endpoint status with a leader: force_new_cluster
    or a one-member cluster), `new-member` (started by bootstrapping a fresh log) or `hangs`
    (neither within timeout). changes: the files it changed at start, in etcd_info' terms. serve (default: force_new_cluster)
    says to wait for it to answer endpoint status; a member without quorum never does.
    """
    serve = force_new_cluster if serve is None else serve
    log_path = "%s.%s.log" % (data_dir.rstrip("/"), "force" if force_new_cluster else "plain")
    real_log = host.real_path(log_path)
    before = _listing(lab, host, data_dir)
    client, peer = scratch_url(lab, CLIENT_PORT), scratch_url(lab, PEER_PORT)
    argv = etcd_argv(lab, "--name", name, "--data-dir", data_dir, "--listen-client-urls", client,
                     "--advertise-client-urls", client, "--listen-peer-urls", peer, "--logger", "zap",
                     "--log-outputs", "stderr")
    if force_new_cluster:
        argv.append("--force-new-cluster")
    started = time.monotonic()
    with open(real_log, "wb") as log:
        proc = lab.spawn(host, argv, stderr=log)  # nsenter execs etcd: proc.pid is etcd's
    outcome, status, serving_since = None, None, None
    try:
        deadline = started + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            events, _raw = _read_log(real_log)
            if serving_since is None and any(e.get("msg") == SERVING for e in events):
                serving_since = time.monotonic()
            if serving_since is not None:
                if serve:
                    status = _status(lab, host)
                    if status:
                        outcome = "serves"
                        break
                elif time.monotonic() - serving_since >= settle:
                    outcome = "starts"
                    break
            time.sleep(0.2)
    finally:
        rc = None if lab.stop_spawned(proc) else proc.returncode  # None: we stopped it
    elapsed = round(time.monotonic() - started, 2)
    events, raw = _read_log(real_log)
    fatal = next((e for e in events if e.get("level") == "fatal"), None)
    panic = next((e for e in events if e.get("level") in ("panic", "dpanic")), None)
    death = next((line for line in raw if any(word in line for word in RUNTIME_DEATH)), None)
    if rc is not None:
        if panic or death:
            outcome = "panics"
        elif fatal:
            outcome = "refuses"
        else:
            outcome = "exits"
    elif outcome is None:
        outcome = "hangs"
    error = None
    for event in (panic, fatal):
        if event:
            error = "%s: %s" % (event.get("msg"), event.get("error", "")) if event.get("error") else event.get("msg")
            break
    if error is None and death:
        error = death.strip()
    raft = None
    for event in events:
        match = NEW_RAFT.search(event.get("msg", ""))
        if match:
            raft = dict(zip(("term", "commit", "applied", "last_index", "last_term"), map(int, match.groups())))
    after = _listing(lab, host, data_dir)
    changes = []
    for event in events:
        msg, path = event.get("msg", ""), str(event.get("path", "")).rsplit("/", 1)[-1]
        if msg == "repaired" and "unexpected EOF" in str(event.get("error", "")):
            changes.append({"action": "truncate", "file": path, "keep": path + ".broken"})
        elif msg == "renamed to a broken snap file":
            changes.append({"action": "rename", "file": path, "to": path + ".broken"})
    for gone in sorted(set(before) - set(after)):
        if gone.endswith(".snap.db"):
            changes.append({"action": "replace", "file": "member/snap/db", "with": gone.rsplit("/", 1)[-1]})
    if outcome in ("starts", "serves") and any(e.get("msg") == "starting local member" for e in events):
        outcome = "new-member"  # no WAL: it bootstrapped a fresh log (restarting is "restarting local member")
    return {"outcome": outcome, "error": error, "rc": rc, "seconds": elapsed, "raft": raft, "changes": changes,
            "status": status, "added": sorted(set(after) - set(before)), "removed": sorted(set(before) - set(after)),
            "log": log_path, "log_tail": [json.dumps(e)[:400] for e in events[-5:]] + raw[-10:]}
