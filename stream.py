"""RTSP ingest through PyAV: one streamer thread per recorded stream.

A `Streamer` (thread `s-<camera>-<type>`) loops: open the camera's stream
through an `Opener`, feed every frame to a `writer.Writer`, and when anything
goes wrong (the camera hangs up, a timeout, bad data) end the run (its last
recording gets a trailing zero and the reason as `end_reason`), log why, wait
1 s and reconnect. Frames before the first key frame are dropped. A key frame
carrying new parameter sets starts a new recording in the same run.

The seam: `Opener.open(...)` returns a `Source` with the stream's initial
`codec.VideoParameters` and an iterator of `Frame`s (90 kHz pts, key flag,
4-byte length-prefixed NAL units). `PyAvOpener` is the real one (RTSP or a
file); `DemoOpener` encodes a moving test pattern locally (`nvr.py run
--demo`); tests wrap either to replay clips in simulated time.

What PyAV gives (measured, see docs/performance.md): Annex B extradata and
packets from RTSP (length-prefixed from mp4 files; codec.py takes both), pts
in a 1/90000 time base, sometimes a first packet without pts, end of stream
as the end of `demux()`, a 401 as `av.error.HTTPUnauthorizedError`, a stall
as `av.error.ExitError` after the read timeout.

Credentials: the stream's URL has none; the camera's username and password
are put into the URL handed to FFmpeg at open time only, percent-encoded, and
never logged (logs show the URL without them).

Local time (reference §3.4): each frame's local time is the wall clock at
the session's open plus the monotonic time since, so a wall clock step during
a run doesn't move frames; writer.py reconciles it with the camera's clock.
"""

from __future__ import annotations

import dataclasses
import fractions
import logging
import threading
import urllib.parse

import clock
import codec
import recording
import writer as writermod

logger = logging.getLogger(__name__)

OPEN_TIMEOUT_SEC = 30
FRAME_TIMEOUT_SEC = 30
RETRY_SEC = 1
OPEN_WARN_SEC = 5  # warn about opens slower than this


class StreamError(Exception):
    """The stream can't go on; the message becomes the run's end reason."""


@dataclasses.dataclass(slots=True)
class Frame:
    pts_90k: int
    is_key: bool
    data: bytes                                  # length-prefixed NAL units (bytes-like)
    parameters: codec.VideoParameters | None = None  # set on a key frame with new ones


class Source:
    """An opened stream. Iterate `frames()`; always `close()`."""

    parameters: codec.VideoParameters

    def frames(self):
        raise NotImplementedError

    def close(self) -> None:
        pass


class Opener:
    def open(self, url: str, *, username: str = "", password: str = "",
             transport: str = "tcp") -> Source:
        raise NotImplementedError


def url_with_credentials(url: str, username: str, password: str) -> str:
    """`url` with the userinfo `username:password` (RFC 3986 §3.2.1), each
    percent-encoded; any userinfo already in `url` is replaced.

    The host and port are kept exactly as written, not rebuilt from the parsed
    hostname (which drops an IPv6 literal's brackets, so `[fe80::1]:554`
    became `fe80::1:554`, which FFmpeg can't parse). So is an IPv6 zone id:
    FFmpeg (libavformat 62) takes it raw (`[fe80::1%eth0]`) and refuses RFC
    6874's `%25eth0` ("Port missing in uri"), so it is not re-encoded either.
    """
    if not username and not password:
        return url
    p = urllib.parse.urlsplit(url)   # ValueError for bad IPv6 brackets: PyAvOpener says so
    cred = urllib.parse.quote(username, safe="")
    if password:
        cred += ":" + urllib.parse.quote(password, safe="")
    host_port = p.netloc.rpartition("@")[2]  # a host can't hold "@"; userinfo can
    return urllib.parse.urlunsplit(p._replace(netloc=f"{cred}@{host_port}"))


_CODECS = {"h264": "h264", "hevc": "h265", "h265": "h265"}


class PyAvSource(Source):
    """Frames from a PyAV container's first video stream.

    The per-frame path is kept short (it runs 30 times a second per camera, and its
    Python cost is most of what nvr spends beyond PyAV's own demuxing; see
    docs/performance.md): packets from a stream whose extradata is Annex B (RTSP)
    are converted in one copy (`codec.annexb_to_length_prefixed`); others are
    told apart per packet (`codec.to_length_prefixed`). A key frame's parameter
    sets are parsed only when they differ from the previous key frame's.

    Some cameras send a key frame's parameter sets as a packet of their own,
    flagged key. That packet is no frame (stripped of its sets it would be
    empty, which writer.py refuses); its sets are carried to the next key
    frame that has none of its own, as if they had come with it.
    """

    def __init__(self, container, what: str):
        import av  # noqa: F401  (imported where used: tests without PyAV skip it)
        self.container = container
        self.what = what
        streams = container.streams.video
        if not streams:
            raise StreamError(f"{what} has no video stream")
        self.stream = streams[0]
        name = self.stream.codec_context.name
        if name not in _CODECS:
            raise StreamError(f"{what}: unsupported codec {name!r}; nvr records H.264 and "
                              f"H.265 (set the camera's stream to one of them)")
        self.codec = _CODECS[name]
        tb = self.stream.time_base
        self.time_base = fractions.Fraction(tb.numerator, tb.denominator) if tb else None
        self._packets = container.demux(self.stream)
        self._pending: list[Frame] = []
        self._last_sets = b""     # the last key frame's parameter sets...
        self._last_parameters: codec.VideoParameters | None = None  # ...parsed
        extradata = self.stream.codec_context.extradata
        # Annex B extradata (RTSP: from the SDP's sprop-parameter-sets) means Annex B
        # packets; an avcC/hvcC record (mp4) means length-prefixed ones.
        self._annexb = bool(extradata) and extradata.startswith((b"\x00\x00\x01",
                                                                  b"\x00\x00\x00\x01"))
        params = None
        if extradata:
            try:
                params = codec.parameters_from_extradata(self.codec, extradata)
            except codec.CodecError as e:
                # E.g. an H.265 SDP with sprop-sps/pps but no sprop-vps: the key frames
                # carry all of them in-band, as for a camera whose SDP has none.
                logger.info("%s: the SDP's parameter sets can't be used (%s); taking them "
                            "from the first key frame", what, e)
        if params is None:
            # No usable extradata (no sprop-parameter-sets in the SDP): take the
            # parameters from the first key frame, which must carry them in-band.
            for f in self._read():
                if f.is_key:
                    params = codec.parameters_from_frame(self.codec, f.data)
                    if params is None:
                        raise StreamError(f"{what}: no parameter sets in the SDP or the "
                                          f"first key frame")
                    sets, rest = codec.split_parameter_sets(self.codec, f.data)
                    self._last_sets, self._last_parameters = sets, params
                    if rest:  # else a packet of parameter sets alone: no frame
                        f.data = rest
                        self._pending.append(f)
                    break
            else:
                raise StreamError(f"{what}: ended before the first key frame")
        self.parameters = params

    def _read(self):
        """Frames from the packets, without parameter checks (the first key frame,
        at open, when there is no extradata)."""
        for pkt, pts in self._packets_with_pts():
            data = self._convert(pkt)
            if data:
                yield Frame(pts, pkt.is_keyframe, data)

    def _packets_with_pts(self):
        for pkt in self._packets:
            pts = pkt.pts
            if pts is None:
                if pkt.size:  # else the demuxer's flush packet at end of stream
                    logger.debug("%s: skipping a packet without pts", self.what)
                continue
            yield pkt, self._rescale(pts)

    def _rescale(self, pts: int) -> int:
        tb = self.time_base
        if tb == fractions.Fraction(1, 90_000):
            return pts
        return pts * tb.numerator * 90_000 // tb.denominator

    def _convert(self, pkt):
        if self._annexb:
            return codec.annexb_to_length_prefixed(pkt)
        return codec.to_length_prefixed(bytes(pkt))

    def _parameters_of(self, sets: bytes) -> codec.VideoParameters | None:
        """`codec.parameters_from_frame` of a key frame's parameter sets, parsed only
        when they differ from the last key frame's (equal bytes, equal result)."""
        if sets != self._last_sets:
            p = codec.parameters_from_frame(self.codec, sets) if sets else None
            self._last_sets, self._last_parameters = sets, p
        return self._last_parameters

    def frames(self):
        import av
        yield from self._pending
        self._pending = []
        current = self.parameters.sample_entry
        # What `_read` does, inlined with names bound once: one generator, a few
        # operations per frame (this loop runs 30 times a second per camera).
        rescale = self.time_base != fractions.Fraction(1, 90_000)  # RTSP's is 1/90000
        convert = codec.annexb_to_length_prefixed if self._annexb else self._convert
        split_parameter_sets, name = codec.split_parameter_sets, self.codec
        carried = b""  # the sets of a key packet that held nothing else, for the next key frame
        try:
            for pkt in self._packets:
                pts = pkt.pts
                if pts is None:
                    if pkt.size:  # else the demuxer's flush packet at end of stream
                        logger.debug("%s: skipping a packet without pts", self.what)
                    continue
                data = convert(pkt)
                if not data:
                    continue
                if rescale:
                    pts = self._rescale(pts)
                f = Frame(pts, pkt.is_keyframe, data)
                if f.is_key:
                    sets, rest = split_parameter_sets(name, data)
                    if not rest:  # parameter sets alone (data isn't empty, so sets aren't)
                        # Newest first: parsing takes the first set of each kind, so
                        # an SPS sent again replaces the carried one, and separate SPS
                        # and PPS packets add up. Bounded, should they never stop.
                        carried = sets + carried if len(carried) < 65536 else sets
                        continue
                    if carried:
                        if not sets:
                            sets = carried
                        carried = b""
                    p = self._parameters_of(sets)
                    if p is not None:
                        if p.sample_entry != current:
                            f.parameters, current = p, p.sample_entry
                        f.data = rest
                yield f
        except av.error.ExitError:
            raise StreamError(f"no frame for {FRAME_TIMEOUT_SEC} s") from None
        except (av.error.FFmpegError, OSError) as e:
            raise StreamError(f"reading the stream: {_describe(e)}") from None
        raise StreamError("the camera ended the stream")

    def close(self) -> None:
        self.container.close()


def strip_parameter_sets(codec_name: str, data: bytes) -> bytes:
    """Drops in-band SPS/PPS/VPS from a length-prefixed access unit: `avc1`/`hvc1`
    sample entries carry them (ISO/IEC 14496-15), as FFmpeg's mp4 muxer does;
    a change is noticed first and becomes a new sample entry."""
    return codec.split_parameter_sets(codec_name, data)[1]


class PyAvOpener(Opener):
    def open(self, url: str, *, username: str = "", password: str = "",
             transport: str = "tcp") -> Source:
        import av
        options = {}
        if url.startswith("rtsp"):
            if transport:
                options["rtsp_transport"] = transport
            options["user_agent"] = "nvr"
        try:
            full_url = url_with_credentials(url, username, password)
        except ValueError as e:   # e.g. "Invalid IPv6 URL" (config checks this; an old db)
            raise StreamError(f"{url}: bad URL ({e}); fix it with `nvr.py config stream "
                              f"edit`") from None
        try:
            container = av.open(full_url, options=options,
                                timeout=(OPEN_TIMEOUT_SEC, FRAME_TIMEOUT_SEC))
        except av.error.HTTPUnauthorizedError:
            raise StreamError(f"{url}: the camera refused the credentials; set them with "
                              f"`nvr.py config camera edit NAME --username U "
                              f"--password-stdin`") from None
        except (av.error.FFmpegError, OSError) as e:
            raise StreamError(f"{url}: can't open: {_describe(e)}") from None
        try:
            return PyAvSource(container, url)
        except BaseException:
            container.close()
            raise


def _describe(e: BaseException) -> str:
    # PyAV's messages repeat the URL, credentials included: drop that part.
    msg = getattr(e, "strerror", None) or str(e)
    return msg.split(": '")[0]


class Streamer:
    """Records one stream: connects, writes runs, reconnects after errors."""

    def __init__(self, db, stream_id: int, syncer, opener: Opener, *,
                 shutdown: threading.Event, rotate_offset_sec: int = 0,
                 rotate_interval_sec: int = writermod.ROTATE_INTERVAL_SEC):
        self.db = db
        self.clocks: clock.Clocks = db.clocks
        self.stream_id = stream_id
        self.syncer = syncer
        self.opener = opener
        self.shutdown = shutdown
        self.rotate_offset_sec = rotate_offset_sec
        self.rotate_interval_sec = rotate_interval_sec
        s = db.streams[stream_id]
        c = db.cameras[s.camera_id]
        self.name = f"{c.short_name}-{s.type}"
        self.url = s.config.get("url", "")
        self.transport = s.config.get("rtspTransport", "tcp") or ""
        self.username = c.config.get("username", "")
        self.password = c.config.get("password", "")
        self.thread: threading.Thread | None = None
        self.runs = 0  # sessions opened, for tests and logs

    def start(self) -> None:
        self.thread = threading.Thread(target=self.run, name=f"s-{self.name}", daemon=True)
        self.thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self.thread is not None:
            self.thread.join(timeout)

    def run(self) -> None:
        while not self.shutdown.is_set():
            try:
                self.run_once()
            except (StreamError, writermod.WriterError, codec.CodecError, clock.ShutdownError) as e:
                if self.shutdown.is_set():
                    break
                logger.warning("%s: sleeping for %d s after error: %s", self.name, RETRY_SEC, e)
            except Exception:
                logger.exception("%s: unexpected error; retrying in %d s", self.name, RETRY_SEC)
            self.clocks.wait(self.shutdown, RETRY_SEC)
        logger.info("%s: shutting down", self.name)

    def run_once(self) -> None:
        logger.info("%s: opening %s", self.name, self.url)
        # PyAV probes until it has seen a key frame: 1-3 s is normal (docs/performance.md).
        with clock.TimerGuard(self.clocks, lambda: f"{self.name}: opening {self.url}",
                              limit_sec=OPEN_WARN_SEC):
            src = self.opener.open(self.url, username=self.username, password=self.password,
                                   transport=self.transport)
        self.runs += 1
        # Local time = wall time at open + monotonic time since (§3.4).
        realtime_at_open = self.clocks.realtime()
        monotonic_at_open = self.clocks.monotonic()
        w = writermod.Writer(self.db, self.stream_id, self.syncer, shutdown=self.shutdown,
                             rotate_offset_sec=self.rotate_offset_sec,
                             rotate_interval_sec=self.rotate_interval_sec)
        reason = "NVR shutdown"
        # The per-frame loop: names bound once (it runs 30 times a second per camera).
        stopping, monotonic, to_90k = self.shutdown.is_set, self.clocks.monotonic, \
            recording.to_90k_from_ns
        write = w.write
        local_offset_ns = realtime_at_open - monotonic_at_open
        try:
            vse_id = self._insert_entry(src.parameters)
            seen_key = False
            for f in src.frames():
                if stopping():
                    break
                if not seen_key:
                    if not f.is_key:
                        continue
                    seen_key = True
                    logger.info("%s: first key frame; recording", self.name)
                if f.parameters is not None:
                    logger.info("%s: new video parameters: %dx%d %s", self.name,
                                f.parameters.width, f.parameters.height,
                                f.parameters.rfc6381_codec)
                    vse_id = self._insert_entry(f.parameters)
                write(f.data, to_90k(local_offset_ns + monotonic()), f.pts_90k, f.is_key, vse_id)
        except BaseException as e:
            reason = str(e) or type(e).__name__
            raise
        finally:
            try:
                w.close(reason)
            finally:
                src.close()

    def _insert_entry(self, p: codec.VideoParameters) -> int:
        return self.db.insert_video_sample_entry(p.width, p.height, p.rfc6381_codec,
                                                 p.sample_entry, p.pasp_h_spacing,
                                                 p.pasp_v_spacing)
