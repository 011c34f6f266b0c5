"""Logging: configured only in main, scrubbed of secrets, plain under systemd."""

from __future__ import annotations

import io
import logging

import pytest

import cdn_push


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
