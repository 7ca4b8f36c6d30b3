"""logrepeat.py: a failure that repeats is logged once, then counted, then its end."""

from __future__ import annotations

import errno
import logging
import threading

import pytest

import clock
import logrepeat

log = logging.getLogger("test.logrepeat")
DAY = 86_400


def lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name == log.name]


def fail_every_second(clocks, repeats, n, error, key="cam", what="cam"):
    for _ in range(n):
        repeats.failed(key, error, what, "retrying every 1 s")
        clocks.sleep(1)


def test_a_day_of_one_error_a_second_is_a_few_dozen_lines_and_its_end_one_more(
        clocks, caplog):
    repeats = logrepeat.RepeatLog(clocks, log)
    err = OSError(errno.ECONNREFUSED, "Connection refused")
    with caplog.at_level(logging.DEBUG, logger=log.name):
        fail_every_second(clocks, repeats, DAY, err)
        assert repeats.failing("cam")
        assert repeats.cleared("cam", "cam: recording again")
    msgs = lines(caplog)
    assert len(msgs) < 40, msgs
    assert msgs[0] == "cam: [Errno 111] Connection refused (retrying every 1 s)"
    assert msgs[1:4] == [
        "cam: [Errno 111] Connection refused (10 times in 9 s; retrying every 1 s)",
        "cam: [Errno 111] Connection refused (100 times in 1 min 39 s; retrying every 1 s)",
        "cam: [Errno 111] Connection refused (1,000 times in 16 min 39 s; retrying every 1 s)"]
    # Then once an hour: the 1,000th at 999 s, so the 4,600th, 8,200th, ...
    hourly = msgs[4:-1]
    assert hourly[0] == ("cam: [Errno 111] Connection refused (4,600 times in 1 h 16 min; "
                         "retrying every 1 s)")
    assert len(hourly) == (DAY - 1000) // 3600
    assert msgs[-1] == "cam: recording again after 1 d, 86,400 failed attempts"
    assert all(r.exc_info is None and r.levelno == logging.WARNING for r in caplog.records)
    # Over: a failure an hour later is a new outage, logged in full.
    assert not repeats.failing("cam")
    assert not repeats.cleared("cam", "cam: recording again")  # nothing to say
    caplog.clear()
    clocks.sleep(3600)
    with caplog.at_level(logging.DEBUG, logger=log.name):
        fail_every_second(clocks, repeats, 1, err)
    assert lines(caplog) == ["cam: [Errno 111] Connection refused (retrying every 1 s)"]


def test_flapping_counts_on_across_outages_and_logs_only_the_ends_of_logged_ones(
        clocks, caplog):
    """A camera on a poor link: drops every 5 min, back 1 s later, for a day. Each drop
    used to be a warning (and an "opening" and a "recording" line)."""
    repeats = logrepeat.RepeatLog(clocks, log)
    err = OSError(errno.ECONNRESET, "Connection reset by peer")
    with caplog.at_level(logging.DEBUG, logger=log.name):
        for _ in range(DAY // 300):
            fail_every_second(clocks, repeats, 1, err)
            repeats.cleared("cam", "cam: recording again")
            clocks.sleep(299)
    msgs = lines(caplog)
    assert len(msgs) < 70, msgs
    assert msgs[:4] == [
        "cam: [Errno 104] Connection reset by peer (retrying every 1 s)",
        "cam: recording again after 1 s, 1 failed attempt",
        "cam: [Errno 104] Connection reset by peer (10 times in 45 min; retrying every 1 s)",
        "cam: recording again after 1 s, 1 failed attempt"]


def test_slow_failures_are_logged_at_least_hourly(clocks, caplog):
    """A camera that is off takes the 30 s open timeout to fail: 10 failures are 5 min,
    1,000 are 8.6 h; the hourly line comes between."""
    repeats = logrepeat.RepeatLog(clocks, log)
    with caplog.at_level(logging.DEBUG, logger=log.name):
        for _ in range(400):  # the k-th at 30 + 31 (k - 1) s
            clocks.sleep(30)
            repeats.failed("cam", OSError(errno.ETIMEDOUT, "Connection timed out"), "cam")
            clocks.sleep(1)
    counts = [m.split("(")[1].split(" times")[0] for m in lines(caplog)[1:]]
    # The 100th at 3,099 s; the 217th is the first an hour after it (6,726 s), and so on.
    assert counts == ["10", "100", "217", "334"]


def test_a_different_error_is_logged_in_full_and_a_returning_one_counts_on(clocks, caplog):
    repeats = logrepeat.RepeatLog(clocks, log)
    refused = OSError(errno.ECONNREFUSED, "Connection refused")
    denied = PermissionError(errno.EACCES, "401 Unauthorized")
    with caplog.at_level(logging.DEBUG, logger=log.name):
        fail_every_second(clocks, repeats, 5, refused)
        fail_every_second(clocks, repeats, 5, denied)
        fail_every_second(clocks, repeats, 5, refused)   # the 10th refusal is counted
        repeats.cleared("cam", "cam: recording again")
    assert lines(caplog) == [
        "cam: [Errno 111] Connection refused (retrying every 1 s)",
        "cam: [Errno 13] 401 Unauthorized (retrying every 1 s)",
        "cam: [Errno 111] Connection refused (10 times in 14 s; retrying every 1 s)",
        "cam: recording again after 15 s, 15 failed attempts"]


def test_an_error_differing_only_in_its_numbers_is_the_same_error(clocks, caplog):
    repeats = logrepeat.RepeatLog(clocks, log)
    with caplog.at_level(logging.DEBUG, logger=log.name):
        for i in range(10):
            repeats.failed("w", ValueError(f"pts went back from {1000 * i} to {i}"), "w")
    assert len(lines(caplog)) == 2


def test_a_bug_keeps_its_traceback_once_and_an_expected_error_has_none(clocks, caplog):
    repeats = logrepeat.RepeatLog(clocks, log, expected=(OSError,))

    def bug():
        return {}["x"]

    with caplog.at_level(logging.DEBUG, logger=log.name):
        for _ in range(10):
            try:
                bug()
            except KeyError as e:
                repeats.failed("a", e, "a", "retrying every 1 s")
            repeats.failed("b", OSError(errno.ENOSPC, "No space left on device"), "b")
    recs = [(r.getMessage(), r.levelno, r.exc_info is not None) for r in caplog.records]
    assert recs == [
        ("a: unexpected KeyError: 'x' (retrying every 1 s)", logging.ERROR, True),
        ("b: [Errno 28] No space left on device", logging.WARNING, False),
        ("a: unexpected KeyError: 'x' (10 times in 0 s; retrying every 1 s)",
         logging.WARNING, False),
        ("b: [Errno 28] No space left on device (10 times in 0 s)", logging.WARNING, False)]
    first = caplog.records[0]
    assert first.exc_info[0] is KeyError
    assert "in bug" in logging.Formatter().formatException(first.exc_info)


def test_keys_are_independent(clocks, caplog):
    repeats = logrepeat.RepeatLog(clocks, log)
    err = OSError(errno.EIO, "I/O error")
    with caplog.at_level(logging.DEBUG, logger=log.name):
        repeats.failed("a", err, "a")
        repeats.failed("b", err, "b")
        clocks.sleep(5)
        assert repeats.cleared("a", "a: works")
        assert repeats.failing("b") and not repeats.failing("a")
    assert lines(caplog) == ["a: [Errno 5] I/O error", "b: [Errno 5] I/O error",
                             "a: works after 5 s, 1 failed attempt"]


@pytest.mark.parametrize("sec, text", [
    (0, "0 s"), (9, "9 s"), (60, "1 min"), (999, "16 min 39 s"), (3600, "1 h"),
    (3 * 3600 + 12 * 60 + 5, "3 h 12 min"), (DAY, "1 d"), (2 * DAY + 3 * 3600 + 59, "2 d 3 h")])
def test_duration(sec, text):
    assert logrepeat.duration(sec * logrepeat.NANOS_PER_SEC) == text


def test_a_full_disk_waited_out_for_a_day_is_a_few_dozen_lines(clocks, caplog):
    """clock.retry, the writer's and syncer's wait for space (reference §3.9): it used
    to warn every second, 86,400 lines a day."""
    calls = []

    def write():
        calls.append(1)
        if len(calls) <= DAY:
            raise OSError(errno.ENOSPC, "No space left on device")
        return 4

    with caplog.at_level(logging.DEBUG, logger="clock"):
        assert clock.retry(clocks, threading.Event(), "write /d/0000000100000001", write) == 4
    msgs = [r.getMessage() for r in caplog.records if r.name == "clock"]
    assert len(msgs) < 40
    assert msgs[0] == ("write /d/0000000100000001: [Errno 28] No space left on device "
                       "(retrying every 1 s)")
    assert "(1,000 times in 16 min 39 s; retrying every 1 s)" in msgs[3]
    assert msgs[-1] == "write /d/0000000100000001: succeeded after 1 d, 86,400 failed attempts"
    assert all(r.exc_info is None for r in caplog.records)


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append((record.name, record.getMessage()))


def test_ffmpegs_repeated_lines_are_counted_and_others_pass(clocks):
    """PyAV 10 passes FFmpeg's log to loggers `libav.*`: a camera that is off added
    "Connection to tcp://...:554 failed" at each attempt."""
    h = _Collect()
    h.addFilter(logrepeat.RepeatFilter(clocks))
    tcp, ours = logging.getLogger("libav.tcp"), logging.getLogger("stream")
    for lg in (tcp, ours):
        lg.addHandler(h)
        lg.propagate = False
    try:
        for i in range(DAY):
            tcp.error("Connection to tcp://10.0.0.%d:554?timeout=0 failed: Connection refused",
                      7)
            clocks.sleep(1)
        for _ in range(3):
            ours.warning("not filtered")
        clocks.sleep(3600)  # an hour's quiet: the next one is news again
        tcp.error("Connection to tcp://10.0.0.7:554?timeout=0 failed: Connection refused")
    finally:
        for lg in (tcp, ours):
            lg.removeHandler(h)
            lg.propagate = True
    line = "Connection to tcp://10.0.0.7:554?timeout=0 failed: Connection refused"
    assert len(h.lines) < 40
    assert h.lines[:3] == [("libav.tcp", line), ("libav.tcp", f"{line} (10 times in 9 s)"),
                           ("libav.tcp", f"{line} (100 times in 1 min 39 s)")]
    assert h.lines[-4:] == [("stream", "not filtered")] * 3 + [("libav.tcp", line)]


def test_a_disk_that_fills_again_after_each_recording_is_counted_across_retries(
        clocks, caplog):
    """Retention frees a recording's worth, the disk fills again: each recording's
    writes wait a minute for space, every 5 min for a day (a new `retry` each time,
    with a new file name). That is one thing failing, counted across the calls."""
    def fails(n):
        def write():
            write.calls += 1
            if write.calls <= n:
                raise OSError(errno.ENOSPC, "No space left on device")
        write.calls = 0
        return write

    with caplog.at_level(logging.DEBUG, logger="clock"):
        for i in range(DAY // 300):
            clock.retry(clocks, threading.Event(), f"write /d/00000001{i:08x}", fails(60))
            clocks.sleep(240)
    msgs = [r.getMessage() for r in caplog.records if r.name == "clock"]
    assert len(msgs) < 70, msgs  # 17,280 failures; each used to be a line
    assert msgs[:3] == [
        "write /d/0000000100000000: [Errno 28] No space left on device (retrying every 1 s)",
        "write /d/0000000100000000: [Errno 28] No space left on device (10 times in 9 s; "
        "retrying every 1 s)",
        "write /d/0000000100000000: succeeded after 1 min, 60 failed attempts"]
