-- v5.sql: Moonfire NVR schema version 5, frozen. Do not edit.
--
-- Restated from Moonfire's server/db/upgrade/v5.sql (commit c547a49ac89a).
-- The upgrade test compares a database upgraded through 3->4->5 with this.
-- (Version 4 is a half-finished 3->5 and is never compared or used.)
-- New in 5: signals, permissions on users and sessions, the camera's ONVIF
-- host and full rtsp:// URLs on streams; sample file dir meta files in the
-- fixed 512-byte format.

create table meta (
  uuid blob not null check (length(uuid) = 16),
  max_signal_changes integer check (max_signal_changes >= 0)
);

create table version (
  id integer primary key,
  unix_time integer not null,
  notes text
);

create table open (
  id integer primary key,
  uuid blob unique not null check (length(uuid) = 16),
  start_time_90k integer,
  end_time_90k integer,
  duration_90k integer
);

create table sample_file_dir (
  id integer primary key,
  path text unique not null,
  uuid blob unique not null check (length(uuid) = 16),
  last_complete_open_id integer references open (id)
);

create table camera (
  id integer primary key,
  uuid blob unique not null check (length(uuid) = 16),
  short_name text not null,
  description text,
  onvif_host text,           -- host[:port] of the ONVIF service
  username text,
  password text
);

create table stream (
  id integer primary key,
  camera_id integer not null references camera (id),
  sample_file_dir_id integer references sample_file_dir (id),
  type text not null check (type in ('main', 'sub')),
  record integer not null check (record in (1, 0)),
  rtsp_url text not null,    -- without credentials
  retain_bytes integer not null check (retain_bytes >= 0),
  flush_if_sec integer not null,
  next_recording_id integer not null check (next_recording_id >= 0),
  unique (camera_id, type)
);

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

create table recording_integrity (
  composite_id integer primary key references recording (composite_id),
  local_time_delta_90k integer,
  local_time_since_open_90k integer,
  wall_time_delta_90k integer,
  sample_file_sha1 blob check (length(sample_file_sha1) <= 20)
);

create table recording_playback (
  composite_id integer primary key references recording (composite_id),
  video_index blob not null check (length(video_index) > 0)
);

create table garbage (
  sample_file_dir_id integer not null references sample_file_dir (id),
  composite_id integer not null,
  primary key (sample_file_dir_id, composite_id)
) without rowid;

create table video_sample_entry (
  id integer primary key,
  sha1 blob unique not null check (length(sha1) = 20),
  width integer not null check (width > 0),
  height integer not null check (height > 0),
  rfc6381_codec text not null,
  data blob not null check (length(data) > 86)
);

create table user (
  id integer primary key,
  username unique not null,
  flags integer not null,                -- 1 = disabled
  password_hash text,
  password_id integer not null default 0,
  password_failure_count integer not null default 0,
  unix_uid integer,
  permissions blob not null default X''  -- Permissions protobuf
);

create table user_session (
  session_id_hash blob primary key not null,
  user_id integer references user (id) not null,
  seed blob not null,
  flags integer not null,
  domain text,
  description text,
  creation_password_id integer,
  creation_time_sec integer not null,
  creation_user_agent text,
  creation_peer_addr blob,
  revocation_time_sec integer,
  revocation_user_agent text,
  revocation_peer_addr blob,
  revocation_reason integer,
  revocation_reason_detail text,
  last_use_time_sec integer,
  last_use_user_agent text,
  last_use_peer_addr blob,
  use_count not null default 0,
  permissions blob not null default X''
) without rowid;

create index user_session_uid on user_session (user_id);

create table signal (
  id integer primary key,
  source_uuid blob not null check (length(source_uuid) = 16),
  type_uuid blob not null check (length(type_uuid) = 16),
  short_name not null,
  unique (source_uuid, type_uuid)
);

-- The values of a signal type, e.g. 1 = still, 2 = moving.
create table signal_type_enum (
  type_uuid blob not null check (length(type_uuid) = 16),
  value integer not null check (value > 0 and value < 16),
  name text not null,
  motion int not null check (motion in (0, 1)) default 0,
  color text
);

-- type 0 = direct association (the camera's own motion), 1 = indirect.
create table signal_camera (
  signal_id integer references signal (id),
  camera_id integer references camera (id),
  type integer not null,
  primary key (signal_id, camera_id)
) without rowid;

-- Varint pairs (signal id - next allowed id, state), see schema.sql.
create table signal_change (
  time_90k integer primary key,
  changes blob not null
);

insert into version (id, unix_time,                           notes)
             values (5,  cast(strftime('%s', 'now') as int), 'db creation');
