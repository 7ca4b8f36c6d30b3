"""Codec parameters: H.264/H.265 parameter sets in, `avc1`/`hvc1` sample entries out.

Owns
- **NAL unit framing.** Cameras (through PyAV's RTSP demuxer) hand us Annex B byte
  streams (ITU-T H.264 Annex B, H.265 Annex B): NAL units each preceded by a start code
  `00 00 01` or `00 00 00 01`, possibly with trailing zero bytes. Sample files and mp4
  `mdat`s hold the ISO/IEC 14496-15 form instead: each NAL unit preceded by its length
  as a 4-byte big-endian integer (`lengthSizeMinusOne = 3`). `to_length_prefixed`
  converts one access unit, telling the two framings apart;
  `annexb_to_length_prefixed` is the per-frame hot path for streams known to be Annex
  B (RTSP), overwriting 4-byte start codes in place; `nal_units` splits the result
  again, `split_parameter_sets` takes SPS/PPS/VPS out of a key frame. Neither touches emulation-prevention bytes (`00 00 03`): those belong to
  the NAL unit in both framings; only the parameter-set parsers here remove them.
- **Parameter sets -> `VideoParameters`.** The SPS (H.264 §7.3.2.1.1; H.265 §7.3.2.2)
  gives the displayed size (after frame cropping / the conformance window), the pixel
  aspect ratio (VUI, Annex E) and the frame rate (VUI timing, when present); an H.264
  VUI that runs off the end of its SPS is read as far as it goes, as FFmpeg does
  (FFmpeg refuses such an H.265 SPS, and so do we). Together
  with the PPS (and the H.265 VPS) it gives the decoder configuration record (`avcC`,
  14496-15 §5.3.3.1; `hvcC`, §8.3.3.1), the RFC 6381 codec string, and the whole
  VisualSampleEntry box (14496-12 §8.5.2) that mp4.py copies verbatim into `stsd`:

      avc1|hvc1  VisualSampleEntry: 86-byte header (width, height, ...)
        avcC|hvcC  the decoder configuration record (one SPS, one PPS [, one VPS])
        pasp       hSpacing, vSpacing -- only when the pixel aspect ratio is not 1:1

  The records are written byte for byte as FFmpeg's mp4 muxer writes them
  (`ff_isom_write_avcc`, `ff_isom_write_hvcc`; test_codec.py compares the two).
- **Pixel aspect ratio defaults** (reference §3.5): when the SPS doesn't say, some
  resolutions that are usually anamorphic sub streams of 16:9 cameras get a fixed ratio
  (`DEFAULT_PIXEL_ASPECT_RATIOS`, symmetric under 90 degree rotation); everything else
  is 1:1.

Invariants: every function is pure bytes in, values out; bad input raises `CodecError`
(a `ValueError`) with a one-line message naming the codec, the structure and the field.
`VideoParameters.sample_entry` is a deterministic function of the parameter sets, so
equal bytes mean the same configuration (db.py deduplicates sample entries by `data`).

Neighbours: stream.py calls `parameters_from_extradata` once per session (and
`split_parameter_sets`, then `parameters_from_frame` when the sets change, on key
frames) and `annexb_to_length_prefixed` or `to_length_prefixed` per frame; db.py stores `sample_entry`, width, height, codec string and pasp in
`video_sample_entry`; mp4.py writes the entry into `stsd` and never parses it.
upgrade/h264.py is a frozen copy of older rules and does not import this module.
An `hvc1` entry says every parameter set is in it (array_completeness 1), so FFmpeg's
muxer drops in-band VPS/SPS/PPS from H.265 samples; whoever writes samples can do the
same with `is_parameter_set` (H.264 streams commonly keep in-band copies under `avc1`).
"""

from __future__ import annotations

import dataclasses
import math
import struct
from fractions import Fraction


class CodecError(ValueError):
    """The stream's codec data is malformed or uses a feature nvr doesn't support."""


@dataclasses.dataclass(frozen=True)
class VideoParameters:
    codec: str                    # "h264" | "h265"
    width: int                    # displayed size in pixels (after cropping)
    height: int
    pasp_h_spacing: int           # pixel aspect ratio, reduced; 1:1 if square
    pasp_v_spacing: int
    rfc6381_codec: str            # e.g. "avc1.4d401f", "hvc1.1.6.L93.B0"
    sample_entry: bytes           # the whole avc1/hvc1 box
    decoder_config: bytes         # the avcC/hvcC box's payload (the configuration record)
    parameter_sets: tuple[bytes, ...]  # the NAL units it holds: (SPS, PPS) or (VPS, SPS, PPS)
    profile_idc: int
    level_idc: int
    frame_rate: Fraction | None   # frames per second from the VUI timing info, if any


# --- NAL unit framing -----------------------------------------------------------------

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_START_CODE = b"\x00\x00\x01"


def _annexb_spans(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each NAL unit in Annex B `data`; see `split_annexb`."""
    pos = data.find(_START_CODE)
    if pos < 0:
        if data.strip(b"\x00"):
            raise CodecError("not Annex B: no start code (00 00 01) found")
        return []
    if data[:pos].strip(b"\x00"):
        raise CodecError(f"Annex B data has {pos} bytes of garbage before the first start code")
    spans = []
    start = pos + 3
    while True:
        nxt = data.find(_START_CODE, start)
        end = len(data) if nxt < 0 else nxt
        # A NAL unit never ends in 00 (H.264 §7.4.1, H.265 §7.4.2: a cabac_zero_word
        # is followed by 03), so trailing zeros are trailing_zero_8bits or the first
        # byte of a 4-byte start code. Usually zero or one iteration.
        while end > start and data[end - 1] == 0:
            end -= 1
        if end > start:
            spans.append((start, end))
        if nxt < 0:
            return spans
        start = nxt + 3


def split_annexb(data: bytes) -> list[bytes]:
    """NAL units of an Annex B byte stream, without start codes or trailing zeros.

    Start codes may be 3 or 4 bytes; zero bytes before the first one and after any NAL
    unit are allowed; empty NAL units are dropped. Raises CodecError if non-empty data
    has no start code or has other bytes before the first one.
    """
    return [data[s:e] for s, e in _annexb_spans(data)]


def _is_length_prefixed(data: bytes) -> bool:
    """The detection rule of `to_length_prefixed`."""
    pos, n = 0, len(data)
    while pos < n:
        if pos + 5 > n:
            return False
        length = _U32.unpack_from(data, pos)[0]
        if length == 0 or data[pos + 4] & 0x80:  # forbidden_zero_bit must be 0
            return False
        pos += 4 + length
    return pos == n


def to_length_prefixed(data: bytes) -> bytes:
    """An access unit as 4-byte big-endian length-prefixed NAL units.

    Detection rule: `data` is taken to be length-prefixed already (and returned as is,
    the same object) when reading it as records of (u32 big-endian length >= 1, NAL
    unit whose first byte has forbidden_zero_bit 0) ends exactly at its end. Otherwise
    it must be Annex B. The check comes first because a length-prefixed NAL unit of
    256..511 bytes starts with 00 00 01, which looks like a start code. The reverse
    mistake needs Annex B data whose bytes after the first start code happen to chain
    exactly to the end as lengths; with a 4-byte start code the first "length" is 1
    and the next one is read from inside the NAL unit (e.g. an SPS's profile_idc or an
    H.265 header's second byte, 01), which overshoots any real frame. Cost: one
    `bytes.find` per NAL unit, one copy into the result.
    """
    if _is_length_prefixed(data):
        return data
    return _from_annexb(data)


def _from_annexb(data: bytes) -> bytes:
    view = memoryview(data)
    parts = []
    for start, end in _annexb_spans(data):
        parts.append(_U32.pack(end - start))
        parts.append(view[start:end])
    return b"".join(parts)


_START_CODE_4 = b"\x00\x00\x00\x01"
_pack_u32_into = _U32.pack_into


def annexb_to_length_prefixed(data) -> bytes | bytearray:
    """`to_length_prefixed` for an access unit known to be Annex B (its stream's
    extradata is), e.g. a PyAV packet (any object with the buffer protocol).

    FFmpeg's RTP depacketizers (rtpdec_h264.c, rtpdec_hevc.c) put a 4-byte start code
    before every NAL unit: as long as the length that replaces it. So the common case is
    one copy of `data` into a bytearray with each start code overwritten in place by the
    NAL unit's length (one `find` per NAL unit). Anything else (a 3-byte start code,
    zero bytes before the first start code or after a NAL unit, an empty NAL unit) is
    converted as `to_length_prefixed` converts Annex B, with the same result. Unlike it,
    this never takes `data` to be length-prefixed already: the caller knows it isn't.
    """
    buf = bytearray(data)
    n = len(buf)
    if buf.startswith(_START_CODE_4) and buf[-1]:  # a NAL unit never ends in 00
        start = 4
        while True:
            nxt = buf.find(_START_CODE, start)
            if nxt < 0:
                if n <= start:
                    break  # an empty last NAL unit
                _pack_u32_into(buf, start - 4, n - start)
                return buf
            end = nxt - 1  # where a 4-byte start code begins
            if end <= start or buf[end] or not buf[end - 1]:
                break  # an empty NAL unit, a 3-byte start code, or trailing zeros
            _pack_u32_into(buf, start - 4, end - start)
            start = nxt + 3
    return _from_annexb(bytes(data))


def nal_units(length_prefixed: bytes) -> list[bytes]:
    """The NAL units of 4-byte length-prefixed data (the inverse of `to_length_prefixed`)."""
    nals, pos, n = [], 0, len(length_prefixed)
    while pos < n:
        if pos + 4 > n:
            raise CodecError(f"length-prefixed data: {n - pos} stray bytes at offset {pos}")
        length = _U32.unpack_from(length_prefixed, pos)[0]
        if pos + 4 + length > n:
            raise CodecError(f"length-prefixed data: NAL unit at offset {pos} claims "
                             f"{length} bytes, only {n - pos - 4} remain")
        nals.append(length_prefixed[pos + 4:pos + 4 + length])
        pos += 4 + length
    return nals


def split_parameter_sets(codec: str, data: bytes) -> tuple[bytes, bytes]:
    """A 4-byte length-prefixed access unit -> (its parameter-set NAL units, the other
    NAL units), both length-prefixed and in their original order. Without parameter
    sets: (b"", `data` itself). The first part is what `parameters_from_frame` reads
    (stream.py parses it only when it differs from the last key frame's); the second
    is the sample to store, as `avc1`/`hvc1` entries carry the sets (ISO/IEC 14496-15)."""
    nals = nal_units(data)
    sets = [is_parameter_set(codec, nal) for nal in nals]
    if not any(sets):
        return b"", data

    def join(want: bool) -> bytes:
        return b"".join(_U32.pack(len(nal)) + nal for nal, s in zip(nals, sets) if s == want)
    return join(True), join(False)


def _any_nal_units(data: bytes) -> list[bytes]:
    return nal_units(data) if _is_length_prefixed(data) else split_annexb(data)


# NAL unit types (H.264 Table 7-1, H.265 Table 7-1) of the parameter sets that go in
# the sample entry.
_H264_SPS, _H264_PPS = 7, 8
_H265_VPS, _H265_SPS, _H265_PPS = 32, 33, 34


def _codec_name(codec: str) -> str:
    c = codec.lower()
    if c in ("h264", "avc", "avc1"):
        return "h264"
    if c in ("h265", "hevc", "hvc1", "hev1"):
        return "h265"
    raise CodecError(f"unsupported codec {codec!r}: nvr records H.264 and H.265 only; "
                     f"set the camera's stream to H.264")


def nal_type(codec: str, nal: bytes) -> int:
    """nal_unit_type from the NAL unit header (H.264 §7.3.1, H.265 §7.3.1.2)."""
    if not nal:
        raise CodecError("empty NAL unit")
    if _codec_name(codec) == "h264":
        return nal[0] & 0x1F
    return (nal[0] >> 1) & 0x3F


def is_parameter_set(codec: str, nal: bytes) -> bool:
    """True for SPS and PPS (and the H.265 VPS): the NAL units a sample entry holds."""
    t = nal_type(codec, nal)
    if _codec_name(codec) == "h264":
        return t in (_H264_SPS, _H264_PPS)
    return t in (_H265_VPS, _H265_SPS, _H265_PPS)


# --- RBSP and bits --------------------------------------------------------------------

def _rbsp(nal_payload: bytes) -> bytes:
    """Removes emulation_prevention_three_byte (00 00 03 -> 00 00; H.264 §7.4.1)."""
    parts, start = [], 0
    while (i := nal_payload.find(b"\x00\x00\x03", start)) >= 0:
        parts.append(nal_payload[start:i + 2])
        start = i + 3
    parts.append(nal_payload[start:])
    return b"".join(parts)


class _Bits:
    """Reads an RBSP most significant bit first: u(n), ue(v), se(v) (H.264 §9.1)."""

    def __init__(self, rbsp: bytes, what: str):
        self._value = int.from_bytes(rbsp, "big")
        self._len = len(rbsp) * 8
        self._pos = 0
        self.what = what  # e.g. "H.264 SPS", the start of every error message
        # Set for the VUI: bits past the end read as zeros, and `overread` says so
        # (FFmpeg takes an SPS whose VUI runs off its end, "Overread VUI by N bits";
        # some cameras send one).
        self.zeros_past_end = False
        self.overread = False

    def u(self, n: int, field: str) -> int:
        end = self._pos + n
        if end > self._len:
            if not self.zeros_past_end:
                raise CodecError(f"{self.what} is truncated: ran out of bits reading {field}")
            self.overread = True
            have = max(0, self._len - self._pos)
            self._pos = end
            return (self._value & ((1 << have) - 1)) << (n - have)
        value = (self._value >> (self._len - end)) & ((1 << n) - 1)
        self._pos = end
        return value

    def flag(self, field: str) -> bool:
        return self.u(1, field) == 1

    def ue(self, field: str, maximum: int = 0xFFFF_FFFE) -> int:
        zeros = 0
        while self.u(1, field) == 0:
            if self.zeros_past_end and self._pos >= self._len:
                self.overread = True
                return 0  # an exp-Golomb code cut off by the end: absent
            zeros += 1
            if zeros > 31:
                raise CodecError(f"{self.what} has a bad exp-Golomb code for {field} "
                                 f"(more than 31 leading zero bits)")
        if self.zeros_past_end and self._pos + zeros > self._len:
            self.overread = True
            self._pos += zeros
            return 0  # cut off by the end in its suffix: absent too
        value = (1 << zeros) - 1 + self.u(zeros, field)
        if value > maximum:
            raise CodecError(f"{self.what} has {field} = {value}, more than {maximum}")
        return value

    def se(self, field: str) -> int:
        k = self.ue(field)
        return (k + 1) // 2 if k & 1 else -(k // 2)

    def skip_ue(self, *fields: str) -> None:
        for field in fields:
            self.ue(field)

    def skip_se(self, *fields: str) -> None:
        for field in fields:
            self.se(field)


# --- Pixel aspect ratio ---------------------------------------------------------------

# H.264 Table E-1 / H.265 Table E-1: aspect_ratio_idc 1..16 -> sample aspect ratio.
# 0 is "unspecified", 17..254 reserved, 255 Extended_SAR (explicit sar_width/height).
_SAR_TABLE = [None, (1, 1), (12, 11), (10, 11), (16, 11), (40, 33), (24, 11), (20, 11),
              (32, 11), (80, 33), (18, 11), (15, 11), (64, 33), (160, 99), (4, 3), (3, 2),
              (2, 1)]
_EXTENDED_SAR = 255

# Reference §3.5: used when the SPS doesn't give a ratio. They assume a 16:9 camera
# viewed through an anamorphic sub stream; transposed sizes (a camera rotated 90
# degrees) get the transposed ratio.
DEFAULT_PIXEL_ASPECT_RATIOS = {
    (320, 240): (4, 3),
    (352, 240): (40, 33),
    (640, 352): (44, 45),
    (640, 480): (4, 3),
    (704, 480): (40, 33),
    (720, 480): (32, 27),
}


def _reduce(h: int, v: int) -> tuple[int, int]:
    g = math.gcd(h, v)
    return h // g, v // g


def default_pixel_aspect_ratio(width: int, height: int) -> tuple[int, int]:
    """The ratio for a stream whose SPS gives none (reference §3.5); else 1:1."""
    if (width, height) in DEFAULT_PIXEL_ASPECT_RATIOS:
        return DEFAULT_PIXEL_ASPECT_RATIOS[width, height]
    if (height, width) in DEFAULT_PIXEL_ASPECT_RATIOS:
        h, v = DEFAULT_PIXEL_ASPECT_RATIOS[height, width]
        return v, h
    return 1, 1


def _vui_start(r: _Bits, *, lenient: bool) -> tuple[int, int] | None:
    """Reads the start of vui_parameters() that H.264 (§E.1.1) and H.265 (§E.2.1) share,
    up to the chroma location; returns the sample aspect ratio, None if unspecified
    (or cut off by the end of the SPS). `lenient`: bits past the end read as zeros from
    here on, so a VUI that runs off its SPS keeps what came before the end. H.264 only:
    FFmpeg takes such an H.264 SPS ("Overread VUI") but refuses such an H.265 one
    ("Overread SPS"), and a stream FFmpeg can't decode is better refused at once."""
    r.zeros_past_end = lenient
    sar = None
    if r.flag("aspect_ratio_info_present_flag"):
        idc = r.u(8, "aspect_ratio_idc")
        if idc == _EXTENDED_SAR:
            width, height = r.u(16, "sar_width"), r.u(16, "sar_height")
            sar = _reduce(width, height) if width and height else None
        elif idc < len(_SAR_TABLE):
            sar = _SAR_TABLE[idc]
        if r.overread:
            sar = None
    if r.flag("overscan_info_present_flag"):
        r.flag("overscan_appropriate_flag")
    if r.flag("video_signal_type_present_flag"):
        r.u(4, "video_format, video_full_range_flag")
        if r.flag("colour_description_present_flag"):
            r.u(24, "colour_primaries, transfer_characteristics, matrix_coefficients")
    if r.flag("chroma_loc_info_present_flag"):
        r.skip_ue("chroma_sample_loc_type_top_field", "chroma_sample_loc_type_bottom_field")
    return sar


# --- VisualSampleEntry ----------------------------------------------------------------

# VisualSampleEntry header (ISO/IEC 14496-12 §8.5.2.2 and the SampleEntry of §8.5.2):
#   u32   size            the whole box, child boxes included
#   4s    type            "avc1" (14496-15 §5.4.2.1) / "hvc1" (§8.4.1.1)
#   6s    reserved        0
#   u16   data_reference_index = 1 (the one `dref` entry: this file)
#   16s   pre_defined, reserved, pre_defined[3]   0
#   u16   width           displayed width in pixels
#   u16   height
#   u32   horizresolution 0x00480000 (72 dpi, 16.16 fixed point)
#   u32   vertresolution  0x00480000
#   u32   reserved        0
#   u16   frame_count     1 (one frame per sample)
#   32s   compressorname  empty (length byte 0 + padding)
#   u16   depth           0x0018 (colour, no alpha)
#   i16   pre_defined     -1
# followed by child boxes: avcC/hvcC, then pasp when not 1:1.
_VISUAL_SAMPLE_ENTRY = struct.Struct(">I4s6sH16sHHIIIH32sHh")
assert _VISUAL_SAMPLE_ENTRY.size == 86

# PixelAspectRatioBox (14496-12 §12.1.4.2): u32 size = 16, "pasp", u32 hSpacing,
# u32 vSpacing (the pixel's width:height).
_PASP = struct.Struct(">I4sII")
assert _PASP.size == 16


def _box(box_type: bytes, payload: bytes) -> bytes:
    return _U32.pack(8 + len(payload)) + box_type + payload


def _sample_entry(entry_type: bytes, config_type: bytes, config: bytes, width: int,
                  height: int, pasp: tuple[int, int]) -> bytes:
    children = _box(config_type, config)
    if pasp != (1, 1):
        children += _PASP.pack(_PASP.size, b"pasp", *pasp)
    header = _VISUAL_SAMPLE_ENTRY.pack(
        _VISUAL_SAMPLE_ENTRY.size + len(children), entry_type, bytes(6), 1, bytes(16),
        width, height, 0x00480000, 0x00480000, 0, 1, bytes(32), 0x0018, -1)
    return header + children


def _check_size(what: str, width: int, height: int) -> None:
    if not (0 < width <= 0xFFFF and 0 < height <= 0xFFFF):
        raise CodecError(f"{what} gives a displayed size of {width}x{height}, which is "
                         f"empty or too large for an mp4 sample entry")


# --- H.264 ------------------------------------------------------------------------------

# profile_idc values whose SPS carries chroma_format_idc, bit depths and scaling lists
# (H.264 §7.3.2.1.1; 144 is the withdrawn High 4:4:4, still parsed by FFmpeg's decoder).
_H264_HIGH_PROFILES = {100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135, 144}
_H264_PROFILES = _H264_HIGH_PROFILES | {66, 77, 88}


def _check_nal(what: str, nal: bytes, expected_type: int, actual_type: int) -> None:
    if not nal:
        raise CodecError(f"{what} is empty")
    if nal[0] & 0x80:
        raise CodecError(f"{what} has forbidden_zero_bit set: not a NAL unit")
    if actual_type != expected_type:
        raise CodecError(f"expected an {what} (NAL unit type {expected_type}), "
                         f"got NAL unit type {actual_type}")


def _h264_scaling_list(r: _Bits, size: int) -> None:
    """Skips scaling_list() (H.264 §7.3.2.1.1.1): one delta_scale per coefficient until
    nextScale becomes 0 (the rest repeat the last scale, or it means the default list)."""
    next_scale = 8
    for _ in range(size):
        delta = r.se("delta_scale")
        if not -128 <= delta <= 127:
            raise CodecError(f"{r.what} has delta_scale = {delta}, outside -128..127")
        next_scale = (next_scale + delta + 256) % 256
        if next_scale == 0:
            return


def h264_parameters(sps: bytes, pps: bytes) -> VideoParameters:
    """Parameters of an H.264 stream from its SPS and PPS NAL units (no start codes)."""
    what = "H.264 SPS"
    _check_nal(what, sps, _H264_SPS, sps[0] & 0x1F if sps else -1)
    _check_nal("H.264 PPS", pps, _H264_PPS, pps[0] & 0x1F if pps else -1)
    r = _Bits(_rbsp(sps[1:]), what)
    # seq_parameter_set_data(), H.264 §7.3.2.1.1.
    profile_idc = r.u(8, "profile_idc")
    constraint_flags = r.u(8, "constraint_set_flags")  # constraint_set0..5 + 2 reserved
    level_idc = r.u(8, "level_idc")
    r.ue("seq_parameter_set_id", 31)
    if profile_idc not in _H264_PROFILES:
        raise CodecError(f"{what} has unknown profile_idc {profile_idc}; set the camera to "
                         f"the Baseline, Main or High profile")
    chroma_format_idc, bit_depth_luma, bit_depth_chroma = 1, 8, 8
    if profile_idc in _H264_HIGH_PROFILES:
        chroma_format_idc = r.ue("chroma_format_idc", 3)
        if chroma_format_idc == 3 and r.flag("separate_colour_plane_flag"):
            raise CodecError(f"{what} has separate_colour_plane_flag set, which nvr doesn't "
                             f"support; set the camera to 4:2:0 video")
        bit_depth_luma = 8 + r.ue("bit_depth_luma_minus8", 6)
        bit_depth_chroma = 8 + r.ue("bit_depth_chroma_minus8", 6)
        r.flag("qpprime_y_zero_transform_bypass_flag")
        if r.flag("seq_scaling_matrix_present_flag"):
            for i in range(8 if chroma_format_idc != 3 else 12):
                if r.flag("seq_scaling_list_present_flag"):
                    _h264_scaling_list(r, 16 if i < 6 else 64)
    r.ue("log2_max_frame_num_minus4", 12)
    pic_order_cnt_type = r.ue("pic_order_cnt_type", 2)
    if pic_order_cnt_type == 0:
        r.ue("log2_max_pic_order_cnt_lsb_minus4", 12)
    elif pic_order_cnt_type == 1:
        r.flag("delta_pic_order_always_zero_flag")
        r.skip_se("offset_for_non_ref_pic", "offset_for_top_to_bottom_field")
        for _ in range(r.ue("num_ref_frames_in_pic_order_cnt_cycle", 255)):
            r.se("offset_for_ref_frame")
    r.ue("max_num_ref_frames")
    r.flag("gaps_in_frame_num_value_allowed_flag")
    width_mbs = r.ue("pic_width_in_mbs_minus1", 0xFFFF) + 1
    height_map_units = r.ue("pic_height_in_map_units_minus1", 0xFFFF) + 1
    frame_mbs_only = r.flag("frame_mbs_only_flag")
    if not frame_mbs_only:
        r.flag("mb_adaptive_frame_field_flag")
    r.flag("direct_8x8_inference_flag")
    crop = (0, 0, 0, 0)
    if r.flag("frame_cropping_flag"):
        crop = tuple(r.ue(f"frame_crop_{side}_offset", 0xFFFF)
                     for side in ("left", "right", "top", "bottom"))
    # Equations 7-18..7-22 and 7-13..7-17: a field-coded picture's map units are two
    # macroblocks tall, and crop offsets count chroma samples (of a field pair).
    fields = 1 if frame_mbs_only else 2
    if chroma_format_idc == 0:  # monochrome: ChromaArrayType 0
        crop_unit_x, crop_unit_y = 1, fields
    else:
        sub_width_c, sub_height_c = {1: (2, 2), 2: (2, 1), 3: (1, 1)}[chroma_format_idc]
        crop_unit_x, crop_unit_y = sub_width_c, sub_height_c * fields
    width = width_mbs * 16 - crop_unit_x * (crop[0] + crop[1])
    height = fields * height_map_units * 16 - crop_unit_y * (crop[2] + crop[3])
    _check_size(what, width, height)

    sar, frame_rate = None, None
    if r.flag("vui_parameters_present_flag"):
        sar = _vui_start(r, lenient=True)  # vui_parameters(), H.264 §E.1.1, to timing
        if r.flag("timing_info_present_flag"):
            num_units_in_tick = r.u(32, "num_units_in_tick")
            time_scale = r.u(32, "time_scale")
            if num_units_in_tick and time_scale and not r.overread:
                # One frame is two ticks (field-based clock, equation E-6 / C-1).
                frame_rate = Fraction(time_scale, 2 * num_units_in_tick)
    pasp = sar or default_pixel_aspect_ratio(width, height)

    # AVCDecoderConfigurationRecord, ISO/IEC 14496-15 §5.3.3.1.1:
    #   u8   configurationVersion = 1
    #   u8   AVCProfileIndication = profile_idc
    #   u8   profile_compatibility = the SPS byte holding constraint_set0..5_flag
    #   u8   AVCLevelIndication = level_idc
    #   u8   0b111111 reserved | lengthSizeMinusOne = 3             -> 0xff
    #   u8   0b111 reserved | numOfSequenceParameterSets = 1        -> 0xe1
    #   u16  sequenceParameterSetLength, then the SPS NAL unit as transmitted
    #   u8   numOfPictureParameterSets = 1
    #   u16  pictureParameterSetLength, then the PPS NAL unit
    # and for other than Baseline/Main/Extended (the spec says profiles 100, 110, 122
    # and 144; FFmpeg writes it for every profile but 66, 77, 88, and so do we):
    #   u8   0b111111 | chroma_format_idc
    #   u8   0b11111 | bit_depth_luma_minus8
    #   u8   0b11111 | bit_depth_chroma_minus8
    #   u8   numOfSequenceParameterSetExt = 0
    if len(sps) > 0xFFFF or len(pps) > 0xFFFF:
        raise CodecError("H.264 parameter set longer than 65535 bytes")
    avcc = (bytes([1, profile_idc, constraint_flags, level_idc, 0xFF, 0xE1])
            + _U16.pack(len(sps)) + sps + b"\x01" + _U16.pack(len(pps)) + pps)
    if profile_idc not in (66, 77, 88):
        avcc += bytes([0xFC | chroma_format_idc, 0xF8 | (bit_depth_luma - 8),
                       0xF8 | (bit_depth_chroma - 8), 0])
    return VideoParameters(
        codec="h264", width=width, height=height,
        pasp_h_spacing=pasp[0], pasp_v_spacing=pasp[1],
        # RFC 6381 §3.3 / 14496-15 Annex E: avc1.PPCCLL, hex of SPS bytes 1..3.
        rfc6381_codec=f"avc1.{profile_idc:02x}{constraint_flags:02x}{level_idc:02x}",
        sample_entry=_sample_entry(b"avc1", b"avcC", avcc, width, height, pasp),
        decoder_config=avcc, parameter_sets=(sps, pps), profile_idc=profile_idc,
        level_idc=level_idc, frame_rate=frame_rate)


# --- H.265 ------------------------------------------------------------------------------

@dataclasses.dataclass
class _H265ProfileTierLevel:
    profile_space: int
    tier_flag: int
    profile_idc: int
    compatibility_flags: int   # 32 bits, general_profile_compatibility_flag[0] first (MSB)
    constraint_flags: int      # the 48 bits from general_progressive_source_flag on
    level_idc: int


def _h265_profile_tier_level(r: _Bits, max_sub_layers_minus1: int) -> _H265ProfileTierLevel:
    """profile_tier_level(1, maxNumSubLayersMinus1), H.265 §7.3.3."""
    ptl = _H265ProfileTierLevel(
        profile_space=r.u(2, "general_profile_space"), tier_flag=r.u(1, "general_tier_flag"),
        profile_idc=r.u(5, "general_profile_idc"),
        compatibility_flags=r.u(32, "general_profile_compatibility_flag"),
        constraint_flags=r.u(48, "general constraint flags"),
        level_idc=r.u(8, "general_level_idc"))
    present = [(r.flag("sub_layer_profile_present_flag"), r.flag("sub_layer_level_present_flag"))
               for _ in range(max_sub_layers_minus1)]
    if max_sub_layers_minus1 > 0:
        r.u(2 * (8 - max_sub_layers_minus1), "reserved_zero_2bits")
    for profile_present, level_present in present:
        if profile_present:  # space, tier, idc, 32 compatibility flags, 48 constraint bits
            r.u(88, "sub_layer profile")
        if level_present:
            r.u(8, "sub_layer_level_idc")
    return ptl


def _h265_scaling_list_data(r: _Bits) -> None:
    """Skips scaling_list_data(), H.265 §7.3.4."""
    for size_id in range(4):
        for _matrix_id in range(0, 6, 3 if size_id == 3 else 1):
            if not r.flag("scaling_list_pred_mode_flag"):
                r.ue("scaling_list_pred_matrix_id_delta")
                continue
            if size_id > 1:
                r.se("scaling_list_dc_coef_minus8")
            for _ in range(min(64, 1 << (4 + (size_id << 1)))):
                r.se("scaling_list_delta_coef")


def _h265_st_ref_pic_set(r: _Bits, idx: int, sets: list[tuple[list[int], list[int]]]) -> None:
    """Reads st_ref_pic_set(idx) of an SPS (H.265 §7.3.7) and appends its POC deltas
    (DeltaPocS0, DeltaPocS1) to `sets`: the next set may be predicted from this one, and
    how many flags that prediction reads depends on them."""
    if idx and r.flag("inter_ref_pic_set_prediction_flag"):
        ref_s0, ref_s1 = sets[idx - 1]  # in an SPS, delta_idx_minus1 is absent (0)
        sign = r.u(1, "delta_rps_sign")
        delta_rps = (1 - 2 * sign) * (r.ue("abs_delta_rps_minus1", 0x7FFF) + 1)
        # use_delta_flag, inferred 1 when used_by_curr_pic_flag is 1, for each of the
        # reference set's S0 and S1 entries, then for the reference picture itself.
        use = [r.flag("used_by_curr_pic_flag") or r.flag("use_delta_flag")
               for _ in range(len(ref_s0) + len(ref_s1) + 1)]
        use_s0, use_s1, use_self = use[:len(ref_s0)], use[len(ref_s0):-1], use[-1]
        # Equations 7-61 and 7-62, in their order; an entry landing on POC 0 is dropped
        # (as FFmpeg's CBS does; HM and FFmpeg's decoder count it, conforming streams
        # don't have one).
        s0 = [d + delta_rps for d, u in reversed(list(zip(ref_s1, use_s1)))
              if u and d + delta_rps < 0]
        s0 += [delta_rps] if delta_rps < 0 and use_self else []
        s0 += [d + delta_rps for d, u in zip(ref_s0, use_s0) if u and d + delta_rps < 0]
        s1 = [d + delta_rps for d, u in reversed(list(zip(ref_s0, use_s0)))
              if u and d + delta_rps > 0]
        s1 += [delta_rps] if delta_rps > 0 and use_self else []
        s1 += [d + delta_rps for d, u in zip(ref_s1, use_s1) if u and d + delta_rps > 0]
        sets.append((s0, s1))
        return
    num_negative = r.ue("num_negative_pics", 16)
    num_positive = r.ue("num_positive_pics", 16)
    s0, s1, poc = [], [], 0
    for _ in range(num_negative):
        poc -= r.ue("delta_poc_s0_minus1", 0x7FFF) + 1
        r.flag("used_by_curr_pic_s0_flag")
        s0.append(poc)
    poc = 0
    for _ in range(num_positive):
        poc += r.ue("delta_poc_s1_minus1", 0x7FFF) + 1
        r.flag("used_by_curr_pic_s1_flag")
        s1.append(poc)
    sets.append((s0, s1))


def _h265_hrd_parameters(r: _Bits, max_sub_layers_minus1: int) -> None:
    """Skips hrd_parameters(1, maxNumSubLayersMinus1), H.265 §E.2.2."""
    nal_hrd = r.flag("nal_hrd_parameters_present_flag")
    vcl_hrd = r.flag("vcl_hrd_parameters_present_flag")
    sub_pic = False
    if nal_hrd or vcl_hrd:
        sub_pic = r.flag("sub_pic_hrd_params_present_flag")
        if sub_pic:
            r.u(19, "tick_divisor_minus2 .. dpb_output_delay_du_length_minus1")
        r.u(8, "bit_rate_scale, cpb_size_scale")
        if sub_pic:
            r.u(4, "cpb_size_du_scale")
        r.u(15, "initial_cpb_removal_delay_length_minus1 .. dpb_output_delay_length_minus1")
    for _ in range(max_sub_layers_minus1 + 1):
        # fixed_pic_rate_within_cvs_flag is inferred to be 1 when the general flag is
        # (§E.3.2). FFmpeg's hvcC writer reads it anyway; its decoder and CBS don't.
        if r.flag("fixed_pic_rate_general_flag") or r.flag("fixed_pic_rate_within_cvs_flag"):
            r.ue("elemental_duration_in_tc_minus1")
            low_delay = False
        else:
            low_delay = r.flag("low_delay_hrd_flag")
        cpb_cnt = 1 if low_delay else r.ue("cpb_cnt_minus1", 31) + 1
        for _ in range(cpb_cnt * (nal_hrd + vcl_hrd)):  # sub_layer_hrd_parameters(), §E.2.3
            r.skip_ue("bit_rate_value_minus1", "cpb_size_value_minus1")
            if sub_pic:
                r.skip_ue("cpb_size_du_value_minus1", "bit_rate_du_value_minus1")
            r.flag("cbr_flag")


@dataclasses.dataclass
class _H265Sps:
    max_sub_layers_minus1: int
    temporal_id_nesting_flag: int
    ptl: _H265ProfileTierLevel
    chroma_format_idc: int
    bit_depth_luma_minus8: int
    bit_depth_chroma_minus8: int
    width: int
    height: int
    sar: tuple[int, int] | None = None
    frame_rate: Fraction | None = None
    min_spatial_segmentation_idc: int = 0


def _h265_sps(sps: bytes) -> _H265Sps:
    what = "H.265 SPS"
    r = _Bits(_rbsp(sps[2:]), what)
    # seq_parameter_set_rbsp(), H.265 §7.3.2.2.1.
    r.u(4, "sps_video_parameter_set_id")
    max_sub_layers_minus1 = r.u(3, "sps_max_sub_layers_minus1")
    if max_sub_layers_minus1 > 6:
        raise CodecError(f"{what} has sps_max_sub_layers_minus1 = {max_sub_layers_minus1}, "
                         f"more than 6")
    temporal_id_nesting_flag = r.u(1, "sps_temporal_id_nesting_flag")
    ptl = _h265_profile_tier_level(r, max_sub_layers_minus1)
    r.ue("sps_seq_parameter_set_id", 15)
    chroma_format_idc = r.ue("chroma_format_idc", 3)
    if chroma_format_idc == 3 and r.flag("separate_colour_plane_flag"):
        raise CodecError(f"{what} has separate_colour_plane_flag set, which nvr doesn't "
                         f"support; set the camera to 4:2:0 video")
    pic_width = r.ue("pic_width_in_luma_samples", 0xFFFF)
    pic_height = r.ue("pic_height_in_luma_samples", 0xFFFF)
    window = (0, 0, 0, 0)
    if r.flag("conformance_window_flag"):
        window = tuple(r.ue(f"conf_win_{side}_offset", 0xFFFF)
                       for side in ("left", "right", "top", "bottom"))
    # Offsets count chroma samples: SubWidthC, SubHeightC of Table 6-1.
    sub_width_c, sub_height_c = {0: (1, 1), 1: (2, 2), 2: (2, 1), 3: (1, 1)}[chroma_format_idc]
    width = pic_width - sub_width_c * (window[0] + window[1])
    height = pic_height - sub_height_c * (window[2] + window[3])
    _check_size(what, width, height)
    s = _H265Sps(max_sub_layers_minus1, temporal_id_nesting_flag, ptl, chroma_format_idc,
                 r.ue("bit_depth_luma_minus8", 8), r.ue("bit_depth_chroma_minus8", 8),
                 width, height)
    log2_max_poc_lsb = r.ue("log2_max_pic_order_cnt_lsb_minus4", 12) + 4
    ordering_info_all = r.flag("sps_sub_layer_ordering_info_present_flag")
    for _ in range(max_sub_layers_minus1 + 1 if ordering_info_all else 1):
        r.skip_ue("sps_max_dec_pic_buffering_minus1", "sps_max_num_reorder_pics",
                  "sps_max_latency_increase_plus1")
    r.skip_ue("log2_min_luma_coding_block_size_minus3",
              "log2_diff_max_min_luma_coding_block_size",
              "log2_min_luma_transform_block_size_minus2",
              "log2_diff_max_min_luma_transform_block_size",
              "max_transform_hierarchy_depth_inter", "max_transform_hierarchy_depth_intra")
    if r.flag("scaling_list_enabled_flag") and r.flag("sps_scaling_list_data_present_flag"):
        _h265_scaling_list_data(r)
    r.flag("amp_enabled_flag")
    r.flag("sample_adaptive_offset_enabled_flag")
    if r.flag("pcm_enabled_flag"):
        r.u(8, "pcm_sample_bit_depth_luma_minus1, pcm_sample_bit_depth_chroma_minus1")
        r.skip_ue("log2_min_pcm_luma_coding_block_size_minus3",
                  "log2_diff_max_min_pcm_luma_coding_block_size")
        r.flag("pcm_loop_filter_disabled_flag")
    ref_pic_sets: list[tuple[list[int], list[int]]] = []
    for i in range(r.ue("num_short_term_ref_pic_sets", 64)):
        _h265_st_ref_pic_set(r, i, ref_pic_sets)
    if r.flag("long_term_ref_pics_present_flag"):
        for _ in range(r.ue("num_long_term_ref_pics_sps", 32)):
            r.u(log2_max_poc_lsb, "lt_ref_pic_poc_lsb_sps")
            r.flag("used_by_curr_pic_lt_sps_flag")
    r.flag("sps_temporal_mvp_enabled_flag")
    r.flag("strong_intra_smoothing_enabled_flag")
    if not r.flag("vui_parameters_present_flag"):
        return s
    s.sar = _vui_start(r, lenient=False)  # H.265 §E.2.1, as far as bitstream_restriction
    r.u(3, "neutral_chroma_indication_flag, field_seq_flag, frame_field_info_present_flag")
    if r.flag("default_display_window_flag"):
        r.skip_ue("def_disp_win_left_offset", "def_disp_win_right_offset",
                  "def_disp_win_top_offset", "def_disp_win_bottom_offset")
    if r.flag("vui_timing_info_present_flag"):
        num_units_in_tick = r.u(32, "vui_num_units_in_tick")
        time_scale = r.u(32, "vui_time_scale")
        if num_units_in_tick and time_scale and not r.overread:
            s.frame_rate = Fraction(time_scale, num_units_in_tick)  # equation E-53
        if r.flag("vui_poc_proportional_to_timing_flag"):
            r.ue("vui_num_ticks_poc_diff_one_minus1")
        if r.flag("vui_hrd_parameters_present_flag"):
            _h265_hrd_parameters(r, max_sub_layers_minus1)
    if r.flag("bitstream_restriction_flag"):
        r.u(3, "tiles_fixed_structure_flag .. restricted_ref_pic_lists_flag")
        value = r.ue("min_spatial_segmentation_idc")
        s.min_spatial_segmentation_idc = value if value < 4096 else 0  # invalid: unspecified
    return s


def _h265_vps(vps: bytes) -> tuple[int, _H265ProfileTierLevel]:
    """(vps_max_sub_layers_minus1, profile_tier_level) of a VPS, H.265 §7.3.2.1."""
    r = _Bits(_rbsp(vps[2:]), "H.265 VPS")
    r.u(12, "vps_video_parameter_set_id .. vps_max_layers_minus1")
    max_sub_layers_minus1 = r.u(3, "vps_max_sub_layers_minus1")
    if max_sub_layers_minus1 > 6:
        raise CodecError("H.265 VPS has vps_max_sub_layers_minus1 = 7, more than 6")
    r.u(17, "vps_temporal_id_nesting_flag, vps_reserved_0xffff_16bits")
    return max_sub_layers_minus1, _h265_profile_tier_level(r, max_sub_layers_minus1)


def _h265_parallelism_type(pps: bytes) -> int:
    """hvcC parallelismType from a PPS (H.265 §7.3.2.3.1): 0 mixed, 1 slices, 2 tiles,
    3 wavefronts (entropy coding sync)."""
    r = _Bits(_rbsp(pps[2:]), "H.265 PPS")
    r.ue("pps_pic_parameter_set_id", 63)
    r.ue("pps_seq_parameter_set_id", 15)
    r.u(7, "dependent_slice_segments_enabled_flag .. cabac_init_present_flag")
    r.skip_ue("num_ref_idx_l0_default_active_minus1", "num_ref_idx_l1_default_active_minus1")
    r.se("init_qp_minus26")
    r.u(2, "constrained_intra_pred_flag, transform_skip_enabled_flag")
    if r.flag("cu_qp_delta_enabled_flag"):
        r.ue("diff_cu_qp_delta_depth")
    r.skip_se("pps_cb_qp_offset", "pps_cr_qp_offset")
    r.u(4, "pps_slice_chroma_qp_offsets_present_flag .. transquant_bypass_enabled_flag")
    tiles = r.flag("tiles_enabled_flag")
    wavefronts = r.flag("entropy_coding_sync_enabled_flag")
    return {(True, True): 0, (False, False): 1, (True, False): 2, (False, True): 3}[
        tiles, wavefronts]


# HEVCDecoderConfigurationRecord, ISO/IEC 14496-15 §8.3.3.1.2:
#   u8   configurationVersion = 1
#   u8   general_profile_space (2) | general_tier_flag (1) | general_profile_idc (5)
#   u32  general_profile_compatibility_flags
#   6s   general_constraint_indicator_flags (48 bits)
#   u8   general_level_idc
#   u16  0b1111 reserved | min_spatial_segmentation_idc (12)
#   u8   0b111111 | parallelismType (2)
#   u8   0b111111 | chromaFormat (2) = chroma_format_idc
#   u8   0b11111 | bitDepthLumaMinus8 (3)
#   u8   0b11111 | bitDepthChromaMinus8 (3)
#   u16  avgFrameRate = 0 (unspecified)
#   u8   constantFrameRate (2) = 0 | numTemporalLayers (3) | temporalIdNested (1)
#        | lengthSizeMinusOne (2) = 3
#   u8   numOfArrays = 3
# then for each of VPS, SPS, PPS:
#   u8   array_completeness (1) = 1 (hvc1: all parameter sets are here) | 0 (1)
#        | NAL_unit_type (6)
#   u16  numNalus = 1
#   u16  nalUnitLength, then the NAL unit as transmitted
_HVCC_HEADER = struct.Struct(">BBI6sBHBBBBHBB")
assert _HVCC_HEADER.size == 23


def h265_parameters(vps: bytes, sps: bytes, pps: bytes) -> VideoParameters:
    """Parameters of an H.265 stream from its VPS, SPS and PPS NAL units (no start codes)."""
    for what, nal, expected in (("H.265 VPS", vps, _H265_VPS), ("H.265 SPS", sps, _H265_SPS),
                                ("H.265 PPS", pps, _H265_PPS)):
        _check_nal(what, nal, expected, (nal[0] >> 1) & 0x3F if nal else -1)
        if len(nal) < 3:
            raise CodecError(f"{what} is truncated: {len(nal)} bytes")
        if len(nal) > 0xFFFF:
            raise CodecError(f"{what} is longer than 65535 bytes")
    vps_max_sub_layers_minus1, vps_ptl = _h265_vps(vps)
    s = _h265_sps(sps)

    # Profile, tier and level as FFmpeg's hvcc_update_ptl merges them over the VPS and
    # then the SPS (14496-15 §8.3.3.1.3: flags only if every parameter set has them;
    # the highest tier, its highest level; the profile to which the stream conforms).
    ptl = _H265ProfileTierLevel(0, 0, 0, 0xFFFF_FFFF, 0xFFFF_FFFF_FFFF, 0)
    for p in (vps_ptl, s.ptl):
        ptl.profile_space = p.profile_space
        ptl.level_idc = p.level_idc if ptl.tier_flag < p.tier_flag else max(ptl.level_idc,
                                                                               p.level_idc)
        ptl.tier_flag = max(ptl.tier_flag, p.tier_flag)
        ptl.profile_idc = max(ptl.profile_idc, p.profile_idc)
        ptl.compatibility_flags &= p.compatibility_flags
        ptl.constraint_flags &= p.constraint_flags
    parallelism_type = _h265_parallelism_type(pps) if s.min_spatial_segmentation_idc else 0
    num_temporal_layers = max(vps_max_sub_layers_minus1, s.max_sub_layers_minus1) + 1

    header = _HVCC_HEADER.pack(
        1, ptl.profile_space << 6 | ptl.tier_flag << 5 | ptl.profile_idc,
        ptl.compatibility_flags, ptl.constraint_flags.to_bytes(6, "big"), ptl.level_idc,
        0xF000 | s.min_spatial_segmentation_idc, 0xFC | parallelism_type,
        0xFC | s.chroma_format_idc, 0xF8 | s.bit_depth_luma_minus8,
        0xF8 | s.bit_depth_chroma_minus8, 0,
        num_temporal_layers << 3 | s.temporal_id_nesting_flag << 2 | 3, 3)
    hvcc = header + b"".join(bytes([0x80 | t]) + _U16.pack(1) + _U16.pack(len(nal)) + nal
                             for t, nal in ((_H265_VPS, vps), (_H265_SPS, sps),
                                            (_H265_PPS, pps)))

    # RFC 6381 string, ISO/IEC 14496-15 Annex E.3: hvc1.[A|B|C]<profile_idc>.<the 32
    # compatibility flags bit-reversed, hex>.<L|H><level_idc>.<constraint bytes, hex,
    # trailing zero bytes dropped>. Main, level 3.1, progressive: hvc1.1.6.L93.B0.
    reversed_compat = int(f"{ptl.compatibility_flags:032b}"[::-1], 2)
    constraint_bytes = ptl.constraint_flags.to_bytes(6, "big").rstrip(b"\x00")
    rfc6381 = (f"hvc1.{['', 'A', 'B', 'C'][ptl.profile_space]}{ptl.profile_idc}"
               f".{reversed_compat:X}.{'LH'[ptl.tier_flag]}{ptl.level_idc}"
               + "".join(f".{b:02X}" for b in constraint_bytes))

    pasp = s.sar or default_pixel_aspect_ratio(s.width, s.height)
    return VideoParameters(
        codec="h265", width=s.width, height=s.height,
        pasp_h_spacing=pasp[0], pasp_v_spacing=pasp[1], rfc6381_codec=rfc6381,
        sample_entry=_sample_entry(b"hvc1", b"hvcC", hvcc, s.width, s.height, pasp),
        decoder_config=hvcc, parameter_sets=(vps, sps, pps), profile_idc=ptl.profile_idc,
        level_idc=ptl.level_idc, frame_rate=s.frame_rate)


# --- Entry points from PyAV ---------------------------------------------------------------

def _from_nal_units(codec: str, nals: list[bytes]) -> VideoParameters | None:
    """Parameters from the first parameter set of each kind, or None if one is missing."""
    wanted = (_H264_SPS, _H264_PPS) if codec == "h264" else (_H265_VPS, _H265_SPS, _H265_PPS)
    found: dict[int, bytes] = {}
    for nal in nals:
        if nal:
            found.setdefault(nal_type(codec, nal), nal)
    if not all(t in found for t in wanted):
        return None
    sets = [found[t] for t in wanted]
    return h264_parameters(*sets) if codec == "h264" else h265_parameters(*sets)


def _config_record_nal_units(codec: str, record: bytes) -> list[bytes]:
    """The NAL units in an avcC (14496-15 §5.3.3.1) or hvcC (§8.3.3.1) record."""
    nals, pos = [], 0

    def take(n: int) -> bytes:
        nonlocal pos
        if pos + n > len(record):
            raise CodecError(f"{'avcC' if codec == 'h264' else 'hvcC'} extradata is "
                             f"truncated at byte {pos}")
        pos += n
        return record[pos - n:pos]

    def take_nal_units(count: int) -> None:
        for _ in range(count):
            nals.append(take(_U16.unpack(take(2))[0]))

    if codec == "h264":  # 5 fixed bytes; SPS count (& 0x1f), SPSs; PPS count, PPSs
        take(5)
        take_nal_units(take(1)[0] & 0x1F)
        take_nal_units(take(1)[0])
    else:  # 22 fixed bytes; numOfArrays; each: type byte, u16 count, NAL units
        take(22)
        for _ in range(take(1)[0]):
            take(1)
            take_nal_units(_U16.unpack(take(2))[0])
    return nals


def parameters_from_extradata(codec: str, extradata: bytes) -> VideoParameters:
    """Parameters from a stream's codec extradata: Annex B parameter sets (what PyAV's
    RTSP demuxer builds from the SDP's sprop-parameter-sets) or an avcC/hvcC record
    (what it reads from an mp4). `codec` is "h264" or "h265" (also PyAV's "hevc")."""
    codec = _codec_name(codec)
    if not extradata:
        raise CodecError(f"{codec} stream has no extradata (no sprop-parameter-sets in the "
                         f"camera's SDP); take the parameters from the first key frame")
    if extradata[0] == 1:  # configurationVersion; Annex B starts with 00
        nals = _config_record_nal_units(codec, extradata)
    elif extradata.startswith((b"\x00\x00\x01", b"\x00\x00\x00\x01")):
        nals = split_annexb(extradata)
    else:
        raise CodecError(f"{codec} extradata is neither Annex B nor a decoder "
                         f"configuration record (starts with {extradata[:4].hex()})")
    params = _from_nal_units(codec, nals)
    if params is None:
        needed = "an SPS and a PPS" if codec == "h264" else "a VPS, an SPS and a PPS"
        raise CodecError(f"{codec} extradata lacks {needed}")
    return params


def parameters_from_sample_entry(entry: bytes) -> VideoParameters:
    """Parameters from a stored avc1/hvc1 (or hev1) sample entry (`video_sample_entry.data`,
    as `_sample_entry` builds it, or Moonfire's): its avcC/hvcC record parsed again, e.g.
    for the SPS's frame rate (system.py). CodecError if it holds none."""
    entry_type = entry[4:8]
    codec = {b"avc1": "h264", b"avc3": "h264", b"hvc1": "h265", b"hev1": "h265"}.get(entry_type)
    if codec is None:
        raise CodecError(f"not an H.264/H.265 sample entry: {entry_type!r}")
    pos = _VISUAL_SAMPLE_ENTRY.size
    while pos + 8 <= len(entry):  # the child boxes (14496-12 §4.2)
        size, box_type = _U32.unpack_from(entry, pos)[0], entry[pos + 4:pos + 8]
        if size < 8 or pos + size > len(entry):
            break
        if box_type in (b"avcC", b"hvcC"):
            return parameters_from_extradata(codec, entry[pos + 8:pos + size])
        pos += size
    raise CodecError(f"{entry_type.decode()} sample entry has no avcC/hvcC box")


def parameters_from_frame(codec: str, data: bytes) -> VideoParameters | None:
    """Parameters from the parameter sets carried in an access unit (Annex B or 4-byte
    length-prefixed), or None if it doesn't carry a complete set."""
    codec = _codec_name(codec)
    return _from_nal_units(codec, _any_nal_units(data))
