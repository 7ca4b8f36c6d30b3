"""Logging a failure that repeats: in full once, then counted at a falling rate.

nvr retries what fails, forever: a stream reconnects 1 s after any error, an I/O step
waits out a full disk a second at a time (clock.retry), the syncer retries a save or a
flush. A camera that is off for a week, a wrong password or a full disk would otherwise
write a line (or a traceback) every second, and the log would be unreadable long before
anyone looked at it. `RepeatLog` is the one policy for all of them:

- The first failure of an outage is logged in full: one line naming what failed and
  the error. An error we expect (its type is in `expected`: network, authentication,
  codec and stream errors, OSError such as ENOSPC) gets no traceback; any other type
  is a bug and gets its traceback, at ERROR, this first time only.
- The same error again (same type, errno and message with its numbers ignored, so "got
  90000 then 87000" repeats "got 93000 then 90000") is counted, and logged as one line
  with the count when its count reaches 10, 100 and 1000, and otherwise once an hour:
  about 30 lines for a day of failures a second, then 24 a day.
- A different error during the same outage (a 401, then "connection refused") is
  logged in full too, then counted on its own. An error seen earlier in the outage
  counts on where it left off.
- When the thing works again, one line says so, with how long the outage lasted
  (from its first failure) and how many attempts failed ("driveway-main: recording
  again after 3 h 12 min, 10,800 failed attempts"), at WARNING like the failures, so a
  filter that shows the one shows the other. Nothing is logged if nothing failed.
- An outage that begins within an hour of the previous one's end (a camera on a poor
  link that drops every few minutes) counts on from the previous one's counts, and its
  end is logged only if a line of it was: flapping costs a few lines an hour, not two
  per drop.

Failures are keyed by what is failing (a stream's name, "flush", a file's fsync), so one
`RepeatLog` can serve several things at once; each key's outage is its own. Time comes
from a `clock.Clocks` (monotonic), so tests drive a day of failures in simulated time.
Thread-safe. Callers: stream.py (a stream's runs), clock.py (`retry`), dir.py (the
syncer's commands and flushes).

`RepeatFilter` applies the same counting to lines nvr doesn't write itself: FFmpeg's,
which PyAV 10 passes to Python's logging (nvr.py puts it on the log handler).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading

NANOS_PER_SEC = 1_000_000_000
COUNTS_LOGGED = (10, 100, 1000)  # repeats logged when an error's count reaches these...
LOG_EVERY_SEC = 3600             # ...and otherwise at most this often
MAX_ERRORS_PER_KEY = 100         # distinct errors remembered per outage (oldest dropped)
MAX_FILTERED_LINES = 1000        # distinct lines RepeatFilter remembers (oldest dropped)

# Numbers, decimal or hex (sample file names are 16 hex digits: dir.name_for).
_NUMBERS = re.compile(r"[0-9a-fA-F]*[0-9][0-9a-fA-F]*")


def without_numbers(text: str) -> str:
    """`text` with each number (decimal or hex) as '#'."""
    return _NUMBERS.sub("#", text)


def signature(e: BaseException) -> tuple:
    """What makes two errors "the same": type, errno, and message without its numbers."""
    return (type(e).__module__, type(e).__qualname__, getattr(e, "errno", None),
            without_numbers(str(e)))


def duration(ns: int) -> str:
    """A short human duration: '9 s', '16 min 39 s', '3 h 12 min', '2 d 3 h'."""
    s = max(0, ns) // NANOS_PER_SEC
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d} d {h} h" if h else f"{d} d"
    if h:
        return f"{h} h {m} min" if m else f"{h} h"
    if m:
        return f"{m} min {s} s" if s else f"{m} min"
    return f"{s} s"


@dataclasses.dataclass
class _Error:
    first_ns: int             # monotonic time of its first occurrence in the outage
    count: int = 0
    logged_ns: int = 0        # monotonic time it was last logged
    seen_ns: int = 0          # monotonic time of its last occurrence


def _count(errors: dict, sig, now: int, limit: int = MAX_ERRORS_PER_KEY
           ) -> tuple[_Error, bool]:
    """Counts one more `sig` in `errors` (signature -> _Error, oldest first, at most
    `limit`); returns it and whether this occurrence is to be logged."""
    e = errors.get(sig)
    if e is None:
        if len(errors) >= limit:
            del errors[next(iter(errors))]
        e = errors[sig] = _Error(now)
    e.count += 1
    e.seen_ns = now
    if e.count == 1 or e.count in COUNTS_LOGGED or \
            now - e.logged_ns >= LOG_EVERY_SEC * NANOS_PER_SEC:
        e.logged_ns = now
        return e, True
    return e, False


@dataclasses.dataclass
class _Outage:
    first_ns: int
    failures: int = 0
    errors: dict = dataclasses.field(default_factory=dict)  # signature -> _Error
    logged: bool = False  # whether any line of it was logged


class RepeatLog:
    """Logs failures of keyed things per the module's policy.

    `expected`: exception types that are no bug (no traceback). `level`: the level of
    expected failures and of the recovery line (a bug's first line is ERROR).
    """

    def __init__(self, clocks, logger: logging.Logger, *,
                 expected: tuple[type[BaseException], ...] = (OSError,),
                 level: int = logging.WARNING):
        self.clocks = clocks
        self.logger = logger
        self.expected = expected
        self.level = level
        self._lock = threading.Lock()
        self._outages: dict[object, _Outage] = {}
        self._recent: dict[object, tuple[int, dict]] = {}  # key -> (cleared at, errors)

    def failing(self, key) -> bool:
        """Whether `key` has failed since it last succeeded."""
        with self._lock:
            return key in self._outages

    def failed(self, key, error: BaseException, what: str, then: str = "") -> None:
        """Counts a failure of `key`, logging "<what>: <error> (<then>)" in full or as a
        count, per the policy. `then` says what happens next ("retrying every 1 s")."""
        now = self.clocks.monotonic()
        expected = isinstance(error, self.expected)
        with self._lock:
            o = self._outages.get(key)
            if o is None:
                o = self._outages[key] = _Outage(now)
                recent = self._recent.pop(key, None)
                if recent is not None and now - recent[0] < LOG_EVERY_SEC * NANOS_PER_SEC:
                    o.errors = recent[1]  # flapping: count on
            o.failures += 1
            e, log = _count(o.errors, signature(error), now)
            if not log:
                return
            o.logged = True
            count, first_ns = e.count, e.first_ns
        first = count == 1
        desc = (str(error) or type(error).__name__) if expected else \
            f"unexpected {type(error).__name__}: {error}"
        if first:
            tail = f" ({then})" if then else ""
            if expected:
                self.logger.log(self.level, "%s: %s%s", what, desc, tail)
            else:  # a bug: its traceback, this once
                self.logger.error("%s: %s%s", what, desc, tail, exc_info=error)
            return
        self.logger.log(self.level, "%s: %s (%s times in %s%s)", what, desc, f"{count:,}",
                        duration(now - first_ns), f"; {then}" if then else "")

    def cleared(self, key, what: str) -> bool:
        """`key` works again: if it had failed (and that was logged), logs "<what> after
        <outage>, <n> failed attempts" and returns True; else returns False."""
        now = self.clocks.monotonic()
        with self._lock:
            o = self._outages.pop(key, None)
            if o is None:
                return False
            for k, (cleared_ns, _) in list(self._recent.items()):
                if now - cleared_ns >= LOG_EVERY_SEC * NANOS_PER_SEC:
                    del self._recent[k]
            self._recent[key] = (now, o.errors)
        if not o.logged:
            return False
        self.logger.log(self.level, "%s after %s, %s failed attempt%s", what,
                        duration(now - o.first_ns), f"{o.failures:,}",
                        "" if o.failures == 1 else "s")
        return True


class RepeatFilter(logging.Filter):
    """The same policy for log lines we don't write: FFmpeg's, which PyAV 10 (Debian's)
    hands to Python's logging as loggers `libav.*` ("Connection to tcp://...:554 failed:
    Connection refused" at each attempt of a camera that is off, "RTP: missed 3 packets"
    on a lossy network).

    Put on a handler (a logger's filters don't apply to its children's records). A
    record of a logger under `prefix` passes the first time; the same line again (same
    logger and level, numbers ignored) is counted and passes at 10, 100, 1000 and hourly,
    as "<line> (<n> times in <duration>)". Lines of other loggers pass untouched. No
    success ends these, so a line not seen for an hour is forgotten: it is logged in
    full when it comes back.
    """

    def __init__(self, clocks, prefix: str = "libav"):
        super().__init__()
        self.clocks = clocks
        self.prefix = prefix
        self._lock = threading.Lock()
        self._lines: dict = {}  # (logger, level, message without numbers) -> _Error

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.name
        if not (name == self.prefix or name.startswith(self.prefix + ".")):
            return True
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 (a malformed record: the handler reports it)
            return True
        sig = (name, record.levelno, _NUMBERS.sub("#", msg))
        now = self.clocks.monotonic()
        with self._lock:
            e = self._lines.get(sig)
            if e is not None and now - e.seen_ns >= LOG_EVERY_SEC * NANOS_PER_SEC:
                del self._lines[sig]  # quiet for an hour: a new occurrence
            e, log = _count(self._lines, sig, now, MAX_FILTERED_LINES)
            count, first_ns = e.count, e.first_ns
        if not log:
            return False
        if count > 1:
            record.msg, record.args = "%s (%s times in %s)", (
                msg, f"{count:,}", duration(now - first_ns))
        return True
