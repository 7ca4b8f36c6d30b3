"""Upgrade step 6 -> 7: configuration moves into JSON `config` columns.

Database only. Each JSON object uses Moonfire 0.7's camelCase keys, leaves
out empty/default values as Moonfire's serializer does, and is written
compactly (reference §2.2):
- `meta`: `max_signal_changes` -> config {"maxSignalChanges": n}.
- `sample_file_dir`: `path` -> config {"path": "/..."}.
- `camera`: description, onvif_host, username, password -> config
  {"description", "onvifBaseUrl": "http://<onvif_host>/", "username",
  "password"}. An empty onvif_host means none (Moonfire #182).
- `stream`: record, rtsp_url, retain_bytes, flush_if_sec -> config
  {"mode": "record" (or absent when not recording), "url", "retainBytes",
  "flushIfSec"}; the type may now also be 'ext'. A stream whose rtsp_url is
  not a URL stops the upgrade with a message saying how to fix it.
- `user`: flags (1 = disabled) and unix_uid -> config {"disabled": true,
  "unixUid": n}.
- `signal_type_enum` rows become `signal_type` rows with config
  {"values": {"<value>": {"name", "motion": true, "color"}}}; `signal` loses
  source_uuid/short_name (-> `uuid`, config {"shortName"}) and
  `signal_camera` rows become its config's "cameraAssociations"
  {"<camera id>": "direct" | "indirect"}. (Moonfire's own step kept only the
  value names; motion and color are kept here too.)
- `recording.end_reason` (null for old recordings), `open.boot_uuid`.
- `user_session`, `garbage`, `recording_integrity`, `recording_playback` are
  rebuilt as unchanged copies, because renaming their parents retargets
  their references.

The result matches v7.sql, Moonfire's last schema.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import urllib.parse

from upgrade.common import UpgradeError, exec_script

logger = logging.getLogger(__name__)

TITLE = "JSON config columns for meta, dirs, cameras, streams, users and signals"


def _json(obj: dict) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _check_url(url: str, what: str, fix: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if not parts.scheme or not parts.hostname:
        raise UpgradeError(f"{what} has URL {url!r}, which has no host; {fix}, then rerun "
                           f"`nvr.py upgrade`")
    return url


def _copy_meta(conn: sqlite3.Connection) -> None:
    for uuid, max_changes in conn.execute(
            "select uuid, max_signal_changes from old_meta").fetchall():
        config = {} if max_changes is None else {"maxSignalChanges": max_changes}
        conn.execute("insert into meta (uuid, config) values (?, ?)", (uuid, _json(config)))


def _copy_sample_file_dirs(conn: sqlite3.Connection) -> None:
    for id_, uuid, path, last_open in conn.execute(
            "select id, uuid, path, last_complete_open_id from old_sample_file_dir").fetchall():
        conn.execute("insert into sample_file_dir (id, uuid, config, last_complete_open_id) "
                     "values (?, ?, ?, ?)", (id_, uuid, _json({"path": path}), last_open))


def _copy_cameras(conn: sqlite3.Connection) -> None:
    rows = conn.execute("select id, uuid, short_name, description, onvif_host, username, "
                        "password from old_camera").fetchall()
    for id_, uuid, short_name, description, onvif_host, username, password in rows:
        config = {}
        if description:
            config["description"] = description
        if onvif_host:
            config["onvifBaseUrl"] = _check_url(
                f"http://{onvif_host}/", f"camera {id_} ({short_name})",
                f"correct its host with `update camera set onvif_host = 'HOST:PORT' "
                f"where id = {id_}` in the sqlite3 shell")
        if username:
            config["username"] = username
        if password:
            config["password"] = password
        conn.execute("insert into camera (id, uuid, short_name, config) values (?, ?, ?, ?)",
                     (id_, uuid, short_name, _json(config)))


def _copy_streams(conn: sqlite3.Connection) -> None:
    rows = conn.execute("""
        select id, camera_id, sample_file_dir_id, type, record, rtsp_url, retain_bytes,
               flush_if_sec, cum_recordings, cum_media_duration_90k, cum_runs
        from old_stream
    """).fetchall()
    for (id_, camera_id, dir_id, type_, record, url, retain_bytes, flush_if_sec,
         cum_recordings, cum_duration, cum_runs) in rows:
        config = {}
        if record:
            config["mode"] = "record"
        config["url"] = _check_url(
            url, f"stream {id_} (camera {camera_id}, {type_})",
            f"set it with `update stream set rtsp_url = 'rtsp://HOST/PATH' where id = {id_}` "
            f"in the sqlite3 shell")
        config["retainBytes"] = retain_bytes
        config["flushIfSec"] = flush_if_sec
        conn.execute("""
            insert into stream (id, camera_id, sample_file_dir_id, type, config, cum_recordings,
                                cum_media_duration_90k, cum_runs)
            values (?, ?, ?, ?, ?, ?, ?, ?)
        """, (id_, camera_id, dir_id, type_, _json(config), cum_recordings, cum_duration,
              cum_runs))


def _copy_users(conn: sqlite3.Connection) -> None:
    rows = conn.execute("""
        select id, username, flags, password_hash, password_id, password_failure_count,
               unix_uid, permissions
        from old_user
    """).fetchall()
    for id_, username, flags, pw_hash, pw_id, pw_failures, unix_uid, permissions in rows:
        config = {}
        if flags & 1:
            config["disabled"] = True
        if unix_uid is not None:
            config["unixUid"] = unix_uid
        conn.execute("""
            insert into user (id, username, config, password_hash, password_id,
                              password_failure_count, permissions)
            values (?, ?, ?, ?, ?, ?, ?)
        """, (id_, username, _json(config), pw_hash, pw_id, pw_failures, permissions))


def _copy_signal_types(conn: sqlite3.Connection) -> None:
    types: dict[bytes, dict] = {}
    for type_uuid, value, name, motion, color in conn.execute(
            "select type_uuid, value, name, motion, color from signal_type_enum "
            "order by type_uuid, value").fetchall():
        v = {"name": name}
        if motion:
            v["motion"] = True
        if color:
            v["color"] = color
        types.setdefault(bytes(type_uuid), {})[str(value)] = v
    # Signals may name a type with no enum rows; signal.type_uuid now
    # references signal_type, so give those an empty config.
    for (type_uuid,) in conn.execute("select distinct type_uuid from old_signal").fetchall():
        types.setdefault(bytes(type_uuid), {})
    for type_uuid, values in types.items():
        config = {"values": values} if values else {}
        conn.execute("insert into signal_type (uuid, config) values (?, ?)",
                     (type_uuid, _json(config)))


def _copy_signals(conn: sqlite3.Connection) -> None:
    assoc: dict[int, dict[str, str]] = {}
    for signal_id, camera_id, type_ in conn.execute(
            "select signal_id, camera_id, type from signal_camera "
            "order by signal_id, camera_id").fetchall():
        assoc.setdefault(signal_id, {})[str(camera_id)] = "direct" if type_ == 0 else "indirect"
    for id_, source_uuid, type_uuid, short_name in conn.execute(
            "select id, source_uuid, type_uuid, short_name from old_signal").fetchall():
        config = {}
        if short_name:
            config["shortName"] = short_name
        if assoc.get(id_):
            config["cameraAssociations"] = assoc.pop(id_)
        conn.execute("insert into signal (id, uuid, type_uuid, config) values (?, ?, ?, ?)",
                     (id_, source_uuid, type_uuid, _json(config)))
    for signal_id in assoc:
        logger.warning("dropping camera associations of nonexistent signal %d", signal_id)


def run(conn: sqlite3.Connection, args) -> None:
    exec_script(conn, """
        alter table open add column boot_uuid check (length(boot_uuid) = 16);
        alter table user rename to old_user;
        alter table user_session rename to old_user_session;
        alter table camera rename to old_camera;
        alter table stream rename to old_stream;
        alter table signal rename to old_signal;
        alter table sample_file_dir rename to old_sample_file_dir;
        alter table meta rename to old_meta;

        create table meta (
          uuid blob not null check (length(uuid) = 16),
          config text
        );
        create table sample_file_dir (
          id integer primary key,
          uuid blob unique not null check (length(uuid) = 16),
          config text,
          last_complete_open_id integer references open (id)
        );
        create table camera (
          id integer primary key,
          uuid blob unique not null check (length(uuid) = 16),
          short_name text not null,
          config text not null
        );
        create table stream (
          id integer primary key,
          camera_id integer not null references camera (id),
          sample_file_dir_id integer references sample_file_dir (id),
          type text not null check (type in ('main', 'sub', 'ext')),
          config text not null,
          cum_recordings integer not null check (cum_recordings >= 0),
          cum_media_duration_90k integer not null check (cum_media_duration_90k >= 0),
          cum_runs integer not null check (cum_runs >= 0),
          unique (camera_id, type)
        );
        create table signal (
          id integer primary key,
          uuid blob unique not null check (length(uuid) = 16),
          type_uuid blob not null references signal_type (uuid)
              check (length(type_uuid) = 16),
          config text
        );
        create table signal_type (
          uuid blob primary key check (length(uuid) = 16),
          config text
        ) without rowid;
        create table user (
          id integer primary key,
          username unique not null,
          config text,
          password_hash text,
          password_id integer not null default 0,
          password_failure_count integer not null default 0,
          permissions blob not null default X''
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
        drop index user_session_uid;
        create index user_session_uid on user_session (user_id);
    """)
    _copy_meta(conn)
    _copy_sample_file_dirs(conn)
    _copy_cameras(conn)
    _copy_signal_types(conn)
    _copy_signals(conn)
    _copy_streams(conn)
    _copy_users(conn)
    exec_script(conn, """
        insert into user_session select * from old_user_session;

        alter table garbage rename to old_garbage;
        create table garbage (
          sample_file_dir_id integer not null references sample_file_dir (id),
          composite_id integer not null,
          primary key (sample_file_dir_id, composite_id)
        ) without rowid;
        insert into garbage select * from old_garbage;
        drop table old_garbage;

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
          prev_media_duration_90k integer not null check (prev_media_duration_90k >= 0),
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
        insert into recording select *, null from old_recording;

        alter table recording_integrity rename to old_recording_integrity;
        create table recording_integrity (
          composite_id integer primary key references recording (composite_id),
          local_time_delta_90k integer,
          local_time_since_open_90k integer,
          wall_time_delta_90k integer,
          sample_file_blake3 blob check (length(sample_file_blake3) <= 32)
        );
        insert into recording_integrity select * from old_recording_integrity;

        alter table recording_playback rename to old_recording_playback;
        create table recording_playback (
          composite_id integer primary key references recording (composite_id),
          video_index blob not null check (length(video_index) > 0)
        );
        insert into recording_playback select * from old_recording_playback;

        drop table signal_camera;
        drop table old_signal;
        drop table old_recording_playback;
        drop table old_recording_integrity;
        drop table old_recording;
        drop table old_stream;
        drop table old_camera;
        drop table old_sample_file_dir;
        drop table old_meta;
        drop table old_user_session;
        drop table old_user;
        drop table signal_type_enum;
    """)
