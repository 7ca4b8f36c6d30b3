"""RTSP ingest through PyAV: one streamer thread per recorded stream.

A `Streamer` (thread `s-<camera>-<type>`) loops: open the camera's stream
through an `Opener`, feed every frame to a `writer.Writer`, and when anything
goes wrong (the camera hangs up, a timeout, bad data) end the run (its last
recording gets a trailing zero and the reason as `end_reason`), log why, wait
1 s and reconnect. An error that persists (a camera that is off, a wrong
password) is logged once, then counted at a falling rate, and its end once more
("recording again after 3 h 12 min, 10,800 failed attempts"): logrepeat.py.
Frames before the first key frame are dropped. A key frame carrying new
parameter sets starts a new recording in the same run.

The seam: `Opener.open(...)` returns a `Source` with the stream's initial
`codec.VideoParameters` and an iterator of `Frame`s (90 kHz pts, key flag,
4-byte length-prefixed NAL units). `PyAvOpener` is the real one (RTSP or a
file); `DemoOpener` encodes a moving test pattern locally (`nvr.py run
--demo`); tests wrap either to replay clips in simulated time.

RTSP is opened for video alone (`RTSP_OPTIONS`: a camera's audio or metadata track
is never set up), so FFmpeg times the video by its RTP clock, not the RTCP sender
reports' NTP clock.

What PyAV gives (measured, see docs/performance.md): Annex B extradata and
packets from RTSP (length-prefixed from mp4 files; codec.py takes both), pts
in a 1/90000 time base, sometimes a first packet without pts, end of stream
as the end of `demux()`, a 401 as `av.error.HTTPUnauthorizedError`, a stall
as `av.error.ExitError` after the read timeout.

FRAME_TIMEOUT_SEC without a packet, while the stream waits on the camera, ends the run
("no frame for 30 s"): `StallWatch` times that itself and then interrupts the read
through PyAV's timeout field, so the per-poll cost of PyAV's read timeout isn't paid
while frames flow; shutdown interrupts every read at once, and one stream's stop
(`Streamer.stop`: recorder.py, a configuration change) that stream's read.

Credentials: the stream's URL has none; the camera's username and password
are put into the URL handed to FFmpeg at open time only, percent-encoded, and
never logged (logs show the URL without them).

Metrics (metrics.py): each recorded frame adds to its stream's `StreamStats` (plain
integers, this thread the only writer); each run counts its start, its connection
attempt and its end's kind (`end_kind`: `StreamError.kind`, a fixed set).

Local time (reference §3.4): each frame's local time is the wall clock at
the session's open plus the monotonic time since, so a wall clock step during
a run doesn't move frames; writer.py reconciles it with the camera's clock.
"""

from __future__ import annotations

import ctypes
import dataclasses
import fractions
import logging
import re
import struct
import threading
import time
import urllib.parse
import weakref

import clock
import codec
import logrepeat
import recording
import writer as writermod

logger = logging.getLogger(__name__)

OPEN_TIMEOUT_SEC = 30
FRAME_TIMEOUT_SEC = 30
RETRY_SEC = 1
OPEN_WARN_SEC = 5  # warn about opens slower than this


# FFmpeg's rtsp demuxer options for every camera. Video only (`allowed_media_types`):
# nvr records no audio, and with more than one stream FFmpeg times each packet from the
# camera's RTCP sender reports (their NTP clock, libavformat/rtpdec.c finalize_packet)
# rather than from the RTP clock alone, so a camera sending audio had its video's frame
# durations jitter by a few ticks at each report, and an NTP step on the camera (its
# clock set, or synced at last) stepped the video's pts: backwards ended the run,
# forwards made one frame as long as the step. An ONVIF metadata track counts as a
# stream too. Other tracks in the SDP aren't set up at all (FFmpeg 5.1, PyAV 10, too).
RTSP_OPTIONS = {"user_agent": "nvr", "allowed_media_types": "video"}


class StreamError(Exception):
    """The stream can't go on; the message becomes the run's end reason, `kind` (one of
    metrics.END_KINDS) the `reason` label its end is counted under."""

    def __init__(self, message: str, kind: str = "bad_stream"):
        super().__init__(message)
        self.kind = kind


def end_kind(e: BaseException) -> str:
    """The kind of a run's end by exception `e` (metrics.END_KINDS): a fixed set, so the
    counter's label never holds free text (an FFmpeg message, a URL)."""
    if isinstance(e, StreamError):
        return e.kind
    if isinstance(e, writermod.WriterError):
        return e.kind
    if isinstance(e, clock.ShutdownError):
        return "shutdown"
    if isinstance(e, codec.CodecError):
        return "bad_stream"
    if isinstance(e, OSError):
        return "io_error"
    return "error"


# Errors that end a run without being a bug: logged without a traceback (logrepeat.py).
# PyAV's own errors arrive wrapped in StreamError (PyAvOpener, PyAvSource.frames).
EXPECTED_ERRORS = (StreamError, writermod.WriterError, codec.CodecError, clock.ShutdownError,
                   OSError)


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

    def __init__(self, container, what: str, timeout_slot: ctypes.c_double | None = None):
        import av  # noqa: F401  (imported where used: tests without PyAV skip it)
        self.container = container
        self.what = what
        self.packets = 0       # packets read so far, and whether the consumer holds
        self.holding = False   # a frame (not waiting on the camera): what StallWatch reads
        self._watched = timeout_slot is not None
        if self._watched:
            stall_watch.add(self, timeout_slot)
        try:
            self._init()
        except BaseException:
            self.close()
            raise
        self.holding = True  # until frames() is asked for a frame of the camera's

    def _init(self) -> None:
        container, what = self.container, self.what
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
        import av
        try:
            for pkt, pts in self._packets_with_pts():
                data = self._convert(pkt)
                if data:
                    yield Frame(pts, pkt.is_keyframe, data)
        except av.error.ExitError:
            raise StreamError(f"no frame for {FRAME_TIMEOUT_SEC} s", "stalled") from None
        except (av.error.FFmpegError, OSError) as e:
            raise StreamError(f"reading the stream: {_describe(e)}", "read_error") from None

    def _packets_with_pts(self):
        for pkt in self._packets:
            self.packets += 1
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
        yield from self._pending   # `holding` is True from the open until here
        self._pending = []
        self.holding = False
        current = self.parameters.sample_entry
        # What `_read` does, inlined with names bound once: one generator, a few
        # operations per frame (this loop runs 30 times a second per camera).
        rescale = self.time_base != fractions.Fraction(1, 90_000)  # RTSP's is 1/90000
        convert = codec.annexb_to_length_prefixed if self._annexb else self._convert
        split_parameter_sets, name = codec.split_parameter_sets, self.codec
        carried = b""  # the sets of a key packet that held nothing else, for the next key frame
        try:
            for pkt in self._packets:
                self.packets += 1
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
                self.holding = True
                yield f
                self.holding = False
        except av.error.ExitError:
            raise StreamError(f"no frame for {FRAME_TIMEOUT_SEC} s", "stalled") from None
        except (av.error.FFmpegError, OSError) as e:
            raise StreamError(f"reading the stream: {_describe(e)}", "read_error") from None
        raise StreamError("the camera ended the stream", "camera_ended")

    def close(self) -> None:
        if self._watched:
            stall_watch.remove(self)
            self._watched = False
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
            options.update(RTSP_OPTIONS)
            if transport:
                options["rtsp_transport"] = transport
        try:
            full_url = url_with_credentials(url, username, password)
        except ValueError as e:   # e.g. "Invalid IPv6 URL" (config checks this; an old db)
            raise StreamError(f"{url}: bad URL ({e}); fix it with `nvr.py config stream "
                              f"edit`") from None
        # The frame timeout is StallWatch's where it can be (see there), else PyAV's.
        watched = stall_watch.usable()
        container, slot = self._open(av, url, full_url, options, watched)
        if watched and slot is None:
            container.close()
            stall_watch.give_up()
            logger.warning("%s: PyAV's timeout isn't where it was; opening again, and "
                           "from now on, with PyAV's read timeout", url)
            container, slot = self._open(av, url, full_url, options, False)
        return PyAvSource(container, url, slot)  # closes the container if it fails

    @staticmethod
    def _open(av, url: str, full_url: str, options: dict, watched: bool):
        """(container, its timeout slot for StallWatch or None) of one av.open."""
        began = _pyav_clocks()
        try:
            container = av.open(full_url, options=options,
                                timeout=(OPEN_TIMEOUT_SEC,
                                         None if watched else FRAME_TIMEOUT_SEC))
        except av.error.HTTPUnauthorizedError:
            raise StreamError(f"{url}: the camera refused the credentials; set them with "
                              f"`nvr.py config camera edit NAME --username U "
                              f"--password-stdin`") from None
        except (av.error.FFmpegError, OSError) as e:
            raise StreamError(f"{url}: can't open: {_describe(e)}") from None
        if not watched:
            return container, None
        return container, stall_watch.slot_of(container, began, _pyav_clocks())


def _describe(e: BaseException) -> str:
    # PyAV's messages repeat the URL, credentials included: drop that part.
    msg = getattr(e, "strerror", None) or str(e)
    return msg.split(": '")[0]


# ---------------------------------------------------------------------------------------
# Stall detection

def _pyav_clocks() -> tuple[float, float]:
    """The clocks PyAV's timeouts may use (10 and 18 use the monotonic clock, as
    measured; other releases may use the wall clock)."""
    return time.monotonic(), time.time()


class StallWatch:
    """Ends a stream's read once FRAME_TIMEOUT_SEC have passed without a packet, through
    PyAV's own interrupt callback, without paying for that callback on every poll.

    Why: PyAV's read timeout (`av.open(timeout=(open, read))`) installs an FFmpeg
    interrupt callback that takes the GIL and reads the clock each time FFmpeg polls,
    about 40 times a frame over RTSP/TCP; with several streamer threads contending for
    the GIL that was the largest single cost of recording beyond PyAV's own demuxing
    (docs/performance.md). A socket timeout can't replace it: a camera whose video
    stalls keeps its session up, and RTCP keeps its socket busy. With no read timeout
    (`timeout=(open, None)`) PyAV's callback finds a negative timeout and returns at
    once, without the GIL. So streams are opened that way, and this watch (thread
    "stall-watch", a look a second) times the silence itself: a source whose packet
    count hasn't moved for FRAME_TIMEOUT_SEC, while it was waiting for a packet (not
    while its consumer held a frame: a full disk stalls the writer, and that is no
    stalled camera), gets a zero timeout, so FFmpeg's next poll (every 100 ms while a
    read waits) ends the read and PyAV raises ExitError. That stays (PyAV's demux
    restarting would set "none" again: the watch writes it at every look): FFmpeg's
    RTP depacketizer hands over the frame it was holding back when a read is
    interrupted, and the read after it must end too. With PyAV's own read timeout that
    held-back frame restarted the timer, so a stall ended the run after twice the
    timeout; here it ends 30-31 s after the last packet. `interrupt_all` (shutdown)
    does the same to every stream at once, so none waits on a silent camera.

    PyAV (10 through 18) has no Python way to change a container's timeout after open
    (its `set_timeout` is C-only), so the watch writes the `double timeout` of the
    container's `timeout_info {double start_time; double timeout}` itself, with ctypes
    (found at offset 168 in Debian 12's PyAV 10, 176 in PyAV 18.1).
    Its offset is found once per process on a container opened from an empty buffer
    (the one 8-aligned place in the object holding a start time within the open,
    then -1.0, PyAV's "none"), and checked again on each real container after its
    open. If either fails (a PyAV laid out otherwise), streams are opened with PyAV's
    read timeout instead, as before: more CPU, and a stall takes up to twice as long.
    """

    TICK_SEC = 1.0

    def __init__(self):
        self._lock = threading.Lock()
        self._offset: int | None = None
        self._calibrated = False
        # id(source) -> [weakref to source, slot, packets at the last look, quiet since,
        # interrupted]. Weak: a source dropped without close() is freed (and its
        # container closed) as before; its slot is then never written (the source owns
        # the container, so while the source lives, so does the slot's memory).
        self._entries: dict[int, list] = {}
        self._thread: threading.Thread | None = None

    def usable(self) -> bool:
        """Whether streams may be opened without PyAV's read timeout (calibrates once)."""
        with self._lock:
            if not self._calibrated:
                self._calibrated = True
                self._offset = self._calibrate()
                if self._offset is None:
                    logger.warning("PyAV's interrupt timeout couldn't be located; streams "
                                   "use PyAV's read timeout (more CPU: see "
                                   "docs/performance.md)")
            return self._offset is not None

    @staticmethod
    def _find(container, began, ended, offset: int | None = None) -> int | None:
        """The offset of timeout_info's `timeout` in `container` (only `offset` if
        given), if the struct is there as PyAV leaves it after an open without a read
        timeout: start time within [began, ended] of one of PyAV's clocks, then -1.0."""
        size = type(container).__basicsize__
        raw = ctypes.string_at(id(container), size)
        found = []
        for off in (range(0, size - 15, 8) if offset is None else [offset - 8]):
            if not 0 <= off <= size - 16:
                continue
            start, timeout = struct.unpack_from("=dd", raw, off)
            if timeout == -1.0 and any(b <= start <= e for b, e in zip(began, ended)):
                found.append(off + 8)
        return found[0] if len(found) == 1 else None

    def _calibrate(self) -> int | None:
        import io

        import av
        import av.logging
        began = _pyav_clocks()
        try:
            # FFmpeg's "Could not find codec parameters" about the empty buffer is
            # expected: kept out of the log (PyAV 10 logs FFmpeg's messages by default).
            with av.logging.Capture(local=True):
                c = av.open(io.BytesIO(b""), format="h264",
                            timeout=(OPEN_TIMEOUT_SEC, None))
        except Exception as e:  # noqa: BLE001 (any failure means: don't use it)
            logger.debug("stall watch: calibration container: %s", e)
            return None
        try:
            return self._find(c, began, _pyav_clocks())
        finally:
            c.close()

    def slot_of(self, container, began, ended) -> ctypes.c_double | None:
        """The timeout field of a just-opened container, checked; None if not there."""
        off = self._find(container, began, ended, self._offset)
        if off is None:
            return None
        return ctypes.c_double.from_address(id(container) + off)

    def give_up(self) -> None:
        """After a container failed the check: PyAV's read timeout from now on."""
        with self._lock:
            self._offset = None

    def add(self, source, slot: ctypes.c_double) -> None:
        with self._lock:
            self._entries[id(source)] = [weakref.ref(source), slot, -1, time.monotonic(),
                                         False]
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="stall-watch",
                                                 daemon=True)
                self._thread.start()

    def remove(self, source) -> None:
        with self._lock:
            self._entries.pop(id(source), None)

    def _run(self) -> None:
        while True:
            time.sleep(self.TICK_SEC)  # a period, not a wait for anything
            self.tick()

    def tick(self, now: float | None = None) -> None:
        """One look at every source (the lock held: a removed source's container is
        never written after `remove` returns)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            for key, e in list(self._entries.items()):
                ref, slot, count, quiet_since, interrupted = e
                source = ref()  # held while its slot is written
                if source is None:
                    del self._entries[key]
                    continue
                n = source.packets
                if interrupted:
                    slot.value = 0.0
                elif n != count or source.holding:
                    e[2], e[3] = n, now
                elif now - quiet_since >= FRAME_TIMEOUT_SEC:
                    slot.value = 0.0
                    e[4] = True

    def interrupt(self, source) -> None:
        """Ends `source`'s read now, and the ones after (one stream stopped: recorder.py's
        `stop_stream`); a no-op for a source not watched (opened with PyAV's own read
        timeout, whose read ends within FRAME_TIMEOUT_SEC)."""
        with self._lock:
            e = self._entries.get(id(source))
            if e is not None and e[0]() is source:
                e[1].value = 0.0
                e[4] = True

    def interrupt_all(self) -> None:
        """Ends every watched read now, and the ones after (shutdown): PyAV raises
        ExitError at FFmpeg's next poll."""
        with self._lock:
            for e in self._entries.values():
                source = e[0]()
                if source is not None:
                    e[1].value = 0.0
                    e[4] = True


stall_watch = StallWatch()


# A stream with this many failed attempts in a row, or no frame for FRAME_TIMEOUT_SEC, is
# "failing" in its status (recorder.py's status JSON); before that "connecting".
FAILING_AFTER = 3

_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s]*@")


def scrub(text: str, password: str = "") -> str:
    """`text` as one line, without credentials: any `scheme://user:pass@` loses its
    userinfo, and the camera's password (if long enough not to garble the rest) is
    masked. Stream URLs are stored without credentials and PyAV's messages are cut
    before the URL (`_describe`); this is the belt to those braces, for the status
    JSON, which people paste into bug reports."""
    line = " ".join(text.split())
    line = _USERINFO.sub(r"\1", line)
    if len(password) >= 4:
        line = line.replace(password, "***")
    return line


class Streamer:
    """Records one stream: connects, writes runs, reconnects after errors.

    `shutdown` ends this streamer (and gives up a write retrying a full disk).
    recorder.py gives each streamer an event of its own, so that one stream can stop
    alone: `stop(reason)` sets it, ends a read waiting on a silent camera at once
    (`stall_watch.interrupt`), and the run's last recording gets `reason` as its
    end reason ("configuration changed: url"); a stop by `shutdown` alone says "NVR
    shutdown". `wait_stopped` returns once no run is writing (an open in progress
    may still finish in the background: it then closes what it opened, unused).

    Status (`status`, recorder.py's JSON): the state ("connecting" until a run's
    first key frame, "recording", "failing" after FAILING_AFTER failed attempts in
    a row), when it entered it, the run's start, and the last error, all in the
    db's Clocks; the frame counts are metrics.StreamStats'.
    """

    def __init__(self, db, stream_id: int, syncer, opener: Opener, *,
                 shutdown: threading.Event, rotate_offset_sec: int = 0,
                 rotate_interval_sec: int = writermod.ROTATE_INTERVAL_SEC):
        self.db = db
        self.clocks: clock.Clocks = db.clocks
        self.stream_id = stream_id
        self.syncer = syncer
        self.opener = opener
        self.shutdown = shutdown
        self.stop_reason = "NVR shutdown"  # the end reason of a run ended by `shutdown`
        self.rotate_offset_sec = rotate_offset_sec
        self.rotate_interval_sec = rotate_interval_sec
        s = db.streams[stream_id]
        c = db.cameras[s.camera_id]
        self.name = f"{c.short_name}-{s.type}"
        # The effective configuration, captured now (recorder.py compares it with the
        # database's after a change): a change takes effect by a new Streamer.
        self.url = s.config.get("url", "")
        self.transport = s.config.get("rtspTransport", "tcp") or ""
        self.username = c.config.get("username", "")
        self.password = c.config.get("password", "")
        self.sample_file_dir_id = s.sample_file_dir_id
        self.thread: threading.Thread | None = None
        self.runs = 0  # sessions opened, for tests and logs
        self.stats = db.metrics.stream(stream_id)  # metrics.py: its counts outlive us
        # A camera that is off for a day: its error once, then counts (logrepeat.py).
        self.repeats = logrepeat.RepeatLog(self.clocks, logger, expected=EXPECTED_ERRORS)
        # `_cv` guards the phase ("idle", "opening", "running": a Writer may be open),
        # the open source and the status below; never held across I/O.
        self._cv = threading.Condition()
        self._phase = "idle"
        self._source: Source | None = None
        now = self.clocks.realtime()
        self.state = "connecting"
        self.state_since_ns = now
        self.started_ns = now             # the streamer's start: "no frame for 30 s" counts from it
        self.run_start_ns: int | None = None   # realtime of the current run's first frame
        self.failures_in_row = 0
        self.last_error: str | None = None
        self.last_error_ns: int | None = None

    def start(self) -> None:
        with self._cv:
            self.started_ns = self.state_since_ns = self.clocks.realtime()
        self.thread = threading.Thread(target=self.run, name=f"s-{self.name}", daemon=True)
        self.thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self.thread is not None:
            self.thread.join(timeout)

    def stop(self, reason: str) -> None:
        """Ends this streamer: the current run ends with `reason` (its last recording's
        end reason), a read waiting on the camera at once. Returns at once: then
        `wait_stopped`."""
        with self._cv:
            if not self.shutdown.is_set():
                self.stop_reason = reason
            self.shutdown.set()
            src = self._source
        if src is not None:
            stall_watch.interrupt(src)

    def wait_stopped(self, timeout: float | None = None) -> bool:
        """After `stop`: waits until the thread has ended, or is opening the camera (it
        then closes what it opens, unused: an unreachable camera's open takes
        OPEN_TIMEOUT_SEC). Either way no run is writing: the last recording is the
        syncer's. Returns whether that happened within `timeout`."""
        if self.thread is None:
            return True
        with self._cv:
            if not self._cv.wait_for(lambda: self._phase in ("opening", "ended"), timeout):
                return False
            ended = self._phase == "ended"
        if ended:
            self.thread.join()  # past its last line: logging
        return True

    def _set_phase(self, phase: str, source: Source | None = None) -> None:
        with self._cv:
            self._phase, self._source = phase, source
            self._cv.notify_all()

    # -- status ---------------------------------------------------------------------

    def _set_state(self, state: str, now: int) -> None:
        """Under `_cv`."""
        if state != self.state:
            self.state, self.state_since_ns = state, now

    def _recording_started(self) -> None:
        now = self.clocks.realtime()
        with self._cv:
            self.failures_in_row = 0
            self.run_start_ns = now
            self._set_state("recording", now)

    def _failed(self, e: BaseException) -> None:
        now = self.clocks.realtime()
        with self._cv:
            self.failures_in_row += 1
            self.run_start_ns = None
            self.last_error = scrub(str(e) or type(e).__name__, self.password)
            self.last_error_ns = now
            self._set_state("failing" if self.failures_in_row >= FAILING_AFTER
                            else "connecting", now)

    def status(self) -> dict:
        """The status JSON of recorder.py (times: Unix seconds as floats)."""
        real, mono = self.clocks.realtime(), self.clocks.monotonic()
        stats = self.stats
        last_ns = stats.last_frame_ns
        last_real = None if last_ns is None else real - (mono - last_ns)
        with self._cv:
            state, since = self.state, self.state_since_ns
            run_start, error, error_ns = self.run_start_ns, self.last_error, self.last_error_ns
            started = self.started_ns
        # No frame for FRAME_TIMEOUT_SEC (since the last one, or since this streamer
        # started if none came since) is failing, whatever the attempts say.
        quiet_from = started if last_real is None or last_real < started else last_real
        silent_at = quiet_from + FRAME_TIMEOUT_SEC * clock.NANOS_PER_SEC
        if state != "failing" and real >= silent_at:
            state, since = "failing", silent_at
        fps = bps = None
        if last_ns is not None:
            fps, bps = stats.rates(mono)

        def sec(ns):
            return None if ns is None else ns / clock.NANOS_PER_SEC
        return {"state": state, "sinceSec": sec(since), "runStartSec": sec(run_start),
                "lastFrameSec": sec(last_real),
                "lastFrameAgeSec": None if last_real is None else sec(real - last_real),
                "fps": fps, "bitrateBps": bps, "runs": stats.runs,
                "lastError": error, "lastErrorSec": sec(error_ns)}

    # -- the thread -------------------------------------------------------------------

    def run(self) -> None:
        try:
            while not self.shutdown.is_set():
                try:
                    self.run_once()
                except Exception as e:  # any error ends the run; a bug's keeps its traceback
                    if self.shutdown.is_set() and isinstance(e, EXPECTED_ERRORS):
                        break
                    self._failed(e)
                    self.repeats.failed(self.name, e, self.name,
                                        f"retrying every {RETRY_SEC} s")
                self.clocks.wait(self.shutdown, RETRY_SEC)
        finally:
            self._set_phase("ended")
        if self.stop_reason == "NVR shutdown":
            logger.info("%s: shutting down", self.name)
        else:
            logger.info("%s: stopped (%s)", self.name, self.stop_reason)

    def run_once(self) -> None:
        self.stats.attempts += 1
        # While the stream fails, each attempt's "opening" would be one more line a second.
        logger.log(logging.DEBUG if self.repeats.failing(self.name) else logging.INFO,
                   "%s: opening %s", self.name, self.url)
        # PyAV probes until it has seen a key frame: 1-3 s is normal (docs/performance.md).
        # Only a slow open that succeeds is worth a warning: a failed one (a camera that is
        # off takes OPEN_TIMEOUT_SEC to time out) is the error's to report.
        began = self.clocks.monotonic()
        self._set_phase("opening")
        try:
            src = self.opener.open(self.url, username=self.username, password=self.password,
                                   transport=self.transport)
        finally:
            self._set_phase("idle")
        took_ns = self.clocks.monotonic() - began
        if took_ns > OPEN_WARN_SEC * clock.NANOS_PER_SEC:
            logger.warning("%s: opening %s took %.3f s", self.name, self.url,
                           took_ns / clock.NANOS_PER_SEC)
        with self._cv:
            # Opened after `stop` (or Recorder.stop's StallWatch.interrupt_all): its reads
            # weren't interrupted, and a silent camera would hold up the stop. Checked
            # under `_cv`: either `stop` sees the source (and interrupts it) or we see
            # the stop.
            stopped = self.shutdown.is_set()
            if not stopped:
                self._phase, self._source = "running", src
        if stopped:
            src.close()
            return
        try:
            self._record(src)
        finally:
            self._set_phase("idle")
            src.close()

    def _record(self, src: Source) -> None:
        self.runs += 1
        stats = self.stats
        stats.runs += 1
        # Local time = wall time at open + monotonic time since (§3.4).
        realtime_at_open = self.clocks.realtime()
        monotonic_at_open = self.clocks.monotonic()
        w = writermod.Writer(self.db, self.stream_id, self.syncer, shutdown=self.shutdown,
                             rotate_offset_sec=self.rotate_offset_sec,
                             rotate_interval_sec=self.rotate_interval_sec)
        reason, kind = self.stop_reason, "shutdown"
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
                    self._recording_started()
                    failed = self.repeats.failing(self.name)
                    if not self.repeats.cleared(self.name, f"{self.name}: recording again"):
                        logger.log(logging.DEBUG if failed else logging.INFO,
                                   "%s: first key frame; recording", self.name)
                if f.parameters is not None:
                    logger.info("%s: new video parameters: %dx%d %s", self.name,
                                f.parameters.width, f.parameters.height,
                                f.parameters.rfc6381_codec)
                    vse_id = self._insert_entry(f.parameters)
                now = monotonic()
                # metrics.StreamStats: integer adds, and a window point once a second.
                stats.frames += 1
                stats.bytes += len(f.data)
                stats.last_frame_ns = now
                if now >= stats.roll_at_ns:
                    stats.roll(now)
                write(f.data, to_90k(local_offset_ns + now), f.pts_90k, f.is_key, vse_id)
        except BaseException as e:
            # At a stop a read may end early (StallWatch.interrupt): the stop is why.
            if not stopping():
                reason, kind = str(e) or type(e).__name__, end_kind(e)
            raise
        finally:
            if stopping():
                reason = self.stop_reason  # set before the event: `stop`
            stats.ends[kind] += 1
            w.close(reason)

    def _insert_entry(self, p: codec.VideoParameters) -> int:
        return self.db.insert_video_sample_entry(p.width, p.height, p.rfc6381_codec,
                                                 p.sample_entry, p.pasp_h_spacing,
                                                 p.pasp_v_spacing)
