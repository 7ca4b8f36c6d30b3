#!/usr/bin/env python3
"""Start-up benchmark: how long `nvr.py run` takes to record and answer with years of video.

    python3 bench/startup.py [--stream-years 0,1,4,16] [--runs 3] [--files]
                             [--code DIR] [--dir DIR] [--keep] [--zone ZONE]

Issue #16's first goal: with 4 stream-years of recordings in the database, `run` records
and the API answers within 2 s of starting on this machine, and stays near that with 16.

What it does:
1. Builds one database per size N in --stream-years (once per run, under a temp dir):
   `db.init`, one sample file dir, N streams (cameras c0, c1, ... with a main and a sub
   stream each; one camera with only main for N = 1), each set to record from
   rtsp://127.0.0.1:9/ (nothing listens: each streamer's connect fails at once and
   retries every second, so the bench needs no camera), one video sample entry per
   stream, and then, on a plain sqlite3 connection in one transaction, a year (2025 in
   --zone) of one-minute `recording` rows per stream as bench/api.py makes them (runs of
   1-720 recordings, 1-10 s apart; a run's last recording has the trailing-zero flag and
   an end reason), with `recording_integrity` rows and the streams' `cum_*` counters to
   match. `recording_playback` rows (the ~5.4 KB `video_index` each) are left out:
   start-up never reads them, and they would make the 16 stream-year database ~50 GB.
   So the database is smaller than a real one by that (its size is printed), and the
   covering index sits in fewer pages than it would; all figures are with a warm page
   cache. With --files, every recording also gets its (empty) sample file, so start-up
   recovery (dir.py R1: list the dir) sees a real dir's names; that takes ~17-60 s and
   525,600 inodes per stream-year to build (so 16 stream-years with files, 8.4 million
   inodes, is left to those who ask for it).
2. For each size, --runs times: starts `<code>/nvr.py run --config` as a subprocess
   (its own Python, logging at INFO to a file) with NOTIFY_SOCKET pointing at a socket
   this script reads, and measures from the spawn: READY=1 (the database open, the
   dirs' recovery, the recorder's initial rotation and threads, the HTTP binds: after
   it the streams record and the API answers); then, on one connection, the first
   `GET /api/` and `GET /api/?days=true` (each timed from its request to its whole body;
   "answered" is READY plus both); then polls `/api/?days=true` every 50 ms until every
   stream says `totalsComplete` (db.py "Loading totals": the totals and days are summed
   in the background after READY; code without the field is complete at READY). Then
   SIGTERM and wait for a clean exit. Also times `db.Database.open_dir` alone in a
   fresh process (read-only, so it writes nothing; loading every total before it
   returns, as the CLI's opens do). N = 0 (an empty database) is the floor: Python's
   start and imports.
3. Prints a table (also Markdown for docs/performance.md) of medians over the runs.

--code points at another checkout of nvr (e.g. an export of an older commit: `git
archive COMMIT | tar -x -C /tmp/nvr-before`) to measure it against the same databases.
--dir keeps and reuses the built databases (and implies --keep).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import http.client
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import clock  # noqa: E402
import db  # noqa: E402
import recording  # noqa: E402

ROWS = 525_600                     # one-minute recordings in a (non-leap) year
RECORDING_MEDIA_90K = 60 * 90_000
MAX_RUN = 720                      # recordings per run: 1..720, mean ~6 h
MAX_GAP_SEC = 10                   # between runs
GOAL_SEC = 2.0
VSE_DATA = b"\x00\x00\x00\x66avc1" + bytes(94)
BYTES = 15_000_000                 # ~2 Mbit/s for a minute


def build(base: str, n_streams: int, zone: str, files: bool) -> dict:
    """A database under `base` with a year of recordings for each of `n_streams`."""
    db_dir = os.path.join(base, "db")
    sample = os.path.join(base, "sample")
    clocks = clock.RealClocks()
    db.init(db_dir, clocks)
    d = db.Database.open_dir(db_dir, clocks)
    streams = []
    try:
        dir_id = d.add_sample_file_dir(sample)
        for i in range(n_streams):
            cam = i // 2 if n_streams > 1 else 0
            if i % 2 == 0:
                camera_id = d.add_camera(f"c{cam}", {"description": "bench/startup.py"})
            type_ = "main" if i % 2 == 0 else "sub"
            sid = d.add_stream(camera_id, type_, {
                "mode": "record", "url": f"rtsp://127.0.0.1:9/{i}", "rtspTransport": "tcp",
                "retainBytes": 1 << 50, "flushIfSec": 120}, dir_id)
            vse = d.insert_video_sample_entry(1920, 1080, "avc1.640028",
                                              VSE_DATA + i.to_bytes(4, "big"))
            streams.append((sid, vse))
        d.flush("bench/startup.py setup")
        open_id = d.open.id
    finally:
        d.close()

    y0 = int(datetime.datetime(2025, 1, 1, tzinfo=recording.server_zone()).timestamp())
    lock_fd = db.lock_db_dir(db_dir, read_only=False)
    conn = sqlite3.connect(os.path.join(db_dir, db.DB_FILENAME), isolation_level=None)
    dfd = os.open(sample, os.O_RDONLY | os.O_DIRECTORY)
    try:
        conn.execute("pragma journal_mode = off")
        conn.execute("pragma synchronous = off")
        conn.execute("begin")
        for k, (sid, vse) in enumerate(streams):
            rng = random.Random(k)
            rows, integ = [], []
            t = y0 * 90_000 + rng.randrange(60 * 90_000)
            cum_media = cum_runs = 0
            i = 0
            while i < ROWS:
                n = min(rng.randint(1, MAX_RUN), ROWS - i)
                t += rng.randint(1, MAX_GAP_SEC) * 90_000
                for off in range(n):
                    last = off == n - 1
                    wall = RECORDING_MEDIA_90K + rng.randrange(-3, 4) * 3000
                    cid = (sid << 32) | i
                    rows.append((cid, open_id, sid, off, 1 if last else 0,
                                 BYTES + rng.randrange(-99999, 99999), t, cum_media, cum_runs,
                                 wall, 0, 1800, 60, vse,
                                 "camera stream ended: connection reset by peer" if last
                                 else None))
                    integ.append((cid, None if off == 0 else rng.randrange(-100, 101),
                                  hashlib.blake2b(cid.to_bytes(8, "big"), digest_size=32).digest()))
                    cum_media += wall
                    cum_runs += off == 0
                    t += wall
                    i += 1
            conn.executemany(
                "insert into recording (composite_id, open_id, stream_id, run_offset, flags, "
                "sample_file_bytes, start_time_90k, prev_media_duration_90k, prev_runs, "
                "wall_duration_90k, media_duration_delta_90k, video_samples, video_sync_samples, "
                "video_sample_entry_id, end_reason) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
                "?, ?, ?)", rows)
            conn.executemany("insert into recording_integrity (composite_id, "
                             "local_time_delta_90k, sample_file_blake2b_32) values (?, ?, ?)",
                             integ)
            conn.execute("update stream set cum_recordings = ?, cum_media_duration_90k = ?, "
                         "cum_runs = ? where id = ?", (ROWS, cum_media, cum_runs, sid))
            if files:
                for r in rows:
                    os.close(os.open("%016x" % r[0], os.O_CREAT | os.O_WRONLY | os.O_EXCL,
                                     0o600, dir_fd=dfd))
        conn.execute("commit")
        conn.execute("pragma journal_mode = wal")
    finally:
        os.close(dfd)
        conn.close()
        os.close(lock_fd)
    size = os.path.getsize(os.path.join(db_dir, db.DB_FILENAME))
    return {"db_dir": db_dir, "streams": n_streams, "bytes": size}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed_get(conn: http.client.HTTPConnection, path: str) -> tuple[float, bytes]:
    t0 = time.perf_counter()
    conn.request("GET", path)
    r = conn.getresponse()
    body = r.read()
    if r.status != 200:
        raise SystemExit(f"GET {path}: {r.status} {body[:200]!r}")
    return time.perf_counter() - t0, body


def measure_run(code: str, base: str, info: dict, env: dict, run_no: int) -> dict:
    """One `nvr.py run`: seconds from spawn to READY=1 and to the two answers."""
    port = free_port()
    cfg = os.path.join(base, "nvr.toml")
    with open(cfg, "w") as f:
        f.write(f'dbDir = "{info["db_dir"]}"\n[[binds]]\nipv4 = "127.0.0.1:{port}"\n'
                'allowUnauthenticatedPermissions = { viewVideo = true }\n')
    sock_path = os.path.join(base, "notify.sock")
    if os.path.exists(sock_path):
        os.unlink(sock_path)
    ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    ns.bind(sock_path)
    ns.settimeout(300)
    log = open(os.path.join(base, f"run{run_no}.log"), "wb")
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, os.path.join(code, "nvr.py"), "run", "--config", cfg],
                         env={**env, "NOTIFY_SOCKET": sock_path}, stdout=log, stderr=log)
    try:
        while True:
            msg = ns.recv(4096).decode()
            if "READY=1" in msg:
                break
        ready = time.perf_counter() - t0
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        api, _ = timed_get(conn, "/api/")
        days, body = timed_get(conn, "/api/?days=true")
        answered = time.perf_counter() - t0
        j = json.loads(body)
        # Then until every stream's totals are complete (db.py "Loading totals"; code
        # without the field has them complete at READY), polling every 50 ms.
        while not all(s.get("totalsComplete", True) for c in j["cameras"]
                      for s in c["streams"].values()):
            time.sleep(0.05)
            j = json.loads(timed_get(conn, "/api/?days=true")[1])
        complete = time.perf_counter() - t0
        n_days = sum(len(s.get("days") or {}) for c in j["cameras"]
                     for s in c["streams"].values())
        conn.close()
    finally:
        p.send_signal(signal.SIGTERM)
        rc = p.wait(timeout=300)
        ns.close()
        log.close()
    if rc != 0:
        raise SystemExit(f"nvr.py run exited {rc}; see {log.name}")
    return {"ready": ready, "api": api, "days": days, "answered": answered,
            "complete": complete, "n_days": n_days}


OPEN_SNIPPET = """
import sys, time
sys.path.insert(0, sys.argv[1])
import clock, db
t0 = time.perf_counter()
d = db.Database.open_dir(sys.argv[2], clock.RealClocks(), read_only=True)
print(time.perf_counter() - t0)
d.close()
"""


def measure_open(code: str, info: dict, env: dict) -> float:
    out = subprocess.run([sys.executable, "-c", OPEN_SNIPPET, code, info["db_dir"]], env=env,
                         check=True, capture_output=True, text=True).stdout
    return float(out.split()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stream-years", default="0,1,4,16",
                    help="database sizes: streams with a year of recordings each")
    ap.add_argument("--runs", type=int, default=3, help="starts per size (medians reported)")
    ap.add_argument("--files", action="store_true", help="create every recording's sample file")
    ap.add_argument("--code", default=ROOT,
                    help="the nvr checkout(s) to run, comma-separated, measured in turn "
                         "within each run (default: this one)")
    ap.add_argument("--zone", default="America/Los_Angeles", help="the server's time zone")
    ap.add_argument("--dir", help="build in (and keep, and reuse) this directory")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    recording.set_server_zone(args.zone)
    env = {**os.environ, "TZ": args.zone}
    env.pop("NOTIFY_SOCKET", None)
    sizes = [int(x) for x in args.stream_years.split(",")]
    top = args.dir or tempfile.mkdtemp(prefix="nvr-bench-startup-")
    os.makedirs(top, exist_ok=True)
    keep = args.keep or args.dir is not None
    codes = [os.path.abspath(c) for c in args.code.split(",")]
    results = []
    try:
        for n in sizes:
            base = os.path.join(top, f"sy{n}" + ("-files" if args.files else ""))
            info_path = os.path.join(base, "bench.json")
            if os.path.exists(info_path):
                with open(info_path) as f:
                    info = json.load(f)
                print(f"{n} stream-years: reusing {base}", flush=True)
            else:
                shutil.rmtree(base, ignore_errors=True)
                os.makedirs(base)
                t0 = time.perf_counter()
                info = build(base, n, args.zone, args.files)
                with open(info_path, "w") as f:
                    json.dump(info, f)
                print(f"{n} stream-years: built {n * ROWS:,} recordings, database "
                      f"{info['bytes'] / 1e6:,.0f} MB, in {time.perf_counter() - t0:.1f} s",
                      flush=True)
            runs = {c: [] for c in codes}
            opens = {c: [] for c in codes}
            for i in range(args.runs):
                for code in codes:  # in turn, so drift on a shared machine hits all alike
                    opens[code].append(measure_open(code, info, env))
                    r = measure_run(code, base, info, env, i)
                    runs[code].append(r)
                    print(f"  run {i + 1} {code}: open_dir {opens[code][-1]:.3f} s, READY "
                          f"{r['ready']:.3f} s, /api/ {r['api'] * 1e3:.1f} ms, /api/?days=true "
                          f"{r['days'] * 1e3:.1f} ms, answered {r['answered']:.3f} s, totals "
                          f"complete {r['complete']:.3f} s ({r['n_days']} days)", flush=True)
            for code in codes:
                med = {k: statistics.median(r[k] for r in runs[code]) for k in
                       ("ready", "api", "days", "answered", "complete")}
                results.append((n, code, info["bytes"], statistics.median(opens[code]), med))
    finally:
        if not keep:
            shutil.rmtree(top, ignore_errors=True)
        else:
            print(f"kept {top}")
    print(f"\n{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"{os.cpu_count()} cores, Python {sys.version.split()[0]}, medians of {args.runs}"
          f"{', with sample files' if args.files else ''}\n")
    print("| stream-years | code | db MB | open_dir, all totals s | READY s | /api/ ms | /api/?days=true ms "
          f"| answered s | goal < {GOAL_SEC:g} s | totals complete s |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---|---:|")
    for n, code, size, open_s, m in results:
        verdict = "met" if m["answered"] < GOAL_SEC else "missed"
        print(f"| {n} | {os.path.basename(code)} | {size / 1e6:,.0f} | {open_s:.3f} | {m['ready']:.3f} | {m['api'] * 1e3:.1f} "
              f"| {m['days'] * 1e3:.1f} | {m['answered']:.3f} | {verdict} | {m['complete']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
