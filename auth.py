"""Users' credentials, sessions and permissions.

Passwords are hashed with argon2id (argon2-cffi) into PHC strings stored in
`user.password_hash`. A legacy Moonfire scrypt PHC string
(`$scrypt$ln=15,r=8,p=1$<salt>$<hash>`, base64 without padding) still verifies,
with the standard library's `hashlib.scrypt`, and is replaced by an argon2id hash
at the next successful login (`needs_rehash`; the password_id stays the same).

`Permissions` is Moonfire's protobuf message stored in `user.permissions` and
`user_session.permissions`: four bools, field numbers view_video = 1,
read_camera_configs = 2, update_signals = 3, admin_users = 4. A true bool is
encoded as tag (field << 3 | 0) then 01; false fields are omitted (proto3).

Sessions (reference §6, `user_session`): a session id is 48 random bytes, sent to
the browser as the `s` cookie (64 characters of base64 without padding) and never
stored: the row's key is `blake2b(id, digest_size=24)`, so a leaked database or
backup can't be used to log in. Each session has a 32-byte random seed; its CSRF
token is `blake2b(b"csrf", key=seed, digest_size=24)` as base64 without padding (32
characters), compared in constant time. (Moonfire uses Blake3 for both; version 8
of our schema switched, and the 7 -> 8 upgrade revoked the old sessions.)
Sessions never expire; they end by logout (revocation reason 1) or by
`nvr.py sessions revoke` (reason 3), and a disabled user's sessions stop working.
Creation and revocation are written at once, each in its own transaction; usage
(use count, last use time, user agent, peer address) and password failure counts
change in memory on every request and are written lazily by a hook in the next
database flush (Moonfire #282).

Login throttling (beyond Moonfire): failed password logins are counted per
username and per client address (`Throttle`). The first FREE_FAILURES of a key cost
nothing; after that the key must wait 1 s, 2 s, 4 s, ... (doubling, at most
MAX_DELAY_SEC = 15 min) after its latest failure before the next attempt is even
checked (HTTP 429 with `Retry-After`). A success clears the counts of its username
and address; a key with no failure for FORGET_AFTER_SEC (1 hour) is forgotten, so
an attacker can delay the real user by at most 15 minutes at a time, never lock
them out for good. At most two password hashes are checked at once (argon2id takes
64 MiB each); the throttle is checked again, and a failure recorded, while holding one
of those two slots, so attempts sent all at once are throttled like sequential ones. An
unknown username is checked against a dummy hash, so a failure takes as long whether or
not the name exists. Long usernames are keyed by a hash, and when the table is full
keys that aren't delayed go before delayed ones, so a flood of made-up names can't use
memory without bound or wipe the count of the account under attack.

Neighbours: db.py owns the `user` rows (add/update/delete, in-memory `db.users`)
and the flush transaction; web.py turns requests into calls here (cookies, caller
resolution, CSRF checks on mutations); nvr.py's `login` and `sessions` commands
use `Auth` directly. Thread safety: everything here runs under `db.locked()`,
except password hashing and verification, which never hold the lock.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import hashlib
import hmac
import ipaddress
import logging
import secrets
import threading

import argon2

logger = logging.getLogger(__name__)


def default_hasher() -> argon2.PasswordHasher:
    """The production hasher: argon2id with RFC 9106's low-memory parameters (§4, the
    second recommended option: 3 passes over 64 MiB, 4 lanes, a 32-byte tag and a
    16-byte salt), fine for a Raspberry Pi.

    Written out rather than left to argon2-cffi: they are its defaults from 21.2 on,
    but Debian 12's 21.1 defaults to 2 passes over 100 MiB, 8 lanes and a 16-byte
    tag, so `needs_rehash` would call every hash made by the other version outdated
    and a box moving between the two would rehash passwords at each login.
    """
    return argon2.PasswordHasher(time_cost=3, memory_cost=65536, parallelism=4,
                                 hash_len=32, salt_len=16, type=argon2.Type.ID)


# The hasher used for new hashes. Tests swap in a cheap one via `set_password_hasher`
# (see test/conftest.py).
_hasher = default_hasher()


def set_password_hasher(hasher: argon2.PasswordHasher) -> None:
    global _hasher
    _hasher = hasher


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """True if `password` matches `password_hash` (argon2 or legacy scrypt)."""
    if password_hash.startswith("$scrypt$"):
        return _verify_scrypt(password_hash, password)
    try:
        return _hasher.verify(password_hash, password)
    except argon2.exceptions.VerificationError:
        return False
    except argon2.exceptions.InvalidHashError:
        return False


def needs_rehash(password_hash: str) -> bool:
    """True for legacy scrypt hashes and argon2 hashes with old parameters."""
    if password_hash.startswith("$scrypt$"):
        return True
    return _hasher.check_needs_rehash(password_hash)


def _b64decode_nopad(s: str) -> bytes:
    return base64.b64decode(s + "=" * (-len(s) % 4))


def _verify_scrypt(phc: str, password: str) -> bool:
    # $scrypt$ln=<log2 N>,r=<r>,p=<p>$<salt b64>$<hash b64>
    try:
        _, alg, params, salt_b64, hash_b64 = phc.split("$")
        p = dict(kv.split("=", 1) for kv in params.split(","))
        n = 1 << int(p["ln"])
        r, par = int(p["r"]), int(p["p"])
        salt, expected = _b64decode_nopad(salt_b64), _b64decode_nopad(hash_b64)
    except (ValueError, KeyError):
        return False
    actual = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=par,
                            maxmem=256 * n * r * par + (1 << 20), dklen=len(expected))
    return hmac.compare_digest(actual, expected)


@dataclasses.dataclass
class Permissions:
    view_video: bool = False
    read_camera_configs: bool = False
    update_signals: bool = False
    admin_users: bool = False

    # (field number, attribute, JSON name), in field order.
    FIELDS = ((1, "view_video", "viewVideo"),
              (2, "read_camera_configs", "readCameraConfigs"),
              (3, "update_signals", "updateSignals"),
              (4, "admin_users", "adminUsers"))

    def encode(self) -> bytes:
        return b"".join(bytes([field << 3, 1]) for field, attr, _ in self.FIELDS
                        if getattr(self, attr))

    @classmethod
    def decode(cls, blob: bytes) -> "Permissions":
        """Decodes the protobuf; unknown fields are skipped, as protobuf requires."""
        out, i = cls(), 0
        by_field = {f: a for f, a, _ in cls.FIELDS}
        while i < len(blob):
            key, i = _read_varint(blob, i)
            field, wire = key >> 3, key & 7
            if wire == 0:
                value, i = _read_varint(blob, i)
                if field in by_field:
                    setattr(out, by_field[field], value != 0)
            elif wire == 2:
                n, i = _read_varint(blob, i)
                i += n
            elif wire == 1:
                i += 8
            elif wire == 5:
                i += 4
            else:
                raise ValueError(f"permissions: bad wire type {wire}")
        if i != len(blob):
            raise ValueError("permissions: truncated")
        return out

    def to_json(self) -> dict:
        return {name: getattr(self, attr) for _, attr, name in self.FIELDS}

    @classmethod
    def from_json(cls, obj: dict) -> "Permissions":
        names = {name: attr for _, attr, name in cls.FIELDS}
        unknown = set(obj) - set(names)
        if unknown:
            raise ValueError(f"unknown permission(s) {sorted(unknown)}; "
                             f"known: {', '.join(names)}")
        for k, v in obj.items():
            if not isinstance(v, bool):
                raise ValueError(f"permission {k} must be true or false, not {v!r}")
        return cls(**{names[k]: v for k, v in obj.items()})

    @classmethod
    def all(cls) -> "Permissions":
        return cls(True, True, True, True)


def _read_varint(b: bytes, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if i >= len(b):
            raise ValueError("permissions: truncated varint")
        byte = b[i]
        i += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, i
        shift += 7
        if shift > 63:
            raise ValueError("permissions: varint too long")


# ---------------------------------------------------------------------------------------
# Sessions

SESSION_ID_BYTES = 48
SESSION_HASH_BYTES = 24
SEED_BYTES = 32
CSRF_BYTES = 24

# user_session.flags: cookie attributes.
FLAG_HTTP_ONLY = 1
FLAG_SECURE = 2
FLAG_SAME_SITE_LAX = 4
FLAG_SAME_SITE_STRICT = 8
FLAG_NAMES = {"http-only": FLAG_HTTP_ONLY, "secure": FLAG_SECURE,
              "same-site": FLAG_SAME_SITE_LAX, "same-site-strict": FLAG_SAME_SITE_STRICT}

# user_session.revocation_reason.
REVOKED_LOGOUT = 1
REVOKED_ALGORITHM_CHANGE = 2
REVOKED_BY_ADMIN = 3
REVOCATION_REASONS = {REVOKED_LOGOUT: "logged out", REVOKED_ALGORITHM_CHANGE: "algorithm change",
                      REVOKED_BY_ADMIN: "revoked by an administrator"}


class AuthError(Exception):
    """A failed authentication; the message is safe to show the client."""


class Throttled(AuthError):
    """Too many failed logins for a username or address; retry after `retry_after_sec`."""

    def __init__(self, message: str, retry_after_sec: int):
        super().__init__(message)
        self.retry_after_sec = retry_after_sec


def b64(b: bytes) -> str:
    return base64.b64encode(b).decode().rstrip("=")


def hash_session_id(raw: bytes) -> bytes:
    return hashlib.blake2b(raw, digest_size=SESSION_HASH_BYTES).digest()


def csrf_token(seed: bytes) -> str:
    return b64(hashlib.blake2b(b"csrf", key=seed, digest_size=CSRF_BYTES).digest())


def parse_session_cookie(value: str) -> bytes | None:
    """The 48-byte id of an `s` cookie value, or None if it isn't one."""
    if len(value) != 64:
        return None
    try:
        raw = base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
    except ValueError:
        return None
    return raw if len(raw) == SESSION_ID_BYTES else None


def pack_addr(addr: str | None) -> bytes | None:
    """A client address as stored: 4 or 16 bytes; None for a Unix socket or unknown."""
    if not addr:
        return None
    try:
        return ipaddress.ip_address(addr).packed
    except ValueError:
        return None


def unpack_addr(blob: bytes | None) -> str | None:
    if not blob:
        return None
    try:
        return str(ipaddress.ip_address(bytes(blob)))
    except ValueError:
        return blob.hex()


@dataclasses.dataclass
class Client:
    """Who made a request, as far as the audit fields go."""
    addr: str | None = None        # IP address (after trusted proxy headers); None: Unix
    user_agent: str | None = None
    domain: str | None = None      # the Host header without the port


@dataclasses.dataclass
class Session:
    """One `user_session` row (reference §6)."""
    hash: bytes
    user_id: int
    seed: bytes
    flags: int
    domain: str | None
    description: str | None
    creation_password_id: int | None
    creation_time_sec: int
    creation_user_agent: str | None
    creation_peer_addr: bytes | None
    revocation_time_sec: int | None = None
    revocation_user_agent: str | None = None
    revocation_peer_addr: bytes | None = None
    revocation_reason: int | None = None
    revocation_reason_detail: str | None = None
    last_use_time_sec: int | None = None
    last_use_user_agent: str | None = None
    last_use_peer_addr: bytes | None = None
    use_count: int = 0
    permissions: Permissions = dataclasses.field(default_factory=Permissions)
    dirty: bool = False   # usage changed since the last flush

    @property
    def csrf(self) -> str:
        return csrf_token(self.seed)

    def check_csrf(self, token) -> bool:
        return isinstance(token, str) and hmac.compare_digest(token.encode(), self.csrf.encode())

    @property
    def id_text(self) -> str:
        """How `nvr.py sessions` names a session: the first 16 hex digits of its hash."""
        return self.hash.hex()[:16]

    @property
    def state(self) -> str:
        if self.revocation_reason is None:
            return "valid"
        return "revoked (" + REVOCATION_REASONS.get(self.revocation_reason,
                                                   f"reason {self.revocation_reason}") + ")"


_SESSION_COLUMNS = ("session_id_hash, user_id, seed, flags, domain, description, "
                    "creation_password_id, creation_time_sec, creation_user_agent, "
                    "creation_peer_addr, revocation_time_sec, revocation_user_agent, "
                    "revocation_peer_addr, revocation_reason, revocation_reason_detail, "
                    "last_use_time_sec, last_use_user_agent, last_use_peer_addr, use_count, "
                    "permissions")


def _session_from_row(row) -> Session:
    return Session(bytes(row[0]), *row[1:19], Permissions.decode(bytes(row[19] or b"")))


# ---------------------------------------------------------------------------------------
# Login throttling

class Throttle:
    """Failed-login counts per key ("user:<name>", "addr:<ip>"); see the module docstring."""

    FREE_FAILURES = 5
    MAX_DELAY_SEC = 15 * 60
    FORGET_AFTER_SEC = 60 * 60
    MAX_KEYS = 10_000
    MAX_NAME_IN_KEY = 64   # longer usernames are keyed by a hash: bounded memory

    @classmethod
    def keys(cls, username: str, addr: str | None) -> list[str]:
        """The keys an attempt by `username` from `addr` counts against."""
        if len(username) > cls.MAX_NAME_IN_KEY:
            name_key = "user#" + hashlib.blake2b(username.encode(errors="surrogatepass"),
                                                 digest_size=16).hexdigest()
        else:
            name_key = f"user:{username}"
        return [name_key] + ([f"addr:{addr}"] if addr else [])

    def __init__(self):
        # key -> (failures, time of the latest failure in seconds)
        self._fails: collections.OrderedDict[str, tuple[int, float]] = collections.OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def delay_sec(cls, failures: int) -> int:
        """How long after its latest failure a key with `failures` must wait."""
        if failures < cls.FREE_FAILURES:
            return 0
        return min(cls.MAX_DELAY_SEC, 1 << min(failures - cls.FREE_FAILURES, 20))

    def retry_after(self, keys, now_sec: float) -> int:
        """Seconds to wait before an attempt for `keys` may be checked; 0 if now."""
        wait = 0.0
        with self._lock:
            for k in keys:
                e = self._fails.get(k)
                if e is None:
                    continue
                n, last = e
                if now_sec - last >= self.FORGET_AFTER_SEC:
                    del self._fails[k]
                    continue
                wait = max(wait, last + self.delay_sec(n) - now_sec)
        return int(wait) + (wait % 1 > 0) if wait > 0 else 0

    def failed(self, keys, now_sec: float) -> None:
        with self._lock:
            for k in keys:
                n, last = self._fails.pop(k, (0, now_sec))
                if now_sec - last >= self.FORGET_AFTER_SEC:
                    n = 0
                self._fails[k] = (n + 1, now_sec)
            if len(self._fails) > self.MAX_KEYS:
                self._evict(now_sec)

    def _evict(self, now_sec: float) -> None:
        """Makes room, oldest first: forgotten keys, then keys not (yet) delayed, and
        only then delayed ones. So a flood of one-off names can't push out the count of
        an account being guessed at."""
        f = self._fails
        for k in [k for k, (_, last) in f.items() if now_sec - last >= self.FORGET_AFTER_SEC]:
            del f[k]
        if len(f) > self.MAX_KEYS:
            for k in [k for k, (n, _) in f.items() if n < self.FREE_FAILURES]:
                del f[k]
                if len(f) <= self.MAX_KEYS:
                    break
        while len(f) > self.MAX_KEYS:
            f.popitem(last=False)

    def succeeded(self, keys) -> None:
        with self._lock:
            for k in keys:
                self._fails.pop(k, None)

    def failures(self, key: str) -> int:
        with self._lock:
            return self._fails.get(key, (0, 0))[0]


# ---------------------------------------------------------------------------------------
# The session store

class Auth:
    """Sessions and logins for one database. `Auth(db)` registers its flush hook."""

    def __init__(self, db):
        self.db = db
        self._sessions: dict[bytes, Session] = {}   # cache by hash (and all dirty ones)
        self._failures_dirty: set[int] = set()      # user ids whose failure count changed
        self.throttle = Throttle()
        self._hashing = threading.BoundedSemaphore(2)
        self._dummy: str | None = None
        self._written: list[tuple[Session, int]] = []
        self._written_failures: set[int] = set()
        if not db.read_only:
            db.flush_hooks.append(self._flush)
            db.on_flush.append(self._flushed)

    def _now_sec(self) -> int:
        return self.db.clocks.realtime() // 1_000_000_000

    # -- logging in --------------------------------------------------------------------

    def login_by_password(self, username: str, password: str, client: Client, *,
                          flags: int = FLAG_HTTP_ONLY | FLAG_SAME_SITE_LAX) -> tuple[str, Session]:
        """Checks the password and creates a session: returns (cookie value, session).

        Raises `Throttled`, or `AuthError` for an unknown user, a wrong or empty
        password, a user without a password or a disabled user (one message for all,
        so as not to say which usernames exist)."""
        keys = Throttle.keys(username, client.addr)
        self._check_throttle(keys, "logins")   # cheap, before waiting for a hashing slot
        with self.db.locked("login: find user"):
            user = next((u for u in self.db.users.values() if u.username == username), None)
            password_hash = user.password_hash if user else None
            password_id = user.password_id if user else None
        with self._hashing:   # never under the database lock: argon2 takes ~0.1 s
            # Again: attempts queued for a slot at once must not all pass the first check.
            now = self._check_throttle(keys, "logins")
            # An unknown user costs a check too, so timing doesn't tell which names exist.
            # An empty password never logs in, even if a hash of one was stored (older
            # `nvr.py config user` took it; the API refuses to set one).
            ok = verify_password(password_hash or self._dummy_hash(), password) \
                and password_hash is not None and password != ""
            new_hash = hash_password(password) if ok and needs_rehash(password_hash) else None
            if not ok or user.disabled:
                self.throttle.failed(keys, now)   # before the next queued attempt looks
        if not ok or user.disabled:
            if user is not None and password_hash is not None and not ok:
                with self.db.locked("login: count failure"):
                    u = self.db.users.get(user.id)
                    if u is not None:
                        u.password_failure_count += 1
                        self._failures_dirty.add(u.id)
            logger.info("login failed for %r from %s", username, client.addr or "unix")
            raise AuthError("incorrect username or password")
        self.throttle.succeeded(keys)
        if new_hash is not None:
            with self.db.locked("login: rehash"):
                u = self.db.users.get(user.id)
                if u is not None and u.password_id == password_id \
                        and u.password_hash == password_hash:
                    self.db.update_user(user.id, password_hash=new_hash, keep_password_id=True)
                    logger.info("user %r: password hash upgraded to argon2id", username)
        cookie, session = self.make_session(user.id, client, flags=flags,
                                            creation_password_id=password_id)
        logger.info("user %r logged in from %s; session %s", username, client.addr or "unix",
                    session.id_text)
        return cookie, session

    def check_password(self, user_id: int, password: str, client: Client) -> bool:
        """Checks a user's current password outside a login (the API's
        `precondition.password`): throttled and counted exactly like a login, so it is
        no better an oracle. Raises `Throttled`."""
        with self.db.locked("check password: find user"):
            user = self.db.get_user(user_id)
            password_hash = user.password_hash
        keys = Throttle.keys(user.username, client.addr)
        self._check_throttle(keys, "password checks")
        with self._hashing:
            now = self._check_throttle(keys, "password checks")   # as in login_by_password
            ok = verify_password(password_hash or self._dummy_hash(), password) \
                and password_hash is not None and password != ""
            if not ok:
                self.throttle.failed(keys, now)
        if ok:
            self.throttle.succeeded(keys)
            return True
        if password_hash is not None:
            with self.db.locked("check password: count failure"):
                u = self.db.users.get(user_id)
                if u is not None:
                    u.password_failure_count += 1
                    self._failures_dirty.add(u.id)
        return False

    def _check_throttle(self, keys: list[str], what: str) -> float:
        """Raises `Throttled` if `keys` must wait; else returns now, in seconds."""
        now = self.db.clocks.realtime() / 1e9
        wait = self.throttle.retry_after(keys, now)
        if wait:
            raise Throttled(f"too many failed {what}; try again in {wait} s", wait)
        return now

    def _dummy_hash(self) -> str:
        """A hash of a random password with the current parameters, checked against for
        users that don't exist or have no password. Made once, on first need (under
        `_hashing`)."""
        if self._dummy is None:
            self._dummy = hash_password(secrets.token_urlsafe(16))
        return self._dummy

    def hash_password(self, password: str) -> str:
        """argon2id, at most two at once (64 MiB each)."""
        with self._hashing:
            return hash_password(password)

    def make_session(self, user_id: int, client: Client, *, flags: int,
                     permissions: Permissions | None = None, description: str | None = None,
                     creation_password_id: int | None = None) -> tuple[str, Session]:
        """Creates and stores a session; returns (cookie value, session). Its
        permissions are the user's unless given (`nvr.py login --permissions`)."""
        raw = secrets.token_bytes(SESSION_ID_BYTES)
        with self.db.locked("make session"):
            user = self.db.get_user(user_id)
            s = Session(hash=hash_session_id(raw), user_id=user_id,
                        seed=secrets.token_bytes(SEED_BYTES), flags=flags,
                        domain=client.domain, description=description,
                        creation_password_id=creation_password_id,
                        creation_time_sec=self._now_sec(),
                        creation_user_agent=client.user_agent,
                        creation_peer_addr=pack_addr(client.addr),
                        permissions=permissions if permissions is not None
                        else dataclasses.replace(user.permissions))
            with self.db.transaction():
                self.db.conn.execute(
                    f"insert into user_session ({_SESSION_COLUMNS}) values "
                    f"({', '.join('?' * 20)})", self._row(s))
            self._sessions[s.hash] = s
        return b64(raw), s

    @staticmethod
    def _row(s: Session) -> tuple:
        return (s.hash, s.user_id, s.seed, s.flags, s.domain, s.description,
                s.creation_password_id, s.creation_time_sec, s.creation_user_agent,
                s.creation_peer_addr, s.revocation_time_sec, s.revocation_user_agent,
                s.revocation_peer_addr, s.revocation_reason, s.revocation_reason_detail,
                s.last_use_time_sec, s.last_use_user_agent, s.last_use_peer_addr,
                s.use_count, s.permissions.encode())

    # -- using a session ---------------------------------------------------------------

    def _lookup(self, h: bytes) -> Session | None:
        s = self._sessions.get(h)
        if s is None:
            row = self.db.conn.execute(f"select {_SESSION_COLUMNS} from user_session "
                                       f"where session_id_hash = ?", (h,)).fetchone()
            if row is None:
                return None
            s = _session_from_row(row)
            self._sessions[h] = s
        return s

    def authenticate(self, cookie_value: str, client: Client):
        """The (session, user) of an `s` cookie, recording this use; raises AuthError."""
        raw = parse_session_cookie(cookie_value)
        if raw is None:
            raise AuthError("session cookie is malformed; log in again")
        with self.db.locked("authenticate"):
            s = self._lookup(hash_session_id(raw))
            if s is None:
                raise AuthError("no such session; log in again")
            if s.revocation_reason is not None:
                logger.info("revoked session %s used (%s)", s.id_text, s.state)
                raise AuthError("session has ended; log in again")
            user = self.db.users.get(s.user_id)
            if user is None or user.disabled:
                raise AuthError("user is disabled or gone; log in again")
            s.use_count += 1
            s.last_use_time_sec = self._now_sec()
            s.last_use_user_agent = client.user_agent
            s.last_use_peer_addr = pack_addr(client.addr)
            s.dirty = True
            return s, user

    def revoke(self, session_hash: bytes, reason: int, client: Client | None = None,
               detail: str | None = None) -> bool:
        """Revokes a session; False if it didn't exist or was already revoked."""
        client = client or Client()
        with self.db.locked("revoke session"):
            s = self._lookup(session_hash)
            if s is None or s.revocation_reason is not None:
                return False
            revoked = dataclasses.replace(
                s, revocation_time_sec=self._now_sec(), revocation_user_agent=client.user_agent,
                revocation_peer_addr=pack_addr(client.addr), revocation_reason=reason,
                revocation_reason_detail=detail)
            with self.db.transaction():   # written first: memory changes only if it commits
                self._write_usage(self.db.conn, s)
                self.db.conn.execute(
                    "update user_session set revocation_time_sec = ?, revocation_user_agent = ?, "
                    "revocation_peer_addr = ?, revocation_reason = ?, revocation_reason_detail = ? "
                    "where session_id_hash = ?",
                    (revoked.revocation_time_sec, revoked.revocation_user_agent,
                     revoked.revocation_peer_addr, reason, detail, s.hash))
            for f in ("revocation_time_sec", "revocation_user_agent", "revocation_peer_addr",
                      "revocation_reason", "revocation_reason_detail"):
                setattr(s, f, getattr(revoked, f))
            s.dirty = False
            return True

    def list_sessions(self, user_id: int | None = None) -> list[Session]:
        """Every stored session (with the latest in-memory usage), oldest first."""
        with self.db.locked("list sessions"):
            where, params = ("where user_id = ?", (user_id,)) if user_id is not None else ("", ())
            out = []
            for row in self.db.conn.execute(
                    f"select {_SESSION_COLUMNS} from user_session {where} "
                    f"order by creation_time_sec, session_id_hash", params):
                s = _session_from_row(row)
                out.append(self._sessions.get(s.hash, s))
            return out

    def forget_user(self, user_id: int) -> None:
        """Drops cached sessions of a deleted user (db.delete_user deletes the rows)."""
        with self.db.locked():
            for h in [h for h, s in self._sessions.items() if s.user_id == user_id]:
                del self._sessions[h]
            self._failures_dirty.discard(user_id)

    # -- lazy writes -------------------------------------------------------------------

    @staticmethod
    def _write_usage(c, s: Session) -> None:
        c.execute("update user_session set last_use_time_sec = ?, last_use_user_agent = ?, "
                  "last_use_peer_addr = ?, use_count = ? where session_id_hash = ?",
                  (s.last_use_time_sec, s.last_use_user_agent, s.last_use_peer_addr,
                   s.use_count, s.hash))

    def _flush(self, c) -> None:
        """db.flush_hooks: inside the flush transaction, with the database lock held."""
        self._written = []
        for s in self._sessions.values():
            if s.dirty:
                self._write_usage(c, s)
                self._written.append((s, s.use_count))
        for uid in self._failures_dirty:
            u = self.db.users.get(uid)
            if u is not None:
                c.execute("update user set password_failure_count = ? where id = ?",
                          (u.password_failure_count, uid))
        self._written_failures = set(self._failures_dirty)

    def _flushed(self) -> None:
        """db.on_flush: the transaction committed; what it wrote is clean unless used since."""
        with self.db.locked():
            for s, n in self._written:
                if s.use_count == n:
                    s.dirty = False
            self._failures_dirty -= self._written_failures
            self._written, self._written_failures = [], set()
