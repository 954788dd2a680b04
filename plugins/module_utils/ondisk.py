# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the on-disk readers (dqlite_format, etcd_format, bbolt_format) have in common.

PRIVATE to this collection: may change without notice. Standard library only."""

from __future__ import annotations


class FormatError(ValueError):
    """Bytes that the engine (raft, etcd, bbolt) would not accept; the message says what, and
    offset (when known) says where in the file."""

    def __init__(self, message, offset=None):
        super().__init__(message)
        self.offset = offset
