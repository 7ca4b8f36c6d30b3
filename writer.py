"""Turning one stream's frames into recordings: rotation, the index, time, the hash.

A `Writer` belongs to one stream (and its streamer thread) and lives for one
run: the frames of one RTSP session. It cuts the run into recordings of about
a minute and, for each:

1. creates the sample file (dir.py step S1, `O_EXCL`) and appends each frame
   as received (4-byte length-prefixed NAL units), gathering frames in memory
   until `COALESCE_BYTES` and writing them in one write(2), retrying I/O errors
   forever at 1 s (reference §3.9: a full disk stalls the stream; it resumes
   when space frees; shutdown gives up). What is indexed but not yet written is
   published as the recording's `tail` (db.RecordingToInsert), from which
   readers of the growing recording take it (mp4.FileChunk.split);
2. extends the in-memory `db.RecordingToInsert` one frame behind (a frame's
   duration is the next frame's pts minus its own), so the recording is listed
   and playable while it grows;
3. reconciles camera time with local time (below) and hashes the file
   (blake2b, 32 bytes) as it is written;
4. at its end writes what is still in memory, then hands the file to the dir's syncer (`Syncer.save`), which fsyncs
   it and the dir, marks it ready and plans the database flush. If the file's
   fsync fails, the syncer abandons that recording (dir.py S2F: its frames may
   not be on disk, and a retried fsync can't tell); the run goes on, its next
   recording already being written, so the stream loses that one recording
   and no more (a reconnect would lose seconds more). Its id is skipped: the
   run's recordings on either side of it keep their run offsets and times.

Rotation (reference §3.3): stream i of n rotates at `offset = interval*i/n`
seconds past each `interval` (60 s) boundary, spreading disk seeks. A
recording ends at the first key frame whose local second is past its
boundary, the smallest `r = sec - sec % interval + offset` with `r > sec`
computed at its first frame; the first recording of a run adds another
interval (60-120 s), giving the start time estimate more frames. A change of
video parameters (a new sample entry, only on a key frame) ends a recording
too, keeping the run. A recording can't reach 5 minutes of wall time: that
(a camera whose key frames are too far apart) ends the run with an error.

Time (reference §3.4; all in 90 kHz units):
- media duration: the sum of frame durations (camera clock, pts deltas);
- local time of a frame: wall time at the session's open plus the monotonic
  time since (streamer's job), an upper bound on its capture time;
- local start = min over frames of (local time - media duration through that
  frame): the least-delayed frame wins;
- start: the local start for a run's first recording (refined while it
  grows); otherwise exactly the previous recording's end, so a run has no gaps
  or overlaps;
- wall duration = media duration + clamp(local start - start, +-media/2000),
  at most 500 ppm, so a camera clock running fast or slow is corrected without
  jumps; `local_time_delta_90k` = local start - start is stored.

Errors that end a run (`WriterError`): pts not increasing, a pts jump beyond
`MAX_PTS_JUMP_90K`, a parameter change on a non-key frame, 5 minutes without a
key frame, a frame of 0 bytes. The streamer then closes the run (trailing
zero, end reason) and reconnects. `close` ends the recording whatever fails.

Threads: the writer runs on its stream's thread. Fields of the growing
`RecordingToInsert` change under the database lock (held briefly, no I/O), so
listing and playback see a consistent recording. Its `video_index` is the
encoder's own bytearray, which only grows, and only under that lock: readers
copy it (`db.get_video_index`, flush) rather than the writer copying it per
frame.

The per-frame path (`write`, `_index_unindexed`) runs 30 times a second per
camera and is most of nvr's own CPU (docs/performance.md): it keeps its state
in slots of `_Recording`, appends frames to a bytearray and writes (and
hashes) several at once, trying one write(2) before falling back to
`dir.write_all`'s retry loop, and holds the database lock's RLock directly for
its few assignments.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import threading

import clock
import db as dbmod
import dir as dirmod
import recording

logger = logging.getLogger(__name__)

ROTATE_INTERVAL_SEC = 60

# A frame lasting more than this means the camera's clock jumped; Moonfire's
# limit is the i32 range of a duration, far beyond anything sane, so ours is
# the recording length limit itself.
MAX_PTS_JUMP_90K = recording.MAX_RECORDING_WALL_DURATION_90K

# Frames are held in memory until this many bytes have gathered, then written (and
# hashed) in one write(2): ~4 frames of a 2 Mbit/s 30 fps stream, as FFmpeg's own
# 32 KiB I/O buffer. Readers of the growing recording take what isn't written yet from
# memory (db.RecordingToInsert.tail), so live view and playback don't wait for it; a
# crash loses nothing more (an uncommitted recording is removed at start-up anyway).
COALESCE_BYTES = 32 * 1024


class WriterError(Exception):
    """A stream problem that ends the run; the message becomes its end reason, `kind`
    the `reason` label of its end's count (metrics.END_KINDS)."""

    def __init__(self, message: str, kind: str = "bad_stream"):
        super().__init__(message)
        self.kind = kind


class _Recording:
    """One recording being written, and its last frame: in the file, not yet
    in the index (`unindexed_pts_90k` is None when there is none)."""

    __slots__ = ("id", "r", "f", "encoder", "hasher", "local_start_90k", "rotate_at_sec",
                 "rotate_at_90k", "video_sample_entry_id", "unindexed_local_90k",
                 "unindexed_pts_90k", "unindexed_bytes", "unindexed_is_key", "pending",
                 "written")

    def __init__(self, composite_id: int, r: dbmod.RecordingToInsert, f: dirmod.File,
                 encoder: recording.SampleIndexEncoder):
        self.id = composite_id
        self.r = r
        self.f = f
        self.encoder = encoder  # r.video_index is its bytearray
        self.hasher = hashlib.blake2b(digest_size=32)
        self.local_start_90k: int | None = None
        self.rotate_at_sec: int | None = None
        self.rotate_at_90k: int | None = None  # (rotate_at_sec + 1) s: a key frame at or
        #                                        after it ends the recording
        self.video_sample_entry_id = r.video_sample_entry_id
        self.unindexed_local_90k = 0
        self.unindexed_pts_90k: int | None = None
        self.unindexed_bytes = 0
        self.unindexed_is_key = False
        # Frames not yet written (COALESCE_BYTES), from file offset `written` on; published
        # as r.tail for readers of the growing recording.
        self.pending = bytearray()
        self.written = 0
        r.tail = (0, self.pending)


class Writer:
    """Writes one run of one stream. Not thread-safe: one streamer thread uses it."""

    def __init__(self, db: dbmod.Database, stream_id: int, syncer, *,
                 shutdown: threading.Event, rotate_offset_sec: int = 0,
                 rotate_interval_sec: int = ROTATE_INTERVAL_SEC,
                 coalesce_bytes: int = COALESCE_BYTES):
        self.db = db
        self.coalesce_bytes = coalesce_bytes  # 0: each frame written as it comes
        self.stream_id = stream_id
        self.syncer = syncer
        self.shutdown = shutdown
        self.rotate_offset_sec = rotate_offset_sec
        self.rotate_interval_sec = rotate_interval_sec
        s = db.streams[stream_id]
        self.fs: dirmod.Fs = db.dirs[s.sample_file_dir_id].dir.fs
        self.cur: _Recording | None = None
        self.prev_end_90k: int | None = None   # end of the run's previous recording
        self.run_offset = 0
        self.closed = False

    # -- the per-frame path ----------------------------------------------------

    def write(self, data, local_time_90k: int, pts_90k: int, is_key: bool,
              video_sample_entry_id: int) -> None:
        """Appends one frame (length-prefixed NAL units, any bytes-like object) to the run."""
        if not data:
            # The index can't hold a 0-byte sample (recording.py), and taking one would
            # fail only at the next frame, with the recording half-indexed.
            raise WriterError(f"a frame of 0 bytes at pts {pts_90k}; a sample can't be empty")
        cur = self.cur
        if cur is not None and (
                cur.video_sample_entry_id != video_sample_entry_id
                or (is_key and local_time_90k >= cur.rotate_at_90k)):
            if cur.video_sample_entry_id != video_sample_entry_id and not is_key:
                raise WriterError("video parameters changed on a non-key frame")
            # Past the rotation second, or new parameters (same run, new sample entry).
            self._close_recording(pts_90k, None)
            cur = None
        if cur is None:
            if not is_key:
                raise WriterError("a recording must start with a key frame")
            self._open(video_sample_entry_id, local_time_90k)
            cur = self.cur
        if cur.unindexed_pts_90k is not None:
            self._index_unindexed(pts_90k - cur.unindexed_pts_90k)
        pending = cur.pending
        pending += data
        if len(pending) >= self.coalesce_bytes:
            self._write_pending(cur)
        cur.unindexed_local_90k = local_time_90k
        cur.unindexed_pts_90k = pts_90k
        cur.unindexed_bytes = len(data)
        cur.unindexed_is_key = is_key

    def _write_pending(self, cur: _Recording) -> None:
        """Writes the frames held in memory to the file (one write(2) unless the
        kernel takes less), hashes them, and publishes an empty buffer as the tail.
        The old buffer is never changed again: a reader holding it stays right."""
        data = cur.pending
        n = len(data)
        if not n:
            return
        try:
            written = cur.f.write(data)
        except OSError as e:
            self._write_rest(cur.f, data, 0, e)
        else:
            if written != n:
                self._write_rest(cur.f, data, written, None)
        cur.hasher.update(data)
        cur.written += n
        cur.pending = bytearray()
        cur.r.tail = (cur.written, cur.pending)  # one assignment: readers take it whole

    def _write_rest(self, f: dirmod.File, data, written: int, error: OSError | None) -> None:
        """The slow path of a frame's write: the first write(2) took `written` bytes
        (less than all) or failed with `error`. Each write(2) is retried on its own:
        retrying a whole write_all after a partial write would duplicate the bytes
        already written. Handles the first attempt as `dir.write_all` would have."""
        if error is None and written <= 0:
            error = OSError(errno.EIO, f"write to {f.name} returned {written}")
        pending = [error] if error is not None else []

        def retry(what: str, fn):
            def first_as_seen():  # the failure already seen, then the real calls
                if pending:
                    raise pending.pop()
                return fn()
            return self._retry(what, first_as_seen)
        dirmod.write_all(f, memoryview(data)[max(written, 0):], retry=retry)

    def _retry(self, what: str, fn):
        return clock.retry(self.db.clocks, self.shutdown, what, fn)

    def _name(self, cur: _Recording) -> str:
        return f"{self.fs.path}/{dirmod.name_for(cur.id)}"

    def _open(self, video_sample_entry_id: int, local_time_90k: int) -> None:
        s = self.db.streams[self.stream_id]
        encoder = recording.SampleIndexEncoder()
        with self.db.locked():
            r = dbmod.RecordingToInsert(
                run_offset=self.run_offset,
                start_time_90k=self.prev_end_90k if self.prev_end_90k is not None else local_time_90k,
                prev_media_duration_90k=s.cum_media_duration_90k + sum(
                    u.media_duration_90k for u in s.uncommitted),
                prev_runs=s.cum_runs + sum(u.run_offset == 0 for u in s.uncommitted),
                video_sample_entry_id=video_sample_entry_id,
                # Shared, not copied per frame: it only grows, under the database lock.
                video_index=encoder.video_index)
            cid = self.db.add_recording(self.stream_id, r)
        name = dirmod.name_for(cid)

        def create():  # dir.py step S1
            try:
                return self.fs.create_file(name)
            except FileExistsError:
                # An abandoned file of an earlier process that late recovery (dir.py
                # "Late R3") hasn't reached; one with a row is never touched.
                if self.db.has_recording_row(cid):
                    raise
                logger.info("%s/%s: replacing an abandoned sample file of an earlier run "
                            "(start-up recovery had not reached it)", self.fs.path, name)
                return dirmod.replace_abandoned(self.fs, name)
        try:
            f = clock.retry(self.db.clocks, self.shutdown, f"create {self.fs.path}/{name}",
                            create)
        except clock.ShutdownError:
            self._abandon(cid, r, None)
            raise
        cur = _Recording(cid, r, f, encoder)
        sec = local_time_90k // recording.TIME_UNITS_PER_SEC
        i = self.rotate_interval_sec
        at = sec - sec % i + self.rotate_offset_sec
        if at <= sec:
            at += i
        if self.run_offset == 0:
            at += i  # a run's first recording: 1-2 intervals, for a better start estimate
        cur.rotate_at_sec = at
        cur.rotate_at_90k = (at + 1) * recording.TIME_UNITS_PER_SEC
        self.cur = cur

    def _abandon(self, cid: int, r: dbmod.RecordingToInsert, f: dirmod.File | None) -> None:
        """Gives up a recording that can't be finished: unlinks its file and
        fsyncs the dir, so a flush may skip its id (db.RecordingToInsert).
        If shutdown interrupts that, the file stays with an id >= the stream's
        cum_recordings, and start-up recovery removes it."""
        with self.db.locked():
            r.growing = False
            r.abandoned = True
        if f is not None:
            f.close()
        name = dirmod.name_for(cid)

        def unlink():
            try:
                self.fs.unlink(name)
            except FileNotFoundError:
                pass
        try:
            clock.retry(self.db.clocks, self.shutdown, f"unlink {self.fs.path}/{name}", unlink)
            clock.retry(self.db.clocks, self.shutdown, f"fsync dir {self.fs.path}", self.fs.sync)
        except clock.ShutdownError:
            return
        with self.db.locked():
            r.file_gone = True
        logger.warning("%s: abandoned recording %s", self.fs.path, name)

    def _index_unindexed(self, duration_90k: int, *, run_ends: bool = False) -> None:
        """Adds the unindexed frame, lasting `duration_90k`, to the index and
        updates the recording's times. `run_ends`: the trailing zero."""
        cur = self.cur
        if duration_90k <= 0 and not run_ends:
            pts = cur.unindexed_pts_90k
            raise WriterError(f"pts not monotonically increasing; got {pts} then "
                              f"{pts + duration_90k}", "bad_timestamps")
        if duration_90k > MAX_PTS_JUMP_90K:
            pts = cur.unindexed_pts_90k
            raise WriterError(f"excessive pts jump from {pts} to {pts + duration_90k}",
                              "bad_timestamps")
        r = cur.r
        media = r.media_duration_90k + duration_90k
        local_start = cur.unindexed_local_90k - media  # this frame's candidate
        if cur.local_start_90k is not None and cur.local_start_90k < local_start:
            local_start = cur.local_start_90k
        start = local_start if r.run_offset == 0 else r.start_time_90k
        limit = media // 2000  # 500 ppm
        adjust = local_start - start
        if adjust > limit:
            adjust = limit
        elif adjust < -limit:
            adjust = -limit
        wall = media + adjust
        if wall >= recording.MAX_RECORDING_WALL_DURATION_90K:
            raise WriterError(f"recording would last {recording.format_duration(wall)}, at least "
                              f"the maximum of 5 minutes; are key frames too far apart?")
        cur.local_start_90k = local_start
        e = cur.encoder
        is_key = cur.unindexed_is_key
        # The database lock's RLock itself, not `db.locked()`: this section is a few
        # assignments, no I/O, so its over-a-second guard would cost more than it finds.
        with self.db.lock:  # raw: per frame, no I/O (db.Database.lock)
            if is_key:  # where live view's segments start walking the index
                key_state = e.walk_state()
            e.add_sample(duration_90k, cur.unindexed_bytes, is_key)  # r.video_index grows
            if is_key:
                r.live_key_state = key_state
            r.start_time_90k = start
            r.wall_duration_90k = wall
            r.media_duration_90k = media
            r.video_samples = e.video_samples
            r.video_sync_samples = e.video_sync_samples
            r.sample_file_bytes = e.sample_file_bytes
            # Live view (live.py): the frame is in the file and in the index now.
            self.db.frame_indexed(self.stream_id, cur.id, media - duration_90k, media, is_key,
                                  r.live_key_state)
        cur.unindexed_pts_90k = None

    # -- ending recordings and runs ----------------------------------------------

    def _close_recording(self, next_pts_90k: int | None, reason: str | None) -> None:
        """Indexes the last frame (lasting until `next_pts_90k`, or 0: the
        trailing zero that ends a run), finishes the row and hands the file to
        the syncer."""
        cur = self.cur
        if cur.unindexed_pts_90k is None:  # a write failed on shutdown before any frame landed
            self.cur = None
            self._abandon(cur.id, cur.r, cur.f)
            return
        if next_pts_90k is None:
            self._index_unindexed(0, run_ends=True)
        else:
            self._index_unindexed(next_pts_90k - cur.unindexed_pts_90k)
        self._write_pending(cur)
        r = cur.r
        with self.db.locked():
            r.tail = None  # every byte is in the file
            if next_pts_90k is None:
                r.flags |= dbmod.FLAG_TRAILING_ZERO
                r.end_reason = reason
            r.local_time_delta_90k = (cur.local_start_90k - r.start_time_90k
                                      if r.run_offset > 0 else None)
            r.sample_file_blake2b = cur.hasher.digest()
            r.growing = False
        self.prev_end_90k = r.start_time_90k + r.wall_duration_90k
        self.run_offset += 1
        self.cur = None  # from here on the syncer owns the file (`close` relies on this)
        self.syncer.save(cur.id, r.wall_duration_90k, cur.f)

    def close(self, reason: str) -> None:
        """Ends the run: the last frame gets duration 0, the recording its end
        reason. Safe to call more than once and after errors. Whatever goes
        wrong, the recording ends here, handed to the syncer or abandoned:
        one left growing would refuse every later run of the stream ("already
        growing a recording", db.py) until nvr restarted."""
        if self.closed:
            return
        self.closed = True
        if self.cur is not None:
            cur = self.cur
            try:
                self._close_recording(None, reason)
            except WriterError as e:
                # Only the 5-minute limit can refuse a trailing zero, and only
                # if the previous frame already hit it: abandon the recording
                # (recovery removes its file) rather than commit a bad row.
                logger.warning("%s: abandoned: %s", self._name(cur), e)
                self.cur = None
                self._abandon(cur.id, cur.r, cur.f)
            except BaseException:  # a bug (say a ValueError from the index): re-raised
                if self.cur is cur:  # not yet the syncer's
                    logger.warning("%s: abandoning it after an unexpected error",
                                   self._name(cur))
                    self.cur = None
                    self._abandon(cur.id, cur.r, cur.f)
                raise
