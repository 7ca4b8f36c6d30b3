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

After this, a Moonfire binary refuses the database as "too new", which is
correct since the hashes differ. The result matches schema.sql.
"""

from __future__ import annotations

import sqlite3

from upgrade.common import exec_script

TITLE = "nvr's version: blake2b integrity column; revokes sessions (hash algorithm change)"

REVOKED_ALGORITHM_CHANGE = 2


def run(conn: sqlite3.Connection, args) -> list[str]:
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
    return [f"{revoked} sessions revoked (users log in again)"]
