"""How sessions end and what they may do (auth.py, the session routes of api.py), and the
rules for user names (auth.check_username, for the API and `nvr.py config user`).

Issue 19 came from an attack on a running nvr; each of its findings is a test here:
a demoted admin kept adminUsers on its session (and made a new admin account); setting
or clearing a password left the user's sessions valid; a disabled user's sessions came
back when it was re-enabled; cookies never expired, and only deleting the user could
cut off a stolen one while nvr ran; `Admin`, `admin `, Cyrillic `аdmin`, names with
zero-width or right-to-left-override characters, and a 60,000-character name were all
taken next to `admin`."""

import http.client
import io
import json
import re

import pytest

import api
import auth
import db as dbmod
import nvr
import web
from conftest import START_NS, make_testdb

DAY_NS = 86400 * 10**9
PASSWORDS = {"admin": "admin-password", "alice": "alice-password"}


class Site:
    """A database with two users (admin: every permission; alice: viewVideo) and a server
    with one bind that grants nothing without a login."""

    def __init__(self, t, clocks, srv):
        self.t, self.db, self.clocks, self.srv = t, t.db, clocks, srv
        self.port = srv.addresses[0][1]
        self.ids = {u.username: u.id for u in t.db.users.values()}

    def req(self, path, *, method="GET", body=None, cookie=None):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        h = {}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        if cookie:
            h["Cookie"] = f"s={cookie}"
        c.request(method, path, body=data, headers=h)
        r = c.getresponse()
        out = r.status, r.headers, r.read()
        c.close()
        return out

    def login(self, user, password=None):
        status, h, body = self.req("/api/login", method="POST", body={
            "username": user, "password": password or PASSWORDS[user]})
        assert status == 204, body
        self.clocks.advance(10**9)   # sessions are ordered by creation time (in seconds)
        return re.match(r"s=([^;]+);", h["Set-Cookie"])[1]

    def csrf(self, cookie):
        status, _, body = self.req("/api/", cookie=cookie)
        assert status == 200, body
        return json.loads(body)["user"]["session"]["csrf"]

    def change(self, method, path, cookie, body=None):
        """A mutation with the session's CSRF token; returns (status, body)."""
        body = dict(body or {}, csrf=self.csrf(cookie))
        status, _, text = self.req(path, method=method, body=body, cookie=cookie)
        return status, text

    def ok(self, cookie) -> bool:
        """Whether the session is still accepted."""
        status = self.req("/api/", cookie=cookie)[0]
        assert status in (200, 401)
        return status == 200

    def permissions(self, cookie) -> dict:
        status, _, body = self.req("/api/", cookie=cookie)
        assert status == 200, body
        return json.loads(body)["permissions"]

    def revocations(self, user) -> list:
        """(reason, detail) of the user's sessions, oldest first (None: valid)."""
        return [tuple(r) for r in self.db.conn.execute(
            "select revocation_reason, revocation_reason_detail from user_session "
            "where user_id = ? order by creation_time_sec", (self.ids[user],))]


def make_site(tmp_path, clocks, config=None):
    t = make_testdb(tmp_path, clocks)
    for name, perms in (("admin", auth.Permissions.all()),
                        ("alice", auth.Permissions(view_video=True))):
        t.db.add_user(name, password_hash=auth.hash_password(PASSWORDS[name]), permissions=perms)
    config = config or nvr.Config("unused", None, [])
    config.binds = [nvr.Bind(("ipv4", "127.0.0.1:0"))]
    srv = web.Server(t.db, config)
    srv.start()
    return Site(t, clocks, srv)


@pytest.fixture
def site(tmp_path, clocks):
    s = make_site(tmp_path, clocks)
    yield s
    s.srv.stop()
    s.db.close()


def patch_user(site, cookie, user, update, precondition=None):
    body = {"update": update}
    if precondition is not None:
        body["precondition"] = precondition
    return site.change("PATCH", f"/api/users/{site.ids[user]}", cookie, body)[0]


# --- permissions: a session has at most its user's --------------------------------------

def test_a_demoted_admin_loses_adminusers_at_once(site):
    """The attack: alice, an admin, was demoted to viewVideo, and her existing session
    still created an admin account. (Failed before: 200 and the account made.)"""
    admin = site.login("admin")
    assert patch_user(site, admin, "alice", {"permissions": auth.Permissions.all().to_json()}) \
        == 204
    alice = site.login("alice")
    assert site.permissions(alice)["adminUsers"] is True
    assert patch_user(site, admin, "alice", {"permissions": {"viewVideo": True}}) == 204
    assert site.permissions(alice) == {"viewVideo": True, "readCameraConfigs": False,
                                       "updateSignals": False, "adminUsers": False,
                                     "configureCameras": False, "protectRecordings": False}
    listed = json.loads(site.req(f"/api/users/{site.ids['alice']}/sessions", cookie=admin)[2])
    assert listed["sessions"][0]["permissions"] == site.permissions(alice)
    status, text = site.change("POST", "/api/users/", alice, {"user": {
        "username": "mallory", "password": "mallory-password",
        "permissions": auth.Permissions.all().to_json()}})
    assert status == 403 and b"adminUsers" in text, text
    assert "mallory" not in [u.username for u in site.db.users.values()]
    assert site.req("/api/users/", cookie=alice)[0] == 403
    # The session itself is still good for what alice may still do.
    assert site.ok(alice)
    # Adding a permission back applies to new sessions; a session made while demoted
    # doesn't gain it.
    demoted = site.login("alice")
    assert patch_user(site, admin, "alice", {"permissions": auth.Permissions.all().to_json()}) \
        == 204
    assert site.permissions(demoted)["adminUsers"] is False
    assert site.permissions(site.login("alice"))["adminUsers"] is True


def test_effective_permissions_are_the_intersection():
    s = auth.Session(hash=b"", user_id=1, seed=b"", flags=0, domain=None, description=None,
                     creation_password_id=None, creation_time_sec=0, creation_user_agent=None,
                     creation_peer_addr=None,
                     permissions=auth.Permissions(view_video=True, admin_users=True))
    u = dbmod.User(1, "u", {}, None, 0, 0, auth.Permissions(view_video=True, update_signals=True))
    assert auth.effective_permissions(s, u) == auth.Permissions(view_video=True)


# --- passwords and disabling end sessions --------------------------------------------------

def test_changing_ones_own_password_revokes_ones_other_sessions(site):
    """(Failed before: the other session stayed valid.)"""
    here, there = site.login("alice"), site.login("alice")
    assert patch_user(site, here, "alice", {"password": "alice-password-2"},
                      {"password": "alice-password"}) == 204
    assert site.ok(here)            # the session that changed it stays
    assert not site.ok(there)
    assert site.revocations("alice")[1][0] == auth.REVOKED_PASSWORD_CHANGE
    assert site.revocations("alice")[0] == (None, None)


def test_an_admin_setting_or_clearing_a_password_revokes_all_the_users_sessions(site):
    """(Failed before: alice's sessions survived both.)"""
    admin = site.login("admin")
    one, two = site.login("alice"), site.login("alice")
    assert patch_user(site, admin, "alice", {"password": "new-alice-password"}) == 204
    assert not site.ok(one) and not site.ok(two)
    assert site.ok(admin)   # another user's change: the admin's own session stays
    assert [r[0] for r in site.revocations("alice")] == [auth.REVOKED_PASSWORD_CHANGE] * 2
    assert site.revocations("alice")[0][1].startswith("password set by user 'admin'")
    three = site.login("alice", "new-alice-password")
    assert patch_user(site, admin, "alice", {"password": None}) == 204
    assert not site.ok(three)
    assert site.revocations("alice")[2][1].startswith("password cleared by user 'admin'")
    # An admin changing their own password keeps the session it used, ends the rest.
    other = site.login("admin")
    assert patch_user(site, admin, "admin", {"password": "admin-password-2"}) == 204
    assert site.ok(admin) and not site.ok(other)


def test_disabling_revokes_and_reenabling_does_not_restore(site):
    """(Failed before: re-enabling brought the session back.)"""
    admin = site.login("admin")
    alice = site.login("alice")
    assert patch_user(site, admin, "alice", {"disabled": True}) == 204
    assert not site.ok(alice)
    assert patch_user(site, admin, "alice", {"disabled": False}) == 204
    assert not site.ok(alice)
    admin_sid = site.srv.auth.list_sessions(site.ids["admin"])[0].id_text
    assert site.revocations("alice") == [
        (auth.REVOKED_USER_DISABLED,
         f"user disabled by user 'admin' (id {site.ids['admin']}), session {admin_sid}")]
    assert site.ok(site.login("alice"))


def test_reenabling_revokes_sessions_an_older_version_left(site):
    """A user disabled by an older nvr kept its (refused) sessions; enabling it must not
    bring them back."""
    alice = site.login("alice")
    u = site.db.users[site.ids["alice"]]
    site.db.update_user(u.id, config={"disabled": True})   # as the older version did
    assert not site.ok(alice)
    admin = site.login("admin")
    assert patch_user(site, admin, "alice", {"disabled": False}) == 204
    assert not site.ok(alice)
    assert site.revocations("alice")[0][0] == auth.REVOKED_USER_DISABLED


def test_cli_password_and_disable_revoke_sessions(tmp_path, clocks, capsys):
    """`nvr.py config user edit` with a password, --clear-password or --disable.
    (Failed before: every session stayed valid.)"""
    t = make_testdb(tmp_path, clocks)
    uid = t.db.add_user("bob", password_hash=auth.hash_password("bob-password"),
                        permissions=auth.Permissions(view_video=True))
    a = auth.Auth(t.db)
    for _ in range(6):
        a.make_session(uid, auth.Client(), flags=0)
        clocks.advance(10**9)
    t.db.close()

    assert nvr.main(["config", "user", "edit", "bob", "--password", "bob-password-2",
                     "--db-dir", t.db_dir]) == 0
    assert "revoked 6 session(s)" in capsys.readouterr().out
    d = dbmod.Database.open_dir(t.db_dir, clocks)
    a = auth.Auth(d)
    assert {s.revocation_reason for s in a.list_sessions(uid)} == {auth.REVOKED_PASSWORD_CHANGE}
    assert a.list_sessions(uid)[0].revocation_reason_detail == \
        "password set by nvr.py config user edit"
    a.make_session(uid, auth.Client(), flags=0)
    clocks.advance(10**9)
    d.close()
    assert nvr.main(["config", "user", "edit", "bob", "--clear-password",
                     "--db-dir", t.db_dir]) == 0
    d = dbmod.Database.open_dir(t.db_dir, clocks)
    a = auth.Auth(d)
    assert a.list_sessions(uid)[-1].revocation_reason == auth.REVOKED_PASSWORD_CHANGE
    a.make_session(uid, auth.Client(), flags=0)
    clocks.advance(10**9)
    d.close()
    assert nvr.main(["config", "user", "edit", "bob", "--disable", "--db-dir", t.db_dir]) == 0
    d = dbmod.Database.open_dir(t.db_dir, clocks)
    try:
        assert auth.Auth(d).list_sessions(uid)[-1].revocation_reason == \
            auth.REVOKED_USER_DISABLED
    finally:
        d.close()
    # Renaming or changing permissions ends nothing.
    assert nvr.main(["config", "user", "edit", "bob", "--enable", "--db-dir", t.db_dir]) == 0
    d = dbmod.Database.open_dir(t.db_dir, clocks)
    a = auth.Auth(d)
    a.make_session(uid, auth.Client(), flags=0)
    clocks.advance(10**9)
    d.close()
    assert nvr.main(["config", "user", "edit", "bob", "--rename", "robert", "--permissions",
                     "none", "--db-dir", t.db_dir]) == 0
    d = dbmod.Database.open_dir(t.db_dir, clocks)
    try:
        assert auth.Auth(d).list_sessions(uid)[-1].revocation_reason is None
    finally:
        d.close()


def test_a_login_racing_a_password_change_makes_no_session(site, monkeypatch):
    """A login checked against the old password while an admin changed it must not
    leave a session made after the change (and so not revoked by it)."""
    a, uid = site.srv.auth, site.ids["alice"]
    real = auth.verify_password

    def verify_then_change(h, p):
        ok = real(h, p)
        a.update_user(uid, password_hash=auth.hash_password("changed-meanwhile"))
        return ok
    monkeypatch.setattr(auth, "verify_password", verify_then_change)
    with pytest.raises(auth.AuthError, match="password changed while logging in"):
        a.login_by_password("alice", "alice-password", auth.Client())
    assert a.list_sessions(uid) == []


# --- expiry ---------------------------------------------------------------------------------

def test_sessions_expire_when_idle_and_at_their_lifetime(site):
    """(Failed before: a session lasted forever.)"""
    busy, idle = site.login("alice"), site.login("alice")
    site.clocks.advance(89 * DAY_NS)
    assert site.ok(busy)
    site.clocks.advance(2 * DAY_NS)          # idle: 91 days unused
    assert not site.ok(idle)
    assert site.revocations("alice")[1] == (auth.REVOKED_EXPIRED, "unused for over 90 day(s)")
    for _ in range(3):                       # used every 89 days: lasts...
        assert site.ok(busy)
        site.clocks.advance(89 * DAY_NS)
    assert site.ok(busy)                     # 356 days old
    site.clocks.advance(9 * DAY_NS)          # ... until a year old
    assert not site.ok(busy)
    assert site.revocations("alice")[0] == (auth.REVOKED_EXPIRED, "made over 365 day(s) ago")
    assert site.ok(site.login("alice"))


def test_session_state_and_expiry_without_a_use(site):
    a = site.srv.auth
    _, s = a.make_session(site.ids["alice"], auth.Client(), flags=0)
    now = s.creation_time_sec
    assert a.session_state(s, now) == "valid"
    assert a.expires_sec(s) == now + 90 * 86400
    assert a.session_state(s, now + 90 * 86400) == "expired (unused for over 90 day(s))"
    assert s.revocation_reason is None       # not written until used


def test_session_limits_come_from_the_config(tmp_path, clocks):
    config = nvr.parse_config("sessionIdleDays = 1\nsessionLifetimeDays = 2.5\n", "t")
    assert config.session_limits == auth.SessionLimits(86400, 216000)
    site = make_site(tmp_path, clocks, config)
    try:
        _, h, _ = site.req("/api/login", method="POST",
                           body={"username": "alice", "password": PASSWORDS["alice"]})
        assert "; Max-Age=216000; " in h["Set-Cookie"]
        cookie = re.match(r"s=([^;]+);", h["Set-Cookie"])[1]
        clocks.advance(DAY_NS - 10**9)
        assert site.ok(cookie)
        clocks.advance(DAY_NS)
        assert not site.ok(cookie)
    finally:
        site.srv.stop()
        site.db.close()
    unlimited = nvr.parse_config("sessionIdleDays = 0\nsessionLifetimeDays = 0\n", "t")
    assert unlimited.session_limits == auth.SessionLimits(0, 0)
    assert unlimited.session_limits.cookie_max_age == 2 ** 31
    assert nvr.parse_config("", "t").session_limits == auth.SessionLimits(90 * 86400,
                                                                          365 * 86400)


@pytest.mark.parametrize("text,message", [
    ("sessionIdleDays = -1", "sessionIdleDays must be a number of days from 0 (no limit) "
                             "to 36500, not -1"),
    ('sessionLifetimeDays = "1y"', "sessionLifetimeDays must be a number of days"),
    ("sessionLifetimeDays = true", "sessionLifetimeDays must be a number of days"),
    ("sessionLifetimeDays = inf", "sessionLifetimeDays must be a number of days"),
    ("sessionLifetimeDays = nan", "sessionLifetimeDays must be a number of days"),
    ("sessionIdleDays = 0.0001", "under a minute"),
    ("sessionIdleSec = 5", "unknown key 'sessionIdleSec'"),
])
def test_bad_session_limits_are_one_line_errors(text, message):
    with pytest.raises(nvr.UsageError) as e:
        nvr.parse_config(text, "t")
    assert message in str(e.value)


def test_cookie_max_age_is_the_session_lifetime(site):
    _, h, _ = site.req("/api/login", method="POST",
                       body={"username": "alice", "password": PASSWORDS["alice"]})
    assert re.fullmatch(r"s=[A-Za-z0-9+/]{64}; HttpOnly; SameSite=Lax; Max-Age=31536000; "
                        r"Path=/", h["Set-Cookie"]), h["Set-Cookie"]


# --- listing and revoking through the API --------------------------------------------------

def test_users_list_and_revoke_their_sessions_and_admins_anyones(site):
    """The online way to cut off a stolen cookie. (Failed before: no such routes, 404.)"""
    alice, stolen = site.login("alice"), site.login("alice")
    aid, admin_id = site.ids["alice"], site.ids["admin"]
    status, _, body = site.req(f"/api/users/{aid}/sessions", cookie=alice)
    assert status == 200, body
    sessions = json.loads(body)["sessions"]
    assert [s["current"] for s in sessions] == [True, False]
    assert all(s["state"] == "valid" and re.fullmatch(r"[0-9a-f]{16}", s["id"])
               for s in sessions)
    # Unused for 90 days from now (this request used it) ends it.
    now = site.clocks.realtime() // 10**9
    assert sessions[0]["expiresTime90k"] == (now + 90 * 86400) * 90000
    assert sessions[1]["expiresTime90k"] == (START_NS // 10**9 + 1 + 90 * 86400) * 90000
    assert sessions[0]["permissions"]["viewVideo"] is True
    assert set(sessions[0]) >= {"creationTime90k", "lastUseTime90k", "useCount",
                                "creationPeerAddr", "lastUseUserAgent"}
    # Nothing in it is the cookie, the stored hash, the seed or the CSRF token.
    hashes = [bytes(h).hex() for (h,) in site.db.conn.execute(
        "select session_id_hash from user_session")]
    for secret in [alice, stolen, site.csrf(alice), site.csrf(stolen)] + hashes:
        assert secret not in body.decode()
    assert all(len(s["id"]) == 16 and any(h.startswith(s["id"]) for h in hashes)
               for s in sessions)

    path = f"/api/users/{aid}/sessions/{sessions[1]['id']}/revoke"
    # CSRF on the mutation.
    assert site.req(path, method="POST", body={}, cookie=alice)[0] == 400
    assert site.req(path, method="POST", body={"csrf": site.csrf(stolen)}, cookie=alice)[0] \
        == 400
    assert site.ok(stolen)
    assert site.change("POST", path, alice) == (204, b"")
    assert not site.ok(stolen) and site.ok(alice)
    assert site.revocations("alice")[1][0] == auth.REVOKED_BY_USER
    assert len(json.loads(site.req(f"/api/users/{aid}/sessions", cookie=alice)[2])
               ["sessions"]) == 1
    ended = json.loads(site.req(f"/api/users/{aid}/sessions?ended=true", cookie=alice)[2])
    assert ended["sessions"][1]["state"] == "revoked"
    assert ended["sessions"][1]["revocationReason"] == auth.REVOKED_BY_USER
    assert ended["sessions"][1]["revocationReasonText"] == "revoked by its user"
    # Again: nothing more happens.
    assert site.change("POST", path, alice)[0] == 204

    # Not another user's, without adminUsers; not at all without a login.
    admin = site.login("admin")
    admin_sid = json.loads(site.req(f"/api/users/{admin_id}/sessions", cookie=admin)[2]
                           )["sessions"][0]["id"]
    assert site.req(f"/api/users/{admin_id}/sessions", cookie=alice)[0] == 403
    assert site.change("POST", f"/api/users/{admin_id}/sessions/{admin_sid}/revoke",
                       alice)[0] == 403
    assert site.req(f"/api/users/{aid}/sessions")[0] == 401
    assert site.ok(admin)
    # An admin lists and revokes alice's.
    listed = json.loads(site.req(f"/api/users/{aid}/sessions", cookie=admin)[2])["sessions"]
    assert [s["current"] for s in listed] == [False]
    assert site.change("POST", f"/api/users/{aid}/sessions/{listed[0]['id']}/revoke",
                       admin)[0] == 204
    assert not site.ok(alice)
    assert site.revocations("alice")[0][0] == auth.REVOKED_BY_ADMIN
    # Unknown ones.
    assert site.change("POST", f"/api/users/{aid}/sessions/{'0' * 16}/revoke", admin)[0] == 404
    assert site.req("/api/users/999/sessions", cookie=admin)[0] == 404
    assert site.req(f"/api/users/{aid}/sessions?ended=maybe", cookie=admin)[0] == 400


def test_expired_sessions_are_listed_as_such(site):
    alice = site.login("alice")
    admin = site.login("admin")
    site.clocks.advance(60 * DAY_NS)
    assert site.ok(admin)
    site.clocks.advance(31 * DAY_NS)
    assert site.ok(admin)
    got = json.loads(site.req(f"/api/users/{site.ids['alice']}/sessions?ended=true",
                              cookie=admin)[2])["sessions"]
    assert [(s["state"], s.get("expiry")) for s in got] == [
        ("expired", "unused for over 90 day(s)")]
    assert not site.ok(alice)


# --- user names --------------------------------------------------------------------------

BAD_NAMES = [
    ("Admin", 412, "a user named 'Admin' already exists as 'admin'"),
    ("ADMIN", 412, "already exists as 'admin'"),
    ("\uff41\uff44\uff4d\uff49\uff4e", 412, "already exists as 'admin'"),   # fullwidth
    ("admin ", 400, "must not begin or end with a space"),
    (" admin", 400, "must not begin or end with a space"),
    ("\u0430dmin", 400, "mixes scripts (Cyrillic, Latin)"),                 # Cyrillic а
    ("ad\u200bmin", 400, "invisible formatting characters (U+200B ZERO WIDTH SPACE"),
    ("\u202eadmin", 400, "invisible formatting characters (U+202E RIGHT-TO-LEFT OVERRIDE"),
    ("ad\ufeffmin", 400, "invisible formatting characters (U+FEFF"),
    ("a" * 60000, 400, "is 60000 characters long; at most 64"),
    ("a" * 65, 400, "is 65 characters long; at most 64"),
    ("ad\u0378min", 400, "unassigned code points (U+0378)"),
    ("ad\ue000min", 400, "surrogate or private-use code points (U+E000)"),
    ("ad\nmin", 400, "control characters or line breaks"),
    ("", 400, "must not be empty"),
]
def _name_id(v):
    """Short test ids: a 60,000-character name would be its own id otherwise."""
    if isinstance(v, str) and len(v) > 20:
        return f"{v[:8]}...({len(v)} chars)"
    return None


GOOD_NAMES = ["José", "Zoë Ünal", "山田たろう", "山田タロウ", "김민준", "Иван", "Δημήτρης",
              "carol/admin", "ana maria", "a" * 64, "x1"]


@pytest.mark.parametrize("name,status,message", BAD_NAMES, ids=_name_id)
def test_api_refuses_bad_user_names(site, name, status, message):
    """(Failed before: each was taken, 200, beside 'admin'.)"""
    admin = site.login("admin")
    before = sorted(u.username for u in site.db.users.values())
    got, text = site.change("POST", "/api/users/", admin, {"user": {"username": name}})
    assert (got, message in text.decode()) == (status, True), text[:300]
    assert text.decode().startswith("user.username " if status == 400 else "a user named ")
    got, text = patch_user(site, admin, "alice", {"username": name}), None
    assert got == status
    assert sorted(u.username for u in site.db.users.values()) == before


def test_api_takes_good_names_in_nfc_and_lets_a_user_change_case(site):
    admin = site.login("admin")
    for name in GOOD_NAMES:
        status, body = site.change("POST", "/api/users/", admin, {"user": {"username": name}})
        assert status == 200, (name, body)
    # Decomposed é is stored composed; the composed name is then taken.
    status, body = site.change("POST", "/api/users/", admin,
                               {"user": {"username": "Rene\u0301", "password": "rene-password"}})
    assert status == 200
    assert site.db.users[json.loads(body)["id"]].username == "Ren\u00e9"
    assert site.change("POST", "/api/users/", admin, {"user": {"username": "REN\u00c9"}})[0] == 412
    # Logging in as either form works (looked up as stored, else in NFC); not another case.
    PASSWORDS["René"] = "rene-password"
    site.login("Ren\u00e9", "rene-password")
    site.login("Rene\u0301", "rene-password")
    assert site.req("/api/login", method="POST", body={"username": "RENÉ",
                                                       "password": "rene-password"})[0] == 401
    # A user's own name in another case is not "taken" by itself.
    assert patch_user(site, admin, "alice", {"username": "Alice"}) == 204
    assert patch_user(site, admin, "admin", {"username": "ana\u00a0maria"}) == 412


@pytest.mark.parametrize("name,status,message", BAD_NAMES, ids=_name_id)
def test_cli_refuses_bad_user_names(tmp_path, clocks, capsys, name, status, message):
    """`nvr.py config user add` and `edit --rename` apply the same rules (one function).
    (Failed before: each was taken.)"""
    t = make_testdb(tmp_path, clocks)
    t.db.add_user("admin")
    t.db.add_user("bob")
    t.db.close()
    for args in (["add", name], ["edit", "bob", "--rename", name]):
        assert nvr.main(["config", "user", *args, "--db-dir", t.db_dir]) == 1
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err[:300]
        assert err.startswith("error: the user name " if status == 400 else
                              "error: a user named ")
    d = dbmod.Database.open_dir(t.db_dir, clocks, read_only=True)
    try:
        assert sorted(u.username for u in d.users.values()) == ["admin", "bob"]
    finally:
        d.close()


def test_cli_takes_good_names_and_stores_nfc(tmp_path, clocks, capsys):
    t = make_testdb(tmp_path, clocks)
    t.db.close()
    for name in GOOD_NAMES:
        assert nvr.main(["config", "user", "add", name, "--db-dir", t.db_dir]) == 0, name
    assert nvr.main(["config", "user", "add", "Rene\u0301", "--db-dir", t.db_dir]) == 0
    assert capsys.readouterr().out.endswith(": Ren\u00e9\n")
    assert nvr.main(["config", "user", "edit", "Ren\u00e9", "--rename", "RENÉ",
                     "--db-dir", t.db_dir]) == 0   # its own name in another case


def test_names_stored_before_the_rules_still_log_in(tmp_path, clocks):
    t = make_testdb(tmp_path, clocks)
    a = auth.Auth(t.db)
    pw = auth.hash_password("legacy-password")
    for name in ("admin", "Admin", "admin ", "\u0430dmin", "ad\u200bmin", "a" * 60000,
                 "Rene\u0301"):
        t.db.add_user(name, password_hash=pw)
        _, s = a.login_by_password(name, "legacy-password", auth.Client())
        assert t.db.users[s.user_id].username == name
    t.db.close()


def test_check_reports_names_that_break_the_rules(tmp_path, clocks):
    """`nvr.py check` names each such user and its rule, and still calls the database
    clean (they log in)."""
    import check
    t = make_testdb(tmp_path, clocks)
    ids = {name: t.db.add_user(name) for name in (
        "admin", "Admin", "admin ", "\u0430dmin", "ad\u200bmin", "\u202eadmin", "a" * 60000,
        "Rene\u0301", "bob")}
    t.db.close()
    out = io.StringIO()
    assert check.run(t.db_dir, check.Options(), out) == 0
    lines = out.getvalue().splitlines()
    assert lines[-1] == "check: clean"
    warnings = [x for x in lines if x.startswith("warning: ")]
    fix = "; it still logs in, but rename it: nvr.py config user edit NAME --rename NEW_NAME"
    assert all(w.endswith(fix) for w in warnings)
    got = {w[len("warning: "):-len(fix)] for w in warnings}
    cyr, zw, rlo, long, nfd = "\u0430dmin", "ad\u200bmin", "\u202eadmin", "a" * 60000, "Rene\u0301"
    assert got == {
        f"user {ids['Admin']}'s name 'Admin' is user {ids['admin']}'s 'admin' but for case "
        f"or width; names must differ by more",
        f"user {ids['admin ']}'s name 'admin ' must not begin or end with a space",
        f"user {ids[cyr]}'s name {cyr!r} mixes scripts (Cyrillic, Latin), as "
        f"look-alike names do; write it in one",
        f"user {ids[zw]}'s name {zw!r} must not contain invisible "
        f"formatting characters (U+200B ZERO WIDTH SPACE: zero-width and text-direction "
        f"characters can make one name look like another)",
        f"user {ids[rlo]}'s name {rlo!r} must not contain invisible "
        f"formatting characters (U+202E RIGHT-TO-LEFT OVERRIDE: zero-width and "
        f"text-direction characters can make one name look like another)",
        f"user {ids[long]}'s name is 60000 characters long; at most 64",
        f"user {ids[nfd]}'s name {nfd!r} is not in Unicode normal form C",
    }, got


def test_every_new_route_is_documented():
    with open(api.__file__.replace("api.py", "docs/api.md"), encoding="utf-8") as f:
        doc = f.read()
    for path in ("GET /api/users/<id>/sessions", "POST /api/users/<id>/sessions/<sid>/revoke"):
        assert path in doc


# -- kills a mutant that survived test/mutate.py (docs/testing.md) ---------------------

def test_revoking_a_session_saves_its_last_use(tmp_path, clocks):
    """A session's uses are written lazily, at the next flush, and only while it is
    dirty; revoking it writes them in the revocation's transaction and marks it clean.
    Without that write (a mutant that survived: nothing read the usage back after a
    revocation) the uses since the last flush were lost for good: who used a session
    last, and when, is what an admin looks at after revoking a stolen one."""
    t = make_testdb(tmp_path, clocks)
    uid = t.db.add_user("alice", password_hash=auth.hash_password(PASSWORDS["alice"]),
                        permissions=auth.Permissions(view_video=True))
    a = auth.Auth(t.db)
    cookie, s = a.make_session(uid, auth.Client(), flags=0)
    client = auth.Client(addr="192.0.2.7", user_agent="ua-test/1")
    for _ in range(3):
        clocks.advance(10**9)
        a.authenticate(cookie, client)
    last_use = clocks.realtime() // 10**9
    clocks.advance(10**9)
    assert a.revoke(s.hash, auth.REVOKED_LOGOUT, client)
    q = ("select use_count, last_use_time_sec, last_use_user_agent, last_use_peer_addr, "
         "revocation_reason from user_session where session_id_hash = ?")
    want = (3, last_use, "ua-test/1", auth.pack_addr("192.0.2.7"), auth.REVOKED_LOGOUT)
    assert t.db.conn.execute(q, (s.hash,)).fetchone() == want  # committed with the revocation
    t.db.flush("test")
    assert t.db.conn.execute(q, (s.hash,)).fetchone() == want
    t.db.close()


def test_revoking_is_once_and_says_whether_it_did(tmp_path, clocks):
    """`revoke` of an unknown or already revoked session does nothing and returns False
    (logout, `nvr.py sessions revoke` and the API count on it); the first revocation's
    reason and time stay. `revoke_user_sessions` of a user with none left revokes 0.
    Three mutants survived here: `or` -> `and` (an unknown session raised, a revoked one
    was revoked again, its original reason overwritten), `return False` -> `True`, and
    `_revoke`'s `return 0` -> `1` for no sessions."""
    t = make_testdb(tmp_path, clocks)
    uid = t.db.add_user("alice", password_hash=auth.hash_password(PASSWORDS["alice"]),
                        permissions=auth.Permissions(view_video=True))
    a = auth.Auth(t.db)
    _, s = a.make_session(uid, auth.Client(), flags=0)
    assert a.revoke(b"\0" * len(s.hash), auth.REVOKED_LOGOUT) is False  # no such session
    assert a.revoke(s.hash, auth.REVOKED_BY_ADMIN, detail="by admin") is True
    q = ("select revocation_reason, revocation_reason_detail, revocation_time_sec "
         "from user_session where session_id_hash = ?")
    first = t.db.conn.execute(q, (s.hash,)).fetchone()
    assert first[:2] == (auth.REVOKED_BY_ADMIN, "by admin")
    clocks.advance(10**9)
    assert a.revoke(s.hash, auth.REVOKED_LOGOUT) is False  # already revoked
    assert t.db.conn.execute(q, (s.hash,)).fetchone() == first
    assert a.revoke_user_sessions(uid, auth.REVOKED_PASSWORD_CHANGE) == 0
    t.db.close()


def test_permissions_protobuf_keeps_moonfire_bytes_and_our_fields_past_its_own(monkeypatch):
    """Moonfire's four fields encode as before (view_video alone is X'0801', as its
    upgrade writes); nvr's own fields (100, 101) take two-byte varint keys, round-trip,
    and a decoder that doesn't know them (Moonfire's four fields only) skips them."""
    assert auth.Permissions(view_video=True).encode() == bytes.fromhex("0801")
    ours = auth.Permissions(view_video=True, configure_cameras=True, protect_recordings=True)
    blob = ours.encode()
    assert blob == bytes.fromhex("0801" "a00601" "a80601")
    assert auth.Permissions.decode(blob) == ours
    assert auth.Permissions.decode(auth.Permissions.all().encode()) == auth.Permissions.all()
    monkeypatch.setattr(auth.Permissions, "FIELDS", auth.Permissions.FIELDS[:4])
    assert auth.Permissions.decode(blob) == auth.Permissions(view_video=True)
