"""The JSON API (api.py) and who may call it (web.py's caller resolution, auth.py's
sessions): a permission matrix over every route, CSRF on every mutation, cookies,
proxy headers, login throttling, password hash upgrades, users, sessions, static
files, and fuzzing that must never produce a 500 or stop the server."""

import base64
import hashlib
import http.client
import io
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import uuid

import argon2
import pytest

import api
import auth
import clock
import configapi
import nvr
import recording
import signals as signalsmod
import web
from clips import make_clip
from conftest import START_NS, make_testdb
from replay import record
from test_web import make_cert

ZONE = "America/Los_Angeles"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PASSWORDS = {"admin": "admin-password", "viewer": "viewer-password", "noperm": "noperm-pass"}


class Site:
    """A database with recordings, three users, a signal, and a server with four binds:
    closed (no unauthenticated permissions), open (unauthenticated viewVideo), proxy
    (trustForwardHeaders) and a Unix socket with ownUidIsPrivileged."""

    def __init__(self, t, clocks, server, sock_path, camera_uuid, user_ids, sigs):
        self.t, self.db, self.clocks, self.server = t, t.db, clocks, server
        self.sock_path, self.camera_uuid, self.user_ids, self.signals = \
            sock_path, camera_uuid, user_ids, sigs
        addrs = server.addresses
        self.closed, self.open, self.proxy = addrs[0][1], addrs[1][1], addrs[2][1]

    def req(self, path, *, method="GET", body=None, cookie=None, port=None, headers=None,
            content_type="application/json"):
        c = http.client.HTTPConnection("127.0.0.1", port or self.closed, timeout=10)
        h = dict(headers or {})
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            h.setdefault("Content-Type", content_type)
        if cookie:
            h["Cookie"] = f"s={cookie}"
        c.request(method, path, body=data, headers=h)
        r = c.getresponse()
        out = r.status, r.headers, r.read()
        c.close()
        return out

    def login(self, user, port=None, headers=None) -> str:
        status, h, body = self.req("/api/login", method="POST", port=port, headers=headers,
                                   body={"username": user, "password": PASSWORDS[user]})
        assert status == 204, body
        return re.match(r"s=([^;]+);", h["Set-Cookie"])[1]

    def csrf(self, cookie) -> str:
        status, _, body = self.req("/api/", cookie=cookie)
        assert status == 200, body
        return json.loads(body)["user"]["session"]["csrf"]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    recording.set_server_zone(ZONE)
    tmp = tmp_path_factory.mktemp("api")
    clocks = clock.SimulatedClocks(START_NS)
    t = make_testdb(tmp, clocks, zone=ZONE)
    clip = make_clip(str(tmp / "a.mp4"), frames=90, gop=30)
    record(t, clip, clocks, frames=450)
    ids = {}
    for name, perms in (("admin", auth.Permissions.all()),
                        ("viewer", auth.Permissions(view_video=True)),
                        ("noperm", auth.Permissions())):
        ids[name] = t.db.add_user(name, password_hash=auth.hash_password(PASSWORDS[name]),
                                  permissions=perms)
    sigs = signalsmod.Signals(t.db)
    type_uuid = sigs.add_signal_type(uuid.uuid4(), {1: {"name": "still", "color": "#000"},
                                                    2: {"name": "moving", "motion": True,
                                                        "color": "#f00"}})
    sigs.add_signal("motion", type_uuid, {t.camera_id: "direct"})
    sock_path = str(tmp / "sock")
    binds = [nvr.Bind(("ipv4", "127.0.0.1:0")),
             nvr.Bind(("ipv4", "127.0.0.1:0"),
                      allow_unauthenticated_permissions=auth.Permissions(view_video=True)),
             nvr.Bind(("ipv4", "127.0.0.1:0"), trust_forward_headers=True),
             nvr.Bind(("unix", sock_path), own_uid_is_privileged=True)]
    srv = web.Server(t.db, nvr.Config("unused", None, binds), signals=sigs)
    srv.start()
    cam = t.db.cameras[t.camera_id]
    s = Site(t, clocks, srv, sock_path, str(uuid.UUID(bytes=cam.uuid)), ids, sigs)
    s.protection_id = t.db.add_protection(t.camera_id, None, 1, 2, "api test", "cli")
    yield s
    srv.stop()
    t.db.close()
    recording.set_server_zone(None)


@pytest.fixture(scope="module")
def cookies(site):
    return {u: site.login(u) for u in ("admin", "viewer", "noperm")}


# --- the permission matrix -----------------------------------------------------------------

OK = "ok"   # reached the handler: any status but 401/403


def _matrix(site):
    """(method, path, body, {caller: expected}) for every route; callers are nobody (the
    closed bind without a cookie), viewer (viewVideo), noperm (no permissions), admin."""
    u = site.camera_uuid
    vid, aid = site.user_ids["viewer"], site.user_ids["admin"]
    view = f"/api/cameras/{u}/main/view"
    R = lambda nobody, noperm, viewer, admin: dict(nobody=nobody, noperm=noperm,  # noqa: E731
                                                    viewer=viewer, admin=admin)
    anyone = R(OK, OK, OK, OK)
    callers = R(401, OK, OK, OK)
    video = R(401, 403, OK, OK)
    admin = R(401, 403, 403, OK)
    rows = [
        ("POST", "/api/login", {"username": 1}, anyone),
        ("POST", "/api/logout", {}, anyone),
        ("GET", "/api/request", None, anyone),
        ("GET", "/api/", None, callers),
        ("GET", "/api/?cameraConfigs=true", None, admin),
        ("GET", f"/api/cameras/{u}/", None, callers),
        ("GET", f"/api/cameras/{u}/main/recordings", None, video),
        ("GET", f"{view}.mp4?s=0", None, video),
        ("GET", f"{view}.mp4.txt?s=0", None, video),
        ("GET", f"{view}.m4s?s=0", None, video),
        # Anyone reaches the upgrade (viewVideo is checked inside the socket, test_live.py);
        # this plain GET isn't an upgrade, so: 400.
        ("GET", f"/api/cameras/{u}/main/live.m4s", None, anyone),
        ("GET", f"/api/cameras/{u}/main/still.jpg?s=0", None, video),
        ("GET", f"/api/cameras/{u}/main/latest.jpg", None, video),
        ("GET", "/api/init/1.mp4", None, video),
        ("GET", "/api/init/1.mp4.txt", None, video),
        ("GET", "/api/signals", None, video),
        ("GET", "/api/metrics", None, video),
        ("GET", "/api/system", None, video),
        ("POST", "/api/signals", {}, admin),
        ("GET", "/api/users/", None, admin),
        ("POST", "/api/users/", {}, admin),
        ("GET", f"/api/users/{vid}", None, R(401, 403, OK, OK)),   # self or admin
        ("GET", f"/api/users/{aid}", None, admin),
        ("PATCH", f"/api/users/{vid}", {}, R(401, 403, OK, OK)),
        ("DELETE", f"/api/users/{vid}", {}, admin),
        # A user's sessions: the user itself or admin.
        ("GET", f"/api/users/{vid}/sessions", None, R(401, 403, OK, OK)),
        ("GET", f"/api/users/{aid}/sessions", None, admin),
        ("POST", f"/api/users/{vid}/sessions/{'0' * 16}/revoke", {}, R(401, 403, OK, OK)),
        ("POST", f"/api/users/{aid}/sessions/{'0' * 16}/revoke", {}, admin),
        # The configuration API (configapi.py): configureCameras, which only admin has.
        ("GET", "/api/config/", None, admin),
        ("POST", "/api/config/cameras", {}, admin),
        ("PATCH", "/api/config/cameras/1", {}, admin),
        ("DELETE", "/api/config/cameras/1", {}, admin),
        ("POST", "/api/config/cameras/1/streams/sub", {}, admin),
        ("PATCH", "/api/config/cameras/1/streams/main", {}, admin),
        ("DELETE", "/api/config/cameras/1/streams/main", {}, admin),
        ("POST", "/api/config/dirs", {}, admin),
        ("PATCH", "/api/config/dirs/1", {}, admin),
        ("DELETE", "/api/config/dirs/1", {}, admin),
        ("POST", "/api/config/test-stream", {}, admin),
        # Protections: listing is viewVideo; changes need protectRecordings (admin's).
        ("GET", "/api/protections", None, video),
        ("POST", "/api/protections", {}, admin),
        ("PATCH", "/api/protections/1", {}, admin),
        ("DELETE", "/api/protections/1", {}, admin),
    ]
    # HEAD wherever GET is allowed.
    rows += [("HEAD", p, b, e) for m, p, b, e in rows if m == "GET" and "live" not in p]
    return rows


def test_permission_matrix_walks_every_route(site, cookies):
    rows = _matrix(site)
    for r in configapi.routes():   # api.ROUTES and the configuration API's
        for method in r.methods:
            assert any(m == method and r.pattern.fullmatch(p.split("?")[0])
                       for m, p, _, _ in rows), \
                f"route {r.pattern.pattern} {method} is missing from the permission matrix"
    for method, path, body, expected in rows:
        for who, want in expected.items():
            status, _, text = site.req(path, method=method, body=body,
                                       cookie=cookies.get(who))
            if want == OK:
                assert status not in (401, 403), (who, method, path, status, text)
                assert status != 500, (who, method, path, text)
                if method == "HEAD":   # what GET answers, without the body
                    get = site.req(path, cookie=cookies.get(who))
                    assert (status, text) == (get[0], b""), (who, path, status, get[0])
            else:
                assert status == want, (who, method, path, status, text)


def test_head_never_runs_a_mutation(site, cookies):
    """HEAD is GET without the body, even when it carries a POST's or PATCH's body."""
    admin = cookies["admin"]
    before = site.req("/api/users/", cookie=admin)[2]
    body = {"csrf": site.csrf(admin), "user": {"username": "made-by-head", "password": "x"}}
    assert site.req("/api/users/", method="HEAD", cookie=admin, body=body)[:3:2] == (200, b"")
    vid = site.user_ids["viewer"]
    body = {"csrf": site.csrf(admin), "update": {"preferences": {"via": "HEAD"}}}
    assert site.req(f"/api/users/{vid}", method="HEAD", cookie=admin, body=body)[0] == 200
    assert site.req("/api/users/", cookie=admin)[2] == before


def test_unauthenticated_permissions_and_privileged_unix_socket(site):
    u = site.camera_uuid
    # The open bind grants viewVideo without a login, and nothing else.
    assert site.req(f"/api/cameras/{u}/main/recordings", port=site.open)[0] == 200
    # ... to requests addressed to an IP address or localhost; not to a DNS-rebinding
    # page's, which name another host.
    path = f"/api/cameras/{u}/main/recordings"
    for host, status in ((f"127.0.0.1:{site.open}", 200), (f"localhost:{site.open}", 200),
                         ("LOCALHOST", 200), ("app.localhost:1", 200), ("[::1]:8080", 200),
                         ("192.168.1.10", 200), ("attacker.example", 401),
                         (f"attacker.example:{site.open}", 401), ("127.0.0.1.nip.io", 401),
                         ("[::1", 401)):
        assert site.req(path, port=site.open, headers={"Host": host})[0] == status, host
    assert web.host_is_address(None)   # HTTP/1.0 without Host
    status, _, body = site.req("/api/users/", port=site.open)
    assert status == 401 and b"adminUsers" in body
    # The Unix socket with ownUidIsPrivileged: our own uid gets every permission.
    s = socket.socket(socket.AF_UNIX)
    s.connect(site.sock_path)
    s.sendall(b"GET /api/users/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = b"".join(iter(lambda: s.recv(65536), b""))
    s.close()
    assert data.startswith(b"HTTP/1.1 200 ")
    assert b'"username":"admin"' in data


def test_401_and_403_say_why(site, cookies):
    status, _, body = site.req("/api/users/", cookie=cookies["viewer"])
    assert status == 403
    assert body.decode().startswith("permission denied: this needs the adminUsers permission")
    status, _, body = site.req("/api/")
    assert (status, body) == (401, b"unauthenticated: log in first (POST /api/login)")


# --- CSRF ------------------------------------------------------------------------------------

def test_csrf_missing_or_wrong_is_400_on_every_mutation(site, cookies):
    vid = site.user_ids["viewer"]
    mutations = [("POST", "/api/logout", {}), ("POST", "/api/signals", {}),
                 ("POST", "/api/users/", {"user": {"username": "x"}}),
                 ("PATCH", f"/api/users/{vid}", {"update": {"preferences": {}}}),
                 ("DELETE", f"/api/users/{vid}", {}),
                 ("POST", f"/api/users/{vid}/sessions/{'0' * 16}/revoke", {}),
                 ("POST", "/api/protections", {"cameraUuid": site.camera_uuid,
                                               "startTime90k": 1, "endTime90k": 2,
                                               "label": ""}),
                 ("PATCH", f"/api/protections/{site.protection_id}", {"label": "x"}),
                 ("DELETE", f"/api/protections/{site.protection_id}", {})]
    for method, path, body in mutations:
        status, _, text = site.req(path, method=method, body=body, cookie=cookies["admin"])
        assert (status, text.split(b":")[0]) == (400, b"missing csrf"), (method, path, text)
        status, _, text = site.req(path, method=method, body=dict(body, csrf="A" * 32),
                                   cookie=cookies["admin"])
        assert (status, text) == (400, b"wrong csrf token for this session"), (method, path)
    # Nothing changed: the viewer still exists and the admin is still logged in.
    assert site.req(f"/api/users/{vid}", cookie=cookies["admin"])[0] == 200
    # A CSRF token of another session is wrong too.
    other = site.login("admin")
    status, _, _ = site.req(f"/api/users/{vid}", method="PATCH", cookie=cookies["admin"],
                            body={"csrf": site.csrf(other), "update": {"preferences": {}}})
    assert status == 400


def test_mutations_need_the_json_content_type(site, cookies):
    csrf = site.csrf(cookies["admin"])
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        status, _, body = site.req("/api/users/", method="POST", cookie=cookies["admin"],
                                   body={"csrf": csrf, "user": {"username": "z"}},
                                   content_type=ctype)
        assert status == 400 and b"Content-Type: application/json" in body
    for raw, why in ((b"{", b"not valid JSON"), (b"[]", b"must be a JSON object"),
                     (b'{"csrf": "x", "bogus": 1}', b"unknown key(s) 'bogus'")):
        status, _, body = site.req("/api/users/", method="POST", cookie=cookies["admin"],
                                   body=raw)
        assert status == 400 and why in body, body
    # Nesting: refused before it reaches a handler, even without a login.
    for raw in (b"[" * 5000, b'{"a":' * 40 + b"1" + b"}" * 40):
        status, _, body = site.req("/api/login", method="POST", body=raw)
        assert status == 400 and b"nests arrays and objects more than 32 deep" in body, body
    # Preferences nested as deep as allowed still come back in the users list.
    vid, viewer = site.user_ids["viewer"], cookies["viewer"]
    prefs = {}
    for _ in range(29):   # 30 levels; with the body's own two, 32
        prefs = {"a": prefs}
    status, _, body = site.req(f"/api/users/{vid}", method="PATCH", cookie=viewer,
                               body={"csrf": site.csrf(viewer), "update": {"preferences": prefs}})
    assert status == 204, body
    assert site.req("/api/users/", cookie=cookies["admin"])[0] == 200


# --- cookies, TLS and proxies -------------------------------------------------------------

def _set_cookie(site, port, headers=None, context=None):
    if context is not None:
        c = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    else:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("POST", "/api/login", body=json.dumps({"username": "viewer",
                                                     "password": PASSWORDS["viewer"]}),
              headers={"Content-Type": "application/json", **(headers or {})})
    r = c.getresponse()
    r.read()
    c.close()
    assert r.status == 204
    return r.headers["Set-Cookie"]


def test_cookie_attributes(site, tmp_path):
    plain = _set_cookie(site, site.closed)
    # Max-Age: the session's lifetime, 365 days by default (test_sessions.py).
    assert re.fullmatch(r"s=[A-Za-z0-9+/]{64}; HttpOnly; SameSite=Lax; Max-Age=31536000; "
                        r"Path=/", plain), plain
    # An untrusted listener ignores X-Forwarded-Proto.
    assert "Secure" not in _set_cookie(site, site.closed, {"X-Forwarded-Proto": "https"})
    # A trusted proxy that says https (either header) makes it Secure; http doesn't.
    assert "; Secure;" in _set_cookie(site, site.proxy, {"X-Forwarded-Proto": "https"})
    assert "; Secure;" in _set_cookie(site, site.proxy, {"Forwarded": "for=1.2.3.4;proto=https"})
    assert "Secure" not in _set_cookie(site, site.proxy, {"X-Forwarded-Proto": "http"})
    # Over TLS: Secure.
    cert, key = make_cert(tmp_path)
    srv = web.Server(site.db, nvr.Config("unused", None, [nvr.Bind(
        ("ipv4", "127.0.0.1:0"), tls_cert=cert, tls_key=key)]), auth_=site.server.auth)
    srv.start()
    try:
        ctx = ssl.create_default_context(cafile=cert)
        assert "; Secure;" in _set_cookie(site, srv.addresses[0][1], context=ctx)
    finally:
        srv.stop()
    # Logout clears the cookie.
    cookie = site.login("viewer")
    status, h, _ = site.req("/api/logout", method="POST", cookie=cookie,
                            body={"csrf": site.csrf(cookie)})
    assert (status, h["Set-Cookie"]) == (204, "s=; Max-Age=0; HttpOnly; SameSite=Lax; Path=/")
    assert site.req("/api/", cookie=cookie)[0] == 401  # the session has ended


class _Headers(dict):
    def get_all(self, k):
        v = self.get(k)
        return None if v is None else [v]


@pytest.mark.parametrize("headers,expected", [
    ({}, (None, None)),
    ({"Forwarded": "for=192.0.2.60;proto=https;by=203.0.113.43"}, ("192.0.2.60", "https")),
    ({"Forwarded": "for=10.0.0.1, for=192.0.2.61;proto=http"}, ("192.0.2.61", "http")),
    ({"Forwarded": 'for="[2001:db8:cafe::17]:4711";proto=HTTPS'}, ("2001:db8:cafe::17", "https")),
    ({"Forwarded": 'for="192.0.2.62:8080"'}, ("192.0.2.62", None)),
    ({"Forwarded": "for=unknown;proto=https"}, (None, "https")),
    ({"Forwarded": "for=_hidden"}, (None, None)),
    ({"Forwarded": 'for="bad;ip";proto=https'}, (None, "https")),  # ; inside quotes
    # Forwarded wins over the X- headers.
    ({"Forwarded": "for=192.0.2.63", "X-Forwarded-For": "10.9.9.9",
      "X-Real-IP": "10.8.8.8"}, ("192.0.2.63", None)),
    ({"X-Forwarded-For": "203.0.113.1, 198.51.100.7", "X-Forwarded-Proto": "https"},
     ("198.51.100.7", "https")),
    ({"X-Forwarded-For": "garbage", "X-Real-IP": "198.51.100.8"}, ("198.51.100.8", None)),
    ({"X-Real-IP": "198.51.100.9"}, ("198.51.100.9", None)),
    ({"X-Real-IP": "2001:db8::9"}, ("2001:db8::9", None)),
    ({"X-Forwarded-Proto": "http, https"}, (None, "https")),
])
def test_forwarded_headers_table(headers, expected):
    assert web.forwarded_client(_Headers(headers)) == expected


@pytest.mark.parametrize("lines,expected", [
    # A proxy that adds its own line after the client's: its line (the last) counts.
    (["X-Forwarded-For: 6.6.6.6", "X-Forwarded-For: 192.0.2.7"], ("192.0.2.7", None)),
    (["X-Forwarded-For: 6.6.6.6, 10.0.0.1", "X-Forwarded-For: 192.0.2.8"], ("192.0.2.8", None)),
    (["X-Forwarded-Proto: https", "X-Forwarded-Proto: http"], (None, "http")),
    (["X-Real-IP: 6.6.6.6", "X-Real-IP: 192.0.2.9"], ("192.0.2.9", None)),
    (["Forwarded: for=6.6.6.6;proto=https", "Forwarded: for=192.0.2.10;proto=http"],
     ("192.0.2.10", "http")),
])
def test_forwarded_headers_on_several_lines(lines, expected):
    # Parsed as http.server parses a request's headers.
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode()
    headers = http.client.parse_headers(io.BytesIO(raw))
    assert web.forwarded_client(headers) == expected


def test_proxy_address_is_the_audited_client_only_when_trusted(site):
    fwd = {"X-Forwarded-For": "198.51.100.20", "User-Agent": "proxy-test/1"}
    status, _, body = site.req("/api/request", port=site.proxy, headers=fwd)
    assert "client addr: 198.51.100.20" in body.decode()
    status, _, body = site.req("/api/request", port=site.closed, headers=fwd)
    assert "client addr: 127.0.0.1" in body.decode()
    site.login("viewer", port=site.proxy, headers={"Forwarded": "for=198.51.100.21",
                                                    "User-Agent": "proxy-test/2"})
    s = [s for s in site.server.auth.list_sessions(site.user_ids["viewer"])
         if s.creation_user_agent == "proxy-test/2"]
    assert len(s) == 1 and auth.unpack_addr(s[0].creation_peer_addr) == "198.51.100.21"


# --- login, throttling, password upgrades --------------------------------------------------

def test_login_errors(site):
    cases = [({"username": "admin", "password": "wrong"}, 401, "incorrect username or password"),
             ({"username": "nobody", "password": "x"}, 401, "incorrect username or password"),
             ({"username": "admin"}, 400, "two strings"),
             ({"username": "admin", "password": "x", "extra": 1}, 400, "unknown key(s) 'extra'")]
    for body, status, text in cases:
        got, _, b = site.req("/api/login", method="POST", body=body,
                             headers={"X-Forwarded-For": "192.0.2.200"})
        assert (got, text) == (status, text) and text in b.decode()
    assert site.req("/api/login")[0] == 405
    site.server.auth.throttle.succeeded(["user:admin", "user:nobody", "addr:127.0.0.1"])


def test_an_empty_password_never_logs_in(tmp_path, clocks):
    """Even where a hash of "" is stored (older `nvr.py config user` took one); it
    fails like any wrong password: counted and throttled."""
    t = make_testdb(tmp_path, clocks)
    try:
        uid = t.db.add_user("u", password_hash=auth.hash_password(""))
        a = auth.Auth(t.db)
        for _ in range(5):
            with pytest.raises(auth.AuthError, match="^incorrect username or password$"):
                a.login_by_password("u", "", auth.Client(addr="192.0.2.1"))
        assert t.db.users[uid].password_failure_count == 5
        with pytest.raises(auth.Throttled):
            a.login_by_password("u", "", auth.Client(addr="192.0.2.1"))
        clocks.sleep(60)
        assert not a.check_password(uid, "", auth.Client(addr="192.0.2.2"))
    finally:
        t.db.close()


def test_throttling_slows_then_refuses_then_forgives(tmp_path, clocks):
    t = make_testdb(tmp_path, clocks)
    try:
        t.db.add_user("u", password_hash=auth.hash_password("right-password"))
        a = auth.Auth(t.db)
        me = auth.Client(addr="192.0.2.1")

        def attempt(password, client=me, user="u"):
            try:
                a.login_by_password(user, password, client)
                return "ok"
            except auth.Throttled as e:
                return e.retry_after_sec
            except auth.AuthError:
                return "bad"
        assert [attempt("wrong") for _ in range(5)] == ["bad"] * 5   # free failures
        assert attempt("right-password") == 1        # even the right password must wait
        clocks.sleep(1)
        assert attempt("wrong") == "bad"              # 6 failures: now wait 2 s
        assert attempt("wrong") == 2
        clocks.sleep(2)
        assert attempt("wrong") == "bad"              # 7: wait 4 s
        # Another address is throttled by the username...
        assert attempt("wrong", client=auth.Client(addr="192.0.2.2")) == 4
        # ... and this address for any other username.
        t.db.add_user("v", password_hash=auth.hash_password("v-password"))
        assert attempt("v-password", user="v") == 4
        # The wait doubles up to 15 minutes, never more.
        assert [auth.Throttle.delay_sec(n) for n in (4, 5, 6, 7, 14, 15, 40)] == \
            [0, 1, 2, 4, 512, 900, 900]
        clocks.sleep(4)
        assert attempt("right-password") == "ok"      # success forgets the failures
        assert a.throttle.failures("user:u") == 0 and a.throttle.failures("addr:192.0.2.1") == 0
        # An hour without failures forgets them too.
        for _ in range(6):
            attempt("wrong", client=auth.Client(addr="192.0.2.3"), user="v")
        assert attempt("v-password", client=auth.Client(addr="192.0.2.4"), user="v") != "ok"
        clocks.sleep(3600)
        assert attempt("v-password", client=auth.Client(addr="192.0.2.4"), user="v") == "ok"
        # Failures were counted for the user, and written at the next flush.
        t.db.flush("test")
        n = t.db.conn.execute("select password_failure_count from user where username = 'u'")
        assert n.fetchone()[0] == 7   # throttled attempts aren't checked, so not counted
    finally:
        t.db.close()


def test_throttling_holds_for_attempts_sent_at_once(tmp_path, clocks, monkeypatch):
    """Attempts queued for the two hashing slots at once are throttled as if sent one
    after the other: the throttle is checked, and a failure recorded, inside a slot."""
    t = make_testdb(tmp_path, clocks)
    try:
        t.db.add_user("u", password_hash=auth.hash_password("right-password"))
        a = auth.Auth(t.db)
        checked = []
        real = auth.verify_password

        def slow_verify(h, p):   # argon2's ~0.1 s, shortened: attempts pile up behind it
            checked.append(h)
            threading.Event().wait(0.02)
            return real(h, p)
        monkeypatch.setattr(auth, "verify_password", slow_verify)
        go = threading.Barrier(20)
        results = []

        def attempt():
            go.wait()
            try:
                a.login_by_password("u", "wrong", auth.Client(addr="192.0.2.1"))
            except auth.Throttled:
                results.append("throttled")
            except auth.AuthError:
                results.append("bad")
        threads = [threading.Thread(target=attempt) for _ in range(20)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        # 5 free failures, plus at most one more already in the other slot.
        assert results.count("bad") in (5, 6) and results.count("throttled") >= 14
        assert len(checked) == results.count("bad")
    finally:
        t.db.close()


def test_unknown_users_cost_a_hash_check_and_long_names_a_bounded_key(tmp_path, clocks,
                                                                      monkeypatch):
    t = make_testdb(tmp_path, clocks)
    try:
        t.db.add_user("nopass")   # a user without a password can't log in
        a = auth.Auth(t.db)
        checked = []
        real = auth.verify_password
        monkeypatch.setattr(auth, "verify_password",
                            lambda h, p: checked.append(h) or real(h, p))
        for name in ("nobody", "nopass"):
            with pytest.raises(auth.AuthError, match="incorrect username or password"):
                a.login_by_password(name, "x", auth.Client(addr="192.0.2.1"))
        # Each checked the password against a real argon2id hash (the same dummy one).
        assert len(checked) == 2 and checked[0] == checked[1]
        assert checked[0].startswith("$argon2id$")
        # A long username is keyed by a hash of it, not the name.
        keys = auth.Throttle.keys("x" * 60_000, "192.0.2.1")
        assert keys[0].startswith("user#") and len(keys[0]) == 37 and keys[1] == "addr:192.0.2.1"
        assert auth.Throttle.keys("admin", None) == ["user:admin"]
    finally:
        t.db.close()


def test_a_flood_of_names_does_not_evict_a_delayed_account(monkeypatch):
    monkeypatch.setattr(auth.Throttle, "MAX_KEYS", 10)
    th = auth.Throttle()
    for i in range(7):
        th.failed(["user:victim"], 1000.0 + i)
    for i in range(50):   # one-off names, each failing once
        th.failed([f"user:made-up-{i}"], 1006.0 + i / 100)
    assert th.failures("user:victim") == 7 and th.retry_after(["user:victim"], 1007.0) == 3
    assert len(th._fails) == 10
    th.failed(["user:late"], 1000.0 + 3600 + 10)   # forgotten keys go first, victim too
    assert th.failures("user:victim") == 0


def test_throttled_login_over_http_is_429_with_retry_after(site):
    hdr = {"X-Forwarded-For": "192.0.2.99"}
    for _ in range(auth.Throttle.FREE_FAILURES):
        assert site.req("/api/login", method="POST", port=site.proxy, headers=hdr,
                        body={"username": "noperm", "password": "wrong"})[0] == 401
    status, h, body = site.req("/api/login", method="POST", port=site.proxy, headers=hdr,
                               body={"username": "noperm", "password": PASSWORDS["noperm"]})
    assert (status, h["Retry-After"]) == (429, "1")
    assert body.startswith(b"too many failed logins; try again in 1 s")
    site.server.auth.throttle.succeeded(["user:noperm", "addr:192.0.2.99"])


def _scrypt_phc(password: str) -> str:
    salt = os.urandom(16)
    h = hashlib.scrypt(password.encode(), salt=salt, n=1 << 10, r=8, p=1, dklen=32)
    enc = lambda b: base64.b64encode(b).decode().rstrip("=")  # noqa: E731
    return f"$scrypt$ln=10,r=8,p=1${enc(salt)}${enc(h)}"


def test_legacy_scrypt_hash_is_upgraded_at_login(tmp_path, clocks):
    t = make_testdb(tmp_path, clocks)
    try:
        uid = t.db.add_user("old", password_hash=_scrypt_phc("moonfire-pass"))
        before = t.db.users[uid].password_id
        a = auth.Auth(t.db)
        with pytest.raises(auth.AuthError):
            a.login_by_password("old", "wrong", auth.Client())
        assert t.db.users[uid].password_hash.startswith("$scrypt$")  # not on a failure
        a.login_by_password("old", "moonfire-pass", auth.Client())
        u = t.db.users[uid]
        assert u.password_hash.startswith("$argon2id$")
        assert u.password_id == before                 # the same password: not a change
        stored = t.db.conn.execute("select password_hash from user where id = ?", (uid,))
        assert stored.fetchone()[0] == u.password_hash  # written at once
        a.login_by_password("old", "moonfire-pass", auth.Client())  # and it still works
    finally:
        t.db.close()



def test_new_hashes_have_the_same_parameters_under_every_argon2_cffi():
    # argon2-cffi 21.1 (Debian 12) and 21.2+ default to different parameters; the
    # production hasher names its own, so neither version calls the other's hashes old.
    h = auth.default_hasher().hash("pw")
    assert h.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    hasher_of_21_1 = argon2.PasswordHasher(time_cost=2, memory_cost=102400, parallelism=8,
                                           hash_len=16, salt_len=16, type=argon2.Type.ID)
    auth.set_password_hasher(auth.default_hasher())
    assert not auth.needs_rehash(h)
    assert auth.needs_rehash(hasher_of_21_1.hash("pw"))
    assert auth.verify_password(h, "pw") and not auth.verify_password(h, "other")

# --- sessions -----------------------------------------------------------------------------

def test_session_ids_are_stored_only_hashed_and_usage_is_flushed(site):
    cookie = site.login("viewer", headers={"User-Agent": "ua-test/1"})
    raw = base64.b64decode(cookie)
    assert len(raw) == 48
    rows = site.db.conn.execute("select session_id_hash, seed from user_session").fetchall()
    assert all(raw not in bytes(h) and cookie.encode() not in bytes(h) for h, _ in rows)
    h = hashlib.blake2b(raw, digest_size=24).digest()
    assert any(bytes(r[0]) == h for r in rows)
    # CSRF: blake2b keyed by the seed, 32 base64 characters.
    seed = next(bytes(s) for hh, s in rows if bytes(hh) == h)
    want = base64.b64encode(hashlib.blake2b(b"csrf", key=seed, digest_size=24).digest())
    assert site.csrf(cookie) == want.decode().rstrip("=") and len(site.csrf(cookie)) == 32
    for _ in range(3):
        site.req("/api/", cookie=cookie, headers={"User-Agent": "ua-test/2"})
    q = "select use_count, last_use_user_agent from user_session where session_id_hash = ?"
    assert site.db.conn.execute(q, (h,)).fetchone() == (0, None)  # lazily written...
    site.db.flush("test")
    assert site.db.conn.execute(q, (h,)).fetchone() == (5, "ua-test/2")  # ...at the flush


def test_disabled_user_and_deleted_user_lose_their_sessions(site, cookies):
    admin, csrf = cookies["admin"], site.csrf(cookies["admin"])
    status, _, body = site.req("/api/users/", method="POST", cookie=admin, body={
        "csrf": csrf, "user": {"username": "temp", "password": "temp-password",
                               "permissions": {"viewVideo": True}}})
    assert status == 200
    uid = json.loads(body)["id"]
    PASSWORDS["temp"] = "temp-password"
    cookie = site.login("temp")
    assert site.req("/api/", cookie=cookie)[0] == 200
    assert site.req(f"/api/users/{uid}", method="PATCH", cookie=admin,
                    body={"csrf": csrf, "update": {"disabled": True}})[0] == 204
    assert site.req("/api/", cookie=cookie)[0] == 401
    assert site.req("/api/login", method="POST",
                    body={"username": "temp", "password": "temp-password"})[0] == 401
    assert site.req(f"/api/users/{uid}", method="PATCH", cookie=admin,
                    body={"csrf": csrf, "update": {"disabled": False}})[0] == 204
    assert site.req("/api/", cookie=cookie)[0] == 401   # disabling revoked it for good
    cookie = site.login("temp")
    assert site.req("/api/", cookie=cookie)[0] == 200
    assert site.req(f"/api/users/{uid}", method="DELETE", cookie=admin,
                    body={"csrf": csrf})[0] == 204
    assert site.req("/api/", cookie=cookie)[0] == 401
    assert site.req(f"/api/users/{uid}", cookie=admin)[0] == 404
    site.server.auth.throttle.succeeded(["user:temp", "addr:127.0.0.1"])


def test_login_and_sessions_commands(tmp_path):
    def run(*args, ok=True, stdin=None):
        r = subprocess.run([sys.executable, os.path.join(ROOT, "nvr.py"), *args,
                            "--db-dir", str(tmp_path / "db")], capture_output=True, text=True,
                           input=stdin, cwd=str(tmp_path))
        assert (r.returncode == 0) == ok, r.stderr
        return r
    run("init")
    run("config", "user", "add", "alice", "--password-stdin", stdin="alice-password\n")
    jar = str(tmp_path / "jar")
    r = run("login", "alice", "--permissions", '{"viewVideo": true, "adminUsers": true}',
            "--domain", "nvr.example", "--curl-cookie-jar", jar)
    cookie = re.fullmatch(r"s=([A-Za-z0-9+/]{64})\n", r.stdout)[1]
    assert os.stat(jar).st_mode & 0o777 == 0o600
    fields = open(jar).read().splitlines()[1].split("\t")
    assert fields[0] == "#HttpOnly_nvr.example" and fields[3] == "TRUE" and \
        fields[5:] == ["s", cookie]
    r = run("login", "alice", "--curl-cookie-jar", jar, ok=False)
    assert "--curl-cookie-jar needs --domain" in r.stderr
    assert "no user named 'bob'" in run("login", "bob", ok=False).stderr
    run("login", "alice")
    lines = run("sessions", "list").stdout.splitlines()
    assert lines[0].split("\t")[:7] == ["ID", "USER", "CREATED", "LAST USE", "PEER", "USES",
                                        "STATE"]
    assert len(lines) == 3 and all("\talice\t" in x and "\tvalid\t" in x for x in lines[1:])
    first = lines[1].split("\t")[0]
    assert run("sessions", "revoke", first).stdout == "revoked 1 session(s)\n"
    assert "no single session" in run("sessions", "revoke", "ffff", ok=False).stderr
    states = [x.split("\t")[6] for x in run("sessions", "list", "--user", "alice")
              .stdout.splitlines()[1:]]
    assert states == ["revoked (revoked by an administrator)", "valid"]
    assert run("sessions", "revoke", "--user", "alice").stdout == "revoked 1 session(s)\n"


# --- users ---------------------------------------------------------------------------------

def test_users_crud_and_preconditions(site, cookies):
    admin, acsrf = cookies["admin"], site.csrf(cookies["admin"])
    status, _, body = site.req("/api/users/", method="POST", cookie=admin, body={
        "csrf": acsrf, "user": {"username": "carol", "password": "carol-password",
                                "preferences": {"theme": "dark"}}})
    assert status == 200
    uid = json.loads(body)["id"]
    PASSWORDS["carol"] = "carol-password"
    assert site.req("/api/users/", method="POST", cookie=admin, body={
        "csrf": acsrf, "user": {"username": "carol"}})[0] == 412   # exists
    users = json.loads(site.req("/api/users/", cookie=admin)[2])["users"]
    carol = next(u for u in users if u["id"] == uid)["user"]
    assert carol == {"id": uid, "username": "carol", "disabled": False,
                     "preferences": {"theme": "dark"}, "password": "(censored)",
                     "permissions": {"viewVideo": False, "readCameraConfigs": False,
                                     "updateSignals": False, "adminUsers": False,
                                     "configureCameras": False, "protectRecordings": False}}
    me = site.login("carol")
    csrf = site.csrf(me)
    patch = lambda body, cookie=me: site.req(f"/api/users/{uid}", method="PATCH",  # noqa
                                             cookie=cookie, body=dict(body, csrf=site.csrf(cookie)))
    # Self: may change preferences, and the password only with the old one.
    assert patch({"update": {"preferences": {"theme": "light"}}})[0] == 204
    assert patch({"update": {"password": "new-password"}})[0] == 403
    assert patch({"update": {"password": "new-password"},
                  "precondition": {"password": "wrong"}})[0] == 412
    assert patch({"update": {"password": "new-password"},
                  "precondition": {"password": "carol-password"}})[0] == 204
    PASSWORDS["carol"] = "new-password"
    assert site.req("/api/", cookie=me)[0] == 200    # the session that changed it stays
    site.login("carol")
    # Self may not change permissions, username or disabled.
    for k, v in (("permissions", {"adminUsers": True}), ("username", "c2"), ("disabled", True)):
        status, _, body = patch({"update": {k: v}})
        assert status == 403 and f"changing {k} needs adminUsers".encode() in body
    # Admin may; a precondition on the username must match.
    assert patch({"update": {"username": "c3"}, "precondition": {"username": "nope"}},
                 cookie=admin)[0] == 412
    assert patch({"update": {"username": "c3", "permissions": {"viewVideo": True}},
                  "precondition": {"username": "carol"}}, cookie=admin)[0] == 204
    got = json.loads(site.req(f"/api/users/{uid}", cookie=me)[2])
    assert got["username"] == "c3" and got["permissions"]["viewVideo"] is True
    # An added permission applies to new sessions only (a removed one at once:
    # test_sessions.py).
    assert json.loads(site.req("/api/", cookie=me)[2])["permissions"]["viewVideo"] is False
    # Admin clears the password: no password login.
    assert patch({"update": {"password": None}}, cookie=admin)[0] == 204
    assert json.loads(site.req(f"/api/users/{uid}", cookie=admin)[2])["password"] is None
    status, _, _ = site.req("/api/login", method="POST",
                            body={"username": "c3", "password": "new-password"})
    assert status == 401
    # Bad bodies.
    for body, text in (({"update": {"username": ""}}, b"must not be empty"),
                       ({"update": {"username": "c3\nINFO forged log line"}},
                        b"must not contain control characters or line breaks"),
                       ({"update": {"permissions": {"flying": True}}}, b"unknown permission"),
                       ({"update": {"disabled": "yes"}}, b"wrong type"),
                       ({"update": {"shoeSize": 9}}, b"unknown key(s) 'shoeSize'")):
        status, _, b = patch(body, cookie=admin)
        assert status == 400 and text in b, b
    assert site.req(f"/api/users/{uid}", method="DELETE", cookie=admin,
                    body={"csrf": acsrf})[0] == 204
    assert site.req("/api/users/99999", cookie=admin)[0] == 404
    site.server.auth.throttle.succeeded(["user:c3", "addr:127.0.0.1"])


# --- /api/, camera, recordings, signals ----------------------------------------------------

def test_top_level(site, cookies):
    status, h, body = site.req("/api/?days=true", cookie=cookies["viewer"])
    assert (status, h["Content-Type"], h["Cache-Control"]) == \
        (200, "application/json", "private, no-cache")
    j = json.loads(body)
    assert j["timeZoneName"] == ZONE
    assert j["permissions"] == {"viewVideo": True, "readCameraConfigs": False,
                                "updateSignals": False, "adminUsers": False,
                                     "configureCameras": False, "protectRecordings": False}
    assert j["user"]["name"] == "viewer" and len(j["user"]["session"]["csrf"]) == 32
    cam, = j["cameras"]
    assert cam["uuid"] == site.camera_uuid and cam["shortName"] == "test-camera"
    assert "config" not in cam
    main = cam["streams"]["main"]
    s = site.db.streams[site.t.stream_id]
    assert main["totalSampleFileBytes"] == s.sample_file_bytes > 0
    assert main["totalDuration90k"] == s.duration_90k
    assert abs(s.duration_90k - 15 * 90_000) < 90_000
    assert (main["minStartTime90k"], main["maxEndTime90k"]) == s.range_90k
    assert main["retainBytes"] == 1 << 30 and main["record"] is True
    day, = main["days"].items()
    assert day[1]["totalDuration90k"] == s.duration_90k
    assert j["signals"][0]["shortName"] == "motion"
    assert j["signals"][0]["cameras"] == {site.camera_uuid: "direct"}
    assert {s["value"] for s in j["signalTypes"][0]["states"]} == {1, 2}
    # cameraConfigs (readCameraConfigs) adds configs; the camera password stays write-only.
    cam = site.db.cameras[j["cameras"][0]["id"]]
    assert cam.config["password"] == ""  # none stored: "" as stored
    assert json.loads(site.req("/api/?cameraConfigs=true", cookie=cookies["admin"])[2])[
        "cameras"][0]["config"]["password"] == ""
    site.db.update_camera(cam.id, config={**cam.config, "password": "s3cret-camera-pw"})
    raw = site.req("/api/?cameraConfigs=true", cookie=cookies["admin"])[2]
    j = json.loads(raw)
    assert j["cameras"][0]["config"]["password"] == "(censored)"
    assert b"s3cret-camera-pw" not in raw
    site.db.update_camera(cam.id, config={**cam.config, "password": ""})
    assert j["cameras"][0]["streams"]["main"]["config"]["url"] == "rtsp://127.0.0.1:8554/test"
    assert "days" not in j["cameras"][0]["streams"]["main"]
    # One camera.
    j = json.loads(site.req(f"/api/cameras/{site.camera_uuid}/", cookie=cookies["viewer"])[2])
    assert j["uuid"] == site.camera_uuid and "days" in j["streams"]["main"]
    assert site.req("/api/?days=maybe", cookie=cookies["viewer"])[0] == 400
    assert site.req("/api/cameras/0000/", cookie=cookies["viewer"])[0] == 404


def test_recordings(site, cookies):
    path = f"/api/cameras/{site.camera_uuid}/main/recordings"
    get = lambda q="": json.loads(site.req(path + q, cookie=cookies["viewer"])[2])  # noqa
    j = get()
    rows = sorted(j["recordings"], key=lambda r: r["startId"])
    assert [(r["startId"], r.get("endId")) for r in rows] == [(0, 2)]  # one run, merged
    r = rows[0]
    listed = site.db.list_recordings_by_id(site.t.stream_id, 0, 3)
    assert r["startTime90k"] == listed[0].start_time_90k
    assert r["endTime90k"] == listed[-1].end_time_90k
    assert r["videoSamples"] == 450 and r["hasTrailingZero"] is True
    assert r["endReason"] == "end of clip" and r["runStartId"] == 0
    assert r["sampleFileBytes"] == sum(x.sample_file_bytes for x in listed)
    vse = j["videoSampleEntries"][str(r["videoSampleEntryId"])]
    assert (vse["width"], vse["height"], vse["aspectWidth"], vse["aspectHeight"]) == \
        (320, 180, 16, 9)
    # split90k: no row reaches 7 s (the recordings last 9, 3 and 3 s).
    rows = sorted(get("?split90k=630000")["recordings"], key=lambda r: r["startId"])
    assert [(r["startId"], r.get("endId", r["startId"])) for r in rows] == [(0, 0), (1, 2)]
    # Time filter: integers or time strings, half-open overlap on wall time.
    t1 = listed[1].start_time_90k
    ids = lambda j: sorted(x for r in j["recordings"]  # noqa: E731
                           for x in range(r["startId"], r.get("endId", r["startId"]) + 1))
    assert ids(get(f"?startTime90k={t1}&split90k=1")) == [1, 2]
    assert ids(get(f"?endTime90k={t1}&split90k=1")) == [0]
    iso = recording.format_time(t1, ZONE)
    assert ids(get(f"?startTime90k={iso.replace('+', '%2B')}&split90k=1")) == [1, 2]
    for q, text in (("?startTime90k=yesterday", b"startTime90k: invalid time"),
                    ("?split90k=0", b"split90k must be positive"),
                    ("?split90k=x", b"split90k must be an integer"),
                    (f"?startTime90k={t1}&endTime90k=0", b"is after endTime90k"),
                    ("?endTime90k=9223372036854775808", b"endTime90k is out of range"),
                    ("?startTime90k=-9223372036854775809", b"startTime90k is out of range"),
                    ("?split90k=" + "9" * 5000, b"split90k must be an integer"),
                    ("?foo=1", b"unknown parameter 'foo'")):
        status, _, body = site.req(path + q, cookie=cookies["viewer"])
        assert status == 400 and text in body, (q, body)


def test_signals_round_trip(site, cookies):
    admin = cookies["admin"]
    status, _, body = site.req("/api/signals", method="POST", cookie=admin, body={
        "csrf": site.csrf(admin), "signalIds": [1], "states": [2],
        "start": {"base": "epoch", "rel90k": 1000 * 90000},
        "end": {"base": "epoch", "rel90k": 1060 * 90000}})
    assert status == 200, body
    assert isinstance(json.loads(body)["time90k"], int)
    j = json.loads(site.req("/api/signals?startTime90k=0&endTime90k=200000000",
                            cookie=cookies["viewer"])[2])
    assert j == {"times90k": [90_000_000, 95_400_000], "signalIds": [1, 1], "states": [2, 0]}
    status, _, body = site.req("/api/signals", method="POST", cookie=admin, body={
        "csrf": site.csrf(admin), "signalIds": [7], "states": [1],
        "start": {"base": "now", "rel90k": 0}, "end": {"base": "now", "rel90k": 1}})
    assert status == 400 and b"7" in body


# --- static files ----------------------------------------------------------------------------

def test_static_files(site, tmp_path):
    status, h, body = site.req("/")
    assert status == 200 and h["Content-Type"] == "text/html; charset=utf-8"
    assert body == open(os.path.join(ROOT, "ui", "index.html"), "rb").read()
    assert h["Cache-Control"] == "public, no-cache"
    assert "script-src 'self'" in h["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in h["Content-Security-Policy"]
    assert h["X-Frame-Options"] == "DENY"   # test_ui.py fails on any CSP violation
    assert site.req("/", headers={"If-None-Match": h["ETag"]})[0] == 304
    for path in ("/index.html", "/../nvr.py", "/%2e%2e/nvr.py", "/ui/../../etc/passwd",
                 "/.git/config", "/js/../../db.py", "/nvr.py", "//etc/passwd", "/x\\..\\y.js",
                 "/missing.js"):
        status, _, _ = site.req(path)
        assert status == 404, path
    assert site.req("/", method="POST", body={})[0] == 405
    # A symlink out of the UI dir is refused even with a known extension.
    ui = tmp_path / "ui"
    ui.mkdir()
    (ui / "index.html").write_text("hi")
    os.symlink("/etc/hostname", ui / "leak.txt")
    with pytest.raises(web.HttpError):
        web.find_static(str(ui), "/leak.txt")
    assert web.find_static(str(ui), "/").length == 2


# --- fuzzing ----------------------------------------------------------------------------------

# Numbers json.dumps can't write (int() refuses over 4300 digits) or that aren't JSON, put
# into a body in place of a marker string: "NaN" is what Python's json would take.
HUGE_NUMBERS = ["1" * 5000, "-" + "9" * 4400, "1e400", "-1e999", "0." + "0" * 5000 + "1",
                "NaN", "Infinity", "-Infinity", "1E+99999", "9" * 31]
# Query values: the same, plus zeros that vanish when stripped.
HUGE_PARAMS = ["0" * 5000, "9" * 5000, "-" + "0" * 4400, "1e400", "NaN", "1-" + "0" * 5000,
               "0" * 4301 + "1." + "0" * 4301 + "-"]


def _fuzz_strategies():
    """Hypothesis strategies for the fuzz tests: text over the whole of Unicode (lone
    surrogates included: json.dumps writes them as \\ud800 escapes, and in a URL they
    are percent-encoded as the invalid UTF-8 they would be), huge and non-finite
    numbers, raw bytes."""
    from hypothesis import strategies as st
    anychar = st.characters(exclude_categories=())   # the default leaves out surrogates
    # Drawn often: plain text rarely holds a lone surrogate where it matters.
    text = st.text(alphabet=anychar, max_size=30) | st.sampled_from(
        ["\ud800", "a\udfffb", "\udbff\udbff", "lat", "", "\U0001F600"])
    huge = st.sampled_from(range(len(HUGE_NUMBERS))).map(lambda i: f"\x00huge{i}\x00")
    leaf = (st.none() | st.booleans() | st.integers() | st.floats() | text | huge
            | st.sampled_from([float("nan"), float("inf"), -float("inf")])
            | st.integers(min_value=-2 ** 70, max_value=2 ** 70))
    value = st.recursive(leaf, lambda c: st.lists(c, max_size=3) |
                         st.dictionaries(text, c, max_size=3), max_leaves=6)
    param = text | st.sampled_from(HUGE_PARAMS)
    return st, text, value, param


def _json_with_huge_numbers(obj) -> bytes:
    out = json.dumps(obj)   # ensure_ascii: a lone surrogate becomes a \\udxxx escape
    for i, n in enumerate(HUGE_NUMBERS):
        out = out.replace(json.dumps(f"\x00huge{i}\x00"), n)
    return out.encode()


def _fuzz_url(prefix: str, suffix: str, q) -> str:
    import urllib.parse
    path = urllib.parse.quote(prefix + suffix, safe="/?=&", errors="surrogatepass")
    if q:
        path += ("&" if "?" in path else "?") + urllib.parse.urlencode(
            q, errors="surrogatepass")
    return path


def _fuzz_send(port, method, path, h, data) -> int:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request(method, path, body=data, headers=h)
        r = c.getresponse()
        r.read()
    finally:
        c.close()
    return r.status


def test_fuzz_never_500_never_hangs(site, cookies):
    from hypothesis import HealthCheck, given, settings
    st, text, value, param = _fuzz_strategies()

    # Every route of the table (the permission matrix's paths), and some that aren't.
    paths = sorted({p for _, p, _, _ in _matrix(site)})
    for r in configapi.routes():
        assert any(r.pattern.fullmatch(p.split("?")[0]) for p in paths), r.pattern.pattern
    u = site.camera_uuid
    prefixes = paths + ["/", "/api/users/1", f"/api/cameras/{u}/main/view.mp4",
                        f"/api/cameras/{u}/main/view.m4s.txt", "/js/", "/api/x"]
    query = st.lists(st.tuples(st.sampled_from(["s", "ts", "days", "startTime90k",
                                                "endTime90k", "split90k", "x"]), param),
                     max_size=3)
    body = st.one_of(st.none(), st.binary(max_size=200),
                     st.dictionaries(st.sampled_from(["username", "password", "csrf", "user",
                                                      "update", "precondition", "signalIds",
                                                      "states", "start", "end"]) | text,
                                     value, max_size=4))

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(method=st.sampled_from(["GET", "HEAD", "POST", "PATCH", "DELETE", "PUT"]),
           prefix=st.sampled_from(prefixes), suffix=text, q=query, body=body,
           who=st.sampled_from([None, "viewer", "admin"]),
           hdrs=st.dictionaries(st.sampled_from(["Range", "If-None-Match", "Forwarded",
                                                 "X-Forwarded-For", "Origin", "Cookie",
                                                 "Content-Type", "If-Range"]),
                                (text | st.sampled_from(HUGE_PARAMS)).map(
                                    lambda s: s.encode("latin-1", "replace")
                                    .decode("latin-1")), max_size=3))
    def one(method, prefix, suffix, q, body, who, hdrs):
        path = _fuzz_url(prefix, suffix, q)
        if method == "DELETE" and who == "admin":
            return  # don't delete the users the other examples log in as
        h = {k: v for k, v in hdrs.items() if "\r" not in v and "\n" not in v}
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else _json_with_huge_numbers(body)
            h.setdefault("Content-Type", "application/json")
        if who:
            h["Cookie"] = f"s={cookies[who]}"
        status = _fuzz_send(site.proxy, method, path, h, data)
        assert status < 500, (method, path, h, body, status)

    one()
    # Still serving, and the users are still there.
    assert site.req("/api/users/", cookie=cookies["admin"])[0] == 200


def test_fuzz_mutations_with_a_valid_csrf_never_500(tmp_path, clocks):
    """Bodies that pass the CSRF check, so they reach each mutation's own parsing: user
    creation and updates (names, passwords, preferences), signals, login. Afterwards
    GET /api/ and the user list are still strict JSON (nothing non-finite was stored)."""
    from hypothesis import HealthCheck, given, settings
    st, text, value, param = _fuzz_strategies()
    t = make_testdb(tmp_path, clocks)
    admin_id = t.db.add_user("admin", password_hash=auth.hash_password("admin-password"),
                             permissions=auth.Permissions.all())
    target = t.db.add_user("target", password_hash=auth.hash_password("target-password"))
    srv = web.Server(t.db, nvr.Config("unused", None, [nvr.Bind(("ipv4", "127.0.0.1:0"))]),
                     signals=signalsmod.Signals(t.db))
    srv.start()
    port = srv.addresses[0][1]
    cookie, _ = srv.auth.make_session(admin_id, auth.Client(), flags=auth.FLAG_HTTP_ONLY)
    h = {"Cookie": f"s={cookie}", "Content-Type": "application/json"}
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/api/", headers=h)
    csrf = json.loads(c.getresponse().read())["user"]["session"]["csrf"]
    c.close()
    user_keys = st.sampled_from(["username", "disabled", "preferences", "password",
                                 "permissions"]) | text
    typed = st.fixed_dictionaries({}, optional={
        "username": text, "password": text | st.none(), "disabled": st.booleans(),
        "preferences": st.dictionaries(text, value, max_size=3),
        "permissions": st.dictionaries(st.sampled_from(["viewVideo", "adminUsers"]) | text,
                                       value, max_size=2)})
    subset = typed | st.dictionaries(user_keys, value, max_size=3) | value
    bodies = st.one_of(
        st.tuples(st.just("POST"), st.just("/api/users/"),
                  st.fixed_dictionaries({"user": subset})),
        st.tuples(st.just("PATCH"), st.just(f"/api/users/{target}"),
                  st.fixed_dictionaries({}, optional={"update": subset,
                                                      "precondition": subset})),
        st.tuples(st.just("POST"), st.just("/api/signals"),
                  st.dictionaries(st.sampled_from(["signalIds", "states", "start", "end"]),
                                  value, max_size=4)),
        st.tuples(st.just("POST"), st.just("/api/login"),
                  st.dictionaries(st.sampled_from(["username", "password"]), value,
                                  max_size=2)))

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(case=bodies)
    def one(case):
        method, path, body = case
        if path != "/api/login":
            body = {"csrf": csrf, **body}
        status = _fuzz_send(port, method, path, h, _json_with_huge_numbers(body))
        assert status < 500, (method, path, body, status)

    try:
        one()
        for path in ("/api/", "/api/users/"):
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            c.request("GET", path, headers=h)
            r = c.getresponse()
            assert r.status == 200, path
            _strict_json(r.read())
            c.close()
    finally:
        srv.stop()
        t.db.close()


def test_204_has_no_content_length_and_permissions_must_be_booleans(site, cookies):
    admin = cookies["admin"]
    status, h, body = site.req("/api/login", method="POST",
                               body={"username": "viewer", "password": PASSWORDS["viewer"]})
    assert status == 204 and "Content-Length" not in h and "Content-Type" not in h
    status, _, body = site.req("/api/users/", method="POST", cookie=admin, body={
        "csrf": site.csrf(admin), "user": {"username": "d", "permissions": {"viewVideo": "false"}}})
    assert status == 400 and b"permission viewVideo must be true or false" in body
    status, _, body = site.req("/api/users/", method="POST", cookie=admin, body={
        "csrf": site.csrf(admin), "user": {"username": "tab\there"}})
    assert status == 400 and \
        b"user.username 'tab\\there' must not contain control characters or line breaks" in body
    assert all(u.username != "tab\there" for u in site.db.users.values())
    status, _, body = site.req(f"/api/users/{site.user_ids['viewer']}", method="PATCH",
                               cookie=admin, body={"csrf": site.csrf(admin),
                                                   "update": {"password": ""}})
    assert status == 400 and b"must not be empty (null clears it)" in body


def test_password_precondition_is_throttled_like_a_login(site):
    me = site.login("noperm")
    uid = site.user_ids["noperm"]
    body = lambda pw: {"csrf": site.csrf(me), "update": {"password": "x" * 10},  # noqa: E731
                       "precondition": {"password": pw}}
    for _ in range(auth.Throttle.FREE_FAILURES):
        assert site.req(f"/api/users/{uid}", method="PATCH", cookie=me,
                        body=body("wrong"))[0] == 412
    status, h, _ = site.req(f"/api/users/{uid}", method="PATCH", cookie=me,
                            body=body(PASSWORDS["noperm"]))
    assert status == 429 and h["Retry-After"] == "1"
    site.server.auth.throttle.succeeded(["user:noperm", "addr:127.0.0.1"])
    assert site.db.users[uid].password_failure_count >= auth.Throttle.FREE_FAILURES


def test_read_only_server_refuses_writes_with_503(tmp_path, clocks):
    t = make_testdb(tmp_path, clocks)
    t.db.add_user("r", password_hash=auth.hash_password("r-password"),
                  permissions=auth.Permissions.all())
    a = auth.Auth(t.db)
    cookie, _ = a.make_session(t.db.user_by_name("r").id, auth.Client(),
                               flags=auth.FLAG_HTTP_ONLY)
    t.db.close()
    import db as dbmod
    ro = dbmod.Database.open_dir(t.db_dir, clocks, read_only=True)
    srv = web.Server(ro, nvr.Config("unused", None, [nvr.Bind(("ipv4", "127.0.0.1:0"))]))
    srv.start()
    try:
        port = srv.addresses[0][1]
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("GET", "/api/", headers={"Cookie": f"s={cookie}"})
        r = c.getresponse()
        csrf = json.loads(r.read())["user"]["session"]["csrf"]
        for method, path, body in (("POST", "/api/logout", {"csrf": csrf}),
                                   ("POST", "/api/login", {"username": "r",
                                                           "password": "r-password"}),
                                   ("POST", "/api/users/", {"csrf": csrf,
                                                            "user": {"username": "n"}})):
            c.request(method, path, body=json.dumps(body),
                      headers={"Cookie": f"s={cookie}", "Content-Type": "application/json"})
            r = c.getresponse()
            assert (r.status, r.read()) == (503, b"this server runs with --read-only; that "
                                                 b"needs a writable database"), path
        c.request("GET", "/api/", headers={"Cookie": f"s={cookie}"})
        assert c.getresponse().status == 200   # still logged in: nothing half-done
        c.close()
    finally:
        srv.stop()
        ro.close()


# --- issue 19 item 2: no input produces a 5xx --------------------------------------------------

def _strict_json(data: bytes):
    """JSON.parse's view: NaN/Infinity make the whole document invalid."""
    def refuse(name):
        raise ValueError(f"{name} in a response: not JSON")
    return json.loads(data, parse_constant=refuse)


def _raw(site, method, path, raw: bytes, cookie=None, port=None):
    """`raw` as the body, byte for byte (no json.dumps on our side)."""
    h = {"Content-Type": "application/json"}
    if cookie:
        h["Cookie"] = f"s={cookie}"
    return site.req(path, method=method, body=raw, headers=h, port=port)


@pytest.mark.parametrize("raw,says", [
    (rb'{"username":"lat","password":"\ud800"}', b"password: lone surrogate"),
    (rb'{"username":"\udfff","password":"x"}', b"username: lone surrogate"),
    # The same code point as raw (invalid) UTF-8; json.loads(bytes) would let it through.
    (b'{"username":"lat","password":"\xed\xa0\x80"}', b"not UTF-8"),
    (b'{"username":"lat","password":"\xff"}', b"not UTF-8"),
    (rb'{"username":"lat","password":NaN}', b"password: not a finite number"),
    (b'{"username":"lat","password":' + b"1" * 5000 + b"}", b"password: integer of 5000"),
], ids=["escaped-surrogate", "escaped-low-surrogate", "utf8-surrogate", "invalid-utf8", "nan",
        "5000-digits"])
def test_login_body_that_cannot_be_text_is_400_not_500(site, caplog, raw, says):
    # Before the fix: 500 with a traceback (UnicodeEncodeError in the hasher), before the
    # attempt was counted, so throttling never applied and the log could be flooded.
    status, _, body = _raw(site, "POST", "/api/login", raw)
    assert status == 400 and says in body, (status, body)
    assert "Traceback" not in caplog.text and "failed" not in caplog.text


def test_user_names_passwords_and_csrf_with_lone_surrogates_are_400(site, cookies, caplog):
    # Before the fix each of these was a 500 (encoding the string for the database, the
    # hasher or the CSRF comparison).
    admin = cookies["admin"]
    csrf = site.csrf(admin)
    vid = site.user_ids["viewer"]
    cases = [
        ("POST", "/api/users/", '{"csrf":"%s","user":{"username":"\\ud800"}}' % csrf,
         b"user.username: lone surrogate"),
        ("POST", "/api/users/",
         '{"csrf":"%s","user":{"username":"x19","password":"a\\udc00b"}}' % csrf,
         b"user.password: lone surrogate"),
        ("PATCH", f"/api/users/{vid}", '{"csrf":"%s","update":{"password":"\\ud800"}}' % csrf,
         b"update.password: lone surrogate"),
        ("PATCH", f"/api/users/{vid}",
         '{"csrf":"%s","precondition":{"username":"\\ud800"}}' % csrf,
         b"precondition.username: lone surrogate"),
        ("POST", "/api/logout", '{"csrf":"\\ud800"}', b"csrf: lone surrogate"),
    ]
    for method, path, raw, says in cases:
        status, _, body = _raw(site, method, path, raw.encode(), cookie=admin)
        assert status == 400 and says in body, (path, raw, status, body)
    assert "Traceback" not in caplog.text
    with site.db.locked("test"):
        assert not any(u.username == "x19" for u in site.db.users.values())
    assert site.req("/api/", cookie=admin)[0] == 200   # the logout didn't happen


@pytest.mark.parametrize("s", ["0" * 5000, "0" * 4301 + "1", "1-" + "0" * 5000,
                               "1." + "0" * 5000 + "-", "1@" + "0" * 31],
                         ids=["zeros", "zeros-1", "end-id", "rel-start", "open-id"])
def test_s_parameter_with_thousands_of_leading_zeros_is_400(site, cookies, s):
    # Before the fix: 500, as the length check measured the number after stripping the
    # zeros and int() then refused over 4300 digits.
    path = f"/api/cameras/{site.camera_uuid}/main/view.mp4?s={s}"
    status, _, body = site.req(path, cookie=cookies["viewer"])
    assert status == 400 and b"too large" in body, (status, body[:200])


@pytest.mark.parametrize("param", ["startTime90k", "endTime90k", "split90k"])
@pytest.mark.parametrize("value", ["0" * 5000, "9" * 5000, "-" + "0" * 4400, "+5", "5_0",
                                   "\u0665"], ids=["zeros", "nines", "minus-zeros", "plus",
                                                   "underscore", "arabic-digit"])
def test_numeric_parameters_are_checked_on_what_is_converted(site, cookies, param, value):
    import urllib.parse
    path = (f"/api/cameras/{site.camera_uuid}/main/recordings?"
            + urllib.parse.urlencode({param: value}))
    status, _, body = site.req(path, cookie=cookies["viewer"])
    assert status == 400 and param.encode() in body, (status, body[:200])


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e999"])
def test_non_finite_preferences_are_refused_and_never_echoed(site, cookies, number):
    # Before the fix: stored, then GET /api/ and admins' GET /api/users/ emitted NaN,
    # which isn't JSON: the UI's Users page broke for every admin.
    viewer = cookies["viewer"]
    csrf = site.csrf(viewer)
    vid = site.user_ids["viewer"]
    raw = b'{"csrf":"%s","update":{"preferences":{"zoom":%s}}}' % (csrf.encode(), number)
    status, _, body = _raw(site, "PATCH", f"/api/users/{vid}", raw, cookie=viewer)
    assert status == 400 and b"update.preferences.zoom: not a finite number" in body, body
    for path, who in (("/api/", viewer), ("/api/users/", cookies["admin"])):
        status, _, body = site.req(path, cookie=who)
        assert status == 200
        _strict_json(body)


def test_a_stored_non_finite_value_goes_out_as_null(site, cookies, caplog):
    """A database written before NaN was refused may hold one: the user list still
    answers, with null in its place (sanitized on output, with a warning)."""
    nid = site.user_ids["noperm"]
    with site.db.locked("test"):
        old = dict(site.db.users[nid].config)
    site.db.update_user(nid, config={**old, "preferences": {"zoom": float("nan"),
                                                             "x": [float("inf"), 1.5]}})
    try:
        status, _, body = site.req("/api/users/", cookie=cookies["admin"])
        assert status == 200, body
        users = {u["id"]: u["user"] for u in _strict_json(body)["users"]}
        assert users[nid]["preferences"] == {"zoom": None, "x": [None, 1.5]}
        status, _, body = site.req("/api/", cookie=cookies["noperm"])
        assert status == 200 and _strict_json(body)["user"]["preferences"]["zoom"] is None
        assert "NaN or Infinity" in caplog.text
    finally:
        site.db.update_user(nid, config=old)


def test_json_body_parser_names_the_field():
    cases = [
        (rb'{"password":"\ud800"}', "password: lone surrogate"),
        (rb'{"update":{"preferences":{"zoom":NaN}}}',
         "update.preferences.zoom: not a finite number"),
        (rb'{"states":[1,2,1e400]}', "states[2]: not a finite number"),
        (rb'{"a":{"\udc00":1}}', "a.'\\udc00': lone surrogate in a key"),
        (b'{"start":' + b"9" * 31 + b"}", "start: integer of 31 digits is too large"),
        (b"[" * 33 + b"]" * 33, "nests arrays and objects more than 32 deep"),
        (b'"\xed\xa0\x80"', "not UTF-8"),
    ]
    for raw, says in cases:
        with pytest.raises(api.HttpError) as e:
            api.parse_json_body(raw)
        assert e.value.status == 400 and says in e.value.message, (raw, e.value.message)
    assert api.parse_json_body(b"[" * 32 + b"]" * 32) is not None
    assert api.parse_json_body(rb'{"a":"\ud83d\ude00","n":-1.5e300,"i":' + b"9" * 30 + b"}") \
        == {"a": "\U0001F600", "n": -1.5e300, "i": int("9" * 30)}
