"""Upgrade step 1 -> 2: database identity, opens, the sample file dir, streams,
users; the dir gets its `meta` file. Needs `--sample-file-dir`.

Version 2 is transitional (never used, never compared): 2->3 always follows in
the same `nvr.py upgrade` run and finishes the job. Together they are
Moonfire's "1 -> 3" (reference §2.3).

Before anything changes, the safety check: the directory given with
`--sample-file-dir` must hold exactly what the database expects, so a wrong
path (or the wrong disk mounted there) is refused with nothing touched:
- every recording's file, named by its uuid ("xxxxxxxx-xxxx-...", lower case);
- optionally files of `reserved_sample_files` (half-written or deleted ones);
- optionally `meta`, `meta.tmp` or `meta-tmp` from an earlier, interrupted
  attempt at this step;
- nothing else.

Then, in order:
1. Take an exclusive flock on the dir (as nvr does while using it).
2. Unlink the reserved (garbage) files. Harmless if the step later fails: the
   version 1 database doesn't need them. Step 4's fsync of the dir makes
   these unlinks durable too.
3. Create `meta`, `open`, `sample_file_dir`, `user`, `user_session`; insert a
   random database uuid, one `open` row standing for everything written so
   far, and the dir (absolute path, random uuid, last complete open = it).
4. Write the dir's `meta` file in the version 3 format (the plain DirMeta
   message; `meta.tmp`, fsync, rename, fsync the dir, so the rename and the
   unlinks are durable before the database commits) naming that database,
   dir and open. If the step fails after this, the file names uuids the
   database never committed; the rerun ignores and rewrites it.
   Crash point: `upgrade-v1-to-v2-after-meta`.
5. Rebuild `camera` without stream fields and split them into `stream` rows:
   a 'main' stream per camera with the camera's id (so composite ids stay
   valid), recording, flush_if_sec 0; a 'sub' stream where the camera had a
   non-empty sub path, not recording, flush_if_sec 90, no retention.
6. Rebuild `recording` (with `open_id` and `stream_id`), add
   `recording_integrity` (the local time delta, null on a run's first
   recording, and the sha1), `garbage`, and `video_sample_entry` with its
   RFC 6381 codec string. The old tables stay (as `old_*`) for 2->3, which
   still needs the uuids in `recording_playback`.

A sample entry that isn't an H.264 avc1 box stops the upgrade if a recording
uses it; an unused one is dropped with a warning (5->6 drops unused entries
anyway).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import uuid as uuidlib

from upgrade import dirmeta, fsops, h264
from upgrade.common import UpgradeError, crash_point, exec_script

logger = logging.getLogger(__name__)

TITLE = "database identity, opens, streams, users; writes the sample file dir's meta file"

_META_NAMES = {"meta", "meta.tmp", "meta-tmp"}


def sample_file_dir_arg(args) -> str:
    dirs = getattr(args, "sample_file_dir", None) or []
    if isinstance(dirs, str):
        dirs = [dirs]
    if len(dirs) != 1:
        raise UpgradeError(
            "upgrading from schema version 1 needs the sample file directory: pass "
            "--sample-file-dir DIR once, naming the directory that holds the recordings "
            "(Moonfire's --sample-file-dir); nothing was changed")
    return os.path.abspath(dirs[0])


def check_args(args) -> None:
    """Called by the driver before any step runs, so a missing flag is
    reported before the database is touched."""
    sample_file_dir_arg(args)


def _uuid_name(u: bytes) -> str:
    return str(uuidlib.UUID(bytes=bytes(u)))


def _is_canonical_uuid(name: str) -> bool:
    try:
        return str(uuidlib.UUID(name)) == name
    except ValueError:
        return False


def verify_dir_contents(d: fsops.Dir, conn: sqlite3.Connection) -> list[str]:
    """Checks the dir holds what the database expects; returns the garbage
    files (reserved uuids) present. Raises UpgradeError, changing nothing."""
    found = set()
    for name in d.listdir():
        if name in _META_NAMES:
            continue
        if not _is_canonical_uuid(name):
            raise UpgradeError(
                f"unexpected file {name!r} in sample file dir {d.path}: a version 1 dir holds "
                f"only uuid-named sample files. Is --sample-file-dir right? Move the file "
                f"away if it doesn't belong there, then rerun")
        found.add(name)
    missing = []
    for (u,) in conn.execute("select sample_file_uuid from recording_playback"):
        name = _uuid_name(u)
        if name in found:
            found.discard(name)
        else:
            missing.append(name)
    if missing:
        raise UpgradeError(
            f"{len(missing)} recordings' sample files are missing from {d.path} (first: "
            f"{missing[0]}). Is --sample-file-dir the dir this database records to, and is "
            f"its disk mounted? If the files were renamed by an earlier upgrade, this "
            f"database is an older backup than the dir")
    reserved = {_uuid_name(u) for (u,) in conn.execute("select uuid from reserved_sample_files")}
    unexpected = sorted(found - reserved)
    if unexpected:
        raise UpgradeError(
            f"{len(unexpected)} sample files in {d.path} are unknown to the database (first: "
            f"{unexpected[0]}). Is --sample-file-dir right? Move them away if they don't "
            f"belong there, then rerun")
    return sorted(found & reserved)


def run(conn: sqlite3.Connection, args) -> list[str]:
    path = sample_file_dir_arg(args)
    with fsops.files_for(args).open_dir(path) as d:  # step 1: exclusive flock
        garbage = verify_dir_contents(d, conn)

        # Step 2 (made durable by step 4's fsync of the dir).
        for name in garbage:
            d.unlink(name)

        # Step 3.
        exec_script(conn, """
            create table meta (
              uuid blob not null check (length(uuid) = 16)
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
            create table user (
              id integer primary key,
              username unique not null,
              flags integer not null,
              password_hash text,
              password_id integer not null default 0,
              password_failure_count integer not null default 0,
              unix_uid integer
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
              use_count not null default 0
            ) without rowid;
            create index user_session_uid on user_session (user_id);
        """)
        db_uuid = uuidlib.uuid4().bytes
        open_uuid = uuidlib.uuid4().bytes
        dir_uuid = uuidlib.uuid4().bytes
        conn.execute("insert into meta (uuid) values (?)", (db_uuid,))
        open_id = conn.execute("insert into open (uuid) values (?)", (open_uuid,)).lastrowid
        conn.execute("insert into sample_file_dir (path, uuid, last_complete_open_id) "
                     "values (?, ?, ?)", (path, dir_uuid, open_id))

        # Step 4.
        meta = dirmeta.DirMeta(db_uuid=db_uuid, dir_uuid=dir_uuid,
                               last_complete_open=dirmeta.Open(open_id, open_uuid))
        d.write_atomic("meta", dirmeta.encode(meta))
        d.sync()  # make the rename durable before the database commits
        crash_point("upgrade-v1-to-v2-after-meta")

    # Step 5.
    exec_script(conn, """
        drop table reserved_sample_files;
        alter table camera rename to old_camera;
        alter table recording rename to old_recording;
        alter table video_sample_entry rename to old_video_sample_entry;
        drop index recording_cover;

        create table camera (
          id integer primary key,
          uuid blob unique not null check (length(uuid) = 16),
          short_name text not null,
          description text,
          host text,
          username text,
          password text
        );
        create table stream (
          id integer primary key,
          camera_id integer not null references camera (id),
          sample_file_dir_id integer references sample_file_dir (id),
          type text not null check (type in ('main', 'sub')),
          record integer not null check (record in (1, 0)),
          rtsp_path text not null,
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
        create table video_sample_entry (
          id integer primary key,
          sha1 blob unique not null check (length(sha1) = 20),
          width integer not null check (width > 0),
          height integer not null check (height > 0),
          rfc6381_codec text not null,
          data blob not null check (length(data) > 86)
        );
        create table garbage (
          sample_file_dir_id integer not null references sample_file_dir (id),
          composite_id integer not null,
          primary key (sample_file_dir_id, composite_id)
        ) without rowid;

        insert into camera
        select id, uuid, short_name, description, host, username, password
        from old_camera;

        -- Main streams take the camera's id, so composite ids stay valid.
        insert into stream
        select c.id, c.id, d.id, 'main', 1, coalesce(c.main_rtsp_path, ''), c.retain_bytes, 0,
               c.next_recording_id
        from old_camera c cross join sample_file_dir d;

        insert into stream (camera_id, sample_file_dir_id, type, record, rtsp_path,
                            retain_bytes, flush_if_sec, next_recording_id)
        select c.id, d.id, 'sub', 0, c.sub_rtsp_path, 0, 90, 1
        from old_camera c cross join sample_file_dir d
        where c.sub_rtsp_path != '';
    """)

    # Step 6: sample entries first, as recordings reference them.
    notes = [f"sample file dir {path}: {len(garbage)} garbage files to unlink, meta file "
             f"written"]
    used = {vse_id for (vse_id,) in conn.execute(
        "select distinct video_sample_entry_id from old_recording")}
    for vse_id, sha1, width, height, data in conn.execute(
            "select id, sha1, width, height, data from old_video_sample_entry").fetchall():
        try:
            codec = h264.rfc6381_codec(bytes(data))
        except h264.H264Error as e:
            if vse_id in used:
                raise UpgradeError(
                    f"video_sample_entry {vse_id} ({width}x{height}) is used by recordings but "
                    f"is not an H.264 sample entry ({e}); the database may be damaged. "
                    f"Restore a good backup, or ask for help with the output of `sqlite3 db "
                    f"'select id, hex(data) from video_sample_entry where id = {vse_id}'`") from e
            logger.warning("dropping unused, unreadable video_sample_entry %d: %s", vse_id, e)
            notes.append(f"dropped unused, unreadable video_sample_entry {vse_id}")
            continue
        conn.execute("insert into video_sample_entry values (?, ?, ?, ?, ?, ?)",
                     (vse_id, sha1, width, height, codec, data))

    exec_script(conn, """
        insert into recording
        select r.composite_id, o.id, r.camera_id, r.run_offset, r.flags, r.sample_file_bytes,
               r.start_time_90k, r.duration_90k, r.video_samples, r.video_sync_samples,
               r.video_sample_entry_id
        from old_recording r cross join open o;

        insert into recording_integrity (composite_id, local_time_delta_90k, sample_file_sha1)
        select r.composite_id,
               case when r.run_offset > 0 then r.local_time_delta_90k else null end,
               p.sample_file_sha1
        from old_recording r join recording_playback p on (r.composite_id = p.composite_id);
    """)
    return notes
