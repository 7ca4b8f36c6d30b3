"""The virtual `.mp4`, `.m4s` and init segment: layout, boxes, ETag, byte ranges.

A `VirtualFile` is never written anywhere. It is a list of *slices*, each producing
one contiguous byte range of the file on demand: constant boxes, generated header
bytes, per-segment sample tables, and sample data that lives in the sample files
(reference §4.1). A *segment* is a recording plus a relative media range of it; the
file is the segments' frames in order. The layout (every slice's offset, hence the
Content-Length and the ETag) comes from the listing rows alone (`db.ListRow`, the
`recording_cover` index): a recording's `video_index` is read at build time only for
a partial first or last segment (to find the key frame at or before its start), and
otherwise only when a byte range first touches that segment's `stts`/`stsz`/`stss`
(or `trun`s), through db.py's LRU cache. Tables built are kept for the file's life.

Sample tables are the cost of serving a view.mp4: the moov holds 12 bytes per frame
(stts 8, stsz 4), all of it before the first sample byte, and every frame's entry is
decoded from its recording's index in Python (24 h at 30 fps: 2.6 million frames,
31 MB). So `recording.decode_columns` decodes an index straight into `array`s with the least
per-frame work it can (no objects per frame), and `table_cache` (a `TableCache`) keeps
committed recordings' stts/stsz bytes and key frame positions across files, bounded at
TABLE_CACHE_BYTES (64 MiB, ~50 h of 30 fps video), least recently used out first: a
player's Range requests, a repeated or overlapping view reuse them. Keys are the
recording's identity (database uuid, composite id, start, open id) and the segment's
media range and `start_at_key`; stss, numbered across the file, is made per file from
the positions. A growing recording is never cached (its row may be behind its index).
docs/performance.md ("Serve") has the figures, cold and warm.

`view.mp4` (`kind="mp4"`, reference §4.2; ISO/IEC 14496-12 section numbers):

    ftyp                     32 bytes: isom, 0, [isom iso2 avc1 mp41]          §4.3
    moov                                                                       §8.2.1
      mvhd  v1               times, timescale 90000, duration after edits      §8.2.2
      trak                   video, track 1                                    §8.3.1
        tkhd  v0 (v1 if the duration needs 64 bits), flags 7, max w x h        §8.3.2
        edts/elst v1         only when a start is not a key frame (§4.3)       §8.6.5-6
        mdia
          mdhd  v1           timescale 90000, language und                     §8.4.2
          hdlr  vide                                                           §8.4.3
          minf
            vmhd, dinf/dref/url (self-contained)                               §12.1.2, §8.7
            stbl
              stsd           one entry per distinct sample entry (avc1/hvc1)   §8.5.2
              stts           (1, duration) per frame; each segment's last
                             duration truncated to its desired end             §8.6.1.2
              stsc           one chunk per segment: (i+1, frames, entry)       §8.7.4
              stsz           0, then one size per frame                        §8.7.3
              co64           one chunk offset per segment                      §8.7.5
              stss           key frames, numbered across the file              §8.6.2
      trak                   optional timestamp subtitles (`ts=true`), track 2
        tkhd v1; mdia: mdhd v1, hdlr sbtl, minf: nmhd, dinf, stbl: stsd (tx3g,
        ftab "Monospace"), stts (first partial second, whole seconds, last
        partial), stsc (one chunk), stsz (27 each), co64 (one offset)
    mdat                     64-bit size; each segment's sample file byte range
                             in order, then the subtitle samples               §8.1.1

`view.m4s` (`kind="m4s"`, §4.6): `moof` (mfhd seq 1; traf: tfhd default-base-is-moof,
tfdt 0, one `trun` per GOP with absolute data offsets), then `mdat` with a 32-bit size.
It has no edit list, so it starts at the key frame and says how much to cut in
`X-Leading-Media-Duration`. Live view's per-frame segments (`build_live_segment`,
§5.3) are appended with `start_at_key=False`: exactly the frames starting in the
range, the first `trun` beginning at a non-key frame without first_sample_flags (trex's
non-sync default applies). Init segment (`kind="init"`, §4.5): ftyp iso5, then the
moov above with empty tables, no stss, and `mvex/trex`.

Segments follow `s=` (§5.2, `parse_segments`): relative times are wall time from the
start of the first id, rescaled per recording to media time (§3.4, rounding down).
Subtitles: one 27-byte sample (u16 length 25, `%Y-%m-%d %H:%M:%S %z` in the server's
zone) per wall-clock second each segment touches.

ETag (§4.7): hex blake2b-256 (Moonfire: Blake3) of `FORMAT_VERSION`, the options and 28
bytes per segment, then (only if some segment was appended with `start_at_key=False`)
one byte per segment saying which were. Bump `FORMAT_VERSION` whenever the bytes for a given request
change, or clients may combine ranges of two formats. Where we differ from Moonfire: `tkhd`
switches to version 1 past 2^32 ticks (13 h 15 min; Moonfire's wraps); the subtitle
`stts` always counts as many samples as `stsz` (Moonfire's adds one when a segment ends
exactly on a second); a zero-length segment at a recording's very end is dropped when
later recordings follow; a `.m4s` refuses more than one sample entry; the filename says
`ext` for an ext stream; a `start_at_key=False` start must be a frame's start (Moonfire's
rounds down to the frame at or before it) and its range ending at the recording's end
leaves out a trailing zero frame (Moonfire's includes it, so a live client could get it
twice).

Threads: a VirtualFile is immutable once built except for its lazily built tables,
which any thread may build (a race builds the same bytes twice); no lock of ours is
held while db.py's lock is taken. `table_cache` has one lock, held only for its dict
operations and ranking below every other (nothing is taken while holding it).
Growing (uncommitted) recordings are served up to the length their row had at build
time: the writer appends each frame to the file before indexing it, so the file always
holds what the row describes.

Neighbours: recording.py owns the index and `frames_in_range`; db.py lists rows and
caches indexes; codec.py makes the sample entries copied verbatim into `stsd`; web.py
serves a VirtualFile (Range, conditional requests, `os.sendfile` of `FileChunk`s) and
maps `Mp4Error` to 400, `NotFound` to 404.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import email.utils
import hashlib
import logging
import math
import os
import re
import struct
import sys
import threading
from array import array
from bisect import bisect_right
from collections.abc import Iterator

import db as dbmod
import dir as dirmod
import recording

logger = logging.getLogger(__name__)

# Bump whenever the bytes or headers produced for a given request change; it feeds the ETag.
FORMAT_VERSION = 0x0a

TIME_UNITS_PER_SEC = recording.TIME_UNITS_PER_SEC
KINDS = ("mp4", "m4s", "init")

# Seconds from 1904-01-01 (the ISO/IEC 14496-12 epoch) to 1970-01-01.
ISO14496_EPOCH_OFFSET = 24107 * 86400

SUBTITLE_TEMPLATE = "%Y-%m-%d %H:%M:%S %z"
SUBTITLE_LENGTH = 25                     # len("2015-07-02 17:10:00 -0700")
SUBTITLE_SAMPLE_BYTES = 2 + SUBTITLE_LENGTH


class Mp4Error(ValueError):
    """A request that can't be served as asked (HTTP 400); the message says why."""


class NotFound(LookupError):
    """A stream, recording or sample entry that doesn't exist (HTTP 404)."""


# ---------------------------------------------------------------------------------------
# Constant boxes (reference §4.2, Moonfire's mp4.rs)

# ftyp (§4.3) of a view.mp4.
NORMAL_FTYP = (
    b"\x00\x00\x00\x20" b"ftyp"   # size 32, type
    b"isom"                       # major_brand
    b"\x00\x00\x00\x00"           # minor_version
    b"isom" b"iso2" b"avc1" b"mp41")  # compatible_brands
assert len(NORMAL_FTYP) == 32

# ftyp of an init segment: avc1 is incompatible with default-base-is-moof (§A.2), and
# Safari needs a compatible brand, not only the major one.
INIT_FTYP = (
    b"\x00\x00\x00\x14" b"ftyp"   # size 20, type
    b"iso5"                       # major_brand
    b"\x00\x00\x00\x00"           # minor_version
    b"iso5")                      # compatible_brands
assert len(INIT_FTYP) == 20


def _hdlr(handler: bytes) -> bytes:
    # hdlr (§8.4.3): size, type, version+flags, pre_defined, handler_type,
    # reserved[3], name (empty, zero-terminated).
    return b"\x00\x00\x00\x21hdlr" + bytes(8) + handler + bytes(12) + b"\x00"


VIDEO_HDLR = _hdlr(b"vide")
SUBTITLE_HDLR = _hdlr(b"sbtl")
assert len(VIDEO_HDLR) == len(SUBTITLE_HDLR) == 33

# dinf (§8.7.1) with a dref (§8.7.2) of one self-contained `url ` entry.
_DINF = (
    b"\x00\x00\x00\x24" b"dinf"
    b"\x00\x00\x00\x1c" b"dref" b"\x00\x00\x00\x00"   # version + flags
    b"\x00\x00\x00\x01"                               # entry_count
    b"\x00\x00\x00\x0c" b"url " b"\x00\x00\x00\x01")  # flags 1: data is in this file
assert len(_DINF) == 36

# The start of a video minf's body: vmhd (§12.1.2; flags 1, graphicsmode copy,
# opcolor 0) then dinf.
VIDEO_MINF_HEAD = b"\x00\x00\x00\x14" b"vmhd" b"\x00\x00\x00\x01" + bytes(8) + _DINF
# The start of a subtitle minf's body: nmhd (§8.4.5.2, flags 1) then dinf.
SUBTITLE_MINF_HEAD = b"\x00\x00\x00\x0c" b"nmhd" b"\x00\x00\x00\x01" + _DINF

# stsd (§8.5.2) with one tx3g TextSampleEntry (3GPP TS 26.245 §5.16).
SUBTITLE_STSD = (
    b"\x00\x00\x00\x54" b"stsd" b"\x00\x00\x00\x00"  # size 84, version + flags
    b"\x00\x00\x00\x01"                              # entry_count
    b"\x00\x00\x00\x44" b"tx3g"                      # size 68
    b"\x00\x00\x00\x00\x00\x00" b"\x00\x01"          # reserved, data_reference_index 1
    b"\x00\x00\x00\x00"                              # displayFlags: none
    b"\x00"                                          # horizontal-justification: left
    b"\x00"                                          # vertical-justification: top
    b"\x00\x00\x00\x00"                              # background-color-rgba: transparent
    b"\x00\x00\x00\x00\x00\x00\x00\x00"              # BoxRecord: top, left, bottom, right
    b"\x00\x00\x00\x00"                              # StyleRecord: startChar, endChar
    b"\x00\x01"                                      # font-ID 1
    b"\x00"                                          # face-style-flags: plain
    b"\x12"                                          # font-size 18 px
    b"\xff\xff\xff\xff"                              # text-color-rgba: opaque white
    b"\x00\x00\x00\x16" b"ftab"                      # FontTableBox, size 22
    b"\x00\x01" b"\x00\x01" b"\x09" b"Monospace")    # 1 entry: font 1, 9-byte name
assert len(SUBTITLE_STSD) == 0x54

# The tail of mvhd (§8.2.2) after the duration: rate 1.0, volume 1.0, reserved,
# the identity matrix, pre_defined.
_MATRIX = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
MVHD_TAIL = b"\x00\x01\x00\x00" b"\x01\x00" + bytes(10) + _MATRIX + bytes(24)
assert len(MVHD_TAIL) == 76
# The middle of tkhd (§8.3.2) after the duration: reserved[2], layer, alternate_group,
# volume 0, reserved, the identity matrix.
TKHD_MIDDLE = bytes(16) + _MATRIX
assert len(TKHD_MIDDLE) == 52

STATICS = {  # name -> bytes, for the slice table
    "normal_ftyp": NORMAL_FTYP, "init_ftyp": INIT_FTYP, "video_hdlr": VIDEO_HDLR,
    "subtitle_hdlr": SUBTITLE_HDLR, "video_minf_head": VIDEO_MINF_HEAD,
    "subtitle_minf_head": SUBTITLE_MINF_HEAD, "subtitle_stsd": SUBTITLE_STSD,
    "mvhd_tail": MVHD_TAIL, "tkhd_middle": TKHD_MIDDLE}

# ETag input per segment (§4.7): composite_id i64, recording start i64, open_id u32,
# relative media start i32, relative media end i32.
_ETAG_SEGMENT = struct.Struct(">qqIii")
assert _ETAG_SEGMENT.size == 28

# trun (§8.8.8) header, version 0: size, "trun", tr_flags, sample_count, data_offset,
# first_sample_flags. tr_flags 0x000305 = data-offset (0x1), first-sample-flags (0x4),
# sample-duration (0x100), sample-size (0x200): a run starting at a key frame.
_TRUN_HEADER = struct.Struct(">I4sIIII")
assert _TRUN_HEADER.size == 24
_TRUN_FLAGS = 0x000305
# The header of a run starting at a non-key frame (a live segment, `start_at_key=False`):
# no first_sample_flags, so tr_flags 0x000301 and trex's non-sync default applies.
_TRUN_HEADER_NON_KEY = struct.Struct(">I4sIII")
assert _TRUN_HEADER_NON_KEY.size == 20
_TRUN_FLAGS_NON_KEY = 0x000301
# Sample flags (§8.8.3.1) of a key frame: is_leading 2 (not leading), depends_on 2 (on
# nothing), is_depended_on 1, has_redundancy 2 (none), not a non-sync sample.
KEY_SAMPLE_FLAGS = (2 << 26) | (2 << 24) | (1 << 22) | (2 << 20)
assert KEY_SAMPLE_FLAGS == 0x0A600000
# trex default_sample_flags: not leading, depends on others, redundancy none, non-sync.
NON_KEY_SAMPLE_FLAGS = 0x09210000


# ---------------------------------------------------------------------------------------
# The s= parameter (reference §5.2)

S_SYNTAX = "START_ID[-END_ID][@OPEN_ID][.[REL_START]-[REL_END]]"
_S_RE = re.compile(r"([0-9]+)(?:-([0-9]+))?(?:@([0-9]+))?(?:\.([0-9]*)-([0-9]*))?")
_MAX_ID = 2**31 - 1          # recording ids are i32 in Moonfire
_MAX_OPEN_ID = 2**32 - 1
_MAX_REL_90K = 2**63 - 1


@dataclasses.dataclass(frozen=True)
class SegmentSpec:
    """One `s=` value: recordings start_id..end_id (inclusive) of a stream, optionally
    only if made by `open_id`, and the wall range [rel_start_90k, rel_end_90k) relative
    to the start of start_id (end None: to the end of end_id)."""
    start_id: int
    end_id: int
    open_id: int | None = None
    rel_start_90k: int = 0
    rel_end_90k: int | None = None
    text: str = dataclasses.field(default="", compare=False)  # as given, for messages


def parse_segment(value: str) -> SegmentSpec:
    """Parses one `s=` value; `Mp4Error` says what is wrong with it."""
    shown = value if len(value) <= 80 else value[:77] + "..."   # in messages
    m = _S_RE.fullmatch(value)
    if m is None:
        raise Mp4Error(f"invalid s parameter {shown!r}: expected {S_SYNTAX}, e.g. 1-5.26-42")
    # The length of what int() converts, leading zeros included: "0" * 5000 is zero,
    # but int() refuses a string of over 4300 digits (a 500, issue 19).
    if any(g is not None and len(g) > 30 for g in m.groups()):
        raise Mp4Error(f"invalid s parameter {shown!r}: a number is too large")
    start_id, end_id, open_id, rel_start, rel_end = m.groups()
    start = int(start_id)
    end = start if end_id is None else int(end_id)
    if max(start, end) > _MAX_ID:
        raise Mp4Error(f"invalid s parameter {shown!r}: recording ids go up to {_MAX_ID}")
    if end < start:
        raise Mp4Error(f"invalid s parameter {shown!r}: end id {end} is before start id {start}")
    if open_id is not None and int(open_id) > _MAX_OPEN_ID:
        raise Mp4Error(f"invalid s parameter {shown!r}: open ids go up to {_MAX_OPEN_ID}")
    rs = int(rel_start) if rel_start else 0
    re_ = int(rel_end) if rel_end else None
    if max(rs, re_ or 0) > _MAX_REL_90K:
        raise Mp4Error(f"invalid s parameter {shown!r}: relative time too large")
    if re_ is not None and re_ < rs:
        raise Mp4Error(f"invalid s parameter {shown!r}: relative end {re_} is before "
                       f"relative start {rs}")
    return SegmentSpec(start, end, None if open_id is None else int(open_id), rs, re_, value)


def parse_segments(s_values: list[str]) -> list[SegmentSpec]:
    """All `s=` values of a request, in order (they are concatenated)."""
    if not s_values:
        raise Mp4Error(f"no s parameter: give one or more s={S_SYNTAX}")
    return [parse_segment(v) for v in s_values]


def rescale(off_90k: int, from_duration_90k: int, to_duration_90k: int) -> int:
    """An offset within a recording from wall to media time or back (§3.4), rounding down."""
    if from_duration_90k == 0:
        return 0
    return off_90k * to_duration_90k // from_duration_90k


# ---------------------------------------------------------------------------------------
# Segments and slices

@dataclasses.dataclass(frozen=True)
class FileChunk:
    """`length` bytes of the sample file at `path`, from `offset`: send with os.sendfile.

    The file is at least offset + length long (files are only appended to), unless the
    recording was deleted meanwhile, or is growing: then `source` is its
    db.RecordingToInsert, whose `tail` holds the bytes the writer hasn't written yet
    (`split`). Whoever opens the file closes it."""
    path: str
    offset: int
    length: int
    source: object = dataclasses.field(default=None, compare=False, repr=False)

    def split(self) -> tuple[int, bytes]:
        """(n, rest): the first n bytes are in the file; `rest`, the others, came from
        the growing recording's memory. The tail is taken once: its buffer holds every
        byte indexed when it was published and after, until the writer has written it
        all and published the next (db.RecordingToInsert.tail)."""
        tail = self.source.tail if self.source is not None else None
        end = self.offset + self.length
        if tail is None or end <= tail[0]:
            return self.length, b""
        at, buf = tail
        lo = max(self.offset, at)
        rest = bytes(buf[lo - at:end - at])
        if len(rest) != end - lo:
            raise OSError(f"{self.path}: {len(rest)} of {end - lo} bytes at {lo} in memory; "
                          f"the recording is shorter than its index says")
        return lo - self.offset, rest

    def read(self) -> bytes:
        n, rest = self.split()
        data = b""
        if n:
            with open(self.path, "rb") as f:
                data = os.pread(f.fileno(), n, self.offset)
            if len(data) != n:
                raise OSError(f"{self.path}: read {len(data)} of {n} bytes at "
                              f"{self.offset}; the file is shorter than its index says")
        return data + rest if rest else data


class _Segment:
    """A recording's contribution to a file: the frames covering a media range of it."""

    __slots__ = ("row", "media_start_90k", "media_end_90k", "path", "source", "frame_range",
                 "start_at_key", "lead_frames", "starts_with_key", "actual_start_90k",
                 "frames", "key_frames", "pos", "bytes", "first_frame_num", "data_offset",
                 "subtitle_samples", "tables", "truns")

    def __init__(self, row: dbmod.ListRow, media_start_90k: int, media_end_90k: int, path: str):
        self.row = row
        self.media_start_90k = media_start_90k   # desired, relative to the recording
        self.media_end_90k = media_end_90k
        self.path = path
        self.source = None  # a growing recording's db.RecordingToInsert (FileChunk.source)
        self.frame_range: recording.FrameRange | None = None  # None: the whole recording
        self.start_at_key = True                 # as appended (FileBuilder.append)
        self.lead_frames = 0                     # frames of frame_range before the segment's
        self.starts_with_key = True              # False only with start_at_key=False
        self.actual_start_90k = 0                # of the frame the segment starts at
        self.frames = row.video_samples
        self.key_frames = row.video_sync_samples
        self.pos = 0                             # sample file byte range [pos, pos + bytes)
        self.bytes = row.sample_file_bytes
        self.first_frame_num = 1                 # 1-based, across the file
        self.data_offset = 0                     # where its sample data sits in the file
        self.subtitle_samples = 0
        self.tables: tuple[bytes, bytes, bytes] | None = None  # stts, stsz, stss entries
        self.truns: bytes | None = None

    @property
    def is_whole(self) -> bool:
        return self.frame_range is None

    def wall(self, media_off_90k: int) -> int:
        return rescale(media_off_90k, self.row.media_duration_90k, self.row.wall_duration_90k)

    def media(self, wall_off_90k: int) -> int:
        return rescale(wall_off_90k, self.row.wall_duration_90k, self.row.media_duration_90k)

    def wall_range(self) -> tuple[int, int]:
        """The desired range in absolute wall time."""
        s = self.row.start_time_90k
        return s + self.wall(self.media_start_90k), s + self.wall(self.media_end_90k)

    def _cache_key(self, db: dbmod.Database) -> tuple | None:
        """This segment's key in `table_cache`, or None if its recording may still
        change. A committed recording's frames never change. Its composite id, start
        and open id are the ETag's identity of it (§4.7); the database's uuid keeps
        another database's recording (tests open many in one process) from matching."""
        r = self.row
        if r.flags & dbmod.FLAG_UNCOMMITTED:
            return None
        return (db.uuid, r.composite_id, r.start_time_90k, r.open_id, self.media_start_90k,
                self.media_end_90k, self.start_at_key)

    def columns(self, db: dbmod.Database) -> tuple[array, array, array]:
        """The segment's frame durations (the last cut to the desired end), sizes, and
        key frame positions (from 0 within the segment), checked against its row. Reads
        the index (through db.py's cache) for a whole recording; a partial segment has
        it in its FrameRange. A growing recording's index may have grown since the row
        was listed: only the row's frames are taken."""
        if self.frame_range is None:
            index, first = db.get_video_index(self.row.composite_id), 0
        else:
            index, first = self.frame_range.video_index, self.frame_range.first_frame
            first += self.lead_frames
        end = first + self.frames
        durations, sizes, keys = recording.decode_columns(index, end)
        last_start = sum(durations[:end - 1])   # the last frame's, in the recording
        if first:
            durations, sizes = durations[first:], sizes[first:]
            keys = array("I", [k - first for k in keys if k >= first])
        if (len(keys) != self.key_frames or sum(sizes) != self.bytes
                or (self.is_whole and last_start + durations[-1] != self.row.media_duration_90k)):
            raise RuntimeError(f"recording {_rid(self.row)}: index disagrees with its row "
                               f"({len(keys)} key frames and {sum(sizes)} bytes in the "
                               f"index's {self.frames} frames, {self.key_frames} and "
                               f"{self.bytes} in the row); run `nvr.py check`")
        durations[-1] = min(durations[-1], self.media_end_90k - last_start)
        return durations, sizes, keys

    def get_tables(self, db: dbmod.Database) -> tuple[bytes, bytes, bytes]:
        """stts, stsz and stss entries (§8.6.1.2, §8.7.3, §8.6.2), built once per file
        and kept in `table_cache` for committed recordings. stss numbers frames across
        the file, so the cache holds key frame positions within the segment instead."""
        t = self.tables
        if t is None:
            key = self._cache_key(db)
            cached = None if key is None else table_cache.get(key)
            if cached is None:
                durations, sizes, keys = self.columns(db)
                stts = array("I", [1]) * (2 * len(durations))
                stts[1::2] = durations
                cached = (_be(stts), _be(sizes), keys)
                if key is not None:
                    table_cache.put(key, cached)
            stts_bytes, stsz_bytes, keys = cached
            first = self.first_frame_num
            stss = array("I", [first + k for k in keys])  # one per GOP: few
            t = self.tables = (stts_bytes, stsz_bytes, _be(stss))
        return t

    def truns_len(self) -> int:
        lead = 0 if self.starts_with_key else _TRUN_HEADER_NON_KEY.size
        return lead + self.key_frames * _TRUN_HEADER.size + self.frames * 8

    def get_truns(self, db: dbmod.Database) -> bytes:
        """One trun (§8.8.8) per GOP (and one for the frames before the first key frame,
        if the segment starts elsewhere); data offsets are from the start of the file.
        Not cached across files: the offsets depend on the file."""
        t = self.truns
        if t is None:
            durations, sizes, keys = self.columns(db)
            n = len(durations)
            samples = array("I", bytes(8 * n))  # (duration, size) per frame
            samples[0::2] = durations
            samples[1::2] = sizes
            samples = _be(samples)
            starts = list(keys) if self.starts_with_key else [0, *keys]
            out = bytearray()
            pos = self.data_offset
            for j, s in enumerate(starts):
                e = starts[j + 1] if j + 1 < len(starts) else n
                if j == 0 and not self.starts_with_key:
                    out += _TRUN_HEADER_NON_KEY.pack(_TRUN_HEADER_NON_KEY.size + 8 * (e - s),
                                                     b"trun", _TRUN_FLAGS_NON_KEY, e - s, pos)
                else:
                    out += _TRUN_HEADER.pack(_TRUN_HEADER.size + 8 * (e - s), b"trun",
                                             _TRUN_FLAGS, e - s, pos, KEY_SAMPLE_FLAGS)
                out += samples[8 * s:8 * e]
                pos += sum(sizes[s:e])
            if len(out) != self.truns_len():
                raise RuntimeError(f"recording {_rid(self.row)}: truns are {len(out)} bytes, "
                                   f"expected {self.truns_len()}")
            t = self.truns = bytes(out)
        return t


def _be(a: array) -> bytes:
    if sys.byteorder == "little":
        a.byteswap()
    return a.tobytes()


# ---------------------------------------------------------------------------------------
# Sample tables from the index

# `recording.decode_columns` decodes them: the hot loop of a cold view.mp4.

# ---------------------------------------------------------------------------------------
# The table cache

TABLE_CACHE_BYTES = 64 << 20
_TABLE_ENTRY_OVERHEAD = 200  # bytes of a cache entry besides its tables: key, tuple, dict


class TableCache:
    """A least-recently-used cache of committed segments' sample tables, bounded by bytes.

    Values are `(stts bytes, stsz bytes, key frame positions)` as `_Segment.get_tables`
    makes them; keys are `_Segment._cache_key()`s. Only committed recordings go in:
    their index never changes, so an entry is valid for the process's life (a deleted
    recording's entries just age out). Growing ones are never cached.

    Why: a view.mp4's moov holds every frame's stts/stsz entry, generated in Python
    before the first sample byte (a 24 h file has 31 MB of them). Players re-request
    files with Range (seeking, resuming), and the UI asks for overlapping spans; each
    request builds a new VirtualFile, and this lets it reuse the tables. 64 MiB holds
    about 50 h of 30 fps video.

    Thread-safe: one lock, held only for dict operations (tables are generated outside
    it; two threads may both generate an entry, and the second `put` is ignored). It
    ranks below every other lock: nothing else is taken while holding it.
    """

    def __init__(self, max_bytes: int = TABLE_CACHE_BYTES):
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._entries: collections.OrderedDict = collections.OrderedDict()  # key -> (value, size)
        self.bytes = 0
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple):
        with self._lock:
            e = self._entries.get(key)
            if e is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return e[0]

    def put(self, key: tuple, value: tuple[bytes, bytes, array]) -> None:
        stts, stsz, keys = value
        size = len(stts) + len(stsz) + keys.itemsize * len(keys) + _TABLE_ENTRY_OVERHEAD
        if size > self.max_bytes:
            return
        with self._lock:
            if key in self._entries:
                return
            self._entries[key] = (value, size)
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, (_, evicted) = self._entries.popitem(last=False)
                self.bytes -= evicted

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.bytes = self.hits = self.misses = 0


table_cache = TableCache()


def _rid(row: dbmod.ListRow) -> str:
    return f"{row.composite_id >> 32}/{row.recording_id}"


def _exact_frames(seg: _Segment) -> None:
    """Narrows a segment built from the key frame at or before its start to exactly the
    frames starting in [start, end) (`start_at_key=False`); an empty range [t, t) keeps
    the frame starting at t. So a run's trailing zero frame, which starts at the
    recording's end, is only in the range that starts there: live view sends it once.
    Walks the segment's frames once (a live segment has one or a few)."""
    start, end = seg.media_start_90k, seg.media_end_90k
    lead = frames = keys = nbytes = 0
    first = None
    for f in seg.frame_range:
        if f.start_90k < start:
            lead += 1
            continue
        if first is None:
            first = f
            if f.start_90k != start:
                break
        elif f.start_90k >= end:
            break
        frames += 1
        keys += f.is_key
        nbytes += f.bytes
    if first is None or first.start_90k != start:
        raise Mp4Error(f"recording {_rid(seg.row)}: media offset {start} is not the start of "
                       f"a frame{'' if first is None else f' (one starts at {first.start_90k})'}"
                       f"; a segment that needn't start at a key frame must start at a frame")
    seg.lead_frames = lead
    seg.starts_with_key = first.is_key
    seg.actual_start_90k, seg.pos = start, first.pos
    seg.frames, seg.key_frames, seg.bytes = frames, keys, nbytes


# Slice kinds: what produces a slice's bytes. The parameter is named per kind.
STATIC = "static"              # param: a name in STATICS
BUF = "buf"                    # param: start offset in the generated buffer
SAMPLE_ENTRY = "sample_entry"  # param: index into the file's sample entries
STTS, STSZ, STSS = "stts", "stsz", "stss"  # param: segment index
CO64 = "co64"                  # the video co64 entries; param unused
VIDEO_DATA = "video_data"      # param: segment index
SUBTITLE_DATA = "subtitle_data"  # param: segment index
TRUNS = "truns"                # param: segment index


class _Layout:
    """Accumulates slices; generated bytes go to `buf` and become BUF slices."""

    def __init__(self):
        self.ends: list[int] = []
        self.slices: list[tuple[str, object]] = []
        self.buf = bytearray()
        self.flushed = 0

    def __len__(self) -> int:
        return (self.ends[-1] if self.ends else 0) + len(self.buf) - self.flushed

    def flush(self) -> None:
        if self.flushed < len(self.buf):
            self._append(len(self.buf) - self.flushed, BUF, self.flushed)
            self.flushed = len(self.buf)

    def _append(self, length: int, kind: str, param) -> None:
        self.ends.append((self.ends[-1] if self.ends else 0) + length)
        self.slices.append((kind, param))

    def slice(self, length: int, kind: str, param=None) -> None:
        self.flush()
        if length:
            self._append(length, kind, param)

    def static(self, name: str) -> None:
        self.slice(len(STATICS[name]), STATIC, name)

    def u32(self, *values: int) -> None:
        self.buf += struct.pack(f">{len(values)}I", *values)

    def u64(self, *values: int) -> None:
        self.buf += struct.pack(f">{len(values)}Q", *values)

    def box(self, box_type: bytes, version_flags: int | None = None):
        return _BoxWriter(self, box_type, version_flags)


class _BoxWriter:
    """`with layout.box(b"moov"):` writes the box header, then patches its size."""

    def __init__(self, layout: _Layout, box_type: bytes, version_flags: int | None):
        self.layout, self.box_type, self.version_flags = layout, box_type, version_flags

    def __enter__(self):
        lo = self.layout
        self.size_pos, self.start = len(lo.buf), len(lo)
        lo.buf += b"\0\0\0\0" + self.box_type
        if self.version_flags is not None:
            lo.u32(self.version_flags)

    def __exit__(self, *exc):
        lo = self.layout
        struct.pack_into(">I", lo.buf, self.size_pos, len(lo) - self.start)


# ---------------------------------------------------------------------------------------
# Building

class FileBuilder:
    """Collects segments (or, for an init segment, sample entries), then `build`s.

    `kind` is "mp4" (view.mp4), "m4s" (a media segment) or "init" (an init segment).
    """

    def __init__(self, kind: str = "mp4"):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
        self.kind = kind
        # (row, start, end, start_at_key, key_state) per append
        self._appended: list[tuple[dbmod.ListRow, int, int, bool, tuple | None]] = []
        self._sample_entry_ids: list[int] = []
        self._subtitles = False
        self.content_disposition: str | None = None
        self.filename: str | None = None

    def include_timestamp_subtitle_track(self, include: bool) -> None:
        if include and self.kind != "mp4":
            raise Mp4Error("timestamp subtitles (ts=true) are only supported on .mp4 files, "
                           "not media segments or init segments")
        self._subtitles = include

    def set_filename(self, filename: str) -> None:
        """Sets `Content-Disposition: attachment; filename="..."` (part of the ETag)."""
        safe = "".join(c if " " <= c <= "~" and c not in '"\\' else "_" for c in filename)
        self.filename = safe
        self.content_disposition = f'attachment; filename="{safe}"'

    def append(self, row: dbmod.ListRow, rel_media_range_90k: tuple[int, int], *,
               start_at_key: bool = True, key_state: tuple | None = None) -> None:
        """Appends the frames of media range [start, end) of a recording (relative to its
        start); `(0, row.media_duration_90k)` is the whole recording.

        With `start_at_key` (the default) the segment begins at the key frame at or before
        `start` (§4.3): a view.mp4 skips the lead-in with an edit list, a media segment
        says how long it is in `X-Leading-Media-Duration`. `start_at_key=False` (media
        segments only, for live view's one message per frame, Moonfire's live.rs) gives
        exactly the frames starting in [start, end): `start` must be where a frame starts
        (else `Mp4Error`), the first frame need not be a key frame, and there is no
        lead-in. An empty range [t, t) gives the frame starting at t (as with key starts);
        a run's trailing zero-duration frame, starting at the recording's end, is only in
        the range [end, end), so a live stream sends it once.

        `key_state` (live view) is where reading the index may begin: see
        `recording.frames_in_range`'s `begin`.
        """
        if self.kind == "init":
            raise ValueError("an init segment has no recordings; use append_video_sample_entry")
        if not start_at_key and self.kind != "m4s":
            raise ValueError("only a media segment (m4s) may start at a non-key frame; a "
                             ".mp4 starts at a key frame and skips to its start with an edit list")
        start, end = rel_media_range_90k
        if not 0 <= start <= end <= row.media_duration_90k:
            raise Mp4Error(f"recording {_rid(row)}: media range [{start}, {end}) is outside "
                           f"[0, {row.media_duration_90k})")
        if self._appended:
            prev, _, prev_end, *_ = self._appended[-1]
            if prev.flags & dbmod.FLAG_TRAILING_ZERO and prev_end == prev.media_duration_90k:
                raise Mp4Error(f"recording {_rid(prev)} ends its run with a zero-duration "
                               f"frame, so recording {_rid(row)} can't follow it in one file; "
                               f"request them as separate files")
        self._appended.append((row, start, end, start_at_key, key_state))

    def append_video_sample_entry(self, video_sample_entry_id: int) -> None:
        if self.kind != "init":
            raise ValueError("only an init segment takes sample entries directly")
        self._sample_entry_ids.append(video_sample_entry_id)

    def build(self, db: dbmod.Database) -> "VirtualFile":
        """Lays out the file. Reads `video_index` only for partial segments."""
        with db.locked("mp4 build"):
            paths = {}
            sources = {}  # growing recordings: their bytes may be partly in memory
            for row, *_ in self._appended:
                if row.flags & dbmod.FLAG_GROWING:
                    sources[row.composite_id] = db.growing_source(row.composite_id)
                sid = row.composite_id >> 32
                if sid not in paths:
                    s = db.streams.get(sid)
                    if s is None or s.sample_file_dir_id is None:
                        raise NotFound(f"no stream {sid} with a sample file dir")
                    paths[sid] = db.dirs[s.sample_file_dir_id].path
            entries = dict(db.video_sample_entries)
        segments: list[_Segment] = []
        next_frame = 1
        for row, start, end, start_at_key, key_state in self._appended:
            path = os.path.join(paths[row.composite_id >> 32], dirmod.name_for(row.composite_id))
            seg = _Segment(row, start, end, path)
            seg.source = sources.get(row.composite_id)
            if not (start == 0 and end == row.media_duration_90k and start_at_key):
                probe_end = end
                if not start_at_key and start == end < row.media_duration_90k:
                    probe_end = start + 1  # [t, t) is the frame starting at t, as Moonfire's
                # No db lock held here: get_video_index takes it.
                fr = recording.frames_in_range(db.get_video_index(row.composite_id), start,
                                               probe_end, begin=key_state)
                seg.frame_range = fr
                seg.actual_start_90k, seg.frames, seg.key_frames = (
                    fr.actual_start_90k, fr.frames, fr.key_frames)
                seg.pos, seg.bytes = fr.pos, fr.bytes
                if not start_at_key:
                    seg.start_at_key = False
                    _exact_frames(seg)
            seg.first_frame_num = next_frame
            next_frame += seg.frames
            segments.append(seg)
        entry_ids = list(self._sample_entry_ids)
        for seg in segments:
            if seg.row.video_sample_entry_id not in entry_ids:
                entry_ids.append(seg.row.video_sample_entry_id)
        try:
            vses = [entries[i] for i in entry_ids]
        except KeyError as e:
            raise NotFound(f"no video sample entry {e.args[0]}") from None
        if not vses:
            raise Mp4Error("no recordings in the requested range" if self.kind != "init"
                           else "an init segment needs a video sample entry")
        if self.kind == "m4s" and len(vses) > 1:
            raise Mp4Error(f"a media segment can hold frames of only one video sample entry, "
                           f"but these recordings use {len(vses)} (ids "
                           f"{', '.join(map(str, entry_ids))}); request them separately")
        return _build(self, db, segments, vses)


def _build(b: FileBuilder, db: dbmod.Database, segments: list[_Segment],
           vses: list[dbmod.VideoSampleEntry]) -> "VirtualFile":
    etag = hashlib.blake2b(digest_size=32)
    etag.update(bytes([FORMAT_VERSION]))
    if b._subtitles:
        etag.update(b":ts:")
    if b.content_disposition is not None:
        etag.update(b":cd:" + b.content_disposition.encode())
    etag.update({"mp4": b"", "init": b":init:", "m4s": b":media:"}[b.kind])
    media_duration = 0
    max_end_90k = None
    n_subtitles = 0
    for seg in segments:
        # Media time after edits: a media segment can't skip its lead-in frames.
        start = seg.actual_start_90k if b.kind == "m4s" else seg.media_start_90k
        media_duration += seg.media_end_90k - start
        ws, we = seg.wall_range()
        max_end_90k = we if max_end_90k is None else max(max_end_90k, we)
        if b._subtitles:
            seg.subtitle_samples = _subtitle_count(ws, we)
            n_subtitles += seg.subtitle_samples
        etag.update(_ETAG_SEGMENT.pack(seg.row.composite_id, seg.row.start_time_90k,
                                       seg.row.open_id, seg.media_start_90k, seg.media_end_90k))
    # Segments appended with start_at_key=False hold other frames than the same ranges
    # begun at a key frame. Nothing is added otherwise, so earlier files keep their ETags.
    exact = bytes(not s.start_at_key for s in segments)
    if any(exact):
        etag.update(b":exact:" + exact)
    last_modified = 0 if max_end_90k is None else max_end_90k // TIME_UNITS_PER_SEC
    creation = last_modified + ISO14496_EPOCH_OFFSET
    f = VirtualFile(b.kind, db, segments, vses)
    f.media_duration_90k = media_duration
    # An init segment holds no recordings: it has no modification time to give.
    f.last_modified = None if max_end_90k is None else last_modified
    f.etag = f'"{etag.hexdigest()}"'
    f.filename = b.filename
    f.content_disposition = b.content_disposition
    f.content_type = 'video/mp4; codecs="' + ", ".join(v.rfc6381_codec for v in vses) + '"'
    lo = _Layout()
    if b.kind == "m4s":
        _append_moof(lo, segments)
        _append_mdat(lo, f, segments, large=False)
        # A trun's data_offset is signed 32-bit (ISO/IEC 14496-12 §8.8.8): every GOP must
        # start within 2 GiB of the moof. (The mdat size is 32-bit too.)
        if len(lo) > 0x7FFFFFFF:
            raise Mp4Error(f"a media segment of {len(lo)} bytes is over the 2 GiB limit of "
                           f"its signed 32-bit offsets; request fewer recordings")
        first = segments[0]
        prev_media, prev_runs = _prev_media_duration_and_runs(db, first.row)
        f.extra_headers = {"X-Prev-Media-Duration": str(prev_media),
                           "X-Runs": str(prev_runs + (first.row.run_offset == 0))}
        lead = first.media_start_90k - first.actual_start_90k
        if lead > 0:
            f.extra_headers["X-Leading-Media-Duration"] = str(lead)
    else:
        lo.static("init_ftyp" if b.kind == "init" else "normal_ftyp")
        _append_moov(lo, f, b, creation, n_subtitles)
        if b.kind == "mp4":
            _append_mdat(lo, f, segments, large=True)
        else:
            v = vses[0]
            aw, ah = v.width * v.pasp_h_spacing, v.height * v.pasp_v_spacing
            g = math.gcd(aw, ah) or 1
            f.extra_headers = {"X-Aspect": f"{aw // g}:{ah // g}"}
    lo.flush()
    f.buf = bytes(lo.buf)
    f.ends, f.slices = lo.ends, lo.slices
    f.length = len(lo)
    logger.debug("built %s of %d segment(s) (%d partial): %d bytes in %d slices, etag %s",
                 b.kind, len(segments), sum(not s.is_whole for s in segments), f.length,
                 len(f.slices), f.etag)
    return f


def _subtitle_count(wall_start_90k: int, wall_end_90k: int) -> int:
    """Samples for the wall seconds [start, end) touches, rounded outward; at least one,
    so a zero-length segment still shows its time."""
    first = wall_start_90k // TIME_UNITS_PER_SEC
    end = -(-wall_end_90k // TIME_UNITS_PER_SEC)
    return max(1, end - first)


def _prev_media_duration_and_runs(db: dbmod.Database, row: dbmod.ListRow) -> tuple[int, int]:
    """The recording's `prev_media_duration_90k` and `prev_runs` (not in ListRow)."""
    cid = row.composite_id
    with db.locked("mp4 prev media duration"):
        s = db.streams[cid >> 32]
        i = row.recording_id - s.cum_recordings
        if i >= 0:
            if i < len(s.uncommitted):
                r = s.uncommitted[i]
                return r.prev_media_duration_90k, r.prev_runs
        else:
            got = db.conn.execute("select prev_media_duration_90k, prev_runs from recording "
                                  "where composite_id = ?", (cid,)).fetchone()
            if got is not None:
                return got[0], got[1]
    raise NotFound(f"recording {_rid(row)} is gone")


def _append_moov(lo: _Layout, f: "VirtualFile", b: FileBuilder, creation: int,
                 n_subtitles: int) -> None:
    segs, duration = f.segments, f.media_duration_90k
    with lo.box(b"moov"):
        with lo.box(b"mvhd", 0x01000000):
            lo.u64(creation, creation)
            lo.u32(TIME_UNITS_PER_SEC)
            lo.u64(duration)
            lo.static("mvhd_tail")
            lo.u32(3 if b._subtitles else 2)          # next_track_ID
        with lo.box(b"trak"):
            _append_tkhd(lo, creation, 1, duration, max(v.width for v in f.vses),
                         max(v.height for v in f.vses), video=True)
            if b.kind == "mp4":
                _maybe_append_edts(lo, segs)
            with lo.box(b"mdia"):
                _append_mdhd(lo, creation, duration)
                lo.static("video_hdlr")
                with lo.box(b"minf"):
                    lo.static("video_minf_head")
                    with lo.box(b"stbl"):
                        _append_video_stbl(lo, f, b.kind)
        if b._subtitles:
            with lo.box(b"trak"):
                _append_tkhd(lo, creation, 2, duration, 0, 0, video=False)
                with lo.box(b"mdia"):
                    _append_mdhd(lo, creation, duration)
                    lo.static("subtitle_hdlr")
                    with lo.box(b"minf"):
                        lo.static("subtitle_minf_head")
                        with lo.box(b"stbl"):
                            lo.static("subtitle_stsd")
                            _append_subtitle_stts(lo, segs)
                            with lo.box(b"stsc", 0):
                                lo.u32(1, 1, n_subtitles, 1)   # one chunk holds them all
                            with lo.box(b"stsz", 0):
                                lo.u32(SUBTITLE_SAMPLE_BYTES, n_subtitles)
                            with lo.box(b"co64", 0):
                                lo.u32(1)
                                f.subtitle_co64_pos = len(lo.buf)
                                lo.u64(0)                      # patched by _append_mdat
        if b.kind == "init":
            with lo.box(b"mvex"):
                with lo.box(b"trex", 0):
                    # track 1, sample description 1, default duration 0, size 0, flags
                    lo.u32(1, 1, 0, 0, NON_KEY_SAMPLE_FLAGS)


def _append_tkhd(lo: _Layout, creation: int, track_id: int, duration: int, width: int,
                 height: int, *, video: bool) -> None:
    # flags 7: track_enabled | track_in_movie | track_in_preview. Version 0 holds the
    # times and duration in 32 bits; the video track uses it while they fit (Moonfire
    # always does, so its duration wraps past 13 h 15 min).
    if video and duration <= 0xFFFFFFFF:
        with lo.box(b"tkhd", 0x00000007):
            c = creation & 0xFFFFFFFF  # wraps in 2040, as Moonfire's does
            lo.u32(c, c, track_id, 0, duration)
            lo.static("tkhd_middle")
            lo.u32(width << 16, height << 16)
        return
    with lo.box(b"tkhd", 0x01000007):
        lo.u64(creation, creation)
        lo.u32(track_id, 0)
        lo.u64(duration)
        lo.static("tkhd_middle")
        lo.u32(width << 16, height << 16)


def _append_mdhd(lo: _Layout, creation: int, duration: int) -> None:
    with lo.box(b"mdhd", 0x01000000):
        lo.u64(creation, creation)
        lo.u32(TIME_UNITS_PER_SEC)
        lo.u64(duration)
        lo.u32(0x55C40000)  # language "und" (ISO-639-2/T packed in 5-bit letters), pre_defined


def _maybe_append_edts(lo: _Layout, segs: list[_Segment]) -> None:
    """An edit list (§8.6.6) skipping each segment's lead-in frames (reference §4.3)."""
    entries: list[list[int]] = []   # [segment_duration, media_time]
    cur = 0                         # media time in the track's own timeline
    for seg in segs:
        skip = seg.media_start_90k - seg.actual_start_90k
        keep = seg.media_end_90k - seg.media_start_90k
        cur += skip
        if entries and entries[-1][0] + entries[-1][1] == cur:
            entries[-1][0] += keep  # contiguous with the previous edit
        else:
            if entries and entries[-1][0] == 0:
                entries.pop()       # an empty edit is useless; replace it
            entries.append([keep, cur])
        cur += keep
    if len(entries) == 1 and entries[0][1] == 0:
        return                      # the implicit one-to-one mapping
    with lo.box(b"edts"):
        with lo.box(b"elst", 0x01000000):  # version 1: 64-bit times
            lo.u32(len(entries))
            for keep, media_time in entries:
                lo.u64(keep, media_time)
                lo.u32(0x00010000)         # media_rate 1.0


def _append_video_stbl(lo: _Layout, f: "VirtualFile", kind: str) -> None:
    segs = f.segments
    frames = sum(s.frames for s in segs)
    with lo.box(b"stsd", 0):
        lo.u32(len(f.vses))
        for i, v in enumerate(f.vses):
            lo.slice(len(v.data), SAMPLE_ENTRY, i)
    with lo.box(b"stts", 0):
        lo.u32(frames)
        for i, s in enumerate(segs):
            lo.slice(8 * s.frames, STTS, i)
    with lo.box(b"stsc", 0):
        lo.u32(len(segs))
        index = {v.id: i + 1 for i, v in enumerate(f.vses)}
        for i, s in enumerate(segs):
            lo.u32(i + 1, s.frames, index[s.row.video_sample_entry_id])
    with lo.box(b"stsz", 0):
        lo.u32(0, frames)
        for i, s in enumerate(segs):
            lo.slice(4 * s.frames, STSZ, i)
    with lo.box(b"co64", 0):
        lo.u32(len(segs))
        lo.slice(8 * len(segs), CO64)
    if kind != "init":
        with lo.box(b"stss", 0):
            lo.u32(sum(s.key_frames for s in segs))
            for i, s in enumerate(segs):
                lo.slice(4 * s.key_frames, STSS, i)


def _append_subtitle_stts(lo: _Layout, segs: list[_Segment]) -> None:
    """Per segment: the first (partial) second, the whole seconds (each one wall second
    rescaled to media time, so rounding error accumulates to at most ~3 ms over a
    recording, as in Moonfire), the last partial second taking the remainder."""
    with lo.box(b"stts", 0):
        count_pos = len(lo.buf)
        lo.u32(0)
        entries = 0
        for seg in segs:
            total = seg.media_end_90k - seg.media_start_90k
            n = seg.subtitle_samples
            if n == 1:
                lo.u32(1, total)
                entries += 1
                continue
            ws, _ = seg.wall_range()
            first = seg.media(TIME_UNITS_PER_SEC - ws % TIME_UNITS_PER_SEC)
            lo.u32(1, first)
            one = seg.media(TIME_UNITS_PER_SEC)
            if n > 2:
                lo.u32(n - 2, one)
            lo.u32(1, total - first - (n - 2) * one)  # >= 1: see _subtitle_count's range
            entries += 3 if n > 2 else 2
        struct.pack_into(">I", lo.buf, count_pos, entries)


def _append_moof(lo: _Layout, segs: list[_Segment]) -> None:
    with lo.box(b"moof"):
        with lo.box(b"mfhd", 0):
            lo.u32(1)                        # sequence_number
        with lo.box(b"traf"):
            with lo.box(b"tfhd", 0x00020000):  # default-base-is-moof
                lo.u32(1)                    # track_ID
            # tfdt (§8.8.12) must precede the truns, or Safari fails.
            with lo.box(b"tfdt", 0):
                lo.u32(0)                    # baseMediaDecodeTime; clients use timestampOffset
            for i, s in enumerate(segs):
                lo.slice(s.truns_len(), TRUNS, i)


def _append_mdat(lo: _Layout, f: "VirtualFile", segs: list[_Segment], *, large: bool) -> None:
    """mdat (§8.1.1). view.mp4 uses the 64-bit size (QuickTime rejects size 0, "to the end
    of the file"); media segments the 32-bit one (Safari 14 rejects the large form)."""
    header_pos = len(lo.buf)
    if large:
        lo.buf += b"\x00\x00\x00\x01mdat" + bytes(8)
    else:
        lo.buf += b"\x00\x00\x00\x00mdat"
    lo.flush()
    data_start = pos = len(lo)
    for i, s in enumerate(segs):
        s.data_offset = pos
        pos += s.bytes
        lo.slice(s.bytes, VIDEO_DATA, i)
    if f.subtitle_co64_pos is not None:
        struct.pack_into(">Q", lo.buf, f.subtitle_co64_pos, len(lo))
        for i, s in enumerate(segs):
            lo.slice(s.subtitle_samples * SUBTITLE_SAMPLE_BYTES, SUBTITLE_DATA, i)
    size = len(lo) - data_start
    if large:
        struct.pack_into(">Q", lo.buf, header_pos + 8, 16 + size)
    else:
        struct.pack_into(">I", lo.buf, header_pos, min(8 + size, 0xFFFFFFFF))


def subtitle_text(unix_sec: int, zone: datetime.tzinfo | None = None) -> str:
    """`%Y-%m-%d %H:%M:%S %z` in the server's zone; the offset is cut to whole minutes
    so the text is always 25 characters (the sample size is fixed)."""
    dt = datetime.datetime.fromtimestamp(unix_sec, zone or recording.server_zone())
    off = dt.utcoffset() // datetime.timedelta(minutes=1)
    sign, off = ("-", -off) if off < 0 else ("+", off)
    return f"{dt:%Y-%m-%d %H:%M:%S} {sign}{off // 60:02d}{off % 60:02d}"


# ---------------------------------------------------------------------------------------
# The file

class VirtualFile:
    """A built file: its headers, and its bytes on demand.

    Attributes: `kind`, `length` (Content-Length), `etag` (quoted), `last_modified`
    (Unix seconds), `content_type`, `filename`, `content_disposition` (the last two and
    `last_modified` are None for init segments), `extra_headers` (the X-* headers), `media_duration_90k`. A live segment
    (`build_live_segment`) also sets `recording_start_90k`, `recording_id_text`
    ("<open id>.<recording id>"), `media_range_90k` and `video_sample_entry_id`; they
    are None otherwise.
    """

    def __init__(self, kind: str, db: dbmod.Database, segments: list[_Segment],
                 vses: list[dbmod.VideoSampleEntry]):
        self.kind = kind
        self.db = db
        self.segments = segments
        self.vses = vses
        self.length = 0
        self.etag = ""
        self.last_modified: int | None = 0
        self.content_type = ""
        self.filename: str | None = None
        self.content_disposition: str | None = None
        self.extra_headers: dict[str, str] = {}
        self.media_duration_90k = 0
        self.recording_start_90k: int | None = None    # live segments only
        self.recording_id_text: str | None = None
        self.media_range_90k: tuple[int, int] | None = None
        self.video_sample_entry_id: int | None = None
        self.subtitle_co64_pos: int | None = None
        self.buf = b""
        self.ends: list[int] = []
        self.slices: list[tuple[str, object]] = []

    def headers(self) -> dict[str, str]:
        """The entity headers web.py sends (it adds Content-Length/Range and caching)."""
        h = {"Content-Type": self.content_type, "ETag": self.etag}
        if self.last_modified is not None:
            h["Last-Modified"] = email.utils.formatdate(self.last_modified, usegmt=True)
        if self.content_disposition is not None:
            h["Content-Disposition"] = self.content_disposition
        h.update(self.extra_headers)
        return h

    def chunks(self, start: int = 0, end: int | None = None) -> Iterator[bytes | FileChunk]:
        """The bytes [start, end) in order: generated ones as `bytes`, sample data as
        `FileChunk`s for the caller to read or `os.sendfile`. Tables are built (and
        indexes read) as the range first touches them."""
        end = self.length if end is None else end
        if not 0 <= start <= end <= self.length:
            raise ValueError(f"range [{start}, {end}) outside [0, {self.length})")
        i = bisect_right(self.ends, start)
        while start < end:
            slice_start = self.ends[i - 1] if i else 0
            slice_end = self.ends[i]
            lo, hi = start - slice_start, min(end, slice_end) - slice_start
            yield self._get(i, lo, hi)
            start = slice_start + hi
            i += 1

    def read(self, start: int = 0, end: int | None = None) -> bytes:
        """The bytes [start, end), sample data included (for tests and small reads)."""
        return b"".join(c.read() if isinstance(c, FileChunk) else c
                        for c in self.chunks(start, end))

    def _get(self, i: int, lo: int, hi: int) -> bytes | FileChunk:
        kind, p = self.slices[i]
        if kind == BUF:
            return self.buf[p + lo:p + hi]
        if kind == VIDEO_DATA:
            s = self.segments[p]
            return FileChunk(s.path, s.pos + lo, hi - lo, s.source)
        if kind == STATIC:
            return STATICS[p][lo:hi]
        if kind == SAMPLE_ENTRY:
            return self.vses[p].data[lo:hi]
        if kind in (STTS, STSZ, STSS):
            t = self.segments[p].get_tables(self.db)
            return t[(STTS, STSZ, STSS).index(kind)][lo:hi]
        if kind == CO64:
            return struct.pack(f">{len(self.segments)}Q",
                               *(s.data_offset for s in self.segments))[lo:hi]
        if kind == TRUNS:
            return self.segments[p].get_truns(self.db)[lo:hi]
        if kind == SUBTITLE_DATA:
            return self._subtitle_data(self.segments[p])[lo:hi]
        raise AssertionError(kind)

    def _subtitle_data(self, seg: _Segment) -> bytes:
        ws, _ = seg.wall_range()
        first = ws // TIME_UNITS_PER_SEC
        zone = recording.server_zone()
        out = bytearray()
        for sec in range(first, first + seg.subtitle_samples):
            text = subtitle_text(sec, zone).encode()
            assert len(text) == SUBTITLE_LENGTH, text
            out += struct.pack(">H", SUBTITLE_LENGTH) + text
        return bytes(out)

    def slice_table_text(self) -> str:
        """The `.txt` variant: headers, then every slice and segment."""
        lines = [f"{self.kind} file, {self.length} bytes"]
        lines += [f"{k}: {v}" for k, v in self.headers().items()]
        lines.append("")
        lines.append(f"{'start':>14} {'end':>14}  slice")
        prev = 0
        for end, (kind, p) in zip(self.ends, self.slices):
            what = f"{kind} {p}" if p is not None else kind
            if kind == BUF:
                what = f"buf [{p}, {p + end - prev})"
            elif kind == VIDEO_DATA:
                s = self.segments[p]
                # The file's name, not its path: callers needn't learn the server's layout.
                what = (f"video_data {p}: {os.path.basename(s.path)} "
                        f"[{s.pos}, {s.pos + s.bytes})")
            lines.append(f"{prev:>14} {end:>14}  {what}")
            prev = end
        lines.append("")
        lines.append("segments:")
        for i, s in enumerate(self.segments):
            lines.append(
                f"{i:>5} recording {_rid(s.row)} open {s.row.open_id} start "
                f"{recording.format_time(s.row.start_time_90k)} media "
                f"[{s.media_start_90k}, {s.media_end_90k}) of {s.row.media_duration_90k}, "
                f"actual start {s.actual_start_90k}, frames {s.first_frame_num}.."
                f"{s.first_frame_num + s.frames - 1} ({s.key_frames} key), "
                f"{'whole' if s.is_whole else 'partial'}")
        return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------
# Requests

def build_view(db: dbmod.Database, stream_id: int, s_values: list[str], *, ts: bool = False,
               kind: str = "mp4") -> VirtualFile:
    """`view.mp4` (kind "mp4") or `view.m4s` ("m4s") of a stream for `s=` values (§5.2).

    Raises `NotFound` for a missing stream or recording or an open id mismatch,
    `Mp4Error` for a bad `s=`, an end beyond the recordings, or a run's trailing zero
    followed by more recordings.
    """
    if kind not in ("mp4", "m4s"):
        raise ValueError(f"kind must be mp4 or m4s, not {kind!r}")
    specs = parse_segments(s_values)
    with db.locked("mp4 view"):
        stream = db.streams.get(stream_id)
        if stream is None:
            raise NotFound(f"no stream {stream_id}")
        camera_name, stream_type = db.cameras[stream.camera_id].short_name, stream.type
    builder = FileBuilder(kind)
    builder.include_timestamp_subtitle_track(ts)
    first_start_90k = None
    for spec in specs:
        for row, wall_start, wall_end in _resolve(db, stream_id, spec):
            if first_start_90k is None:
                first_start_90k = row.start_time_90k + wall_start
            wd, md = row.wall_duration_90k, row.media_duration_90k
            builder.append(row, (rescale(wall_start, wd, md), rescale(wall_end, wd, md)))
    if first_start_90k is not None:
        t = datetime.datetime.fromtimestamp(first_start_90k // TIME_UNITS_PER_SEC,
                                            recording.server_zone())
        builder.set_filename(f"{t:%Y%m%d%H%M%S}-{camera_name}-{stream_type}.{kind}")
    return builder.build(db)


def _resolve(db: dbmod.Database, stream_id: int, spec: SegmentSpec):
    """The (row, wall start, wall end) pieces of one `s=` value, offsets relative to each
    recording. Wall ranges follow Moonfire's view.rs, including a zero-length piece for
    a start exactly at a recording's end."""
    rows = db.list_recordings_by_id(stream_id, spec.start_id, spec.end_id + 1)
    expected = spec.start_id
    for r in rows:
        if r.recording_id != expected:
            break
        if spec.open_id is not None and r.open_id != spec.open_id:
            raise NotFound(f"recording {stream_id}/{r.recording_id} has open id {r.open_id}, "
                           f"not the requested {spec.open_id}")
        expected += 1
    if expected != spec.end_id + 1:
        raise NotFound(f"no recording {stream_id}/{expected}")
    start, end = spec.rel_start_90k, spec.rel_end_90k
    pieces = []
    cur = 0
    for r in rows:
        wd = r.wall_duration_90k
        if start <= cur + wd and (end is None or cur < end):
            pieces.append((r, max(0, start - cur), wd if end is None else min(wd, end - cur)))
        cur += wd
    if not pieces and rows and start == end == 0:
        pieces.append((rows[0], 0, 0))  # [0, 0): the first frame, as [t, t) is elsewhere
    if end is not None and end > cur:
        raise Mp4Error(f"s={_spec_text(spec)}: end time {end} is beyond the recordings' "
                       f"{cur} ticks")
    if len(pieces) > 1 and pieces[0][1] == pieces[0][0].wall_duration_90k > 0:
        pieces.pop(0)  # a zero-length piece at the end of a recording, before others
    return pieces


def _spec_text(spec: SegmentSpec) -> str:
    if spec.text:
        return spec.text
    s = str(spec.start_id)
    if spec.end_id != spec.start_id:
        s += f"-{spec.end_id}"
    if spec.open_id is not None:
        s += f"@{spec.open_id}"
    if spec.rel_start_90k or spec.rel_end_90k is not None:
        s += f".{spec.rel_start_90k or ''}-{'' if spec.rel_end_90k is None else spec.rel_end_90k}"
    return s


def build_init(db: dbmod.Database, video_sample_entry_id: int) -> VirtualFile:
    """`/api/init/<id>.mp4` (§4.5), with `X-Aspect`."""
    b = FileBuilder("init")
    b.append_video_sample_entry(video_sample_entry_id)
    return b.build(db)


def build_live_segment(db: dbmod.Database, stream_id: int, composite_id: int,
                       media_start_90k: int, media_end_90k: int,
                       start_at_key: bool = False, key_state: tuple | None = None) -> VirtualFile:
    """A media segment (kind "m4s") for live view (reference §5.3): the frames of media
    range [start, end) of one recording, committed or still growing, as db.py's
    `frame_indexed` hook reports them (offsets relative to the recording's start).

    `start_at_key=False` (one WebSocket message per frame) gives exactly the frames
    starting in the range, the first maybe a non-key frame; `start` must be a frame's
    start. `start_at_key=True` (a connection's first message) begins at the key frame at
    or before `start` and adds `X-Leading-Media-Duration` when that is earlier. See
    `FileBuilder.append`. `key_state`, the recording's `live_key_state` as
    `frame_indexed` reports it, saves walking the index from frame 0 for every frame.

    The result's `extra_headers`, in the order of a live message's header block
    (§5.3; send `Content-Type` first, then these):
    - `X-Recording-Start`: the recording's start, wall 90 kHz ticks since the epoch;
    - `X-Recording-Id`: `<open id>.<recording id>`;
    - `X-Media-Time-Range`: `<start>-<end>`, the media range asked for;
    - `X-Prev-Media-Duration`, `X-Runs` (as for view.m4s, §4.6),
      `X-Leading-Media-Duration` (only when begun at an earlier key frame);
    - `X-Video-Sample-Entry-Id`.
    `headers()` has all of them plus Content-Type (with codecs), ETag and Last-Modified.
    The same values are attributes: `recording_start_90k`, `recording_id_text`,
    `media_range_90k`, `video_sample_entry_id`. There is no Content-Disposition.

    Holds no lock while reading the index; takes the database lock briefly to list the
    row. Raises `NotFound` for an unknown stream or recording (e.g. deleted by
    retention meanwhile), `Mp4Error` for a range outside the recording or a
    `start_at_key=False` start that isn't a frame's.
    """
    if composite_id >> 32 != stream_id:
        raise ValueError(f"composite id {composite_id:#x} is not of stream {stream_id}")
    recording_id = composite_id & 0xFFFFFFFF
    with db.locked("mp4 live segment"):
        if stream_id not in db.streams:
            raise NotFound(f"no stream {stream_id}")
    rows = db.list_recordings_by_id(stream_id, recording_id, recording_id + 1)
    if not rows:
        raise NotFound(f"no recording {stream_id}/{recording_id}")
    row = rows[0]
    b = FileBuilder("m4s")
    b.append(row, (media_start_90k, media_end_90k), start_at_key=start_at_key,
             key_state=key_state)
    f = b.build(db)
    f.recording_start_90k = row.start_time_90k
    f.recording_id_text = f"{row.open_id}.{recording_id}"
    f.media_range_90k = (media_start_90k, media_end_90k)
    f.video_sample_entry_id = row.video_sample_entry_id
    f.extra_headers = {
        "X-Recording-Start": str(row.start_time_90k),
        "X-Recording-Id": f.recording_id_text,
        "X-Media-Time-Range": f"{media_start_90k}-{media_end_90k}",
        **f.extra_headers,  # X-Prev-Media-Duration, X-Runs[, X-Leading-Media-Duration]
        "X-Video-Sample-Entry-Id": str(row.video_sample_entry_id)}
    return f
