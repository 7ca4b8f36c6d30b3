"""signals.py: the changes codec, assertions over time ranges, listing, day
summaries (across DST), flushing, garbage collection and request validation."""

import json
import logging
import random
import sqlite3
import uuid

import pytest

import db
import recording
import signals
from conftest import make_testdb

HOUR_90K = 3600 * 90_000
MIN_90K = 60 * 90_000

TYPE = uuid.UUID("ee66270f-d9c6-4819-8b33-9720d4cbca6b")
STATES = {1: {"name": "still", "color": "black"},
          2: {"name": "moving", "motion": True, "color": "red"}}

# Moonfire's signal.rs round_trip test (Pacific time).
START = 140067462600000  # 2019-04-26T11:59:00
NOW = 140067468000000    # 2019-04-26T12:00:00
SOON = 140067473400000   # 2019-04-26T12:01:00


def t90k(s: str) -> int:
    return recording.parse_time(s)


def body(ids, states, start, end, start_base="epoch", end_base="epoch"):
    return {"signalIds": ids, "states": states, "start": {"base": start_base, "rel90k": start},
            "end": {"base": end_base, "rel90k": end}}


def rows(d: db.Database) -> list[tuple[int, str]]:
    return [(t, c.hex(" ")) for t, c in d.conn.execute(
        "select time_90k, changes from signal_change order by time_90k")]


def changes(s: signals.Signals, start=-2**63, end=2**63 - 1) -> list[tuple[int, int, int]]:
    j = s.list_changes(start, end)
    return list(zip(j["times90k"], j["signalIds"], j["states"]))


def setup(d: db.Database, camera_id: int) -> signals.Signals:
    """Type TYPE and signals 1 ("a", direct on the camera) and 2 ("b")."""
    s = signals.Signals(d)
    s.add_signal_type(TYPE, STATES)
    assert s.add_signal("a", TYPE, {camera_id: "direct"}) == 1
    assert s.add_signal("b", TYPE, {}) == 2
    return s


@pytest.fixture
def sig(testdb):
    s = setup(testdb.db, testdb.camera_id)
    yield s
    s.close()


def reopen(t, clocks, **kw) -> tuple[db.Database, signals.Signals]:
    t.db.close()
    d = db.Database.open_dir(t.db_dir, clocks, **kw)
    return d, signals.Signals(d)


# -- the codec ----------------------------------------------------------------------------

def test_known_answer_from_the_schema():
    blob = bytes.fromhex("01 01 01 01 c4 01 02")
    assert signals.encode_changes([(1, 1), (3, 1), (200, 2)]) == blob
    assert signals.decode_changes(blob) == [(1, 1), (3, 1), (200, 2)]
    assert signals.encode_changes([]) == b"" and signals.decode_changes(b"") == []
    # Signal 0 is allowed first; a big delta takes 5 bytes.
    assert signals.encode_changes([(0, 0), (2**32 - 1, 15)]).hex() == "0000feffffff0f0f"
    assert signals.decode_changes(bytes.fromhex("0000feffffff0f0f")) == [(0, 0), (2**32 - 1, 15)]


@pytest.mark.parametrize("hex_,message", [
    ("01", "truncated inside a varint at byte 1 (1 bytes)"),
    ("01 01 01 81", "truncated inside a varint at byte 3 (4 bytes)"),
    ("ff ff ff ff ff 01 01", "varint at byte 0 is longer than 5 bytes"),
    ("ff ff ff ff 1f 01", "varint at byte 0 exceeds 32 bits"),
    ("01 80 80 04", "signal 1: state 65536 at byte 1 exceeds 16 bits"),
    ("fe ff ff ff 0f 00 01 00", "signal id 4294967296 exceeds 32 bits"),
])
def test_decode_rejects_corrupt_blobs(hex_, message):
    with pytest.raises(signals.CorruptChanges) as e:
        signals.decode_changes(bytes.fromhex(hex_))
    assert str(e.value) == message


def test_encode_rejects_unordered_ids_and_big_states():
    with pytest.raises(ValueError, match="strictly increasing and non-negative; 3 comes after 3"):
        signals.encode_changes([(3, 1), (3, 2)])
    with pytest.raises(ValueError, match="state 65536 outside"):
        signals.encode_changes([(3, 65536)])


# -- updates and listing ------------------------------------------------------------------

def test_update_then_list_changes_like_moonfires_round_trip(sig, clocks):
    assert changes(sig) == []
    now = sig.update(body([1, 2], [2, 1], START, NOW))
    assert now == recording.to_90k_from_ns(clocks.realtime())
    expected = [(START, 1, 2), (START, 2, 1), (NOW, 1, 0), (NOW, 2, 0)]
    assert changes(sig) == expected
    assert changes(sig, 2**63 - 1, -2**63) == []  # end before start: nothing
    # A range inside [START, NOW): the state just after the last point before it.
    assert changes(sig, START + 1, NOW) == [(START, 1, 2), (START, 2, 1)]
    assert changes(sig, START + 1, NOW + 1) == [(START, 1, 2), (START, 2, 1),
                                                 (NOW, 1, 0), (NOW, 2, 0)]
    # The start is inclusive, the end exclusive; after NOW all states are 0.
    assert changes(sig, START, START) == []
    assert changes(sig, START, START + 1) == [(START, 1, 2), (START, 2, 1)]
    assert changes(sig, NOW + 1, SOON) == []
    assert sig.signals[1].days == {"2019-04-26": [0, NOW - START]}
    assert sig.signals[2].days == {"2019-04-26": [NOW - START]}


def test_prior_state_is_every_signal_at_the_last_point_before_start(sig):
    sig.update(body([1], [2], START, SOON))
    sig.update(body([2], [1], NOW, NOW + 10))
    # The last point before NOW + 20 is NOW + 10, after which only signal 1 is set.
    assert changes(sig, NOW + 20, SOON + 1) == [(NOW + 10, 1, 2), (SOON, 1, 0)]
    assert changes(sig, NOW + 5, NOW + 6) == [(NOW, 1, 2), (NOW, 2, 1)]


def test_now_base_is_relative_to_the_clock(sig, clocks):
    now = recording.to_90k_from_ns(clocks.realtime())
    assert sig.update(body([1], [1], -MIN_90K, MIN_90K, "now", "now")) == now
    assert changes(sig) == [(now - MIN_90K, 1, 1), (now + MIN_90K, 1, 0)]


def test_empty_range_changes_nothing(sig):
    sig.update(body([1], [1], START, START))
    assert changes(sig) == [] and not sig._dirty


def points(s: signals.Signals) -> dict[int, dict[int, int]]:
    return {t: dict(s._points[t]) for t in s._times}


@pytest.mark.parametrize("updates,expected", [
    # Adjacent ranges in one state merge: the change back at 10 goes.
    ([(0, 10, 1), (10, 20, 1)], {0: {1: 1}, 20: {1: 0}}),
    ([(10, 20, 1), (0, 10, 1)], {0: {1: 1}, 20: {1: 0}}),
    # Overlapping: the later end wins, still one run.
    ([(0, 10, 1), (5, 15, 1)], {0: {1: 1}, 15: {1: 0}}),
    ([(5, 15, 1), (0, 10, 1)], {0: {1: 1}, 15: {1: 0}}),
    # Asserting the same state inside a run changes nothing.
    ([(0, 10, 1), (3, 6, 1)], {0: {1: 1}, 10: {1: 0}}),
    # Another state inside a run splits it, and the run resumes after.
    ([(0, 10, 1), (3, 6, 2)], {0: {1: 1}, 3: {1: 2}, 6: {1: 1}, 10: {1: 0}}),
    # A range covering earlier changes replaces them all.
    ([(0, 10, 1), (3, 6, 2), (0, 10, 2)], {0: {1: 2}, 10: {1: 0}}),
    ([(2, 4, 1), (6, 8, 2), (0, 10, 1)], {0: {1: 1}, 10: {1: 0}}),
    # Unknown (0) erases; what follows the range is untouched.
    ([(0, 10, 1), (0, 5, 0)], {5: {1: 1}, 10: {1: 0}}),
    ([(0, 10, 1), (0, 10, 0)], {}),
    # An existing change at the end is kept, unless it now changes nothing.
    ([(0, 10, 1), (10, 20, 2), (5, 10, 2)], {0: {1: 1}, 5: {1: 2}, 20: {1: 0}}),
    ([(0, 10, 1), (10, 20, 2), (5, 10, 0)], {0: {1: 1}, 5: {1: 0}, 10: {1: 2}, 20: {1: 0}}),
    # A range ending inside a run returns to that run's state.
    ([(0, 20, 2), (-5, 5, 1)], {-5: {1: 1}, 5: {1: 2}, 20: {1: 0}}),
])
def test_overlapping_and_adjacent_updates_merge(sig, updates, expected):
    base = START
    for start, end, state in updates:
        sig.update(body([1], [state], base + start, base + end))
    assert points(sig) == {base + t: p for t, p in expected.items()}


def test_updates_of_one_signal_leave_the_others_alone(sig):
    sig.update(body([1, 2], [1, 2], START, START + 10))
    sig.update(body([2], [1], START + 5, START + 20))
    sig.update(body([1], [0], START, START + 10))
    assert points(sig) == {START: {2: 2}, START + 5: {2: 1}, START + 20: {2: 0}}


def naive_points(timeline: dict[int, list[int]], base: int, step: int) -> dict:
    out: dict[int, dict[int, int]] = {}
    for signal_id, states in timeline.items():
        prev = 0
        for k, s in enumerate(states + [0]):
            if s != prev:
                out.setdefault(base + k * step, {})[signal_id] = s
            prev = s
    return dict(sorted(out.items()))


def naive_days(states: list[int], base: int, step: int, zone) -> dict[str, list[int]]:
    days: dict[str, list[int]] = {}
    for k, s in enumerate(states):
        if s:
            key = recording.format_time(base + k * step, zone)[:10]
            v = days.setdefault(key, [])
            v.extend([0] * (s - len(v)))
            v[s - 1] += step
    return days


@pytest.mark.parametrize("seed,day,gc", [
    (1, "2026-03-07", False), (2, "2026-10-31", False), (3, "2026-03-07", True),
    (4, "2026-10-31", True), (5, "2026-03-07", True), (6, "2026-10-31", True)])
def test_random_updates_match_a_naive_model_and_survive_reopen(tmp_path, clocks, seed, day, gc):
    """Hour-sized ticks over three local days around a DST change; a per-tick
    array of states is the model for points, listing, day summaries and GC."""
    t = make_testdb(tmp_path, clocks)
    try:
        s = setup(t.db, t.camera_id)
        base, step, n = t90k(f"{day}T00:00:00-08:00" if day < "2026-03-08" else
                             f"{day}T00:00:00-07:00"), HOUR_90K, 3 * 24
        timeline = {1: [0] * n, 2: [0] * n}
        rng = random.Random(seed)
        for i in range(60):
            a, b = sorted(rng.sample(range(n + 1), 2))
            ids = sorted(rng.sample([1, 2], rng.randint(1, 2)))
            states = [rng.choice([0, 1, 2, 2]) for _ in ids]
            s.update(body(ids, states, base + a * step, base + b * step))
            for signal_id, state in zip(ids, states):
                timeline[signal_id][a:b] = [state] * (b - a)
            assert points(s) == naive_points(timeline, base, step), i
            if i % 20 == 19:
                t.db.flush("test")
        for signal_id in (1, 2):
            assert s.signals[signal_id].days == naive_days(timeline[signal_id], base, step,
                                                           t.db.zone), signal_id
        expect_list = [(tt, sid, st) for tt, p in naive_points(timeline, base, step).items()
                       for sid, st in sorted(p.items())]
        assert changes(s) == expect_list
        if gc:
            # Keep the newer half of the points: the model forgets what came before.
            assert len(s._times) >= 4
            excess = len(s._times) - len(s._times) // 2
            cut_tick = (s._times[excess] - base) // step
            s.max_signal_changes = len(s._times) // 2
            for states in timeline.values():
                states[:cut_tick] = [0] * cut_tick
            expect_list = [(tt, sid, st) for tt, p in naive_points(timeline, base, step).items()
                           for sid, st in sorted(p.items())]
        t.db.flush("test")
        if gc:
            assert len(s._times) <= s.max_signal_changes
            set_max_signal_changes(t.db, s.max_signal_changes)
        for signal_id in (1, 2):
            assert s.signals[signal_id].days == naive_days(timeline[signal_id], base, step,
                                                           t.db.zone), signal_id
        assert points(s) == naive_points(timeline, base, step)
        days = {i: dict(s.signals[i].days) for i in (1, 2)}
        d, s2 = reopen(t, clocks)
        try:
            assert points(s2) == naive_points(timeline, base, step)
            assert {i: s2.signals[i].days for i in (1, 2)} == days
            assert changes(s2) == expect_list
        finally:
            d.close()
    finally:
        recording.set_server_zone(None)


# -- day summaries ------------------------------------------------------------------------

def test_days_split_at_local_midnights_across_dst(sig, testdb):
    # Spring forward in Los Angeles: 2026-03-08 has 23 hours.
    start, end = t90k("2026-03-07T22:00:00-08:00"), t90k("2026-03-09T02:00:00-07:00")
    sig.update(body([1, 2], [2, 1], start, end))
    assert sig.signals[1].days == {"2026-03-07": [0, 2 * HOUR_90K],
                                   "2026-03-08": [0, 23 * HOUR_90K],
                                   "2026-03-09": [0, 2 * HOUR_90K]}
    api, _ = sig.api_json(days=True)
    assert api[1]["days"] == {
        "2026-03-07": {"startTime90k": t90k("2026-03-07T00:00:00-08:00"),
                       "endTime90k": t90k("2026-03-08T00:00:00-08:00"),
                       "states": [2 * HOUR_90K]},
        "2026-03-08": {"startTime90k": t90k("2026-03-08T00:00:00-08:00"),
                       "endTime90k": t90k("2026-03-09T00:00:00-07:00"),
                       "states": [23 * HOUR_90K]},
        "2026-03-09": {"startTime90k": t90k("2026-03-09T00:00:00-07:00"),
                       "endTime90k": t90k("2026-03-10T00:00:00-07:00"),
                       "states": [2 * HOUR_90K]}}
    # Fall back: 2026-11-01 has 25 hours. Part of it moves from state 2 to 1.
    start, end = t90k("2026-10-31T12:00:00-07:00"), t90k("2026-11-02T00:00:00-08:00")
    sig.update(body([1], [2], start, end))
    sig.update(body([1], [1], t90k("2026-11-01T00:00:00-07:00"),
                    t90k("2026-11-01T02:00:00-08:00")))
    assert sig.signals[1].days["2026-10-31"] == [0, 12 * HOUR_90K]
    assert sig.signals[1].days["2026-11-01"] == [3 * HOUR_90K, 22 * HOUR_90K]
    assert "2026-11-02" not in sig.signals[1].days
    # Erasing a whole day removes it.
    sig.update(body([1], [0], t90k("2026-11-01T00:00:00-07:00"),
                    t90k("2026-11-02T00:00:00-08:00")))
    assert sig.signals[1].days == {"2026-03-07": [0, 2 * HOUR_90K],
                                   "2026-03-08": [0, 23 * HOUR_90K],
                                   "2026-03-09": [0, 2 * HOUR_90K],
                                   "2026-10-31": [0, 12 * HOUR_90K]}


# -- GET /api/ ----------------------------------------------------------------------------

def test_api_json(sig, testdb):
    sig.update(body([1], [2], START, NOW))
    camera_uuid = str(uuid.UUID(bytes=testdb.db.cameras[testdb.camera_id].uuid))
    s, types = sig.api_json(days=False)
    assert s == [
        {"id": 1, "uuid": str(uuid.UUID(bytes=sig.signals[1].uuid)), "type": str(TYPE),
         "shortName": "a", "cameras": {camera_uuid: "direct"}},
        {"id": 2, "uuid": str(uuid.UUID(bytes=sig.signals[2].uuid)), "type": str(TYPE),
         "shortName": "b", "cameras": {}}]
    assert types == [{"uuid": str(TYPE), "states": [
        {"value": 1, "name": "still", "color": "black"},
        {"value": 2, "name": "moving", "motion": True, "color": "red"}]}]
    s, _ = sig.api_json(days=True)
    assert s[0]["days"] == {"2019-04-26": {
        "startTime90k": t90k("2019-04-26T00:00:00-07:00"),
        "endTime90k": t90k("2019-04-27T00:00:00-07:00"), "states": [0, NOW - START]}}
    assert s[1]["days"] == {}
    json.dumps(s)  # plain JSON types only


def test_stored_configs(sig, testdb):
    c = testdb.db.conn
    assert c.execute("select config from signal_type").fetchall() == [(
        '{"values":{"1":{"color":"black","name":"still"},'
        '"2":{"color":"red","motion":true,"name":"moving"}}}',)]
    assert c.execute("select id, config from signal order by id").fetchall() == [
        (1, f'{{"cameraAssociations":{{"{testdb.camera_id}":"direct"}},"shortName":"a"}}'),
        (2, '{"shortName":"b"}')]
    assert c.execute("select type_uuid from signal").fetchall() == [(TYPE.bytes,)] * 2


# -- flushing -----------------------------------------------------------------------------

def test_persistence_writes_only_dirty_points(testdb, clocks, sig):
    t = testdb
    sig.update(body([1, 2], [2, 1], START, NOW))
    assert rows(t.db) == []  # not until the flush
    t.db.flush("test")
    assert rows(t.db) == [(START, "01 02 00 01"), (NOW, "01 00 00 00")]
    statements = []
    t.db.conn.set_trace_callback(statements.append)
    t.db.flush("nothing new")
    # The first flush after a write reads its rows back (it can't see its own commit).
    assert [x for x in statements if "signal_change" in x and "select" not in x] == []
    statements.clear()
    sig.update(body([2], [2], NOW, SOON))  # NOW changes, SOON is new; START is untouched
    t.db.flush("test")
    t.db.conn.set_trace_callback(None)
    written = sorted(x for x in statements if "into signal_change" in x)
    assert written == [f"insert or replace into signal_change (time_90k, changes) values "
                       f"({NOW}, x'01000002')",
                       f"insert or replace into signal_change (time_90k, changes) values "
                       f"({SOON}, x'0200')"]
    assert rows(t.db) == [(START, "01 02 00 01"), (NOW, "01 00 00 02"), (SOON, "02 00")]
    sig.update(body([1, 2], [0, 0], START, SOON))  # erases everything
    t.db.flush("test")
    assert rows(t.db) == []
    sig.update(body([1, 2], [2, 1], START, NOW))
    sig.update(body([2], [2], NOW, SOON))
    t.db.flush("test")
    expected = changes(sig)
    days = {i: dict(sig.signals[i].days) for i in (1, 2)}
    d, s = reopen(t, clocks)
    try:
        assert changes(s) == expected
        assert {i: s.signals[i].days for i in (1, 2)} == days
        assert s.api_json(True) == sig.api_json(True)
    finally:
        d.close()


def test_a_failed_flush_is_written_by_the_next(testdb, sig):
    t = testdb
    sig.update(body([1], [1], START, NOW))

    def broken(conn):
        raise sqlite3.OperationalError("disk I/O error")
    t.db.flush_hooks.append(broken)
    with pytest.raises(sqlite3.OperationalError):
        t.db.flush("test")
    assert rows(t.db) == []
    t.db.flush_hooks.remove(broken)
    t.db.flush("retry")
    assert rows(t.db) == [(START, "01 01"), (NOW, "01 00")]


def test_one_signals_per_database_and_close_unregisters_the_hook(testdb):
    s = signals.Signals(testdb.db)
    assert s._flush in testdb.db.flush_hooks
    with pytest.raises(db.DbError, match="signals are already loaded for this database"):
        signals.Signals(testdb.db)
    s.close()
    assert s._flush not in testdb.db.flush_hooks
    signals.Signals(testdb.db).close()


def set_max_signal_changes(d: db.Database, n) -> None:
    with d.locked(), db.transaction(d.conn):
        d.conn.execute("update meta set config = ?", (json.dumps({"maxSignalChanges": n}),))


def test_gc_like_moonfires_round_trip(tmp_path, clocks, caplog):
    t = make_testdb(tmp_path, clocks)
    try:
        set_max_signal_changes(t.db, 2)
        s = setup(t.db, t.camera_id)
        assert s.max_signal_changes == 2
        s.update(body([1, 2], [2, 1], START, NOW))
        t.db.flush("test")
        s.update(body([1, 2], [1, 2], NOW, SOON))
        # Three points in RAM until the flush collects the oldest.
        assert len(s._times) == 3
        with caplog.at_level(logging.INFO):
            t.db.flush("test")
        assert "garbage-collected beyond maxSignalChanges 2" in caplog.text
        expected = [(NOW, 1, 1), (NOW, 2, 2), (SOON, 1, 0), (SOON, 2, 0)]
        assert changes(s) == expected
        assert rows(t.db) == [(NOW, "01 01 00 02"), (SOON, "01 00 00 00")]
        assert s.signals[1].days == {"2019-04-26": [SOON - NOW]}
        assert s.signals[2].days == {"2019-04-26": [0, SOON - NOW]}
        d, s2 = reopen(t, clocks)
        try:
            assert changes(s2) == expected
            assert s2.signals[1].days == s.signals[1].days
        finally:
            d.close()
    finally:
        recording.set_server_zone(None)


def test_gc_carries_states_into_the_first_point_kept(testdb, sig):
    t = testdb
    set_max_signal_changes(t.db, 2)
    sig.max_signal_changes = 2
    sig.update(body([1], [1], START, START + 100))
    sig.update(body([2], [2], START + 10, START + 20))
    assert len(sig._times) == 4
    t.db.flush("test")
    # START and START + 10 go; START + 20 now sets signal 1, and signal 2's
    # change to 0 there, from 0, is gone.
    assert changes(sig) == [(START + 20, 1, 1), (START + 100, 1, 0)]
    assert rows(t.db) == [(START + 20, "01 01"), (START + 100, "01 00")]
    assert sig.signals[1].days == {"2019-04-26": [80]}
    assert sig.signals[2].days == {}
    sig.max_signal_changes = 0
    t.db.flush("test")
    assert changes(sig) == [] and rows(t.db) == []
    assert sig.signals[1].days == {}


def test_no_limit_keeps_everything(testdb, sig):
    assert sig.max_signal_changes is None  # Moonfire's default: unlimited
    for i in range(50):
        sig.update(body([1], [1 + i % 2], START + 2 * i, START + 2 * i + 1))
    testdb.db.flush("test")
    assert len(rows(testdb.db)) == 100


# -- loading ------------------------------------------------------------------------------

@pytest.mark.parametrize("sql,message", [
    (f"insert into signal_change values ({START}, X'01')",
     rf"signal_change row at {START} \(2019-04-26T11:59:00:00000-07:00\) is corrupt: "
     r"truncated inside a varint at byte 1 \(1 bytes\); delete it with `nvr.py sql`"),
    (f"insert into signal_change values ({START}, X'0701'), ({NOW}, X'0700')",
     rf"signal_change row at {START} \(.*\) names signal 7, which does not exist"),
    (f"insert into signal_change values ({START}, X'0101')",
     rf"signal 1 stays in state 1 after its last change at {START} \(.*\); every asserted "
     r"state must end"),
    ("update meta set config = '{\"maxSignalChanges\": -1}'",
     r"meta config maxSignalChanges is -1, not a non-negative integer"),
    ("update signal_type set config = '{\"values\": {\"16\": {\"name\": \"x\"}}}'",
     r"signal type ee66270f-d9c6-4819-8b33-9720d4cbca6b defines value '16', outside 1..15"),
])
def test_load_rejects_inconsistent_data(testdb, clocks, sig, sql, message):
    with testdb.db.locked(), db.transaction(testdb.db.conn):
        testdb.db.conn.execute(sql)
    sig.close()
    with pytest.raises(db.DbError, match=message):
        signals.Signals(testdb.db)


def test_load_drops_empty_rows_at_the_next_flush(testdb, sig):
    with testdb.db.locked(), db.transaction(testdb.db.conn):
        testdb.db.conn.execute(f"insert into signal_change values ({START}, X'')")
    sig.close()
    s = signals.Signals(testdb.db)
    assert changes(s) == []
    testdb.db.flush("test")
    assert rows(testdb.db) == []


def test_read_only_database_loads_but_refuses_updates(testdb, clocks, sig):
    sig.update(body([1], [1], START, NOW))
    testdb.db.flush("test")
    d, s = reopen(testdb, clocks, read_only=True)
    try:
        assert changes(s) == [(START, 1, 1), (NOW, 1, 0)]
        with pytest.raises(signals.SignalsError, match="^the database is open read-only; "
                                                       "signals can't be updated$"):
            s.update(body([1], [2], START, NOW))
        with pytest.raises(db.DbError, match="can't add a signal type in read-only mode"):
            s.add_signal_type(uuid.uuid4(), {})
        with pytest.raises(db.DbError, match="can't add a signal in read-only mode"):
            s.add_signal("c", TYPE, {})
    finally:
        d.close()


# -- validation ---------------------------------------------------------------------------

GOOD = body([1, 2], [1, 2], START, NOW)


def with_(**kw):
    b = json.loads(json.dumps(GOOD))
    for k, v in kw.items():
        if "." in k:
            outer, inner = k.split(".")
            if v is KeyError:
                del b[outer][inner]
            else:
                b[outer][inner] = v
        elif v is KeyError:
            del b[k]
        else:
            b[k] = v
    return b


@pytest.mark.parametrize("b,message", [
    ([1], "the request body must be a JSON object"),
    (with_(signalId=[1]), "unknown key 'signalId' in the request body; expected signalIds, "
                          "states, start, end (and csrf)"),
    (with_(signalIds=KeyError), "missing key 'signalIds' in the request body"),
    (with_(states=KeyError), "missing key 'states' in the request body"),
    (with_(start=KeyError), "missing key 'start' in the request body"),
    (with_(end=KeyError), "missing key 'end' in the request body"),
    (with_(signalIds=1), "signalIds must be a list of integers"),
    (with_(signalIds=[1, "2"]), "signalIds must be a list of integers"),
    (with_(signalIds=[1, True]), "signalIds must be a list of integers"),
    (with_(states=[1, 2.0]), "states must be a list of integers"),
    (with_(states=None), "states must be a list of integers"),
    (with_(states=[1]), "signalIds and states must have the same length, not 2 and 1"),
    (with_(signalIds=[2, 1]), "signalIds must be strictly increasing; signalIds[1] = 1 "
                              "follows 2"),
    (with_(signalIds=[1, 1]), "signalIds must be strictly increasing; signalIds[1] = 1 "
                              "follows 1"),
    (with_(states=[1, 16]), "states[1]: 16 is outside 0..15"),
    (with_(states=[-1, 1]), "states[0]: -1 is outside 0..15"),
    (with_(signalIds=[1, 3]), "signalIds[1]: unknown signal 3"),
    (with_(signalIds=[-1, 1]), "signalIds[0]: unknown signal -1"),
    (with_(states=[1, 3]), "states[1]: signal 2 has no state 3 (its type defines 0, 1, 2)"),
    (with_(start=5), 'start must be an object {"base": "epoch" | "now", "rel90k": integer}'),
    (with_(end=[]), 'end must be an object {"base": "epoch" | "now", "rel90k": integer}'),
    (with_(**{"start.bse": "now"}), "unknown key 'bse' in start; expected base, rel90k"),
    (with_(**{"start.base": KeyError}), "missing key 'base' in start"),
    (with_(**{"end.rel90k": KeyError}), "missing key 'rel90k' in end"),
    (with_(**{"end.base": "Now"}), "end.base must be \"epoch\" or \"now\", not 'Now'"),
    (with_(**{"start.rel90k": "1"}), "start.rel90k must be an integer"),
    (with_(**{"start.rel90k": 1.5}), "start.rel90k must be an integer"),
    (with_(**{"start.rel90k": -1}), f"start: time -1 is outside 0..{2**53} "
                                    f"(90 kHz ticks since 1970)"),
    (with_(**{"end.rel90k": 2**53}), f"end: time {2**53} is outside 0..{2**53} "
                                     f"(90 kHz ticks since 1970)"),
    (with_(**{"end.rel90k": START - 1}), f"end ({START - 1}) is before start ({START})"),
])
def test_every_validation_error(sig, b, message):
    with pytest.raises(signals.SignalsError) as e:
        sig.update(b)
    assert str(e.value) == message
    assert "\n" not in str(e.value)
    assert changes(sig) == [] and not sig._dirty


def test_csrf_is_ignored_and_unknown_state_zero_is_always_allowed(sig):
    sig.update(dict(body([1], [1], START, NOW), csrf="x"))
    sig.update(body([1], [0], START, NOW))
    assert changes(sig) == []


def test_signal_of_a_missing_type_accepts_only_unknown(testdb, sig):
    c = testdb.db.conn
    c.execute("pragma foreign_keys = off")  # Moonfire doesn't require a type row either
    with testdb.db.locked(), db.transaction(c):
        c.execute("update signal set type_uuid = ? where id = 2", (uuid.uuid4().bytes,))
    c.execute("pragma foreign_keys = on")
    sig.close()
    s = signals.Signals(testdb.db)
    with pytest.raises(signals.SignalsError, match=r"no state 1 \(its type defines 0\)"):
        s.update(body([2], [1], START, NOW))
    s.update(body([2], [0], START, NOW))
    s.close()


@pytest.mark.parametrize("call,message", [
    (lambda s, c: s.add_signal_type(TYPE, {}),
     f"uuid: signal type {TYPE} already exists"),
    (lambda s, c: s.add_signal_type("nope", {}), "uuid: 'nope' is not a uuid"),
    (lambda s, c: s.add_signal_type(uuid.uuid4(), {0: {"name": "x"}}),
     "states: value 0 is outside 1..15 (0 is always unknown)"),
    (lambda s, c: s.add_signal_type(uuid.uuid4(), {1: {"color": "x"}}),
     "states[1] must be an object with a string name"),
    (lambda s, c: s.add_signal("a", TYPE, {}), "short_name: a signal named 'a' already exists"),
    (lambda s, c: s.add_signal("c", uuid.UUID(int=1), {}),
     "type_uuid: no signal type 00000000-0000-0000-0000-000000000001"),
    (lambda s, c: s.add_signal("c", TYPE, {99: "direct"}), "cameras: no camera with id 99"),
    (lambda s, c: s.add_signal("c", TYPE, {c: "both"}),
     "cameras[1]: association must be \"direct\" or \"indirect\", not 'both'"),
])
def test_helpers_validate(testdb, sig, call, message):
    with pytest.raises(signals.SignalsError) as e:
        call(sig, testdb.camera_id)
    assert str(e.value) == message
    assert len(sig.signals) == 2 and len(sig.types) == 1


def test_helpers_accept_uuid_strings_and_bytes(sig):
    u = sig.add_signal_type(str(uuid.UUID(int=5)), {3: {"name": "armed", "extra": 1}})
    assert u == uuid.UUID(int=5).bytes
    assert sig.types[u].config == {"values": {"3": {"name": "armed", "extra": 1}}}
    assert sig.types[u].valid_states == 0b1001
    assert sig.add_signal("c", u, {}) == 3
    sig.update(body([3], [3], START, NOW))
    assert changes(sig) == [(START, 3, 3), (NOW, 3, 0)]
