"""streamtest.py: each failure class against a real counterpart, and the measurements of a
working H.264 and H.265 camera (test/camera.py's GStreamer RTSP server), checked with
ffprobe; the CLI's --json output.

Every test uses a limit of at most streamtest.LIMIT_SEC; most use less.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

import streamtest
from camera import Stream

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NVR = os.path.join(ROOT, "nvr.py")


def run_test(url, **kw):
    """streamtest.run, checking its time bound and phase order."""
    phases = []
    kw.setdefault("limit_sec", 6)
    t0 = time.monotonic()
    try:
        r = streamtest.run(url, on_phase=phases.append, **kw)
    except streamtest.StreamTestError as e:
        e.took = time.monotonic() - t0
        assert e.took <= kw["limit_sec"] + 0.5, (e.took, e.message)
        assert phases == list(streamtest.PHASES[:len(phases)])
        raise
    assert time.monotonic() - t0 <= kw["limit_sec"] + 0.5
    assert phases == list(streamtest.PHASES)
    return r


def failure(url, **kw) -> streamtest.StreamTestError:
    with pytest.raises(streamtest.StreamTestError) as ei:
        run_test(url, **kw)
    e = ei.value
    assert "\n" not in e.message
    return e


def ffprobe(data: bytes) -> dict:
    r = subprocess.run(["ffprobe", "-v", "error", "-print_format", "json", "-show_streams",
                        "-"], input=data, capture_output=True, check=True, timeout=30)
    return json.loads(r.stdout)["streams"][0]


@contextlib.contextmanager
def http_server():
    """A tiny web server (a camera's web page): `http://127.0.0.1:PORT/`."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"<html><body>camera login</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_OPTIONS = do_DESCRIBE = do_GET

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, name="http-page", daemon=True)
    t.start()
    try:
        yield srv.server_address[1]
    finally:
        srv.shutdown()
        srv.server_close()


# --- failures without a camera ---------------------------------------------------------

def test_http_url_is_not_rtsp():
    with http_server() as port:
        e = failure(f"http://127.0.0.1:{port}/")
    assert e.kind == "not_rtsp"
    assert "is not an rtsp:// URL" in e.message


def test_rtsp_url_to_a_web_server_is_not_rtsp():
    with http_server() as port:
        e = failure(f"rtsp://127.0.0.1:{port}/main")
    assert e.kind == "not_rtsp", (e.kind, e.detail)
    assert f"127.0.0.1:{port} didn't answer as an RTSP server" in e.message
    assert e.detail


def test_name_not_resolved():
    e = failure("rtsp://nonexistent.invalid/main")
    assert e.kind == "name_not_resolved"
    assert "can't resolve the host name 'nonexistent.invalid'" in e.message


def test_connection_refused():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    e = failure(f"rtsp://127.0.0.1:{port}/main")
    assert e.kind == "connection_refused", (e.kind, e.detail)
    assert f"127.0.0.1:{port} refused the connection" in e.message
    assert "Connection refused" in e.detail or "111" in e.detail


def test_silent_server_times_out_within_the_limit():
    s = socket.socket()   # accepts (the kernel's backlog) but never answers
    s.bind(("127.0.0.1", 0))
    s.listen(4)
    try:
        e = failure(f"rtsp://127.0.0.1:{s.getsockname()[1]}/main", limit_sec=2)
    finally:
        s.close()
    assert e.kind == "timeout", (e.kind, e.detail)
    assert "no answer from 127.0.0.1" in e.message and "within 2 s" in e.message
    assert "InvalidDataError" in e.detail   # PyAV's error for it, told apart by the time
    assert 1.0 <= e.took <= 2.5


@pytest.mark.parametrize("errno_, kind", [(113, "unreachable"), (101, "unreachable"),
                                           (110, "timeout"), (111, "connection_refused")])
def test_classify_by_errno(errno_, kind):
    """What a routed network adds (no route to host: this machine has loopback only),
    as PyAV raises it: an av.error.OSError subclass with FFmpeg's errno."""
    import av
    import os as os_
    e = av.error.OSError(errno_, os_.strerror(errno_))
    err = streamtest.classify_open_error(e, "rtsp://10.1.2.3:8554/main", 10)
    assert err.kind == kind
    assert "10.1.2.3" in err.message and os_.strerror(errno_) in err.detail


def test_unsupported_codec(tmp_path):
    """MJPEG and MPEG-4 Part 2 (the test camera serves neither: files opened the same way)."""
    for name, label in (("mjpeg", "MJPEG"), ("mpeg4", "MPEG-4 Part 2")):
        path = str(tmp_path / f"{name}.mkv")
        subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i",
                        "testsrc=size=320x240:rate=10", "-t", "1", "-c:v", name, path],
                       check=True, timeout=60)
        with pytest.raises(streamtest.StreamTestError) as ei:
            streamtest.run(path, limit_sec=5, require_rtsp=False)
        e = ei.value
        assert e.kind == "unsupported_codec"
        assert f"the stream is {label}: nvr records H.264 and H.265" in e.message
        assert repr(name) in e.detail


def test_anamorphic_snapshot_has_the_display_size(tmp_path):
    """704x480 with 40:33 pixels (an NTSC D1 sub stream) is shown, and snapshotted, as
    854x480. (The test camera's x264 always says 1:1: a file, opened the same way.)"""
    path = str(tmp_path / "d1.mkv")
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i",
                    "testsrc=size=704x480:rate=15", "-t", "3", "-vf", "setsar=40/33",
                    "-c:v", "libx264", "-g", "15", "-bf", "0", path], check=True, timeout=60)
    r = streamtest.run(path, limit_sec=5, require_rtsp=False)
    assert (r.width, r.height, r.pixel_aspect_ratio) == (704, 480, (40, 33))
    assert (r.display_width, r.display_height) == (854, 480)
    s = ffprobe(r.snapshot_jpeg)
    assert (s["codec_name"], s["width"], s["height"]) == ("mjpeg", 854, 480)
    assert r.gop_frames == 15 and r.frame_rate == pytest.approx(15, abs=0.1)


def test_bad_url():
    e = failure("rtsp://[fe80::1/main")
    assert e.kind == "bad_url"


# --- a camera --------------------------------------------------------------------------

def test_h264_camera(make_rtsp_camera):
    cam = make_rtsp_camera([Stream("main", "h264", 640, 360, fps=30, kbps=1000, gop=30)])
    r = run_test(cam.url("main"), limit_sec=8)
    assert (r.codec, r.width, r.height) == ("h264", 640, 360)
    assert r.rfc6381_codec.startswith("avc1.64")   # x264's High profile
    assert r.profile == "High"
    assert r.pixel_aspect_ratio == (1, 1) and (r.display_width, r.display_height) == (640, 360)
    assert r.frame_rate == pytest.approx(30, abs=0.5)
    assert (r.gop_frames, r.gop_sec) == (30, pytest.approx(1.0, abs=0.01))
    assert 300_000 < r.bitrate_bps < 3_000_000
    assert r.measured_sec >= streamtest.MEASURE_SEC
    assert r.browser == "yes"
    assert r.elapsed_sec <= 8
    s = ffprobe(r.snapshot_jpeg)
    assert (s["codec_name"], s["width"], s["height"]) == ("mjpeg", 640, 360)


def test_h265_camera_over_udp(make_rtsp_camera):
    cam = make_rtsp_camera([Stream("h265", "h265", 640, 360, fps=30, kbps=1000, gop=30)])
    r = run_test(cam.url("h265"), limit_sec=8, transport="udp")
    assert (r.codec, r.width, r.height, r.transport) == ("h265", 640, 360, "udp")
    assert r.rfc6381_codec.startswith("hvc1.1.")
    assert r.profile == "Main"
    assert r.frame_rate == pytest.approx(30, abs=0.5)
    assert r.gop_frames == 30
    assert r.browser == "depends" and "Safari" in r.browser_note
    s = ffprobe(r.snapshot_jpeg)
    assert (s["codec_name"], s["width"], s["height"]) == ("mjpeg", 640, 360)


def test_credentials_and_paths(make_rtsp_camera):
    cam = make_rtsp_camera([Stream("sub", "h264", 320, 240, fps=15, kbps=300, gop=15)],
                           user="admin", password="s3cret")
    e = failure(cam.url("sub"), username="admin", password="wrong")
    assert e.kind == "auth_failed", (e.kind, e.detail)
    assert "refused the username and password (401" in e.message
    assert "wrong" not in e.detail and "wrong" not in e.message
    e = failure(f"rtsp://127.0.0.1:{cam.port}/nope", username="admin", password="s3cret")
    assert e.kind == "not_found", (e.kind, e.detail)
    assert "no stream at /nope (404" in e.message
    r = run_test(cam.url("sub"), username="admin", password="s3cret", limit_sec=8,
                 transport="default")   # FFmpeg's choice: UDP first
    assert (r.width, r.height, r.gop_frames, r.transport) == (320, 240, 15, "default")
    assert r.frame_rate == pytest.approx(15, abs=0.3)


def test_key_frames_too_far_apart_and_none(make_rtsp_camera):
    cam = make_rtsp_camera([Stream("gop4", "h264", 320, 240, fps=15, kbps=200, gop=60),
                            Stream("gop20", "h264", 320, 240, fps=15, kbps=200, gop=300)],
                           clip_seconds=20)
    # 4 s between key frames against a 2 s maximum: told once a key frame and 2 s of
    # frames without another were seen, long before the limit.
    e = failure(cam.url("gop4"), limit_sec=8, max_gop_sec=2)
    assert e.kind == "gop_too_long", (e.kind, e.detail)
    assert "(more than 2 s)" in e.message and "I-frame" in e.message
    assert e.partial["width"] == 320 and e.partial["snapshotBytes"] > 0
    # 20 s between key frames, and the camera has just started (it starts each client
    # at the clip time since it started, the clip beginning with a key frame): none
    # within 3 s.
    e = failure(cam.url("gop20"), limit_sec=3)
    assert e.kind == "no_key_frame", (e.kind, e.detail)
    assert e.message.startswith("no key frame within 3 s")
    assert e.phase == "waiting for a key frame"


# --- Meter -----------------------------------------------------------------------------

def test_meter():
    m = streamtest.Meter(measure_sec=2)
    for i in range(90):   # 30 fps, a key frame every 40 frames, 1000 bytes each
        m.add(i * 3000, i % 40 == 5, 1000)
        assert m.done() == (i >= 60 and i >= 45)
    assert m.frame_rate() == pytest.approx(30)
    assert m.bitrate_bps() == 240_000
    assert m.gop() == (40, pytest.approx(40 / 30))
    assert m.gop_min_sec() == pytest.approx(5 / 30)   # before the first key frame
    m = streamtest.Meter()
    for i in range(10):
        m.add(i * 3000, False, 10)
    assert m.gop() is None and m.gop_min_sec() == pytest.approx(9 / 30)


# --- the command line ------------------------------------------------------------------

def nvr(*args, cwd, input=None):
    env = dict(os.environ, NVR_LOG="WARNING")
    return subprocess.run([sys.executable, NVR, *args], cwd=cwd, input=input, env=env,
                          capture_output=True, text=True, timeout=60)


def test_cli_json_and_snapshot(make_rtsp_camera, tmp_path):
    cam = make_rtsp_camera([Stream("sub", "h264", 320, 240, fps=15, kbps=300, gop=15)],
                           user="admin", password="s3cret")
    jpg = str(tmp_path / "snap.jpg")
    r = nvr("test-stream", cam.url("sub"), "--username", "admin", "--password-stdin",
            "--snapshot", jpg, "--json", cwd=str(tmp_path), input="s3cret\n")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["ok"] is True and (d["codec"], d["width"], d["height"]) == ("h264", 320, 240)
    assert d["gopFrames"] == 15 and d["browser"] == "yes"
    with open(jpg, "rb") as f:
        assert ffprobe(f.read())["codec_name"] == "mjpeg"
    # A failure is one object too, and exit status 1.
    r = nvr("test-stream", cam.url("sub"), "--json", cwd=str(tmp_path))
    assert r.returncode == 1
    d = json.loads(r.stdout)
    assert d["ok"] is False and d["error"] == "auth_failed" and d["detail"]
    # Without --json: the report, and errors as one line.
    r = nvr("test-stream", f"rtsp://127.0.0.1:{cam.port}/nope", cwd=str(tmp_path))
    assert r.returncode == 1 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr


def test_cli_config_stream_test(make_rtsp_camera, tmp_path):
    cam = make_rtsp_camera([Stream("sub", "h264", 320, 240, fps=15, kbps=300, gop=15)],
                           user="admin", password="s3cret")
    cwd = str(tmp_path)
    assert nvr("init", cwd=cwd).returncode == 0
    assert nvr("config", "camera", "add", "yard", "--username", "admin", "--password-stdin",
               cwd=cwd, input="s3cret\n").returncode == 0
    assert nvr("config", "stream", "add", "yard", "sub", "--url",
               f"rtsp://127.0.0.1:{cam.port}/sub", "--rtsp-transport", "tcp",
               cwd=cwd).returncode == 0
    r = nvr("config", "stream", "test", "yard", "sub", cwd=cwd)
    assert r.returncode == 0, r.stderr
    assert "320x240" in r.stdout and "key frames: every 15 frames" in r.stdout
    assert "s3cret" not in r.stdout + r.stderr
    # While `run` holds the database's lock (exclusive), the stored stream can't be read.
    import fcntl
    fd = os.open(os.path.join(cwd, "nvr-data", "db"), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        r = nvr("config", "stream", "test", "yard", "sub", cwd=cwd)
    finally:
        os.close(fd)
    assert r.returncode == 1
    # With no nvr answering on the control socket, the command says what to do.
    assert "control socket nvr-data/db/control.sock doesn't answer" in r.stderr
