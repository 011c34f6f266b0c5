"""Logging: configured only in main, scrubbed of secrets, plain under systemd."""

from __future__ import annotations

import base64
import io
import logging
import re
import sqlite3
from urllib.parse import quote, quote_plus

import pytest
import requests
import yaml

import cdn_push
from conftest import API_LOGIN, API_PASSWORD, ORIGIN_PASSWORD, ORIGIN_USER, free_port, write_files


@pytest.fixture
def stream(monkeypatch):
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    buffer = io.StringIO()
    yield buffer
    cdn_push.log.handlers.clear()


@pytest.mark.parametrize("verbosity, shown", [(-1, ["WARNING"]), (0, ["INFO", "WARNING"]),
                                              (1, ["DEBUG", "INFO", "WARNING"])])
def test_verbosity_levels(stream, verbosity, shown):
    cdn_push.configure_logging(verbosity, cdn_push.Redactor(), stream)
    cdn_push.log.debug("d")
    cdn_push.log.info("i")
    cdn_push.log.warning("w")
    assert [line.split()[2] for line in stream.getvalue().splitlines()] == shown


def test_under_systemd_lines_carry_no_timestamp(stream, monkeypatch):
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    cdn_push.configure_logging(0, cdn_push.Redactor(), stream)
    cdn_push.log.info("hello %s", "world")
    assert stream.getvalue() == "INFO hello world\n"


def test_secrets_are_masked_in_messages_arguments_and_tracebacks(stream):
    redactor = cdn_push.Redactor(["hunter2-secret"])
    cdn_push.configure_logging(0, redactor, stream)
    redactor.add(["late/added+secret"])          # secrets known only after the config is read
    try:
        raise ValueError("boom with hunter2-secret inside")
    except ValueError:
        cdn_push.log.exception("failed for %s and %s", "hunter2-secret", "late%2Fadded%2Bsecret")
    text = stream.getvalue()
    assert "hunter2" not in text and "late" not in text
    assert text.count("***") >= 3 and "Traceback" in text


def test_configuring_twice_keeps_one_handler(stream):
    cdn_push.configure_logging(0, cdn_push.Redactor(), stream)
    cdn_push.configure_logging(0, cdn_push.Redactor(), stream)
    assert len(cdn_push.log.handlers) == 1 and cdn_push.log.propagate is False
    assert logging.getLogger().handlers == [] or all(
        h not in cdn_push.log.handlers for h in logging.getLogger().handlers)


# -- every encoded form of a secret (issue 20) --------------------------------------------------------------

LONG_SECRET = "s3cr3t/P@ss word+x"       # '/', '@', ' ' and '+': every encoding differs
PLAIN_SECRET = "hunter22pass"             # nothing to encode: each form is the raw one
LOGIN = "tester"


def forms_of(secret):
    once = quote(secret, safe="")
    return {
        "raw": secret,
        "percent-encoded, upper hex": once,
        "percent-encoded, lower hex": re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), once),
        "percent-encoded but '/'": quote(secret),
        "twice encoded": quote(once, safe=""),
        "twice encoded, lower hex": re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), quote(once, safe="")),
        "'+'-form": quote_plus(secret),
        "'+'-form, lower hex": quote_plus(secret).lower(),
        "next to letters": f"abc{secret}def",
        "next to digits": f"123{quote(secret, safe='')}456",
        "basic auth header": f"Authorization: Basic {base64.b64encode(f'{LOGIN}:{secret}'.encode()).decode()}",
    }


FORMS = [(secret, kind, text) for secret in (LONG_SECRET, PLAIN_SECRET) for kind, text in forms_of(secret).items()]


@pytest.mark.parametrize("secret, kind, text", FORMS, ids=[f"{s[:6]}-{k}" for s, k, _ in FORMS])
def test_every_form_of_a_secret_is_masked(secret, kind, text):
    redactor = cdn_push.Redactor([secret, cdn_push.basic_credentials(LOGIN, secret)])
    message = f'{{"status":"error","message":"cannot fetch http://u:{text}@h.example/v.mp4"}}'
    masked = redactor(message)
    assert cdn_push.MASK in masked and text not in masked, masked
    encoded = set(forms_of(secret).values()) - {secret}
    assert not any(form in masked or form.lower() in masked.lower() for form in encoded if len(form) >= 8), masked
    assert masked.startswith('{"status":"error","message":"cannot fetch http://u:')     # the rest is kept
    assert masked.endswith('@h.example/v.mp4"}')


def test_the_plus_form_encoded_again_is_masked():
    text = quote(quote_plus(LONG_SECRET), safe="")
    assert LONG_SECRET not in text
    assert text not in cdn_push.Redactor([LONG_SECRET])(f"echo {text}")


def test_config_secrets_hold_both_passwords_and_their_basic_credentials(make_config):
    secrets = make_config().secrets()
    assert set(secrets) == {API_PASSWORD, ORIGIN_PASSWORD, cdn_push.basic_credentials(API_LOGIN, API_PASSWORD),
                            cdn_push.basic_credentials(ORIGIN_USER, ORIGIN_PASSWORD)}
    assert cdn_push.basic_credentials("a", "b") == base64.b64encode(b"a:b").decode()
    redactor = cdn_push.Redactor(secrets)
    echoed = f"Authorization: Basic {base64.b64encode(f'{API_LOGIN}:{API_PASSWORD}'.encode()).decode()}"
    assert redactor(echoed) == f"Authorization: Basic {cdn_push.MASK}"


def test_encoded_forms_are_the_documented_ones():
    forms = cdn_push.encoded_forms(LONG_SECRET)
    once = quote(LONG_SECRET, safe="")
    assert {LONG_SECRET, once, quote(LONG_SECRET), quote(once, safe=""), quote_plus(LONG_SECRET)} <= forms
    assert quote(quote_plus(LONG_SECRET), safe="") in forms and LONG_SECRET.replace("/", "\\/") in forms
    assert cdn_push.encoded_forms(PLAIN_SECRET) == {PLAIN_SECRET, base64.b64encode(PLAIN_SECRET.encode()).decode()}


@pytest.mark.parametrize("text, masked", [
    ("pw12ab", "***"),
    ("login failed for pw12ab.", "login failed for ***."),
    ("user:pw12ab@host", "user:***@host"),
    ("xpw12ab", "xpw12ab"),                  # inside a word: left alone
    ("pw12abc", "pw12abc"),
    ("1pw12ab", "1pw12ab"),
])
def test_a_short_secret_is_masked_only_where_it_stands_alone(text, masked):
    assert len("pw12ab") < cdn_push.SHORT_SECRET
    assert cdn_push.Redactor(["pw12ab"])(text) == masked


@pytest.mark.parametrize("section, key", [("api", "api.password"), ("origin", "origin.password")])
def test_load_config_warns_about_a_short_password(tmp_path, section, key):
    path = tmp_path / "config.yaml"
    block = {"api": "api:\n  password: pw12ab\n", "origin": "origin:\n  base_url: https://h.example/x\n"
             "  username: u\n  password: pw12ab\n"}[section]
    path.write_text("folder: drop\n" + block)
    path.chmod(0o600)
    _, warnings = cdn_push.load_config(path, {})
    short = [w for w in warnings if key in w and str(cdn_push.SHORT_SECRET) in w]
    assert len(short) == 1 and all("pw12ab" not in w for w in warnings), warnings
    path.write_text("folder: drop\n" + block.replace("pw12ab", "long-enough-password"))
    assert [w for w in cdn_push.load_config(path, {})[1] if key in w] == []


# -- end to end: a CDN answer echoing the origin password, twice encoded ----------------------------------------

def test_an_echoed_password_is_masked_in_the_log_ledger_status_and_status_json(tmp_path, drop, emulator,
                                                                                write_config, capsys):
    twice = quote(quote(ORIGIN_PASSWORD, safe=""), safe="")
    lower = re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), twice)
    basic = base64.b64encode(f"{API_LOGIN}:{API_PASSWORD}".encode()).decode()
    echo = (f"cannot fetch http://{ORIGIN_USER}:{twice}@origin.example/a.mp4 (retry with {lower}); "
            f"request had Authorization: Basic {basic}")
    leaks = {ORIGIN_PASSWORD, twice, lower, quote(ORIGIN_PASSWORD, safe=""), basic, API_PASSWORD}

    def file_add(params):
        return 400, {"status": "error", "message": echo}

    emulator.file_add = file_add
    write_files(drop, {"a.mp4": b"a" * 100})
    config_path = write_config()

    def leaked(text):
        return sorted(form for form in leaks if form in text or form.lower() in text.lower())

    code = cdn_push.main(["-v", "--config", str(config_path)])
    out, err = capsys.readouterr()
    assert code == cdn_push.EXIT_INCOMPLETE and "1 rejected" in out, out + err
    assert "cannot fetch" in err and cdn_push.MASK in err, err          # the answer was logged, masked
    assert not leaked(out + err), leaked(out + err)

    ledger_path = yaml.safe_load(config_path.read_text())["ledger"]
    with cdn_push.Ledger.open(ledger_path) as ledger:
        row = ledger.get("a.mp4")
    assert row.state == "rejected" and "cannot fetch" in row.last_error and "cannot fetch" in row.response
    assert not leaked(row.last_error) and not leaked(row.response), (row.last_error, row.response)
    with sqlite3.connect(ledger_path) as db:                      # every column, whatever it is called
        dump = "\n".join(db.iterdump())
    assert "cannot fetch" in dump and not leaked(dump)

    for command in (["status"], ["status", "--json"]):
        assert cdn_push.main(["--config", str(config_path), *command]) in (cdn_push.EXIT_OK,
                                                                          cdn_push.EXIT_INCOMPLETE)
        out, err = capsys.readouterr()
        assert "cannot fetch" in out and not leaked(out + err), (command, out + err)

    port = free_port()
    config = cdn_push.parse_config({**yaml.safe_load(config_path.read_text()),
                                    "monitor": {"listen": f"127.0.0.1:{port}"}}, env={}, base_dir=tmp_path)
    server = cdn_push.MonitorServer(config, cdn_push.Activity()).start()
    try:
        bodies = [requests.get(f"http://127.0.0.1:{port}{path}", timeout=5).text for path in ("/status.json", "/")]
    finally:
        server.stop()
    assert "cannot fetch" in bodies[0] and not leaked("\n".join(bodies)), leaked("\n".join(bodies))
