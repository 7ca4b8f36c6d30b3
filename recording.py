"""Recordings as numbers: 90 kHz time, the sample index codec, and the frames of a range.

Owns
- **90 kHz time.** Every timestamp is an integer count of 1/90,000 s ticks since
  1970-01-01T00:00:00Z, without leap seconds. Humans read and write
  `YYYY-mm-ddTHH:MM:SS:FFFFF±hh:mm`, where FFFFF is the remainder in *ticks*
  (0..89999, so `:45000` is half a second), not a decimal fraction. Zone-less input
  is read in the server's zone (`server_zone`: TZ, /etc/timezone, /etc/localtime, UTC;
  see `resolve_zone_name`).
- **The `video_index` format** (Moonfire NVR's, reference §3.2), stored per recording
  in `recording_playback.video_index`. Per frame, in decode order, two unsigned
  protobuf-style LEB128 varints (7 bits per byte, least significant group first,
  high bit = "more bytes follow", at most 5 bytes for 32 bits):

      varint1 = (zigzag32(duration_90k - prev_duration_90k) << 1) | is_key
      varint2 = zigzag32(bytes - prev_bytes_of_same_kind)
      zigzag32(i) = (i << 1) ^ (i >> 31)          # 0,-1,1,-2,2 -> 0,1,2,3,4

  State starts at prev_duration = prev_bytes_key = prev_bytes_nonkey = 0; after each
  frame prev_duration = its duration and the prev_bytes of its kind = its size.
  Worked example (frames as duration, key, bytes), `test_encode_example`:

      frame  dur key bytes | dur delta -> varint1      | bytes delta       -> varint2
        0     10   1  1000 | +10 -> zz 20 -> 41 = 29   | +1000 (key)       -> zz 2000 = d0 0f
        1      9   0    10 |  -1 -> zz  1 ->  2 = 02   |   +10 (non-key)   -> zz 20 = 14
        2     11   0    15 |  +2 -> zz  4 ->  8 = 08   |    +5             -> zz 10 = 0a
        3     10   0    12 |  -1 -> zz  1 ->  2 = 02   |    -3             -> zz  5 = 05
        4     10   1  1050 |   0 -> zz  0 ->  1 = 01   |   +50 (vs 1000)   -> zz 100 = 64
      video_index = 29 d0 0f 02 14 08 0a 02 05 01 64  (11 bytes; about 2 per frame)

  A frame's byte offset in the sample file is the sum of the sizes before it; its media
  start is the sum of the durations before it. Nothing else is stored per frame.
- **Frame iteration**: `iter_index` (Frame records), `decode_summary` (validation and
  totals without per-frame objects), `frames_in_range` (reference §4.3), and
  `decode_columns` (every frame's duration and size into arrays: mp4.py's sample tables).

Invariants a valid index satisfies (`CorruptIndex` otherwise): at least one frame; the
first frame is a key frame; durations are >= 0 and only the last frame may have
duration 0 (the "trailing zero" a run's end writes); sizes are > 0; every varint is
complete and fits 32 bits. The encoder refuses input that would break them.

Neighbours: writer.py builds indexes with `SampleIndexEncoder` while recording; db.py
stores them and the derived totals (video_samples, video_sync_samples,
media_duration_90k, sample_file_bytes); mp4.py turns `frames_in_range` into boxes;
`nvr.py check` (check.py) cross-checks rows with `decode_summary`; clock.py is the only
reader of the system clocks (this module only converts).
"""

from __future__ import annotations

import datetime as _dt
from array import array
import itertools
import logging
import os
import re
import zoneinfo
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

TIME_UNITS_PER_SEC = 90_000
MAX_RECORDING_WALL_DURATION_90K = 5 * 60 * TIME_UNITS_PER_SEC

# Largest frame duration the encoder accepts: keeps |duration delta| < 2**30 so that
# zigzag32(delta) << 1 still fits the 32-bit varint1 (Moonfire's u32 would wrap).
MAX_FRAME_DURATION_90K = 2**30 - 1
MAX_FRAME_BYTES = 2**31 - 1  # sizes are i32 in Moonfire's index and rows


# ---------------------------------------------------------------------------------------
# 90 kHz time

def to_90k_from_ns(ns: int) -> int:
    """Nanoseconds (clock.py's unit) to 90 kHz ticks, rounding down."""
    return ns * 9 // 100_000


_zone: tuple[str, _dt.tzinfo] | None = None  # cache; a racing re-resolve is harmless


def _load_zone(name: str) -> _dt.tzinfo:
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        if name == "UTC":  # a box without tzdata still has UTC
            return _dt.timezone.utc
        raise ValueError(f"unknown time zone {name!r}") from None


def _name_from_path(path: str) -> str | None:
    """`/usr/share/zoneinfo/America/New_York` (or a symlink to it) -> `America/New_York`."""
    real = os.path.realpath(path)
    if "zoneinfo/" not in real:
        return None
    name = real.rsplit("zoneinfo/", 1)[1]
    if name.startswith(("posix/", "right/")):  # Debian's alternate trees, same names
        name = name.split("/", 1)[1]
    return name


def _is_zone(name: str | None) -> bool:
    try:
        return bool(name) and _load_zone(name) is not None
    except ValueError:
        return False


# Where a copied /etc/localtime is looked for: zoneinfo's own search path, which
# includes /usr/share/zoneinfo unless PYTHONTZPATH says otherwise.
_ZONEINFO_DIRS = (*zoneinfo.TZPATH, "/usr/share/zoneinfo")

# Names in a zoneinfo tree that are not zones of their own (`localtime` links back to
# /etc/localtime on Debian; `posixrules` is a copy of America/New_York for POSIX TZ
# strings without rules).
_NOT_ZONE_NAMES = frozenset({"localtime", "posixrules"})

# First components of tzdata's Area/Location names (the backward-compatible names are
# US/*, Canada/*, GB, Navajo, ...).
_AREAS = frozenset({"Africa", "America", "Antarctica", "Arctic", "Asia", "Atlantic",
                    "Australia", "Europe", "Indian", "Pacific", "Etc"})


def _canonical_zone_names(zone_dir: str) -> set[str]:
    """The zones (not links) a zoneinfo tree declares: `Z` lines of tzdata.zi, else the
    third column of zone1970.tab; empty if it ships neither."""
    try:
        with open(os.path.join(zone_dir, "tzdata.zi"), encoding="utf-8") as f:
            return {line.split()[1] for line in f if line.startswith("Z ")}
    except (OSError, UnicodeDecodeError, IndexError):
        pass
    try:
        with open(os.path.join(zone_dir, "zone1970.tab"), encoding="utf-8") as f:
            return {cols[2] for cols in (line.split("\t") for line in f)
                    if len(cols) >= 3 and not cols[0].startswith("#")}
    except (OSError, UnicodeDecodeError):
        return set()


def _zone_of_copy(data: bytes, zone_dirs: Iterable[str]) -> tuple[str, str] | None:
    """The zone whose TZif file has exactly `data`'s bytes: (name, path) or None.

    A copied /etc/localtime carries no name, so every file of the same size under
    `zone_dirs` is compared (sizes first: only a handful are read). Several names may
    match (links, posix/ and right/ copies); the pick is deterministic: a zone tzdata
    declares, then a regular file over a symlink, then an Area/Location name, then
    the alphabetically first.
    """
    if not data.startswith(b"TZif"):  # RFC 8536 §3.1 magic
        return None
    best: tuple[tuple, str, str] | None = None
    seen: set[str] = set()
    for zone_dir in zone_dirs:
        real_dir = os.path.realpath(zone_dir)
        if real_dir in seen or not os.path.isdir(real_dir):
            continue
        seen.add(real_dir)
        canonical = _canonical_zone_names(real_dir)
        # followlinks=False: Debian's posix/ is a symlink to `.`; its files are the same.
        for dirpath, dirnames, filenames in os.walk(real_dir):
            dirnames.sort()
            for fn in filenames:
                path = os.path.join(dirpath, fn)
                rel = os.path.relpath(path, real_dir)
                name = rel.split("/", 1)[1] if rel.startswith(("posix/", "right/")) else rel
                if name in _NOT_ZONE_NAMES:
                    continue
                try:
                    if os.stat(path).st_size != len(data):
                        continue
                    with open(path, "rb") as f:
                        if f.read() != data:
                            continue
                except OSError:
                    continue
                if not _is_zone(name):
                    continue
                area = name.split("/", 1)[0] if "/" in name else None
                key = (name not in canonical, os.path.islink(path), area not in _AREAS, name)
                if best is None or key < best[0]:
                    best = (key, name, path)
    return None if best is None else (best[1], best[2])


def resolve_zone_name(environ: Mapping[str, str], root: str = "/") -> str:
    """The server's IANA zone name, uncached: TZ, /etc/timezone, /etc/localtime, UTC.

    `root` lets tests point at a fake /etc and zoneinfo tree. A set TZ must name a zone
    (a leading `:` is allowed, as is a path into a zoneinfo tree); anything else is an
    error rather than a silent fall-back, because day boundaries and displayed times
    depend on it. /etc/localtime is a symlink into a zoneinfo tree (named by its target)
    or a copy of a zone file (Docker's `-v /etc/localtime:/etc/localtime:ro`, images
    that copy it), named by the file with the same bytes under the zoneinfo
    directories; a copy that matches none is an error too. Without TZ, /etc/timezone
    and /etc/localtime (or with a dangling link, which is logged) the zone is UTC, as
    for the C library.
    """
    tz = environ.get("TZ", "").removeprefix(":")
    if tz:
        name = _name_from_path(tz) if tz.startswith("/") else tz
        if not _is_zone(name):
            raise ValueError(f"TZ={environ['TZ']!r} is not an IANA time zone; set TZ to an "
                             f"IANA name such as America/New_York, or unset it")
        logger.debug("time zone %s, from TZ", name)
        return name
    path = os.path.join(root, "etc/timezone")
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            name = f.read().strip()
        if _is_zone(name):
            logger.debug("time zone %s, from %s", name, path)
            return name
        logger.warning("ignoring %s: %r is not an IANA zone name", path, name)
    except FileNotFoundError:
        pass
    path = os.path.join(root, "etc/localtime")
    if os.path.islink(path):
        name = _name_from_path(path)
        if _is_zone(name):
            logger.debug("time zone %s, from %s (a link to %s)", name, path,
                        os.path.realpath(path))
            return name
        if not os.path.isfile(path):
            logger.warning("ignoring %s: it does not link to a zoneinfo file", path)
    if os.path.isfile(path):  # a copy, or a link to a zone file outside a zoneinfo tree
        zone_dirs = [os.path.join(root, d.lstrip("/")) for d in _ZONEINFO_DIRS]
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ValueError(f"cannot read {path} ({e.strerror}); set TZ to the server's "
                             f"IANA time zone, such as TZ=America/New_York") from None
        found = _zone_of_copy(data, zone_dirs)
        if found is None:
            raise ValueError(f"{path} is not a link into a zoneinfo directory and is a "
                             f"copy of no zone file under "
                             f"{', '.join(dict.fromkeys(zone_dirs))}; set TZ to the server's "
                             f"IANA time zone, such as TZ=America/New_York")
        logger.debug("time zone %s, from %s (the same bytes as %s; set TZ to name it "
                    "otherwise)", found[0], path, found[1])
        return found[0]
    logger.debug("time zone UTC: no TZ, %s or %s", os.path.join(root, "etc/timezone"), path)
    return "UTC"


def set_server_zone(name: str | None) -> None:
    """Sets the server zone (tests), or with None forgets it so the next use re-resolves."""
    global _zone
    _zone = None if name is None else (name, _load_zone(name))


def _current_zone() -> tuple[str, _dt.tzinfo]:
    global _zone
    z = _zone
    if z is None:
        name = resolve_zone_name(os.environ)
        z = _zone = (name, _load_zone(name))
    return z


def server_zone() -> _dt.tzinfo:
    """The server's zone: used for zone-less input, displayed times and day summaries."""
    return _current_zone()[1]


def server_zone_name() -> str:
    """The server zone's IANA name, e.g. for logs and the API's `timeZoneName`."""
    return _current_zone()[0]


def _as_zone(zone: _dt.tzinfo | str | None) -> _dt.tzinfo:
    if zone is None:
        return server_zone()
    return _load_zone(zone) if isinstance(zone, str) else zone


_INT_RE = re.compile(r"-?[0-9]+")
_TIME_RE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})"
    r"(?:T([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?::([0-9]{1,5}))?)?)?"
    r"(Z|[+-][0-9]{2}:[0-9]{2})?")
_TIME_SYNTAX = "an integer or YYYY-mm-dd[THH:MM[:SS[:FFFFF]]][Z|±HH:MM]"
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
_SEC = _dt.timedelta(seconds=1)


def parse_time(s: str, zone: _dt.tzinfo | str | None = None) -> int:
    """Parses 90 kHz ticks since the epoch, or a time string, to 90 kHz ticks.

    Without an offset, the time is local to `zone` (default: the server zone). A local
    time that occurs twice (DST ends) or never (DST starts) follows datetime's fold=0:
    the earlier of the two instants, and for a gap the offset in effect before it
    (America/New_York 2024-03-10T02:30 reads as 03:30 EDT = 07:30Z).
    """
    if _INT_RE.fullmatch(s):
        return int(s)
    m = _TIME_RE.match(s)
    if m is None:
        raise ValueError(f"invalid time {s!r}: expected {_TIME_SYNTAX}")
    if m.end() != len(s):
        raise ValueError(f"invalid time {s!r}: unexpected {s[m.end():]!r} after the time; "
                         f"expected {_TIME_SYNTAX}")
    y, mo, d, hh, mi, ss, ticks, off = m.groups()
    ticks = int(ticks or 0)
    if ticks >= TIME_UNITS_PER_SEC:
        raise ValueError(f"invalid time {s!r}: {ticks} ticks; the part after the seconds "
                         f"counts 90 kHz ticks and must be below 90000")
    tz = _as_zone(zone) if off is None else _dt.timezone.utc
    try:
        local = _dt.datetime(int(y), int(mo), int(d), int(hh or 0), int(mi or 0), int(ss or 0))
        if off and off != "Z":
            oh, om = int(off[1:3]), int(off[4:6])
            if om >= 60:
                raise ValueError(f"offset minutes {om} must be below 60")
            sign = -1 if off[0] == "-" else 1
            tz = _dt.timezone(sign * _dt.timedelta(hours=oh, minutes=om))
        secs = (local.replace(tzinfo=tz) - _EPOCH) // _SEC
    except (ValueError, OverflowError) as e:
        raise ValueError(f"invalid time {s!r}: {e}") from None
    return secs * TIME_UNITS_PER_SEC + ticks


def format_time(t: int, zone: _dt.tzinfo | str | None = None) -> str:
    """90 kHz ticks -> `YYYY-mm-ddTHH:MM:SS:FFFFF±hh:mm` in `zone` (default: server's).

    FFFFF is `t mod 90000` (floor), so negative times format correctly. Offsets with
    seconds (pre-1900 local mean time) are shown truncated to minutes.
    """
    secs, ticks = divmod(t, TIME_UNITS_PER_SEC)
    tz = _as_zone(zone)
    try:
        dt = (_EPOCH + _dt.timedelta(seconds=secs)).astimezone(tz)
    except (OverflowError, ValueError):
        raise ValueError(f"time {t} is outside the years 1..9999") from None
    off = dt.utcoffset() // _SEC
    sign, off = ("-", -off) if off < 0 else ("+", off)
    return (f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T{dt.hour:02d}:{dt.minute:02d}:"
            f"{dt.second:02d}:{ticks:05d}{sign}{off // 3600:02d}:{off // 60 % 60:02d}")


def format_duration(d: int) -> str:
    """90 kHz ticks -> `1 day 2 hours 3 minutes 4 seconds` (whole seconds, zero parts
    skipped, `0 seconds` for under one second) for logs."""
    if d < 0:
        return "-" + format_duration(-d)
    secs = d // TIME_UNITS_PER_SEC
    parts = []
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        n, secs = divmod(secs, size)
        if n:
            parts.append(f"{n} {unit}{'' if n == 1 else 's'}")
    return " ".join(parts) or "0 seconds"


# ---------------------------------------------------------------------------------------
# The sample index codec (reference §3.2; layout and example in the module docstring)

class CorruptIndex(ValueError):
    """A `video_index` that breaks the format or its invariants."""


def _zigzag32(i: int) -> int:
    return ((i << 1) ^ (i >> 31)) & 0xFFFFFFFF


def append_varint(buf: bytearray, v: int) -> None:
    """Appends `v` as an unsigned LEB128 varint (the index's and signals.py's)."""
    while v >= 0x80:
        buf.append((v & 0x7F) | 0x80)
        v >>= 7
    buf.append(v)


class SampleIndexEncoder:
    """Builds a `video_index` one frame at a time, with the row's derived totals."""

    __slots__ = ("video_index", "video_samples", "video_sync_samples", "media_duration_90k",
                 "sample_file_bytes", "_prev_duration", "_prev_key", "_prev_nonkey")

    def __init__(self) -> None:
        self.video_index = bytearray()
        self.video_samples = self.video_sync_samples = 0
        self.media_duration_90k = self.sample_file_bytes = 0
        self._prev_duration = self._prev_key = self._prev_nonkey = 0

    def add_sample(self, duration_90k: int, bytes_: int, is_key: bool) -> None:
        # One call per frame of every camera (writer.py): zigzag32 and the varints
        # are written out inline rather than through `_zigzag32`/`append_varint`.
        if not 0 <= duration_90k <= MAX_FRAME_DURATION_90K:
            raise ValueError(f"frame duration {duration_90k} outside 0..{MAX_FRAME_DURATION_90K}")
        if not 0 < bytes_ <= MAX_FRAME_BYTES:
            raise ValueError(f"frame size {bytes_} outside 1..{MAX_FRAME_BYTES}")
        if self.video_samples == 0:
            if not is_key:
                raise ValueError("the first frame of a recording must be a key frame")
        elif self._prev_duration == 0:
            raise ValueError("only the last frame may have zero duration")
        if is_key:
            delta, self._prev_key = bytes_ - self._prev_key, bytes_
            self.video_sync_samples += 1
            v = 1
        else:
            delta, self._prev_nonkey = bytes_ - self._prev_nonkey, bytes_
            v = 0
        d = duration_90k - self._prev_duration
        v |= (((d << 1) ^ (d >> 31)) & 0xFFFFFFFF) << 1   # varint1
        buf = self.video_index
        while v >= 0x80:
            buf.append((v & 0x7F) | 0x80)
            v >>= 7
        buf.append(v)
        v = ((delta << 1) ^ (delta >> 31)) & 0xFFFFFFFF    # varint2
        while v >= 0x80:
            buf.append((v & 0x7F) | 0x80)
            v >>= 7
        buf.append(v)
        self._prev_duration = duration_90k
        self.video_samples += 1
        self.media_duration_90k += duration_90k
        self.sample_file_bytes += bytes_

    def walk_state(self) -> tuple:
        """The decoder state before the next frame: resuming a walk there
        (`frames_in_range(..., begin=)`) skips the frames before it. Live view keeps
        the state before the latest key frame so each frame's segment needn't walk
        the growing index from frame 0."""
        return (self.video_samples, len(self.video_index), self.media_duration_90k,
                self.sample_file_bytes, self._prev_duration, self._prev_key,
                self._prev_nonkey)


def encode_index(frames: Iterable[tuple[int, int, bool]]) -> bytes:
    """`(duration_90k, bytes, is_key)` tuples -> `video_index`."""
    e = SampleIndexEncoder()
    for duration_90k, bytes_, is_key in frames:
        e.add_sample(duration_90k, bytes_, is_key)
    return bytes(e.video_index)


class VarintError(ValueError):
    """A bad varint; `truncated` if the data ended inside it."""

    def __init__(self, message: str, truncated: bool = False):
        super().__init__(message)
        self.truncated = truncated


def read_varint32(data, off: int) -> tuple[int, int]:
    """Decodes an unsigned LEB128 varint of at most 32 bits at `off` -> (value, next
    offset). The one reader of this project's varints (the sample index here, mp4.py's
    fast decoder for its long ones, signals.py's change blobs); raises VarintError."""
    v = 0
    for k in range(5):
        if off + k >= len(data):
            raise VarintError(f"truncated inside a varint at byte {off} ({len(data)} bytes)",
                              truncated=True)
        b = data[off + k]
        v |= (b & 0x7F) << (7 * k)
        if b < 0x80:
            if v > 0xFFFFFFFF:
                raise VarintError(f"varint at byte {off} exceeds 32 bits")
            return v, off + k + 1
    raise VarintError(f"varint at byte {off} is longer than 5 bytes")


def _varint(data: bytes, off: int, frame: int) -> tuple[int, int]:
    """Slow path: decodes a varint at `off` -> (value, next offset)."""
    try:
        return read_varint32(data, off)
    except VarintError as e:
        raise CorruptIndex(f"frame {frame}: {'index ' if e.truncated else ''}{e}") from None


def _walk(data: bytes, i: int = 0, off: int = 0, start: int = 0, pos: int = 0,
          dur: int = 0, pkey: int = 0, pnon: int = 0) -> Iterator[tuple]:
    """The one decoder. Yields `(i, off, start_90k, duration_90k, pos, bytes, is_key)`
    per frame, `off` being where the frame's varints begin in `data`.

    The arguments are the decoder state before frame `i` (prev duration, prev key and
    non-key sizes), so a walk can resume mid-index. Hot: keep the per-frame work inline.
    """
    n = len(data)
    if i == 0:
        if n == 0:
            raise CorruptIndex("empty index: a recording has at least one frame")
        if not data[0] & 1:  # varint1's low bit is is_key, and it is in the first byte
            raise CorruptIndex("frame 0 is not a key frame")
    while off < n:
        here = off
        # Varints of 1 or 2 bytes (the common cases) are decoded inline; the rest,
        # and every error, go through _varint.
        v1 = data[off]
        if v1 < 0x80:
            off += 1
        elif off + 1 < n and data[off + 1] < 0x80:
            v1 = (v1 & 0x7F) | (data[off + 1] << 7)
            off += 2
        else:
            v1, off = _varint(data, off, i)
        v2 = data[off] if off < n else 0x80
        if v2 < 0x80:
            off += 1
        elif off + 1 < n and data[off + 1] < 0x80:
            v2 = (v2 & 0x7F) | (data[off + 1] << 7)
            off += 2
        else:
            v2, off = _varint(data, off, i)
        dur += (v1 >> 2) ^ -((v1 >> 1) & 1)  # unzigzag(v1 >> 1)
        if dur <= 0:
            if dur < 0:
                raise CorruptIndex(f"frame {i}: negative duration {dur}")
            if off < n:
                raise CorruptIndex(f"frame {i}: zero duration, but only the last frame may "
                                   f"have one ({n - off} index bytes follow)")
        is_key = (v1 & 1) == 1
        if is_key:
            b = pkey = pkey + ((v2 >> 1) ^ -(v2 & 1))
        else:
            b = pnon = pnon + ((v2 >> 1) ^ -(v2 & 1))
        if b <= 0:
            raise CorruptIndex(f"frame {i}: non-positive size {b} "
                               f"({'key' if is_key else 'non-key'} frame)")
        yield i, here, start, dur, pos, b, is_key
        i += 1
        start += dur
        pos += b


# unzigzag(v) for every value a 1- or 2-byte varint can hold (< 2**14), looked up by value:
# nearly all of an index's varints are that short, and a list lookup is cheaper per frame
# than the arithmetic. About 0.5 MB, built once.
_SHORT_VARINT_MAX = 1 << 14
_UNZIGZAG = [(v >> 1) ^ -(v & 1) for v in range(_SHORT_VARINT_MAX)]


def _unzigzag(v: int) -> int:
    return (v >> 1) ^ -(v & 1)


def _long_varint(index: bytes, off: int, frame: int) -> tuple[int, int]:
    """A varint of 3 to 5 bytes at `off` -> (value, next offset)."""
    try:
        return read_varint32(index, off)
    except VarintError as e:
        if e.truncated:
            raise IndexError from None  # reported by the caller, with the frame count
        raise CorruptIndex(f"frame {frame}: {e}") from None


def decode_columns(index: bytes, frames: int) -> tuple[array, array, array]:
    """Durations, sizes and key frame numbers (from 0) of the first `frames` frames of a
    `video_index` (this module's format, reference §3.2), decoded straight into arrays.

    This is the hot loop of a view.mp4: every frame of every segment passes through it
    before the moov, hence the first sample byte, can be sent (24 h at 30 fps is 2.6
    million frames). So it makes no per-frame objects and does the least per-frame work
    it can: 1- and 2-byte varints inline, zigzag by table, stores into preallocated
    arrays. The index's invariants are checked without per-frame work where possible:
    a negative duration or size doesn't fit `array("I")` (OverflowError), a truncated
    index runs off the bytes (IndexError), zero sizes and misplaced zero durations are
    searched for afterwards. It is a second reader of the format, beside `_walk`,
    tested against `iter_index`; raises `CorruptIndex` as that does.
    """
    durations = array("I", bytes(4 * frames))
    sizes = array("I", bytes(4 * frames))
    keys = array("I")
    add_key = keys.append
    unzigzag = _UNZIGZAG
    short = _SHORT_VARINT_MAX
    off = dur = prev_key = prev_non_key = i = 0
    try:
        for i in range(frames):
            v1 = index[off]  # (duration delta, zigzagged) << 1 | is_key
            if v1 < 0x80:
                off += 1
            else:
                b = index[off + 1]
                if b < 0x80:
                    v1 = (v1 & 0x7F) | (b << 7)
                    off += 2
                else:
                    v1, off = _long_varint(index, off, i)
            v2 = index[off]  # size delta from the previous frame of the same kind, zigzagged
            if v2 < 0x80:
                off += 1
            else:
                b = index[off + 1]
                if b < 0x80:
                    v2 = (v2 & 0x7F) | (b << 7)
                    off += 2
                else:
                    v2, off = _long_varint(index, off, i)
            dur += unzigzag[v1 >> 1] if v1 < short else _unzigzag(v1 >> 1)
            durations[i] = dur
            if v1 & 1:
                prev_key += unzigzag[v2] if v2 < short else _unzigzag(v2)
                sizes[i] = prev_key
                add_key(i)
            else:
                prev_non_key += unzigzag[v2] if v2 < short else _unzigzag(v2)
                sizes[i] = prev_non_key
    except IndexError:
        raise CorruptIndex(f"frame {i}: index truncated at byte {off} of "
                                     f"{len(index)}; expected {frames} frames") from None
    except OverflowError:  # array("I") refuses a negative value
        what = f"duration {dur}" if dur < 0 else f"size {prev_key if v1 & 1 else prev_non_key}"
        raise CorruptIndex(f"frame {i}: negative {what}") from None
    if frames and (not keys or keys[0] != 0):
        raise CorruptIndex("frame 0 is not a key frame")
    if 0 in sizes:
        raise CorruptIndex(f"frame {sizes.index(0)}: size 0")
    if 0 in durations:
        z = durations.index(0)
        if z < frames - 1 or off < len(index):
            raise CorruptIndex(f"frame {z}: zero duration, but only the last frame "
                                         f"may have one")
    return durations, sizes, keys


@dataclass(slots=True)
class Frame:
    i: int             # frame number within the recording, from 0
    start_90k: int     # media start relative to the recording's start
    duration_90k: int  # as stored (0 only for a trailing last frame)
    pos: int           # byte offset within the sample file
    bytes: int
    is_key: bool


def iter_index(video_index: bytes) -> Iterator[Frame]:
    """Every frame of a recording, validating as it goes (`CorruptIndex` mid-iteration)."""
    for i, _, start, dur, pos, b, key in _walk(video_index):
        yield Frame(i, start, dur, pos, b, key)


@dataclass(slots=True, frozen=True)
class IndexSummary:
    video_samples: int
    video_sync_samples: int
    media_duration_90k: int
    sample_file_bytes: int
    trailing_zero: bool  # the last frame has duration 0


def decode_summary(video_index: bytes) -> IndexSummary:
    """Validates a whole index and returns the totals its recording row must match."""
    keys = 0
    for last in _walk(video_index):  # _walk raises on an empty index, so `last` is set
        keys += last[6]
    i, _, start, dur, pos, b, _ = last
    return IndexSummary(i + 1, keys, start + dur, pos + b, dur == 0)


# ---------------------------------------------------------------------------------------
# Frames of a range (reference §4.3)

@dataclass(slots=True)
class FrameRange:
    """The frames covering media range [desired_start_90k, desired_end_90k) of a recording.

    Iterating yields the Frames lazily (decoding from a saved state, not from frame 0).
    Frames are as stored; for mp4's stts, the last one's duration is `last_duration_90k`.
    """
    video_index: bytes = field(repr=False)
    desired_start_90k: int
    desired_end_90k: int
    actual_start_90k: int     # start of the key frame at or before desired_start_90k
    first_frame: int          # its frame number
    frames: int
    key_frames: int
    pos: int                  # sample file byte range is [pos, pos + bytes)
    bytes: int
    media_duration_90k: int   # desired_end_90k - actual_start_90k
    last_duration_90k: int    # min(last frame's duration, desired_end_90k - its start)
    trailing_zero: bool       # the last frame is a zero-duration trailing frame
    _begin: tuple = field(repr=False)  # _walk state before first_frame

    def __iter__(self) -> Iterator[Frame]:
        it = _walk(self.video_index, *self._begin)
        for i, _, start, dur, pos, b, key in itertools.islice(it, self.frames):
            yield Frame(i, start, dur, pos, b, key)


def frames_in_range(video_index: bytes, start_90k: int, end_90k: int, *,
                    is_whole: bool = False, begin: tuple | None = None) -> FrameRange:
    """The frames of media range [start_90k, end_90k), relative to the recording's start.

    Follows Moonfire's `Segment::new` (start_at_key = true):
    - it begins at the last key frame starting at or before start_90k; mp4.py skips the
      extra lead-in with an edit list (§4.3);
    - it includes every frame starting before end_90k, and always at least one frame:
      a zero-length range [t, t) yields the frame(s) from that key frame up to t, or
      the one key frame starting at t, so a segment is never empty (an mp4 chunk
      needs a sample) and a single-frame recording always yields its frame;
    - when end_90k is the recording's end, a zero-duration trailing frame (which starts
      exactly there) is included too, whatever start_90k is: Moonfire includes it in
      its whole-recording fast path, and argues it would be bizarre for the frame to
      come and go with the range's start.
    `is_whole=True` says the caller (from its row) believes this is the whole recording;
    it is checked against the index, so a row/index mismatch is caught here.
    `begin`, a `SampleIndexEncoder.walk_state()` taken before a key frame starting at
    or before start_90k, starts the walk there instead of at frame 0 (live view: one
    GOP instead of the whole growing recording); one starting later is ignored.
    Raises ValueError for a bad range, CorruptIndex for a bad index.
    """
    if start_90k < 0 or start_90k > end_90k:
        raise ValueError(f"invalid media range [{start_90k}, {end_90k}): need 0 <= start <= end")
    if begin is None or begin[2] > start_90k:
        begin = (0, 0, 0, 0, 0, 0, 0)  # _walk state before the first included frame
    frames = keys = nbytes = 0
    last_start = 0
    last_dur, pkey, pnon = begin[4:]  # last_*: the last included frame, as stored
    exhausted = True
    for i, off, start, dur, pos, b, key in _walk(video_index, *begin):
        if key and start <= start_90k:  # a (later) key frame to begin at
            begin = (i, off, start, pos, last_dur, pkey, pnon)
            frames = keys = nbytes = 0
        # Stop at the first frame at or past the end, unless nothing is included yet or
        # it is a trailing zero (dur == 0 means last frame) sitting exactly at end_90k.
        if start >= end_90k and frames and (dur or start != end_90k):
            exhausted = False
            break
        frames += 1
        keys += key
        nbytes += b
        last_start, last_dur = start, dur
        if key:
            pkey = b
        else:
            pnon = b
    total = last_start + last_dur if exhausted else None  # None: beyond end_90k
    if exhausted and end_90k > total:
        raise ValueError(f"media range [{start_90k}, {end_90k}) invalid for a recording "
                         f"of media duration {total}")
    if is_whole and (start_90k != 0 or end_90k != total):
        raise ValueError(f"media range [{start_90k}, {end_90k}) is not a whole recording "
                         f"(the index says [0, {'more' if total is None else total}))")
    first, _, actual_start, first_pos = begin[:4]
    trunc = min(last_dur, end_90k - last_start)
    return FrameRange(video_index, start_90k, end_90k, actual_start, first, frames, keys,
                      first_pos, nbytes, last_start - actual_start + trunc, trunc,
                      last_dur == 0, begin)
