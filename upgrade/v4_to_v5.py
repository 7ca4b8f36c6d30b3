"""Upgrade step 4 -> 5: sample file dir meta files move to the fixed 512-byte
format; leftover uuid-named garbage files are deleted.

No schema change (version 4 was a half-finished 3->5). For each sample file
dir in the database (paths come from the database):
1. Take an exclusive flock on the dir.
2. Read `meta` (a 512-byte file is already in the new format, anything else
   is the version 3 format: a bare DirMeta message). The safety check: it
   must match the database (dirmeta.check_consistent), or the step refuses,
   changing nothing.
3. Rewrite it in the fixed format (varint length, message, NUL padding to
   512 bytes), as `meta.tmp`, fsync, rename over `meta`. This is the last
   rewrite that needs free space; from now on nvr rewrites the one sector in
   place, so a completely full disk can be recovered (Moonfire #65).
   Skipped if the file is already 512 bytes. Crash point:
   `upgrade-v4-to-v5-after-meta`; the database is still at 4 and the rerun
   finds a 512-byte meta, checks it and goes on with step 4.
4. Unlink any file named like a uuid: garbage that Moonfire's 1->3 upgrade
   failed to delete before its commit 433be217. Sample files are named by
   composite ids now, so nothing else looks like a uuid.
5. fsync the dir if anything changed, so the rename and unlinks are durable
   before the database commits version 5.
"""

from __future__ import annotations

import logging
import sqlite3
import uuid as uuidlib

from upgrade import dirmeta, fsops
from upgrade.common import crash_point
from upgrade.v2_to_v3 import check_meta, db_dir_meta

logger = logging.getLogger(__name__)

TITLE = "sample file dir meta files to the fixed 512-byte format; deletes uuid-named garbage"


def _looks_like_uuid(name: str) -> bool:
    try:
        uuidlib.UUID(name)
    except ValueError:
        return False
    # uuid.UUID also accepts forms no nvr ever wrote ("{...}", "urn:uuid:...");
    # only delete the hyphenated and the bare 32-hex-digit forms.
    return len(name) in (32, 36)


def run(conn: sqlite3.Connection, args) -> list[str]:
    files = fsops.files_for(args)
    notes = []
    for dir_id, path in conn.execute("select id, path from sample_file_dir").fetchall():
        with files.open_dir(path) as d:  # step 1
            data = d.read("meta")  # step 2
            meta = check_meta(d, db_dir_meta(conn, dir_id))
            rewrite = len(data) != dirmeta.FIXED_LEN
            if rewrite:
                d.write_atomic("meta", dirmeta.encode_fixed(meta))  # step 3
                crash_point("upgrade-v4-to-v5-after-meta")
            garbage = [n for n in sorted(d.listdir()) if _looks_like_uuid(n)]
            for name in garbage:  # step 4
                logger.info("removing leftover garbage file %s from %s", name, path)
                d.unlink(name)
            if rewrite or garbage:
                d.sync()  # step 5
        notes.append(f"sample file dir {path}: meta file "
                     f"{'rewritten in' if rewrite else 'already in'} the 512-byte format; "
                     f"{len(garbage)} uuid-named garbage files removed")
    return notes
