"""`nvr.py check`: verifies the database against itself and the sample files.

What it checks (reference §7.1), in order:
1. SQLite `pragma integrity_check`.
2. The schema version, and the schema (tables, columns, indexes) against a
   fresh database made from schema.sql (`schema_diff`).
3. Each sample file dir: its meta file against the database (dir.py's
   read-only open), and names that are not sample files.
4. Rows against files, per stream: every recording has its recording,
   recording_playback and recording_integrity rows and a file of
   `sample_file_bytes`; every file has a recording row, a garbage row, or an
   id >= the stream's `cum_recordings` (abandoned; start-up removes it); no
   recording row has an id >= `cum_recordings`.
5. Every `video_index` decodes and agrees with its row (frames, key frames,
   bytes, media duration, trailing zero); with `--verify-hashes`, every file's
   blake2b matches `recording_integrity`.
6. User names against today's rules (auth.py's `username_problem`, and unique
   regardless of case: `username_key`). A name stored before the rules still logs
   in, so it is a warning, not a problem: rename it with `nvr.py config user edit`.
7. Protections (schema 9): a protection naming a stream names one of its own
   camera's (the schema can't say so; a hand edit could break it, and retention
   would then keep the wrong footage), and its label has no control characters.

Repairs, each only with its flag (the database is then opened read-write):
- `--delete-orphan-rows`: delete the rows of recordings whose file is missing.
- `--trash-orphan-sample-files`: files without rows become garbage.
- `--trash-corrupt-rows`: recordings whose index is corrupt or disagrees with
  the row or file size lose their rows and their files become garbage.
- `--raise-cum-recordings`: a stream with recording rows at or beyond its
  `cum_recordings` gets it raised past the last row (and `cum_media_duration_90k`,
  `cum_runs` to what that row implies); abandoned files below the new value,
  which start-up would have removed, become garbage.
After any repair, garbage is collected as start-up recovery does: unlink,
fsync the dir, delete the garbage rows.

A pending garbage row whose file is gone is normal (the next flush deletes
it) and is only counted; a garbage file still on disk is normal too (a crash
or Moonfire left it; the next `nvr.py run` unlinks it), a note, not an error,
and `--trash-orphan-sample-files` collects it now.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sqlite3

import auth
import db
import dir as dirmod
import recording


@dataclasses.dataclass
class Options:
    delete_orphan_rows: bool = False
    trash_orphan_sample_files: bool = False
    trash_corrupt_rows: bool = False
    raise_cum_recordings: bool = False
    verify_hashes: bool = False

    @property
    def repairing(self) -> bool:
        return (self.delete_orphan_rows or self.trash_orphan_sample_files
                or self.trash_corrupt_rows or self.raise_cum_recordings)


def schema_description(conn: sqlite3.Connection) -> dict:
    """Tables with their columns (name, type, notnull, default, pk) and
    indexes with their columns; what two schemas must agree on."""
    out = {}
    names = [r[0] for r in conn.execute(
        "select name from sqlite_master where type = 'table' and name not like 'sqlite_%' "
        "order by name")]
    for t in names:
        cols = [tuple(r[1:]) for r in conn.execute(f"pragma table_info('{t}')")]
        out[f"table {t}"] = cols
        for idx in conn.execute(f"pragma index_list('{t}')"):
            iname, unique = idx[1], idx[2]
            icols = [r[2] for r in conn.execute(f"pragma index_info('{iname}')")]
            key = f"index {iname}" if not iname.startswith("sqlite_autoindex") else f"{t} unique"
            out.setdefault(key, []).append((unique, tuple(icols)))
    return out


def schema_diff(actual: sqlite3.Connection, expected: sqlite3.Connection) -> list[str]:
    a, e = schema_description(actual), schema_description(expected)
    diffs = []
    for k in sorted(set(a) | set(e)):
        if k not in a:
            diffs.append(f"missing {k}")
        elif k not in e:
            diffs.append(f"unexpected {k}")
        elif sorted(a[k]) != sorted(e[k]):
            diffs.append(f"{k} differs: has {a[k]}, expected {e[k]}")
    return diffs


def fresh_schema() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    with open(db.SCHEMA_PATH, encoding="utf-8") as f:
        conn.executescript(f.read())
    return conn


@dataclasses.dataclass
class _Rec:
    file_bytes: int | None = None
    row: tuple | None = None          # (bytes, samples, sync samples, media duration, flags)
    index: tuple | None = None        # the same, from video_index
    index_error: str | None = None
    integrity: bool = False
    blake2b: bytes | None = None
    garbage: bool = False


class Checker:
    def __init__(self, db_dir: str, opts: Options, out):
        self.db_dir, self.opts, self.out = db_dir, opts, out
        self.problems = 0
        # Repairs planned for the dir being checked (composite ids).
        self.rows_to_delete: set[int] = set()
        self.files_to_trash: set[int] = set()
        self.cum_to_raise: dict[int, tuple] = {}  # stream id: (cum_recordings, media, runs)

    def error(self, msg: str) -> None:
        self.problems += 1
        print(f"error: {msg}", file=self.out)

    def info(self, msg: str) -> None:
        print(msg, file=self.out)

    def run(self) -> int:
        lock_fd = db.lock_db_dir(self.db_dir, read_only=not self.opts.repairing)
        try:
            conn = db.connect(self.db_dir, read_only=not self.opts.repairing)
            try:
                self._check(conn)
            finally:
                conn.close()
        finally:
            os.close(lock_fd)
        if self.problems:
            self.info(f"check: {self.problems} problem(s) found")
            return 1
        self.info("check: clean")
        return 0

    def _check(self, conn: sqlite3.Connection) -> None:
        for (msg,) in conn.execute("pragma integrity_check"):
            if msg != "ok":
                self.error(f"sqlite integrity_check: {msg}")
        try:
            db.check_schema_version(conn)
        except db.DbError as e:
            self.error(str(e))
            return
        expected = fresh_schema()
        for d in schema_diff(conn, expected):
            self.error(f"schema: {d}")
        expected.close()

        self._check_usernames(conn)
        self._check_protections(conn)
        db_uuid = conn.execute("select uuid from meta").fetchone()[0]
        cum = {sid: (dir_id, n) for sid, dir_id, n in conn.execute(
            "select id, sample_file_dir_id, cum_recordings from stream")}
        for dir_id, dir_uuid, config, lco_id, lco_uuid in conn.execute(
                "select d.id, d.uuid, d.config, d.last_complete_open_id, o.uuid "
                "from sample_file_dir d left join open o on d.last_complete_open_id = o.id").fetchall():
            path = db._row_config(config).get("path", "")
            lco = dirmod.Open(lco_id, lco_uuid) if lco_id is not None else None
            try:
                sfd = dirmod.SampleFileDir.open(path, dirmod.DirMeta(db_uuid, dir_uuid, lco),
                                                read_only=not self.opts.repairing)
            except dirmod.DirError as e:
                self.error(f"dir {dir_id}: {e}")
                continue
            try:
                self._check_dir(conn, dir_id, sfd, cum)
            finally:
                sfd.close()

    def _check_protections(self, conn) -> None:
        for pid, camera_id, stream_id, stream_camera, label in conn.execute(
                "select p.id, p.camera_id, p.stream_id, s.camera_id, p.label "
                "from protection p left join stream s on p.stream_id = s.id order by p.id"):
            if stream_id is not None and stream_camera != camera_id:
                self.error(f"protection {pid}: stream {stream_id} is camera {stream_camera}'s, "
                           f"not camera {camera_id}'s; `nvr.py protect remove {pid}` and add "
                           f"it again")
            problem = db.protection_label_problem(label)
            if problem:
                self.error(f"protection {pid}: {problem}; fix it with `nvr.py protect edit "
                           f"{pid} --label TEXT`")

    def _check_usernames(self, conn) -> None:
        seen: dict[str, tuple[int, str]] = {}
        for uid, name in conn.execute("select id, username from user order by id"):
            problem = auth.username_problem(name, f"user {uid}'s name")
            if problem is None:
                other = seen.get(auth.username_key(name))
                if other is not None:
                    problem = (f"user {uid}'s name {name!r} is user {other[0]}'s "
                               f"{other[1]!r} but for case or width; names must differ by more")
            seen.setdefault(auth.username_key(name), (uid, name))
            if problem is not None:
                self.info(f"warning: {problem}; it still logs in, but rename it: "
                          f"nvr.py config user edit NAME --rename NEW_NAME")

    def _check_dir(self, conn, dir_id: int, sfd: dirmod.SampleFileDir, cum: dict) -> None:
        recs: dict[int, _Rec] = {}
        self.rows_to_delete, self.files_to_trash, self.cum_to_raise = set(), set(), {}
        for name in sfd.fs.list_names():
            if name == "meta":
                continue
            cid = dirmod.parse_name(name)
            if cid is None:
                self.error(f"dir {sfd.path}: unexpected file {name!r} (not a sample file; "
                           f"move it elsewhere)")
                continue
            recs.setdefault(cid, _Rec()).file_bytes = sfd.fs.stat_size(name)
        for (cid,) in conn.execute("select composite_id from garbage where sample_file_dir_id = ?",
                                   (dir_id,)):
            recs.setdefault(cid, _Rec()).garbage = True
        streams = [sid for sid, (d, _) in cum.items() if d == dir_id]
        for sid in streams:
            lo, hi = sid << 32, (sid + 1) << 32
            self._check_cum_recordings(conn, sid, cum[sid][1])
            for cid, flags, nbytes, media, samples, sync in conn.execute(
                    "select composite_id, flags, sample_file_bytes, "
                    "wall_duration_90k + media_duration_delta_90k, video_samples, video_sync_samples "
                    "from recording where composite_id >= ? and composite_id < ?", (lo, hi)):
                recs.setdefault(cid, _Rec()).row = (nbytes, samples, sync, media, flags & 1)
            for cid, index in conn.execute(
                    "select composite_id, video_index from recording_playback "
                    "where composite_id >= ? and composite_id < ?", (lo, hi)):
                r = recs.setdefault(cid, _Rec())
                try:
                    s = recording.decode_summary(index)
                    r.index = (s.sample_file_bytes, s.video_samples, s.video_sync_samples,
                               s.media_duration_90k, int(s.trailing_zero))
                except recording.CorruptIndex as e:
                    r.index_error = str(e)
            for cid, h in conn.execute(
                    "select composite_id, sample_file_blake2b_32 from recording_integrity "
                    "where composite_id >= ? and composite_id < ?", (lo, hi)):
                r = recs.setdefault(cid, _Rec())
                r.integrity, r.blake2b = True, h

        pending_garbage = 0
        for cid in sorted(recs):
            r = recs[cid]
            sid, rid = cid >> 32, cid & 0xFFFFFFFF
            what = f"recording {sid}/{rid} ({dirmod.name_for(cid)} in {sfd.path})"
            if r.garbage:
                if r.row is not None:
                    self.error(f"{what} is both a recording and garbage")
                if r.file_bytes is not None:
                    # Normal, as in Moonfire's check: a crash between a flush and its
                    # unlinks, or Moonfire itself, left it; the next start deletes it.
                    self.info(f"note: {what}: garbage file not yet deleted; the next "
                              f"`nvr.py run` deletes it (or --trash-orphan-sample-files now)")
                    if self.opts.trash_orphan_sample_files:
                        self.files_to_trash.add(cid)
                else:
                    pending_garbage += 1
                continue
            if sid not in cum or cum[sid][0] != dir_id:
                self.error(f"{what}: belongs to no stream using this dir")
                if self.opts.trash_orphan_sample_files:
                    self.files_to_trash.add(cid)
                continue
            if r.row is None:
                if r.file_bytes is not None and rid >= cum[sid][1]:
                    self.info(f"note: {what} was never committed (abandoned); "
                              f"start-up recovery removes it")
                    if sid in self.cum_to_raise and rid < self.cum_to_raise[sid][0]:
                        self.files_to_trash.add(cid)  # no longer abandoned once raised
                    continue
                if r.file_bytes is not None:
                    self.error(f"{what}: file has no recording row; "
                               f"--trash-orphan-sample-files deletes it")
                    if self.opts.trash_orphan_sample_files:
                        self.files_to_trash.add(cid)
                if r.index is not None or r.index_error or r.integrity:
                    self.error(f"{what}: playback/integrity rows without a recording row; "
                               f"--delete-orphan-rows deletes them")
                    if self.opts.delete_orphan_rows:
                        self.rows_to_delete.add(cid)
                continue
            if r.file_bytes is None:
                self.error(f"{what}: sample file is missing; --delete-orphan-rows deletes its rows")
                if self.opts.delete_orphan_rows:
                    self.rows_to_delete.add(cid)
                continue
            corrupt = None
            if r.index_error:
                corrupt = f"corrupt video_index: {r.index_error}"
            elif r.index is None:
                corrupt = "no recording_playback row"
            elif r.index != r.row:
                corrupt = (f"video_index (bytes, frames, key frames, media duration, trailing zero) "
                           f"= {r.index} disagrees with its row {r.row}")
            elif r.file_bytes != r.row[0]:
                corrupt = f"file is {r.file_bytes} bytes, the row says {r.row[0]}"
            elif not r.integrity:
                corrupt = "no recording_integrity row"
            elif self.opts.verify_hashes and r.blake2b is not None:
                if _file_blake2b(sfd, cid) != r.blake2b:
                    corrupt = "file's blake2b does not match recording_integrity"
            if corrupt:
                self.error(f"{what}: {corrupt}; --trash-corrupt-rows deletes it")
                if self.opts.trash_corrupt_rows:
                    self.rows_to_delete.add(cid)
                    self.files_to_trash.add(cid)
        if pending_garbage:
            self.info(f"note: dir {sfd.path}: {pending_garbage} garbage row(s) of unlinked files; "
                      f"the next flush deletes them")
        if self.opts.repairing:
            self._repair(conn, dir_id, sfd)

    def _check_cum_recordings(self, conn, sid: int, cum_recordings: int) -> None:
        """Rows at or beyond cum_recordings: start-up recovery would once have taken
        their files for abandoned ones and unlinked them (it now keeps them, warning),
        and the stream's next recording would reuse their ids."""
        rids = [cid & 0xFFFFFFFF for (cid,) in conn.execute(
            "select composite_id from recording where composite_id >= ? and composite_id < ? "
            "order by composite_id", ((sid << 32) | cum_recordings, (sid + 1) << 32))]
        if not rids:
            return
        name = conn.execute("select c.short_name || '/' || s.type from stream s join camera c "
                            "on s.camera_id = c.id where s.id = ?", (sid,)).fetchone()
        shown = ", ".join(map(str, rids[:10])) + (f" and {len(rids) - 10} more"
                                                   if len(rids) > 10 else "")
        self.error(f"stream {sid} ({name[0] if name else '?'}): recording row(s) {shown} "
                   f"have ids >= the stream's cum_recordings {cum_recordings}, so their files "
                   f"look uncommitted; --raise-cum-recordings raises it to {rids[-1] + 1}")
        if self.opts.raise_cum_recordings:
            # What the flush that committed the last row would have left (db.py flush).
            media, runs = conn.execute(
                "select prev_media_duration_90k + wall_duration_90k + media_duration_delta_90k, "
                "prev_runs + (run_offset = 0) from recording where composite_id = ?",
                ((sid << 32) | rids[-1],)).fetchone()
            self.cum_to_raise[sid] = (rids[-1] + 1, media, runs)

    def _repair(self, conn, dir_id: int, sfd: dirmod.SampleFileDir) -> None:
        rows, trash = sorted(self.rows_to_delete), sorted(self.files_to_trash)
        with db.transaction(conn):
            for sid, (n, media, runs) in sorted(self.cum_to_raise.items()):
                conn.execute("update stream set cum_recordings = ?, cum_media_duration_90k = "
                             "max(cum_media_duration_90k, ?), cum_runs = max(cum_runs, ?) "
                             "where id = ?", (n, media, runs, sid))
            for cid in rows:
                for table in ("recording_playback", "recording_integrity", "recording"):
                    conn.execute(f"delete from {table} where composite_id = ?", (cid,))
            for cid in trash:
                conn.execute("insert or ignore into garbage (sample_file_dir_id, composite_id) "
                             "values (?, ?)", (dir_id, cid))
        for sid, (n, _, _) in sorted(self.cum_to_raise.items()):
            self.info(f"repaired: raised stream {sid}'s cum_recordings to {n}")
        if rows:
            self.info(f"repaired: deleted the rows of {len(rows)} recording(s)")
        if trash:
            self.info(f"repaired: moved {len(trash)} sample file(s) to garbage")
        # Collect all of the dir's garbage, as start-up recovery would.
        garbage = [c for (c,) in conn.execute(
            "select composite_id from garbage where sample_file_dir_id = ?", (dir_id,))]
        if not garbage:
            return
        for cid in garbage:
            try:
                sfd.fs.unlink(dirmod.name_for(cid))
            except FileNotFoundError:
                pass
        sfd.fs.sync()  # the unlinks are durable before the rows naming them go
        with db.transaction(conn):
            conn.executemany("delete from garbage where sample_file_dir_id = ? and composite_id = ?",
                             [(dir_id, c) for c in garbage])
        self.info(f"repaired: collected {len(garbage)} garbage file(s)")


def _file_blake2b(sfd: dirmod.SampleFileDir, cid: int) -> bytes:
    h = hashlib.blake2b(digest_size=32)
    with open(os.path.join(sfd.path, dirmod.name_for(cid)), "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.digest()


def run(db_dir: str, opts: Options, out) -> int:
    return Checker(db_dir, opts, out).run()
