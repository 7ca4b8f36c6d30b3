"""Tests of live.py: RFC 6455 framing from tables, the frame queue's drop policy, and
live.m4s end to end against a real `web.Server` with a stream being recorded.

The end-to-end tests share one recording (module fixture): the test camera (GStreamer's
RTSP server, camera.py) serves a small 320x240 30 fps H.264 stream with a key frame
every half second; an in-process `nvr.Recorder` (streamer, writer, syncer) records it,
rotating every 2 s, into a real database with real clocks. Each test starts its own
`web.Server` on 127.0.0.1 and talks to it with `WsClient`, a raw-socket WebSocket client
written here (its framing is independent of live.py's). The stream "main" of the same
camera records but has no URL, so no frame ever comes (pings); "ext" doesn't record.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
import socket
import ssl
import struct
import subprocess
import threading
import time
import uuid as uuidlib

import pytest

import api
import auth
import clock
import db as dbmod
import live
import mp4
import nvr
import recording
import stream
import web
from camera import RtspCamera, Stream, unavailable_reason

# --- the handshake (RFC 6455 §1.3, §4.2.2) ------------------------------------------------


def test_accept_key_is_the_rfc_example():
    # RFC 6455 §1.3: SHA-1 b37a4f2cc0624f1690f64606cf385945b2bec4ea, base64 below.
    assert live.accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


class Headers(dict):
    """A case-insensitive header dict with get_all, like http.client.HTTPMessage."""

    def __init__(self, **kw):
        super().__init__({k.replace("_", "-").lower(): v for k, v in kw.items()})

    def get(self, k, default=None):
        v = super().get(k.lower(), default)
        return v[0] if isinstance(v, list) else v

    def get_all(self, k):
        v = super().get(k.lower())
        return None if v is None else v if isinstance(v, list) else [v]


KEY = "dGhlIHNhbXBsZSBub25jZQ=="
GOOD = dict(Host="nvr:8080", Upgrade="websocket", Connection="keep-alive, Upgrade",
            Sec_WebSocket_Version="13", Sec_WebSocket_Key=KEY)


V13 = {"Sec-WebSocket-Version": "13"}


@pytest.mark.parametrize("change,status,headers", [
    ({}, None, None),
    ({"Upgrade": "WebSocket"}, None, None),               # tokens are case-insensitive
    ({"Origin": "http://nvr:8080"}, None, None),
    ({"Origin": "https://NVR/"}, None, None),             # port ignored, host case too
    ({"Host": "[::1]:8080", "Origin": "http://[::1]:9"}, None, None),
    ({"Upgrade": None}, 400, {}),
    ({"Upgrade": "h2c"}, 400, {}),
    ({"Connection": "keep-alive"}, 400, {}),
    ({"Sec_WebSocket_Version": None}, 400, V13),
    ({"Sec_WebSocket_Version": "8"}, 400, V13),
    ({"Sec_WebSocket_Key": None}, 400, V13),
    ({"Sec_WebSocket_Key": "c2hvcnQ="}, 400, V13),       # 5 bytes, not 16
    ({"Sec_WebSocket_Key": "not base64!!!!!!!!!!!!=="}, 400, V13),
    ({"Sec_WebSocket_Key": [KEY, KEY]}, 400, V13),
    ({"Origin": "http://evil.example"}, 403, {}),
    ({"Origin": "http://nvr.evil.example:8080"}, 403, {}),
    ({"Origin": "null"}, 403, {}),
    ({"Origin": "http://[::1"}, 403, {}),                 # unparseable
    ({"Origin": "http://nvr", "Host": None}, 403, {}),
])
def test_check_upgrade(change, status, headers):
    h = dict(GOOD)
    for k, v in change.items():
        if v is None:
            h.pop(k, None)
        else:
            h[k] = v
    if status is None:
        assert live.check_upgrade(Headers(**h)) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        return
    with pytest.raises(api.HttpError) as e:
        live.check_upgrade(Headers(**h))
    assert (e.value.status, e.value.headers) == (status, headers)


def test_check_upgrade_needs_http_1_1():
    with pytest.raises(api.HttpError, match="HTTP/1.1"):
        live.check_upgrade(Headers(**GOOD), "HTTP/1.0")


# --- framing (RFC 6455 §5), against an encoder written here ------------------------------

def client_frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bytes | None = b"abcd",
                 rsv: int = 0, length_form: str | None = None) -> bytes:
    """A frame as a client sends it (masked unless mask=None), written independently of
    live.encode_frame. `length_form` forces "16" or "64" (for non-minimal lengths)."""
    n = len(payload)
    mbit = 0x80 if mask is not None else 0
    out = bytes([(0x80 if fin else 0) | rsv | opcode])
    if length_form == "64" or (length_form is None and n > 0xFFFF):
        out += bytes([mbit | 127]) + n.to_bytes(8, "big")
    elif length_form == "16" or (length_form is None and n > 125):
        out += bytes([mbit | 126]) + n.to_bytes(2, "big")
    else:
        out += bytes([mbit | n])
    if mask is None:
        return out + payload
    return out + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


@pytest.mark.parametrize("n,header", [
    (0, b"\x82\x00"),
    (125, b"\x82\x7d"),
    (126, b"\x82\x7e\x00\x7e"),
    (65535, b"\x82\x7e\xff\xff"),
    (65536, b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00"),
])
def test_frame_lengths(n, header):
    payload = bytes(i % 251 for i in range(n))
    # Server frames: unmasked, the shortest length form.
    data = live.encode_frame(live.BINARY, payload)
    assert data == header + payload
    assert live.Decoder(masked=False, max_bytes=1 << 20).feed(data) == [
        live.Frame(live.BINARY, payload)]
    # Client frames: masked; the same bytes as the independent encoder.
    masked = live.encode_frame(live.BINARY, payload, mask=b"abcd")
    assert masked == client_frame(live.BINARY, payload)
    assert masked[1] & 0x80 and masked[len(header):len(header) + 4] == b"abcd"
    d = live.Decoder(masked=True, max_bytes=1 << 20)
    assert d.feed(masked) == [live.Frame(live.BINARY, payload)]
    # Byte by byte too: nothing until the last byte.
    d = live.Decoder(masked=True, max_bytes=1 << 20)
    got = [f for i in range(len(masked)) for f in d.feed(masked[i:i + 1])]
    assert got == [live.Frame(live.BINARY, payload)]


def test_text_close_ping_encoding():
    assert live.encode_frame(live.TEXT, b"hi") == b"\x81\x02hi"
    assert live.encode_frame(live.PING) == b"\x89\x00"
    assert live.encode_frame(live.PONG, b"x") == b"\x8a\x01x"
    assert live.encode_frame(live.CLOSE, live.close_payload(1000, "bye")) == \
        b"\x88\x05\x03\xe8bye"
    assert live.encode_frame(live.TEXT, b"ab", fin=False) == b"\x01\x02ab"
    with pytest.raises(ValueError):
        live.encode_frame(live.PING, bytes(126))
    with pytest.raises(ValueError):
        live.encode_frame(live.CLOSE, b"", fin=False)


def test_fragments_are_reassembled_around_control_frames():
    d = live.Decoder(masked=True)
    data = (client_frame(live.TEXT, b"Hel", fin=False) + client_frame(live.PING, b"p")
            + client_frame(live.CONTINUATION, b"l", fin=False)
            + client_frame(live.CONTINUATION, b"o") + client_frame(live.BINARY, b"\x00")
            + client_frame(live.PONG, b"") + client_frame(live.TEXT, b""))
    assert d.feed(data) == [live.Frame(live.PING, b"p"), live.Frame(live.TEXT, b"Hello"),
                            live.Frame(live.BINARY, b"\x00"), live.Frame(live.PONG, b""),
                            live.Frame(live.TEXT, b"")]


@pytest.mark.parametrize("data,code", [
    (client_frame(live.TEXT, b"x", mask=None), 1002),               # unmasked client frame
    (client_frame(live.TEXT, b"x", rsv=0x40), 1002),                # RSV1 without extension
    (client_frame(0x3, b"x"), 1002),                                # reserved data opcode
    (client_frame(0xB, b"x"), 1002),                                # reserved control opcode
    (client_frame(live.PING, b"x", fin=False), 1002),               # fragmented control
    (client_frame(live.PING, bytes(126)), 1002),                    # control over 125 bytes
    (client_frame(live.CONTINUATION, b"x"), 1002),                  # nothing to continue
    (client_frame(live.TEXT, b"a", fin=False) + client_frame(live.TEXT, b"b"), 1002),
    (client_frame(live.BINARY, b"x", length_form="16"), 1002),      # non-minimal 16-bit
    (client_frame(live.BINARY, bytes(200), length_form="64"), 1002),  # non-minimal 64-bit
    (b"\x82\xff" + (1 << 63).to_bytes(8, "big") + b"abcd", 1002),   # 64-bit top bit set
    (client_frame(live.BINARY, bytes(1025)), 1009),                 # one frame over the limit
    (b"\x82\xff" + (1 << 40).to_bytes(8, "big"), 1009),            # known from the header
    (client_frame(live.BINARY, bytes(600), fin=False)
     + client_frame(live.CONTINUATION, bytes(600)), 1009),          # a message over it
    (client_frame(live.TEXT, b"\xff\xfe"), 1007),                   # text not UTF-8
])
def test_decoder_errors(data, code):
    d = live.Decoder(masked=True, max_bytes=1024)
    with pytest.raises(live.ProtocolError) as e:
        d.feed(data)
    assert e.value.code == code


def test_decoder_as_client_refuses_masked_server_frames():
    with pytest.raises(live.ProtocolError) as e:
        live.Decoder(masked=False).feed(client_frame(live.BINARY, b"x"))
    assert e.value.code == 1002


@pytest.mark.parametrize("payload,expected", [
    (b"", (None, "")),
    (b"\x03\xe8", (1000, "")),
    (b"\x03\xe9going", (1001, "going")),
    (b"\x0b\xb8", (3000, "")),
    (b"\x13\x87", (4999, "")),
    (b"\x03", 1002),                 # a lone byte
    (b"\x03\xe7", 1002),             # 999
    (b"\x03\xed", 1002),             # 1005: reserved, never sent
    (b"\x03\xee", 1002),             # 1006
    (b"\x03\xf7", 1002),             # 1015
    (b"\x0b\xb7", 1002),             # 2999
    (b"\x13\x88", 1002),             # 5000
    (b"\x03\xe8\xff", 1007),         # reason not UTF-8
])
def test_parse_close(payload, expected):
    if isinstance(expected, tuple):
        assert live.parse_close(payload) == expected
    else:
        with pytest.raises(live.ProtocolError) as e:
            live.parse_close(payload)
        assert e.value.code == expected


def test_close_payload_fits_a_control_frame():
    p = live.close_payload(1011, "é" * 100)   # 200 bytes of reason: cut on a character
    assert len(p) <= 125 and live.parse_close(p) == (1011, "é" * 61)
    assert live.close_payload(None) == b""


# --- the frame queue's drop policy ---------------------------------------------------------

@pytest.fixture
def efd():
    fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    yield fd
    os.close(fd)


def frames(q):
    out = []
    while (item := q.take()) is not None:
        out.append((item[0], item[1].media_start_90k, item[1].is_key))
    return out


def test_queue_waits_for_a_key_frame_without_counting_drops(efd):
    q = live._FrameQueue(efd, live.Options(max_queue_frames=4))
    q.on_frame(1, 0, 10, False)      # joined mid-GOP with nothing recorded: not a drop
    assert q.take() is None
    q.on_frame(1, 10, 20, True)
    q.on_frame(1, 20, 30, False)
    assert os.eventfd_read(efd) == 1  # one wake-up for the queue becoming non-empty
    assert frames(q) == [(0, 10, True), (0, 20, False)]


def test_queue_overflow_drops_and_resumes_at_the_next_key_frame(efd):
    q = live._FrameQueue(efd, live.Options(max_queue_frames=3))
    # The GOP recorded before subscribing doesn't count against the bound.
    q.prime([live.LiveFrame(1, t, t + 10, t == 0) for t in range(0, 100, 10)])
    for t in range(100, 130, 10):
        q.on_frame(1, t, t + 10, False)
    assert q.take()[1].media_start_90k == 0
    q.on_frame(1, 130, 140, False)   # 13 queued, 4 of them counted: overflow
    q.on_frame(1, 140, 150, False)   # skipped, waiting for a key frame
    assert q.take() is None
    q.on_frame(1, 150, 160, True)
    q.on_frame(1, 160, 170, False)
    assert frames(q) == [(14, 150, True), (0, 160, False)]
    assert q.dropped_total == 14


def test_queue_overflow_at_a_key_frame_keeps_it(efd):
    q = live._FrameQueue(efd, live.Options(max_queue_frames=2))
    q.on_frame(1, 0, 10, True)
    q.on_frame(1, 10, 20, False)
    q.on_frame(1, 20, 30, True)      # 3 > 2: the two before it go
    assert frames(q) == [(2, 20, True)]


def test_queue_bound_in_media_time(efd):
    q = live._FrameQueue(efd, live.Options(max_queue_90k=25))
    q.on_frame(1, 0, 10, True)
    q.on_frame(1, 10, 20, False)
    assert q.take()[1].media_start_90k == 0      # 10 ticks queued now
    q.on_frame(1, 20, 30, False)                  # 20
    q.on_frame(1, 30, 40, False)                  # 30 > 25: dropped, 3 frames
    q.on_frame(2, 0, 0, False)                    # (a trailing zero) skipped too
    q.on_frame(3, 0, 10, True)
    assert frames(q) == [(4, 0, True)]


# --- end to end: a WebSocket client written here --------------------------------------------

class Closed(Exception):
    pass


class WsClient:
    """A raw-socket WebSocket client: handshake, masked frames out, frames in."""

    def __init__(self, port: int, path: str, *, headers: dict | None = None,
                 rcvbuf: int | None = None, tls: ssl.SSLContext | None = None,
                 key: str | None = None, early: bytes = b""):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect
        s.settimeout(10)
        s.connect(("127.0.0.1", port))
        self.sock = tls.wrap_socket(s, server_hostname="127.0.0.1") if tls else s
        self.key = key or base64.b64encode(os.urandom(16)).decode()
        h = {"Host": f"127.0.0.1:{port}", "Upgrade": "websocket", "Connection": "Upgrade",
             "Sec-WebSocket-Key": self.key, "Sec-WebSocket-Version": "13", **(headers or {})}
        req = f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()
                                                  if v is not None) + "\r\n"
        self.sock.sendall(req.encode() + early)
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self.buf += chunk
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {k.lower(): v for k, _, v in (ln.partition(": ") for ln in lines[1:])}
        if self.status != 101:   # an HTTP error: read its body (Content-Length)
            n = int(self.headers.get("content-length", 0))
            while len(self.buf) < n:
                self.buf += self.sock.recv(65536)
            self.body = self.buf[:n].decode()

    def _need(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise Closed(f"EOF with {len(self.buf)} of {n} bytes")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv_frame(self) -> tuple[int, bytes]:
        """(opcode, payload) of the next frame; the server's are final and unmasked."""
        b0, b1 = self._need(2)
        assert b0 & 0x80 and not b0 & 0x70, f"fragmented or RSV bits: {b0:#x}"
        assert not b1 & 0x80, "a server frame is masked"
        n = b1 & 0x7F
        if n == 126:
            n = int.from_bytes(self._need(2), "big")
        elif n == 127:
            n = int.from_bytes(self._need(8), "big")
        return b0 & 0x0F, self._need(n)

    def recv_message(self) -> tuple[int, bytes]:
        """The next text or binary message, answering pings; a close raises Closed."""
        while True:
            op, payload = self.recv_frame()
            if op == live.PING:
                self.send(live.PONG, payload)
            elif op == live.CLOSE:
                raise Closed(payload)
            elif op != live.PONG:
                return op, payload

    def send(self, opcode: int, payload: bytes = b"", **kw) -> None:
        self.sock.sendall(client_frame(opcode, payload, mask=os.urandom(4), **kw))

    def recv_skipping_pings(self) -> tuple[int, bytes]:
        """The next frame that isn't one of the server's idle pings."""
        while (frame := self.recv_frame())[0] == live.PING:
            pass
        return frame

    def expect_close(self, *, echo: bool = True) -> tuple[int | None, str]:
        """Reads to the server's close frame, skipping other frames, answers it (as a
        client must, §5.5.1) unless `echo=False`, then expects the EOF: the server
        closes the TCP connection (§7.1.1)."""
        while True:
            op, payload = self.recv_frame()
            if op == live.CLOSE:
                break
        closed = live.parse_close(payload)
        if echo:
            self.send(live.CLOSE, payload)
        assert self.sock.recv(1) == b""
        return closed

    def close(self):
        self.sock.close()


@dataclasses.dataclass
class Message:
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def h(self) -> dict[str, str]:
        return dict(self.headers)

    @property
    def recording_id(self) -> int:
        return int(self.h["X-Recording-Id"].split(".")[1])

    @property
    def media_range(self) -> tuple[int, int]:
        s, e = self.h["X-Media-Time-Range"].split("-")
        return int(s), int(e)

    @property
    def media_time(self) -> tuple[int, int]:
        """The frame's media range since the stream's first recording."""
        prev = int(self.h["X-Prev-Media-Duration"])
        s, e = self.media_range
        return prev + s, prev + e

    @property
    def is_key(self) -> bool:
        """From the segment's trun (reference §4.6): first-sample flags present and
        saying sync (sample_is_non_sync_sample, 0x10000, clear)."""
        (trun,) = [b for p, b in boxes(self.body) if p == "/moof/traf/trun"]
        flags = int.from_bytes(trun[1:4], "big")
        return bool(flags & 4) and not int.from_bytes(trun[12:16], "big") & 0x10000


def parse_message(op: int, payload: bytes):
    if op == live.TEXT:
        return json.loads(payload)
    assert op == live.BINARY
    head, sep, body = payload.partition(b"\r\n\r\n")
    assert sep
    return Message([tuple(ln.split(": ", 1)) for ln in head.decode().split("\r\n")], body)


def boxes(data: bytes, base: str = "", off: int = 0, end: int | None = None):
    """(path, payload) of every box, recursing into moof and traf (ISO 14496-12 §4.2)."""
    end = len(data) if end is None else end
    while off < end:
        size, typ = struct.unpack_from(">I4s", data, off)
        path = f"{base}/{typ.decode()}"
        yield path, data[off + 8:off + size]
        if typ in (b"moof", b"traf"):
            yield from boxes(data, path, off + 8, off + size)
        off += size


HEADER_ORDER = ["Content-Type", "X-Recording-Start", "X-Recording-Id", "X-Media-Time-Range",
                "X-Prev-Media-Duration", "X-Runs", "X-Video-Sample-Entry-Id"]
CAMERA_STREAM = Stream("sub", "h264", 320, 240, fps=30, kbps=300, gop=15)
GOP_90K = CAMERA_STREAM.gop * CAMERA_STREAM.frame_duration_90k


@dataclasses.dataclass
class Recorded:
    db: dbmod.Database
    camera_uuid: str
    live_sid: int     # recorded from the camera
    idle_sid: int     # records, but no frame ever comes
    tmp: object

    def path(self, type_: str = "sub") -> str:
        return f"/api/cameras/{self.camera_uuid}/{type_}/live.m4s"


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("live")
    cam = RtspCamera([CAMERA_STREAM], clip_seconds=4,
                     clip_dir=str(tmp_path_factory.getbasetemp() / "camera-clips"))
    clocks = clock.RealClocks()
    db_dir = str(tmp / "db")
    dbmod.init(db_dir, clocks)
    d = dbmod.Database.open_dir(db_dir, clocks)
    dir_id = d.add_sample_file_dir(str(tmp / "sample"))
    cam_id = d.add_camera("cam", {"description": "", "username": "", "password": ""})

    def cfg(url, mode="record"):
        return {"mode": mode, "url": url, "rtspTransport": "tcp", "retainBytes": 1 << 30,
                "flushIfSec": 0}
    live_sid = d.add_stream(cam_id, "sub", cfg(cam.url("sub")), dir_id)
    idle_sid = d.add_stream(cam_id, "main", cfg(""), dir_id)     # no URL: not started
    d.add_stream(cam_id, "ext", cfg(cam.url("sub"), mode=""), dir_id)  # not recorded
    rec = nvr.Recorder(d, lambda s: stream.PyAvOpener(), shutdown=threading.Event(),
                       rotate_interval_sec=2)
    rec.start()
    r = Recorded(d, str(uuidlib.UUID(bytes=d.cameras[cam_id].uuid)), live_sid, idle_sid, tmp)
    # Past the run's first recording (2-4 s), recordings rotate every 2 s.
    deadline = time.monotonic() + 30
    while d.streams[live_sid].next_recording_id < 2 or not growing_frames(r):
        assert time.monotonic() < deadline, "the stream isn't being recorded"
        time.sleep(0.05)
    yield r
    rec.stop()
    cam.close()
    d.close()


def latest_key_frame_start(r: Recorded) -> int:
    """The media time (since the stream's first recording) of the latest key frame
    recorded so far, as live.py's `_recent_gop` finds it; waits until the growing
    recording has an older key frame too, so that starting there would show."""
    deadline = time.monotonic() + 30
    while True:
        with r.db.locked():
            u = r.db.streams[r.live_sid].uncommitted
            g = u[-1] if u and u[-1].growing else None
            keys = [f.start_90k for f in recording.iter_index(g.video_index)
                    if f.is_key] if g else []
            if len(keys) >= 2:
                return g.prev_media_duration_90k + keys[-1]
        assert time.monotonic() < deadline, "no recording with two key frames"
        time.sleep(0.05)


def growing_frames(r: Recorded) -> int:
    with r.db.locked():
        u = r.db.streams[r.live_sid].uncommitted
        return u[-1].video_samples if u and u[-1].growing else 0


@pytest.fixture
def serve(recorded):
    """serve(view_video=True, options=None, **bind kw) -> a started web.Server,
    unauthenticated callers of its one bind getting viewVideo or not."""
    servers = []

    def start(view_video: bool | None = True, options: live.Options | None = None, **kw):
        """view_video=None: a bind without allowUnauthenticatedPermissions (no caller
        without a session)."""
        perms = None if view_video is None else auth.Permissions(view_video=view_video)
        bind = nvr.Bind(("ipv4", "127.0.0.1:0"), allow_unauthenticated_permissions=perms, **kw)
        srv = web.Server(recorded.db, nvr.Config(db_dir="unused", ui_dir=None, binds=[bind]))
        if options is not None:
            srv.live_options = options
        srv.start()
        servers.append(srv)
        return srv
    yield start
    for s in servers:
        s.stop()


def port_of(srv) -> int:
    return srv.addresses[0][1]


def check_contiguous(msgs: list[Message]) -> None:
    """In order: each frame starts where the previous ended, across recordings."""
    for a, b in zip(msgs, msgs[1:]):
        assert b.media_time[0] == a.media_time[1], (a.headers, b.headers)
        assert (b.recording_id, b.media_range[0]) > (a.recording_id, a.media_range[0])


def check_against_index(db: dbmod.Database, stream_id: int, msgs: list[Message]) -> None:
    """Each message is exactly one frame of its recording's index, key or not alike."""
    index = {}
    for m in msgs:
        cid = (stream_id << 32) | m.recording_id
        if cid not in index:
            index[cid] = {f.start_90k: f for f in recording.iter_index(db.get_video_index(cid))}
        f = index[cid][m.media_range[0]]
        assert m.media_range[1] == f.start_90k + f.duration_90k
        assert m.is_key == f.is_key
        assert len(m.body) > f.bytes   # moof + mdat header + the frame


def decode_all(init: bytes, msgs: list[Message]) -> int:
    """Decodes init + every segment with PyAV; returns the number of frames. Each
    segment's tfdt is 0 (§4.6: a browser places it with timestampOffset); here it gets
    the frame's media time, as that offset would."""
    import av
    out = bytearray(init)
    for m in msgs:
        data = bytearray(m.body)
        off = data.index(b"tfdt") + 8   # in the moof, before any sample data
        assert [p for p, _ in boxes(m.body)].count("/moof/traf/tfdt") == 1
        assert data[off - 4] == 0       # version 0: a u32 decode time follows the flags
        struct.pack_into(">I", data, off, m.media_time[0])
        out += data
    level = av.logging.get_level()  # None (off) in PyAV 13+; PyAV 10's default is 40
    av.logging.set_level(av.logging.ERROR)
    try:
        with av.logging.Capture() as logs, av.open(io.BytesIO(bytes(out))) as c:
            n = sum(1 for _ in c.decode(video=0))
    finally:
        av.logging.set_level(level)
    assert logs == []
    return n


def test_live_frames_from_a_key_frame_in_order_and_decodable(recorded, serve):
    srv = serve()
    latest_key = latest_key_frame_start(recorded)   # before connecting
    c = WsClient(port_of(srv), recorded.path())
    assert c.status == 101
    assert c.headers["upgrade"].lower() == "websocket"
    assert c.headers["connection"].lower() == "upgrade"
    assert c.headers["sec-websocket-accept"] == live.accept_key(c.key)
    msgs = []
    while len(msgs) < 100:   # ~3 s at 30 fps: crosses a rotation (every 2 s)
        msgs.append(parse_message(*c.recv_message()))
    c.send(live.CLOSE, live.close_payload(1000, "done"))
    assert c.expect_close() == (1000, "done")
    c.close()
    assert all(isinstance(m, Message) for m in msgs)
    assert [k for k, _ in msgs[0].headers] == HEADER_ORDER
    first = msgs[0]
    assert first.is_key
    # It was the latest key frame when the client connected (or a later one), not an
    # older one. (This was a wall-clock bound, "100 frames in under 4.3 s", which could
    # neither tell an older key frame from the latest nor hold on a loaded machine.)
    assert first.media_time[0] >= latest_key
    assert first.h["Content-Type"].startswith('video/mp4; codecs="avc1.')
    vse = {m.h["X-Video-Sample-Entry-Id"] for m in msgs}
    assert len(vse) == 1
    check_contiguous(msgs)
    assert len({m.recording_id for m in msgs}) >= 2, "expected a rotation within 3 s"
    check_against_index(recorded.db, recorded.live_sid, msgs)
    # The init segment over HTTP, then every message's segment: every frame decodes.
    import http.client
    h = http.client.HTTPConnection("127.0.0.1", port_of(srv), timeout=10)
    h.request("GET", f"/api/init/{vse.pop()}.mp4")
    r = h.getresponse()
    init = r.read()
    h.close()
    assert r.status == 200
    assert decode_all(init, msgs) == len(msgs)


def test_first_frame_is_the_latest_key_frame(recorded, serve):
    srv = serve()
    with recorded.db.locked():
        before = list(live._recent_gop(recorded.db, recorded.live_sid))
    c = WsClient(port_of(srv), recorded.path())
    m = parse_message(*c.recv_message())
    c.close()
    assert m.is_key
    # Not older than the latest key frame when we connected, and within a GOP or two
    # of the live edge.
    if before:   # (empty just after a rotation)
        assert before[0].is_key
        assert (m.recording_id, m.media_range[0]) >= (before[0].composite_id & 0xFFFFFFFF,
                                                      before[0].media_start_90k)
    with recorded.db.locked():
        u = recorded.db.streams[recorded.live_sid].uncommitted[-1]
        edge = u.prev_media_duration_90k + u.media_duration_90k
    assert edge - m.media_time[0] < 3 * GOP_90K


def test_http_level_refusals(recorded, serve):
    port = port_of(serve())
    c = WsClient(port, recorded.path(), headers={"Origin": "http://evil.example"})
    assert c.status == 403 and "cross-origin" in c.body
    c.close()
    c = WsClient(port, recorded.path(), headers={"Origin": f"http://127.0.0.1:1"})
    assert c.status == 101   # same host, another port: fine
    c.close()
    c = WsClient(port, recorded.path(), headers={"Sec-WebSocket-Version": "8"})
    assert c.status == 400 and c.headers["sec-websocket-version"] == "13"
    c.close()
    c = WsClient(port, recorded.path(), headers={"Upgrade": None, "Connection": None})
    assert c.status == 400 and "WebSocket" in c.body
    c.close()
    c = WsClient(port, f"/api/cameras/{uuidlib.uuid4()}/sub/live.m4s")
    assert c.status == 404
    c.close()


@pytest.mark.parametrize("view_video", [False, None], ids=["no-permission", "no-caller"])
def test_caller_without_view_video_gets_an_error_message(recorded, serve, view_video):
    srv = serve(view_video=view_video)
    c = WsClient(port_of(srv), recorded.path())
    assert c.status == 101   # the error goes inside the socket (§5.3)
    op, payload = c.recv_frame()
    msg = parse_message(op, payload)
    assert msg["type"] == "error" and msg["message"].startswith("unauthenticated:")
    assert "log in" in msg["message"]
    code, _ = c.expect_close()
    assert code == live.POLICY_VIOLATION
    c.close()
    # Logged in, as a user without viewVideo: "permission denied".
    uid = recorded.db.add_user(f"u{time.monotonic_ns()}", permissions=auth.Permissions())
    cookie, _ = srv.auth.make_session(uid, auth.Client(None, None, None),
                                      flags=auth.FLAG_HTTP_ONLY)
    c = WsClient(port_of(srv), recorded.path(), headers={"Cookie": f"s={cookie}"})
    msg = parse_message(*c.recv_frame())
    assert msg["type"] == "error" and msg["message"].startswith("permission denied:")
    assert "viewVideo" in msg["message"]
    assert c.expect_close()[0] == live.POLICY_VIOLATION
    c.close()


@pytest.mark.parametrize("change", ["revoke", "demote", "disable"])
def test_a_watch_ends_when_its_session_is_revoked_or_demoted(recorded, serve, change):
    """Issue: an open live view outlived the session meant to end it. Within recheck_sec
    of the change, an error message and close 1008; frames flowed before it."""
    srv = serve(view_video=None, options=live.Options(recheck_sec=0.2))
    uid = recorded.db.add_user(f"w{time.monotonic_ns()}",
                               permissions=auth.Permissions(view_video=True))
    cookie, _ = srv.auth.make_session(uid, auth.Client(None, None, None),
                                      flags=auth.FLAG_HTTP_ONLY)
    c = WsClient(port_of(srv), recorded.path(), headers={"Cookie": f"s={cookie}"})
    assert isinstance(parse_message(*c.recv_message()), Message)
    if change == "revoke":
        assert srv.auth.revoke_user_sessions(uid, auth.REVOKED_BY_ADMIN) == 1
    elif change == "demote":
        recorded.db.update_user(uid, permissions=auth.Permissions())
    else:   # disabled behind auth's back (auth.update_user would revoke the session)
        recorded.db.update_user(uid, config={"disabled": True})
    for _ in range(300):   # frames already queued may come first, not 10 s of them
        m = parse_message(*c.recv_message())
        if not isinstance(m, Message):
            break
    assert not isinstance(m, Message), "still streaming 300 frames after the change"
    assert m["type"] == "error"
    assert {"revoke": "session has ended", "demote": "no longer has",
            "disable": "disabled or gone"}[change] in m["message"]
    assert c.expect_close()[0] == live.POLICY_VIOLATION
    c.close()


def test_stream_that_doesnt_record_gets_an_error_message(recorded, serve):
    c = WsClient(port_of(serve()), recorded.path("ext"))
    msg = parse_message(*c.recv_frame())
    assert msg["type"] == "error" and "recorded" in msg["message"]
    assert c.expect_close()[0] == live.INTERNAL_ERROR
    c.close()


def test_slow_reader_gets_dropped_then_resumes_at_a_key_frame(recorded, serve):
    srv = serve(options=live.Options(max_queue_frames=3, send_buffer_bytes=4096))
    c = WsClient(port_of(srv), recorded.path(), rcvbuf=4096)
    first = parse_message(*c.recv_message())
    assert first.is_key
    # Not reading: kernel buffers fill, then the server's queue overflows. Wait for that
    # (it was a 1.5 s sleep) on the connection's queue, the listener it subscribed.
    deadline = time.monotonic() + 30
    while not any(getattr(fn, "__self__", None) and fn.__self__.dropped_total
                  for fn in list(recorded.db._live_listeners.get(recorded.live_sid, []))):
        assert time.monotonic() < deadline, "the server's queue never overflowed"
        time.sleep(0.05)
    got = [first]
    while not isinstance(got[-1], dict):
        got.append(parse_message(*c.recv_message()))
        assert len(got) < 200, "no dropped message"
    dropped = got[-1]
    assert dropped["type"] == "dropped" and dropped["frames"] > 0
    # The next frames, each run after a drop starting at a key frame. On a loaded machine
    # this reader can fall behind again (3 frames are 0.1 s): more drops may come.
    runs, announced = [[]], [dropped["frames"]]
    while len(runs[-1]) < 5:
        m = parse_message(*c.recv_message())
        if isinstance(m, Message):
            runs[-1].append(m)
            continue
        assert m["type"] == "dropped" and m["frames"] > 0, m
        if runs[-1]:
            runs.append([])
            announced.append(0)
        announced[-1] += m["frames"]
        assert len(runs) < 20, "dropped over and over"
    c.close()
    before = got[:-1]
    check_contiguous(before)
    for prev, run, n in zip([before] + runs, runs, announced):
        assert run[0].is_key
        check_contiguous(run)
        # Exactly the announced number of frames is missing between the two.
        missing = (run[0].media_time[0] - prev[-1].media_time[1]) // \
            CAMERA_STREAM.frame_duration_90k
        assert missing == n


def test_ping_pong_and_close_handshake(recorded, serve):
    srv = serve(options=live.Options(ping_interval_sec=0.2))
    c = WsClient(port_of(srv), recorded.path("main"))   # records, but no frames come
    assert c.status == 101
    # Upper bounds on these waits are WsClient's 10 s socket timeout (a ping that never
    # comes fails recv_frame); a tighter wall-clock bound flaked on a loaded machine.
    began = time.monotonic()
    assert c.recv_frame() == (live.PING, b"")
    assert 0.15 < time.monotonic() - began
    c.send(live.PONG, b"")                 # accepted
    c.send(live.PING, b"hello")
    assert c.recv_skipping_pings() == (live.PONG, b"hello")
    c.send(live.TEXT, b"ignored", fin=False)
    c.send(live.PING, b"mid")              # control frames between fragments
    c.send(live.CONTINUATION, b" too")
    assert c.recv_skipping_pings() == (live.PONG, b"mid")
    assert c.recv_frame() == (live.PING, b"")   # idle again: another ping (in < 10 s)
    c.send(live.CLOSE, live.close_payload(4000, "bye"))
    assert c.expect_close() == (4000, "bye")  # echoed, then the server closes TCP
    c.close()


def test_a_client_that_never_answers_pings_is_dropped(recorded, serve):
    srv = serve(options=live.Options(ping_interval_sec=0.2))
    c = WsClient(port_of(srv), recorded.path("main"))   # records, but no frames come
    began = time.monotonic()
    assert c.recv_frame() == (live.PING, b"")
    c.send(live.PONG, b"")                 # answered: the next ping comes, no close
    assert c.recv_frame() == (live.PING, b"")
    # Not answered: a whole interval later the server gives up (close 1001, no wait).
    assert c.expect_close(echo=False) == (live.GOING_AWAY, "no reply to a ping in 0.2 s")
    assert 0.55 < time.monotonic() - began   # (and within the socket's 10 s timeout)
    c.close()


@pytest.mark.parametrize("frame,code", [
    (client_frame(live.BINARY, b"x", mask=None), live.PROTOCOL_ERROR),
    (client_frame(live.BINARY, bytes(20_000)), live.MESSAGE_TOO_BIG),
    (client_frame(live.CLOSE, b"\x03"), live.PROTOCOL_ERROR),
], ids=["unmasked", "too-big", "bad-close"])
def test_client_protocol_errors_close_the_socket(recorded, serve, frame, code):
    c = WsClient(port_of(serve()), recorded.path("main"))
    c.sock.sendall(frame)
    assert c.expect_close(echo=False)[0] == code   # failed at once (§7.1.7): no wait
    c.close()


def test_bytes_sent_with_the_upgrade_request_are_read(recorded, serve):
    # Not what a conforming client does (it waits for the 101), but http.server may
    # have buffered them: a ping right behind the request headers gets its pong.
    c = WsClient(port_of(serve()), recorded.path("main"),
                 early=client_frame(live.PING, b"early"))
    assert c.status == 101
    assert c.recv_skipping_pings() == (live.PONG, b"early")
    c.close()


def test_vanished_recording_and_unexpected_errors_end_with_a_message(
        recorded, serve, monkeypatch, caplog):
    port = port_of(serve())

    def gone(db, stream_id, cid, start, end, key_state=None):
        raise mp4.NotFound(f"no recording {stream_id}/{cid & 0xFFFFFFFF}")
    monkeypatch.setattr(mp4, "build_live_segment", gone)
    c = WsClient(port, recorded.path())
    msg = parse_message(*c.recv_message())
    assert msg["type"] == "error" and "deleted by retention" in msg["message"]
    assert c.expect_close()[0] == live.INTERNAL_ERROR
    c.close()

    def bug(*args, **kwargs):
        raise RuntimeError("a bug")
    monkeypatch.setattr(mp4, "build_live_segment", bug)
    c = WsClient(port, recorded.path())
    msg = parse_message(*c.recv_message())
    assert msg["type"] == "error" and msg["message"].startswith("internal error;")
    assert c.expect_close()[0] == live.INTERNAL_ERROR
    c.close()
    assert any(r.exc_info and "a bug" in str(r.exc_info[1]) for r in caplog.records)


def test_server_stop_ends_the_socket_promptly(recorded, serve):
    srv = serve()
    c = WsClient(port_of(srv), recorded.path())
    idle = WsClient(port_of(srv), recorded.path("main"))
    assert isinstance(parse_message(*c.recv_message()), Message)
    began = time.monotonic()
    t = threading.Thread(target=srv.stop, name="stopper")
    t.start()
    for ws in (c, idle):   # each gets its close 1001 (the server wakes it), then EOF
        while True:
            op, payload = ws.recv_frame()
            if op == live.CLOSE:
                assert live.parse_close(payload) == (live.GOING_AWAY, "the server is stopping")
                assert ws.sock.recv(1) == b""
                break
        ws.close()
    t.join(20)
    assert not t.is_alive()
    # ~2 s (close_timeout_sec: the server waits for close replies these clients don't
    # send). Not woken, the idle socket would wait out its 30 s ping interval; 20 s
    # tells the two apart with room for a loaded machine (4 s flaked).
    assert time.monotonic() - began < 20


def test_live_over_tls(recorded, serve, tmp_path):
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    srv = serve(tls_cert=cert, tls_key=key, options=live.Options(ping_interval_sec=0.3))
    ctx = ssl.create_default_context(cafile=cert)
    c = WsClient(port_of(srv), recorded.path(), tls=ctx)
    assert c.status == 101
    msgs = [parse_message(*c.recv_message()) for _ in range(20)]
    assert msgs[0].is_key
    check_contiguous(msgs)
    c.send(live.PING, b"tls")
    while (frame := c.recv_frame())[0] == live.BINARY:
        pass
    assert frame == (live.PONG, b"tls")
    c.send(live.CLOSE, live.close_payload(1000))
    assert c.expect_close() == (1000, "")
    c.close()
