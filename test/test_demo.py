"""demo.py: the synthetic camera, in simulated time.

Frames are checked the way a player would see them: every one is decoded by
PyAV's (FFmpeg's) h264 decoder, an independent reader of what libx264 wrote,
and the clock drawn into the picture is read back by thresholding the decoded
luma and comparing it with the font's pixels (`demo.text_mask`).
"""

import itertools
import os
import threading

import av
import pytest

import clock
import codec
import demo
import dir as dirmod
import recording
import stream
from conftest import START_NS, make_testdb  # START_NS: 2026-11-29T12:00:00Z

SEC_NS = clock.NANOS_PER_SEC


@pytest.fixture
def zone():
    """Tokyo (UTC+9, no DST): 12:00:00Z is drawn as 21:00:00."""
    recording.set_server_zone("Asia/Tokyo")
    yield
    recording.set_server_zone(None)


def annexb(length_prefixed: bytes) -> bytes:
    return b"".join(b"\x00\x00\x00\x01" + nal for nal in codec.nal_units(length_prefixed))


def decode(frames) -> list[av.VideoFrame]:
    """Decodes each frame on its own (as Annex B packets), the stream's first key
    frame supplying the SPS/PPS in band."""
    dec = av.CodecContext.create("h264", "r")
    out = []
    for f in frames:
        out += dec.decode(av.Packet(annexb(f.data)))
    out += dec.decode(None)
    return out


def luma(frame: av.VideoFrame) -> list[bytes]:
    """The decoded Y plane as rows of `width` bytes (planes may pad their lines)."""
    plane = frame.planes[0]
    buf = bytes(plane)
    return [buf[r * plane.line_size:r * plane.line_size + frame.width]
            for r in range(frame.height)]


def mismatch(rows: list[bytes], text: str, scale: int, at: tuple[int, int]) -> float:
    """Fraction of the pixels of `text`'s box that disagree with the font once the
    decoded luma is thresholded halfway between the box's black and the text's white."""
    left, top = at
    mask = demo.text_mask(text, scale)
    bad = total = 0
    for r, mrow in enumerate(mask):
        lit = [b > 125 for b in rows[top + r][left:left + len(mrow)]]
        bad += sum(a != bool(m) for a, m in zip(lit, mrow))
        total += len(mrow)
    return bad / total


def take(src, n):
    return list(itertools.islice(src.frames(), n))


def test_frames_timing_keys_parameters_and_decoding(zone):
    clocks = clock.SimulatedClocks(START_NS)
    src = demo.DemoOpener(clocks, shutdown=threading.Event()).open("demo:320x240@15")
    assert (src.parameters.codec, src.parameters.width, src.parameters.height) == \
        ("h264", 320, 240)
    frames = take(src, 45)

    # pts advance by exactly 90000/15; key frames at 0, 15, 30 (gop_sec=1).
    assert [f.pts_90k for f in frames] == [i * 6000 for i in range(45)]
    assert [i for i, f in enumerate(frames) if f.is_key] == [0, 15, 30]
    # Every key frame carries the parameters in band, the same as `parameters`.
    for f in frames:
        if f.is_key:
            assert codec.parameters_from_frame("h264", f.data) == src.parameters
        assert f.parameters is None  # no change of parameters within the session
    # Pacing: frame i is captured i/15 s after the open (frame 0 in it) and delivered
    # when frame i+1 is captured: taking 45 frames took their duration, 3 s.
    assert abs(clocks.monotonic() - 3 * SEC_NS) <= 1

    decoded = decode(frames)
    assert len(decoded) == 45
    assert {(d.width, d.height, d.format.name) for d in decoded} == {(320, 240, "yuv420p")}
    # The pattern moves: consecutive frames differ, and so do frames a second apart.
    pictures = [b"".join(luma(d)) for d in decoded]
    assert all(a != b for a, b in zip(pictures, pictures[1:]))
    src.close()


def test_clock_and_counter_are_drawn(zone):
    # 0.5 s before 21:00:01 Tokyo time: frames 0..7 (captured at +0.5 s + i/15 s)
    # show :00, frames 8.. show :01.
    clocks = clock.SimulatedClocks(START_NS + SEC_NS // 2)
    src = demo.DemoOpener(clocks).open("demo:")
    lay = src.layout
    assert (src.parameters.width, src.parameters.height, lay.scale) == (640, 360, 8)
    decoded = decode(take(src, 9))
    first, last = luma(decoded[0]), luma(decoded[8])

    # The clock's region isn't uniform: it has text-white and box-black pixels.
    region = b"".join(r[lay.clock_at[0]:lay.clock_at[0] + demo.text_width("00:00:00", 8)]
                      for r in first[lay.clock_at[1]:lay.clock_at[1] + 7 * 8])
    assert min(region) < 40 and max(region) > 200
    # It reads as the frame's wall time in the server zone, and it changes with it.
    assert mismatch(first, "21:00:00", lay.scale, lay.clock_at) < 0.01
    assert mismatch(last, "21:00:01", lay.scale, lay.clock_at) < 0.01
    assert mismatch(last, "21:00:00", lay.scale, lay.clock_at) > 0.03
    assert mismatch(first, "2026-11-29", lay.small_scale, lay.date_at) < 0.01
    # The frame number.
    assert mismatch(first, "#0", lay.small_scale, lay.counter_at) < 0.01
    assert mismatch(last, "#8", lay.small_scale, lay.counter_at) < 0.01
    assert mismatch(last, "#0", lay.small_scale, lay.counter_at) > 0.03


@pytest.mark.parametrize("url, message", [
    ("demo:abc", r"'demo:abc' is not a demo URL; use demo:\[WIDTHxHEIGHT\]\[@FPS\]"),
    ("demo:640x", r"'demo:640x' is not a demo URL; use demo:"),
    ("demo:640x360@", r"is not a demo URL"),
    ("rtsp://camera/demo:", r"is not a demo URL"),
    ("demo:641x360", r"demo:641x360: size 641x360 is not allowed; width and height must be "
                     r"even"),
    ("demo:32x360", r"size 32x360 is not allowed"),
    ("demo:640x8000", r"height 48\.\.4096"),
    ("demo:640x360@7", r"demo:640x360@7: rate 7 frames/s is not allowed; use 1\.\.60 "
                       r"frames/s dividing 90000"),
    ("demo:@0", r"rate 0 frames/s"),
    ("demo:@120", r"rate 120 frames/s"),
])
def test_malformed_url(url, message):
    opener = demo.DemoOpener(clock.SimulatedClocks(START_NS))
    with pytest.raises(stream.StreamError, match=message):
        opener.open(url)


@pytest.mark.parametrize("url, mode", [
    ("demo:", (640, 360, 15)),
    ("demo:@30", (640, 360, 30)),
    ("demo:1280x720", (1280, 720, 15)),
    ("demo:320x180@5", (320, 180, 5)),
])
def test_url_parts_default_to_the_opener(url, mode):
    assert demo.parse_url(url, demo.Mode(640, 360, 15)) == demo.Mode(*mode)


def test_constructor_checks_its_defaults():
    with pytest.raises(stream.StreamError, match="demo opener: rate 7 frames/s"):
        demo.DemoOpener(clock.SimulatedClocks(START_NS), fps=7)


def test_gop_and_rate_options(zone):
    clocks = clock.SimulatedClocks(START_NS)
    src = demo.DemoOpener(clocks, gop_sec=0.5, bitrate=200_000).open("demo:160x120@10")
    frames = take(src, 12)
    assert [f.pts_90k for f in frames] == [i * 9000 for i in range(12)]
    assert [i for i, f in enumerate(frames) if f.is_key] == [0, 5, 10]
    assert abs(clocks.monotonic() - 12 * SEC_NS // 10) <= 1
    assert len(decode(frames)) == 12


def test_shutdown_ends_frames_promptly(zone):
    clocks = clock.SimulatedClocks(START_NS)
    shutdown = threading.Event()
    src = demo.DemoOpener(clocks, shutdown=shutdown).open("demo:160x120@15")
    it = src.frames()
    next(it), next(it)
    shutdown.set()
    before = clocks.monotonic()
    assert list(it) == []
    assert clocks.monotonic() == before  # it didn't sleep until the next frame


def test_falling_behind_ends_the_session(zone):
    clocks = clock.SimulatedClocks(START_NS)
    src = demo.DemoOpener(clocks).open("demo:160x120@15")
    it = src.frames()
    next(it), next(it)
    clocks.advance(SEC_NS // 2)  # a small stall: caught up without sleeping
    start = clocks.monotonic()
    for _ in range(7):
        next(it)
    assert clocks.monotonic() == start
    clocks.advance(2 * SEC_NS)
    with pytest.raises(stream.StreamError, match=r"\d\.\d s behind real time \(was the "
                                                 r"machine suspended or overloaded\?\)"):
        next(it)


@pytest.mark.parametrize("width, height", [(64, 48), (66, 50), (650, 362), (1920, 1080),
                                           (4096, 48), (64, 4096)])
def test_painting_keeps_the_planes_intact(zone, width, height):
    # Padded lines, as an encoder's frame may have; a huge frame number (clipped).
    strides = (width + 32, width // 2 + 16, width // 2 + 16)
    p = demo.Painter(width, height, 15, strides)
    for index in (0, 1, 10**12):
        y, u, v = p.paint(index, START_NS)
        assert (len(y), len(u), len(v)) == (strides[0] * height, strides[1] * height // 2,
                                            strides[2] * height // 2)
    lay = p.layout
    left, top, right, bottom = lay.box
    assert 0 <= left < right <= width and 0 <= top < bottom <= height


def test_recording_through_the_streamer(tmp_path, zone):
    """The demo camera goes through the same streamer and writer as a real one; the
    sample files it leaves decode, and its clock agrees with the recordings' times."""
    clocks = clock.SimulatedClocks(START_NS)
    t = make_testdb(tmp_path, clocks, zone="Asia/Tokyo")
    n = 150  # 10 s at 15 frames/s

    class Stop(stream.Opener):  # ends the session after n frames, as a camera might
        def open(self, url, **kw):
            src = demo.DemoOpener(clocks).open("demo:320x180@15")
            frames = src.frames

            def limited():
                yield from itertools.islice(frames(), n)
                raise stream.StreamError("enough")
            src.frames = limited
            return src

    syncer = dirmod.Syncer(t.db, t.dir_id)
    s = stream.Streamer(t.db, t.stream_id, syncer, Stop(), shutdown=threading.Event(),
                        rotate_interval_sec=3)
    with pytest.raises(stream.StreamError, match="enough"):
        s.run_once()
    while not syncer.queue.empty():
        assert syncer.iter()
    t.db.flush("test")
    rows = t.db.list_recordings_by_id(t.stream_id, 0, 1 << 31)
    assert len(rows) >= 2 and sum(r.video_samples for r in rows) == n
    assert sum(r.video_sync_samples for r in rows) == n // 15
    assert rows[-1].end_reason == "enough"
    vse = t.db.video_sample_entries[rows[0].video_sample_entry_id]
    assert (vse.width, vse.height) == (320, 180)
    # The demo's pts and the streamer's local times come from the same monotonic
    # clock: recordings start when the session opened and wall = media duration.
    assert rows[0].start_time_90k == recording.to_90k_from_ns(START_NS)
    assert all(r.wall_duration_90k == r.media_duration_90k for r in rows)
    # Every sample of the first file decodes.
    r = rows[0]
    with open(os.path.join(t.sample_dir, dirmod.name_for(r.composite_id)), "rb") as f:
        data = f.read()
    samples, pos = [], 0
    for entry in recording.iter_index(t.db.get_video_index(r.composite_id)):
        samples.append(stream.Frame(0, entry.is_key, data[pos:pos + entry.bytes]))
        pos += entry.bytes
    assert pos == len(data) == r.sample_file_bytes
    assert len(decode(samples)) == r.video_samples
    t.db.close()
