-- v7.sql: Moonfire NVR schema version 7, frozen. Do not edit.
--
-- Restated from Moonfire's server/db/schema.sql at commit 24a0b2a9f1d4
-- (schema 7, the 0.7.x releases). The upgrade test compares a database
-- upgraded 6->7 with this; our schema.sql (version 8) is this plus
-- recording_integrity.sample_file_blake2b_32.
-- New in 7: JSON config columns (meta, sample_file_dir, camera, stream, user,
-- signal, signal_type), stream type 'ext', recording.end_reason,
-- open.boot_uuid.

create table meta (
  uuid blob not null check (length(uuid) = 16),
  config text                            -- JSON GlobalConfig
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
  duration_90k integer,
  boot_uuid check (length(boot_uuid) = 16)
);

create table sample_file_dir (
  id integer primary key,
  uuid blob unique not null check (length(uuid) = 16),
  config text,                           -- JSON SampleFileDirConfig (path)
  last_complete_open_id integer references open (id)
);

create table camera (
  id integer primary key,
  uuid blob unique not null check (length(uuid) = 16),
  short_name text not null,
  config text not null                   -- JSON CameraConfig
);

create table stream (
  id integer primary key,
  camera_id integer not null references camera (id),
  sample_file_dir_id integer references sample_file_dir (id),
  type text not null check (type in ('main', 'sub', 'ext')),
  config text not null,                  -- JSON StreamConfig
  cum_recordings integer not null check (cum_recordings >= 0),
  cum_media_duration_90k integer not null check (cum_media_duration_90k >= 0),
  cum_runs integer not null check (cum_runs >= 0),
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
  prev_media_duration_90k integer not null
      check (prev_media_duration_90k >= 0),
  prev_runs integer not null check (prev_runs >= 0),
  wall_duration_90k integer not null
      check (wall_duration_90k >= 0 and wall_duration_90k < 5*60*90000),
  media_duration_delta_90k integer not null,
  video_samples integer not null check (video_samples > 0),
  video_sync_samples integer not null check (video_sync_samples > 0),
  video_sample_entry_id integer references video_sample_entry (id),
  end_reason text
  check (composite_id >> 32 = stream_id)
);

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

create table recording_integrity (
  composite_id integer primary key references recording (composite_id),
  local_time_delta_90k integer,
  local_time_since_open_90k integer,
  wall_time_delta_90k integer,
  sample_file_blake3 blob check (length(sample_file_blake3) <= 32)
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
  width integer not null check (width > 0),
  height integer not null check (height > 0),
  rfc6381_codec text not null,
  data blob not null check (length(data) > 86),    -- avc1 box, maybe with a pasp
  pasp_h_spacing integer not null default 1 check (pasp_h_spacing > 0),
  pasp_v_spacing integer not null default 1 check (pasp_v_spacing > 0)
);

create table user (
  id integer primary key,
  username unique not null,
  config text,                           -- JSON UserConfig
  password_hash text,
  password_id integer not null default 0,
  password_failure_count integer not null default 0,
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
  uuid blob unique not null check (length(uuid) = 16),
  type_uuid blob not null references signal_type (uuid)
      check (length(type_uuid) = 16),
  config text                            -- JSON SignalConfig
);

create table signal_type (
  uuid blob primary key check (length(uuid) = 16),
  config text                            -- JSON SignalTypeConfig
) without rowid;

-- Varint pairs (signal id - next allowed id, state), see schema.sql.
create table signal_change (
  time_90k integer primary key,
  changes blob not null
);

insert into version (id, unix_time,                           notes)
             values (7,  cast(strftime('%s', 'now') as int), 'db creation');
