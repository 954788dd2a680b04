# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the on-disk readers (dqlite_format, etcd_format, bbolt_format) have in common.

PRIVATE to this collection: may change without notice. Standard library only."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Union

    # What the readers decode: a file's bytes, or a slice or view of them (hints only).
    Bytes = Union[bytes, bytearray, memoryview]


class FormatError(ValueError):
    """Bytes that the engine (raft, etcd, bbolt) would not accept; the message says what, and
    offset (when known) says where in the file."""

    def __init__(self, message: str, offset: int | None = None) -> None:
        super().__init__(message)
        self.offset = offset
