# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Recovery journals: how copies of one recovery's journal are united.

PRIVATE to this collection: may change without notice. Standard library only.
"""
from __future__ import annotations


def unite(copies: list) -> dict:
    """Copies of ONE recovery's journal as one: later copies win for every key, the steps of
    all copies are kept (each copy may have recorded steps the others missed)."""
    merged: dict = {}
    steps: dict = {}
    for journal in copies:
        merged.update(journal)
        steps.update(journal.get("steps") or {})
    merged["steps"] = steps
    return merged
