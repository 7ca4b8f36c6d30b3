"""A sample file directory: its `meta` file, its lock, the file I/O seam, recovery.

A sample file dir (typically one per disk) holds one file per recording, named
by its composite id as 16 lowercase hex digits (`name_for`: stream id, then
recording id; `00000003001c1ba6` is stream 3, recording 1842086), and one
`meta` file tying the dir to its database (reference §2.5, §3.1). Sample files
are only created (O_CREAT|O_EXCL, mode 0600), appended to and unlinked: never
truncated or rewritten, so a reader's `mmap` can't fault (SIGBUS kills the
whole process) and a reused id can't clobber a recording.

One process per dir: `flock` on the dir's fd, LOCK_EX read-write, LOCK_SH
read-only, non-blocking. The kernel drops it when the fd closes or the process
dies, so no stale lock outlives a crash.

`meta` is exactly 512 bytes, so a rewrite is one sector in place:

    offset 0    varint N, the length of the DirMeta message (1 byte: N < 128)
    offset 1    N bytes of protobuf (proto3) DirMeta; empty fields omitted:
                  0a 10 <16 bytes>   field 1 db_uuid, wire type 2, length 16
                  12 10 <16 bytes>   field 2 dir_uuid
                  1a LL <Open>       field 3 last_complete_open, LL = len(Open)
                  22 LL <Open>       field 4 in_progress_open
                Open:
                  08 <varint>        field 1 id (uint32), wire type 0
                  12 10 <16 bytes>   field 2 uuid
    offset 1+N  NUL padding to 512. Reading ignores it, as Moonfire does: it
                carries nothing, and refusing to start over it helps no one.
Unknown fields are skipped (wire types 0, 1, 2, 5); repeated ones follow
protobuf (bytes: last wins; messages: merged).

last_complete_open is the last open the database is known to have recorded as
complete; in_progress_open one it may or may not have recorded, which has
written no sample data. The check (O2) passes if the database's last complete
open is either; if the database has none, the file must have no
last_complete_open.

Procedures. "(db.py)" marks db.py's steps between ours; it calls these in
order, and the code repeats the step ids. "Crash" means power loss.

Writing meta. First write (only C3):
  M1. create `meta` O_CREAT|O_EXCL, 0600.   M2. write the 512 bytes.
  M3. fsync the file: its contents are durable before its name can be.
  M4. fsync the dir: its name is durable, so a crash can't lose the file.
  Window: a crash before M4 leaves no meta, or an empty or short one; create
  starts over (C2). Later writes are in place, needing no free space (a full
  disk can't block start-up) and no dir fsync (name and size don't change):
  M5. pwrite the 512 bytes at offset 0: one sector.
  M6. fdatasync: the new contents are durable.
  Window: until M6 returns the sector holds the old or the new contents (disks
  write a sector whole in practice, though POSIX doesn't promise it; a torn one
  shows as "meta is damaged" at the next open). Each procedure is ordered so
  both versions pass O2. A failure raises OSError and `self.meta` keeps the old
  value; the caller must not go on to its next step (it may retry this one).

Create a dir (db.py `add_sample_file_dir`):
  C1. mkdir (with parents, 0700) if missing; open it; flock LOCK_EX|LOCK_NB.
  C2. it must hold nothing but maybe a `meta` without last_complete_open, left
      by an interrupted create (of this database or another). A meta of the
      wrong size is a torn M1-M4: unlink it (C3's M4 makes that durable).
  C3. write meta: db_uuid, a new dir_uuid, in_progress_open = this open.
  C4. (db.py) insert the row with last_complete_open_id = this open.
  C5. rewrite meta: last_complete_open = this open, no in_progress_open.
  Window: before C4 commits there is no row and creating again works; after
  it the row's open is the file's in_progress_open, which O2 accepts.

Open read-write (db.py `open_sample_file_dirs`; §2.5 steps 1-6):
  O1. open the dir; flock LOCK_EX|LOCK_NB.
  O2. read meta and check it against the database's row; a mismatch raises
      DirError and writes nothing.
  O3. rewrite meta: last_complete_open = the database's (not the file's: after
      a crash between O4 and O5 the file names the open before),
      in_progress_open = this open.
  O4. (db.py) set the row's last_complete_open_id = this open.
  O5. rewrite meta: last_complete_open = this open, no in_progress_open.
  O6. start-up recovery (R1-R5), before any writer starts.
  Window: whenever it crashes, the database's open is in the file: O2 passes.

Open read-only (`--read-only`, `nvr.py check`): flock LOCK_SH|LOCK_NB (shared
with other read-only opens, excluded by a read-write one), then O2. Nothing is
written.

Delete a dir (db.py `delete_sample_file_dir`, once no stream or garbage row
uses it; it does O1-O6 first):
  D1. the dir must hold no sample files.
  D2. rewrite meta moving last_complete_open to in_progress_open: the one
      allowed backtrack. Without it the dir could never be created again.
  D3. (db.py) delete the row. The dir and meta stay for the user to remove.
  Window: after D2 the row's open is the file's in_progress_open: O2 passes.

Create a sample file (§3.7):
  S1. (writer.py) create `name_for(id)` O_CREAT|O_EXCL, 0600, and append the
      frames (`write_all`). Its recording id is >= the stream's cum_recordings
      until S4 commits, so after a crash it is abandoned (R3).
  S2. fsync the file: the data is durable before a row claims it (inv. 1).
      Not retried: if it fails, S2F instead of S3-S4.
  S3. fsync the dir: the name is durable, for the same reason.
  S4. the recording is ready; (db.py) the next flush inserts its row and
      raises cum_recordings past it.
  S2F. the file's fsync failed: abandon the recording. After a failed fsync
      Linux may have dropped the file's dirty pages and marked them clean, so
      a later fsync succeeds with frames missing on disk ("fsyncgate",
      PostgreSQL 2018): retrying S2 could commit a row whose file lacks frames
      (inv. 1). Close the file; (db.py) the next flush raises cum_recordings
      past its id and inserts a `garbage` row for it in one transaction, so
      the file goes from "abandoned" to "garbage" atomically (inv. 2); G2-G4
      then delete it. The error is logged; the stream's run goes on with its
      next recording (writer.py). No S3: nothing will claim the file.

Delete sample files, two phases (§3.8):
  G1. (db.py) a flush moves the recording rows to `garbage`.
  G2. unlink each file; ENOENT is fine (an earlier try may have done it).
  G3. fsync the dir: the unlinks are durable before the rows naming them go,
      or a crash could bring back a file no row names (inv. 2).
  G4. (db.py) the next flush deletes the garbage rows.
  Window: until G4 commits the garbage rows stay, and R2 finishes the job.

Start-up recovery (`recover`; O6):
  R1. list the dir once.
  R2. unlink every garbage row's file; ENOENT is fine ("may or may not exist").
  R3. unlink each sample file whose recording id is >= its stream's
      cum_recordings: S1 ran, S4 never committed ("abandoned"). Files of
      streams the database doesn't know are reported, never touched; so are
      files that have a `recording` row all the same (a row beyond
      cum_recordings: a bad write or a hand edit; `nvr.py check` reports it).
  R4. fsync the dir once, even if every file was already gone: a process that
      crashed after G2 may have left its unlinks not yet durable.
  R5. (db.py) its next transaction deletes the garbage rows R2 reported gone.
  Late R3 (`run`: db.py `open_sample_file_dirs(list_later=True)`): R1 lists every
  recording's file, so its time grows with the recordings kept (~0.4-1 s per
  stream-year of one-minute recordings here); `run` does only R2 and R4 before
  recording (`recover_garbage`) and lists the dir on a thread meanwhile. Abandoned
  files are the only ones a writer can meet: their ids are the ones it assigns
  next. So: (a) S1 that finds its name taken (O_EXCL: EEXIST) by a file no
  recording row names unlinks and recreates it (`replace_abandoned`; a crash
  between leaves an abandoned name either way); (b) the listing's abandoned ids
  are unlinked under the database lock, only those no writer has been given yet
  (>= the stream's next recording id), so neither can unlink the other's new
  file; unexpected and kept files are reported as by R1-R3.
  Each unlink and the fsync go through `retry`, which retries transient
  errors (EIO, ENOSPC) with a warning naming the file.

Invariants (§3.7), true on disk at every instant:
  1. every `recording` row has its file, of the stated size and hash;
  2. every sample file is in exactly one of: a `recording` row, a `garbage`
     row, or "recording id >= its stream's cum_recordings" (abandoned);
  3. after a clean shutdown every sample file has a row.

Neighbours: db.py owns the `sample_file_dir`, `open` and `garbage` rows and
calls these procedures in order; writer.py does S1 through `Fs.create_file`
and `write_all`; `nvr.py check` opens dirs read-only. All I/O goes through
`Fs`/`File` so tests can script failures (test/fakes.py).
The `Syncer` thread at the end of this module does S2-S4 and G2-G3 for
each dir while nvr runs, and plans the database flushes S4 and G4 wait for.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import heapq
import logging
import os
import queue
import sqlite3
import threading
import uuid as uuidlib
from typing import Callable, Iterable

import clock
import logrepeat
import retention

logger = logging.getLogger(__name__)

META_NAME = "meta"
META_BYTES = 512  # one sector, rewritten in place (M5)
MAX_OPEN_ID = 0xFFFFFFFF  # Open.id is a uint32


class DirError(Exception):
    """A problem with a sample file dir the user can act on; the message says how."""


@dataclasses.dataclass(frozen=True)
class Open:
    id: int
    uuid: bytes  # 16 bytes, the `open` row's uuid


@dataclasses.dataclass(frozen=True)
class DirMeta:
    db_uuid: bytes
    dir_uuid: bytes
    last_complete_open: Open | None = None
    in_progress_open: Open | None = None


# -- meta encoding: the little of protobuf DirMeta needs ----------------------

def _varint(v: int) -> bytes:
    out = bytearray()
    while v >= 0x80:
        out.append(v & 0x7F | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def _read_varint(b: bytes, i: int) -> tuple[int, int]:
    """Returns (value, index after it)."""
    value = shift = 0
    while True:
        if i >= len(b):
            raise DirError("truncated varint")
        if shift >= 70:
            raise DirError("varint longer than 10 bytes")
        byte = b[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, i


def _fields(msg: bytes):
    """Yields (field number, wire type, value) for each field of a message."""
    i = 0
    while i < len(msg):
        key, i = _read_varint(msg, i)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise DirError("field number 0")
        if wire == 0:
            value, i = _read_varint(msg, i)
            yield field, wire, value
            continue
        if wire == 2:
            n, i = _read_varint(msg, i)
        elif wire in (1, 5):
            n = 8 if wire == 1 else 4
        else:  # 3, 4 (groups) and 6, 7 never occur in DirMeta
            raise DirError(f"field {field} has unsupported wire type {wire}")
        if i + n > len(msg):
            raise DirError(f"field {field} runs past the end of the message")
        yield field, wire, msg[i:i + n]
        i += n


def _bytes_field(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _encode_open(o: Open) -> bytes:
    if not 0 <= o.id <= MAX_OPEN_ID:
        raise ValueError(f"open id {o.id} is not a uint32")
    return ((b"\x08" + _varint(o.id) if o.id else b"")
            + (_bytes_field(2, o.uuid) if o.uuid else b""))


def encode_meta(m: DirMeta) -> bytes:
    """The 512 bytes of a `meta` file (layout in the module docstring)."""
    msg = b""
    for field, value in ((1, m.db_uuid), (2, m.dir_uuid)):
        if value:
            msg += _bytes_field(field, value)
    for field, o in ((3, m.last_complete_open), (4, m.in_progress_open)):
        if o is not None:
            msg += _bytes_field(field, _encode_open(o))
    out = _varint(len(msg)) + msg
    if len(out) > META_BYTES:
        raise ValueError(f"DirMeta needs {len(out)} bytes, over {META_BYTES}")
    return out + bytes(META_BYTES - len(out))


def _want_wire(where: str, field: int, wire: int, want: int) -> None:
    if wire != want:
        raise DirError(f"{where} field {field} has wire type {wire}, expected {want}")


def _decode_open(msg: bytes) -> Open:
    id_, uuid = 0, b""
    for field, wire, value in _fields(msg):
        if field in (1, 2):  # others are unknown: skipped, as protobuf requires
            _want_wire("Open", field, wire, 0 if field == 1 else 2)
        if field == 1:
            if value > MAX_OPEN_ID:
                raise DirError(f"open id {value} is not a uint32")
            id_ = value
        elif field == 2:
            uuid = value
    return Open(id_, uuid)


def decode_meta(b: bytes) -> DirMeta:
    """Parses a `meta` file's bytes; DirError says what is wrong with them."""
    if len(b) != META_BYTES:
        raise DirError(f"meta is {len(b)} bytes, expected {META_BYTES}")
    n, i = _read_varint(b, 0)
    if i + n > META_BYTES:
        raise DirError(f"meta's message length {n} runs past the end of the file")
    fields: dict[int, bytes] = {}
    for field, wire, value in _fields(bytes(b[i:i + n])):
        if field in (1, 2, 3, 4):  # others are unknown: skipped, as protobuf requires
            _want_wire("DirMeta", field, wire, 2)
            # A repeated bytes field: the last wins. A repeated message field:
            # they merge, which parsing their concatenation does.
            fields[field] = fields.get(field, b"") + value if field >= 3 else value
    opens = [_decode_open(fields[f]) if f in fields else None for f in (3, 4)]
    return DirMeta(fields.get(1, b""), fields.get(2, b""), *opens)


# -- the I/O seam ---------------------------------------------------------------

class File:
    """One open file. `write` may write less than asked: use `write_all`."""

    def __init__(self, fd: int, name: str = ""):
        self.fd = fd
        self.name = name or f"fd {fd}"  # the path, for messages

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
            fd, self.fd = self.fd, -1
            os.close(fd)


class Fs:
    """One sample file dir's files, relative to an O_DIRECTORY fd held open, so
    a rename of the path or a mount over it can't redirect operations."""

    def __init__(self, path: str, *, mkdir: bool = False):
        self.path = path
        if mkdir:
            os.makedirs(path, mode=0o700, exist_ok=True)
        self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def create_file(self, name: str) -> File:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        return File(os.open(name, flags, 0o600, dir_fd=self.fd), f"{self.path}/{name}")

    def open_file(self, name: str) -> File:
        return File(os.open(name, os.O_WRONLY | os.O_CLOEXEC, dir_fd=self.fd),
                    f"{self.path}/{name}")

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

    def statvfs(self) -> os.statvfs_result:
        """The filesystem's sizes (free space for metrics.py)."""
        return os.fstatvfs(self.fd)

    def stat_size(self, name: str) -> int:
        return os.stat(name, dir_fd=self.fd, follow_symlinks=False).st_size

    def free_space(self) -> tuple[int, int]:
        """(available bytes, total bytes) of the dir's filesystem, for retention.py's
        free-space floor: statvfs's f_bavail, what an unprivileged writer may still
        use, and f_blocks, in f_frsize units."""
        st = self.statvfs()
        return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize

    def lock(self, exclusive: bool) -> None:
        """Non-blocking flock; BlockingIOError if another process holds it."""
        fcntl.flock(self.fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)

    def close(self) -> None:
        """Closes the fd, which releases the flock."""
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


Retry = Callable[[str, Callable], object]  # retry(description, fn): fn() until it succeeds


def no_retry(description: str, fn: Callable):
    """A `retry` that lets the first failure propagate."""
    return fn()


def write_all(f: File, data, *, retry: Retry = no_retry) -> None:
    """Writes all of `data` to `f`, looping over short writes. Each write(2)
    goes through `retry`. Pass the retry here rather than retrying a whole
    `write_all`: a failed write(2) wrote nothing, but an earlier one in the
    loop may have, and writing `data` again would duplicate those bytes."""
    view = memoryview(data)
    while view:
        def write_some():
            n = f.write(view)
            if n <= 0:
                raise OSError(errno.EIO, f"write to {f.name} returned {n}")
            return n
        view = view[retry(f"write {f.name}", write_some):]


# -- sample file names ----------------------------------------------------------

def name_for(composite_id: int) -> str:
    return "%08x%08x" % (composite_id >> 32, composite_id & 0xFFFFFFFF)


def parse_name(name: str) -> int | None:
    """The composite id a sample file name encodes, or None if it is not one."""
    if len(name) != 16 or any(c not in "0123456789abcdef" for c in name):
        return None
    return int(name, 16)


# -- the dir --------------------------------------------------------------------

class SampleFileDir:
    """An open, locked sample file dir. `close()` (or `with`) unlocks it."""

    def __init__(self, path: str, fs: Fs, meta: DirMeta | None = None, *,
                 read_only: bool = False):
        self.path = path
        self.fs = fs
        self.meta = meta
        self.read_only = read_only
        # The database's last complete open of this dir, which O3 writes.
        self.db_open = meta.last_complete_open if meta else None

    @classmethod
    def create(cls, path: str, db_uuid: bytes, open_: Open, *, fs_factory=Fs) -> "SampleFileDir":
        """C1-C3. db.py then inserts the row (C4) and calls `complete_open` (C5)."""
        d = cls._open_locked(path, exclusive=True, fs_factory=fs_factory, mkdir=True)  # C1
        try:
            names = d.fs.list_names()  # C2
            others = [n for n in names if n != META_NAME]
            if others:
                raise DirError(f"can't create sample file dir {path}: it is not empty "
                               f"({_some(others)}); use an empty directory")
            have_meta = META_NAME in names
            if have_meta and d.fs.stat_size(META_NAME) != META_BYTES:
                logger.warning("%s: removing the torn meta of an interrupted create", path)
                d.fs.unlink(META_NAME)  # C2: C3's dir fsync (M4) makes this durable too
                have_meta = False
            if have_meta:
                old = d._read_meta()
                if old.last_complete_open is not None:
                    raise DirError(f"can't create sample file dir {path}: it already belongs "
                                   f"to a database (open {old.last_complete_open.id} of "
                                   f"database {_uuid(old.db_uuid)}); use an empty directory")
            m = DirMeta(db_uuid, uuidlib.uuid4().bytes, None, open_)
            if have_meta:
                d._rewrite_meta(m)  # C3 over an interrupted create's meta
            else:
                d._create_meta(m)  # C3
            return d
        except BaseException:  # re-raises; just don't leak the fd and lock
            d.close()
            raise

    @classmethod
    def open(cls, path: str, expected: DirMeta, *, read_only: bool = False,
             fs_factory=Fs) -> "SampleFileDir":
        """O1-O2 (`expected` is what the database says); read-only opens stop here.
        Read-write, db.py goes on: begin_open (O3), its row (O4), complete_open (O5)."""
        d = cls._open_locked(path, exclusive=not read_only, fs_factory=fs_factory)  # O1
        d.read_only = read_only
        try:
            d.meta = d._read_meta()  # O2
            d._verify(expected)  # O2
            d.db_open = expected.last_complete_open
            return d
        except BaseException:  # re-raises; just don't leak the fd and lock
            d.close()
            raise

    @classmethod
    def _open_locked(cls, path: str, *, exclusive: bool, fs_factory,
                     mkdir: bool = False) -> "SampleFileDir":
        try:
            fs = fs_factory(path, mkdir=True) if mkdir else fs_factory(path)
        except FileNotFoundError:
            raise DirError(f"sample file dir {path} does not exist; is its disk mounted?") from None
        except (NotADirectoryError, FileExistsError):
            raise DirError(f"sample file dir {path} is not a directory") from None
        except PermissionError:
            raise DirError(f"sample file dir {path}: permission denied; check that it is "
                           f"owned by the user nvr runs as (uid {os.getuid()})") from None
        try:
            fs.lock(exclusive)
        except BlockingIOError:
            fs.close()
            raise DirError(f"sample file dir {path} is in use by another process "
                           f"(is nvr already running?)") from None
        except BaseException:  # re-raises; just don't leak the fd
            fs.close()
            raise
        return cls(path, fs)

    def _read_meta(self) -> DirMeta:
        try:
            raw = self.fs.read_file(META_NAME)
        except FileNotFoundError:
            raise DirError(f"sample file dir {self.path} has no meta file; is its disk "
                           f"mounted? (an unmounted disk leaves an empty mount point)") from None
        try:
            return decode_meta(raw)
        except DirError as e:
            raise DirError(f"sample file dir {self.path}: meta is damaged ({e}); check the "
                           f"disk (dmesg, fsck) and restore the dir from a backup") from None

    def _verify(self, expected: DirMeta) -> None:
        """O2: the check of §2.5. Raises DirError naming what to check; writes nothing."""
        m, p = self.meta, self.path
        if m.db_uuid != expected.db_uuid:
            raise DirError(f"sample file dir {p} belongs to another database (its meta names "
                           f"database {_uuid(m.db_uuid)}, this is {_uuid(expected.db_uuid)}); "
                           f"check which disk is mounted there and which database you opened")
        if m.dir_uuid != expected.dir_uuid:
            raise DirError(f"sample file dir {p} is a different directory of this database "
                           f"(dir {_uuid(m.dir_uuid)}, expected {_uuid(expected.dir_uuid)}); "
                           f"check the mounts: were two disks swapped or a path aliased?")
        want = expected.last_complete_open
        if want is None:
            if m.last_complete_open is not None:
                raise DirError(f"sample file dir {p} was last opened by open "
                               f"{m.last_complete_open.id}, but the database has never "
                               f"completed an open of it; was the database restored from a "
                               f"backup older than the dir?")
        elif want not in (m.last_complete_open, m.in_progress_open):
            have = m.in_progress_open or m.last_complete_open
            same = " (a different open with the same id)" if have and have.id == want.id else ""
            raise DirError(f"sample file dir {p} was last opened by open "
                           f"{have.id if have else 'none'}, the database expects open "
                           f"{want.id}{same}; was the database or the dir restored from a "
                           f"backup, or the dir used by a copy of the database?")

    def _create_meta(self, m: DirMeta) -> None:
        """M1-M4: the first write of meta."""
        data = encode_meta(m)
        f = self.fs.create_file(META_NAME)  # M1
        try:
            write_all(f, data, retry=no_retry)  # M2
            f.sync()  # M3: the contents are durable before the name can be
        finally:
            f.close()
        self.fs.sync()  # M4: the name is durable, so a crash can't lose the file
        self.meta = m

    def _rewrite_meta(self, m: DirMeta) -> None:
        """M5-M6: one 512-byte sector in place; no free space needed."""
        data = encode_meta(m)
        f = self.fs.open_file(META_NAME)
        try:
            n = f.pwrite(data, 0)  # M5
            if n != len(data):
                raise OSError(errno.EIO, f"short write of {n} bytes to {self.path}/meta")
            f.datasync()  # M6: the new contents are durable (name and size are unchanged)
        finally:
            f.close()
        self.meta = m

    def _check_writable(self) -> None:
        if self.read_only:
            raise ValueError(f"sample file dir {self.path} is open read-only")

    def begin_open(self, open_: Open) -> None:
        """O3: in_progress_open = open_, last_complete_open = the database's."""
        self._check_writable()
        self._rewrite_meta(dataclasses.replace(  # O3
            self.meta, last_complete_open=self.db_open, in_progress_open=open_))

    def complete_open(self, open_: Open) -> None:
        """C5 / O5, once the database's row names `open_` (C4 / O4)."""
        self._check_writable()
        if self.meta.in_progress_open != open_:
            raise ValueError(f"complete_open({open_}) without begin_open or create")
        self._rewrite_meta(dataclasses.replace(  # C5 / O5
            self.meta, last_complete_open=open_, in_progress_open=None))
        self.db_open = open_

    def prepare_delete(self) -> None:
        """D1-D2. db.py then deletes the row (D3)."""
        self._check_writable()
        files = [n for n in self.fs.list_names() if parse_name(n) is not None]  # D1
        if files:
            raise DirError(f"can't delete sample file dir {self.path}: it still holds "
                           f"{len(files)} sample file(s) ({_some(files)}); delete its "
                           f"streams' recordings first")
        m = self.meta
        self._rewrite_meta(dataclasses.replace(  # D2: the one allowed backtrack
            m, last_complete_open=None,
            in_progress_open=m.last_complete_open or m.in_progress_open))

    def close(self) -> None:
        self.fs.close()  # releases the flock

    def __enter__(self) -> "SampleFileDir":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _some(names: list[str], n: int = 5) -> str:
    return ", ".join(names[:n]) + (f", and {len(names) - n} more" if len(names) > n else "")


def _uuid(b: bytes) -> str:
    return str(uuidlib.UUID(bytes=b)) if len(b) == 16 else b.hex() or "(none)"


# -- start-up recovery ----------------------------------------------------------

@dataclasses.dataclass
class RecoveryResult:
    garbage_gone: list[int]  # garbage ids whose files are now durably gone (R5 deletes the rows)
    abandoned: list[int]     # composite ids of abandoned files unlinked (R3)
    unexpected: list[str]    # names neither meta nor a sample file of a known stream
    # Ids >= cum_recordings whose files were kept because they have a recording row.
    kept: list[int] = dataclasses.field(default_factory=list)


def recover(d: SampleFileDir, garbage: Iterable[int], cum_recordings: dict[int, int], *,
            retry: Retry, rows: Iterable[int] = ()) -> RecoveryResult:
    """R1-R4 (module docstring): `garbage` is the dir's garbage ids; `cum_recordings`
    maps each stream in this dir to its cum_recordings; `rows` holds the composite
    ids >= cum_recordings that have a recording row anyway, whose files R3 keeps."""
    garbage = sorted(set(garbage))
    abandoned, unexpected, kept = classify(d.fs.list_names(), garbage, cum_recordings,
                                           rows)  # R1
    for cid in garbage:
        _unlink(d, name_for(cid), retry)  # R2
    for cid in abandoned:
        _unlink(d, name_for(cid), retry)  # R3
    # R4: the unlinks must be durable before db.py deletes the garbage rows (R5).
    retry(f"fsync dir {d.path}", d.fs.sync)
    logger.debug("%s: recovery unlinked garbage %s, abandoned %s", d.path, garbage, abandoned)
    return RecoveryResult(garbage, abandoned, unexpected, kept)


def recover_garbage(d: SampleFileDir, garbage: Iterable[int], *,
                    retry: Retry) -> RecoveryResult:
    """R2 and R4 without R1 and R3: start-up recovery that doesn't list the dir, so
    its time doesn't grow with the recordings kept (`run`, db.py
    `open_sample_file_dirs(list_later=True)`). R3 then happens late ("Start-up
    recovery" in the module docstring): `classify` on a listing taken while the
    streams record, and S1's `replace_abandoned` for an id reached before that."""
    garbage = sorted(set(garbage))
    for cid in garbage:
        _unlink(d, name_for(cid), retry)  # R2
    retry(f"fsync dir {d.path}", d.fs.sync)  # R4
    return RecoveryResult(garbage, [], [])


def classify(names: Iterable[str], garbage: Iterable[int], cum_recordings: dict[int, int],
             rows: Iterable[int] = ()) -> tuple[list[int], list[str], list[int]]:
    """R1's verdict on a listing: (abandoned ids, unexpected names, kept ids), sorted.
    Arguments as `recover`'s."""
    garbage_set, rows = set(garbage), set(rows)
    abandoned, unexpected, kept = [], [], []
    for name in names:
        cid = parse_name(name)
        if name == META_NAME or cid in garbage_set:
            continue
        if cid is None or cid >> 32 not in cum_recordings:
            unexpected.append(name)
        elif cid & 0xFFFFFFFF >= cum_recordings[cid >> 32]:
            # A file with a row was committed, whatever cum_recordings says: keep it.
            (kept if cid in rows else abandoned).append(cid)
    return sorted(abandoned), sorted(unexpected), sorted(kept)


def replace_abandoned(d: SampleFileDir | Fs, name: str) -> File:
    """S1 for an id that a previous process also used and whose file late recovery
    hasn't removed yet: the existing file is abandoned (the caller checked that no
    recording row names it), so unlink it and create the file afresh. A crash between
    the two leaves the name absent or abandoned either way, and S3 makes the new
    name durable before S4 lets a row claim it."""
    fs = d.fs if isinstance(d, SampleFileDir) else d
    fs.unlink(name)
    return fs.create_file(name)


def collect(d: SampleFileDir, composite_ids: Iterable[int], retry: Callable) -> None:
    """Garbage collection steps G2-G3: unlink each file, then fsync the dir
    once, so the unlinks are durable before the rows naming them go (G4)."""
    for cid in composite_ids:
        _unlink(d, name_for(cid), retry)  # G2
    retry(f"fsync dir {d.path}", d.fs.sync)  # G3


def _unlink(d: SampleFileDir, name: str, retry: Retry) -> None:
    def unlink():
        try:
            d.fs.unlink(name)
        except FileNotFoundError:
            pass  # may or may not still exist: an earlier try may have unlinked it
    retry(f"unlink {d.path}/{name}", unlink)


# ---------------------------------------------------------------------------
# The syncer: one thread per dir (`sync-<path>`) while nvr records.

FLUSH_RETRY_SEC = 60  # after a failed flush (reference §3.7)
# The longest single wait for a command (`Syncer.iter`); a later plan is waited for
# in several. A stream's flushIfSec edited by hand (or carried over from Moonfire)
# can be any size, and a timeout over threading.TIMEOUT_MAX (~292 years) makes the
# wait raise OverflowError, which would end the thread.
MAX_WAIT_SEC = 86400
COMMAND_RETRY_SEC = 1  # after a command failed other than in an I/O step (`Syncer._handle`)
# How often `run`'s syncers check retention while idle (`Syncer(check_every_sec=)`): the
# age limits of streams that stopped recording, and the free-space floor of a disk that
# something else fills, or where a writer waits for space (its 1 s retries, writer.py).
RETENTION_CHECK_SEC = 10


@dataclasses.dataclass(order=True)
class _PlannedFlush:
    when_ns: int                                   # monotonic
    # The recording it commits; None: retention's deletions (satisfied once none are queued).
    composite_id: int | None = dataclasses.field(compare=False)
    reason: str = dataclasses.field(compare=False)


@dataclasses.dataclass
class _Save:
    """A save command and how far it got. A retry after an error resumes at
    `step`, because the steps before it can't simply run again: S2 closes the
    file, and S4 (`mark_synced`) adds the file's size to the stream's usage,
    and raises once a flush has committed the recording. What follows S4
    (retention, the flush plan) may run again: retention counts what it
    already queued."""
    composite_id: int
    wall_duration_90k: int
    f: File
    step: int = 2  # the next step to run: 2 (S2), 3 (S3), 4 (S4 or S2F), 5 (retention, plan)
    fsync_error: OSError | None = None  # S2 failed: step 4 is S2F


class Syncer:
    """Makes finished recordings durable, plans flushes, deletes old ones.

    Commands arrive on a queue from the writers (`save`) and the database
    (`flushed`, after every flush):
    - save: fsync the file (S2) and the dir (S3), mark the recording synced
      (S4), let retention queue this stream's oldest recordings for deletion
      (they become garbage in the next flush), and plan a flush
      `flushIfSec` after the recording's start: now + max(0, flushIfSec -
      its wall duration). Any flush satisfies every plan. If the file's
      fsync fails, the recording is abandoned instead (S2F): the planned
      flush moves its file to garbage.
    - flushed: collect garbage: unlink (G2), fsync the dir (G3), tell the
      database the files are gone (G4 happens in the next flush).
    After each save, and every `check_every_sec` while idle (`run` passes
    RETENTION_CHECK_SEC; None, as in tests of the flush plan, checks only after
    saves), the free-space floor of the dir (retention.py): if statvfs says the
    filesystem is short of it, the oldest recordings of the dir's streams are
    queued and a flush planned at once. The idle check also applies each stream's
    limits (a stream that stopped recording still ages out) and plans a flush if
    that queued anything.
    Every other I/O step is retried at 1 s forever (a full disk stalls, then
    resumes), except once shutdown is set: then it gives up on that item,
    which start-up recovery handles. Any other error in a command (a SQLite
    error on the database's disk in retention's query, or a bug) is logged and
    the command retried at 1 s from the step that failed, the same way: the
    thread never ends but on `stop` (`_handle`). `db` is a db.Database (not
    imported: db.py imports this module).
    """

    def __init__(self, db, dir_id: int, *, shutdown: threading.Event | None = None,
                 check_every_sec: float | None = None):
        self.db = db
        self.dir_id = dir_id
        self.shutdown = shutdown or threading.Event()
        self.check_every_ns = (None if check_every_sec is None
                               else int(check_every_sec * clock.NANOS_PER_SEC))
        self.next_check_ns = (None if check_every_sec is None
                              else db.clocks.monotonic() + self.check_every_ns)
        self.floor_short = False  # the last floor pass couldn't reach the floor (warned)
        d = db.dirs[dir_id]
        self.dir: SampleFileDir = d.dir
        self.path = d.path
        self.queue: queue.Queue = queue.Queue()
        self.planned: list[_PlannedFlush] = []
        self.thread: threading.Thread | None = None
        # Failures retried here, logged per logrepeat.py (a full database disk: its error
        # once, then counts): keyed by the command ("save of #") or "flush".
        self.repeats = logrepeat.RepeatLog(
            db.clocks, logger, expected=(OSError, sqlite3.OperationalError))

    # -- called from other threads ---------------------------------------------

    def save(self, composite_id: int, wall_duration_90k: int, f: File) -> None:
        self.queue.put(("save", _Save(composite_id, wall_duration_90k, f)))

    def flushed(self) -> None:
        self.queue.put(("flushed",))

    def drain(self, timeout_sec: float) -> bool:
        """Waits until the commands queued before this call are handled (a stopped
        stream's last save: recorder.py), up to `timeout_sec`; whether they were. True
        at once if the thread isn't running."""
        if self.thread is None or not self.thread.is_alive():
            return True
        done = threading.Event()
        self.queue.put(("drain", done))
        # A real wait, not the Clocks': what is awaited is this thread's progress, which
        # simulated time doesn't make (the timeout is a safety net for a stuck disk).
        return done.wait(timeout_sec)

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
        now = self.db.clocks.monotonic()
        for when_ns in ([self.planned[0].when_ns] if self.planned else []) + (
                [self.next_check_ns] if self.next_check_ns is not None else []):
            t = min(max(0, when_ns - now) / clock.NANOS_PER_SEC, MAX_WAIT_SEC)
            timeout = t if timeout is None else min(timeout, t)
        try:
            cmd = self.db.clocks.recv_timeout(self.queue, timeout)
        except queue.Empty:
            self._check_if_due()
            self._flush_if_due()
            return True
        if cmd[0] == "stop":
            return False
        if cmd[0] == "drain":
            cmd[1].set()
            return True
        self._handle(cmd)
        return True

    def _handle(self, cmd: tuple) -> None:
        """Runs a save or flushed command until it succeeds or shutdown gives up on it.

        I/O steps retry themselves (`_retry`). Anything else that fails, say
        `sqlite3.OperationalError` from retention's query when the database's
        disk has an I/O error, is logged and the command is retried after 1 s: a
        transient error recovers by itself, a persistent one keeps warning, at a
        falling rate (logrepeat.py; a bug's traceback is logged the first time).
        Letting it end the thread instead would leave every later recording of
        this dir unsynced and uncommitted (and retention stopped) until start-up
        recovery deleted them as abandoned. A save resumes at the step that
        failed (`_Save`); collecting garbage may run again whole (unlinks
        tolerate ENOENT, G4 reads what is still needed). Once shutdown is set, the command is given up, as `_retry`
        gives up on I/O: start-up recovery finishes it.
        """
        save = cmd[1] if cmd[0] == "save" else None
        what = f"save of {name_for(save.composite_id)}" if save else "garbage collection"
        key = logrepeat.without_numbers(what)  # the next save failing likewise counts on
        while True:
            try:
                if save:
                    self._save(save)
                else:
                    self.collect_garbage()
                self.repeats.cleared(key, f"{self.path}: {what} succeeded")
                return
            except clock.ShutdownError as e:
                logger.warning("%s: %s (start-up recovery will finish it)", self.path, e)
                break
            except Exception as e:  # logged (a bug with its traceback, once), then retried
                self.repeats.failed(key, e, f"{self.path}: {what} failed",
                                    f"retrying every {COMMAND_RETRY_SEC} s")
            if self.db.clocks.wait(self.shutdown, COMMAND_RETRY_SEC):
                logger.warning("%s: gave up on %s on shutdown (start-up recovery will finish "
                               "it)", self.path, what)
                break
        if save:
            save.f.close()  # given up (a no-op if S2 closed it)

    def _retry(self, what: str, fn):
        return clock.retry(self.db.clocks, self.shutdown, what, fn)

    def _save(self, save: _Save) -> None:
        """S2-S4, then retention and the flush plan, from `save.step` on."""
        composite_id = save.composite_id
        name = f"{self.path}/{name_for(composite_id)}"
        if save.step == 2:
            began = self.db.clocks.monotonic()
            try:
                save.f.sync()  # S2: the frames are durable
                self.db.metrics.fsync.observe(
                    (self.db.clocks.monotonic() - began) / clock.NANOS_PER_SEC, self.path)
            except OSError as e:
                # S2F: never retried (module docstring): a retry can succeed with
                # the frames the failure dropped missing from the disk.
                save.fsync_error = e
                save.step = 4
            else:
                save.step = 3
            save.f.close()
        if save.step == 3:
            self._retry(f"fsync dir {self.path}", self.dir.fs.sync)  # S3: its name is durable
            save.step = 4
        if save.step == 4:
            if save.fsync_error is None:
                self.db.mark_synced(composite_id)  # S4
            else:
                self.db.abandon_to_garbage(composite_id)  # S2F
                e = save.fsync_error
                logger.error("%s: sample file fsync failed: %s (%s); recording abandoned, its "
                             "file goes to garbage; check the disk (dmesg)", name,
                             errno.errorcode.get(e.errno, e.errno), e.strerror or e)
            save.step = 5
        stream_id = composite_id >> 32
        self._log_plan(stream_id, self.db.delete_oldest_recordings(stream_id))
        self.enforce_floor()
        s = self.db.streams[stream_id]
        how_soon_ns = max(0, s.flush_if_sec * clock.NANOS_PER_SEC
                          - save.wall_duration_90k * clock.NANOS_PER_SEC // 90_000)
        cam = self.db.cameras[s.camera_id].short_name
        heapq.heappush(self.planned, _PlannedFlush(
            self.db.clocks.monotonic() + how_soon_ns, composite_id,
            f"{s.flush_if_sec} s after the start of {cam}-{s.type} recording "
            f"{composite_id & 0xFFFFFFFF}"))

    def _log_plan(self, stream_id: int, plan) -> None:
        if plan:
            why = [f"{n} {what}" for n, what in (
                (getattr(plan, "by_bytes", 0), "over retainBytes"),
                (getattr(plan, "by_age", 0), "older than retainDays"),
                (getattr(plan, "kept_protected", 0), "protected passed over")) if n]
            logger.info("%s: retention will delete %d recording(s) of stream %d (%s)",
                        self.path, len(plan), stream_id, ", ".join(why))

    def enforce_floor(self) -> bool:
        """The free-space floor pass (retention.py): statvfs through the Fs seam, then
        queue what the floor needs, log it in one line, and plan a flush at once.
        Returns whether anything was queued."""
        free, total = self._retry(f"statvfs {self.path}", self.dir.fs.free_space)
        p = self.db.enforce_free_space_floor(self.dir_id, free, total)
        short = p.free_bytes + p.pending_bytes + p.freed_bytes < p.floor_bytes
        if p.rows:
            per_stream: dict[int, list[int]] = {}
            for sid, row in p.rows:
                per_stream.setdefault(sid, []).append(row.recording_id)
            logger.info(
                "%s: free space %d B is below the floor of %d B (%s; %d B already on its way): "
                "deleting the %d oldest recording(s) of the dir (%d B: %s)%s", self.path,
                p.free_bytes, p.floor_bytes, self._floor_setting(), p.pending_bytes,
                len(p.rows), p.freed_bytes,
                "; ".join(f"stream {sid} {ids[0]}" + (f"-{ids[-1]}" if len(ids) > 1 else "")
                          for sid, ids in per_stream.items()),
                f"; {p.kept_protected} protected passed over"
                if getattr(p, "kept_protected", 0) else "")
            self._plan_retention_flush("free space below the floor")
        if short and not self.floor_short:
            if getattr(p, "protected_bytes", 0):
                # Issue #17: a full disk resolves by itself unless what is left is protected.
                logger.warning("%s: free space stays below the floor of %d B (%s): every "
                               "recording of the dir left is protected (%d B); they are "
                               "kept, and recording stalls when the disk is full. Shorten or "
                               "remove protections (`nvr.py protect list`), or free space",
                               self.path, p.floor_bytes, self._floor_setting(),
                               p.protected_bytes)
            else:
                logger.warning("%s: free space stays below the floor of %d B (%s) with every "
                               "recording of the dir deleted or on its way; something else "
                               "fills the disk, or the floor is too high (`nvr.py config dir "
                               "edit --free-space-floor`)", self.path, p.floor_bytes,
                               self._floor_setting())
        elif not short and self.floor_short:
            logger.info("%s: free space is back above the floor", self.path)
        self.floor_short = short
        return bool(p.rows)

    def _floor_setting(self) -> str:
        return retention.describe_floor(self.db.dirs[self.dir_id].config)

    def _plan_retention_flush(self, why: str) -> None:
        heapq.heappush(self.planned, _PlannedFlush(self.db.clocks.monotonic(), None,
                                                   f"retention: {why}"))

    def _check_if_due(self) -> None:
        """The idle check (`check_every_sec`): each stream's limits, then the floor."""
        now = self.db.clocks.monotonic()
        if self.next_check_ns is None or self.next_check_ns > now:
            return
        self.next_check_ns = now + self.check_every_ns
        try:
            queued = False
            for s in list(self.db.streams.values()):
                if s.sample_file_dir_id == self.dir_id:
                    plan = self.db.delete_oldest_recordings(s.id)
                    self._log_plan(s.id, plan)
                    queued |= bool(plan)
            if queued:
                self._plan_retention_flush("limits")
            self.enforce_floor()
        except clock.ShutdownError:
            return
        except Exception as e:  # logged (a bug with its traceback, once); tried next time
            self.repeats.failed("retention check", e, f"{self.path}: retention check failed",
                                f"trying again in {self.check_every_ns / clock.NANOS_PER_SEC:g} s")
            return
        self.repeats.cleared("retention check", f"{self.path}: retention check succeeded")

    def _flush_if_due(self) -> None:
        # Drop plans another flush (any dir's) already satisfied.
        while self.planned:
            p = self.planned[0]
            if p.composite_id is None:
                if any(s.to_delete for s in self.db.streams.values()
                       if s.sample_file_dir_id == self.dir_id):
                    break
            else:
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
            self.repeats.failed("flush", e, f"{self.path}: flush ({p.reason}) failed",
                                f"retrying every {FLUSH_RETRY_SEC} s")
            heapq.heapreplace(self.planned, dataclasses.replace(
                p, when_ns=now + FLUSH_RETRY_SEC * clock.NANOS_PER_SEC))
            return
        self.repeats.cleared("flush", f"{self.path}: flush ({p.reason}) succeeded")
        self.planned.clear()

    def collect_garbage(self) -> int:
        """G2-G3 for this dir's garbage; returns how many files were collected."""
        with self.db.locked():
            ids = sorted(self.db.dirs[self.dir_id].garbage_needs_unlink)
        if not ids:
            return 0
        collect(self.dir, ids, self._retry)
        self.db.delete_garbage(self.dir_id, ids)
        self.db.metrics.deleted.inc(len(ids), self.path)
        return len(ids)

    def initial_rotation(self) -> None:
        """At start-up, before recording: enforce every stream's limits now
        (they may have been lowered, or time passed while nvr was stopped) and the
        dir's free-space floor, flush, collect, flush."""
        for s in list(self.db.streams.values()):
            if s.sample_file_dir_id == self.dir_id:
                self._log_plan(s.id, self.db.delete_oldest_recordings(s.id))
        self.enforce_floor()
        self.planned = [p for p in self.planned if p.composite_id is not None]  # flushing now
        self.db.flush("initial rotation")
        if self.collect_garbage():
            self.db.flush("initial garbage collection")
