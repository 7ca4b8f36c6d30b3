"""The configuration rules and operations: cameras, streams, sample file dirs.

One place for what a configuration change may be and what it does, shared by the
command line (`nvr.py config camera|stream|dir ...`), the configuration API
(configapi.py, `/api/config/`) and, through them, the running system.

Each operation:
1. checks everything it is given (names, URLs, limits, the dir's meta at a new path,
   confirmations) against the database as it is, and raises `ConfigError(message,
   status)` before anything is written: 400 a bad value (the message names the field,
   as the caller spells it: `--flush-if-sec` on the command line, `flushIfSec` in the
   API), 404 no such camera/stream/dir, 409 it needs a confirmation (`--yes`,
   `deleteRecordings: true`; the message says how many recordings and how big) or
   conflicts (a name taken, a dir in use). A refused change leaves the database and
   the recorder exactly as they were.
2. stops what must stop first (`rec.stop_stream` / `rec.stop_dir`: the run ends with
   its reason and its last recording is committed), when nvr is running (`rec`, a
   recorder.Recorder; None from the command line, whose database lock means nvr
   isn't running);
3. writes in one transaction (db.py's methods inside one `Database.transaction`);
4. deletes recordings through the normal garbage path: rows to `garbage` in a flush,
   then the files are unlinked by the dir's syncer (running) or here (not running);
5. calls `rec.reconcile()`, which starts, stops or restarts only the streams whose
   recording configuration changed (recorder.py); the others keep their runs.

Operations are serialised by one lock (`_lock`), taken before the database lock and
never while holding it: a check and its write can't be split by another change, and
the database lock is free while a streamer is being stopped (it needs the lock to
commit its last recording).

Camera passwords are stored (the camera needs them) but never returned or printed:
the API says `passwordSet`.

Neighbours: db.py owns the rows and in-memory state; dir.py the dirs' files and meta;
retention.py the limits' meaning; recorder.py the running streamers and syncers;
nvr.py and configapi.py turn arguments or JSON into these calls and print or answer.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import threading
import urllib.parse

import db as dbmod
import dir as dirmod
import retention
import stream

logger = logging.getLogger(__name__)

# A longer wait to commit only risks more on a power failure; one day is plenty.
MAX_FLUSH_IF_SEC = 86400
# Defaults of a new stream (Moonfire's: a main stream commits within 2 minutes).
DEFAULT_FLUSH_IF_SEC = {"main": 120, "sub": 90, "ext": 90}
DEFAULT_RTSP_TRANSPORT = "tcp"
MAX_TEXT_CHARS = 4096   # a description, user name or URL: anything longer is a mistake

# The keys of a stream's settings as the API names them (STREAM_IN, docs/api.md).
STREAM_KEYS = ("url", "rtspTransport", "record", "sampleFileDirId", "retainBytes",
               "retainDays", "flushIfSec")
CAMERA_KEYS = ("shortName", "description", "onvifBaseUrl", "username", "password")
FLOOR_KEYS = ("freeSpaceFloorBytes", "freeSpaceFloorPercent")

_lock = threading.Lock()


class ConfigError(Exception):
    """A refused change: a one-line `message` saying what to do, and the HTTP `status`
    it maps to (400 bad value, 404 not found, 409 needs confirmation or conflicts)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status


@dataclasses.dataclass(frozen=True)
class Names:
    """How messages name fields and the confirmation, for the caller that will read
    them: the command line's options or the API's JSON keys."""
    fields: dict
    confirm: str              # "add --yes" / "set deleteRecordings: true"
    retention_hint: str
    dir_hint: str
    credentials_hint: str


CLI = Names(
    fields={"url": "--url", "rtspTransport": "--rtsp-transport", "record": "--record",
            "sampleFileDirId": "--dir", "retainBytes": "--retain-bytes",
            "retainDays": "--retain-days", "flushIfSec": "--flush-if-sec",
            "shortName": "camera name", "description": "--description",
            "onvifBaseUrl": "--onvif-base-url", "username": "--username",
            "password": "--password", "path": "PATH",
            "freeSpaceFloorBytes": "--free-space-floor",
            "freeSpaceFloorPercent": "--free-space-floor"},
    confirm="add --yes",
    retention_hint="add --retain-bytes SIZE (e.g. 100G), --retain-days N (e.g. 30) or both",
    dir_hint="add --dir PATH_OR_ID",
    credentials_hint="`config camera edit NAME --username U --password P`")

API = Names(
    fields={k: k for k in STREAM_KEYS + CAMERA_KEYS + FLOOR_KEYS + ("path",)},
    confirm="set deleteRecordings: true",
    retention_hint="set retainBytes (e.g. 107374182400 for 100 GiB), retainDays "
                   "(e.g. 30) or both",
    dir_hint="set sampleFileDirId (GET /api/config/ lists the dirs)",
    credentials_hint="the camera's username and password")


def format_size(n: int) -> str:
    for unit, div in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n} B"


# ---------------------------------------------------------------------------
# Checks of single values.

def check_name(what: str, name: str | None) -> str | None:
    """A new camera short name (None: not given); user names have auth.check_username.
    Names go into log lines, so no control characters; a camera's also into
    `CAMERA/TYPE` in logs and check's output, so no '/'."""
    if name is None:
        return None
    if not isinstance(name, str):
        raise ConfigError(f"the {what} must be a string")
    if not name:
        raise ConfigError(f"the {what} must not be empty")
    if dbmod.breaks_log_lines(name):
        raise ConfigError(f"the {what} {name!r} must not contain control characters or "
                          f"line breaks")
    if what == "camera name" and "/" in name:
        raise ConfigError(f"the {what} {name!r} must not contain '/' (logs name streams "
                          f"CAMERA/TYPE)")
    if len(name) > MAX_TEXT_CHARS:
        raise ConfigError(f"the {what} is too long (over {MAX_TEXT_CHARS} characters)")
    return name


def check_rtsp_url(url: str, names: Names = CLI) -> str:
    """A camera URL to store: rtsp:// (or rtsps://) without credentials, or `demo:`
    (demo.py's synthetic camera, e.g. `demo:320x180@15`)."""
    if not isinstance(url, str):
        raise ConfigError(f"{names.fields['url']} must be a string")
    if url.startswith("demo:"):
        import demo   # PyAV's encoder: only for demo URLs
        try:
            demo.parse_url(url, demo.DEFAULT_MODE)
        except stream.StreamError as e:
            raise ConfigError(f"bad URL: {e}") from None
        return url
    m = re.fullmatch(r"rtsps?://([^/@]*@)?[^/]+(/.*)?", url)
    if not m or dbmod.breaks_log_lines(url) or len(url) > MAX_TEXT_CHARS:
        raise ConfigError(f"bad URL {url!r}; expected rtsp://host[:port]/path")
    if m.group(1):
        raise ConfigError(f"don't put credentials in the URL; give them to the camera with "
                          f"{names.credentials_hint}")
    try:
        urllib.parse.urlsplit(url).port   # brackets of an IPv6 literal, a numeric port
    except ValueError as e:
        raise ConfigError(f"bad URL {url!r}: {e}; expected rtsp://host[:port]/path "
                          f"(an IPv6 address in brackets: rtsp://[2001:db8::1]:554/path)") \
            from None
    return url


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


MAX_BYTES = 2 ** 63 - 1   # SQLite's integers (and Moonfire's i64)


def _whole(names: Names, key: str, v, what: str = f"a whole number from 0 to {MAX_BYTES}") -> int:
    if not _is_int(v) or not 0 <= v <= MAX_BYTES:
        raise ConfigError(f"{names.fields[key]} must be {what}, not {v!r}")
    return v


def _text(names: Names, key: str, v) -> str:
    if not isinstance(v, str):
        raise ConfigError(f"{names.fields[key]} must be a string")
    if dbmod.breaks_log_lines(v) or len(v) > MAX_TEXT_CHARS:
        raise ConfigError(f"{names.fields[key]} must be one line of at most "
                          f"{MAX_TEXT_CHARS} characters")
    return v


def stream_config(base: dict, base_dir: int | None, changes: dict,
                  names: Names) -> tuple[dict, int | None]:
    """The StreamConfig and dir a stream would have after `changes` (STREAM_KEYS, as
    the API names them; `rtspTransport` "default" means FFmpeg's; `retainDays` None or
    0 means no age limit; `sampleFileDirId` None means none). Checks values only;
    `_check_recordable` and the dir's existence are checked by the operations."""
    unknown = set(changes) - set(STREAM_KEYS)
    if unknown:
        raise ConfigError(f"unknown stream setting(s) {', '.join(sorted(unknown))}")
    config = dict(base)
    dir_id = base_dir
    f = names.fields
    if "url" in changes:
        config["url"] = check_rtsp_url(changes["url"], names)
    if "record" in changes:
        if not isinstance(changes["record"], bool):
            raise ConfigError(f"{f['record']} must be true or false")
        config["mode"] = "record" if changes["record"] else ""
    if "rtspTransport" in changes:
        t = changes["rtspTransport"]
        if t not in ("tcp", "udp", "default", ""):
            raise ConfigError(f"{f['rtspTransport']} must be tcp, udp or default, not {t!r}")
        config["rtspTransport"] = "" if t == "default" else t
    if "retainBytes" in changes:
        config["retainBytes"] = _whole(names, "retainBytes", changes["retainBytes"])
    if "retainDays" in changes:
        days = changes["retainDays"]
        if days is None:
            days = 0
        if (not isinstance(days, (int, float)) or isinstance(days, bool)
                or not 0 <= days <= retention.MAX_RETAIN_DAYS):   # NaN fails this too
            shown = f"{days:g}" if isinstance(days, float) else repr(days)
            raise ConfigError(f"{f['retainDays']} must be from 0 (no age limit) to "
                              f"{retention.MAX_RETAIN_DAYS}, not {shown}")
        config.pop("retainDays", None)
        if days:
            config["retainDays"] = int(days) if days == int(days) else days
    if "flushIfSec" in changes:
        v = changes["flushIfSec"]
        if not _is_int(v) or not 0 <= v <= MAX_FLUSH_IF_SEC:
            raise ConfigError(f"{f['flushIfSec']} must be from 0 to {MAX_FLUSH_IF_SEC} "
                              f"(one day), not {v!r}")
        config["flushIfSec"] = v
    if "sampleFileDirId" in changes:
        v = changes["sampleFileDirId"]
        if v is not None and not _is_int(v):
            raise ConfigError(f"{f['sampleFileDirId']} must be a dir id or null")
        dir_id = v
    return config, dir_id


def _check_recordable(config: dict, dir_id, names: Names) -> None:
    if config.get("mode") == "record":
        if dir_id is None:
            raise ConfigError(f"a recording stream needs a sample file dir: {names.dir_hint}")
        if not config.get("retainBytes") and not config.get("retainDays"):
            # Moonfire #327: a zero limit deletes every recording as soon as it is made.
            raise ConfigError(f"a recording stream needs a retention limit: "
                              f"{names.retention_hint}")


def check_floor(floor: dict, names: Names) -> dict:
    """SampleFileDirConfig floor keys (`{}`: the default). Both at once is a 400."""
    unknown = set(floor) - set(FLOOR_KEYS)
    if unknown:
        raise ConfigError(f"unknown floor setting(s) {', '.join(sorted(unknown))}")
    out = {k: v for k, v in floor.items() if v is not None}
    if len(out) > 1:
        raise ConfigError("give freeSpaceFloorBytes or freeSpaceFloorPercent, not both")
    if "freeSpaceFloorBytes" in out:
        _whole(names, "freeSpaceFloorBytes", out["freeSpaceFloorBytes"])
    if "freeSpaceFloorPercent" in out:
        v = out["freeSpaceFloorPercent"]
        if (not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v)
                or not 0 <= v <= retention.MAX_FLOOR_PERCENT):
            raise ConfigError(f"{names.fields['freeSpaceFloorPercent']} must be a "
                              f"percentage from 0 to {retention.MAX_FLOOR_PERCENT}, "
                              f"not {v!r}")
        out["freeSpaceFloorPercent"] = int(v) if v == int(v) else v
    return out


# ---------------------------------------------------------------------------
# Lookups: 404s.

def get_camera(d: dbmod.Database, camera_id: int) -> dbmod.Camera:
    c = d.cameras.get(camera_id)
    if c is None:
        raise ConfigError(f"no camera with id {camera_id}", 404)
    return c


def get_stream(d: dbmod.Database, camera_id: int, type_: str) -> dbmod.Stream:
    c = get_camera(d, camera_id)
    sid = c.streams.get(type_)
    if sid is None:
        raise ConfigError(f"camera {c.short_name} has no {type_} stream", 404)
    return d.streams[sid]


def get_dir(d: dbmod.Database, dir_id: int) -> dbmod.SampleFileDir:
    x = d.dirs.get(dir_id)
    if x is None:
        raise ConfigError(f"no sample file dir with id {dir_id}", 404)
    return x


def _dir_exists(d: dbmod.Database, dir_id: int | None, names: Names) -> None:
    if dir_id is not None and dir_id not in d.dirs:
        raise ConfigError(f"{names.fields['sampleFileDirId']}: no sample file dir with id "
                          f"{dir_id}")


def _name_free(d: dbmod.Database, name: str, camera_id: int | None = None) -> None:
    if any(c.short_name == name and c.id != camera_id for c in d.cameras.values()):
        raise ConfigError(f"a camera named {name!r} already exists", 409)


# ---------------------------------------------------------------------------
# Recordings: counting what a change deletes, and deleting through garbage.

@dataclasses.dataclass
class Doomed:
    """Recordings a change would delete: committed rows plus those not yet committed,
    and their sizes (sample_file_bytes, as `config stream list` counts)."""
    count: int = 0
    bytes: int = 0

    def describe(self) -> str:
        return f"{self.count} recording(s) ({format_size(self.bytes)})"


def recordings_of(d: dbmod.Database, stream_ids) -> Doomed:
    out = Doomed()
    with d.locked("config: count recordings"):
        for sid in stream_ids:
            s = d.streams[sid]
            n = d.conn.execute("select count(*) from recording where stream_id = ?",
                               (sid,)).fetchone()[0]
            out.count += n + len(s.uncommitted)
            out.bytes += s.sample_file_bytes + sum(r.sample_file_bytes
                                                   for r in s.uncommitted)
    return out


def _all_committed(d: dbmod.Database, stream_ids) -> None:
    """Before deleting streams (under the database lock): their recordings must all be
    committed, as `rec.stop_stream` leaves them unless its flush failed. Checked for all
    first, so db.py's deletes can't fail half way with memory changed."""
    for sid in stream_ids:
        if d.streams[sid].uncommitted:
            raise ConfigError(f"stream {d.cameras[d.streams[sid].camera_id].short_name}/"
                              f"{d.streams[sid].type} still has recordings not committed "
                              f"(a flush failed? see the log); try again", 409)


def _collect_garbage(d: dbmod.Database, rec) -> None:
    """Step 4's second half: unlink the garbage files of dirs no syncer looks after
    (all of them when nvr isn't running). A running dir's syncer collects after the
    flush that made the garbage (dir.py's Syncer, `flushed`)."""
    syncing = set(getattr(rec, "syncers", {}) or {}) if rec is not None else set()
    n = sum(d.collect_garbage(x.id) for x in list(d.dirs.values())
            if x.garbage_needs_unlink and x.id not in syncing)
    if n:
        d.flush("config: garbage collected")


def _reconcile(rec) -> None:
    if rec is not None:
        rec.reconcile()   # it logs what it started, stopped or restarted


# ---------------------------------------------------------------------------
# Cameras

def _camera_config(base: dict, changes: dict, names: Names) -> dict:
    config = dict(base)
    for key in ("description", "onvifBaseUrl", "username"):
        if key in changes:
            v = changes[key]
            if v is None:
                config.pop(key, None)
            else:
                config[key] = _text(names, key, v)
    if "password" in changes:
        v = changes["password"]
        if v is None:
            config.pop("password", None)
        else:
            if not isinstance(v, str) or len(v) > MAX_TEXT_CHARS:
                raise ConfigError(f"{names.fields['password']} must be a string of at most "
                                  f"{MAX_TEXT_CHARS} characters")
            config["password"] = v
    return config


def add_camera(d: dbmod.Database, rec, short_name: str, fields: dict | None = None,
               streams: dict | None = None, *, names: Names = API) -> int:
    """A camera (`fields`: description, onvifBaseUrl, username, password) and,
    optionally, its streams ({type: STREAM_IN}) in one transaction; returns its id."""
    fields = dict(fields or {})
    streams = dict(streams or {})
    with _lock:
        check_name("camera name", short_name)
        config = _camera_config({}, fields, names)
        new_streams = []
        for type_, changes in sorted(streams.items()):
            if type_ not in dbmod.STREAM_TYPES:
                raise ConfigError(f"stream type must be one of {', '.join(dbmod.STREAM_TYPES)}, "
                                  f"not {type_!r}")
            if not isinstance(changes, dict):
                raise ConfigError(f"streams.{type_} must be an object")
            scfg, dir_id = _new_stream_config(type_, changes, names)
            _dir_exists(d, dir_id, names)
            new_streams.append((type_, scfg, dir_id))
        with d.locked("config: add camera"):
            _name_free(d, short_name)
            # 3. One transaction; the in-memory state follows db.py's methods, and is
            # undone here if the transaction is (a SQLite error: nothing refused).
            cid, sids = None, []
            try:
                with d.transaction():
                    cid = d.add_camera(short_name, config)
                    for type_, scfg, dir_id in new_streams:
                        sids.append(d.add_stream(cid, type_, scfg, dir_id))
            except BaseException:
                for sid in sids:
                    d.streams.pop(sid, None)
                if cid is not None:
                    d.cameras.pop(cid, None)
                raise
    _reconcile(rec)
    return cid


def edit_camera(d: dbmod.Database, rec, camera_id: int, fields: dict, *,
                names: Names = API) -> None:
    """Renames (`shortName`) and/or changes description, onvifBaseUrl, username,
    password (None clears). New credentials restart its recording streams."""
    fields = dict(fields)
    with _lock:
        c = get_camera(d, camera_id)
        name = check_name("camera name", fields.pop("shortName", None))
        config = _camera_config(c.config, fields, names)
        with d.locked("config: edit camera"):
            if name is not None:
                _name_free(d, name, camera_id)
            d.update_camera(camera_id, short_name=name, config=config)
    _reconcile(rec)


def delete_camera(d: dbmod.Database, rec, camera_id: int, *, delete_recordings: bool = False,
                  names: Names = API) -> int:
    """Deletes a camera, its streams and (confirmed) their recordings; returns how many
    recordings were deleted."""
    with _lock:
        c = get_camera(d, camera_id)
        sids = sorted(c.streams.values())
        doomed = recordings_of(d, sids)
        if doomed.count and not delete_recordings:
            raise ConfigError(f"camera {c.short_name} has {doomed.describe()}; "
                              f"{names.confirm} to delete it and them", 409)
        try:
            if rec is not None:
                for sid in sids:   # 2. the last recordings committed first
                    rec.stop_stream(sid, "stream deleted")
            with d.locked("config: delete camera"), d.transaction():
                _all_committed(d, sids)
                n = d.delete_camera(camera_id)
        except BaseException:   # re-raises: a SQLite error; what stopped starts again
            _reconcile(rec)
            raise
        if n:
            d.flush(f"config: camera {c.short_name} deleted")
            _collect_garbage(d, rec)
    _reconcile(rec)
    return n


# ---------------------------------------------------------------------------
# Streams

def _new_stream_config(type_: str, changes: dict, names: Names) -> tuple[dict, int | None]:
    base = {"mode": "", "rtspTransport": DEFAULT_RTSP_TRANSPORT, "retainBytes": 0,
            "flushIfSec": DEFAULT_FLUSH_IF_SEC[type_]}
    config, dir_id = stream_config(base, None, changes, names)
    if "url" not in config:
        raise ConfigError(f"{names.fields['url']} is required")
    _check_recordable(config, dir_id, names)
    return config, dir_id


def add_stream(d: dbmod.Database, rec, camera_id: int, type_: str, changes: dict, *,
               names: Names = API) -> int:
    """A stream of a camera (STREAM_IN `changes`); a recorded one starts recording."""
    with _lock:
        c = get_camera(d, camera_id)
        if type_ not in dbmod.STREAM_TYPES:
            raise ConfigError(f"stream type must be one of {', '.join(dbmod.STREAM_TYPES)}")
        config, dir_id = _new_stream_config(type_, changes, names)
        _dir_exists(d, dir_id, names)
        with d.locked("config: add stream"):
            if type_ in c.streams:
                raise ConfigError(f"camera {c.short_name} already has a {type_} stream", 409)
            sid = d.add_stream(camera_id, type_, config, dir_id)
    _reconcile(rec)
    return sid


@dataclasses.dataclass
class StreamEdit:
    """What `edit_stream` did: the recordings the new limits deleted."""
    stream_id: int
    deleted: Doomed


def edit_stream(d: dbmod.Database, rec, camera_id: int, type_: str, changes: dict, *,
                delete_recordings: bool = False, names: Names = API) -> StreamEdit:
    """Changes a stream's settings. A lower limit that would delete recordings now needs
    the confirmation; they are then queued for deletion and deleted by a flush (reference
    §3.8). A changed url, transport or dir restarts its run (reconcile)."""
    with _lock:
        s = get_stream(d, camera_id, type_)
        config, dir_id = stream_config(s.config, s.sample_file_dir_id, changes, names)
        _dir_exists(d, dir_id, names)
        _check_recordable(config, dir_id, names)
        if dir_id != s.sample_file_dir_id and (s.range_90k is not None or s.uncommitted
                                               or s.to_delete):
            raise ConfigError(f"can't change the sample file dir of stream "
                              f"{d.cameras[camera_id].short_name}/{type_} while it has "
                              f"recordings (their files live in the old dir); delete them "
                              f"first, or the stream", 409)
        plan = d.delete_oldest_recordings(s.id, config=config, dry_run=True)
        doomed = Doomed(len(plan), sum(r.sample_file_bytes for r in plan))
        if doomed.count and not delete_recordings:
            raise ConfigError(f"the new limit deletes {doomed.describe()} now; "
                              f"{names.confirm} to go ahead", 409)
        with d.locked("config: edit stream"):
            d.update_stream(s.id, config=config, sample_file_dir_id=dir_id)
            deleted = Doomed()
            if doomed.count:
                rows = d.delete_oldest_recordings(s.id)
                deleted = Doomed(len(rows), sum(r.sample_file_bytes for r in rows))
        if deleted.count:
            # Lowering a limit deletes at once what no longer fits (reference §3.8).
            d.flush("config: lower retention")
            _collect_garbage(d, rec)
    _reconcile(rec)
    return StreamEdit(s.id, deleted)


def delete_stream(d: dbmod.Database, rec, camera_id: int, type_: str, *,
                  delete_recordings: bool = False, names: Names = API) -> int:
    """Deletes a stream and (confirmed) its recordings; returns how many."""
    with _lock:
        s = get_stream(d, camera_id, type_)
        c = d.cameras[camera_id]
        doomed = recordings_of(d, [s.id])
        if doomed.count and not delete_recordings:
            raise ConfigError(f"stream {c.short_name}/{type_} has {doomed.describe()}; "
                              f"{names.confirm} to delete it and them", 409)
        try:
            if rec is not None:
                rec.stop_stream(s.id, "stream deleted")
            with d.locked("config: delete stream"), d.transaction():
                _all_committed(d, [s.id])
                n = d.delete_stream(s.id)
        except BaseException:   # re-raises: a SQLite error; what stopped starts again
            _reconcile(rec)
            raise
        if n:
            d.flush(f"config: stream {c.short_name}/{type_} deleted")
            _collect_garbage(d, rec)
    _reconcile(rec)
    return n


# ---------------------------------------------------------------------------
# Sample file dirs

def add_dir(d: dbmod.Database, rec, path: str, floor: dict | None = None, *,
            names: Names = API) -> int:
    """Creates a new, empty sample file dir (dir.py C1-C5)."""
    with _lock:
        path = _path(path, names)
        cfg = check_floor(floor or {}, names)
        _path_free(d, path)
        try:
            return d.add_sample_file_dir(path, cfg)
        except dirmod.DirError as e:
            raise ConfigError(str(e)) from None
        except OSError as e:
            raise ConfigError(f"can't create sample file dir {path}: {e.strerror or e}") \
                from None


def _path(path, names: Names) -> str:
    if not isinstance(path, str) or not path or "\0" in path:
        raise ConfigError(f"{names.fields['path']} must be a non-empty path")
    if dbmod.breaks_log_lines(path):
        raise ConfigError(f"{names.fields['path']} must not contain control characters")
    return os.path.abspath(path)


def _path_free(d: dbmod.Database, path: str, dir_id: int | None = None) -> None:
    for x in d.dirs.values():
        if x.path == path and x.id != dir_id:
            raise ConfigError(f"sample file dir {path} is already in the database "
                              f"(id {x.id})", 409)


def check_meta_at(d: dbmod.Database, x: dbmod.SampleFileDir, path: str) -> None:
    """Before a move, without locking or writing: the `meta` at `path` must be this
    dir's (this database, this dir's uuid). dir.py's open (O2) checks it again, with
    the open ids, when the dir is opened there."""
    try:
        fs = d.fs_factory(path)
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist; mount the disk there first") from None
    except (NotADirectoryError, FileExistsError):
        raise ConfigError(f"{path} is not a directory") from None
    except PermissionError:
        raise ConfigError(f"{path}: permission denied; check that it is owned by the user "
                          f"nvr runs as (uid {os.getuid()})") from None
    try:
        raw = fs.read_file(dirmod.META_NAME)
    except FileNotFoundError:
        raise ConfigError(f"{path} has no meta file, so it isn't sample file dir {x.id} "
                          f"({x.path}) moved there; is the disk mounted?") from None
    except OSError as e:
        raise ConfigError(f"can't read {path}/meta: {e.strerror or e}") from None
    finally:
        fs.close()
    try:
        m = dirmod.decode_meta(raw)
    except dirmod.DirError as e:
        raise ConfigError(f"{path}/meta is damaged ({e})") from None
    if m.db_uuid != d.uuid:
        raise ConfigError(f"{path} belongs to another database, not this one; it isn't "
                          f"sample file dir {x.id} ({x.path}) moved there")
    if m.dir_uuid != x.uuid:
        other = next((o for o in d.dirs.values() if o.uuid == m.dir_uuid), None)
        which = f"sample file dir {other.id} ({other.path})" if other else \
            "a dir this database no longer has"
        raise ConfigError(f"{path} is {which}, not sample file dir {x.id} ({x.path})")


def edit_dir(d: dbmod.Database, rec, dir_id: int, *, path: str | None = None,
             floor: dict | None = None, names: Names = API) -> None:
    """Changes a dir's free-space floor (`floor`: {} for the default; None: unchanged)
    and/or moves it to `path`, where its disk is now mounted.

    A move: the meta at the new path must be this dir's (checked before anything
    stops); then the dir's streams and syncer stop (rec.stop_dir: their last
    recordings committed), the row takes the new path and the dir is opened there
    (dir.py O1-O6, which checks the meta again), and reconcile starts them again."""
    with _lock:
        x = get_dir(d, dir_id)
        cfg = None if floor is None else check_floor(floor, names)
        new_path = None if path is None else _path(path, names)
        if new_path == x.path:
            new_path = None
        if new_path is not None:
            _path_free(d, new_path, dir_id)
            check_meta_at(d, x, new_path)
        if new_path is not None:
            if rec is not None:
                rec.stop_dir(dir_id, f"sample file dir moving to {new_path}")
            try:
                d.move_sample_file_dir(dir_id, new_path)
            except (dirmod.DirError, OSError) as e:
                _reconcile(rec)   # the old path is back: restart what stopped
                raise ConfigError(f"can't move sample file dir {x.id} to {new_path}: "
                                  f"{e}; it stays at {x.path}") from None
        if cfg is not None:   # after the move, which may still fail
            d.update_sample_file_dir(dir_id, {k: v for k, v in x.config.items()
                                              if k not in FLOOR_KEYS} | cfg)
    _reconcile(rec)


def delete_dir(d: dbmod.Database, rec, dir_id: int, *, names: Names = API) -> None:
    """Forgets an empty dir no stream uses (dir.py D1-D3); its files stay."""
    with _lock:
        x = get_dir(d, dir_id)
        users = [f"{d.cameras[s.camera_id].short_name}/{s.type}"
                 for s in d.streams.values() if s.sample_file_dir_id == dir_id]
        if users:
            raise ConfigError(f"sample file dir {x.path} is used by stream(s) "
                              f"{', '.join(sorted(users))}; move or delete them first", 409)
        if rec is not None:   # no stream uses it: this stops only its syncer, if any
            rec.stop_dir(dir_id, "sample file dir deleted")
        if x.garbage_needs_unlink or x.garbage_unlinked:
            _collect_garbage(d, rec)
            if x.garbage_unlinked:
                d.flush("config: garbage collected")   # G4: the rows go
            if x.garbage_needs_unlink or x.garbage_unlinked:
                raise ConfigError(f"sample file dir {x.path} still has garbage to collect "
                                  f"(an unlink failed: see the log); try again later", 409)
        try:
            d.delete_sample_file_dir(dir_id)
        except dirmod.DirError as e:
            _reconcile(rec)
            raise ConfigError(str(e), 409) from None
    _reconcile(rec)
