"""The dqlite on-disk format reader, against exact bytes built by the test-side encoder."""
from __future__ import annotations

import random
import struct
import subprocess

import pytest

from dqlite_builder import batch, configuration, crc_bitwise, metadata, segment, snapshot_meta

from ansible_collections.quorum.recovery.plugins.module_utils import dqlite_format as fmt

COMMAND, CHANGE = fmt.ENTRY_COMMAND, fmt.ENTRY_CHANGE


def test_checksum_is_dqlites_and_matches_the_bitwise_reference():
    assert fmt.crc32(b"123456789") == 0x89A1897F
    rng = random.Random(7)
    for size in (0, 1, 7, 8, 63, 1000):
        data = bytes(rng.randrange(256) for _byte in range(size))
        assert fmt.crc32(data) == crc_bitwise(data)
        init = rng.randrange(1 << 32)
        assert fmt.crc32(data, init) == crc_bitwise(data, init)  # chaining, as .meta needs
    assert fmt.crc32(b"hello world") == fmt.crc32(b" world", fmt.crc32(b"hello"))


def test_metadata_parse_and_each_way_it_can_be_wrong():
    assert fmt.parse_metadata(metadata(3, 7, 2)) == {"format": 1, "version": 3, "term": 7, "voted_for": 2}
    with pytest.raises(fmt.FormatError, match="torn write"):
        fmt.parse_metadata(metadata(3, 7, 2)[:20])
    with pytest.raises(fmt.FormatError, match="expected 32"):
        fmt.parse_metadata(metadata(3, 7, 2) + b"x")
    with pytest.raises(fmt.FormatError, match="format 2"):
        fmt.parse_metadata(struct.pack("<4Q", 2, 1, 1, 1))


def test_segment_batches_entries_terms_and_changes():
    conf = configuration([(1, "10.0.0.1:9001", 1), (2, "10.0.0.2:9001", 1), (3, "10.0.0.3:9001", 0)])
    data = segment([batch([(1, CHANGE, conf)]), batch([(2, COMMAND, b"x" * 13), (3, COMMAND, b"y" * 8)])])
    for full in (True, False):
        parsed = fmt.parse_segment(data, full=full)
        assert parsed["error"] is None and parsed["entries"] == 3 and parsed["end"] == len(data)
        assert [[e[0] for e in b["entries"]] for b in parsed["batches"]] == [[1], [2, 3]]
    payloads = [p for b in parsed["batches"] for p in fmt.entry_payloads(data, b)]
    assert payloads[0][1] == CHANGE
    assert fmt.parse_configuration(payloads[0][2]) == [
        {"id": 1, "address": "10.0.0.1:9001", "role": "voter"},
        {"id": 2, "address": "10.0.0.2:9001", "role": "voter"},
        {"id": 3, "address": "10.0.0.3:9001", "role": "stand-by"}]
    assert bytes(payloads[1][2]) == b"x" * 13 + b"\0" * 3  # raft stores payloads padded to 8


@pytest.mark.parametrize("damage, message, batch_no", [
    (lambda d: d[:8] + bytes([d[8] ^ 1]) + d[9:], "header checksum mismatch", 1),   # crc word itself
    (lambda d: d[:24] + bytes([d[24] ^ 0x40]) + d[25:], "header checksum mismatch", 1),  # an entry's term
    (lambda d: d[:-3] + bytes([d[-3] ^ 1]) + d[-2:], "data checksum mismatch", 2),   # last payload byte
    (lambda d: d[:-5], "short read", 2),                                              # cut inside batch 2
    (lambda d: d[:16] + b"\0" * 8 + d[24:], "count in preamble is zero", 1),
    (lambda d: d[:16] + struct.pack("<Q", 10 ** 9) + d[24:], "too high", 1),
])
def test_segment_damage_is_found_at_the_right_batch(damage, message, batch_no):
    good = segment([batch([(1, COMMAND, b"a" * 16)]), batch([(1, COMMAND, b"b" * 16)])])
    parsed = fmt.parse_segment(damage(good), full=True)
    assert message in parsed["error"]["message"]
    assert parsed["error"]["batch"] == batch_no
    assert parsed["entries"] == batch_no - 1


def test_quick_depth_checks_headers_and_the_last_batch_only():
    first_bad = bytearray(segment([batch([(1, COMMAND, b"a" * 16)]), batch([(1, COMMAND, b"b" * 16)])]))
    first_bad[16 + 8 + 16] ^= 1  # payload of batch 1
    assert fmt.parse_segment(bytes(first_bad), full=True)["error"]["message"] == "data checksum mismatch"
    assert fmt.parse_segment(bytes(first_bad), full=False)["error"] is None
    last_bad = bytearray(segment([batch([(1, COMMAND, b"a" * 16)]), batch([(1, COMMAND, b"b" * 16)])]))
    last_bad[-1] ^= 1
    assert fmt.parse_segment(bytes(last_bad), full=False)["error"]["batch"] == 2


def test_open_segment_zero_tail_and_bad_batch_followed_by_data():
    good = segment([batch([(4, COMMAND, b"a" * 16)])], prealloc=4096)
    parsed = fmt.parse_segment(good, closed=False)
    assert parsed["error"] is None and parsed["entries"] == 1 and parsed["trailing_nonzero_bytes"] == 0
    empty = b"\0" * 4096
    assert fmt.parse_segment(empty, closed=False)["entries"] == 0
    # a garbage batch followed by a valid-looking one: raft stops at the garbage
    body = segment([batch([(4, COMMAND, b"a" * 16)])])
    bad = body + b"\xff" * 40 + batch([(4, COMMAND, b"c" * 16)])
    parsed = fmt.parse_segment(bad + b"\0" * 1000, closed=False)
    assert parsed["entries"] == 1 and parsed["error"]["batch"] == 2
    assert parsed["error"]["nonzero_after_batch"] > 0


def test_snapshot_meta_checksum_and_configuration():
    meta = snapshot_meta(17, [(5, "h1:9001", 1)])
    assert fmt.parse_snapshot_meta(meta) == {"format": 1, "configuration_index": 17,
                                             "servers": [{"id": 5, "address": "h1:9001", "role": "voter"}]}
    broken = bytearray(meta)
    broken[16] ^= 1  # configuration index is covered by the checksum
    with pytest.raises(fmt.FormatError, match="checksum mismatch"):
        fmt.parse_snapshot_meta(bytes(broken))
    with pytest.raises(fmt.FormatError, match="runs past the end"):
        fmt.parse_snapshot_meta(meta[:-8])
    with pytest.raises(fmt.FormatError, match="no configuration"):
        fmt.parse_snapshot_meta(struct.pack("<4Q", 1, 0, 1, 0))


def test_xxh32_known_values():
    assert fmt.xxh32(b"") == 0x02CC5D05
    assert fmt.xxh32(b"a") == 0x550D7456
    assert fmt.xxh32(b"abc") == 0x32D153FF
    assert fmt.xxh32(b"Nobody inspects the spammish repetition") == 0xE2293B2F


def _lz4_frame(content: bytes, literal_only=True) -> bytes:
    """A valid LZ4 frame holding content as one uncompressed block, with content checksum."""
    descriptor = bytes([0x40 | 0x08 | 0x04, 0x70]) + struct.pack("<Q", len(content))
    header = struct.pack("<I", fmt.LZ4_MAGIC) + descriptor + bytes([(fmt.xxh32(descriptor) >> 8) & 0xFF])
    block = struct.pack("<I", 0x80000000 | len(content)) + content
    return header + block + struct.pack("<I", 0) + struct.pack("<I", fmt.xxh32(content))


def test_lz4_frame_checks_header_size_and_content():
    content = b"sqlite pages " * 100
    frame = _lz4_frame(content)
    summary = fmt.verify_lz4_frame(frame)
    assert summary["decoded_size"] == len(content) and summary["content_size"] == len(content)
    damaged = bytearray(frame)
    damaged[30] ^= 1  # inside the data
    with pytest.raises(fmt.FormatError, match="content checksum invalid"):
        fmt.verify_lz4_frame(bytes(damaged))
    assert fmt.verify_lz4_frame(bytes(damaged), full=False)["blocks"] == 1  # quick: structure only
    damaged = bytearray(frame)
    damaged[6] ^= 1  # the content size, covered by the header checksum
    with pytest.raises(fmt.FormatError, match="header checksum"):
        fmt.verify_lz4_frame(bytes(damaged))
    with pytest.raises(fmt.FormatError, match="truncated"):
        fmt.verify_lz4_frame(frame[:-20])


def _real_lz4(tmp_path, content, *flags):
    """A frame made by the real lz4 tool with raft's settings (64 KiB blocks, content size,
    content checksum), plus flags (-BX adds block checksums)."""
    raw = tmp_path / "content"
    raw.write_bytes(content)
    subprocess.run(["lz4", "-q", "-f", "-B4", "--content-size", *flags, str(raw), str(tmp_path / "frame")], check=True)
    return tmp_path / "frame"


def _rewrite_header(frame, content_size):
    """The same frame claiming another content size, its header checksum made right again."""
    damaged = bytearray(frame)
    struct.pack_into("<Q", damaged, 6, content_size)
    damaged[14] = (fmt.xxh32(bytes(damaged[4:14])) >> 8) & 0xFF
    return bytes(damaged)


LZ4_DAMAGE = {
    "flip mid-frame": (lambda f: f[:len(f) // 2] + bytes([f[len(f) // 2] ^ 0x5A]) + f[len(f) // 2 + 1:], r"block \d+"),
    "content checksum": (lambda f: f[:-1] + bytes([f[-1] ^ 1]), "content checksum invalid"),
    "content size": (lambda f: _rewrite_header(f, struct.unpack_from("<Q", f, 6)[0] + 1), "content size"),
    "truncated": (lambda f: f[:-5000], "truncated"),
    "block checksum": (lambda f: f[:7 + 8 + 4 + struct.unpack_from("<I", f, 15)[0] & 0x7FFFFFFF]
                       + b"\0\0\0\0" + f[7 + 8 + 4 + 4 + struct.unpack_from("<I", f, 15)[0] & 0x7FFFFFFF:],
                       "block 1 checksum mismatch"),
}


@pytest.mark.parametrize("engine", ["library", "tool", "python"])
def test_every_lz4_engine_checks_real_frames_and_names_each_damage(tmp_path, engine):
    rng = random.Random(3)
    pages = [bytes(rng.randrange(256) for _b in range(512)) * 4 for _p in range(40)]
    content = b"".join(pages[i % 40] for i in range(200))  # 400 KiB: several 64 KiB blocks
    good = _real_lz4(tmp_path, content, "-BX").read_bytes()
    summary = fmt.check_lz4_file(str(tmp_path / "frame"), True, engine)
    assert summary["checked_by"] == engine and summary["blocks"] >= 6 and summary["content_size"] == len(content)
    assert summary["decoded_size"] == (None if engine == "tool" else len(content))
    assert fmt.check_lz4_file(str(tmp_path / "frame"), False, engine)["checked_by"] == "structure only"
    for name, (damage, expected) in LZ4_DAMAGE.items():
        path = tmp_path / name.replace(" ", "-")
        path.write_bytes(damage(good))
        with pytest.raises(fmt.FormatError, match=expected) as found:
            fmt.check_lz4_file(str(path), True, engine)
        exact = None
        try:
            fmt.verify_lz4_frame(path.read_bytes())
        except fmt.FormatError as error:
            exact = error
        assert exact is not None and str(found.value).startswith(str(exact)), (name, found.value, exact)
        assert found.value.offset == exact.offset, name


def test_lz4_engine_choice_and_clear_errors(monkeypatch):
    assert fmt.lz4_engine("auto") == "library"  # the pinned controller list and the lab have python-lz4
    with pytest.raises(ValueError, match="'snappy'"):
        fmt.lz4_engine("snappy")
    monkeypatch.setattr(fmt, "_lz4_frame", None)
    assert fmt.lz4_engine("auto") == "tool"
    with pytest.raises(ValueError, match="not on this host .python3 module lz4.frame"):
        fmt.lz4_engine("library")
    monkeypatch.setattr(fmt.shutil, "which", lambda _name: None)
    assert fmt.lz4_engine("auto") == "python"
    with pytest.raises(ValueError, match="not on this host .lz4 command on PATH"):
        fmt.lz4_engine("tool")


def test_lz4_block_decoder_handles_overlapping_matches():
    # token: 1 literal 'a', match length 4+3=7 at distance 1 ("aaaaaaa"), then final literals "bcd"
    block = bytes([0x13]) + b"a" + struct.pack("<H", 1) + bytes([0x30]) + b"bcd"
    out = bytearray()
    fmt._lz4_block_decode(block, out)
    assert bytes(out) == b"a" * 8 + b"bcd"
    with pytest.raises(fmt.FormatError, match="points before the start"):
        fmt._lz4_block_decode(bytes([0x13]) + b"a" + struct.pack("<H", 5) + bytes([0x30]) + b"bcd", bytearray())


def test_node_yaml_shapes():
    cluster = "- Address: 10.0.0.1:9001\n  ID: 3297041220608546238\n  Role: 0\n- Address: 10.0.0.2:9001\n  ID: 7\n  Role: 2\n"
    assert fmt.parse_node_yaml(cluster) == [
        {"Address": "10.0.0.1:9001", "ID": 3297041220608546238, "Role": 0},
        {"Address": "10.0.0.2:9001", "ID": 7, "Role": 2}]
    assert fmt.parse_node_yaml("Address: a:1\nID: 5\nRole: 1\n") == [{"Address": "a:1", "ID": 5, "Role": 1}]
    with pytest.raises(fmt.FormatError, match="not a number"):
        fmt.parse_node_yaml("Address: a:1\nID: five\n")
    with pytest.raises(fmt.FormatError, match="lacks ID"):
        fmt.parse_node_yaml("Address: a:1\n")


def test_fuzzed_segments_and_metas_never_crash_the_reader():
    rng = random.Random(1234)
    conf = configuration([(1, "10.0.0.1:9001", 1)])
    seg = segment([batch([(1, CHANGE, conf)]), batch([(2, COMMAND, b"z" * 40)] * 3)], prealloc=2048)
    meta = snapshot_meta(3, [(1, "10.0.0.1:9001", 1)])
    frame = _lz4_frame(b"content" * 50)
    for _case in range(1500):
        for original, call in ((seg, lambda d: fmt.parse_segment(d, closed=False)),
                               (seg, lambda d: fmt.parse_segment(d, full=False)),
                               (meta, fmt.parse_snapshot_meta), (frame, fmt.verify_lz4_frame),
                               (conf, fmt.parse_configuration)):
            data = bytearray(original)
            if rng.random() < 0.5:
                for _flip in range(rng.randint(1, 4)):
                    data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            else:
                del data[rng.randrange(len(data)):]
            try:
                call(bytes(data))
            except fmt.FormatError:
                pass
