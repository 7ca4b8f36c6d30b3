"""The web UI (ui/) in a real browser: Debian's headless Chromium driven by Playwright.

One `nvr.py run` per module records a real RTSP test camera (test/camera.py: H.264 main
640x360 at 30 fps and sub 320x240 at 15 fps), rotating every 4 s and committing at once
(`--flush-if-sec 0`), behind a login (no unauthenticated permissions). Before the tests
the camera's main stream is stopped for a few seconds, so main has two runs with a gap
between them and an end reason on the first. The server runs in Europe/Berlin and the
browser in Asia/Tokyo, so a time shown in the browser's zone would be caught.

What is checked, each in the browser the way a person would use it:
- log in, pick the day in the calendar, the table lists the API's recordings; a row
  plays (`currentTime` advances, `videoWidth` is the recorded width) and its download
  link carries the server's filename;
- a range starting between two frames plays from exactly the frame at that instant:
  the picture at time 0 is compared with every frame PyAV decodes from the untrimmed
  recording (the test camera's bars scroll 4 px a frame, so frames are distinct);
- the timeline shows the gap with the end reason of the run before it, and a click
  plays from the clicked instant;
- the storage page's figures are those of the `/api/` answer it got;
- the System page shows the main stream recording, failing with its last error while the
  camera's main stream is gone, and recording again when it is back;
- an admin adds a user who then logs in; a non-admin sees no Users page and gets 403;
- live view plays, and reconnects by itself after the server restarts (last: it
  restarts the module's server);
- phone-sized layout and the dark theme;
- no console errors or uncaught exceptions on any page (the 401 that opens the login
  dialog and errors a test provokes on purpose are the only ones allowed).

Screenshots of every page go to $NVR_UI_SCREENSHOTS (default /tmp/nvr-ui-screenshots),
outside the repository, for people to review.

Needs Debian's `chromium` and the `playwright` Python package (test/run.py installs
both; `playwright install` is never needed: we launch /usr/bin/chromium).
"""

from __future__ import annotations

import datetime
import io
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
import uuid as uuidlib
import zoneinfo

import pytest

from camera import RtspCamera, Stream, _clip_dir, unavailable_reason

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NVR = os.path.join(ROOT, "nvr.py")
CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = os.environ.get("NVR_UI_SCREENSHOTS", "/tmp/nvr-ui-screenshots")
SERVER_TZ = "Europe/Berlin"
BROWSER_TZ = "Asia/Tokyo"
ROTATE_SEC = 4
TICKS = 90000
MAIN = Stream("main", "h264", 640, 360, fps=30, kbps=800, gop=30)
SUB = Stream("sub", "h264", 320, 240, fps=15, kbps=200, gop=15)
USERS = {"admin": ("admin-password", "all"), "viewer": ("viewer-password", "viewVideo")}

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - test/run.py installs it
    sync_playwright = None


def _skip_reason() -> str | None:
    if sync_playwright is None:
        return "needs the playwright Python package (python3 test/run.py installs it)"
    if not os.access(CHROMIUM, os.X_OK):
        return f"needs Debian's chromium at {CHROMIUM} (python3 test/run.py installs it)"
    return unavailable_reason()


# ---------------------------------------------------------------------------------------
# The server

def nvr(*args, cwd, stdin=None):
    r = subprocess.run([sys.executable, NVR, *args], cwd=cwd, capture_output=True, text=True,
                       input=stdin, timeout=60, env=dict(os.environ, NVR_LOG="WARNING"))
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def wait_for(what, cond, timeout=60.0, interval=0.2):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`nvr.py run` on a fixed port (so a restart keeps the URL) with its camera."""

    def __init__(self, cwd, camera):
        self.cwd = cwd
        self.camera = camera
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}/"
        self.proc = None
        self.log = None
        with open(os.path.join(cwd, "nvr.toml"), "w") as f:
            f.write(f'dbDir = "nvr-data/db"\n[[binds]]\nipv4 = "127.0.0.1:{self.port}"\n')

    def start(self):
        self.log = open(os.path.join(self.cwd, "nvr.log"), "ab")
        self.proc = subprocess.Popen(
            [sys.executable, NVR, "run", "--config", "nvr.toml",
             "--rotate-interval-sec", str(ROTATE_SEC)],
            cwd=self.cwd, stdout=self.log, stderr=subprocess.STDOUT,
            env=dict(os.environ, NVR_LOG="INFO", TZ=SERVER_TZ))
        wait_for("the server to listen", self._listening, timeout=30)

    def _listening(self):
        assert self.proc.poll() is None, f"nvr exited: {self.log_tail()}"
        try:
            with urllib.request.urlopen(self.base + "api/request", timeout=2):
                return True
        except OSError:
            return False

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.log:
            self.log.close()
            self.log = None

    def log_tail(self, n=30):
        with open(os.path.join(self.cwd, "nvr.log"), encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-n:])

    def db(self):
        return sqlite3.connect(f"file:{os.path.join(self.cwd, 'nvr-data/db/db')}?mode=ro",
                               uri=True)

    def rows(self, stream_id):
        """Committed recordings: (id, run_offset, start_time_90k, wall_duration_90k,
        end_reason), oldest first."""
        with self.db() as conn:
            return conn.execute(
                "select composite_id & 4294967295, run_offset, start_time_90k, "
                "wall_duration_90k, end_reason from recording where stream_id = ? "
                "order by composite_id", (stream_id,)).fetchall()

    def camera_uuid(self):
        with self.db() as conn:
            (u,) = conn.execute("select uuid from camera where short_name = 'cam1'").fetchone()
        return str(uuidlib.UUID(bytes=u))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    cwd = str(tmp_path_factory.mktemp("ui-nvr"))
    camera = RtspCamera((MAIN, SUB), clip_dir=_clip_dir(tmp_path_factory))
    srv = Server(cwd, camera)
    try:
        nvr("init", cwd=cwd)
        nvr("config", "camera", "add", "cam1", cwd=cwd)
        for typ in ("main", "sub"):
            nvr("config", "stream", "add", "cam1", typ, "--url", camera.url(typ), "--record",
                "--dir", "1", "--retain-bytes", "1G", "--flush-if-sec", "0", cwd=cwd)
        for name, (pw, perms) in USERS.items():
            nvr("config", "user", "add", name, "--password-stdin", "--permissions", perms,
                cwd=cwd, stdin=pw + "\n")
        srv.start()
        srv.main_id, srv.sub_id = 1, 2
        wait_for("2 committed main recordings", lambda: len(srv.rows(1)) >= 2)
        # A gap: the camera's main stream goes away for a while, then comes back.
        camera.stop_stream("main")
        wait_for("the main run to end", lambda: any(r[4] for r in srv.rows(1)))
        time.sleep(3)   # the gap's length (not a synchronisation)
        camera.start_stream("main")
        wait_for("a second main run with 2 committed recordings",
                 lambda: sum(1 for r in srv.rows(1) if r[1] == 0) >= 2
                 and srv.rows(1)[-1][1] >= 1, timeout=90)
        yield srv
    finally:
        srv.stop()
        camera.close()


# ---------------------------------------------------------------------------------------
# The browser

@pytest.fixture(scope="module")
def browser(server):
    os.makedirs(SCREENSHOTS, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                              args=["--autoplay-policy=no-user-gesture-required"])
        yield b
        b.close()


class Page:
    """A browser tab with its console watched: `errors` collects console errors and
    uncaught exceptions; `allow(regex)` lets a test expect some."""

    # The 401 answering a first request without a session is what opens the login dialog.
    ALWAYS_ALLOWED = [r"Failed to load resource: the server responded with a status of 401"]

    def __init__(self, browser, server, **context_args):
        self.server = server
        self.context = browser.new_context(
            timezone_id=BROWSER_TZ, locale="en-US",
            **({"viewport": {"width": 1280, "height": 900}} | context_args))
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.allowed = list(self.ALWAYS_ALLOWED)
        self.page.on("console", lambda m: self.errors.append(f"console.{m.type}: {m.text}")
                     if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))

    def allow(self, pattern: str):
        self.allowed.append(pattern)

    def unexpected_errors(self):
        return [e for e in self.errors if not any(re.search(a, e) for a in self.allowed)]

    def goto(self, hash_="#/"):
        self.page.goto(self.server.base + hash_)

    def login(self, name, password=None):
        password = password or USERS[name][0]
        pg = self.page
        if not pg.url.startswith(self.server.base):
            self.goto()
        dialog = pg.locator("#login-dialog")
        dialog.wait_for(state="visible")
        dialog.get_by_label("Username").fill(name)
        dialog.get_by_label("Password").fill(password)
        dialog.get_by_role("button", name="Log in").click()
        dialog.wait_for(state="hidden")
        pg.locator("#account-button").filter(has_text=name).wait_for()

    def logout(self):
        self.page.locator("#account-button").click()
        self.page.get_by_role("menuitem", name="Log out").click()

    def fetch(self, path, method="GET", body=None):
        """A request from the page (with its session cookie): (status, parsed body)."""
        return self.page.evaluate(
            """async ([path, method, body]) => {
                 const init = {method, headers: {Accept: 'application/json'}};
                 if (body) { init.body = JSON.stringify(body);
                             init.headers['Content-Type'] = 'application/json'; }
                 const r = await fetch(path, init);
                 const t = await r.text();
                 let j = t; try { j = JSON.parse(t); } catch (e) {}
                 return [r.status, j];
               }""", [path, method, body])

    def api(self, path):
        status, body = self.fetch(path)
        assert status == 200, (path, status, body)
        return body

    def screenshot(self, name, **kw):
        self.page.screenshot(path=os.path.join(SCREENSHOTS, f"{name}.png"), **kw)

    def cookie_header(self):
        return "; ".join(f"{c['name']}={c['value']}" for c in self.context.cookies())


@pytest.fixture
def tab(browser, server, request):
    t = Page(browser, server)
    yield t
    try:
        errors = t.unexpected_errors()
        assert not errors, f"console errors in {request.node.name}:\n" + "\n".join(errors)
    finally:
        t.context.close()


def video_state(page, selector="dialog.player video"):
    return page.evaluate("""(sel) => { const v = document.querySelector(sel);
        return v && {t: v.currentTime, w: v.videoWidth, h: v.videoHeight, src: v.currentSrc,
                     err: v.error && v.error.message, ready: v.readyState}; }""", selector)


def wait_playing(page, selector="dialog.player video", seconds=1.0, timeout=30_000):
    """Waits until the video's currentTime has advanced by `seconds` from its first
    reading; returns its state."""
    page.wait_for_function(
        """([sel, secs]) => { const v = document.querySelector(sel);
             if (!v || v.error) return !!(v && v.error);
             if (v.dataset.t0 === undefined && v.currentTime > 0) v.dataset.t0 = v.currentTime;
             return v.dataset.t0 !== undefined && v.currentTime - Number(v.dataset.t0) >= secs; }""",
        arg=[selector, seconds], timeout=timeout)
    st = video_state(page, selector)
    assert st["err"] is None, st
    return st


def zoned(t90k):
    return datetime.datetime.fromtimestamp(t90k / TICKS, zoneinfo.ZoneInfo(SERVER_TZ))


# ---------------------------------------------------------------------------------------
# Tests

def test_list_view_lists_and_plays_recordings(tab, server):
    tab.goto()
    tab.login("admin")
    pg = tab.page
    top = tab.api("/api/?days=true")
    assert top["timeZoneName"] == SERVER_TZ
    stream = top["cameras"][0]["streams"]["main"]
    day = max(stream["days"])
    assert day == zoned(server.rows(1)[-1][2]).strftime("%Y-%m-%d")
    pg.wait_for_selector("table.recordings tbody tr")
    # The calendar enables the days with video only, and picking one lists its recordings.
    cal = pg.get_by_role("group", name="Start day")
    enabled = cal.locator("button.day:not([disabled])").evaluate_all(
        "bs => bs.map(b => b.dataset.day)")
    assert enabled == sorted(d for d in stream["days"] if d[:7] == day[:7])
    cal.locator(f'button.day[data-day="{day}"]').click()
    assert f"start={day}" in pg.url and f"s={stream['id']}" in pg.url
    table = pg.locator(f'table.recordings[data-stream-id="{stream["id"]}"]')
    table.locator("tbody tr.clickable").first.wait_for()
    ids = table.locator("tbody tr.clickable").evaluate_all(
        "rs => rs.map(r => [Number(r.dataset.startId), Number(r.dataset.endId)])")
    start90k = int(datetime.datetime.fromisoformat(day).replace(
        tzinfo=zoneinfo.ZoneInfo(SERVER_TZ)).timestamp()) * TICKS
    api_rows = tab.api(f"/api/cameras/{server.camera_uuid()}/main/recordings?"
                       f"startTime90k={start90k}&endTime90k={start90k + 86400 * TICKS}"
                       f"&split90k={3600 * TICKS}")["recordings"]
    assert [i[0] for i in ids] == sorted((r["startId"] for r in api_rows), reverse=True)
    assert len(ids) >= 2  # the two runs either side of the gap
    # The row that ended the first run shows its end reason on hover.
    rows = server.rows(1)
    second_run = [i for i, r in enumerate(rows) if r[1] == 0][1]
    reasons = table.locator(".reason-icon").evaluate_all("es => es.map(e => e.title)")
    assert reasons and reasons[-1] == "Ended: " + rows[second_run - 1][4]
    # Times are the server's zone's.
    first = min(api_rows, key=lambda r: r["startId"])
    last_row = table.locator("tbody tr.clickable").last
    assert last_row.locator("td").nth(1).inner_text() == \
        zoned(first["startTime90k"]).strftime("%H:%M:%S")
    tab.screenshot("list")
    # Open the oldest row: it plays, at the recorded width, with the aspect ratio forced.
    last_row.click()
    st = wait_playing(pg)
    assert (st["w"], st["h"]) == (MAIN.width, MAIN.height)
    assert pg.locator("dialog.player video").evaluate("v => v.style.aspectRatio") == "16 / 9"
    href = pg.locator("dialog.player a[download]").get_attribute("href")
    assert href == st["src"].removeprefix(server.base[:-1])
    req = urllib.request.Request(server.base[:-1] + href, method="HEAD",
                                 headers={"Cookie": tab.cookie_header()})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert re.fullmatch(r'attachment; filename="\d{14}-cam1-main\.mp4"',
                            r.headers["Content-Disposition"]), r.headers["Content-Disposition"]
    tab.screenshot("list-player")
    pg.get_by_role("button", name="Close player").click()
    # The newest row, still growing, plays too (its URL pins the open id).
    table.locator("tbody tr.clickable").first.click()
    st = wait_playing(pg, seconds=0.5)
    assert "@" in st["src"] or "." in st["src"].split("s=")[1]
    pg.get_by_role("button", name="Close player").click()
    # The stream selector: a column header toggles that type for every camera, a camera
    # name all of its streams.
    pg.get_by_role("button", name="main", exact=True).click()
    pg.get_by_text("Select one or more streams.").wait_for()
    pg.get_by_role("button", name="cam1", exact=True).click()
    pg.locator("table.recordings").nth(1).wait_for()
    assert pg.locator("table.recordings").evaluate_all(
        "ts => ts.map(t => Number(t.dataset.streamId))") == [server.main_id, server.sub_id]
    assert pg.get_by_role("checkbox", name="cam1 sub").is_checked()
    pg.get_by_role("checkbox", name="cam1 sub").uncheck()
    pg.wait_for_function("() => document.querySelectorAll('table.recordings').length === 1")
    # A range of days: the end day has its own calendar, which can't go before the start.
    pg.get_by_label("Other day").check()
    end_cal = pg.get_by_role("group", name="End day")
    end_cal.locator(f'button.day[data-day="{day}"]').click()
    assert f"start={day}" in pg.url and "end=" not in pg.url
    table.locator("tbody tr.clickable").first.wait_for()
    # State lives in the URL: reloading shows the same selection.
    pg.get_by_label("Timestamp track").check()
    pg.get_by_label("Max video duration").select_option("4h")
    url = pg.url
    assert "ts=1" in url and "split=4h" in url
    pg.reload()
    pg.wait_for_selector("table.recordings tbody tr.clickable")
    assert pg.get_by_label("Timestamp track").is_checked()
    assert pg.get_by_label("Max video duration").input_value() == "4h"
    table.locator("tbody tr.clickable").last.click()
    wait_playing(pg, seconds=0.5)
    assert "ts=true" in video_state(pg)["src"]


def test_trimmed_start_plays_from_the_requested_frame(tab, server):
    import av
    rows = server.rows(1)
    rec_id, _, rec_start, rec_dur, _ = rows[0]
    assert rec_dur > 2 * TICKS
    # 1.5 s + 11 ms into the recording: between two frames of a 30 fps stream.
    t = rec_start + 135_000 + 990
    t_ms = -(-t // 90)  # the UI takes milliseconds; round up to stay inside the frame
    start = zoned(t_ms * 90)
    st = start.strftime("%H:%M:%S.") + f"{t_ms % 1000:03d}"
    tab.goto(f"#/?s=1&start={start:%Y-%m-%d}&st={st}")
    tab.login("admin")
    pg = tab.page
    row = pg.locator(f'table.recordings tbody tr.clickable[data-start-id="{rec_id}"]')
    row.wait_for()
    assert int(row.get_attribute("data-start90k")) == t_ms * 90
    row.click()
    wait_playing(pg, seconds=0.3)
    src = video_state(pg)["src"]
    assert re.search(rf"s={rec_id}(-\d+)?\.{t_ms * 90 - rec_start}-", src), src
    y = MAIN.height // 3
    shown = pg.evaluate("""async (y) => {
        const v = document.querySelector('dialog.player video');
        v.pause();
        await new Promise(r => { v.addEventListener('seeked', r, {once: true}); v.currentTime = 0; });
        await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
        const c = document.createElement('canvas');
        c.width = v.videoWidth; c.height = v.videoHeight;
        const g = c.getContext('2d');
        g.drawImage(v, 0, 0);
        return Array.from(g.getImageData(0, y, c.width, 1).data);
      }""", y)
    tab.screenshot("list-trimmed-player")
    # Every frame of the untrimmed recording, decoded by PyAV.
    req = urllib.request.Request(f"{server.base}api/cameras/{server.camera_uuid()}/main/"
                                 f"view.mp4?s={rec_id}", headers={"Cookie": tab.cookie_header()})
    with urllib.request.urlopen(req, timeout=30) as r:
        data = r.read()
    frames = []
    with av.open(io.BytesIO(data)) as f:
        for fr in f.decode(video=0):
            frames.append((fr.pts * fr.time_base, fr.to_ndarray(format="rgb24")[y]))
    rel = (t_ms * 90 - rec_start) / TICKS
    want = max(i for i, (pts, _) in enumerate(frames) if pts <= rel)

    def distance(row_rgb):
        return sum(abs(int(a) - int(b)) for a, b in zip(
            (v for i, v in enumerate(shown) if i % 4 != 3), row_rgb.flatten())) / len(row_rgb)

    dists = [distance(rgb) for _, rgb in frames]
    got = min(range(len(frames)), key=dists.__getitem__)
    # The instant is 11 ms into frame `want`. The edit list starts there, but Chromium
    # (through FFmpeg's mov demuxer, which drops every sample whose time is before the
    # edit's start) shows the next frame, 22 ms later: within one frame either way.
    assert got in (want, want + 1), (got, want, dists[max(0, want - 3):want + 4])
    assert 0 <= float(frames[got][0]) - float(frames[want][0]) < 1.5 / MAIN.fps
    assert abs(float(frames[got][0]) - rel) < 1 / MAIN.fps, (frames[got][0], rel)
    # The match is clear: the neighbouring frames differ by the 4 px scroll of the bars.
    assert min(dists[got - 1], dists[got + 1]) > 3 * dists[got] + 1, dists[got - 3:got + 4]


def test_timeline_shows_the_gap_with_its_reason_and_plays_from_a_click(tab, server):
    rows = server.rows(1)
    second_run = [i for i, r in enumerate(rows) if r[1] == 0][1]
    ended = rows[second_run - 1]
    gap_start, gap_end = ended[2] + ended[3], rows[second_run][2]
    reason = ended[4]
    assert reason and gap_end > gap_start
    day = zoned(gap_start).strftime("%Y-%m-%d")
    v0, v1 = gap_start - 30 * TICKS, gap_end + 30 * TICKS  # at least the 1 minute zoom
    tab.goto(f"#/timeline?start={day}&end={day}&v0={v0}&v1={v1}")
    tab.login("admin")
    pg = tab.page
    lane = pg.locator(f'.tl-track[data-stream-id="{server.main_id}"]')
    gap = lane.locator(".tl-gap")
    gap.first.wait_for()
    assert gap.count() == 1
    assert re.search(rf"v0={v0}&v1={v1}$", pg.url), pg.url  # the view asked for
    assert int(gap.get_attribute("data-start90k")) == gap_start
    assert int(gap.get_attribute("data-end90k")) == gap_end
    assert gap.get_attribute("data-reason") == reason
    assert gap.locator(".tl-gap-label").inner_text() == reason
    assert reason in gap.get_attribute("aria-label")
    # The sub stream kept recording: no gap in its lane.
    assert pg.locator(f'.tl-track[data-stream-id="{server.sub_id}"] .tl-gap').count() == 0
    tab.screenshot("timeline")
    # Click in the middle of the span after the gap.
    box = lane.bounding_box()
    span = lane.locator(".tl-span").last.bounding_box()
    assert span["x"] > gap.bounding_box()["x"]
    x = span["x"] + span["width"] / 2
    pg.mouse.click(x, box["y"] + box["height"] / 2)
    st = wait_playing(pg, seconds=0.5)
    clicked = v0 + (v1 - v0) * (x - box["x"]) / box["width"]
    start90k = int(pg.locator("dialog.player video").get_attribute("data-start90k"))
    tick_per_px = (v1 - v0) / box["width"]
    assert abs(start90k - clicked) <= tick_per_px, (start90k, clicked, tick_per_px)
    m = re.search(r"s=(\d+)(?:-(\d+))?(?:@\d+)?\.(\d+)-", st["src"])
    assert m, st["src"]
    first = next(r for r in rows if r[0] == int(m[1]))
    assert first[2] + int(m[3]) == start90k
    assert (st["w"], st["h"]) == (MAIN.width, MAIN.height)
    tab.screenshot("timeline-player")
    pg.get_by_role("button", name="Close player").click()
    # Zoom from a week to a minute.
    pg.get_by_role("button", name="Minute").click()
    assert "(1 min 0 s)" in pg.locator(".toolbar span.muted").inner_text()
    pg.get_by_role("button", name="Week").click()
    pg.wait_for_function("() => document.querySelector('.toolbar span.muted').textContent"
                         ".includes('(7 d 0 h)')")
    tab.screenshot("timeline-week")


def test_storage_page_shows_the_api_figures(tab, server):
    tab.goto()
    tab.login("admin")
    pg = tab.page
    with pg.expect_response(lambda r: r.url == server.base + "api/") as resp:
        tab.goto("#/storage")
    top = resp.value.json()
    pg.wait_for_selector("table[aria-label='Storage per stream'] tbody tr")
    fields = ("fsBytes", "retainBytes", "totalSampleFileBytes", "totalDuration90k",
              "minStartTime90k", "maxEndTime90k")
    streams = [s for c in top["cameras"] for s in c["streams"].values()]
    assert len(streams) == 2
    for s in streams:
        row = pg.locator(f'.storage-table tbody tr[data-stream-id="{s["id"]}"]')
        shown = row.locator("td[data-field]").evaluate_all(
            "tds => Object.fromEntries(tds.map(t => [t.dataset.field, t.dataset.value]))")
        for f in fields:
            assert shown[f] == str(s[f]), (f, shown[f], s[f])
        assert s["fsBytes"] > 0 and s["totalDuration90k"] > 0
        days = s["retainBytes"] / (s["fsBytes"] / (s["totalDuration90k"] / TICKS)) / 86400
        assert float(shown["historyDays"]) == pytest.approx(days, rel=1e-9)
        text = row.locator('td[data-field="historyDays"]').inner_text()
        assert text == (f"{days:.0f} days" if days >= 10 else f"{days:.1f} days")
        mbps = s["totalSampleFileBytes"] * 8 / (s["totalDuration90k"] / TICKS) / 1e6
        assert row.locator('td[data-field="bitrate"]').inner_text() == f"{mbps:.2f} Mbps"
        assert row.locator('td[data-field="retainBytes"]').inner_text() == "1.00 GiB"
        assert row.locator('td[data-field="minStartTime90k"]').inner_text() == \
            zoned(s["minStartTime90k"]).strftime("%Y-%m-%d %H:%M:%S")
    total = pg.locator(".storage-table tfoot td[data-field='fsBytes']").get_attribute("data-value")
    assert int(total) == sum(s["fsBytes"] for s in streams)
    tab.screenshot("storage")
    # The skip link moves focus to the page, not to a route named "main".
    tab.goto("#/")
    pg.wait_for_selector("#main[data-page='list']")
    pg.keyboard.press("Tab")
    assert pg.evaluate("document.activeElement.className") == "skip-link"
    pg.keyboard.press("Enter")
    assert pg.evaluate("document.activeElement.id") == "main"
    assert pg.url.endswith("#/") and pg.locator("#main").get_attribute("data-page") == "list"
    # A hash typed without its slash finds the page too; an unknown one says so.
    tab.goto("#/")
    tab.goto("#storage")
    pg.wait_for_selector("#main[data-page='storage'] table[aria-label='Storage per stream']")
    tab.goto("#/nowhere")
    pg.wait_for_selector("#main[data-page='not-found']")
    assert pg.locator("#main").inner_text().startswith("There is no page /nowhere.")


def test_admin_adds_edits_and_deletes_a_user_who_can_log_in(tab, server):
    tab.goto("#/users")
    tab.login("admin")
    pg = tab.page
    pg.get_by_role("button", name="+ Add user").click()
    d = pg.locator("dialog").filter(has_text="Add user")
    d.get_by_label("Username").fill("carol")
    d.get_by_label("New password").fill("carol-password")
    assert d.get_by_label("View video").is_checked()
    d.get_by_role("button", name="Add", exact=True).click()
    row = pg.locator('tr[data-username="carol"]')
    row.wait_for()
    tab.screenshot("users")
    # Edit: also updateSignals.
    pg.get_by_role("button", name="Edit carol").click()
    d = pg.locator("dialog").filter(has_text="Edit user carol")
    d.get_by_label("Update signals").check()
    d.get_by_role("button", name="Save").click()
    d.wait_for(state="detached")
    users = tab.api("/api/users/")["users"]
    carol = next(u for u in users if u["user"]["username"] == "carol")
    assert carol["user"]["permissions"]["viewVideo"] and \
        carol["user"]["permissions"]["updateSignals"]
    assert not carol["user"]["permissions"].get("adminUsers")
    # Carol logs in (the login dialog opens by itself after the 401 of /api/).
    tab.logout()
    tab.login("carol", "carol-password")
    assert pg.locator('nav a[data-page="users"]').is_hidden()
    top = tab.api("/api/")
    assert top["user"]["name"] == "carol"
    # She changes her password from the account menu (a wrong current one is refused).
    pg.locator("#account-button").click()
    pg.get_by_role("menuitem", name="Change password").click()
    d = pg.locator("#password-dialog")
    d.get_by_label("Current password").fill("not-her-password")
    d.get_by_label("New password", exact=True).fill("carol-password-2")
    d.get_by_label("Confirm new password").fill("carol-password-2")
    tab.allow(r"status of 412")  # the wrong current password, on purpose
    d.get_by_role("button", name="Change password").click()
    assert d.get_by_role("alert").inner_text() == "The current password is wrong."
    d.get_by_label("Current password").fill("carol-password")
    d.get_by_role("button", name="Change password").click()
    d.wait_for(state="hidden")
    tab.logout()
    tab.login("carol", "carol-password-2")
    tab.logout()
    # The admin deletes her, after confirming.
    tab.login("admin")
    tab.goto("#/users")
    pg.get_by_role("button", name="Delete carol").click()
    confirm = pg.locator("dialog").filter(has_text="Delete user carol?")
    confirm.get_by_role("button", name="Delete").click()
    row.wait_for(state="detached")
    assert all(u["user"]["username"] != "carol" for u in tab.api("/api/users/")["users"])


def test_non_admin_sees_no_users_page_and_gets_403(tab, server):
    tab.goto()
    tab.login("viewer")
    pg = tab.page
    pg.wait_for_selector("table.recordings")
    assert pg.locator('nav a[data-page="users"]').is_hidden()
    tab.allow(r"status of 403")  # the request below, on purpose
    status, body = tab.fetch("/api/users/")
    assert status == 403, (status, body)
    tab.goto("#/users")
    assert "adminUsers" in pg.get_by_role("alert").filter(has_text="adminUsers").inner_text()
    tab.screenshot("users-non-admin")


def test_phone_layout_and_dark_theme(browser, server):
    t = Page(browser, server, viewport={"width": 390, "height": 844}, is_mobile=True,
             has_touch=True, device_scale_factor=2)
    try:
        t.goto()
        t.login("viewer")
        pg = t.page
        pg.wait_for_selector("table.recordings tbody tr.clickable")
        nav = pg.locator("nav#nav")
        assert nav.is_hidden()
        # Touch targets are at least 40 px tall.
        assert pg.locator("#menu-button").bounding_box()["height"] >= 40
        t.screenshot("phone-list", full_page=True)
        pg.locator("#menu-button").tap()
        assert nav.is_visible()
        t.screenshot("phone-menu")
        nav.get_by_role("link", name="Storage").tap()
        assert nav.is_hidden()
        pg.wait_for_selector(".storage-cards .card")
        assert pg.locator(".storage-table").is_hidden()
        t.screenshot("phone-storage", full_page=True)
        # Theme: auto -> light -> dark, remembered.
        theme = pg.locator("#theme-button")
        theme.tap()
        theme.tap()
        assert pg.evaluate("document.documentElement.dataset.theme") == "dark"
        bg = pg.evaluate("getComputedStyle(document.body).backgroundColor")
        assert bg == "rgb(15, 19, 24)", bg
        pg.reload()
        pg.wait_for_selector(".storage-cards .card")
        assert pg.evaluate("document.documentElement.dataset.theme") == "dark"
        t.screenshot("phone-storage-dark", full_page=True)
        t.goto("#/timeline")
        pg.wait_for_selector(".tl-span")
        t.screenshot("phone-timeline-dark")
        assert not t.unexpected_errors(), t.unexpected_errors()
    finally:
        t.context.close()


def _image(page, selector):
    """(complete, naturalWidth, naturalHeight) of an <img>, once it has loaded."""
    page.wait_for_function(
        """(sel) => { const i = document.querySelector(sel);
                      return i && i.complete && i.naturalWidth > 0; }""", arg=selector,
        timeout=30_000)
    return tuple(page.locator(selector).first.evaluate("i => [i.naturalWidth, i.naturalHeight]"))


def test_stills_in_list_timeline_player_and_live(tab, server, tmp_path):
    """Pictures: List rows have thumbnails; hovering the Timeline shows the picture
    under the pointer; the player saves the frame on screen; a Live cell shows the
    latest key frame until video plays and while paused. Each image decodes in the
    browser at the size asked for."""
    import av
    uuid = server.camera_uuid()
    tab.goto()
    tab.login("admin")
    pg = tab.page
    # List: every row has a lazily loaded thumbnail, 128 px wide (devicePixelRatio 1).
    pg.wait_for_selector("table.recordings tbody tr.clickable")
    w, hgt = _image(pg, "table.recordings tbody tr.clickable img.thumb")
    assert (w, hgt) == (128, 72)
    src = pg.locator("table.recordings tbody tr.clickable img.thumb").first.get_attribute("src")
    assert "/still.jpg?" in src and "key=true" in src
    tab.screenshot("list-thumbnails")
    # Player: "Save still" downloads a JPEG of the frame on screen, at the video's size.
    pg.locator("table.recordings tbody tr.clickable").last.click()
    wait_playing(pg, seconds=0.5)
    pg.locator("dialog.player video").evaluate("v => v.pause()")
    with pg.expect_download() as dl:
        pg.get_by_role("button", name="Save still").click()
    path = str(tmp_path / "still.jpg")
    dl.value.save_as(path)
    assert re.fullmatch(r"cam1-main-\d{4}-\d\d-\d\d-\d\d-\d\d-\d\d.*\.jpg",
                        dl.value.suggested_filename), dl.value.suggested_filename
    with av.open(path) as c:
        codec = c.streams.video[0].codec_context.name
        (f,) = list(c.decode(video=0))
    assert (codec, f.width, f.height) == ("mjpeg", MAIN.width, MAIN.height)
    pg.get_by_role("button", name="Close player").click()
    # Timeline: hovering a span shows the key frame at or before that instant.
    rows = server.rows(1)
    day = zoned(rows[0][2]).strftime("%Y-%m-%d")
    v0, v1 = rows[0][2], rows[-1][2] + rows[-1][3]
    tab.goto(f"#/timeline?start={day}&end={day}&v0={v0}&v1={v1}")
    lane = pg.locator(f'.tl-track[data-stream-id="{server.main_id}"]')
    span = lane.locator(".tl-span").first
    span.wait_for()
    b = span.bounding_box()
    pg.mouse.move(b["x"] + b["width"] * 0.5, b["y"] + b["height"] / 2)
    preview = pg.locator(".tl-preview")
    preview.wait_for(state="visible", timeout=30_000)
    assert _image(pg, ".tl-preview img") == (240, 136)
    tab.screenshot("timeline-preview")
    m = re.search(r"v0=(\d+)&v1=(\d+)", pg.url)   # the view shown (clamped to the range)
    shown_v0, shown_v1 = int(m[1]), int(m[2])
    lb = lane.bounding_box()
    hovered = shown_v0 + (shown_v1 - shown_v0) * (b["x"] + b["width"] * 0.5 - lb["x"]) / lb["width"]
    shown = int(preview.get_attribute("data-frame-time90k"))
    assert hovered - 2 * TICKS <= shown <= hovered + 1, (shown, hovered)  # GOP: 1 s
    first_shown = shown
    # Moving on fetches the picture there; leaving hides it.
    pg.mouse.move(b["x"] + b["width"] * 0.1, b["y"] + b["height"] / 2)
    pg.wait_for_function(f"() => Number(document.querySelector('.tl-preview')"
                         f".dataset.frameTime90k) < {first_shown}", timeout=30_000)
    pg.mouse.move(b["x"], b["y"] - 200)
    preview.wait_for(state="hidden")
    # Live: the poster is the latest key frame, shown before the video plays and again
    # when paused.
    tab.goto(f"#/live?layout=1&cams={uuid}/main")
    pg.wait_for_function("() => document.querySelector('.cell')?.dataset.posterTime90k",
                         timeout=30_000)
    poster = pg.locator(".cell video").evaluate("v => v.poster")
    assert poster.startswith("blob:")
    size = pg.evaluate("""async (url) => { const i = new Image(); i.src = url; await i.decode();
                                          return [i.naturalWidth, i.naturalHeight]; }""", poster)
    assert size[0] % 160 == 0 and size[1] == round(size[0] * 9 / 16 / 2) * 2, size
    pg.get_by_role("button", name="Pause: cell 1").click()
    pg.wait_for_function(
        """(old) => { const v = document.querySelector('.cell video');
                      return v.poster && v.poster !== old; }""", arg=poster, timeout=30_000)
    tab.screenshot("live-paused-poster")


def test_system_page_follows_a_stream_failing_and_recovering(tab, server):
    """The System page (#/system) shows the main stream recording; when the camera's main
    stream goes away it shows it failing with the recorder's last error (the sub stream
    still recording); when it is back, recording again, in a new run. Waits on the page's
    text as it refreshes itself (every 3 s), never on a sleep."""
    tab.goto("#/system")
    tab.login("viewer")   # viewVideo is enough
    pg = tab.page
    main_row = pg.locator(f'table.system-streams tr[data-stream-id="{server.main_id}"]')
    sub_row = pg.locator(f'table.system-streams tr[data-stream-id="{server.sub_id}"]')
    pg.locator(f'table.system-streams tr[data-stream-id="{server.main_id}"]'
               '[data-state="recording"]').wait_for(timeout=30_000)
    assert pg.get_by_role("link", name="System").get_attribute("aria-current") == "page"
    doc = tab.api("/api/system")
    st = {s["id"]: s for s in doc["streams"]}
    assert st[server.main_id]["status"]["state"] == "recording"
    assert main_row.locator(".state-text").inner_text().startswith("Recording since ")
    runs_before = st[server.main_id]["status"]["runs"]
    assert runs_before >= 2   # the module's gap made a second run
    # The measured rate, and what the recordings of the last day lead to expect.
    fps_cell = main_row.locator('td[data-field="fps"]')
    assert re.fullmatch(r"\d+(\.\d)? fps", fps_cell.inner_text().splitlines()[0])
    m = re.search(r"expected (\d+(\.\d)?) \(last day\)", fps_cell.inner_text())
    assert m and float(m[1]) == pytest.approx(MAIN.fps, rel=0.01), fps_cell.inner_text()
    # The disk, the last flush, uptime and versions, as the API says them.
    d = doc["dirs"][0]
    dir_row = pg.locator(f'table.system-dirs tr[data-dir-id="{d["id"]}"]')
    assert dir_row.locator('td[data-field="freeSpaceFloorBytes"]').get_attribute(
        "data-value") == str(d["freeSpaceFloorBytes"])
    assert dir_row.locator("th").inner_text() == d["path"]
    v = doc["versions"]
    assert pg.locator('dd[data-field="versions"]').inner_text().startswith(
        f"nvr {v['nvr']} · Python {v['python']} · PyAV {v['pyav']} · FFmpeg {v['ffmpeg']}")
    assert re.search(r"ago \(.*\), took \d+ ms: ",
                     pg.locator('dd[data-field="lastFlush"]').inner_text())
    assert pg.locator('dd[data-field="uptime"]').inner_text().endswith(
        f"(since {zoned(round(doc['startSec'] * TICKS)):%Y-%m-%d %H:%M:%S})")
    tab.screenshot("system")

    # The camera's main stream goes away: failing, with the error that ends each try.
    server.camera.stop_stream("main")
    try:
        pg.locator(f'table.system-streams tr[data-stream-id="{server.main_id}"]'
                   '[data-state="failing"]').wait_for(timeout=60_000)
        shown = main_row.locator(".state-error").inner_text()
        assert main_row.locator(".state-text").inner_text().startswith("Failing since ")
        api_error = tab.api("/api/system")["streams"]
        api_error = next(s for s in api_error if s["id"] == server.main_id)["status"]["lastError"]
        assert shown and shown == main_row.locator('td[data-field="lastError"]').get_attribute(
            "data-value")
        assert main_row.locator('td[data-field="lastError"]').inner_text().startswith("at ")
        # The same error the API gives (the retries' errors are alike).
        assert shown == api_error, (shown, api_error)
        assert sub_row.get_attribute("data-state") == "recording"
        tab.screenshot("system-failing")
    finally:
        server.camera.start_stream("main")
    # Back: recording again, in a new run.
    pg.locator(f'table.system-streams tr[data-stream-id="{server.main_id}"]'
               '[data-state="recording"]').wait_for(timeout=60_000)
    runs = int(main_row.locator('td[data-field="runs"]').get_attribute("data-value"))
    assert runs > runs_before
    assert main_row.locator(".state-error").count() == 0


def test_system_page_says_each_state_and_flags_rates_off_the_expected(tab, server):
    """The System page's wording for every state and its flags, from a crafted answer of
    the real server's (the recorder's states are the real test's above): a first attempt
    is "Connecting", one after a run "Reconnecting" with the last error; a frame rate more
    than 25 % off the expected one and a bitrate over twice it are flagged; a dir below
    its floor says so; a failed flush is shown with its error."""
    tab.goto("#/system")
    tab.login("viewer")
    pg = tab.page
    pg.locator("table.system-streams tr[data-state]").first.wait_for(timeout=30_000)
    doc = tab.api("/api/system")
    main, sub = ({**s} for s in doc["streams"][:2])
    now = doc["nowSec"]
    status = dict(doc["streams"][0]["status"])
    main["status"] = {**status, "state": "recording", "fps": 10.0,
                      "bitrateBps": 9 * main["expected"]["bitrateBps"]}
    main["expected"] = {**main["expected"], "fps": 30.0, "fpsFrom": "sps"}
    sub["status"] = {**status, "state": "connecting", "sinceSec": now - 5, "runs": 3,
                     "lastError": "rtsp://cam/sub: can't open: Connection refused",
                     "lastErrorSec": now - 5}
    first = {**sub, "id": 99, "cameraShortName": "zz-new", "status": {
        **status, "state": "connecting", "runs": 0, "lastError": None, "lastErrorSec": None}}
    off = {**sub, "id": 98, "cameraShortName": "zz-off", "record": False,
           "status": {**status, "state": "off", "sinceSec": None, "runs": 0,
                      "lastError": None, "lastErrorSec": None}}
    d = {**doc["dirs"][0], "freeBytes": 1, "freeSpaceFloorBytes": 2}
    crafted = {**doc, "streams": [main, sub, first, off], "dirs": [d],
               "lastFlushError": {"timeSec": now - 2, "reason": "retention",
                                  "durationSec": 0.003, "error": "disk I/O error"},
               "flushErrors": 1}
    pg.route("**/api/system", lambda route: route.fulfill(
        status=200, content_type="application/json", body=json.dumps(crafted)))
    pg.get_by_role("button", name="Refresh").click()
    row = lambda i: pg.locator(f'table.system-streams tr[data-stream-id="{i}"]')  # noqa: E731
    row(99).wait_for()
    assert row(99).locator(".state-text").inner_text().startswith("Connecting")
    assert row(99).locator(".state-error").count() == 0
    assert row(server.sub_id).locator(".state-text").inner_text().startswith("Reconnecting since ")
    assert row(server.sub_id).locator(".state-error").inner_text() == \
        "Last error: rtsp://cam/sub: can't open: Connection refused"
    assert row(98).locator(".state-text").inner_text() == "Off (not recorded)"
    fps = row(server.main_id).locator('td[data-field="fps"]')
    assert "off" in fps.get_attribute("class").split()
    assert fps.get_attribute("title") == \
        "measured 10 fps is more than 25 % off the expected 30 (SPS)"
    bps = row(server.main_id).locator('td[data-field="bitrateBps"]')
    assert "off" in bps.get_attribute("class").split()
    assert "under half or over twice" in bps.get_attribute("title")
    assert pg.locator("table.system-dirs .bar.full").count() == 1
    assert "below the floor" in pg.locator("table.system-dirs").inner_text()
    assert pg.locator('dd[data-field="lastFlushError"]').inner_text().endswith(
        "retention: disk I/O error · 1 since start")
    tab.screenshot("system-crafted")
    # The real answer again.
    pg.unroute("**/api/system")
    pg.get_by_role("button", name="Refresh").click()
    row(99).wait_for(state="detached")


def test_live_view_plays_and_reconnects_after_a_restart(tab, server):
    """Last: it restarts the module's server."""
    uuid = server.camera_uuid()
    tab.goto(f"#/live?layout=1&cams={uuid}/sub")
    tab.login("admin")
    pg = tab.page
    cell = pg.locator(".cell").first
    video = ".cell video"
    pg.wait_for_function("() => document.querySelector('.cell').dataset.state === 'playing'",
                         timeout=30_000)
    st = wait_playing(pg, video, seconds=2)
    assert (st["w"], st["h"]) == (SUB.width, SUB.height)
    assert cell.get_attribute("data-connections") == "1"
    tab.screenshot("live")
    # The choice is remembered.
    assert json.loads(pg.evaluate("localStorage.getItem('nvr.live')"))["cams"][0] == f"{uuid}/sub"
    # Pause closes the socket (the cell says so); Play opens a new one and plays again.
    pg.get_by_role("button", name="Pause: cell 1").click()
    pg.wait_for_function("() => document.querySelector('.cell').dataset.state === 'paused'")
    assert "Paused" in cell.locator(".status").inner_text()
    pg.get_by_role("button", name="Play: cell 1").click()
    pg.wait_for_function(
        "() => { const c = document.querySelector('.cell');"
        "        return c.dataset.state === 'playing' && c.dataset.connections === '2'; }",
        timeout=30_000)
    pg.evaluate("delete document.querySelector('.cell video').dataset.t0")
    wait_playing(pg, video, seconds=1)
    # The server goes away and comes back: the cell reconnects by itself.
    tab.allow(r"WebSocket connection to .* failed")
    tab.allow(r"Failed to load resource: net::ERR_CONNECTION_REFUSED")
    server.stop()
    pg.wait_for_function("() => document.querySelector('.cell').dataset.state !== 'playing'",
                         timeout=30_000)
    tab.screenshot("live-reconnecting")
    server.start()
    pg.wait_for_function(
        "() => { const c = document.querySelector('.cell');"
        "        return c.dataset.state === 'playing' && Number(c.dataset.connections) >= 3; }",
        timeout=60_000)
    pg.evaluate("delete document.querySelector('.cell video').dataset.t0")
    wait_playing(pg, video, seconds=2)
    # Other layouts: 2x2 with main and sub.
    pg.get_by_role("button", name="2×2").click()
    assert pg.locator(".cell").count() == 4
    pg.get_by_label("Camera of cell 2").select_option(uuid)
    pg.get_by_label("Stream of cell 2").select_option("main")
    pg.wait_for_function("() => [...document.querySelectorAll('.cell')].slice(0, 2)"
                         ".every(c => c.dataset.state === 'playing')", timeout=30_000)
    wait_playing(pg, ".cell:nth-child(2) video", seconds=1)
    assert "layout=2x2" in pg.url
    tab.screenshot("live-2x2")
    # Changing page while the server is down: the new page says it couldn't load and
    # offers Retry (the stopped live grid isn't left up); Retry works once it is back.
    tab.allow(r"Failed to fetch dynamically imported module")
    server.stop()
    pg.get_by_role("link", name="Timeline").click()
    retry = pg.locator("#main[data-page='timeline'] .page-message button", has_text="Retry")
    retry.wait_for(timeout=30_000)
    assert pg.locator(".cell").count() == 0
    server.start()
    retry.click()
    pg.wait_for_function("() => !document.querySelector('#main .page-message')",
                         timeout=30_000)
    assert pg.locator("#main").get_attribute("data-page") == "timeline"
