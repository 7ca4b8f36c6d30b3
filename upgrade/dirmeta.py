"""A frozen copy of the sample file dir `meta` codec, for upgrade steps only.

dir.py owns the live `meta` file; the upgrade steps must keep working however
that module changes, so they use this self-contained codec instead.

The message is Moonfire's `DirMeta` protobuf (proto3, reference §2.5):

    message DirMeta {
      bytes db_uuid = 1;                  // the database's meta.uuid
      bytes dir_uuid = 2;                 // sample_file_dir.uuid
      message Open { uint32 id = 1; bytes uuid = 2; }
      Open last_complete_open = 3;        // absent if never completed
      Open in_progress_open = 4;          // absent unless an open is underway
    }

Two file formats exist:

- schema 2-4 ("v3 format"): the serialized message alone. It was replaced by
  writing `meta.tmp`, fsyncing it and renaming it over `meta`, so it needs
  free space to rewrite (a full disk could not be recovered, Moonfire #65).
- schema 5 on ("fixed format"): a varint length, the message, then NUL bytes
  up to exactly 512 bytes, so that later rewrites are one in-place sector
  write. The 4->5 step converts the first format to the second.

A file of exactly 512 bytes is read as the fixed format, anything else as the
v3 format (the message is far below 512 bytes, so there is no ambiguity).
"""

from __future__ import annotations

import dataclasses

FIXED_LEN = 512

# protobuf wire types (https://protobuf.dev/programming-guides/encoding/)
_VARINT = 0
_I64 = 1
_LEN = 2
_I32 = 5


@dataclasses.dataclass(frozen=True)
class Open:
    id: int
    uuid: bytes


@dataclasses.dataclass(frozen=True)
class DirMeta:
    db_uuid: bytes = b""
    dir_uuid: bytes = b""
    last_complete_open: Open | None = None
    in_progress_open: Open | None = None


class DecodeError(ValueError):
    pass


def _varint(n: int) -> bytes:
    if n < 0:
        raise ValueError("negative varint")
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(data):
            raise DecodeError("truncated varint")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise DecodeError("varint too long")


def _field(num: int, wire: int) -> bytes:
    return _varint(num << 3 | wire)


def _bytes_field(num: int, value: bytes) -> bytes:
    # proto3: empty bytes are the default and are not written.
    if not value:
        return b""
    return _field(num, _LEN) + _varint(len(value)) + value


def _encode_open(o: Open) -> bytes:
    body = b""
    if o.id:
        body += _field(1, _VARINT) + _varint(o.id)
    body += _bytes_field(2, o.uuid)
    return body


def encode(meta: DirMeta) -> bytes:
    """The serialized message (the whole v3-format file)."""
    out = _bytes_field(1, meta.db_uuid) + _bytes_field(2, meta.dir_uuid)
    for num, o in ((3, meta.last_complete_open), (4, meta.in_progress_open)):
        if o is not None:  # a present sub-message is written even if empty
            body = _encode_open(o)
            out += _field(num, _LEN) + _varint(len(body)) + body
    return out


def encode_fixed(meta: DirMeta) -> bytes:
    """The 512-byte fixed-format file: varint length, message, NUL padding."""
    msg = encode(meta)
    data = _varint(len(msg)) + msg
    if len(data) > FIXED_LEN:
        raise ValueError(f"DirMeta needs {len(data)} bytes, over the {FIXED_LEN}-byte limit")
    return data + b"\0" * (FIXED_LEN - len(data))


def _fields(data: bytes):
    """Yields (field number, wire type, value) for each field of a message."""
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        num, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = _read_varint(data, pos)
        elif wire == _LEN:
            n, pos = _read_varint(data, pos)
            if pos + n > len(data):
                raise DecodeError("truncated length-delimited field")
            value, pos = data[pos:pos + n], pos + n
        elif wire == _I64:
            value, pos = data[pos:pos + 8], pos + 8
        elif wire == _I32:
            value, pos = data[pos:pos + 4], pos + 4
        else:
            raise DecodeError(f"unsupported wire type {wire}")
        if pos > len(data):
            raise DecodeError("truncated fixed-width field")
        yield num, wire, value


def _decode_open(data: bytes) -> Open:
    id_, uuid = 0, b""
    for num, wire, value in _fields(data):
        if num == 1 and wire == _VARINT:
            id_ = value
        elif num == 2 and wire == _LEN:
            uuid = bytes(value)
    return Open(id_, uuid)


def decode(data: bytes) -> DirMeta:
    """Parses a serialized message; unknown fields are skipped."""
    fields: dict[str, object] = {}
    for num, wire, value in _fields(data):
        if num == 1 and wire == _LEN:
            fields["db_uuid"] = bytes(value)
        elif num == 2 and wire == _LEN:
            fields["dir_uuid"] = bytes(value)
        elif num == 3 and wire == _LEN:
            fields["last_complete_open"] = _decode_open(value)
        elif num == 4 and wire == _LEN:
            fields["in_progress_open"] = _decode_open(value)
    return DirMeta(**fields)


def decode_file(data: bytes) -> tuple[DirMeta, bool]:
    """Parses a `meta` file of either format; returns (meta, is_fixed_format)."""
    if len(data) == FIXED_LEN:
        n, pos = _read_varint(data, 0)
        if pos + n > FIXED_LEN:
            raise DecodeError(f"fixed-format meta claims a {n}-byte message")
        if any(data[pos + n:]):
            raise DecodeError("fixed-format meta has non-NUL padding")
        return decode(data[pos:pos + n]), True
    return decode(data), False


def check_consistent(db_meta: DirMeta, dir_meta: DirMeta) -> str | None:
    """Compares what the database says about a dir with the dir's meta file.

    Returns None if they agree, else a description of the mismatch. The rules
    (reference §2.5): both uuids must match; if the database has a last
    complete open for the dir, the file must name it as its last complete or
    in-progress open; if the database has none, the file must have none.
    """
    if dir_meta.db_uuid != db_meta.db_uuid:
        return (f"the meta file belongs to database {dir_meta.db_uuid.hex() or '(none)'}, "
                f"not this one ({db_meta.db_uuid.hex()})")
    if dir_meta.dir_uuid != db_meta.dir_uuid:
        return (f"the meta file names dir {dir_meta.dir_uuid.hex() or '(none)'}; "
                f"the database expects {db_meta.dir_uuid.hex()}")
    if db_meta.last_complete_open is not None:
        if db_meta.last_complete_open not in (dir_meta.last_complete_open,
                                              dir_meta.in_progress_open):
            return (f"the database's last complete open {db_meta.last_complete_open} "
                    f"is neither the meta file's last complete open "
                    f"({dir_meta.last_complete_open}) nor its in-progress open "
                    f"({dir_meta.in_progress_open})")
    elif dir_meta.last_complete_open is not None:
        return (f"the database has no complete open of this dir but the meta file has "
                f"{dir_meta.last_complete_open}")
    return None
