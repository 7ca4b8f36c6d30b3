"""Tests of web.py against a live `web.Server` on 127.0.0.1 (port 0), with http.client.

Recordings are real: a clip made with PyAV (clips.py) replayed through the streamer,
writer and syncer (replay.py). Expected bodies come from `mp4.VirtualFile.read` of the
same request built directly, so every Range/conditional case is compared byte for byte.
ffprobe reads `view.mp4` over HTTP itself, a real client of our Range handling.
"""

from __future__ import annotations

import gc
import http.client
import json
import logging
import os
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time

import pytest

import api
import configapi
import auth
import clock
import dir as dirmod
import mp4
import nvr
import recording
import web
import writer
from clips import make_clip
from conftest import START_NS, make_testdb
from replay import drain, open_clip, record

ZONE = "America/Los_Angeles"
T0_90K = recording.to_90k_from_ns(START_NS)


# --- parse_range, from a table (bottle's parse_range_header cases and RFC 9110 §14) ------

@pytest.mark.parametrize("header,length,expected", [
    (None, 10, None),
    ("bytes=0-0", 10, [(0, 1)]),
    ("bytes=0-4", 10, [(0, 5)]),
    ("bytes=5-", 10, [(5, 10)]),           # open-ended
    ("bytes=-3", 10, [(7, 10)]),           # suffix
    ("bytes=-30", 10, [(0, 10)]),          # suffix longer than the entity
    ("bytes=0-99", 10, [(0, 10)]),         # end clipped
    ("bytes=9-9", 10, [(9, 10)]),
    ("bytes=0-1,4-5,-2", 10, [(0, 2), (4, 6), (8, 10)]),  # several, in the order asked
    ("bytes= 1-2 , -3", 10, [(1, 3), (7, 10)]),           # optional whitespace
    ("bytes=0-1,,3-4", 10, [(0, 2), (3, 5)]),             # empty list elements
    ("bytes=10-", 10, web.UNSATISFIABLE),  # starts at the end
    ("bytes=10-20", 10, web.UNSATISFIABLE),
    ("bytes=-0", 10, web.UNSATISFIABLE),
    ("bytes=-1", 0, web.UNSATISFIABLE),
    ("bytes=20-30,0-0", 10, [(0, 1)]),     # a satisfiable one is enough
    ("bytes=5-3", 10, None),               # invalid: last before first
    ("bytes=a-b", 10, None),
    ("bytes=1", 10, None),
    ("bytes=--1", 10, None),
    ("bytes=", 10, None),
    ("bytes=,", 10, None),
    ("items=0-1", 10, None),               # another unit
    ("bytes 0-1", 10, None),
    ("bytes=" + ",".join(["0-0"] * (web.MAX_RANGES + 1)), 10, None),  # too many
    ("BYTES=0-0", 10, [(0, 1)]),           # the unit is case-insensitive
    ("bytes=0-,0-,0-", 10, [(0, 10)]),     # overlapping: merged, never a byte twice
    ("bytes=6-8,0-2,1-3", 10, [(0, 4), (6, 9)]),  # ...and then in order
    ("bytes=4-5,0-3,-2", 10, [(4, 6), (0, 4), (8, 10)]),  # adjacent isn't overlapping
    ("bytes=-6,4-4", 10, [(4, 10)]),       # a suffix overlapping another
    ("bytes=0-0", 10, [(0, 1)]),
])
def test_parse_range(header, length, expected):
    assert web.parse_range(header, length) == expected


def test_parse_range_with_numbers_int_refuses():
    """Positions of more than 4300 digits (int()'s limit) are just very large."""
    nines, zeros = "9" * 5000, "0" * 5000
    assert web.parse_range(f"bytes=0-{nines}", 10) == [(0, 10)]
    assert web.parse_range(f"bytes={nines}-", 10) == web.UNSATISFIABLE
    assert web.parse_range(f"bytes=-{nines}", 10) == [(0, 10)]
    assert web.parse_range(f"bytes={zeros}3-{zeros}4", 10) == [(3, 5)]   # zeros are zeros
    assert web.parse_range(f"bytes={zeros}-{zeros}", 10) == [(0, 1)]


# --- fixtures ----------------------------------------------------------------------------

class Recorded:
    def __init__(self, t, rows, camera_uuid):
        self.t, self.rows, self.camera_uuid = t, rows, camera_uuid

    def view(self, s="0-2", kind="mp4", query="") -> str:
        return f"/api/cameras/{self.camera_uuid}/main/view.{kind}?s={s}{query}"

    def file(self, s="0-2", kind="mp4") -> mp4.VirtualFile:
        return mp4.build_view(self.t.db, self.t.stream_id, [s], kind=kind)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    recording.set_server_zone(ZONE)
    tmp = tmp_path_factory.mktemp("web")
    clocks = clock.SimulatedClocks(START_NS)
    t = make_testdb(tmp, clocks, zone=ZONE)
    clip = make_clip(str(tmp / "a.mp4"), frames=90, gop=30)
    rows = record(t, clip, clocks, frames=450)   # 9 s, 3 s, 3 s
    cam = t.db.cameras[t.camera_id]
    import uuid
    yield Recorded(t, rows, str(uuid.UUID(bytes=cam.uuid)))
    t.db.close()
    recording.set_server_zone(None)


def config(*binds: nvr.Bind) -> nvr.Config:
    return nvr.Config(db_dir="unused", ui_dir=None, binds=list(binds))


def tcp_bind(view_video: bool = True, **kw) -> nvr.Bind:
    return nvr.Bind(("ipv4", "127.0.0.1:0"),
                    allow_unauthenticated_permissions=auth.Permissions(view_video=view_video),
                    **kw)


@pytest.fixture
def serve():
    """serve(db, *binds) starts a Server and returns it; all are stopped at the end."""
    servers = []

    def start(db, *binds, **kw):
        s = web.Server(db, config(*(binds or (tcp_bind(),))), **kw)
        s.start()
        servers.append(s)
        return s
    yield start
    for s in servers:
        s.stop()


@pytest.fixture
def port(recorded, serve):
    return serve(recorded.t.db).addresses[0][1]


def request(port, path, *, method="GET", headers=None, conn=None):
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request(method, path, headers=headers or {})
    r = c.getresponse()
    body = r.read()
    if conn is None:
        c.close()
    return r.status, r.headers, body


def parse_multipart(content_type: str, body: bytes) -> list[tuple[str, bytes]]:
    """[(Content-Range, data)] of a multipart/byteranges body (RFC 9110 §14.6)."""
    boundary = re.fullmatch(r"multipart/byteranges; boundary=(\S+)", content_type)[1].encode()
    parts = body.split(b"\r\n--" + boundary)
    assert parts[0] == b"" and parts[-1] == b"--\r\n"
    out = []
    for p in parts[1:-1]:
        head, sep, data = p.partition(b"\r\n\r\n")
        assert head.startswith(b"\r\n") and sep
        fields = dict(line.split(": ", 1) for line in head[2:].decode().split("\r\n"))
        assert fields["Content-Type"].startswith("video/mp4")
        out.append((fields["Content-Range"], data))
    return out


def wait_for(cond, timeout=10.0):
    """Polls `cond` until true; fails the test if it isn't within `timeout` s."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out after {timeout} s: {cond.__code__}"
        time.sleep(0.02)


# --- serving a VirtualFile ---------------------------------------------------------------

def test_whole_view_mp4_and_ffprobe_over_http(recorded, port):
    f = recorded.file()
    status, h, body = request(port, recorded.view())
    assert status == 200
    assert body == f.read(0, f.length)
    assert int(h["Content-Length"]) == f.length
    assert h["ETag"] == f.etag
    assert h["Content-Type"] == f.content_type
    assert h["Content-Disposition"] == f.content_disposition
    assert h["Cache-Control"] == "private, max-age=3600"
    assert h["Accept-Ranges"] == "bytes"
    assert h["Last-Modified"] == f.headers()["Last-Modified"]
    if shutil.which("ffprobe") is None:
        pytest.skip("ffprobe is not installed (test/run.py installs ffmpeg)")
    p = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-show_entries",
                        "stream=codec_name,nb_read_frames", "-of", "json",
                        f"http://127.0.0.1:{port}{recorded.view()}"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    (video,) = json.loads(p.stdout)["streams"]
    assert video["codec_name"] == "h264"
    assert int(video["nb_read_frames"]) == sum(r.video_samples for r in recorded.rows)


def test_m4s_init_and_txt(recorded, port):
    f = recorded.file("1", kind="m4s")
    status, h, body = request(port, recorded.view("1", kind="m4s"))
    assert (status, body) == (200, f.read())
    assert h["X-Runs"] == f.extra_headers["X-Runs"]
    vse = recorded.rows[0].video_sample_entry_id
    init = mp4.build_init(recorded.t.db, vse)
    status, h, body = request(port, f"/api/init/{vse}.mp4")
    assert (status, body, h["ETag"]) == (200, init.read(), init.etag)
    assert "Content-Disposition" not in h and "Last-Modified" not in h  # no recordings
    # With no Last-Modified, If-Modified-Since is ignored and a date If-Range gives all.
    status, _, body = request(port, f"/api/init/{vse}.mp4", headers={
        "If-Modified-Since": "Sun, 29 Nov 2026 12:00:00 GMT"})
    assert (status, body) == (200, init.read())
    status, _, body = request(port, f"/api/init/{vse}.mp4", headers={
        "Range": "bytes=0-9", "If-Range": "Thu, 01 Jan 1970 00:00:00 GMT"})
    assert (status, body) == (200, init.read())
    status, _, _ = request(port, f"/api/init/{vse}.mp4", headers={"If-None-Match": init.etag})
    assert status == 304
    status, h, body = request(port, f"/api/init/{vse}.mp4.txt")
    assert (status, h["Content-Type"]) == (200, "text/plain; charset=utf-8")
    assert body.decode() == init.slice_table_text()
    status, h, body = request(port, recorded.view("0-2", query="&ts=true").replace(
        "view.mp4", "view.mp4.txt"))
    assert status == 200
    assert body.decode() == mp4.build_view(recorded.t.db, recorded.t.stream_id, ["0-2"],
                                           ts=True).slice_table_text()


def _ranges(length):
    """Cases: (name, request headers, status, expected [(start, end)] or None = none)."""
    mid = length // 2
    return [
        ("single", {"Range": "bytes=100-199"}, 206, [(100, 200)]),
        ("suffix", {"Range": "bytes=-500"}, 206, [(length - 500, length)]),
        ("open-ended", {"Range": f"bytes={mid}-"}, 206, [(mid, length)]),
        # Ranges crossing the moov/mdat border and a sample file border.
        ("multiple", {"Range": f"bytes=0-9,1000-1999,{mid}-{mid + 7000},-7"}, 206,
         [(0, 10), (1000, 2000), (mid, mid + 7001), (length - 7, length)]),
        ("overlapping: merged, in order", {"Range": f"bytes={mid}-,0-99,50-149,{mid}-"},
         206, [(0, 150), (mid, length)]),
        ("overlapping into one: a plain 206", {"Range": "bytes=0-,0-,0-"}, 206, [(0, length)]),
        ("unsatisfiable", {"Range": f"bytes={length}-"}, 416, None),
        ("invalid syntax: whole", {"Range": "bytes=9-1"}, 200, [(0, length)]),
        ("If-None-Match", {"If-None-Match": "ETAG"}, 304, None),
        ("If-None-Match list, weak", {"If-None-Match": '"x", W/ETAG'}, 304, None),
        ("If-None-Match mismatch", {"If-None-Match": '"x"'}, 200, [(0, length)]),
        ("If-Modified-Since", {"If-Modified-Since": "LASTMOD"}, 304, None),
        ("If-Modified-Since earlier", {"If-Modified-Since": "Thu, 01 Jan 2015 00:00:00 GMT"},
         200, [(0, length)]),
        ("If-Range match", {"Range": "bytes=5-9", "If-Range": "ETAG"}, 206, [(5, 10)]),
        ("If-Range date match", {"Range": "bytes=5-9", "If-Range": "LASTMOD"}, 206, [(5, 10)]),
        ("If-Range mismatch: whole", {"Range": "bytes=5-9", "If-Range": '"other"'}, 200,
         [(0, length)]),
    ]


@pytest.mark.parametrize("case", range(len(_ranges(10_000))))
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_range_and_conditional_requests(recorded, port, case, method):
    f = recorded.file()
    name, headers, status, expected = _ranges(f.length)[case]
    headers = {k: v.replace("ETAG", f.etag).replace("LASTMOD", f.headers()["Last-Modified"])
               for k, v in headers.items()}
    got, h, body = request(port, recorded.view(), method=method, headers=headers)
    assert got == status, (name, body)
    if status == 416:
        assert h["Content-Range"] == f"bytes */{f.length}"
        assert body == (b"" if method == "HEAD" else
                        f"none of the requested ranges is within the {f.length} bytes".encode())
        return
    assert h["ETag"] == f.etag
    assert h["Cache-Control"] == "private, max-age=3600"
    if status == 304:
        assert body == b""
        assert int(h["Content-Length"]) == f.length  # what a 200 would carry (RFC 9110 §8.6)
        return
    assert h["Accept-Ranges"] == "bytes"
    if method == "HEAD":
        assert body == b""
    if len(expected) == 1:
        (s, e), = expected
        assert int(h["Content-Length"]) == e - s
        assert h["Content-Type"] == f.content_type
        if status == 206:
            assert h["Content-Range"] == f"bytes {s}-{e - 1}/{f.length}"
        else:
            assert "Content-Range" not in h
        if method == "GET":
            assert body == f.read(s, e)
        return
    if method == "HEAD":
        # Same headers, so the length is that of the multipart body a GET gets.
        _, h_get, body_get = request(port, recorded.view(), headers=headers)
        assert int(h["Content-Length"]) == len(body_get)
        return
    assert int(h["Content-Length"]) == len(body)
    parts = parse_multipart(h["Content-Type"], body)
    assert [cr for cr, _ in parts] == [f"bytes {s}-{e - 1}/{f.length}" for s, e in expected]
    assert [d for _, d in parts] == [f.read(s, e) for s, e in expected]


def test_growing_recording_is_served_up_to_its_current_length(tmp_path, clocks, serve):
    t = make_testdb(tmp_path, clocks, zone=ZONE)
    try:
        clip = make_clip(str(tmp_path / "clip.mp4"), frames=90, gop=30)
        src = open_clip(clip)
        p = src.parameters
        vse = t.db.insert_video_sample_entry(p.width, p.height, p.rfc6381_codec, p.sample_entry)
        frames = list(src.frames_until_end())
        src.close()
        syncer = dirmod.Syncer(t.db, t.dir_id)
        w = writer.Writer(t.db, t.stream_id, syncer, shutdown=threading.Event())
        port = serve(t.db).addresses[0][1]
        import uuid
        path = (f"/api/cameras/{uuid.UUID(bytes=t.db.cameras[t.camera_id].uuid)}"
                f"/main/view.mp4?s=0")
        lengths = []
        for upto in (20, 45, 80):
            for i in range(len(lengths) and [20, 45][len(lengths) - 1] or 0, upto):
                f = frames[i]
                w.write(f.data, T0_90K + f.pts_90k, f.pts_90k, f.is_key, vse)
            status, h, body = request(port, path)
            assert status == 200
            # What the row described when the request came: everything but the last frame.
            expected = mp4.build_view(t.db, t.stream_id, ["0"])
            assert body == expected.read()
            assert len(body) == int(h["Content-Length"])
            lengths.append(len(body))
        assert lengths == sorted(lengths) and len(set(lengths)) == 3
        w.close("test")
        drain(syncer)
        t.db.flush("test")
    finally:
        t.db.close()


# --- errors ------------------------------------------------------------------------------

def test_errors(recorded, port):
    v = recorded.view
    u = recorded.camera_uuid
    cases = [
        (v("x"), 400, "invalid s parameter 'x': expected START_ID"),
        (v("0-2", query="&foo=1"), 400, "unknown parameter 'foo'; this URL takes s, ts"),
        (v("0-2", query="&ts=yes"), 400, "ts must be true or false, not 'yes'"),
        (f"/api/cameras/{u}/main/view.mp4", 400, "no s parameter"),
        (v("0.-999999999"), 400, "is beyond the recordings"),
        (v("0.0-999999999"), 400, "s=0.0-999999999: end time"),  # echoed as given
        (v("9" * 5000), 400, "a number is too large"),
        (v("0." + "9" * 5000 + "-"), 400, "a number is too large"),
        (v("99"), 404, "no recording"),
        (f"/api/cameras/{u}/sub/view.mp4?s=0", 404, f"camera {u} has no sub stream"),
        ("/api/cameras/00000000-0000-0000-0000-000000000000/main/view.mp4?s=0", 404,
         "no camera 00000000-0000-0000-0000-000000000000"),
        ("/api/init/999.mp4", 404, "no video sample entry 999"),
        ("/api/init/1.mp4?s=1", 400, "unknown parameter 's'"),
        ("/api/nothing", 404, "no such path: /api/nothing"),
        ("/index.html", 404, "no such file: /index.html"),
        ("/../etc/passwd", 404, "no such file"),
        ("/%2e%2e/etc/passwd", 404, "no such file"),
    ]
    for path, status, text in cases:
        got, h, body = request(port, path)
        assert (got, h["Content-Type"]) == (status, "text/plain; charset=utf-8"), path
        assert text in body.decode(), (path, body)
        assert int(h["Content-Length"]) == len(body)
        assert "\n" not in body.decode().strip()
    got, h, body = request(port, v(), method="POST")
    assert (got, h["Allow"]) == (405, "GET, HEAD")
    assert body == b"method POST is not allowed here; use GET or HEAD"
    got, h, body = request(port, v(), method="DELETE")
    assert got == 405


def test_401_without_view_video(recorded, serve):
    port = serve(recorded.t.db, tcp_bind(view_video=False)).addresses[0][1]
    vse = recorded.rows[0].video_sample_entry_id
    for path in (recorded.view(), recorded.view(kind="m4s"), f"/api/init/{vse}.mp4",
                 f"/api/init/{vse}.mp4.txt"):
        got, h, body = request(port, path)
        assert got == 401, path
        assert b"needs the viewVideo permission" in body
    assert request(port, "/api/nothing")[0] == 404  # not-found paths need nothing


def test_every_route_names_its_permission():
    for r in configapi.routes():
        assert r.permission in (None, api.CALLER) or hasattr(auth.Permissions(), r.permission), r
        assert set(r.methods) <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"}


def test_500_does_not_leak_the_traceback(recorded, port, monkeypatch, caplog):
    def boom(request, m):
        raise RuntimeError("secret detail")
    monkeypatch.setattr(api, "ROUTES", [api.Route(re.compile("/api/boom"), ("GET",), None,
                                                  boom)])
    with caplog.at_level(logging.INFO, logger="web"):
        got, h, body = request(port, "/api/boom")
        wait_for(lambda: "-> 500" in caplog.text)  # logged just after the response
    assert got == 500
    assert b"secret" not in body and b"Traceback" not in body
    rid = re.search(rb"request (\S+)$", body)[1].decode()
    logged = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(logged) == 1 and rid in logged[0].getMessage()
    assert "secret detail" in caplog.text  # the traceback is in the log
    # The per-request line, with status and latency.
    assert re.search(rf"{rid} 127.0.0.1 GET /api/boom -> 500, \d+ body bytes, [0-9.]+ ms",
                     caplog.text)


def test_client_disconnecting_mid_body_is_not_an_error(recorded, port, caplog):
    path = recorded.view()
    with caplog.at_level(logging.DEBUG, logger="web"):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        s.recv(1000)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()  # RST
        # Whether the reset lands mid-body or after the server wrote the whole (small)
        # body into socket buffers depends on timing; either way it is a debug line.
        wait_for(lambda: "client went away" in caplog.text or
                 re.search(r"connection from \S+ ended: ConnectionResetError", caplog.text))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert request(port, path, method="HEAD")[0] == 200  # still serving


@pytest.mark.parametrize("line", [
    b"GET / HTTP/2.0", b"GET / FOO", b"GET / HTTP/1.1x", b"POST /api/login", b"GET",
    b"A B C D", b"GET /"])
def test_malformed_request_lines_get_a_status_line(port, line, caplog):
    """http.server's own errors (and a bare HTTP/0.9 GET) are answered as HTTP/1.x with a
    status line, alone or after a good request on the same connection; nothing logged
    above INFO."""
    for first in (b"", b"GET /api/nothing HTTP/1.1\r\nHost: x\r\n\r\n"):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(first + line + b"\r\n\r\n")
        data = b"".join(iter(lambda: s.recv(65536), b""))
        s.close()
        if first:
            assert data.startswith(b"HTTP/1.1 404 ")
            data = data[data.index(b"HTTP/1.1 404 ") + 1:]
            data = data[data.index(b"HTTP/1."):]
        assert re.match(rb"HTTP/1\.[01] (400|404|505) ", data), data[:200]
    assert not [r for r in caplog.records if r.levelno > logging.INFO]


@pytest.mark.parametrize("headers,status,says", [
    ("Content-Length: 2", 400, b"two strings"),      # read as the 2 bytes {}: no keys
    ("Content-Length: 2\r\nContent-Length: 2", 400, b"two strings"),   # one value: fine
    ("Content-Length: 2, 2", 400, b"two strings"),
    ("Content-Length: 1_0", 400, b"Content-Length must be"),   # int() would read 10
    ("Content-Length: +2", 400, b"Content-Length must be"),
    ("Content-Length: 2\r\nContent-Length: 3", 400, b"Content-Length must be"),
    ("Content-Length: -1", 400, b"Content-Length must be"),
    ("Content-Length: 99999999999999999999999", 413, b"over the limit"),
    ("Transfer-Encoding: chunked", 411, b"chunked request bodies"),
])
def test_request_body_framing_is_strict(port, headers, status, says):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(f"POST /api/login HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
              f"Content-Type: application/json\r\n{headers}\r\n\r\n{{}}".encode())
    data = b"".join(iter(lambda: s.recv(65536), b""))
    s.close()
    assert data.startswith(f"HTTP/1.1 {status} ".encode()) and says in data, data[:300]


# --- connections and binds ---------------------------------------------------------------

def test_keep_alive(recorded, port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    status, _, body1 = request(port, recorded.view("1"), conn=c)
    sock = c.sock
    assert status == 200 and sock is not None
    status, _, body2 = request(port, recorded.view("1"), headers={"Range": "bytes=0-3"}, conn=c)
    status3, _, _ = request(port, "/api/nothing", conn=c)  # errors keep the connection too
    assert (status, body2, status3) == (206, body1[:4], 404)
    assert c.sock is sock  # http.client would have reconnected had the server closed
    c.close()


def make_cert(tmp_path) -> tuple[str, str]:
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    return cert, key


def test_tls_bind(recorded, serve, tmp_path):
    cert, key = make_cert(tmp_path)
    srv = serve(recorded.t.db, tcp_bind(tls_cert=cert, tls_key=key))
    port = srv.addresses[0][1]
    ctx = ssl.create_default_context(cafile=cert)
    f = recorded.file()
    for _ in range(2):
        c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
        status, h, body = request(port, recorded.view(), conn=c,
                                  headers={"Range": "bytes=10-,0-3"})
        assert status == 206
        parts = parse_multipart(h["Content-Type"], body)
        assert [d for _, d in parts] == [f.read(10), f.read(0, 4)]  # read/write, no sendfile
        assert request(port, recorded.view(), conn=c)[2] == f.read()  # keep-alive over TLS
        c.close()
        # Plain HTTP to the TLS port fails cleanly, and the server keeps serving.
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            request(port, recorded.view())


def test_unix_and_two_binds(recorded, serve, tmp_path):
    path = str(tmp_path / "sock")
    with open(path, "w"):
        pass
    with pytest.raises(web.BindError, match="exists and is not a socket"):
        serve(recorded.t.db, nvr.Bind(("unix", path)))
    assert os.path.exists(path)  # not ours: left alone
    os.unlink(path)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)  # a socket left by an earlier run
    stale.close()
    srv = serve(recorded.t.db, tcp_bind(), nvr.Bind(
        ("unix", path), allow_unauthenticated_permissions=auth.Permissions(view_video=True)))
    assert srv.addresses[1] == path
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    s.sendall(f"HEAD {recorded.view()} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert s.recv(100).startswith(b"HTTP/1.1 200 OK\r\n")
    s.close()
    assert request(srv.addresses[0][1], recorded.view(), method="HEAD")[0] == 200
    srv.stop()
    assert not os.path.exists(path)


def test_bind_errors(recorded, serve):
    srv = serve(recorded.t.db)
    taken = srv.addresses[0][1]
    with pytest.raises(web.BindError, match=f"can't listen on ipv4 127.0.0.1:{taken}"):
        serve(recorded.t.db, tcp_bind(), nvr.Bind(("ipv4", f"127.0.0.1:{taken}")))
    with pytest.raises(web.BindError, match="expected \\[ADDRESS\\]:PORT"):
        serve(recorded.t.db, nvr.Bind(("ipv6", "::1:80")))


def _fds():
    gc.collect()
    return len(os.listdir("/proc/self/fd"))


def test_start_stop_leaves_no_threads_or_fds(recorded):
    path = recorded.view("1")
    for i in range(21):
        srv = web.Server(recorded.t.db, config(tcp_bind()))
        srv.start()
        port = srv.addresses[0][1]
        # A finished request, and an idle keep-alive connection stop() must end.
        assert request(port, path, method="HEAD")[0] == 200
        idle = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        assert request(port, path, headers={"Range": "bytes=0-9"}, conn=idle)[0] == 206
        srv.stop()
        idle.close()
        if i == 0:
            baseline = _fds()  # after the first: lazily opened things exist
        # Every thread the server started (accept loops "http-<bind>", handlers
        # "http-conn-<n>") has ended when stop() returns.
        assert not [t.name for t in threading.enumerate() if t.name.startswith("http")]
    # No fd leaked over 20 cycles. Other tests' threads may still be closing theirs, so
    # the count may settle below the baseline, never above it.
    wait_for(lambda: _fds() <= baseline, timeout=5.0)
    assert _fds() <= baseline, os.listdir("/proc/self/fd")


@pytest.mark.parametrize("family", ["tcp", "unix"])
def test_body_writer_corks_tcp_only_while_sample_data_goes(tmp_path, monkeypatch, family):
    """Sample bytes go with TCP_CORK set (full segments, as nginx's tcp_nopush); the
    headers before them go uncorked (time to first byte), and the end uncorks (the
    last partial segment isn't held back). Unix sockets have no cork."""
    if family == "tcp":
        ls = socket.create_server(("127.0.0.1", 0))
        client = socket.create_connection(ls.getsockname())
        server, _ = ls.accept()
        ls.close()
    else:
        server, client = socket.socketpair(socket.AF_UNIX)
    server.settimeout(10)
    data = os.urandom(300_000)
    (tmp_path / "f").write_bytes(data)

    def cork() -> int | None:
        if family == "unix":
            return None
        return server.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK)

    seen = []

    class FakeHandler:
        connection = server

        def _write(self, b):
            seen.append(("write", cork()))
            server.sendall(b)

    real = web._BodyWriter._send_file_chunk

    def send_file_chunk(self, c):
        seen.append(("file", cork()))
        real(self, c)

    monkeypatch.setattr(web._BodyWriter, "_send_file_chunk", send_file_chunk)
    got = bytearray()
    reader = threading.Thread(target=lambda: [got.extend(b) for b in iter(
        lambda: client.recv(1 << 16), b"")])
    reader.start()
    out = web._BodyWriter(FakeHandler())
    out.add(b"HEADERS")
    out.flush()
    out.add(b"moov")
    out.add(mp4.FileChunk(str(tmp_path / "f"), 0, 200_000))
    out.add(b"between")
    out.add(mp4.FileChunk(str(tmp_path / "f"), 200_000, 100_000))
    out.end()
    after = cork()
    server.close()
    reader.join(10)
    client.close()
    assert bytes(got) == b"HEADERSmoov" + data[:200_000] + b"between" + data[200_000:]
    if family == "tcp":
        assert seen == [("write", 0), ("write", 0), ("file", 1), ("write", 1), ("file", 1)]
        assert after == 0
    else:
        assert seen == [("write", None), ("write", None), ("file", None),
                        ("write", None), ("file", None)]


# --- issue 19 item 3: slow clients, deadlines and connection caps -------------------------------

def test_deadline_phases_with_simulated_time():
    c = clock.SimulatedClocks(START_NS)
    d = web.Deadline(c)
    assert d.remaining() is None
    d.set("idle", 60, then=("head", 30))
    c.sleep(59)
    assert d.remaining() == pytest.approx(1)
    d.got(0)                                  # a read of nothing doesn't start the head
    assert d.what == "idle"
    d.got(5)                                  # the next request's first bytes
    assert (d.what, d.received) == ("head", 5) and d.remaining() == pytest.approx(30)
    c.sleep(29.5)
    d.got(100)                                # more of the head: the deadline stands
    assert d.remaining() == pytest.approx(0.5)
    c.sleep(0.5)
    with pytest.raises(web.DeadlinePassed) as e:
        d.remaining()
    assert (e.value.what, e.value.seconds, e.value.received) == ("head", 30, 105)
    assert isinstance(e.value, TimeoutError)
    d.clear()
    assert d.remaining() is None


SHORT = web.Limits(head_sec=0.5, idle_sec=0.5, body_sec=0.5, body_min_bytes_per_sec=1e6)


class Trickler:
    """Sends one byte to each of its sockets every `interval` s until each is closed by
    the server (a pacing, not a synchronisation: the test waits for the server's EOF)."""

    def __init__(self, socks, data: bytes, interval: float = 0.05):
        self.socks, self.data, self.interval = socks, data, interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        i = 0
        live = list(self.socks)
        while live and not self.stop.wait(self.interval):
            for s in list(live):
                try:
                    s.send(self.data[i % len(self.data):][:1])
                except OSError:
                    live.remove(s)
            i += 1

    def close(self):
        self.stop.set()
        self.thread.join()


def _read_to_eof(s: socket.socket, timeout: float = 10.0) -> bytes:
    s.settimeout(timeout)
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except ConnectionResetError:
        pass
    return out


def _connect(port, source="127.0.0.1") -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


def test_slow_heads_and_bodies_are_cut_at_their_deadlines_while_others_are_served(
        recorded, serve):
    # Before the fix: the 120 s timeout was per read, so these sockets, sending a byte
    # every 50 ms, stayed open (each holding a thread) as long as they kept sending.
    srv = serve(recorded.t.db, limits=SHORT)
    port = srv.addresses[0][1]
    heads = [_connect(port) for _ in range(4)]
    for s in heads:
        s.sendall(b"GET /api/request HTTP/1.1\r\nHost: x\r\n")
    bodies = [_connect(port) for _ in range(2)]
    for s in bodies:
        s.sendall(b"POST /api/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                  b"\r\nContent-Length: 1000\r\n\r\n{")
    t = Trickler(heads + bodies, b"X-Slow: yes\r\n")
    began = time.monotonic()
    try:
        # Meanwhile another client is served normally, on one keep-alive connection.
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        for _ in range(5):
            status, _, body = request(port, "/api/request", conn=c)
            assert status == 200 and b"client addr" in body
        c.close()
        for s in heads:
            got = _read_to_eof(s)
            assert got.startswith(b"HTTP/1.1 408 "), got
            assert b"request head incomplete after 0.5 s" in got
        for s in bodies:
            got = _read_to_eof(s)
            assert got.startswith(b"HTTP/1.1 408 "), got
            assert b"the request body (1000 bytes) didn't arrive within 0.501 s" in got
        assert time.monotonic() - began < 5
    finally:
        t.close()
        for s in heads + bodies:
            s.close()
    assert srv._servers[0].wait_connections(lambda s: s.connection_count() == 0, 10)


def test_idle_keep_alive_and_silent_connections_are_closed_without_a_word(recorded, serve):
    srv = serve(recorded.t.db, limits=SHORT)
    port = srv.addresses[0][1]
    silent = _connect(port)            # connects, never sends: closed after head_sec
    idle = _connect(port)
    idle.sendall(b"GET /api/request HTTP/1.1\r\nHost: x\r\n\r\n")
    first = b""
    while b"\r\n\r\n" not in first:
        first += idle.recv(65536)
    began = time.monotonic()
    assert _read_to_eof(silent) == b""
    rest = _read_to_eof(idle)          # the rest of the first response, then EOF
    assert b"HTTP/1.1" not in rest     # no 408 to an idle connection
    assert time.monotonic() - began < 5
    silent.close()
    idle.close()


def test_a_connection_with_a_slow_handler_is_not_cut(recorded, serve, monkeypatch):
    """Deadlines are for reading the request; a handler taking longer than all of them
    (here 3x the head and idle deadlines) still answers."""
    srv = serve(recorded.t.db, limits=SHORT)
    release = threading.Event()
    orig = api.handle_request

    def slow(req, m):
        release.wait(1.5)   # the test's client waits meanwhile: nothing to sync on
        return orig(req, m)
    monkeypatch.setattr(api, "ROUTES", [api.Route(r.pattern, r.methods, r.permission, slow)
                                        if r.handler is orig else r for r in api.ROUTES])
    status, _, body = request(srv.addresses[0][1], "/api/request")
    assert status == 200 and b"client addr" in body


def test_tls_handshake_trickled_is_cut_at_the_head_deadline(recorded, serve, tmp_path,
                                                            caplog):
    """The handshake counts against the first request's head deadline, in total: before,
    each of its reads had the 120 s timeout. Over the cap, a TLS bind just closes."""
    cert, key = make_cert(tmp_path)
    srv = serve(recorded.t.db, tcp_bind(tls_cert=cert, tls_key=key),
                limits=web.Limits(head_sec=0.5, max_per_peer=2))
    port = srv.addresses[0][1]
    slow = _connect(port)
    # The first bytes of a TLS record header, then a byte every 50 ms.
    slow.sendall(b"\x16\x03\x01")
    t = Trickler([slow], b"\x02\x00")
    began = time.monotonic()
    try:
        assert _read_to_eof(slow) == b""
        assert time.monotonic() - began < 5
    finally:
        t.close()
        slow.close()
    ctx = ssl.create_default_context(cafile=cert)
    c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    assert request(port, "/api/request", conn=c)[0] == 200
    held = [_connect(port), _connect(port)]   # c and one of these reach the cap of 2
    assert _read_to_eof(held[1], 10) == b""
    assert "refusing a connection from 127.0.0.1: 2 open from 127.0.0.1" in caplog.text
    c.close()
    for s in held:
        s.close()


def _get_ok(s: socket.socket) -> None:
    s.sendall(b"GET /api/request HTTP/1.1\r\nHost: x\r\n\r\n")
    s.settimeout(10)
    got = b""
    while b"\r\n\r\n" not in got:
        got += s.recv(65536)
    assert got.startswith(b"HTTP/1.1 200 "), got


def _refused(s: socket.socket) -> bytes:
    s.sendall(b"GET /api/request HTTP/1.1\r\nHost: x\r\n\r\n")
    return _read_to_eof(s)


def test_connection_caps_per_peer_and_per_bind_answer_503(recorded, serve, caplog):
    # Before the fix there was no cap: every connection got a thread.
    limits = web.Limits(max_per_peer=3, max_per_bind=5, retry_after_sec=7)
    srv = serve(recorded.t.db, limits=limits)
    port = srv.addresses[0][1]
    hs = srv._servers[0]
    a = [_connect(port) for _ in range(3)]
    for s in a:
        _get_ok(s)                               # each is open, served, kept alive
    extra = _connect(port)
    got = _refused(extra)
    assert got.startswith(b"HTTP/1.1 503 "), got
    assert b"Retry-After: 7\r\n" in got and b"3 open from 127.0.0.1" in got
    # Another address (all of 127/8 is loopback) has its own count, up to the bind's cap.
    b = [_connect(port, "127.0.0.2") for _ in range(2)]
    for s in b:
        _get_ok(s)
    got = _refused(_connect(port, "127.0.0.3"))
    assert got.startswith(b"HTTP/1.1 503 ") and b"5 open on this listener" in got, got
    assert "refusing a connection" in caplog.text
    # One closes: its thread ends and frees a place for that address.
    a[0].close()
    assert hs.wait_connections(lambda s: s.connection_count("127.0.0.1") == 2, 10)
    again = _connect(port)
    _get_ok(again)
    for s in a[1:] + b + [extra, again]:
        s.close()
    assert hs.wait_connections(lambda s: s.connection_count() == 0, 10)


def test_live_websockets_count_toward_the_caps_and_outlive_the_deadlines(recorded, serve):
    """A 3x3 live grid holds 9 WebSockets: under the default caps they and the page's
    other requests are all served; they count (here against a cap of 9 per address)
    and stay open past every request deadline (they ping and pong)."""
    import live
    from test_live import WsClient
    assert web.Limits().max_per_peer >= 9 + 6
    srv = serve(recorded.t.db, limits=web.Limits(head_sec=0.3, idle_sec=0.3, max_per_peer=9))
    srv.live_options = live.Options(ping_interval_sec=0.2)
    port = srv.addresses[0][1]
    path = f"/api/cameras/{recorded.camera_uuid}/main/live.m4s"
    grid = [WsClient(port, path) for _ in range(9)]
    assert [c.status for c in grid] == [101] * 9
    got = _refused(_connect(port))
    assert got.startswith(b"HTTP/1.1 503 "), got
    began = time.monotonic()
    while time.monotonic() - began < 1.0:    # > 3 deadlines: pings keep coming
        for c in grid:
            assert c.recv_frame()[0] == live.PING
            c.send(live.PONG, b"")
    for c in grid:
        c.send(live.PING, b"still here")
        assert c.recv_skipping_pings() == (live.PONG, b"still here")
        c.close()
    assert srv._servers[0].wait_connections(lambda s: s.connection_count() == 0, 10)
    assert request(port, "/api/request")[0] == 200


# --- issue 19 item 9: a custom uiDir, .gz siblings, hashed names ------------------------------

def test_ui_content_security_policy_config_key():
    base = 'dbDir = "d"\n[[binds]]\nipv4 = "127.0.0.1:0"\n'
    # Before the fix: "unknown key 'uiContentSecurityPolicy'".
    c = nvr.parse_config('uiDir = "/srv/ui"\nuiContentSecurityPolicy = "script-src \'self\' '
                         '\'unsafe-inline\'"\n' + base, "test")
    assert c.ui_content_security_policy == "script-src 'self' 'unsafe-inline'"
    assert nvr.parse_config(base, "test").ui_content_security_policy is None
    with pytest.raises(nvr.UsageError, match="is for a custom uiDir"):
        nvr.parse_config('uiContentSecurityPolicy = "x"\n' + base, "test")
    with pytest.raises(nvr.UsageError, match="must be a str"):
        nvr.parse_config('uiDir = "/srv/ui"\nuiContentSecurityPolicy = 1\n' + base, "test")


@pytest.fixture
def custom_ui(tmp_path):
    import gzip
    ui = tmp_path / "custom-ui"
    (ui / "assets").mkdir(parents=True)
    (ui / "index.html").write_text("<script>window.x = 1</script>")
    big = ("// " + "moonfire " * 20 + "\n") * 2000
    (ui / "assets" / "index-3f2a9c1b.js").write_text(big)
    (ui / "assets" / "index-3f2a9c1b.js.gz").write_bytes(gzip.compress(big.encode()))
    (ui / "app.js").write_text("plain")
    outside = tmp_path / "secret.gz"
    outside.write_bytes(gzip.compress(b"secret"))
    os.symlink(outside, ui / "app.js.gz")          # a .gz leading out of uiDir: ignored
    return ui, big.encode()


def test_custom_ui_dir_gets_the_configured_csp_and_ours_the_strict_one(recorded, custom_ui):
    ui, _ = custom_ui
    csp = "default-src 'self'; script-src 'self' 'unsafe-inline'"
    servers = [web.Server(recorded.t.db, nvr.Config("unused", str(ui), [tcp_bind()], ui_content_security_policy=c))
               for c in (csp, "", None)]
    servers.append(web.Server(recorded.t.db, nvr.Config("unused", None, [tcp_bind()])))
    try:
        for s in servers:
            s.start()
        got = [request(s.addresses[0][1], "/")[1].get("Content-Security-Policy")
               for s in servers]
        assert got[0] == csp                      # before the fix: always web.STATIC_CSP
        assert got[1] is None                     # "": none at all
        assert got[2] == got[3] == web.STATIC_CSP  # unset, and nvr's own UI: strict
    finally:
        for s in servers:
            s.stop()


def test_gzip_sibling_is_sent_to_clients_that_take_it(recorded, custom_ui):
    import gzip
    ui, big = custom_ui
    srv = web.Server(recorded.t.db, nvr.Config("unused", str(ui), [tcp_bind()]))
    srv.start()
    try:
        port = srv.addresses[0][1]
        path = "/assets/index-3f2a9c1b.js"
        gz = (ui / "assets" / "index-3f2a9c1b.js.gz").read_bytes()
        # Before the fix: always the plain file.
        status, h, body = request(port, path, headers={"Accept-Encoding": "br, gzip"})
        assert status == 200 and h["Content-Encoding"] == "gzip" and body == gz
        assert h["Content-Length"] == str(len(gz)) and len(gz) < len(big) // 10
        assert h["Vary"] == "Accept-Encoding"
        assert h["Content-Type"] == "text/javascript; charset=utf-8"
        assert gzip.decompress(body) == big
        gz_etag = h["ETag"]
        status, h, body = request(port, path)     # no Accept-Encoding
        assert status == 200 and "Content-Encoding" not in h and body == big
        assert h["Vary"] == "Accept-Encoding" and h["ETag"] != gz_etag
        for refuses in ("gzip;q=0", "identity", "br", "gzip; q=0.0, deflate"):
            h = request(port, path, headers={"Accept-Encoding": refuses})[1]
            assert "Content-Encoding" not in h, refuses
        # Ranges and conditionals apply to the bytes sent: the compressed ones.
        status, h, body = request(port, path, headers={"Accept-Encoding": "gzip",
                                                       "Range": "bytes=10-19"})
        assert status == 206 and body == gz[10:20] and h["Content-Encoding"] == "gzip"
        assert h["Content-Range"] == f"bytes 10-19/{len(gz)}"
        status, h, _ = request(port, path, headers={"Accept-Encoding": "gzip",
                                                    "If-None-Match": gz_etag})
        assert status == 304 and h["Vary"] == "Accept-Encoding"
        status, h, body = request(port, path, method="HEAD", headers={"Accept-Encoding": "*"})
        assert status == 200 and body == b"" and h["Content-Length"] == str(len(gz))
        # A .gz symlinked out of the UI dir is never sent; nor is a .gz asked for by name.
        status, h, body = request(port, "/app.js", headers={"Accept-Encoding": "gzip"})
        assert (status, body) == (200, b"plain") and "Content-Encoding" not in h
        assert request(port, path + ".gz")[0] == 404
        for bad in ("/assets/../../secret.gz", "/%2e%2e/secret.gz", "/assets/..%2f..%2fsecret.gz",
                    "/app.js/../../secret.gz", "/.%2e/custom-ui/app.js"):
            assert request(port, bad, headers={"Accept-Encoding": "gzip"})[0] == 404, bad
    finally:
        srv.stop()


def test_content_hashed_names_are_cached_for_a_year(recorded, custom_ui):
    ui, _ = custom_ui
    srv = web.Server(recorded.t.db, nvr.Config("unused", str(ui), [tcp_bind()]))
    srv.start()
    try:
        port = srv.addresses[0][1]
        h = request(port, "/assets/index-3f2a9c1b.js")[1]
        # Before the fix: "public, no-cache" for every file.
        assert h["Cache-Control"] == "public, max-age=31536000, immutable"
        assert request(port, "/app.js")[1]["Cache-Control"] == "public, no-cache"
        assert request(port, "/")[1]["Cache-Control"] == "public, no-cache"
    finally:
        srv.stop()
    for name, hashed in (("index-3f2a9c1b.js", True), ("main.3f2a9c1b.css", True),
                         ("chunk-BxQ7_k9a.js", True), ("users-settings.js", False),
                         ("index-abcdefgh.js", False), ("a-1234567.js", False),
                         ("app.js", False), ("style.css", False)):
        assert bool(web._HASHED_NAME.fullmatch(name)) == hashed, name


def test_parse_range_fuzz_whole_unicode_and_huge_numbers():
    """Any header text (the whole of Unicode, lone surrogates too; numbers of thousands
    of digits, leading zeros included) gives whole / ranges within the entity / 416."""
    pytest.importorskip("hypothesis")
    from hypothesis import given, settings
    from hypothesis import strategies as st
    num = st.sampled_from(["", "0", "7", "0" * 5000, "9" * 5000, "0" * 4400 + "3",
                           "1" * 31]) | st.integers(0, 2 ** 70).map(str)
    spec = st.one_of(st.tuples(num, num).map("-".join), num.map(lambda n: "-" + n),
                     st.text(st.characters(exclude_categories=()), max_size=12))

    @settings(max_examples=300, deadline=None)
    @given(unit=st.sampled_from(["bytes", "Bytes", "items", ""]),
           specs=st.lists(spec, max_size=5), length=st.integers(0, 10 ** 6))
    def one(unit, specs, length):
        got = web.parse_range(f"{unit}={','.join(specs)}", length)
        assert got is None or got == web.UNSATISFIABLE or all(
            0 <= s < e <= length for s, e in got), got
    one()
