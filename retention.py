"""Retention rules: which recordings to delete, and why.

Three limits decide it, each deleting oldest first; whichever bites first wins:

- bytes, per stream (`retainBytes` in its StreamConfig). Usage is the stream's committed
  sample files plus its synced, not yet committed ones plus the one being added, each
  rounded up to whole 4096-byte blocks (`round_up`, Moonfire #89), less what is already
  queued. While usage is over the limit, the stream's oldest recordings (by id) go.
- age, per stream (`retainDays`, may be fractional: 0.5 is 12 hours). A recording whose
  end (start + wall duration) is more than retainDays before now goes. One ending exactly
  retainDays ago stays; a 90 kHz tick later it goes (`expired`). Taken as a prefix by id,
  like bytes: a recording with an odd time (a clock step) never jumps the queue.
- free space, per sample file dir (`freeSpaceFloorBytes` or `freeSpaceFloorPercent` in
  its SampleFileDirConfig; neither: `default_floor_bytes`, 2% of the filesystem but at
  least 1 GiB, and at most 10% of it; 0 turns it off). The filesystem's available space
  (statvfs `f_bavail`, through dir.py's `Fs.free_space`) plus what is queued or already
  garbage but not yet unlinked, when below the floor, is raised above it by deleting the
  oldest recordings among all the dir's streams, by start time (`plan_floor`).

Protected footage (issue #17; db.py's `protection` rows, schema.sql) is never deleted by
any of the three: a recording overlapping a protection of its stream, or of its camera
with no stream named (`Protected.covers`: half-open, start before the protection's end
and end after its start), is passed over, and the rules take the oldest *unprotected*
recordings instead, so each takes a prefix of the unprotected rows. The plans count what
they skipped (`kept_protected`), so that when only protected recordings are left over a
limit the caller says so (db.py logs it once per episode, logrepeat.py's rules; dir.py's
floor warning names protected recordings) rather than deleting them.

A stream with a `retainDays` and a `retainBytes` of 0 (or none) has no byte limit.
Without `retainDays`, a `retainBytes` of 0 deletes every recording, as in Moonfire (which
is how a stream that no longer records is emptied); `nvr.py config` refuses a recording
stream with neither limit.

This module only decides. db.py feeds it rows (`Database.delete_oldest_recordings`,
`Database.enforce_free_space_floor`) and queues its answer in the stream's `to_delete`;
the next flush moves those rows to `garbage` in its one transaction, and the dir's
syncer unlinks the files (dir.py G1-G4). The syncer asks after each recording is
durable (S4), every `dir.RETENTION_CHECK_SEC` while `run` records (so a stream that
stopped still ages out, and a disk that fills while a writer waits for space gets space
back: the writer's wait is the last resort), and at start-up (`initial_rotation`, so a
lowered limit applies at once). Only the free-space floor asks for a flush of its own,
at once: the disk is short of space and can't wait for `flushIfSec`.
"""

from __future__ import annotations

import bisect
import dataclasses
import heapq
import math
from typing import Iterable

# Files are counted in whole filesystem blocks for retention (Moonfire #89).
ASSUMED_BLOCK_SIZE_BYTES = 4096

TIME_UNITS_PER_DAY = 86400 * 90_000
# The longest age limit `config` takes: a century. Past it float days lose whole seconds.
MAX_RETAIN_DAYS = 36525

# The default free-space floor: 2% of the filesystem, at least 1 GiB, at most 10% (a small
# filesystem, say 4 GiB, keeps 410 MiB free rather than a quarter of itself).
DEFAULT_FLOOR_PERCENT = 2
DEFAULT_FLOOR_MIN_BYTES = 1 << 30
DEFAULT_FLOOR_MAX_PERCENT = 10
# A floor given in percent: up to half the filesystem (more is surely a typo).
MAX_FLOOR_PERCENT = 50


def round_up(n: int) -> int:
    return (n + ASSUMED_BLOCK_SIZE_BYTES - 1) // ASSUMED_BLOCK_SIZE_BYTES * ASSUMED_BLOCK_SIZE_BYTES


# -- the stream limits ---------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class StreamLimits:
    bytes: int | None   # None: no byte limit
    days: float | None  # None: no age limit


def stream_limits(config: dict) -> StreamLimits:
    """The limits a StreamConfig sets (already checked by `stream_config_problem`)."""
    days = config.get("retainDays") or None
    nbytes = int(config.get("retainBytes", 0))
    return StreamLimits(None if nbytes == 0 and days is not None else nbytes,
                        None if days is None else float(days))


def age_cutoff_90k(now_90k: int, days: float) -> int:
    """Recordings ending before this are past a `days` age limit."""
    return now_90k - round(days * TIME_UNITS_PER_DAY)


def expired(end_90k: int, cutoff_90k: int | None) -> bool:
    """Whether a recording ending at `end_90k` is past the limit: strictly older."""
    return cutoff_90k is not None and end_90k < cutoff_90k


# -- protected footage --------------------------------------------------------------

class Protected:
    """The protected ranges that apply to one stream, merged: `covers(start, end)` says
    whether a recording [start, end) overlaps any of them (binary search).

    Overlap is half-open: the recording starts before the range's end and ends after
    its start. A recording of zero duration (a run's only frame) counts as one 90 kHz
    tick, so one at a range's start is protected and one at its end is not. With that,
    merging ranges that overlap or touch changes no answer."""

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()):
        merged: list[list[int]] = []
        for start, end in sorted(ranges):
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        self.ranges = [(a, b) for a, b in merged]
        self._starts = [a for a, _ in self.ranges]

    def __bool__(self) -> bool:
        return bool(self.ranges)

    def covers(self, start_90k: int, end_90k: int) -> bool:
        end_90k = max(end_90k, start_90k + 1)
        # The last range starting before the recording's end is the one to check: the
        # ranges are sorted and apart, so if an earlier one reached past the recording's
        # start, this one (starting after that) would overlap it as well.
        i = bisect.bisect_left(self._starts, end_90k) - 1
        return i >= 0 and self.ranges[i][1] > start_90k

    def covers_row(self, row) -> bool:
        return bool(self.ranges) and self.covers(row.start_time_90k, row.end_time_90k)


NOTHING_PROTECTED = Protected()


class Plan(list):
    """What one retention pass of a stream queues: the rows, oldest first (a list, as
    `Database.delete_oldest_recordings` has always returned), how many of them
    each limit asked for (a row both limits want counts for bytes), and what it kept
    because it is protected: `kept_protected` rows of `kept_protected_bytes` (whole
    blocks) that a limit would have taken, and `short_bytes`, what the byte limit is
    still over when every unprotected row is taken (0: it is met)."""

    def __init__(self, rows=()):
        super().__init__(rows)
        self.by_bytes = 0
        self.by_age = 0
        self.kept_protected = 0
        self.kept_protected_bytes = 0
        self.short_bytes = 0


def plan_stream(rows: Iterable, *, over_bytes: int, cutoff_90k: int | None,
                protected: Protected = NOTHING_PROTECTED) -> Plan:
    """`rows`: the stream's committed recordings not yet queued, oldest (by id) first,
    each with `sample_file_bytes`, `start_time_90k` and `end_time_90k` (db.ListRow).
    Takes the longest prefix of the unprotected rows in which each row is needed to
    bring usage down by `over_bytes` (when > 0) or is past the age limit; protected
    rows are passed over (and counted) wherever they are."""
    plan = Plan()
    for row in rows:
        wanted = over_bytes > 0 or expired(row.end_time_90k, cutoff_90k)
        if not wanted:
            break
        if protected.covers_row(row):
            plan.kept_protected += 1
            plan.kept_protected_bytes += round_up(row.sample_file_bytes)
            continue
        if over_bytes > 0:
            plan.by_bytes += 1
            over_bytes -= round_up(row.sample_file_bytes)
        else:
            plan.by_age += 1
        plan.append(row)
    plan.short_bytes = max(0, over_bytes)
    return plan


# -- the free-space floor --------------------------------------------------------

def default_floor_bytes(total_bytes: int) -> int:
    return min(max(DEFAULT_FLOOR_MIN_BYTES, total_bytes * DEFAULT_FLOOR_PERCENT // 100),
               total_bytes * DEFAULT_FLOOR_MAX_PERCENT // 100)


def floor_bytes(dir_config: dict, total_bytes: int) -> int:
    """The free space a dir keeps on a filesystem of `total_bytes` (checked config)."""
    if "freeSpaceFloorBytes" in dir_config:
        return int(dir_config["freeSpaceFloorBytes"])
    if "freeSpaceFloorPercent" in dir_config:
        return int(total_bytes * float(dir_config["freeSpaceFloorPercent"]) / 100)
    return default_floor_bytes(total_bytes)


def describe_floor(dir_config: dict) -> str:
    """The floor as configured, for `config dir list` and logs: `1073741824 B`, `3%`."""
    if "freeSpaceFloorBytes" in dir_config:
        return f"{dir_config['freeSpaceFloorBytes']} B"
    if "freeSpaceFloorPercent" in dir_config:
        return f"{dir_config['freeSpaceFloorPercent']:g}%"
    return "default"


class FloorPlan(list):
    """(stream id, row) pairs the floor queues, oldest first, and the protected rows
    it passed over on the way (`kept_protected`, `kept_protected_bytes`)."""

    def __init__(self, rows=()):
        super().__init__(rows)
        self.kept_protected = 0
        self.kept_protected_bytes = 0


def plan_floor(streams: dict[int, Iterable], need_bytes: int,
               protected: dict[int, Protected] | None = None) -> FloorPlan:
    """`streams`: stream id -> its rows not yet queued, oldest (by id) first;
    `protected`: stream id -> its Protected (none: nothing protected). Returns
    (stream id, row) oldest first by start time across the streams (each stream's
    own order kept, so each takes a prefix of its unprotected rows) until
    `need_bytes` are freed, or all the unprotected ones."""
    protected = protected or {}

    def keyed(sid, rows):  # a function, so each generator keeps its own sid
        return ((r.start_time_90k, sid, r.composite_id, r) for r in rows)
    merged = heapq.merge(*(keyed(sid, rows) for sid, rows in streams.items()),
                         key=lambda t: t[:3])
    out = FloorPlan()
    for _, sid, _, row in merged:
        if need_bytes <= 0:
            break
        if protected.get(sid, NOTHING_PROTECTED).covers_row(row):
            out.kept_protected += 1
            out.kept_protected_bytes += round_up(row.sample_file_bytes)
            continue
        out.append((sid, row))
        need_bytes -= round_up(row.sample_file_bytes)
    return out


# -- checking hand-edited values -----------------------------------------------------

def _whole(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _number(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            and v >= 0)


def stream_config_problem(config: dict) -> tuple[str, str] | None:
    """(key, what is wrong) for a StreamConfig retention value nvr can't use."""
    v = config.get("retainBytes", 0)
    if not _whole(v):
        return "retainBytes", "not a whole number from 0 up"
    v = config.get("retainDays", 0)
    if not _number(v) or v > MAX_RETAIN_DAYS:
        return "retainDays", f"not a number of days from 0 to {MAX_RETAIN_DAYS}"
    return None


def dir_config_problem(config: dict) -> tuple[str, str] | None:
    """(key, what is wrong) for a SampleFileDirConfig floor nvr can't use."""
    if "freeSpaceFloorBytes" in config and "freeSpaceFloorPercent" in config:
        return "freeSpaceFloorBytes", "set together with freeSpaceFloorPercent"
    if "freeSpaceFloorBytes" in config and not _whole(config["freeSpaceFloorBytes"]):
        return "freeSpaceFloorBytes", "not a whole number from 0 up"
    v = config.get("freeSpaceFloorPercent", 0)
    if not _number(v) or v > MAX_FLOOR_PERCENT:
        return "freeSpaceFloorPercent", f"not a number from 0 to {MAX_FLOOR_PERCENT}"
    return None
