"""Fault injection: kills, a misbehaving CDN, a broken ledger, a hostile folder and hostile clients.

Every test checks the end state against the emulator's own record or the files on disk.
CDN_PUSH_SOAK=N runs the random-kill loop N times instead of 20.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

import cdn_push
from cdn_push import Ledger, Pipeline, main
from test_watch import names, watch  # noqa: F401 - `watch` is a fixture used below
from conftest import (API_LOGIN, API_PASSWORD, ORIGIN_PASSWORD, ROOT, assert_cdn_holds, free_port, start_cdn_push,
                      wait_for, write_files)

SOAK = int(os.environ.get("CDN_PUSH_SOAK", "0") or 0)


def run_main(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def start_run(config: Path, *args: str) -> subprocess.Popen:
    return start_cdn_push("--config", str(config), *args)


def sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def snapshot(folder: Path) -> dict[str, tuple[int, int, str]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns, sha(p.read_bytes()))
            for p in sorted(folder.rglob("*")) if p.is_file()}


# -- kills ---------------------------------------------------------------------------------------

def test_random_sigkills_then_one_clean_run_lose_nothing(drop, emulator, write_config, raw_config):
    rng = random.Random(2026)
    files = {f"k/{i // 50:02}/f{i:03}.mp4": os.urandom(200 + i) for i in range(300)}
    write_files(drop, files)
    emulator.answer_delay = 0.005
    workers = 2
    config = write_config(workers={"hash": 1, "submit": workers})
    kills = SOAK or 20
    for _ in range(kills):
        process = start_run(config)
        time.sleep(rng.uniform(0.05, 0.8))
        process.kill()
        process.communicate(timeout=30)
    emulator.answer_delay = 0
    final = start_run(config)
    out, err = final.communicate(timeout=120)
    assert final.returncode == 0, err
    assert_cdn_holds(emulator, files)
    with Ledger.open(raw_config["ledger"]) as ledger:
        rows = {r.path: r for r in ledger.all_rows()}
    assert set(rows) == set(files)
    assert all(r.state == "submitted" and r.accepted_sha256 == sha(files[p]) for p, r in rows.items())
    # A kill loses at most the answers in flight: one per submit worker.
    assert len(emulator.requests) - len(files) <= kills * workers


# -- a misbehaving CDN ------------------------------------------------------------------------------

def test_cdn_fault_storm_ends_with_every_file_imported_or_reported(capsys, drop, emulator, write_config,
                                                                   raw_config, monkeypatch):
    files = {f"s{i:02}.mp4": os.urandom(100 + i) for i in range(60)}
    write_files(drop, files)
    emulator.fault_rate = 0.3
    emulator.fault_choices = ("500", "502", "503", "429", "429:1", "hang:1.2", "drop", "garbage", "error200")
    emulator._rng.seed(7)
    sleeps = []
    real_sleep = cdn_push.CdnClient._sleep_unless_stopped

    def recording_sleep(self, seconds):
        sleeps.append(seconds)
        real_sleep(self, seconds)

    monkeypatch.setattr(cdn_push.CdnClient, "_sleep_unless_stopped", recording_sleep)
    api = {**raw_config["api"], "timeout": 0.5,
           "retry": {"attempts": 10, "backoff_base": 0.01, "backoff_max": 0.05, "max_seconds": 30}}
    config = write_config(api=api)
    started = time.monotonic()
    code, out, err = run_main(capsys, "--config", str(config))
    assert code in (cdn_push.EXIT_OK, cdn_push.EXIT_INCOMPLETE), err
    assert "Traceback" not in err
    transient = sum(1 for status in emulator.answers if status >= 500 or status == 429)
    assert sleeps and all(s > 0 for s in sleeps) and len(sleeps) >= transient   # every retry waited
    rejected = [line for line in err.splitlines() if " rejected " in line]
    assert all("import queue unavailable" in line for line in rejected)         # the 200 that reported an error
    for _ in range(6):                        # what was rejected goes again when asked
        if code == cdn_push.EXIT_OK:
            break
        code, out, err = run_main(capsys, "--config", str(config), "--retry-rejected")
    assert code == cdn_push.EXIT_OK, out + err
    assert time.monotonic() - started < 120
    assert set(files) <= {r["name"] for r in emulator.requests}
    with Ledger.open(raw_config["ledger"]) as ledger:
        assert {r.state for r in ledger.all_rows()} == {"submitted"}


# -- a broken ledger -------------------------------------------------------------------------------

@pytest.fixture
def small_fs(tmp_path):
    """A real, tiny file system for the ledger, so that disk-full and read-only are real."""
    mount_point = tmp_path / "ledgerfs"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_disk_full_names_the_ledger_keeps_the_folder_and_recovers(capsys, small_fs, drop, emulator, write_config):
    write_files(drop, {"first.mp4": b"first"})
    ledger = small_fs / "ledger.sqlite3"
    config = write_config(ledger=str(ledger))
    assert run_main(capsys, "--config", str(config))[0] == 0
    filler = small_fs / "filler"
    try:
        with open(filler, "wb", buffering=0) as handle:
            while True:
                handle.write(b"\0" * 4096)
    except OSError:
        pass                                           # the file system is now full
    write_files(drop, {f"more/m{i:03}.mp4": os.urandom(300) for i in range(300)})
    before = snapshot(drop)
    code, out, err = run_main(capsys, "--config", str(config))
    assert code == cdn_push.EXIT_LEDGER, err
    assert str(ledger) in err and "full" in err and "free some space" in err
    assert snapshot(drop) == before
    filler.unlink()
    code, out, err = run_main(capsys, "--config", str(config))
    assert code == 0, err
    assert emulator.wait_idle(30)
    assert {f["name"] for f in emulator.snapshot()} == set(before)


def test_read_only_ledger_is_a_clear_error(capsys, small_fs, drop, emulator, write_config):
    write_files(drop, {"a.mp4": b"a"})
    config = write_config(ledger=str(small_fs / "ledger.sqlite3"))
    assert run_main(capsys, "--config", str(config))[0] == 0
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    write_files(drop, {"b.mp4": b"b"})
    before = snapshot(drop)
    code, _, err = run_main(capsys, "--config", str(config))
    assert code == cdn_push.EXIT_LEDGER
    assert str(small_fs / "ledger.sqlite3") in err and "Read-only" in err and "writable" in err
    assert snapshot(drop) == before


def test_damaged_ledger_exits_5_and_is_left_as_it_was(capsys, drop, write_config, raw_config):
    ledger = Path(raw_config["ledger"])
    ledger.parent.mkdir(parents=True)
    ledger.write_bytes(b"SQLite format 3\0" + os.urandom(5000))
    before = ledger.read_bytes()
    code, _, err = run_main(capsys, "--config", str(write_config()))
    assert code == cdn_push.EXIT_LEDGER
    assert str(ledger) in err and "move it aside" in err
    assert ledger.read_bytes() == before


def test_ledger_from_a_newer_cdn_push_is_refused(capsys, drop, write_config, raw_config):
    Ledger.open(raw_config["ledger"]).close()
    db = sqlite3.connect(raw_config["ledger"])
    db.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    db.commit()
    db.close()
    code, _, err = run_main(capsys, "--config", str(write_config()))
    assert code == cdn_push.EXIT_LEDGER and "newer cdn-push" in err and raw_config["ledger"] in err


def test_a_version_1_ledger_migrates_forward_and_keeps_its_rows(capsys, drop, emulator, write_config, raw_config):
    write_files(drop, {"old.mp4": b"imported by an older cdn-push"})
    st = (drop / "old.mp4").stat()
    Path(raw_config["ledger"]).parent.mkdir(parents=True)
    db = sqlite3.connect(raw_config["ledger"])
    schema_v1 = cdn_push.LEDGER_SCHEMA.replace("    retry_at REAL NOT NULL DEFAULT 0,\n", "")
    db.executescript(schema_v1)
    digest = sha(b"imported by an older cdn-push")
    db.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    db.execute("INSERT INTO files (path, dir, size, mtime_ns, inode, sha256, name, state, accepted_name, "
               "accepted_size, accepted_sha256, updated_at) VALUES (?, '', ?, ?, ?, ?, ?, 'submitted', ?, ?, ?, 0)",
               ("old.mp4", st.st_size, st.st_mtime_ns, st.st_ino, digest, "old.mp4", "old.mp4", st.st_size, digest))
    db.commit()
    db.close()
    code, out, err = run_main(capsys, "--config", str(write_config()))
    assert code == 0 and "1 unchanged" in out and "0 submitted" in out
    assert f"upgraded from schema 1 to {cdn_push.SCHEMA_VERSION}" in err
    db = sqlite3.connect(raw_config["ledger"])
    assert db.execute("SELECT value FROM meta").fetchone() == (str(cdn_push.SCHEMA_VERSION),)
    assert db.execute("SELECT retry_at FROM files").fetchone() == (0,)
    db.close()


# -- a hostile folder --------------------------------------------------------------------------------

def test_unreadable_file_is_skipped_with_a_message_and_the_rest_goes(capsys, drop, emulator, write_config,
                                                                     monkeypatch):
    """Root reads any file, so the refusal of one file is injected at os.open."""
    write_files(drop, {"ok.mp4": b"ok", "locked.mp4": b"locked"})
    real_open = os.open

    def refusing_open(path, flags, *args, **kwargs):
        if str(path).endswith("locked.mp4"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(cdn_push.os, "open", refusing_open)
    code, out, err = run_main(capsys, "--config", str(write_config()))
    assert code == cdn_push.EXIT_INCOMPLETE
    assert "skipped locked.mp4: cannot read: Permission denied" in err and "1 unreadable" in out
    assert [r["name"] for r in emulator.requests] == ["ok.mp4"]


HUGE_SIZE = 4 * 1024 ** 3 + 3
# Written into an otherwise sparse (zero) file: at the start, across 2 GiB (signed 32-bit offsets
# wrap there) and across 4 GiB up to the end (unsigned ones), so reading a wrong stretch shows.
HUGE_MARKS = {0: b"first bytes", 2 ** 31 - 4: b"2 GiB: signed 32-bit", HUGE_SIZE - 11: b"across4GiB!"}
# sha-256 of that content, computed once by huge_content_sha256() (and checked against reading the
# file back): hashing 4 GiB takes seconds, so the test leaves the only read to the code under test.
HUGE_SHA256 = "badcb9e3296644071bcc2dec13d7dd2dfbd6a57e8672f60426dc69f7ef577eaf"


def huge_content_sha256() -> str:
    """The sha-256 of the huge file's content, streamed from HUGE_MARKS: how HUGE_SHA256 was made.

    .venv/bin/python -c 'import sys; sys.path[:0] = ["tests", "."]; import test_faults as t; print(t.huge_content_sha256())'
    """
    digest, at, zeros = hashlib.sha256(), 0, bytes(16 * 1024 * 1024)
    for offset, mark in [*sorted(HUGE_MARKS.items()), (HUGE_SIZE, b"")]:
        while at < offset:
            step = min(offset - at, len(zeros))
            digest.update(zeros[:step])
            at += step
        digest.update(mark)
        at += len(mark)
    return digest.hexdigest()


def test_file_larger_than_4_gib(drop, emulator, make_config):
    marks = sorted(HUGE_MARKS.items())
    assert all(a + len(m) <= b for (a, m), (b, _) in zip(marks, marks[1:] + [(HUGE_SIZE, b"")]))   # no overlap
    with open(drop / "huge.bin", "wb") as handle:      # sparse: no disk space, real size
        handle.truncate(HUGE_SIZE)
        for offset, mark in marks:
            handle.seek(offset)
            handle.write(mark)
    assert (drop / "huge.bin").stat().st_size == HUGE_SIZE
    old = time.time() - 3600
    os.utime(drop / "huge.bin", (old, old))
    emulator.hold()
    config = make_config(scan={"settle_seconds": 5, "allow_sparse": True})      # the hole-filled file is the point here
    with Ledger.open(config.ledger) as ledger:
        pipeline = Pipeline(config, ledger, cdn_push.CdnClient(config.api))
        pipeline.run_once()
    assert emulator.requests[0]["size"] == str(HUGE_SIZE)
    assert emulator.requests[0]["chksum"] == HUGE_SHA256


@pytest.fixture
def fast_dir(tmp_path):
    """A folder in memory when the machine has /dev/shm: making 100,000 files on disk takes minutes here."""
    if os.access("/dev/shm", os.W_OK):
        folder = Path(tempfile.mkdtemp(dir="/dev/shm", prefix="cdn-push-test-"))
        yield folder
        shutil.rmtree(folder, ignore_errors=True)
    else:
        yield tmp_path


def test_hundred_thousand_files_first_pass_and_rerun(fast_dir, make_config):
    folder = fast_dir / "many"
    count = 100_000
    blob = b"x" * 64
    for i in range(count):
        sub = folder / f"d{i // 500:03}"
        if i % 500 == 0:
            sub.mkdir(parents=True)
        fd = os.open(sub / f"f{i:06}", os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, blob[: i % 64])
        os.close(fd)
    old = time.time() - 3600
    config = make_config(folder=str(folder))
    with Ledger.open(config.ledger) as ledger:
        first = Pipeline(config, ledger, None, clock=lambda: old + 7200)
        first.scan_and_hash()
        assert first.summary.new == count and ledger.count_pending() == count
        ledger.mark_all_accepted()
        again = Pipeline(config, ledger, None, clock=lambda: old + 7200)
        again.scan_and_hash()
    assert again.summary.unchanged == count and again.summary.bytes_hashed == 0


# -- hostile clients of the built-in origin -----------------------------------------------------------

@pytest.fixture
def live_origin(drop, make_config):
    write_files(drop, {"a.mp4": b"a" * 1000})
    port = free_port()
    config = make_config(origin={"serve": {"listen": f"127.0.0.1:{port}", "public_url": f"http://127.0.0.1:{port}",
                                           "max_connections": 6}})
    with Ledger.open(config.ledger) as ledger:
        Pipeline(config, ledger, None).scan_and_hash()
    signer = cdn_push.UrlSigner(b"abuse-test-secret-abuse-test-!!!")
    server = cdn_push.OriginServer(config, signer, cdn_push.CallbackInbox()).start()
    url = signer.location(config.origin.serve.public_url, "a.mp4", int(time.time()) + 600)
    yield port, url
    server.stop()


def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except socket.timeout:
            pass
        return b"".join(chunks)


@pytest.mark.parametrize("request_bytes, status", [
    (b"GARBAGE\r\n\r\n", b" 400 "),
    (b"GET /o/1/2/a.mp4 HTTP/9.9\r\n\r\n", b" 505 "),
    (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", b" 414 "),
    (b"GET / HTTP/1.1\r\nX-Big: " + b"b" * 70000 + b"\r\n\r\n", b" 431 "),
    (b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(150)) + b"\r\n", b" 431 "),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(32, 96)) + b"\r\n\r\n", b" 400 "),
])
def test_malformed_requests_are_refused_and_the_origin_still_serves(live_origin, request_bytes, status):
    import requests
    port, url = live_origin
    answer = raw_exchange(port, request_bytes)
    assert status in answer.split(b"\r\n", 1)[0]
    good = requests.get(url, timeout=5)
    assert good.status_code == 200 and len(good.content) == 1000


def test_idle_and_trickling_clients_do_not_block_the_origin_or_grow_memory(live_origin):
    import requests
    port, url = live_origin
    rss_before = int(open("/proc/self/statm").read().split()[1])
    # Attackers from other addresses than the fetcher's: at most 3 of the 6 slots each.
    idle = [socket.create_connection(("127.0.0.1", port), source_address=(f"127.0.0.{2 + i % 2}", 0))
            for i in range(4)]
    trickle = socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.4", 0))
    path = url.split(str(port), 1)[1]
    request = f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    try:
        for byte in request[:5]:                        # one byte at a time, then nothing
            trickle.send(bytes([byte]))
            time.sleep(0.05)
        with requests.Session() as session:          # one keep-alive connection: one slot
            answers = [session.get(url, timeout=5) for _ in range(20)]
        assert all(a.status_code == 200 and len(a.content) == 1000 for a in answers)
        flood = [socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.5", 0))
                 for _ in range(50)]
        refused = sum(1 for s in flood if s.recv(64).startswith(b"HTTP/1.1 503"))
        for sock in flood:
            sock.close()
        assert refused >= 49                            # beyond max_connections: told to come back
    finally:
        for sock in idle + [trickle]:
            sock.close()
    # served again once the origin has seen the attackers' closes (until then a slot may still look taken)
    wait_for(lambda: requests.get(url, timeout=5).status_code == 200, message="the origin serving after the attack")
    rss_after = int(open("/proc/self/statm").read().split()[1])
    assert (rss_after - rss_before) * os.sysconf("SC_PAGE_SIZE") < 20 * 1024 * 1024


# -- TLS -----------------------------------------------------------------------------------------------

@pytest.fixture
def tls_emulator(self_signed_cert):
    cert, key = self_signed_cert
    from cdn_emulator import CdnEmulator
    emulator = CdnEmulator(login=API_LOGIN, password=API_PASSWORD, tls=(str(cert), str(key))).start()
    emulator.hold()
    yield emulator, cert
    emulator.stop()


def test_tls_is_verified_by_default_a_ca_bundle_works_and_off_warns(capsys, drop, tls_emulator, raw_config,
                                                                     write_config):
    emulator, cert = tls_emulator
    write_files(drop, {"a.mp4": b"a"})
    api = {**raw_config["api"], "url": emulator.api_url}
    code, _, err = run_main(capsys, "--config", str(write_config(api=api)))
    assert code == cdn_push.EXIT_CDN_UNAVAILABLE and "TLS error" in err and "api.ca_bundle" in err
    code, out, err = run_main(capsys, "--config", str(write_config(api={**api, "ca_bundle": str(cert)})))
    assert code == 0 and "1 submitted" in out and "verification is off" not in err, err
    write_files(drop, {"b.mp4": b"b"})
    code, out, err = run_main(capsys, "--config", str(write_config(api={**api, "verify_tls": False})))
    assert code == 0 and "TLS certificate verification is off" in err


# -- secrets, in the one command the other tests do not cover ------------------------------------------

def test_watch_never_shows_a_password(drop, emulator, write_config, raw_config):
    api = {k: v for k, v in raw_config["api"].items() if k != "password"}
    config = write_config(api=api, scan={"settle_seconds": 1})
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDN_PUSH_")}
    env[cdn_push.ENV_API_PASSWORD] = API_PASSWORD
    emulator.inject("echo400")
    process = subprocess.Popen([sys.executable, str(ROOT / "cdn_push.py"), "watch", "-v", "--config", str(config)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               stdin=subprocess.DEVNULL)
    out_lines: list[str] = []
    lines: list[str] = []
    readers = [threading.Thread(target=sink.extend, args=(stream,), daemon=True)
               for sink, stream in ((out_lines, process.stdout), (lines, process.stderr))]
    for reader in readers:
        reader.start()

    def logged(text: str) -> bool:
        assert process.poll() is None, f"watch ended: {''.join(lines)}"
        return any(text in line for line in list(lines))

    try:
        wait_for(lambda: logged("pass done"), timeout=20, message="watch started and its first pass done")
        write_files(drop, {"w.mp4": b"watched"})
        wait_for(lambda: logged("rejected w.mp4"), timeout=20, message="the echoed rejection logged")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
        for reader in readers:
            reader.join(10)
    out, err = "".join(out_lines), "".join(lines)
    assert emulator.answers == [400] and "***" in err
    for secret in (API_PASSWORD, ORIGIN_PASSWORD, cdn_push.quote(ORIGIN_PASSWORD, safe="")):
        assert secret not in out + err


def test_nothing_is_sent_that_a_full_ledger_disk_could_not_record(capsys, small_fs, drop, emulator, write_config,
                                                                   make_config, raw_config):
    write_files(drop, {f"p{i}.mp4": b"%d" % i for i in range(5)})
    ledger = small_fs / "ledger.sqlite3"
    config = make_config(ledger=str(ledger))
    with Ledger.open(config.ledger) as db:
        cdn_push.Pipeline(config, db, None).scan_and_hash()       # pending rows, as a killed run leaves them
    filler = small_fs / "filler"
    with contextlib.suppress(OSError), open(filler, "wb", buffering=0) as handle:
        while True:
            handle.write(b"\0" * 4096)
    os.truncate(filler, filler.stat().st_size - 1024 * 1024)    # room to open the ledger, not to run on
    code, out, err = run_main(capsys, "--config", str(write_config(ledger=str(ledger))))
    assert code == cdn_push.EXIT_LEDGER and "is full" in err and "nothing more is sent" in err, err
    assert emulator.requests == []
    os.truncate(filler, 0)                                      # completely full: the ledger cannot even open
    with open(filler, "wb", buffering=0) as handle, contextlib.suppress(OSError):
        while True:
            handle.write(b"\0" * 4096)
    code, out, err = run_main(capsys, "--config", str(write_config(ledger=str(ledger))))
    assert code == cdn_push.EXIT_LEDGER and "is full" in err and emulator.requests == [], err
    filler.unlink()
    code, out, err = run_main(capsys, "--config", str(write_config(ledger=str(ledger))))
    assert code == 0 and len(emulator.requests) == 5, err


def test_a_disk_filling_up_stops_sending_but_what_was_sent_is_still_served_and_confirmed(
        capsys, small_fs, drop, emulator, write_config, raw_config):
    """The room kept under the ledger records the confirmations of what was sent; the built-in origin
    stays up for the CDN's fetch instead of vanishing with the run; a request already queued does not
    leave (issue 19, finding 7)."""
    write_files(drop, {"a-sent.mp4": b"s" * 5000, "b-queued.mp4": b"q" * 5000})
    ledger = small_fs / "ledger.sqlite3"
    port = free_port()
    config = write_config(ledger=str(ledger), workers={"submit": 1}, confirm={"wait_seconds": 60},
                          api={**raw_config["api"], "timeout": 60},       # the held answer is waited for
                          origin={"serve": {"listen": f"127.0.0.1:{port}", "public_url": f"http://127.0.0.1:{port}"}})
    emulator.hold()                       # accepted files are not fetched yet
    emulator.hold_answers()               # and the first request is not answered yet: the second waits in the queue
    outcome: list[int] = []
    runner = threading.Thread(target=lambda: outcome.append(cdn_push.main(["--config", str(config)])))
    runner.start()
    said = []
    try:
        wait_for(lambda: emulator.held_answers() == 1, timeout=30, message="the first request on the wire")
        filler = small_fs / "filler"
        with contextlib.suppress(OSError), open(filler, "wb", buffering=0) as handle:
            while True:
                handle.write(b"\0" * 4096)
        os.truncate(filler, filler.stat().st_size - 1024 * 1024)     # under LEDGER_ROOM, room to record
        wait_for(lambda: said.append(capsys.readouterr().err) or "is full" in "".join(said), timeout=30,
                 message="the full disk noticed")
    finally:
        emulator.release_answers()
        emulator.release()
    runner.join(90)
    assert outcome == [cdn_push.EXIT_LEDGER], (outcome, "".join(said) + capsys.readouterr().err)
    assert [r["name"] for r in emulator.requests] == ["a-sent.mp4"]
    with Ledger.open(ledger) as db:
        assert db.get("a-sent.mp4").state == cdn_push.STATE_CONFIRMED
        assert db.get("b-queued.mp4").state == cdn_push.STATE_PENDING


def test_the_service_outlives_a_full_ledger_disk_and_carries_on_once_it_has_room(small_fs, drop, emulator, caplog,
                                                                                   watch):
    """A write the ledger cannot take no longer ends the service (exit 5, and under systemd a restart
    every 10 s): it sends nothing, tries the ledger again with back-off, then takes up where it stands."""
    caplog.set_level(logging.INFO, logger="cdn_push")
    write_files(drop, {"before.mp4": b"b" * 1000})
    port = free_port()      # the built-in origin: callbacks must be taken again after the recovery
    running = watch(ledger=str(small_fs / "ledger.sqlite3"),
                    origin={"serve": {"listen": f"127.0.0.1:{port}", "public_url": f"http://127.0.0.1:{port}"}})
    wait_for(lambda: "before.mp4" in names(emulator), message="the first pass")
    filler = small_fs / "filler"
    with contextlib.suppress(OSError), open(filler, "wb", buffering=0) as handle:
        while True:
            handle.write(b"\0" * 4096)
    write_files(drop, {"during.mp4": b"d" * 1000})
    wait_for(lambda: "sending nothing until the ledger can be written again" in caplog.text, timeout=30,
             message="the full ledger said")
    assert running.thread.is_alive() and "during.mp4" not in names(emulator)
    filler.unlink()
    wait_for(lambda: "during.mp4" in names(emulator), timeout=60, message="during.mp4 sent once there is room")
    assert "the ledger can be written again" in caplog.text

    def state() -> str | None:
        with Ledger.reader(small_fs / "ledger.sqlite3") as ledger:
            row = ledger.get("during.mp4")
        return row.state if row else None

    wait_for(lambda: state() == cdn_push.STATE_CONFIRMED, timeout=30, message="during.mp4 confirmed by its callback")
    assert running.close() == cdn_push.EXIT_OK
