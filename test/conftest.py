"""Shared fixtures: simulated clocks, a cheap password hasher, and `TestDb`.

`TestDb` (fixture `testdb`) is a real database in a temporary directory with
one sample file dir and one camera ("test-camera") whose main stream records
into it, like Moonfire's testutil. `add_recording` writes a sample file of
dummy bytes and adds a synced recording whose index describes it, the way
writer.py will, so tests of the database, retention and `check` have real
rows and files to work on.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import os
import re
import sys

import argon2
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import auth  # noqa: E402
import clock  # noqa: E402
import db  # noqa: E402
import dir as dirmod  # noqa: E402
import recording  # noqa: E402
from camera import make_rtsp_camera, rtsp_camera  # noqa: E402,F401

# 2026-11-29T12:00:00Z: any fixed instant works; this one is far from DST.
START_NS = 1_795_953_600 * 1_000_000_000

# A video sample entry whose bytes only have to be unique and long enough for
# the schema's check; mp4 tests use real ones.
DUMMY_VSE = b"\x00\x00\x00\x66avc1" + bytes(94)


@pytest.fixture(autouse=True)
def cheap_hasher():
    # argon2-cffi's profiles.CHEAPEST, spelled out: Debian 12's argon2-cffi 21.1 has
    # no `profiles` (nor `PasswordHasher.from_parameters`).
    auth.set_password_hasher(argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1,
                                                   hash_len=4, salt_len=8,
                                                   type=argon2.Type.ID))
    yield
    auth.set_password_hasher(auth.default_hasher())


@pytest.fixture
def clocks():
    return clock.SimulatedClocks(START_NS)


@dataclasses.dataclass
class TestDb:
    db: db.Database
    db_dir: str
    sample_dir: str
    dir_id: int
    camera_id: int
    stream_id: int
    vse_id: int

    def add_recording(self, *, start_90k: int, frames: int = 30, frame_duration_90k: int = 3000,
                      frame_bytes: int = 1000, key_every: int = 10, run_offset: int = 0,
                      trailing_zero: bool = False, end_reason: str | None = None,
                      stream_id: int | None = None, sync: bool = True) -> int:
        """Writes a sample file and adds a recording for it; returns its composite id."""
        stream_id = stream_id or self.stream_id
        enc = recording.SampleIndexEncoder()
        for i in range(frames):
            last = i == frames - 1
            enc.add_sample(0 if (last and trailing_zero) else frame_duration_90k,
                           frame_bytes + i, i % key_every == 0)
        data = bytes((i * 7) & 0xFF for i in range(enc.sample_file_bytes))
        s = self.db.streams[stream_id]
        r = db.RecordingToInsert(
            run_offset=run_offset, start_time_90k=start_90k,
            prev_media_duration_90k=s.cum_media_duration_90k, prev_runs=s.cum_runs,
            video_sample_entry_id=self.vse_id, video_index=bytes(enc.video_index),
            video_samples=enc.video_samples, video_sync_samples=enc.video_sync_samples,
            sample_file_bytes=enc.sample_file_bytes, wall_duration_90k=enc.media_duration_90k,
            media_duration_90k=enc.media_duration_90k,
            sample_file_blake2b=hashlib.blake2b(data, digest_size=32).digest(),
            flags=db.FLAG_TRAILING_ZERO if trailing_zero else 0, end_reason=end_reason)
        cid = self.db.add_recording(stream_id, r)
        path = os.path.join(self.db.dirs[s.sample_file_dir_id].path, dirmod.name_for(cid))
        with open(path, "xb") as f:
            f.write(data)
        if sync:
            self.db.mark_synced(cid)
        return cid


def make_testdb(tmp_path, clocks, zone: str = "America/Los_Angeles") -> TestDb:
    recording.set_server_zone(zone)
    db_dir = str(tmp_path / "db")
    sample_dir = str(tmp_path / "sample")
    db.init(db_dir, clocks)
    d = db.Database.open_dir(db_dir, clocks)
    dir_id = d.add_sample_file_dir(sample_dir)
    camera_id = d.add_camera("test-camera", {"description": "", "username": "",
                                             "password": ""})
    stream_id = d.add_stream(camera_id, "main", {
        "mode": "record", "url": "rtsp://127.0.0.1:8554/test", "rtspTransport": "tcp",
        "retainBytes": 1 << 30, "flushIfSec": 0}, dir_id)
    vse_id = d.insert_video_sample_entry(640, 360, "avc1.640028", DUMMY_VSE)
    return TestDb(d, db_dir, sample_dir, dir_id, camera_id, stream_id, vse_id)


@pytest.fixture
def testdb(tmp_path, clocks):
    t = make_testdb(tmp_path, clocks)
    yield t
    if t.db._lock_fd is not None:
        t.db.close()
    recording.set_server_zone(None)


# --- the skip policy, and what the test command counts -------------------------------------
#
# CI (test/run.py, which installs every dependency) runs every test: a skip there means a
# dependency broke (the GStreamer probe, Chromium, playwright, ffprobe...) and ~50 tests of
# recording, recovery, live view and the UI quietly stopped running. Under `--strict-skips`
# (test/run.py passes it) a skip fails the test instead, with its reason, unless it is in
# ALLOWED_SKIPS below; the allowed ones are listed with their reasons by `-rs`. Run pytest
# directly (without the option) on a box lacking, say, Chromium, and those tests skip as
# before, saying what to install.
#
# Tests of the test harness itself (the RTSP test camera, the fake file system, simulated
# clocks) are marked `harness`; test/run.py reports them apart from the tests of nvr.

# (node id glob, reason regex, why the skip is expected in CI). Every other skip in the
# suite is a missing dependency that test/run.py installs.
ALLOWED_SKIPS: list[tuple[str, str, str]] = [
    ("test/test_codec.py::*", r"PyAV < 11 has no av\.bitstream",
     "the debian run: Debian 12's PyAV 10 has no bitstream filters, so FFmpeg's own parse "
     "of the parameter sets (trace_headers) can't run there; the pypi run does it"),
    ("test/test_install.py::*", r"no PR_SET_MDWE",
     "a kernel older than 6.3 can't apply MemoryDenyWriteExecute's equivalent to a process"),
]


def pytest_addoption(parser):
    group = parser.getgroup("nvr", "nvr's test command (test/run.py)")
    group.addoption("--strict-skips", action="store_true",
                    help="fail a skipped test unless conftest.ALLOWED_SKIPS expects the skip")
    group.addoption("--summary-json", metavar="PATH",
                    help="write the counts of this run (nvr's tests and the harness's) there")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "harness: a test of the test harness (test camera, fakes), not of nvr")
    _run.__init__()


class _RunState:
    """What this session ran, for `--summary-json` (report hooks get no config)."""

    def __init__(self):
        self.harness: set[str] = set()      # node ids of harness tests
        self.outcomes: dict[str, str] = {}  # node id -> "passed" | "failed" | "skipped"
        self.collect_errors = 0
        self.unexpected_skips: list[tuple[str, str]] = []


_run = _RunState()


def pytest_collection_modifyitems(config, items):
    _run.harness.update(i.nodeid for i in items if i.get_closest_marker("harness"))


def _skip_reason(rep) -> str:
    lr = rep.longrepr
    if isinstance(lr, tuple) and len(lr) == 3:
        reason = lr[2]
    else:
        reason = str(lr)
    return reason.removeprefix("Skipped: ")


def allowed_skip(nodeid: str, reason: str) -> bool:
    return any(fnmatch.fnmatchcase(nodeid, glob) and re.search(pattern, reason)
               for glob, pattern, _why in ALLOWED_SKIPS)


def _enforce(config, rep) -> None:
    if (rep.skipped and not hasattr(rep, "wasxfail") and config.getoption("strict_skips")):
        reason = _skip_reason(rep)
        if not allowed_skip(rep.nodeid, reason):
            rep.outcome = "failed"
            rep.longrepr = (f"skipped, but CI runs every test (see conftest.ALLOWED_SKIPS): "
                            f"{reason}")
            _run.unexpected_skips.append((rep.nodeid, reason))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _enforce(item.config, outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _enforce(collector.config, outcome.get_result())


def pytest_runtest_logreport(report):
    outcomes = _run.outcomes
    was = outcomes.get(report.nodeid)
    if report.failed:
        outcomes[report.nodeid] = "failed"
    elif report.skipped and was != "failed":
        outcomes[report.nodeid] = "skipped"
    elif report.when == "call" and report.passed and was is None:
        outcomes[report.nodeid] = "passed"


def pytest_collectreport(report):
    if report.failed:
        _run.collect_errors += 1


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if config.getoption("strict_skips") and _run.unexpected_skips:
        terminalreporter.write_line(
            f"{len(_run.unexpected_skips)} unexpected skip(s) counted as failures "
            "(the skip policy: test/conftest.py)", red=True)


def pytest_sessionfinish(session, exitstatus):
    config = session.config
    path = config.getoption("summary_json")
    if not path:
        return
    counts = {g: {"passed": 0, "failed": 0, "skipped": 0} for g in ("nvr", "harness")}
    for nodeid, outcome in _run.outcomes.items():
        counts["harness" if nodeid in _run.harness else "nvr"][outcome] += 1
    counts["nvr"]["failed"] += _run.collect_errors
    with open(path, "w") as f:
        json.dump({"exitstatus": int(exitstatus), "counts": counts}, f)
