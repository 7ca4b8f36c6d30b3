"""The Settings page (ui/js/settings.js) and the Users page's sessions, in headless Chromium.

One `nvr.py run` per module (test_ui.py's `Server`, `Page` and browser fixtures) with a
real RTSP test camera (test/camera.py) that asks for a login (digest, CAMERA_USER /
CAMERA_PASSWORD) and serves an H.264 `main`, an H.264 `sub` and an H.265 `h265` mount.
Camera "cam1" already records `sub` when the tests start, so the tests can check that
adding a camera doesn't disturb it (its run count stays 1).

What is checked, the way a person would do it:
- Add camera: the Test button shows it is running (disabled, aria-busy, "Testing… up to
  10 s"), then the camera's JPEG snapshot at the stream's size and the details (codec,
  profile/level, size, fps, bitrate, GOP, browser playback); the retention hint gives the
  days of history the byte limit holds at the measured bitrate; Save; the new stream's row
  turns "recording"; cam1's stream keeps its run;
- the same form with a wrong password shows the classified 401 message; with a closed
  port the "refused the connection" message; the H.265 mount says the browser "depends";
- deleting a camera with recordings: the server's 409 message (how many recordings) is
  shown, and confirming deletes it; the same for a stream's limit lowered below what it
  holds; a stream's Test and a new stream's use the camera's stored login; a camera
  renamed with the password field left empty keeps its password;
- the status refreshes in place (the same row, a longer run) and, when nvr can't be
  reached, says it isn't live;
- a sample file dir is added, moved (its directory renamed on disk, the new path given)
  and deleted;
- an admin revokes another user's session from the Users page; that browser's next
  request is a 401;
- a user without configureCameras sees no Settings.
"""

from __future__ import annotations

import os
import re

import pytest

from camera import RtspCamera, Stream, _clip_dir
from test_ui import (USERS, Page, Server, _skip_reason, browser, free_port, nvr,  # noqa: F401
                     tab, wait_for)

CAMERA_USER, CAMERA_PASSWORD = "camuser", "cam-secret"
MAIN = Stream("main", "h264", 640, 360, fps=30, kbps=800, gop=30)
SUB = Stream("sub", "h264", 320, 240, fps=15, kbps=200, gop=15)
H265 = Stream("h265", "h265", 640, 360, fps=30, kbps=800, gop=30)
TEST_TIMEOUT_MS = 30_000   # the stream test answers within 10 s; a busy machine, slack


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    cwd = str(tmp_path_factory.mktemp("ui-settings"))
    camera = RtspCamera((MAIN, SUB, H265), user=CAMERA_USER, password=CAMERA_PASSWORD,
                        clip_dir=_clip_dir(tmp_path_factory))
    srv = Server(cwd, camera)
    try:
        nvr("init", cwd=cwd)
        nvr("config", "camera", "add", "cam1", "--username", CAMERA_USER, "--password-stdin",
            cwd=cwd, stdin=CAMERA_PASSWORD + "\n")
        nvr("config", "stream", "add", "cam1", "sub", "--url", camera.url("sub"), "--record",
            "--dir", "1", "--retain-bytes", "1G", "--flush-if-sec", "0", cwd=cwd)
        for name, (pw, perms) in USERS.items():
            nvr("config", "user", "add", name, "--password-stdin", "--permissions", perms,
                cwd=cwd, stdin=pw + "\n")
        srv.start()
        wait_for("a committed cam1 sub recording", lambda: len(srv.rows(1)) >= 1)
        yield srv
    finally:
        srv.stop()
        camera.close()


def config(tab):
    return tab.api("/api/config/")


def stream_of(cfg, short_name, typ):
    cam = next((c for c in cfg["cameras"] if c["shortName"] == short_name), None)
    return cam and cam["streams"].get(typ)


def open_add_camera(tab, name, url, username=CAMERA_USER, password=CAMERA_PASSWORD):
    pg = tab.page
    pg.get_by_role("button", name="+ Add camera").click()
    d = pg.get_by_role("dialog", name="Add camera")
    d.get_by_label("Name", exact=True).fill(name)
    d.get_by_label("RTSP URL").fill(url)
    d.get_by_label("Username").fill(username)
    d.get_by_label("Password", exact=True).fill(password)
    return d


def run_test(d):
    """Clicks Test, checks the in-progress state was shown, waits for the answer."""
    panel = d.locator(".test-panel")
    button = panel.get_by_role("button", name="Test")
    # A failure (401, refused) can answer in milliseconds, faster than a locator can look:
    # a MutationObserver notes every state the panel goes through.
    panel.evaluate("""p => { p.seen = []; const note = () => { const b = p.querySelector('button');
        const g = p.querySelector('.test-progress');
        p.seen.push({disabled: b.disabled, busy: p.getAttribute('aria-busy'), shown: !g.hidden,
                     text: g.textContent.trim()}); };
        new MutationObserver(note).observe(p, {attributes: true, subtree: true}); }""")
    button.click()
    panel.locator(".test-ok, .test-failed, .test-error").first.wait_for(timeout=TEST_TIMEOUT_MS)
    # While it ran: the button disabled, the panel busy, the limit said; then none of it.
    seen = panel.evaluate("p => p.seen")
    assert {"disabled": True, "busy": "true", "shown": True, "text": "Testing… up to 10 s"} in seen, seen
    assert not button.is_disabled() and panel.get_attribute("aria-busy") is None
    assert panel.locator(".test-progress").is_hidden()
    return panel


def test_add_camera_test_save_and_it_records(tab, server):
    tab.goto("#/settings")
    tab.login("admin")
    pg = tab.page
    pg.locator('tr[data-stream-id] [data-field="state"][data-state="recording"]').first.wait_for()
    before = stream_of(config(tab), "cam1", "sub")
    assert before["status"]["state"] == "recording" and before["status"]["runs"] == 1
    d = open_add_camera(tab, "newcam", server.camera.url("main"))
    panel = run_test(d)
    tab.screenshot("settings-test-ok")
    ok = panel.locator(".test-ok")
    assert ok.is_visible(), panel.inner_text()
    # The snapshot is a JPEG of the stream's size, decoded by the browser.
    img = ok.locator("img.test-snapshot")
    assert img.evaluate("i => i.complete && [i.naturalWidth, i.naturalHeight]") == [640, 360]
    detail = lambda f: ok.locator(f'dd[data-field="{f}"]').inner_text()  # noqa: E731
    assert re.fullmatch(r"H\.264 \(avc1\.[0-9a-f]{6}\)", detail("codec")), detail("codec")
    assert detail("profile").startswith("High, level ")
    assert detail("size") == "640×360"
    fps = float(detail("frameRate").split()[0])
    assert 25 <= fps <= 35, fps
    assert detail("bitrate").endswith("Mbit/s")
    assert detail("gop") == "every 30 frames (1.00 s)"
    assert detail("browser") == "yes"
    # Retention: the hint gives the days the byte limit holds at the measured bitrate.
    d.get_by_label("Type").select_option("main")
    d.get_by_label("Keep at most (bytes)").fill("1G")
    hint = d.locator('[data-field="historyHint"]')
    days = float(hint.get_attribute("data-days"))
    mbps = float(detail("bitrate").split()[0])
    assert days == pytest.approx(2 ** 30 / (mbps * 1e6 / 8) / 86400, rel=0.01)
    assert "this holds about" in hint.inner_text()
    d.get_by_label("Commit within (seconds)").fill("0")
    d.get_by_role("button", name="Save").click()
    d.wait_for(state="detached")
    # The new stream's row turns "recording" (the page refreshes itself).
    cfg = config(tab)
    new = stream_of(cfg, "newcam", "main")
    assert new and new["record"] and new["retainBytes"] == 2 ** 30
    assert next(c for c in cfg["cameras"] if c["shortName"] == "newcam")["passwordSet"] is True
    pg.locator(f'tr[data-stream-id="{new["id"]}"] [data-field="state"][data-state="recording"]') \
        .wait_for(timeout=60_000)
    row = pg.locator(f'tr[data-stream-id="{new["id"]}"]')
    wait_for("fps shown", lambda: row.locator('[data-field="fps"]').inner_text() != "—", timeout=30)
    tab.screenshot("settings-recording")
    # cam1's stream wasn't disturbed: still its first run.
    after = stream_of(config(tab), "cam1", "sub")
    assert after["status"]["state"] == "recording" and after["status"]["runs"] == 1
    rows = server.rows(1)   # one run, recording after recording: no gap, no end reason
    assert [r[1] for r in rows] == list(range(len(rows))) and not any(r[4] for r in rows), rows

    # Delete the camera: it has recordings, so the server asks (409) and the page shows
    # its message before sending deleteRecordings.
    wait_for("a committed newcam recording", lambda: len(server.rows(new["id"])) >= 1, timeout=60)
    tab.allow(r"status of 409")
    pg.get_by_role("button", name="Delete camera newcam").click()
    pg.get_by_role("dialog", name="Delete camera newcam?").get_by_role("button", name="Delete").click()
    confirm = pg.get_by_role("dialog", name="Delete camera newcam and its recordings?")
    confirm.wait_for()
    assert re.search(r"\d+ recording", confirm.inner_text()), confirm.inner_text()
    confirm.get_by_role("button", name="Delete recordings too").click()
    pg.locator(f'tr[data-stream-id="{new["id"]}"]').wait_for(state="detached")
    assert stream_of(config(tab), "newcam", "main") is None


@pytest.mark.parametrize("case", ["wrong password", "closed port", "h265"])
def test_stream_test_failures_and_h265(tab, server, case):
    tab.goto("#/settings")
    tab.login("admin")
    url, password = server.camera.url("main"), CAMERA_PASSWORD
    if case == "wrong password":
        password = "not-the-password"
    elif case == "closed port":
        url = f"rtsp://127.0.0.1:{free_port()}/main"
    elif case == "h265":
        url = server.camera.url("h265")
    d = open_add_camera(tab, "probe", url, password=password)
    panel = run_test(d)
    tab.screenshot("settings-test-" + case.replace(" ", "-"))
    if case == "h265":
        ok = panel.locator(".test-ok")
        assert ok.locator('dd[data-field="codec"]').inner_text().startswith("H.265 (hvc1.")
        assert ok.locator('dd[data-field="browser"]').inner_text() == "depends"
        assert "H.265" in ok.locator('[data-field="browserNote"]').inner_text()
        assert ok.locator("img.test-snapshot").evaluate("i => i.naturalWidth") == 640
        return
    failed = panel.locator(".test-failed")
    assert failed.is_visible(), panel.inner_text()
    message = failed.locator(".test-error").inner_text()
    if case == "wrong password":
        assert failed.get_attribute("data-error") == "auth_failed"
        assert "401" in message and "username and password" in message, message
    else:
        assert failed.get_attribute("data-error") == "connection_refused"
        assert "refused the connection" in message, message
    assert not panel.locator("img").count()


def test_edit_stream_camera_and_add_a_stream(tab, server):
    tab.goto("#/settings")
    tab.login("admin")
    pg = tab.page
    sub = stream_of(config(tab), "cam1", "sub")
    wait_for("2 committed cam1 sub recordings", lambda: len(server.rows(sub["id"])) >= 2)
    # A limit below what the stream holds deletes recordings: the server asks (409) and
    # the page shows its message; confirming sends deleteRecordings.
    tab.allow(r"status of 409")
    pg.get_by_role("button", name="Edit stream cam1 sub").click()
    d = pg.get_by_role("dialog", name="Edit stream cam1 sub")
    # Its Test uses the stored URL's override and the camera's stored login.
    assert run_test(d).locator('.test-ok dd[data-field="size"]').inner_text() == "320×240"
    d.get_by_label("Keep at most (bytes)").fill("4K")
    d.get_by_role("button", name="Save").click()
    confirm = pg.get_by_role("dialog", name="Delete recordings?")
    confirm.wait_for()
    assert re.search(r"the new limit deletes \d+ recording", confirm.inner_text()), \
        confirm.inner_text()
    confirm.get_by_role("button", name="Delete recordings").click()
    d.wait_for(state="detached")
    assert stream_of(config(tab), "cam1", "sub")["retainBytes"] == 4096
    pg.locator(f'tr[data-stream-id="{sub["id"]}"]').filter(has_text="keep 4.00 KiB").wait_for()
    # Rename the camera; the password field left empty keeps the stored password.
    pg.get_by_role("button", name="Edit camera cam1").click()
    d = pg.get_by_role("dialog", name="Edit camera cam1")
    assert d.get_by_label("Password", exact=True).input_value() == ""
    d.get_by_label("Name", exact=True).fill("porch")
    d.get_by_role("button", name="Save").click()
    d.wait_for(state="detached")
    pg.locator('.camera-card[data-short-name="porch"]').wait_for()
    cam = next(c for c in config(tab)["cameras"] if c["id"] == 1)
    assert cam["shortName"] == "porch" and cam["passwordSet"] is True
    assert cam["streams"]["sub"]["status"]["state"] == "recording"
    # A second stream for it: tested with the camera's stored login, added, recording.
    pg.get_by_role("button", name="Add a stream to porch").click()
    d = pg.get_by_role("dialog", name="Add a stream to porch")
    d.get_by_label("RTSP URL").fill(server.camera.url("main"))
    assert d.get_by_label("Type").input_value() == "main"
    assert run_test(d).locator('.test-ok dd[data-field="size"]').inner_text() == "640×360"
    d.get_by_role("button", name="Add").click()
    d.wait_for(state="detached")
    main = stream_of(config(tab), "porch", "main")
    pg.locator(f'tr[data-stream-id="{main["id"]}"] [data-field="state"][data-state="recording"]') \
        .wait_for(timeout=60_000)


def test_status_refreshes_in_place_and_says_when_it_cannot(tab, server):
    tab.goto("#/settings")
    tab.login("admin")
    pg = tab.page
    row = pg.locator('tr[data-stream-id="1"]')
    row.locator('[data-field="state"][data-state="recording"]').wait_for()
    run0 = row.locator('[data-field="run"]').inner_text()
    row.evaluate("r => { r.dataset.marker = 'same element'; }")
    # The run's length grows with each refresh (every 3 s), in the same row: the page
    # isn't redrawn under the person using it.
    pg.wait_for_function("""([run0]) => { const c = document.querySelector(
        'tr[data-stream-id="1"] [data-field="run"]'); return c && c.innerText !== run0; }""",
        arg=[run0], timeout=15_000)
    assert row.get_attribute("data-marker") == "same element"
    # nvr unreachable: the page says its status is no longer live, then recovers.
    tab.allow(r"net::ERR_FAILED")
    pg.route("**/api/config/", lambda route: route.abort())
    stale = pg.locator(".settings-stale")
    stale.wait_for(timeout=15_000)
    assert "not being updated" in stale.inner_text()
    pg.unroute("**/api/config/")
    stale.wait_for(state="hidden", timeout=15_000)


def test_sample_file_dir_add_move_delete(tab, server, tmp_path):
    tab.goto("#/settings")
    tab.login("admin")
    pg = tab.page
    path = str(tmp_path / "disk1")
    pg.get_by_role("button", name="+ Add directory").click()
    d = pg.get_by_role("dialog", name="Add a sample file directory")
    d.get_by_label("Path").fill(path)
    d.get_by_label("Free space floor").fill("1G")
    d.get_by_role("button", name="Add").click()
    d.wait_for(state="detached")
    dirs = {x["path"]: x for x in config(tab)["dirs"]}
    assert dirs[path]["config"] == {"freeSpaceFloorBytes": 2 ** 30}
    row = pg.locator(f'tr[data-dir-id="{dirs[path]["id"]}"]')
    row.wait_for()
    assert int(row.locator('[data-field="freeBytes"]').get_attribute("data-value")) > 0
    # The disk "mounted elsewhere": the directory moves, and the dir is told its new path.
    moved = str(tmp_path / "disk1-moved")
    os.rename(path, moved)
    pg.get_by_role("button", name=f"Edit directory {path}").click()
    d = pg.get_by_role("dialog", name=f"Edit directory {path}")
    d.get_by_label("Path").fill(moved)
    d.get_by_role("button", name="Save").click()
    d.wait_for(state="detached")
    row.filter(has_text=moved).wait_for()
    assert {x["id"]: x["path"] for x in config(tab)["dirs"]}[dirs[path]["id"]] == moved
    pg.get_by_role("button", name=f"Delete directory {moved}").click()
    pg.get_by_role("dialog", name=f"Delete directory {moved}?").get_by_role("button", name="Delete").click()
    row.wait_for(state="detached")
    assert all(x["path"] != moved for x in config(tab)["dirs"])


def test_admin_revokes_a_users_session(browser, tab, server):
    viewer = Page(browser, server)
    try:
        viewer.goto()
        viewer.login("viewer")
        assert viewer.fetch("/api/")[0] == 200
        (sid,) = [s["id"] for s in viewer.api("/api/users/2/sessions")["sessions"]
                  if s["current"]]
        tab.goto("#/users")
        tab.login("admin")
        pg = tab.page
        pg.get_by_role("button", name="Sessions of viewer").click()
        d = pg.get_by_role("dialog", name="Sessions of viewer")
        row = d.locator(f'tr[data-session-id="{sid}"]')
        row.wait_for()
        created = row.locator('[data-field="created"]').inner_text()
        assert "127.0.0.1" in created and "HeadlessChrome" in created, created
        tab.screenshot("users-sessions")
        row.get_by_role("button", name=f"Revoke session {sid}").click()
        pg.get_by_role("dialog", name=f"Revoke session {sid}?").get_by_role("button", name="Revoke").click()
        row.wait_for(state="detached")
        status, _ = viewer.fetch("/api/")
        assert status == 401
        assert not viewer.unexpected_errors(), viewer.errors
    finally:
        viewer.context.close()


def test_without_configure_cameras_no_settings(tab, server):
    tab.allow(r"status of 403")
    tab.goto("#/settings")
    tab.login("viewer")
    pg = tab.page
    assert pg.locator('nav a[data-page="settings"]').is_hidden()
    assert "configureCameras" in pg.get_by_role("alert").filter(has_text="configureCameras").inner_text()
    status, _ = tab.fetch("/api/config/")
    assert status == 403
