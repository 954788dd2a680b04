"""Service control for one lab host, without systemd.

Usage: qrlab-service NAME {start|stop|restart|status|kill}

Each service is described by /etc/qrlab/services/NAME.json (private to the host):
  {"argv": [...], "stop_timeout": 10, "ready_port": 2379}
The pid file lives in /run/qrlab/NAME.pid and the log in /var/log/qrlab/NAME.log, both private
to the host. Exit codes follow systemctl/LSB: status 0 = running, 3 = not running; start and
stop 0 = done, 1 = failed. `kill` is a power loss: SIGKILL, no clean shutdown.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

CONF_DIR = "/etc/qrlab/services"
RUN_DIR = "/run/qrlab"
LOG_DIR = "/var/log/qrlab"


def pid_alive(pid):
    """True when pid exists and is not a zombie (a killed daemon lingers as one without init)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def read_pid(name):
    try:
        with open(os.path.join(RUN_DIR, name + ".pid")) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def running_pid(name):
    pid = read_pid(name)
    return pid if pid and pid_alive(pid) else None


def port_open(port, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for host in ("127.0.0.1",) + tuple(_own_addresses()):
            try:
                with socket.create_connection((host, port), 0.5):
                    return True
            except OSError:
                pass
        time.sleep(0.2)
    return False


def _own_addresses():
    try:
        out = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", "eth0"],
                             capture_output=True, text=True, check=False).stdout
    except OSError:
        return []
    return [line.split()[3].split("/")[0] for line in out.splitlines() if " inet " in line]


def start(name, conf):
    if running_pid(name):
        return 0
    os.makedirs(RUN_DIR, exist_ok=True)
    os.makedirs(LOG_DIR, exist_ok=True)
    with open(os.path.join(LOG_DIR, name + ".log"), "ab") as log, open(os.devnull, "rb") as null:
        proc = subprocess.Popen(conf["argv"], stdin=null, stdout=log, stderr=log,
                                start_new_session=True, close_fds=True, cwd="/")
    with open(os.path.join(RUN_DIR, name + ".pid"), "w") as f:
        f.write("%d\n" % proc.pid)
    time.sleep(0.3)
    if proc.poll() is not None:
        sys.stderr.write("%s exited at start with code %s; see %s/%s.log\n"
                         % (name, proc.returncode, LOG_DIR, name))
        return 1
    port = conf.get("ready_port")
    if port and not port_open(port, conf.get("ready_timeout", 30)):
        sys.stderr.write("%s started (pid %d) but port %d did not open\n" % (name, proc.pid, port))
        return 1
    return 0


def stop(name, conf, sig=signal.SIGTERM):
    pid = running_pid(name)
    if pid:
        os.kill(pid, sig)
        deadline = time.monotonic() + (0 if sig == signal.SIGKILL else conf.get("stop_timeout", 10))
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(pid):
            # A graceful dqlite stop can hang without quorum: escalate.
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        if pid_alive(pid):
            sys.stderr.write("%s (pid %d) did not die\n" % (name, pid))
            return 1
    try:
        os.unlink(os.path.join(RUN_DIR, name + ".pid"))
    except FileNotFoundError:
        pass
    return 0


def main(argv):
    if len(argv) != 3 or argv[2] not in ("start", "stop", "restart", "status", "kill"):
        sys.stderr.write(__doc__)
        return 2
    name, action = argv[1], argv[2]
    conf_path = os.path.join(CONF_DIR, name + ".json")
    try:
        with open(conf_path) as f:
            conf = json.load(f)
    except (OSError, ValueError) as exc:
        sys.stderr.write("unknown service %r: cannot read %s: %s\n" % (name, conf_path, exc))
        return 4 if action == "status" else 2
    if action == "status":
        pid = running_pid(name)
        print("%s: %s" % (name, "running (pid %d)" % pid if pid else "stopped"))
        return 0 if pid else 3
    if action == "stop":
        return stop(name, conf)
    if action == "kill":
        return stop(name, conf, signal.SIGKILL)
    if action == "restart":
        rc = stop(name, conf)
        if rc:
            return rc
    return start(name, conf)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
