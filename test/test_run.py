"""`nvr.py run` end to end: a real RTSP server (GStreamer), a real nvr process.

Cameras: one with H.264 main and sub streams, one H.265. nvr rotates every
3 s (`--rotate-interval-sec`, a test-only flag) so a test sees several
recordings in seconds. Waiting is on conditions in the database (polled), not
on fixed sleeps. Afterwards `nvr.py check` must be clean and every recorded
frame must decode with PyAV, which reads the sample files through the
recording's own `avcC`/`hvcC` entry.
"""

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import uuid as uuidlib

import pytest

import db
import dir as dirmod
import recording

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NVR = os.path.join(ROOT, "nvr.py")


def nvr(*args, cwd):
    r = subprocess.run([sys.executable, NVR, *args], cwd=cwd, capture_output=True, text=True,
                       timeout=60, env=dict(os.environ, NVR_LOG="WARNING"))
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def wait_for(what, cond, timeout=60.0):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


class Nvr:
    """A running `nvr.py run` with a config file in `cwd`."""

    def __init__(self, cwd):
        self.cwd = cwd
        self.log_path = os.path.join(cwd, "nvr.log")
        self.proc = None

    def start(self, *args, env=None):
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, NVR, "run", "--config", "nvr.toml", "--rotate-interval-sec", "3",
             *args],
            cwd=self.cwd, stdout=self.log, stderr=subprocess.STDOUT,
            env=dict(os.environ, NVR_LOG="INFO", TZ="UTC", **(env or {})))

    def stop(self, sig=signal.SIGTERM, timeout=60):
        self.proc.send_signal(sig)
        rc = self.proc.wait(timeout)
        self.log.close()
        return rc

    def log_text(self):
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def rows(self, stream_id):
        conn = sqlite3.connect(f"file:{os.path.join(self.cwd, 'nvr-data/db/db')}?mode=ro",
                               uri=True)
        try:
            return conn.execute(
                "select composite_id, run_offset, flags, start_time_90k, wall_duration_90k, "
                "video_samples, end_reason from recording where stream_id = ? "
                "order by composite_id", (stream_id,)).fetchall()
        finally:
            conn.close()


@pytest.fixture
def setup(tmp_path, rtsp_camera):
    cwd = str(tmp_path)
    nvr("init", cwd=cwd)
    nvr("config", "camera", "add", "cam1", cwd=cwd)
    nvr("config", "camera", "add", "cam2", cwd=cwd)
    for cam, typ, mount in (("cam1", "main", "main"), ("cam1", "sub", "sub"),
                            ("cam2", "main", "h265")):
        nvr("config", "stream", "add", cam, typ, "--url", rtsp_camera.url(mount), "--record",
            "--dir", "1", "--retain-bytes", "1G", "--flush-if-sec", "0", cwd=cwd)
    with open(os.path.join(cwd, "nvr.toml"), "w") as f:
        f.write('dbDir = "nvr-data/db"\n[[binds]]\nipv4 = "127.0.0.1:0"\n'
                'allowUnauthenticatedPermissions = { viewVideo = true }\n')
    n = Nvr(cwd)
    yield n, rtsp_camera
    if n.proc is not None and n.proc.poll() is None:
        n.proc.kill()
        n.proc.wait()


def decode_all_frames(cwd):
    """Decodes every frame of every recording with PyAV; returns frames per stream."""
    import av
    conn = sqlite3.connect(os.path.join(cwd, "nvr-data/db/db"))
    vse = {i: (codec, data) for i, codec, data in conn.execute(
        "select id, rfc6381_codec, data from video_sample_entry")}
    out = {}
    for cid, vse_id, nsamples, index in conn.execute(
            "select r.composite_id, r.video_sample_entry_id, r.video_samples, p.video_index "
            "from recording r join recording_playback p using (composite_id)"):
        codec, entry = vse[vse_id]
        ctx = av.CodecContext.create("h264" if codec.startswith("avc1") else "hevc", "r")
        ctx.extradata = _config_record(entry)
        with open(os.path.join(cwd, "nvr-data/sample", dirmod.name_for(cid)), "rb") as f:
            data = f.read()
        decoded = 0
        for fr in recording.iter_index(index):
            pkt = av.Packet(data[fr.pos:fr.pos + fr.bytes])
            decoded += len(ctx.decode(pkt))
        decoded += len(ctx.decode(None))
        assert decoded == nsamples, f"recording {cid:016x}: {decoded} of {nsamples} decoded"
        out[cid >> 32] = out.get(cid >> 32, 0) + decoded
    return out


def _config_record(entry: bytes) -> bytes:
    """The avcC/hvcC payload inside an avc1/hvc1 sample entry (after its 86 bytes)."""
    i = 86
    size = int.from_bytes(entry[i:i + 4], "big")
    assert entry[i + 4:i + 8] in (b"avcC", b"hvcC")
    return entry[i + 8:i + size]


def test_records_rotates_reconnects_and_stops_cleanly(setup):
    n, cam = setup
    n.start()
    # Two rotations on every stream: at least three recordings each.
    for sid in (1, 2, 3):
        wait_for(f"stream {sid} to commit 3 recordings", lambda: len(n.rows(sid)) >= 3)
    before = {sid: n.rows(sid) for sid in (1, 2, 3)}
    # Its video is served while it records: view.mp4 over HTTP, read by ffprobe.
    port = int(re.search(r"listening on ipv4 \('127.0.0.1', (\d+)\)", n.log_text()).group(1))
    conn = sqlite3.connect(os.path.join(n.cwd, "nvr-data/db/db"))
    (uuid,) = conn.execute("select uuid from camera where short_name = 'cam2'").fetchone()
    conn.close()
    url = (f"http://127.0.0.1:{port}/api/cameras/{uuidlib.UUID(bytes=uuid)}/main/view.mp4"
           f"?s=0-1")
    r = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-show_entries",
                        "stream=codec_name,nb_read_frames", "-of", "csv=p=0", url],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    codec_name, nframes = r.stdout.strip().split(",")
    assert codec_name == "hevc"
    assert int(nframes) == sum(row[5] for row in before[3][:2])
    t_restart = time.time()
    cam.restart()  # the camera goes away and comes back on the same port
    for sid in (1, 2, 3):
        wait_for(f"stream {sid} to start a new run and commit from it",
                 lambda: any(r[1] == 0 for r in n.rows(sid)[len(before[sid]):]), timeout=90)
    assert n.stop() == 0
    log = n.log_text()
    assert "shut down cleanly" in log
    for sid in (1, 2, 3):
        rows = n.rows(sid)
        runs = [i for i, r in enumerate(rows) if r[1] == 0]
        assert len(runs) >= 2, rows
        second = runs[1]
        ended = rows[second - 1]
        assert ended[2] == db.FLAG_TRAILING_ZERO and ended[6], ended  # trailing zero + reason
        # Reconnected promptly: the new run starts soon after the old one ended
        # (1 s retry, ~1-2 s for PyAV to open and see a key frame).
        gap_sec = (rows[second][3] - (ended[3] + ended[4])) / 90_000
        assert 0 <= gap_sec < 6, (gap_sec, ended, rows[second])
        assert rows[second][3] / 90_000 > t_restart - 1
        # Runs are contiguous within themselves.
        for a, b in zip(rows, rows[1:]):
            if b[1] != 0:
                assert b[3] == a[3] + a[4]
        assert rows[-1][6] == "NVR shutdown" and rows[-1][2] == db.FLAG_TRAILING_ZERO
    assert nvr("check", "--db-dir", "nvr-data/db", cwd=n.cwd).endswith("check: clean\n")
    frames = decode_all_frames(n.cwd)
    assert set(frames) == {1, 2, 3} and all(v > 90 for v in frames.values())
    conn = sqlite3.connect(os.path.join(n.cwd, "nvr-data/db/db"))
    entries = sorted(conn.execute("select width, height, substr(rfc6381_codec, 1, 4) "
                                  "from video_sample_entry"))
    assert entries == [(320, 240, "avc1"), (640, 360, "avc1"), (640, 360, "hvc1")]


def test_sigkill_loses_nothing_committed(setup):
    n, cam = setup
    n.start()
    wait_for("2 committed recordings", lambda: len(n.rows(1)) >= 2)
    committed = {sid: n.rows(sid) for sid in (1, 2, 3)}
    assert n.stop(signal.SIGKILL) == -signal.SIGKILL
    # The dir holds files of recordings that were being written: abandoned.
    n.start()
    wait_for("recording again", lambda: len(n.rows(1)) >= len(committed[1]) + 2)
    assert n.stop() == 0
    log = n.log_text()
    assert "abandoned sample file(s)" in log
    for sid, rows in committed.items():
        now = n.rows(sid)
        assert now[:len(rows)] == rows  # nothing committed before the kill is missing
    assert nvr("check", "--db-dir", "nvr-data/db", cwd=n.cwd).endswith("check: clean\n")
    decode_all_frames(n.cwd)


def start_read_only_and_wait_until_ready(n, tmp_path):
    """Starts `run --read-only` with a systemd notify socket; returns it after READY=1."""
    import socket
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(60)
    n.start("--read-only", env={"NOTIFY_SOCKET": path})
    assert sock.recv(100) == b"READY=1"
    return sock


def test_read_only_records_nothing_and_notifies_systemd(setup, tmp_path):
    n, cam = setup
    sock = start_read_only_and_wait_until_ready(n, tmp_path)
    assert n.stop() == 0
    assert sock.recv(100) == b"STOPPING=1"
    sock.close()
    assert "read-only: recording nothing" in n.log_text()
    assert all(n.rows(sid) == [] for sid in (1, 2, 3))
    assert os.listdir(os.path.join(n.cwd, "nvr-data/sample")) == ["meta"]


def test_second_signal_exits_at_once(setup, tmp_path):
    n, cam = setup
    sock = start_read_only_and_wait_until_ready(n, tmp_path)
    # Two signals back to back: the first starts the clean shutdown (which takes at
    # least one accept-loop poll, 0.1 s), the second ends the process there and then.
    n.proc.send_signal(signal.SIGTERM)
    assert n.stop(signal.SIGINT) == 1
    sock.close()
    log = n.log_text()
    # Python runs pending handlers in signal-number order, so SIGINT may come first.
    assert re.search(r"received SIG(TERM|INT); shutting down \(again to exit at once\)", log)
    assert "shut down cleanly" not in log
