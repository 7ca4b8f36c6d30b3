"""db.py "Loading totals": what start-up sums by SQLite, chunk by chunk, and what flushes
keep incrementally, always equal what the old start-up computed from every row.

The reference (`reference`) is the old start-up itself: every committed row, one by one,
through `DayBounds.add`, in the server's zone. The property test runs random recordings
(around midnights and the DST changes of zones whose days are 23 and 25 hours long, and
one whose midnight doesn't exist on the day clocks go forward), adds, flushes, retention
deletions by age and by the free-space floor, restarts, and loader steps in any order,
and after every operation compares each stream's totals and days with the reference over
exactly the recordings the totals claim to count (those starting at or after
`totals_from_90k`): so a flush that counted a recording the loader also counts, or one
neither counts, shows at once.
"""

import datetime
import logging
import os
import shutil
import tempfile
import zoneinfo

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import clock
import db
import recording
import retention
from conftest import START_NS, make_testdb

HOUR_90K = 3600 * 90_000
MIN_90K = 60 * 90_000
DAY_90K = 24 * HOUR_90K


def t90k(s: str) -> int:
    return recording.parse_time(s)


def reference(d: db.Database, s: db.Stream) -> dict:
    """The old start-up's full recompute, over the recordings `s`'s totals count."""
    days: dict[str, db.Day] = {}
    out = {"duration_90k": 0, "sample_file_bytes": 0, "fs_bytes": 0, "range_90k": None}
    bounds = db.DayBounds(d.zone)
    for start, wall, nbytes in d.conn.execute(
            "select start_time_90k, wall_duration_90k, sample_file_bytes from recording "
            "where stream_id = ? order by start_time_90k", (s.id,)):
        r = out["range_90k"]
        out["range_90k"] = ((start, start + wall) if r is None
                            else (min(r[0], start), max(r[1], start + wall)))
        if s.totals_from_90k is not None and start < s.totals_from_90k:
            continue
        out["duration_90k"] += wall
        out["sample_file_bytes"] += nbytes
        out["fs_bytes"] += retention.round_up(nbytes)
        bounds.add(days, start, wall, 1)
    out["days"] = {k: (v.recordings, v.duration_90k) for k, v in days.items()}
    return out


def state(s: db.Stream) -> dict:
    return {"duration_90k": s.duration_90k, "sample_file_bytes": s.sample_file_bytes,
            "fs_bytes": s.fs_bytes, "range_90k": s.range_90k,
            "days": {k: (v.recordings, v.duration_90k) for k, v in s.days.items()}}


def assert_matches(d: db.Database, what: str) -> None:
    for s in d.streams.values():
        assert state(s) == reference(d, s), f"stream {s.id} after {what}"


# Zones: Los Angeles (23 and 25 hour days, changes at 02:00) and Havana (changes at
# midnight: 2026-03-08 starts at 01:00, and 2026-11-01's midnight happens twice).
ZONES = {"America/Los_Angeles": ["2026-03-08", "2026-11-01"],
         "America/Havana": ["2026-03-08", "2026-11-01"]}


@st.composite
def start_times(draw, zone: str) -> int:
    """Near a DST change's midnights (either side, within minutes) or anywhere in the
    days around it."""
    day = datetime.date.fromisoformat(draw(st.sampled_from(ZONES[zone])))
    day += datetime.timedelta(days=draw(st.integers(-2, 2)))
    base = int(datetime.datetime(day.year, day.month, day.day,
                                 tzinfo=zoneinfo.ZoneInfo(zone)).timestamp()) * 90_000
    where = draw(st.sampled_from(["before", "near", "anywhere"]))
    if where == "before":  # within a long recording's length before midnight
        return base - draw(st.integers(1, 4 * MIN_90K))
    if where == "near":
        return base + draw(st.integers(-10 * MIN_90K, 10 * MIN_90K))
    return base + draw(st.integers(0, DAY_90K))


@st.composite
def scenarios(draw):
    zone = draw(st.sampled_from(sorted(ZONES)))
    op = st.one_of(
        st.tuples(st.just("add"), st.integers(0, 1), start_times(zone),
                  st.integers(1, 30),
                  st.one_of(st.integers(1, 890_000), st.sampled_from([300_000, 890_000])),
                  st.booleans()),
        st.just(("flush",)),
        st.tuples(st.just("age"), start_times(zone)),
        st.tuples(st.just("floor"), st.integers(1, 3)),
        st.just(("restart",)),
        st.tuples(st.just("step"), st.integers(1, 3)),
        st.tuples(st.just("bytes"), st.integers(0, 1), st.integers(0, 10)))
    return zone, draw(st.lists(op, min_size=1, max_size=40))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_totals_equal_a_full_recompute_through_adds_deletions_restarts_and_loading(scenario):
    zone, ops = scenario
    tmp = tempfile.mkdtemp(prefix="nvr-test-totals-")
    clocks = clock.SimulatedClocks(START_NS)
    t = make_testdb(_Path(tmp), clocks, zone=zone)
    try:
        other = t.db.add_stream(t.camera_id, "sub", dict(t.db.streams[t.stream_id].config),
                                t.dir_id)
        streams = [t.stream_id, other]
        for op in ops:
            d = t.db
            if op[0] == "add":
                _, i, start, frames, dur, trailing_zero = op
                t.add_recording(start_90k=start, frames=frames, frame_duration_90k=dur,
                                trailing_zero=trailing_zero, stream_id=streams[i])
                d.flush("add")
            elif op[0] == "flush":
                d.flush("test")
            elif op[0] == "age":
                now = recording.to_90k_from_ns(clocks.realtime())
                for sid in streams:
                    d.delete_oldest_recordings(sid, retain_days=(now - op[1]) / DAY_90K)
                d.flush("age")
            elif op[0] == "floor":
                total = 1 << 40
                floor = retention.floor_bytes(d.dirs[t.dir_id].config, total)
                d.enforce_free_space_floor(t.dir_id, floor - op[1] * 4096, total)
                d.flush("floor")
            elif op[0] == "bytes":  # a given byte limit: its stream's totals load now
                _, i, keep = op
                d.delete_oldest_recordings(streams[i], retain_bytes=keep * 100_000)
                assert d.streams[streams[i]].totals_from_90k is None
                d.flush("bytes")
            elif op[0] == "restart":
                d.flush("restart")
                d.close()
                t.db = db.Database.open_dir(t.db_dir, clocks, totals="later")
                t.db.open_sample_file_dirs()
            elif op[0] == "step":
                d.load_totals_step(max_days=op[1])
            assert_matches(t.db, op)
        while t.db.load_totals_step():
            assert_matches(t.db, "step")
        assert all(s.totals_from_90k is None for s in t.db.streams.values())
        assert_matches(t.db, "loading")
        # And the same as a fresh open that loads everything before returning.
        t.db.flush("end")
        loaded = {sid: state(s) for sid, s in t.db.streams.items()}
        t.db.close()
        t.db = db.Database.open_dir(t.db_dir, clocks)
        assert {sid: state(s) for sid, s in t.db.streams.items()} == loaded
    finally:
        if t.db._lock_fd is not None:
            t.db.close()
        recording.set_server_zone(None)
        shutil.rmtree(tmp, ignore_errors=True)


class _Path(str):
    """Enough of pathlib.Path for make_testdb (`tmp / "db"`)."""

    def __truediv__(self, name: str) -> "_Path":
        return _Path(os.path.join(self, name))


def test_loader_counts_a_recording_across_midnight_once(testdb):
    """A recording starting before the loader's boundary and ending after it: the chunk
    of its start day carries its tail into the next day, which the flush (counting only
    recordings after the boundary) never did."""
    t = testdb  # America/Los_Angeles
    start = t90k("2026-11-28T23:59:00-08:00")
    t.add_recording(start_90k=start, frames=20, frame_duration_90k=18_000)  # 4 s
    # 23:58:00 + 200 s - 20 ticks: 80 s less 20 ticks after midnight.
    t.add_recording(start_90k=start - MIN_90K, frames=20, frame_duration_90k=899_999)
    t.add_recording(start_90k=start + 2 * DAY_90K, frames=10, frame_duration_90k=9000)
    t.db.flush("test")
    t.db.close()
    t.db = db.Database.open_dir(t.db_dir, t.db.clocks, totals="later")
    s = t.db.streams[t.stream_id]
    assert s.range_90k == (start - MIN_90K, start + 2 * DAY_90K + 90_000)
    assert s.totals_from_90k == t90k("2026-12-01T00:00:00-08:00")
    assert (s.days, s.duration_90k, s.fs_bytes) == ({}, 0, 0)
    assert not t.db.totals_complete(t.stream_id)
    assert t.db.load_totals_step(max_days=1)  # 2026-11-30: the last recording
    assert {k: v.recordings for k, v in s.days.items()} == {"2026-11-30": 1}
    assert t.db.load_totals_step(max_days=2)  # 11-28 (11-29, where nothing starts, skipped)
    assert {k: (v.recordings, v.duration_90k) for k, v in s.days.items()} == {
        "2026-11-28": (2, 360_000 + 120 * 90_000),
        "2026-11-29": (1, 80 * 90_000 - 20),
        "2026-11-30": (1, 90_000)}
    assert t.db.totals_complete(t.stream_id)
    assert not t.db.load_totals_step()
    assert_matches(t.db, "loading")


def test_loader_skips_days_without_recordings(testdb):
    """A recording years before the rest (a clock set wrong once): the loader jumps to
    the day of the latest start below its boundary instead of walking every empty day."""
    t = testdb
    start = t90k("2026-11-29T10:00:00Z")
    t.add_recording(start_90k=start)
    t.add_recording(start_90k=start - 3650 * DAY_90K)
    t.add_recording(start_90k=start + 365 * DAY_90K)
    t.db.flush("test")
    t.db.close()
    t.db = db.Database.open_dir(t.db_dir, t.db.clocks, totals="later")
    steps = 0
    while t.db.load_totals_step(max_days=1):
        steps += 1
    assert steps == 3
    assert len(t.db.streams[t.stream_id].days) == 3
    assert_matches(t.db, "loading")


def test_background_totals_complete_and_the_byte_limit_waits_for_them(testdb, caplog):
    """`run`'s open: the loader thread finishes on its own; until a stream's totals are
    in, the syncer's retention (no limit given) leaves the byte limit alone rather than
    deciding from partial totals, which would keep too much (or, counted twice, delete
    too much)."""
    t = testdb
    start = t90k("2026-11-01T00:00:00-07:00")
    for i in range(6):
        t.add_recording(start_90k=start + i * DAY_90K, run_offset=0)
    t.db.flush("test")
    t.db.update_stream(t.stream_id, config=dict(t.db.streams[t.stream_id].config,
                                                retainBytes=3 * 32768))
    t.db.close()
    d = t.db = db.Database.open_dir(t.db_dir, t.db.clocks, totals="later")
    s = d.streams[t.stream_id]
    d.load_totals_step(max_days=1)
    assert s.fs_bytes == 32768 and s.totals_from_90k is not None
    assert d.delete_oldest_recordings(t.stream_id, extra_fs_bytes=1) == []  # waits
    # Asked with a limit (config's confirmation): loads that stream's totals first.
    assert len(d.delete_oldest_recordings(t.stream_id, extra_fs_bytes=1, dry_run=True)) == 4
    assert s.totals_from_90k is None and s.fs_bytes == 6 * 32768
    d.close()
    with caplog.at_level(logging.INFO, logger="db"):
        d = t.db = db.Database.open_dir(t.db_dir, t.db.clocks, totals="background")
        d._totals_thread.join(timeout=60)
    assert d.totals_complete(t.stream_id)
    assert d.streams[t.stream_id].fs_bytes == 6 * 32768
    assert_matches(d, "background")
    assert "loaded every stream's totals and day summaries" in caplog.text
    # Now the syncer's call applies the limit.
    assert len(d.delete_oldest_recordings(t.stream_id, extra_fs_bytes=1)) == 4


def test_close_stops_the_loader_thread(testdb):
    t = testdb
    start = t90k("2026-01-01T12:00:00Z")
    for i in range(3):
        t.add_recording(start_90k=start + i * 30 * DAY_90K)
    t.db.flush("test")
    t.db.close()
    d = t.db = db.Database.open_dir(t.db_dir, t.db.clocks, totals="background")
    thread = d._totals_thread
    d.close()
    assert not thread.is_alive()


def test_range_at_open_reads_two_index_ends(testdb):
    """The range comes from the index's ends; the last end is the longest of the
    recordings that start within 5 minutes of the last start."""
    t = testdb
    start = t90k("2026-11-29T10:00:00Z")
    t.add_recording(start_90k=start, frames=10, frame_duration_90k=2_600_000)  # 289 s
    t.add_recording(start_90k=start + 60 * 90_000, frames=10, frame_duration_90k=90_000)
    t.db.flush("test")
    t.db.close()
    t.db = db.Database.open_dir(t.db_dir, t.db.clocks, totals="later")
    assert t.db.streams[t.stream_id].range_90k == (start, start + 26_000_000)


def test_open_refuses_an_unknown_totals_mode(testdb):
    t = testdb
    t.db.close()
    with pytest.raises(ValueError, match="totals='soon'"):
        db.Database.open_dir(t.db_dir, t.db.clocks, totals="soon")
