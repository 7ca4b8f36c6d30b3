"""Upgrade step 0 -> 1: recordings get composite ids, runs and flags.

What changes (database only; sample files keep their uuid names until 2->3):
- `camera` gains `next_recording_id`, the next per-camera recording number.
- `recording` is rebuilt keyed by `composite_id = camera_id << 32 | n`, where
  n counts each camera's recordings from 1 in the old id order. Its bulky
  fields (sample file uuid, sha1, `video_index`) move to the new
  `recording_playback` table, so listings read less (Moonfire measured read
  syscalls for playback indexes dropping from 605 to 39).
- Runs are reconstructed: a recording continues the previous one's run if it
  starts exactly where that one ended and that one didn't end with a
  trailing zero (its last frame's duration is 0 because the stream stopped).
  `run_offset` is the position in the run; `flags` bit 1 = trailing zero,
  read from the `video_index`. An undecodable index is logged and taken as
  "no trailing zero", as Moonfire does.

Why: version 0 could not list overlapping recordings unambiguously or tell
where a camera session began and ended.

The result matches v1.sql (upgrade test). Runs in the driver's transaction.
"""

from __future__ import annotations

import logging
import sqlite3

from upgrade.common import exec_script

logger = logging.getLogger(__name__)

TITLE = "recordings get composite ids, runs and trailing-zero flags"

TRAILING_ZERO = 1


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 35:
            raise ValueError("varint longer than 5 bytes")


def _unzigzag(n: int) -> int:
    return (n >> 1) ^ -(n & 1)


def has_trailing_zero(video_index: bytes) -> bool:
    """Whether the index's last frame has duration 0 (reference §3.2).

    Per frame: varint1 = zigzag(duration - previous duration) << 1 | key,
    varint2 = zigzag(bytes - previous bytes of the same kind). Raises
    ValueError on a malformed index (negative duration, size <= 0, truncation).
    """
    pos = 0
    duration = 0
    prev_bytes = {True: 0, False: 0}
    if not video_index:
        raise ValueError("empty index")
    while pos < len(video_index):
        v1, pos = _read_varint(video_index, pos)
        v2, pos = _read_varint(video_index, pos)
        key = bool(v1 & 1)
        duration += _unzigzag(v1 >> 1)
        size = prev_bytes[key] + _unzigzag(v2)
        if duration < 0:
            raise ValueError(f"negative duration {duration}")
        if size <= 0:
            raise ValueError(f"non-positive frame size {size}")
        prev_bytes[key] = size
    return duration == 0


def run(conn: sqlite3.Connection, args) -> list[str]:
    exec_script(conn, """
        alter table camera rename to old_camera;
        create table camera (
          id integer primary key,
          uuid blob unique not null check (length(uuid) = 16),
          short_name text not null,
          description text,
          host text,
          username text,
          password text,
          main_rtsp_path text,
          sub_rtsp_path text,
          retain_bytes integer not null check (retain_bytes >= 0),
          next_recording_id integer not null check (next_recording_id >= 0)
        );
        alter table recording rename to old_recording;
        drop index recording_cover;
        create table recording (
          composite_id integer primary key,
          camera_id integer not null references camera (id),
          run_offset integer not null,
          flags integer not null,
          sample_file_bytes integer not null check (sample_file_bytes > 0),
          start_time_90k integer not null check (start_time_90k > 0),
          duration_90k integer not null
              check (duration_90k >= 0 and duration_90k < 5*60*90000),
          local_time_delta_90k integer not null,
          video_samples integer not null check (video_samples > 0),
          video_sync_samples integer not null check (video_sync_samples > 0),
          video_sample_entry_id integer references video_sample_entry (id),
          check (composite_id >> 32 = camera_id)
        );
        create index recording_cover on recording (
          camera_id,
          start_time_90k,
          duration_90k,
          video_samples,
          video_sync_samples,
          video_sample_entry_id,
          sample_file_bytes,
          run_offset,
          flags
        );
        create table recording_playback (
          composite_id integer primary key references recording (composite_id),
          sample_file_uuid blob not null check (length(sample_file_uuid) = 16),
          sample_file_sha1 blob not null check (length(sample_file_sha1) = 20),
          video_index blob not null check (length(video_index) > 0)
        );
        insert into camera
        select id, uuid, short_name, description, host, username, password,
               main_rtsp_path, sub_rtsp_path, retain_bytes, 1
        from old_camera;
    """)

    # Per camera: the next recording number and the open run, if any, as
    # (composite id of its first recording, 90 kHz time where it would continue).
    next_id: dict[int, int] = {}
    open_run: dict[int, tuple[int, int]] = {}
    runs = corrupt = 0
    rows = conn.execute("""
        select id, camera_id, sample_file_bytes, start_time_90k, duration_90k,
               local_time_delta_90k, video_samples, video_sync_samples,
               video_sample_entry_id, sample_file_uuid, sample_file_sha1, video_index
        from old_recording
        order by id
    """).fetchall()
    for (old_id, camera_id, sample_file_bytes, start_90k, duration_90k, local_delta_90k,
         video_samples, video_sync_samples, vse_id, uuid, sha1, video_index) in rows:
        n = next_id.get(camera_id, 1)
        next_id[camera_id] = n + 1
        composite_id = camera_id << 32 | n
        try:
            trailing_zero = has_trailing_zero(video_index)
        except ValueError as e:
            logger.warning("recording %d/%d (formerly id %d, sample file %s) has a corrupt "
                           "video_index (%s); assuming no trailing zero",
                           camera_id, n, old_id, bytes(uuid).hex(), e)
            trailing_zero = False
            corrupt += 1
        run = open_run.get(camera_id)
        run_start = run[0] if run is not None and run[1] == start_90k else composite_id
        runs += run_start == composite_id
        conn.execute(
            "insert into recording values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (composite_id, camera_id, composite_id - run_start,
             TRAILING_ZERO if trailing_zero else 0, sample_file_bytes, start_90k, duration_90k,
             local_delta_90k, video_samples, video_sync_samples, vse_id))
        conn.execute("insert into recording_playback values (?, ?, ?, ?)",
                     (composite_id, uuid, sha1, video_index))
        if trailing_zero:
            open_run.pop(camera_id, None)
        else:
            open_run[camera_id] = (run_start, start_90k + duration_90k)

    conn.executemany("update camera set next_recording_id = ? where id = ?",
                     [(n, camera_id) for camera_id, n in next_id.items()])
    exec_script(conn, """
        drop table old_recording;
        drop table old_camera;
    """)
    notes = [f"{len(rows)} recordings of {len(next_id)} cameras, in {runs} runs"]
    if corrupt:
        notes.append(f"{corrupt} recordings have a corrupt video_index (see the log)")
    return notes
