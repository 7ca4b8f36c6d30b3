#!/usr/bin/env python3
"""Ingest benchmark: what recording N cameras costs nvr, against ffmpeg's segmenter and
PyAV's demux floor.

    python3 bench/ingest.py [--streams 4,8,16] [--seconds 60] [--rounds 2]
        [--rotate-interval-sec 10] [--compare-tree DIR] [--profile DIR] [--stages]

For each N in --streams, against one test camera (test/camera.py's `RtspCamera`: the
real GStreamer RTSP server of test/rtsp_server.py, replaying an encoded clip, so its
own CPU is small and not counted) serving N mounts s0..sN-1 of 1920x1080 (--width,
--height), 30 fps, ~2 Mbit/s (--kbps) H.264 with a key frame every 30 frames, each
round runs, one after the other (never at once, so they don't compete for the cores):

1. the floor: a bare PyAV reader of the same N streams in its own process (this
   file run as `--reader demux URL...`: one thread per stream, `av.open(url,
   options={"rtsp_transport": "tcp"})`, iterate `demux()`, drop the packets). After
   every stream has delivered a packet and `BASELINE_WARMUP_SEC` more, its CPU time
   is measured over the window. This is the least any PyAV-based recorder can spend.
2. ffmpeg's segmenter as Frigate records (issue #16): one `ffmpeg -c copy -f segment`
   process per stream writing 10 s mp4 segments (`ffmpeg_argv` has the exact
   arguments); after every stream's first segment has bytes and BASELINE_WARMUP_SEC
   more, the CPU of all N processes summed, and the peak of their summed RSS.
3. nvr: a fresh database in a temp dir (`nvr.py init`, N cameras c0.. whose main
   stream records camera mount s<i>), `nvr.py run` as a subprocess, logging at INFO.
   Warm-up lasts until every stream has logged its first key frame and has had a
   recording committed (see "Time compression"); then, over the window: the process's
   CPU time, its peak RSS (VmRSS sampled every 0.5 s), the database commits (one
   "flush (reason): added ..." log line each) and the recordings that ended (from the
   database afterwards; each is one file fsync and one dir fsync, dir.py steps S2-S3).
4. with --compare-tree DIR, DIR's nvr the same way (say a `git archive` of an earlier
   commit): an A/B of two versions in the same rounds.

--rounds (default 2) repeats 1-4 per N: this machine is shared and its load moves, so
ratios are taken within a round, and the 1-minute load average is recorded with each
window.

CPU time is utime + stime of the process (all its threads) from /proc/PID/stat, so the
camera's own CPU is not counted. The figure compared is CPU seconds per stream-minute.

## Time compression (why --rotate-interval-sec is not 60 by default)
In production recordings rotate every 60 s and main streams have flushIfSec 120. Two
facts make a short window at those settings measure nothing but start-up:
- a run's first recording lasts one to two intervals (writer.py: "a run's first
  recording: 1-2 intervals"), so a 60 s window right after the streams open sees
  almost no recording end;
- a flush is planned flushIfSec after a recording's *start* (dir.py, `Syncer._save`),
  i.e. flushIfSec - 60 s after it ends, so the first commit comes 2-3 minutes in.
Waiting for steady state at production settings costs ~3 minutes of warm-up per N,
over 15 minutes for 1,4,8. So by default the recorder runs 6x faster in time:
`--rotate-interval-sec 10` and flushIfSec 20 (the same 2:1 ratio), so each window sees
steady-state rotations and commits. That does 6x the per-recording work (file create,
fsyncs, index rows, commits) of production, which can only raise nvr's CPU figure.
`--rotate-interval-sec 60 --flush-if-sec 120 --seconds 180` measures production
settings (about 6 minutes per N).

Expected commits: a flush is due flushIfSec after the start of the oldest finished
recording not yet committed, and commits every stream's finished recordings. So
commits come between flushIfSec - rotation and flushIfSec apart (production: every
60-120 s) whatever N; what must not happen is a commit per recording.

`--stages` (opt-in, ~3 more windows per N) runs the reader again with nvr's own
per-frame steps added one at a time (`STAGES`: nvr's av.open options; then nvr's
PyAvOpener and Frame conversion; then write(2) of each frame; then the blake2b hash), to
show where nvr's CPU beyond the baseline goes. They are an ablation, never the baseline.

Output: one table row per N and round (also as Markdown, for docs/performance.md) with
the ratios nvr/ffmpeg and nvr/floor, the machine, and with --profile a py-spy profile of nvr taken *after* each measurement window (so
it doesn't disturb the figures), summarised by function.

Needs: PyAV, ffmpeg, pytest (test/camera.py imports it), and what test/camera.py needs
for the camera (`/usr/bin/python3` with GStreamer's RTSP server; `python3 test/run.py` installs
it); --profile needs py-spy (`pip install py-spy`). Touches nothing outside a temp dir.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import importlib.util
import os
import platform
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NVR = os.path.join(REPO, "nvr.py")
CLK_TCK = os.sysconf("SC_CLK_TCK")

# The camera stream of the brief: 1080p30, ~2 Mbit/s, a key frame each second.
WIDTH, HEIGHT, FPS, KBPS, GOP = 1920, 1080, 30, 2000, 30

BASELINE_WARMUP_SEC = 5      # after every stream's first packet (the probe burst is over)
OPEN_TIMEOUT_SEC = 90        # every stream open, baseline or nvr
STOP_TIMEOUT_SEC = 60        # nvr's clean shutdown after SIGTERM
POLL_SEC = 0.5               # RSS sampling and warm-up polling


# --- /proc ---------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (every thread), from /proc/PID/stat (proc(5))."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2:].split()  # fields from 3 (state) on
    return (int(fields[14 - 3]) + int(fields[15 - 3])) / CLK_TCK


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@dataclasses.dataclass
class Window:
    """One measurement window of one process (or of several, summed)."""
    mono_start: float
    mono_end: float
    wall_start: float            # time.time(), to compare with the database's times
    wall_end: float
    cpu_s: float
    max_rss_kib: int             # peak of the summed VmRSS of the processes
    load: tuple[float, float]    # 1-minute load average at the start and at the end

    @property
    def seconds(self) -> float:
        return self.mono_end - self.mono_start


def loadavg() -> float:
    """The 1-minute load average (the machine is shared: recorded with every window)."""
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def measure(pids: int | list[int], seconds: float, check=lambda: None) -> Window:
    """CPU time and peak RSS of `pids` (summed) over `seconds`; `check()` raises if the
    run broke."""
    pids = [pids] if isinstance(pids, int) else list(pids)
    load0 = loadavg()
    cpu0, m0, w0 = sum(map(cpu_seconds, pids)), time.monotonic(), time.time()
    rss = sum(map(rss_kib, pids))
    end = m0 + seconds
    while (now := time.monotonic()) < end:
        time.sleep(min(POLL_SEC, end - now))
        rss = max(rss, sum(map(rss_kib, pids)))
        check()
    cpu1, m1, w1 = sum(map(cpu_seconds, pids)), time.monotonic(), time.time()
    return Window(m0, m1, w0, w1, cpu1 - cpu0, rss, (load0, loadavg()))


def machine() -> str:
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    import av
    return (f"{os.cpu_count()} CPUs ({model}), {mem_kib / 2**20:.1f} GiB RAM, "
            f"Linux {platform.release()}, Python {platform.python_version()}, "
            f"PyAV {av.__version__} (FFmpeg libavformat "
            f"{'.'.join(map(str, av.library_versions['libavformat']))})")


# --- a line-reading child process ---------------------------------------------------------

class Child:
    """A subprocess whose output lines are timestamped (monotonic) by a reader thread."""

    def __init__(self, name: str, argv: list[str], *, stream: str, env=None, stdin=None):
        self.name = name
        self.proc = subprocess.Popen(argv, cwd=REPO, env=env, text=True, bufsize=1,
                                     stdin=stdin if stdin is not None else subprocess.DEVNULL,
                                     stdout=subprocess.PIPE if stream == "stdout" else
                                     subprocess.DEVNULL,
                                     stderr=subprocess.PIPE if stream == "stderr" else None)
        self.lines: list[tuple[float, str]] = []
        self.tail: collections.deque[str] = collections.deque(maxlen=40)
        self.cond = threading.Condition()
        out = self.proc.stdout if stream == "stdout" else self.proc.stderr
        self.thread = threading.Thread(target=self._read, args=(out,), name=f"{name}-out",
                                       daemon=True)
        self.thread.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self, out) -> None:
        for line in out:
            line = line.rstrip("\n")
            with self.cond:
                self.lines.append((time.monotonic(), line))
                self.tail.append(line)
                self.cond.notify_all()

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(self.explain(f"{self.name} exited with status "
                                          f"{self.proc.returncode}"))

    def wait_for(self, done, timeout: float, what: str) -> None:
        """Waits until `done(lines)` is true; raises after `timeout` or if the child dies."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not done(self.lines):
                self.check()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BenchError(self.explain(f"{self.name}: no {what} after {timeout:.0f} s"))
                self.cond.wait(min(left, POLL_SEC))

    def stop(self, timeout: float = STOP_TIMEOUT_SEC) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise BenchError(self.explain(f"{self.name} ignored SIGTERM for {timeout} s"))
        self.thread.join(5)
        return self.proc.returncode

    def explain(self, what: str) -> str:
        return f"{what}; its last output:\n" + ("\n".join(self.tail) or "(nothing)")


class BenchError(Exception):
    pass


# --- the readers (this file run as `--reader STAGE URL...`) ------------------------------

# What the reader does per stream: `demux` is the baseline; the others are the --stages
# ablation, adding nvr's own code one step at a time (never part of the baseline).
STAGES = {
    "demux": "bare PyAV: demux() and drop (the baseline)",
    "options": "+ nvr's av.open (stream.PyAvOpener's): user_agent, the open timeout "
               "(PyAV's read timeout, whose interrupt callback takes the GIL each time "
               "FFmpeg polls, only where stream.StallWatch can't be used), demux of the "
               "video stream only",
    "source": "+ nvr's stream.PyAvOpener: Frame objects, Annex B -> length-prefixed, "
              "parameter sets checked and stripped on key frames",
    "write": "+ os.write(2) of each frame to a file",
    "hash": "+ blake2b (32 bytes) of each frame, as writer.py does",
}


def reader_main(stage: str, urls: list[str]) -> int:
    """One thread per stream reading it as `stage` says; packets/frames are dropped.

    Prints `OPEN i <open seconds>` at stream i's first packet and `END i <why>` when it
    ends; a `count` line on stdin is answered `COUNT n0 n1 ...` (packets so far).
    Exits when stdin closes (the bench died) or on SIGTERM.
    """
    import hashlib

    import av
    counts = [0] * len(urls)
    out = threading.Lock()
    tmp = tempfile.mkdtemp(prefix="nvr-bench-reader-") if stage in ("write", "hash") else None

    def say(line: str) -> None:
        with out:
            print(line, flush=True)

    def demux(i: int, url: str) -> None:
        t = time.monotonic()
        container = av.open(url, options={"rtsp_transport": "tcp"})
        opened = time.monotonic() - t
        for _ in container.demux():
            if counts[i] == 0:
                say(f"OPEN {i} {opened:.2f}")
            counts[i] += 1

    def options(i: int, url: str) -> None:
        sys.path.insert(0, REPO)
        import stream
        t = time.monotonic()
        # PyAvOpener's av.open, as it is (without the source and StallWatch around it).
        container, _ = stream.PyAvOpener._open(
            av, url, url, {"rtsp_transport": "tcp", "user_agent": "nvr"},
            stream.stall_watch.usable())
        opened = time.monotonic() - t
        for _ in container.demux(container.streams.video[0]):
            if counts[i] == 0:
                say(f"OPEN {i} {opened:.2f}")
            counts[i] += 1

    def nvr_source(i: int, url: str) -> None:
        sys.path.insert(0, REPO)
        import stream
        t = time.monotonic()
        src = stream.PyAvOpener().open(url)
        opened = time.monotonic() - t
        fd = os.open(os.path.join(tmp, str(i)), os.O_WRONLY | os.O_CREAT) if tmp else None
        hasher = hashlib.blake2b(digest_size=32)
        try:
            for f in src.frames():
                if counts[i] == 0:
                    say(f"OPEN {i} {opened:.2f}")
                counts[i] += 1
                if fd is not None:
                    os.write(fd, f.data)
                if stage == "hash":
                    hasher.update(f.data)
        except stream.StreamError as e:
            say(f"END {i} {e}")

    def read(i: int, url: str) -> None:
        try:
            {"demux": demux, "options": options}.get(stage, nvr_source)(i, url)
            say(f"END {i} end of stream")
        except Exception as e:  # reported to the bench, which fails the run
            say(f"END {i} {type(e).__name__}: {e}")

    for i, url in enumerate(urls):
        threading.Thread(target=read, args=(i, url), name=f"reader-{i}", daemon=True).start()
    for line in sys.stdin:
        if line.strip() == "count":
            say("COUNT " + " ".join(map(str, counts)))
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)
    os._exit(0)  # the reader threads block in FFmpeg; don't wait for them


@dataclasses.dataclass
class BaselineResult:
    window: Window
    packets: int                 # demuxed by all streams in the window
    open_s: list[float]          # av.open() time per stream


def run_reader(urls: list[str], seconds: float, stage: str = "demux") -> BaselineResult:
    n = len(urls)
    child = Child(f"{stage} reader", [sys.executable, os.path.abspath(__file__),
                                      "--reader", stage, *urls], stream="stdout",
                  stdin=subprocess.PIPE)
    try:
        child.wait_for(lambda ls: sum(l.startswith("OPEN ") for _, l in ls) == n,
                       OPEN_TIMEOUT_SEC, "first packet on every stream")
        time.sleep(BASELINE_WARMUP_SEC)

        def counts() -> int:
            seen = len(child.lines)
            child.proc.stdin.write("count\n")
            child.proc.stdin.flush()
            child.wait_for(lambda ls: any(l.startswith("COUNT ") for _, l in ls[seen:]),
                           10, "answer to count")
            line = next(l for _, l in child.lines[seen:] if l.startswith("COUNT "))
            return sum(map(int, line.split()[1:]))

        def check():
            child.check()
            ended = [l for _, l in child.lines if l.startswith("END ")]
            if ended:
                raise BenchError(child.explain(f"{stage} reader: stream ended: {ended[0]}"))

        before = counts()
        window = measure(child.pid, seconds, check)
        packets = counts() - before
        check()
        opens = [float(l.split()[2]) for _, l in child.lines if l.startswith("OPEN ")]
        return BaselineResult(window, packets, opens)
    finally:
        child.proc.stdin.close()  # the reader's cue to clean up and exit
        try:
            child.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        child.stop(10)


# --- ffmpeg's segmenter (Frigate's recording) -------------------------------------------

def ffmpeg_argv(url: str, out_dir: str) -> list[str]:
    """Frigate's recording process for one camera: `ffmpeg -c copy -f segment`, 10 s mp4
    segments named by wall time: the arguments issue #16 gives, plus `-nostdin`
    (Frigate's other input flags, such as `-use_wallclock_as_timestamps`, left out)."""
    return ["ffmpeg", "-hide_banner", "-loglevel", "warning", "-nostdin",
            "-rtsp_transport", "tcp", "-timeout", "5000000", "-i", url,
            "-c", "copy", "-f", "segment", "-segment_time", "10", "-segment_format", "mp4",
            "-reset_timestamps", "1", "-strftime", "1",
            os.path.join(out_dir, "%Y%m%d%H%M%S.mp4")]


@dataclasses.dataclass
class FfmpegResult:
    window: Window
    bytes: int                   # written to segment files in the window, all streams
    segments: int                # segment files begun in the window


def _dir_stats(dirs: list[str]) -> tuple[int, int]:
    """(bytes, files) under `dirs`."""
    size = files = 0
    for d in dirs:
        for e in os.scandir(d):
            size += e.stat().st_size
            files += 1
    return size, files


def run_ffmpeg(urls: list[str], seconds: float) -> FfmpegResult:
    """One `ffmpeg -c copy -f segment` process per stream (ffmpeg_argv), measured together:
    CPU summed over the processes, RSS as the peak of their summed VmRSS. Warm-up: until
    every stream's first segment has bytes, and BASELINE_WARMUP_SEC more."""
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise BenchError("the ffmpeg baseline needs ffmpeg: apt-get install ffmpeg")
    tmp = tempfile.mkdtemp(prefix="nvr-bench-ffmpeg-")
    dirs = [os.path.join(tmp, str(i)) for i in range(len(urls))]
    children: list[Child] = []
    try:
        for d, url in zip(dirs, urls):
            os.mkdir(d)
            children.append(Child(f"ffmpeg {os.path.basename(d)}", ffmpeg_argv(url, d),
                                  stream="stderr"))

        def check():
            for c in children:
                c.check()
        deadline = time.monotonic() + OPEN_TIMEOUT_SEC
        while not all(_dir_stats([d])[0] > 0 for d in dirs):
            check()
            if time.monotonic() > deadline:
                raise BenchError(f"ffmpeg: no segment bytes on every stream after "
                                 f"{OPEN_TIMEOUT_SEC} s")
            time.sleep(POLL_SEC)
        time.sleep(BASELINE_WARMUP_SEC)
        b0, f0 = _dir_stats(dirs)
        window = measure([c.pid for c in children], seconds, check)
        b1, f1 = _dir_stats(dirs)
        for c in children:
            rc = c.stop(10)
            if rc not in (0, 255, -signal.SIGTERM):  # 255: ffmpeg's exit on SIGTERM
                raise BenchError(c.explain(f"{c.name} exited with status {rc}"))
        return FfmpegResult(window, b1 - b0, f1 - f0)
    finally:
        for c in children:
            if c.proc.poll() is None:
                c.proc.kill()
                c.proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


# --- nvr -------------------------------------------------------------------------------

FIRST_KEY_RE = re.compile(r": (\S+): first key frame; recording$")
OPENING_RE = re.compile(r": (\S+): opening ")
FLUSH_RE = re.compile(r": flush \((?P<reason>.*?)\): added (?P<n>\d+) recording\(s\) "
                      r"\((?P<ids>[^)]*)\)")


@dataclasses.dataclass
class NvrResult:
    window: Window
    commits: int                 # flush log lines in the window
    committed: int               # recordings those flushes added
    ended: int                   # recordings whose end falls in the window (database)
    recorded_fps: float          # frames / wall seconds over every finished recording
    warmup_s: float
    reopens: int                 # "opening" lines beyond the first per stream
    warnings: list[str]


def nvr_cli(*args: str, repo: str = REPO) -> None:
    r = subprocess.run([sys.executable, os.path.join(repo, "nvr.py"), *args], cwd=repo,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise BenchError(f"nvr.py {' '.join(args)} failed ({r.returncode}):\n{r.stderr}")


def setup_nvr(tmp: str, urls: list[str], flush_if_sec: int, repo: str = REPO) -> str:
    """A fresh database under `tmp` recording `urls`; returns the config file's path."""
    db_dir = os.path.join(tmp, "db")
    nvr_cli("init", "--db-dir", db_dir, "--sample-file-dir", os.path.join(tmp, "sample"),
            repo=repo)
    for i, url in enumerate(urls):
        nvr_cli("config", "camera", "add", f"c{i}", "--db-dir", db_dir, repo=repo)
        nvr_cli("config", "stream", "add", f"c{i}", "main", "--db-dir", db_dir, "--url", url,
                "--record", "--dir", "1", "--retain-bytes", "10G",
                "--flush-if-sec", str(flush_if_sec), repo=repo)
    config = os.path.join(tmp, "nvr.toml")
    with open(config, "w") as f:
        # binds are parsed but nothing listens yet; port 0 can't collide anyway.
        f.write(f'dbDir = "{db_dir}"\n\n[[binds]]\nipv4 = "127.0.0.1:0"\n')
    return config


def run_nvr(urls: list[str], seconds: float, rotate_sec: int, flush_if_sec: int,
            profile_dir: str | None, repo: str = REPO) -> NvrResult:
    """nvr as `repo` has it (default: this tree; --compare-tree: another version)."""
    n = len(urls)
    tmp = tempfile.mkdtemp(prefix=f"nvr-bench-{n}-")
    try:
        config = setup_nvr(tmp, urls, flush_if_sec, repo)
        env = dict(os.environ, NVR_LOG="INFO")
        t0 = time.monotonic()
        child = Child("nvr", [sys.executable, os.path.join(repo, "nvr.py"), "run",
                              "--config", config, "--rotate-interval-sec", str(rotate_sec)],
                      stream="stderr", env=env)
        try:
            child.wait_for(lambda ls: len({m[1] for _, l in ls
                                           if (m := FIRST_KEY_RE.search(l))}) == n,
                           OPEN_TIMEOUT_SEC, "first key frame on every stream")

            def committed_streams(ls) -> set[str]:
                return {i.split("/")[0] for _, l in ls if (m := FLUSH_RE.search(l))
                        for i in m["ids"].split(", ") if "/" in i}
            # Past every stream's first (longer) recording and the first commits.
            child.wait_for(lambda ls: len(committed_streams(ls)) == n,
                           3 * rotate_sec + flush_if_sec + 60,
                           "committed recording of every stream")
            warmup = time.monotonic() - t0
            window = measure(child.pid, seconds, child.check)
            if profile_dir:
                profile(child.pid, seconds, os.path.join(profile_dir, f"nvr-{n}.txt"))
            rc = child.stop()
            if rc != 0:
                raise BenchError(child.explain(f"nvr exited with status {rc}"))
        finally:
            if child.proc.poll() is None:
                child.proc.kill()
                child.proc.wait()
        commits = committed = 0
        for t, line in child.lines:
            if window.mono_start <= t <= window.mono_end and (m := FLUSH_RE.search(line)):
                commits += 1
                committed += int(m["n"])
        opening = collections.Counter(m[1] for _, l in child.lines if (m := OPENING_RE.search(l)))
        warnings = [l for _, l in child.lines if " WARNING " in l or " ERROR " in l]
        conn = sqlite3.connect(f"file:{os.path.join(tmp, 'db', 'db')}?mode=ro", uri=True)
        try:
            w0, w1 = round(window.wall_start * 90000), round(window.wall_end * 90000)
            # A recording cut by our SIGTERM ends at its last frame, inside the window,
            # but is fsynced after it: not counted.
            ended = conn.execute(
                "select count(*) from recording where start_time_90k + wall_duration_90k > ? "
                "and start_time_90k + wall_duration_90k <= ? "
                "and coalesce(end_reason, '') != 'NVR shutdown'", (w0, w1)).fetchone()[0]
            frames, wall = conn.execute(
                "select sum(video_samples), sum(wall_duration_90k) from recording").fetchone()
        finally:
            conn.close()
        return NvrResult(window, commits, committed, ended,
                         (frames or 0) * 90000 / wall if wall else 0.0, warmup,
                         sum(c - 1 for c in opening.values()), warnings)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- profile --------------------------------------------------------------------------

def profile(pid: int, seconds: float, path: str) -> None:
    """py-spy samples `pid` into collapsed stacks at `path`. It stops the process
    briefly per sample, so this runs after the measurement window, never during it.

    `--gil`: only the thread holding the GIL is sampled, i.e. where the interpreter
    spends CPU. Without it py-spy (0.4.3, Python 3.11, this kernel) counted threads
    blocked in `Condition.wait` and in FFmpeg's `poll` as busy, and `--native` (for
    FFmpeg's frames) disables its idle detection altogether. Time in FFmpeg and in
    system calls with the GIL released is not seen: `perf` shows that split (see
    docs/performance.md)."""
    exe = shutil.which("py-spy")
    if exe is None:
        raise BenchError("--profile needs py-spy: pip install py-spy")
    r = subprocess.run([exe, "record", "--pid", str(pid), "--duration", str(int(seconds)),
                        "--rate", "1000", "--gil", "--format", "raw", "--output", path],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise BenchError(f"py-spy failed ({r.returncode}): {r.stderr.strip()[-2000:]}")


def _frame_name(frame: str) -> str:
    # "func (file.py:123)" -> "file.py:func"; native "0x7f.. (libc.so.6)" -> "[libc.so.6]".
    m = re.match(r"(.*) \((.*?)(?::\d+)?\)$", frame)
    if not m:
        return frame
    func, where = m[1], os.path.basename(m[2])
    if func.startswith("0x"):
        return f"[{where}]"
    return f"{where}:{func}"


def summarize_profile(path: str, top: int = 18) -> str:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    self_, incl = collections.Counter(), collections.Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            count = int(count)
            frames = [_frame_name(fr) for fr in stack.split(";")]
            total += count
            self_[frames[-1]] += count
            for name in set(frames):
                incl[name] += count
    if not total:
        return "(no samples)"
    lines = [f"{total} samples; self time (where the CPU is):"]
    lines += [f"  {100 * c / total:5.1f} %  {name}" for name, c in self_.most_common(top)]
    lines.append("inclusive (time in the function and what it calls):")
    lines += [f"  {100 * c / total:5.1f} %  {name}" for name, c in incl.most_common(top)]
    return "\n".join(lines)


# --- the camera and the run -----------------------------------------------------------

def load_camera_module():
    """test/camera.py by path (test/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "nvr_test_camera", os.path.join(REPO, "test", "camera.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def per_stream_min(n: int, w: Window) -> float:
    """CPU seconds per stream-minute: CPU seconds / (N x window minutes)."""
    return w.cpu_s / (n * w.seconds / 60)


@dataclasses.dataclass
class Row:
    """One round at N streams: the floor, ffmpeg's segmenter and nvr, one after another."""
    n: int
    round: int
    baseline: BaselineResult
    ffmpeg: FfmpegResult | None
    nvr: NvrResult
    stages: dict[str, BaselineResult] = dataclasses.field(default_factory=dict)
    other: NvrResult | None = None   # --compare-tree's nvr

    def cpu(self, which: str) -> float:
        return per_stream_min(self.n, getattr(self, which).window)

    @property
    def ratio(self) -> float:
        """nvr / the demux floor."""
        return self.cpu("nvr") / self.cpu("baseline")

    @property
    def ratio_ffmpeg(self) -> float | None:
        """nvr / ffmpeg's segmenter."""
        return self.cpu("nvr") / self.cpu("ffmpeg") if self.ffmpeg else None


def table(rows: list[Row]) -> str:
    head = ("| N | round | floor CPU s/stream-min | ffmpeg CPU s/stream-min "
            "| nvr CPU s/stream-min | nvr/ffmpeg (goal ≤ 1.0) | nvr/floor "
            "| floor RSS MiB | ffmpeg RSS MiB | nvr RSS MiB "
            "| nvr commits/min | nvr recordings/min | load (1 min) |")
    out = [head, "|---:" * (head.count("|") - 1) + "|"]
    for r in rows:
        nm = r.nvr.window.seconds / 60
        ws = [r.baseline.window, r.nvr.window] + ([r.ffmpeg.window] if r.ffmpeg else [])
        loads = [x for w in ws for x in w.load]
        ff = r.ffmpeg
        out.append(f"| {r.n} | {r.round} | {r.cpu('baseline'):.3f} "
                   f"| {r.cpu('ffmpeg') if ff else float('nan'):.3f} | {r.cpu('nvr'):.3f} "
                   f"| {r.ratio_ffmpeg if ff else float('nan'):.2f} | {r.ratio:.2f} "
                   f"| {r.baseline.window.max_rss_kib / 1024:.0f} "
                   f"| {ff.window.max_rss_kib / 1024 if ff else float('nan'):.0f} "
                   f"| {r.nvr.window.max_rss_kib / 1024:.0f} "
                   f"| {r.nvr.commits / nm:.1f} | {r.nvr.ended / nm:.1f} "
                   f"| {min(loads):.1f}-{max(loads):.1f} |")
    if any(r.other for r in rows):
        out += ["", "| N | round | nvr (--compare-tree) CPU s/stream-min | nvr CPU s/stream-min "
                "| nvr / compared | compared/ffmpeg | compared RSS MiB |",
                "|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            if r.other:
                out.append(f"| {r.n} | {r.round} | {r.cpu('other'):.3f} | {r.cpu('nvr'):.3f} "
                           f"| {r.cpu('nvr') / r.cpu('other'):.2f} "
                           f"| {r.cpu('other') / r.cpu('ffmpeg') if r.ffmpeg else float('nan'):.2f} "
                           f"| {r.other.window.max_rss_kib / 1024:.0f} |")
    return "\n".join(out)


def stages_table(rows: list[Row]) -> str:
    """CPU s per stream-minute of each --stages reader, then nvr itself."""
    head = "| N | " + " | ".join(STAGES) + " | nvr |"
    out = [head, "|---:" * (head.count("|") - 1) + "|"]
    for r in rows:
        if not r.stages:
            continue
        cells = [per_stream_min(r.n, r.baseline.window)]
        cells += [per_stream_min(r.n, r.stages[s].window) for s in list(STAGES)[1:]]
        cells.append(per_stream_min(r.n, r.nvr.window))
        out.append(f"| {r.n} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description="Record N 1080p30 test-camera streams with nvr, with ffmpeg's segmenter "
                    "(Frigate's recording) and read them with a bare PyAV demuxer; compare "
                    "CPU per stream-minute and RSS. See the module docstring and "
                    "docs/performance.md.")
    p.add_argument("--streams", default="4,8,16",
                   help="comma-separated stream counts N (default 4,8,16)")
    p.add_argument("--seconds", type=float, default=60,
                   help="measurement window per run, seconds (default 60; 20 for a quick look)")
    p.add_argument("--rounds", type=int, default=2,
                   help="rounds per N, each running the floor, ffmpeg and nvr one after "
                        "another (default 2): ratios are taken within a round")
    p.add_argument("--no-ffmpeg", action="store_true",
                   help="leave out ffmpeg's segmenter")
    p.add_argument("--width", type=int, default=WIDTH)
    p.add_argument("--height", type=int, default=HEIGHT)
    p.add_argument("--kbps", type=int, default=KBPS)
    p.add_argument("--rotate-interval-sec", type=int, default=10,
                   help="nvr's recording length (default 10: time compressed 6x, see "
                        "'Time compression' in the docstring; production is 60)")
    p.add_argument("--flush-if-sec", type=int, default=None,
                   help="the streams' flushIfSec (default: twice the rotation, as production's "
                        "120 to 60)")
    p.add_argument("--clip-dir", help="keep the camera's encoded clip here across runs "
                                      "(default: a temp dir for this run)")
    p.add_argument("--profile", metavar="DIR",
                   help="after each nvr window, profile nvr with py-spy for as long again; "
                        "collapsed stacks go to DIR/nvr-N.txt, a summary to stdout")
    p.add_argument("--stages", action="store_true",
                   help="also run readers doing part of nvr's per-frame work (" +
                        ", ".join(list(STAGES)[1:]) + "; each adds to the previous), to see "
                        "where nvr's CPU beyond the baseline goes (first round only)")
    p.add_argument("--compare-tree", metavar="DIR",
                   help="also run the nvr of another source tree (e.g. `git archive` of an "
                        "earlier commit) in each round, after this tree's: an A/B in one run")
    p.add_argument("--reader", nargs="+", metavar="ARG", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.reader:
        return reader_main(args.reader[0], args.reader[1:])
    ns = [int(x) for x in args.streams.split(",") if x.strip()]
    flush_if_sec = args.flush_if_sec if args.flush_if_sec is not None else \
        2 * args.rotate_interval_sec
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)

    camera = load_camera_module()
    reason = camera.unavailable_reason()
    if reason:
        print(f"error: {reason}", file=sys.stderr)
        return 1
    started = datetime.datetime.now(datetime.timezone.utc)
    print(f"machine: {machine()}")
    print(f"camera: N mounts of {args.width}x{args.height} {FPS} fps ~{args.kbps} kbit/s "
          f"H.264, GOP {GOP}; window {args.seconds:g} s; nvr rotation "
          f"{args.rotate_interval_sec} s, flushIfSec {flush_if_sec}; {args.rounds} round(s) "
          f"per N", flush=True)
    if not args.no_ffmpeg:
        print("ffmpeg (one per stream): " + " ".join(ffmpeg_argv("URL", "DIR")), flush=True)
    clip_tmp = None
    clip_dir = args.clip_dir
    if clip_dir is None:
        clip_dir = clip_tmp = tempfile.mkdtemp(prefix="nvr-bench-clips-")
    rows: list[Row] = []
    try:
        for n in ns:
            streams = [camera.Stream(f"s{i}", "h264", args.width, args.height, FPS, args.kbps,
                                     GOP) for i in range(n)]
            with camera.RtspCamera(streams, clip_dir=clip_dir) as cam:
                urls = [cam.url(s.name) for s in streams]
                for rnd in range(1, args.rounds + 1):
                    b = run_reader(urls, args.seconds)
                    print(f"N={n} round {rnd} floor: {b.window.cpu_s:.2f} CPU s in "
                          f"{b.window.seconds:.1f} s, "
                          f"{b.packets / b.window.seconds / n:.1f} packets/s per stream, "
                          f"av.open {min(b.open_s):.1f}-{max(b.open_s):.1f} s, "
                          f"load {b.window.load[0]:.1f}", flush=True)
                    f = None
                    if not args.no_ffmpeg:
                        f = run_ffmpeg(urls, args.seconds)
                        print(f"N={n} round {rnd} ffmpeg: {f.window.cpu_s:.2f} CPU s in "
                              f"{f.window.seconds:.1f} s, "
                              f"{f.bytes * 8 / f.window.seconds / n / 1000:.0f} kbit/s per "
                              f"stream written, {f.segments} segment(s) begun, "
                              f"load {f.window.load[0]:.1f}", flush=True)
                    stages = {}
                    for stage in list(STAGES)[1:] if args.stages and rnd == 1 else []:
                        stages[stage] = run_reader(urls, args.seconds, stage)
                        print(f"N={n} stage {stage}: {stages[stage].window.cpu_s:.2f} CPU s "
                              f"in {stages[stage].window.seconds:.1f} s", flush=True)
                    r = run_nvr(urls, args.seconds, args.rotate_interval_sec, flush_if_sec,
                                args.profile if rnd == 1 else None)
                    print(f"N={n} round {rnd} nvr: {r.window.cpu_s:.2f} CPU s in "
                          f"{r.window.seconds:.1f} s after {r.warmup_s:.0f} s warm-up; "
                          f"{r.commits} commit(s) adding {r.committed} recording(s), "
                          f"{r.ended} recording(s) ended; {r.recorded_fps:.2f} frames/s "
                          f"recorded; {r.reopens} reconnect(s), {len(r.warnings)} "
                          f"warning(s), load {r.window.load[0]:.1f}", flush=True)
                    for w in r.warnings[:5]:
                        print(f"  nvr: {w}")
                    other = None
                    if args.compare_tree:
                        other = run_nvr(urls, args.seconds, args.rotate_interval_sec,
                                        flush_if_sec, None, os.path.abspath(args.compare_tree))
                        print(f"N={n} round {rnd} nvr of {args.compare_tree}: "
                              f"{other.window.cpu_s:.2f} CPU s in {other.window.seconds:.1f} s; "
                              f"{other.recorded_fps:.2f} frames/s recorded, load "
                              f"{other.window.load[0]:.1f}", flush=True)
                    rows.append(Row(n, rnd, b, f, r, stages, other))
    finally:
        if clip_tmp:
            shutil.rmtree(clip_tmp, ignore_errors=True)
    rf = args.rotate_interval_sec
    print()
    print(f"{started:%Y-%m-%d %H:%M} UTC; CPU s per stream-minute = CPU seconds / "
          f"(N x window minutes); RSS: peak of the summed VmRSS (ffmpeg: all N processes); "
          f"load: 1-minute load average at the windows' starts and ends")
    print(f"commits: due flushIfSec after the start of the oldest uncommitted recording, "
          f"each commits all finished ones, so they come {flush_if_sec - rf}-{flush_if_sec} s "
          f"apart whatever N: {60 / flush_if_sec:.1f}-{60 / max(1, flush_if_sec - rf):.1f}/min "
          f"here (production, 60 s and 120 s: 0.5-1/min)")
    print()
    print(table(rows))
    if args.stages:
        print("\nstages (CPU s per stream-minute; each reader adds a step to the one before):")
        for name, what in STAGES.items():
            print(f"  {name}: {what}")
        print()
        print(stages_table(rows))
    if args.profile:
        for n in ns:
            path = os.path.join(args.profile, f"nvr-{n}.txt")
            print(f"\nprofile of nvr, N={n} ({path}):")
            print(summarize_profile(path))
    print()
    for n in ns:
        rs = [r for r in rows if r.n == n]
        line = f"N={n}: nvr/floor " + ", ".join(f"{r.ratio:.2f}" for r in rs)
        if not args.no_ffmpeg:
            line += "; nvr/ffmpeg " + ", ".join(f"{r.ratio_ffmpeg:.2f}" for r in rs)
        line += f"; nvr RSS peak {max(r.nvr.window.max_rss_kib for r in rs) / 1024:.0f} MiB"
        print(line)
    if not args.no_ffmpeg:
        missed = [r.n for r in rows if r.ratio_ffmpeg > 1.0]
        print("CPU goal (nvr <= 1.0 x ffmpeg's segmenter, every round): "
              + (f"missed for N = {', '.join(map(str, sorted(set(missed))))}" if missed
                 else "met"))
    big = [r for r in rows if r.n >= 16]
    if big:
        peak = max(r.nvr.window.max_rss_kib for r in big) / 1024
        print(f"RSS goal (nvr < 100 MiB at 16 streams): {'met' if peak < 100 else 'missed'} "
              f"({peak:.0f} MiB)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
