"""recorder.py: the running system changed while it runs (issue #14 item 3).

Against the real GStreamer test camera (test/camera.py): with streams recording, a
`reconcile()` after a configuration change starts a new stream, restarts only the one
whose URL changed (its run ending "configuration changed: url"), stops one whose
recording was turned off, and leaves every other stream's run alone: same streamer,
no new run, recordings continuing back to back (run_offset 0, 1, 2, ... and each
starting where the previous ended, no trailing zero). `stop_stream` commits the last
recording so the stream can be deleted at once; `stop_dir` stops a dir's streams and
its syncer; `status()` goes connecting → recording → failing → recording.

Waits poll the database (frames land in memory, nothing to wait on), 50 ms apart,
each with a deadline.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

import clock
import db as dbmod
import recorder
import stream
from conftest import make_testdb

ROTATE_SEC = 3  # recordings of ~3 s: rotations within seconds; offsets 0, 1, then 2 free
DEADLINE_SEC = 30


def cfg(url: str, mode: str = "record") -> dict:
    return {"mode": mode, "url": url, "rtspTransport": "tcp", "retainBytes": 1 << 30,
            "flushIfSec": 0}


def rows_of(d, sid: int) -> list:
    return d.list_recordings_by_id(sid, 0, 1 << 31)


def wait_for(what: str, cond, timeout: float = DEADLINE_SEC):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def wait_recordings(d, sid: int, n: int, frames: int = 1) -> list:
    """Until the stream has `n` recordings, the newest with `frames` frames."""
    def ok():
        rows = rows_of(d, sid)
        return rows if len(rows) >= n and rows[-1].video_samples >= frames else None
    return wait_for(f"stream {sid}: {n} recordings", ok)


def assert_one_unbroken_run(rows, end_reason: str | None = None) -> None:
    """One run from the first row: run_offset 0, 1, 2, ..., no gap, no run end but
    `end_reason` on the last row if given."""
    assert [r.run_offset for r in rows] == list(range(len(rows)))
    for prev, r in zip(rows, rows[1:]):
        assert not prev.flags & dbmod.FLAG_TRAILING_ZERO, prev
        assert r.start_time_90k == prev.end_time_90k, (prev, r)
    assert rows[-1].end_reason == end_reason
    assert bool(rows[-1].flags & dbmod.FLAG_TRAILING_ZERO) == (end_reason is not None)


class Setup:
    """A database recording the camera's main and sub as camera "test-camera"."""

    def __init__(self, tmp_path, cam, *, start: bool = True):
        self.t = t = make_testdb(tmp_path, clock.RealClocks())
        self.d = d = t.db
        self.cam = cam
        d.update_stream(t.stream_id, config=cfg(cam.url("main")))
        self.main = t.stream_id
        self.sub = d.add_stream(t.camera_id, "sub", cfg(cam.url("sub")), t.dir_id)
        self.rec = recorder.Recorder(d, lambda s: stream.PyAvOpener(),
                                     shutdown=threading.Event(), rotate_interval_sec=ROTATE_SEC)
        if start:
            self.rec.start()

    def close(self):
        try:
            self.rec.stop()
        finally:
            self.d.close()


@pytest.fixture
def setup(tmp_path, rtsp_camera):
    s = Setup(tmp_path, rtsp_camera)
    yield s
    s.close()


def test_a_new_stream_starts_and_the_others_keep_their_runs(setup):
    d, rec = setup.d, setup.rec
    for sid in (setup.main, setup.sub):
        wait_recordings(d, sid, 2)  # past a rotation: a run under way
    before = {sid: (rec.streamers[sid], d.metrics.stream(sid).runs, len(rows_of(d, sid)))
              for sid in (setup.main, setup.sub)}
    offsets = {st.rotate_offset_sec for st in rec.streamers.values()}

    cam2 = d.add_camera("second", {"description": "", "username": "", "password": ""})
    third = d.add_stream(cam2, "main", cfg(setup.cam.url("h265")), setup.t.dir_id)
    assert rec.reconcile() == {third: "started"}
    assert rec.reconcile() == {}  # nothing changed since
    rows3 = wait_recordings(d, third, 1, frames=10)
    assert d.video_sample_entries[rows3[0].video_sample_entry_id].rfc6381_codec.startswith(
        "hvc1")
    assert rec.streamers[third].rotate_offset_sec not in offsets

    for sid, (st, runs, n) in before.items():
        # Recording went on through the reconcile, in the same run.
        rows = wait_recordings(d, sid, n + 2)
        assert rec.streamers[sid] is st
        assert d.metrics.stream(sid).runs == runs == 1
        assert_one_unbroken_run(rows)


def test_a_changed_url_restarts_that_stream_alone(setup):
    d, rec = setup.d, setup.rec
    for sid in (setup.main, setup.sub):
        wait_recordings(d, sid, 2)
    sub_streamer, sub_n = rec.streamers[setup.sub], len(rows_of(d, setup.sub))

    d.update_stream(setup.main, config=cfg(setup.cam.url("h265")))
    assert rec.reconcile() == {setup.main: "restarted: configuration changed: url"}

    rows = rows_of(d, setup.main)
    ended = [r for r in rows if r.flags & dbmod.FLAG_TRAILING_ZERO]
    assert [r.end_reason for r in ended] == ["configuration changed: url"]
    assert not ended[0].flags & dbmod.FLAG_UNCOMMITTED  # committed by the stop's flush
    assert_one_unbroken_run(rows[:rows.index(ended[0]) + 1], "configuration changed: url")
    # It reconnected, to the new URL: a new run of H.265.
    n_old = len(rows)
    rows = wait_recordings(d, setup.main, n_old + 1, frames=10)
    new = rows[n_old]
    assert new.run_offset == 0
    assert d.video_sample_entries[new.video_sample_entry_id].rfc6381_codec.startswith("hvc1")
    assert rec.streamers[setup.main].url == setup.cam.url("h265")

    # The sub stream didn't notice.
    rows = wait_recordings(d, setup.sub, sub_n + 2)
    assert rec.streamers[setup.sub] is sub_streamer
    assert d.metrics.stream(setup.sub).runs == 1
    assert_one_unbroken_run(rows)


def test_credentials_changed_restart_the_cameras_streams(setup):
    d, rec = setup.d, setup.rec
    wait_recordings(d, setup.main, 1, frames=5)
    d.update_camera(setup.t.camera_id, config={"description": "", "username": "admin",
                                               "password": "hunter22"})
    why = "configuration changed: username, password"
    assert rec.reconcile() == {setup.main: f"restarted: {why}", setup.sub: f"restarted: {why}"}
    assert rec.streamers[setup.main].password == "hunter22"
    assert [r.end_reason for r in rows_of(d, setup.main) if r.end_reason] == [why]


def test_recording_off_stops_and_a_stopped_stream_can_be_deleted(setup):
    d, rec = setup.d, setup.rec
    for sid in (setup.main, setup.sub):
        wait_recordings(d, sid, 1, frames=5)
    main_streamer = rec.streamers[setup.main]

    d.update_stream(setup.sub, config=cfg(setup.cam.url("sub"), mode=""))
    assert rec.reconcile() == {setup.sub: "stopped: recording turned off"}
    assert setup.sub not in rec.streamers
    rows = rows_of(d, setup.sub)
    assert rows[-1].end_reason == "recording turned off"
    assert not any(r.flags & dbmod.FLAG_UNCOMMITTED for r in rows)
    st = rec.status()[setup.sub]
    assert st["state"] == "off" and st["lastError"] == "recording turned off"
    assert st["runs"] == 1
    n = len(rows)
    time.sleep(1)  # a second in which a recording streamer would have written frames
    assert len(rows_of(d, setup.sub)) == n and rows_of(d, setup.sub)[-1].video_samples == \
        rows[-1].video_samples
    assert rec.streamers[setup.main] is main_streamer

    # stop_stream returns with the last recording committed: the stream can go at once
    # (db.py refuses to delete a stream with uncommitted recordings).
    rec.stop_stream(setup.main, "stream deleted")
    assert rows_of(d, setup.main)[-1].end_reason == "stream deleted"
    d.delete_stream(setup.main)
    assert rec.reconcile() == {}
    assert sorted(rec.status()) == [setup.sub]
    rec.stop_stream(setup.main, "again")  # no-op: not running


def test_stop_stream_ends_a_silent_cameras_read_at_once(setup):
    """A per-stream stop interrupts that stream's read (StallWatch.interrupt), as
    shutdown interrupts all: a camera gone silent doesn't hold it up for the 30 s frame
    timeout. The other stream goes on."""
    d, rec = setup.d, setup.rec
    for sid in (setup.main, setup.sub):
        wait_recordings(d, sid, 1, frames=5)
    sub_streamer = rec.streamers[setup.sub]
    setup.cam.pause("main")
    try:
        time.sleep(1.5)  # the camera silent (not a synchronisation: a stall's length)
        began = time.monotonic()
        rec.stop_stream(setup.main, "stopped by test")
        took = time.monotonic() - began
    finally:
        setup.cam.resume("main")
    assert took < 10  # ~0.2 s; the frame timeout would be 30 s
    assert rows_of(d, setup.main)[-1].end_reason == "stopped by test"
    n = len(rows_of(d, setup.sub))
    rows = wait_recordings(d, setup.sub, n + 1)
    assert rec.streamers[setup.sub] is sub_streamer
    assert_one_unbroken_run(rows)


def test_stop_dir_stops_its_streams_and_syncer_and_reconcile_starts_them_again(setup):
    d, rec, dir_id = setup.d, setup.rec, setup.t.dir_id
    for sid in (setup.main, setup.sub):
        wait_recordings(d, sid, 1, frames=5)
    old_syncer = rec.syncers[dir_id]
    assert rec.stop_dir(dir_id, "sample file dir moved") == [setup.main, setup.sub]
    assert rec.streamers == {} and rec.syncers == {}
    assert old_syncer.thread is None
    for sid in (setup.main, setup.sub):
        rows = rows_of(d, sid)
        assert rows[-1].end_reason == "sample file dir moved"
        assert not any(r.flags & dbmod.FLAG_UNCOMMITTED for r in rows)
    n = len(rows_of(d, setup.main))
    assert rec.reconcile() == {setup.main: "started", setup.sub: "started"}
    assert rec.syncers[dir_id] is not old_syncer and rec.syncers[dir_id].thread.is_alive()
    # Recording again, and the new syncer commits (flushIfSec 0: each recording).
    wait_for("a recording committed after the restart", lambda: any(
        not r.flags & dbmod.FLAG_UNCOMMITTED for r in rows_of(d, setup.main)[n:]))


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_status_goes_connecting_recording_failing_recording(tmp_path, make_rtsp_camera):
    cam = make_rtsp_camera(user="admin", password="s3cret-pw")
    s = Setup(tmp_path, cam, start=False)
    d, rec = s.d, s.rec
    try:
        d.update_camera(s.t.camera_id, config={"description": "", "username": "admin",
                                               "password": "s3cret-pw"})
        d.update_stream(s.sub, config=cfg(f"rtsp://127.0.0.1:{_closed_port()}/sub"))
        rec = s.rec = recorder.Recorder(d, lambda x: stream.PyAvOpener(),
                                        shutdown=threading.Event(),
                                        rotate_interval_sec=ROTATE_SEC)
        st = rec.status()
        assert st[s.main]["state"] == "connecting" and st[s.main]["runStartSec"] is None
        assert st[s.main]["lastFrameSec"] is None and st[s.main]["runs"] == 0
        began = time.time()
        rec.start()

        st = wait_for("recording", lambda: (x := rec.status()[s.main])["state"] == "recording"
                      and x)
        assert began <= st["runStartSec"] <= time.time()
        # The rates over 3 s of frames (the first second's are a burst of what the camera
        # buffered: metrics.StreamStats measures from its first window point).
        st = wait_for("3 s recorded", lambda: (x := rec.status()[s.main])["lastFrameSec"]
                      - x["runStartSec"] >= 3 and x)
        assert st["state"] == "recording"
        assert st["lastFrameAgeSec"] < 5 and 20 <= st["fps"] <= 40 and st["bitrateBps"] > 0
        assert st["runs"] == 1 and st["lastError"] is None

        # A closed port: connection refused, again and again: failing after 3.
        sub = wait_for("closed port failing",
                       lambda: (x := rec.status()[s.sub])["state"] == "failing" and x)
        assert "Connection refused" in sub["lastError"], sub
        assert sub["runs"] == 0 and sub["lastErrorSec"] >= sub["sinceSec"] - 0.001

        # The camera's stream goes away (its clients see the end, reopens get 404).
        cam.stop_stream("main")
        st = wait_for("failing", lambda: (x := rec.status()[s.main])["state"] == "failing"
                      and x, timeout=60)
        assert st["runStartSec"] is None and st["lastError"]
        assert "\n" not in st["lastError"] and "s3cret-pw" not in st["lastError"]
        assert "admin" not in st["lastError"], st["lastError"]
        cam.start_stream("main")
        st = wait_for("recording again", lambda: (x := rec.status()[s.main])["state"] ==
                      "recording" and x, timeout=60)
        assert st["runs"] == 2 and st["runStartSec"] >= st["sinceSec"] - 0.001
    finally:
        s.close()


def test_status_fails_after_30_s_without_a_frame(testdb, clocks):
    """No frame for FRAME_TIMEOUT_SEC is "failing", whatever the attempts say (the run
    ends then too, but a reopen can hang as long)."""
    st = stream.Streamer(testdb.db, testdb.stream_id, None, stream.Opener(),
                         shutdown=threading.Event())
    st._recording_started()
    st.stats.last_frame_ns = last = clocks.monotonic()
    last_sec = clocks.realtime() / 1e9
    assert st.status()["state"] == "recording"
    clocks.advance((stream.FRAME_TIMEOUT_SEC - 1) * clock.NANOS_PER_SEC)
    s = st.status()
    assert s["state"] == "recording" and s["lastFrameAgeSec"] == stream.FRAME_TIMEOUT_SEC - 1
    clocks.advance(clock.NANOS_PER_SEC)
    s = st.status()
    assert s["state"] == "failing"
    assert s["sinceSec"] == last_sec + stream.FRAME_TIMEOUT_SEC and last == 0


def test_failed_attempts_make_it_failing_at_three(testdb, clocks):
    st = stream.Streamer(testdb.db, testdb.stream_id, None, stream.Opener(),
                         shutdown=threading.Event())
    states = []
    for i in range(4):
        st._failed(stream.StreamError("rtsp://u:pw12@h/x: can't open: 401\nsecond line"))
        states.append(st.status()["state"])
    assert states == ["connecting", "connecting", "failing", "failing"]
    assert st.status()["lastError"] == "rtsp://h/x: can't open: 401 second line"
    st._recording_started()
    assert st.status()["state"] == "recording"


def test_a_stream_reconcile_cant_start_is_failing_saying_why(testdb):
    d = testdb.db
    rec = recorder.Recorder(d, lambda s: stream.Opener(), shutdown=threading.Event())
    try:
        sub = d.add_stream(testdb.camera_id, "sub", {**cfg("rtsp://h/sub"), "flushIfSec": -1},
                           testdb.dir_id)
        why = ("stream test-camera sub: flushIfSec is -1, not a whole number from 0 up; set it "
               "with `nvr.py config stream edit test-camera sub --flush-if-sec N`")
        assert rec.reconcile() == {sub: f"not started: {why}"}
        st = rec.status()[sub]
        assert st["state"] == "failing" and st["lastError"] == why
        d.update_stream(sub, config=cfg("rtsp://h/sub"))
        assert rec.reconcile() == {sub: "started"}
        assert rec.status()[sub]["state"] == "connecting"
        d.update_stream(sub, config=cfg("rtsp://h/sub", mode=""))
        assert rec.reconcile() == {sub: "stopped: recording turned off"}
        assert rec.status()[sub]["state"] == "off"
    finally:
        rec.stop()


def test_a_changed_dir_restarts_the_stream_with_a_syncer_for_the_new_dir(testdb, tmp_path):
    """(Not started: the streamers are made but never run.) The new dir gets its syncer;
    the old dir keeps its own (its recordings still age out)."""
    d = testdb.db
    rec = recorder.Recorder(d, lambda s: stream.Opener(), shutdown=threading.Event())
    try:
        assert list(rec.syncers) == [testdb.dir_id]
        dir2 = d.add_sample_file_dir(str(tmp_path / "sample2"))
        d.update_stream(testdb.stream_id, sample_file_dir_id=dir2)
        assert rec.reconcile() == {
            testdb.stream_id: "restarted: configuration changed: sampleFileDirId"}
        assert sorted(rec.syncers) == [testdb.dir_id, dir2]
        st = rec.streamers[testdb.stream_id]
        assert st.sample_file_dir_id == dir2 and st.syncer is rec.syncers[dir2]
        assert rec.stop_dir(dir2, "moving it") == [testdb.stream_id]
        assert sorted(rec.syncers) == [testdb.dir_id]
        assert rec.status()[testdb.stream_id]["lastError"] == "moving it"
    finally:
        rec.stop()


def test_scrub():
    assert stream.scrub("open rtsp://a:b@1.2.3.4:554/x failed") == "open rtsp://1.2.3.4:554/x failed"
    assert stream.scrub("x rtsp://admin@h/ y") == "x rtsp://h/ y"
    assert stream.scrub("the password hunter22 leaked", "hunter22") == "the password *** leaked"
    assert stream.scrub("a b", "b") == "a b"  # too short to mask without garbling


def test_free_offset():
    assert recorder._free_offset([], 60) == 0
    assert recorder._free_offset([0], 60) == 30
    assert recorder._free_offset([0, 30], 60) == 15
    assert recorder._free_offset([0, 20, 40], 60) == 10
