"""GET /api/system (system.py): how nvr is doing, for the System page.

A database recorded through the real streamer -> writer -> syncer path in simulated time
(test/replay.py), served by a real web.Server; the figures are checked against what the
test did: the recorder's status as given, the expected fps and bitrate from the
recordings (then from the SPS once they are older than the window), each dir's use and
floor, the last flush and a failed one, uptime in simulated time, versions as
`nvr.py --version` says them. The page itself, with a real camera going away and coming
back, is test_ui.py's test_system_page_follows_a_stream_failing_and_recovering.
"""

from __future__ import annotations

import http.client
import json
import os
import sqlite3

import pytest

import auth
import codec
import db as dbmod
import nvr
import recording
import retention
import system
import web
from clips import make_clip
from conftest import START_NS, make_testdb
from replay import record

NS = 1_000_000_000


def get(port: int, path: str = "/api/system"):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", path)
    r = c.getresponse()
    status, ctype, body = r.status, r.headers["Content-Type"], r.read()
    c.close()
    return status, ctype, body


class FakeRecorder:
    """recorder.Recorder's status() only: what the route shows of it."""

    def __init__(self, statuses):
        self.statuses = statuses

    def status(self):
        return self.statuses


def serve(t, clocks, recorder=None) -> web.Server:
    binds = [nvr.Bind(("ipv4", "127.0.0.1:0"),
                      allow_unauthenticated_permissions=auth.Permissions(view_video=True)),
             nvr.Bind(("ipv4", "127.0.0.1:0"))]
    srv = web.Server(t.db, nvr.Config("unused", None, binds), clocks=clocks)
    srv.recorder = recorder
    srv.start()
    return srv


@pytest.fixture
def recorded(tmp_path):
    clocks = __import__("clock").SimulatedClocks(START_NS)
    t = make_testdb(tmp_path, clocks)
    clip = make_clip(str(tmp_path / "a.mp4"), frames=90, gop=30)
    rows = record(t, clip, clocks, frames=450)   # 15 s at 30 fps
    yield t, clocks, rows
    t.db.close()
    recording.set_server_zone(None)


def test_report_of_a_recorded_database(recorded):
    t, clocks, rows = recorded
    status = {"state": "recording", "sinceSec": 1.5, "runStartSec": 1.5,
              "lastFrameSec": 2.5, "lastFrameAgeSec": 0.1, "fps": 29.5,
              "bitrateBps": 1e5, "runs": 2, "lastError": "camera ended the stream",
              "lastErrorSec": 1.0}
    clocks.sleep(7)   # uptime: the time recording took plus these 7
    srv = serve(t, clocks, FakeRecorder({t.stream_id: status}))
    try:
        port, closed = srv.addresses[0][1], srv.addresses[1][1]
        # viewVideo, as /api/metrics; no parameters.
        assert get(closed)[0] == 401
        assert get(port, "/api/system?x=1")[0] == 400
        code, ctype, body = get(port)
        assert (code, ctype) == (200, "application/json")
        doc = json.loads(body)
    finally:
        srv.stop()

    # Uptime: since the database was opened, in the (simulated) monotonic time.
    assert doc["startSec"] == START_NS / NS
    assert doc["nowSec"] == clocks.realtime() / NS
    assert doc["uptimeSec"] == pytest.approx(doc["nowSec"] - doc["startSec"])
    assert doc["uptimeSec"] > 7 + 10   # 450 frames: the first 2 s came at once
    # Versions: what `nvr.py --version` prints, without its install paths.
    v = doc["versions"]
    text = nvr.version_text()
    for line in (f"nvr {v['nvr']} (", f"Python {v['python']} (", f"PyAV {v['pyav']}\n",
                 f"FFmpeg {v['ffmpeg']} (", f"SQLite {sqlite3.sqlite_version}\n",
                 f"argon2-cffi {v['argon2Cffi']}"):
        assert line in text, (line, text)
    assert set(v["ffmpegLibraries"]) == {"libavcodec", "libavformat", "libavutil"}
    assert os.path.dirname(nvr.__file__) not in body.decode()

    # The stream: the recorder's status as it gave it; expected from the recordings.
    assert doc["recording"] is True
    (s,) = doc["streams"]
    cam = t.db.cameras[t.camera_id]
    assert s["id"] == t.stream_id and s["streamType"] == "main" and s["record"] is True
    assert s["cameraShortName"] == cam.short_name
    assert s["cameraUuid"] == str(__import__("uuid").UUID(bytes=cam.uuid))
    assert s["status"] == status
    e = s["expected"]
    frames = sum(r.video_samples for r in rows)
    media = sum(r.media_duration_90k for r in rows)
    wall = sum(r.wall_duration_90k for r in rows)
    assert e["recordings"] == len(rows) and e["fpsFrom"] == "recordings"
    assert e["fps"] == pytest.approx(frames * 90000 / media)
    assert e["fps"] == pytest.approx(30, rel=0.01)
    assert e["bitrateFrom"] == "recordings"
    assert e["bitrateBps"] == pytest.approx(sum(r.sample_file_bytes for r in rows) * 8 * 90000
                                            / wall)
    assert e["recordingsSec"] == pytest.approx(wall / 90000)
    assert e["spsFps"] == 30   # libx264 writes the VUI timing

    # The dir: used as retention counts it, free and total from statvfs, the floor.
    (d,) = doc["dirs"]
    assert d["id"] == t.dir_id and d["path"] == t.sample_dir and d["open"] is True
    assert d["usedBytes"] == sum(dbmod.round_up(r.sample_file_bytes) for r in rows)
    st = os.statvfs(t.sample_dir)
    assert d["totalBytes"] == st.f_blocks * st.f_frsize
    assert abs(d["freeBytes"] - st.f_bavail * st.f_frsize) < 1 << 30
    assert d["freeSpaceFloorBytes"] == retention.default_floor_bytes(d["totalBytes"])
    assert d["freeSpaceFloor"] == "default" and d["streamIds"] == [t.stream_id]

    # The last flush: record()'s "test" one, when it began (the clock stood still).
    f = doc["lastFlush"]
    assert f["reason"] == "test" and f["timeSec"] == doc["nowSec"] - 7
    assert f["durationSec"] == 0 and "error" not in f
    assert doc["lastFlushError"] is None
    assert doc["flushes"] >= 1 and doc["flushErrors"] == 0

    p = doc["process"]
    assert p["rssBytes"] > 10 << 20 and p["threads"] >= 1 and p["cpuSec"] > 0
    assert 0 < p["openFds"] < p["maxFds"]


def test_without_a_recorder_every_stream_is_off_and_old_video_expects_the_sps_rate(recorded):
    """A server with no recorder (read-only, or tests): every stream `off`, in the
    recorder's shape. Recordings older than the window: the SPS's frame rate, no bitrate."""
    t, clocks, rows = recorded
    clocks.sleep(system.EXPECTED_WINDOW_SEC + 60)
    srv = serve(t, clocks)
    try:
        code, _, body = get(srv.addresses[0][1])
    finally:
        srv.stop()
    assert code == 200
    doc = json.loads(body)
    assert doc["recording"] is False
    (s,) = doc["streams"]
    assert s["status"] == system.off_status(doc["startSec"])
    assert set(s["status"]) == {"state", "sinceSec", "runStartSec", "lastFrameSec",
                                "lastFrameAgeSec", "fps", "bitrateBps", "runs", "lastError",
                                "lastErrorSec"}
    e = s["expected"]
    assert (e["fps"], e["fpsFrom"], e["spsFps"]) == (30, "sps", 30)
    assert (e["bitrateBps"], e["bitrateFrom"], e["recordings"]) == (None, None, 0)


def test_a_failed_flush_is_shown_with_its_error(recorded):
    t, clocks, rows = recorded

    def fail(cur):
        raise sqlite3.OperationalError("disk I/O error")

    t.db.flush_hooks.append(fail)
    clocks.sleep(5)
    with pytest.raises(sqlite3.OperationalError):
        t.db.flush("retention")
    t.db.flush_hooks.remove(fail)
    doc = system.report(type("S", (), {"db": t.db, "clocks": clocks, "recorder": None}), "x")
    assert doc["lastFlushError"] == {"timeSec": clocks.realtime() / NS, "reason": "retention",
                                     "durationSec": 0, "error": "disk I/O error"}
    assert doc["lastFlush"]["reason"] == "test" and doc["flushErrors"] == 1
    # The next good flush doesn't hide that one failed.
    t.db.flush("after")
    doc = system.report(type("S", (), {"db": t.db, "clocks": clocks, "recorder": None}), "x")
    assert doc["lastFlush"]["reason"] == "after" and doc["lastFlushError"]["reason"] == "retention"


def test_a_closed_dir_and_a_configured_floor(recorded):
    """A dir nvr hasn't opened: no statvfs, so no free/total/effective floor; the floor
    setting as the CLI says it."""
    t, clocks, rows = recorded
    d = t.db.dirs[t.dir_id]
    d.config = {**d.config, "freeSpaceFloorPercent": 3}
    got = system._dirs(t.db)
    st = os.statvfs(t.sample_dir)
    assert got[0]["freeSpaceFloor"] == "3%"
    assert got[0]["freeSpaceFloorBytes"] == st.f_blocks * st.f_frsize * 3 // 100
    opened, d.dir = d.dir, None
    try:
        got = system._dirs(t.db)
    finally:
        d.dir = opened
    assert got[0]["open"] is False
    assert (got[0]["totalBytes"], got[0]["freeBytes"], got[0]["freeSpaceFloorBytes"]) == \
        (None, None, None)
    assert got[0]["usedBytes"] == sum(dbmod.round_up(r.sample_file_bytes) for r in rows)


def test_sample_entry_parameters_round_trip(tmp_path):
    """codec.parameters_from_sample_entry reads back what the sample entry was built from."""
    for enc, fps in (("libx264", 25), ("libx265", 15)):
        path = make_clip(str(tmp_path / f"{enc}.mp4"), encoder=enc, fps=fps, frames=fps, gop=fps)
        import av
        with av.open(path) as c:
            cc = c.streams.video[0].codec_context
            p = codec.parameters_from_extradata(cc.name, bytes(cc.extradata))
        q = codec.parameters_from_sample_entry(p.sample_entry)
        assert q == p and q.frame_rate == fps
    with pytest.raises(codec.CodecError, match="not an H.264/H.265 sample entry"):
        codec.parameters_from_sample_entry(b"\0\0\0\x56mp4v" + bytes(80))
    with pytest.raises(codec.CodecError, match="has no avcC/hvcC box"):
        codec.parameters_from_sample_entry(p.sample_entry[:86])
