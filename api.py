"""The routes under /api/: the JSON API, the video URLs and who may call each.

What it owns (reference §5.1, §5.2, §5.5; docs/api.md is the user-facing reference):
- `ROUTES`, the table of every /api/ URL: its pattern, methods, the permission it needs
  and its handler. A test walks this table as every kind of caller.
- The meaning of each endpoint: login/logout, `/api/` (cameras, streams, days, signals,
  the caller), one camera, a stream's recordings, view.mp4/.m4s/.txt and init segments
  (built by mp4.py), still.jpg and latest.jpg (snapshot.py), live.m4s (handed to
  live.py), signals, users and their sessions (listing and revoking; what ends a
  session, and what a session may do, is auth.py's), `/api/request`, `/api/metrics`
  (metrics.py's text), `/api/system` (system.py's document). `/api/protections` is
  routed here and answered by protectapi.py.
- JSON bodies: only with `Content-Type: application/json` (optionally
  `; charset=utf-8`), an object, at most MAX_JSON_BODY_BYTES; unknown keys are errors.
  Every body is parsed by `parse_json_body` (UTF-8, no lone surrogates, finite numbers,
  bounded integers and nesting); every response is strict JSON (`Response.json`).
  A session-authenticated mutation must carry the session's `csrf` (§5.5), compared
  in constant time; a wrong or missing one is a 400 (reference §5.2).
- Errors: `HttpError(status, one-line message)`; the kinds of §5.1 map to 400 (bad
  argument), 401 (no caller, or a caller without the permission who hasn't logged in),
  403 (a logged-in caller without the permission), 404, 412 (precondition), 429
  (login throttled), 503 (a read-only server asked to write).

Who the caller is (`Caller`) is decided by web.py before a handler runs (reference §5.4:
session cookie, then a Unix peer with our uid on an `ownUidIsPrivileged` bind, then the
bind's `allowUnauthenticatedPermissions`, else nobody). `Route.permission` is one of:
`None` (anyone, even nobody: login, logout, request, and live.m4s, whose
permission live.py checks inside the socket), `CALLER` (anyone the server
recognises, with whatever permissions), or an `auth.Permissions` attribute name.

Neighbours: web.py is the HTTP transport (sockets, parsing, Range, sending bytes, static
UI files, caller resolution); auth.py owns sessions and passwords; db.py the data;
mp4.py the virtual files; live.py the WebSocket; signals.py signal state. Handlers take
the database lock only through those modules' methods, briefly.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import uuid as uuidlib
from collections.abc import Callable

import auth
import db as dbmod
import metrics
import mp4
import recording
import snapshot
import storage
import system

logger = logging.getLogger(__name__)

VERSION = "0.1.0"

# Cache-Control of generated text and JSON: always revalidate.
TEXT_CACHE_CONTROL = "private, no-cache"
MAX_JSON_BODY_BYTES = 64 * 1024
# Route.permission: any recognised caller, whatever its permissions.
CALLER = "caller"


class HttpError(Exception):
    """An error response: `status` and a one-line, user-facing `message`."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


@dataclasses.dataclass
class Caller:
    """Who is calling and what they may do (reference §5.4)."""
    permissions: auth.Permissions
    user: dbmod.User | None = None
    session: auth.Session | None = None
    privileged_unix: bool = False   # a Unix peer with our uid on an ownUidIsPrivileged bind

    @property
    def authenticated(self) -> bool:
        """Logged in (or privileged): a missing permission is then a 403, not a 401."""
        return self.user is not None or self.privileged_unix

    def describe(self) -> str:
        if self.session is not None:
            return f"user {self.user.username!r} (id {self.user.id}), session {self.session.id_text}"
        if self.privileged_unix:
            return "privileged Unix peer"
        return "unauthenticated, with the listener's allowUnauthenticatedPermissions"


MAX_JSON_DEPTH = 32   # nesting of a request body; what is stored must also go back out
MAX_JSON_INT_DIGITS = 30  # an integer in a body (ids, 90 kHz times fit in 19 digits)


class _Refused:
    """What the JSON decoder's hooks put in place of a value we won't take (NaN and
    Infinity, which aren't JSON at all; an integer too long to mean anything): the walk
    in `parse_json_body` then names the field it sits in."""

    def __init__(self, why: str):
        self.why = why


def _refuse_constant(name: str) -> _Refused:
    return _Refused(f"not a finite number ({name}: JSON has no NaN or Infinity)")


def _parse_json_int(digits: str):
    if len(digits.lstrip("-")) > MAX_JSON_INT_DIGITS:
        return _Refused(f"integer of {len(digits.lstrip('-'))} digits is too large "
                        f"(at most {MAX_JSON_INT_DIGITS})")
    return int(digits)


def _has_lone_surrogate(s: str) -> bool:
    """True if `s` holds a UTF-16 surrogate: only a `\\ud800`-style JSON escape without its
    pair makes one (a valid pair is decoded to one code point). It can't be encoded as
    UTF-8: the password hasher, the database and the log would each fail on it."""
    try:
        s.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def _field(path: str, key) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def parse_json_body(raw: bytes):
    """A request body as JSON (RFC 8259: UTF-8), or HttpError(400) naming the first
    field that is wrong. The one parser of every request body: each JSON value goes
    through here before a handler sees it. Refused: bytes that aren't UTF-8 (an
    encoded surrogate among them), lone surrogates from `\\u` escapes, NaN/Infinity
    and numbers that overflow to them (1e400), integers of more than
    MAX_JSON_INT_DIGITS digits, and nesting deeper than MAX_JSON_DEPTH. Each of these
    once reached a handler and failed there with a 500, or was stored and then made
    every later GET /api/ emit invalid JSON (issue 19)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise HttpError(400, f"the request body is not UTF-8: byte {e.start} "
                             f"({raw[e.start:e.start + 1]!r}) {e.reason}") from None
    too_deep = HttpError(400, f"the request body nests arrays and objects more than "
                              f"{MAX_JSON_DEPTH} deep")
    try:
        body = json.loads(text, parse_constant=_refuse_constant, parse_int=_parse_json_int)
    except RecursionError:
        raise too_deep from None
    except ValueError as e:
        raise HttpError(400, f"the request body is not valid JSON: {e}") from None
    # Breadth-first, so that the depth limit is checked before a deep walk.
    level, depth = [("", body)], 0
    while level:
        if any(isinstance(x, (dict, list)) for _, x in level):
            depth += 1
            if depth > MAX_JSON_DEPTH:
                raise too_deep
        nxt = []
        for path, v in level:
            if isinstance(v, dict):
                for k, x in v.items():
                    if _has_lone_surrogate(k):
                        raise HttpError(400, f"{_field(path, repr(k))}: lone surrogate in "
                                             f"a key (\\ud800-\\udfff unpaired)")
                    nxt.append((_field(path, k), x))
            elif isinstance(v, list):
                nxt.extend((_field(path, i), x) for i, x in enumerate(v))
            else:
                what = path or "the request body"
                if isinstance(v, _Refused):
                    raise HttpError(400, f"{what}: {v.why}")
                if isinstance(v, float) and not math.isfinite(v):
                    raise HttpError(400, f"{what}: not a finite number")
                if isinstance(v, str) and _has_lone_surrogate(v):
                    raise HttpError(400, f"{what}: lone surrogate (\\ud800-\\udfff "
                                         f"unpaired); send UTF-8 text")
        level = nxt
    return body


def _finite_or_null(v):
    """`v` with every NaN/Infinity replaced by None (see `Response.json`)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite_or_null(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite_or_null(x) for x in v]
    return v


@dataclasses.dataclass
class Request:
    """What a route handler gets: the parsed request and where it came from."""
    method: str
    path: str                      # percent-decoded path, without the query
    query: list[tuple[str, str]]   # in order, repeated keys kept
    headers: object                # http.client.HTTPMessage (case-insensitive get)
    bind: object                   # the nvr.Bind this connection came in on
    client: str                    # client address (after trusted proxy headers) or "unix"
    request_id: str
    server: object                 # web.Server: .db, .auth, .signals, .clocks, .stopping
    body: bytes = b""
    caller: Caller | None = None
    secure: bool = False           # TLS, or a trusted proxy said https
    handler: object = None         # web.Handler: live.py takes the connection over

    def params(self, allowed: tuple[str, ...]) -> dict[str, list[str]]:
        """The query as {name: [values]}; a name not in `allowed` is a 400 naming it."""
        out: dict[str, list[str]] = {}
        for k, v in self.query:
            if k not in allowed:
                raise HttpError(400, f"unknown parameter {k!r}; this URL takes "
                                     f"{', '.join(allowed) or 'no parameters'}")
            out.setdefault(k, []).append(v)
        return out

    def json(self, allowed: tuple[str, ...]) -> dict:
        """The JSON object body; anything else is a 400 saying what was wrong."""
        ctype = (self.headers.get("Content-Type") or "").replace(" ", "").lower()
        if ctype not in ("application/json", "application/json;charset=utf-8"):
            raise HttpError(400, "the request body must be JSON with Content-Type: "
                                 "application/json")
        body = parse_json_body(self.body)
        if not isinstance(body, dict):
            raise HttpError(400, "the request body must be a JSON object")
        unknown = sorted(set(body) - set(allowed))
        if unknown:
            raise HttpError(400, f"unknown key(s) {', '.join(map(repr, unknown))} in the "
                                 f"request body; this URL takes {', '.join(allowed)}")
        return body

    @property
    def client_info(self) -> auth.Client:
        host = self.headers.get("Host") or ""
        return auth.Client(addr=None if self.client == "unix" else self.client,
                           user_agent=self.headers.get("User-Agent"),
                           domain=_host_without_port(host) or None)


def _host_without_port(host: str) -> str:
    host = host.strip()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


@dataclasses.dataclass
class Response:
    """A small response held in memory (text or JSON)."""
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def text(cls, s: str, status: int = 200, **headers) -> "Response":
        return cls(status, s.encode(), headers={"Cache-Control": TEXT_CACHE_CONTROL, **headers})

    @classmethod
    def json(cls, obj, status: int = 200, **headers) -> "Response":
        """Strict JSON out (`allow_nan=False`: NaN isn't JSON, and a browser's
        JSON.parse refuses the whole document). Input can't bring a NaN in any more
        (`parse_json_body`), but a database written before that can hold one, e.g. in
        a user's preferences: it goes out as null, with a warning, rather than failing
        the whole response (admins' user list, GET /api/)."""
        try:
            text = json.dumps(obj, separators=(",", ":"), allow_nan=False)
        except ValueError:
            logger.warning("a response held NaN or Infinity (stored before they were "
                           "refused?); sent as null")
            text = json.dumps(_finite_or_null(obj), separators=(",", ":"), allow_nan=False)
        return cls(status, text.encode(), "application/json",
                   {"Cache-Control": TEXT_CACHE_CONTROL, **headers})

    @classmethod
    def empty(cls, status: int = 204, **headers) -> "Response":
        return cls(status, b"", headers={"Cache-Control": TEXT_CACHE_CONTROL, **headers})


@dataclasses.dataclass(frozen=True)
class Route:
    """One entry of the route table: a full-match path pattern, the methods it answers,
    the permission it needs (see the module docstring), and the handler, called with
    the request and the match. A handler returns a `Response`, a `mp4.VirtualFile`
    (served with Range and conditional requests), or None when it took the connection
    over (live.m4s); or raises `HttpError`, `mp4.Mp4Error` (400) or `mp4.NotFound` (404)."""
    pattern: re.Pattern
    methods: tuple[str, ...]
    permission: str | None
    handler: Callable[[Request, re.Match], object]


def authorize(request: Request, permission: str | None) -> None:
    """Raises HttpError(401 or 403) unless the caller may use a route needing `permission`."""
    if permission is None:
        return
    caller = request.caller
    if caller is None:
        raise HttpError(401, "unauthenticated: log in first (POST /api/login)")
    if permission == CALLER or getattr(caller.permissions, permission):
        return
    name = {a: n for _, a, n in auth.Permissions.FIELDS}[permission]
    if caller.authenticated:
        raise HttpError(403, f"permission denied: this needs the {name} permission, which "
                             f"{caller.describe()} doesn't have")
    raise HttpError(401, f"unauthenticated: this needs the {name} permission, which this "
                         f"listener doesn't grant without a login")


def check_csrf(request: Request, body: dict) -> None:
    """A session-authenticated mutation must carry its session's CSRF token (§5.5)."""
    s = request.caller.session if request.caller else None
    if s is None:
        return  # no cookie: nothing a cross-site form could ride on
    token = body.get("csrf")
    if token is None:
        raise HttpError(400, "missing csrf: a logged-in request that changes something must "
                             "include the csrf token from GET /api/ (user.session.csrf)")
    if not s.check_csrf(token):
        raise HttpError(400, "wrong csrf token for this session")


def _require_writable(request: Request) -> None:
    if request.server.db.read_only:
        raise HttpError(503, "this server runs with --read-only; that needs a writable database")


def _bool_param(name: str, values: list[str]) -> bool:
    if values[-1] in ("true", "false"):
        return values[-1] == "true"
    raise HttpError(400, f"{name} must be true or false, not {values[-1]!r}")


_PARAM_LIMIT = 2 ** 62   # 90 kHz ticks: 1.6 million years either side of 1970


_MAX_PARAM_CHARS = 40      # a number or time string; checked before any int() (over 4300
                           # digits it raises, leading zeros included)
_INT_PARAM = re.compile(r"-?[0-9]+")


def _time_param(name: str, values: list[str]) -> int:
    if len(values[-1]) > _MAX_PARAM_CHARS:
        raise HttpError(400, f"{name} is too long ({len(values[-1])} characters; a time "
                             f"or a number of 90 kHz units has at most {_MAX_PARAM_CHARS})")
    try:
        v = recording.parse_time(values[-1])
    except ValueError as e:
        raise HttpError(400, f"{name}: {e}") from None
    if not -_PARAM_LIMIT <= v <= _PARAM_LIMIT:
        raise HttpError(400, f"{name} is out of range (at most 2^62 in magnitude)")
    return v


def _int_param(name: str, values: list[str]) -> int:
    # Plain ASCII digits only: int() would also take " 5", "+5", "5_0" and "٥".
    if not _INT_PARAM.fullmatch(values[-1]) or len(values[-1]) > _MAX_PARAM_CHARS:
        raise HttpError(400, f"{name} must be an integer of at most {_MAX_PARAM_CHARS} "
                             f"characters, not {values[-1][:40]!r}")
    v = int(values[-1])
    if not -_PARAM_LIMIT <= v <= _PARAM_LIMIT:
        raise HttpError(400, f"{name} is out of range (at most 2^62 in magnitude)")
    return v


def _camera_by_uuid(request: Request, camera_uuid: str) -> dbmod.Camera:
    try:
        u = uuidlib.UUID(camera_uuid).bytes
    except ValueError:
        raise HttpError(404, f"no camera {camera_uuid!r}: not a UUID") from None
    db = request.server.db
    with db.locked("api: find camera"):
        for c in db.cameras.values():
            if c.uuid == u:
                return c
    raise HttpError(404, f"no camera {camera_uuid}")


def _camera_stream(request: Request, camera_uuid: str, stream_type: str) -> int:
    c = _camera_by_uuid(request, camera_uuid)
    sid = c.streams.get(stream_type)
    if sid is None:
        raise HttpError(404, f"camera {camera_uuid} has no {stream_type} stream")
    return sid


# ---------------------------------------------------------------------------------------
# Video: view.mp4, view.m4s, init segments, live.m4s

def handle_view(request: Request, m: re.Match):
    """`view.mp4`, `view.m4s` and their `.txt` variants (reference §5.2)."""
    sid = _camera_stream(request, m["uuid"], m["type"])
    p = request.params(("s", "ts"))
    ts = _bool_param("ts", p["ts"]) if "ts" in p else False
    f = mp4.build_view(request.server.db, sid, p.get("s", []), ts=ts, kind=m["kind"])
    return Response.text(f.slice_table_text()) if m["txt"] else f


def handle_init(request: Request, m: re.Match):
    """`/api/init/<id>.mp4` and `.mp4.txt` (reference §4.5)."""
    request.params(())
    f = mp4.build_init(request.server.db, int(m["id"]))
    return Response.text(f.slice_table_text()) if m["txt"] else f


def handle_live(request: Request, m: re.Match):
    """`live.m4s`: a WebSocket (reference §5.3), run by live.py on this connection. The
    permission is checked after the upgrade, so the error goes inside the socket."""
    import live  # here, not at the top: live.py uses this module's types
    sid = _camera_stream(request, m["uuid"], m["type"])
    request.params(())
    return live.serve(request, sid)


# Stills (snapshot.py): still.jpg at an instant, latest.jpg

# Cache-Control of still.jpg: like view.mp4's (its bytes for a URL change only with
# snapshot.FORMAT_VERSION, which is in the ETag); latest.jpg changes every GOP.
STILL_CACHE_CONTROL = "private, max-age=3600"


def _still_response(request: Request, st: snapshot.Still, cache_control: str) -> Response:
    headers = {**st.headers(), "Cache-Control": cache_control}
    inm = request.headers.get("If-None-Match")
    if inm is not None and (inm.strip() == "*" or st.etag in
                            [t.strip().removeprefix("W/") for t in inm.split(",")]):
        return Response(304, b"", "image/jpeg", headers)
    del headers["Content-Type"]
    return Response(200, st.jpeg, "image/jpeg", headers)


def _still_call(fn, *args, **kwargs) -> snapshot.Still:
    try:
        return fn(*args, **kwargs)
    except snapshot.StillError as e:
        raise HttpError(400, str(e)) from None
    except snapshot.NoVideo as e:
        raise HttpError(404, str(e)) from None
    except snapshot.Busy as e:
        raise HttpError(503, str(e), {"Retry-After": str(e.retry_after_sec)}) from None


def _still_size(p: dict[str, list[str]]) -> dict[str, int | None]:
    try:
        return {k: snapshot.parse_size(k, p[k][-1] if k in p else None)
                for k in ("width", "height")}
    except snapshot.StillError as e:
        raise HttpError(400, str(e)) from None


def handle_still(request: Request, m: re.Match):
    """`still.jpg?t=TIME` or `?s=ID[@OPEN][.REL]`, or `?s=<view.mp4's s>...&at=MEDIA`;
    `&key=true`, `&width=`, `&height=`: the frame shown at that instant (or the key frame
    at or before it) as a JPEG."""
    sid = _camera_stream(request, m["uuid"], m["type"])
    p = request.params(("t", "s", "at", "key", "width", "height"))
    t = _time_param("t", p["t"]) if "t" in p else None
    key = _bool_param("key", p["key"]) if "key" in p else False
    if "at" in p:   # the frame at media time `at` of view.mp4 with these s= values
        if t is not None:
            raise HttpError(400, "give either t= or s=...&at=, not both")
        at = _int_param("at", p["at"])
        st = _still_call(request.server.stills.still_in_view, sid, p.get("s", []), at,
                         key=key, **_still_size(p))
    else:
        if len(p.get("s", [])) > 1:
            raise HttpError(400, "one s= without at=: a still is one instant")
        st = _still_call(request.server.stills.still, sid, time_90k=t,
                         s=p["s"][-1] if "s" in p else None, key=key, **_still_size(p))
    return _still_response(request, st, STILL_CACHE_CONTROL)


def handle_latest(request: Request, m: re.Match):
    """`latest.jpg[?width=&height=]`: the stream's latest key frame as a JPEG."""
    sid = _camera_stream(request, m["uuid"], m["type"])
    p = request.params(("width", "height"))
    st = _still_call(request.server.stills.latest, sid, **_still_size(p))
    return _still_response(request, st, TEXT_CACHE_CONTROL)


# ---------------------------------------------------------------------------------------
# Login and logout

def session_cookie(value: str, flags: int, max_age: int) -> str:
    """The `Set-Cookie` value of a new session; `max_age`: its lifetime
    (`auth.SessionLimits.cookie_max_age`)."""
    parts = [f"s={value}"]
    if flags & auth.FLAG_HTTP_ONLY:
        parts.append("HttpOnly")
    if flags & auth.FLAG_SECURE:
        parts.append("Secure")
    if flags & auth.FLAG_SAME_SITE_STRICT:
        parts.append("SameSite=Strict")
    elif flags & auth.FLAG_SAME_SITE_LAX:
        parts.append("SameSite=Lax")
    parts += [f"Max-Age={max_age}", "Path=/"]
    return "; ".join(parts)


def clear_cookie(secure: bool) -> str:
    return "s=; Max-Age=0; HttpOnly; SameSite=Lax" + ("; Secure" if secure else "") + "; Path=/"


def handle_login(request: Request, m: re.Match):
    request.params(())
    body = request.json(("username", "password"))
    username, password = body.get("username"), body.get("password")
    if not isinstance(username, str) or not isinstance(password, str):
        raise HttpError(400, "login needs a JSON body {\"username\": ..., \"password\": ...} "
                             "with two strings")
    _require_writable(request)
    flags = auth.FLAG_HTTP_ONLY | auth.FLAG_SAME_SITE_LAX
    if request.secure:
        flags |= auth.FLAG_SECURE
    a = request.server.auth
    try:
        cookie, _ = a.login_by_password(username, password, request.client_info, flags=flags)
    except auth.Throttled as e:
        raise HttpError(429, str(e), {"Retry-After": str(e.retry_after_sec)}) from None
    except auth.AuthError as e:
        raise HttpError(401, str(e)) from None
    return Response.empty(204, **{"Set-Cookie": session_cookie(cookie, flags,
                                                               a.limits.cookie_max_age)})


def handle_logout(request: Request, m: re.Match):
    request.params(())
    body = request.json(("csrf",))
    s = request.caller.session if request.caller else None
    if s is not None:
        check_csrf(request, body)
        _require_writable(request)
        request.server.auth.revoke(s.hash, auth.REVOKED_LOGOUT, request.client_info)
    return Response.empty(204, **{"Set-Cookie": clear_cookie(request.secure)})


# ---------------------------------------------------------------------------------------
# Cameras, streams, recordings

def _uuid_text(b: bytes) -> str:
    return str(uuidlib.UUID(bytes=bytes(b)))


def _stream_json(db: dbmod.Database, s: dbmod.Stream, *, days: bool, config: bool) -> dict:
    out = {
        "id": s.id,
        "retainBytes": s.retain_bytes,
        "retainDays": s.retain_days,
        "record": s.record,
        "minStartTime90k": s.range_90k[0] if s.range_90k else None,
        "maxEndTime90k": s.range_90k[1] if s.range_90k else None,
        "totalDuration90k": s.duration_90k,
        "totalSampleFileBytes": s.sample_file_bytes,
        "fsBytes": s.fs_bytes,
        # False for a while after start-up: the totals and days above count only the
        # newest recordings yet (db.py "Loading totals").
        "totalsComplete": s.totals_from_90k is None,
        # Recordings (and their frames, bytes) not yet committed: growing or waiting
        # for a flush. Debug counters, as Moonfire's.
        "numRecentRecordings": len(s.uncommitted),
        "numRecentFrames": sum(r.video_samples for r in s.uncommitted),
        "recentFrameBytes": sum(r.sample_file_bytes for r in s.uncommitted),
    }
    if days:
        out["days"] = db.days_with_bounds(s.id)
    if config:
        out["config"] = s.config
    return out


def _camera_json(db: dbmod.Database, c: dbmod.Camera, *, days: bool, config: bool) -> dict:
    out = {"uuid": _uuid_text(c.uuid), "id": c.id, "shortName": c.short_name,
           "description": c.config.get("description", "")}
    if config:
        # Camera passwords are write-only in every response (the configuration API
        # sets them): "(censored)" when one is stored, as Moonfire answers for a
        # user's password; Moonfire itself returns the camera's password here.
        out["config"] = dict(c.config)
        if c.config.get("password"):
            out["config"]["password"] = "(censored)"
    out["streams"] = {t: _stream_json(db, db.streams[sid], days=days, config=config)
                      for t, sid in sorted(c.streams.items())}
    return out


def handle_top(request: Request, m: re.Match):
    """`GET /api/`: the server, its cameras and streams, signals and the caller."""
    p = request.params(("days", "cameraConfigs"))
    days = _bool_param("days", p["days"]) if "days" in p else False
    configs = _bool_param("cameraConfigs", p["cameraConfigs"]) if "cameraConfigs" in p \
        else False
    if configs:
        authorize(request, "read_camera_configs")
    db = request.server.db
    caller = request.caller
    with db.locked("api: top"):
        cameras = [_camera_json(db, c, days=days, config=configs)
                   for c in sorted(db.cameras.values(), key=lambda c: c.id)]
    signals, signal_types = request.server.signals.api_json(days) \
        if request.server.signals is not None else ([], [])
    out = {
        "timeZoneName": recording.server_zone_name(),
        "serverVersion": VERSION,
        "cameras": cameras,
        "signals": signals,
        "signalTypes": signal_types,
        "permissions": caller.permissions.to_json(),
    }
    if caller.user is not None:
        u = caller.user
        out["user"] = {"id": u.id, "name": u.username,
                       "preferences": u.config.get("preferences", {})}
        if caller.session is not None:
            out["user"]["session"] = {"csrf": caller.session.csrf}
    return Response.json(out)


def handle_camera(request: Request, m: re.Match):
    """`GET /api/cameras/<uuid>/`: one camera with its days, without config."""
    request.params(())
    c = _camera_by_uuid(request, m["uuid"])
    db = request.server.db
    with db.locked("api: camera"):
        return Response.json(_camera_json(db, c, days=True, config=False))


def _aspect(e: dbmod.VideoSampleEntry) -> tuple[int, int]:
    w, h = e.width * e.pasp_h_spacing, e.height * e.pasp_v_spacing
    g = math.gcd(w, h) or 1
    return w // g, h // g


def handle_recordings(request: Request, m: re.Match):
    """`GET .../recordings?startTime90k&endTime90k&split90k`: aggregated rows (§5.2)."""
    sid = _camera_stream(request, m["uuid"], m["type"])
    p = request.params(("startTime90k", "endTime90k", "split90k"))
    start = _time_param("startTime90k", p["startTime90k"]) if "startTime90k" in p else 0
    end = _time_param("endTime90k", p["endTime90k"]) if "endTime90k" in p else 2 ** 62
    split = _int_param("split90k", p["split90k"]) if "split90k" in p else 2 ** 62
    if start > end:
        raise HttpError(400, f"startTime90k {start} is after endTime90k {end}")
    if split <= 0:
        raise HttpError(400, f"split90k must be positive, not {split}")
    db = request.server.db
    rows = db.list_aggregated_recordings(sid, start, end, split)
    out, entries = [], {}
    for r in rows:
        j = {"startId": r.start_id}
        if r.end_id != r.start_id:
            j["endId"] = r.end_id
        j["runStartId"] = r.run_start_id
        if r.first_uncommitted is not None:
            j["firstUncommitted"] = r.first_uncommitted
        if r.growing:
            j["growing"] = True
        j.update(openId=r.open_id, startTime90k=r.start_time_90k, endTime90k=r.end_time_90k,
                 videoSampleEntryId=r.video_sample_entry_id, videoSamples=r.video_samples,
                 sampleFileBytes=r.sample_file_bytes)
        if r.has_trailing_zero:
            j["hasTrailingZero"] = True
        if r.end_reason is not None:
            j["endReason"] = r.end_reason
        out.append(j)
        entries[r.video_sample_entry_id] = None
    with db.locked("api: sample entries"):
        for vid in entries:
            e = db.video_sample_entries[vid]
            aw, ah = _aspect(e)
            entries[vid] = {"width": e.width, "height": e.height,
                            "paspHSpacing": e.pasp_h_spacing, "paspVSpacing": e.pasp_v_spacing,
                            "aspectWidth": aw, "aspectHeight": ah}
    return Response.json({"recordings": out,
                          "videoSampleEntries": {str(k): v for k, v in entries.items()}})


# ---------------------------------------------------------------------------------------
# Signals

def _signals(request: Request):
    s = request.server.signals
    if s is None:
        raise HttpError(404, "this server has no signals")
    return s


def handle_signals(request: Request, m: re.Match):
    """`GET /api/signals` (viewVideo) and `POST /api/signals` (updateSignals)."""
    import signals as signalsmod
    if request.method == "POST":
        authorize(request, "update_signals")
        request.params(())
        body = request.json(("csrf", "signalIds", "states", "start", "end"))
        check_csrf(request, body)
        _require_writable(request)
        body.pop("csrf", None)
        try:
            now = _signals(request).update(body)
        except signalsmod.SignalsError as e:
            raise HttpError(400, str(e)) from None
        return Response.json({"time90k": now})
    authorize(request, "view_video")
    p = request.params(("startTime90k", "endTime90k"))
    start = _time_param("startTime90k", p["startTime90k"]) if "startTime90k" in p else 0
    end = _time_param("endTime90k", p["endTime90k"]) if "endTime90k" in p else 2 ** 62
    if start > end:
        raise HttpError(400, f"startTime90k {start} is after endTime90k {end}")
    return Response.json(_signals(request).list_changes(start, end))


# ---------------------------------------------------------------------------------------
# Users

PASSWORD_CENSORED = "(censored)"
_USER_KEYS = ("username", "disabled", "preferences", "password", "permissions")


def _user_json(u: dbmod.User) -> dict:
    return {"id": u.id, "username": u.username, "disabled": u.disabled,
            "preferences": u.config.get("preferences", {}),
            "password": PASSWORD_CENSORED if u.password_hash else None,
            "permissions": u.permissions.to_json()}


def _user_subset(obj, what: str) -> dict:
    """Validates a UserSubset object (§5.2): each key optional, with its type."""
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise HttpError(400, f"{what} must be a JSON object")
    unknown = sorted(set(obj) - set(_USER_KEYS))
    if unknown:
        raise HttpError(400, f"unknown key(s) {', '.join(map(repr, unknown))} in {what}; "
                             f"known: {', '.join(_USER_KEYS)}")
    types = {"username": (str,), "disabled": (bool,), "preferences": (dict,),
             "password": (str, type(None)), "permissions": (dict,)}
    for k, v in obj.items():
        if not isinstance(v, types[k]):
            raise HttpError(400, f"{what}.{k} has the wrong type ({type(v).__name__})")
    # A new username is checked by `_new_username`, where other users' names are known.
    if obj.get("password") == "":
        raise HttpError(400, f"{what}.password must not be empty (null clears it)")
    if "permissions" in obj:
        try:
            obj = dict(obj, permissions=auth.Permissions.from_json(obj["permissions"]))
        except ValueError as e:
            raise HttpError(400, f"{what}.permissions: {e}") from None
    return obj


def _new_username(db: dbmod.Database, name: str, what: str, user_id: int | None = None) -> str:
    """auth.check_username's verdict on a name to store (hold the database lock until
    it is stored): the name in NFC; 400 for a broken rule, 412 for a taken name."""
    try:
        return auth.check_username(name, db.users.values(), user_id=user_id, what=what)
    except auth.UsernameTaken as e:
        raise HttpError(412, str(e)) from None
    except ValueError as e:
        raise HttpError(400, str(e)) from None


def _user_id(m: re.Match) -> int:
    return int(m["id"])


def _get_user(request: Request, user_id: int) -> dbmod.User:
    db = request.server.db
    with db.locked("api: user"):
        u = db.users.get(user_id)
        if u is None:
            raise HttpError(404, f"no user with id {user_id}")
        return u


def _self_or_admin(request: Request, user_id: int) -> None:
    c = request.caller
    if c.permissions.admin_users or (c.user is not None and c.user.id == user_id):
        return
    if not c.authenticated:
        raise HttpError(401, "unauthenticated: log in first (POST /api/login)")
    raise HttpError(403, "permission denied: only the user itself or an administrator "
                         "(adminUsers) may do that")


def handle_users(request: Request, m: re.Match):
    """`GET /api/users/` (list) and `POST /api/users/` (create), adminUsers."""
    request.params(())
    db = request.server.db
    if request.method in ("GET", "HEAD"):
        with db.locked("api: users"):
            users = [{"id": u.id, "user": _user_json(u)}
                     for u in sorted(db.users.values(), key=lambda u: u.id)]
        return Response.json({"users": users})
    body = request.json(("csrf", "user"))
    check_csrf(request, body)
    _require_writable(request)
    sub = _user_subset(body.get("user"), "user")
    if "username" not in sub:
        raise HttpError(400, "user.username is required")
    password = sub.get("password")
    config = {}
    if sub.get("disabled"):
        config["disabled"] = True
    if "preferences" in sub:
        config["preferences"] = sub["preferences"]
    pw_hash = request.server.auth.hash_password(password) if password else None
    with db.locked("api: add user"):   # the name checked and stored in one step
        name = _new_username(db, sub["username"], "user.username")
        try:
            uid = db.add_user(name, password_hash=pw_hash,
                              permissions=sub.get("permissions"), config=config)
        except dbmod.DbError as e:
            raise HttpError(412 if "already exists" in str(e) else 400, str(e)) from None
    return Response.json({"id": uid})


def handle_user(request: Request, m: re.Match):
    """`GET|PATCH|DELETE /api/users/<id>`."""
    request.params(())
    uid = _user_id(m)
    db = request.server.db
    if request.method in ("GET", "HEAD"):
        _self_or_admin(request, uid)
        return Response.json(_user_json(_get_user(request, uid)))
    if request.method == "DELETE":
        authorize(request, "admin_users")
        body = request.json(("csrf",))
        check_csrf(request, body)
        _require_writable(request)
        _get_user(request, uid)
        db.delete_user(uid)
        request.server.auth.forget_user(uid)
        return Response.empty(204)
    # PATCH
    _self_or_admin(request, uid)
    body = request.json(("csrf", "update", "precondition"))
    check_csrf(request, body)
    _require_writable(request)
    update = _user_subset(body.get("update"), "update")
    pre = _user_subset(body.get("precondition"), "precondition")
    admin = request.caller.permissions.admin_users
    for k in ("username", "disabled", "permissions"):
        if k in update and not admin:
            raise HttpError(403, f"permission denied: changing {k} needs adminUsers")
    a = request.server.auth
    u = _get_user(request, uid)
    if "password" in update and not admin and "password" not in pre:
        raise HttpError(403, "permission denied: to change your password, give the current "
                             "one in precondition.password")
    # The slow parts first, without the database lock: checking the old password
    # (throttled and counted like a login) and hashing the new one.
    if "password" in pre:
        v = pre["password"]
        try:
            ok = (u.password_hash is None) if v is None else \
                a.check_password(uid, v, request.client_info)
        except auth.Throttled as e:
            raise HttpError(429, str(e), {"Retry-After": str(e.retry_after_sec)}) from None
        if not ok:
            raise HttpError(412, "precondition failed: password is not what the request "
                                 "expected")
    new_hash = ...
    if "password" in update:
        pw = update["password"]
        new_hash = a.hash_password(pw) if pw else None
    with db.locked("api: update user"):
        # Check and update in one step: a concurrent PATCH can't slip in between.
        cur_user = db.users.get(uid)
        if cur_user is None:
            raise HttpError(404, f"no user with id {uid}")
        if "password" in pre and cur_user.password_id != u.password_id:
            raise HttpError(412, "precondition failed: the password changed meanwhile")
        cur = _user_json(cur_user)
        for k, v in pre.items():
            if k == "password":
                continue
            if (v != cur_user.permissions) if k == "permissions" else (cur[k] != v):
                raise HttpError(412, f"precondition failed: {k} is not what the request "
                                     f"expected")
        kwargs = {}
        if "username" in update and update["username"] != cur_user.username:
            kwargs["username"] = _new_username(db, update["username"], "update.username", uid)
        if "permissions" in update:
            kwargs["permissions"] = update["permissions"]
        if "disabled" in update or "preferences" in update:
            config = dict(cur_user.config)
            if "disabled" in update:
                config["disabled"] = update["disabled"]
                if not config["disabled"]:
                    del config["disabled"]
            if "preferences" in update:
                config["preferences"] = update["preferences"]
            kwargs["config"] = config
        if new_hash is not ...:
            kwargs["password_hash"] = new_hash
        try:
            # Ends sessions as the change requires (a password change: the others of
            # the user; disabling: all); auth.Auth.update_user.
            a.update_user(uid, client=request.client_info, current=request.caller.session,
                          by=request.caller.describe(), **kwargs)
        except dbmod.DbError as e:
            raise HttpError(412 if "already exists" in str(e) else 400, str(e)) from None
    return Response.empty(204)


# ---------------------------------------------------------------------------------------
# A user's sessions

def _time_90k(sec: int | None) -> int | None:
    return None if sec is None else sec * recording.TIME_UNITS_PER_SEC


def _session_json(a: auth.Auth, s: auth.Session, user: dbmod.User,
                  current: auth.Session | None, now_sec: int) -> dict:
    """One session as `GET /api/users/<id>/sessions` lists it. Never its id or the hash
    of it: `id` is the first 16 hex digits of the hash (as `nvr.py sessions list` shows
    it), which can't be turned into a cookie."""
    state = a.session_state(s, now_sec)
    out = {"id": s.id_text, "current": current is not None and current.hash == s.hash,
           "state": state.split(" ", 1)[0],
           "description": s.description, "domain": s.domain,
           # What it may do today (a demoted user's sessions lost the permission).
           "permissions": auth.effective_permissions(s, user).to_json(),
           "creationTime90k": _time_90k(s.creation_time_sec),
           "creationUserAgent": s.creation_user_agent,
           "creationPeerAddr": auth.unpack_addr(s.creation_peer_addr),
           "lastUseTime90k": _time_90k(s.last_use_time_sec),
           "lastUseUserAgent": s.last_use_user_agent,
           "lastUsePeerAddr": auth.unpack_addr(s.last_use_peer_addr),
           "useCount": s.use_count}
    if s.revocation_reason is not None:
        out.update(revocationTime90k=_time_90k(s.revocation_time_sec),
                   revocationReason=s.revocation_reason,
                   revocationReasonText=auth.REVOCATION_REASONS.get(s.revocation_reason),
                   revocationDetail=s.revocation_reason_detail,
                   revocationUserAgent=s.revocation_user_agent,
                   revocationPeerAddr=auth.unpack_addr(s.revocation_peer_addr))
    elif out["state"] == "expired":
        out["expiry"] = state[len("expired ("):-1]
    else:
        out["expiresTime90k"] = _time_90k(a.expires_sec(s))
    return out


def handle_user_sessions(request: Request, m: re.Match):
    """`GET /api/users/<id>/sessions[?ended=true]`: the user itself or adminUsers."""
    uid = _user_id(m)
    _self_or_admin(request, uid)
    p = request.params(("ended",))
    ended = _bool_param("ended", p["ended"]) if "ended" in p else False
    user = _get_user(request, uid)
    a = request.server.auth
    now = request.server.db.clocks.realtime() // 1_000_000_000   # as auth.py's clock
    out = [_session_json(a, s, user, request.caller.session, now)
           for s in a.list_sessions(uid)]
    return Response.json({"sessions": [j for j in out if ended or j["state"] == "valid"]})


def handle_revoke_session(request: Request, m: re.Match):
    """`POST /api/users/<id>/sessions/<session id>/revoke`: the user itself (reason 4)
    or adminUsers (reason 3 for another's session)."""
    uid = _user_id(m)
    _self_or_admin(request, uid)
    request.params(())
    body = request.json(("csrf",))
    check_csrf(request, body)
    _require_writable(request)
    _get_user(request, uid)
    a = request.server.auth
    found = [s for s in a.list_sessions(uid) if s.id_text == m["sid"]]
    if not found:
        raise HttpError(404, f"user {uid} has no session {m['sid']}; GET "
                             f"/api/users/{uid}/sessions lists them")
    c = request.caller
    reason = auth.REVOKED_BY_USER if c.user is not None and c.user.id == uid \
        else auth.REVOKED_BY_ADMIN
    for s in found:   # one, unless two hashes share 64 bits
        a.revoke(s.hash, reason, request.client_info, f"by {c.describe()}")
    return Response.empty(204)


# ---------------------------------------------------------------------------------------
# /api/request

def handle_request(request: Request, m: re.Match):
    """Plain-text debug output for checking a proxy set-up (§5.2)."""
    request.params(())
    c = request.caller
    lines = [
        f"time: {recording.format_time(recording.to_90k_from_ns(request.server.clocks.realtime()))}",
        f"host: {request.headers.get('Host')}",
        f"client addr: {request.client}",
        f"user agent: {request.headers.get('User-Agent')}",
        f"secure: {request.secure}",
        f"caller: {c.describe() if c else 'none'}",
        f"permissions: {json.dumps(c.permissions.to_json()) if c else '{}'}",
    ]
    return Response.text("\n".join(lines) + "\n")


def handle_metrics(request: Request, m: re.Match):
    """Prometheus' text format (metrics.py; docs/api.md lists the series). viewVideo:
    whoever may watch the cameras may see how they are recorded, and the default
    loopback listener (unauthenticated viewVideo) lets a local Prometheus scrape it."""
    request.params(())
    text = request.server.db.metrics.render(request.server.db, request.server)
    return Response(200, text.encode(), metrics.CONTENT_TYPE,
                    {"Cache-Control": "no-store"})


def handle_storage(request: Request, m: re.Match):
    """`GET /api/storage` (viewVideo): per stream and per dir, what is kept, under which
    limits, for how long, and what retention last deleted (storage.py; docs/api.md)."""
    request.params(())
    return Response.json(storage.report(request.server.db))
def handle_system(request: Request, m: re.Match):
    """How nvr is doing, for the System page (system.py; docs/api.md). viewVideo, as
    /api/metrics: the same facts, for a person. It names no credentials (the recorder's
    errors never hold them) and no install paths."""
    request.params(())
    return Response.json(system.report(request.server, VERSION),
                         **{"Cache-Control": "no-store"})


# ---------------------------------------------------------------------------------------
# The route table

_UUID = r"[0-9A-Fa-f-]{32,36}"
_TYPE = r"(?P<type>main|sub|ext)"
GET_HEAD = ("GET", "HEAD")

ROUTES: list[Route] = [
    Route(re.compile(r"/api/login"), ("POST",), None, handle_login),
    Route(re.compile(r"/api/logout"), ("POST",), None, handle_logout),
    Route(re.compile(r"/api/request"), GET_HEAD, None, handle_request),
    Route(re.compile(r"/api/"), GET_HEAD, CALLER, handle_top),
    Route(re.compile(rf"/api/cameras/(?P<uuid>{_UUID})/"), GET_HEAD, CALLER, handle_camera),
    Route(re.compile(rf"/api/cameras/(?P<uuid>{_UUID})/{_TYPE}/recordings"), GET_HEAD,
          "view_video", handle_recordings),
    Route(re.compile(rf"/api/cameras/(?P<uuid>{_UUID})/{_TYPE}/"
                     r"view\.(?P<kind>mp4|m4s)(?P<txt>\.txt)?"),
          GET_HEAD, "view_video", handle_view),
    # viewVideo is checked after the upgrade, so that even "log in first" arrives
    # inside the socket, where the page's script can read it (§5.3).
    Route(re.compile(rf"/api/cameras/(?P<uuid>{_UUID})/{_TYPE}/live\.m4s"), ("GET",),
          None, handle_live),
    Route(re.compile(rf"/api/cameras/(?P<uuid>{_UUID})/{_TYPE}/still\.jpg"), GET_HEAD,
          "view_video", handle_still),
    Route(re.compile(rf"/api/cameras/(?P<uuid>{_UUID})/{_TYPE}/latest\.jpg"), GET_HEAD,
          "view_video", handle_latest),
    Route(re.compile(r"/api/init/(?P<id>[0-9]{1,18})\.mp4(?P<txt>\.txt)?"),
          GET_HEAD, "view_video", handle_init),
    # GET needs viewVideo, POST updateSignals: checked in the handler.
    Route(re.compile(r"/api/signals"), ("GET", "HEAD", "POST"), CALLER, handle_signals),
    Route(re.compile(r"/api/users/"), ("GET", "HEAD", "POST"), "admin_users", handle_users),
    # GET and PATCH: the user itself or an admin; DELETE: admin. Checked in the handler.
    Route(re.compile(r"/api/users/(?P<id>[0-9]{1,18})"), ("GET", "HEAD", "PATCH", "DELETE"),
          CALLER, handle_user),
    # The user itself or an admin: checked in the handlers.
    Route(re.compile(r"/api/users/(?P<id>[0-9]{1,18})/sessions"), GET_HEAD, CALLER,
          handle_user_sessions),
    Route(re.compile(r"/api/users/(?P<id>[0-9]{1,18})/sessions/(?P<sid>[0-9a-f]{16})/revoke"),
          ("POST",), CALLER, handle_revoke_session),
    Route(re.compile(r"/api/metrics"), GET_HEAD, "view_video", handle_metrics),
    Route(re.compile(r"/api/storage"), GET_HEAD, "view_video", handle_storage),
    Route(re.compile(r"/api/system"), GET_HEAD, "view_video", handle_system),
]


# Protected footage (issue #17): handlers in protectapi.py, which imports this module, so
# it is imported when first called rather than here.
def handle_protections(request: Request, m: re.Match):
    import protectapi
    return protectapi.handle_protections(request, m)


def handle_protection(request: Request, m: re.Match):
    import protectapi
    return protectapi.handle_protection(request, m)


# GET needs viewVideo, POST protectRecordings: checked in the handler.
ROUTES += [
    Route(re.compile(r"/api/protections"), ("GET", "HEAD", "POST"), CALLER,
          handle_protections),
    Route(re.compile(r"/api/protections/(?P<id>[0-9]{1,18})"), ("PATCH", "DELETE"),
          "protect_recordings", handle_protection),
]


def route(path: str, routes: list[Route] | None = None) -> tuple[Route, re.Match] | None:
    """The route of `path` in `routes` (web.py passes configapi.routes(): these and the
    configuration API's; default ROUTES)."""
    for r in (ROUTES if routes is None else routes):
        m = r.pattern.fullmatch(path)
        if m is not None:
            return r, m
    return None


def route_class(path: str, routes: list[Route] | None = None) -> str:
    """The route `path` takes, named after its handler (`recordings`, `view`, `live`...),
    `static` outside /api/, `unknown` for no route: a small fixed set, for metrics."""
    if not path.startswith("/api/"):
        return "static"
    found = route(path, routes)
    return found[0].handler.__name__.removeprefix("handle_") if found else "unknown"


def call(request: Request, routes: list[Route] | None = None):
    """Routes (in `routes`, default ROUTES) and authorizes `request` and runs its
    handler (see `Route`)."""
    found = route(request.path, routes)
    if found is None:
        raise HttpError(404, f"no such path: {request.path}")
    r, m = found
    if request.method not in r.methods:
        raise HttpError(405, f"method {request.method} is not allowed here; use "
                             f"{' or '.join(r.methods)}", {"Allow": ", ".join(r.methods)})
    authorize(request, r.permission)
    try:
        return r.handler(request, m)
    except mp4.Mp4Error as e:
        raise HttpError(400, str(e)) from None
    except mp4.NotFound as e:
        raise HttpError(404, str(e)) from None
