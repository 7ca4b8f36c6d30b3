"""`nvr.py upgrade`: brings a Moonfire NVR database (schema 0-7) or an older
nvr database to the current schema (9), in place, one version at a time.

Files: `<db dir>/db` (the SQLite database, locked through the directory as
every nvr command does), `<db dir>/db.pre-upgrade-v<N>` (the backup made
before upgrading from version N), and, for steps 1->2, 2->3 and 4->5, the
sample file dirs (their `meta` files and sample file names; see fsops.py).

One module per step, `vN_to_vN+1.py`, each with a docstring saying what it
changes and why, a one-line `TITLE`, and `run(conn, args)`, which may return
notes for the user ("3 sessions revoked"). Steps use raw SQL and frozen
helpers in this package only, never today's `db.py`/`dir.py`, whose idea of
the schema moves on. `vN.sql` are frozen snapshots of the schemas the test
compares upgraded databases with (0, 1, 3, 5, 6, 7, 8; 2 and 4 are
transitional; 9 is `schema.sql`). A schema change of ours is a new version:
a new step, the previous `schema.sql` frozen as `vN.sql`, a longer STEPS.

The procedure (`run`):
1. Lock the database directory (exclusive; shared for --dry-run), check the
   directory and the database file are writable, and open the database with
   the integrity pragmas.
2. `pragma quick_check`; read the version (max(version.id)); refuse a damaged
   database, one with no version table (docs/upgrade.md has the manual step)
   and a version outside 0..TARGET_VERSION.
3. Check the command line covers every step to run (1->2 needs
   --sample-file-dir).
4. Preflight: run every step on a scratch copy (`db.upgrade-preflight` next
   to the database, no journal, no fsyncs, deleted afterwards) with the
   sample file dirs read but not changed (fsops.DryRunFiles(preflight=True):
   the real run's exclusive locks, and a writability check wherever a step
   would change a file). Whatever any step would refuse (a missing, locked,
   read-only or foreign sample file dir, a missing sample file, a row 6->7 or
   7->8 can't convert) is refused here, before anything changed.
5. Unless --no-backup: copy the database with the SQLite backup API to
   `db.pre-upgrade-v<N>` (written as .tmp, created 0600, fsynced, renamed, dir
   fsynced).
6. Set journal_mode to --preset-journal (default delete: huge transactions
   are safer in rollback-journal mode on old SQLite).
7. For each version N below ours: BEGIN IMMEDIATE, the step's run, insert
   the `version` row N+1, COMMIT. A failure or interruption rolls the step
   back, so the database is always at some whole version; steps that touch
   files do so in an order that a rerun completes (see each step), and fsync
   what they renamed or unlinked before the COMMIT. A step
   with `FOREIGN_KEYS_OFF = True` may drop and recreate a table that others
   reference (SQLite's 12-step ALTER TABLE procedure): foreign keys are off
   for its transaction (the pragma is a no-op inside one), and the step runs
   `pragma foreign_key_check` itself before the commit. What the preflight
   could not foresee (EIO, a full disk, a dir locked meanwhile) stops the run
   with a message naming the version the database is now at, the rerun that
   carries on, and the backup to copy back.
8. Unless --no-vacuum: leave WAL mode if in it, `page_size = 16384`,
   `VACUUM`. Then `journal_mode = wal`. Interrupting this is harmless; a
   rerun at the current version just redoes it.

--dry-run does steps 1-3, then the preflight's trial run on a copy in
$TMPDIR, printing what each step changes: tables, row counts and files.
Nothing else changes.

Every file change (RealFiles' and the backup's) goes through fsops.Calls, the
seam tests use to check the fsyncs and to inject errors. Errors are
`UpgradeError`s, each one line saying what to do; any OSError or
sqlite3.Error is turned into one.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import sqlite3
import sys
import tempfile
import time
import urllib.parse

from upgrade import (compare, fsops, v0_to_v1, v1_to_v2, v2_to_v3, v3_to_v4, v4_to_v5,
                     v5_to_v6, v6_to_v7, v7_to_v8, v8_to_v9)
from upgrade.common import UpgradeError, crash_point, no_crash_points

__all__ = ["UpgradeError", "add_arguments", "run", "run_steps", "STEPS", "TARGET_VERSION"]

# STEPS[n] upgrades version n to n + 1.
STEPS = (v0_to_v1, v1_to_v2, v2_to_v3, v3_to_v4, v4_to_v5, v5_to_v6, v6_to_v7, v7_to_v8,
         v8_to_v9)
TARGET_VERSION = len(STEPS)

# Versions whose schema is frozen in vN.sql and compared by the test.
FROZEN_VERSIONS = (0, 1, 3, 5, 6, 7, 8)

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


def checked_version(conn: sqlite3.Connection) -> int:
    """The database's version, refusing one no step starts from."""
    version = get_version(conn)
    if version is None:
        raise UpgradeError("this database has no version table (or an empty one): it predates "
                           "Moonfire schema 0. Apply the manual step in docs/upgrade.md "
                           "(\"Unversioned to version 0\") first. Nothing was changed")
    if not isinstance(version, int) or version < 0:
        raise UpgradeError(f"database schema version {version!r} is not one Moonfire or nvr "
                           f"ever wrote (they are 0 to {TARGET_VERSION}); is this the right "
                           f"database? Nothing was changed")
    if version > TARGET_VERSION:
        raise UpgradeError(f"database schema version {version} is newer than this nvr supports "
                           f"({TARGET_VERSION}); use a newer nvr. Nothing was changed")
    return version


# How long a statement waits for another process's SQLite lock before failing.
BUSY_TIMEOUT_SEC = 5.0


def _connect(path: str, read_only: bool, pragmas) -> sqlite3.Connection:
    uri = f"file:{urllib.parse.quote(path)}?mode={'ro' if read_only else 'rw'}"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=BUSY_TIMEOUT_SEC)
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
              quiet: bool = False, on_step=None) -> int:
    """Upgrades `conn` from its version to `target`; returns the start version.

    The core of `run`, without locking, backup or vacuum; tests call it to go
    one version at a time. `args` needs `sample_file_dir` (list or None) and
    optionally `files` (an fsops.Files; RealFiles if absent).
    """
    start = checked_version(conn)
    for v in range(start, target):
        if on_step:
            on_step(v)
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


def backup(conn: sqlite3.Connection, db_dir: str, version: int,
           calls: fsops.Calls | None = None) -> str:
    """Copies the database to `db.pre-upgrade-v<version>` with the backup API."""
    calls = calls or fsops.Calls()
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
    fsops.fsync_path(calls, tmp)  # the copy's bytes, before the rename publishes it
    calls.rename(tmp, dest)
    fsops.fsync_path(calls, db_dir)  # the rename itself
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


def run(args, calls: fsops.Calls | None = None) -> int:
    """The `nvr.py upgrade` command; returns the exit code. `calls` is the file
    operations seam (fsops.Calls), for tests."""
    import db as dbmod  # only here: the steps must not depend on today's db.py

    db_dir = args.db_dir
    db_path = os.path.join(db_dir, "db")
    if not os.path.exists(db_path):
        raise UpgradeError(f"no database at {db_path}; pass --db-dir with the directory that "
                           f"holds Moonfire's or nvr's `db` file")
    if not os.path.isfile(db_path):
        raise UpgradeError(f"{db_path} is not a file; pass --db-dir with the directory that "
                           f"holds Moonfire's or nvr's `db` file")
    try:
        lock_fd = dbmod.lock_db_dir(db_dir, read_only=args.dry_run)
    except dbmod.DbError as e:
        raise UpgradeError(str(e)) from e
    try:
        if not args.dry_run:
            _check_db_writable(db_dir, db_path)
        try:
            conn = _connect(db_path, args.dry_run, dbmod.INTEGRITY_PRAGMAS)
            try:
                version = _checked_start(conn, db_path)
            except BaseException:
                conn.close()
                raise
        except sqlite3.Error as e:
            raise UpgradeError(_then(_sqlite_problem(e, db_path), "Nothing was changed")) from e
        try:
            return _run_locked(conn, args, db_dir, db_path, version, dbmod.INTEGRITY_PRAGMAS,
                               calls or fsops.Calls())
        finally:
            conn.close()
    finally:
        os.close(lock_fd)


def _check_db_writable(db_dir: str, db_path: str) -> None:
    """Refuses, before anything changes, a database or directory this process
    can't write: the backup, SQLite's journal and the vacuum go there."""
    for path, what in ((db_dir, "database directory"), (db_path, "database file")):
        why = fsops.why_not_writable(path)
        if why is None:
            continue
        raise UpgradeError(f"{what} {path} is not writable ({why}); the upgrade writes the "
                           f"database, its backup and SQLite's journal in {db_dir}. Run as the "
                           f"user that owns it (e.g. sudo -u moonfire-nvr) or remount it "
                           f"read-write. Nothing was changed")


def _sqlite_problem(e: sqlite3.Error, db_path: str) -> str:
    """A one-line description of an SQLite error, with what to do."""
    msg = str(e)
    if isinstance(e, sqlite3.OperationalError) and "locked" in msg:
        return (f"the database {db_path} is locked by another process ({msg}): close any "
                f"sqlite3 shell or program using it and stop nvr or moonfire-nvr, then rerun")
    if "file is not a database" in msg:
        return (f"{db_path} is not an SQLite database ({msg}); is --db-dir the directory that "
                f"holds Moonfire's or nvr's `db` file?")
    if "malformed" in msg or "corrupt" in msg:
        return (f"the database {db_path} is damaged (SQLite: {msg}); restore it from a backup, "
                f"or try `sqlite3 {db_path} .recover`")
    if "readonly" in msg or "unable to open" in msg:
        return (f"can't write the database {db_path} ({msg}); run as the user that owns it "
                f"and its directory (e.g. sudo -u moonfire-nvr)")
    if "disk is full" in msg:
        return f"the disk holding {db_path} is full ({msg}); see docs/upgrade.md, \"Disk space\""
    return f"SQLite error on {db_path}: {msg}"


def _then(msg: str, more: str) -> str:
    """Two sentences on one line (a message may end with '?' or '.')."""
    return msg + ("" if msg.endswith((".", "?")) else ".") + " " + more


def _os_problem(e: OSError) -> str:
    where = " -> ".join(f"{f}" for f in (e.filename, e.filename2) if f is not None)
    return f"{e.strerror or e}" + (f" ({where})" if where else "")


def _checked_start(conn: sqlite3.Connection, db_path: str) -> int:
    """Checks the database is sound and at a version the upgrade starts from."""
    rows = [r[0] for r in conn.execute("pragma quick_check(10)")]
    if rows != ["ok"]:
        # A row may hold several lines ("*** in database main ***\nOn tree page ...").
        problems = [line for r in rows for line in r.splitlines()
                    if line.strip() and not line.startswith("***")]
        first = problems[0] if problems else rows[0].strip()
        more = f" and {len(problems) - 1} more problems" if len(problems) > 1 else ""
        raise UpgradeError(f"the database {db_path} is damaged (SQLite quick_check: "
                           f"{first}{more}); restore it from a backup, or try "
                           f"`sqlite3 {db_path} .recover`. Nothing was changed")
    return checked_version(conn)


def _run_locked(conn: sqlite3.Connection, args, db_dir: str, db_path: str, version: int,
                pragmas, calls: fsops.Calls) -> int:
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
        _finish_or_explain(conn, args.no_vacuum, db_path)
        return 0

    say(f"Upgrading {db_path} from schema version {version} to {TARGET_VERSION}.")
    _warn_if_short_of_space(db_dir, db_path)
    say("Preflight: running every step on a scratch copy of the database, checking the "
        "sample file dirs without changing them ...")
    _preflight(conn, args, db_path, version, pragmas)
    say("Preflight passed.")
    dest = None
    if not args.no_backup:
        dest = os.path.join(db_dir, f"db.pre-upgrade-v{version}")
        say(f"Backing up to {dest} ...")
        try:
            dest = backup(conn, db_dir, version, calls)
        except OSError as e:
            raise UpgradeError(f"could not write the backup {dest}: {_os_problem(e)}. "
                               f"Nothing was changed") from e
        except sqlite3.Error as e:
            raise UpgradeError(_then(f"could not write the backup {dest}: "
                                     f"{_sqlite_problem(e, dest)}", "Nothing was changed")) from e
        say(f"Backup written: {dest}")
    try:
        actual = _journal_mode(conn, args.preset_journal)
    except sqlite3.Error as e:
        raise UpgradeError(_then(_sqlite_problem(e, db_path), "Nothing was changed")) from e
    say(f"journal_mode is now {actual} (requested {args.preset_journal})")
    if actual == "off":
        say("WARNING: with journal_mode off, an interruption from now until 'Done' can "
            "corrupt the database; if that happens, restore the backup")
    else:
        say("Each step is one transaction. It is safe to interrupt at any time (Ctrl-C, a "
            "crash, power loss): the database stays at the last completed version and "
            "rerunning `nvr.py upgrade` carries on from there")
    step_args = argparse.Namespace(**vars(args))
    step_args.files = fsops.RealFiles(calls)
    progress = [version]  # the step being run

    def on_step(v: int) -> None:
        progress[0] = v

    try:
        run_steps(conn, step_args, on_step=on_step)
    except BaseException as e:
        state = _state_after_failure(conn, version, progress[0], db_path, dest)
        step = f"step {_step_name(progress[0])}"
        if isinstance(e, KeyboardInterrupt):
            say(f"Interrupted during {step}. {state}")
            raise
        if isinstance(e, UpgradeError):
            raise UpgradeError(_then(f"{step} refused: {e}", state)) from e
        if isinstance(e, OSError):
            raise UpgradeError(f"{step} failed: {_os_problem(e)}. {state}") from e
        if isinstance(e, sqlite3.Error):
            raise UpgradeError(_then(f"{step} failed: {_sqlite_problem(e, db_path)}",
                                     state)) from e
        say(f"{step} failed unexpectedly (a bug; please report it with the traceback "
            f"below). {state}")
        raise
    _finish_or_explain(conn, args.no_vacuum, db_path)
    say(f"Done: {db_path} is at schema version {TARGET_VERSION} in WAL mode. Verify it with "
        f"`nvr.py check` and `nvr.py run --read-only` before starting nvr normally; then the "
        f"backup can go (docs/upgrade.md)")
    return 0


def _finish_or_explain(conn: sqlite3.Connection, no_vacuum: bool, db_path: str) -> None:
    try:
        finish(conn, no_vacuum)
    except (OSError, sqlite3.Error, UpgradeError) as e:
        what = (_sqlite_problem(e, db_path) if isinstance(e, sqlite3.Error)
                else _os_problem(e) if isinstance(e, OSError) else str(e))
        raise UpgradeError(f"the upgrade itself is complete (the database is at version "
                           f"{TARGET_VERSION}), but the final vacuum or switch to WAL mode "
                           f"failed: {what}. Rerun `nvr.py upgrade` (add --no-vacuum if "
                           f"space is short) to finish") from e


# Steps that change sample file dirs (see their docstrings).
_FILE_STEPS = (1, 2, 4)


def _state_after_failure(conn: sqlite3.Connection, start: int, failed: int, db_path: str,
                         backup_path: str | None) -> str:
    """Where a failed or interrupted upgrade left things, and the two ways on."""
    try:
        if conn.in_transaction:
            conn.execute("rollback")
        now = get_version(conn)
    except sqlite3.Error as e:
        now = None
        where = (f"The database's version can't be read now ({e}); it is at {start} or later "
                 f"(`nvr.py upgrade --dry-run` says which)")
    if now is not None:
        where = (f"The database is still at version {start}" if now == start else
                 f"The database is now at version {now} (the upgrade started at {start})")
    if backup_path:
        back = f"copy {backup_path} over {db_path} (with no db-journal, db-wal or db-shm left)"
    else:
        back = f"restore your own backup of the version {start} database"
    if any(start <= v <= failed for v in _FILE_STEPS):
        back += " and undo the sample file dir changes as docs/upgrade.md, \"Going back\" says"
    return (f"{where}. Fix the cause and rerun `nvr.py upgrade` to carry on from there, or go "
            f"back: {back}")


@contextlib.contextmanager
def _quiet_step_loggers():
    loggers = [logging.getLogger(m.__name__) for m in STEPS]
    for lg in loggers:
        lg.disabled = True
    try:
        yield
    finally:
        for lg in loggers:
            lg.disabled = False


def _preflight(conn: sqlite3.Connection, args, db_path: str, version: int, pragmas) -> None:
    """Runs every step on a scratch copy next to the database, with the sample
    file dirs checked (exclusive locks, contents, meta files, writability) but
    unchanged, so that whatever a step would refuse is refused before the
    first real change. The copy goes where the real work will need the space
    anyway, not in $TMPDIR (often a small tmpfs)."""
    scratch = db_path + ".upgrade-preflight"
    step = [version]
    try:
        with _quiet_step_loggers():  # the real run logs the same warnings
            _trial_run(conn, args, version, pragmas, scratch, fsops.DryRunFiles(preflight=True),
                       on_step=lambda v: step.__setitem__(0, v))
    except (UpgradeError, OSError, sqlite3.Error) as e:
        what = (_sqlite_problem(e, db_path) if isinstance(e, sqlite3.Error)
                else _os_problem(e) if isinstance(e, OSError) else str(e))
        later = step[0] > version and step[0] not in _FILE_STEPS
        raise UpgradeError(_then(
            f"step {_step_name(step[0])} would refuse: {what}", f"Nothing was changed: the "
            f"database is still at version {version} (found by the preflight, which runs "
            f"every step on a scratch copy first)"
            + (f". Any SQL above is for a version {step[0]} database; docs/upgrade.md, "
               f"\"When it refuses\", has the fix for earlier versions" if later else ""))) from e


def _trial_run(conn: sqlite3.Connection, args, version: int, pragmas, copy_path: str,
               files: fsops.DryRunFiles, on_step=None, report=None) -> None:
    """Copies the database to `copy_path` and runs the steps on the copy with
    `files`; `report(v, notes, before, after, actions)` is told what each did.
    The copy and its journal are deleted afterwards."""

    def remove_copy():
        for p in (copy_path, copy_path + "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)

    remove_copy()  # left by an interrupted earlier run
    with no_crash_points():
        try:
            # Private, as the database is (password hashes, session data).
            os.close(os.open(copy_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                             0o600))
            out = sqlite3.connect(copy_path)
            try:
                conn.backup(out)
            finally:
                out.close()
            copy = _connect(copy_path, False, pragmas)
            try:
                # A scratch copy: no journal, no fsyncs; an interruption loses nothing.
                copy.execute("pragma journal_mode = off")
                copy.execute("pragma synchronous = off")
                step_args = argparse.Namespace(**vars(args))
                step_args.files = files
                for v in range(version, TARGET_VERSION):
                    if on_step:
                        on_step(v)
                    before = _table_shapes(copy) if report else None
                    del files.actions[:]
                    notes = run_step(copy, step_args, v)
                    if report:
                        report(v, notes, before, _table_shapes(copy), files.actions)
            finally:
                copy.close()
        finally:
            remove_copy()


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
    print(f"A real run would first run every step on a scratch copy (as this dry run "
          f"does), then back up the database to db.pre-upgrade-v{version}"
          + (" (skipped: --no-backup)" if args.no_backup else "") + ".")

    def report(v, notes, before, after, actions):
        lines = [f"  {n}" for n in notes]
        lines += _describe_change(before, after)
        lines += _describe_files(actions)
        print("\n".join(lines) if lines else "  (no visible change)")

    step = [version]

    def on_step(v):
        step[0] = v
        print(f"Step {_step_name(v)}: {STEPS[v].TITLE}")

    with tempfile.TemporaryDirectory(prefix="nvr-upgrade-dry-run-") as tmp:
        try:
            _trial_run(conn, args, version, pragmas, os.path.join(tmp, "db"),
                       fsops.DryRunFiles(), on_step, report)
        except UpgradeError as e:
            raise UpgradeError(f"dry run: step {_step_name(step[0])} would refuse: {e}") from e
        except OSError as e:
            raise UpgradeError(f"dry run: step {_step_name(step[0])} would fail: "
                               f"{_os_problem(e)}") from e
        except sqlite3.Error as e:
            raise UpgradeError(f"dry run: step {_step_name(step[0])} would fail: "
                               f"{_sqlite_problem(e, os.path.join(args.db_dir, 'db'))}") from e
    print(f"Then: page size {PAGE_SIZE} and VACUUM"
          + (" (skipped: --no-vacuum)" if args.no_vacuum else "") + ", and WAL mode.")
    return 0
