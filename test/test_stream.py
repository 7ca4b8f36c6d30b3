"""stream.py: PyAV sources, parameter changes, credentials, and the streamer loop."""

import fractions
import logging
import subprocess
import threading
import types

import pytest

import codec
import db
import dir as dirmod
import stream
from clips import make_clip
from conftest import make_testdb

DAY = 86_400


@pytest.fixture(scope="module")
def two_sizes(tmp_path_factory):
    """A raw H.264 stream (Annex B, SPS/PPS in-band before each key frame) that
    changes from 320x180 to 640x360 halfway, as a camera reconfigured mid-session."""
    d = tmp_path_factory.mktemp("clips")
    a = make_clip(str(d / "a.h264"), width=320, height=180, frames=60, gop=30, fmt="h264")
    b = make_clip(str(d / "b.h264"), width=640, height=360, frames=60, gop=30, fmt="h264")
    raw = d / "ab.h264"
    raw.write_bytes(open(a, "rb").read() + open(b, "rb").read())
    # Raw H.264 has no timestamps; remux to MPEG-TS at 30 fps, as RTSP would stamp it.
    out = str(d / "ab.ts")
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-r", "30", "-i", str(raw),
                    "-c", "copy", out], check=True)
    return out


def test_file_source_strips_parameter_sets_and_notices_a_change(two_sizes):
    src = stream.PyAvOpener().open(two_sizes)
    try:
        assert (src.parameters.width, src.parameters.height) == (320, 180)
        frames = []
        with pytest.raises(stream.StreamError, match="the camera ended the stream"):
            for f in src.frames():
                frames.append(f)
    finally:
        src.close()
    assert len(frames) == 120
    changed = [i for i, f in enumerate(frames) if f.parameters is not None]
    assert changed == [60]
    p = frames[60].parameters
    assert (p.width, p.height) == (640, 360) and frames[60].is_key
    for f in frames:
        nals = codec.nal_units(f.data)  # length-prefixed, whole
        assert nals and not any(codec.is_parameter_set("h264", n) for n in nals)


class Packet(bytes):
    """What PyAvSource reads of an av.Packet: its bytes, pts, size and key flag."""

    def __new__(cls, data, pts, is_keyframe):
        p = super().__new__(cls, data)
        p.pts, p.is_keyframe, p.size = pts, is_keyframe, len(data)
        return p


class PacketContainer:
    """Stands in for an opened av container: one H.264 stream (1/90000 time base,
    `extradata`) whose demuxer yields `packets`."""

    def __init__(self, packets, extradata):
        cc = types.SimpleNamespace(name="h264", extradata=extradata)
        st = types.SimpleNamespace(codec_context=cc, time_base=fractions.Fraction(1, 90_000))
        self.streams = types.SimpleNamespace(video=[st])
        self.packets = packets

    def demux(self, stream):
        return iter(self.packets)

    def close(self):
        pass


def annexb(nals):
    return b"".join(b"\0\0\0\1" + n for n in nals)


def packets_and_extradata(path):
    """The Annex B packets of a clip (as RTSP gives them) and its stream's extradata."""
    import av
    c = av.open(path)
    try:
        s = c.streams.video[0]
        return ([Packet(bytes(p), p.pts, p.is_keyframe) for p in c.demux(s) if p.pts is not None],
                s.codec_context.extradata)
    finally:
        c.close()


def split_sets(p):
    """A key packet -> (its parameter sets alone, flagged key; the rest, flagged key):
    what a camera sending the sets as a packet of their own gives."""
    nals = codec.split_annexb(bytes(p))
    sets = [n for n in nals if codec.is_parameter_set("h264", n)]
    assert sets and len(sets) < len(nals)
    rest = [n for n in nals if not codec.is_parameter_set("h264", n)]
    return Packet(annexb(sets), p.pts, True), Packet(annexb(rest), p.pts, True)


def frames_of_source(src):
    frames = []
    with pytest.raises(stream.StreamError, match="the camera ended the stream"):
        for f in src.frames():
            frames.append(f)
    return [(f.pts_90k, f.is_key, bytes(f.data),
             f.parameters and (f.parameters.width, f.parameters.height)) for f in frames]


@pytest.mark.parametrize("extradata", [True, False], ids=["sdp-sets", "no-sdp-sets"])
@pytest.mark.parametrize("where", ["before-each-key-frame", "one-frame-early"])
def test_a_packet_of_parameter_sets_alone_is_no_frame(two_sizes, extradata, where):
    """Some cameras send SPS and PPS as a key-flagged packet of their own. Stripped of
    its sets that packet was an empty frame, which wedged the stream (writer.py). Now
    it yields nothing and its sets apply to the next key frame: the frames are those
    of the same stream with the sets inside each key frame, the size change included.
    "one-frame-early": the sets of the change come before the last frame of the old
    size (not a key frame), and wait for the key frame. Without extradata (no
    sprop-parameter-sets) the first packet's sets are the stream's parameters."""
    packets, sdp = packets_and_extradata(two_sizes)
    expected = frames_of_source(stream.PyAvSource(PacketContainer(packets, sdp), "whole"))
    changed = [i for i, f in enumerate(expected) if f[3] is not None]
    assert changed == [60] and len(expected) == 120
    split = []
    for i, p in enumerate(packets):
        if not p.is_keyframe:
            split.append(p)
            continue
        sets, rest = split_sets(p)
        if where == "one-frame-early" and i == 60:
            split.insert(len(split) - 1, sets)
        else:
            split.append(sets)
        split.append(rest)
    src = stream.PyAvSource(PacketContainer(split, sdp if extradata else None), "split")
    assert (src.parameters.width, src.parameters.height) == (320, 180)
    assert frames_of_source(src) == expected


def test_unusable_sdp_parameter_sets_fall_back_to_the_first_key_frame(two_sizes, caplog):
    """An SDP whose sets can't be used (e.g. H.265 without sprop-vps; here an H.264 SPS
    alone) is logged, and the parameters come from the first key frame, as without an
    SDP: the same frames as with good sets."""
    packets, sdp = packets_and_extradata(two_sizes)
    expected = frames_of_source(stream.PyAvSource(PacketContainer(packets, sdp), "whole"))
    sps_only = annexb([n for n in codec.split_annexb(bytes(packets[0]))
                       if codec.is_parameter_set("h264", n)][:1])
    with pytest.raises(codec.CodecError):
        codec.parameters_from_extradata("h264", sps_only)
    with caplog.at_level(logging.INFO, logger="stream"):
        src = stream.PyAvSource(PacketContainer(packets, sps_only), "partial")
    assert "the SDP's parameter sets can't be used" in caplog.text
    assert (src.parameters.width, src.parameters.height) == (320, 180)
    got = frames_of_source(src)
    assert [f[:3] for f in got] == [f[:3] for f in expected]


@pytest.mark.parametrize("url,username,password,expected", [
    ("rtsp://192.168.1.5:554/s1", "admin", "pw", "rtsp://admin:pw@192.168.1.5:554/s1"),
    ("rtsp://192.168.1.5/s1", "admin", "pw", "rtsp://admin:pw@192.168.1.5/s1"),
    ("rtsp://Cam.local:554/s1?channel=1&subtype=0", "admin", "pw",
     "rtsp://admin:pw@Cam.local:554/s1?channel=1&subtype=0"),
    # IPv6 literals keep their brackets (they were dropped: "admin:pw@fe80::1:554").
    ("rtsp://[fe80::1]:554/s", "admin", "pw", "rtsp://admin:pw@[fe80::1]:554/s"),
    ("rtsp://[2001:db8::5]/s", "admin", "pw", "rtsp://admin:pw@[2001:db8::5]/s"),
    # A zone id as written: FFmpeg reads it raw, and refuses RFC 6874's %25 form.
    ("rtsp://[fe80::1%eth0]:554/s", "admin", "pw", "rtsp://admin:pw@[fe80::1%eth0]:554/s"),
    ("rtsp://[fe80::1%25eth0]:554/s", "admin", "pw",
     "rtsp://admin:pw@[fe80::1%25eth0]:554/s"),
    # Userinfo is percent-encoded whole: ":" "@" "/" "%" and spaces can't end it early.
    ("rtsp://cam.local:554/s1", "ad min", "p@ss:w/rd",
     "rtsp://ad%20min:p%40ss%3Aw%2Frd@cam.local:554/s1"),
    ("rtsp://[::1]:8554/s", "user@site", "100%:#?",
     "rtsp://user%40site:100%25%3A%23%3F@[::1]:8554/s"),
    ("rtsp://h/s", "admin", "", "rtsp://admin@h/s"),  # empty password: no ":"
    ("rtsp://old:secret@h:554/s", "admin", "pw", "rtsp://admin:pw@h:554/s"),  # replaced
    ("rtsp://h/s", "", "", "rtsp://h/s"),
])
def test_url_with_credentials(url, username, password, expected):
    assert stream.url_with_credentials(url, username, password) == expected


def test_a_bad_url_is_a_stream_error_naming_it():
    # `config` refuses such a URL; one already in a database ends the run with a reason.
    with pytest.raises(stream.StreamError, match=r"rtsp://\[::1/x: bad URL \(Invalid IPv6 URL\)"):
        stream.PyAvOpener().open("rtsp://[::1/x", username="u", password="p")


class ListSource(stream.Source):
    def __init__(self, frames, parameters, end="gone"):
        self.parameters, self._frames, self.end = parameters, frames, end

    def frames(self):
        yield from self._frames
        raise stream.StreamError(self.end)


class ListOpener(stream.Opener):
    def __init__(self, sources, shutdown):
        self.sources, self.shutdown, self.calls = list(sources), shutdown, []

    def open(self, url, **kw):
        self.calls.append((url, kw))
        if not self.sources:
            self.shutdown.set()
            raise stream.StreamError("no more")
        return self.sources.pop(0)


def test_streamer_drops_leading_non_key_frames_and_keeps_a_run_across_a_change(
        tmp_path, clocks, two_sizes):
    t = make_testdb(tmp_path, clocks)
    t.db.update_camera(t.camera_id, config={"username": "u", "password": "pw"})
    src = stream.PyAvOpener().open(two_sizes)
    frames = []
    try:
        for f in src.frames():
            frames.append(f)
    except stream.StreamError:
        pass
    params = src.parameters
    src.close()
    # Two leading non-key frames (a camera joined mid-GOP) must be dropped.
    leading = [stream.Frame(-6000, False, frames[1].data), stream.Frame(-3000, False,
                                                                        frames[2].data)]
    shutdown = threading.Event()
    syncer = dirmod.Syncer(t.db, t.dir_id)
    opener = ListOpener([ListSource(leading + frames, params)], shutdown)
    s = stream.Streamer(t.db, t.stream_id, syncer, opener, shutdown=shutdown,
                        rotate_interval_sec=60)
    s.run()  # one session, then the opener says "no more" and shuts down
    assert opener.calls[0] == ("rtsp://127.0.0.1:8554/test",
                               {"username": "u", "password": "pw", "transport": "tcp"})
    while not syncer.queue.empty():
        syncer.iter()
    t.db.flush("test")
    rows = t.db.list_recordings_by_id(t.stream_id, 0, 10)
    sizes = {v.id: (v.width, v.height) for v in t.db.video_sample_entries.values()}
    assert [(r.run_offset, sizes[r.video_sample_entry_id], r.video_samples) for r in rows] == [
        (0, (320, 180), 60), (1, (640, 360), 60)]
    assert rows[1].flags == db.FLAG_TRAILING_ZERO and rows[1].end_reason == "gone"
    assert s.runs == 1
    t.db.close()


def _frames_of(path):
    src = stream.PyAvOpener().open(path)
    frames = []
    try:
        for f in src.frames():
            frames.append(f)
    except stream.StreamError:
        pass
    src.close()
    return frames, src.parameters


class FailingOpener(stream.Opener):
    """Fails each open with the next of `errors` (as many times as each says), then
    hands out `sources`; when those are gone, shuts down."""

    def __init__(self, errors, sources, shutdown):
        self.errors, self.sources, self.shutdown, self.calls = list(errors), list(sources), \
            shutdown, 0

    def open(self, url, **kw):
        self.calls += 1
        while self.errors and self.errors[0][1] == 0:
            self.errors.pop(0)
        if self.errors:
            self.errors[0][1] -= 1
            raise self.errors[0][0]
        if not self.sources:
            self.shutdown.set()
            raise stream.StreamError("no more")
        return self.sources.pop(0)


def test_a_camera_failing_for_a_day_logs_a_few_dozen_lines_and_when_it_records_again(
        tmp_path, clocks, two_sizes, caplog):
    """A camera that is off, then refuses the credentials, for a simulated day: the
    stream reconnects every second (86,400 attempts), and used to log each failure (and
    an "opening" line for each attempt). Now each error is logged in full once, then as
    counts; and when the camera comes back, one line says how long it was out."""
    t = make_testdb(tmp_path, clocks)
    frames, params = _frames_of(two_sizes)
    url = "rtsp://127.0.0.1:8554/test"
    refused = stream.StreamError(f"{url}: can't open: Connection refused")
    denied = stream.StreamError(f"{url}: the camera refused the credentials; set them with "
                                f"`nvr.py config camera edit NAME --username U "
                                f"--password-stdin`")
    shutdown = threading.Event()
    opener = FailingOpener([[refused, DAY // 2], [denied, DAY // 2]],
                           [ListSource(frames, params)], shutdown)
    syncer = dirmod.Syncer(t.db, t.dir_id)
    s = stream.Streamer(t.db, t.stream_id, syncer, opener, shutdown=shutdown,
                        rotate_interval_sec=60)
    with caplog.at_level(logging.INFO):
        s.run()
    assert opener.calls == DAY + 2 and s.runs == 1
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) < 40, "\n".join(msgs)
    name = "test-camera-main"
    assert msgs[:3] == [f"{name}: opening {url}",  # then at DEBUG, while failing
                        f"{name}: {refused} (retrying every 1 s)",
                        f"{name}: {refused} (10 times in 9 s; retrying every 1 s)"]
    assert f"{name}: {refused} (1,000 times in 16 min 39 s; retrying every 1 s)" in msgs
    assert f"{name}: {denied} (retrying every 1 s)" in msgs  # a new error: in full
    assert f"{name}: {denied} (100 times in 1 min 39 s; retrying every 1 s)" in msgs
    assert f"{name}: recording again after 1 d, 86,400 failed attempts" in msgs
    assert f"{name}: first key frame; recording" not in msgs  # the line above says it
    assert all(r.exc_info is None for r in caplog.records)  # expected errors: no traceback
    while not syncer.queue.empty():
        syncer.iter()
    t.db.flush("test")
    assert len(t.db.list_recordings_by_id(t.stream_id, 0, 10)) == 2
    t.db.close()


def test_a_camera_that_drops_every_run_is_a_few_lines_not_three_per_drop(
        tmp_path, clocks, two_sizes, caplog):
    """Each run records 2 s and ends ("the camera ended the stream"), 30 times over:
    this used to log an "opening", a "first key frame; recording" and a warning for
    each."""
    t = make_testdb(tmp_path, clocks)
    frames, params = _frames_of(two_sizes)
    frames = frames[:60]  # the first size only: no "new video parameters" line per run
    shutdown = threading.Event()
    opener = FailingOpener([], [ListSource(frames, params, "the camera ended the stream")
                                for _ in range(30)], shutdown)
    s = stream.Streamer(t.db, t.stream_id, dirmod.Syncer(t.db, t.dir_id), opener,
                        shutdown=shutdown, rotate_interval_sec=60)
    with caplog.at_level(logging.INFO):
        s.run()
    assert s.runs == 30
    name = "test-camera-main"
    assert [r.getMessage() for r in caplog.records if r.name == "stream"] == [
        f"{name}: opening rtsp://127.0.0.1:8554/test",
        f"{name}: first key frame; recording",
        f"{name}: the camera ended the stream (retrying every 1 s)",
        f"{name}: recording again after 1 s, 1 failed attempt",
        f"{name}: the camera ended the stream (10 times in 9 s; retrying every 1 s)",
        f"{name}: recording again after 1 s, 1 failed attempt",
        f"{name}: shutting down"]  # (FailingOpener's "no more" set shutdown: no error)
    t.db.close()


def test_a_bug_in_a_run_keeps_its_traceback_once_and_a_stream_error_has_none(
        tmp_path, clocks, caplog):
    t = make_testdb(tmp_path, clocks)
    shutdown = threading.Event()
    opener = FailingOpener([[KeyError("width"), 100],
                            [stream.StreamError("no frame for 30 s"), 100]], [], shutdown)
    s = stream.Streamer(t.db, t.stream_id, dirmod.Syncer(t.db, t.dir_id), opener,
                        shutdown=shutdown)
    with caplog.at_level(logging.WARNING):
        s.run()
    name = "test-camera-main"
    assert [(r.getMessage(), r.levelname, r.exc_info is not None)
            for r in caplog.records] == [
        (f"{name}: unexpected KeyError: 'width' (retrying every 1 s)", "ERROR", True),
        (f"{name}: unexpected KeyError: 'width' (10 times in 9 s; retrying every 1 s)",
         "WARNING", False),
        (f"{name}: unexpected KeyError: 'width' (100 times in 1 min 39 s; retrying every "
         f"1 s)", "WARNING", False),
        (f"{name}: no frame for 30 s (retrying every 1 s)", "WARNING", False),
        (f"{name}: no frame for 30 s (10 times in 9 s; retrying every 1 s)", "WARNING", False),
        (f"{name}: no frame for 30 s (100 times in 1 min 39 s; retrying every 1 s)",
         "WARNING", False)]
    assert caplog.records[0].exc_info[0] is KeyError
    t.db.close()


def _wait_until_recording(t, frames: int, what: str = "not recording") -> None:
    """Polls (nothing to wait on) until the stream's newest uncommitted recording has
    `frames` frames, for up to 30 s."""
    import time
    deadline = time.monotonic() + 30
    while not t.db.streams[t.stream_id].uncommitted or \
            t.db.streams[t.stream_id].uncommitted[-1].video_samples < frames:
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


class _Keeping(stream.PyAvOpener):
    """PyAvOpener that keeps what it opened, to look at."""

    def __init__(self):
        self.sources = []
        self.streams = []  # of each container, as opened: [(type, codec name)]

    def open(self, *args, **kwargs):
        src = super().open(*args, **kwargs)
        self.sources.append(src)
        self.streams.append([(st.type, st.codec_context.name)
                             for st in src.container.streams])
        return src


@pytest.mark.parametrize("watch", ["stall watch", "PyAV read timeout"])
def test_a_stalled_camera_ends_the_run_and_a_new_one_follows(tmp_path, rtsp_camera,
                                                             monkeypatch, watch):
    """The between-frames timeout (30 s in production, 4 s here) against a real RTSP
    server whose video stalls while its session stays up (test/camera.py's pause):
    through StallWatch (what runs here), and through PyAV's read timeout (where the
    watch can't find PyAV's timeout field)."""
    import time
    import clock
    from replay import drain, start_run
    monkeypatch.setattr(stream, "FRAME_TIMEOUT_SEC", 4)
    monkeypatch.setattr(stream.StallWatch, "TICK_SEC", 0.25)
    if watch != "stall watch":
        monkeypatch.setattr(stream.stall_watch, "usable", lambda: False)
    opener = _Keeping()
    t = make_testdb(tmp_path, clock.RealClocks())
    try:
        t.db.update_stream(t.stream_id, config={**t.db.streams[t.stream_id].config,
                                                "url": rtsp_camera.url("main")})
        syncer = dirmod.Syncer(t.db, t.dir_id)
        s = stream.Streamer(t.db, t.stream_id, syncer, opener,
                            shutdown=threading.Event(), rotate_interval_sec=60)
        errors = []
        th = start_run(s, errors)
        _wait_until_recording(t, 10)
        paused_at = time.monotonic()
        rtsp_camera.pause("main")
        th.join(30)
        stalled_for = time.monotonic() - paused_at
        rtsp_camera.resume("main")
        assert not th.is_alive()
        assert [str(e) for e in errors] == ["no frame for 4 s"]
        if watch == "stall watch":
            # 4 s after the last packet, to the watch's next look; PyAV's read timeout
            # takes twice as long (the frame FFmpeg held back restarts its timer), ~8 s.
            # The bound sits between the two with 2.25 s for a loaded machine: with a
            # 2 s timeout it left 1.25 s, and flaked.
            assert 4 <= stalled_for < 6.5
        else:
            assert 4 <= stalled_for < 20
        read_timeout = opener.sources[0].container.read_timeout
        assert read_timeout == (None if watch == "stall watch" else 4)
        drain(syncer)
        t.db.flush("test")
        rows = t.db.list_recordings_by_id(t.stream_id, 0, 1 << 31)
        assert rows[-1].flags & db.FLAG_TRAILING_ZERO
        assert rows[-1].end_reason == "no frame for 4 s"
        # The next run (a new RTSP session) records again.
        th = start_run(s, errors)
        n = len(rows)
        _wait_until_recording(t, 5, "the next run didn't record")
        s.shutdown.set()
        th.join(30)
        assert not th.is_alive(), "the run didn't end on shutdown"
        drain(syncer)
        t.db.flush("test")
        rows = t.db.list_recordings_by_id(t.stream_id, 0, 1 << 31)
        assert len(rows) == n + 1 and rows[-1].run_offset == 0
        assert rows[-1].end_reason == "NVR shutdown"
    finally:
        t.db.close()


def test_stall_watch_finds_pyavs_timeout_and_leaves_it_off_while_packets_flow(rtsp_camera):
    """On the PyAV this runs with, the watch is used: streams open with no read timeout
    (so PyAV's interrupt callback never takes the GIL), and the field it writes is
    PyAV's "no timeout" (-1.0) while frames come."""
    assert stream.stall_watch.usable()
    src = stream.PyAvOpener().open(rtsp_camera.url("main"))
    try:
        assert src.container.read_timeout is None
        entry = stream.stall_watch._entries[id(src)]
        frames = src.frames()
        for _ in range(45):  # > 1 s of 30 fps: the watch has looked at least once
            next(frames)
        assert entry[1].value == -1.0 and src.packets >= 45
    finally:
        src.close()
    assert id(src) not in stream.stall_watch._entries


def test_a_container_laid_out_otherwise_is_opened_again_with_pyavs_read_timeout(
        rtsp_camera, monkeypatch, caplog):
    """...and so is every later one (no double open at each reconnect)."""
    w = stream.stall_watch
    assert w.usable()
    monkeypatch.setattr(w, "_offset", w._offset)  # restored after the test
    monkeypatch.setattr(stream.StallWatch, "_find", staticmethod(lambda *a, **k: None))
    with caplog.at_level(logging.WARNING, logger="stream"):
        src = stream.PyAvOpener().open(rtsp_camera.url("main"))
    try:
        assert src.container.read_timeout == stream.FRAME_TIMEOUT_SEC
        assert id(src) not in w._entries
        assert "opening again, and from now on, with PyAV's read timeout" in caplog.text
        next(src.frames())
    finally:
        src.close()
    assert not w.usable()


def test_stall_watch_calibration_logs_nothing(caplog):
    """FFmpeg's complaint about the empty calibration buffer stays out of nvr's log
    (PyAV 10, Debian 12's, logs FFmpeg's messages by default)."""
    with caplog.at_level(logging.DEBUG):
        assert stream.StallWatch().usable()
    assert [(r.name, r.getMessage()) for r in caplog.records if r.name.startswith("libav")] \
        == []


class _FakeSource:
    def __init__(self):
        self.packets = 0
        self.holding = False


def test_stall_watch_ends_reads_after_the_timeout_without_a_packet(monkeypatch):
    """The watch's own timing, in simulated time (`tick(now)`): a source gets a zero
    timeout once FRAME_TIMEOUT_SEC pass with no packet while it waits on the camera;
    time its consumer holds a frame doesn't count; an interrupted source stays so."""
    import ctypes
    monkeypatch.setattr(stream, "FRAME_TIMEOUT_SEC", 7)
    w = stream.StallWatch()
    monkeypatch.setattr(w, "_thread", object())  # no thread: the test ticks
    a, b = _FakeSource(), _FakeSource()
    sa, sb = ctypes.c_double(-1.0), ctypes.c_double(-1.0)
    w.add(a, sa)
    w.add(b, sb)
    def tick(t):
        a.packets += 30           # a streams all along
        w.tick(t)
    tick(100)                     # first look: counts noted, quiet from now
    for t in range(101, 107):
        tick(t)                   # b is silent for 6 s
    assert (sa.value, sb.value) == (-1.0, -1.0)
    b.packets += 1                # a packet at 106.5: b's silence starts again
    tick(107)
    tick(113)                     # 6 s more: not yet
    assert sb.value == -1.0
    b.holding = True              # b's consumer holds a frame (a stalled disk)...
    tick(120)                     # ...so its 13 s of no packets aren't a stall
    assert sb.value == -1.0
    b.holding = False
    tick(126)
    assert sb.value == -1.0
    tick(127)                     # 7 s waiting on the camera: end the read
    assert (sa.value, sb.value) == (-1.0, 0.0)
    b.packets += 1                # FFmpeg hands over a held-back frame; then PyAV
    sb.value = -1.0               # restarting a demux would set "none" again...
    tick(128)
    assert sb.value == 0.0        # ...but b stays interrupted
    w.remove(b)
    sb.value = -1.0
    tick(200)                     # a removed source is never written again
    assert (sa.value, sb.value) == (-1.0, -1.0)
    w.tick(207)                   # a silent for 7 s
    assert sa.value == 0.0
    c = _FakeSource()
    sc = ctypes.c_double(-1.0)
    w.add(c, sc)
    w.interrupt_all()             # shutdown: at once
    assert sc.value == 0.0
    d = _FakeSource()
    sd = ctypes.c_double(-1.0)
    w.add(d, sd)
    del d                         # dropped without close(): freed, then forgotten
    w.tick(300)
    assert sd.value == -1.0 and len(w._entries) == 2  # a and c


def test_shutdown_ends_a_read_from_a_silent_camera_at_once(tmp_path, rtsp_camera):
    """With the production 30 s frame timeout, nvr.Recorder.stop returns within a couple
    of seconds though a camera is silent (it calls StallWatch.interrupt_all), and the
    run ends "NVR shutdown"."""
    import time
    import clock
    import nvr
    t = make_testdb(tmp_path, clock.RealClocks())
    try:
        t.db.update_stream(t.stream_id, config={**t.db.streams[t.stream_id].config,
                                                "url": rtsp_camera.url("main")})
        rec = nvr.Recorder(t.db, lambda s: stream.PyAvOpener(), shutdown=threading.Event())
        rec.start()
        _wait_until_recording(t, 10)
        rtsp_camera.pause("main")
        try:
            time.sleep(1.5)  # the camera silent (not a synchronisation: a stall's length)
            began = time.monotonic()
            rec.stop()
            took = time.monotonic() - began
        finally:
            rtsp_camera.resume("main")
        # At once: ~0.3 s, against the 30 s frame timeout it would otherwise wait out.
        # 15 s leaves room for a loaded machine (3 s could flake).
        assert not rec.streamers[t.stream_id].thread.is_alive() and took < 15
        rows = t.db.list_recordings_by_id(t.stream_id, 0, 1 << 31)
        assert rows[-1].end_reason == "NVR shutdown"
    finally:
        t.db.close()


def test_a_frame_held_by_the_consumer_or_a_late_first_read_is_no_stall(rtsp_camera,
                                                                       monkeypatch):
    """Time the consumer holds a frame (a full disk stalls the writer), or takes before
    asking for the first frame, isn't silence from the camera: the stream goes on."""
    import time
    monkeypatch.setattr(stream, "FRAME_TIMEOUT_SEC", 2)
    monkeypatch.setattr(stream.StallWatch, "TICK_SEC", 0.25)
    src = stream.PyAvOpener().open(rtsp_camera.url("main"))
    try:
        time.sleep(3)   # a slow start (not a synchronisation: what is being tested)
        frames = src.frames()
        next(frames)
        time.sleep(3)   # holding that frame
        for _ in range(60):
            next(frames)
    finally:
        src.close()


def test_a_source_dropped_without_close_is_freed(rtsp_camera):
    import gc
    import weakref
    src = stream.PyAvOpener().open(rtsp_camera.url("main"))
    next(src.frames())
    ref = weakref.ref(src)
    del src
    gc.collect()
    assert ref() is None   # the watch holds no strong reference
    stream.stall_watch.tick()
    assert all(e[0]() is not None for e in stream.stall_watch._entries.values())


def test_a_stream_opened_after_shutdown_began_closes_at_once(tmp_path, rtsp_camera):
    """Recorder.stop sets shutdown, then interrupts the reads it knows of; a stream whose
    open finished just after that wasn't interrupted: it must not start reading."""
    import clock
    opener = _Keeping()
    t = make_testdb(tmp_path, clock.RealClocks())
    try:
        t.db.update_stream(t.stream_id, config={**t.db.streams[t.stream_id].config,
                                                "url": rtsp_camera.url("main")})
        shutdown = threading.Event()
        s = stream.Streamer(t.db, t.stream_id, dirmod.Syncer(t.db, t.dir_id), opener,
                            shutdown=shutdown, rotate_interval_sec=60)
        shutdown.set()
        s.run_once()
        assert s.runs == 0 and len(opener.sources) == 1
        assert id(opener.sources[0]) not in stream.stall_watch._entries  # closed
    finally:
        t.db.close()


@pytest.mark.parametrize("tracks", ["video only", "every track (before)"])
def test_a_camera_with_audio_whose_ntp_clock_steps_records_one_unbroken_run(
        tmp_path, make_rtsp_camera, monkeypatch, tracks):
    """Issue 19 item 8. A camera whose SDP lists an audio track too, and whose RTCP
    sender reports' NTP clock steps 10 s back mid-stream (camera.SenderReportProxy).
    nvr sets up the video alone (stream.RTSP_OPTIONS' allowed_media_types), so FFmpeg
    times it by the RTP clock: one run, every frame exactly 1/15 s. The "before" case
    opens every track, as nvr did: FFmpeg then times packets from the sender reports,
    and the step ends the run (and before it, frame durations jitter by a few ticks)."""
    import clock
    from camera import SenderReportProxy, Stream
    from replay import drain, start_run
    if tracks != "video only":
        monkeypatch.setattr(stream, "RTSP_OPTIONS", {"user_agent": "nvr"})
    cam = make_rtsp_camera([Stream("av", "h264", 320, 240, fps=15, kbps=300, gop=15,
                                   audio=True)])
    opener = _Keeping()
    t = make_testdb(tmp_path, clock.RealClocks())
    proxy = SenderReportProxy(cam.port)
    try:
        t.db.update_stream(t.stream_id, config={**t.db.streams[t.stream_id].config,
                                                "url": proxy.url("av")})
        syncer = dirmod.Syncer(t.db, t.dir_id)
        s = stream.Streamer(t.db, t.stream_id, syncer, opener,
                            shutdown=threading.Event(), rotate_interval_sec=60)
        errors = []
        th = start_run(s, errors, catch=Exception)   # the test looks at what ended it
        _wait_until_recording(t, 15)   # a second, and sender reports of both tracks
        proxy.step(-10)
        if tracks == "video only":
            # Sender reports (if rtpbin sends this client any: see rtsp_server.py) come
            # about once a second; 3 s of frames more, timed by the RTP clock alone.
            n = t.db.streams[t.stream_id].uncommitted[-1].video_samples
            _wait_until_recording(t, n + 45, "the run didn't go on")
            s.shutdown.set()
        th.join(30)   # "before": the first stepped sender report ends the run
        assert not th.is_alive()
        streams = opener.streams[0]
        drain(syncer)
        t.db.flush("test")
        rows = t.db.list_recordings_by_id(t.stream_id, 0, 1 << 31)
        if tracks == "video only":
            assert streams == [("video", "h264")]
            assert errors == []
            assert [(r.run_offset, r.end_reason) for r in rows] == [(0, "NVR shutdown")]
            # Every frame lasts exactly 6000 ticks (the last, the trailing zero, none).
            r = rows[0]
            assert r.video_samples > 60
            assert r.media_duration_90k == (r.video_samples - 1) * 6000
        else:
            assert streams == [("video", "h264"), ("audio", "pcm_alaw")]
            # The 10 s step back ends the run: as pts going backwards, or (1 run in 4
            # here) as FFmpeg's wrapped pts, a jump forward past 2^32 (writer.py).
            assert ("pts not monotonically increasing" in rows[-1].end_reason
                    or "excessive pts jump" in rows[-1].end_reason), rows[-1].end_reason
            assert [str(e) for e in errors] == [rows[-1].end_reason]
    finally:
        proxy.close()
        t.db.close()
