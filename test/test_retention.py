"""Retention (issue 17 items 1, 2, 5): byte and age limits per stream, the free-space
floor per sample file dir, where they are decided (retention.py, through db.py) and
applied (the dir's syncer, dir.py), and a real small filesystem filling up.

The free space the floor sees comes through dir.py's `Fs.free_space` seam: `SpaceFs`
below reports what a test sets; the loop-mounted ext4 tests use the real statvfs.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import subprocess
import threading
import time

import pytest

import check
import clock
import db
import dir as dirmod
import recording
import retention
import writer
from conftest import START_NS, make_testdb

SEC = recording.TIME_UNITS_PER_SEC
DAY = retention.TIME_UNITS_PER_DAY
NOW_90K = recording.to_90k_from_ns(START_NS)
GIB = 1 << 30


class SpaceFs(dirmod.Fs):
    """A real Fs whose `free_space` says what `space` holds: [available, total]."""
    space = [100 * GIB, 1000 * GIB]

    def free_space(self):
        return tuple(self.space)


def reopen_with_space(t, clocks, free, total):
    """Reopens the test database with `SpaceFs` dirs reporting (free, total)."""
    t.db.close()
    SpaceFs.space = [free, total]
    t.db = db.Database.open_dir(t.db_dir, clocks, fs_factory=SpaceFs)
    t.db.open_sample_file_dirs()
    return t.db


def ids(t, stream_id=None):
    stream_id = stream_id or t.stream_id
    return [r.recording_id for r in t.db.list_recordings_by_id(stream_id, 0, 1 << 31)]


def inline(syncer):
    """The syncer as `start` sets it up (collecting garbage after each flush), without
    its thread: tests run it with `iter` or `pump`."""
    syncer.db.on_flush.append(syncer.flushed)
    return syncer


def pump(syncer):
    """Runs the syncer inline until nothing is queued and no planned flush is due."""
    while True:
        if not syncer.queue.empty():
            assert syncer.iter()
        elif syncer.planned and syncer.planned[0].when_ns <= syncer.db.clocks.monotonic():
            assert syncer.iter()
        else:
            return


# -- the rules -------------------------------------------------------------------

def test_limits_read_from_the_stream_config():
    assert retention.stream_limits({"retainBytes": 5}) == retention.StreamLimits(5, None)
    # 0 bytes with an age limit: no byte limit; without one: delete everything (Moonfire).
    assert retention.stream_limits({"retainBytes": 0, "retainDays": 1.5}) == \
        retention.StreamLimits(None, 1.5)
    assert retention.stream_limits({}) == retention.StreamLimits(0, None)
    assert retention.stream_limits({"retainBytes": 7, "retainDays": 2}) == \
        retention.StreamLimits(7, 2.0)


def test_default_floor_is_two_percent_at_least_a_gib_at_most_a_tenth():
    assert retention.floor_bytes({}, 1000 * GIB) == 20 * GIB
    assert retention.floor_bytes({}, 20 * GIB) == GIB
    assert retention.floor_bytes({}, 4 * GIB) == 4 * GIB // 10  # a tenth of a small disk
    assert retention.floor_bytes({"freeSpaceFloorPercent": 3}, 100 * GIB) == 3 * GIB
    assert retention.floor_bytes({"freeSpaceFloorBytes": 0}, 100 * GIB) == 0


@pytest.mark.parametrize("config,key", [
    ({"retainDays": -1}, "retainDays"), ({"retainDays": "7"}, "retainDays"),
    ({"retainDays": True}, "retainDays"), ({"retainDays": float("nan")}, "retainDays"),
    ({"retainBytes": 1.5}, "retainBytes")])
def test_bad_stream_values_are_named(config, key):
    assert retention.stream_config_problem(config)[0] == key


def test_bad_dir_values_are_named():
    assert retention.dir_config_problem({"freeSpaceFloorPercent": 60})[0] == \
        "freeSpaceFloorPercent"
    assert retention.dir_config_problem({"freeSpaceFloorBytes": -1})[0] == "freeSpaceFloorBytes"
    assert retention.dir_config_problem({"freeSpaceFloorBytes": 1,
                                         "freeSpaceFloorPercent": 1}) is not None
    assert retention.dir_config_problem({"freeSpaceFloorPercent": 2.5}) is None


# -- age -----------------------------------------------------------------------------

def set_config(t, stream_id=None, **kw):
    stream_id = stream_id or t.stream_id
    s = t.db.streams[stream_id]
    t.db.update_stream(stream_id, config={k: v for k, v in dict(s.config, **kw).items()
                                          if v is not None})


def test_age_boundary_is_exact(tmp_path, clocks):
    """A recording ending exactly retainDays ago stays; one 90 kHz tick later it goes."""
    t = make_testdb(tmp_path, clocks)
    set_config(t, retainBytes=0, retainDays=1)
    # 1 s recordings (30 frames of 3000): ending 2 s past the limit, exactly at it, and
    # 10 s inside it.
    a = t.add_recording(start_90k=NOW_90K - DAY - 3 * SEC)
    b = t.add_recording(start_90k=NOW_90K - DAY - SEC)
    c = t.add_recording(start_90k=NOW_90K - DAY + 9 * SEC)
    t.db.flush("test")
    rows = t.db.list_recordings_by_id(t.stream_id, 0, 10)
    assert rows[1].end_time_90k == NOW_90K - DAY  # exactly at the limit
    assert [r.composite_id for r in t.db.delete_oldest_recordings(t.stream_id)] == [a]
    t.db.flush("test")
    assert t.db.delete_oldest_recordings(t.stream_id) == []
    clocks.advance(100_000 // 9 + 1)  # one tick of 90 kHz (and a little)
    assert recording.to_90k_from_ns(clocks.realtime()) == NOW_90K + 1
    assert [r.composite_id for r in t.db.delete_oldest_recordings(t.stream_id)] == [b]
    t.db.flush("test")
    assert [r.composite_id for r in t.db.list_recordings_by_id(t.stream_id, 0, 10)] == [c]
    t.db.close()


def test_age_limit_in_simulated_time_deletes_exactly_the_recordings_past_it(tmp_path, clocks):
    """A stream that stopped recording ages out through `run`'s idle check: at every
    check, the recordings left are exactly those ending within the limit (a fraction of
    a day: 5 minutes), and their files are gone after the collection."""
    t = make_testdb(tmp_path, clocks)
    set_config(t, retainBytes=0, retainDays=5 / 1440)
    for i in range(20):  # 1 s each, one every 30 s, the last ending now
        t.add_recording(start_90k=NOW_90K - (19 - i) * 30 * SEC - SEC)
    t.db.flush("test")
    ends = {r.recording_id: r.end_time_90k for r in t.db.list_recordings_by_id(t.stream_id, 0, 99)}
    syncer = inline(dirmod.Syncer(t.db, t.dir_id, check_every_sec=10))
    seen = set()
    for _ in range(80):  # 800 s
        assert syncer.iter()
        pump(syncer)
        now = recording.to_90k_from_ns(clocks.realtime())
        if syncer.db.clocks.monotonic() % (10 * clock.NANOS_PER_SEC) == 0:
            cutoff = now - 5 * 60 * SEC
            left = ids(t)
            assert left == [i for i, e in ends.items() if e >= cutoff], now
            seen.add(len(left))
    assert ids(t) == [] and len(seen) > 10
    assert sorted(os.listdir(t.sample_dir)) == ["meta"]
    t.db.close()


def test_both_limits_whichever_bites_first(tmp_path, clocks):
    t = make_testdb(tmp_path, clocks)
    for i in range(6):
        t.add_recording(start_90k=NOW_90K - (6 - i) * 3600 * SEC)  # hourly, 1 s each
    t.db.flush("test")
    size = t.db.streams[t.stream_id].fs_bytes // 6
    # Bytes bite first: room for 4 recordings, none older than two days.
    set_config(t, retainBytes=4 * size, retainDays=2)
    plan = t.db.delete_oldest_recordings(t.stream_id)
    assert (len(plan), plan.by_bytes, plan.by_age) == (2, 2, 0)
    t.db.flush("test")
    assert ids(t) == [2, 3, 4, 5]
    # Age bites first: 3.5 hours deletes the recording of 4 hours ago.
    set_config(t, retainDays=3.5 / 24)
    plan = t.db.delete_oldest_recordings(t.stream_id)
    assert (plan.by_bytes, plan.by_age) == (0, 1)
    t.db.flush("test")
    assert ids(t) == [3, 4, 5]
    # The recording being added counts against the byte limit as before.
    plan = t.db.delete_oldest_recordings(t.stream_id, extra_fs_bytes=3 * size)
    assert (plan.by_bytes, plan.by_age) == (2, 0)
    t.db.close()


def test_age_limit_applies_at_start_up_after_time_passed(tmp_path, clocks, caplog):
    """Restart in between: nvr stopped for two days with retainDays=1 deletes at start-up
    (initial rotation) what aged out meanwhile, as a lowered retainBytes does."""
    t = make_testdb(tmp_path, clocks)
    set_config(t, retainDays=1)
    for i in range(4):
        t.add_recording(start_90k=NOW_90K - (3 - i) * DAY // 2 - SEC)  # ends 0-1.5 days ago
    t.db.flush("test")
    syncer = dirmod.Syncer(t.db, t.dir_id)
    syncer.initial_rotation()
    assert ids(t) == [1, 2, 3]  # the one that ended 1.5 days ago
    t.db.close()
    clocks.advance(2 * 86400 * clock.NANOS_PER_SEC)
    t.db = db.Database.open_dir(t.db_dir, clocks)
    t.db.open_sample_file_dirs()
    with caplog.at_level(logging.INFO, logger="dir"):
        dirmod.Syncer(t.db, t.dir_id).initial_rotation()
    assert ids(t) == []
    assert sorted(os.listdir(t.sample_dir)) == ["meta"]
    assert any("retention will delete 3 recording(s) of stream 1 (3 older than retainDays)"
               in r.getMessage() for r in caplog.records)
    t.db.close()


# -- the free-space floor --------------------------------------------------------------

def test_floor_deletes_oldest_first_across_the_dirs_streams(tmp_path, clocks, caplog):
    t = make_testdb(tmp_path, clocks)
    d = t.db
    sub = d.add_stream(t.camera_id, "sub", dict(d.streams[t.stream_id].config), t.dir_id)
    other_dir = d.add_sample_file_dir(str(tmp_path / "other"))
    other = d.add_stream(t.camera_id, "ext", dict(d.streams[t.stream_id].config), other_dir)
    # Starts interleave: main at 0, 20, 40 ... s, sub at 10, 30, 50 ... s; the other dir's
    # stream is older than all, and must be untouched.
    for i in range(4):
        t.add_recording(start_90k=NOW_90K + i * 20 * SEC)
        t.add_recording(start_90k=NOW_90K + (i * 20 + 10) * SEC, stream_id=sub)
    t.add_recording(start_90k=NOW_90K - 3600 * SEC, stream_id=other)
    d.flush("test")
    size = d.streams[t.stream_id].fs_bytes // 4
    d.update_sample_file_dir(t.dir_id, {"freeSpaceFloorBytes": 10 * size})
    d = reopen_with_space(t, clocks, 7 * size + 100, 1000 * size)  # 3 recordings short
    syncer = inline(dirmod.Syncer(d, t.dir_id))
    with caplog.at_level(logging.INFO, logger="dir"):
        assert syncer.enforce_floor()
    assert [(sid, r.recording_id) for sid, r in
            [(s.id, r) for s in d.streams.values() for r in s.to_delete]] == [
        (t.stream_id, 0), (t.stream_id, 1), (sub, 0)]
    lines = [r.getMessage() for r in caplog.records if "floor" in r.getMessage()]
    assert lines == [
        f"{t.sample_dir}: free space {7 * size + 100} B is below the floor of {10 * size} B "
        f"({10 * size} B; 0 B already on its way): deleting the 3 oldest recording(s) of the "
        f"dir ({3 * size} B: stream {t.stream_id} 0-1; stream {sub} 0)"]
    # What is queued, then garbage not yet unlinked, counts as free: no second helping.
    assert not syncer.enforce_floor()
    assert syncer.planned and syncer.planned[0].composite_id is None  # a flush at once
    syncer.iter()  # the planned flush: rows to garbage
    assert not syncer.enforce_floor()
    syncer.iter()  # flushed: the files are unlinked
    SpaceFs.space[0] += 3 * size
    assert not syncer.enforce_floor()
    assert ids(t) == [2, 3] and ids(t, sub) == [1, 2, 3] and ids(t, other) == [0]
    assert sorted(os.listdir(t.sample_dir)) == sorted(
        ["meta"] + [dirmod.name_for(t.stream_id << 32 | i) for i in (2, 3)]
        + [dirmod.name_for(sub << 32 | i) for i in (1, 2, 3)])
    # Short with nothing left to delete: one warning, not one per check.
    SpaceFs.space[0] = 0
    with caplog.at_level(logging.INFO, logger="dir"):
        caplog.clear()
        syncer.enforce_floor()
        syncer.enforce_floor()
    assert sum("stays below the floor" in r.getMessage() for r in caplog.records) == 1
    d.close()


def test_floor_resolves_a_full_disk_from_the_idle_check(tmp_path, clocks):
    """No recording is being saved (the writer waits for space, or the stream stopped):
    `run`'s idle check sees the disk full, deletes, flushes and collects by itself."""
    t = make_testdb(tmp_path, clocks)
    for i in range(5):
        t.add_recording(start_90k=NOW_90K + i * 60 * SEC)
    t.db.flush("test")
    size = t.db.streams[t.stream_id].fs_bytes // 5
    t.db.update_sample_file_dir(t.dir_id, {"freeSpaceFloorBytes": 2 * size})
    d = reopen_with_space(t, clocks, 0, 100 * size)
    syncer = inline(dirmod.Syncer(d, t.dir_id, check_every_sec=10))
    assert syncer.iter()  # 10 s pass: the check queues and plans a flush at once
    pump(syncer)
    assert ids(t) == [2, 3, 4]
    assert sorted(os.listdir(t.sample_dir)) == sorted(
        ["meta"] + [dirmod.name_for(t.stream_id << 32 | i) for i in (2, 3, 4)])
    assert d.conn.execute("select count(*) from garbage").fetchone()[0] == 2  # G4 next flush
    d.flush("test")
    assert d.conn.execute("select count(*) from garbage").fetchone()[0] == 0
    d.close()


def test_floor_applies_at_start_up_and_after_a_restart_between_flush_and_collect(
        tmp_path, clocks):
    t = make_testdb(tmp_path, clocks)
    for i in range(4):
        t.add_recording(start_90k=NOW_90K + i * 60 * SEC)
    t.db.flush("test")
    size = t.db.streams[t.stream_id].fs_bytes // 4
    t.db.update_sample_file_dir(t.dir_id, {"freeSpaceFloorPercent": 10})
    d = reopen_with_space(t, clocks, 8 * size, 100 * size)  # 2 short of 10
    syncer = dirmod.Syncer(d, t.dir_id)
    assert syncer.enforce_floor()
    d.flush("test")  # rows to garbage; "crash" before the files are unlinked
    d.close()
    d = reopen_with_space(t, clocks, 8 * size, 100 * size)  # recovery unlinks them
    assert sorted(os.listdir(t.sample_dir)) == sorted(
        ["meta"] + [dirmod.name_for(t.stream_id << 32 | i) for i in (2, 3)])
    SpaceFs.space[0] = 10 * size
    dirmod.Syncer(d, t.dir_id).initial_rotation()
    assert ids(t) == [2, 3]  # back at the floor: nothing more
    d.close()


# -- a real filesystem filling up ------------------------------------------------------

@pytest.fixture
def small_ext4(tmp_path):
    """A 64 MiB ext4 filesystem on a loop device (no reserved blocks: f_bavail is what
    root can write too), mounted at tmp_path/mnt and unmounted at teardown."""
    if os.geteuid() != 0:
        pytest.skip("mounting a loop filesystem needs root")
    img, mnt = tmp_path / "ext4.img", tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["truncate", "-s", "64M", str(img)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-m", "0", str(img)], check=True)
    subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], check=True)
    try:
        yield str(mnt)
    finally:
        if subprocess.run(["umount", str(mnt)]).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=True)


class Stalled(Exception):
    pass


class NoStallClocks(clock.SimulatedClocks):
    """Simulated time in which a retried I/O step (`clock.retry`'s wait: the writer
    waiting for space) ends the test rather than waiting forever."""

    def wait(self, event, seconds):
        raise Stalled("an I/O step failed and would wait for a retry (a full disk?)")


def loop_stream(t, mnt, floor: dict):
    d = t.db
    dir_id = d.add_sample_file_dir(os.path.join(mnt, "sample"), floor)
    cam = d.add_camera("loop", {})
    sid = d.add_stream(cam, "main", {"mode": "record", "url": "rtsp://192.0.2.1/x",
                                     "retainBytes": 1 << 30, "flushIfSec": 0}, dir_id)
    return dir_id, sid


class InlineSyncer:
    """The real syncer, run in the writer's thread right after each save."""

    def __init__(self, real):
        self.real = real

    def save(self, composite_id, wall_duration_90k, f):
        self.real.save(composite_id, wall_duration_90k, f)
        pump(self.real)


FRAME_BYTES = 32 * 1024


def feed(w, vse_id, frames, *, first=0):
    """30 fps of FRAME_BYTES frames, a key frame every half second."""
    data = bytes(range(256)) * (FRAME_BYTES // 256)
    for i in range(first, first + frames):
        w.write(data, NOW_90K + i * 3000, i * 3000, i % 15 == 0, vse_id)


def test_a_stream_keeps_recording_as_a_small_ext4_disk_fills(tmp_path, small_ext4, caplog):
    """A byte limit (1 GiB) larger than the 64 MiB disk: the floor (8 MiB) deletes the
    oldest recordings as the disk fills, through the real Writer and Syncer, and no
    write ever waits for space. Without the floor (the next test) the same feed stalls."""
    clocks = NoStallClocks(START_NS)
    t = make_testdb(tmp_path, clocks)
    dir_id, sid = loop_stream(t, small_ext4, {"freeSpaceFloorBytes": 8 << 20})
    syncer = inline(dirmod.Syncer(t.db, dir_id))
    w = writer.Writer(t.db, sid, InlineSyncer(syncer), shutdown=threading.Event(),
                      rotate_interval_sec=3)
    frames = 30 * 3 * 70  # 70 recordings of ~3 s, ~2.9 MB each: about 3 times the disk
    with caplog.at_level(logging.INFO, logger="dir"):
        feed(w, t.vse_id, frames)
        w.close("end of test")
    pump(syncer)
    t.db.flush("test")
    written = frames * FRAME_BYTES
    free, total = t.db.dirs[dir_id].dir.fs.free_space()
    assert written > 3 * total
    left = ids(t, sid)
    assert left and left[0] > 0 and left == list(range(left[0], left[-1] + 1))
    assert left[-1] >= 60  # the last recordings are all there: it never stalled
    assert free >= 4 << 20, free
    floor_lines = [r.getMessage() for r in caplog.records if "below the floor" in r.getMessage()]
    assert floor_lines, "the floor never deleted anything"
    path = os.path.join(small_ext4, "sample")
    assert sorted(os.listdir(path)) == sorted(["meta"] + [dirmod.name_for(sid << 32 | i)
                                                         for i in left])
    t.db.close()
    out = io.StringIO()
    assert check.run(t.db_dir, check.Options(verify_hashes=True), out) == 0, out.getvalue()


def test_without_the_floor_the_small_disk_fills_and_the_writer_waits(tmp_path, small_ext4):
    """The same feed with the floor off: the disk fills and the writer's write waits for
    space (ENOSPC), which is what the floor prevents (the test above)."""
    clocks = NoStallClocks(START_NS)
    t = make_testdb(tmp_path, clocks)
    dir_id, sid = loop_stream(t, small_ext4, {"freeSpaceFloorBytes": 0})
    syncer = inline(dirmod.Syncer(t.db, dir_id))
    w = writer.Writer(t.db, sid, InlineSyncer(syncer), shutdown=threading.Event(),
                      rotate_interval_sec=3)
    with pytest.raises(Stalled):
        feed(w, t.vse_id, 30 * 3 * 70)
    assert t.db.dirs[dir_id].dir.fs.free_space()[0] < FRAME_BYTES
    w.cur.f.close()
    t.db.close()


def test_a_disk_filled_by_something_else_resolves_while_the_writer_waits(
        tmp_path, small_ext4, caplog):
    """Real time, real threads: recordings on the disk, then a ballast file takes every
    free block. The writer's next write fails with ENOSPC and waits (retrying each
    second); the syncer thread's idle check sees the disk below its floor, deletes the
    oldest recordings, flushes, unlinks; the write goes through and recording goes on."""
    clocks = clock.RealClocks()
    t = make_testdb(tmp_path, clocks)
    dir_id, sid = loop_stream(t, small_ext4, {"freeSpaceFloorBytes": 8 << 20})
    syncer = inline(dirmod.Syncer(t.db, dir_id, check_every_sec=0.5))
    shutdown = threading.Event()
    w = writer.Writer(t.db, sid, InlineSyncer(syncer), shutdown=shutdown, rotate_interval_sec=3)
    feed(w, t.vse_id, 30 * 3 * 8)  # 8 recordings (~23 MB), synced and committed inline
    before = ids(t, sid)
    ballast = os.path.join(small_ext4, "ballast")
    with open(ballast, "wb") as f:
        try:
            while True:
                f.write(bytes(1 << 20))
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC
    with open(ballast, "ab") as f:  # the last partial blocks too
        try:
            while True:
                f.write(bytes(4096))
                f.flush()
        except OSError:
            pass
    assert t.db.dirs[dir_id].dir.fs.free_space()[0] < FRAME_BYTES
    # The thread's first check comes 1.5 s from now; the writer hits ENOSPC before it.
    syncer.next_check_ns = clocks.monotonic() + int(1.5 * clock.NANOS_PER_SEC)
    w.syncer = syncer  # from now on the thread does the saves
    t.db.on_flush.remove(syncer.flushed)  # start() adds it again
    watchdog = threading.Timer(60, shutdown.set)  # a stall ends the test, not the run
    syncer.start()
    watchdog.start()
    start = time.monotonic()
    try:
        with caplog.at_level(logging.INFO):
            feed(w, t.vse_id, 30 * 3 * 4, first=30 * 3 * 8)
            w.close("end of test")
    finally:
        watchdog.cancel()
        syncer.stop()
    assert not shutdown.is_set(), "the writer waited for space until the watchdog"
    t.db.flush("test")
    msgs = [r.getMessage() for r in caplog.records]
    assert any("No space left on device" in m for m in msgs), msgs  # it did wait
    assert any("below the floor" in m for m in msgs), msgs
    left = ids(t, sid)
    assert left[0] > before[0] and left[-1] > before[-1]
    assert time.monotonic() - start < 30
    t.db.close()
    os.unlink(ballast)
    out = io.StringIO()
    assert check.run(t.db_dir, check.Options(), out) == 0, out.getvalue()


# -- the command line --------------------------------------------------------------------

def test_cli_sets_age_limits_and_floors(tmp_path):
    import sqlite3

    from test_nvr import nvr
    cwd = str(tmp_path)
    nvr("init", cwd=cwd)
    nvr("config", "dir", "add", "disk2", "--free-space-floor", "3%", cwd=cwd)
    nvr("config", "dir", "edit", "1", "--free-space-floor", "5G", cwd=cwd)
    nvr("config", "camera", "add", "gate", cwd=cwd)
    # An age limit alone is enough for a recording stream.
    nvr("config", "stream", "add", "gate", "main", "--url", "rtsp://192.0.2.1/main", "--record",
        "--dir", "1", "--retain-days", "0.5", cwd=cwd)
    nvr("config", "stream", "add", "gate", "sub", "--url", "rtsp://192.0.2.1/sub", "--record",
        "--dir", "disk2", "--retain-days", "30", "--retain-bytes", "1G", cwd=cwd)
    streams = nvr("config", "stream", "list", cwd=cwd).stdout
    assert "gate/main\t" in streams and "retain=0 B\tretain_days=0.5\t" in streams
    assert "retain=1.0 GiB\tretain_days=30\t" in streams
    dirs = nvr("config", "dir", "list", cwd=cwd).stdout
    assert "free_space_floor=5368709120 B" in dirs and "free_space_floor=3%" in dirs
    conn = sqlite3.connect(os.path.join(cwd, "nvr-data", "db", "db"))
    configs = [c for (c,) in conn.execute("select config from sample_file_dir order by id")]
    assert '"freeSpaceFloorBytes":5368709120' in configs[0]
    assert '"freeSpaceFloorPercent":3' in configs[1]
    conn.close()
    nvr("config", "dir", "edit", "disk2", "--free-space-floor", "default", cwd=cwd)
    assert nvr("config", "dir", "list", cwd=cwd).stdout.count("free_space_floor=default") == 1
    # Removing the only limit of a recording stream is refused.
    r = nvr("config", "stream", "edit", "gate", "main", "--retain-days", "0", cwd=cwd, ok=False)
    assert r.returncode == 1 and "needs a retention limit: add --retain-bytes SIZE (e.g. " \
        "100G), --retain-days N (e.g. 30) or both" in r.stderr
    for args, message in [
            (["config", "dir", "edit", "1", "--free-space-floor", "60%"],
             "bad --free-space-floor '60%'; a percentage of the filesystem from 0% to 50%"),
            (["config", "dir", "edit", "1", "--free-space-floor", "lots"],
             "bad --free-space-floor 'lots'; use a size (e.g. 5G)"),
            (["config", "stream", "edit", "gate", "sub", "--retain-days", "-1"],
             "--retain-days must be from 0 (no age limit) to 36525, not -1"),
            (["config", "stream", "edit", "gate", "sub", "--retain-days", "nan"],
             "--retain-days must be from 0 (no age limit) to 36525, not nan")]:
        r = nvr(*args, cwd=cwd, ok=False)
        assert r.returncode == 1 and message in r.stderr, r.stderr
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert nvr("check", cwd=cwd).stdout.endswith("check: clean\n")


@pytest.mark.parametrize("table,key,value,fix", [
    ("stream", "retainDays", "-2", "config stream edit gate main --retain-days N"),
    ("stream", "retainDays", '"7"', "config stream edit gate main --retain-days N"),
    ("sample_file_dir", "freeSpaceFloorPercent", "80",
     "config dir edit 1 --free-space-floor SIZE|N%|default"),
    ("sample_file_dir", "freeSpaceFloorBytes", "-5",
     "config dir edit 1 --free-space-floor SIZE|N%|default")])
def test_run_refuses_a_hand_edited_limit_naming_the_fix(tmp_path, table, key, value, fix):
    from test_nvr import run_after_hand_edit
    r = run_after_hand_edit(tmp_path, table, key, value)
    assert r.returncode == 1, r.stderr
    assert f"{key} is {value}, not a " in r.stderr and f"`nvr.py {fix}`" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
