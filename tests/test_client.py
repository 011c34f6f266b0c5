"""The CDN client: answer classification (pure) and retries against the real emulator."""

from __future__ import annotations

import base64
import hashlib
import http.client
import select
import socket
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, urlsplit

import pytest
import requests
import yaml

import cdn_push
from cdn_push import ApiConfig, CdnAuthError, CdnClient, CdnRetriesExhausted, CdnUnavailableError, RetryPolicy, Secret
from conftest import API_LOGIN, API_PASSWORD, assert_cdn_holds, free_port, write_files


@pytest.mark.parametrize("status, body, expected", [
    (200, '{"status":"ok","id":5}', "accepted"),
    (200, "OK", "accepted"),
    (200, "", "accepted"),
    (200, "\x00\x01\xfe binary junk", "accepted"),
    (200, '{"status":"error","message":"queue full"}', "rejected"),
    (200, '{"success": false, "error": "bad name"}', "rejected"),
    (200, "ERROR: invalid location", "rejected"),
    (200, '{"status":"error","message":"File already exists"}', "exists"),
    (409, '{"status":"error","message":"file already exists with the same size and chksum"}', "exists"),
    (400, "error: duplicate file", "exists"),
    (400, '{"status":"error","message":"missing parameter: size"}', "rejected"),
    (404, "no such method", "endpoint"),                 # about api.url, not the file
    (405, "method not allowed", "endpoint"),
    (301, "", "endpoint"),
    (200, "<!DOCTYPE html><html><body>Welcome to nginx</body></html>", "endpoint"),
    (400, "<html><head><title>400</title></head></html>", "endpoint"),
    (401, "authentication failed", "auth"),
    (407, "proxy authentication required", "auth"),
    (403, '{"message":"method not allowed for this login"}', "auth"),
    (403, "", "auth"),
    (403, "location host is blocked", "rejected"),
    (429, "slow down", "retry"),
    (408, "", "retry"),
    (500, "boom", "retry"),
    (503, '{"message": "file already exists"}', "retry"),
    (501, "<!DOCTYPE HTML><html><body><h1>Error response</h1><p>Unsupported method ('POST')", "endpoint"),
    (501, "not implemented", "endpoint"),                # a plain web server: no such method, ever
    (502, "<html><head><title>502 Bad Gateway</title></head></html>", "retry"),  # a load balancer's "later"
    (429, "<html><head><title>429 Too Many Requests</title></head></html>", "retry"),   # a proxy's page: "later"
    (408, "<!DOCTYPE html><html><body>Request Timeout</body></html>", "retry"),
    (503, "<!DOCTYPE html><html><body>Service Temporarily Unavailable</body></html>", "retry"),
])
def test_classify_response(status, body, expected):
    outcome = cdn_push.classify_response(status, body)
    kind = {cdn_push.CdnAuthError: "auth", cdn_push._TransientError: "retry",
            cdn_push.CdnEndpointError: "endpoint"}.get(type(outcome))
    assert (kind or outcome.outcome) == expected


def test_rejection_keeps_the_cdn_message():
    answer = cdn_push.classify_response(400, '{"status":"error","message":"invalid name"}')
    assert answer.message == "HTTP 400: invalid name"
    assert "invalid name" in answer.body


@pytest.mark.parametrize("header, expected", [
    (None, None), ("", None), ("7", 7.0), ("garbage", None),
    (formatdate(1_000_030, usegmt=True), 30.0), (formatdate(999_000, usegmt=True), 0.0),
])
def test_parse_retry_after(header, expected):
    assert cdn_push.parse_retry_after(header, now=1_000_000) == expected


def test_rate_limiter_spaces_requests():
    now = [100.0]
    slept = []

    def sleep(seconds):
        slept.append(round(seconds, 6))
        now[0] += seconds

    limiter = cdn_push.RateLimiter(4.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(5):
        limiter.acquire()
    assert slept == [0.25, 0.25, 0.25, 0.25]
    cdn_push.RateLimiter(0).acquire()   # no limit: returns at once


def client_for(emulator, *, attempts=4, password=API_PASSWORD, sleep=None, timeout=5.0, url=None):
    api = ApiConfig(url=url or emulator.api_url, login=API_LOGIN, password=Secret(password), timeout=timeout,
                    retry=RetryPolicy(attempts=attempts, max_seconds=30, backoff_base=0.01, backoff_max=0.02))
    slept = []

    def record_sleep(seconds):
        slept.append(seconds)
        time.sleep(min(seconds, 0.01))

    return CdnClient(api, sleep=sleep or record_sleep), slept


PARAMS = {"location": "http://127.0.0.1:9/a.mp4", "name": "a.mp4", "size": "3", "chksum": "ab" * 32}


def test_accepted_then_exists_for_the_same_content(emulator):
    client, _ = client_for(emulator, )
    emulator.hold()
    assert client.add_file(PARAMS).outcome == "accepted"
    assert client.add_file(PARAMS).outcome == "exists"
    assert client.add_file({**PARAMS, "size": "4"}).outcome == "accepted"   # different size replaces
    client.close()


def test_bad_parameters_are_rejected_with_the_message(emulator):
    client, _ = client_for(emulator)
    answer = client.add_file({**PARAMS, "chksum": "xyz"})
    assert answer.outcome == "rejected" and "chksum must be 64 hex digits" in answer.message
    client.close()


def test_refused_credentials_raise_at_once(emulator):
    client, slept = client_for(emulator, password="wrong-password")
    with pytest.raises(CdnAuthError, match="refused the API credentials"):
        client.add_file(PARAMS)
    assert emulator.answers == [] and slept == []   # no retry of a 401
    client.close()


@pytest.mark.parametrize("faults", [["500"], ["502", "503"], ["429"], ["drop"], ["drop", "500", "429"]])
def test_temporary_faults_are_retried_until_accepted(emulator, faults):
    emulator.hold()
    emulator.inject(*faults)
    client, slept = client_for(emulator)
    assert client.add_file(PARAMS).outcome == "accepted"
    assert len(slept) == len(faults)
    assert len(emulator.requests) == 1
    client.close()


def test_retry_after_is_honoured(emulator):
    emulator.hold()
    emulator.inject("429:3")
    client, slept = client_for(emulator)
    assert client.add_file(PARAMS).outcome == "accepted"
    assert 3.0 <= slept[0] <= 3.5


def test_a_hanging_answer_times_out_and_is_retried(emulator):
    emulator.hold()
    emulator.inject("hang:1.5")
    client, slept = client_for(emulator, timeout=0.5)
    answer = client.add_file(PARAMS)
    # The hung request was still processed by the CDN, so the retry finds the file there.
    assert answer.outcome in ("accepted", "exists") and len(slept) == 1


def test_retries_are_bounded_for_server_errors(emulator):
    emulator.inject(*["503"] * 10)
    client, slept = client_for(emulator, attempts=3)
    with pytest.raises(CdnRetriesExhausted, match="HTTP 503.*after 3 attempts"):
        client.add_file(PARAMS)
    assert len(slept) == 2 and emulator.answers == [503, 503, 503]


def test_unreachable_cdn_raises_unavailable():
    api = ApiConfig(url=f"http://127.0.0.1:{free_port()}/api2", login="x", password=Secret("y"), timeout=1,
                    retry=RetryPolicy(attempts=2, backoff_base=0.01, backoff_max=0.01))
    with pytest.raises(CdnUnavailableError, match="cannot reach.*after 2 attempts"):
        CdnClient(api, sleep=lambda s: None).add_file(PARAMS)


def test_a_200_reporting_an_error_is_a_rejection(emulator):
    emulator.inject("error200")
    client, _ = client_for(emulator)
    answer = client.add_file(PARAMS)
    assert answer.outcome == "rejected" and "import queue unavailable" in answer.message


def test_requests_carry_basic_auth_form_fields_and_reuse_the_connection(emulator):
    emulator.hold()
    client, _ = client_for(emulator)
    for i in range(5):
        client.add_file({**PARAMS, "name": f"f{i}.mp4"})
    assert [r["name"] for r in emulator.requests] == [f"f{i}.mp4" for i in range(5)]
    assert len(client._pool().pools) == 1        # one host, one pool of kept connections
    client.close()


# -- one-time passwords (api.auth: otp, issue 20) --------------------------------------------------------

@pytest.mark.parametrize("login, password, now, salt", [
    ("tester", API_PASSWORD, 1_700_000_000.9, b"\x00\x01\x02\x03\x04\x05"),
    ("sub-login", "s3cr3t/P@ss word+x", 1_800_000_000, b"\xff\xff\xff\xff\xff\xff"),    # base64: '////////'
    ("a", "p", 0, b"\xfb\xef\xbe\x01\x02\x03"),                                        # base64: '++++AQID'
])
def test_one_time_password_has_the_vendors_form(login, password, now, salt):
    otp = cdn_push.one_time_password(login, password, now, salt)
    got_login, expire, salt_text, auth = otp.split(":")
    assert got_login == login and expire == str(int(now) + cdn_push.OTP_LIFETIME)
    assert salt_text == base64.b64encode(salt).decode().replace("/", ",") and "/" not in salt_text
    assert auth == hashlib.md5(f"{expire}:{salt_text}:{password}".encode()).hexdigest()
    assert password not in otp
    assert cdn_push.one_time_password(login, password, now, salt) == otp          # pure: same input, same OTP
    assert cdn_push.one_time_password(login, password, now, salt[::-1] + b"!") != otp


def test_a_salt_whose_base64_holds_a_slash_is_written_with_commas():
    otp = cdn_push.one_time_password("tester", "pw", 0, b"\xff\xff\xff\xff\xff\xff")
    assert otp.split(":")[2] == ",,,,,,,,"


def otp_client(emulator, *, attempts=4, password=API_PASSWORD):
    api = ApiConfig(url=emulator.api_url, login=API_LOGIN, password=Secret(password), timeout=5, auth="otp",
                    retry=RetryPolicy(attempts=attempts, max_seconds=30, backoff_base=0.01, backoff_max=0.02))
    return CdnClient(api, sleep=lambda seconds: time.sleep(min(seconds, 0.01)))


def record_credentials(emulator):
    """Every credential the emulator is shown, in order: (Authorization header, otp parameter)."""
    seen = []
    original = emulator._authenticated

    def authenticated(headers, params):
        seen.append((headers.get("Authorization"), params.get("otp")))
        return original(headers, params)

    emulator._authenticated = authenticated
    return seen


def test_otp_client_sends_a_fresh_otp_per_request_retries_included_and_no_password(emulator):
    emulator.hold()
    seen = record_credentials(emulator)
    emulator.inject("503", "500")                     # two retries: each needs an OTP of its own
    client = otp_client(emulator)
    assert client.add_file(PARAMS).outcome == "accepted"
    assert client.add_file({**PARAMS, "name": "b.mp4"}).outcome == "accepted"
    assert client.list_file("a.mp4").found
    client.close()
    # the faults answer before authentication: only the requests that reached it are recorded
    assert len(seen) == 3 and [r["name"] for r in emulator.requests] == ["a.mp4", "b.mp4"]
    otps = [otp for _, otp in seen]
    assert all(header is None for header, _ in seen), seen               # no basic auth: the password stays home
    assert all(otp and otp.startswith(f"{API_LOGIN}:") for otp in otps) and len(set(otps)) == len(otps)
    assert emulator.answers == [503, 500, 200, 200]


def test_otp_with_a_wrong_password_is_refused_at_once(emulator):
    client = otp_client(emulator, password="not-the-password")
    with pytest.raises(CdnAuthError):
        client.add_file(PARAMS)
    assert emulator.requests == []
    client.close()


def test_the_emulator_accepts_an_otp_once_and_refuses_a_replay(emulator):
    emulator.hold()
    otp = cdn_push.one_time_password(API_LOGIN, API_PASSWORD, time.time(), b"\xff\xfe\xfd\xfc\xfb\xfa")
    first = requests.post(f"{emulator.api_url}/file/add", data={**PARAMS, "otp": otp}, timeout=5)
    again = requests.post(f"{emulator.api_url}/file/add", data={**PARAMS, "name": "b.mp4", "otp": otp}, timeout=5)
    assert first.status_code == 200 and again.status_code == 401, (first.text, again.text)
    stale = cdn_push.one_time_password(API_LOGIN, API_PASSWORD, time.time() - cdn_push.OTP_LIFETIME - 5, b"123456")
    assert requests.post(f"{emulator.api_url}/file/add", data={**PARAMS, "otp": stale}, timeout=5).status_code == 401
    assert [r["name"] for r in emulator.requests] == ["a.mp4"]


def test_a_run_with_otp_auth_imports_every_file(drop, emulator, write_config, capsys):
    files = {f"otp{i}.mp4": b"%d" % i * 100 for i in range(5)}
    write_files(drop, files)
    seen = record_credentials(emulator)
    emulator.inject("503")                              # one retry, with a new OTP
    raw_api = yaml.safe_load(write_config().read_text())["api"]
    config = write_config(api={**raw_api, "auth": "otp"})
    code = cdn_push.main(["--config", str(config)])
    out, err = capsys.readouterr()
    assert code == cdn_push.EXIT_OK, out + err
    assert sorted(r["name"] for r in emulator.requests) == sorted(files)
    assert len(seen) == len(files) and all(header is None and otp for header, otp in seen), seen
    assert len({otp for _, otp in seen}) == len(files)
    assert_cdn_holds(emulator, files)


# -- proxies (issue 22) ----------------------------------------------------------------------------------
# The client reads the environment's proxy settings once, as requests would, and drives urllib3 itself:
# these tests put a real proxy on 127.0.0.1 between it and the emulator.

PROXY_USER, PROXY_PASSWORD = "proxy-user", "proxy-Secret-otter"
HOP_BY_HOP = {"connection", "proxy-connection", "keep-alive", "proxy-authorization", "proxy-authenticate", "te",
              "trailers", "transfer-encoding", "upgrade"}


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request, client_address):
        pass       # a client that hangs up on a tunnel is no news


class _ProxyHandler(BaseHTTPRequestHandler):
    """A forwarding proxy: absolute-form requests are sent on with http.client; CONNECT opens a tunnel."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format, *args):  # noqa: A002 - stdlib name
        pass

    def do_POST(self):
        proxy = self.server.proxy
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if not proxy.admit(self):
            return
        target = urlsplit(self.path)
        if target.scheme != "http" or not target.hostname:     # origin-form: not meant for a proxy
            self._answer(400, b"a proxy needs the absolute URL in the request line\n")
            return
        headers = {key: value for key, value in self.headers.items() if key.lower() not in HOP_BY_HOP}
        upstream = http.client.HTTPConnection(target.hostname, target.port or 80, timeout=10)
        try:
            upstream.request(self.command, target.path + (f"?{target.query}" if target.query else ""), body=body,
                             headers=headers)
            answer = upstream.getresponse()
            data = answer.read()
        except OSError as exc:
            self._answer(502, f"cannot reach {target.netloc}: {exc}\n".encode())
            return
        finally:
            upstream.close()
        self.send_response(answer.status, answer.reason)
        for key, value in answer.getheaders():
            if key.lower() not in HOP_BY_HOP | {"content-length", "server", "date"}:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST

    def do_CONNECT(self):
        proxy = self.server.proxy
        if not proxy.admit(self):
            return
        host, _, port = self.path.rpartition(":")
        try:
            upstream = socket.create_connection((host, int(port)), timeout=10)
        except (OSError, ValueError) as exc:
            self._answer(502, f"cannot reach {self.path}: {exc}\n".encode())
            return
        self.send_response(200, "Connection established")
        self.end_headers()
        self.close_connection = True
        with upstream:
            ends = {self.connection: upstream, upstream: self.connection}
            while not proxy.stopping.is_set():
                readable, _, _ = select.select(list(ends), [], [], 0.05)
                for end in readable:
                    data = end.recv(65536)
                    if not data:
                        return
                    ends[end].sendall(data)

    def _answer(self, status, body, headers=None):
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class ForwardProxy:
    """A real HTTP proxy on 127.0.0.1 that records the request line of everything it is asked."""

    def __init__(self, *, credentials=None):
        self.lines = []                   # every request line, in order
        self.proxy_authorization = []     # the Proxy-Authorization header of each (None when absent)
        self.credentials = credentials    # (user, password) the proxy asks for, or None for an open one
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._server = _ProxyServer(("127.0.0.1", 0), _ProxyHandler)
        self._server.proxy = self

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self._server.server_address[1]

    def admit(self, handler):
        """Record the request; False (after a 407) when the proxy wants credentials it was not given."""
        given = handler.headers.get("Proxy-Authorization")
        with self._lock:
            self.lines.append(handler.requestline)
            self.proxy_authorization.append(given)
        wanted = self.credentials and "Basic " + base64.b64encode(":".join(self.credentials).encode()).decode()
        if wanted and given != wanted:
            handler._answer(407, b"proxy authentication required\n", {"Proxy-Authenticate": 'Basic realm="proxy"'})
            return False
        return True

    def start(self):
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True, name="proxy").start()
        return self

    def stop(self):
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def proxy_env(monkeypatch):
    """No proxy setting of the machine's environment leaks in: each test sets its own."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "REQUEST_METHOD"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return monkeypatch


@pytest.fixture
def forward_proxy():
    proxy = ForwardProxy().start()
    yield proxy
    proxy.stop()


BASIC_AUTH = "Basic " + base64.b64encode(f"{API_LOGIN}:{API_PASSWORD}".encode()).decode()
PROXY_AUTH = "Basic " + base64.b64encode(f"{PROXY_USER}:{PROXY_PASSWORD}".encode()).decode()
AWKWARD_PARAMS = {**PARAMS, "name": "dir/with space & ü+%=.mp4", "location": "http://127.0.0.1:9/a%20b.mp4?x=1&y=2"}


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "http_proxy"])
def test_file_add_goes_through_the_environments_http_proxy_intact(emulator, forward_proxy, proxy_env, variable):
    proxy_env.setenv(variable, forward_proxy.url)
    seen = record_credentials(emulator)
    emulator.hold()
    client, _ = client_for(emulator)
    assert client.add_file(AWKWARD_PARAMS).outcome == "accepted"
    assert client.add_file({**AWKWARD_PARAMS, "name": "b.mp4"}).outcome == "accepted"
    client.close()
    assert forward_proxy.lines == [f"POST {emulator.api_url}/file/add HTTP/1.1"] * 2
    assert emulator.requests == [AWKWARD_PARAMS, {**AWKWARD_PARAMS, "name": "b.mp4"}]     # every field as sent
    assert seen == [(BASIC_AUTH, None)] * 2                                         # basic auth, through the proxy


@pytest.mark.parametrize("variable", ["NO_PROXY", "no_proxy"])
def test_no_proxy_sends_file_add_direct(emulator, forward_proxy, proxy_env, variable):
    proxy_env.setenv("HTTP_PROXY", forward_proxy.url)
    proxy_env.setenv(variable, "127.0.0.1")
    seen = record_credentials(emulator)
    emulator.hold()
    client, _ = client_for(emulator)
    assert client.add_file(PARAMS).outcome == "accepted"
    client.close()
    assert forward_proxy.lines == []
    assert emulator.requests == [PARAMS] and seen == [(BASIC_AUTH, None)]


def test_an_unreachable_proxy_is_said_after_retries_without_a_password(emulator, proxy_env):
    proxy_env.setenv("HTTP_PROXY", f"http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{free_port()}")
    client, slept = client_for(emulator, attempts=2, timeout=1)
    with pytest.raises(CdnUnavailableError) as caught:
        client.add_file(PARAMS)
    client.close()
    message = str(caught.value)
    assert f"cannot reach the proxy for {emulator.api_url}" in message and "after 2 attempts" in message, message
    assert API_PASSWORD not in message and PROXY_PASSWORD not in message, message
    assert len(slept) == 1 and emulator.requests == []


def test_https_goes_through_a_connect_tunnel_of_https_proxy_with_its_login(proxy_env, self_signed_cert):
    from cdn_emulator import CdnEmulator

    cert, key = self_signed_cert
    emulator = CdnEmulator(login=API_LOGIN, password=API_PASSWORD, tls=(str(cert), str(key))).start()
    proxy = ForwardProxy(credentials=(PROXY_USER, PROXY_PASSWORD)).start()
    try:
        emulator.hold()
        proxy_env.setenv("HTTPS_PROXY", f"http://{PROXY_USER}:{PROXY_PASSWORD}@{proxy.url.split('://')[1]}")
        proxy_env.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")     # http's proxy: not for https
        seen = record_credentials(emulator)
        api = ApiConfig(url=emulator.api_url, login=API_LOGIN, password=Secret(API_PASSWORD), timeout=5,
                        ca_bundle=str(cert), retry=RetryPolicy(attempts=1, backoff_base=0.01, backoff_max=0.01))
        client = CdnClient(api, sleep=lambda seconds: None)
        assert client.add_file(AWKWARD_PARAMS).outcome == "accepted"
        assert client.add_file({**AWKWARD_PARAMS, "name": "b.mp4"}).outcome == "accepted"
        client.close()
        port = urlsplit(emulator.api_url).port
        # one tunnel, opened with the proxy's login; the requests inside it are TLS the proxy cannot read
        assert [line.rsplit(" ", 1)[0] for line in proxy.lines] == [f"CONNECT 127.0.0.1:{port}"], proxy.lines
        assert proxy.proxy_authorization == [PROXY_AUTH]
        assert emulator.requests == [AWKWARD_PARAMS, {**AWKWARD_PARAMS, "name": "b.mp4"}]
        assert seen == [(BASIC_AUTH, None)] * 2
    finally:
        proxy.stop()
        emulator.stop()


@pytest.mark.parametrize("password", [PROXY_PASSWORD, "pr\u20acxy-p\u00e4ss"], ids=["ascii", "utf-8"])
def test_a_login_in_the_proxy_url_is_sent_to_the_proxy(emulator, proxy_env, password):
    """Written as the URL carries it (percent-encoded), sent as UTF-8 (latin-1 could not hold €)."""
    proxy = ForwardProxy(credentials=(PROXY_USER, password)).start()     # answers 407 without them
    try:
        proxy_env.setenv("HTTP_PROXY", f"http://{PROXY_USER}:{quote(password, safe='')}@{proxy.url.split('://')[1]}")
        seen = record_credentials(emulator)
        emulator.hold()
        client, _ = client_for(emulator, attempts=1)
        assert client.add_file(PARAMS).outcome == "accepted"
        client.close()
        assert proxy.lines == [f"POST {emulator.api_url}/file/add HTTP/1.1"]
        wanted = "Basic " + base64.b64encode(f"{PROXY_USER}:{password}".encode()).decode()
        assert proxy.proxy_authorization == [wanted] and seen == [(BASIC_AUTH, None)]
    finally:
        proxy.stop()


def test_a_proxy_named_without_a_scheme_is_taken_as_http(emulator, forward_proxy, proxy_env):
    proxy_env.setenv("HTTP_PROXY", forward_proxy.url.split("://")[1])      # 127.0.0.1:PORT, as curl takes it
    emulator.hold()
    client, _ = client_for(emulator)
    assert client.add_file(PARAMS).outcome == "accepted"
    client.close()
    assert forward_proxy.lines == [f"POST {emulator.api_url}/file/add HTTP/1.1"]


def test_all_proxy_is_used_as_requests_did(emulator, forward_proxy, proxy_env):
    proxy_env.setenv("ALL_PROXY", forward_proxy.url)
    emulator.hold()
    client, _ = client_for(emulator, attempts=1)
    assert client.add_file(PARAMS).outcome == "accepted"
    client.close()
    assert forward_proxy.lines == [f"POST {emulator.api_url}/file/add HTTP/1.1"]


def test_a_socks_proxy_is_refused_with_advice_and_without_its_password(proxy_env, emulator):
    proxy_env.setenv("HTTP_PROXY", "socks5://user:proxy-pw-77@127.0.0.1:1080")
    client, _ = client_for(emulator)
    with pytest.raises(CdnUnavailableError, match="not an http\\(s\\) proxy.*NO_PROXY") as caught:
        client.add_file(PARAMS)
    assert "proxy-pw-77" not in str(caught.value) and not emulator.requests


def test_a_request_goes_out_in_one_write_headers_and_form_together(emulator, monkeypatch):
    """urllib3 writes the header block and the body apart; each write wakes the server (issue 22)."""
    connection_class = cdn_push.one_send_pool_classes()["http"].ConnectionCls
    writes: list[bytes] = []
    real_send = connection_class.send
    monkeypatch.setattr(connection_class, "send", lambda self, data: (writes.append(data), real_send(self, data))[1])
    client, _ = client_for(emulator)
    for i in range(3):
        assert client.add_file({**PARAMS, "name": f"one-{i}.mp4"}).outcome == "accepted"
    assert len(writes) == 3 and all(data.startswith(b"POST ") and b"name=one-" in data for data in writes)
    assert [r["name"] for r in emulator.requests] == ["one-0.mp4", "one-1.mp4", "one-2.mp4"]


def test_a_proxy_that_wants_a_login_is_named_not_the_cdns_credentials(emulator, proxy_env):
    proxy = ForwardProxy(credentials=(PROXY_USER, PROXY_PASSWORD)).start()
    try:
        proxy_env.setenv("HTTP_PROXY", proxy.url)                   # no login in it
        client, _ = client_for(emulator, attempts=1)
        with pytest.raises(CdnAuthError, match=r"proxy .* wants a login \(HTTP 407\).*HTTPS_PROXY") as caught:
            client.add_file(PARAMS)
        assert "api.login" not in str(caught.value) and "password in use" not in str(caught.value)
        assert not emulator.requests
    finally:
        proxy.stop()
