"""Upgrade step 2 -> 3: sample files are renamed from uuids to composite ids;
the transitional tables of version 2 are dropped.

Version 2 only ever exists between 1->2 and this step (or after a crash
during this step), so there is exactly one sample file dir, and it has a
last complete open. Its path comes from the database (1->2 stored the
`--sample-file-dir` it was given).

Safety check, before any file is touched: the dir's `meta` file must match
the database (dirmeta.check_consistent: database uuid, dir uuid, open), so a
different disk mounted at the path is refused with nothing changed.

Then:
1. Take an exclusive flock on the dir.
2. Rename each recording's file from its uuid ("e69d45e8-cba6-...") to its
   composite id as 16 hex digits ("0000000100000001", reference §3.1).
   Renames are idempotent for a rerun: a missing uuid file whose new name
   exists was renamed by an interrupted earlier attempt; a file missing under
   both names is logged (`nvr.py check` will report the recording).
   Crash point: `upgrade-v2-to-v3-after-rename` (after the first rename).
3. fsync the dir, so the renames are durable before the database says 3.
4. Rebuild `recording_playback` without uuid and sha1 (the sha1 moved to
   `recording_integrity` in 1->2) and drop the `old_*` tables.

An interrupted step leaves the database at 2 with some files renamed; the
rerun finishes the renames. Restoring a version 1 backup after this step has
run needs the renames undone too (docs/upgrade.md).
"""

from __future__ import annotations

import logging
import sqlite3
import uuid as uuidlib

from upgrade import dirmeta, fsops
from upgrade.common import UpgradeError, crash_point, exec_script

logger = logging.getLogger(__name__)

TITLE = "renames sample files from uuids to composite ids"


def db_dir_meta(conn: sqlite3.Connection, dir_id: int) -> dirmeta.DirMeta:
    """What the database says the dir's meta file should contain (schema 2-6)."""
    (db_uuid,) = conn.execute("select uuid from meta").fetchone()
    dir_uuid, open_id, open_uuid = conn.execute("""
        select d.uuid, d.last_complete_open_id, o.uuid
        from sample_file_dir d left join open o on (d.last_complete_open_id = o.id)
        where d.id = ?
    """, (dir_id,)).fetchone()
    if open_id is not None and open_uuid is None:
        raise UpgradeError(f"sample_file_dir {dir_id} names open {open_id}, which is missing "
                           f"from the open table; the database is damaged")
    last = dirmeta.Open(open_id, bytes(open_uuid)) if open_id is not None else None
    return dirmeta.DirMeta(db_uuid=bytes(db_uuid), dir_uuid=bytes(dir_uuid),
                           last_complete_open=last)


def check_meta(d: fsops.Dir, expected: dirmeta.DirMeta) -> dirmeta.DirMeta:
    """Reads the dir's meta file and checks it against the database's view."""
    data = d.read("meta")
    if data is None:
        raise UpgradeError(f"sample file dir {d.path} has no meta file, so it can't be shown "
                           f"to belong to this database. Is the right disk mounted there?")
    try:
        actual, _ = dirmeta.decode_file(data)
    except dirmeta.DecodeError as e:
        raise UpgradeError(f"sample file dir {d.path} has an unreadable meta file ({e})") from e
    problem = dirmeta.check_consistent(expected, actual)
    if problem:
        raise UpgradeError(f"sample file dir {d.path} does not match this database: {problem}. "
                           f"Is the right disk mounted there, and is this the right database?")
    return actual


def composite_id_name(composite_id: int) -> str:
    return f"{composite_id >> 32:08x}{composite_id & 0xFFFFFFFF:08x}"


def run(conn: sqlite3.Connection, args) -> list[str]:
    dirs = conn.execute("select id, path from sample_file_dir").fetchall()
    files = fsops.files_for(args)
    renames = [(cid, str(uuidlib.UUID(bytes=bytes(u))), composite_id_name(cid))
               for cid, u in conn.execute(
                   "select composite_id, sample_file_uuid from recording_playback "
                   "order by composite_id")]
    if renames and len(dirs) != 1:
        raise UpgradeError(f"a version 2 database should have exactly one sample file dir; "
                           f"this one has {len(dirs)}")
    missing = 0
    for dir_id, path in dirs:
        with files.open_dir(path) as d:  # step 1
            check_meta(d, db_dir_meta(conn, dir_id))
            for i, (cid, old, new) in enumerate(renames):  # step 2
                if not d.rename(old, new) and not d.exists(new):
                    logger.warning("sample file %s of recording %d/%d is missing from %s",
                                   old, cid >> 32, cid & 0xFFFFFFFF, path)
                    missing += 1
                if i == 0:
                    crash_point("upgrade-v2-to-v3-after-rename")
            d.sync()  # step 3

    exec_script(conn, """
        alter table recording_playback rename to old_recording_playback;
        create table recording_playback (
          composite_id integer primary key references recording (composite_id),
          video_index blob not null check (length(video_index) > 0)
        );
        insert into recording_playback
        select composite_id, video_index from old_recording_playback;
        drop table old_recording_playback;
        drop table old_recording;
        drop table old_camera;
        drop table old_video_sample_entry;
    """)
    notes = [f"{len(renames) - missing} sample files renamed to composite ids"]
    if missing:
        notes.append(f"{missing} sample files are missing (see the log); `nvr.py check` "
                     f"will report their recordings")
    return notes
