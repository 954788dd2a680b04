"""Command line of the lab: python3 -m lab {up,down,status,inventory,kill,power-off,power-off-mid-writes,partition,
heal,readdress,corrupt,churn,exec}."""
import argparse
import json
import sys

from .base import ETCD_BIN_DIRS
from .core import DEFAULT_STATE, DEFAULT_SUBNET, MAX_HOSTS, LabError
from .microk8s import SHAPES, lab_class


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m lab", description=__doc__)
    parser.add_argument("--state", default=str(DEFAULT_STATE), help="lab state directory (env QRLAB_STATE)")
    parser.add_argument("--subnet", default=DEFAULT_SUBNET, help="private lab subnet (env QRLAB_SUBNET)")
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="bring up N hosts with healthy etcd and dqlite clusters")
    up.add_argument("-n", "--hosts", type=int, default=3, help="number of hosts, 1..%d" % MAX_HOSTS)
    up.add_argument("--keys", type=int, default=1000, help="keys to load into each cluster")
    up.add_argument("--etcd-snapshot-count", type=int, default=1000)
    up.add_argument("--etcd-version", choices=sorted(ETCD_BIN_DIRS),
                    help="etcd to run (env QRLAB_ETCD_VERSION; default 3.4, Debian's)")
    up.add_argument("--etcd-tls", action=argparse.BooleanOptionalAction, default=None,
                    help="etcd over https with client and peer certificates (env QRLAB_ETCD_TLS=1)")
    up.add_argument("--backup-host", action="store_true",
                    help="one more host, sshd only, in the inventories' group backup_hosts (backup.yml's destination)")
    up.add_argument("--dqlite-shape", choices=SHAPES,
                    help="dqlite member: demo (dqlite-demo, the go-dqlite-app flavor), microk8s (a k8s-dqlite-shaped "
                    "member with TLS at MicroK8s's paths, for the microk8s flavor) or k8s-snap (the same at k8s-snap's); "
                    "env QRLAB_DQLITE_SHAPE, default demo")
    up.add_argument("--lxd", action="store_true",
                    help="also an LXD cluster (Debian's lxd 5.0.2), one daemon per host (lab/lxd.py)")
    down = sub.add_parser("down", help="stop every lab process and remove namespaces, links, mounts")
    down.add_argument("--keep-state", action="store_true", help="keep the hosts' data directories")
    sub.add_parser("status", help="print the member table")
    p = sub.add_parser("inventory", help="print the path of the Ansible inventory")
    p.add_argument("--etcd", action="store_true", help="the inventory with the recover role's etcd variables")
    for name, helptext in (("kill", "SIGKILL one engine on a host (power loss)"),):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("host")
        p.add_argument("service", choices=["etcd", "dqlite", "lxd"])
    p = sub.add_parser("power-off", help="SIGKILL an engine on every host")
    p.add_argument("service", choices=["etcd", "dqlite", "lxd"])
    p = sub.add_parser("power-off-mid-writes", help="SIGKILL every etcd member at once while a writer on each "
                       "host writes; print the acknowledged keys' count and the kills' spread")
    p.add_argument("--seconds", type=float, default=2.0, help="how long the writers write first")
    p.add_argument("--prefix", default="acked")
    p.add_argument("--writers-per-host", type=int, default=1)
    for name in ("partition", "heal"):
        sub.add_parser(name, help="%s a host's link" % name).add_argument("host")
    p = sub.add_parser("readdress", help="give a host a new address (engines stopped on it first)")
    p.add_argument("host")
    p.add_argument("address", help="a free address of the lab subnet")
    p = sub.add_parser("corrupt", help="flip bytes at an offset, or truncate, a file as a host sees it")
    p.add_argument("host")
    p.add_argument("path")
    p.add_argument("--offset", type=int)
    p.add_argument("--flip", type=int, default=1, help="number of bytes to flip (xor 0xff)")
    p.add_argument("--truncate", type=int, help="truncate to this many bytes instead")
    p = sub.add_parser("churn", help="write enough to make snapshots and new WAL files")
    p.add_argument("host")
    p.add_argument("engine", choices=["etcd", "dqlite"])
    p.add_argument("--count", type=int, default=2000)
    p.add_argument("--size", type=int, default=1024)
    p = sub.add_parser("exec", help="run a command inside a host's namespaces")
    p.add_argument("host")
    p.add_argument("argv", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    try:
        # `up` brings up the shape asked for; every other command uses the one the lab was brought up with
        cls = lab_class(getattr(args, "dqlite_shape", None), None if args.cmd == "up" else args.state)
        lab = cls(args.state, args.subnet, etcd_version=getattr(args, "etcd_version", None),
                  etcd_tls=getattr(args, "etcd_tls", None))
        if args.cmd == "up":
            lab.up(args.hosts, keys=args.keys, etcd_snapshot_count=args.etcd_snapshot_count,
                   backup_host=args.backup_host, lxd=args.lxd)
            print(lab.table())
            print("\netcd %s%s (%s)" % (lab.etcd_version, " with TLS" if lab.etcd_tls else "", lab.etcd_bin_dir))
            print("inventory: %s" % lab.inventory_path)
            print("etcd inventory: %s" % lab.etcd_inventory_path)
            if args.lxd:
                print("lxd inventory: %s" % lab.lxd_inventory_path)
        elif args.cmd == "down":
            lab.down(keep_state=args.keep_state)
        elif args.cmd == "status":
            print(lab.table())
        elif args.cmd == "inventory":
            print(lab.etcd_inventory_path if args.etcd else lab.inventory_path)
        elif args.cmd == "kill":
            lab.kill(lab.host(args.host), args.service)
        elif args.cmd == "power-off":
            lab.power_off(args.service)
        elif args.cmd == "power-off-mid-writes":
            result = lab.power_off_mid_writes("etcd", args.seconds, args.prefix, writers_per_host=args.writers_per_host)
            print(json.dumps({"acknowledged": len(result["acknowledged"]), "kill_spread_ms": result["kill_spread_ms"],
                              "writers": result["writers"]}))
        elif args.cmd == "partition":
            lab.partition(lab.host(args.host))
        elif args.cmd == "heal":
            lab.heal(lab.host(args.host))
        elif args.cmd == "readdress":
            host = lab.readdress(lab.host(args.host), args.address)
            print("%s is now %s (dqlite %s)" % (host.name, host.address, host.dqlite_address))
        elif args.cmd == "corrupt":
            print(json.dumps(lab.corrupt(lab.host(args.host), args.path, args.offset, args.flip, args.truncate)))
        elif args.cmd == "churn":
            lab.churn(lab.host(args.host), args.engine, args.count, args.size)
        elif args.cmd == "exec":
            argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
            proc = lab.exec(lab.host(args.host), argv, check=False)
            sys.stdout.write(proc.stdout)
            sys.stderr.write(proc.stderr)
            return proc.returncode
    except LabError as exc:
        print("lab: %s" % exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
