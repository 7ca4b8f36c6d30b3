"""`nvr.py upgrade`: brings a Moonfire NVR database (schema 0-7) or an older
nvr database to the current schema (8), in place, one version at a time.

Files: `<db dir>/db` (the SQLite database, locked through the directory as
every nvr command does), `<db dir>/db.pre-upgrade-v<N>` (the backup made
before upgrading from version N), and, for steps 1->2, 2->3 and 4->5, the
sample file dirs (their `meta` files and sample file names; see fsops.py).

One module per step, `vN_to_vN+1.py`, each with a docstring saying what it
changes and why, a one-line `TITLE`, and `run(conn, args)`, which may return
notes for the user ("3 sessions revoked"). Steps use raw SQL and frozen
helpers in this package only, never today's `db.py`/`dir.py`, whose idea of
the schema moves on. `vN.sql` are frozen snapshots of the schemas the test
compares upgraded databases with (0, 1, 3, 5, 6, 7; 2 and 4 are
transitional; 8 is `schema.sql`). A schema change of ours is a new version:
a new step, the previous `schema.sql` frozen as `vN.sql`, a longer STEPS.

The procedure (`run`):
1. Lock the database directory (exclusive; shared for --dry-run) and open
   the database with the integrity pragmas.
2. Read the version (max(version.id)); refuse one newer than ours, or a
   database with no version table (docs/upgrade.md has the manual step).
3. Check the command line covers every step to run (1->2 needs
   --sample-file-dir), before anything changes.
4. Unless --no-backup: copy the database with the SQLite backup API to
   `db.pre-upgrade-v<N>` (written as .tmp, created 0600, fsynced, renamed).
5. Set journal_mode to --preset-journal (default delete: huge transactions
   are safer in rollback-journal mode on old SQLite).
6. For each version N below ours: BEGIN IMMEDIATE, the step's run, insert
   the `version` row N+1, COMMIT. A failure or interruption rolls the step
   back, so the database is always at some whole version; steps that touch
   files do so in an order that a rerun completes (see each step). A step
   with `FOREIGN_KEYS_OFF = True` may drop and recreate a table that others
   reference (SQLite's 12-step ALTER TABLE procedure): foreign keys are off
   for its transaction (the pragma is a no-op inside one), and the step runs
   `pragma foreign_key_check` itself before the commit.
7. Unless --no-vacuum: leave WAL mode if in it, `page_size = 16384`,
   `VACUUM`. Then `journal_mode = wal`. Interrupting this is harmless; a
   rerun at the current version just redoes it.

--dry-run does steps 1-3, then runs the steps on a temporary copy of the
database with file changes kept in memory (fsops.DryRunFiles), and prints
what each step changes: tables, row counts and files. Nothing else changes.

Errors are `UpgradeError`s whose message says what to do.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sqlite3
import sys
import tempfile
import time
import urllib.parse

from upgrade import (compare, fsops, v0_to_v1, v1_to_v2, v2_to_v3, v3_to_v4, v4_to_v5,
                     v5_to_v6, v6_to_v7, v7_to_v8)
from upgrade.common import UpgradeError, crash_point

__all__ = ["UpgradeError", "add_arguments", "run", "run_steps", "STEPS", "TARGET_VERSION"]

# STEPS[n] upgrades version n to n + 1.
STEPS = (v0_to_v1, v1_to_v2, v2_to_v3, v3_to_v4, v4_to_v5, v5_to_v6, v6_to_v7, v7_to_v8)
TARGET_VERSION = len(STEPS)

# Versions whose schema is frozen in vN.sql and compared by the test.
FROZEN_VERSIONS = (0, 1, 3, 5, 6, 7)

PAGE_SIZE = 16384
UPGRADE_NOTES = "upgraded by nvr upgrade"
JOURNAL_MODES = ("delete", "truncate", "persist", "memory", "wal", "off")

_HERE = os.path.dirname(os.path.abspath(__file__))


def frozen_schema_path(version: int) -> str:
    """`upgrade/v<N>.sql`, or `schema.sql` for the current version."""
    if version == TARGET_VERSION:
        return os.path.join(os.path.dirname(_HERE), "schema.sql")
    return os.path.join(_HERE, f"v{version}.sql")


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sample-file-dir", action="append", metavar="PATH",
        help="the sample file directory of a schema 0 or 1 (Moonfire) database, needed to "
             "upgrade past version 1; later versions store their dirs' paths themselves")
    parser.add_argument(
        "--preset-journal", default="delete", choices=JOURNAL_MODES, metavar="MODE",
        help="SQLite journal_mode during the upgrade (default: delete). 'off' saves space "
             "but an interruption then corrupts the database: keep the backup")
    parser.add_argument(
        "--no-vacuum", action="store_true",
        help="skip the final VACUUM (and so the page size change to 16384)")
    parser.add_argument(
        "--no-backup", action="store_true",
        help="don't write db.pre-upgrade-v<N> before upgrading (make your own backup)")
    parser.add_argument(
        "--dry-run", action="store_true",
        help="print the steps and what each would change, using a temporary copy of the "
             "database; change nothing")


def get_version(conn: sqlite3.Connection) -> int | None:
    """max(version.id), or None if there is no version table."""
    if not conn.execute("select 1 from sqlite_master where type = 'table' "
                        "and name = 'version'").fetchone():
        return None
    return conn.execute("select max(id) from version").fetchone()[0]


def _connect(path: str, read_only: bool, pragmas) -> sqlite3.Connection:
    uri = f"file:{urllib.parse.quote(path)}?mode={'ro' if read_only else 'rw'}"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None)
    for p in ([pragmas] if isinstance(pragmas, str) else pragmas):
        conn.execute(p)
    return conn


def _step_name(version: int) -> str:
    return f"{version} -> {version + 1}"


def run_step(conn: sqlite3.Connection, args, version: int) -> list[str]:
    """Runs STEPS[version] and records version + 1, in one transaction.

    Returns the step's notes: lines saying what it did, for the user (a
    step's `run` may return them; None means none).
    """
    step = STEPS[version]
    fk_was_on = False
    if getattr(step, "FOREIGN_KEYS_OFF", False):
        # Only outside a transaction does this pragma take effect.
        fk_was_on = bool(conn.execute("pragma foreign_keys").fetchone()[0])
        conn.execute("pragma foreign_keys = off")
        if conn.execute("pragma foreign_keys").fetchone()[0]:
            raise RuntimeError(f"step {_step_name(version)} needs foreign keys off, but a "
                               f"transaction is open")
    try:
        conn.execute("begin immediate")
        try:
            notes = step.run(conn, args) or []
            conn.execute("insert into version (id, unix_time, notes) "
                         "values (?, cast(strftime('%s', 'now') as int), ?)",
                         (version + 1, UPGRADE_NOTES))
            crash_point(f"upgrade-v{version}-to-v{version + 1}-before-commit")
            conn.execute("commit")
        except BaseException:
            # Whatever happened (an error, Ctrl-C), the step is all or nothing.
            if conn.in_transaction:
                conn.execute("rollback")
            raise
    finally:
        if fk_was_on:
            conn.execute("pragma foreign_keys = on")
    return notes


def run_steps(conn: sqlite3.Connection, args, target: int = TARGET_VERSION,
              quiet: bool = False) -> int:
    """Upgrades `conn` from its version to `target`; returns the start version.

    The core of `run`, without locking, backup or vacuum; tests call it to go
    one version at a time. `args` needs `sample_file_dir` (list or None) and
    optionally `files` (an fsops.Files; RealFiles if absent).
    """
    start = get_version(conn)
    if start is None:
        raise UpgradeError("this database has no version table: it predates Moonfire schema 0. "
                           "Apply the manual step in docs/upgrade.md "
                           "(\"Unversioned to version 0\") first")
    if start > TARGET_VERSION:
        raise UpgradeError(f"database schema version {start} is newer than this nvr supports "
                           f"({TARGET_VERSION}); use a newer nvr. Nothing was changed")
    for v in range(start, target):
        t0 = time.monotonic()
        if not quiet:
            say(f"[{_step_name(v)}] {STEPS[v].TITLE} ...")
        notes = run_step(conn, args, v)
        if not quiet:
            for n in notes:
                say(f"[{_step_name(v)}]   {n}")
            say(f"[{_step_name(v)}] done in {time.monotonic() - t0:.1f} s; "
                f"the database is now at version {v + 1}")
    return start


def _fsync_path(path: str, flags: int = os.O_RDONLY) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def backup(conn: sqlite3.Connection, db_dir: str, version: int) -> str:
    """Copies the database to `db.pre-upgrade-v<version>` with the backup API."""
    dest = os.path.join(db_dir, f"db.pre-upgrade-v{version}")
    tmp = dest + ".tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    # Private like the database (db.py): created 0600 whatever the umask, before
    # SQLite writes into it (it would make it 0644 less the umask).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        if os.fstat(fd).st_mode & 0o777 != 0o600:
            os.fchmod(fd, 0o600)  # a umask that took owner bits
    finally:
        os.close(fd)
    out = sqlite3.connect(tmp)
    try:
        conn.backup(out)
    finally:
        out.close()
    _fsync_path(tmp)  # the copy's bytes, before the rename publishes it
    os.replace(tmp, dest)
    _fsync_path(db_dir)  # the rename itself
    return dest


def _warn_if_short_of_space(db_dir: str, db_path: str) -> None:
    size = os.path.getsize(db_path)
    free = shutil.disk_usage(db_dir).free
    if free < 3 * size:
        say(f"warning: {free >> 20} MiB free in {db_dir}; an upgrade can need about three "
            f"more copies of the {size >> 20} MiB database (backup, journal, vacuum). "
            f"See docs/upgrade.md, \"Disk space\"")


def _journal_mode(conn: sqlite3.Connection, mode: str) -> str:
    if mode not in JOURNAL_MODES:
        raise UpgradeError(f"unknown journal mode {mode!r}; use one of {', '.join(JOURNAL_MODES)}")
    return conn.execute(f"pragma journal_mode = {mode}").fetchone()[0]


def finish(conn: sqlite3.Connection, no_vacuum: bool) -> None:
    """Page size, vacuum and WAL, as `nvr.py init` leaves a new database."""
    page_size = conn.execute("pragma page_size").fetchone()[0]
    if not no_vacuum and page_size != PAGE_SIZE:
        # page_size only changes through a VACUUM outside WAL mode.
        if conn.execute("pragma journal_mode").fetchone()[0] == "wal":
            _journal_mode(conn, "delete")
        say(f"Vacuuming to page size {PAGE_SIZE}; this can take minutes on a large database. "
            f"Safe to interrupt: the upgrade itself is complete, and rerunning "
            f"`nvr.py upgrade` redoes only this")
        conn.execute(f"pragma page_size = {PAGE_SIZE}")
        conn.execute("vacuum")
    mode = _journal_mode(conn, "wal")
    if mode != "wal":
        raise UpgradeError(f"could not switch the database to WAL mode (it is in {mode!r} "
                           f"mode); rerun `nvr.py upgrade`")


def run(args) -> int:
    """The `nvr.py upgrade` command; returns the exit code."""
    import db as dbmod  # only here: the steps must not depend on today's db.py

    db_dir = args.db_dir
    db_path = os.path.join(db_dir, "db")
    if not os.path.exists(db_path):
        raise UpgradeError(f"no database at {db_path}; pass --db-dir with the directory that "
                           f"holds Moonfire's or nvr's `db` file")
    try:
        lock_fd = dbmod.lock_db_dir(db_dir, read_only=args.dry_run)
    except dbmod.DbError as e:
        raise UpgradeError(str(e)) from e
    try:
        conn = _connect(db_path, args.dry_run, dbmod.INTEGRITY_PRAGMAS)
        try:
            return _run_locked(conn, args, db_dir, db_path, dbmod.INTEGRITY_PRAGMAS)
        finally:
            conn.close()
    finally:
        os.close(lock_fd)


def _run_locked(conn: sqlite3.Connection, args, db_dir: str, db_path: str, pragmas) -> int:
    version = get_version(conn)
    if version is None or version > TARGET_VERSION:
        run_steps(conn, args, quiet=True)  # raises the explanatory error
    for v in range(version, TARGET_VERSION):
        check = getattr(STEPS[v], "check_args", None)
        if check is not None:
            check(args)
    if args.sample_file_dir and version > 1:
        say("note: --sample-file-dir is only used when upgrading from version 0 or 1; "
            "later versions keep their dirs' paths in the database")
    if args.dry_run:
        return _dry_run(conn, args, version, pragmas)

    if version == TARGET_VERSION:
        say(f"{db_path} is already at schema version {TARGET_VERSION}; nothing to upgrade")
        finish(conn, args.no_vacuum)
        return 0

    say(f"Upgrading {db_path} from schema version {version} to {TARGET_VERSION}.")
    _warn_if_short_of_space(db_dir, db_path)
    if not args.no_backup:
        say(f"Backing up to {os.path.join(db_dir, f'db.pre-upgrade-v{version}')} ...")
        dest = backup(conn, db_dir, version)
        say(f"Backup written: {dest}")
    actual = _journal_mode(conn, args.preset_journal)
    say(f"journal_mode is now {actual} (requested {args.preset_journal})")
    if actual == "off":
        say("WARNING: with journal_mode off, an interruption from now until 'Done' can "
            "corrupt the database; if that happens, restore the backup")
    else:
        say("Each step is one transaction. It is safe to interrupt at any time (Ctrl-C, a "
            "crash, power loss): the database stays at the last completed version and "
            "rerunning `nvr.py upgrade` carries on from there")
    step_args = argparse.Namespace(**vars(args))
    step_args.files = fsops.RealFiles()
    try:
        run_steps(conn, step_args)
    except KeyboardInterrupt:
        say(f"Interrupted; the database is at version {get_version(conn)}. "
            f"Rerun `nvr.py upgrade` to continue")
        raise
    finish(conn, args.no_vacuum)
    say(f"Done: {db_path} is at schema version {TARGET_VERSION} in WAL mode. Verify it with "
        f"`nvr.py check` and `nvr.py run --read-only` before starting nvr normally; then the "
        f"backup can go (docs/upgrade.md)")
    return 0


def _table_shapes(conn: sqlite3.Connection) -> dict[str, tuple[list[str], int]]:
    """table -> (column names, row count)."""
    out = {}
    for (t,) in conn.execute("select name from sqlite_master where type = 'table' "
                             "and name not like 'sqlite_%' order by name").fetchall():
        q = compare._quote(t)
        cols = [r[1] for r in conn.execute(f"pragma table_info({q})")]
        out[t] = (cols, conn.execute(f"select count(*) from {q}").fetchone()[0])
    return out


def _describe_change(before: dict, after: dict) -> list[str]:
    lines = []
    for t in sorted(set(before) | set(after)):
        if t == "version":
            continue  # every step adds its row
        if t not in after:
            lines.append(f"  drops table {t} ({before[t][1]} rows)")
        elif t not in before:
            lines.append(f"  creates table {t} ({after[t][1]} rows)")
        else:
            (cols0, n0), (cols1, n1) = before[t], after[t]
            parts = []
            added = [c for c in cols1 if c not in cols0]
            removed = [c for c in cols0 if c not in cols1]
            if added:
                parts.append("adds " + ", ".join(added))
            if removed:
                parts.append("removes " + ", ".join(removed))
            if n0 != n1:
                parts.append(f"rows {n0} -> {n1}")
            if parts:
                lines.append(f"  table {t}: " + "; ".join(parts))
    return lines


def _describe_files(actions: list[str]) -> list[str]:
    by_verb: dict[str, list[str]] = {}
    for a in actions:
        by_verb.setdefault(a.split()[1], []).append(a)
    lines = []
    for verb, items in by_verb.items():
        if len(items) <= 3:
            lines.extend(f"  {a}" for a in items)
        else:
            lines.append(f"  would {verb} {len(items)} files, e.g. {items[0].split(' ', 2)[2]}")
    return lines


def _dry_run(conn: sqlite3.Connection, args, version: int, pragmas) -> int:
    print(f"Dry run: the database is at schema version {version}; "
          f"nvr's is {TARGET_VERSION}. Nothing will be changed.")
    if version == TARGET_VERSION:
        print("No steps to run.")
        return 0
    print(f"A real run would first back up the database to db.pre-upgrade-v{version}"
          + (" (skipped: --no-backup)" if args.no_backup else "") + ".")
    with tempfile.TemporaryDirectory(prefix="nvr-upgrade-dry-run-") as tmp:
        copy_path = os.path.join(tmp, "db")
        out = sqlite3.connect(copy_path)
        try:
            conn.backup(out)
        finally:
            out.close()
        copy = _connect(copy_path, False, pragmas)
        try:
            files = fsops.DryRunFiles()
            step_args = argparse.Namespace(**vars(args))
            step_args.files = files
            for v in range(version, TARGET_VERSION):
                print(f"Step {_step_name(v)}: {STEPS[v].TITLE}")
                before = _table_shapes(copy)
                del files.actions[:]
                try:
                    notes = run_step(copy, step_args, v)
                except UpgradeError as e:
                    raise UpgradeError(f"dry run: step {_step_name(v)} would refuse: {e}") from e
                lines = [f"  {n}" for n in notes]
                lines += _describe_change(before, _table_shapes(copy))
                lines += _describe_files(files.actions)
                print("\n".join(lines) if lines else "  (no visible change)")
        finally:
            copy.close()
    print(f"Then: page size {PAGE_SIZE} and VACUUM"
          + (" (skipped: --no-vacuum)" if args.no_vacuum else "") + ", and WAL mode.")
    return 0
