"""clock.py: simulated time, retry, and the slow-step guard."""

import errno
import logging
import threading

import pytest

import clock


@pytest.mark.harness   # SimulatedClocks is the tests' clock
def test_simulated_sleep_advances_both_clocks(clocks):
    r0, m0 = clocks.realtime(), clocks.monotonic()
    clocks.sleep(1.5)
    assert clocks.monotonic() - m0 == 1_500_000_000
    assert clocks.realtime() - r0 == 1_500_000_000
    clocks.step_realtime(-10 * clock.NANOS_PER_SEC)
    assert clocks.monotonic() - m0 == 1_500_000_000  # a wall step doesn't move monotonic
    assert clocks.realtime() - r0 == -8_500_000_000


@pytest.mark.harness
def test_simulated_wait_returns_at_once_when_set(clocks):
    e = threading.Event()
    assert not clocks.wait(e, 2)
    assert clocks.monotonic() == 2 * clock.NANOS_PER_SEC
    e.set()
    assert clocks.wait(e, 2)
    assert clocks.monotonic() == 2 * clock.NANOS_PER_SEC


def test_retry_until_success_logs_the_error_once_and_its_end(clocks, caplog):
    calls = []

    def fn():
        calls.append(1)
        if len(calls) < 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return "done"

    with caplog.at_level(logging.WARNING):
        assert clock.retry(clocks, threading.Event(), "write 0000000100000001", fn) == "done"
    assert len(calls) == 3
    assert clocks.monotonic() == 2 * clock.NANOS_PER_SEC
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs == ["write 0000000100000001: [Errno 28] No space left on device "
                    "(retrying every 1 s)",
                    "write 0000000100000001: succeeded after 2 s, 2 failed attempts"]
    assert all(r.exc_info is None for r in caplog.records)


def test_retry_logs_nothing_when_the_step_succeeds_at_once(clocks, caplog):
    with caplog.at_level(logging.DEBUG):
        assert clock.retry(clocks, None, "fsync dir /x", lambda: 7) == 7
    assert caplog.records == []


def test_retry_gives_up_on_shutdown(clocks):
    shutdown = threading.Event()
    calls = []

    def fn():
        calls.append(1)
        if len(calls) == 2:
            shutdown.set()
        raise OSError(errno.EIO, "I/O error")

    with pytest.raises(clock.ShutdownError, match="write x"):
        clock.retry(clocks, shutdown, "write x", fn)
    assert len(calls) == 2


def test_retry_does_not_swallow_bugs(clocks):
    with pytest.raises(ZeroDivisionError):
        clock.retry(clocks, None, "x", lambda: 1 / 0)


def test_timer_guard_warns_only_when_slow(clocks, caplog):
    with caplog.at_level(logging.WARNING):
        with clock.TimerGuard(clocks, "fast step"):
            clocks.sleep(0.5)
        with clock.TimerGuard(clocks, lambda: "slow step"):
            clocks.sleep(1.5)
    assert [r.getMessage() for r in caplog.records] == ["slow step took 1.500 s"]
