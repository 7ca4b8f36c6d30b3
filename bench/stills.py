#!/usr/bin/env python3
"""Stills benchmark: what a JPEG of an instant costs, and thumbnails while nvr records.

    python3 bench/stills.py [--repeat 10] [--streams 4] [--seconds 60] [--clients 8]
                            [--skip-per-still] [--skip-load]

Part 1, per still (in-process, one decoder, the still cache off): for each clip of
`CLIPS` (1080p and 4K H.264, 1080p H.265; ffmpeg's testsrc2 with temporal noise at a
camera-like bitrate, a key frame every GOP frames), recorded into a temp database through
nvr's Streamer (test/replay.py, simulated time), it times `Stills.still` for
- key:   a key frame (`key=true`, what thumbnails use): one frame decoded;
- worst: the last frame of a GOP (exact): GOP frames decoded;
both at full size and at width 320, `--repeat` times each, and reports the median wall
ms and process CPU ms per still and the JPEG's size. Baseline: what a user would run
instead, `ffmpeg -ss T -i view.mp4 -frames:v 1 out.jpg` on the same recording's
view.mp4 for the worst-case instant (a process per still, as a script would).

Part 2, thumbnails while recording: one test camera (test/camera.py, the real GStreamer
RTSP server) serving `--streams` mounts of 1920x1080 30 fps ~2 Mbit/s H.264 (GOP 30),
recorded by `nvr.py run` (rotation 10 s); once every stream has committed recordings,
`--clients` threads request `still.jpg?t=<random recorded instant>&key=true&width=W`
(W random in 160..640: distinct sizes, so the still cache rarely answers)
for `--seconds`, then the same with exact frames (no `key`). It reports thumbnails per
second (200s), 503s (the pool's queue full: the designed back-pressure), latency, nvr's
CPU, the frames recorded in the window against 30 per second per stream of wall time
(the camera's clock and ours may differ by a few frames a minute), the frames lost (a
frame missing before the writer shows as a frame of twice the duration: the pts come
from the camera's RTP clock), which must be none, and the runs that ended (reconnects).

Needs what test/camera.py needs (`python3 test/run.py` installs it) and ffmpeg.
Touches nothing outside temp dirs.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import importlib.util
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, "test")]

import clock  # noqa: E402
import mp4  # noqa: E402
import recording  # noqa: E402
import snapshot  # noqa: E402

CLIPS = [  # name, encoder, size, kbit/s, GOP frames
    ("1080p H.264", "libx264", (1920, 1080), 4000, 30),
    ("4K H.264", "libx264", (3840, 2160), 12000, 30),
    ("1080p H.265", "libx265", (1920, 1080), 2000, 30),
]
FPS = 30


def load(name: str, path: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def make_clip(path: str, encoder: str, size: tuple[int, int], kbps: int, gop: int) -> None:
    w, h = size
    codec_opts = (["-x265-params", f"keyint={gop}:min-keyint={gop}:bframes=0:scenecut=0:log-level=error"]
                  if encoder == "libx265" else
                  ["-g", str(gop), "-keyint_min", str(gop), "-bf", "0", "-sc_threshold", "0"])
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
         f"testsrc2=size={w}x{h}:rate={FPS},noise=alls=12:allf=t", "-t", "4",
         "-c:v", encoder, "-preset", "veryfast", "-b:v", f"{kbps}k", "-maxrate", f"{kbps}k",
         "-bufsize", f"{2 * kbps}k", "-pix_fmt", "yuv420p", *codec_opts, path], check=True)


def cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def per_still(repeat: int) -> list[str]:
    from conftest import START_NS, make_testdb
    from replay import record
    out = ["| clip | still | size | wall ms (median) | CPU ms (median) | JPEG KiB | "
           "ffmpeg -ss CLI ms (worst) |", "|---|---|---|---|---|---|---|"]
    for name, encoder, size, kbps, gop in CLIPS:
        tmp = tempfile.mkdtemp(prefix="nvr-bench-stills-")
        try:
            clip = os.path.join(tmp, "clip.mp4")
            make_clip(clip, encoder, size, kbps, gop)
            clocks = clock.SimulatedClocks(START_NS)
            t = make_testdb(__import__("pathlib").Path(tmp), clocks, zone="UTC")
            rows = record(t, clip, clocks, frames=4 * FPS, interval=60)
            row = rows[0]
            stills = snapshot.Stills(t.db, workers=1, cache_bytes=0)
            frame = 90000 // FPS
            key_t = row.start_time_90k + gop * frame           # the 2nd GOP's key frame
            worst_t = row.start_time_90k + (2 * gop - 1) * frame + frame // 2  # its last
            view = os.path.join(tmp, "view.mp4")
            with open(view, "wb") as f:
                f.write(mp4.build_view(t.db, t.stream_id, [str(row.recording_id)]).read())
            ff = []
            for _ in range(max(3, repeat // 3)):
                t0 = time.monotonic()
                subprocess.run(["ffmpeg", "-v", "error", "-y", "-ss",
                                f"{(worst_t - row.start_time_90k) / 90000:.6f}", "-i", view,
                                "-frames:v", "1", "-q:v", "3", os.path.join(tmp, "ff.jpg")],
                               check=True)
                ff.append((time.monotonic() - t0) * 1000)
            for mode, when, key in (("key", key_t, True), ("worst", worst_t, False)):
                for width in (None, 320):
                    walls, cpus, sizes = [], [], []
                    for _ in range(repeat):
                        c0, w0 = cpu_s(), time.monotonic()
                        st = stills.still(t.stream_id, time_90k=when, key=key, width=width)
                        walls.append((time.monotonic() - w0) * 1000)
                        cpus.append((cpu_s() - c0) * 1000)
                        sizes.append(len(st.jpeg))
                    out.append(f"| {name} | {mode} | {st.width}x{st.height} | "
                               f"{statistics.median(walls):.1f} | {statistics.median(cpus):.0f} | "
                               f"{statistics.median(sizes) / 1024:.0f} | "
                               f"{statistics.median(ff):.0f} |" if mode == "worst" and width is None
                               else f"| {name} | {mode} | {st.width}x{st.height} | "
                               f"{statistics.median(walls):.1f} | {statistics.median(cpus):.0f} | "
                               f"{statistics.median(sizes) / 1024:.0f} | |")
                    print(out[-1], flush=True)
            stills.close()
            t.db.close()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def under_load(n: int, seconds: float, clients: int) -> list[str]:
    ingest = load("nvr_bench_ingest", os.path.join(REPO, "bench", "ingest.py"))
    camera = ingest.load_camera_module()
    reason = camera.unavailable_reason()
    if reason:
        raise SystemExit(f"error: {reason}")
    out = ["| mode | clients | thumbnails/s | 503s | latency p50 / p95 ms | nvr CPU (cores) | "
           "frames recorded / expected at 30/s by wall time | frames lost (gaps in the camera's "
           "timestamps) | runs ended |",
           "|---|---|---|---|---|---|---|---|---|"]
    streams = [camera.Stream(f"s{i}", "h264", 1920, 1080, FPS, 2000, 30) for i in range(n)]
    clip_dir = tempfile.mkdtemp(prefix="nvr-bench-clips-")
    tmp = tempfile.mkdtemp(prefix="nvr-bench-load-")
    try:
        with camera.RtspCamera(streams, clip_dir=clip_dir) as cam:
            urls = [cam.url(s.name) for s in streams]
            ingest.setup_nvr(tmp, urls, 20)
            port = ingest_free_port()
            config = os.path.join(tmp, "nvr.toml")
            with open(config, "w") as f:
                f.write(f'dbDir = "{os.path.join(tmp, "db")}"\n\n[[binds]]\n'
                        f'ipv4 = "127.0.0.1:{port}"\n'
                        f'allowUnauthenticatedPermissions = {{ viewVideo = true }}\n')
            child = ingest.Child("nvr", [sys.executable, ingest.NVR, "run", "--config", config,
                                         "--rotate-interval-sec", "10"],
                                 stream="stderr", env=dict(os.environ, NVR_LOG="INFO"))
            try:
                def committed(ls) -> set[str]:
                    return {i.split("/")[0] for _, l in ls if (m := ingest.FLUSH_RE.search(l))
                            for i in m["ids"].split(", ") if "/" in i}
                child.wait_for(lambda ls: len(committed(ls)) == n, 180,
                               "a committed recording of every stream")
                db_path = os.path.join(tmp, "db", "db")
                with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as conn:
                    cams = conn.execute("select c.uuid, s.id from camera c join stream s "
                                        "on s.camera_id = c.id order by s.id").fetchall()
                    t_min = conn.execute("select min(start_time_90k) from recording").fetchone()[0]
                import uuid as uuidlib
                paths = [f"/api/cameras/{uuidlib.UUID(bytes=u)}/main/still.jpg" for u, _ in cams]
                for mode in ("key", "exact"):
                    res = hammer(port, paths, t_min, seconds, clients, mode == "key", child.pid,
                                 ingest)
                    w0, w1 = res["wall"]
                    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as conn:
                        frames = conn.execute(
                            "select count(*) from recording where start_time_90k >= ? "
                            "and start_time_90k < ?", (w0, w1)).fetchone()[0]
                    out.append(
                        f"| {mode} | {clients} | {res['ok'] / res['seconds']:.1f} | {res['busy']} | "
                        f"{res['p50']:.0f} / {res['p95']:.0f} | "
                        f"{res['cpu'] / res['seconds']:.2f} | {{frames}} | {{loss}} | {{ended}} |")
                    res["row"] = len(out) - 1
                    res_all = res
                    print(f"{mode}: {res['ok']} stills, {res['busy']} 503s in "
                          f"{res['seconds']:.0f} s", flush=True)
                    out[-1] = out[-1].replace("{frames}", "{frames:%s}" % mode)
                    globals().setdefault("_windows", []).append((mode, w0, w1))
                rc = child.stop()
                if rc != 0:
                    raise SystemExit(child.explain(f"nvr exited with status {rc}"))
            finally:
                if child.proc.poll() is None:
                    child.proc.kill()
                    child.proc.wait()
            # Frames recorded in each window: from the committed index (after the stop's
            # final flush), every frame whose wall time falls in the window.
            with sqlite3.connect(f"file:{os.path.join(tmp, 'db', 'db')}?mode=ro", uri=True) as conn:
                for mode, w0, w1 in globals().pop("_windows"):
                    got = gaps = 0
                    for sid, start, wall, media, idx in conn.execute(
                            "select r.stream_id, r.start_time_90k, r.wall_duration_90k, "
                            "r.wall_duration_90k + r.media_duration_delta_90k, p.video_index from recording r join "
                            "recording_playback p using (composite_id) "
                            "where r.start_time_90k < ? and r.start_time_90k + "
                            "r.wall_duration_90k > ?", (w1, w0)):
                        for f in recording.iter_index(idx):
                            at = start + mp4.rescale(f.start_90k, media, wall)
                            if w0 <= at < w1:
                                got += 1
                                # A frame lost before the writer shows as a longer one
                                # (its pts come from the camera's RTP clock).
                                gaps += max(0, round(f.duration_90k / (90000 / FPS)) - 1)
                    expected = round((w1 - w0) / 90000 * FPS * n)
                    ended = conn.execute(
                        "select count(*) from recording where run_offset = 0 and "
                        "start_time_90k > ? and start_time_90k < ?", (w0, w1)).fetchone()[0]
                    i = next(i for i, l in enumerate(out) if "{frames:%s}" % mode in l)
                    out[i] = (out[i].replace("{frames:%s}" % mode, f"{got} / {expected}")
                              .replace("{loss}", f"{gaps} frames ({gaps / max(1, got):.2%})")
                              .replace("{ended}", str(ended)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(clip_dir, ignore_errors=True)
    return out


def ingest_free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hammer(port, paths, t_min, seconds, clients, key, pid, ingest) -> dict:
    lat, busy, ok, other = [], [0], [0], []
    lock = threading.Lock()
    stop = time.monotonic() + seconds
    rnd = random.Random(1)

    def client():
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while time.monotonic() < stop:
            now90k = int(time.time() * 90000)
            with lock:
                t = rnd.randrange(t_min, now90k - 3 * 90000)
                path = rnd.choice(paths)
                width = rnd.randrange(160, 642, 2)   # distinct sizes: cache misses
            q = f"{path}?t={t}&width={width}" + ("&key=true" if key else "")
            t0 = time.monotonic()
            try:
                c.request("GET", q)
                r = c.getresponse()
                r.read()
            except (OSError, http.client.HTTPException) as e:
                with lock:
                    other.append(repr(e))
                c.close()
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                continue
            ms = (time.monotonic() - t0) * 1000
            with lock:
                if r.status == 200:
                    ok[0] += 1
                    lat.append(ms)
                elif r.status == 503:
                    busy[0] += 1
                else:
                    other.append(f"{r.status}")
        c.close()

    c0, m0, w0 = ingest.cpu_seconds(pid), time.monotonic(), time.time()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    c1, m1, w1 = ingest.cpu_seconds(pid), time.monotonic(), time.time()
    if other:
        print(f"  other outcomes: {other[:5]} ({len(other)})")
    lat.sort()
    return {"ok": ok[0], "busy": busy[0], "seconds": m1 - m0, "cpu": c1 - c0,
            "p50": lat[len(lat) // 2] if lat else 0,
            "p95": lat[int(len(lat) * 0.95)] if lat else 0,
            "wall": (round(w0 * 90000), round(w1 * 90000))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Cost of stills (still.jpg) per picture and "
                                "under load while nvr records; see the module docstring.")
    p.add_argument("--repeat", type=int, default=10, help="stills per case (default 10)")
    p.add_argument("--streams", type=int, default=4, help="recorded streams (default 4)")
    p.add_argument("--seconds", type=float, default=60, help="load window per mode (default 60)")
    p.add_argument("--clients", type=int, default=8, help="concurrent HTTP clients (default 8)")
    p.add_argument("--skip-per-still", action="store_true")
    p.add_argument("--skip-load", action="store_true")
    args = p.parse_args(argv)
    recording.set_server_zone("UTC")
    started = datetime.datetime.now(datetime.timezone.utc)
    print(f"{started:%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, PyAV "
          f"{__import__('av').__version__}", flush=True)
    if not args.skip_per_still:
        print("\nper still (one decoder thread, cache off):")
        print("\n".join(per_still(args.repeat)))
    if not args.skip_load:
        print(f"\nthumbnails while {args.streams} streams of 1080p30 record "
              f"({args.seconds:g} s per mode, widths 160-640):")
        print("\n".join(under_load(args.streams, args.seconds, args.clients)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
