"""check.py: each planted fault is found, and each repair flag fixes its own."""

import io
import os
import sqlite3

import pytest

import check
import db
import dir as dirmod
import recording
from conftest import make_testdb

START = recording.parse_time("2026-11-29T10:00:00Z")


@pytest.fixture
def stopped(tmp_path, clocks):
    """A database with three committed recordings, closed as after a clean stop."""
    t = make_testdb(tmp_path, clocks)
    t.ids = [t.add_recording(start_90k=START + i * 90_000, run_offset=i) for i in range(3)]
    t.db.flush("test")
    t.db.close()
    t.path = lambda cid: os.path.join(t.sample_dir, dirmod.name_for(cid))
    t.sql = lambda q, *a: _sql(t.db_dir, q, *a)
    return t


def _sql(db_dir, q, *args):
    conn = sqlite3.connect(os.path.join(db_dir, "db"))
    try:
        rows = conn.execute(q, args).fetchall()
        conn.commit()
        return rows
    finally:
        conn.close()


def run_check(t, **opts):
    out = io.StringIO()
    status = check.run(t.db_dir, check.Options(**opts), out)
    return status, out.getvalue()


def test_clean(stopped):
    assert run_check(stopped, verify_hashes=True) == (0, "check: clean\n")


def test_missing_file(stopped):
    os.unlink(stopped.path(stopped.ids[1]))
    status, out = run_check(stopped)
    assert status == 1
    assert "recording 1/1 (0000000100000001 in" in out and "sample file is missing" in out
    # Other repair flags don't touch it.
    assert run_check(stopped, trash_orphan_sample_files=True)[0] == 1
    status, out = run_check(stopped, delete_orphan_rows=True)
    assert "repaired: deleted the rows of 1 recording(s)" in out
    assert run_check(stopped) == (0, "check: clean\n")
    assert stopped.sql("select composite_id from recording") == [
        (stopped.ids[0],), (stopped.ids[2],)]


def test_orphan_file(stopped):
    orphan = stopped.ids[1]
    stopped.sql("delete from recording_playback where composite_id = ?", orphan)
    stopped.sql("delete from recording_integrity where composite_id = ?", orphan)
    stopped.sql("delete from recording where composite_id = ?", orphan)
    status, out = run_check(stopped)
    assert status == 1 and "file has no recording row" in out
    status, out = run_check(stopped, trash_orphan_sample_files=True)
    assert "moved 1 sample file(s) to garbage" in out and "collected 1 garbage file(s)" in out
    assert not os.path.exists(stopped.path(orphan))
    assert run_check(stopped) == (0, "check: clean\n")


def test_wrong_size(stopped):
    with open(stopped.path(stopped.ids[2]), "ab") as f:
        f.write(b"extra")
    status, out = run_check(stopped)
    assert status == 1 and "file is 30440 bytes, the row says 30435" in out
    status, out = run_check(stopped, trash_corrupt_rows=True)
    assert not os.path.exists(stopped.path(stopped.ids[2]))
    assert run_check(stopped) == (0, "check: clean\n")
    assert len(stopped.sql("select * from recording")) == 2


def test_corrupt_index(stopped):
    stopped.sql("update recording_playback set video_index = x'2900' where composite_id = ?",
                stopped.ids[0])
    status, out = run_check(stopped)
    assert status == 1 and "recording 1/0" in out and "corrupt video_index" in out
    run_check(stopped, trash_corrupt_rows=True)
    assert run_check(stopped) == (0, "check: clean\n")
    assert not os.path.exists(stopped.path(stopped.ids[0]))


def test_index_disagreeing_with_row(stopped):
    stopped.sql("update recording set video_samples = 29 where composite_id = ?", stopped.ids[0])
    status, out = run_check(stopped)
    assert status == 1 and "disagrees with its row" in out


def test_hash_mismatch_only_with_verify_hashes(stopped):
    with open(stopped.path(stopped.ids[0]), "r+b") as f:
        f.write(b"X")  # same size, different bytes
    assert run_check(stopped)[0] == 0
    status, out = run_check(stopped, verify_hashes=True)
    assert status == 1 and "blake2b does not match" in out


def test_leftover_garbage(stopped):
    # A crash after the flush that moved a recording to garbage, before the unlink.
    cid = stopped.ids[0]
    stopped.sql("delete from recording_playback where composite_id = ?", cid)
    stopped.sql("delete from recording_integrity where composite_id = ?", cid)
    stopped.sql("delete from recording where composite_id = ?", cid)
    stopped.sql("insert into garbage values (?, ?)", stopped.dir_id, cid)
    status, out = run_check(stopped)
    # Normal (start-up deletes it), so a note, as in Moonfire's check.
    assert (status, out) == (0, f"note: recording 1/0 ({dirmod.name_for(cid)} in "
                                f"{stopped.sample_dir}): garbage file not yet deleted; the "
                                f"next `nvr.py run` deletes it (or --trash-orphan-sample-files "
                                f"now)\ncheck: clean\n")
    status, out = run_check(stopped, trash_orphan_sample_files=True)
    assert "collected 1 garbage file(s)" in out
    assert run_check(stopped) == (0, "check: clean\n")
    assert stopped.sql("select count(*) from garbage") == [(0,)]


def test_garbage_row_of_unlinked_file_is_normal(stopped):
    stopped.sql("insert into garbage values (?, ?)", stopped.dir_id, (1 << 32) | 99)
    status, out = run_check(stopped)
    assert status == 0 and "1 garbage row(s) of unlinked files" in out


def test_abandoned_file_is_a_note(stopped):
    with open(stopped.path((1 << 32) | 3), "wb") as f:
        f.write(b"partial")
    status, out = run_check(stopped)
    assert status == 0 and "never committed (abandoned)" in out


def test_rows_beyond_cum_recordings(stopped):
    """Rows with ids >= cum_recordings (a bad write, a hand edit) were reported clean;
    start-up recovery then took their files for abandoned ones and unlinked them."""
    want = stopped.sql("select cum_recordings, cum_media_duration_90k, cum_runs from stream")
    stopped.sql("update stream set cum_recordings = 1")
    status, out = run_check(stopped)
    assert status == 1
    assert ("error: stream 1 (test-camera/main): recording row(s) 1, 2 have ids >= the "
            "stream's cum_recordings 1, so their files look uncommitted; "
            "--raise-cum-recordings raises it to 3\n") in out
    assert run_check(stopped, trash_corrupt_rows=True)[0] == 1  # not another flag's job
    status, out = run_check(stopped, raise_cum_recordings=True)
    assert "repaired: raised stream 1's cum_recordings to 3" in out
    assert run_check(stopped) == (0, "check: clean\n")
    assert stopped.sql("select cum_recordings, cum_media_duration_90k, cum_runs "
                       "from stream") == want
    assert all(os.path.exists(stopped.path(c)) for c in stopped.ids)


def test_raising_cum_recordings_trashes_abandoned_files_below_it(stopped):
    # Recording 1 lost its rows: its file is abandoned while cum_recordings is 0, and
    # would be a file without a row once raised to 3; it goes to garbage instead.
    gone = stopped.ids[1]
    for table in ("recording_playback", "recording_integrity", "recording"):
        stopped.sql(f"delete from {table} where composite_id = ?", gone)
    stopped.sql("update stream set cum_recordings = 0, cum_media_duration_90k = 0, "
                "cum_runs = 0")
    # The fixture leaves prev_* at 0; a real run's last row: two recordings of 3 s
    # (90000) before it, in the one run that began at recording 0.
    stopped.sql("update recording set prev_media_duration_90k = 180000, prev_runs = 1 "
                "where composite_id = ?", stopped.ids[2])
    status, out = run_check(stopped)
    assert status == 1 and "recording row(s) 0, 2 have ids >= the stream's cum_recordings 0" in out
    assert "recording 1/1 (0000000100000001 in" in out and "(abandoned)" in out
    status, out = run_check(stopped, raise_cum_recordings=True)
    assert "moved 1 sample file(s) to garbage" in out and "collected 1 garbage file(s)" in out
    assert not os.path.exists(stopped.path(gone))
    assert run_check(stopped) == (0, "check: clean\n")
    # What the last row implies: 3 recordings of 3 s, one run.
    assert stopped.sql("select cum_recordings, cum_media_duration_90k, cum_runs "
                       "from stream") == [(3, 270000, 1)]


def test_unexpected_file(stopped):
    with open(os.path.join(stopped.sample_dir, "notes.txt"), "w") as f:
        f.write("hi")
    status, out = run_check(stopped)
    assert status == 1 and "unexpected file 'notes.txt'" in out


def test_mismatched_dir_meta(stopped, tmp_path, clocks):
    other = make_testdb(tmp_path / "other", clocks)
    other.db.close()
    stopped.sql("update sample_file_dir set config = ?", f'{{"path":"{other.sample_dir}"}}')
    status, out = run_check(stopped)
    assert status == 1 and "belongs to another database" in out


def test_schema_difference(stopped):
    stopped.sql("create table extra (x)")
    stopped.sql("drop index user_session_uid")
    status, out = run_check(stopped)
    assert "error: schema: missing index user_session_uid" in out
    assert "error: schema: unexpected table extra" in out


def test_check_refuses_while_nvr_runs(stopped, clocks):
    d = db.Database.open_dir(stopped.db_dir, clocks)
    with pytest.raises(db.DbLocked):
        run_check(stopped)
    d.close()
