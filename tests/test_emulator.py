"""The CDN emulator behaves as docs/cdn-api.md describes."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, urlsplit

import pytest
import requests

from cdn_emulator import CdnEmulator, StaticOrigin
from conftest import API_LOGIN, API_PASSWORD, ROOT, free_port, wait_for, write_files

AUTH = (API_LOGIN, API_PASSWORD)


def add(emulator, **params):
    return requests.post(emulator.api_url + "/file/add", data=params, auth=AUTH, timeout=10)


def sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


@pytest.fixture
def served(drop):
    origin = StaticOrigin(drop).start()
    yield origin
    origin.stop()


def test_basic_auth_is_required(emulator):
    answer = requests.post(emulator.api_url + "/file/add", data={"name": "a"}, timeout=5)
    assert answer.status_code == 401 and "WWW-Authenticate" in answer.headers
    answer = requests.post(emulator.api_url + "/file/add", data={"name": "a"}, auth=(API_LOGIN, "no"), timeout=5)
    assert answer.status_code == 401


def test_one_time_password_is_accepted_once(emulator):
    emulator.hold()
    expire = str(int(time.time()) + 60)
    salt = base64.b64encode(os.urandom(6)).decode().replace("/", ",")
    auth = hashlib.md5(f"{expire}:{salt}:{API_PASSWORD}".encode()).hexdigest()
    otp = f"{API_LOGIN}:{expire}:{salt}:{auth}"
    params = {"otp": otp, "location": "http://h/a", "name": "a", "size": "1"}
    assert requests.post(emulator.api_url + "/file/add", data=params, timeout=5).status_code == 200
    assert requests.post(emulator.api_url + "/file/add", data=params, timeout=5).status_code == 401


def test_parameters_may_come_as_a_query_string(emulator):
    emulator.hold()
    answer = requests.get(emulator.api_url + "/file/add", params={"location": "http://h/a", "name": "q",
                                                                  "size": "1"}, auth=AUTH, timeout=5)
    assert answer.status_code == 200 and answer.json()["status"] == "ok"


@pytest.mark.parametrize("params, message", [
    ({"name": "a", "size": "1"}, "missing parameter: location"),
    ({"location": "http://h/a", "name": "a"}, "missing parameter: size"),
    ({"location": "gopher://h/a", "name": "a", "size": "1"}, "unsupported location"),
    ({"location": "http://h/a", "name": "/a", "size": "1"}, "invalid name"),
    ({"location": "http://h/a", "name": "a", "size": "-1"}, "size must be a number"),
    ({"location": "http://h/a", "name": "a", "size": "1", "chksum": "abc"}, "chksum must be 64 hex"),
    ({"location": "http://h/a", "name": "a", "size": "1", "no_replace": "maybe"}, "no_replace must be"),
])
def test_parameters_are_validated(emulator, params, message):
    answer = add(emulator, **params)
    assert answer.status_code == 400 and message in answer.json()["message"]


def test_reimport_rules(emulator):
    emulator.hold()
    base = {"location": "http://h/a", "name": "a", "size": "5", "chksum": "a" * 64}
    assert add(emulator, **base).status_code == 200
    same = add(emulator, **base)
    assert same.status_code == 409 and "already exists" in same.json()["message"]
    assert add(emulator, **{**base, "chksum": "b" * 64}).status_code == 200     # other chksum replaces
    assert add(emulator, **{**base, "chksum": "b" * 64, "size": "6"}).status_code == 200   # other size
    blocked = add(emulator, **{**base, "size": "7", "no_replace": "true"})
    assert blocked.status_code == 409 and "no_replace" in blocked.json()["message"]
    assert emulator.files["a"].imports == 3
    emulator.files["a"].state = "failed"
    assert add(emulator, **{**base, "chksum": "b" * 64, "size": "6"}).status_code == 200   # failed: replaced
    emulator.files["a"].state = "failed"
    assert add(emulator, **{**base, "no_replace": "true"}).status_code == 409   # no_replace: whatever state


def test_fetch_queue_honours_fetch_prio():
    emulator = CdnEmulator(login=API_LOGIN, password=API_PASSWORD, fetch_workers=1, auto_fetch=False).start()
    try:
        for name, prio in [("a", None), ("b", None), ("c", "5"), ("d", "1"), ("e", None)]:
            params = {"location": "http://127.0.0.1:9/x", "name": name, "size": "1"}
            if prio:
                params["fetch_prio"] = prio
            assert add(emulator, **params).status_code == 200
        emulator.release()
        assert emulator.wait_idle(20)
        assert emulator.fetch_order == ["c", "d", "a", "b", "e"]
    finally:
        emulator.stop()


def test_http_fetch_uses_three_range_streams_and_verifies(emulator, drop, served):
    content = os.urandom(1_000_003)
    write_files(drop, {"dir/big file.mp4": content})
    location = f"{served.url}/dir/{quote('big file.mp4')}"
    assert add(emulator, location=location, name="big", size=str(len(content)), chksum=sha(content)).ok
    assert emulator.wait_idle(20)
    record = emulator.files["big"]
    assert (record.state, record.sha256, record.streams) == ("ready", sha(content), 3)
    ranges = sorted(r["range"] for r in served.requests)
    assert ranges == ["bytes=0-333333", "bytes=333334-666667", "bytes=666668-1000002"]


def test_origin_without_range_support_is_fetched_in_one_stream(emulator, drop):
    write_files(drop, {"a.mp4": b"x" * 1000})
    origin = StaticOrigin(drop, ranges=False).start()
    try:
        assert add(emulator, location=origin.url + "/a.mp4", name="a", size="1000").ok
        assert emulator.wait_idle(20)
        assert (emulator.files["a"].state, emulator.files["a"].streams) == ("ready", 1)
    finally:
        origin.stop()


@pytest.mark.parametrize("declared_size, chksum, path, message", [
    (999, None, "a.mp4", "wrong file size"),
    (1001, None, "a.mp4", "wrong file size"),
    (1000, "0" * 64, "a.mp4", "wrong checksum"),
    (1000, None, "missing.mp4", "404 error"),
])
def test_failed_verification_marks_the_file_failed(emulator, drop, served, declared_size, chksum, path, message):
    write_files(drop, {"a.mp4": b"y" * 1000})
    params = {"location": f"{served.url}/{path}", "name": "a", "size": str(declared_size)}
    if chksum:
        params["chksum"] = chksum
    assert add(emulator, **params).ok
    assert emulator.wait_idle(20)
    assert (emulator.files["a"].state, emulator.files["a"].message) == ("failed", message)


def test_origin_credentials_in_the_location_are_used(emulator, drop):
    write_files(drop, {"a.mp4": b"z" * 10})
    origin = StaticOrigin(drop, username="u", password="p@ss").start()
    try:
        good = origin.url.replace("http://", "http://u:p%40ss@") + "/a.mp4"
        assert add(emulator, location=good, name="good", size="10").ok
        assert add(emulator, location=origin.url + "/a.mp4", name="anon", size="10").ok
        assert emulator.wait_idle(20)
        assert emulator.files["good"].state == "ready"
        assert (emulator.files["anon"].state, emulator.files["anon"].message) == ("failed", "401 error")
    finally:
        origin.stop()


@pytest.fixture
def ftp_server(drop):
    """A real FTP server (pyftpdlib) over `drop`; yields its port.

    Its IO loop is not thread-safe, so the server's own thread runs it and closes it: the test
    only sets `stop` and joins. Closing it from the test's thread (close_all() while
    serve_forever() polls) raced with the poll and ended the thread with an exception.
    """
    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.handlers import FTPHandler
    from pyftpdlib.servers import FTPServer

    authorizer = DummyAuthorizer()
    authorizer.add_user("ftpuser", "ftp:pass", str(drop), perm="elr")
    handler = type("Handler", (FTPHandler,), {"authorizer": authorizer})
    server = FTPServer(("127.0.0.1", 0), handler)
    stop = threading.Event()

    def serve() -> None:
        try:
            while not stop.is_set():
                server.serve_forever(timeout=0.05, blocking=False, handle_exit=False)
        finally:
            server.close_all()

    thread = threading.Thread(target=serve, name="ftp-server")
    thread.start()
    yield server.socket.getsockname()[1]
    stop.set()
    thread.join(10)
    assert not thread.is_alive(), "the FTP server did not stop"


def test_ftp_fetch(emulator, drop, ftp_server):
    content = os.urandom(50_000)
    write_files(drop, {"sub/a b.mp4": content})
    port = ftp_server
    location = f"ftp://ftpuser:ftp%3Apass@127.0.0.1:{port}/sub/a%20b.mp4"
    assert add(emulator, location=location, name="f", size=str(len(content)), chksum=sha(content)).ok
    assert add(emulator, location=location.replace("a%20b", "nope"), name="g", size="1").ok
    assert emulator.wait_idle(20)
    assert (emulator.files["f"].state, emulator.files["f"].sha256) == ("ready", sha(content))
    assert (emulator.files["g"].state, emulator.files["g"].message) == ("failed", "404 error")


class _Recorder(BaseHTTPRequestHandler):
    calls: list[str] = []

    def do_GET(self):
        type(self).calls.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_callbacks_carry_the_documented_parameters(emulator, drop, served):
    _Recorder.calls = []
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=receiver.serve_forever, args=(0.05,), daemon=True).start()
    try:
        hook = f"http://127.0.0.1:{receiver.server_address[1]}/cb"
        content = b"v" * 5000
        write_files(drop, {"a.mp4": content})
        assert add(emulator, location=served.url + "/a.mp4", name="ok", size="5000", chksum=sha(content),
                   callback=hook + "?token=t1").ok
        assert add(emulator, location=served.url + "/a.mp4", name="bad", size="4", callback=hook).ok
        assert emulator.wait_idle(20)
        wait_for(lambda: len(_Recorder.calls) >= 2, timeout=5, message="both callbacks received")
        calls = {parse_qs(urlsplit(c).query).get("status", [""])[0]: c for c in _Recorder.calls}
        success = parse_qs(urlsplit(calls["success"]).query)
        assert success == {"token": ["t1"], "status": ["success"], "size": ["5000"], "sha-256": [sha(content)]}
        fail = parse_qs(urlsplit(calls["fail"]).query)
        assert fail == {"status": ["fail"], "message": ["wrong file size"]}
        assert urlsplit(calls["fail"]).path == "/cb"
    finally:
        receiver.shutdown()
        receiver.server_close()


def test_file_list_as_text(emulator):
    emulator.hold()
    add(emulator, location="http://h/a", name="1/2/345.flv", size="1")
    answer = requests.get(emulator.api_url + "/file/list", params={
        "format": "text", "fields": "id,status", "filter_full_name": "1/2/345.flv"}, auth=AUTH, timeout=5)
    assert answer.text == "1 queued\n"


@pytest.mark.parametrize("fault, status", [("500", 500), ("503", 503), ("429:7", 429), ("error200", 200)])
def test_injected_faults(emulator, fault, status):
    emulator.hold()
    emulator.inject(fault)
    answer = add(emulator, location="http://h/a", name="a", size="1")
    assert answer.status_code == status
    if fault.startswith("429"):
        assert answer.headers["Retry-After"] == "7"
    assert add(emulator, location="http://h/a", name="b", size="1").status_code == 200   # consumed once


def test_dropped_connection(emulator):
    emulator.inject("drop")
    with pytest.raises(requests.ConnectionError):
        add(emulator, location="http://h/a", name="a", size="1")


def start_line_values(line: str, prefix: str) -> dict[str, str]:
    """The key=value pairs of a start-up line, read back the way a script would (shlex)."""
    import shlex

    assert line.startswith(prefix), line
    return dict(word.split("=", 1) for word in shlex.split(line[len(prefix):]))


def test_runs_on_its_own_from_the_command_line(tmp_path):
    import subprocess
    import sys

    port, origin_port = free_port(), free_port()
    (tmp_path / "clip 1.mp4").write_bytes(b"x" * 1000)
    script = ROOT / "cdn_emulator.py"
    process = subprocess.Popen([sys.executable, str(script), "--port", str(port), "--login", "cli",
                                "--password", "cli secret", "--origin-folder", str(tmp_path),
                                "--origin-port", str(origin_port)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = process.stdout.readline()
        assert first.startswith(f"CDN emulator: api.url=http://127.0.0.1:{port}/api2 "), first
        assert start_line_values(first, "CDN emulator:") == {
            "api.url": f"http://127.0.0.1:{port}/api2", "api.login": "cli", "api.password": "cli secret",
            "state": f"http://127.0.0.1:{port}/_emulator/state"}
        second = process.stdout.readline()
        assert start_line_values(second, "origin:") == {
            "origin.base_url": f"http://127.0.0.1:{origin_port}/files", "folder": str(tmp_path.resolve())}
        location = f"http://127.0.0.1:{origin_port}/files/clip%201.mp4"
        answer = requests.post(f"http://127.0.0.1:{port}/api2/file/add", auth=("cli", "cli secret"), timeout=5,
                               data={"location": location, "name": "x", "size": "1000"})
        assert answer.status_code == 200

        def finished() -> list | None:
            state = requests.get(f"http://127.0.0.1:{port}/_emulator/state", timeout=5).json()
            return state if state and state[0]["state"] not in ("queued", "fetching") else None

        state = wait_for(finished, timeout=20, interval=0.05, message="the import fetched and verified")
        assert [(f["name"], f["state"], f["streams"]) for f in state] == [("x", "ready", 3)]
    finally:
        process.terminate()
        process.wait(10)


def test_command_line_defaults_and_help(monkeypatch):
    import subprocess
    import sys

    import cdn_emulator

    monkeypatch.delenv("CDN_EMULATOR_PASSWORD", raising=False)
    script = ROOT / "cdn_emulator.py"
    shown = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0
    text = " ".join(shown.stdout.split())
    assert "A local stand-in for the video CDN, for trying cdn-push" in text
    for option, default in [("--port", "8070"), ("--login", "demo"), ("--password", "demo-secret"),
                            ("--answer-delay", "0"), ("--fault-rate", "0"), ("--callback-param", "callback"),
                            ("--origin-folder", "none"), ("--origin-port", "8071")]:
        entry = re.search(rf"^  {option} .*?(?=^  -|^\S|\Z)", shown.stdout, re.M | re.S)
        assert entry and f"(default: {default}" in " ".join(entry.group().split()), option
    assert "CDN_EMULATOR_PASSWORD" in text and "docs/cdn-api.md" in text
    assert "../shared" not in shown.stdout + (cdn_emulator.__doc__ or "")

    # the defaults: no clash with the example config's built-in origin (8080) nor the status page (8765)
    example = (ROOT / "config.example.yaml").read_text()
    used = {int(port) for port in re.findall(r":(\d{2,5})\b", example)} | {8765}
    assert 8080 in used
    args = cdn_emulator.build_parser().parse_args([])
    assert (args.port, args.origin_port, args.login) == (8070, 8071, "demo")
    assert not {args.port, args.origin_port} & used
    assert args.answer_delay == 0 and args.fault_rate == 0


@pytest.mark.parametrize("argv, message", [
    (["--fault-rate", "1.5"], "--fault-rate: must be between 0 and 1"),
    (["--answer-delay", "-1"], "--answer-delay: must be a number of seconds"),
    (["--port", "70000"], "--port: must be between 0 and 65535"),
    (["--port", "0", "--origin-folder", "/nonexistent/folder"], "is not a folder"),
])
def test_command_line_errors_are_one_line(argv, message):
    import subprocess
    import sys

    script = ROOT / "cdn_emulator.py"
    result = subprocess.run([sys.executable, str(script), *argv], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_a_port_in_use_is_a_clear_error():
    import socket
    import subprocess
    import sys

    script = ROOT / "cdn_emulator.py"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, str(script), "--port", str(port)], capture_output=True,
                                text=True, timeout=30)
    assert result.returncode == 2 and result.stdout == ""
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "--port" in result.stderr
