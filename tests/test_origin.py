"""The built-in origin and the callback receiver: a real server on 127.0.0.1, real files, the real ledger."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor


import pytest
import requests

import cdn_push
from cdn_push import CallbackInbox, Ledger, OriginServer, Pipeline, UrlSigner
from conftest import free_port, wait_for, write_files

SECRET = b"0123456789abcdef0123456789abcdef"


# -- the pure parts --------------------------------------------------------------------

@pytest.mark.parametrize("header, size, expected", [
    (None, 100, None),
    ("bytes=0-9", 100, (0, 9)),
    ("bytes=90-", 100, (90, 99)),
    ("bytes=-10", 100, (90, 99)),
    ("bytes=-500", 100, (0, 99)),
    ("bytes=50-5000", 100, (50, 99)),
    ("bytes=100-", 100, "unsatisfiable"),
    ("bytes=-0", 100, "unsatisfiable"),
    ("bytes=9-0", 100, None),            # malformed: ignored
    ("bytes=0-1,5-6", 100, None),        # several ranges: ignored, the whole file is sent
    ("items=0-1", 100, None),
    ("bytes=abc", 100, None),
    ("bytes=0-0", 0, None),              # an empty file has no ranges to serve
])
def test_parse_range(header, size, expected):
    assert cdn_push.parse_range(header, size) == expected


@pytest.mark.parametrize("encoded, expected", [
    ("a.mp4", "a.mp4"),
    ("dir/a%20b.mp4", "dir/a b.mp4"),
    ("%C3%A9/%23%3F.mp4", "é/#?.mp4"),
    ("../etc/passwd", None),
    ("a/../../etc/passwd", None),
    ("%2e%2e/etc/passwd", None),
    ("a/%2E%2E/%2e%2e/x", None),
    ("/etc/passwd", None),
    ("a//b", None),
    ("a%2Fb", None),                     # an encoded slash would hide a folder boundary
    ("a%00b", None),
    ("", None),
])
def test_safe_relpath(encoded, expected):
    assert cdn_push.safe_relpath(encoded) == expected


def test_signatures_bind_path_expiry_content_and_attempt():
    signer = UrlSigner(SECRET)
    location = signer.location("https://push.example.com", "a b/c.mp4", 2_000_000_000)
    assert location.startswith("https://push.example.com/o/2000000000/") and location.endswith("/a%20b/c.mp4")
    signature = location.split("/")[5]
    assert signer.verify(signature, "o", "2000000000", "a b/c.mp4")
    assert not signer.verify(signature, "o", "2000000001", "a b/c.mp4")
    assert not signer.verify(signature, "o", "2000000000", "a b/d.mp4")
    assert not UrlSigner(b"another secret, another world!!").verify(signature, "o", "2000000000", "a b/c.mp4")
    callback = signer.callback("https://push.example.com", "x.mp4", "ab" * 32, 2)
    assert "/cb/2/" in callback and callback.endswith("/x.mp4")


def test_origin_secret_is_created_0600_and_reused(tmp_path):
    path = tmp_path / "ledger.sqlite3.secret"
    secret, warnings = cdn_push.load_origin_secret(path, {})
    assert len(secret) == 64 and warnings == [] and (path.stat().st_mode & 0o777) == 0o600
    assert cdn_push.load_origin_secret(path, {})[0] == secret
    path.chmod(0o644)
    assert "readable by other users" in cdn_push.load_origin_secret(path, {})[1][0]
    from_env = "x" * 20
    assert cdn_push.load_origin_secret(path, {cdn_push.ENV_ORIGIN_SECRET: from_env})[0] == from_env.encode()
    with pytest.raises(cdn_push.ConfigError, match="at least 16"):
        cdn_push.load_origin_secret(path, {cdn_push.ENV_ORIGIN_SECRET: "short"})


# -- the server ---------------------------------------------------------------------------

BIG = 24 * 1024 * 1024 + 11


@pytest.fixture(scope="module")
def big_content():
    return os.urandom(BIG)


@pytest.fixture
def origin_setup(tmp_path, drop, make_config, big_content):
    write_files(drop, {"a.mp4": b"0123456789" * 10, "dir/b c#.mp4": b"bee", "empty.bin": b"",
                       "big.bin": big_content})
    outside = tmp_path / "outside.txt"
    outside.write_text("secret outside the folder")
    os.symlink(outside, drop / "link-out.txt")
    port = free_port()
    config = make_config(origin={"serve": {"listen": f"127.0.0.1:{port}", "public_url": f"http://127.0.0.1:{port}",
                                           "max_connections": 8}})
    with Ledger.open(config.ledger) as ledger:
        Pipeline(config, ledger, None).scan_and_hash()
        # the symlink's target, recorded as if it had been hashed, must still never be served
        ledger.put(cdn_push.LedgerRow("link-out.txt", 25, 1, 1, "0" * 64, "link-out.txt", "submitted"))
    signer, inbox = UrlSigner(SECRET), CallbackInbox()
    server = OriginServer(config, signer, inbox).start()
    yield config, signer, inbox, server
    server.stop()


def url_for(config, signer, relpath, expires=None):
    return signer.location(config.origin.serve.public_url, relpath, expires or int(time.time()) + 600)


def test_get_serves_the_file_with_validators(origin_setup):
    config, signer, _, _ = origin_setup
    answer = requests.get(url_for(config, signer, "dir/b c#.mp4"), timeout=5)
    assert answer.status_code == 200 and answer.content == b"bee"
    assert answer.headers["Content-Length"] == "3"
    assert answer.headers["Accept-Ranges"] == "bytes"
    assert answer.headers["ETag"] == f'"{hashlib.sha256(b"bee").hexdigest()}"'
    assert answer.headers["Last-Modified"].endswith("GMT")
    empty = requests.get(url_for(config, signer, "empty.bin"), timeout=5)
    assert empty.status_code == 200 and empty.content == b""


def test_head_has_headers_and_no_body(origin_setup):
    config, signer, _, _ = origin_setup
    answer = requests.head(url_for(config, signer, "a.mp4"), timeout=5)
    assert answer.status_code == 200 and answer.headers["Content-Length"] == "100" and answer.content == b""


@pytest.mark.parametrize("header, status, body, content_range", [
    ("bytes=0-9", 206, b"0123456789", "bytes 0-9/100"),
    ("bytes=95-", 206, b"56789", "bytes 95-99/100"),
    ("bytes=-3", 206, b"789", "bytes 97-99/100"),
    ("bytes=100-", 416, b"range not satisfiable\n", "bytes */100"),
    ("bytes=oops", 200, b"0123456789" * 10, None),
    ("bytes=0-1,4-5", 200, b"0123456789" * 10, None),
])
def test_ranges(origin_setup, header, status, body, content_range):
    config, signer, _, _ = origin_setup
    answer = requests.get(url_for(config, signer, "a.mp4"), headers={"Range": header}, timeout=5)
    assert answer.status_code == status and answer.content == body
    assert answer.headers.get("Content-Range") == content_range


def test_tampered_expired_and_missing_signatures_get_403(origin_setup):
    config, signer, _, _ = origin_setup
    good = url_for(config, signer, "a.mp4")
    base = config.origin.serve.public_url
    parts = good.split("/")
    tampered = "/".join(parts[:5] + [("0" if parts[5][0] != "0" else "1") + parts[5][1:]] + parts[6:])
    other_file = good.replace("/a.mp4", "/empty.bin")
    expired = url_for(config, signer, "a.mp4", expires=int(time.time()) - 1)
    longer = "/".join(parts[:4] + [str(int(parts[4]) + 1000)] + parts[5:])
    for url in (tampered, other_file, expired, longer, f"{base}/o/{parts[4]}//a.mp4".replace("//a", "/x/a"),
                f"{base}/o/never/{parts[5]}/a.mp4"):
        assert requests.get(url, timeout=5).status_code == 403, url


def test_traversal_and_unknown_files_get_404_even_when_signed(origin_setup):
    config, signer, _, _ = origin_setup
    base = config.origin.serve.public_url
    expires = str(int(time.time()) + 600)
    for raw in ("../outside.txt", "%2e%2e/outside.txt", "dir/%2E%2E/%2e%2e/outside.txt", "/etc/passwd",
                "dir%2F..%2F..%2Foutside.txt"):
        signature = signer.sign("o", expires, raw)
        answer = requests.get(f"{base}/o/{expires}/{signature}/{raw}", timeout=5)
        assert answer.status_code == 404, raw
    with socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1]))) as raw_socket:
        raw_socket.sendall(f"GET /o/{expires}/x/../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert b" 404 " in raw_socket.recv(200)
    assert requests.get(url_for(config, signer, "link-out.txt"), timeout=5).status_code == 404
    assert requests.get(url_for(config, signer, "dir"), timeout=5).status_code == 404
    assert requests.get(url_for(config, signer, "not-in-ledger.mp4"), timeout=5).status_code == 404
    assert requests.get(f"{base}/o/", timeout=5).status_code == 404
    assert requests.get(f"{base}/", timeout=5).status_code == 404
    assert requests.post(url_for(config, signer, "a.mp4"), timeout=5).status_code == 405


def test_a_file_modified_after_hashing_is_not_served(origin_setup, drop):
    config, signer, _, _ = origin_setup
    (drop / "a.mp4").write_bytes(b"changed!" * 20)
    answer = requests.get(url_for(config, signer, "a.mp4"), timeout=5)
    assert answer.status_code == 409 and b"changed" in answer.content


def test_fifty_concurrent_range_downloads_are_all_right(origin_setup, big_content):
    config, signer, _, _ = origin_setup
    url = url_for(config, signer, "big.bin")
    step = BIG // 50

    def fetch(i):
        start = i * step
        end = BIG - 1 if i == 49 else start + step - 1
        with requests.get(url, headers={"Range": f"bytes={start}-{end}"}, timeout=60) as answer:
            return answer.status_code, answer.content == big_content[start:end + 1]

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(fetch, range(50)))
    # max_connections is 8 here: the rest are told to come back, and they do
    for i, (status, ok) in enumerate(results):
        if status == 503:
            status, ok = wait_for(lambda: (answer := fetch(i))[0] != 503 and answer, timeout=30, interval=0.05,
                                  message=f"range {i} served after a 503")
        assert status == 206 and ok, i
    with requests.get(url, timeout=60) as whole:
        assert hashlib.sha256(whole.content).digest() == hashlib.sha256(big_content).digest()



def cached_bytes(path) -> int:
    """How much of a file the page cache holds, as util-linux's fincore counts it."""
    done = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                          capture_output=True, text=True, check=True)
    return int(done.stdout.split()[0])


@pytest.mark.skipif(not shutil.which("fincore"), reason="fincore (util-linux) is not installed")
def test_a_file_sent_whole_over_three_ranges_is_reported_once_and_leaves_the_page_cache(origin_setup, drop):
    """The CDN has all of it: its pages make room for files hashed and not fetched yet (issue 22)."""
    config, signer, inbox, _ = origin_setup
    with open(drop / "big.bin", "rb+") as handle:       # written back and read: every page cached and clean
        os.fsync(handle.fileno())
        handle.read()
    if cached_bytes(drop / "big.bin") < BIG // 2:
        pytest.skip("this file system keeps no page cache of its own (tmpfs?)")
    url = url_for(config, signer, "big.bin")
    third = BIG // 3
    assert requests.get(url, headers={"Range": f"bytes=0-{third - 1}"}, timeout=10).status_code == 206
    assert requests.get(url, headers={"Range": f"bytes={2 * third}-"}, timeout=10).status_code == 206
    assert inbox.take_fetched() == [] and cached_bytes(drop / "big.bin") > BIG // 2
    assert requests.get(url, headers={"Range": f"bytes={third}-{2 * third - 1}"}, timeout=10).status_code == 206
    assert inbox.take_fetched() == ["big.bin"]
    # What the socket's send buffer still holds stays (the owner thread drops it later: test_stages).
    wait_for(lambda: cached_bytes(drop / "big.bin") <= cdn_push.SEND_CHUNK, timeout=10, message="the pages dropped")

def test_stalled_clients_cannot_starve_the_server(origin_setup):
    config, signer, _, _ = origin_setup
    host, port = "127.0.0.1", int(config.origin.serve.public_url.rsplit(":", 1)[1])

    def connect(source):
        return socket.create_connection((host, port), source_address=(source, 0))

    # max_connections is 8, at most 4 from one address: fill every slot from three other addresses.
    idle = [connect("127.0.0.2") for _ in range(4)] + [connect("127.0.0.3") for _ in range(3)]
    slow = connect("127.0.0.4")
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    path = url_for(config, signer, "big.bin").split(str(port), 1)[1]
    slow.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    slow.recv(1)                                                                # then reads nothing
    try:
        extra = connect("127.0.0.5")                                            # one past the limit
        assert extra.recv(100).startswith(b"HTTP/1.1 503")
        extra.close()
        idle.pop().close()
        # the server may not have seen the close yet: a 503 until it has
        answer = wait_for(lambda: (got := requests.get(url_for(config, signer, "a.mp4"), timeout=5)).status_code
                          != 503 and got, timeout=10, interval=0.05, message="a slot freed by the close")
        assert answer.status_code == 200 and len(answer.content) == 100
    finally:
        for sock in idle + [slow]:
            sock.close()


# -- callbacks ---------------------------------------------------------------------------------

def callback_url(config, signer, relpath, attempt, **params):
    row_sha = hashlib.sha256(b"bee").hexdigest() if relpath == "dir/b c#.mp4" else None
    with Ledger.open(config.ledger) as ledger:
        row_sha = ledger.get(relpath).sha256
    url = signer.callback(config.callback.public_url, relpath, row_sha, attempt)
    return url + "?" + "&".join(f"{k.replace('_', '-')}={v}" for k, v in params.items())


def mark_submitted(config, relpath, attempts=1):
    with Ledger.open(config.ledger) as ledger:
        row = ledger.get(relpath)
        ledger.put(row._replace(state="submitted", attempts=attempts, accepted_name=row.name,
                                                accepted_size=row.size, accepted_sha256=row.sha256))
        return row


def apply(config, inbox):
    with Ledger.open(config.ledger) as ledger:
        pipeline = Pipeline(config, ledger, None, signer=UrlSigner(SECRET), inbox=inbox)
        pipeline.apply_callbacks()
        return pipeline.summary, ledger.get("a.mp4")


def test_success_callback_confirms_and_a_repeat_is_refused(origin_setup):
    config, signer, inbox, _ = origin_setup
    row = mark_submitted(config, "a.mp4")
    url = callback_url(config, signer, "a.mp4", 1, status="success", size=100, sha_256=row.sha256)
    assert requests.get(url, timeout=5).status_code == 200
    summary, after = apply(config, inbox)
    assert summary.confirmed == 1 and after.state == "confirmed"
    assert requests.get(url, timeout=5).status_code == 404          # repeated: nothing awaits it
    assert apply(config, inbox)[1].state == "confirmed"


def test_success_with_other_size_or_sha_is_a_failure_saying_what_differed(origin_setup):
    config, signer, inbox, _ = origin_setup
    mark_submitted(config, "a.mp4")
    url = callback_url(config, signer, "a.mp4", 1, status="success", size=99, sha_256="f" * 64)
    assert requests.get(url, timeout=5).status_code == 200
    summary, after = apply(config, inbox)
    assert after.state == "failed" and "size 99" in after.last_error and "size 100" in after.last_error


def test_fail_callback_schedules_a_resubmit_then_gives_up(origin_setup):
    config, signer, inbox, _ = origin_setup
    mark_submitted(config, "a.mp4", attempts=1)
    assert requests.get(callback_url(config, signer, "a.mp4", 1, status="fail", message="404%20error"),
                        timeout=5).status_code == 200
    _, after = apply(config, inbox)
    assert after.state == "pending" and after.retry_at > time.time() and "404 error" in after.last_error
    mark_submitted(config, "a.mp4", attempts=3)
    requests.get(callback_url(config, signer, "a.mp4", 3, status="fail", message="wrong%20file%20size"), timeout=5)
    summary, after = apply(config, inbox)
    assert after.state == "failed" and summary.failed == 1 and "wrong file size" in after.last_error


@pytest.mark.parametrize("make, status", [
    (lambda c, s: callback_url(c, s, "a.mp4", 1, status="success").replace("/cb/1/", "/cb/1/0"), 404),
    (lambda c, s: callback_url(c, s, "a.mp4", 2, status="success"), 404),                  # not this attempt
    (lambda c, s: c.callback.public_url + "/cb/1/" + "0" * 32 + "/nope.mp4?status=success", 404),
    (lambda c, s: c.callback.public_url + "/cb/1/" + "0" * 32 + "/a.mp4?status=success", 404),  # alike
    (lambda c, s: callback_url(c, s, "a.mp4", 1, status="maybe"), 400),
])
def test_forged_or_stale_callbacks_change_nothing(origin_setup, make, status):
    config, signer, inbox, _ = origin_setup
    mark_submitted(config, "a.mp4")
    assert requests.get(make(config, signer), timeout=5).status_code == status
    summary, after = apply(config, inbox)
    assert after.state == "submitted" and summary.confirmed == summary.failed == 0


# -- end to end: the emulator fetches from the built-in origin --------------------------------

@pytest.fixture
def serve_config(make_config):
    def make(**extra):
        port = free_port()
        sections = {"callback": {"wait_seconds": 60, "retry_delay": 0.2}, **extra}
        return make_config(origin={"serve": {"listen": f"127.0.0.1:{port}",
                                             "public_url": f"http://127.0.0.1:{port}"}}, **sections)
    return make


def one_shot(config):
    return cdn_push.run_one_shot(config, stop=threading.Event(), show_progress=False)


def test_varied_folder_ends_confirmed_with_matching_sha256(drop, emulator, serve_config, big_content):
    files = {"zero.bin": b"", "one.bin": b"1", "small dir/ä #?.mp4": os.urandom(5000),
             "mid.mp4": os.urandom(3 * 1024 * 1024 + 1), "big.mp4": big_content}
    write_files(drop, files)
    config = serve_config()
    summary = one_shot(config)
    assert summary.exit_code() == cdn_push.EXIT_OK and summary.confirmed == len(files), summary.line()
    assert "5 confirmed" in summary.line()
    with Ledger.open(config.ledger) as ledger:
        rows = {r.path: r for r in ledger.all_rows()}
    for relpath, content in files.items():
        assert rows[relpath].state == "confirmed"
        assert emulator.files[relpath].sha256 == hashlib.sha256(content).hexdigest()
        assert emulator.files[relpath].location.startswith(config.origin.serve.public_url + "/o/")
    assert emulator.files["big.mp4"].streams == 3


def test_fetch_failure_leads_to_resubmit_then_confirmed(drop, emulator, serve_config):
    write_files(drop, {"a.mp4": b"a" * 1000})
    emulator.fetch_faults.append("404 error")
    config = serve_config()
    summary = one_shot(config)
    assert summary.exit_code() == cdn_push.EXIT_OK and summary.confirmed == 1
    assert [r["name"] for r in emulator.requests] == ["a.mp4", "a.mp4"]
    assert emulator.files["a.mp4"].imports == 2
    with Ledger.open(config.ledger) as ledger:
        row = ledger.get("a.mp4")
    assert row.state == "confirmed" and row.attempts == 2


def test_fetch_failing_every_time_ends_failed_with_the_message(drop, emulator, serve_config):
    write_files(drop, {"a.mp4": b"a" * 10})
    emulator.fetch_faults.extend(["wrong file size"] * 3)
    config = serve_config()
    summary = one_shot(config)
    assert summary.failed == 1 and summary.exit_code() == cdn_push.EXIT_INCOMPLETE
    with Ledger.open(config.ledger) as ledger:
        row = ledger.get("a.mp4")
    assert row.state == "failed" and "wrong file size" in row.last_error and row.attempts == 3


def test_unconfirmed_files_make_the_run_incomplete(drop, serve_config, emulator):
    write_files(drop, {"a.mp4": b"a"})
    emulator.hold()
    config = serve_config(callback={"wait_seconds": 0.5})
    summary = one_shot(config)
    assert summary.unconfirmed == 1 and summary.exit_code() == cdn_push.EXIT_INCOMPLETE
    assert "1 unconfirmed" in summary.line()


def test_callbacks_with_an_external_origin(drop, emulator, origin, make_config):
    write_files(drop, {"x.mp4": b"external"})
    port = free_port()
    config = make_config(callback={"public_url": f"http://127.0.0.1:{port}", "listen": f"127.0.0.1:{port}",
                                   "wait_seconds": 30})
    summary = one_shot(config)
    assert summary.confirmed == 1 and summary.exit_code() == 0
    assert emulator.files["x.mp4"].location == origin.url.replace("http://", "http://fetcher:origin-S3cret-walrus"
                                                                  "%2F%2B%40%3A@") + "/x.mp4"


def test_the_origin_speaks_tls_with_cert_and_key(self_signed_cert, drop, make_config):
    cert, key = self_signed_cert
    write_files(drop, {"a.mp4": b"over tls"})
    port = free_port()
    config = make_config(origin={"serve": {"listen": f"127.0.0.1:{port}", "public_url": f"https://127.0.0.1:{port}",
                                           "cert": str(cert), "key": str(key)}})
    with Ledger.open(config.ledger) as ledger:
        Pipeline(config, ledger, None).scan_and_hash()
    signer = UrlSigner(SECRET)
    with OriginServer(config, signer, CallbackInbox()):
        url = signer.location(config.origin.serve.public_url, "a.mp4", int(time.time()) + 60)
        assert requests.get(url, verify=str(cert), timeout=5).content == b"over tls"
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(url, verify=True, timeout=5)


def test_bad_cert_or_busy_port_is_a_config_error(tmp_path, make_config):
    port = free_port()
    bogus = tmp_path / "bogus.pem"
    bogus.write_text("not a certificate")
    config = make_config(origin={"serve": {"listen": f"127.0.0.1:{port}", "public_url": f"https://127.0.0.1:{port}",
                                           "cert": str(bogus), "key": str(bogus)}})
    with pytest.raises(cdn_push.ConfigError, match="origin.serve.cert"):
        OriginServer(config, UrlSigner(SECRET), CallbackInbox())
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        config = make_config(origin={"serve": {"listen": f"127.0.0.1:{busy}",
                                               "public_url": f"http://127.0.0.1:{busy}"}})
        with pytest.raises(cdn_push.ConfigError, match=f"cannot listen on 127.0.0.1:{busy}.*another program "
                                                      "listens there already: stop it, or use another port"):
            OriginServer(config, UrlSigner(SECRET), CallbackInbox())


@pytest.mark.parametrize("port, error, said", [
    (80, errno.EACCES, "ports below 1024 need root"),
    (8080, errno.EACCES, ""),                    # not the low port: no such advice
    (8080, errno.EADDRINUSE, "another program listens there already"),
    (8080, errno.EADDRNOTAVAIL, ""),
])
def test_a_socket_that_cannot_listen_is_told_with_its_usual_cause(port, error, said):
    advice = cdn_push.listen_advice(port, OSError(error, os.strerror(error)))
    assert (said in advice and advice.startswith("; ")) if said else advice == ""


def test_a_file_left_unconfirmed_is_submitted_again_by_a_later_run(drop, emulator, serve_config):
    """The first run stops waiting; the CDN then fails the fetch (cdn-push is gone); a later run
    asks again and this time the file is fetched, verified and confirmed."""
    write_files(drop, {"late.mp4": b"fetched on the second try"})
    emulator.hold()
    config = serve_config(callback={"wait_seconds": 0.3, "retry_delay": 0.2})
    first = one_shot(config)
    assert first.unconfirmed == 1
    emulator.files["late.mp4"].state = "failed"          # as when the origin went away with cdn-push
    emulator.release()
    # The CDN's held fetch of the first link is over (it fails: that origin is gone), and
    # wait_seconds (0.3 s) have passed since the submit, so the file is due to be asked again.
    wait_for(lambda: emulator.fetch_order == ["late.mp4"] and emulator.wait_idle(0), message="the held fetch ended")
    with Ledger.open(config.ledger) as ledger:
        submitted_at = ledger.get("late.mp4").updated_at
    wait_for(lambda: time.time() - submitted_at >= 0.3, message="callback.wait_seconds passed since the submit")
    second = one_shot(config)
    assert second.resent == 1 and second.confirmed == 1 and second.exit_code() == cdn_push.EXIT_OK, second.line()
    assert "1 resent unconfirmed" in second.line()
    with Ledger.open(config.ledger) as ledger:
        assert ledger.get("late.mp4").state == "confirmed"


# -- opening below the folder, following no link (issue 20) -----------------------------------------------

@pytest.fixture
def beneath(tmp_path):
    """A folder with a file, a subfolder, and links and a FIFO where an uploader could plant them."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    write_files(root, {"top.mp4": b"top", "sub/inner.mp4": b"inner"})
    write_files(outside, {"inner.mp4": b"OUTSIDE", "top.mp4": b"OUTSIDE"})
    os.symlink(outside, root / "linked-dir")                       # a folder component that is a link
    os.symlink(root / "sub", root / "linked-sub")                  # ... even one that stays inside
    os.symlink(outside / "top.mp4", root / "link-out.mp4")         # a final name that is a link
    os.symlink(root / "top.mp4", root / "link-in.mp4")
    os.mkfifo(root / "fifo.mp4")                                    # no writer: a blocking open would hang
    return root


@pytest.mark.parametrize("relpath, content", [("top.mp4", b"top"), ("sub/inner.mp4", b"inner")])
def test_open_beneath_opens_a_regular_file(beneath, relpath, content):
    fd, found = cdn_push.open_beneath(str(beneath), relpath)
    with os.fdopen(fd, "rb") as handle:
        assert handle.read() == content
    assert (found.st_ino, found.st_size) == (os.stat(beneath / relpath).st_ino, len(content))


@pytest.mark.parametrize("relpath", ["linked-dir/inner.mp4", "linked-sub/inner.mp4", "link-out.mp4", "link-in.mp4",
                                     "sub", "missing.mp4", "top.mp4/x"])
def test_open_beneath_follows_no_link_and_opens_only_files(beneath, relpath):
    with pytest.raises((OSError, cdn_push.FileChangedError)):
        fd, _ = cdn_push.open_beneath(str(beneath), relpath)
        os.close(fd)


def test_open_beneath_refuses_a_fifo_at_once(beneath):
    outcome = []

    def attempt():
        try:
            outcome.append(cdn_push.open_beneath(str(beneath), "fifo.mp4"))
        except (OSError, cdn_push.FileChangedError) as exc:
            outcome.append(exc)

    opener = threading.Thread(target=attempt, daemon=True)
    opener.start()
    opener.join(5)
    assert not opener.is_alive(), "open_beneath blocked on a FIFO with no writer"
    assert isinstance(outcome[0], cdn_push.FileChangedError) and "not a regular file" in str(outcome[0])


def test_open_beneath_leaves_no_descriptor_open(beneath):
    before = len(os.listdir("/proc/self/fd"))
    for relpath in ("sub/inner.mp4", "linked-dir/inner.mp4", "link-out.mp4", "fifo.mp4", "sub"):
        try:
            fd, _ = cdn_push.open_beneath(str(beneath), relpath)
            os.close(fd)
        except (OSError, cdn_push.FileChangedError):
            pass
    assert len(os.listdir("/proc/self/fd")) == before


def test_a_folder_swapped_for_a_link_mid_request_never_serves_what_lies_outside(origin_setup, drop, tmp_path):
    """One thread swaps `dir` for a symlink to a folder outside that holds a file of the same name,
    size and mtime but other content, and back, while GETs of the signed link loop."""
    config, signer, _, _ = origin_setup
    assert not config.scan.follow_symlinks
    inside = drop / "dir" / "b c#.mp4"
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "b c#.mp4").write_bytes(b"OUT")                     # same size as b"bee"
    stamp = inside.stat()
    os.utime(outside / "b c#.mp4", ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    parked = drop.parent / "parked-dir"
    stop, swaps = threading.Event(), []

    def swap():
        while not stop.is_set():
            os.rename(drop / "dir", parked)
            os.symlink(outside, drop / "dir")
            os.unlink(drop / "dir")
            os.rename(parked, drop / "dir")
            swaps.append(1)

    swapper = threading.Thread(target=swap, daemon=True)
    url = url_for(config, signer, "dir/b c#.mp4")
    seen: dict[object, int] = {}
    swapper.start()
    try:
        with requests.Session() as session:
            def enough():
                answer = session.get(url, timeout=5)
                key = answer.content if answer.status_code == 200 else answer.status_code
                seen[key] = seen.get(key, 0) + 1
                return b"OUT" in seen or (seen.get(b"bee", 0) >= 50 and sum(seen.values()) >= 400)

            wait_for(enough, timeout=60, interval=0, message=f"400 GETs during the swaps: {seen}")
    finally:
        stop.set()
        swapper.join(10)
    assert b"OUT" not in seen, f"served the file outside the folder: {seen}"
    assert seen.get(404, 0) > 0 and seen.get(b"bee", 0) > 0, f"the swaps never met a request: {seen}"
    assert len(swaps) > 10 and set(seen) <= {b"bee", 404}, seen


# -- a backslash is a character like any other (issue 20) ---------------------------------------------------

def test_a_name_with_a_backslash_is_served_called_back_and_confirmed(drop, emulator, write_config, capsys):
    files = {"a\\b.mp4": os.urandom(3000), "dir\\x/c\\\\d.mp4": b"c" * 10, "plain.mp4": b"plain"}
    write_files(drop, files)
    port = free_port()
    serve = {"listen": f"127.0.0.1:{port}", "public_url": f"http://127.0.0.1:{port}"}
    config_path = write_config(origin={"serve": serve}, callback={"wait_seconds": 30, "retry_delay": 0.2})
    code = cdn_push.main(["--config", str(config_path)])
    out, err = capsys.readouterr()
    assert code == cdn_push.EXIT_OK and "3 confirmed" in out, out + err
    assert emulator.wait_idle(30)
    for relpath, content in files.items():
        assert emulator.files[relpath].state == "ready", relpath
        assert emulator.files[relpath].sha256 == hashlib.sha256(content).hexdigest()
    config, _ = cdn_push.load_config(config_path, {})
    with Ledger.open(config.ledger) as ledger:
        assert {row.path: row.state for row in ledger.all_rows()} == dict.fromkeys(files, "confirmed")


@pytest.mark.parametrize("encoded, expected", [("a%5Cb.mp4", "a\\b.mp4"), ("a\\b.mp4", "a\\b.mp4"),
                                               ("d%5C/x.mp4", "d\\/x.mp4"), ("%5C%5C", "\\\\")])
def test_safe_relpath_keeps_backslashes(encoded, expected):
    assert cdn_push.safe_relpath(encoded) == expected


@pytest.mark.parametrize("stamp", [0, 951782400, 1_700_000_000.5, 4_102_444_799])
def test_http_dates_match_the_standard_library(stamp):
    import email.utils

    assert cdn_push.http_date(stamp) == email.utils.formatdate(stamp, usegmt=True)


def test_without_follow_symlinks_the_origin_follows_no_link_even_to_the_hashed_file(origin_setup, drop):
    """The hashed file itself, reached through a link planted after hashing (a folder moved aside and
    a link in its place, or a link in place of the name): same inode, same bytes, and still a 404."""
    config, signer, _, _ = origin_setup
    assert not config.scan.follow_symlinks
    assert requests.get(url_for(config, signer, "dir/b c#.mp4"), timeout=5).content == b"bee"
    os.rename(drop / "dir", drop / "moved")
    os.symlink(drop / "moved", drop / "dir")
    os.rename(drop / "a.mp4", drop / "moved" / "a.mp4")
    os.symlink(drop / "moved" / "a.mp4", drop / "a.mp4")
    for relpath in ("dir/b c#.mp4", "a.mp4"):
        assert requests.get(url_for(config, signer, relpath), timeout=5).status_code == 404, relpath


@pytest.mark.parametrize("address, networks, allowed", [
    ("192.0.2.7", [], True),                                   # no list: anyone
    ("192.0.2.7", ["192.0.2.0/24"], True),
    ("198.51.100.1", ["192.0.2.0/24"], False),
    ("::ffff:192.0.2.7", ["192.0.2.0/24"], True),             # an IPv4 client on a dual-stack socket
    ("2001:db8::1", ["2001:db8::/32", "192.0.2.0/24"], True),
    ("not-an-address", ["0.0.0.0/0"], False),
])
def test_origin_allow_from_admits_only_its_networks(address, networks, allowed):
    assert cdn_push.address_allowed(address, cdn_push.address_networks(networks)) is allowed
    assert cdn_push.address_allowed(address, networks) is allowed
