"""The monitor (issue 11): status page, /metrics and /status.json of a running service, end to end.

Real services on 127.0.0.1 fed by the emulator, scraped over HTTP and parsed with prometheus_client's
own parser, checked against the ledger and the emulator's record; and a real headless Chromium
that loads the page (skipped, with the reason, where the Debian package `chromium` is missing).
"""

from __future__ import annotations

import hashlib
import html
import http.client
import json
import os
import re
import select
import shutil
import socket
import struct
import subprocess
import time
import zlib
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import pytest
from prometheus_client.parser import text_string_to_metric_families

import cdn_push
from cdn_emulator import CdnEmulator
from cdn_push import Ledger
from conftest import API_LOGIN, API_PASSWORD, ORIGIN_PASSWORD, ROOT, free_port, start_cdn_push, write_files
from fakes import Clock
from test_hardening import read_responses
from test_watch import names, wait_for, watch  # noqa: F401 - `watch` is a fixture used below

HOSTILE = "<img src=x onerror=alert(1)>.mp4"
ESCAPED_HOSTILE = "&lt;img src=x onerror=alert(1)&gt;.mp4"
NEWLINE_ANSI = "line one\nline two \x1b[31mred\x1b[0m.mp4"
STATES = ("pending", "submitted", "confirmed", "rejected", "failed")
OUTCOMES = ("accepted", "exists", "rejected", "retried", "failed")


# -- helpers --------------------------------------------------------------------------------------

def request(port: int, path: str, method: str = "GET", timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """One request to the monitor over a fresh connection (http.client: no proxy settings apply)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        headers = {key.lower(): value for key, value in response.getheaders()}
        return response.status, headers, response.read()
    finally:
        connection.close()


def status_json(port: int) -> dict[str, Any]:
    code, headers, body = request(port, "/status.json")
    assert code == 200 and headers["content-type"].startswith("application/json"), (code, headers)
    return json.loads(body)


def page(port: int) -> str:
    code, headers, body = request(port, "/")
    assert code == 200 and headers["content-type"].startswith("text/html"), (code, headers)
    return body.decode("utf-8")


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of /metrics, by (sample name, labels)."""
    code, headers, body = request(port, "/metrics")
    assert code == 200, code
    samples = {}
    for family in text_string_to_metric_families(body.decode("utf-8")):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def metric(samples: dict, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    if key not in samples:
        known = sorted({n for n, _ in samples if n.startswith(name)})
        raise KeyError(f"no sample {name}{labels or ''} (found {known})")
    return samples[key]


def gauge_is(port: int, name: str, value: float, **labels: str) -> None:
    found = metric(scrape(port), name, **labels)
    assert found == value, f"{name}{labels or ''} is {found}, not {value}"


def eventually(check: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Call `check` until it stops failing; at the deadline its last failure is the test's."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except (AssertionError, KeyError, OSError) as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}: {exc}") from exc
        time.sleep(0.05)


def ledger_facts(path: str) -> tuple[dict[str, int], dict[str, int]]:
    """(files per state, bytes per state) as the ledger records them, read on a connection of our own."""
    sizes = dict.fromkeys(STATES, 0)
    with Ledger.open(path) as ledger:
        counts = ledger.counts()
        for row in ledger.all_rows():
            sizes[row.state] += row.size
    return counts, sizes


def assert_gauges_match_ledger(samples: dict, path: str) -> None:
    counts, sizes = ledger_facts(path)
    shown = {state: metric(samples, "cdn_push_files", state=state) for state in STATES}
    assert shown == {state: float(counts[state]) for state in STATES}
    shown = {state: metric(samples, "cdn_push_bytes", state=state) for state in STATES}
    assert shown == {state: float(sizes[state]) for state in STATES}


def reject_names(emulator: CdnEmulator, pick: Callable[[str], bool], message: str, status: int = 400) -> None:
    """The emulator answers the names `pick` chooses with `status` and `message`, as a CDN refusing a
    codec (400) or in trouble with one file (500) would: a reason of our choosing to look for."""
    original = emulator.file_add

    def file_add(params: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if pick(params.get("name", "")):
            return status, {"status": "error", "message": message}
        return original(params)

    emulator.file_add = file_add


def serve_origin() -> dict[str, Any]:
    """The built-in origin on a free port: signed links, callbacks, files end `confirmed`."""
    port = free_port()
    return {"serve": {"listen": f"127.0.0.1:{port}", "public_url": f"http://127.0.0.1:{port}"}}


def listening_ports(pid: int) -> set[int]:
    """TCP ports a process listens on, from /proc: the sockets among its file descriptors in LISTEN."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:      # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


@pytest.fixture
def monitored(watch):
    """watch(...) with the monitor on a free port of 127.0.0.1; returns (running, port)."""

    def start(**sections: Any) -> tuple[Any, int]:
        sections.setdefault("monitor", {"listen": f"127.0.0.1:{free_port()}"})
        running = watch(**sections)
        return running, running.service.monitor.port

    return start


# -- configuration -----------------------------------------------------------------------------------

@pytest.mark.parametrize("listen", ["0.0.0.0:8765", ":8765", "192.0.2.10:8765", "[::]:8765"])
def test_a_remote_listen_needs_allow_remote(capsys, make_config, write_config, listen):
    with pytest.raises(cdn_push.ConfigError) as caught:
        make_config(monitor={"listen": listen})
    assert "monitor.listen" in str(caught.value) and "monitor.allow_remote" in str(caught.value)
    code = cdn_push.main(["--config", str(write_config(monitor={"listen": listen})), "--dry-run"])
    err = capsys.readouterr().err
    assert code == cdn_push.EXIT_USAGE, err
    assert "monitor.listen" in err and "monitor.allow_remote" in err
    make_config(monitor={"listen": listen, "allow_remote": True})        # said on purpose: accepted


@pytest.mark.parametrize("listen, host, port", [("127.0.0.1:8765", "127.0.0.1", 8765),
                                                  ("127.0.0.2:9000", "127.0.0.2", 9000), (None, None, 8765)])
def test_a_loopback_listen_is_taken_as_written_without_allow_remote(make_config, listen, host, port):
    monitor = make_config(monitor={"listen": listen, "allow_remote": False}).monitor
    assert (monitor.listen_host, monitor.listen_port, monitor.chosen) == (host, port, True)


def test_watch_serves_the_monitor_on_127_0_0_1_8765_by_default(drop, emulator, watch):
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", 8765))
        except OSError:
            pytest.skip("127.0.0.1:8765 is in use on this machine, so the default cannot be tried")
    running = watch(monitor={})          # the key left out: the default (conftest turns it off)
    assert running.service.monitor.port == 8765
    assert status_json(8765)["mode"] == "watch"


def test_listen_null_turns_the_monitor_off(drop, emulator, watch):
    running = watch(monitor={"listen": None})
    assert getattr(running.service, "monitor", None) is None


def test_a_one_shot_run_serves_the_monitor_only_when_listen_is_set(drop, emulator, write_config):
    write_files(drop, {f"f{i:02}.mp4": b"file %d" % i for i in range(16)})
    emulator.hold_answers()                           # the run waits on its first answer: time to look
    port = free_port()
    process = start_cdn_push("run", "--config", str(write_config(workers={"hash": 1, "submit": 1},
                                                                  monitor={"listen": f"127.0.0.1:{port}"})))
    try:
        status = eventually(lambda: status_json(port), timeout=30, what="the run's monitor")
        assert status["mode"] == "run"
        assert metric(scrape(port), "cdn_push_build_info", version=cdn_push.__version__) == 1
    finally:
        emulator.release_answers()
        out, err = process.communicate(timeout=60)
    assert process.returncode == cdn_push.EXIT_OK, err
    with pytest.raises(OSError):                      # gone with the run
        request(port, "/status.json", timeout=2)

    # The same run without monitor.listen listens on nothing at all.
    config = write_config(workers={"hash": 1, "submit": 1}, ledger=str(drop.parent / "second.sqlite3"))
    emulator.hold_answers()
    process = start_cdn_push("run", "--config", str(config))
    try:
        wait_for(lambda: emulator.held_answers() == 1, timeout=30, what="the second run under way")
        assert process.poll() is None, "the run ended before it could be looked at"
        assert listening_ports(process.pid) == set()
    finally:
        emulator.release_answers()
        out, err = process.communicate(timeout=60)
    assert process.returncode == cdn_push.EXIT_OK, err


# -- metrics ------------------------------------------------------------------------------------------

def test_metrics_match_the_ledger_and_the_emulator_and_again_after_a_restart(drop, emulator, monitored):
    files = {f"a{i}.mp4": os.urandom(1000 + 111 * i) for i in range(5)}
    write_files(drop, files)
    write_files(drop, {"young.mp4": b"just written"}, age=0)
    # Held open for writing, it waits whatever the service can see: where every writer can be seen
    # (root, and no process of another user at that moment) a closed young file would go at once.
    writer = open(drop / "young.mp4", "ab")                          # noqa: SIM115 - closed below
    emulator.hold()                       # no downloads: the seeded file below stays in the CDN as is
    first = files["a0.mp4"]
    emulator.file_add({"location": "http://127.0.0.1:9/a0.mp4", "name": "a0.mp4", "size": str(len(first)),
                       "chksum": hashlib.sha256(first).hexdigest()})     # so a0.mp4 is answered "exists"
    emulator.inject("503")                                              # and one request is retried
    started = time.time()
    running, port = monitored(scan={"settle_seconds": 60, "rescan_interval": 3600})
    wait_for(lambda: len(emulator.requests) == 1 + 5, what="every settled file sent")     # 1: the seed

    def steady() -> dict:
        samples = scrape(port)
        assert_gauges_match_ledger(samples, running.ledger.path)
        assert metric(samples, "cdn_push_files", state="waiting") == 1
        assert metric(samples, "cdn_push_files", state="submitted") == 5
        # The monitor shares one document for up to a second: counters may trail the emulator that long.
        outcomes = {outcome: metric(samples, "cdn_push_requests_total", outcome=outcome) for outcome in OUTCOMES}
        assert outcomes == {"accepted": emulator.answers.count(200), "exists": emulator.answers.count(409),
                            "rejected": 0, "retried": emulator.answers.count(503), "failed": 0}
        # The stage gauges are observed once a loop step: they may trail the counters by a step.
        assert metric(samples, "cdn_push_queue_files", stage="submit") == 0
        return samples, outcomes

    samples, outcomes = eventually(steady, what="gauges equal to the ledger, counters to the emulator")
    assert outcomes["accepted"] == 4 and outcomes["exists"] == 1 and outcomes["retried"] == 1
    assert metric(samples, "cdn_push_hashed_bytes_total") == sum(len(v) for v in files.values())
    assert metric(samples, "cdn_push_cdn_up") == 1
    assert metric(samples, "cdn_push_pass_running") == 0
    assert started <= metric(samples, "cdn_push_last_pass_end_timestamp_seconds") <= time.time()
    assert metric(samples, "cdn_push_build_info", version=cdn_push.__version__) == 1
    for stage in ("hash", "submit", "confirm"):
        assert metric(samples, "cdn_push_queue_files", stage=stage) >= 0
    assert metric(samples, "cdn_push_queue_files", stage="hash") == 0
    assert metric(samples, "cdn_push_queue_files", stage="submit") == 0
    for status in ("success", "fail"):
        assert metric(samples, "cdn_push_callbacks_total", status=status) == 0

    # A restarted service knows the ledger's numbers from its first scrape, before any pass ends.
    assert running.close() == cdn_push.EXIT_OK
    writer.close()
    again, port = monitored(scan={"settle_seconds": 60, "rescan_interval": 3600}, wait_for_first_pass=False)
    samples = scrape(port)
    assert_gauges_match_ledger(samples, again.ledger.path)
    assert metric(samples, "cdn_push_files", state="submitted") == 5
    assert metric(samples, "cdn_push_requests_total", outcome="accepted") == 0       # counters start over

    def young_file_counted() -> None:      # waiting, or sent once the service saw that no writer holds it
        samples = scrape(port)
        assert metric(samples, "cdn_push_files", state="waiting") + metric(
            samples, "cdn_push_files", state="submitted") == 6

    eventually(young_file_counted, what="young.mp4 counted as waiting or sent")


def test_confirmations_failures_and_the_confirm_queue(drop, emulator, monitored):
    write_files(drop, {f"c{i}.mp4": os.urandom(3000) for i in range(3)})
    emulator.hold()
    running, port = monitored(origin=serve_origin(), callback={"retry_delay": 0.2})
    wait_for(lambda: len(emulator.requests) == 3, what="three imports requested")

    def waiting_for_the_cdn() -> None:
        samples = scrape(port)
        assert metric(samples, "cdn_push_files", state="submitted") == 3
        assert metric(samples, "cdn_push_queue_files", stage="confirm") == 3
        assert metric(samples, "cdn_push_callbacks_total", status="success") == 0

    eventually(waiting_for_the_cdn, what="three files awaiting confirmation")
    emulator.fetch_faults.append("404 error")             # the first fetch fails: one callback status=fail
    emulator.release()

    def all_confirmed() -> dict:
        samples = scrape(port)
        assert_gauges_match_ledger(samples, running.ledger.path)
        assert metric(samples, "cdn_push_files", state="confirmed") == 3
        assert metric(samples, "cdn_push_queue_files", stage="confirm") == 0
        return samples

    samples = eventually(all_confirmed, timeout=30, what="every file confirmed")
    assert metric(samples, "cdn_push_callbacks_total", status="success") == 3
    assert metric(samples, "cdn_push_callbacks_total", status="fail") == 1
    assert metric(samples, "cdn_push_requests_total", outcome="accepted") == emulator.answers.count(200) == 4
    chart = status_json(port)["chart"]
    assert sum(chart["imports"]) == 4 and sum(chart["confirmations"]) == 3


def test_cdn_up_is_0_while_the_api_is_unreachable_and_1_when_it_is_back(drop, raw_config, monitored):
    api_port = free_port()                                  # nothing listens there yet
    write_files(drop, {"a.mp4": b"waits for the CDN"})
    before = time.time()
    running, port = monitored(api={**raw_config["api"], "url": f"http://127.0.0.1:{api_port}/api2"},
                              wait_for_first_pass=False,
                              service_kwargs={"tuning": cdn_push.Tuning(cdn_retry_pause=0.5)})

    def down() -> dict:
        assert metric(scrape(port), "cdn_push_cdn_up") == 0
        cdn = status_json(port)["activity"]["cdn"]
        assert cdn["up"] is False and cdn["problem"] == "unreachable", cdn
        return cdn

    cdn = eventually(down, what="the CDN reported unreachable")
    assert before <= cdn["since"] <= time.time() and cdn["next_try_at"] >= cdn["since"]
    assert "reach" in html.unescape(page(port)).lower()
    emulator = CdnEmulator(login=API_LOGIN, password=API_PASSWORD, port=api_port).start()
    try:
        eventually(lambda: gauge_is(port, "cdn_push_cdn_up", 1), what="the CDN back up")
        wait_for(lambda: names(emulator) == ["a.mp4"], what="a.mp4 sent once the CDN is back")
        cdn = status_json(port)["activity"]["cdn"]
        assert cdn["up"] is True and cdn["problem"] is None
    finally:
        emulator.stop()


def test_refused_credentials_show_and_cdn_up_is_0(drop, make_config):
    """The service stops at once on refused credentials (exit 4: systemd must not retry a failed login
    every 10 s), so what the monitor shows of it is tried on the monitor itself."""
    config = make_config(monitor={"listen": f"127.0.0.1:{free_port()}"})
    activity = cdn_push.Activity()
    activity.mode = "watch"
    activity.cdn_down("credentials refused", None)
    server = cdn_push.MonitorServer(config, activity).start()
    try:
        assert metric(scrape(server.port), "cdn_push_cdn_up") == 0
        assert status_json(server.port)["activity"]["cdn"]["problem"] == "credentials refused"
        assert "credentials" in page(server.port).lower()
    finally:
        server.stop()


# -- /status.json -----------------------------------------------------------------------------------

def test_status_json_has_every_field(drop, emulator, monitored):
    files = {"one.mp4": b"1" * 1000, "sub/two.mp4": b"2" * 2000}
    write_files(drop, files)
    started = time.time()
    running, port = monitored()
    wait_for(lambda: len(emulator.requests) == 2, what="both files sent")
    status = eventually(lambda: _settled(status_json(port)), what="the status settled")
    assert status["version"] == cdn_push.__version__
    assert started <= status["generated_at"] <= time.time() + 1
    assert (status["mode"], status["folder"], status["cdn"]) == ("watch", str(drop), emulator.api_url)
    activity = status["activity"]
    assert activity["doing"] in ("watching", "idle")
    assert set(activity["pass"]) >= {"running", "number", "files_hashed", "bytes_hashed", "started_at"}
    assert activity["pass"]["running"] is False and activity["pass"]["number"] >= 1
    assert set(activity["cdn"]) >= {"up", "problem", "since", "next_try_at"}
    assert activity["cdn"] == {**activity["cdn"], "up": True, "problem": None}
    assert started <= activity["last_pass_end"] <= time.time()
    assert {state: status["counts"][state] for state in (*STATES, "waiting")} == {
        **dict.fromkeys(STATES, 0), "submitted": 2, "waiting": 0}
    assert status["bytes"]["submitted"] == 3000 and set(status["bytes"]) >= set(STATES)
    assert set(status["queues"]) >= {"hash", "submit", "confirm"}
    assert all(isinstance(v, int) and v >= 0 for v in status["queues"].values())
    assert set(status["rates"]) >= {"hashed_bytes_per_second", "imports_per_minute"}
    assert status["now"] == {**status["now"], "hashing": [], "sending": []}
    chart = status["chart"]
    assert [len(chart[k]) for k in ("minute_starts", "imports", "confirmations")] == [60, 60, 60]
    assert all(b - a == 60 for a, b in zip(chart["minute_starts"], chart["minute_starts"][1:]))
    assert chart["minute_starts"][-1] <= time.time() < chart["minute_starts"][-1] + 60 + 1
    assert sum(chart["imports"]) == 2 and sum(chart["confirmations"]) == 0
    recent = status["recent"]
    assert sorted(item["path"] for item in recent) == sorted(files)
    for item in recent:
        assert set(item) >= {"time", "path", "name", "size", "state"}
        assert item["state"] == "submitted" and item["size"] == len(files[item["path"]])
        assert item["name"] == item["path"] and started <= item["time"] <= time.time()
    assert [item["time"] for item in recent] == sorted((item["time"] for item in recent), reverse=True)
    assert status["problems"] == []


def _settled(status: dict) -> dict:
    # The ledger and the pipeline's activity are read one after the other, so for a moment after an
    # answer is recorded the file may still be listed as being sent: wait for both to agree.
    assert status["counts"]["submitted"] == 2 and not status["activity"]["pass"]["running"], status["counts"]
    assert status["now"]["sending"] == [], status["now"]
    return status


def test_recent_imports_show_the_state_the_ledger_records(drop, emulator, monitored):
    """One file accepted, one the CDN already holds ("exists": submitted, not yet confirmed), one that
    runs out of retries (failed): the page's table must say what `status` says."""
    files = {"new.mp4": b"new", "held.mp4": b"already in the CDN", "unlucky.mp4": b"five 500s"}
    write_files(drop, files)
    emulator.hold()
    emulator.file_add({"location": "http://127.0.0.1:9/held.mp4", "name": "held.mp4",
                       "size": str(len(files["held.mp4"])), "chksum": hashlib.sha256(files["held.mp4"]).hexdigest()})
    reject_names(emulator, lambda name: name == "unlucky.mp4", "storage node down", status=500)
    running, port = monitored()

    def recorded() -> dict:
        status = status_json(port)
        assert sum(status["counts"][s] for s in ("submitted", "failed")) == 3, status["counts"]
        assert status["counts"]["failed"] == 1 and status["now"]["sending"] == [], status
        return status

    status = eventually(recorded, what="three answers recorded")
    with Ledger.open(running.ledger.path) as ledger:
        in_ledger = {row.path: row.state for row in ledger.all_rows()}
    newest = {}
    for item in status["recent"]:                       # newest first: keep each path's first entry
        newest.setdefault(item["path"], item["state"])
    assert newest == in_ledger
    failed = [p for p in status["problems"] if p["state"] == "failed"]
    assert in_ledger == {"new.mp4": "submitted", "held.mp4": "submitted", "unlucky.mp4": "failed"}
    assert len(failed) == 1 and failed[0]["path"] == "unlucky.mp4" and "storage node down" in failed[0]["reason"]
    samples = scrape(port)
    assert metric(samples, "cdn_push_requests_total", outcome="failed") == 1
    assert metric(samples, "cdn_push_requests_total", outcome="exists") == 1


def test_recent_keeps_the_newest_50(drop, emulator, monitored):
    running, port = monitored()
    write_files(drop, {f"n{i:03}.mp4": b"%d" % i for i in range(60)})
    wait_for(lambda: len(emulator.requests) == 60, timeout=40, what="sixty files sent")
    recent = eventually(lambda: _fifty(status_json(port)["recent"]), what="fifty recent imports")
    assert [item["time"] for item in recent] == sorted((item["time"] for item in recent), reverse=True)
    assert {item["path"] for item in recent} <= {f"n{i:03}.mp4" for i in range(60)}


def _fifty(recent: list) -> list:
    assert len(recent) == 50, len(recent)
    return recent


# -- hostile names, rejections, secrets -----------------------------------------------------------

def test_hostile_names_are_text_on_the_page_and_plain_strings_in_json(drop, emulator, monitored):
    write_files(drop, {HOSTILE: b"hostile", NEWLINE_ANSI: b"ansi", "plain.mp4": b"plain"})
    running, port = monitored()

    def listed() -> dict:
        status = status_json(port)
        shown = {item["path"] for item in status["recent"]} | {item["path"] for item in status["problems"]}
        assert {HOSTILE, NEWLINE_ANSI, "plain.mp4"} <= shown, shown
        return status

    eventually(listed, what="both hostile names listed in status.json, unaltered")
    text = page(port)
    assert "<img" not in text and HOSTILE not in text
    assert ESCAPED_HOSTILE in text
    assert "\x1b" not in text and "line two" in text
    _, _, body = request(port, "/status.json")
    assert b"&lt;" not in body and b"\x1b" not in body and b"\\u001b" in body
    _, _, metrics = request(port, "/metrics")
    assert b"\x1b" not in metrics and b"<img" not in metrics


def test_a_rejected_file_is_a_problem_with_the_cdns_reason(drop, emulator, monitored):
    write_files(drop, {"a.mp4": b"a", "b.mp4": b"b"})
    running, port = monitored(name_prefix="bad//")           # the emulator refuses names with //

    def rejected() -> dict:
        status = status_json(port)
        assert status["counts"]["rejected"] == 2, status["counts"]
        return status

    status = eventually(rejected, what="both files rejected")
    problems = sorted(status["problems"], key=lambda p: p["path"])
    assert [(p["path"], p["state"]) for p in problems] == [("a.mp4", "rejected"), ("b.mp4", "rejected")]
    assert all("invalid name" in p["reason"] and isinstance(p["time"], (int, float)) for p in problems)
    samples = scrape(port)
    assert metric(samples, "cdn_push_files", state="rejected") == 2
    assert metric(samples, "cdn_push_requests_total", outcome="rejected") == emulator.answers.count(400) == 2
    text = page(port)
    assert "invalid name" in text and "a.mp4" in text and "rejected" in text


@pytest.mark.parametrize("kind", ["built-in origin", "own origin with a password"])
def test_nothing_on_the_monitor_holds_a_secret_or_a_signed_link(drop, emulator, raw_config, monitored, kind):
    write_files(drop, {"s1.mp4": b"secret one", "s2.mp4": b"secret two", "s3.mp4": b"three"})
    emulator.inject("echo400")          # an answer that repeats the location: kept as a problem's reason
    origin = serve_origin() if kind == "built-in origin" else raw_config["origin"]
    running, port = monitored(origin=origin)
    wait_for(lambda: len(emulator.answers) >= 3, what="three answers")
    eventually(lambda: _settled_problem(status_json(port)), what="the echoed location recorded as a problem")
    bodies = {path: request(port, path)[2].decode("utf-8") for path in ("/", "/metrics", "/status.json")}
    secrets = {API_PASSWORD, ORIGIN_PASSWORD}
    secret_file = Path(running.ledger.path + ".secret")
    if secret_file.exists():
        secrets.add(secret_file.read_bytes().strip().decode("latin-1"))
    for record in emulator.requests:
        for url in (record.get("location"), record.get("callback")):
            if url:                                  # every segment of a signed path, and the whole URL
                secrets.add(url)
                secrets.update(part for part in urlsplit(url).path.split("/") if len(part) >= 16)
    leaks = set()
    for path, body in bodies.items():
        for text in (body, html.unescape(body)):
            leaks.update((path, f"secret {secret[:6]}...") for secret in secrets
                         if secret in text or secret.replace("/", "%2F") in text)
            leaks.update((path, f"signed path {m.group()}") for m in cdn_push.SIGNED_PATH.finditer(text)
                         if not m.group().endswith(("/<signature>/", "/<token>/", "/&lt;signature&gt;/",
                                                    "/&lt;token&gt;/")))     # masked: harmless
    assert not leaks, sorted(leaks)


def _settled_problem(status: dict) -> dict:
    assert status["problems"] and status["counts"]["rejected"] == 1, status["counts"]
    return status


# -- HTTP -----------------------------------------------------------------------------------------

def test_only_get_and_head_and_only_three_paths(drop, emulator, monitored):
    running, port = monitored()
    types = {"/": "text/html", "/status.json": "application/json", "/metrics": "text/plain"}
    for path, kind in types.items():
        code, headers, body = request(port, path)
        assert code == 200 and headers["content-type"].startswith(kind), (path, headers)
        if kind.startswith("text/"):                   # JSON is UTF-8 by definition and takes no charset
            assert "charset=utf-8" in headers["content-type"].replace(" ", "").lower(), (path, headers)
        code, head_headers, head_body = request(port, path, "HEAD")
        assert (code, head_body) == (200, b"") and head_headers["content-type"] == headers["content-type"]
        for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
            code, headers, _ = request(port, path, method)
            assert code == 405, (method, path, code)
            assert {m.strip() for m in headers.get("allow", "").split(",")} == {"GET", "HEAD"}, (method, headers)
    assert "version=0.0.4" in request(port, "/metrics")[1]["content-type"]
    for path in ("/nope", "/status.json/x", "/../etc/passwd", "/metrics?x=<script>"):
        code, _, body = request(port, path)
        assert code == (200 if path.startswith("/metrics?") else 404), (path, code)
        assert b"<script>" not in body


# -- a real browser ----------------------------------------------------------------------------------

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars")
REJECT_REASON = "codec <h265> in .avi is not accepted & refused"


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.skip("chromium is not installed (Debian package 'chromium'; .ci/run installs it)")
    profile = tmp_path / "chromium-profile"
    done = subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def png_facts(path: Path) -> tuple[int, int, int]:
    """(width, height, distinct byte values in the image data): a blank or error page has few."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    idat, at = b"", 8
    while at < len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        if kind == b"IDAT":
            idat += data[at + 8:at + 8 + length]
        at += 12 + length
    return width, height, len(set(zlib.decompress(idat)))


def dom_text(dom: str) -> str:
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", dom)))


def test_chromium_renders_the_page(tmp_path, drop, emulator, monitored):
    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        pytest.skip("chromium is not installed (Debian package 'chromium'; .ci/run installs it)")
    files = {f"news/2024-06-0{i} bulletin.mp4": os.urandom(40_000 * i) for i in range(1, 6)}
    files[HOSTILE] = b"hostile"
    files["old/tape.avi"] = b"refused by the CDN"
    write_files(drop, files)
    reject_names(emulator, lambda name: name.endswith(".avi"), REJECT_REASON)
    running, port = monitored(origin=serve_origin())

    def done() -> dict:
        counts = ledger_facts(running.ledger.path)[0]
        assert (counts["confirmed"], counts["rejected"]) == (6, 1), counts
        status = status_json(port)
        assert status["counts"]["confirmed"] == 6, status["counts"]
        return status

    status = eventually(done, timeout=40, what="six files confirmed and one rejected")
    dom = chromium(tmp_path, "--dump-dom", f"http://127.0.0.1:{port}/").stdout
    text = dom_text(dom)
    assert str(drop) in text
    assert REJECT_REASON in text and "&lt;h265&gt;" in dom and "<h265" not in dom
    assert HOSTILE in text and "<img" not in dom.lower() and "<script" not in dom.lower()
    for label, state in (("Confirmed", "confirmed"), ("Rejected", "rejected"), ("Pending", "pending")):
        assert re.search(rf"\b{label}\s+{status['counts'][state]}\b", text), (label, text[:2000])
    if os.environ.get("CDN_PUSH_SAVE_SCREENSHOT") == "1":
        target = ROOT / "docs" / "status-page.png"
        target.parent.mkdir(exist_ok=True)
    else:
        target = tmp_path / "status-page.png"
    chromium(tmp_path, f"--screenshot={target}", "--window-size=1280,1600", f"http://127.0.0.1:{port}/")
    assert target.exists() and target.stat().st_size > 20_000, target
    width, height, variety = png_facts(target)
    assert (width, height) == (1280, 1600) and variety > 50


# -- Host, bodies, frames, connections, one shared status (issue 20) ----------------------------------------

@pytest.mark.parametrize("header, allowed, expected", [
    (None, (), True),                                   # HTTP/1.0 without Host: no browser sends that
    ("127.0.0.1", (), True),
    ("127.0.0.1:8765", (), True),
    ("127.0.0.2:80", (), True),
    ("10.1.2.3:8765", (), True),
    ("[::1]", (), True),
    ("[::1]:8765", (), True),
    ("::1", (), True),
    ("[::ffff:127.0.0.1]:8765", (), True),
    ("localhost", (), True),
    ("localhost:8765", (), True),
    ("LocalHost.:8765", (), True),                      # case and a trailing dot
    ("foo.localhost:8765", (), True),
    ("status.example.com", ("status.example.com",), True),
    ("Status.Example.com.:443", ("status.example.com",), True),
    ("status.example.com", (), False),
    ("evil.example", (), False),
    ("evil.example:8765", (), False),
    ("evil.example.:8765", (), False),
    ("localhost.evil.example", (), False),
    ("127.0.0.1.evil.example:8765", (), False),
    ("evil-localhost:8765", (), False),
    ("[evil.example]:8765", (), False),
    ("2130706433:8765", (), False),                     # 127.0.0.1 as a number: a name to a browser's DNS
    ("", (), False),
    (":8765", (), False),
    ("evil.example:8765:1", (), False),
])
def test_host_allowed(header, allowed, expected):
    assert cdn_push.host_allowed(header, allowed) is expected


@pytest.fixture
def monitor_server(make_config):
    """A MonitorServer on a free port of 127.0.0.1 over an empty ledger, with `monitor` keys of the test's."""
    started = []

    def start(clock=None, **monitor: Any) -> cdn_push.MonitorServer:
        config = make_config(monitor={"listen": f"127.0.0.1:{free_port()}", **monitor})
        activity = cdn_push.Activity()
        activity.mode = "watch"
        kwargs = {"clock": clock} if clock is not None else {}
        server = cdn_push.MonitorServer(config, activity, **kwargs).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def exchange(port: int, data: bytes, timeout: float = 5.0, **kwargs: Any) -> tuple[list, str, bytes]:
    """Send raw bytes to the monitor; (answers, how the connection ended, bytes left over)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        return read_responses(sock, timeout, **kwargs)


def get_with_host(port: int, path: str, host: str) -> Any:
    answers, _, rest = exchange(port, f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode(), stop_after=1)
    assert len(answers) == 1, (answers, rest)
    return answers[0]


def test_a_foreign_host_gets_421_and_no_status(drop, monitor_server):
    server = monitor_server()
    port = server.port
    for path in ("/status.json", "/", "/metrics"):
        for host in (f"evil.example:{port}", "evil.example", f"status.example.com:{port}"):
            answer = get_with_host(port, path, host)
            assert answer.status == 421, (path, host, answer)
            assert str(drop).encode() not in answer.body and b"cdn_push_" not in answer.body, answer.body
            assert answer.headers.get("connection", "").lower() == "close"
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "127.0.0.1"):
            answer = get_with_host(port, path, host)
            assert answer.status == 200, (path, host, answer.status)
    assert json.loads(get_with_host(port, "/status.json", f"127.0.0.1:{port}").body)["folder"] == str(drop)


def test_allowed_hosts_let_a_proxys_name_in(drop, monitor_server):
    server = monitor_server(allowed_hosts=["status.example.com"])
    answer = get_with_host(server.port, "/status.json", "status.example.com")
    assert answer.status == 200 and json.loads(answer.body)["folder"] == str(drop)
    assert get_with_host(server.port, "/status.json", "STATUS.example.com:443").status == 200
    assert get_with_host(server.port, "/status.json", "other.example.com").status == 421


@pytest.mark.parametrize("kind", ["Content-Length: 5", "Content-Length of the smuggled request", "chunked",
                                  "Transfer-Encoding: identity", "HEAD with a body"])
def test_a_request_with_a_body_gets_400_and_a_closed_connection(monitor_server, kind):
    server = monitor_server()
    smuggled = b"GET /status.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    head = b"GET /status.json HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    request = {
        "Content-Length: 5": head + b"Content-Length: 5\r\n\r\nhello" + smuggled,
        "Content-Length of the smuggled request": head + b"Content-Length: %d\r\n\r\n" % len(smuggled) + smuggled,
        "chunked": head + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n" % len(smuggled) + smuggled + b"\r\n0\r\n\r\n"
                   + smuggled,
        "Transfer-Encoding: identity": head + b"Transfer-Encoding: identity\r\n\r\n" + smuggled,
        "HEAD with a body": b"HEAD / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n\r\nhello" + smuggled,
    }[kind]
    answers, ended, rest = exchange(server.port, request, timeout=3.0, head=kind.startswith("HEAD"))
    assert [a.status for a in answers] == [400] and rest == b"", (kind, answers, rest[:80])
    assert ended in ("closed", "reset"), f"{kind}: the connection stays open after the 400"
    assert b'"folder"' not in answers[0].body
    assert get_with_host(server.port, "/status.json", "127.0.0.1").status == 200


def test_every_answer_forbids_framing(monitor_server):
    server = monitor_server()
    for path in ("/", "/status.json", "/metrics", "/nope"):
        for method in ("GET", "HEAD"):
            code, headers, _ = request(server.port, path, method)
            assert code == (404 if path == "/nope" else 200), (path, code)
            directives = [d.strip() for d in headers["content-security-policy"].split(";")]
            assert "frame-ancestors 'none'" in directives and "default-src 'none'" in directives, headers
            assert headers["x-frame-options"] == "DENY", (path, headers)
    answer = get_with_host(server.port, "/", "evil.example")       # the refusals too
    assert answer.status == 421 and answer.headers["x-frame-options"] == "DENY"


def test_connections_over_the_cap_get_503_until_some_close(monitor_server):
    server = monitor_server()
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=5)
            for _ in range(cdn_push.MONITOR_MAX_CONNECTIONS)]
    try:
        answers, ended, _ = exchange(server.port, b"GET /status.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
                                     timeout=3.0)
        assert [a.status for a in answers] == [503] and "retry-after" in answers[0].headers, answers
        assert ended in ("closed", "reset")
        for sock in idle:                              # the held ones were kept, not answered or closed
            assert not select.select([sock], [], [], 0)[0]
    finally:
        for sock in idle:
            sock.close()

    def served() -> bool:
        answers, _, _ = exchange(server.port, b"GET /status.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
                                 timeout=3.0, stop_after=1)
        return bool(answers) and answers[0].status == 200

    wait_for(served, timeout=8, what="a request served once the idle connections closed")


def test_one_status_document_serves_every_request_for_status_max_age(drop, monitor_server):
    clock = Clock(1000.0)
    server = monitor_server(clock=clock)
    activity, first = server.shared()
    assert server.shared()[1] is first
    server.activity.problem("late.mp4", "appeared after the document was made")
    clock.advance(cdn_push.STATUS_MAX_AGE - 0.01)
    assert server.shared()[1] is first
    assert [p["path"] for p in status_json(server.port)["problems"]] == []         # the page shares it too
    assert b"late.mp4" not in request(server.port, "/")[2]
    clock.advance(0.02)
    second = server.shared()[1]
    assert second is not first and [p["path"] for p in second["problems"]] == ["late.mp4"]
    assert [p["path"] for p in status_json(server.port)["problems"]] == ["late.mp4"]
    assert b"late.mp4" in request(server.port, "/")[2]
    assert server.shared()[1] is second
