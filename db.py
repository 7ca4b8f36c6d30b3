"""The database: the one read-write SQLite connection and the in-memory state.

Files: `<db dir>/db` is the SQLite database (schema.sql, version 9). The
database holds password hashes, session hashes and camera passwords, so it is
private to the user running nvr whatever the umask: `init` creates the directory
0700 and the file 0600, and SQLite gives the `-wal`/`-shm`/`-journal` files the
database file's mode (`run` warns about looser modes, nvr.py). The
directory itself is locked with a non-blocking `flock` for as long as a
process uses it: exclusive for read-write, shared for read-only, so two nvr
processes can never write one database (reference §2.1).

What lives in memory (loaded at open, kept current by flushes):
- sample file dirs, cameras, streams, video sample entries, users;
- protections (schema 9's `protection` rows, a handful: retention consults them on
  every pass, so they are kept in memory like the configuration);
- per stream: committed totals (range, duration, bytes, filesystem bytes),
  day summaries in the server's time zone, the `cum_*` counters, the
  uncommitted recordings (written or being written, not yet in SQLite), and
  the recordings queued for deletion by retention.

Loading totals: a stream's range (first start, last end) comes from two index
lookups at open. Its totals and day summaries depend on every recording, so they
are summed by SQLite from the `recording_cover` index, a chunk of local days at a
time (`load_totals_step`: one aggregate query per chunk, newest days first), never
row by row in Python. `Stream.totals_from_90k` is the boundary: the totals count
exactly the committed recordings starting at or after it, so a flush adds or
subtracts a recording only if it starts there, and the loader counts the ones
before it as it walks back. An open loads everything before returning
(`totals="now"`, for the CLI and tests); `run` opens with
`totals="background"`, so start-up doesn't grow with history: a thread
(`totals-loader`) walks the chunks, releasing the database lock between them,
while the API says which streams are still loading (`totalsComplete`) and
retention's byte limit waits for the stream's totals (`delete_oldest_recordings`;
the syncer's idle check applies it once they are in). Age limits and the
free-space floor need only the range and the rows, so they act at once.
Recording rows themselves stay in SQLite and are read through the
`recording_cover` index; `video_index` blobs go through a small LRU cache.

Writes happen in `flush(reason)`, one `BEGIN IMMEDIATE` transaction: new
video sample entries, the synced prefix of each stream's uncommitted
recordings (recording, recording_integrity, recording_playback rows; an
abandoned one in it uses up its id, and one whose fsync failed gets a
`garbage` row instead, dir.py S2F), stream counters, retention deletions
moved to `garbage`, garbage rows whose files are unlinked, the `open` row's
end time, and whatever the flush hooks write (auth usage). Configuration
edits are their own small transactions, as are protection edits; config.py's operations (the
`config` subcommands, the configuration API) join several into one (`transaction` inside
another joins it). Recording ids
are assigned in memory from `cum_recordings` without a transaction; a crash
before the flush leaves files with ids >= `cum_recordings`, which start-up
recovery unlinks (dir.py; invariants §3.7).

Threads and locks: one lock, the database lock (`Database.locked()`), guards
this state and the connection; streamer threads (writer.py) update their
growing recordings under it, the syncers (dir.py) mark them synced and flush,
HTTP threads list. Hold it briefly: no disk or network I/O under it except
SQLite itself; a guard warns when it is held over 1 s (`Database.lock` is the
raw lock without that guard, for writer.py's per-frame section). Locks rank below
it: live.py's per-connection queue lock, taken inside `frame_indexed` callbacks
with the database lock held; never take the database lock while holding one.
recorder.py's locks rank above it: taken without it held (a change to the running
system takes it briefly inside them, and waits for streamers that take it).

Ownership: dir.py owns the sample file dirs' files and their meta procedures
(this module calls them in order and owns the rows); retention.py decides which
recordings retention deletes (this module feeds it rows and queues its answer);
recording.py owns the index format; writer.py produces `RecordingToInsert`s; check.py verifies what
this module wrote.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime
import fcntl
import json
import logging
import os
import secrets
import sqlite3
import threading
import unicodedata
import uuid as uuidlib

import auth
import clock
import dir as dirmod
import logrepeat
import metrics
import recording
import retention

logger = logging.getLogger(__name__)


def breaks_log_lines(name: str) -> bool:
    """Whether a camera or user name holds a control character or a line or paragraph
    separator: names go into log lines, which such characters could split or forge."""
    return any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in name)

SCHEMA_VERSION = 9
DB_FILENAME = "db"
SCHEMA_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schema.sql")

# Files are counted in whole filesystem blocks for retention (Moonfire #89; retention.py).
ASSUMED_BLOCK_SIZE_BYTES = retention.ASSUMED_BLOCK_SIZE_BYTES

# recording.flags bits. Only TRAILING_ZERO is stored; the others mark
# in-memory rows in listings, as Moonfire's API does.
FLAG_TRAILING_ZERO = 1
FLAG_GROWING = 1 << 30
FLAG_UNCOMMITTED = 1 << 31

VIDEO_INDEX_CACHE_LEN = 1023
STREAM_TYPES = ("main", "sub", "ext")

# Run on every connection, read-only ones too (reference §2.1).
INTEGRITY_PRAGMAS = (
    "pragma foreign_keys = on",
    "pragma fullfsync = on",
    "pragma synchronous = 3",  # EXTRA: fsync the directory after journal deletes too
)

# How far back a time query looks, relying on the 5-minute maximum duration.
_LOOKBACK_90K = recording.MAX_RECORDING_WALL_DURATION_90K


class DbError(Exception):
    """A problem the user can act on; the message says what to do."""


class DbLocked(DbError):
    pass


class ProtectedOverLimit(Exception):
    """Not raised: what `Database` logs (logrepeat.py) while a stream's protected
    recordings alone keep it over its retainBytes."""


round_up = retention.round_up


def _not_a_dir(db_dir: str) -> str:
    return (f"database directory {db_dir} is not a directory (it or a parent is a file); "
            f"--db-dir names the directory that holds the database file '{DB_FILENAME}'")


def lock_db_dir(db_dir: str, read_only: bool) -> int:
    """Takes the database directory's flock; returns the fd that holds it."""
    try:
        fd = os.open(db_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise DbError(f"database directory {db_dir} does not exist; "
                      f"create it with `nvr.py init --db-dir {db_dir}`") from None
    except NotADirectoryError:
        raise DbError(_not_a_dir(db_dir)) from None
    except PermissionError as e:
        raise DbError(f"can't open database directory {db_dir}: {e.strerror}; run nvr as "
                      f"the user that owns it") from None
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if read_only else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DbLocked(
            f"database directory {db_dir} is locked by another process; "
            f"stop the running nvr (e.g. `systemctl stop nvr`) and try again (a running "
            f"nvr holds it exclusively, so --read-only doesn't help; read-only commands "
            f"only share it with each other)") from None
    return fd


def connect(db_dir: str, read_only: bool, create: bool = False) -> sqlite3.Connection:
    """Opens `<db_dir>/db` with explicit transactions and the integrity pragmas."""
    path = os.path.join(db_dir, DB_FILENAME)
    if not create and not os.path.exists(path):
        raise DbError(f"no database at {path}; create it with `nvr.py init --db-dir {db_dir}`")
    if os.path.exists(path) and not os.path.isfile(path):
        raise DbError(f"{path} is not a file; the database is the SQLite file '{DB_FILENAME}' "
                      f"in --db-dir {db_dir}")
    mode = "ro" if read_only else ("rwc" if create else "rw")
    conn = sqlite3.connect(f"file:{path}?mode={mode}", uri=True, isolation_level=None,
                           check_same_thread=False)
    for p in INTEGRITY_PRAGMAS:
        conn.execute(p)
    return conn


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection):
    """`BEGIN IMMEDIATE` ... `COMMIT`, or `ROLLBACK` on any exception. Inside another
    transaction (config.py's operations, one transaction of several of this module's
    edits) it joins that one: the outer one commits or rolls back everything."""
    if conn.in_transaction:
        yield conn
        return
    conn.execute("begin immediate")
    try:
        yield conn
    except BaseException:
        conn.execute("rollback")
        raise
    conn.execute("commit")


def uuid7(clocks: clock.Clocks) -> bytes:
    """A UUIDv7 (RFC 9562): 48-bit Unix milliseconds, then random bits."""
    ms = clocks.realtime() // 1_000_000
    b = bytearray(ms.to_bytes(6, "big") + secrets.token_bytes(10))
    b[6] = 0x70 | (b[6] & 0x0F)
    b[8] = 0x80 | (b[8] & 0x3F)
    return bytes(b)


# The database directory's and files' modes: only the user running nvr.
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def _make_private_dir(path: str) -> None:
    """Creates `path` (and missing parents, as the umask says) mode 0700; an
    existing directory is left as it is (`run` warns if it's readable by others)."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    try:
        os.mkdir(path, PRIVATE_DIR_MODE)
    except FileExistsError:
        if not os.path.isdir(path):
            raise
        return
    if os.stat(path).st_mode & 0o777 != PRIVATE_DIR_MODE:
        os.chmod(path, PRIVATE_DIR_MODE)  # a umask that took owner bits; still empty


def init(db_dir: str, clocks: clock.Clocks) -> bool:
    """Creates the database if absent; returns False if it already existed."""
    try:
        _make_private_dir(db_dir)
    except (FileExistsError, NotADirectoryError):
        raise DbError(_not_a_dir(db_dir)) from None
    except PermissionError as e:
        raise DbError(f"can't create database directory {db_dir}: {e.strerror}") from None
    lock_fd = lock_db_dir(db_dir, read_only=False)
    try:
        path = os.path.join(db_dir, DB_FILENAME)
        if os.path.exists(path):
            return False
        # SQLite would create the file 0644 less the umask; an empty file is an empty
        # database, so make it 0600 first. SQLite then gives -wal/-shm/-journal this
        # file's mode (and, run as root, its owner).
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                     PRIVATE_FILE_MODE)
        try:
            if os.fstat(fd).st_mode & 0o777 != PRIVATE_FILE_MODE:
                os.fchmod(fd, PRIVATE_FILE_MODE)  # a umask that took owner bits (0277)
        finally:
            os.close(fd)
        conn = connect(db_dir, read_only=False, create=True)
        try:
            # page_size only takes effect on an empty database outside WAL mode.
            conn.execute("pragma journal_mode = delete")
            conn.execute("pragma page_size = 16384")
            conn.execute("vacuum")
            with open(SCHEMA_PATH, encoding="utf-8") as f:
                schema = f.read()
            conn.executescript("begin immediate;\n" + schema + "\ncommit;")
            with transaction(conn):
                conn.execute("insert into meta (uuid, config) values (?, '{}')", (uuid7(clocks),))
            conn.execute("pragma journal_mode = wal")
        finally:
            conn.close()
        return True
    finally:
        os.close(lock_fd)


def get_schema_version(conn: sqlite3.Connection) -> int | None:
    has = conn.execute(
        "select count(*) from sqlite_master where type = 'table' and name = 'version'").fetchone()[0]
    if not has:
        return None
    return conn.execute("select max(id) from version").fetchone()[0]


def check_schema_version(conn: sqlite3.Connection) -> None:
    v = get_schema_version(conn)
    if v is None:
        raise DbError("this database has no version table; it predates Moonfire schema 0. "
                      "See docs/upgrade.md for the manual first step")
    if v < SCHEMA_VERSION:
        raise DbError(f"database schema version {v} is too old (expected {SCHEMA_VERSION}); "
                      f"back it up and run `nvr.py upgrade` (docs/upgrade.md)")
    if v > SCHEMA_VERSION:
        raise DbError(f"database schema version {v} is too new (expected {SCHEMA_VERSION}); "
                      f"use a newer nvr")


def boot_uuid() -> bytes | None:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return uuidlib.UUID(f.read().strip()).bytes
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------
# In-memory records.

@dataclasses.dataclass
class SampleFileDir:
    id: int
    uuid: bytes
    path: str
    last_complete_open: dirmod.Open | None
    dir: dirmod.SampleFileDir | None = None  # set once opened
    garbage_needs_unlink: set[int] = dataclasses.field(default_factory=set)
    garbage_unlinked: set[int] = dataclasses.field(default_factory=set)
    # SampleFileDirConfig: path, and the free-space floor (retention.py).
    config: dict = dataclasses.field(default_factory=dict)
    # Garbage this process made from recordings (composite id -> bytes in whole blocks),
    # until unlinked: space on its way back, which the free-space floor counts as free.
    garbage_fs_bytes: dict[int, int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Camera:
    id: int
    uuid: bytes
    short_name: str
    config: dict  # CameraConfig: description, onvifBaseUrl, username, password
    streams: dict[str, int] = dataclasses.field(default_factory=dict)  # type -> stream id


@dataclasses.dataclass
class Day:
    recordings: int = 0
    duration_90k: int = 0


@dataclasses.dataclass
class VideoSampleEntry:
    id: int
    width: int
    height: int
    rfc6381_codec: str
    data: bytes
    pasp_h_spacing: int = 1
    pasp_v_spacing: int = 1


@dataclasses.dataclass
class RecordingToInsert:
    """A recording not yet committed: written (or being written) by writer.py."""
    run_offset: int
    start_time_90k: int
    prev_media_duration_90k: int
    prev_runs: int
    video_sample_entry_id: int
    # While uncommitted, the writer's own bytearray: it only grows, and only under the
    # database lock; readers copy it (get_video_index, flush).
    video_index: bytes | bytearray = b""
    video_samples: int = 0
    video_sync_samples: int = 0
    sample_file_bytes: int = 0
    wall_duration_90k: int = 0
    media_duration_90k: int = 0
    local_time_delta_90k: int | None = None
    sample_file_blake2b: bytes | None = None
    flags: int = 0
    end_reason: str | None = None
    synced: bool = False   # file and dir fsynced: may be committed
    growing: bool = True   # the writer may still append
    # The index decoder's state before the latest key frame (SampleIndexEncoder.
    # walk_state; set by the writer): live view's segments walk from there.
    live_key_state: tuple | None = None
    # Frames appended but not yet in the sample file (writer.py coalesces them into
    # fewer write(2) calls): `(file offset, buffer)`, the buffer holding the file's
    # bytes from that offset on. Readers of the growing recording (mp4.FileChunk) take
    # the tuple once and the bytes the index covers past the offset from the buffer:
    # the writer only appends to a published buffer, and publishes a new tuple after
    # the old buffer is written. None: the file has every byte.
    tail: tuple[int, bytearray] | None = None
    # Given up by the writer (e.g. on shutdown mid-write). Once its file is
    # unlinked and the dir fsynced (`file_gone`), a flush skips it, consuming
    # its id; until then it holds back the stream's later recordings, so
    # cum_recordings never passes a file that could survive a crash.
    abandoned: bool = False
    file_gone: bool = False
    # Given up by the syncer after its file's fsync failed (dir.py S2F,
    # `abandon_to_garbage`): the next flush consumes its id and, in the same
    # transaction, puts a `garbage` row on its file, which is unlinked as any
    # garbage (G2-G4). Abandoned too; it holds back nothing.
    to_garbage: bool = False


@dataclasses.dataclass
class Stream:
    id: int
    camera_id: int
    type: str
    sample_file_dir_id: int | None
    config: dict  # StreamConfig: mode, url, rtspTransport, retainBytes, retainDays, flushIfSec
    cum_recordings: int
    cum_media_duration_90k: int
    cum_runs: int
    # Committed totals.
    range_90k: tuple[int, int] | None = None
    duration_90k: int = 0
    sample_file_bytes: int = 0
    fs_bytes: int = 0
    days: dict[str, Day] = dataclasses.field(default_factory=dict)
    # The totals and days above count the committed recordings starting at or after this
    # time; None: all of them. Set at open and lowered a chunk of days at a time until
    # None by `Database.load_totals_step` ("Loading totals", module docstring).
    totals_from_90k: int | None = None
    # Uncommitted recordings with ids cum_recordings, cum_recordings + 1, ...
    uncommitted: collections.deque = dataclasses.field(default_factory=collections.deque)
    fs_bytes_to_add: int = 0       # synced, uncommitted
    # Committed recordings queued for deletion (ListRow), oldest first.
    to_delete: list = dataclasses.field(default_factory=list)
    fs_bytes_to_delete: int = 0
    # Which rule queued each of `to_delete` (composite id -> "bytes" | "age" | "floor").
    to_delete_rule: dict = dataclasses.field(default_factory=dict)
    # What the flushes of this process deleted, by rule (retention.Deletion): in memory
    # only, for the Storage page; empty again after a restart.
    last_deletions: dict = dataclasses.field(default_factory=dict)
    last_deletion: "retention.Deletion | None" = None

    @property
    def record(self) -> bool:
        return self.config.get("mode") == "record"

    @property
    def retain_bytes(self) -> int:
        return int(self.config.get("retainBytes", 0))

    @property
    def retain_days(self) -> float | None:
        return retention.stream_limits(self.config).days

    def recorded_fs_bytes(self) -> int:
        """What the stream holds on disk now, each file in whole blocks as retention
        counts: committed (`fs_bytes`) plus every recording written since, finished or
        growing, not yet committed. The "used" of the Storage, System and Settings
        pages (a new stream shows its video before its first flush). Caller holds the
        database lock."""
        return self.fs_bytes + sum(round_up(r.sample_file_bytes) for r in self.uncommitted
                                   if not r.abandoned)

    @property
    def flush_if_sec(self) -> int:
        return int(self.config.get("flushIfSec", 0))

    @property
    def next_recording_id(self) -> int:
        return self.cum_recordings + len(self.uncommitted)


@dataclasses.dataclass
class User:
    id: int
    username: str
    config: dict  # UserConfig: disabled, unixUid, preferences
    password_hash: str | None
    password_id: int
    password_failure_count: int
    permissions: auth.Permissions

    @property
    def disabled(self) -> bool:
        return bool(self.config.get("disabled", False))


@dataclasses.dataclass
class ListRow:
    """One recording as listed (from the covering index, or uncommitted)."""
    composite_id: int
    open_id: int
    start_time_90k: int
    wall_duration_90k: int
    media_duration_90k: int
    video_samples: int
    video_sync_samples: int
    video_sample_entry_id: int
    sample_file_bytes: int
    run_offset: int
    flags: int
    end_reason: str | None = None

    @property
    def end_time_90k(self) -> int:
        return self.start_time_90k + self.wall_duration_90k

    @property
    def recording_id(self) -> int:
        return self.composite_id & 0xFFFFFFFF


@dataclasses.dataclass(frozen=True)
class FlushInfo:
    """The last flush, successful or failed (`Database.last_flush`,
    `Database.last_flush_error`; GET /api/system shows them)."""
    time_sec: float               # when it began, Unix seconds (Clocks.realtime)
    reason: str                   # why it ran ("flush(reason)" in the log)
    duration_sec: float           # how long it took (monotonic), lock wait excluded
    error: str | None = None      # the failed one's error, one line


@dataclasses.dataclass(frozen=True)
class RecentTotals:
    """A stream's recordings starting since some instant, committed and not
    (`Database.recent_totals`): what system.py expects its frame rate and bitrate to be."""
    recordings: int
    video_samples: int
    sample_file_bytes: int
    wall_duration_90k: int
    media_duration_90k: int
    newest_video_sample_entry_id: int | None


@dataclasses.dataclass
class FloorPass:
    """One free-space floor pass of a dir (`Database.enforce_free_space_floor`)."""
    floor_bytes: int
    free_bytes: int
    pending_bytes: int            # queued for deletion or garbage, not yet unlinked
    rows: list                    # (stream id, ListRow) queued, oldest first
    kept_protected: int = 0       # protected recordings the pass passed over...
    kept_protected_bytes: int = 0  # ...and their size in whole blocks
    protected_bytes: int = 0      # when still short: the dir's protected video (blocks)

    @property
    def freed_bytes(self) -> int:
        return sum(round_up(r.sample_file_bytes) for _, r in self.rows)


@dataclasses.dataclass
class AggregatedRow:
    """Consecutive recordings of one run merged for listing (API §5.2)."""
    start_id: int
    end_id: int                     # inclusive
    run_start_id: int
    open_id: int
    start_time_90k: int
    end_time_90k: int
    video_sample_entry_id: int
    video_samples: int
    video_sync_samples: int
    sample_file_bytes: int
    first_uncommitted: int | None
    growing: bool
    has_trailing_zero: bool
    end_reason: str | None


# A protection's label: what the API and CLI accept (schema.sql checks the length).
MAX_PROTECTION_LABEL_CHARS = 256
# Protected ranges lie within 1970..9999 (times past that can't even be formatted).
MAX_PROTECTION_TIME_90K = 253402300800 * recording.TIME_UNITS_PER_SEC  # 10000-01-01Z


@dataclasses.dataclass
class Protection:
    """A protected range (schema.sql `protection`): retention deletes no recording of
    `camera_id` (of `stream_id` only, unless None) overlapping [start, end)."""
    id: int
    camera_id: int
    stream_id: int | None  # None: every stream of the camera
    start_time_90k: int
    end_time_90k: int
    label: str
    created_by: str        # a username, or "cli"
    created_time_90k: int
    updated_time_90k: int

    def applies_to(self, s: "Stream") -> bool:
        return self.camera_id == s.camera_id and self.stream_id in (None, s.id)


def protection_label_problem(label) -> str | None:
    """What is wrong with a protection label, or None."""
    if not isinstance(label, str):
        return "label must be a string"
    if len(label) > MAX_PROTECTION_LABEL_CHARS:
        return f"label is {len(label)} characters; at most {MAX_PROTECTION_LABEL_CHARS}"
    if breaks_log_lines(label):
        return "label has a control character or line break"
    return None


def _row_config(text: str | None) -> dict:
    return json.loads(text) if text else {}


def _dump(config: dict) -> str:
    return json.dumps(config, separators=(",", ":"), sort_keys=True)


# ---------------------------------------------------------------------------
# Day summaries.

class DayBounds:
    """Local-day arithmetic in one zone, caching the last day looked up."""

    def __init__(self, zone: datetime.tzinfo):
        self.zone = zone
        self._cache: tuple[int, int, str] | None = None  # (start, end, key)
        self._bounds: dict[str, tuple[int, int]] = {}    # every day asked for (a few KB/year)

    def bounds(self, key: str) -> tuple[int, int]:
        b = self._bounds.get(key)
        if b is None:
            d = datetime.date.fromisoformat(key)
            b = self._midnight(d), self._midnight(d + datetime.timedelta(days=1))
            self._bounds[key] = b
        return b

    def _midnight(self, d: datetime.date) -> int:
        dt = datetime.datetime(d.year, d.month, d.day, tzinfo=self.zone)
        return int(dt.timestamp()) * recording.TIME_UNITS_PER_SEC

    def day_of(self, t90k: int) -> tuple[int, int, str]:
        c = self._cache
        if c is not None and c[0] <= t90k < c[1]:
            return c
        secs = t90k // recording.TIME_UNITS_PER_SEC
        d = datetime.datetime.fromtimestamp(secs, self.zone).date()
        key = d.isoformat()
        start, end = self.bounds(key)
        self._cache = (start, end, key)
        return self._cache

    def add(self, days: dict[str, Day], start_90k: int, duration_90k: int, sign: int) -> None:
        """Adds (sign=1) or removes (sign=-1) a recording, split across midnights."""
        t, end = start_90k, start_90k + duration_90k
        while True:
            _, day_end, key = self.day_of(t)
            part = min(end, day_end) - t
            day = days.setdefault(key, Day())
            day.recordings += sign
            day.duration_90k += sign * part
            if day.recordings == 0:
                del days[key]
            if end <= day_end:
                return
            t = day_end


# ---------------------------------------------------------------------------
# The database.

class Database:
    """Owns the connection and the in-memory state. Thread-safe.

    Open with `Database.open(db_dir, clocks)`; close with `close()`. A
    read-write open inserts an `open` row; `open_sample_file_dirs()` then
    opens the dirs (dir.py's numbered procedure) and runs start-up recovery.
    """

    def __init__(self, conn: sqlite3.Connection, clocks: clock.Clocks, *,
                 read_only: bool = False, lock_fd: int | None = None, db_dir: str | None = None,
                 fs_factory=dirmod.Fs, totals: str = "now"):
        if totals not in ("now", "background", "later"):
            raise ValueError(f"totals={totals!r}")
        self.conn = conn
        self.clocks = clocks
        # Opens a sample file dir's I/O seam (dir.py `Fs`); tests pass test/fakes.py's
        # FaultyFs.factory to inject errors into the dir procedures.
        self.fs_factory = fs_factory
        self.read_only = read_only
        self.db_dir = db_dir
        self._lock_fd = lock_fd
        self._lock = threading.RLock()
        self.zone = recording.server_zone()
        self.day_bounds = DayBounds(self.zone)
        check_schema_version(conn)
        self.uuid = conn.execute("select uuid from meta").fetchone()[0]
        self.open: dirmod.Open | None = None
        self._open_monotonic = clocks.monotonic()
        self._open_start_90k = recording.to_90k_from_ns(clocks.realtime())
        self.dirs: dict[int, SampleFileDir] = {}
        self.cameras: dict[int, Camera] = {}
        self.streams: dict[int, Stream] = {}
        self.video_sample_entries: dict[int, VideoSampleEntry] = {}
        self._vse_to_insert: list[int] = []
        self.users: dict[int, User] = {}
        self.protections: dict[int, Protection] = {}
        # Streams whose protected recordings alone keep them over retainBytes: logged
        # once, then counted (logrepeat.py), and once when it ends.
        self._retention_repeats = logrepeat.RepeatLog(clocks, logger,
                                                      expected=(ProtectedOverLimit,))
        self._video_index_cache: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        # Called inside each flush transaction with the cursor (auth.py's session usage and
        # failure counts, signals.py's changes).
        self.flush_hooks: list = []
        # Called after each successful flush, outside the lock (syncers: GC).
        self.on_flush: list = []
        # stream id -> callbacks for each frame the writer indexes (live view, live.py).
        self._live_listeners: dict[int, list] = {}
        self.metrics = metrics.Metrics(clocks)  # what GET /api/metrics shows (metrics.py)
        # The last successful flush and the last failed one (FlushInfo; None until one
        # happens), replaced whole after each: readers (GET /api/system) need no lock.
        self.last_flush: FlushInfo | None = None
        self.last_flush_error: FlushInfo | None = None
        self._totals_thread: threading.Thread | None = None
        self._late_threads: list[threading.Thread] = []  # `open_sample_file_dirs(list_later=)`
        self._closing = False
        self._load()
        if not read_only:
            open_uuid = uuidlib.uuid4().bytes
            with transaction(conn):
                cur = conn.execute(
                    "insert into open (uuid, start_time_90k, end_time_90k, duration_90k, boot_uuid) "
                    "values (?, ?, ?, 0, ?)",
                    (open_uuid, self._open_start_90k, self._open_start_90k, boot_uuid()))
            self.open = dirmod.Open(cur.lastrowid, open_uuid)
        if totals == "background":
            self._totals_thread = threading.Thread(target=self._load_totals_loop,
                                                   name="totals-loader", daemon=True)
            self._totals_thread.start()
        elif totals == "now":
            while self.load_totals_step():
                pass
        # "later": the caller calls load_totals_step (tests).

    @classmethod
    def open_dir(cls, db_dir: str, clocks: clock.Clocks, *, read_only: bool = False,
                 fs_factory=dirmod.Fs, totals: str = "now") -> "Database":
        """Locks and opens the database in `db_dir`. `totals`: "now" loads every
        stream's totals and day summaries before returning, "background" in a thread
        (`run`), "later" leaves it to the caller's `load_totals_step` calls (tests)."""
        lock_fd = lock_db_dir(db_dir, read_only)
        try:
            conn = connect(db_dir, read_only)
            try:
                return cls(conn, clocks, read_only=read_only, lock_fd=lock_fd, db_dir=db_dir,
                           fs_factory=fs_factory, totals=totals)
            except BaseException:
                conn.close()
                raise
        except BaseException:
            os.close(lock_fd)
            raise

    def close(self) -> None:
        """Closes dirs, the connection and the lock. Does not flush: call flush first."""
        self._closing = True
        t = self._totals_thread
        if t is not None and t is not threading.current_thread():
            t.join()  # it stops after its current chunk
            self._totals_thread = None
        for t in self._late_threads:
            t.join()  # a listing can't be interrupted; the unlinks after it are skipped
        self._late_threads.clear()
        with self._lock:
            for d in self.dirs.values():
                if d.dir is not None:
                    d.dir.close()
                    d.dir = None
            self.conn.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    @property
    def opened_monotonic(self) -> int:
        """When this process opened the database (Clocks.monotonic ns): how long nvr
        has been up (GET /api/system)."""
        return self._open_monotonic

    @property
    def opened_90k(self) -> int:
        """When this process opened the database, 90 kHz wall time (the `open` row's
        start)."""
        return self._open_start_90k

    @property
    def lock(self):
        """The raw database lock, for tiny per-frame sections with no I/O (writer.py's
        index update), where `locked()`'s over-a-second timer costs more than the work.
        Everything else uses `locked()`."""
        return self._lock

    def transaction(self):
        """A write transaction on the connection; hold `locked()` around it."""
        return transaction(self.conn)

    @contextlib.contextmanager
    def locked(self, what: str = "database lock"):
        """Holds the database lock, warning if it is held over a second."""
        with self._lock, clock.TimerGuard(self.clocks, what):
            yield self

    # -- loading -------------------------------------------------------------

    def _load(self) -> None:
        c = self.conn
        for id_, uuid, config, lco_id, lco_uuid in c.execute(
                "select d.id, d.uuid, d.config, d.last_complete_open_id, o.uuid "
                "from sample_file_dir d left join open o on d.last_complete_open_id = o.id"):
            lco = dirmod.Open(lco_id, lco_uuid) if lco_id is not None else None
            cfg = _row_config(config)
            self.dirs[id_] = SampleFileDir(id_, uuid, cfg.get("path", ""), lco, config=cfg)
        for dir_id, cid in c.execute("select sample_file_dir_id, composite_id from garbage"):
            self.dirs[dir_id].garbage_needs_unlink.add(cid)
        for id_, uuid, short_name, config in c.execute(
                "select id, uuid, short_name, config from camera"):
            self.cameras[id_] = Camera(id_, uuid, short_name, _row_config(config))
        for row in c.execute(
                "select id, camera_id, type, sample_file_dir_id, config, cum_recordings, "
                "cum_media_duration_90k, cum_runs from stream"):
            s = Stream(row[0], row[1], row[2], row[3], _row_config(row[4]), row[5], row[6], row[7])
            self.streams[s.id] = s
            self.cameras[s.camera_id].streams[s.type] = s.id
        for row in c.execute(
                "select id, width, height, rfc6381_codec, data, pasp_h_spacing, pasp_v_spacing "
                "from video_sample_entry"):
            self.video_sample_entries[row[0]] = VideoSampleEntry(*row)
        for row in c.execute(
                "select id, username, config, password_hash, password_id, "
                "password_failure_count, permissions from user"):
            self.users[row[0]] = User(row[0], row[1], _row_config(row[2]), row[3], row[4], row[5],
                                      auth.Permissions.decode(row[6]))
        for row in c.execute(
                "select id, camera_id, stream_id, start_time_90k, end_time_90k, label, "
                "created_by, created_time_90k, updated_time_90k from protection"):
            self.protections[row[0]] = Protection(*row)
        # Ranges now; totals and day summaries by `load_totals_step` (module docstring).
        for s in self.streams.values():
            self._recompute_range(s)
            if s.range_90k is not None:
                last_start = c.execute("select max(start_time_90k) from recording "
                                       "where stream_id = ?", (s.id,)).fetchone()[0]
                s.totals_from_90k = self.day_bounds.day_of(last_start)[1]  # next midnight

    # Days per `load_totals_step` chunk: ~20,000 one-minute recordings, some ms of SQLite
    # under the database lock.
    TOTALS_CHUNK_DAYS = 14

    def load_totals_step(self, max_days: int | None = None, stream_id: int | None = None) -> bool:
        """Counts the next chunk (up to `max_days` local days, newest first) of the first
        stream whose totals are still loading (or of `stream_id`); returns whether any
        stream (that stream) still is, as far as this chunk knew.

        One aggregate query over the covering index per chunk: per day, the recordings
        starting in it (their count and wall duration up to the day's end, which is
        also the sum of what they carry past midnight into the next day: a recording
        is under 5 minutes, a day at least 23 hours) and their wall durations and bytes
        for the totals."""
        with self.locked("load totals"):
            s = next((s for s in sorted(self.streams.values(), key=lambda s: s.id)
                      if s.totals_from_90k is not None
                      and stream_id in (None, s.id)), None)
            if s is None:
                return False
            hi = s.totals_from_90k
            bounds = []  # (key, start, end), newest first; the newest ends at `hi`
            t = hi - 1
            while len(bounds) < (max_days or self.TOTALS_CHUNK_DAYS):
                start, end, key = self.day_bounds.day_of(t)
                bounds.append((key, start, end))
                if s.range_90k is None or start <= s.range_90k[0]:
                    break
                t = start - 1
            lo = bounds[-1][1]
            days = ",".join("(?, ?, ?)" for _ in bounds)
            rows = self.conn.execute(
                f"with d (k, s, e) as (values {days}) "
                "select d.k, d.e, count(*), "
                "sum(min(r.start_time_90k + r.wall_duration_90k, d.e) - r.start_time_90k), "
                "sum(r.start_time_90k + r.wall_duration_90k > d.e), "
                "sum(max(r.start_time_90k + r.wall_duration_90k - d.e, 0)), "
                "sum(r.wall_duration_90k), sum(r.sample_file_bytes), "
                f"sum((r.sample_file_bytes + {retention.ASSUMED_BLOCK_SIZE_BYTES - 1}) / "
                f"{retention.ASSUMED_BLOCK_SIZE_BYTES} * {retention.ASSUMED_BLOCK_SIZE_BYTES}) "
                "from d join recording r on r.stream_id = ? and "
                "r.start_time_90k >= d.s and r.start_time_90k < d.e group by d.k",
                [x for b in bounds for x in b] + [s.id]).fetchall()
            for key, end, n, inside, n_over, over, wall, nbytes, fs_bytes in rows:
                self._add_to_day(s.days, key, n, inside)
                if n_over:
                    self._add_to_day(s.days, self.day_bounds.day_of(end)[2], n_over, over)
                s.duration_90k += wall
                s.sample_file_bytes += nbytes
                s.fs_bytes += fs_bytes
            s.totals_from_90k = None
            if s.range_90k is not None and lo > s.range_90k[0]:
                # On from the day of the latest start before `lo` (an index lookup), so
                # days without recordings (a gap of months, a clock once set to 2099)
                # cost nothing: none starts in between.
                (below,) = self.conn.execute(
                    "select max(start_time_90k) from recording where stream_id = ? and "
                    "start_time_90k < ?", (s.id, lo)).fetchone()
                if below is not None:
                    s.totals_from_90k = self.day_bounds.day_of(below)[1]
            if s.totals_from_90k is None:
                logger.debug("stream %d: totals loaded", s.id)
            return True

    @staticmethod
    def _add_to_day(days: dict[str, Day], key: str, n: int, duration_90k: int) -> None:
        day = days.setdefault(key, Day())
        day.recordings += n
        day.duration_90k += duration_90k

    def _load_totals_loop(self) -> None:
        """The `totals-loader` thread of `totals="background"`: chunks until every stream
        is loaded or the database closes. Between chunks it lets others have the lock
        (os.sched_yield releases the GIL, so a thread waiting for the lock gets it)."""
        began = self.clocks.monotonic()
        try:
            while not self._closing and self.load_totals_step():
                os.sched_yield()
        except Exception:  # noqa: BLE001: a SQLite error; the totals stay partial
            logger.exception("loading the streams' totals failed; they stay incomplete "
                             "until nvr restarts")
            return
        if not self._closing:
            logger.info("loaded every stream's totals and day summaries in %.1f s",
                        (self.clocks.monotonic() - began) / clock.NANOS_PER_SEC)

    def totals_complete(self, stream_id: int) -> bool:
        """Whether the stream's totals and day summaries count every committed recording."""
        with self.locked():
            return self._get_stream(stream_id).totals_from_90k is None

    def _add_to_totals(self, s: Stream, start: int, wall: int, nbytes: int, sign: int) -> None:
        end = start + wall
        if sign > 0:
            if s.range_90k is None:
                s.range_90k = (start, end)
            else:
                s.range_90k = (min(s.range_90k[0], start), max(s.range_90k[1], end))
        if s.totals_from_90k is not None and start < s.totals_from_90k:
            return  # the loader counts it (or, deleted, never sees it)
        s.duration_90k += sign * wall
        s.sample_file_bytes += sign * nbytes
        s.fs_bytes += sign * round_up(nbytes)
        self.day_bounds.add(s.days, start, wall, sign)

    def _recompute_range(self, s: Stream) -> None:
        """The first start and last end, from the index: the last end is among the
        recordings starting within the longest recording's duration of the last start."""
        c = self.conn
        first, last = c.execute(
            "select (select min(start_time_90k) from recording where stream_id = ?), "
            "(select max(start_time_90k) from recording where stream_id = ?)",
            (s.id, s.id)).fetchone()
        if first is None:
            s.range_90k = None
            return
        end = c.execute("select max(start_time_90k + wall_duration_90k) from recording "
                        "where stream_id = ? and start_time_90k >= ?",
                        (s.id, last - _LOOKBACK_90K)).fetchone()[0]
        s.range_90k = (first, end)

    # -- sample file dirs ----------------------------------------------------

    def _dir_retry(self, what, fn):
        return clock.retry(self.clocks, None, what, fn)

    def open_sample_file_dirs(self, ids=None, *, list_later: bool = False) -> None:
        """Opens dirs (all, or `ids`): steps 1-6 of dir.py's "open read-write",
        or a read-only verify. Recovery unlinks garbage and abandoned files. With
        `list_later` (`run`), recovery doesn't list the dir before returning: R3 happens
        on a thread (`recovery-<path>`) and in S1 (dir.py "Late R3")."""
        for d in self.dirs.values():
            if (ids is not None and d.id not in ids) or d.dir is not None:
                continue
            expected = dirmod.DirMeta(self.uuid, d.uuid, d.last_complete_open)
            # Steps 1-2: lock and verify.
            sfd = dirmod.SampleFileDir.open(d.path, expected, read_only=self.read_only,
                                            fs_factory=self.fs_factory)
            if self.read_only:
                d.dir = sfd
                continue
            try:
                # Step 3 before step 4: the file names this open before the row does.
                # The other way round, a failed rewrite would leave a row naming an
                # open the file has never heard of, and O2 would refuse the dir for good.
                sfd.begin_open(self.open)  # step 3
                with self.locked(), transaction(self.conn):  # step 4
                    self.conn.execute("update sample_file_dir set last_complete_open_id = ? "
                                      "where id = ?", (self.open.id, d.id))
                d.last_complete_open = self.open
                sfd.complete_open(self.open)  # step 5
            except BaseException:  # re-raises; unlocked, so opening again starts at step 1
                sfd.close()
                raise
            d.dir = sfd
            # Step 6: start-up recovery.
            cum = {s.id: s.cum_recordings for s in self.streams.values()
                   if s.sample_file_dir_id == d.id}
            # Rows at or beyond cum_recordings break invariant 2 (a bad write, a hand
            # edit); their files must not be taken for abandoned ones.
            with self.locked():
                rows = [cid for sid, n in cum.items() for (cid,) in self.conn.execute(
                    "select composite_id from recording where composite_id >= ? and "
                    "composite_id < ?", ((sid << 32) | n, (sid + 1) << 32))]
            if list_later:
                result = dirmod.recover_garbage(sfd, sorted(d.garbage_needs_unlink),
                                                retry=self._dir_retry)
                garbage = set(d.garbage_needs_unlink)
            else:
                result = dirmod.recover(sfd, sorted(d.garbage_needs_unlink), cum,
                                        retry=self._dir_retry, rows=rows)
            with self.locked():
                gone = set(result.garbage_gone)
                d.garbage_needs_unlink -= gone
                d.garbage_unlinked |= gone
            if list_later:
                t = threading.Thread(target=self._late_recovery, args=(d, garbage, cum, rows),
                                     name=f"recovery-{d.path}", daemon=True)
                self._late_threads.append(t)
                t.start()
                continue
            self._log_recovery(d, result)

    def _late_recovery(self, d: SampleFileDir, garbage: set[int], cum: dict[int, int],
                       rows: list[int]) -> None:
        """dir.py "Late R3": lists the dir while the streams record; unlinks under the
        database lock the abandoned files whose ids no writer has been given yet (at
        most the few recordings uncommitted when the last process stopped: a quick
        unlink each, tried once; one that fails is left to S1 or the next start), then
        fsyncs the dir."""
        began = self.clocks.monotonic()
        try:
            names = d.dir.fs.list_names()  # R1
            if self._closing:
                return
            abandoned, unexpected, kept = dirmod.classify(names, garbage, cum, rows)
            removed = []
            with self.locked("late recovery"):
                for cid in abandoned:
                    s = self.streams.get(cid >> 32)
                    if s is None or (cid & 0xFFFFFFFF) < s.next_recording_id:
                        continue  # given to a writer: S1 replaced it (dir.py)
                    try:
                        d.dir.fs.unlink(dirmod.name_for(cid))
                    except FileNotFoundError:
                        pass
                    except OSError as e:
                        logger.warning("dir %s: can't unlink abandoned %s (%s); it goes when "
                                       "its id is reached or at the next start", d.path,
                                       dirmod.name_for(cid), e.strerror or e)
                        continue
                    removed.append(cid)
            if removed:
                self._dir_retry(f"fsync dir {d.path}", d.dir.fs.sync)
            self._log_recovery(d, dirmod.RecoveryResult([], removed, unexpected, kept))
            logger.debug("dir %s: listed %d name(s) in %.1f s", d.path, len(names),
                         (self.clocks.monotonic() - began) / clock.NANOS_PER_SEC)
        except Exception as e:  # noqa: BLE001: the dir vanished, EIO: S1 still copes
            if not self._closing:
                logger.warning("dir %s: listing it for abandoned files failed (%s); "
                               "they go when their ids are reached or at the next start",
                               d.path, e)

    def has_recording_row(self, composite_id: int) -> bool:
        """Whether a committed recording row has this id (writer.py's S1, dir.py
        "Late R3": a file with a row is never replaced)."""
        with self.locked():
            return self.conn.execute("select 1 from recording where composite_id = ?",
                                     (composite_id,)).fetchone() is not None

    def _log_recovery(self, d: SampleFileDir, result: dirmod.RecoveryResult) -> None:
        if result.abandoned:
            logger.info("dir %s: removed %d abandoned sample file(s) of uncommitted "
                        "recordings", d.path, len(result.abandoned))
        if result.kept:
            logger.warning("dir %s: kept %d sample file(s) whose recording rows have ids "
                           ">= their stream's cum_recordings, which should never be (%s); "
                           "stop nvr and run `nvr.py check`", d.path, len(result.kept),
                           ", ".join(dirmod.name_for(c) for c in result.kept[:10]))
        if result.unexpected:
            logger.warning("dir %s: unexpected files (see `nvr.py check`): %s",
                           d.path, ", ".join(result.unexpected[:10]))

    def add_sample_file_dir(self, path: str, config: dict | None = None) -> int:
        """The create procedure: meta with in_progress_open, the row, then promote.
        `config`: SampleFileDirConfig keys other than the path (the floor)."""
        if self.read_only:
            raise DbError("can't add a sample file dir in read-only mode")
        path = os.path.abspath(path)
        with self.locked():
            for d in self.dirs.values():
                if d.path == path:
                    raise DbError(f"sample file dir {path} is already in the database (id {d.id})")
        cfg = dict(config or {}, path=path)
        sfd = dirmod.SampleFileDir.create(path, self.uuid, self.open, fs_factory=self.fs_factory)
        try:
            with self.locked(), transaction(self.conn):
                cur = self.conn.execute(
                    "insert into sample_file_dir (uuid, config, last_complete_open_id) "
                    "values (?, ?, ?)", (sfd.meta.dir_uuid, _dump(cfg), self.open.id))
                id_ = cur.lastrowid
            sfd.complete_open(self.open)
        except BaseException:
            sfd.close()
            raise
        self.dirs[id_] = SampleFileDir(id_, sfd.meta.dir_uuid, path, self.open, dir=sfd,
                                       config=cfg)
        return id_

    def update_sample_file_dir(self, dir_id: int, config: dict) -> None:
        """Replaces a dir's SampleFileDirConfig but its path (which names the dir)."""
        with self.locked():
            d = self._get_dir(dir_id)
            cfg = dict(config, path=d.path)
            with transaction(self.conn):
                self.conn.execute("update sample_file_dir set config = ? where id = ?",
                                  (_dump(cfg), dir_id))
            d.config = cfg

    def delete_sample_file_dir(self, dir_id: int) -> None:
        """The delete procedure: refuses unless no stream or garbage uses it."""
        with self.locked():
            d = self._get_dir(dir_id)
            users = [f"{self.cameras[s.camera_id].short_name}/{s.type}"
                     for s in self.streams.values() if s.sample_file_dir_id == dir_id]
            if users:
                raise DbError(f"sample file dir {d.path} is used by stream(s) {', '.join(users)}; "
                              f"move or delete them first")
            if d.garbage_needs_unlink or d.garbage_unlinked:
                raise DbError(f"sample file dir {d.path} still has garbage to collect; "
                              f"run `nvr.py run` once or `nvr.py check` and try again")
        self.open_sample_file_dirs({dir_id})
        d.dir.prepare_delete()
        with self.locked(), transaction(self.conn):
            self.conn.execute("delete from sample_file_dir where id = ?", (dir_id,))
        d.dir.close()
        del self.dirs[dir_id]

    def move_sample_file_dir(self, dir_id: int, path: str) -> None:
        """The dir's files are now at `path` (its disk mounted elsewhere). The caller
        has stopped its writers and syncer (config.py). Closes the old handle, stores
        the new path, then opens the dir there (dir.py O1-O6: O2 refuses a meta that
        isn't this dir's). If the open fails, the old path is stored and opened again
        and the error re-raised. Crash windows: after the path is stored and before
        O3, the next start opens the new path, whose meta names the row's open (O2
        passes); nothing else was written."""
        if self.read_only:
            raise DbError("can't move a sample file dir in read-only mode")
        path = os.path.abspath(path)
        with self.locked():
            d = self._get_dir(dir_id)
            old_path, was_open = d.path, d.dir is not None
            if d.dir is not None:
                d.dir.close()
                d.dir = None

        def store(p: str) -> None:
            with self.locked(), transaction(self.conn):
                cfg = dict(d.config, path=p)
                self.conn.execute("update sample_file_dir set config = ? where id = ?",
                                  (_dump(cfg), dir_id))
                d.config, d.path = cfg, p

        store(path)
        try:
            self.open_sample_file_dirs({dir_id})
        except BaseException:  # re-raises, after going back to the old path
            store(old_path)
            try:
                if was_open:
                    self.open_sample_file_dirs({dir_id})
            except (DbError, dirmod.DirError, OSError) as e:
                logger.warning("sample file dir %s: can't open it again at its old path "
                               "(%s)", old_path, e)
            raise

    def _get_dir(self, dir_id: int) -> SampleFileDir:
        try:
            return self.dirs[dir_id]
        except KeyError:
            raise DbError(f"no sample file dir with id {dir_id}") from None

    # -- cameras and streams -------------------------------------------------

    def add_camera(self, short_name: str, config: dict) -> int:
        with self.locked():
            if any(c.short_name == short_name for c in self.cameras.values()):
                raise DbError(f"a camera named {short_name!r} already exists")
            uuid = uuidlib.uuid4().bytes
            with transaction(self.conn):
                id_ = self.conn.execute(
                    "insert into camera (uuid, short_name, config) values (?, ?, ?)",
                    (uuid, short_name, _dump(config))).lastrowid
            self.cameras[id_] = Camera(id_, uuid, short_name, dict(config))
            return id_

    def update_camera(self, camera_id: int, *, short_name: str | None = None,
                      config: dict | None = None) -> None:
        with self.locked():
            c = self._get_camera(camera_id)
            if short_name is not None and short_name != c.short_name and any(
                    o.short_name == short_name for o in self.cameras.values()):
                raise DbError(f"a camera named {short_name!r} already exists")
            new_name = c.short_name if short_name is None else short_name
            new_config = c.config if config is None else config
            with transaction(self.conn):
                self.conn.execute("update camera set short_name = ?, config = ? where id = ?",
                                  (new_name, _dump(new_config), camera_id))
            c.short_name, c.config = new_name, dict(new_config)

    def _get_camera(self, camera_id: int) -> Camera:
        try:
            return self.cameras[camera_id]
        except KeyError:
            raise DbError(f"no camera with id {camera_id}") from None

    def camera_by_name(self, name: str) -> Camera:
        for c in self.cameras.values():
            if c.short_name == name:
                return c
        raise DbError(f"no camera named {name!r}; `nvr.py config camera list` shows them")

    def add_stream(self, camera_id: int, type_: str, config: dict,
                   sample_file_dir_id: int | None) -> int:
        with self.locked():
            c = self._get_camera(camera_id)
            if type_ not in STREAM_TYPES:
                raise DbError(f"stream type must be one of {', '.join(STREAM_TYPES)}")
            if type_ in c.streams:
                raise DbError(f"camera {c.short_name} already has a {type_} stream")
            if sample_file_dir_id is not None:
                self._get_dir(sample_file_dir_id)
            with transaction(self.conn):
                id_ = self.conn.execute(
                    "insert into stream (camera_id, sample_file_dir_id, type, config, "
                    "cum_recordings, cum_media_duration_90k, cum_runs) values (?, ?, ?, ?, 0, 0, 0)",
                    (camera_id, sample_file_dir_id, type_, _dump(config))).lastrowid
            self.streams[id_] = Stream(id_, camera_id, type_, sample_file_dir_id, dict(config), 0, 0, 0)
            c.streams[type_] = id_
            return id_

    def update_stream(self, stream_id: int, *, config: dict | None = None,
                      sample_file_dir_id: int | None | type(...) = ...) -> None:
        """Changes a stream's config and/or dir. The dir can't change while the
        stream has recordings (their files live in the old dir)."""
        with self.locked():
            s = self._get_stream(stream_id)
            new_dir = s.sample_file_dir_id if sample_file_dir_id is ... else sample_file_dir_id
            if new_dir != s.sample_file_dir_id:
                if new_dir is not None:
                    self._get_dir(new_dir)
                if s.range_90k is not None or s.uncommitted or s.to_delete:
                    raise DbError("can't change the sample file dir of a stream with recordings; "
                                  "delete them first (lower retainBytes to 0)")
            new_config = s.config if config is None else config
            with transaction(self.conn):
                self.conn.execute("update stream set config = ?, sample_file_dir_id = ? where id = ?",
                                  (_dump(new_config), new_dir, stream_id))
            s.config, s.sample_file_dir_id = dict(new_config), new_dir

    def _get_stream(self, stream_id: int) -> Stream:
        try:
            return self.streams[stream_id]
        except KeyError:
            raise DbError(f"no stream with id {stream_id}") from None

    def delete_stream(self, stream_id: int) -> int:
        """Deletes a stream and all its recordings; returns how many were deleted.

        The recordings' files become garbage (rows tied to the dir, not the
        stream) and are unlinked by `collect_garbage`.
        """
        with self.locked():
            s = self._get_stream(stream_id)
            if s.uncommitted:
                raise DbError("stream has uncommitted recordings; stop nvr first")
            n = self.conn.execute("select count(*) from recording where stream_id = ?",
                                  (stream_id,)).fetchone()[0]
            with transaction(self.conn):
                if n:
                    self.conn.execute(
                        "insert into garbage (sample_file_dir_id, composite_id) "
                        "select ?, composite_id from recording where stream_id = ?",
                        (s.sample_file_dir_id, stream_id))
                    for table in ("recording_playback", "recording_integrity"):
                        self.conn.execute(
                            f"delete from {table} where composite_id in "
                            f"(select composite_id from recording where stream_id = ?)", (stream_id,))
                    ids = [r[0] for r in self.conn.execute(
                        "select composite_id from recording where stream_id = ?", (stream_id,))]
                    self.conn.execute("delete from recording where stream_id = ?", (stream_id,))
                    self.dirs[s.sample_file_dir_id].garbage_needs_unlink.update(ids)
                # Its own protections go with its recordings (its camera's stay).
                self.conn.execute("delete from protection where stream_id = ?", (stream_id,))
                self.conn.execute("delete from stream where id = ?", (stream_id,))
            for pid in [p.id for p in self.protections.values() if p.stream_id == stream_id]:
                del self.protections[pid]
            del self.streams[stream_id]
            del self.cameras[s.camera_id].streams[s.type]
            return n

    def delete_camera(self, camera_id: int) -> int:
        """Deletes a camera, its streams and their recordings."""
        with self.locked(), transaction(self.conn):   # one transaction for all of it
            c = self._get_camera(camera_id)
            n = sum(self.delete_stream(sid) for sid in list(c.streams.values()))
            with transaction(self.conn):
                self.conn.execute("delete from protection where camera_id = ?", (camera_id,))
                self.conn.execute("delete from camera where id = ?", (camera_id,))
            for pid in [p.id for p in self.protections.values() if p.camera_id == camera_id]:
                del self.protections[pid]
            del self.cameras[camera_id]
            return n

    # -- protections ------------------------------------------------------------

    def _check_protection(self, camera_id: int, stream_id: int | None, start_90k: int,
                          end_90k: int, label) -> None:
        c = self._get_camera(camera_id)
        if stream_id is not None and stream_id not in c.streams.values():
            raise DbError(f"camera {c.short_name} has no stream with id {stream_id}")
        if not (isinstance(start_90k, int) and isinstance(end_90k, int)):
            raise DbError("start and end must be 90 kHz times (integers)")
        if start_90k <= 0:
            raise DbError(f"start {start_90k} is not after 1970")
        if end_90k > MAX_PROTECTION_TIME_90K:
            raise DbError(f"end {end_90k} is after the year 9999")
        if end_90k <= start_90k:
            raise DbError(f"end ({recording.format_time(end_90k, self.zone)}) must be after "
                          f"start ({recording.format_time(start_90k, self.zone)})")
        problem = protection_label_problem(label)
        if problem:
            raise DbError(problem)

    def _unqueue_protected(self, p: Protection) -> int:
        """Takes recordings `p` protects out of the deletion queues (retention planned
        them before it existed; the next flush must not delete them). Lock held."""
        n = 0
        for s in self.streams.values():
            if not s.to_delete or not p.applies_to(s):
                continue
            kept = retention.Protected([(p.start_time_90k, p.end_time_90k)])
            gone = [r for r in s.to_delete if kept.covers_row(r)]
            if gone:
                s.to_delete = [r for r in s.to_delete if not kept.covers_row(r)]
                s.fs_bytes_to_delete -= sum(round_up(r.sample_file_bytes) for r in gone)
                n += len(gone)
        if n:
            logger.info("protection %d (%r): %d recording(s) queued for deletion are kept",
                        p.id, p.label, n)
        return n

    def add_protection(self, camera_id: int, stream_id: int | None, start_90k: int,
                       end_90k: int, label: str, created_by: str) -> int:
        """Protects [start, end) of one stream of the camera (or of all, stream_id None)
        from retention, in one transaction; recordings it covers that retention had
        queued are taken off the queue. Returns its id."""
        if self.read_only:
            raise DbError("can't add a protection in read-only mode")
        with self.locked():
            self._check_protection(camera_id, stream_id, start_90k, end_90k, label)
            now = recording.to_90k_from_ns(self.clocks.realtime())
            with transaction(self.conn):
                id_ = self.conn.execute(
                    "insert into protection (camera_id, stream_id, start_time_90k, "
                    "end_time_90k, label, created_by, created_time_90k, updated_time_90k) "
                    "values (?, ?, ?, ?, ?, ?, ?, ?)",
                    (camera_id, stream_id, start_90k, end_90k, label, created_by, now, now)
                ).lastrowid
            p = self.protections[id_] = Protection(id_, camera_id, stream_id, start_90k,
                                                   end_90k, label, created_by, now, now)
            self._unqueue_protected(p)
            return id_

    def update_protection(self, protection_id: int, *, label: str | None = None,
                          start_90k: int | None = None, end_90k: int | None = None
                          ) -> Protection:
        """Edits a protection's label and/or range, in one transaction; returns it.
        A range that grows keeps what it now covers off the deletion queue."""
        if self.read_only:
            raise DbError("can't edit a protection in read-only mode")
        with self.locked():
            old = self.get_protection(protection_id)
            new = dataclasses.replace(
                old, label=old.label if label is None else label,
                start_time_90k=old.start_time_90k if start_90k is None else start_90k,
                end_time_90k=old.end_time_90k if end_90k is None else end_90k,
                updated_time_90k=recording.to_90k_from_ns(self.clocks.realtime()))
            self._check_protection(new.camera_id, new.stream_id, new.start_time_90k,
                                   new.end_time_90k, new.label)
            with transaction(self.conn):
                self.conn.execute(
                    "update protection set start_time_90k = ?, end_time_90k = ?, label = ?, "
                    "updated_time_90k = ? where id = ?",
                    (new.start_time_90k, new.end_time_90k, new.label, new.updated_time_90k,
                     protection_id))
            self.protections[protection_id] = new
            self._unqueue_protected(new)
            return new

    def delete_protection(self, protection_id: int) -> None:
        """Removes a protection; retention may then delete what it kept (at its next
        pass: the stream's next recording or the syncer's periodic check)."""
        if self.read_only:
            raise DbError("can't remove a protection in read-only mode")
        with self.locked():
            self.get_protection(protection_id)
            with transaction(self.conn):
                self.conn.execute("delete from protection where id = ?", (protection_id,))
            del self.protections[protection_id]

    def get_protection(self, protection_id: int) -> Protection:
        try:
            return self.protections[protection_id]
        except KeyError:
            raise DbError(f"no protection with id {protection_id}; `nvr.py protect list` "
                          f"shows them") from None

    def list_protections(self, *, camera_id: int | None = None, stream_id: int | None = None,
                         start_90k: int | None = None, end_90k: int | None = None
                         ) -> list[Protection]:
        """Protections by start time: of the camera; that apply to the stream (its own and
        its camera's); overlapping [start, end) (either bound may be None)."""
        with self.locked():
            s = self._get_stream(stream_id) if stream_id is not None else None
            out = [p for p in self.protections.values()
                   if (camera_id is None or p.camera_id == camera_id)
                   and (s is None or p.applies_to(s))
                   and (start_90k is None or p.end_time_90k > start_90k)
                   and (end_90k is None or p.start_time_90k < end_90k)]
            return sorted(out, key=lambda p: (p.start_time_90k, p.id))

    def _protected_rows(self, stream_id: int, ranges) -> dict[int, int]:
        """composite id -> sample_file_bytes of the stream's committed recordings that
        overlap any of `ranges` (a retention.Protected's): index range queries on
        recording_cover, 5 minutes early as listing does. Lock held."""
        out: dict[int, int] = {}
        for start, end in ranges:
            for cid, nbytes in self.conn.execute(
                    "select composite_id, sample_file_bytes from recording where stream_id = ? "
                    "and start_time_90k > ? and start_time_90k < ? and "
                    "max(start_time_90k + wall_duration_90k, start_time_90k + 1) > ?",
                    (stream_id, start - _LOOKBACK_90K, end, start)):
                out[cid] = nbytes
        return out

    def protected_bytes(self, stream_id: int) -> int:
        """What the stream's protected committed recordings take, in whole 4096-byte
        blocks as retainBytes counts (what retention can't delete)."""
        with self.locked("protected bytes"):
            s = self._get_stream(stream_id)
            return sum(round_up(n) for n in
                       self._protected_rows(s.id, self._protected(s).ranges).values())

    def protection_bytes(self, protection_id: int) -> int:
        """What the committed recordings one protection covers take (whole blocks), over
        the streams it applies to."""
        with self.locked("protected bytes"):
            p = self.get_protection(protection_id)
            total = 0
            for s in self.streams.values():
                if p.applies_to(s):
                    total += sum(round_up(n) for n in self._protected_rows(
                        s.id, [(p.start_time_90k, p.end_time_90k)]).values())
            return total

    # -- users -----------------------------------------------------------------

    def add_user(self, username: str, *, password_hash: str | None = None,
                 permissions: auth.Permissions | None = None, config: dict | None = None) -> int:
        perms = permissions or auth.Permissions()
        config = config or {}
        with self.locked():
            if any(u.username == username for u in self.users.values()):
                raise DbError(f"a user named {username!r} already exists")
            with transaction(self.conn):
                id_ = self.conn.execute(
                    "insert into user (username, config, password_hash, password_id, "
                    "password_failure_count, permissions) values (?, ?, ?, 0, 0, ?)",
                    (username, _dump(config), password_hash, perms.encode())).lastrowid
            self.users[id_] = User(id_, username, dict(config), password_hash, 0, 0, perms)
            return id_

    def update_user(self, user_id: int, *, username: str | None = None,
                    config: dict | None = None, permissions: auth.Permissions | None = None,
                    password_hash: str | None | type(...) = ...,
                    keep_password_id: bool = False) -> None:
        """Edits a user; a password set or clear bumps password_id and resets failures.
        `keep_password_id`: the same password re-hashed (auth.py's upgrade to argon2id),
        which must not look like a password change."""
        with self.locked():
            u = self.get_user(user_id)
            if username is not None and username != u.username and any(
                    o.username == username for o in self.users.values()):
                raise DbError(f"a user named {username!r} already exists")
            new = dataclasses.replace(u)
            if username is not None:
                new.username = username
            if config is not None:
                new.config = dict(config)
            if permissions is not None:
                new.permissions = permissions
            if password_hash is not ...:
                new.password_hash = password_hash
                if not keep_password_id:
                    new.password_id += 1
                    new.password_failure_count = 0
            with transaction(self.conn):
                self.conn.execute(
                    "update user set username = ?, config = ?, password_hash = ?, password_id = ?, "
                    "password_failure_count = ?, permissions = ? where id = ?",
                    (new.username, _dump(new.config), new.password_hash, new.password_id,
                     new.password_failure_count, new.permissions.encode(), user_id))
            self.users[user_id] = new

    def delete_user(self, user_id: int) -> None:
        with self.locked():
            self.get_user(user_id)
            with transaction(self.conn):
                self.conn.execute("delete from user_session where user_id = ?", (user_id,))
                self.conn.execute("delete from user where id = ?", (user_id,))
            del self.users[user_id]

    def get_user(self, user_id: int) -> User:
        try:
            return self.users[user_id]
        except KeyError:
            raise DbError(f"no user with id {user_id}") from None

    def user_by_name(self, username: str) -> User:
        for u in self.users.values():
            if u.username == username:
                return u
        raise DbError(f"no user named {username!r}; `nvr.py config user list` shows them")

    # -- video sample entries --------------------------------------------------

    def insert_video_sample_entry(self, width: int, height: int, rfc6381_codec: str, data: bytes,
                                  pasp_h_spacing: int = 1, pasp_v_spacing: int = 1) -> int:
        """Returns the id of the entry with exactly these bytes, adding it if new.

        A new entry gets its id now and its row in the next flush, in the same
        transaction as the first recording that uses it (reference §3.5), so
        streamers never wait on SQLite.
        """
        with self.locked():
            for v in self.video_sample_entries.values():
                if v.data == data:
                    if (v.width, v.height, v.pasp_h_spacing, v.pasp_v_spacing) != (
                            width, height, pasp_h_spacing, pasp_v_spacing):
                        raise ValueError(f"video sample entry {v.id} has the same data but "
                                         f"different dimensions or aspect ratio")
                    return v.id
            id_ = max(self.video_sample_entries, default=0) + 1
            self.video_sample_entries[id_] = VideoSampleEntry(
                id_, width, height, rfc6381_codec, bytes(data), pasp_h_spacing, pasp_v_spacing)
            self._vse_to_insert.append(id_)
            return id_

    # -- recordings --------------------------------------------------------------

    def add_recording(self, stream_id: int, r: RecordingToInsert) -> int:
        """Adds an uncommitted recording; returns its composite id.

        The writer keeps updating `r` (under its stream's lock) while it
        grows; `mark_synced` makes it eligible for the next flush.
        """
        with self.locked():
            s = self._get_stream(stream_id)
            if self.read_only:
                raise DbError("can't record in read-only mode")
            if s.uncommitted and s.uncommitted[-1].growing:
                raise DbError(f"stream {stream_id} is already growing a recording")
            rid = s.next_recording_id
            s.uncommitted.append(r)
            return (stream_id << 32) | rid

    def _uncommitted(self, composite_id: int) -> RecordingToInsert:
        s = self._get_stream(composite_id >> 32)
        i = (composite_id & 0xFFFFFFFF) - s.cum_recordings
        if not 0 <= i < len(s.uncommitted):
            raise DbError(f"recording {composite_id >> 32}/{composite_id & 0xFFFFFFFF} "
                          f"is not uncommitted")
        return s.uncommitted[i]

    def growing_source(self, composite_id: int) -> RecordingToInsert | None:
        """The uncommitted recording `composite_id` (whose `tail` has the bytes not yet
        in its file), or None once committed. The caller holds the lock."""
        s = self.streams.get(composite_id >> 32)
        if s is None:
            return None
        i = (composite_id & 0xFFFFFFFF) - s.cum_recordings
        return s.uncommitted[i] if 0 <= i < len(s.uncommitted) else None

    def mark_synced(self, composite_id: int) -> None:
        """Called after the sample file and its dir are fsynced (§3.7 steps 2-4)."""
        with self.locked():
            r = self._uncommitted(composite_id)
            if r.video_samples == 0:
                raise ValueError("can't sync an empty recording")
            r.synced, r.growing = True, False
            self.streams[composite_id >> 32].fs_bytes_to_add += round_up(r.sample_file_bytes)

    def abandon_to_garbage(self, composite_id: int) -> None:
        """Gives up a recording whose sample file's fsync failed (dir.py S2F): it is
        never committed; the next flush moves its file to garbage (`to_garbage`)."""
        with self.locked():
            r = self._uncommitted(composite_id)
            if r.synced:
                raise ValueError(f"recording {composite_id >> 32}/{composite_id & 0xFFFFFFFF} "
                                 f"is already synced")
            r.growing, r.abandoned, r.to_garbage = False, True, True

    def delete_oldest_recordings(self, stream_id: int, extra_fs_bytes: int = 0, *,
                                 retain_bytes: int | None = None,
                                 retain_days: float | None | type(...) = ...,
                                 config: dict | None = None,
                                 dry_run: bool = False) -> retention.Plan:
        """Queues the oldest committed recordings for deletion until the stream
        fits its `retainBytes` (§3.8) and none is older than its `retainDays`
        (retention.py); returns the rows queued (a `retention.Plan`: a list that
        also says how many each limit asked for).

        Usage counts committed bytes plus synced-but-uncommitted ones plus
        `extra_fs_bytes` (e.g. the recording being added), each file rounded
        up to 4096, minus what is already queued. Deletion happens in the next
        flush (rows to garbage); the syncer then unlinks the files. With
        `dry_run`, only says what would be queued (under `retain_bytes` and
        `retain_days` if given: a byte limit given is applied even if 0; or the
        limits of StreamConfig `config`), e.g. to confirm a lowered limit first.
        """
        with self.locked():
            s = self._get_stream(stream_id)
            limits = retention.stream_limits(s.config if config is None else config)
            limit = limits.bytes if retain_bytes is None else retain_bytes
            days = limits.days if retain_days is ... else retain_days
            over = 0
            if limit is not None and s.totals_from_90k is not None:
                if dry_run or retain_bytes is not None or config is not None:
                    # A question about a given limit (config): answer it now.
                    while self.load_totals_step(stream_id=s.id):
                        pass
                else:  # the syncer: the limit waits for the loader (module docstring)
                    limit = None
            if limit is not None:
                over = (s.fs_bytes + s.fs_bytes_to_add + extra_fs_bytes
                        - s.fs_bytes_to_delete - limit)
            cutoff = None
            if days is not None:
                cutoff = retention.age_cutoff_90k(
                    recording.to_90k_from_ns(self.clocks.realtime()), days)
                if s.range_90k is None or s.range_90k[0] >= cutoff:
                    cutoff = None  # every end is at or after the oldest start: none expired
            if over <= 0 and cutoff is None:
                if not dry_run:
                    self._note_protected_over_limit(s, None)
                return retention.Plan()
            plan = retention.plan_stream(self._rows_not_queued(s), over_bytes=over,
                                         cutoff_90k=cutoff, protected=self._protected(s))
            if not dry_run:
                self._queue_deletion(s, plan[:plan.by_bytes], "bytes")
                self._queue_deletion(s, plan[plan.by_bytes:], "age")
                self._note_protected_over_limit(s, plan if limit is not None else None)
            return plan

    def _protected(self, s: Stream) -> retention.Protected:
        """The protected ranges that apply to stream `s`. Call with the lock held."""
        return retention.Protected((p.start_time_90k, p.end_time_90k)
                                   for p in self.protections.values() if p.applies_to(s))

    def protected_over_limit(self, stream_id: int) -> bool:
        """Whether the stream's last retention pass found its protected recordings alone
        over its retainBytes (and so deleted nothing protected): for the Storage page."""
        return self._retention_repeats.failing(("protected over retainBytes", stream_id))

    def _note_protected_over_limit(self, s: Stream, plan: retention.Plan | None) -> None:
        """Logs (logrepeat.py: once, then counted) while protected recordings alone keep
        `s` over its retainBytes, and once when that ends. The lock is held."""
        key = ("protected over retainBytes", s.id)
        name = f"{self.cameras[s.camera_id].short_name}-{s.type}"
        # Still over with every unprotected recording queued: what is left is protected.
        # (Not `plan.kept_protected`: a pass before the flush starts after the queued rows,
        # so it sees none of the protected ones among them.)
        if plan is not None and plan.short_bytes > 0 and self._protected(s):
            self._retention_repeats.failed(key, ProtectedOverLimit(
                f"protected recordings alone exceed retainBytes ({s.retain_bytes} B) by "
                f"{plan.short_bytes} B; they are kept. Raise retainBytes, or shorten or remove "
                f"protections (`nvr.py protect list`)"), name)
        else:
            self._retention_repeats.cleared(key, f"{name}: back within retainBytes")

    def _rows_not_queued(self, s: Stream):
        """The stream's committed recordings after those queued, oldest (by id) first,
        read lazily: retention usually needs only the first few."""
        after = (s.to_delete[-1].composite_id + 1) if s.to_delete else (s.id << 32)
        for r in self.conn.execute(
                f"select {self._LIST_COLUMNS} from recording where composite_id >= ? and "
                f"composite_id < ? order by composite_id", (after, (s.id + 1) << 32)):
            yield ListRow(r[0], r[1], r[2], r[3], r[3] + r[4], r[5], r[6], r[7], r[8],
                          r[9], r[10], r[11])

    def _queue_deletion(self, s: Stream, rows: list[ListRow], rule: str = "bytes") -> None:
        """Queues `rows` for the next flush; `rule` ("bytes", "age", "floor") is kept
        for the Storage page's "last deleted by" (`Stream.last_deletion`)."""
        s.to_delete.extend(rows)
        for r in rows:
            s.to_delete_rule[r.composite_id] = rule
        s.fs_bytes_to_delete += sum(round_up(r.sample_file_bytes) for r in rows)

    def enforce_free_space_floor(self, dir_id: int, free_bytes: int,
                                 total_bytes: int) -> "FloorPass":
        """Queues the oldest recordings among the dir's streams (by start time) for
        deletion until `free_bytes` (statvfs, dir.py `Fs.free_space`), plus what is
        already queued or garbage, reaches the dir's floor (retention.py)."""
        with self.locked():
            d = self._get_dir(dir_id)
            streams = [s for s in self.streams.values() if s.sample_file_dir_id == dir_id]
            floor = retention.floor_bytes(d.config, total_bytes)
            pending = (sum(s.fs_bytes_to_delete for s in streams)
                       + sum(d.garbage_fs_bytes.values()))
            p = FloorPass(floor, free_bytes, pending, [])
            if floor - free_bytes - pending <= 0:
                return p
            p.rows = retention.plan_floor({s.id: self._rows_not_queued(s) for s in streams},
                                          floor - free_bytes - pending,
                                          {s.id: self._protected(s) for s in streams})
            p.kept_protected = p.rows.kept_protected
            p.kept_protected_bytes = p.rows.kept_protected_bytes
            for s in streams:
                self._queue_deletion(s, [r for sid, r in p.rows if sid == s.id], "floor")
            if free_bytes + pending + p.freed_bytes < floor:
                # Short with every unprotected recording on its way: what protected video
                # is left (all of it, not only what this pass saw) for dir.py's warning.
                p.protected_bytes = sum(round_up(n) for s in streams for n in
                                        self._protected_rows(s.id, self._protected(s).ranges)
                                        .values())
            return p

    def delete_garbage(self, dir_id: int, composite_ids) -> None:
        """Records that these garbage files are unlinked and the dir fsynced;
        the next flush deletes their rows (§3.8 phase 3)."""
        with self.locked():
            d = self._get_dir(dir_id)
            for cid in composite_ids:
                if cid not in d.garbage_needs_unlink:
                    raise ValueError(f"{cid:016x} is not garbage in dir {d.path}")
                d.garbage_needs_unlink.remove(cid)
                d.garbage_unlinked.add(cid)
                d.garbage_fs_bytes.pop(cid, None)

    def flush(self, reason: str) -> None:
        """Commits everything pending in one transaction and logs what it wrote."""
        if self.read_only:
            raise DbError("can't flush in read-only mode")
        with self.locked(f"flush ({reason})"):
            began = self.clocks.monotonic()
            began_sec = self.clocks.realtime() / clock.NANOS_PER_SEC
            try:
                self._flush_locked(reason)
            except BaseException as e:
                self.metrics.flush_errors.inc()
                self.last_flush_error = FlushInfo(
                    began_sec, reason, (self.clocks.monotonic() - began) / clock.NANOS_PER_SEC,
                    (str(e) or type(e).__name__).splitlines()[0])
                raise
        took = (self.clocks.monotonic() - began) / clock.NANOS_PER_SEC
        self.last_flush = FlushInfo(began_sec, reason, took)
        self.metrics.flush.observe(took)
        for f in list(self.on_flush):
            f()

    def _flush_locked(self, reason: str) -> None:
        c = self.conn
        added: list[str] = []
        deleted: list[str] = []
        added_bytes = deleted_bytes = 0
        committed: dict[int, int] = {}     # stream id -> number of ids used up
        abandoned: list[str] = []          # ids moved to garbage (S2F)
        now_90k = recording.to_90k_from_ns(self.clocks.realtime())
        with transaction(c):
            for vse_id in self._vse_to_insert:
                v = self.video_sample_entries[vse_id]
                c.execute("insert into video_sample_entry (id, width, height, rfc6381_codec, data, "
                          "pasp_h_spacing, pasp_v_spacing) values (?, ?, ?, ?, ?, ?, ?)",
                          (v.id, v.width, v.height, v.rfc6381_codec, v.data,
                           v.pasp_h_spacing, v.pasp_v_spacing))
            for s in self.streams.values():
                n = 0
                cum_media, cum_runs = s.cum_media_duration_90k, s.cum_runs
                for r in s.uncommitted:
                    rid = s.cum_recordings + n
                    cid = (s.id << 32) | rid
                    if r.abandoned and (r.file_gone or r.to_garbage):
                        # Its id is used up; it has no recording rows. Its media and run
                        # count, as the prev_* of the stream's later recordings did.
                        if r.to_garbage:  # S2F: its file is garbage from this commit on
                            c.execute("insert into garbage (sample_file_dir_id, composite_id) "
                                      "values (?, ?)", (s.sample_file_dir_id, cid))
                            abandoned.append(f"{s.id}/{rid}")
                        cum_media += r.media_duration_90k
                        cum_runs += r.run_offset == 0
                        n += 1
                        continue
                    if not r.synced:
                        break
                    c.execute(
                        "insert into recording (composite_id, open_id, stream_id, run_offset, flags, "
                        "sample_file_bytes, start_time_90k, prev_media_duration_90k, prev_runs, "
                        "wall_duration_90k, media_duration_delta_90k, video_samples, "
                        "video_sync_samples, video_sample_entry_id, end_reason) "
                        "values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (cid, self.open.id, s.id, r.run_offset, r.flags & FLAG_TRAILING_ZERO,
                         r.sample_file_bytes, r.start_time_90k, r.prev_media_duration_90k,
                         r.prev_runs, r.wall_duration_90k, r.media_duration_90k - r.wall_duration_90k,
                         r.video_samples, r.video_sync_samples, r.video_sample_entry_id,
                         r.end_reason))
                    c.execute("insert into recording_integrity (composite_id, local_time_delta_90k, "
                              "sample_file_blake2b_32) values (?, ?, ?)",
                              (cid, r.local_time_delta_90k, r.sample_file_blake2b))
                    c.execute("insert into recording_playback (composite_id, video_index) "
                              "values (?, ?)", (cid, bytes(r.video_index)))
                    cum_media += r.media_duration_90k
                    cum_runs += r.run_offset == 0
                    added.append(f"{s.id}/{rid}")
                    added_bytes += r.sample_file_bytes
                    n += 1
                if n:
                    c.execute("update stream set cum_recordings = ?, cum_media_duration_90k = ?, "
                              "cum_runs = ? where id = ?",
                              (s.cum_recordings + n, cum_media, cum_runs, s.id))
                    committed[s.id] = n
                for row in s.to_delete:
                    c.execute("insert into garbage (sample_file_dir_id, composite_id) values (?, ?)",
                              (s.sample_file_dir_id, row.composite_id))
                    for table in ("recording_playback", "recording_integrity", "recording"):
                        c.execute(f"delete from {table} where composite_id = ?", (row.composite_id,))
                    deleted.append(f"{s.id}/{row.recording_id}")
                    deleted_bytes += row.sample_file_bytes
            gced = 0
            for d in self.dirs.values():
                for cid in d.garbage_unlinked:
                    c.execute("delete from garbage where sample_file_dir_id = ? and composite_id = ?",
                              (d.id, cid))
                gced += len(d.garbage_unlinked)
            c.execute("update open set end_time_90k = ?, duration_90k = ? where id = ?",
                      (now_90k, recording.to_90k_from_ns(
                          self.clocks.monotonic() - self._open_monotonic), self.open.id))
            for hook in self.flush_hooks:
                hook(c)

        # Committed: now update the in-memory state to match.
        self._vse_to_insert.clear()
        for s in self.streams.values():
            for _ in range(committed.get(s.id, 0)):
                r = s.uncommitted.popleft()
                cid = (s.id << 32) | s.cum_recordings
                s.cum_recordings += 1
                s.cum_media_duration_90k += r.media_duration_90k
                s.cum_runs += r.run_offset == 0
                if r.abandoned:  # no rows
                    if r.to_garbage:
                        self.dirs[s.sample_file_dir_id].garbage_needs_unlink.add(cid)
                    continue
                s.fs_bytes_to_add -= round_up(r.sample_file_bytes)
                self._add_to_totals(s, r.start_time_90k, r.wall_duration_90k,
                                    r.sample_file_bytes, 1)
            if s.to_delete:
                self._note_deletion(s, now_90k)
                d = self.dirs[s.sample_file_dir_id]
                for row in s.to_delete:
                    self._add_to_totals(s, row.start_time_90k, row.wall_duration_90k,
                                        row.sample_file_bytes, -1)
                    d.garbage_needs_unlink.add(row.composite_id)
                    d.garbage_fs_bytes[row.composite_id] = round_up(row.sample_file_bytes)
                    self._video_index_cache.pop(row.composite_id, None)
                s.to_delete.clear()
                s.to_delete_rule.clear()
                s.fs_bytes_to_delete = 0
                self._recompute_range(s)
        for d in self.dirs.values():
            d.garbage_unlinked.clear()
        level = logging.INFO if added or deleted or gced or abandoned else logging.DEBUG
        logger.log(level, "flush (%s): added %d recording(s) (%s) of %d B, deleted %d (%s) of %d B, "
                    "GCed %d%s", reason, len(added), ", ".join(added) or "none", added_bytes,
                    len(deleted), ", ".join(deleted) or "none", deleted_bytes, gced,
                    f", abandoned {len(abandoned)} to garbage ({', '.join(abandoned)})"
                    if abandoned else "")

    def _note_deletion(self, s: Stream, now_90k: int) -> None:
        """Remembers what this flush deleted from `s`, per rule (`Stream.last_deletions`);
        `last_deletion` is the rule that deleted the most rows (ties: bytes, age, floor)."""
        counts: dict[str, list[int]] = {}
        for row in s.to_delete:
            c = counts.setdefault(s.to_delete_rule.get(row.composite_id, "bytes"), [0, 0])
            c[0] += 1
            c[1] += row.sample_file_bytes
        best = None
        for rule in retention.RULES:
            if rule in counts:
                dl = retention.Deletion(rule, now_90k, *counts[rule])
                s.last_deletions[rule] = dl
                if best is None or dl.count > best.count:
                    best = dl
        s.last_deletion = best

    def collect_garbage(self, dir_id: int) -> int:
        """Unlinks this dir's garbage files, fsyncs the dir and marks them gone
        (§3.8 phase 2). The syncer does this after each flush; `config`
        calls it after deletions. Returns how many files were collected: nonzero
        means the next flush has garbage rows to delete (G4)."""
        with self.locked():
            d = self._get_dir(dir_id)
            ids = sorted(d.garbage_needs_unlink)
        if not ids:
            return 0
        if d.dir is None:
            # A closed dir (`config`): opening it runs recovery, which collects the
            # garbage itself (R2-R4). Those files count too: `nvr.py config` flushes
            # only if this says something was collected, and a 0 here left the
            # garbage rows behind (then `config dir delete` refused the dir).
            self.open_sample_file_dirs({dir_id})
            with self.locked():
                left = sorted(d.garbage_needs_unlink)
            if not left:
                return len(ids)
            ids = left
        dirmod.collect(d.dir, ids, self._dir_retry)
        self.delete_garbage(dir_id, ids)
        return len(ids)

    # -- listing -------------------------------------------------------------

    _LIST_COLUMNS = (
        "composite_id, open_id, start_time_90k, wall_duration_90k, media_duration_delta_90k, "
        "video_samples, video_sync_samples, video_sample_entry_id, sample_file_bytes, "
        "run_offset, flags, "
        # end_reason is not in recording_cover; look it up only where a run ended,
        # so listing stays index-only for the rest.
        "case when flags & 1 then (select end_reason from recording r2 "
        "where r2.composite_id = recording.composite_id) end")

    def _query_list_rows(self, where: str, params) -> list[ListRow]:
        out = []
        for r in self.conn.execute(f"select {self._LIST_COLUMNS} from recording {where}", params):
            out.append(ListRow(r[0], r[1], r[2], r[3], r[3] + r[4], r[5], r[6], r[7], r[8],
                               r[9], r[10], r[11]))
        return out

    def _uncommitted_rows(self, s: Stream) -> list[ListRow]:
        out = []
        for i, r in enumerate(s.uncommitted):
            if r.video_samples == 0 or r.abandoned:
                continue
            flags = (r.flags & FLAG_TRAILING_ZERO) | FLAG_UNCOMMITTED | (FLAG_GROWING if r.growing else 0)
            out.append(ListRow((s.id << 32) | (s.cum_recordings + i), self.open.id,
                               r.start_time_90k, r.wall_duration_90k, r.media_duration_90k,
                               r.video_samples, r.video_sync_samples, r.video_sample_entry_id,
                               r.sample_file_bytes, r.run_offset, flags, r.end_reason))
        return out

    def list_recordings_by_time(self, stream_id: int, start_90k: int, end_90k: int) -> list[ListRow]:
        """Recordings overlapping [start, end), committed ones ordered by start
        time, then uncommitted ones by id."""
        with self.locked("list recordings"):
            s = self._get_stream(stream_id)
            rows = self._query_list_rows(
                "where stream_id = ? and start_time_90k > ? and start_time_90k < ? "
                "order by start_time_90k",
                (stream_id, start_90k - _LOOKBACK_90K, end_90k))
            rows = [r for r in rows if r.end_time_90k > start_90k or
                    (r.wall_duration_90k == 0 and r.start_time_90k >= start_90k)]
            rows += [r for r in self._uncommitted_rows(s)
                     if r.start_time_90k < end_90k and r.end_time_90k > start_90k]
            return rows

    def list_recordings_by_id(self, stream_id: int, start_id: int, end_id: int) -> list[ListRow]:
        """Recordings with ids in [start_id, end_id), committed and uncommitted."""
        with self.locked("list recordings"):
            s = self._get_stream(stream_id)
            rows = self._query_list_rows(
                "where composite_id >= ? and composite_id < ? order by composite_id",
                ((stream_id << 32) | start_id, (stream_id << 32) | min(end_id, 0xFFFFFFFF)))
            rows += [r for r in self._uncommitted_rows(s) if start_id <= r.recording_id < end_id]
            return rows

    def recent_totals(self, stream_id: int, since_90k: int) -> RecentTotals:
        """Totals of the stream's recordings starting after `since_90k`, committed (one
        aggregate over the `recording_cover` index) and uncommitted (growing included;
        abandoned ones left out), and the sample entry of the newest."""
        with self.locked("recent totals"):
            s = self._get_stream(stream_id)
            n, samples, nbytes, wall, media = self.conn.execute(
                "select count(*), coalesce(sum(video_samples), 0), "
                "coalesce(sum(sample_file_bytes), 0), coalesce(sum(wall_duration_90k), 0), "
                "coalesce(sum(wall_duration_90k + media_duration_delta_90k), 0) "
                "from recording where stream_id = ? and start_time_90k > ?",
                (stream_id, since_90k)).fetchone()
            newest = self.conn.execute(
                "select video_sample_entry_id from recording where stream_id = ? "
                "order by start_time_90k desc limit 1", (stream_id,)).fetchone()
            newest = newest[0] if newest else None
            for r in s.uncommitted:
                if r.abandoned or r.video_samples == 0:
                    continue
                newest = r.video_sample_entry_id
                if r.start_time_90k > since_90k:
                    n += 1
                    samples += r.video_samples
                    nbytes += r.sample_file_bytes
                    wall += r.wall_duration_90k
                    media += r.media_duration_90k
            return RecentTotals(n, samples, nbytes, wall, media, newest)

    def list_aggregated_recordings(self, stream_id: int, start_90k: int, end_90k: int,
                                   split_90k: int) -> list[AggregatedRow]:
        """Merges consecutive recordings of a run (same open and sample entry)
        until a row would reach `split_90k` (API §5.2). Order is arbitrary."""
        rows = self.list_recordings_by_time(stream_id, start_90k, end_90k)
        out: list[AggregatedRow] = []
        aggs: dict[int, AggregatedRow] = {}  # run start id -> current batch of that run
        for r in rows:
            rid = r.recording_id
            run_start = rid - r.run_offset
            uncommitted = bool(r.flags & FLAG_UNCOMMITTED)
            a = aggs.get(run_start)
            if (a is not None and a.end_id + 1 == rid
                    and a.video_sample_entry_id == r.video_sample_entry_id
                    and a.open_id == r.open_id and a.end_time_90k == r.start_time_90k
                    and a.end_time_90k - a.start_time_90k + r.wall_duration_90k < split_90k):
                a.end_id = rid
                a.end_time_90k += r.wall_duration_90k
                a.video_samples += r.video_samples
                a.video_sync_samples += r.video_sync_samples
                a.sample_file_bytes += r.sample_file_bytes
                if uncommitted and a.first_uncommitted is None:
                    a.first_uncommitted = rid
                a.growing = bool(r.flags & FLAG_GROWING)
                a.has_trailing_zero = bool(r.flags & FLAG_TRAILING_ZERO)
                a.end_reason = r.end_reason
                continue
            if a is not None:
                out.append(a)
            aggs[run_start] = AggregatedRow(
                rid, rid, run_start, r.open_id, r.start_time_90k, r.end_time_90k,
                r.video_sample_entry_id, r.video_samples, r.video_sync_samples,
                r.sample_file_bytes, rid if uncommitted else None,
                bool(r.flags & FLAG_GROWING), bool(r.flags & FLAG_TRAILING_ZERO), r.end_reason)
        out.extend(aggs.values())
        return out

    # -- live view hooks -------------------------------------------------------

    def subscribe_live(self, stream_id: int, fn) -> None:
        """Calls `fn(composite_id, media_start_90k, media_end_90k, is_key, key_state)`
        for each frame the stream's writer indexes from now on: the frame's bytes are in
        the sample file and its index entry in the uncommitted recording; `key_state` is
        the recording's `live_key_state` (None if unknown). `fn` runs in the
        streamer's thread with the database lock held: it must only queue, never block."""
        with self.locked():
            self._live_listeners.setdefault(stream_id, []).append(fn)

    def unsubscribe_live(self, stream_id: int, fn) -> None:
        with self.locked():
            fns = self._live_listeners.get(stream_id, [])
            if fn in fns:
                fns.remove(fn)

    def frame_indexed(self, stream_id: int, composite_id: int, media_start_90k: int,
                      media_end_90k: int, is_key: bool, key_state: tuple | None = None) -> None:
        """Called by writer.py, with the database lock held, after indexing a frame."""
        for fn in self._live_listeners.get(stream_id, ()):
            fn(composite_id, media_start_90k, media_end_90k, is_key, key_state)

    def get_video_index(self, composite_id: int) -> bytes:
        """The recording's `video_index`, from memory if uncommitted, else
        through an LRU cache of the last 1023 looked up."""
        with self.locked("video index"):
            s = self._get_stream(composite_id >> 32)
            if (composite_id & 0xFFFFFFFF) >= s.cum_recordings:
                return bytes(self._uncommitted(composite_id).video_index)
            cache = self._video_index_cache
            if composite_id in cache:
                cache.move_to_end(composite_id)
                return cache[composite_id]
            row = self.conn.execute("select video_index from recording_playback "
                                    "where composite_id = ?", (composite_id,)).fetchone()
            if row is None:
                raise DbError(f"no recording {composite_id >> 32}/{composite_id & 0xFFFFFFFF}")
            cache[composite_id] = row[0]
            if len(cache) > VIDEO_INDEX_CACHE_LEN:
                cache.popitem(last=False)
            return row[0]

    def days_with_bounds(self, stream_id: int) -> dict[str, dict]:
        """The stream's day summaries as the API returns them (§5.2): committed
        recordings plus the uncommitted ones (growing or waiting for a flush), so a
        day with video shows up as soon as it is being recorded."""
        with self.locked():
            s = self._get_stream(stream_id)
            days = s.days
            extra = [r for r in s.uncommitted if not r.abandoned and r.wall_duration_90k > 0]
            if extra:
                days = {k: dataclasses.replace(v) for k, v in s.days.items()}
                for r in extra:
                    self.day_bounds.add(days, r.start_time_90k, r.wall_duration_90k, 1)
            out = {}
            for key in sorted(days):
                start, end = self.day_bounds.bounds(key)
                out[key] = {"startTime90k": start, "endTime90k": end,
                            "totalDuration90k": days[key].duration_90k}
            return out
