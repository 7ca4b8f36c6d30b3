"""The file I/O seam of the upgrade steps that touch sample file dirs.

Steps 1->2, 2->3 and 4->5 list, read, write, rename and unlink files in
sample file dirs. They do it only through a `Files` object, which has two
implementations:

- `RealFiles` does the I/O. `open_dir` takes an exclusive non-blocking
  `flock` on the directory (as nvr and Moonfire do while using it), so an
  upgrade never runs under a live recorder. Writes are the temp file +
  fsync + rename method; callers fsync the directory afterwards (`sync`),
  before their step commits.
- `DryRunFiles` (for `--dry-run`, and the preflight of a real run) reads the
  real directories but keeps every change in an in-memory overlay, so later
  steps of the same run see the files earlier ones would have written or
  renamed, and records each change as a line for the report. Nothing on disk
  changes. With `preflight=True` it also refuses what the real run would
  fail on: a dir another process holds any lock on (it takes the exclusive
  lock the real run takes), and a change in a dir the process can't write.

Every change `RealFiles` makes, and the upgrade's backup (upgrade/__init__),
goes through one narrow seam, `Calls`: open, write, fsync, close, rename,
unlink. Tests substitute a `Calls` that records them, to check that each
rename follows the fsync of the renamed file's bytes and is followed by its
directory's fsync before the database commits, or that makes one fail (EIO).
Reads (listdir, read, stat) don't go through it.

A step finds its implementation with `files_for(args)`: the driver puts one
on `args.files`; a step run directly (tests) gets `RealFiles`.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os

from upgrade.common import UpgradeError

logger = logging.getLogger(__name__)


class Calls:
    """The system calls by which the upgrade changes files (the seam above)."""

    def open(self, path: str, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        return os.open(path, flags, mode, dir_fd=dir_fd)

    def write(self, fd: int, data) -> int:
        return os.write(fd, data)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def close(self, fd: int) -> None:
        os.close(fd)

    def rename(self, src: str, dst: str, *, dir_fd: int | None = None) -> None:
        """Renames src over dst (both relative to dir_fd if given)."""
        os.rename(src, dst, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)

    def unlink(self, name: str, *, dir_fd: int | None = None) -> None:
        os.unlink(name, dir_fd=dir_fd)


def fsync_path(calls: Calls, path: str) -> None:
    """Opens `path` (a file or a directory) read-only and fsyncs it."""
    fd = calls.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        calls.fsync(fd)
    finally:
        calls.close(fd)


def files_for(args) -> "Files":
    f = getattr(args, "files", None)
    return f if f is not None else RealFiles()


class Files:
    def __init__(self) -> None:
        # Dry run only: one human-readable line per change it would make.
        self.actions: list[str] = []

    def open_dir(self, path: str) -> "Dir":
        raise NotImplementedError


class Dir:
    path: str

    def listdir(self) -> list[str]:
        raise NotImplementedError

    def read(self, name: str) -> bytes | None:
        """The file's contents, or None if it doesn't exist."""
        raise NotImplementedError

    def exists(self, name: str) -> bool:
        raise NotImplementedError

    def write_atomic(self, name: str, data: bytes) -> None:
        """Writes `name` by writing `name`.tmp, fsyncing it and renaming."""
        raise NotImplementedError

    def rename(self, old: str, new: str) -> bool:
        """Renames; returns False (and does nothing) if `old` doesn't exist."""
        raise NotImplementedError

    def unlink(self, name: str) -> bool:
        """Unlinks; returns False if it didn't exist."""
        raise NotImplementedError

    def sync(self) -> None:
        """fsyncs the directory, making renames/unlinks/creations durable."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _open_locked(path: str, lock: int, calls: Calls | None = None) -> int:
    calls = calls or Calls()
    try:
        fd = calls.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UpgradeError(f"sample file dir {path} does not exist; mount the disk that holds "
                           f"it (or pass the right --sample-file-dir) and rerun") from None
    except NotADirectoryError:
        raise UpgradeError(f"sample file dir {path} is not a directory") from None
    except PermissionError:
        raise UpgradeError(f"can't open sample file dir {path}: permission denied; run the "
                           f"upgrade as the user that owns it") from None
    try:
        fcntl.flock(fd, lock | fcntl.LOCK_NB)
    except BlockingIOError:
        calls.close(fd)
        raise UpgradeError(f"sample file dir {path} is locked by another process; stop nvr "
                           f"(or moonfire-nvr) and rerun the upgrade") from None
    return fd


def why_not_writable(path: str, mode: int = os.W_OK, *, there: str = "") -> str | None:
    """None if this process may write `path` (`mode` for os.access), else why not: a
    read-only mount, or the user's permissions (`there` is added to that phrase)."""
    if os.access(path, mode):
        return None
    try:
        read_only_fs = bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        read_only_fs = False
    return "its filesystem is mounted read-only" if read_only_fs else (
        f"user {os.geteuid()} has no write permission{there}")


def check_writable(path: str) -> None:
    """Refuses a dir this process can't create, rename and unlink files in."""
    why = why_not_writable(path, os.W_OK | os.X_OK, there=" there")
    if why is None:
        return
    raise UpgradeError(f"sample file dir {path} is not writable ({why}); the upgrade writes "
                       f"its meta file and renames or deletes sample files there. Remount it "
                       f"read-write or run as the user that owns it (e.g. sudo -u "
                       f"moonfire-nvr), then rerun")


class RealFiles(Files):
    def __init__(self, calls: Calls | None = None) -> None:
        super().__init__()
        self.calls = calls or Calls()

    def open_dir(self, path: str) -> "RealDir":
        return RealDir(path, _open_locked(path, fcntl.LOCK_EX, self.calls), self.calls)


class RealDir(Dir):
    def __init__(self, path: str, fd: int, calls: Calls) -> None:
        self.path = path
        self.fd = fd
        self.calls = calls

    def listdir(self) -> list[str]:
        return os.listdir(self.fd)

    def read(self, name: str) -> bytes | None:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=self.fd)
        except FileNotFoundError:
            return None
        with os.fdopen(fd, "rb") as f:
            return f.read()

    def exists(self, name: str) -> bool:
        try:
            os.stat(name, dir_fd=self.fd, follow_symlinks=False)
            return True
        except FileNotFoundError:
            return False

    def write_atomic(self, name: str, data: bytes) -> None:
        tmp = name + ".tmp"
        c = self.calls
        fd = c.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600,
                    dir_fd=self.fd)
        try:
            view = memoryview(data)
            while view:
                view = view[c.write(fd, view):]
            # fsync before the rename: otherwise a crash could leave `name`
            # pointing at an empty or partial file.
            c.fsync(fd)
        finally:
            c.close(fd)
        c.rename(tmp, name, dir_fd=self.fd)
        logger.debug("wrote %s (%d bytes)", os.path.join(self.path, name), len(data))

    def rename(self, old: str, new: str) -> bool:
        try:
            self.calls.rename(old, new, dir_fd=self.fd)
        except FileNotFoundError:
            return False
        logger.debug("renamed %s to %s", os.path.join(self.path, old), new)
        return True

    def unlink(self, name: str) -> bool:
        try:
            self.calls.unlink(name, dir_fd=self.fd)
        except FileNotFoundError:
            return False
        logger.debug("unlinked %s", os.path.join(self.path, name))
        return True

    def sync(self) -> None:
        self.calls.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            self.calls.close(self.fd)  # also releases the flock
            self.fd = -1


class DryRunFiles(Files):
    def __init__(self, preflight: bool = False) -> None:
        super().__init__()
        self.preflight = preflight
        # Per real path: current virtual name -> ("disk", real name) | bytes.
        self._overlays: dict[str, dict[str, object]] = {}

    def open_dir(self, path: str) -> "DryRunDir":
        # Refuse, as the real run would, if a recorder is running: a shared
        # lock for --dry-run (which may run beside another dry run), the real
        # run's exclusive one for its preflight.
        fd = _open_locked(path, fcntl.LOCK_EX if self.preflight else fcntl.LOCK_SH)
        key = os.path.realpath(path)
        if key not in self._overlays:
            self._overlays[key] = {n: ("disk", n) for n in os.listdir(fd)}
        return DryRunDir(path, fd, self._overlays[key], self.actions, self.preflight)


class DryRunDir(Dir):
    def __init__(self, path: str, fd: int, names: dict[str, object], actions: list[str],
                 preflight: bool = False) -> None:
        self.path = path
        self.fd = fd
        self._names = names
        self._actions = actions
        self._check_writes = preflight

    def _change(self, action: str) -> None:
        if self._check_writes:
            check_writable(self.path)
            self._check_writes = False  # once per dir is enough
        self._actions.append(action)

    def listdir(self) -> list[str]:
        return list(self._names)

    def read(self, name: str) -> bytes | None:
        v = self._names.get(name)
        if v is None:
            return None
        if isinstance(v, bytes):
            return v
        try:
            fd = os.open(v[1], os.O_RDONLY | os.O_CLOEXEC, dir_fd=self.fd)
        except OSError as e:
            if e.errno == errno.ENOENT:
                return None
            raise
        with os.fdopen(fd, "rb") as f:
            return f.read()

    def exists(self, name: str) -> bool:
        return name in self._names

    def write_atomic(self, name: str, data: bytes) -> None:
        self._change(f"would write {os.path.join(self.path, name)} ({len(data)} bytes)")
        self._names[name] = bytes(data)

    def rename(self, old: str, new: str) -> bool:
        if old not in self._names:
            return False
        self._change(f"would rename {os.path.join(self.path, old)} to {new}")
        self._names[new] = self._names.pop(old)
        return True

    def unlink(self, name: str) -> bool:
        if name not in self._names:
            return False
        self._change(f"would unlink {os.path.join(self.path, name)}")
        del self._names[name]
        return True

    def sync(self) -> None:
        pass

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
