"""db.py: opening, locking, flushes, listing, days, retention and recovery."""

import logging
import os
import sqlite3

import pytest

import auth
import db
import dir as dirmod
import recording
from conftest import make_testdb
from fakes import FaultyFs

HOUR_90K = 3600 * 90_000
MIN_90K = 60 * 90_000


def t90k(s: str) -> int:
    return recording.parse_time(s)


def test_init_creates_schema_9_in_wal_with_16k_pages(tmp_path, clocks):
    d = str(tmp_path / "db")
    assert db.init(d, clocks) is True
    assert db.init(d, clocks) is False
    conn = sqlite3.connect(os.path.join(d, "db"))
    assert conn.execute("select max(id) from version").fetchone()[0] == 9
    assert conn.execute("pragma journal_mode").fetchone()[0] == "wal"
    assert conn.execute("pragma page_size").fetchone()[0] == 16384
    (uuid,) = conn.execute("select uuid from meta").fetchone()
    assert len(uuid) == 16 and uuid[6] >> 4 == 7  # UUIDv7
    assert int.from_bytes(uuid[:6], "big") == clocks.realtime() // 1_000_000


def test_second_read_write_open_is_refused(testdb, clocks):
    with pytest.raises(db.DbLocked, match="locked by another process; stop the running nvr"):
        db.Database.open_dir(testdb.db_dir, clocks)
    with pytest.raises(db.DbLocked):
        db.Database.open_dir(testdb.db_dir, clocks, read_only=True)


def test_read_only_opens_share_and_insert_no_open_row(tmp_path, clocks):
    t = make_testdb(tmp_path, clocks)
    t.db.flush("test")
    t.db.close()
    opens = sqlite3.connect(os.path.join(t.db_dir, "db")).execute("select count(*) from open")
    n = opens.fetchone()[0]
    a = db.Database.open_dir(t.db_dir, clocks, read_only=True)
    b = db.Database.open_dir(t.db_dir, clocks, read_only=True)
    assert a.open is None and b.open is None
    with pytest.raises(db.DbLocked):
        db.Database.open_dir(t.db_dir, clocks)
    a.close()
    b.close()
    conn = sqlite3.connect(os.path.join(t.db_dir, "db"))
    assert conn.execute("select count(*) from open").fetchone()[0] == n


@pytest.mark.parametrize("version,message", [
    (8, "schema version 8 is too old (expected 9); back it up and run `nvr.py upgrade`"),
    (10, "schema version 10 is too new (expected 9); use a newer nvr"),
])
def test_wrong_schema_version_is_refused(tmp_path, clocks, version, message):
    d = str(tmp_path / "db")
    db.init(d, clocks)
    conn = sqlite3.connect(os.path.join(d, "db"))
    conn.execute("delete from version")
    conn.execute("insert into version values (?, 0, 'test')", (version,))
    conn.commit()
    conn.close()
    with pytest.raises(db.DbError) as e:
        db.Database.open_dir(d, clocks)
    assert message in str(e.value)


def test_missing_database_says_how_to_create(tmp_path, clocks):
    os.mkdir(tmp_path / "empty")
    with pytest.raises(db.DbError, match="create it with `nvr.py init"):
        db.Database.open_dir(str(tmp_path / "empty"), clocks)


def test_open_row_has_boot_uuid_and_flush_updates_end(testdb, clocks):
    clocks.sleep(5)
    testdb.db.flush("test")
    row = testdb.db.conn.execute(
        "select start_time_90k, end_time_90k, duration_90k, boot_uuid from open where id = ?",
        (testdb.db.open.id,)).fetchone()
    assert row[1] - row[0] == 5 * 90_000
    assert row[2] == 5 * 90_000
    assert row[3] == db.boot_uuid() and len(row[3]) == 16


def test_flush_commits_the_synced_prefix_only(testdb, caplog):
    t = testdb
    start = t90k("2026-11-29T10:00:00Z")
    a = t.add_recording(start_90k=start)
    b = t.add_recording(start_90k=start + MIN_90K, run_offset=1, sync=False)
    with caplog.at_level(logging.INFO):
        t.db.flush("test")
    assert "flush (test): added 1 recording(s) (1/0) of 30435 B, deleted 0" in caplog.text
    s = t.db.streams[t.stream_id]
    assert s.cum_recordings == 1 and len(s.uncommitted) == 1
    assert t.db.conn.execute("select composite_id from recording").fetchall() == [(a,)]
    # The sample entry went in with the first recording that used it.
    assert t.db.conn.execute("select count(*) from video_sample_entry").fetchone()[0] == 1
    t.db.mark_synced(b)
    t.db.flush("test")
    assert s.cum_recordings == 2 and not s.uncommitted
    assert s.cum_runs == 1
    assert s.cum_media_duration_90k == 2 * 30 * 3000
    row = t.db.conn.execute("select cum_recordings, cum_media_duration_90k, cum_runs "
                            "from stream where id = ?", (t.stream_id,)).fetchone()
    assert row == (2, 180_000, 1)
    integ = t.db.conn.execute("select sample_file_blake2b_32 from recording_integrity "
                              "where composite_id = ?", (a,)).fetchone()[0]
    assert len(integ) == 32


def test_a_failed_flush_changes_nothing(testdb):
    t = testdb
    t.add_recording(start_90k=t90k("2026-11-29T10:00:00Z"))

    def broken(conn):
        raise sqlite3.OperationalError("disk I/O error")
    t.db.flush_hooks.append(broken)
    with pytest.raises(sqlite3.OperationalError):
        t.db.flush("test")
    s = t.db.streams[t.stream_id]
    assert s.cum_recordings == 0 and len(s.uncommitted) == 1
    assert t.db.conn.execute("select count(*) from recording").fetchone()[0] == 0
    t.db.flush_hooks.clear()
    t.db.flush("retry")
    assert s.cum_recordings == 1 and not s.uncommitted


def test_listing_merges_committed_and_uncommitted(testdb):
    t = testdb
    start = t90k("2026-11-29T10:00:00Z")
    ids = [t.add_recording(start_90k=start + i * 9000 * 10, run_offset=i) for i in range(3)]
    t.db.flush("test")
    g = t.add_recording(start_90k=start + 3 * 90_000, run_offset=3, sync=False)
    rows = t.db.list_recordings_by_time(t.stream_id, start, start + HOUR_90K)
    assert [r.composite_id for r in rows] == ids + [g]
    assert rows[-1].flags & db.FLAG_UNCOMMITTED and rows[-1].flags & db.FLAG_GROWING
    assert not rows[0].flags & db.FLAG_UNCOMMITTED
    # Half-open overlap: a range ending at the first start excludes it.
    assert t.db.list_recordings_by_time(t.stream_id, start - HOUR_90K, start) == []
    assert len(t.db.list_recordings_by_time(t.stream_id, start + 1, start + 2)) == 1


def test_aggregation_merges_runs_until_split(testdb):
    t = testdb
    start = t90k("2026-11-29T10:00:00Z")
    dur = 30 * 3000  # each recording is 1 s
    for i in range(4):
        t.add_recording(start_90k=start + i * dur, run_offset=i,
                        trailing_zero=False)
    # A second run after a gap, ending with a trailing zero.
    t.add_recording(start_90k=start + 10 * dur, run_offset=0, trailing_zero=True,
                    end_reason="camera went away")
    t.db.flush("test")
    rows = sorted(t.db.list_aggregated_recordings(t.stream_id, start, start + HOUR_90K, HOUR_90K),
                  key=lambda a: a.start_id)
    assert [(a.start_id, a.end_id, a.run_start_id) for a in rows] == [(0, 3, 0), (4, 4, 4)]
    assert rows[0].video_samples == 120 and rows[0].end_time_90k == start + 4 * dur
    assert rows[1].has_trailing_zero and rows[1].end_reason == "camera went away"
    assert rows[0].end_reason is None
    # split90k: a row is closed before it would reach 2 s.
    rows = sorted(t.db.list_aggregated_recordings(t.stream_id, start, start + HOUR_90K, 2 * dur),
                  key=lambda a: a.start_id)
    assert [(a.start_id, a.end_id) for a in rows] == [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4)]
    rows = sorted(t.db.list_aggregated_recordings(t.stream_id, start, start + HOUR_90K,
                                                  2 * dur + 1), key=lambda a: a.start_id)
    assert [(a.start_id, a.end_id) for a in rows] == [(0, 1), (2, 3), (4, 4)]


def test_aggregation_marks_first_uncommitted_and_growing(testdb):
    t = testdb
    start = t90k("2026-11-29T10:00:00Z")
    t.add_recording(start_90k=start)
    t.db.flush("test")
    t.add_recording(start_90k=start + 90_000, run_offset=1, sync=False)
    (a,) = t.db.list_aggregated_recordings(t.stream_id, start, start + HOUR_90K, HOUR_90K)
    assert (a.start_id, a.end_id, a.first_uncommitted, a.growing) == (0, 1, 1, True)


def test_days_split_at_local_midnight(testdb):
    t = testdb  # America/Los_Angeles
    start = t90k("2026-11-29T23:59:30-08:00")
    t.add_recording(start_90k=start, frames=20, frame_duration_90k=270_000)  # 60 s
    t.db.flush("test")
    days = t.db.streams[t.stream_id].days
    assert {k: (v.recordings, v.duration_90k) for k, v in days.items()} == {
        "2026-11-29": (1, 30 * 90_000), "2026-11-30": (1, 30 * 90_000)}
    api = t.db.days_with_bounds(t.stream_id)
    assert api["2026-11-30"]["startTime90k"] == t90k("2026-11-30T00:00:00-08:00")
    assert api["2026-11-30"]["endTime90k"] - api["2026-11-30"]["startTime90k"] == 24 * HOUR_90K


def test_dst_days_are_23_and_25_hours(testdb):
    b = testdb.db.day_bounds
    s, e = b.bounds("2026-03-08")  # spring forward in Los Angeles
    assert e - s == 23 * HOUR_90K
    s, e = b.bounds("2026-11-01")  # fall back
    assert e - s == 25 * HOUR_90K


def test_reopen_loads_the_same_state(tmp_path, clocks):
    t = make_testdb(tmp_path, clocks)
    start = t90k("2026-11-29T10:00:00Z")
    for i in range(3):
        t.add_recording(start_90k=start + i * 90_000, run_offset=i)
    t.db.flush("test")
    before = t.db.streams[t.stream_id]
    t.db.close()
    d = db.Database.open_dir(t.db_dir, clocks)
    after = d.streams[t.stream_id]
    for f in ("range_90k", "duration_90k", "sample_file_bytes", "fs_bytes", "days",
              "cum_recordings", "cum_media_duration_90k", "cum_runs", "config"):
        assert getattr(after, f) == getattr(before, f), f
    assert d.video_sample_entries[t.vse_id].data == t.db.video_sample_entries[t.vse_id].data
    assert d.cameras[t.camera_id].streams == {"main": t.stream_id}
    d.close()


def test_retention_deletes_oldest_counting_blocks_and_the_new_recording(testdb):
    t = testdb
    s = t.db.streams[t.stream_id]
    start = t90k("2026-11-29T10:00:00Z")
    ids = [t.add_recording(start_90k=start + i * 90_000, run_offset=i) for i in range(4)]
    t.db.flush("test")
    # Each file is 30435 bytes: 8 blocks = 32768 on disk; 4 files = 131072.
    assert s.fs_bytes == 4 * 32768
    t.db.update_stream(t.stream_id, config=dict(s.config, retainBytes=4 * 32768))
    assert t.db.delete_oldest_recordings(t.stream_id) == []
    # Counting a 5th recording of one block, the oldest must go.
    rows = t.db.delete_oldest_recordings(t.stream_id, extra_fs_bytes=1)
    assert [r.composite_id for r in rows] == ids[:1]
    # Already queued: asking again queues nothing more.
    assert t.db.delete_oldest_recordings(t.stream_id, extra_fs_bytes=1) == []
    t.db.flush("retention")
    assert t.db.conn.execute("select composite_id from garbage").fetchall() == [(ids[0],)]
    assert t.db.conn.execute("select count(*) from recording").fetchone()[0] == 3
    assert s.fs_bytes == 3 * 32768 and s.range_90k[0] == start + 90_000
    path = os.path.join(t.sample_dir, dirmod.name_for(ids[0]))
    assert os.path.exists(path)
    assert t.db.collect_garbage(t.dir_id) == 1
    assert not os.path.exists(path)
    # The row stays until the next flush (the unlink is durable first).
    assert t.db.conn.execute("select count(*) from garbage").fetchone()[0] == 1
    t.db.flush("gc")
    assert t.db.conn.execute("select count(*) from garbage").fetchone()[0] == 0


def test_start_up_recovery_removes_abandoned_and_garbage(tmp_path, clocks):
    t = make_testdb(tmp_path, clocks)
    start = t90k("2026-11-29T10:00:00Z")
    doomed = t.add_recording(start_90k=start)
    keep = t.add_recording(start_90k=start + 90_000, run_offset=1)
    t.db.flush("test")
    # Over the limit by one file: the oldest becomes garbage, not yet unlinked.
    assert len(t.db.delete_oldest_recordings(t.stream_id, extra_fs_bytes=(1 << 30) - 32768)) == 1
    t.db.flush("retention")
    abandoned = t.add_recording(start_90k=start + 2 * 90_000, run_offset=2)  # never flushed
    t.db.close()  # as if the process died here
    name = lambda cid: os.path.join(t.sample_dir, dirmod.name_for(cid))  # noqa: E731
    assert all(os.path.exists(name(c)) for c in (keep, doomed, abandoned))
    d = db.Database.open_dir(t.db_dir, clocks)
    d.open_sample_file_dirs()
    assert not os.path.exists(name(abandoned))
    assert not os.path.exists(name(doomed))
    assert os.path.exists(name(keep))
    assert d.conn.execute("select count(*) from garbage").fetchone()[0] == 1
    d.flush("start-up")
    assert d.conn.execute("select count(*) from garbage").fetchone()[0] == 0
    assert d.conn.execute("select composite_id from recording").fetchall() == [(keep,)]
    # The dir's meta now names this open as its last complete one.
    assert d.dirs[t.dir_id].last_complete_open == d.open
    assert d.conn.execute("select last_complete_open_id from sample_file_dir").fetchone()[0] \
        == d.open.id
    d.close()


def test_start_up_recovery_keeps_files_of_rows_beyond_cum_recordings(tmp_path, clocks, caplog):
    """A row with an id >= its stream's cum_recordings (a bad write, a hand edit) broke
    invariant 2; recovery took its file for an abandoned one and unlinked it. Now it
    keeps the file and warns; a file without a row beyond cum_recordings still goes."""
    t = make_testdb(tmp_path, clocks)
    start = t90k("2026-11-29T10:00:00Z")
    ids = [t.add_recording(start_90k=start + i * 90_000, run_offset=i) for i in range(2)]
    t.db.flush("test")
    abandoned = t.add_recording(start_90k=start + 2 * 90_000, run_offset=2)  # never flushed
    t.db.conn.execute("update stream set cum_recordings = 1")  # row 1 is now beyond it
    t.db.close()
    name = lambda cid: os.path.join(t.sample_dir, dirmod.name_for(cid))  # noqa: E731
    d = db.Database.open_dir(t.db_dir, clocks)
    with caplog.at_level(logging.WARNING):
        d.open_sample_file_dirs()
    assert os.path.exists(name(ids[0])) and os.path.exists(name(ids[1]))
    assert not os.path.exists(name(abandoned))
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        f"dir {t.sample_dir}: kept 1 sample file(s) whose recording rows have ids >= their "
        f"stream's cum_recordings, which should never be ({dirmod.name_for(ids[1])}); stop "
        f"nvr and run `nvr.py check`"]
    d.close()


def test_dirs_are_verified_against_the_database(tmp_path, clocks):
    a = make_testdb(tmp_path / "a", clocks)
    b = make_testdb(tmp_path / "b", clocks)
    a.db.close()
    b.db.close()
    # Point database a's dir row at database b's dir: the meta file says so.
    conn = sqlite3.connect(os.path.join(a.db_dir, "db"))
    conn.execute("update sample_file_dir set config = ?", (f'{{"path":"{b.sample_dir}"}}',))
    conn.commit()
    conn.close()
    d = db.Database.open_dir(a.db_dir, clocks)
    with pytest.raises(dirmod.DirError, match="another database"):
        d.open_sample_file_dirs()
    d.close()


def test_camera_stream_user_crud(testdb):
    d = testdb.db
    cid = d.add_camera("garage", {"username": "admin", "password": "x"})
    with pytest.raises(db.DbError, match="already exists"):
        d.add_camera("garage", {})
    sid = d.add_stream(cid, "sub", {"mode": "", "url": "rtsp://h/s"}, None)
    with pytest.raises(db.DbError, match="already has a sub stream"):
        d.add_stream(cid, "sub", {}, None)
    d.update_camera(cid, short_name="garage2", config={"description": "side door"})
    d.update_stream(sid, config={"mode": "record", "url": "rtsp://h/s2", "retainBytes": 5},
                    sample_file_dir_id=testdb.dir_id)
    uid = d.add_user("alice", password_hash=auth.hash_password("hunter22"),
                     permissions=auth.Permissions(view_video=True))
    d.update_user(uid, password_hash=None)
    assert d.users[uid].password_id == 1 and d.users[uid].password_hash is None
    d.flush("test")
    d.close()
    e = db.Database.open_dir(testdb.db_dir, d.clocks)
    assert e.cameras[cid].short_name == "garage2"
    assert e.cameras[cid].config == {"description": "side door"}
    assert e.streams[sid].config["url"] == "rtsp://h/s2"
    assert e.streams[sid].sample_file_dir_id == testdb.dir_id
    assert e.users[uid].permissions == auth.Permissions(view_video=True)
    e.delete_user(uid)
    e.delete_camera(cid)
    assert cid not in e.cameras and sid not in e.streams
    e.close()


def test_delete_camera_moves_recordings_to_garbage(testdb):
    t = testdb
    start = t90k("2026-11-29T10:00:00Z")
    ids = [t.add_recording(start_90k=start + i * 90_000, run_offset=i) for i in range(2)]
    t.db.flush("test")
    assert t.db.delete_camera(t.camera_id) == 2
    t.db.flush("delete")
    assert sorted(r[0] for r in t.db.conn.execute("select composite_id from garbage")) == ids
    assert t.db.collect_garbage(t.dir_id) == 2
    t.db.flush("gc")
    assert os.listdir(t.sample_dir) == ["meta"]
    assert t.db.conn.execute("select count(*) from garbage").fetchone()[0] == 0


def test_stream_dir_change_refused_with_recordings(testdb, tmp_path):
    t = testdb
    t.add_recording(start_90k=t90k("2026-11-29T10:00:00Z"))
    t.db.flush("test")
    other = t.db.add_sample_file_dir(str(tmp_path / "other"))
    with pytest.raises(db.DbError, match="can't change the sample file dir"):
        t.db.update_stream(t.stream_id, sample_file_dir_id=other)
    with pytest.raises(db.DbError, match="used by stream"):
        t.db.delete_sample_file_dir(t.dir_id)
    t.db.delete_sample_file_dir(other)
    assert other not in t.db.dirs


def test_video_index_cache_and_uncommitted(testdb):
    t = testdb
    a = t.add_recording(start_90k=t90k("2026-11-29T10:00:00Z"))
    idx = t.db.get_video_index(a)  # uncommitted: from memory
    t.db.flush("test")
    assert t.db.get_video_index(a) == idx
    assert list(t.db._video_index_cache) == [a]
    assert recording.decode_summary(idx).video_samples == 30


def test_days_include_uncommitted_recordings(testdb):
    t = testdb
    day1 = recording.parse_time("2026-11-28T23:59:59", "America/Los_Angeles")
    t.add_recording(start_90k=day1 - 90_000, frames=30)    # committed below, 1 s
    t.db.flush("test")
    t.add_recording(start_90k=day1, frames=60)             # 2 s, across midnight: uncommitted
    days = t.db.days_with_bounds(t.stream_id)
    assert {k: v["totalDuration90k"] for k, v in days.items()} == \
        {"2026-11-28": 90_000 + 90_000, "2026-11-29": 90_000}
    assert days["2026-11-29"]["startTime90k"] == day1 + 90_000
    # The committed summaries themselves are untouched.
    assert {k: d.duration_90k for k, d in t.db.streams[t.stream_id].days.items()} == \
        {"2026-11-28": 90_000}


# -- each of these failed with a deliberate change to db.py that passed every other test --

def test_two_retention_passes_before_a_flush_queue_each_row_once(testdb):
    """Each pass queues the recordings after those already queued. A pass that started
    at the last queued one instead queued it again: the flush then inserted its garbage
    row twice, failed on the UNIQUE constraint, and so did every later flush."""
    t = testdb
    s = t.db.streams[t.stream_id]
    start = t90k("2026-11-29T10:00:00Z")
    ids = [t.add_recording(start_90k=start + i * 90_000, run_offset=i) for i in range(3)]
    t.db.flush("test")
    t.db.update_stream(t.stream_id, config=dict(s.config, retainBytes=3 * 32768))
    # Each new synced recording (8 blocks) puts the stream one file over: one pass each.
    t.add_recording(start_90k=start + 3 * 90_000, run_offset=3)
    assert [r.composite_id for r in t.db.delete_oldest_recordings(t.stream_id)] == ids[:1]
    t.add_recording(start_90k=start + 4 * 90_000, run_offset=4)
    assert [r.composite_id for r in t.db.delete_oldest_recordings(t.stream_id)] == ids[1:2]
    assert [r.composite_id for r in s.to_delete] == ids[:2]
    t.db.flush("retention")
    assert t.db.conn.execute("select composite_id from garbage order by composite_id"
                             ).fetchall() == [(c,) for c in ids[:2]]
    assert s.cum_recordings == 5 and s.fs_bytes == 3 * 32768
    t.add_recording(start_90k=start + 5 * 90_000, run_offset=5)
    t.db.flush("the next one")  # flushes go on committing
    assert s.cum_recordings == 6


def test_a_synced_recording_behind_an_unsynced_one_waits_for_it(testdb):
    """A flush commits the synced prefix: a synced recording behind an unsynced one
    waits. Skipping the unsynced one instead committed the later one under the earlier
    one's id, so its row described another recording's file."""
    t = testdb
    s = t.db.streams[t.stream_id]
    start = t90k("2026-11-29T10:00:00Z")
    a = t.add_recording(start_90k=start, sync=False)
    with t.db.locked():
        s.uncommitted[0].growing = False  # ended by its writer, not yet synced (S2-S3)
    b = t.add_recording(start_90k=start + MIN_90K, run_offset=1, frames=20)  # smaller
    t.db.flush("test")
    assert s.cum_recordings == 0 and len(s.uncommitted) == 2
    assert t.db.conn.execute("select count(*) from recording").fetchone()[0] == 0
    t.db.mark_synced(a)
    t.db.flush("test")
    rows = t.db.conn.execute("select composite_id, sample_file_bytes, start_time_90k "
                             "from recording order by composite_id").fetchall()
    assert [r[0] for r in rows] == [a, b] and [r[2] for r in rows] == [start, start + MIN_90K]
    for cid, nbytes, _ in rows:  # each row describes its own file
        assert os.path.getsize(os.path.join(t.sample_dir, dirmod.name_for(cid))) == nbytes


def test_a_failed_meta_rewrite_at_open_leaves_the_dir_openable(tmp_path, clocks):
    """Opening writes meta (O3) before the database row (O4). Done the other way
    round, one I/O error in the rewrite left a row naming an open the file never
    heard of: the dir refused to open ever after ("was last opened by open 1, the
    database expects open 2")."""
    t = make_testdb(tmp_path, clocks)
    t.db.close()
    d = db.Database.open_dir(t.db_dir, clocks, fs_factory=FaultyFs.factory("file.pwrite"))
    with pytest.raises(OSError, match="injected: file.pwrite call 1"):
        d.open_sample_file_dirs()
    assert d.dirs[t.dir_id].dir is None  # closed and unlocked
    d.close()
    d = db.Database.open_dir(t.db_dir, clocks)
    d.open_sample_file_dirs()  # the next start opens it
    assert d.dirs[t.dir_id].dir.meta.last_complete_open == d.open
    d.close()
    # So does another try in the same process: it starts over at O1.
    d = db.Database.open_dir(t.db_dir, clocks, fs_factory=FaultyFs.factory("file.datasync"))
    with pytest.raises(OSError, match="injected: file.datasync call 1"):
        d.open_sample_file_dirs()
    d.fs_factory = dirmod.Fs
    d.open_sample_file_dirs()
    assert d.dirs[t.dir_id].dir.meta.last_complete_open == d.open
    d.close()



# -- each of these kills a mutant that survived test/mutate.py (docs/testing.md) ---------

def add_second_stream(t) -> int:
    """A second camera's main stream, recording into the same dir: stream id 2."""
    cam = t.db.add_camera("second-camera", {"description": "", "username": "", "password": ""})
    return t.db.add_stream(cam, "main", dict(t.db.streams[t.stream_id].config), t.dir_id)


def test_retention_of_one_stream_never_touches_another(testdb):
    """Retention's query is bounded to the stream's own composite ids, [id << 32,
    (id + 1) << 32). It was only ever tried with one stream: a lower bound of
    `id >> 32` made stream 2's retention delete stream 1's oldest recordings, and an
    upper bound of `(id + 1) << 33` let a stream that can't free enough itself go on
    into the next streams' recordings."""
    t = testdb
    other = add_second_stream(t)
    assert other == 2
    start = t90k("2026-11-29T10:00:00Z")
    ones, twos = [], []
    for i in range(3):  # interleaved in time; each file is 8 blocks (32768 B)
        ones.append(t.add_recording(start_90k=start + i * 90_000, run_offset=i))
        twos.append(t.add_recording(start_90k=start + i * 90_000, run_offset=i,
                                    stream_id=other))
    t.db.flush("test")
    # Stream 2 at a limit of one file: its own two oldest go, none of stream 1's.
    rows = t.db.delete_oldest_recordings(other, retain_bytes=32768, dry_run=True)
    assert [r.composite_id for r in rows] == twos[:2]
    # Stream 1 over by far more than all it has: all of its own, and nothing beyond.
    rows = t.db.delete_oldest_recordings(t.stream_id, extra_fs_bytes=1 << 40, dry_run=True)
    assert [r.composite_id for r in rows] == ones
    # For real: the rows and files of stream 2's two oldest only.
    s2 = t.db.streams[other]
    t.db.update_stream(other, config=dict(s2.config, retainBytes=32768))
    assert [r.composite_id for r in t.db.delete_oldest_recordings(other)] == twos[:2]
    t.db.flush("retention")
    assert sorted(c for (c,) in t.db.conn.execute("select composite_id from garbage")) == \
        twos[:2]
    assert t.db.collect_garbage(t.dir_id) == 2
    left = sorted(n for n in os.listdir(t.sample_dir) if n != "meta")
    assert left == sorted(dirmod.name_for(c) for c in ones + twos[2:])
    assert t.db.streams[t.stream_id].fs_bytes == 3 * 32768
    assert t.db.streams[other].fs_bytes == 32768


def test_open_row_duration_counts_from_this_open(tmp_path, clocks):
    """The `open` row's duration is the monotonic time since this open. The other test
    of it opened the database at monotonic time 0, where `now + opened` (a mutant that
    survived) equals `now - opened`."""
    clocks.sleep(1000)  # the machine has been up a while
    t = make_testdb(tmp_path, clocks)
    clocks.sleep(5)
    t.db.flush("test")
    start, end, duration = t.db.conn.execute(
        "select start_time_90k, end_time_90k, duration_90k from open where id = ?",
        (t.db.open.id,)).fetchone()
    assert (end - start, duration) == (5 * 90_000, 5 * 90_000)
    t.db.close()


def test_collected_garbage_is_collected_once(testdb):
    """Collecting moves each id from "needs unlink" to "unlinked"; the next collection
    has nothing to do and says so (0). Leaving the id in "needs unlink" as well (a
    mutant that survived) unlinked it again at every later collection, and the count
    it returned was never checked."""
    t = testdb
    start = t90k("2026-11-29T10:00:00Z")
    ids = [t.add_recording(start_90k=start + i * 90_000, run_offset=i) for i in range(2)]
    t.db.flush("test")
    assert t.db.collect_garbage(t.dir_id) == 0  # nothing yet
    assert t.db.delete_camera(t.camera_id) == 2
    t.db.flush("delete")
    d = t.db.dirs[t.dir_id]
    assert d.garbage_needs_unlink == set(ids)
    assert t.db.collect_garbage(t.dir_id) == 2
    assert d.garbage_needs_unlink == set() and d.garbage_unlinked == set(ids)
    assert t.db.collect_garbage(t.dir_id) == 0  # nothing left to collect
    t.db.flush("gc")
    assert d.garbage_unlinked == set() and d.garbage_needs_unlink == set()
    assert t.db.conn.execute("select count(*) from garbage").fetchone()[0] == 0


def test_collect_garbage_on_a_closed_dir_counts_what_recovery_collected(tmp_path, clocks):
    """`nvr.py config` deletes recordings with the dir closed: `collect_garbage` opens
    it, and the open's recovery (R2-R4) unlinks the garbage and fsyncs the dir once.
    Nothing is left for G2-G3 (no second unlink or fsync), but those files were
    collected, and the count says so: `config` flushes the garbage rows away only if it
    is nonzero. It returned 0, so `config stream delete --yes` (which has no later
    flush) left the rows, and `config dir delete` then refused the emptied dir ("still
    has garbage to collect"). This branch was untested: three mutants of it survived."""
    t = make_testdb(tmp_path, clocks)
    start = t90k("2026-11-29T10:00:00Z")
    ids = [t.add_recording(start_90k=start + i * 90_000, run_offset=i) for i in range(2)]
    t.db.flush("test")
    t.db.close()
    d = db.Database.open_dir(t.db_dir, clocks, fs_factory=FaultyFs.factory("sync", times=0))
    assert d.dirs[t.dir_id].dir is None  # as `nvr.py config` has it
    assert d.delete_camera(t.camera_id) == 2
    d.flush("config camera delete")
    assert d.collect_garbage(t.dir_id) == 2
    x = d.dirs[t.dir_id]
    fs = x.dir.fs  # opened by collect_garbage, through the factory
    assert os.listdir(t.sample_dir) == ["meta"]
    assert fs.calls["unlink"] == 2  # R2, once each
    assert fs.calls["sync"] == 1    # R4 alone: no G3 with nothing left to collect
    assert x.garbage_needs_unlink == set() and x.garbage_unlinked == set(ids)
    d.flush("garbage collected")  # as `config` does when the count is nonzero
    assert d.conn.execute("select count(*) from garbage").fetchone()[0] == 0
    assert d.collect_garbage(t.dir_id) == 0
    d.close()
    d = db.Database.open_dir(t.db_dir, clocks)
    assert d.dirs[t.dir_id].garbage_needs_unlink == set()
    d.delete_sample_file_dir(t.dir_id)  # no stream uses it, no garbage: it can go
    d.close()


def test_flush_logs_what_it_deleted_and_collected(testdb, caplog):
    """The flush's log line is the operator's record of what retention deleted and what
    garbage went: it must say the bytes deleted and the files collected. Two mutants of
    its counters (`deleted_bytes -=`, `gced -=`) survived: nothing read the line back
    after a deletion."""
    t = testdb
    start = t90k("2026-11-29T10:00:00Z")
    ids = [t.add_recording(start_90k=start + i * 90_000, run_offset=i) for i in range(3)]
    t.db.flush("test")
    s = t.db.streams[t.stream_id]
    t.db.update_stream(t.stream_id, config=dict(s.config, retainBytes=32768))
    assert [r.composite_id for r in t.db.delete_oldest_recordings(t.stream_id)] == ids[:2]
    with caplog.at_level(logging.INFO, logger="db"):
        t.db.flush("retention")
        assert t.db.collect_garbage(t.dir_id) == 2
        t.db.flush("gc")
    assert [r.getMessage() for r in caplog.records if r.name == "db"] == [
        "flush (retention): added 0 recording(s) (none) of 0 B, deleted 2 (1/0, 1/1) of "
        "60870 B, GCed 0",
        "flush (gc): added 0 recording(s) (none) of 0 B, deleted 0 (none) of 0 B, GCed 2"]
