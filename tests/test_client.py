"""The CDN client: answer classification (pure) and retries against the real emulator."""

from __future__ import annotations

import base64
import hashlib
import time
from email.utils import formatdate

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
    (403, '{"message":"method not allowed for this login"}', "auth"),
    (403, "", "auth"),
    (403, "location host is blocked", "rejected"),
    (429, "slow down", "retry"),
    (408, "", "retry"),
    (500, "boom", "retry"),
    (503, '{"message": "file already exists"}', "retry"),
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
