"""Replaying clips as a camera would send them, in simulated time.

A clip made with PyAV (clips.py) is replayed through the real streamer ->
writer -> syncer path into a test database (like Moonfire's ProxyingStream):
the first seconds arrive at once (the camera's buffer), the rest in real time,
with an arbitrary pts offset and optionally a camera clock running fast or
slow. Several clips replay one after another in one session; each clip's
first frame carries its parameters, so a change of size starts a new
recording in the same run (stream.py's `Frame.parameters`). Used by
test_writer.py and test_mp4.py.
"""

import threading

import pytest

import dir as dirmod
import stream

FRAME_90K = 3000  # clips are 30 fps


class ReplaySource(stream.Source):
    """Yields `frames` frames of the clips in turn (looping), advancing `clocks`."""

    def __init__(self, inners, clocks, *, frames, buffered_sec=2.0, pts_offset=123_456,
                 ppm=0, end="end of clip"):
        self.inners, self.clocks = inners, clocks
        self.parameters = inners[0].parameters
        self.n, self.buffered_ns, self.pts_offset = frames, int(buffered_sec * 1e9), pts_offset
        self.ppm, self.end = ppm, end

    def _timeline(self):
        """Every clip's frames, pts continuing across clips; a clip's first frame
        carries its parameters when there is more than one clip."""
        out, offset = [], 0
        for inner in self.inners:
            clip = list(inner.frames_until_end())
            base = clip[0].pts_90k
            for j, f in enumerate(clip):
                params = inner.parameters if j == 0 and len(self.inners) > 1 else None
                out.append(stream.Frame(f.pts_90k - base + offset, f.is_key, f.data, params))
            offset += len(clip) * FRAME_90K
        return out, offset

    def frames(self):
        clip, loop_90k = self._timeline()
        slept_ns = 0
        for i in range(self.n):
            f = clip[i % len(clip)]
            # Real time: the frame is complete when the next one starts. Rounded
            # up to whole ns so the 90 kHz conversion (rounding down) is exact.
            goal_ns = -(-(i + 1) * 1_000_000_000 // 30)
            delta = goal_ns - slept_ns
            from_buffer = min(self.buffered_ns, delta)
            self.buffered_ns -= from_buffer
            self.clocks.advance(delta - from_buffer)
            slept_ns = goal_ns
            media = f.pts_90k + (i // len(clip)) * loop_90k
            media = media * (1_000_000 + self.ppm) // 1_000_000
            params = f.parameters if i else None  # the first: the source's parameters
            yield stream.Frame(media + self.pts_offset, f.is_key, f.data, params)
        raise stream.StreamError(self.end)


class ClipSource(stream.PyAvSource):
    def frames_until_end(self):
        try:
            yield from self.frames()
        except stream.StreamError:
            return


def open_clip(path: str) -> ClipSource:
    import av
    return ClipSource(av.open(path), path)


class ReplayOpener(stream.Opener):
    """Opens `clip` (a path, or a list of paths played in turn) as a ReplaySource."""

    def __init__(self, clip, clocks, **kw):
        self.clips = [clip] if isinstance(clip, str) else list(clip)
        self.clocks, self.kw = clocks, kw

    def open(self, url, **_):
        return ReplaySource([open_clip(c) for c in self.clips], self.clocks, **self.kw)


def drain(syncer):
    while not syncer.queue.empty():
        assert syncer.iter()


def record(t, clip, clocks, *, stream_id=None, offset=0, frames=600, interval=3, **kw):
    """Runs one session of the clip(s) through a Streamer; returns the stream's
    recordings (all of them, committed)."""
    stream_id = stream_id or t.stream_id
    syncer = dirmod.Syncer(t.db, t.dir_id)
    shutdown = threading.Event()
    s = stream.Streamer(t.db, stream_id, syncer, ReplayOpener(clip, clocks, frames=frames, **kw),
                        shutdown=shutdown, rotate_offset_sec=offset, rotate_interval_sec=interval)
    with pytest.raises(stream.StreamError, match=kw.get("end", "end of clip")):
        s.run_once()
    drain(syncer)
    t.db.flush("test")
    return t.db.list_recordings_by_id(stream_id, 0, 1 << 31)


def clip_writer(t, clip_path: str):
    """A Writer of the test database's stream, and the clip's frames to give it by hand
    (a growing recording, frame by frame): (writer, frames, sample entry id, syncer)."""
    import writer
    src = open_clip(clip_path)
    p = src.parameters
    vse = t.db.insert_video_sample_entry(p.width, p.height, p.rfc6381_codec, p.sample_entry)
    frames = list(src.frames_until_end())
    src.close()
    syncer = dirmod.Syncer(t.db, t.dir_id)
    return writer.Writer(t.db, t.stream_id, syncer, shutdown=threading.Event()), frames, vse, syncer


def start_run(streamer, errors: list, *, catch=(stream.StreamError,),
              name: str | None = None) -> threading.Thread:
    """Starts `streamer.run_once()` on a thread of its own; the exception of `catch` that
    ends the run is appended to `errors` (the test looks at it). Returns the thread."""
    def run():
        try:
            streamer.run_once()
        except catch as e:
            errors.append(e)
    th = threading.Thread(target=run, name=name)
    th.start()
    return th
