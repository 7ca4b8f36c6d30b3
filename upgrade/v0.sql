-- v0.sql: Moonfire NVR schema version 0, frozen. Do not edit.
--
-- Restated from Moonfire's server/db/upgrade/v0.sql (commit c547a49ac89a);
-- the upgrade test creates its seeded old database from this file. Tables
-- and columns must stay exactly as Moonfire had them, comments are ours.
-- Version 0 stores one stream per camera; sample files are named by a
-- random uuid (recording.sample_file_uuid, text form "xxxxxxxx-xxxx-...").

create table version (
  id integer primary key,
  unix_time integer not null,
  notes text
);

create table camera (
  id integer primary key,
  uuid blob unique,
  short_name text,
  description text,
  host text,                 -- host[:port] for rtsp:// URLs
  username text,
  password text,
  main_rtsp_path text,       -- path starting with "/"
  sub_rtsp_path text,
  retain_bytes integer not null check (retain_bytes >= 0)
);

create table recording (
  id integer primary key,
  camera_id integer references camera (id) not null,
  sample_file_bytes integer not null check (sample_file_bytes > 0),
  start_time_90k integer not null check (start_time_90k > 0),
  duration_90k integer not null
      check (duration_90k >= 0 and duration_90k < 5*60*90000),
  local_time_delta_90k integer not null,
  video_samples integer not null check (video_samples > 0),
  video_sync_samples integer not null check (video_samples > 0),
  video_sample_entry_id integer references video_sample_entry (id),
  sample_file_uuid blob not null check (length(sample_file_uuid) = 16),
  sample_file_sha1 blob not null check (length(sample_file_sha1) = 20),
  video_index blob not null check (length(video_index) > 0)
);

create index recording_cover on recording (
  camera_id,
  start_time_90k,
  duration_90k,
  video_samples,
  video_sync_samples,
  video_sample_entry_id,
  sample_file_bytes
);

-- Sample files that may exist but are to be discarded: state 0 = being
-- written, 1 = deleted.
create table reserved_sample_files (
  uuid blob primary key check (length(uuid) = 16),
  state integer not null
) without rowid;

create table video_sample_entry (
  id integer primary key,
  sha1 blob unique not null check (length(sha1) = 20),   -- of data
  width integer not null check (width > 0),
  height integer not null check (height > 0),
  data blob not null check (length(data) > 86)           -- the avc1 box
);

insert into version (id, unix_time,                           notes)
             values (0,  cast(strftime('%s', 'now') as int), 'db creation');
