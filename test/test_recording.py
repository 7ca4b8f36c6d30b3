"""Tests of recording.py: 90 kHz time, the video_index codec, frames of a range."""

import logging
import os
import random
import re
import zoneinfo

import pytest

import recording
from recording import CorruptIndex, Frame, encode_index, frames_in_range, iter_index

# Reference §3.2: frames as (duration, key, bytes).
EXAMPLE = [(10, 1, 1000), (9, 0, 10), (11, 0, 15), (10, 0, 12), (10, 1, 1050)]
EXAMPLE_INDEX = bytes.fromhex("29d00f0214080a02050164")


@pytest.fixture(autouse=True)
def forget_zone():
    yield
    recording.set_server_zone(None)


def enc(frames):
    """(duration, bytes, is_key) -> index."""
    return encode_index(frames)


# --- codec ----------------------------------------------------------------------------

def test_encode_example():
    e = recording.SampleIndexEncoder()
    for dur, key, size in EXAMPLE:
        e.add_sample(dur, size, bool(key))
    assert bytes(e.video_index) == EXAMPLE_INDEX
    assert (e.video_samples, e.video_sync_samples) == (5, 2)
    assert (e.media_duration_90k, e.sample_file_bytes) == (50, 2087)


def test_decode_example():
    assert list(iter_index(EXAMPLE_INDEX)) == [
        Frame(0, 0, 10, 0, 1000, True), Frame(1, 10, 9, 1000, 10, False),
        Frame(2, 19, 11, 1010, 15, False), Frame(3, 30, 10, 1025, 12, False),
        Frame(4, 40, 10, 1037, 1050, True)]
    assert recording.decode_summary(EXAMPLE_INDEX) == recording.IndexSummary(5, 2, 50, 2087, False)


@pytest.mark.parametrize("data,message", [
    (b"", "empty index"),
    (b"\x29\xd0", "frame 0: index truncated inside a varint at byte 1"),
    (b"\x29", "frame 0: index truncated inside a varint at byte 1"),
    (b"\x29\x02\x02", "frame 1: index truncated inside a varint at byte 3"),
    (b"\x81\x80\x80\x80\x80\x00\x02", "frame 0: varint at byte 0 is longer than 5 bytes"),
    (b"\x81\x80\x80\x80\x10\x02", "frame 0: varint at byte 0 exceeds 32 bits"),
    (b"\x03\x02", "frame 0: negative duration -1"),
    (b"\x29\x02\x2a\x02", "frame 1: negative duration -1"),
    (b"\x01\x02\x01\x02", "frame 0: zero duration, but only the last frame may have one "
                          "(2 index bytes follow)"),
    (b"\x05\x00", "frame 0: non-positive size 0 (key frame)"),
    (b"\x29\xd0\x0f\x02\xd1\x0f", "frame 1: non-positive size -1001 (non-key frame)"),
    (b"\x04\x02", "frame 0 is not a key frame"),
])
def test_corrupt_index(data, message):
    with pytest.raises(CorruptIndex, match="^" + re.escape(message)):
        list(iter_index(data))
    with pytest.raises(CorruptIndex):
        recording.decode_summary(data)


def test_trailing_zero_is_valid():
    index = enc([(3000, 10, True), (0, 5, False)])
    assert recording.decode_summary(index).trailing_zero
    assert [f.duration_90k for f in iter_index(index)] == [3000, 0]


@pytest.mark.parametrize("frames,error", [
    ([(-1, 10, True)], "duration -1"),
    ([(10, 0, True)], "size 0"),
    ([(10, -5, True)], "size -5"),
    ([(10, 2**31, True)], "size 2147483648"),
    ([(2**30, 1, True)], "duration 1073741824"),
    ([(10, 1, False)], "must be a key frame"),
    ([(10, 1, True), (0, 1, False), (10, 1, False)], "only the last frame"),
])
def test_encoder_rejects(frames, error):
    with pytest.raises(ValueError, match=error):
        enc(frames)


@pytest.mark.parametrize("seed", range(20))
def test_round_trip(seed):
    rnd = random.Random(seed)
    big = recording.MAX_FRAME_BYTES
    frames = []
    for i in range(rnd.randint(1, 300)):
        dur = rnd.choice([3000, 3003, 1, rnd.randint(1, 27_000_000), recording.MAX_FRAME_DURATION_90K])
        size = rnd.choice([1, big, big - rnd.randint(0, 1000), rnd.randint(1, 100_000)])
        frames.append((dur, size, i == 0 or rnd.random() < 0.1))
    if rnd.random() < 0.5:
        frames[-1] = (0, frames[-1][1], frames[-1][2])
    index = enc(frames)
    got = list(iter_index(index))
    assert [(f.duration_90k, f.bytes, f.is_key) for f in got] == frames
    pos = start = 0
    for n, f in enumerate(got):
        assert (f.i, f.pos, f.start_90k) == (n, pos, start)
        pos += f.bytes
        start += f.duration_90k
    s = recording.decode_summary(index)
    assert (s.video_samples, s.video_sync_samples, s.media_duration_90k, s.sample_file_bytes,
            s.trailing_zero) == (len(frames), sum(k for _, _, k in frames), start, pos,
                                 frames[-1][0] == 0)


# --- time ------------------------------------------------------------------------------

NY = zoneinfo.ZoneInfo("America/New_York")
T0 = 102261550050000  # 2006-01-02T15:04:05-07:00, from Moonfire's time.rs test


@pytest.mark.parametrize("text,zone,expected", [
    ("102261550050000", None, T0),
    ("-90001", None, -90001),
    ("0", None, 0),
    ("2006-01-02T15:04:05-07:00", None, T0),
    ("2006-01-02T15:04:05:00001-07:00", None, T0 + 1),
    ("2006-01-02T15:04:05:1-07:00", None, T0 + 1),          # ticks, not a fraction
    ("2006-01-02T15:04:05:89999-07:00", None, T0 + 89999),
    ("2006-01-02T22:04:05Z", None, T0),
    ("2006-01-03T03:34:05+05:30", None, T0),
    ("2006-01-02T15:04-07:00", None, T0 - 5 * 90000),
    ("2006-01-02Z", None, 102254400000000),
    ("2006-01-02", "UTC", 102254400000000),
    ("2006-01-02T15:04:05", "America/Los_Angeles", 102261874050000),  # implied -08:00
    ("2024-01-15T12:00", NY, 1705338000 * 90000),        # winter: EST, -05:00
    ("2024-07-15T12:00", NY, 1721059200 * 90000),        # summer: EDT, -04:00
    ("2024-11-03T01:30", NY, 1730611800 * 90000),        # ambiguous: fold=0, the EDT one
    ("2024-03-10T02:30", NY, 1710055800 * 90000),        # gap: read with EST = 03:30 EDT
    ("1969-12-31T23:59:59:89999Z", None, -1),
])
def test_parse_time(text, zone, expected):
    assert recording.parse_time(text, zone) == expected


@pytest.mark.parametrize("text,error", [
    ("2006-13-02", "invalid time '2006-13-02': month must be in 1..12"),
    ("2006-02-30", "day is out of range for month"),
    ("2006-01-02T24:00", "hour must be in 0..23"),
    ("2006-01-02T15:04:05:90000Z", "90000 ticks"),
    ("2006-01-02T15:04:05Zjunk", "unexpected 'junk' after the time"),
    ("2006-01-02 15:04", "unexpected ' 15:04' after the time"),
    ("2006-01-02T15:04:05:123456Z", "unexpected"),
    ("2006-01-02T15:04+05:60", "offset minutes 60"),
    ("2006-1-2", "invalid time '2006-1-2': expected an integer or YYYY-mm-dd"),
    ("", "invalid time ''"),
    ("yesterday", "invalid time 'yesterday'"),
    ("1.5", "invalid time '1.5'"),
])
def test_parse_time_invalid(text, error):
    with pytest.raises(ValueError, match=re.escape(error)):
        recording.parse_time(text, "UTC")


@pytest.mark.parametrize("t,zone,text", [
    (T0, "America/Los_Angeles", "2006-01-02T14:04:05:00000-08:00"),
    (T0 + 1, "UTC", "2006-01-02T22:04:05:00001+00:00"),
    (1721059200 * 90000 + 45000, NY, "2024-07-15T12:00:00:45000-04:00"),
    (1705338000 * 90000, NY, "2024-01-15T12:00:00:00000-05:00"),
    (T0, "Asia/Kolkata", "2006-01-03T03:34:05:00000+05:30"),
    (-1, "UTC", "1969-12-31T23:59:59:89999+00:00"),
    (-90000, NY, "1969-12-31T18:59:59:00000-05:00"),
])
def test_format_time(t, zone, text):
    assert recording.format_time(t, zone) == text
    assert recording.parse_time(text) == t  # the offset makes the zone irrelevant
    assert recording.format_time(recording.parse_time(text), zone) == text


@pytest.mark.parametrize("zone", ["UTC", "America/New_York", "Australia/Lord_Howe"])
def test_time_round_trip(zone):
    rnd = random.Random(zone)
    for _ in range(300):  # from 1906: older local mean time offsets have seconds
        t = rnd.randint(-2 * 10**9, 3 * 10**9) * 90000 + rnd.randint(0, 89999)
        assert recording.parse_time(recording.format_time(t, zone), zone) == t


def test_time_errors():
    with pytest.raises(ValueError, match="outside the years 1..9999"):
        recording.format_time(10**20, "UTC")
    with pytest.raises(ValueError, match="unknown time zone 'Nowhere/Special'"):
        recording.format_time(0, "Nowhere/Special")
    with pytest.raises(ValueError, match="unknown time zone"):
        recording.parse_time("2020-01-01", "Nowhere/Special")
    assert recording.parse_time("2020-01-01Z", "Nowhere/Special") == 1577836800 * 90000


def test_format_time_uses_server_zone():
    recording.set_server_zone("Asia/Tokyo")
    assert recording.format_time(0) == "1970-01-01T09:00:00:00000+09:00"
    assert recording.parse_time("1970-01-01T09:00") == 0


@pytest.mark.parametrize("d,text", [
    (0, "0 seconds"), (89999, "0 seconds"), (90000, "1 second"), (61 * 90000, "1 minute 1 second"),
    (7200 * 90000, "2 hours"), ((86400 + 3600) * 90000, "1 day 1 hour"),
    ((2 * 86400 + 2 * 3600 + 3 * 60 + 4) * 90000, "2 days 2 hours 3 minutes 4 seconds"),
    (-90000, "-1 second"),
])
def test_format_duration(d, text):
    assert recording.format_duration(d) == text


def test_to_90k_from_ns():
    assert recording.to_90k_from_ns(1_000_000_000) == 90000
    assert recording.to_90k_from_ns(11_111) == 0
    assert recording.to_90k_from_ns(11_112) == 1
    assert recording.to_90k_from_ns(-1) == -1


# --- server zone -----------------------------------------------------------------------

def test_server_zone_from_tz(monkeypatch):
    monkeypatch.setenv("TZ", "America/New_York")
    recording.set_server_zone(None)
    assert recording.server_zone_name() == "America/New_York"
    assert recording.server_zone() == NY
    monkeypatch.setenv("TZ", ":Europe/Berlin")
    assert recording.server_zone_name() == "America/New_York"  # cached
    recording.set_server_zone(None)
    assert recording.server_zone_name() == "Europe/Berlin"


@pytest.mark.parametrize("tz", ["Mars/Olympus_Mons", "EST5EDT,M3.2.0,M11.1.0", "/tmp/nowhere"])
def test_server_zone_bad_tz(monkeypatch, tz):
    monkeypatch.setenv("TZ", tz)
    recording.set_server_zone(None)
    with pytest.raises(ValueError, match="set TZ to an IANA name such as America/New_York"):
        recording.server_zone()


def test_server_zone_without_tz(monkeypatch):
    monkeypatch.delenv("TZ", raising=False)
    recording.set_server_zone(None)
    zoneinfo.ZoneInfo(recording.server_zone_name())  # whatever this box says, it is valid


def test_resolve_zone_name_files(tmp_path):
    etc = tmp_path / "etc"
    etc.mkdir()
    assert recording.resolve_zone_name({}, str(tmp_path)) == "UTC"
    (etc / "localtime").symlink_to(tmp_path / "usr/share/zoneinfo/posix/Europe/Paris")
    assert recording.resolve_zone_name({}, str(tmp_path)) == "Europe/Paris"
    (etc / "timezone").write_text("Bogus/Zone\n")
    assert recording.resolve_zone_name({}, str(tmp_path)) == "Europe/Paris"  # ignored
    (etc / "timezone").write_text("Asia/Tokyo\n")
    assert recording.resolve_zone_name({}, str(tmp_path)) == "Asia/Tokyo"
    assert recording.resolve_zone_name({"TZ": ""}, str(tmp_path)) == "Asia/Tokyo"
    assert recording.resolve_zone_name({"TZ": "UTC"}, str(tmp_path)) == "UTC"


def _system_zone_file(name):
    for d in zoneinfo.TZPATH:
        path = os.path.join(d, name)
        if os.path.isfile(path):
            with open(path, "rb") as f:
                return f.read()
    pytest.skip(f"no zoneinfo file for {name} on this box")


def _fake_root(tmp_path, files, tzdata_zi=None):
    """A fake / with an empty etc/ and usr/share/zoneinfo holding `files` (name ->
    bytes, or "-> target" for a symlink), and Debian's localtime link back to /etc."""
    (tmp_path / "etc").mkdir()
    zi = tmp_path / "usr/share/zoneinfo"
    for name, content in files.items():
        (zi / name).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            (zi / name).symlink_to(content.removeprefix("-> "))
        else:
            (zi / name).write_bytes(content)
    (zi / "localtime").symlink_to(tmp_path / "etc/localtime")
    if tzdata_zi is not None:
        (zi / "tzdata.zi").write_text(tzdata_zi)
    return str(tmp_path)


def test_resolve_zone_name_copied_localtime(tmp_path, caplog):
    # Docker's `-v /etc/localtime:/etc/localtime:ro`: a regular file, named by the zone
    # file with the same bytes; declared zones beat links, posix/ and posixrules.
    berlin, ny = _system_zone_file("Europe/Berlin"), _system_zone_file("America/New_York")
    not_berlin = berlin[:-2] + bytes([berlin[-2] ^ 1]) + berlin[-1:]  # same size
    root = _fake_root(tmp_path, {
        "Arctic/Longyearbyen": berlin, "posix/Europe/Berlin": berlin, "Europe/Berlin": berlin,
        "Europe/Paris": not_berlin, "posixrules": ny, "America/New_York": ny,
    }, tzdata_zi="# version test\nZ Europe/Berlin 0:53:28 - LMT 1893 Ap\n"
                 "L Europe/Berlin Arctic/Longyearbyen\n")
    (tmp_path / "etc/localtime").write_bytes(berlin)
    with caplog.at_level(logging.DEBUG, logger="recording"):
        assert recording.resolve_zone_name({}, root) == "Europe/Berlin"
    assert "time zone Europe/Berlin, from " + root + "/etc/localtime (the same bytes as " \
        + root + "/usr/share/zoneinfo/Europe/Berlin" in caplog.text
    (tmp_path / "etc/localtime").write_bytes(ny)  # not `posixrules` nor `localtime`
    assert recording.resolve_zone_name({}, root) == "America/New_York"
    (tmp_path / "usr/share/zoneinfo/tzdata.zi").unlink()  # then by name: Arctic < Europe
    (tmp_path / "etc/localtime").write_bytes(berlin)
    assert recording.resolve_zone_name({}, root) == "Arctic/Longyearbyen"


def test_resolve_zone_name_copied_localtime_prefers_files_over_links(tmp_path):
    # A tree without tzdata.zi or zone1970.tab: backward names that are symlinks lose.
    utc = _system_zone_file("Etc/UTC")
    root = _fake_root(tmp_path, {"Etc/UTC": utc, "Etc/UCT": "-> UTC", "UCT": "-> Etc/UTC",
                                 "Universal": "-> Etc/UTC"})
    (tmp_path / "etc/localtime").write_bytes(utc)
    assert recording.resolve_zone_name({}, root) == "Etc/UTC"


def test_resolve_zone_name_copy_matching_nothing_is_an_error(tmp_path):
    berlin = _system_zone_file("Europe/Berlin")
    root = _fake_root(tmp_path, {"Europe/Berlin": berlin, "Europe/Paris": berlin[:-1] + b"!"})
    for content in (berlin[:-1] + b"?", b"not a zone file\n"):
        (tmp_path / "etc/localtime").write_bytes(content)
        with pytest.raises(ValueError) as e:
            recording.resolve_zone_name({}, root)
        assert str(e.value).startswith(f"{root}/etc/localtime is not a link into a zoneinfo "
                                       f"directory and is a copy of no zone file under "
                                       f"{root}/usr/share/zoneinfo, ")
        assert str(e.value).endswith("; set TZ to the server's IANA time zone, such as "
                                     "TZ=America/New_York")
    # Whatever comes first still wins: TZ, then /etc/timezone.
    assert recording.resolve_zone_name({"TZ": "Asia/Tokyo"}, root) == "Asia/Tokyo"
    assert recording.resolve_zone_name({"TZ": ":Europe/Berlin"}, root) == "Europe/Berlin"
    (tmp_path / "etc/timezone").write_text("Australia/Lord_Howe\n")
    assert recording.resolve_zone_name({}, root) == "Australia/Lord_Howe"
    assert recording.resolve_zone_name({"TZ": "UTC"}, root) == "UTC"


def test_resolve_zone_name_symlink_is_named_by_its_target(tmp_path, caplog):
    # The link's path names the zone even though a copy of other bytes would match
    # another name; a link to a file outside any zoneinfo tree is matched by content.
    berlin = _system_zone_file("Europe/Berlin")
    root = _fake_root(tmp_path, {"Europe/Berlin": berlin, "Europe/Busingen": berlin},
                      tzdata_zi="Z Europe/Berlin 1 - CET\n")
    (tmp_path / "etc/localtime").symlink_to(tmp_path / "usr/share/zoneinfo/Europe/Busingen")
    with caplog.at_level(logging.DEBUG, logger="recording"):
        assert recording.resolve_zone_name({}, root) == "Europe/Busingen"
    assert "time zone Europe/Busingen, from " + root + "/etc/localtime (a link to " in caplog.text
    (tmp_path / "etc/localtime").unlink()
    (tmp_path / "etc/mytz").write_bytes(berlin)
    (tmp_path / "etc/localtime").symlink_to("mytz")
    assert recording.resolve_zone_name({}, root) == "Europe/Berlin"


# --- frames_in_range --------------------------------------------------------------------

# Durations 2, 4, 6, 8, 10 (starts 0, 2, 6, 12, 20; total 30); sizes 3, 6, 9, 12, 15;
# frames 0, 2, 4 are key frames (Moonfire's test_segment_clipping_with_half_sync).
HALF = enc([(2 * i, 3 * i, i % 2 == 1) for i in range(1, 6)])


def summary(r):
    return (r.first_frame, r.frames, r.key_frames, r.actual_start_90k, r.pos, r.bytes,
            r.media_duration_90k, r.last_duration_90k, [f.i for f in r])


@pytest.mark.parametrize("start,end,expected", [
    # whole recording
    (0, 30, (0, 5, 3, 0, 0, 45, 30, 10, [0, 1, 2, 3, 4])),
    # starts on key frame 2; frame 3 starts at 12 < 20 and ends it
    (6, 20, (2, 2, 1, 6, 9, 21, 14, 8, [2, 3])),
    # mid-GOP start (frame 3 is not key): begins at key frame 2
    (12, 20, (2, 2, 1, 6, 9, 21, 14, 8, [2, 3])),
    # end inside frame 3 truncates its duration to 15 - 12
    (6, 15, (2, 2, 1, 6, 9, 21, 9, 3, [2, 3])),
    # end inside frame 0
    (0, 1, (0, 1, 1, 0, 0, 3, 1, 1, [0])),
    # zero-length range on a key frame: that one frame, zero duration
    (6, 6, (2, 1, 1, 6, 9, 9, 0, 0, [2])),
    # zero-length range mid-GOP: from the key frame up to the point
    (14, 14, (2, 2, 1, 6, 9, 21, 8, 2, [2, 3])),
    # zero-length range at the very end
    (30, 30, (4, 1, 1, 20, 30, 15, 10, 10, [4])),
])
def test_frames_in_range(start, end, expected):
    r = frames_in_range(HALF, start, end)
    assert summary(r) == expected
    assert r.media_duration_90k == end - r.actual_start_90k
    assert list(r) == list(iter_index(HALF))[r.first_frame:r.first_frame + r.frames]
    assert not r.trailing_zero


def test_frames_in_range_all_key():
    # Moonfire's test_segment_clipping_with_all_sync: [2, 20) is frames 1..3.
    index = enc([(2 * i, 3 * i, True) for i in range(1, 6)])
    assert [f.duration_90k for f in frames_in_range(index, 2, 2 + 4 + 6 + 8)] == [4, 6, 8]


def test_frames_in_range_trailing_zero():
    index = enc([(1, 1, True), (1, 2, True), (0, 3, True)])  # Moonfire's clipping test
    r = frames_in_range(index, 1, 2)  # ends at the recording's end: trailing zero included
    assert [f.bytes for f in r] == [2, 3] and r.trailing_zero
    assert (r.media_duration_90k, r.last_duration_90k) == (1, 0)
    r = frames_in_range(index, 0, 2, is_whole=True)
    assert [f.bytes for f in r] == [1, 2, 3] and r.trailing_zero and r.bytes == 6
    r = frames_in_range(index, 0, 1)  # not the end: frame 1 starts at 1 and is excluded
    assert [f.bytes for f in r] == [1] and not r.trailing_zero
    r = frames_in_range(index, 2, 2)  # the trailing frame is a key frame at the start
    assert [f.bytes for f in r] == [3] and r.media_duration_90k == 0


def test_frames_in_range_single_frame():
    one = enc([(3000, 100, True)])
    assert summary(frames_in_range(one, 0, 0)) == (0, 1, 1, 0, 0, 100, 0, 0, [0])
    assert summary(frames_in_range(one, 1000, 2000)) == (0, 1, 1, 0, 0, 100, 2000, 2000, [0])
    zero = enc([(0, 100, True)])  # a run that ended after its first frame
    r = frames_in_range(zero, 0, 0, is_whole=True)
    assert [f.i for f in r] == [0] and r.trailing_zero and r.media_duration_90k == 0


def test_frames_in_range_begin_state():
    """A walk resumed at an encoder's state before a key frame (live view) finds what a
    walk from frame 0 finds, for every range starting at or after that key frame; a
    state past the range's start is ignored."""
    rng = random.Random(7)
    e = recording.SampleIndexEncoder()
    states = []  # (media start of the key frame, walk_state before it)
    for i in range(200):
        key = i % 13 == 0 or rng.random() < 0.05
        if key:
            states.append((e.media_duration_90k, e.walk_state()))
        e.add_sample(rng.choice([2990, 3000, 3010]) if i < 199 else 0,
                     rng.randrange(1, 70_000 if key else 9_000), key)
    index = bytes(e.video_index)
    total = e.media_duration_90k
    for _ in range(300):
        start = rng.randrange(total + 1)
        end = rng.randrange(start, total + 1)
        plain = frames_in_range(index, start, end)
        for key_start, state in states:
            r = frames_in_range(index, start, end, begin=state)
            if key_start <= start:
                assert r == plain and list(r) == list(plain)
            else:  # a state after the start: ignored
                assert r == plain
    frames = list(iter_index(index))
    for key_start, (i, off, start, pos, *_) in states:  # each state is its key frame's
        assert frames[i].is_key and (frames[i].start_90k, frames[i].pos) == (start, pos)
        assert start == key_start and 0 < off < len(index) or i == 0 == off


@pytest.mark.parametrize("start,end,kw,error", [
    (5, 4, {}, r"invalid media range \[5, 4\)"),
    (-1, 4, {}, r"invalid media range \[-1, 4\)"),
    (0, 31, {}, r"\[0, 31\) invalid for a recording of media duration 30"),
    (31, 31, {}, "media duration 30"),
    (0, 29, {"is_whole": True}, r"\[0, 29\) is not a whole recording"),
    (1, 30, {"is_whole": True}, "not a whole recording"),
])
def test_frames_in_range_errors(start, end, kw, error):
    with pytest.raises(ValueError, match=error):
        frames_in_range(HALF, start, end, **kw)


def test_frames_in_range_corrupt():
    with pytest.raises(CorruptIndex, match="empty index"):
        frames_in_range(b"", 0, 0)
    with pytest.raises(CorruptIndex, match="frame 0 is not a key frame"):
        frames_in_range(b"\x04\x02", 0, 0)


# --- decode_columns: mp4's table decoder ---------------------------------------------------

def columns_by_iter_index(index: bytes, n: int):
    frames = list(recording.iter_index(index))[:n]
    return ([f.duration_90k for f in frames], [f.bytes for f in frames],
            [f.i for f in frames if f.is_key])


def test_decode_columns_matches_iter_index():
    """decode_columns (mp4's fast decoder) reads the format as iter_index does,
    including 3- to 5-byte varints (big deltas), a trailing zero and a prefix."""
    rnd = random.Random(7)
    for case in range(300):
        n = rnd.randrange(1, 200)
        big = case % 3 == 0
        frames = []
        for i in range(n):
            dur = rnd.randrange(1, 2**29 if big else 6000)
            size = rnd.randrange(1, 2**31 - 1 if big and rnd.random() < 0.3 else 60000)
            frames.append((dur, size, i == 0 or rnd.random() < 0.1))
        if case % 4 == 0:
            frames[-1] = (0, *frames[-1][1:])       # a run's trailing zero
        index = recording.encode_index(frames)
        for k in (n, rnd.randrange(1, n + 1)):
            durations, sizes, keys = recording.decode_columns(index, k)
            assert (list(durations), list(sizes), list(keys)) == columns_by_iter_index(index, k)
    assert [list(c) for c in recording.decode_columns(recording.encode_index([(10, 1, True)]), 0)] == [
        [], [], []]


# Frame 0 is (duration 10, size 1, key): varints 29 02.
@pytest.mark.parametrize("index,frames,message", [
    (b"\x29\xd0\x0f\x02", 2, r"frame 1: index truncated at byte 4 of 4; expected 2 frames"),
    (b"\x28\x02", 1, "frame 0 is not a key frame"),
    (b"\x29\x00", 1, "frame 0: size 0"),
    (b"\x29\x02\x2a\x02", 2, "frame 1: negative duration -1"),
    (b"\x29\x02\x01\x03", 2, "frame 1: negative size -1"),
    (b"\x29\x02\x26\x02\x28\x02", 3, "frame 1: zero duration, but only the last frame"),
    (b"\x29\x02\x26\x02", 1, None),                 # frame 1 (duration 0) is its last
    (b"\x29\x02\x26\x02\x28\x02", 2, "frame 1: zero duration"),  # more follow
    (b"\x29\xff\xff\xff\xff\xff\x01", 1, "frame 0: varint at byte 1 is longer than 5 bytes"),
    (b"\x29\xff\xff\xff\xff\x1f", 1, "frame 0: varint at byte 1 exceeds 32 bits"),
])
def test_decode_columns_refuses_corrupt_indexes(index, frames, message):
    if message is None:
        assert [list(c) for c in recording.decode_columns(index, 2)] == [[10, 0], [1, 1], [0]]
        return
    with pytest.raises(recording.CorruptIndex, match=message):
        recording.decode_columns(index, frames)
