"""Stream test: is this RTSP URL something nvr can record? An answer within LIMIT_SEC.

One function, `run(url, ...)`, used by `nvr.py test-stream` and `nvr.py config
stream test` (and meant for the JSON API and the UI later). It opens the stream as
stream.py's `PyAvOpener` does (the same `stream.RTSP_OPTIONS`: video only, nvr's user
agent; the chosen transport; credentials put into the URL handed to FFmpeg only, never
shown), and within `limit_sec` (LIMIT_SEC = 10 s in all) answers:

- the codec and its RFC 6381 string, profile and level, the coded size (after cropping),
  the pixel aspect ratio and the display size (all from the SPS: codec.py's
  `VideoParameters`; the first key frame's in-band sets win over the SDP's);
- the frame rate and bitrate measured from the camera's timestamps over about
  MEASURE_SEC (2 s) of frames, and the key frame interval (GOP) in frames and seconds
  between the first two key frames seen;
- whether a browser can play it (H.264 Baseline/Main/High: yes; H.265: it depends on
  the browser; anything else: no);
- a JPEG of the first key frame, decoded by PyAV and encoded by snapshot.py's
  `encode_jpeg` at the display size (`snapshot.output_size`: pasp applied).

Progress: `on_phase(name)` is called, on the caller's thread, as the test enters each of
PHASES ("connecting", "waiting for a key frame", "measuring").

Failures raise `StreamTestError` with a `kind` (one of KINDS), a one-line `message` saying
what to do, the raw FFmpeg/PyAV error in `detail`, and the `phase` it happened in.
How each case shows up (measured with PyAV 10.0 / FFmpeg 5.1 of Debian 12 and PyAV 12+
from PyPI, against test/camera.py's GStreamer RTSP server; see test_streamtest.py):

  name not resolved   av.error.OSError [errno 5 EIO]; only PyAV 10's log says why
                      ("Failed to resolve hostname"), so the host is looked up first
  connection refused  av.error.ConnectionRefusedError [errno 111] (also what this
                      loopback-only machine gives for an unroutable address)
  no answer           av.error.InvalidDataError once the open timeout passes (a silent
                      port, or a camera stuck before answering DESCRIBE)
  not RTSP            av.error.InvalidDataError at once (rtsp:// to a web server);
                      http:// and other schemes are refused before opening
  401                 av.error.HTTPUnauthorizedError (no or wrong credentials)
  404                 av.error.HTTPNotFoundError
  MJPEG, MPEG-4 ...   opens; the video stream's codec isn't h264/hevc
  no key frame        only non-key frames until the limit (FFmpeg's probing, which
                      would wait up to 5 s inside av.open, is cut short:
                      `analyzeduration`)
Both PyAVs raise the same types; PyAV 10 also logs FFmpeg's reason, which goes into
`detail` (later PyAVs log nothing by default).

The time bound: the test runs on a worker thread ("streamtest"); the caller waits for
its answer at most `limit_sec` (`Clocks.recv_timeout`). The worker stops measuring
FINISH_SEC before the limit (time to decode and encode the JPEG), and each of its
FFmpeg calls has PyAV's timeouts set to what is left, so a camera that stops answering
mid-read still frees the worker (and its connection) soon after the caller was told
"timed out". GOPs longer than the limit can't be measured: key frames more than
`max_gop_sec` (MAX_GOP_SEC = 10 s) apart, measured or as a lower bound from the frames
seen without one, fail the test ("gop_too_long"); a 30 s GOP fails within the 10 s
either that way or as "no_key_frame".

Neighbours: stream.py owns opening and recording streams; codec.py parses parameter
sets; snapshot.py owns the JPEG encoding; nvr.py prints the result (`Result.to_json`).
"""

from __future__ import annotations

import dataclasses
import errno
import fractions
import logging
import queue
import threading
import urllib.parse

import clock
import codec
import stream

logger = logging.getLogger(__name__)

LIMIT_SEC = 10.0         # the whole test, connecting included
MEASURE_SEC = 2.0        # frame rate and bitrate over at least this much camera time
FINISH_SEC = 0.5         # kept back from the limit for the snapshot and the answer
MAX_GOP_SEC = 10.0       # key frames further apart than this fail the test

PHASES = ("connecting", "waiting for a key frame", "measuring")

# Each kind of failure; `StreamTestError.kind` is one of these (the JSON's "error").
KINDS = ("bad_url", "not_rtsp", "name_not_resolved", "connection_refused", "unreachable",
         "timeout", "auth_failed", "not_found", "unsupported_codec", "no_key_frame",
         "gop_too_long", "stream_ended", "error")

_CODECS = {"h264": "h264", "hevc": "h265"}
_H264_PROFILES = {66: "Baseline", 77: "Main", 88: "Extended", 100: "High", 110: "High 10",
                  122: "High 4:2:2", 244: "High 4:4:4 Predictive", 44: "CAVLC 4:4:4"}
_H265_PROFILES = {1: "Main", 2: "Main 10", 3: "Main Still Picture", 4: "Range Extensions"}
_BROWSER_H264_PROFILES = (66, 77, 100)   # what every browser's H.264 decoder takes


class StreamTestError(Exception):
    """The stream can't be recorded as it is; `message` says what to do."""

    def __init__(self, kind: str, message: str, detail: str = "", phase: str = ""):
        super().__init__(message)
        assert kind in KINDS, kind
        self.kind = kind
        self.message = message
        self.detail = detail
        self.phase = phase
        self.elapsed_sec: float | None = None
        self.partial: dict | None = None   # what was measured before failing, if anything

    def to_json(self, limit_sec: float) -> dict:
        d = {"ok": False, "error": self.kind, "message": self.message, "detail": self.detail,
             "phase": self.phase, "limitSec": limit_sec,
             "elapsedSec": None if self.elapsed_sec is None else round(self.elapsed_sec, 3)}
        if self.partial:
            d["partial"] = self.partial
        return d


@dataclasses.dataclass
class Result:
    url: str                       # as given, without credentials
    transport: str                 # tcp, udp or default
    codec: str                     # "h264" | "h265"
    rfc6381_codec: str             # e.g. "avc1.64001e"
    profile: str                   # e.g. "High", "Main"
    level: str                     # e.g. "3.0", "3.1"
    width: int                     # coded size after cropping, pixels
    height: int
    pixel_aspect_ratio: tuple[int, int]   # h:v spacing, (1, 1) for square pixels
    display_width: int             # with pasp applied: the snapshot's size
    display_height: int
    frame_rate: float | None       # measured from the camera's timestamps, frames/s
    sps_frame_rate: float | None   # what the SPS's VUI timing says, if anything
    bitrate_bps: int | None        # measured, bits/s
    measured_sec: float            # camera time the frame rate and bitrate are over
    gop_frames: int | None         # frames from one key frame to the next
    gop_sec: float | None
    gop_min_sec: float | None      # no second key frame: the interval is at least this
    browser: str                   # "yes" | "depends" | "no"
    browser_note: str
    snapshot_jpeg: bytes = dataclasses.field(repr=False, default=b"")
    elapsed_sec: float = 0.0       # wall time the test took
    limit_sec: float = LIMIT_SEC
    warnings: list[str] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict:
        """The JSON object of `nvr.py test-stream --json` (keys documented in README)."""
        return {
            "ok": True, "url": self.url, "transport": self.transport, "codec": self.codec,
            "rfc6381Codec": self.rfc6381_codec, "profile": self.profile, "level": self.level,
            "width": self.width, "height": self.height,
            "pixelAspectRatio": list(self.pixel_aspect_ratio),
            "displayWidth": self.display_width, "displayHeight": self.display_height,
            "frameRate": _round(self.frame_rate, 3), "spsFrameRate": _round(self.sps_frame_rate, 3),
            "bitrateBps": self.bitrate_bps, "measuredSec": round(self.measured_sec, 3),
            "gopFrames": self.gop_frames, "gopSec": _round(self.gop_sec, 3),
            "gopMinSec": _round(self.gop_min_sec, 3),
            "browser": self.browser, "browserNote": self.browser_note,
            "snapshotBytes": len(self.snapshot_jpeg), "elapsedSec": round(self.elapsed_sec, 3),
            "limitSec": self.limit_sec, "warnings": self.warnings,
        }

    def lines(self) -> list[str]:
        """The human-readable report of `nvr.py test-stream`."""
        par = "%d:%d" % self.pixel_aspect_ratio
        out = [f"codec: {self.codec} ({self.rfc6381_codec}), {self.profile} profile, "
               f"level {self.level}",
               f"size: {self.width}x{self.height}, pixel aspect ratio {par}, shown as "
               f"{self.display_width}x{self.display_height}"]
        fr = "?" if self.frame_rate is None else f"{self.frame_rate:.2f}"
        br = "?" if self.bitrate_bps is None else f"{self.bitrate_bps / 1000:.0f} kbit/s"
        out.append(f"frame rate: {fr} fps, bitrate: {br} (measured over "
                   f"{self.measured_sec:.1f} s)")
        if self.gop_frames is not None:
            out.append(f"key frames: every {self.gop_frames} frames ({self.gop_sec:.2f} s)")
        else:
            out.append(f"key frames: over {self.gop_min_sec or 0:.1f} s apart (only one "
                       f"seen within the {self.limit_sec:g} s limit)")
        out.append(f"plays in a browser: {self.browser} ({self.browser_note})")
        out += [f"warning: {w}" for w in self.warnings]
        out.append(f"tested in {self.elapsed_sec:.1f} s (limit {self.limit_sec:g} s)")
        return out


def _round(x: float | None, n: int) -> float | None:
    return None if x is None else round(x, n)


# ---------------------------------------------------------------------------------------
# Classifying what FFmpeg/PyAV raise

def _host_port(url: str) -> tuple[str, str]:
    try:
        p = urllib.parse.urlsplit(url)
        return p.hostname or "?", str(p.port or 554)
    except ValueError:
        return "?", "554"


def _path(url: str) -> str:
    try:
        return urllib.parse.urlsplit(url).path or "/"
    except ValueError:
        return "?"


def describe(e: BaseException) -> str:
    """The raw error, for `detail`: its type, errno and FFmpeg's message, without the
    URL (PyAV's messages repeat it, credentials included)."""
    code = getattr(e, "errno", None)
    return f"{type(e).__name__}" + (f" [errno {code}]" if code is not None else "") + \
        f": {stream._describe(e)}"


def classify_open_error(e: BaseException, url: str, limit_sec: float,
                        phase: str = "connecting", timed_out: bool = False) -> StreamTestError:
    """The StreamTestError for what `av.open` (or a read) raised; `timed_out`: it took
    its whole timeout (PyAV then raises InvalidDataError, as for a server that isn't
    RTSP: the time tells them apart)."""
    import av
    host, port = _host_port(url)
    detail = describe(e)
    msg = (stream._describe(e) or "").lower()
    code = getattr(e, "errno", None)

    def err(kind: str, message: str) -> StreamTestError:
        return StreamTestError(kind, message, detail, phase)

    if isinstance(e, av.error.HTTPUnauthorizedError) or "401" in msg or "unauthorized" in msg:
        return err("auth_failed", "the camera refused the username and password (401 "
                                  "Unauthorized): check them (they are case-sensitive; "
                                  "some cameras need an RTSP user of their own)")
    if isinstance(e, av.error.HTTPNotFoundError) or "404" in msg or "not found" in msg:
        return err("not_found", f"the camera has no stream at {_path(url)} (404 Not "
                                f"Found): check the URL's path in the camera's manual or "
                                f"its ONVIF media profile")
    if timed_out or isinstance(e, av.error.ExitError) or code == errno.ETIMEDOUT \
            or "timed out" in msg or "immediate exit" in msg:
        return err("timeout", f"no answer from {host}:{port} within {limit_sec:g} s: check "
                              f"the address and port, and that no firewall drops RTSP")
    if isinstance(e, ConnectionRefusedError) or code == errno.ECONNREFUSED \
            or "connection refused" in msg:
        return err("connection_refused", f"{host}:{port} refused the connection: check the "
                                         f"port (RTSP's default is 554) and that the "
                                         f"camera's RTSP service is on")
    if code in (errno.EHOSTUNREACH, errno.ENETUNREACH) or "unreachable" in msg:
        return err("unreachable", f"{host} is unreachable (no route to it): check the "
                                  f"address and this machine's network")
    if "name or service not known" in msg or "resolv" in msg or "no address" in msg \
            or "temporary failure in name" in msg or "name does not resolve" in msg:
        return err("name_not_resolved", f"can't resolve the host name {host!r}: check its "
                                        f"spelling, or use the camera's IP address")
    if isinstance(e, av.error.InvalidDataError) or "invalid data" in msg:
        return err("not_rtsp", f"{host}:{port} didn't answer as an RTSP server: check the "
                               f"port (RTSP's default is 554; 80 and 443 are its web page)")
    return err("error", f"can't open the stream: {stream._describe(e)}")


def browser_support(codec_name: str, profile_idc: int) -> tuple[str, str]:
    """("yes" | "depends" | "no", why): whether nvr's web UI can play it in a browser."""
    if codec_name == "h264":
        if profile_idc in _BROWSER_H264_PROFILES:
            return "yes", "H.264 Baseline, Main and High play in every current browser"
        return "no", (f"browsers decode H.264 Baseline, Main and High, not "
                      f"{_H264_PROFILES.get(profile_idc, profile_idc)}")
    return "depends", ("H.265 plays in Safari, and in Chrome and Edge only where the "
                       "computer has hardware H.265 decoding; not in Firefox: for the web "
                       "UI, use an H.264 sub stream")


def _profile_level(p: codec.VideoParameters) -> tuple[str, str]:
    if p.codec == "h264":
        profile = _H264_PROFILES.get(p.profile_idc, f"profile_idc {p.profile_idc}")
        if p.profile_idc == 66 and int(p.rfc6381_codec[7:9], 16) & 0x40:
            profile = "Constrained Baseline"
        level = "1b" if p.level_idc == 9 else f"{p.level_idc // 10}.{p.level_idc % 10}"
    else:
        profile = _H265_PROFILES.get(p.profile_idc, f"profile_idc {p.profile_idc}")
        level = f"{p.level_idc // 30}.{p.level_idc % 30 // 3}"  # level_idc = 30 * level
    return profile, level


# ---------------------------------------------------------------------------------------
# Measuring

class Meter:
    """Frame rate, bitrate and key frame interval from (pts, key, size) of each packet.

    Pure bookkeeping (tests feed it made-up packets). Camera time, not wall time: the
    packets read while FFmpeg probed the stream arrive all at once, but with their pts.
    """

    def __init__(self, measure_sec: float = MEASURE_SEC):
        self.measure_90k = round(measure_sec * 90_000)
        self.first_pts: int | None = None
        self.last_pts: int | None = None
        self.frames = 0           # packets with a pts
        self.bytes = 0            # their sizes, but the last's (its duration is unknown)
        self._last_size = 0
        self.keys: list[tuple[int, int]] = []   # (frame number, pts) of each key frame

    def add(self, pts_90k: int, is_key: bool, size: int) -> None:
        if self.first_pts is None:
            self.first_pts = pts_90k
        self.bytes += self._last_size
        self._last_size = size
        if is_key:
            self.keys.append((self.frames, pts_90k))
        self.frames += 1
        self.last_pts = pts_90k

    @property
    def span_90k(self) -> int:
        return 0 if self.first_pts is None else self.last_pts - self.first_pts

    def done(self) -> bool:
        """Enough: MEASURE_SEC of frames and two key frames."""
        return self.span_90k >= self.measure_90k and len(self.keys) >= 2

    def frame_rate(self) -> float | None:
        return (self.frames - 1) * 90_000 / self.span_90k if self.span_90k > 0 else None

    def bitrate_bps(self) -> int | None:
        return round(self.bytes * 8 * 90_000 / self.span_90k) if self.span_90k > 0 else None

    def gop(self) -> tuple[int, float] | None:
        """(frames, seconds) of the longest interval between consecutive key frames seen."""
        pairs = list(zip(self.keys, self.keys[1:]))
        if not pairs:
            return None
        (n0, p0), (n1, p1) = max(pairs, key=lambda ab: ab[1][1] - ab[0][1])
        return n1 - n0, (p1 - p0) / 90_000

    def gop_min_sec(self) -> float:
        """A lower bound of the key frame interval from the frames seen: the longest run
        of them without a key frame (before the first one, or after the last)."""
        if not self.keys:
            return self.span_90k / 90_000
        before = self.keys[0][1] - self.first_pts
        after = self.last_pts - self.keys[-1][1]
        return max(before, after) / 90_000


# ---------------------------------------------------------------------------------------
# The test

def run(url: str, *, username: str = "", password: str = "", transport: str = "tcp",
        limit_sec: float = LIMIT_SEC, max_gop_sec: float = MAX_GOP_SEC,
        measure_sec: float = MEASURE_SEC, on_phase=None, clocks: clock.Clocks | None = None,
        require_rtsp: bool = True) -> Result:
    """Tests `url` (see the module docstring); returns a Result or raises StreamTestError.

    `transport` is "tcp", "udp" or "default" (FFmpeg's choice: UDP, then TCP).
    `require_rtsp=False` lets tests open a local file the same way.
    """
    clocks = clocks or clock.RealClocks()
    if transport not in ("tcp", "udp", "default", ""):
        raise StreamTestError("bad_url", f"transport {transport!r}: expected tcp, udp or "
                                         f"default")
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if require_rtsp and scheme not in ("rtsp", "rtsps"):
        raise StreamTestError("not_rtsp", f"{url.split('?')[0][:80]!r} is not an rtsp:// "
                                          f"URL: nvr records RTSP streams; look up the "
                                          f"camera's RTSP URL (its manual, or ONVIF)",
                              f"scheme {scheme or '(none)'!r}")
    try:
        full_url = stream.url_with_credentials(url, username, password)
        urllib.parse.urlsplit(url).port   # ValueError for a bad port
    except ValueError as e:
        raise StreamTestError("bad_url", f"bad URL: {e}; expected rtsp://host[:port]/path",
                              str(e)) from None
    began = clocks.monotonic()
    events: queue.Queue = queue.Queue()
    cancel = threading.Event()
    worker = threading.Thread(
        target=_work, name="streamtest", daemon=True,
        args=(events, cancel, clocks, began, url, full_url, transport, limit_sec,
              max_gop_sec, measure_sec))
    worker.start()
    phase = PHASES[0]
    limit_ns = round(limit_sec * clock.NANOS_PER_SEC)
    try:
        while True:
            left = (began + limit_ns - clocks.monotonic()) / clock.NANOS_PER_SEC
            try:
                what, value = clocks.recv_timeout(events, max(left, 0.0))
            except queue.Empty:
                raise _deadline_error(phase, url, limit_sec) from None
            if what == "phase":
                phase = value
                if on_phase is not None:
                    on_phase(value)
                continue
            elapsed = (clocks.monotonic() - began) / clock.NANOS_PER_SEC
            value.elapsed_sec = elapsed
            if what == "error":
                raise value
            return value
    except StreamTestError as e:
        if e.elapsed_sec is None:
            e.elapsed_sec = (clocks.monotonic() - began) / clock.NANOS_PER_SEC
        if password:   # FFmpeg's messages may quote the URL it was given: never show it
            for secret in {password, urllib.parse.quote(password, safe="")}:
                e.detail = e.detail.replace(secret, "***")
        raise
    finally:
        cancel.set()   # a worker still blocked in FFmpeg ends at its own timeout


def _deadline_error(phase: str, url: str, limit_sec: float) -> StreamTestError:
    host, port = _host_port(url)
    if phase == "connecting":
        return StreamTestError("timeout", f"no answer from {host}:{port} within "
                                          f"{limit_sec:g} s: check the address and port, "
                                          f"and that no firewall drops RTSP",
                               "the limit passed while connecting", phase)
    if phase == PHASES[1]:
        return StreamTestError("no_key_frame", _no_key_message(limit_sec), "the limit passed "
                               "while waiting for a key frame", phase)
    return StreamTestError("timeout", f"the camera stopped sending video while measuring "
                                      f"(limit {limit_sec:g} s): try again; if it repeats, "
                                      f"the camera or network is overloaded",
                           "the limit passed while measuring", phase)


def _no_key_message(limit_sec: float) -> str:
    return (f"no key frame within {limit_sec:g} s: set the camera's key frame (I-frame) "
            f"interval to 1-2 s worth of frames, and turn off \"smart\" codecs (H.264+, "
            f"H.265+) that stretch it")


def _work(events: queue.Queue, cancel: threading.Event, clocks: clock.Clocks, began: int,
          url: str, full_url: str, transport: str, limit_sec: float, max_gop_sec: float,
          measure_sec: float) -> None:
    """The worker thread: posts ("phase", name)s, then ("result", Result) or
    ("error", StreamTestError). Never raises (a bug's traceback is logged, and the
    caller gets kind "error")."""
    try:
        r = _run(events, cancel, clocks, began, url, full_url, transport, limit_sec,
                 max_gop_sec, measure_sec)
        events.put(("result", r))
    except StreamTestError as e:
        events.put(("error", e))
    except Exception as e:  # a bug: keep its traceback in the log, answer anyway
        logger.exception("stream test of %s failed", url)
        events.put(("error", StreamTestError("error", f"stream test failed: {e}",
                                             describe(e))))


def _run(events, cancel, clocks, began, url, full_url, transport, limit_sec, max_gop_sec,
         measure_sec) -> Result:
    import av
    import av.logging
    import snapshot
    limit_ns = round(limit_sec * clock.NANOS_PER_SEC)
    stop_at = began + limit_ns - round(FINISH_SEC * clock.NANOS_PER_SEC)

    def left_sec() -> float:
        return max(0.1, (began + limit_ns - clocks.monotonic()) / clock.NANOS_PER_SEC)

    phase = "connecting"
    events.put(("phase", phase))
    _resolve(url, limit_sec)
    options = {}
    if url.lower().startswith("rtsp"):
        options.update(stream.RTSP_OPTIONS)
        if transport and transport != "default":
            options["rtsp_transport"] = transport
    # Probing (avformat_find_stream_info) would wait for a key frame, up to 5 s, inside
    # av.open; nvr needs nothing from it (the SDP has the codec and time base, the SPS
    # the rest), so it is cut short and the wait is the "waiting for a key frame" phase.
    options["analyzeduration"] = "1"
    logs: list = []
    try:
        # PyAV's timeouts: the open's, and each read's; the caller's limit is the bound.
        # FFmpeg's messages (PyAV 10 passes them on; later PyAVs are silent by default)
        # are kept for `detail` rather than logged: the message says it all.
        open_timeout = max(0.1, left_sec() - FINISH_SEC)   # to answer before the caller gives up
        opening = clocks.monotonic()
        with av.logging.Capture(local=True) as logs:
            container = av.open(full_url, options=options,
                                timeout=(open_timeout, open_timeout))
    except (av.error.FFmpegError, OSError) as e:
        took = (clocks.monotonic() - opening) / clock.NANOS_PER_SEC
        err = classify_open_error(e, url, limit_sec, timed_out=took >= 0.9 * open_timeout)
        said = [m for level, _name, m in logs if level <= av.logging.ERROR and m.strip()]
        if said:
            err.detail += "; FFmpeg: " + " / ".join(m.strip() for m in said[-2:])
        raise err from None
    try:
        vs = container.streams.video
        if not vs:
            raise StreamTestError("unsupported_codec", "the stream has no video track: "
                                  "check the URL (some cameras serve audio alone on "
                                  "another path)", "no video stream", phase)
        st = vs[0]
        ctx = st.codec_context
        name = ctx.name
        if name not in _CODECS:
            raise StreamTestError(
                "unsupported_codec", f"the stream is {_codec_label(name)}: nvr records H.264 "
                f"and H.265; set the camera's stream to H.264 (or H.265)",
                f"codec {name!r}", phase)
        codec_name = _CODECS[name]
        params = None
        extradata = ctx.extradata
        if extradata:
            try:
                params = codec.parameters_from_extradata(codec_name, extradata)
            except codec.CodecError as e:
                logger.info("%s: the SDP's parameter sets can't be used (%s)", url, e)
        tb = st.time_base
        tb = fractions.Fraction(tb.numerator, tb.denominator) if tb else \
            fractions.Fraction(1, 90_000)
        ctx.thread_count = 1
        meter = Meter(measure_sec)
        jpeg = b""
        phase = PHASES[1]
        events.put(("phase", phase))
        try:
            for pkt in container.demux(st):
                if cancel.is_set():
                    raise StreamTestError("timeout", "cancelled", "", phase)
                if pkt.pts is None:
                    continue
                pts = pkt.pts * tb.numerator * 90_000 // tb.denominator
                key = pkt.is_keyframe
                meter.add(pts, key, pkt.size)
                if key and not jpeg:
                    data = codec.to_length_prefixed(bytes(pkt))
                    sets, _ = codec.split_parameter_sets(codec_name, data)
                    if sets:
                        try:
                            params = codec.parameters_from_frame(codec_name, sets) or params
                        except codec.CodecError as e:   # says which field, and what to do
                            raise StreamTestError("unsupported_codec", str(e), describe(e),
                                                  phase) from None
                    if params is None:
                        raise StreamTestError("unsupported_codec", "no parameter sets (SPS/PPS) "
                                              "in the SDP or the first key frame: nvr can't "
                                              "record this stream", "", phase)
                    jpeg = _snapshot(ctx, pkt, params, snapshot)
                    phase = PHASES[2]
                    events.put(("phase", phase))
                if meter.done() or clocks.monotonic() >= stop_at:
                    break
                if jpeg and meter.gop_min_sec() > max_gop_sec:
                    break   # too far apart already: _result says so
            else:
                raise StreamTestError("stream_ended", "the camera ended the stream within "
                                      "seconds: try again; if it repeats, check the camera's "
                                      "log or connection limit", "end of stream", phase)
        except av.error.ExitError as e:
            raise _deadline_error(phase, url, limit_sec) from e
        except (av.error.FFmpegError, OSError) as e:
            err = classify_open_error(e, url, limit_sec, phase)
            if err.kind in ("not_rtsp", "error"):   # it was RTSP: it answered before
                err = StreamTestError("error", f"reading the stream failed "
                                      f"({stream._describe(e)}): try again; if it repeats, "
                                      f"check the camera's log", err.detail, phase)
            raise err from None
        if not jpeg:
            err = StreamTestError("no_key_frame", _no_key_message(limit_sec),
                                  f"{meter.frames} frames over {meter.span_90k / 90_000:.1f} "
                                  f"s, none of them a key frame", phase)
            raise err
        return _result(url, transport, limit_sec, max_gop_sec, params, meter, jpeg, phase)
    finally:
        container.close()


def _resolve(url: str, limit_sec: float) -> None:
    """Looks the host up first: FFmpeg reports a name that doesn't resolve as EIO, which
    it uses for much else (the reason is only in its log)."""
    import socket
    try:
        p = urllib.parse.urlsplit(url)
        host = p.hostname
        if host:
            socket.getaddrinfo(host, p.port or 554, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise StreamTestError("name_not_resolved",
                              f"can't resolve the host name {host!r}: check its spelling, "
                              f"or use the camera's IP address",
                              f"gaierror [{e.errno}]: {e.strerror}", "connecting") from None
    except (ValueError, OSError):   # bad URL or no network at all: FFmpeg's to report
        pass


def _codec_label(name: str) -> str:
    return {"mjpeg": "MJPEG", "mpeg4": "MPEG-4 Part 2", "h263": "H.263",
            "mpeg2video": "MPEG-2"}.get(name, repr(name))


def _snapshot(ctx, pkt, params: codec.VideoParameters, snapshot) -> bytes:
    """The key frame `pkt` as a JPEG at the display size."""
    import av
    try:
        frames = list(ctx.decode(pkt))
        if not frames:
            frames = list(ctx.decode(None))   # a decoder holding it back: flush
    except av.error.FFmpegError as e:
        raise StreamTestError("error", "the camera's key frame could not be decoded: check "
                              "its encoder settings, or try again", describe(e),
                              PHASES[1]) from None
    if not frames:
        raise StreamTestError("error", "the camera's key frame decoded to nothing: check "
                              "its encoder settings, or try again", "", PHASES[1])
    size = snapshot.output_size(params.width, params.height,
                                (params.pasp_h_spacing, params.pasp_v_spacing), None, None)
    return snapshot.encode_jpeg(frames[0], size)


def _result(url, transport, limit_sec, max_gop_sec, p: codec.VideoParameters, meter: Meter,
            jpeg: bytes, phase: str) -> Result:
    profile, level = _profile_level(p)
    browser, note = browser_support(p.codec, p.profile_idc)
    dw, dh = _display_size(p)
    gop = meter.gop()
    r = Result(
        url=url, transport=transport or "default", codec=p.codec,
        rfc6381_codec=p.rfc6381_codec, profile=profile, level=level, width=p.width,
        height=p.height, pixel_aspect_ratio=(p.pasp_h_spacing, p.pasp_v_spacing),
        display_width=dw, display_height=dh, frame_rate=meter.frame_rate(),
        sps_frame_rate=float(p.frame_rate) if p.frame_rate else None,
        bitrate_bps=meter.bitrate_bps(), measured_sec=meter.span_90k / 90_000,
        gop_frames=gop[0] if gop else None, gop_sec=gop[1] if gop else None,
        gop_min_sec=None if gop else meter.gop_min_sec(), browser=browser,
        browser_note=note, snapshot_jpeg=jpeg, limit_sec=limit_sec)
    gop_sec = gop[1] if gop else meter.gop_min_sec()
    if gop_sec > max_gop_sec:
        e = StreamTestError(
            "gop_too_long",
            f"key frames are {'over ' if not gop else ''}{gop_sec:.1f} s apart (more than "
            f"{max_gop_sec:g} s): nvr cuts its one-minute recordings, starts live view and "
            f"decodes stills at key frames; set the camera's key frame (I-frame) interval to "
            f"1-2 s worth of frames and turn off \"smart\" codecs (H.264+, H.265+)",
            f"gop {gop[0]} frames, {gop[1]:.3f} s" if gop else
            f"one key frame; {gop_sec:.3f} s of frames without another", phase)
        e.partial = r.to_json()
        raise e
    if r.measured_sec < meter.measure_90k / 90_000 * 0.9:
        r.warnings.append(f"measured over {r.measured_sec:.1f} s only: the frame rate and "
                          f"bitrate are rough")
    if not gop:
        r.warnings.append(f"only one key frame within the limit: key frames are at least "
                          f"{gop_sec:.1f} s apart")
    return r


def _display_size(p: codec.VideoParameters) -> tuple[int, int]:
    import snapshot
    return snapshot.output_size(p.width, p.height, (p.pasp_h_spacing, p.pasp_v_spacing),
                                None, None)
