"""GET /api/metrics (metrics.py): the Prometheus text format, checked by a strict parser
written here, and every series docs/api.md lists, with values that follow from what the
test did: a database recorded through the real streamer -> writer -> syncer path (in
simulated time), then a stream recording from the test camera (real time) with a live
view open."""

from __future__ import annotations

import errno
import http.client
import math
import os
import re
import threading
import time
import uuid as uuidlib

import pytest

import api
import auth
import clock
import codec
import db as dbmod
import dir as dirmod
import metrics
import nvr
import recording
import stream
import web
import writer
from camera import RtspCamera, Stream, unavailable_reason
from clips import make_clip
from conftest import START_NS, make_testdb
from replay import record

# --- a strict parser of the text format (version 0.0.4) --------------------------------------

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_SAMPLE = re.compile(rf"({_NAME})(\{{.*\}})? (\S+)")
_TYPES = ("counter", "gauge", "histogram")


def _value(text: str) -> float:
    if text in ("+Inf", "-Inf", "NaN"):
        return float(text.replace("Inf", "inf").replace("NaN", "nan"))
    assert re.fullmatch(r"-?[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?", text), f"bad value {text!r}"
    return float(text)


def _labels(text: str) -> tuple[tuple[str, str], ...]:
    """`{a="x",b="y\\"z"}` -> (("a", "x"), ("b", 'y"z')); only \\\\, \\" and \\n escapes."""
    assert text[0] == "{" and text[-1] == "}", text
    body, i, out = text[1:-1], 0, []
    while i < len(body):
        m = _LABEL.match(body, i)
        assert m, f"bad label name at {body[i:]!r}"
        name, i = m.group(), m.end()
        assert body[i:i + 2] == '="', f"label {name}: expected =\" in {body!r}"
        i += 2
        value = []
        while True:
            assert i < len(body), f"unterminated label value in {body!r}"
            c = body[i]
            if c == "\\":
                esc = body[i + 1:i + 2]
                assert esc in ("\\", '"', "n"), f"bad escape \\{esc} in {body!r}"
                value.append("\n" if esc == "n" else esc)
                i += 2
            elif c == '"':
                i += 1
                break
            else:
                assert c != "\n"
                value.append(c)
                i += 1
        assert name not in dict(out), f"label {name} twice in {text!r}"
        out.append((name, "".join(value)))
        if i < len(body):
            assert body[i] == ",", f"expected , in {body!r}"
            i += 1
            assert i < len(body), f"trailing comma in {text!r}"
    return tuple(out)


class Scrape:
    """A parsed exposition: `families[name] = (type, help)`, `samples[(sample name,
    frozenset(labels))] = value`, checked strictly as it is parsed."""

    def __init__(self, text: str):
        assert text.endswith("\n"), "the last line must end with a newline"
        self.families: dict[str, tuple[str, str]] = {}
        self.samples: dict[tuple[str, frozenset], float] = {}
        helps: dict[str, str] = {}
        done: set[str] = set()      # families whose samples have ended
        current = None              # the family whose lines we are in
        for line in text[:-1].split("\n"):
            assert line, "no blank lines"
            if line.startswith("#"):
                m = re.fullmatch(rf"# (HELP|TYPE) ({_NAME}) (.*)", line)
                assert m, f"a comment that is neither HELP nor TYPE: {line!r}"
                what, name, rest = m.groups()
                assert name not in done and name not in self.families, \
                    f"{what} for {name} after its samples or its TYPE: {line!r}"
                if current is not None and current != name:
                    done.add(current)
                current = name
                if what == "HELP":
                    assert name not in helps, f"HELP twice for {name}"
                    assert re.fullmatch(r"([^\\]|\\\\|\\n)*", rest), f"bad HELP escape {rest!r}"
                    assert rest.strip(), f"empty HELP for {name}"
                    helps[name] = rest
                else:
                    assert rest in _TYPES, f"type {rest!r} of {name}"
                    assert name in helps, f"TYPE before HELP for {name}"
                    if rest == "counter":
                        assert name.endswith("_total"), f"counter {name} must end in _total"
                    self.families[name] = (rest, helps[name])
                continue
            m = _SAMPLE.fullmatch(line)
            assert m, f"not `name{{labels}} value`: {line!r}"
            sname, labels_text, value_text = m.groups()
            labels = _labels(labels_text) if labels_text else ()
            family = self._family_of(sname, labels)
            assert family == current, \
                f"sample {sname} outside its family's block (in {current}): {line!r}"
            key = (sname, frozenset(labels))
            assert key not in self.samples, f"duplicate series {line!r}"
            self.samples[key] = _value(value_text)
        self._check_histograms()

    def _family_of(self, sname: str, labels) -> str:
        if sname in self.families:
            kind = self.families[sname][0]
            assert kind != "histogram", f"bare histogram sample {sname}"
            assert "le" not in dict(labels)
            return sname
        for suffix in ("_bucket", "_sum", "_count"):
            base = sname.removesuffix(suffix)
            if base != sname and self.families.get(base, ("",))[0] == "histogram":
                assert (suffix == "_bucket") == ("le" in dict(labels)), sname
                return base
        raise AssertionError(f"sample {sname} has no HELP and TYPE before it")

    def _check_histograms(self) -> None:
        for name, (kind, _) in self.families.items():
            if kind != "histogram":
                continue
            series: dict[frozenset, list] = {}
            for (sname, labels), v in self.samples.items():
                if sname == name + "_bucket":
                    d = dict(labels)
                    series.setdefault(frozenset((k, x) for k, x in labels if k != "le"),
                                      []).append((_value(d["le"]), v))
            for rest, buckets in series.items():
                buckets.sort()
                assert buckets[-1][0] == math.inf, f"{name}{dict(rest)}: no +Inf bucket"
                counts = [n for _, n in buckets]
                assert counts == sorted(counts), f"{name}{dict(rest)}: not cumulative"
                assert self.samples[(name + "_count", rest)] == counts[-1], \
                    f"{name}{dict(rest)}: _count isn't the +Inf bucket"
                assert (name + "_sum", rest) in self.samples
            for (sname, labels) in self.samples:
                if sname in (name + "_sum", name + "_count"):
                    assert labels in series, f"{sname}{dict(labels)} without buckets"

    def get(self, name: str, **labels) -> float:
        return self.samples[(name, frozenset(labels.items()))]

    def has(self, name: str, **labels) -> bool:
        return (name, frozenset(labels.items())) in self.samples


def test_parser_refuses_what_the_format_forbids():
    """The parser is the test's judge: it must fail on each kind of mistake."""
    good = ('# HELP a_total A.\n# TYPE a_total counter\na_total{x="1"} 2\n'
            '# HELP h H.\n# TYPE h histogram\nh_bucket{le="1.0"} 1\nh_bucket{le="+Inf"} 2\n'
            'h_sum 3.5\nh_count 2\n')
    s = Scrape(good)
    assert s.get("a_total", x="1") == 2 and s.get("h_count") == 2
    bad = [
        good.replace("# TYPE a_total counter\n", ""),                       # no TYPE
        good.replace("a_total", "a"),                                       # counter name
        good + 'a_total{x="1"} 3\n',                                        # out of block
        good.replace('a_total{x="1"} 2\n', 'a_total{x="1"} 2\na_total{x="1"} 2\n'),  # dup
        good.replace('h_bucket{le="+Inf"} 2', 'h_bucket{le="9"} 2'),        # no +Inf
        good.replace('h_bucket{le="1.0"} 1', 'h_bucket{le="1.0"} 3'),       # not cumulative
        good.replace("h_count 2", "h_count 3"),                             # count != +Inf
        good.replace('{x="1"}', '{x="a\\t"}'),                              # bad escape
        good.replace('{x="1"}', '{1x="1"}'),                                # bad label name
        good.replace("# HELP a_total A.\n", "# a comment\n"),               # free comment
        good.replace(" 2\n", " two\n", 1),                                  # bad value
        good[:-1],                                                          # no final \n
    ]
    for i, text in enumerate(bad):
        with pytest.raises(AssertionError):
            Scrape(text)
            print("accepted bad case", i)


def test_label_values_and_help_are_escaped():
    c = metrics.Counter("x_total", 'Help with \\ and\nnewline.', ("v",))
    c.inc(3, 'a"b\\c\nd')
    text = metrics.render([c])
    assert "# HELP x_total Help with \\\\ and\\nnewline.\n" in text
    assert Scrape(text).get("x_total", v='a"b\\c\nd') == 3


def test_histogram_buckets_take_values_on_their_bound():
    h = metrics.Histogram("h_seconds", "H.", buckets=(0.1, 1.0))
    for v in (0.1, 0.5, 1.0, 7.0):
        h.observe(v)
    s = Scrape(metrics.render([h]))
    assert [s.get("h_seconds_bucket", le=le) for le in ("0.1", "1.0", "+Inf")] == [1, 3, 4]
    assert s.get("h_seconds_sum") == pytest.approx(8.6)


def test_end_kinds_come_from_the_errors_that_end_runs():
    """Every kind of the fixed set is reachable, and the raise sites say which."""
    got = {
        stream.end_kind(stream.StreamError("no frame for 30 s", "stalled")): "stalled",
        stream.end_kind(stream.StreamError("x")): "bad_stream",
        stream.end_kind(writer.WriterError("x", "bad_timestamps")): "bad_timestamps",
        stream.end_kind(codec.CodecError("x")): "bad_stream",
        stream.end_kind(OSError(errno.ENOSPC, "full")): "io_error",
        stream.end_kind(clock.ShutdownError("x")): "shutdown",
        stream.end_kind(ValueError("a bug")): "error",
    }
    assert all(k == v for k, v in got.items()), got
    assert set(got) <= set(metrics.END_KINDS)
    src = open(stream.__file__).read() + open(writer.__file__).read()
    for kind in ("stalled", "read_error", "camera_ended", "bad_timestamps"):
        assert f'"{kind}")' in src, f"no raise site gives {kind}"


# --- a database recorded in simulated time -----------------------------------------------

def fetch(port: int, path: str = "/api/metrics", method: str = "GET"):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request(method, path)
    r = c.getresponse()
    out = r.status, r.headers, r.read()
    c.close()
    return out


def quiet(srv: web.Server) -> None:
    """Waits until the server's handler threads have seen their clients go (each request
    is counted when answered, each connection until its thread ends)."""
    for s in srv._servers:
        assert s.wait_connections(lambda x: x.connection_count() == 0, 10)


def scrape(port: int) -> tuple[Scrape, bytes]:
    status, headers, body = fetch(port)
    assert status == 200, body
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    return Scrape(body.decode()), body


def test_scrape_of_a_recorded_database(tmp_path):
    clocks = clock.SimulatedClocks(START_NS)
    t = make_testdb(tmp_path, clocks)
    clip = make_clip(str(tmp_path / "a.mp4"), frames=90, gop=30)
    rows = record(t, clip, clocks, frames=450)   # 15 s at 30 fps, ending "end of clip"
    assert len(rows) >= 3
    cam = t.db.cameras[t.camera_id].short_name
    s_labels = dict(camera=cam, type="main")
    binds = [nvr.Bind(("ipv4", "127.0.0.1:0"),
                      allow_unauthenticated_permissions=auth.Permissions(view_video=True)),
             nvr.Bind(("ipv4", "127.0.0.1:0"))]
    srv = web.Server(t.db, nvr.Config("unused", None, binds), clocks=clocks)
    srv.start()
    try:
        port, closed = srv.addresses[0][1], srv.addresses[1][1]
        # The permission: viewVideo (a bind without it: 401, as any video URL).
        refused = fetch(closed)
        bad = fetch(port, "/api/metrics?x=1")
        assert (refused[0], bad[0]) == (401, 400)
        assert fetch(port, "/api/no-such")[0] == 404
        quiet(srv)
        m, first_body = scrape(port)

        # Streams: what the writer recorded, counted as the frames came.
        frames = sum(r.video_samples for r in rows)
        assert frames == 450
        assert m.get("nvr_stream_received_frames_total", **s_labels) == frames
        assert m.get("nvr_stream_received_bytes_total", **s_labels) == \
            sum(r.sample_file_bytes for r in rows)
        assert m.get("nvr_stream_runs_total", **s_labels) == 1
        assert m.get("nvr_stream_reconnects_total", **s_labels) == 0
        # ReplaySource ends with a plain StreamError("end of clip"): bad_stream.
        ends = {k: m.get("nvr_stream_run_ends_total", **s_labels, reason=k)
                for k in metrics.END_KINDS}
        assert ends == {k: int(k == "bad_stream") for k in metrics.END_KINDS}
        assert m.get("nvr_stream_last_frame_age_seconds", **s_labels) == 0
        # 30 fps in (simulated) real time; the first 2 s came at once, before the window.
        assert m.get("nvr_stream_frames_per_second", **s_labels) == pytest.approx(30, rel=0.01)
        bits_per_frame = 8 * sum(r.sample_file_bytes for r in rows) / frames
        bps = m.get("nvr_stream_bits_per_second", **s_labels)
        assert 0.5 < bps / (30 * bits_per_frame) < 2
        last = rows[-1]
        lag = m.get("nvr_stream_recording_lag_seconds", **s_labels)
        now_90k = recording.to_90k_from_ns(clocks.realtime())
        assert lag == pytest.approx((now_90k - last.start_time_90k - last.wall_duration_90k)
                                    / 90_000)
        assert 0 <= lag < 1

        # The sample file dir.
        d = dict(dir=t.sample_dir)
        assert m.get("nvr_dir_used_bytes", **d) == sum(dbmod.round_up(r.sample_file_bytes)
                                                       for r in rows)
        st = os.statvfs(t.sample_dir)
        assert abs(m.get("nvr_dir_free_bytes", **d) - st.f_bavail * st.f_frsize) < 1 << 30
        assert m.get("nvr_dir_fsync_seconds_count", **d) == len(rows)  # one per recording
        assert not m.has("nvr_dir_deleted_files_total", **d)           # none yet
        flushes = m.get("nvr_flush_seconds_count")
        assert flushes >= 1 and m.get("nvr_flush_errors_total") == 0

        # HTTP, as the server saw it before this scrape (counted when answered).
        assert m.get("nvr_http_requests_total", route="metrics", status="401") == 1
        assert m.get("nvr_http_requests_total", route="metrics", status="400") == 1
        assert m.get("nvr_http_requests_total", route="unknown", status="404") == 1
        assert m.get("nvr_http_open_connections") == 1      # this scrape's own
        assert m.get("nvr_http_open_websockets") == 0

        # The process.
        assert m.get("process_cpu_seconds_total") > 0
        assert m.get("process_resident_memory_bytes") > 10 << 20
        assert m.get("process_threads") >= threading.active_count()
        assert 3 <= m.get("process_open_fds") <= m.get("process_max_fds")

        # Time passes without frames: the rate window empties, the age and lag grow.
        clocks.advance(20 * clock.NANOS_PER_SEC)
        t.db.flush("test")
        syncer = dirmod.Syncer(t.db, t.dir_id)
        t.db.delete_oldest_recordings(t.stream_id, retain_bytes=0)  # all of them
        t.db.flush("test")
        assert syncer.collect_garbage() == len(rows)
        quiet(srv)
        m2, _ = scrape(port)
        assert m2.get("nvr_stream_last_frame_age_seconds", **s_labels) == 20
        assert m2.get("nvr_stream_frames_per_second", **s_labels) == 0
        assert m2.get("nvr_stream_bits_per_second", **s_labels) == 0
        assert m2.get("nvr_stream_received_frames_total", **s_labels) == frames
        assert m2.get("nvr_flush_seconds_count") == flushes + 2
        assert m2.get("nvr_dir_deleted_files_total", **d) == len(rows)
        assert m2.get("nvr_dir_used_bytes", **d) == 0
        assert not m2.has("nvr_stream_recording_lag_seconds", **s_labels)  # none left
        assert m2.get("nvr_http_requests_total", route="metrics", status="200") == 1
        assert m2.get("nvr_http_response_bytes_total", route="metrics") == \
            len(first_body) + len(refused[2]) + len(bad[2])
        # HEAD: the same headers, no body (and counted as a metrics request).
        status, headers, body = fetch(port, method="HEAD")
        assert (status, body) == (200, b"") and headers["Content-Type"].startswith("text/plain")
    finally:
        srv.stop()
        t.db.close()


def test_a_failed_flush_is_counted(tmp_path):
    t = make_testdb(tmp_path, clock.SimulatedClocks(START_NS))
    t.db.flush_hooks.append(lambda c: c.execute("select * from no_such_table"))
    with pytest.raises(Exception, match="no_such_table"):
        t.db.flush("test")
    t.db.flush_hooks.clear()
    t.db.flush("test")
    m = Scrape(t.db.metrics.render(t.db))
    assert m.get("nvr_flush_errors_total") == 1 and m.get("nvr_flush_seconds_count") == 1
    assert not m.has("nvr_http_open_connections")   # no server: no HTTP gauges
    t.db.close()


def test_a_failing_disk_leaves_out_free_space_not_the_page(tmp_path, monkeypatch):
    t = make_testdb(tmp_path, clock.SimulatedClocks(START_NS))
    fs = t.db.dirs[t.dir_id].dir.fs
    assert Scrape(t.db.metrics.render(t.db)).get("nvr_dir_free_bytes", dir=t.sample_dir) > 0

    def eio():
        raise OSError(errno.EIO, "injected")
    monkeypatch.setattr(fs, "statvfs", eio)
    m = Scrape(t.db.metrics.render(t.db))
    assert not m.has("nvr_dir_free_bytes", dir=t.sample_dir)
    assert m.get("nvr_dir_used_bytes", dir=t.sample_dir) == 0
    t.db.close()


def test_reconnects_and_end_kinds_of_several_runs(tmp_path):
    clocks = clock.SimulatedClocks(START_NS)
    t = make_testdb(tmp_path, clocks)
    clip = make_clip(str(tmp_path / "a.mp4"), frames=60, gop=30)
    record(t, clip, clocks, frames=60)
    record(t, clip, clocks, frames=60, end="no frame for 30 s")  # a plain StreamError
    st = t.db.metrics.stream(t.stream_id)
    assert (st.attempts, st.runs, st.frames) == (2, 2, 120)
    m = Scrape(t.db.metrics.render(t.db))
    labels = dict(camera=t.db.cameras[t.camera_id].short_name, type="main")
    assert m.get("nvr_stream_reconnects_total", **labels) == 1
    assert m.get("nvr_stream_run_ends_total", **labels, reason="bad_stream") == 2
    t.db.close()


# --- a stream recording from the test camera, in real time -------------------------------

CAMERA_STREAM = Stream("sub", "h264", 320, 240, fps=30, kbps=300, gop=15)


def test_scrape_while_recording_with_a_live_view(tmp_path_factory):
    from test_live import WsClient
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("metrics")
    cam = RtspCamera([CAMERA_STREAM], clip_seconds=4,
                     clip_dir=str(tmp_path_factory.getbasetemp() / "camera-clips"))
    clocks = clock.RealClocks()
    db_dir = str(tmp / "db")
    dbmod.init(db_dir, clocks)
    d = dbmod.Database.open_dir(db_dir, clocks)
    sample = str(tmp / "sample")
    dir_id = d.add_sample_file_dir(sample)
    cam_id = d.add_camera("cam", {"description": "", "username": "", "password": ""})
    sid = d.add_stream(cam_id, "sub", {"mode": "record", "url": cam.url("sub"),
                                       "rtspTransport": "tcp", "retainBytes": 1 << 30,
                                       "flushIfSec": 0}, dir_id)
    rec = nvr.Recorder(d, lambda s: stream.PyAvOpener(), shutdown=threading.Event(),
                       rotate_interval_sec=2)
    bind = nvr.Bind(("ipv4", "127.0.0.1:0"),
                    allow_unauthenticated_permissions=auth.Permissions(view_video=True))
    srv = web.Server(d, nvr.Config("unused", None, [bind]))
    rec.start()
    srv.start()
    labels = dict(camera="cam", type="sub")
    ws = None
    try:
        port = srv.addresses[0][1]
        deadline = time.monotonic() + 60
        while d.streams[sid].cum_recordings < 2:   # past the first (2-4 s) recording
            assert time.monotonic() < deadline, "the stream isn't being recorded"
            time.sleep(0.1)
        ws = WsClient(port, f"/api/cameras/{uuidlib.UUID(bytes=d.cameras[cam_id].uuid)}/sub/"
                            f"live.m4s")
        assert ws.status == 101
        ws.recv_message()                       # the server is streaming to it
        m, _ = scrape(port)
        assert m.get("nvr_http_open_websockets") == 1
        assert m.get("nvr_http_open_connections") == 2   # the WebSocket and this scrape
        assert m.get("nvr_stream_frames_per_second", **labels) == pytest.approx(30, rel=0.25)
        assert 0.3 < m.get("nvr_stream_bits_per_second", **labels) / 300_000 < 3
        assert m.get("nvr_stream_last_frame_age_seconds", **labels) < 1
        assert 0 <= m.get("nvr_stream_recording_lag_seconds", **labels) < 2
        assert m.get("nvr_stream_received_frames_total", **labels) > 60
        assert m.get("nvr_dir_fsync_seconds_count", dir=sample) >= 2
        assert m.get("nvr_dir_fsync_seconds_sum", dir=sample) > 0   # real fsyncs take time
        assert m.get("nvr_dir_free_bytes", dir=sample) > 0
        assert m.get("nvr_flush_seconds_count") >= 2
        ws.close()
        ws = None
        rec.stop()
        # Every frame received was written: the counter matches the recordings.
        rows = d.list_recordings_by_id(sid, 0, 1 << 31)
        quiet(srv)
        m, _ = scrape(port)
        assert m.get("nvr_stream_received_frames_total", **labels) == \
            sum(r.video_samples for r in rows)
        assert m.get("nvr_stream_received_bytes_total", **labels) == \
            sum(r.sample_file_bytes for r in rows)
        assert m.get("nvr_dir_fsync_seconds_count", dir=sample) == len(rows)
        assert m.get("nvr_stream_runs_total", **labels) == 1
        assert m.get("nvr_stream_run_ends_total", **labels, reason="shutdown") == 1
        assert m.get("nvr_http_requests_total", route="live", status="101") == 1
    finally:
        if ws is not None:
            ws.close()
        srv.stop()
        rec.stop()
        cam.close()
        d.close()


def test_route_classes_are_a_fixed_set():
    assert api.route_class("/index.html") == "static"
    assert api.route_class("/api/no") == "unknown"
    assert api.route_class("/api/metrics") == "metrics"
    names = {r.handler.__name__ for r in api.ROUTES}
    assert all(n.startswith("handle_") for n in names)
