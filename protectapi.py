"""The protections API: `/api/protections` (issue #17, protected footage).

A protection keeps a time range of one stream, or of every stream of a camera, from
retention (retention.py decides, db.py stores the `protection` rows and keeps them in
memory; schema.sql documents the table). This module only speaks HTTP for them; api.py
owns the route table (its `ROUTES` entries call in here), the caller, CSRF and errors.

    GET    /api/protections?cameraUuid=&streamType=&startTime90k=&endTime90k=   viewVideo
           -> {"protections": [PROTECTION, ...]} by start time. cameraUuid: that camera's;
              with streamType: those that apply to that stream (its own and the camera's);
              startTime90k/endTime90k: those overlapping [start, end) (times as elsewhere
              in the API: 90 kHz units or a time string).
    POST   /api/protections        {csrf, cameraUuid, streamType?, startTime90k,
                                    endTime90k, label}        protectRecordings -> 201 {"id"}
    PATCH  /api/protections/<id>   {csrf, label?, startTime90k?, endTime90k?}
                                                           protectRecordings -> 200 PROTECTION
    DELETE /api/protections/<id>   {csrf}                   protectRecordings -> 204

    PROTECTION = {"id", "cameraUuid", "streamType" (null: every stream of the camera),
                  "startTime90k", "endTime90k", "label", "createdBy", "createdTime90k",
                  "updatedTime90k", "protectedBytes" (what the committed recordings it
                  covers take now, in whole 4096-byte blocks as retainBytes counts)}

`createdBy` is the logged-in user's name; a privileged Unix peer (the local admin's
`nvr.py` through the server) is "cli", as offline `nvr.py protect add` is; a caller with
no login (a listener granting protectRecordings unauthenticated) is "anonymous". Every
change is logged at INFO with who made it: it decides what retention may delete.
"""

from __future__ import annotations

import logging
import re

import api
import db as dbmod
from api import HttpError, Request, Response

logger = logging.getLogger(__name__)

def _protection_json(db: dbmod.Database, p: dbmod.Protection) -> dict:
    c = db.cameras[p.camera_id]
    return {"id": p.id, "cameraUuid": api._uuid_text(c.uuid),
            "streamType": None if p.stream_id is None else db.streams[p.stream_id].type,
            "startTime90k": p.start_time_90k, "endTime90k": p.end_time_90k,
            "label": p.label, "createdBy": p.created_by,
            "createdTime90k": p.created_time_90k, "updatedTime90k": p.updated_time_90k,
            "protectedBytes": db.protection_bytes(p.id)}


def _created_by(request: Request) -> str:
    caller = request.caller
    if caller.user is not None:
        return caller.user.username
    return "cli" if caller.privileged_unix else "anonymous"


def _body_time(body: dict, key: str) -> int:
    v = body[key]
    if not isinstance(v, int) or isinstance(v, bool):
        raise HttpError(400, f"{key} must be an integer (90 kHz units since 1970), not "
                             f"{type(v).__name__}")
    if not 0 < v <= dbmod.MAX_PROTECTION_TIME_90K:
        raise HttpError(400, f"{key} must be after 1970 and before the year 10000")
    return v


def _body_label(body: dict) -> str:
    label = body["label"]
    problem = dbmod.protection_label_problem(label)
    if problem:
        raise HttpError(400, problem)
    return label


def _db_call(fn, *args, **kwargs):
    """A db.py change, its DbError (a bad range, a stream of another camera) as a 400."""
    try:
        return fn(*args, **kwargs)
    except dbmod.DbError as e:
        raise HttpError(404 if str(e).startswith("no protection") else 400, str(e)) from None


def _describe(db: dbmod.Database, p: dbmod.Protection) -> str:
    c = db.cameras[p.camera_id]
    where = c.short_name if p.stream_id is None else \
        f"{c.short_name}/{db.streams[p.stream_id].type}"
    return f"{where} {p.start_time_90k}-{p.end_time_90k} {p.label!r}"


def handle_protections(request: Request, m: re.Match):
    """`GET /api/protections` (viewVideo) and `POST /api/protections` (protectRecordings)."""
    db = request.server.db
    if request.method in ("GET", "HEAD"):
        api.authorize(request, "view_video")
        p = request.params(("cameraUuid", "streamType", "startTime90k", "endTime90k"))
        camera_id = stream_id = None
        if "streamType" in p and "cameraUuid" not in p:
            raise HttpError(400, "streamType needs cameraUuid")
        if "cameraUuid" in p:
            c = api._camera_by_uuid(request, p["cameraUuid"][-1])
            camera_id = c.id
            if "streamType" in p:
                stream_id = api._camera_stream(request, p["cameraUuid"][-1],
                                               p["streamType"][-1])
        start = api._time_param("startTime90k", p["startTime90k"]) \
            if "startTime90k" in p else None
        end = api._time_param("endTime90k", p["endTime90k"]) if "endTime90k" in p else None
        with db.locked("api: protections"):
            out = [_protection_json(db, x) for x in db.list_protections(
                camera_id=camera_id, stream_id=stream_id, start_90k=start, end_90k=end)]
        return Response.json({"protections": out})
    api.authorize(request, "protect_recordings")
    body = request.json(("csrf", "cameraUuid", "streamType", "startTime90k", "endTime90k",
                         "label"))
    api.check_csrf(request, body)
    api._require_writable(request)
    for key in ("cameraUuid", "startTime90k", "endTime90k", "label"):
        if key not in body:
            raise HttpError(400, f"{key} is required")
    if not isinstance(body["cameraUuid"], str):
        raise HttpError(400, "cameraUuid must be a string")
    stream_type = body.get("streamType")
    if stream_type is not None and stream_type not in dbmod.STREAM_TYPES:
        raise HttpError(400, f"streamType must be null or one of "
                             f"{', '.join(dbmod.STREAM_TYPES)}")
    c = api._camera_by_uuid(request, body["cameraUuid"])
    stream_id = None if stream_type is None else \
        api._camera_stream(request, body["cameraUuid"], stream_type)
    start, end = _body_time(body, "startTime90k"), _body_time(body, "endTime90k")
    label = _body_label(body)
    id_ = _db_call(db.add_protection, c.id, stream_id, start, end, label,
                   _created_by(request))
    logger.info("protection %d added by %s: %s", id_, request.caller.describe(),
                _describe(db, db.get_protection(id_)))
    return Response.json({"id": id_}, status=201)


def handle_protection(request: Request, m: re.Match):
    """`PATCH|DELETE /api/protections/<id>` (protectRecordings)."""
    request.params(())
    db = request.server.db
    pid = int(m["id"])
    allowed = ("csrf",) if request.method == "DELETE" else \
        ("csrf", "label", "startTime90k", "endTime90k")
    body = request.json(allowed)
    api.check_csrf(request, body)
    _db_call(db.get_protection, pid)  # a 404 before a 503 or a 400 about the body
    api._require_writable(request)
    if request.method == "DELETE":
        old = db.get_protection(pid)
        _db_call(db.delete_protection, pid)
        logger.info("protection %d removed by %s: %s", pid, request.caller.describe(),
                    _describe(db, old))
        return Response.empty()
    changes = {}
    if "label" in body:
        changes["label"] = _body_label(body)
    if "startTime90k" in body:
        changes["start_90k"] = _body_time(body, "startTime90k")
    if "endTime90k" in body:
        changes["end_90k"] = _body_time(body, "endTime90k")
    p = _db_call(db.update_protection, pid, **changes)
    logger.info("protection %d edited by %s: %s", pid, request.caller.describe(),
                _describe(db, p))
    with db.locked("api: protection"):
        return Response.json(_protection_json(db, p))

