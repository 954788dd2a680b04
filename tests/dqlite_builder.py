"""Test-side encoder of raft's on-disk format, written from the format description (not from
the reader under test), so tests can craft exact segments, .meta files and corruptions."""
from __future__ import annotations

import struct


def crc_bitwise(data: bytes, crc: int = 0) -> int:
    """The slow, obvious MSB-first CRC-32 (poly 0x04C11DB7): the reference for the fast one."""
    for byte in data:
        crc ^= byte << 24
        for _bit in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
            crc &= 0xFFFFFFFF
    return crc


def pad8(payload: bytes) -> bytes:
    return payload + b"\0" * (-len(payload) % 8)


def batch(entries: list[tuple[int, int, bytes]]) -> bytes:
    """entries: (term, type, payload); payloads are padded to 8 bytes as raft requires."""
    header = struct.pack("<Q", len(entries))
    body = b""
    for term, etype, payload in entries:
        payload = pad8(payload)
        header += struct.pack("<QB3xI", term, etype, len(payload))
        body += payload
    return struct.pack("<II", crc_bitwise(header), crc_bitwise(body)) + header + body


def segment(batches: list[bytes], prealloc: int = 0) -> bytes:
    data = struct.pack("<Q", 1) + b"".join(batches)
    return data + b"\0" * max(0, prealloc - len(data))


def configuration(servers: list[tuple[int, str, int]]) -> bytes:
    """servers: (id, address, raft role: 0 stand-by, 1 voter, 2 spare)."""
    out = b"\x01" + struct.pack("<Q", len(servers))
    for server_id, address, role in servers:
        out += struct.pack("<Q", server_id) + address.encode() + b"\0" + bytes([role])
    return pad8(out)


def snapshot_meta(conf_index: int, servers: list[tuple[int, str, int]]) -> bytes:
    conf = configuration(servers)
    header_tail = struct.pack("<QQ", conf_index, len(conf))
    crc = crc_bitwise(conf, crc_bitwise(header_tail))
    return struct.pack("<QQ", 1, crc) + header_tail + conf


def metadata(version: int, term: int, vote: int) -> bytes:
    return struct.pack("<4Q", 1, version, term, vote)
