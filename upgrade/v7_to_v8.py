"""Upgrade step 7 -> 8: from Moonfire's last schema to nvr's first.

Database only (DESIGN.md, "Compatibility with Moonfire NVR"):
- `recording_integrity` gains `sample_file_blake2b_32`, a 32-byte blake2b of
  the sample file, which nvr computes while writing and `check` can verify.
  Null for recordings made before the upgrade; Moonfire's blake3 values stay
  in `sample_file_blake3`, kept but not verified.
- Every unrevoked session is revoked (revocation_reason 2, detail "algorithm
  change", now): nvr stores a blake2b of the session id where Moonfire stored
  a blake3, so no existing cookie could match anyway, and the rows would
  otherwise look valid. Users log in again.
- Passwords need nothing: Moonfire's scrypt hashes still verify and are
  replaced with argon2id at each user's next login (auth.py).
- `recording` is rebuilt if its `open_id` lacks `references open (id)`:
  Moonfire's own 6 -> 7 step (server/db/upgrade/v6_to_v7.rs) recreated the
  table without it, while a fresh v7 (v7.sql), our 6 -> 7 and schema.sql
  have it. SQLite's 12-step ALTER TABLE procedure (lang_altertable.html §7),
  with foreign keys off for this step (the driver's `FOREIGN_KEYS_OFF`):
  create `new_recording`, copy every row, drop `recording` (its indexes and
  triggers go with it), rename `new_recording` to `recording` (the legacy
  rename, so that a view naming `recording`, in no schema of ours or
  Moonfire's, doesn't fail it), recreate the indexes and triggers from their
  saved SQL, then `pragma foreign_key_check`. recording_integrity and
  recording_playback reference `recording` by name, so they are untouched
  (renaming `recording` away instead, as 6 -> 7 does, would retarget them
  and force copying recording_playback, the largest table). A recording
  whose open_id names no `open` row stops the upgrade first, with the SQL
  that adds the missing rows.

After this, a Moonfire binary refuses the database as "too new", which is
correct since the hashes differ. The result matches schema.sql.
"""

from __future__ import annotations

import sqlite3

from upgrade.common import UpgradeError, exec_script

TITLE = "nvr's version: blake2b integrity column; revokes sessions (hash algorithm change)"

REVOKED_ALGORITHM_CHANGE = 2

# The driver turns foreign keys off around this step, so that `recording` can be
# dropped and recreated under the rows that reference it (see the docstring).
FOREIGN_KEYS_OFF = True

# Version 8's (and 7's) `recording`, as in schema.sql, under a temporary name.
_RECORDING_COLUMNS = (
    "composite_id, open_id, stream_id, run_offset, flags, sample_file_bytes, "
    "start_time_90k, prev_media_duration_90k, prev_runs, wall_duration_90k, "
    "media_duration_delta_90k, video_samples, video_sync_samples, video_sample_entry_id, "
    "end_reason")
_CREATE_NEW_RECORDING = """
    create table new_recording (
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
"""


def _open_id_has_foreign_key(conn: sqlite3.Connection) -> bool:
    # foreign_key_list rows: (id, seq, table, from, to, on_update, on_delete, match)
    return any(r[2] == "open" and r[3] == "open_id"
               for r in conn.execute("pragma foreign_key_list(recording)"))


def _rebuild_recording(conn: sqlite3.Connection) -> int:
    """Recreates `recording` as schema.sql has it, keeping every row; returns the count.

    The step numbers are those of SQLite's procedure (lang_altertable.html §7); 1, 2,
    11 and 12 (foreign keys off, begin, commit, foreign keys on) are the driver's.
    """
    if conn.execute("pragma foreign_keys").fetchone()[0]:
        # The drop would check (and fail on) every recording_playback row.
        raise RuntimeError("rebuilding recording needs foreign keys off (FOREIGN_KEYS_OFF)")
    orphans, example = conn.execute(
        "select count(*), min(composite_id) from recording "
        "where open_id not in (select id from open)").fetchone()
    if orphans:
        raise UpgradeError(
            f"{orphans} recording(s) name an open_id that is not in the open table (e.g. "
            f"composite_id {example}), so recording.open_id can't reference open (id). "
            f"Add placeholder opens with `insert into open "
            f"(id, uuid) select distinct open_id, randomblob(16) from recording where open_id "
            f"not in (select id from open);` in `nvr.py sql`, then rerun `nvr.py upgrade`")
    # Step 3: what goes with the table (autoindexes have no SQL and need none).
    dependents = [sql for (sql,) in conn.execute(
        "select sql from sqlite_master where tbl_name = 'recording' "
        "and type in ('index', 'trigger') and sql is not null order by type, name")]
    exec_script(conn, _CREATE_NEW_RECORDING)  # step 4
    conn.execute(f"insert into new_recording ({_RECORDING_COLUMNS}) "  # step 5
                 f"select {_RECORDING_COLUMNS} from recording")
    rows = conn.execute("select count(*) from new_recording").fetchone()[0]
    conn.execute("drop table recording")  # step 6
    # Step 7. legacy_alter_table: a plain rename re-resolves every view and trigger in
    # the schema and fails on any that names the (now missing) `recording`; the
    # legacy rename leaves them alone, and their text names the new table anyway.
    legacy = conn.execute("pragma legacy_alter_table").fetchone()[0]
    conn.execute("pragma legacy_alter_table = on")
    try:
        conn.execute("alter table new_recording rename to recording")
    finally:
        conn.execute(f"pragma legacy_alter_table = {int(legacy)}")
    for sql in dependents:  # step 8
        conn.execute(sql)
    bad = conn.execute("pragma foreign_key_check").fetchall()  # step 10
    if bad:
        table, rowid, parent, _fkid = bad[0]
        raise UpgradeError(
            f"{len(bad)} row(s) reference missing rows (e.g. {table} row {rowid} -> "
            f"{parent}). List them with `pragma "
            f"foreign_key_check;` in `nvr.py sql`, add the missing rows or delete the "
            f"orphans, then rerun `nvr.py upgrade`")
    return rows


def run(conn: sqlite3.Connection, args) -> list[str]:
    notes = []
    if not _open_id_has_foreign_key(conn):
        rows = _rebuild_recording(conn)
        notes.append(f"recording rebuilt with open_id's foreign key to open "
                     f"(Moonfire's 6 -> 7 left it out); {rows} rows kept")
    exec_script(conn, """
        alter table recording_integrity add column sample_file_blake2b_32 blob
            check (length(sample_file_blake2b_32) = 32);
    """)
    revoked = conn.execute("""
        update user_session
        set revocation_time_sec = cast(strftime('%s', 'now') as int),
            revocation_reason = ?,
            revocation_reason_detail = 'algorithm change'
        where revocation_reason is null
    """, (REVOKED_ALGORITHM_CHANGE,)).rowcount
    return notes + [f"{revoked} sessions revoked (users log in again)"]
