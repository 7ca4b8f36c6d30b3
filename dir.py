"""A sample file directory: its `meta` file, its lock, the file I/O seam, recovery.

A sample file dir (typically one per disk) holds sample files, each one
recording's frames, named by composite id as 16 lowercase hex digits
(`name_for`), and one `meta` file tying the dir to its database. Sample files
are only ever created (`O_EXCL`), appended to and unlinked, never truncated or
rewritten, so a reader's `mmap` of one can't fault (a SIGBUS would kill the
whole process).

The `meta` file (reference §2.5), exactly 512 bytes, rewritten in place:

    varint N            length of the message
    N bytes             DirMeta protobuf:
                          1 db_uuid            bytes (16)
                          2 dir_uuid           bytes (16)
                          3 last_complete_open Open {1 id: uint32, 2 uuid: bytes}
                          4 in_progress_open   Open
    NUL bytes           padding to 512

Writing it: the first write creates the file (O_EXCL), writes 512 bytes,
fsyncs the file (its contents are durable) and the dir (its name is durable).
A rewrite is one 512-byte `pwrite` at offset 0 and `fdatasync`: one sector, so
either version survives a crash on real disks (POSIX doesn't promise it; the
failure window is that one write, and the file holds nothing the database
can't rebuild). Needing no free space, a rewrite works on a full disk
(Moonfire #65).

Procedures (db.py calls them in this order; the code repeats the numbers):

Create a dir:
  C1. mkdir if missing; flock it exclusively; it must be empty apart from a
      `meta` without a last complete open (left by an interrupted create).
  C2. write meta: db_uuid, a new dir_uuid, in_progress_open = this open.
  C3. (db.py) insert the `sample_file_dir` row with last_complete_open_id =
      this open.
  C4. rewrite meta: last_complete_open = this open, no in_progress_open.
  A crash after C2 leaves a dir the database doesn't know: creating it again
  works. A crash after C3 leaves meta naming the open as in progress, which
  the open check accepts.

Open read-write (at start-up):
  O1. flock exclusively (one process per dir).
  O2. verify meta against the database (`_verify`).
  O3. rewrite meta with in_progress_open = this open.
  O4. (db.py) set last_complete_open_id = this open.
  O5. rewrite meta: last_complete_open = this open.
  O6. start-up recovery (`recover`).
  A crash between steps leaves meta naming either the database's open or the
  new one as in progress; O2 accepts both.

Open read-only: flock shared, verify; nothing is written.

Delete a dir (db.py refuses while a stream or garbage uses it):
  D1. the dir must hold no sample files.
  D2. rewrite meta moving last_complete_open to in_progress_open, the one
      allowed backtrack, so the meta no longer claims the database's open.
  D3. (db.py) delete the row. The dir and its meta stay for the user to remove.

A recording's file (writer.py does S1; the syncer, S2-S4):
  S1. create `name_for(id)` with O_EXCL, append frames.
  S2. fsync the file: its data is durable.
  S3. fsync the dir: its name is durable.
  S4. the recording is ready; a database flush commits its rows.

Deleting recordings, two phases (§3.8):
  G1. (db.py) a flush moves the rows to `garbage`.
  G2. unlink each file (ENOENT is fine: "may or may not still exist").
  G3. fsync the dir: the unlinks are durable before the rows go.
  G4. (db.py) the next flush deletes the garbage rows.

Start-up recovery (`recover`), which restores invariant 2 of §3.7 (every file
is a recording, garbage, or has an id >= its stream's cum_recordings):
  R1. list the dir once.
  R2. unlink files named by garbage rows (G2 of an interrupted delete).
  R3. unlink files with a recording id >= their stream's cum_recordings:
      written by a run the database never committed ("abandoned").
  R4. fsync the dir once.
  R5. (db.py) delete the garbage rows whose files are gone.

Every write, fsync and unlink goes through the seam `Fs`/`File`, so tests
inject failures (test/fakes.py) and callers retry (clock.retry). db.py owns
the `sample_file_dir` rows and the garbage bookkeeping; writer.py writes
sample files through `Fs.create_file`; the `Syncer` thread at the end of
this module does S2-S4 and G2-G3 for each dir while nvr runs, and plans the
database flushes that S4 and G4 wait for.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import heapq
import logging
import os
import queue
import re
import threading
import uuid as uuidlib
from typing import Callable, Iterable

import clock

logger = logging.getLogger(__name__)

META_NAME = "meta"
META_BYTES = 512


class DirError(Exception):
    """A problem with a sample file dir that the user can act on."""


@dataclasses.dataclass(frozen=True)
class Open:
    id: int
    uuid: bytes


@dataclasses.dataclass(frozen=True)
class DirMeta:
    db_uuid: bytes
    dir_uuid: bytes
    last_complete_open: Open | None = None
    in_progress_open: Open | None = None


# ---------------------------------------------------------------------------
# Protobuf, just what DirMeta needs: varints (wire type 0) and length-delimited
# fields (wire type 2); other wire types are skipped as protobuf requires.

def _varint(v: int) -> bytes:
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def _read_varint(b: bytes, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if i >= len(b):
            raise DirError("meta: truncated varint")
        byte = b[i]
        i += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, i
        shift += 7
        if shift >= 64:
            raise DirError("meta: varint too long")


def _fields(b: bytes):
    """Yields (field number, wire type, value) of a protobuf message."""
    i = 0
    while i < len(b):
        key, i = _read_varint(b, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _read_varint(b, i)
        elif wire == 2:
            n, i = _read_varint(b, i)
            if i + n > len(b):
                raise DirError(f"meta: field {field} runs past the end of the message")
            value, i = b[i:i + n], i + n
        elif wire == 1:
            value, i = b[i:i + 8], i + 8
        elif wire == 5:
            value, i = b[i:i + 4], i + 4
        else:
            raise DirError(f"meta: unsupported wire type {wire} for field {field}")
        if i > len(b):
            raise DirError("meta: truncated field")
        yield field, wire, value


def _encode_open(o: Open) -> bytes:
    out = b""
    if o.id:
        out += b"\x08" + _varint(o.id)
    if o.uuid:
        out += b"\x12" + _varint(len(o.uuid)) + o.uuid
    return out


def _decode_open(b: bytes) -> Open:
    id_, uuid = 0, b""
    for field, wire, value in _fields(b):
        if field == 1 and wire == 0:
            id_ = value
        elif field == 2 and wire == 2:
            uuid = bytes(value)
    return Open(id_, uuid)


def encode_meta(m: DirMeta) -> bytes:
    msg = b""
    for field, value in ((1, m.db_uuid), (2, m.dir_uuid)):
        if value:
            msg += bytes([field << 3 | 2]) + _varint(len(value)) + value
    for field, o in ((3, m.last_complete_open), (4, m.in_progress_open)):
        if o is not None:
            body = _encode_open(o)
            msg += bytes([field << 3 | 2]) + _varint(len(body)) + body
    out = _varint(len(msg)) + msg
    assert len(out) <= META_BYTES, "DirMeta never exceeds 512 bytes"
    return out + bytes(META_BYTES - len(out))


def decode_meta(b: bytes) -> DirMeta:
    if len(b) != META_BYTES:
        raise DirError(f"meta: is {len(b)} bytes, expected {META_BYTES}")
    n, i = _read_varint(b, 0)
    if i + n > META_BYTES:
        raise DirError(f"meta: message length {n} runs past the 512-byte file")
    fields = {}
    for field, wire, value in _fields(b[i:i + n]):
        fields[field] = (wire, value)
    if any(b[i + n:]):
        raise DirError("meta: padding after the message is not all zero")

    def get_bytes(f):
        w, v = fields.get(f, (2, b""))
        if w != 2:
            raise DirError(f"meta: field {f} has wire type {w}, expected 2")
        return bytes(v)

    lco = _decode_open(get_bytes(3)) if 3 in fields else None
    ipo = _decode_open(get_bytes(4)) if 4 in fields else None
    return DirMeta(get_bytes(1), get_bytes(2), lco, ipo)


# ---------------------------------------------------------------------------
# The I/O seam.

class File:
    """One open file. `write` may write less than asked (callers loop)."""

    def __init__(self, fd: int):
        self.fd = fd

    def write(self, data) -> int:
        return os.write(self.fd, data)

    def pwrite(self, data, offset: int) -> int:
        return os.pwrite(self.fd, data, offset)

    def sync(self) -> None:
        os.fsync(self.fd)

    def datasync(self) -> None:
        os.fdatasync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Fs:
    """A sample file dir's files, relative to an `O_DIRECTORY` fd held open, so a
    remount or rename of the path can't redirect operations mid-run."""

    def __init__(self, path: str):
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def create_file(self, name: str) -> File:
        return File(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600,
                            dir_fd=self.fd))

    def open_file(self, name: str) -> File:
        return File(os.open(name, os.O_WRONLY | os.O_CLOEXEC, dir_fd=self.fd))

    def read_file(self, name: str) -> bytes:
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=self.fd)
        try:
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def sync(self) -> None:
        os.fsync(self.fd)

    def unlink(self, name: str) -> None:
        os.unlink(name, dir_fd=self.fd)

    def list_names(self) -> list[str]:
        return sorted(os.listdir(self.fd))

    def stat_size(self, name: str) -> int:
        return os.stat(name, dir_fd=self.fd, follow_symlinks=False).st_size

    def lock(self, exclusive: bool) -> None:
        """Non-blocking flock; BlockingIOError if another process holds it."""
        fcntl.flock(self.fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def write_all(f: File, data) -> None:
    """Writes all of `data`, looping over short writes."""
    view = memoryview(data)
    while view:
        n = f.write(view)
        view = view[n:]


# ---------------------------------------------------------------------------
# Names.

_NAME_RE = re.compile(r"[0-9a-f]{16}")


def name_for(composite_id: int) -> str:
    return "%08x%08x" % (composite_id >> 32, composite_id & 0xFFFFFFFF)


def parse_name(name: str) -> int | None:
    return int(name, 16) if _NAME_RE.fullmatch(name) else None


# ---------------------------------------------------------------------------
# The dir.

def _no_retry(what: str, fn: Callable):
    return fn()


class SampleFileDir:
    """An open, locked sample file dir. Close it (or use `with`) to unlock."""

    def __init__(self, path: str, fs: Fs, meta: DirMeta | None):
        self.path = path
        self.fs = fs
        self.meta = meta

    @classmethod
    def create(cls, path: str, db_uuid: bytes, open_: Open, *, fs_factory=Fs) -> "SampleFileDir":
        os.makedirs(path, exist_ok=True)  # C1
        d = cls._lock(path, exclusive=True, fs_factory=fs_factory)
        try:
            names = d.fs.list_names()
            existing = None
            if META_NAME in names:
                existing = decode_meta(d.fs.read_file(META_NAME))
                if existing.last_complete_open is not None:
                    raise DirError(f"{path} is already a sample file dir of a database "
                                   f"(its meta names open {existing.last_complete_open.id}); "
                                   f"use an empty directory")
            others = [n for n in names if n != META_NAME]
            if others:
                raise DirError(f"{path} is not empty ({', '.join(others[:5])}"
                               f"{', ...' if len(others) > 5 else ''}); use an empty directory")
            d._write_meta(DirMeta(db_uuid, uuidlib.uuid4().bytes, None, open_),  # C2
                          exists=existing is not None)
            return d
        except BaseException:
            d.close()
            raise

    @classmethod
    def open(cls, path: str, expected: DirMeta, *, read_only: bool = False,
             fs_factory=Fs) -> "SampleFileDir":
        d = cls._lock(path, exclusive=not read_only, fs_factory=fs_factory)  # O1
        try:
            try:
                raw = d.fs.read_file(META_NAME)
            except FileNotFoundError:
                raise DirError(f"sample file dir {path} has no meta file; is its disk "
                               f"mounted?") from None
            d.meta = decode_meta(raw)
            d._verify(expected)  # O2
            return d
        except BaseException:
            d.close()
            raise

    @classmethod
    def _lock(cls, path: str, exclusive: bool, fs_factory) -> "SampleFileDir":
        try:
            fs = fs_factory(path)
        except FileNotFoundError:
            raise DirError(f"sample file dir {path} does not exist; is its disk mounted?") from None
        except NotADirectoryError:
            raise DirError(f"sample file dir {path} is not a directory") from None
        try:
            fs.lock(exclusive)
        except BlockingIOError:
            fs.close()
            raise DirError(f"sample file dir {path} is in use by another process "
                           f"(is nvr already running?)") from None
        return cls(path, fs, None)

    def _verify(self, expected: DirMeta) -> None:
        m = self.meta
        if m.db_uuid != expected.db_uuid:
            raise DirError(f"sample file dir {self.path} belongs to another database; "
                           f"check which disk is mounted there")
        if m.dir_uuid != expected.dir_uuid:
            raise DirError(f"sample file dir {self.path} is a different directory of this "
                           f"database than the one expected there; check the mounts")
        want = expected.last_complete_open
        if want is None:
            if m.last_complete_open is not None:
                raise DirError(f"sample file dir {self.path} was last opened by open "
                               f"{m.last_complete_open.id}, but the database has no complete "
                               f"open for it; was the database restored from an old backup?")
        elif want not in (m.last_complete_open, m.in_progress_open):
            have = m.last_complete_open.id if m.last_complete_open else None
            raise DirError(f"sample file dir {self.path} was last opened by open {have}, the "
                           f"database expects open {want.id}; was the database or the dir "
                           f"restored from a backup?")

    def _write_meta(self, m: DirMeta, *, exists: bool = True) -> None:
        data = encode_meta(m)
        if not exists:
            f = self.fs.create_file(META_NAME)
            try:
                write_all(f, data)
                f.sync()  # the contents are durable before the name
            finally:
                f.close()
            self.fs.sync()  # the name is durable
        else:
            f = self.fs.open_file(META_NAME)
            try:
                # One sector in place: no free space needed, one write to tear.
                if f.pwrite(data, 0) != len(data):
                    raise OSError(errno.EIO, "short write of meta")
                f.datasync()
            finally:
                f.close()
        self.meta = m

    def begin_open(self, open_: Open) -> None:
        self._write_meta(dataclasses.replace(self.meta, in_progress_open=open_))  # O3

    def complete_open(self, open_: Open) -> None:
        self._write_meta(dataclasses.replace(self.meta, last_complete_open=open_,  # C4 / O5
                                             in_progress_open=None))

    def prepare_delete(self) -> None:
        files = [n for n in self.fs.list_names() if parse_name(n) is not None]  # D1
        if files:
            raise DirError(f"sample file dir {self.path} still holds {len(files)} sample "
                           f"file(s) ({', '.join(files[:3])}...); delete its streams' "
                           f"recordings first")
        self._write_meta(dataclasses.replace(  # D2
            self.meta, last_complete_open=None, in_progress_open=self.meta.last_complete_open))

    def close(self) -> None:
        self.fs.close()  # closing the fd releases the flock

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


@dataclasses.dataclass
class RecoveryResult:
    garbage_gone: list[int]       # garbage ids whose files are now gone (R5 deletes the rows)
    abandoned: list[int]          # abandoned files unlinked
    unexpected: list[str]         # names that are not sample files of known streams


def recover(d: SampleFileDir, garbage: Iterable[int], cum_recordings: dict[int, int], *,
            retry: Callable = _no_retry) -> RecoveryResult:
    """Start-up recovery, steps R1-R4 (see the module docstring)."""
    garbage = set(garbage)
    present: dict[int, str] = {}
    unexpected = []
    for name in d.fs.list_names():  # R1
        if name == META_NAME:
            continue
        cid = parse_name(name)
        if cid is None:
            unexpected.append(name)
        else:
            present[cid] = name
    abandoned = []
    for cid, name in sorted(present.items()):
        if cid in garbage:
            _unlink(d, name, retry)  # R2
        elif (cid >> 32) in cum_recordings:
            if (cid & 0xFFFFFFFF) >= cum_recordings[cid >> 32]:
                _unlink(d, name, retry)  # R3
                abandoned.append(cid)
        else:
            unexpected.append(name)
    if garbage & present.keys() or abandoned:
        retry(f"fsync dir {d.path}", d.fs.sync)  # R4: unlinks durable before rows go
    return RecoveryResult(sorted(garbage), abandoned, unexpected)


def collect(d: SampleFileDir, composite_ids: Iterable[int], retry: Callable) -> None:
    """Garbage collection steps G2-G3: unlink each file, then fsync the dir
    once, so the unlinks are durable before the rows naming them go (G4)."""
    for cid in composite_ids:
        _unlink(d, name_for(cid), retry)  # G2
    retry(f"fsync dir {d.path}", d.fs.sync)  # G3


def _unlink(d: SampleFileDir, name: str, retry: Callable) -> None:
    def unlink():
        try:
            d.fs.unlink(name)
        except FileNotFoundError:
            pass  # "may or may not still exist"
    retry(f"unlink {d.path}/{name}", unlink)


# ---------------------------------------------------------------------------
# The syncer: one thread per dir (`sync-<path>`) while nvr records.

FLUSH_RETRY_SEC = 60  # after a failed flush (reference §3.7)


@dataclasses.dataclass(order=True)
class _PlannedFlush:
    when_ns: int                                   # monotonic
    composite_id: int = dataclasses.field(compare=False)
    reason: str = dataclasses.field(compare=False)


class Syncer:
    """Makes finished recordings durable, plans flushes, deletes old ones.

    Commands arrive on a queue from the writers (`save`) and the database
    (`flushed`, after every flush):
    - save: fsync the file (S2) and the dir (S3), mark the recording synced
      (S4), let retention queue this stream's oldest recordings for deletion
      (they become garbage in the next flush), and plan a flush
      `flushIfSec` after the recording's start: now + max(0, flushIfSec -
      its wall duration). Any flush satisfies every plan.
    - flushed: collect garbage: unlink (G2), fsync the dir (G3), tell the
      database the files are gone (G4 happens in the next flush).
    Every I/O step is retried at 1 s forever (a full disk stalls, then
    resumes), except once shutdown is set: then it gives up on that item,
    which start-up recovery handles. `db` is a db.Database (not imported:
    db.py imports this module).
    """

    def __init__(self, db, dir_id: int, *, shutdown: threading.Event | None = None):
        self.db = db
        self.dir_id = dir_id
        self.shutdown = shutdown or threading.Event()
        d = db.dirs[dir_id]
        self.dir: SampleFileDir = d.dir
        self.path = d.path
        self.queue: queue.Queue = queue.Queue()
        self.planned: list[_PlannedFlush] = []
        self.thread: threading.Thread | None = None

    # -- called from other threads ---------------------------------------------

    def save(self, composite_id: int, wall_duration_90k: int, f: File) -> None:
        self.queue.put(("save", composite_id, wall_duration_90k, f))

    def flushed(self) -> None:
        self.queue.put(("flushed",))

    def start(self) -> None:
        self.db.on_flush.append(self.flushed)
        self.thread = threading.Thread(target=self._run, name=f"sync-{self.path}", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Processes what is queued (saves of the final recordings), then ends.
        The caller then flushes the database and may call `collect_garbage`."""
        if self.flushed in self.db.on_flush:
            self.db.on_flush.remove(self.flushed)
        self.queue.put(("stop",))
        if self.thread is not None:
            self.thread.join()
            self.thread = None

    # -- the thread ---------------------------------------------------------------

    def _run(self) -> None:
        while self.iter():
            pass

    def iter(self) -> bool:
        """Handles one command or a planned flush's time; False after stop."""
        timeout = None
        if self.planned:
            now = self.db.clocks.monotonic()
            timeout = max(0, self.planned[0].when_ns - now) / clock.NANOS_PER_SEC
        try:
            cmd = self.db.clocks.recv_timeout(self.queue, timeout)
        except queue.Empty:
            self._flush_if_due()
            return True
        try:
            if cmd[0] == "save":
                self._save(*cmd[1:])
            elif cmd[0] == "flushed":
                self.collect_garbage()
            elif cmd[0] == "stop":
                return False
        except clock.ShutdownError as e:
            logger.warning("%s: %s (start-up recovery will finish it)", self.path, e)
        return True

    def _retry(self, what: str, fn):
        return clock.retry(self.db.clocks, self.shutdown, what, fn)

    def _save(self, composite_id: int, wall_duration_90k: int, f: File) -> None:
        name = f"{self.path}/{name_for(composite_id)}"
        try:
            self._retry(f"fsync {name}", f.sync)  # S2: the frames are durable
        finally:
            f.close()
        self._retry(f"fsync dir {self.path}", self.dir.fs.sync)  # S3: its name is durable
        self.db.mark_synced(composite_id)  # S4
        stream_id = composite_id >> 32
        deleted = self.db.delete_oldest_recordings(stream_id)
        if deleted:
            logger.info("%s: retention will delete %d recording(s) of stream %d",
                        self.path, len(deleted), stream_id)
        s = self.db.streams[stream_id]
        how_soon_ns = max(0, s.flush_if_sec * clock.NANOS_PER_SEC
                          - wall_duration_90k * clock.NANOS_PER_SEC // 90_000)
        cam = self.db.cameras[s.camera_id].short_name
        heapq.heappush(self.planned, _PlannedFlush(
            self.db.clocks.monotonic() + how_soon_ns, composite_id,
            f"{s.flush_if_sec} s after the start of {cam}-{s.type} recording "
            f"{composite_id & 0xFFFFFFFF}"))

    def _flush_if_due(self) -> None:
        # Drop plans another flush (any dir's) already satisfied.
        while self.planned:
            p = self.planned[0]
            s = self.db.streams.get(p.composite_id >> 32)
            if s is not None and s.cum_recordings <= (p.composite_id & 0xFFFFFFFF):
                break
            heapq.heappop(self.planned)
        if not self.planned:
            return
        p = self.planned[0]
        now = self.db.clocks.monotonic()
        if p.when_ns > now:
            return
        try:
            self.db.flush(p.reason)
        except Exception as e:  # sqlite3 errors (disk full, I/O): retry later
            logger.warning("%s: flush (%s) failed; retrying in %d s: %s", self.path, p.reason,
                           FLUSH_RETRY_SEC, e, exc_info=True)
            heapq.heapreplace(self.planned, dataclasses.replace(
                p, when_ns=now + FLUSH_RETRY_SEC * clock.NANOS_PER_SEC))
            return
        self.planned.clear()

    def collect_garbage(self) -> int:
        """G2-G3 for this dir's garbage; returns how many files were collected."""
        with self.db.locked():
            ids = sorted(self.db.dirs[self.dir_id].garbage_needs_unlink)
        if not ids:
            return 0
        collect(self.dir, ids, self._retry)
        self.db.delete_garbage(self.dir_id, ids)
        return len(ids)

    def initial_rotation(self) -> None:
        """At start-up, before recording: enforce every stream's limit now
        (it may have been lowered), flush, collect, flush."""
        for s in list(self.db.streams.values()):
            if s.sample_file_dir_id == self.dir_id:
                self.db.delete_oldest_recordings(s.id)
        self.db.flush("initial rotation")
        if self.collect_garbage():
            self.db.flush("initial garbage collection")
