"""Live view: a stream's frames pushed over a WebSocket as the writer records them.

`GET /api/cameras/<uuid>/<main|sub|ext>/live.m4s` (reference §5.3) is routed here by
api.py; `serve` takes the connection over from web.py and returns when it is done.

The protocol (RFC 6455, written here; no extensions, no subprotocols):
1. The upgrade request must be a GET over HTTP/1.1 with `Upgrade: websocket`,
   `Connection: Upgrade`, `Sec-WebSocket-Version: 13` and a `Sec-WebSocket-Key` of 16
   bytes in base64; else 400 (with `Sec-WebSocket-Version: 13`). If an `Origin` header
   is present its host must equal the `Host` header's host, ports ignored; else 403.
   That is the only defence against cross-site WebSocket hijacking (browsers may send
   the SameSite=Lax session cookie with a cross-site page's WebSocket upgrade), and it
   is an HTTP-level error so that page learns nothing. The answer is `101 Switching Protocols`
   with `Sec-WebSocket-Accept` = base64(sha1(key + GUID)) (§4.2.2).
2. Inside the socket, errors are text messages `{"type":"error","message":"..."}`
   followed by a close: a caller without viewVideo (wording as api.py's 401/403: an
   unauthenticated caller is told to log in), a read-only database or a stream that
   doesn't record (there is no live view without recording, Moonfire #120), a frame
   whose recording vanished (retention) or can't be read.
3. Otherwise one binary message per frame, from the most recent key frame of the
   growing recording on: HTTP-style header lines, each ending in CRLF, in this order:
       Content-Type: video/mp4; codecs="..."
       X-Recording-Start: <recording start, 90 kHz since the epoch>
       X-Recording-Id: <open id>.<recording id>
       X-Media-Time-Range: <start>-<end>       (relative media ticks of this frame)
       X-Prev-Media-Duration: <ticks>
       X-Runs: <n>
       X-Video-Sample-Entry-Id: <id>           (its init segment: /api/init/<id>.mp4)
   then a blank line (CRLF), then a media segment (`moof`+`mdat`, reference §4.6, built
   by mp4.py's `build_live_segment`) holding exactly that frame. The first message of a
   connection, and the first after a drop, is a key frame.
4. A slow client: frames reported by the writer wait in a bounded per-connection queue
   (`Options`: at most `max_queue_90k` of media time, 5 s, or `max_queue_frames`, 300;
   the GOP already recorded when the connection starts doesn't count). A frame that
   would exceed the bound drops everything queued (the frame too, unless it is a key
   frame) and frames are skipped until the next key frame; just before that key frame
   the client gets `{"type":"dropped","frames":N}`, N counting every frame it missed.
   The bound is on our queue: frames already in the kernel's socket buffer are gone
   from it (`send_buffer_bytes` can shrink that buffer; by default the kernel sizes it).
5. A ping after `ping_interval_sec` (30 s) without a message (Chrome drops sockets idle
   for 60 s). If nothing (a pong, or anything else) comes back before the next ping is
   due, the peer is taken for dead (a half-open TCP connection would otherwise hold the
   thread until the kernel gives up, ~15 minutes): close 1001, no wait. Browsers answer
   pings by themselves. A client ping is answered with a pong.
   Client frames must be masked (else close 1002), at most `max_client_frame_bytes`
   each and per message (else close 1009); data messages are parsed, reassembled from
   fragments (text must be UTF-8, else 1007) and ignored. A close from the client is
   echoed with its code, and we return.
   Every `recheck_sec` (5 s) a caller that came with a session is checked again
   (`auth.Auth.recheck`): a session revoked or expired, its user disabled, or its
   viewVideo taken away ends the watch with an error message and close 1008.
6. We close with 1001 when the server stops (web.Server.stop wakes every live connection
   through its eventfd and gives them up to 2 s to send it before shutting the sockets
   down), 1008 after a permission error, 1011 after other errors; except on stop, we
   then wait up to `close_timeout_sec` for the client's close.

Threads: no new ones. The HTTP handler thread ("http-conn-<n>") runs the connection: it
waits in `poll` on the socket (client frames) and an eventfd (new frames queued, or the
server stopping), and does all socket I/O, so a TLS
socket is never used by two threads. The writer's thread calls `_FrameQueue.on_frame`
with the database lock held (db.py `frame_indexed`); it only appends to the queue under
the queue's own lock (ranked below the database lock: the handler never takes the
database lock while holding it) and writes the eventfd, which never blocks. To start
with no frame missed or sent twice, `serve` reads the growing recording's index and
subscribes under one hold of the database lock (decoding the index: ~3 ms for the 3600
frames of a run's 2-minute first recording).

Who closes what: `serve` unsubscribes before it closes the eventfd, so no callback can
write to a closed fd; it never closes the socket: web.py closes the connection when
`serve` returns (and `web.Server.stop()` shuts it down, which ends our loop at once).
Sends block, bounded by the connection's timeout (web.py's, 120 s): a client that stops
reading altogether is dropped then.

Neighbours: api.py routes here (any caller, even none: viewVideo is checked here, inside
the socket); web.py resolves the caller and owns the sockets; mp4.py builds each
media segment and the init segment; db.py reports indexed frames and holds the growing
recording's index (recording.py decodes it).
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import functools
import hashlib
import json
import logging
import os
import select
import socket
import ssl
import struct
import threading
import urllib.parse

import api
import db as dbmod
import mp4
import recording

logger = logging.getLogger(__name__)

# RFC 6455 §1.3: appended to the client's key before hashing.
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

# Opcodes (§5.2, §11.8).
CONTINUATION, TEXT, BINARY = 0x0, 0x1, 0x2
CLOSE, PING, PONG = 0x8, 0x9, 0xA
DATA_OPCODES = (CONTINUATION, TEXT, BINARY)
CONTROL_OPCODES = (CLOSE, PING, PONG)

# Close status codes (§7.4.1).
NORMAL = 1000
GOING_AWAY = 1001
PROTOCOL_ERROR = 1002
INVALID_PAYLOAD = 1007
POLICY_VIOLATION = 1008
MESSAGE_TOO_BIG = 1009
INTERNAL_ERROR = 1011
# Codes a close frame may carry (§7.4.1-2; 1012-1014 are IANA-registered since). 1004,
# 1005, 1006 and 1015 are reserved and must never be sent.
_VALID_CLOSE_CODES = frozenset([1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011,
                                1012, 1013, 1014])

MAX_CONTROL_PAYLOAD = 125   # §5.5

# Base framing (§5.2), big-endian:
#   byte 0   FIN (0x80): last fragment of a message; RSV1-3 (0x70): 0, as no extension
#            is negotiated; opcode (0x0F)
#   byte 1   MASK (0x80): a masking key follows (client to server: always; server to
#            client: never); payload length (0x7F): 0-125 is the length, 126 means a u16
#            follows, 127 a u64 (most significant bit 0). The shortest form must be used.
#   u16/u64  extended payload length, if any
#   4 bytes  masking key, if MASK
#   payload  (with MASK: byte i XORed with key[i % 4], §5.3)
_HEAD = struct.Struct(">BB")
_LEN16 = struct.Struct(">H")
_LEN64 = struct.Struct(">Q")
_CLOSE_CODE = struct.Struct(">H")
assert (_HEAD.size, _LEN16.size, _LEN64.size) == (2, 2, 8)


@dataclasses.dataclass(frozen=True)
class Options:
    """Tunables of a live connection. `serve` uses `request.server.live_options` if the
    server has one (tests shrink the bounds there), else these defaults."""
    max_queue_90k: int = 5 * recording.TIME_UNITS_PER_SEC  # lag behind the writer
    max_queue_frames: int = 300                            # and a cap in frames
    ping_interval_sec: float = 30.0   # Chrome times idle sockets out at 60 s (§5.3)
    max_client_frame_bytes: int = 16 * 1024   # per frame and per reassembled message
    close_timeout_sec: float = 2.0    # how long to wait for the client's close reply
    send_buffer_bytes: int | None = None   # SO_SNDBUF for the socket; None: the kernel's
    recheck_sec: float = 5.0          # how often a session's caller is checked again


# ---------------------------------------------------------------------------------------
# Framing (RFC 6455 §5)

class ProtocolError(Exception):
    """The peer broke RFC 6455: fail the connection with close `code` (§7.1.7)."""

    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class Frame:
    """A decoded control frame, or a whole data message (fragments reassembled)."""
    opcode: int
    payload: bytes


def accept_key(key: str) -> str:
    """`Sec-WebSocket-Accept` for a `Sec-WebSocket-Key` (§4.2.2 step 5.4)."""
    return base64.b64encode(hashlib.sha1((key + GUID).encode("ascii")).digest()).decode()


def _mask(data: bytes, key: bytes) -> bytes:
    """XORs `data` with the 4-byte `key` repeated (§5.3); masking and unmasking alike."""
    n = len(data)
    if n == 0:
        return b""
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(k, "big")).to_bytes(n, "big")


def encode_frame(opcode: int, payload: bytes = b"", *, fin: bool = True,
                 mask: bytes | None = None) -> bytes:
    """One frame. A server's frames are unmasked (`mask=None`); a client's carry a
    4-byte masking key (tests use that to play the client)."""
    if opcode in CONTROL_OPCODES and (len(payload) > MAX_CONTROL_PAYLOAD or not fin):
        raise ValueError(f"a control frame must be final with at most {MAX_CONTROL_PAYLOAD} "
                         f"payload bytes, not {len(payload)}")
    if mask is not None and len(mask) != 4:
        raise ValueError("a masking key is 4 bytes")
    n = len(payload)
    mask_bit = 0x80 if mask is not None else 0
    b0 = (0x80 if fin else 0) | opcode
    if n <= 125:
        head = _HEAD.pack(b0, mask_bit | n)
    elif n <= 0xFFFF:
        head = _HEAD.pack(b0, mask_bit | 126) + _LEN16.pack(n)
    else:
        head = _HEAD.pack(b0, mask_bit | 127) + _LEN64.pack(n)
    if mask is None:
        return head + payload
    return head + mask + _mask(payload, mask)


def close_payload(code: int | None, reason: str = "") -> bytes:
    """A close frame's payload (§5.5.1): the code, then a UTF-8 reason cut to fit."""
    if code is None:
        return b""
    r = reason.encode("utf-8")[:MAX_CONTROL_PAYLOAD - 2]
    return _CLOSE_CODE.pack(code) + r.decode("utf-8", "ignore").encode("utf-8")


def parse_close(payload: bytes) -> tuple[int | None, str]:
    """(code, reason) of a received close frame; `ProtocolError` if malformed (§7.1.5)."""
    if not payload:
        return None, ""
    if len(payload) == 1:
        raise ProtocolError(PROTOCOL_ERROR, "close frame with a 1-byte payload")
    (code,) = _CLOSE_CODE.unpack_from(payload)
    if code not in _VALID_CLOSE_CODES and not 3000 <= code <= 4999:
        raise ProtocolError(PROTOCOL_ERROR, f"close frame with invalid code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(INVALID_PAYLOAD, "close reason is not UTF-8") from None
    return code, reason


class Decoder:
    """Incremental decoder of a peer's frames: `feed(bytes)` returns the control frames
    and whole data messages completed so far, in order.

    `masked=True` (a server reading a client): every frame must be masked; False (a
    client reading a server): none may be. Raises `ProtocolError` for anything RFC 6455
    forbids: reserved bits, unknown opcodes, fragmented or long control frames, a
    continuation with no message or a new message inside a fragmented one, non-minimal
    or 64-bit lengths with the top bit set, wrong masking (1002); a frame or reassembled
    message over `max_bytes` (1009, decided from the header, before reading it); a text
    message that isn't UTF-8 (1007). After a ProtocolError the decoder is unusable."""

    def __init__(self, *, masked: bool = True, max_bytes: int = Options.max_client_frame_bytes):
        self.masked = masked
        self.max_bytes = max_bytes
        self._buf = bytearray()
        self._msg_opcode: int | None = None   # TEXT or BINARY while fragments arrive
        self._msg = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        out = []
        while True:
            f = self._one()
            if f is None:
                return out
            if f is not _PARTIAL:
                out.append(f)

    def _one(self):
        buf = self._buf
        if len(buf) < 2:
            return None
        b0, b1 = buf[0], buf[1]
        fin, rsv, opcode = b0 & 0x80, b0 & 0x70, b0 & 0x0F
        masked, n = b1 & 0x80, b1 & 0x7F
        if rsv:
            raise ProtocolError(PROTOCOL_ERROR, "reserved bits set without an extension")
        if opcode not in DATA_OPCODES + CONTROL_OPCODES:
            raise ProtocolError(PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
        if bool(masked) != self.masked:
            raise ProtocolError(PROTOCOL_ERROR, "client frames must be masked" if self.masked
                                else "server frames must not be masked")
        if opcode in CONTROL_OPCODES and (not fin or n > MAX_CONTROL_PAYLOAD):
            raise ProtocolError(PROTOCOL_ERROR, "control frames must be final and at most "
                                                f"{MAX_CONTROL_PAYLOAD} bytes")
        pos = 2
        if n == 126:
            if len(buf) < 4:
                return None
            (n,) = _LEN16.unpack_from(buf, 2)
            pos = 4
            if n < 126:
                raise ProtocolError(PROTOCOL_ERROR, "non-minimal 16-bit payload length")
        elif n == 127:
            if len(buf) < 10:
                return None
            (n,) = _LEN64.unpack_from(buf, 2)
            pos = 10
            if n >> 63:
                raise ProtocolError(PROTOCOL_ERROR, "64-bit payload length with the top bit set")
            if n <= 0xFFFF:
                raise ProtocolError(PROTOCOL_ERROR, "non-minimal 64-bit payload length")
        if n > self.max_bytes:
            raise ProtocolError(MESSAGE_TOO_BIG, f"a {n}-byte frame is over the limit of "
                                                 f"{self.max_bytes} bytes")
        if opcode in DATA_OPCODES:
            if opcode == CONTINUATION and self._msg_opcode is None:
                raise ProtocolError(PROTOCOL_ERROR, "continuation frame without a message")
            if opcode != CONTINUATION and self._msg_opcode is not None:
                raise ProtocolError(PROTOCOL_ERROR, "new message inside a fragmented one")
            if len(self._msg) + n > self.max_bytes:
                raise ProtocolError(MESSAGE_TOO_BIG, f"a message of over {self.max_bytes} "
                                                     f"bytes is over the limit")
        key = None
        if masked:
            key = bytes(buf[pos:pos + 4])
            pos += 4
        if len(buf) < pos + n:
            return None
        payload = bytes(buf[pos:pos + n])
        del buf[:pos + n]
        if key is not None:
            payload = _mask(payload, key)
        if opcode in CONTROL_OPCODES:
            return Frame(opcode, payload)
        if opcode != CONTINUATION:
            self._msg_opcode = opcode
        self._msg += payload
        if not fin:
            return _PARTIAL
        msg_opcode, msg = self._msg_opcode, bytes(self._msg)
        self._msg_opcode, self._msg = None, bytearray()
        if msg_opcode == TEXT:
            try:
                msg.decode("utf-8")
            except UnicodeDecodeError:
                raise ProtocolError(INVALID_PAYLOAD, "text message is not UTF-8") from None
        return Frame(msg_opcode, msg)


_PARTIAL = object()   # Decoder._one: a fragment consumed, no message complete yet


# ---------------------------------------------------------------------------------------
# The upgrade (RFC 6455 §4.2)

def _tokens(headers, name: str) -> set[str]:
    values = headers.get_all(name) if hasattr(headers, "get_all") else [headers.get(name)]
    return {t.strip().lower() for v in values or () if v for t in v.split(",")}


def _host_of(value: str, *, url: bool) -> str | None:
    """The lower-case host of a Host header value or of an Origin URL, without port or
    IPv6 brackets; None if there is none or it can't be parsed."""
    try:
        return urllib.parse.urlsplit(value.strip() if url else "//" + value.strip()).hostname
    except ValueError:
        return None


def check_upgrade(headers, http_version: str = "HTTP/1.1") -> str:
    """Checks an upgrade request (§4.2.1) and the Origin (§5.3); returns the
    `Sec-WebSocket-Accept` value, or raises `api.HttpError` (400 or 403)."""
    if http_version in ("HTTP/0.9", "HTTP/1.0"):
        raise api.HttpError(400, "live.m4s is a WebSocket: it needs HTTP/1.1 (RFC 6455 §4.1)")
    if "websocket" not in _tokens(headers, "Upgrade") or \
            "upgrade" not in _tokens(headers, "Connection"):
        raise api.HttpError(400, "live.m4s is a WebSocket: connect with a WebSocket client "
                                 "(Upgrade: websocket, Connection: Upgrade; RFC 6455 §4.1)")
    need_13 = {"Sec-WebSocket-Version": "13"}
    version = headers.get("Sec-WebSocket-Version")
    if version is None or version.strip() != "13":
        raise api.HttpError(400, f"unsupported Sec-WebSocket-Version {version!r}: this server "
                                 f"speaks version 13 (RFC 6455)", need_13)
    keys = headers.get_all("Sec-WebSocket-Key") if hasattr(headers, "get_all") else \
        [headers.get("Sec-WebSocket-Key")]
    key = (keys or [None])[0]
    try:
        ok = key is not None and len(keys) == 1 and \
            len(base64.b64decode(key.strip(), validate=True)) == 16
    except ValueError:
        ok = False
    if not ok:
        raise api.HttpError(400, "missing or malformed Sec-WebSocket-Key: it must be one "
                                 "header of 16 random bytes in base64 (RFC 6455 §4.1)", need_13)
    origin = headers.get("Origin")
    if origin is not None:
        host = headers.get("Host") or ""
        want = _host_of(host, url=False)
        if want is None or _host_of(origin, url=True) != want:
            raise api.HttpError(403, f"cross-origin WebSocket refused: Origin {origin!r} is "
                                     f"not on this server's host {host!r}; open live view "
                                     f"from this server's own pages")
    return accept_key(key.strip())


def _upgrade_response(accept: str) -> bytes:
    return ("HTTP/1.1 101 Switching Protocols\r\n"
            "Upgrade: websocket\r\n"
            "Connection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept}\r\n"
            "\r\n").encode("ascii")


# ---------------------------------------------------------------------------------------
# The queue between the writer's thread and the connection

@dataclasses.dataclass(frozen=True)
class LiveFrame:
    """A frame as db.py's `frame_indexed` reports it (media offsets in its recording)."""
    composite_id: int
    media_start_90k: int
    media_end_90k: int
    is_key: bool
    key_state: tuple | None = None  # where its segment starts reading the index


class _FrameQueue:
    """Frames waiting to be sent, bounded as the module docstring says (item 4).

    `on_frame` runs in the writer's thread with the database lock held: it takes only
    this queue's lock and writes an eventfd (non-blocking), then returns."""

    def __init__(self, wake_fd: int, opts: Options):
        self._wake_fd = wake_fd
        self._max_90k = opts.max_queue_90k
        self._max_frames = opts.max_queue_frames
        self._lock = threading.Lock()
        self._frames: collections.deque[LiveFrame] = collections.deque()
        self._exempt = 0          # frames at the head, recorded before we subscribed
        self._queued_90k = 0      # media duration of the other (counted) frames
        self._need_key = True     # skipping until a key frame
        self._started = False     # a key frame was queued (skips before it aren't drops)
        self._dropped = 0         # frames missed since the last take
        self._woken = False       # the eventfd was written since the queue was last empty
        self.dropped_total = 0

    def prime(self, frames: list[LiveFrame]) -> None:
        """The frames already recorded from the latest key frame on (first a key frame);
        called before subscribing, under the same database lock."""
        with self._lock:
            self._frames.extend(frames)
            self._exempt = len(frames)
            if frames:
                self._need_key, self._started = False, True
            self._wake()

    def on_frame(self, composite_id: int, media_start_90k: int, media_end_90k: int,
                 is_key: bool, key_state: tuple | None = None) -> None:
        with self._lock:
            if self._need_key:
                if not is_key:
                    if self._started:
                        self._dropped += 1
                        self.dropped_total += 1
                    return
                self._need_key, self._started = False, True
            f = LiveFrame(composite_id, media_start_90k, media_end_90k, is_key, key_state)
            self._frames.append(f)
            self._queued_90k += media_end_90k - media_start_90k
            if (len(self._frames) - self._exempt > self._max_frames
                    or self._queued_90k > self._max_90k):
                # Too far behind: drop what is queued; resume at this frame if it is a
                # key frame, else at the next one.
                n = len(self._frames) - (1 if is_key else 0)
                self._dropped += n
                self.dropped_total += n
                self._frames.clear()
                self._exempt = 0
                self._queued_90k = 0
                if is_key:
                    self._frames.append(f)
                    self._queued_90k = media_end_90k - media_start_90k
                else:
                    self._need_key = True
            self._wake()

    def _wake(self) -> None:
        if self._frames and not self._woken:
            try:
                os.eventfd_write(self._wake_fd, 1)   # non-blocking; can't fill (2^64 - 2)
            except OSError:
                pass  # can't happen (serve unsubscribes before closing it); never raise here
            self._woken = True

    def take(self) -> tuple[int, LiveFrame] | None:
        """(frames dropped just before it, the next frame), or None when empty."""
        with self._lock:
            if not self._frames:
                self._woken = False
                return None
            f = self._frames.popleft()
            if self._exempt:
                self._exempt -= 1
            else:
                self._queued_90k -= f.media_end_90k - f.media_start_90k
            dropped, self._dropped = self._dropped, 0
            if not self._frames:
                self._woken = False
            return dropped, f


def _recent_gop(db: dbmod.Database, stream_id: int) -> list[LiveFrame]:
    """The frames of the growing recording from its latest key frame on. Hold the
    database lock. Rotation happens only at key frames, so the latest key frame is
    always in the growing recording; with nothing recorded yet, the list is empty."""
    s = db.streams[stream_id]
    if not s.uncommitted or not s.uncommitted[-1].growing:
        return []
    r = s.uncommitted[-1]
    if not r.video_index:
        return []
    cid = (stream_id << 32) | (s.cum_recordings + len(s.uncommitted) - 1)
    out: list[LiveFrame] = []
    for f in recording.iter_index(r.video_index):
        if f.is_key:
            out.clear()
        out.append(LiveFrame(cid, f.start_90k, f.start_90k + f.duration_90k, f.is_key,
                             r.live_key_state))
    return out if out and out[0].is_key else []


def segment_message(f: mp4.VirtualFile) -> bytes:
    """A live message (§5.3): the header lines, a blank line, the media segment."""
    head = [("Content-Type", f.content_type), *f.extra_headers.items()]
    return ("".join(f"{k}: {v}\r\n" for k, v in head) + "\r\n").encode() + f.read()


# ---------------------------------------------------------------------------------------
# The connection

class _Gone(Exception):
    """The client went away (or the server shut the socket down)."""


class _Connection:
    """One live connection after the upgrade, run by the handler thread."""

    def __init__(self, request: api.Request, stream_id: int, name: str, opts: Options):
        self.request = request
        self.sock: socket.socket = request.handler.connection
        self.server = request.server
        self.db: dbmod.Database = request.server.db
        self.clocks = request.server.clocks
        self.stream_id = stream_id
        self.name = name
        self.opts = opts
        self.decoder = Decoder(masked=True, max_bytes=opts.max_client_frame_bytes)
        self.sock_poller = select.poll()   # the socket alone
        self.sock_poller.register(self.sock.fileno(), select.POLLIN)
        self.bytes_sent = 0
        self.frames_sent = 0
        self.close_sent = False
        self.pending_input = b""
        self.ping_unanswered = False   # a ping went out and nothing came back since

    # -- sending -------------------------------------------------------------------------

    def send(self, opcode: int, payload: bytes = b"") -> None:
        data = encode_frame(opcode, payload)
        try:
            self.sock.sendall(data)
        except (OSError, ValueError) as e:   # ValueError: the socket was closed
            raise _Gone(f"sending failed: {e!r}") from e
        self.bytes_sent += len(data)

    def send_json(self, obj: dict) -> None:
        self.send(TEXT, json.dumps(obj, separators=(",", ":")).encode())

    def close(self, code: int, reason: str, *, wait: bool = True) -> None:
        """Sends a close frame (once) and, with `wait`, reads until the client's close
        or `close_timeout_sec` (§7.1.2: the server then closes the TCP connection)."""
        if self.close_sent:
            return
        self.close_sent = True
        self.send(CLOSE, close_payload(code, reason))
        if not wait:
            return
        deadline = self.clocks.monotonic() + int(self.opts.close_timeout_sec * 1e9)
        while not self.server.stopping.is_set():
            left_ms = (deadline - self.clocks.monotonic()) // 1_000_000
            if left_ms <= 0:
                return
            if not self._readable(min(left_ms, 1000)):
                continue
            if not self._read_frames(closing=True):
                return

    def error(self, message: str, code: int) -> None:
        """`{"type":"error"}` then a close (§5.3); nothing if we already sent a close
        (no data frame may follow it, §5.5.1)."""
        logger.info("live %s: %s: closing with an error: %s", self.request.request_id,
                    self.name, message)
        if self.close_sent:
            return
        self.send_json({"type": "error", "message": message})
        self.close(code, message)

    # -- reading -------------------------------------------------------------------------

    def _readable(self, timeout_ms: int) -> bool:
        return bool(self.pending_input) or bool(self.sock_poller.poll(timeout_ms))

    def _recv(self) -> bytes:
        if self.pending_input:
            data, self.pending_input = self.pending_input, b""
            return data
        try:
            data = self.sock.recv(65536)
            while isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
                data += self.sock.recv(65536)
        except (OSError, ValueError) as e:
            raise _Gone(f"reading failed: {e!r}") from e
        if not data:
            raise _Gone("the client closed the connection without a close frame")
        self.ping_unanswered = False   # whatever it is, the client is there
        return data

    def _read_frames(self, *, closing: bool = False) -> bool:
        """Reads what the client sent and answers it; False once the client closed (its
        close frame echoed) or broke the protocol (we closed)."""
        try:
            frames = self.decoder.feed(self._recv())
        except ProtocolError as e:
            logger.info("live %s: %s: protocol error from the client: %s (close %d)",
                        self.request.request_id, self.name, e.reason, e.code)
            self.close(e.code, e.reason, wait=False)
            return False
        for f in frames:
            if f.opcode == PING:
                if not closing:
                    self.send(PONG, f.payload)
            elif f.opcode == CLOSE:
                try:
                    code, reason = parse_close(f.payload)
                except ProtocolError as e:
                    self.close(e.code, e.reason, wait=False)
                    return False
                logger.debug("live %s: %s: client closed (%s %r)", self.request.request_id,
                             self.name, code, reason)
                if not self.close_sent:   # §5.5.1: answer with a close, echoing the code
                    self.close_sent = True
                    self.send(CLOSE, close_payload(code, "" if code is None else reason))
                return False
            elif f.opcode in (TEXT, BINARY):
                logger.debug("live %s: %s: ignored a %d-byte message from the client",
                             self.request.request_id, self.name, len(f.payload))
            # PONG: the client is alive; nothing to do.
        return True

    # -- streaming -----------------------------------------------------------------------

    def _recheck(self) -> str | None:
        """Why the caller, if it came with a session, may no longer watch (None: it may).
        A caller without a session (a bind's unauthenticated permissions, a privileged
        Unix peer) is what its connection is and doesn't change."""
        caller = self.request.caller
        session = caller.session if caller is not None else None
        if session is None:
            return None
        why, perms = self.server.auth.recheck(session)
        if why is not None:
            return why
        if not perms.view_video:
            return (f"permission denied: live view needs the viewVideo permission, which "
                    f"{caller.describe()} no longer has")
        return None

    def stream(self, queue: _FrameQueue, wake_fd: int) -> str:
        """Sends frames until the client closes or the server stops; returns why it ended."""
        poller = select.poll()
        sock_fd = self.sock.fileno()
        poller.register(sock_fd, select.POLLIN)
        poller.register(wake_fd, select.POLLIN)
        ping_ns = int(self.opts.ping_interval_sec * 1e9)
        last_sent = self.clocks.monotonic()
        recheck_ns = int(self.opts.recheck_sec * 1e9)
        next_check = last_sent + recheck_ns
        while True:
            if self.server.stopping.is_set():
                self.close(GOING_AWAY, "the server is stopping", wait=False)
                return "the server is stopping"
            if self.clocks.monotonic() >= next_check:
                # A session revoked, expired or demoted while watching ends the watch too.
                message = self._recheck()
                if message is not None:
                    self.error(message, POLICY_VIOLATION)
                    return f"caller no longer allowed: {message}"
                next_check = self.clocks.monotonic() + recheck_ns
            item = queue.take()
            if item is not None:
                dropped, f = item
                if dropped:
                    self.send_json({"type": "dropped", "frames": dropped})
                try:
                    seg = mp4.build_live_segment(self.db, self.stream_id, f.composite_id,
                                                 f.media_start_90k, f.media_end_90k,
                                                 key_state=f.key_state)
                    msg = segment_message(seg)
                except (mp4.NotFound, mp4.Mp4Error, dbmod.DbError, OSError) as e:
                    rid = f"{f.composite_id >> 32}/{f.composite_id & 0xFFFFFFFF}"
                    self.error(f"can't send a frame of recording {rid} (deleted by retention "
                               f"or not readable?): {e}", INTERNAL_ERROR)
                    return f"error: {e}"
                self.send(BINARY, msg)
                self.frames_sent += 1
                last_sent = self.clocks.monotonic()
                timeout_ms = 0   # just look for client frames, then the next frame
            else:
                due = last_sent + ping_ns - self.clocks.monotonic()
                if due <= 0:
                    if self.ping_unanswered:  # for a whole interval: a dead peer
                        why = (f"no reply to a ping in {self.opts.ping_interval_sec:g} s")
                        logger.info("live %s: %s: %s; closing", self.request.request_id,
                                    self.name, why)
                        self.close(GOING_AWAY, why, wait=False)
                        return why
                    self.send(PING)
                    self.ping_unanswered = True
                    last_sent = self.clocks.monotonic()
                    continue
                timeout_ms = min(1000, -(-due // 1_000_000))
            events = dict(poller.poll(timeout_ms)) if not self.pending_input else \
                {sock_fd: select.POLLIN}
            if wake_fd in events:
                try:
                    os.eventfd_read(wake_fd)
                except BlockingIOError:
                    pass
            if sock_fd in events and not self._read_frames():
                return "the client closed the connection"


def _drain_rfile(handler) -> bytes:
    """Bytes the client sent right after the upgrade request that http.server already
    buffered in `rfile` (none from a conforming client, which waits for the 101)."""
    sock, rfile = handler.connection, handler.rfile
    timeout = sock.gettimeout()
    sock.settimeout(0)   # read1 returns the buffered bytes, or tries one raw read
    try:
        data = rfile.read1(65536) or b""
        while isinstance(sock, ssl.SSLSocket) and sock.pending():  # decrypted, unread
            data += sock.recv(65536)
        return data
    except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
        return b""
    finally:
        sock.settimeout(timeout)


def _permission_error(caller) -> str | None:
    if caller is not None and caller.permissions.view_video:
        return None
    if caller is not None and caller.authenticated:
        return (f"permission denied: live view needs the viewVideo permission, which "
                f"{caller.describe()} doesn't have")
    return ("unauthenticated: live view needs the viewVideo permission, which this listener "
            "doesn't grant without a login; log in first (POST /api/login)")


def _stream_error(db: dbmod.Database, stream_id: int) -> str | None:
    if db.read_only:
        return ("live view needs a read-write database: this server runs with --read-only, "
                "so nothing is being recorded")
    with db.locked("live: check stream"):
        s = db.streams.get(stream_id)
        if s is None:
            return f"stream {stream_id} no longer exists"
        if not s.record or s.sample_file_dir_id is None:
            return ("live view needs the stream to be recorded (there is no live view "
                    "without recording); turn recording on with `nvr.py config stream edit "
                    "CAMERA TYPE --record`")
    return None


def serve(request: api.Request, stream_id: int) -> None:
    """Runs `live.m4s` on the request's connection (the module docstring says how).
    Raises `api.HttpError` before the upgrade; after it, returns None when the socket
    is done, and web.py closes the connection."""
    handler = request.handler
    accept = check_upgrade(request.headers, getattr(handler, "request_version", "HTTP/1.1"))
    db = request.server.db
    opts = getattr(request.server, "live_options", None) or Options()
    with db.locked("live: names"):
        s = db.streams[stream_id]
        name = f"{db.cameras[s.camera_id].short_name}-{s.type}"
    sock = handler.connection
    handler.status = 101
    handler.headers_sent = True
    try:
        sock.sendall(_upgrade_response(accept))
    except OSError as e:
        logger.debug("live %s: %s: client gone before the upgrade: %r", request.request_id,
                     name, e)
        return None
    if opts.send_buffer_bytes:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, opts.send_buffer_bytes)
    conn = _Connection(request, stream_id, name, opts)
    conn.pending_input = _drain_rfile(handler)
    why = "?"
    wake_fd = queue = wake = None
    try:
        message = _permission_error(request.caller)
        if message is not None:
            conn.error(message, POLICY_VIOLATION)
            why = "permission"
            return None
        message = _stream_error(db, stream_id)
        if message is not None:
            conn.error(message, INTERNAL_ERROR)
            why = "stream not live"
            return None
        wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        wake = functools.partial(os.eventfd_write, wake_fd, 1)   # never blocks
        request.server.add_live(wake)   # server stop wakes us to close with 1001
        queue = _FrameQueue(wake_fd, opts)
        with db.locked("live: subscribe"):   # the GOP so far and what follows, no gap
            queue.prime(_recent_gop(db, stream_id))
            db.subscribe_live(stream_id, queue.on_frame)
        logger.info("live %s: %s watching %s", request.request_id,
                    request.caller.describe(), name)
        why = conn.stream(queue, wake_fd)
    except _Gone as e:
        why = str(e)
    except Exception as e:
        # Unexpected: log the traceback, tell the client if we still can. Never let it
        # reach web.py, which would answer with an HTTP 500 inside the WebSocket.
        logger.exception("live %s: %s failed", request.request_id, name)
        why = f"internal error: {e!r}"
        try:
            conn.error(f"internal error; the server log has the details of request "
                       f"{request.request_id}", INTERNAL_ERROR)
        except _Gone:
            pass
    finally:
        if queue is not None:
            db.unsubscribe_live(stream_id, queue.on_frame)  # no callback after this...
        if wake_fd is not None:
            request.server.remove_live(wake)                # nor a wake-up from stop()...
            os.close(wake_fd)                               # ...so the fd can go
        handler.body_bytes = conn.bytes_sent
        if queue is not None:
            logger.info("live %s: %s: ended (%s); %d frames sent, %d dropped",
                        request.request_id, name, why, conn.frames_sent, queue.dropped_total)
    return None
