"""What the Storage page shows (`GET /api/storage`): per stream and per sample file dir,
how much is kept, under which limits, for how long, and what retention last deleted.

Per stream (JSON field names in the docstring of `stream_json`):
- the limits in force (retention.py `stream_limits`: `retainBytes`, `retainDays`; either
  may be null, "no such limit");
- committed bytes (what SQLite holds, `Stream.sample_file_bytes` and the block-rounded
  `fs_bytes` retention counts) and *uncommitted* bytes: recordings written but not yet
  flushed, plus the one growing now. Until the first flush (`flushIfSec`, 2 minutes by
  default) committed bytes are 0 while List already shows video; the page shows both;
- the recent rate: the block-rounded bytes per second of the stream's last
  `RECENT_RECORDINGS` committed recordings plus the uncommitted ones (a rate over "the
  last hour or so" at one-minute rotation, not the average since the first recording,
  which a changed camera setting would skew for months);
- days kept: the byte limit at that rate (`retainBytes / bytesPerSec / 86400`), the age
  limit itself, and the smaller of the two (what the stream will actually hold);
- the oldest and newest committed recording;
- the last deletion (retention.Deletion, by rule and the latest overall): kept in memory
  by db.py's flush, so it starts empty at every restart;
- protected bytes (committed recordings overlapping a protection, in whole blocks as
  retention counts: db.py `protected_bytes`) and
  whether they alone exceed the byte limit (then retention deletes nothing protected and
  the stream holds more than its limit; also true while the last retention pass found it
  so, `Database.protected_over_limit`, as the log says).

Per dir: the filesystem's total and available bytes (statvfs through dir.py's `Fs` seam,
read outside the database lock), the bytes nvr's streams hold there (committed and
uncommitted), the free-space floor in force and as configured, whether free space is
below it, and the protected bytes of its streams.

This module only reads: db.py owns the state, retention.py the rules; api.py routes.
"""

from __future__ import annotations

import logging
import os
import uuid as uuidlib

import db as dbmod
import recording
import retention

logger = logging.getLogger(__name__)

# How many of a stream's newest committed recordings the recent rate averages over
# (with the uncommitted ones): an hour at the default one-minute rotation.
RECENT_RECORDINGS = 60


def _uuid_text(b: bytes) -> str:
    return str(uuidlib.UUID(bytes=bytes(b)))


def _recent_rate(db: dbmod.Database, s: dbmod.Stream) -> tuple[int, int, int]:
    """(block-rounded bytes, sample bytes, wall duration in 90 kHz units) of the
    stream's newest RECENT_RECORDINGS committed recordings and its uncommitted ones.
    Under the database lock (one indexed SQLite read: the primary key, newest first)."""
    fs, nbytes, dur = db.conn.execute(
        "select coalesce(sum((sample_file_bytes + ?) / ? * ?), 0), "
        "coalesce(sum(sample_file_bytes), 0), coalesce(sum(wall_duration_90k), 0) from ("
        "select sample_file_bytes, wall_duration_90k from recording "
        "where composite_id >= ? and composite_id < ? order by composite_id desc limit ?)",
        (retention.ASSUMED_BLOCK_SIZE_BYTES - 1, retention.ASSUMED_BLOCK_SIZE_BYTES,
         retention.ASSUMED_BLOCK_SIZE_BYTES, s.id << 32, (s.id + 1) << 32,
         RECENT_RECORDINGS)).fetchone()
    for r in s.uncommitted:
        if not r.abandoned and r.wall_duration_90k > 0:
            fs += retention.round_up(r.sample_file_bytes)
            nbytes += r.sample_file_bytes
            dur += r.wall_duration_90k
    return fs, nbytes, dur


def stream_json(db: dbmod.Database, s: dbmod.Stream, now_90k: int) -> dict:
    """One stream's figures; under the database lock.

    {"id", "cameraId", "cameraUuid", "cameraShortName", "streamType", "record",
     "sampleFileDirId",
     "retainBytes": int | null (null: no byte limit), "retainDays": float | null,
     "committedBytes", "committedFsBytes" (whole 4 KiB blocks, what retention counts),
     "totalsComplete" (false: start-up is still counting older recordings, so the
        committed figures are at least these),
     "uncommittedBytes", "uncommittedFsBytes", "uncommittedRecordings" (written, not yet
        flushed, including the growing one), "queuedForDeletionBytes",
     "totalDuration90k" (committed),
     "oldestStartTime90k" | null, "oldestSec" | null, "newestEndTime90k" | null,
     "recentBytesPerSec" (block-rounded) | null, "recentBitrateBps" (bits/s) | null,
     "daysAtBytesLimit" | null, "daysAtAgeLimit" | null, "daysKept" | null,
     "lastDeletion": {"rule", "timeSec", "time90k", "count", "bytes"} | null,
     "lastDeletionByRule": {"bytes"?, "age"?, "floor"?: same shape},
     "protectedBytes" (whole blocks), "protectedOverLimit": bool}
    """
    limits = retention.stream_limits(s.config)
    cam = db.cameras[s.camera_id]
    live = [r for r in s.uncommitted if not r.abandoned]
    fs, nbytes, dur = _recent_rate(db, s)
    per_sec = fs / (dur / recording.TIME_UNITS_PER_SEC) if dur > 0 else None
    bps = nbytes * 8 / (dur / recording.TIME_UNITS_PER_SEC) if dur > 0 else None
    days_bytes = None
    if limits.bytes is not None and per_sec:
        days_bytes = limits.bytes / per_sec / 86400
    kept = [d for d in (days_bytes, limits.days) if d is not None]
    prot = db.protected_bytes(s.id)
    return {
        "id": s.id,
        "cameraId": cam.id,
        "cameraUuid": _uuid_text(cam.uuid),
        "cameraShortName": cam.short_name,
        "streamType": s.type,
        "record": s.record,
        "sampleFileDirId": s.sample_file_dir_id,
        "retainBytes": limits.bytes,
        "retainDays": limits.days,
        "committedBytes": s.sample_file_bytes,
        "committedFsBytes": s.fs_bytes,
        # False while start-up still counts older recordings (db.py, "Loading totals"):
        # the committed figures and totalDuration90k are then a lower bound.
        "totalsComplete": s.totals_from_90k is None,
        "uncommittedBytes": sum(r.sample_file_bytes for r in live),
        "uncommittedFsBytes": sum(retention.round_up(r.sample_file_bytes) for r in live),
        "uncommittedRecordings": len(live),
        "queuedForDeletionBytes": s.fs_bytes_to_delete,
        "totalDuration90k": s.duration_90k,
        "oldestStartTime90k": s.range_90k[0] if s.range_90k else None,
        "oldestSec": s.range_90k[0] / recording.TIME_UNITS_PER_SEC if s.range_90k else None,
        "newestEndTime90k": s.range_90k[1] if s.range_90k else None,
        "recentBytesPerSec": per_sec,
        "recentBitrateBps": bps,
        "daysAtBytesLimit": days_bytes,
        "daysAtAgeLimit": limits.days,
        "daysKept": min(kept) if kept else None,
        "lastDeletion": s.last_deletion.to_json() if s.last_deletion else None,
        "lastDeletionByRule": {k: v.to_json() for k, v in sorted(s.last_deletions.items())},
        "protectedBytes": prot,
        # Either measure: the bytes now, or the last retention pass (which logged it).
        "protectedOverLimit": limits.bytes is not None and (
            prot > limits.bytes or db.protected_over_limit(s.id)),
    }


def _space(d: dbmod.SampleFileDir) -> tuple[int, int] | str:
    """(available, total) bytes of the dir's filesystem, or why they can't be read.
    Disk I/O: never under the database lock."""
    try:
        if d.dir is not None:
            return d.dir.fs.free_space()
        st = os.statvfs(d.path)
        return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
    except OSError as e:
        return f"can't read the free space of {d.path}: {e.strerror or e}"


def report(db: dbmod.Database) -> dict:
    """`GET /api/storage`'s answer: {"streams": [stream_json...], "dirs": [...]}.

    Each dir: {"id", "uuid", "path", "open", "totalBytes" | null, "freeBytes" | null,
    "error" (only when statvfs failed), "usedBytes" (its streams' committed and
    uncommitted block-rounded bytes), "floorBytes" | null (in force), "floorSetting"
    ("default", "3%", "1073741824 B"), "belowFloor": bool, "protectedBytes",
    "streamIds"}."""
    with db.locked("api: storage dirs"):
        dirs = list(db.dirs.values())
    space = {d.id: _space(d) for d in dirs}  # statvfs: outside the lock
    now_90k = recording.to_90k_from_ns(db.clocks.realtime())
    with db.locked("api: storage"):
        streams = [stream_json(db, s, now_90k)
                   for s in sorted(db.streams.values(), key=lambda s: (s.camera_id, s.id))]
        out_dirs = []
        for d in sorted(db.dirs.values(), key=lambda d: d.id):
            mine = [j for j in streams if j["sampleFileDirId"] == d.id]
            sp = space.get(d.id, "not open")
            j = {"id": d.id, "uuid": _uuid_text(d.uuid), "path": d.path,
                 "open": d.dir is not None,
                 "usedBytes": sum(db.streams[x["id"]].recorded_fs_bytes() for x in mine),
                 "floorSetting": retention.describe_floor(d.config),
                 "protectedBytes": sum(x["protectedBytes"] for x in mine),
                 "streamIds": [x["id"] for x in mine]}
            if isinstance(sp, str):
                j.update(totalBytes=None, freeBytes=None, floorBytes=None, belowFloor=False,
                         error=sp)
            else:
                free, total = sp
                floor = retention.floor_bytes(d.config, total)
                j.update(totalBytes=total, freeBytes=free, floorBytes=floor,
                         belowFloor=free < floor)
            out_dirs.append(j)
    return {"streams": streams, "dirs": out_dirs}
