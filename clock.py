"""Clocks: the only place nvr reads the system clocks or sleeps.

Everything that depends on time takes a `Clocks` object, so tests can run it on
`SimulatedClocks`, whose `sleep` advances time instead of waiting. Times are
integers in nanoseconds; 90 kHz conversions live in recording.py.

- `realtime()`: wall-clock time since the Unix epoch. It can step (NTP, an
  administrator); use it to label things, never to measure intervals.
- `monotonic()`: never steps; use it to measure intervals and to derive frame
  times (writer.py's "local time" of §3.4 is realtime-at-open + monotonic delta).
- `sleep(seconds)` and `wait(event, seconds)`: block, or in simulation advance.

Also here: `retry`, which runs an I/O step until it succeeds (sleeping 1 s
between tries, logging per logrepeat.py's policy: the error once, then counts
at a falling rate, then how long it took; giving up only on shutdown: a full
disk stalls a stream rather than losing data, reference §3.9), and `TimerGuard`,
which warns when a step or a lock is held over a second.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import weakref

import logrepeat

logger = logging.getLogger(__name__)

NANOS_PER_SEC = 1_000_000_000


class Clocks:
    """The interface; `RealClocks` and `SimulatedClocks` implement it."""

    def realtime(self) -> int:
        raise NotImplementedError

    def monotonic(self) -> int:
        raise NotImplementedError

    def sleep(self, seconds: float) -> None:
        raise NotImplementedError

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Waits up to `seconds` for `event`; returns whether it is set."""
        raise NotImplementedError

    def recv_timeout(self, q: queue.Queue, seconds: float | None):
        """The next item of `q`, waiting up to `seconds` (forever if None);
        raises `queue.Empty` on timeout."""
        raise NotImplementedError


class RealClocks(Clocks):
    def realtime(self) -> int:
        return time.time_ns()

    def monotonic(self) -> int:
        return time.monotonic_ns()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def wait(self, event: threading.Event, seconds: float) -> bool:
        return event.wait(seconds)

    def recv_timeout(self, q: queue.Queue, seconds: float | None):
        return q.get(timeout=seconds)


class SimulatedClocks(Clocks):
    """Time that moves only when someone sleeps or waits (or calls `advance`).

    `realtime` starts at `boot_realtime_ns` and moves with `monotonic`, which
    starts at 0. Thread-safe; with several threads sleeping, each sleep simply
    adds to the shared time, which is what tests of one thread at a time want.
    """

    def __init__(self, boot_realtime_ns: int):
        self._lock = threading.Lock()
        self._boot = boot_realtime_ns
        self._uptime = 0

    def realtime(self) -> int:
        with self._lock:
            return self._boot + self._uptime

    def monotonic(self) -> int:
        with self._lock:
            return self._uptime

    def advance(self, nanos: int) -> None:
        if nanos < 0:
            raise ValueError("time can't go backward")
        with self._lock:
            self._uptime += nanos

    def step_realtime(self, nanos: int) -> None:
        """Steps the wall clock (as NTP would) without moving monotonic time."""
        with self._lock:
            self._boot += nanos

    def sleep(self, seconds: float) -> None:
        self.advance(round(seconds * NANOS_PER_SEC))

    def wait(self, event: threading.Event, seconds: float) -> bool:
        if event.is_set():
            return True
        self.sleep(seconds)
        return event.is_set()

    def recv_timeout(self, q: queue.Queue, seconds: float | None):
        """Takes an item already queued; otherwise the timeout passes at once."""
        try:
            return q.get_nowait()
        except queue.Empty:
            if seconds is None:
                raise AssertionError("simulated recv with no timeout and nothing queued "
                                     "would wait forever") from None
            self.sleep(seconds)
            raise


class ShutdownError(Exception):
    """Raised by `retry` when shutdown is requested before the step succeeded."""


def retry(clocks: Clocks, shutdown: threading.Event | None, what: str, fn, *,
          delay_sec: float = 1.0):
    """Calls `fn()` until it returns, sleeping `delay_sec` after each OSError.

    Failures are logged as warnings naming `what` and the error, a persistent one
    at a falling rate (logrepeat.py: a full disk waited out for a day is some 30
    lines, not 86,400), and success after failures once more. Returns
    `fn`'s result. Raises `ShutdownError` if `shutdown` is set while failing,
    so that shutdown is never blocked by, say, a full disk (Moonfire #117).
    Errors other than OSError are bugs and propagate at once.
    """
    failed = False
    while True:
        try:
            result = fn()
            if failed:
                _retry_repeats(clocks).cleared(_retry_key(what), f"{what}: succeeded")
            return result
        except OSError as e:
            if shutdown is not None and shutdown.is_set():
                raise ShutdownError(f"{what}: gave up on shutdown after: {e}") from e
            failed = True
            _retry_repeats(clocks).failed(_retry_key(what), e, what,
                                          f"retrying every {delay_sec:g} s")
        if shutdown is not None:
            if clocks.wait(shutdown, delay_sec):
                raise ShutdownError(f"{what}: gave up on shutdown")
        else:
            clocks.sleep(delay_sec)


_repeats_lock = threading.Lock()
_repeats: "weakref.WeakKeyDictionary[Clocks, logrepeat.RepeatLog]" = weakref.WeakKeyDictionary()


def _retry_repeats(clocks: Clocks) -> logrepeat.RepeatLog:
    """`retry`'s RepeatLog, one per Clocks (per process, outside tests): shared by
    every call, so a disk that fills again after each recording's worth is freed (a
    failing write, then success, every minute) counts on rather than logging each time."""
    with _repeats_lock:
        r = _repeats.get(clocks)
        if r is None:
            r = _repeats[clocks] = logrepeat.RepeatLog(clocks, logger)
        return r


def _retry_key(what: str) -> str:
    # "write /d/0000000100000001" and the next recording's write are one thing failing.
    return logrepeat.without_numbers(what)


class TimerGuard:
    """Context manager that warns if its body takes over `limit_sec`.

    `what` may be a string or a callable returning one (built only when the
    warning is logged, so hot paths pay nothing for the label).
    """

    def __init__(self, clocks: Clocks, what, limit_sec: float = 1.0):
        self._clocks = clocks
        self._what = what
        self._limit_ns = int(limit_sec * NANOS_PER_SEC)

    def __enter__(self):
        self._start = self._clocks.monotonic()
        return self

    def __exit__(self, *exc):
        elapsed = self._clocks.monotonic() - self._start
        if elapsed > self._limit_ns:
            what = self._what() if callable(self._what) else self._what
            logger.warning("%s took %.3f s", what, elapsed / NANOS_PER_SEC)
        return False
