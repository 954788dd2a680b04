"""Lab data client: writes and reads deterministic keys on one lab host.

Runs inside a lab host's namespaces (the lab enters them with nsenter), talks only to
addresses of that host's network namespace, and prints one JSON object.

  qrlab-client etcd-put    --endpoint URL --prefix P --count N [--start I] [--size S]
  qrlab-client etcd-check  --endpoint URL --prefix P --count N [--start I] [--size S]
  qrlab-client dqlite-put  --api HOST:PORT --prefix P --count N [--start I] [--size S]
  qrlab-client dqlite-check --api HOST:PORT --prefix P --count N [--start I] [--size S]

The value of key P<i> is a pure function of the key and the size, so a check knows exactly
what every member must return. etcd reads are serializable: each member answers from its own
store, so a check proves that member holds the data.
"""
import argparse
import base64
import json
import random
import sys
import time
import urllib.error
import urllib.request


def value_for(key, size):
    unit = (key + "|").encode()
    return (unit * (size // len(unit) + 1))[:size]


def _post(url, body, timeout=10.0):
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def _b64(data):
    return base64.b64encode(data if isinstance(data, bytes) else data.encode()).decode()


def etcd_put(args):
    for i in range(args.start, args.start + args.count):
        key = "%s%06d" % (args.prefix, i)
        _post(args.endpoint + "/v3/kv/put", {"key": _b64(key), "value": _b64(value_for(key, args.size))})
    return {"written": args.count}


def etcd_check(args):
    prefix = args.prefix.encode()
    range_end = prefix[:-1] + bytes([prefix[-1] + 1])
    found, kvs, key = {}, [], prefix
    while True:
        reply = _post(args.endpoint + "/v3/kv/range",
                      {"key": _b64(key), "range_end": _b64(range_end), "serializable": True, "limit": 1000})
        kvs = reply.get("kvs", [])
        for kv in kvs:
            found[base64.b64decode(kv["key"]).decode()] = base64.b64decode(kv.get("value", ""))
        if not reply.get("more"):
            break
        key = base64.b64decode(kvs[-1]["key"]) + b"\0"
    return _compare(args, found)


def _compare(args, found):
    missing, wrong = [], []
    for i in range(args.start, args.start + args.count):
        key = "%s%06d" % (args.prefix, i)
        if key not in found:
            missing.append(key)
        elif found[key] != value_for(key, args.size):
            wrong.append(key)
    return {"expected": args.count, "found": len(found), "missing": len(missing), "wrong": len(wrong),
            "first_missing": missing[:5], "first_wrong": wrong[:5], "ok": not missing and not wrong}


def _dqlite_request(url, method, data=None, attempts=40):
    """One call to the dqlite-demo API; busy/locked answers are retried with jitter."""
    last = ""
    for attempt in range(attempts):
        req = urllib.request.Request(url, data=data, method=method)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                body = resp.read().decode().rstrip("\n")
        except (urllib.error.URLError, OSError) as exc:
            body = "Error: %s" % exc
        transient = ("database is locked", "no available dqlite leader", "not leader",
                     "leadership lost", "connection refused", "timed out", "checkpoint in progress")
        if not body.startswith("Error:") or not any(t in body.lower() for t in transient):
            return body
        last = body
        time.sleep(min(2.0, 0.02 * (2 ** min(attempt, 6))) * (0.5 + random.random()))
    raise RuntimeError("%s %s kept failing: %s" % (method, url, last))


def dqlite_put(args):
    for i in range(args.start, args.start + args.count):
        key = "%s%06d" % (args.prefix, i)
        body = _dqlite_request("http://%s/%s" % (args.api, key), "PUT", value_for(key, args.size))
        if body != "done":
            raise RuntimeError("PUT %s: %s" % (key, body))
    return {"written": args.count}


def dqlite_check(args):
    found = {}
    for i in range(args.start, args.start + args.count):
        key = "%s%06d" % (args.prefix, i)
        body = _dqlite_request("http://%s/%s" % (args.api, key), "GET")
        if body != "Error: sql: no rows in result set":
            found[key] = body.encode()
    return _compare(args, found)


def main(argv):
    parser = argparse.ArgumentParser(prog="qrlab-client")
    parser.add_argument("action", choices=["etcd-put", "etcd-check", "dqlite-put", "dqlite-check"])
    parser.add_argument("--endpoint", default="http://127.0.0.1:2379")
    parser.add_argument("--api")
    parser.add_argument("--prefix", default="key")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--size", type=int, default=32)
    args = parser.parse_args(argv)
    if args.action.startswith("dqlite") and not args.api:
        parser.error("--api is required for %s" % args.action)
    action = {"etcd-put": etcd_put, "etcd-check": etcd_check,
              "dqlite-put": dqlite_put, "dqlite-check": dqlite_check}[args.action]
    try:
        result = action(args)
    except Exception as exc:  # report any failure as data, with a non-zero exit
        print(json.dumps({"error": "%s: %s" % (type(exc).__name__, exc)}))
        return 1
    print(json.dumps(result))
    return 0 if result.get("ok", True) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
