"""The Storage page's figures (storage.py, `GET /api/storage`; issue 17 item 4): the
limits in force, days kept at the recent rate, committed against uncommitted bytes,
the rule that last deleted something (db.py's flush, in memory), protected bytes, and
each dir's free space against its floor. Simulated time throughout; free space comes
through dir.py's `Fs.free_space` seam (`SpaceFs`)."""

from __future__ import annotations

import http.client
import json

import pytest

import auth
import clock
import configapi
import db
import dir as dirmod
import nvr
import recording
import retention
import storage
import system
import web
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


def reopen(t, clocks, free=100 * GIB, total=1000 * GIB):
    """A restart: the database closed and opened again, its dirs reporting (free, total)."""
    t.db.close()
    SpaceFs.space = [free, total]
    t.db = db.Database.open_dir(t.db_dir, clocks, fs_factory=SpaceFs)
    t.db.open_sample_file_dirs()
    return t.db


def set_config(t, stream_id=None, **kw):
    stream_id = stream_id or t.stream_id
    s = t.db.streams[stream_id]
    t.db.update_stream(stream_id, config={k: v for k, v in dict(s.config, **kw).items()
                                          if v is not None})


def stream_of(rep, stream_id):
    (s,) = [s for s in rep["streams"] if s["id"] == stream_id]
    return s


@pytest.fixture
def t(tmp_path, clocks):
    t = make_testdb(tmp_path, clocks)
    t.db.flush("test")  # the sample entry, before the restart
    reopen(t, clocks)
    yield t
    if t.db._lock_fd is not None:
        t.db.close()
    recording.set_server_zone(None)


def test_uncommitted_bytes_are_counted_before_the_first_flush(t):
    """A new stream's first minutes: nothing committed yet, but the synced recording
    waiting for its flush and the growing one are shown as uncommitted (they were 0 B)."""
    synced = t.add_recording(start_90k=NOW_90K)
    growing = t.add_recording(start_90k=NOW_90K + SEC, sync=False)
    sizes = {cid: r.sample_file_bytes for cid, r in
             zip((synced, growing), t.db.streams[t.stream_id].uncommitted)}
    s = stream_of(storage.report(t.db), t.stream_id)
    assert (s["committedBytes"], s["committedFsBytes"]) == (0, 0)
    assert s["uncommittedBytes"] == sizes[synced] + sizes[growing] > 0
    assert s["uncommittedFsBytes"] == sum(retention.round_up(n) for n in sizes.values())
    assert s["uncommittedRecordings"] == 2
    (d,) = storage.report(t.db)["dirs"]
    assert d["usedBytes"] == s["uncommittedFsBytes"]
    # The System and Settings pages say the same "used" (they counted only what was
    # committed, or synced: not the growing recording).
    (sys_dir,) = system._dirs(t.db)
    cfg_dir = configapi.dir_json(t.db, t.db.dirs[t.dir_id], configapi.free_spaces(t.db))
    assert sys_dir["usedBytes"] == cfg_dir["usedBytes"] == d["usedBytes"]
    # The flush commits the synced one; the growing one stays uncommitted.
    t.db.flush("test")
    s = stream_of(storage.report(t.db), t.stream_id)
    assert (s["committedBytes"], s["uncommittedBytes"]) == (sizes[synced], sizes[growing])
    assert s["uncommittedRecordings"] == 1
    assert s["oldestStartTime90k"] == NOW_90K and s["oldestSec"] == NOW_90K / SEC


def test_days_kept_at_the_recent_rate(t):
    """The byte limit's days come from the newest RECENT_RECORDINGS recordings (plus the
    uncommitted ones), not the average since the first: a big old recording (a camera
    set to a higher bitrate last month) doesn't count."""
    t.add_recording(start_90k=NOW_90K - 3600 * SEC, frame_bytes=50_000)
    for i in range(storage.RECENT_RECORDINGS):
        t.add_recording(start_90k=NOW_90K + i * SEC)  # 1 s each, 30 frames of ~1000 B
    t.db.flush("test")
    growing = t.add_recording(start_90k=NOW_90K + 60 * SEC, sync=False)
    assert growing
    rows = t.db.list_recordings_by_id(t.stream_id, 1, 1 << 31)
    assert len(rows) == storage.RECENT_RECORDINGS + 1  # + the growing one
    fs = sum(retention.round_up(r.sample_file_bytes) for r in rows)
    nbytes = sum(r.sample_file_bytes for r in rows)
    secs = sum(r.wall_duration_90k for r in rows) / SEC
    set_config(t, retainBytes=10 * GIB, retainDays=2.5)
    s = stream_of(storage.report(t.db), t.stream_id)
    assert s["recentBytesPerSec"] == pytest.approx(fs / secs)
    assert s["recentBitrateBps"] == pytest.approx(nbytes * 8 / secs)
    days = 10 * GIB / (fs / secs) / 86400
    assert s["daysAtBytesLimit"] == pytest.approx(days)
    assert (s["retainBytes"], s["retainDays"], s["daysAtAgeLimit"]) == (10 * GIB, 2.5, 2.5)
    assert s["daysKept"] == pytest.approx(min(days, 2.5))
    # No byte limit (0 with an age limit): only the age limit keeps anything.
    set_config(t, retainBytes=0, retainDays=0.5)
    s = stream_of(storage.report(t.db), t.stream_id)
    assert (s["retainBytes"], s["daysAtBytesLimit"], s["daysKept"]) == (None, None, 0.5)


def test_last_deletion_names_the_rule_the_flush_applied(t, clocks):
    d = t.db
    for i in range(6):
        t.add_recording(start_90k=NOW_90K - (6 - i) * 3600 * SEC)  # hourly, 1 s each
    d.flush("test")
    s = d.streams[t.stream_id]
    size = s.fs_bytes // 6
    sample = [r.sample_file_bytes for r in d.list_recordings_by_id(t.stream_id, 0, 99)]
    assert stream_of(storage.report(d), t.stream_id)["lastDeletion"] is None
    # Bytes: room for 4. Queued is not deleted: nothing to report until the flush.
    set_config(t, retainBytes=4 * size)
    assert len(d.delete_oldest_recordings(t.stream_id)) == 2
    assert stream_of(storage.report(d), t.stream_id)["lastDeletion"] is None
    clocks.advance(5 * clock.NANOS_PER_SEC)
    d.flush("test")
    now_sec = clocks.realtime() / clock.NANOS_PER_SEC
    want = {"rule": "bytes", "timeSec": now_sec, "time90k": round(now_sec * SEC),
            "count": 2, "bytes": sample[0] + sample[1]}
    got = stream_of(storage.report(d), t.stream_id)
    assert got["lastDeletion"] == want
    assert got["lastDeletionByRule"] == {"bytes": want}
    # Age: 3.5 hours deletes the recording of 4 hours ago.
    clocks.advance(60 * clock.NANOS_PER_SEC)
    set_config(t, retainDays=3.5 / 24)
    plan = d.delete_oldest_recordings(t.stream_id)
    assert (plan.by_bytes, plan.by_age) == (0, 1)
    d.flush("test")
    got = stream_of(storage.report(d), t.stream_id)
    assert got["lastDeletion"]["rule"] == "age" and got["lastDeletion"]["count"] == 1
    assert got["lastDeletion"]["bytes"] == sample[2]
    assert got["lastDeletionByRule"]["bytes"] == want  # the earlier one is kept, by rule
    # Floor: free space 1.5 recordings below the floor deletes the two oldest left
    # (once the garbage is unlinked: until then it counts as space on its way back).
    d.collect_garbage(t.dir_id)
    d.update_sample_file_dir(t.dir_id, {"freeSpaceFloorBytes": 100 * size})
    p = d.enforce_free_space_floor(t.dir_id, 98 * size + size // 2, 1000 * size)
    assert [r.recording_id for _, r in p.rows] == [3, 4]
    d.flush("test")
    got = stream_of(storage.report(d), t.stream_id)
    assert {k: got["lastDeletion"][k] for k in ("rule", "count", "bytes")} == \
        {"rule": "floor", "count": 2, "bytes": sample[3] + sample[4]}
    assert sorted(got["lastDeletionByRule"]) == ["age", "bytes", "floor"]
    # In memory only: a restart forgets it (documented).
    d = reopen(t, clocks)
    got = stream_of(storage.report(d), t.stream_id)
    assert (got["lastDeletion"], got["lastDeletionByRule"]) == (None, {})


def test_one_flush_deleting_by_two_rules_reports_the_larger(t):
    d = t.db
    for i in range(6):
        t.add_recording(start_90k=NOW_90K - (6 - i) * 3600 * SEC)
    d.flush("test")
    size = d.streams[t.stream_id].fs_bytes // 6
    # Bytes asks for 1, then age (5.5 hours) for 1 more; the floor for 1 more.
    set_config(t, retainBytes=5 * size, retainDays=4.5 / 24)
    plan = d.delete_oldest_recordings(t.stream_id)
    assert (plan.by_bytes, plan.by_age) == (1, 1)
    d.update_sample_file_dir(t.dir_id, {"freeSpaceFloorBytes": 100 * size})
    p = d.enforce_free_space_floor(t.dir_id, 100 * size - 1 - 2 * size, 1000 * size)
    assert [r.recording_id for _, r in p.rows] == [2]
    d.flush("test")
    got = stream_of(storage.report(d), t.stream_id)
    assert {k: v["count"] for k, v in got["lastDeletionByRule"].items()} == \
        {"bytes": 1, "age": 1, "floor": 1}
    assert got["lastDeletion"]["rule"] == "bytes"  # a tie: the order of retention.RULES


def test_protected_bytes_and_a_protection_over_the_byte_limit(t):
    """Protected bytes per stream and dir; when they alone exceed the byte limit the
    report says so (retention keeps them, so the stream holds more than its limit), and
    the last deletion is of the unprotected ones only."""
    d = t.db
    for i in range(4):
        t.add_recording(start_90k=NOW_90K + i * 60 * SEC)  # 1 s each, a minute apart
    d.flush("test")
    sizes = [retention.round_up(r.sample_file_bytes)
             for r in d.list_recordings_by_id(t.stream_id, 0, 99)]
    # Recordings 1 and 2 (the range overlaps both, and ends before 3 starts).
    d.add_protection(t.camera_id, None, NOW_90K + 60 * SEC + SEC // 2, NOW_90K + 121 * SEC,
                     "incident", "test")
    s = stream_of(storage.report(d), t.stream_id)
    assert (s["protectedBytes"], s["protectedOverLimit"]) == (sizes[1] + sizes[2], False)
    assert storage.report(d)["dirs"][0]["protectedBytes"] == sizes[1] + sizes[2]
    set_config(t, retainBytes=sizes[1])  # less than what is protected
    plan = d.delete_oldest_recordings(t.stream_id)
    assert [r.recording_id for r in plan] == [0, 3]
    d.flush("test")
    s = stream_of(storage.report(d), t.stream_id)
    assert (s["protectedBytes"], s["protectedOverLimit"]) == (sizes[1] + sizes[2], True)
    assert s["committedFsBytes"] == sizes[1] + sizes[2] > s["retainBytes"]
    assert {k: s["lastDeletion"][k] for k in ("rule", "count")} == {"rule": "bytes", "count": 2}


def test_last_deletion_counts_only_what_the_flush_deleted(t):
    """A protection added while a deletion is queued takes its rows off the queue
    (h3-protect): the last deletion counts the rows the flush did delete."""
    d = t.db
    for i in range(4):
        t.add_recording(start_90k=NOW_90K + i * 60 * SEC)
    d.flush("test")
    set_config(t, retainBytes=1)
    assert [r.recording_id for r in d.delete_oldest_recordings(t.stream_id)] == [0, 1, 2, 3]
    d.add_protection(t.camera_id, t.stream_id, NOW_90K + 60 * SEC, NOW_90K + 61 * SEC,
                     "late", "test")
    d.flush("test")
    s = stream_of(storage.report(d), t.stream_id)
    assert {k: s["lastDeletion"][k] for k in ("rule", "count")} == {"rule": "bytes", "count": 3}
    assert [r.recording_id for r in d.list_recordings_by_id(t.stream_id, 0, 99)] == [1]


def test_dirs_free_space_against_the_floor(t, clocks):
    t.add_recording(start_90k=NOW_90K)
    t.db.flush("test")
    t.add_recording(start_90k=NOW_90K + SEC, sync=False)
    t.db.update_sample_file_dir(t.dir_id, {"freeSpaceFloorPercent": 5})
    d = reopen(t, clocks, free=40 * GIB, total=1000 * GIB)
    t.add_recording(start_90k=NOW_90K + SEC, sync=False)  # the reopen dropped it
    rep = storage.report(d)
    (j,) = rep["dirs"]
    s = stream_of(rep, t.stream_id)
    assert j == {"id": t.dir_id, "uuid": j["uuid"], "path": t.sample_dir, "open": True,
                 "usedBytes": s["committedFsBytes"] + s["uncommittedFsBytes"],
                 "floorSetting": "5%", "protectedBytes": 0, "streamIds": [t.stream_id],
                 "totalBytes": 1000 * GIB, "freeBytes": 40 * GIB, "floorBytes": 50 * GIB,
                 "belowFloor": True}
    assert s["committedFsBytes"] > 0 and s["uncommittedFsBytes"] > 0
    SpaceFs.space[0] = 50 * GIB  # exactly at the floor is not below it
    assert storage.report(d)["dirs"][0]["belowFloor"] is False


def test_a_dir_whose_free_space_cant_be_read_says_why(t, clocks):
    class Broken(SpaceFs):
        def free_space(self):
            raise OSError(5, "Input/output error")
    t.db.close()
    t.db = db.Database.open_dir(t.db_dir, clocks, fs_factory=Broken)
    t.db.open_sample_file_dirs()
    (j,) = storage.report(t.db)["dirs"]
    assert (j["totalBytes"], j["freeBytes"], j["belowFloor"]) == (None, None, False)
    assert j["error"] == f"can't read the free space of {t.sample_dir}: Input/output error"


def test_get_api_storage(t):
    """Through the server: viewVideo gets the report as JSON (strict: no NaN)."""
    t.add_recording(start_90k=NOW_90K, sync=False)
    binds = [nvr.Bind(("ipv4", "127.0.0.1:0"),
                      allow_unauthenticated_permissions=auth.Permissions(view_video=True)),
             nvr.Bind(("ipv4", "127.0.0.1:0"))]
    srv = web.Server(t.db, nvr.Config("unused", None, binds))
    srv.start()
    try:
        def get(port):
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            c.request("GET", "/api/storage", headers={"Host": "127.0.0.1"})
            r = c.getresponse()
            body = r.read()
            c.close()
            return r.status, body
        status, body = get(srv.addresses[0][1])
        assert status == 200, body
        rep = json.loads(body)
        s = stream_of(rep, t.stream_id)
        assert s["uncommittedBytes"] > 0 and s["committedBytes"] == 0
        assert s["cameraShortName"] == "test-camera" and s["streamType"] == "main"
        assert [d["id"] for d in rep["dirs"]] == [t.dir_id]
        assert get(srv.addresses[1][1])[0] == 401  # nobody without viewVideo
    finally:
        srv.stop()


def test_committed_figures_say_when_start_up_is_still_counting(t, clocks):
    """After a restart the older recordings are counted in the background (db.py,
    "Loading totals"): until then `totalsComplete` is false and the committed figures
    are a lower bound; once loaded, true and the whole."""
    for day in range(3):
        t.add_recording(start_90k=NOW_90K - day * DAY)
    t.db.flush("test")
    whole = stream_of(storage.report(t.db), t.stream_id)
    assert whole["totalsComplete"] is True and whole["committedFsBytes"] > 0
    t.db.close()
    t.db = db.Database.open_dir(t.db_dir, clocks, totals="later")
    t.db.open_sample_file_dirs()
    part = stream_of(storage.report(t.db), t.stream_id)
    assert part["totalsComplete"] is False
    assert part["committedFsBytes"] < whole["committedFsBytes"]
    while t.db.load_totals_step():
        pass
    done = stream_of(storage.report(t.db), t.stream_id)
    assert done["totalsComplete"] is True
    assert done["committedFsBytes"] == whole["committedFsBytes"]
