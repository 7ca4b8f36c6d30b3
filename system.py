"""How the running nvr is doing, for a person: `GET /api/system` and the System page.

This module gathers, when asked, facts that other modules already keep into one JSON
document (docs/api.md, "GET /api/system"); it writes nothing and keeps no state of its
own. ui/js/system.js shows the document and asks again every few seconds; api.py's
route decides who may read it (viewVideo, as /api/metrics).

What the document holds and where each fact comes from:
- `nowSec`, `startSec`, `uptimeSec`: now (Clocks.realtime) and when this run opened
  the database (`db.Database.opened_90k` / `opened_monotonic`: the uptime is monotonic,
  so a wall clock step doesn't change it).
- `versions`: nvr, Python, PyAV, FFmpeg (with its libraries), SQLite and argon2-cffi,
  the facts `nvr.py --version` prints (`versions()`; nvr.version_text formats them,
  with the install paths this document leaves out).
- `recording`: whether a recorder runs in this process (false for `run --read-only`
  and for servers started without one, as in most tests). `streams`: every stream of
  the database, each with recorder.py's status (`Recorder.status()`, the STATUS JSON of
  the shared interfaces: state, since when, the last frame, measured fps and bitrate,
  runs, the last error); without a recorder every stream is `off`.
- each stream's `expected` fps and bitrate, to set the measured ones against:
  the average of its recordings that started in the last `EXPECTED_WINDOW_SEC` (24 h),
  committed and not (`db.Database.recent_totals`): frames over media time, bytes over
  wall time. With no recordings in that window the frame rate is the one the SPS's VUI
  timing states (the newest recording's sample entry, `codec.parameters_from_sample_entry`),
  and the bitrate unknown. `fpsFrom` / `bitrateFrom` say which ("recordings", "sps",
  null); `spsFps` is the SPS's either way (many cameras state none; some state twice the
  frame rate: field rate).
- `dirs`: each sample file dir's bytes used (its streams' recordings, whole 4 KiB blocks,
  as retention counts them), the filesystem's total and free bytes (statvfs through
  dir.py's `Fs`, only for an open dir; a failing statvfs leaves them null, not the page),
  and the free-space floor (retention.py: effective bytes and the setting as the CLI
  says it).
- `lastFlush` / `lastFlushError`: db.py's `Database.last_flush` and `last_flush_error`
  (time, reason, duration; the error's line); `flushes` and `flushErrors` count them
  since start (metrics.py's counters).
- `process`: CPU seconds, RSS, threads, open files (`metrics.process_facts`).

Locks: the database lock, briefly, through db.py's methods (its in-memory state and one
aggregate query per stream over the `recording_cover` index); statvfs and /proc are read
outside it. The recorder's `status()` takes its own locks.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import sqlite3
import sys
import uuid as uuidlib

import clock
import codec
import metrics
import recording
import retention

logger = logging.getLogger(__name__)

# Expected fps and bitrate: the average of the recordings started this long ago or since.
EXPECTED_WINDOW_SEC = 24 * 3600

STREAM_TYPE_ORDER = {"main": 0, "sub": 1, "ext": 2}


# ---------------------------------------------------------------------------------------
# Versions

def ffmpeg_version(av) -> str:
    """FFmpeg's own version string ("5.1.6-0+deb12u1"): PyAV 12+ has it as
    `av.ffmpeg_version_info`; for older PyAV, ask the libavutil it loaded."""
    v = getattr(av, "ffmpeg_version_info", None)
    if v:
        return v
    try:
        import ctypes
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "/libavutil" in line}
        for path in sorted(paths):
            fn = ctypes.CDLL(path).av_version_info
            fn.restype = ctypes.c_char_p
            return fn().decode()
    except (OSError, AttributeError, UnicodeDecodeError):
        pass
    return "unknown"


@functools.cache
def versions(nvr_version: str) -> dict:
    """What nvr runs on (`nvr.py --version`, GET /api/system): fixed for the process's
    life, so worked out once."""
    import av
    try:
        argon2_version = importlib.metadata.version("argon2-cffi")
    except importlib.metadata.PackageNotFoundError:
        import argon2
        argon2_version = getattr(argon2, "__version__", "unknown")
    return {
        "nvr": nvr_version,
        "python": sys.version.split()[0],
        "pyav": av.__version__,
        "ffmpeg": ffmpeg_version(av),
        "ffmpegLibraries": {name: ".".join(map(str, v))
                            for name, v in sorted(av.library_versions.items())
                            if name in ("libavcodec", "libavformat", "libavutil")},
        "sqlite": sqlite3.sqlite_version,
        "argon2Cffi": argon2_version,
    }


# ---------------------------------------------------------------------------------------
# Streams

def off_status(since_sec: float | None) -> dict:
    """The STATUS of a stream nothing records (recorder.py's shape)."""
    return {"state": "off", "sinceSec": since_sec, "runStartSec": None,
            "lastFrameSec": None, "lastFrameAgeSec": None, "fps": None,
            "bitrateBps": None, "runs": 0, "lastError": None, "lastErrorSec": None}


def _statuses(server) -> dict[int, dict] | None:
    """The recorder's status of every stream, or None when no recorder runs here."""
    rec = getattr(server, "recorder", None)
    return None if rec is None else rec.status()


def _sps_fps(db, vse_id: int | None) -> float | None:
    e = db.video_sample_entries.get(vse_id) if vse_id is not None else None
    if e is None:
        return None
    try:
        p = codec.parameters_from_sample_entry(e.data)
    except codec.CodecError as err:
        logger.debug("sample entry %d: no frame rate (%s)", vse_id, err)
        return None
    return float(p.frame_rate) if p.frame_rate else None


def expected(db, stream_id: int, now_90k: int) -> dict:
    """The stream's `expected` fps and bitrate (see the module docstring)."""
    t = db.recent_totals(stream_id, now_90k - EXPECTED_WINDOW_SEC * recording.TIME_UNITS_PER_SEC)
    sps = _sps_fps(db, t.newest_video_sample_entry_id)
    fps = fps_from = bitrate = bitrate_from = None
    if t.media_duration_90k > 0 and t.video_samples:
        fps, fps_from = t.video_samples * recording.TIME_UNITS_PER_SEC / t.media_duration_90k, \
            "recordings"
    elif sps is not None:
        fps, fps_from = sps, "sps"
    if t.wall_duration_90k > 0:
        bitrate = t.sample_file_bytes * 8 * recording.TIME_UNITS_PER_SEC / t.wall_duration_90k
        bitrate_from = "recordings"
    return {"fps": fps, "fpsFrom": fps_from, "bitrateBps": bitrate,
            "bitrateFrom": bitrate_from, "spsFps": sps, "recordings": t.recordings,
            "recordingsSec": t.wall_duration_90k / recording.TIME_UNITS_PER_SEC}


def _streams(db, statuses: dict[int, dict] | None, start_sec: float, now_90k: int) -> list:
    with db.locked("system"):
        rows = []
        for s in db.streams.values():
            c = db.cameras.get(s.camera_id)
            if c is None:
                continue
            rows.append({"id": s.id, "cameraId": c.id, "cameraUuid": str(uuidlib.UUID(bytes=c.uuid)),
                         "cameraShortName": c.short_name, "streamType": s.type,
                         "record": s.record, "sampleFileDirId": s.sample_file_dir_id})
    rows.sort(key=lambda r: (r["cameraShortName"], STREAM_TYPE_ORDER.get(r["streamType"], 9)))
    for r in rows:
        st = statuses.get(r["id"]) if statuses is not None else None
        r["status"] = st if st is not None else off_status(start_sec)
        r["expected"] = expected(db, r["id"], now_90k)
    return rows


# ---------------------------------------------------------------------------------------
# Dirs

def _dirs(db) -> list:
    with db.locked("system"):
        dirs = []
        for d in db.dirs.values():
            ids = sorted(s.id for s in db.streams.values() if s.sample_file_dir_id == d.id)
            used = sum(db.streams[i].recorded_fs_bytes() for i in ids)
            dirs.append((d.id, d.path, dict(d.config), d.dir, ids, used))
    out = []
    for dir_id, path, config, opened, ids, used in sorted(dirs):
        total = free = floor = None
        if opened is not None:
            try:
                free, total = opened.fs.free_space()
            except OSError as e:
                logger.debug("%s: statvfs failed: %s", path, e)
        if total is not None:
            floor = retention.floor_bytes(config, total)
        out.append({"id": dir_id, "path": path, "open": opened is not None,
                    "usedBytes": used, "totalBytes": total, "freeBytes": free,
                    "freeSpaceFloorBytes": floor,
                    "freeSpaceFloor": retention.describe_floor(config), "streamIds": ids})
    return out


# ---------------------------------------------------------------------------------------
# The document

def _flush_json(f) -> dict | None:
    if f is None:
        return None
    out = {"timeSec": f.time_sec, "reason": f.reason, "durationSec": f.duration_sec}
    if f.error is not None:
        out["error"] = f.error
    return out


def report(server, nvr_version: str) -> dict:
    """GET /api/system's document for `server` (a web.Server: .db, .clocks, .recorder)."""
    db, clocks = server.db, server.clocks
    now_ns = clocks.realtime()
    now_sec = now_ns / clock.NANOS_PER_SEC
    start_sec = db.opened_90k / recording.TIME_UNITS_PER_SEC
    uptime = (clocks.monotonic() - db.opened_monotonic) / clock.NANOS_PER_SEC
    statuses = _statuses(server)
    proc = metrics.process_facts()
    return {
        "nowSec": now_sec,
        "startSec": start_sec,
        "uptimeSec": uptime,
        "versions": versions(nvr_version),
        "recording": statuses is not None,
        "streams": _streams(db, statuses, start_sec, recording.to_90k_from_ns(now_ns)),
        "dirs": _dirs(db),
        "lastFlush": _flush_json(db.last_flush),
        "lastFlushError": _flush_json(db.last_flush_error),
        "flushes": db.metrics.flush.count(),
        "flushErrors": db.metrics.flush_errors.value(),
        "process": {"cpuSec": proc["cpu_sec"], "rssBytes": proc.get("rss_bytes"),
                    "threads": proc.get("threads"), "openFds": proc.get("open_fds"),
                    "maxFds": proc["max_fds"]},
    }
