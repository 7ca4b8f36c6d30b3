"""nvr.py: the command line, run as a user would, in a subprocess."""

import contextlib
import os
import re
import sqlite3
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NVR = os.path.join(ROOT, "nvr.py")


def nvr(*args, cwd, input=None, ok=True):
    env = dict(os.environ, TZ="America/Los_Angeles", NVR_LOG="WARNING")
    r = subprocess.run([sys.executable, NVR, *args], cwd=cwd, input=input, env=env,
                       capture_output=True, text=True, timeout=60)
    if ok and r.returncode != 0:
        raise AssertionError(f"nvr {' '.join(args)} failed ({r.returncode}):\n{r.stdout}{r.stderr}")
    return r


def test_quick_setup_then_check_is_clean(tmp_path):
    cwd = str(tmp_path)
    out = nvr("init", cwd=cwd).stdout
    assert "created database in nvr-data/db" in out
    assert "created sample file dir 1: " + os.path.join(cwd, "nvr-data", "sample") in out
    assert "database already exists" in nvr("init", cwd=cwd).stdout
    nvr("config", "dir", "add", "disk2", cwd=cwd)
    nvr("config", "camera", "add", "driveway", "--description", "front", "--username", "admin",
        "--password-stdin", cwd=cwd, input="s3cret\n")
    nvr("config", "stream", "add", "driveway", "main", "--url", "rtsp://192.0.2.10/main",
        "--record", "--dir", "1", "--retain-bytes", "10G", cwd=cwd)
    nvr("config", "stream", "add", "driveway", "sub", "--url", "rtsp://192.0.2.10/sub",
        "--record", "--dir", "disk2", "--retain-bytes", "1G", "--flush-if-sec", "60",
        "--rtsp-transport", "udp", cwd=cwd)
    nvr("config", "user", "add", "alice", "--password-stdin", "--permissions",
        "viewVideo,adminUsers", cwd=cwd, input="correct horse\n")
    assert nvr("check", cwd=cwd).stdout.endswith("check: clean\n")

    streams = nvr("config", "stream", "list", cwd=cwd).stdout
    assert re.search(r"driveway/main\trecord=yes\turl=rtsp://192.0.2.10/main\ttransport=tcp\t"
                     r"dir=\S+nvr-data/sample\tretain=10.0 GiB", streams)
    assert "driveway/sub\trecord=yes" in streams and "transport=udp" in streams
    assert "flush_if_sec=60" in streams
    cams = nvr("config", "camera", "list", cwd=cwd).stdout
    assert "driveway\tuser=admin\tstreams=main,sub\tfront" in cams
    assert "s3cret" not in cams  # never printed
    users = nvr("config", "user", "list", cwd=cwd).stdout
    assert "alice\tenabled\tpassword\tpermissions=viewVideo,adminUsers" in users

    conn = sqlite3.connect(os.path.join(cwd, "nvr-data", "db", "db"))
    (config,) = conn.execute("select config from camera").fetchone()
    assert '"password":"s3cret"' in config
    (phash,) = conn.execute("select password_hash from user").fetchone()
    assert phash.startswith("$argon2id$")


def test_config_edits_and_deletes(tmp_path):
    cwd = str(tmp_path)
    nvr("init", cwd=cwd)
    nvr("config", "camera", "add", "cam", cwd=cwd)
    nvr("config", "camera", "edit", "cam", "--rename", "porch", "--username", "u", cwd=cwd)
    nvr("config", "stream", "add", "porch", "main", "--url", "rtsp://h/1", cwd=cwd)
    nvr("config", "stream", "edit", "porch", "main", "--record", "--dir", "1",
        "--retain-bytes", "5G", cwd=cwd)
    assert "porch/main\trecord=yes" in nvr("config", "stream", "list", cwd=cwd).stdout
    nvr("config", "user", "add", "bob", cwd=cwd)
    nvr("config", "user", "edit", "bob", "--disable", "--permissions", "all", cwd=cwd)
    assert ("bob\tdisabled\tno-password\tpermissions=viewVideo,readCameraConfigs,"
            "updateSignals,adminUsers") in nvr("config", "user", "list", cwd=cwd).stdout
    nvr("config", "user", "delete", "bob", cwd=cwd)
    nvr("config", "stream", "delete", "porch", "main", cwd=cwd)
    nvr("config", "camera", "delete", "porch", cwd=cwd)
    assert nvr("config", "camera", "list", cwd=cwd).stdout == ""
    nvr("config", "dir", "add", "spare", cwd=cwd)
    nvr("config", "dir", "delete", "spare", cwd=cwd)
    assert "spare" not in nvr("config", "dir", "list", cwd=cwd).stdout
    assert nvr("check", cwd=cwd).stdout.endswith("check: clean\n")


@pytest.mark.parametrize("args,message", [
    (["config", "stream", "add", "cam", "main", "--url", "rtsp://u:p@h/1"],
     "don't put credentials in the URL"),
    (["config", "stream", "add", "cam", "main", "--url", "rtsp://[::1/x"],
     "bad URL 'rtsp://[::1/x': Invalid IPv6 URL"),
    (["config", "stream", "add", "cam", "main", "--url", "rtsp://h:port/x"],
     "bad URL 'rtsp://h:port/x'"),
    (["config", "stream", "add", "cam", "main", "--url", "rtsp://h/1", "--record", "--dir", "1"],
     "needs a retention limit: add --retain-bytes"),
    (["config", "stream", "add", "cam", "main", "--url", "rtsp://h/1", "--record",
      "--retain-bytes", "1G"], "needs a sample file dir"),
    (["config", "stream", "add", "cam", "main", "--url", "rtsp://h/1", "--retain-bytes", "lots"],
     "bad size 'lots'"),
    (["config", "stream", "add", "nocam", "main", "--url", "rtsp://h/1"], "no camera named 'nocam'"),
    # Over threading.TIMEOUT_MAX the syncer's wait raised OverflowError (test_writer.py).
    (["config", "stream", "edit", "cam", "sub", "--flush-if-sec", "10000000000"],
     "--flush-if-sec must be from 0 to 86400 (one day), not 10000000000"),
    (["config", "stream", "edit", "cam", "sub", "--flush-if-sec", "-1"],
     "--flush-if-sec must be from 0 to 86400"),
    (["config", "user", "add", "x", "--permissions", "viewVideo,fly"], "unknown permission(s) ['fly']"),
    (["config", "camera", "add", "cam"], "a camera named 'cam' already exists"),
    (["config", "dir", "delete", "1"], "used by stream(s) cam/sub"),
])
def test_config_errors_are_one_line_and_change_nothing(tmp_path, args, message):
    cwd = str(tmp_path)
    nvr("init", cwd=cwd)
    nvr("config", "camera", "add", "cam", cwd=cwd)
    nvr("config", "stream", "add", "cam", "sub", "--url", "rtsp://h/2", "--dir", "1", cwd=cwd)
    before = nvr("config", "stream", "list", cwd=cwd).stdout
    r = nvr(*args, cwd=cwd, ok=False)
    assert r.returncode == 1
    assert r.stderr.startswith("error: ") and message in r.stderr and r.stderr.count("\n") == 1
    assert nvr("config", "stream", "list", cwd=cwd).stdout == before


def test_user_passwords_must_not_be_empty(tmp_path):
    """`config user add/edit --password ''` set an empty password, with which
    `POST /api/login` succeeded (the API refuses to set one)."""
    cwd = str(tmp_path)
    nvr("init", cwd=cwd)
    nvr("config", "user", "add", "bob", "--password-stdin", cwd=cwd, input="pw\n")
    clear = "to remove the password, use `nvr.py config user edit bob --clear-password`"
    for args, input, message in [
        (["add", "alice", "--password", ""], None,
         "--password must not be empty; leave it out to add a user without a password"),
        (["add", "alice", "--password-stdin"], "\n", "--password-stdin: no password on "
         "standard input; leave it out to add a user without a password"),
        (["edit", "bob", "--password", ""], None, f"--password must not be empty; {clear}"),
        (["edit", "bob", "--password-stdin"], "\n",
         f"--password-stdin: no password on standard input; {clear}"),
    ]:
        r = nvr("config", "user", *args, cwd=cwd, input=input, ok=False)
        assert (r.returncode, r.stderr) == (1, f"error: {message}\n")
    assert nvr("config", "user", "list", cwd=cwd).stdout == (
        "1\tbob\tenabled\tpassword\tpermissions=viewVideo\n")
    # A camera's RTSP password may be empty (none).
    nvr("config", "camera", "add", "cam", "--username", "u", "--password", "", cwd=cwd)


def test_bad_camera_and_user_names_are_refused(tmp_path):
    """Empty names (which the API refuses for users) were taken, as were names with
    control characters (they go into log lines) and cameras named with '/' (logs
    name a stream CAMERA/TYPE)."""
    cwd = str(tmp_path)
    nvr("init", cwd=cwd)
    nvr("config", "camera", "add", "cam", cwd=cwd)
    nvr("config", "user", "add", "bob", cwd=cwd)
    before = [nvr("config", w, "list", cwd=cwd).stdout for w in ("camera", "user")]
    for args, message in [
        (["camera", "add", ""], "the camera name must not be empty"),
        (["camera", "edit", "cam", "--rename", ""], "the camera name must not be empty"),
        (["camera", "add", "a/b"], "the camera name 'a/b' must not contain '/' (logs name "
                                   "streams CAMERA/TYPE)"),
        (["camera", "edit", "cam", "--rename", "x\ny"],
         "the camera name 'x\\ny' must not contain control characters or line breaks"),
        (["user", "add", ""], "the user name must not be empty"),
        (["user", "edit", "bob", "--rename", ""], "the user name must not be empty"),
        (["user", "add", "a\tb"],
         "the user name 'a\\tb' must not contain control characters or line breaks"),
    ]:
        r = nvr("config", *args, cwd=cwd, ok=False)
        assert (r.returncode, r.stderr) == (1, f"error: {message}\n")
    assert [nvr("config", w, "list", cwd=cwd).stdout for w in ("camera", "user")] == before
    nvr("config", "user", "add", "carol/admin", cwd=cwd)  # '/' is fine in a user name
    nvr("config", "user", "add", "ana\u00a0maria", cwd=cwd)  # so is a no-break space
    r = nvr("config", "user", "add", "x\u2028y", cwd=cwd, ok=False)  # a line separator
    assert "must not contain control characters or line breaks" in r.stderr


def test_config_refused_while_locked(tmp_path):
    cwd = str(tmp_path)
    nvr("init", cwd=cwd)
    import fcntl
    fd = os.open(os.path.join(cwd, "nvr-data", "db"), os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        r = nvr("config", "camera", "list", cwd=cwd, ok=False)
        assert r.returncode == 1 and "is locked by another process" in r.stderr
        # A running nvr holds it exclusively: --read-only is refused too, and the
        # message doesn't send the user there (it used to).
        r = nvr("sql", "--read-only", cwd=cwd, ok=False)
        assert r.returncode == 1 and "--read-only doesn't help" in r.stderr
    finally:
        os.close(fd)


def test_ts_converts_both_ways_without_a_database(tmp_path):
    r = nvr("ts", "2026-11-29T10:00:00Z", "161951544000045", "2026-07-01", cwd=str(tmp_path))
    lines = r.stdout.splitlines()
    assert lines[0] == str(1_795_946_400 * 90_000)
    assert lines[1] == "2027-01-08T18:26:40:00045-08:00"
    assert lines[2] == str(1782889200 * 90_000)  # midnight PDT (-07:00)
    assert os.listdir(tmp_path) == []
    r = nvr("ts", "2026-13-01", cwd=str(tmp_path), ok=False)
    assert r.returncode == 1 and "2026-13-01" in r.stderr


def test_sql_holds_the_lock_and_runs_queries(tmp_path):
    cwd = str(tmp_path)
    nvr("init", cwd=cwd)
    r = nvr("sql", "--read-only", "--", "select max(id) from version;", cwd=cwd)
    assert r.stdout.strip() == "9"
    r = nvr("sql", "--", "pragma foreign_keys;", cwd=cwd)
    assert r.stdout.strip() == "1"


SUBCOMMANDS = ["run", "init", "config", "check", "upgrade", "sql", "ts", "login", "sessions",
               "test-stream", "protect"]


@pytest.mark.parametrize("sub", SUBCOMMANDS)
def test_every_subcommand_has_help_and_is_documented(tmp_path, sub):
    r = nvr(sub, "--help", cwd=str(tmp_path))
    assert r.stdout.startswith(f"usage: nvr.py {sub}")
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    assert f"nvr.py {sub}" in readme, f"README.md does not document `nvr.py {sub}`"


def test_parser_lists_exactly_the_documented_subcommands():
    sys.path.insert(0, ROOT)
    import nvr as nvrmod
    parser = nvrmod.build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert sorted(sub.choices) == sorted(SUBCOMMANDS)


def test_lowering_retention_asks_then_deletes_oldest(tmp_path, clocks):
    from conftest import make_testdb
    import recording
    t = make_testdb(tmp_path, clocks)
    start = recording.parse_time("2026-11-29T10:00:00Z")
    ids = [t.add_recording(start_90k=start + i * 90_000, run_offset=i) for i in range(3)]
    t.db.flush("test")
    t.db.close()
    args = ["config", "stream", "edit", "test-camera", "main", "--retain-bytes", "40000",
            "--db-dir", t.db_dir]
    r = nvr(*args, cwd=str(tmp_path), ok=False)
    assert r.returncode == 1
    assert "the new limit deletes 2 recording(s) (59.4 KiB) now; add --yes" in r.stderr
    assert "retain=1.0 GiB" in nvr("config", "stream", "list", "--db-dir", t.db_dir,
                                   cwd=str(tmp_path)).stdout
    assert sorted(os.listdir(t.sample_dir)) == sorted(["meta"] + [f"{c:016x}" for c in ids])
    r = nvr(*args, "--yes", cwd=str(tmp_path))
    assert "deleted 2 recording(s) (59.4 KiB) to fit the new limit" in r.stdout
    assert sorted(os.listdir(t.sample_dir)) == [f"{ids[2]:016x}", "meta"]
    assert nvr("check", "--db-dir", t.db_dir, cwd=str(tmp_path)).stdout.endswith("check: clean\n")


@pytest.mark.parametrize("text,message", [
    ('dbDir = "x"\nworkerThreads = 4\n', "unknown key 'workerThreads'"),
    ('[[binds]]\nipv4 = "127.0.0.1:1"\nallowUnauthenticatedPermission = {}\n',
     "unknown key binds[0].'allowUnauthenticatedPermission'"),
    ('[[binds]]\nipv4 = "127.0.0.1:1"\nunix = "/tmp/s"\n', "exactly one of ipv4, ipv6, unix"),
    ('[[binds]]\nipv4 = "127.0.0.1:1"\ntls = { cert = "c" }\n', "tls needs both cert and key"),
    ('[[binds]]\nipv4 = "127.0.0.1:1"\nallowUnauthenticatedPermissions = { view = true }\n',
     "unknown permission(s) ['view']"),
    ('dbDir = 3\n', "dbDir must be a str"),
    ('dbDir = "x\n', "config t.toml: "),
])
def test_config_errors_name_the_key(text, message):
    sys.path.insert(0, ROOT)
    import nvr as nvrmod
    with pytest.raises(nvrmod.UsageError) as e:
        nvrmod.parse_config(text, "t.toml")
    assert message in str(e.value)


def test_config_parses_moonfire_keys_and_ours():
    sys.path.insert(0, ROOT)
    import nvr as nvrmod
    c = nvrmod.parse_config(
        'dbDir = "/var/lib/nvr/db"\nuiDir = "/srv/ui"\n'
        '[[binds]]\nipv4 = "0.0.0.0:8080"\nallowUnauthenticatedPermissions = { viewVideo = true }\n'
        'trustForwardHeaders = true\n'
        '[[binds]]\nunix = "/run/nvr.sock"\nownUidIsPrivileged = true\n'
        '[[binds]]\nipv6 = "[::1]:8443"\ntls = { cert = "c.pem", key = "k.pem" }\n', "t")
    assert c.db_dir == "/var/lib/nvr/db" and c.ui_dir == "/srv/ui"
    a, b, t = c.binds
    assert a.address == ("ipv4", "0.0.0.0:8080") and a.trust_forward_headers
    assert a.allow_unauthenticated_permissions.view_video
    assert b.address == ("unix", "/run/nvr.sock") and b.own_uid_is_privileged
    assert (t.tls_cert, t.tls_key) == ("c.pem", "k.pem")
    default = nvrmod.load_config(None)
    assert default.db_dir == "nvr-data/db"
    assert default.binds[0].address == ("ipv4", "127.0.0.1:8080")  # loopback by default


def test_run_with_a_bad_config_says_which_key(tmp_path):
    (tmp_path / "nvr.toml").write_text('dbdir = "x"\n')
    r = nvr("run", "--config", "nvr.toml", cwd=str(tmp_path), ok=False)
    assert r.returncode == 1 and "unknown key 'dbdir'; known keys: dbDir, uiDir, binds" in r.stderr


def run_after_hand_edit(tmp_path, table: str, key: str, value: str):
    """`nvr.py run` after a config JSON key of every `table` row (stream, sample_file_dir)
    was set by hand (as with `nvr.py sql`) on a database with one recorded stream."""
    cwd = str(tmp_path)
    nvr("init", cwd=cwd)
    nvr("config", "camera", "add", "gate", cwd=cwd)
    nvr("config", "stream", "add", "gate", "main", "--url", "rtsp://192.0.2.10/main",
        "--record", "--dir", "1", "--retain-bytes", "1G", cwd=cwd)
    conn = sqlite3.connect(os.path.join(cwd, "nvr-data", "db", "db"))
    with conn:
        conn.execute(f"update {table} set config = json_set(config, '$.{key}', json(?))",
                     (value,))
    conn.close()
    return nvr("run", cwd=cwd, ok=False)


@pytest.mark.parametrize("key,value,fix", [
    ("flushIfSec", '"120"', "--flush-if-sec N"),
    ("flushIfSec", "1.5", "--flush-if-sec N"),
    ("retainBytes", "-1", "--retain-bytes SIZE"),
    ("retainBytes", "true", "--retain-bytes SIZE")])
def test_run_refuses_a_hand_edited_stream_number_naming_the_fix(tmp_path, key, value, fix):
    """A recorded stream's flushIfSec or retainBytes that isn't a whole number (edited
    with `nvr.py sql`) made the syncer fail after every recording, forever."""
    r = run_after_hand_edit(tmp_path, "stream", key, value)
    assert r.returncode == 1, r.stderr
    assert (f"stream gate main: {key} is {value}, not a whole number from 0 up; set it "
            f"with `nvr.py config stream edit gate main {fix}`") in r.stderr
    assert "Traceback" not in r.stderr
    assert nvr("check", cwd=str(tmp_path)).stdout.endswith("check: clean\n")


def test_run_goes_on_with_a_stale_notify_socket(tmp_path):
    """A NOTIFY_SOCKET that doesn't work made `run` die with a traceback at READY=1,
    after starting the recorder and web server and before the shutdown flush."""
    import signal
    import time
    cwd = str(tmp_path)
    nvr("init", cwd=cwd)
    (tmp_path / "nvr.toml").write_text('dbDir = "nvr-data/db"\n[[binds]]\n'
                                       'ipv4 = "127.0.0.1:0"\n')
    log_path = tmp_path / "nvr.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, NVR, "run", "--config", "nvr.toml", "--read-only"], cwd=cwd,
            stdout=log, stderr=subprocess.STDOUT,
            env=dict(os.environ, NVR_LOG="INFO", NOTIFY_SOCKET=str(tmp_path / "no" / "sock")))
        try:
            deadline = time.monotonic() + 30
            while "READY=1" not in log_path.read_text() and proc.poll() is None:
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0, log_path.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log_path.read_text()
    warnings = [line for line in text.splitlines()
                if "WARNING" in line and "running as root" not in line]
    assert len(warnings) == 1 and "Traceback" not in text
    assert (f"can't tell systemd READY=1 through NOTIFY_SOCKET={tmp_path}/no/sock ([Errno 2] "
            f"No such file or directory); going on without") in text
    assert "shut down cleanly" in text


NOT_A_DIR = ("database directory {} is not a directory (it or a parent is a file); --db-dir "
             "names the directory that holds the database file 'db'")


@pytest.mark.parametrize("args,message", [
    (["init", "--db-dir", "afile"], NOT_A_DIR.format("afile")),
    (["init", "--db-dir", "afile/db"], NOT_A_DIR.format("afile/db")),
    (["config", "dir", "list", "--db-dir", "afile"], NOT_A_DIR.format("afile")),
    (["check", "--db-dir", "afile"], NOT_A_DIR.format("afile")),
    (["sql", "--db-dir", "afile"], NOT_A_DIR.format("afile")),
    (["config", "dir", "list", "--db-dir", "adir"],
     "adir/db is not a file; the database is the SQLite file 'db' in --db-dir adir"),
    (["run", "--config", "adir"],
     "config file adir is a directory; --config names a TOML file (README: Configuration)"),
    (["run", "--config", "latin1.toml"], "config file latin1.toml is not UTF-8 text (byte 12: "
                                         "invalid continuation byte); TOML files are UTF-8"),
])
def test_bad_paths_are_one_line_errors(tmp_path, args, message):
    """These were tracebacks (FileExistsError, NotADirectoryError, IsADirectoryError,
    sqlite3.OperationalError), or an error that didn't name the file."""
    (tmp_path / "afile").write_text("")
    (tmp_path / "adir" / "db").mkdir(parents=True)
    (tmp_path / "latin1.toml").write_bytes('dbDir = "café"\n'.encode("latin-1"))
    r = nvr(*args, cwd=str(tmp_path), ok=False)
    assert (r.returncode, r.stderr) == (1, f"error: {message}\n")


def test_a_failing_shutdown_flush_is_retried_then_a_one_line_error(tmp_path, clocks,
                                                                  monkeypatch):
    import sqlite3
    import threading
    sys.path.insert(0, ROOT)
    import db as dbmod
    import nvr as nvrmod
    from conftest import make_testdb
    t = make_testdb(tmp_path, clocks)
    d = t.db
    rec = nvrmod.Recorder(d, lambda s: None, shutdown=threading.Event())
    real, calls = d.flush, []

    def flaky(reason, fails):
        calls.append(reason)
        if len(calls) <= fails:
            raise sqlite3.OperationalError("disk I/O error")
        return real(reason)
    monkeypatch.setattr(d, "flush", lambda reason: flaky(reason, 2))
    rec.stop()   # two failures, then it goes through
    assert calls == ["NVR shutdown"] * 3
    calls.clear()
    monkeypatch.setattr(d, "flush", lambda reason: flaky(reason, 99))
    with pytest.raises(dbmod.DbError, match=r"the shutdown flush failed \(disk I/O error\); "
                                            r"the recordings made since the last flush"):
        rec._final_flush("NVR shutdown")
    assert len(calls) == nvrmod.Recorder.FINAL_FLUSH_TRIES
    monkeypatch.setattr(d, "flush", real)
    d.close()


def test_stop_goes_on_when_a_dirs_garbage_collection_fails(tmp_path, clocks, caplog):
    """Recorder.stop collects each dir's garbage with shutdown set, so an I/O error
    gives up at once (ShutdownError). It used to escape stop: no GC of the other dirs,
    no final flush, exit status 1 with a traceback. Now that dir's garbage waits for
    the next start's recovery, and the rest goes on."""
    import errno
    import logging
    import threading
    sys.path.insert(0, ROOT)
    import db as dbmod
    import nvr as nvrmod
    from conftest import make_testdb
    from fakes import FakeFs
    t = make_testdb(tmp_path, clocks)
    d = t.db
    dir2 = d.add_sample_file_dir(str(tmp_path / "sample2"))
    sub = d.add_stream(t.camera_id, "sub", dict(d.streams[t.stream_id].config), dir2)
    a = t.add_recording(start_90k=10**12)
    t.add_recording(start_90k=10**12, stream_id=sub)
    d.flush("test")
    rec = nvrmod.Recorder(d, lambda s: None, shutdown=threading.Event())
    assert list(rec.syncers) == [t.dir_id, dir2]  # the failing dir comes first
    for stream_id in (t.stream_id, sub):
        d.delete_oldest_recordings(stream_id, retain_bytes=0)  # garbage at stop's flush
    sfd = d.dirs[t.dir_id].dir
    real = sfd.fs
    sfd.fs = fs = FakeFs(t.sample_dir)
    fs.expect("unlink", f"{a:016x}", error=OSError(errno.EIO, "I/O error"))
    with caplog.at_level(logging.WARNING):
        rec.stop()
    fs.assert_done()
    sfd.fs = real
    assert [r.getMessage() for r in caplog.records if r.name == "recorder"] == [
        f"{t.sample_dir}: garbage not collected at shutdown (unlink {t.sample_dir}/{a:016x}: "
        f"gave up on shutdown after: [Errno 5] I/O error); start-up recovery will collect it "
        f"at the next start"]
    # The other dir was collected and the final flush deleted its garbage row.
    assert os.listdir(str(tmp_path / "sample2")) == ["meta"]
    garbage = "select composite_id from garbage order by composite_id"
    assert d.conn.execute(garbage).fetchall() == [(a,)]
    d.close()
    # The next start's recovery collects the rest.
    d = dbmod.Database.open_dir(t.db_dir, clocks)
    d.open_sample_file_dirs()
    assert os.listdir(t.sample_dir) == ["meta"]
    d.flush("test")
    assert d.conn.execute(garbage).fetchall() == []
    d.close()


# ---------------------------------------------------------------------------
# Private by default (issue 13 item 4): the database holds password and session
# hashes and camera passwords.

def mode(path) -> int:
    return os.stat(path).st_mode & 0o777


def run_until_ready(tmp_path, args, *, umask=None):
    """Starts `nvr.py run ARGS`, waits for READY=1 on a NOTIFY_SOCKET of ours, and
    returns (process, log path, notify socket); the caller stops the process."""
    import socket
    if not (tmp_path / "nvr.toml").exists():
        (tmp_path / "nvr.toml").write_text('dbDir = "nvr-data/db"\n[[binds]]\n'
                                           'ipv4 = "127.0.0.1:0"\n')
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(30)
    log_path = tmp_path / "run.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, NVR, "run", *args], cwd=str(tmp_path),
                                stdout=log, stderr=subprocess.STDOUT, umask=-1 if umask is None
                                else umask, env=dict(os.environ, NVR_LOG="INFO",
                                                     NOTIFY_SOCKET=str(tmp_path / "notify")))
    try:
        msg = sock.recv(100)
    except TimeoutError:
        proc.kill()
        proc.wait()
        raise AssertionError("no READY=1 in 30 s:\n" + log_path.read_text()) from None
    assert msg == b"READY=1", (msg, log_path.read_text())
    return proc, log_path, sock


def stop(proc, sock) -> None:
    import signal
    proc.send_signal(signal.SIGTERM)
    assert sock.recv(100) == b"STOPPING=1"
    assert proc.wait(30) == 0
    sock.close()


@pytest.mark.parametrize("umask", [0o022, 0o000], ids=["umask022", "umask000"])
def test_the_database_is_private_whatever_the_umask(tmp_path, umask):
    """Before, the directory was 0777 and the files 0666 less the umask: with the
    usual 022, every local user could read the password hashes and camera passwords
    (0755/0644); with 000 they could also write them."""
    r = subprocess.run([sys.executable, NVR, "init"], cwd=str(tmp_path), umask=umask,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    db_dir = tmp_path / "nvr-data" / "db"
    assert (mode(db_dir), mode(db_dir / "db")) == (0o700, 0o600)
    assert mode(tmp_path / "nvr-data" / "sample") == 0o700
    proc, log_path, sock = run_until_ready(tmp_path, ["--config", "nvr.toml"], umask=umask)
    try:
        # SQLite made the WAL and shared-memory files while nvr runs: the db file's mode.
        assert (mode(db_dir / "db-wal"), mode(db_dir / "db-shm")) == (0o600, 0o600)
    finally:
        stop(proc, sock)
    assert "readable or writable by other users" not in log_path.read_text()


@pytest.mark.parametrize("umask", [0o022, 0o000], ids=["umask022", "umask000"])
def test_upgrade_backup_is_private_whatever_the_umask(tmp_path, umask):
    sys.path.insert(0, ROOT)
    import upgrade
    conn = sqlite3.connect(tmp_path / "db")
    conn.execute("create table t (x)")
    old = os.umask(umask)
    try:
        dest = upgrade.backup(conn, str(tmp_path), 7)
    finally:
        os.umask(old)
        conn.close()
    assert dest == str(tmp_path / "db.pre-upgrade-v7")
    assert mode(dest) == 0o600
    assert sqlite3.connect(dest).execute("select count(*) from t").fetchone() == (0,)


def test_run_warns_about_a_database_others_can_read_and_names_the_chmod(tmp_path):
    """A database made by an older nvr or by Moonfire (0755 dir, 0644 files)."""
    nvr("init", cwd=str(tmp_path))
    db_dir = tmp_path / "nvr-data" / "db"
    os.chmod(db_dir, 0o755)
    os.chmod(db_dir / "db", 0o644)
    (db_dir / "db.pre-upgrade-v7").write_bytes(b"")
    os.chmod(db_dir / "db.pre-upgrade-v7", 0o666)
    proc, log_path, sock = run_until_ready(tmp_path, ["--config", "nvr.toml", "--read-only"])
    stop(proc, sock)
    lines = [line for line in log_path.read_text().splitlines()
             if "readable or writable by other users" in line]
    assert len(lines) == 1, log_path.read_text()
    fix = "chmod 700 nvr-data/db && chmod 600 nvr-data/db/db nvr-data/db/db.pre-upgrade-v7"
    assert lines[0].endswith("WARNING MainThread nvr: the database in nvr-data/db is readable "
                             "or writable by other users (it holds password hashes and camera "
                             "passwords); make it private: " + fix)
    # The command it names does the job: the next run has nothing to say.
    subprocess.run(fix, shell=True, cwd=str(tmp_path), check=True)
    assert (mode(db_dir), mode(db_dir / "db")) == (0o700, 0o600)
    proc, log_path, sock = run_until_ready(tmp_path, ["--config", "nvr.toml", "--read-only"])
    stop(proc, sock)
    assert "readable or writable by other users" not in log_path.read_text()


def test_run_as_root_says_a_dedicated_user_is_safer(tmp_path):
    nvr("init", cwd=str(tmp_path))
    proc, log_path, sock = run_until_ready(tmp_path, ["--config", "nvr.toml", "--read-only"])
    stop(proc, sock)
    text = log_path.read_text()
    line = ("WARNING MainThread nvr: running as root; a dedicated user is safer "
            "(docs/install.md: 'A user for nvr')")
    assert (line in text) == (os.geteuid() == 0), text
    # test_install.py runs it as a dedicated user, and checks it says nothing there.


def test_version_names_nvr_python_pyav_ffmpeg_sqlite_and_argon2():
    import importlib.metadata
    import av
    sys.path.insert(0, ROOT)
    import api
    r = subprocess.run([sys.executable, NVR, "--version"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"nvr {api.VERSION} ({ROOT})"
    assert lines[1] == f"Python {sys.version.split()[0]} ({sys.executable})"
    assert lines[2] == f"PyAV {av.__version__}"
    # FFmpeg's version string, and its libraries' versions as PyAV reports them.
    m = re.fullmatch(r"FFmpeg (\S+) \(libavcodec (\S+), libavformat (\S+), libavutil (\S+)\)",
                     lines[3])
    assert m and re.match(r"n?\d+\.\d+", m.group(1)), lines[3]
    assert m.group(2) == ".".join(map(str, av.library_versions["libavcodec"]))
    if hasattr(av, "ffmpeg_version_info"):
        assert m.group(1) == av.ffmpeg_version_info
    assert lines[4] == f"SQLite {sqlite3.sqlite_version}"
    assert lines[5] == f"argon2-cffi {importlib.metadata.version('argon2-cffi')}"
    assert len(lines) == 6


def test_demo_camera_has_main_and_sub_and_demo_urls_are_accepted(tmp_path):
    """--demo makes main and sub streams (Moonfire's UI shows live view of sub streams
    only); an older demo camera with only a main stream gets its sub; `demo:` URLs go
    through `config stream add` like rtsp:// ones, checked by demo.py's rules."""
    import db as dbmod
    import clock
    import nvr as nvrmod
    cwd = str(tmp_path)
    nvr("init", cwd=cwd)
    d = dbmod.Database.open_dir(os.path.join(cwd, "nvr-data", "db"), clock.RealClocks())
    try:
        nvrmod._demo_camera(d)
        (cam,) = [c for c in d.cameras.values() if c.short_name == "demo"]
        urls = {t: d.streams[i].config["url"] for t, i in cam.streams.items()}
        assert urls == {"main": "demo:", "sub": "demo:320x180@15"}
        assert all(d.streams[i].record for i in cam.streams.values())
        d.delete_stream(cam.streams["sub"])
        nvrmod._demo_camera(d)   # an older demo camera: the sub comes back, main stays
        cam = d.cameras[cam.id]
        assert sorted(cam.streams) == ["main", "sub"]
        nvrmod._demo_camera(d)   # and nothing more
        assert len(d.streams) == 2
    finally:
        d.close()
    nvr("config", "camera", "add", "fake", cwd=cwd)
    nvr("config", "stream", "add", "fake", "main", "--url", "demo:1280x720@30", cwd=cwd)
    assert "demo:1280x720@30" in nvr("config", "stream", "list", cwd=cwd).stdout
    r = nvr("config", "stream", "add", "fake", "sub", "--url", "demo:99x99", cwd=cwd, ok=False)
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert "bad URL: demo:99x99: size 99x99 is not allowed" in r.stderr
