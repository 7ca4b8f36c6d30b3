"""Proves the test camera (camera.py driving rtsp_server.py) is a real RTSP camera.

These are tests of the test harness (marked `harness`; test/run.py counts them apart
from nvr's). Every check reads the camera the way the recorder will: PyAV, demux only, RTSP
interleaved over TCP. What is pinned: codec, size, 90 kHz timestamps stepping by exactly
90000/fps, a key frame every GOP (the first within one GOP of joining), and each control
command's effect as a client sees it: stop (end of stream, then 404 until start),
pause (no packets, so PyAV's read timeout fires, while the session survives), restart
on the same port, Digest/Basic authentication, 8 simultaneous clients, a clip that
loops without a seam, and an audio track beside the video with a proxy that steps the
NTP clock of the RTCP sender reports.

About 30 s on an idle 2-core machine (~40 s while other work runs); each test starts its
own camera, ~0.3 s once the session's first camera has encoded the clips.
"""

from __future__ import annotations

import fractions
import socket
import sys
import threading
import time

import av
import pytest

import camera
from camera import (DEFAULT_STREAMS, CameraError, Stream, make_rtsp_camera,  # noqa: F401
                    rtsp_camera)

pytestmark = pytest.mark.harness

OPEN_TIMEOUT_S = 10
CODEC_NAMES = {"h264": "h264", "h265": "hevc"}  # ours -> FFmpeg's


def open_stream(url: str, read_timeout_s: float = 10) -> av.container.InputContainer:
    return av.open(url, options={"rtsp_transport": "tcp"},
                   timeout=(OPEN_TIMEOUT_S, read_timeout_s))


def read_packets(container, n: int) -> list[av.Packet]:
    """The next n packets (fewer if the stream ends first)."""
    out = []
    for pkt in container.demux(container.streams.video[0]):
        if pkt.size == 0:  # the empty packet PyAV yields at end of stream
            continue
        out.append(pkt)
        if len(out) == n:
            break
    return out


def read_to_end(container, limit_s: float) -> bool:
    """Reads until the stream ends (True) or limit_s passes (False)."""
    deadline = time.monotonic() + limit_s
    for _ in container.demux(container.streams.video[0]):
        if time.monotonic() > deadline:
            return False
    return True


def check_timing(stream: Stream, packets: list[av.Packet]):
    """pts == dts stepping by exactly one frame; a key frame every GOP, the first within one."""
    pts = [p.pts for p in packets]
    if pts[0] is None:  # PyAV may give the first packet no timestamps
        pts, packets = pts[1:], packets[1:]
    assert None not in pts
    assert [p.dts for p in packets] == pts
    steps = {b - a for a, b in zip(pts, pts[1:])}
    assert steps == {stream.frame_duration_90k}
    keys = [i for i, p in enumerate(packets) if p.is_keyframe]
    assert keys and keys[0] < stream.gop
    assert keys == list(range(keys[0], len(packets), stream.gop))


@pytest.mark.parametrize("stream", DEFAULT_STREAMS, ids=[s.name for s in DEFAULT_STREAMS])
def test_stream_is_real_video(rtsp_camera, stream):
    with open_stream(rtsp_camera.url(stream.name)) as c:
        vs = c.streams.video[0]
        assert vs.codec_context.name == CODEC_NAMES[stream.codec]
        assert (vs.codec_context.width, vs.codec_context.height) == (stream.width,
                                                                     stream.height)
        assert vs.time_base == fractions.Fraction(1, 90000)
        # Parameter sets from the SDP's sprop-parameter-sets, Annex B.
        assert vs.codec_context.extradata.startswith(b"\x00\x00\x00\x01")
        packets = read_packets(c, 2 * stream.gop + 1)
    assert len(packets) == 2 * stream.gop + 1
    check_timing(stream, packets)
    assert len({bytes(p) for p in packets}) == len(packets)  # the picture moves


def test_clip_loops_seamlessly(make_rtsp_camera):
    # A one-GOP clip: 91 packets cross its end at least twice.
    main = Stream("main")
    cam = make_rtsp_camera([main], clip_seconds=1)
    with open_stream(cam.url("main")) as c:
        packets = read_packets(c, 3 * main.gop + 1)
    check_timing(main, packets)


def test_stop_ends_clients_and_refuses_opens_until_start(rtsp_camera):
    url = rtsp_camera.url("main")
    with open_stream(url) as c, open_stream(rtsp_camera.url("sub")) as other:
        assert read_packets(c, 5)
        rtsp_camera.stop_stream("main")
        assert read_to_end(c, limit_s=5), "client of a stopped stream kept getting video"
        assert read_packets(other, 20), "stopping main disturbed sub"
    with pytest.raises(av.error.HTTPNotFoundError):
        open_stream(url)
    rtsp_camera.start_stream("main")
    with open_stream(url) as c:
        check_timing(DEFAULT_STREAMS[0], read_packets(c, 31))


def test_pause_stalls_video_and_resume_continues_the_session(rtsp_camera):
    main = DEFAULT_STREAMS[0]
    url = rtsp_camera.url("main")
    arrivals: list[tuple[float, int | None]] = []  # (time.monotonic(), pts), patient client
    done = threading.Event()

    def read_patiently(container):
        for pkt in container.demux(container.streams.video[0]):
            arrivals.append((time.monotonic(), pkt.pts))
            if done.is_set():
                break

    with open_stream(url, read_timeout_s=2) as impatient, \
            open_stream(url, read_timeout_s=10) as patient:
        reader = threading.Thread(target=read_patiently, args=(patient,), name="patient")
        reader.start()
        assert read_packets(impatient, 5)
        paused_at = time.monotonic()
        rtsp_camera.pause("main")
        with pytest.raises(av.error.ExitError):  # PyAV's read timeout: no packet for 2 s
            read_packets(impatient, 10_000)
        assert time.monotonic() - paused_at >= 2
        time.sleep(max(0.0, paused_at + 2.5 - time.monotonic()))  # the stall's length
        rtsp_camera.resume("main")
        resumed_at = time.monotonic()
        deadline = resumed_at + 10   # 20 packets come in ~0.7 s (it was a 1.5 s sleep)
        while len([t for t, _ in list(arrivals) if t > resumed_at]) < 20:
            if time.monotonic() > deadline or not reader.is_alive():
                break   # the assertion below says so
            time.sleep(0.05)
        done.set()
        reader.join(10)
        assert not reader.is_alive()
    gaps = [b[0] - a[0] for a, b in zip(arrivals, arrivals[1:])]
    assert max(gaps) >= 2.0
    after = [t for t, _ in arrivals if t > resumed_at]
    assert len(after) >= 20, "the paused session did not carry video again"
    # Timestamps kept running through the stall: one jump of about its length.
    pts = [p for _, p in arrivals if p is not None]
    steps = [b - a for a, b in zip(pts, pts[1:])]
    jumps = [s for s in steps if s != main.frame_duration_90k]
    assert len(jumps) == 1 and jumps[0] >= 2 * 90000


def test_restart_keeps_the_port(rtsp_camera):
    port = rtsp_camera.port
    url = rtsp_camera.url("main")
    with open_stream(url) as c:
        assert read_packets(c, 5)
        rtsp_camera.restart()
        try:
            assert read_to_end(c, limit_s=5), "client kept getting video across a restart"
        except av.error.FFmpegError:
            pass  # the connection dropped: an error is as good as the end
    assert rtsp_camera.port == port
    with open_stream(url) as c:
        assert read_packets(c, 5)


def www_authenticate(cam, name: str) -> str:
    """The WWW-Authenticate header the camera answers an unauthenticated DESCRIBE with."""
    with socket.create_connection(("127.0.0.1", cam.port), timeout=5) as s:
        s.sendall(f"DESCRIBE {cam.url(name)} RTSP/1.0\r\nCSeq: 1\r\n\r\n".encode())
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = s.recv(4096)
            assert chunk, f"connection closed after {reply!r}"
            reply += chunk
    head = reply.decode().split("\r\n")
    assert head[0] == "RTSP/1.0 401 Unauthorized"
    return next(h.split(":", 1)[1].strip() for h in head
                if h.lower().startswith("www-authenticate:"))


@pytest.mark.parametrize("method", ["digest", "basic"])
def test_auth(make_rtsp_camera, method):
    password = "p@ss:w/rd %"  # needs quoting in a URL
    cam = make_rtsp_camera([Stream("main")], user="admin", password=password, auth=method)
    assert www_authenticate(cam, "main").lower().startswith(method)
    with pytest.raises(av.error.HTTPUnauthorizedError):
        open_stream(cam.url("main"))
    with pytest.raises(av.error.HTTPUnauthorizedError):
        open_stream(cam.url("main", "admin", "wrong"))
    with open_stream(cam.url("main", "admin", password)) as c:
        assert read_packets(c, 5)


def test_eight_simultaneous_clients(rtsp_camera):
    main = DEFAULT_STREAMS[0]
    results: dict[int, list | Exception] = {}

    def client(i):
        try:
            with open_stream(rtsp_camera.url("main")) as c:
                results[i] = read_packets(c, main.gop + 1)
        except Exception as e:  # reported by the assertion below, with its traceback
            results[i] = e

    threads = [threading.Thread(target=client, args=(i,), name=f"client-{i}")
               for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == list(range(8))
    for i, packets in results.items():
        assert not isinstance(packets, Exception), f"client {i}: {packets!r}"
        check_timing(main, packets)


def test_control_errors(rtsp_camera):
    with pytest.raises(CameraError, match="no stream 'nosuch'"):
        rtsp_camera.pause("nosuch")
    with pytest.raises(KeyError):
        rtsp_camera.url("nosuch")
    rtsp_camera.stop_stream("sub")
    rtsp_camera.stop_stream("sub")  # stop and start are idempotent
    rtsp_camera.start_stream("main")


def test_failed_start_explains(make_rtsp_camera):
    with pytest.raises(CameraError, match=r"(?s)did not become ready.*codec must be h264"):
        make_rtsp_camera([Stream("bad", codec="vp8")])


def test_skip_reason_says_what_to_install(monkeypatch, tmp_path):
    # A python without site packages, like a machine without python3-gi, cannot import
    # gi (a venv with Debian's site packages, which runs the tests with PyAV 10, could).
    no_site = tmp_path / "python-without-site-packages"
    no_site.write_text(f'#!/bin/sh\nexec {sys.executable} -S "$@"\n')
    no_site.chmod(0o755)
    monkeypatch.setattr(camera, "SYSTEM_PYTHON", str(no_site))
    camera.unavailable_reason.cache_clear()
    try:
        reason = camera.unavailable_reason()
    finally:
        camera.unavailable_reason.cache_clear()
    assert reason is not None and "No module named 'gi'" in reason
    assert "python3-gi" in reason and "gir1.2-gst-rtsp-server-1.0" in reason


AUDIO_STREAM = Stream("av", "h264", 320, 240, fps=15, kbps=300, gop=15, audio=True)


def test_audio_track_and_a_stepped_sender_report_clock(make_rtsp_camera):
    """`audio=True` adds a G.711 A-law track (20 ms packets) beside unchanged video; set
    up alone, the video times as ever. Set up together, FFmpeg times packets from the
    RTCP sender reports (more than one stream), so SenderReportProxy's step of their
    NTP clock shows in the video's pts: 5 s forward makes one frame 5 s long."""
    cam = make_rtsp_camera([AUDIO_STREAM])
    with av.open(cam.url("av"), options={"rtsp_transport": "tcp",
                                         "allowed_media_types": "video"},
                 timeout=(OPEN_TIMEOUT_S, 10)) as c:
        assert [s.type for s in c.streams] == ["video"]
        check_timing(AUDIO_STREAM, read_packets(c, 2 * AUDIO_STREAM.gop + 1))
    with camera.SenderReportProxy(cam.port) as proxy, open_stream(proxy.url("av")) as c:
        assert [(s.type, s.codec_context.name) for s in c.streams] == [
            ("video", "h264"), ("audio", "pcm_alaw")]
        assert c.streams.audio[0].codec_context.sample_rate == 8000
        video, audio, steps = [], [], []
        for pkt in c.demux():
            if pkt.size == 0 or pkt.pts is None:
                continue
            (video if pkt.stream.type == "video" else audio).append(pkt)
            if pkt.stream.type == "video" and len(video) >= 2:
                steps.append(video[-1].pts - video[-2].pts)
                if len(video) == 30:       # 2 s in: sender reports of both have come
                    assert proxy.reports >= 2
                    proxy.step(5)
                if steps[-1] > 90000 or len(video) == 30 + 15 * 10:
                    break
        assert {len(bytes(p)) for p in audio} == {160}   # 20 ms of 8 kHz A-law
        assert len(audio) > 3 * len(video)               # 50 a second against 15
        # Before the step: 1/15 s give or take ~10 ms (where FFmpeg goes from RTP to
        # sender report timing at the first report, one frame measured 6810 ticks, and
        # the reports' rounding moves others a tick or two); then the 5 s frame.
        assert all(abs(d - 6000) < 1500 for d in steps[:-1]), [d for d in steps if d != 6000]
        assert abs(steps[-1] - (5 * 90000 + 6000)) < 9000
