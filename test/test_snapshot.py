"""snapshot.py: the frame shown at an instant, as a JPEG, checked with independent readers.

Clips (clips.py) draw an 8-pixel white bar at x = 4i for frame i, so the frame a JPEG
shows is read off its pixels; ffprobe reads every JPEG, and ffmpeg, seeking view.mp4 of
the same recording on its own, must decode the same picture (within JPEG's error).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import threading
import time

import av
import pytest

import clock
import mp4
import recording
import snapshot
import dir as dirmod
from clips import make_clip
from conftest import START_NS, make_testdb
from replay import clip_writer, drain, record, start_run

SEC = 90_000
FRAME = 3000        # 30 fps
ZONE = "America/Los_Angeles"


@dataclasses.dataclass
class Recorded:
    t: object
    h264: list    # 270, 90, 90 frames (the last ends the run)
    h265: list
    tmp: object


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    recording.set_server_zone(ZONE)
    tmp = tmp_path_factory.mktemp("still")
    clocks = clock.SimulatedClocks(START_NS)
    t = make_testdb(tmp, clocks, zone=ZONE)
    a = make_clip(str(tmp / "a.mp4"), frames=90, gop=30)
    h = make_clip(str(tmp / "h.mp4"), frames=90, gop=30, encoder="libx265")
    ext = t.db.add_stream(t.camera_id, "ext", dict(t.db.streams[t.stream_id].config), t.dir_id)
    h264 = record(t, a, clocks, frames=450)
    h265 = record(t, h, clocks, frames=180, stream_id=ext)
    yield Recorded(t, h264, h265, tmp)
    t.db.close()
    recording.set_server_zone(None)


@pytest.fixture
def stills(recorded):
    s = snapshot.Stills(recorded.t.db, workers=2)
    yield s
    s.close()


def luma(jpeg: bytes) -> av.VideoFrame:
    with av.open(__import__("io").BytesIO(jpeg), format="mjpeg") as c:
        (frame,) = list(c.decode(video=0))
    return frame


def bar_x(frame: av.VideoFrame) -> int:
    """Where the clip's white bar is in a decoded picture of 320 pixels' width."""
    gray = frame.reformat(format="gray")
    plane = gray.planes[0]
    row = gray.height // 2 * plane.line_size
    line = bytes(plane)[row:row + gray.width]
    return max(range(gray.width - 7), key=lambda x: sum(line[x:x + 8]))


def frame_number_shown(jpeg: bytes) -> int:
    """Where the JPEG's bar is, in frames: `bar(i)` for recorded frame i."""
    return round(bar_x(luma(jpeg)) / 4)


def bar(i: int) -> int:
    """Recorded frame i is clip frame i % 90 (clips loop), whose bar is at 4i mod 312."""
    return (i % 90) % 78


def wall_of(row, media_90k: int) -> int:
    return row.start_time_90k + mp4.rescale(media_90k, row.media_duration_90k,
                                            row.wall_duration_90k)


def ffprobe_jpeg(path: str) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-of", "json", path],
                         check=True, capture_output=True, text=True).stdout
    (s,) = json.loads(out)["streams"]
    return s


def ffmpeg_frame_at(path: str, sec: float) -> bytes:
    """ffmpeg's own picture at `sec` into a file (accurate seek), as gray pixels."""
    return subprocess.run(
        ["ffmpeg", "-v", "error", "-ss", f"{sec:.6f}", "-i", path, "-frames:v", "1",
         "-f", "rawvideo", "-pix_fmt", "gray", "-"],
        check=True, capture_output=True).stdout


def gray_pixels(jpeg: bytes) -> bytes:
    f = luma(jpeg).reformat(format="gray")
    p = f.planes[0]
    return b"".join(bytes(p)[r * p.line_size:r * p.line_size + f.width] for r in range(f.height))


def test_recorded_as_expected(recorded):
    assert [r.video_samples for r in recorded.h264] == [270, 90, 90]
    assert [r.video_samples for r in recorded.h265] == [180]


@pytest.mark.parametrize("frame", [0, 1, 29, 30, 44, 59, 269])
def test_exact_frame_at_each_instant(recorded, stills, frame):
    """Frame starts, one tick in and one tick before the next: the frame covering t.
    29 and 59 are worst cases (the end of a GOP: 29 frames decoded before it)."""
    row = recorded.h264[0]
    sid = recorded.t.stream_id
    for media in (frame * FRAME, frame * FRAME + 1, frame * FRAME + FRAME - 1):
        st = stills.still(sid, time_90k=wall_of(row, media))
        assert frame_number_shown(st.jpeg) == bar(frame), media
        assert st.frame_time_90k == wall_of(row, frame * FRAME)
        assert st.key == (frame % 30 == 0)
        assert (st.width, st.height) == (320, 180)


def test_matches_ffmpeg_seeking_view_mp4(recorded, stills, tmp_path):
    """The same pixels ffmpeg shows at that second of the recording's view.mp4."""
    t, row = recorded.t, recorded.h264[0]
    path = str(tmp_path / "view.mp4")
    with open(path, "wb") as out:
        out.write(mp4.build_view(t.db, t.stream_id, [str(row.recording_id)]).read())
    for frame in (0, 17, 59, 200):
        st = stills.still(t.stream_id, time_90k=wall_of(row, frame * FRAME))
        theirs = ffmpeg_frame_at(path, frame * FRAME / SEC)
        ours = gray_pixels(st.jpeg)
        assert len(ours) == len(theirs) == 320 * 180
        mean_error = sum(abs(a - b) for a, b in zip(ours, theirs)) / len(ours)
        assert mean_error < 2.0, (frame, mean_error)


def test_jpeg_read_by_ffprobe(recorded, stills, tmp_path):
    st = stills.still(recorded.t.stream_id, time_90k=wall_of(recorded.h264[0], 10 * FRAME))
    path = tmp_path / "s.jpg"
    path.write_bytes(st.jpeg)
    s = ffprobe_jpeg(str(path))
    assert (s["codec_name"], s["width"], s["height"]) == ("mjpeg", 320, 180)
    assert s["pix_fmt"] == "yuvj420p"


def test_across_a_recording_boundary(recorded, stills):
    first, second = recorded.h264[0], recorded.h264[1]
    sid = recorded.t.stream_id
    last = stills.still(sid, time_90k=first.end_time_90k - 1)
    assert frame_number_shown(last.jpeg) == bar(269)
    assert last.recording_id == first.recording_id
    nxt = stills.still(sid, time_90k=second.start_time_90k)
    assert frame_number_shown(nxt.jpeg) == bar(270) and nxt.key
    assert nxt.recording_id == second.recording_id


def test_last_frame_of_a_run(recorded, stills):
    """The run's last recording ends with a trailing zero-duration frame."""
    row = recorded.h264[-1]
    st = stills.still(recorded.t.stream_id, time_90k=row.end_time_90k - 1)
    assert frame_number_shown(st.jpeg) in (bar(448), bar(449))


def test_key_mode_shows_the_key_frame_at_or_before(recorded, stills):
    row = recorded.h264[0]
    before = stills.decodes
    st = stills.still(recorded.t.stream_id, time_90k=wall_of(row, 59 * FRAME + 5), key=True)
    assert frame_number_shown(st.jpeg) == bar(30) and st.key
    assert st.frame_time_90k == wall_of(row, 30 * FRAME)
    assert stills.decodes - before == 1   # one frame decoded, not the GOP


def test_s_syntax(recorded, stills):
    row = recorded.h264[1]
    sid = recorded.t.stream_id
    st = stills.still(sid, s=f"{row.recording_id}.{mp4.rescale(10 * FRAME, row.media_duration_90k, row.wall_duration_90k)}")
    assert frame_number_shown(st.jpeg) == bar((270 + 10))
    st = stills.still(sid, s=f"{row.recording_id}@{row.open_id}")
    assert frame_number_shown(st.jpeg) == bar(270)
    with pytest.raises(snapshot.NoVideo, match="open id"):
        stills.still(sid, s=f"{row.recording_id}@{row.open_id + 1}")
    with pytest.raises(snapshot.StillError, match="one instant"):
        stills.still(sid, s="1-2")
    with pytest.raises(snapshot.StillError, match="expected ID"):
        stills.still(sid, s="x")
    with pytest.raises(snapshot.NoVideo, match="past its end"):
        stills.still(sid, s=f"{row.recording_id}.{row.wall_duration_90k + 1}")
    with pytest.raises(snapshot.NoVideo, match="no recording"):
        stills.still(sid, s="99")
    with pytest.raises(snapshot.StillError, match="not both"):
        stills.still(sid, s="1", time_90k=1)


def test_no_video_names_the_nearest(recorded, stills):
    sid, rows = recorded.t.stream_id, recorded.h264
    gap = rows[-1].end_time_90k + 10 * SEC
    with pytest.raises(snapshot.NoVideo) as e:
        stills.still(sid, time_90k=gap)
    assert f"before it ends at {recording.format_time(rows[-1].end_time_90k)}" in str(e.value)
    with pytest.raises(snapshot.NoVideo) as e:
        stills.still(sid, time_90k=rows[0].start_time_90k - 5 * SEC)
    assert f"after it starts at {recording.format_time(rows[0].start_time_90k)}" in str(e.value)
    assert "before it" not in str(e.value)


def test_h265(recorded, stills):
    row = recorded.h265[0]
    st = stills.still(row.composite_id >> 32, time_90k=wall_of(row, 45 * FRAME))
    assert frame_number_shown(st.jpeg) == bar(45)


@pytest.mark.parametrize("want,expected", [
    ((160, None), (160, 90)), ((None, 90), (160, 90)), ((100, 100), (100, 56)),
    ((None, None), (320, 180)), ((641, None), (320, 180)), ((160, 1000), (160, 90))])
def test_scaled(recorded, stills, want, expected):
    st = stills.still(recorded.t.stream_id, time_90k=wall_of(recorded.h264[0], 0),
                      width=want[0], height=want[1])
    assert (st.width, st.height) == expected
    f = luma(st.jpeg)
    assert (f.width, f.height) == expected


def test_output_size_applies_pixel_aspect_ratio():
    assert snapshot.output_size(704, 480, (40, 33), None, None) == (854, 480)
    assert snapshot.output_size(704, 480, (40, 33), 427, None) == (428, 240)
    assert snapshot.output_size(1920, 1080, (1, 1), None, 1) == (2, 2)


def test_parse_size():
    assert snapshot.parse_size("width", None) is None
    assert snapshot.parse_size("width", "320") == 320
    for bad in ("0", "-1", "1e3", "99999", "٣", "0" * 5000):
        with pytest.raises(snapshot.StillError, match="width"):
            snapshot.parse_size("width", bad)


def test_cache_decodes_a_frame_once(recorded, stills):
    row = recorded.h264[0]
    sid = recorded.t.stream_id
    a = stills.still(sid, time_90k=wall_of(row, 100 * FRAME))
    n = stills.decodes
    b = stills.still(sid, time_90k=wall_of(row, 100 * FRAME + 7))   # the same frame
    assert b is a and stills.decodes == n
    c = stills.still(sid, time_90k=wall_of(row, 100 * FRAME), width=160)
    assert stills.decodes > n and c.etag != a.etag


def test_cache_is_bounded_in_bytes():
    c = snapshot._Cache(max_bytes=250)
    mk = lambda n: snapshot.Still(b"x" * n, 2, 2, 0, 0, 0, True, '"e"')  # noqa: E731
    c.put(("a",), mk(100))
    c.put(("b",), mk(100))
    assert c.get(("a",)) is not None   # a is now the most recent
    c.put(("c",), mk(100))
    assert c.get(("b",)) is None and c.get(("a",)) is not None and c.bytes == 200
    c.put(("d",), mk(1000))            # larger than the whole cache: not kept
    assert c.get(("d",)) is None and c.bytes == 200


def test_pool_refuses_beyond_its_queue():
    pool = snapshot.Pool(workers=1, queue_limit=1)
    release = threading.Event()
    started = threading.Event()
    results = []

    def block():
        started.set()
        release.wait(30)
        return "done"

    t1 = threading.Thread(target=lambda: results.append(pool.run(block)))
    t1.start()
    assert started.wait(30)
    t2 = threading.Thread(target=lambda: results.append(pool.run(lambda: "queued")))
    t2.start()
    # The second waits in the queue; a third finds the pool full.
    deadline = __import__("time").monotonic() + 30
    while pool._pending < 2:
        assert __import__("time").monotonic() < deadline
        __import__("time").sleep(0.01)
    with pytest.raises(snapshot.Busy, match="busy"):
        pool.run(lambda: "refused")
    release.set()
    t1.join(30)
    t2.join(30)
    assert sorted(results) == ["done", "queued"]
    assert pool.run(lambda: "again") == "again"   # the slots came back
    pool.close()


def test_decoder_threads_are_niced():
    pool = snapshot.Pool(workers=1)
    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    theirs = pool.run(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
    pool.close()
    assert theirs == min(19, mine + snapshot.NICE)


def test_growing_recording_and_latest(tmp_path):
    """A recording being written: stills of its frames so far, and the latest key frame."""
    clocks = clock.SimulatedClocks(START_NS)
    t = make_testdb(tmp_path, clocks, zone=ZONE)
    clip = make_clip(str(tmp_path / "clip.mp4"), frames=90, gop=30)
    w, frames, vse, syncer = clip_writer(t, clip)
    t0 = recording.to_90k_from_ns(START_NS)
    stills = snapshot.Stills(t.db, workers=1)
    try:
        with pytest.raises(snapshot.NoVideo, match="no recent video"):
            stills.latest(t.stream_id)
        for i in range(45):
            f = frames[i]
            w.write(f.data, t0 + f.pts_90k, f.pts_90k, f.is_key, vse)
        (row,) = t.db.list_recordings_by_id(t.stream_id, 0, 10)
        assert row.video_samples == 44   # the writer is one frame behind
        st = stills.still(t.stream_id, time_90k=wall_of(row, 40 * FRAME))
        assert frame_number_shown(st.jpeg) == 40
        latest = stills.latest(t.stream_id)
        assert frame_number_shown(latest.jpeg) == 30 and latest.key
        n = stills.decodes
        assert stills.latest(t.stream_id) is latest and stills.decodes == n  # cached
        for i in range(45, 80):
            f = frames[i]
            w.write(f.data, t0 + f.pts_90k, f.pts_90k, f.is_key, vse)
        assert frame_number_shown(stills.latest(t.stream_id).jpeg) == 60
        w.close("test")
        drain(syncer)
        t.db.flush("test")
        assert frame_number_shown(stills.latest(t.stream_id).jpeg) == 60
    finally:
        stills.close()
        t.db.close()


# --- over HTTP: still.jpg and latest.jpg -----------------------------------------------------

@pytest.fixture(scope="module")
def http(recorded):
    import http.client
    import uuid as uuidlib

    import auth
    import nvr
    import web
    binds = [nvr.Bind(("ipv4", "127.0.0.1:0"),
                      allow_unauthenticated_permissions=auth.Permissions(view_video=True))]
    srv = web.Server(recorded.t.db, nvr.Config("unused", None, binds))
    srv.start()
    port = srv.addresses[0][1]
    cam = recorded.t.db.cameras[recorded.t.camera_id]
    base = f"/api/cameras/{uuidlib.UUID(bytes=cam.uuid)}/main"

    def get(path, headers=None):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        c.request("GET", base + path, headers=headers or {})
        r = c.getresponse()
        out = r.status, r.headers, r.read()
        c.close()
        return out

    yield get
    srv.stop()


def test_http_still_jpg(recorded, http):
    row = recorded.h264[0]
    status, h, body = http(f"/still.jpg?t={wall_of(row, 44 * FRAME + 10)}")
    assert status == 200, body
    assert h["Content-Type"] == "image/jpeg" and h["Cache-Control"] == "private, max-age=3600"
    assert int(h["X-Frame-Time-90k"]) == wall_of(row, 44 * FRAME)
    assert h["X-Recording-Id"] == f"{row.open_id}.{row.recording_id}"
    assert frame_number_shown(body) == bar(44)
    etag = h["ETag"]
    status, h2, body2 = http(f"/still.jpg?t={wall_of(row, 44 * FRAME)}",
                             {"If-None-Match": etag})
    assert (status, body2, h2["ETag"]) == (304, b"", etag)
    status, h, body = http(f"/still.jpg?s={row.recording_id}.{wall_of(row, 31 * FRAME) - row.start_time_90k}&key=true&width=160")
    assert status == 200 and abs(bar_x(luma(body)) - 4 * bar(30) / 2) <= 4   # half scale
    assert (luma(body).width, luma(body).height) == (160, 90)


@pytest.mark.parametrize("query,status,message", [
    ("", 400, b"either as t="),
    ("?t=1&s=0", 400, b"not both"),
    ("?t=abc", 400, b"t: invalid time"),
    ("?s=0-1", 400, b"one instant"),
    ("?s=0&width=0", 400, b"width=0"),
    ("?s=0&height=" + "0" * 5000, 400, b"height="),
    ("?s=0&key=yes", 400, b"key must be true or false"),
    ("?s=0&frame=1", 400, b"unknown parameter 'frame'"),
    ("?t=1000", 404, b"no video at"),
    ("?s=77", 404, b"no recording"),
])
def test_http_still_errors(http, query, status, message):
    got, _, body = http("/still.jpg" + query)
    assert got == status and message in body, body


def test_http_latest_jpg(recorded, http):
    status, h, body = http("/latest.jpg?height=90")
    assert status == 200, body
    assert h["Cache-Control"] == "private, no-cache"
    last = recorded.h264[-1]
    assert h["X-Recording-Id"] == f"{last.open_id}.{last.recording_id}"
    assert luma(body).height == 90


# --- the real test camera ----------------------------------------------------------------------

def _record_camera(tmp_path, url: str, *, until_recordings: int, stream_type="main"):
    """Records the camera through a Streamer (real time, 1 s rotation) until it has
    `until_recordings` finished recordings and a growing one; returns (t, syncer, stop)."""
    import stream
    t = make_testdb(tmp_path, clock.RealClocks(), zone=ZONE)
    t.db.update_stream(t.stream_id, config={**t.db.streams[t.stream_id].config, "url": url})
    syncer = dirmod.Syncer(t.db, t.dir_id)
    s = stream.Streamer(t.db, t.stream_id, syncer, stream.PyAvOpener(),
                        shutdown=threading.Event(), rotate_interval_sec=1)
    errors = []
    th = start_run(s, errors, name="s-still-main")
    deadline = time.monotonic() + 60
    while True:   # polled: the writer has no event to wait on
        unc = t.db.streams[t.stream_id].uncommitted
        done = [r for r in unc if not r.growing]
        if len(done) >= until_recordings and unc and unc[-1].growing and \
                unc[-1].video_samples >= 10:
            break
        assert th.is_alive() and not errors, errors
        assert time.monotonic() < deadline, "the camera didn't record"
        time.sleep(0.05)

    def stop():
        s.shutdown.set()
        th.join(30)
        assert not th.is_alive()
        t.db.close()
    return t, stop


def _frames_of(t, row):
    """Every frame of a recording (media start, key) from its index."""
    return [(f.start_90k, f.is_key)
            for f in recording.iter_index(bytes(t.db.get_video_index(row.composite_id)))]


@pytest.mark.parametrize("codec", ["main", "h265"])
def test_real_camera_stills_match_ffmpeg(tmp_path, rtsp_camera, codec):
    """Instants of recordings of the GStreamer camera: the first frame, a mid-GOP frame,
    a GOP's last frame, a recording's last frame and the next recording's first, and a
    frame of the growing recording: each JPEG shows what ffmpeg shows seeking view.mp4."""
    t, stop = _record_camera(tmp_path, rtsp_camera.url(codec), until_recordings=2)
    stills = snapshot.Stills(t.db, workers=2)
    try:
        rows = t.db.list_recordings_by_id(t.stream_id, 0, 100)
        first, second, growing = rows[0], rows[1], rows[-1]
        cases = []
        f0 = _frames_of(t, first)
        keys = [i for i, (_, k) in enumerate(f0) if k]
        cases += [(first, 0), (first, keys[0] + 7), (first, len(f0) - 1)]
        if len(keys) > 1:
            cases.append((first, keys[1] - 1))            # the end of a GOP
        cases.append((second, 0))
        cases.append((growing, min(8, growing.video_samples - 2)))
        for row, i in cases:
            frames = _frames_of(t, row)[:row.video_samples]
            start = frames[i][0]
            nxt = frames[i + 1][0] if i + 1 < len(frames) else row.media_duration_90k
            mid = (start + nxt) // 2
            wall = row.start_time_90k + mp4.rescale(mid, row.media_duration_90k,
                                                    row.wall_duration_90k)
            st = stills.still(t.stream_id, time_90k=wall)
            assert st.recording_id == row.recording_id
            # A growing recording's wall/media ratio moves as it grows (at most 500 ppm).
            expected = row.start_time_90k + mp4.rescale(start, row.media_duration_90k,
                                                        row.wall_duration_90k)
            assert abs(st.frame_time_90k - expected) <= (start // 1000 + 1 if
                                                         row is growing else 0)
            path = str(tmp_path / f"{row.recording_id}.mp4")
            with open(path, "wb") as out:
                b = mp4.FileBuilder("mp4")
                b.append(row, (0, row.media_duration_90k))
                out.write(b.build(t.db).read())
            theirs = ffmpeg_frame_at(path, start / SEC)
            ours = gray_pixels(st.jpeg)
            assert len(ours) == len(theirs) == 640 * 360, (row.recording_id, i)
            err = sum(abs(a - b) for a, b in zip(ours, theirs)) / len(ours)
            assert err < 3.0, (row.recording_id, i, err)
            # ...and not what ffmpeg shows a frame later (the camera's picture moves).
            if i + 1 < len(frames):
                later = ffmpeg_frame_at(path, frames[i + 1][0] / SEC)
                assert sum(abs(a - b) for a, b in zip(ours, later)) / len(ours) > err
    finally:
        stills.close()
        stop()


def test_still_in_view_is_the_players_frame(recorded, stills):
    """at= media time of view.mp4?s=...: the frame a player shows there, across the
    view's recordings and a trimmed start."""
    rows, sid = recorded.h264, recorded.t.stream_id
    ids = f"{rows[0].recording_id}-{rows[1].recording_id}"
    for at, frame in ((0, 0), (FRAME * 269 + 5, 269), (FRAME * 270, 270), (FRAME * 300 + 1, 300)):
        st = stills.still_in_view(sid, [ids], at)
        assert frame_number_shown(st.jpeg) == bar(frame), at
    # A view starting 1.5 frames in: at=0 is the frame holding that instant (frame 1).
    trimmed = f"{rows[0].recording_id}.{FRAME + FRAME // 2}-"
    assert frame_number_shown(stills.still_in_view(sid, [trimmed], 0).jpeg) == bar(1)
    with pytest.raises(snapshot.NoVideo, match="past the view's end"):
        stills.still_in_view(sid, [ids], 10**9)
    with pytest.raises(snapshot.StillError, match="invalid s"):
        stills.still_in_view(sid, ["x"], 0)


def test_http_still_at(recorded, http):
    rows = recorded.h264
    status, _, body = http(f"/still.jpg?s={rows[0].recording_id}-{rows[1].recording_id}&at={FRAME * 271}")
    assert status == 200 and frame_number_shown(body) == bar(271)
    assert http("/still.jpg?s=0&s=1")[0] == 400
    assert http("/still.jpg?t=1&s=0&at=0")[0] == 400


def test_encoding_logs_nothing(recorded, stills, caplog):
    """PyAV 10 passes FFmpeg's log on: the yuvj420p conversion's warning is no news."""
    with caplog.at_level(logging.DEBUG, logger="libav"):
        stills.still(recorded.t.stream_id, time_90k=wall_of(recorded.h264[0], 3 * FRAME + 1),
                     width=100)
    assert [r.getMessage() for r in caplog.records
            if r.name.startswith("libav") and r.levelno >= logging.INFO] == []
