"""The running system: which streams record, into which dir, and changing that while it runs.

`Recorder` owns, for one open read-write `db.Database`:
- one streamer per recorded stream (stream.py's `Streamer`, thread `s-<camera>-<type>`),
  keyed by stream id. A stream is recorded when its config says `mode = "record"`, it
  has a sample file dir and a URL;
- one syncer per sample file dir that a recorded stream writes into (dir.py's `Syncer`,
  thread `sync-<path>`): started with the first recorded stream on the dir, stopped by
  `stop_dir` or `stop`. A dir whose streams stopped recording keeps its syncer (its
  recordings still age out).

Changes take effect without a restart (issue #14): after a configuration transaction
has committed, its caller (config.py: the CLI, the API) calls `reconcile()`, which
compares each streamer's effective configuration, captured at its start (url,
rtspTransport, the camera's username and password, the sample file dir), with the
database as it is now:
- a recorded stream with no streamer starts (a syncer first if its dir has none),
  with a rotation offset away from the others' (`_free_offset`);
- a streamer whose stream is no longer recorded stops, its run ending with "recording
  turned off"; one whose stream is gone, "stream deleted";
- a streamer whose effective configuration changed ends its run with "configuration
  changed: url" (the names of what changed: url, rtspTransport, username, password,
  sampleFileDirId) and a new one starts, with the same rotation offset;
- nothing else is touched: every other stream keeps its run, frame for frame.
Stopping one stream (`stop_stream`) sets that streamer's own stop event (never the
shared `shutdown`, which stops them all), which ends a read waiting on a silent camera
at once (stream.StallWatch.interrupt); it returns once the run's last recording is
handed to the syncer, synced and committed by a flush (`flush(<name>: <reason>)`), so a
caller may delete the stream next. A streamer still opening its camera (an unreachable
host takes stream.OPEN_TIMEOUT_SEC to fail) isn't waited for: it closes what it opens.
`stop_dir` stops a dir's streams, then its syncer after a final flush and garbage pass
(a dir being moved or removed); `reconcile()` afterwards starts them again.

Threads and locks: `_ops` serialises the operations above (one change at a time, from
any thread: HTTP handlers, the control socket, the main thread); `_state` guards the
streamer/syncer dicts and is held only to read or swap them (`status()` takes only
it, so a status request never waits for a stop). Both rank before the database lock:
they are taken without it held, and the operations take it only briefly, to read the
configuration. Callers must not hold the database lock (a stopping streamer's writer
takes it).

Status (`status()`): every stream of the database, recorded or not, as the JSON of
docs/api.md's configuration API (STATUS): "off" for one not recorded (its last run's
end reason kept as lastError once stopped here), else its streamer's state; a recorded
stream that `reconcile` couldn't start (its dir can't be opened, a limit edited by hand
into nonsense) is "failing" with that reason until a later `reconcile` starts it.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading

import clock
import db
import dir as dirmod
import retention
import stream

logger = logging.getLogger(__name__)

# How long a stop waits for the syncer to make a stream's last recording durable before
# flushing anyway (a disk retrying an fsync): the syncer's own planned flush commits it
# later.
DRAIN_TIMEOUT_SEC = 30

EFFECTIVE_KEYS = ("url", "rtspTransport", "username", "password", "sampleFileDirId")


class ConfigProblem(ValueError):
    """A recorded stream's or dir's configuration that recording can't use (edited by hand
    with `nvr.py sql`); the message names the fix. `nvr.py run` prints it as one line."""


def check_recorded_stream_config(d: db.Database, s) -> None:
    """ConfigProblem naming the fix if a recorded stream's numbers aren't whole numbers
    from 0 up (a database edited by hand with `nvr.py sql`): the syncer would fail on
    them after every recording, forever ("abc"), or misread them (a negative
    retainBytes deletes every recording; `int()` would take "120", 1.5 or true)."""
    name = f"{d.cameras[s.camera_id].short_name} {s.type}"
    options = {"flushIfSec": "--flush-if-sec N", "retainBytes": "--retain-bytes SIZE",
               "retainDays": "--retain-days N"}
    v = s.config.get("flushIfSec", 0)
    problem = None
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        problem = "flushIfSec", "not a whole number from 0 up"
    problem = problem or retention.stream_config_problem(s.config)
    if problem:
        key, what = problem
        raise ConfigProblem(f"stream {name}: {key} is {json.dumps(s.config.get(key))}, {what}; "
                            f"set it with `nvr.py config stream edit {name} {options[key]}`")


def check_dir_config(x: db.SampleFileDir) -> None:
    """ConfigProblem naming the fix if a dir's free-space floor was edited by hand into
    something retention can't use (retention.py)."""
    problem = retention.dir_config_problem(x.config)
    if problem:
        key, what = problem
        raise ConfigProblem(f"sample file dir {x.path}: {key} is "
                            f"{json.dumps(x.config.get(key))}, {what}; set it with "
                            f"`nvr.py config dir edit {x.id} --free-space-floor SIZE|N%|default`")


def is_recorded(s) -> bool:
    return bool(s.record and s.sample_file_dir_id is not None and s.config.get("url"))


def effective_config(d: db.Database, s) -> dict:
    """What a streamer of `s` runs with (EFFECTIVE_KEYS), as the database says now."""
    c = d.cameras[s.camera_id]
    return {"url": s.config.get("url", ""),
            "rtspTransport": s.config.get("rtspTransport", "tcp") or "",
            "username": c.config.get("username", ""),
            "password": c.config.get("password", ""),
            "sampleFileDirId": s.sample_file_dir_id}


def _streamer_config(st: stream.Streamer) -> dict:
    return {"url": st.url, "rtspTransport": st.transport, "username": st.username,
            "password": st.password, "sampleFileDirId": st.sample_file_dir_id}


def _free_offset(used: list[int], interval: int) -> int:
    """A rotation offset in [0, interval) as far as can be from `used` (on the circle):
    the streams' recordings don't all end (and fsync) in the same second."""
    if not used or interval <= 0:
        return 0
    best, best_gap = 0, -1
    for o in range(interval):
        gap = min(min((o - u) % interval, (u - o) % interval) for u in used)
        if gap > best_gap:
            best, best_gap = o, gap
    return best


def _off_status(last_error: str | None = None, last_error_ns: int | None = None,
                since_ns: int | None = None, runs: int = 0) -> dict:
    def sec(ns):
        return None if ns is None else ns / clock.NANOS_PER_SEC
    return {"state": "off", "sinceSec": sec(since_ns), "runStartSec": None,
            "lastFrameSec": None, "lastFrameAgeSec": None, "fps": None, "bitrateBps": None,
            "runs": runs, "lastError": last_error, "lastErrorSec": sec(last_error_ns)}


class Recorder:
    """What `run` starts and stops, and changes while running (module docstring)."""

    FINAL_FLUSH_TRIES = 3

    def __init__(self, d: db.Database, opener, *, shutdown: threading.Event,
                 rotate_interval_sec: int = 60):
        """Checks the recorded streams' and their dirs' configuration (ConfigProblem),
        makes a syncer per dir and runs its initial rotation, and makes (doesn't start)
        the streamers, their rotation offsets spread over the interval."""
        self.db = d
        self.opener = opener
        self.shutdown = shutdown
        self.rotate_interval_sec = rotate_interval_sec
        self.started = False
        self._ops = threading.RLock()
        self._state = threading.Lock()
        self.syncers: dict[int, dirmod.Syncer] = {}
        self._dir_stops: dict[int, threading.Event] = {}
        self.streamers: dict[int, stream.Streamer] = {}
        self._offsets: dict[int, int] = {}      # stream id -> rotation offset, kept on restart
        # Stream id -> its status without a streamer: "off" with the last run's end reason
        # once stopped here, "failing" with why if reconcile couldn't start it.
        self._stopped: dict[int, dict] = {}
        recorded = [s for s in sorted(d.streams.values(), key=lambda s: s.id)
                    if is_recorded(s)]
        for s in recorded:
            check_recorded_stream_config(d, s)
        for dir_id in sorted({s.sample_file_dir_id for s in recorded}):
            check_dir_config(d.dirs[dir_id])
        for s in recorded:
            if s.sample_file_dir_id not in self.syncers:
                self._make_syncer(s.sample_file_dir_id)
        for i, s in enumerate(recorded):
            self._offsets[s.id] = rotate_interval_sec * i // len(recorded)
            self.streamers[s.id] = self._make_streamer(s)

    def _make_syncer(self, dir_id: int) -> dirmod.Syncer:
        # Its own event: `stop_dir` gives up one dir's retries as shutdown gives up all.
        ev = self._dir_stops[dir_id] = threading.Event()
        sy = dirmod.Syncer(self.db, dir_id, shutdown=ev,
                           check_every_sec=dirmod.RETENTION_CHECK_SEC)
        sy.initial_rotation()
        self.syncers[dir_id] = sy
        return sy

    def _make_streamer(self, s) -> stream.Streamer:
        # Its own event: `stop_stream` ends this stream alone (stream.Streamer).
        return stream.Streamer(
            self.db, s.id, self.syncers[s.sample_file_dir_id], self.opener(s),
            shutdown=threading.Event(), rotate_offset_sec=self._offsets[s.id],
            rotate_interval_sec=self.rotate_interval_sec)

    def start(self) -> None:
        with self._ops:
            self.started = True
            for sy in self.syncers.values():
                sy.start()
            for st in self.streamers.values():
                st.start()

    # -- changes while running ---------------------------------------------------------

    def reconcile(self) -> dict[int, str]:
        """Brings the streamers and syncers in line with the database as it is now
        (module docstring). Returns {stream id: "started" | "stopped: <why>" |
        "restarted: <why>" | "not started: <why>"} for the streams it changed."""
        with self._ops:
            if self.shutdown.is_set():
                return {}
            with self.db.locked("reconcile"):
                wanted = {s.id: (s, effective_config(self.db, s))
                          for s in self.db.streams.values() if is_recorded(s)}
                existing = set(self.db.streams)
            result: dict[int, str] = {}
            with self._state:
                running = dict(self.streamers)
            for sid, st in sorted(running.items()):
                if sid not in existing:
                    why = "stream deleted"
                elif sid not in wanted:
                    why = "recording turned off"
                else:
                    now = wanted[sid][1]
                    was = _streamer_config(st)
                    changed = [k for k in EFFECTIVE_KEYS if now[k] != was[k]]
                    if not changed:
                        continue
                    why = "configuration changed: " + ", ".join(changed)
                self._stop_one(st, why)
                result[sid] = (f"restarted: {why}" if sid in wanted else f"stopped: {why}")
            with self._state:
                running = set(self.streamers)
            for sid, (s, _) in sorted(wanted.items()):
                if sid in running:
                    continue
                try:
                    self._start_one(s)
                except (ConfigProblem, dirmod.DirError, db.DbError, OSError) as e:
                    logger.warning("%s-%s: not recording: %s", self._camera_name(s), s.type, e)
                    result[sid] = f"not started: {e}"
                    now = self.db.clocks.realtime()
                    with self._state:  # failing, saying why, until a reconcile starts it
                        self._stopped[sid] = dict(
                            _off_status(stream.scrub(str(e)), now, now,
                                        self.db.metrics.stream(sid).runs), state="failing")
                    continue
                result.setdefault(sid, "started")
            if result:
                logger.info("reconcile: %s", "; ".join(f"stream {k} {v}"
                                                        for k, v in sorted(result.items())))
            return result

    def _camera_name(self, s) -> str:
        c = self.db.cameras.get(s.camera_id)
        return c.short_name if c else str(s.camera_id)

    def _start_one(self, s) -> None:
        """Starts stream `s` (under `_ops`): its dir's syncer first if none."""
        check_recorded_stream_config(self.db, s)
        dir_id = s.sample_file_dir_id
        if dir_id not in self.syncers:
            x = self.db.dirs[dir_id]
            check_dir_config(x)
            if x.dir is None:
                self.db.open_sample_file_dirs([dir_id])
            sy = self._make_syncer(dir_id)
            if self.started:
                sy.start()
        if s.id not in self._offsets:
            self._offsets[s.id] = _free_offset(
                [self._offsets[i] for i in self.streamers], self.rotate_interval_sec)
        st = self._make_streamer(s)
        with self._state:
            self.streamers[s.id] = st
            self._stopped.pop(s.id, None)
        if self.started:
            st.start()

    def stop_stream(self, stream_id: int, reason: str) -> None:
        """Ends that stream's run with `reason`; returns once its last recording is
        committed (flushed). A no-op if it isn't running."""
        with self._ops:
            if self.shutdown.is_set():
                return  # `stop` ended every run (and may have closed the database)
            with self._state:
                st = self.streamers.get(stream_id)
            if st is not None:
                self._stop_one(st, reason)

    def _stop_one(self, st: stream.Streamer, reason: str, flush: bool = True) -> None:
        """Under `_ops`: stop, wait for the run's end, drain the syncer, flush."""
        st.stop(reason)
        st.wait_stopped()
        status = st.status()
        status.update(_off_status(stream.scrub(reason), self.db.clocks.realtime(),
                                  self.db.clocks.realtime(), status["runs"]))
        with self._state:
            self.streamers.pop(st.stream_id, None)
            self._stopped[st.stream_id] = status
        if not flush or not self.started:
            return
        sy = self.syncers.get(st.sample_file_dir_id)
        if sy is not None and not sy.drain(DRAIN_TIMEOUT_SEC):
            logger.warning("%s: its last recording isn't synced after %d s; flushing without "
                           "it (the syncer commits it later)", st.name, DRAIN_TIMEOUT_SEC)
        try:
            self.db.flush(f"{st.name}: {reason}")
        except sqlite3.Error as e:
            # The syncer's planned flush retries; nothing is lost meanwhile.
            logger.warning("%s: flush after stopping failed (%s); the syncer retries it",
                           st.name, e)

    def stop_dir(self, dir_id: int, reason: str) -> list[int]:
        """Stops every stream recording into the dir (`stop_stream`), then the dir's
        syncer after a final flush and garbage pass. Returns the stopped stream ids."""
        with self._ops:
            with self._state:
                ids = sorted(sid for sid, st in self.streamers.items()
                             if st.sample_file_dir_id == dir_id)
            for sid in ids:
                self._stop_one(self.streamers[sid], reason, flush=False)
            sy = self.syncers.get(dir_id)
            if sy is None:
                if ids:
                    self._flush_quietly(reason)
                return ids
            if self.started:
                sy.stop()  # the queued saves first
            self._flush_quietly(f"{sy.path}: {reason}")
            self._dir_stops[dir_id].set()  # an I/O error now gives up (recovery finishes it)
            try:
                if sy.collect_garbage():
                    self._flush_quietly(f"{sy.path}: {reason}: garbage collected")
            except clock.ShutdownError as e:
                logger.warning("%s: garbage not collected (%s); start-up recovery will "
                               "collect it at the next start", sy.path, e)
            with self._state:
                del self.syncers[dir_id]
            del self._dir_stops[dir_id]
            return ids

    def _flush_quietly(self, reason: str) -> None:
        try:
            self.db.flush(reason)
        except sqlite3.Error as e:
            logger.warning("flush (%s) failed: %s; the next flush commits it", reason, e)

    # -- status ----------------------------------------------------------------------

    def status(self) -> dict[int, dict]:
        """Every stream of the database → its status JSON (module docstring)."""
        with self._state:
            streamers = dict(self.streamers)
            stopped = dict(self._stopped)
        with self.db.locked("status"):
            recorded = {sid: is_recorded(s) for sid, s in self.db.streams.items()}
        out = {}
        for sid in sorted(recorded):
            st = streamers.get(sid)
            kept = stopped.get(sid)
            if st is not None:
                out[sid] = st.status()
            elif kept is not None and (kept["state"] == "off" or recorded[sid]):
                out[sid] = kept
            else:
                out[sid] = _off_status(runs=self.db.metrics.stream(sid).runs)
        return out

    # -- shutdown ----------------------------------------------------------------------

    def stop(self) -> None:
        """Ends every run ("NVR shutdown"), makes the last recordings durable,
        flushes, collects garbage, flushes again."""
        with self._ops:
            self.shutdown.set()
            for ev in self._dir_stops.values():
                ev.set()
            with self._state:
                streamers = list(self.streamers.values())
            for st in streamers:
                st.stop("NVR shutdown")
            stream.stall_watch.interrupt_all()  # a silent camera's read ends now, not in 30 s
            for st in streamers:
                st.wait_stopped()
            for sy in self.syncers.values():
                sy.stop()
            self._final_flush("NVR shutdown")
            collected = 0
            for sy in self.syncers.values():
                # Shutdown is set, so an I/O error (EIO on unlink or fsync) gives up at once
                # rather than retrying. The garbage rows stay; the next start's recovery
                # (dir.py R2) unlinks their files. The other dirs and the flush go on.
                try:
                    collected += sy.collect_garbage()
                except clock.ShutdownError as e:
                    logger.warning("%s: garbage not collected at shutdown (%s); start-up "
                                   "recovery will collect it at the next start", sy.path, e)
            if collected:
                self._final_flush("NVR shutdown: garbage collected")

    def _final_flush(self, reason: str) -> None:
        """A flush at shutdown, tried a few times a second apart (a SQLite error on the
        database's disk may pass); then a one-line DbError saying what it costs, rather
        than a traceback or waiting forever."""
        for attempt in range(1, self.FINAL_FLUSH_TRIES + 1):
            try:
                self.db.flush(reason)
                return
            except sqlite3.Error as e:
                error = e
                logger.warning("flush (%s) failed, try %d of %d: %s", reason, attempt,
                               self.FINAL_FLUSH_TRIES, e)
                if attempt < self.FINAL_FLUSH_TRIES:
                    self.db.clocks.sleep(1)
        raise db.DbError(f"the shutdown flush failed ({error}); the recordings made since "
                         f"the last flush weren't committed, and the next start deletes "
                         f"their files")
