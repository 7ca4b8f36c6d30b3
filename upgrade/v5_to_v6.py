"""Upgrade step 5 -> 6: pixel aspect ratios, cumulative counters, wall vs media
duration, blake3 in place of sha1; sessions revoked.

Database only:
- `video_sample_entry` loses `sha1` and gains `pasp_h_spacing` and
  `pasp_v_spacing`: the SPS's VUI sample aspect ratio (h264.py), or if it
  states none the defaults table of reference §3.5 (anamorphic sub streams
  of 16:9 cameras, e.g. 704x480 -> 40:33). When that isn't 1:1, a `pasp` box
  (ISO/IEC 14496-12 §12.1.4) is appended to the avc1 box in `data` and the
  box size updated, so browsers show the picture undistorted. Entries no
  recording uses are dropped (old ones can be unparseable, Moonfire found).
  A used entry whose avc1/avcC box is malformed stops the upgrade; an SPS
  this parser can't read falls back to the defaults table with a warning.
- `stream.next_recording_id` becomes `cum_recordings`, and gains
  `cum_media_duration_90k` and `cum_runs` (sums over its recordings).
- `recording.duration_90k` becomes `wall_duration_90k` with
  `media_duration_delta_90k` = 0 (no correction was recorded), and gains
  `prev_media_duration_90k` and `prev_runs`: the stream's totals before it,
  in composite id order (used to place segments in a browser's MediaSource).
- `recording_integrity.sample_file_sha1` is replaced by `sample_file_blake3`,
  null for old recordings.
- Every unrevoked session is revoked: Moonfire 6 hashes session ids with
  blake3 instead of blake2b, so old cookies can't match. We record reason 2
  ("algorithm change", the code Moonfire's and our auth read as such; Moonfire's
  own step wrote 1, "logged out") and the time.

`recording`, `recording_integrity`, `recording_playback` and `stream` are
rebuilt; the result matches v6.sql.
"""

from __future__ import annotations

import logging
import sqlite3

from upgrade import h264
from upgrade.common import UpgradeError, exec_script

logger = logging.getLogger(__name__)

TITLE = "pixel aspect ratios for sample entries; cumulative stream counters; revokes sessions"

REVOKED_ALGORITHM_CHANGE = 2


def pixel_aspect_ratio(vse_id: int, width: int, height: int, data: bytes) -> tuple[int, int]:
    """The entry's pixel aspect ratio; raises UpgradeError on a malformed box."""
    try:
        sps = h264.sps_list(h264.avcc_record(data))
    except (h264.H264Error, IndexError) as e:
        raise UpgradeError(
            f"video_sample_entry {vse_id} ({width}x{height}) is used by recordings but its "
            f"avc1 box is malformed ({e}); the database may be damaged. Restore a good "
            f"backup, or ask for help with the output of `sqlite3 db 'select id, hex(data) "
            f"from video_sample_entry where id = {vse_id}'`") from e
    if not sps:
        raise UpgradeError(f"video_sample_entry {vse_id} has no SPS in its avcC box")
    try:
        pasp = h264.sps_aspect_ratio(sps[0])
    except h264.H264Error as e:
        logger.warning("video_sample_entry %d: can't read the SPS (%s); using the default "
                       "pixel aspect ratio for %dx%d", vse_id, e, width, height)
        pasp = None
    return pasp or h264.default_pixel_aspect_ratio(width, height)


def run(conn: sqlite3.Connection, args) -> list[str]:
    exec_script(conn, """
        alter table video_sample_entry rename to old_video_sample_entry;
        create table video_sample_entry (
          id integer primary key,
          width integer not null check (width > 0),
          height integer not null check (height > 0),
          rfc6381_codec text not null,
          data blob not null check (length(data) > 86),
          pasp_h_spacing integer not null default 1 check (pasp_h_spacing > 0),
          pasp_v_spacing integer not null default 1 check (pasp_v_spacing > 0)
        );
    """)
    entries = conn.execute("""
        select id, width, height, rfc6381_codec, data
        from old_video_sample_entry v
        where exists (select 'x' from recording r where r.video_sample_entry_id = v.id)
    """).fetchall()
    (total,) = conn.execute("select count(*) from old_video_sample_entry").fetchone()
    notes = []
    if total > len(entries):
        notes.append(f"{total - len(entries)} unused video sample entries dropped")
    for vse_id, width, height, codec, data in entries:
        data = bytes(data)
        h, v = pixel_aspect_ratio(vse_id, width, height, data)
        if (h, v) != (1, 1):
            data = h264.append_pasp(data, h, v)
            notes.append(f"video sample entry {vse_id} ({width}x{height}): pixel aspect "
                         f"ratio {h}:{v}")
        conn.execute("""
            insert into video_sample_entry (id, width, height, rfc6381_codec, data,
                                            pasp_h_spacing, pasp_v_spacing)
            values (?, ?, ?, ?, ?, ?, ?)
        """, (vse_id, width, height, codec, data, h, v))

    exec_script(conn, """
        alter table stream rename to old_stream;
        create table stream (
          id integer primary key,
          camera_id integer not null references camera (id),
          sample_file_dir_id integer references sample_file_dir (id),
          type text not null check (type in ('main', 'sub')),
          record integer not null check (record in (1, 0)),
          rtsp_url text not null,
          retain_bytes integer not null check (retain_bytes >= 0),
          flush_if_sec integer not null,
          cum_recordings integer not null check (cum_recordings >= 0),
          cum_media_duration_90k integer not null check (cum_media_duration_90k >= 0),
          cum_runs integer not null check (cum_runs >= 0),
          unique (camera_id, type)
        );
        insert into stream
        select s.id, s.camera_id, s.sample_file_dir_id, s.type, s.record, s.rtsp_url,
               s.retain_bytes, s.flush_if_sec, s.next_recording_id,
               coalesce(sum(r.duration_90k), 0),
               coalesce(sum(case when r.run_offset = 0 then 1 else 0 end), 0)
        from old_stream s left join recording r on (s.id = r.stream_id)
        group by s.id;

        alter table recording rename to old_recording;
        create table recording (
          composite_id integer primary key,
          open_id integer not null references open (id),
          stream_id integer not null references stream (id),
          run_offset integer not null,
          flags integer not null,
          sample_file_bytes integer not null check (sample_file_bytes > 0),
          start_time_90k integer not null check (start_time_90k > 0),
          prev_media_duration_90k integer not null check (prev_media_duration_90k >= 0),
          prev_runs integer not null check (prev_runs >= 0),
          wall_duration_90k integer not null
              check (wall_duration_90k >= 0 and wall_duration_90k < 5*60*90000),
          media_duration_delta_90k integer not null,
          video_samples integer not null check (video_samples > 0),
          video_sync_samples integer not null check (video_sync_samples > 0),
          video_sample_entry_id integer references video_sample_entry (id),
          check (composite_id >> 32 = stream_id)
        );
    """)

    # Running totals per stream, by hand rather than with window functions,
    # which some SQLite builds still lack.
    cur_stream = None
    prev_duration = prev_runs = 0
    rows = conn.execute("""
        select composite_id, open_id, stream_id, run_offset, flags, sample_file_bytes,
               start_time_90k, duration_90k, video_samples, video_sync_samples,
               video_sample_entry_id
        from old_recording
        order by composite_id
    """).fetchall()
    for (cid, open_id, stream_id, run_offset, flags, nbytes, start_90k, duration_90k,
         samples, sync_samples, vse_id) in rows:
        if stream_id != cur_stream:
            cur_stream, prev_duration, prev_runs = stream_id, 0, 0
        conn.execute("""
            insert into recording (composite_id, open_id, stream_id, run_offset, flags,
                                   sample_file_bytes, start_time_90k, prev_media_duration_90k,
                                   prev_runs, wall_duration_90k, media_duration_delta_90k,
                                   video_samples, video_sync_samples, video_sample_entry_id)
            values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?)
        """, (cid, open_id, stream_id, run_offset, flags, nbytes, start_90k, prev_duration,
              prev_runs, duration_90k, samples, sync_samples, vse_id))
        prev_duration += duration_90k
        prev_runs += 1 if run_offset == 0 else 0

    exec_script(conn, """
        drop index recording_cover;
        create index recording_cover on recording (
          stream_id,
          start_time_90k,
          open_id,
          wall_duration_90k,
          media_duration_delta_90k,
          video_samples,
          video_sync_samples,
          video_sample_entry_id,
          sample_file_bytes,
          run_offset,
          flags
        );

        alter table recording_integrity rename to old_recording_integrity;
        create table recording_integrity (
          composite_id integer primary key references recording (composite_id),
          local_time_delta_90k integer,
          local_time_since_open_90k integer,
          wall_time_delta_90k integer,
          sample_file_blake3 blob check (length(sample_file_blake3) <= 32)
        );
        insert into recording_integrity
        select composite_id, local_time_delta_90k, local_time_since_open_90k,
               wall_time_delta_90k, null
        from old_recording_integrity;

        alter table recording_playback rename to old_recording_playback;
        create table recording_playback (
          composite_id integer primary key references recording (composite_id),
          video_index blob not null check (length(video_index) > 0)
        );
        insert into recording_playback select * from old_recording_playback;

        drop table old_recording_playback;
        drop table old_recording_integrity;
        drop table old_recording;
        drop table old_stream;
        drop table old_video_sample_entry;
    """)
    revoked = conn.execute("""
        update user_session
        set revocation_time_sec = cast(strftime('%s', 'now') as int),
            revocation_reason = ?,
            revocation_reason_detail = 'Blake2b->Blake3 upgrade'
        where revocation_reason is null
    """, (REVOKED_ALGORITHM_CHANGE,)).rowcount
    notes.append(f"{revoked} sessions revoked (users log in again)")
    return notes
