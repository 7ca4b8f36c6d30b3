"""Metrics: what nvr counts while it runs, and its Prometheus text (`GET /api/metrics`).

The wire format is Prometheus' text exposition format, version 0.0.4
(`CONTENT_TYPE`): for each family a `# HELP name text` line and a `# TYPE name
counter|gauge|histogram` line, then its samples, one a line:
`name{label="value",...} number`. Counters end in `_total`; a histogram's
samples are cumulative `name_bucket{le="..."}` lines ending with `le="+Inf"`,
then `name_sum` and `name_count` (= the +Inf bucket). Label values escape `\\`,
`"` and newline; HELP text escapes `\\` and newline. docs/api.md lists every
series; api.py's route decides who may read them.

Who counts what (each owner adds a line or two where the event already happens):
- stream.py, per frame: `StreamStats` fields are plain integers written only by
  the stream's streamer thread (one writer, so no lock; a reader sees an int
  whole under the GIL): frames, bytes, the last frame's monotonic time, and
  once a second (`StreamStats.roll`, behind one comparison a frame) a point of
  the window that the frame rate and bitrate are measured over. Per run: runs,
  connection attempts, run ends by kind (`stream.StreamError.kind`, a fixed set).
  Measured (timeit, Python 3.11 on this project's 2-core test box): 65 ns a frame
  (15 ns an integer add; `roll` 250 ns once a second), against ~280 us of PyAV's
  own demuxing a frame (docs/performance.md): 0.02 %.
- dir.py's syncer: each sample file fsync's latency (S2), files deleted (G2).
- db.py: each flush's duration, and failed flushes.
- web.py: each request's route class, status and bytes sent.
- At scrape time, from state that already exists: the recording lag (db.py's
  newest recording of each stream), dir usage (db.py) and free space (statvfs
  through dir.py's `Fs`), open connections and WebSockets (web.py), and the
  process (/proc/self: CPU seconds, RSS, threads, open files).

One `Metrics` belongs to each `db.Database` (`db.metrics`), so everything that
records reaches it, and tests that open several databases never mix counts.
Counts start at zero when nvr starts, as Prometheus expects of counters.

Locks: `Counter`/`Histogram` take their own small lock per update (HTTP
threads, syncers: a few a second); nothing here takes the database lock except
`render`'s collectors, briefly, through db.py's state (no I/O under it).
"""

from __future__ import annotations

import bisect
import collections
import math
import os
import re
import resource
import threading

import clock

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds; fsyncs of a minute's sample file and SQLite flushes are milliseconds on an
# idle disk and seconds on a busy SD card.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0)

# The frame rate and bitrate are measured over the frames of the last WINDOW_SEC.
WINDOW_SEC = 10

# `stream.StreamError.kind` and the others `stream.end_kind` gives: the `reason` label of
# nvr_stream_run_ends_total. A fixed set, every one always exported (0 until it happens).
END_KINDS = ("shutdown", "stalled", "camera_ended", "read_error", "bad_timestamps",
             "bad_stream", "io_error", "error")

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


# ---------------------------------------------------------------------------------------
# Families and their text

class Family:
    """One metric family as rendered: name, type, help and samples, each sample
    `(suffix, labels, value)` with `labels` a tuple of (name, value) pairs."""

    def __init__(self, name: str, kind: str, help_: str, labels: tuple[str, ...] = ()):
        assert _NAME.fullmatch(name) and kind in ("counter", "gauge", "histogram"), name
        assert kind != "counter" or name.endswith("_total"), name
        assert all(_LABEL.fullmatch(n) and n != "le" for n in labels), labels
        self.name, self.kind, self.help, self.labels = name, kind, help_, labels
        self.samples: list[tuple[str, tuple, float]] = []

    def add(self, value, *label_values, suffix: str = "") -> None:
        """A sample (for families filled at scrape time)."""
        self.samples.append((suffix, tuple(zip(self.labels, label_values)), value))

    def collect(self) -> "Family":
        return self


class Counter(Family):
    """A counter updated as things happen, from any thread: `inc(n, *label_values)`."""

    def __init__(self, name: str, help_: str, labels: tuple[str, ...] = ()):
        super().__init__(name, "counter", help_, labels)
        self._lock = threading.Lock()
        self._values: dict[tuple, float] = {}

    def inc(self, n=1, *label_values) -> None:
        with self._lock:
            self._values[label_values] = self._values.get(label_values, 0) + n

    def value(self, *label_values):
        with self._lock:
            return self._values.get(label_values, 0)

    def collect(self) -> Family:
        f = Family(self.name, self.kind, self.help, self.labels)
        with self._lock:
            values = dict(self._values)
        if not self.labels:
            values.setdefault((), 0)  # a lone series is there from the start
        for lv, v in sorted(values.items()):
            f.add(v, *lv)
        return f


class Histogram(Family):
    """A histogram of observations (seconds), from any thread: `observe(v, *label_values)`."""

    def __init__(self, name: str, help_: str, labels: tuple[str, ...] = (),
                 buckets: tuple[float, ...] = LATENCY_BUCKETS):
        super().__init__(name, "histogram", help_, labels)
        self.buckets = tuple(sorted(buckets))
        self._lock = threading.Lock()
        self._values: dict[tuple, list] = {}  # label values -> [counts per bucket..., sum]

    def observe(self, value: float, *label_values) -> None:
        i = bisect.bisect_left(self.buckets, value)  # le: value <= bound
        with self._lock:
            v = self._values.get(label_values)
            if v is None:
                v = self._values[label_values] = [0] * (len(self.buckets) + 1) + [0.0]
            v[i] += 1
            v[-1] += value

    def count(self, *label_values) -> int:
        """Observations so far (the _count sample)."""
        with self._lock:
            v = self._values.get(label_values)
            return sum(v[:-1]) if v else 0

    def collect(self) -> Family:
        f = Family(self.name, self.kind, self.help, self.labels)
        with self._lock:
            items = sorted((lv, list(v)) for lv, v in self._values.items())
        for lv, v in items:
            labels = tuple(zip(self.labels, lv))
            cum = 0
            for bound, n in zip(self.buckets + (math.inf,), v[:-1]):
                cum += n
                f.samples.append(("_bucket", labels + (("le", _number(bound)),), cum))
            f.samples.append(("_sum", labels, v[-1]))
            f.samples.append(("_count", labels, cum))
        return f


def _number(v) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


def _escape_label(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(families) -> str:
    """The text format of `families` (each collected once, in order)."""
    out = []
    for fam in families:
        f = fam.collect()
        help_ = f.help.replace("\\", "\\\\").replace("\n", "\\n")
        out.append(f"# HELP {f.name} {help_}\n# TYPE {f.name} {f.kind}\n")
        for suffix, labels, value in f.samples:
            text = ",".join(f'{n}="{_escape_label(str(v))}"' for n, v in labels)
            out.append(f"{f.name}{suffix}{{{text}}} {_number(value)}\n" if text
                       else f"{f.name}{suffix} {_number(value)}\n")
    return "".join(out)


# ---------------------------------------------------------------------------------------
# Per stream

class StreamStats:
    """One stream's counts, written by its streamer thread alone (stream.py).

    The per-frame path is three attribute updates and a comparison:
        st.frames += 1; st.bytes += len(data); st.last_frame_ns = now
        if now >= st.roll_at_ns: st.roll(now)
    """

    __slots__ = ("frames", "bytes", "last_frame_ns", "roll_at_ns", "runs", "attempts",
                 "ends", "_window", "_lock")

    def __init__(self):
        self.frames = 0
        self.bytes = 0
        self.last_frame_ns: int | None = None  # monotonic
        self.roll_at_ns = -(1 << 62)
        self.runs = 0          # sessions opened (stream.Streamer._record)
        self.attempts = 0      # connection attempts (stream.Streamer.run_once)
        self.ends = dict.fromkeys(END_KINDS, 0)
        # (monotonic ns, frames, bytes) after the first frame of each second.
        self._window: collections.deque = collections.deque(maxlen=WINDOW_SEC + 2)
        self._lock = threading.Lock()

    def roll(self, now_ns: int) -> None:
        """A point of the rate window (at most once a second, by the streamer)."""
        with self._lock:
            self._window.append((now_ns, self.frames, self.bytes))
        self.roll_at_ns = now_ns + clock.NANOS_PER_SEC

    def rates(self, now_ns: int) -> tuple[float, float]:
        """(frames/s, bits/s) between the oldest window point in the last WINDOW_SEC and
        the last frame; 0 when no frame came in that time."""
        with self._lock:
            window = list(self._window)
        last, frames, nbytes = self.last_frame_ns, self.frames, self.bytes
        since = now_ns - WINDOW_SEC * clock.NANOS_PER_SEC
        for t, f0, b0 in window:
            if t >= since:
                if last is None or last <= t:
                    break
                secs = (last - t) / clock.NANOS_PER_SEC
                return (frames - f0) / secs, (nbytes - b0) * 8 / secs
        return 0.0, 0.0


# ---------------------------------------------------------------------------------------
# Process

def process_facts() -> dict:
    """CPU seconds, RSS, threads and open files of this process (Linux /proc/self), and
    the open files limit: {"cpu_sec", "rss_bytes", "threads", "open_fds", "max_fds"}.
    The /proc figures are missing where /proc isn't Linux's. GET /api/metrics (below) and
    GET /api/system (system.py) show them."""
    t = os.times()
    out = {"cpu_sec": t.user + t.system}
    try:
        with open("/proc/self/statm", "rb") as fh:
            rss_pages = int(fh.read().split()[1])
        out["rss_bytes"] = rss_pages * os.sysconf("SC_PAGE_SIZE")
        with open("/proc/self/stat", "rb") as fh:
            stat = fh.read()
        # Field 20, num_threads (proc(5)); comm (field 2) may hold spaces: after its ")".
        out["threads"] = int(stat[stat.rindex(b")") + 2:].split()[17])
        out["open_fds"] = len(os.listdir("/proc/self/fd")) - 1  # less listdir's own
    except (OSError, ValueError, IndexError):
        pass  # not Linux: only the CPU time
    out["max_fds"] = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return out


_PROCESS_FAMILIES = (
    ("cpu_sec", "process_cpu_seconds_total", "counter",
     "User and system CPU time spent by the nvr process, in seconds."),
    ("rss_bytes", "process_resident_memory_bytes", "gauge", "Resident set size in bytes."),
    ("threads", "process_threads", "gauge", "Threads of the process (nvr's own and FFmpeg's)."),
    ("open_fds", "process_open_fds", "gauge", "Open file descriptors."),
    ("max_fds", "process_max_fds", "gauge",
     "The limit on open file descriptors (RLIMIT_NOFILE)."),
)


def process_families() -> list[Family]:
    """`process_facts` as families; names follow Prometheus' client libraries
    (process_*)."""
    facts = process_facts()
    out = []
    for key, name, kind, help_ in _PROCESS_FAMILIES:
        if key in facts:
            f = Family(name, kind, help_)
            f.add(facts[key])
            out.append(f)
    return out


# ---------------------------------------------------------------------------------------
# The registry of one running nvr

class Metrics:
    """Every series of one database's running system (`db.Database.metrics`)."""

    def __init__(self, clocks: clock.Clocks):
        self.clocks = clocks
        self._lock = threading.Lock()
        self._streams: dict[int, StreamStats] = {}
        self.fsync = Histogram(
            "nvr_dir_fsync_seconds",
            "Latency of each sample file's fsync (dir.py step S2), in seconds.", ("dir",))
        self.deleted = Counter(
            "nvr_dir_deleted_files_total",
            "Sample files unlinked by garbage collection (retention, abandoned recordings).",
            ("dir",))
        self.flush = Histogram(
            "nvr_flush_seconds",
            "Duration of each successful database flush (one SQLite transaction for every "
            "dir and stream), in seconds; its _count is the number of flushes.")
        self.flush_errors = Counter(
            "nvr_flush_errors_total", "Database flushes that failed (to be retried).")
        self.requests = Counter(
            "nvr_http_requests_total",
            "HTTP requests answered, by route class (api.route_class) and status.",
            ("route", "status"))
        self.sent = Counter(
            "nvr_http_response_bytes_total",
            "HTTP response body bytes sent (WebSocket bytes when the socket ends), by route "
            "class.", ("route",))

    def stream(self, stream_id: int) -> StreamStats:
        """The stream's counts, made at its first use (they outlive its streamers)."""
        with self._lock:
            st = self._streams.get(stream_id)
            if st is None:
                st = self._streams[stream_id] = StreamStats()
            return st

    def request(self, route: str, status: int, body_bytes: int) -> None:
        """One HTTP request answered (web.py)."""
        self.requests.inc(1, route, str(status))
        self.sent.inc(body_bytes, route)

    # -- rendering ---------------------------------------------------------------------

    def render(self, db, server=None) -> str:
        """Every series: streams and dirs from `db`'s state, HTTP from `server` (a
        web.Server, or None), the process."""
        return render(self._stream_families(db) + self._dir_families(db) +
                      [self.fsync, self.deleted, self.flush, self.flush_errors] +
                      self._http_families(server) + process_families())

    def _stream_families(self, db) -> list[Family]:
        L, Lr = ("camera", "type"), ("camera", "type", "reason")
        fams = {
            "frames": Family("nvr_stream_received_frames_total", "counter",
                             "Frames received from the camera and handed to the writer (not "
                             "those before a run's first key frame).", L),
            "bytes": Family("nvr_stream_received_bytes_total", "counter",
                            "Bytes of the frames received (what the sample files get).", L),
            "runs": Family("nvr_stream_runs_total", "counter",
                           "Runs started: sessions opened with the camera.", L),
            "reconnects": Family("nvr_stream_reconnects_total", "counter",
                                 "Connection attempts after the stream's first since nvr "
                                 "started (after a failed open or an ended run).", L),
            "ends": Family("nvr_stream_run_ends_total", "counter",
                           "Runs ended, by kind of reason: " + ", ".join(END_KINDS) + ".",
                           Lr),
            "age": Family("nvr_stream_last_frame_age_seconds", "gauge",
                          "Seconds since the last frame was received.", L),
            "fps": Family("nvr_stream_frames_per_second", "gauge",
                          f"Frame rate received over the last {WINDOW_SEC} s (0 if none).", L),
            "bps": Family("nvr_stream_bits_per_second", "gauge",
                          f"Bitrate received over the last {WINDOW_SEC} s (0 if none).", L),
            "lag": Family("nvr_stream_recording_lag_seconds", "gauge",
                          "Seconds between now and the end of the stream's newest "
                          "recording (growing or not): how far recording is behind.", L),
        }
        now_mono = self.clocks.monotonic()
        now_90k = self.clocks.realtime() * 90_000 // clock.NANOS_PER_SEC
        with self._lock:
            stats = dict(self._streams)
        with db.locked("metrics"):
            rows = []
            for s in db.streams.values():
                c = db.cameras.get(s.camera_id)
                if c is None:
                    continue
                if s.uncommitted:
                    r = s.uncommitted[-1]
                    end = r.start_time_90k + r.wall_duration_90k
                else:
                    end = s.range_90k[1] if s.range_90k else None
                rows.append((s.id, (c.short_name, s.type), end))
        for sid, labels, end in sorted(rows, key=lambda r: r[1]):
            if end is not None:
                fams["lag"].add((now_90k - end) / 90_000, *labels)
            st = stats.get(sid)
            if st is None:
                continue  # not recorded since nvr started
            fams["frames"].add(st.frames, *labels)
            fams["bytes"].add(st.bytes, *labels)
            fams["runs"].add(st.runs, *labels)
            fams["reconnects"].add(max(0, st.attempts - 1), *labels)
            for kind in END_KINDS:
                fams["ends"].add(st.ends[kind], *labels, kind)
            if st.last_frame_ns is not None:
                fams["age"].add((now_mono - st.last_frame_ns) / clock.NANOS_PER_SEC, *labels)
            fps, bps = st.rates(now_mono)
            fams["fps"].add(fps, *labels)
            fams["bps"].add(bps, *labels)
        return list(fams.values())

    def _dir_families(self, db) -> list[Family]:
        used = Family("nvr_dir_used_bytes", "gauge",
                      "Bytes of the dir's recordings, committed or synced, each file rounded "
                      "up to 4 KiB as retention counts them.", ("dir",))
        free = Family("nvr_dir_free_bytes", "gauge",
                      "Bytes free for nvr's user on the dir's filesystem (statvfs f_bavail).",
                      ("dir",))
        with db.locked("metrics"):
            dirs = [(d.path, d.dir) for d in db.dirs.values()]
            by_dir = dict.fromkeys(db.dirs, 0)
            for s in db.streams.values():
                if s.sample_file_dir_id in by_dir:
                    by_dir[s.sample_file_dir_id] += s.fs_bytes + s.fs_bytes_to_add
            paths = {d.id: d.path for d in db.dirs.values()}
        for dir_id, n in sorted(by_dir.items()):
            used.add(n, paths.get(dir_id, str(dir_id)))
        for path, d in sorted(dirs, key=lambda x: x[0]):
            if d is None:
                continue  # not open (nvr run opens every dir)
            try:
                st = d.fs.statvfs()
            except OSError:
                continue  # a failing disk: no sample rather than no page
            free.add(st.f_bavail * st.f_frsize, path)
        return [used, free]

    def _http_families(self, server) -> list[Family]:
        fams = [self.requests, self.sent]
        if server is not None:
            conns, sockets = server.open_counts()
            f = Family("nvr_http_open_connections", "gauge",
                       "Open HTTP connections (WebSockets included).")
            f.add(conns)
            w = Family("nvr_http_open_websockets", "gauge", "Open live view WebSockets.")
            w.add(sockets)
            fams += [f, w]
        return fams
