"""Stand-ins for dir.py's I/O seam (`Fs`, `File`) and for `clock.retry`.

`FakeFs` / `FakeFile` hold one expected-call queue, like Moonfire's
MockDir/MockFile. The test scripts which calls come, in which order, with which
arguments, and what each returns or raises; a call that doesn't match the next
expectation fails with an AssertionError naming both, and `assert_done()` fails
if expectations remain. A file shares its dir's queue, so the order across the
file and the dir (write, fsync file, fsync dir) is asserted too:

    fs = FakeFs("/fake")
    f = FakeFile(fs, "0000000100000001")
    fs.expect("create_file", "0000000100000001", result=f)
    f.expect("write", result=100)          # a short write: 100 bytes taken
    f.expect("write", error=OSError(errno.ENOSPC, "No space left on device"))
    f.expect("write")                      # takes the rest
    f.expect("sync")
    fs.expect("sync")
    ...                                    # the code under test
    fs.assert_done()
    assert bytes(f.contents) == data

`expect(method, *args)` checks the arguments only if some are given. `result`
is a value, or a callable given the call's arguments (it may raise). For
`write`/`pwrite` the result is how many bytes are taken (None: all), and the
fake keeps what it took in `contents`. `close()` is not scripted; it sets
`closed`. Nor is `free_space()`: it returns `space` (available, total bytes; an
empty 1 TiB disk unless a test sets it), for the free-space floor (retention.py). Pass `fs_factory=fs.factory` to `SampleFileDir.create`/`open`.

`FaultyFs` is the simpler kind, for tests that want real files: a real
`dir.Fs` whose calls number `nth` .. `nth + times - 1` of one method fail
(`fail` adds another method's). `FaultyFs.wrapping(fs, ...)` puts it around a
dir's open `Fs` (keeping its fd and flock): `sfd.fs = FaultyFs.wrapping(sfd.fs, ...)`.

`RecordingRetry` stands in for `clock.retry` without sleeping: it calls `fn`
until it stops raising OSError and records each failure.
"""

from __future__ import annotations

import collections
import errno
import os

import dir as dirmod


def _show(args) -> str:
    if args is None:
        return "(...)"
    return "(" + ", ".join(f"<{len(a)} bytes>" if isinstance(a, (bytes, bytearray, memoryview))
                           else repr(a) for a in args) + ")"


class _Queue:
    def __init__(self):
        self.items = collections.deque()  # (who, method, args or None, result, error)

    def call(self, who: str, method: str, args: tuple):
        actual = f"{who}.{method}{_show(args)}"
        if not self.items:
            raise AssertionError(f"unexpected call {actual}: no more calls expected")
        e_who, e_method, e_args, result, error = self.items.popleft()
        if (e_who, e_method) != (who, method) or (e_args is not None and e_args != args):
            raise AssertionError(f"expected {e_who}.{e_method}{_show(e_args)}, got {actual}")
        if error is not None:
            raise error
        return result(*args) if callable(result) else result


class FakeFs:
    """Stands in for `dir.Fs`; `path` is only used in messages."""

    def __init__(self, path: str = "/fake"):
        self.path = path
        self.queue = _Queue()
        self.closed = False
        self.space = (1 << 40, 1 << 40)

    def expect(self, method: str, *args, result=None, error: BaseException | None = None):
        """The next call is `method(*args)` (with any arguments if none are given)."""
        self.queue.items.append(("fs", method, args or None, result, error))

    def assert_done(self) -> None:
        left = [f"{w}.{m}{_show(a)}" for w, m, a, _, _ in self.queue.items]
        assert not left, f"expected calls not made: {', '.join(left)}"

    def factory(self, path: str, *, mkdir: bool = False) -> "FakeFs":
        """An `fs_factory` that hands out this fake."""
        return self

    def _call(self, method: str, *args):
        return self.queue.call("fs", method, args)

    def create_file(self, name):
        return self._call("create_file", name)

    def open_file(self, name):
        return self._call("open_file", name)

    def read_file(self, name):
        return self._call("read_file", name)

    def sync(self):
        return self._call("sync")

    def unlink(self, name):
        return self._call("unlink", name)

    def list_names(self):
        return self._call("list_names")

    def stat_size(self, name):
        return self._call("stat_size", name)

    def lock(self, exclusive):
        return self._call("lock", exclusive)

    def close(self):
        self.closed = True

    def free_space(self):
        return self.space


class FakeFile:
    """Stands in for `dir.File`; its calls join its FakeFs's queue as `file[name]`."""

    def __init__(self, fs: FakeFs, name: str = "file"):
        self.queue = fs.queue
        self.name = name
        self.who = f"file[{name}]"
        self.contents = bytearray()
        self.closed = False

    @property
    def written(self) -> bytearray:  # the older name of `contents`
        return self.contents

    def expect(self, method: str, *args, result=None, error: BaseException | None = None):
        self.queue.items.append((self.who, method, args or None, result, error))

    def expect_write(self, n: int | None = None, error: BaseException | None = None):
        """Shorthand: a write that takes `n` bytes (None: all) or fails."""
        self.expect("write", result=n, error=error)

    def write(self, data):
        n = self.queue.call(self.who, "write", (data,))
        n = len(data) if n is None else min(n, len(data))
        self.contents += bytes(data[:n])
        return n

    def pwrite(self, data, offset):
        n = self.queue.call(self.who, "pwrite", (data, offset))
        n = len(data) if n is None else min(n, len(data))
        self.contents[offset:offset + n] = bytes(data[:n])
        return n

    def sync(self):
        return self.queue.call(self.who, "sync", ())

    def datasync(self):
        return self.queue.call(self.who, "datasync", ())

    def close(self):
        self.closed = True


class FaultyFs:
    """A real `dir.Fs` whose calls number nth .. nth+times-1 (counting from 1)
    of `method` raise OSError(err) instead of running. `method` is an Fs method
    ("unlink", "sync", "create_file", ...) or a File one prefixed "file."
    ("file.write", "file.sync", "file.datasync", "file.pwrite"), counted over
    every file this Fs opened. `calls` counts all calls by name.

        d = SampleFileDir.open(path, expected, fs_factory=FaultyFs.factory("file.datasync"))
    """

    def __init__(self, path: str, method: str, *, nth: int = 1, times: int = 1,
                 err: int = errno.EIO, mkdir: bool = False, real: dirmod.Fs | None = None):
        self.real = real if real is not None else dirmod.Fs(path, mkdir=mkdir)
        self.faults: dict[str, tuple[range, int]] = {}  # method: (failing call numbers, errno)
        self.fail(method, nth=nth, times=times, err=err)
        self.calls = collections.Counter()

    @classmethod
    def factory(cls, method: str, **kwargs):
        return lambda path, *, mkdir=False: cls(path, method, mkdir=mkdir, **kwargs)

    @classmethod
    def wrapping(cls, fs: dirmod.Fs, method: str, **kwargs) -> "FaultyFs":
        """Around an open `Fs`: closing this closes it (and releases its flock)."""
        return cls(fs.path, method, real=fs, **kwargs)

    def fail(self, method: str, *, nth: int = 1, times: int = 1, err: int = errno.EIO) -> None:
        """Also fail calls nth .. nth+times-1 of `method` (counted from the first call)."""
        self.faults[method] = (range(nth, nth + times), err)

    def _count(self, name: str) -> None:
        self.calls[name] += 1
        n = self.calls[name]
        calls, err = self.faults.get(name, ((), 0))
        if n in calls:
            raise OSError(err, f"{os.strerror(err)} (injected: {name} call {n})")

    def __getattr__(self, name):  # only called for what isn't set on self
        if name == "real":
            raise AttributeError(name)  # not set yet: don't recurse
        attr = getattr(self.real, name)
        if not callable(attr):
            return attr

        def call(*args):
            self._count(name)
            result = attr(*args)
            return _FaultyFile(self, result) if name in ("create_file", "open_file") else result
        return call


class _FaultyFile:
    def __init__(self, fs: FaultyFs, real):
        self.fs, self.real = fs, real

    def __getattr__(self, name):
        if name == "real":
            raise AttributeError(name)
        attr = getattr(self.real, name)
        if not callable(attr):
            return attr

        def call(*args):
            self.fs._count("file." + name)
            return attr(*args)
        return call


class RecordingRetry:
    """A `retry(description, fn)` like clock.retry minus the sleeping: calls
    `fn` until it stops raising OSError (at most `limit` tries). `failures`
    lists (description, errno) for each failed try."""

    def __init__(self, limit: int = 10):
        self.limit = limit
        self.failures: list[tuple[str, int]] = []

    def __call__(self, description: str, fn):
        for _ in range(self.limit):
            try:
                return fn()
            except OSError as e:
                self.failures.append((description, e.errno))
        raise AssertionError(f"{description}: still failing after {self.limit} tries")
