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
Creation and revocation are written at once, each in its own transaction; usage
(use count, last use time, user agent, peer address) and password failure counts
change in memory on every request and are written lazily by a hook in the next
database flush (Moonfire #282).

How a session ends (issue 19; Moonfire's sessions never expire and outlive password
and permission changes). `user_session.revocation_reason` takes Moonfire's codes 1
and 2 and the ones its schema comment foresees ("user revoked", "password change",
"expired"), numbered by us:
  1 logged out (`POST /api/logout`)
  2 hash algorithm change (an upgrade: the 7 -> 8 one)
  3 revoked by an administrator (`nvr.py sessions revoke`, or the API by an adminUsers
    caller who isn't the session's user)
  4 revoked by its user (the API, from one of their sessions)
  5 the user's password was set, changed or cleared: every session of the user but the
    one that made the change (`Auth.update_user`)
  6 the user was disabled: all of them. Re-enabling revokes any left over (made by an
    older version, which didn't revoke) instead of bringing them back
  7 expired: unused for `SessionLimits.idle_sec`, or older than `lifetime_sec`
    (defaults 90 days and 365 days; 0 is no limit). Found when the session is next
    used, and written then; until then `session_state` says so
A session's permissions are copied from its user when it is made (or given by
`nvr.py login --permissions`), and what a request may do is that AND the user's
current permissions (`effective_permissions`): removing a permission from a user acts
on their sessions at once; adding one applies to new sessions.

User names (`check_username`, for `nvr.py config user` and the API alike): NFC, no
leading or trailing space, no control, formatting (Cf: zero-width, bidi overrides),
surrogate, private-use or unassigned code point, at most MAX_USERNAME_CHARS, one
script (or Latin with Han, Hiragana, Katakana, Hangul or Bopomofo, as UTS #39's
"highly restrictive" level allows), and unique by `username_key` (case-folded NFKC
with runs of spaces as one). Names stored before these rules still log in, looked
up exactly as stored, or else by their NFC form; `nvr.py check` reports them.

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
import unicodedata

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
    configure_cameras: bool = False
    protect_recordings: bool = False

    # (field number, attribute, JSON name), in field order. Moonfire's message has
    # fields 1-4; nvr's own start at 100, so a Moonfire release adding a field can't
    # collide with them, and Moonfire (which skips unknown fields) reads ours as absent.
    # configureCameras: cameras, streams and sample file dirs (configapi.py, #14).
    # protectRecordings: protected ranges that retention never deletes (#17).
    FIELDS = ((1, "view_video", "viewVideo"),
              (2, "read_camera_configs", "readCameraConfigs"),
              (3, "update_signals", "updateSignals"),
              (4, "admin_users", "adminUsers"),
              (100, "configure_cameras", "configureCameras"),
              (101, "protect_recordings", "protectRecordings"))

    def encode(self) -> bytes:
        return b"".join(_varint(field << 3) + b"\x01" for field, attr, _ in self.FIELDS
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
        return cls(*(True for _ in cls.FIELDS))

    def __and__(self, other: "Permissions") -> "Permissions":
        return Permissions(*(getattr(self, a) and getattr(other, a) for _, a, _ in self.FIELDS))


def effective_permissions(session: "Session", user) -> Permissions:
    """What a request with `session` may do: the session's permissions, but never more
    than its user's today (a demoted user's sessions lose the permission at once)."""
    return session.permissions & user.permissions


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


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

# user_session.revocation_reason (see the module docstring).
REVOKED_LOGOUT = 1
REVOKED_ALGORITHM_CHANGE = 2
REVOKED_BY_ADMIN = 3
REVOKED_BY_USER = 4
REVOKED_PASSWORD_CHANGE = 5
REVOKED_USER_DISABLED = 6
REVOKED_EXPIRED = 7
REVOCATION_REASONS = {REVOKED_LOGOUT: "logged out", REVOKED_ALGORITHM_CHANGE: "algorithm change",
                      REVOKED_BY_ADMIN: "revoked by an administrator",
                      REVOKED_BY_USER: "revoked by its user",
                      REVOKED_PASSWORD_CHANGE: "password changed",
                      REVOKED_USER_DISABLED: "user disabled",
                      REVOKED_EXPIRED: "expired"}

DAY_SEC = 24 * 60 * 60
# Browsers keep a cookie at most 400 days whatever Max-Age says (RFC 6265bis §5.5,
# Chrome since version 104); Moonfire sends 2^31 s for "no limit", and so do we.
COOKIE_MAX_AGE_UNLIMITED = 2 ** 31


@dataclasses.dataclass(frozen=True)
class SessionLimits:
    """How long a session lasts, in seconds; 0 is no limit (the TOML config's
    `sessionIdleDays` and `sessionLifetimeDays`, README: Configuration).

    Defaults: a session unused for 90 days, or made over a year ago, has ended. A home
    user who looks at their cameras once a season stays logged in, and logs in again
    about once a year (browsers cap a cookie's life at 400 days anyway); a stolen
    cookie works for at most a year, and not at all once neither thief nor owner has
    used it for 90 days."""
    idle_sec: int = 90 * DAY_SEC
    lifetime_sec: int = 365 * DAY_SEC

    @property
    def cookie_max_age(self) -> int:
        """The cookie's Max-Age: the session's lifetime (the browser may drop it then)."""
        if not self.lifetime_sec:
            return COOKIE_MAX_AGE_UNLIMITED
        return min(self.lifetime_sec, COOKIE_MAX_AGE_UNLIMITED)


def _duration(sec: int) -> str:
    if sec % DAY_SEC == 0:
        return f"{sec // DAY_SEC} day(s)"
    return f"{sec} s"


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
# User names

MAX_USERNAME_CHARS = 64

# Words that name a script at the start of Unicode character names ("LATIN SMALL LETTER
# A", "CYRILLIC SMALL LETTER A", "CJK UNIFIED IDEOGRAPH-4E00"). Python's unicodedata has
# no Script property; a letter's name gives it for the scripts that matter here. A
# letter whose name has none of these words ("MICRO SIGN", "MATHEMATICAL BOLD CAPITAL
# A") counts as common to all scripts; `username_key` folds most such look-alikes into
# plain letters, so they still can't copy an existing name.
_SCRIPT_WORDS = {w: w.title() for w in (
    "LATIN GREEK CYRILLIC ARMENIAN HEBREW ARABIC SYRIAC THAANA NKO SAMARITAN MANDAIC "
    "DEVANAGARI BENGALI GURMUKHI GUJARATI ORIYA TAMIL TELUGU KANNADA MALAYALAM SINHALA "
    "THAI LAO TIBETAN MYANMAR GEORGIAN HANGUL ETHIOPIC CHEROKEE CANADIAN OGHAM RUNIC "
    "TAGALOG KHMER MONGOLIAN LIMBU BUGINESE BALINESE SUNDANESE LEPCHA OL GLAGOLITIC "
    "COPTIC TIFINAGH HIRAGANA KATAKANA BOPOMOFO YI VAI LISU BAMUM JAVANESE CHAM OSAGE "
    "ADLAM GOTHIC DESERET SHAVIAN OSMANYA").split()}
_SCRIPT_WORDS.update({"CJK": "Han", "ARABIC-INDIC": "Arabic"})
# Scripts one name may mix (UTS #39 §5.2, "highly restrictive"): Japanese, Chinese and
# Korean names are written in several at once, with Latin.
_SCRIPT_MIXES = ({"Latin", "Han", "Hiragana", "Katakana"}, {"Latin", "Han", "Bopomofo"},
                 {"Latin", "Han", "Hangul"})


def _script(c: str) -> str | None:
    """The script of a letter or digit, by its name; None for anything else."""
    cat = unicodedata.category(c)
    if cat[0] != "L" and cat != "Nd":
        return None
    for word in unicodedata.name(c, "").split():
        if word in _SCRIPT_WORDS:
            return _SCRIPT_WORDS[word]
    return None


def username_key(name: str) -> str:
    """What two user names must not share: `Admin` and `admin`, `ａｄｍｉｎ` (fullwidth)
    and `admin`, `ana maria` and `ana\u00a0maria` have the same key. Case-folded NFKC
    (as RFC 8265's UsernameCaseMapped profile), runs of spaces as one."""
    key = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())
    return " ".join(key.split())


def _show(name: str) -> str:
    return repr(name if len(name) <= 40 else name[:40] + "...")


def username_problem(name: str, what: str = "the user name") -> str | None:
    """What is wrong with `name` (taken as it is, not normalised) as a user name, as a
    one-line message starting with `what`; None if nothing. Uniqueness is
    `check_username`'s."""
    if not name:
        return f"{what} must not be empty"
    if len(name) > MAX_USERNAME_CHARS:
        return f"{what} is {len(name)} characters long; at most {MAX_USERNAME_CHARS}"
    if unicodedata.normalize("NFC", name) != name:
        return f"{what} {_show(name)} is not in Unicode normal form C"
    if name != name.strip():
        return f"{what} {_show(name)} must not begin or end with a space"
    for c in name:
        cat = unicodedata.category(c)
        if cat in ("Cc", "Zl", "Zp"):
            # As for camera names: names go into log lines.
            return f"{what} {_show(name)} must not contain control characters or line breaks"
        if cat == "Cf":
            return (f"{what} {_show(name)} must not contain invisible formatting characters "
                    f"(U+{ord(c):04X} {unicodedata.name(c, '')}: zero-width and "
                    f"text-direction characters can make one name look like another)")
        if cat == "Cn":
            return f"{what} {_show(name)} must not contain unassigned code points (U+{ord(c):04X})"
        if cat in ("Cs", "Co"):
            return (f"{what} {_show(name)} must not contain surrogate or private-use code "
                    f"points (U+{ord(c):04X})")
    scripts = {sc for sc in map(_script, name) if sc is not None}
    if len(scripts) > 1 and not any(scripts <= mix for mix in _SCRIPT_MIXES):
        return (f"{what} {_show(name)} mixes scripts ({', '.join(sorted(scripts))}), as "
                f"look-alike names do; write it in one")
    return None


class UsernameTaken(ValueError):
    """A new user name whose `username_key` another user's name has."""


def check_username(name: str, users, *, user_id: int | None = None,
                   what: str = "the user name") -> str:
    """A user name to store, for `nvr.py config user add/edit --rename` and
    `POST`/`PATCH /api/users`: `name` in NFC, if it follows the rules (the module
    docstring) and no user in `users` (db.User rows; `user_id`, the one being renamed,
    aside) has its key. Raises ValueError, or UsernameTaken, with a one-line message.
    Hold the database lock from this check until the name is stored."""
    nfc = unicodedata.normalize("NFC", name)
    problem = username_problem(nfc, what)
    if problem is not None:
        raise ValueError(problem)
    key = username_key(nfc)
    for u in users:
        if u.id != user_id and username_key(u.username) == key:
            if u.username == nfc:
                raise UsernameTaken(f"a user named {nfc!r} already exists")
            raise UsernameTaken(f"a user named {nfc!r} already exists as {u.username!r} "
                                f"(id {u.id}): names differ by more than case and width")
    return nfc


def find_user(users, username: str):
    """The db.User logging in as `username`: the one named exactly so, else the one whose
    name is `username` in NFC (a name typed on a keyboard that decomposes accents);
    None if none. Not case-insensitive: the password check is what guards a name."""
    nfc = unicodedata.normalize("NFC", username)
    by_nfc = None
    for u in users:
        if u.username == username:
            return u
        if by_nfc is None and u.username == nfc:
            by_nfc = u
    return by_nfc


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

    def __init__(self, db, limits: SessionLimits | None = None):
        self.db = db
        self.limits = limits or SessionLimits()
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
        # One count per name as looked up (NFC), however its accents were typed.
        keys = Throttle.keys(unicodedata.normalize("NFC", username), client.addr)
        self._check_throttle(keys, "logins")   # cheap, before waiting for a hashing slot
        with self.db.locked("login: find user"):
            user = find_user(self.db.users.values(), username)
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
        logger.info("user %r logged in from %s; session %s", user.username,
                    client.addr or "unix", session.id_text)
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
        permissions are the user's unless given (`nvr.py login --permissions`).

        Raises AuthError if the user is gone or disabled, or, for a password login
        (`creation_password_id`), if the password changed since it was checked: a login
        with the old password racing a password change must not outlive the change."""
        raw = secrets.token_bytes(SESSION_ID_BYTES)
        with self.db.locked("make session"):
            user = self.db.users.get(user_id)
            if user is None or user.disabled:
                raise AuthError("user is disabled or gone")
            if creation_password_id is not None and user.password_id != creation_password_id:
                raise AuthError("the password changed while logging in; log in again")
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
        """The (session, user) of an `s` cookie, recording this use; raises AuthError.
        What the request may do is `effective_permissions(session, user)`. A session
        found expired is revoked (reason 7) unless the database is read-only."""
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
            now = self._now_sec()
            why = self.expiry(s, now)
            if why is not None:
                logger.info("expired session %s used (%s)", s.id_text, why)
                if not self.db.read_only:
                    self._revoke([s], REVOKED_EXPIRED, client, why)
                raise AuthError("session has expired; log in again")
            user = self.db.users.get(s.user_id)
            if user is None or user.disabled:
                raise AuthError("user is disabled or gone; log in again")
            s.use_count += 1
            s.last_use_time_sec = now
            s.last_use_user_agent = client.user_agent
            s.last_use_peer_addr = pack_addr(client.addr)
            s.dirty = True
            return s, user

    # -- ending sessions ---------------------------------------------------------------

    def recheck(self, s: Session) -> tuple[str | None, "Permissions"]:
        """For a request that lasts (live view) made with session `s`: why `s` no longer
        counts (revoked, expired, its user disabled or gone) and no permissions, or None
        and what it may do now (demotion counts at once). Records no use."""
        with self.db.locked("recheck session"):
            if s.revocation_reason is not None:
                return "the session has ended; log in again", Permissions()
            why = self.expiry(s, self._now_sec())
            if why is not None:
                return f"the session has expired ({why}); log in again", Permissions()
            user = self.db.users.get(s.user_id)
            if user is None or user.disabled:
                return "the user is disabled or gone; log in again", Permissions()
            return None, effective_permissions(s, user)

    def expiry(self, s: Session, now_sec: int) -> str | None:
        """Why `s` has expired by `now_sec` (one phrase), or None if it hasn't. Its idle
        time counts from its last use, which after a restart is the last one flushed."""
        lim = self.limits
        if lim.lifetime_sec and now_sec - s.creation_time_sec >= lim.lifetime_sec:
            return f"made over {_duration(lim.lifetime_sec)} ago"
        last = max(s.creation_time_sec, s.last_use_time_sec or 0)
        if lim.idle_sec and now_sec - last >= lim.idle_sec:
            return f"unused for over {_duration(lim.idle_sec)}"
        return None

    def expires_sec(self, s: Session) -> int | None:
        """When a valid `s` expires unless used before (seconds since the epoch); None:
        never."""
        ends = []
        if self.limits.lifetime_sec:
            ends.append(s.creation_time_sec + self.limits.lifetime_sec)
        if self.limits.idle_sec:
            ends.append(max(s.creation_time_sec, s.last_use_time_sec or 0)
                        + self.limits.idle_sec)
        return min(ends) if ends else None

    def session_state(self, s: Session, now_sec: int | None = None) -> str:
        """`valid`, `expired (why)` or `revoked (reason)`."""
        if s.revocation_reason is not None:
            return s.state
        why = self.expiry(s, self._now_sec() if now_sec is None else now_sec)
        return f"expired ({why})" if why is not None else "valid"

    def revoke(self, session_hash: bytes, reason: int, client: Client | None = None,
               detail: str | None = None) -> bool:
        """Revokes a session; False if it didn't exist or was already revoked."""
        with self.db.locked("revoke session"):
            s = self._lookup(session_hash)
            if s is None or s.revocation_reason is not None:
                return False
            self._revoke([s], reason, client, detail)
            return True

    def _revoke(self, sessions: list[Session], reason: int, client: Client | None,
                detail: str | None) -> int:
        """Revokes `sessions` (cached ones, not yet revoked; hold the lock) in one
        transaction; memory changes only once it commits. Returns how many."""
        if not sessions:
            return 0
        client = client or Client()
        now, peer = self._now_sec(), pack_addr(client.addr)
        with self.db.transaction():
            for s in sessions:
                self._write_usage(self.db.conn, s)
                self.db.conn.execute(
                    "update user_session set revocation_time_sec = ?, revocation_user_agent = ?, "
                    "revocation_peer_addr = ?, revocation_reason = ?, revocation_reason_detail = ? "
                    "where session_id_hash = ?",
                    (now, client.user_agent, peer, reason, detail, s.hash))
        for s in sessions:
            s.revocation_time_sec, s.revocation_user_agent = now, client.user_agent
            s.revocation_peer_addr, s.revocation_reason = peer, reason
            s.revocation_reason_detail = detail
            s.dirty = False
        return len(sessions)

    def _valid_sessions(self, user_id: int) -> list[Session]:
        """The user's sessions not yet revoked (cached, so revoking them updates memory)."""
        rows = self.db.conn.execute("select session_id_hash from user_session where "
                                    "user_id = ? and revocation_reason is null", (user_id,))
        found = [self._lookup(bytes(h)) for (h,) in rows.fetchall()]
        return [s for s in found if s is not None and s.revocation_reason is None]

    def revoke_user_sessions(self, user_id: int, reason: int, client: Client | None = None,
                             detail: str | None = None, *, keep: Session | None = None) -> int:
        """Revokes every valid session of a user but `keep`; returns how many."""
        with self.db.locked("revoke user sessions"):
            targets = [s for s in self._valid_sessions(user_id)
                       if keep is None or s.hash != keep.hash]
            return self._revoke(targets, reason, client, detail)

    def update_user(self, user_id: int, *, client: Client | None = None,
                    current: Session | None = None, by: str = "", **changes) -> int:
        """`db.update_user(user_id, **changes)` and what the change means for the
        user's sessions; returns how many were revoked. `current`: the session making
        the change (kept when its own user's password changes); `by`: who, for the
        revocation detail. Every change of a user goes through here (the API, `nvr.py
        config user edit`), except the login's rehash of the same password.

        1. Under the database lock, decide: `disabled` changing either way revokes all
           of the user's sessions (reason 6); else a password set, changed or cleared
           revokes all but `current` (reason 5).
        2. Revoke them, in their own transaction.
        3. Change the user, in its own transaction (db.py's).
        A crash or error between 2 and 3 leaves the sessions revoked and the user as it
        was: the safe way round; the caller sees the error and can repeat the change."""
        with self.db.locked("update user"):
            u = self.db.get_user(user_id)
            reason = keep = None
            if "config" in changes and \
                    bool(changes["config"].get("disabled", False)) != u.disabled:
                reason = REVOKED_USER_DISABLED
                what = "user disabled" if not u.disabled else \
                    "user re-enabled (a session from before it was disabled)"
            elif changes.get("password_hash", ...) is not ... \
                    and not changes.get("keep_password_id", False):
                reason = REVOKED_PASSWORD_CHANGE
                what = "password set" if changes["password_hash"] else "password cleared"
                if current is not None and current.user_id == user_id:
                    keep = current
            n = 0
            if reason is not None:
                n = self.revoke_user_sessions(user_id, reason, client,
                                              f"{what} by {by}" if by else what, keep=keep)
                if n:
                    logger.info("user %r (id %d): %s; revoked %d session(s)", u.username,
                                user_id, what, n)
            self.db.update_user(user_id, **changes)
            return n

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
