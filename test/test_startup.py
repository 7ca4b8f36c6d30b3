"""Start-up that doesn't grow with history, the dir side (dir.py "Late R3", db.py
`open_sample_file_dirs(list_later=True)`): `run` unlinks garbage before recording but
lists the dir for abandoned files on a thread, and S1 replaces an abandoned file it
meets first. The totals side is test_totals.py."""

import logging
import os
import threading

import db
import dir as dirmod
import recording
import writer
from conftest import START_NS, make_testdb

T0_90K = recording.to_90k_from_ns(START_NS)


def write_file(t, cid: int, data: bytes = b"stale") -> str:
    path = os.path.join(t.sample_dir, dirmod.name_for(cid))
    with open(path, "xb") as f:
        f.write(data)
    return path


def test_late_recovery_unlinks_garbage_before_returning_and_abandoned_files_after(
        tmp_path, clocks, caplog):
    t = make_testdb(tmp_path, clocks)
    sid = t.stream_id
    ids = [t.add_recording(start_90k=T0_90K + i * 90_000, run_offset=i) for i in range(2)]
    t.db.flush("test")
    assert len(t.db.delete_oldest_recordings(sid, retain_bytes=32768)) == 1
    t.db.flush("retention")  # recording 0 is garbage; its file is still there
    garbage = os.path.join(t.sample_dir, dirmod.name_for(ids[0]))
    # Left by a process that crashed: recordings 2, 3 and 5 (4 was abandoned and
    # unlinked), and a file that is no sample file.
    abandoned = [write_file(t, (sid << 32) | i) for i in (2, 3, 5)]
    junk = os.path.join(t.sample_dir, "junk")
    open(junk, "w").close()
    t.db.close()
    d = t.db = db.Database.open_dir(t.db_dir, clocks)
    with caplog.at_level(logging.INFO, logger="db"):
        d.open_sample_file_dirs(list_later=True)
        assert not os.path.exists(garbage)  # R2 and R4 before returning
        assert d.dirs[t.dir_id].garbage_unlinked == {ids[0]}
        for th in d._late_threads:
            th.join(timeout=60)
    assert not any(os.path.exists(p) for p in abandoned)
    assert os.path.exists(junk)
    assert os.path.exists(os.path.join(t.sample_dir, dirmod.name_for(ids[1])))
    assert "removed 3 abandoned sample file(s)" in caplog.text
    assert "unexpected files (see `nvr.py check`): junk" in caplog.text
    d.flush("test")
    assert d.conn.execute("select count(*) from garbage").fetchone()[0] == 0
    d.close()


def test_late_recovery_never_unlinks_a_file_given_to_a_writer(tmp_path, clocks):
    """The listing may see the file of a recording this process has begun since (its id
    was >= cum_recordings at start-up, like an abandoned one's): it must stay. Only ids
    no writer has been given yet are unlinked."""
    t = make_testdb(tmp_path, clocks)
    sid = t.stream_id
    cid = t.add_recording(start_90k=T0_90K)  # id 0: given to a "writer", file written
    stale = write_file(t, (sid << 32) | 5)
    d = t.db
    d._late_recovery(d.dirs[t.dir_id], set(), {sid: 0}, [])
    path = os.path.join(t.sample_dir, dirmod.name_for(cid))
    assert os.path.exists(path) and not os.path.exists(stale)
    d.flush("test")
    assert d.streams[sid].cum_recordings == 1
    assert d.conn.execute("select count(*) from recording").fetchone()[0] == 1


def test_s1_replaces_an_abandoned_file_late_recovery_has_not_reached(
        tmp_path, clocks, caplog):
    """O_EXCL meeting an abandoned file of an earlier process (the listing hasn't come to
    it): the writer unlinks and recreates it. Before, S1 retried EEXIST forever."""
    t = make_testdb(tmp_path, clocks)
    sid = t.stream_id
    path = write_file(t, sid << 32, b"stale bytes of an earlier process")
    shutdown = threading.Event()
    w = writer.Writer(t.db, sid, dirmod.Syncer(t.db, t.dir_id, shutdown=shutdown),
                      shutdown=shutdown)
    done = threading.Event()

    def record():
        w.write(b"k" * 100, T0_90K, 0, True, t.vse_id)
        done.set()
    th = threading.Thread(target=record, daemon=True)
    with caplog.at_level(logging.INFO, logger="writer"):
        th.start()
        th.join(timeout=30)
        if not done.is_set():  # stuck retrying EEXIST: end it, then fail
            shutdown.set()
            th.join(timeout=30)
    assert done.is_set(), "S1 kept retrying EEXIST"
    assert "replacing an abandoned sample file of an earlier run" in caplog.text
    w.close("test")
    with open(path, "rb") as f:
        assert f.read() == b"k" * 100


def test_a_file_with_a_row_is_never_replaced(tmp_path, clocks):
    t = make_testdb(tmp_path, clocks)
    cid = t.add_recording(start_90k=T0_90K)
    t.db.flush("test")
    assert t.db.has_recording_row(cid)
    assert not t.db.has_recording_row(cid + 1)


def test_run_loads_totals_and_lists_dirs_after_ready(tmp_path, clocks):
    """`nvr.py run` opens with totals="background" and list_later=True: the totals come
    from the `totals-loader` thread and the abandoned file goes on the dir's recovery
    thread, both logged by those threads (the log names the thread)."""
    import signal
    import socket
    import subprocess
    import sys
    import time
    t = make_testdb(tmp_path, clocks)
    sid = t.stream_id
    t.db.update_stream(sid, config=dict(t.db.streams[sid].config, url="rtsp://127.0.0.1:9/x"))
    for i in range(3):
        t.add_recording(start_90k=T0_90K + i * 90_000, run_offset=i)
    t.db.flush("test")
    abandoned = write_file(t, (sid << 32) | 3)
    t.db.close()
    (tmp_path / "nvr.toml").write_text(f'dbDir = "{t.db_dir}"\n[[binds]]\n'
                                       'ipv4 = "127.0.0.1:0"\n')
    sock_path = str(tmp_path / "notify.sock")
    log_path = tmp_path / "nvr.log"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as ns, open(log_path, "wb") as log:
        ns.bind(sock_path)
        ns.settimeout(60)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        proc = subprocess.Popen(
            [sys.executable, os.path.join(root, "nvr.py"), "run", "--config", "nvr.toml"],
            cwd=str(tmp_path), stdout=log, stderr=subprocess.STDOUT,
            env=dict(os.environ, NVR_LOG="INFO", NOTIFY_SOCKET=sock_path,
                     TZ="America/Los_Angeles"))
        try:
            while b"READY=1" not in ns.recv(4096):
                pass
            # Both threads' lines: polled, as the log file is all there is to wait on.
            deadline = time.monotonic() + 60
            while not ("loaded every stream's totals" in log_path.read_text()
                       and "abandoned sample file" in log_path.read_text()):
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0, log_path.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    lines = log_path.read_text().splitlines()
    assert any(" totals-loader db: loaded every stream's totals" in x for x in lines), lines
    assert any(f" recovery-{t.sample_dir} db: dir {t.sample_dir}: removed 1 abandoned" in x
               for x in lines), lines
    assert not os.path.exists(abandoned)
    assert "Traceback" not in log_path.read_text()
