"""Stills: a JPEG of the frame shown at any instant of a stream, and of its latest key frame.

Owns the path from a time to a picture, and what bounds its cost:
- **Finding the frame.** An instant is a wall time in 90 kHz units (`time_90k`) or a
  recording plus an offset into it (`s=ID[@OPEN][.REL]`, the `s=` syntax of view.mp4
  with a single recording and only a start). The recording whose wall range holds the
  instant is found through db.py's listing (committed and uncommitted rows, so growing
  recordings work); the wall offset is rescaled to media time as view.mp4 does, and
  the frame *shown* at that instant is the one whose media range [start, start +
  duration) holds it.
- **Decoding.** mp4.py builds the one-recording `.mp4` of that instant: it starts at the
  key frame at or before the instant and ends with the frame shown, exactly the
  samples a decoder needs. PyAV demuxes it from memory with the edit list ignored
  (`ignore_editlist`: FFmpeg would otherwise drop the lead-in frames, and with them a
  frame that starts before the edit), decodes every sample, and the last decoded
  frame is the one shown. The fast mode (`key=True`, for thumbnails) reads the file
  only up to the end of its first sample and decodes that key frame alone.
- **Encoding.** FFmpeg's `mjpeg` encoder through PyAV, full-range 4:2:0 (`yuvj420p`,
  what JPEG readers assume), a fixed quantiser (`qscale` = JPEG_QSCALE). The picture
  is given square pixels (the sample entry's `pasp` applied to the width), and scaled
  down to `width=`/`height=` with its aspect ratio kept (one of them given: the other
  follows; both: fitted inside the box; never enlarged).
- **Cost.** Decodes run in a `Pool` of worker threads (one per core by default), each
  lowered to nice NICE (recording threads keep their priority) and each decoding with
  one FFmpeg thread, so the pool's size is the number of cores stills can take. At most
  `queue_limit` requests wait behind the busy workers; more get `Busy` (HTTP 503 with
  Retry-After). Finished stills are kept in an LRU cache bounded in bytes (CACHE_BYTES),
  keyed by the frame shown (a recording's frames never change once written, committed
  or not), so a page of thumbnails or a client polling the latest still of a camera
  every few seconds decodes each frame once.

Neighbours: mp4.py builds the files decoded here; api.py maps `still.jpg`/`latest.jpg`
to `Stills.still`/`Stills.latest` and errors to statuses; db.py lists recordings.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import fractions
import hashlib
import io
import logging
import os
import threading

import av

import db as dbmod
import mp4
import recording

logger = logging.getLogger(__name__)


class _QuietYuvj(logging.Filter):
    """Drops swscale's "deprecated pixel format used, make sure you did set range
    correctly" for our yuvj420p (full range, what JPEG wants): the range is set by the
    format itself. PyAV 10 (Debian 12) passes FFmpeg's log to Python's; newer PyAV
    keeps it quiet."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "deprecated pixel format" not in record.getMessage()


logging.getLogger("libav.swscaler").addFilter(_QuietYuvj())

JPEG_QSCALE = 3            # FFmpeg's -q:v for mjpeg: 2 (best) .. 31; 3 is visually lossless
CACHE_BYTES = 32 << 20     # finished JPEGs kept in memory
NICE = 10                  # added to each decoding thread's nice value (Linux: per thread)
MAX_DIMENSION = 8192       # width=/height= above this are refused
FORMAT_VERSION = 1         # feeds the ETag: change when the same frame would encode otherwise
_FF_QP2LAMBDA = 118        # FFmpeg's lambda per quantiser step (libavutil/avutil.h)


class NoVideo(LookupError):
    """No frame at that instant (HTTP 404); the message names the nearest video."""


class Busy(Exception):
    """Every decoder is busy and the queue is full (HTTP 503)."""

    def __init__(self, message: str, retry_after_sec: int = 1):
        super().__init__(message)
        self.retry_after_sec = retry_after_sec


class StillError(ValueError):
    """A malformed request (HTTP 400): bad size, bad `s=`, conflicting parameters."""


@dataclasses.dataclass(frozen=True)
class Still:
    jpeg: bytes
    width: int                # of the JPEG
    height: int
    frame_time_90k: int       # wall time at which the frame shown starts
    recording_id: int
    open_id: int
    key: bool                 # the frame shown is a key frame
    etag: str                 # quoted, as sent

    def headers(self) -> dict[str, str]:
        return {"Content-Type": "image/jpeg", "ETag": self.etag,
                "X-Frame-Time-90k": str(self.frame_time_90k),
                "X-Recording-Id": f"{self.open_id}.{self.recording_id}"}


def output_size(width: int, height: int, pasp: tuple[int, int], want_w: int | None,
                want_h: int | None) -> tuple[int, int]:
    """The JPEG's size: the coded size with square pixels (pasp h/v applied to the width),
    scaled down to fit `want_w` x `want_h` (either may be None) with the aspect ratio
    kept, never up. Even sizes, at least 2: 4:2:0 chroma needs them."""
    h_spacing, v_spacing = pasp
    disp_w, disp_h = width * h_spacing / v_spacing, float(height)
    if want_w is not None and want_h is not None:
        scale = min(want_w / disp_w, want_h / disp_h)
    elif want_w is not None:
        scale = want_w / disp_w
    elif want_h is not None:
        scale = want_h / disp_h
    else:
        scale = 1.0
    scale = min(scale, 1.0)   # never larger than the picture: that would only cost bytes

    def even(x: float) -> int:
        return max(2, int(round(x / 2)) * 2)
    return even(disp_w * scale), even(disp_h * scale)


def parse_size(name: str, value: str | None) -> int | None:
    if value is None or value == "":
        return None
    if not value.isascii() or not value.isdigit() or len(value) > 5:
        raise StillError(f"{name}={value[:20]!r}: expected a whole number of pixels")
    n = int(value)
    if not 1 <= n <= MAX_DIMENSION:
        raise StillError(f"{name}={n}: expected 1 to {MAX_DIMENSION} pixels")
    return n


def parse_s(value: str) -> mp4.SegmentSpec:
    """`ID[@OPEN][.REL]`: recording ID (made by open OPEN), REL ticks of wall time in."""
    if "-" in value:
        raise StillError(f"s={value[:40]!r}: a still is one instant: give ID[@OPEN][.REL] "
                         f"(one recording and an offset into it, no range)")
    try:
        return mp4.parse_segment(value + ("-" if "." in value else ""))
    except mp4.Mp4Error as e:
        raise StillError(f"s={value[:40]!r}: expected ID[@OPEN][.REL], e.g. 5.900000 "
                         f"({e})") from None


def _format(t: int) -> str:
    return recording.format_time(t)


class Pool:
    """Worker threads that decode (niced, one FFmpeg thread each) with a bounded queue."""

    def __init__(self, workers: int | None = None, queue_limit: int | None = None):
        self.workers = workers or os.cpu_count() or 1
        self.queue_limit = self.workers * 4 if queue_limit is None else queue_limit
        self._lock = threading.Lock()
        self._pending = 0   # submitted and not finished: running + queued
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None  # made on use

    def run(self, fn, *args):
        with self._lock:
            if self._pending >= self.workers + self.queue_limit:
                raise Busy(f"all {self.workers} still decoders are busy and "
                           f"{self.queue_limit} requests wait; try again shortly")
            self._pending += 1
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    self.workers, thread_name_prefix="still", initializer=_lower_priority)
            executor = self._executor
        try:
            fut = executor.submit(fn, *args)
        except BaseException:
            with self._lock:
                self._pending -= 1
            raise
        fut.add_done_callback(self._done)
        return fut.result()

    def _done(self, _fut) -> None:
        with self._lock:
            self._pending -= 1

    def close(self) -> None:
        """Ends the worker threads (after the decodes in progress); a later `run` starts
        new ones."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)


def _lower_priority() -> None:
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + NICE)
    except OSError as e:   # not Linux-like per-thread nice; the pool still bounds the cost
        logger.debug("still decoder keeps its priority: %s", e)


class _Cache:
    """LRU of finished stills, bounded by the JPEG bytes it holds."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self._d: collections.OrderedDict[tuple, Still] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple) -> Still | None:
        with self._lock:
            s = self._d.get(key)
            if s is not None:
                self._d.move_to_end(key)
            return s

    def put(self, key: tuple, s: Still) -> None:
        with self._lock:
            old = self._d.pop(key, None)
            if old is not None:
                self.bytes -= len(old.jpeg)
            if len(s.jpeg) > self.max_bytes:
                return
            self._d[key] = s
            self.bytes += len(s.jpeg)
            while self.bytes > self.max_bytes:
                _, gone = self._d.popitem(last=False)
                self.bytes -= len(gone.jpeg)

    def __len__(self) -> int:
        return len(self._d)


@dataclasses.dataclass
class _Target:
    row: dbmod.ListRow
    media_90k: int          # the instant, in the recording's media time


class Stills:
    """Stills of one database's streams. Thread-safe; `close` stops the pool."""

    def __init__(self, db: dbmod.Database, *, workers: int | None = None,
                 queue_limit: int | None = None, cache_bytes: int = CACHE_BYTES):
        self.db = db
        self.pool = Pool(workers, queue_limit)
        self.cache = _Cache(cache_bytes)
        self.decodes = 0    # frames decoded (tests, metrics)

    def close(self) -> None:
        self.pool.close()

    # -- finding the frame

    def _at_time(self, stream_id: int, t: int) -> _Target:
        rows = self.db.list_recordings_by_time(stream_id, t, t + 1)
        for r in rows:
            if r.start_time_90k <= t < r.end_time_90k or (
                    r.wall_duration_90k == 0 and r.start_time_90k == t):
                rel = t - r.start_time_90k
                return _Target(r, mp4.rescale(rel, r.wall_duration_90k, r.media_duration_90k))
        raise NoVideo(self._nearest(stream_id, t))

    def _nearest(self, stream_id: int, t: int) -> str:
        """'no video at T; the nearest ends at A / starts at B' from the stream's rows."""
        day = 86400 * recording.TIME_UNITS_PER_SEC
        before = after = None
        span = day
        while (before is None or after is None) and span <= 4096 * day:
            if before is None:
                rows = self.db.list_recordings_by_time(stream_id, t - span, t)
                ends = [r.end_time_90k for r in rows if r.end_time_90k <= t]
                before = max(ends) if ends else None
            if after is None:
                rows = self.db.list_recordings_by_time(stream_id, t, t + span)
                starts = [r.start_time_90k for r in rows if r.start_time_90k >= t]
                after = min(starts) if starts else None
            span *= 8
        parts = []
        if before is not None:
            parts.append(f"the video before it ends at {_format(before)} ({before})")
        if after is not None:
            parts.append(f"the video after it starts at {_format(after)} ({after})")
        near = "; ".join(parts) if parts else "this stream has no video"
        return f"no video at {_format(t)} ({t}): {near}"

    def _at_spec(self, stream_id: int, spec: mp4.SegmentSpec) -> _Target:
        rows = self.db.list_recordings_by_id(stream_id, spec.start_id, spec.start_id + 1)
        if not rows:
            raise NoVideo(f"no recording {stream_id}/{spec.start_id}")
        r = rows[0]
        if spec.open_id is not None and r.open_id != spec.open_id:
            raise NoVideo(f"recording {stream_id}/{spec.start_id} has open id {r.open_id}, "
                          f"not the requested {spec.open_id}")
        rel = spec.rel_start_90k
        if rel > r.wall_duration_90k or (rel == r.wall_duration_90k and rel > 0):
            raise NoVideo(f"recording {stream_id}/{spec.start_id} is {r.wall_duration_90k} "
                          f"ticks long; {rel} is past its end")
        return _Target(r, mp4.rescale(rel, r.wall_duration_90k, r.media_duration_90k))

    def _latest(self, stream_id: int) -> _Target:
        with self.db.locked("latest still"):
            s = self.db.streams.get(stream_id)
            if s is None:
                raise NoVideo(f"no stream {stream_id}")
            next_id = s.next_recording_id
        # The newest recording with frames: an uncommitted one, or the last committed.
        rows = self.db.list_recordings_by_id(stream_id, max(0, next_id - 8), next_id)
        rows = [r for r in rows if r.video_samples > 0]
        if not rows:
            raise NoVideo(f"stream {stream_id} has no recent video")
        r = rows[-1]
        return _Target(r, max(0, r.media_duration_90k - 1))

    # -- decoding

    def still(self, stream_id: int, *, time_90k: int | None = None, s: str | None = None,
              key: bool = False, width: int | None = None, height: int | None = None) -> Still:
        """The still at `time_90k` or `s`; `key`: the key frame at or before it instead."""
        if (time_90k is None) == (s is None):
            raise StillError("give the instant either as t=<90 kHz time> or as "
                             "s=<recording id>[.<offset>], not both")
        target = (self._at_time(stream_id, time_90k) if time_90k is not None
                  else self._at_spec(stream_id, parse_s(s)))
        return self._still(target, key, width, height)

    def still_in_view(self, stream_id: int, s_values: list[str], at_90k: int, *,
                      key: bool = False, width: int | None = None,
                      height: int | None = None) -> Still:
        """The frame a player of `view.mp4?s=...` (the same `s` values) shows at media
        time `at_90k` of that file: frame-exact across its recordings, whatever their
        wall/media rates (the web UI's "save still")."""
        try:
            f = mp4.build_view(self.db, stream_id, s_values)
        except mp4.Mp4Error as e:
            raise StillError(str(e)) from None
        except mp4.NotFound as e:
            raise NoVideo(str(e)) from None
        if at_90k < 0:
            raise StillError(f"at={at_90k}: a media time into the view, 0 or more")
        cum = 0
        for i, seg in enumerate(f.segments):
            d = seg.media_end_90k - seg.media_start_90k
            if at_90k < cum + d or i == len(f.segments) - 1:
                if at_90k > cum + d:
                    raise NoVideo(f"at={at_90k} is past the view's end at {cum + d}")
                rel = min(seg.media_start_90k + at_90k - cum,
                          max(seg.media_end_90k - 1, seg.media_start_90k))
                return self._still(_Target(seg.row, rel), key, width, height)
            cum += d
        raise NoVideo("the view has no recordings")

    def latest(self, stream_id: int, *, width: int | None = None,
               height: int | None = None) -> Still:
        """The stream's latest key frame (cheap to poll: decoded once per GOP)."""
        return self._still(self._latest(stream_id), True, width, height)

    def _still(self, target: _Target, key: bool, width: int | None,
               height: int | None) -> Still:
        r = target.row
        m = target.media_90k
        end = min(m + 1, r.media_duration_90k)
        b = mp4.FileBuilder("mp4")
        b.append(r, (min(m, end), end))
        f = b.build(self.db)
        seg = f.segments[0]
        shown_90k, shown_key = _shown_frame(seg, key)
        vse = f.vses[0]
        size = output_size(vse.width, vse.height, (vse.pasp_h_spacing, vse.pasp_v_spacing),
                           width, height)
        cache_key = (self.db.uuid, r.composite_id, r.open_id, r.start_time_90k, shown_90k,
                     size)
        hit = self.cache.get(cache_key)
        if hit is not None:
            return hit
        frame_time = r.start_time_90k + seg.wall(shown_90k)
        etag = hashlib.blake2b(repr((FORMAT_VERSION, JPEG_QSCALE) + cache_key).encode(),
                               digest_size=16).hexdigest()
        # Key frame: moov and the first sample suffice. Otherwise the whole GOP.
        first_size = _first_frame_bytes(seg)
        data_end = f.length if not (key or shown_key) else min(
            f.length, seg.data_offset + first_size)
        data = f.read(0, data_end)
        jpeg = self.pool.run(self._decode, data, key or shown_key, size)
        st = Still(jpeg, size[0], size[1], frame_time, r.recording_id, r.open_id,
                   key or shown_key, f'"{etag}"')
        self.cache.put(cache_key, st)
        return st

    def _decode(self, data: bytes, first_only: bool, size: tuple[int, int]) -> bytes:
        frame = None
        with av.open(io.BytesIO(data), format="mp4",
                     options={"ignore_editlist": "1"}) as c:
            vs = c.streams.video[0]
            ctx = vs.codec_context
            ctx.thread_count = 1
            for pkt in c.demux(vs):
                if pkt.size == 0:
                    continue
                for fr in ctx.decode(pkt):
                    frame = fr
                    self.decodes += 1
                if first_only:
                    break
            for fr in ctx.decode(None):
                frame = fr
                self.decodes += 1
                if first_only:
                    break
        if frame is None:
            raise RuntimeError("the decoder returned no frame for a recording's samples; "
                               "run `nvr.py check`")
        return encode_jpeg(frame, size)


def encode_jpeg(frame: av.VideoFrame, size: tuple[int, int]) -> bytes:
    """A full-range 4:2:0 JPEG of `frame` at `size` (FFmpeg's mjpeg encoder)."""
    w, h = size
    img = frame.reformat(width=w, height=h, format="yuvj420p", interpolation="AREA")
    ctx = av.CodecContext.create("mjpeg", "w")
    ctx.width, ctx.height, ctx.pix_fmt = w, h, "yuvj420p"
    ctx.time_base = fractions.Fraction(1, 1)
    ctx.thread_count = 1
    ctx.options = {"flags": "+qscale", "global_quality": str(JPEG_QSCALE * _FF_QP2LAMBDA)}
    img.pts = 0
    packets = ctx.encode(img) + ctx.encode(None)
    return b"".join(bytes(p) for p in packets)


def _shown_frame(seg, key: bool) -> tuple[int, bool]:
    """(media start, is key) of the frame a still shows: the segment's last frame, or
    with `key` its first (the key frame at or before the instant)."""
    fr = seg.frame_range
    if fr is None:  # the whole recording: one frame long ([0, 0) or a single frame)
        return 0, True
    last = None
    for f in fr:
        if key:
            return f.start_90k, True
        last = f
    if last is None:
        raise NoVideo("no frame in that range")
    return last.start_90k, last.is_key


def _first_frame_bytes(seg) -> int:
    fr = seg.frame_range
    if fr is None:
        return seg.bytes
    for f in fr:
        return f.bytes
    return seg.bytes
