#!/usr/bin/env python3
"""Serving benchmark: view.mp4 over loopback from web.py, against nginx and a static file.

    python3 bench/serve.py [--dir /tmp/nvr-bench-serve] [--spans 1,24] [--runs 3]
                           [--links] [--profile]

For each span (hours) of synthetic ~2 Mbit/s video it measures, with `curl` as the client
(a C client, the same for both servers, its own process):
- time to first byte (`time_starttransfer`: connect + request + our `build_view` + the
  response headers) and throughput (`size_download / (time_total - time_starttransfer)`)
  of `GET /api/cameras/<uuid>/main/view.mp4?s=<all of the span>` from a `web.Server`
  running in this process (its handler threads; curl is another process), twice:
  - COLD: `mp4.table_cache` and db.py's video index cache emptied first, as for the
    first request after start-up: every segment's moov tables are generated from the
    indexes (read from SQLite) before the first sample byte;
  - WARM: the same request again right after, the tables now in `mp4.table_cache` (as
    for a player's Range requests or a repeated view);
- the same for nginx (Debian's package, run as a child with a temp config on 127.0.0.1:
  one worker, `sendfile on`, access log off) serving a static file of exactly the same
  length, in the same directory (same disk);
after one warm-up request to each server (the page cache), --runs rounds of cold, warm
and nginx in turn (interleaved, so drift on a shared machine hits all three alike). It
prints the medians, the median of each round's throughput ratio to nginx's (cold and
warm), and the median of each round's cold minus warm transfer time: what generating
the tables cost that request. Throughput on a shared 2-core machine is noisy, so it
also times the Python work alone, in-process and without HTTP (`moov_times`): the
layout (`build_view`) and the bytes before the first sample byte, cold and warm.

Synthetic recordings (made cheaply, not through the writer): one-minute recordings of
1800 frames at 30 fps, a key frame every 30 (5x the size of the others), 15,000,000
bytes each (2 Mbit/s), with valid indexes, added through `db.Database.add_recording`,
`mark_synced` and `flush` as test/conftest.py's `TestDb.add_recording` does. Sample
bytes are random (they are never decoded). 60 distinct minute files are written; each
span's recordings are real files: with --links, the 24 h span's 1440 sample files are
hard links to those 60 (honest for mp4.py, which opens each recording's own file, but
only 900 MB of distinct data is read, so it stays in the page cache); without, every
file is written (21.6 GB for 24 h). The static file for nginx is always written in full.
The files are kept under --dir between runs (delete it to start over).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import auth  # noqa: E402
import clock  # noqa: E402
import db  # noqa: E402
import dir as dirmod  # noqa: E402
import nvr  # noqa: E402
import mp4  # noqa: E402
import recording  # noqa: E402
import web  # noqa: E402

FPS = 30
FRAMES = 60 * FPS
KEY_EVERY = 30
MINUTE_BYTES = 15_000_000                       # 2 Mbit/s for 60 s
P_FRAME = MINUTE_BYTES // (FRAMES + 4 * FRAMES // KEY_EVERY)
I_FRAME = 5 * P_FRAME
DISTINCT = 60
MINUTE_90K = 60 * 90_000
T0_90K = 1_795_953_600 * 90_000


def minute_index() -> recording.SampleIndexEncoder:
    enc = recording.SampleIndexEncoder()
    rest = MINUTE_BYTES - (FRAMES // KEY_EVERY) * I_FRAME - (FRAMES - FRAMES // KEY_EVERY) * P_FRAME
    for i in range(FRAMES):
        size = I_FRAME if i % KEY_EVERY == 0 else P_FRAME
        if i == FRAMES - 1:
            size += rest
        enc.add_sample(3000, size, i % KEY_EVERY == 0)
    assert enc.sample_file_bytes == MINUTE_BYTES
    return enc


def setup(base: str, hours: list[int], links: bool):
    """The database (one camera per span) and sample files; reused if already there."""
    db_dir, sample_dir, pool = (os.path.join(base, x) for x in ("db", "sample", "pool"))
    clocks = clock.RealClocks()
    fresh = not os.path.exists(os.path.join(db_dir, db.DB_FILENAME))
    if fresh:
        db.init(db_dir, clocks)
    d = db.Database.open_dir(db_dir, clocks)
    if fresh:
        d.add_sample_file_dir(sample_dir)
        d.flush("bench setup")
    d.open_sample_file_dirs()
    dir_id = min(d.dirs)
    os.makedirs(pool, exist_ok=True)
    for i in range(DISTINCT):
        p = os.path.join(pool, f"{i:02d}")
        if not os.path.exists(p):
            with open(p + ".tmp", "wb") as f:
                f.write(os.urandom(MINUTE_BYTES))
            os.rename(p + ".tmp", p)
    enc = minute_index()
    vse = d.insert_video_sample_entry(1920, 1080, "avc1.640028",
                                      b"\x00\x00\x00\x66avc1" + bytes(94))
    spans = {}
    for h in hours:
        name = f"span{h}h"
        try:
            cam = d.camera_by_name(name)
            sid = cam.streams["main"]
        except Exception:
            cid = d.add_camera(name, {"description": "bench/serve.py"})
            sid = d.add_stream(cid, "main", {"mode": "record", "url": "rtsp://unused/",
                                             "retainBytes": 1 << 50, "flushIfSec": 0}, dir_id)
            cam = d.cameras[cid]
        s = d.streams[sid]
        n = h * 60
        made = 0
        while s.cum_recordings < n:
            k = s.cum_recordings
            cid_ = d.add_recording(sid, db.RecordingToInsert(
                run_offset=k, start_time_90k=T0_90K + k * MINUTE_90K,
                prev_media_duration_90k=k * MINUTE_90K, prev_runs=1,
                video_sample_entry_id=vse, video_index=bytes(enc.video_index),
                video_samples=FRAMES, video_sync_samples=FRAMES // KEY_EVERY,
                sample_file_bytes=MINUTE_BYTES, wall_duration_90k=MINUTE_90K,
                media_duration_90k=MINUTE_90K))
            path = os.path.join(sample_dir, dirmod.name_for(cid_))
            src = os.path.join(pool, f"{k % DISTINCT:02d}")
            if links and h > 1:
                os.link(src, path)
            else:
                shutil.copyfile(src, path)
            d.mark_synced(cid_)
            made += 1
            if made % 120 == 0:
                d.flush("bench setup")
        d.flush("bench setup")
        spans[h] = (str(uuidlib.UUID(bytes=cam.uuid)), sid, n)
    return d, spans


def static_file(base: str, length: int) -> str:
    """A file of `length` bytes for nginx, from the pool's random bytes."""
    path = os.path.join(base, "static", f"{length}.bin")
    if os.path.exists(path) and os.path.getsize(path) == length:
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    chunks = [open(os.path.join(base, "pool", f"{i:02d}"), "rb").read() for i in range(4)]
    with open(path + ".tmp", "wb") as f:
        left, i = length, 0
        while left:
            c = chunks[i % 4][:left]
            f.write(c)
            left -= len(c)
            i += 1
    os.rename(path + ".tmp", path)
    return path


NGINX_CONF = """
daemon off;
worker_processes 1;
error_log {tmp}/error.log;
pid {tmp}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    types {{ video/mp4 bin; }}
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""


def start_nginx(root: str) -> tuple[subprocess.Popen, int, str]:
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    tmp = tempfile.mkdtemp(prefix="nvr-bench-nginx-")
    conf = os.path.join(tmp, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(tmp=tmp, port=port, root=root))
    p = subprocess.Popen(["nginx", "-c", conf, "-p", tmp])
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            return p, port, tmp
        except OSError:
            time.sleep(0.05)
    p.kill()
    raise SystemExit(f"nginx didn't start; see {tmp}/error.log")


def curl(url: str) -> tuple[float, float, int]:
    """(time to first byte s, throughput bytes/s after it, bytes)."""
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w",
                          "%{http_code} %{time_starttransfer} %{time_total} %{size_download}",
                          url], capture_output=True, text=True, check=True).stdout.split()
    code, ttfb, total, size = int(out[0]), float(out[1]), float(out[2]), int(out[3])
    assert code == 200, (url, code)
    return ttfb, size / max(total - ttfb, 1e-9), size


def forget_tables(d: db.Database) -> None:
    """Empties the caches a cold request finds empty: mp4's table cache and db.py's
    video index cache (a private attribute: this benchmark's business only)."""
    mp4.table_cache.clear()
    with d.locked("bench"):
        d._video_index_cache.clear()


def median(results: list[tuple[float, float, int]]) -> tuple[float, float, int]:
    """(median TTFB, median throughput, bytes)."""
    return (statistics.median(x[0] for x in results),
            statistics.median(x[1] for x in results), results[0][2])


def moov_times(d: db.Database, stream_id: int, s: str, runs: int) -> tuple[float, float, float]:
    """Medians over `runs` of: `build_view` (the layout: TTFB's share), and generating
    the bytes before the first sample byte (ftyp + moov + mdat header) cold and warm, in
    this thread, with no HTTP: the part of a request that is Python's work alone."""
    build, cold, warm = [], [], []
    for _ in range(runs):
        forget_tables(d)
        for out in (cold, warm):
            began = time.perf_counter()
            f = mp4.build_view(d, stream_id, [s])
            built = time.perf_counter()
            f.read(0, f.segments[0].data_offset)
            out.append(time.perf_counter() - built)
            build.append(built - began)
    return statistics.median(build), statistics.median(cold), statistics.median(warm)


def ratio(ours: list, theirs: list) -> float:
    """The median of each round's throughput ratio."""
    return statistics.median(a[1] / b[1] for a, b in zip(ours, theirs))


def table_cost(cold: list, warm: list) -> float:
    """The median of each round's extra transfer time cold, seconds."""
    return statistics.median(c[2] / c[1] - w[2] / w[1] for c, w in zip(cold, warm))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default="/tmp/nvr-bench-serve")
    ap.add_argument("--spans", default="1,24", help="hours, comma-separated")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--links", action="store_true",
                    help="hard-link the longer spans' sample files to 60 distinct ones")
    ap.add_argument("--profile", action="store_true",
                    help="cProfile the server's handler threads over one cold request per span")
    args = ap.parse_args()
    if shutil.which("nginx") is None:
        raise SystemExit("nginx is not installed; this benchmark compares against it: "
                         "apt-get install nginx")
    hours = [int(x) for x in args.spans.split(",")]
    recording.set_server_zone("UTC")
    t0 = time.monotonic()
    d, spans = setup(args.dir, hours, args.links)
    print(f"setup: {time.monotonic() - t0:.1f} s", flush=True)
    config = nvr.Config(db_dir=args.dir, ui_dir=None, binds=[nvr.Bind(
        ("ipv4", "127.0.0.1:0"), allow_unauthenticated_permissions=auth.Permissions(
            view_video=True))])
    srv = web.Server(d, config)
    srv.start()
    port = srv.addresses[0][1]
    results = []
    try:
        for h in hours:
            cam, sid, n = spans[h]
            url = f"http://127.0.0.1:{port}/api/cameras/{cam}/main/view.mp4?s=0-{n - 1}"
            head = subprocess.run(["curl", "-sI", url], capture_output=True, text=True,
                                  check=True).stdout
            length = int([ln.split(": ")[1] for ln in head.splitlines()
                          if ln.lower().startswith("content-length")][0])
            static = static_file(args.dir, length)
            ng, ng_port, ng_tmp = start_nginx(os.path.dirname(static))
            nginx_url = f"http://127.0.0.1:{ng_port}/{os.path.basename(static)}"
            cold, warm, theirs = [], [], []
            try:
                curl(url)  # warm-up: the page cache, and the database's pages
                curl(nginx_url)
                for _ in range(args.runs):
                    forget_tables(d)
                    cold.append(curl(url))
                    warm.append(curl(url))
                    theirs.append(curl(nginx_url))
            finally:
                ng.terminate()
                ng.wait()
                shutil.rmtree(ng_tmp, ignore_errors=True)
            assert {x[2] for x in cold + warm + theirs} == {length}
            r = (ratio(cold, theirs), ratio(warm, theirs), table_cost(cold, warm),
                 *moov_times(d, sid, f"0-{n - 1}", args.runs))
            cold, warm, theirs = median(cold), median(warm), median(theirs)
            results.append((h, length, cold, warm, theirs, r))
            print(f"{h:>3} h, {length / 1e9:6.2f} GB: nvr cold TTFB {cold[0] * 1e3:5.1f} ms, "
                  f"{cold[1] / 1e6:5.0f} MB/s ({r[0]:.2f}x) | warm TTFB {warm[0] * 1e3:5.1f} ms, "
                  f"{warm[1] / 1e6:5.0f} MB/s ({r[1]:.2f}x) | nginx TTFB "
                  f"{theirs[0] * 1e3:4.1f} ms, {theirs[1] / 1e6:5.0f} MB/s | cold - warm "
                  f"{r[2] * 1e3:.0f} ms | in-process: build_view {r[3] * 1e3:.1f} ms, moov "
                  f"cold {r[4] * 1e3:.0f} ms, warm {r[5] * 1e3:.1f} ms", flush=True)
            if args.profile:
                prof = cProfile.Profile()
                orig = web.Handler._dispatch

                def profiled(self, orig=orig):
                    prof.runcall(orig, self)
                web.Handler._dispatch = profiled
                try:
                    forget_tables(d)
                    curl(url)
                finally:
                    web.Handler._dispatch = orig
                pstats.Stats(prof).sort_stats("cumulative").print_stats(15)
    finally:
        srv.stop()
        d.close()
    print("\n| span | bytes | nginx TTFB | nginx MB/s | cold TTFB | cold MB/s | cold ratio "
          "| warm TTFB | warm MB/s | warm ratio | cold - warm |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for h, length, cold, warm, theirs, r in results:
        print(f"| {h} h | {length:,} | {theirs[0] * 1e3:.1f} ms | {theirs[1] / 1e6:.0f} "
              f"| {cold[0] * 1e3:.1f} ms | {cold[1] / 1e6:.0f} | {r[0]:.2f} "
              f"| {warm[0] * 1e3:.1f} ms | {warm[1] / 1e6:.0f} | {r[1]:.2f} "
              f"| {r[2] * 1e3:.0f} ms |")
    print("\n| span | stts+stsz bytes | build_view | moov cold | moov warm |")
    print("|---|---|---|---|---|")
    for h, length, cold, warm, theirs, r in results:
        frames = spans[h][2] * FRAMES
        print(f"| {h} h | {frames * 12:,} ({frames:,} frames) | {r[3] * 1e3:.1f} ms "
              f"| {r[4] * 1e3:.0f} ms | {r[5] * 1e3:.1f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
