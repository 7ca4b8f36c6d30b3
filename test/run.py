#!/usr/bin/env python3
"""The test command: `python3 test/run.py [PYTEST_ARGS...]`.

Installs what a fresh Debian 12 machine lacks, then runs the whole suite twice, one run
after the other, and fails if either fails:

1. "pypi": under `python3` (the Python running this script) with PyAV and argon2-cffi
   from PyPI (requirements.txt), as a developer's checkout has them;
2. "debian": under Debian's `/usr/bin/python3` (3.11.2) with Debian's python3-av
   (PyAV 10.0.0) and python3-argon2 (argon2-cffi 21.1.0), the Python a user's box runs
   nvr with (README "Install"). Debian's Python refuses pip installs system-wide
   (PEP 668), so the test tools (pytest, hypothesis, playwright) go into a venv,
   test/.venv-debian (git-ignored), made with `--system-site-packages` so that `av` and
   `argon2` are still Debian's: this is checked before the run, against dpkg's versions
   and /usr/lib/python3/dist-packages, and a venv that shadows them (a pip-installed
   `av` in it, say) is refused with what to delete.

Why all of it twice rather than a subset under Debian: the differences between the two
stacks reach most of the suite: PyAV's API is used by stream.py, demo.py, the writer's
and mp4's tests (through test/clips.py and test/replay.py), the live view and the real
camera tests; argon2-cffi 21.1 by auth.py, so by every test that logs in (api, web,
UI, nvr's CLI). A named subset would be most of the suite and would go stale as tests
are added. Measured on this 2-core machine: one run takes 4-7 min (4.0 with it to
itself, 6.8 while other work loaded it), the whole command 8 min (2026-12-07, with the
debian run not yet collecting test_codec.py), within the ~15 min budget. Runs are not
parallel: on 2 cores the real-time tests (camera, live, UI) would starve.

Each run is pytest with `-rfEs --strict-skips` (test/conftest.py's skip policy: a
skipped test fails, unless ALLOWED_SKIPS there expects the skip; allowed skips are
listed with their reasons) and `--continue-on-collection-errors` (a test module that
fails to import counts as a failure, and the other modules still run). Its output, ending with its own pytest summary, is printed
as it runs; then a summary per run (nvr's tests apart from the test harness's own, the
tests marked `harness`), and last, alone on a line, the total over both runs:
`N passed, N failed, N skipped`. The exit status is 0 only if both runs pass.

What is installed (only what is missing; safe to run again):
- Debian packages (apt-get; needs root): the sqlite3 shell (`nvr.py sql`), ffmpeg
  (ffprobe checks generated video), openssl (the TLS tests make certificates), tzdata
  (time zone tests read the zoneinfo files), GStreamer's RTSP server with the plugins
  that encode H.264/H.265 (the test camera), Chromium (the web UI's tests drive Debian's
  /usr/bin/chromium, which plays H.264, through Playwright; `playwright install` and its
  browser downloads are never needed), python3-av, python3-argon2 and python3-venv (run 2);
- Python packages (pip): for run 1 requirements.txt, test/requirements.txt and
  playwright into `python3`; for run 2 test/requirements.txt and playwright into the venv.

Options of this script (before or among pytest's arguments, which go to both runs):
`--only=pypi` or `--only=debian` runs one of the two.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DEBIAN_PACKAGES = [
    "sqlite3",
    "ffmpeg",
    "openssl",               # test_web.py, test_live.py: TLS certificates
    "tzdata",                # test_recording.py: zoneinfo files
    "python3-gi",
    "gir1.2-gst-rtsp-server-1.0",
    "gstreamer1.0-plugins-base",
    "gstreamer1.0-plugins-good",
    "gstreamer1.0-plugins-bad",
    "gstreamer1.0-plugins-ugly",
    "gstreamer1.0-x",
    "chromium",              # test_ui.py: the browser
    "fonts-dejavu-core",     # test_ui.py: text in screenshots
    "python3-av",            # the debian run
    "python3-argon2",
    "python3-venv",
    "systemd",               # test_install.py: systemd-analyze verify of contrib/nvr.service
    "python3-seccomp",       # test_install.py: the unit's SystemCallFilter, loaded for real
]

# Python module name -> pip requirement file that provides it.
PYTHON_MODULES = {"av": "requirements.txt", "argon2": "requirements.txt",
                  "pytest": "test/requirements.txt", "hypothesis": "test/requirements.txt"}
# Python module name -> pip requirement for the web UI's tests (test_ui.py). Only the
# package: its browser is Debian's chromium above.
UI_TEST_MODULES = {"playwright": "playwright>=1.40"}

DEBIAN_PYTHON = "/usr/bin/python3"
DEBIAN_SITE = "/usr/lib/python3/dist-packages"
VENV = os.path.join(ROOT, "test", ".venv-debian")
# Module -> the Debian package that must provide it in the debian run.
DEBIAN_MODULES = {"av": "python3-av", "argon2": "python3-argon2"}

# Printed by the venv's python: what the debian run really runs with.
_PROBE = """
import json, os, sys
import argon2, av
print(json.dumps({"executable": os.path.realpath(sys.executable),
                  "base_prefix": sys.base_prefix, "version": sys.version.split()[0],
                  "av": [av.__version__, av.__file__],
                  "argon2": [argon2.__version__, argon2.__file__]}))
"""


def log(*args):
    print("test/run.py:", *args, flush=True)


def dpkg_version(package: str) -> str | None:
    r = subprocess.run(["dpkg-query", "-W", "-f=${Status}\t${Version}", package],
                       capture_output=True, text=True)
    if r.returncode != 0:
        return None
    status, _, version = r.stdout.partition("\t")
    return version if "install ok installed" in status else None


def install_debian_packages():
    missing = [p for p in DEBIAN_PACKAGES if dpkg_version(p) is None]
    if missing:
        log("installing Debian packages:", " ".join(missing))
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends"] + missing,
                       check=True, env=env)


def has_module(python: str, module: str) -> bool:
    return subprocess.run([python, "-c", f"import {module}"], capture_output=True).returncode == 0


def install_python_packages(python: str, modules: dict[str, str]):
    """pip-installs, into `python`, the requirement files of the missing `modules`,
    and playwright if missing."""
    files = sorted({req for module, req in modules.items() if not has_module(python, module)})
    for req in files:
        log(f"installing Python packages from {req} for {python}")
        subprocess.run([python, "-m", "pip", "install", "-q", "-r", os.path.join(ROOT, req)],
                       check=True)
    for module, req in UI_TEST_MODULES.items():
        if not has_module(python, module):
            log(f"installing Python package {req} for {python}")
            subprocess.run([python, "-m", "pip", "install", "-q", req], check=True)


def debian_venv() -> str:
    """Makes (if needed) test/.venv-debian and installs the test tools into it; checks
    that it runs Debian's Python with Debian's av and argon2. Returns its python."""
    python = os.path.join(VENV, "bin", "python")
    cfg = os.path.join(VENV, "pyvenv.cfg")
    ok = os.path.exists(python) and os.path.exists(cfg)
    if ok:
        with open(cfg) as f:
            text = f.read()
        ok = "include-system-site-packages = true" in text and "home = /usr/bin" in text
    if not ok:
        log(f"creating {VENV} ({DEBIAN_PYTHON} -m venv --system-site-packages)")
        shutil.rmtree(VENV, ignore_errors=True)
        subprocess.run([DEBIAN_PYTHON, "-m", "venv", "--system-site-packages", VENV],
                       check=True)
    install_python_packages(python, {m: r for m, r in PYTHON_MODULES.items()
                                     if r == "test/requirements.txt"})
    r = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"test/run.py: {python} can't import av and argon2: {r.stderr.strip()}")
    got = json.loads(r.stdout)
    problems = []
    want_exe = os.path.realpath(DEBIAN_PYTHON)
    if got["executable"] != want_exe or got["base_prefix"] != "/usr":
        problems.append(f"its python is {got['executable']} (base {got['base_prefix']}), "
                        f"not {want_exe}")
    for module, package in DEBIAN_MODULES.items():
        version, path = got[module]
        deb = dpkg_version(package) or "?"
        upstream = deb.split(":")[-1].rsplit("-", 1)[0]
        if not path.startswith(DEBIAN_SITE + "/") or version != upstream:
            problems.append(f"its {module} is {version} from {path}, not {package} "
                            f"{deb} from {DEBIAN_SITE}")
    if problems:
        sys.exit(f"test/run.py: {VENV} doesn't run Debian's stack: " + "; ".join(problems)
                 + f"; delete {VENV} and run again")
    return python


def describe(python: str) -> str:
    r = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True)
    if r.returncode != 0:
        return python
    got = json.loads(r.stdout)
    return (f"{python}: Python {got['version']}, PyAV {got['av'][0]}, "
            f"argon2-cffi {got['argon2'][0]}")


def run_pytest(name: str, python: str, args: list[str]) -> dict:
    """One run of the suite; returns its counts (conftest.py's --summary-json)."""
    with tempfile.TemporaryDirectory(prefix="nvr-test-") as tmp:
        summary = os.path.join(tmp, "summary.json")
        what = describe(python)
        log(f"run {name!r} under {what}")
        began = time.monotonic()
        rc = subprocess.call([python, "-m", "pytest", "-q", "-rfEs", "--strict-skips",
                              "--continue-on-collection-errors",
                              f"--summary-json={summary}", "test"] + args, cwd=ROOT)
        took = time.monotonic() - began
        try:
            with open(summary) as f:
                counts = json.load(f)["counts"]
        except (OSError, ValueError):
            counts = None
    return {"name": name, "python": what, "rc": rc, "seconds": took, "counts": counts}


def fmt(c: dict) -> str:
    return f"{c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped"


def main() -> int:
    args, only = [], None
    for a in sys.argv[1:]:
        if a.startswith("--only="):
            only = a.split("=", 1)[1]
            if only not in ("pypi", "debian"):
                sys.exit("test/run.py: --only= takes pypi or debian")
        else:
            args.append(a)
    install_debian_packages()
    runs = []
    if only in (None, "pypi"):
        install_python_packages(sys.executable, PYTHON_MODULES)
        runs.append(("pypi", sys.executable))
    if only in (None, "debian"):
        runs.append(("debian", debian_venv()))
    results = [run_pytest(name, python, args) for name, python in runs]

    total = {"passed": 0, "failed": 0, "skipped": 0}
    print(flush=True)
    print("=" * 30, "test/run.py summary", "=" * 30)
    for r in results:
        c = r["counts"]
        if c is None:   # pytest didn't get as far as writing its counts
            c = {"nvr": {"passed": 0, "failed": 1, "skipped": 0},
                 "harness": {"passed": 0, "failed": 0, "skipped": 0}}
            note = f"; pytest exited {r['rc']} without counts (counted as 1 failure)"
        else:
            note = ""
        if r["rc"] != 0 and c["nvr"]["failed"] + c["harness"]["failed"] == 0:
            c["nvr"]["failed"] = 1   # e.g. interrupted: never let a failed run read as 0
            note += f"; pytest exited {r['rc']} (counted as 1 failure)"
        status = "ok" if r["rc"] == 0 else f"FAILED (pytest exit status {r['rc']})"
        print(f"{r['name']}: {status} in {r['seconds']:.0f} s; {r['python']}")
        print(f"  nvr's tests: {fmt(c['nvr'])}; the test harness's own: "
              f"{fmt(c['harness'])}{note}")
        for k in total:
            total[k] += c["nvr"][k] + c["harness"][k]
    print(fmt(total), flush=True)
    return 0 if results and all(r["rc"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
