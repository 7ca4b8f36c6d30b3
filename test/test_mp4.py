"""Tests of mp4.py: the s= grammar, exact boxes, a pinned digest, and real files.

Two strategies, as in Moonfire's mp4.rs tests:
- byte-exact: small recordings with hand-picked frames; whole files are compared
  with bytes built here independently from reference §4.2-§4.6 (`box`, `full`),
  and single boxes (stts, stsz, stss, elst, trun) with Moonfire's known answers;
  one file's headers and body are pinned by digest ("brittle, which is the
  point": when it changes, FORMAT_VERSION must change too, or clients mix ranges
  of two formats);
- independent readers: real H.264/H.265 clips replayed through the streamer and
  writer (replay.py) into recordings, then every generated file is read by
  ffprobe (Debian's FFmpeg) for duration and frame count, and every frame is
  decoded with PyAV. The clip's moving bar (clips.py: frame i has it at x = 4i)
  tells which frame a decoder presents first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
import shutil
import struct
import subprocess
import threading
import time

import av
import av.logging
import pytest

import clock
import db
import dir as dirmod
import mp4
import recording
import writer
from clips import make_clip
from conftest import DUMMY_VSE, START_NS, make_testdb
from mp4 import Mp4Error, NotFound, SegmentSpec
from replay import clip_writer, drain, record

T0_90K = recording.to_90k_from_ns(START_NS)  # 2026-11-29T04:00:00-08:00
SEC = 90_000
ZONE = "America/Los_Angeles"
EPOCH_1904 = 2_082_844_800


@pytest.fixture(autouse=True)
def zone():
    recording.set_server_zone(ZONE)
    yield
    recording.set_server_zone(None)


@pytest.fixture(autouse=True)
def empty_table_cache():
    """Each test starts with an empty mp4.table_cache, so index reads are predictable."""
    mp4.table_cache.clear()
    yield
    mp4.table_cache.clear()


# --- the s= grammar (reference §5.2) -----------------------------------------------------

@pytest.mark.parametrize("value,spec", [
    ("1", SegmentSpec(1, 1)),
    ("1@42", SegmentSpec(1, 1, 42)),
    ("1.26-", SegmentSpec(1, 1, None, 26)),
    ("1@42.26-", SegmentSpec(1, 1, 42, 26)),
    ("1.-42", SegmentSpec(1, 1, None, 0, 42)),
    ("1.26-42", SegmentSpec(1, 1, None, 26, 42)),
    ("1-5", SegmentSpec(1, 5)),
    ("1-5.26-", SegmentSpec(1, 5, None, 26)),
    ("1-5.-42", SegmentSpec(1, 5, None, 0, 42)),
    ("1-5.26-42", SegmentSpec(1, 5, None, 26, 42)),
    ("1-5@7.26-42", SegmentSpec(1, 5, 7, 26, 42)),
    ("0.-", SegmentSpec(0, 0)),
    ("3.5-5", SegmentSpec(3, 3, None, 5, 5)),   # zero-length: allowed
    ("2147483647", SegmentSpec(2**31 - 1, 2**31 - 1)),
])
def test_parse_segment(value, spec):
    assert mp4.parse_segment(value) == spec


@pytest.mark.parametrize("value,message", [
    ("", "expected START_ID"),
    ("a", "expected START_ID"),
    ("-1", "expected START_ID"),
    ("1-", "expected START_ID"),
    ("1.26", "expected START_ID"),
    ("1.26-42x", "expected START_ID"),
    ("1 ", "expected START_ID"),
    ("1@", "expected START_ID"),
    ("1.2-3@4", "expected START_ID"),    # open id goes before the times
    ("١", "expected START_ID"),          # an Arabic-Indic digit is not 0-9
    ("5-1", "end id 1 is before start id 5"),
    ("1.42-26", "relative end 26 is before relative start 42"),
    ("2147483648", "recording ids go up to 2147483647"),
    ("1@4294967296", "open ids go up to 4294967295"),
    ("1.99999999999999999999-", "relative time too large"),
])
def test_parse_segment_errors(value, message):
    with pytest.raises(Mp4Error, match=message) as e:
        mp4.parse_segment(value)
    assert repr(value) in str(e.value)


def test_parse_segments():
    assert mp4.parse_segments(["1-2", "4.5-"]) == [SegmentSpec(1, 2), SegmentSpec(4, 4, None, 5)]
    with pytest.raises(Mp4Error, match="no s parameter"):
        mp4.parse_segments([])


# --- reading boxes -------------------------------------------------------------------------

CONTAINERS = {"moov", "trak", "edts", "mdia", "minf", "dinf", "stbl", "mvex", "moof", "traf"}


@dataclasses.dataclass
class Box:
    type: str
    start: int
    end: int
    header: int
    children: list

    def body(self, data: bytes) -> bytes:
        return data[self.start + self.header:self.end]


def parse_boxes(data: bytes, start: int = 0, end: int | None = None) -> list[Box]:
    """Boxes (ISO/IEC 14496-12 §4.2) of data[start:end], which they must tile exactly."""
    end = len(data) if end is None else end
    out = []
    while start < end:
        size, kind = struct.unpack_from(">I4s", data, start)
        header = 8
        if size == 1:
            size, header = struct.unpack_from(">Q", data, start + 8)[0], 16
        assert size >= header and start + size <= end, (kind, start, size, end)
        b = Box(kind.decode(), start, start + size, header, [])
        if b.type in CONTAINERS:
            b.children = parse_boxes(data, start + header, start + size)
        out.append(b)
        start += size
    assert start == end
    return out


def walk(boxes: list[Box], prefix: str = ""):
    for b in boxes:
        path = f"{prefix}/{b.type}"
        yield path, b
        yield from walk(b.children, path)


def find(data: bytes, path: str, nth: int = 0) -> bytes:
    """The body of the nth box at `path` (e.g. "moov/trak/mdia/minf/stbl/stts")."""
    found = [b for p, b in walk(parse_boxes(data)) if p == "/" + path]
    return found[nth].body(data)


def paths(data: bytes) -> list[str]:
    return [p for p, _ in walk(parse_boxes(data))]


# --- building expected files independently (reference §4.2-§4.6) -------------------------

def box(kind: bytes, *parts: bytes) -> bytes:
    body = b"".join(parts)
    return struct.pack(">I", 8 + len(body)) + kind + body


def full(kind: bytes, version: int, flags: int, *parts: bytes) -> bytes:
    return box(kind, struct.pack(">I", version << 24 | flags), *parts)


def u32(*v: int) -> bytes:
    return struct.pack(f">{len(v)}I", *v)


def u64(*v: int) -> bytes:
    return struct.pack(f">{len(v)}Q", *v)


MATRIX = u32(0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
DINF = box(b"dinf", full(b"dref", 0, 0, u32(1), full(b"url ", 0, 1)))
TX3G = box(b"tx3g", bytes(6), b"\x00\x01",          # reserved, data_reference_index
           bytes(4), b"\x00\x00", bytes(4),          # display flags, justification, bg
           bytes(8),                                 # box record
           b"\x00\x00\x00\x00\x00\x01\x00\x12\xff\xff\xff\xff",  # style: font 1, 18 px, white
           box(b"ftab", b"\x00\x01\x00\x01\x09Monospace"))


def hdlr(handler: bytes) -> bytes:
    return full(b"hdlr", 0, 0, bytes(4), handler, bytes(12), b"\x00")


def mvhd(creation: int, duration: int, next_track: int) -> bytes:
    return full(b"mvhd", 1, 0, u64(creation, creation), u32(SEC), u64(duration),
                u32(0x10000), b"\x01\x00", bytes(10), MATRIX, bytes(24), u32(next_track))


def tkhd0(creation: int, duration: int, w: int, h: int) -> bytes:
    return full(b"tkhd", 0, 7, u32(creation, creation, 1, 0, duration), bytes(16), MATRIX,
                u32(w << 16, h << 16))


def mdhd(creation: int, duration: int) -> bytes:
    return full(b"mdhd", 1, 0, u64(creation, creation), u32(SEC), u64(duration), u32(0x55C40000))


def video_trak(creation, duration, stbl_boxes, edts=b"", w=640, h=360) -> bytes:
    vmhd = full(b"vmhd", 0, 1, bytes(8))
    return box(b"trak", tkhd0(creation, duration, w, h), edts,
               box(b"mdia", mdhd(creation, duration), hdlr(b"vide"),
                   box(b"minf", vmhd, DINF, box(b"stbl", *stbl_boxes))))


# --- synthetic recordings ------------------------------------------------------------------

def add_frames(t, frames, *, start_90k=T0_90K, run_offset=0, stream_id=None,
               wall_delta_90k=0) -> int:
    """Adds a recording of (duration, bytes, is_key) frames with a sample file whose
    byte i is (i * 7) & 255, like conftest's add_recording; returns its composite id.
    Its wall duration is the media duration plus `wall_delta_90k`."""
    stream_id = stream_id or t.stream_id
    enc = recording.SampleIndexEncoder()
    for dur, size, key in frames:
        enc.add_sample(dur, size, key)
    data = bytes((i * 7) & 0xFF for i in range(enc.sample_file_bytes))
    s = t.db.streams[stream_id]
    r = db.RecordingToInsert(
        run_offset=run_offset, start_time_90k=start_90k,
        prev_media_duration_90k=s.cum_media_duration_90k, prev_runs=s.cum_runs,
        video_sample_entry_id=t.vse_id, video_index=bytes(enc.video_index),
        video_samples=enc.video_samples, video_sync_samples=enc.video_sync_samples,
        sample_file_bytes=enc.sample_file_bytes,
        wall_duration_90k=enc.media_duration_90k + wall_delta_90k,
        media_duration_90k=enc.media_duration_90k,
        flags=db.FLAG_TRAILING_ZERO if frames[-1][0] == 0 else 0)
    cid = t.db.add_recording(stream_id, r)
    with open(os.path.join(t.sample_dir, dirmod.name_for(cid)), "xb") as f:
        f.write(data)
    t.db.mark_synced(cid)
    t.db.flush("test")
    return cid


def sample_bytes(n: int) -> bytes:
    return bytes((i * 7) & 0xFF for i in range(n))


def rows_of(t, stream_id=None):
    return t.db.list_recordings_by_id(stream_id or t.stream_id, 0, 1 << 31)


def make_file(t, kind, recordings, desired, **options):
    """Like Moonfire's make_mp4_from_encoders: a file of the media range `desired` of
    the recordings' concatenation."""
    b = mp4.FileBuilder(kind)
    done = 0
    for frames in recordings:
        add_frames(t, frames, start_90k=T0_90K + done)
    for row in rows_of(t):
        d = row.media_duration_90k
        b.append(row, (max(0, desired[0] - done), min(d, desired[1] - done)))
        done += d
    return b.build(t.db)


RISING = [(2 * i, 3 * i, True) for i in range(1, 6)]           # Moonfire's test frames
HALF_SYNC = [(2 * i, 3 * i, i % 2 == 1) for i in range(1, 6)]
STBL = "moov/trak/mdia/minf/stbl/"


def test_all_sync_frames(testdb):
    # [2, 2+4+6+8): the 2nd, 3rd and 4th samples.
    data = make_file(testdb, "mp4", [RISING], (2, 2 + 4 + 6 + 8)).read()
    assert "/moov/trak/edts" not in paths(data)
    assert find(data, STBL + "stts") == u32(0, 3, 1, 4, 1, 6, 1, 8)
    assert find(data, STBL + "stsz") == u32(0, 0, 3, 6, 9, 12)
    assert find(data, STBL + "stss") == u32(0, 3, 1, 2, 3)


def test_half_sync_frames_use_an_edit_list(testdb):
    # [2+4+6, 2+4+6+8): the 4th sample, and the 3rd because the 4th isn't a key frame.
    data = make_file(testdb, "mp4", [HALF_SYNC], (12, 20)).read()
    assert find(data, "moov/trak/edts/elst") == u32(0x01000000, 1) + u64(8, 6) + u32(0x10000)
    assert find(data, STBL + "stts") == u32(0, 2, 1, 6, 1, 8)
    assert find(data, STBL + "stsz") == u32(0, 0, 2, 9, 12)
    assert find(data, STBL + "stss") == u32(0, 1, 1)


def test_multi_segment_stss_numbers_frames_across_the_file(testdb):
    first = [(1, 1, True), (2, 2, False), (3, 3, True)]
    second = [(4, 4, True), (5, 5, False)]
    data = make_file(testdb, "mp4", [first, second], (1 + 2, 1 + 2 + 3 + 4)).read()
    assert find(data, STBL + "stss") == u32(0, 2, 1, 2)
    assert find(data, STBL + "stsc") == u32(0, 2, 1, 1, 1, 2, 1, 1)


def test_zero_duration_recording(testdb):
    # A recording whose only frame is a run's trailing zero, after one with an edit.
    data = make_file(testdb, "mp4", [[(2, 1, True), (3, 2, False)], [(0, 3, True)]], (1, 5)).read()
    assert find(data, "moov/trak/edts/elst") == u32(0x01000000, 1) + u64(4, 1) + u32(0x10000)
    assert find(data, STBL + "stts") == u32(0, 3, 1, 2, 1, 3, 1, 0)


def test_media_segment_truns(testdb):
    # [2+4+6, 2+4+6+8+1): the 4th sample and part of the 5th; the 3rd as a key frame.
    f = make_file(testdb, "m4s", [HALF_SYNC], (12, 21))
    data = f.read()
    assert paths(data) == ["/moof", "/moof/mfhd", "/moof/traf", "/moof/traf/tfhd",
                           "/moof/traf/tfdt", "/moof/traf/trun", "/moof/traf/trun", "/mdat"]
    mdat = [b for p, b in walk(parse_boxes(data)) if p == "/mdat"][0]
    assert mdat.header == 8
    assert find(data, "moof/traf/trun", 0) == u32(0x305, 2, mdat.start + 8, 0x0A600000, 6, 9, 8, 12)
    assert find(data, "moof/traf/trun", 1) == u32(0x305, 1, mdat.start + 8 + 21, 0x0A600000, 1, 15)
    assert f.extra_headers == {"X-Prev-Media-Duration": "0", "X-Runs": "1",
                               "X-Leading-Media-Duration": "6"}


def test_single_frame_media_segments(testdb):
    """One media segment per frame, as live view sends: each is a key frame's GOP cut short."""
    add_frames(testdb, HALF_SYNC)
    (row,) = rows_of(testdb)
    pos = 0
    for i in range(1, 6):
        b = mp4.FileBuilder("m4s")
        b.append(row, (pos, pos + 2 * i))
        data = b.build(testdb.db).read()
        assert len([p for p in paths(data) if p.endswith("trun")]) == 1
        pos += 2 * i


# --- live view's media segments (start_at_key=False, reference §5.3) --------------------

def moof_mdat(*truns: bytes, data: bytes) -> bytes:
    """A media segment of the given truns (bodies after the full-box header)."""
    return (box(b"moof", full(b"mfhd", 0, 0, u32(1)),
                box(b"traf", full(b"tfhd", 0, 0x020000, u32(1)), full(b"tfdt", 0, 0, u32(0)),
                    *truns))
            + box(b"mdat", data))


def test_live_segment_of_one_non_key_frame(testdb):
    # HALF_SYNC: frames (start, duration, bytes, key) (0, 2, 3, K), (2, 4, 6, -),
    # (6, 6, 9, K), (12, 8, 12, -), (20, 10, 15, K); sample bytes at 0, 3, 9, 18, 30.
    cid = add_frames(testdb, HALF_SYNC)
    f = mp4.build_live_segment(testdb.db, testdb.stream_id, cid, 2, 6)
    moof_len = 8 + 16 + 8 + 16 + 16 + 20 + 8
    # A run starting at a non-key frame: tr_flags 0x301, no first_sample_flags.
    assert f.read() == moof_mdat(full(b"trun", 0, 0x301, u32(1, moof_len + 8, 4, 6)),
                                 data=sample_bytes(9)[3:])
    assert f.kind == "m4s" and f.filename is None
    assert f.headers() == {
        "Content-Type": 'video/mp4; codecs="avc1.640028"', "ETag": f.etag,
        "Last-Modified": "Sun, 29 Nov 2026 12:00:00 GMT",
        "X-Recording-Start": str(T0_90K), "X-Recording-Id": "1.0",
        "X-Media-Time-Range": "2-6", "X-Prev-Media-Duration": "0", "X-Runs": "1",
        "X-Video-Sample-Entry-Id": str(testdb.vse_id)}
    assert list(f.extra_headers) == ["X-Recording-Start", "X-Recording-Id",
                                     "X-Media-Time-Range", "X-Prev-Media-Duration",
                                     "X-Runs", "X-Video-Sample-Entry-Id"]  # §5.3's order
    assert (f.recording_start_90k, f.recording_id_text, f.media_range_90k,
            f.video_sample_entry_id) == (T0_90K, "1.0", (2, 6), testdb.vse_id)
    assert f.media_duration_90k == 4
    # The same range begun at its key frame is another file: another ETag.
    g = mp4.build_live_segment(testdb.db, testdb.stream_id, cid, 2, 6, start_at_key=True)
    assert g.extra_headers["X-Leading-Media-Duration"] == "2" and g.etag != f.etag
    assert g.read() == moof_mdat(
        full(b"trun", 0, 0x305, u32(2, moof_len + 4 + 8 + 8, 0x0A600000, 2, 3, 4, 6)),
        data=sample_bytes(9))


def test_live_segment_of_one_key_frame(testdb):
    cid = add_frames(testdb, HALF_SYNC)
    f = mp4.build_live_segment(testdb.db, testdb.stream_id, cid, 6, 12)
    moof_len = 8 + 16 + 8 + 16 + 16 + 24 + 8
    assert f.read() == moof_mdat(full(b"trun", 0, 0x305, u32(1, moof_len + 8, 0x0A600000, 6, 9)),
                                 data=sample_bytes(18)[9:])
    assert "X-Leading-Media-Duration" not in f.extra_headers
    # At a key frame, start_at_key makes no difference to the bytes.
    g = mp4.build_live_segment(testdb.db, testdb.stream_id, cid, 6, 12, start_at_key=True)
    assert g.read() == f.read()


def test_live_segment_runs_and_edges(testdb):
    t = testdb
    cid = add_frames(t, HALF_SYNC)
    # Frames 1-3: a run of the non-key frame, then one per GOP; the last truncated to 5.
    f = mp4.build_live_segment(t.db, t.stream_id, cid, 2, 17)
    moof_len = 8 + 16 + 8 + 16 + 16 + (20 + 8) + (24 + 16)
    assert f.read() == moof_mdat(
        full(b"trun", 0, 0x301, u32(1, moof_len + 8, 4, 6)),
        full(b"trun", 0, 0x305, u32(2, moof_len + 8 + 6, 0x0A600000, 6, 9, 5, 12)),
        data=sample_bytes(30)[3:])
    # An empty range [t, t) at a frame's start is that frame, its duration cut to 0.
    f = mp4.build_live_segment(t.db, t.stream_id, cid, 12, 12)
    assert find(f.read(), "moof/traf/trun") == u32(0x301, 1, 8 + 16 + 8 + 16 + 16 + 28 + 8, 0, 12)
    assert f.media_duration_90k == 0
    with pytest.raises(Mp4Error, match=r"recording 1/0: media offset 3 is not the start of "
                                       r"a frame \(one starts at 6\)"):
        mp4.build_live_segment(t.db, t.stream_id, cid, 3, 12)
    with pytest.raises(Mp4Error, match="not the start of a frame"):
        mp4.build_live_segment(t.db, t.stream_id, cid, 13, 13)
    with pytest.raises(Mp4Error, match=r"media range \[20, 31\) is outside \[0, 30\)"):
        mp4.build_live_segment(t.db, t.stream_id, cid, 20, 31)
    with pytest.raises(NotFound, match="no recording 1/1"):
        mp4.build_live_segment(t.db, t.stream_id, cid + 1, 0, 2)
    with pytest.raises(NotFound, match="no stream 9"):
        mp4.build_live_segment(t.db, 9, 9 << 32, 0, 2)
    with pytest.raises(ValueError, match="only a media segment"):
        mp4.FileBuilder("mp4").append(rows_of(t)[0], (2, 6), start_at_key=False)
    # A run's trailing zero: only in the empty range at the recording's end, so a live
    # stream sends it once (with start_at_key, a range ending there includes it, §4.3).
    cid = add_frames(t, [(3, 5, True), (4, 6, False), (0, 7, False)], start_90k=T0_90K + 30,
                     run_offset=1)
    f = mp4.build_live_segment(t.db, t.stream_id, cid, 7, 7)
    assert find(f.read(), "moof/traf/trun") == u32(0x301, 1, 8 + 16 + 8 + 16 + 16 + 28 + 8, 0, 7)
    assert f.extra_headers["X-Prev-Media-Duration"] == "30"
    f = mp4.build_live_segment(t.db, t.stream_id, cid, 3, 7)
    assert find(f.read(), "moof/traf/trun") == u32(0x301, 1, 8 + 16 + 8 + 16 + 16 + 28 + 8, 4, 6)
    f = mp4.build_live_segment(t.db, t.stream_id, cid, 0, 7)
    assert len(find(f.read(), "moof/traf/trun")) == 12 + 4 + 2 * 8
    f = mp4.build_live_segment(t.db, t.stream_id, cid, 0, 7, start_at_key=True)
    assert len(find(f.read(), "moof/traf/trun")) == 12 + 4 + 3 * 8


# --- whole files, byte for byte ---------------------------------------------------------

# Two recordings of one run: 0.5 s frames, the second ending the run with a trailing zero.
REC0 = [(45000, 3, True), (45000, 6, False), (45000, 9, True), (45000, 12, False),
        (45000, 15, True)]
REC1 = [(45000, 4, True), (45000, 5, False), (45000, 6, True), (0, 7, False)]
REC0_START = T0_90K + SEC // 4


def two_recordings(t):
    add_frames(t, REC0, start_90k=REC0_START)
    add_frames(t, REC1, start_90k=REC0_START + 225000, run_offset=1)


def subtitle(unix_sec: int) -> bytes:
    text = mp4.subtitle_text(unix_sec).encode()
    assert len(text) == 25
    return b"\x00\x19" + text


def test_view_mp4_bytes(testdb):
    """s=0-1.67500- with ts=true: a start inside frame 1 (not a key frame), subtitles."""
    two_recordings(testdb)
    f = mp4.build_view(testdb.db, testdb.stream_id, ["0-1.67500-"], ts=True)
    t0 = T0_90K // SEC
    creation = t0 + 4 + EPOCH_1904           # last wall end: REC0_START + 4 s
    duration = 225000 - 67500 + 135000       # 292500
    moov_video = video_trak(creation, duration, [
        full(b"stsd", 0, 0, u32(1), DUMMY_VSE),
        full(b"stts", 0, 0, u32(9), u32(1, 45000) * 8, u32(1, 0)),
        full(b"stsc", 0, 0, u32(2, 1, 5, 1, 2, 4, 1)),
        full(b"stsz", 0, 0, u32(0, 9, 3, 6, 9, 12, 15, 4, 5, 6, 7)),
        full(b"co64", 0, 0, u32(2), u64(0, 45)),  # placeholders, fixed below
        full(b"stss", 0, 0, u32(5, 1, 3, 5, 6, 8)),
    ], edts=box(b"edts", full(b"elst", 1, 0, u32(1), u64(duration, 67500), u32(0x10000))))
    # Subtitles: seg 0 covers wall [T0+1 s, T0+2.75 s): seconds 1, 2; seg 1
    # [T0+2.75 s, T0+4.25 s): seconds 2, 3, 4 (first and last partial).
    subtitle_trak = box(
        b"trak",
        full(b"tkhd", 1, 7, u64(creation, creation), u32(2, 0), u64(duration), bytes(16),
             MATRIX, u32(0, 0)),
        box(b"mdia", mdhd(creation, duration), hdlr(b"sbtl"),
            box(b"minf", full(b"nmhd", 0, 1), DINF,
                box(b"stbl", full(b"stsd", 0, 0, u32(1), TX3G),
                    full(b"stts", 0, 0, u32(5, 1, 90000, 1, 67500, 1, 22500, 1, 90000, 1, 22500)),
                    full(b"stsc", 0, 0, u32(1, 1, 5, 1)),
                    full(b"stsz", 0, 0, u32(27, 5)),
                    full(b"co64", 0, 0, u32(1), u64(0))))))
    ftyp = box(b"ftyp", b"isom", u32(0), b"isomiso2avc1mp41")
    moov = box(b"moov", mvhd(creation, duration, 3), moov_video, subtitle_trak)
    data_start = len(ftyp) + len(moov) + 16
    moov = moov.replace(full(b"co64", 0, 0, u32(2), u64(0, 45)),
                        full(b"co64", 0, 0, u32(2), u64(data_start, data_start + 45)))
    moov = moov.replace(full(b"co64", 0, 0, u32(1), u64(0)),
                        full(b"co64", 0, 0, u32(1), u64(data_start + 45 + 22)))
    body = (sample_bytes(45) + sample_bytes(22)
            + b"".join(subtitle(t0 + s) for s in (1, 2, 2, 3, 4)))
    expected = ftyp + moov + b"\x00\x00\x00\x01mdat" + u64(16 + len(body)) + body
    assert f.length == len(expected)
    assert f.read() == expected
    assert paths(expected)[:6] == ["/ftyp", "/moov", "/moov/mvhd", "/moov/trak",
                                   "/moov/trak/tkhd", "/moov/trak/edts"]
    assert f.headers() == {
        "Content-Type": 'video/mp4; codecs="avc1.640028"',
        "ETag": f.etag,
        "Last-Modified": "Sun, 29 Nov 2026 12:00:04 GMT",
        "Content-Disposition": 'attachment; filename="20261129040001-test-camera-main.mp4"'}
    assert subtitle(t0 + 1) == b"\x00\x192026-11-29 04:00:01 -0800"


def test_init_segment_bytes(testdb):
    f = mp4.build_init(testdb.db, testdb.vse_id)
    creation = EPOCH_1904  # no recordings: Unix time 0
    expected = (box(b"ftyp", b"iso5", u32(0), b"iso5")
                + box(b"moov", mvhd(creation, 0, 2),
                      video_trak(creation, 0, [
                          full(b"stsd", 0, 0, u32(1), DUMMY_VSE), full(b"stts", 0, 0, u32(0)),
                          full(b"stsc", 0, 0, u32(0)), full(b"stsz", 0, 0, u32(0, 0)),
                          full(b"co64", 0, 0, u32(0))]),
                      box(b"mvex", full(b"trex", 0, 0, u32(1, 1, 0, 0, 0x09210000)))))
    assert f.read() == expected
    assert f.extra_headers == {"X-Aspect": "16:9"}
    assert f.filename is None and "Content-Disposition" not in f.headers()
    assert f.last_modified is None and "Last-Modified" not in f.headers()
    with pytest.raises(NotFound, match="no video sample entry 99"):
        mp4.build_init(testdb.db, 99)


def test_media_segment_bytes(testdb):
    two_recordings(testdb)
    f = mp4.build_view(testdb.db, testdb.stream_id, ["0.67500-"], kind="m4s")
    # Runs start at key frames 0, 2, 4: [3, 6], [9, 12], [15].
    moof_len = 8 + 16 + (8 + 16 + 16 + 3 * 24 + 5 * 8)
    data0 = moof_len + 8
    expected = box(b"moof", full(b"mfhd", 0, 0, u32(1)),
                   box(b"traf", full(b"tfhd", 0, 0x020000, u32(1)), full(b"tfdt", 0, 0, u32(0)),
                       full(b"trun", 0, 0x305, u32(2, data0, 0x0A600000, 45000, 3, 45000, 6)),
                       full(b"trun", 0, 0x305, u32(2, data0 + 9, 0x0A600000, 45000, 9, 45000, 12)),
                       full(b"trun", 0, 0x305, u32(1, data0 + 30, 0x0A600000, 45000, 15))))
    assert len(expected) == moof_len
    expected += box(b"mdat", sample_bytes(45))
    assert f.read() == expected
    assert f.extra_headers == {"X-Prev-Media-Duration": "0", "X-Runs": "1",
                               "X-Leading-Media-Duration": "67500"}
    assert f.content_disposition == 'attachment; filename="20261129040001-test-camera-main.m4s"'
    # The second recording, in the same run: after the first's media duration.
    f = mp4.build_view(testdb.db, testdb.stream_id, ["1"], kind="m4s")
    assert f.extra_headers == {"X-Prev-Media-Duration": "225000", "X-Runs": "1"}


def digest(f: mp4.VirtualFile) -> str:
    h = hashlib.blake2b(digest_size=32)
    for name, value in f.headers().items():
        h.update(f"{name}: {value}\r\n".encode())
    h.update(b"\r\n")
    for chunk in f.chunks():
        h.update(chunk.read() if isinstance(chunk, mp4.FileChunk) else chunk)
    return h.hexdigest()


def test_pinned_digest(testdb, monkeypatch):
    """Brittle, which is the point: if this fails, bump FORMAT_VERSION, then re-pin."""
    two_recordings(testdb)
    f = mp4.build_view(testdb.db, testdb.stream_id, ["0-1.67500-"], ts=True)
    assert mp4.FORMAT_VERSION == 0x0a
    assert f.etag == '"54c29faa9822ecc18af46373890730521b086eb30cd4baf466e70a3f784a6ab0"'
    assert digest(f) == "a7e886eb6c44a6a14cc181b8cbe48ba6b93c3ca9b1af4204e62816bb5ba6e801"
    # FORMAT_VERSION feeds the ETag (and nothing else about the bytes).
    monkeypatch.setattr(mp4, "FORMAT_VERSION", 0x0b)
    g = mp4.build_view(testdb.db, testdb.stream_id, ["0-1.67500-"], ts=True)
    assert g.etag != f.etag and g.read() == f.read()


def test_etag_inputs(testdb):
    two_recordings(testdb)
    v = testdb.db
    sid = testdb.stream_id
    etags = {mp4.build_view(v, sid, s, ts=ts, kind=k).etag
             for s, ts, k in [(["0-1"], False, "mp4"), (["0-1"], True, "mp4"),
                              (["0-1"], False, "m4s"), (["0-1.1-"], False, "mp4"),
                              (["0"], False, "mp4"), (["1"], False, "mp4")]}
    assert len(etags) == 6
    # The same file asked for in two ways: the same ETag. s=0-1.225000- starts exactly
    # at the first recording's end: that empty piece is dropped, leaving s=1's file.
    assert mp4.build_view(v, sid, ["0", "1"]).etag == mp4.build_view(v, sid, ["0-1"]).etag
    a, b = mp4.build_view(v, sid, ["0-1.225000-"]), mp4.build_view(v, sid, ["1"])
    assert (a.etag, a.read()) == (b.etag, b.read())


def test_wall_time_is_rescaled_per_recording(testdb):
    """A recording whose wall clock ran 500 ppm longer than its media (reference §3.4):
    s= times are wall ticks, rescaled to media ticks rounding down."""
    frames = [(9000, 100, i % 10 == 0) for i in range(30)]   # 3 s of media
    add_frames(testdb, frames, start_90k=T0_90K + SEC // 2, wall_delta_90k=135)
    f = mp4.build_view(testdb.db, testdb.stream_id, ["0.100000-"], ts=True)
    data = f.read()
    # Wall 100000 -> media 100000 * 270000 // 270135 = 99950, in frame 11; the key
    # frame before it is frame 10 at 90000.
    keep = 270000 - 99950
    assert find(data, "moov/trak/edts/elst") == u32(0x01000000, 1) + u64(keep, 9950) + u32(0x10000)
    # Subtitles: wall [T0 + 0.5 s + 99999, T0 + 0.5 s + 270135) touches seconds 1, 2, 3.
    # First: to the next second, 35001 wall = 34983 media; then one second, 90000 wall =
    # 89955 media; the last takes the rest.
    stts = find(data, "moov/trak/mdia/minf/stbl/stts", 1)
    assert stts == u32(0, 3, 1, 34983, 1, 89955, 1, keep - 34983 - 89955)
    assert f.filename == "20261129040001-test-camera-main.mp4"
    assert data.endswith(b"".join(subtitle(T0_90K // SEC + i) for i in (1, 2, 3)))


# --- errors --------------------------------------------------------------------------------

def test_media_segments_stop_at_2_gib(testdb):
    """A trun's data_offset is signed 32-bit: a segment over 2 GiB is refused (the index
    alone lays a file out, so no sample file is needed here)."""
    t = testdb
    frames = [(3000, 1 << 30, True), (3000, 1000, False)] * 2   # two GOPs of 1 GiB
    s = t.db.streams[t.stream_id]
    r = db.RecordingToInsert(
        run_offset=0, start_time_90k=T0_90K, prev_media_duration_90k=s.cum_media_duration_90k,
        prev_runs=s.cum_runs, video_sample_entry_id=t.vse_id,
        video_index=recording.encode_index(frames), video_samples=4, video_sync_samples=2,
        sample_file_bytes=2 * ((1 << 30) + 1000), wall_duration_90k=12000,
        media_duration_90k=12000)
    cid = t.db.add_recording(t.stream_id, r)
    t.db.mark_synced(cid)
    t.db.flush("test")
    rid = cid & 0xFFFFFFFF
    with pytest.raises(Mp4Error, match="over the 2 GiB limit of its signed 32-bit"):
        mp4.build_view(t.db, t.stream_id, [str(rid)], kind="m4s")
    f = mp4.build_view(t.db, t.stream_id, [f"{rid}.0-6000"], kind="m4s")   # one GOP
    assert 1 << 30 < f.length < 0x7FFFFFFF


def test_view_errors(testdb):
    t = testdb
    add_frames(t, [(3000, 10, True), (0, 10, False)])             # run 1 ends: trailing zero
    add_frames(t, [(3000, 10, True), (3000, 10, False)], start_90k=T0_90K + 3000)  # run 2
    v, sid = t.db, t.stream_id
    with pytest.raises(NotFound, match="no stream 99"):
        mp4.build_view(v, 99, ["0"])
    with pytest.raises(NotFound, match="no recording 1/2"):
        mp4.build_view(v, sid, ["2"])
    with pytest.raises(NotFound, match="no recording 1/2"):
        mp4.build_view(v, sid, ["1-2"])
    with pytest.raises(NotFound, match="recording 1/0 has open id 1, not the requested 7"):
        mp4.build_view(v, sid, ["0@7"])
    assert mp4.build_view(v, sid, ["0@1"]).length > 0
    with pytest.raises(Mp4Error, match="end time 6001 is beyond the recordings' 6000 ticks"):
        mp4.build_view(v, sid, ["1.-6001"])
    for s in (["0-1"], ["0", "1"]):
        with pytest.raises(Mp4Error, match="recording 1/0 ends its run with a zero-duration "
                                           "frame, so recording 1/1 can't follow it"):
            mp4.build_view(v, sid, s)
    with pytest.raises(Mp4Error, match="only supported on .mp4 files"):
        mp4.build_view(v, sid, ["1"], ts=True, kind="m4s")
    with pytest.raises(Mp4Error, match="no s parameter"):
        mp4.build_view(v, sid, [])
    # Empty, at a recording's very start: its first frame, as [t, t) elsewhere.
    assert mp4.build_view(v, sid, ["1.0-0"]).segments[0].frames == 1
    with pytest.raises(Mp4Error, match=r"media range \[0, 7000\) is outside \[0, 6000\)"):
        mp4.FileBuilder().append(rows_of(t)[1], (0, 7000))


def test_media_segment_with_two_sample_entries(testdb):
    t = testdb
    add_frames(t, [(3000, 10, True)])
    other = t.db.insert_video_sample_entry(320, 240, "avc1.42c01e", b"\0\0\0\x67avc1" + bytes(95))
    t.vse_id = other
    add_frames(t, [(3000, 10, True)], start_90k=T0_90K + 3000, run_offset=1)
    f = mp4.build_view(t.db, t.stream_id, ["0-1"])
    assert f.content_type == 'video/mp4; codecs="avc1.640028, avc1.42c01e"'
    assert find(f.read(), STBL + "stsd")[4:8] == u32(2)
    with pytest.raises(Mp4Error, match=r"only one video sample entry.*\(ids 1, 2\)"):
        mp4.build_view(t.db, t.stream_id, ["0-1"], kind="m4s")


# --- laziness and byte ranges --------------------------------------------------------------

class IndexSpy:
    """Counts db.get_video_index calls (instance attribute shadowing the method)."""

    def __init__(self, database):
        self.calls: list[int] = []
        self.real = database.get_video_index
        database.get_video_index = self

    def __call__(self, composite_id):
        self.calls.append(composite_id)
        return self.real(composite_id)


def test_indexes_are_read_lazily(testdb):
    t = testdb
    for i in range(4):
        add_frames(t, [(3000, 100 + i, j % 3 == 0) for j in range(9)],
                   start_90k=T0_90K + i * 27000, run_offset=i)
    spy = IndexSpy(t.db)
    whole = mp4.build_view(t.db, t.stream_id, ["0-3"])
    assert spy.calls == []  # the layout comes from the rows
    part = mp4.build_view(t.db, t.stream_id, ["0-3.4000-100000"])
    ids = [r.composite_id for r in rows_of(t)]
    assert spy.calls == [ids[0], ids[3]]  # only the partial first and last
    spy.calls.clear()
    whole.read(0, 200)  # ftyp, mvhd, tkhd: no tables
    assert spy.calls == []
    stts = [i for i, (k, p) in enumerate(whole.slices) if k == "stts"]
    start = whole.ends[stts[2] - 1]
    whole.read(start, start + 8)  # one entry of the third segment's stts
    assert spy.calls == [ids[2]]
    whole.read()
    whole.read()
    assert sorted(spy.calls) == sorted(ids)  # each index read once, tables kept
    spy.calls.clear()
    part.read()
    # The partial ends kept their FrameRange; the whole middle ones' tables come from
    # the table cache, which reading `whole` filled.
    assert spy.calls == []
    mp4.table_cache.clear()
    part = mp4.build_view(t.db, t.stream_id, ["0-3.4000-100000"])
    spy.calls.clear()
    part.read()
    assert spy.calls == [ids[1], ids[2]]


# --- the table cache -----------------------------------------------------------------------

def test_table_cache_holds_committed_tables(testdb):
    t = testdb
    for i in range(3):
        add_frames(t, [(3000, 100 + i, j % 3 == 0) for j in range(9)],
                   start_90k=T0_90K + i * 27000, run_offset=i)
    first = mp4.build_view(t.db, t.stream_id, ["0-2"]).read()
    assert len(mp4.table_cache) == 3 and mp4.table_cache.misses == 3
    spy = IndexSpy(t.db)
    again = mp4.build_view(t.db, t.stream_id, ["0-2"])
    assert again.read() == first and spy.calls == [] and mp4.table_cache.hits == 3
    # A cached table equals one generated afresh; stss is numbered per file (recording 1
    # is frames 10.. of the first file, 1.. of this one).
    alone = mp4.build_view(t.db, t.stream_id, ["1"]).read()
    mp4.table_cache.clear()
    assert mp4.build_view(t.db, t.stream_id, ["1"]).read() == alone
    assert find(alone, STBL + "stss") == u32(0, 3, 1, 4, 7)
    assert find(first, STBL + "stss") == u32(0, 9, 1, 4, 7, 10, 13, 16, 19, 22, 25)
    # Another range of a recording is another entry; so is a segment not begun at a key
    # frame, though media segments' truns aren't cached at all.
    mp4.build_view(t.db, t.stream_id, ["1.4000-"]).read()
    assert len(mp4.table_cache) == 2
    mp4.build_view(t.db, t.stream_id, ["1"], kind="m4s").read()
    assert len(mp4.table_cache) == 2


def test_table_cache_skips_growing_recordings(tmp_path, clocks):
    t = make_testdb(tmp_path, clocks, zone=ZONE)
    syncer = dirmod.Syncer(t.db, t.dir_id)
    w = writer.Writer(t.db, t.stream_id, syncer, shutdown=threading.Event())
    for i in range(10):
        w.write(b"x" * (100 + i), T0_90K + i * 3000, i * 3000, i % 5 == 0, t.vse_id)
    (row,) = rows_of(t)
    assert row.flags & db.FLAG_GROWING
    growing = mp4.build_view(t.db, t.stream_id, ["0"])
    growing.read()
    mp4.build_view(t.db, t.stream_id, ["0.3000-"]).read()
    assert len(mp4.table_cache) == 0 and mp4.table_cache.misses == 0
    w.close("test")
    drain(syncer)
    t.db.flush("test")
    done = mp4.build_view(t.db, t.stream_id, ["0"])
    done.read()
    assert len(mp4.table_cache) == 1
    # The file built while it grew still has its 9 frames (the tenth wasn't indexed yet).
    assert find(growing.read(), STBL + "stsz")[8:12] == u32(9)
    assert find(done.read(), STBL + "stsz")[8:12] == u32(10)
    t.db.close()


def test_table_cache_evicts_least_recently_used_by_size(testdb, monkeypatch):
    t = testdb
    for i in range(4):  # 100 frames each: stts 800 + stsz 400 + 10 key frames * 4 bytes
        add_frames(t, [(3000, 10, j % 10 == 0) for j in range(100)],
                   start_90k=T0_90K + i * 300000, run_offset=i)
    entry = 800 + 400 + 40 + mp4._TABLE_ENTRY_OVERHEAD
    cache = mp4.TableCache(max_bytes=3 * entry)
    monkeypatch.setattr(mp4, "table_cache", cache)
    ids = [r.composite_id for r in rows_of(t)]

    def read(i):
        mp4.build_view(t.db, t.stream_id, [str(i)]).read()

    def cached():
        return [k[1] for k in cache._entries]

    for i in range(3):
        read(i)
    assert cached() == ids[:3] and cache.bytes == 3 * entry
    read(0)                      # a hit makes 0 the most recent
    read(3)                      # so 1 is evicted
    assert cached() == [ids[2], ids[0], ids[3]] and cache.bytes == 3 * entry
    assert (cache.hits, cache.misses) == (1, 4)
    small = mp4.TableCache(max_bytes=entry - 1)  # an entry larger than the cache isn't kept
    monkeypatch.setattr(mp4, "table_cache", small)
    read(1)
    assert len(small) == 0 and small.bytes == 0


def test_table_cache_threads(testdb):
    """Handler threads building and reading the same files at once get the same bytes."""
    for i in range(6):
        add_frames(testdb, [(3000, 50 + i, j % 7 == 0) for j in range(60)],
                   start_90k=T0_90K + i * 180000, run_offset=i)
    expected = mp4.build_view(testdb.db, testdb.stream_id, ["0-5"]).read()
    mp4.table_cache.clear()
    got, errors = [], []

    def run():
        try:
            for _ in range(5):
                got.append(mp4.build_view(testdb.db, testdb.stream_id, ["0-5"]).read())
        except BaseException as e:  # reported below
            errors.append(e)
            raise

    threads = [threading.Thread(target=run) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == [] and got == [expected] * 20
    assert len(mp4.table_cache) == 6


def test_byte_ranges(testdb):
    two_recordings(testdb)
    f = mp4.build_view(testdb.db, testdb.stream_id, ["0-1.67500-"], ts=True)
    whole = f.read()
    rnd = random.Random(4)
    for _ in range(300):
        a = rnd.randrange(f.length + 1)
        b = rnd.randrange(a, f.length + 1)
        assert f.read(a, b) == whole[a:b]
    chunks = list(f.chunks())
    files = [c for c in chunks if isinstance(c, mp4.FileChunk)]
    assert [(os.path.basename(c.path), c.offset, c.length) for c in files] == [
        ("0000000100000000", 0, 45), ("0000000100000001", 0, 22)]
    assert all(isinstance(c, bytes) for c in chunks if not isinstance(c, mp4.FileChunk))
    assert list(f.chunks(5, 5)) == []
    (c,) = f.chunks(f.length - 27 * 5 - 15, f.length - 27 * 5 - 5)  # inside a sample file
    assert (os.path.basename(c.path), c.offset, c.length) == ("0000000100000001", 7, 10)
    with pytest.raises(ValueError, match="outside"):
        list(f.chunks(0, f.length + 1))


def test_slice_table_text(testdb):
    two_recordings(testdb)
    f = mp4.build_view(testdb.db, testdb.stream_id, ["0-1.67500-"], ts=True)
    text = f.slice_table_text()
    assert text.startswith(f"mp4 file, {f.length} bytes\nContent-Type: video/mp4")
    assert f"ETag: {f.etag}" in text
    assert "             0             32  static normal_ftyp\n" in text
    assert "video_data 1: 0000000100000001 [0, 22)" in text
    assert str(testdb.sample_dir) not in text   # names, not the server's paths
    assert "subtitle_data 1" in text
    assert ("    0 recording 1/0 open 1 start 2026-11-29T04:00:00:22500-08:00 media "
            "[67500, 225000) of 225000, actual start 0, frames 1..5 (3 key), partial") in text
    assert "    1 recording 1/1" in text and "frames 6..9 (2 key), whole" in text


def test_24_hour_build(testdb, record_property):
    """1440 one-minute recordings at 30 fps: only the partial ends' indexes are read."""
    t = testdb
    enc = recording.SampleIndexEncoder()
    for i in range(1800):
        enc.add_sample(3000, 1000 + i * 37 % 500, i % 30 == 0)
    minute = 60 * SEC
    for k in range(1440):  # rows only: the build reads no sample file
        cid = t.db.add_recording(t.stream_id, db.RecordingToInsert(
            run_offset=k, start_time_90k=T0_90K + k * minute, prev_media_duration_90k=k * minute,
            prev_runs=1, video_sample_entry_id=t.vse_id, video_index=bytes(enc.video_index),
            video_samples=1800, video_sync_samples=60, sample_file_bytes=enc.sample_file_bytes,
            wall_duration_90k=minute, media_duration_90k=minute))
        t.db.mark_synced(cid)
    t.db.flush("test")
    spy = IndexSpy(t.db)
    began = time.perf_counter()
    f = mp4.build_view(t.db, t.stream_id, [f"0-1439.45000-{1440 * minute - 45000}"])
    build_sec = time.perf_counter() - began
    assert len(spy.calls) == 2
    assert f.length > 1440 * enc.sample_file_bytes - 2 * enc.sample_file_bytes
    began = time.perf_counter()
    head = f.read(0, f.segments[0].data_offset)
    moov_sec = time.perf_counter() - began
    assert len(spy.calls) == 1440
    # 24 h of 90 kHz ticks needs 64 bits: tkhd switches to version 1 (Moonfire's wraps).
    boxes = parse_boxes(head, 0, 32 + struct.unpack_from(">I", head, 32)[0])
    (tkhd,) = [b for p, b in walk(boxes) if p == "/moov/trak/tkhd"]
    version, _, _, track, _, duration = struct.unpack_from(">IQQIIQ", head, tkhd.start + 8)
    assert (version >> 24, track, duration) == (1, 1, 1440 * minute - 90000)
    record_property("build_view_sec", build_sec)
    record_property("moov_sec", moov_sec)
    logging.getLogger(__name__).warning(
        "24 h view.mp4: build_view %.3f s; generating its %d-byte moov %.2f s",
        build_sec, len(head), moov_sec)


# --- real recordings: ffprobe and PyAV -----------------------------------------------------

def ffprobe(path: str, *args: str) -> dict:
    if shutil.which("ffprobe") is None:
        pytest.skip("ffprobe is not installed (test/run.py installs ffmpeg)")
    p = subprocess.run(["ffprobe", "-v", "error", *args, "-of", "json", path],
                       capture_output=True, text=True)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    return json.loads(p.stdout)


def probe(path: str) -> tuple[dict, float, int]:
    """(video stream, format duration, frames presented) as ffprobe sees them."""
    out = ffprobe(path, "-count_frames", "-show_entries",
                  "stream=codec_type,codec_name,width,height,nb_frames,nb_read_frames,duration"
                  ":format=duration")
    video = [s for s in out["streams"] if s["codec_type"] == "video"][0]
    return video, float(out["format"]["duration"]), int(video.get("nb_read_frames", 0))


def frame_times(path: str) -> list[float]:
    out = ffprobe(path, "-select_streams", "v:0", "-show_entries", "frame=pts_time")
    return [float(f["pts_time"]) for f in out["frames"]]


def decode(path: str, **options) -> list[av.VideoFrame]:
    """Every frame PyAV presents; FFmpeg may log nothing at level error or worse."""
    level = av.logging.get_level()  # None (off) in PyAV 13+; PyAV 10's default is 40
    av.logging.set_level(av.logging.ERROR)
    try:
        with av.logging.Capture() as logs, av.open(path, options=options) as c:
            frames = list(c.decode(video=0))
    finally:
        av.logging.set_level(level)
    assert logs == []
    return frames


def bar(i: int, width: int = 320) -> int:
    """Where frame i of a clip has its bar (clips.py)."""
    return 4 * i % (width - 8)


def bar_x(frame: av.VideoFrame) -> int:
    """Where the clip's 8-pixel white bar is (clips.py: frame i at x = 4i % (width - 8))."""
    plane = frame.planes[0]
    row = frame.height // 2 * plane.line_size
    luma = bytes(plane)[row:row + frame.width]
    return max(range(frame.width - 7), key=lambda x: sum(luma[x:x + 8]))


def save(f: mp4.VirtualFile, tmp_path, name: str, prefix: bytes = b"") -> str:
    path = str(tmp_path / name)
    with open(path, "wb") as out:
        out.write(prefix)
        for c in f.chunks():
            out.write(c.read() if isinstance(c, mp4.FileChunk) else c)
    return path


def check(path: str, *, frames: int, samples: int, duration_90k: int, size=(320, 180),
          codec="h264") -> list[av.VideoFrame]:
    """ffprobe reads the file with the expected duration and frame count; PyAV decodes
    every sample (ignoring the edit list) and presents `frames` of them."""
    video, duration, presented = probe(path)
    assert video["codec_name"] == codec
    assert (video["width"], video["height"]) == size
    assert int(video["nb_frames"]) == samples
    assert presented == frames
    assert duration == pytest.approx(duration_90k / SEC, abs=1e-6)
    assert len(decode(path, ignore_editlist="1")) == samples
    shown = decode(path)
    assert len(shown) == frames
    return shown


@dataclasses.dataclass
class Recorded:
    t: object
    h264: list    # rows: 9 s, 3 s, 3 s (the last ends the run), 320x180
    sizes: list   # one run: 320x180, then 640x360 (a new sample entry)
    h265: list
    single: list  # one frame, a run of its own: wall and media duration 0


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    recording.set_server_zone(ZONE)
    tmp = tmp_path_factory.mktemp("mp4")
    clocks = clock.SimulatedClocks(START_NS)
    t = make_testdb(tmp, clocks, zone=ZONE)
    a = make_clip(str(tmp / "a.mp4"), frames=90, gop=30)
    b = make_clip(str(tmp / "b.mp4"), frames=90, gop=30, width=640, height=360)
    h = make_clip(str(tmp / "h.mp4"), frames=90, gop=30, encoder="libx265")
    config = dict(t.db.streams[t.stream_id].config)
    sub = t.db.add_stream(t.camera_id, "sub", config, t.dir_id)
    ext = t.db.add_stream(t.camera_id, "ext", config, t.dir_id)
    h264 = record(t, a, clocks, frames=450)
    sizes = record(t, [a, b], clocks, frames=180, stream_id=sub)
    h265 = record(t, h, clocks, frames=180, stream_id=ext)
    single = record(t, a, clocks, frames=1)[len(h264):]
    yield Recorded(t, h264, sizes, h265, single)
    t.db.close()


def ids(rows) -> str:
    return f"{rows[0].recording_id}-{rows[-1].recording_id}"


def media(rows) -> int:
    return sum(r.media_duration_90k for r in rows)


def test_recorded_as_expected(recorded):
    r = recorded
    assert [x.video_samples for x in r.h264] == [270, 90, 90]
    assert r.h264[-1].flags == db.FLAG_TRAILING_ZERO
    assert len({x.video_sample_entry_id for x in r.sizes}) == 2
    assert sum(x.video_samples for x in r.sizes) == 180
    assert (r.single[0].video_samples, r.single[0].wall_duration_90k) == (1, 0)


def test_single_recording(recorded, tmp_path):
    t, row = recorded.t, recorded.h264[1]
    f = mp4.build_view(t.db, t.stream_id, [str(row.recording_id)])
    path = save(f, tmp_path, "one.mp4")
    shown = check(path, frames=90, samples=90, duration_90k=270000)
    assert [bar_x(x) for x in shown[:3]] == [bar(0), bar(1), bar(2)]
    data = open(path, "rb").read()
    (offset,) = struct.unpack(">Q", find(data, STBL + "co64")[8:])
    sample_file = os.path.join(t.sample_dir, dirmod.name_for(row.composite_id))
    assert data[offset:] == open(sample_file, "rb").read()


def test_several_recordings(recorded, tmp_path):
    t, rows = recorded.t, recorded.h264
    f = mp4.build_view(t.db, t.stream_id, [ids(rows)])
    path = save(f, tmp_path, "several.mp4")
    # 450 frames; the last is the run's trailing zero (duration 0).
    check(path, frames=450, samples=450, duration_90k=media(rows))
    assert media(rows) == 449 * 3000
    assert f.filename == "20261129035958-test-camera-main.mp4"  # T0 - 2 s: buffered frames


def test_several_s_parameters_concatenate(recorded, tmp_path):
    t, rows = recorded.t, recorded.h264
    first, second = str(rows[0].recording_id), ids(rows[1:])
    f = mp4.build_view(t.db, t.stream_id, [first, second])
    assert f.read() == mp4.build_view(t.db, t.stream_id, [ids(rows)]).read()


def test_resolution_change(recorded, tmp_path):
    t, rows = recorded.t, recorded.sizes
    sub = rows[0].composite_id >> 32
    f = mp4.build_view(t.db, sub, [ids(rows)])
    path = save(f, tmp_path, "sizes.mp4")
    data = open(path, "rb").read()
    assert find(data, STBL + "stsd")[4:8] == u32(2)
    shown = check(path, frames=180, samples=180, duration_90k=media(rows))
    assert [(x.width, x.height) for x in shown] == [(320, 180)] * 90 + [(640, 360)] * 90
    assert struct.unpack(">2I", find(data, "moov/trak/tkhd")[76:84]) == (640 << 16, 360 << 16)


def test_h265(recorded, tmp_path):
    t, rows = recorded.t, recorded.h265
    f = mp4.build_view(t.db, rows[0].composite_id >> 32, [ids(rows)])
    assert f.content_type.startswith('video/mp4; codecs="hvc1.')
    path = save(f, tmp_path, "h265.mp4")
    check(path, frames=180, samples=180, duration_90k=media(rows), codec="hevc")
    assert f.filename.endswith("-test-camera-ext.mp4")


@pytest.mark.parametrize("offset_90k", [40 * 3000, 40 * 3000 + 1500])
def test_trimmed_start_on_a_non_key_frame(recorded, tmp_path, offset_90k):
    """Frame 40 of a recording (key frames at 0, 30, 60): the file starts at key frame
    30, and the edit list makes the first presented frame frame 40 (or 41, within a
    frame, when the start falls inside frame 40)."""
    t, row = recorded.t, recorded.h264[1]
    f = mp4.build_view(t.db, t.stream_id, [f"{row.recording_id}.{offset_90k}-"])
    path = save(f, tmp_path, "trim.mp4")
    data = open(path, "rb").read()
    skip = offset_90k - 30 * 3000
    assert find(data, "moov/trak/edts/elst") == (
        u32(0x01000000, 1) + u64(270000 - offset_90k, skip) + u32(0x10000))
    shown = check(path, frames=90 - (offset_90k + 2999) // 3000, samples=60,
                  duration_90k=270000 - offset_90k)
    assert frame_times(path)[0] == 0
    assert bar_x(shown[0]) in (bar(40), bar(41))
    if offset_90k % 3000 == 0:
        assert bar_x(shown[0]) == bar(40)
    assert [bar_x(x) for x in shown[-2:]] == [bar(88), bar(89)]


def test_two_trimmed_starts_make_two_edits(recorded, tmp_path):
    t, rows = recorded.t, recorded.h264
    a, b = rows[1].recording_id, rows[2].recording_id
    f = mp4.build_view(t.db, t.stream_id, [f"{a}.120000-", f"{b}.120000-"])
    path = save(f, tmp_path, "two_edits.mp4")
    keep_a, keep_b = 270000 - 120000, rows[2].media_duration_90k - 120000
    assert find(open(path, "rb").read(), "moov/trak/edts/elst") == (
        u32(0x01000000, 2) + u64(keep_a, 30000) + u32(0x10000)
        + u64(keep_b, 30000 + keep_a + 30000) + u32(0x10000))
    # Frames 40-89 of each; the second's frame 89 is the run's trailing zero: it starts
    # exactly where the last edit ends, so it is not presented.
    shown = check(path, frames=50 + 49, samples=60 + 60, duration_90k=keep_a + keep_b)
    assert [bar_x(x) for x in shown[49:51]] == [bar(89), bar(40)]
    assert bar_x(shown[-1]) == bar(88)


def test_trimmed_end(recorded, tmp_path):
    t, rows = recorded.t, recorded.h264
    # From frame 100 of the first recording (270 frames) to 1 s into the last.
    start, end = 100 * 3000, 810000 + 270000 + 30 * 3000
    f = mp4.build_view(t.db, t.stream_id, [f"{ids(rows)}.{start}-{end}"])
    path = save(f, tmp_path, "trim_end.mp4")
    # The first segment starts at key frame 90 (100 is not a key frame).
    check(path, frames=(270 - 100) + 90 + 30, samples=(270 - 90) + 90 + 30,
          duration_90k=end - start)


def test_timestamp_subtitles(recorded, tmp_path):
    t, rows = recorded.t, recorded.h264
    f = mp4.build_view(t.db, t.stream_id, [ids(rows)], ts=True)
    path = save(f, tmp_path, "ts.mp4")
    check(path, frames=450, samples=450, duration_90k=media(rows))
    out = ffprobe(path, "-count_frames", "-select_streams", "s",
                  "-show_entries", "stream=codec_name,nb_read_frames")
    assert out["streams"] == [{"codec_name": "mov_text", "nb_read_frames": "15"}]
    with av.open(path) as c:
        packets = [(p.pts, p.duration, bytes(p)) for p in c.demux(subtitles=0) if p.size]
    # Wall time [T0 - 2 s, T0 + 12.97 s): seconds 03:59:58 .. 04:00:12, one sample each.
    start = rows[0].start_time_90k
    assert start == T0_90K - 2 * SEC
    texts = [p[2] for p in packets]
    assert texts[0] == b"\x00\x192026-11-29 03:59:58 -0800"
    assert texts == [subtitle(start // SEC + i) for i in range(15)]
    assert [p[0] for p in packets] == [i * SEC for i in range(15)]
    assert sum(p[1] for p in packets) == media(rows)


def test_timestamp_subtitles_trimmed(recorded, tmp_path):
    t, row = recorded.t, recorded.h264[1]
    f = mp4.build_view(t.db, t.stream_id, [f"{row.recording_id}.121500-"], ts=True)
    path = save(f, tmp_path, "ts_trim.mp4")
    with av.open(path) as c:
        packets = [(p.pts, p.duration, bytes(p)[2:].decode()) for p in c.demux(subtitles=0)
                   if p.size]
    # The recording starts at T0 + 7 s; +1.35 s: 04:00:08.35 to 04:00:10.
    assert packets == [(0, 58500, "2026-11-29 04:00:08 -0800"),
                       (58500, 90000, "2026-11-29 04:00:09 -0800")]


def test_zero_length_edge_cases(recorded, tmp_path):
    t, rows, single = recorded.t, recorded.h264, recorded.single[0]
    # A single-frame recording (a run's lone trailing zero): one frame, duration 0.
    f = mp4.build_view(t.db, t.stream_id, [str(single.recording_id)], ts=True)
    check(save(f, tmp_path, "single.mp4"), frames=1, samples=1, duration_90k=0)
    # A zero-length range inside a recording: the GOP up to it, all cut by the edit list.
    rid = rows[1].recording_id
    f = mp4.build_view(t.db, t.stream_id, [f"{rid}.46500-46500"])
    check(save(f, tmp_path, "zero.mp4"), frames=0, samples=16, duration_90k=0)
    # ... and at its very start: the key frame there, as anywhere else.
    f = mp4.build_view(t.db, t.stream_id, [f"{rid}.0-0"])
    check(save(f, tmp_path, "zero0.mp4"), frames=1, samples=1, duration_90k=0)
    # A start exactly at the end of the run's last recording: its trailing zero frame.
    last = rows[-1]
    f = mp4.build_view(t.db, t.stream_id, [f"{last.recording_id}.{last.wall_duration_90k}-"])
    check(save(f, tmp_path, "zero_end.mp4"), frames=0, samples=30, duration_90k=0)
    # A start exactly at the end of a recording followed by others: that recording drops out.
    f = mp4.build_view(t.db, t.stream_id, [f"{ids(rows)}.{rows[0].wall_duration_90k}-"])
    assert [s.row.recording_id for s in f.segments] == [r.recording_id for r in rows[1:]]


def test_media_segments_with_init_segment(recorded, tmp_path):
    t, rows = recorded.t, recorded.h264
    init = mp4.build_init(t.db, rows[1].video_sample_entry_id)
    assert init.extra_headers == {"X-Aspect": "16:9"}
    head = init.read()
    m = mp4.build_view(t.db, t.stream_id, [str(rows[1].recording_id)], kind="m4s")
    assert m.extra_headers == {"X-Prev-Media-Duration": str(rows[0].media_duration_90k),
                               "X-Runs": "1"}
    path = save(m, tmp_path, "one.m4s", prefix=head)
    video, duration, presented = probe(path)
    assert (presented, duration) == (90, 3.0)
    assert len(decode(path)) == 90
    # Starting at frame 40: the segment starts at key frame 30 and says so.
    m = mp4.build_view(t.db, t.stream_id, [f"{rows[1].recording_id}.120000-"], kind="m4s")
    assert m.extra_headers["X-Leading-Media-Duration"] == "30000"
    path = save(m, tmp_path, "two.m4s", prefix=head)
    assert probe(path)[2] == 60
    assert bar_x(decode(path)[0]) == bar(30)
    # A run's first recording counts its own run.
    m = mp4.build_view(t.db, t.stream_id, [str(rows[0].recording_id)], kind="m4s")
    assert m.extra_headers == {"X-Prev-Media-Duration": "0", "X-Runs": "1"}


def test_growing_recording(tmp_path, clocks):
    """A recording being written is served up to its length when the file was built."""
    t = make_testdb(tmp_path, clocks, zone=ZONE)
    clip = make_clip(str(tmp_path / "clip.mp4"), frames=90, gop=30)
    w, frames, vse, syncer = clip_writer(t, clip)

    def write(i):
        f = frames[i]
        w.write(f.data, T0_90K + f.pts_90k, f.pts_90k, f.is_key, vse)

    for i in range(45):
        write(i)
    (row,) = rows_of(t)
    assert row.flags & db.FLAG_GROWING and row.video_samples == 44  # one frame behind
    early = mp4.build_view(t.db, t.stream_id, ["0"])
    early_len = early.length
    for i in range(45, 80):  # grows after the build; its tables are built after this
        write(i)
    assert early.length == early_len
    check(save(early, tmp_path, "early.mp4"), frames=44, samples=44, duration_90k=44 * 3000)
    later = mp4.build_view(t.db, t.stream_id, ["0.3000-"])  # partial: reads the index now
    check(save(later, tmp_path, "later.mp4"), frames=78, samples=79, duration_90k=78 * 3000)
    w.close("test")
    drain(syncer)
    t.db.flush("test")
    done = mp4.build_view(t.db, t.stream_id, ["0"])
    check(save(done, tmp_path, "done.mp4"), frames=80, samples=80, duration_90k=79 * 3000)
    t.db.close()


def test_live_segments_of_a_growing_recording(tmp_path, clocks):
    """Live view: one media segment per frame as the writer indexes it, built while the
    recording grows (uncommitted) and again once committed; an init segment followed by
    the segments from a key frame on decodes to every frame, in order."""
    t = make_testdb(tmp_path, clocks, zone=ZONE)
    clip = make_clip(str(tmp_path / "clip.mp4"), frames=90, gop=30)
    w, frames, vse, syncer = clip_writer(t, clip)
    indexed = []  # (composite id, media start, media end, is_key, key_state) per frame
    t.db.subscribe_live(t.stream_id, lambda *a: indexed.append(a))
    live = []
    for i, fr in enumerate(frames[:80]):
        w.write(fr.data, T0_90K + fr.pts_90k, fr.pts_90k, fr.is_key, vse)
        while len(live) < len(indexed):  # as live view would, while the recording grows
            cid, start, end, key, key_state = indexed[len(live)]
            (row,) = rows_of(t)
            assert row.flags & db.FLAG_GROWING
            f = mp4.build_live_segment(t.db, t.stream_id, cid, start, end, key_state=key_state)
            # Starting the index walk at the latest key frame changes nothing.
            assert f.read() == mp4.build_live_segment(t.db, t.stream_id, cid, start, end).read()
            live.append(f)
    assert [x[1:4] for x in indexed[:2]] == [(0, 3000, True), (3000, 6000, False)]
    # The state before key frame 30 (frames 0-29 indexed), reported with frames 30-59.
    ks = indexed[45][4]
    assert ks[:3] == (30, ks[1], 30 * 3000) and ks[1] > 0 and ks[3] == sum(
        len(fr.data) for fr in frames[:30])
    assert {x[4] for x in indexed[30:60]} == {ks} and indexed[29][4] != ks
    assert len(live) == 79 and all(f.extra_headers["X-Recording-Id"] == "1.0" for f in live)
    assert [f.extra_headers["X-Media-Time-Range"] for f in live[:2]] == ["0-3000", "3000-6000"]
    init = mp4.build_init(t.db, vse).read()

    def play(segments, name):
        # Each segment has tfdt 0 (§4.6): a browser places it with timestampOffset. Here,
        # write its first frame's media start into tfdt instead, as that offset would.
        path = str(tmp_path / name)
        with open(path, "wb") as out:
            out.write(init)
            for f in segments:
                data = bytearray(f.read())
                (tfdt,) = [b for p_, b in walk(parse_boxes(data)) if p_ == "/moof/traf/tfdt"]
                lead = int(f.extra_headers.get("X-Leading-Media-Duration", 0))
                struct.pack_into(">I", data, tfdt.start + 12, f.media_range_90k[0] - lead)
                out.write(data)
        return path

    # From key frame 30: frames 30..78.
    path = play(live[30:], "live.mp4")
    shown = decode(path)
    assert [bar_x(x) for x in shown] == [bar(i) for i in range(30, 79)]
    assert probe(path)[2] == 49
    # Starting mid-GOP, a connection's first message begins at the key frame before.
    first = mp4.build_live_segment(t.db, t.stream_id, *indexed[40][:3], start_at_key=True)
    assert first.extra_headers["X-Leading-Media-Duration"] == str(10 * 3000)
    shown = decode(play([first] + live[41:], "joined.mp4"))
    assert [bar_x(x) for x in shown] == [bar(i) for i in range(30, 79)]
    w.close("test")
    drain(syncer)
    t.db.flush("test")
    (row,) = rows_of(t)
    assert not row.flags & db.FLAG_UNCOMMITTED
    # Committed now, ending with the run's trailing zero frame: the same segments, and
    # that frame in a segment of its own.
    assert len(indexed) == 80 and indexed[79][1:4] == (79 * 3000, 79 * 3000, False)
    again = [mp4.build_live_segment(t.db, t.stream_id, *x[:3]) for x in indexed]
    assert [f.read() for f in again[:79]] == [f.read() for f in live]
    shown = decode(play(live[60:] + again[79:], "ended.mp4"))
    assert [bar_x(x) for x in shown] == [bar(i) for i in range(60, 80)]
    t.db.close()
