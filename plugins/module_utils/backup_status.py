# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The backup status report: from the catalogs read at every destination (backup_catalog's
Catalog.to_dict(), as the backup_catalog module returns them), a table per cluster, the
staleness verdict, and the same as Prometheus metrics in node_exporter's textfile-collector
format. Pure functions; `render_metrics` is the one place that says what the metrics are.

Private to this collection; may change without notice. Standard library only.
"""
from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any, Iterable

PREFIX = "quorum_recovery_"
METRICS = [
    # (name, type, help)
    ("backup_newest_verified_timestamp_seconds", "gauge",
     "Creation time (Unix seconds) of the newest verified backup; 0 when there is none."),
    ("backup_newest_verified_size_bytes", "gauge", "Size of the newest verified backup's payload as stored."),
    ("backup_newest_verified_sequence", "gauge",
     "The cluster-wide backup counter (docs/backup-format.md) of the newest verified backup."),
    ("backups", "gauge", "Backups kept at the destination (orphans included)."),
    ("backup_orphans", "gauge", "Orphaned backups kept at the destination (never pruned, never restored without naming them)."),
    ("backup_verification_failures", "gauge",
     "Backups whose verification failed (recorded in the manifest, or the payload no longer matches it)."),
    ("backup_interrupted_writes", "gauge", "Payloads without a manifest (interrupted writes) at the destination."),
]


def human_age(seconds: float) -> str:
    seconds = int(seconds)
    sign = "-" if seconds < 0 else ""  # a clock in the future shows as a negative age
    seconds = abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            major, rest = divmod(seconds, size)
            minor = {"d": ("h", 3600), "h": ("m", 60), "m": ("s", 1)}[unit]
            return "%s%d%s%02d%s" % (sign, major, unit, rest // minor[1], minor[0])
    return "%s%ds" % (sign, seconds)


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return ("%d %s" % (value, unit)) if unit == "B" else ("%.1f %s" % (value, unit))
        value /= 1024
    return "%d B" % size  # not reached


def _clusters(catalogs: Iterable[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for catalog in catalogs:
        out.setdefault((catalog["cluster"], catalog["engine"]), []).append(catalog)
    return dict(sorted(out.items()))


def newest_verified(catalogs: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """The newest verified backup (no orphan) among catalogs (any destinations), or None."""
    good = [b for c in catalogs for b in c["backups"] if b["verified"] and not b["orphan"]]
    return max(good, key=lambda b: (b["counter"], b["where"])) if good else None


def stale(catalogs: Iterable[dict[str, Any]], max_age: int, now: float) -> list[dict[str, Any]]:
    """Per cluster and engine whose newest verified backup (at any destination) is older than
    max_age seconds, or missing: {cluster, engine, newest, age_seconds, message}."""
    out: list[dict[str, Any]] = []
    for (cluster, engine), group in _clusters(catalogs).items():
        newest = newest_verified(group)
        if newest is None:
            places = ", ".join(c["where"] for c in group)
            out.append({"cluster": cluster, "engine": engine, "newest": None, "age_seconds": None,
                        "message": "%s %s: no verified backup at %s" % (cluster, engine, places)})
            continue
        age = now - newest["created_epoch"]
        if age > max_age:
            out.append({"cluster": cluster, "engine": engine, "newest": newest["name"], "age_seconds": int(age),
                        "message": "%s %s: the newest verified backup %s (at %s) is %s old, more than %s"
                        % (cluster, engine, newest["name"], newest["where"], human_age(age), human_age(max_age))})
    return out


def _state(backup: dict[str, Any]) -> str:
    if backup["orphan"]:
        return "orphan"
    if backup.get("payload_error"):
        return "FAILED (payload)"
    return {"ok": "yes", "failed": "FAILED", "none": "no"}[backup["verification"]] + (
        ", sha256 ok" if backup.get("payload_checked") and backup["verification"] == "ok" else "")


def render_table(catalogs: Iterable[dict[str, Any]], now: float) -> str:
    """A table per cluster and engine: every backup at every destination, newest first."""
    blocks = []
    for (cluster, engine), group in _clusters(catalogs).items():
        rows = [("counter", "position", "age", "size", "verified", "where", "name")]
        backups = sorted((b for c in group for b in c["backups"]), key=lambda b: (-b["counter"], b["where"]))
        for b in backups:
            position = "%d/%d" % (b["position"]["term"], b["position"]["index"])
            if "revision" in b["position"]:
                position += " rev %s" % b["position"]["revision"]
            rows.append((str(b["counter"]), position, human_age(now - b["created_epoch"]), human_size(b["size"]),
                         _state(b) + (", age-encrypted" if b["encrypted"] else ""), b["where"], b["name"]))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        newest = newest_verified(group)
        lines = ["%s %s: %d backup%s at %d destination%s; newest verified: %s" % (
            cluster, engine, len(backups), "" if len(backups) == 1 else "s", len(group), "" if len(group) == 1 else "s",
            "%s (%s old, at %s)" % (newest["name"], human_age(now - newest["created_epoch"]), newest["where"])
            if newest else "NONE")]
        for row in rows:
            lines.append("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        for c in group:
            for item in c.get("interrupted", []):
                lines.append("  interrupted write (no manifest, not a backup): %s at %s" % (item["file"], c["where"]))
            for item in c.get("invalid", []):
                lines.append("  invalid manifest (not a backup): %s" % item["error"])
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) if blocks else "no backups found"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return repr(int(value)) if float(value).is_integer() else repr(float(value))


def metric_samples(catalogs: Iterable[dict[str, Any]]) -> dict[str, list[tuple[dict[str, str], float]]]:
    """metric name (without prefix) -> [(labels, value)], one sample per cluster, engine and destination."""
    samples: dict[str, list[tuple[dict[str, str], float]]] = {name: [] for name, _t, _h in METRICS}
    for catalog in sorted(catalogs, key=lambda c: (c["cluster"], c["engine"], c["where"])):
        labels = {"cluster": catalog["cluster"], "engine": catalog["engine"], "destination": catalog["where"]}
        newest = newest_verified([catalog])
        samples["backup_newest_verified_timestamp_seconds"].append((labels, newest["created_epoch"] if newest else 0))
        if newest:
            samples["backup_newest_verified_size_bytes"].append((labels, newest["size"]))
            samples["backup_newest_verified_sequence"].append((labels, newest["counter"]))
        samples["backups"].append((labels, len(catalog["backups"])))
        samples["backup_orphans"].append((labels, sum(1 for b in catalog["backups"] if b["orphan"])))
        failed = sum(1 for b in catalog["backups"] if b["verification"] == "failed")
        samples["backup_verification_failures"].append((labels, failed))
        samples["backup_interrupted_writes"].append((labels, len(catalog.get("interrupted", []))))
    return samples


def render_metrics(catalogs: Iterable[dict[str, Any]]) -> str:
    """The textfile-collector text: for each metric # HELP, # TYPE, then its samples."""
    samples = metric_samples(catalogs)
    lines = []
    for name, kind, text in METRICS:
        if not samples[name]:
            continue
        lines.append("# HELP %s%s %s" % (PREFIX, name, text.replace("\\", "\\\\").replace("\n", "\\n")))
        lines.append("# TYPE %s%s %s" % (PREFIX, name, kind))
        for labels, value in samples[name]:
            rendered = ",".join('%s="%s"' % (k, _escape(v)) for k, v in sorted(labels.items()))
            lines.append("%s%s{%s} %s" % (PREFIX, name, rendered, _number(value)))
    return "\n".join(lines) + "\n"


def parse_metrics(text: str) -> dict[str, Any]:
    """Parse the text exposition format strictly enough to test what render_metrics writes:
    returns {"help": {name: text}, "type": {name: type}, "samples": [(name, labels, value)]};
    raises ValueError naming the line for anything malformed (a sample before its TYPE, a
    TYPE given twice, a bad label, a value that is no number, a missing final newline)."""
    if text and not text.endswith("\n"):
        raise ValueError("the text does not end with a newline")
    helps: dict[str, str] = {}
    types: dict[str, str] = {}
    samples = []
    seen = set()
    label_re = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            parts = line.split(" ", 3)
            if len(parts) < 4 or not re.match(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$", parts[2]):
                raise ValueError("line %d: malformed %s: %r" % (number, parts[1], line))
            table = helps if parts[1] == "HELP" else types
            if parts[2] in table:
                raise ValueError("line %d: second %s for %s" % (number, parts[1], parts[2]))
            if parts[1] == "TYPE" and parts[3] not in ("counter", "gauge", "histogram", "summary", "untyped"):
                raise ValueError("line %d: unknown type %r" % (number, parts[3]))
            table[parts[2]] = parts[3]
            continue
        if not line or line.startswith("#"):
            continue
        match = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$", line)
        if not match:
            raise ValueError("line %d: malformed sample %r" % (number, line))
        name, body, value = match.groups()
        if name not in types:
            raise ValueError("line %d: sample of %s before its # TYPE" % (number, name))
        labels = {}
        rest = body or ""
        while rest:
            label = label_re.match(rest)
            if not label:
                raise ValueError("line %d: malformed labels %r" % (number, body))
            labels[label.group(1)] = label.group(2).replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\")
            rest = rest[label.end():]
            if rest.startswith(","):
                rest = rest[1:]
            elif rest:
                raise ValueError("line %d: malformed labels %r" % (number, body))
        key = (name, tuple(sorted(labels.items())))
        if key in seen:
            raise ValueError("line %d: sample %s%s given twice" % (number, name, labels))
        seen.add(key)
        samples.append((name, labels, float(value)))
    return {"help": helps, "type": types, "samples": samples}


def report(catalogs: list[dict[str, Any]], max_age: int, now: float | None = None) -> dict[str, Any]:
    """Everything the status playbook shows: table, stale list, metrics text."""
    now = time.time() if now is None else now
    return {"table": render_table(catalogs, now), "stale": stale(catalogs, max_age, now),
            "metrics": render_metrics(catalogs)}
