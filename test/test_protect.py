"""Protected footage (issue 17 items 3, 5, 6): time ranges no retention rule deletes.

The rules are in retention.py (`Protected`, the plans passing protected rows over), the
rows and the deletion queues in db.py, the CLI in nvr.py (`protect ...`), the API in
api.py (`/api/protections`). Time is simulated (`clocks`); the free space the floor sees
comes through test_retention's `SpaceFs`; the loop-mounted ext4 test fills a real disk.
"""

from __future__ import annotations

import io
import logging
import os
import threading

import pytest

import check
import db
import dir as dirmod
import recording
import retention
import writer
from conftest import START_NS, make_testdb
from test_retention import (DAY, NOW_90K, SEC, InlineSyncer, NoStallClocks, SpaceFs, feed,
                            ids, inline, loop_stream, pump, reopen_with_space, set_config,
                            small_ext4)  # noqa: F401 (a fixture)

MIN = 60 * SEC


def minutes(t, n: int, stream_id=None, first: int = 0) -> list[int]:
    """n recordings of 1 s, one a minute from NOW_90K + first minutes."""
    return [t.add_recording(start_90k=NOW_90K + (first + i) * MIN, stream_id=stream_id)
            for i in range(n)]


def size_of_one(t) -> int:
    s = t.db.streams[t.stream_id]
    return s.fs_bytes // len(ids(t))


# -- the rule ------------------------------------------------------------------------

def test_overlap_is_half_open_and_merging_changes_no_answer():
    p = retention.Protected([(100, 200), (150, 250), (300, 400), (250, 260)])
    assert p.ranges == [(100, 260), (300, 400)]
    for start, end, covered in [
            (0, 100, False), (0, 101, True),        # ends at the start / just after it
            (260, 300, False), (259, 300, True),    # starts at the end / just before it
            (399, 400, True), (400, 500, False),
            (100, 100, True), (260, 260, False),    # zero duration: one tick
            (299, 299, False), (300, 300, True), (0, 1000, True)]:
        assert p.covers(start, end) is covered, (start, end)
        # The same answer from the ranges one by one.
        assert any(a < max(end, start + 1) and b > start for a, b in
                   [(100, 200), (150, 250), (300, 400), (250, 260)]) is covered
    assert not retention.NOTHING_PROTECTED.covers(0, 1 << 40)


# -- retention skips protected recordings ----------------------------------------------

def test_byte_limit_passes_over_a_protection_spanning_recordings(testdb):
    t = testdb
    minutes(t, 6)
    t.db.flush("test")
    size = size_of_one(t)
    # From the middle of recording 1 to the middle of recording 2.
    pid = t.db.add_protection(t.camera_id, t.stream_id, NOW_90K + MIN + SEC // 2,
                              NOW_90K + 2 * MIN + SEC // 2, "spanning", "alice")
    set_config(t, retainBytes=3 * size)
    plan = t.db.delete_oldest_recordings(t.stream_id)
    assert [r.recording_id for r in plan] == [0, 3, 4]
    assert (plan.by_bytes, plan.kept_protected, plan.kept_protected_bytes) == (3, 2, 2 * size)
    t.db.flush("test")
    assert ids(t) == [1, 2, 5]
    assert t.db.protected_bytes(t.stream_id) == 2 * size == t.db.protection_bytes(pid)
    # Without the protection, the same limit takes the oldest: 1 and 2 go at the next pass
    # (only to meet the limit again: 3 recordings fit).
    t.db.delete_protection(pid)
    minutes(t, 1, first=6)
    assert [r.recording_id for r in t.db.delete_oldest_recordings(t.stream_id)] == [1]


def test_a_camera_protection_covers_every_stream_of_the_camera(testdb):
    t = testdb
    sub = t.db.add_stream(t.camera_id, "sub", dict(t.db.streams[t.stream_id].config), t.dir_id)
    other_cam = t.db.add_camera("other", {})
    other = t.db.add_stream(other_cam, "main", dict(t.db.streams[t.stream_id].config),
                            t.dir_id)
    for sid in (t.stream_id, sub, other):
        minutes(t, 3, stream_id=sid)
    t.db.flush("test")
    t.db.add_protection(t.camera_id, None, NOW_90K, NOW_90K + MIN, "all of camera", "cli")
    for sid in (t.stream_id, sub, other):
        set_config(t, sid, retainBytes=0, retainDays=None)  # delete everything unprotected
        t.db.delete_oldest_recordings(sid)
    t.db.flush("test")
    assert ids(t) == [0] and ids(t, sub) == [0] and ids(t, other) == []


def test_protected_alone_over_the_byte_limit_deletes_nothing_and_warns_once(testdb, caplog):
    t = testdb
    minutes(t, 4)
    t.db.flush("test")
    size = size_of_one(t)
    t.db.add_protection(t.camera_id, t.stream_id, NOW_90K, NOW_90K + 2 * MIN, "incident",
                        "alice")
    set_config(t, retainBytes=size)  # 2 protected recordings alone exceed it
    with caplog.at_level(logging.INFO, logger="db"):
        assert [r.recording_id for r in t.db.delete_oldest_recordings(t.stream_id)] == [2, 3]
        # A pass before the flush (another recording saved) sees none of the protected
        # ones, which are before the queued: still over, still not a new episode.
        assert t.db.delete_oldest_recordings(t.stream_id) == []
        t.db.flush("test")
        for _ in range(5):  # more passes while it lasts: counted, not logged each time
            plan = t.db.delete_oldest_recordings(t.stream_id)
            assert plan == [] and plan.kept_protected == 2 and plan.short_bytes == size
    assert ids(t) == [0, 1]
    assert t.db.protected_over_limit(t.stream_id)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"test-camera-main: protected recordings alone exceed retainBytes ({size} B) by "
        f"{size} B; they are kept. Raise retainBytes, or shorten or remove protections "
        f"(`nvr.py protect list`)"]
    # Raised limit: one line says it is over.
    caplog.clear()
    set_config(t, retainBytes=10 * size)
    with caplog.at_level(logging.INFO, logger="db"):
        assert t.db.delete_oldest_recordings(t.stream_id) == []
        assert t.db.delete_oldest_recordings(t.stream_id) == []
    assert [r.getMessage().startswith("test-camera-main: back within retainBytes after")
            for r in caplog.records] == [True]
    assert not t.db.protected_over_limit(t.stream_id)


def test_age_limit_passes_over_protected_recordings(testdb):
    t = testdb
    set_config(t, retainBytes=0, retainDays=1)
    # Five 1 s recordings, a minute apart, all past the limit but the last.
    for i in range(5):
        t.add_recording(start_90k=NOW_90K - DAY - 4 * MIN + i * MIN)
    t.db.flush("test")
    t.db.add_protection(t.camera_id, t.stream_id, NOW_90K - DAY - 3 * MIN,
                        NOW_90K - DAY - 3 * MIN + 1, "one tick", "bob")
    plan = t.db.delete_oldest_recordings(t.stream_id)
    # 0, 2 and 3 expired and unprotected; 1 protected (the age prefix goes on past it);
    # 4 ends within the day.
    assert [r.recording_id for r in plan] == [0, 2, 3]
    assert (plan.by_age, plan.kept_protected) == (3, 1)
    t.db.flush("test")
    assert ids(t) == [1, 4]


def test_a_protection_added_while_a_deletion_is_queued_keeps_it(testdb, caplog):
    """Retention queued recordings (in memory, for the next flush); a protection added
    before that flush takes the ones it covers off the queue, and the flush keeps them.
    An edit that grows a protection does the same."""
    t = testdb
    minutes(t, 6)
    t.db.flush("test")
    size = size_of_one(t)
    set_config(t, retainBytes=2 * size)
    assert [r.recording_id for r in t.db.delete_oldest_recordings(t.stream_id)] == [0, 1, 2, 3]
    s = t.db.streams[t.stream_id]
    assert s.fs_bytes_to_delete == 4 * size
    with caplog.at_level(logging.INFO, logger="db"):
        pid = t.db.add_protection(t.camera_id, None, NOW_90K + MIN, NOW_90K + MIN + 1, "late",
                                  "alice")
    assert [r.recording_id for r in s.to_delete] == [0, 2, 3]
    assert s.fs_bytes_to_delete == 3 * size
    assert "protection 1 ('late'): 1 recording(s) queued for deletion are kept" in caplog.text
    t.db.update_protection(pid, end_90k=NOW_90K + 2 * MIN + 1)  # now covers 2 as well
    assert [r.recording_id for r in s.to_delete] == [0, 3]
    assert s.fs_bytes_to_delete == 2 * size
    t.db.flush("test")
    assert ids(t) == [1, 2, 4, 5]
    assert sorted(t.db.dirs[t.dir_id].garbage_needs_unlink) == [
        t.stream_id << 32 | 0, t.stream_id << 32 | 3]


def test_protections_survive_a_restart_between_queue_and_flush(tmp_path, clocks):
    """The queue is memory only; the protection is in SQLite. Queued, then nvr stops
    before the flush; the protection added (offline) before the next start holds."""
    t = make_testdb(tmp_path, clocks)
    minutes(t, 4)
    t.db.flush("test")
    size = size_of_one(t)
    set_config(t, retainBytes=2 * size)
    assert [r.recording_id for r in t.db.delete_oldest_recordings(t.stream_id)] == [0, 1]
    t.db.close()  # no flush: the queue is gone
    t.db = db.Database.open_dir(t.db_dir, clocks)
    t.db.add_protection(t.camera_id, t.stream_id, NOW_90K, NOW_90K + SEC, "after", "cli")
    t.db.close()
    t.db = db.Database.open_dir(t.db_dir, clocks)
    t.db.open_sample_file_dirs()
    assert [(p.label, p.created_by, p.created_time_90k) for p in t.db.list_protections()] == [
        ("after", "cli", recording.to_90k_from_ns(clocks.realtime()))]
    dirmod.Syncer(t.db, t.dir_id).initial_rotation()
    assert ids(t) == [0, 3]  # 0 protected; 1 and 2 went to meet the limit
    t.db.close()


def test_floor_across_streams_passes_over_protected_and_warns_once_when_all_are(
        tmp_path, clocks, caplog):
    t = make_testdb(tmp_path, clocks)
    d = t.db
    sub = d.add_stream(t.camera_id, "sub", dict(d.streams[t.stream_id].config), t.dir_id)
    # main at 0, 2, 4, 6 min; sub at 1, 3, 5, 7 min.
    for i in range(4):
        t.add_recording(start_90k=NOW_90K + 2 * i * MIN)
        t.add_recording(start_90k=NOW_90K + (2 * i + 1) * MIN, stream_id=sub)
    d.flush("test")
    size = d.streams[t.stream_id].fs_bytes // 4
    # The first three minutes of both streams (main 0 and 2, sub 1), and sub's 5 min.
    d.add_protection(t.camera_id, None, NOW_90K, NOW_90K + 3 * MIN, "first minutes", "cli")
    d.add_protection(t.camera_id, sub, NOW_90K + 5 * MIN, NOW_90K + 6 * MIN, "sub", "cli")
    d.update_sample_file_dir(t.dir_id, {"freeSpaceFloorBytes": 10 * size})
    d = reopen_with_space(t, clocks, 7 * size + 100, 1000 * size)  # 3 recordings short
    syncer = inline(dirmod.Syncer(d, t.dir_id))
    with caplog.at_level(logging.INFO, logger="dir"):
        assert syncer.enforce_floor()
    assert caplog.records[-1].getMessage().endswith(
        f"deleting the 3 oldest recording(s) of the dir ({3 * size} B: stream {sub} 1; "
        f"stream {t.stream_id} 2-3); 4 protected passed over")  # 0, 1, 2 and 5 min
    caplog.clear()
    queued = sorted((r.start_time_90k, sid) for s in d.streams.values() for r in s.to_delete
                    for sid in [s.id])
    # The oldest unprotected by start time: sub 3 min, main 4 min, main 6 min.
    assert queued == [(NOW_90K + 3 * MIN, sub), (NOW_90K + 4 * MIN, t.stream_id),
                      (NOW_90K + 6 * MIN, t.stream_id)]
    pump(syncer)
    assert ids(t) == [0, 1] and ids(t, sub) == [0, 2, 3]
    # The disk fills again: sub's 7 min goes, then only protected ones are left.
    SpaceFs.space[0] = 0
    with caplog.at_level(logging.INFO, logger="dir"):
        syncer.enforce_floor()
        pump(syncer)
        syncer.enforce_floor()
        syncer.enforce_floor()
    assert ids(t) == [0, 1] and ids(t, sub) == [0, 2]
    lines = [r.getMessage() for r in caplog.records if "stays below" in r.getMessage()]
    assert lines == [
        f"{t.sample_dir}: free space stays below the floor of {10 * size} B ({10 * size} B): "
        f"every recording of the dir left is protected ({4 * size} B); they are kept, "
        f"and recording stalls when the disk is full. Shorten or remove protections "
        f"(`nvr.py protect list`), or free space"]
    d.close()


# -- the database API -------------------------------------------------------------------

@pytest.mark.parametrize("change,message", [
    (dict(end_90k=NOW_90K), "must be after start"),
    (dict(end_90k=NOW_90K - 1), "must be after start"),
    (dict(start_90k=0), "is not after 1970"),
    (dict(end_90k=2 ** 62), "is after the year 9999"),
    (dict(label="x" * 257), "label is 257 characters; at most 256"),
    (dict(label="a\nb"), "label has a control character or line break"),
    (dict(stream_id=99), "camera test-camera has no stream with id 99"),
    (dict(camera_id=99), "no camera with id 99"),
])
def test_bad_protections_are_refused_naming_the_problem(testdb, change, message):
    args = dict(camera_id=testdb.camera_id, stream_id=testdb.stream_id, start_90k=NOW_90K,
                end_90k=NOW_90K + SEC, label="ok", created_by="cli")
    args.update(change)
    with pytest.raises(db.DbError, match=message):
        testdb.db.add_protection(**args)
    assert testdb.db.protections == {}
    assert testdb.db.conn.execute("select count(*) from protection").fetchone()[0] == 0


def test_protections_are_edited_listed_and_go_with_their_stream(testdb, clocks):
    t = testdb
    d = t.db
    sub = d.add_stream(t.camera_id, "sub", dict(d.streams[t.stream_id].config), t.dir_id)
    a = d.add_protection(t.camera_id, t.stream_id, NOW_90K, NOW_90K + MIN, "a", "alice")
    b = d.add_protection(t.camera_id, None, NOW_90K - MIN, NOW_90K, "b", "bob")
    c = d.add_protection(t.camera_id, sub, NOW_90K + MIN, NOW_90K + 2 * MIN, "c", "cli")
    assert [p.id for p in d.list_protections()] == [b, a, c]
    assert [p.id for p in d.list_protections(stream_id=t.stream_id)] == [b, a]
    assert [p.id for p in d.list_protections(start_90k=NOW_90K)] == [a, c]  # b ends there
    assert [p.id for p in d.list_protections(end_90k=NOW_90K + MIN)] == [b, a]
    clocks.advance(5 * 10**9)
    p = d.update_protection(a, label="renamed", start_90k=NOW_90K + SEC)
    assert (p.label, p.start_time_90k, p.end_time_90k) == ("renamed", NOW_90K + SEC,
                                                           NOW_90K + MIN)
    assert p.updated_time_90k == p.created_time_90k + 5 * SEC
    with pytest.raises(db.DbError, match="must be after start"):
        d.update_protection(a, end_90k=NOW_90K)
    assert d.get_protection(a).end_time_90k == NOW_90K + MIN  # unchanged
    assert d.conn.execute("select label, start_time_90k from protection where id = ?",
                          (a,)).fetchone() == ("renamed", NOW_90K + SEC)
    with pytest.raises(db.DbError, match="no protection with id 99"):
        d.delete_protection(99)
    # Deleting the sub stream deletes its protection; the camera's stays.
    d.delete_stream(sub)
    assert sorted(d.protections) == [a, b]
    d.delete_camera(t.camera_id)
    assert d.protections == {}
    assert d.conn.execute("select count(*) from protection").fetchone()[0] == 0


# -- a real disk filling up --------------------------------------------------------------

def test_a_protected_range_survives_a_small_ext4_disk_filling(tmp_path, small_ext4):
    """A byte limit (1 GiB) larger than the 64 MiB disk, through the real Writer and
    Syncer: the floor deletes the oldest recordings as the disk fills, recording goes on
    (no write waits for space), and the protected recordings 3-5 survive while their
    neighbours on both sides are deleted."""
    clocks = NoStallClocks(START_NS)
    t = make_testdb(tmp_path, clocks)
    dir_id, sid = loop_stream(t, small_ext4, {"freeSpaceFloorBytes": 8 << 20})
    syncer = inline(dirmod.Syncer(t.db, dir_id))
    w = writer.Writer(t.db, sid, InlineSyncer(syncer), shutdown=threading.Event(),
                      rotate_interval_sec=3)
    feed(w, t.vse_id, 30 * 3 * 8)  # recordings 0-7, ~3 s each
    rows = {r.recording_id: r for r in t.db.list_recordings_by_id(sid, 0, 8)}
    cam = t.db.streams[sid].camera_id
    # From inside recording 3 to inside recording 5.
    t.db.add_protection(cam, sid, rows[3].start_time_90k + SEC,
                        rows[5].start_time_90k + SEC, "incident", "cli")
    frames = 30 * 3 * 70  # ~70 recordings more, ~2.9 MB each: about 3 times the disk
    feed(w, t.vse_id, frames, first=30 * 3 * 8)
    w.close("end of test")
    pump(syncer)
    t.db.flush("test")
    left = ids(t, sid)
    assert left[:3] == [3, 4, 5]                 # kept
    assert 2 not in left and 6 not in left       # their neighbours went
    assert left[-1] >= 70 and left[3:] == list(range(left[3], left[-1] + 1))
    free, total = t.db.dirs[dir_id].dir.fs.free_space()
    assert (30 * 3 * 78) * 32 * 1024 > 3 * total and free >= 4 << 20
    assert t.db.protected_bytes(sid) == sum(retention.round_up(r.sample_file_bytes)
                                            for r in rows.values() if 3 <= r.recording_id <= 5)
    path = os.path.join(small_ext4, "sample")
    assert sorted(os.listdir(path)) == sorted(["meta"] + [dirmod.name_for(sid << 32 | i)
                                                         for i in left])
    t.db.close()
    out = io.StringIO()
    assert check.run(t.db_dir, check.Options(verify_hashes=True), out) == 0, out.getvalue()


# -- the API ---------------------------------------------------------------------------------

class Api:
    """A server on the test database, and requests to it as a logged-in user."""

    def __init__(self, t):
        import auth
        import nvr
        import web
        self.t = t
        self.srv = web.Server(t.db, nvr.Config("unused", None,
                                               [nvr.Bind(("ipv4", "127.0.0.1:0"))]))
        self.srv.start()
        self.port = self.srv.addresses[0][1]
        self.cookies = {}
        for name, perms in (("keeper", auth.Permissions(view_video=True,
                                                        protect_recordings=True)),
                            ("viewer", auth.Permissions(view_video=True))):
            uid = t.db.add_user(name, permissions=perms)
            cookie, session = self.srv.auth.make_session(uid, auth.Client(),
                                                         flags=auth.FLAG_HTTP_ONLY)
            self.cookies[name] = (cookie, session.csrf)

    def req(self, method, path, body=None, who="keeper", csrf=True):
        import http.client
        import json
        cookie, token = self.cookies[who]
        h = {"Cookie": f"s={cookie}"}
        data = None
        if body is not None:
            body = dict(body, csrf=token) if csrf else body
            data = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            c.request(method, path, body=data, headers=h)
            r = c.getresponse()
            text = r.read()
        finally:
            c.close()
        ctype = r.getheader("Content-Type") or ""
        return r.status, (json.loads(text) if "json" in ctype else text.decode())


@pytest.fixture
def protect_api(testdb):
    a = Api(testdb)
    yield a
    a.srv.stop()


def test_api_adds_lists_edits_and_removes_protections(protect_api, caplog):
    a, t = protect_api, protect_api.t
    import uuid as uuidlib
    cam = str(uuidlib.UUID(bytes=t.db.cameras[t.camera_id].uuid))
    minutes(t, 3)
    t.db.flush("test")
    size = size_of_one(t)
    with caplog.at_level(logging.INFO, logger="protectapi"):
        status, body = a.req("POST", "/api/protections", {
            "cameraUuid": cam, "streamType": "main", "startTime90k": NOW_90K,
            "endTime90k": NOW_90K + MIN + 1, "label": "break-in"})
    assert status == 201, body
    pid = body["id"]
    assert "protection 1 added by user 'keeper'" in caplog.text
    status, body = a.req("POST", "/api/protections", {
        "cameraUuid": cam, "startTime90k": NOW_90K + 2 * MIN, "endTime90k": NOW_90K + 3 * MIN,
        "label": ""})
    assert status == 201, body
    whole = body["id"]
    status, body = a.req("GET", f"/api/protections?cameraUuid={cam}&streamType=main",
                         who="viewer")
    assert status == 200
    assert body == {"protections": [
        {"id": pid, "cameraUuid": cam, "streamType": "main", "startTime90k": NOW_90K,
         "endTime90k": NOW_90K + MIN + 1, "label": "break-in", "createdBy": "keeper",
         "createdTime90k": NOW_90K, "updatedTime90k": NOW_90K, "protectedBytes": 2 * size},
        {"id": whole, "cameraUuid": cam, "streamType": None, "startTime90k": NOW_90K + 2 * MIN,
         "endTime90k": NOW_90K + 3 * MIN, "label": "", "createdBy": "keeper",
         "createdTime90k": NOW_90K, "updatedTime90k": NOW_90K, "protectedBytes": size}]}
    # Time filters: overlapping [start, end); times as the rest of the API takes them.
    status, body = a.req("GET", f"/api/protections?startTime90k={NOW_90K + MIN + 1}")
    assert [p["id"] for p in body["protections"]] == [whole]
    status, body = a.req("PATCH", f"/api/protections/{pid}",
                         {"label": "kept", "endTime90k": NOW_90K + 1})
    assert status == 200, body
    assert (body["label"], body["endTime90k"], body["protectedBytes"]) == \
        ("kept", NOW_90K + 1, size)
    assert t.db.get_protection(pid).label == "kept"
    status, body = a.req("DELETE", f"/api/protections/{pid}", {})
    assert (status, body) == (204, "")
    assert sorted(t.db.protections) == [whole]
    assert a.req("DELETE", f"/api/protections/{pid}", {}) == (
        404, f"no protection with id {pid}; `nvr.py protect list` shows them")


@pytest.mark.parametrize("body,status,message", [
    ({"startTime90k": NOW_90K, "endTime90k": NOW_90K + 1, "label": "x"}, 400,
     "cameraUuid is required"),
    ({"cameraUuid": "CAM", "startTime90k": NOW_90K, "endTime90k": NOW_90K, "label": "x"}, 400,
     "must be after start"),
    ({"cameraUuid": "CAM", "startTime90k": "today", "endTime90k": NOW_90K, "label": "x"}, 400,
     "startTime90k must be an integer (90 kHz units since 1970), not str"),
    ({"cameraUuid": "CAM", "startTime90k": NOW_90K, "endTime90k": NOW_90K + 1, "label": "\n"},
     400, "label has a control character or line break"),
    ({"cameraUuid": "CAM", "streamType": "sub", "startTime90k": NOW_90K,
      "endTime90k": NOW_90K + 1, "label": "x"}, 404, "camera CAM has no sub stream"),
    ({"cameraUuid": "CAM", "streamType": "other", "startTime90k": NOW_90K,
      "endTime90k": NOW_90K + 1, "label": "x"}, 400,
     "streamType must be null or one of main, sub, ext"),
    ({"cameraUuid": "00000000-0000-0000-0000-000000000000", "startTime90k": NOW_90K,
      "endTime90k": NOW_90K + 1, "label": "x"}, 404,
     "no camera 00000000-0000-0000-0000-000000000000"),
    ({"cameraUuid": "CAM", "startTime90k": NOW_90K, "endTime90k": NOW_90K + 1, "label": "x",
      "keep": True}, 400, "unknown key(s) 'keep' in the request body"),
])
def test_api_refuses_bad_protections_in_one_line(protect_api, body, status, message):
    import uuid as uuidlib
    t = protect_api.t
    cam = str(uuidlib.UUID(bytes=t.db.cameras[t.camera_id].uuid))
    body = {k: (cam if v == "CAM" else v) for k, v in body.items()}
    got, text = protect_api.req("POST", "/api/protections", body)
    assert got == status and message.replace("CAM", cam) in text and "\n" not in text, text
    assert t.db.protections == {}


def test_api_protections_need_protect_recordings_and_csrf(protect_api):
    a, t = protect_api, protect_api.t
    pid = t.db.add_protection(t.camera_id, None, NOW_90K, NOW_90K + 1, "x", "cli")
    for method, path, body in [("POST", "/api/protections", {}),
                               ("PATCH", f"/api/protections/{pid}", {"label": "y"}),
                               ("DELETE", f"/api/protections/{pid}", {})]:
        status, text = a.req(method, path, body, who="viewer")
        assert status == 403 and "protectRecordings" in text, (method, text)
        status, text = a.req(method, path, body, csrf=False)
        assert status == 400 and text.startswith("missing csrf"), (method, text)
    assert t.db.get_protection(pid).label == "x"


# -- the command line ------------------------------------------------------------------------

def test_cli_protect_add_list_edit_remove(tmp_path, clocks, capsys):
    import nvr
    t = make_testdb(tmp_path, clocks, zone="UTC")
    minutes(t, 3)
    t.db.flush("test")
    size = size_of_one(t)
    t.db.close()

    def run(*argv):
        status = nvr.main(["protect", *argv, "--db-dir", t.db_dir])
        out, err = capsys.readouterr()
        return status, out, err

    start = recording.format_time(NOW_90K, "UTC")
    status, out, err = run("add", "test-camera/main", "--start", start,
                           "--end", str(NOW_90K + MIN + 1), "--label", "break-in")
    assert status == 0, err
    assert out == (f"added protection 1\ttest-camera/main\t{start}\t"
                   f"{recording.format_time(NOW_90K + MIN + 1, 'UTC')}\t'break-in'\tby=cli\t"
                   f"protected={nvr.format_size(2 * size)}\n")
    assert run("add", "test-camera", "--start", "2026-01-01", "--end", "2026-01-02",
               "--label", "whole camera")[0] == 0
    status, out, _ = run("list")
    assert status == 0 and [line.split("\t")[:2] for line in out.splitlines()] == [
        ["2", "test-camera"], ["1", "test-camera/main"]]  # by start time
    status, out, _ = run("edit", "1", "--label", "renamed", "--end", str(NOW_90K + 1))
    assert status == 0 and "'renamed'" in out and f"protected={nvr.format_size(size)}" in out
    for argv, message in [
            (("edit", "1"), "nothing to change: give --start, --end and/or --label"),
            (("edit", "1", "--end", start), "must be after start"),
            (("add", "nope", "--start", start, "--end", start, "--label", "x"),
             "no camera named 'nope'"),
            (("add", "test-camera/sub", "--start", start, "--end", start, "--label", "x"),
             "camera test-camera has no 'sub' stream (it has main)"),
            (("add", "test-camera", "--start", "yesterday", "--end", start, "--label", "x"),
             "--start: invalid time 'yesterday'"),
            (("remove", "9"), "no protection with id 9")]:
        status, out, err = run(*argv)
        assert status == 1 and err.startswith("error: ") and message in err, (argv, err)
        assert len(err.splitlines()) == 1 and out == ""
    status, out, _ = run("remove", "1")
    assert status == 0 and out.startswith("removed protection 1 ('renamed')")
    d = db.Database.open_dir(t.db_dir, clocks, read_only=True)
    assert [(p.id, p.label, p.created_by) for p in d.list_protections()] == [
        (2, "whole camera", "cli")]
    d.close()


def test_cli_protect_while_locked_without_a_control_socket_says_what_to_do(
        tmp_path, clocks, capsys):
    """The database locked (as `run` holds it) and no control socket answering: one
    line saying to stop nvr or use the web UI or the API. (With a running nvr the command
    goes through it: test_control.py.)"""
    import nvr
    t = make_testdb(tmp_path, clocks)
    t.db.close()
    fd = db.lock_db_dir(t.db_dir, read_only=False)  # as `run` holds it
    try:
        status = nvr.main(["protect", "add", "test-camera", "--start", "1", "--end", "2",
                           "--label", "x", "--db-dir", t.db_dir])
    finally:
        os.close(fd)
    err = capsys.readouterr().err
    assert status == 1 and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: database directory {t.db_dir} is locked by another "
                          f"process, and its control socket {t.db_dir}/control.sock doesn't "
                          f"answer"), err
    assert err.rstrip().endswith("stop nvr to change the database this way, or use the web "
                                 "UI or the HTTP API (docs/api.md)"), err


# -- a real run: GStreamer camera, `nvr.py run`, a small disk ------------------------------------

def unix_request(path: str, method: str, url: str, body: dict | None = None):
    """One HTTP request over nvr's Unix socket bind; returns (status, parsed body)."""
    import http.client
    import json
    import socket

    class Conn(http.client.HTTPConnection):
        def connect(self):
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.settimeout(10)
            self.sock.connect(path)

    c = Conn("localhost")
    try:
        c.request(method, url, body=None if body is None else json.dumps(body).encode(),
                  headers={"Content-Type": "application/json"} if body is not None else {})
        r = c.getresponse()
        text = r.read()
    finally:
        c.close()
    return r.status, json.loads(text) if text.startswith(b"{") else text.decode()


def test_real_run_keeps_a_protected_range_while_a_small_disk_fills(
        tmp_path, small_ext4, rtsp_camera):
    """`nvr.py run` records the GStreamer camera (3 s rotation) into a loop-mounted ext4
    that a ballast file has nearly filled, with a byte limit (1 GiB) far over the disk.
    Recordings 1-2 are protected through the API (privileged Unix socket) while it runs.
    The free-space floor deletes the oldest recordings as the disk fills, recording goes
    on, and 1-2 survive while 0 and 3, 4 (their neighbours) are deleted."""
    import sqlite3
    from test_run import Nvr, nvr as nvr_cli, wait_for
    cwd = str(tmp_path)
    nvr_cli("init", cwd=cwd)
    sample = os.path.join(small_ext4, "sample")
    nvr_cli("config", "dir", "add", sample, "--free-space-floor", "2M", cwd=cwd)
    nvr_cli("config", "camera", "add", "cam", cwd=cwd)
    nvr_cli("config", "stream", "add", "cam", "main", "--url", rtsp_camera.url("main"),
            "--record", "--dir", "2", "--retain-bytes", "1G", "--flush-if-sec", "0", cwd=cwd)
    sock = os.path.join(cwd, "nvr.sock")
    with open(os.path.join(cwd, "nvr.toml"), "w") as f:
        f.write(f'dbDir = "nvr-data/db"\n[[binds]]\nunix = "{sock}"\n'
                f'ownUidIsPrivileged = true\n')
    # Leave the floor plus about 10 recordings' worth (1 Mbit/s: ~375 kB per 3 s).
    st = os.statvfs(small_ext4)
    ballast = (st.f_bavail * st.f_frsize) - (2 << 20) - (4 << 20)
    with open(os.path.join(small_ext4, "ballast"), "wb") as f:
        f.truncate(0)
        for _ in range(ballast // (1 << 20)):
            f.write(bytes(1 << 20))
        os.fsync(f.fileno())
    db_path = os.path.join(cwd, "nvr-data/db/db")

    def rows():
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        try:
            return conn.execute("select composite_id & 4294967295, start_time_90k from "
                                "recording where stream_id = 1 order by composite_id"
                                ).fetchall()
        finally:
            conn.close()

    n = Nvr(cwd)
    n.start()
    try:
        wait_for("recordings 0-2 committed", lambda: len(rows()) >= 3 and rows()[0][0] == 0)
        starts = dict(rows())
        status, body = unix_request(sock, "POST", "/api/protections", {
            "cameraUuid": next(iter(unix_request(sock, "GET", "/api/")[1]["cameras"]))["uuid"],
            "streamType": "main", "startTime90k": starts[1] + SEC // 2,
            "endTime90k": starts[2] + SEC // 2, "label": "keep 1-2"})
        assert status == 201, body
        wait_for("recordings 0, 3 and 4 deleted by the floor, recording going on",
                 lambda: (lambda ids: 0 not in ids and 3 not in ids and 4 not in ids
                          and ids[-1] >= 12)([r[0] for r in rows()]), timeout=120)
        status, body = unix_request(sock, "GET", "/api/protections")
        assert status == 200 and body["protections"][0]["createdBy"] == "cli"
        assert body["protections"][0]["protectedBytes"] > 0
    finally:
        assert n.stop() == 0, n.log_text()[-3000:]
    left = [r[0] for r in rows()]
    assert left[:2] == [1, 2], left
    log = n.log_text()
    assert "below the floor" in log and "Traceback" not in log, log[-3000:]
    assert "No space left on device" not in log, log[-3000:]  # the writer never waited
    out = io.StringIO()
    assert check.run(os.path.join(cwd, "nvr-data/db"), check.Options(), out) == 0, \
        out.getvalue()


def test_check_finds_a_hand_edited_protection(tmp_path, clocks):
    t = make_testdb(tmp_path, clocks)
    other_cam = t.db.add_camera("other", {})
    pid = t.db.add_protection(t.camera_id, t.stream_id, NOW_90K, NOW_90K + 1, "ok", "cli")
    t.db.flush("test")
    t.db.close()
    out = io.StringIO()
    assert check.run(t.db_dir, check.Options(), out) == 0, out.getvalue()
    import sqlite3
    conn = sqlite3.connect(os.path.join(t.db_dir, "db"))
    conn.execute("update protection set camera_id = ?, label = 'a' || char(10) || 'b'",
                 (other_cam,))
    conn.commit()
    conn.close()
    out = io.StringIO()
    assert check.run(t.db_dir, check.Options(), out) == 1
    assert (f"protection {pid}: stream {t.stream_id} is camera {t.camera_id}'s, not camera "
            f"{other_cam}'s; `nvr.py protect remove {pid}` and add it again") in out.getvalue()
    assert "label has a control character or line break" in out.getvalue()


def test_api_fuzzed_protection_bodies_never_500(protect_api):
    """Bodies that pass the CSRF check, so they reach the protections' own parsing:
    every answer is a 2xx or a 4xx, and afterwards the list is still strict JSON with
    only valid protections in it."""
    import json
    import uuid as uuidlib
    from hypothesis import HealthCheck, given, settings, strategies as st
    a, t = protect_api, protect_api.t
    cam = str(uuidlib.UUID(bytes=t.db.cameras[t.camera_id].uuid))
    pid = t.db.add_protection(t.camera_id, None, NOW_90K, NOW_90K + MIN, "fuzz", "cli")
    times = st.one_of(st.integers(min_value=-2 ** 70, max_value=2 ** 70),
                      st.sampled_from([NOW_90K, NOW_90K + 1, 0, -1, 2 ** 62, 2 ** 63]),
                      st.text(max_size=8), st.none(), st.booleans(), st.floats())
    value = st.one_of(times, st.text(max_size=300), st.lists(st.integers(), max_size=2))
    fields = {"cameraUuid": st.one_of(st.just(cam), value), "streamType": st.one_of(
        st.sampled_from(["main", "sub", "ext", None]), value), "startTime90k": times,
        "endTime90k": times, "label": st.one_of(st.text(max_size=300), value)}
    post = st.fixed_dictionaries({}, optional=fields)
    patch = st.fixed_dictionaries({}, optional={k: fields[k] for k in
                                                ("label", "startTime90k", "endTime90k")})
    cases = st.one_of(st.tuples(st.just("POST"), st.just("/api/protections"), post),
                      st.tuples(st.just("PATCH"), st.just(f"/api/protections/{pid}"), patch))

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(case=cases)
    def one(case):
        method, path, body = case
        try:
            json.dumps(body, allow_nan=False)
        except ValueError:
            return  # NaN isn't JSON: api's own tests cover refusing it
        status, text = a.req(method, path, body)
        assert status < 500, (method, body, status, text)

    one()
    status, body = a.req("GET", "/api/protections")
    assert status == 200
    for p in body["protections"]:
        assert 0 < p["startTime90k"] < p["endTime90k"] and len(p["label"]) <= 256
