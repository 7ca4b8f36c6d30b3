"""The file I/O seam of the upgrade steps that touch sample file dirs.

Steps 1->2, 2->3 and 4->5 list, read, write, rename and unlink files in
sample file dirs. They do it only through a `Files` object, which has two
implementations:

- `RealFiles` does the I/O. `open_dir` takes an exclusive non-blocking
  `flock` on the directory (as nvr and Moonfire do while using it), so an
  upgrade never runs under a live recorder. Writes are the temp file +
  fsync + rename method; callers fsync the directory afterwards (`sync`).
- `DryRunFiles` (for `--dry-run`) reads the real directories but keeps every
  change in an in-memory overlay, so later steps of the same dry run see the
  files earlier ones would have written or renamed, and records each change
  as a line for the report. Nothing on disk changes.

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


def _open_locked(path: str, lock: int) -> int:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UpgradeError(f"sample file dir {path} does not exist; mount the disk that holds "
                           f"it (or pass the right --sample-file-dir) and rerun") from None
    except NotADirectoryError:
        raise UpgradeError(f"sample file dir {path} is not a directory") from None
    try:
        fcntl.flock(fd, lock | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UpgradeError(f"sample file dir {path} is locked by another process; stop nvr "
                           f"(or moonfire-nvr) and rerun the upgrade") from None
    return fd


class RealFiles(Files):
    def open_dir(self, path: str) -> "RealDir":
        return RealDir(path, _open_locked(path, fcntl.LOCK_EX))


class RealDir(Dir):
    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self.fd = fd

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
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600,
                     dir_fd=self.fd)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            # fsync before the rename: otherwise a crash could leave `name`
            # pointing at an empty or partial file.
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        logger.debug("wrote %s (%d bytes)", os.path.join(self.path, name), len(data))

    def rename(self, old: str, new: str) -> bool:
        try:
            os.rename(old, new, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except FileNotFoundError:
            return False
        logger.debug("renamed %s to %s", os.path.join(self.path, old), new)
        return True

    def unlink(self, name: str) -> bool:
        try:
            os.unlink(name, dir_fd=self.fd)
        except FileNotFoundError:
            return False
        logger.debug("unlinked %s", os.path.join(self.path, name))
        return True

    def sync(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # also releases the flock
            self.fd = -1


class DryRunFiles(Files):
    def __init__(self) -> None:
        super().__init__()
        # Per real path: current virtual name -> ("disk", real name) | bytes.
        self._overlays: dict[str, dict[str, object]] = {}

    def open_dir(self, path: str) -> "DryRunDir":
        # A shared lock: refuse, as the real run would, if a recorder is running.
        fd = _open_locked(path, fcntl.LOCK_SH)
        key = os.path.realpath(path)
        if key not in self._overlays:
            self._overlays[key] = {n: ("disk", n) for n in os.listdir(fd)}
        return DryRunDir(path, fd, self._overlays[key], self.actions)


class DryRunDir(Dir):
    def __init__(self, path: str, fd: int, names: dict[str, object], actions: list[str]) -> None:
        self.path = path
        self.fd = fd
        self._names = names
        self._actions = actions

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
        self._names[name] = bytes(data)
        self._actions.append(f"would write {os.path.join(self.path, name)} ({len(data)} bytes)")

    def rename(self, old: str, new: str) -> bool:
        if old not in self._names:
            return False
        self._names[new] = self._names.pop(old)
        self._actions.append(f"would rename {os.path.join(self.path, old)} to {new}")
        return True

    def unlink(self, name: str) -> bool:
        if self._names.pop(name, None) is None:
            return False
        self._actions.append(f"would unlink {os.path.join(self.path, name)}")
        return True

    def sync(self) -> None:
        pass

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
