"""Confirmation without callbacks: file/list answers read (pure), and whole runs against the
emulator and an origin that serves only some of the files."""

from __future__ import annotations

import json
import time

import pytest

import cdn_push
from cdn_emulator import StaticOrigin
from cdn_push import CdnAuthError, CdnEndpointError, Listing, Pipeline, Stage, _TransientError
from conftest import ORIGIN_PASSWORD, ORIGIN_USER, write_files
from fakes import Clock, FakeCdnClient, step_until

POLLING = {"poll": True, "poll_interval": 0.2, "wait_seconds": 20}


# -- file/list answers -------------------------------------------------------------------------

@pytest.mark.parametrize("body, expected", [
    ("17 ready 1000\n", Listing(True, "ready", 1000)),
    ("id status size\n17 ready 1000\n", Listing(True, "ready", 1000)),           # a header line
    ("17\tFailed\t1000\n", Listing(True, "failed", 1000)),                         # tabs, upper case
    ("17,queued,\n", Listing(True, "queued", None)),                               # no size yet
    ("id=17 status=ready size=12\n", Listing(True, "ready", 12)),                   # key=value words
    ("", Listing(False)),                                                           # not listed
    ("\n\n", Listing(False)),
    ('{"status":"ok","files":[{"id":17,"status":"ready","size":1000}]}', Listing(True, "ready", 1000)),
    ('{"files":[]}', Listing(False)),
    ('[{"id":1,"name":"other.mp4","status":"failed"},{"id":2,"name":"a.mp4","status":"ready","size":"5"}]',
     Listing(True, "ready", 5)),                                                    # another file skipped
    ('{"data":{"17":{"full_name":"/a.mp4","state":"importing"}}}', Listing(True, "importing", None)),
    ('{"id":17,"status":"READY","size":9}', Listing(True, "ready", 9)),             # one file at the top
    ('{"files":[{"id":17,"status":"ready","size":"9999999999999999999999"}]}', Listing(True, "ready", None)),
])
def test_file_list_answers_are_read_in_text_and_json(body, expected):
    assert cdn_push.parse_listing(body, "a.mp4") == expected


@pytest.mark.parametrize("status, body, kind", [
    (200, "17 ready 3\n", Listing),
    (401, "", CdnAuthError),
    (403, "method not allowed for this sub-login", CdnAuthError),
    (404, '{"status":"error","message":"no such file"}', Listing),
    (404, "no such method\n", CdnEndpointError),
    (200, "<html><body>login</body></html>", CdnEndpointError),
    (302, "", CdnEndpointError),
    (429, "slow down", _TransientError),
    (503, "", _TransientError),
])
def test_file_list_http_answers_are_classified(status, body, kind):
    assert isinstance(cdn_push.classify_listing(status, body, "a.mp4"), kind)


# -- the pipeline asking, with a fake client and an injected clock ---------------------------------

def polling_config(make_config, raw_config, **confirm):
    return make_config(origin={**raw_config["origin"], "check": False},
                       confirm={**POLLING, "poll_interval": 30, **confirm})


def test_unknown_status_words_keep_the_file_submitted_and_are_named_once(make_config, raw_config, drop, caplog):
    write_files(drop, {"a.mp4": b"a" * 10, "b.mp4": b"b" * 20})
    config = polling_config(make_config, raw_config)
    words = {"a.mp4": "transcoding", "b.mp4": "transcoding"}
    client = FakeCdnClient(listing=lambda name: Listing(True, words[name], None))
    clock = Clock(time.time())
    with cdn_push.Ledger.open(config.ledger) as ledger:
        p = Pipeline(config, ledger, client, clock=clock)
        p.start_scan()
        step_until(p, lambda: len(client.sent) == 2 and p.table.count(Stage.AWAITING) == 2, "both submitted")
        assert client.listed == []                           # not before poll_interval
        clock.now += 31
        step_until(p, lambda: len(client.listed) == 2 and not p.table.count(Stage.CHECKING), "the first questions")
        assert {r.state for r in ledger.all_rows()} == {"submitted"}
        warned = [r.message for r in caplog.records if "transcoding" in r.message]
        assert len(warned) == 1, warned                                      # named once, not per file
        assert "a status word cdn-push does not know" in warned[0] and "confirm.ready_states" in warned[0]
        row = ledger.get("a.mp4")
        assert row.retry_at - clock.now == pytest.approx(60, abs=1)          # backing off: twice the gap
        words["a.mp4"] = words["b.mp4"] = "ready"
        clock.now += 61
        step_until(p, lambda: {r.state for r in ledger.all_rows()} == {"confirmed"}, "the confirmations")
        assert p.finished() and p.summary.confirmed == 2
        p.halt()


def test_a_failed_import_found_by_asking_is_sent_again_then_confirmed(make_config, raw_config, drop):
    write_files(drop, {"a.mp4": b"a" * 10})
    config = polling_config(make_config, raw_config)
    answers = iter([Listing(True, "failed", None), Listing(True, "ready", 10)])
    client = FakeCdnClient(listing=lambda name: next(answers))
    clock = Clock(time.time())
    with cdn_push.Ledger.open(config.ledger) as ledger:
        p = Pipeline(config, ledger, client, clock=clock)
        p.start_scan()
        step_until(p, lambda: getattr(ledger.get("a.mp4"), "state", None) == "submitted", "the request answered")
        clock.now += 31
        step_until(p, lambda: ledger.get("a.mp4").state == "pending", "the failure")
        assert "file/list reports it 'failed'" in ledger.get("a.mp4").last_error
        assert not p.finished()                       # a one-shot run waits for the resend
        clock.now += 600
        step_until(p, lambda: len(client.sent) == 2 and ledger.get("a.mp4").state == "submitted", "the resend")
        clock.now += 31
        step_until(p, lambda: ledger.get("a.mp4").state == "confirmed", "the resend confirmed")
        assert client.sent == ["a.mp4", "a.mp4"] and p.finished()
        p.halt()


def test_a_login_refused_file_list_stops_the_questions_not_the_run(make_config, raw_config, drop, caplog):
    write_files(drop, {"a.mp4": b"a" * 10})
    config = polling_config(make_config, raw_config)
    refused = CdnAuthError("the CDN refused file/list (HTTP 403)")
    client = FakeCdnClient(listing=lambda name: refused)
    clock = Clock(time.time())
    with cdn_push.Ledger.open(config.ledger) as ledger:
        p = Pipeline(config, ledger, client, clock=clock)
        p.start_scan()
        step_until(p, lambda: getattr(ledger.get("a.mp4"), "state", None) == "submitted", "the request answered")
        clock.now += 31
        step_until(p, lambda: client.listed, "the question")
        step_until(p, lambda: p.finished(), "the end of the run")
        p.halt()
        assert p.summary.fatal is None and ledger.get("a.mp4").state == "submitted"
    assert len(client.listed) == 1 and "refused file/list" in caplog.text


# -- whole runs against the emulator ----------------------------------------------------------------

def run_main(capsys, config_path, *args):
    code = cdn_push.main(["--config", str(config_path), *args])
    return code, capsys.readouterr()


@pytest.fixture
def partial_origin(tmp_path):
    """An origin (the user's own web server) that serves only what the test puts in its folder."""
    served = tmp_path / "served"
    served.mkdir()
    server = StaticOrigin(served, username=ORIGIN_USER, password=ORIGIN_PASSWORD).start()
    yield served, server
    server.stop()


def test_an_own_origin_missing_files_fails_them_and_the_next_run_resends_exactly_those(
        drop, emulator, write_config, raw_config, partial_origin, capsys):
    served, server = partial_origin
    files = {f"{i}.mp4": b"%d" % i * 1000 for i in range(6)}
    write_files(drop, files)
    write_files(served, {name: content for name, content in files.items() if int(name[0]) % 2 == 0})
    config = write_config(origin={**raw_config["origin"], "base_url": server.url, "check": False},
                          confirm=POLLING, callback={"max_attempts": 2, "retry_delay": 0.1})
    code, out = run_main(capsys, config)
    assert code == cdn_push.EXIT_INCOMPLETE, out.err
    code, shown = run_main(capsys, config, "status", "--json")
    states = {f["path"]: f["state"] for f in json.loads(shown.out)["files"]}
    assert states == {name: "confirmed" if int(name[0]) % 2 == 0 else "failed" for name in files}
    failed = [f for f in json.loads(shown.out)["files"] if f["state"] == "failed"]
    assert all("file/list reports it 'failed'" in f["last_error"] for f in failed), failed
    sent_before = len(emulator.requests)
    write_files(served, files)                          # the origin serves every file now
    code, out = run_main(capsys, config)
    assert code == cdn_push.EXIT_OK, out.err
    assert sorted(r["name"] for r in emulator.requests[sent_before:]) == ["1.mp4", "3.mp4", "5.mp4"]
    code, shown = run_main(capsys, config, "status", "--json")
    assert json.loads(shown.out)["counts"]["confirmed"] == 6


def test_a_later_run_confirms_what_an_earlier_run_left_submitted(drop, emulator, write_config, raw_config, capsys):
    write_files(drop, {"a.mp4": b"a" * 5000, "b.mp4": b"b" * 7000})
    emulator.hold()                                        # the CDN does not import while the first run waits
    config = write_config(confirm={**POLLING, "wait_seconds": 0.5})
    code, out = run_main(capsys, config)
    assert code == cdn_push.EXIT_INCOMPLETE and "not confirmed by the CDN yet" in out.err
    emulator.release()
    assert emulator.wait_idle(30)
    code, out = run_main(capsys, config)
    assert code == cdn_push.EXIT_OK, out.err
    assert "2 confirmed" in out.out and len(emulator.requests) == 2


@pytest.mark.parametrize("list_format", ["json", "text"])
def test_confirmation_by_asking_works_with_either_answer_form_and_through_rate_limits(
        drop, emulator, write_config, capsys, list_format):
    write_files(drop, {f"{i}.mp4": b"x%d" % i for i in range(4)})
    emulator.list_format = list_format
    config = write_config(confirm=POLLING)
    emulator.list_faults = ["429:1", "503", "429"]       # the first questions meet these
    code, out = run_main(capsys, config, "-v")
    assert code == cdn_push.EXIT_OK, out.err
    assert "4 confirmed" in out.out
    told = [line for line in out.err.splitlines() if "confirmed 0.mp4 through file/list" in line]
    # file/list carries no sha-256: the line says what it did vouch for, never "verified size and sha-256"
    assert len(told) == 1 and "through file/list: the CDN lists it '" in told[0] and "sha-256" not in told[0], told


def test_a_changed_file_is_sent_at_once_not_when_its_old_content_was_due_a_question(make_config, raw_config, drop):
    write_files(drop, {"a.mp4": b"first"})
    config = polling_config(make_config, raw_config, poll_interval=3600)
    client = FakeCdnClient(listing=lambda name: Listing(True, "queued", None))
    with cdn_push.Ledger.open(config.ledger) as ledger:
        p = Pipeline(config, ledger, client)
        p.start_scan()
        step_until(p, lambda: getattr(ledger.get("a.mp4"), "state", None) == "submitted", "the first request")
        p.halt()
        write_files(drop, {"a.mp4": b"second version"})       # found by the next pass, an hour old
        p = Pipeline(config, ledger, client)
        p.start_scan()
        step_until(p, lambda: len(client.sent) == 2, "the changed content sent", timeout=5)
        p.halt()
    assert int(client.requests[-1]["size"]) == len(b"second version")


# -- "already in the CDN" is not yet "verified" where file/list can be asked -------------------------

def exists_answer(params):
    return cdn_push.CdnAnswer("exists", 409, "file already exists with the same size and chksum", "{}")


def callback_config(make_config, raw_config, **confirm):
    return make_config(origin={**raw_config["origin"], "check": False},
                       callback={"public_url": "http://127.0.0.1:9/cb", "listen": "127.0.0.1:0"},
                       confirm={**POLLING, **confirm})


def test_already_there_with_callbacks_is_confirmed_by_file_list_asked_at_once(make_config, raw_config, drop):
    """The CDN also says "exists" while an earlier request for the same content is still being
    imported: file/list, asked at once (no callback follows), has the last word."""
    write_files(drop, {"a.mp4": b"a" * 10})
    config = callback_config(make_config, raw_config, poll_interval=30)
    client = FakeCdnClient(exists_answer)
    clock = Clock(time.time())
    with cdn_push.Ledger.open(config.ledger) as ledger:
        p = Pipeline(config, ledger, client, clock=clock, signer=cdn_push.UrlSigner(b"k" * 32),
                     inbox=cdn_push.CallbackInbox())
        p.start_scan()
        step_until(p, lambda: getattr(ledger.get("a.mp4"), "state", None) == "confirmed", "the confirmation")
        assert client.listed == ["a.mp4"] and p.summary.confirmed == 1 and p.finished()
        p.halt()


def test_already_there_whose_earlier_import_fails_is_sent_again(make_config, raw_config, drop):
    write_files(drop, {"a.mp4": b"a" * 10})
    config = callback_config(make_config, raw_config, poll_interval=30)
    client = FakeCdnClient(exists_answer, listing=lambda name: Listing(True, "failed", None))
    clock = Clock(time.time())
    with cdn_push.Ledger.open(config.ledger) as ledger:
        p = Pipeline(config, ledger, client, clock=clock, signer=cdn_push.UrlSigner(b"k" * 32),
                     inbox=cdn_push.CallbackInbox())
        p.start_scan()
        step_until(p, lambda: client.listed and ledger.get("a.mp4").state == "pending", "the failure found")
        assert "file/list reports it 'failed'" in ledger.get("a.mp4").last_error and p.summary.confirmed == 0
        p.halt()


def test_already_there_with_callbacks_and_no_file_list_is_confirmed_as_answered(make_config, raw_config, drop):
    write_files(drop, {"a.mp4": b"a" * 10})
    config = callback_config(make_config, raw_config, poll=False)
    client = FakeCdnClient(exists_answer)
    with cdn_push.Ledger.open(config.ledger) as ledger:
        p = Pipeline(config, ledger, client, signer=cdn_push.UrlSigner(b"k" * 32), inbox=cdn_push.CallbackInbox())
        p.start_scan()
        step_until(p, lambda: getattr(ledger.get("a.mp4"), "state", None) == "confirmed", "confirmed")
        assert client.listed == [] and p.summary.confirmed == 1
        p.halt()


def test_already_there_without_callbacks_is_asked_about_at_once_not_after_poll_interval(
        make_config, raw_config, drop):
    write_files(drop, {"a.mp4": b"a" * 10})
    config = polling_config(make_config, raw_config)            # poll_interval 30 s, a clock that stands
    client = FakeCdnClient(exists_answer)
    with cdn_push.Ledger.open(config.ledger) as ledger:
        p = Pipeline(config, ledger, client, clock=Clock(time.time()))
        p.start_scan()
        step_until(p, lambda: getattr(ledger.get("a.mp4"), "state", None) == "confirmed", "confirmed")
        assert client.listed == ["a.mp4"]
        p.halt()
