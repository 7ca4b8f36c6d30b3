"""The configuration API: the routes under /api/config/ (nvr's extension of Moonfire's API).

Cameras, streams and sample file dirs, listed with each stream's live status and each
dir's free space, changed while nvr records, and the stream test; docs/api.md
("Configuration API") is the user-facing reference. Every route needs the
configureCameras permission (auth.Permissions.configure_cameras); every mutation the
session's `csrf` in its JSON body (api.check_csrf); bodies are strict (unknown keys are
a 400, api.Request.json).

What a change may be and what it does is config.py's: each handler turns JSON into one
config.py operation, whose `ConfigError(message, status)` becomes the one-line
text/plain error (400 bad field, named as the JSON names it; 404; 409 needs
`deleteRecordings: true` or conflicts). The running recorder is `request.server.recorder`
(recorder.Recorder; None in read-only runs and in tests that don't record), which
config.py tells what changed.

Camera passwords are write-only: no response carries one (`passwordSet` instead), and
the stream test's answer names the URL without credentials.

Imports go one way: this module uses api.py's request/response types; api.py doesn't
know it. web.py routes /api/ through `api.call(request, configapi.routes())`: api.ROUTES
plus this module's ROUTES.
"""

from __future__ import annotations

import base64
import re
import uuid as uuidlib

import api
import config
import db as dbmod
import dir as dirmod
import recorder as recordermod
import retention
import streamtest
from api import HttpError, Response

# Slack over streamtest.LIMIT_SEC for the test route's answer (the docs promise it).
TEST_SLACK_SEC = 2.0


def _recorder(request):
    return getattr(request.server, "recorder", None)


def _call(fn, *args, **kwargs):
    """Runs a config.py operation; its refusals become HTTP errors."""
    try:
        return fn(*args, **kwargs)
    except config.ConfigError as e:
        raise HttpError(e.status, e.message) from None
    except (dbmod.DbError, dirmod.DirError) as e:
        raise HttpError(409 if "already" in str(e) or "used by" in str(e) else 400,
                        str(e)) from None


def _mutation(request, allowed: tuple[str, ...]) -> dict:
    request.params(())
    body = request.json(("csrf",) + allowed)
    api.check_csrf(request, body)
    api._require_writable(request)
    body.pop("csrf", None)
    return body


def _bool(body: dict, key: str) -> bool:
    v = body.get(key, False)
    if not isinstance(v, bool):
        raise HttpError(400, f"{key} must be true or false")
    return v


# ---------------------------------------------------------------------------------------
# JSON out

def stream_json(d: dbmod.Database, s: dbmod.Stream, status: dict | None) -> dict:
    c = s.config
    return {"id": s.id, "url": c.get("url", ""), "rtspTransport": c.get("rtspTransport", ""),
            "record": s.record, "sampleFileDirId": s.sample_file_dir_id,
            "retainBytes": s.retain_bytes, "retainDays": s.retain_days,
            "flushIfSec": s.flush_if_sec, "fsBytes": s.fs_bytes,
            # No recorder (read-only, or not recording it yet): recorder.py's "off".
            "status": status or recordermod._off_status()}


def camera_json(d: dbmod.Database, c: dbmod.Camera, statuses: dict) -> dict:
    """One camera as GET /api/config/ lists it: never its password."""
    return {"id": c.id, "uuid": str(uuidlib.UUID(bytes=c.uuid)), "shortName": c.short_name,
            "description": c.config.get("description", ""),
            "onvifBaseUrl": c.config.get("onvifBaseUrl", ""),
            "username": c.config.get("username", ""),
            "passwordSet": bool(c.config.get("password")),
            "streams": {t: stream_json(d, d.streams[sid], statuses.get(sid))
                        for t, sid in sorted(c.streams.items())}}


def free_spaces(d: dbmod.Database) -> dict[int, tuple[int, int]]:
    """{dir id: (available, total) bytes} of each open dir whose statvfs answers. Disk
    I/O (a hung mount blocks here): call it before taking the database lock."""
    with d.locked("api: config dirs"):
        opened = [(x.id, x.dir) for x in d.dirs.values() if x.dir is not None]
    out = {}
    for dir_id, dx in opened:
        try:
            out[dir_id] = dx.fs.free_space()
        except OSError:
            pass
    return out


def dir_json(d: dbmod.Database, x: dbmod.SampleFileDir,
             spaces: dict[int, tuple[int, int]]) -> dict:
    """`spaces`: `free_spaces(d)`, read before the caller took the database lock."""
    free, total = spaces.get(x.id, (None, None)) if x.dir is not None else (None, None)
    streams = sorted(s.id for s in d.streams.values() if s.sample_file_dir_id == x.id)
    floor = None
    if total is not None:
        floor = retention.floor_bytes(x.config, total)
    elif "freeSpaceFloorBytes" in x.config:
        floor = x.config["freeSpaceFloorBytes"]
    return {"id": x.id, "uuid": str(uuidlib.UUID(bytes=x.uuid)), "path": x.path,
            "open": x.dir is not None, "totalBytes": total, "freeBytes": free,
            "usedBytes": sum(d.streams[sid].recorded_fs_bytes() for sid in streams),
            "freeSpaceFloorBytes": floor,
            "freeSpaceFloor": retention.describe_floor(x.config),
            "config": {k: v for k, v in x.config.items() if k in config.FLOOR_KEYS},
            "streamIds": streams}


def _statuses(request) -> dict:
    rec = _recorder(request)
    return rec.status() if rec is not None else {}


def _camera_out(request, camera_id: int) -> dict:
    d = request.server.db
    statuses = _statuses(request)
    with d.locked("api: config camera"):
        return camera_json(d, _call(config.get_camera, d, camera_id), statuses)


# ---------------------------------------------------------------------------------------
# Handlers

def handle_config(request: api.Request, m: re.Match):
    """`GET /api/config/`: every camera with its streams and their status, every dir."""
    request.params(())
    d = request.server.db
    statuses = _statuses(request)   # before the database lock (recorder.py's ranks)
    spaces = free_spaces(d)         # statvfs: before the database lock too
    with d.locked("api: config"):
        cameras = [camera_json(d, c, statuses)
                   for c in sorted(d.cameras.values(), key=lambda c: c.id)]
        dirs = [dir_json(d, x, spaces) for x in sorted(d.dirs.values(), key=lambda x: x.id)]
    return Response.json({"cameras": cameras, "dirs": dirs})


def _camera_id(m: re.Match) -> int:
    return int(m["id"])


def handle_config_cameras(request: api.Request, m: re.Match):
    """`POST /api/config/cameras`: a camera, optionally with its streams."""
    body = _mutation(request, config.CAMERA_KEYS + ("streams",))
    if "shortName" not in body:
        raise HttpError(400, "shortName is required")
    streams = body.pop("streams", None) or {}
    if not isinstance(streams, dict):
        raise HttpError(400, "streams must be an object: {\"main\": {...}, \"sub\": {...}}")
    name = body.pop("shortName")
    cid = _call(config.add_camera, request.server.db, _recorder(request), name, body,
                streams)
    c = request.server.db.cameras[cid]
    return Response.json({"id": cid, "uuid": str(uuidlib.UUID(bytes=c.uuid))}, 201)


def handle_config_camera(request: api.Request, m: re.Match):
    """`PATCH|DELETE /api/config/cameras/<id>`."""
    cid = _camera_id(m)
    d, rec = request.server.db, _recorder(request)
    if request.method == "DELETE":
        body = _mutation(request, ("deleteRecordings",))
        n = _call(config.delete_camera, d, rec, cid,
                  delete_recordings=_bool(body, "deleteRecordings"))
        return Response.json({"deletedRecordings": n})
    body = _mutation(request, config.CAMERA_KEYS)
    if "shortName" in body and body["shortName"] is None:
        raise HttpError(400, "shortName can't be null")
    _call(config.edit_camera, d, rec, cid, body)
    return Response.json(_camera_out(request, cid))


def handle_config_stream(request: api.Request, m: re.Match):
    """`POST|PATCH|DELETE /api/config/cameras/<id>/streams/<type>`."""
    cid, type_ = _camera_id(m), m["type"]
    d, rec = request.server.db, _recorder(request)
    if request.method == "POST":
        body = _mutation(request, config.STREAM_KEYS)
        sid = _call(config.add_stream, d, rec, cid, type_, body)
        return Response.json({"id": sid}, 201)
    if request.method == "DELETE":
        body = _mutation(request, ("deleteRecordings",))
        n = _call(config.delete_stream, d, rec, cid, type_,
                  delete_recordings=_bool(body, "deleteRecordings"))
        return Response.json({"deletedRecordings": n})
    body = _mutation(request, config.STREAM_KEYS + ("deleteRecordings",))
    confirm = _bool(body, "deleteRecordings")
    body.pop("deleteRecordings", None)
    r = _call(config.edit_stream, d, rec, cid, type_, body, delete_recordings=confirm)
    statuses = _statuses(request)
    with d.locked("api: config stream"):
        out = stream_json(d, d.streams[r.stream_id], statuses.get(r.stream_id))
    out["deletedRecordings"] = r.deleted.count
    out["deletedBytes"] = r.deleted.bytes   # nvr.py config stream edit prints the size
    return Response.json(out)


def _floor(body: dict) -> dict | None:
    """The floor keys given (None: neither given; both null: the default)."""
    given = {k: body.pop(k) for k in config.FLOOR_KEYS if k in body}
    return given if given else None


def handle_config_dirs(request: api.Request, m: re.Match):
    """`POST /api/config/dirs`: a new, empty sample file dir."""
    body = _mutation(request, ("path",) + config.FLOOR_KEYS)
    if "path" not in body:
        raise HttpError(400, "path is required")
    floor = _floor(body)
    did = _call(config.add_dir, request.server.db, _recorder(request), body["path"], floor)
    return Response.json({"id": did}, 201)


def handle_config_dir(request: api.Request, m: re.Match):
    """`PATCH|DELETE /api/config/dirs/<id>`: floor, move; forget."""
    did = int(m["id"])
    d, rec = request.server.db, _recorder(request)
    if request.method == "DELETE":
        _mutation(request, ())
        _call(config.delete_dir, d, rec, did)
        return Response.empty(204)
    body = _mutation(request, ("path",) + config.FLOOR_KEYS)
    floor = _floor(body)
    if "path" in body and body["path"] is None:
        raise HttpError(400, "path can't be null")
    _call(config.edit_dir, d, rec, did, path=body.get("path"), floor=floor)
    spaces = free_spaces(d)
    with d.locked("api: config dir"):
        return Response.json(dir_json(d, _call(config.get_dir, d, did), spaces))


def handle_config_test_stream(request: api.Request, m: re.Match):
    """`POST /api/config/test-stream`: streamtest.run on this thread (bounded by
    streamtest.LIMIT_SEC), with a stored stream's URL and credentials when
    cameraId/streamType are given (url/username/password given override them)."""
    body = _mutation(request, ("url", "username", "password", "rtspTransport", "cameraId",
                               "streamType"))
    for k in ("url", "username", "password"):
        if k in body and not isinstance(body[k], str):
            raise HttpError(400, f"{k} must be a string")
    transport = body.get("rtspTransport", "tcp")
    if transport not in ("tcp", "udp", "default", ""):
        raise HttpError(400, f"rtspTransport must be tcp, udp or default, not {transport!r}")
    url, username, password = body.get("url"), "", ""
    if "cameraId" in body or "streamType" in body:
        cid, type_ = body.get("cameraId"), body.get("streamType")
        if not isinstance(cid, int) or isinstance(cid, bool) or type_ not in dbmod.STREAM_TYPES:
            raise HttpError(400, "cameraId (an id) and streamType (main, sub or ext) go "
                                 "together")
        d = request.server.db
        with d.locked("api: test stream"):
            s = _call(config.get_stream, d, cid, type_)
            c = d.cameras[cid]
            url = url if url is not None else s.config.get("url", "")
            username = c.config.get("username", "")
            password = c.config.get("password", "")
            if "rtspTransport" not in body:
                transport = s.config.get("rtspTransport", "tcp") or "default"
    elif url is None:
        raise HttpError(400, "give url, or cameraId and streamType")
    username = body.get("username", username)
    password = body.get("password", password)
    if not url:
        raise HttpError(400, "that stream has no URL; give url")
    try:
        r = streamtest.run(url, username=username, password=password,
                           transport=transport or "default")
    except streamtest.StreamTestError as e:
        out = e.to_json(streamtest.LIMIT_SEC)
        out["snapshotJpeg"] = None
        return Response.json(out)
    out = r.to_json()
    out["snapshotJpeg"] = base64.b64encode(r.snapshot_jpeg).decode("ascii")
    return Response.json(out)


# ---------------------------------------------------------------------------------------
# The route table (web.py serves api.ROUTES + these)

_ID = r"[0-9]{1,18}"
PERMISSION = "configure_cameras"

ROUTES: list[api.Route] = [
    api.Route(re.compile(r"/api/config/"), api.GET_HEAD, PERMISSION, handle_config),
    api.Route(re.compile(r"/api/config/cameras"), ("POST",), PERMISSION,
              handle_config_cameras),
    api.Route(re.compile(rf"/api/config/cameras/(?P<id>{_ID})"), ("PATCH", "DELETE"),
              PERMISSION, handle_config_camera),
    api.Route(re.compile(rf"/api/config/cameras/(?P<id>{_ID})/streams/{api._TYPE}"),
              ("POST", "PATCH", "DELETE"), PERMISSION, handle_config_stream),
    api.Route(re.compile(r"/api/config/dirs"), ("POST",), PERMISSION, handle_config_dirs),
    api.Route(re.compile(rf"/api/config/dirs/(?P<id>{_ID})"), ("PATCH", "DELETE"),
              PERMISSION, handle_config_dir),
    api.Route(re.compile(r"/api/config/test-stream"), ("POST",), PERMISSION,
              handle_config_test_stream),
]


def routes() -> list[api.Route]:
    """Every /api/ route: the viewing API's, then these."""
    return api.ROUTES + ROUTES
