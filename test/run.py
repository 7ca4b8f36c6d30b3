#!/usr/bin/env python3
"""The test command: `python3 test/run.py [PYTEST_ARGS...]`.

Installs what a fresh Debian 12 machine lacks, then runs pytest on test/:
- Debian packages (apt-get; needs root): the sqlite3 shell (`nvr.py sql`),
  ffmpeg (ffprobe checks generated video), GStreamer's RTSP server with
  the plugins that encode H.264/H.265 (the test camera), and Chromium (the web
  UI's tests drive Debian's /usr/bin/chromium, which plays H.264, through
  Playwright; `playwright install` and its browser downloads are never needed);
- Python packages (pip): requirements.txt, test/requirements.txt and playwright.
Safe to run again: it installs only what is missing.
"""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DEBIAN_PACKAGES = [
    "sqlite3",
    "ffmpeg",
    "python3-gi",
    "gir1.2-gst-rtsp-server-1.0",
    "gstreamer1.0-plugins-base",
    "gstreamer1.0-plugins-good",
    "gstreamer1.0-plugins-bad",
    "gstreamer1.0-plugins-ugly",
    "gstreamer1.0-x",
    "chromium",              # test_ui.py: the browser
    "fonts-dejavu-core",     # test_ui.py: text in screenshots
]

# Python module name -> pip requirement file that provides it.
PYTHON_MODULES = {"av": "requirements.txt", "argon2": "requirements.txt",
                  "pytest": "test/requirements.txt", "hypothesis": "test/requirements.txt"}
# Python module name -> pip requirement for the web UI's tests (test_ui.py). Only the
# package: its browser is Debian's chromium above.
UI_TEST_MODULES = {"playwright": "playwright>=1.40"}


def missing_debian_packages():
    out = []
    for p in DEBIAN_PACKAGES:
        r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", p],
                           capture_output=True, text=True)
        if r.returncode != 0 or "install ok installed" not in r.stdout:
            out.append(p)
    return out


def main():
    missing = missing_debian_packages()
    if missing:
        print("installing Debian packages:", " ".join(missing), flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends"] + missing,
                       check=True, env=env)
    files = set()
    for module, req in PYTHON_MODULES.items():
        r = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True)
        if r.returncode != 0:
            files.add(req)
    for req in sorted(files):
        print("installing Python packages from", req, flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r",
                        os.path.join(ROOT, req)], check=True)
    for module, req in UI_TEST_MODULES.items():
        r = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True)
        if r.returncode != 0:
            print("installing Python package", req, flush=True)
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", req], check=True)
    os.chdir(ROOT)
    return subprocess.call([sys.executable, "-m", "pytest", "-q", "test"] + sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
