"""The command line while nvr runs: `nvr.py config ...`, `nvr.py sessions ...` and
`nvr.py protect ...` through the running server's control socket.

`nvr.py run` holds the database directory's lock for as long as it runs (db.py), so a
command that would open the database finds it locked (`db.DbLocked`). For the commands
that have an API equivalent, nvr.py's `main` then calls `run(args, cli)` here, which
sends the matching HTTP request to `<dbDir>/control.sock` (web.py's control socket:
mode 0600, every permission for a peer with nvr's uid or root's, by SO_PEERCRED) and
prints the same lines the command prints when it edits the database itself. The server
applies the change as the API would for an administrator (config.py's rules, the
recorder reconciled; auth.py's sessions), so it is live at once and recording goes on.

What maps to what (docs/api.md has each endpoint):

  config camera|stream|dir list    GET /api/config/
  config camera add|edit|delete    POST /api/config/cameras, PATCH|DELETE .../<id>
  config stream add|edit|delete    POST|PATCH|DELETE /api/config/cameras/<id>/streams/<type>
  config stream test               POST /api/config/test-stream {cameraId, streamType}
  config dir add|edit|delete       POST /api/config/dirs, PATCH|DELETE .../<id>
  config user list|add             GET|POST /api/users/
  config user edit|delete          PATCH|DELETE /api/users/<id>
  sessions list                    GET /api/users/, GET /api/users/<id>/sessions?ended=true
  sessions revoke                  POST /api/users/<id>/sessions/<session id>/revoke
  protect list [--camera C]        GET /api/protections[?cameraUuid=]
  protect add                      POST /api/protections, then GET ...?cameraUuid= (its bytes)
  protect edit|remove              PATCH|DELETE /api/protections/<id> (remove: GET its label)
  login                            none: says to log in with POST /api/login or the web UI

Names given on the command line (a camera's, a user's, a dir's path) are looked up in
a GET first, then the change is sent by id; between the two another change may come (a
rename): the request then fails with the server's 404, and nothing is changed. Options
are parsed by nvr.py's helpers (`cli`: the nvr module, passed in to keep imports one
way: sizes, floors, permissions, passwords, protection times and lines); passwords
(--password-stdin) are read here and sent in the JSON body, over a socket only nvr's
user and root can open. The checks are the server's (config.py, auth.py, db.py's for
protections): a refusal comes back as its one-line message, its API names turned into
the command line's (`cli_message`: `flushIfSec` is `--flush-if-sec`, `startTime90k` is
`--start`, "set deleteRecordings: true" is "add --yes"), printed as `error: ...` with
exit status 1. A read-only run refuses every change (its 503), revocations too.

Transport: http.client over an AF_UNIX socket (`_UnixConnection`), one connection per
command, `User-Agent: nvr.py <command>` (recorded in session audits, e.g. the revoking
client of `sessions revoke`). A socket that isn't there or doesn't answer (an older nvr,
a path too long for a Unix socket, a socket nvr couldn't make: its log says why) is a
one-line error saying what to do instead.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import socket
import sys
import urllib.parse

import recording
import retention
import web

# A command waits at most this long for an answer; the stream test is the slowest
# (streamtest.LIMIT_SEC, 10 s, plus the server's slack).
TIMEOUT_SEC = 60.0

UI_WAY = "the web UI or the HTTP API (docs/api.md)"

# /api/protections' body keys as `nvr.py protect` names them (cli_message).
PROTECT_OPTIONS = {"startTime90k": "--start", "endTime90k": "--end"}


class ControlError(Exception):
    """A one-line reason the command failed through the control socket."""


class ApiError(ControlError):
    """The server refused the request: `status` and its one-line `message`."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        s.settimeout(self.timeout)
        try:
            s.connect(self.path)
        except BaseException:
            s.close()
            raise
        self.sock = s


class Client:
    """Requests to the nvr running on `db_dir`, through its control socket."""

    def __init__(self, db_dir: str, user_agent: str, locked: str = ""):
        self.db_dir = db_dir
        self.path = web.control_socket_path(db_dir)
        self.user_agent = user_agent
        self.locked = locked or f"the database in {db_dir} is locked by a running nvr"
        self._conn: _UnixConnection | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _unreachable(self, why: str) -> ControlError:
        return ControlError(
            f"{self.locked.rstrip('.')}, and its control socket {self.path} {why}; stop nvr "
            f"to change the database this way, or use {UI_WAY}")

    def call(self, method: str, path: str, body: dict | None = None):
        """The response's JSON (None for an empty one); ApiError for a 4xx/5xx."""
        if len(os.fsencode(self.path)) > web.MAX_UNIX_PATH_BYTES:
            raise self._unreachable(f"is over the {web.MAX_UNIX_PATH_BYTES} bytes a Unix "
                                    f"socket path may have")
        data = None if body is None else json.dumps(body).encode()
        headers = {"User-Agent": self.user_agent, "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        try:
            if self._conn is None:
                self._conn = _UnixConnection(self.path, TIMEOUT_SEC)
            self._conn.request(method, path, body=data, headers=headers)
            r = self._conn.getresponse()
            raw = r.read()
        except (FileNotFoundError, ConnectionRefusedError) as e:
            self.close()
            raise self._unreachable(f"doesn't answer ({e.strerror}: an nvr without one, or "
                                    f"one that couldn't make it; its log says why)") from None
        except PermissionError:
            self.close()
            raise ControlError(
                f"permission denied on {self.path}: nvr's control socket answers only the "
                f"user nvr runs as and root; run this command as that user (e.g. `sudo -u "
                f"nvr nvr.py ...`), or use {UI_WAY}") from None
        except (OSError, http.client.HTTPException) as e:
            self.close()
            raise ControlError(f"no answer from nvr through {self.path}: {e}") from None
        if r.will_close:
            self.close()
        text = raw.decode("utf-8", "replace")
        if r.status >= 400:
            message = text.strip().splitlines()[0] if text.strip() else r.reason
            if r.status == 404 and message.startswith("no such path"):
                message = (f"the running nvr has no {method} {path.split('?')[0]} (a "
                           f"version without that API); stop it to make this change, or "
                           f"use {UI_WAY}")
            raise ApiError(r.status, message)
        if not raw:
            return None
        if r.getheader("Content-Type", "").startswith("application/json"):
            return json.loads(text)
        return text


def run(args, cli, locked: str = "") -> int:
    """Runs the command in `args` through the control socket; the exit status."""
    what = getattr(args, "what", None)
    command = " ".join(x for x in (args.command, what, getattr(args, "action", None)) if x)
    if args.command == "login":
        raise ControlError(
            f"{locked.rstrip('.') or 'nvr is running'}; `nvr.py login` needs nvr stopped "
            f"(it has no API equivalent: a session comes from logging in, POST /api/login "
            f"with a password, or the web UI)")
    c = Client(args.db_dir, f"nvr.py {command}", locked)
    try:
        if args.command == "sessions":
            return _sessions(c, args)
        if args.command == "protect":
            return _protect(c, args, cli)
        fn = {"camera": _camera, "stream": _stream, "dir": _dir, "user": _user}[what]
        if what == "stream" and args.action == "test":
            return _stream_test(c, args, cli)
        return fn(c, args, cli)
    except ApiError as e:
        message = cli_message(e.message)
        if e.status == 503 and "--read-only" in message:
            # A read-only run can't write the database, not even a revocation; with it
            # stopped, this command can.
            message += "; stop it, and this command changes the database itself"
        raise ControlError(message) from None
    finally:
        c.close()


def cli_message(message: str) -> str:
    """config.py's message for the API (config.API names) as it says it to the command
    line (config.CLI): `retainBytes` is `--retain-bytes`, "set deleteRecordings: true"
    is "add --yes"; protectapi.py's `startTime90k` is `--start`. Only camelCase keys are
    renamed: url, path or password are also plain words in a message."""
    import config
    for attr in ("confirm", "retention_hint", "dir_hint", "credentials_hint"):
        message = message.replace(getattr(config.API, attr), getattr(config.CLI, attr))
    for key, option in (*config.CLI.fields.items(), *PROTECT_OPTIONS.items()):
        if key != key.lower():
            message = re.sub(rf"\b{key}\b", option, message)
    return message


# ---------------------------------------------------------------------------------------
# Looking things up by the names the command line takes.

def _config(c: Client) -> dict:
    return c.call("GET", "/api/config/")


def _camera_named(conf: dict, name: str) -> dict:
    for cam in conf["cameras"]:
        if cam["shortName"] == name:
            return cam
    raise ControlError(f"no camera named {name!r}; `nvr.py config camera list` shows them")


def _dir_named(conf: dict, spec: str) -> dict:
    for d in conf["dirs"]:
        if str(d["id"]) == spec or d["path"] == os.path.abspath(spec):
            return d
    raise ControlError(f"no sample file dir {spec!r}; `nvr.py config dir list` shows them")


def _users(c: Client) -> list[dict]:
    return [dict(u["user"], id=u["id"]) for u in c.call("GET", "/api/users/")["users"]]


def _user_named(c: Client, name: str) -> dict:
    for u in _users(c):
        if u["username"] == name:
            return u
    raise ControlError(f"no user named {name!r}; `nvr.py config user list` shows them")


# ---------------------------------------------------------------------------------------
# config camera / stream / dir

def _camera(c: Client, args, cli) -> int:
    if args.action == "list":
        for cam in sorted(_config(c)["cameras"], key=lambda x: x["id"]):
            streams = ",".join(sorted(cam["streams"]))
            print(f"{cam['id']}\t{cam['shortName']}\tuser={cam.get('username') or '-'}"
                  f"\tstreams={streams or '-'}\t{cam.get('description') or ''}"
                  f"\tuuid={cam['uuid']}")
        return 0
    if args.action == "add":
        body = {"shortName": args.name}
        body.update(cli._camera_fields(args))
        r = c.call("POST", "/api/config/cameras", body)
        print(f"added camera {r['id']}: {args.name}")
        return 0
    cam = _camera_named(_config(c), args.name)
    if args.action == "edit":
        body = cli._camera_fields(args)
        if args.rename is not None:
            body["shortName"] = args.rename
        r = c.call("PATCH", f"/api/config/cameras/{cam['id']}", body)
        print(f"updated camera {cam['id']}: {(r or {}).get('shortName', cam['shortName'])}")
        return 0
    # delete
    r = c.call("DELETE", f"/api/config/cameras/{cam['id']}", {"deleteRecordings": args.yes})
    print(f"deleted camera {cam['shortName']} and {r['deletedRecordings']} recording(s)")
    return 0


def _stream_in(args, cli) -> dict:
    """STREAM_IN (docs/api.md) from the options given (nvr.py's _stream_changes but
    --dir, which names a dir the server knows)."""
    body = {}
    for attr, key in (("url", "url"), ("record", "record"),
                      ("rtsp_transport", "rtspTransport"), ("retain_days", "retainDays"),
                      ("flush_if_sec", "flushIfSec")):
        v = getattr(args, attr)
        if v is not None:
            body[key] = v
    if args.retain_bytes is not None:
        body["retainBytes"] = cli.parse_size(args.retain_bytes)
    return body


def _stream(c: Client, args, cli) -> int:
    conf = _config(c)
    if args.action == "list":
        dirs = {d["id"]: d["path"] for d in conf["dirs"]}
        rows = [(s, cam["shortName"], typ) for cam in conf["cameras"]
                for typ, s in cam["streams"].items()]
        for s, name, typ in sorted(rows, key=lambda r: r[0]["id"]):
            days = s.get("retainDays")
            print(f"{s['id']}\t{name}/{typ}\trecord={'yes' if s['record'] else 'no'}"
                  f"\turl={s.get('url') or '-'}"
                  f"\ttransport={s.get('rtspTransport') or 'default'}"
                  f"\tdir={dirs.get(s.get('sampleFileDirId'), '-')}"
                  f"\tretain={cli.format_size(s['retainBytes'])}"
                  f"\tretain_days={'-' if not days else f'{days:g}'}"
                  f"\tused={cli.format_size(s['fsBytes'])}\tflush_if_sec={s['flushIfSec']}")
        return 0
    cam = _camera_named(conf, args.camera)
    url = f"/api/config/cameras/{cam['id']}/streams/{args.type}"
    name = f"{cam['shortName']}/{args.type}"
    if args.action == "delete":
        if args.type not in cam["streams"]:
            raise ControlError(f"camera {cam['shortName']} has no {args.type} stream")
        r = c.call("DELETE", url, {"deleteRecordings": args.yes})
        print(f"deleted stream {name} and {r['deletedRecordings']} recording(s)")
        return 0
    body = _stream_in(args, cli)
    if args.dir is not None:
        body["sampleFileDirId"] = None if args.dir == "none" else _dir_named(conf, args.dir)["id"]
    if args.action == "add":
        if "url" not in body:
            raise cli.UsageError("--url is required")
        r = c.call("POST", url, body)
        print(f"added stream {r['id']}: {name}")
        return 0
    # edit
    if args.type not in cam["streams"]:
        raise ControlError(f"camera {cam['shortName']} has no {args.type} stream")
    if args.yes:
        body["deleteRecordings"] = True
    r = c.call("PATCH", url, body)
    print(f"updated stream {cam['streams'][args.type]['id']}: {name}")
    if r.get("deletedRecordings"):
        print(f"deleted {r['deletedRecordings']} recording(s) "
              f"({cli.format_size(r.get('deletedBytes', 0))}) to fit the new limit")
    return 0


def _stream_test(c: Client, args, cli) -> int:
    """`config stream test`: the server tests its stored stream; the same report."""
    import streamtest
    cam = _camera_named(_config(c), args.camera)
    if args.type not in cam["streams"]:
        raise ControlError(f"camera {cam['shortName']} has no {args.type} stream")
    if not args.json and sys.stderr.isatty():
        print("testing (through the running nvr)...", file=sys.stderr, flush=True)
    j = c.call("POST", "/api/config/test-stream",
               {"cameraId": cam["id"], "streamType": args.type})
    jpeg = j.pop("snapshotJpeg", None)
    if not j.get("ok"):
        if args.json:
            print(json.dumps(j, indent=2))
        else:
            print(f"error: {j.get('message')}", file=sys.stderr)
            if j.get("detail"):
                print(f"detail: {j['detail']}", file=sys.stderr)
        return 1
    if args.snapshot:
        if jpeg is None:
            raise ControlError("the running nvr sent no snapshot")
        with open(args.snapshot, "wb") as f:
            f.write(base64.b64decode(jpeg))
    if args.json:
        j["snapshotFile"] = args.snapshot
        print(json.dumps(j, indent=2))
        return 0
    r = result_from_json(j, streamtest)
    print("\n".join(r.lines()))
    if args.snapshot:
        print(f"snapshot: {args.snapshot} ({r.display_width}x{r.display_height} JPEG)")
    return 0


def result_from_json(j: dict, streamtest):
    """A streamtest.Result from its `to_json()` (for its `lines()`)."""
    return streamtest.Result(
        url=j["url"], transport=j["transport"], codec=j["codec"],
        rfc6381_codec=j["rfc6381Codec"], profile=j["profile"], level=j["level"],
        width=j["width"], height=j["height"],
        pixel_aspect_ratio=tuple(j["pixelAspectRatio"]),
        display_width=j["displayWidth"], display_height=j["displayHeight"],
        frame_rate=j["frameRate"], sps_frame_rate=j["spsFrameRate"],
        bitrate_bps=j["bitrateBps"], measured_sec=j["measuredSec"],
        gop_frames=j["gopFrames"], gop_sec=j["gopSec"], gop_min_sec=j["gopMinSec"],
        browser=j["browser"], browser_note=j["browserNote"],
        elapsed_sec=j["elapsedSec"], limit_sec=j["limitSec"], warnings=j["warnings"])


def _floor_body(args, cli) -> dict:
    floor = cli.parse_floor(args.free_space_floor)
    return floor or {"freeSpaceFloorBytes": None, "freeSpaceFloorPercent": None}


def _dir(c: Client, args, cli) -> int:
    if args.action == "add":
        path = os.path.abspath(args.path)   # the server's working directory isn't ours
        body = {"path": path}
        if args.free_space_floor is not None:
            body.update(cli.parse_floor(args.free_space_floor))
        r = c.call("POST", "/api/config/dirs", body)
        print(f"added sample file dir {r['id']}: {path}")
        return 0
    conf = _config(c)
    if args.action == "list":
        streams = {s["id"]: s for cam in conf["cameras"] for s in cam["streams"].values()}
        for d in sorted(conf["dirs"], key=lambda d: d["id"]):
            mine = [streams[i] for i in d["streamIds"] if i in streams]
            print(f"{d['id']}\t{d['path']}\tstreams={len(mine)}"
                  f"\tused={cli.format_size(sum(s['fsBytes'] for s in mine))}"
                  f"\tlimits={cli.format_size(sum(s['retainBytes'] for s in mine))}"
                  f"\tfree_space_floor={retention.describe_floor(d['config'])}")
        return 0
    d = _dir_named(conf, args.path)
    if args.action == "edit":
        body = {}
        if args.free_space_floor is not None:
            body.update(_floor_body(args, cli))
        if args.move_to is not None:
            body["path"] = os.path.abspath(args.move_to)
        r = c.call("PATCH", f"/api/config/dirs/{d['id']}", body) if body else d
        print(f"updated sample file dir {d['id']}: {r['path']} (free space floor "
              f"{retention.describe_floor(r['config'])})")
        return 0
    # delete
    c.call("DELETE", f"/api/config/dirs/{d['id']}", {})
    print(f"deleted sample file dir {d['id']}: {d['path']} (its files were left in place)")
    return 0


# ---------------------------------------------------------------------------------------
# config user, sessions

def _user(c: Client, args, cli) -> int:
    if args.action == "list":
        for u in sorted(_users(c), key=lambda u: u["id"]):
            perms = ",".join(k for k, v in u["permissions"].items() if v) or "-"
            state = "disabled" if u["disabled"] else "enabled"
            pw = "password" if u["password"] else "no-password"
            print(f"{u['id']}\t{u['username']}\t{state}\t{pw}\tpermissions={perms}")
        return 0
    if args.action == "add":
        password = cli.read_password(args, "; leave it out to add a user without a password")
        perms = cli.parse_permissions(args.permissions) if args.permissions else \
            cli.auth.Permissions(view_video=True)
        sub = {"username": args.name, "permissions": perms.to_json()}
        if password:
            sub["password"] = password
        r = c.call("POST", "/api/users/", {"user": sub})
        u = c.call("GET", f"/api/users/{r['id']}")   # the name as stored (NFC)
        print(f"added user {r['id']}: {u['username']}")
        return 0
    u = _user_named(c, args.name)
    if args.action == "delete":
        c.call("DELETE", f"/api/users/{u['id']}", {})
        print(f"deleted user {u['username']} and their sessions")
        return 0
    # edit
    update = {}
    password = cli.read_password(args, f"; to remove the password, use `nvr.py config "
                                       f"user edit {u['username']} --clear-password`")
    if password is not None and args.clear_password:
        raise cli.UsageError("give either a new password or --clear-password, not both")
    if password is not None:
        update["password"] = password
    elif args.clear_password:
        update["password"] = None
    if args.permissions is not None:
        update["permissions"] = cli.parse_permissions(args.permissions).to_json()
    if args.disable is not None:
        update["disabled"] = args.disable
    if args.rename is not None and args.rename != u["username"]:
        update["username"] = args.rename
    before = _valid_session_ids(c, u["id"])
    c.call("PATCH", f"/api/users/{u['id']}", {"update": update})
    # The API doesn't say how many sessions the change ended (a password set or
    # cleared, --disable): count them.
    n = len(before - _valid_session_ids(c, u["id"]))
    name = c.call("GET", f"/api/users/{u['id']}")["username"]
    print(f"updated user {u['id']}: {name}" + (f"; revoked {n} session(s)" if n else ""))
    return 0


def _valid_session_ids(c: Client, user_id: int) -> set[str]:
    return {s["id"] for s in c.call("GET", f"/api/users/{user_id}/sessions")["sessions"]}


def _format_90k(t: int | None) -> str:
    if t is None:
        return "-"
    return recording.format_time(t)[:19]   # as nvr.py's _format_sec


def _state(s: dict) -> str:
    """auth.Auth.session_state's text from a session's JSON."""
    if s["state"] == "revoked":
        reason = s.get("revocationReasonText") or f"reason {s.get('revocationReason')}"
        return f"revoked ({reason})"
    if s["state"] == "expired":
        return f"expired ({s.get('expiry')})"
    return s["state"]


def _sessions(c: Client, args) -> int:
    users = _users(c)
    if args.user:
        users = [u for u in users if u["username"] == args.user]
        if not users:
            raise ControlError(f"no user named {args.user!r}; `nvr.py config user list` "
                               f"shows them")
    found = []
    for u in users:
        q = urllib.parse.urlencode({"ended": "true"})
        for s in c.call("GET", f"/api/users/{u['id']}/sessions?{q}")["sessions"]:
            found.append((s["creationTime90k"], s["id"], u, s))
    found.sort(key=lambda t: t[:2])   # oldest first, as auth.Auth.list_sessions
    if args.action == "list":
        print("ID\tUSER\tCREATED\tLAST USE\tPEER\tUSES\tSTATE\tUSER AGENT")
        for _, _, u, s in found:
            peer = s.get("lastUsePeerAddr") or s.get("creationPeerAddr") or "-"
            ua = s.get("lastUseUserAgent") or s.get("creationUserAgent") or "-"
            print(f"{s['id']}\t{u['username']}\t{_format_90k(s['creationTime90k'])}\t"
                  f"{_format_90k(s.get('lastUseTime90k'))}\t{peer}\t{s['useCount']}\t"
                  f"{_state(s)}\t{ua}")
        return 0
    # revoke
    if bool(args.id) == bool(args.user):
        raise ControlError("give a session ID (from `nvr.py sessions list`) or --user, "
                           "not both")
    if args.id:
        ident = args.id.lower()
        # The API's session ids are the first 16 hex digits of the hash.
        match = [t for t in found
                 if (t[1].startswith(ident) if len(ident) <= 16 else ident.startswith(t[1]))]
        if len(ident) < 8 or len(match) != 1:
            raise ControlError(f"no single session with id {args.id!r}; `nvr.py sessions "
                               f"list` shows the ids")
        targets = [t for t in match if t[3]["state"] != "revoked"]
    else:
        targets = [t for t in found if t[3]["state"] != "revoked"]
    for _, sid, u, _ in targets:
        c.call("POST", f"/api/users/{u['id']}/sessions/{sid}/revoke", {})
    print(f"revoked {len(targets)} session(s)")
    return 0


# ---------------------------------------------------------------------------------------
# protect

def _protect(c: Client, args, cli) -> int:
    """`protect add|list|edit|remove` (nvr.py's cmd_protect) through /api/protections:
    the same parsing (nvr.py's helpers, times in this process's zone, sent as 90 kHz
    units) and the same lines (nvr.py's format_protection), in the same order of
    checks. `createdBy` is the server's "cli" for this privileged Unix peer."""
    conf = _config(c)
    names = {cam["uuid"]: cam["shortName"] for cam in conf["cameras"]}

    def line(p: dict) -> str:
        return cli.format_protection(
            p["id"], names.get(p["cameraUuid"], p["cameraUuid"]), p["streamType"],
            p["startTime90k"], p["endTime90k"], p["label"], p["createdBy"],
            p["protectedBytes"])

    if args.action == "add":
        name, _, type_ = args.camera.partition("/")
        cam = _camera_named(conf, name)
        if type_:
            cli.check_stream_type(cam["shortName"], type_, cam["streams"])
        body = {"cameraUuid": cam["uuid"], "streamType": type_ or None,
                "startTime90k": cli._parse_protect_time("start", args.start),
                "endTime90k": cli._parse_protect_time("end", args.end),
                "label": args.label}
        id_ = c.call("POST", "/api/protections", body)["id"]
        print(f"added protection {line(_protection(c, id_, cam['uuid']))}")
    elif args.action == "list":
        q = ""
        if args.camera:
            q = "?" + urllib.parse.urlencode(
                {"cameraUuid": _camera_named(conf, args.camera)["uuid"]})
        for p in c.call("GET", f"/api/protections{q}")["protections"]:
            print(line(p))
    elif args.action == "edit":
        changes = cli.protect_changes(args)
        body = {key: changes[attr] for key, attr in (
            ("label", "label"), ("startTime90k", "start_90k"), ("endTime90k", "end_90k"))
            if changes[attr] is not None}
        print(f"updated protection "
              f"{line(c.call('PATCH', f'/api/protections/{args.id}', body))}")
    elif args.action == "remove":
        p = _protection(c, args.id)
        c.call("DELETE", f"/api/protections/{args.id}", {})
        print(cli.format_removed_protection(p["id"], p["label"]))
    return 0


def _protection(c: Client, id_: int, camera_uuid: str | None = None) -> dict:
    """Protection `id_`'s JSON (there is no GET of one: the list, of its camera's)."""
    q = "?" + urllib.parse.urlencode({"cameraUuid": camera_uuid}) if camera_uuid else ""
    for p in c.call("GET", f"/api/protections{q}")["protections"]:
        if p["id"] == id_:
            return p
    # As db.Database.get_protection says it offline.
    raise ControlError(f"no protection with id {id_}; `nvr.py protect list` shows them")
