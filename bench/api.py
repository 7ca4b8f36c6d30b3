#!/usr/bin/env python3
"""API benchmark: `/api/?days=true` and a one-day recordings list over a year of video.

    python3 bench/api.py [--repeats 100] [--fps 30] [--zone America/Los_Angeles]
                         [--dir DIR] [--keep] [--profile]

Issue #5's goal: with a year of one stream's recordings (one-minute recordings: 525,600
rows) in the database, `GET /api/?days=true` and `GET /api/cameras/<uuid>/main/recordings
?startTime90k=..&endTime90k=..` for one day in the middle of the year each take < 50 ms
on this machine.

What it does:
1. Builds the database: `db.init`, then through `db.Database` one sample file dir, one
   camera with a recording main stream and one video sample entry (1920x1080); then, in
   one transaction on a plain sqlite3 connection (journal off for the load, WAL again
   after), 525,600 rows each of `recording`, `recording_integrity` and
   `recording_playback`, and the stream's `cum_recordings`, `cum_media_duration_90k` and
   `cum_runs` to match, so `db.Database` loads it as it would a real year. The rows
   follow the schema's invariants: runs of 1 to 720 recordings (a camera reconnecting
   every 6 hours on average) separated by gaps of 1-10 s; within a run each recording
   starts where the previous ended; a run's last recording has the trailing-zero flag
   and an `end_reason`; `prev_media_duration_90k`/`prev_runs` accumulate. Each row's
   `video_index` is a real index (recording.SampleIndexEncoder) of 60 s at --fps with a
   key frame every second and ~2 Mbit/s of varying frame sizes (one of 8 variants, plus
   their trailing-zero versions): about 5.4 KB per row at 30 fps, a 2.95 GB database. No
   sample files are written: listing never opens them. Time zone --zone (DST days are
   23 and 25 hours long); the year is 2025 in that zone.
2. Opens it with `db.Database.open_dir` (timed: start-up loads every recording's totals
   and day summaries) and starts a `web.Server` (with `signals.Signals`, as `nvr.py run`)
   on 127.0.0.1:0 whose bind allows viewVideo without a login.
3. Times each request over HTTP with `http.client` on one keep-alive connection, from
   sending the request to reading the whole body: the first ("cold": a fresh process and
   SQLite connection, but the OS page cache is warm from the build) and then --repeats
   rounds of all URLs interleaved (so drift on this noisy machine hits all alike),
   reporting the median and p95 (the server logs at INFO, as `nvr.py run`, to a file):
   - `/api/request`: a trivial plain-text request, the same-run baseline (HTTP, routing,
     caller resolution and logging, nothing else);
   - `/api/?days=true`;
   - the recordings of the day in the middle of the year, as the UI asks without
     splitting, and (for context) with `split90k=324000000` (1 hour), as the UI's list
     view does.
4. Prints a table with the goal's verdict ("met": cold and p95 under 50 ms); with
   --profile, or for any goal request whose p95 misses the goal, the top of a cProfile
   of the server's handler over 20 such requests.

Run time: about 15 s on this machine (the build ~8 s, the open ~1.3 s). The temporary
directory is deleted at the end unless --keep (--dir reuses a kept one and skips the
build).
"""

from __future__ import annotations

import argparse
import array
import cProfile
import datetime
import hashlib
import http.client
import json
import logging
import os
import pstats
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid as uuidlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import auth  # noqa: E402
import clock  # noqa: E402
import db  # noqa: E402
import nvr  # noqa: E402
import recording  # noqa: E402
import signals as signalsmod  # noqa: E402
import web  # noqa: E402

ROWS = 525_600                     # one-minute recordings in a (non-leap) year
RECORDING_SEC = 60
GOAL_MS = 50.0
VARIANTS = 8                       # distinct video_index blobs (frame sizes differ)
MAX_RUN = 720                      # recordings per run: 1..720, mean ~6 h
MAX_GAP_SEC = 10                   # between runs
SPLIT_90K = 3600 * 90_000
# A video sample entry's bytes only need to be unique and long enough for the schema.
VSE_DATA = b"\x00\x00\x00\x66avc1" + bytes(94)


def index_variants(fps: int) -> list[tuple]:
    """(video_index, video_samples, video_sync_samples, sample_file_bytes,
    media_duration_90k) for VARIANTS normal recordings, then their trailing-zero
    versions (the last frame of a run has duration 0)."""
    frames = RECORDING_SEC * fps
    duration = 90_000 // fps
    # ~2 Mbit/s: key frames ~5x the others, sizes varying as a camera's do.
    p_mean = 2_000_000 // 8 // (fps + 4)
    out = []
    for trailing_zero in (False, True):
        for v in range(VARIANTS):
            r = random.Random(v)
            enc = recording.SampleIndexEncoder()
            for i in range(frames):
                key = i % fps == 0
                size = int((5 * p_mean if key else p_mean) * r.uniform(0.6, 1.4))
                d = 0 if (trailing_zero and i == frames - 1) else duration
                enc.add_sample(d, size, key)
            out.append((bytes(enc.video_index), enc.video_samples, enc.video_sync_samples,
                        enc.sample_file_bytes, enc.media_duration_90k))
    return out


def schedule(rng: random.Random) -> tuple[array.array, array.array, array.array]:
    """Per row: its run offset, its variant (>= VARIANTS: a run's last recording, with a
    trailing zero) and, for a run's first recording, the gap before it in seconds."""
    offsets, variants, gaps = array.array("i"), array.array("b"), array.array("b")
    i = 0
    while i < ROWS:
        n = min(rng.randint(1, MAX_RUN), ROWS - i)
        for k in range(n):
            offsets.append(k)
            variants.append(rng.randrange(VARIANTS) + (VARIANTS if k == n - 1 else 0))
            gaps.append(rng.randint(1, MAX_GAP_SEC) if k == 0 else 0)
        i += n
    return offsets, variants, gaps


def build(base: str, fps: int) -> dict:
    """Creates the database under `base`; returns what the requests need."""
    db_dir = os.path.join(base, "db")
    clocks = clock.RealClocks()
    db.init(db_dir, clocks)
    d = db.Database.open_dir(db_dir, clocks)
    try:
        dir_id = d.add_sample_file_dir(os.path.join(base, "sample"))
        camera_id = d.add_camera("bench", {"description": "bench/api.py: a year of video"})
        stream_id = d.add_stream(camera_id, "main", {
            "mode": "record", "url": "rtsp://192.0.2.1/main", "rtspTransport": "tcp",
            "retainBytes": 10 << 40, "flushIfSec": 120}, dir_id)
        vse_id = d.insert_video_sample_entry(1920, 1080, "avc1.640028", VSE_DATA)
        d.flush("bench/api.py setup")
        open_id = d.open.id
    finally:
        d.close()

    variants = index_variants(fps)
    offsets, vidx, gaps = schedule(random.Random(5))
    # Wall duration = media duration (no clock correction); within a run each recording
    # starts where the previous one ended (schema.sql), runs are 1-10 s apart.
    y0 = int(datetime.datetime(2025, 1, 1, tzinfo=recording.server_zone()).timestamp())
    starts = array.array("q", bytes(8 * ROWS))
    t = y0 * 90_000
    for i in range(ROWS):
        t += gaps[i] * 90_000
        starts[i] = t
        t += variants[vidx[i]][4]

    cum_media = 0
    cum_runs = 0
    prev_media = array.array("q", bytes(8 * ROWS))
    prev_runs = array.array("i", bytes(4 * ROWS))
    for i in range(ROWS):
        prev_media[i] = cum_media
        prev_runs[i] = cum_runs
        cum_media += variants[vidx[i]][4]
        cum_runs += offsets[i] == 0

    base_cid = stream_id << 32

    def recording_rows():
        for i in range(ROWS):
            v = variants[vidx[i]]
            last = vidx[i] >= VARIANTS
            yield (base_cid | i, open_id, stream_id, offsets[i], 1 if last else 0, v[3],
                   starts[i], prev_media[i], prev_runs[i], v[4], 0, v[1], v[2], vse_id,
                   "camera stream ended: connection reset by peer" if last else None)

    def integrity_rows():
        for i in range(ROWS):
            yield (base_cid | i, None if offsets[i] == 0 else (i * 37) % 201 - 100,
                   hashlib.blake2b(i.to_bytes(8, "big"), digest_size=32).digest())

    def playback_rows():
        for i in range(ROWS):
            yield (base_cid | i, variants[vidx[i]][0])

    lock_fd = db.lock_db_dir(db_dir, read_only=False)  # as any writer of the database
    conn = sqlite3.connect(os.path.join(db_dir, db.DB_FILENAME), isolation_level=None)
    try:
        # A bulk load: no WAL (it would write everything twice), no fsyncs; WAL again after,
        # as db.init leaves it.
        conn.execute("pragma journal_mode = off")
        conn.execute("pragma synchronous = off")
        conn.execute("begin")
        conn.executemany(
            "insert into recording (composite_id, open_id, stream_id, run_offset, flags, "
            "sample_file_bytes, start_time_90k, prev_media_duration_90k, prev_runs, "
            "wall_duration_90k, media_duration_delta_90k, video_samples, video_sync_samples, "
            "video_sample_entry_id, end_reason) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
            "?, ?)", recording_rows())
        conn.executemany("insert into recording_integrity (composite_id, local_time_delta_90k, "
                         "sample_file_blake2b_32) values (?, ?, ?)", integrity_rows())
        conn.executemany("insert into recording_playback (composite_id, video_index) "
                         "values (?, ?)", playback_rows())
        conn.execute("update stream set cum_recordings = ?, cum_media_duration_90k = ?, "
                     "cum_runs = ? where id = ?", (ROWS, cum_media, cum_runs, stream_id))
        conn.execute("commit")
        conn.execute("pragma journal_mode = wal")
    finally:
        conn.close()
        os.close(lock_fd)

    # The day in the middle of the year.
    mid = datetime.datetime.fromtimestamp(starts[ROWS // 2] // 90_000, recording.server_zone())
    return {"db_dir": db_dir, "day": mid.date().isoformat(), "runs": cum_runs,
            "blob_bytes": sum(len(variants[vidx[i]][0]) for i in range(0, ROWS, 97)) * 97 // ROWS}


def timed(conn: http.client.HTTPConnection, path: str) -> tuple[float, bytes]:
    t0 = time.perf_counter()
    conn.request("GET", path)
    resp = conn.getresponse()
    body = resp.read()
    dt = time.perf_counter() - t0
    if resp.status != 200:
        raise SystemExit(f"GET {path}: {resp.status} {body[:200]!r}")
    return dt, body


def p95(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=20, method="inclusive")[18]


def profile(port: int, path: str, n: int = 20) -> None:
    prof = cProfile.Profile()
    orig = web.Handler._dispatch

    def profiled(self):
        prof.runcall(orig, self)
    web.Handler._dispatch = profiled
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port)
        for _ in range(n):
            timed(conn, path)
        conn.close()
    finally:
        web.Handler._dispatch = orig
    print(f"\ncProfile of the server's handler, {n} x GET {path} (cumulative):")
    pstats.Stats(prof).sort_stats("cumulative").print_stats(18)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=100, help="timed rounds after the cold one")
    ap.add_argument("--fps", type=int, default=30, help="frames per second of the indexes")
    ap.add_argument("--zone", default="America/Los_Angeles", help="the server's time zone")
    ap.add_argument("--dir", help="use (and keep) this directory; an existing database "
                                  "there is reused")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--profile", action="store_true",
                    help="cProfile each request kind even if it meets the goal")
    args = ap.parse_args()
    recording.set_server_zone(args.zone)
    base = args.dir or tempfile.mkdtemp(prefix="nvr-bench-api-")
    keep = args.keep or args.dir is not None
    try:
        return run(args, base)
    finally:
        if not keep:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"kept {base}")


def run(args, base: str) -> int:
    db_dir = os.path.join(base, "db")
    info_path = os.path.join(base, "bench.json")
    if os.path.exists(os.path.join(db_dir, db.DB_FILENAME)) and os.path.exists(info_path):
        with open(info_path) as f:
            info = json.load(f)
        print(f"reusing the database in {db_dir}")
    else:
        t0 = time.perf_counter()
        info = build(base, args.fps)
        with open(info_path, "w") as f:
            json.dump(info, f)
        size = os.path.getsize(os.path.join(db_dir, db.DB_FILENAME))
        print(f"built {ROWS:,} recordings in {info['runs']:,} runs ({size / 1e9:.2f} GB "
              f"database, video_index ~{info['blob_bytes']:,} B/row) in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)

    # As `nvr.py run`: INFO, so each request's log line is part of its cost (to a file
    # here, not the terminal).
    logging.basicConfig(filename=os.path.join(base, "nvr.log"), level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s")
    clocks = clock.RealClocks()
    t0 = time.perf_counter()
    d = db.Database.open_dir(db_dir, clocks)
    open_sec = time.perf_counter() - t0
    srv = None
    try:
        (_, s), = d.streams.items()
        cam = str(uuidlib.UUID(bytes=d.cameras[s.camera_id].uuid))
        day_start, day_end = d.day_bounds.bounds(info["day"])
        print(f"db.Database.open_dir: {open_sec * 1e3:.0f} ms ({len(s.days)} days, "
              f"{d.conn.execute('select count(*) from recording').fetchone()[0]:,} rows)")
        config = nvr.Config(db_dir=db_dir, ui_dir=None, binds=[nvr.Bind(
            ("ipv4", "127.0.0.1:0"),
            allow_unauthenticated_permissions=auth.Permissions(view_video=True))])
        srv = web.Server(d, config, clocks=clocks, signals=signalsmod.Signals(d))
        srv.start()
        port = srv.addresses[0][1]
        rec = (f"/api/cameras/{cam}/main/recordings?startTime90k={day_start}"
               f"&endTime90k={day_end}")
        cases = [("baseline", "/api/request", False),
                 ("days", "/api/?days=true", True),
                 ("recordings", rec, True),
                 ("recordings, split", rec + f"&split90k={SPLIT_90K}", False)]
        labels = {"baseline": "`/api/request` (baseline)", "days": "`/api/?days=true`",
                  "recordings": "`.../main/recordings?startTime90k&endTime90k` (one day)",
                  "recordings, split": f"the same `&split90k={SPLIT_90K}` (1 h)"}
        conn = http.client.HTTPConnection("127.0.0.1", port)
        conn.connect()
        cold, times, sizes, rows = {}, {name: [] for name, _, _ in cases}, {}, {}
        for name, path, _ in cases:
            cold[name], body = timed(conn, path)
            sizes[name] = len(body)
            if "recordings" in name:
                rows[name] = len(json.loads(body)["recordings"])
            elif name == "days":
                j = json.loads(body)
                rows[name] = len(j["cameras"][0]["streams"]["main"]["days"])
        for _ in range(args.repeats):
            for name, path, _ in cases:
                times[name].append(timed(conn, path)[0])
        conn.close()

        day = info["day"]
        hours = (day_end - day_start) / 90_000 / 3600
        print(f"\n{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; zone "
              f"{args.zone}; the day: {day} ({hours:g} h); {args.repeats} rounds\n")
        print("| request | response | cold ms | median ms | p95 ms | goal < 50 ms |")
        print("|---|---|---:|---:|---:|---|")
        missed = []
        for name, path, goal in cases:
            med, p = statistics.median(times[name]) * 1e3, p95(times[name]) * 1e3
            c = cold[name] * 1e3
            what = {"days": f"{rows.get(name)} days", "baseline": "text"}.get(
                name, f"{rows.get(name)} rows")
            if goal:
                verdict = "met" if max(c, p) < GOAL_MS else (
                    "met, but not cold" if p < GOAL_MS else "**missed**")
                if p >= GOAL_MS:
                    missed.append(path)
            else:
                verdict = "(context)"
            print(f"| {labels[name]} | {what}, "
                  f"{sizes[name]:,} B | {c:.1f} | {med:.1f} | {p:.1f} | {verdict} |")
        print(f"\ndatabase open (db.Database.open_dir, loads totals and days): "
              f"{open_sec * 1e3:.0f} ms")
        to_profile = [p for _, p, g in cases if g] if args.profile else missed
        for path in to_profile:
            profile(port, path)
        return 0
    finally:
        if srv is not None:
            srv.stop()
        d.close()


if __name__ == "__main__":
    sys.exit(main())
