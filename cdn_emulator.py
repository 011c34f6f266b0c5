#!/usr/bin/env python3
"""A local stand-in for the video CDN's import API, for trying and testing cdn-push.

It behaves as docs/cdn-api.md describes the real API. It is a real HTTP server on 127.0.0.1:

* ``POST|GET {base}/file/add`` with HTTP basic auth (or a one-time ``otp``), form or query
  parameters; validates them, applies the reimport rules and ``no_replace``, queues the
  import by ``fetch_prio`` and answers JSON.
* Fetch workers download the location: HTTP(S) over three concurrent ``Range`` streams (one
  stream when the origin ignores Range), or FTP; they verify size and sha-256, mark the file
  ``ready`` or ``failed`` and call the callback URL with the documented parameters.
* ``file/list`` and ``file/delete`` in a minimal form; ``GET /_emulator/state`` returns every
  file as JSON for tests that run cdn-push in another process.
* Faults can be injected: ``inject("500", "429:2", "hang:3", "drop", "garbage", "error200")``
  are consumed one per request; ``fault_rate`` adds random ones; ``go_down()`` until
  ``come_up()`` is an outage of the API (connections refused, kept-alive ones dropped).

``StaticOrigin`` is a small Range-capable web server for a folder, with optional basic auth:
the "customer's web server" in tests and in the demo.

Run on its own: ``python cdn_emulator.py [--origin-folder FOLDER]``; ``--help`` lists the
options and their defaults. The first line it prints names the API URL, login and password.
"""

from __future__ import annotations

import argparse
import base64
import ftplib
import hashlib
import json
import os
import queue
import random
import re
import socket
import threading
import time
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import requests

SCHEMES = ("http", "https", "ftp", "rsync", "rsync+ssh", "s3")
HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass     # clients that time out or hang up are part of the tests, not news


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Without this, keep-alive answers stall about 40 ms each (Nagle + delayed ACK).
    disable_nagle_algorithm = True
    server_version = "cdn-emulator/1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        pass

    def send_body(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8",
                  headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


# ----------------------------------------------------------------------------
# The customer's origin: a folder over HTTP with Range
# ----------------------------------------------------------------------------

class StaticOrigin:
    """Serves a folder read-only over HTTP/1.1 with single byte ranges and optional basic auth."""

    def __init__(self, folder: Path | str, *, username: str = "", password: str = "",
                 host: str = "127.0.0.1", port: int = 0, ranges: bool = True) -> None:
        self.folder = Path(folder).resolve()
        self.ranges = ranges
        self.username, self.password = username, password
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._server = _Server((host, port), self._handler_class())
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/files"

    def start(self) -> "StaticOrigin":
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True, name="origin")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler_class(self) -> type:
        origin = self

        class Handler(_Handler):
            def do_HEAD(self) -> None:
                self.do_GET()

            def do_GET(self) -> None:
                record = {"method": self.command, "path": self.path, "range": self.headers.get("Range")}
                with origin._lock:
                    origin.requests.append(record)
                if origin.username:
                    expected = base64.b64encode(f"{origin.username}:{origin.password}".encode()).decode()
                    if self.headers.get("Authorization") != f"Basic {expected}":
                        self.send_body(401, b"authentication required\n",
                                       headers={"WWW-Authenticate": 'Basic realm="origin"'})
                        return
                path = unquote(urlsplit(self.path).path)
                if not path.startswith("/files/"):
                    self.send_body(404, b"not found\n")
                    return
                target = (origin.folder / path[len("/files/"):]).resolve()
                if origin.folder not in target.parents or not target.is_file():
                    self.send_body(404, b"not found\n")
                    return
                size = target.stat().st_size
                start, end = 0, size - 1
                status = 200
                wanted = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", "").strip())
                if origin.ranges and wanted and (wanted.group(1) or wanted.group(2)):
                    if wanted.group(1):
                        start = int(wanted.group(1))
                        end = min(int(wanted.group(2)), size - 1) if wanted.group(2) else size - 1
                    else:
                        start = max(0, size - int(wanted.group(2)))
                    if start >= size or start > end:
                        self.send_body(416, b"", headers={"Content-Range": f"bytes */{size}"})
                        return
                    status = 206
                length = max(0, end - start + 1)
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(length))
                if origin.ranges:
                    self.send_header("Accept-Ranges", "bytes")
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                self.end_headers()
                if self.command == "HEAD":
                    return
                with open(target, "rb") as handle:
                    handle.seek(start)
                    remaining = length
                    while remaining:
                        chunk = handle.read(min(remaining, 256 * 1024))
                        if not chunk:
                            break
                        self.wfile.write(chunk)
                        remaining -= len(chunk)

        return Handler


# ----------------------------------------------------------------------------
# The CDN
# ----------------------------------------------------------------------------

@dataclass
class EmulatedFile:
    name: str
    location: str
    size: int
    chksum: str | None
    params: dict[str, str]
    priority: int
    generation: int
    state: str = "queued"          # queued -> fetching -> ready | failed
    message: str = ""
    sha256: str = ""
    downloaded: int = 0
    streams: int = 0
    imports: int = 1
    callback: str | None = None
    callback_result: str | None = None
    queued_at: float = field(default_factory=time.time)
    finished_at: float | None = None

    def public(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("location")
        data["params"] = {k: v for k, v in self.params.items() if k != "location"}
        return data


class FetchError(Exception):
    pass


class CdnEmulator:
    """The import API of the CDN, with a fetch queue, verification, callbacks and faults."""

    def __init__(self, *, login: str = "demo", password: str = "demo-secret", host: str = "127.0.0.1",
                 port: int = 0, fetch_workers: int = 3, streams: int = 3, auto_fetch: bool = True,
                 answer_delay: float = 0.0, fault_rate: float = 0.0,
                 fault_choices: tuple[str, ...] = ("500", "502", "503", "429", "429:1"),
                 seed: int | None = None, base_path: str = "/api2",
                 callback_param: str = "callback", tls: tuple[str, str] | None = None) -> None:
        self.login, self.password = login, password
        self.callback_param = callback_param
        self.list_format: str | None = None          # "json" or "text": answer file/list so, whatever is asked
        self.list_faults: list[str] = []             # the next file/list requests meet these faults first
        self.streams = streams
        self._running = threading.Event()
        if auto_fetch:
            self._running.set()
        self._answering = threading.Event()
        self._answering.set()
        self._held = 0
        self.answer_delay = answer_delay
        self.fault_rate = fault_rate
        self.fault_choices = fault_choices
        self.base_path = base_path.rstrip("/")
        self.files: dict[str, EmulatedFile] = {}
        self.requests: list[dict[str, str]] = []     # every authenticated file/add, in order
        self.answers: list[int] = []                 # HTTP status of every file/add answer
        self.fetch_order: list[str] = []
        self.fetch_faults: list[str] = []            # next fetches fail with these messages
        self._faults: list[str] = []
        self._used_otps: set[str] = set()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._queue: queue.PriorityQueue[tuple[int, int, str, int]] = queue.PriorityQueue()
        self._busy = 0
        self._seq = 0
        self._stopping = threading.Event()
        self._server = _Server((host, port), self._handler_class())
        self._down = False
        self._tls_context: Any = None
        self.scheme = "http"
        if tls:                      # (certificate, key) in PEM: the API over HTTPS
            import ssl
            self._tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._tls_context.load_cert_chain(*tls)
            self._server.socket = self._tls_context.wrap_socket(self._server.socket, server_side=True)
            self.scheme = "https"
        self._threads = [threading.Thread(target=self._fetch_loop, daemon=True, name=f"fetch-{i}")
                         for i in range(fetch_workers)]

    # -- life cycle ------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{self.scheme}://{host}:{port}"

    @property
    def api_url(self) -> str:
        return self.url + self.base_path

    def start(self) -> "CdnEmulator":
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True, name="cdn-api").start()
        for thread in self._threads:
            thread.start()
        return self

    def go_down(self) -> None:
        """An outage of the API until come_up(): new connections are refused and a request on a
        kept-alive one is dropped unanswered. Downloads and callbacks go on (the CDN's back end)."""
        with self._lock:
            if self._down:
                return
            self._down = True
        self._server.shutdown()
        self._server.server_close()

    def come_up(self) -> None:
        """The API answers again, at the same address."""
        with self._lock:
            if not self._down:
                return
        server = _Server(self._server.server_address[:2], self._server.RequestHandlerClass)
        if self._tls_context is not None:
            server.socket = self._tls_context.wrap_socket(server.socket, server_side=True)
        self._server = server
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True, name="cdn-api").start()
        with self._lock:
            self._down = False

    def stop(self) -> None:
        self._stopping.set()
        self._running.set()
        for _ in self._threads:
            self._queue.put((10**9, 10**9, "", -1))
        if not self._down:
            self._server.shutdown()
            self._server.server_close()

    # -- test helpers ------------------------------------------------------------

    def inject(self, *faults: str) -> None:
        with self._lock:
            self._faults.extend(faults)

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [f.public() for f in sorted(self.files.values(), key=lambda f: f.name)]

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until every queued import has been fetched and verified."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._busy or not self._queue.empty():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(min(left, 0.1))
        return True

    def hold(self) -> None:
        """Stop starting downloads (imports still queue); release() resumes in priority order."""
        self._running.clear()

    def release(self) -> None:
        self._running.set()

    def hold_answers(self) -> None:
        """file/add requests are recorded, then wait for release_answers() before they are answered."""
        self._answering.clear()

    def release_answers(self) -> None:
        self._answering.set()

    def held_answers(self) -> int:
        """Requests waiting for their answer now."""
        with self._lock:
            return self._held

    # -- API -----------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _authenticated(self, headers: Any, params: dict[str, str]) -> bool:
        otp = params.pop("otp", None)
        if otp:
            return self._otp_ok(otp)
        auth = headers.get("Authorization", "")
        if not auth.startswith("Basic "):
            return False
        try:
            login, _, password = base64.b64decode(auth[6:]).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return (login, password) == (self.login, self.password)

    def _otp_ok(self, otp: str) -> bool:
        login, expire, salt, auth = (otp.split(":") + ["", "", "", ""])[:4]
        if login != self.login or not expire.isdigit() or int(expire) < time.time():
            return False
        expected = hashlib.md5(f"{expire}:{salt}:{self.password}".encode()).hexdigest()
        with self._lock:
            if auth != expected or otp in self._used_otps:
                return False
            self._used_otps.add(otp)
        return True

    def _take_fault(self, method: str = "") -> str | None:
        with self._lock:
            if method == "file/list" and self.list_faults:
                return self.list_faults.pop(0)
            if self._faults:
                return self._faults.pop(0)
            if self.fault_rate and self._rng.random() < self.fault_rate:
                return self._rng.choice(self.fault_choices)
        return None

    def _wait_to_answer(self) -> None:
        if self._answering.is_set():
            return
        with self._lock:
            self._held += 1
        try:
            self._answering.wait()
        finally:
            with self._lock:
                self._held -= 1

    def file_add(self, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """Validate and queue one import; returns (HTTP status, JSON answer)."""
        missing = [p for p in ("location", "name", "size") if not params.get(p)]
        if missing:
            return 400, {"status": "error", "message": f"missing parameter: {', '.join(missing)}"}
        location, name = params["location"], params["name"]
        scheme = urlsplit(location).scheme
        if scheme not in SCHEMES or not urlsplit(location).hostname:
            return 400, {"status": "error", "message": f"unsupported location: {scheme or 'no'} scheme"}
        if name.startswith("/") or "//" in name or name.endswith("/"):
            return 400, {"status": "error", "message": "invalid name"}
        if not params["size"].isdigit():
            return 400, {"status": "error", "message": "size must be a number of bytes"}
        size = int(params["size"])
        chksum = params.get("chksum") or None
        if chksum is not None and not HEX64.match(chksum):
            return 400, {"status": "error", "message": "chksum must be 64 hex digits (sha-256)"}
        no_replace = params.get("no_replace", "false").lower()
        if no_replace not in ("true", "false", "1", "0"):
            return 400, {"status": "error", "message": "no_replace must be true or false"}
        prio_text = params.get("fetch_prio")
        priority = (int(prio_text) if prio_text.isdigit() else 1) if prio_text else 0
        with self._lock:
            self.requests.append(dict(params))
            existing = self.files.get(name)
            if existing is not None:
                if no_replace in ("true", "1"):
                    return 409, {"status": "error", "message": "file already exists and no_replace is set"}
                if existing.state != "failed" and (existing.size, (existing.chksum or "").lower()) == (
                        size, (chksum or "").lower()):
                    return 409, {"status": "error",
                                 "message": "file already exists with the same size and chksum"}
            record = EmulatedFile(name=name, location=location, size=size, chksum=chksum,
                                  params=dict(params), priority=priority,
                                  generation=(existing.generation + 1) if existing else 1,
                                  imports=(existing.imports + 1) if existing else 1,
                                  callback=params.get(self.callback_param))
            self.files[name] = record
            self._queue.put((-priority, self._next_seq(), name, record.generation))
            return 200, {"status": "ok", "message": "file queued for import", "name": name,
                         "id": record.generation}

    def _handler_class(self) -> type:
        emulator = self

        class Handler(_Handler):
            def do_GET(self) -> None:
                self._dispatch()

            def do_POST(self) -> None:
                self._dispatch()

            def _dispatch(self) -> None:
                if emulator._down:          # an outage: what arrives on a kept-alive connection is lost
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                parts = urlsplit(self.path)
                params = dict(parse_qsl(parts.query, keep_blank_values=True))
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    body = self.rfile.read(length).decode("utf-8", "replace")
                    params.update(parse_qsl(body, keep_blank_values=True))
                if parts.path == "/_emulator/state":
                    self.send_body(200, json.dumps(emulator.snapshot()).encode(), "application/json")
                    return
                if not parts.path.startswith(emulator.base_path + "/"):
                    self.send_body(404, b"no such method\n")
                    return
                method = parts.path[len(emulator.base_path) + 1:]
                fault = emulator._take_fault(method)
                if fault and self._fault(fault, params):
                    return
                if emulator.answer_delay:
                    time.sleep(emulator.answer_delay)
                if not emulator._authenticated(self.headers, params):
                    self._reply(401, {"status": "error", "message": "authentication failed"},
                                {"WWW-Authenticate": 'Basic realm="api2"'})
                    return
                if method == "file/add":
                    status, answer = emulator.file_add(params)
                    emulator._wait_to_answer()
                    if fault == "error200":
                        status, answer = 200, {"status": "error", "message": "import queue unavailable"}
                    if fault == "garbage":
                        self.send_body(200, bytes(range(256)) * 4, "application/octet-stream")
                        emulator.answers.append(200)
                        return
                    emulator.answers.append(status)
                    self._reply(status, answer)
                elif method == "file/list":
                    self._list(params)
                elif method == "file/delete":
                    with emulator._lock:
                        gone = emulator.files.pop(params.get("name", ""), None)
                    self._reply(200 if gone else 404,
                                {"status": "ok" if gone else "error",
                                 "message": "deleted" if gone else "no such file"})
                else:
                    self._reply(404, {"status": "error", "message": f"unknown method {method}"})

            def _fault(self, fault: str, params: dict[str, str]) -> bool:
                """Act out one injected fault; True when the request is finished."""
                kind, _, arg = fault.partition(":")
                if kind in ("500", "502", "503"):
                    emulator.answers.append(int(kind))
                    self.send_body(int(kind), b"temporary trouble, try again\n")
                    return True
                if kind == "429":
                    emulator.answers.append(429)
                    self.send_body(429, b"too many requests\n", headers={"Retry-After": arg} if arg else None)
                    return True
                if kind == "hang":
                    time.sleep(float(arg or 5))
                    return False
                if kind == "echo400":     # an answer that repeats the request, secrets included
                    emulator.answers.append(400)
                    self._reply(400, {"status": "error", "message": f"cannot fetch {params.get('location')}"})
                    return True
                if kind == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return True
                return False          # "garbage" and "error200" change the answer later

            def _reply(self, status: int, answer: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                self.send_body(status, json.dumps(answer).encode(), "application/json", headers)

            def _list(self, params: dict[str, str]) -> None:
                wanted = params.get("filter_full_name")
                fields = (params.get("fields") or "id,name,status").split(",")
                with emulator._lock:
                    rows = [f for f in emulator.files.values() if not wanted or f.name == wanted]
                    values = [{"id": f.generation, "name": f.name, "status": f.state, "size": f.size}
                              for f in rows]
                if (emulator.list_format or params.get("format")) == "text":
                    text = "".join(" ".join(str(v.get(k, "")) for k in fields) + "\n" for v in values)
                    self.send_body(200, text.encode())
                else:
                    self._reply(200, {"status": "ok", "files": [{k: v.get(k) for k in fields} for v in values]})

        return Handler

    # -- fetching --------------------------------------------------------------

    def _fetch_loop(self) -> None:
        while not self._stopping.is_set():
            self._running.wait()
            _, _, name, generation = self._queue.get()
            self._running.wait()
            if generation < 0 or self._stopping.is_set():
                return
            with self._lock:
                record = self.files.get(name)
                if record is None or record.generation != generation:
                    continue
                record.state = "fetching"
                self._busy += 1
                self.fetch_order.append(name)
            try:
                try:
                    with self._lock:
                        fault = self.fetch_faults.pop(0) if self.fetch_faults else None
                    if fault:
                        raise FetchError(fault)
                    content_sha, size, streams = self._download(record)
                    if size != record.size:
                        raise FetchError("wrong file size")
                    if record.chksum and content_sha != record.chksum.lower():
                        raise FetchError("wrong checksum")
                    outcome = {"state": "ready", "message": "", "sha256": content_sha,
                               "downloaded": size, "streams": streams}
                except FetchError as exc:
                    outcome = {"state": "failed", "message": str(exc)}
                except Exception as exc:  # noqa: BLE001 - the CDN marks any fetch trouble failed
                    outcome = {"state": "failed", "message": f"fetch error: {exc.__class__.__name__}"}
                with self._lock:
                    if record.generation == generation and self.files.get(name) is record:
                        for key, value in outcome.items():
                            setattr(record, key, value)
                        record.finished_at = time.time()
                self._call_back(record, outcome)
            finally:
                with self._idle:
                    self._busy -= 1
                    self._idle.notify_all()

    def _download(self, record: EmulatedFile) -> tuple[str, int, int]:
        scheme = urlsplit(record.location).scheme
        if scheme in ("http", "https"):
            return self._download_http(record.location, record.size)
        if scheme == "ftp":
            return self._download_ftp(record.location)
        raise FetchError(f"{scheme} fetching is not emulated")

    def _download_http(self, location: str, size: int) -> tuple[str, int, int]:
        if size == 0:
            response = requests.get(location, timeout=30)
            self._check_status(response)
            return hashlib.sha256(response.content).hexdigest(), len(response.content), 1
        count = max(1, min(self.streams, size))
        bounds = [(i * size // count, (i + 1) * size // count - 1) for i in range(count)]
        parts: list[Any] = [None] * count

        def fetch(index: int) -> None:
            start, end = bounds[index]
            try:
                parts[index] = requests.get(location, headers={"Range": f"bytes={start}-{end}"}, timeout=60)
            except requests.RequestException as exc:
                parts[index] = exc

        threads = [threading.Thread(target=fetch, args=(i,)) for i in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for part in parts:
            if isinstance(part, Exception):
                raise FetchError(f"connection error: {part.__class__.__name__}")
        whole = next((p for p in parts if p.status_code == 200), None)
        if whole is not None:      # the origin ignores Range: one stream carries everything
            return hashlib.sha256(whole.content).hexdigest(), len(whole.content), 1
        digest, total = hashlib.sha256(), None
        for part in parts:
            if part.status_code == 416:
                raise FetchError("wrong file size")
            self._check_status(part)
            found = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", part.headers.get("Content-Range", ""))
            if not found:
                raise FetchError("bad Content-Range from origin")
            total = int(found.group(3))
            digest.update(part.content)
        if total != size:
            raise FetchError("wrong file size")
        return digest.hexdigest(), total, count

    @staticmethod
    def _check_status(response: requests.Response) -> None:
        if response.status_code not in (200, 206):
            raise FetchError(f"{response.status_code} error")

    @staticmethod
    def _download_ftp(location: str) -> tuple[str, int, int]:
        parts = urlsplit(location)
        digest, total = hashlib.sha256(), 0
        try:
            with ftplib.FTP(timeout=30) as ftp:
                ftp.connect(parts.hostname or "", parts.port or 21)
                ftp.login(unquote(parts.username or "anonymous"), unquote(parts.password or ""))

                def take(chunk: bytes) -> None:
                    nonlocal total
                    digest.update(chunk)
                    total += len(chunk)

                ftp.retrbinary("RETR " + unquote(parts.path), take)
        except ftplib.error_perm as exc:
            raise FetchError("404 error" if str(exc).startswith("550") else f"ftp error {exc}") from None
        return digest.hexdigest(), total, 1

    def _call_back(self, record: EmulatedFile, outcome: dict[str, Any]) -> None:
        if not record.callback:
            return
        if outcome["state"] == "ready":
            extra = {"status": "success", "size": str(outcome["downloaded"]), "sha-256": outcome["sha256"]}
        else:
            extra = {"status": "fail", "message": outcome["message"]}
        url = record.callback + ("&" if "?" in record.callback else "?") + urlencode(extra)
        try:
            result = str(requests.get(url, timeout=10).status_code)
        except requests.RequestException as exc:
            result = f"error: {exc.__class__.__name__}"
        with self._lock:
            record.callback_result = result


DEFAULT_PORT = 8070            # not 8080 (the example config's built-in origin) nor 8765 (status page)
DEFAULT_ORIGIN_PORT = 8071
DEFAULT_LOGIN = "demo"
DEFAULT_PASSWORD = "demo-secret"
PASSWORD_ENV = "CDN_EMULATOR_PASSWORD"

DESCRIPTION = """\
A local stand-in for the video CDN, for trying cdn-push without a CDN account.

It serves the CDN's import API (file/add, with file/list and file/delete in a minimal
form) on 127.0.0.1, checks the login and password, applies the reimport rules, downloads
each file from its location, verifies size and sha-256 and calls back, as docs/cdn-api.md
describes. With --origin-folder it also serves a folder over HTTP, as your own web server
would. GET /_emulator/state lists every file it holds, as JSON. It keeps everything in
memory; stop it with Ctrl-C.

The first line printed is:
  CDN emulator: api.url=URL api.login=LOGIN api.password=PASSWORD state=URL
and with --origin-folder a second one:
  origin: origin.base_url=URL folder=FOLDER
(values with spaces or quotes are shell-quoted)."""

EPILOG = f"""\
example, trying cdn-push against it by hand:
  .venv/bin/python cdn_emulator.py --origin-folder /tmp/drop
  then a config.yaml with
    folder: /tmp/drop
    api: {{url: "http://127.0.0.1:{DEFAULT_PORT}/api2", login: {DEFAULT_LOGIN}}}
    origin: {{base_url: "http://127.0.0.1:{DEFAULT_ORIGIN_PORT}/files"}}
  and: CDN_PUSH_API_PASSWORD={DEFAULT_PASSWORD} .venv/bin/python cdn_push.py --config config.yaml
  Without --origin-folder, use cdn-push's built-in origin instead of base_url:
    origin: {{serve: {{listen: "127.0.0.1:8080", public_url: "http://127.0.0.1:8080"}}}}"""


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {text}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0.0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, not {text}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be between 0 and 65535, not {text}")
    return value


_share.__name__, _seconds.__name__, _port.__name__ = "share", "seconds", "port"    # for argparse's messages


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cdn_emulator.py", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=_port, default=DEFAULT_PORT,
                        help=f"API port on 127.0.0.1; 0 picks a free one (default: {DEFAULT_PORT}, so the "
                             f"API URL is http://127.0.0.1:{DEFAULT_PORT}/api2)")
    parser.add_argument("--login", default=DEFAULT_LOGIN,
                        help=f"API login to accept (default: {DEFAULT_LOGIN})")
    parser.add_argument("--password", default=None,
                        help=f"API password to accept (default: {DEFAULT_PASSWORD}, or ${PASSWORD_ENV} when set)")
    parser.add_argument("--answer-delay", type=_seconds, default=0.0, metavar="SECONDS",
                        help="wait this long before each API answer, to act out a slow CDN (default: 0)")
    parser.add_argument("--fault-rate", type=_share, default=0.0, metavar="SHARE",
                        help="share of API requests, 0 to 1, answered with a temporary error instead "
                             "(500, 502, 503 or 429, some with Retry-After: 1) (default: 0, none)")
    parser.add_argument("--callback-param", default="callback", metavar="NAME",
                        help="name of the file/add parameter that carries the callback URL; must match "
                             "cdn-push's api.callback_param (default: callback)")
    parser.add_argument("--origin-folder", metavar="FOLDER",
                        help="also serve this folder read-only over HTTP, with Range support, as the "
                             "origin the CDN downloads from (default: none)")
    parser.add_argument("--origin-port", type=_port, default=DEFAULT_ORIGIN_PORT, metavar="PORT",
                        help=f"port of that origin on 127.0.0.1; 0 picks a free one "
                             f"(default: {DEFAULT_ORIGIN_PORT})")
    return parser


def _shown(value: str) -> str:
    """A value for a start-up line: as is when plain, shell-quoted otherwise (shlex.split reads it back)."""
    import shlex

    return shlex.quote(value) if value else "''"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    password = args.password if args.password is not None else os.environ.get(PASSWORD_ENV) or DEFAULT_PASSWORD
    try:
        emulator = CdnEmulator(login=args.login, password=password, port=args.port,
                               answer_delay=args.answer_delay, fault_rate=args.fault_rate,
                               callback_param=args.callback_param)
    except OSError as exc:
        parser.exit(2, f"cdn_emulator.py: cannot listen on 127.0.0.1:{args.port} for the API: "
                       f"{exc.strerror or exc}; choose another --port\n")
    origin = None
    if args.origin_folder:
        if not Path(args.origin_folder).is_dir():
            parser.exit(2, f"cdn_emulator.py: --origin-folder {args.origin_folder} is not a folder\n")
        try:
            origin = StaticOrigin(args.origin_folder, port=args.origin_port)
        except OSError as exc:
            parser.exit(2, f"cdn_emulator.py: cannot listen on 127.0.0.1:{args.origin_port} for the origin: "
                           f"{exc.strerror or exc}; choose another --origin-port\n")
    emulator.start()
    if origin:
        origin.start()
    print(f"CDN emulator: api.url={emulator.api_url} api.login={_shown(args.login)} "
          f"api.password={_shown(password)} state={emulator.url}/_emulator/state", flush=True)
    if origin:
        print(f"origin: origin.base_url={origin.url} folder={_shown(str(origin.folder))}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        emulator.stop()
        if origin:
            origin.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
