#!/usr/bin/env python3
"""nvr's command line: `python3 nvr.py SUBCOMMAND --help` describes each.

Subcommands (one `cmd_x(args) -> int` each, the exit status):
  run      record cameras and serve view.mp4/.m4s (the JSON API and UI follow)
  init     create the database and, by default, the embedded ./nvr-data layout
  config   add/list/edit/delete sample file dirs, cameras, streams and users
           (while `run` holds the database, through its control socket: ctl.py)
  check    verify the database against the sample files; repair with flags
  upgrade  upgrade a Moonfire NVR or older nvr database to this schema
  sql      the sqlite3 shell on the database, holding its lock
  ts       convert between 90 kHz timestamps and readable times
  test-stream  connect to an RTSP URL and report what nvr would record (streamtest.py)
  protect  add/list/edit/remove protected footage (ranges retention never deletes)
           (while `run` holds the database, through its control socket: ctl.py)
`nvr.py --version` prints nvr's version (api.VERSION, the API's serverVersion)
and those of Python, PyAV, FFmpeg, SQLite and argon2-cffi.

The embedded layout: `nvr-data/db/db` is the SQLite database (`--db-dir`
defaults to `nvr-data/db`) and `nvr-data/sample/` the first sample file dir.
Errors the user can act on (db.DbError, dir.DirError, ValueError from bad
arguments) print one line, `error: ...`, and exit 1; anything else is a bug
and prints a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import sys
import threading
import tomllib
import uuid as uuidlib

import api
import auth
import check
import clock
import config
import ctl
import db
import dir as dirmod
import logrepeat
import recorder
import recording
import retention
import signals as signalsmod
import stream
import system
import upgrade
import web

logger = logging.getLogger("nvr")

DEFAULT_DB_DIR = os.path.join("nvr-data", "db")


class UsageError(Exception):
    """A bad argument; the message says which and what is accepted."""


# ---------------------------------------------------------------------------
# Small parsers.

_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10,
               "m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20, "g": 1 << 30, "gb": 1 << 30,
               "gib": 1 << 30, "t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40}


def parse_size(s: str) -> int:
    """Bytes from `123`, `500M`, `1.5GiB`, `2T` (binary units, as disks are sold
    in decimal ones but filesystems count in these)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", s)
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise UsageError(f"bad size {s!r}; use bytes or a number with K, M, G or T (e.g. 100G)")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


def parse_floor(s: str) -> dict:
    """`--free-space-floor`: `5G` (a size), `3%` (of the filesystem), `0` (off) or
    `default`; returns the SampleFileDirConfig keys that say it (retention.py)."""
    t = s.strip()
    if t == "default":
        return {}
    if t.endswith("%"):
        m = re.fullmatch(r"(\d+(?:\.\d+)?)", t[:-1].strip())
        pct = float(m.group(1)) if m else -1
        if not 0 <= pct <= retention.MAX_FLOOR_PERCENT:
            raise UsageError(f"bad --free-space-floor {s!r}; a percentage of the filesystem "
                             f"from 0% to {retention.MAX_FLOOR_PERCENT}% (e.g. 3%)")
        return {"freeSpaceFloorPercent": int(pct) if pct == int(pct) else pct}
    try:
        return {"freeSpaceFloorBytes": parse_size(t)}
    except UsageError:
        raise UsageError(f"bad --free-space-floor {s!r}; use a size (e.g. 5G), a percentage "
                         f"of the filesystem (e.g. 3%), 0 for none, or default") from None


def format_size(n: int) -> str:
    for unit, div in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n} B"


def parse_permissions(s: str) -> auth.Permissions:
    """`viewVideo,adminUsers`, `all` or `none`."""
    s = s.strip()
    if s == "all":
        return auth.Permissions.all()
    if s in ("none", ""):
        return auth.Permissions()
    try:
        return auth.Permissions.from_json({p.strip(): True for p in s.split(",")})
    except ValueError as e:
        raise UsageError(str(e)) from None


def read_password(args, if_empty: str = "") -> str | None:
    """--password or the first line of --password-stdin. A user's password
    (`if_empty`, how to do without one, given) must not be empty: `POST /api/login`
    would take an empty one; a camera's may be (no RTSP password)."""
    if getattr(args, "password_stdin", False):
        line = sys.stdin.readline().rstrip("\n")
        if not line:
            raise UsageError(f"--password-stdin: no password on standard input{if_empty}")
        return line
    password = getattr(args, "password", None)
    if password == "" and if_empty:
        raise UsageError(f"--password must not be empty{if_empty}")
    return password


# The rules of camera names and URLs are config.py's (shared with the API).
check_name = config.check_name
check_rtsp_url = config.check_rtsp_url


def check_username(d: db.Database, name: str, user_id: int | None = None) -> str:
    """A user name to store (auth.check_username: the same rules as the API's)."""
    try:
        return auth.check_username(name, d.users.values(), user_id=user_id)
    except ValueError as e:
        raise UsageError(str(e)) from None


# ---------------------------------------------------------------------------
# init, ts, sql, check

def cmd_init(args) -> int:
    clocks = clock.RealClocks()
    created = db.init(args.db_dir, clocks)
    print(("created database in " if created else "database already exists in ") + args.db_dir)
    if args.no_sample_file_dir:
        return 0
    sample = args.sample_file_dir or os.path.join(os.path.dirname(os.path.abspath(args.db_dir)),
                                                  "sample")
    d = db.Database.open_dir(args.db_dir, clocks)
    try:
        if any(x.path == os.path.abspath(sample) for x in d.dirs.values()):
            print(f"sample file dir {sample} already exists")
        elif d.dirs and not args.sample_file_dir:
            pass  # the database has dirs already; don't add the default one
        else:
            id_ = d.add_sample_file_dir(sample)
            print(f"created sample file dir {id_}: {os.path.abspath(sample)}")
        d.flush("init")
    finally:
        d.close()
    return 0


def cmd_ts(args) -> int:
    for t in args.times:
        if re.fullmatch(r"-?\d+", t):
            print(recording.format_time(int(t)))
        else:
            print(recording.parse_time(t))
    return 0


def cmd_test_stream(args) -> int:
    password = read_password(args) or ""
    return _test_stream(args, args.url, args.username or "", password,
                        args.rtsp_transport)


def cmd_config_stream_test(args) -> int:
    """`config stream test CAMERA TYPE`: the stored URL, transport and credentials.
    The database is opened read-only (a shared lock); while `run` holds it, the
    running nvr tests the stream (ctl.py)."""
    d = db.Database.open_dir(args.db_dir, clock.RealClocks(), read_only=True)
    try:
        c = d.camera_by_name(args.camera)
        sid = c.streams.get(args.type)
        if sid is None:
            raise UsageError(f"camera {c.short_name} has no {args.type} stream")
        s = d.streams[sid]
        url = s.config.get("url", "")
        if not url:
            raise UsageError(f"stream {c.short_name}/{args.type} has no URL; set one with "
                             f"`nvr.py config stream edit {c.short_name} {args.type} --url URL`")
        transport = s.config.get("rtspTransport", "tcp") or "default"
        username, password = c.config.get("username", ""), c.config.get("password", "")
    finally:
        d.close()
    return _test_stream(args, url, username, password, transport)


def _test_stream(args, url: str, username: str, password: str, transport: str) -> int:
    """Runs streamtest.run; prints the report (or with --json one object, whose
    keys README's "Stream test" lists); writes --snapshot. Exit status 0 if recordable."""
    import streamtest

    def on_phase(phase: str) -> None:
        if not args.json and sys.stderr.isatty():
            print(f"{phase}...", file=sys.stderr, flush=True)

    try:
        r = streamtest.run(url, username=username, password=password,
                                   transport=transport, on_phase=on_phase)
    except streamtest.StreamTestError as e:
        if args.json:
            print(json.dumps(e.to_json(streamtest.LIMIT_SEC), indent=2))
        else:
            print(f"error: {e.message}", file=sys.stderr)
            if e.detail:
                print(f"detail: {e.detail}", file=sys.stderr)
        return 1
    if args.snapshot:
        with open(args.snapshot, "wb") as f:
            f.write(r.snapshot_jpeg)
    if args.json:
        d = r.to_json()
        d["snapshotFile"] = args.snapshot
        print(json.dumps(d, indent=2))
    else:
        print("\n".join(r.lines()))
        if args.snapshot:
            print(f"snapshot: {args.snapshot} ({r.display_width}x{r.display_height} JPEG)")
    return 0


def cmd_sql(args) -> int:
    sqlite3_bin = shutil.which("sqlite3")
    if sqlite3_bin is None:
        raise UsageError("the sqlite3 shell is not installed (apt-get install sqlite3)")
    fd = db.lock_db_dir(args.db_dir, args.read_only)
    os.set_inheritable(fd, True)  # the shell inherits the lock for its whole run
    path = os.path.join(args.db_dir, db.DB_FILENAME)
    argv = [sqlite3_bin]
    if args.read_only:
        argv.append("-readonly")
    for p in db.INTEGRITY_PRAGMAS:
        argv += ["-cmd", p]
    argv += [path] + args.sqlite_args
    os.execv(sqlite3_bin, argv)
    return 1  # not reached


def cmd_check(args) -> int:
    opts = check.Options(delete_orphan_rows=args.delete_orphan_rows,
                         trash_orphan_sample_files=args.trash_orphan_sample_files,
                         trash_corrupt_rows=args.trash_corrupt_rows,
                         raise_cum_recordings=args.raise_cum_recordings,
                         verify_hashes=args.verify_hashes)
    return check.run(args.db_dir, opts, sys.stdout)


def cmd_upgrade(args) -> int:
    return upgrade.run(args)


# ---------------------------------------------------------------------------
# config

def _open(args) -> db.Database:
    """Opens the database; read-only (writing nothing, not even an `open` row)
    for `list` actions."""
    return db.Database.open_dir(args.db_dir, clock.RealClocks(),
                                read_only=args.action == "list")


def _finish(d: db.Database, reason: str) -> None:
    if not d.read_only:
        d.flush(reason)


def _find_dir(d: db.Database, spec: str) -> db.SampleFileDir:
    for x in d.dirs.values():
        if str(x.id) == spec or x.path == os.path.abspath(spec):
            return x
    raise UsageError(f"no sample file dir {spec!r}; `nvr.py config dir list` shows them")


def cmd_config_dir(args) -> int:
    d = _open(args)
    try:
        if args.action == "add":
            floor = parse_floor(args.free_space_floor) if args.free_space_floor is not None \
                else None
            id_ = config.add_dir(d, None, args.path, floor, names=config.CLI)
            print(f"added sample file dir {id_}: {os.path.abspath(args.path)}")
        elif args.action == "edit":
            x = _find_dir(d, args.path)
            floor = parse_floor(args.free_space_floor) if args.free_space_floor is not None \
                else None
            config.edit_dir(d, None, x.id, path=args.move_to, floor=floor, names=config.CLI)
            print(f"updated sample file dir {x.id}: {x.path} (free space floor "
                  f"{retention.describe_floor(x.config)})")
        elif args.action == "list":
            for x in sorted(d.dirs.values(), key=lambda x: x.id):
                streams = [s for s in d.streams.values() if s.sample_file_dir_id == x.id]
                used = sum(s.fs_bytes for s in streams)
                limit = sum(s.retain_bytes for s in streams)
                print(f"{x.id}\t{x.path}\tstreams={len(streams)}\tused={format_size(used)}"
                      f"\tlimits={format_size(limit)}"
                      f"\tfree_space_floor={retention.describe_floor(x.config)}")
        elif args.action == "delete":
            x = _find_dir(d, args.path)
            config.delete_dir(d, None, x.id, names=config.CLI)
            print(f"deleted sample file dir {x.id}: {x.path} (its files were left in place)")
        _finish(d, f"config dir {args.action}")
    finally:
        d.close()
    return 0


def _camera_fields(args) -> dict:
    """config.CAMERA_KEYS given on the command line (a password never printed)."""
    fields = {}
    for attr, key in (("description", "description"), ("onvif_base_url", "onvifBaseUrl"),
                      ("username", "username")):
        v = getattr(args, attr, None)
        if v is not None:
            fields[key] = v
    password = read_password(args)
    if password is not None:
        fields["password"] = password
    return fields


def cmd_config_camera(args) -> int:
    d = _open(args)
    try:
        if args.action == "add":
            id_ = config.add_camera(d, None, args.name, _camera_fields(args), names=config.CLI)
            print(f"added camera {id_}: {args.name}")
        elif args.action == "list":
            for c in sorted(d.cameras.values(), key=lambda c: c.id):
                streams = ",".join(sorted(c.streams))
                user = c.config.get("username") or "-"
                print(f"{c.id}\t{c.short_name}\tuser={user}\tstreams={streams or '-'}"
                      f"\t{c.config.get('description', '')}\tuuid={uuidlib.UUID(bytes=c.uuid)}")
        elif args.action == "edit":
            c = d.camera_by_name(args.name)
            fields = _camera_fields(args)
            if args.rename is not None:
                fields["shortName"] = args.rename
            config.edit_camera(d, None, c.id, fields, names=config.CLI)
            print(f"updated camera {c.id}: {c.short_name}")
        elif args.action == "delete":
            c = d.camera_by_name(args.name)
            n = config.delete_camera(d, None, c.id, delete_recordings=args.yes,
                                     names=config.CLI)
            print(f"deleted camera {c.short_name} and {n} recording(s)")
        _finish(d, f"config camera {args.action}")
    finally:
        d.close()
    return 0


def _stream_changes(d: db.Database, args) -> dict:
    """config.STREAM_KEYS given on the command line."""
    changes = {}
    if args.url is not None:
        changes["url"] = args.url
    if args.record is not None:
        changes["record"] = args.record
    if args.rtsp_transport is not None:
        changes["rtspTransport"] = args.rtsp_transport
    if args.retain_bytes is not None:
        changes["retainBytes"] = parse_size(args.retain_bytes)
    if args.retain_days is not None:
        changes["retainDays"] = args.retain_days
    if args.flush_if_sec is not None:
        changes["flushIfSec"] = args.flush_if_sec
    if args.dir is not None:
        changes["sampleFileDirId"] = (None if args.dir == "none" and args.action == "edit"
                                      else _find_dir(d, args.dir).id)
    return changes


def cmd_config_stream(args) -> int:
    d = _open(args)
    try:
        if args.action == "list":
            for s in sorted(d.streams.values(), key=lambda s: s.id):
                c = d.cameras[s.camera_id]
                dpath = d.dirs[s.sample_file_dir_id].path if s.sample_file_dir_id else "-"
                print(f"{s.id}\t{c.short_name}/{s.type}\trecord={'yes' if s.record else 'no'}"
                      f"\turl={s.config.get('url', '-')}"
                      f"\ttransport={s.config.get('rtspTransport') or 'default'}\tdir={dpath}"
                      f"\tretain={format_size(s.retain_bytes)}"
                      f"\tretain_days={'-' if s.retain_days is None else f'{s.retain_days:g}'}"
                      f"\tused={format_size(s.fs_bytes)}\tflush_if_sec={s.flush_if_sec}")
            return 0
        c = d.camera_by_name(args.camera)
        if args.action == "add":
            id_ = config.add_stream(d, None, c.id, args.type, _stream_changes(d, args),
                                    names=config.CLI)
            print(f"added stream {id_}: {c.short_name}/{args.type}")
        else:
            if args.type not in c.streams:
                raise UsageError(f"camera {c.short_name} has no {args.type} stream")
            if args.action == "delete":
                n = config.delete_stream(d, None, c.id, args.type, delete_recordings=args.yes,
                                         names=config.CLI)
                print(f"deleted stream {c.short_name}/{args.type} and {n} recording(s)")
                return 0
            r = config.edit_stream(d, None, c.id, args.type, _stream_changes(d, args),
                                   delete_recordings=args.yes, names=config.CLI)
            print(f"updated stream {r.stream_id}: {c.short_name}/{args.type}")
            if r.deleted.count:
                print(f"deleted {r.deleted.describe()} to fit the new limit")
        _finish(d, f"config stream {args.action}")
    finally:
        d.close()
    return 0


def cmd_config_user(args) -> int:
    d = _open(args)
    try:
        if args.action == "add":
            password = read_password(args, "; leave it out to add a user without a password")
            perms = parse_permissions(args.permissions) if args.permissions else auth.Permissions(
                view_video=True)
            name = check_username(d, args.name)
            id_ = d.add_user(name, permissions=perms,
                             password_hash=auth.hash_password(password) if password else None)
            print(f"added user {id_}: {name}")
        elif args.action == "list":
            for u in sorted(d.users.values(), key=lambda u: u.id):
                perms = ",".join(k for k, v in u.permissions.to_json().items() if v) or "-"
                state = "disabled" if u.disabled else "enabled"
                pw = "password" if u.password_hash else "no-password"
                print(f"{u.id}\t{u.username}\t{state}\t{pw}\tpermissions={perms}")
        elif args.action == "edit":
            u = d.user_by_name(args.name)
            kwargs = {}
            password = read_password(args, f"; to remove the password, use `nvr.py config "
                                            f"user edit {u.username} --clear-password`")
            if password is not None and args.clear_password:
                raise UsageError("give either a new password or --clear-password, not both")
            if password is not None:
                kwargs["password_hash"] = auth.hash_password(password)
            elif args.clear_password:
                kwargs["password_hash"] = None
            if args.permissions is not None:
                kwargs["permissions"] = parse_permissions(args.permissions)
            if args.disable is not None:
                config = dict(u.config)
                config["disabled"] = args.disable
                kwargs["config"] = config
            if args.rename is not None and args.rename != u.username:
                kwargs["username"] = check_username(d, args.rename, u.id)
            # A password set or cleared ends the user's sessions; so does --disable
            # (and --enable ends any an older version left).
            n = auth.Auth(d).update_user(u.id, by="nvr.py config user edit", **kwargs)
            print(f"updated user {u.id}: {kwargs.get('username', u.username)}"
                  + (f"; revoked {n} session(s)" if n else ""))
        elif args.action == "delete":
            u = d.user_by_name(args.name)
            d.delete_user(u.id)
            print(f"deleted user {u.username} and their sessions")
        _finish(d, f"config user {args.action}")
    finally:
        d.close()
    return 0


# ---------------------------------------------------------------------------
# run: the TOML config, start-up, signals, shutdown.

DEFAULT_CONFIG = """
# The embedded default: `python3 nvr.py run` with no --config.
dbDir = "nvr-data/db"

[[binds]]
ipv4 = "127.0.0.1:8080"
allowUnauthenticatedPermissions = { viewVideo = true }
"""


@dataclasses.dataclass
class Bind:
    address: tuple[str, str]                 # ("ipv4" | "ipv6" | "unix", value)
    allow_unauthenticated_permissions: auth.Permissions | None = None
    trust_forward_headers: bool = False
    own_uid_is_privileged: bool = False
    tls_cert: str | None = None
    tls_key: str | None = None


@dataclasses.dataclass
class Config:
    db_dir: str
    ui_dir: str | None
    binds: list[Bind]
    # sessionIdleDays, sessionLifetimeDays (auth.SessionLimits explains the defaults)
    session_limits: auth.SessionLimits = dataclasses.field(default_factory=auth.SessionLimits)
    # The Content-Security-Policy of a custom uiDir's files (None: web.STATIC_CSP).
    ui_content_security_policy: str | None = None


def _keys(where: str, table: dict, allowed: dict) -> None:
    for k, v in table.items():
        if k not in allowed:
            raise UsageError(f"config: unknown key {where}{k!r}; known keys: "
                             f"{', '.join(allowed)}")
        want = allowed[k]
        if want is not None and not isinstance(v, want):
            raise UsageError(f"config: {where}{k} must be a {want.__name__}, not {v!r}")


def parse_config(text: str, source: str) -> Config:
    """Reads the TOML config (Moonfire's keys, camelCase); unknown keys are errors."""
    try:
        t = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"config {source}: {e}") from None
    _keys("", t, {"dbDir": str, "uiDir": str, "binds": list, "sessionIdleDays": None,
                  "sessionLifetimeDays": None, "uiContentSecurityPolicy": str})
    limits = auth.SessionLimits(
        idle_sec=_days_sec(t, "sessionIdleDays", auth.SessionLimits.idle_sec),
        lifetime_sec=_days_sec(t, "sessionLifetimeDays", auth.SessionLimits.lifetime_sec))
    csp = t.get("uiContentSecurityPolicy")
    if csp is not None and "uiDir" not in t:
        raise UsageError("config: uiContentSecurityPolicy is for a custom uiDir; nvr's own "
                         "UI keeps its strict policy (set uiDir, or remove the key)")
    if csp is not None and any(c in csp for c in "\r\n\0"):
        raise UsageError("config: uiContentSecurityPolicy must be one line")
    binds = []
    for i, b in enumerate(t.get("binds", [])):
        where = f"binds[{i}]."
        if not isinstance(b, dict):
            raise UsageError(f"config: binds[{i}] must be a table")
        _keys(where, b, {"ipv4": str, "ipv6": str, "unix": str,
                         "allowUnauthenticatedPermissions": dict, "trustForwardHeaders": bool,
                         "ownUidIsPrivileged": bool, "tls": dict})
        addrs = [(k, b[k]) for k in ("ipv4", "ipv6", "unix") if k in b]
        if len(addrs) != 1:
            raise UsageError(f"config: binds[{i}] needs exactly one of ipv4, ipv6, unix")
        bind = Bind(addrs[0], trust_forward_headers=b.get("trustForwardHeaders", False),
                    own_uid_is_privileged=b.get("ownUidIsPrivileged", False))
        if "allowUnauthenticatedPermissions" in b:
            try:
                bind.allow_unauthenticated_permissions = auth.Permissions.from_json(
                    b["allowUnauthenticatedPermissions"])
            except ValueError as e:
                raise UsageError(f"config: {where}allowUnauthenticatedPermissions: {e}") from None
        if "tls" in b:
            _keys(where + "tls.", b["tls"], {"cert": str, "key": str})
            if set(b["tls"]) != {"cert", "key"}:
                raise UsageError(f"config: {where}tls needs both cert and key")
            bind.tls_cert, bind.tls_key = b["tls"]["cert"], b["tls"]["key"]
        binds.append(bind)
    return Config(db_dir=t.get("dbDir", DEFAULT_DB_DIR), ui_dir=t.get("uiDir"), binds=binds,
                  session_limits=limits, ui_content_security_policy=csp)


def _days_sec(t: dict, key: str, default_sec: int) -> int:
    """A session limit in days (a number; 0: no limit) as seconds."""
    if key not in t:
        return default_sec
    v = t[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 36500:
        raise UsageError(f"config: {key} must be a number of days from 0 (no limit) to "
                         f"36500, not {v!r}")
    sec = round(v * auth.DAY_SEC)
    if v and sec < 60:
        raise UsageError(f"config: {key} = {v!r} is under a minute; give days (0.5 is 12 hours)")
    return sec


def load_config(path: str | None) -> Config:
    if path is None:
        return parse_config(DEFAULT_CONFIG, "(embedded default)")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise UsageError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise UsageError(f"config file {path} is a directory; --config names a TOML file "
                         f"(README: Configuration)") from None
    except OSError as e:
        raise UsageError(f"can't read config file {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise UsageError(f"config file {path} is not UTF-8 text (byte {e.start}: {e.reason}); "
                         f"TOML files are UTF-8") from None
    return parse_config(text, path)


_sd_notify_warned = False


def sd_notify(message: str) -> None:
    """Tells systemd (Type=notify) our state, if it started us. A socket that
    doesn't work (a stale NOTIFY_SOCKET inherited from elsewhere) is warned about
    once; it mustn't stop nvr from running or shutting down cleanly."""
    global _sd_notify_warned
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect("\0" + addr[1:] if addr.startswith("@") else addr)
            s.sendall(message.encode())
    except OSError as e:
        if not _sd_notify_warned:
            logger.warning("can't tell systemd %s through NOTIFY_SOCKET=%s (%s); going on "
                           "without (unset NOTIFY_SOCKET if systemd didn't start nvr)",
                           message, addr, e)
            _sd_notify_warned = True


# The running system moved to recorder.py; these names stay for old callers.
Recorder = recorder.Recorder
check_recorded_stream_config = recorder.check_recorded_stream_config
check_dir_config = recorder.check_dir_config


DEMO_SUB_URL = "demo:320x180@15"


def _demo_camera(d: db.Database) -> None:
    """`run --demo`: a camera named "demo" recording the synthetic stream, main and sub
    (a smaller picture: live view in clients that show only sub streams, as Moonfire's UI
    does). A demo camera made before it had a sub stream gets one."""
    cam = next((c for c in d.cameras.values() if c.short_name == "demo"), None)
    if cam is not None and "sub" in cam.streams:
        return
    if not d.dirs:
        raise UsageError("--demo needs a sample file dir; run `nvr.py init` first")
    if cam is None:
        cid = d.add_camera("demo", {"description": "synthetic test pattern (nvr.py run --demo)"})
        d.add_stream(cid, "main", {"mode": "record", "url": "demo:", "rtspTransport": "",
                                   "retainBytes": 1 << 30, "flushIfSec": 10},
                     min(d.dirs))
    else:
        cid = cam.id
    d.add_stream(cid, "sub", {"mode": "record", "url": DEMO_SUB_URL, "rtspTransport": "",
                              "retainBytes": 256 << 20, "flushIfSec": 10},
                 min(d.dirs))


def _parse_session_flags(s: str) -> int:
    flags = 0
    for name in (p.strip() for p in s.split(",") if p.strip()):
        if name not in auth.FLAG_NAMES:
            raise UsageError(f"unknown session flag {name!r}; known: "
                             f"{', '.join(auth.FLAG_NAMES)}")
        flags |= auth.FLAG_NAMES[name]
    return flags


def _format_sec(t: int | None) -> str:
    if t is None:
        return "-"
    return recording.format_time(t * recording.TIME_UNITS_PER_SEC)[:19]


def cmd_login(args) -> int:
    """Creates a session for a user without a password, for scripts (reference §7.1)."""
    if args.curl_cookie_jar and not args.domain:
        raise UsageError("--curl-cookie-jar needs --domain (the host name the cookie is for)")
    d = db.Database.open_dir(args.db_dir, clock.RealClocks())
    try:
        u = d.user_by_name(args.username)
        if u.disabled:
            raise UsageError(f"user {u.username!r} is disabled; `nvr.py config user edit "
                             f"{u.username} --enable` first")
        perms = None
        if args.permissions is not None:
            p = args.permissions.strip()
            if p.startswith("{"):
                try:
                    perms = auth.Permissions.from_json(json.loads(p))
                except ValueError as e:
                    raise UsageError(f"--permissions: {e}") from None
            else:
                perms = parse_permissions(p)
        flags = _parse_session_flags(args.session_flags)
        a = auth.Auth(d)
        cookie, s = a.make_session(u.id, auth.Client(domain=args.domain), flags=flags,
                                   permissions=perms, description="created by nvr.py login")
        if args.curl_cookie_jar:
            # Netscape cookie file (curl -b/-c): domain, subdomains, path, secure, expiry,
            # name, value; "#HttpOnly_" marks an HttpOnly cookie. Mode 0600: it's a key.
            prefix = "#HttpOnly_" if flags & auth.FLAG_HTTP_ONLY else ""
            secure = "TRUE" if flags & auth.FLAG_SECURE else "FALSE"
            # Expires when the session does by default (auth.SessionLimits; the server's
            # sessionLifetimeDays may end it sooner: then the server refuses it).
            life = auth.SessionLimits().lifetime_sec
            expires = s.creation_time_sec + life if life else 2147483647
            line = (f"{prefix}{args.domain}\tFALSE\t/\t{secure}\t{expires}\ts\t"
                    f"{cookie}\n")
            fd = os.open(args.curl_cookie_jar, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write("# Netscape HTTP Cookie File\n" + line)
        print(f"s={cookie}")
        logger.info("session %s created for %s", s.id_text, u.username)
        _finish(d, "login")
    finally:
        d.close()
    return 0


def cmd_sessions(args) -> int:
    d = db.Database.open_dir(args.db_dir, clock.RealClocks(), read_only=args.action == "list")
    try:
        a = auth.Auth(d)
        user_id = d.user_by_name(args.user).id if args.user else None
        sessions = a.list_sessions(user_id)
        if args.action == "list":
            print("ID\tUSER\tCREATED\tLAST USE\tPEER\tUSES\tSTATE\tUSER AGENT")
            for s in sessions:
                u = d.users.get(s.user_id)
                peer = auth.unpack_addr(s.last_use_peer_addr or s.creation_peer_addr) or "-"
                ua = s.last_use_user_agent or s.creation_user_agent or "-"
                print(f"{s.id_text}\t{u.username if u else s.user_id}\t"
                      f"{_format_sec(s.creation_time_sec)}\t{_format_sec(s.last_use_time_sec)}\t"
                      f"{peer}\t{s.use_count}\t{a.session_state(s)}\t{ua}")
            return 0
        # revoke
        if bool(args.id) == bool(args.user):
            raise UsageError("give a session ID (from `nvr.py sessions list`) or --user, "
                             "not both")
        if args.id:
            ident = args.id.lower()
            found = [s for s in sessions if s.hash.hex().startswith(ident)]
            if len(ident) < 8 or len(found) != 1:
                raise UsageError(f"no single session with id {args.id!r}; "
                                 f"`nvr.py sessions list` shows the ids")
            targets = found
        else:
            targets = [s for s in sessions if s.revocation_reason is None]
        n = sum(a.revoke(s.hash, auth.REVOKED_BY_ADMIN, detail="nvr.py sessions revoke")
                for s in targets)
        print(f"revoked {n} session(s)")
        _finish(d, "sessions revoke")
    finally:
        d.close()
    return 0


def private_mode_fix(db_dir: str) -> str | None:
    """The `chmod` command that makes the database private again, or None if it is.

    The database directory should be 0700 and its files (the database and upgrade
    backups) 0600: they hold password and session hashes and camera passwords. nvr
    creates them so (db.py); one made by an older nvr, by Moonfire or by hand may be
    readable or writable by group or others. The -wal and -shm files aren't named:
    SQLite makes them with the database file's mode, and they are gone once nvr stops,
    when the command is run."""
    loose_dirs, loose_files = [], []
    try:
        if os.stat(db_dir).st_mode & 0o077:
            loose_dirs.append(db_dir)
        names = sorted(os.listdir(db_dir))
    except OSError:
        return None  # opening the database says what's wrong
    for name in names:
        # db, and db.* (upgrade backups, an upgrade's scratch copy); not db-wal/db-shm.
        if name == db.DB_FILENAME or name.startswith(db.DB_FILENAME + "."):
            path = os.path.join(db_dir, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if st.st_mode & 0o077 and not os.path.islink(path):
                loose_files.append(path)
    cmds = []
    if loose_dirs:
        cmds.append("chmod 700 " + " ".join(shlex.quote(p) for p in loose_dirs))
    if loose_files:
        cmds.append("chmod 600 " + " ".join(shlex.quote(p) for p in loose_files))
    return " && ".join(cmds) or None


def warn_about_privacy(db_dir: str) -> None:
    """`run`'s start-up warnings: a database others may read, and running as root."""
    fix = private_mode_fix(db_dir)
    if fix:
        logger.warning("the database in %s is readable or writable by other users (it holds "
                       "password hashes and camera passwords); make it private: %s",
                       db_dir, fix)
    if os.geteuid() == 0:
        logger.warning("running as root; a dedicated user is safer (docs/install.md: "
                       "'A user for nvr')")


def version_text() -> str:
    """`nvr.py --version`: nvr's version (api.VERSION, also the API's serverVersion)
    and the versions of what it runs on, for bug reports (system.versions, which
    GET /api/system shows too), with where nvr and Python are installed."""
    v = system.versions(api.VERSION)
    libs = ", ".join(f"{name} {lv}" for name, lv in v["ffmpegLibraries"].items())
    return "\n".join([
        f"nvr {v['nvr']} ({os.path.dirname(os.path.abspath(__file__))})",
        f"Python {v['python']} ({sys.executable})",
        f"PyAV {v['pyav']}",
        f"FFmpeg {v['ffmpeg']} ({libs})",
        f"SQLite {v['sqlite']}",
        f"argon2-cffi {v['argon2Cffi']}",
    ])


class _VersionAction(argparse.Action):
    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print the versions of nvr, Python, PyAV, FFmpeg, SQLite and "
                              "argon2-cffi, and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())
        parser.exit()


# `protect`: protected footage (issue #17; db.py's protections, retention.py). With nvr
# running (the database locked), `main` sends the command through its control socket
# instead (ctl.py's _protect, /api/protections); the helpers below parse and print for
# both, so the two paths take the same arguments and print the same lines.

def check_stream_type(camera: str, type_: str, types) -> None:
    """`CAMERA/TYPE` names a stream the camera has (`types`: its stream types)."""
    if type_ not in types:
        raise UsageError(f"camera {camera} has no {type_!r} stream (it has "
                         f"{', '.join(sorted(types)) or 'none'})")


def _parse_camera_stream(d: db.Database, spec: str) -> tuple[db.Camera, int | None]:
    """`CAMERA` (every stream of it) or `CAMERA/TYPE` (camera names have no '/')."""
    name, _, type_ = spec.partition("/")
    c = d.camera_by_name(name)
    if not type_:
        return c, None
    check_stream_type(c.short_name, type_, c.streams)
    return c, c.streams[type_]


def _parse_protect_time(what: str, s: str | None) -> int | None:
    if s is None:
        return None
    try:
        return recording.parse_time(s)
    except ValueError as e:
        raise UsageError(f"--{what}: {e}") from None


def protect_changes(args) -> dict:
    """`protect edit`'s changes: {"label", "start_90k", "end_90k"}, None if not given."""
    if args.start is None and args.end is None and args.label is None:
        raise UsageError("nothing to change: give --start, --end and/or --label")
    return {"label": args.label, "start_90k": _parse_protect_time("start", args.start),
            "end_90k": _parse_protect_time("end", args.end)}


def format_protection(id_: int, camera: str, stream_type: str | None, start_90k: int,
                      end_90k: int, label: str, created_by: str, protected_bytes: int) -> str:
    """One protection as `protect` prints it: id, camera[/type], start, end (local time),
    label, creator, the bytes it keeps."""
    where = camera if stream_type is None else f"{camera}/{stream_type}"
    return (f"{id_}\t{where}\t{recording.format_time(start_90k)}\t"
            f"{recording.format_time(end_90k)}\t{label!r}\tby={created_by}"
            f"\tprotected={format_size(protected_bytes)}")


def format_removed_protection(id_: int, label: str) -> str:
    return (f"removed protection {id_} ({label!r}); retention may delete what it kept "
            f"from the next recording or check on")


def _describe_protection(d: db.Database, p: db.Protection) -> str:
    return format_protection(
        p.id, d.cameras[p.camera_id].short_name,
        None if p.stream_id is None else d.streams[p.stream_id].type,
        p.start_time_90k, p.end_time_90k, p.label, p.created_by, d.protection_bytes(p.id))


def cmd_protect(args) -> int:
    """`protect add|list|edit|remove`: protected ranges in the database. Times as `ts`
    takes them. `run` holding the database raises db.DbLocked (`main` goes through it)."""
    d = _open(args)
    try:
        if args.action == "add":
            c, stream_id = _parse_camera_stream(d, args.camera)
            start = _parse_protect_time("start", args.start)
            end = _parse_protect_time("end", args.end)
            id_ = d.add_protection(c.id, stream_id, start, end, args.label, "cli")
            print(f"added protection {_describe_protection(d, d.get_protection(id_))}")
        elif args.action == "list":
            c = d.camera_by_name(args.camera) if args.camera else None
            for p in d.list_protections(camera_id=c.id if c else None):
                print(_describe_protection(d, p))
        elif args.action == "edit":
            p = d.update_protection(args.id, **protect_changes(args))
            print(f"updated protection {_describe_protection(d, p)}")
        elif args.action == "remove":
            p = d.get_protection(args.id)
            d.delete_protection(args.id)
            print(format_removed_protection(p.id, p.label))
        _finish(d, f"protect {args.action}")
    finally:
        d.close()
    return 0


def cmd_run(args) -> int:
    config = load_config(args.config)
    clocks = clock.RealClocks()
    embedded = args.config is None
    if embedded and not os.path.exists(os.path.join(config.db_dir, db.DB_FILENAME)):
        # First run of the embedded layout: create it (as `nvr.py init` would).
        db.init(config.db_dir, clocks)
        d = db.Database.open_dir(config.db_dir, clocks)
        try:
            d.add_sample_file_dir(os.path.join(os.path.dirname(os.path.abspath(config.db_dir)),
                                               "sample"))
            d.flush("first run")
        finally:
            d.close()
        logger.info("created the database and sample file dir under %s",
                    os.path.dirname(config.db_dir) or ".")
    # Totals and day summaries load in the background (db.py "Loading totals"), so
    # start-up doesn't grow with the recordings kept.
    d = db.Database.open_dir(config.db_dir, clocks, read_only=args.read_only,
                             totals="background")
    warn_about_privacy(config.db_dir)  # after the open: -wal and -shm exist now
    # Days, subtitles and zone-less API times follow it (`recording.resolve_zone_name`
    # logs where it came from at DEBUG: NVR_LOG=DEBUG).
    logger.info("time zone %s", recording.server_zone_name())
    signals = []

    def on_signal(signum, frame):
        signals.append(signum)
        if len(signals) > 1:
            os._exit(1)  # a second signal: exit at once
        logger.info("received %s; shutting down (again to exit at once)",
                    signal.Signals(signum).name)
        stop.set()

    stop = threading.Event()
    rec_shutdown = threading.Event()  # tells streamers and syncers to finish
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        # Not listing the dirs first (dir.py "Late R3"): that grows with history too.
        d.open_sample_file_dirs(list_later=True)
        if args.demo and not args.read_only:
            _demo_camera(d)

        def opener(s):
            if s.config.get("url", "").startswith("demo:"):
                import demo  # PyAV's encoder, only when a demo camera records
                return demo.DemoOpener(clocks, shutdown=rec_shutdown)
            return stream.PyAvOpener()
        rec = None
        if not args.read_only:
            rec = recorder.Recorder(d, opener, shutdown=rec_shutdown,
                           rotate_interval_sec=args.rotate_interval_sec)
            rec.start()
            logger.info("recording %d stream(s)", len(rec.streamers))
        else:
            logger.info("read-only: recording nothing")
        try:
            srv = web.Server(d, config, clocks=clocks,
                             auth_=auth.Auth(d, config.session_limits),
                             signals=signalsmod.Signals(d), recorder=rec)
            # `nvr.py config` and `nvr.py sessions` while we run (ctl.py).
            srv.control_path = web.control_socket_path(config.db_dir)
            srv.start()  # raises web.BindError (nothing left open) if a bind fails
        except web.BindError as e:
            if rec is not None:
                rec.stop()
            raise UsageError(str(e)) from None
        sd_notify("READY=1")
        while not stop.wait(1):
            pass
        sd_notify("STOPPING=1")
        srv.stop()
        if rec is not None:
            rec.stop()
        logger.info("shut down cleanly")
        return 0
    finally:
        d.close()


# ---------------------------------------------------------------------------
# The parser.

def _add_db_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db-dir", default=DEFAULT_DB_DIR,
                   help=f"directory holding the database file 'db' (default: {DEFAULT_DB_DIR})")


def _add_password(p: argparse.ArgumentParser, what: str) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--password", help=f"{what} (visible to other local users in `ps`; "
                                      f"prefer --password-stdin)")
    g.add_argument("--password-stdin", action="store_true",
                   help=f"read the {what} from the first line of standard input")


def _add_stream_test_options(p: argparse.ArgumentParser, transport: bool = True) -> None:
    if transport:
        p.add_argument("--rtsp-transport", choices=("tcp", "udp", "default"), default="tcp",
                       help="RTSP transport (default: tcp, as nvr records)")
    p.add_argument("--snapshot", metavar="FILE.jpg", help="write a key frame as a JPEG here")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object (README: Stream test) instead of the report")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nvr.py", description="nvr: a network video recorder for IP cameras.")
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)

    p = sub.add_parser("run", help="record cameras and serve their video over HTTP",
                       description="Records every stream set to record, until SIGINT or "
                                   "SIGTERM (a second one exits at once). With no --config, "
                                   "uses nvr-data/ in the current directory, creating it on "
                                   "the first run.")
    p.add_argument("--config", metavar="PATH", help="TOML config file (README: Configuration)")
    p.add_argument("--read-only", action="store_true",
                   help="open the database read-only and record nothing")
    p.add_argument("--demo", action="store_true",
                   help="also record a synthetic camera named 'demo' (no camera needed)")
    p.add_argument("--rotate-interval-sec", type=int, default=60, metavar="SEC",
                   help=argparse.SUPPRESS)  # tests rotate every few seconds
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("init", help="create the database and a sample file dir",
                       description="Creates the database (if absent) and, unless told not to, "
                                   "a sample file dir beside it (nvr-data/sample by default).")
    _add_db_dir(p)
    p.add_argument("--sample-file-dir", help="where to keep video (default: 'sample' beside the "
                                             "database directory)")
    p.add_argument("--no-sample-file-dir", action="store_true", help="create no sample file dir")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("ts", help="convert between 90 kHz timestamps and readable times",
                       description="Each integer argument is printed as a time; each time "
                                   "(YYYY-mm-dd[THH:MM[:SS[:FFFFF]]][Z|+-HH:MM], local zone if "
                                   "none) is printed as 90 kHz units since 1970. Opens no "
                                   "database.")
    p.add_argument("times", nargs="+", metavar="TIME")
    p.set_defaults(func=cmd_ts)

    p = sub.add_parser("test-stream", help="connect to an RTSP URL and report what nvr "
                                           "would record (within 10 s)",
                       description="Opens the stream as nvr records it and reports, within "
                                   "10 s: codec, profile/level, size, pixel aspect ratio, "
                                   "measured frame rate and bitrate, key frame interval, "
                                   "whether a browser plays it; or why it can't be "
                                   "recorded. Opens no database. Exit status 0 if "
                                   "recordable.")
    p.add_argument("url", metavar="URL", help="rtsp://host[:port]/path")
    p.add_argument("--username", help="RTSP username")
    _add_password(p, "RTSP password")
    _add_stream_test_options(p)
    p.set_defaults(func=cmd_test_stream)

    p = sub.add_parser("sql", help="the sqlite3 shell on the database, holding its lock",
                       description="Runs the sqlite3 shell on the database with the integrity "
                                   "pragmas, holding the database lock so nvr can't run "
                                   "meanwhile. Arguments after -- go to sqlite3.")
    _add_db_dir(p)
    p.add_argument("--read-only", action="store_true", help="open read-only (a shared lock)")
    p.add_argument("sqlite_args", nargs="*", metavar="SQLITE3_ARG")
    p.set_defaults(func=cmd_sql)

    p = sub.add_parser("check", help="verify the database and sample files; repair with flags",
                       description=check.__doc__.split("\n\n")[1] if check.__doc__ else None,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_db_dir(p)
    p.add_argument("--verify-hashes", action="store_true",
                   help="read every sample file and compare its blake2b with the database")
    p.add_argument("--delete-orphan-rows", action="store_true",
                   help="delete the rows of recordings whose sample file is missing")
    p.add_argument("--trash-orphan-sample-files", action="store_true",
                   help="delete sample files that have no recording row (and leftover garbage)")
    p.add_argument("--trash-corrupt-rows", action="store_true",
                   help="delete recordings whose index is corrupt or disagrees with the file")
    p.add_argument("--raise-cum-recordings", action="store_true",
                   help="raise a stream's cum_recordings (its next recording id) past "
                        "recording rows at or beyond it")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("upgrade", help="upgrade a Moonfire NVR or older nvr database",
                       description="Upgrades the database (and its sample file dirs) to this "
                                   "version's schema. See docs/upgrade.md first.")
    _add_db_dir(p)
    upgrade.add_arguments(p)
    p.set_defaults(func=cmd_upgrade)

    p = sub.add_parser("config", help="edit sample file dirs, cameras, streams and users",
                       description="Scriptable configuration. While nvr runs (it holds "
                                   "the database), the change goes through its control "
                                   "socket (<db-dir>/control.sock) and is live at once.")
    csub = p.add_subparsers(dest="what", metavar="WHAT", required=True)

    q = csub.add_parser("dir", help="sample file directories")
    qs = q.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, hlp in (("add", "create a new, empty sample file dir"),
                        ("edit", "change a sample file dir's free-space floor or path"),
                        ("delete", "forget an empty sample file dir no stream uses")):
        r = qs.add_parser(action, help=hlp)
        _add_db_dir(r)
        r.add_argument("path", metavar="PATH" if action == "add" else "PATH_OR_ID")
        if action != "delete":
            r.add_argument("--free-space-floor", metavar="SIZE|N%",
                           help="keep this much of its filesystem free, deleting the oldest "
                                "recordings of its streams: a size (5G), a percentage (3%%), 0 "
                                "for none, or default (2%%, at least 1 GiB, at most 10%%)")
        if action == "edit":
            r.add_argument("--move-to", metavar="NEW_PATH",
                           help="the dir is now at NEW_PATH (its disk mounted elsewhere); "
                                "its meta there must be this dir's")
        r.set_defaults(func=cmd_config_dir)
    r = qs.add_parser("list", help="list sample file dirs")
    _add_db_dir(r)
    r.set_defaults(func=cmd_config_dir)

    q = csub.add_parser("camera", help="cameras")
    qs = q.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action in ("add", "edit"):
        r = qs.add_parser(action, help=f"{action} a camera")
        _add_db_dir(r)
        r.add_argument("name", metavar="NAME", help="short name, used in logs and file names")
        if action == "edit":
            r.add_argument("--rename", metavar="NEW_NAME")
        r.add_argument("--description")
        r.add_argument("--onvif-base-url", metavar="URL")
        r.add_argument("--username", help="RTSP username, sent when connecting")
        _add_password(r, "RTSP password")
        r.set_defaults(func=cmd_config_camera)
    r = qs.add_parser("delete", help="delete a camera, its streams and their recordings")
    _add_db_dir(r)
    r.add_argument("name", metavar="NAME")
    r.add_argument("--yes", action="store_true", help="confirm deleting its recordings")
    r.set_defaults(func=cmd_config_camera)
    r = qs.add_parser("list", help="list cameras")
    _add_db_dir(r)
    r.set_defaults(func=cmd_config_camera)

    q = csub.add_parser("stream", help="a camera's main, sub and ext streams")
    qs = q.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action in ("add", "edit"):
        r = qs.add_parser(action, help=f"{action} a stream")
        _add_db_dir(r)
        r.add_argument("camera", metavar="CAMERA")
        r.add_argument("type", choices=db.STREAM_TYPES)
        r.add_argument("--url", help="rtsp://host[:port]/path, without credentials")
        g = r.add_mutually_exclusive_group()
        g.add_argument("--record", dest="record", action="store_true", default=None,
                       help="record this stream")
        g.add_argument("--no-record", dest="record", action="store_false")
        r.add_argument("--rtsp-transport", choices=("tcp", "udp", "default"),
                       help="RTSP transport (default when added: tcp)")
        r.add_argument("--dir", metavar="PATH_OR_ID" + ("|none" if action == "edit" else ""),
                       help="sample file dir for its recordings")
        r.add_argument("--retain-bytes", metavar="SIZE",
                       help="keep at most this much video, e.g. 100G; oldest deleted first "
                            "(0 with --retain-days: no byte limit)")
        r.add_argument("--retain-days", type=float, metavar="N",
                       help="delete recordings that ended more than N days ago (fractions "
                            "allowed: 0.5 is 12 hours; 0 for no age limit)")
        r.add_argument("--flush-if-sec", type=int, metavar="SEC",
                       help="commit a finished recording to the database within this many "
                            f"seconds, 0 to {config.MAX_FLUSH_IF_SEC} (default when added: 120 "
                            f"main, 90 others)")
        if action == "edit":
            r.add_argument("--yes", action="store_true",
                           help="confirm deleting recordings when lowering --retain-bytes "
                                "or --retain-days")
        r.set_defaults(func=cmd_config_stream)
    r = qs.add_parser("delete", help="delete a stream and its recordings")
    _add_db_dir(r)
    r.add_argument("camera", metavar="CAMERA")
    r.add_argument("type", choices=db.STREAM_TYPES)
    r.add_argument("--yes", action="store_true", help="confirm deleting its recordings")
    r.set_defaults(func=cmd_config_stream)
    r = qs.add_parser("list", help="list streams")
    _add_db_dir(r)
    r.set_defaults(func=cmd_config_stream)
    r = qs.add_parser("test", help="test a stored stream (test-stream with its URL, "
                                   "transport and camera's credentials)",
                      description="`nvr.py test-stream` for a stored stream. Opens the "
                                  "database read-only; while nvr runs, the running nvr "
                                  "tests it (its control socket).")
    _add_db_dir(r)
    r.add_argument("camera", metavar="CAMERA")
    r.add_argument("type", choices=db.STREAM_TYPES)
    _add_stream_test_options(r, transport=False)
    r.set_defaults(func=cmd_config_stream_test)

    q = csub.add_parser("user", help="users of the web interface")
    qs = q.add_subparsers(dest="action", metavar="ACTION", required=True)
    perm_help = ("comma-separated viewVideo, readCameraConfigs, updateSignals, adminUsers, "
                 "configureCameras, protectRecordings; "
                 "or all, none")
    for action in ("add", "edit"):
        r = qs.add_parser(action, help=f"{action} a user")
        _add_db_dir(r)
        r.add_argument("name", metavar="USERNAME")
        _add_password(r, "password")
        r.add_argument("--permissions", help=perm_help + (" (default: viewVideo)"
                                                          if action == "add" else ""))
        if action == "edit":
            r.add_argument("--rename", metavar="NEW_USERNAME")
            r.add_argument("--clear-password", action="store_true",
                           help="remove the password (no password login)")
            g = r.add_mutually_exclusive_group()
            g.add_argument("--disable", dest="disable", action="store_true", default=None,
                           help="refuse every login and session of this user")
            g.add_argument("--enable", dest="disable", action="store_false")
        r.set_defaults(func=cmd_config_user)
    r = qs.add_parser("delete", help="delete a user and their sessions")
    _add_db_dir(r)
    r.add_argument("name", metavar="USERNAME")
    r.set_defaults(func=cmd_config_user)
    r = qs.add_parser("list", help="list users")
    _add_db_dir(r)
    r.set_defaults(func=cmd_config_user)

    p = sub.add_parser("login", help="create a session for a user and print its cookie",
                       description="Creates a web session for USERNAME without a password, "
                                   "for scripts, and prints `s=<cookie>`. The server must "
                                   "be stopped (it holds the database lock).")
    _add_db_dir(p)
    p.add_argument("username", metavar="USERNAME")
    p.add_argument("--permissions", help="the session's permissions instead of the user's: "
                   "comma-separated names, all, none, or JSON like {\"viewVideo\": true}")
    p.add_argument("--domain", help="the host name the cookie is for (recorded in the session)")
    p.add_argument("--curl-cookie-jar", metavar="PATH",
                   help="also write a Netscape cookie file for curl -b (mode 0600; needs "
                        "--domain)")
    p.add_argument("--session-flags", default="http-only,secure,same-site,same-site-strict",
                   help="cookie attributes: http-only, secure, same-site, same-site-strict "
                        "(default: all four)")
    p.set_defaults(func=cmd_login, action="login")

    p = sub.add_parser("sessions", help="list or revoke web sessions")
    ssub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    r = ssub.add_parser("list", help="every session: creation, last use, peer, user agent, "
                                     "state (expiry by the default limits: 90 days idle, "
                                     "365 days old)")
    _add_db_dir(r)
    r.add_argument("--user", metavar="USERNAME", help="only this user's sessions")
    r.set_defaults(func=cmd_sessions)
    r = ssub.add_parser("revoke", help="end a session (by the ID `sessions list` shows) or "
                                       "all of a user's",
                        description="Revokes sessions; while nvr runs, through its "
                                    "control socket (the session ends at once).")
    _add_db_dir(r)
    r.add_argument("id", nargs="?", metavar="ID")
    r.add_argument("--user", metavar="USERNAME", help="revoke all of this user's sessions")
    r.set_defaults(func=cmd_sessions)

    times = ("YYYY-mm-dd[THH:MM[:SS[:FFFFF]]][Z|+-HH:MM] (local zone if none; as `nvr.py "
             "ts` takes them) or 90 kHz units")
    p = sub.add_parser("protect", help="protected footage: time ranges retention never deletes",
                       description="Protects a time range of one stream (CAMERA/TYPE) or of "
                                   "every stream of a camera (CAMERA): recordings overlapping "
                                   "it are never deleted by retainBytes, retainDays or the "
                                   "free-space floor. While nvr runs, the command goes through "
                                   "it (its control socket, /api/protections).")
    psub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    r = psub.add_parser("add", help="protect a range of a camera's footage")
    _add_db_dir(r)
    r.add_argument("camera", metavar="CAMERA[/TYPE]",
                   help="a camera (all its streams) or one stream: driveway/main")
    r.add_argument("--start", required=True, metavar="TIME", help=f"range start: {times}")
    r.add_argument("--end", required=True, metavar="TIME", help="range end (exclusive)")
    r.add_argument("--label", required=True, metavar="TEXT",
                   help=f"what it is for (up to {db.MAX_PROTECTION_LABEL_CHARS} characters)")
    r.set_defaults(func=cmd_protect)
    r = psub.add_parser("list", help="list protections: id, camera[/type], start, end, "
                                     "label, creator, bytes they keep")
    _add_db_dir(r)
    r.add_argument("--camera", metavar="CAMERA", help="only this camera's")
    r.set_defaults(func=cmd_protect)
    r = psub.add_parser("edit", help="change a protection's range or label")
    _add_db_dir(r)
    r.add_argument("id", type=int, metavar="ID")
    r.add_argument("--start", metavar="TIME", help=f"new start: {times}")
    r.add_argument("--end", metavar="TIME", help="new end")
    r.add_argument("--label", metavar="TEXT", help="new label")
    r.set_defaults(func=cmd_protect)
    r = psub.add_parser("remove", help="remove a protection (retention may then delete what "
                                       "it kept)")
    _add_db_dir(r)
    r.add_argument("id", type=int, metavar="ID")
    r.set_defaults(func=cmd_protect)
    return parser


def main(argv=None) -> int:
    logging.basicConfig(level=os.environ.get("NVR_LOG", "INFO").upper(),
                        format="%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s")
    for h in logging.getLogger().handlers:  # FFmpeg's repeated lines, counted (PyAV 10)
        if not any(isinstance(f, logrepeat.RepeatFilter) for f in h.filters):
            h.addFilter(logrepeat.RepeatFilter(clock.RealClocks()))
    args = build_parser().parse_args(argv)
    try:
        try:
            return args.func(args)
        except db.DbLocked as e:
            # `run` holds the database: config, sessions, protect and login go through it.
            if args.command not in ("config", "sessions", "protect", "login"):
                raise
            return ctl.run(args, sys.modules[__name__], locked=str(e).split(";")[0])
    except (UsageError, config.ConfigError, db.DbError, dirmod.DirError, upgrade.UpgradeError,
            ValueError, ctl.ControlError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
