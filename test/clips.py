"""Small H.264/H.265 clips made at test time with PyAV (no files in the repo).

`make_clip` encodes a moving bar on a grey field: every frame differs, so
decoders and hashes see real content; no B-frames, a fixed GOP.
"""

import av


def make_clip(path: str, *, encoder: str = "libx264", width: int = 320, height: int = 180,
              fps: int = 30, frames: int = 90, gop: int = 30, fmt: str = "mp4") -> str:
    out = av.open(path, "w", format=fmt)
    s = out.add_stream(encoder, rate=fps)
    s.width, s.height, s.pix_fmt = width, height, "yuv420p"
    if encoder == "libx265":
        s.options = {"x265-params": f"keyint={gop}:min-keyint={gop}:bframes=0:scenecut=0:log-level=error",
                     "preset": "ultrafast"}
    else:
        s.options = {"g": str(gop), "keyint_min": str(gop), "bf": "0", "preset": "ultrafast",
                     "sc_threshold": "0"}
    for i in range(frames):
        f = av.VideoFrame(width, height, "yuv420p")
        y = bytearray(b"\x80" * (f.planes[0].line_size * height))
        x = (i * 4) % max(1, width - 8)
        for row in range(height):
            off = row * f.planes[0].line_size + x
            y[off:off + 8] = b"\xff" * 8
        f.planes[0].update(bytes(y))
        for p in f.planes[1:]:
            p.update(b"\x80" * (p.line_size * (height // 2)))
        f.pts = i
        for pkt in s.encode(f):
            out.mux(pkt)
    for pkt in s.encode():
        out.mux(pkt)
    out.close()
    return path
