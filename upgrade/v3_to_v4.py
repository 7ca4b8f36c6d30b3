"""Upgrade step 3 -> 4: signals, permissions, ONVIF host, full RTSP URLs.

Version 4 is transitional (never compared): 4->5 follows in the same run.
Database only:
- `meta.max_signal_changes`; new tables `signal`, `signal_type_enum`,
  `signal_camera`, `signal_change` (time series of enumerated states, e.g.
  motion).
- `user.permissions` and `user_session.permissions` (a Permissions
  protobuf). Existing users and sessions get X'0801' (view_video = true),
  which is what they could do before; new users start with none.
- `camera.host` becomes `onvif_host`; `stream.rtsp_path` becomes the full
  `rtsp_url` 'rtsp://' || host || path. (A camera with no host gets
  'rtsp://' || path, which 6->7 then refuses with a message naming the
  stream, rather than failing here on a NOT NULL constraint.)
- `recording`, `recording_integrity`, `recording_playback` are rebuilt, as
  renaming `stream` retargets their references (SQLite >= 3.26).
- `user_session_uid` is created if an old 1->2 missed it.
"""

from __future__ import annotations

import sqlite3

from upgrade.common import exec_script

TITLE = "signals, user and session permissions, ONVIF host, full RTSP URLs"


def run(conn: sqlite3.Connection, args) -> None:
    exec_script(conn, """
        alter table meta add column max_signal_changes integer check (max_signal_changes >= 0);

        create table signal (
          id integer primary key,
          source_uuid blob not null check (length(source_uuid) = 16),
          type_uuid blob not null check (length(type_uuid) = 16),
          short_name not null,
          unique (source_uuid, type_uuid)
        );
        create table signal_type_enum (
          type_uuid blob not null check (length(type_uuid) = 16),
          value integer not null check (value > 0 and value < 16),
          name text not null,
          motion int not null check (motion in (0, 1)) default 0,
          color text
        );
        create table signal_change (
          time_90k integer primary key,
          changes blob not null
        );

        alter table user add column permissions blob not null default X'';
        alter table user_session add column permissions blob not null default X'';
        -- view_video (field 1 = true), as before permissions existed.
        update user set permissions = X'0801';
        update user_session set permissions = X'0801';

        alter table camera rename to old_camera;
        create table camera (
          id integer primary key,
          uuid blob unique not null check (length(uuid) = 16),
          short_name text not null,
          description text,
          onvif_host text,
          username text,
          password text
        );
        insert into camera
        select id, uuid, short_name, description, host, username, password
        from old_camera;

        create table signal_camera (
          signal_id integer references signal (id),
          camera_id integer references camera (id),
          type integer not null,
          primary key (signal_id, camera_id)
        ) without rowid;

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
          next_recording_id integer not null check (next_recording_id >= 0),
          unique (camera_id, type)
        );
        insert into stream
        select s.id, s.camera_id, s.sample_file_dir_id, s.type, s.record,
               'rtsp://' || coalesce(c.onvif_host, '') || s.rtsp_path,
               s.retain_bytes, s.flush_if_sec, s.next_recording_id
        from old_stream s join camera c on (s.camera_id = c.id);

        drop index recording_cover;
        alter table recording rename to old_recording;
        create table recording (
          composite_id integer primary key,
          open_id integer not null references open (id),
          stream_id integer not null references stream (id),
          run_offset integer not null,
          flags integer not null,
          sample_file_bytes integer not null check (sample_file_bytes > 0),
          start_time_90k integer not null check (start_time_90k > 0),
          duration_90k integer not null
              check (duration_90k >= 0 and duration_90k < 5*60*90000),
          video_samples integer not null check (video_samples > 0),
          video_sync_samples integer not null check (video_sync_samples > 0),
          video_sample_entry_id integer references video_sample_entry (id),
          check (composite_id >> 32 = stream_id)
        );
        insert into recording
        select composite_id, open_id, stream_id, run_offset, flags, sample_file_bytes,
               start_time_90k, duration_90k, video_samples, video_sync_samples,
               video_sample_entry_id
        from old_recording;
        create index recording_cover on recording (
          stream_id,
          start_time_90k,
          open_id,
          duration_90k,
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
          sample_file_sha1 blob check (length(sample_file_sha1) <= 20)
        );
        insert into recording_integrity select * from old_recording_integrity;

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
        drop table old_camera;

        create index if not exists user_session_uid on user_session (user_id);
    """)
