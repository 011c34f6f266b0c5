"""The CDN client: answer classification (pure) and retries against the real emulator."""

from __future__ import annotations

import time
from email.utils import formatdate

import pytest

import cdn_push
from cdn_push import ApiConfig, CdnAuthError, CdnClient, CdnRetriesExhausted, CdnUnavailableError, RetryPolicy, Secret
from conftest import API_LOGIN, API_PASSWORD, free_port


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
    pool = client._session().get_adapter(emulator.api_url).poolmanager
    assert len(pool.pools) == 1
    client.close()
