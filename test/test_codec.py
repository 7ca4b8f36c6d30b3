"""Tests of codec.py: NAL framing, parameter sets, sample entries.

The independent readers are FFmpeg (through PyAV: its mp4 muxer writes its own
avc1/hvc1 entry, its decoder reports sizes, aspect ratios and profiles) and ffprobe
(Debian's FFmpeg build, run on the same mp4 files). Streams are made here with libx264
and libx265; a few hand-made parameter sets (`BitWriter`) reach syntax that those
encoders never emit, and Moonfire's and retina's test vectors pin known answers.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from fractions import Fraction

import av
import av.logging
try:
    import av.bitstream
except ImportError:  # PyAV 10 (Debian 12) has no bitstream filters: cbs_fields skips
    pass
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import codec  # noqa: E402
from codec import CodecError  # noqa: E402

X265_QUIET = "log-level=none"


# --- Making streams ---------------------------------------------------------------------

def encode(encoder: str, fmt: str, width: int, height: int, *, pix_fmt: str = "yuv420p",
           sar: Fraction | None = None, options: dict | None = None, tag: str | None = None,
           frames: int = 3):
    """Encodes a few flat frames into container `fmt`.

    Returns (file bytes, each packet's bytes as the encoder made them, extradata)."""
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as out:
        stream = out.add_stream(encoder, rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if sar is not None:
            stream.codec_context.sample_aspect_ratio = sar
        if options:
            stream.codec_context.options = options
        if tag:
            stream.codec_tag = tag
        packets = []
        for i in range(frames + 1):
            frame = None
            if i < frames:
                frame = av.VideoFrame(width, height, "yuv420p")
                for plane in frame.planes:
                    plane.update(bytes([16 + 40 * i]) * plane.buffer_size)
            for packet in stream.encode(frame):
                packets.append(bytes(packet))
                out.mux(packet)
        extradata = bytes(stream.codec_context.extradata or b"")
    return buf.getvalue(), packets, extradata


def x264(fmt, width, height, pix_fmt="yuv420p", sar=None, options=None):
    return encode("libx264", fmt, width, height, pix_fmt=pix_fmt, sar=sar, options=options)


def x265(fmt, width, height, pix_fmt="yuv420p", sar=None, params=""):
    options = {"x265-params": ":".join(p for p in (X265_QUIET, params) if p)}
    return encode("libx265", fmt, width, height, pix_fmt=pix_fmt, sar=sar, options=options,
                  tag="hvc1" if fmt == "mp4" else None)


def pyav_view(data: bytes, fmt: str):
    """What FFmpeg's demuxer/decoder reports for a raw stream: (codec context, frame)."""
    container = av.open(io.BytesIO(data), format=fmt)
    stream = container.streams.video[0]
    frame = next(container.decode(stream))
    container.close()
    return stream.codec_context, frame


def ffprobe(tmp_path, mp4: bytes) -> dict:
    if shutil.which("ffprobe") is None:
        pytest.skip("ffprobe is not installed (test/run.py installs ffmpeg)")
    path = tmp_path / "probe.mp4"
    path.write_bytes(mp4)
    out = subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-of", "json", str(path)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)["streams"][0]


@functools.cache
def carrier(codec_name: str) -> bytes:
    """A tiny raw stream of the codec: something to open a bitstream filter or a remux on."""
    if codec_name == "h264":
        return x264("h264", 64, 48)[0]
    return x265("hevc", 64, 48)[0]


def cbs_fields(codec_name: str, nals: list[bytes]) -> dict[str, list[int]]:
    """Every syntax element FFmpeg's CBS reads from `nals`, by name.

    CBS (the trace_headers bitstream filter) is a third reader, written from the specs'
    syntax tables; it fails on a parameter set that doesn't parse exactly."""
    if not hasattr(av, "bitstream"):
        pytest.skip("PyAV < 11 has no av.bitstream to run CBS (trace_headers) with")
    fmt = "h264" if codec_name == "h264" else "hevc"
    with av.open(io.BytesIO(carrier(codec_name)), format=fmt) as container:
        bsf = av.bitstream.BitStreamFilterContext("trace_headers", container.streams.video[0])
        level = av.logging.get_level()
        av.logging.set_level(av.logging.INFO)
        try:
            with av.logging.Capture() as logs:
                bsf.filter(av.Packet(b"".join(b"\x00\x00\x00\x01" + n for n in nals)))
        finally:
            av.logging.set_level(level)
    fields: dict[str, list[int]] = {}
    for _, _, message in logs:  # "<bit position> <name>[<index>] <bits> = <value>"
        m = re.fullmatch(r"\s*\d+\s+(\w+)\S*\s+[01]+ = (-?\d+)\s*", message)
        if m:
            fields.setdefault(m.group(1), []).append(int(m.group(2)))
    return fields


def ffmpeg_config_record(codec_name: str, nals: list[bytes]) -> bytes:
    """The avcC/hvcC FFmpeg's mp4 muxer writes for these parameter sets (given as the
    extradata of a remuxed stream; the muxer doesn't look at the samples)."""
    fmt = "h264" if codec_name == "h264" else "hevc"
    buf = io.BytesIO()
    with av.open(io.BytesIO(carrier(codec_name)), format=fmt) as inp, \
            av.open(buf, "w", format="mp4") as out:
        source = inp.streams.video[0]
        stream = out.add_stream_from_template(source)
        if codec_name == "h265":
            stream.codec_tag = "hvc1"
        stream.codec_context.extradata = b"".join(b"\x00\x00\x00\x01" + n for n in nals)
        for i, packet in enumerate(p for p in inp.demux(source) if p.size):
            packet.stream, packet.time_base, packet.pts, packet.dts = stream, Fraction(1, 30), i, i
            out.mux(packet)
    return entry_children(ffmpeg_sample_entry(buf.getvalue()))["avcC" if fmt == "h264" else "hvcC"]


# --- Reading mp4 boxes (ISO/IEC 14496-12 §4.2) --------------------------------------------

def boxes(data: bytes, pos: int = 0, end: int | None = None):
    """(type, payload) of each box in data[pos:end]."""
    end = len(data) if end is None else end
    while pos < end:
        size, box_type = struct.unpack_from(">I4s", data, pos)
        assert 8 <= size <= end - pos, f"bad box size {size} at {pos}"
        yield box_type.decode("ascii"), data[pos + 8:pos + size]
        pos += size


def child(data: bytes, box_type: str) -> bytes:
    found = [payload for t, payload in boxes(data) if t == box_type]
    assert len(found) == 1, f"{len(found)} {box_type} boxes"
    return found[0]


def ffmpeg_sample_entry(mp4: bytes) -> bytes:
    """The first sample entry of the first track's stsd (§8.5.2), box header included."""
    data = mp4
    for box_type in ("moov", "trak", "mdia", "minf", "stbl", "stsd"):
        data = child(data, box_type)
    version_flags, count = struct.unpack_from(">II", data)
    assert (version_flags, count) == (0, 1)
    size = struct.unpack_from(">I", data, 8)[0]
    return data[8:8 + size]


def entry_children(entry: bytes) -> dict[str, bytes]:
    return dict(boxes(entry, 86))


def hvcc_arrays(hvcc: bytes) -> list[tuple[int, list[bytes]]]:
    """(first byte: completeness + type, NAL units) of each hvcC array (§8.3.3.1.2)."""
    arrays, pos = [], 23
    for _ in range(hvcc[22]):
        first, count = hvcc[pos], int.from_bytes(hvcc[pos + 1:pos + 3], "big")
        pos += 3
        nals = []
        for _ in range(count):
            length = int.from_bytes(hvcc[pos:pos + 2], "big")
            nals.append(hvcc[pos + 2:pos + 2 + length])
            pos += 2 + length
        arrays.append((first, nals))
    assert pos == len(hvcc)
    return arrays


def without_sei_arrays(hvcc: bytes) -> bytes:
    """An hvcC record with its SEI arrays (NAL types 39, 40) removed."""
    kept = [(first, nals) for first, nals in hvcc_arrays(hvcc) if first & 0x3F not in (39, 40)]
    return hvcc[:22] + bytes([len(kept)]) + b"".join(
        bytes([first]) + len(nals).to_bytes(2, "big")
        + b"".join(len(n).to_bytes(2, "big") + n for n in nals) for first, nals in kept)


# --- H.264 against FFmpeg -----------------------------------------------------------------

H264_PROFILES = {"Baseline": 66, "Constrained Baseline": 66, "Main": 77, "High": 100,
                 "High 10": 110, "High 4:2:2": 122, "High 4:4:4 Predictive": 244}

H264_CASES = [
    # id, width, height, pix_fmt, sar, encoder options
    ("baseline", 64, 48, "yuv420p", None, {"profile": "baseline"}),
    ("main-320x240-default-pasp", 320, 240, "yuv420p", None, {"profile": "main"}),
    ("high-642x362-cropped-sar-40:33", 642, 362, "yuv420p", Fraction(40, 33), None),
    ("high-interlaced", 640, 360, "yuv420p", Fraction(4, 3), {"x264-params": "interlaced=1"}),
    ("high-scaling-lists-extended-sar", 64, 48, "yuv420p", Fraction(7, 5),
     {"x264-params": "cqm=jvt"}),
    ("high10", 64, 48, "yuv420p10le", None, None),
    ("high422-cropped", 642, 362, "yuv422p", None, None),
    ("high444-cropped", 66, 50, "yuv444p", Fraction(10, 11), None),
    ("high444-scaling-lists", 64, 48, "yuv444p", None, {"x264-params": "cqm=jvt"}),
    ("monochrome-cropped", 66, 50, "gray", None, None),
]


@pytest.mark.parametrize("width, height, pix_fmt, sar, options",
                         [c[1:] for c in H264_CASES], ids=[c[0] for c in H264_CASES])
def test_h264_matches_ffmpeg(tmp_path, width, height, pix_fmt, sar, options):
    raw = x264("h264", width, height, pix_fmt, sar, options)[0]
    p = codec.parameters_from_frame("h264", raw)
    mp4, packets, extradata = x264("mp4", width, height, pix_fmt, sar, options)
    theirs = ffmpeg_sample_entry(mp4)

    # FFmpeg's avcC (ff_isom_write_avcc) is byte for byte ours, and the entry's fixed
    # fields agree; FFmpeg also writes btrt (and fiel for interlaced), which we don't.
    assert entry_children(theirs)["avcC"] == p.decoder_config
    assert theirs[4:86] == p.sample_entry[4:86]
    ours = entry_children(p.sample_entry)
    assert struct.unpack(">I", p.sample_entry[:4])[0] == len(p.sample_entry)
    assert list(ours) == (["avcC"] if p.pasp_h_spacing == p.pasp_v_spacing else ["avcC", "pasp"])
    if sar is not None:
        assert entry_children(theirs)["pasp"] == ours["pasp"]
        assert (p.pasp_h_spacing, p.pasp_v_spacing) == (sar.numerator, sar.denominator)
    else:
        expected = codec.default_pixel_aspect_ratio(width, height)
        assert (p.pasp_h_spacing, p.pasp_v_spacing) == expected

    # The same parameters from the extradata: Annex B from the encoder, avcC from FFmpeg.
    assert extradata.startswith(b"\x00\x00\x00\x01")
    assert codec.parameters_from_extradata("h264", extradata) == p
    assert codec.parameters_from_extradata("h264", p.decoder_config) == p

    # FFmpeg's decoder: size after cropping, aspect ratio, profile, frame rate.
    cc, frame = pyav_view(raw, "h264")
    assert (p.width, p.height) == (cc.width, cc.height) == (frame.width, frame.height) \
        == (width, height)
    assert cc.sample_aspect_ratio == sar
    assert p.profile_idc == H264_PROFILES[cc.profile]
    assert p.frame_rate == cc.framerate == 30
    sps = p.parameter_sets[0]
    assert p.rfc6381_codec == "avc1." + sps[1:4].hex()

    # ffprobe reads the mp4 FFmpeg wrote.
    probe = ffprobe(tmp_path, mp4)
    assert (probe["width"], probe["height"]) == (p.width, p.height)
    assert probe["level"] == p.level_idc
    assert H264_PROFILES[probe["profile"]] == p.profile_idc
    if sar is not None:
        assert probe["sample_aspect_ratio"] == f"{sar.numerator}:{sar.denominator}"

    # The muxer's samples are our length-prefixed frames.
    assert child(mp4, "mdat") == b"".join(codec.to_length_prefixed(pkt) for pkt in packets)


# --- H.265 against FFmpeg -----------------------------------------------------------------

H265_CASES = [
    # id, width, height, pix_fmt, sar, x265 params, RFC 6381 string (ISO/IEC 14496-15 E.3)
    ("main-642x362-cropped-sar-40:33", 642, 362, "yuv420p", Fraction(40, 33), "",
     "hvc1.1.6.L63.90"),
    ("main10", 64, 48, "yuv420p10le", None, "", "hvc1.2.4.L30.90"),
    ("rext-444", 64, 48, "yuv444p", None, "", "hvc1.4.10.L30.9E.08"),
    ("rext-422-10bit-cropped", 66, 50, "yuv422p10le", Fraction(12, 11), "",
     "hvc1.4.10.L30.9D.08"),
    ("temporal-layers", 64, 48, "yuv420p", None, "temporal-layers=2", "hvc1.1.6.L30.90"),
    ("hrd-scaling-lists-wavefronts", 64, 48, "yuv420p", None,
     "hrd=1:vbv-bufsize=500:vbv-maxrate=500:scaling-list=default:wpp=1", "hvc1.1.6.L60.90"),
    ("352x240-default-pasp", 352, 240, "yuv420p", None, "", "hvc1.1.6.L60.90"),
]

H265_PROFILES = {"Main": 1, "Main 10": 2, "Rext": 4}


@pytest.mark.parametrize("width, height, pix_fmt, sar, params, rfc6381",
                         [c[1:] for c in H265_CASES], ids=[c[0] for c in H265_CASES])
def test_h265_matches_ffmpeg(tmp_path, width, height, pix_fmt, sar, params, rfc6381):
    raw = x265("hevc", width, height, pix_fmt, sar, params)[0]
    p = codec.parameters_from_frame("h265", raw)
    mp4, packets, extradata = x265("mp4", width, height, pix_fmt, sar, params)
    theirs = ffmpeg_sample_entry(mp4)
    hvcc = entry_children(theirs)["hvcC"]

    # Field by field, FFmpeg's hvcC (ff_isom_write_hvcc) equals ours: the 22 bytes of
    # profile/tier/level, flags, min_spatial_segmentation_idc, parallelismType, chroma
    # format, bit depths, avgFrameRate = constantFrameRate = 0, numTemporalLayers,
    # temporalIdNested and lengthSizeMinusOne; then the VPS, SPS and PPS arrays, complete.
    # The one difference: FFmpeg also copies x265's SEI (a 2 kB "x265 options" user
    # data message, array_completeness 0) from the extradata. We keep parameter sets
    # only: a camera's SDP has no SEI and the sample entry should not change with one.
    assert hvcc[:22] == p.decoder_config[:22]
    ff_arrays = hvcc_arrays(hvcc)
    assert [first for first, _ in ff_arrays if first & 0x3F not in (32, 33, 34)] == [39]
    assert without_sei_arrays(hvcc) == p.decoder_config
    assert hvcc_arrays(p.decoder_config) == [(0xA0, [p.parameter_sets[0]]),
                                             (0xA1, [p.parameter_sets[1]]),
                                             (0xA2, [p.parameter_sets[2]])]
    assert theirs[4:86] == p.sample_entry[4:86]
    expected_pasp = (sar.numerator, sar.denominator) if sar else \
        codec.default_pixel_aspect_ratio(width, height)
    assert (p.pasp_h_spacing, p.pasp_v_spacing) == expected_pasp
    if sar is not None:
        assert entry_children(theirs)["pasp"] == entry_children(p.sample_entry)["pasp"]
    assert ("pasp" in entry_children(p.sample_entry)) == (expected_pasp != (1, 1))

    assert codec.parameters_from_extradata("hevc", extradata) == p
    assert codec.parameters_from_extradata("h265", hvcc) == p

    cc, frame = pyav_view(raw, "hevc")
    assert (p.width, p.height) == (cc.width, cc.height) == (frame.width, frame.height) \
        == (width, height)
    assert cc.sample_aspect_ratio == sar
    assert p.profile_idc == H265_PROFILES[cc.profile]
    assert p.frame_rate == cc.framerate == 30
    # The level is x265's choice, which changes between versions (for 64x48, Debian 12's
    # 3.5 picks 2, L60; newer ones 1, L30); FFmpeg's hvcC (checked above) pins ours.
    assert p.rfc6381_codec == re.sub(r"\.L\d+", f".L{hvcc[12]}", rfc6381)

    probe = ffprobe(tmp_path, mp4)
    assert (probe["width"], probe["height"]) == (p.width, p.height)
    assert probe["level"] == p.level_idc
    assert H265_PROFILES[probe["profile"]] == p.profile_idc
    assert probe["codec_tag_string"] == "hvc1"
    if sar is not None:
        assert probe["sample_aspect_ratio"] == f"{sar.numerator}:{sar.denominator}"

    # With an hvc1 tag FFmpeg drops in-band parameter sets from samples; x265 (with a
    # global header) sends none, so the samples are exactly our conversion.
    assert child(mp4, "mdat") == b"".join(codec.to_length_prefixed(pkt) for pkt in packets)


def test_h265_codec_string_known_answer():
    # ISO/IEC 14496-15 E.3's example, hvc1.1.6.L93.B0: Main profile (compatible with
    # Main and Main 10: flags 1 and 2, reversed 0x6), Main tier, level 3.1, progressive
    # non-packed frames. x265's parameter sets, with the constraint flags (90 -> b0) and
    # level (30 -> 93) of their general profile_tier_level patched (the 00 00 03 are
    # emulation prevention).
    x = codec.parameters_from_frame("h265", x265("hevc", 64, 48)[0])
    vps, sps, pps = x.parameter_sets
    # x265's level for 64x48 is 30 (3.5, Debian 12's x265, says 60).
    ptl_tail = bytes.fromhex("90 0000 03 0000 03 00") + bytes([x.level_idc])
    assert vps.count(ptl_tail) == sps.count(ptl_tail) == 1
    patched = bytes.fromhex("b0 0000 03 0000 03 00 5d")
    vps, sps = vps.replace(ptl_tail, patched), sps.replace(ptl_tail, patched)
    p = codec.h265_parameters(vps, sps, pps)
    assert p.rfc6381_codec == "hvc1.1.6.L93.B0"
    assert p.level_idc == 93

    # Cameras' parameter sets from retina's tests (sprop-vps/sps/pps of their SDPs).
    tenda = [base64.b64decode(s) for s in (
        "QAEMAf//AWAAAAMAkAAAAwAAAwA/LAwAAgAAAwAoAAIAAgACgA==",
        "QgEBAWAAAAMAkAAAAwAAAwA/oAUCAXFlLkkyS7I=", "RAHA8vAzJA==")]
    p = codec.h265_parameters(*tenda)
    assert (p.width, p.height, p.rfc6381_codec) == (640, 368, "hvc1.1.6.L63.90")
    # All constraint flags zero: every constraint byte is dropped (Chromium accepts the
    # four-element form too).
    xiaomi = [base64.b64decode(s) for s in (
        "QAEMAf//AWAAAAMAAAMAAAMAAAMAuqwJ",
        "QgEBAWAAAAMAAAMAAAMAAAMAuqABICAFEf5a7kSIi/Lc1AQEBAI=", "RAHA8oSJAzJA")]
    p = codec.h265_parameters(*xiaomi)
    assert (p.width, p.height, p.rfc6381_codec) == (2304, 1296, "hvc1.1.6.L186")


# --- Known answers from Moonfire ----------------------------------------------------------

# Sample entries Moonfire NVR wrote (its upgrade test vectors): avc1 + avcC, no pasp.
MOONFIRE_320X240_NO_SAR = bytes.fromhex(
    "0000008461766331000000000000000100000000000000000000000000000000014000f000480000"
    "0048000000000000000100000000000000000000000000000000000000000000000000000000000000"
    "000018ffff0000002e61766343014d401effe10017674d401e9a660a0fff35010101400000fa000003"
    "01f40101000468ee3c80")
MOONFIRE_704X480_40_33 = bytes.fromhex(
    "0000009f6176633100000000000000010000000000000000000000000000000002c001e000480000"
    "0048000000000000000100000000000000000000000000000000000000000000000000000000000000"
    "000018ffff000000496176634301640016ffe1003167640016ac1b1a80b03dffff002800216e0c0c"
    "0c800001f400002710743007d00007a125de5c68600fa0000f424bbcb85001000568ee383000")


def test_moonfire_sample_entries():
    avcc = entry_children(MOONFIRE_320X240_NO_SAR)["avcC"]
    p = codec.parameters_from_extradata("h264", avcc)
    assert (p.width, p.height, p.rfc6381_codec) == (320, 240, "avc1.4d401e")
    assert (p.pasp_h_spacing, p.pasp_v_spacing) == (4, 3)  # the defaults table
    assert p.decoder_config == avcc                       # Main: no high-profile bytes
    # Same header (Moonfire had no pasp then, so the size differs).
    assert p.sample_entry[4:86] == MOONFIRE_320X240_NO_SAR[4:86]
    assert p.frame_rate is None or p.frame_rate > 0

    avcc = entry_children(MOONFIRE_704X480_40_33)["avcC"]
    p = codec.parameters_from_extradata("h264", avcc)
    assert (p.width, p.height, p.rfc6381_codec) == (704, 480, "avc1.640016")
    assert (p.pasp_h_spacing, p.pasp_v_spacing) == (40, 33)  # from the VUI
    # High profile: FFmpeg (and we) append chroma_format 1, 8-bit depths, no SPS ext.
    assert p.decoder_config == avcc + bytes.fromhex("fdf8f800")


# --- Hand-made SPSs -----------------------------------------------------------------------

class BitWriter:
    """Writes RBSP syntax (u(n), ue(v), se(v)) and wraps it as a NAL unit."""

    def __init__(self):
        self.bits: list[int] = []

    def u(self, n: int, value: int) -> BitWriter:
        self.bits += [(value >> (n - 1 - i)) & 1 for i in range(n)]
        return self

    def ue(self, value: int) -> BitWriter:
        n = (value + 1).bit_length()
        return self.u(n - 1, 0).u(n, value + 1)

    def se(self, value: int) -> BitWriter:
        return self.ue(2 * value - 1 if value > 0 else -2 * value)

    def nal(self, header: bytes) -> bytes:
        bits = self.bits + [1]  # rbsp_stop_one_bit, then zeros to a byte boundary
        bits += [0] * (-len(bits) % 8)
        rbsp = bytes(int("".join(map(str, bits[i:i + 8])), 2) for i in range(0, len(bits), 8))
        out, zeros = bytearray(header), 0
        for b in rbsp:  # emulation prevention (H.264 §7.4.1)
            if zeros >= 2 and b <= 3:
                out.append(3)
                zeros = 0
            out.append(b)
            zeros = zeros + 1 if b == 0 else 0
        return bytes(out)


# pic_parameter_set_rbsp (H.264 §7.3.2.2): CAVLC, one slice group, no extras.
PPS = (BitWriter().ue(0).ue(0).u(2, 0).ue(0).ue(0).ue(0).u(3, 0).se(0).se(0).se(0).u(3, 0)
       .nal(b"\x68"))


def h264_sps(width_mbs: int, height_map_units: int, *, profile_idc: int = 77,
             high: tuple = (1, False), poc_type: int = 0, frame_mbs_only: bool = True,
             crop: tuple | None = None, vui: BitWriter | None = None,
             sps_id: int = 0, scaling_lists: bool = False) -> bytes:
    """An SPS (H.264 §7.3.2.1.1). `high` is (chroma_format_idc, separate_colour_plane)."""
    w = BitWriter().u(8, profile_idc).u(8, 0).u(8, 30).ue(sps_id)
    if profile_idc in (100, 244):
        chroma, separate = high
        w.ue(chroma)
        if chroma == 3:
            w.u(1, separate)
        w.ue(0).ue(0).u(1, 0).u(1, scaling_lists)
        # scaling_list() (§7.3.2.1.1.1) deltas: a list that ends at once (nextScale 0:
        # use the default), one that ends after 6, full ones; every third is absent.
        for i in range(12 if chroma == 3 else 8) if scaling_lists else ():
            w.u(1, i % 3 != 2)
            deltas = [[-8], [1] * 5 + [-13]][i] if i < 2 else [i % 2] * (16 if i < 6 else 64)
            for delta in deltas if i % 3 != 2 else ():
                w.se(delta)
    w.ue(0).ue(poc_type)
    if poc_type == 0:
        w.ue(2)
    elif poc_type == 1:
        w.u(1, 0).se(-3).se(5).ue(3).se(1).se(-2).se(7)
    w.ue(1).u(1, 0).ue(width_mbs - 1).ue(height_map_units - 1).u(1, frame_mbs_only)
    if not frame_mbs_only:
        w.u(1, 1)
    w.u(1, 1).u(1, crop is not None)
    for offset in crop or ():
        w.ue(offset)
    w.u(1, vui is not None)
    w.bits += vui.bits if vui else []
    return w.nal(b"\x67")


def vui(aspect_ratio_idc=None, sar=(0, 0), timing=None) -> BitWriter:
    """H.264 vui_parameters (§E.1.1) up to timing info (and empty after it)."""
    w = BitWriter().u(1, aspect_ratio_idc is not None)
    if aspect_ratio_idc is not None:
        w.u(8, aspect_ratio_idc)
        if aspect_ratio_idc == 255:
            w.u(16, sar[0]).u(16, sar[1])
    w.u(1, 0).u(1, 1).u(3, 5).u(1, 0).u(1, 1).u(24, 0x010101).u(1, 1).ue(0).ue(0)
    w.u(1, timing is not None)
    if timing:
        w.u(32, timing[0]).u(32, timing[1]).u(1, 1)
    return w.u(1, 0).u(1, 0).u(1, 0).u(1, 0)


@pytest.mark.parametrize("sps, size, pasp, frame_rate", [
    # No VUI: the defaults table, symmetric under rotation, 1:1 elsewhere.
    (h264_sps(44, 30), (704, 480), (40, 33), None),
    (h264_sps(30, 44), (480, 704), (33, 40), None),
    (h264_sps(40, 22), (640, 352), (44, 45), None),
    (h264_sps(120, 68, crop=(0, 0, 0, 4)), (1920, 1080), (1, 1), None),
    # A VUI without aspect ratio info, or an unspecified/reserved one: still the table.
    (h264_sps(44, 30, vui=vui()), (704, 480), (40, 33), None),
    (h264_sps(44, 30, vui=vui(0)), (704, 480), (40, 33), None),
    (h264_sps(44, 30, vui=vui(17)), (704, 480), (40, 33), None),
    (h264_sps(44, 30, vui=vui(255, (0, 5))), (704, 480), (40, 33), None),
    # The VUI wins over the table; Extended_SAR is reduced; timing gives the frame rate.
    (h264_sps(44, 30, vui=vui(1)), (704, 480), (1, 1), None),
    (h264_sps(120, 68, vui=vui(16, timing=(1001, 60000))), (1920, 1088), (2, 1),
     Fraction(30000, 1001)),
    (h264_sps(20, 15, vui=vui(255, (80, 66), timing=(1, 50))), (320, 240), (40, 33), 25),
    # pic_order_cnt_type 1 and 2; field coding doubles the map units and crop rows.
    (h264_sps(20, 15, poc_type=1), (320, 240), (4, 3), None),
    (h264_sps(20, 15, poc_type=2), (320, 240), (4, 3), None),
    (h264_sps(45, 15, frame_mbs_only=False, crop=(0, 0, 0, 0)), (720, 480), (32, 27), None),
    (h264_sps(120, 34, frame_mbs_only=False, crop=(0, 0, 0, 2)), (1920, 1080), (1, 1), None),
    # 4:4:4 (crop unit 1) and monochrome (crop unit 1, or 2 rows for fields).
    (h264_sps(4, 3, profile_idc=244, high=(3, False), crop=(1, 1, 0, 3)), (62, 45), (1, 1),
     None),
    (h264_sps(4, 2, profile_idc=100, high=(0, False), frame_mbs_only=False,
              crop=(1, 0, 0, 1)), (63, 62), (1, 1), None),
    # Scaling lists: 8 for 4:2:0, 12 for 4:4:4.
    (h264_sps(20, 15, profile_idc=100, scaling_lists=True), (320, 240), (4, 3), None),
    (h264_sps(20, 15, profile_idc=244, high=(3, False), scaling_lists=True,
              vui=vui(1, timing=(1, 30))), (320, 240), (1, 1), 15),
], ids=lambda v: None)
def test_h264_hand_made_sps(sps, size, pasp, frame_rate):
    p = codec.h264_parameters(sps, PPS)
    assert (p.width, p.height) == size
    assert (p.pasp_h_spacing, p.pasp_v_spacing) == pasp
    assert p.frame_rate == frame_rate
    assert ("pasp" in entry_children(p.sample_entry)) == (pasp != (1, 1))
    # CBS reads the same SPS (so it is well formed) to the same values.
    f = cbs_fields("h264", [sps, PPS])
    chroma = f.get("chroma_format_idc", [1])[0]
    crop_x = 2 if chroma in (1, 2) else 1
    crop_y = (2 if chroma == 1 else 1) * (2 - f["frame_mbs_only_flag"][0])
    crop = [f.get(f"frame_crop_{side}_offset", [0])[0]
            for side in ("left", "right", "top", "bottom")]
    assert size == ((f["pic_width_in_mbs_minus1"][0] + 1) * 16 - crop_x * (crop[0] + crop[1]),
                    (f["pic_height_in_map_units_minus1"][0] + 1) * 16
                    * (2 - f["frame_mbs_only_flag"][0]) - crop_y * (crop[2] + crop[3]))
    if "time_scale" in f:
        assert frame_rate == Fraction(f["time_scale"][0], 2 * f["num_units_in_tick"][0])
    assert ffmpeg_config_record("h264", [sps, PPS]) == p.decoder_config


def h265_ptl(w: BitWriter, sub_layers: list[tuple[int, int]]) -> None:
    """profile_tier_level(1, len(sub_layers)), H.265 §7.3.3: Main, level 3 (30)."""
    def profile(w):
        return w.u(2, 0).u(1, 0).u(5, 1).u(32, 0x6000_0000).u(48, 0x9000_0000_0000)
    profile(w).u(8, 30)
    for profile_present, level_present in sub_layers:
        w.u(1, profile_present).u(1, level_present)
    if sub_layers:
        w.u(2 * (8 - len(sub_layers)), 0)
    for profile_present, level_present in sub_layers:
        if profile_present:
            profile(w)
        if level_present:
            w.u(8, 30)


def h265_vps(sub_layers=()) -> bytes:
    """video_parameter_set_rbsp, H.265 §7.3.2.1."""
    w = BitWriter().u(4, 0).u(1, 1).u(1, 1).u(6, 0).u(3, len(sub_layers)).u(1, 1).u(16, 0xFFFF)
    h265_ptl(w, list(sub_layers))
    w.u(1, 1)
    for _ in range(len(sub_layers) + 1):
        w.ue(4).ue(0).ue(0)
    return w.u(6, 0).ue(0).u(1, 0).u(1, 0).nal(b"\x40\x01")


def h265_sps(*, chroma=1, size=(64, 48), window=None, rps=(), long_term=(), pcm=False,
             scaling_lists=False, vui=None, sub_layers=()) -> bytes:
    """seq_parameter_set_rbsp, H.265 §7.3.2.2.1. `rps` entries are ("explicit",
    negative distances, positive distances) or ("inter", delta_rps, [(used_by_curr_pic,
    use_delta)] * (NumDeltaPocs of the previous set + 1))."""
    w = BitWriter().u(4, 0).u(3, len(sub_layers)).u(1, 1)
    h265_ptl(w, list(sub_layers))
    w.ue(0).ue(chroma)
    if chroma == 3:
        w.u(1, 0)
    w.ue(size[0]).ue(size[1]).u(1, window is not None)
    for offset in window or ():
        w.ue(offset)
    w.ue(0).ue(0).ue(4).u(1, 1)  # 8-bit; log2_max_pic_order_cnt_lsb = 8
    for _ in range(len(sub_layers) + 1):
        w.ue(4).ue(0).ue(0)
    w.ue(0).ue(1).ue(0).ue(2).ue(1).ue(1).u(1, scaling_lists)  # 16x16 CTBs
    if scaling_lists:  # scaling_list_data(), §7.3.4: coded first matrices, predicted others
        w.u(1, 1)
        for size_id in range(4):
            for matrix_id in range(0, 6, 3 if size_id == 3 else 1):
                w.u(1, matrix_id == 0)
                if matrix_id:
                    w.ue(matrix_id // (3 if size_id == 3 else 1))
                    continue
                if size_id > 1:
                    w.se(4)
                for k in range(min(64, 1 << (4 + 2 * size_id))):
                    w.se(k % 5 - 2)
    w.u(1, 0).u(1, 1).u(1, pcm)
    if pcm:
        w.u(4, 7).u(4, 7).ue(0).ue(1).u(1, 0)
    w.ue(len(rps))
    for i, (kind, *args) in enumerate(rps):
        if i:
            w.u(1, kind == "inter")
        if kind == "inter":
            delta_rps, flags = args
            w.u(1, delta_rps < 0).ue(abs(delta_rps) - 1)
            for used, use_delta in flags:
                w.u(1, used)
                if not used:
                    w.u(1, use_delta)
        else:
            negative, positive = args
            w.ue(len(negative)).ue(len(positive))
            for distance in negative + positive:
                w.ue(distance - 1).u(1, 1)
    w.u(1, bool(long_term))
    if long_term:
        w.ue(len(long_term))
        for poc_lsb, used in long_term:
            w.u(8, poc_lsb).u(1, used)
    w.u(1, 1).u(1, 0).u(1, vui is not None)
    w.bits += vui.bits if vui else []
    return w.u(1, 0).nal(b"\x42\x01")


def h265_vui(sar=None, timing=None, hrd=None, min_spatial_segmentation=None) -> BitWriter:
    """vui_parameters, H.265 §E.2.1, with most optional parts present."""
    w = BitWriter().u(1, sar is not None)
    if sar:
        w.u(8, 255).u(16, sar[0]).u(16, sar[1])
    w.u(1, 1).u(1, 0).u(1, 1).u(3, 5).u(1, 0).u(1, 1).u(24, 0x010101).u(1, 1).ue(1).ue(1)
    w.u(3, 0).u(1, 1).ue(2).ue(2).ue(0).ue(0).u(1, timing is not None)
    if timing:
        w.u(32, timing[0]).u(32, timing[1]).u(1, 1).ue(0).u(1, hrd is not None)
        if hrd:
            w.bits += hrd.bits
    w.u(1, min_spatial_segmentation is not None)
    if min_spatial_segmentation is not None:
        w.u(3, 0).ue(min_spatial_segmentation).ue(2).ue(1).ue(15).ue(15)
    return w


def h265_hrd(sub_layers) -> BitWriter:
    """hrd_parameters(1, ...), H.265 §E.2.2, NAL and VCL, sub-picture parameters;
    `sub_layers` are (fixed_pic_rate_general, fixed_pic_rate_within_cvs, low_delay, cpbs)."""
    w = BitWriter().u(1, 1).u(1, 1).u(1, 1).u(19, 0).u(8, 0).u(4, 0).u(15, 0x5EF7)
    for general, within_cvs, low_delay, cpbs in sub_layers:
        w.u(1, general)
        if not general:
            w.u(1, within_cvs)
        if general or within_cvs:  # within_cvs is inferred 1 when general is 1
            w.ue(0)
        else:
            w.u(1, low_delay)
        if not low_delay:
            w.ue(cpbs - 1)
        for _ in range(2):  # sub_layer_hrd_parameters() for NAL, then VCL
            for j in range(cpbs):
                w.ue(1000 + j).ue(2000).ue(3000).ue(4000).u(1, j & 1)
    return w


def h265_pps(tiles: bool, wavefronts: bool) -> bytes:
    """pic_parameter_set_rbsp, H.265 §7.3.2.3.1."""
    w = BitWriter().ue(0).ue(0).u(7, 0).ue(0).ue(0).se(-3).u(2, 0).u(1, 1).ue(1).se(2).se(-2)
    w.u(4, 0).u(1, tiles).u(1, wavefronts)
    if tiles:
        w.ue(1).ue(1).u(1, 1).u(1, 1)
    return w.u(1, 1).u(3, 0).ue(0).u(2, 0).nal(b"\x44\x01")


# Short-term reference picture sets (§7.3.7). Flags of a predicted set go, in order,
# to the previous set's DeltaPocS0 entries, its DeltaPocS1 entries and the previous
# picture itself; equations 7-61/7-62 order the result (S0 nearest first).
RPS = [
    ("explicit", [1, 3], [2]),                              # S0 -1, -4; S1 +2
    ("inter", -1, [(1, 0), (0, 1), (0, 0), (1, 0)]),        # S0 -1, -2, -5
    ("inter", +1, [(0, 0), (1, 0), (1, 0), (1, 0)]),        # S0 -1, -4; S1 +1
    ("inter", +2, [(0, 1)] * 4),                            # S0 -2; S1 +1, +2, +3
    ("explicit", [], []),
]
# The same, but the third set flags the entry that lands on POC 0 (-1 + 1): 7-61/7-62
# drop it (S0 -1, -4; S1 +1), so the next set reads 4 flags, not 5.
RPS_POC_0 = RPS[:2] + [("inter", +1, [(1, 0)] * 4), ("inter", +2, [(0, 1)] * 4)]

H265_HAND_MADE = [
    # id, VPS, SPS, PPS, (width, height), pasp, frame rate, FFmpeg's hvcC writer misreads
    ("plain", h265_vps(), h265_sps(), h265_pps(False, False), (64, 48), (1, 1), None, False),
    ("422-window", h265_vps(), h265_sps(chroma=2, size=(72, 56), window=(1, 2, 3, 4)),
     h265_pps(False, False), (66, 49), (1, 1), None, False),
    ("444-window", h265_vps(), h265_sps(chroma=3, size=(72, 56), window=(1, 2, 3, 4)),
     h265_pps(False, False), (69, 49), (1, 1), None, False),
    ("monochrome-window-704x480", h265_vps(),
     h265_sps(chroma=0, size=(712, 488), window=(3, 5, 0, 8)), h265_pps(False, False),
     (704, 480), (40, 33), None, False),
    ("ref-pic-sets-wavefronts", h265_vps(),
     h265_sps(rps=RPS, long_term=[(3, 1), (250, 0)], vui=h265_vui(min_spatial_segmentation=5)),
     h265_pps(False, True), (64, 48), (1, 1), None, False),
    ("pcm-scaling-lists-tiles", h265_vps(),
     h265_sps(pcm=True, scaling_lists=True, vui=h265_vui(min_spatial_segmentation=4095)),
     h265_pps(True, False), (64, 48), (1, 1), None, False),
    ("sub-layers-hrd", h265_vps([(1, 1), (0, 1)]),
     h265_sps(sub_layers=[(1, 1), (0, 1)], vui=h265_vui(
         sar=(80, 66), timing=(1001, 30000),
         hrd=h265_hrd([(0, 1, 0, 2), (0, 0, 1, 1), (0, 0, 0, 3)]), min_spatial_segmentation=7)),
     h265_pps(True, True), (64, 48), (40, 33), Fraction(30000, 1001), False),
    ("hrd-fixed-pic-rate-general", h265_vps(),
     h265_sps(vui=h265_vui(timing=(1, 25), hrd=h265_hrd([(1, 0, 0, 2)]),
                           min_spatial_segmentation=200)),
     h265_pps(True, False), (64, 48), (1, 1), 25, True),
    ("ref-pic-set-entry-at-poc-0", h265_vps(),
     h265_sps(rps=RPS_POC_0, vui=h265_vui(min_spatial_segmentation=5)),
     h265_pps(False, True), (64, 48), (1, 1), None, True),
]


def test_an_h265_sps_cut_short_is_refused():
    """Unlike H.264's, an H.265 SPS whose VUI runs off its end is refused, as FFmpeg
    refuses it ("Overread SPS": checked with ffprobe 5.1 and PyAV 18's FFmpeg on x265
    output cut at every byte). Each cut of the hand-made SPSs is a CodecError saying it
    is truncated, or (cutting only what this parser doesn't read: the extension flags
    after the VUI) parses to exactly the full SPS's values; never to partial ones."""
    def values(p):
        return p.width, p.height, p.pasp_h_spacing, p.pasp_v_spacing, p.frame_rate
    refused = 0
    for _, vps, sps, pps, *_ in H265_HAND_MADE:
        full = values(codec.h265_parameters(vps, sps, pps))
        for cut in range(len(sps) - 1, 0, -1):
            try:
                got = values(codec.h265_parameters(vps, sps[:cut], pps))
            except CodecError as e:
                assert re.search("truncated|empty|NAL unit type", str(e)), e
                refused += 1
            else:
                assert got == full, cut
    assert refused > 100


@pytest.mark.parametrize("vps, sps, pps, size, pasp, frame_rate, ffmpeg_misreads",
                         [c[1:] for c in H265_HAND_MADE], ids=[c[0] for c in H265_HAND_MADE])
def test_h265_hand_made_parameter_sets(vps, sps, pps, size, pasp, frame_rate, ffmpeg_misreads):
    p = codec.h265_parameters(vps, sps, pps)
    assert (p.width, p.height) == size
    assert (p.pasp_h_spacing, p.pasp_v_spacing) == pasp
    assert p.frame_rate == frame_rate

    # CBS reads all three to the end (they are well formed) and agrees.
    f = cbs_fields("h265", [vps, sps, pps])
    sub_width_c, sub_height_c = {0: (1, 1), 1: (2, 2), 2: (2, 1), 3: (1, 1)}[
        f["chroma_format_idc"][0]]
    window = [f.get(f"conf_win_{side}_offset", [0])[0]
              for side in ("left", "right", "top", "bottom")]
    assert size == (f["pic_width_in_luma_samples"][0] - sub_width_c * (window[0] + window[1]),
                    f["pic_height_in_luma_samples"][0] - sub_height_c * (window[2] + window[3]))
    min_spatial_segmentation = f.get("min_spatial_segmentation_idc", [0])[0]
    hvcc = p.decoder_config
    assert int.from_bytes(hvcc[13:15], "big") & 0xFFF == min_spatial_segmentation
    parallelism = {(1, 1): 0, (0, 0): 1, (1, 0): 2, (0, 1): 3}[
        f["tiles_enabled_flag"][0], f["entropy_coding_sync_enabled_flag"][0]]
    assert hvcc[15] & 3 == (parallelism if min_spatial_segmentation else 0)
    num_temporal_layers = f["sps_max_sub_layers_minus1"][0] + 1
    assert (hvcc[21] >> 3) & 7 == num_temporal_layers

    # FFmpeg's muxer writes the same hvcC but in two cases where its hvcC writer
    # (libavformat/hevc.c) misreads the SPS, loses its place and falls back to
    # min_spatial_segmentation_idc 0, parallelismType 0: it reads
    # fixed_pic_rate_within_cvs_flag when fixed_pic_rate_general_flag is 1 (§E.2.2 says
    # it is absent, inferred 1), and it counts a predicted reference picture set's entry
    # at POC 0. CBS and we follow the spec.
    theirs = ffmpeg_config_record("h265", [vps, sps, pps])
    if ffmpeg_misreads:
        assert theirs[13:16] == b"\xf0\x00\xfc" != hvcc[13:16]
        theirs = theirs[:13] + hvcc[13:16] + theirs[16:]
    assert theirs == hvcc


def test_default_pixel_aspect_ratio():
    assert codec.default_pixel_aspect_ratio(704, 480) == (40, 33)
    assert codec.default_pixel_aspect_ratio(480, 704) == (33, 40)
    assert codec.default_pixel_aspect_ratio(720, 480) == (32, 27)
    assert codec.default_pixel_aspect_ratio(1920, 1080) == (1, 1)


def test_sample_entry_layout():
    p = codec.h264_parameters(h264_sps(44, 30), PPS)
    e = p.sample_entry
    # ISO/IEC 14496-12 §8.5.2: size, type, reserved, data_reference_index, pre_defined,
    # width, height, resolutions, reserved, frame_count, compressorname, depth, -1.
    assert struct.unpack(">I4s6sH16sHHIIIH32sHh", e[:86]) == (
        len(e), b"avc1", bytes(6), 1, bytes(16), 704, 480, 0x480000, 0x480000, 0, 1,
        bytes(32), 24, -1)
    assert list(boxes(e, 86)) == [("avcC", p.decoder_config),
                                  ("pasp", struct.pack(">II", 40, 33))]
    assert p.decoder_config == (bytes([1, 77, 0, 30, 0xFF, 0xE1]) + len(p.parameter_sets[0])
                                .to_bytes(2, "big") + p.parameter_sets[0] + b"\x01"
                                + len(PPS).to_bytes(2, "big") + PPS)
    assert p.rfc6381_codec == "avc1.4d001e"


# --- Annex B and length prefixes ----------------------------------------------------------

SEI_WITH_EPB = b"\x06\x05\x00\x00\x03\x01\x00\x00\x03\x00\x80"  # 00 00 03 must survive


def test_split_annexb():
    data = (b"\x00\x00\x00\x01\x67\x42" + b"\x00\x00\x01\x68\xce" + b"\x00\x00\x01"
            + SEI_WITH_EPB + b"\x00\x00" + b"\x00\x00\x00\x01\x65\x88\x80\x00\x00")
    assert codec.split_annexb(data) == [b"\x67\x42", b"\x68\xce", SEI_WITH_EPB, b"\x65\x88\x80"]
    assert codec.split_annexb(b"\x00" + data) == codec.split_annexb(data)
    assert codec.split_annexb(b"") == []
    assert codec.split_annexb(b"\x00\x00\x01\x00\x00\x01\x09\xf0") == [b"\x09\xf0"]


def test_to_length_prefixed_round_trip():
    data = b"\x00\x00\x00\x01\x09\xf0\x00\x00\x01" + SEI_WITH_EPB + b"\x00\x00\x01\x65\x88"
    lp = codec.to_length_prefixed(data)
    assert lp == (b"\x00\x00\x00\x02\x09\xf0" + len(SEI_WITH_EPB).to_bytes(4, "big")
                  + SEI_WITH_EPB + b"\x00\x00\x00\x02\x65\x88")
    assert codec.nal_units(lp) == codec.split_annexb(data)
    assert codec.to_length_prefixed(lp) is lp  # already length-prefixed: returned as is
    # A 300-byte NAL unit's length is 00 00 01 2c, which looks like a start code.
    big = b"\x00\x00\x01\x2c" + b"\x41" + bytes(range(1, 256)) + b"\x01" * 44
    assert codec.to_length_prefixed(big) is big
    assert codec.nal_units(big) == [big[4:]]
    assert codec.to_length_prefixed(b"") == b""
    assert codec.nal_units(b"") == []


def test_frames_from_an_encoder_round_trip():
    _, packets, _ = x264("h264", 64, 48, options={"profile": "main"})
    for pkt in packets:
        lp = codec.to_length_prefixed(pkt)
        assert codec.nal_units(lp) == codec.split_annexb(pkt)
        assert codec.to_length_prefixed(lp) is lp
        assert codec.parameters_from_frame("h264", lp) == codec.parameters_from_frame("h264", pkt)
    first = codec.parameters_from_frame("h264", packets[0])
    assert first is not None and first.profile_idc == 77
    assert codec.parameters_from_frame("h264", packets[-1]) is None  # a P frame
    sps_only = b"\x00\x00\x00\x01" + first.parameter_sets[0]
    assert codec.parameters_from_frame("h264", sps_only) is None


@pytest.mark.parametrize("data", [
    b"\x00\x00\x00\x01\x41\x9a\x26",                                    # one NAL unit
    b"\x00\x00\x00\x01\x09\xf0\x00\x00\x00\x01\x06" + SEI_WITH_EPB[1:]
    + b"\x00\x00\x00\x01\x65\x88\x80",                                   # all 4-byte codes
    b"\x00\x00\x00\x01\x09\xf0\x00\x00\x01\x65\x88",                        # a 3-byte code
    b"\x00\x00\x01\x65\x88",                                              # a 3-byte first one
    b"\x00\x00\x00\x00\x01\x65\x88",                                      # a leading zero
    b"\x00\x00\x00\x01\x65\x88\x00",                                      # a trailing zero
    b"\x00\x00\x00\x01\x09\xf0\x00\x00\x00\x00\x01\x65\x88",                # zero between
    b"\x00\x00\x00\x01\x00\x00\x00\x01\x65\x88",                           # an empty NAL unit
    b"\x00\x00\x00\x01\x65\x88\x00\x00\x00\x01",                           # an empty last one
    b"\x00\x00\x00\x01",
    b"",
], ids=lambda v: v.hex())
def test_annexb_to_length_prefixed_agrees(data):
    expected = codec.nal_units(codec.to_length_prefixed(data)) if data else []
    out = codec.annexb_to_length_prefixed(data)
    assert codec.nal_units(bytes(out)) == expected == codec.split_annexb(data)


def test_annexb_to_length_prefixed_from_an_encoder_and_a_packet():
    _, packets, _ = x264("h264", 64, 48, options={"profile": "main"})
    for pkt in packets:
        four = b"".join(b"\x00\x00\x00\x01" + nal for nal in codec.split_annexb(pkt))
        for data in (pkt, four, av.Packet(four)):  # any buffer, as PyAV's packets
            assert bytes(codec.annexb_to_length_prefixed(data)) == codec.to_length_prefixed(pkt)
        # All 4-byte start codes (what FFmpeg's RTP depacketizer writes): converted in
        # place in one copy, the input untouched.
        out = codec.annexb_to_length_prefixed(four)
        assert isinstance(out, bytearray) and len(out) == len(four) and four[:4] == b"\0\0\0\1"


def test_split_parameter_sets():
    _, packets, _ = x264("h264", 64, 48, options={"profile": "main"})
    key = codec.to_length_prefixed(packets[0])
    sets, rest = codec.split_parameter_sets("h264", key)
    nals = codec.nal_units(key)
    assert codec.nal_units(sets) == [n for n in nals if codec.is_parameter_set("h264", n)]
    assert codec.nal_units(rest) == [n for n in nals if not codec.is_parameter_set("h264", n)]
    assert len(codec.nal_units(sets)) == 2 and rest
    assert codec.parameters_from_frame("h264", sets) == codec.parameters_from_frame("h264", key)
    p_frame = codec.to_length_prefixed(packets[-1])
    sets, rest = codec.split_parameter_sets("h264", p_frame)
    assert sets == b"" and rest is p_frame
    # Parameter sets anywhere in the access unit, not only first.
    (sps,) = [n for n in nals if codec.nal_type("h264", n) == 7]
    (pps,) = [n for n in nals if codec.nal_type("h264", n) == 8]
    odd = b"".join(len(n).to_bytes(4, "big") + n for n in (b"\x09\xf0", sps, b"\x65\x88", pps))
    sets, rest = codec.split_parameter_sets("h264", odd)
    assert codec.nal_units(sets) == [sps, pps]
    assert codec.nal_units(rest) == [b"\x09\xf0", b"\x65\x88"]


def test_nal_type_and_parameter_sets():
    assert codec.nal_type("h264", b"\x67") == 7 and codec.is_parameter_set("h264", b"\x68")
    assert not codec.is_parameter_set("h264", b"\x65")
    assert codec.nal_type("hevc", b"\x40\x01") == 32 and codec.is_parameter_set("h265", b"\x44\x01")
    assert not codec.is_parameter_set("h265", b"\x4e\x01")  # prefix SEI


# --- Malformed input ----------------------------------------------------------------------

BASELINE_SPS = codec.parameters_from_frame(
    "h264", x264("h264", 64, 48, options={"profile": "baseline"})[0]).parameter_sets[0]


def test_an_sps_whose_vui_runs_off_its_end_is_taken():
    """As FFmpeg takes it ("Overread VUI"; some cameras send one): bits past the end
    read as zeros, the size stands, the aspect ratio counts once read whole, the frame
    rate only when its timing info was whole. Cut anywhere before the VUI: an error."""
    for sps, size in ((h264_sps(120, 68, vui=vui(16, timing=(1001, 60000))), (1920, 1088)),
                      (BASELINE_SPS, (64, 48))):
        full = codec.h264_parameters(sps, PPS)
        seen = []
        for cut in range(len(sps), 0, -1):
            try:
                p = codec.h264_parameters(sps[:cut], PPS)
            except CodecError as e:
                assert "is truncated" in str(e)
                break
            assert (p.width, p.height) == size
            seen.append(((p.pasp_h_spacing, p.pasp_v_spacing), p.frame_rate))
        assert seen[0] == ((full.pasp_h_spacing, full.pasp_v_spacing), full.frame_rate)
        # Shorter cuts lose the frame rate, then the aspect ratio (the default table's).
        rates = [r for _, r in seen]
        assert rates == [full.frame_rate] * rates.count(full.frame_rate) + \
            [None] * rates.count(None)
        assert seen[-1][0] == codec.default_pixel_aspect_ratio(*size)
    assert seen[0] == ((1, 1), 30) and len(seen) == len(BASELINE_SPS) - 6


@pytest.mark.parametrize("call, message", [
    (lambda: codec.split_annexb(b"\x67\x42\x00"), "no start code"),
    (lambda: codec.split_annexb(b"\x01\x00\x00\x01\x67"), "garbage before the first start"),
    (lambda: codec.to_length_prefixed(b"\x00\x00\x00\x05\x65\x88"), "no start code"),
    (lambda: codec.nal_units(b"\x00\x00\x00\x05\x65\x88"), "claims 5 bytes, only 2 remain"),
    (lambda: codec.nal_units(b"\x00\x00\x00\x01\x65\x00\x00"), "2 stray bytes at offset 5"),
    (lambda: codec.h264_parameters(BASELINE_SPS[:4], PPS),
     "H.264 SPS is truncated: ran out of bits reading seq_parameter_set_id"),
    (lambda: codec.h264_parameters(BASELINE_SPS[:6], PPS),
     "H.264 SPS is truncated: ran out of bits reading pic_height_in_map_units_minus1"),
    (lambda: codec.h264_parameters(b"\x67\x42\x00\x1e\x00\x00\x03\x00\x00\x03\x00", PPS),
     "H.264 SPS has a bad exp-Golomb code for seq_parameter_set_id"),
    (lambda: codec.h264_parameters(h264_sps(4, 3, sps_id=32), PPS),
     "H.264 SPS has seq_parameter_set_id = 32, more than 31"),
    (lambda: codec.h264_parameters(PPS, PPS),
     r"expected an H.264 SPS \(NAL unit type 7\), got NAL unit type 8"),
    (lambda: codec.h264_parameters(b"", PPS), "H.264 SPS is empty"),
    (lambda: codec.h264_parameters(h264_sps(4, 3, profile_idc=99), PPS),
     "unknown profile_idc 99; set the camera to the Baseline, Main or High profile"),
    (lambda: codec.h264_parameters(h264_sps(4, 3, profile_idc=244, high=(3, True)), PPS),
     "separate_colour_plane_flag"),
    (lambda: codec.h264_parameters(h264_sps(4, 3, crop=(0, 0, 0, 24)), PPS),
     "displayed size of 64x0"),
    (lambda: codec.h265_parameters(b"\x40\x01\x0c", b"\x42\x01\x01", b"\x44\x01\xc1"),
     "H.265 VPS is truncated"),
    (lambda: codec.parameters_from_extradata("mjpeg", b"\xff\xd8"),
     "unsupported codec 'mjpeg'"),
    (lambda: codec.parameters_from_extradata("h264", b""), "no extradata"),
    (lambda: codec.parameters_from_extradata("h264", b"\x42\x42"), "neither Annex B nor"),
    (lambda: codec.parameters_from_extradata("h264", b"\x00\x00\x01" + BASELINE_SPS),
     "lacks an SPS and a PPS"),
    (lambda: codec.parameters_from_extradata("h264", b"\x01\x42\xc0\x1e\xff\xe1\x00\x30"),
     "avcC extradata is truncated"),
], ids=lambda v: None)
def test_malformed(call, message):
    with pytest.raises(CodecError, match=message):
        call()
