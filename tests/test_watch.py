"""The watch service: real inotify events in temporary folders, the emulator as the CDN."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

import cdn_push
from cdn_push import Ledger, WatchService
from conftest import ROOT, start_cdn_push, write_files
from fakes import Clock, FakeCdnClient, FakeOpenFiles


def wait_for(predicate, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def names(emulator):
    return [r["name"] for r in emulator.requests]


class Running:
    """A WatchService in a background thread, as systemd would run it in the foreground."""

    def __init__(self, config, wait_for_first_pass=True, **kwargs):
        self.stop = threading.Event()
        self.reload = threading.Event()
        self.ledger = Ledger.open(config.ledger)
        self.service = WatchService(config, self.ledger, stop=self.stop, reload=self.reload, **kwargs)
        self.error = None
        self.ready = threading.Event()
        original = self.service.notifier.ready
        self.service.notifier.ready = lambda status: (self.ready.set(), original(status))
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(20), "service never became ready"
        if self.error:
            raise self.error
        if wait_for_first_pass:     # READY comes before the first pass, which then runs alongside
            wait_for(lambda: self.service.passes_done or self.error, what="the first pass")

    def _run(self):
        try:
            self.code = self.service.run()
        except BaseException as exc:  # noqa: BLE001 - reported by close()
            self.error = exc
            self.ready.set()

    def wait_idle(self, turns=3, timeout=20.0):
        """Nothing settling, queued, hashed or scanned for `turns` loop turns in a row: whatever was
        going to be submitted has been."""
        start = self.service.turns
        wait_for(lambda: self.service.idle_turns >= turns and self.service.turns >= start + turns
                 and self.service.collector.events.empty(), timeout, what="the service to become idle")

    def close(self):
        self.stop.set()
        self.thread.join(30)
        self.ledger.close()
        if self.error:
            raise self.error
        return self.code


@pytest.fixture
def watch(make_config):
    started = []

    def start(**sections):
        sections.setdefault("scan", {"settle_seconds": 1, "rescan_interval": 3600})
        kwargs = sections.pop("service_kwargs", {})
        first_pass = sections.pop("wait_for_first_pass", True)
        running = Running(make_config(**sections), wait_for_first_pass=first_pass, **kwargs)
        started.append(running)
        return running

    yield start
    for running in started:
        if running.thread.is_alive() or running.error:
            running.close()


def test_first_pass_then_new_files_are_imported_within_seconds(drop, emulator, watch):
    write_files(drop, {"old.mp4": b"old"})
    running = watch()
    wait_for(lambda: names(emulator) == ["old.mp4"], what="the first pass, which runs after READY")
    written = time.monotonic()
    (drop / "new.mp4").write_bytes(b"new content")
    wait_for(lambda: "new.mp4" in names(emulator), what="new.mp4 submitted")
    assert time.monotonic() - written < 3.0      # the close event lets it go before settle_seconds
    assert running.close() == cdn_push.EXIT_OK
    assert names(emulator) == ["old.mp4", "new.mp4"]


def test_slow_writer_is_submitted_once_after_its_last_byte(drop, emulator, watch):
    running = watch(scan={"settle_seconds": 1})
    chunk = os.urandom(2048)
    with open(drop / "slow.mp4", "wb") as handle:
        for _ in range(40):                       # about 2 s at 40 KB/s, longer than settle_seconds
            handle.write(chunk)
            handle.flush()
            time.sleep(0.05)
        assert "slow.mp4" not in names(emulator)
    wait_for(lambda: "slow.mp4" in names(emulator), what="slow.mp4 submitted")
    running.wait_idle()
    requests = [r for r in emulator.requests if r["name"] == "slow.mp4"]
    assert len(requests) == 1
    assert requests[0]["size"] == str(40 * 2048)
    assert requests[0]["chksum"] == hashlib.sha256(chunk * 40).hexdigest()


def test_slow_writer_that_reopens_is_not_taken_early(drop, emulator, watch):
    """Appending in separate open/close calls: each close is followed by more data."""
    running = watch(scan={"settle_seconds": 1})
    for _ in range(12):
        with open(drop / "append.mp4", "ab") as handle:
            handle.write(b"x" * 1000)
        time.sleep(0.2)
    wait_for(lambda: "append.mp4" in names(emulator), what="append.mp4 submitted")
    running.wait_idle()
    sizes = [r["size"] for r in emulator.requests if r["name"] == "append.mp4"]
    # Each submission is of a complete, then-stable file; the last one is the final size.
    assert sizes[-1] == "12000"


def test_rsync_style_temp_then_rename_is_submitted_once_under_the_final_name(drop, emulator, watch):
    running = watch()
    temp = drop / "sub" / ".movie.mp4.Xa9Qz2"
    temp.parent.mkdir()
    with open(temp, "wb") as handle:
        for _ in range(10):
            handle.write(os.urandom(1000))
            time.sleep(0.05)
    os.rename(temp, drop / "sub" / "movie.mp4")
    for name in ("clip.mp4.crdownload", "~$notes.docx", "x.part"):
        (drop / name).write_bytes(b"temp")
    wait_for(lambda: "sub/movie.mp4" in names(emulator), what="renamed file submitted")
    running.wait_idle()
    assert names(emulator) == ["sub/movie.mp4"]


def test_burst_of_500_files_all_submitted_once(tmp_path, drop, emulator, watch):
    running = watch(workers={"hash": 2, "submit": 8})
    source = tmp_path / "source"
    write_files(source, {f"f{i:03}.mp4": f"file {i}".encode() for i in range(500)})
    for path in sorted(source.iterdir()):
        shutil.copy2(path, drop / path.name)
    wait_for(lambda: len(emulator.requests) >= 500, timeout=60, what="500 files submitted")
    running.wait_idle()
    assert sorted(names(emulator)) == [f"f{i:03}.mp4" for i in range(500)]


def test_folder_moved_in_or_created_with_files_is_fully_imported(tmp_path, drop, emulator, watch):
    running = watch()
    outside = tmp_path / "outside"
    write_files(outside, {"a.mp4": b"a", "deep/b.mp4": b"b", "deep/er/c.mp4": b"c"})
    os.rename(outside, drop / "moved")                 # mv of a whole tree: one event for the folder
    os.makedirs(drop / "made" / "x" / "y")             # mkdir -p, then copy at once
    shutil.copy2(drop / "moved" / "a.mp4", drop / "made" / "x" / "y" / "copy.mp4")
    expected = {"moved/a.mp4", "moved/deep/b.mp4", "moved/deep/er/c.mp4", "made/x/y/copy.mp4"}
    wait_for(lambda: expected <= set(names(emulator)), what="whole trees submitted")
    running.wait_idle()
    assert sorted(names(emulator)) == sorted(expected)


def test_changed_after_import_is_imported_again(drop, emulator, watch):
    watch()
    (drop / "a.mp4").write_bytes(b"version 1")
    wait_for(lambda: names(emulator) == ["a.mp4"])
    (drop / "a.mp4").write_bytes(b"version 2, longer")
    wait_for(lambda: names(emulator) == ["a.mp4", "a.mp4"])
    assert emulator.requests[1]["chksum"] == hashlib.sha256(b"version 2, longer").hexdigest()


def test_deleted_before_settling_is_never_submitted(drop, emulator, watch):
    running = watch(scan={"settle_seconds": 1.5})
    with open(drop / "brief.mp4", "wb") as handle:
        handle.write(b"here for a moment")
        handle.flush()
        time.sleep(0.3)
        os.unlink(drop / "brief.mp4")
    (drop / "stays.mp4").write_bytes(b"stays")
    wait_for(lambda: "stays.mp4" in names(emulator))
    running.wait_idle()
    assert names(emulator) == ["stays.mp4"]


def test_moved_file_is_imported_under_its_new_name_without_hashing_again(drop, emulator, watch):
    write_files(drop, {"inbox/a.mp4": os.urandom(5000)})
    running = watch()
    wait_for(lambda: names(emulator) == ["inbox/a.mp4"], what="the first pass")
    hashed_before = running.service.pipeline.summary.hashed_files
    os.makedirs(drop / "published")
    os.rename(drop / "inbox" / "a.mp4", drop / "published" / "a.mp4")
    wait_for(lambda: "published/a.mp4" in names(emulator))
    assert running.service.pipeline.summary.hashed_files == hashed_before
    assert emulator.requests[-1]["chksum"] == emulator.requests[0]["chksum"]
    running.close()


def test_polling_mode_finds_files_without_inotify(drop, emulator, watch):
    made = []

    def factory(polling, interval):
        made.append(polling)
        return WatchService._make_observer(polling, interval)

    watch(scan={"settle_seconds": 1, "poll": True, "poll_interval": 0.2},
          service_kwargs={"observer_factory": factory})
    assert made == [True]
    write_files(drop, {"polled.mp4": b"found by polling"})
    wait_for(lambda: "polled.mp4" in names(emulator))


def test_watch_limit_falls_back_to_polling_with_one_clear_line(drop, emulator, watch, caplog):
    made = []

    def factory(polling, interval):
        made.append(polling)
        if not polling:
            raise OSError(errno.ENOSPC, "inotify watch limit reached")
        return WatchService._make_observer(True, 0.2)

    with caplog.at_level(logging.ERROR, logger="cdn_push"):
        watch(service_kwargs={"observer_factory": factory})
    assert made == [False, True]
    lines = [r.getMessage() for r in caplog.records if "max_user_watches" in r.getMessage()]
    assert len(lines) == 1 and "falling back to polling" in lines[0]
    write_files(drop, {"late.mp4": b"late"})
    wait_for(lambda: "late.mp4" in names(emulator))


def test_watcher_overflow_triggers_a_full_rescan(drop, emulator, watch, caplog):
    running = watch()
    # Files whose events were "lost": written with an old mtime while the watcher is told to drop them.
    running.service.collector.on_any_event = lambda event: None
    write_files(drop, {"lost1.mp4": b"1", "lost2.mp4": b"2"})
    running.wait_idle(turns=5)                # several looks at the folder, and no event to act on
    assert names(emulator) == []
    logging.getLogger("watchdog.observers.inotify_c").warning("Inotify queue overflowed; events were lost")
    wait_for(lambda: sorted(names(emulator)) == ["lost1.mp4", "lost2.mp4"])


def test_reload_with_broken_config_keeps_running(tmp_path, drop, emulator, raw_config, watch):
    path = tmp_path / "config.yaml"
    path.write_text("folder: [broken\n")
    load = lambda: cdn_push.load_config(path, {})[0]
    running = watch(service_kwargs={"load": load})
    turns = running.service.turns
    running.reload.set()
    wait_for(lambda: not running.reload.is_set() and running.service.turns > turns + 1, what="the reload")
    assert running.thread.is_alive()
    write_files(drop, {"after.mp4": b"after"}, age=0)
    wait_for(lambda: "after.mp4" in names(emulator))
    path.write_text(yaml.safe_dump({**raw_config, "name_prefix": "reloaded/",
                                    "scan": {"settle_seconds": 1}}))
    running.reload.set()
    write_files(drop, {"next.mp4": b"next"})
    wait_for(lambda: "reloaded/next.mp4" in names(emulator))


def test_sd_notify_ready_watchdog_and_stopping(tmp_path, drop, emulator, make_config):
    address = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(10)
    notifier = cdn_push.SystemdNotifier({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000"})
    assert notifier.watchdog_interval == 0.2
    running = Running(make_config(scan={"settle_seconds": 1}), notifier=notifier)
    messages = []
    deadline = time.monotonic() + 10
    while not "WATCHDOG=1" in "".join(messages).partition("READY=1")[2] and time.monotonic() < deadline:
        messages.append(sock.recv(4096).decode())
    running.close()
    while True:
        try:
            sock.settimeout(0.5)
            messages.append(sock.recv(4096).decode())
        except socket.timeout:
            break
    sock.close()
    text = "\n".join(messages)
    assert "READY=1" in text and "WATCHDOG=1" in text and messages[-1] == "STOPPING=1"
    assert "WATCHDOG=1" in text.partition("READY=1")[2]     # pings go on while it waits for events


# -- the real process, with real signals ---------------------------------------------------

def start_watch(config_path: Path) -> subprocess.Popen:
    return start_cdn_push("watch", "--config", str(config_path))


class StderrLines:
    """A process's log lines as they come, so a test can wait for what it says (never a fixed sleep)."""

    def __init__(self, process):
        self.process, self.lines = process, []
        self.reader = threading.Thread(target=lambda: self.lines.extend(process.stderr), daemon=True)
        self.reader.start()

    def wait_for(self, text, timeout=20.0):
        wait_for(lambda: any(text in line for line in list(self.lines)) or self.process.poll() is not None,
                 timeout, what=repr(text))
        assert self.process.poll() is None, f"the process ended: {''.join(self.lines)}"

    def finish(self, timeout=30.0):
        self.process.wait(timeout)
        self.reader.join(timeout)
        return "".join(self.lines)


def test_sigterm_during_a_burst_exits_0_and_a_restart_finishes(tmp_path, drop, emulator, write_config, raw_config):
    emulator.answer_delay = 0.03
    config = write_config(scan={"settle_seconds": 1}, workers={"hash": 1, "submit": 1})
    process = start_watch(config)
    log = StderrLines(process)
    log.wait_for("pass done")            # watching, and the (empty) first pass is over
    write_files(drop, {f"b{i:03}.mp4": os.urandom(200) for i in range(150)})
    wait_for(lambda: len(emulator.requests) >= 10, what="burst under way")
    process.send_signal(signal.SIGTERM)
    err = log.finish()
    assert process.returncode == 0, err
    assert "Traceback" not in err
    sent = len(emulator.requests)
    assert sent < 150
    with Ledger.open(raw_config["ledger"]) as ledger:
        submitted = {row.path for row in ledger.all_rows("submitted")}
    assert submitted <= {r["name"] for r in emulator.requests}
    emulator.answer_delay = 0
    again = start_watch(config)
    try:
        wait_for(lambda: len({r["name"] for r in emulator.requests}) == 150, timeout=60, what="rest imported")
    finally:
        again.send_signal(signal.SIGTERM)
        again.communicate(timeout=30)
    assert again.returncode == 0
    assert len(emulator.requests) <= 150 + 1     # at most the one request in flight at the stop


def test_sighup_with_broken_config_keeps_the_process_running(tmp_path, drop, emulator, write_config):
    config = write_config(scan={"settle_seconds": 1})
    process = start_watch(config)
    log = StderrLines(process)
    try:
        log.wait_for("watching ")            # signal handlers are in place once it says so
        good = config.read_text()
        config.write_text(good + "\nnot_a_key: 1\n")
        process.send_signal(signal.SIGHUP)
        log.wait_for("configuration not reloaded")
        write_files(drop, {"still.mp4": b"still running"})
        wait_for(lambda: "still.mp4" in names(emulator))
    finally:
        process.send_signal(signal.SIGTERM)
        err = log.finish()
    assert process.returncode == 0
    assert "configuration not reloaded" in err and "not_a_key" in err


def test_systemd_unit_is_complete_and_verifies(tmp_path):
    unit = subprocess.run(["bash", str(ROOT / "install.sh"), "--print-unit"], capture_output=True, text=True,
                          check=True).stdout
    for line in ("Type=notify", "Restart=on-failure", "WatchdogSec=", "NoNewPrivileges=yes",
                 "ProtectSystem=strict", "PrivateTmp=yes", "ReadWritePaths=/var/lib/cdn-push",
                 f"ExecReload={ROOT}/.venv/bin/cdn-push reload --config /etc/cdn-push/config.yaml --pid $MAINPID",
                 "RestartPreventExitStatus=2 4", "User=cdn-push",
                 f"ExecStart={ROOT}/.venv/bin/cdn-push watch --config /etc/cdn-push/config.yaml"):
        assert line in unit, line
    assert not re.search(r"@[A-Z_]+@", unit)
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    path = tmp_path / "cdn-push.service"
    path.write_text(unit)
    done = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_status_works_while_the_service_runs(capsys, drop, emulator, watch, write_config):
    config_path = write_config(scan={"settle_seconds": 1})
    write_files(drop, {"a.mp4": b"a", "b.mp4": b"b"})
    running = watch()
    wait_for(lambda: len(names(emulator)) == 2, what="the first pass")
    wait_for(lambda: running.service.pipeline.summary.submitted == 2, what="answers recorded")
    assert cdn_push.main(["--config", str(config_path), "status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["counts"]["submitted"] == 2
    running.close()


def test_the_service_serves_files_and_confirms_them(drop, emulator, watch):
    from conftest import free_port
    port = free_port()
    running = watch(origin={"serve": {"listen": f"127.0.0.1:{port}", "public_url": f"http://127.0.0.1:{port}"}},
                    callback={"retry_delay": 0.2})
    emulator.fetch_faults.append("404 error")
    (drop / "served.mp4").write_bytes(b"served by cdn-push itself")

    def confirmed():
        with Ledger.open(running.ledger.path) as ledger:      # a connection of the test's own
            row = ledger.get("served.mp4")
        return row is not None and row.state == "confirmed"

    wait_for(confirmed, what="served.mp4 confirmed after one failed fetch")
    assert emulator.files["served.mp4"].imports == 2
    assert running.close() == cdn_push.EXIT_OK


# -- the loop itself, turned by hand: a fake clock, a fake observer, no sleeps -------------------------

class FakeObserver:
    def __init__(self):
        self.alive = True
        self.started = 0

    def schedule(self, handler, path, recursive):
        self.handler = handler

    def start(self):
        self.started += 1
        self.alive = True

    def stop(self):
        self.alive = False

    def join(self, timeout=None):
        pass

    def is_alive(self):
        return self.alive


class Event:
    def __init__(self, event_type, src_path, is_directory=False, dest_path=""):
        self.event_type, self.src_path, self.is_directory, self.dest_path = (event_type, str(src_path),
                                                                             is_directory, str(dest_path))


@pytest.fixture
def loop(drop, make_config):
    made = []

    def make(tuning=cdn_push.Tuning(), open_files=None, **sections):
        sections.setdefault("scan", {"settle_seconds": 30, "rescan_interval": 3600})
        config = make_config(**sections)
        ledger = Ledger.open(config.ledger)
        client, observer = FakeCdnClient(), FakeObserver()
        clock, wall = Clock(1000.0), Clock(time.time())
        service = WatchService(config, ledger, stop=threading.Event(), observer_factory=lambda p, i: observer,
                               clock=clock, wall=wall, tuning=tuning, client_factory=lambda c: client,
                               open_files=open_files or FakeOpenFiles(complete=False))
        service.start_watching()
        service.start_pass()
        made.append(service)
        turn(service, lambda: service.passes_done == 1, "the first pass")
        return service, client, clock, wall, observer

    yield make
    for service in made:
        service.pipeline.halt()
        service.ledger.close()


def turn(service, predicate, what, turns=500):
    """Turn the loop until `predicate`; the only waiting is for the submit worker threads."""
    for _ in range(turns):
        if predicate():
            return
        service.iteration(tick=0.01)
        service.pipeline.check_invariants()
    raise AssertionError(f"{what} did not happen in {turns} turns")


def write_now(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


def test_loop_close_after_write_goes_after_the_grace_not_before(drop, loop):
    service, client, clock, wall, _ = loop()
    write_now(drop / "a.mp4", b"a")
    for kind in ("created", "modified", "closed"):
        service.collector.on_any_event(Event(kind, drop / "a.mp4"))
    service.iteration(tick=0)                      # first look: size and mtime noted
    clock.advance(service.tuning.close_grace / 2)
    service.iteration(tick=0)
    assert "a.mp4" in service.settler.candidates and client.sent == []
    clock.advance(service.tuning.close_grace)
    turn(service, lambda: client.sent == ["a.mp4"], "a.mp4 sent")


@pytest.mark.parametrize("events, fast", [
    (("created", "modified", "closed"), True),
    (("created", "modified", "closed", "modified"), True),          # chmod/touch after the close
    (("created", "modified", "closed", "opened", "modified"), False),   # opened again: wait for it
    (("created", "modified"), False),                                # no close: settle_seconds
    (("moved",), True),                                              # renamed into place
])
def test_loop_settling_by_events_where_writers_cannot_be_seen(drop, loop, events, fast):
    service, client, clock, wall, _ = loop()
    write_now(drop / "b.mp4", b"b")
    for kind in events:
        dest = drop / "b.mp4" if kind == "moved" else ""
        service.collector.on_any_event(Event(kind, drop / (".b.tmp" if kind == "moved" else "b.mp4"),
                                             dest_path=dest))
    service.iteration(tick=0)
    clock.advance(service.tuning.close_grace + 0.01)
    service.iteration(tick=0)
    assert ("b.mp4" not in service.settler.candidates) is fast
    if not fast:
        clock.advance(30)
        wall.advance(31)                              # the file is older than settle_seconds now too
        service.iteration(tick=0)
        assert "b.mp4" not in service.settler.candidates
    turn(service, lambda: client.sent == ["b.mp4"], "b.mp4 sent")


def test_loop_rescans_when_due_and_after_the_watcher_died(drop, loop):
    service, client, clock, wall, observer = loop(scan={"settle_seconds": 30, "rescan_interval": 100})
    assert 90 <= service.next_rescan - clock() <= 110
    write_now(drop / "quiet.mp4", b"no event for this one")
    wall.advance(60)
    clock.advance(111)
    turn(service, lambda: client.sent == ["quiet.mp4"], "the rescan")
    assert service.passes == 2
    observer.alive = False
    write_now(drop / "missed.mp4", b"missed")
    wall.advance(60)
    turn(service, lambda: "missed.mp4" in client.sent, "the rescan after a restart")
    assert observer.started == 2 and service.passes == 3


def test_loop_a_rescan_asked_during_a_pass_runs_after_it(drop, loop):
    service, client, clock, wall, _ = loop(tuning=cdn_push.Tuning(scan_slice=0.0))
    write_files(drop, {f"d{i}/f.mp4": b"%d" % i for i in range(20)})
    service.start_pass()
    service.iteration(tick=0)
    assert service.pipeline.scanning
    service.rescan_now.set()
    service.iteration(tick=0)
    assert service.rescan_after_pass and service.passes == 2
    turn(service, lambda: service.passes == 3, "the second rescan")
    turn(service, lambda: len(client.sent) == 20, "all sent once")
    assert sorted(client.sent) == sorted(f"d{i}/f.mp4" for i in range(20))


# -- streaming end to end: fresh drops overtake the backlog, confirmations during a pass ---------------

def test_a_drop_during_a_long_backlog_is_imported_first(drop, emulator, watch):
    write_files(drop, {f"backlog/{i:02}.mp4": b"b%d" % i for i in range(40)})
    emulator.answer_delay = 0.3          # the backlog takes 12 s: plenty of room to overtake it
    watch(workers={"hash": 1, "submit": 1}, wait_for_first_pass=False)
    wait_for(lambda: len(emulator.requests) >= 3, what="the backlog under way")
    (drop / "urgent.mp4").write_bytes(b"an editor's upload")
    wait_for(lambda: "urgent.mp4" in names(emulator), what="urgent.mp4 submitted")
    position = names(emulator).index("urgent.mp4")
    assert position < 12 and len(emulator.requests) < 40


def test_callbacks_confirm_files_while_the_first_pass_still_submits(drop, emulator, watch):
    from conftest import free_port
    write_files(drop, {f"f{i:02}.mp4": os.urandom(2000) for i in range(30)})
    emulator.answer_delay = 0.1
    port = free_port()
    running = watch(workers={"hash": 1, "submit": 1}, wait_for_first_pass=False,
                    origin={"serve": {"listen": f"127.0.0.1:{port}", "public_url": f"http://127.0.0.1:{port}"}})

    def confirmed():
        with Ledger.open(running.ledger.path) as ledger:
            return ledger.counts()["confirmed"]

    wait_for(lambda: confirmed() >= 3, what="confirmations")
    assert len(emulator.requests) < 30          # the pass is still sending
    wait_for(lambda: confirmed() == 30, timeout=60, what="every file confirmed")
    assert running.close() == cdn_push.EXIT_OK


def test_reload_command_waits_for_the_outcome(tmp_path, drop, emulator, write_config, raw_config):
    config = write_config(scan={"settle_seconds": 1})
    process = start_watch(config)
    try:
        wait_for(lambda: Path(raw_config["ledger"] + ".lock").exists()
                 and Path(raw_config["ledger"] + ".lock").read_text().strip().isdigit(), what="the lock")
        reload = lambda: subprocess.run([sys.executable, str(ROOT / "cdn_push.py"), "reload", "--config",
                                         str(config)], capture_output=True, text=True, timeout=60)
        config.write_text(yaml.safe_dump({**raw_config, "name_prefix": "v2/", "scan": {"settle_seconds": 1}}))
        done = reload()
        assert done.returncode == 0, done.stderr
        assert "configuration reloaded" in done.stdout and "name_prefix changed" in done.stdout, done.stdout
        config.write_text(yaml.safe_dump({**raw_config, "ledger": str(tmp_path / "other.sqlite3")}))
        done = reload()
        assert done.returncode == cdn_push.EXIT_NO_SERVICE and "restart the service instead" in done.stderr
        config.write_text("folder: [broken\n")
        done = reload()
        assert done.returncode == cdn_push.EXIT_USAGE and "line 2" in done.stderr
        assert process.poll() is None
        write_files(drop, {"after.mp4": b"after reloads"})
        wait_for(lambda: "v2/after.mp4" in names(emulator), what="the reloaded name_prefix in use")
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err


# -- reload as a transaction, and the folder watcher's health ------------------------------------------

def config_leaves(keys, prefix=""):
    for key, inner in keys.items():
        if isinstance(inner, dict):
            yield from config_leaves(inner, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def test_every_config_key_says_what_a_reload_does_with_it():
    unclassified = [key for key in config_leaves(cdn_push.CONFIG_KEYS) if cdn_push.on_reload(key) is None]
    assert not unclassified
    restart = {key for key in config_leaves(cdn_push.CONFIG_KEYS) if cdn_push.on_reload(key) == "restart"}
    assert {key for key in restart if not any(key == k or key.startswith(k + ".") for k in cdn_push.RESTART_ONLY)} \
        == set()
    assert all(cdn_push.on_reload(key) == "restart" for key in cdn_push.RESTART_ONLY)


@pytest.mark.parametrize("change, refused", [
    ({"folder": "missing"}, "does not exist"),
    ({"workers": {"hash": 1, "submit": 1}}, "'workers.hash' cannot change while running"),
    ({"monitor": {"listen": "127.0.0.1:9"}}, "'monitor' cannot change while running"),
])
def test_a_reload_the_service_cannot_apply_changes_nothing_and_says_why(tmp_path, drop, emulator, raw_config,
                                                                        watch, change, refused):
    path = tmp_path / "config.yaml"
    changed = {**raw_config, **change}
    if "folder" in change:
        changed["folder"] = str(tmp_path / "missing")
    path.write_text(yaml.safe_dump({**changed, "name_prefix": "changed/"}))
    running = watch(service_kwargs={"load": lambda: cdn_push.load_config(path, {})[0]})
    turns = running.service.turns
    running.reload.set()
    wait_for(lambda: not running.reload.is_set() and running.service.turns > turns + 1, what="the reload")
    record = running.service.reloads.read()
    assert record["ok"] is False and refused in record["message"], record
    assert running.thread.is_alive() and running.service.config.name_prefix == ""
    write_files(drop, {"after.mp4": b"after"}, age=0)
    wait_for(lambda: "after.mp4" in names(emulator), what="a drop imported under the running settings")


def test_a_folder_moved_away_and_made_anew_is_watched_again_and_looked_at(tmp_path, drop, emulator, watch):
    running = watch()
    watched_before = running.service.watched
    os.rename(drop, tmp_path / "moved-away")
    wait_for(lambda: running.service.activity.snapshot()["watching"] is False, what="the watcher lost")
    drop.mkdir()
    (drop / "new.mp4").write_bytes(b"dropped into the new folder")
    wait_for(lambda: "new.mp4" in names(emulator), timeout=30, what="new.mp4 imported without the hourly rescan")
    assert running.service.activity.snapshot()["watching"] is True and running.service.watched != watched_before
    (drop / "later.mp4").write_bytes(b"and the events flow again")
    wait_for(lambda: "later.mp4" in names(emulator), what="later.mp4 imported from its events")


def test_loop_a_replaced_or_missing_folder_is_noticed_and_watched_again_with_back_off(tmp_path, drop, loop):
    service, client, clock, wall, observer = loop()
    assert service.watcher_trouble() == ""
    (tmp_path / "new").mkdir()
    os.rename(drop, tmp_path / "old")                 # no loop turn in between: only the inode tells
    os.rename(tmp_path / "new", drop)
    assert "replaced" in service.watcher_trouble()
    service.iteration(tick=0)
    assert observer.started == 2 and service.watcher_trouble() == "" and service.passes == 2
    os.rename(drop, tmp_path / "gone")
    service.iteration(tick=0)
    assert service.activity.snapshot()["watching"] is False and service.observer is None
    service.iteration(tick=0)                         # retried at once, and failed: the next try waits
    assert service.next_watch_try - clock() == pytest.approx(1.0)
    clock.advance(1.1)
    service.iteration(tick=0)                         # failed again: twice as long
    assert service.next_watch_try - clock() == pytest.approx(2.0)
    drop.mkdir()
    service.iteration(tick=0)
    assert service.observer is None                   # backing off, not spinning
    clock.advance(2.5)
    service.iteration(tick=0)
    assert service.activity.snapshot()["watching"] is True and observer.started == 3 and service.passes == 3


@pytest.mark.parametrize("events", [("created",), ("created", "modified"), ("moved",), ()])
def test_loop_a_file_no_process_writes_is_taken_after_the_close_grace_whatever_the_event(drop, loop, events):
    service, client, clock, wall, _ = loop(open_files=FakeOpenFiles(complete=True))
    write_now(drop / "mv.mp4", b"moved in complete")
    service.settler.still_writing("mv.mp4") if not events else None
    for kind in events:
        service.collector.on_any_event(Event(kind, drop / "mv.mp4", dest_path=drop / "mv.mp4"))
    service.iteration(tick=0)
    assert "mv.mp4" in service.settler.candidates
    clock.advance(service.tuning.close_grace + 0.01)
    turn(service, lambda: client.sent == ["mv.mp4"], "mv.mp4 sent within the close grace")


def test_loop_a_file_a_writer_holds_open_is_never_taken_however_long_it_pauses(drop, loop):
    open_files = FakeOpenFiles(complete=True)
    service, client, clock, wall, _ = loop(open_files=open_files)
    write_now(drop / "slow.mp4", b"first half")
    open_files.inodes.add((drop / "slow.mp4").stat().st_ino)
    for kind in ("created", "modified", "closed"):     # even a close event: another descriptor is open
        service.collector.on_any_event(Event(kind, drop / "slow.mp4"))
    for _ in range(3):
        service.iteration(tick=0)
        clock.advance(60)
        wall.advance(60)                                 # far past settle_seconds (30)
    assert "slow.mp4" in service.settler.candidates and client.sent == []
    with open(drop / "slow.mp4", "ab") as handle:
        handle.write(b" and the second half")
    open_files.inodes.clear()                            # the writer closed it
    service.iteration(tick=0)
    clock.advance(service.tuning.close_grace + 0.01)
    turn(service, lambda: client.sent == ["slow.mp4"], "slow.mp4 sent once, whole")
    assert int(client.requests[0]["size"]) == len(b"first half and the second half")


def test_open_files_sees_a_file_this_process_holds_open_for_writing(tmp_path):
    path = tmp_path / "being-written.mp4"
    open_files = cdn_push.OpenFiles(max_age=0)
    with open(path, "wb") as handle:
        handle.write(b"x")
        handle.flush()
        assert path.stat().st_ino in open_files.writers(tmp_path)
        assert path.stat().st_ino not in open_files.writers(tmp_path / "elsewhere")   # only below the folder
    with open(path, "rb"):
        assert path.stat().st_ino not in open_files.writers(tmp_path)       # read-only does not count
    assert path.stat().st_ino not in open_files.writers(tmp_path)


def test_a_writer_that_pauses_past_settle_seconds_is_imported_once_at_its_final_size(drop, emulator, watch):
    running = watch()                                    # settle_seconds 1
    writer = open(drop / "paused.mp4", "wb")
    try:
        writer.write(b"a" * 100_000)
        writer.flush()
        time.sleep(2.5)                                  # the pause is what is tested: past settle_seconds
        turns = running.service.turns
        wait_for(lambda: running.service.turns >= turns + 5, what="a few more turns of the loop")
        assert "paused.mp4" not in names(emulator)       # still open for writing: not taken
        assert "paused.mp4" in running.service.settler.candidates
        writer.write(b"b" * 100_000)
    finally:
        writer.close()
    wait_for(lambda: "paused.mp4" in names(emulator), what="paused.mp4 submitted after its close")
    running.wait_idle()
    sent = [r for r in emulator.requests if r["name"] == "paused.mp4"]
    assert [int(r["size"]) for r in sent] == [200_000]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: only root sees every writer; other users wait "
                    "settle_seconds for a moved-in file (docs/internals.md)")
def test_mv_of_a_complete_file_is_taken_within_the_close_grace_not_settle_seconds(tmp_path, drop, emulator, watch):
    running = watch(scan={"settle_seconds": 30, "rescan_interval": 3600})
    outside = tmp_path / "outside.mp4"
    outside.write_bytes(b"copied elsewhere, complete")
    started = time.monotonic()
    os.rename(outside, drop / "moved-in.mp4")
    wait_for(lambda: "moved-in.mp4" in names(emulator), timeout=10, what="moved-in.mp4 submitted")
    assert time.monotonic() - started < 10 < running.service.config.scan.settle_seconds
