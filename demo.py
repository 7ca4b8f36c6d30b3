"""The synthetic camera of `nvr.py run --demo`: a test pattern encoded locally.

What: `DemoOpener` is a `stream.Opener` whose sources encode a moving test
pattern with PyAV's libx264 instead of reading a camera. The frames go through
exactly the writer path a real camera's do (`stream.Streamer.run_once` ->
writer.py -> sample files), so a newcomer sees recording, listing and playback
without owning a camera, and a developer can exercise the whole pipeline on a
laptop.

How: `nvr.py run --demo` adds a camera named "demo" whose main stream has the
URL `demo:` and whose sub stream `demo:320x180@15`, and opens them through
`DemoOpener(clocks, shutdown=...)`. Any stream may have a demo URL (`nvr.py config
stream add CAMERA TYPE --url demo:...`). The URL may carry the size and rate:

    demo:                   the opener's defaults (640x360 at 15 frames/s)
    demo:WIDTHxHEIGHT       e.g. demo:1280x720
    demo:@FPS               e.g. demo:@30
    demo:WIDTHxHEIGHT@FPS   e.g. demo:640x360@15

Width and height are even (4:2:0 chroma), 64..4096 by 48..4096; FPS divides
90000 (so every frame lasts a whole number of 90 kHz ticks) and is 1..60.
Anything else raises `stream.StreamError` with a message saying so; the
streamer logs it as the run's end reason and retries each second, as it would
for a camera with a bad URL.

The picture (luma is drawn with bytes/bytearray operations; no numpy):
- the top two thirds: eight 75% colour bars (white, yellow, cyan, green,
  magenta, red, blue, black) scrolling right; the bottom third: a grey ramp
  scrolling left. Motion makes the encoder and the player do real work.
- a centred box with the frame's wall time as a large `HH:MM:SS` in the
  server's zone (`recording.server_zone()`) and the date below it;
- the frame number (`#N`, counted from the open) in a box at the top left.
Text uses the 5x7 bitmap font `FONT_5X7`, scaled up; `Layout` says where it
goes, and `text_mask` gives the pixels (tests compare decoded frames with it).

The bitstream: libx264, preset ultrafast, tune zerolatency (no lookahead, one
packet out per frame in), no B-frames, a key frame every `gop_sec * fps`
frames exactly (keyint = min-keyint, no scene cut), yuv420p, constrained
baseline. Global header is off, so x264 writes Annex B with the SPS and PPS in
band before every key frame, as most cameras do. `open` encodes the first
frame (a key frame) at once and takes `parameters` from its SPS/PPS with
codec.py; `codec.to_length_prefixed` converts each packet to the 4-byte
length-prefixed form of `stream.Frame.data`.

Time rules (a real camera's, reference §3.4):
- Frame i is captured at its due time, the monotonic time of the open plus
  i/fps seconds (rounded up to a whole ns, so 90 kHz conversions, which round
  down, land exactly on frame boundaries), and delivered when frame i+1 is
  captured: a camera can't send a frame before its interval is over, and
  writer.py takes a frame's arrival as the end of its duration. The source
  sleeps until each due time with `clocks.wait(shutdown, ...)` (prompt
  shutdown) or, without `shutdown`, `clocks.sleep`. Frame 0 is captured in
  `open`.
- pts_90k = i * 90000/fps exactly: the demo camera's clock is the monotonic
  clock, as a real camera's is its own crystal. So a demo recording's wall
  duration equals its media duration, and it starts at the session's open.
- The time drawn is `clocks.realtime()` when the frame is captured (after the
  sleep): the picture's clock matches the recording's timeline to within the
  pacing error (about a millisecond).
- If the source falls more than `MAX_LAG_SEC` behind (the machine was
  suspended or starved), it ends the session with a `StreamError` rather than
  burst-encoding the backlog; the streamer reopens. Smaller lags are caught up
  by encoding without sleeping.
- When `shutdown` is set during a sleep, `frames()` ends without delivering
  the frame in hand.

Cost (measured on the development box, 2 cores, PyAV 18.1 / x264 core 165, at
640x360 and 15 frames/s): paced in real time, 2.1 ms of CPU per frame (3% of
one core); encoding back to back, 1.2-1.5 ms per frame, of which drawing is
0.2-0.3 ms. 1280x720 at 30 frames/s costs ~15% of a core. x264 runs one
thread (`thread_count = 1`): its sliced threads measured 1.9 ms per frame back
to back at 640x360, more CPU for nothing at this size.

Neighbours: stream.py owns the `Opener`/`Source`/`Frame` seam and the
streamer loop; codec.py parses the parameter sets; clock.py is the only
reader of the system clocks (this module takes a `Clocks`).
"""

from __future__ import annotations

import dataclasses
import datetime
import fractions
import logging
import re
import threading

import clock
import codec
import recording
import stream

logger = logging.getLogger(__name__)

MAX_LAG_SEC = 1.0
MIN_WIDTH, MIN_HEIGHT, MAX_SIZE = 64, 48, 4096
MAX_FPS = 60

# Limited-range BT.601 luma / chroma levels (ITU-R BT.601: Y 16..235, Cb/Cr 16..240).
_BLACK, _WHITE, _NEUTRAL = 16, 235, 128

# 75% colour bars as (Y, Cb, Cr), left to right: the usual 8-bit BT.601 values (the
# 100/0/75/0 bars of ITU-R BT.801).
_BARS = [(180, 128, 128),  # white
         (162, 44, 142),   # yellow
         (131, 156, 44),   # cyan
         (112, 72, 58),    # green
         (84, 184, 198),   # magenta
         (65, 100, 212),   # red
         (35, 212, 114),   # blue
         (16, 128, 128)]   # black

# A 5x7 bitmap font: for each character, seven rows, each five pixels wide as a
# string ('#' set, '.' clear). Digits follow the classic HD44780 LCD shapes.
FONT_5X7 = {
    "0": (".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."),
    "1": ("..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."),
    "2": (".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"),
    "3": ("#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###."),
    "4": ("...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."),
    "5": ("#####", "#....", "####.", "....#", "....#", "#...#", ".###."),
    "6": ("..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."),
    "7": ("#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."),
    "8": (".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."),
    "9": (".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."),
    ":": (".....", ".##..", ".##..", ".....", ".##..", ".##..", "....."),
    "-": (".....", ".....", ".....", "#####", ".....", ".....", "....."),
    "#": (".#.#.", ".#.#.", "#####", ".#.#.", "#####", ".#.#.", ".#.#."),
    " ": (".....",) * 7,
}
GLYPH_W, GLYPH_H = 5, 7
CELL_W = GLYPH_W + 1  # one column of space between characters


def text_width(text: str, scale: int) -> int:
    """Width in pixels of `text` drawn at `scale` (no space after the last glyph)."""
    return (len(text) * CELL_W - 1) * scale if text else 0


def text_mask(text: str, scale: int) -> list[bytes]:
    """The pixels of `text` at `scale`: 7*scale rows of `text_width` bytes, 1 where
    the glyph is lit, else 0. The drawing code paints exactly these pixels."""
    rows = []
    for r in range(GLYPH_H):
        bits = ".".join(FONT_5X7[c][r] for c in text)
        row = b"".join((b"\x01" if b == "#" else b"\x00") * scale for b in bits)
        rows.extend([row] * scale)
    return rows


@dataclasses.dataclass(frozen=True)
class Mode:
    width: int
    height: int
    fps: int


DEFAULT_MODE = Mode(640, 360, 15)   # what a bare `demo:` gets from nvr.py's DemoOpener

_URL_RE = re.compile(r"demo:(?:([0-9]+)x([0-9]+))?(?:@([0-9]+))?")
_URL_SYNTAX = "demo:[WIDTHxHEIGHT][@FPS], e.g. demo: or demo:640x360@15"


def check_mode(mode: Mode, what: str) -> Mode:
    """Returns `mode` if libx264 and the 90 kHz timeline can take it; else raises
    StreamError whose message starts with `what` (the URL) and says what is allowed."""
    w, h, fps = mode.width, mode.height, mode.fps
    if not (MIN_WIDTH <= w <= MAX_SIZE and MIN_HEIGHT <= h <= MAX_SIZE) or w % 2 or h % 2:
        raise stream.StreamError(
            f"{what}: size {w}x{h} is not allowed; width and height must be even, "
            f"width {MIN_WIDTH}..{MAX_SIZE} and height {MIN_HEIGHT}..{MAX_SIZE}")
    if not 1 <= fps <= MAX_FPS or 90_000 % fps:
        raise stream.StreamError(
            f"{what}: rate {fps} frames/s is not allowed; use 1..{MAX_FPS} frames/s "
            f"dividing 90000 (e.g. 5, 10, 15, 25, 30)")
    return mode


def parse_url(url: str, default: Mode) -> Mode:
    """The mode a `demo:` URL asks for; missing parts come from `default`."""
    m = _URL_RE.fullmatch(url)
    if m is None:
        raise stream.StreamError(f"{url!r} is not a demo URL; use {_URL_SYNTAX}")
    w, h, fps = m.groups()
    mode = Mode(int(w) if w else default.width, int(h) if h else default.height,
                int(fps) if fps else default.fps)
    return check_mode(mode, url)


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where the text goes. All coordinates are in luma pixels; boxes start on even
    ones so the chroma planes (half size) cover them exactly."""
    scale: int            # of the clock
    small_scale: int      # of the date and the frame number
    box: tuple[int, int, int, int]          # left, top, right, bottom of the clock's box
    clock_at: tuple[int, int]               # left, top of "HH:MM:SS"
    date_at: tuple[int, int]                # left, top of "YYYY-MM-DD"
    counter_at: tuple[int, int]             # left, top of "#N"
    counter_margin: int                     # around "#N", inside its box

    @staticmethod
    def for_size(width: int, height: int) -> Layout:
        # The clock spans about 60% of the width, its box at most half the height.
        clock_cells = 8 * CELL_W
        scale = max(1, min(width * 6 // 10 // clock_cells, height // 2 // 12))
        small = max(1, scale // 2)
        margin = _even_up(scale)
        clock_w, date_w = text_width("00:00:00", scale), text_width("0000-00-00", small)
        box_w = _even_up(max(clock_w, date_w) + 2 * margin)
        box_h = _even_up(GLYPH_H * scale + scale + GLYPH_H * small + 2 * margin)
        left = _even_down((width - box_w) // 2)
        top = max(0, _even_down(height * 45 // 100 - box_h // 2))
        clock_at = (left + (box_w - clock_w) // 2, top + margin)
        date_at = (left + (box_w - date_w) // 2, clock_at[1] + GLYPH_H * scale + scale)
        counter_margin = _even_up(small)
        return Layout(scale, small, (left, top, left + box_w, top + box_h), clock_at,
                      date_at, (2 * counter_margin, 2 * counter_margin), counter_margin)


def _even_up(n: int) -> int:
    return n + (n & 1)


def _even_down(n: int) -> int:
    return n & ~1


class Painter:
    """Draws frame `index` captured at `wall_ns` into the three yuv420p planes.

    Each plane is a `bytes`/`bytearray` of `stride * rows` (the encoder's frame may
    pad lines; `strides` gives its line sizes). Rows are built once per size and
    re-sliced each frame (scrolling is a slice offset), text is painted with slice
    assignments, one per pixel row, from glyph rows prepared per scale.
    """

    def __init__(self, width: int, height: int, fps: int, strides: tuple[int, int, int]):
        self.width, self.height = width, height
        self.y_stride, self.u_stride, self.v_stride = strides
        self.layout = Layout.for_size(width, height)
        cw = width // 2
        self.bars_h = _even_down(height * 2 // 3)
        # Scroll speed: the bars cross the picture in about 8 s; an even number of
        # pixels per frame keeps luma and chroma in step.
        self.step = max(2, _even_down(width // (8 * fps)))
        # Two periods of each pattern, so any offset has a full row after it.
        self._y_bars = bytes(_BARS[(x % width) * 8 // width][0] for x in range(2 * width))
        self._u_bars = bytes(_BARS[(2 * x % width) * 8 // width][1] for x in range(2 * cw))
        self._v_bars = bytes(_BARS[(2 * x % width) * 8 // width][2] for x in range(2 * cw))
        self._ramp = bytes(_BLACK + (x % width) * (_WHITE - _BLACK) // width
                           for x in range(2 * width))
        self._pad = (bytes(self.y_stride - width), bytes(self.u_stride - cw),
                     bytes(self.v_stride - cw))
        self._neutral_u = bytes([_NEUTRAL]) * cw + self._pad[1]
        self._neutral_v = bytes([_NEUTRAL]) * cw + self._pad[2]
        self._glyphs: dict[int, dict[str, list[bytes]]] = {}
        self._clock_sec: int | None = None
        self._clock_text = ("", "")

    def glyph_rows(self, scale: int) -> dict[str, list[bytes]]:
        """For each character, its 7 rows of luma bytes at `scale`, each followed by
        the inter-character space."""
        g = self._glyphs.get(scale)
        if g is None:
            g = self._glyphs[scale] = {
                c: [b"".join((bytes([_WHITE]) if b == "#" else bytes([_BLACK])) * scale
                             for b in row + ".") for row in rows]
                for c, rows in FONT_5X7.items()}
        return g

    def clock_text(self, wall_ns: int) -> tuple[str, str]:
        """("HH:MM:SS", "YYYY-MM-DD") of `wall_ns` in the server zone; cached per second."""
        sec = wall_ns // clock.NANOS_PER_SEC
        if sec != self._clock_sec:
            t = datetime.datetime.fromtimestamp(sec, recording.server_zone())
            self._clock_sec, self._clock_text = sec, (t.strftime("%H:%M:%S"),
                                                      t.strftime("%Y-%m-%d"))
        return self._clock_text

    def paint(self, index: int, wall_ns: int) -> tuple[bytearray, bytearray, bytearray]:
        w, h, bars_h = self.width, self.height, self.bars_h
        cw, ch, cbars_h = w // 2, h // 2, bars_h // 2
        off = index * self.step % w
        ramp_off = -index * self.step % w
        y = bytearray(b"".join((
            (self._y_bars[w - off:2 * w - off] + self._pad[0]) * bars_h,
            (self._ramp[ramp_off:ramp_off + w] + self._pad[0]) * (h - bars_h))))
        coff = (w - off) // 2
        u = bytearray((self._u_bars[coff:coff + cw] + self._pad[1]) * cbars_h
                      + self._neutral_u * (ch - cbars_h))
        v = bytearray((self._v_bars[coff:coff + cw] + self._pad[2]) * cbars_h
                      + self._neutral_v * (ch - cbars_h))

        # The counter first: in a tiny picture the clock's box covers part of it.
        lay = self.layout
        counter = f"#{index}"
        m = lay.counter_margin
        cx, cy = lay.counter_at
        self._box(y, u, v, cx - m, cy - m,
                  min(w, _even_up(cx + text_width(counter, lay.small_scale) + m)),
                  min(h, _even_up(cy + GLYPH_H * lay.small_scale + m)))
        self._text(y, counter, lay.small_scale, cx, cy)
        hhmmss, date = self.clock_text(wall_ns)
        self._box(y, u, v, *lay.box)
        self._text(y, hhmmss, lay.scale, *lay.clock_at)
        self._text(y, date, lay.small_scale, *lay.date_at)
        return y, u, v

    def _box(self, y, u, v, left, top, right, bottom) -> None:
        """Fills a black, colourless rectangle. Corners must be even and inside the
        picture: a slice assignment of another length would resize the plane."""
        assert not (left | top | right | bottom) & 1, (left, top, right, bottom)
        assert 0 <= left <= right <= self.width and 0 <= top <= bottom <= self.height
        ys, us, vs = self.y_stride, self.u_stride, self.v_stride
        black = bytes([_BLACK]) * (right - left)
        for r in range(top, bottom):
            y[r * ys + left:r * ys + right] = black
        neutral = bytes([_NEUTRAL]) * ((right - left) // 2)
        left, right = left // 2, right // 2
        for r in range(top // 2, bottom // 2):
            u[r * us + left:r * us + right] = neutral
            v[r * vs + left:r * vs + right] = neutral

    def _text(self, y, text: str, scale: int, left: int, top: int) -> None:
        """Paints `text` (its `text_mask`) white on black, clipped to the picture."""
        glyphs = self.glyph_rows(scale)
        room = self.width - left
        s = self.y_stride
        for r in range(GLYPH_H):
            row = b"".join(glyphs[c][r] for c in text)[:min(room, text_width(text, scale))]
            for k in range(scale):
                line = top + r * scale + k
                if line >= self.height:
                    return
                y[line * s + left:line * s + left + len(row)] = row


class DemoSource(stream.Source):
    """One session of the synthetic camera. See the module docstring for the rules."""

    def __init__(self, clocks: clock.Clocks, mode: Mode, *, gop_sec: float,
                 bitrate: int | None, shutdown: threading.Event | None, what: str):
        import av  # imported where used, as in stream.py: importing demo needs no PyAV
        self._av = av
        self.clocks = clocks
        self.mode = mode
        self.shutdown = shutdown
        self.what = what
        self.frame_90k = 90_000 // mode.fps
        self.gop = max(1, round(gop_sec * mode.fps))
        try:
            enc = av.CodecContext.create("libx264", "w")
        except (av.error.FFmpegError, ValueError) as e:
            raise stream.StreamError(f"{what}: PyAV's FFmpeg has no libx264 encoder ({e}); "
                                     f"install PyAV's binary wheel (`pip install av`)") from None
        enc.width, enc.height, enc.pix_fmt = mode.width, mode.height, "yuv420p"
        enc.time_base = fractions.Fraction(1, 90_000)
        enc.framerate = fractions.Fraction(mode.fps)
        enc.gop_size = self.gop
        enc.thread_count = 1
        if bitrate:
            enc.bit_rate = bitrate
        # Fixed GOP: a key frame exactly every `gop` frames (min-keyint = keyint, no
        # scene-cut key frames). Global header stays off: SPS/PPS in band, Annex B.
        # No B-frames: "bf" is AVCodecContext's max_b_frames as an option (PyAV 10 has
        # no attribute for it; the option works with every PyAV).
        enc.options = {"preset": "ultrafast", "tune": "zerolatency", "bf": "0",
                       "x264-params": f"keyint={self.gop}:min-keyint={self.gop}:scenecut=0"}
        enc.open()
        self._enc = enc
        probe = av.VideoFrame(mode.width, mode.height, "yuv420p")
        self.painter = Painter(mode.width, mode.height, mode.fps,
                               tuple(p.line_size for p in probe.planes))
        self._index = 0
        self._start_ns = clocks.monotonic()
        self._pending = list(self._capture())  # frame 0, captured now
        if not self._pending or not self._pending[0].is_key:
            raise stream.StreamError(f"{what}: libx264 gave no key frame for the first frame")
        params = codec.parameters_from_frame("h264", self._pending[0].data)
        if params is None:
            raise stream.StreamError(f"{what}: libx264's first key frame has no SPS/PPS")
        self.parameters = params
        self.layout = self.painter.layout

    def _capture(self) -> list[stream.Frame]:
        """Paints and encodes frame `self._index` at the current wall time."""
        i = self._index
        self._index += 1
        av = self._av
        frame = av.VideoFrame(self.mode.width, self.mode.height, "yuv420p")
        for plane, data in zip(frame.planes, self.painter.paint(i, self.clocks.realtime())):
            plane.update(data)
        frame.pts = i * self.frame_90k
        frame.time_base = fractions.Fraction(1, 90_000)
        try:
            packets = self._enc.encode(frame)
        except av.error.FFmpegError as e:
            raise stream.StreamError(f"{self.what}: libx264 failed on frame {i}: {e}") from None
        return [stream.Frame(p.pts, bool(p.is_keyframe), codec.to_length_prefixed(bytes(p)))
                for p in packets]

    def frames(self):
        while True:
            # Frame self._index is due now; the one before it is complete.
            due = self._start_ns + -(-self._index * clock.NANOS_PER_SEC // self.mode.fps)
            lag = self.clocks.monotonic() - due
            if lag > MAX_LAG_SEC * clock.NANOS_PER_SEC:
                raise stream.StreamError(
                    f"{self.what}: {lag / clock.NANOS_PER_SEC:.1f} s behind real time (was "
                    f"the machine suspended or overloaded?); reopening")
            # A loop, because a wait may end a little early (and SimulatedClocks rounds).
            while (remaining := due - self.clocks.monotonic()) > 0:
                if self.shutdown is None:
                    self.clocks.sleep(remaining / clock.NANOS_PER_SEC)
                elif self.clocks.wait(self.shutdown, remaining / clock.NANOS_PER_SEC):
                    return
            if self.shutdown is not None and self.shutdown.is_set():
                return
            yield from self._pending
            self._pending = self._capture()

    def close(self) -> None:
        self._enc = None  # PyAV frees the encoder with its last reference


class DemoOpener(stream.Opener):
    """Opens `demo:` URLs (see the module docstring) as `DemoSource`s.

    The constructor's size and rate are the defaults a bare `demo:` gets (a bad
    one raises StreamError); `gop_sec` is the key frame interval (a key frame every
    `round(gop_sec * fps)` frames, at least every frame); `bitrate` (bits/s) turns
    on x264's average bitrate mode instead of its default CRF 23. `shutdown` ends
    a source's `frames()` during its sleep (nvr.py passes the recorder's).
    """

    def __init__(self, clocks: clock.Clocks, *, width: int = DEFAULT_MODE.width,
                 height: int = DEFAULT_MODE.height, fps: int = DEFAULT_MODE.fps,
                 gop_sec: float = 1, bitrate: int | None = None,
                 shutdown: threading.Event | None = None):
        self.clocks = clocks
        self.default = check_mode(Mode(width, height, fps), "demo opener")
        if gop_sec <= 0:
            raise ValueError(f"gop_sec must be positive, not {gop_sec}")
        self.gop_sec = gop_sec
        self.bitrate = bitrate
        self.shutdown = shutdown

    def open(self, url: str, **_) -> DemoSource:
        mode = parse_url(url, self.default)
        src = DemoSource(self.clocks, mode, gop_sec=self.gop_sec, bitrate=self.bitrate,
                         shutdown=self.shutdown, what=url)
        logger.info("opened %s: a %dx%d test pattern at %d frames/s, a key frame every "
                    "%d frames", url, mode.width, mode.height, mode.fps, src.gop)
        return src
