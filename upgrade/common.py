"""Small helpers shared by the upgrade steps: the error kind, running SQL
scripts inside a transaction, and the crash hook used by tests.

Everything here is frozen along with the steps: a step may import from this
package (`upgrade.common`, `upgrade.dirmeta`, `upgrade.h264`, `upgrade.fsops`)
but never from today's modules (`db`, `dir`, `recording`, ...), whose idea of
the schema moves on while a step's must not.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3


class UpgradeError(Exception):
    """An upgrade refused or failed; the message says what to do next.

    Raised before a step touches anything when a safety check fails, or from
    inside a step, in which case its transaction is rolled back and the
    database stays at the previous version.
    """


def exec_script(conn: sqlite3.Connection, script: str) -> None:
    """Runs `script`'s statements one by one in the current transaction.

    `sqlite3.Connection.executescript` would first COMMIT any open
    transaction, which would break a step's all-or-nothing promise, so the
    script is split on statement boundaries with `sqlite3.complete_statement`
    (which understands quotes and comments) and each piece is executed.
    """
    start = 0
    pos = script.find(";")
    while pos >= 0:
        piece = script[start:pos + 1]
        if sqlite3.complete_statement(piece):  # else the ';' is in a string or comment
            conn.execute(piece)
            start = pos + 1
        pos = script.find(";", pos + 1)
    rest = script[start:]
    if rest.strip() and not _only_comments(rest):
        raise ValueError(f"incomplete SQL statement at end of script: {rest!r}")


def _only_comments(text: str) -> bool:
    return all(not line.strip() or line.strip().startswith("--") for line in text.splitlines())


CRASH_ENV = "NVR_CRASH_AT"


def crash_point(name: str) -> None:
    """Kills this process with SIGKILL if `NVR_CRASH_AT` equals `name`.

    Tests set the variable in a child process to show that an upgrade killed
    at that point leaves a consistent state which a rerun completes. The
    points are named `upgrade-v<N>-to-v<N+1>-<where>`; each is listed in the
    docstring of the step that has it, and the driver adds
    `upgrade-v<N>-to-v<N+1>-before-commit` for every step.
    """
    if not _trial_depth and os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


_trial_depth = 0


@contextlib.contextmanager
def no_crash_points():
    """Crash points don't fire inside: the preflight and the dry run run the
    steps on a scratch copy, where a kill would show nothing."""
    global _trial_depth
    _trial_depth += 1
    try:
        yield
    finally:
        _trial_depth -= 1
