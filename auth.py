"""Users' credentials and permissions: password hashing and the Permissions blob.

Passwords are hashed with argon2id (argon2-cffi) into PHC strings stored in
`user.password_hash`. A legacy Moonfire scrypt PHC string
(`$scrypt$ln=15,r=8,p=1$<salt>$<hash>`, base64 without padding) still verifies,
with the standard library's `hashlib.scrypt`; the caller replaces it with an
argon2id hash at the next successful login (`needs_rehash`).

`Permissions` is Moonfire's protobuf message stored in `user.permissions` and
`user_session.permissions`: four bools, field numbers view_video = 1,
read_camera_configs = 2, update_signals = 3, admin_users = 4. A true bool is
encoded as tag (field << 3 | 0) then 01; false fields are omitted (proto3).

Sessions, CSRF tokens and caller resolution will live here too (issue 5);
db.py owns the `user` rows and calls `hash_password` through `config`.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac

import argon2

# The hasher used for new hashes. Tests swap in argon2.profiles.CHEAPEST via
# `set_password_hasher` (see test/conftest.py); production uses the library's
# RFC 9106 low-memory profile (64 MiB, 3 passes), fine for a Raspberry Pi.
_hasher = argon2.PasswordHasher()


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
        return cls(**{names[k]: bool(v) for k, v in obj.items()})

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
