"""Frozen H.264 helpers for the upgrade steps: the avc1 sample entry layout
and just enough of the SPS to find the pixel aspect ratio.

stream.py owns H.264 for recording; this copy exists so the 1->2 and 5->6
steps never change meaning.

The `video_sample_entry.data` blobs of schema 0-5 are always exactly an
`avc1` VisualSampleEntry (ISO/IEC 14496-12 §8.5.2, 14496-15 §5.4.2) holding
one `avcC` box and nothing after it:

    offset  size  field
         0     4  box size (= len(data))
         4     4  "avc1"
         8     6  reserved
        14     2  data_reference_index
        16    16  pre_defined / reserved
        32     2  width
        34     2  height
        36    50  resolutions, frame_count, compressorname, depth, pre_defined
        86     4  avcC box size (= len(data) - 86)
        90     4  "avcC"
        94     .  AVCDecoderConfigurationRecord (14496-15 §5.3.3.1):
                  version, profile_idc, constraint flags, level_idc,
                  length size, SPS count + (u16 length, SPS)*, PPS count + ...

The SPS (ITU-T H.264 §7.3.2.1.1) is parsed up to `aspect_ratio_info` in its
VUI (§E.1.1); `aspect_ratio_idc` indexes Table E-1, or 255 (Extended_SAR) is
followed by explicit 16-bit width and height.
"""

from __future__ import annotations

import struct

AVC1_HEADER_LEN = 86


class H264Error(ValueError):
    pass


def rfc6381_codec(data: bytes) -> str:
    """`avc1.PPCCLL`: profile_idc, constraint flags and level_idc of the first SPS.

    Bytes 103-105 are those of the first SPS (after the avcC record's 6-byte
    header, the SPS's 2-byte length and its 1-byte NAL header), as Moonfire's
    1->2 step reads them.
    """
    if len(data) < 106 or data[4:8] != b"avc1" or data[90:94] != b"avcC":
        raise H264Error(f"{len(data)}-byte sample entry is not an avc1 box with an avcC")
    return f"avc1.{data[103]:02x}{data[104]:02x}{data[105]:02x}"


def avcc_record(data: bytes) -> bytes:
    """The AVCDecoderConfigurationRecord of an avc1 box that ends with its avcC."""
    if len(data) < 94 or data[4:8] != b"avc1" or data[90:94] != b"avcC":
        raise H264Error(f"{len(data)}-byte sample entry is not an avc1 box with an avcC")
    (box_len,) = struct.unpack(">I", data[0:4])
    (avcc_len,) = struct.unpack(">I", data[86:90])
    if box_len != len(data):
        raise H264Error(f"avc1 box says it is {box_len} bytes; the blob is {len(data)}")
    if avcc_len < 8 + 7 or AVC1_HEADER_LEN + avcc_len != len(data):
        raise H264Error(f"avcC box of {avcc_len} bytes doesn't end the {len(data)}-byte entry")
    return data[94:]


def sps_list(avcc: bytes) -> list[bytes]:
    """The SPS NAL units (with their 1-byte header) of an avcC record."""
    if avcc[0] != 1:
        raise H264Error(f"avcC configurationVersion {avcc[0]}, expected 1")
    n = avcc[5] & 0x1F
    pos = 6
    out = []
    for _ in range(n):
        if pos + 2 > len(avcc):
            raise H264Error("truncated avcC")
        (ln,) = struct.unpack(">H", avcc[pos:pos + 2])
        pos += 2
        if pos + ln > len(avcc):
            raise H264Error("truncated SPS in avcC")
        out.append(avcc[pos:pos + ln])
        pos += ln
    return out


def unescape_rbsp(nal_payload: bytes) -> bytes:
    """Removes emulation prevention bytes: 00 00 03 -> 00 00 (§7.4.1)."""
    out = bytearray()
    zeros = 0
    for b in nal_payload:
        if zeros >= 2 and b == 3:
            zeros = 0
            continue
        out.append(b)
        zeros = zeros + 1 if b == 0 else 0
    return bytes(out)


class _Bits:
    """A big-endian bit reader with Exp-Golomb codes (§9.1)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0  # in bits

    def u(self, n: int) -> int:
        v = 0
        for _ in range(n):
            byte = self.pos >> 3
            if byte >= len(self.data):
                raise H264Error("SPS ends early")
            v = (v << 1) | ((self.data[byte] >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        return v

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > 31:
                raise H264Error("Exp-Golomb code too long")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k & 1 else -(k // 2)


# Table E-1: aspect_ratio_idc -> (h, v) sample aspect ratio. 0 is "unspecified",
# 17-254 are reserved, 255 is Extended_SAR.
_SAR_TABLE = {
    1: (1, 1), 2: (12, 11), 3: (10, 11), 4: (16, 11), 5: (40, 33), 6: (24, 11),
    7: (20, 11), 8: (32, 11), 9: (80, 33), 10: (18, 11), 11: (15, 11), 12: (64, 33),
    13: (160, 99), 14: (4, 3), 15: (3, 2), 16: (2, 1),
}
_EXTENDED_SAR = 255

# Profiles whose SPS carries chroma_format_idc etc. (§7.3.2.1.1).
_HIGH_PROFILES = {100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135}


def _skip_scaling_list(r: _Bits, size: int) -> None:
    last, nxt = 8, 8
    for _ in range(size):
        if nxt != 0:
            nxt = (last + r.se() + 256) % 256
        last = nxt if nxt != 0 else last


def sps_aspect_ratio(sps: bytes) -> tuple[int, int] | None:
    """The SPS's VUI sample aspect ratio, or None if it doesn't state one."""
    if not sps or sps[0] & 0x1F != 7:
        raise H264Error("not an SPS NAL unit")
    r = _Bits(unescape_rbsp(sps[1:]))
    profile_idc = r.u(8)
    r.u(8)  # constraint_set flags, reserved_zero_2bits
    r.u(8)  # level_idc
    r.ue()  # seq_parameter_set_id
    if profile_idc in _HIGH_PROFILES:
        chroma_format_idc = r.ue()
        if chroma_format_idc == 3:
            r.u(1)  # separate_colour_plane_flag
        r.ue()  # bit_depth_luma_minus8
        r.ue()  # bit_depth_chroma_minus8
        r.u(1)  # qpprime_y_zero_transform_bypass_flag
        if r.u(1):  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma_format_idc != 3 else 12):
                if r.u(1):  # seq_scaling_list_present_flag[i]
                    _skip_scaling_list(r, 16 if i < 6 else 64)
    r.ue()  # log2_max_frame_num_minus4
    pic_order_cnt_type = r.ue()
    if pic_order_cnt_type == 0:
        r.ue()  # log2_max_pic_order_cnt_lsb_minus4
    elif pic_order_cnt_type == 1:
        r.u(1)  # delta_pic_order_always_zero_flag
        r.se()  # offset_for_non_ref_pic
        r.se()  # offset_for_top_to_bottom_field
        for _ in range(r.ue()):  # num_ref_frames_in_pic_order_cnt_cycle
            r.se()
    r.ue()  # max_num_ref_frames
    r.u(1)  # gaps_in_frame_num_value_allowed_flag
    r.ue()  # pic_width_in_mbs_minus1
    r.ue()  # pic_height_in_map_units_minus1
    if not r.u(1):  # frame_mbs_only_flag
        r.u(1)  # mb_adaptive_frame_field_flag
    r.u(1)  # direct_8x8_inference_flag
    if r.u(1):  # frame_cropping_flag
        for _ in range(4):
            r.ue()
    if not r.u(1):  # vui_parameters_present_flag
        return None
    if not r.u(1):  # aspect_ratio_info_present_flag
        return None
    idc = r.u(8)
    if idc == _EXTENDED_SAR:
        h, v = r.u(16), r.u(16)
        return (h, v) if h and v else None
    return _SAR_TABLE.get(idc)


# Pixel aspect ratios assumed when the SPS states none (reference §3.5): common
# anamorphic sub stream sizes of 16:9 cameras. Rotated (portrait) sizes get the
# reciprocal ratio.
DEFAULT_PIXEL_ASPECT_RATIOS = {
    (320, 240): (4, 3),
    (352, 240): (40, 33),
    (640, 352): (44, 45),
    (640, 480): (4, 3),
    (704, 480): (40, 33),
    (720, 480): (32, 27),
}


def default_pixel_aspect_ratio(width: int, height: int) -> tuple[int, int]:
    if (width, height) in DEFAULT_PIXEL_ASPECT_RATIOS:
        return DEFAULT_PIXEL_ASPECT_RATIOS[(width, height)]
    if (height, width) in DEFAULT_PIXEL_ASPECT_RATIOS:
        h, v = DEFAULT_PIXEL_ASPECT_RATIOS[(height, width)]
        return (v, h)
    return (1, 1)


def pasp_box(h_spacing: int, v_spacing: int) -> bytes:
    """A PixelAspectRatioBox (ISO/IEC 14496-12 §12.1.4.2): size, "pasp", h, v."""
    return struct.pack(">I4sII", 16, b"pasp", h_spacing, v_spacing)


def append_pasp(data: bytes, h_spacing: int, v_spacing: int) -> bytes:
    """The avc1 box with a pasp box appended after its avcC, size updated."""
    out = data + pasp_box(h_spacing, v_spacing)
    return struct.pack(">I", len(out)) + out[4:]
