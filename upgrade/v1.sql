-- v1.sql: Moonfire NVR schema version 1, frozen. Do not edit.
--
-- Restated from Moonfire's server/db/upgrade/v1.sql (commit c547a49ac89a).
-- The upgrade test compares a database upgraded 0->1 with this.
-- New in 1: recordings keyed by composite_id = camera_id << 32 | per-camera
-- sequence, with run_offset and flags; recording_playback holds the bulky
-- per-recording fields.

create table version (
  id integer primary key,
  unix_time integer not null,
  notes text
);

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

create table recording (
  composite_id integer primary key,
  camera_id integer not null references camera (id),
  run_offset integer not null,
  flags integer not null,                -- 1 = trailing zero
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

create table reserved_sample_files (
  uuid blob primary key check (length(uuid) = 16),
  state integer not null
) without rowid;

create table video_sample_entry (
  id integer primary key,
  sha1 blob unique not null check (length(sha1) = 20),
  width integer not null check (width > 0),
  height integer not null check (height > 0),
  data blob not null check (length(data) > 86)
);

insert into version (id, unix_time,                           notes)
             values (1,  cast(strftime('%s', 'now') as int), 'db creation');
