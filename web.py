"""The HTTP server: listening on the configured binds, who is calling, and sending bytes.

What it owns: the sockets of `[[binds]]` (TCP over IPv4/IPv6, Unix, optionally TLS), one
handler thread per connection within the caps of `Limits` (per bind, per peer address;
over them the accept loop answers 503 itself), reading requests within the deadlines of
`Limits` (head, keep-alive idle, body: total, not per read, so a client trickling bytes
can't hold a thread; `Deadline`, on Clocks) and bodies only with Content-Length, at most
MAX_BODY_BYTES, deciding who the caller is (`resolve_caller`, reference §5.4, with the
trusted proxy headers of `forwarded_client`), the static UI files (`find_static`), and
HTTP semantics for an entity (a `mp4.VirtualFile` or a `StaticFile`): Range (RFC 9110
§14), conditional requests (§13: If-None-Match, If-Modified-Since, If-Range), HEAD, and
multipart/byteranges (§14.6). What each /api/ URL means, and the permission it needs, is
api.py's (`api.ROUTES`) and, under /api/config/, configapi.py's (`configapi.routes()`
is both); nothing here writes to the database or to sample files.

Built on `http.server.ThreadingHTTPServer`, tamed (STYLE.md "http.server, tamed"):
- `server_bind` skips `socket.getfqdn` (it can stall start-up on a box without DNS);
- `log_message` goes to `logging`; each request gets a UUIDv7 id and one log line with
  its status, bytes sent and latency (reference §5.1);
- HTTP/1.1 keep-alive: every response carries a `Content-Length` (a 304 carries the
  length a 200 would have, RFC 9110 §8.6), so a connection serves many requests;
- each bind's accept loop (`_HttpServer.accept_loop`) blocks until a connection or a
  byte on its wake pipe, instead of socketserver's polling every 0.1 s;
- handler threads are daemons (tracked and joined by us: socketserver joins only
  non-daemon ones), and `Server.stop()` wakes live WebSockets so they send their close
  1001, then shuts down idle keep-alive connections and joins every handler, so that
  every thread and socket is gone when it returns;
- `Range` is parsed by the pure `parse_range`, tested from a table.

Who is calling (reference §5.4), decided before any handler runs:
1. a valid `s` session cookie (auth.py) gives that session's permissions (no more than
   its user's today: `auth.effective_permissions`) and user; a
   bad, revoked or disabled one is logged at debug level and ignored (the next steps
   apply, so a stale cookie on a bind with unauthenticated viewing still views);
2. else a Unix-socket peer whose uid (SO_PEERCRED) is ours, on an `ownUidIsPrivileged`
   bind, gets every permission;
3. else the bind's `allowUnauthenticatedPermissions`, if it has that key (on TCP binds
   only when the Host header is an IP address or localhost: DNS rebinding);
4. else nobody: only login, logout, /api/request and static files answer (api.py).
With `trustForwardHeaders` the client address (used for the session audit and login
throttling) and the scheme come from the proxy: RFC 7239 `Forwarded` (its last element,
the one our proxy added), else the last `X-Forwarded-For`/`X-Forwarded-Proto` entries,
else `X-Real-IP`. A TLS bind or a trusted `https` makes the request `secure` (the
session cookie then gets `Secure`). Without that key, these headers are ignored.

The control socket (`Server.control_path`, set before start(); `nvr.py run` sets
`<dbDir>/control.sock`) is an implicit extra Unix bind for the command line while nvr
runs (ctl.py is its client): made mode 0600 before it listens, it answers only peers
whose SO_PEERCRED uid is ours or root's, with every permission (session cookies aren't
looked at there); any other peer gets a 403 for every request. It is not a configured bind, so it never stops nvr
from starting: a path too long for a Unix socket (MAX_UNIX_PATH_BYTES), a socket another
nvr (a second --read-only run of the same database) answers on, or an error binding is a
one-line warning naming the web UI/API way, and nvr runs without it. A stale socket (a
crash) is replaced; at stop() the socket is unlinked only if it is still the one we made.

Static UI (reference §5.1): non-/api/ paths are files of `uiDir` (default: `ui/` next to
this file): `/` is index.html; other names need a known extension (STATIC_TYPES); any
empty, `.`, `..` or hidden component is refused before touching the disk, and the real
path must stay inside the real UI dir. Served with sendfile, ETag and Last-Modified, and
`Cache-Control: public, no-cache` (we differ from Moonfire's week-long `immutable`: our
file names aren't content-hashed, since there is no build step and people edit ui/ on
the box; a revalidation costs one 304). A custom uiDir's content-hashed names
(`index-3f2a9c1b.js`) are `immutable` for a year, its `NAME.gz` siblings are sent to
clients taking gzip, and its CSP is the config's `uiContentSecurityPolicy`.

Errors are text/plain, one line: the statuses of api.py, plus 408 (a request head or
body past its deadline), 411 (chunked bodies), 413 (a body over MAX_BODY_BYTES), 416
(unsatisfiable Range, `Content-Range: bytes */len`), 503 (over a connection cap), 500 (the traceback goes to the log with the request id, never to the client).

Sending: sample bytes (`mp4.FileChunk`) go with `os.sendfile` from the file to the
socket (zero copy), with TCP_CORK set meanwhile so the kernel sends full segments (as
nginx's `tcp_nopush`); generated bytes (boxes, tables) from memory, coalesced into large
writes. A growing recording's last frames may not be in its file yet (writer.py
coalesces writes): they go from memory after the file's part (`mp4.FileChunk.split`).
TLS sockets can't use sendfile: they get `pread` + `sendall`. A client that goes
away mid-body is logged at debug level: players do it all the time (seeking aborts the
previous range request).

Who closes what: a handler opens each sample file only for the `FileChunk` being sent and
closes it before the next one (`_send_file_chunk`); a live.m4s handler (live.py) owns its
connection until it returns, then the connection is closed; the `Server` owns the
listening sockets and closes them in `stop()`.

Neighbours: api.py (routes, JSON), mp4.py (virtual files), auth.py (sessions,
`Permissions`), live.py (WebSocket), db.py (read under `db.locked()`); nvr.py parses
`[[binds]]` into `nvr.Bind`s and starts/stops the `Server` in `cmd_run`.

Threads and locks: one accept thread per bind ("http-<bind>"), one handler thread per
connection ("http-conn-<n>"). Handlers take only the database lock, briefly, through
db.py, auth.py and mp4.py; never while sending.
"""

from __future__ import annotations

import dataclasses
import email.utils
import http
import http.server
import io
import ipaddress
import itertools
import logging
import os
import re
import secrets
import select
import selectors
import socket
import socketserver
import ssl
import stat
import struct
import threading
import urllib.parse
import uuid as uuidlib

import api
import auth
import configapi
import clock
import mp4
import snapshot

logger = logging.getLogger(__name__)

# Cache-Control of view.mp4, view.m4s and init segments (reference §4.7): their bytes for
# a given URL only change with FORMAT_VERSION, which changes the ETag.
ENTITY_CACHE_CONTROL = "private, max-age=3600"
TEXT_CACHE_CONTROL = "private, no-cache"

# Generated bytes are gathered up to this size before a write; sample data bypasses it.
WRITE_BUFFER_BYTES = 256 * 1024
# More ranges than this in one Range header: serve the whole entity instead (a cheap
# defence against a header asking for thousands of tiny overlapping parts).
MAX_RANGES = 64
# Request bodies (JSON) larger than this are refused with 413.
MAX_BODY_BYTES = api.MAX_JSON_BODY_BYTES
# Static UI files: our names aren't content-hashed (there is no build step, and people
# edit ui/ on the box), so browsers revalidate each time and mostly get a 304. A custom
# uiDir built by a bundler has hashed names (`index-3f2a9c1b.js`): those never change.
STATIC_CACHE_CONTROL = "public, no-cache"
HASHED_CACHE_CONTROL = "public, max-age=31536000, immutable"
# A content hash: the name's last part before the extension, after a "-" or ".", of 8 or
# more letters, digits and "_", at least one a digit (so "users-settings.js" isn't one;
# a hash that happens to have no digit is merely revalidated). Vite, webpack, esbuild.
_HASHED_NAME = re.compile(r"[^/]+[.-](?=[A-Za-z_]*[0-9])[A-Za-z0-9_]{8,}\.[A-Za-z0-9]+")
STATIC_TYPES = {
    "css": "text/css; charset=utf-8", "html": "text/html; charset=utf-8",
    "ico": "image/x-icon", "js": "text/javascript; charset=utf-8",
    "map": "application/json", "json": "application/json", "png": "image/png",
    "svg": "image/svg+xml", "txt": "text/plain; charset=utf-8",
    "webmanifest": "application/manifest+json", "woff2": "font/woff2",
}
DEFAULT_UI_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ui")

# One read or write that makes no progress this long ends the connection (a client that
# stops reading a download; a live socket's peer gone). Reading a request has deadlines
# of its own (Limits), so a client sending a byte now and then can't hold a thread.
DEFAULT_CONNECTION_TIMEOUT_SEC = 120.0


@dataclasses.dataclass(frozen=True)
class Limits:
    """What a connection may cost (issue 19: a client trickling a byte every 45 s held a
    thread forever). Defaults are in docs/api.md "Limits"; tests pass short ones.

    Deadlines while reading a request (never while sending: a paused player stops
    reading a download, legitimately), each total, not per read:
    - `head_sec`: the request line and headers, from the first byte of the request (for
      a connection's first request, from the accept, TLS handshake included); past it,
      a 408 if part of a request came, else the connection is just closed;
    - `idle_sec`: keep-alive, from the end of one response to the next request's first
      byte; past it, closed without a word (RFC 9112 §9.5);
    - the body: `body_sec` plus its Content-Length at `body_min_bytes_per_sec`; a 408.
    Connections (live.m4s WebSockets count too: a 3x3 live grid holds 9, plus the
    browser's ~6 for the rest): at most `max_per_bind` open on a bind and
    `max_per_peer` from one address (not on Unix binds, nor on `trustForwardHeaders`
    ones, where every connection comes from the proxy). One more is answered 503 with
    Retry-After from the accept loop, without starting a thread (TLS binds close it: a
    plain-text answer can't be sent before a handshake)."""
    head_sec: float = 30.0
    idle_sec: float = 60.0
    body_sec: float = 10.0
    body_min_bytes_per_sec: float = 4096.0
    max_per_bind: int = 256
    max_per_peer: int = 64
    retry_after_sec: int = 5
    # A refused connection: its 503 is written, then its input read and dropped for up
    # to this long before the close (closing with unread input sends a RST, which can
    # destroy the 503 before the client reads it); at most `max_lingering` at once.
    linger_sec: float = 2.0
    max_lingering: int = 64


class DeadlinePassed(TimeoutError):
    """A request phase (`Deadline.what`) took longer than its deadline."""

    def __init__(self, what: str, seconds: float, received: int):
        super().__init__(f"{what} deadline of {seconds:g} s passed")
        self.what, self.seconds, self.received = what, seconds, received


class Deadline:
    """The deadline of a connection's current reading phase, in `clocks.monotonic()`
    time, or none. `set("idle", 60, then=("head", 30))`: when bytes come in, the next
    phase starts with its own deadline. `received` counts bytes since `set`."""

    def __init__(self, clocks: clock.Clocks):
        self.clocks = clocks
        self.what: str | None = None
        self.seconds = 0.0
        self.at: int | None = None
        self.then: tuple[str, float] | None = None
        self.received = 0

    def set(self, what: str, seconds: float, then: tuple[str, float] | None = None) -> None:
        self.what, self.seconds, self.then, self.received = what, seconds, then, 0
        self.at = self.clocks.monotonic() + int(seconds * 1e9)

    def clear(self) -> None:
        self.what, self.at, self.then = None, None, None

    def remaining(self) -> float | None:
        """Seconds left (None: no deadline); raises DeadlinePassed at or past it."""
        if self.at is None:
            return None
        left = (self.at - self.clocks.monotonic()) / 1e9
        if left <= 0:
            raise DeadlinePassed(self.what, self.seconds, self.received)
        return left

    def got(self, n: int) -> None:
        self.received += n
        if n and self.then is not None:
            what, seconds = self.then
            received = self.received
            self.set(what, seconds)
            self.received = received


class _DeadlineReader(io.RawIOBase):
    """A connection's reading side (under `rfile`'s buffer): each read waits at most
    until the `Deadline`, if one is set. Without one, a plain read (with the socket's
    own timeout; live.py reads with timeout 0 through it, once)."""

    def __init__(self, sock: socket.socket, deadline: Deadline):
        super().__init__()
        self.sock, self.deadline = sock, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int | None:
        left = self.deadline.remaining()
        if left is None:
            try:
                return self.sock.recv_into(b)
            except BlockingIOError:
                return None
        timeout = self.sock.gettimeout()
        self.sock.settimeout(left if not timeout else min(left, timeout))
        try:
            n = self.sock.recv_into(b)
        except TimeoutError:
            self.deadline.remaining()   # raises DeadlinePassed if that was it
            raise
        finally:
            self.sock.settimeout(timeout)
        self.deadline.got(n)
        return n
LIVE_STOP_WAIT_SEC = 2.0   # how long stop() lets live connections send their close
HANDLER_JOIN_SEC = 5.0     # how long stop() waits for each handler thread to end


HttpError = api.HttpError
Response = api.Response


class BindError(Exception):
    """A configured bind can't be listened on; the message says which and why."""


# ---------------------------------------------------------------------------------------
# Range (RFC 9110 §14.1.2), in the style of bottle's parse_range_header.

UNSATISFIABLE = "unsatisfiable"
_RANGE_SPEC = re.compile(r"\s*(?:([0-9]+)-([0-9]*)|-([0-9]+))\s*")
_BEYOND_ANY_FILE = 10 ** 30
_DIGITS = re.compile(r"[0-9]+")


def _byte_pos(digits: str) -> int:
    """A byte position; any beyond 10^30 (int() refuses over 4300 digits) is 10^30."""
    d = digits.lstrip("0")
    if len(d) > 30:
        return _BEYOND_ANY_FILE
    return int(d) if d else 0


def parse_range(header: str | None, length: int) -> list[tuple[int, int]] | None | str:
    """Parses a `Range` header against an entity of `length` bytes.

    Returns a list of half-open byte ranges `(start, end)` (end exclusive, clipped to the
    length) in the order asked; `None` to serve the whole entity (no header, a unit other
    than bytes, invalid syntax, or more than MAX_RANGES ranges: RFC 9110 §14.2 lets a
    server ignore a Range it can't or won't parse); or `UNSATISFIABLE` when the syntax is
    valid but no range overlaps the entity (416).
    """
    if header is None:
        return None
    unit, eq, specs = header.partition("=")
    if not eq or unit.strip().lower() != "bytes":
        return None
    parts = specs.split(",")
    if len(parts) > MAX_RANGES:
        return None
    out = []
    for part in parts:
        if not part.strip():
            continue  # RFC 9110 §5.6.1: empty list elements are ignored
        m = _RANGE_SPEC.fullmatch(part)
        if m is None:
            return None
        first, last, suffix = m.groups()
        if suffix is not None:            # "-n": the last n bytes
            n = _byte_pos(suffix)
            if n > 0 and length > 0:
                out.append((max(0, length - n), length))
        else:
            start = _byte_pos(first)
            if last and _byte_pos(last) < start:
                return None               # "5-3" is invalid syntax: ignore the header
            end = length if not last else min(_byte_pos(last) + 1, length)
            if start < length:
                out.append((start, end))
    if not out:
        return None if not any(p.strip() for p in parts) else UNSATISFIABLE
    return _coalesce_overlaps(out)


def _coalesce_overlaps(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """`ranges` as they are if no two overlap; else sorted, with overlapping ones merged
    (RFC 9110 §15.3.7.2 allows both), so a response never holds a byte twice: without
    this, 64 ranges of "0-" sent a 24 h view 64 times over."""
    ordered = sorted(ranges)
    if all(a[1] <= b[0] for a, b in zip(ordered, ordered[1:])):
        return ranges
    merged = [ordered[0]]
    for start, end in ordered[1:]:
        if start < merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


# ---------------------------------------------------------------------------------------
# Who is calling (reference §5.4, §5.7)

def _split_quoted(value: str, sep: str) -> list[str]:
    """Splits on `sep` outside double quotes (RFC 7239 §4 quoted-strings)."""
    out, cur, quoted = [], [], False
    for ch in value:
        if ch == '"':
            quoted = not quoted
        if ch == sep and not quoted:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return out


def _forwarded_node(value: str) -> str | None:
    """An RFC 7239 §6 node ("192.0.2.1", "192.0.2.1:80", "[2001:db8::1]:80") -> its IP."""
    v = value.strip().strip('"')
    if v.startswith("["):
        v = v[1:v.find("]")] if "]" in v else ""
    elif v.count(":") == 1:
        v = v.split(":")[0]
    try:
        return str(ipaddress.ip_address(v))
    except ValueError:
        return None   # "unknown", an obfuscated "_name", or garbage


def forwarded_client(headers) -> tuple[str | None, str | None]:
    """(client address, protocol) from a trusted proxy's headers, either may be None.

    RFC 7239 `Forwarded` first: its last element is the one our proxy added, so its
    `for=` and `proto=` are used. Else the last entries of `X-Forwarded-For` and
    `X-Forwarded-Proto`, else `X-Real-IP` for the address. A header sent on several
    lines is one list (RFC 9110 §5.3): a proxy that adds a line of its own after the
    client's must win, so every line is read, never just the first."""
    addr = proto = None
    fwd = _header_lines(headers, "Forwarded")
    if fwd:
        last = _split_quoted(",".join(fwd), ",")[-1]
        for pair in _split_quoted(last, ";"):
            k, eq, v = pair.partition("=")
            if not eq:
                continue
            k, v = k.strip().lower(), v.strip().strip('"')
            if k == "for":
                addr = _forwarded_node(v)
            elif k == "proto":
                proto = v.lower()
        return addr, proto
    xff = _header_lines(headers, "X-Forwarded-For")
    if xff:
        addr = _forwarded_node(xff[-1].split(",")[-1])
    xfp = _header_lines(headers, "X-Forwarded-Proto")
    if xfp:
        proto = xfp[-1].split(",")[-1].strip().lower()
    real = _header_lines(headers, "X-Real-IP")
    if addr is None and real:
        addr = _forwarded_node(real[-1])
    return addr, proto


def _header_lines(headers, name: str) -> list[str]:
    """Every line of header `name`, in order (a plain dict in tests has one)."""
    if hasattr(headers, "get_all"):
        return headers.get_all(name) or []
    v = headers.get(name)
    return [] if v is None else [v]


def apply_forward_headers(req: api.Request) -> None:
    """With `trustForwardHeaders`, the client address and https-ness come from the proxy."""
    if not getattr(req.bind, "trust_forward_headers", False):
        return
    addr, proto = forwarded_client(req.headers)
    if addr is not None:
        req.client = addr
    if proto == "https":
        req.secure = True


def session_cookie_value(headers) -> str | None:
    """The `s` cookie of a request, if any."""
    values = headers.get_all("Cookie") if hasattr(headers, "get_all") else None
    for header in values or ():
        for part in header.split(";"):
            k, eq, v = part.strip().partition("=")
            if eq and k == "s":
                return v.strip().strip('"')
    return None


def resolve_caller(req: api.Request, peer_uid: int | None) -> api.Caller | None:
    """Reference §5.4: a valid session; else a privileged Unix peer; else the bind's
    unauthenticated permissions; else nobody (None). A bad cookie falls through.
    On the control socket only the peer's uid counts: ours or root's, else a 403."""
    srv = req.server
    if getattr(req.bind, "control", False):
        # The control socket: the peer's uid decides, and nothing else does.
        if peer_uid is not None and peer_uid in (os.geteuid(), 0):
            return api.Caller(permissions=auth.Permissions.all(), privileged_unix=True)
        raise HttpError(403, f"the control socket answers only uid {os.geteuid()} (nvr's) "
                             f"and root, not uid {peer_uid}; use the web UI or the HTTP API")
    cookie = session_cookie_value(req.headers)
    if cookie is not None and srv.auth is not None:
        try:
            session, user = srv.auth.authenticate(cookie, req.client_info)
            return api.Caller(permissions=auth.effective_permissions(session, user), user=user,
                              session=session)
        except auth.AuthError as e:
            logger.debug("request %s: session cookie refused: %s", req.request_id, e)
    if (peer_uid is not None and getattr(req.bind, "own_uid_is_privileged", False)
            and peer_uid == os.geteuid()):
        return api.Caller(permissions=auth.Permissions.all(), privileged_unix=True)
    perms = getattr(req.bind, "allow_unauthenticated_permissions", None)
    if perms is not None:
        if req.bind.address[0] != "unix" and not host_is_address(req.headers.get("Host")):
            # DNS rebinding: a page of attacker.example, re-pointed at this address, would
            # read what the bind grants anyone. Its requests carry its own name as Host.
            logger.debug("request %s: no unauthenticated permissions for Host %r (only an "
                         "IP address or localhost gets them)", req.request_id,
                         req.headers.get("Host"))
            return None
        return api.Caller(permissions=perms)
    return None


def host_is_address(host: str | None) -> bool:
    """True for a Host header naming an IP address or localhost (any port), or none at
    all (HTTP/1.0): what a browser sends when the user typed such an address, and what a
    DNS-rebinding page can't send."""
    if host is None:
        return True
    host = host.strip().lower()
    if host.startswith("["):
        name = host[1:host.find("]")] if "]" in host else ""
    else:
        name, colon, port = host.rpartition(":")
        if not colon or not port.isdigit():
            name = host
    if name == "localhost" or name.endswith(".localhost"):  # loopback by RFC 6761
        return True
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------
# Static UI files

# The UI's pages: scripts only from our own files (an injected <script> or on* attribute
# doesn't run), never framed by another site (clickjacking of the users page). Media,
# WebSocket and style sources are left open: MSE uses blob: URLs, and 'self' for ws:
# isn't understood by every browser yet.
STATIC_CSP = ("script-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
              "frame-ancestors 'none'")


def _accepts_gzip(accept_encoding: str | None) -> bool:
    """RFC 9110 §12.5.3: `gzip` (or `*`) listed without q=0."""
    if not accept_encoding:
        return False
    for item in accept_encoding.split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() not in ("gzip", "x-gzip", "*"):
            continue
        q = params.replace(" ", "").lower()
        if q.startswith("q="):
            try:
                return float(q[2:7]) > 0
            except ValueError:
                return False
        return True
    return False


@dataclasses.dataclass
class StaticFile:
    """A file of the UI directory, served like a VirtualFile (Range, conditional)."""
    path: str
    length: int
    last_modified: int
    etag: str
    content_type: str
    csp: str | None = STATIC_CSP      # None or "": no Content-Security-Policy header
    gzip: bool = False                # `path` is the .gz sibling, sent as is
    has_gzip: bool = False            # a .gz sibling exists (so the answer varies)
    cache_control: str = STATIC_CACHE_CONTROL

    def headers(self) -> dict[str, str]:
        h = {"Content-Type": self.content_type, "ETag": self.etag,
             "Last-Modified": email.utils.formatdate(self.last_modified, usegmt=True),
             "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY"}
        if self.csp:
            h["Content-Security-Policy"] = self.csp
        if self.gzip:
            h["Content-Encoding"] = "gzip"
        if self.has_gzip:
            h["Vary"] = "Accept-Encoding"
        return h

    def chunks(self, start: int = 0, end: int | None = None):
        end = self.length if end is None else end
        if end > start:
            yield mp4.FileChunk(self.path, start, end - start)


def find_static(ui_dir: str, path: str, accept_encoding: str | None = None, *,
                csp: str | None = STATIC_CSP) -> StaticFile:
    """The UI file for a URL path, refusing anything outside `ui_dir` (404).

    `/` is index.html (a literal `/index.html` is a 404, as Moonfire: one URL per page);
    other names need a known extension. Components that are empty,
    `.`/`..`, hidden, or contain a backslash or NUL are refused before touching the disk,
    and the resolved real path must still be inside the real `ui_dir` (symlinks).

    A regular `NAME.gz` next to the file (also inside `ui_dir`) is sent instead, as is,
    with `Content-Encoding: gzip`, when `accept_encoding` takes gzip: it is then the
    entity, so its length, its own ETag and any Range apply to the compressed bytes
    (as nginx's gzip_static). Either way the answer carries `Vary: Accept-Encoding`.
    A content-hashed name (`_HASHED_NAME`) is cached for a year, `immutable`."""
    rel = "index.html" if path == "/" else path[1:]
    parts = rel.split("/")
    if path == "/index.html" or not path.startswith("/") or any(
            not p or p.startswith(".") or "\\" in p or "\0" in p for p in parts):
        raise HttpError(404, f"no such file: {path}")
    ext = parts[-1].rpartition(".")[2].lower() if "." in parts[-1] else ""
    if ext not in STATIC_TYPES:
        raise HttpError(404, f"no such file: {path}")
    root = os.path.realpath(ui_dir)
    full = os.path.realpath(os.path.join(root, *parts))
    if os.path.commonpath([root, full]) != root:
        raise HttpError(404, f"no such file: {path}")
    try:
        st = os.stat(full)
    except OSError:
        raise HttpError(404, f"no such file: {path}") from None
    if not stat.S_ISREG(st.st_mode):
        raise HttpError(404, f"no such file: {path}")
    cache = HASHED_CACHE_CONTROL if _HASHED_NAME.fullmatch(parts[-1]) else STATIC_CACHE_CONTROL
    gz = os.path.realpath(full + ".gz")
    try:
        gz_st = os.stat(gz) if os.path.commonpath([root, gz]) == root else None
    except OSError:
        gz_st = None
    has_gzip = gz_st is not None and stat.S_ISREG(gz_st.st_mode)
    if has_gzip and _accepts_gzip(accept_encoding):
        full, st = gz, gz_st
    return StaticFile(full, st.st_size, int(st.st_mtime),
                      f'"{st.st_mtime_ns:x}-{st.st_size:x}-{st.st_ino:x}"', STATIC_TYPES[ext],
                      csp=csp, gzip=full == gz, has_gzip=has_gzip, cache_control=cache)


# ---------------------------------------------------------------------------------------
# Request ids: UUIDv7 (RFC 9562 §5.7), as Moonfire's; 3.11's uuid module has no uuid7.

def new_request_id(clocks: clock.Clocks) -> str:
    ms = clocks.realtime() // 1_000_000
    rand = int.from_bytes(secrets.token_bytes(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | (rand >> 68 & 0xFFF) << 64 \
        | 0b10 << 62 | (rand & ((1 << 62) - 1))
    return str(uuidlib.UUID(int=value))


# ---------------------------------------------------------------------------------------
# Conditional requests (RFC 9110 §13)

def _etag_list_matches(header: str, etag: str, *, weak: bool) -> bool:
    if header.strip() == "*":
        return True
    strip = (lambda t: t[2:] if t.startswith("W/") else t) if weak else (lambda t: t)
    want = strip(etag)
    return any(strip(t.strip()) == want and (weak or not t.strip().startswith("W/"))
               for t in header.split(","))


def _http_date(value: str | None) -> int | None:
    if not value:
        return None
    try:
        d = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return int(d.timestamp()) if d.tzinfo is not None else None


def not_modified(headers, entity) -> bool:
    """True for a 304 (§13.1.2, §13.1.3: If-None-Match wins over If-Modified-Since)."""
    inm = headers.get("If-None-Match")
    if inm is not None:
        return _etag_list_matches(inm, entity.etag, weak=True)
    ims = _http_date(headers.get("If-Modified-Since"))
    return ims is not None and entity.last_modified is not None and entity.last_modified <= ims


def range_applies(headers, entity) -> bool:
    """False when If-Range doesn't match, so the whole entity goes out (§13.1.5)."""
    ir = headers.get("If-Range")
    if ir is None:
        return True
    ir = ir.strip()
    if ir.startswith('"') or ir.startswith("W/"):
        return ir == entity.etag and not ir.startswith("W/")  # strong comparison
    return entity.last_modified is not None and \
        ir == email.utils.formatdate(entity.last_modified, usegmt=True)


# ---------------------------------------------------------------------------------------
# The handler

class _ClientGone(Exception):
    """The client closed the connection (or stopped reading) mid-response."""


_CLIENT_GONE_ERRORS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError,
                       TimeoutError, ssl.SSLError)


class Handler(http.server.BaseHTTPRequestHandler):
    """One connection: parses requests, dispatches through ROUTES, writes responses."""

    protocol_version = "HTTP/1.1"
    server_version = "nvr"
    sys_version = ""

    def version_string(self) -> str:
        return self.server_version  # no Python version in the Server header
    disable_nagle_algorithm = True  # our writes are already coalesced
    server: "_HttpServer"

    # -- connection set-up and tear-down ------------------------------------------------

    def setup(self) -> None:
        owner = self.server.owner
        self.timeout = owner.connection_timeout_sec
        self.disable_nagle_algorithm = self.server.address_family != socket.AF_UNIX
        self.tls_failed = False
        self.requests_started = 0
        # The first request's head (and the TLS handshake) is due head_sec after the
        # accept; later ones are timed by handle_one_request.
        self.deadline = Deadline(owner.clocks)
        self.deadline.set("head", owner.limits.head_sec)
        tls = self.server.tls_context
        if tls is not None:
            # The handshake happens here, in the connection's thread, never in the accept
            # loop: a client that connects and says nothing (or speaks plain HTTP) can't
            # stall other clients. The SSLSocket takes over the fd: register it so stop()
            # can still shut it down; finish() closes it.
            raw = self.request
            raw.settimeout(self.timeout)
            self.request = tls.wrap_socket(raw, server_side=True,
                                           do_handshake_on_connect=False)
            self.server.track(raw, self.request)
            try:
                self._tls_handshake()
            except (OSError, ValueError) as e:
                logger.info("TLS handshake with %s failed: %s", self.address_string(), e)
                self.tls_failed = True
        super().setup()
        # Reads go through the deadline (Limits); the makefile() reader is dropped.
        self.rfile.close()
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, self.deadline))

    def _tls_handshake(self) -> None:
        """The handshake, within the head deadline in total (a per-read timeout would let
        a client sending a byte now and then hold the thread)."""
        sock = self.request
        sock.settimeout(0)
        try:
            while True:
                try:
                    sock.do_handshake()
                    return
                except ssl.SSLWantReadError:
                    event = select.POLLIN
                except ssl.SSLWantWriteError:
                    event = select.POLLOUT
                left = self.deadline.remaining()   # raises DeadlinePassed
                poller = select.poll()
                poller.register(sock.fileno(), event)
                poller.poll(int(left * 1000) + 1)
        finally:
            sock.settimeout(self.timeout)

    def handle(self) -> None:
        if self.tls_failed:
            return
        try:
            super().handle()
        except _CLIENT_GONE_ERRORS + (OSError,) as e:
            logger.debug("connection from %s ended: %r", self.address_string(), e)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass  # flushing to a client that went away
        if isinstance(self.request, ssl.SSLSocket):
            self.request.close()  # the TCPServer closes only the (detached) raw socket

    def address_string(self) -> str:
        a = self.client_address
        return a[0] if isinstance(a, tuple) and a else "unix"

    def log_message(self, format: str, *args) -> None:
        logger.debug("%s: " + format, self.address_string(), *args)

    def log_request(self, code="-", size="-") -> None:
        pass  # one line per request comes from _dispatch

    def handle_one_request(self) -> None:
        """http.server's, with the deadlines of `Limits`: idle, then the head; the body's
        is set by `_read_body`; none while the handler runs (live.py's socket, sends)."""
        limits = self.server.owner.limits
        if self.requests_started:
            self.deadline.set("idle", limits.idle_sec, then=("head", limits.head_sec))
        self.requests_started += 1
        try:
            self.raw_requestline = self.rfile.readline(65537)
            if len(self.raw_requestline) > 65536:
                self.requestline = self.request_version = self.command = ""
                self.send_error(http.HTTPStatus.REQUEST_URI_TOO_LONG)
                return
            if not self.raw_requestline:
                self.close_connection = True
                return
            if not self.parse_request():
                return
            self.deadline.clear()
            method = getattr(self, "do_" + self.command, None)
            if method is None:
                self.send_error(http.HTTPStatus.NOT_IMPLEMENTED,
                                f"unsupported method {self.command!r}")
                return
            method()
            self.wfile.flush()
        except DeadlinePassed as e:
            self.close_connection = True
            if e.what == "idle" or not e.received:   # no part of a request came
                logger.debug("%s: closed after %s s without a request (%s)",
                             self.address_string(), f"{e.seconds:g}", e.what)
                return
            logger.info("%s: request head incomplete after %s s (%d bytes came); 408",
                        self.address_string(), f"{e.seconds:g}", e.received)
            self._send_raw_408(f"request head incomplete after {e.seconds:g} s")
        except TimeoutError as e:
            self.log_error("Request timed out: %r", e)
            self.close_connection = True

    def _send_raw_408(self, message: str) -> None:
        """A 408 before any request was parsed: best effort, at most a second."""
        body = (message + "\n").encode()
        head = (f"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain; charset=utf-8"
                f"\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        try:
            self.connection.settimeout(1.0)
            self.connection.sendall(head + body)
        except (OSError, ValueError):
            pass

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        if self.request_version == "HTTP/0.9":   # a bare "GET /": no headers, no status
            self.send_error(400, "HTTP/0.9 requests are not supported; use HTTP/1.0 or 1.1")
            return False
        return True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None):
        """http.server's own errors (malformed request line or headers) as text/plain."""
        # A line that didn't parse leaves http.server's default version, HTTP/0.9, for
        # which it writes no status line or headers: answer as HTTP/1.x anyway.
        if self.request_version == "HTTP/0.9":
            self.request_version = "HTTP/1.0"
        self.close_connection = True
        self._send_response(Response.text(message or http.HTTPStatus(code).phrase, code),
                            head=False)

    # -- dispatch ------------------------------------------------------------------------

    def do_GET(self):
        self._dispatch()

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_GET

    def send_response(self, code, message=None):
        self.status = code
        super().send_response(code, message)

    def _dispatch(self) -> None:
        srv = self.server.owner
        began = srv.clocks.monotonic()
        self.status, self.body_bytes, self.headers_sent = 0, 0, False
        split = urllib.parse.urlsplit(self.path)
        req = api.Request(method=self.command, path=urllib.parse.unquote(split.path),
                          query=urllib.parse.parse_qsl(split.query, keep_blank_values=True),
                          headers=self.headers, bind=self.server.bind,
                          client=self.address_string(), request_id=new_request_id(srv.clocks),
                          server=srv, handler=self,
                          secure=isinstance(self.connection, ssl.SSLSocket))
        outcome = ""
        try:
            req.body = self._read_body()
            apply_forward_headers(req)
            req.caller = resolve_caller(req, self.peer_uid())
            if req.path.startswith("/api/"):
                result = api.call(req, configapi.routes())
            else:
                result = srv.static(req)
            if result is None:       # live.py took the connection over and is done with it
                self.close_connection = True
                outcome = " (websocket)"
            elif isinstance(result, Response):
                self._send_response(result, head=req.method == "HEAD")
            else:
                self._serve_entity(req, result)
        except HttpError as e:
            if self.headers_sent:
                self.close_connection = True
                outcome = f" (after the headers: {e.message})"
            else:
                self._send_response(Response.text(e.message, e.status, **e.headers),
                                    head=req.method == "HEAD")
        except _ClientGone as e:
            self.close_connection = True
            outcome = f" (client went away: {e.__cause__!r})"
        except Exception:
            self.close_connection = True
            logger.exception("request %s: %s %s failed", req.request_id, req.method, self.path)
            if not self.headers_sent:
                try:
                    self._send_response(Response.text(
                        f"internal server error; the server log has the details of request "
                        f"{req.request_id}", 500), head=req.method == "HEAD")
                except _ClientGone:
                    pass
            else:
                outcome = " (aborted mid-body)"
        ms = (srv.clocks.monotonic() - began) / 1e6
        srv.db.metrics.request(api.route_class(req.path, configapi.routes()), self.status,
                               self.body_bytes)
        logger.info("%s %s %s %s -> %d, %d body bytes, %.1f ms%s", req.request_id,
                    req.client, req.method, self.path, self.status, self.body_bytes, ms,
                    outcome)

    def _read_body(self) -> bytes:
        """The request body (Content-Length only, at most MAX_BODY_BYTES)."""
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True  # we can't find where the next request starts
            raise HttpError(411, "chunked request bodies aren't supported; send Content-Length")
        # RFC 9110 §8.6: 1*DIGIT; repeated only with one value. Strict, so that we never
        # read a body of another length than a proxy in front of us did (int() would take
        # "1_0" or " +10"; a second, different header must not be ignored).
        values = {v.strip() for line in self.headers.get_all("Content-Length") or ()
                  for v in line.split(",")}
        if not values:
            n = 0
        elif len(values) == 1 and _DIGITS.fullmatch(v := values.pop()):
            n = int(v) if len(v) <= 18 else MAX_BODY_BYTES + 1
        else:
            self.close_connection = True
            raise HttpError(400, "Content-Length must be one non-negative integer")
        if n > MAX_BODY_BYTES:
            self.close_connection = True
            raise HttpError(413, f"request body of {n} bytes is over the limit of "
                                 f"{MAX_BODY_BYTES}")
        if n == 0:
            return b""
        limits = self.server.owner.limits
        self.deadline.set("body", limits.body_sec + n / limits.body_min_bytes_per_sec)
        try:
            body = self.rfile.read(n)
        except DeadlinePassed as e:
            self.close_connection = True
            raise HttpError(408, f"the request body ({n} bytes) didn't arrive within "
                                 f"{e.seconds:.3g} s; {e.received} bytes came") from None
        finally:
            self.deadline.clear()
        if len(body) != n:
            self.close_connection = True
            raise _ClientGone() from ConnectionResetError("body cut short")
        return body

    def peer_uid(self) -> int | None:
        """The peer's uid on a Unix socket (SO_PEERCRED), else None."""
        if self.server.address_family != socket.AF_UNIX:
            return None
        try:
            creds = self.connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                               struct.calcsize("3i"))
        except OSError:
            return None
        return struct.unpack("3i", creds)[1]

    # -- writing ---------------------------------------------------------------------------

    def _start(self, status: int, headers: dict[str, str]) -> None:
        """Status line and headers into http.server's buffer (not yet sent)."""
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self._headers_buffer.append(b"\r\n")
        self.headers_sent = True

    def _header_bytes(self) -> bytes:
        b = b"".join(self._headers_buffer)
        self._headers_buffer = []
        return b

    def _send_response(self, r: Response, *, head: bool) -> None:
        h = {"Content-Type": r.content_type, "Content-Length": str(len(r.body)), **r.headers}
        if r.status == 204:   # RFC 9110 §8.6, §15.3.5: no content, so no Content-Length
            del h["Content-Type"], h["Content-Length"]
        self._start(r.status, h)
        body = b"" if head or r.status == 304 else r.body
        self._write(self._header_bytes() + body)  # one write: no Nagle/delayed-ACK stall
        self.body_bytes = len(body)

    def _write(self, data) -> None:
        try:
            self.connection.sendall(data)
        except _CLIENT_GONE_ERRORS as e:
            raise _ClientGone() from e

    def _serve_entity(self, req: api.Request, f: mp4.VirtualFile) -> None:
        """A VirtualFile with caching headers, conditional requests and Range."""
        base = f.headers()
        base["Cache-Control"] = getattr(f, "cache_control", ENTITY_CACHE_CONTROL)
        base["Accept-Ranges"] = "bytes"
        head = req.method == "HEAD"
        if not_modified(req.headers, f):
            keep = ("ETag", "Last-Modified", "Cache-Control", "Content-Type", "Vary",
                    "Content-Encoding")
            self._start(304, {**{k: base[k] for k in keep if k in base},
                              "Content-Length": str(f.length)})
            self._write(self._header_bytes())
            return
        ranges = (parse_range(req.headers.get("Range"), f.length)
                  if range_applies(req.headers, f) else None)
        if ranges == UNSATISFIABLE:
            raise HttpError(416, f"none of the requested ranges is within the {f.length} "
                                 f"bytes", {"Content-Range": f"bytes */{f.length}"})
        if ranges is None:
            self._start(200, {**base, "Content-Length": str(f.length)})
            parts = [(None, 0, f.length)]
        elif len(ranges) == 1:
            (s, e), = ranges
            self._start(206, {**base, "Content-Range": f"bytes {s}-{e - 1}/{f.length}",
                              "Content-Length": str(e - s)})
            parts = [(None, s, e)]
        else:
            boundary = secrets.token_hex(16)
            parts = []
            for s, e in ranges:
                parts.append(((f"\r\n--{boundary}\r\nContent-Type: {f.content_type}\r\n"
                               f"Content-Range: bytes {s}-{e - 1}/{f.length}\r\n\r\n")
                              .encode(), s, e))
            trailer = f"\r\n--{boundary}--\r\n".encode()
            n = sum(len(p) + e - s for p, s, e in parts) + len(trailer)
            del base["Content-Type"]
            self._start(206, {**base,
                              "Content-Type": f"multipart/byteranges; boundary={boundary}",
                              "Content-Length": str(n)})
            parts.append((trailer, 0, 0))
        out = _BodyWriter(self)
        out.add(self._header_bytes())
        out.flush()  # headers now: a player can act on them while the moov is generated
        if not head:
            for prefix, s, e in parts:
                if prefix:
                    out.add(prefix)
                for c in f.chunks(s, e):
                    out.add(c)
        out.end()
        self.body_bytes = out.sent - out.header_len


class _BodyWriter:
    """Coalesces generated bytes into large writes; sends FileChunks with sendfile."""

    def __init__(self, h: Handler):
        self.h = h
        self.sock = h.connection
        self.use_sendfile = not isinstance(self.sock, ssl.SSLSocket)
        # TCP_CORK (nginx's `tcp_nopush`) while sample data goes out: the kernel then sends
        # only full segments, not one per sendfile wake-up. Loopback, 900 MB: ~2.0 GB/s
        # without it, ~2.7 with (docs/performance.md). Never before the headers and the
        # moov have gone (they go uncorked, so the time to first byte is unchanged);
        # `end` uncorks, which sends the last partial segment at once.
        self.can_cork = (self.use_sendfile and self.sock.family in (socket.AF_INET,
                                                                    socket.AF_INET6))
        self.corked = False
        self.buf = bytearray()
        self.sent = 0
        self.header_len: int | None = None

    def add(self, c) -> None:
        if self.header_len is None:
            self.header_len = len(c)
        if isinstance(c, mp4.FileChunk):
            self.flush()
            if self.can_cork and not self.corked:
                self._cork(True)
            self._send_file_chunk(c)
        else:
            self.buf += c
            if len(self.buf) >= WRITE_BUFFER_BYTES:
                self.flush()

    def flush(self) -> None:
        if self.buf:
            self.h._write(self.buf)
            self.sent += len(self.buf)
            self.buf = bytearray()

    def end(self) -> None:
        """Sends what is buffered, and uncorks: the response is complete."""
        self.flush()
        if self.corked:
            self._cork(False)

    def _cork(self, on: bool) -> None:
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, int(on))
        except _CLIENT_GONE_ERRORS as e:
            raise _ClientGone() from e
        self.corked = on

    def _send_file_chunk(self, c: mp4.FileChunk) -> None:
        # A growing recording's last bytes may not be in its file yet: they come from
        # memory (mp4.FileChunk.split), after the file's part.
        n, rest = c.split()
        if n:
            self._send_file_part(mp4.FileChunk(c.path, c.offset, n) if rest else c)
        if rest:
            self.h._write(rest)
            self.sent += len(rest)

    def _send_file_part(self, c: mp4.FileChunk) -> None:
        # Opened per chunk and closed here. A recording deleted since the build gives
        # FileNotFoundError: the connection is dropped (a known limitation, §5.2).
        fd = os.open(c.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if self.use_sendfile:
                self._sendfile(fd, c)
            else:
                off, end = c.offset, c.offset + c.length
                while off < end:
                    data = os.pread(fd, min(end - off, 1 << 20), off)
                    if not data:
                        raise OSError(f"{c.path}: ends at {off}, before {end} as its index says")
                    self.h._write(data)
                    off += len(data)
                    self.sent += len(data)
        finally:
            os.close(fd)

    def _sendfile(self, fd: int, c: mp4.FileChunk) -> None:
        """os.sendfile in a loop. The socket has a timeout, so it is non-blocking
        underneath: wait for it to be writable, up to that timeout, on EAGAIN."""
        sock_fd = self.sock.fileno()
        off, left = c.offset, c.length
        timeout_ms = int((self.sock.gettimeout() or 0) * 1000) or -1
        poller = None
        while left:
            try:
                n = os.sendfile(sock_fd, fd, off, left)
            except BlockingIOError:
                if poller is None:
                    poller = select.poll()
                    poller.register(sock_fd, select.POLLOUT)
                if not poller.poll(timeout_ms):
                    raise _ClientGone() from TimeoutError("client stopped reading")
                continue
            except _CLIENT_GONE_ERRORS as e:
                raise _ClientGone() from e
            if n == 0:
                raise OSError(f"{c.path}: ends at {off}, before {c.offset + c.length} as "
                              f"its index says")
            off += n
            left -= n
            self.sent += n


# ---------------------------------------------------------------------------------------
# Servers and binds

class _HttpServer(http.server.ThreadingHTTPServer):
    """One listening socket (one bind). Tracks its connections so stop() can end them."""

    # Handler threads are daemons (a stuck client never holds up exit), so socketserver
    # doesn't track them (its block_on_close joins only non-daemon threads): we do,
    # in `_handlers`, and `server_close` joins them.
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, owner: "Server", bind, family: int, address, tls_context):
        self.owner, self.bind, self.tls_context = owner, bind, tls_context
        self.address_family = family
        self._conns: dict[socket.socket, socket.socket] = {}  # accepted -> current
        self.bound = False
        self.bound_ino: int | None = None   # a Unix socket's inode once bound
        self._conns_lock = threading.RLock()   # RLock: wait_connections' predicates count
        self._handlers: set[threading.Thread] = set()   # under _conns_lock
        # The accept loop blocks until a connection or `wake()`: socketserver's own
        # serve_forever polls (10 wake-ups a second for nothing on an idle recorder).
        self._wake_r, self._wake_w = os.pipe()
        self._stop_accepting = False
        # Connection caps (Limits): open connections per peer address, under _conns_lock;
        # the condition is notified when one ends.
        self._peers: dict[str, int] = {}
        self._conns_changed = threading.Condition(self._conns_lock)
        # Refused connections being lingered on (socket -> monotonic deadline), and when
        # a refusal was last logged at warning level: accept loop only.
        self._lingering: dict[socket.socket, int] = {}
        self._sel: selectors.BaseSelector | None = None
        self._refusal_logged_at: int | None = None
        super().__init__(address, Handler, bind_and_activate=False)

    def accept_loop(self) -> None:
        """Accepts connections until `wake()`; each is handled on its own thread, or
        refused with a 503 over the caps (`_refuse`), lingered on here."""
        with selectors.DefaultSelector() as sel:
            self._sel = sel
            sel.register(self.socket, selectors.EVENT_READ, "accept")
            sel.register(self._wake_r, selectors.EVENT_READ, "wake")
            try:
                while True:
                    ready = sel.select(self._linger_timeout())
                    if self._stop_accepting:
                        return
                    for key, _ in ready:
                        if key.data == "accept":
                            self._handle_request_noblock()  # accept, verify, process_request
                        elif key.data == "linger":
                            self._drain_refused(key.fileobj)
                    now = self.owner.clocks.monotonic()
                    for sock, at in list(self._lingering.items()):
                        if now >= at:
                            self._end_linger(sock)
            finally:
                for sock in list(self._lingering):
                    self._end_linger(sock)
                self._sel = None

    def _peer_key(self, client_address) -> str | None:
        """The address counted against max_per_peer, or None (not counted)."""
        if self.address_family == socket.AF_UNIX or self.bind is None or \
                getattr(self.bind, "trust_forward_headers", False):
            return None
        return client_address[0] if isinstance(client_address, tuple) else None

    def connection_count(self, peer: str | None = None) -> int:
        with self._conns_lock:
            return len(self._conns) if peer is None else self._peers.get(peer, 0)

    def wait_connections(self, pred, timeout: float) -> bool:
        """Waits until `pred(self)` holds, re-checked as connections end (for tests)."""
        with self._conns_changed:
            return self._conns_changed.wait_for(lambda: pred(self), timeout)

    def _refuse(self, request: socket.socket, client_address, why: str) -> None:
        """Over a cap: a 503 with Retry-After, written from here without a thread (it
        fits any socket buffer), then the socket lingers (Limits.linger_sec)."""
        limits = self.owner.limits
        now = self.owner.clocks.monotonic()
        who = client_address[0] if isinstance(client_address, tuple) else "unix"
        if self._refusal_logged_at is None or now - self._refusal_logged_at >= 60 * 10**9:
            self._refusal_logged_at = now
            logger.warning("bind %s: refusing a connection from %s: %s (Limits in "
                           "docs/api.md; this is logged once a minute)",
                           self.bind.address[1], who, why)
        else:
            logger.debug("refusing a connection from %s: %s", who, why)
        if self.tls_context is not None or len(self._lingering) >= limits.max_lingering \
                or self._sel is None:
            request.close()
            return
        body = (f"too many connections: {why}; retry in {limits.retry_after_sec} s\n").encode()
        head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; "
                f"charset=utf-8\r\nContent-Length: {len(body)}\r\nRetry-After: "
                f"{limits.retry_after_sec}\r\nCache-Control: no-store\r\n"
                f"Connection: close\r\n\r\n").encode()
        try:
            request.setblocking(False)
            request.send(head + body)
            request.shutdown(socket.SHUT_WR)
        except OSError:
            request.close()
            return
        self._lingering[request] = now + int(limits.linger_sec * 1e9)
        self._sel.register(request, selectors.EVENT_READ, "linger")

    def _linger_timeout(self) -> float | None:
        if not self._lingering:
            return None
        first = min(self._lingering.values())
        return max(0.0, (first - self.owner.clocks.monotonic()) / 1e9)

    def _drain_refused(self, sock: socket.socket) -> None:
        try:
            if sock.recv(65536):
                return   # the request we won't serve, dropped
        except BlockingIOError:
            return
        except OSError:
            pass
        self._end_linger(sock)   # EOF: the client has read the 503 and closed

    def _end_linger(self, sock: socket.socket) -> None:
        del self._lingering[sock]
        if self._sel is not None:
            self._sel.unregister(sock)
        sock.close()

    def wake(self) -> None:
        """Ends `accept_loop` (from another thread)."""
        self._stop_accepting = True
        os.write(self._wake_w, b"x")

    def server_close(self) -> None:
        """Closes the listener and joins every handler thread: `Server.stop` has shut
        their sockets down, so each ends at once (bounded, should one not)."""
        super().server_close()
        with self._conns_lock:
            handlers = list(self._handlers)
        for t in handlers:
            t.join(HANDLER_JOIN_SEC)
            if t.is_alive():
                logger.warning("%s still running %g s after its socket was shut down",
                               t.name, HANDLER_JOIN_SEC)
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(host), which may wait on DNS.
        if self.address_family == socket.AF_UNIX:
            _unlink_stale_socket(self.server_address)
        elif self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        socketserver.TCPServer.server_bind(self)
        if self.address_family == socket.AF_UNIX:
            if getattr(self.bind, "control", False):
                # Before listen(): nobody can connect until it is private.
                os.chmod(self.server_address, 0o600)
            # stop() unlinks the path only while it is still this socket.
            self.bound_ino = os.stat(self.server_address).st_ino
            self.server_name, self.server_port = "localhost", 0
        else:
            self.server_name, self.server_port = self.server_address[0], self.server_address[1]

    def process_request(self, request, client_address):
        """One daemon thread per connection, tracked (see `daemon_threads`), within the
        caps of `Limits`; over them, `_refuse` answers instead."""
        limits = self.owner.limits
        peer = self._peer_key(client_address)
        t = threading.Thread(target=self.process_request_thread,
                             args=(request, client_address), daemon=True)
        with self._conns_lock:
            if len(self._conns) >= limits.max_per_bind:
                why = f"{len(self._conns)} open on this listener (the limit)"
            elif peer is not None and self._peers.get(peer, 0) >= limits.max_per_peer:
                why = f"{self._peers[peer]} open from {peer} (the limit per address)"
            else:
                why = None
                self._conns[request] = request
                self._handlers.add(t)
                if peer is not None:
                    self._peers[peer] = self._peers.get(peer, 0) + 1
        if why is not None:
            self._refuse(request, client_address, why)
            return
        try:
            t.start()
        except BaseException:
            self._forget(request, t, peer)
            raise

    def _forget(self, request, t: threading.Thread, peer: str | None) -> None:
        with self._conns_lock:
            self._conns.pop(request, None)
            self._handlers.discard(t)
            if peer is not None:
                n = self._peers.get(peer, 0) - 1
                if n > 0:
                    self._peers[peer] = n
                else:
                    self._peers.pop(peer, None)
            self._conns_changed.notify_all()

    def track(self, raw: socket.socket, current: socket.socket) -> None:
        """`raw`'s fd now belongs to `current` (a TLS socket): shut that one down."""
        with self._conns_lock:
            if raw in self._conns:
                self._conns[raw] = current

    def process_request_thread(self, request, client_address):
        threading.current_thread().name = f"http-conn-{next(self.owner._conn_counter)}"
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._forget(request, threading.current_thread(), self._peer_key(client_address))

    def handle_error(self, request, client_address):
        logger.exception("unexpected error on a connection from %s", client_address)

    def end_connections(self) -> None:
        """Wakes every handler thread (idle keep-alive ones too) so it exits."""
        with self._conns_lock:
            conns = list(self._conns.values())
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except (OSError, ValueError):
                pass  # already closed by its thread


def _unlink_stale_socket(path: str) -> None:
    """Removes a socket left by an earlier run (reference §7.3); refuses other files.
    Only one process uses a database (its lock), so the socket is ours to replace."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise BindError(f"unix bind {path}: exists and is not a socket; remove it or "
                        f"choose another path")
    os.unlink(path)


# sockaddr_un's sun_path is 108 bytes on Linux, its NUL included (unix(7)).
MAX_UNIX_PATH_BYTES = 107
CONTROL_SOCKET_NAME = "control.sock"


def control_socket_path(db_dir: str) -> str:
    """Where `run` listens for the command line (and where ctl.py connects)."""
    return os.path.join(db_dir, CONTROL_SOCKET_NAME)


@dataclasses.dataclass
class ControlBind:
    """The control socket as a bind (see the module docstring); nvr.Bind's other
    keys keep their defaults (no unauthenticated permissions, no forward headers)."""
    path: str
    control: bool = True

    @property
    def address(self) -> tuple[str, str]:
        return ("unix", self.path)


def _socket_answers(path: str) -> bool:
    """True if something listens on the Unix socket at `path` (another process)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as c:
        c.settimeout(1.0)
        try:
            c.connect(path)
            return True
        except OSError:
            return False


def parse_bind_address(kind: str, value: str) -> tuple[int, object]:
    """("ipv4", "0.0.0.0:8080") -> (AF_INET, ("0.0.0.0", 8080)); ipv6 takes "[::]:8080"."""
    if kind == "unix":
        return socket.AF_UNIX, value
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise BindError(f"{kind} bind {value!r}: expected HOST:PORT")
    if kind == "ipv6":
        if not (host.startswith("[") and host.endswith("]")):
            raise BindError(f"ipv6 bind {value!r}: expected [ADDRESS]:PORT")
        return socket.AF_INET6, (host[1:-1], int(port))
    if kind == "ipv4":
        return socket.AF_INET, (host, int(port))
    raise BindError(f"unknown bind kind {kind!r}")


def _tls_context(bind) -> ssl.SSLContext | None:
    if not getattr(bind, "tls_cert", None):
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(bind.tls_cert, bind.tls_key)
    except (OSError, ssl.SSLError) as e:
        raise BindError(f"bind {bind.address[1]}: can't load TLS cert {bind.tls_cert} / key "
                        f"{bind.tls_key}: {e}") from None
    return ctx


class Server:
    """The HTTP server for every configured bind.

    `Server(db, config)` (an `nvr.Config`; only `.binds` is read), then `start()` to
    listen (raising `BindError` if any bind fails, with nothing left open) and `stop()`
    to close the listeners, end open connections and join every thread. `addresses`
    gives what each bind actually listens on (port 0 is resolved)."""

    def __init__(self, db, config, *, clocks: clock.Clocks | None = None,
                 connection_timeout_sec: float = DEFAULT_CONNECTION_TIMEOUT_SEC,
                 auth_: auth.Auth | None = None, signals=None, live_options=None,
                 limits: Limits | None = None, recorder=None):
        self.db = db
        # recorder.Recorder while `run` records (None read-only and in tests that don't
        # record): the configuration API applies changes through it.
        self.recorder = recorder
        self.limits = limits or Limits()
        self.binds = list(config.binds)
        self.ui_dir = getattr(config, "ui_dir", None) or DEFAULT_UI_DIR
        # A custom UI may need its own CSP (Moonfire's has inline scripts); ours keeps
        # STATIC_CSP. nvr.py allows the key only with uiDir; "" sends none.
        csp = getattr(config, "ui_content_security_policy", None)
        self.ui_csp = STATIC_CSP if csp is None else csp
        self.clocks = clocks or clock.RealClocks()
        # Sessions and logins; one per database (nvr.py passes the one it made).
        self.auth = auth_ if auth_ is not None else auth.Auth(
            db, getattr(config, "session_limits", None))
        self.signals = signals
        # Stills (still.jpg, latest.jpg): a decoding pool and cache; stop() ends the pool.
        self.stills = snapshot.Stills(db)
        self.live_options = live_options    # live.Options; None: live.py's defaults
        self.stopping = threading.Event()   # set when stop() begins (live.py watches it)
        # Live connections' wake-ups (live.py): stop() wakes them so each sends its close
        # 1001 before the sockets are shut down, and waits a moment for them to go.
        self._live = threading.Condition()
        self._live_wakers: set = set()
        self.connection_timeout_sec = connection_timeout_sec
        self._servers: list[_HttpServer] = []
        self._threads: list[threading.Thread] = []
        self._conn_counter = itertools.count(1)
        # The control socket's path, set before start() (None: none; module docstring).
        self.control_path: str | None = None

    @property
    def addresses(self) -> list:
        return [s.socket.getsockname() for s in self._servers]

    def start(self) -> None:
        try:
            for b in self.binds:
                kind, value = b.address
                family, addr = parse_bind_address(kind, value)
                s = _HttpServer(self, b, family, addr, _tls_context(b))
                self._servers.append(s)  # before binding: stop() closes its socket
                try:
                    s.server_bind()
                    s.bound = True
                    s.server_activate()
                except OSError as e:
                    raise BindError(f"can't listen on {kind} {value}: {e.strerror or e}") \
                        from None
            if self.control_path is not None:
                self._start_control(self.control_path)
        except BaseException:
            self.stop()
            raise
        for s in self._servers:
            b = s.bind
            t = threading.Thread(target=s.accept_loop, name=f"http-{b.address[1]}", daemon=True)
            t.start()
            self._threads.append(t)
            logger.info("listening on %s %s%s", b.address[0], s.socket.getsockname(),
                        " (TLS)" if s.tls_context else "")

    def _start_control(self, path: str) -> None:
        """Binds the control socket, or warns in one line why not (never fatal)."""
        without = ("; `nvr.py config` and `nvr.py sessions` can't reach this nvr while it "
                   "runs: use the web UI or the HTTP API (docs/api.md)")
        n = len(os.fsencode(path))
        if n > MAX_UNIX_PATH_BYTES:
            logger.warning("no control socket: %s is %d bytes, over the %d a Unix socket "
                           "path may have (use a shorter dbDir)%s", path, n,
                           MAX_UNIX_PATH_BYTES, without)
            return
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        except OSError as e:
            logger.warning("no control socket: can't look at %s: %s%s", path,
                           e.strerror or e, without)
            return
        if st is not None:
            if not stat.S_ISSOCK(st.st_mode):
                logger.warning("no control socket: %s exists and is not a socket (remove "
                               "it)%s", path, without)
                return
            if _socket_answers(path):
                # Two --read-only runs may share a database; the first keeps its socket.
                logger.warning("no control socket: another process answers on %s%s",
                               path, without)
                return
        s = _HttpServer(self, ControlBind(path), socket.AF_UNIX, path, None)
        try:
            if st is not None:
                os.unlink(path)  # stale: left by a crash
            s.server_bind()
            s.server_activate()
        except OSError as e:
            s.socket.close()
            s.server_close()
            logger.warning("no control socket: can't listen on %s: %s%s", path,
                           e.strerror or e, without)
            return
        s.bound = True
        self._servers.append(s)

    def static(self, req: api.Request) -> StaticFile:
        """A non-/api/ path: a file of the UI directory (reference §5.1)."""
        if req.method not in ("GET", "HEAD"):
            raise HttpError(405, f"method {req.method} is not allowed here; use GET or HEAD",
                            {"Allow": "GET, HEAD"})
        # A query (cache buster) is ignored.
        return find_static(self.ui_dir, req.path, req.headers.get("Accept-Encoding"),
                           csp=self.ui_csp)

    def open_counts(self) -> tuple[int, int]:
        """(open connections, open live WebSockets), for metrics.py."""
        with self._live:
            sockets = len(self._live_wakers)
        return sum(s.connection_count() for s in list(self._servers)), sockets

    def add_live(self, wake) -> None:
        """Registers a live connection's `wake()` (callable from any thread)."""
        with self._live:
            self._live_wakers.add(wake)

    def remove_live(self, wake) -> None:
        with self._live:
            self._live_wakers.discard(wake)
            self._live.notify_all()

    def stop(self) -> None:
        self.stopping.set()
        with self._live:
            for wake in self._live_wakers:
                wake()
            # Most are idle in poll and close at once; one stuck sending to a client that
            # doesn't read is unblocked below, when its socket is shut down.
            self._live.wait_for(lambda: not self._live_wakers, timeout=LIVE_STOP_WAIT_SEC)
        for s, t in zip(self._servers, self._threads):
            s.wake()   # the accept loop returns
            t.join()
        for s in self._servers:
            s.end_connections()
            s.server_close()  # closes the listener, joins handler threads
            if s.address_family == socket.AF_UNIX and s.bound:
                try:
                    if os.stat(s.server_address).st_ino == s.bound_ino:
                        os.unlink(s.server_address)
                except OSError:
                    pass
        self._servers, self._threads = [], []
        self.stills.close()
