#!/usr/bin/python3
"""A real RTSP camera for tests and benchmarks: GStreamer's RTSP server replaying clips.

Run it with Debian's system Python (PyGObject, `gi`, only imports there, not under
pyenv's python that runs pytest); `test/camera.py` starts and drives it for tests:

    /usr/bin/python3 test/rtsp_server.py --port 0 \\
        --stream main:h264:640x360:30:1000:30 --stream sub:h264:320x240:15:300:15 \\
        --stream h265:h265:640x360:30:1000:30 [--user U --password P [--auth basic]] \\
        [--clip-seconds 10] [--clip-dir DIR] [--exit-on-eof] [--verbose]

A `--stream` is `name:codec:WxH:fps:kbps:gop[:audio]` (codec `h264` or `h265`; fps an
integer; gop = key frame interval in frames; `:audio` adds an audio track). Each is served
at `rtsp://127.0.0.1:PORT/NAME`; the server listens on 127.0.0.1 only.

## Wire protocol with the parent (stdout/stdin, one line each, UTF-8)
- stdout carries only protocol lines; diagnostics go to stderr.
- Once listening: `READY <port>` (with `--port 0` the port the kernel picked).
- Commands on stdin, each answered on stdout with `OK <command>` once done, or
  `ERR <command>: <reason>`:
  - `stop NAME`: unmount NAME: its clients get end of stream (RTCP BYE) and, 0.3 s later,
    their connections are closed; new requests get 404 Not Found.
  - `start NAME`: mount NAME again with a fresh factory (no-op if mounted); clears pause.
  - `pause NAME`: a stalled camera: sessions stay up (RTCP and keep-alives keep flowing) but
    no video is sent. A client connecting meanwhile hangs in DESCRIBE, as the server
    waits for the first frame to build the SDP.
  - `resume NAME`: video flows again, at the clip position and timestamp it would have
    reached had it never stopped (the RTP timestamps jump by the stall, mid-GOP).
- With `--exit-on-eof`, end of stdin (the parent died) stops the server.
- SIGTERM/SIGINT stop the server; it exits 0.

## What a client sees
- H.264 (High profile, CABAC) or H.265 Main, no B-frames, one slice per frame, a key
  frame (IDR) exactly every `gop` frames, SPS/PPS (and VPS) in-band before every key frame
  and in the SDP (`sprop-parameter-sets`). pts == dts, increasing by exactly
  90000/fps ticks when fps divides 90000 (continuous across clip loops).
- Like a live camera, a client joins at the clip position given by the time since
  the server started, so the first frames are usually non-key (the first one carries
  SPS/PPS too, so the SDP has them); the first key frame comes within one GOP.
- The picture: SMPTE bars scrolling 4 px a frame, with the clip time burnt in
  (`timeoverlay`), so consecutive frames differ; the clip repeats every --clip-seconds.
- With `:audio`, the SDP lists a second track, as many cameras' do: 8 kHz G.711 A-law
  silence (payload type 8), 20 ms a packet, pushed by the video's feeder in step with
  the video (an `appsrc ! rtppcmapay`: an `audiotestsrc` answers seeking queries, which
  made the media seekable, and the server then failed FFmpeg's PLAY with its
  `Range: npt=0.000-` with 503). Each track has its own RTP session and RTCP sender
  reports, whose NTP timestamps are the wall clock (rtpbin's `ntp-time-source`), about
  one a second (RTCP_INTERVAL_S; rtpbin's default is 5 s).

## Design, and the measurement behind each choice
- Encode once, replay many: a live `x264enc` (ultrafast, zerolatency) costs ~40 % of a
  core per 1080p30 client. Here each distinct spec is encoded once at start-up into a
  clip of whole GOPs (10 s by default; on 2 cores 1080p30 2 Mbit/s takes 4.2 s,
  640x360 H.264 0.6-0.9 s, 320x240 0.13 s, 640x360 H.265 1.7-2.0 s) kept in memory, and
  replayed through `appsrc ! h264parse ! rtph264pay`. Measured with this server
  (/proc/PID/stat over 20 s, PyAV clients demuxing in another process): 1, 4, 8, 16
  clients of 1080p30 2 Mbit/s cost 2.2, 4.9, 7.6, 13.9 % of one core; nearly all of it
  is the parser and payloader on appsrc's thread and the TCP sends on the client
  threads, not the Python feeders. `--clip-dir` caches clips on disk, keyed by a hash of
  this file, GStreamer's version and the spec, so later processes start in ~0.3 s.
- `smpte horizontal-speed=4` rather than `ball`: ball costs 19 ms a 1080p frame to draw
  and still only reaches ~1.2 of 2 Mbit/s; scrolling bars cost 4 ms and reach the target.
- One pipeline per client (media not shared): with one shared pipeline 25 of 60
  immediate reconnects got 5xx, and a shared media that saw EOS stays in the factory's
  cache and answers 5xx; unshared, 0 of 60 failed. `stop` + `start` mounts a fresh
  factory anyway.
- Listen backlog 64 and a client thread pool of 64 threads: the defaults (backlog 5, one
  thread shared by all clients) made one of 16 simultaneous opens time out after ~30 s.
  With both, and the pacing below, 8 rounds of 16 simultaneous opens and 60
  back-to-back reconnects all succeeded with exact timestamp steps.
- Frames are pushed only once the client's pipeline is PLAYING and each one when the
  pipeline's running time reaches its pts: frames stamped while the pipeline was still
  starting got timestamps far in the future and froze that camera (~1 in 10 rounds of
  simultaneous connects). The server prerolls a client's pipeline in PLAYING during
  DESCRIBE (the SDP needs the payloader's caps), then holds it PAUSED until PLAY; the
  running time stops while PAUSED, so pacing against it (not a wall-clock schedule)
  needs no special case and nothing queues up in between.
- pts = whole-millisecond start + ceil(n * 1e9 / fps) ns: a millisecond is exactly 90
  ticks and the ceiling keeps the payloader's truncation to 90 kHz from giving
  2999/3001-tick steps at 30 fps.
- Single-slice frames with the parameter sets written into every key frame here (not
  `config-interval=-1` on the payloader): with multi-slice frames that option repeats
  SPS/PPS before every IDR slice and FFmpeg splits one frame into several packets with
  the same pts.
- Optional RTSP Digest (default) or Basic auth on all mounts via GstRTSPAuth, so the
  recorder's credential handling meets a real 401.
- The server binds with SO_REUSEADDR (GstRTSPServer does), so a restart right after a
  kill -9 gets the same port despite the dead connections in TIME_WAIT.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import os
import signal
import struct
import sys
import threading
import time

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstApp", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstApp, GstRtsp, GstRtspServer  # noqa: E402,F401

logger = logging.getLogger("rtsp_server")

NS_PER_S = 1_000_000_000

# Listen backlog and client threads: see "Design" above (defaults 5 and 1).
LISTEN_BACKLOG = 64
CLIENT_THREADS = 64

# Delay between end of stream (RTCP BYE) and closing a stopped mount's connections, so
# clients that honour BYE end cleanly and the rest see the connection close.
STOP_CLOSE_DELAY_MS = 300

# NAL unit types (H.264: ITU-T H.264 Table 7-1; H.265: ITU-T H.265 Table 7-1).
H264_IDR, H264_SPS, H264_PPS, H264_AUD = 5, 7, 8, 9
H265_IRAP = range(16, 24)
H265_VPS, H265_SPS, H265_PPS, H265_AUD = 32, 33, 34, 35

START_CODE = b"\x00\x00\x00\x01"

# The audio track (`:audio`): 20 ms packets of 8 kHz G.711 A-law silence (0xd5 is A-law's
# zero, ITU-T G.711 Table 1).
AUDIO_PACKETS_PER_S = 50
AUDIO_PACKET_NS = NS_PER_S // AUDIO_PACKETS_PER_S
AUDIO_SILENCE = GLib.Bytes.new(b"\xd5" * (8000 // AUDIO_PACKETS_PER_S))
RTCP_INTERVAL_S = 1  # the mean interval between sender reports of a mount with audio


@dataclasses.dataclass(frozen=True)
class StreamSpec:
    name: str
    codec: str  # "h264" or "h265"
    width: int
    height: int
    fps: int
    kbps: int
    gop: int  # key frame interval, frames
    audio: bool = False  # an audio track too

    @classmethod
    def parse(cls, text: str) -> StreamSpec:
        try:
            parts = text.split(":")
            audio = parts[6:] == ["audio"]
            if audio:
                parts = parts[:6]
            name, codec, size, fps, kbps, gop = parts
            width, height = size.split("x")
            spec = cls(name, codec, int(width), int(height), int(fps), int(kbps), int(gop),
                       audio)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"bad stream {text!r}: want name:codec:WxH:fps:kbps:gop[:audio], "
                "e.g. main:h264:640x360:30:1000:30") from None
        if codec not in ("h264", "h265"):
            raise argparse.ArgumentTypeError(f"bad stream {text!r}: codec must be h264 or h265")
        if not name or "/" in name or min(spec.width, spec.height, spec.fps, spec.kbps,
                                          spec.gop) <= 0:
            raise argparse.ArgumentTypeError(f"bad stream {text!r}")
        return spec

    @property
    def clip_key(self) -> tuple:
        """Streams with equal keys share one encoded clip."""
        return (self.codec, self.width, self.height, self.fps, self.kbps, self.gop)


def split_nals(au: bytes) -> list[bytes]:
    """The NAL units of an Annex B access unit, without start codes."""
    starts = []
    i = au.find(b"\x00\x00\x01")
    while i >= 0:
        starts.append(i + 3)
        i = au.find(b"\x00\x00\x01", i + 3)
    nals = []
    for k, s in enumerate(starts):
        e = starts[k + 1] - 3 if k + 1 < len(starts) else len(au)
        # A NAL unit ends in a non-zero byte (rbsp_stop_one_bit or cabac_zero_word's
        # 0x03), so trailing zeros are the next 4-byte start code's or trailing_zero_8bits.
        nal = au[s:e].rstrip(b"\x00")
        if nal:
            nals.append(nal)
    return nals


def nal_type(codec: str, nal: bytes) -> int:
    return nal[0] & 0x1F if codec == "h264" else (nal[0] >> 1) & 0x3F


@dataclasses.dataclass
class Clip:
    """Whole GOPs of encoded video, to be replayed in a loop.

    `frames[i]` is access unit i in Annex B with 4-byte start codes and no AUD; key frames
    (every `gop`-th, starting with frame 0) begin with the parameter sets, which
    `params` holds too, so a client can start on any frame.
    """
    codec: str
    fps: int
    gop: int
    params: bytes
    frames: list[bytes]
    keys: list[bool]

    def __post_init__(self):
        # Pushing wraps these without copying.
        self.gbytes = [GLib.Bytes.new(f) for f in self.frames]
        self.first_gbytes = [None] * len(self.frames)

    def first_frame(self, i: int) -> GLib.Bytes:
        """Frame i, with the parameter sets prepended if it is not a key frame."""
        if self.keys[i]:
            return self.gbytes[i]
        if self.first_gbytes[i] is None:
            self.first_gbytes[i] = GLib.Bytes.new(self.params + self.frames[i])
        return self.first_gbytes[i]


def normalize(codec: str, fps: int, gop: int, aus: list[bytes]) -> Clip:
    """Rewrites the encoder's access units into a `Clip`: see its docstring."""
    if codec == "h264":
        param_types, aud, is_key = (H264_SPS, H264_PPS), H264_AUD, lambda t: t == H264_IDR
    else:
        param_types, aud, is_key = (H265_VPS, H265_SPS, H265_PPS), H265_AUD, \
            lambda t: t in H265_IRAP
    params: list[bytes] = []
    frames, keys = [], []
    for i, au in enumerate(aus):
        rest, key = [], False
        for nal in split_nals(au):
            t = nal_type(codec, nal)
            if t in param_types:
                if nal not in params:
                    params.append(nal)
            elif t != aud:
                rest.append(nal)
                key = key or is_key(t)
        if key != (i % gop == 0):
            raise RuntimeError(f"{codec} encoder put a key frame at {i}, not every {gop}")
        frames.append(b"".join(START_CODE + n for n in rest))
        keys.append(key)
    if len(params) != len(param_types):
        raise RuntimeError(f"{codec} encoder gave {len(params)} parameter sets, expected "
                           f"{len(param_types)} (changing parameter sets are not supported)")
    ps = b"".join(START_CODE + p for p in params)
    frames = [ps + f if k else f for f, k in zip(frames, keys)]
    return Clip(codec, fps, gop, ps, frames, keys)


def encoder_description(spec: StreamSpec) -> str:
    if spec.codec == "h264":
        # superfast: High profile with CABAC like most cameras, for ~20 % more encode
        # time than ultrafast (Constrained Baseline). scenecut=0 keeps the GOP fixed;
        # slices=1 and no sliced-threads keep one slice (one packet) per frame.
        return (f"x264enc bitrate={spec.kbps} key-int-max={spec.gop} bframes=0 "
                "b-adapt=false aud=false byte-stream=true sliced-threads=false "
                "speed-preset=superfast option-string=scenecut=0:slices=1 ! "
                "video/x-h264,stream-format=byte-stream,alignment=au")
    # open-gop=0: IDR key frames rather than CRA; x265 uses one slice by default.
    return (f"x265enc bitrate={spec.kbps} key-int-max={spec.gop} speed-preset=ultrafast "
            f"option-string=bframes=0:open-gop=0:scenecut=0:min-keyint={spec.gop} ! "
            "video/x-h265,stream-format=byte-stream,alignment=au")


def encode_clip(spec: StreamSpec, seconds: float) -> Clip:
    """Encodes whole GOPs covering at least `seconds` of test video."""
    gops = max(1, -(-round(seconds * spec.fps) // spec.gop))
    n = gops * spec.gop
    desc = (f"videotestsrc num-buffers={n} pattern=smpte horizontal-speed=4 ! "
            f"video/x-raw,format=I420,width={spec.width},height={spec.height},"
            f"framerate={spec.fps}/1 ! "
            f"timeoverlay text=\"{spec.codec} {spec.width}x{spec.height} {spec.fps}fps\" ! "
            f"queue ! {encoder_description(spec)} ! appsink name=sink sync=false")
    pipeline = Gst.parse_launch(desc)
    sink = pipeline.get_by_name("sink")
    bus = pipeline.get_bus()
    pipeline.set_state(Gst.State.PLAYING)
    aus = []
    try:
        while len(aus) < n:
            sample = sink.try_pull_sample(Gst.SECOND)
            if sample is not None:
                buf = sample.get_buffer()
                aus.append(buf.extract_dup(0, buf.get_size()))
                continue
            msg = bus.pop_filtered(Gst.MessageType.ERROR)
            if msg is not None:
                err, debug = msg.parse_error()
                raise RuntimeError(f"encoding {spec}: {err.message} ({debug})")
            if sink.is_eos():
                break
    finally:
        pipeline.set_state(Gst.State.NULL)
    if len(aus) != n:
        raise RuntimeError(f"encoding {spec}: got {len(aus)} of {n} frames")
    return normalize(spec.codec, spec.fps, spec.gop, aus)


# Clip file (--clip-dir) layout, all integers big-endian:
#   magic    8 bytes   b"NVRCLIP1"
#   records  until EOF, each a CLIP_RECORD header then `length` bytes:
#     kind     u8   0 = parameter sets (first record, once), 1 = key frame, 2 = other frame
#     length   u32  bytes of Annex B data that follow
CLIP_MAGIC = b"NVRCLIP1"
CLIP_RECORD = struct.Struct(">BI")
assert CLIP_RECORD.size == 5


def clip_path(clip_dir: str, spec: StreamSpec, seconds: float) -> str:
    h = hashlib.sha256()
    with open(os.path.abspath(__file__), "rb") as f:
        h.update(f.read())  # any change to this file (encoder settings) invalidates
    h.update(repr((Gst.version_string(), spec.clip_key, seconds)).encode())
    return os.path.join(clip_dir, f"{spec.codec}-{spec.width}x{spec.height}-{spec.fps}fps-"
                                  f"{spec.kbps}k-gop{spec.gop}-{h.hexdigest()[:16]}.clip")


def read_clip(path: str, spec: StreamSpec) -> Clip | None:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    if not data.startswith(CLIP_MAGIC):
        return None
    pos, params, frames, keys = len(CLIP_MAGIC), b"", [], []
    while pos < len(data):
        kind, length = CLIP_RECORD.unpack_from(data, pos)
        pos += CLIP_RECORD.size
        chunk = data[pos:pos + length]
        pos += length
        if kind == 0:
            params = chunk
        else:
            frames.append(chunk)
            keys.append(kind == 1)
    return Clip(spec.codec, spec.fps, spec.gop, params, frames, keys)


def write_clip(path: str, clip: Clip) -> None:
    """Writes to a temporary name and renames, so a reader never sees half a file."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(CLIP_MAGIC)
        f.write(CLIP_RECORD.pack(0, len(clip.params)) + clip.params)
        for frame, key in zip(clip.frames, clip.keys):
            f.write(CLIP_RECORD.pack(1 if key else 2, len(frame)) + frame)
    os.replace(tmp, path)  # a cache: no fsync, a torn file after a crash fails the magic


def load_clip(spec: StreamSpec, seconds: float, clip_dir: str | None) -> Clip:
    path = clip_path(clip_dir, spec, seconds) if clip_dir else None
    if path:
        clip = read_clip(path, spec)
        if clip is not None:
            logger.info("clip %s from %s", spec.clip_key, path)
            return clip
    t0 = time.monotonic()
    clip = encode_clip(spec, seconds)
    logger.info("clip %s: encoded %d frames (%.0f kbit/s) in %.2f s", spec.clip_key,
                len(clip.frames), sum(map(len, clip.frames)) * 8 * spec.fps
                / len(clip.frames) / 1000, time.monotonic() - t0)
    if path:
        write_clip(path, clip)
    return clip


def frame_offset_ns(n: int, fps: int) -> int:
    """pts of frame n relative to the first; see "Design" (ceil keeps 90 kHz steps exact)."""
    return -(-n * NS_PER_S // fps)


class Mount:
    """One served path: its spec, clip, pause flag and the feeders of its clients.

    Only the main loop changes `factory`; `paused` is a plain bool read by feeders.
    """

    def __init__(self, spec: StreamSpec, clip: Clip):
        self.spec = spec
        self.clip = clip
        self.path = "/" + spec.name
        self.factory: GstRtspServer.RTSPMediaFactory | None = None
        self.paused = False
        self.lock = threading.Lock()  # guards feeders
        self.feeders: set[Feeder] = set()
        self.feeder_seq = 0


class Feeder:
    """Pushes a clip into one client's appsrc in real time, on its own thread.

    Steps: (1) wait until the pipeline is PLAYING; (2) take a whole-millisecond running
    time as the start and the clip position from the server's uptime; (3) push frame n
    once the running time reaches start + frame_offset_ns(n), looping the clip; while the
    mount is paused push nothing, and on resume skip to the current frame.
    """

    def __init__(self, mount: Mount, media: GstRtspServer.RTSPMedia, src: GstApp.AppSrc,
                 epoch_ns: int, audio_src: GstApp.AppSrc | None = None):
        self.mount = mount
        self.media = media
        self.src = src
        self.audio_src = audio_src
        self.epoch_ns = epoch_ns
        self.stopping = threading.Event()
        with mount.lock:
            mount.feeder_seq += 1
            mount.feeders.add(self)
            seq = mount.feeder_seq
        self.thread = threading.Thread(target=self._run, name=f"feed-{mount.spec.name}-{seq}",
                                       daemon=True)

    def start(self):
        self.thread.start()

    def stop(self):
        self.stopping.set()
        with self.mount.lock:
            self.mount.feeders.discard(self)

    def end_stream(self):
        """Stops pushing and sends end of stream (the RTP session then sends RTCP BYE)."""
        self.stop()
        self.src.end_of_stream()

    def _running_time(self) -> int | None:
        clock = self.src.get_clock()
        if clock is None:
            return None
        return clock.get_time() - self.src.get_base_time()

    def _run(self):
        try:
            self._feed()
        except Exception:
            logger.exception("%s failed", self.thread.name)
        finally:
            self.stop()
            logger.debug("%s done", self.thread.name)

    def _push_audio(self, start_rt: int, audio_n: int, until: int) -> int | None:
        """Pushes the audio packets that start before running time `until` (skipping
        any more than a second late: after a pause); returns the new count, or None
        if the pipeline refused one."""
        if start_rt + (audio_n + AUDIO_PACKETS_PER_S) * AUDIO_PACKET_NS < until:
            audio_n = (until - start_rt) // AUDIO_PACKET_NS
        while start_rt + audio_n * AUDIO_PACKET_NS < until:
            buf = Gst.Buffer.new_wrapped_bytes(AUDIO_SILENCE)
            buf.pts = buf.dts = start_rt + audio_n * AUDIO_PACKET_NS
            buf.duration = AUDIO_PACKET_NS
            ret = self.audio_src.push_buffer(buf)
            if ret != Gst.FlowReturn.OK:
                logger.debug("%s: audio push returned %s", self.thread.name, ret.value_nick)
                return None
            audio_n += 1
        return audio_n

    def _feed(self):
        spec, clip = self.mount.spec, self.mount.clip
        n_frames = len(clip.frames)
        n = 0  # frames since start_rt
        pushed = False
        start_rt = first_index = None
        skip = False  # set while paused after the start: on resume jump to the current frame
        started = False  # the pipeline has left NULL
        audio_n = 0  # audio packets pushed since start_rt
        while not self.stopping.is_set():
            # Step 1: only a PLAYING pipeline has a meaningful running time.
            state = self.src.get_state(0)[1]
            if state == Gst.State.NULL and started:
                return  # torn down without "unprepared"; a safety net
            started = started or state != Gst.State.NULL
            rt = self._running_time() if state == Gst.State.PLAYING else None
            if rt is None or self.mount.paused:
                skip = skip or (self.mount.paused and start_rt is not None)
                self.stopping.wait(0.01)
                continue
            if start_rt is None:  # step 2
                start_rt = rt - rt % 1_000_000
                first_index = (time.monotonic_ns() - self.epoch_ns) * spec.fps // NS_PER_S
                logger.debug("%s starts at clip frame %d", self.thread.name,
                             first_index % n_frames)
            if skip:  # step 3, after a pause
                n = max(n, -(-(rt - start_rt) * spec.fps // NS_PER_S))
                skip = False
            pts = start_rt + frame_offset_ns(n, spec.fps)
            if pts > rt:
                self.stopping.wait((pts - rt) / NS_PER_S)
                continue
            i = (first_index + n) % n_frames
            data = clip.gbytes[i] if pushed else clip.first_frame(i)
            buf = Gst.Buffer.new_wrapped_bytes(data)
            buf.pts = buf.dts = pts
            buf.duration = frame_offset_ns(n + 1, spec.fps) - frame_offset_ns(n, spec.fps)
            if not clip.keys[i]:
                buf.set_flags(Gst.BufferFlags.DELTA_UNIT)
            ret = self.src.push_buffer(buf)
            if ret != Gst.FlowReturn.OK:
                logger.debug("%s: push returned %s", self.thread.name, ret.value_nick)
                return
            pushed = True
            n += 1
            if self.audio_src is not None:
                audio_n = self._push_audio(start_rt, audio_n, pts + buf.duration)
                if audio_n is None:
                    return


class CameraServer:
    """The RTSP server, its mounts and the stdin control channel.

    Threads: the GLib main loop (main thread) owns the server, mounts and stdout;
    GStreamer's client threads call `_on_media_configure`; one feeder thread per client;
    one `control` thread reads stdin and hands each line to the main loop.
    """

    def __init__(self, args, clips: dict[tuple, Clip]):
        self.args = args
        self.epoch_ns = time.monotonic_ns()
        self.loop = GLib.MainLoop()
        self.server = GstRtspServer.RTSPServer()
        self.server.set_address("127.0.0.1")
        self.server.set_service(str(args.port))
        self.server.set_backlog(LISTEN_BACKLOG)
        self.server.get_thread_pool().set_max_threads(CLIENT_THREADS)
        if args.user is not None:
            self.server.set_auth(self._make_auth(args.user, args.password, args.auth))
        if args.verbose:
            self.server.connect("client-connected", self._on_client_connected)
        self.mounts = {s.name: Mount(s, clips[s.clip_key]) for s in args.stream}
        for m in self.mounts.values():
            self._mount(m)

    @staticmethod
    def _make_auth(user: str, password: str, method: str) -> GstRtspServer.RTSPAuth:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string("media.factory.role", "user")
        if method == "digest":
            auth.add_digest(user, password, token)
            auth.set_supported_methods(GstRtsp.RTSPAuthMethod.DIGEST)
        else:
            auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
            auth.set_supported_methods(GstRtsp.RTSPAuthMethod.BASIC)
        return auth

    def _make_factory(self, mount: Mount) -> GstRtspServer.RTSPMediaFactory:
        c = mount.spec.codec
        f = GstRtspServer.RTSPMediaFactory()
        audio = ("appsrc name=asrc is-live=true format=time "
                 "caps=\"audio/x-alaw,rate=8000,channels=1\" ! rtppcmapay name=pay1 pt=8 "
                 if mount.spec.audio else "")
        f.set_launch(
            f"( appsrc name=src is-live=true format=time "
            f"caps=\"video/x-{c},stream-format=byte-stream,alignment=au\" ! "
            f"{c}parse ! rtp{c}pay name=pay0 pt=96 {audio})")
        f.set_shared(False)
        if self.args.user is not None:
            f.add_role_from_structure(Gst.Structure.new_from_string(
                "user, media.factory.access=(boolean)true, "
                "media.factory.construct=(boolean)true"))
        f.connect("media-configure", self._on_media_configure, mount)
        return f

    def _mount(self, mount: Mount):
        mount.factory = self._make_factory(mount)
        self.server.get_mount_points().add_factory(mount.path, mount.factory)

    def _on_client_connected(self, server, client):
        conn = client.get_connection()
        logger.info("client connected from %s", conn.get_ip() if conn else "?")

    def _on_media_configure(self, factory, media, mount: Mount):
        # Called on a client's thread for each new (unshared) media.
        src = media.get_element().get_by_name("src")
        feeder = Feeder(mount, media, src, self.epoch_ns,
                        media.get_element().get_by_name("asrc"))
        if mount.spec.audio:
            media.connect("prepared", self._on_prepared_with_audio)
        media.connect("unprepared", lambda _media: feeder.stop())
        feeder.start()
        if self.args.verbose:
            logger.info("%s: new client pipeline (%s)", mount.path, feeder.thread.name)

    @staticmethod
    def _on_prepared_with_audio(media):
        # RTCP sender reports every ~RTCP_INTERVAL_S rather than rtpbin's ~5 s, so a
        # test of how a client times packets from them (the tracks' NTP clock) is short.
        for i in range(media.n_streams()):
            session = media.get_stream(i).get_rtpsession()
            if session is not None:
                session.set_property("rtcp-min-interval", RTCP_INTERVAL_S * Gst.SECOND)
        # A client that sets up the video alone (FFmpeg's allowed_media_types=video)
        # got sender reports for it in about 3 of 4 sessions, receiver reports only in
        # the others (rtpbin stopped counting its source a sender; rtcp-sync-send-time
        # off didn't change that): tests can't count on them there.

    # --- control channel -------------------------------------------------------------

    def _read_control(self):
        for line in sys.stdin or ():
            line = line.strip()
            if line:
                GLib.idle_add(self._handle_command, line)
        if self.args.exit_on_eof:
            logger.info("stdin closed: exiting")
            GLib.idle_add(self.loop.quit)

    def _reply(self, text: str):
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def _handle_command(self, line: str) -> bool:
        words = line.split()
        verb = words[0]
        handler = getattr(self, f"_cmd_{verb}", None)
        if handler is None or len(words) != 2:
            self._reply(f"ERR {line}: want stop|start|pause|resume NAME")
        elif words[1] not in self.mounts:
            self._reply(f"ERR {line}: no stream {words[1]!r}; have {' '.join(self.mounts)}")
        else:
            logger.info("command: %s", line)
            handler(self.mounts[words[1]])
            self._reply(f"OK {line}")
        return GLib.SOURCE_REMOVE

    def _cmd_stop(self, mount: Mount):
        if mount.factory is None:
            return
        self.server.get_mount_points().remove_factory(mount.path)
        mount.factory = None
        with mount.lock:
            feeders = list(mount.feeders)
        medias = {f.media for f in feeders}
        for f in feeders:
            f.end_stream()
        GLib.timeout_add(STOP_CLOSE_DELAY_MS, self._close_clients, medias)

    def _close_clients(self, medias) -> bool:
        def is_playing_one(server, client, _data=None):
            for session in client.session_filter(None):
                for sm in session.filter(None):
                    if sm.get_media() in medias:
                        return GstRtspServer.RTSPFilterResult.REF
            return GstRtspServer.RTSPFilterResult.KEEP
        clients = self.server.client_filter(is_playing_one)
        logger.info("closing %d connection(s) of stopped stream(s)", len(clients))
        for client in clients:
            client.close()
        return GLib.SOURCE_REMOVE

    def _cmd_start(self, mount: Mount):
        mount.paused = False
        if mount.factory is None:
            self._mount(mount)

    def _cmd_pause(self, mount: Mount):
        mount.paused = True

    def _cmd_resume(self, mount: Mount):
        mount.paused = False

    # --- life cycle ------------------------------------------------------------------

    def run(self) -> int:
        if self.server.attach(None) == 0:
            logger.error("cannot listen on 127.0.0.1:%s", self.args.port)
            return 1
        for sig in (signal.SIGTERM, signal.SIGINT):
            GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, self._on_signal, sig)
        threading.Thread(target=self._read_control, name="control", daemon=True).start()
        port = self.server.get_bound_port()
        logger.info("serving %s on 127.0.0.1:%d",
                    " ".join(f"/{n}" for n in self.mounts), port)
        self._reply(f"READY {port}")
        self.loop.run()
        return 0

    def _on_signal(self, sig) -> bool:
        logger.info("signal %d: exiting", sig)
        self.loop.quit()
        return GLib.SOURCE_REMOVE


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="Prints READY <port> once listening; reads stop|start|pause|resume NAME "
               "commands on stdin. The module docstring has the details.")
    p.add_argument("--port", type=int, default=8554, help="TCP port; 0 picks a free one")
    p.add_argument("--stream", type=StreamSpec.parse, action="append", required=True,
                   help="name:codec:WxH:fps:kbps:gop[:audio], e.g. main:h264:640x360:30:1000:30")
    p.add_argument("--user", help="require this RTSP user on all mounts")
    p.add_argument("--password", help="the password for --user")
    p.add_argument("--auth", choices=("digest", "basic"), default="digest",
                   help="authentication method with --user (default digest)")
    p.add_argument("--clip-seconds", type=float, default=10.0,
                   help="length of the encoded clip that loops (default 10)")
    p.add_argument("--clip-dir", help="cache encoded clips in this directory")
    p.add_argument("--exit-on-eof", action="store_true",
                   help="exit when stdin closes (the parent died)")
    p.add_argument("--verbose", action="store_true", help="log each client to stderr")
    args = p.parse_args()
    if (args.user is None) != (args.password is None):
        p.error("--user and --password go together")
    names = [s.name for s in args.stream]
    if len(set(names)) != len(names):
        p.error("stream names must be unique")
    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG if args.verbose else logging.INFO,
                        format="rtsp_server %(asctime)s %(threadName)s: %(message)s")
    # Until the main loop's handlers replace these, a signal ends the encoding quietly.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(0))
    Gst.init(None)
    clips: dict[tuple, Clip] = {}
    for s in args.stream:
        if s.clip_key not in clips:
            clips[s.clip_key] = load_clip(s, args.clip_seconds, args.clip_dir)
    rc = CameraServer(args, clips).run()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: GStreamer threads may still call into Python callbacks
    # while modules are being torn down, which can crash at exit.
    os._exit(rc)


if __name__ == "__main__":
    sys.exit(main())
