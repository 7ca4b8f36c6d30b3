-- schema.sql: the SQLite schema of nvr, version 9.
--
-- This is the reference for the data model. Version 8 is Moonfire NVR's schema
-- version 7 plus one column (recording_integrity.sample_file_blake2b_32) and new
-- meanings for two hashed columns (user.password_hash holds argon2id,
-- user_session.session_id_hash holds blake2b); see docs/format.md and
-- upgrade/v7_to_v8.py. Version 9 adds the `protection` table (footage retention
-- never deletes; upgrade/v8_to_v9.py). The upgrade test compares this file's tables, columns and
-- indexes with a Moonfire database upgraded step by step, so a change here needs
-- a new version and an upgrade step.
--
-- Conventions: times are in 90 kHz units ("_90k") since 1970-01-01 00:00:00 UTC
-- without leap seconds, unless the name says "_sec" (seconds since the epoch).
-- Sizes are in bytes ("_bytes"). uuids are 16-byte blobs. JSON "config" columns
-- use camelCase keys and keep keys this version does not know.

-- Database identity. Exactly one row.
create table meta (
  -- Identifies this database; written into every sample file dir's meta file
  -- so a dir can't be used with another database.
  uuid blob not null check (length(uuid) = 16),

  -- JSON GlobalConfig: maxSignalChanges, signalTypes, signals.
  config text
);

-- Schema history: one row for creation and one per upgrade step.
-- The current version is max(id).
create table version (
  -- The schema version this row brought the database to.
  id integer primary key,

  -- When, as cast(strftime('%s', 'now') as int).
  unix_time integer not null,

  -- Free text, e.g. "db creation" or "upgraded by nvr upgrade".
  notes text
);

-- One row per read-write open of the database. Sample file dir meta files name
-- an open (id and uuid), and recordings name the open that committed them, so
-- recording ids reused after a crash are told apart.
create table open (
  -- Increasing id of this open.
  id integer primary key,

  -- Random identity of this open, matched against dir meta files.
  uuid blob unique not null check (length(uuid) = 16),

  -- Wall time when the database was opened; null for the open that stands for
  -- everything written before Moonfire schema 3.
  start_time_90k integer,

  -- Wall time of the last flush or the close.
  end_time_90k integer,

  -- Monotonic time the database was open: end - start when the clock did not
  -- step.
  duration_90k integer,

  -- /proc/sys/kernel/random/boot_id of the boot this open happened in.
  boot_uuid check (length(boot_uuid) = 16)
);

-- A directory holding sample files, typically one per disk.
create table sample_file_dir (
  -- Referenced by stream and garbage.
  id integer primary key,

  -- Identity of the directory, also stored in its meta file.
  uuid blob unique not null check (length(uuid) = 16),

  -- JSON SampleFileDirConfig: path (absolute).
  config text,

  -- The last read-write open of this dir that completed (dir.py, "open
  -- read-write" steps 1-6); null for a dir never opened completely.
  last_complete_open_id integer references open (id)
);

create table camera (
  id integer primary key,

  -- Stable identity used by the API (/api/cameras/<uuid>/).
  uuid blob unique not null check (length(uuid) = 16),

  -- Short name used in logs, thread names and download file names.
  short_name text not null,

  -- JSON CameraConfig: description, onvifBaseUrl, username, password.
  config text not null
);

create table stream (
  id integer primary key,

  -- The camera this stream belongs to.
  camera_id integer not null references camera (id),

  -- Where this stream's sample files are written; null if it never records.
  sample_file_dir_id integer references sample_file_dir (id),

  -- Which of the camera's streams this is; at most one of each per camera.
  type text not null check (type in ('main', 'sub', 'ext')),

  -- JSON StreamConfig: mode ("record" or "" for off), url (rtsp://, without
  -- credentials), rtspTransport ("tcp", "udp" or ""), retainBytes, flushIfSec.
  config text not null,

  -- Recordings ever started on this stream, including deleted ones. The next
  -- recording id; sample files with an id >= this are abandoned at start-up.
  cum_recordings integer not null check (cum_recordings >= 0),

  -- Sum of the media durations of all recordings ever committed.
  cum_media_duration_90k integer not null check (cum_media_duration_90k >= 0),

  -- Runs (recordings with run_offset = 0) ever committed.
  cum_runs integer not null check (cum_runs >= 0),

  unique (camera_id, type)
);

-- One committed recording: a sample file of about a minute, never 5 minutes or
-- more. Its frames are described by recording_playback.video_index.
create table recording (
  -- (stream_id << 32) | recording id. The sample file is named
  -- printf('%08x%08x', stream_id, recording id).
  composite_id integer primary key,

  -- The open that committed this row.
  open_id integer not null references open (id),

  -- The stream, also the high 32 bits of composite_id.
  stream_id integer not null references stream (id),

  -- Position within the run: 0 for the first recording of an RTSP session;
  -- the run starts at composite_id - run_offset.
  run_offset integer not null,

  -- Bit mask. 1 = trailing zero: the last frame has duration 0 because the
  -- run ended here and no next frame gave its duration.
  flags integer not null,

  -- Length of the sample file: the sum of the frame sizes.
  sample_file_bytes integer not null check (sample_file_bytes > 0),

  -- Wall time of the first frame. For run_offset > 0 exactly the previous
  -- recording's start + wall duration, so a run has no gaps or overlaps.
  start_time_90k integer not null check (start_time_90k > 0),

  -- Sum of the media durations of this stream's earlier recordings (for
  -- placing segments in an HTML MediaSource buffer).
  prev_media_duration_90k integer not null
      check (prev_media_duration_90k >= 0),

  -- Runs started on this stream before this recording.
  prev_runs integer not null check (prev_runs >= 0),

  -- Duration on the wall clock: the media duration corrected by at most
  -- 500 ppm toward the local clock.
  wall_duration_90k integer not null
      check (wall_duration_90k >= 0 and wall_duration_90k < 5*60*90000),

  -- Media duration (camera clock, the sum of frame durations) minus
  -- wall_duration_90k.
  media_duration_delta_90k integer not null,

  -- Frames in the recording, and how many of them are key frames.
  video_samples integer not null check (video_samples > 0),
  video_sync_samples integer not null check (video_sync_samples > 0),

  -- The codec parameters of every frame of this recording.
  video_sample_entry_id integer references video_sample_entry (id),

  -- Why the run ended, on a run's last recording ("NVR shutdown", an error);
  -- null while the run goes on or before schema 7.
  end_reason text

  check (composite_id >> 32 = stream_id)
);

-- Covers listing and .mp4 layout, so they never read recording rows.
create index recording_cover on recording (
  -- Queried as "where stream_id = ? and start_time_90k > ? order by
  -- start_time_90k"; a recording is under 5 minutes, so a range query starts
  -- 5 minutes early.
  stream_id,
  start_time_90k,

  -- Carried for index-only queries; not used for ordering.
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

-- Fields only needed to check or correct the database.
create table recording_integrity (
  composite_id integer primary key references recording (composite_id),

  -- Local start minus start_time_90k: how far the local clock ran ahead of
  -- the camera's at this recording's start. Null for run_offset = 0, where the
  -- start is the local start.
  local_time_delta_90k integer,

  -- Reserved by Moonfire, never filled.
  local_time_since_open_90k integer,

  -- Reserved by Moonfire, never filled.
  wall_time_delta_90k integer,

  -- Moonfire's blake3 of the sample file (schema 6-7 recordings only); kept,
  -- not verified.
  sample_file_blake3 blob check (length(sample_file_blake3) <= 32),

  -- Version 8: blake2b (32-byte digest) of the whole sample file, computed
  -- while writing; `nvr.py check --verify-hashes` compares it.
  sample_file_blake2b_32 blob check (length(sample_file_blake2b_32) = 32)
);

-- Large per-recording fields needed only to play it back.
create table recording_playback (
  composite_id integer primary key references recording (composite_id),

  -- The sample index, docs/format.md "video_index": two varints per frame.
  video_index blob not null check (length(video_index) > 0)
);

-- Sample files to unlink; each may or may not still exist. Rows are deleted by
-- the flush after the unlinks and a dir fsync. Besides these, files with a
-- recording id >= their stream's cum_recordings are deleted at start-up.
create table garbage (
  -- The dir, kept here so a stream can be deleted before its garbage is gone.
  sample_file_dir_id integer not null references sample_file_dir (id),

  -- The recording's composite id (see recording).
  composite_id integer not null,

  primary key (sample_file_dir_id, composite_id)
) without rowid;

-- Version 9: a protected time range ("keep this"). A committed recording that
-- overlaps a protection of its stream, or of its camera with stream_id null, is
-- never deleted by retention (retainBytes, retainDays, the free-space floor;
-- retention.py). Overlap is half-open: start_time_90k < protection end and
-- start + wall_duration_90k > protection start. Deleting a stream or camera on
-- purpose (`nvr.py config`, the configuration API) deletes its protections too.
create table protection (
  id integer primary key,

  -- The camera whose footage is kept.
  camera_id integer not null references camera (id),

  -- One stream of that camera (the code checks it is the camera's), or null:
  -- every stream of the camera, including ones added later.
  stream_id integer references stream (id),

  -- The protected range, [start, end) on the wall clock.
  start_time_90k integer not null check (start_time_90k > 0),
  end_time_90k integer not null,

  -- What it is for ("break-in 12 May"); may be empty. At most 256 characters,
  -- none of them control characters (the code checks that: labels go into logs).
  label text not null check (length(label) <= 256),

  -- Who made it: a username, or "cli" for `nvr.py protect add`. Kept when the
  -- user is later renamed or deleted.
  created_by text not null check (length(created_by) between 1 and 256),

  -- When it was made and last edited (wall clock).
  created_time_90k integer not null,
  updated_time_90k integer not null,

  check (end_time_90k > start_time_90k)
);

-- Retention looks protections up by camera; listing by camera and time.
create index protection_camera on protection (camera_id, start_time_90k);

-- An ISO/IEC 14496-12 section 8.5.2 VisualSampleEntry: codec, size, parameters.
create table video_sample_entry (
  id integer primary key,

  -- Dimensions in pixels, as in data.
  width integer not null check (width > 0),
  height integer not null check (height > 0),

  -- RFC 6381 codec string, e.g. "avc1.4d001f" or "hvc1.1.6.L93.B0".
  rfc6381_codec text not null,

  -- The whole avc1/hvc1 box (size, type, avcC/hvcC and optional pasp).
  data blob not null check (length(data) > 86),

  -- Pixel aspect ratio (ISO/IEC 14496-12 section 12.1.4), 1:1 unless the SPS
  -- or the defaults table of docs/format.md says otherwise.
  pasp_h_spacing integer not null default 1 check (pasp_h_spacing > 0),
  pasp_v_spacing integer not null default 1 check (pasp_v_spacing > 0)
);

create table user (
  id integer primary key,

  -- Login name.
  username unique not null,

  -- JSON UserConfig: disabled, unixUid, preferences (opaque to the server).
  config text,

  -- PHC string: argon2id ($argon2id$...), or a legacy scrypt hash ($scrypt$...)
  -- that is replaced at the next successful login. Null: no password login.
  password_hash text,

  -- Incremented on every password set or clear.
  password_id integer not null default 0,

  -- Failed logins since password_id changed; written lazily with a flush.
  password_failure_count integer not null default 0,

  -- Permissions protobuf given to new sessions: view_video = 1,
  -- read_camera_configs = 2, update_signals = 3, admin_users = 4.
  permissions blob not null default X''
);

-- A login session; the browser holds its id in the "s" cookie.
create table user_session (
  -- Version 8: blake2b (24-byte digest) of the 48-byte session id, which is
  -- never stored, so a leaked backup can't be used to log in.
  session_id_hash blob primary key not null,

  user_id integer references user (id) not null,

  -- 32 random bytes; the key of this session's CSRF token.
  seed blob not null,

  -- Cookie attributes: 1 HttpOnly, 2 Secure, 4 SameSite=Lax,
  -- 8 SameSite=Strict (with 4).
  flags integer not null,

  -- The request's Host without the port.
  domain text,

  -- Editable description of the device or program using it.
  description text,

  creation_password_id integer,        -- user.password_id it was created with, if by password
  creation_time_sec integer not null,  -- when created
  creation_user_agent text,            -- User-Agent of the creating request
  creation_peer_addr blob,             -- 4 or 16 byte address; null for a Unix socket

  revocation_time_sec integer,         -- when revoked; null while valid
  revocation_user_agent text,          -- User-Agent of the revoking request
  revocation_peer_addr blob,           -- 4 or 16 byte address; null if none

  -- Why revoked: 1 logged out, 2 hash algorithm change (upgrades), 3 revoked
  -- by an administrator (`nvr.py sessions revoke`, the API), 4 revoked by its
  -- user (the API), 5 the user's password was set, changed or cleared, 6 the
  -- user was disabled, 7 expired (idle or too old; auth.py); detail is free text.
  revocation_reason integer,
  revocation_reason_detail text,

  last_use_time_sec integer,           -- last request; flushed lazily
  last_use_user_agent text,            -- its User-Agent
  last_use_peer_addr blob,             -- its address
  use_count not null default 0,        -- requests made with this session

  -- Permissions protobuf of this session (see user.permissions).
  permissions blob not null default X''
) without rowid;

create index user_session_uid on user_session (user_id);

-- A time series with an enumerated state, e.g. motion or an alarm zone.
create table signal (
  id integer primary key,

  -- Stable identity used by the API.
  uuid blob unique not null check (length(uuid) = 16),

  -- Its signal_type.
  type_uuid blob not null references signal_type (uuid)
      check (length(type_uuid) = 16),

  -- JSON SignalConfig: shortName, cameraAssociations (camera id ->
  -- "direct" | "indirect").
  config text
);

create table signal_type (
  uuid blob primary key check (length(uuid) = 16),

  -- JSON SignalTypeConfig: values (1..15 -> name, motion, color); 0 = unknown.
  config text
) without rowid;

-- Changes of signal states at a time.
create table signal_change (
  -- When the change happened.
  time_90k integer primary key,

  -- Varint pairs (signal id - next allowed id, state), ids strictly
  -- increasing, next allowed = previous id + 1. Signals 1, 3, 200 with states
  -- 1, 1, 2 are 01 01 01 01 c4 01 02.
  changes blob not null
);

insert into version (id, unix_time,                           notes)
             values (9,  cast(strftime('%s', 'now') as int), 'db creation');
