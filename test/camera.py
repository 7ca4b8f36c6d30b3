"""The test camera, pytest side: `RtspCamera` runs `test/rtsp_server.py` and drives it.

`rtsp_server.py` is a real RTSP server (GStreamer's gst-rtsp-server) replaying encoded
H.264/H.265 clips; its docstring has the wire details and the measurements behind them.
It needs PyGObject, which only imports under Debian's system Python (`/usr/bin/python3`),
not under pyenv's python that runs pytest, so it runs as a child process:

    with RtspCamera() as cam:                 # streams main, sub, h265 (DEFAULT_STREAMS)
        url = cam.url("main")                 # rtsp://127.0.0.1:<port>/main
        cam.pause("main"); cam.resume("main") # stall the video, sessions stay up
        cam.stop_stream("main")               # clients see end of stream; reconnects: 404
        cam.start_stream("main")              # mounted again
        cam.restart()                         # kill -9 and start again on the same port

    Stream("av", audio=True)                  # a mount whose SDP has an audio track too
    with SenderReportProxy(cam.port) as p:    # in front of the camera: p.url("av") is
        p.step(-10)                           # the camera with its RTCP NTP clock stepped

Fixtures (import both into conftest.py: `from camera import make_rtsp_camera, rtsp_camera`):
- `rtsp_camera`: a fresh camera with DEFAULT_STREAMS for one test;
- `make_rtsp_camera(streams=..., user=..., password=..., ...)`: cameras to order, closed
  after the test.
Both skip the test, saying what to install, when the system Python lacks GStreamer's RTSP
server or an element the camera needs. Clips are encoded once per pytest session (the
first camera takes ~3 s, up to ~7 s on a busy machine; later ones ~0.3 s): they are
cached under pytest's base temp dir.

Protocol with the child (see rtsp_server.py): it prints `READY <port>` once listening;
each command line written to its stdin is answered `OK <command>` or `ERR <command>: why`.
The child runs with `--exit-on-eof`, so it exits when this process dies and its stdin
closes. Its stderr is kept (the last lines) for error messages, and logged at DEBUG.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import os
import queue
import signal
import subprocess
import threading
import urllib.parse

import pytest

logger = logging.getLogger(__name__)

SYSTEM_PYTHON = "/usr/bin/python3"
SERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "rtsp_server.py")

READY_TIMEOUT_S = 60  # encoding the clips of a fresh camera takes ~3 s on 2 cores
COMMAND_TIMEOUT_S = 10
STDERR_TAIL_LINES = 40


@dataclasses.dataclass(frozen=True)
class Stream:
    """One mount of the camera: `rtsp_server.py --stream name:codec:WxH:fps:kbps:gop`."""
    name: str
    codec: str = "h264"  # or "h265"
    width: int = 640
    height: int = 360
    fps: int = 30
    kbps: int = 1000
    gop: int = 30  # key frame interval, frames
    audio: bool = False  # an audio track too (G.711 A-law), as many cameras send

    @property
    def frame_duration_90k(self) -> int:
        return 90000 // self.fps

    def arg(self) -> str:
        return (f"{self.name}:{self.codec}:{self.width}x{self.height}:{self.fps}:"
                f"{self.kbps}:{self.gop}" + (":audio" if self.audio else ""))


DEFAULT_STREAMS = (
    Stream("main", "h264", 640, 360, fps=30, kbps=1000, gop=30),
    Stream("sub", "h264", 320, 240, fps=15, kbps=300, gop=15),
    Stream("h265", "h265", 640, 360, fps=30, kbps=1000, gop=30),
)

# What the server needs from the system Python, and the Debian package providing it.
_PROBE = """
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstApp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import Gst, GstRtspServer
Gst.init(None)
need = {"videotestsrc": "gstreamer1.0-plugins-base", "appsrc": "gstreamer1.0-plugins-base",
        "timeoverlay": "gstreamer1.0-x", "x264enc": "gstreamer1.0-plugins-ugly",
        "x265enc": "gstreamer1.0-plugins-bad", "h264parse": "gstreamer1.0-plugins-bad",
        "h265parse": "gstreamer1.0-plugins-bad", "rtph264pay": "gstreamer1.0-plugins-good",
        "rtph265pay": "gstreamer1.0-plugins-good"}
missing = sorted({f"{e} ({p})" for e, p in need.items() if Gst.ElementFactory.find(e) is None})
if missing:
    raise SystemExit("missing GStreamer elements: " + ", ".join(missing))
"""


@functools.cache
def unavailable_reason() -> str | None:
    """Why the camera cannot run here, or None if it can. Checked once per process."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"test camera needs Debian's {SYSTEM_PYTHON} (with python3-gi)"
    r = subprocess.run([SYSTEM_PYTHON, "-c", _PROBE], capture_output=True, text=True,
                       timeout=60)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        return (f"test camera needs GStreamer's RTSP server under {SYSTEM_PYTHON}: {last}; "
                "run test/run.py (as root) to install python3-gi, gir1.2-gst-rtsp-server-1.0 "
                "and the gstreamer1.0-plugins-{base,good,bad,ugly} and gstreamer1.0-x packages")
    return None


class CameraError(Exception):
    pass


class RtspCamera:
    """A real RTSP camera in a child process; see the module docstring.

    Not thread-safe except `url` and `port`; one test thread drives it.
    """

    def __init__(self, streams=DEFAULT_STREAMS, *, user: str | None = None,
                 password: str | None = None, auth: str = "digest",
                 clip_seconds: float = 10.0, clip_dir: str | None = None, port: int = 0):
        self.streams = {s.name: s for s in streams}
        self.user = user
        self.password = password
        self.auth = auth
        self.clip_seconds = clip_seconds
        self.clip_dir = clip_dir
        self._port = port
        self._proc: subprocess.Popen | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._stderr: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._readers: list[threading.Thread] = []
        self._start()

    # --- what tests use ----------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    def url(self, name: str, user: str | None = None, password: str | None = None) -> str:
        """rtsp://[user:password@]127.0.0.1:PORT/NAME; credentials only when given."""
        if name not in self.streams:
            raise KeyError(f"camera has no stream {name!r}; it has {', '.join(self.streams)}")
        cred = ""
        if user is not None:
            cred = urllib.parse.quote(user, safe="")
            if password is not None:
                cred += ":" + urllib.parse.quote(password, safe="")
            cred += "@"
        return f"rtsp://{cred}127.0.0.1:{self._port}/{name}"

    def stop_stream(self, name: str):
        """Unmounts `name`: its clients get end of stream, then closed; new opens get 404."""
        self._command(f"stop {name}")

    def start_stream(self, name: str):
        """Mounts `name` again (a fresh factory) and un-pauses it."""
        self._command(f"start {name}")

    def pause(self, name: str):
        """Stops sending `name`'s video while keeping sessions alive: a stalled camera.

        A client opening `name` meanwhile waits until `resume` (PyAV gives up at its open
        timeout with `av.error.InvalidDataError`).
        """
        self._command(f"pause {name}")

    def resume(self, name: str):
        self._command(f"resume {name}")

    def restart(self):
        """Kills the server (SIGKILL: connections just drop) and starts it on the same port.

        All streams come back mounted and un-paused.
        """
        self._kill()
        self._start()

    def close(self):
        """Stops the server (SIGTERM, then SIGKILL after 5 s). Safe to call twice."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                logger.warning("camera on port %d ignored SIGTERM; killing it", self._port)
        self._kill()

    def __enter__(self) -> RtspCamera:
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"<RtspCamera port={self._port} streams={','.join(self.streams)}>"

    # --- the child process ---------------------------------------------------------------

    def _argv(self) -> list[str]:
        argv = [SYSTEM_PYTHON, SERVER, "--port", str(self._port), "--exit-on-eof",
                "--clip-seconds", str(self.clip_seconds)]
        for s in self.streams.values():
            argv += ["--stream", s.arg()]
        if self.user is not None:
            argv += ["--user", self.user, "--password", self.password or "",
                     "--auth", self.auth]
        if self.clip_dir:
            argv += ["--clip-dir", self.clip_dir]
        return argv

    def _start(self):
        self._lines = queue.Queue()
        self._stderr.clear()
        self._proc = subprocess.Popen(self._argv(), stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, bufsize=1)
        self._readers = [
            threading.Thread(target=self._read_stdout, args=(self._proc, self._lines),
                             name=f"camera-{self._proc.pid}-out", daemon=True),
            threading.Thread(target=self._read_stderr, args=(self._proc,),
                             name=f"camera-{self._proc.pid}-err", daemon=True)]
        for t in self._readers:
            t.start()
        line = self._next_line(READY_TIMEOUT_S)
        if line is None or not line.startswith("READY "):
            rc = self._kill()
            raise CameraError(self._explain(
                f"camera did not become ready within {READY_TIMEOUT_S} s (got {line!r})", rc))
        port = int(line.split()[1])
        if self._port not in (0, port):
            rc = self._kill()
            raise CameraError(self._explain(f"camera listens on {port}, wanted {self._port}",
                                            rc))
        self._port = port

    @staticmethod
    def _read_stdout(proc: subprocess.Popen, lines: queue.Queue):
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)  # end of output: the child exited

    def _read_stderr(self, proc: subprocess.Popen):
        for line in proc.stderr:
            line = line.rstrip("\n")
            self._stderr.append(line)
            logger.debug("%s", line)

    def _next_line(self, timeout: float) -> str | None:
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            return None

    def _command(self, command: str):
        if self._proc is None or self._proc.poll() is not None:
            raise CameraError(self._explain(f"{command}: camera is not running",
                                            self._proc and self._proc.poll()))
        self._proc.stdin.write(command + "\n")
        self._proc.stdin.flush()
        line = self._next_line(COMMAND_TIMEOUT_S)
        if line != f"OK {command}":
            raise CameraError(self._explain(f"{command}: camera answered {line!r}",
                                            self._proc.poll()))

    def _kill(self) -> int | None:
        """Kills the child if still running and reaps it; returns its exit status."""
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.kill()
        rc = proc.wait()
        for t in self._readers:
            t.join(5)
        for f in (proc.stdin, proc.stdout, proc.stderr):
            try:
                f.close()
            except OSError:  # stdin's buffered write to a dead child: nothing to keep
                pass
        return rc

    def _explain(self, what: str, rc: int | None) -> str:
        tail = "\n".join(self._stderr) or "(nothing)"
        return (f"{what}; exit status {rc}; command: {' '.join(self._argv())}\n"
                f"last lines of its stderr:\n{tail}")


def _clip_dir(tmp_path_factory) -> str:
    # One directory per pytest session: the clips are encoded by the first camera only.
    return str(tmp_path_factory.getbasetemp() / "camera-clips")


@pytest.fixture
def make_rtsp_camera(tmp_path_factory):
    """Returns `make(streams=DEFAULT_STREAMS, **RtspCamera_kwargs) -> RtspCamera`;
    the cameras are closed after the test."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    cameras = []

    def make(streams=DEFAULT_STREAMS, **kwargs) -> RtspCamera:
        kwargs.setdefault("clip_dir", _clip_dir(tmp_path_factory))
        cam = RtspCamera(streams, **kwargs)
        cameras.append(cam)
        return cam

    yield make
    for cam in cameras:
        cam.close()


@pytest.fixture
def rtsp_camera(make_rtsp_camera) -> RtspCamera:
    """A fresh camera serving DEFAULT_STREAMS (main, sub, h265) for one test."""
    return make_rtsp_camera()


# --- a camera whose NTP clock steps ------------------------------------------------------

class SenderReportProxy:
    """A TCP proxy in front of a camera that shifts the NTP timestamps of its RTCP sender
    reports: the camera's clock, as it reports it, steps while its RTP clocks run on.

        with SenderReportProxy(cam.port) as proxy:
            url = proxy.url("main")        # open this instead of cam.url("main")
            proxy.step(-10)                # the NTP clock goes 10 s back, for every stream
            proxy.wait_for_reports(2)      # until 2 stepped sender reports went out

    Why a proxy: GStreamer's rtpbin writes the wall clock into its sender reports
    (`ntp-time-source`; the other choices differ from it by decades, not a step), and
    its `on-sending-rtcp` signal hands Python a buffer it can't write. Everything else
    passes unchanged, so a client talks to the real camera.

    RTSP over TCP only (FFmpeg's `rtsp_transport tcp`, nvr's default): RTP and RTCP are
    interleaved in the RTSP connection (RFC 2326 §10.12), each as `$`, channel, u16
    length, packet; RTCP rides the odd channels. From the camera, the proxy reads RTSP
    messages (headers, `Content-Length` body) and interleaved packets in turn, and in
    each RTCP packet on an odd channel rewrites every sender report (RFC 3550 §6.4.1:
    packet type 200, the NTP timestamp a u64 of seconds since 1900 in 32.32 fixed point
    at bytes 8-15) by the current step.
    """

    SR = 200  # RTCP packet type of a sender report (RFC 3550 §12.1)

    def __init__(self, camera_port: int):
        import socket
        self._camera_port = camera_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Condition()
        self._step = 0            # added to each NTP timestamp: seconds * 2**32
        self._stepped_reports = 0  # sender reports sent with a non-zero step
        self.reports = 0           # all sender reports passed on
        self._sockets = []
        self._closed = False
        threading.Thread(target=self._accept, name="sr-proxy", daemon=True).start()

    def url(self, name: str) -> str:
        return f"rtsp://127.0.0.1:{self.port}/{name}"

    def step(self, seconds: float) -> None:
        """Steps the reported NTP clock by `seconds` more (negative: back)."""
        with self._lock:
            self._step += round(seconds * (1 << 32))
            self._stepped_reports = 0

    def wait_for_reports(self, n: int, timeout: float = 30) -> None:
        """Waits until `n` sender reports went out since the last `step`."""
        with self._lock:
            if not self._lock.wait_for(lambda: self._stepped_reports >= n, timeout):
                raise CameraError(f"{self._stepped_reports} of {n} stepped sender reports "
                                  f"in {timeout} s")

    def close(self) -> None:
        import socket
        self._closed = True
        for s in [self._listener] + self._sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def __enter__(self) -> SenderReportProxy:
        return self

    def __exit__(self, *exc):
        self.close()

    def _accept(self) -> None:
        import socket
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            camera = socket.create_connection(("127.0.0.1", self._camera_port))
            self._sockets += [client, camera]
            threading.Thread(target=self._pipe, args=(client, camera), daemon=True,
                             name="sr-proxy-up").start()
            threading.Thread(target=self._from_camera, args=(camera, client), daemon=True,
                             name="sr-proxy-down").start()

    @staticmethod
    def _pipe(src, dst) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _close_quietly(dst)

    def _from_camera(self, camera, client) -> None:
        buf = bytearray()
        try:
            while data := camera.recv(65536):
                buf += data
                out = bytearray()
                while (n := self._message_length(buf)) is not None:
                    msg = buf[:n]
                    del buf[:n]
                    if msg[0] == 0x24 and msg[1] & 1:  # '$' on an RTCP channel
                        self._rewrite_rtcp(msg, 4)
                    out += msg
                if out:
                    client.sendall(out)
        except OSError:
            pass
        finally:
            _close_quietly(client)

    @staticmethod
    def _message_length(buf: bytearray) -> int | None:
        """The length of the whole message at the start of `buf`, None if incomplete."""
        if not buf:
            return None
        if buf[0] == 0x24:  # '$' channel u16-length packet
            if len(buf) < 4:
                return None
            n = 4 + int.from_bytes(buf[2:4], "big")
        else:  # an RTSP response or request: headers, then Content-Length bytes of body
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return None
            length = 0
            for line in bytes(buf[:end]).split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            n = end + 4 + length
        return n if len(buf) >= n else None

    def _rewrite_rtcp(self, msg: bytearray, pos: int) -> None:
        """Shifts the NTP timestamp of every sender report in the compound RTCP packet
        at `msg[pos:]` (RFC 3550 §6.1: each packet's length is in 32-bit words minus 1)."""
        with self._lock:
            step = self._step
            while pos + 4 <= len(msg):
                ptype = msg[pos + 1]
                length = 4 * (int.from_bytes(msg[pos + 2:pos + 4], "big") + 1)
                if ptype == self.SR and pos + 16 <= len(msg):
                    ntp = int.from_bytes(msg[pos + 8:pos + 16], "big")
                    msg[pos + 8:pos + 16] = ((ntp + step) % (1 << 64)).to_bytes(8, "big")
                    self.reports += 1
                    if step:
                        self._stepped_reports += 1
                        self._lock.notify_all()
                pos += length


def _close_quietly(sock) -> None:
    import socket
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
