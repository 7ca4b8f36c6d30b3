"""writer.py, the syncer (dir.py) and the streamer (stream.py) in simulated time.

A clip made with PyAV is replayed as a camera would send it (replay.py's
`record`, like Moonfire's ProxyingStream): the first seconds arrive at once
(the camera's buffer), the rest in real time, with an arbitrary pts offset
and optionally a camera clock running fast or slow. Exact figures below
follow from reference §3.3-§3.4; the comments derive them.
"""

import errno
import hashlib
import io
import logging
import os
import sqlite3
import threading
import time

import pytest

import check
import clock
import db
import dir as dirmod
import mp4
import recording
import writer
from clips import make_clip
from conftest import START_NS, make_testdb
from fakes import FakeFile, FakeFs, FaultyFs
from replay import drain, record

T0_90K = recording.to_90k_from_ns(START_NS)  # a multiple of 3 s and of 60 s
SEC = 90_000


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """3 s of 320x180 H.264 at 30 fps, a key frame every second."""
    return make_clip(str(tmp_path_factory.mktemp("clip") / "clip.mp4"), frames=90, gop=30)


def frames_of(t, cid):
    return list(recording.iter_index(t.db.get_video_index(cid)))


def test_rotation_durations_and_start_times(tmp_path, clocks, clip):
    t = make_testdb(tmp_path, clocks)
    rows = record(t, clip, clocks)
    # Frame i (0-based) arrives at T0 + max(0, (i+1)/30 s - 2 s). The first
    # recording rotates at the first key frame past second T0+6 (offset 0, the
    # next 3 s boundary after T0, plus one interval for a run's first): frame
    # 270. Later ones at each key frame past the next boundary: 90 frames each.
    assert [r.video_samples for r in rows] == [270, 90, 90, 90, 60]
    assert [r.video_sync_samples for r in rows] == [9, 3, 3, 3, 2]
    assert [r.run_offset for r in rows] == [0, 1, 2, 3, 4]
    assert [r.flags for r in rows] == [0, 0, 0, 0, db.FLAG_TRAILING_ZERO]
    assert [r.end_reason for r in rows] == [None] * 4 + ["end of clip"]
    # The least-delayed frames were the buffered ones: the start is T0 - 2 s.
    assert rows[0].start_time_90k == T0_90K - 2 * SEC
    for a, b in zip(rows, rows[1:]):
        assert b.start_time_90k == a.end_time_90k  # runs have no gaps or overlaps
    # Camera and local clocks agree: wall = media, exact per-frame durations.
    assert [r.wall_duration_90k for r in rows] == [810_000, 270_000, 270_000, 270_000, 177_000]
    for r in rows:
        fr = frames_of(t, r.composite_id)
        assert fr[0].is_key
        assert all(f.duration_90k == 3000 for f in fr[:-1])
    assert frames_of(t, rows[-1].composite_id)[-1].duration_90k == 0
    assert frames_of(t, rows[0].composite_id)[-1].duration_90k == 3000
    # Files hold exactly the indexed bytes, and their hashes are recorded.
    for r in rows:
        path = os.path.join(t.sample_dir, dirmod.name_for(r.composite_id))
        assert os.path.getsize(path) == r.sample_file_bytes
    integ = t.db.conn.execute("select local_time_delta_90k, length(sample_file_blake2b_32) "
                              "from recording_integrity order by composite_id").fetchall()
    assert integ == [(None, 32)] + [(0, 32)] * 4
    s = t.db.streams[t.stream_id]
    assert (s.cum_recordings, s.cum_runs, s.cum_media_duration_90k) == (5, 1, 1_797_000)
    t.db.close()


def test_staggered_offset(tmp_path, clocks, clip):
    t = make_testdb(tmp_path, clocks)
    sub = t.db.add_stream(t.camera_id, "sub", dict(t.db.streams[t.stream_id].config), t.dir_id)
    rows = record(t, clip, clocks, stream_id=sub, offset=1)
    # Offset 1 s: the first boundary is T0+1, plus one interval: rotate past
    # T0+4, at frame 210; then past T0+7, T0+10, ...: 90 frames each.
    assert [r.video_samples for r in rows] == [210, 90, 90, 90, 90, 30]
    t.db.close()


@pytest.mark.parametrize("ppm,sign", [(1000, -1), (-1000, 1)])
def test_500_ppm_clamp(tmp_path, clocks, clip, ppm, sign):
    t = make_testdb(tmp_path, clocks)
    rows = record(t, clip, clocks, ppm=ppm)
    media = [r.media_duration_90k for r in rows]
    assert rows[0].wall_duration_90k == media[0]  # a run's first: wall = media
    for r in rows[1:4]:
        # A camera clock 1000 ppm fast (slow) is corrected by at most 500 ppm.
        assert r.wall_duration_90k == r.media_duration_90k + sign * (r.media_duration_90k // 2000)
    deltas = [d for (d,) in t.db.conn.execute(
        "select local_time_delta_90k from recording_integrity order by composite_id")][1:4]
    assert all(d * sign > 0 for d in deltas)
    t.db.close()


def test_parameter_change_starts_a_recording_in_the_same_run(tmp_path, clocks, clip):
    t = make_testdb(tmp_path, clocks)
    syncer = dirmod.Syncer(t.db, t.dir_id)
    w = writer.Writer(t.db, t.stream_id, syncer, shutdown=threading.Event(),
                      rotate_interval_sec=60)
    other = t.db.insert_video_sample_entry(320, 240, "avc1.42c01e", b"\0\0\0\x67avc1" + bytes(95))
    w.write(b"k", T0_90K, 0, True, t.vse_id)
    w.write(b"n", T0_90K + 3000, 3000, False, t.vse_id)
    with pytest.raises(writer.WriterError, match="changed on a non-key frame"):
        w.write(b"n", T0_90K + 6000, 6000, False, other)
    w.write(b"K", T0_90K + 6000, 6000, True, other)
    w.close("test")
    drain(syncer)
    t.db.flush("test")
    rows = t.db.list_recordings_by_id(t.stream_id, 0, 10)
    assert [(r.run_offset, r.video_sample_entry_id, r.video_samples) for r in rows] == [
        (0, t.vse_id, 2), (1, other, 1)]
    assert rows[1].start_time_90k == rows[0].end_time_90k
    t.db.close()


def test_a_growing_recording_reads_consistently_as_it_grows(tmp_path, clocks):
    """The writer shares its index with the uncommitted row rather than copying it per
    frame: at every step a reader gets a copy that agrees with the row, and the
    frames indexed later don't change copies already taken."""
    t = make_testdb(tmp_path, clocks)
    syncer = dirmod.Syncer(t.db, t.dir_id)
    w = writer.Writer(t.db, t.stream_id, syncer, shutdown=threading.Event(),
                      rotate_interval_sec=60)
    sizes = [50, 30, 40, 60, 20, 70]
    copies = []
    for i, n in enumerate(sizes):
        w.write(bytes([i]) * n, T0_90K + i * 3000, i * 3000, i in (0, 3), t.vse_id)
        rows = t.db.list_recordings_by_id(t.stream_id, 0, 10)
        if i == 0:
            assert rows == []  # nothing indexed yet: the first frame lasts until the next
            continue
        (r,) = rows
        index = t.db.get_video_index(r.composite_id)
        assert isinstance(index, bytes)
        fr = list(recording.iter_index(index))
        assert [f.bytes for f in fr] == sizes[:i] and [f.is_key for f in fr] == [
            j in (0, 3) for j in range(i)]
        assert (r.video_samples, r.video_sync_samples, r.sample_file_bytes,
                r.media_duration_90k) == (i, 1 + (i > 3), sum(sizes[:i]), 3000 * i)
        copies.append(index)
    w.close("test")
    for i, index in enumerate(copies, 1):
        assert len(list(recording.iter_index(index))) == i
    drain(syncer)
    t.db.flush("test")
    (r,) = t.db.list_recordings_by_id(t.stream_id, 0, 10)
    assert r.video_samples == len(sizes)
    assert t.db.get_video_index(r.composite_id) == recording.encode_index(
        [(3000, n, i in (0, 3)) for i, n in enumerate(sizes[:-1])] + [(0, sizes[-1], False)])
    t.db.close()


@pytest.mark.parametrize("pts,message", [
    (3000, "pts not monotonically increasing; got 3000 then 3000"),
    (1000, "pts not monotonically increasing; got 3000 then 1000"),
    (3000 + 27_000_001, "excessive pts jump from 3000 to 27003001"),
])
def test_bad_pts_ends_the_run(tmp_path, clocks, pts, message):
    t = make_testdb(tmp_path, clocks)
    syncer = dirmod.Syncer(t.db, t.dir_id)
    w = writer.Writer(t.db, t.stream_id, syncer, shutdown=threading.Event())
    w.write(b"k", T0_90K, 0, True, t.vse_id)
    w.write(b"n", T0_90K + 3000, 3000, False, t.vse_id)
    with pytest.raises(writer.WriterError, match=message):
        w.write(b"n", T0_90K + 6000, pts, False, t.vse_id)
    w.close(message)
    drain(syncer)
    t.db.flush("test")
    (r,) = t.db.list_recordings_by_id(t.stream_id, 0, 10)
    assert r.video_samples == 2 and r.flags == db.FLAG_TRAILING_ZERO and r.end_reason == message
    t.db.close()


# -- the write path through the fake seam --------------------------------------

def eio():
    return OSError(errno.EIO, "I/O error")


@pytest.fixture
def faked(tmp_path, clocks):
    """A test database whose dir's seam is a FakeFs."""
    t = make_testdb(tmp_path, clocks)
    fs = FakeFs(t.sample_dir)
    sfd = t.db.dirs[t.dir_id].dir
    real = sfd.fs
    sfd.fs = fs
    t.fs = fs
    yield t
    sfd.fs = real
    t.db.close()


# These tests script each write(2): `coalesce_bytes=0` writes each frame as it comes.

def test_write_path_retries_each_step(faked, clocks, caplog):
    t, fs = faked, faked.fs
    name = "0000000100000000"
    f = FakeFile(fs, f"{t.sample_dir}/{name}")
    fs.expect("create_file", name, error=eio())
    fs.expect("create_file", name, result=f)
    f.expect_write(error=eio())
    f.expect_write(2)          # a short write: the rest follows...
    f.expect_write(error=eio())  # ...after a failure, without writing "ke" twice
    f.expect_write()
    f.expect_write()
    syncer = dirmod.Syncer(t.db, t.dir_id)
    w = writer.Writer(t.db, t.stream_id, syncer, shutdown=threading.Event(),
                      coalesce_bytes=0)
    with caplog.at_level(logging.WARNING):
        w.write(b"key!", T0_90K, 0, True, t.vse_id)
        w.write(b"next", T0_90K + 3000, 3000, False, t.vse_id)
        w.close("test")
    assert bytes(f.written) == b"key!next"
    f.expect("sync")                # S2 (never retried: a failure is S2F, tested below)
    fs.expect("sync", error=eio())  # S3, retried
    fs.expect("sync")
    drain(syncer)
    fs.assert_done()
    assert clocks.monotonic() == 4 * clock.NANOS_PER_SEC  # four 1 s retry sleeps
    msgs = [r.getMessage() for r in caplog.records]
    # Each failing step once, and its end; the write failing again a second later is
    # counted, not logged again (logrepeat.py: an outage within the hour counts on).
    assert msgs == [line for what in (
        f"create {t.sample_dir}/{name}", f"write {t.sample_dir}/{name}",
        f"fsync dir {t.sample_dir}") for line in (
        f"{what}: [Errno 5] I/O error (retrying every 1 s)",
        f"{what}: succeeded after 1 s, 1 failed attempt")]
    t.db.flush("test")
    (r,) = t.db.list_recordings_by_id(t.stream_id, 0, 10)
    assert r.sample_file_bytes == 8 and r.video_samples == 2


def test_full_disk_stalls_then_resumes(faked, clocks):
    t, fs = faked, faked.fs
    f = FakeFile(fs)
    fs.expect("create_file", result=f)
    f.expect_write()
    for _ in range(5):
        f.expect_write(error=OSError(errno.ENOSPC, "No space left on device"))
    f.expect_write()
    w = writer.Writer(t.db, t.stream_id, dirmod.Syncer(t.db, t.dir_id), shutdown=threading.Event(),
                      coalesce_bytes=0)
    w.write(b"k", T0_90K, 0, True, t.vse_id)
    w.write(b"n", T0_90K + 3000, 3000, False, t.vse_id)
    assert clocks.monotonic() == 5 * clock.NANOS_PER_SEC
    assert bytes(f.written) == b"kn"
    fs.assert_done()


def test_shutdown_during_a_full_disk_abandons_the_recording(faked, clocks):
    t, fs = faked, faked.fs
    shutdown = threading.Event()
    f = FakeFile(fs)
    fs.expect("create_file", result=f)
    f.expect_write()
    calls = []

    def full(data):
        calls.append(1)
        if len(calls) == 3:
            shutdown.set()
        raise OSError(errno.ENOSPC, "No space left on device")
    for _ in range(3):
        f.expect("write", result=full)
    syncer = dirmod.Syncer(t.db, t.dir_id, shutdown=shutdown)
    w = writer.Writer(t.db, t.stream_id, syncer, shutdown=shutdown,
                      coalesce_bytes=0)
    w.write(b"k", T0_90K, 0, True, t.vse_id)
    with pytest.raises(clock.ShutdownError):
        w.write(b"n", T0_90K + 3000, 3000, False, t.vse_id)
    # close doesn't block: the recording is given up, its file unlinked.
    fs.expect("unlink", "0000000100000000")
    fs.expect("sync")
    w.close("NVR shutdown")
    fs.assert_done()
    assert syncer.queue.empty()
    t.db.flush("shutdown")
    s = t.db.streams[t.stream_id]
    assert s.cum_recordings == 1 and not s.uncommitted
    assert t.db.conn.execute("select count(*) from recording").fetchone()[0] == 0


def test_an_abandoned_recording_whose_unlink_was_given_up_is_removed_at_start_up(
        tmp_path, clocks):
    """Shutdown stops a write (full disk), then the unlink of the abandoned recording's
    file: the file stays, so the flush must not raise cum_recordings past its id, and
    start-up recovery removes it as abandoned. A flush that consumed the id of every
    abandoned recording, file gone or not, left an orphan that recovery kept: an id
    below cum_recordings with neither a recording nor a garbage row (invariant 2)."""
    t = make_testdb(tmp_path, clocks)
    sfd = t.db.dirs[t.dir_id].dir
    fs = sfd.fs = FaultyFs.wrapping(sfd.fs, "file.write", nth=2, err=errno.ENOSPC)
    fs.fail("unlink")
    shutdown = threading.Event()
    w = writer.Writer(t.db, t.stream_id, dirmod.Syncer(t.db, t.dir_id, shutdown=shutdown),
                      shutdown=shutdown,
                      coalesce_bytes=0)
    w.write(b"k" * 100, T0_90K, 0, True, t.vse_id)
    shutdown.set()
    with pytest.raises(clock.ShutdownError):
        w.write(b"n" * 100, T0_90K + 3000, 3000, False, t.vse_id)
    w.close("NVR shutdown")  # abandons it; its unlink fails and is given up
    assert fs.calls["unlink"] == 1
    name = dirmod.name_for(1 << 32)
    (r,) = t.db.streams[t.stream_id].uncommitted
    assert r.abandoned and not r.file_gone
    t.db.flush("NVR shutdown")
    assert t.db.streams[t.stream_id].cum_recordings == 0  # the file is still abandoned
    sfd.fs = fs.real
    t.db.close()
    assert name in os.listdir(t.sample_dir)
    d = db.Database.open_dir(t.db_dir, clocks)
    d.open_sample_file_dirs()  # R3
    assert os.listdir(t.sample_dir) == ["meta"]
    d.close()


def test_gc_path_retries(faked, clocks):
    t, fs = faked, faked.fs
    t.db.dirs[t.dir_id].garbage_needs_unlink.update({(1 << 32) | 7, (1 << 32) | 8})
    fs.expect("unlink", "0000000100000007", error=eio())
    fs.expect("unlink", "0000000100000007")
    fs.expect("unlink", "0000000100000008", error=FileNotFoundError(errno.ENOENT, "gone"))
    fs.expect("sync", error=eio())
    fs.expect("sync")
    assert dirmod.Syncer(t.db, t.dir_id).collect_garbage() == 2
    fs.assert_done()
    assert t.db.dirs[t.dir_id].garbage_unlinked == {(1 << 32) | 7, (1 << 32) | 8}
    assert clocks.monotonic() == 2 * clock.NANOS_PER_SEC


def test_retention_counts_the_recording_being_added(tmp_path, clocks):
    t = make_testdb(tmp_path, clocks)
    start = T0_90K
    a = t.add_recording(start_90k=start)
    t.add_recording(start_90k=start + SEC, run_offset=1)
    t.db.flush("test")
    s = t.db.streams[t.stream_id]
    t.db.update_stream(t.stream_id, config=dict(s.config, retainBytes=2 * 32768))
    c = t.add_recording(start_90k=start + 2 * SEC, run_offset=2, sync=False)
    syncer = dirmod.Syncer(t.db, t.dir_id)
    f = dirmod.File(os.open(os.path.join(t.sample_dir, dirmod.name_for(c)), os.O_RDONLY))
    syncer.save(c, SEC, f)
    drain(syncer)
    # Before any flush: the third recording counts, so the oldest is queued.
    assert [r.composite_id for r in s.to_delete] == [a]
    t.db.close()


def test_planned_flush_waits_flush_if_sec_after_the_start(tmp_path, clocks):
    t = make_testdb(tmp_path, clocks)
    s = t.db.streams[t.stream_id]
    t.db.update_stream(t.stream_id, config=dict(s.config, flushIfSec=120))
    c = t.add_recording(start_90k=T0_90K, frames=60 * 30, sync=False)  # 60 s
    syncer = dirmod.Syncer(t.db, t.dir_id)
    f = dirmod.File(os.open(os.path.join(t.sample_dir, dirmod.name_for(c)), os.O_RDONLY))
    syncer.save(c, 60 * SEC, f)
    assert syncer.iter()              # the save: plans a flush 120 - 60 s from now
    assert s.cum_recordings == 0
    assert syncer.iter()              # nothing queued: the timeout passes
    assert clocks.monotonic() == 60 * clock.NANOS_PER_SEC
    assert s.cum_recordings == 1 and not syncer.planned
    t.db.close()


def test_a_flush_satisfies_other_plans(tmp_path, clocks):
    t = make_testdb(tmp_path, clocks)
    c = t.add_recording(start_90k=T0_90K, sync=False)
    syncer = dirmod.Syncer(t.db, t.dir_id)
    f = dirmod.File(os.open(os.path.join(t.sample_dir, dirmod.name_for(c)), os.O_RDONLY))
    s = t.db.streams[t.stream_id]
    t.db.update_stream(t.stream_id, config=dict(s.config, flushIfSec=100))
    syncer.save(c, SEC, f)
    syncer.iter()
    t.db.flush("another dir's syncer")
    before = clocks.monotonic()
    syncer.iter()  # waits for the plan, finds it satisfied, flushes nothing
    assert not syncer.planned
    assert clocks.monotonic() - before == 99 * clock.NANOS_PER_SEC
    t.db.close()


def test_five_minutes_without_a_key_frame_ends_the_run(tmp_path, clocks):
    t = make_testdb(tmp_path, clocks)
    syncer = dirmod.Syncer(t.db, t.dir_id)
    w = writer.Writer(t.db, t.stream_id, syncer, shutdown=threading.Event())
    w.write(b"k", T0_90K, 0, True, t.vse_id)
    with pytest.raises(writer.WriterError, match="at least the maximum of 5 minutes; are key "
                                                 "frames too far apart"):
        for i in range(1, 400):  # one frame a second, never another key frame
            w.write(b"n", T0_90K + i * SEC, i * SEC, False, t.vse_id)
    # Frame 300's arrival gives frame 299 its duration, which would make 300 s.
    assert i == 300
    w.close("too long")
    drain(syncer)
    t.db.flush("test")
    (r,) = t.db.list_recordings_by_id(t.stream_id, 0, 10)
    # Closing indexes frame 299 as the trailing zero: 299 s, 300 frames.
    assert r.wall_duration_90k == 299 * SEC and r.video_samples == 300
    assert r.end_reason == "too long" and r.flags == db.FLAG_TRAILING_ZERO
    t.db.close()


# -- a recording always ends ----------------------------------------------------

def test_a_frame_of_0_bytes_ends_the_run_before_anything_is_written(tmp_path, clocks):
    """An empty frame (a key packet of parameter sets alone, stripped by stream.py
    before it learned to drop those) used to be written, then break the index at the
    next frame and leave the recording growing: every later run of the stream failed
    with "already growing a recording" until restart."""
    t = make_testdb(tmp_path, clocks)
    syncer = dirmod.Syncer(t.db, t.dir_id)
    w = writer.Writer(t.db, t.stream_id, syncer, shutdown=threading.Event())
    w.write(b"K" * 10, T0_90K, 0, True, t.vse_id)
    with pytest.raises(writer.WriterError, match="a frame of 0 bytes at pts 3000"):
        w.write(b"", T0_90K + 3000, 3000, True, t.vse_id)
    w.close("a frame of 0 bytes")
    drain(syncer)
    t.db.flush("test")
    (r,) = t.db.list_recordings_by_id(t.stream_id, 0, 10)
    assert (r.video_samples, r.sample_file_bytes, r.flags) == (1, 10, db.FLAG_TRAILING_ZERO)
    assert os.path.getsize(os.path.join(t.sample_dir, dirmod.name_for(r.composite_id))) == 10
    w = writer.Writer(t.db, t.stream_id, syncer, shutdown=threading.Event())
    w.write(b"K" * 10, T0_90K + 9 * SEC, 0, True, t.vse_id)  # the next run records
    w.close("test")
    t.db.close()


def test_close_abandons_the_recording_on_an_unexpected_error(tmp_path, clocks, monkeypatch):
    """A bug in ending a recording (here the index refusing the last frame) must not
    leave it growing: close gives it up, then re-raises."""
    t = make_testdb(tmp_path, clocks)
    syncer = dirmod.Syncer(t.db, t.dir_id)
    w = writer.Writer(t.db, t.stream_id, syncer, shutdown=threading.Event())
    w.write(b"K" * 10, T0_90K, 0, True, t.vse_id)
    w.write(b"n" * 10, T0_90K + 3000, 3000, False, t.vse_id)
    name = dirmod.name_for(w.cur.id)

    def broken(self, duration_90k, bytes_, is_key):
        raise ValueError("frame size 0 outside 1..2147483647")
    monkeypatch.setattr(recording.SampleIndexEncoder, "add_sample", broken)
    with pytest.raises(ValueError, match="frame size 0"):
        w.close("test")
    monkeypatch.undo()
    s = t.db.streams[t.stream_id]
    assert [(r.growing, r.abandoned, r.file_gone) for r in s.uncommitted] == [
        (False, True, True)]
    assert name not in os.listdir(t.sample_dir)
    assert syncer.queue.empty()
    w = writer.Writer(t.db, t.stream_id, syncer, shutdown=threading.Event())
    w.write(b"K" * 10, T0_90K + 9 * SEC, 9 * SEC, True, t.vse_id)  # the next run records
    w.write(b"n" * 10, T0_90K + 9 * SEC + 3000, 9 * SEC + 3000, False, t.vse_id)
    w.close("test")
    drain(syncer)
    t.db.flush("test")
    (r,) = t.db.list_recordings_by_id(t.stream_id, 0, 10)
    assert r.recording_id == 1 and r.video_samples == 2  # id 0 was used up by the abandoned one
    t.db.close()


# -- the syncer survives errors that aren't an I/O step's ------------------------

def flaky(fn, fails, error=None):
    """`fn`, except that the calls numbered in `fails` (from 1) raise `error`."""
    calls = []

    def call(*args, **kwargs):
        calls.append(args)
        if len(calls) in fails:
            raise error or sqlite3.OperationalError("disk I/O error")
        return fn(*args, **kwargs)
    call.calls = calls
    return call


def write_run(t, syncer, i):
    """One run of two frames, at `i` minutes."""
    w = writer.Writer(t.db, t.stream_id, syncer, shutdown=threading.Event())
    w.write(b"k" * 100, T0_90K + i * 60 * SEC, 0, True, t.vse_id)
    w.write(b"n" * 100, T0_90K + i * 60 * SEC + 3000, 3000, False, t.vse_id)
    w.close("test")


def test_a_database_error_in_a_save_is_retried_from_the_step_that_failed(
        tmp_path, clocks, caplog):
    """Retention's query failing (a disk I/O error on the database's disk) used to end
    the syncer thread: later recordings were never synced or committed, and the next
    start deleted them as abandoned. Now the save is retried 1 s later, from retention:
    S2 (which closes the file) and S4 (which counts the file's bytes) don't run again."""
    t = make_testdb(tmp_path, clocks)
    syncer = dirmod.Syncer(t.db, t.dir_id)
    t.db.delete_oldest_recordings = flaky(t.db.delete_oldest_recordings, {1})
    t.db.mark_synced = flaky(t.db.mark_synced, set())
    for i in range(3):
        write_run(t, syncer, i)
    with caplog.at_level(logging.WARNING):
        drain(syncer)
    assert clocks.monotonic() == 1 * clock.NANOS_PER_SEC  # one 1 s wait before the retry
    assert len(t.db.mark_synced.calls) == 3 and len(t.db.delete_oldest_recordings.calls) == 4
    assert [(r.getMessage(), r.exc_info) for r in caplog.records
            if r.levelno >= logging.WARNING] == [
        (f"{t.sample_dir}: save of 0000000100000000 failed: disk I/O error (retrying every "
         f"1 s)", None),  # a disk error is no bug: no traceback
        (f"{t.sample_dir}: save of 0000000100000000 succeeded after 1 s, 1 failed attempt",
         None)]
    s = t.db.streams[t.stream_id]
    assert [r.synced for r in s.uncommitted] == [True] * 3
    t.db.flush("test")
    assert s.cum_recordings == 3 and not s.uncommitted
    assert s.fs_bytes_to_add == 0  # each file counted once
    assert len(t.db.list_recordings_by_id(t.stream_id, 0, 10)) == 3
    t.db.close()


def test_a_persistent_error_keeps_warning_and_shutdown_gives_up(tmp_path, clocks, caplog):
    t = make_testdb(tmp_path, clocks)
    shutdown = threading.Event()
    syncer = dirmod.Syncer(t.db, t.dir_id, shutdown=shutdown)

    def failing(stream_id, *args, **kwargs):
        if len(failing.calls) == 2:
            shutdown.set()  # as Recorder.stop does, while the syncer still retries
        failing.calls.append(stream_id)
        raise sqlite3.OperationalError("disk I/O error")
    failing.calls = []
    t.db.delete_oldest_recordings = failing
    write_run(t, syncer, 0)
    write_run(t, syncer, 1)
    with caplog.at_level(logging.WARNING):
        drain(syncer)
    assert len(failing.calls) == 3 + 1  # three tries of the first save, one of the second
    assert clocks.monotonic() == 2 * clock.NANOS_PER_SEC
    msgs = [(r.getMessage(), r.exc_info is not None) for r in caplog.records]
    p = t.sample_dir
    assert msgs == [
        # Once, without a traceback (a disk error is no bug); the repeats are counted,
        # the next save's too (the same error of the same step).
        (f"{p}: save of 0000000100000000 failed: disk I/O error (retrying every 1 s)", False),
        (f"{p}: gave up on save of 0000000100000000 on shutdown (start-up recovery will "
         f"finish it)", False),
        (f"{p}: gave up on save of 0000000100000001 on shutdown (start-up recovery will "
         f"finish it)", False)]
    # Both were made durable and marked synced before retention failed: the final flush
    # commits them.
    t.db.flush("NVR shutdown")
    assert t.db.streams[t.stream_id].cum_recordings == 2
    t.db.close()


def test_a_flush_failing_for_a_day_is_logged_once_counted_and_its_end(tmp_path, clocks,
                                                                       caplog):
    """The syncer retries a failed flush every minute; a full database disk for a day
    used to log 1,440 warnings, each with a traceback."""
    t = make_testdb(tmp_path, clocks)
    syncer = dirmod.Syncer(t.db, t.dir_id)
    write_run(t, syncer, 0)
    drain(syncer)  # the save plans a flush now (flushIfSec 0)
    real_flush = t.db.flush

    def flush(reason):
        flush.calls += 1
        if flush.calls <= 1440:
            raise sqlite3.OperationalError("database or disk is full")
        return real_flush(reason)
    flush.calls = 0
    t.db.flush = flush
    with caplog.at_level(logging.WARNING):
        while syncer.planned:
            syncer.iter()
    assert flush.calls == 1441
    msgs = [r.getMessage() for r in caplog.records]
    p, reason = t.sample_dir, "0 s after the start of test-camera-main recording 0"
    assert len(msgs) < 40, msgs
    assert msgs[0] == (f"{p}: flush ({reason}) failed: database or disk is full (retrying "
                       f"every 60 s)")
    assert msgs[1] == (f"{p}: flush ({reason}) failed: database or disk is full (10 times "
                       f"in 9 min; retrying every 60 s)")
    assert msgs[-1] == f"{p}: flush ({reason}) succeeded after 1 d, 1,440 failed attempts"
    assert all(r.exc_info is None for r in caplog.records)  # a full disk is no bug
    assert t.db.streams[t.stream_id].cum_recordings == 1
    t.db.close()


def test_a_save_whose_fsync_fails_on_shutdown_closes_its_file(faked, clocks):
    t, fs = faked, faked.fs
    shutdown = threading.Event()
    f = FakeFile(fs)
    fs.expect("create_file", result=f)
    f.expect_write()
    f.expect_write()
    syncer = dirmod.Syncer(t.db, t.dir_id, shutdown=shutdown)
    w = writer.Writer(t.db, t.stream_id, syncer, shutdown=shutdown,
                      coalesce_bytes=0)
    w.write(b"k", T0_90K, 0, True, t.vse_id)
    w.write(b"n", T0_90K + 3000, 3000, False, t.vse_id)
    w.close("NVR shutdown")
    shutdown.set()
    f.expect("sync", error=eio())  # S2 fails: not retried (S2F), shutdown or not
    drain(syncer)
    fs.assert_done()
    assert f.closed
    (r,) = t.db.streams[t.stream_id].uncommitted
    assert not r.synced and r.abandoned and r.to_garbage  # the final flush moves it to garbage


def test_the_syncer_thread_survives_a_database_error(tmp_path):
    """The same as a thread, in real time: after the failed save (retried 1 s later),
    later recordings are still synced and committed, and the thread lives on."""
    t = make_testdb(tmp_path, clock.RealClocks())
    syncer = dirmod.Syncer(t.db, t.dir_id)
    t.db.delete_oldest_recordings = flaky(t.db.delete_oldest_recordings, {1})
    syncer.start()
    try:
        for i in range(3):
            write_run(t, syncer, i)
        s = t.db.streams[t.stream_id]
        deadline = time.monotonic() + 10
        while s.cum_recordings < 3:  # flushIfSec 0: the syncer flushes each at once
            assert time.monotonic() < deadline, [r.synced for r in s.uncommitted]
            time.sleep(0.05)
        assert syncer.thread.is_alive()
    finally:
        syncer.stop()
    t.db.flush("test")
    assert len(t.db.list_recordings_by_id(t.stream_id, 0, 10)) == 3
    t.db.close()


def test_a_huge_flush_if_sec_does_not_end_the_syncer_thread(tmp_path):
    """A flushIfSec beyond threading.TIMEOUT_MAX (a hand-edited or Moonfire database;
    the CLI refuses over a day) made the thread's wait raise OverflowError, ending it:
    later recordings were never synced or committed. The wait is now at most a day."""
    t = make_testdb(tmp_path, clock.RealClocks())
    s = t.db.streams[t.stream_id]
    t.db.update_stream(t.stream_id, config=dict(s.config, flushIfSec=10**10))
    waiting = threading.Event()   # the thread is about to wait with a flush planned
    recv = t.db.clocks.recv_timeout

    def recv_timeout(q, timeout):
        if timeout is not None and q.empty() and syncer.planned:
            waiting.set()
        return recv(q, timeout)
    t.db.clocks.recv_timeout = recv_timeout
    syncer = dirmod.Syncer(t.db, t.dir_id)
    syncer.start()
    try:
        write_run(t, syncer, 0)   # plans a flush 10**10 s from now; the thread waits
        write_run(t, syncer, 1)
        deadline = time.monotonic() + 10
        while not all(r.synced for r in s.uncommitted):
            assert time.monotonic() < deadline, [r.synced for r in s.uncommitted]
            time.sleep(0.05)
        # The thread waits (the failure was there) once the queue is empty; then a third
        # recording must still be synced. (This was a 0.2 s sleep, then is_alive().)
        waiting.wait(10)
        assert waiting.is_set(), "the syncer never waited on an empty queue"
        write_run(t, syncer, 2)
        while len([r for r in s.uncommitted if r.synced]) < 3:
            assert time.monotonic() < deadline + 10, [r.synced for r in s.uncommitted]
            time.sleep(0.05)
        assert syncer.thread.is_alive()
        assert syncer.planned and s.cum_recordings == 0   # the flush is still a plan
    finally:
        syncer.stop()
    t.db.flush("test")
    assert s.cum_recordings == 3
    t.db.close()


# -- the syncer's flush plan and start-up rotation --------------------------------

def test_a_failed_planned_flush_waits_a_minute_before_each_retry(tmp_path, clocks, caplog):
    """A planned flush that fails (the database's disk full or failing) is planned
    again FLUSH_RETRY_SEC later. Without the new plan the old one stayed due: the
    syncer retried at once, in a tight loop, one warning with a traceback each time."""
    t = make_testdb(tmp_path, clocks)
    attempts = []

    def failing(conn):  # a flush hook: runs inside the flush's transaction
        attempts.append(clocks.monotonic() // clock.NANOS_PER_SEC)
        raise sqlite3.OperationalError("database or disk is full")
    t.db.flush_hooks.append(failing)
    syncer = dirmod.Syncer(t.db, t.dir_id)
    write_run(t, syncer, 0)  # flushIfSec 0: the flush is due as soon as the save is done
    with caplog.at_level(logging.WARNING):
        for _ in range(1 + 6):  # the save, then six planned flushes
            assert syncer.iter()
    assert attempts == [0, 60, 120, 180, 240, 300]  # simulated seconds
    # At most a line per try, so at most one a minute (a rate limit may show fewer).
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert 1 <= len(warned) <= len(attempts)
    assert warned[0].endswith(
        f"flush (0 s after the start of test-camera-main recording 0) failed: database or "
        f"disk is full (retrying every {dirmod.FLUSH_RETRY_SEC} s)")
    t.db.flush_hooks.remove(failing)
    assert syncer.iter()  # the disk recovered: the next try, a minute later, commits
    assert clocks.monotonic() == 360 * clock.NANOS_PER_SEC
    assert t.db.streams[t.stream_id].cum_recordings == 1 and not syncer.planned
    t.db.close()


def test_start_up_enforces_a_lowered_retain_bytes(tmp_path, clocks):
    """retainBytes lowered while nvr was stopped (`config stream`, or a hand edit) is
    enforced at start-up (`Syncer.initial_rotation`), before anything is recorded:
    otherwise the stream would stay over its limit until its next recording."""
    t = make_testdb(tmp_path, clocks)
    ids = [t.add_recording(start_90k=T0_90K + i * SEC, run_offset=i) for i in range(4)]
    t.db.flush("test")
    s = t.db.streams[t.stream_id]
    t.db.update_stream(t.stream_id, config=dict(s.config, retainBytes=2 * 32768))  # 2 files
    t.db.close()
    d = db.Database.open_dir(t.db_dir, clocks)
    d.open_sample_file_dirs()
    dirmod.Syncer(d, t.dir_id).initial_rotation()
    assert [r.composite_id for r in d.list_recordings_by_id(t.stream_id, 0, 10)] == ids[2:]
    assert sorted(os.listdir(t.sample_dir)) == [dirmod.name_for(c) for c in ids[2:]] + ["meta"]
    assert d.conn.execute("select count(*) from garbage").fetchone()[0] == 0
    assert d.streams[t.stream_id].fs_bytes == 2 * 32768
    d.close()


# -- a failed fsync of a sample file abandons its recording (dir.py S2F) -----------

def file_states(t):
    """Each sample file's name -> which of invariant 2's states hold for it: 'row'
    (a recording row), 'garbage' (a garbage row), 'abandoned' (id >= cum_recordings)."""
    c = t.db.conn
    rows = {cid for (cid,) in c.execute("select composite_id from recording")}
    garbage = {cid for (cid,) in c.execute("select composite_id from garbage")}
    cum = dict(c.execute("select id, cum_recordings from stream"))
    out = {}
    for name in os.listdir(t.sample_dir):
        cid = dirmod.parse_name(name)
        if cid is not None:
            out[name] = [what for what, holds in (
                ("row", cid in rows), ("garbage", cid in garbage),
                ("abandoned", cid & 0xFFFFFFFF >= cum[cid >> 32])) if holds]
    return out


def test_a_failed_sample_file_fsync_abandons_the_recording_to_garbage(tmp_path, clocks, caplog):
    """After a failed fsync Linux may drop the file's dirty pages, and a retried fsync
    then succeeds with frames missing ("fsyncgate"). S2 retried forever, so such a
    recording could be committed with frames lost. Now the recording is abandoned: never
    committed, its file moved to garbage in the flush and unlinked; the run goes on and
    its next recording commits normally. Every file is in exactly one of invariant 2's
    states at each step."""
    t = make_testdb(tmp_path, clocks)
    sfd = t.db.dirs[t.dir_id].dir
    sfd.fs = FaultyFs.wrapping(sfd.fs, "file.sync")  # the first sample file's fsync: EIO
    syncer = dirmod.Syncer(t.db, t.dir_id)
    w = writer.Writer(t.db, t.stream_id, syncer, shutdown=threading.Event())
    w.write(b"k" * 100, T0_90K, 0, True, t.vse_id)
    w.write(b"n" * 100, T0_90K + 3000, 3000, False, t.vse_id)
    # A key frame past the first recording's rotation (T0 + 120 s, a run's first: two
    # intervals) ends recording 0 and starts recording 1 of the same run.
    w.write(b"K" * 100, T0_90K + 121 * SEC, 121 * SEC, True, t.vse_id)
    w.write(b"N" * 50, T0_90K + 121 * SEC + 3000, 121 * SEC + 3000, False, t.vse_id)
    a, b = dirmod.name_for(1 << 32), dirmod.name_for(1 << 32 | 1)
    with caplog.at_level(logging.WARNING):
        drain(syncer)  # recording 0's S2 fails: S2F
    assert [r.getMessage() for r in caplog.records] == [
        f"{t.sample_dir}/{a}: sample file fsync failed: EIO (Input/output error (injected: "
        f"file.sync call 1)); recording abandoned, its file goes to garbage; check the disk "
        f"(dmesg)"]
    assert caplog.records[0].levelno == logging.ERROR
    assert sfd.fs.calls["sync"] == 0  # no S3 for it: nothing will claim the file
    s = t.db.streams[t.stream_id]
    assert [(r.abandoned, r.synced, r.growing) for r in s.uncommitted] == [
        (True, False, False), (False, False, True)]
    assert [r.recording_id for r in t.db.list_recordings_by_id(t.stream_id, 0, 10)] == [1]
    assert file_states(t) == {a: ["abandoned"], b: ["abandoned"]}
    w.write(b"n" * 50, T0_90K + 122 * SEC, 122 * SEC, False, t.vse_id)  # the run goes on
    w.close("test")
    drain(syncer)  # recording 1: S2 (the second file.sync), S3, S4
    assert sfd.fs.calls["file.sync"] == 2 and sfd.fs.calls["sync"] == 1
    with caplog.at_level(logging.INFO):
        t.db.flush("test")
    assert ("added 1 recording(s) (1/1) of 200 B, deleted 0 (none) of 0 B, GCed 0, abandoned "
            "1 to garbage (1/0)") in caplog.text
    assert file_states(t) == {a: ["garbage"], b: ["row"]}  # moved in one transaction
    assert s.cum_recordings == 2 and not s.uncommitted
    # The abandoned recording's media and run count, as its successor's prev_* did.
    (row,) = t.db.list_recordings_by_id(t.stream_id, 0, 10)
    assert (row.recording_id, row.run_offset) == (1, 1)
    prev_media, prev_runs = t.db.conn.execute(
        "select prev_media_duration_90k, prev_runs from recording").fetchone()
    assert (prev_media, prev_runs) == (121 * SEC, 1)  # recording 0 started the run
    assert (s.cum_media_duration_90k, s.cum_runs) == (prev_media + row.media_duration_90k, 1)
    syncer.flushed()
    drain(syncer)  # G2-G3
    assert file_states(t) == {b: ["row"]}
    t.db.flush("gc")  # G4
    assert t.db.conn.execute("select count(*) from garbage").fetchone()[0] == 0
    sfd.fs = sfd.fs.real
    t.db.close()
    out = io.StringIO()
    assert check.run(t.db_dir, check.Options(verify_hashes=True), out) == 0, out.getvalue()
    assert out.getvalue() == "check: clean\n"


def test_a_failed_fsync_on_shutdown_still_goes_to_garbage(tmp_path, clocks):
    """Shutdown doesn't change S2F (nothing there waits): the final flush moves the
    file to garbage, and the shutdown's collection unlinks it (invariant 3)."""
    t = make_testdb(tmp_path, clocks)
    sfd = t.db.dirs[t.dir_id].dir
    sfd.fs = FaultyFs.wrapping(sfd.fs, "file.sync")
    shutdown = threading.Event()
    syncer = dirmod.Syncer(t.db, t.dir_id, shutdown=shutdown)
    write_run(t, syncer, 0)
    shutdown.set()
    drain(syncer)  # the save: S2 fails
    t.db.flush("NVR shutdown")
    assert file_states(t) == {dirmod.name_for(1 << 32): ["garbage"]}
    assert syncer.collect_garbage() == 1
    t.db.flush("NVR shutdown: garbage collected")
    assert file_states(t) == {}
    assert t.db.conn.execute("select count(*) from garbage").fetchone()[0] == 0
    sfd.fs = sfd.fs.real
    t.db.close()


def test_a_crash_between_a_failed_fsync_and_the_flush_leaves_an_abandoned_file(
        tmp_path, clocks):
    """S2F's window: until the flush moves it to garbage, the file's id is >= its
    stream's cum_recordings, so start-up recovery removes it (R3) and the id is free."""
    t = make_testdb(tmp_path, clocks)
    sfd = t.db.dirs[t.dir_id].dir
    sfd.fs = FaultyFs.wrapping(sfd.fs, "file.sync")
    syncer = dirmod.Syncer(t.db, t.dir_id)
    write_run(t, syncer, 0)
    drain(syncer)  # S2F
    assert file_states(t) == {dirmod.name_for(1 << 32): ["abandoned"]}
    sfd.fs = sfd.fs.real
    t.db.close()  # as if the process died here, before the flush
    d = db.Database.open_dir(t.db_dir, clocks)
    d.open_sample_file_dirs()
    assert os.listdir(t.sample_dir) == ["meta"]
    assert d.streams[t.stream_id].cum_recordings == 0
    d.close()


# -- each of these kills a mutant that survived test/mutate.py (docs/testing.md) ---------

class HalfWrites:
    """A real `dir.Fs` whose sample files take at most half (rounded up) of each
    write(2), as a regular file may near a full disk or on a signal."""

    def __init__(self, real):
        self.real = real
        self.writes = 0

    def __getattr__(self, name):
        return getattr(self.real, name)

    def create_file(self, name):
        f = self.real.create_file(name)
        real_write = f.write

        def write(data):
            self.writes += 1
            return real_write(memoryview(data)[:(len(data) + 1) // 2])
        f.write = write
        return f


def test_short_writes_are_completed_and_the_hash_is_the_files(tmp_path, clocks):
    """A frame's first write(2) taking less than all of it goes on with the rest, and the
    stored blake2b is that of the file's bytes. The writer's tests never made a short
    write on the fast path nor compared the stored hash with the file: a mutant that
    dropped the rest of a short write (frames lost) and one that never fed the hasher
    (every stored hash wrong) both survived."""
    t = make_testdb(tmp_path, clocks)
    sfd = t.db.dirs[t.dir_id].dir
    fs = sfd.fs = HalfWrites(sfd.fs)
    syncer = dirmod.Syncer(t.db, t.dir_id)
    w = writer.Writer(t.db, t.stream_id, syncer, shutdown=threading.Event())
    frames = [bytes([65 + i]) * (100 + i) for i in range(4)]
    for i, data in enumerate(frames):
        w.write(data, T0_90K + i * 3000, i * 3000, i == 0, t.vse_id)
    w.close("test")
    drain(syncer)
    t.db.flush("test")
    assert fs.writes > len(frames)  # the writes were short
    (r,) = t.db.list_recordings_by_id(t.stream_id, 0, 10)
    with open(os.path.join(t.sample_dir, dirmod.name_for(r.composite_id)), "rb") as f:
        contents = f.read()
    assert contents == b"".join(frames) and r.sample_file_bytes == len(contents)
    (stored,) = t.db.conn.execute("select sample_file_blake2b_32 from recording_integrity "
                                  "where composite_id = ?", (r.composite_id,)).fetchone()
    assert stored == hashlib.blake2b(contents, digest_size=32).digest()
    sfd.fs = fs.real
    t.db.close()


class CountedWrites:
    """A real `dir.Fs` whose sample files record the size of each write(2)."""

    def __init__(self, real):
        self.real = real
        self.sizes: list[int] = []

    def __getattr__(self, name):
        return getattr(self.real, name)

    def create_file(self, name):
        f = self.real.create_file(name)
        real_write = f.write

        def write(data):
            n = real_write(data)
            self.sizes.append(n)
            return n
        f.write = write
        return f


def test_frames_are_written_coalesced_and_read_from_memory_meanwhile(tmp_path, clocks):
    """Frames gather in memory until `coalesce_bytes`, then go in one write(2) (issue
    #16: a write per frame was ~50 us of kernel time each). Meanwhile live view's
    segments and playback of the growing recording get the frames not yet in the file
    from memory, so they never wait for the write nor read short; at its end the file
    has every byte and the stored hash is the file's. Before db.RecordingToInsert.tail
    and mp4.FileChunk.split, reading the growing recording failed ("the file is shorter
    than its index says")."""
    t = make_testdb(tmp_path, clocks)
    sfd = t.db.dirs[t.dir_id].dir
    fs = sfd.fs = CountedWrites(sfd.fs)
    syncer = dirmod.Syncer(t.db, t.dir_id)
    w = writer.Writer(t.db, t.stream_id, syncer, shutdown=threading.Event(),
                      rotate_interval_sec=60, coalesce_bytes=100)
    frames = [bytes([65 + i]) * (30 + i) for i in range(10)]
    in_file = []
    for i, data in enumerate(frames):
        w.write(data, T0_90K + i * 3000, i * 3000, i in (0, 5), t.vse_id)
        if i == 0:
            continue
        (row,) = t.db.list_recordings_by_id(t.stream_id, 0, 10)
        cid = row.composite_id
        size = os.path.getsize(os.path.join(t.sample_dir, dirmod.name_for(cid)))
        in_file.append(size)
        # Every indexed frame (all but the last written), whole or as live view's frames.
        view = mp4.FileBuilder("mp4")
        view.append(row, (0, row.media_duration_90k))
        got = b"".join(c.read() for c in view.build(t.db).chunks()
                       if isinstance(c, mp4.FileChunk))
        assert got == b"".join(frames[:i])
        for j in range(i):
            seg = mp4.build_live_segment(t.db, t.stream_id, cid, j * 3000, (j + 1) * 3000)
            assert [c.read() for c in seg.chunks() if isinstance(c, mp4.FileChunk)] == [
                frames[j]]
    # Some frames were read while not in the file; the file grew in coalesced writes.
    assert any(size < sum(map(len, frames[:i])) for i, size in enumerate(in_file, 1))
    w.close("test")
    drain(syncer)
    t.db.flush("test")
    assert fs.sizes == [30 + 31 + 32 + 33, 34 + 35 + 36, 37 + 38 + 39]
    (r,) = t.db.list_recordings_by_id(t.stream_id, 0, 10)
    with open(os.path.join(t.sample_dir, dirmod.name_for(r.composite_id)), "rb") as f:
        contents = f.read()
    assert contents == b"".join(frames) and r.sample_file_bytes == len(contents)
    (stored,) = t.db.conn.execute("select sample_file_blake2b_32 from recording_integrity "
                                  "where composite_id = ?", (r.composite_id,)).fetchone()
    assert stored == hashlib.blake2b(contents, digest_size=32).digest()
    # Committed: read from the file alone.
    view = mp4.FileBuilder("mp4")
    view.append(r, (0, r.media_duration_90k))
    assert b"".join(c.read() for c in view.build(t.db).chunks()
                    if isinstance(c, mp4.FileChunk)) == contents
    sfd.fs = fs.real
    t.db.close()


def test_shutdown_while_creating_the_file_abandons_the_recording(tmp_path, clocks):
    """S1's create failing (a full disk) while shutdown is set gives up: the recording
    added for it is abandoned, not left growing. Left growing (a mutant that survived,
    this path being untested), every flush stopped at it and the stream could start no
    other recording ("already growing a recording")."""
    t = make_testdb(tmp_path, clocks)
    sfd = t.db.dirs[t.dir_id].dir
    fs = sfd.fs = FaultyFs.wrapping(sfd.fs, "create_file", err=errno.ENOSPC)
    shutdown = threading.Event()
    shutdown.set()
    w = writer.Writer(t.db, t.stream_id, dirmod.Syncer(t.db, t.dir_id, shutdown=shutdown),
                      shutdown=shutdown)
    with pytest.raises(clock.ShutdownError):
        w.write(b"k" * 100, T0_90K, 0, True, t.vse_id)
    w.close("NVR shutdown")
    assert fs.calls["create_file"] == 1
    s = t.db.streams[t.stream_id]
    (r,) = s.uncommitted
    assert r.abandoned and not r.growing and r.file_gone
    t.db.flush("NVR shutdown")
    assert s.cum_recordings == 1 and not s.uncommitted  # its id is used up, no row
    # The next run of the stream records as usual.
    syncer = dirmod.Syncer(t.db, t.dir_id)
    write_run(t, syncer, 1)
    drain(syncer)
    t.db.flush("test")
    assert [r.recording_id for r in t.db.list_recordings_by_id(t.stream_id, 0, 10)] == [1]
    sfd.fs = fs.real
    t.db.close()


def test_a_frame_of_one_tick_is_indexed(tmp_path, clocks):
    """Any pts increase is a valid frame duration, the smallest being one 90 kHz tick;
    only 0 or less ends the run. Nothing tried a duration of 1: refusing it (a mutant,
    `<= 1`, that survived) would have ended the run on a camera's legal timestamps."""
    t = make_testdb(tmp_path, clocks)
    syncer = dirmod.Syncer(t.db, t.dir_id)
    w = writer.Writer(t.db, t.stream_id, syncer, shutdown=threading.Event())
    w.write(b"k", T0_90K, 0, True, t.vse_id)
    w.write(b"n", T0_90K + 1, 1, False, t.vse_id)
    w.write(b"n", T0_90K + 3001, 3001, False, t.vse_id)
    w.close("test")
    drain(syncer)
    t.db.flush("test")
    (r,) = t.db.list_recordings_by_id(t.stream_id, 0, 10)
    assert [f.duration_90k for f in frames_of(t, r.composite_id)] == [1, 3000, 0]
    assert r.media_duration_90k == 3001
    t.db.close()


def test_a_plan_satisfied_by_another_flush_makes_no_flush(tmp_path, clocks):
    """A planned flush whose recording another flush (another dir's syncer, say) already
    committed is dropped, not carried out. test_a_flush_satisfies_other_plans checked the
    plan was gone and the time, not that no flush happened: a mutant of the check
    (`& 0x100000000` for `& 0xFFFFFFFF`: never satisfied) flushed again and survived."""
    t = make_testdb(tmp_path, clocks)
    flushes = []
    t.db.on_flush.append(lambda: flushes.append(clocks.monotonic()))
    s = t.db.streams[t.stream_id]
    t.db.update_stream(t.stream_id, config=dict(s.config, flushIfSec=100))
    syncer = dirmod.Syncer(t.db, t.dir_id)
    write_run(t, syncer, 0)
    assert syncer.iter()  # the save: a flush planned 100 s after the recording's start
    assert syncer.planned
    t.db.flush("another dir's syncer")
    assert s.cum_recordings == 1 and len(flushes) == 1
    assert syncer.iter()  # the plan's time: satisfied, dropped
    assert not syncer.planned and len(flushes) == 1
    assert syncer.queue.empty()
    t.db.close()


def test_a_camera_clock_1000_ppm_fast_is_corrected_by_exactly_500_ppm(tmp_path, clocks):
    """The clamp of a recording's wall time is media // 2000 (500 ppm), worked by hand
    here for one long recording: test_500_ppm_clamp's 3-second ones can't tell // 2000
    from // 2001 (a mutant that survived). One key frame a second by local time, the
    camera's pts 90,090 apart (1000 ppm fast). Recording 0 (frames 0-120, a run's first,
    rotating past T0 + 120 s) starts at its least-delayed frame, T0 - 90,090 - 120 * 90,
    and lasts its media time, 121 * 90,090: it ends at T0 + 120 s exactly. Recording 1
    (frames 121-180, rotating past T0 + 180 s) starts there; its least-delayed frame, 180,
    gives a local start of T0 + 180 s - 60 * 90,090 = T0 + 119.94 s, 5,400 ticks early:
    past the clamp, so wall = media - media // 2000."""
    t = make_testdb(tmp_path, clocks)
    syncer = dirmod.Syncer(t.db, t.dir_id)
    w = writer.Writer(t.db, t.stream_id, syncer, shutdown=threading.Event(),
                      rotate_interval_sec=60)
    for i in range(182):
        w.write(b"k" * 10, T0_90K + i * SEC, i * 90_090, True, t.vse_id)
    w.close("test")
    drain(syncer)
    t.db.flush("test")
    r0, r1, r2 = t.db.list_recordings_by_id(t.stream_id, 0, 10)
    assert (r0.video_samples, r1.video_samples, r2.video_samples) == (121, 60, 1)
    assert r0.start_time_90k == T0_90K - 90_090 - 120 * 90
    assert r0.end_time_90k == T0_90K + 120 * SEC == r1.start_time_90k
    media = 60 * 90_090
    assert r1.media_duration_90k == media
    assert r1.wall_duration_90k == media - media // 2000 == media - 2702
    (delta,) = t.db.conn.execute("select local_time_delta_90k from recording_integrity "
                                 "where composite_id = ?", (r1.composite_id,)).fetchone()
    assert delta == -5400
    t.db.close()
