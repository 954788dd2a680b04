# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which backups a retention policy keeps: one pure function, `plan(backups, policy, now)`.

The policy (every key optional, at least one rule):
  keep_last N   the N newest verified backups
  hourly H      the newest verified backup of each of the H newest hours that have one
  daily D       ... of each of the D newest days (UTC) that have one
  weekly W      ... of each of the W newest ISO weeks that have one
  monthly M     ... of each of the M newest months that have one
  max_age A     a cap: no rule keeps a backup older than A (seconds, or "90m", "36h", "30d", "8w")

Periods are counted the way borg and restic count them: the H newest hours THAT HAVE A BACKUP,
not the last H hours of the clock, so a gap in the backups (a week without a run) does not use up
the policy and remove the last good backups. The rules add up: a backup kept by any rule is kept,
with every rule that keeps it named.

Always kept, whatever the policy: orphans (never removed), and the newest verified backup (the one
restore would take). A backup that is not verified never fills a rule's slot: if its check
failed it is removed; if it was never checked (verified null) and is newer than the newest
verified one, it is kept until a verified backup supersedes it (it may be being verified, and
with verification turned off nothing else would stop a prune from emptying the folder);
otherwise it is removed.

Order is the backups' counter (the cluster-wide order); a backup's period is its `created_epoch`
in UTC. A backup created after `now` (a clock in the future) is kept by its rules like any other,
but max_age never removes it, and the result warns about it.

Private to this collection; may change without notice. Standard library only: runs on targets.
"""
from __future__ import annotations

import datetime
import re
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any, Callable, Iterable

RULES = ("keep_last", "hourly", "daily", "weekly", "monthly")
KEYS = RULES + ("max_age",)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class PolicyError(ValueError):
    """A policy that is not as documented; the message names the key."""


def parse_duration(value: Any, name: str = "duration") -> int:
    """Seconds from an integer or a string such as "90", "90s", "45m", "36h", "30d", "8w"."""
    if isinstance(value, bool):
        raise PolicyError("%s=%r: expected seconds or a number with s, m, h, d or w" % (name, value))
    if isinstance(value, int):
        seconds = value
    else:
        match = re.match(r"^\s*(\d+)\s*([smhdw]?)\s*$", str(value))
        if not match:
            raise PolicyError("%s=%r: expected seconds or a number with s, m, h, d or w (e.g. 36h, 30d)" % (name, value))
        seconds = int(match.group(1)) * _UNITS[match.group(2) or "s"]
    if seconds <= 0:
        raise PolicyError("%s=%r: must be more than 0 seconds" % (name, value))
    return seconds


def validate_policy(policy: Any) -> dict[str, int]:
    """The policy with max_age in seconds; PolicyError naming the key for anything else."""
    if not isinstance(policy, dict):
        raise PolicyError("policy: expected a dict with %s, found %r" % (", ".join(KEYS), policy))
    unknown = sorted(set(policy) - set(KEYS))
    if unknown:
        raise PolicyError("policy: unknown key %s; the keys are %s" % (", ".join(map(str, unknown)), ", ".join(KEYS)))
    out = {}
    for key in RULES:
        value = policy.get(key)
        if value is None:
            continue
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise PolicyError("policy.%s=%r: expected a whole number >= 0" % (key, value))
        out[key] = value
    if not any(out.values()):
        raise PolicyError("policy: no rule keeps anything (give keep_last, hourly, daily, weekly or monthly > 0); "
                          "a prune with it would remove every backup but the newest verified")
    if policy.get("max_age") is not None:
        out["max_age"] = parse_duration(policy["max_age"], "policy.max_age")
    return out


def _period(key: str) -> Callable[[int], str]:
    formats = {"hourly": "%Y-%m-%dT%H", "daily": "%Y-%m-%d", "monthly": "%Y-%m"}
    if key == "weekly":
        return _iso_week
    return lambda epoch: time.strftime(formats[key], time.gmtime(epoch))


def _iso_week(epoch: int) -> str:
    year, week, _day = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).isocalendar()
    return "%04d-W%02d" % (year, week)


def plan(backups: Iterable[dict[str, Any]], policy: dict[str, Any], now: float) -> dict[str, Any]:
    """backups: dicts with name, counter, created_epoch, verification ("ok", "failed" or "none";
    or `verified` true/false) and orphan. Returns {keep: [...], remove: [...], warnings: [...]},
    each item {name, counter, created_epoch, reasons: [..], reason: "..."}, by counter, newest first."""
    rules = validate_policy(policy)
    items = sorted(backups, key=lambda b: b["counter"], reverse=True)
    reasons: dict[str, list[str]] = {b["name"]: [] for b in items}
    removal: dict[str, str] = {}
    warnings = []

    def verification(b: dict[str, Any]) -> str:
        if "verification" in b:
            return b["verification"]
        return "ok" if b.get("verified") else "none"

    good = [b for b in items if not b.get("orphan") and verification(b) == "ok"]
    newest = good[0] if good else None
    max_age = rules.get("max_age")
    for b in items:
        if b["created_epoch"] > now:
            warnings.append("%s was created %d s after now (%s): a clock in the future?"
                            % (b["name"], b["created_epoch"] - now, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))))
    for b in items:
        if b.get("orphan"):
            reasons[b["name"]].append("orphan (never removed)")
        elif b is newest:
            reasons[b["name"]].append("newest verified backup (never removed)")
        elif verification(b) == "failed":
            removal[b["name"]] = "verification failed: never counts for a rule"
        elif verification(b) != "ok":
            if newest is None or b["counter"] > newest["counter"]:
                reasons[b["name"]].append("not verified yet, newer than the newest verified backup")
            else:
                removal[b["name"]] = "not verified, older than the newest verified backup %s" % newest["name"]

    def young(b: dict[str, Any]) -> bool:
        return max_age is None or now - b["created_epoch"] <= max_age

    eligible = [b for b in good if young(b)]
    for b in good:
        if not young(b) and b is not newest:
            removal[b["name"]] = "older than max_age %d s (age %d s)" % (max_age or 0, now - b["created_epoch"])
    if rules.get("keep_last"):
        for rank, b in enumerate(eligible[:rules["keep_last"]], 1):
            reasons[b["name"]].append("keep_last %d/%d" % (rank, rules["keep_last"]))
    for key in ("hourly", "daily", "weekly", "monthly"):
        wanted = rules.get(key, 0)
        if not wanted:
            continue
        period = _period(key)
        seen: list[str] = []
        for b in eligible:
            slot = period(b["created_epoch"])
            if slot in seen:
                continue
            seen.append(slot)
            reasons[b["name"]].append("%s %s (%d/%d)" % (key, slot, len(seen), wanted))
            if len(seen) == wanted:
                break
    keep, remove = [], []
    for b in items:
        entry = {"name": b["name"], "counter": b["counter"], "created_epoch": b["created_epoch"]}
        if reasons[b["name"]]:
            keep.append(dict(entry, reasons=reasons[b["name"]], reason="; ".join(reasons[b["name"]])))
        else:
            why = removal.get(b["name"], "kept by no rule of the policy")
            remove.append(dict(entry, reasons=[why], reason=why))
    if newest is None and items:
        warnings.append("no verified backup: no rule keeps anything; backups never checked are kept, "
                        "those whose check failed are removed")
    return {"keep": keep, "remove": remove, "warnings": warnings, "policy": rules}
