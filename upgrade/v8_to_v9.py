"""Upgrade step 8 -> 9: protected footage (issue #17).

Database only: a new, empty `protection` table and its index, as schema.sql
has them. A protection keeps a time range of one stream (or of every stream
of a camera, stream_id null) from retention: recordings overlapping it are
never deleted by retainBytes, retainDays or the free-space floor. Nothing
existing changes meaning, so the step has nothing to convert and no notes.

A Moonfire binary already refuses a version 8 database; version 9 changes
nothing there. Going back to an nvr that only knows version 8 means restoring
`db.pre-upgrade-v8` (recordings made since are lost to it, docs/upgrade.md) or,
by hand, `drop table protection; delete from version where id = 9;` in
`nvr.py sql`, which forgets the protections.
"""

from __future__ import annotations

import sqlite3

from upgrade.common import exec_script

TITLE = "protected footage: the protection table"

# As in schema.sql at version 9 (comments there).
_CREATE = """
    create table protection (
      id integer primary key,
      camera_id integer not null references camera (id),
      stream_id integer references stream (id),
      start_time_90k integer not null check (start_time_90k > 0),
      end_time_90k integer not null,
      label text not null check (length(label) <= 256),
      created_by text not null check (length(created_by) between 1 and 256),
      created_time_90k integer not null,
      updated_time_90k integer not null,
      check (end_time_90k > start_time_90k)
    );
    create index protection_camera on protection (camera_id, start_time_90k);
"""


def run(conn: sqlite3.Connection, args) -> None:
    exec_script(conn, _CREATE)
