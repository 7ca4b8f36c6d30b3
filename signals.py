"""Signals: enum-valued time series such as "motion on camera 2" or "alarm zone 3".

A signal type (`signal_type` row) names the states a signal may be in: values
1..15, each with a name, an optional `motion` flag and a UI colour; 0 always
means "unknown" and needs no definition. A signal (`signal` row) has an id, a
uuid, a type and a config: a short name and its cameras, each "direct" (as if
it were the camera's own motion detection) or "indirect" (worth a glance).
Moonfire keeps signals fully in RAM (reference §3.10) and so do we: this
module loads every type, signal and change point at start-up and answers the
API from memory.

What a client says (`POST /api/signals`, reference §5.2) is "these signals
were in these states over [start, end)". `update` applies that assertion: the
states inside the range are replaced, and from `end` on every signal keeps
whatever state it had before. A client that sees motion asserts "motion for
the next minute" every 30 s; each assertion extends the last, and the
change back to the earlier state moves to the new end.

On disk (`signal_change`, one row per instant at which any signal changed):
`time_90k` and `changes`, a blob of varint pairs (unsigned LEB128, as the
sample index) `(signal_id - next_allowed, new_state)`, ids strictly increasing,
`next_allowed` 0 for the first pair and the previous id + 1 after it. The
schema's example, signals 1, 3 and 200 changing to states 1, 1 and 2:

    01 01     signal 0 + 1 = 1            state 1   next_allowed = 2
    01 01     signal 2 + 1 = 3            state 1   next_allowed = 4
    c4 01 02  signal 4 + 196 = 200 (0xc4 0x01 = 0x44 + (1 << 7) = 196)  state 2

A signal's state at time t is the state of its last change at or before t, or
0 if it has none. The JSON configs (`signal.config`, `signal_type.config`,
`meta.config`'s `maxSignalChanges`) are described in schema.sql.

Invariants (checked at load, kept by every update):
- every signal is in state 0 after the last change point: an assertion always
  ends, so the far future is unknown (Moonfire refuses to open otherwise);
- no change point is empty, and each signal's series (`_series`) holds exactly
  its entries of the change points (`_points`), in time order;
- a signal's `days` holds, per local day, the time spent in each state 1..n
  (state 0 is not counted; trailing zeros are trimmed; empty days are absent);
  days are the server zone's (db.DayBounds), so 23 or 25 hours long at DST;
- `_dirty` holds every time whose row differs from RAM and must be written
  (or deleted) at the next flush; `_unconfirmed` the times the last flush
  wrote, which the next flush reads back, since a flush hook cannot see
  whether its transaction committed.

Garbage collection: at each flush, if there are more change points than
`maxSignalChanges` (unset means unlimited, as in Moonfire), the oldest go.
The first point kept is rewritten to carry every signal's state at that time,
so states from it on are unchanged; the day summaries lose what was before.

Where we differ from Moonfire's signal.rs: it collects garbage inside each
update, we at the flush (so RAM may hold more points than the limit until
then); we drop changes that no longer change anything, so the points stay
minimal; `POST /api/signals` rejects an end before the start and unknown
keys (Moonfire ignores both), and an undefined state is a SignalsError like
any bad input (Moonfire answers 412 Failed Precondition).

Threads: every method holds the database lock (`db.locked()`, an RLock); the
flush hook runs inside `db.flush`'s transaction with that lock already held.
Nothing here does I/O but SQLite.

Neighbours: db.py owns the connection, the flush transaction and the day
bounds; web.py parses requests, checks the `updateSignals` permission and
the CSRF token, and serves what `api_json`, `list_changes` and `update`
return; nvr.py would create types and signals with `add_signal_type` and
`add_signal`.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import logging
import uuid as uuidlib
from collections.abc import Iterable

import db as dbmod
import recording

logger = logging.getLogger(__name__)

MAX_STATE = 15  # states are 0..15 (Moonfire keeps a 16-bit mask of valid states)
ASSOCIATIONS = ("direct", "indirect")

# Times accepted from clients: from the epoch to 2**53 ticks (about the year
# 5100), so every time has a date for the day summaries and fits SQLite's
# integer and a JavaScript number.
MAX_TIME_90K = 2**53

_BODY_KEYS = ("signalIds", "states", "start", "end")
_TIME_KEYS = ("base", "rel90k")
_BASES = ("epoch", "now")


class SignalsError(ValueError):
    """A request or call that can't be applied; the one-line message names the field."""


class CorruptChanges(ValueError):
    """A `signal_change.changes` blob that breaks the encoding."""


# ---------------------------------------------------------------------------------------
# The signal_change.changes codec (layout and worked example in the module docstring)

def encode_changes(changes: Iterable[tuple[int, int]]) -> bytes:
    """`(signal_id, state)` pairs, ids strictly increasing -> a `changes` blob."""
    buf = bytearray()
    next_allowed = 0
    for signal_id, state in changes:
        if signal_id < next_allowed:
            raise ValueError(f"signal ids must be strictly increasing and non-negative; "
                             f"{signal_id} comes after {next_allowed - 1}")
        if not 0 <= state <= 0xFFFF:
            raise ValueError(f"signal {signal_id}: state {state} outside 0..65535")
        recording.append_varint(buf, signal_id - next_allowed)
        recording.append_varint(buf, state)
        next_allowed = signal_id + 1
    return bytes(buf)


def _varint(data: bytes, off: int) -> tuple[int, int]:
    try:
        return recording.read_varint32(data, off)
    except recording.VarintError as e:
        raise CorruptChanges(str(e)) from None


def decode_changes(data: bytes) -> list[tuple[int, int]]:
    """A `changes` blob -> `(signal_id, state)` pairs, ids strictly increasing.

    Limits follow Moonfire's decoder: ids are u32, states u16."""
    out = []
    off = next_allowed = 0
    while off < len(data):
        delta, off = _varint(data, off)
        pair_start = off
        state, off = _varint(data, off)
        signal_id = next_allowed + delta
        if signal_id > 0xFFFFFFFF:
            raise CorruptChanges(f"signal id {signal_id} exceeds 32 bits")
        if state > 0xFFFF:
            raise CorruptChanges(f"signal {signal_id}: state {state} at byte {pair_start} "
                                 f"exceeds 16 bits")
        out.append((signal_id, state))
        next_allowed = signal_id + 1
    return out


# ---------------------------------------------------------------------------------------
# In-memory records

@dataclasses.dataclass
class SignalType:
    uuid: bytes
    config: dict       # SignalTypeConfig: values {"1".."15": {name, motion?, color?}}
    valid_states: int  # bit i set: state i may be asserted; bit 0 (unknown) always


@dataclasses.dataclass
class Signal:
    id: int
    uuid: bytes
    type_uuid: bytes
    config: dict  # SignalConfig: shortName, cameraAssociations {"<camera id>": association}
    # Local day "YYYY-mm-dd" -> [90k ticks in state 1, in state 2, ...].
    days: dict[str, list[int]] = dataclasses.field(default_factory=dict)

    @property
    def short_name(self) -> str:
        return self.config.get("shortName", "")


def _dump(config: dict) -> str:
    return json.dumps(config, separators=(",", ":"), sort_keys=True)


def _as_uuid_bytes(u, what: str) -> bytes:
    if isinstance(u, uuidlib.UUID):
        return u.bytes
    if isinstance(u, (bytes, bytearray)) and len(u) == 16:
        return bytes(u)
    if isinstance(u, str):
        try:
            return uuidlib.UUID(u).bytes
        except ValueError:
            pass
    raise SignalsError(f"{what}: {u!r} is not a uuid")


def _valid_states(uuid: bytes, config: dict) -> int:
    mask = 1
    for key in config.get("values", {}):
        try:
            value = int(key)
        except ValueError:
            value = -1
        if not 1 <= value <= MAX_STATE:
            raise dbmod.DbError(
                f"signal type {uuidlib.UUID(bytes=uuid)} defines value {key!r}, outside "
                f"1..{MAX_STATE}; correct its config with `nvr.py sql`")
        mask |= 1 << value
    return mask


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _camera_associations(config: dict) -> list[tuple[int, str]]:
    """SignalConfig's cameraAssociations as (camera id, association); keys that
    are not integers (hand-edited configs) are skipped."""
    out = []
    for key, how in config.get("cameraAssociations", {}).items():
        try:
            out.append((int(key), how))
        except ValueError:
            logger.warning("signal config: ignoring camera association %r", key)
    return out


# ---------------------------------------------------------------------------------------
# The state

class Signals:
    """All signal types, signals and change points of one database, in RAM.

    Construct once per `db.Database` (read-only ones too); the constructor
    registers the flush hook, `close()` removes it. `types` and `signals` may
    be read while holding `db.locked()`; change them only through methods."""

    def __init__(self, database: dbmod.Database):
        self._db = database
        self.types: dict[bytes, SignalType] = {}
        self.signals: dict[int, Signal] = {}
        self._times: list[int] = []                  # sorted keys of _points
        self._points: dict[int, dict[int, int]] = {}  # time -> {signal id: new state}
        # signal id -> (change times, states), both in time order.
        self._series: dict[int, tuple[list[int], list[int]]] = {}
        self._dirty: set[int] = set()
        self._unconfirmed: set[int] = set()
        self.max_signal_changes: int | None = None
        with database.locked():
            if any(isinstance(getattr(h, "__self__", None), Signals)
                   for h in database.flush_hooks):
                raise dbmod.DbError("signals are already loaded for this database; use that "
                                    "Signals object (or close it first)")
            self._load()
            database.flush_hooks.append(self._flush)

    def close(self) -> None:
        """Unregisters the flush hook; unflushed changes are dropped."""
        with self._db.locked():
            if self._flush in self._db.flush_hooks:
                self._db.flush_hooks.remove(self._flush)

    # -- loading ---------------------------------------------------------------------

    def _load(self) -> None:
        c = self._db.conn
        row = c.execute("select config from meta").fetchone()
        meta = json.loads(row[0]) if row and row[0] else {}
        max_changes = meta.get("maxSignalChanges")
        if max_changes is not None and not (_is_int(max_changes) and max_changes >= 0):
            raise dbmod.DbError(f"meta config maxSignalChanges is {max_changes!r}, not a "
                                f"non-negative integer; correct it with `nvr.py sql`")
        self.max_signal_changes = max_changes
        for uuid, config in c.execute("select uuid, config from signal_type"):
            config = json.loads(config) if config else {}
            self.types[uuid] = SignalType(uuid, config, _valid_states(uuid, config))
        for id_, uuid, type_uuid, config in c.execute(
                "select id, uuid, type_uuid, config from signal order by id"):
            self.signals[id_] = Signal(id_, uuid, type_uuid, json.loads(config) if config else {})
            self._series[id_] = ([], [])
        for t, blob in c.execute("select time_90k, changes from signal_change order by time_90k"):
            try:
                changes = decode_changes(blob)
            except CorruptChanges as e:
                raise dbmod.DbError(
                    f"signal_change row at {t} ({self._fmt(t)}) is corrupt: {e}; delete it "
                    f"with `nvr.py sql` (the states it set are lost)") from None
            if not changes:
                self._dirty.add(t)  # an empty row changes nothing; the next flush drops it
                continue
            for signal_id, state in changes:
                series = self._series.get(signal_id)
                if series is None:
                    raise dbmod.DbError(
                        f"signal_change row at {t} ({self._fmt(t)}) names signal {signal_id}, "
                        f"which does not exist; restore the signal or delete the row with "
                        f"`nvr.py sql`")
                series[0].append(t)
                series[1].append(state)
            self._times.append(t)
            self._points[t] = dict(changes)
        for signal_id, (ts, ss) in self._series.items():
            if ss and ss[-1] != 0:
                raise dbmod.DbError(
                    f"signal {signal_id} stays in state {ss[-1]} after its last change at "
                    f"{ts[-1]} ({self._fmt(ts[-1])}); every asserted state must end, so the "
                    f"database is inconsistent: add a signal_change row returning it to 0 "
                    f"or delete its rows with `nvr.py sql`")
            days = self.signals[signal_id].days
            for k in range(len(ts) - 1):
                self._adjust_days(days, ts[k], ts[k + 1], 0, ss[k])

    def _fmt(self, t: int) -> str:
        try:
            return recording.format_time(t, self._db.zone)
        except ValueError:
            return "out of range"

    # -- day summaries ---------------------------------------------------------------

    def _adjust_days(self, days: dict[str, list[int]], t0: int, t1: int,
                     old_state: int, new_state: int) -> None:
        """Moves [t0, t1) from `old_state` to `new_state` in `days`, split at local
        midnights (Moonfire's days::SignalValue::apply)."""
        if t0 >= t1 or old_state == new_state:
            return
        bounds = self._db.day_bounds
        t = t0
        while t < t1:
            _, day_end, key = bounds.day_of(t)
            part = min(t1, day_end) - t
            v = days.setdefault(key, [])
            if new_state > 0:
                if len(v) < new_state:
                    v.extend([0] * (new_state - len(v)))
                v[new_state - 1] += part
            if old_state > 0:
                assert len(v) >= old_state and v[old_state - 1] >= part, (key, v, old_state, part)
                v[old_state - 1] -= part
            while v and v[-1] == 0:
                v.pop()
            if not v:
                del days[key]
            t = day_end

    # -- change points ---------------------------------------------------------------

    def _put(self, t: int, signal_id: int, state: int) -> None:
        p = self._points.get(t)
        if p is None:
            p = self._points[t] = {}
            bisect.insort(self._times, t)
        p[signal_id] = state
        self._dirty.add(t)

    def _drop(self, t: int, signal_id: int) -> None:
        p = self._points[t]
        del p[signal_id]
        self._dirty.add(t)
        if not p:
            del self._points[t]
            del self._times[bisect.bisect_left(self._times, t)]

    def _assert_state(self, signal_id: int, start: int, end: int, state: int) -> None:
        """Sets `signal_id` to `state` over [start, end), start < end; from `end` on
        it keeps its earlier states."""
        ts, ss = self._series[signal_id]
        i = bisect.bisect_left(ts, start)  # ts[i:j] are the changes in [start, end)
        j = bisect.bisect_left(ts, end)
        before = ss[i - 1] if i else 0     # in effect just before start
        at_end = ss[j - 1] if j else 0     # in effect just before end, until now

        days = self.signals[signal_id].days
        seg_t, seg_state = start, before
        for k in range(i, j):
            self._adjust_days(days, seg_t, ts[k], seg_state, state)
            seg_t, seg_state = ts[k], ss[k]
        self._adjust_days(days, seg_t, end, seg_state, state)

        for k in range(i, j):
            self._drop(ts[k], signal_id)
        del ts[i:j], ss[i:j]
        if state != before:
            ts.insert(i, start)
            ss.insert(i, state)
            self._put(start, signal_id, state)
            i += 1
        if i < len(ts) and ts[i] == end:
            if ss[i] == state:  # the existing change at end now changes nothing
                self._drop(end, signal_id)
                del ts[i], ss[i]
        elif at_end != state:
            ts.insert(i, end)
            ss.insert(i, at_end)
            self._put(end, signal_id, at_end)

    # -- the API ---------------------------------------------------------------------

    def api_json(self, days: bool) -> tuple[list, list]:
        """`GET /api/`'s `signals` and `signalTypes` arrays (reference §5.2)."""
        with self._db.locked():
            cameras = self._db.cameras
            signals = []
            for s in sorted(self.signals.values(), key=lambda s: s.id):
                assoc = {}
                for camera_id, how in sorted(_camera_associations(s.config)):
                    c = cameras.get(camera_id)
                    if c is not None:  # a deleted camera's association is not shown
                        assoc[str(uuidlib.UUID(bytes=c.uuid))] = how
                j = {"id": s.id, "uuid": str(uuidlib.UUID(bytes=s.uuid)),
                     "type": str(uuidlib.UUID(bytes=s.type_uuid)), "shortName": s.short_name,
                     "cameras": assoc}
                if days:
                    out = {}
                    for key in sorted(s.days):
                        start, end = self._db.day_bounds.bounds(key)
                        out[key] = {"startTime90k": start, "endTime90k": end,
                                    "states": list(s.days[key])}
                    j["days"] = out
                signals.append(j)
            types = []
            for t in sorted(self.types.values(), key=lambda t: uuidlib.UUID(bytes=t.uuid)):
                states = []
                values = t.config.get("values", {})
                for key in sorted(values, key=int):
                    v = values[key]
                    st = {"value": int(key), "name": v.get("name", "")}
                    if v.get("motion"):
                        st["motion"] = True
                    st["color"] = v.get("color", "")
                    states.append(st)
                types.append({"uuid": str(uuidlib.UUID(bytes=t.uuid)), "states": states})
            return signals, types

    def list_changes(self, start_90k: int, end_90k: int) -> dict:
        """`GET /api/signals`: `{times90k, signalIds, states}`, parallel arrays.

        As Moonfire's `list_changes_by_time`: first, if there is a change point
        before `start_90k`, every signal's non-zero state just after the last
        such point, all at that point's time; then every change at a point in
        [start_90k, end_90k), in time then signal id order."""
        times, ids, states = [], [], []
        with self._db.locked():
            i = bisect.bisect_left(self._times, start_90k)
            if i:
                p = self._times[i - 1]
                for signal_id in sorted(self._series):
                    ts, ss = self._series[signal_id]
                    k = bisect.bisect_right(ts, p)
                    if k and ss[k - 1]:
                        times.append(p)
                        ids.append(signal_id)
                        states.append(ss[k - 1])
            j = bisect.bisect_left(self._times, end_90k) if end_90k > start_90k else i
            for t in self._times[i:j]:
                for signal_id, state in sorted(self._points[t].items()):
                    times.append(t)
                    ids.append(signal_id)
                    states.append(state)
        return {"times90k": times, "signalIds": ids, "states": states}

    def update(self, body: dict) -> int:
        """`POST /api/signals`: validates `body` and asserts its states over
        [start, end); returns now in 90k ticks (the response's `time90k`).

        Raises SignalsError, naming the field, for anything invalid; nothing
        changes then. An empty range (end = start) changes nothing. The
        change points are visible at once and written at the next flush."""
        now = recording.to_90k_from_ns(self._db.clocks.realtime())
        signal_ids, states, start, end = self._parse_body(body, now)
        with self._db.locked():
            if self._db.read_only:
                raise SignalsError("the database is open read-only; signals can't be updated")
            for n, (signal_id, state) in enumerate(zip(signal_ids, states)):
                s = self.signals.get(signal_id)
                if s is None:
                    raise SignalsError(f"signalIds[{n}]: unknown signal {signal_id}")
                t = self.types.get(s.type_uuid)
                mask = t.valid_states if t is not None else 1
                if not mask >> state & 1:
                    defined = ", ".join(str(v) for v in range(MAX_STATE + 1) if mask >> v & 1)
                    raise SignalsError(f"states[{n}]: signal {signal_id} has no state {state} "
                                       f"(its type defines {defined})")
            if start < end:
                for signal_id, state in zip(signal_ids, states):
                    self._assert_state(signal_id, start, end, state)
        return now

    @staticmethod
    def _parse_body(body, now: int) -> tuple[list[int], list[int], int, int]:
        if not isinstance(body, dict):
            raise SignalsError("the request body must be a JSON object")
        for key in body:
            if key not in _BODY_KEYS and key != "csrf":
                raise SignalsError(f"unknown key {key!r} in the request body; expected "
                                   f"{', '.join(_BODY_KEYS)} (and csrf)")
        for key in _BODY_KEYS:
            if key not in body:
                raise SignalsError(f"missing key {key!r} in the request body")
        signal_ids, states = body["signalIds"], body["states"]
        for name, v in (("signalIds", signal_ids), ("states", states)):
            if not isinstance(v, list) or not all(_is_int(x) for x in v):
                raise SignalsError(f"{name} must be a list of integers")
        if len(signal_ids) != len(states):
            raise SignalsError(f"signalIds and states must have the same length, not "
                               f"{len(signal_ids)} and {len(states)}")
        for n in range(1, len(signal_ids)):
            if signal_ids[n] <= signal_ids[n - 1]:
                raise SignalsError(f"signalIds must be strictly increasing; signalIds[{n}] = "
                                   f"{signal_ids[n]} follows {signal_ids[n - 1]}")
        for n, state in enumerate(states):
            if not 0 <= state <= MAX_STATE:
                raise SignalsError(f"states[{n}]: {state} is outside 0..{MAX_STATE}")
        start = Signals._parse_time(body["start"], "start", now)
        end = Signals._parse_time(body["end"], "end", now)
        if end < start:
            raise SignalsError(f"end ({end}) is before start ({start})")
        return signal_ids, states, start, end

    @staticmethod
    def _parse_time(v, name: str, now: int) -> int:
        if not isinstance(v, dict):
            raise SignalsError(f'{name} must be an object {{"base": "epoch" | "now", '
                               f'"rel90k": integer}}')
        for key in v:
            if key not in _TIME_KEYS:
                raise SignalsError(f"unknown key {key!r} in {name}; expected base, rel90k")
        for key in _TIME_KEYS:
            if key not in v:
                raise SignalsError(f"missing key {key!r} in {name}")
        if v["base"] not in _BASES:
            raise SignalsError(f'{name}.base must be "epoch" or "now", not {v["base"]!r}')
        if not _is_int(v["rel90k"]):
            raise SignalsError(f"{name}.rel90k must be an integer")
        t = v["rel90k"] + (now if v["base"] == "now" else 0)
        if not 0 <= t < MAX_TIME_90K:
            raise SignalsError(f"{name}: time {t} is outside 0..{MAX_TIME_90K} "
                               f"(90 kHz ticks since 1970)")
        return t

    # -- creating types and signals --------------------------------------------------

    def add_signal_type(self, uuid, states: dict[int, dict]) -> bytes:
        """Adds a signal type; `states` maps each value 1..15 to `{name, motion?,
        color?}` (other keys are kept for the UI). Returns its uuid's 16 bytes.
        Its own transaction."""
        u = _as_uuid_bytes(uuid, "uuid")
        values = {}
        for value, v in states.items():
            if not _is_int(value) or not 1 <= value <= MAX_STATE:
                raise SignalsError(f"states: value {value!r} is outside 1..{MAX_STATE} "
                                   f"(0 is always unknown)")
            if not isinstance(v, dict) or not isinstance(v.get("name"), str):
                raise SignalsError(f"states[{value}] must be an object with a string name")
        for value, v in sorted(states.items()):
            cfg = {k: x for k, x in v.items() if k not in ("motion", "color")}
            if v.get("motion"):
                cfg["motion"] = True
            if v.get("color"):
                cfg["color"] = str(v["color"])
            values[str(value)] = cfg
        config = {"values": values} if values else {}
        with self._db.locked():
            if self._db.read_only:
                raise dbmod.DbError("can't add a signal type in read-only mode")
            if u in self.types:
                raise SignalsError(f"uuid: signal type {uuidlib.UUID(bytes=u)} already exists")
            with dbmod.transaction(self._db.conn):
                self._db.conn.execute("insert into signal_type (uuid, config) values (?, ?)",
                                      (u, _dump(config)))
            self.types[u] = SignalType(u, config, _valid_states(u, config))
        return u

    def add_signal(self, short_name: str, type_uuid, cameras: dict[int, str]) -> int:
        """Adds a signal of an existing type, associated with `cameras` (camera id
        -> "direct" | "indirect"); returns its id. Its own transaction."""
        t = _as_uuid_bytes(type_uuid, "type_uuid")
        with self._db.locked():
            if self._db.read_only:
                raise dbmod.DbError("can't add a signal in read-only mode")
            if t not in self.types:
                raise SignalsError(f"type_uuid: no signal type {uuidlib.UUID(bytes=t)}")
            if any(s.short_name == short_name for s in self.signals.values()):
                raise SignalsError(f"short_name: a signal named {short_name!r} already exists")
            assoc = {}
            for camera_id, how in sorted(cameras.items()):
                if camera_id not in self._db.cameras:
                    raise SignalsError(f"cameras: no camera with id {camera_id}")
                if how not in ASSOCIATIONS:
                    raise SignalsError(f"cameras[{camera_id}]: association must be "
                                       f"\"direct\" or \"indirect\", not {how!r}")
                assoc[str(camera_id)] = how
            config = {"shortName": short_name}
            if assoc:
                config["cameraAssociations"] = assoc
            u = uuidlib.uuid4().bytes
            with dbmod.transaction(self._db.conn):
                id_ = self._db.conn.execute(
                    "insert into signal (uuid, type_uuid, config) values (?, ?, ?)",
                    (u, t, _dump(config))).lastrowid
            self.signals[id_] = Signal(id_, u, t, config)
            self._series[id_] = ([], [])
            return id_

    # -- flushing --------------------------------------------------------------------

    def _gc(self) -> int:
        """Drops the oldest change points beyond `max_signal_changes`; returns how
        many. The first point kept then carries every signal's state at its time."""
        limit = self.max_signal_changes
        excess = 0 if limit is None else len(self._times) - limit
        if excess <= 0:
            return 0
        cut = self._times[excess] if excess < len(self._times) else None  # first kept
        for signal_id, (ts, ss) in self._series.items():
            j = len(ts) if cut is None else bisect.bisect_left(ts, cut)
            if not j:
                continue
            days = self.signals[signal_id].days
            for k in range(j):
                seg_end = ts[k + 1] if k + 1 < j else cut
                if seg_end is not None:  # with no cut, the last state is 0 (invariant)
                    self._adjust_days(days, ts[k], seg_end, ss[k], 0)
            carried = ss[j - 1]
            del ts[:j], ss[:j]
            if cut is None:
                continue
            # Nothing precedes `cut` now, so every state just before it is 0.
            if ts and ts[0] == cut:
                if ss[0] == 0:
                    self._drop(cut, signal_id)
                    del ts[0], ss[0]
            elif carried:
                ts.insert(0, cut)
                ss.insert(0, carried)
                self._put(cut, signal_id, carried)
        for t in self._times[:excess]:
            del self._points[t]
            self._dirty.add(t)
        del self._times[:excess]
        return excess

    def _flush(self, conn) -> None:
        """The flush hook: runs inside db.flush's transaction, lock held."""
        with self._db.locked():
            gced = self._gc()
            # Whether the last flush's transaction committed can only be seen now.
            for t in self._unconfirmed - self._dirty:
                row = conn.execute("select changes from signal_change where time_90k = ?",
                                   (t,)).fetchone()
                p = self._points.get(t)
                want = encode_changes(sorted(p.items())) if p is not None else None
                if (row[0] if row is not None else None) != want:
                    self._dirty.add(t)
            written = deleted = 0
            for t in sorted(self._dirty):
                p = self._points.get(t)
                if p is None:
                    conn.execute("delete from signal_change where time_90k = ?", (t,))
                    deleted += 1
                else:
                    conn.execute("insert or replace into signal_change (time_90k, changes) "
                                 "values (?, ?)", (t, encode_changes(sorted(p.items()))))
                    written += 1
            self._unconfirmed, self._dirty = self._dirty, set()
            if written or deleted or gced:
                logger.log(logging.INFO if gced else logging.DEBUG,
                           "signals: wrote %d change point(s), deleted %d (%d garbage-collected "
                           "beyond maxSignalChanges %s); %d in memory", written, deleted, gced,
                           self.max_signal_changes, len(self._times))
