"""dir.py: the meta file, the dir procedures, recovery, and the I/O seam's failures."""

import errno
import os

import pytest

import dir as dirmod
from fakes import FakeFile, FakeFs

DB = bytes(range(16))
DIR = bytes(range(16, 32))
O1 = dirmod.Open(1, bytes(range(32, 48)))
O2 = dirmod.Open(2, bytes(range(48, 64)))


def test_meta_known_answer():
    m = dirmod.DirMeta(DB, DIR, O1, O2)
    b = dirmod.encode_meta(m)
    open_msg = lambda o: b"\x08" + bytes([o.id]) + b"\x12\x10" + o.uuid  # noqa: E731
    msg = (b"\x0a\x10" + DB +          # field 1, length-delimited, 16 bytes
           b"\x12\x10" + DIR +         # field 2
           b"\x1a\x14" + open_msg(O1) +  # field 3, Open of 2 + 18 bytes
           b"\x22\x14" + open_msg(O2))   # field 4
    assert len(msg) == 80
    assert b == bytes([80]) + msg + bytes(512 - 81)
    assert dirmod.decode_meta(b) == m


@pytest.mark.parametrize("m", [
    dirmod.DirMeta(DB, DIR),
    dirmod.DirMeta(DB, DIR, O1),
    dirmod.DirMeta(DB, DIR, None, O2),
    dirmod.DirMeta(DB, DIR, dirmod.Open(300_000, O1.uuid), O2),
])
def test_meta_round_trip(m):
    assert dirmod.decode_meta(dirmod.encode_meta(m)) == m


@pytest.mark.parametrize("data,message", [
    (b"\x00" * 100, "is 100 bytes, expected 512"),
    (bytes([0xFF, 0x7F]) + bytes(510), "runs past the 512-byte file"),
    (bytes([3, 0x0A, 0x10, 0x00]) + bytes(508), "runs past the end of the message"),
    (bytes([2, 0x0B, 0x00]) + bytes(509), "unsupported wire type 3"),
    (bytes([2, 0x08, 0x01]) + bytes(509), "field 1 has wire type 0, expected 2"),
    (bytes([0]) + b"junk" + bytes(507), "padding after the message is not all zero"),
    (bytes([1, 0x80]) + bytes(510), "truncated varint"),
])
def test_meta_decode_errors(data, message):
    with pytest.raises(dirmod.DirError, match=message):
        dirmod.decode_meta(data)


def test_meta_skips_unknown_fields():
    msg = b"\x0a\x10" + DB + b"\x12\x10" + DIR + b"\x28\x05" + b"\x32\x02ab"  # fields 5, 6
    data = bytes([len(msg)]) + msg
    assert dirmod.decode_meta(data + bytes(512 - len(data))) == dirmod.DirMeta(DB, DIR)


def test_names():
    assert dirmod.name_for((3 << 32) | 1842086) == "00000003001c1ba6"
    assert dirmod.parse_name("00000003001c1ba6") == (3 << 32) | 1842086
    for bad in ("meta", "00000003001C1BA6", "00000003001c1ba", "00000003001c1ba6.tmp"):
        assert dirmod.parse_name(bad) is None


def read_meta(path):
    with open(os.path.join(path, "meta"), "rb") as f:
        return f.read()


def test_create_then_open_read_write(tmp_path):
    path = str(tmp_path / "sample")
    d = dirmod.SampleFileDir.create(path, DB, O1)
    assert d.meta.db_uuid == DB and d.meta.in_progress_open == O1
    assert d.meta.last_complete_open is None
    assert os.stat(os.path.join(path, "meta")).st_mode & 0o777 == 0o600
    d.complete_open(O1)
    dir_uuid = d.meta.dir_uuid
    d.close()
    assert dirmod.decode_meta(read_meta(path)) == dirmod.DirMeta(DB, dir_uuid, O1)

    expected = dirmod.DirMeta(DB, dir_uuid, O1)
    d = dirmod.SampleFileDir.open(path, expected)
    d.begin_open(O2)
    assert dirmod.decode_meta(read_meta(path)) == dirmod.DirMeta(DB, dir_uuid, O1, O2)
    d.close()
    # A crash here: the database may still say O1 (accepted via last_complete_open)
    # or already say O2 (accepted via in_progress_open).
    for want in (O1, O2):
        dirmod.SampleFileDir.open(path, dirmod.DirMeta(DB, dir_uuid, want)).close()
    d = dirmod.SampleFileDir.open(path, dirmod.DirMeta(DB, dir_uuid, O2))
    d.complete_open(O2)
    d.close()
    assert dirmod.decode_meta(read_meta(path)) == dirmod.DirMeta(DB, dir_uuid, O2)


def test_create_refuses_a_non_empty_dir(tmp_path):
    (tmp_path / "vacation.jpg").write_bytes(b"x")
    with pytest.raises(dirmod.DirError, match=r"is not empty \(vacation.jpg\)"):
        dirmod.SampleFileDir.create(str(tmp_path), DB, O1)
    assert os.listdir(tmp_path) == ["vacation.jpg"]


def test_create_again_after_an_interrupted_create(tmp_path):
    d = dirmod.SampleFileDir.create(str(tmp_path), DB, O1)
    d.close()  # crashed before the row was inserted
    d = dirmod.SampleFileDir.create(str(tmp_path), DB, O2)
    assert d.meta.in_progress_open == O2
    d.complete_open(O2)
    d.close()
    with pytest.raises(dirmod.DirError, match="already a sample file dir"):
        dirmod.SampleFileDir.create(str(tmp_path), DB, O2)


@pytest.fixture
def made(tmp_path):
    path = str(tmp_path / "sample")
    d = dirmod.SampleFileDir.create(path, DB, O1)
    d.complete_open(O1)
    uuid = d.meta.dir_uuid
    d.close()
    return path, uuid


@pytest.mark.parametrize("expected,message", [
    (lambda u: dirmod.DirMeta(DIR, u, O1), "belongs to another database"),
    (lambda u: dirmod.DirMeta(DB, DIR, O1), "is a different directory"),
    (lambda u: dirmod.DirMeta(DB, u, O2), "was last opened by open 1, the database expects open 2"),
    (lambda u: dirmod.DirMeta(DB, u, None), "the database has no complete open for it"),
])
def test_open_mismatches_change_nothing(made, expected, message):
    path, uuid = made
    before = read_meta(path)
    with pytest.raises(dirmod.DirError, match=message):
        dirmod.SampleFileDir.open(path, expected(uuid))
    assert read_meta(path) == before
    dirmod.SampleFileDir.open(path, dirmod.DirMeta(DB, uuid, O1)).close()  # lock released


def test_locking(made):
    path, uuid = made
    expected = dirmod.DirMeta(DB, uuid, O1)
    d = dirmod.SampleFileDir.open(path, expected)
    with pytest.raises(dirmod.DirError, match="in use by another process"):
        dirmod.SampleFileDir.open(path, expected)
    with pytest.raises(dirmod.DirError, match="in use by another process"):
        dirmod.SampleFileDir.open(path, expected, read_only=True)
    d.close()
    a = dirmod.SampleFileDir.open(path, expected, read_only=True)
    b = dirmod.SampleFileDir.open(path, expected, read_only=True)
    with pytest.raises(dirmod.DirError, match="in use"):
        dirmod.SampleFileDir.open(path, expected)
    a.close()
    b.close()


def test_missing_dir_and_missing_meta(tmp_path):
    expected = dirmod.DirMeta(DB, DIR, O1)
    with pytest.raises(dirmod.DirError, match="does not exist; is its disk mounted"):
        dirmod.SampleFileDir.open(str(tmp_path / "nope"), expected)
    with pytest.raises(dirmod.DirError, match="has no meta file; is its disk mounted"):
        dirmod.SampleFileDir.open(str(tmp_path), expected)


def test_prepare_delete(made):
    path, uuid = made
    d = dirmod.SampleFileDir.open(path, dirmod.DirMeta(DB, uuid, O1))
    open(os.path.join(path, "0000000100000000"), "wb").close()
    with pytest.raises(dirmod.DirError, match="still holds 1 sample file"):
        d.prepare_delete()
    os.unlink(os.path.join(path, "0000000100000000"))
    d.prepare_delete()
    d.close()
    assert dirmod.decode_meta(read_meta(path)) == dirmod.DirMeta(DB, uuid, None, O1)


# -- recovery, through the fake seam -------------------------------------------

def retry_forever(what, fn):
    """As clock.retry does, minus the sleeping: call until no OSError."""
    for _ in range(10):
        try:
            return fn()
        except OSError:
            pass
    raise AssertionError(f"{what} never succeeded")


def fake_dir(fs):
    return dirmod.SampleFileDir("/fake", fs, dirmod.DirMeta(DB, DIR, O1))


def test_recover_unlinks_garbage_and_abandoned_then_syncs_once():
    fs = FakeFs()
    s1 = 1 << 32
    fs.expect("list_names", result=["0000000100000000", "0000000100000001", "0000000100000002",
                                    "0000000100000005", "0000000200000000", "meta", "x.tmp"])
    fs.expect("unlink", "0000000100000001")                 # garbage
    fs.expect("unlink", "0000000100000005")                 # abandoned: id 5 >= cum 3
    fs.expect("sync")
    r = dirmod.recover(fake_dir(fs), [s1 | 1, s1 | 3], {1: 3}, retry=retry_forever)
    fs.assert_done()
    assert r.garbage_gone == [s1 | 1, s1 | 3]  # id 3's file was already gone
    assert r.abandoned == [s1 | 5]
    assert r.unexpected == ["x.tmp", "0000000200000000"]


def test_recover_retries_failed_unlink_and_sync():
    fs = FakeFs()
    fs.expect("list_names", result=["0000000100000004"])
    fs.expect("unlink", "0000000100000004", error=OSError(errno.EIO, "I/O error"))
    fs.expect("unlink", "0000000100000004")
    fs.expect("sync", error=OSError(errno.EIO, "I/O error"))
    fs.expect("sync")
    r = dirmod.recover(fake_dir(fs), [], {1: 4}, retry=retry_forever)
    fs.assert_done()
    assert r.abandoned == [(1 << 32) | 4]


def test_recover_tolerates_a_file_already_gone():
    fs = FakeFs()
    fs.expect("list_names", result=["0000000100000000"])
    fs.expect("unlink", "0000000100000000", error=FileNotFoundError(errno.ENOENT, "gone"))
    fs.expect("sync")
    r = dirmod.recover(fake_dir(fs), [1 << 32], {}, retry=retry_forever)
    fs.assert_done()
    assert r.garbage_gone == [1 << 32]


def test_recover_with_nothing_to_do_does_not_sync():
    fs = FakeFs()
    fs.expect("list_names", result=["0000000100000000", "meta"])
    r = dirmod.recover(fake_dir(fs), [], {1: 1}, retry=retry_forever)
    fs.assert_done()
    assert r == dirmod.RecoveryResult([], [], [])


def test_first_meta_write_order():
    fs = FakeFs()
    f = FakeFile(fs)
    fs.expect("create_file", "meta", result=f)
    f.expect_write(100)  # a short write: the rest follows
    f.expect_write()
    f.expect("sync")
    fs.expect("sync")
    d = dirmod.SampleFileDir("/fake", fs, None)
    d._write_meta(dirmod.DirMeta(DB, DIR, None, O1), exists=False)
    fs.assert_done()
    assert bytes(f.written) == dirmod.encode_meta(dirmod.DirMeta(DB, DIR, None, O1))


def test_meta_rewrite_is_one_pwrite_and_fdatasync():
    fs = FakeFs()
    f = FakeFile(fs)
    fs.expect("open_file", "meta", result=f)
    f.expect("pwrite", result=lambda data, off: len(data) if off == 0 else 0)
    f.expect("datasync")
    d = fake_dir(fs)
    d.complete_open(O2)
    fs.assert_done()
    assert d.meta == dirmod.DirMeta(DB, DIR, O2)


def test_failed_meta_rewrite_raises_and_keeps_the_old_state():
    fs = FakeFs()
    f = FakeFile(fs)
    fs.expect("open_file", "meta", result=f)
    f.expect("pwrite", error=OSError(errno.ENOSPC, "No space left on device"))
    d = fake_dir(fs)
    with pytest.raises(OSError, match="No space"):
        d.begin_open(O2)
    fs.assert_done()
    assert d.meta == dirmod.DirMeta(DB, DIR, O1)  # nothing claimed


def test_fake_reports_unexpected_calls():
    fs = FakeFs()
    fs.expect("sync")
    with pytest.raises(AssertionError, match=r"expected fs.sync.*got fs.unlink"):
        fs.unlink("x")
    fs2 = FakeFs()
    fs2.expect("sync")
    with pytest.raises(AssertionError, match="expected calls not made: fs.sync"):
        fs2.assert_done()


def test_real_fs_create_is_exclusive(tmp_path):
    fs = dirmod.Fs(str(tmp_path))
    f = fs.create_file("0000000100000000")
    dirmod.write_all(f, b"abc")
    f.sync()
    f.close()
    with pytest.raises(FileExistsError):
        fs.create_file("0000000100000000")
    assert fs.stat_size("0000000100000000") == 3
    assert fs.list_names() == ["0000000100000000"]
    fs.unlink("0000000100000000")
    with pytest.raises(FileNotFoundError):
        fs.unlink("0000000100000000")
    fs.close()


@pytest.mark.parametrize("failing", ["create_file", "write", "sync", "dir sync"])
def test_first_meta_write_failures_propagate_and_claim_nothing(failing):
    fs = FakeFs()
    f = FakeFile(fs)
    eio = OSError(errno.EIO, "I/O error")
    fs.expect("create_file", "meta", result=f, error=eio if failing == "create_file" else None)
    if failing != "create_file":
        f.expect_write(error=eio if failing == "write" else None)
        if failing != "write":
            f.expect("sync", error=eio if failing == "sync" else None)
            if failing != "sync":
                fs.expect("sync", error=eio)
    d = dirmod.SampleFileDir("/fake", fs, None)
    with pytest.raises(OSError, match="I/O error"):
        d._write_meta(dirmod.DirMeta(DB, DIR, None, O1), exists=False)
    fs.assert_done()
    assert d.meta is None  # the caller (db.py) inserts no row; creating again starts over
