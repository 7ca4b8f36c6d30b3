"""Fakes of dir.py's I/O seam for tests that script failures.

`FakeFs`/`FakeFile` hold an expected-call queue, like Moonfire's
MockDir/MockFile: the test says which calls come, in which order, and what
each returns or raises; a call that doesn't match the next expectation fails
the test naming both, and `assert_done()` fails if expectations remain.

    fs = FakeFs()
    f = FakeFile(fs)                              # shares fs's queue
    fs.expect("create_file", "0000000100000000", result=f)
    f.expect("write", result=lambda data: len(data))
    f.expect("sync", error=OSError(errno.EIO, "I/O error"))
    f.expect("sync")
    fs.expect("sync")

`result` may be a value or a callable given the call's arguments. A file's
expectations go in the same queue as its dir's, so the order of operations
across files and the dir is asserted too.
"""

from __future__ import annotations

import collections


class _Queue:
    def __init__(self):
        self.items = collections.deque()

    def call(self, who: str, method: str, args: tuple):
        if not self.items:
            raise AssertionError(f"unexpected call {who}.{method}{args!r}: no more expected")
        e_who, e_method, e_args, result, error = self.items.popleft()
        if (e_who, e_method) != (who, method) or (e_args is not None and e_args != args):
            raise AssertionError(f"expected {e_who}.{e_method}{e_args!r}, "
                                 f"got {who}.{method}{args!r}")
        if error is not None:
            raise error
        return result(*args) if callable(result) else result


class FakeFs:
    """Stands in for dir.Fs. `path` is only used in messages."""

    def __init__(self, path: str = "/fake"):
        self.path = path
        self.queue = _Queue()
        self.fd = 0

    def expect(self, method: str, *args, result=None, error: BaseException | None = None):
        """Expects `method(*args)` next (any arguments if none given)."""
        self.queue.items.append(("fs", method, args or None, result, error))

    def assert_done(self):
        left = [f"{w}.{m}{a!r}" for w, m, a, _, _ in self.queue.items]
        assert not left, f"expected calls not made: {', '.join(left)}"

    def _call(self, method, *args):
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
        pass  # closing is never a failure point worth scripting


class FakeFile:
    """Stands in for dir.File; its calls join its FakeFs's queue as `file`."""

    def __init__(self, fs: FakeFs):
        self.queue = fs.queue
        self.written = bytearray()

    def expect(self, method: str, *args, result=None, error: BaseException | None = None):
        self.queue.items.append(("file", method, args or None, result, error))

    def expect_write(self, n: int | None = None, error: BaseException | None = None):
        """Expects a write that accepts `n` bytes (all if None) and records them."""
        def accept(data):
            k = len(data) if n is None else min(n, len(data))
            self.written += bytes(data[:k])
            return k
        self.expect("write", result=accept, error=error)

    def _call(self, method, *args):
        return self.queue.call("file", method, args)

    def write(self, data):
        return self._call("write", data)

    def pwrite(self, data, offset):
        return self._call("pwrite", data, offset)

    def sync(self):
        return self._call("sync")

    def datasync(self):
        return self._call("datasync")

    def close(self):
        pass
