"""Lab data client: writes and reads deterministic keys on one lab host.

Runs inside a lab host's namespaces (the lab enters them with nsenter), talks only to
addresses of that host's network namespace, and prints one JSON object.

  qrlab-client etcd-put    --endpoint URL --prefix P --count N [--start I] [--size S] [TLS]
  qrlab-client etcd-check  --endpoint URL --prefix P --count N [--start I] [--size S] [TLS]
  qrlab-client etcd-keys   --endpoint URL --prefix P [TLS]
  qrlab-client etcd-ack-writer --endpoint URL --prefix P --ack-file F [--size S] [--seconds T] [TLS]
  qrlab-client dqlite-put  --api HOST:PORT --prefix P --count N [--start I] [--size S]
  qrlab-client dqlite-check --api HOST:PORT --prefix P --count N [--start I] [--size S]

TLS is --cacert FILE --cert FILE --key FILE: an https endpoint is verified against the CA and
given the client certificate. etcd is reached through its gRPC gateway (JSON over HTTP at
/v3/kv/...), the same path in 3.4 and 3.5.

The value of key P<i> is a pure function of the key and the size, so a check knows exactly
what every member must return. etcd reads are serializable: each member answers from its own
store, so a check proves that member holds the data.

etcd-ack-writer puts P<i> for i = 0, 1, ... until it is ended (or --seconds pass), on one
kept-alive connection, and appends each key to the ack file, flushed and fsynced, only after
etcd acknowledged its put. A put that failed (the member gone, say) is not written down and
the writer goes on with the next key, so the file holds exactly the acknowledged keys.
"""
import argparse
import base64
import http.client
import json
import os
import random
import signal
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request


def value_for(key, size):
    unit = (key + "|").encode()
    return (unit * (size // len(unit) + 1))[:size]


TLS = {}  # ssl context for https endpoints, set by main() from --cacert/--cert/--key


def tls_context(cacert, cert, key):
    context = ssl.create_default_context(cafile=cacert)
    if cert:
        context.load_cert_chain(cert, key)
    return context


_CONNECTIONS = {}  # (scheme, host, port) -> a kept-alive connection


def _post(url, body, timeout=10.0, retry=True):
    """POST JSON to etcd's gRPC gateway on a kept-alive connection (a TLS handshake per put
    would cost more than the put). A connection found closed is opened again once, unless
    retry is False: then any failure is the caller's to see."""
    parts = urllib.parse.urlsplit(url)
    key = (parts.scheme, parts.hostname, parts.port)
    data = json.dumps(body).encode()
    for attempt in (1, 2):
        conn = _CONNECTIONS.get(key)
        if conn is None:
            if parts.scheme == "https":
                conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout, context=TLS.get("context"))
            else:
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
            _CONNECTIONS[key] = conn
        try:
            conn.request("POST", parts.path, data, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            reply = resp.read()
        except (OSError, http.client.HTTPException):
            conn.close()
            del _CONNECTIONS[key]
            if attempt == 2 or not retry:
                raise
            continue
        if resp.status != 200:
            raise RuntimeError("POST %s: HTTP %d %s" % (url, resp.status, reply[:300].decode(errors="replace")))
        return json.loads(reply)
    raise AssertionError("not reached")


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


def etcd_keys(args):
    """Every key under the prefix that this member holds (serializable: its own store)."""
    prefix = args.prefix.encode()
    range_end = prefix[:-1] + bytes([prefix[-1] + 1])
    keys, key = [], prefix
    while True:
        reply = _post(args.endpoint + "/v3/kv/range", {"key": _b64(key), "range_end": _b64(range_end),
                                                       "serializable": True, "keys_only": True, "limit": 5000})
        kvs = reply.get("kvs", [])
        keys.extend(base64.b64decode(kv["key"]).decode() for kv in kvs)
        if not reply.get("more"):
            return {"keys": keys}
        key = base64.b64decode(kvs[-1]["key"]) + b"\0"


def etcd_ack_writer(args):
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    deadline = time.monotonic() + args.seconds if args.seconds else None
    acknowledged, failed, i = 0, 0, 0
    with open(args.ack_file, "a") as acks:
        while not stop and (deadline is None or time.monotonic() < deadline):
            key = "%s%06d" % (args.prefix, i)
            i += 1
            try:
                reply = _post(args.endpoint + "/v3/kv/put", {"key": _b64(key), "value": _b64(value_for(key, args.size))},
                              timeout=5, retry=False)
                if "header" not in reply:
                    raise RuntimeError("put %s: %s" % (key, reply))
            except (OSError, ValueError, RuntimeError, http.client.HTTPException):
                failed += 1
                time.sleep(0.01)
                continue
            acks.write(key + "\n")
            acks.flush()
            os.fsync(acks.fileno())
            acknowledged += 1
    return {"acknowledged": acknowledged, "failed": failed}


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
    parser.add_argument("action", choices=["etcd-put", "etcd-check", "etcd-keys", "etcd-ack-writer", "dqlite-put", "dqlite-check"])
    parser.add_argument("--endpoint", default="http://127.0.0.1:2379")
    parser.add_argument("--cacert")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--ack-file")
    parser.add_argument("--seconds", type=float, default=0, help="etcd-ack-writer: stop after this long (0: when ended)")
    parser.add_argument("--api")
    parser.add_argument("--prefix", default="key")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--size", type=int, default=32)
    args = parser.parse_args(argv)
    if args.action.startswith("dqlite") and not args.api:
        parser.error("--api is required for %s" % args.action)
    if args.action == "etcd-ack-writer" and not args.ack_file:
        parser.error("--ack-file is required for etcd-ack-writer")
    if args.endpoint.startswith("https:") or args.cacert:
        TLS["context"] = tls_context(args.cacert, args.cert, args.key)
    action = {"etcd-put": etcd_put, "etcd-check": etcd_check, "etcd-keys": etcd_keys, "etcd-ack-writer": etcd_ack_writer,
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
