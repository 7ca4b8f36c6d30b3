"""docs/install.md and contrib/: the production install, checked so the guide can't rot.

- `test_unit_*`: `systemd-analyze verify` accepts contrib/nvr.service with nothing to
  say, and the same check flags a unit broken in each of the ways it can be (a misspelt
  key, a bad value, a missing program); `systemd-analyze security --offline` rates it.
- `test_guide_as_written` (root only): runs the shell blocks of docs/install.md marked
  `<!-- test: NAME -->`, in order, as written, except that
  - the paths the guide installs to (/opt/nvr, /etc/nvr, /var/lib/nvr, ...) are moved
    under a temporary directory, in the commands and in the files they install;
  - `apt-get install` checks that the packages are installed rather than installing;
  - `sudo -u U` is `runuser -u U --` and plain `sudo` nothing (the test is root);
  - `sudo systemctl` goes to `FakeSystemd`, which stands in for systemd as PID 1:
    `daemon-reload` verifies the unit and its drop-ins, `start` runs its ExecStart as its
    User= with its UMask=, Environment=, WorkingDirectory=, NoNewPrivileges= and
    MemoryDenyWriteExecute= (the kernel's PR_SET_MDWE), with NOTIFY_SOCKET set to a
    socket it reads, and returns once nvr says READY=1; `stop` sends SIGTERM and wants
    STOPPING=1 and exit status 0. It also checks that the unit's ReadWritePaths cover
    every directory nvr writes (the rest of the sandbox needs the real systemd).
  The `nvr` user is created by the guide's own `useradd` and deleted by its `userdel`
  (or by the clean-up if the test fails); the web server's port is 0, not 8080.
- `test_records_with_memory_deny_write_execute`: the demo camera records with
  PR_SET_MDWE in force, as the unit's MemoryDenyWriteExecute=yes would have it.
- `test_records_and_serves_under_the_units_sandbox`: a real RTSP camera is recorded and
  its video served with the unit's SystemCallFilter= (expanded by systemd-analyze, loaded
  with libseccomp), RestrictAddressFamilies=, NoNewPrivileges= and MDWE in force.
"""

import ctypes
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUIDE = os.path.join(ROOT, "docs", "install.md")
UNIT = os.path.join(ROOT, "contrib", "nvr.service")
NVR = os.path.join(ROOT, "nvr.py")

# The paths the guide installs to; the test moves them under its temporary root.
INSTALL_PATHS = ("/opt/nvr", "/etc/nvr", "/var/lib/nvr", "/etc/systemd/system",
                 "/var/backups/nvr", "/media/nvr2")
_PATH_RE = re.compile(r"(?<![\w/.])(" + "|".join(re.escape(p) for p in INSTALL_PATHS) + r")")

BLOCKS = ["packages", "user", "source", "init", "config", "service", "disk", "backup",
          "restore", "upgrade", "uninstall", "purge"]

PR_SET_NO_NEW_PRIVS = 38
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1


def guide_blocks() -> list[tuple[str, str]]:
    with open(GUIDE, encoding="utf-8") as f:
        text = f.read()
    return re.findall(r"^<!-- test: (\w+) -->\n```sh\n(.*?)^```", text, re.M | re.S)


def verify_unit(text: str) -> str:
    """What `systemd-analyze verify` says about a unit (its drop-ins appended); empty if
    nothing. It exits 0 on unknown keys and bad values, warning on stderr: both count."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "nvr.service")
        with open(path, "w") as f:
            f.write(text)
        r = subprocess.run(["systemd-analyze", "verify", path], capture_output=True,
                           text=True, timeout=60)
    return (r.stdout + r.stderr + (f"exit status {r.returncode}" if r.returncode else "")) \
        .replace(path, "nvr.service").strip()


def parse_unit(text: str) -> dict[str, list[str]]:
    """`Section.Key` -> its values in order (repeated keys and drop-ins add up)."""
    out, section = {}, None
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return out


needs_systemd_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                           reason="needs systemd-analyze (package systemd)")


@needs_systemd_analyze
def test_unit_verifies_cleanly():
    with open(UNIT) as f:
        text = f.read()
    assert verify_unit(text) == ""
    u = parse_unit(text)
    assert u["Service.Type"] == ["notify"]
    assert u["Service.Restart"] == ["on-failure"]
    assert u["Service.User"] == ["nvr"]
    assert u["Service.ExecStart"] == ["/usr/bin/python3 /opt/nvr/nvr.py run --config "
                                      "/etc/nvr/nvr.toml"]
    with open(os.path.join(ROOT, "contrib", "nvr.toml")) as f:
        assert re.search(r'^dbDir = "/var/lib/nvr/db"$', f.read(), re.M)
    assert u["Service.ReadWritePaths"] == ["/var/lib/nvr"]


@needs_systemd_analyze
@pytest.mark.parametrize("old,new,complaint", [
    ("ProtectKernelTunables=yes", "ProtectKernelTunabels=yes", "Unknown key"),
    ("Type=notify", "Type=notifi", "Failed to parse service type"),
    ("UMask=0077", "UMask=0999", "Failed to parse"),
    ("ExecStart=/usr/bin/python3", "ExecStart=/usr/bin/no-such-python", "is not executable"),
    ("SystemCallFilter=@system-service", "SystemCallFilter=@no-such-group",
     "Unknown system call group"),
])
def test_unit_check_catches_a_broken_unit(old, new, complaint):
    with open(UNIT) as f:
        text = f.read()
    assert old in text
    problems = verify_unit(text.replace(old, new, 1))
    assert complaint in problems, problems


@needs_systemd_analyze
def test_unit_sandbox_is_rated_ok():
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", UNIT],
                       capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for nvr.service: (\d+\.\d+) (\w+)", r.stdout)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= 2.0 and m.group(2) == "OK", m.group(0)


def test_guide_blocks_are_all_there():
    """A test marker lost in an edit would silently stop testing its block."""
    assert [name for name, _ in guide_blocks()] == BLOCKS


# ---------------------------------------------------------------------------
# The guide, run.

class FakeSystemd:
    """Stands in for systemd for `sudo systemctl ...` lines (see the module docstring)."""

    def __init__(self, root: str, mapped):
        self.root, self.mapped = root, mapped
        self.unit_dir = mapped("/etc/systemd/system")
        self.proc = None
        self.sock = None
        self.journal = os.path.join(root, "journal.log")
        self.enabled = False
        self.starts = 0

    def unit_text(self) -> str:
        text = open(os.path.join(self.unit_dir, "nvr.service")).read()
        dropins = os.path.join(self.unit_dir, "nvr.service.d")
        if os.path.isdir(dropins):
            for name in sorted(os.listdir(dropins)):
                if name.endswith(".conf"):
                    text += "\n" + open(os.path.join(dropins, name)).read()
        return text

    def __call__(self, argv: list[str]) -> None:
        now = "--now" in argv
        argv = [a for a in argv if a != "--now"]
        verb, units = argv[0], argv[1:]
        assert units in ([], ["nvr"]), argv
        if verb == "daemon-reload":
            if os.path.exists(os.path.join(self.unit_dir, "nvr.service")):
                assert verify_unit(self.unit_text()) == ""
        elif verb == "enable":
            assert parse_unit(self.unit_text())["Install.WantedBy"] == ["multi-user.target"]
            self.enabled = True
            if now:
                self.start()
        elif verb == "disable":
            self.enabled = False
            if now:
                self.stop()
        elif verb == "start":
            self.start()
        elif verb == "stop":
            self.stop()
        else:
            raise AssertionError(f"systemctl {verb} is not emulated")

    def start(self) -> None:
        if self.proc is not None:
            return  # already active, as systemctl start would say nothing
        u = parse_unit(self.unit_text())
        assert u["Service.Type"] == ["notify"]
        (user,) = u["Service.User"]
        pw = pwd.getpwnam(user)
        argv = [self.mapped(a) for a in shlex.split(u["Service.ExecStart"][-1])]
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
               "HOME": pw.pw_dir, "USER": user, "LOGNAME": user}
        for e in u.get("Service.Environment", []):
            for kv in shlex.split(e):
                k, _, v = kv.partition("=")
                env[k] = v
        os.makedirs(os.path.join(self.root, "run"), mode=0o755, exist_ok=True)
        notify = os.path.join(self.root, "run", "notify")
        if os.path.exists(notify):
            os.unlink(notify)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(notify)
        os.chmod(notify, 0o666)
        self.sock.settimeout(1)
        env["NOTIFY_SOCKET"] = notify
        umask = int(u.get("Service.UMask", ["0022"])[-1], 8)
        nnp = u.get("Service.NoNewPrivileges") == ["yes"]
        mdwe = u.get("Service.MemoryDenyWriteExecute") == ["yes"]

        def preexec():
            libc = ctypes.CDLL(None, use_errno=True)
            os.umask(umask)
            if nnp and libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
            if mdwe and libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0 \
                    and ctypes.get_errno() != 22:  # EINVAL: a kernel before 6.3
                raise OSError(ctypes.get_errno(), "PR_SET_MDWE")

        with open(self.journal, "ab") as log:
            self.proc = subprocess.Popen(
                argv, env=env, cwd=self.mapped(u.get("Service.WorkingDirectory", ["/"])[-1]),
                user=pw.pw_uid, group=pw.pw_gid, extra_groups=[], preexec_fn=preexec,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        self.starts += 1
        deadline = time.monotonic() + 60
        while True:
            try:
                msg = self.sock.recv(100)
            except TimeoutError:
                msg = None
            if msg == b"READY=1":
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()  # the unit failed: inactive, as systemd would leave it
                self.sock.close()
                raise AssertionError(f"nvr exited or timed out before READY=1:\n"
                                     f"{self.journal_text()}")
        self.check_write_paths(u)

    def check_write_paths(self, u) -> None:
        """Every directory nvr writes must be under a ReadWritePaths= of the unit, or
        ProtectSystem=strict would make it read-only for the real service."""
        allowed = [self.mapped(p) for v in u.get("Service.ReadWritePaths", [])
                   for p in v.split()]
        conn = sqlite3.connect(f"file:{self.mapped('/var/lib/nvr/db/db')}?mode=ro", uri=True)
        written = [self.mapped("/var/lib/nvr/db")] + \
            [p for (p,) in conn.execute(
                "select json_extract(config, '$.path') from sample_file_dir")]
        conn.close()
        for path in written:
            assert any(path == a or path.startswith(a + "/") for a in allowed), \
                f"nvr writes {path}, which the unit's ReadWritePaths {allowed} don't cover"

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        msgs = []
        deadline = time.monotonic() + 60
        while b"STOPPING=1" not in msgs and time.monotonic() < deadline:
            try:
                msgs.append(self.sock.recv(100))
            except TimeoutError:
                pass
        status = self.proc.wait(60)
        self.proc = None
        self.sock.close()
        assert b"STOPPING=1" in msgs, self.journal_text()
        assert status == 0, f"nvr exited {status}:\n{self.journal_text()}"

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def journal_text(self) -> str:
        with open(self.journal, errors="replace") as f:
            return f.read()


PRELUDE = r"""
set -euo pipefail
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
sudo() {
    if [ "$1" = -u ]; then local u=$2; shift 2; runuser -u "$u" -- "$@"; else "$@"; fi
}
apt-get() {
    [ "$1" = install ] || { echo "test: apt-get $1 is not emulated" >&2; return 1; }
    shift
    local p
    for p in "$@"; do
        case $p in -*) continue;; esac
        dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -qx 'install ok installed' \
            || { echo "test: the Debian package $p is not installed" >&2; return 1; }
    done
}
"""


def logical_lines(block: str) -> list[str]:
    return block.replace("\\\n", " ").splitlines()


def run_block(block: str, mapped, systemd: FakeSystemd, stdin: str = "") -> str:
    """Runs a guide block: `sudo systemctl` lines through `systemd`, the rest in bash,
    in order; returns what bash printed (stdout, then stderr, per run)."""
    out, pending = [], []

    def flush():
        if pending:
            script = PRELUDE + mapped("\n".join(pending)) + "\n"
            r = subprocess.run(["bash", "-c", script], cwd=ROOT, input=stdin,
                               capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, f"{chr(10).join(pending)}\nfailed ({r.returncode}):\n" \
                                      f"{r.stdout}{r.stderr}"
            out.append(r.stdout + r.stderr)
            pending.clear()

    for line in logical_lines(block):
        if re.match(r"\s*sudo systemctl ", line):
            flush()
            systemd(shlex.split(line)[2:])
        else:
            pending.append(line)
    flush()
    return "".join(out)


def user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def mode_owner(path: str) -> tuple[int, str]:
    st = os.stat(path)
    return st.st_mode & 0o777, pwd.getpwuid(st.st_uid).pw_name


@pytest.fixture
def install_root():
    if os.geteuid() != 0:
        pytest.skip("the install guide's test creates a user: run it as root")
    if user_exists("nvr"):
        home = pwd.getpwnam("nvr").pw_dir
        if not home.startswith(os.path.join(tempfile.gettempdir(), "nvr-install-test-")):
            pytest.skip("a user named nvr exists here; this test creates and deletes its own")
        if os.path.exists(home):
            pytest.skip(f"another run of this test is using the nvr user ({home})")
        subprocess.run(["userdel", "nvr"], check=True)  # left by an interrupted run
    # Not under pytest's tmp_path: its parents are 0700, and nvr must reach /opt/nvr.
    root = tempfile.mkdtemp(prefix="nvr-install-test-")
    os.chmod(root, 0o755)
    for d in ("opt", "etc/systemd/system", "var/lib", "var/backups", "media/nvr2"):
        os.makedirs(os.path.join(root, d), mode=0o755)
    yield root
    if user_exists("nvr") and pwd.getpwnam("nvr").pw_dir.startswith(root):
        subprocess.run(["userdel", "nvr"], check=True)
    shutil.rmtree(root)


def test_guide_as_written(install_root):
    root = install_root
    mapped = lambda text: _PATH_RE.sub(lambda m: root + m.group(1), text)  # noqa: E731
    systemd = FakeSystemd(root, mapped)
    blocks = dict(guide_blocks())
    sys.path.insert(0, ROOT)
    import api
    try:
        run_block(blocks["packages"], mapped, systemd)

        run_block(blocks["user"], mapped, systemd)
        pw = pwd.getpwnam("nvr")
        assert pw.pw_dir == mapped("/var/lib/nvr") and pw.pw_shell == "/usr/sbin/nologin"
        assert mode_owner(mapped("/var/lib/nvr")) == (0o700, "nvr")

        out = run_block(blocks["source"], mapped, systemd)
        assert mode_owner(mapped("/opt/nvr/nvr.py")) == (0o644, "root")
        assert mode_owner(mapped("/opt/nvr/upgrade")) == (0o755, "root")
        assert out.startswith(f"nvr {api.VERSION} ({mapped('/opt/nvr')})\nPython "), out
        assert "\nPyAV " in out and "\nFFmpeg " in out

        run_block(blocks["init"], mapped, systemd)
        assert mode_owner(mapped("/var/lib/nvr/db")) == (0o700, "nvr")
        assert mode_owner(mapped("/var/lib/nvr/db/db")) == (0o600, "nvr")
        assert mode_owner(mapped("/var/lib/nvr/sample")) == (0o700, "nvr")
        assert mode_owner(mapped("/etc/nvr/nvr.toml")) == (0o644, "root")
        # The installed config, moved under the test's root and off port 8080.
        config = mapped("/etc/nvr/nvr.toml")
        text = open(config).read()
        assert '"127.0.0.1:8080"' in text
        with open(config, "w") as f:
            f.write(mapped(text).replace('"127.0.0.1:8080"', '"127.0.0.1:0"'))

        run_block(blocks["config"], mapped, systemd, stdin="a test passphrase\n")
        r = subprocess.run(["runuser", "-u", "nvr", "--", "/usr/bin/python3",
                            mapped("/opt/nvr/nvr.py"), "config", "user", "list", "--db-dir",
                            mapped("/var/lib/nvr/db")], capture_output=True, text=True,
                           timeout=60, cwd=root)
        assert "\tadmin\tenabled\tpassword\tpermissions=" in r.stdout, r.stdout + r.stderr

        run_block(blocks["service"], mapped, systemd)
        assert systemd.enabled and systemd.proc is not None and systemd.starts == 1
        st = os.stat(f"/proc/{systemd.proc.pid}")
        assert st.st_uid == pw.pw_uid

        run_block(blocks["disk"], mapped, systemd)
        assert systemd.starts == 2  # check_write_paths: the new dir is writable
        assert mode_owner(mapped("/media/nvr2/nvr/meta")) == (0o600, "nvr")

        out = run_block(blocks["backup"], mapped, systemd)  # while nvr runs
        assert out == "ok\n"
        backup = sqlite3.connect(mapped("/var/backups/nvr/db"))
        assert backup.execute("select username from user").fetchall() == [("admin",)]
        assert len(backup.execute("select * from sample_file_dir").fetchall()) == 2
        backup.close()
        assert mode_owner(mapped("/var/backups/nvr")) == (0o700, "root")

        # The backup was taken in this run of nvr, so it restores (its dirs' meta agree).
        run_block(blocks["restore"], mapped, systemd)
        assert systemd.starts == 3 and systemd.proc is not None
        assert mode_owner(mapped("/var/lib/nvr/db/db")) == (0o600, "nvr")

        out = run_block(blocks["upgrade"], mapped, systemd)
        assert "already at schema version" in out and "nothing to upgrade" in out, out
        assert systemd.starts == 4 and systemd.proc is not None
        assert os.path.exists(mapped("/opt/nvr.old/nvr.py"))

        # What the guide says a restore can't do: nvr has started since the backup.
        with pytest.raises(AssertionError, match=r"was last opened by open \d+, the "
                                                 r"database expects open \d+"):
            run_block(blocks["restore"], mapped, systemd)
        assert systemd.proc is None

        run_block(blocks["uninstall"], mapped, systemd)
        assert systemd.proc is None and not systemd.enabled
        for p in ("/opt/nvr", "/opt/nvr.old", "/etc/nvr", "/etc/systemd/system/nvr.service",
                  "/etc/systemd/system/nvr.service.d"):
            assert not os.path.exists(mapped(p)), p
        assert os.path.exists(mapped("/var/lib/nvr/db/db"))  # the data stays

        run_block(blocks["purge"], mapped, systemd)
        assert not user_exists("nvr")
        assert not os.path.exists(mapped("/var/lib/nvr"))
    finally:
        systemd.kill()
    journal = systemd.journal_text()
    assert "Traceback" not in journal, journal
    assert journal.count("error: ") == 1, journal  # the refused restore
    # Run as its own user with the database init made: neither start-up warning.
    assert "running as root" not in journal and "readable or writable" not in journal, journal
    assert journal.count("shut down cleanly") == 4, journal


def _set_mdwe():
    if ctypes.CDLL(None).prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        raise OSError("PR_SET_MDWE failed")


def test_records_with_memory_deny_write_execute(tmp_path):
    """The unit's MemoryDenyWriteExecute=yes: PyAV and FFmpeg encode (the demo camera),
    write and index video with the kernel refusing writable executable memory."""
    # The same preexec as below makes a writable executable mapping fail in the child.
    try:
        probe = subprocess.run([sys.executable, "-c", "import mmap; mmap.mmap(-1, 4096, "
                                "prot=7)"], preexec_fn=_set_mdwe, capture_output=True, text=True)
    except subprocess.SubprocessError:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3+)")
    assert probe.returncode == 1 and "PermissionError" in probe.stderr, probe.stderr

    def demo_records(mdwe: bool) -> tuple[int, str]:
        cwd = tmp_path / ("mdwe" if mdwe else "plain")
        cwd.mkdir()
        (cwd / "nvr.toml").write_text('dbDir = "nvr-data/db"\n[[binds]]\nipv4 = "127.0.0.1:0"\n')
        subprocess.run([sys.executable, NVR, "init"], cwd=cwd, check=True, capture_output=True)

        log_path = cwd / "run.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([sys.executable, NVR, "run", "--config", "nvr.toml", "--demo"],
                                    cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                    preexec_fn=_set_mdwe if mdwe else None,
                                    env=dict(os.environ, NVR_LOG="INFO"))
        try:
            deadline = time.monotonic() + 30
            sample = cwd / "nvr-data" / "sample"
            # Wait for video on disk (a sample file past 10 kB), or for a failure.
            while time.monotonic() < deadline and proc.poll() is None and \
                    "Traceback" not in log_path.read_text(errors="replace") and \
                    not any(p.name != "meta" and p.stat().st_size > 10_000
                            for p in sample.iterdir()):
                time.sleep(0.1)
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        conn = sqlite3.connect(cwd / "nvr-data" / "db" / "db")
        (frames,) = conn.execute("select coalesce(sum(video_samples), 0) from recording") \
            .fetchone()
        conn.close()
        return frames, log_path.read_text(errors="replace")

    frames, log = demo_records(mdwe=True)
    if frames == 0:
        plain, _ = demo_records(mdwe=False)
        if plain == 0:
            pytest.skip("the demo camera doesn't record with this PyAV even without MDWE")
    assert frames > 0, log
    assert "Traceback" not in log


# ---------------------------------------------------------------------------
# The unit's system call filter, applied to a real recording.

SECCOMP_WRAPPER = r'''
"""Loads a seccomp filter as the unit's SystemCallFilter=, SystemCallErrorNumber=EPERM
and RestrictAddressFamilies= make systemd load it, then runs argv. Needs Debian's
python3-seccomp (libseccomp's bindings), so it runs under /usr/bin/python3."""
import errno, json, os, socket, sys
import seccomp
spec = json.load(open(sys.argv[1]))
f = seccomp.SyscallFilter(defaction=seccomp.ERRNO(errno.EPERM))
for name in spec["allowed"]:
    if name in ("socket", "socketpair"):
        continue
    try:
        f.add_rule(seccomp.ALLOW, name)
    except (RuntimeError, ValueError):
        pass  # not a system call of this architecture
for name in ("socket", "socketpair"):
    if name in spec["allowed"]:
        for family in spec["families"]:
            f.add_rule(seccomp.ALLOW, name, seccomp.Arg(0, seccomp.EQ, getattr(socket, family)))
f.load()
os.execv(sys.argv[2], sys.argv[2:])
'''


def syscall_groups() -> dict[str, list[str]]:
    r = subprocess.run(["systemd-analyze", "syscall-filter"], capture_output=True, text=True,
                       timeout=60)
    groups, current = {}, None
    for line in r.stdout.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif current is not None and line.strip() and not line.strip().startswith("#"):
            current.append(line.strip())
    return groups


def expand(names, groups) -> set[str]:
    out = set()
    for n in names:
        out |= expand(groups[n], groups) if n.startswith("@") else {n}
    return out


def unit_seccomp_spec() -> dict:
    """The system calls and socket families contrib/nvr.service allows."""
    u = parse_unit(open(UNIT).read())
    groups = syscall_groups()
    allowed = set()
    for v in u["Service.SystemCallFilter"]:
        if v.startswith("~"):
            allowed -= expand(v[1:].split(), groups)
        else:
            allowed |= expand(v.split(), groups)
    assert u["Service.SystemCallErrorNumber"] == ["EPERM"]
    # systemd always lets these through (they're needed to exec and exit at all).
    allowed |= {"execve", "exit", "exit_group", "rt_sigreturn"}
    return {"allowed": sorted(allowed),
            "families": u["Service.RestrictAddressFamilies"][-1].split()}


@needs_systemd_analyze
def test_records_and_serves_under_the_units_sandbox(tmp_path, rtsp_camera):
    """nvr records a real RTSP camera and serves the video (sendfile) with the unit's
    SystemCallFilter (allowed calls; EPERM for the rest), RestrictAddressFamilies,
    NoNewPrivileges and MemoryDenyWriteExecute in force: a call it needs being denied
    would show as an error here rather than on a user's box."""
    if subprocess.run(["/usr/bin/python3", "-c", "import seccomp"]).returncode != 0:
        pytest.skip("needs libseccomp's Python bindings: apt-get install python3-seccomp")
    import json
    import urllib.request
    import uuid as uuidlib
    spec = unit_seccomp_spec()
    assert "sendfile" in spec["allowed"] and "setuid" not in spec["allowed"]
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    (tmp_path / "wrapper.py").write_text(SECCOMP_WRAPPER)
    cwd = str(tmp_path)

    def nvr(*args):
        r = subprocess.run([sys.executable, NVR, *args], cwd=cwd, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
    nvr("init")
    nvr("config", "camera", "add", "cam")
    nvr("config", "stream", "add", "cam", "main", "--url", rtsp_camera.url("main"), "--record",
        "--dir", "1", "--retain-bytes", "1G", "--flush-if-sec", "0")
    (tmp_path / "nvr.toml").write_text(
        'dbDir = "nvr-data/db"\n[[binds]]\nipv4 = "127.0.0.1:0"\n'
        'allowUnauthenticatedPermissions = { viewVideo = true }\n')
    notify = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify))
    sock.settimeout(60)

    def preexec():
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError("PR_SET_NO_NEW_PRIVS failed")
        libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0)  # where the kernel has it

    log_path = tmp_path / "run.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            ["/usr/bin/python3", str(tmp_path / "wrapper.py"), str(tmp_path / "spec.json"),
             sys.executable, NVR, "run", "--config", "nvr.toml", "--rotate-interval-sec", "2"],
            cwd=cwd, stdout=log, stderr=subprocess.STDOUT, preexec_fn=preexec,
            env=dict(os.environ, NVR_LOG="INFO", NOTIFY_SOCKET=str(notify)))
    try:
        try:
            assert sock.recv(100) == b"READY=1"
        except TimeoutError:
            raise AssertionError("no READY=1:\n" + log_path.read_text()) from None
        db_path = tmp_path / "nvr-data" / "db" / "db"
        deadline = time.monotonic() + 60
        while True:  # a committed recording (flush-if-sec 0: at its first rotation)
            conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
            rows = conn.execute("select composite_id & 4294967295 from recording").fetchall()
            (cam_uuid,) = conn.execute("select uuid from camera").fetchone()
            conn.close()
            if rows or proc.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert rows, log_path.read_text()
        port = re.search(r"listening on ipv4 \('127.0.0.1', (\d+)\)", log_path.read_text())
        url = (f"http://127.0.0.1:{port.group(1)}/api/cameras/{uuidlib.UUID(bytes=cam_uuid)}"
               f"/main/view.mp4?s={rows[0][0]}")
        with urllib.request.urlopen(url, timeout=30) as r:
            body = r.read()
        assert body[4:8] == b"ftyp" and len(body) > 10_000
        out = tmp_path / "view.mp4"
        out.write_bytes(body)
        probe = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-show_entries",
                                "stream=nb_read_frames", "-of", "csv=p=0", str(out)],
                               capture_output=True, text=True, timeout=60)
        assert probe.returncode == 0 and probe.stderr == "" and int(probe.stdout) > 0, probe
        proc.send_signal(signal.SIGTERM)
        assert sock.recv(100) == b"STOPPING=1"
        assert proc.wait(60) == 0, log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sock.close()
    text = log_path.read_text()
    for bad in ("Traceback", "ERROR", "Operation not permitted", "Permission denied"):
        assert bad not in text, text
