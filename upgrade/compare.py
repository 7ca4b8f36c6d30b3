"""Compares the schemas of two SQLite databases by structure, not SQL text.

As Moonfire's `compare.rs`: the sorted table names, each table's
`pragma table_info` (cid, name, type, notnull, default, pk), its
`pragma index_list` (sorted by name: name, unique, origin, partial) and each
index's `pragma index_info`. Comments, whitespace and CHECK constraints don't
matter. We also compare `pragma foreign_key_list`, which Moonfire doesn't:
a table rename inside an upgrade step can silently retarget another table's
REFERENCES clause (SQLite >= 3.26 rewrites them), and that is worth catching.

Used by the upgrade tests after every compared step, and usable by `check`
to compare a database with a fresh `schema.sql`.
"""

from __future__ import annotations

import difflib
import sqlite3


def _rows(conn: sqlite3.Connection, sql: str) -> list[tuple]:
    return [tuple(r) for r in conn.execute(sql).fetchall()]


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def describe(conn: sqlite3.Connection, foreign_keys: bool = True) -> list[str]:
    """One line per fact of the schema, in a stable order, for diffing."""
    out = []
    tables = [r[0] for r in _rows(conn, "select name from sqlite_master where type = 'table' "
                                        "and name not like 'sqlite_%' order by name")]
    out.append(f"tables {tables}")
    for t in tables:
        for cid, name, type_, notnull, dflt, pk in _rows(conn, f"pragma table_info({_quote(t)})"):
            out.append(f"table {t} column {cid} {name!r} type={type_!r} notnull={notnull} "
                       f"default={dflt!r} pk={pk}")
        indexes = sorted(_rows(conn, f"pragma index_list({_quote(t)})"), key=lambda r: r[1])
        for _seq, name, unique, origin, partial in indexes:
            cols = [r[2] for r in _rows(conn, f"pragma index_info({_quote(name)})")]
            out.append(f"table {t} index {name} unique={unique} origin={origin} "
                       f"partial={partial} columns={cols}")
        if foreign_keys:
            fks = sorted(_rows(conn, f"pragma foreign_key_list({_quote(t)})"),
                         key=lambda r: (r[3], r[2]))
            for _id, _seq, table, from_, to, *_rest in fks:
                out.append(f"table {t} foreign key {from_} -> {table}({to})")
    return out


def diff(name1: str, conn1: sqlite3.Connection, name2: str, conn2: sqlite3.Connection,
         foreign_keys: bool = True) -> str | None:
    """A unified diff of the two schemas, or None if they are the same."""
    a = describe(conn1, foreign_keys)
    b = describe(conn2, foreign_keys)
    if a == b:
        return None
    return "\n".join(difflib.unified_diff(a, b, name1, name2, lineterm=""))


def fresh(schema_sql: str) -> sqlite3.Connection:
    """An in-memory database created from `schema_sql`."""
    conn = sqlite3.connect(":memory:")
    conn.executescript(schema_sql)
    return conn
