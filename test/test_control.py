"""The control socket (web.py) and the command line through it while nvr runs (ctl.py).

In process: a web.Server with a control socket on a test database (mode, who may use
it, stale and live sockets, a path too long). As processes: a real `nvr.py run`
recording the GStreamer test camera, and `nvr.py sessions|config|protect ...` run beside it,
which must go through the socket (the database is locked), change things live, print
what they print offline, and leave the recording run alone.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import socket
import stat
import subprocess
import sys
import tempfile
import threading

import pytest

import api
import auth
import ctl
import db
import nvr
import web
from test_run import NVR, Nvr, nvr as run_nvr, wait_for


def _config(*binds):
    return nvr.Config(db_dir="unused", ui_dir=None, binds=list(binds))


@pytest.fixture
def control(testdb):
    """A started Server with only the control socket in the test database's dir."""
    servers = []

    def start(path=None):
        srv = web.Server(testdb.db, _config())
        srv.control_path = path or web.control_socket_path(testdb.db_dir)
        srv.start()
        servers.append(srv)
        return srv
    yield start
    for s in servers:
        s.stop()


def test_socket_is_private_grants_everything_and_goes_away(testdb, control):
    srv = control()
    path = web.control_socket_path(testdb.db_dir)
    st = os.stat(path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    c = ctl.Client(testdb.db_dir, "test")
    text = c.call("GET", "/api/request")
    assert "caller: privileged Unix peer" in text
    assert json.loads(text.split("permissions: ")[1]) == auth.Permissions.all().to_json()
    # Every permission: the users API (adminUsers) answers.
    assert c.call("GET", "/api/users/") == {"users": []}
    c.close()
    srv.stop()
    assert not os.path.exists(path)


def _request(bind, peer_uid, cookie=None):
    headers = {"Cookie": f"s={cookie}"} if cookie else {}
    req = api.Request(method="GET", path="/api/", query=[], headers=headers, bind=bind,
                      client="unix", request_id="r", server=None)
    return web.resolve_caller(req, peer_uid)


def test_peer_credentials_decide(testdb):
    bind = web.ControlBind("x")
    for uid in (os.geteuid(), 0):
        assert _request(bind, uid).permissions == auth.Permissions.all()
    for uid in (12345, None):
        with pytest.raises(api.HttpError) as e:
            _request(bind, uid)
        assert e.value.status == 403 and "control socket answers only uid" in e.value.message


def test_another_uid_gets_403(testdb):
    """The peer check itself, past the 0600 mode (made 0666 here): `nobody` is refused.
    (Debian's python: one nobody may run; this test's interpreter is under /root.)"""
    if os.geteuid() != 0:
        pytest.skip("needs root to run a client as nobody")
    d = tempfile.mkdtemp(prefix="nvr-ctl-")
    try:
        os.chmod(d, 0o755)
        path = os.path.join(d, "control.sock")
        srv = web.Server(testdb.db, _config())
        srv.control_path = path
        srv.start()
        try:
            os.chmod(path, 0o666)
            script = ("import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]);"
                      "s.sendall(b'GET /api/users/ HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n');"
                      "print(s.recv(4096).decode())")
            r = subprocess.run(["/usr/bin/python3", "-c", script, path], capture_output=True,
                               text=True, timeout=30, cwd="/",
                               preexec_fn=lambda: os.setuid(65534))
            assert r.returncode == 0, r.stderr
            assert r.stdout.startswith("HTTP/1.1 403 "), r.stdout
            assert "not uid 65534" in r.stdout
            os.chmod(path, 0o600)   # as made: nobody can't even connect
            r = subprocess.run(["/usr/bin/python3", "-c", script, path], capture_output=True,
                               text=True, timeout=30, cwd="/",
                               preexec_fn=lambda: os.setuid(65534))
            assert r.returncode != 0 and "PermissionError" in r.stderr
        finally:
            srv.stop()
    finally:
        os.rmdir(d)


def test_stale_socket_replaced_live_one_left(testdb, control, caplog):
    path = web.control_socket_path(testdb.db_dir)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)   # a crash left it: bound, nobody listening
    stale.close()
    srv = control()
    assert "privileged" in ctl.Client(testdb.db_dir, "t").call("GET", "/api/request")
    srv.stop()
    assert not os.path.exists(path)

    live = socket.socket(socket.AF_UNIX)   # another process (a second --read-only run)
    live.bind(path)
    live.listen()
    ino = os.stat(path).st_ino
    with caplog.at_level(logging.WARNING, logger="web"):
        srv = control()
    assert f"no control socket: another process answers on {path}" in caplog.text
    srv.stop()
    assert os.stat(path).st_ino == ino   # theirs: neither replaced nor unlinked
    live.close()
    os.unlink(path)


def test_path_too_long_warns_and_runs_without(testdb, control, caplog):
    long_dir = os.path.join(testdb.db_dir, "x" * 120)
    path = web.control_socket_path(long_dir)
    with caplog.at_level(logging.WARNING, logger="web"):
        srv = control(path)
    (line,) = [r.getMessage() for r in caplog.records if "no control socket" in r.getMessage()]
    assert path in line and "over the 107" in line and "web UI or the HTTP API" in line
    assert srv.addresses == []   # nothing else configured; nothing listens
    with pytest.raises(ctl.ControlError, match="over the 107 bytes a Unix socket path"):
        ctl.Client(long_dir, "t").call("GET", "/api/")


# ---------------------------------------------------------------------------------------
# The command line as a process.

def cli(*args, cwd, stdin=None):
    return subprocess.run([sys.executable, NVR, *args], cwd=cwd, capture_output=True,
                          text=True, timeout=60, input=stdin,
                          env=dict(os.environ, NVR_LOG="WARNING", TZ="UTC"))


def test_locked_without_a_socket_says_what_to_do(tmp_path):
    cwd = str(tmp_path)
    run_nvr("init", cwd=cwd)
    fd = db.lock_db_dir(os.path.join(cwd, "nvr-data/db"), False)   # a run without a socket
    try:
        for args in (("sessions", "list"), ("config", "user", "list"),
                     ("config", "camera", "edit", "x", "--description", "y")):
            r = cli(*args, cwd=cwd)
            assert r.returncode == 1 and r.stdout == ""
            assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
            assert r.stderr.startswith("error: database directory nvr-data/db is locked by "
                                       "another process, and its control socket "
                                       "nvr-data/db/control.sock doesn't answer"), r.stderr
            assert "use the web UI or the HTTP API" in r.stderr
        r = cli("login", "admin", cwd=cwd)
        assert r.returncode == 1 and "no API equivalent" in r.stderr and "POST /api/login" \
            in r.stderr
    finally:
        os.close(fd)


@pytest.fixture
def running(tmp_path, rtsp_camera):
    """nvr recording one stream of the test camera, with an admin user."""
    cwd = str(tmp_path)
    run_nvr("init", cwd=cwd)
    run_nvr("config", "camera", "add", "cam1", "--description", "before", cwd=cwd)
    run_nvr("config", "stream", "add", "cam1", "main", "--url", rtsp_camera.url("main"),
            "--record", "--dir", "1", "--retain-bytes", "1G", "--flush-if-sec", "0", cwd=cwd)
    run_nvr("config", "user", "add", "admin", "--password", "pw", "--permissions", "all",
            cwd=cwd)
    with open(os.path.join(cwd, "nvr.toml"), "w") as f:
        f.write('dbDir = "nvr-data/db"\n[[binds]]\nipv4 = "127.0.0.1:0"\n')
    n = Nvr(cwd)
    n.start()
    wait_for("2 recordings", lambda: len(n.rows(1)) >= 2)
    n.port = int(re.search(r"listening on ipv4 \('127.0.0.1', (\d+)\)", n.log_text()).group(1))
    yield n
    if n.proc.poll() is None:
        n.proc.kill()
        n.proc.wait()


def _http(n, method, path, body=None, cookie=None):
    c = http.client.HTTPConnection("127.0.0.1", n.port, timeout=30)
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if cookie:
        headers["Cookie"] = f"s={cookie}"
    c.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, r.getheader("Set-Cookie"), data


def _one_run(n, sid):
    """The stream's recordings since nvr started are all of one run (no reconnect)."""
    rows = n.rows(sid)
    return [r for r in rows if r[1] == 0] == rows[:1]


def test_sessions_and_users_while_recording(running):
    n = running
    status, set_cookie, _ = _http(n, "POST", "/api/login", {"username": "admin",
                                                            "password": "pw"})
    assert status == 204
    cookie = re.match(r"s=([^;]+)", set_cookie).group(1)
    assert _http(n, "GET", "/api/users/1", cookie=cookie)[0] == 200
    r = cli("sessions", "list", cwd=n.cwd)
    assert r.returncode == 0, r.stderr
    head, line = r.stdout.splitlines()
    assert head.startswith("ID\tUSER\tCREATED")
    sid, user, *_, state, _ = line.split("\t")
    assert (user, state) == ("admin", "valid")
    recorded = len(n.rows(1))

    r = cli("sessions", "revoke", sid[:10], cwd=n.cwd)
    assert (r.returncode, r.stdout, r.stderr) == (0, "revoked 1 session(s)\n", "")
    # Dead at once: the next request with the cookie is unauthenticated.
    assert _http(n, "GET", "/api/users/1", cookie=cookie)[0] == 401
    r = cli("sessions", "list", cwd=n.cwd)
    assert "\trevoked (revoked by an administrator)\t" in r.stdout

    # config user: add (password from stdin, sent in the body), edit, list.
    r = cli("config", "user", "add", "bob", "--password-stdin", cwd=n.cwd, stdin="bobpw\n")
    assert (r.returncode, r.stdout) == (0, "added user 2: bob\n"), r.stderr
    assert _http(n, "POST", "/api/login", {"username": "bob", "password": "bobpw"})[0] == 204
    r = cli("config", "user", "edit", "bob", "--disable", cwd=n.cwd)
    assert (r.returncode, r.stdout) == (0, "updated user 2: bob; revoked 1 session(s)\n"), \
        r.stderr
    assert _http(n, "POST", "/api/login", {"username": "bob", "password": "bobpw"})[0] == 401
    online = {what: cli("config", "user", "list", cwd=n.cwd).stdout for what in ("users",)}
    online["sessions"] = cli("sessions", "list", cwd=n.cwd).stdout

    # Recording went on in the same run throughout.
    wait_for("2 more recordings", lambda: len(n.rows(1)) >= recorded + 2)
    assert _one_run(n, 1), n.rows(1)
    assert n.stop() == 0
    # The same lines as the command prints with nvr stopped (reading the database).
    assert cli("config", "user", "list", cwd=n.cwd).stdout == online["users"]
    assert cli("sessions", "list", cwd=n.cwd).stdout == online["sessions"]
    assert "disabled" in online["users"].splitlines()[1]


def test_read_only_run_refuses_revoke_in_one_line(tmp_path):
    cwd = str(tmp_path)
    run_nvr("init", cwd=cwd)
    run_nvr("config", "user", "add", "admin", "--password", "pw", cwd=cwd)
    run_nvr("login", "admin", cwd=cwd)   # a session to revoke
    run_nvr("config", "camera", "add", "cam1", cwd=cwd)
    run_nvr("protect", "add", "cam1", "--start", "2026-01-01", "--end", "2026-01-02",
            "--label", "kept", cwd=cwd)
    with open(os.path.join(cwd, "nvr.toml"), "w") as f:
        f.write('dbDir = "nvr-data/db"\n[[binds]]\nipv4 = "127.0.0.1:0"\n')
    n = Nvr(cwd)
    n.start("--read-only")
    try:
        sock = os.path.join(cwd, "nvr-data/db/control.sock")
        wait_for("the control socket", lambda: os.path.exists(sock))
        # A read-only run shares the lock: listing reads the database itself.
        assert cli("sessions", "list", cwd=cwd).returncode == 0
        listed = cli("protect", "list", cwd=cwd)
        assert listed.returncode == 0 and "\t'kept'\t" in listed.stdout, listed.stderr
        for args in (("sessions", "revoke", "--user", "admin"),
                     ("config", "user", "edit", "admin", "--disable"),
                     ("protect", "add", "cam1", "--start", "2026-02-01", "--end",
                      "2026-02-02", "--label", "x"),
                     ("protect", "remove", "1")):
            r = cli(*args, cwd=cwd)
            assert (r.returncode, r.stdout) == (1, ""), r.stderr
            assert r.stderr == ("error: this server runs with --read-only; that needs a "
                                "writable database; stop it, and this command changes the "
                                "database itself\n")
    finally:
        assert n.stop() == 0
    assert not os.path.exists(sock)


def _mask_used(text):
    return re.sub(r"\tused=[^\t]*", "\tused=?", text)


def test_config_while_recording(tmp_path, rtsp_camera):
    """Camera and stream edits through the running nvr: live at once; a URL change
    restarts that stream only; the lists print as they do offline."""
    cwd = str(tmp_path)
    run_nvr("init", cwd=cwd)
    run_nvr("config", "camera", "add", "cam1", "--description", "before", cwd=cwd)
    for typ in ("main", "sub"):
        run_nvr("config", "stream", "add", "cam1", typ, "--url", rtsp_camera.url(typ),
                "--record", "--dir", "1", "--retain-bytes", "1G", "--flush-if-sec", "0",
                cwd=cwd)
    with open(os.path.join(cwd, "nvr.toml"), "w") as f:
        f.write('dbDir = "nvr-data/db"\n[[binds]]\nipv4 = "127.0.0.1:0"\n'
                'allowUnauthenticatedPermissions = { viewVideo = true }\n')
    n = Nvr(cwd)
    n.start()
    try:
        for sid in (1, 2):
            wait_for(f"stream {sid}: 2 recordings", lambda: len(n.rows(sid)) >= 2)
        n.port = int(re.search(r"listening on ipv4 \('127.0.0.1', (\d+)\)",
                               n.log_text()).group(1))
        r = cli("config", "camera", "edit", "cam1", "--description", "after", cwd=cwd)
        assert (r.returncode, r.stdout, r.stderr) == (0, "updated camera 1: cam1\n", "")
        top = json.loads(_http(n, "GET", "/api/")[2])
        assert [c["description"] for c in top["cameras"]] == ["after"]

        before = {sid: len(n.rows(sid)) for sid in (1, 2)}
        r = cli("config", "stream", "edit", "cam1", "main", "--url",
                rtsp_camera.url("h265"), cwd=cwd)
        assert (r.returncode, r.stdout, r.stderr) == (0, "updated stream 1: cam1/main\n", "")
        # The main stream's run ended for the change and a new one began...
        rows = wait_for("a new run of stream 1", lambda: (
            lambda rs: rs if any(x[1] == 0 for x in rs[before[1]:]) else None)(n.rows(1)))
        new = next(i for i in range(before[1], len(rows)) if rows[i][1] == 0)
        assert rows[new - 1][6] == "configuration changed: url", rows[new - 1]
        # ...while the sub stream went on in its one run.
        wait_for("stream 2: 2 more recordings", lambda: len(n.rows(2)) >= before[2] + 2)
        assert _one_run(n, 2), n.rows(2)

        # The stream test runs in nvr, with the stored URL and credentials; the report
        # and the snapshot come back as offline.
        tested = cli("config", "stream", "test", "cam1", "sub", "--snapshot", "snap.jpg",
                     cwd=cwd)
        assert tested.returncode == 0, tested.stderr
        assert tested.stdout.splitlines()[-1] == "snapshot: snap.jpg (320x240 JPEG)"
        probe = subprocess.run(["ffprobe", "-v", "error", "-show_entries",
                                "stream=codec_name,width,height", "-of", "csv=p=0",
                                os.path.join(cwd, "snap.jpg")],
                               capture_output=True, text=True, timeout=30)
        assert probe.stdout.strip() == "mjpeg,320,240", probe.stderr

        # A change needing confirmation is refused, as offline, naming --yes.
        r = cli("config", "stream", "delete", "cam1", "sub", cwd=cwd)
        assert r.returncode == 1 and re.fullmatch(
            r"error: stream cam1/sub has \d+ recording\(s\) \([0-9.]+ [KM]iB\); add --yes "
            r"to delete it and them\n", r.stderr), r.stderr

        online = {what: cli("config", what, "list", cwd=cwd) for what in
                  ("camera", "stream", "dir")}
        assert all(r.returncode == 0 and r.stderr == "" for r in online.values())
        assert "url=" + rtsp_camera.url("h265") in online["stream"].stdout
    finally:
        assert n.stop() == 0
    for what, r in online.items():
        offline = cli("config", what, "list", cwd=cwd)
        assert _mask_used(offline.stdout) == _mask_used(r.stdout), what
    offline = cli("config", "stream", "test", "cam1", "sub", cwd=cwd)
    # codec, size (measured figures and times differ from test to test)
    assert offline.stdout.splitlines()[:2] == tested.stdout.splitlines()[:2]


def test_messages_name_the_command_lines_options():
    assert ctl.cli_message("flushIfSec must be from 0 to 86400 (one day), not -3") == \
        "--flush-if-sec must be from 0 to 86400 (one day), not -3"
    assert ctl.cli_message("camera x has 2 recording(s) (1.0 MiB); set deleteRecordings: "
                           "true to delete it and them") == \
        "camera x has 2 recording(s) (1.0 MiB); add --yes to delete it and them"
    # /api/protections' times are `protect`'s --start and --end.
    assert ctl.cli_message("startTime90k must be after 1970 and before the year 10000") == \
        "--start must be after 1970 and before the year 10000"
    assert ctl.cli_message("endTime90k must be an integer") == "--end must be an integer"
    # Plain words stay: "url" and "path" are also prose.
    assert ctl.cli_message("the path /x has no url") == "the path /x has no url"


def _fds():
    return len(os.listdir("/proc/self/fd"))


def test_start_stop_with_control_socket_leaks_nothing(testdb, caplog):
    """Started and stopped, or failing to bind (no such dir: a warning), the control
    socket leaves no thread or file descriptor behind."""
    good = web.control_socket_path(testdb.db_dir)
    bad = web.control_socket_path(os.path.join(testdb.db_dir, "missing"))
    for i in range(11):
        for path in (good, bad):
            srv = web.Server(testdb.db, _config())
            srv.control_path = path
            srv.start()
            if path == good:
                c = ctl.Client(testdb.db_dir, "t")
                assert c.call("GET", "/api/users/") == {"users": []}
                c.close()
            srv.stop()
        if i == 0:
            baseline = _fds()
        assert not [t.name for t in threading.enumerate() if t.name.startswith("http")]
    assert _fds() <= baseline
    assert f"no control socket: can't listen on {bad}: No such file or directory" in caplog.text


CHANGES = [
    (("config", "camera", "add", "cam2", "--description", "second", "--username", "u",
      "--password-stdin"), "pw\n"),
    (("config", "camera", "edit", "cam2", "--rename", "cam3", "--description", "edited"), None),
    (("config", "dir", "add", "d2", "--free-space-floor", "3%"), None),
    (("config", "dir", "edit", "d2", "--free-space-floor", "5G"), None),
    (("config", "stream", "add", "cam3", "main", "--url", "rtsp://127.0.0.1:9/x", "--dir",
      "d2", "--retain-bytes", "100M"), None),
    (("config", "stream", "edit", "cam3", "main", "--retain-days", "2", "--flush-if-sec",
      "30", "--rtsp-transport", "udp"), None),
    (("config", "stream", "add", "cam3", "sub", "--url", "rtsp://u:p@x/y"), None),
    (("config", "stream", "edit", "cam3", "main", "--flush-if-sec", "-3"), None),
    (("config", "stream", "edit", "cam3", "main", "--record"), None),
    (("config", "camera", "list"), None),
    (("config", "stream", "list"), None),
    (("config", "dir", "list"), None),
    (("config", "user", "add", "ann", "--permissions", "viewVideo,adminUsers"), None),
    (("config", "user", "edit", "ann", "--rename", "anne", "--password", "x"), None),
    (("config", "user", "delete", "anne"), None),
    (("config", "stream", "delete", "cam3", "main"), None),
    (("config", "dir", "list"), None),
    (("config", "camera", "delete", "cam3"), None),
    (("config", "dir", "delete", "d2"), None),
]


def _changes(cwd):
    out = []
    for args, stdin in CHANGES:
        r = cli(*args, cwd=cwd, stdin=stdin)
        out.append((args, r.returncode,
                    re.sub(r"uuid=[-0-9a-f]{36}", "uuid=U", r.stdout.replace(cwd, "CWD")),
                    r.stderr.replace(cwd, "CWD")))
    return out


def test_changes_print_as_offline(tmp_path):
    """The same commands, once through a running nvr and once with it stopped on a
    fresh database: the same output, errors included, line for line."""
    online_cwd, offline_cwd = str(tmp_path / "a"), str(tmp_path / "b")
    for cwd in (online_cwd, offline_cwd):
        os.mkdir(cwd)
        run_nvr("init", cwd=cwd)
        os.mkdir(os.path.join(cwd, "d2"))
    with open(os.path.join(online_cwd, "nvr.toml"), "w") as f:
        f.write('dbDir = "nvr-data/db"\n[[binds]]\nipv4 = "127.0.0.1:0"\n')
    n = Nvr(online_cwd)
    n.start()
    try:
        wait_for("the control socket",
                 lambda: os.path.exists(os.path.join(online_cwd, "nvr-data/db/control.sock")))
        online = _changes(online_cwd)
    finally:
        assert n.stop() == 0
    offline = _changes(offline_cwd)
    for a, b in zip(online, offline):
        assert a == b
    # It did something: every change succeeded or was refused as planned.
    assert [r[1] for r in online] == [0] * 6 + [1, 1, 0] + [0] * 10
    assert "Traceback" not in "".join(r[3] for r in online)


# ---------------------------------------------------------------------------------------
# `nvr.py protect` through the running nvr (/api/protections).

PROTECT = [
    ("add", "cam9/main", "--start", "2026-01-01T00:00", "--end", "2026-01-01T01:00:00:45000",
     "--label", "break-in"),
    ("add", "cam9", "--start", "2026-01-02", "--end", "2026-01-03T00:00+02:00",
     "--label", "whole camera"),
    ("list",),
    ("list", "--camera", "cam9"),
    ("edit", "1", "--label", "renamed", "--end", "2026-01-01T00:30"),
    ("edit", "2", "--start", "2026-01-01T23:00Z"),
    ("list",),
    # Refusals, each one line.
    ("edit", "1", "--end", "2025-12-31"),                            # end before start
    ("add", "cam9", "--start", "2026-01-05", "--end", "2026-01-04", "--label", "x"),
    ("edit", "1"),                                                   # nothing to change
    ("add", "nope", "--start", "2026-01-01", "--end", "2026-01-02", "--label", "x"),
    ("add", "cam9/sub", "--start", "2026-01-01", "--end", "2026-01-02", "--label", "x"),
    ("add", "cam9", "--start", "yesterday", "--end", "2026-01-02", "--label", "x"),
    ("add", "cam9", "--start", "2026-01-01", "--end", "2026-01-02", "--label", "a\nb"),
    ("edit", "9", "--label", "x"),
    ("remove", "9"),
    ("list", "--camera", "nope"),
    ("remove", "1"),
    ("list",),
]


def _protect_changes(cwd):
    out = []
    for args in PROTECT:
        r = cli("protect", *args, cwd=cwd)
        out.append((args, r.returncode, r.stdout, r.stderr.replace(cwd, "CWD")))
    return out


def test_protect_prints_as_offline(tmp_path):
    """`nvr.py protect add|list|edit|remove` once through a running nvr and once with it
    stopped, on the same fresh data: the same output, refusals included, line for line."""
    online_cwd, offline_cwd = str(tmp_path / "a"), str(tmp_path / "b")
    for cwd in (online_cwd, offline_cwd):
        os.mkdir(cwd)
        run_nvr("init", cwd=cwd)
        run_nvr("config", "camera", "add", "cam9", cwd=cwd)
        run_nvr("config", "stream", "add", "cam9", "main", "--url", "rtsp://127.0.0.1:9/x",
                cwd=cwd)   # not recorded: nothing connects
    with open(os.path.join(online_cwd, "nvr.toml"), "w") as f:
        f.write('dbDir = "nvr-data/db"\n[[binds]]\nipv4 = "127.0.0.1:0"\n')
    n = Nvr(online_cwd)
    n.start()
    try:
        wait_for("the control socket",
                 lambda: os.path.exists(os.path.join(online_cwd, "nvr-data/db/control.sock")))
        online = _protect_changes(online_cwd)
        log = n.log_text()
    finally:
        assert n.stop() == 0
    offline = _protect_changes(offline_cwd)
    for a, b in zip(online, offline):
        assert a == b
    # It went through the server (which logs every change, with its caller)...
    assert "protection 1 added by privileged Unix peer" in log, log
    assert "protection 1 removed by privileged Unix peer" in log, log
    # ...and did something: every command succeeded or was refused as planned.
    assert [r[1] for r in online] == [0] * 7 + [1] * 10 + [0, 0], online
    assert all(len(r[3].splitlines()) == 1 and r[3].startswith("error: ")
               for r in online if r[1]), online
    assert online[0][2] == ("added protection 1\tcam9/main\t2026-01-01T00:00:00:00000+00:00"
                            "\t2026-01-01T01:00:00:45000+00:00\t'break-in'\tby=cli"
                            "\tprotected=0 B\n")
    assert online[7][3] == ("error: end (2025-12-31T00:00:00:00000+00:00) must be after "
                            "start (2026-01-01T00:00:00:00000+00:00)\n")
    assert [line.split("\t")[:2] for line in online[-1][2].splitlines()] == [
        ["2", "cam9"]]


def test_protect_while_recording(running):
    """Protecting recorded footage through the running nvr: live at once (GET
    /api/protections shows it, createdBy "cli", the bytes it keeps), a refusal in one
    line, recording going on in its one run; the list prints as offline."""
    n = running
    rows = n.rows(1)
    start, end = rows[0][3], rows[1][3] + rows[1][4]   # the first two recordings
    r = cli("protect", "add", "cam1/main", "--start", str(start), "--end", str(end),
            "--label", "incident", cwd=n.cwd)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    added = r.stdout
    assert added.startswith("added protection 1\tcam1/main\t") and "\t'incident'\tby=cli\t" \
        in added, added
    status, set_cookie, _ = _http(n, "POST", "/api/login", {"username": "admin",
                                                            "password": "pw"})
    cookie = re.match(r"s=([^;]+)", set_cookie).group(1)
    status, _, body = _http(n, "GET", "/api/protections", cookie=cookie)
    assert status == 200
    [p] = json.loads(body)["protections"]
    assert (p["id"], p["streamType"], p["startTime90k"], p["endTime90k"], p["label"],
            p["createdBy"]) == (1, "main", start, end, "incident", "cli")
    assert p["protectedBytes"] >= (rows[0][5] + rows[1][5]) > 0   # at least a byte a frame
    assert added.endswith(f"\tprotected={nvr.format_size(p['protectedBytes'])}\n"), added

    r = cli("protect", "add", "cam1", "--start", str(end), "--end", str(start),
            "--label", "backwards", cwd=n.cwd)
    assert (r.returncode, r.stdout) == (1, "")
    assert re.fullmatch(r"error: end \(\S+\) must be after start \(\S+\)\n", r.stderr), \
        r.stderr
    recorded = len(n.rows(1))
    r = cli("protect", "add", "cam1", "--start", "2026-01-01", "--end", "2026-01-02",
            "--label", "whole camera", cwd=n.cwd)
    assert r.returncode == 0, r.stderr
    r = cli("protect", "edit", "2", "--label", "edited", cwd=n.cwd)
    assert r.stdout.startswith("updated protection 2\tcam1\t") and "'edited'" in r.stdout
    r = cli("protect", "remove", "2", cwd=n.cwd)
    assert r.stdout.startswith("removed protection 2 ('edited'); ")
    online = cli("protect", "list", cwd=n.cwd)
    assert online.stdout == added.removeprefix("added protection "), online.stderr
    status, _, body = _http(n, "GET", "/api/protections", cookie=cookie)
    assert [p["id"] for p in json.loads(body)["protections"]] == [1]

    wait_for("2 more recordings", lambda: len(n.rows(1)) >= recorded + 2)
    assert _one_run(n, 1), n.rows(1)
    assert n.stop() == 0
    offline = cli("protect", "list", cwd=n.cwd)
    assert (offline.returncode, offline.stdout) == (0, online.stdout), offline.stderr
