"""Tests of `nvr.py upgrade` (upgrade/): Moonfire schema 0 through 7 to ours (8, then 9).

The main test seeds a version 0 database (made from the frozen upgrade/v0.sql)
with awkward rows: several cameras (one with a sub stream, one with an empty
sub path, one with none), anamorphic sample entries whose pixel aspect ratio
comes from the SPS VUI (a table index and an Extended_SAR) or from the
defaults table, an unused duplicate entry and an unused unreadable one,
recordings forming runs with and without trailing zeros, interleaved between
cameras, garbage (`reserved_sample_files`) rows with and without files, and
UUID-named sample files. It upgrades one version at a time and after every
compared version checks the schema (tables, columns, indexes, foreign keys)
against the frozen vN.sql, and at the end against schema.sql, plus what
each step did to the rows and files.

Sample entries: two are Moonfire's own test vectors (hand-made SPS bytes with
known answers: 320x240 without an aspect ratio -> 4:3 from the defaults table,
704x480 with aspect_ratio_idc 40:33); the others come from libx264 through
PyAV, so the SPS parser also meets real encoder output (Extended_SAR 5:4 and
no VUI aspect ratio at all). libx264 gives Annex B parameter sets; the test
wraps them in an avc1/avcC box as Moonfire stored them.

Killed steps: a step made to raise halfway (monkeypatch) leaves the previous
version with its schema intact; a real process killed with SIGKILL at named
points (`NVR_CRASH_AT`) leaves a consistent state that a rerun completes.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import fcntl
import fractions
import hashlib
import io
import logging
import os
import re
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import uuid as uuidlib

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import upgrade  # noqa: E402
from upgrade import compare, dirmeta, h264, v0_to_v1, v5_to_v6  # noqa: E402

T0 = 1_500_000_000 * 90000  # a 90 kHz start time in 2017
MIN = 60 * 90000


# ---------------------------------------------------------------- helpers

def encode_index(frames) -> bytes:
    """video_index (reference §3.2) of (duration_90k, is_key, bytes) frames;
    an implementation independent of upgrade/, pinned by the worked example."""
    def varint(n):
        out = bytearray()
        while True:
            b, n = n & 0x7F, n >> 7
            out.append(b | 0x80 if n else b)
            if not n:
                return bytes(out)

    def zigzag(i):
        return ((i << 1) ^ (i >> 31)) & 0xFFFFFFFF

    out = bytearray()
    prev_dur, prev_bytes = 0, {True: 0, False: 0}
    for dur, key, nbytes in frames:
        out += varint(zigzag(dur - prev_dur) << 1 | int(key))
        out += varint(zigzag(nbytes - prev_bytes[key]))
        prev_dur, prev_bytes[key] = dur, nbytes
    return bytes(out)


def avc1_entry(width: int, height: int, sps: bytes, pps: bytes) -> bytes:
    """An avc1 VisualSampleEntry (ISO/IEC 14496-12 §8.5.2) with one avcC box."""
    avcc = (bytes([1, sps[1], sps[2], sps[3], 0xFF, 0xE1]) + struct.pack(">H", len(sps)) + sps
            + bytes([1]) + struct.pack(">H", len(pps)) + pps)
    avcc_box = struct.pack(">I4s", 8 + len(avcc), b"avcC") + avcc
    body = (b"\0" * 6 + struct.pack(">H", 1)             # reserved, data_reference_index
            + b"\0" * 16                                  # pre_defined, reserved
            + struct.pack(">HHII", width, height, 0x480000, 0x480000)
            + b"\0" * 4 + struct.pack(">H", 1)            # reserved, frame_count
            + b"\0" * 32 + struct.pack(">Hh", 0x18, -1))  # compressorname, depth, pre_defined
    return struct.pack(">I4s", 8 + len(body) + len(avcc_box), b"avc1") + body + avcc_box


def x264_entry(width: int, height: int, sar: tuple[int, int] | None) -> bytes:
    """A sample entry from libx264's parameter sets for a width x height stream."""
    return x264_clip(width, height, sar, 0)[0]


def x264_clip(width: int, height: int, sar: tuple[int, int] | None,
              frames: int) -> tuple[bytes, list[bytes]]:
    """libx264's sample entry and `frames` encoded frames (length-prefixed, a
    key frame every 2), so a seeded recording can really be played."""
    import av
    import codec
    ctx = av.CodecContext.create("libx264", "w")
    ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
    ctx.time_base = fractions.Fraction(1, 30)
    if sar:
        ctx.sample_aspect_ratio = fractions.Fraction(*sar)
    # Global header as an option: PyAV 10's Flags has no `global_header` member.
    ctx.options = {"preset": "ultrafast", "g": "2", "keyint_min": "2", "bf": "0",
                   "sc_threshold": "0", "flags": "+global_header"}
    ctx.open()
    nals = [n.lstrip(b"\0") for n in bytes(ctx.extradata).split(b"\0\0\1") if n.strip(b"\0")]
    sps = next(n for n in nals if n[0] & 0x1F == 7)
    pps = next(n for n in nals if n[0] & 0x1F == 8)
    out = []
    for i in range(frames):
        f = av.VideoFrame(width, height, "yuv420p")
        for plane in f.planes:
            plane.update(bytes([(i * 40) & 0xFF]) * (plane.line_size * plane.height))
        f.pts = i
        out += [codec.to_length_prefixed(bytes(p)) for p in ctx.encode(f)]
    out += [codec.to_length_prefixed(bytes(p)) for p in ctx.encode(None)]
    return avc1_entry(width, height, sps.rstrip(b"\0"), pps.rstrip(b"\0")), out


# Moonfire's upgrade test vectors (server/db/upgrade/mod.rs).
MOONFIRE_320X240_NO_SAR = bytes.fromhex(
    "0000008461766331000000000000000100000000000000000000000000000000014000f000480000"
    "0048000000000000000100000000000000000000000000000000000000000000000000000000000000"
    "000018ffff0000002e61766343014d401effe10017674d401e9a660a0fff35010101400000fa000003"
    "01f40101000468ee3c80")
MOONFIRE_704X480_40_33 = bytes.fromhex(
    "0000009f6176633100000000000000010000000000000000000000000000000002c001e000480000"
    "0048000000000000000100000000000000000000000000000000000000000000000000000000000000"
    "000018ffff000000496176634301640016ffe1003167640016ac1b1a80b03dffff002800216e0c0c"
    "0c800001f400002710743007d00007a125de5c68600fa0000f424bbcb85001000568ee383000")


@dataclasses.dataclass
class Seeded:
    db_dir: str
    sample_dir: str
    # composite id -> (uuid file name, contents)
    files: dict
    garbage_file: str        # a reserved (deleted) uuid whose file exists


def uuid_name(u: bytes) -> str:
    return str(uuidlib.UUID(bytes=u))


def composite_name(cid: int) -> str:
    return f"{cid >> 32:08x}{cid & 0xFFFFFFFF:08x}"


def seed_v0(tmp_path) -> Seeded:
    db_dir = str(tmp_path / "db")
    sample_dir = str(tmp_path / "sample")
    os.makedirs(db_dir)
    os.makedirs(sample_dir)
    conn = sqlite3.connect(os.path.join(db_dir, "db"))
    with open(upgrade.frozen_schema_path(0)) as f:
        conn.executescript(f.read())
    conn.executemany("insert into camera values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", [
        (1, b"\x11" * 16, "front", "porch", "192.168.1.10:554", "admin", "secret",
         "/main", "/sub", 1_000_000_000),
        (2, b"\x22" * 16, "back", "", "back.local", None, None, "/ch1", "", 500_000_000),
        (3, b"\x33" * 16, "garage", None, "garage", "u", "p", "/live", None, 0),
    ])
    entry1, playable = x264_clip(1280, 720, None, 4)  # key, non-key, key, non-key
    entries = {
        1: (1280, 720, entry1),                                  # 1:1
        2: (320, 240, MOONFIRE_320X240_NO_SAR),                  # defaults table: 4:3
        3: (704, 480, MOONFIRE_704X480_40_33),                   # VUI table: 40:33
        4: (704, 480, MOONFIRE_704X480_40_33),                   # unused: dropped by 5->6
        5: (704, 480, x264_entry(704, 480, (5, 4))),             # VUI Extended_SAR 5:4
        6: (640, 480, x264_entry(640, 480, None)),               # defaults table: 4:3
        7: (100, 100, b"garbage, not an avc1 box" + b"\0" * 80),  # unused: dropped by 1->2
    }
    for vse_id, (w, h, data) in entries.items():
        conn.execute("insert into video_sample_entry values (?, ?, ?, ?, ?)",
                     (vse_id, hashlib.sha1(data + bytes([vse_id])).digest(), w, h, data))
    files = {}
    # (camera, start, frames, entry); ids interleave cameras. front: a run of
    # two ending in a trailing zero, then a new run; garage: a run of two.
    second = 90000
    # front's recordings of entry 1 hold real frames (test_pre_upgrade_recording_plays...).
    real = {(1, T0): playable[0:2], (1, T0 + MIN): playable[2:4]}
    recs = [
        (1, T0, [(second, True, len(playable[0])), (second, False, len(playable[1]))], 1),
        (2, T0 + 5, [(second, True, 800), (second, False, 40), (second, False, 40)], 2),
        (1, T0 + 2 * second, [(second, True, 900), (0, False, 60)], 6),
        (3, T0 + 7, [(2 * second, True, 700)], 3),
        (1, T0 + MIN, [(second, True, len(playable[2])), (second, False, len(playable[3]))], 1),
        (3, T0 + 7 + 2 * second, [(second, True, 650), (second, False, 20)], 5),
    ]
    n_by_camera = {}
    for camera, start, frames, vse_id in recs:
        u = uuidlib.uuid4().bytes
        content = (b"".join(real[(camera, start)]) if (camera, start) in real
                   else os.urandom(sum(f[2] for f in frames)))
        n_by_camera[camera] = n_by_camera.get(camera, 0) + 1
        files[camera << 32 | n_by_camera[camera]] = (uuid_name(u), content)
        with open(os.path.join(sample_dir, uuid_name(u)), "wb") as f:
            f.write(content)
        conn.execute("""
            insert into recording (camera_id, sample_file_bytes, start_time_90k, duration_90k,
                                   local_time_delta_90k, video_samples, video_sync_samples,
                                   video_sample_entry_id, sample_file_uuid, sample_file_sha1,
                                   video_index)
            values (?, ?, ?, ?, 3, ?, ?, ?, ?, ?, ?)
        """, (camera, len(content), start, sum(f[0] for f in frames), len(frames),
              sum(1 for f in frames if f[1]), vse_id, u, hashlib.sha1(content).digest(),
              encode_index(frames)))
    garbage = uuidlib.uuid4().bytes
    with open(os.path.join(sample_dir, uuid_name(garbage)), "wb") as f:
        f.write(b"half-deleted")
    conn.executemany("insert into reserved_sample_files values (?, ?)",
                     [(garbage, 1), (uuidlib.uuid4().bytes, 0)])
    conn.commit()
    conn.close()
    return Seeded(db_dir, sample_dir, files, uuid_name(garbage))


def open_db(s: Seeded) -> sqlite3.Connection:
    conn = sqlite3.connect(os.path.join(s.db_dir, "db"), isolation_level=None)
    conn.execute("pragma foreign_keys = on")
    return conn


def step_args(s: Seeded | None, **kw) -> argparse.Namespace:
    d = dict(db_dir=s.db_dir if s else None, sample_file_dir=[s.sample_dir] if s else None,
             preset_journal="delete", no_vacuum=False, no_backup=False, dry_run=False)
    d.update(kw)
    return argparse.Namespace(**d)


def assert_schema(conn: sqlite3.Connection, version: int) -> None:
    with open(upgrade.frozen_schema_path(version)) as f:
        fresh = compare.fresh(f.read())
    d = compare.diff(f"upgraded to {version}", conn, f"fresh {version}", fresh)
    assert d is None, f"version {version} schema differs:\n{d}"


def version(conn) -> int:
    return upgrade.get_version(conn)


def snapshot(s: Seeded) -> tuple:
    """The database's contents and the sample dir's names and contents."""
    conn = sqlite3.connect(os.path.join(s.db_dir, "db"))
    dump = "\n".join(conn.iterdump())
    conn.close()
    listing = {}
    for n in sorted(os.listdir(s.sample_dir)):
        with open(os.path.join(s.sample_dir, n), "rb") as f:
            listing[n] = hashlib.sha256(f.read()).hexdigest()
    return dump, listing


def read_meta(s: Seeded) -> tuple[dirmeta.DirMeta, bytes]:
    with open(os.path.join(s.sample_dir, "meta"), "rb") as f:
        data = f.read()
    return dirmeta.decode_file(data)[0], data


def db_meta(conn) -> dirmeta.DirMeta:
    return upgrade.v2_to_v3.db_dir_meta(conn, 1)



# ------------------------------------------------------- known answers

def test_index_encoder_matches_reference_example():
    frames = [(10, True, 1000), (9, False, 10), (11, False, 15), (10, False, 12),
              (10, True, 1050)]
    assert encode_index(frames).hex() == "29d00f0214080a02050164"
    assert not v0_to_v1.has_trailing_zero(encode_index(frames))
    assert v0_to_v1.has_trailing_zero(encode_index(frames[:-1] + [(0, False, 3)]))
    with pytest.raises(ValueError):
        v0_to_v1.has_trailing_zero(b"\xff")


def test_dirmeta_known_answer_and_both_formats():
    m = dirmeta.DirMeta(db_uuid=b"\x01" * 16, dir_uuid=b"\x02" * 16,
                        last_complete_open=dirmeta.Open(1, b"\x03" * 16))
    msg = dirmeta.encode(m)
    assert msg.hex() == ("0a10" + "01" * 16 + "1210" + "02" * 16
                         + "1a14" + "0801" + "1210" + "03" * 16)
    fixed = dirmeta.encode_fixed(m)
    assert len(fixed) == 512 and fixed[0] == len(msg) and fixed[1:1 + len(msg)] == msg
    assert not any(fixed[1 + len(msg):])
    assert dirmeta.decode_file(msg) == (m, False)
    assert dirmeta.decode_file(fixed) == (m, True)
    other = dataclasses.replace(m, in_progress_open=dirmeta.Open(2, b"\x04" * 16))
    assert dirmeta.decode(dirmeta.encode(other)) == other
    # The database's open may be the file's last complete or in-progress one.
    assert dirmeta.check_consistent(m, m) is None
    moved = dirmeta.DirMeta(m.db_uuid, m.dir_uuid, dirmeta.Open(0, b""), m.last_complete_open)
    assert dirmeta.check_consistent(m, moved) is None
    assert "belongs to database" in dirmeta.check_consistent(
        m, dataclasses.replace(m, db_uuid=b"\x09" * 16))
    assert "no complete open" in dirmeta.check_consistent(
        dataclasses.replace(m, last_complete_open=None), m)


def test_sps_aspect_ratios():
    for data, expected in [(MOONFIRE_320X240_NO_SAR, None), (MOONFIRE_704X480_40_33, (40, 33)),
                           (x264_entry(704, 480, (5, 4)), (5, 4)),
                           (x264_entry(352, 240, (40, 33)), (40, 33)),
                           (x264_entry(640, 480, None), None)]:
        sps = h264.sps_list(h264.avcc_record(data))
        assert h264.sps_aspect_ratio(sps[0]) == expected
    assert h264.rfc6381_codec(MOONFIRE_704X480_40_33) == "avc1.640016"
    assert h264.default_pixel_aspect_ratio(704, 480) == (40, 33)
    assert h264.default_pixel_aspect_ratio(480, 704) == (33, 40)  # rotated
    assert h264.default_pixel_aspect_ratio(1920, 1080) == (1, 1)
    # Emulation prevention bytes are removed before parsing.
    assert h264.unescape_rbsp(b"\x00\x00\x03\x01\x00\x00\x03") == b"\x00\x00\x01\x00\x00"


def test_frozen_schemas_are_complete_and_versioned():
    assert upgrade.TARGET_VERSION == 9 == len(upgrade.STEPS)
    for v in upgrade.FROZEN_VERSIONS + (upgrade.TARGET_VERSION,):
        with open(upgrade.frozen_schema_path(v)) as f:
            assert version(compare.fresh(f.read())) == v
    for step in upgrade.STEPS:
        assert step.__doc__ and step.TITLE and callable(step.run)


# ------------------------------------------------- step by step, compared

def test_upgrade_step_by_step_and_compare(tmp_path):
    s = seed_v0(tmp_path)
    conn = open_db(s)
    args = step_args(s)
    front, back, garage = 1 << 32, 2 << 32, 3 << 32
    entry_data = dict(conn.execute("select id, data from video_sample_entry"))

    upgrade.run_steps(conn, args, 1, quiet=True)
    assert version(conn) == 1
    assert_schema(conn, 1)
    rows = conn.execute("select composite_id, run_offset, flags from recording "
                        "order by composite_id").fetchall()
    assert rows == [(front | 1, 0, 0), (front | 2, 1, 1), (front | 3, 0, 0),
                    (back | 1, 0, 0), (garage | 1, 0, 0), (garage | 2, 1, 0)]
    assert conn.execute("select id, next_recording_id from camera order by id").fetchall() == \
        [(1, 4), (2, 2), (3, 3)]

    upgrade.run_steps(conn, args, 2, quiet=True)
    assert version(conn) == 2
    meta, raw = read_meta(s)
    assert len(raw) != 512  # the version 3 format: a bare message
    assert dirmeta.check_consistent(db_meta(conn), meta) is None
    assert not os.path.exists(os.path.join(s.sample_dir, s.garbage_file))
    assert conn.execute("select id, camera_id, type, record, rtsp_path, flush_if_sec "
                        "from stream order by id").fetchall() == [
        (1, 1, "main", 1, "/main", 0), (2, 2, "main", 1, "/ch1", 0),
        (3, 3, "main", 1, "/live", 0), (4, 1, "sub", 0, "/sub", 90)]
    assert conn.execute("select id, rfc6381_codec from video_sample_entry where id in (3, 7) "
                        "order by id").fetchall() == [(3, "avc1.640016")]
    assert conn.execute("select sample_file_dir.path from sample_file_dir").fetchone()[0] == \
        os.path.abspath(s.sample_dir)

    upgrade.run_steps(conn, args, 3, quiet=True)
    assert version(conn) == 3
    assert_schema(conn, 3)
    assert sorted(os.listdir(s.sample_dir)) == sorted(
        ["meta"] + [composite_name(c) for c in s.files])
    for cid, (_, content) in s.files.items():
        with open(os.path.join(s.sample_dir, composite_name(cid)), "rb") as f:
            assert f.read() == content
    assert conn.execute("select local_time_delta_90k from recording_integrity "
                        "order by composite_id").fetchall() == \
        [(None,), (3,), (None,), (None,), (None,), (3,)]
    # Users and sessions as Moonfire 0.x made them; and a garbage file as the
    # 1->3 upgrade before Moonfire's 433be217 left, which 4->5 must remove.
    conn.executescript("""
        insert into user (id, username, flags, password_hash, unix_uid)
            values (1, 'alice', 1, '$scrypt$x', 1000), (2, 'bob', 0, null, null);
        insert into user_session (session_id_hash, user_id, seed, flags, creation_time_sec,
                                  revocation_time_sec, revocation_reason)
            values (x'01', 1, zeroblob(32), 1, 100, null, null),
                   (x'02', 2, zeroblob(32), 1, 100, 200, 1);
    """)
    leftover = str(uuidlib.uuid4())
    open(os.path.join(s.sample_dir, leftover), "wb").close()

    upgrade.run_steps(conn, args, 4, quiet=True)
    assert version(conn) == 4
    assert conn.execute("select permissions from user_session order by session_id_hash"
                        ).fetchall() == [(b"\x08\x01",), (b"\x08\x01",)]
    assert conn.execute("select rtsp_url from stream order by id").fetchall() == [
        ("rtsp://192.168.1.10:554/main",), ("rtsp://back.local/ch1",), ("rtsp://garage/live",),
        ("rtsp://192.168.1.10:554/sub",)]
    # Signals, first possible at version 4, must survive the later steps.
    conn.executescript("""
        update meta set max_signal_changes = 100;
        insert into signal (id, source_uuid, type_uuid, short_name)
            values (1, x'1B3889C0A59F400DA24C94EBEB19CC3A',
                       x'EE66270FD9C648198B339720D4CBCA6B', 'a'),
                   (2, x'A4A73D9A53424EBCB9F6366F1E5617FA',
                       x'EE66270FD9C648198B339720D4CBCA6B', 'b');
        insert into signal_type_enum (type_uuid, value, name, motion, color)
            values (x'EE66270FD9C648198B339720D4CBCA6B', 1, 'still', 0, 'black'),
                   (x'EE66270FD9C648198B339720D4CBCA6B', 2, 'moving', 1, 'red');
        insert into signal_camera (signal_id, camera_id, type) values (1, 1, 0), (2, 1, 1);
    """)

    upgrade.run_steps(conn, args, 5, quiet=True)
    assert version(conn) == 5
    assert_schema(conn, 5)
    meta, raw = read_meta(s)
    assert len(raw) == 512
    assert dirmeta.check_consistent(db_meta(conn), meta) is None
    assert not os.path.exists(os.path.join(s.sample_dir, leftover))

    upgrade.run_steps(conn, args, 6, quiet=True)
    assert version(conn) == 6
    assert_schema(conn, 6)
    pasp = {r[0]: r[1:] for r in conn.execute(
        "select id, pasp_h_spacing, pasp_v_spacing, data from video_sample_entry")}
    assert {k: v[:2] for k, v in pasp.items()} == {
        1: (1, 1), 2: (4, 3), 3: (40, 33), 5: (5, 4), 6: (4, 3)}  # 4 and 7 unused
    assert pasp[1][2] == entry_data[1]  # 1:1: no pasp box
    for vse_id, (h, v) in [(2, (4, 3)), (3, (40, 33)), (5, (5, 4)), (6, (4, 3))]:
        data, old = pasp[vse_id][2], entry_data[vse_id]
        assert data[-16:] == struct.pack(">I4sII", 16, b"pasp", h, v)
        assert struct.unpack(">I", data[:4])[0] == len(data) == len(old) + 16
        assert data[4:-16] == old[4:]
    assert conn.execute("select id, cum_recordings, cum_media_duration_90k, cum_runs "
                        "from stream order by id").fetchall() == [
        (1, 4, 2 * 90000 + 90000 + 2 * 90000, 2), (2, 2, 3 * 90000, 1),
        (3, 3, 2 * 90000 + 2 * 90000, 1), (4, 1, 0, 0)]
    assert conn.execute("select composite_id, prev_media_duration_90k, prev_runs, "
                        "wall_duration_90k, media_duration_delta_90k from recording "
                        "where stream_id = 1 order by composite_id").fetchall() == [
        (front | 1, 0, 0, 180000, 0), (front | 2, 180000, 1, 90000, 0),
        (front | 3, 270000, 1, 180000, 0)]
    sessions = conn.execute("select session_id_hash, revocation_reason, "
                            "revocation_reason_detail, revocation_time_sec from user_session "
                            "order by session_id_hash").fetchall()
    assert sessions[0][:3] == (b"\x01", 2, "Blake2b->Blake3 upgrade") and sessions[0][3] > 0
    assert sessions[1] == (b"\x02", 1, None, 200)
    conn.execute("insert into user_session (session_id_hash, user_id, seed, flags, "
                 "creation_time_sec, permissions) values (x'03', 2, zeroblob(32), 1, 300, x'0801')")

    upgrade.run_steps(conn, args, 7, quiet=True)
    assert version(conn) == 7
    assert_schema(conn, 7)
    cfg = lambda sql: [tuple(r) for r in conn.execute(sql)]  # noqa: E731
    assert cfg("select config from meta") == [('{"maxSignalChanges":100}',)]
    assert cfg("select config from sample_file_dir") == \
        [(f'{{"path":"{os.path.abspath(s.sample_dir)}"}}',)]
    assert cfg("select id, config from camera order by id") == [
        (1, '{"description":"porch","onvifBaseUrl":"http://192.168.1.10:554/",'
            '"username":"admin","password":"secret"}'),
        (2, '{"onvifBaseUrl":"http://back.local/"}'),
        (3, '{"onvifBaseUrl":"http://garage/","username":"u","password":"p"}')]
    assert cfg("select id, config from stream order by id") == [
        (1, '{"mode":"record","url":"rtsp://192.168.1.10:554/main","retainBytes":1000000000,'
            '"flushIfSec":0}'),
        (2, '{"mode":"record","url":"rtsp://back.local/ch1","retainBytes":500000000,'
            '"flushIfSec":0}'),
        (3, '{"mode":"record","url":"rtsp://garage/live","retainBytes":0,"flushIfSec":0}'),
        (4, '{"url":"rtsp://192.168.1.10:554/sub","retainBytes":0,"flushIfSec":90}')]
    assert cfg("select username, config, password_hash from user order by id") == [
        ("alice", '{"disabled":true,"unixUid":1000}', "$scrypt$x"), ("bob", "{}", None)]
    assert cfg("select id, hex(uuid), config from signal order by id") == [
        (1, "1B3889C0A59F400DA24C94EBEB19CC3A",
         '{"shortName":"a","cameraAssociations":{"1":"direct"}}'),
        (2, "A4A73D9A53424EBCB9F6366F1E5617FA",
         '{"shortName":"b","cameraAssociations":{"1":"indirect"}}')]
    assert cfg("select config from signal_type") == [
        ('{"values":{"1":{"name":"still","color":"black"},'
         '"2":{"name":"moving","motion":true,"color":"red"}}}',)]

    upgrade.run_steps(conn, args, 8, quiet=True)
    assert version(conn) == 8
    assert_schema(conn, 8)
    sessions = conn.execute("select session_id_hash, revocation_reason, "
                            "revocation_reason_detail from user_session "
                            "order by session_id_hash").fetchall()
    assert sessions == [(b"\x01", 2, "Blake2b->Blake3 upgrade"), (b"\x02", 1, None),
                        (b"\x03", 2, "algorithm change")]
    conn.execute("update recording_integrity set sample_file_blake2b_32 = zeroblob(32)")
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("update recording_integrity set sample_file_blake2b_32 = zeroblob(31)")
    # Every recording's file is where nvr will look for it.
    for (cid,) in conn.execute("select composite_id from recording"):
        assert os.path.exists(os.path.join(s.sample_dir, composite_name(cid)))
    assert conn.execute("pragma foreign_key_check").fetchall() == []
    assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"

    # 8 -> 9: an empty protection table, its checks in force; nothing else changes.
    others = "\n".join(conn.iterdump())
    assert upgrade.run_step(conn, args, 8) == []
    assert version(conn) == 9
    assert_schema(conn, 9)
    assert "\n".join(line for line in conn.iterdump() if "protection" not in line
                     and not line.startswith('INSERT INTO "version"')) == "\n".join(
        line for line in others.splitlines() if not line.startswith('INSERT INTO "version"'))
    row = "insert into protection values (null, 1, ?, 100, ?, 'x', 'cli', 1, 1)"
    conn.execute(row, (1, 200))
    conn.execute(row, (None, 101))  # every stream of camera 1
    for stream_id, end in [(1, 100), (1, 99), (99, 200)]:  # empty, backwards, no such stream
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute(row, (stream_id, end))
    assert conn.execute("select count(*) from protection").fetchone()[0] == 2


def test_corrupt_video_index_is_not_a_trailing_zero(tmp_path, caplog):
    s = seed_v0(tmp_path)
    conn = open_db(s)
    conn.execute("update recording set video_index = x'ff' where id = 1")
    upgrade.run_steps(conn, step_args(s), 1, quiet=True)
    assert conn.execute("select run_offset, flags from recording where composite_id = ?",
                        (1 << 32 | 1,)).fetchone() == (0, 0)
    assert "corrupt video_index" in caplog.text


# ------------------------------------------------------------ the driver

def test_full_run_backs_up_vacuums_and_ends_in_wal(tmp_path, capsys):
    s = seed_v0(tmp_path)
    assert upgrade.run(step_args(s)) == 0
    err = capsys.readouterr().err
    assert "safe to interrupt" in err and "Done" in err
    conn = open_db(s)
    assert [r[0] for r in conn.execute("select id from version order by id")] == list(range(10))
    assert conn.execute("pragma journal_mode").fetchone()[0] == "wal"
    assert conn.execute("pragma page_size").fetchone()[0] == 16384
    assert_schema(conn, 9)
    backup = sqlite3.connect(os.path.join(s.db_dir, "db.pre-upgrade-v0"))
    assert version(backup) == 0
    assert backup.execute("select count(*) from recording").fetchone()[0] == len(s.files)
    # Rerunning at the current version changes nothing and succeeds.
    assert upgrade.run(step_args(s)) == 0
    assert [r[0] for r in conn.execute("select id from version order by id")] == list(range(10))


def test_dry_run_reports_and_changes_nothing(tmp_path, capsys):
    s = seed_v0(tmp_path)
    before = snapshot(s)
    assert upgrade.run(step_args(s, dry_run=True)) == 0
    out = capsys.readouterr().out
    for v in range(9):
        assert f"Step {v} -> {v + 1}:" in out
    assert "creates table recording_playback" in out
    assert f"would rename {len(s.files)} files" in out
    assert "would write" in out and "meta" in out
    assert f"would unlink {os.path.join(os.path.abspath(s.sample_dir), s.garbage_file)}" in out
    assert "table video_sample_entry: adds pasp_h_spacing, pasp_v_spacing" in out
    assert snapshot(s) == before
    assert sorted(os.listdir(s.db_dir)) == ["db"]


def test_dry_run_reports_a_refusal(tmp_path):
    s = seed_v0(tmp_path)
    open(os.path.join(s.sample_dir, "notes.txt"), "w").close()
    before = snapshot(s)
    with pytest.raises(upgrade.UpgradeError, match=r"dry run: step 1 -> 2 would refuse: "
                                                   r"unexpected file 'notes.txt'"):
        upgrade.run(step_args(s, dry_run=True))
    assert snapshot(s) == before


# ------------------------------------------------------- safety checks

@pytest.mark.parametrize("name,pattern", [
    ("notes.txt", r"unexpected file 'notes.txt' in sample file dir .*"
                  r"Is --sample-file-dir right\?"),
    ("0b1c5a2e-6d3f-4f4e-9c2a-1d2e3f405162",
     r"1 sample files in .* are unknown to the database \(first: 0b1c5a2e-.*\)\. "
     r"Is --sample-file-dir right\?"),
])
def test_refuses_unexpected_file_before_1_to_2(tmp_path, name, pattern):
    s = seed_v0(tmp_path)
    conn = open_db(s)
    upgrade.run_steps(conn, step_args(s), 1, quiet=True)
    open(os.path.join(s.sample_dir, name), "w").close()
    before = snapshot(s)
    with pytest.raises(upgrade.UpgradeError, match=pattern):
        upgrade.run_steps(conn, step_args(s), 2, quiet=True)
    assert version(conn) == 1
    assert snapshot(s) == before  # the garbage file wasn't unlinked, no meta written


def test_refuses_missing_sample_file_before_1_to_2(tmp_path):
    s = seed_v0(tmp_path)
    conn = open_db(s)
    upgrade.run_steps(conn, step_args(s), 1, quiet=True)
    os.unlink(os.path.join(s.sample_dir, s.files[1 << 32 | 2][0]))
    before = snapshot(s)
    with pytest.raises(upgrade.UpgradeError, match=r"1 recordings' sample files are missing"):
        upgrade.run_steps(conn, step_args(s), 2, quiet=True)
    assert version(conn) == 1
    assert snapshot(s) == before


def test_refuses_without_sample_file_dir_before_touching_anything(tmp_path):
    s = seed_v0(tmp_path)
    before = snapshot(s)
    with pytest.raises(upgrade.UpgradeError, match=r"pass --sample-file-dir DIR"):
        upgrade.run(step_args(s, sample_file_dir=None))
    assert snapshot(s) == before
    assert sorted(os.listdir(s.db_dir)) == ["db"]  # no backup either


def test_refuses_meta_mismatch_before_2_to_3(tmp_path):
    s = seed_v0(tmp_path)
    conn = open_db(s)
    upgrade.run_steps(conn, step_args(s), 2, quiet=True)
    meta, _ = read_meta(s)
    with open(os.path.join(s.sample_dir, "meta"), "wb") as f:  # another database's dir
        f.write(dirmeta.encode(dataclasses.replace(meta, db_uuid=b"\x42" * 16)))
    before = snapshot(s)
    with pytest.raises(upgrade.UpgradeError,
                       match=r"does not match this database: the meta file belongs to "
                             r"database 4242.*Is the right disk mounted there"):
        upgrade.run_steps(conn, step_args(s), 3, quiet=True)
    assert version(conn) == 2
    assert snapshot(s) == before  # still uuid names


def test_refuses_meta_mismatch_before_4_to_5(tmp_path):
    s = seed_v0(tmp_path)
    conn = open_db(s)
    upgrade.run_steps(conn, step_args(s), 4, quiet=True)
    meta, _ = read_meta(s)
    with open(os.path.join(s.sample_dir, "meta"), "wb") as f:
        f.write(dirmeta.encode(dataclasses.replace(meta, dir_uuid=b"\x42" * 16)))
    before = snapshot(s)
    with pytest.raises(upgrade.UpgradeError, match=r"the meta file names dir 4242"):
        upgrade.run_steps(conn, step_args(s), 5, quiet=True)
    assert version(conn) == 4
    assert snapshot(s) == before  # still the version 3 format


def test_refuses_unusable_stream_url_at_6_to_7_then_rerun_after_fix(tmp_path):
    s = seed_v0(tmp_path)
    conn = open_db(s)
    conn.execute("update camera set host = null where id = 2")
    upgrade.run_steps(conn, step_args(s), 6, quiet=True)
    before = snapshot(s)
    with pytest.raises(upgrade.UpgradeError,
                       match=r"stream 2 \(camera 2, main\) has URL 'rtsp:///ch1', which has no "
                             r"host; set it with `update stream set rtsp_url = "
                             r"'rtsp://HOST/PATH' where id = 2`"):
        upgrade.run_steps(conn, step_args(s), 7, quiet=True)
    assert version(conn) == 6
    assert snapshot(s) == before
    conn.execute("update stream set rtsp_url = 'rtsp://back.local/ch1' where id = 2")
    upgrade.run_steps(conn, step_args(s), 8, quiet=True)
    assert_schema(conn, 8)
    assert conn.execute("select config from camera where id = 2").fetchone()[0] == "{}"


# Moonfire's own 6 -> 7 step (server/db/upgrade/v6_to_v7.rs) recreated `recording`
# with `open_id integer not null`, without the `references open (id)` that its fresh
# v7 schema and ours have. This turns our version 7 into that shape, rows and all.
MOONFIRE_V7_RECORDING = """
    drop index recording_cover;
    alter table recording rename to old_recording;
    create table recording (
      composite_id integer primary key,
      open_id integer not null,
      stream_id integer not null references stream (id),
      run_offset integer not null,
      flags integer not null,
      sample_file_bytes integer not null check (sample_file_bytes > 0),
      start_time_90k integer not null check (start_time_90k > 0),
      prev_media_duration_90k integer not null check (prev_media_duration_90k >= 0),
      prev_runs integer not null check (prev_runs >= 0),
      wall_duration_90k integer not null
          check (wall_duration_90k >= 0 and wall_duration_90k < 5*60*90000),
      media_duration_delta_90k integer not null,
      video_samples integer not null check (video_samples > 0),
      video_sync_samples integer not null check (video_sync_samples > 0),
      video_sample_entry_id integer references video_sample_entry (id),
      end_reason text
      check (composite_id >> 32 = stream_id)
    );
    create index recording_cover on recording (stream_id, start_time_90k, open_id,
      wall_duration_90k, media_duration_delta_90k, video_samples, video_sync_samples,
      video_sample_entry_id, sample_file_bytes, run_offset, flags);
    insert into recording select * from old_recording;
    drop table old_recording;
"""


def moonfire_shaped_v7(tmp_path) -> tuple[Seeded, sqlite3.Connection]:
    s = seed_v0(tmp_path)
    conn = open_db(s)
    upgrade.run_steps(conn, step_args(s), 7, quiet=True)
    conn.execute("pragma foreign_keys = off")
    conn.execute("pragma legacy_alter_table = on")  # as Moonfire's SQLite renamed then
    conn.executescript("begin;" + MOONFIRE_V7_RECORDING + "commit;")
    conn.execute("pragma legacy_alter_table = off")
    conn.execute("pragma foreign_keys = on")
    assert [r[3] for r in conn.execute("pragma foreign_key_list(recording)")] == \
        ["video_sample_entry_id", "stream_id"]  # no open_id
    return s, conn


def test_moonfire_v7_recording_gets_open_id_foreign_key_at_7_to_8(tmp_path):
    s, conn = moonfire_shaped_v7(tmp_path)
    # A view over recording would stop a plain (non-legacy) rename of new_recording.
    conn.execute("create view recent as select composite_id, open_id from recording "
                 "where start_time_90k > 0")
    tables = ("recording", "recording_integrity", "recording_playback")
    before = {t: conn.execute(f"select * from {t} order by composite_id").fetchall()
              for t in tables}
    assert len(before["recording"]) == 6

    notes = upgrade.run_step(conn, step_args(s), 7)
    assert notes[0] == ("recording rebuilt with open_id's foreign key to open "
                        "(Moonfire's 6 -> 7 left it out); 6 rows kept")
    assert version(conn) == 8
    assert_schema(conn, 8)  # the open_id -> open(id) line included
    assert conn.execute("pragma foreign_keys").fetchone()[0] == 1  # back on
    after = {t: conn.execute(f"select * from {t} order by composite_id").fetchall()
             for t in tables}
    assert after["recording"] == before["recording"]
    assert after["recording_playback"] == before["recording_playback"]
    assert [r[:-1] for r in after["recording_integrity"]] == before["recording_integrity"]
    front = 1 << 32
    assert conn.execute("select composite_id, open_id, run_offset, flags, wall_duration_90k "
                        "from recording where stream_id = 1 order by composite_id"
                        ).fetchall() == [(front | 1, 1, 0, 0, 180000), (front | 2, 1, 1, 1, 90000),
                                         (front | 3, 1, 0, 0, 180000)]
    assert conn.execute("select count(*) from recent").fetchone()[0] == 6
    assert conn.execute("pragma foreign_key_check").fetchall() == []
    assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        conn.execute("update recording set open_id = 99 where composite_id = ?", (front | 1,))


def test_moonfire_v7_recording_with_unknown_open_id_stops_7_to_8(tmp_path):
    s, conn = moonfire_shaped_v7(tmp_path)
    conn.execute("update recording set open_id = 42 where composite_id = ?", ((2 << 32) | 1,))
    before = "\n".join(conn.iterdump())
    with pytest.raises(upgrade.UpgradeError) as e:
        upgrade.run_steps(conn, step_args(s), 8, quiet=True)
    assert str(e.value).startswith(
        f"1 recording(s) name an open_id that is not in the open table (e.g. composite_id "
        f"{(2 << 32) | 1}), so recording.open_id can't reference open (id). Add placeholder opens with `insert into open (id, uuid) select "
        f"distinct open_id, randomblob(16) from recording where open_id not in (select id "
        f"from open);` in `nvr.py sql`")
    assert version(conn) == 7 and "\n".join(conn.iterdump()) == before
    assert conn.execute("pragma foreign_keys").fetchone()[0] == 1
    conn.execute("insert into open (id, uuid) select distinct open_id, randomblob(16) "
                 "from recording where open_id not in (select id from open)")
    upgrade.run_steps(conn, step_args(s), 8, quiet=True)
    assert_schema(conn, 8)
    assert conn.execute("pragma foreign_key_check").fetchall() == []


def test_refuses_newer_and_unversioned_databases(tmp_path):
    for name, sql, pattern in [
            ("newer", "create table version (id integer primary key, unix_time, notes); "
                      "insert into version values (10, 0, 'future');",
             r"schema version 10 is newer than this nvr supports \(9\); use a newer nvr"),
            ("unversioned", "create table camera (id integer primary key);",
             r"no version table.*docs/upgrade.md")]:
        db_dir = tmp_path / name
        db_dir.mkdir()
        conn = sqlite3.connect(db_dir / "db")
        conn.executescript(sql)
        conn.close()
        with pytest.raises(upgrade.UpgradeError, match=pattern):
            upgrade.run(argparse.Namespace(db_dir=str(db_dir), sample_file_dir=None,
                                           preset_journal="delete", no_vacuum=False,
                                           no_backup=False, dry_run=False))
        assert sorted(os.listdir(db_dir)) == ["db"]


def test_refuses_while_another_process_holds_the_lock(tmp_path):
    s = seed_v0(tmp_path)
    fd = os.open(s.db_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        with pytest.raises(upgrade.UpgradeError, match="locked"):
            upgrade.run(step_args(s))
    finally:
        os.close(fd)
    assert version(open_db(s)) == 0


# ------------------------------------------------------- killed steps

def test_step_failing_halfway_leaves_previous_version(tmp_path, monkeypatch):
    s = seed_v0(tmp_path)
    conn = open_db(s)
    upgrade.run_steps(conn, step_args(s), 5, quiet=True)
    before = snapshot(s)
    real = v5_to_v6.pixel_aspect_ratio
    calls = []

    def fail_on_second(*a):
        calls.append(a)
        if len(calls) == 2:  # after the first sample entry row went in
            raise RuntimeError("simulated crash")
        return real(*a)

    monkeypatch.setattr(v5_to_v6, "pixel_aspect_ratio", fail_on_second)
    with pytest.raises(RuntimeError, match="simulated crash"):
        upgrade.run_steps(conn, step_args(s), 6, quiet=True)
    assert version(conn) == 5
    assert_schema(conn, 5)
    assert snapshot(s) == before
    monkeypatch.setattr(v5_to_v6, "pixel_aspect_ratio", real)
    upgrade.run_steps(conn, step_args(s), 8, quiet=True)
    assert version(conn) == 8
    assert_schema(conn, 8)


_CHILD = """
import argparse, sys
sys.path.insert(0, sys.argv[1])
import upgrade
p = argparse.ArgumentParser()
p.add_argument("--db-dir")
upgrade.add_arguments(p)
sys.exit(upgrade.run(p.parse_args(sys.argv[2:])))
"""


def run_child(s: Seeded, crash_at: str | None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("NVR_CRASH_AT", None)
    if crash_at:
        env["NVR_CRASH_AT"] = crash_at
    return subprocess.run(
        [sys.executable, "-c", _CHILD, ROOT, "--db-dir", s.db_dir,
         "--sample-file-dir", s.sample_dir, "--no-vacuum"],
        env=env, capture_output=True, text=True, timeout=60)


def test_killed_during_renames_then_rerun_completes(tmp_path):
    s = seed_v0(tmp_path)
    p = run_child(s, "upgrade-v2-to-v3-after-rename")
    assert p.returncode == -signal.SIGKILL, p.stderr
    conn = open_db(s)
    assert version(conn) == 2
    names = set(os.listdir(s.sample_dir))
    renamed = {c for c in s.files if composite_name(c) in names}
    assert len(renamed) == 1  # killed after the first rename
    assert all(s.files[c][0] in names for c in s.files if c not in renamed)
    conn.close()

    p = run_child(s, None)
    assert p.returncode == 0, p.stderr
    conn = open_db(s)
    assert version(conn) == 9
    assert_schema(conn, 9)
    assert sorted(os.listdir(s.sample_dir)) == sorted(
        ["meta"] + [composite_name(c) for c in s.files])
    for cid, (_, content) in s.files.items():
        with open(os.path.join(s.sample_dir, composite_name(cid)), "rb") as f:
            assert f.read() == content


@pytest.mark.parametrize("point,version_after", [
    ("upgrade-v1-to-v2-after-meta", 1),
    ("upgrade-v4-to-v5-after-meta", 4),
    ("upgrade-v7-to-v8-before-commit", 7),
])
def test_killed_at_crash_point_then_rerun_completes(tmp_path, point, version_after):
    s = seed_v0(tmp_path)
    p = run_child(s, point)
    assert p.returncode == -signal.SIGKILL, p.stderr
    conn = open_db(s)
    assert version(conn) == version_after
    conn.close()
    p = run_child(s, None)
    assert p.returncode == 0, p.stderr
    conn = open_db(s)
    assert version(conn) == 9
    meta, raw = read_meta(s)
    assert len(raw) == 512 and dirmeta.check_consistent(db_meta_v7(conn), meta) is None


def db_meta_v7(conn) -> dirmeta.DirMeta:
    """db_dir_meta for schema 7+, where the path moved into JSON but the rest stayed."""
    (db_uuid,) = conn.execute("select uuid from meta").fetchone()
    dir_uuid, open_id, open_uuid = conn.execute(
        "select d.uuid, d.last_complete_open_id, o.uuid from sample_file_dir d "
        "join open o on (d.last_complete_open_id = o.id)").fetchone()
    return dirmeta.DirMeta(db_uuid, dir_uuid, dirmeta.Open(open_id, open_uuid))


# ----------------------------------- after the upgrade, nvr uses the database

@pytest.fixture
def upgraded(tmp_path) -> Seeded:
    """A seeded Moonfire version 0 database and dir, upgraded to version 9."""
    s = seed_v0(tmp_path)
    conn = open_db(s)
    upgrade.run_steps(conn, step_args(s), quiet=True)
    conn.close()
    return s


def test_check_is_clean_after_upgrade(upgraded):
    import check
    out = io.StringIO()
    assert check.run(upgraded.db_dir, check.Options(), out) == 0, out.getvalue()


def test_check_notes_moonfire_garbage_after_upgrade(tmp_path, capsys):
    """A garbage row whose file is still there (Moonfire, or a crash, left it;
    start-up deletes it) is normal: right after the upgrade `check` notes it
    and exits 0."""
    check = pytest.importorskip("check")
    s = at_version(tmp_path, 7)
    cid = (1 << 32) | 9  # a recording Moonfire had moved to garbage but not yet unlinked
    with open(os.path.join(s.sample_dir, composite_name(cid)), "wb") as f:
        f.write(b"deleted recording")
    conn = open_db(s)
    conn.execute("insert into garbage values (1, ?)", (cid,))
    conn.close()
    assert upgrade.run(step_args(s)) == 0
    out = io.StringIO()
    assert check.run(s.db_dir, check.Options(), out) == 0, out.getvalue()
    assert (f"note: recording 1/9 ({composite_name(cid)} in {os.path.abspath(s.sample_dir)}): "
            f"garbage file not yet deleted") in out.getvalue()


def test_pre_upgrade_recording_plays_through_view_mp4(upgraded, tmp_path):
    """A recording Moonfire made (schema 0) plays after the upgrade: its view.mp4
    is read by ffprobe and every frame decodes with PyAV."""
    import av
    import clock
    import db as dbmod
    import mp4
    d = dbmod.Database.open_dir(upgraded.db_dir, clock.RealClocks(), read_only=True)
    try:
        d.open_sample_file_dirs()
        vf = mp4.build_view(d, 1, ["1", "3"])  # front/main: its two recordings of entry 1
        path = str(tmp_path / "view.mp4")
        with open(path, "wb") as f:
            f.write(vf.read(0, vf.length))
    finally:
        d.close()
    import subprocess
    r = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-show_entries",
                        "stream=codec_name,width,height,nb_read_frames", "-of", "csv=p=0",
                        path], capture_output=True, text=True, check=True)
    assert r.stderr == "" and r.stdout.strip() == "h264,1280,720,4"
    with av.open(path) as c:
        frames = [fr for fr in c.decode(video=0)]
    assert len(frames) == 4 and all((fr.width, fr.height) == (1280, 720) for fr in frames)


# ------------------------- all or nothing: refusals through `nvr.py upgrade`

def nvr_upgrade(capsys, db_dir: str, *extra: str) -> tuple[int, str]:
    """Runs `nvr.py upgrade` in-process; returns (exit status, the error line),
    asserting the failure is exactly one `error:` line, the last, and no traceback."""
    import nvr
    status = nvr.main(["upgrade", "--db-dir", db_dir, *extra])
    return status, one_error_line(capsys.readouterr().err)


def one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and err.splitlines()[-1] == errors[0], err
    return errors[0]


def at_version(tmp_path, v: int) -> Seeded:
    """The seeded database upgraded (step by step, no backup) to version v."""
    s = seed_v0(tmp_path)
    conn = open_db(s)
    upgrade.run_steps(conn, step_args(s), v, quiet=True)
    conn.close()
    return s


def unchanged(s: Seeded, before, v: int) -> None:
    """Nothing changed: database and dir as before, at version v, no backup."""
    assert snapshot(s) == before
    conn = open_db(s)
    assert version(conn) == v
    conn.close()
    assert sorted(os.listdir(s.db_dir)) == ["db"]


def nothing_changed(v: int) -> str:
    return f"Nothing was changed: the database is still at version {v}"


def test_missing_sample_file_at_v0_refused_before_any_change(tmp_path, capsys):
    s = seed_v0(tmp_path)
    os.unlink(os.path.join(s.sample_dir, s.files[1 << 32 | 2][0]))
    before = snapshot(s)
    status, err = nvr_upgrade(capsys, s.db_dir, "--sample-file-dir", s.sample_dir)
    assert status == 1
    assert err.startswith("error: step 1 -> 2 would refuse: 1 recordings' sample files are "
                          "missing from ") and nothing_changed(0) in err
    unchanged(s, before, 0)


@pytest.mark.parametrize("start", [3, 4])
def test_foreign_meta_refused_before_any_change(tmp_path, capsys, start):
    s = at_version(tmp_path, start)
    meta, _ = read_meta(s)
    with open(os.path.join(s.sample_dir, "meta"), "wb") as f:  # another database's dir
        f.write(dirmeta.encode(dataclasses.replace(meta, db_uuid=b"\x42" * 16)))
    before = snapshot(s)
    status, err = nvr_upgrade(capsys, s.db_dir)
    assert status == 1
    assert err.startswith("error: step 4 -> 5 would refuse: sample file dir ")
    assert "the meta file belongs to database 4242" in err and nothing_changed(start) in err
    unchanged(s, before, start)


def test_database_refusal_of_a_later_step_refused_before_any_change(tmp_path, capsys):
    """6 -> 7 refuses a camera without a host; from version 0 that is found by
    the preflight too, and the message says its SQL is for version 6."""
    s = seed_v0(tmp_path)
    conn = open_db(s)
    conn.execute("update camera set host = null where id = 2")
    conn.close()
    before = snapshot(s)
    status, err = nvr_upgrade(capsys, s.db_dir, "--sample-file-dir", s.sample_dir)
    assert status == 1
    assert err.startswith("error: step 6 -> 7 would refuse: stream 2 (camera 2, main) has URL "
                          "'rtsp:///ch1', which has no host")
    assert err.endswith(f"{nothing_changed(0)} (found by the preflight, which runs every step "
                        f"on a scratch copy first). Any SQL above is for a version 6 database; "
                        f"docs/upgrade.md, \"When it refuses\", has the fix for earlier versions")
    unchanged(s, before, 0)


def hold_flock(path: str):
    """A child process holding an exclusive flock on `path`, until it is killed."""
    p = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys\n"
                          "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
                          "fcntl.flock(fd, fcntl.LOCK_EX)\n"
                          "print('locked', flush=True)\n"
                          "sys.stdin.read()", path],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline() == "locked\n"
    return p


@pytest.mark.parametrize("start", [0, 3])
@pytest.mark.parametrize("problem", ["missing", "locked"])
def test_unusable_sample_dir_refused_before_any_change(tmp_path, capsys, start, problem):
    s = at_version(tmp_path, start)
    holder = None
    if problem == "missing":  # e.g. its disk not mounted
        os.rename(s.sample_dir, s.sample_dir + ".away")
        before = None
        expected = f"sample file dir {os.path.abspath(s.sample_dir)} does not exist"
    else:
        before = snapshot(s)
        holder = hold_flock(s.sample_dir)
        expected = f"sample file dir {os.path.abspath(s.sample_dir)} is locked by another process"
    try:
        status, err = nvr_upgrade(capsys, s.db_dir, "--sample-file-dir", s.sample_dir)
    finally:
        if holder:
            holder.kill()
            holder.wait()
    assert status == 1
    assert err.startswith(f"error: step {1 if start == 0 else 4} -> {2 if start == 0 else 5} "
                          f"would refuse: {expected}")
    assert nothing_changed(start) in err
    if problem == "missing":
        os.rename(s.sample_dir + ".away", s.sample_dir)
        before = snapshot(s)
    unchanged(s, before, start)


def run_without_root_powers(cmd: list[str]) -> subprocess.CompletedProcess:
    """Runs cmd so file permissions bind: as root, without the capabilities
    that override them (setpriv), so a chmod 0555 directory is read-only."""
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: can't make a directory read-only")
        cmd = [setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner"] + cmd
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("start", [0, 3])
def test_read_only_sample_dir_refused_before_any_change(tmp_path, start):
    s = at_version(tmp_path, start)
    before = snapshot(s)
    os.chmod(s.sample_dir, 0o555)
    try:
        p = run_without_root_powers([sys.executable, os.path.join(ROOT, "nvr.py"), "upgrade",
                                     "--db-dir", s.db_dir, "--sample-file-dir", s.sample_dir])
    finally:
        os.chmod(s.sample_dir, 0o755)
    assert p.returncode == 1, p.stderr
    err = one_error_line(p.stderr)
    assert err.startswith(f"error: step {1 if start == 0 else 4} -> {2 if start == 0 else 5} "
                          f"would refuse: sample file dir {os.path.abspath(s.sample_dir)} is "
                          f"not writable (user ")
    assert nothing_changed(start) in err
    unchanged(s, before, start)


def test_read_only_db_dir_refused_before_any_change(tmp_path):
    s = seed_v0(tmp_path)
    before = snapshot(s)
    os.chmod(s.db_dir, 0o555)
    try:
        p = run_without_root_powers([sys.executable, os.path.join(ROOT, "nvr.py"), "upgrade",
                                     "--db-dir", s.db_dir, "--sample-file-dir", s.sample_dir])
    finally:
        os.chmod(s.db_dir, 0o755)
    assert p.returncode == 1, p.stderr
    err = one_error_line(p.stderr)
    assert err.startswith(f"error: database directory {s.db_dir} is not writable (user ")
    assert err.endswith("Nothing was changed")
    unchanged(s, before, 0)


@pytest.mark.parametrize("how", ["sqlite", "flock"])
def test_database_locked_by_another_process(tmp_path, capsys, monkeypatch, how):
    """Another process holds the database's SQLite lock (a sqlite3 shell in a
    transaction) or the database directory's flock (a running nvr or Moonfire)."""
    s = seed_v0(tmp_path)
    before = snapshot(s)
    monkeypatch.setattr(upgrade, "BUSY_TIMEOUT_SEC", 0.1)
    if how == "flock":
        p = hold_flock(s.db_dir)
    else:
        p = subprocess.Popen([sys.executable, "-c", "import sqlite3, sys\n"
                              "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
                              "c.execute('begin exclusive')\n"
                              "print('locked', flush=True)\n"
                              "sys.stdin.read()", os.path.join(s.db_dir, "db")],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline() == "locked\n"
    try:
        status, err = nvr_upgrade(capsys, s.db_dir, "--sample-file-dir", s.sample_dir)
    finally:
        p.kill()
        p.wait()
    assert status == 1
    if how == "flock":
        assert err.startswith(f"error: database directory {s.db_dir} is locked by another "
                              f"process; stop the running nvr")
    else:
        assert err.startswith(f"error: the database {os.path.join(s.db_dir, 'db')} is locked "
                              f"by another process (database is locked): close any sqlite3 "
                              f"shell")
        assert err.endswith("Nothing was changed")
    unchanged(s, before, 0)


def corrupt(path: str) -> None:
    """Overwrites the middle of the recording table's root page."""
    conn = sqlite3.connect(path)
    (root,) = conn.execute("select rootpage from sqlite_master where name = 'recording'"
                           ).fetchone()
    (page_size,) = conn.execute("pragma page_size").fetchone()
    conn.close()
    with open(path, "r+b") as f:
        f.seek((root - 1) * page_size + 8)
        f.write(b"\xff" * 64)


@pytest.mark.parametrize("case,expected", [
    ("not sqlite", r"error: .*/db is not an SQLite database \(file is not a database\); is "
                   r"--db-dir the directory that holds Moonfire's or nvr's `db` file\? "
                   r"Nothing was changed"),
    ("corrupt", r"error: the database .*/db is damaged \(SQLite.*\); restore it from a "
                r"backup, or try `sqlite3 .*/db \.recover`\. Nothing was changed"),
    ("negative", r"error: database schema version -1 is not one Moonfire or nvr ever wrote "
                 r"\(they are 0 to 9\); is this the right database\? Nothing was changed"),
    ("newer", r"error: database schema version 10 is newer than this nvr supports \(9\); use "
              r"a newer nvr\. Nothing was changed"),
])
def test_unusable_database_is_a_one_line_error(tmp_path, capsys, case, expected):
    s = seed_v0(tmp_path)
    path = os.path.join(s.db_dir, "db")
    if case == "not sqlite":
        with open(path, "wb") as f:
            f.write(b"camera,recording\n" * 512)
    elif case == "corrupt":
        corrupt(path)
    else:
        conn = sqlite3.connect(path)
        conn.execute("insert into version values (?, 0, 'odd')", (-1 if case == "negative" else 10,))
        if case == "negative":
            conn.execute("delete from version where id >= 0")
        conn.commit()
        conn.close()
    before = file_hashes(s)
    status, err = nvr_upgrade(capsys, s.db_dir, "--sample-file-dir", s.sample_dir)
    assert status == 1
    assert re.fullmatch(expected, err), err
    assert file_hashes(s) == before


def file_hashes(s: Seeded) -> dict:
    """Every file of the db dir and the sample dir, by name, with its sha256."""
    out = {}
    for d in (s.db_dir, s.sample_dir):
        for n in sorted(os.listdir(d)):
            with open(os.path.join(d, n), "rb") as f:
                out[os.path.join(d, n)] = hashlib.sha256(f.read()).hexdigest()
    return out


# --------------------- durability: the fsyncs around every rename (fsops.Calls)

class RecordingCalls(upgrade.fsops.Calls):
    """Records each file operation, by path, in `trace` (shared with the SQL
    trace of the database connection); `fail(op, path)` may return an errno
    to make that call fail with it."""

    def __init__(self, trace: list, fail=None):
        self.trace, self.fail, self.paths = trace, fail, {}

    def _path(self, name, dir_fd=None) -> str:
        base = self.paths[dir_fd] if dir_fd is not None else os.getcwd()
        return os.path.realpath(os.path.join(base, name))

    def _do(self, op: str, *paths: str) -> None:
        err = self.fail(op, paths[-1]) if self.fail else None
        if err:
            raise OSError(err, os.strerror(err), paths[0], None, *paths[1:])
        self.trace.append((op, *paths))

    def open(self, path, flags, mode=0o777, *, dir_fd=None):
        p = self._path(path, dir_fd)
        fd = super().open(path, flags, mode, dir_fd=dir_fd)
        self.paths[fd] = p
        self.trace.append(("create" if flags & os.O_CREAT else "open", p))
        return fd

    def write(self, fd, data):
        self._do("write", self.paths[fd])
        return super().write(fd, data)

    def fsync(self, fd):
        self._do("fsync", self.paths[fd])
        super().fsync(fd)

    def rename(self, src, dst, *, dir_fd=None):
        self._do("rename", self._path(src, dir_fd), self._path(dst, dir_fd))
        super().rename(src, dst, dir_fd=dir_fd)

    def unlink(self, name, *, dir_fd=None):
        self._do("unlink", self._path(name, dir_fd))
        super().unlink(name, dir_fd=dir_fd)


def durability_problems(trace: list, existing=frozenset()) -> list[str]:
    """What a crash could lose, judged from the trace:
    - a file renamed into place whose bytes were not fsynced after its last
      write and before the rename: the new name could point at an empty file.
      Files in `existing` (there, durable, before the run: sample files) need
      no fsync; any other (a temporary written through the seam, or one SQLite
      wrote, such as the backup) does;
    - a rename or unlink not followed by an fsync of its directory before the
      next COMMIT of the database (or the end): the database could say a
      version whose file changes are lost."""
    problems, synced, pending = [], {}, {}
    for e in trace:
        op, path = e[0], e[1]
        if op == "create":
            synced[path] = False
        elif op == "write":
            synced[path] = False
        elif op == "fsync":
            synced[path] = True
            pending.pop(path, None)
        elif op == "rename":
            if not synced.get(path, path in existing):
                problems.append(f"renamed {path} to {e[2]} before fsyncing it")
            pending.setdefault(os.path.dirname(e[2]), f"rename of {path}")
        elif op == "unlink":
            pending.setdefault(os.path.dirname(path), f"unlink of {path}")
        elif op == "commit":
            problems += [f"commit with the {what} in {d} not fsynced" for d, what in
                         pending.items()]
            pending.clear()
    problems += [f"end with the {what} in {d} not fsynced" for d, what in pending.items()]
    return problems


def traced_run(s: Seeded, monkeypatch, fail=None) -> list:
    """upgrade.run with file operations and the database's COMMITs traced."""
    trace = []
    real_connect = upgrade._connect
    db_path = os.path.join(s.db_dir, "db")

    def connect(path, read_only, pragmas):
        conn = real_connect(path, read_only, pragmas)
        if path == db_path:  # not the preflight's scratch copy
            conn.set_trace_callback(
                lambda sql: trace.append(("commit", db_path))
                if sql.strip().lower() == "commit" else None)
        return conn

    monkeypatch.setattr(upgrade, "_connect", connect)
    upgrade.run(step_args(s, no_vacuum=True), calls=RecordingCalls(trace, fail))
    return trace


def test_every_rename_is_fsynced_before_the_commit(tmp_path, monkeypatch):
    s = seed_v0(tmp_path)
    sample = os.path.realpath(s.sample_dir)
    db_dir = os.path.realpath(s.db_dir)
    existing = {os.path.join(d, n) for d in (sample, db_dir) for n in os.listdir(d)}
    trace = traced_run(s, monkeypatch)
    renames = [e[1:] for e in trace if e[0] == "rename"]
    # What the trace must show for the check below to mean anything: the
    # backup, 1 -> 2's meta, 2 -> 3's sample files, 4 -> 5's meta.
    assert renames[0] == (os.path.join(db_dir, "db.pre-upgrade-v0.tmp"),
                          os.path.join(db_dir, "db.pre-upgrade-v0"))
    meta = (os.path.join(sample, "meta.tmp"), os.path.join(sample, "meta"))
    assert renames.count(meta) == 2
    assert sorted(r[1] for r in renames if r != meta and r[0].startswith(sample)) == \
        sorted(os.path.join(sample, composite_name(c)) for c in s.files)
    assert ("unlink", os.path.join(sample, s.garbage_file)) in trace
    assert sum(e[0] == "commit" for e in trace) == 9  # one per step
    assert durability_problems(trace, existing) == []


def test_preflight_copy_is_private_and_removed(tmp_path, monkeypatch):
    s = seed_v0(tmp_path)
    seen = []
    real = upgrade._connect

    def connect(path, read_only, pragmas):
        if path.endswith(".upgrade-preflight"):
            seen.append(os.stat(path).st_mode & 0o777)
        return real(path, read_only, pragmas)

    monkeypatch.setattr(upgrade, "_connect", connect)
    assert upgrade.run(step_args(s, no_vacuum=True)) == 0
    assert seen == [0o600]
    assert sorted(os.listdir(s.db_dir)) == ["db", "db.pre-upgrade-v0"]


def test_durability_check_catches_a_missing_or_late_fsync():
    """The checker itself, on traces of what a deleted or moved fsync looks like."""
    good = [("create", "/d/meta.tmp"), ("write", "/d/meta.tmp"), ("fsync", "/d/meta.tmp"),
            ("rename", "/d/meta.tmp", "/d/meta"), ("fsync", "/d"), ("commit", "/db")]
    assert durability_problems(good) == []
    assert durability_problems(good[:2] + good[3:]) == [
        "renamed /d/meta.tmp to /d/meta before fsyncing it"]
    assert durability_problems(good[:2] + [good[3], good[2]] + good[4:]) == [
        "renamed /d/meta.tmp to /d/meta before fsyncing it"]
    assert durability_problems(good[:4] + good[5:]) == [
        "commit with the rename of /d/meta.tmp in /d not fsynced"]
    assert durability_problems(good[:4] + [good[5], good[4]]) == [
        "commit with the rename of /d/meta.tmp in /d not fsynced"]
    # A file SQLite wrote (the backup): fsynced through the seam, or not at all.
    backup = [("open", "/db/b.tmp"), ("fsync", "/db/b.tmp"), ("rename", "/db/b.tmp", "/db/b"),
              ("open", "/db"), ("fsync", "/db"), ("commit", "/db/db")]
    assert durability_problems(backup) == []
    assert durability_problems(backup[2:]) == ["renamed /db/b.tmp to /db/b before fsyncing it"]
    assert durability_problems(backup[:3] + backup[5:]) == [
        "commit with the rename of /db/b.tmp in /db not fsynced"]
    # A sample file that was there before the run needs only its dir's fsync.
    renamed = [("rename", "/s/u", "/s/1"), ("fsync", "/s"), ("commit", "/db/db")]
    assert durability_problems(renamed, {"/s/u"}) == []
    assert durability_problems(renamed[:1] + renamed[2:], {"/s/u"}) == [
        "commit with the rename of /s/u in /s not fsynced"]


@pytest.mark.parametrize("op,where,n,version_after", [
    ("rename", "sample file", 3, 2),   # the third sample file rename in 2 -> 3
    ("fsync", "sample dir", 3, 4),     # 4 -> 5's fsync of the dir (1->2, 2->3 had theirs)
    ("fsync", "meta.tmp", 2, 4),       # 4 -> 5's fsync of its new meta file
])
def test_injected_eio_mid_upgrade_is_one_line_naming_the_version(
        tmp_path, monkeypatch, op, where, n, version_after):
    s = seed_v0(tmp_path)
    sample = os.path.realpath(s.sample_dir)
    seen = []

    def fail(call, path):
        hit = call == op and {"sample file": os.path.dirname(path) == sample
                              and not path.endswith(("meta", "meta.tmp")),
                              "sample dir": path == sample,
                              "meta.tmp": path == os.path.join(sample, "meta.tmp")}[where]
        if hit:
            seen.append(path)
            return errno.EIO if len(seen) == n else None
        return None

    with pytest.raises(upgrade.UpgradeError) as e:
        traced_run(s, monkeypatch, fail)
    msg = str(e.value)
    assert "\n" not in msg
    step = f"{version_after} -> {version_after + 1}"
    assert msg.startswith(f"step {step} failed: Input/output error (")
    assert (f"The database is now at version {version_after} (the upgrade started at 0). Fix "
            f"the cause and rerun `nvr.py upgrade` to carry on from there, or go back: copy "
            f"{os.path.join(s.db_dir, 'db.pre-upgrade-v0')} over "
            f"{os.path.join(s.db_dir, 'db')}") in msg
    assert "undo the sample file dir changes as docs/upgrade.md" in msg
    conn = open_db(s)
    assert version(conn) == version_after
    conn.close()
    # Once the disk is well again, a rerun carries on to the end.
    monkeypatch.undo()
    assert upgrade.run(step_args(s, no_vacuum=True)) == 0
    conn = open_db(s)
    assert version(conn) == 9
    assert_schema(conn, 9)
    assert sorted(os.listdir(s.sample_dir)) == sorted(
        ["meta"] + [composite_name(c) for c in s.files])


# ---------------- each of these kills a mutant that survived test/mutate.py (docs/testing.md)

class ClosingCalls(RecordingCalls):
    """RecordingCalls that also keeps the fds opened through the seam and not closed."""

    def __init__(self, trace: list):
        super().__init__(trace)
        self.open_fds: dict[int, str] = {}
        self.closes = 0

    def open(self, path, flags, mode=0o777, *, dir_fd=None):
        fd = super().open(path, flags, mode, dir_fd=dir_fd)
        self.open_fds[fd] = self.paths[fd]
        return fd

    def close(self, fd):
        self.closes += 1
        self.open_fds.pop(fd)
        super().close(fd)


def test_every_fd_the_upgrade_opens_is_closed(tmp_path):
    """Each file and dir the upgrade opens through the seam (the temporary files of
    write_atomic, the sample dir, the backup's fsyncs) is closed again. The fd of
    write_atomic's temporary file was never checked: dropping its close (a mutant that
    survived) leaked an fd per meta file written."""
    s = seed_v0(tmp_path)
    calls = ClosingCalls([])
    assert upgrade.run(step_args(s, no_vacuum=True), calls=calls) == 0
    opened = [e[1] for e in calls.trace if e[0] in ("open", "create")]
    sample = os.path.realpath(s.sample_dir)
    assert opened.count(os.path.join(sample, "meta.tmp")) == 2  # 1 -> 2 and 4 -> 5
    assert calls.open_fds == {}
    assert calls.closes == len(opened)


def test_realdir_rename_of_a_missing_file_says_so(tmp_path):
    """`Dir.rename` returns False, changing nothing, when `old` doesn't exist; 2 -> 3
    relies on it to count a sample file missing under both names. Returning True (a
    mutant that survived: no test renamed a file that was gone) made such a file pass
    as renamed."""
    (tmp_path / "a").write_bytes(b"x")
    with upgrade.fsops.RealFiles().open_dir(str(tmp_path)) as d:
        assert d.rename("a", "b") is True
        assert d.rename("a", "c") is False
        assert d.unlink("b") is True
        assert d.unlink("b") is False
    assert os.listdir(tmp_path) == []


def test_a_sample_file_missing_at_2_to_3_is_reported(tmp_path, caplog):
    """A sample file gone from the dir between 1 -> 2 and 2 -> 3 (under its uuid and its
    new name alike) is logged and noted, not counted as renamed."""
    s = seed_v0(tmp_path)
    conn = open_db(s)
    args = step_args(s)
    upgrade.run_steps(conn, args, 2, quiet=True)
    cid, (uuid_name, _) = sorted(s.files.items())[0]
    os.unlink(os.path.join(s.sample_dir, uuid_name))
    with caplog.at_level(logging.WARNING):
        notes = upgrade.run_step(conn, args, 2)
    assert notes == [f"{len(s.files) - 1} sample files renamed to composite ids",
                     "1 sample files are missing (see the log); `nvr.py check` will report "
                     "their recordings"]
    assert [r.getMessage() for r in caplog.records if r.name == "upgrade.v2_to_v3"] == [
        f"sample file {uuid_name} of recording {cid >> 32}/{cid & 0xFFFFFFFF} is missing "
        f"from {os.path.abspath(s.sample_dir)}"]
    assert version(conn) == 3
    conn.close()


def test_write_atomic_makes_a_private_file_and_leaves_no_temporary(tmp_path):
    """The meta file the upgrade writes is 0600 like every file in a sample file dir
    (dir.py M1), whatever the umask lets through; a mutant of the mode (0o600 -> 0o601,
    others may execute it) survived."""
    old = os.umask(0o022)
    try:
        with upgrade.fsops.RealFiles().open_dir(str(tmp_path)) as d:
            d.write_atomic("meta", b"new")
            d.write_atomic("meta", b"newer")  # over the old one
    finally:
        os.umask(old)
    assert os.listdir(tmp_path) == ["meta"]
    assert (tmp_path / "meta").read_bytes() == b"newer"
    assert os.stat(tmp_path / "meta").st_mode & 0o777 == 0o600
