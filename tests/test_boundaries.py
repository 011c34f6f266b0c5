"""The edges of a run: a bug ends as exit 70 with a redacted traceback, thread faults are told once
per kind, a dead worker is noticed, a second Ctrl-C stops at once, a dry run leaves the ledger alone."""

from __future__ import annotations

import hashlib
import signal
import socket
import sqlite3
import threading
import time
from pathlib import Path

import pytest

import cdn_push
from cdn_push import Ledger, Pipeline, ThreadErrors
from conftest import API_PASSWORD, start_cdn_push, wait_for, write_files
from fakes import FakeCdnClient


def test_a_bug_exits_70_with_a_redacted_traceback(drop, emulator, write_config, capsys, monkeypatch):
    write_files(drop, {"a.mp4": b"a"})

    def broken(self, method, params):
        raise KeyError(f"a bug that repeats the password {API_PASSWORD}")

    monkeypatch.setattr(cdn_push.CdnClient, "_post_once", broken)
    code = cdn_push.main(["--config", str(write_config())])
    err = capsys.readouterr().err
    assert code == cdn_push.EXIT_BUG, err
    assert "a fault of its own (a bug" in err and "Traceback" in err and "KeyError" in err
    assert API_PASSWORD not in err and "***" in err


def test_thread_faults_are_logged_once_per_kind_then_counted(caplog):
    errors = ThreadErrors()
    thread = threading.Thread(name="monitor-7")
    for _ in range(12):
        try:
            raise ZeroDivisionError("boom")
        except ZeroDivisionError as exc:
            errors.report(threading.ExceptHookArgs((ZeroDivisionError, exc, exc.__traceback__, thread)))
    lines = [r for r in caplog.records if r.name == "cdn_push"]
    assert len(lines) == 2, [r.getMessage() for r in lines]
    assert lines[0].exc_info and "monitor thread" in lines[0].getMessage()
    assert "has now happened 10 times" in lines[1].getMessage() and not lines[1].exc_info


class WorkerKiller(BaseException):
    """Not an Exception: what a worker cannot catch, so its thread ends."""


def test_a_dead_submit_worker_ends_the_run_instead_of_hanging_it(make_config, raw_config, drop):
    write_files(drop, {"a.mp4": b"a" * 10, "b.mp4": b"b" * 10})
    config = make_config(origin={**raw_config["origin"], "check": False}, workers={"submit": 1})
    client = FakeCdnClient(answer=lambda params: WorkerKiller())
    previous, threading.excepthook = threading.excepthook, lambda args: None     # the test expects the death
    try:
        with Ledger.open(config.ledger) as ledger:
            pipeline = Pipeline(config, ledger, client)
            with pytest.raises(RuntimeError, match="submit worker .* died"):
                pipeline.run_once()
            assert {row.state for row in ledger.all_rows()} == {"pending"}      # committed, safe to resend
    finally:
        threading.excepthook = previous


def test_a_dry_run_neither_writes_nor_migrates_the_ledger(drop, emulator, write_config, raw_config, capsys):
    write_files(drop, {"a.mp4": b"a" * 100})
    config = write_config()
    assert cdn_push.main(["--config", str(config)]) == 0
    ledger = Path(raw_config["ledger"])
    db = sqlite3.connect(ledger)
    db.execute("UPDATE meta SET value='2' WHERE key='schema_version'")    # as an older cdn-push left it
    db.execute("DROP INDEX files_by_check")
    db.commit()
    db.close()
    before = hashlib.sha256(ledger.read_bytes()).hexdigest()
    write_files(drop, {"a.mp4": b"changed" * 100, "b.mp4": b"new"})
    capsys.readouterr()
    assert cdn_push.main(["--config", str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would submit (changed): a.mp4" in out and "would submit (new): b.mp4" in out
    assert hashlib.sha256(ledger.read_bytes()).hexdigest() == before
    wal = ledger.with_name(ledger.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0          # reading a WAL ledger leaves an empty log
    db = sqlite3.connect(ledger)
    assert db.execute("SELECT value FROM meta").fetchone() == ("2",)
    db.close()


@pytest.fixture
def silent_api():
    """An API address that accepts connections and never answers."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/api2", held
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    server.close()


def test_a_second_ctrl_c_ends_a_run_stuck_on_a_silent_api_within_two_seconds(drop, write_config, raw_config,
                                                                             silent_api):
    url, held = silent_api
    write_files(drop, {f"{i}.mp4": b"%d" % i for i in range(4)})
    config = write_config(api={**raw_config["api"], "url": url, "timeout": 30},
                          origin={**raw_config["origin"], "check": False})
    process = start_cdn_push("--config", str(config))
    try:
        wait_for(lambda: len(held) >= 1 or process.poll() is not None, 30, message="a request on the wire")
        process.send_signal(signal.SIGINT)
        with pytest.raises(Exception):          # the first stop waits for the request on the wire ...
            process.wait(1.5)
        process.send_signal(signal.SIGINT)      # ... the second does not
        started = time.monotonic()
        code = process.wait(10)
        took = time.monotonic() - started
        out, err = process.communicate()
    finally:
        if process.poll() is None:
            process.kill()
    assert took < 2.0, (took, err)
    assert code == cdn_push.EXIT_INCOMPLETE and "(interrupted)" in out, (code, out, err)
    with Ledger.reader(Path(raw_config["ledger"])) as ledger:
        assert {row.state for row in ledger.all_rows()} == {"pending"}    # safe to send again
