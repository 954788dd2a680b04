"""recover.yml refuses bad inputs before touching anything, and --check only prints the plan.

Each bad input must fail the run with a message that names the input, and leave every member as
it was: every file of every data directory byte- and time-identical (sha256, size, mtime,
ctime), the dqlite service still running with the same pid, no state directory (journal,
archives) on any member and no controller directory.

A running go-dqlite app rewrites its cluster.yaml by itself now and then (seen in the lab: 2.5
minutes after the start, with nobody touching it), which would blame the playbook for dqlite's
own writes. So while a bad-input run runs, every dqlite-demo is frozen (SIGSTOP, then SIGCONT):
still running, same pid, but silent; any change then is the playbook's.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal

import pytest

from conftest import run_ansible

STATE_DIR = "/var/backups/quorum-recovery"


def _fingerprint(lab) -> dict:
    out = {}
    for host in lab.hosts():
        directory = host.real_path(host.dqlite_data_dir)
        st = os.stat(directory)
        out[(host.name, ".")] = (st.st_mtime_ns, st.st_ctime_ns)
        for name in sorted(os.listdir(directory)):
            path = directory / name
            st = os.stat(path)
            with open(path, "rb") as f:
                out[(host.name, name)] = (hashlib.sha256(f.read()).hexdigest(), st.st_size, st.st_mtime_ns,
                                          st.st_ctime_ns)
    return out


def _services(lab) -> dict:
    """host -> pid of the running dqlite (None when stopped)."""
    out = {}
    for host in lab.hosts():
        running = lab.service(host, "dqlite", "status", check=False).returncode == 0
        pid = (host.private("run") / "qrlab" / "dqlite.pid")
        out[host.name] = int(pid.read_text()) if running and pid.exists() else None
    return out


def _no_state(lab, controller):
    for host in lab.hosts():
        state = host.real_path(STATE_DIR)
        assert not state.exists(), (host.name, "state dir created", sorted(os.listdir(state)))
    assert not controller.exists(), sorted(os.listdir(controller))


def _recover(lab, controller, extra: dict, *args, playbook="playbooks/recover.yml"):
    extra = dict(extra, recover_controller_dir=str(controller))
    return run_ansible("ansible-playbook", playbook, "-e", json.dumps(extra), *args,
                       inventory=lab.inventory_path, check=False)


def _host_vars(path, host_vars: dict) -> list[str]:
    """A second inventory source adding host variables, as an operator's host_vars would: the
    ansible-playbook arguments that add it."""
    path.write_text(json.dumps({"all": {"hosts": host_vars}}))
    return ["-i", str(path)]


CONFIRM = {"recover_confirm": "yes"}
BAD_INPUTS = [
    # (id, extra vars, what the message must contain: a string, or a tuple of strings)
    ("unknown-flavor", dict(CONFIRM, recover_flavor="nope"), "recover_flavor=nope"),
    ("k3s-is-inspect-only", dict(CONFIRM, recover_engine="etcd", recover_group="etcd", recover_flavor="k3s"),
     "recover_flavor=k3s: this flavor is inspect-only here"),
    ("engine-unknown", dict(CONFIRM, recover_engine="consul", recover_group="dqlite"),
     "recover_engine=consul: this role recovers dqlite and etcd clusters"),
    ("lost-not-in-inventory", dict(CONFIRM, recover_lost=["h9"]), "recover_lost="),
    ("all-lost", dict(CONFIRM, recover_lost=["h1", "h2", "h3"]), "declares every member of dqlite lost"),
    ("winner-not-a-member", dict(CONFIRM, recover_winner="h9"), "recover_winner=h9"),
    ("winner-declared-lost", dict(CONFIRM, recover_winner="h3", recover_lost=["h3"]), "recover_winner=h3"),
    ("bad-address", dict(CONFIRM, recover_addresses={"h2": "10.254.81.99"}), "recover_addresses="),
    ("address-for-unknown-host", dict(CONFIRM, recover_addresses={"h9": "10.0.0.1:9001"}), "recover_addresses="),
    ("max-voters-zero", dict(CONFIRM, recover_max_voters=0), "recover_max_voters=0"),
    ("max-voters-abc", dict(CONFIRM, recover_max_voters="abc"), "recover_max_voters"),
    ("progress-interval-zero", dict(CONFIRM, recover_progress_interval=0), "recover_progress_interval=0"),
    ("step-timeout-negative", dict(CONFIRM, recover_step_timeout=-5), "recover_step_timeout=-5"),
    ("service-commands-without-stop",
     dict(CONFIRM, recover_service_commands={"start": "/bin/true", "status": "/bin/true"}),
     "recover_service_commands"),
    ("service-control-unknown", dict(CONFIRM, recover_service_control="sysv"), "recover_service_control=sysv"),
    ("relative-state-dir", dict(CONFIRM, recover_state_dir="var/backups/qr"), "recover_state_dir=var/backups/qr"),
    ("relative-data-dir", dict(CONFIRM, recover_data_dir="backend"), "recover_data_dir=backend"),
    ("missing-confirm", {}, "recover_confirm is not set"),
    ("confirm-not-yes", {"recover_confirm": "maybe"}, "recover_confirm"),
    ("declared-lost-but-reachable", dict(CONFIRM, recover_lost=["h3"]), "recover_lost"),
    ("group-does-not-exist", dict(CONFIRM, recover_group="nosuchgroup"), "recover_group=nosuchgroup"),
    # a misspelt input is not ignored
    ("misspelt-winner", dict(CONFIRM, recover_winer="h2"), "unknown variable recover_winer, did you mean recover_winner?"),
    ("misspelt-lost", dict(CONFIRM, recover_lots=["h3"]), "unknown variable recover_lots, did you mean recover_lost?"),
    # a string where a list or a dict is expected (-e NAME=VALUE gives strings): argument_spec
    # validation passes it, and the role failed late, after the stop
    ("shell-a-string", dict(CONFIRM, recover_shell="dqlite"),
     "recover_shell=\"dqlite\" is a string, not a list of strings: give it as JSON, "
     "e.g. -e '{\"recover_shell\": [\"dqlite\"]}'"),
    ("shell-a-command-line", dict(CONFIRM, recover_shell="dqlite -s x"),
     'recover_shell="dqlite -s x" is a string, not a list of strings'),
    ("lost-a-string", dict(CONFIRM, recover_lost="h3"), 'recover_lost="h3" is a string, not a list of strings'),
    ("services-a-string", dict(CONFIRM, recover_services="dqlite"),
     'recover_services="dqlite" is a string, not a list of strings'),
    ("addresses-a-string", dict(CONFIRM, recover_addresses="h2=10.0.0.7:9001"),
     'recover_addresses="h2=10.0.0.7:9001" is a string, not a dict'),
    ("winner-a-list", dict(CONFIRM, recover_winner=["h2"]), 'recover_winner=["h2"] is a list, not a string'),
    # what argument_spec validation refuses itself (it cannot convert them), by name, value and type
    ("service-commands-a-list", dict(CONFIRM, recover_service_commands=["start", "stop", "status"]),
     "argument 'recover_service_commands' is of type list and we were unable to convert to dict"),
    ("accept-loss-not-a-boolean", dict(CONFIRM, recover_accept_loss="maybe"),
     "argument 'recover_accept_loss' is of type str and we were unable to convert to bool: The value 'maybe'"),
    ("reach-timeout-not-a-number", dict(CONFIRM, recover_reach_timeout="soon"),
     "argument 'recover_reach_timeout' is of type str and we were unable to convert to int: \"'soon'\""),
    # the flavors a recovery can use, in one message (not a second one about LXD)
    ("unknown-flavor-one-message", dict(CONFIRM, recover_flavor="microk9s"),
     "recover_flavor=microk9s: unknown flavor of dqlite; choose one of go-dqlite-app, microk8s, k8s-snap, microcluster"),
    # the flavor's tools, looked for on every member before the stop: microk8s's shell and TLS
    # files are not in the lab
    ("flavor-tools-missing", dict(CONFIRM, recover_flavor="microk8s"),
     "h1: the dqlite shell /snap/microk8s/current/bin/dqlite is not an executable file (the shell of "
     "recover_flavor=microk8s): install it, or set recover_shell"),
    ("tls-files-missing", dict(CONFIRM, recover_flavor="microk8s", recover_shell=["dqlite"]),
     ("h1: /var/snap/microk8s/current/var/kubernetes/backend/", "/cluster.crt and /var/snap/microk8s/",
      "/cluster.key missing or unreadable: recover_flavor=microk8s reaches dqlite over TLS with the cluster.crt and "
      "cluster.key of the data directory; set recover_data_dir")),
]


@contextlib.contextmanager
def _frozen(lab):
    """The running cluster, every dqlite-demo stopped with SIGSTOP: yields (fingerprint, pids)."""
    services = _services(lab)
    assert all(services.values()), services
    try:
        for pid in services.values():
            os.kill(pid, signal.SIGSTOP)
        yield _fingerprint(lab), services
    finally:
        for pid in services.values():
            os.kill(pid, signal.SIGCONT)


def _assert_nothing_changed(lab, baseline, controller, what):
    fingerprint, services = baseline
    now = _fingerprint(lab)
    changed = sorted(k for k in set(now) | set(fingerprint) if now.get(k) != fingerprint.get(k))
    assert not changed, (what, "data dir changed", changed)
    assert _services(lab) == services, (what, "dqlite services changed")
    _no_state(lab, controller)


@pytest.mark.parametrize("extra,message", [b[1:] for b in BAD_INPUTS], ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_refused_by_name_and_nothing_changes(lab, tmp_path, extra, message):
    controller = tmp_path / "controller"
    with _frozen(lab) as baseline:
        proc = _recover(lab, controller, extra)
        output = proc.stdout + proc.stderr
        assert proc.returncode != 0, output[-3000:]
        for part in message if isinstance(message, tuple) else (message,):
            assert part in output, (part, output[-3000:])
        _assert_nothing_changed(lab, baseline, controller, extra)


def test_unknown_flavor_gets_one_message(lab, tmp_path):
    """Not a second one saying the (unknown) flavor is inspect-only, as if it were one of those."""
    proc = _recover(lab, tmp_path / "controller", dict(CONFIRM, recover_flavor="microk9s"), "--check")
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-3000:]
    assert "unknown flavor" in output and "inspect-only" not in output and "LXD" not in output, output[-3000:]


# Host variables, as in host_vars/: (id, host vars, extra vars, what the message must contain).
BAD_HOST_INPUTS = [
    ("misspelt-host-var", {"h3": {"recover_data_dri": "/var/lib/x"}}, CONFIRM,
     "unknown variable recover_data_dri, did you mean recover_data_dir? (set for h3)"),
    ("host-shell-a-string", {"h2": {"recover_shell": "dqlite"}}, CONFIRM,
     ("recover_shell=\"dqlite\" is a string, not a list of strings", "(set for h2)")),
    ("host-without-the-shell", {"h2": {"recover_shell": ["/usr/local/bin/no-dqlite-here"]}}, CONFIRM,
     "h2: the dqlite shell /usr/local/bin/no-dqlite-here is not an executable file (recover_shell): install it, "
     "or set recover_shell"),
    ("host-shell-not-on-path", {"h3": {"recover_shell": ["no-dqlite-here", "-f", "json"]}}, CONFIRM,
     "h3: the dqlite shell no-dqlite-here is not on the PATH (recover_shell)"),
]


@pytest.mark.parametrize("host_vars,extra,message", [b[1:] for b in BAD_HOST_INPUTS],
                         ids=[b[0] for b in BAD_HOST_INPUTS])
def test_bad_host_input_is_refused_by_host_and_name_and_nothing_changes(lab, tmp_path, host_vars, extra, message):
    controller = tmp_path / "controller"
    with _frozen(lab) as baseline:
        proc = _recover(lab, controller, extra, *_host_vars(tmp_path / "host_vars.json", host_vars))
        output = proc.stdout + proc.stderr
        assert proc.returncode != 0, output[-3000:]
        for part in message if isinstance(message, tuple) else (message,):
            assert part in output, (part, output[-3000:])
        _assert_nothing_changed(lab, baseline, controller, host_vars)


def test_inspect_shows_a_member_without_the_shell_and_goes_on(lab, tmp_path):
    """inspect.yml reports what a recovery would stop on, and still shows every member and the plan."""
    controller = tmp_path / "controller"
    with _frozen(lab) as baseline:
        proc = _recover(lab, controller, {}, *_host_vars(tmp_path / "host_vars.json",
                                                         {"h2": {"recover_shell": ["/usr/local/bin/no-dqlite-here"]}}),
                        playbook="playbooks/inspect.yml")
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, output[-4000:]
        assert ("h2: the dqlite shell /usr/local/bin/no-dqlite-here is not an executable file (recover_shell)"
                in output and "a recovery would stop here, before changing anything" in output), output[-4000:]
        assert "h1: the dqlite shell" not in output and "h3: the dqlite shell" not in output, output[-4000:]
        assert "winner: " in output, output[-4000:]
        _assert_nothing_changed(lab, baseline, controller, "inspect")


def test_unreachable_member_not_declared_lost_is_refused(lab, tmp_path):
    """h3 cut off the network while the controller still holds an open ssh connection to it
    (ControlPersist), the hard case: the ping must not wait on the dead connection forever."""
    controller = tmp_path / "controller"
    h3 = lab.host("h3")
    assert lab.ssh(h3, ["true"]).returncode == 0  # a live ControlMaster to h3
    with _frozen(lab) as baseline:
        lab.partition(h3)
        try:
            proc = _recover(lab, controller, CONFIRM)
        finally:
            lab.heal(h3)
            lab._close_ssh_masters()  # the one to h3 may still wait out TCP's back-off
        output = proc.stdout + proc.stderr
        assert proc.returncode != 0, output[-3000:]
        assert "unreachable and not declared lost: h3" in output and "recover_lost" in output, output[-3000:]
        _assert_nothing_changed(lab, baseline, controller, "partitioned h3")


def test_check_mode_prints_the_plan_and_changes_nothing(lab, tmp_path):
    """--check on a cluster that lost power: the plan, and no change anywhere (services stay down)."""
    controller = tmp_path / "controller"
    lab.power_off("dqlite")
    try:
        before, services = _fingerprint(lab), _services(lab)
        assert not any(services.values())
        proc = _recover(lab, controller, {}, "--check")  # no recover_confirm needed to look
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, output[-4000:]
        for part in ("winner: ", "source: built once on ", "plan hash: ", "new membership: h1=voter, h2=voter, h3=voter",
                     "restore from"):
            assert part in output, (part, output[-4000:])
        _assert_nothing_changed(lab, (before, services), controller, "--check")
        # and with recover_confirm=yes too: --check still changes nothing
        proc = _recover(lab, controller, CONFIRM, "--check")
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
        _assert_nothing_changed(lab, (before, services), controller, "--check -e recover_confirm=yes")
    finally:
        lab.start_all(lab.hosts(), "dqlite")
