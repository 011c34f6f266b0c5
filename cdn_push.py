#!/usr/bin/env python3
"""cdn-push: push a folder of video files into a pull-based video CDN and know it arrived.

The CDN imports a file by downloading it from a location URL named in a ``file/add``
request, then verifies its size and sha-256. cdn-push walks (or watches) a folder, hashes
each file, sends one import request per new or changed file, retries what can be retried,
can serve the folder itself and take the CDN's callbacks, and records every step in a
SQLite ledger, so that a second run does nothing when nothing changed.

Usage::

    cdn-push [run]             # one pass over the folder (cron); run --dry-run to look first
    cdn-push watch             # the service: watch the folder, full passes alongside
    cdn-push status [--json]   # what the ledger knows
    cdn-push reload            # make a running service reread its configuration
    cdn-push demo              # local round trip with the CDN emulator
    cdn-push help [COMMAND]    # every command and option

(`cdn-push` is the command install.sh puts on PATH; `python cdn_push.py ...` works the same.)

Sections, in dependency order (each under a banner of its name):

    Constants and exit codes   states, decisions, exit codes, sizes
    Errors                     one root (CdnPushError), a class per area, the one error -> exit code map
    Untrusted text             printable(), strict numbers, signed links masked (pure)
    Config                     the YAML file to a frozen Config: every key checked and named (pure)
    Rules and requests         globs, per-file overrides, locations, file/add fields (pure)
    Redaction and logging      printable(), Redactor, log formatting set up and torn down by main
    Scan and hash              the folder walk one folder at a time, sha-256 of a file
    Ledger                     SQLite: rows, queries, migrations, the lock, private state files
    CDN client                 answers classified (pure); file/add with bounded retries
    Origin and callbacks       the built-in origin: signed links, callbacks, a hardened server
    Pipeline                   the decide step (pure); scan, hash, submit and confirm as stages; the
                               fetch window that keeps hashing within the page cache's reach of the fetch
    Status page                /status.json rendered as HTML (pure)
    Monitor                    the read-only page, /status.json and /metrics listener
    One-shot runs              what a run needs, the origin and monitor around it, one pass
    Watch service              events, settling, rescans, reload, systemd notifications
    Status, reload and demo    the small commands
    CLI                        subcommands, signals, main

See README.md for a user's guide and docs/configuration.md for every configuration key.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import enum
import errno
import fcntl
import functools
import hashlib
import heapq
import hmac
import html
import importlib.util
import io
import itertools
import json
import logging
import math
import operator
import os
import queue
import random
import re
import select
import signal
import socket
import sqlite3
import stat
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait as futures_wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import (Any, Callable, Container, Iterable, Iterator, KeysView, Mapping, NamedTuple, Protocol, Sequence,
                    runtime_checkable)
from urllib.parse import parse_qsl, quote, quote_plus, unquote, urlencode, urlsplit, urlunsplit

# Third-party packages are imported where they are used: a cron run over an unchanged folder is
# dominated by interpreter start-up, and they are a third of it. `main` says which are missing.
REQUIRED_PACKAGES = ("yaml", "requests", "tenacity", "tqdm", "watchdog", "prometheus_client")


def missing_packages() -> list[str]:
    return [name for name in REQUIRED_PACKAGES if importlib.util.find_spec(name) is None]

__version__ = "0.4.2"

log = logging.getLogger("cdn_push")


# ----------------------------------------------------------------------------
# Constants and exit codes
# ----------------------------------------------------------------------------

EXIT_OK = 0               # every file is imported (or waiting to settle)
EXIT_INCOMPLETE = 1       # some files were rejected, failed, conflict or are unreadable
EXIT_USAGE = 2            # bad command line or configuration
EXIT_LOCKED = 3           # another cdn-push holds the ledger's lock
EXIT_CDN_UNAVAILABLE = 4  # CDN unreachable, or credentials refused
EXIT_LEDGER = 5           # the ledger cannot be opened or written
EXIT_ORIGIN = 6           # the CDN could not fetch from the origin as configured (checked before sending)
EXIT_NO_SERVICE = 7       # reload: no running service uses this ledger
EXIT_BUG = 70             # a fault in cdn-push itself (EX_SOFTWARE): please report it

ENV_CONFIG = "CDN_PUSH_CONFIG"
ENV_API_PASSWORD = "CDN_PUSH_API_PASSWORD"
ENV_ORIGIN_PASSWORD = "CDN_PUSH_ORIGIN_PASSWORD"
ENV_ORIGIN_SECRET = "CDN_PUSH_ORIGIN_SECRET"

DEFAULT_CONFIG_NAME = "config.yaml"
DEFAULT_MONITOR = ("127.0.0.1", 8765)
DEFAULT_API_URL = "https://cp.ahcdn.com/api2"
ORIGIN_SCHEMES = ("http", "https", "ftp", "rsync", "rsync+ssh", "s3")

STATE_PENDING = "pending"
STATE_SUBMITTED = "submitted"
STATE_CONFIRMED = "confirmed"
STATE_REJECTED = "rejected"
STATE_FAILED = "failed"
STATE_GONE = "gone"             # imported, then deleted (or moved) in the folder: the CDN may still hold it
STATES = (STATE_PENDING, STATE_SUBMITTED, STATE_CONFIRMED, STATE_REJECTED, STATE_FAILED, STATE_GONE)
ACCEPTED_STATES = (STATE_SUBMITTED, STATE_CONFIRMED)
CONFLICT = "conflict"     # shown, not stored: accepted once, changed since, and no_replace keeps the old one

# What the decide step concludes for one file on disk.
DECISION_NEW = "new"
DECISION_CHANGED = "changed"
DECISION_UNCHANGED = "unchanged"
DECISION_CONFLICT = "conflict"
DECISION_STILL_REJECTED = "still-rejected"
DECISION_UNCONFIRMED = "unconfirmed"     # accepted long ago, never confirmed: submit again

OVERRIDE_KEYS = ("protection", "speed", "buffer", "fetch_prio", "no_replace")
TEMPORARY_PATTERNS = ("*.part", "*.tmp", "*.crdownload", "~$*")
# rsync writes into ".<name>.XXXXXX" and renames when done.
RSYNC_TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9]{6}$", re.S)

HASH_BUFFER_SIZE = 128 * 1024   # measured: larger buffers are no faster
HASH_INLINE_SIZE = 1024 * 1024  # smaller files are hashed on the scanning thread (see Pipeline._hash_slice)
SCAN_COMMIT_EVERY = 1000        # ledger rows per transaction during the scan
PROGRESS_LOG_SECONDS = 10.0     # while files are sent, an INFO line this often
PENDING_PAGE = 500              # pending rows read from the ledger at a time
MAX_RECORDED_BODY = 2000        # characters of a CDN answer kept in the ledger
MASK = "***"
SHORT_SECRET = 8    # shorter secrets are masked only where they stand alone, and a config warning says so
ANSWER_GRACE = 300.0            # seconds a callback may wait for our record of the CDN's answer
RESUBMIT_DELAY_MAX = 300.0      # longest wait before an import the CDN failed is sent again (unless retry_delay is longer)
SCHEMA_VERSION = 3


# ----------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------

class CdnPushError(Exception):
    """Root of every error cdn-push raises on purpose."""


class StopRequested(Exception):
    """A stop (SIGTERM, Ctrl-C) cut a wait short: a signal, not an error; nothing failed."""


class ConfigError(CdnPushError):
    """The command line or the configuration is wrong; the message names the key."""


class LedgerError(CdnPushError):
    """The ledger cannot be opened, read or written."""


class NoServiceError(CdnPushError):
    """`reload` found no running service to signal."""


class LedgerFullError(LedgerError):
    """Too little room left under the ledger to record more answers: nothing more is sent, but what
    was sent is still served and confirmed (the room kept in reserve records that)."""


class LockedError(LedgerError):
    """Another cdn-push process holds the ledger's lock."""


class CdnError(CdnPushError):
    """Talking to the CDN's API went wrong."""


class CdnAuthError(CdnError):
    """The CDN refused the API login or password: no file can succeed."""


class CdnUnavailableError(CdnError):
    """The CDN could not be reached within the retry budget."""


class CdnEndpointError(CdnError):
    """The answer is about the API endpoint (no such method, an HTML page, a redirect), not the file."""


class CdnRetriesExhausted(CdnError):
    """The CDN kept answering with a temporary error for one file."""


class OriginError(CdnPushError):
    """The CDN could not fetch from the origin as configured: checked before anything is sent."""


class _TransientError(CdnError):
    """One attempt failed in a way that is worth retrying."""

    def __init__(self, message: str, *, retry_after: float | None = None,
                 connection: bool = False) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.connection = connection


# The one mapping from errors to exit codes; the first class that matches wins.
EXIT_FOR_ERROR: tuple[tuple[type[BaseException], int], ...] = (
    (ConfigError, EXIT_USAGE),
    (LockedError, EXIT_LOCKED),
    (LedgerError, EXIT_LEDGER),
    (OriginError, EXIT_ORIGIN),
    (NoServiceError, EXIT_NO_SERVICE),
    (CdnError, EXIT_CDN_UNAVAILABLE),
    (CdnPushError, EXIT_INCOMPLETE),
)


def exit_code_for(exc: BaseException) -> int:
    return next((code for kind, code in EXIT_FOR_ERROR if isinstance(exc, kind)), EXIT_BUG)


# ----------------------------------------------------------------------------
# Untrusted text
# ----------------------------------------------------------------------------

UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]")
SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in SHORT_ESCAPES:
        return SHORT_ESCAPES[char]
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


def ascii_number(text: str, digits: int) -> bool:
    """ASCII digits only, at most `digits` of them: int() would also take '²', '٣' or a 5000-digit number."""
    return 0 < len(text) <= digits and text.isascii() and text.isdigit()


def files(count: int) -> str:
    return plural(count, "file")


def plural(count: int, word: str) -> str:
    """'1 conflict', '2 conflicts': English for counts in messages (every word used takes an s)."""
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def printable(text: str) -> str:
    """Untrusted text (file names, CDN answers, request paths) safe for a log line, the ledger or a
    terminal: control characters, ANSI escapes and bidi overrides shown as escapes; pure."""
    return UNPRINTABLE.sub(_escape, text) if UNPRINTABLE.search(text) else text


SIGNED_PATH = re.compile(r"/(o/[^/\s]*|cb/[^/\s]*)/[^/\s]+/")


def mask_signed_paths(text: str) -> str:
    """Signed links and callback tokens out of a log line: they would let a reader fetch or forge."""
    return SIGNED_PATH.sub(lambda m: f"/{m.group(1)}/{'<token>' if m.group(1).startswith('cb') else '<signature>'}/",
                           text)



# ----------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------

def basic_credentials(login: str, password: str) -> str:
    """What an `Authorization: Basic` header holds for a login and password."""
    import base64

    return base64.b64encode(f"{login}:{password}".encode()).decode("ascii")


class Secret:
    """A password that never shows itself in repr, str, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str = "") -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return f"Secret({MASK!r})" if self._value else "Secret('')"

    __str__ = __repr__


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6
    max_seconds: float = 300.0
    backoff_base: float = 1.0
    backoff_max: float = 60.0


@dataclass(frozen=True)
class ApiConfig:
    url: str = DEFAULT_API_URL
    login: str = ""
    password: Secret = field(default_factory=Secret)
    timeout: float = 30.0
    callback_param: str = "callback"
    verify_tls: bool = True
    ca_bundle: str | None = None
    rate_limit: float = 0.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    password_from: str = ""         # where the password in use came from, for messages
    auth: str = "basic"             # "otp": a one-time password per request instead of basic auth
    password_file: str | None = None


@dataclass(frozen=True)
class ServeConfig:
    """The built-in origin: cdn-push serves the folder itself over signed URLs."""
    listen_host: str
    listen_port: int
    public_url: str
    cert: str | None = None
    key: str | None = None
    link_ttl: float = 7 * 86400.0
    max_connections: int = 64
    header_timeout: float = 15.0    # TLS handshake plus request line and headers, in all
    idle_timeout: float = 15.0      # between requests on a kept connection; longest stall of a download
    allow_from: tuple[str, ...] = ()    # CIDRs of the CDN's fetch agents; empty: any address

    @property
    def max_per_client(self) -> int:
        """No one address may take more than half the slots: the CDN and its callbacks always get in."""
        return max(1, self.max_connections // 2)


@dataclass(frozen=True)
class MonitorConfig:
    """The status page and metrics listener; `listen` None: off. `chosen`: set in the file (a
    one-shot run serves it only then; watch serves the default too)."""
    listen_host: str | None = DEFAULT_MONITOR[0]
    listen_port: int = DEFAULT_MONITOR[1]
    allow_remote: bool = False
    chosen: bool = False
    allowed_hosts: tuple[str, ...] = ()     # Host header names beside IP addresses and localhost


@dataclass(frozen=True)
class OriginConfig:
    base_url: str = ""
    username: str = ""
    password: Secret = field(default_factory=Secret)
    serve: ServeConfig | None = None
    secret_file: Path | None = None
    check: bool = True          # fetch once through the configured address before the first request

    @property
    def identity(self) -> str:
        """Where the CDN fetches from; when it changes, links already handed out may no longer work."""
        return f"serve {self.serve.public_url}" if self.serve else self.base_url


@dataclass(frozen=True)
class ConfirmConfig:
    """How cdn-push learns that the CDN finished an import: its callbacks, and where none come (or
    none can), asking file/list. `wait_seconds` is how long a one-shot run waits for either."""
    poll: bool = True
    poll_interval: float = 30.0         # seconds before the first question; later ones back off
    ready_states: tuple[str, ...] = ("ready",)
    failed_states: tuple[str, ...] = ("failed",)
    wait_seconds: float = 240.0

    @property
    def poll_cap(self) -> float:
        """The longest wait between two questions about one file."""
        return max(self.poll_interval, min(16 * self.poll_interval, 3600.0))


@dataclass(frozen=True)
class CallbackConfig:
    """Where the CDN reports each import's end; an empty public_url: no callbacks."""
    public_url: str = ""
    listen_host: str = ""
    listen_port: int = 0
    wait_seconds: float = ConfirmConfig.wait_seconds    # set from confirm.wait_seconds
    max_attempts: int = 3
    retry_delay: float = 10.0

    @property
    def enabled(self) -> bool:
        return bool(self.public_url)


@dataclass(frozen=True)
class DeleteConfig:
    """Local deletes sent to the CDN (file/delete): off unless asked for, and never in bulk."""
    enabled: bool = False
    grace_seconds: float = 3600.0       # how long a file must have been gone before it is deleted
    max_per_pass: int = 100             # more files gone in one pass than this: nothing is deleted


@dataclass(frozen=True)
class Rule:
    match: str
    overrides: Mapping[str, Any]


@dataclass(frozen=True)
class ScanConfig:
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    skip_hidden: bool = True
    skip_temporary: bool = True
    settle_seconds: float = 30.0
    follow_symlinks: bool = False
    rescan_interval: float = 3600.0
    poll: bool = False
    poll_interval: float = 5.0
    allow_sparse: bool = False          # files with far fewer blocks than bytes (a 1 TB file of holes)
    max_size: int = 0                   # bytes; 0: no limit


@dataclass(frozen=True)
class Config:
    folder: Path
    ledger: Path
    api: ApiConfig
    origin: OriginConfig
    name_prefix: str = ""
    defaults: Mapping[str, Any] = field(default_factory=dict)
    rules: tuple[Rule, ...] = ()
    scan: ScanConfig = field(default_factory=ScanConfig)
    hash_workers: int = 2
    submit_workers: int = 4
    source: str = "<config>"
    callback: CallbackConfig = field(default_factory=CallbackConfig)
    confirm: ConfirmConfig = field(default_factory=ConfirmConfig)
    delete: DeleteConfig = field(default_factory=DeleteConfig)
    monitor: "MonitorConfig" = field(default_factory=lambda: MonitorConfig())
    # Files that hold secrets or state and lie inside the folder: (relative path, the key naming it).
    private_files: tuple[tuple[str, str], ...] = ()

    def secrets(self) -> list[str]:
        """Every secret a message could hold, the Basic-auth forms of the login/password pairs included."""
        pairs = [(self.api.login, self.api.password), (self.origin.username, self.origin.password)]
        return [s.reveal() for s in (self.api.password, self.origin.password) if s] + [
            basic_credentials(login, password.reveal()) for login, password in pairs if password]

    @property
    def serves_http(self) -> bool:
        """cdn-push runs its own HTTP server: the built-in origin, callbacks, or both."""
        return self.origin.serve is not None or self.callback.enabled


CONFIG_KEYS: dict[str, Any] = {
    "folder": None,
    "name_prefix": None,
    "ledger": None,
    "workers": {"hash": None, "submit": None},
    "api": {"url": None, "login": None, "password": None, "password_file": None, "auth": None, "timeout": None,
            "callback_param": None, "verify_tls": None, "ca_bundle": None,
            "rate_limit": None,
            "retry": {"attempts": None, "max_seconds": None, "backoff_base": None,
                      "backoff_max": None}},
    "origin": {"base_url": None, "username": None, "password": None, "secret_file": None, "check": None,
               "serve": {"listen": None, "public_url": None, "cert": None, "key": None,
                         "link_ttl": None, "max_connections": None, "header_timeout": None,
                         "idle_timeout": None, "allow_from": None}},
    "confirm": {"poll": None, "poll_interval": None, "ready_states": None, "failed_states": None,
                "wait_seconds": None},
    "delete": {"enabled": None, "grace_seconds": None, "max_per_pass": None},
    "callback": {"public_url": None, "listen": None, "wait_seconds": None, "max_attempts": None,
                 "retry_delay": None},
    "monitor": {"listen": None, "allow_remote": None, "allowed_hosts": None},
    "defaults": dict.fromkeys(OVERRIDE_KEYS),
    "rules": None,
    "scan": {"include": None, "exclude": None, "skip_hidden": None,
             "skip_temporary": None, "settle_seconds": None, "follow_symlinks": None,
             "rescan_interval": None, "poll": None, "poll_interval": None, "allow_sparse": None,
             "max_size": None},
}

# What a reload (SIGHUP, `cdn_push.py reload`) does with each key: "applied" at once, or "restart"
# (refused while running: the service keeps its settings and says to restart). Longest prefix wins.
ON_RELOAD = {
    "folder": "applied", "name_prefix": "applied", "ledger": "restart",
    "workers.hash": "restart", "workers.submit": "restart",
    "api": "applied", "origin": "applied", "origin.serve": "restart", "origin.secret_file": "restart",
    "callback": "applied", "callback.public_url": "restart", "callback.listen": "restart",
    "confirm": "applied", "delete": "applied", "monitor": "restart",
    "defaults": "applied", "rules": "applied", "scan": "applied",
}


def on_reload(dotted: str) -> str | None:
    """ON_RELOAD's word for a dotted key, or None if the table misses it."""
    matches = [key for key in ON_RELOAD if dotted == key or dotted.startswith(key + ".")]
    return ON_RELOAD[max(matches, key=len)] if matches else None


# Older names still read, each beside the key it stands for; the example file shows only the new one.
CONFIG_ALIASES = {"callback.wait_seconds": "confirm.wait_seconds"}

SPEED_FORMAT = re.compile(r"^\d+(\.\d+)?\s*([kKmMgG]|%)?$")
BUFFER_FORMAT = re.compile(r"^\d+(\.\d+)?$")


def _check_keys(section: Mapping[str, Any], known: Mapping[str, Any], prefix: str) -> None:
    for key in section:
        if not isinstance(key, str) or key not in known:
            dotted = f"{prefix}{key}"
            import difflib      # only for a mistake: a run over a good file does not pay for it

            hint = difflib.get_close_matches(str(key), list(known), n=1)
            suggestion = f" (did you mean '{prefix}{hint[0]}'?)" if hint else ""
            raise ConfigError(f"unknown key '{dotted}'{suggestion}")
        if isinstance(known[key], dict) and isinstance(section[key], Mapping):
            _check_keys(section[key], known[key], f"{prefix}{key}.")


def _mapping(value: Any, key: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"'{key}' must be a mapping of keys to values, not {type(value).__name__}")
    return value


def _string(value: Any, key: str, *, required: bool = False) -> str:
    if value is None or value == "":
        if required:
            raise ConfigError(f"'{key}' is required")
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ConfigError(f"'{key}' must be a string, not {type(value).__name__}")
    return str(value)


def _boolean(value: Any, key: str, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ConfigError(f"'{key}' must be true or false, not {value!r}")
    return value


def _number(value: Any, key: str, default: float, *, minimum: float = 0.0,
            integer: bool = False) -> Any:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            integer and not isinstance(value, int)):
        kind = "a whole number" if integer else "a number"
        raise ConfigError(f"'{key}' must be {kind}, not {value!r}")
    if value < minimum or (isinstance(value, float) and not math.isfinite(value)):
        raise ConfigError(f"'{key}' must be at least {minimum}, not {value!r}")
    return value


def _patterns(value: Any, key: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"'{key}' must be a list of glob patterns")
    return tuple(value)


def _overrides(value: Any, key: str) -> dict[str, Any]:
    """Validate protection/speed/buffer/fetch_prio/no_replace; None unsets a default."""
    section = _mapping(value, key)
    result: dict[str, Any] = {}
    for name, raw in section.items():
        dotted = f"{key}.{name}"
        if name not in OVERRIDE_KEYS:
            raise ConfigError(f"unknown key '{dotted}' (known: {', '.join(OVERRIDE_KEYS)})")
        if raw is None:
            result[name] = None
        elif name == "no_replace":
            result[name] = _boolean(raw, dotted, False)
        elif name == "speed":
            text = _string(raw, dotted)
            if not SPEED_FORMAT.match(text):
                raise ConfigError(f"'{dotted}' must look like 300K, 2M or 130%, not {raw!r}")
            result[name] = text.replace(" ", "")
        elif name == "buffer":
            text = _string(raw, dotted)
            if not BUFFER_FORMAT.match(text):
                raise ConfigError(f"'{dotted}' must be seconds (5.0) or bytes (123456), not {raw!r}")
            result[name] = text
        else:
            result[name] = _string(raw, dotted)
    return result


def _url_parts(url: str, key: str) -> Any:
    """urlsplit, with a malformed URL (an unclosed [, a bad port) reported as the key's error."""
    try:
        parts = urlsplit(url)
        parts.port   # noqa: B018 - raises for a port that is not a number
        return parts
    except ValueError as exc:
        raise ConfigError(f"'{key}' is not a valid URL ({exc}): {shown_url(url)}") from None


def shown_url(url: str) -> str:
    """A URL as an error message may show it: any user:password@ masked, control characters escaped."""
    head, sep, rest = url.partition("://")
    if sep:
        netloc, slash, path = rest.partition("/")
        if "@" in netloc:
            netloc = f"{MASK}@{netloc.rpartition('@')[2]}"
        url = f"{head}{sep}{netloc}{slash}{path}"
    return repr(printable(url))


def _split_userinfo(url: str, key: str) -> tuple[str, str, str]:
    """Return the URL without user:password@, and the (unquoted) user and password."""
    parts = _url_parts(url, key)
    if "@" not in parts.netloc:
        return url, "", ""
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    if not hostport:
        raise ConfigError(f"'{key}' has no host")
    return urlunsplit(parts._replace(netloc=hostport)), unquote(user), unquote(password)


def _path(value: Any, key: str, base_dir: Path) -> Path | None:
    """A path from the file, relative to the file's folder; None when not set."""
    text = _string(value, key)
    return (base_dir / Path(text).expanduser()).resolve() if text else None


def parse_config(raw: Any, *, env: Mapping[str, str], base_dir: Path,
                 source: str = "<config>", default_ledger: Path | None = None) -> Config:
    """Turn the YAML document into a Config; pure apart from resolving paths."""
    data = _mapping(raw, "the configuration")
    _check_keys(data, CONFIG_KEYS, "")
    folder = _path(data.get("folder"), "folder", base_dir)
    if folder is None:
        raise ConfigError("'folder' is required")
    origin = _origin_config(_mapping(data.get("origin"), "origin"), env, base_dir)
    name_prefix = _string(data.get("name_prefix"), "name_prefix")
    if name_prefix.startswith("/"):
        raise ConfigError("'name_prefix' must not start with '/': CDN names have no leading slash")
    ledger = _path(data.get("ledger"), "ledger", base_dir) or (
        default_ledger or base_dir / "cdn-push.ledger.sqlite3").resolve()
    if ledger == folder or folder in ledger.parents:
        if data.get("ledger") is None:
            raise ConfigError(f"the ledger's default place, beside the configuration file ({ledger}), is inside "
                              f"'folder' ({folder}): keep the configuration file outside the folder, or set "
                              "'ledger' to a path outside it")
        raise ConfigError(f"'ledger' ({ledger}) must not be inside 'folder' ({folder}): "
                          "it would be imported as a file")
    if origin.secret_file is None:
        origin = dataclasses.replace(origin, secret_file=ledger.with_name(ledger.name + ".secret"))
    hash_workers, submit_workers = _workers(data.get("workers"))
    config = Config(folder=folder, ledger=ledger, api=_api_config(_mapping(data.get("api"), "api"), env, base_dir),
                    origin=origin, name_prefix=name_prefix,
                    defaults={k: v for k, v in _overrides(data.get("defaults"), "defaults").items() if v is not None},
                    rules=_rules(data.get("rules")), scan=_scan_config(_mapping(data.get("scan"), "scan")),
                    hash_workers=hash_workers, submit_workers=submit_workers, source=source,
                    callback=_callback_config(_mapping(data.get("callback"), "callback"), origin.serve),
                    monitor=_monitor_config(_mapping(data.get("monitor"), "monitor")),
                    delete=_delete_config(_mapping(data.get("delete"), "delete")))
    config = _with_confirm(config, _mapping(data.get("confirm"), "confirm"), _mapping(data.get("callback"), "callback"))
    return dataclasses.replace(config, private_files=private_files_in(folder, private_candidates(config)))


def _api_config(raw: Mapping[str, Any], env: Mapping[str, str], base_dir: Path) -> ApiConfig:
    default, retry_default = ApiConfig(), RetryPolicy()
    url = _string(raw.get("url"), "api.url") or default.url
    parts = _url_parts(url, "api.url")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"'api.url' must be an http(s) URL such as {DEFAULT_API_URL}, not {shown_url(url)}")
    if "@" in parts.netloc:
        raise ConfigError("'api.url' must not hold a login or password: use api.login, and api.password_file for the password")
    retry_raw = _mapping(raw.get("retry"), "api.retry")
    number = lambda section, name, default, **kw: _number(  # noqa: E731
        section.get(name), f"api.{'retry.' if section is retry_raw else ''}{name}", default, **kw)
    ca_bundle = _path(raw.get("ca_bundle"), "api.ca_bundle", base_dir)
    auth = _string(raw.get("auth"), "api.auth") or default.auth
    if auth not in ("basic", "otp"):
        raise ConfigError(f"'api.auth' must be basic or otp, not {printable(auth)!r}")
    password, password_from, password_file = _api_password(raw, env, base_dir)
    return ApiConfig(
        url=url.rstrip("/"),
        login=_string(raw.get("login"), "api.login"),
        password=Secret(password), password_from=password_from, auth=auth, password_file=password_file,
        timeout=float(number(raw, "timeout", default.timeout, minimum=0.1)),
        callback_param=_string(raw.get("callback_param"), "api.callback_param") or default.callback_param,
        verify_tls=_boolean(raw.get("verify_tls"), "api.verify_tls", default.verify_tls),
        ca_bundle=str(ca_bundle) if ca_bundle else None,
        rate_limit=float(number(raw, "rate_limit", default.rate_limit)),
        retry=RetryPolicy(
            attempts=number(retry_raw, "attempts", retry_default.attempts, minimum=1, integer=True),
            max_seconds=float(number(retry_raw, "max_seconds", retry_default.max_seconds)),
            backoff_base=float(number(retry_raw, "backoff_base", retry_default.backoff_base)),
            backoff_max=float(number(retry_raw, "backoff_max", retry_default.backoff_max))),
    )


def _api_password(raw: Mapping[str, Any], env: Mapping[str, str], base_dir: Path) -> tuple[str, str, str | None]:
    """(password, where it came from, api.password_file): the environment wins over the file, the
    file over api.password. The file is read here, so a bad one is a config error that names it."""
    text = _string(raw.get("password_file"), "api.password_file")
    # Made absolute but not resolved: a symlink must meet the O_NOFOLLOW below, not its target.
    path = Path(os.path.abspath(base_dir / Path(text).expanduser())) if text else None
    if raw.get("password") and path is not None:
        raise ConfigError("set either 'api.password' or 'api.password_file', not both")
    if env.get(ENV_API_PASSWORD):
        overridden = "api.password_file" if path is not None else "api.password"
        return env[ENV_API_PASSWORD], f"{ENV_API_PASSWORD} (which wins over {overridden})", str(path or "") or None
    if path is None:
        return _string(raw.get("password"), "api.password"), "api.password", None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as handle:
            st = os.fstat(handle.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise ConfigError(f"'api.password_file' ({path}) is not a regular file")
            text = handle.read(4097).decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read 'api.password_file' ({path}): "
                          f"{getattr(exc, 'strerror', None) or exc.__class__.__name__}") from None
    password = text.rstrip("\r\n")
    if not password or len(text) > 4096 or "\n" in password:
        raise ConfigError(f"'api.password_file' ({path}) must hold the password alone on one line")
    return password, f"api.password_file ({path})", str(path)


def _origin_config(raw: Mapping[str, Any], env: Mapping[str, str], base_dir: Path) -> OriginConfig:
    base_url = _string(raw.get("base_url"), "origin.base_url")
    user = _string(raw.get("username"), "origin.username")
    password = env.get(ENV_ORIGIN_PASSWORD) or _string(raw.get("password"), "origin.password")
    if base_url:
        base_url, user, password = _base_url(base_url, user, password)
    if password and not user:
        raise ConfigError("'origin.password' is set but 'origin.username' is not")
    serve = _serve_config(_mapping(raw.get("serve"), "origin.serve"), base_dir)
    if serve is not None and base_url:
        raise ConfigError("set either 'origin.base_url' (your own server) or 'origin.serve' (the built-in "
                          "origin), not both")
    return OriginConfig(base_url=base_url, username=user, password=Secret(password), serve=serve,
                        secret_file=_path(raw.get("secret_file"), "origin.secret_file", base_dir),
                        check=_boolean(raw.get("check"), "origin.check", OriginConfig.check))


def _base_url(base_url: str, user: str, password: str) -> tuple[str, str, str]:
    """origin.base_url checked, with any user:password@ taken out of it into the credentials."""
    scheme = _url_parts(base_url, "origin.base_url").scheme
    if scheme not in ORIGIN_SCHEMES:
        raise ConfigError(
            f"'origin.base_url' must start with one of {', '.join(s + '://' for s in ORIGIN_SCHEMES)}; "
            f"got {scheme + '://' if scheme else 'no scheme'}")
    base_url, inline_user, inline_password = _split_userinfo(base_url, "origin.base_url")
    if inline_user and user and inline_user != user:
        raise ConfigError("'origin.base_url' names a user and so does 'origin.username': keep one")
    user, password = user or inline_user, password or inline_password
    if not _url_parts(base_url, "origin.base_url").hostname:
        raise ConfigError(f"'origin.base_url' has no host: {shown_url(base_url)}")
    if scheme in ("rsync+ssh", "s3") and not (user and password):
        needs = ("origin.username and origin.password" if scheme == "rsync+ssh" else
                 "origin.username (access key) and origin.password (secret key)")
        raise ConfigError(f"'origin.base_url' with {scheme}:// needs {needs}")
    return base_url, user, password


def _rules(value: Any) -> tuple[Rule, ...]:
    rules_raw = value or []
    if not isinstance(rules_raw, list):
        raise ConfigError("'rules' must be a list of {match: <glob>, ...} entries")
    rules = []
    for index, entry in enumerate(rules_raw):
        key = f"rules[{index}]"
        entry = dict(_mapping(entry, key))
        match = entry.pop("match", None)
        if not isinstance(match, str) or not match:
            raise ConfigError(f"'{key}.match' is required: a glob such as '**/*.mp4'")
        rules.append(Rule(match=match, overrides=_overrides(entry, key)))
    return tuple(rules)


def _scan_config(raw: Mapping[str, Any]) -> ScanConfig:
    default = ScanConfig()
    flag = lambda name: _boolean(raw.get(name), f"scan.{name}", getattr(default, name))  # noqa: E731
    seconds = lambda name, minimum=0.0: float(_number(  # noqa: E731
        raw.get(name), f"scan.{name}", getattr(default, name), minimum=minimum))
    return ScanConfig(
        include=_patterns(raw.get("include"), "scan.include"),
        exclude=_patterns(raw.get("exclude"), "scan.exclude"),
        skip_hidden=flag("skip_hidden"), skip_temporary=flag("skip_temporary"),
        settle_seconds=seconds("settle_seconds"), follow_symlinks=flag("follow_symlinks"),
        rescan_interval=seconds("rescan_interval", 1.0), poll=flag("poll"),
        poll_interval=seconds("poll_interval", 0.1), allow_sparse=flag("allow_sparse"),
        max_size=_number(raw.get("max_size"), "scan.max_size", default.max_size, integer=True),
    )


def _workers(value: Any) -> tuple[int, int]:
    """(hash, submit); a single number sets both."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = {"hash": value, "submit": value}
    workers = _mapping(value, "workers")
    cpus = os.cpu_count() or 1
    return (_number(workers.get("hash"), "workers.hash", min(Config.hash_workers, cpus), minimum=1, integer=True),
            _number(workers.get("submit"), "workers.submit", Config.submit_workers, minimum=1, integer=True))


def private_candidates(config: Config) -> list[tuple[str, str]]:
    """Every file cdn-push itself reads secrets from or keeps state in, with the key that names it."""
    ledger = str(config.ledger)
    found = [(config.source, "the configuration file")] if os.path.isfile(config.source) else []
    found += [(ledger + suffix, "the ledger ('ledger')") for suffix in ("", "-wal", "-shm", "-journal", ".lock",
                                                                       ".reload")]
    found += [(str(config.origin.secret_file), "the signing key ('origin.secret_file')"),
              (config.api.ca_bundle, "the CA bundle ('api.ca_bundle')"),
              (config.api.password_file, "the API password ('api.password_file')")]
    if config.origin.serve is not None:
        found += [(config.origin.serve.cert, "the TLS certificate ('origin.serve.cert')"),
                  (config.origin.serve.key, "the TLS key ('origin.serve.key')")]
    return [(path, key) for path, key in found if path]


def private_files_in(folder: Path, candidates: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """Those of `candidates` that lie inside `folder`, as (relative path, key)."""
    root = os.path.realpath(folder)
    inside = []
    for path, key in candidates:
        real = os.path.realpath(path)
        if real.startswith(root + os.sep):
            inside.append((os.path.relpath(real, root).replace(os.sep, "/"), key))
    return tuple(inside)


def private_identities(config: Config) -> dict[tuple[int, int], str]:
    """(st_dev, st_ino) of each of cdn-push's own secret and state files that exists, with the key
    naming it: a hard link or symlink to one is that file under any name."""
    found = {}
    for path, key in private_candidates(config):
        with contextlib.suppress(OSError):
            st = os.stat(path)
            found[(st.st_dev, st.st_ino)] = key
    return found


def _listen_address(value: Any, key: str) -> tuple[str, int]:
    text = _string(value, key, required=True)
    host, sep, port = text.rpartition(":")
    if not sep or not ascii_number(port, 5) or not 0 <= int(port) <= 65535:
        raise ConfigError(f"'{key}' must be host:port such as 0.0.0.0:8080, not {printable(text)!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _public_url(value: Any, key: str) -> str:
    text = _string(value, key, required=True).rstrip("/")
    parts = _url_parts(text, key)
    if parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc or parts.query:
        raise ConfigError(f"'{key}' must be the http(s) URL at which the CDN reaches cdn-push, "
                          f"such as https://push.example.com:8080, not {shown_url(text)}")
    return text


def _serve_config(raw: Mapping[str, Any], base_dir: Path) -> ServeConfig | None:
    if not raw:
        return None
    host, port = _listen_address(raw.get("listen"), "origin.serve.listen")
    cert = _string(raw.get("cert"), "origin.serve.cert")
    key = _string(raw.get("key"), "origin.serve.key")
    if bool(cert) != bool(key):
        raise ConfigError("'origin.serve.cert' and 'origin.serve.key' go together: set both for TLS")
    resolved = lambda key: str(_path(raw.get(key), f"origin.serve.{key}", base_dir) or "") or None  # noqa: E731
    seconds = lambda name, minimum: float(_number(  # noqa: E731
        raw.get(name), f"origin.serve.{name}", getattr(ServeConfig, name), minimum=minimum))
    return ServeConfig(
        listen_host=host, listen_port=port,
        public_url=_public_url(raw.get("public_url"), "origin.serve.public_url"),
        cert=resolved("cert"), key=resolved("key"), link_ttl=seconds("link_ttl", 60),
        max_connections=_number(raw.get("max_connections"), "origin.serve.max_connections",
                                ServeConfig.max_connections, minimum=4, integer=True),
        header_timeout=seconds("header_timeout", 0.1), idle_timeout=seconds("idle_timeout", 0.1),
        allow_from=_networks(raw.get("allow_from"), "origin.serve.allow_from"),
    )


def _networks(value: Any, key: str) -> tuple[str, ...]:
    """CIDRs such as 192.0.2.0/24 or 2001:db8::/32, as written (checked here, parsed where used)."""
    import ipaddress

    value = [value] if isinstance(value, str) else value if value is not None else []
    if not isinstance(value, list):
        raise ConfigError(f"'{key}' must be a list of networks such as [192.0.2.0/24]")
    for item in value:
        try:
            ipaddress.ip_network(str(item), strict=False)
        except ValueError:
            raise ConfigError(f"'{key}': {printable(str(item))!r} is not a network such as 192.0.2.0/24") from None
    return tuple(str(item) for item in value)


def _monitor_config(raw: Mapping[str, Any]) -> MonitorConfig:
    allow_remote = _boolean(raw.get("allow_remote"), "monitor.allow_remote", False)
    hosts = _host_names(raw.get("allowed_hosts"), "monitor.allowed_hosts")
    if "listen" not in raw:
        return MonitorConfig(allow_remote=allow_remote, allowed_hosts=hosts)
    if raw["listen"] is None:
        return MonitorConfig(listen_host=None, allow_remote=allow_remote, chosen=True, allowed_hosts=hosts)
    host, port = _listen_address(raw["listen"], "monitor.listen")
    if not allow_remote and not is_loopback(host):
        raise ConfigError(f"'monitor.listen' is {host}:{port}, which other machines can reach; the page "
                          "and metrics have no login. Keep it on 127.0.0.1 and use an SSH tunnel or a reverse "
                          "proxy with authentication, or set 'monitor.allow_remote: true' if a firewall guards it")
    return MonitorConfig(host, port, allow_remote, chosen=True, allowed_hosts=hosts)


def _host_names(value: Any, key: str) -> tuple[str, ...]:
    """Names the page may be reached by (a reverse proxy's, an SSH tunnel's), lower case."""
    value = [value] if isinstance(value, str) else value if value is not None else []
    if not isinstance(value, list) or not all(isinstance(v, str) and HOST_NAME.match(v) for v in value):
        raise ConfigError(f"'{key}' must be a list of host names such as [status.example.com]")
    return tuple(v.lower() for v in value)


HOST_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$")


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host).is_loopback
    return False


def _delete_config(raw: Mapping[str, Any]) -> DeleteConfig:
    default = DeleteConfig()
    return DeleteConfig(
        enabled=_boolean(raw.get("enabled"), "delete.enabled", default.enabled),
        grace_seconds=float(_number(raw.get("grace_seconds"), "delete.grace_seconds", default.grace_seconds)),
        max_per_pass=_number(raw.get("max_per_pass"), "delete.max_per_pass", default.max_per_pass, minimum=1,
                             integer=True))


def _words(value: Any, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """A list of the CDN's status words, compared without regard to case."""
    if value is None:
        return default
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
        raise ConfigError(f"'{key}' must be a list of the CDN's status words, such as [{', '.join(default)}]")
    return tuple(v.strip().lower() for v in value)


def _with_confirm(config: Config, raw: Mapping[str, Any], callback_raw: Mapping[str, Any]) -> Config:
    """The confirm section; `callback.wait_seconds` is the older name of `confirm.wait_seconds`."""
    default = ConfirmConfig()
    if raw.get("wait_seconds") is not None and callback_raw.get("wait_seconds") is not None:
        raise ConfigError("'confirm.wait_seconds' and 'callback.wait_seconds' are the same setting (the "
                          "second is its older name): keep only 'confirm.wait_seconds'")
    wait = float(_number(raw.get("wait_seconds", callback_raw.get("wait_seconds")), "confirm.wait_seconds",
                         default.wait_seconds))
    confirm = ConfirmConfig(
        poll=_boolean(raw.get("poll"), "confirm.poll", default.poll),
        poll_interval=float(_number(raw.get("poll_interval"), "confirm.poll_interval", default.poll_interval,
                                    minimum=0.1)),
        ready_states=_words(raw.get("ready_states"), "confirm.ready_states", default.ready_states),
        failed_states=_words(raw.get("failed_states"), "confirm.failed_states", default.failed_states),
        wait_seconds=wait)
    both = set(confirm.ready_states) & set(confirm.failed_states)
    if both:
        raise ConfigError(f"'confirm.ready_states' and 'confirm.failed_states' both name {sorted(both)[0]!r}")
    return dataclasses.replace(config, confirm=confirm,
                               callback=dataclasses.replace(config.callback, wait_seconds=wait))


def _callback_config(raw: Mapping[str, Any], serve: ServeConfig | None) -> CallbackConfig:
    default = CallbackConfig()
    wait_seconds = float(_number(raw.get("wait_seconds"), "confirm.wait_seconds", default.wait_seconds))
    max_attempts = _number(raw.get("max_attempts"), "callback.max_attempts", default.max_attempts, minimum=1,
                           integer=True)
    retry_delay = float(_number(raw.get("retry_delay"), "callback.retry_delay", default.retry_delay))
    extra = {"wait_seconds": wait_seconds, "max_attempts": max_attempts, "retry_delay": retry_delay}
    if raw.get("public_url"):
        public = _public_url(raw.get("public_url"), "callback.public_url")
        if serve is None:
            host, port = _listen_address(raw.get("listen"), "callback.listen")
        else:
            if raw.get("listen"):
                raise ConfigError("'callback.listen' is not used with 'origin.serve': callbacks arrive at "
                                  "the built-in origin")
            host, port = serve.listen_host, serve.listen_port
        return CallbackConfig(public, host, port, **extra)
    if raw.get("listen"):
        raise ConfigError("'callback.listen' needs 'callback.public_url'")
    if serve is not None:      # the built-in origin receives callbacks too
        return CallbackConfig(serve.public_url, serve.listen_host, serve.listen_port, **extra)
    return CallbackConfig(**extra)


def load_config(path: Path, env: Mapping[str, str]) -> tuple[Config, list[str]]:
    """Read and validate the YAML file; returns the config and warnings to log."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"no configuration file at {path}: give one with --config PATH (or "
                          f"{ENV_CONFIG}), or copy config.example.yaml there and fill in folder, api.login "
                          "and origin.base_url (or origin.serve)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.__class__.__name__}: "
                          f"{getattr(exc, 'strerror', None) or exc}") from None
    import yaml

    try:
        raw = yaml.load(text, Loader=strict_yaml_loader())     # noqa: S506 - a SafeLoader subclass
    except DuplicateKey as exc:
        raise ConfigError(f"{path}: line {exc.line}: '{exc.key}' is set twice (also on line {exc.first}); "
                          "YAML would keep only the last one silently: keep one") from None
    except yaml.YAMLError as exc:
        raise ConfigError(yaml_error_message(path, text, exc)) from None
    base_dir = path.resolve().parent
    try:
        config = parse_config(raw, env=env, base_dir=base_dir, source=str(path),
                              default_ledger=base_dir / f"{path.stem}.ledger.sqlite3")
        if config.ledger.is_dir():
            raise ConfigError(f"'ledger' ({config.ledger}) is a folder: give the path of a file in it, such as "
                              f"{config.ledger / 'cdn-push.ledger.sqlite3'}")
    except ConfigError as exc:
        line = key_line(text, str(exc))
        raise ConfigError(f"{path}:{f' line {line}:' if line else ''} {exc}") from None
    warnings = []
    with contextlib.suppress(OSError):
        warnings += password_file_advice(path, path.stat(), _passwords_held(raw))
        if config.api.password_file and os.stat(config.api.password_file).st_mode & 0o077:
            warnings.append(f"{config.api.password_file} (api.password_file) can be read by other users: "
                            f"run chmod 600 {config.api.password_file}")
    warnings += unreachable_public_urls(config)
    origin_raw = raw.get("origin") if isinstance(raw, Mapping) else None
    origin_from = (ENV_ORIGIN_PASSWORD if env.get(ENV_ORIGIN_PASSWORD) else "'origin.password'"
                   if isinstance(origin_raw, Mapping) and origin_raw.get("password") else "'origin.base_url'")
    api_from = (ENV_API_PASSWORD if env.get(ENV_API_PASSWORD) else "'api.password_file'"
                if config.api.password_file else "'api.password'")
    for source, secret in ((api_from, config.api.password), (origin_from, config.origin.password)):
        if secret and len(secret.reveal()) < SHORT_SECRET:
            warnings.append(f"the password from {source} is shorter than {SHORT_SECRET} characters: messages mask "
                            "it only where it stands alone; a longer one is safer")
    return config, warnings


class DuplicateKey(ValueError):
    """A key given twice in one YAML mapping, with both lines (1-based)."""

    def __init__(self, key: str, first: int, line: int) -> None:
        super().__init__(f"{key!r} on lines {first} and {line}")
        self.key, self.first, self.line = key, first, line


@functools.cache
def strict_yaml_loader() -> type:
    """yaml.SafeLoader that refuses a key given twice in a mapping (PyYAML keeps the last silently:
    a pasted `origin:` block would replace the one above it without a word)."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if isinstance(key, (str, int, float, bool)) and key in seen:
                    raise DuplicateKey(printable(str(key)), seen[key], line)
                if isinstance(key, (str, int, float, bool)):
                    seen[key] = line
            return super().construct_mapping(node, deep)

    return StrictLoader


def local_only(host: str) -> bool:
    """A loopback or private address (or localhost): no CDN out on the internet reaches it."""
    import ipaddress

    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_private or address.is_link_local


def unreachable_public_urls(config: Config) -> list[str]:
    """Warnings for addresses the CDN is told to fetch from or call back, that a CDN elsewhere
    (api.url not local itself) cannot reach; pure."""
    if local_only(urlsplit(config.api.url).hostname or ""):
        return []           # a CDN on this machine or network (the emulator, a test rig)
    urls = [("origin.serve.public_url", config.origin.serve.public_url if config.origin.serve else ""),
            ("callback.public_url", config.callback.public_url if not config.origin.serve else ""),
            ("origin.base_url", config.origin.base_url)]
    return [f"'{key}' ({shown_url(url)}) is a local address, which the CDN at {config.api.url} cannot reach: "
            "set the address at which it reaches this machine" for key, url in urls
            if url and local_only(urlsplit(url).hostname or "")]


def password_file_advice(path: Path, st: os.stat_result, variables: Sequence[str]) -> list[str]:
    """What to do about a config file holding a password that others can read; fits the layout.
    `variables`: the environment variables that would hold the passwords it has instead.

    The service's /etc/cdn-push/config.yaml is root's and group-readable by the service user:
    chmod 600 would lock the service out, so the advice there is the environment file.
    """
    if not st.st_mode & 0o044 or not variables:
        return []
    mine = st.st_uid == os.geteuid()
    names, assignments = " or ".join(variables), " and ".join(f"{name}=..." for name in variables)
    if st.st_mode & 0o004 or mine:
        fix = f"run chmod 600 {path}, or move the password" if mine else "move the password"
        return [f"{path} holds a password and is readable by other users: {fix} to the environment "
                f"({names}; for the service, in /etc/cdn-push/env)"]
    return [f"{path} holds a password and other members of its group can read it: move the password "
            f"to /etc/cdn-push/env as {assignments} (mode 0600) and remove it from {path}"]


# PyYAML's words for common slips, and what a person would say instead (pure lookup).
YAML_PROBLEMS: tuple[tuple[str, str], ...] = (
    ("'\\t'", "a tab character: YAML indents with spaces only; replace the tab with spaces"),
    ("quoted scalar", "a quote opened here is never closed: add the closing quote"),
    ("expected <block end>", "the indentation does not match the lines above: line keys up under their section"),
    ("mapping values are not allowed", "a ':' where a value was expected: put the value in quotes "
                                       "if it contains ': ', or fix the indentation"),
    ("could not find expected ':'", "a line that is not 'key: value' (a missing ':' or a broken indentation)"),
    ("found undefined alias", "a '*' starts an alias: put the value in quotes"),
    ("found character '@'", "'@' and '`' cannot start a value: put the value in quotes"),
)


UNCLOSED_QUOTE = re.compile(r"""^\s*(?:- )?(?:[^\s#:][^:#]*:\s+)?(["'])(?P<rest>.*)$""")
NO_SPACE_AFTER_COLON = re.compile(r"^\s*(?:- )?[A-Za-z_][\w.-]*:(?=[^\s/])")


def yaml_slip(lines: Sequence[str], last: int) -> tuple[int, int, str] | None:
    """The first line up to `last` with a slip PyYAML reports far from it: a value whose opening
    quote is not closed on its line (YAML then reads on, into later lines), or 'key:value'."""
    for number, line in enumerate(lines[:last + 1]):
        if line.lstrip().startswith("#"):
            continue
        found = UNCLOSED_QUOTE.match(line)
        if found:
            quote_char, rest = found.group(1), found.group("rest")
            closed = rest.replace('\\"', "").find(quote_char) if quote_char == '"' else rest.find(quote_char)
            if closed < 0:
                return number, found.start(1), "a quote opened here is not closed on its line: add the closing quote"
        colon = NO_SPACE_AFTER_COLON.match(line)
        if colon:
            return number, colon.end() - 1, "a ':' needs a space after it ('key: value')"
    return None


# What PyYAML says, on the line after it or further down, of a key whose ':' was left out.
COLON_LEFT_OUT = ("could not find expected ':'", "mapping values are not allowed", "expected '<document start>'")


OPENS_MAPPING = re.compile(r"^\s*(?:- )?[^\s#:][^#:]*:\s*(?:#.*)?$")      # "key:" with nothing after it


def colon_left_out(lines: Sequence[str], last: int) -> tuple[int, int, str] | None:
    """The line of a key written without its ':' ('auth basic'), looking up from `last` past
    comments and blank lines; None once a line of 'key: value' comes first (the slip is
    elsewhere). PyYAML reads such a line on into the next ones and names where it gave up. A
    line indented under a value ('note: a long' then '  text', or a '|' block) is that value's
    continuation, not a key."""
    meaningful = [n for n in range(last + 1) if lines[n].strip() and not lines[n].lstrip().startswith("#")]
    for place in range(len(meaningful) - 1, -1, -1):
        number = meaningful[place]
        text = lines[number].strip()
        if ":" not in text and not text.startswith(("-", "|", ">", "[", "{")):
            indent = len(lines[number]) - len(lines[number].lstrip())
            above = lines[meaningful[place - 1]] if place else None
            if above is not None and len(above) - len(above.lstrip()) < indent and not OPENS_MAPPING.match(above):
                return None
            return number, indent, "a line that is not 'key: value': the ':' after the key is missing"
        if number < last:
            return None
    return None


def yaml_error_message(path: Path, text: str, exc: Any) -> str:
    """Where a YAML mistake really is (a line with a caret under it) and what it is, in plain words."""
    problem = str(getattr(exc, "problem", None) or "not valid YAML")
    context = str(getattr(exc, "context", None) or "")
    mark = getattr(exc, "problem_mark", None)
    words = next((said for found, said in YAML_PROBLEMS if found in problem + " " + context), problem)
    lines = text.splitlines()
    if mark is None:
        return f"{path}: {words}"
    line, column = mark.line, mark.column
    slip = None if "'\\t'" in problem else yaml_slip(lines, min(line, len(lines) - 1))
    if slip is None and any(said in problem for said in COLON_LEFT_OUT):
        slip = colon_left_out(lines, min(line, len(lines) - 1))
    if slip is not None:
        line, column, words = slip     # PyYAML points where it gave up, often many lines later
    shown = masked_yaml_line(lines[line]) if line < len(lines) else ""
    gutter = f"{line + 1:>5} | "
    return (f"{path}: line {line + 1}, column {column + 1}: {words}\n{gutter}"
            f"{printable(shown)}\n{' ' * (len(gutter) - 2)}| {' ' * column}^")


# A secret key and its value, in block style (to the line's end) or in a flow mapping (to ',' or '}').
SECRET_YAML_VALUE = re.compile(r"""(["']?[\w.-]*(?:password|secret|passwd|token)[\w.-]*["']?\s*:)"""
                               r"""(?:\s*(?:"(?:[^"\\]|\\.)*"?|'[^']*'?|[^,}\n]*))""", re.IGNORECASE)
URL_USERINFO = re.compile(r"(\w[\w+.-]*://[^/\s:@]*:)[^/\s@]*@")


def masked_yaml_line(line: str) -> str:
    """A config line fit to show in an error: a secret key's value and a URL's password masked."""
    line = SECRET_YAML_VALUE.sub(lambda found: f"{found.group(1)} {MASK}", line)
    return URL_USERINFO.sub(lambda found: f"{found.group(1)}{MASK}@", line)


def key_line(text: str, message: str) -> int | None:
    """The line (1-based) of the first key a config error names ('scan.settle_seconds',
    'rules[2].match'), found in the YAML's own node tree; None when it names none."""
    import yaml

    named = re.search(r"'([A-Za-z_][\w.\[\]]*)'", message)
    if not named:
        return None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    line = None
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", named.group(1)):
        if part.startswith("[") and isinstance(node, yaml.SequenceNode):
            index = int(part[1:-1])
            node = node.value[index] if index < len(node.value) else None
        elif isinstance(node, yaml.MappingNode):
            found = next(((k, v) for k, v in node.value if k.value == part), None)
            if found is None:
                break
            line, node = found[0].start_mark.line + 1, found[1]
        else:
            break
        if node is not None and not part.startswith("["):
            continue
        if node is not None:
            line = node.start_mark.line + 1
    return line


def _passwords_held(raw: Any) -> list[str]:
    """The environment variables for the passwords the config file itself holds (none, one or both)."""
    if not isinstance(raw, Mapping):
        return []
    api, origin = raw.get("api"), raw.get("origin")
    held = [ENV_API_PASSWORD] if isinstance(api, Mapping) and api.get("password") else []
    if isinstance(origin, Mapping) and (origin.get("password") or "@" in str(origin.get("base_url") or "")):
        held.append(ENV_ORIGIN_PASSWORD)
    return held


def config_path_from(arg: str | None, env: Mapping[str, str]) -> Path:
    """Absolute, so every message names the file wherever the command was run from."""
    return Path(os.path.abspath(os.path.expanduser(arg or env.get(ENV_CONFIG) or DEFAULT_CONFIG_NAME)))


# ----------------------------------------------------------------------------
# Rules and requests
# ----------------------------------------------------------------------------

@functools.lru_cache(maxsize=512)
def compile_glob(pattern: str) -> re.Pattern[str]:
    """Translate a glob where * stays within a folder, ** crosses folders, ? is one char."""
    out, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            end = pattern.find("]", i + 2)
            if end == -1:
                out.append(re.escape(c))
                i += 1
                continue
            body = pattern[i + 1:end]
            negate = body[:1] in ("!", "^")
            body = body[1:] if negate else body
            out.append("[" + ("^" if negate else "") + body.replace("\\", "\\\\") + "]")
            i = end + 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out) + r"\Z", re.S)


def glob_matches(pattern: str, relpath: str) -> bool:
    """A pattern with a '/' matches the whole relative path, one without matches the name."""
    if "/" in pattern.rstrip("/"):
        return compile_glob(pattern.strip("/")).match(relpath) is not None
    return compile_glob(pattern.rstrip("/")).match(relpath.rsplit("/", 1)[-1]) is not None


def overrides_for(relpath: str, defaults: Mapping[str, Any], rules: Sequence[Rule]) -> dict[str, Any]:
    """Defaults, then every matching rule in order; a rule's null removes a key."""
    merged = dict(defaults)
    for rule in rules:
        if glob_matches(rule.match, relpath):
            merged.update(rule.overrides)
    return {k: v for k, v in merged.items() if v is not None}


def priority_of(overrides: Mapping[str, Any]) -> int:
    value = overrides.get("fetch_prio")
    if value is None or value is False:
        return 0
    try:
        return max(int(str(value)), 1)
    except ValueError:
        return 1


def build_location(origin: OriginConfig, relpath: str) -> str:
    """The URL the CDN downloads from: base URL + percent-encoded relative path."""
    parts = urlsplit(origin.base_url)
    userinfo = ""
    if origin.username:
        userinfo = quote(origin.username, safe="")
        if origin.password:
            userinfo += ":" + quote(origin.password.reveal(), safe="")
        userinfo += "@"
    path = parts.path.rstrip("/") + "/" + quote_path(relpath)
    return urlunsplit((parts.scheme, userinfo + parts.netloc, path, parts.query, ""))


def mask_url(url: str) -> str:
    """Replace the password of user:password@ in a URL by ***."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    if ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{hostport}"))


def cdn_name(prefix: str, relpath: str) -> str:
    return prefix + relpath


def quote_path(relpath: str) -> str:
    """Each segment of a relative path percent-encoded, '/' kept: how every URL names a file."""
    return "/".join(quote(segment, safe="") for segment in relpath.split("/"))


def build_request(config: Config, relpath: str, size: int, sha256: str,
                  overrides: Mapping[str, Any], *, location: str | None = None) -> dict[str, str]:
    """The form fields of one file/add request."""
    params = {
        "location": location or build_location(config.origin, relpath),
        "name": cdn_name(config.name_prefix, relpath),
        "size": str(size),
        "chksum": sha256.lower(),
    }
    for key in OVERRIDE_KEYS:
        if key in overrides:
            value = overrides[key]
            params[key] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return params


# ----------------------------------------------------------------------------
# Redaction and logging
# ----------------------------------------------------------------------------

def encoded_forms(secret: str) -> set[str]:
    """Every form an HTTP stack or a CDN could echo a secret in: raw, percent-encoded (all of it, or
    all but '/'), twice encoded, and form-encoded ('+' for a space). Hex case is left to the caller's
    case-blind match. Pure."""
    import base64

    once, plus = quote(secret, safe=""), quote_plus(secret)
    return {secret, once, quote(secret), quote(once, safe=""), quote(quote(secret), safe=""), plus,
            quote_plus(once), quote(plus, safe=""), quote_plus(secret, safe="/"), secret.replace("/", "\\/"),
            base64.b64encode(secret.encode()).decode("ascii")}



class Redactor:
    """Replaces every known secret, in any of its encoded forms and any hex case, by ***.

    A secret of SHORT_SECRET characters or more is masked wherever it appears; a shorter one only
    where it stands on its own (not inside a longer word or number): masking "add" inside
    "address" would garble the message and tell the reader the password.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        for secret in secrets:
            if secret and len(secret) >= 3:
                self._secrets.update(form.lower() for form in encoded_forms(secret))
        ordered = sorted(self._secrets, key=len, reverse=True)
        anywhere = [re.escape(s) for s in ordered if len(s) >= SHORT_SECRET]
        alone = [rf"(?<![A-Za-z0-9]){re.escape(s)}(?![A-Za-z0-9])" for s in ordered if len(s) < SHORT_SECRET]
        alternatives = "|".join(anywhere + alone)
        self._pattern = re.compile(alternatives, re.IGNORECASE) if alternatives else None

    def __call__(self, text: str) -> str:
        if self._pattern is None:
            return text
        lowered = text.lower()
        if not any(secret in lowered for secret in self._secrets):
            return text
        return self._pattern.sub(MASK, text)


class RedactingFormatter(logging.Formatter):
    """Formats a record, traceback included, then masks every known secret."""

    def __init__(self, fmt: str, datefmt: str | None, redactor: Redactor) -> None:
        super().__init__(fmt, datefmt)
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        return self.redactor(super().format(record))


class TqdmHandler(logging.StreamHandler):
    """Writes log lines above any progress bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm = sys.modules.get("tqdm")
            if tqdm is None:        # no progress bar was ever made: nothing to write around
                self.stream.write(self.format(record) + "\n")
                self.flush()
            else:
                tqdm.tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


@contextlib.contextmanager
def logging_configured(verbosity: int, redactor: Redactor, stream: Any = None) -> Iterator[logging.Handler]:
    """cdn-push's logging for as long as the block runs, errors of every thread included; what was
    there before comes back after."""
    saved = (log.handlers[:], log.level, log.propagate, threading.excepthook)
    handler = configure_logging(verbosity, redactor, stream)
    threading.excepthook = ThreadErrors().report
    try:
        yield handler
    finally:
        handler.flush()
        log.handlers[:], log.level, log.propagate, threading.excepthook = saved


class ThreadErrors:
    """What escapes a thread (an origin or monitor connection, a worker): logged through the
    redacting formatter, with its traceback the first time of each kind, then only counted, so
    an attack that trips one bug a thousand times writes a few lines, not a thousand tracebacks."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: collections.Counter[tuple[str, str]] = collections.Counter()

    def report(self, args: Any) -> None:
        if args.exc_type is SystemExit or args.exc_value is None:
            return
        where = (args.thread.name if args.thread else "a thread").split("-")[0]
        kind = (where, args.exc_type.__name__)
        with self._lock:
            self._seen[kind] += 1
            count = self._seen[kind]
        if count == 1:
            log.error("a fault in cdn-push's %s thread (a bug: please report it); it goes on", where,
                      exc_info=(args.exc_type, args.exc_value, args.exc_traceback))
        elif math.log10(count).is_integer():
            log.error("the same fault in the %s thread (%s) has now happened %d times", where,
                      args.exc_type.__name__, count)


def configure_logging(verbosity: int, redactor: Redactor, stream: Any = None) -> logging.Handler:
    stream = stream or sys.stderr
    level = logging.DEBUG if verbosity > 0 else logging.WARNING if verbosity < 0 else logging.INFO
    if os.environ.get("JOURNAL_STREAM"):
        fmt, datefmt = "%(levelname)s %(message)s", None   # journald stamps lines itself
    else:
        fmt, datefmt = "%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"
    handler = TqdmHandler(stream)
    handler.setFormatter(RedactingFormatter(fmt, datefmt, redactor))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False
    return handler


# ----------------------------------------------------------------------------
# Scan and hash
# ----------------------------------------------------------------------------

class FileEntry(NamedTuple):
    """One file as listed: a NamedTuple, because a walk makes millions of them."""

    relpath: str
    path: str
    size: int
    mtime_ns: int
    inode: int


class FileChangedError(CdnPushError):
    """The file changed while it was read; it is left for the next pass."""


class HashInterrupted(CdnPushError):
    """Hashing was cut short by a stop; the file is hashed again by the next pass."""


TEMPORARY_NAME = re.compile("|".join([compile_glob(p).pattern for p in TEMPORARY_PATTERNS]
                                     + [RSYNC_TEMPORARY.pattern.lstrip("^").replace("$", r"\Z")]), re.S)


def check_folder(config: Config) -> None:
    if not config.folder.is_dir():
        what = "is not a folder" if config.folder.exists() else "does not exist"
        raise ConfigError(f"'folder' {config.folder} {what} (from {config.source})")


def skip_reason(relpath: str, scan: ScanConfig, *, is_dir: bool = False) -> str | None:
    """Why a path is not imported, or None; pure, so rules stay testable."""
    name = relpath.rpartition("/")[2]
    if scan.skip_hidden and name[:1] == ".":
        return "hidden"
    if scan.skip_temporary and not is_dir and TEMPORARY_NAME.match(name):
        return "temporary"
    if scan.exclude and any(glob_matches(p, relpath) for p in scan.exclude):
        return "excluded"
    if not is_dir and scan.include and not any(glob_matches(p, relpath) for p in scan.include):
        return "not included"
    return None


def file_skipper(scan: ScanConfig) -> Callable[[str, str], bool]:
    """skip_reason for the walk's files, given (relpath, name): where no include or exclude glob is
    set only the name decides, and one compiled pattern says it (a walk asks once per file)."""
    if scan.include or scan.exclude:
        return lambda relpath, name: skip_reason(relpath, scan) is not None
    alternatives = ([r"\."] if scan.skip_hidden else []) + ([TEMPORARY_NAME.pattern] if scan.skip_temporary else [])
    if not alternatives:
        return lambda relpath, name: False
    match = re.compile("|".join(f"(?:{pattern})" for pattern in alternatives), re.S).match
    return lambda relpath, name: match(name) is not None


def walk_folder(root: Path, scan: ScanConfig,
                on_problem: Callable[[str, str], None] = lambda path, why: None,
                start: str = "", private: Mapping[tuple[int, int], str] | None = None,
                own_names: Container[str] = (), on_link: Callable[[str], None] = lambda path: None,
                ) -> Iterator[tuple[str, list[FileEntry]]]:
    """Yield (relative folder, its files) one folder at a time, so memory stays flat.

    `start` walks only that subfolder (relative to root). `private`: (st_dev, st_ino) of
    cdn-push's own secret and state files, never listed under any other name or link;
    `own_names`: their paths inside the folder, listed for the caller to skip by name. `on_link`
    hears of each symlink passed by because scan.follow_symlinks is off.
    """
    private = private or {}
    private_inodes = {inode for _, inode in private}
    look_from = min(SPARSE_MIN_SIZE, scan.max_size + 1) if scan.max_size else SPARSE_MIN_SIZE
    root_real = os.path.realpath(root)
    skipped = file_skipper(scan)
    visited: set[tuple[int, int]] = set()
    stack = [start]
    while stack:
        reldir = stack.pop()
        absdir = os.path.join(root, reldir) if reldir else str(root)
        try:
            dir_stat = os.stat(absdir)
            if (dir_stat.st_dev, dir_stat.st_ino) in visited:
                on_problem(reldir, "folder seen before (symlink loop); skipped")
                continue
            if scan.follow_symlinks:
                visited.add((dir_stat.st_dev, dir_stat.st_ino))
            iterator = os.scandir(absdir)
        except OSError as exc:
            on_problem(reldir or ".", f"cannot list folder: {exc.strerror or exc}")
            continue
        files: list[FileEntry] = []
        subdirs: list[str] = []
        prefix = reldir + "/" if reldir else ""
        follow = scan.follow_symlinks
        with iterator:
            for item in iterator:
                relpath = prefix + item.name
                if not relpath.isascii():
                    try:
                        relpath.encode("utf-8")
                    except UnicodeEncodeError:
                        on_problem(os.fsencode(relpath).decode("utf-8", "backslashreplace"),
                                   "name is not valid UTF-8; rename the file to import it")
                        continue
                try:
                    if item.is_symlink():
                        if not follow:
                            if not skipped(relpath, item.name):      # a link that following would import
                                on_link(relpath)
                            continue
                        target = os.path.realpath(item.path)
                        if os.path.commonpath([root_real, target]) != root_real:
                            on_problem(relpath, "the symlink leads outside the folder")
                            continue
                    st = item.stat(follow_symlinks=follow)
                    mode = st.st_mode
                    if S_ISDIR(mode):
                        if skip_reason(relpath, scan, is_dir=True) is None:
                            subdirs.append(relpath)
                        continue
                    if not S_ISREG(mode) or skipped(relpath, item.name):
                        continue
                    if st.st_ino in private_inodes or st.st_size >= look_from:
                        why = listing_problem(st, scan, private)
                        if why and relpath not in own_names:    # under its own name: the caller warns once
                            on_problem(relpath, why)
                            continue
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    on_problem(relpath, f"cannot stat: {exc.strerror or exc}")
                    continue
                files.append(FileEntry(relpath, item.path, st.st_size, st.st_mtime_ns, st.st_ino))
        yield reldir, files
        stack.extend(sorted(subdirs, reverse=True))


S_ISDIR, S_ISREG = stat.S_ISDIR, stat.S_ISREG   # bound once: called for every entry of every walk
SPARSE_MIN_SIZE = 1 << 20       # below this, neither holes nor scan.max_size matter enough to look


def listing_problem(st: os.stat_result, scan: ScanConfig, private: Mapping[tuple[int, int], str]) -> str | None:
    """Why a listed regular file is not taken, or None: one of cdn-push's own files under another
    name or link, or an unusual size. Pure."""
    if (st.st_dev, st.st_ino) in private:
        return (f"the same file as {private[st.st_dev, st.st_ino]}, which holds cdn-push's own secrets or "
                "state; never imported")
    return unusual_size(st, scan)


def unusual_size(st: os.stat_result, scan: ScanConfig) -> str | None:
    """Why a large file is not taken: over scan.max_size, or mostly holes (a 1 TB file of zero
    blocks costs minutes to hash and the CDN a terabyte to fetch); None to take it. Pure."""
    if scan.max_size and st.st_size > scan.max_size:
        return f"{st.st_size:,} bytes is over scan.max_size ({scan.max_size:,} bytes); skipped"
    if not scan.allow_sparse and st.st_size >= SPARSE_MIN_SIZE and st.st_blocks * 512 < st.st_size // 8:
        return (f"a sparse file: {st.st_size:,} bytes long but only {st.st_blocks * 512:,} bytes on disk; "
                "skipped (set scan.allow_sparse: true on a compressing filesystem)")
    return None
_buffers = threading.local()


def _hash_buffer(size: int) -> bytearray:
    """One reused buffer per hashing thread: allocating 128 KiB per small file costs more than its hash."""
    buffer = getattr(_buffers, "buffer", None)
    if buffer is None or len(buffer) != size:
        buffer = _buffers.buffer = bytearray(size)
    return buffer


SAFE_OPEN = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def open_regular(path: str) -> tuple[int, os.stat_result]:
    """Open a file of the folder for reading without ever blocking on it: a FIFO or a device swapped
    in for a file would hang a plain open() until a writer comes. Raises FileChangedError for
    anything but a regular file, OSError if it cannot be opened."""
    fd = os.open(path, SAFE_OPEN)
    try:
        found = os.fstat(fd)
    except OSError:
        os.close(fd)
        raise
    if not stat.S_ISREG(found.st_mode):
        os.close(fd)
        raise FileChangedError(f"{path} is not a regular file any more")
    return fd, found


def open_beneath(root: str, relpath: str) -> tuple[int, os.stat_result]:
    """open_regular for a path below `root`, one component at a time from the folder's own
    descriptor, following no symlink: a folder swapped for a link mid-request leads nowhere."""
    parts = relpath.split("/")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                            dir_fd=fd)
            os.close(fd)
            fd = inner
        file_fd = os.open(parts[-1], SAFE_OPEN | os.O_NOFOLLOW, dir_fd=fd)
    finally:
        os.close(fd)
    found = os.fstat(file_fd)
    if not stat.S_ISREG(found.st_mode):
        os.close(file_fd)
        raise FileChangedError(f"{relpath} is not a regular file any more")
    return file_fd, found


def drop_from_page_cache(root: str, relpath: str) -> None:
    """Tell the kernel a file's cached pages are not needed soon (it drops those written back)."""
    with contextlib.suppress(OSError, FileChangedError):
        fd, _ = open_beneath(root, relpath)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def hash_file(entry: FileEntry, progress: Callable[[int], None] = lambda n: None,
              cancel: threading.Event | None = None, buffer_size: int = HASH_BUFFER_SIZE) -> str:
    """sha-256 of the file, read with one reused buffer.

    Raises FileChangedError if the file is not the one that was scanned, or changes
    while it is read; OSError if it cannot be read. Plain os calls: for small files the
    io module's objects cost more than the hash.
    """
    fd, before = open_regular(entry.path)
    try:
        if (before.st_size, before.st_mtime_ns, before.st_ino) != (entry.size, entry.mtime_ns, entry.inode):
            raise FileChangedError(f"{entry.relpath} changed since it was listed")
        digest = hashlib.sha256()
        view = memoryview(_hash_buffer(buffer_size))
        total, size = 0, entry.size
        # Reading stops at the listed size; a file still growing shows in the fstat after.
        while total < size:
            count = os.readv(fd, [view])
            if not count:
                break
            digest.update(view[:count])
            total += count
            if size > buffer_size:
                progress(count)
                if cancel is not None and cancel.is_set():
                    raise HashInterrupted(f"{entry.relpath}: stopped while hashing")
        after = os.fstat(fd)
    finally:
        os.close(fd)
    if total != size or (after.st_size, after.st_mtime_ns, after.st_ino) != (size, entry.mtime_ns, entry.inode):
        raise FileChangedError(f"{entry.relpath} changed while it was hashed")
    if size <= buffer_size and size:
        progress(size)
    return digest.hexdigest()


def hash_outcome(entry: FileEntry, progress: Callable[[int], None] = lambda n: None,
                 cancel: threading.Event | None = None) -> str | Exception:
    """The file's sha-256, or what stopped reading it (FileChangedError, HashInterrupted, OSError)."""
    try:
        return hash_file(entry, progress, cancel)
    except (FileChangedError, HashInterrupted, OSError) as exc:
        return exc


WRITE_FLAGS = re.compile(rb"^flags:\s*([0-7]+)", re.M)


class OpenFiles:
    """Which files some process holds open for writing (their inode numbers), read from
    /proc/*/fdinfo: one look shared by every question within `max_age` seconds, so its cost is
    one walk over the host's descriptors, not one per file. `complete` says whether every process
    could be looked at (root, or all of them ours): only then does "no writer" prove a file done.
    Writers on other machines (NFS, SMB clients) are never seen. One thread uses an instance."""

    def __init__(self, max_age: float, clock: Callable[[], float] = time.monotonic, proc: str = "/proc") -> None:
        self.max_age = max_age
        self.clock = clock
        self.proc = proc
        self.complete = False
        self._inodes: frozenset[int] = frozenset()
        self._taken = -math.inf
        self._under = ""

    def writers(self, under: Path | str = "/", *, refresh: bool = False) -> frozenset[int]:
        """Inodes of files below the folder `under` open for writing (a descriptor elsewhere costs
        one readlink, so a host with many open files is cheap to look at). `refresh`: a look taken
        now, not a shared one up to `max_age` old (which may predate the file's writer)."""
        root = os.path.join(os.path.realpath(under), "")
        if refresh or self.clock() - self._taken >= self.max_age or root != self._under:
            self._under = root
            self._inodes, self.complete = self._look()
            self._taken = self.clock()
        return self._inodes

    def _look(self) -> tuple[frozenset[int], bool]:
        found: set[int] = set()
        complete = True
        try:
            pids = [pid for pid in os.listdir(self.proc) if pid.isdigit()]
        except OSError:
            return frozenset(), False
        for pid in pids:
            try:
                fds = os.listdir(f"{self.proc}/{pid}/fd")
            except PermissionError:
                complete = False           # another user's process: its writers stay unseen
                continue
            except OSError:
                continue                   # it ended meanwhile
            for fd in fds:
                found.update(self._written(pid, fd))
        return frozenset(found), complete

    def _written(self, pid: str, fd: str) -> tuple[int, ...]:
        """The inode behind one descriptor if it is a file below the folder open for writing."""
        try:
            if not os.readlink(f"{self.proc}/{pid}/fd/{fd}").startswith(self._under):
                return ()
            with open(f"{self.proc}/{pid}/fdinfo/{fd}", "rb") as info:
                flags = WRITE_FLAGS.search(info.read(256))
            if flags is None or int(flags.group(1), 8) & (os.O_WRONLY | os.O_RDWR) == 0:
                return ()
            found = os.stat(f"{self.proc}/{pid}/fd/{fd}")
        except OSError:
            return ()
        return (found.st_ino,) if stat.S_ISREG(found.st_mode) else ()


def current_stat(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return st.st_size, st.st_mtime_ns, st.st_ino


# ----------------------------------------------------------------------------
# Ledger
# ----------------------------------------------------------------------------

class LedgerRow(NamedTuple):
    """One file in the ledger: a NamedTuple, cheap enough for folders of millions of files."""

    path: str
    size: int
    mtime_ns: int
    inode: int
    sha256: str | None
    name: str
    state: str
    priority: int = 0
    attempts: int = 0
    last_error: str | None = None
    response: str | None = None
    accepted_name: str | None = None
    accepted_size: int | None = None
    accepted_sha256: str | None = None
    retry_at: float = 0.0
    updated_at: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return self._asdict()


LEDGER_COLUMNS = LedgerRow._fields     # the files table's columns, but `dir` (derived from path)

class QuickRow(NamedTuple):
    """What a rerun needs to see a file is unchanged; `accepted` is worked out by SQLite itself."""

    path: str
    size: int
    mtime_ns: int
    inode: int
    sha256: str | None
    name: str
    accepted: bool
    state: str
    attempts: int
    updated_at: float


MAKE_QUICK_ROW = functools.partial(tuple.__new__, QuickRow)     # QuickRow._make without its Python frame
FIRST_ITEM = operator.itemgetter(0)
QUICK_COLUMNS = ("path", "size", "mtime_ns", "inode", "sha256", "name",
                 f"state IN ({','.join(repr(s) for s in ACCEPTED_STATES)}) AND last_error IS NULL "
                 "AND accepted_sha256 = sha256 AND accepted_size = size AND accepted_name = name",
                 "state", "attempts", "updated_at")
# The rows a rerun passes by on a stat alone: hashed, imported as they are under the name the
# config gives them now (`?` is name_prefix), with nothing to ask the CDN again (confirmed, or
# submitted where no callback is awaited: the last `?`). Never wider than same_file with
# Decider.accepted_as_is, which judge every other row (tests hold the two together).
VOUCHED_SQL = ("SELECT path, size, mtime_ns, inode FROM files WHERE dir=? AND sha256 IS NOT NULL "
               "AND last_error IS NULL AND accepted_sha256 = sha256 AND accepted_size = size "
               "AND accepted_name = name AND name = ? || path "
               f"AND (state = '{STATE_CONFIRMED}' OR (state = '{STATE_SUBMITTED}' AND ?))")
ROW_STAT = operator.itemgetter(1, 2, 3)       # (size, mtime_ns, inode) of a VOUCHED_SQL row
ENTRY_STAT = operator.itemgetter(2, 3, 4)     # the same of a FileEntry

LEDGER_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    dir TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    inode INTEGER NOT NULL,
    sha256 TEXT,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    response TEXT,
    accepted_name TEXT,
    accepted_size INTEGER,
    accepted_sha256 TEXT,
    retry_at REAL NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS files_by_dir ON files (dir);
DROP INDEX IF EXISTS files_by_state;
CREATE INDEX IF NOT EXISTS files_by_queue ON files (state, priority DESC, path);
CREATE INDEX IF NOT EXISTS files_by_inode ON files (inode);
"""
# Indexes on columns that migrations add: made once the ledger is at SCHEMA_VERSION.
LEDGER_INDEXES = "CREATE INDEX IF NOT EXISTS files_by_check ON files (state, retry_at);"


# Forward migrations: MIGRATIONS[n] turns a version-n ledger into version n + 1.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: ("ALTER TABLE files ADD COLUMN retry_at REAL NOT NULL DEFAULT 0",),
    2: ("CREATE INDEX IF NOT EXISTS files_by_check ON files (state, retry_at)",),
}


def make_private_dirs(folder: Path) -> None:
    """Create `folder` and any missing parents 0700, whatever the umask: the state is nobody else's."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700)


def owned_by_another(path: Path) -> str:
    """'is owned by X, but cdn-push runs as Y: ...' when the file is another user's, else ''."""
    import pwd

    owner, me = path.stat().st_uid, os.geteuid()
    if owner == me:
        return ""
    name = lambda uid: next((p.pw_name for p in [pwd.getpwuid(uid)]), str(uid)) if uid in {  # noqa: E731
        p.pw_uid for p in pwd.getpwall()} else str(uid)
    return (f"is owned by user {name(owner)}, but cdn-push runs as {name(me)}: run it as {name(owner)} "
            f"(sudo -u {name(owner)} ...), or hand the state over to {name(me)} with "
            f"chown -R {name(me)} {path.parent}")


def check_state_folder(folder: Path, key: str) -> None:
    """Refuse a folder where other users could plant or swap cdn-push's state files (a planted
    signing key forges callbacks; a planted lock or ledger is read as ours), as OpenSSH's
    StrictModes does: it must be ours or root's, and not writable by others unless sticky (then
    each file is checked to be ours when it is opened)."""
    try:
        st = os.stat(folder)
    except OSError:
        return                  # missing: made 0700 by make_private_dirs; unreadable: the open says so
    if st.st_uid not in (os.geteuid(), 0):
        raise LedgerError(f"the {key}'s folder {folder} belongs to another user (uid {st.st_uid}), who could "
                          f"plant files cdn-push would use: keep the {key} in a folder of this user's or root's")
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise LedgerError(f"the {key}'s folder {folder} can be written by other users (mode "
                          f"{stat.S_IMODE(st.st_mode):o}), who could plant or replace cdn-push's files there: "
                          f"run chmod go-w {folder}, or keep the {key} in a folder of its own")


STATE_OPEN = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def open_state_file(path: Path, flags: int, key: str) -> int:
    """A descriptor on one of cdn-push's own files, never through a link, and only if it is a
    regular file of this user's: nobody else's file is taken over."""
    try:
        fd = os.open(path, flags | STATE_OPEN, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise LedgerError(f"the {key} {path} is a symbolic link; cdn-push never follows links to its own "
                              "files: remove it (or point the setting at the real file)") from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
        os.close(fd)
        raise LedgerError(f"the {key} {path} "
                          f"{owned_by_another(path) if stat.S_ISREG(st.st_mode) else 'is not a regular file'}")
    return fd


def prepare_private_file(path: Path, key: str) -> None:
    """A state file of ours: created 0600 in 0700 folders; another user's is refused, not taken over,
    and so is a folder others could plant its companions (-wal, -shm) in."""
    try:
        make_private_dirs(path.parent)
        check_state_folder(path.parent, key)
        fd = open_state_file(path, os.O_RDONLY | os.O_CREAT, key)
        try:
            if os.fstat(fd).st_mode & 0o077:
                os.fchmod(fd, 0o600)
        finally:
            os.close(fd)
        for suffix in ("-wal", "-shm", "-journal"):     # SQLite opens these itself, links and all
            companion = Path(str(path) + suffix)
            with contextlib.suppress(FileNotFoundError):
                found = os.lstat(companion)
                if not stat.S_ISREG(found.st_mode) or found.st_uid != os.geteuid():
                    raise LedgerError(f"the {key}'s companion {companion} is not a file of this user's: "
                                      "someone else may have planted it; remove it")
    except PermissionError as exc:
        raise LedgerError(f"cannot use the {key} {path}: {exc.strerror}; "
                          f"{owned_by_another(path) if path.exists() else 'check its folder'}") from None


LEDGER_ROOM = 4 * 1024 * 1024      # bytes free under the ledger below which nothing more is sent


def ledger_room(path: str) -> int | None:
    """Bytes free on the file system holding the ledger, or None if that cannot be told."""
    try:
        vfs = os.statvfs(os.path.dirname(os.path.abspath(path)))
    except OSError:
        return None
    return vfs.f_bavail * vfs.f_frsize


def unopenable_ledger(path: str, text: str) -> str:
    """Why SQLite's "unable to open database file": most often another user's ledger."""
    try:
        foreign = owned_by_another(Path(path))
    except PermissionError:
        return (f"ledger {path} cannot be opened ({text}): its folder is not open to this user; run this "
                "as the user the ledger belongs to (sudo -u USER ...)")
    except OSError:
        return f"ledger {path} cannot be opened ({text}): check that its folder exists and is writable"
    if foreign:
        return f"ledger {path} cannot be opened ({text}): it {foreign}"
    return f"ledger {path} cannot be opened ({text}): check the permissions of the file and its folder"


def ledger_advice(path: str, exc: BaseException) -> str:
    """What went wrong with the ledger file, in words that say what to do about it."""
    text = str(exc)
    lowered = text.lower()
    free = None
    with contextlib.suppress(OSError):
        vfs = os.statvfs(os.path.dirname(os.path.abspath(path)))
        free = vfs.f_bavail * vfs.f_frsize
    # SQLite often reports a full disk as a plain "disk I/O error": the free space tells.
    if "disk is full" in lowered or "no space" in lowered or (
            "i/o error" in lowered and free is not None and free < 1024 * 1024):
        return f"the disk holding ledger {path} is full ({text}): free some space and run again"
    if "readonly" in lowered or "read-only" in lowered or "permission" in lowered:
        return (f"ledger {path} cannot be written ({text}): check that the file, its folder and the "
                "file system are writable by this user")
    if "unable to open" in lowered:
        return unopenable_ledger(path, text)
    if "not a database" in lowered or "malformed" in lowered or "corrupt" in lowered:
        return (f"ledger {path} is damaged ({text}): move it aside and run again (every file is then "
                "hashed anew; the CDN answers that unchanged files already exist)")
    return f"ledger {path}: {text}"


class LedgerFile:
    """The SQLite file under the ledger: opening (or a private copy for a dry run), the schema and
    its migrations, transactions, the key/value meta table.

    One connection, used only by the thread that owns it (the pipeline's; check_same_thread is off
    because that thread is not always the one that opened it); other threads open a `reader`.
    WAL lets `status`, the origin and the monitor read while a run writes.
    """

    def __init__(self, connection: sqlite3.Connection, path: str, clock: Callable[[], float] = time.time):
        self._db = connection
        self.path = path
        self._clock = clock
        self._uncommitted = 0
        self._read_only = False

    @classmethod
    def open(cls, path: Path | str, *, clock: Callable[[], float] = time.time) -> "Ledger":
        where = str(path)
        try:
            if where != ":memory:":
                prepare_private_file(Path(where), "ledger")
            db = sqlite3.connect(where, timeout=30.0, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.DatabaseError as exc:
            raise LedgerError(ledger_advice(where, exc)) from None
        except OSError as exc:
            raise LedgerError(f"cannot create ledger {where}: {exc.strerror or exc}") from None
        return cls._ready(db, where, clock)

    @classmethod
    def copy_of(cls, path: Path | str) -> "Ledger":
        """A private in-memory copy, brought to this schema: a dry run reads the real ledger without
        taking its lock, writing to it or migrating it."""
        where = str(path)
        try:
            source = sqlite3.connect(f"file:{quote(where)}?mode=ro", uri=True, timeout=30.0)
            db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
            with contextlib.closing(source):
                source.backup(db)
        except sqlite3.DatabaseError as exc:
            raise LedgerError(ledger_advice(where, exc)) from None
        return cls._ready(db, f"{where} (a copy in memory, for the dry run)", time.time)

    @classmethod
    def _ready(cls, db: sqlite3.Connection, where: str, clock: Callable[[], float]) -> "Ledger":
        """The schema made or checked, and brought forward, on a fresh connection."""
        try:
            db.executescript(LEDGER_SCHEMA)
            found = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if found is None:
                db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif not str(found[0]).isdigit() or int(found[0]) > SCHEMA_VERSION:
                db.close()
                raise LedgerError(f"ledger {where} was written by a newer cdn-push (schema "
                                  f"{found[0]}, this one knows {SCHEMA_VERSION}): upgrade cdn-push, or "
                                  "move the ledger aside to start a new one")
            elif int(found[0]) < SCHEMA_VERSION:
                cls._migrate(db, where, int(found[0]))
            db.executescript(LEDGER_INDEXES)
        except sqlite3.DatabaseError as exc:
            raise LedgerError(ledger_advice(where, exc)) from None
        except OSError as exc:
            raise LedgerError(f"cannot create ledger {where}: {exc.strerror or exc}") from None
        db.execute("BEGIN")
        return cls(db, where, clock)

    @staticmethod
    def _migrate(db: sqlite3.Connection, where: str, version: int) -> None:
        """Bring an older ledger to SCHEMA_VERSION in one transaction: all steps or none."""
        start = version
        db.execute("BEGIN IMMEDIATE")
        try:
            while version < SCHEMA_VERSION:
                for statement in MIGRATIONS[version]:
                    db.execute(statement)
                version += 1
            db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(version),))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        log.info("ledger %s upgraded from schema %d to %d", where, start, version)

    def close(self) -> None:
        if not self._read_only:
            with contextlib.suppress(sqlite3.Error, LedgerError):
                self.commit()
        with contextlib.suppress(sqlite3.Error):
            self._db.close()

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, sql: str, args: Sequence[Any] | Iterable[Sequence[Any]] = (), *, many: bool = False):
        try:
            if many:
                return self._db.executemany(sql, args)
            return self._db.execute(sql, args)
        except sqlite3.DatabaseError as exc:
            raise LedgerError(ledger_advice(self.path, exc)) from None

    def commit(self) -> None:
        try:
            if self._db.in_transaction:   # SQLite rolls back by itself after some errors (disk full)
                self._db.execute("COMMIT")
            self._db.execute("BEGIN")
        except sqlite3.DatabaseError as exc:
            raise LedgerError(ledger_advice(self.path, exc)) from None
        self._uncommitted = 0

    def _changed(self, rows: int, every: int) -> None:
        self._uncommitted += rows
        if self._uncommitted >= every:
            self.commit()

    @staticmethod
    def _row(values: Sequence[Any]) -> LedgerRow:
        return LedgerRow(*values)

    @classmethod
    def reader(cls, path: Path | str) -> "Ledger":
        """A read-only connection of the caller's own, for other threads (origin, monitor)."""
        try:
            db = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=5.0,
                                 isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise LedgerError(ledger_advice(str(path), exc)) from None
        reader = cls(db, str(path))
        reader._read_only = True
        return reader

    def meta(self, key: str) -> str | None:
        found = self._run("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return found[0] if found else None

    def try_write(self) -> bool:
        """Whether the ledger takes a write now (after a failed one: its transaction rolled back)."""
        with contextlib.suppress(sqlite3.Error):
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
        try:
            self.set_meta("written", repr(time.time()))
            return True
        except LedgerError:
            return False

    def set_meta(self, key: str, value: str) -> None:
        self._run("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value", (key, value))
        self._changed(1, 1)


# INDEXED BY: left to itself, SQLite picks files_by_check and sorts every pending row on each call,
# which made a first pass quadratic (5 ms a call at 5,000 pending rows).
NEXT_PENDING_SQL = (f"SELECT {','.join(LEDGER_COLUMNS)} FROM files INDEXED BY files_by_queue "
                    "WHERE state=? AND retry_at <= ? ORDER BY priority DESC, path")


class Ledger(LedgerFile):
    """The record of every file: what it held when hashed and what the CDN accepted, and the
    questions the stages ask of it (rows of a folder, what is due to be sent or asked about)."""

    def get(self, path: str) -> LedgerRow | None:
        found = self._run(f"SELECT {','.join(LEDGER_COLUMNS)} FROM files WHERE path=?", (path,)).fetchone()
        return self._row(found) if found else None

    def quick_rows_in_dir(self, reldir: str) -> dict[str, QuickRow]:
        """The folder's rows, only what tells an unchanged file: cheap for the unchanged majority."""
        cursor = self._run(f"SELECT {','.join(QUICK_COLUMNS)} FROM files WHERE dir=?", (reldir,))
        rows = list(map(MAKE_QUICK_ROW, cursor))        # built in C: a rerun makes one per file
        return dict(zip(map(FIRST_ITEM, rows), rows))

    def folder_rows(self, reldir: str, name_prefix: str, callbacks: bool) -> FolderRows:
        """What a walk needs of a folder's rows: the vouched ones (VOUCHED_SQL) as stats, built in
        C, and the others in full, read only where there are any (a rerun has none)."""
        found = self._run(VOUCHED_SQL, (reldir, name_prefix, not callbacks)).fetchall()
        vouched = dict(zip(map(FIRST_ITEM, found), map(ROW_STAT, found)))
        others: dict[str, QuickRow] = {}
        if self._run("SELECT count(*) FROM files WHERE dir=?", (reldir,)).fetchone()[0] > len(vouched):
            others = {path: row for path, row in self.quick_rows_in_dir(reldir).items() if path not in vouched}
        return FolderRows(self, vouched, others, (name_prefix, callbacks))

    def dirs(self) -> list[str]:
        """Every folder the ledger has a row in (the files_by_dir index answers it)."""
        return [reldir for (reldir,) in self._run("SELECT DISTINCT dir FROM files")]

    def mark_gone(self, paths: Sequence[str]) -> int:
        """Files no longer in the folder: those the CDN never took are forgotten, the others become
        `gone` (updated_at says since when). Returns how many became gone."""
        gone = 0
        for path in paths:
            self._run("DELETE FROM files WHERE path=? AND accepted_sha256 IS NULL AND state != ?",
                      (path, STATE_SUBMITTED))
            gone += self._run("UPDATE files SET state=?, updated_at=? WHERE path=? AND state != ?",
                              (STATE_GONE, self._clock(), path, STATE_GONE)).rowcount
        self._changed(len(paths), 1)
        return gone

    def gone_before(self, when: float, limit: int) -> list[LedgerRow]:
        """Up to `limit` rows gone since before `when`, oldest first."""
        cursor = self._run(f"SELECT {','.join(LEDGER_COLUMNS)} FROM files WHERE state=? AND updated_at < ? "
                           "ORDER BY updated_at LIMIT ?", (STATE_GONE, when, limit))
        return [self._row(values) for values in cursor]

    def rows_in_dir(self, reldir: str) -> list[LedgerRow]:
        cursor = self._run(f"SELECT {','.join(LEDGER_COLUMNS)} FROM files WHERE dir=?", (reldir,))
        return [self._row(values) for values in cursor]

    def sample_accepted(self, count: int) -> list[LedgerRow]:
        """`count` rows picked at random among those the CDN accepted (an audit's sample)."""
        cursor = self._run(f"SELECT {','.join(LEDGER_COLUMNS)} FROM files WHERE state IN (?, ?) "
                           "ORDER BY random() LIMIT ?", (*ACCEPTED_STATES, count))
        return [self._row(values) for values in cursor]

    def quick_row(self, path: str) -> QuickRow | None:
        found = self._run(f"SELECT {','.join(QUICK_COLUMNS)} FROM files WHERE path=?", (path,)).fetchone()
        return QuickRow._make(found) if found else None

    def next_pending(self, limit: int, skip: Callable[[str], bool] = lambda path: False,
                     now: float | None = None) -> list[LedgerRow]:
        """Up to `limit` pending rows due now, highest priority first, then by path, but not those
        `skip` names. The files_by_queue index gives the order, so this reads only what it returns
        and what it skips, whatever the number of pending rows."""
        due = self._clock() if now is None else now
        cursor = self._run(NEXT_PENDING_SQL, (STATE_PENDING, due))
        try:
            return [self._row(values) for values in itertools.islice(
                (values for values in cursor if not skip(values[0])), limit)]
        finally:
            cursor.close()

    def find_moved(self, entries: Sequence[FileEntry]) -> dict[str, str]:
        """sha-256 of listed files that the ledger knows under another path (same size, mtime, inode)."""
        found: dict[str, str] = {}
        for start in range(0, len(entries), 500):
            chunk = entries[start:start + 500]
            by_stat = {(e.size, e.mtime_ns, e.inode): e.relpath for e in chunk}
            cursor = self._run(f"SELECT path, size, mtime_ns, inode, sha256 FROM files WHERE sha256 IS NOT NULL "
                               f"AND inode IN ({','.join('?' * len(chunk))})", [e.inode for e in chunk])
            for path, size, mtime_ns, inode, sha256 in cursor:
                relpath = by_stat.get((size, mtime_ns, inode))
                if relpath is not None and relpath != path:
                    log.debug("%s is %s moved: its sha-256 is known", relpath, path)
                    found[relpath] = sha256
        return found

    def put_many(self, rows: Iterable[LedgerRow], *, commit_every: int = SCAN_COMMIT_EVERY) -> None:
        now = self._clock()
        values = [(*r[:-1], now, r.path.rpartition("/")[0]) for r in rows]
        if not values:
            return
        columns = ",".join(LEDGER_COLUMNS) + ",dir"
        updates = ",".join(f"{c}=excluded.{c}" for c in LEDGER_COLUMNS[1:]) + ",dir=excluded.dir"
        self._run(f"INSERT INTO files ({columns}) VALUES ({','.join('?' * (len(LEDGER_COLUMNS) + 1))}) "
                  f"ON CONFLICT(path) DO UPDATE SET {updates}", values, many=True)
        self._changed(len(values), commit_every)

    def put(self, row: LedgerRow, *, commit: bool = True) -> None:
        """Write one transition and commit it at once, so a kill loses nothing recorded; without
        `commit`, the caller commits the batch it belongs to (a kill loses at most that batch, and
        the answers it held are asked for again: the CDN answers "exists")."""
        self.put_many([row], commit_every=1 if commit else SCAN_COMMIT_EVERY)

    def forget(self, path: str) -> None:
        self._run("DELETE FROM files WHERE path=?", (path,))
        self._changed(1, 1)

    def pending(self, page: int = PENDING_PAGE, now: float | None = None) -> Iterator[LedgerRow]:
        """Pending rows due now, highest priority first, read a page at a time (keyset order)."""
        last_priority, last_path = math.inf, ""
        due = self._clock() if now is None else now
        while True:
            cursor = self._run(
                f"SELECT {','.join(LEDGER_COLUMNS)} FROM files WHERE state=? AND retry_at <= ? AND "
                "(priority < ? OR (priority = ? AND path > ?)) ORDER BY priority DESC, path LIMIT ?",
                (STATE_PENDING, due, last_priority, last_priority, last_path, page))
            rows = [self._row(v) for v in cursor.fetchall()]
            if not rows:
                return
            yield from rows
            last_priority, last_path = rows[-1].priority, rows[-1].path

    def count_pending(self, now: float | None = None) -> int:
        due = self._clock() if now is None else now
        return self._run("SELECT count(*) FROM files WHERE state=? AND retry_at <= ?",
                         (STATE_PENDING, due)).fetchone()[0]

    def served_row(self, relpath: str) -> ServedRow | None:
        """What the built-in origin needs to serve a file or check its callback; None if not hashed."""
        found = self._run("SELECT size, mtime_ns, sha256, state, attempts, inode FROM files "
                          "WHERE path=? AND sha256 IS NOT NULL", (relpath,)).fetchone()
        return ServedRow._make(found) if found else None

    def counts_and_sizes(self) -> tuple[dict[str, int], dict[str, int]]:
        found = self._run("SELECT state, count(*), coalesce(sum(size), 0) FROM files GROUP BY state").fetchall()
        return {state: count for state, count, _ in found}, {state: size for state, _, size in found}

    def problems(self, limit: int) -> list[dict[str, Any]]:
        """Rejected and failed files and conflicts, newest first, with what went wrong."""
        rows = self._run("SELECT path, state, last_error, updated_at FROM files WHERE state IN (?, ?) OR "
                         "(state = ? AND last_error IS NOT NULL) ORDER BY updated_at DESC LIMIT ?",
                         (STATE_REJECTED, STATE_FAILED, STATE_SUBMITTED, limit)).fetchall()
        return [{"path": path, "state": state if state != STATE_SUBMITTED else "conflict",
                 "reason": printable(mask_signed_paths(error or "")), "time": updated}
                for path, state, error, updated in rows]

    def mark_all_accepted(self) -> None:
        """Record every hashed row as imported as it is: for benchmarks and tests that start from a
        folder the CDN already holds."""
        self._run(f"UPDATE files SET state='{STATE_SUBMITTED}', accepted_name=name, accepted_size=size, "
                  "accepted_sha256=sha256 WHERE sha256 IS NOT NULL")
        self.commit()

    def due_checks(self, limit: int, skip: Callable[[str], bool], now: float) -> list[LedgerRow]:
        """Up to `limit` submitted rows whose next question to the CDN is due (`retry_at`: for a
        pending row, when to send it again; for a submitted one, when to ask about it), oldest first."""
        cursor = self._run(f"SELECT {','.join(LEDGER_COLUMNS)} FROM files WHERE state=? AND retry_at <= ? "
                           "ORDER BY retry_at", (STATE_SUBMITTED, now))
        try:
            return [self._row(values) for values in itertools.islice(
                (values for values in cursor if not skip(values[0])), limit)]
        finally:
            cursor.close()

    def make_checks_due(self, now: float) -> int:
        """Every submitted row is asked about now (a one-shot run verifies what earlier runs left)."""
        changed = self._run("UPDATE files SET retry_at=? WHERE state=? AND retry_at > ?",
                            (now, STATE_SUBMITTED, now)).rowcount
        self._changed(changed, 1)
        return changed

    def count_awaiting(self, now: float) -> int:
        """Files not confirmed yet: accepted and awaiting the callback, or reported failed by the CDN
        and waiting to be sent again."""
        return self._run("SELECT count(*) FROM files WHERE state=? OR (state=? AND retry_at > ?)",
                         (STATE_SUBMITTED, STATE_PENDING, now)).fetchone()[0]

    def counts(self) -> dict[str, int]:
        found = dict(self._run("SELECT state, count(*) FROM files GROUP BY state").fetchall())
        return {state: found.get(state, 0) for state in STATES}

    def count_conflicts(self) -> int:
        """Files the CDN holds in an older version that no_replace keeps there (their row says why)."""
        return self._run("SELECT count(*) FROM files WHERE state IN (?, ?) AND last_error IS NOT NULL",
                         ACCEPTED_STATES).fetchone()[0]

    def all_rows(self, state: str | None = None) -> Iterator[LedgerRow]:
        """Every row, or those in `state`; CONFLICT (not a stored state) names the no_replace conflicts."""
        sql = f"SELECT {','.join(LEDGER_COLUMNS)} FROM files"
        args: tuple[Any, ...] = ()
        if state == CONFLICT:
            sql, args = sql + " WHERE state IN (?, ?) AND last_error IS NOT NULL", ACCEPTED_STATES
        elif state:
            sql, args = sql + " WHERE state=?", (state,)
        for values in self._run(sql + " ORDER BY path", args).fetchall():
            yield self._row(values)


class FolderRows:
    """What the ledger knows of one folder, for its walk: `vouched` maps the paths a rerun passes by
    (VOUCHED_SQL) to their (size, mtime_ns, inode); `get` gives any path's QuickRow, as a dict of
    them all would, reading a vouched path's only when asked (its file changed, or is on its way).
    `rules`: the (name_prefix, callbacks on) they were vouched under. Owner thread only."""

    def __init__(self, ledger: Ledger, vouched: dict[str, tuple[int, int, int]], others: dict[str, QuickRow],
                 rules: tuple[str, bool] = ("", False)) -> None:
        self.ledger = ledger
        self.vouched = vouched
        self._others = others
        self.rules = rules
        self._asked = 0             # vouched rows read one by one so far
        self._filled = False        # all the folder's rows read at once

    LAZY_ROWS = 32      # past this many (a folder touched or emptied), the whole folder's rows in one query

    def __contains__(self, path: object) -> bool:
        return path in self._others or path in self.vouched

    def get(self, path: str) -> QuickRow | None:
        row = self._others.get(path)
        if row is None and path in self.vouched and not self._filled:
            if self._asked < self.LAZY_ROWS:
                self._asked += 1
                row = self._others[path] = self.ledger.quick_row(path)
            else:
                self._filled = True
                self._others.update(self.ledger.quick_rows_in_dir(path.rpartition("/")[0]))
                row = self._others.get(path)
        return row

    def gone(self, seen: set[str]) -> list[QuickRow]:
        """The rows of files not among `seen`, but those already gone."""
        missing = sorted((self.vouched.keys() - seen) | (self._others.keys() - seen))
        return [row for row in map(self.get, missing) if row is not None and row.state != STATE_GONE]


class ServedRow(NamedTuple):
    """What the built-in origin needs of a file's row to serve it or check a callback."""

    size: int
    mtime_ns: int
    sha256: str
    state: str
    attempts: int
    inode: int


class LedgerLock:
    """An exclusive flock on '<ledger>.lock', so cron runs never overlap."""

    def __init__(self, ledger_path: Path) -> None:
        self.path = Path(str(ledger_path) + ".lock")
        self._fd: int | None = None

    def acquire(self) -> "LedgerLock":
        try:
            make_private_dirs(self.path.parent)
            check_state_folder(self.path.parent, "ledger")
            fd = open_state_file(self.path, os.O_RDWR | os.O_CREAT, "lock file")
        except OSError as exc:
            raise LedgerError(f"cannot create lock file {self.path}: {exc.strerror or exc}; the ledger's "
                              "folder must be writable by this user") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise LockedError(f"another cdn-push (pid {holder}) is running with ledger "
                              f"{str(self.path)[:-5]}; this run exits") from None
        self._fd = fd
        try:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
        except OSError as exc:      # a full disk: the lock holds all the same; `reload` cannot find the pid
            log.warning("%s", ledger_advice(str(self.path), exc))
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "LedgerLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


# ----------------------------------------------------------------------------
# CDN client
# ----------------------------------------------------------------------------

OUTCOME_ACCEPTED = "accepted"
OUTCOME_EXISTS = "exists"
OUTCOME_REJECTED = "rejected"

EXISTS_TEXT = re.compile(r"already\s+(exists?|present|added|imported|there)|file\s+exists|duplicate", re.I)
ERROR_WORDS = ("error", "fail", "failed", "failure", "denied", "invalid")
AUTH_TEXT = re.compile(r"auth|login|password|credential|forbidden|access denied|not allowed", re.I)


@dataclass(frozen=True)
class CdnAnswer:
    outcome: str
    status: int
    message: str
    body: str


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Retry-After as seconds from now: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        from email.utils import parsedate_to_datetime     # an import costing ~13 ms: only when needed

        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - now) if when else None


def _answer_message(body: str) -> tuple[str, bool | None]:
    """The human message in a JSON or text body, and whether it reports an error (None: unclear)."""
    text = body.strip()
    try:
        data = json.loads(text) if text[:1] in "{[" and text else None
    except ValueError:
        data = None
    if isinstance(data, dict):
        message = next((str(data[k]) for k in ("message", "error", "msg", "description", "detail", "result",
                                               "status") if data.get(k) not in (None, "")), text)
        status = str(data.get("status", data.get("result", ""))).lower()
        is_error = (bool(data.get("error")) or data.get("success") is False or data.get("ok") is False
                    or status in ERROR_WORDS)
        return message, is_error
    first = text.splitlines()[0] if text else ""
    lowered = first.lower()
    is_error = any(lowered.startswith(w) for w in ERROR_WORDS) or lowered.startswith("err")
    return first[:500], (True if is_error else None)


HTML_START = re.compile(r"\s*<(!doctype\s+html|html|head|body)\b", re.I)


def classify_response(status: int, body: str) -> CdnAnswer | _TransientError | CdnAuthError | CdnEndpointError:
    """Turn one HTTP answer of file/add into an outcome; pure, tolerant of unknown formats."""
    message, is_error = _answer_message(body)
    kept = body[:MAX_RECORDED_BODY]
    if status == 407:       # from a proxy on the way, not the CDN
        return CdnAuthError("the proxy between cdn-push and the CDN wants a login (HTTP 407): put it in the "
                            "proxy's URL in HTTPS_PROXY or HTTP_PROXY, as http://LOGIN:PASSWORD@HOST:PORT")
    if status == 401 or (status == 403 and (not message or AUTH_TEXT.search(message))):
        return CdnAuthError(f"the CDN refused the API credentials (HTTP {status}"
                            f"{': ' + message if message else ''}); check api.login and the password")
    # "Later", whatever page a proxy or load balancer wraps it in; but 501: the server has no such
    # method (a plain web server at api.url), which no wait mends.
    if status in (429, 408) or (status >= 500 and status != 501):
        return _TransientError(f"HTTP {status}{': ' + message if message else ''}")
    if status in (404, 405, 501) or 300 <= status < 400 or HTML_START.match(body):
        said = "a web page" if HTML_START.match(body) else f"HTTP {status}" + (
            f" ({printable(message[:200])})" if message else "")
        return CdnEndpointError(f"the CDN answered {said} to file/add: that is about the API address, not "
                                "a file; check 'api.url' (the vendor's ends in /api2)")
    if EXISTS_TEXT.search(message or "") and (status < 300 or 400 <= status < 500):
        return CdnAnswer(OUTCOME_EXISTS, status, message, kept)
    if 200 <= status < 300:
        if is_error:
            return CdnAnswer(OUTCOME_REJECTED, status, message or f"HTTP {status} reporting an error", kept)
        return CdnAnswer(OUTCOME_ACCEPTED, status, message, kept)
    return CdnAnswer(OUTCOME_REJECTED, status, f"HTTP {status}{': ' + message if message else ''}", kept)


LIST_FIELDS = "id,status,size"      # asked of file/list; answers in another order or form are read too
LIST_CONTAINERS = ("files", "data", "items", "result", "list", "rows")


class Listing(NamedTuple):
    """What file/list says of one name: whether it is there, its status word (lower case), its size."""

    found: bool
    status: str = ""
    size: int | None = None


def _listed_size(value: Any) -> int | None:
    text = str(value).strip() if value is not None else ""
    return int(text) if ascii_number(text, 18) else None


def _listing_from_json(data: Any, name: str) -> Listing | None:
    """The entry for `name` in a JSON answer of any of the usual shapes; None if it is not JSON we know."""
    if isinstance(data, dict):
        inner = next((data[k] for k in LIST_CONTAINERS if isinstance(data.get(k), (list, dict))), None)
        if inner is None and any(k in data for k in ("status", "state")) and "files" not in data:
            inner = [data]                       # one file's fields at the top
        data = inner if inner is not None else data
    if isinstance(data, dict):                   # keyed by id
        data = [v for v in data.values() if isinstance(v, dict)]
    if not isinstance(data, list):
        return None
    for item in data:
        if not isinstance(item, dict):
            continue
        listed_name = item.get("full_name", item.get("name"))
        if listed_name not in (None, "") and str(listed_name).lstrip("/") != name.lstrip("/"):
            continue
        status = item.get("status", item.get("state"))
        if status is not None:
            return Listing(True, str(status).strip().lower(), _listed_size(item.get("size")))
    return Listing(False)


def parse_listing(body: str, name: str) -> Listing:
    """file/list's answer for one name, text (one line per file, fields in the order asked) or JSON;
    pure and tolerant: an empty answer, or one without the name, means the CDN does not hold it."""
    text = body.strip()
    if text[:1] in "{[":
        with contextlib.suppress(ValueError):
            found = _listing_from_json(json.loads(text), name)
            if found is not None:
                return found
    asked = LIST_FIELDS.split(",")
    for line in text.splitlines():
        tokens = [t for t in re.split(r"[\s,;|]+", line.strip()) if t]
        if not tokens or [t.lower() for t in tokens[:len(asked)]] == asked:
            continue                              # a blank line, or a header naming the fields
        pairs = dict(t.split("=", 1) for t in tokens if "=" in t)
        if pairs:
            fields = {k.lower(): v for k, v in pairs.items()}
        else:
            fields = dict(zip(asked, tokens))
        status = fields.get("status") or fields.get("state")
        if status:
            return Listing(True, status.lower(), _listed_size(fields.get("size")))
    return Listing(False)


def classify_listing(status: int, body: str, name: str) -> Listing | _TransientError | CdnAuthError | CdnEndpointError:
    """One HTTP answer of file/list; pure. A refused or unknown method is an endpoint error: the
    caller stops asking (a sub-login may be denied file/list) rather than ending the run."""
    if status in (401, 403, 407):
        return CdnAuthError(f"the CDN refused file/list (HTTP {status}): the API login may not be allowed "
                            "this method; confirmations then come from callbacks only")
    if status == 429 or status == 408 or status >= 500:
        return _TransientError(f"HTTP {status} to file/list")
    if status == 404 and re.search(r"no such file|file not found|does not exist|not exist", body, re.I):
        return Listing(False)                     # some APIs answer an empty filter with 404
    if not 200 <= status < 300 or HTML_START.match(body):
        return CdnEndpointError(f"the CDN answered HTTP {status} to file/list; confirmations then come from "
                                "callbacks only")
    return parse_listing(body, name)


class RateLimiter:
    """Spaces requests at most `rate` per second across threads (0: no limit)."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._interval = 1.0 / rate if rate > 0 else 0.0
        self._clock, self._sleep = clock, sleep
        self._next = 0.0
        self._lock = threading.Lock()

    def acquire(self) -> None:
        if not self._interval:
            return
        with self._lock:
            now = self._clock()
            slot = max(now, self._next)
            self._next = slot + self._interval
        if slot > now:
            self._sleep(slot - now)


OTP_LIFETIME = 300       # seconds an OTP stays valid: enough for a slow answer, too short to be worth keeping


def one_time_password(login: str, password: str, now: float, salt: bytes) -> str:
    """The vendor's one-time password, `LOGIN:EXPIRE:SALT:AUTH` with AUTH = md5("EXPIRE:SALT:PASSWORD")
    in hex and SALT the base64 of random bytes with '/' written ','; pure."""
    import base64

    expire = int(now) + OTP_LIFETIME
    salt_text = base64.b64encode(salt).decode("ascii").replace("/", ",")
    auth = hashlib.md5(f"{expire}:{salt_text}:{password}".encode(), usedforsecurity=False).hexdigest()
    return f"{login}:{expire}:{salt_text}:{auth}"


@functools.cache
def one_send_pool_classes() -> dict[str, type]:
    """urllib3's pools, but whose connections write a request's header block and a body given as
    bytes in one send, as http.client does: urllib3 writes them apart, and each write wakes the
    server (a third of a small request's CPU on loopback). Made once, on first use (urllib3 is
    imported only where a request is made)."""
    import urllib3
    from urllib3.connection import HTTPConnection, HTTPSConnection

    class OneSend:
        _body_with_headers: bytes | None = None

        def request(self, method: str, url: str, body: Any = None, headers: Any = None, **options: Any) -> None:
            if isinstance(body, bytes) and not options.get("chunked"):    # sent with the headers, framed by its length
                headers = {**(headers or {}), "Content-Length": str(len(body))}
                self._body_with_headers, body = body, None
            try:
                super().request(method, url, body=body, headers=headers, **options)  # type: ignore[misc]
            finally:
                self._body_with_headers = None

        def _send_output(self, message_body: Any = None, encode_chunked: bool = False) -> None:
            if message_body is None:        # endheaders(), called by urllib3 without the body
                message_body, self._body_with_headers = self._body_with_headers, None
            if not isinstance(message_body, bytes) or encode_chunked:
                return super()._send_output(message_body, encode_chunked)  # type: ignore[misc]
            buffer = self._buffer       # type: ignore[attr-defined]  # http.client's header lines
            buffer.extend((b"", b""))
            message = b"\r\n".join(buffer) + message_body
            del buffer[:]
            self.send(message)          # type: ignore[attr-defined]

    plain = type("OneSendHTTPConnection", (OneSend, HTTPConnection), {})
    tls = type("OneSendHTTPSConnection", (OneSend, HTTPSConnection), {})
    return {"http": type("OneSendHTTPConnectionPool", (urllib3.HTTPConnectionPool,), {"ConnectionCls": plain}),
            "https": type("OneSendHTTPSConnectionPool", (urllib3.HTTPSConnectionPool,), {"ConnectionCls": tls})}


class CdnClient:
    """file/add over a keep-alive session per thread, with bounded retries; basic auth, or a
    one-time password per request (api.auth: otp)."""

    def __init__(self, api: ApiConfig, *, pool_size: int = 4,
                 sleep: Callable[[float], None] = time.sleep,
                 stop: threading.Event | None = None) -> None:
        self.api = api
        self._pool_size = pool_size
        self._sleep = sleep
        self._stop = stop or threading.Event()
        self._local = threading.local()
        self._limiter = RateLimiter(api.rate_limit)
        self._pool_manager: Any = None
        self._host_pool: Any = None         # the API host's pool in the manager, when no proxy is used
        self._api_path = urlsplit(api.url).path.rstrip("/")
        self._sessions_lock = threading.Lock()
        self._headers = {"User-Agent": f"cdn-push/{__version__}",
                         "Content-Type": "application/x-www-form-urlencoded"}
        if api.auth == "basic":
            self._headers["Authorization"] = "Basic " + basic_credentials(api.login, api.password.reveal())
        self.on_retry: Callable[[BaseException | None, float], None] = lambda exc, wait: None
        self._cancelled = threading.Event()
        # Until one answer shows the credentials work, requests go one at a time: a wrong password
        # then costs the account one failed login per run, not one per worker.
        self._credentials_work = threading.Event()
        self._credentials_gate = threading.Lock()
        self._refused: CdnAuthError | None = None
        self._retry_said: set[str] = set()
        if not api.verify_tls:       # cdn-push warns once per run; urllib3 would per request
            import urllib3
            import warnings

            # Here, on the thread that makes the client: the filters are the process's, not a worker's.
            # Only for this API's host: every other unverified request still warns.
            warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning,
                                    message=f".*'{re.escape(urlsplit(api.url).hostname or '')}'")

    def _pool(self) -> Any:
        """The keep-alive connections the workers share: urllib3's pool (requests' own transport),
        driven directly, as requests' per-call work (environment, cookies, hooks) cost three times
        the request. The environment's proxy and CA settings are read once, here; without a proxy,
        the API host's own pool is found once too."""
        return self._pools()[0]

    def _pools(self) -> tuple[Any, Any]:
        """The manager and, without a proxy, the API host's pool in it: made together, read together."""
        with self._sessions_lock:
            if self._pool_manager is None:
                manager = self._make_pool()
                direct = getattr(manager, "proxy", None) is None
                self._pool_manager = manager
                self._host_pool = manager.connection_from_url(self.api.url) if direct else None
            return self._pool_manager, self._host_pool

    def _target(self, method: str) -> tuple[Any, str]:
        """Where a request goes: without a proxy, the API host's pool and the bare path, which spares
        the manager's URL parsing per request (a fifth of a request's CPU); through a proxy, the
        manager and the whole URL, as the proxy needs it."""
        manager, host_pool = self._pools()
        if host_pool is None:
            return manager, f"{self.api.url}/{method}"
        return host_pool, f"{self._api_path}/{method}"

    def _make_pool(self) -> Any:
        import urllib3
        from requests.utils import get_auth_from_url, get_environ_proxies, select_proxy

        verify = self.api.ca_bundle or (self.api.verify_tls and (
            os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True))
        if verify is True:
            import certifi          # what requests verifies with: the same trust as before

            verify = certifi.where()
        tls: dict[str, Any] = ({"cert_reqs": "CERT_REQUIRED", "ca_certs": verify} if verify
                               else {"cert_reqs": "CERT_NONE"})
        options = {"maxsize": self._pool_size, "retries": False, **tls}
        # As requests chose: HTTPS_PROXY (or HTTP_PROXY), else ALL_PROXY, unless NO_PROXY; a login
        # in the proxy's URL goes to the proxy as Basic credentials.
        proxy = select_proxy(self.api.url, get_environ_proxies(self.api.url))
        if proxy and "://" not in proxy:        # `proxy:3128`, as requests and curl take it
            proxy = f"http://{proxy}"
        if proxy and urlsplit(proxy).scheme not in ("http", "https"):
            raise CdnUnavailableError(f"the proxy {shown_url(proxy)} for {self.api.url} is not an http(s) proxy, "
                                      "which cdn-push cannot use: name an http:// proxy in HTTPS_PROXY "
                                      "(or HTTP_PROXY), or leave the API out with NO_PROXY")
        if proxy:
            login, password = get_auth_from_url(proxy)
            credentials = {"Proxy-Authorization": f"Basic {basic_credentials(login, password)}"} if login else None
            manager = urllib3.ProxyManager(proxy, proxy_headers=credentials, **options)
        else:
            manager = urllib3.PoolManager(**options)
        manager.pool_classes_by_scheme = one_send_pool_classes()
        return manager

    def prepare(self) -> None:
        """Make the connection pool ahead of the first request (imports included)."""
        self._pool()

    def cancel(self) -> None:
        """Retry waits end at once (the pipeline halts): the file stays pending for the next run."""
        self._cancelled.set()

    def close(self) -> None:
        with self._sessions_lock:
            pool, self._pool_manager, self._host_pool = self._pool_manager, None, None
        if pool is not None:
            pool.clear()

    def _post_once(self, method: str, params: Mapping[str, str]) -> CdnAnswer:
        return self._request_once(method, params, classify_response)

    def _request_once(self, method: str, params: Mapping[str, str], classify: Callable[[int, str], Any]) -> Any:
        """One request, alone while the credentials are unproven; a refusal is final for every thread."""
        if self._credentials_work.is_set():
            return self._send(method, params, classify)
        with self._credentials_gate:
            if self._refused is not None:
                raise self._refused
            try:
                outcome = self._send(method, params, classify)
            except CdnAuthError as exc:
                self._refused = exc
                raise
            self._credentials_work.set()
            return outcome

    def _send(self, method: str, params: Mapping[str, str], classify: Callable[[int, str], Any]) -> Any:
        """One request through the rate limit; `classify` turns the answer into an outcome or an error."""
        from urllib3.exceptions import HTTPError, NewConnectionError, ProxyError, SSLError
        from urllib3.exceptions import TimeoutError as Urllib3Timeout

        pool, target = self._target(method)
        self._limiter.acquire()
        if self.api.auth == "otp":       # a fresh one for every request, retries included: each works once
            params = {**params, "otp": one_time_password(self.api.login, self.api.password.reveal(), time.time(),
                                                         os.urandom(6))}
        try:
            response = pool.urlopen("POST", target, body=urlencode(params).encode("ascii"), headers=self._headers,
                                    timeout=self.api.timeout, redirect=False, retries=False)
            body = response.data.decode(answer_charset(response.headers.get("Content-Type", "")), "replace")
        except Urllib3Timeout as exc:     # NewConnectionError is one, for old urllib3's sake
            if isinstance(exc, NewConnectionError):
                raise _TransientError(f"cannot reach {self.api.url}: {_short(exc)}", connection=True) from None
            raise _TransientError(f"no answer within {self.api.timeout:g} s", connection=True) from None
        except SSLError as exc:
            raise CdnUnavailableError(tls_advice(self.api.url, str(exc))) from None
        except (HTTPError, OSError) as exc:
            where = "the proxy for" if isinstance(exc, ProxyError) else ""
            raise _TransientError(f"cannot reach {where + ' ' if where else ''}{self.api.url}: {_short(exc)}",
                                  connection=True) from None
        outcome = classify(response.status, body)
        if isinstance(outcome, _TransientError):
            outcome.retry_after = parse_retry_after(response.headers.get("Retry-After"), time.time())
            raise outcome
        if isinstance(outcome, CdnAuthError) and response.status != 407:     # a 407 is the proxy's
            raise CdnAuthError(f"{outcome}; the password in use came from {self.api.password_from or 'nowhere'}")
        if isinstance(outcome, (CdnAuthError, CdnEndpointError)):
            raise outcome
        return outcome

    def _wait(self, retry_state: Any) -> float:
        import tenacity

        policy = self.api.retry
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        backoff = tenacity.wait_random_exponential(multiplier=policy.backoff_base,
                                                   max=policy.backoff_max)(retry_state)
        if isinstance(exc, _TransientError) and exc.retry_after is not None:
            backoff = exc.retry_after + random.uniform(0, 0.1 * max(exc.retry_after, 1.0))
        wait = min(backoff, policy.max_seconds)
        # tenacity asks for the wait before it decides to stop: say it only when we do wait.
        self._local.next_try = (exc, retry_state.attempt_number + 1, wait)
        return wait

    def _sleep_unless_stopped(self, seconds: float) -> None:
        """Waits between retries end at once on a stop, with the real clock or an injected one."""
        exc, attempt, wait = getattr(self._local, "next_try", (None, 0, seconds))
        self.on_retry(exc, wait)
        said = str(exc)
        with self._sessions_lock:           # each kind of trouble is said once; its retries only with -v
            first, _ = said not in self._retry_said, self._retry_said.add(said)
        log.log(logging.WARNING if first else logging.DEBUG,
                "the CDN did not answer well for %s (%s); try %d of %d in %.0fs%s",
                printable(getattr(self._local, "name", "?")), exc, attempt, self.api.retry.attempts, wait,
                "; further retries are logged with -v" if first else "")
        if self._stop.is_set() or self._cancelled.is_set():
            raise StopRequested()
        if self._sleep is time.sleep:
            deadline = time.monotonic() + seconds
            while not (self._stop.is_set() or self._cancelled.is_set()) and time.monotonic() < deadline:
                self._cancelled.wait(min(0.2, deadline - time.monotonic()))     # a stop is seen within 0.2 s
        else:
            self._sleep(seconds)
        if self._stop.is_set() or self._cancelled.is_set():
            raise StopRequested()

    def add_file(self, params: Mapping[str, str]) -> CdnAnswer:
        """Send file/add; returns accepted, exists or rejected, or raises a CdnError."""
        return self._with_retries("file/add", params, classify_response)

    def list_file(self, name: str) -> "Listing":
        """What file/list says of one name (format=text asked, JSON taken too); raises a CdnError."""
        params = {"format": "text", "fields": LIST_FIELDS, "filter_full_name": name}
        return self._with_retries("file/list", params, lambda status, body: classify_listing(status, body, name))

    def delete_file(self, name: str) -> CdnAnswer:
        """Send file/delete for one name; `rejected` when the CDN does not hold it."""
        return self._with_retries("file/delete", {"name": name}, classify_response)

    def _with_retries(self, method: str, params: Mapping[str, str], classify: Callable[[int, str], Any]) -> Any:
        self._local.name = params.get("name", params.get("filter_full_name", "?"))
        attempt: Callable[[], Any] = ((lambda: self._post_once(method, params)) if method == "file/add"  # tests reach it
                                      else (lambda: self._request_once(method, params, classify)))
        try:
            return attempt()        # most requests: one try, and no retry machinery built for it
        except _TransientError as exc:
            first_failure: list[BaseException] = [exc]

        def again() -> Any:         # tenacity sees the first try fail as it did, then tries anew
            if first_failure:
                raise first_failure.pop()
            return attempt()

        import tenacity

        policy = self.api.retry
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(policy.attempts) | tenacity.stop_after_delay(policy.max_seconds),
            wait=self._wait,
            retry=tenacity.retry_if_exception_type(_TransientError),
            sleep=self._sleep_unless_stopped,
            reraise=True,
        )
        try:
            return retrying(again)
        except _TransientError as exc:
            attempts = retrying.statistics.get("attempt_number", policy.attempts)
            if exc.connection:
                raise CdnUnavailableError(f"{exc} (after {attempts} attempts); check 'api.url' and the "
                                          "network") from None
            raise CdnRetriesExhausted(f"{exc} (after {attempts} attempts)") from None


@runtime_checkable
class SubmitClient(Protocol):
    """What the pipeline needs of a CDN client: CdnClient, or a test's fake of it."""

    on_retry: Callable[[BaseException | None, float], None]

    def prepare(self) -> None: ...

    def add_file(self, params: Mapping[str, str]) -> CdnAnswer: ...

    def list_file(self, name: str) -> Listing: ...

    def cancel(self) -> None: ...

    def close(self) -> None: ...


def answer_charset(header: str) -> str:
    """The charset a Content-Type header names, if Python knows it; else UTF-8 (JSON's, and most CDNs')."""
    import codecs

    found = re.search(r"charset=[\"']?([\w.:-]+)", header, re.IGNORECASE)
    if found:
        with contextlib.suppress(LookupError):
            return codecs.lookup(found.group(1)).name
    return "utf-8"


def tls_advice(url: str, error: str) -> str:
    """What a TLS failure talking to the API means, in words that say what to change."""
    if "WRONG_VERSION_NUMBER" in error.upper() or "wrong version number" in error:
        return (f"TLS error talking to {url}: the server does not speak TLS there; if it is plain HTTP, "
                "write api.url with http://")
    if "CERTIFICATE_VERIFY_FAILED" in error.upper():
        return (f"TLS error talking to {url}: its certificate could not be verified; for a private CA, "
                "set api.ca_bundle to its PEM file")
    reason = re.search(r"\[SSL: ([A-Z_]+)\]", error)
    return f"TLS error talking to {url}: {reason.group(1).lower().replace('_', ' ') if reason else 'handshake failed'}"


def _short(exc: BaseException) -> str:
    """A one-line reason from a requests exception, without its nested repr noise."""
    text = str(exc)
    match = re.search(r"\] ([^'\")]+)", text) or re.search(r"(Connection refused|Name or service not known"
                                                          r"|timed out|reset by peer)", text)
    return match.group(1).strip() if match else text.splitlines()[0][:200]


# ----------------------------------------------------------------------------
# Origin and callbacks
# ----------------------------------------------------------------------------

SIGNATURE_HEX = 32          # 128 bits of HMAC-SHA256 in every signed link and token
SEND_CHUNK = 8 * 1024 * 1024
SERVED_TALLIES_MAX = 4096       # files partly sent, tallied until the rest of them is


def load_origin_secret(path: Path, env: Mapping[str, str]) -> tuple[bytes, list[str]]:
    """The key that signs locations and callback tokens; created 0600 on first use."""
    from_env = env.get(ENV_ORIGIN_SECRET, "")
    if from_env:
        if len(from_env) < 16:
            raise ConfigError(f"{ENV_ORIGIN_SECRET} must be at least 16 characters")
        return from_env.encode(), []
    warnings: list[str] = []
    try:
        make_private_dirs(path.parent)
        check_state_folder(path.parent, "origin secret")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | STATE_OPEN, 0o600)
    except FileExistsError:
        try:
            with os.fdopen(open_state_file(path, os.O_RDONLY, "origin secret"), "rb") as handle:
                data = handle.read(4096).strip()
                mode = os.fstat(handle.fileno()).st_mode
        except LedgerError as exc:
            raise ConfigError(f"{exc}: a key someone else can change could sign links for them; delete it "
                              "(a new one is made) or chown it") from None
        except OSError as exc:
            raise ConfigError(f"cannot read the origin secret {path}: {exc.strerror or exc}") from None
        if len(data) < 16:
            raise ConfigError(f"the origin secret {path} is too short: delete it and a new one is made")
        if mode & 0o077:
            warnings.append(f"{path} (the origin secret) is readable by other users: run chmod 600 {path}")
        return data, warnings
    except OSError as exc:
        raise ConfigError(f"cannot create the origin secret {path}: {exc.strerror or exc}") from None
    secret = os.urandom(32).hex().encode()
    with os.fdopen(fd, "wb") as handle:
        handle.write(secret + b"\n")
    return secret, warnings


@dataclass(frozen=True)
class UrlSigner:
    """HMAC-SHA256 signatures for origin locations and callback tokens."""
    secret: bytes

    def sign(self, *parts: str) -> str:
        return hmac.new(self.secret, "\n".join(parts).encode(), hashlib.sha256).hexdigest()[:SIGNATURE_HEX]

    def verify(self, signature: str, *parts: str) -> bool:
        return hmac.compare_digest(signature.encode(), self.sign(*parts).encode())

    def location(self, public_url: str, relpath: str, expires: int) -> str:
        return f"{public_url}/o/{expires}/{self.sign('o', str(expires), relpath)}/{quote_path(relpath)}"

    def callback(self, public_url: str, relpath: str, sha256: str, attempt: int) -> str:
        token = self.sign("cb", relpath, sha256, str(attempt))
        return f"{public_url}/cb/{attempt}/{token}/{quote_path(relpath)}"


def safe_relpath(encoded: str) -> str | None:
    """Decode a request path into a relative path, or None for anything that could escape."""
    if not encoded or encoded.startswith("/"):
        return None
    segments = [unquote(segment) for segment in encoded.split("/")]
    if any(seg in ("", ".", "..") or "/" in seg or "\0" in seg for seg in segments):
        return None
    return "/".join(segments)


def parse_range(header: str | None, size: int) -> tuple[int, int] | None | str:
    """A single byte range as (start, end inclusive); None to send it all; 'unsatisfiable'.

    A malformed or multi-range header is ignored, as RFC 9110 allows.
    """
    if not header or size == 0:
        return None
    found = re.fullmatch(r"[ \t]*bytes[ \t]*=[ \t]*([0-9]*)[ \t]*-[ \t]*([0-9]*)[ \t]*", header)
    if not found or not (found.group(1) or found.group(2)):
        return None
    first, last = found.groups()
    if first:
        start = bounded_int(first)
        end = min(bounded_int(last), size - 1) if last else size - 1
        if last and bounded_int(last) < start:
            return None
        if start >= size:
            return "unsatisfiable"
        return start, end
    length = bounded_int(last)
    if length == 0:
        return "unsatisfiable"
    return max(0, size - length), size - 1


@dataclass(frozen=True)
class CallbackReport:
    relpath: str
    attempt: int
    success: bool
    size: int | None
    sha256: str
    message: str
    received: float


class CallbackInbox:
    """Hands callbacks from server threads to the one thread that writes the ledger.

    Once closed (the halt path), `put` refuses: the server then answers 503, so the CDN is
    never told "ok" for a report that would not be recorded.
    """

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.queue: queue.SimpleQueue[CallbackReport] = queue.SimpleQueue()
        self.deferred: list[CallbackReport] = []
        self.wake: threading.Event | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._monotonic = monotonic
        self._served: dict[str, int] = {}       # bytes sent of files not yet sent whole
        self._fetched: list[str] = []           # files sent whole since the last take_fetched()
        self._sending = 0                       # responses with file bytes on their way now
        self.last_served = float("-inf")        # when the origin last sent a byte (monotonic)

    @contextlib.contextmanager
    def sending(self) -> Iterator[None]:
        """Origin threads, around a response's file bytes: a slow fetch is a fetch, not idleness."""
        with self._lock:
            self._sending += 1
        try:
            yield
        finally:
            with self._lock:
                self._sending -= 1
                self.last_served = self._monotonic()

    def served(self, relpath: str, count: int, size: int) -> bool:
        """Origin threads: `count` more bytes of a `size`-byte file went out. True once, when as
        many bytes as the file holds have (its ranges may come on several connections)."""
        with self._lock:
            self.last_served = self._monotonic()
            total = self._served.pop(relpath, 0) + count
            if total < size:
                if len(self._served) >= SERVED_TALLIES_MAX:     # fetches given up halfway: the oldest go
                    del self._served[next(iter(self._served))]
                self._served[relpath] = total
                return False
            self._fetched.append(relpath)
        self._nudge()
        return True

    def _nudge(self) -> None:
        """Wake the owner thread's loop (outside the lock: it takes the inbox's lock to read)."""
        if self.wake is not None:
            self.wake.set()

    def idle_seconds(self) -> float:
        """Seconds since the origin last sent a byte (infinite if it never did; 0 while it sends)."""
        with self._lock:
            return 0.0 if self._sending else self._monotonic() - self.last_served

    def take_fetched(self) -> list[str]:
        """Owner thread: the files sent whole since the last call."""
        with self._lock:
            fetched, self._fetched = self._fetched, []
        return fetched

    def put(self, report: CallbackReport) -> bool:
        with self._lock:
            if self._closed:
                return False
            self.queue.put(report)
        self._nudge()
        return True

    def close(self) -> None:
        with self._lock:
            self._closed = True

    def reopen(self) -> None:
        """Callbacks taken again: a fresh pipeline records them (the service after a ledger failure)."""
        with self._lock:
            self._closed = False

    def take(self) -> list[CallbackReport]:
        reports, self.deferred = self.deferred, []
        while True:
            try:
                reports.append(self.queue.get_nowait())
            except queue.Empty:
                return reports


class DeadlineReader(io.RawIOBase):
    """A connection's reads under one deadline for a whole request head, idle time before it included.

    A per-read timeout alone lets a client that sends one byte a second hold a thread forever.
    """

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self.sock = sock
        self.deadline = deadline
        self._then: float | None = None

    def readable(self) -> bool:
        return True

    def expect_request(self, idle: float, head: float) -> None:
        """The next request may wait `idle` seconds to begin; then its head must be in within `head`."""
        self.deadline, self._then = time.monotonic() + idle, head

    def readinto(self, buffer: Any) -> int:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the request head did not arrive in time")
        self.sock.settimeout(remaining)
        count = self.sock.recv_into(buffer)
        if count and self._then is not None:
            self.deadline, self._then = time.monotonic() + self._then, None
        return count


def tls_handshake(context: Any, sock: socket.socket, deadline: float) -> Any:
    """The TLS handshake on the connection's own thread, all of it within `deadline`."""
    import ssl

    tls = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
    tls.setblocking(False)
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            wanted = ([tls], [])
        except ssl.SSLWantWriteError:
            wanted = ([], [tls])
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not any(select.select(*wanted, [], remaining)):
            raise TimeoutError("the TLS handshake did not finish in time")
    tls.setblocking(True)
    return tls


def bounded_int(digits: str) -> int:
    """ASCII digits as a number; beyond 18 digits, 10**18 (larger than any file): never a ValueError."""
    return int(digits) if len(digits) <= 18 else 10 ** 18


class PlainHTTP:
    """What the origin's and the monitor's request handlers share, mixed into http.server's."""

    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.1"    # a malformed request line still gets a status line
    disable_nagle_algorithm = True          # else keep-alive answers stall ~40 ms each

    def version_string(self) -> str:
        return "cdn-push"

    def parse_request(self) -> bool:
        if not super().parse_request():      # type: ignore[misc]
            return False
        if self.request_version == "HTTP/0.9":    # else http.server answers with a bare body, no status line
            self.request_version = "HTTP/1.0"
            self.close_connection = True
            self.send_body(400, b"HTTP/1.0 or HTTP/1.1 only\n", "text/plain; charset=utf-8", {"Connection": "close"})
            return False
        return True

    def send_body(self, status: int, body: bytes, kind: str, headers: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class OriginRequests(PlainHTTP):
    """One connection to the built-in origin, mixed into http.server's handler by origin_handler_class;
    `self.server` is the OriginServer."""

    server: "OriginServer"

    def __init__(self, request: Any, client_address: Any, server: "OriginServer", deadline: float,
                 slot: "OriginSlot") -> None:
        self.first_deadline = deadline
        self.slot = slot
        super().__init__(request, client_address, server)

    def setup(self) -> None:
        self.connection = self.request
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        self.reader = DeadlineReader(self.connection, self.first_deadline)
        self.rfile = io.BufferedReader(self.reader)
        self.wfile = self.connection.makefile("wb", buffering=0)

    def handle(self) -> None:
        serve = self.server.serve
        self.handle_one_request()
        while not self.close_connection:
            self.slot.idle_since = time.monotonic()     # from now on, a full server may close it
            self.reader.expect_request(serve.idle_timeout, serve.header_timeout)
            self.handle_one_request()

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        self.slot.idle_since = None
        self.connection.settimeout(self.server.serve.idle_timeout)   # a stalled reader of a download
        length = self.headers.get("Content-Length", "0").strip() or "0"
        if self.headers.get("Transfer-Encoding") is not None or not ascii_number(length, 18):
            self.refuse(400, "request bodies are not accepted here")
            return False
        if int(length):
            self.refuse(405 if self.command not in ("GET", "HEAD") else 400,
                        "request bodies are not accepted here")
            return False
        return True

    def refuse(self, status: int, text: str) -> None:
        self.close_connection = True
        self.plain(status, text, {"Connection": "close"})

    def send_response(self, code: int, message: str | None = None) -> None:
        super().send_response(code, message)
        if self.request_version == "HTTP/1.0" and not self.close_connection:
            self.send_header("Connection", "keep-alive")   # else an HTTP/1.0 client waits for a close

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        log.debug("origin: %s %s", self.address_string(), printable(mask_signed_paths(format % args)))

    def plain(self, status: int, text: str, headers: Mapping[str, str] | None = None) -> None:
        self.send_body(status, (text + "\n").encode(), "text/plain; charset=utf-8", headers)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        if path.startswith("/o/") and self.server.config.origin.serve is not None:
            self.serve_file(path[3:])
        elif path.startswith("/cb/") and self.command == "GET":
            self.take_callback(path[4:], query)
        elif path.startswith("/probe/") and self.server.take_probe(path[7:]):
            self.plain(200, PROBE_ANSWER)
        else:
            self.refuse(404, "not found")

    def do_POST(self) -> None:
        self.plain(405, "method not allowed", {"Allow": "GET, HEAD"})

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_POST

    def serve_file(self, rest: str) -> None:
        expires, _, rest = rest.partition("/")
        signature, _, encoded = rest.partition("/")
        relpath = safe_relpath(encoded)
        if relpath is None:     # refused requests close their connection: its slot is free at once
            self.refuse(404, "not found")
            return
        if not ascii_number(expires, 12) or not self.server.signer.verify(signature, "o", expires, relpath):
            self.refuse(403, "bad signature")
            return
        if int(expires) < self.server.clock():
            self.refuse(403, "link expired")
            return
        found = self.server.open_recorded(relpath)
        if found is None:
            self.refuse(404, "not found")
            return
        handle, row = found
        with handle:
            if (row.size, row.mtime_ns) != (os.fstat(handle.fileno()).st_size,
                                            os.fstat(handle.fileno()).st_mtime_ns):
                # Serving it would hand the CDN bytes that fail the chksum it was given.
                self.refuse(409, "file changed since it was hashed; it will be submitted again")
                return
            self.send_content(handle, relpath, row)

    def send_content(self, handle: Any, relpath: str, row: "ServedRow") -> None:
        size = row.size
        wanted = parse_range(self.headers.get("Range"), size)
        if wanted == "unsatisfiable":
            self.plain(416, "range not satisfiable", {"Content-Range": f"bytes */{size}"})
            return
        start, end = wanted if isinstance(wanted, tuple) else (0, size - 1)
        length = end - start + 1 if size else 0
        self.send_response(206 if isinstance(wanted, tuple) else 200)
        self.send_header("Content-Type", content_type(relpath))
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{row.sha256}"')
        self.send_header("Last-Modified", http_date(row.mtime_ns / 1e9))
        if isinstance(wanted, tuple):
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if self.command == "HEAD" or not length:
            return
        sent, inbox = 0, self.server.inbox
        with inbox.sending():
            while sent < length:       # zero-copy: the kernel moves the bytes
                count = self.connection.sendfile(handle, start + sent, min(SEND_CHUNK, length - sent))
                if not count:
                    self.close_connection = True
                    return
                sent += count
                if inbox.served(relpath, count, size):
                    # The CDN has it all: its pages make room for the files hashed and not fetched yet
                    # (left in, they are kept ahead of those, as pages read twice). Those still in the
                    # socket's buffer stay; the owner thread drops them when it hears of the fetch.
                    os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)

    def take_callback(self, rest: str, query: str) -> None:
        attempt, _, rest = rest.partition("/")
        token, _, encoded = rest.partition("/")
        relpath = safe_relpath(encoded)
        row = self.server.recorded(relpath) if relpath and ascii_number(attempt, 9) else None
        # Unknown path, bad token, an import not awaited: one answer, so nothing tells which files exist.
        if row is None or not self.server.signer.verify(token, "cb", relpath, row.sha256, attempt) or not (
                (row.state == STATE_SUBMITTED and 1 <= int(attempt) <= row.attempts)
                or (row.state == STATE_PENDING and row.attempts + 1 == int(attempt))):
            self.refuse(404, "no such import")
            return
        fields = dict(parse_qsl(query, keep_blank_values=True))
        status, size = fields.get("status", ""), fields.get("size", "")
        if status not in ("success", "fail") or (size and not ascii_number(size, 18)):
            self.refuse(400, "status must be success or fail, and size a number")
            return
        accepted = self.server.inbox.put(CallbackReport(
            relpath=relpath, attempt=int(attempt), success=status == "success",
            size=int(size) if size else None, sha256=fields.get("sha-256", "").lower()[:64],
            message=printable(fields.get("message", "")[:500]), received=self.server.clock()))
        if accepted:
            self.plain(200, "ok")
        else:
            self.plain(503, "shutting down; call again later", {"Retry-After": "60"})


@functools.cache
def origin_handler_class() -> type:
    """OriginRequests on http.server's handler, made on first use: http.server costs start-up time that runs without a server never need."""
    from http.server import BaseHTTPRequestHandler

    class OriginHandler(OriginRequests, BaseHTTPRequestHandler):
        pass

    return OriginHandler


PROBE_ANSWER = "cdn-push origin"


def probe_origin(url: str, size: int | None, *, timeout: float = 10.0) -> str | None:
    """Fetch once what the CDN will fetch: None if it works, else what went wrong, in words."""
    import requests

    try:
        if size is None:
            answer = requests.get(url, timeout=timeout, allow_redirects=False)
            if answer.status_code == 200 and answer.text.startswith(PROBE_ANSWER):
                return None
            return f"it answered HTTP {answer.status_code}, which is not this cdn-push"
        answer = requests.head(url, timeout=timeout, allow_redirects=True)
    except requests.RequestException as exc:
        return f"it could not be reached: {printable(_short(exc))}"
    length = answer.headers.get("Content-Length", "")
    if answer.status_code != 200:
        return f"HEAD of the first file's location answered HTTP {answer.status_code}"
    if ascii_number(length, 18) and int(length) != size:
        return f"the first file's location holds {length} bytes, but the file has {size}"
    return None


def http_date(stamp: float) -> str:
    """An HTTP date (RFC 9110's IMF-fixdate) for a Unix time, as email.utils.formatdate(usegmt=True) makes."""
    t = time.gmtime(stamp)        # names spelled out: strftime's %a and %b follow the locale
    return (f"{('Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat', 'Sun')[t.tm_wday]}, {t.tm_mday:02d} "
            f"{('Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec')[t.tm_mon - 1]} "
            f"{t.tm_year} {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT")


def content_type(relpath: str) -> str:
    import mimetypes

    return mimetypes.guess_type(relpath, strict=False)[0] or "application/octet-stream"


class OriginSlot:
    """One admitted connection: its address, and since when it waits for a request (None while one
    is read or answered). Its connection thread sets `idle_since`; the accept thread reads it
    under the server's lock to choose a connection to close when all slots are taken."""

    __slots__ = ("address", "idle_since")

    def __init__(self, address: str, idle_since: float | None) -> None:
        self.address = address
        self.idle_since = idle_since


IDLE_EVICT_AFTER = 0.5      # seconds a kept connection must have waited before a newcomer may take its slot


def address_allowed(address: str, networks: Sequence[Any]) -> bool:
    """Whether a client address lies in one of `networks` (CIDR text or parsed networks; any, when
    there are none); pure."""
    if not networks:
        return True
    import ipaddress

    try:
        found = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(found, ipaddress.IPv6Address) and found.ipv4_mapped is not None:
        found = found.ipv4_mapped
    return any(found in ipaddress.ip_network(network, strict=False) for network in networks)


def listen_advice(port: int, exc: OSError) -> str:
    """What to do when a listening socket cannot be made (pure): the usual two causes, said."""
    if exc.errno == errno.EACCES and 0 < port < 1024:
        return "; ports below 1024 need root: use a port of 1024 or more (and put it in the public URL too)"
    if exc.errno == errno.EADDRINUSE:
        return "; another program listens there already: stop it, or use another port"
    return ""


def address_networks(cidrs: Sequence[str]) -> tuple[Any, ...]:
    import ipaddress

    return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)


class OriginServer:
    """Serves the folder's recorded files at signed URLs and takes the CDN's callbacks.

    One thread accepts and never talks to a client; each connection gets a thread of its own,
    where the TLS handshake and the request head must finish within `header_timeout`. No more
    than `max_connections` at once, and no address more than half of them: when full, the
    connection idle longest between requests is closed for a newcomer (as nginx does), and
    without one idle the newcomer gets a quick 503 (plain HTTP) or a close (TLS). A refused
    request (unsigned, expired, unknown) closes its connection. Addresses outside
    `allow_from` are closed at once. Stopping never waits on a client.
    """

    def __init__(self, config: Config, signer: UrlSigner, inbox: CallbackInbox,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.signer = signer
        self.inbox = inbox
        self.clock = clock
        self.folder_real = os.path.realpath(config.folder)
        self.private = dict(config.private_files)
        self.private_ids = private_identities(config)
        self.serve = config.origin.serve or ServeConfig("", 0, "", max_connections=64)
        # parsed once here, not on every accepted connection
        self.allow_from = address_networks(self.serve.allow_from)
        host = config.origin.serve.listen_host if config.origin.serve else config.callback.listen_host
        port = config.origin.serve.listen_port if config.origin.serve else config.callback.listen_port
        key = "origin.serve.listen" if config.origin.serve else "callback.listen"
        try:
            self.sock = socket.create_server((host, port), backlog=128)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port} ({key}): {exc.strerror or exc}"
                              f"{listen_advice(port, exc)}") from None
        self.tls = self._tls_context()
        self._lock = threading.Lock()
        self._open: dict[socket.socket, OriginSlot] = {}
        self._probes_taken: set[str] = set()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def _tls_context(self) -> Any:
        serve = self.config.origin.serve
        if not (serve and serve.cert):
            return None
        import ssl

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(serve.cert, serve.key)
        except (OSError, ssl.SSLError) as exc:
            self.sock.close()
            raise ConfigError(f"cannot load origin.serve.cert/key ({serve.cert}): {exc}") from None
        return context

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def start(self) -> "OriginServer":
        self.sock.settimeout(0.2)
        self._thread = threading.Thread(target=self._accept_loop, daemon=True, name="origin")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(5)
        self.sock.close()
        with self._lock:
            for conn in self._open:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)    # their threads end at once; none is waited for

    def __enter__(self) -> "OriginServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, address = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                time.sleep(0.05)       # EMFILE and the like: let connections close
                continue
            if self._admit(conn, address[0]):
                threading.Thread(target=self._connection, args=(conn, address), daemon=True,
                                 name="origin-connection").start()

    def _admit(self, conn: socket.socket, address: str) -> bool:
        if not address_allowed(address, self.allow_from):
            with contextlib.suppress(OSError):
                conn.close()
            return False
        with self._lock:
            mine = [held for held in self._open.items() if held[1].address == address]
            full = len(self._open) >= self.serve.max_connections
            if full or len(mine) >= self.serve.max_per_client:
                self._evict_idle(mine if not full else list(self._open.items()))
            if len(self._open) < self.serve.max_connections and len(
                    [1 for slot in self._open.values() if slot.address == address]) < self.serve.max_per_client:
                self._open[conn] = OriginSlot(address, time.monotonic())
                return True
        if self.tls is None:       # a plain client hears why; a TLS one would need a handshake first
            conn.setblocking(False)
            with contextlib.suppress(OSError):
                conn.send(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\n"
                          b"Content-Length: 0\r\nConnection: close\r\n\r\n")
        with contextlib.suppress(OSError):
            conn.close()
        return False

    def _evict_idle(self, among: list[tuple[socket.socket, OriginSlot]]) -> None:
        """Close the connection of `among` idle longest (at least IDLE_EVICT_AFTER); under the lock."""
        now = time.monotonic()
        idle = [(slot.idle_since, index, conn) for index, (conn, slot) in enumerate(among)
                if slot.idle_since is not None and now - slot.idle_since >= IDLE_EVICT_AFTER]
        if idle:
            conn = min(idle)[2]
            del self._open[conn]
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)     # its thread sees the end and leaves

    def _connection(self, conn: socket.socket, address: tuple[str, int]) -> None:
        deadline = time.monotonic() + self.serve.header_timeout
        with self._lock:
            slot = self._open.get(conn) or OriginSlot(address[0], None)
        try:
            stream = tls_handshake(self.tls, conn, deadline) if self.tls is not None else conn
            origin_handler_class()(stream, address, self, deadline, slot)
        except (OSError, ValueError) as exc:    # hang-ups, time-outs, TLS errors: normal on the internet
            log.debug("origin: connection from %s ended: %s", address[0], printable(str(exc)))
        finally:
            with self._lock:
                self._open.pop(conn, None)
            with contextlib.suppress(OSError):
                conn.close()

    def take_probe(self, rest: str) -> bool:
        """A signed, single-use probe: cdn-push checking that its public_url leads here."""
        expires, _, signature = rest.partition("/")
        if not ascii_number(expires, 12) or int(expires) < self.clock() or not self.signer.verify(
                signature, "probe", expires):
            return False
        with self._lock:
            if signature in self._probes_taken:
                return False
            self._probes_taken.add(signature)
        return True

    def recorded(self, relpath: str) -> "ServedRow | None":
        if relpath in self.private:
            return None
        try:
            with Ledger.reader(self.config.ledger) as ledger:
                return ledger.served_row(relpath)
        except LedgerError:
            return None

    def open_recorded(self, relpath: str) -> tuple[Any, "ServedRow"] | None:
        """The file at `relpath`, opened, if the ledger knows it and it lies inside the folder."""
        row = self.recorded(relpath)
        if row is None:
            return None
        try:
            if self.config.scan.follow_symlinks:     # links the walk followed: the inode check below decides
                real = os.path.realpath(os.path.join(self.folder_real, relpath))
                if os.path.commonpath([self.folder_real, real]) != self.folder_real:
                    return None
                fd, found = open_regular(real)
            else:
                fd, found = open_beneath(self.folder_real, relpath)
        except (OSError, FileChangedError):
            return None
        if found.st_ino != row.inode or (found.st_dev, found.st_ino) in self.private_ids:
            os.close(fd)             # another file swapped in under the name: not what was hashed
            return None
        return os.fdopen(fd, "rb"), row


# ----------------------------------------------------------------------------
# Pipeline
# ----------------------------------------------------------------------------

def decide(row: LedgerRow | None, name: str, size: int, sha256: str, *,
           no_replace: bool = False, retry_rejected: bool = False) -> str:
    """What to do with a hashed file, following the CDN's reimport rules."""
    if row is not None and row.state == STATE_REJECTED and not retry_rejected and (
            row.name, row.size, row.sha256) == (name, size, sha256):
        return DECISION_STILL_REJECTED
    if row is None or row.accepted_sha256 is None:
        return DECISION_NEW
    if (row.accepted_name, row.accepted_size, row.accepted_sha256) == (name, size, sha256):
        return DECISION_UNCHANGED
    if row.accepted_name != name:
        return DECISION_NEW
    if no_replace:
        return DECISION_CONFLICT
    return DECISION_CHANGED


def row_after_decision(decision: str, entry: FileEntry, row: LedgerRow | None, name: str,
                       sha256: str, priority: int) -> LedgerRow:
    """The ledger row that records a decision; pure."""
    seen = dict(path=entry.relpath, size=entry.size, mtime_ns=entry.mtime_ns, inode=entry.inode,
                sha256=sha256, name=name, priority=priority)
    if row is None:
        return LedgerRow(state=STATE_PENDING, **seen)
    if decision in (DECISION_NEW, DECISION_CHANGED):
        resend = (row.name, row.size, row.sha256) == (name, entry.size, sha256) and row.state == STATE_PENDING
        # A resend keeps its count and its back-off; new content goes at once (a submitted row's
        # retry_at is when to ask the CDN about the old content, not when to send this).
        return row._replace(state=STATE_PENDING, attempts=row.attempts if resend else 0,
                            retry_at=row.retry_at if resend else 0.0, last_error=None, **seen)
    if decision == DECISION_UNCONFIRMED:    # attempts kept: they bound how often we ask again
        return row._replace(state=STATE_PENDING, last_error=None, retry_at=0.0, **seen)
    if decision == DECISION_UNCHANGED:
        state = row.state if row.state in ACCEPTED_STATES else STATE_SUBMITTED
        return row._replace(state=state, last_error=None, **seen)
    if decision == DECISION_CONFLICT:
        return row._replace(
            last_error="content changed but no_replace is set: the CDN keeps the old file; "
                            "rename the file to import it as a new one", **seen)
    return row._replace(**seen)


@dataclass
class RunSummary:
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    waiting: int = 0
    submitted: int = 0
    rejected: int = 0
    failed: int = 0
    conflicts: int = 0
    unreadable: int = 0
    confirmed: int = 0
    unconfirmed: int = 0
    resent: int = 0
    gone: int = 0
    deleted: int = 0
    deletes_refused: int = 0
    bytes_hashed: int = 0
    hashed_files: int = 0
    interrupted: bool = False
    fatal: CdnPushError | None = None
    started: float = field(default_factory=time.monotonic)

    def line(self) -> str:
        parts = [f"{self.new} new", f"{self.changed} changed", f"{self.unchanged} unchanged",
                 f"{self.waiting} waiting", f"{self.submitted} submitted", f"{self.rejected} rejected",
                 f"{self.failed} failed"]
        if self.resent:
            parts.append(f"{self.resent} resent unconfirmed")
        if self.confirmed or self.unconfirmed:
            parts.append(f"{self.confirmed} confirmed")
        if self.unconfirmed:
            parts.append(f"{self.unconfirmed} unconfirmed")
        if self.conflicts:
            parts.append(plural(self.conflicts, "conflict"))
        if self.unreadable:
            parts.append(f"{self.unreadable} unreadable")
        if self.gone:
            parts.append(f"{self.gone} gone from the folder")
        if self.deleted:
            parts.append(f"{self.deleted} deleted from the CDN")
        tail = " (aborted: see the error above)" if self.fatal is not None else (
            " (interrupted)" if self.interrupted else "")
        return f"summary: {', '.join(parts)} in {time.monotonic() - self.started:.1f}s{tail}"

    def since(self, before: "RunSummary") -> "RunSummary":
        """What happened after `before` was copied from this summary (a watch service's one pass)."""
        counted = {f.name: getattr(self, f.name) - getattr(before, f.name) for f in dataclasses.fields(self)
                   if f.type in ("int", int)}
        return RunSummary(**counted, started=before.started)

    def exit_code(self) -> int:
        if self.fatal is not None:
            return exit_code_for(self.fatal)
        if (self.rejected or self.failed or self.conflicts or self.unreadable or self.unconfirmed
                or self.interrupted or self.deletes_refused):
            return EXIT_INCOMPLETE
        return EXIT_OK


CDN_UP = {"up": True, "problem": None, "since": None, "next_try_at": None}


class Activity:
    """What the pipeline is doing, for the monitor: written by the pipeline's threads, read by the
    monitor's. Counters only grow; everything else is replaced whole under the lock."""

    CHART_MINUTES = 60
    RECENT = 50

    def __init__(self, clock: Callable[[], float] = time.time, mode: str = "run") -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self.requests: collections.Counter[str] = collections.Counter()
        self.callbacks: collections.Counter[str] = collections.Counter()
        self.hashed_bytes = 0
        self.minutes: dict[int, list[int]] = {}          # minute -> [imports, confirmations]
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=self.RECENT)
        self.unreadable: collections.deque[dict[str, Any]] = collections.deque(maxlen=100)
        self.cdn = dict(CDN_UP)
        self.passes = {"running": False, "number": 0, "files_hashed": 0, "bytes_hashed": 0, "started_at": None}
        self.last_pass_end: float | None = None
        self.queues = {"hash": 0, "submit": 0, "confirm": 0}
        self.now: dict[str, list[dict[str, Any]]] = {"hashing": [], "sending": []}
        self.mode = mode                 # fixed at birth: read without the lock
        self._waiting = 0
        self._watching: bool | None = True if mode == "watch" else None
        self._samples: collections.deque[tuple[float, int]] = collections.deque(maxlen=12)

    def _bucket(self, index: int) -> None:
        minute = int(self.clock() // 60)
        self.minutes.setdefault(minute, [0, 0])[index] += 1
        for old in [m for m in self.minutes if m <= minute - self.CHART_MINUTES]:
            del self.minutes[old]

    def retried(self, exc: BaseException | None = None, wait: float = 0.0) -> None:
        """A retry wait; a connection that failed already says the CDN is unreachable."""
        with self._lock:
            self.requests["retried"] += 1
        if isinstance(exc, _TransientError) and exc.connection:
            self.cdn_down("unreachable", self.clock() + wait)

    def hashed(self, size: int, files: int = 1) -> None:
        with self._lock:
            self.hashed_bytes += size
            self.passes["files_hashed"] += files
            self.passes["bytes_hashed"] += size

    def answered(self, outcome: str, row: LedgerRow, name: str, state: str) -> None:
        """One answer to file/add; `state` is what the ledger now records for the file."""
        with self._lock:
            self.requests[outcome] += 1
            self.cdn = dict(CDN_UP)
            if outcome in (OUTCOME_ACCEPTED, OUTCOME_EXISTS):
                self._bucket(0)
            self.recent.appendleft({"time": self.clock(), "path": row.path, "name": name, "size": row.size,
                                    "state": state})

    def called_back(self, success: bool, row: LedgerRow) -> None:
        with self._lock:
            self.callbacks["success" if success else "fail"] += 1
            if success:
                self._bucket(1)
            for item in self.recent:
                if item["path"] == row.path:
                    item["state"] = "confirmed" if success else "failed"

    def cdn_down(self, problem: str, next_try_at: float | None) -> None:
        with self._lock:
            since = self.cdn["since"] if self.cdn["problem"] == problem else self.clock()
            self.cdn = {"up": False, "problem": problem, "since": since, "next_try_at": next_try_at}

    def problem(self, relpath: str, why: str) -> None:
        with self._lock:
            self.unreadable.appendleft({"path": relpath, "state": "unreadable", "reason": why,
                                        "time": self.clock()})

    def set_waiting(self, count: int) -> None:
        with self._lock:
            self._waiting = count

    def set_watching(self, watching: bool) -> None:
        with self._lock:
            self._watching = watching

    def pass_started(self) -> None:
        with self._lock:
            self.passes = {"running": True, "number": self.passes["number"] + 1, "files_hashed": 0,
                           "bytes_hashed": 0, "started_at": self.clock()}

    def pass_ended(self) -> None:
        with self._lock:
            self.passes = {**self.passes, "running": False}
            self.last_pass_end = self.clock()

    def observe(self, queues: Mapping[str, int], hashing: list[dict[str, Any]], sending: list[dict[str, Any]]) -> None:
        with self._lock:
            self.queues = dict(queues)
            self.now = {"hashing": hashing, "sending": sending}
            now = time.monotonic()
            if not self._samples or now - self._samples[-1][0] >= 1.0:
                self._samples.append((now, self.hashed_bytes))

    def _hash_rate(self) -> float:
        recent = [(t, b) for t, b in self._samples if t >= time.monotonic() - 10.0]
        if len(recent) < 2 or recent[-1][0] <= recent[0][0]:
            return 0.0
        return (recent[-1][1] - recent[0][1]) / (recent[-1][0] - recent[0][0])

    def snapshot(self) -> dict[str, Any]:
        """A copy of everything, safe to use outside the lock."""
        with self._lock:
            now_minute = int(self.clock() // 60)
            minutes = range(now_minute - self.CHART_MINUTES + 1, now_minute + 1)
            return {
                "requests": dict(self.requests), "callbacks": dict(self.callbacks),
                "hashed_bytes": self.hashed_bytes, "cdn": dict(self.cdn), "pass": dict(self.passes),
                "last_pass_end": self.last_pass_end, "queues": {**self.queues, "waiting": self._waiting},
                "hash_rate": self._hash_rate(),
                "now": {k: list(v) for k, v in self.now.items()},
                "recent": [dict(item) for item in self.recent], "unreadable": list(self.unreadable),
                "chart": {"minute_starts": [m * 60.0 for m in minutes],
                          "imports": [self.minutes.get(m, [0, 0])[0] for m in minutes],
                          "confirmations": [self.minutes.get(m, [0, 0])[1] for m in minutes]},
                "mode": self.mode, "watching": self._watching,
            }


class StopEvent(threading.Event):
    """The run's stop: set by the first SIGINT/SIGTERM (finish what is in flight, record, commit);
    `now` by the second (record what is in, commit, leave the rest pending: safe to send again)."""

    def __init__(self) -> None:
        super().__init__()
        self.now = threading.Event()


def join_until(threads: Iterable[threading.Thread], deadline: float, hurry: threading.Event) -> list[str]:
    """Wait for the threads until the monotonic `deadline`, or until `hurry` is set; the names of
    those still running then (daemons: they end with the process)."""
    for thread in threads:
        while thread.is_alive() and not hurry.is_set() and time.monotonic() < deadline:
            thread.join(0.1)
    return [thread.name for thread in threads if thread.is_alive()]


@dataclass(frozen=True)
class Tuning:
    """How the pipeline and the watch loop pace themselves. Passed in, never read from module
    globals, so a test picks its own (one file per step, a short CDN pause) and nothing else moves."""

    scan_slice: float = 0.05          # seconds of scanning and inline hashing per step
    folder_chunk: int = 2000          # files of one folder looked at in one go
    flush_every: float = 0.2          # seconds between two ledger transactions of hashed files
    commit_every: int = SCAN_COMMIT_EVERY   # decisions that make a transaction at once
    queued_max: int = 1000            # submit jobs held in memory at most; the rest wait in the ledger
    hash_inline_size: int = HASH_INLINE_SIZE   # smaller files are hashed on the owner thread
    fetch_window: int | None = None   # built-in origin: bytes hashed, not fetched yet; None: half the cache's room
    cdn_retry_pause: float = 60.0     # watch: seconds before trying again after the CDN was unreachable
    close_grace: float = 0.5          # watch: seconds a closed (or renamed-in) file must stay unchanged
    loop_tick: float = 0.25           # watch: longest wait of one loop turn with nothing to do
    status_every: float = 2.0         # watch: seconds between two STATUS= lines to systemd


class Stage(enum.StrEnum):       # a str: hashed in C, as every file passes through four moves
    """Where a path is on its way through the pipeline. A path in no stage is idle: the ledger
    alone says what it is."""

    TO_HASH = "to hash"          # listed by the walk or settled after events; waits for a hash lane
    HASHING = "hashing"          # being hashed (inline, or on a hash thread)
    DECIDED = "decided"          # hashed and decided; its row is written with the next flush
    SUBMITTING = "submitting"    # in the submit queue or with a submit worker
    SET_ASIDE = "set aside"      # pending, but changed after it was hashed: the running pass looks again
    AWAITING = "awaiting"        # accepted by the CDN; its confirmation (callback or file/list) not in yet
    CHECKING = "checking"        # the CDN is being asked about it (file/list)


_S = Stage
LEGAL_MOVES: frozenset[tuple[Stage | None, Stage | None]] = frozenset({
    (None, _S.TO_HASH), (None, _S.DECIDED), (None, _S.SUBMITTING), (None, _S.SET_ASIDE),
    (_S.TO_HASH, _S.HASHING), (_S.TO_HASH, _S.DECIDED), (_S.TO_HASH, None),
    (_S.HASHING, _S.DECIDED), (_S.HASHING, None),
    (_S.DECIDED, None),
    (_S.SUBMITTING, _S.AWAITING), (_S.SUBMITTING, _S.TO_HASH), (_S.SUBMITTING, None),
    (_S.SET_ASIDE, _S.TO_HASH), (_S.SET_ASIDE, _S.DECIDED), (_S.SET_ASIDE, None),
    (_S.AWAITING, _S.TO_HASH), (_S.AWAITING, _S.DECIDED), (_S.AWAITING, _S.SUBMITTING),
    (_S.AWAITING, _S.SET_ASIDE), (_S.AWAITING, _S.CHECKING), (_S.AWAITING, None),
    (None, _S.CHECKING), (_S.CHECKING, _S.AWAITING), (_S.CHECKING, _S.TO_HASH), (_S.CHECKING, None),
})
IN_FLIGHT = (Stage.SUBMITTING, Stage.CHECKING)     # a request about the path is out: its answer decides


class PathTable:
    """One stage per path, changed only by `move`, which refuses any move the pipeline never makes.

    Owned by the pipeline's thread; no other thread reads or writes it. `recheck` holds paths with
    a request out (IN_FLIGHT) whose file changed on disk meanwhile: they are hashed again once its
    answer is in.
    """

    def __init__(self) -> None:
        self._stages: dict[str, Stage] = {}
        self._counts: dict[Stage, int] = dict.fromkeys(Stage, 0)
        self.recheck: set[str] = set()

    def __contains__(self, path: object) -> bool:
        return path in self._stages

    def __len__(self) -> int:
        return len(self._stages)

    def stage(self, path: str) -> Stage | None:
        return self._stages.get(path)

    def staged(self) -> KeysView[str]:
        """Every path with a stage, as a live view (a membership test in C)."""
        return self._stages.keys()

    def move(self, path: str, source: Stage | None, target: Stage | None) -> None:
        stages, counts = self._stages, self._counts
        current = stages.get(path)
        if current is not source or (source, target) not in LEGAL_MOVES:
            raise AssertionError(f"pipeline bug: {path!r} cannot move from {source} to {target} "
                                 f"(it is {current})")
        if source is not None:
            counts[source] -= 1
        if target is None:
            del stages[path]
            if self.recheck:
                self.recheck.discard(path)
        else:
            stages[path] = target
            counts[target] += 1

    def leave(self, path: str, stage: Stage) -> bool:
        """`path` leaves `stage` if it is there now; whether it was."""
        if self._stages.get(path) is not stage:
            return False
        self.move(path, stage, None)
        return True

    def count(self, *stages: Stage) -> int:
        return sum(self._counts[stage] for stage in stages)

    def paths(self, stage: Stage) -> list[str]:
        return [path for path, at in self._stages.items() if at is stage]

    def check(self) -> None:
        """The table agrees with itself (tests call this after every step)."""
        actual = collections.Counter(self._stages.values())
        if +actual != +collections.Counter(self._counts):
            raise AssertionError(f"pipeline bug: stage counts {dict(self._counts)} but table holds {dict(actual)}")
        stray = sorted(p for p in self.recheck if self._stages.get(p) not in IN_FLIGHT)
        if stray:
            raise AssertionError(f"pipeline bug: rechecks without a request out: {stray[:5]}")


def page_cache_room(read: Callable[[str], str]) -> int | None:
    """Bytes the page cache may hold for us: the memory available, or what our memory cgroup
    (v1 or v2) leaves beside our own resident memory if that is less; None when nothing tells.
    `read` returns a /proc or /sys file's text (or raises OSError); pure otherwise."""
    room: list[int] = []
    with contextlib.suppress(OSError, ValueError, IndexError):
        found = re.search(r"^MemAvailable:\s+(\d+) kB", read("/proc/meminfo"), re.M)
        if found:
            room.append(int(found.group(1)) * 1024)
    with contextlib.suppress(OSError, ValueError, IndexError):
        resident = int(read("/proc/self/statm").split()[1]) * os.sysconf("SC_PAGE_SIZE")
        for line in read("/proc/self/cgroup").splitlines():
            number, controllers, where = line.split(":", 2)
            if number == "0" and not controllers:
                limit_file = f"/sys/fs/cgroup{where.rstrip('/')}/memory.max"
            elif "memory" in controllers.split(","):
                limit_file = f"/sys/fs/cgroup/memory{where.rstrip('/')}/memory.limit_in_bytes"
            else:
                continue
            with contextlib.suppress(OSError, ValueError):
                limit = read(limit_file).strip()
                if limit.isdigit() and int(limit) < 1 << 60:     # "max", or v1's page-rounded 2**63
                    room.append(max(0, int(limit) - resident))
    return min(room) if room else None


class FetchWindow:
    """Bytes read for hashing that the CDN has yet to fetch from the built-in origin, kept within
    half of what the page cache can hold, so that its fetch is served from memory instead of the
    disk a second time (measured: 2.4 disk bytes per imported byte in a 512 MiB cgroup without).

    A file is held from the start of its hash until the origin has sent all of it, or its way ends
    without a fetch (unchanged, rejected, already there, failed, confirmed). While the origin sends
    nothing for `idle_release` seconds, the CDN is not fetching now: what is held is let go (a later
    fetch reads from disk), so a CDN that queues imports for long never slows the hashing. Owner
    thread only; what the origin sent comes through the inbox. `budget` None: no bound.
    """

    def __init__(self, budget: int | None, monotonic: Callable[[], float] = time.monotonic,
                 origin_idle: Callable[[], float] = lambda: float("inf"), idle_release: float = 10.0) -> None:
        self.budget = budget
        self.held_bytes = 0
        self._held: dict[str, tuple[int, float]] = {}
        self._monotonic = monotonic
        self._origin_idle = origin_idle       # seconds since the origin last sent a byte
        self._idle_release = idle_release
        self._said = False                    # the wait is logged once (INFO) a pipeline

    def __len__(self) -> int:
        return len(self._held)

    def room_for(self, size: int) -> bool:
        """May a file of `size` bytes be hashed now? Always when nothing is held."""
        if self.budget is None or not self._held or self.held_bytes + size <= self.budget:
            return True
        now = self._monotonic()
        if self._origin_idle() >= self._idle_release:
            for path in [path for path, (_, since) in self._held.items() if now - since >= self._idle_release]:
                self.release(path)
        if not self._held or self.held_bytes + size <= self.budget:
            return True
        if not self._said:
            self._said = True
            log.info("hashing waits while the CDN fetches: %.0f MiB hashed are not fetched yet, and %.0f MiB "
                     "is half of what the page cache can hold here; so the fetch reads them from memory, not "
                     "from disk again", self.held_bytes / 2 ** 20, self.budget / 2 ** 20)
        return False

    def hold(self, path: str, size: int) -> None:
        if self.budget is not None and size and path not in self._held:
            self._held[path] = (size, self._monotonic())
            self.held_bytes += size

    def hashed(self, path: str) -> None:
        """Its hash is done: the wait for its fetch starts now (a long hash is no sign of idleness)."""
        if path in self._held:
            self._held[path] = (self._held[path][0], self._monotonic())

    def release(self, path: str) -> None:
        size, _ = self._held.pop(path, (0, 0.0))
        self.held_bytes -= size


def fetch_window_for(config: Config, tuning: Tuning, monotonic: Callable[[], float], dry_run: bool, *,
                     origin_idle: Callable[[], float]) -> FetchWindow:
    """Bounded only where the CDN fetches from us (the built-in origin), by tuning.fetch_window or
    half of what the page cache can hold."""
    if config.origin.serve is None or dry_run:
        return FetchWindow(None)
    budget = tuning.fetch_window
    if budget is None:
        room = page_cache_room(lambda name: Path(name).read_text())
        budget = None if room is None else room // 2
    return FetchWindow(budget, monotonic, origin_idle)


class ProgressBars:
    """tqdm bars on a terminal, nothing elsewhere; only the owner thread touches them (hash threads
    add to a locked counter that `step()` moves the bar by)."""

    def __init__(self, show: bool, out: Callable[[str], None]) -> None:
        self.show = show
        self.out = out
        self._bars: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._unshown = 0
        self._totals: collections.Counter[str] = collections.Counter()

    def expect(self, name: str, count: int) -> None:
        """More work found for a bar (bytes to hash, files to send): its total, for a rate and an ETA."""
        if not self.show:
            return
        self._totals[name] += count
        bar = self._bars.get(name)
        if bar is not None:
            bar.total = self._totals[name]
            bar.refresh()

    def hashed(self, count: int) -> None:
        """Bytes read, from any thread."""
        with self._lock:
            self._unshown += count

    def update(self, name: str, count: int = 1, **kwargs: Any) -> None:
        if not self.show:
            return
        if name not in self._bars:
            from tqdm import tqdm

            kwargs.setdefault("total", self._totals.get(name) or None)
            self._bars[name] = tqdm(file=sys.stderr, dynamic_ncols=True, leave=False,
                                    position=len(self._bars), **kwargs)
        self._bars[name].update(count)

    def show_hashed(self) -> None:
        with self._lock:
            count, self._unshown = self._unshown, 0
        if count or "hash" not in self._bars:
            self.update("hash", count, unit="B", unit_scale=True, unit_divisor=1024, desc="hashing")

    def say(self, text: str) -> None:
        """A line of output; above the bars while they show, not through them."""
        if self._bars and self.out is print:
            from tqdm import tqdm

            tqdm.write(text, file=sys.stdout)
        else:
            self.out(text)

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        if self._bars:          # a bar left behind clears its line, not the column: the next line starts at 0
            sys.stderr.write("\r")
            sys.stderr.flush()
        self._bars.clear()


class SubmitJob(NamedTuple):
    """One file/add request on its way to a submit worker."""

    row: LedgerRow
    params: dict[str, str]
    fresh: bool


class SubmitResult(NamedTuple):
    job: SubmitJob
    outcome: CdnAnswer | Exception


class HashJob(NamedTuple):
    entry: FileEntry
    known: QuickRow | None
    fresh: bool


class Hashed(NamedTuple):
    job: HashJob
    outcome: str | Exception     # the sha-256, or what stopped the reading
    stage: Stage = Stage.HASHING  # where the path is: TO_HASH for a file hashed inline


HashFunction = Callable[[FileEntry, Callable[[int], None], "threading.Event | None"], "str | Exception"]


def queue_rank(priority: int, fresh: bool) -> tuple[int, int]:
    """Submit order: a higher fetch_prio first, then fresh drops, then the backlog; pure."""
    return -priority, 0 if fresh else 1


class SubmitQueue:
    """The priority queue between the thread that owns the ledger and the submit workers.

    Only a few backlog rows are held at a time (the rest wait in the ledger), so a fresh drop
    or a prio file put in now is the next job a free worker takes.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[tuple[int, int], int, SubmitJob]] = []
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        with self._cond:
            return len(self._heap)

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed

    def put(self, job: SubmitJob) -> None:
        with self._cond:
            heapq.heappush(self._heap, (queue_rank(job.row.priority, job.fresh), next(self._order), job))
            self._cond.notify()

    def get(self, timeout: float | None = None) -> SubmitJob | None:
        """The most urgent job; None once closed, or when `timeout` passes with nothing queued."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._heap or self._closed, timeout) or self._closed:
                return None
            return heapq.heappop(self._heap)[2]

    def give_way(self, rank: tuple[int, int]) -> SubmitJob | None:
        """Take out the least urgent job if it ranks below `rank` (it goes back to the ledger's backlog)."""
        with self._cond:
            if not self._heap:
                return None
            worst = max(self._heap)
            if worst[0] <= rank:
                return None
            self._heap.remove(worst)
            heapq.heapify(self._heap)
            return worst[2]

    def clear(self) -> list[SubmitJob]:
        with self._cond:
            jobs = [item[2] for item in sorted(self._heap)]
            self._heap.clear()
            return jobs

    def close(self) -> list[SubmitJob]:
        """Workers stop taking jobs; the ones still queued are handed back."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        return self.clear()


class Hasher:
    """Stage 2: the files waiting to be hashed, and the hash threads.

    Small files are hashed on the owner thread (measured: threads only fight over the GIL for
    them); large ones go to `workers` threads (hashlib releases the GIL) plus one spare lane kept
    for fresh drops. The owner thread does everything here and moves paths TO_HASH -> HASHING;
    the hash threads only run `hash_function`, report bytes to `progress` and set `wake`.
    """

    def __init__(self, table: PathTable, workers: int, tuning: Tuning, hash_function: HashFunction,
                 wake: threading.Event, progress: Callable[[int], None], window: FetchWindow) -> None:
        self.table = table
        self.window = window
        self.workers = workers
        self.tuning = tuning
        self.hash_function = hash_function
        self.wake = wake
        self.progress = progress
        self._scan_jobs: collections.deque[HashJob] = collections.deque()
        self._fresh_jobs: collections.deque[HashJob] = collections.deque()
        self._running: dict[Future[str | Exception], HashJob] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._cancel = threading.Event()

    def add(self, job: HashJob, source: Stage | None) -> None:
        self.table.move(job.entry.relpath, source, Stage.TO_HASH)
        (self._fresh_jobs if job.fresh else self._scan_jobs).append(job)

    @property
    def waiting(self) -> int:
        return len(self._scan_jobs) + len(self._fresh_jobs)

    @property
    def waiting_from_pass(self) -> bool:
        return bool(self._scan_jobs)

    def waiting_jobs(self) -> list[HashJob]:
        return [*self._fresh_jobs, *self._scan_jobs]

    def running(self) -> list[HashJob]:
        return list(self._running.values())

    def pass_tail(self) -> bool:
        """A pass's large file is still being hashed."""
        return any(not job.fresh for job in self._running.values())

    def hash_next(self) -> Hashed | bool:
        """Hash the next waiting file here (a small one: its result) or hand it to a free thread
        (True); False when every lane is busy (their results wake the loop)."""
        work, lanes = ((self._fresh_jobs, self.workers + 1) if self._fresh_jobs
                       else (self._scan_jobs, self.workers))
        job = work[0]
        if not self.window.room_for(job.entry.size):     # the CDN's fetches, or their idling, free room
            return False
        if job.entry.size < self.tuning.hash_inline_size:     # hashed here and now: never seen HASHING
            work.popleft()
            self.window.hold(job.entry.relpath, job.entry.size)
            return Hashed(job, self.hash_function(job.entry, self.progress, None), Stage.TO_HASH)
        if len(self._running) >= lanes:
            return False
        work.popleft()
        self.window.hold(job.entry.relpath, job.entry.size)
        self.table.move(job.entry.relpath, Stage.TO_HASH, Stage.HASHING)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers + 1, thread_name_prefix="hash")
        future = self._pool.submit(self.hash_function, job.entry, self.progress, self._cancel)
        self._running[future] = job
        future.add_done_callback(lambda _: self.wake.set())
        return True

    def finished(self) -> list[Hashed]:
        """What the threads have hashed since the last call; the paths stay HASHING."""
        done = [future for future in self._running if future.done()]
        return [Hashed(self._running.pop(future), future.result()) for future in done]

    def halt(self, deadline: float, hurry: threading.Event) -> list[Hashed]:
        """Waiting files are dropped (the next pass finds them), threads stop at their next buffer
        (waited for until `deadline`); what they finished anyway is returned."""
        for job in (*self._scan_jobs, *self._fresh_jobs):
            self.table.move(job.entry.relpath, Stage.TO_HASH, None)
        self._scan_jobs.clear()
        self._fresh_jobs.clear()
        self._cancel.set()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            running = list(self._running)
            while running and not hurry.is_set() and time.monotonic() < deadline:
                running = list(futures_wait(running, timeout=0.1).not_done)
            self._pool = None
        return self.finished()


class FolderChunk(NamedTuple):
    entries: list[FileEntry]
    known: FolderRows               # what the ledger knows of the chunk's folder
    gone: list[QuickRow] = []       # on a folder's last chunk: rows of files no longer in it
    walk_over: bool = False         # the pass's last chunk: `gone` holds the rows of folders not there any more


class Scanner:
    """Stage 1: a pass's walk, one folder at a time, each taken in chunks so that a folder of
    100,000 files does not hold up a turn of the loop. Owner thread only."""

    LINKS_SHOWN = 5         # symlinks named in a pass's note of those it passed by

    def __init__(self, ledger: Ledger, tuning: Tuning, on_problem: Callable[[str, str], None]) -> None:
        self.ledger = ledger
        self.tuning = tuning
        self.on_problem = on_problem
        self._walk: Iterator[tuple[str, list[FileEntry]]] | None = None
        self._folder: list[FileEntry] | None = None
        self._known = FolderRows(ledger, {}, {})
        self._vouch = ("", False)                 # name_prefix, callbacks: what vouches for a row
        self._seen: set[str] = set()            # the files of the folder at hand listed so far
        self._walked: set[str] = set()          # folders listed this pass
        self._unlisted: list[str] = []          # folders that could not be listed: their rows are not gone
        self.listed = 0                         # files listed this pass
        self.links = 0                          # symlinks passed by this pass (scan.follow_symlinks off) ...
        self.link_examples: list[str] = []      # ... and the first few of them

    @property
    def active(self) -> bool:
        return self._walk is not None or self._folder is not None

    def start(self, config: Config) -> None:
        check_folder(config)
        self._walked, self._unlisted, self.listed, self.links, self.link_examples = set(), [], 0, 0, []
        self._vouch = (config.name_prefix, config.callback.enabled)
        self._walk = walk_folder(config.folder, config.scan, self._problem, private=private_identities(config),
                                 on_link=self._link,
                                 own_names=dict(config.private_files))

    def _link(self, relpath: str) -> None:
        self.links += 1
        if len(self.link_examples) < self.LINKS_SHOWN:
            self.link_examples.append(relpath)

    def _problem(self, relpath: str, why: str) -> None:
        if why.startswith("cannot list folder"):
            self._unlisted.append("" if relpath == "." else relpath)
        self.on_problem(relpath, why)

    def stop(self) -> None:
        self._walk = self._folder = None

    def next_chunk(self) -> FolderChunk | None:
        """Up to `folder_chunk` files of the folder at hand (the next folder once it is done); the
        walk's end once, then None."""
        while self._folder is None:
            if self._walk is None:
                return None
            batch = next(self._walk, None)
            if batch is None:
                self._walk = None
                return FolderChunk([], FolderRows(self.ledger, {}, {}), self._rows_of_folders_gone(), walk_over=True)
            reldir, entries = batch
            self._walked.add(reldir)
            self.listed += len(entries)
            self._folder, self._known, self._seen = (entries,
                                                     self.ledger.folder_rows(reldir, *self._vouch), set())
        waiting, known = self._folder, self._known
        entries = waiting[:self.tuning.folder_chunk]
        del waiting[:self.tuning.folder_chunk]
        self._seen.update(map(FIRST_ITEM, entries))
        if waiting:
            return FolderChunk(entries, known)
        self._folder = None
        return FolderChunk(entries, known, known.gone(self._seen))

    def _rows_of_folders_gone(self) -> list[QuickRow]:
        """Rows in folders this pass did not list (removed, or now excluded), but for those that
        could not be listed."""
        def unlisted(reldir: str) -> bool:
            return any(reldir == top or reldir.startswith(top + "/") or not top for top in self._unlisted)

        return [row for reldir in self.ledger.dirs() if reldir not in self._walked and not unlisted(reldir)
                for row in self.ledger.quick_rows_in_dir(reldir).values() if row.state != STATE_GONE]


class Submitter:
    """Stage 3's threads: submit workers take the most urgent job from a SubmitQueue, send it and
    hand the answer back.

    The owner thread calls everything here. The workers only take from the queue, read the client
    and note what they are sending (both under `_lock`) and put answers in `_answers`.
    """

    def __init__(self, client: SubmitClient | None, wake: threading.Event) -> None:
        self.wake = wake
        self.queue = SubmitQueue()
        self._answers: queue.SimpleQueue[SubmitResult] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._client = client
        self._sending: dict[int, SubmitJob] = {}
        self._retired: list[SubmitClient] = []

    @property
    def client(self) -> SubmitClient | None:
        with self._lock:
            return self._client

    def use(self, client: SubmitClient) -> None:
        """A reloaded configuration's client; the old one is closed once no request is out."""
        with self._lock:
            if self._client is not None:
                self._retired.append(self._client)
            self._client = client

    def start(self, count: int) -> None:
        if self._threads:
            return
        for number in range(count):
            thread = threading.Thread(target=self._work, daemon=True, name=f"submit-{number}")
            thread.start()
            self._threads.append(thread)

    def sending(self) -> list[SubmitJob]:
        with self._lock:
            return list(self._sending.values())

    def answers(self) -> list[SubmitResult]:
        found = []
        while True:
            try:
                found.append(self._answers.get_nowait())
            except queue.Empty:
                return found

    def close_retired_if_idle(self) -> None:
        with self._lock:
            retired = self._retired if not self._sending else []
            self._retired = [] if retired else self._retired
        for client in retired:
            client.close()

    def check_workers(self) -> None:
        """A worker that died would leave its jobs out for good: that is a bug, and the run ends on it."""
        dead = [thread.name for thread in self._threads if not thread.is_alive()]
        if dead and not self.queue.closed:
            raise RuntimeError(f"the submit worker {dead[0]} died; its requests were never answered")

    def halt(self, deadline: float, hurry: threading.Event) -> list[SubmitJob]:
        """Workers take nothing more, retry waits end, requests on the wire finish (until `deadline`,
        or `hurry`: theirs stay pending); the jobs never sent are handed back (the answers that came
        wait in `answers()`)."""
        unsent = self.queue.close()
        with self._lock:
            clients = [c for c in (self._client, *self._retired) if c is not None]
        for client in clients:
            client.cancel()
        still = join_until(self._threads, deadline, hurry)
        if still:
            log.warning("stopped without waiting for %d request(s) still out; those files stay pending and "
                        "are sent again by the next run", len(still))
        self._threads.clear()
        with self._lock:
            retired, self._retired = self._retired, []
        for client in retired:
            client.close()
        return unsent

    def _work(self) -> None:
        """A submit worker: take the most urgent job, send it, hand the answer back."""
        client = self.client
        if client is not None:
            with contextlib.suppress(Exception):    # a failing session shows in the first answer instead
                client.prepare()      # imports and a session now, not on the first file's way out
        while True:
            job = self.queue.get()
            if job is None:
                return
            with self._lock:
                self._sending[threading.get_ident()] = job
                client = self._client
            try:
                outcome: CdnAnswer | Exception = client.add_file(job.params) if client else CdnError("no client")
            except Exception as exc:  # noqa: BLE001 - handed to the owner thread, which decides
                outcome = exc
            with self._lock:
                self._sending.pop(threading.get_ident(), None)
            self._answers.put(SubmitResult(job, outcome))
            self.wake.set()


@dataclass
class RunContext:
    """What the pipeline's stages share. Owned by the pipeline's thread: a reload replaces
    `config`, a new run `summary`; the stages read both through this record, never a copy."""

    config: Config
    ledger: Ledger
    table: PathTable
    activity: Activity
    bars: ProgressBars
    tuning: Tuning
    clock: Callable[[], float]          # wall time: ledger stamps, link expiry, callbacks
    monotonic: Callable[[], float]      # intervals: pauses, flush timing
    dry_run: bool = False
    summary: RunSummary = field(default_factory=RunSummary)
    signer: UrlSigner | None = None
    inbox: CallbackInbox | None = None
    redact: Redactor = field(default_factory=Redactor)
    polling_off: str = ""               # why file/list is not asked this run ("" : it is)
    window: FetchWindow = field(default_factory=lambda: FetchWindow(None))

    @property
    def callbacks_on(self) -> bool:
        return self.config.callback.enabled and self.signer is not None and self.inbox is not None

    @property
    def polling(self) -> bool:
        return self.config.confirm.poll and not self.polling_off and not self.dry_run

    @property
    def confirming(self) -> bool:
        """Accepted imports are followed until the CDN confirms them: by callback, by asking, or both."""
        return self.callbacks_on or self.polling

    def clean(self, text: str) -> str:
        """CDN answers as the ledger keeps them: no password, no usable signed link, no control characters."""
        return printable(mask_signed_paths(self.redact(text)))

    def location_for(self, relpath: str) -> str:
        serve = self.config.origin.serve
        if serve is None:
            return build_location(self.config.origin, relpath)
        expires = int(self.clock() + serve.link_ttl)
        if self.signer is None:     # dry run: no secret is created just to show what would go out
            return f"{serve.public_url}/o/{expires}/<signature>/{quote_path(relpath)}"
        return self.signer.location(serve.public_url, relpath, expires)


def same_file(entry: FileEntry, row: QuickRow | LedgerRow | None) -> bool:
    """The ledger's row describes this very file as listed (size, mtime and inode), hashed."""
    return (row is not None and row.sha256 is not None
            and (row.size, row.mtime_ns, row.inode) == (entry.size, entry.mtime_ns, entry.inode))


class Decider:
    """The decide step for a listed or hashed file: what to do, counted in the summary and shown by
    a dry run. Owner thread only."""

    def __init__(self, ctx: RunContext, *, retry_rejected: bool) -> None:
        self.ctx = ctx
        self.retry_rejected = retry_rejected
        self.origin_to_record: str | None = None
        self.resend_before = self._links_valid_since()

    def _links_valid_since(self) -> float:
        """Files submitted before this time were handed links that may no longer work: with the
        built-in origin, the process that served them is gone; with any origin, if its address
        changed since. 0 when nothing says so. Notes the origin in use, recorded after a pass."""
        config = self.ctx.config
        if self.ctx.dry_run or not config.callback.enabled:
            return 0.0
        identity = config.origin.identity
        before = self.ctx.ledger.meta("origin")
        if before != identity:
            self.origin_to_record = identity      # once a pass is through: until then links may be old
        return self.ctx.clock() if (before is not None and before != identity) or config.origin.serve else 0.0

    def unconfirmed_due(self, state: str, attempts: int, updated_at: float) -> bool:
        """Accepted, but never confirmed, and either its link can no longer work or no callback came
        within wait_seconds: ask again, at most callback.max_attempts times in all."""
        callback = self.ctx.config.callback
        return (callback.enabled and state == STATE_SUBMITTED and attempts < callback.max_attempts
                and (updated_at < self.resend_before or self.ctx.clock() - updated_at >= callback.wait_seconds))

    def unchanged(self, entry: FileEntry, row: QuickRow | None) -> bool:
        """The ledger vouches for this file: same stat, accepted as it is, nothing amiss (counted)."""
        return same_file(entry, row) and self.accepted_as_is(entry, row)    # type: ignore[arg-type]

    def accepted_as_is(self, entry: FileEntry, row: QuickRow) -> bool:
        """For a row known to describe the file as listed: accepted under its name, nothing amiss (counted)."""
        if (row.accepted and row.name == cdn_name(self.ctx.config.name_prefix, entry.relpath)
                and not self.unconfirmed_due(row.state, row.attempts, row.updated_at)):
            self.ctx.summary.unchanged += 1
            return True
        return False

    def decide(self, entry: FileEntry, row: LedgerRow | None, digest: str) -> LedgerRow:
        config, summary = self.ctx.config, self.ctx.summary
        overrides = overrides_for(entry.relpath, config.defaults, config.rules)
        name = cdn_name(config.name_prefix, entry.relpath)
        decision = decide(row, name, entry.size, digest, no_replace=bool(overrides.get("no_replace")),
                          retry_rejected=self.retry_rejected)
        if decision == DECISION_UNCHANGED and row is not None and self.unconfirmed_due(
                row.state, row.attempts, row.updated_at):
            decision = DECISION_UNCONFIRMED
            log.info("%s was never confirmed by the CDN; submitting it again", printable(name))
        counts = {DECISION_NEW: "new", DECISION_CHANGED: "changed", DECISION_UNCHANGED: "unchanged",
                  DECISION_CONFLICT: "conflicts", DECISION_STILL_REJECTED: "rejected",
                  DECISION_UNCONFIRMED: "resent"}
        setattr(summary, counts[decision], getattr(summary, counts[decision]) + 1)
        if decision == DECISION_CONFLICT:
            log.warning("conflict: %s changed after it was imported as %s, and no_replace is set; "
                        "not submitted", printable(entry.relpath), printable(name))
        elif decision == DECISION_STILL_REJECTED:
            log.warning("still rejected: %s (%s); use --retry-rejected to submit it again",
                        printable(entry.relpath), printable(row.last_error or "") if row else "")
        elif decision in (DECISION_NEW, DECISION_CHANGED, DECISION_UNCONFIRMED) and self.ctx.dry_run:
            self._show_dry_run(entry, name, digest, overrides, decision)
        return row_after_decision(decision, entry, row, name, digest, priority_of(overrides))

    def _show_dry_run(self, entry: FileEntry, name: str, digest: str, overrides: Mapping[str, Any],
                      decision: str) -> None:
        params = build_request(self.ctx.config, entry.relpath, entry.size, digest, overrides,
                               location=self.ctx.location_for(entry.relpath))
        params["location"] = mask_url(params["location"])
        extras = " ".join(f"{k}={params[k]}" for k in OVERRIDE_KEYS if k in params)
        self.ctx.bars.say(f"would submit ({decision}): {printable(name)} size={entry.size} sha256={digest} "
                          f"location={params['location']}{' ' + extras if extras else ''}")


NO_SUCH_FILE = re.compile(r"no such file|not found|does not exist|not exist", re.I)
IN_PROGRESS_WORDS = frozenset({"queued", "new", "pending", "waiting", "fetching", "downloading", "importing",
                               "processing", "copying", "converting", "in progress", "in_progress"})


class Recorder:
    """Answers to file/add and the CDN's callbacks, written to the ledger and counted. Owner thread
    only; moves paths out of AWAITING when their confirmation (or final failure) is in."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self._words_seen: set[str] = set()

    def answered(self, row: LedgerRow, params: Mapping[str, str], answer: CdnAnswer) -> bool:
        """Record one answer; True if a callback is now awaited for the file."""
        ctx = self.ctx
        if answer.outcome == OUTCOME_EXISTS and params.get("no_replace") == "true":
            answer = dataclasses.replace(answer, outcome=OUTCOME_REJECTED,
                                         message=f"already in the CDN and no_replace is set: {answer.message}")
        accepted = answer.outcome in (OUTCOME_ACCEPTED, OUTCOME_EXISTS)
        exists = answer.outcome == OUTCOME_EXISTS
        # "Already there" also comes while an earlier request for this name and sha-256 is still being
        # imported, and that import may yet fail: where file/list can be asked, it has the last word
        # (asked at once); with callbacks and no file/list, the answer is the best word there is.
        held = exists and ctx.callbacks_on and not ctx.polling
        ctx.activity.answered(answer.outcome, row, params["name"], STATE_CONFIRMED if held else STATE_SUBMITTED
                              if accepted else STATE_REJECTED)
        # The row is as it was sent: a file that changed meanwhile is marked `recheck`, not decided
        # anew, while its path is SUBMITTING. Answers are committed once per batch (Feeder.collect_answers).
        if answer.outcome != OUTCOME_ACCEPTED:      # rejected, or already there: no fetch follows
            ctx.window.release(row.path)
        if not accepted:
            ctx.summary.rejected += 1
            message = ctx.clean(answer.message)
            ctx.ledger.put(row._replace(state=STATE_REJECTED, attempts=row.attempts + 1, last_error=message,
                                        response=ctx.clean(answer.body)), commit=False)
            log.warning("rejected %s: %s", printable(params["name"]), message)
            return False
        ctx.summary.submitted += 1
        ctx.summary.confirmed += held       # no callback follows an "already there"
        # When to ask file/list about it: at once for "already there" (no callback follows), soon
        # without callbacks, once they are overdue with them.
        first_check = (0.0 if exists else ctx.config.confirm.wait_seconds if ctx.callbacks_on
                       else ctx.config.confirm.poll_interval)
        ctx.ledger.put(row._replace(
            state=STATE_CONFIRMED if held else STATE_SUBMITTED, attempts=row.attempts + 1, last_error=None,
            response=ctx.clean(answer.body), accepted_name=params["name"],
            accepted_size=row.size, accepted_sha256=row.sha256, retry_at=0.0 if held else ctx.clock() + first_check),
            commit=False)
        # One line per file only with -v: a million files would be a million lines; the progress line,
        # the page and the metrics count them.
        log.debug("%s %s (%s bytes)", "submitted" if answer.outcome == OUTCOME_ACCEPTED
                  else "already in the CDN:", printable(params["name"]), params["size"])
        return not held and ctx.confirming

    def failed(self, row: LedgerRow, message: str) -> None:
        self.ctx.window.release(row.path)
        self.ctx.summary.failed += 1
        message = self.ctx.clean(message)
        self.ctx.ledger.put(row._replace(state=STATE_FAILED, attempts=row.attempts + 1, last_error=message))
        log.error("failed %s: %s; the next run tries again", printable(row.path), message)

    def apply_callbacks(self) -> int:
        """Record what the CDN called back; returns how many reports changed a file."""
        ctx = self.ctx
        if ctx.inbox is None:
            return 0
        for path in ctx.inbox.take_fetched():
            ctx.window.release(path)
            drop_from_page_cache(str(ctx.config.folder), path)
        applied = 0
        for report in ctx.inbox.take():
            row = ctx.ledger.get(report.relpath)
            if row is None:
                continue
            if row.state == STATE_PENDING and row.attempts + 1 == report.attempt:
                if ctx.clock() - report.received < ANSWER_GRACE:   # our record of the answer is on its way
                    ctx.inbox.deferred.append(report)
                continue
            current = row.attempts == report.attempt
            # A success from an earlier attempt still proves the content arrived; a failure does not.
            if row.state != STATE_SUBMITTED or not (current or (report.success and report.attempt < row.attempts)):
                log.debug("ignored a callback for %s (attempt %d, now %s)", printable(row.path), report.attempt,
                          row.state)
                continue
            self._confirm(row, report)
            applied += 1
        return applied

    def _confirm(self, row: LedgerRow, report: CallbackReport,
                 how: str = "by callback: the CDN verified size and sha-256") -> bool:
        """Record a confirmation or a failure; whether the file is still awaited (a resend is due)."""
        ctx = self.ctx
        verified = report.success and (report.size, report.sha256) == (row.size, row.sha256)
        ctx.activity.called_back(verified, row)
        ctx.window.release(row.path)
        if verified:
            ctx.table.leave(row.path, Stage.AWAITING)
            ctx.summary.confirmed += 1
            ctx.ledger.put(row._replace(state=STATE_CONFIRMED, last_error=None, retry_at=0.0))
            ctx.bars.update("confirm", 1, unit="file", desc="confirmed")
            log.info("confirmed %s %s", printable(row.name), how)
            return False
        if report.success:
            message = (f"the CDN reported size {report.size} and sha-256 {report.sha256 or '-'}, "
                       f"but the file has size {row.size} and sha-256 {row.sha256}")
            final = True
        else:
            message = f"the CDN could not import it: {report.message or 'no reason given'}"
            final = row.attempts >= ctx.config.callback.max_attempts
        message = ctx.clean(message)
        forget_import = dict(accepted_name=None, accepted_size=None, accepted_sha256=None)
        if final:
            ctx.table.leave(row.path, Stage.AWAITING)
            ctx.summary.failed += 1
            ctx.ledger.put(row._replace(state=STATE_FAILED, last_error=message, retry_at=0.0, **forget_import))
            log.error("failed %s: %s", printable(row.name), message)
            return False
        base = ctx.config.callback.retry_delay
        delay = min(max(RESUBMIT_DELAY_MAX, base), base * 2 ** (row.attempts - 1)) * random.uniform(0.8, 1.2)
        ctx.ledger.put(row._replace(state=STATE_PENDING, last_error=message, retry_at=ctx.clock() + delay,
                                    **forget_import))
        # It stays AWAITING: a one-shot run waits for the resend, which the feeder takes when due.
        log.warning("%s: %s; submitting it again in %.0fs (attempt %d of %d)", printable(row.name), message,
                    delay, row.attempts + 1, ctx.config.callback.max_attempts)
        return True

    def deleted(self, row: LedgerRow, outcome: Listing | CdnAnswer | Exception) -> None:
        """The answer to file/delete for a file gone from the folder: the row goes once the CDN's copy does."""
        name = printable(row.accepted_name or row.name)
        if isinstance(outcome, CdnAnswer) and (outcome.outcome != OUTCOME_REJECTED or NO_SUCH_FILE.search(
                outcome.message)):
            self.ctx.ledger.forget(row.path)
            self.ctx.summary.deleted += 1
            log.info("deleted from the CDN: %s (gone from the folder)", name)
        elif isinstance(outcome, (CdnError, CdnAnswer)):
            said = outcome.message if isinstance(outcome, CdnAnswer) else str(outcome)
            log.warning("could not delete %s from the CDN (%s); the next pass tries again", name,
                        self.ctx.clean(said))
        elif not isinstance(outcome, StopRequested):
            raise outcome if isinstance(outcome, BaseException) else AssertionError(outcome)

    def report_unconfirmed(self, stopped: bool) -> None:
        """Where imports are followed, a run is done only when the CDN confirmed every file, this
        run's or not."""
        ctx = self.ctx
        if not ctx.confirming:
            return
        ctx.summary.unconfirmed = ctx.ledger.count_awaiting(ctx.clock())
        if not ctx.summary.unconfirmed or ctx.summary.fatal is not None:
            return
        if stopped:
            log.warning("%s %s the CDN's confirmation; the next run asks the CDN again",
                        files(ctx.summary.unconfirmed), "awaits" if ctx.summary.unconfirmed == 1 else "await")
        elif ctx.callbacks_on:
            log.warning("%s not confirmed by the CDN (confirm.wait_seconds is %gs); %s "
                        "'submitted' and a later run asks again. If no callback ever arrives, check that "
                        "'%s' reaches this machine and that 'api.callback_param' is the parameter name the "
                        "CDN expects", files(ctx.summary.unconfirmed), ctx.config.confirm.wait_seconds,
                        "it stays" if ctx.summary.unconfirmed == 1 else "they stay",
                        "origin.serve.public_url" if ctx.config.origin.serve else "callback.public_url")
        else:
            log.warning("%s not confirmed by the CDN yet (confirm.wait_seconds is %gs); %s "
                        "'submitted' and the next run asks the CDN again", files(ctx.summary.unconfirmed),
                        ctx.config.confirm.wait_seconds, "it stays" if ctx.summary.unconfirmed == 1 else "they stay")

    def listed(self, row: LedgerRow, listing: Listing) -> bool:
        """What file/list said of a submitted file; whether it is still awaited."""
        ctx, confirm, now = self.ctx, self.ctx.config.confirm, self.ctx.clock()
        current = ctx.ledger.get(row.path)
        if current != row:
            return False             # it moved on while the question was out: the newer record stands
        word = listing.status
        if listing.found and word in confirm.ready_states:
            size = row.size if listing.size is None else listing.size
            # file/list gives no sha-256: what it vouches for is its status, and the size where it lists one
            checked = "with this size" if listing.size is not None else "(it lists no size)"
            said = f"through file/list: the CDN lists it '{word}' {checked}"
            return self._confirm(row, CallbackReport(row.path, row.attempts, True, size, row.sha256 or "", "", now),
                                 how=said)
        if not listing.found or word in confirm.failed_states:
            said = f"file/list reports it '{word}'" if listing.found else "file/list does not list it"
            return self._confirm(row, CallbackReport(row.path, row.attempts, False, None, "", said, now))
        if word not in IN_PROGRESS_WORDS and word not in self._words_seen:
            self._words_seen.add(word)
            log.warning("the CDN reports %s as %r, a status word cdn-push does not know; it keeps asking. If "
                        "the word means done or failed, add it to confirm.ready_states or confirm.failed_states",
                        printable(row.name), printable(word))
        gap = min(confirm.poll_cap, max(confirm.poll_interval, 2 * max(0.0, row.retry_at - row.updated_at)))
        ctx.ledger.put(row._replace(retry_at=now + gap, response=ctx.clean(f"file/list: {word}")))
        log.debug("%s is %r at the CDN; asking again in %.0fs", printable(row.name), word, gap)
        return True


def may_rank_higher(config: Config) -> bool:
    """Whether a row can rank above the backlog: some rule or default sets fetch_prio; pure."""
    return any(priority_of(overrides) for overrides in (config.defaults, *(rule.overrides for rule in config.rules)))


class Feeder:
    """Stage 3 on the owner thread: keeps the submit queue a little ahead of the workers from the
    ledger (most urgent first), checks the origin before the first request, takes the answers and
    pauses sending while the CDN is down. Moves paths into and out of SUBMITTING; `release` (the
    pipeline's) says where a path goes once its answer is in."""

    def __init__(self, ctx: RunContext, submitter: Submitter, recorder: Recorder, *,
                 cdn_retry_pause: float | None, release: Callable[[str, Stage, bool], None],
                 waiting: Callable[[str, str], None]) -> None:
        self.ctx = ctx
        self.submitter = submitter
        self.recorder = recorder
        self.cdn_retry_pause = cdn_retry_pause     # None: the CDN being down ends the run
        self.release = release
        self.waiting = waiting
        self.feeding = True
        self.paused_until = 0.0
        self._consecutive_failures = 0
        self._cdn_was_down = False
        self._origin_checked = False
        self._room, self._room_checked = True, -math.inf
        self._answered_unsaid, self._progress_said = 0, ctx.monotonic()

    @property
    def paused(self) -> bool:
        return self.ctx.monotonic() < self.paused_until

    def can_send(self) -> bool:
        ctx = self.ctx
        return (self.submitter.client is not None and not ctx.dry_run and ctx.summary.fatal is None
                and not self.paused and self._ledger_has_room())

    def _ledger_has_room(self) -> bool:
        """No request leaves that the ledger could not record: below LEDGER_ROOM free, a one-shot run
        ends (exit 5) and the service pauses sending, looking again every few seconds."""
        now = self.ctx.monotonic()
        if now < self._room_checked + 5.0:
            return self._room
        self._room_checked = now
        free = ledger_room(self.ctx.ledger.path) if self.ctx.ledger.path != ":memory:" else None
        room = free is None or free >= LEDGER_ROOM
        if not room and self._room:
            problem = LedgerFullError(f"the disk holding ledger {self.ctx.ledger.path} is full ({free} bytes free): "
                                  "nothing more is sent, since its answer could not be recorded; free some space")
            if self.cdn_retry_pause is None:
                self.ctx.summary.fatal = problem
            self.hand_back(self.submitter.queue.clear())     # queued requests would go out unrecorded too
            log.error("%s", problem)
        elif room and not self._room:
            log.info("the disk holding the ledger has room again: sending goes on")
        self._room = room
        return room

    def due_rows(self, limit: int) -> list[LedgerRow]:
        """Pending rows due now that no stage holds (a path awaiting a resend is due too)."""
        if self.submitter.client is None or self.ctx.dry_run or isinstance(self.ctx.summary.fatal, LedgerFullError):
            return []
        table = self.ctx.table
        return self.ctx.ledger.next_pending(
            limit, lambda path: path in table and table.stage(path) is not Stage.AWAITING, now=self.ctx.clock())

    def feed(self) -> int:
        """Keep the queue a little ahead of the workers, from the ledger, most urgent first."""
        if not self.feeding or not self.can_send():
            return 0
        config = self.ctx.config
        workers, queued = config.submit_workers, len(self.submitter.queue)
        if queued >= workers and not may_rank_higher(config):
            return 0    # work for every worker still, and nothing can go ahead: refilled later, rows a query
        room = workers * 3 - queued
        fed = 0
        for row in self.due_rows(max(room, 1)):
            if room <= 0:     # full: a more urgent row (a fetch_prio rule) still goes ahead
                displaced = self.submitter.queue.give_way(queue_rank(row.priority, False))
                if displaced is None:
                    break
                self.release(displaced.row.path, Stage.SUBMITTING, False)
            fed += self.enqueue(row, fresh=False)
            room -= 1
        return fed

    def enqueue(self, row: LedgerRow, *, fresh: bool) -> int:
        """Queue a pending row for sending; 1 if it was dealt with (queued, set aside or gone)."""
        if not self.can_send() or len(self.submitter.queue) >= self.ctx.tuning.queued_max:
            return 0        # it stays pending in the ledger; the feeder takes it later
        source = self.ctx.table.stage(row.path)
        params = self._params_if_unchanged(row, source)
        if params is None:              # gone, or changed: this content is never fetched
            self.ctx.window.release(row.path)
            return 1
        if not self._origin_checked:
            self._origin_checked = True
            problem = origin_problem(self.ctx, row, params["location"])
            if problem is not None:
                self._origin_down(problem)
                return 0
        self.submitter.start(self.ctx.config.submit_workers)
        self.ctx.table.move(row.path, source, Stage.SUBMITTING)
        self.submitter.queue.put(SubmitJob(row, params, fresh))
        self.ctx.bars.expect("submit", 1)
        return 1

    def _params_if_unchanged(self, row: LedgerRow, source: Stage | None) -> dict[str, str] | None:
        """Request fields for a pending row, or None if the file moved on since it was hashed."""
        ctx = self.ctx
        found = current_stat(str(ctx.config.folder / row.path))
        if found is None:
            if source is not None:
                ctx.table.move(row.path, source, None)
            log.info("gone: %s disappeared before it was submitted", printable(row.path))
            if row.accepted_sha256 is None:
                ctx.ledger.forget(row.path)
            else:
                ctx.ledger.put(row._replace(state=STATE_SUBMITTED, sha256=row.accepted_sha256,
                                            size=row.accepted_size or 0))
            return None
        if found != (row.size, row.mtime_ns, row.inode) or row.sha256 is None:
            ctx.table.move(row.path, source, Stage.SET_ASIDE)
            self.waiting(row.path, "it changed after it was hashed")
            return None
        overrides = overrides_for(row.path, ctx.config.defaults, ctx.config.rules)
        params = build_request(ctx.config, row.path, row.size, row.sha256, overrides,
                               location=ctx.location_for(row.path))
        if ctx.callbacks_on and ctx.signer is not None:
            params[ctx.config.api.callback_param] = ctx.signer.callback(
                ctx.config.callback.public_url, row.path, row.sha256, row.attempts + 1)
        return params

    def collect_answers(self) -> int:
        """The workers' answers so far, recorded with one commit for the batch, not one per file
        (and never later: a kill loses at most the requests in flight)."""
        answers = self.submitter.answers()
        try:
            for job, outcome in answers:
                self.ctx.bars.update("submit", 1, unit="file", desc="submitting")
                self.take_answer(job, outcome)
        finally:
            if answers and not self.ctx.dry_run:
                self.ctx.ledger.commit()
        self._say_progress(len(answers))
        return len(answers)

    def _say_progress(self, answered: int) -> None:
        """An INFO line every PROGRESS_LOG_SECONDS while files are sent (one per file is DEBUG)."""
        self._answered_unsaid += answered
        now = self.ctx.monotonic()
        if self._answered_unsaid and now - self._progress_said >= PROGRESS_LOG_SECONDS:
            summary = self.ctx.summary
            log.info("sent %s in the last %.0fs: %d submitted, %d rejected, %d failed so far",
                     files(self._answered_unsaid), now - self._progress_said, summary.submitted,
                     summary.rejected, summary.failed)
            self._answered_unsaid, self._progress_said = 0, now

    def take_answer(self, job: SubmitJob, outcome: CdnAnswer | Exception) -> None:
        """One answer (or what stopped it): recorded, then the path released."""
        awaits = False
        if isinstance(outcome, CdnAnswer):
            self._consecutive_failures = 0
            if self._cdn_was_down:
                self._cdn_was_down = False
                log.info("the CDN answers again")
            awaits = self.recorder.answered(job.row, job.params, outcome)
        elif isinstance(outcome, (CdnAuthError, CdnEndpointError)):
            self.ctx.activity.cdn_down("credentials refused" if isinstance(outcome, CdnAuthError) else
                                       "wrong api.url", None)
            self.hand_back(self.submitter.queue.clear())     # every other request would be refused too
            self.ctx.summary.fatal = self.ctx.summary.fatal or outcome
        elif isinstance(outcome, CdnUnavailableError):
            self.cdn_down(outcome)
        elif isinstance(outcome, CdnError) and not isinstance(outcome, StopRequested):
            self._consecutive_failures += 1
            self.ctx.activity.answered("failed", job.row, job.params["name"], STATE_FAILED)
            self.recorder.failed(job.row, str(outcome))
            if self._consecutive_failures >= max(3, self.ctx.config.submit_workers * 2):
                self.cdn_down(CdnUnavailableError(f"the CDN failed {self._consecutive_failures} files in a row"))
        elif not isinstance(outcome, StopRequested):     # a stop leaves the file pending for the next run
            raise outcome
        self.release(job.row.path, Stage.SUBMITTING, awaits)

    def hand_back(self, jobs: Iterable[SubmitJob]) -> None:
        """Jobs taken out of the queue unsent: their rows stay pending in the ledger."""
        for job in jobs:
            self.release(job.row.path, Stage.SUBMITTING, False)

    def _origin_down(self, problem: OriginError) -> None:
        """One-shot: the run ends (exit 6). Watch: nothing is sent for a while, then checked again."""
        if self.cdn_retry_pause is None:
            self.ctx.summary.fatal = problem
            return
        log.error("%s; trying again in %gs", problem, self.cdn_retry_pause)
        self._origin_checked = False
        self.paused_until = self.ctx.monotonic() + self.cdn_retry_pause
        self.ctx.activity.cdn_down("the CDN cannot fetch from the origin", self.ctx.clock() + self.cdn_retry_pause)

    def cdn_down(self, exc: CdnUnavailableError) -> None:
        """One-shot: the run ends (exit 4). Watch: pause sending, keep scanning, try again later."""
        self._consecutive_failures = 0
        self.hand_back(self.submitter.queue.clear())
        if self.cdn_retry_pause is None:
            if self.ctx.summary.fatal is None:
                self.ctx.summary.fatal = exc
            return
        self._cdn_was_down = True
        if not self.paused:
            log.error("%s; trying again in %gs", exc, self.cdn_retry_pause)
        self.paused_until = self.ctx.monotonic() + self.cdn_retry_pause
        self.ctx.activity.cdn_down("unreachable", self.ctx.clock() + self.cdn_retry_pause)


class CheckJob(NamedTuple):
    """One question to file/list (or, for a file gone from the folder, a file/delete): the row as
    it was when asked."""

    row: LedgerRow
    delete: bool = False


class Checker:
    """Stage 4's thread: asks file/list about one import at a time, so a slow answer never holds
    up the loop. The owner thread calls `ask`, `answers` and `halt` (and owns `out`); the thread
    only takes questions, asks through the client and hands the answers back."""

    def __init__(self, submitter: Submitter, wake: threading.Event) -> None:
        self.submitter = submitter          # whose client (swapped by a reload, under its lock) is asked
        self.wake = wake
        self.out = 0
        self._questions: queue.SimpleQueue[CheckJob | None] = queue.SimpleQueue()
        self._answers: queue.SimpleQueue[tuple[CheckJob, Listing | CdnAnswer | Exception]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def ask(self, job: CheckJob) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, daemon=True, name="check")
            self._thread.start()
        self.out += 1
        self._questions.put(job)

    def answers(self) -> list[tuple[CheckJob, Listing | CdnAnswer | Exception]]:
        found = []
        while True:
            try:
                found.append(self._answers.get_nowait())
            except queue.Empty:
                self.out -= len(found)
                return found

    def halt(self, timeout: float) -> None:
        """No more questions; the one on the wire (its retries cancelled with the client's) ends."""
        if self._thread is not None:
            self._questions.put(None)
            self._thread.join(timeout)
            self._thread = None

    def _work(self) -> None:
        while True:
            job = self._questions.get()
            if job is None:
                return
            client = self.submitter.client
            name = job.row.accepted_name or job.row.name
            try:
                if client is None:
                    raise CdnError("no client")
                outcome: Listing | CdnAnswer | Exception = (client.delete_file(name) if job.delete
                                                            else client.list_file(name))
            except Exception as exc:  # noqa: BLE001 - handed to the owner thread, which decides
                outcome = exc
            self._answers.put((job, outcome))
            self.wake.set()


class Confirmer:
    """Stage 4 on the owner thread, for confirmations that come by asking: submitted rows whose
    question is due (`retry_at`) are asked about, a couple at a time, each backing off on its own
    (Recorder.listed); callbacks, where they run, are the Recorder's too. Moves paths into and out
    of CHECKING; `release` (the pipeline's) says where a path goes once its answer is in."""

    ASKING = 2          # questions out at once: the API's rate limit is shared with file/add

    def __init__(self, ctx: RunContext, checker: Checker, recorder: Recorder,
                 release: Callable[[str, Stage, bool], None]) -> None:
        self.ctx = ctx
        self.checker = checker
        self.recorder = recorder
        self.release = release

    def due(self, limit: int) -> list[LedgerRow]:
        ctx = self.ctx
        if not ctx.polling or self.checker.submitter.client is None or ctx.summary.fatal is not None:
            return []
        table = ctx.table
        return ctx.ledger.due_checks(limit, lambda path: path in table and table.stage(path) is not Stage.AWAITING,
                                     ctx.clock())

    def ask(self) -> int:
        room = self.ASKING - self.checker.out
        if room <= 0:
            return 0
        rows = self.due(room)
        for row in rows:
            self.ctx.table.move(row.path, self.ctx.table.stage(row.path), Stage.CHECKING)
            self.checker.ask(CheckJob(row))
        return len(rows)

    def take_answers(self) -> int:
        answers = self.checker.answers()
        for job, outcome in answers:
            if job.delete:
                self.recorder.deleted(job.row, outcome)
                self.ctx.table.move(job.row.path, Stage.CHECKING, None)
            else:
                self.release(job.row.path, Stage.CHECKING, self._take(job.row, outcome))
        return len(answers)

    def delete_gone(self, gone_now: Sequence[str]) -> None:
        """file/delete for files gone longer than delete.grace_seconds and still missing; none at all
        when more than delete.max_per_pass would go (or went) at once: that looks like a lost mount
        or a wrong 'folder', not a clean-up (rclone's --max-delete)."""
        ctx, settings = self.ctx, self.ctx.config.delete
        due = ctx.ledger.gone_before(ctx.clock() - settings.grace_seconds, settings.max_per_pass + 1)
        if ctx.dry_run and settings.grace_seconds <= 0:     # what this pass would have marked gone goes too
            due += [row for row in map(ctx.ledger.get, gone_now) if row is not None and row.accepted_sha256]
        due = [row for row in due if ctx.table.stage(row.path) is None
               and not os.path.lexists(ctx.config.folder / row.path)]
        if max(len(gone_now), len(due)) > settings.max_per_pass:
            ctx.summary.deletes_refused += 1
            log.error("%s disappeared from the folder at once (delete.max_per_pass is %d): nothing is deleted "
                      "from the CDN. If that is what you meant, raise delete.max_per_pass for one run",
                      files(max(len(gone_now), len(due))), settings.max_per_pass)
            return
        for row in due:
            if ctx.dry_run:
                ctx.bars.say(f"would delete from the CDN: {printable(row.accepted_name or row.name)} "
                             f"(gone from the folder since {time.strftime('%Y-%m-%d %H:%M', time.localtime(row.updated_at))})")
                continue
            ctx.table.move(row.path, None, Stage.CHECKING)
            self.checker.ask(CheckJob(row, delete=True))

    def _take(self, row: LedgerRow, outcome: Listing | CdnAnswer | Exception) -> bool:
        """Record one answer; whether the file is still awaited."""
        if isinstance(outcome, Listing):
            return self.recorder.listed(row, outcome)
        if isinstance(outcome, (CdnAuthError, CdnEndpointError)):
            if not self.ctx.polling_off:
                self.ctx.polling_off = str(outcome)
                log.warning("%s", outcome)
            return False
        if isinstance(outcome, CdnError):       # unreachable for now: the question waits for its time
            log.info("could not ask the CDN about %s (%s); asking again later", printable(row.name), outcome)
            gap = self.ctx.config.confirm.poll_interval
            self.ctx.ledger.put(row._replace(retry_at=self.ctx.clock() + gap))
            return True
        if isinstance(outcome, StopRequested):
            return False
        raise outcome


def origin_problem(ctx: RunContext, row: LedgerRow, location: str) -> OriginError | None:
    """Before the first request: can the CDN fetch what we are about to name? (origin.check)"""
    origin = ctx.config.origin
    if not origin.check:
        return None
    if origin.serve is not None and ctx.signer is not None:
        expires = str(int(ctx.clock()) + 120)
        url, key, size = (f"{origin.serve.public_url}/probe/{expires}/{ctx.signer.sign('probe', expires)}",
                          "origin.serve.public_url", None)
        shown = origin.serve.public_url
    elif origin.base_url.startswith(("http://", "https://")):
        url, key, size, shown = location, "origin.base_url", row.size, mask_url(location)
    else:
        return None      # ftp, rsync, s3: the CDN's own business
    problem = probe_origin(url, size)
    if problem is None:
        return None
    if origin.serve is not None and urlsplit(origin.serve.public_url).port not in (None, origin.serve.listen_port):
        problem += (f" (origin.serve.listen is port {origin.serve.listen_port} and public_url names port "
                    f"{urlsplit(origin.serve.public_url).port}: something must forward one to the other)")
    return OriginError(f"the CDN could not fetch files through '{key}' ({printable(shown)}): {problem}. "
                       "Nothing was sent. Check that address; if this machine cannot reach its own "
                       "public address (NAT without hairpin) although the CDN can, set 'origin.check: false'")


WAITING_SHOWN = 5         # files named when a run leaves some waiting


def _no_progress(count: int) -> None:
    pass


class Intake:
    """Stages 1 and 2 on the owner thread: a pass's chunks and fresh drops triaged against the
    ledger, hashed (by the Hasher), decided (by the Decider) and written as `pending` in small
    transactions, so a kill loses no hashing work. Owner thread only; moves paths into TO_HASH
    and DECIDED and out of DECIDED; `enqueue` sends a fresh pending row on at once."""

    def __init__(self, ctx: RunContext, hasher: Hasher, decider: Decider, *,
                 enqueue: Callable[[LedgerRow], int], on_waiting: Callable[[str], None],
                 delete_gone: Callable[[Sequence[str]], None], open_files: OpenFiles) -> None:
        self.ctx = ctx
        self.scanner = Scanner(ctx.ledger, ctx.tuning, self.problem)
        self.hasher = hasher
        self.decider = decider
        self.enqueue = enqueue
        self.on_waiting = on_waiting
        self.delete_gone = delete_gone
        self.open_files = open_files            # a pass leaves files that a writer holds open
        self.waiting_examples: list[str] = []
        self._gone: list[QuickRow] = []       # this pass's files no longer in the folder
        self.private = dict(ctx.config.private_files)
        self._private_warned: set[str] = set()
        self._decided: list[tuple[LedgerRow, bool]] = []
        self._last_flush = ctx.monotonic()
        self._flush_soon = False
        self._hashed_unreported = self._files_unreported = 0

    @property
    def scanning(self) -> bool:
        return self.scanner.active or self.hasher.waiting_from_pass

    def decided_paths(self) -> list[str]:
        return [row.path for row, _ in self._decided]

    def problem(self, relpath: str, why: str) -> None:
        self.ctx.summary.unreadable += 1
        self.ctx.activity.problem(relpath, why)
        log.warning("skipped %s: %s", printable(relpath), why)

    def waiting(self, relpath: str, why: str) -> None:
        self.ctx.summary.waiting += 1
        self.on_waiting(relpath)
        if len(self.waiting_examples) < WAITING_SHOWN:
            self.waiting_examples.append(f"{printable(relpath)} ({why})")
        log.debug("waiting: %s: %s", printable(relpath), why)

    def report_hashed(self) -> None:
        """Told to the monitor once a step: a lock per small file costs more than its hash."""
        if self._files_unreported:
            self.ctx.activity.hashed(self._hashed_unreported, self._files_unreported)
            self._hashed_unreported = self._files_unreported = 0

    def hash_slice(self, budget: float) -> int:
        """Scan and hash for about `budget` seconds (at least one file or folder); large files go
        to the hash threads, and while they are all busy the walk waits too."""
        deadline = self.ctx.monotonic() + budget
        done = 0
        while done == 0 or self.ctx.monotonic() < deadline:
            if self.hasher.waiting:
                took = self.hasher.hash_next()
                if took is False:
                    break
                if isinstance(took, Hashed):
                    self.hashed(took)
                done += 1
                continue
            chunk = self.scanner.next_chunk()
            if chunk is None:
                break
            self._take_chunk(chunk)
            done += max(1, len(chunk.entries))
        return done

    def _take_chunk(self, chunk: FolderChunk) -> None:
        """Files young enough to be still written wait for a later pass (or the watcher); the
        ledger vouches for the others or they go on to be hashed."""
        self._gone += chunk.gone
        if chunk.walk_over:
            gone, self._gone = self._gone, []
            self.end_of_walk(gone, self.scanner.listed)
            self._tell_links()
            return
        clock, settle = self.ctx.clock, self.ctx.config.scan.settle_seconds
        settle_before_ns = int((clock() - settle) * 1e9)
        settled = []
        for entry in self._past_vouched(chunk):
            if entry.mtime_ns <= settle_before_ns or entry.relpath in self.private:
                settled.append(entry)
            elif not self.decider.unchanged(entry, chunk.known.get(entry.relpath)):    # young, new to the ledger
                age = max(0.0, clock() - entry.mtime_ns / 1e9)
                self.waiting(entry.relpath, f"modified {age:.0f}s ago, scan.settle_seconds is {settle:g}")
        self.look_at(settled, chunk.known, fresh=False)

    def _past_vouched(self, chunk: FolderChunk) -> list[FileEntry]:
        """The chunk's files but those the ledger vouches for as listed (counted unchanged here):
        the short way for a rerun's every file, as look_at would judge them. A file on its way or
        one of cdn-push's own is still looked at."""
        config, vouched = self.ctx.config, chunk.known.vouched
        # A reload since the folder was read (another name_prefix, callbacks turned on) voids its vouching.
        if not vouched or chunk.known.rules != (config.name_prefix, config.callback.enabled):
            return chunk.entries
        stat_of, staged, private = vouched.get, self.ctx.table.staged(), self.private
        rest = [entry for entry in chunk.entries if stat_of(entry.relpath) != ENTRY_STAT(entry)
                or entry.relpath in staged or entry.relpath in private]
        self.ctx.summary.unchanged += len(chunk.entries) - len(rest)
        return rest

    def _tell_links(self) -> None:
        """Symlinks are not imported unless scan.follow_symlinks is on: said once a pass (at INFO, so
        that a cron run with -q stays quiet about links kept there on purpose)."""
        count, shown = self.scanner.links, self.scanner.link_examples
        if count:
            log.info("passed by %s (scan.follow_symlinks is off; turn it on to import what they lead to): %s%s",
                     plural(count, "symlink"), ", ".join(map(printable, shown)),
                     f" and {count - len(shown)} more" if count > len(shown) else "")

    def end_of_walk(self, gone: list[QuickRow], listed: int) -> None:
        """The walk is through: files no longer in the folder become `gone`, and old enough ones
        are deleted from the CDN where that is asked for. An empty listing proves nothing (an
        unmounted share looks empty): then nothing is marked or deleted."""
        ctx = self.ctx
        if gone and not listed:
            log.warning("the folder %s lists no files at all (an unmounted share?): the %s the ledger knows "
                        "there are not marked gone, and nothing is deleted from the CDN", ctx.config.folder,
                        files(len(gone)))
            ctx.summary.deletes_refused += ctx.config.delete.enabled
            return
        paths = [row.path for row in gone if ctx.table.stage(row.path) in (None, Stage.AWAITING)]
        for path in paths:
            ctx.window.release(path)
        if paths and not ctx.dry_run:
            for path in paths:
                ctx.table.leave(path, Stage.AWAITING)
            ctx.summary.gone += ctx.ledger.mark_gone(paths)
        if paths:
            log.info("%s no longer in the folder: %s%s", files(len(paths)), ", ".join(map(printable, paths[:5])),
                     f" and {len(paths) - 5} more" if len(paths) > 5 else "")
        if ctx.config.delete.enabled:
            self.delete_gone(paths)

    def look_at(self, entries: Sequence[FileEntry], known: Mapping[str, QuickRow], *, fresh: bool) -> None:
        """Triage listed files: what the ledger vouches for is done with at once (unchanged, or
        moved: no hashing); the rest goes to be hashed. A file already on its way is left alone
        (one being sent that changed meanwhile is hashed again after its answer)."""
        table, ledger, private = self.ctx.table, self.ctx.ledger, self.private
        unknown: list[FileEntry] = []
        for entry in entries:
            path = entry.relpath
            row = known.get(path)
            stage = table.stage(path) if table else None
            if stage is None and path not in private:     # the short way for (nearly) every file
                if not same_file(entry, row):
                    unknown.append(entry)
                elif not self.decider.accepted_as_is(entry, row):   # type: ignore[arg-type]
                    self._decided_row(self.decider.decide(entry, ledger.get(path), row.sha256), fresh, None)  # type: ignore[union-attr]
                continue
            if path in private:
                self._skip_private(path)
                continue
            if stage in (Stage.TO_HASH, Stage.HASHING, Stage.DECIDED):
                continue
            if stage in IN_FLIGHT:
                if not same_file(entry, row):
                    table.recheck.add(path)
            elif not same_file(entry, row):
                unknown.append(entry)
            elif not self.decider.unchanged(entry, row):
                self._decided_row(self.decider.decide(entry, ledger.get(path), row.sha256), fresh, stage)
        if unknown and not fresh:      # fresh drops were checked when they settled
            # A shared look older than a file's last write may predate its writer: then look anew.
            recent = max(entry.mtime_ns for entry in unknown) / 1e9 > self.ctx.clock() - self.open_files.max_age - 1
            writers = self.open_files.writers(self.ctx.config.folder, refresh=recent)
            for entry in [e for e in unknown if e.inode in writers]:
                self.waiting(entry.relpath, "another process has it open for writing")
            unknown = [e for e in unknown if e.inode not in writers]
        moved = ledger.find_moved([e for e in unknown if e.relpath not in known])
        for entry in unknown:
            stage = table.stage(entry.relpath)
            if entry.relpath in moved:
                self._decided_row(self.decider.decide(entry, None, moved[entry.relpath]), fresh, stage)
            else:
                self.hasher.add(HashJob(entry, known.get(entry.relpath), fresh), stage)
                self.ctx.bars.expect("hash", entry.size)

    def fit(self, entries: Sequence[FileEntry]) -> list[FileEntry]:
        """Those of `entries` (files that settled, not listed by a walk) that listing_problem does
        not name; the others are reported."""
        private, kept = private_identities(self.ctx.config), []
        for entry in entries:
            with contextlib.suppress(OSError):
                why = listing_problem(os.stat(entry.path), self.ctx.config.scan, private)
                if why and entry.relpath not in self.private:
                    self.problem(entry.relpath, why)
                else:
                    kept.append(entry)
        return kept

    def _skip_private(self, relpath: str) -> None:
        if relpath not in self._private_warned:
            self._private_warned.add(relpath)
            log.warning("skipped %s: it is %s, which holds cdn-push's own secrets or state; keep it "
                        "outside 'folder'", printable(relpath), self.private[relpath])

    def collect_hashes(self) -> int:
        done = self.hasher.finished()
        for hashed in done:
            self.hashed(hashed)
        self._flush_soon = self._flush_soon or bool(done)    # a large file: worth its own transaction
        return len(done)

    def hashed(self, hashed: Hashed) -> None:
        entry, outcome = hashed.job.entry, hashed.outcome
        if isinstance(outcome, str):
            self.ctx.window.hashed(entry.relpath)
            summary = self.ctx.summary
            summary.bytes_hashed += entry.size
            summary.hashed_files += 1
            self._hashed_unreported += entry.size
            self._files_unreported += 1
            # Read again now, not as listed (an answer may have come); a path unknown when listed stays
            # unknown, as the table lets no other job take it meanwhile, so a first pass skips the read.
            row = self.ctx.ledger.get(entry.relpath) if hashed.job.known is not None else None
            self._decided_row(self.decider.decide(entry, row, outcome), hashed.job.fresh, hashed.stage)
            return
        self.ctx.table.move(entry.relpath, hashed.stage, None)
        self.ctx.window.release(entry.relpath)
        if isinstance(outcome, FileChangedError):
            self.waiting(entry.relpath, "it changed while it was hashed")
        elif not isinstance(outcome, (FileNotFoundError, HashInterrupted)):
            self.problem(entry.relpath, f"cannot read: {getattr(outcome, 'strerror', None) or outcome}")

    def _decided_row(self, row: LedgerRow, fresh: bool, source: Stage | None) -> None:
        self.ctx.table.move(row.path, source, Stage.DECIDED)
        self._decided.append((row, fresh))

    def flush(self, *, force: bool = False) -> None:
        """Record decisions in one transaction; fresh and prio files go to the queue at once."""
        if not self._decided:
            return
        ctx, tuning = self.ctx, self.ctx.tuning
        urgent = self._flush_soon or any(fresh or row.priority for row, fresh in self._decided)
        if not (force or urgent or len(self._decided) >= tuning.commit_every
                or ctx.monotonic() - self._last_flush >= tuning.flush_every):
            return
        decided, self._decided = self._decided, []
        self._last_flush, self._flush_soon = ctx.monotonic(), False
        for row, _ in decided:
            ctx.table.move(row.path, Stage.DECIDED, None)
            if row.state != STATE_PENDING or row.retry_at > ctx.clock():   # no fetch soon: unchanged,
                ctx.window.release(row.path)            # conflict, still rejected, a resend not due yet
        if ctx.dry_run:
            return
        ctx.ledger.put_many([row for row, _ in decided], commit_every=1)
        for row, fresh in decided:
            if fresh and row.state == STATE_PENDING:
                self.enqueue(row)


class Pipeline:
    """Scan, hash, submit and confirm as concurrent stages, driven by `step()` on one thread.

    That thread owns the ledger, the path table and every stage object: the Intake walks the
    folder (Scanner), hashes (Hasher) and decides (Decider); the Feeder keeps the Submitter's
    workers busy from the ledger (never more than a few rows in memory); the Recorder writes
    their answers and the CDN's callbacks. Each path is in at most one Stage at a time
    (`table`), which `check_invariants()` verifies against the stages' own queues. `run_once()`
    is a one-shot run; the watch service calls `step()` from its loop and feeds fresh drops
    with `add_fresh()`.
    """

    def __init__(self, config: Config, ledger: Ledger, client: SubmitClient | None, *,
                 stop: threading.Event | None = None, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic, tuning: Tuning = Tuning(),
                 hash_function: HashFunction = hash_outcome, open_files: OpenFiles | None = None,
                 show_progress: bool = False, dry_run: bool = False, retry_rejected: bool = False,
                 out: Callable[[str], None] = print,
                 on_waiting: Callable[[str], None] = lambda relpath: None,
                 signer: UrlSigner | None = None, inbox: CallbackInbox | None = None,
                 cdn_retry_pause: float | None = None, activity: Activity | None = None) -> None:
        self.stop = stop or StopEvent()
        self.wake = threading.Event()
        self.table = PathTable()
        bars = ProgressBars(show_progress, out)
        self.ctx = RunContext(config, ledger, self.table, activity or Activity(clock), bars, tuning, clock,
                              monotonic, dry_run=dry_run, redact=Redactor(config.secrets()),
                              window=fetch_window_for(config, tuning, monotonic, dry_run, origin_idle=lambda: (
                                  self.ctx.inbox.idle_seconds() if self.ctx.inbox else float("inf"))))
        self.serve_with(signer, inbox)
        if client is not None:
            client.on_retry = self.ctx.activity.retried
        self.hasher = Hasher(self.table, config.hash_workers, tuning, hash_function, self.wake,
                             bars.hashed if show_progress else _no_progress, self.ctx.window)
        self.intake = Intake(self.ctx, self.hasher, Decider(self.ctx, retry_rejected=retry_rejected),
                             enqueue=lambda row: self.feeder.enqueue(row, fresh=True), on_waiting=on_waiting,
                             delete_gone=lambda paths: self.confirmer.delete_gone(paths),
                             open_files=open_files or OpenFiles(5.0, monotonic))
        self.recorder = Recorder(self.ctx)
        self.submitter = Submitter(client, self.wake)
        self.feeder = Feeder(self.ctx, self.submitter, self.recorder, cdn_retry_pause=cdn_retry_pause,
                             release=self._release, waiting=self.intake.waiting)
        self.checker = Checker(self.submitter, self.wake)
        self.confirmer = Confirmer(self.ctx, self.checker, self.recorder, self._release)
        self.pass_started: RunSummary | None = None
        self.on_pass_done: Callable[[RunSummary], None] = lambda summary: None
        self._halting = False
        self._confirm_deadline: float | None = None

    @property
    def config(self) -> Config:
        return self.ctx.config

    @property
    def ledger(self) -> Ledger:
        return self.ctx.ledger

    @property
    def summary(self) -> RunSummary:
        return self.ctx.summary

    @property
    def activity(self) -> Activity:
        return self.ctx.activity

    @property
    def scanning(self) -> bool:
        return self.intake.scanning

    @property
    def paused(self) -> bool:
        return self.feeder.paused

    # -- the whole run -------------------------------------------------------------

    def run_once(self) -> RunSummary:
        """One pass over the folder with everything streaming; then wait for confirmations."""
        self.ctx.summary = RunSummary()
        if self.ctx.polling and self.submitter.client is not None:
            self.ledger.make_checks_due(self.ctx.clock())
        try:
            self.start_scan()
            while not self.finished():
                self.step()
        finally:
            self.halt()
        summary = self.summary
        summary.interrupted = self.stop.is_set()
        self.recorder.report_unconfirmed(self.stop.is_set())
        if summary.waiting:
            shown = self.intake.waiting_examples
            more = summary.waiting - len(shown)
            log.info("%s still being written, for a later run: %s%s", files(summary.waiting),
                     "; ".join(shown), f"; and {more} more" if more > 0 else "")
        return summary

    def finished(self) -> bool:
        """Nothing left to scan, hash, record or send; and every confirmation in (or waited for). A
        full disk stops the sending, not the confirming: the CDN is still fetching what was sent."""
        if self.stop.is_set() or (self.summary.fatal is not None and not isinstance(self.summary.fatal,
                                                                                    LedgerFullError)):
            return True
        if self.busy():
            return False
        awaiting = self.table.count(Stage.AWAITING)
        if not (self.ctx.confirming and awaiting):
            return True
        if self._confirm_deadline is None:
            self._confirm_deadline = self.ctx.clock() + self.config.callback.wait_seconds
            log.info("waiting up to %gs for the CDN to confirm %s", self.config.callback.wait_seconds,
                     files(awaiting))
        return self.ctx.clock() >= self._confirm_deadline

    def busy_here(self) -> bool:
        """Something is being scanned, hashed, recorded or sent (the ledger's backlog aside)."""
        return bool(self.intake.scanner.active or self.table.count(
            Stage.TO_HASH, Stage.HASHING, Stage.DECIDED, *IN_FLIGHT))

    def busy(self) -> bool:
        return self.busy_here() or bool(self.feeder.due_rows(1) or self.confirmer.due(1))

    def step(self, timeout: float = 0.5) -> None:
        """One turn: take answers, hashes and callbacks, scan a slice, record, feed the workers.

        Waits up to `timeout` only when there is nothing to do; any answer, finished hash or
        callback wakes it.
        """
        self.wake.clear()
        self.submitter.check_workers()
        worked = (self.intake.collect_hashes() + self.feeder.collect_answers() + self.recorder.apply_callbacks()
                  + self.confirmer.take_answers())
        scanned = 0
        if not self.stop.is_set() and self.summary.fatal is None:
            scanned = self.intake.hash_slice(self.ctx.tuning.scan_slice)
        # While the scan streams small files, decisions go to the ledger in batches; otherwise at once.
        self.intake.flush(force=not scanned)
        worked += scanned + self.feeder.feed() + self.confirmer.ask()
        self._observe()
        worked += self._finish_pass_if_done()
        if not worked:
            self.wake.wait(timeout)

    def _observe(self) -> None:
        """What the monitor shows of the stages right now; a few small lists, every step."""
        self.intake.report_hashed()
        if self.ctx.bars.show:
            self.ctx.bars.show_hashed()
        self.submitter.close_retired_if_idle()
        table = self.table
        self.activity.observe(
            {"hash": table.count(Stage.TO_HASH, Stage.HASHING), "submit": table.count(Stage.SUBMITTING),
             "confirm": table.count(Stage.AWAITING)},
            [{"path": job.entry.relpath, "size": job.entry.size} for job in self.hasher.running()[:10]],
            [{"path": job.row.path, "size": job.row.size} for job in self.submitter.sending()[:10]])

    def halt(self) -> None:
        """The one way out: stop producers, let requests in flight finish (for at most the API's
        timeout, or not at all after a second stop), record, commit. A step that fails does not
        keep the others, or the final commit, from happening; the first failure is raised after."""
        self._halting = True
        hurry = getattr(self.stop, "now", threading.Event())
        deadline = time.monotonic() + self.config.api.timeout + 2
        failures: list[BaseException] = []
        for step in (self._halt_producers, lambda: self._halt_requests(deadline, hurry), self._halt_confirmations):
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - raised after the commit below
                failures.append(exc)
        try:
            self.ctx.bars.close()
            if not self.ctx.dry_run:
                self.ledger.commit()
        finally:
            self._halting = False
        if failures:
            raise failures[0]

    def _halt_producers(self) -> None:
        self.intake.scanner.stop()
        for hashed in self.hasher.halt(time.monotonic() + 5, getattr(self.stop, "now", threading.Event())):
            self.intake.hashed(hashed)
        self.intake.flush(force=True)

    def _halt_requests(self, deadline: float, hurry: threading.Event) -> None:
        self.feeder.hand_back(self.submitter.halt(deadline, hurry))
        self.checker.halt(0 if hurry.is_set() else max(0.0, deadline - time.monotonic()))
        self.feeder.collect_answers()
        self.confirmer.take_answers()
        for path in self.table.paths(Stage.CHECKING):      # a question that never came back: asked again later
            self.table.move(path, Stage.CHECKING, None)

    def _halt_confirmations(self) -> None:
        if self.ctx.inbox is not None:
            self.ctx.inbox.close()        # from now on the CDN is told to call again later
        self.recorder.apply_callbacks()
        self._observe()

    def check_invariants(self) -> None:
        """Each path in one stage, and each stage's own queues agree with the table (tests call this
        between steps; it reads every queue, so it is not for production loops)."""
        self.table.check()
        held = {Stage.TO_HASH: [job.entry.relpath for job in self.hasher.waiting_jobs()],
                Stage.HASHING: [job.entry.relpath for job in self.hasher.running()],
                Stage.DECIDED: self.intake.decided_paths()}
        for stage, paths in held.items():
            if len(paths) != len(set(paths)) or set(paths) != set(self.table.paths(stage)):
                raise AssertionError(f"pipeline bug: {stage.value}: the stage holds {sorted(paths)[:5]}, "
                                     f"the table {sorted(self.table.paths(stage))[:5]}")
        submitting = set(self.table.paths(Stage.SUBMITTING))
        out = {job.row.path for job in self.submitter.sending()}
        if not out <= submitting:
            raise AssertionError(f"pipeline bug: sending {sorted(out - submitting)[:5]} outside SUBMITTING")
        if self.table.count(Stage.CHECKING) != self.checker.out:
            raise AssertionError(f"pipeline bug: {self.checker.out} questions out, "
                                 f"{self.table.count(Stage.CHECKING)} paths CHECKING")

    # -- for tests and the benchmark: one stage at a time ---------------------------

    def scan_and_hash(self) -> None:
        """Walk and hash the whole folder into the ledger, submitting nothing."""
        feeding, self.feeder.feeding = self.feeder.feeding, False
        try:
            self.start_scan()
            while self.scanning or self.table.count(Stage.TO_HASH, Stage.HASHING, Stage.DECIDED):
                self.step(timeout=0.05)
        finally:
            self.feeder.feeding = feeding

    def submit_pending(self) -> None:
        """Submit what the ledger holds as pending and due; raises if the CDN cannot be used."""
        while (not self.stop.is_set() and self.summary.fatal is None
               and (self.table.count(Stage.SUBMITTING) or self.feeder.due_rows(1))):
            self.step(timeout=0.05)
        if self.summary.fatal is not None:
            raise self.summary.fatal

    # -- passes, fresh drops, answers ----------------------------------------------------

    def start_scan(self) -> bool:
        """Begin a pass over the whole folder; False if one is running already (its large files
        still being hashed included)."""
        if self.scanning or self.pass_started is not None:
            return False
        self.intake.scanner.start(self.config)
        self.pass_started = dataclasses.replace(self.summary, started=time.monotonic())
        self.activity.pass_started()      # submit workers start with the first request to send
        return True

    def add_fresh(self, entries: Sequence[FileEntry]) -> None:
        """Files that just settled (watch events): hashed and sent ahead of the pass's backlog; a
        pass's walk leaves out what listing_problem names, and so does this."""
        entries = self.intake.fit(entries)
        known = {entry.relpath: self.ledger.quick_row(entry.relpath) for entry in entries}
        self.intake.look_at(entries, {path: row for path, row in known.items() if row is not None}, fresh=True)

    def _finish_pass_if_done(self) -> int:
        """1 if the pass ended now (a turn's work: the loop looks again at once, not after a wait)."""
        if self.pass_started is None or self.scanning or self.hasher.pass_tail():
            return 0
        started, self.pass_started = self.pass_started, None
        for path in self.table.paths(Stage.SET_ASIDE):     # looked at again by the feeder: gone, changed or ready
            self.table.move(path, Stage.SET_ASIDE, None)
        decider = self.intake.decider
        if decider.origin_to_record is not None and not self.stop.is_set():
            self.ledger.set_meta("origin", decider.origin_to_record)
            decider.origin_to_record = None
        self.activity.pass_ended()
        self.on_pass_done(started)
        return 1

    def _release(self, path: str, source: Stage, awaits: bool) -> None:
        """A path's request is answered (or was never sent): it awaits its confirmation, is hashed
        again (it changed while the request was out), or is idle."""
        if path in self.table.recheck and not self._halting:
            found = current_stat(str(self.config.folder / path))
            if found is not None:
                entry = FileEntry(path, str(self.config.folder / path), *found)
                self.hasher.add(HashJob(entry, self.ledger.quick_row(path), True), source)
                return
        self.table.move(path, source, Stage.AWAITING if awaits else None)

    def reconfigure(self, config: Config, client: SubmitClient) -> None:
        """A reloaded configuration; the old client is closed once no request is out."""
        self.ctx.config = config
        self.submitter.use(client)
        client.on_retry = self.activity.retried
        self.ctx.redact = Redactor(config.secrets())
        self.intake.private = dict(config.private_files)

    def apply_callbacks(self) -> int:
        """Record the callbacks that came in (the step does this too)."""
        return self.recorder.apply_callbacks()

    def serve_with(self, signer: UrlSigner | None, inbox: CallbackInbox | None) -> None:
        self.ctx.signer, self.ctx.inbox = signer, inbox
        if inbox is not None:
            inbox.wake = self.wake


# ----------------------------------------------------------------------------
# Status page
# ----------------------------------------------------------------------------

PAGE_STATES = ("pending", "submitted", "confirmed", "rejected", "failed", "waiting")
CHART_BUCKETS = 60              # one bar pair per minute of the last hour
RECENT_SHOWN = 50
LIST_SHOWN = 8                  # files listed under "hashing now" / "sending now" before "+N more"
PAGE_PROBLEMS_SHOWN = 200            # beyond this the page would stop loading fast; `status` lists all

# (label on the tile, what it means for someone who is not a developer)
TILE_TEXT = {
    "pending": ("Pending", "hashed, due to be sent to the CDN"),
    "submitted": ("Submitted", "sent; the CDN is fetching and checking them"),
    "confirmed": ("Confirmed", "imported, and the CDN verified every byte"),
    "rejected": ("Rejected", "refused by the CDN: see Problems"),
    "failed": ("Failed", "could not be imported yet: see Problems"),
    "waiting": ("Waiting", "still being written, or just finished"),
}

# Badges carry an icon and the word: colour alone says nothing to a colour-blind reader or a printout.
BADGE_ICON = {"pending": "\u25f7", "submitted": "\u2197", "confirmed": "\u2713", "rejected": "\u2715",
              "failed": "!", "waiting": "\u2026", "conflict": "\u21c4", "unreadable": "\u2298"}

PAGE_CSS = """
:root{--ink:#1d2733;--muted:#5b6776;--line:#dfe4ea;--bg:#f3f5f8;--card:#fff;--ok:#1a7f37;
--busy:#0b61c4;--bad:#c42b1c;--warn:#9a6700;--grey:#6e7781;--violet:#7a3fc2;
--imports:#2f6fdf;--confirms:#2da44e}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);
font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans","DejaVu Sans",sans-serif}
header{background:#1f2a37;color:#fff;padding:14px 28px;display:flex;flex-wrap:wrap;gap:4px 28px;
align-items:baseline}
header h1{font-size:19px;margin:0 18px 0 0;font-weight:650;letter-spacing:.2px}
header .where{color:#c9d3de;font-size:14px;overflow-wrap:anywhere}
header .where b{color:#fff;font-weight:600}
main{max-width:1220px;margin:0 auto;padding:20px 28px 8px}
section{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:16px 20px;
margin:0 0 18px}
h2{font-size:16px;margin:0 0 12px;font-weight:650}
h2 .aside{font-weight:400;color:var(--muted);font-size:14px;margin-left:8px}
.banner{border-left:6px solid var(--grey);display:flex;gap:16px;align-items:flex-start}
.banner .dot{flex:none;width:14px;height:14px;border-radius:50%;margin-top:5px;background:var(--grey)}
.banner p{margin:0}.banner .headline{font-size:19px;font-weight:650}
.banner .detail{color:var(--muted);margin-top:2px}
.tone-ok{border-left-color:var(--ok)}.tone-ok .dot{background:var(--ok)}
.tone-busy{border-left-color:var(--busy)}.tone-busy .dot{background:var(--busy)}
.tone-bad{border-left-color:var(--bad)}.tone-bad .dot{background:var(--bad)}
.attention{margin-top:6px;font-weight:600;color:var(--bad)}
.attention a{color:inherit}
.tiles{display:grid;grid-template-columns:repeat(6,1fr);gap:14px;margin:0 0 18px}
.tile{background:var(--card);border:1px solid var(--line);border-top:5px solid var(--grey);
border-radius:10px;padding:12px 14px}
.tile .label{font-size:13px;font-weight:700;text-transform:uppercase;letter-spacing:.6px;color:var(--muted)}
.tile .count{font-size:34px;font-weight:700;line-height:1.15;margin:4px 0 0;
font-variant-numeric:tabular-nums;overflow-wrap:anywhere}
.tile .bytes{font-size:15px;font-weight:600}
.tile .means{font-size:12.5px;color:var(--muted);margin-top:4px}
.tile.zero .count{color:#9aa4af}
.t-pending{border-top-color:var(--warn)}.t-submitted{border-top-color:var(--busy)}
.t-confirmed{border-top-color:var(--ok)}.t-rejected{border-top-color:var(--bad)}
.t-failed{border-top-color:#d4520f}.t-waiting{border-top-color:var(--grey)}
.t-rejected.some,.t-failed.some{background:#fff6f5}
.cols{display:grid;grid-template-columns:1fr 1fr;gap:20px}
.facts{display:flex;flex-wrap:wrap;gap:8px 28px;margin:0 0 12px;color:var(--muted)}
.facts b{color:var(--ink);font-variant-numeric:tabular-nums}
h3{font-size:14px;margin:0 0 6px;font-weight:650}
ul.files{list-style:none;margin:0;padding:0}
ul.files li{display:flex;justify-content:space-between;gap:12px;padding:5px 0;border-top:1px solid #eef1f4}
ul.files li .name{overflow-wrap:anywhere}
.size,.when{white-space:nowrap;color:var(--muted);font-variant-numeric:tabular-nums}
.empty{color:var(--muted);font-style:italic;margin:4px 0}
table{width:100%;border-collapse:collapse;font-size:14px}
th{text-align:left;font-size:12px;text-transform:uppercase;letter-spacing:.5px;color:var(--muted);
font-weight:700;border-bottom:2px solid var(--line);padding:6px 8px}
td{padding:6px 8px;border-bottom:1px solid #eef1f4;vertical-align:top}
td.name{overflow-wrap:anywhere;width:62%}
td.num{text-align:right}
tr:nth-child(even) td{background:#fafbfc}
.cdn-name{display:block;color:var(--muted);font-size:12.5px}
.badge{display:inline-block;white-space:nowrap;border-radius:999px;padding:1px 9px 1px 7px;
font-size:12.5px;font-weight:650;border:1px solid}
.b-pending{color:#7a5200;background:#fff5d6;border-color:#f0d58a}
.b-submitted{color:#0b4fa3;background:#e6f0fd;border-color:#a9c8f5}
.b-confirmed{color:#116329;background:#e3f6e8;border-color:#9fd9ae}
.b-rejected{color:#a21b0f;background:#fde8e6;border-color:#f3aaa2}
.b-failed{color:#9c3b05;background:#fdede3;border-color:#f2b48d}
.b-waiting,.b-other{color:#4d5661;background:#eef1f4;border-color:#cfd6dd}
.b-conflict{color:#5e2a9c;background:#f1e9fb;border-color:#cdb3ef}
.b-unreadable{color:#7a5200;background:#fff5d6;border-color:#f0d58a}
ol.problems{list-style:none;margin:0;padding:0}
ol.problems li{border-top:1px solid var(--line);padding:10px 0}
ol.problems li:first-child{border-top:0}
.problem-head{display:flex;gap:10px;align-items:baseline;flex-wrap:wrap}
.problem-head .name{font-weight:600;overflow-wrap:anywhere}
.reason{margin:6px 0 0;padding:6px 10px;background:#f6f8fa;border-radius:6px;
font:13px/1.4 ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,monospace;white-space:pre-wrap;
overflow-wrap:anywhere}
.advice{margin:6px 0 0}.advice b{color:var(--ink)}
.all-good{color:var(--ok);font-weight:600;margin:0}
svg.chart{width:100%;height:auto;display:block}
svg.chart text{font:12px system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;fill:#5b6776}
svg.chart .grid{stroke:#e6eaef;stroke-width:1}
svg.chart .axis{stroke:#9aa4af;stroke-width:1}
svg.chart .imports{fill:var(--imports)}
svg.chart .confirms{fill:var(--confirms)}
svg.chart .hover{fill:transparent}
svg.chart g.bucket:hover .hover{fill:rgba(31,42,55,.07)}
footer{max-width:1220px;margin:0 auto;padding:0 28px 28px;color:var(--muted);font-size:13px}
footer a{color:inherit}
@media (max-width:1000px){.tiles{grid-template-columns:repeat(3,1fr)}.cols{grid-template-columns:1fr}}
@media (max-width:560px){.tiles{grid-template-columns:repeat(2,1fr)}main,header{padding-left:14px;
padding-right:14px}}
"""


# -- formatting: every value that reaches the page goes through one of these ----

def esc(value: Any) -> str:
    """Untrusted text for HTML text or a quoted attribute: control characters and ANSI escapes
    made visible first (a browser would drop them silently, hiding what the file is really called),
    then <, >, &, " and ' escaped."""
    return html.escape(printable(str(value)), quote=True)


def _page_number(value: Any) -> float | None:
    """A finite number from the document, or None: a missing or odd field shows as a dash, not a 500."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def human_bytes(size: Any) -> str:
    """Decimal units (1 GB = 10^9 bytes), as file managers show them; three significant digits."""
    value = _page_number(size)
    if value is None or value < 0:
        return "\u2014"
    if value < 1000:
        return f"{int(value)} B"
    for unit in ("KB", "MB", "GB", "TB", "PB", "EB"):
        value /= 1000
        if value < 999.5 or unit == "EB":
            return f"{value:.3g} {unit}" if value < 100 else f"{value:.0f} {unit}"
    raise AssertionError("unreachable")


def human_count(count: Any) -> str:
    """1234567 -> '1,234,567': exact, for tables and sentences."""
    value = _page_number(count)
    return "\u2014" if value is None else f"{int(value):,}"


def big_count(count: Any) -> str:
    """A tile's number: exact up to 999,999, then '1.23 million' so it still fits a tile."""
    value = _page_number(count)
    if value is None:
        return "\u2014"
    for size, word in ((1e12, "trillion"), (1e9, "billion"), (1e6, "million")):
        if abs(value) >= size:
            return f"{value / size:.3g} {word}"
    return f"{int(value):,}"


def human_rate(bytes_per_second: Any) -> str:
    return "\u2014" if _page_number(bytes_per_second) is None else human_bytes(bytes_per_second) + "/s"


def local_time(stamp: Any) -> str:
    """A Unix time as local YYYY-MM-DD HH:MM:SS, or a dash when there is none yet."""
    value = _page_number(stamp)
    if value is None or value <= 0:
        return "\u2014"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))


def _span(seconds: float) -> str:
    seconds = abs(seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def relative(stamp: Any, now: float) -> str:
    """'3 min ago' / 'in 45 s' against the document's own time, so a page shows no clock skew."""
    value = _page_number(stamp)
    if value is None or value <= 0:
        return ""
    if abs(value - now) < 1:
        return "just now"
    return f"in {_span(value - now)}" if value > now else f"{_span(now - value)} ago"


def _when(stamp: Any, now: float) -> str:
    """'2024-05-01 10:00:00 (3 min ago)', escaped and ready for HTML."""
    shown, ago = local_time(stamp), relative(stamp, now)
    return esc(f"{shown} ({ago})" if ago else shown)


def _get(mapping: Any, *keys: str) -> Any:
    """status["a"]["b"], or None where a level is missing: an older server's document still renders."""
    for key in keys:
        if not isinstance(mapping, Mapping):
            return None
        mapping = mapping.get(key)
    return mapping


def _items(value: Any) -> list[Mapping[str, Any]]:
    """The mappings of a list field; anything else (missing, null, a string) is an empty list."""
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
        return []
    return [item for item in value if isinstance(item, Mapping)]


# -- the page --------------------------------------------------------------

def render_status_page(status: Mapping[str, Any], *, refresh_seconds: int = 5) -> str:
    """The whole page for one /status.json document; pure. `refresh_seconds` 0 turns refreshing off."""
    now = _page_number(status.get("generated_at")) or 0.0
    tone, headline, _ = activity_summary(status, now)
    body = "".join((
        _banner(status, now),
        _tiles(status),
        _now_section(status, now),
        _chart_section(status, now),
        _problems_section(status, now),
        _recent_section(status, now),
    ))
    return "".join((
        "<!DOCTYPE html>\n<html lang=\"en\">\n",
        _head(f"{headline} \u00b7 cdn-push", refresh_seconds),
        "<body>\n", _header(status), "<main>\n", body, "</main>\n", _footer(status, now, refresh_seconds),
        "</body>\n</html>\n",
    ))


def _head(title: str, refresh_seconds: int) -> str:
    # The CSP is a second line of defence: were any text ever left unescaped, no script or
    # outside resource would load. Relative links only, so a reverse proxy may mount it anywhere.
    refresh = (f'<meta http-equiv="refresh" content="{max(1, int(refresh_seconds))}">\n'
               if refresh_seconds > 0 else "")
    return (
        "<head>\n<meta charset=\"utf-8\">\n"
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        "style-src 'unsafe-inline'; img-src data:; form-action 'none'; base-uri 'none'\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        "<meta name=\"referrer\" content=\"no-referrer\">\n"
        "<meta name=\"robots\" content=\"noindex, nofollow\">\n"
        f"{refresh}<title>{esc(title)}</title>\n"
        "<link rel=\"icon\" href=\"data:,\">\n"
        f"<style>{PAGE_CSS}</style>\n</head>\n"
    )


def _header(status: Mapping[str, Any]) -> str:
    mode = "service (watch)" if status.get("mode") == "watch" else "one-shot run"
    return (
        "<header>\n<h1>cdn-push status</h1>\n"
        f"<span class=\"where\">Folder <b>{esc(status.get('folder') or '?')}</b></span>\n"
        f"<span class=\"where\">CDN <b>{esc(status.get('cdn') or '?')}</b></span>\n"
        f"<span class=\"where\">Running as <b>{esc(mode)}</b></span>\n"
        "</header>\n"
    )


def _footer(status: Mapping[str, Any], now: float, refresh_seconds: int) -> str:
    zone = time.strftime("%Z, UTC%z", time.localtime(now)) if now else ""
    refresh = f"refreshes every {int(refresh_seconds)} s" if refresh_seconds > 0 else "reload to refresh"
    return (
        f"<footer>cdn-push {esc(status.get('version') or '')} \u00b7 page generated "
        f"{esc(local_time(now))} ({esc(zone)}) \u00b7 {refresh} \u00b7 "
        "for scripts: <a href=\"status.json\">status.json</a>, "
        "<a href=\"metrics\">metrics</a> (Prometheus)</footer>\n"
    )


# -- what the service is doing ---------------------------------------------

def activity_summary(status: Mapping[str, Any], now: float) -> tuple[str, str, str]:
    """(tone, headline, detail) in plain words; the CDN's trouble outranks the pass, because
    while the CDN is down nothing the pass finds can go anywhere. The detail is HTML."""
    activity = status.get("activity") if isinstance(status.get("activity"), Mapping) else {}
    cdn = activity.get("cdn") if isinstance(activity.get("cdn"), Mapping) else {}
    problem, since, retry = cdn.get("problem"), cdn.get("since"), cdn.get("next_try_at")
    retry_text = f" Next try at {_when(retry, now)}." if _page_number(retry) else ""
    if problem == "credentials refused":
        return ("bad", "The CDN refused the API credentials",
                f"Since {_when(since, now)}. Nothing can be sent until <code>api.login</code> and the "
                f"password are fixed (then restart the service).{retry_text}")
    if problem == "unreachable" or cdn.get("up") is False:
        return ("bad", "The CDN cannot be reached",
                f"Unreachable since {_when(since, now)}.{retry_text} Files are kept and sent when "
                f"it answers again; nothing is lost.")
    if activity.get("watching") is False:
        return ("bad", "Not watching the folder",
                "The folder is gone or was replaced (moved away, or a share unmounted). cdn-push watches "
                "it again as soon as it is back and then looks at every file; nothing is lost.")
    return _pass_summary(status, activity, now)


def _pass_summary(status: Mapping[str, Any], activity: Mapping[str, Any], now: float) -> tuple[str, str, str]:
    doing, run = activity.get("doing"), activity.get("pass") if isinstance(activity.get("pass"), Mapping) else {}
    if doing in ("first pass", "full pass") or run.get("running"):
        hashed = f"{human_count(run.get('files_hashed') or 0)} files ({human_bytes(run.get('bytes_hashed') or 0)})"
        first = doing == "first pass"
        headline = "First pass over the folder" if first else "Checking the whole folder again"
        detail = (f"{esc(hashed)} hashed so far; started {_when(run.get('started_at'), now)}. "
                  + ("New files are imported as they are found."
                     if first else "Files dropped meanwhile are still imported at once."))
        return "busy", headline, detail
    last = activity.get("last_pass_end")
    ended = f"Last full pass finished {_when(last, now)}." if _page_number(last) else ""
    if doing == "watching":
        return ("ok", "Watching the folder",
                f"New files are imported a few seconds after they are written. {ended}".strip())
    if status.get("mode") == "run":
        return "ok", "Run finished" if _page_number(last) else "Idle", ended or "Nothing to do."
    return "ok", "Idle", ended or "Nothing to do right now."


def _banner(status: Mapping[str, Any], now: float) -> str:
    tone, headline, detail = activity_summary(status, now)
    counts = status.get("counts") if isinstance(status.get("counts"), Mapping) else {}
    # Conflicts and unreadable files have no ledger state, so they are only in the problems list;
    # that list may be cut short, so the counts win where they are larger.
    trouble = max(sum(int(_page_number(counts.get(s)) or 0) for s in ("rejected", "failed")),
                  len(_items(status.get("problems"))))
    attention = (f'<p class="attention">{human_count(trouble)} file{"s" if trouble != 1 else ""} need'
                 f'{"" if trouble != 1 else "s"} attention: see <a href="#problems">Problems</a>.</p>'
                 if trouble else "")
    return (
        f'<section class="banner tone-{tone}" role="status" aria-live="polite">'
        f'<span class="dot" aria-hidden="true"></span><div>'
        f'<p class="headline">{esc(headline)}</p><p class="detail">{detail}</p>{attention}</div></section>\n'
    )


def _tiles(status: Mapping[str, Any]) -> str:
    counts = status.get("counts") if isinstance(status.get("counts"), Mapping) else {}
    sizes = status.get("bytes") if isinstance(status.get("bytes"), Mapping) else {}
    return ('<div class="tiles">\n'
            + "".join(_tile(state, counts.get(state), sizes.get(state)) for state in PAGE_STATES)
            + "</div>\n")


def _tile(state: str, count: Any, size: Any) -> str:
    label, means = TILE_TEXT[state]
    number = int(_page_number(count) or 0)
    shown_size = human_bytes(size) if _page_number(size) is not None else ""
    classes = f"tile t-{state} {'zero' if number == 0 else 'some'}"
    return (
        f'<div class="{classes}" title="{esc(human_count(number))} files {esc(state)}">'
        f'<div class="label">{esc(label)}</div>'
        f'<div class="count">{esc(big_count(number))}</div>'
        f'<div class="bytes">{esc(shown_size) or "&nbsp;"}</div>'
        f'<div class="means">{esc(means)}</div></div>\n'
    )


def _now_section(status: Mapping[str, Any], now: float) -> str:
    queues = status.get("queues") if isinstance(status.get("queues"), Mapping) else {}
    rates = status.get("rates") if isinstance(status.get("rates"), Mapping) else {}
    per_minute = _page_number(rates.get("imports_per_minute"))
    facts = (
        f'<span>Hashing speed <b>{esc(human_rate(rates.get("hashed_bytes_per_second")))}</b></span>'
        f'<span>Imports sent <b>{esc(f"{per_minute:.1f}" if per_minute is not None else chr(0x2014))}</b> per '
        'minute (average of the last 5 minutes)</span>'
        f'<span>Queued to hash <b>{human_count(queues.get("hash") or 0)}</b></span>'
        f'<span>Queued to send <b>{human_count(queues.get("submit") or 0)}</b></span>'
        f'<span>Awaiting CDN confirmation <b>{human_count(queues.get("confirm") or 0)}</b></span>'
    )
    return (
        '<section aria-labelledby="now-h"><h2 id="now-h">Right now</h2>\n'
        f'<div class="facts">{facts}</div>\n<div class="cols">\n'
        + _file_list("Hashing", _get(status, "now", "hashing"), "Nothing is being hashed.")
        + _file_list("Sending to the CDN", _get(status, "now", "sending"), "Nothing is being sent.")
        + "</div></section>\n"
    )


def _file_list(title: str, files: Any, empty: str) -> str:
    items = _items(files)
    rows = "".join(f'<li><span class="name">{esc(item.get("path", "?"))}</span> '
                   f'<span class="size">{esc(human_bytes(item.get("size")))}</span></li>\n'
                   for item in items[:LIST_SHOWN])
    more = (f'<li><span class="empty">and {human_count(len(items) - LIST_SHOWN)} more</span></li>'
            if len(items) > LIST_SHOWN else "")
    listing = f'<ul class="files">{rows}{more}</ul>' if items else f'<p class="empty">{esc(empty)}</p>'
    return f'<div><h3>{esc(title)}</h3>{listing}</div>\n'


# -- the chart: imports and confirmations per minute, inline svg, no script ----

CHART_W, CHART_H = 1000, 250
CHART_LEFT, CHART_RIGHT, CHART_TOP, CHART_BOTTOM = 48, 12, 34, 36


def chart_series(chart: Any, now: float) -> list[tuple[float, int, int]]:
    """Exactly CHART_BUCKETS (minute start, imports, confirmations), oldest first: a short or
    missing series is padded with empty minutes before it, so the time axis always spans an hour."""
    starts = [_page_number(v) for v in (_get(chart, "minute_starts") or [])][-CHART_BUCKETS:]
    imports = [int(_page_number(v) or 0) for v in (_get(chart, "imports") or [])][-CHART_BUCKETS:]
    confirms = [int(_page_number(v) or 0) for v in (_get(chart, "confirmations") or [])][-CHART_BUCKETS:]
    length = max(len(starts), len(imports), len(confirms))
    last = (starts[-1] if starts and starts[-1] else math.floor(now / 60) * 60)

    def padded(values: list[Any], fill: Any) -> list[Any]:
        values = values + [fill] * (length - len(values))    # ragged lists: pad the tail
        return [fill] * (CHART_BUCKETS - length) + values
    start_times = [last - 60 * (CHART_BUCKETS - 1 - i) for i in range(CHART_BUCKETS)]
    given = padded(starts, None)
    return [(given[i] or start_times[i], n, c)
            for i, (n, c) in enumerate(zip(padded(imports, 0), padded(confirms, 0)))]


def _nice_ceiling(peak: int) -> tuple[int, int]:
    """(top of the y axis, step between grid lines): 1, 2 or 5 times a power of ten, four steps
    at most, so the labels are round numbers a reader can interpolate."""
    if peak <= 4:
        return 4, 1
    raw = peak / 4
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    return int(step * math.ceil(peak / step)), int(step)


def render_chart_svg(chart: Any, now: float) -> str:
    """The chart as an <svg> element. Each minute is a <g class="bucket"> whose <title> gives its
    exact numbers on hover; <desc> and the figure caption give the totals for screen readers."""
    series = chart_series(chart, now)
    top, step = _nice_ceiling(max([max(n, c) for _, n, c in series] + [0]))
    plot_w = CHART_W - CHART_LEFT - CHART_RIGHT
    plot_h = CHART_H - CHART_TOP - CHART_BOTTOM
    slot = plot_w / CHART_BUCKETS
    parts = [f'<svg class="chart" viewBox="0 0 {CHART_W} {CHART_H}" role="img" '
             f'aria-labelledby="chart-t chart-d" xmlns="http://www.w3.org/2000/svg">',
             '<title id="chart-t">Imports and confirmations per minute, last hour</title>',
             f'<desc id="chart-d">{esc(_chart_totals(series))}</desc>']
    parts += _chart_axes(series, top, step, slot, plot_h)
    parts += [_chart_bucket(i, entry, top, slot, plot_h) for i, entry in enumerate(series)]
    parts += _chart_legend()
    if not any(n or c for _, n, c in series):       # an empty grid alone looks like a broken chart
        parts.append(f'<text x="{CHART_LEFT + plot_w / 2:.0f}" y="{CHART_TOP + plot_h / 2:.0f}" '
                     'text-anchor="middle">No imports in the last hour</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _chart_axes(series: list[tuple[float, int, int]], top: int, step: int, slot: float,
                plot_h: float) -> list[str]:
    base = CHART_TOP + plot_h
    parts = []
    for value in range(0, top + 1, step):
        y = base - plot_h * value / top
        parts.append(f'<line class="grid" x1="{CHART_LEFT}" x2="{CHART_W - CHART_RIGHT}" '
                     f'y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(f'<text x="{CHART_LEFT - 8}" y="{y + 4:.1f}" text-anchor="end">{human_count(value)}</text>')
    parts.append(f'<line class="axis" x1="{CHART_LEFT}" x2="{CHART_W - CHART_RIGHT}" y1="{base}" y2="{base}"/>')
    # A time label every ten minutes, at the left edge of its minute; the newest bar is "now".
    for i in range(0, CHART_BUCKETS, 10):
        x = CHART_LEFT + i * slot
        parts.append(f'<line class="axis" x1="{x:.1f}" x2="{x:.1f}" y1="{base}" y2="{base + 5}"/>')
        parts.append(f'<text x="{x:.1f}" y="{base + 19}" text-anchor="middle">'
                     f'{esc(time.strftime("%H:%M", time.localtime(series[i][0])))}</text>')
    parts.append(f'<text x="{CHART_W - CHART_RIGHT}" y="{base + 19}" text-anchor="end">now</text>')
    parts.append(f'<text x="{CHART_LEFT - 40}" y="{CHART_TOP - 14}">files per minute</text>')
    return parts


def _chart_bucket(index: int, entry: tuple[float, int, int], top: int, slot: float, plot_h: float) -> str:
    start, imports, confirms = entry
    base = CHART_TOP + plot_h
    x = CHART_LEFT + index * slot
    bar = max(1.0, (slot - 3) / 2)      # two bars side by side, a gap between minutes

    def rect(kind: str, offset: float, value: int) -> str:
        if not value:
            return ""
        height = max(1.5, plot_h * value / top)     # one file still shows as a visible sliver
        return (f'<rect class="{kind}" x="{x + 1 + offset:.1f}" y="{base - height:.1f}" '
                f'width="{bar:.1f}" height="{height:.1f}"/>')
    label = (f"{time.strftime('%H:%M', time.localtime(start))}: {imports} import{'s' if imports != 1 else ''}, "
             f"{confirms} confirmation{'s' if confirms != 1 else ''}")
    return (f'<g class="bucket"><title>{esc(label)}</title>'
            f'<rect class="hover" x="{x:.1f}" y="{CHART_TOP}" width="{slot:.1f}" height="{plot_h}"/>'
            f'{rect("imports", 0, imports)}{rect("confirms", bar, confirms)}</g>')


def _chart_legend() -> list[str]:
    x = CHART_W - CHART_RIGHT - 410
    return [f'<g class="legend" transform="translate({x},8)">',
            '<rect class="imports" x="0" y="2" width="12" height="12" rx="2"/>',
            '<text x="18" y="13">Imports sent (left bar)</text>',
            '<rect class="confirms" x="180" y="2" width="12" height="12" rx="2"/>',
            '<text x="198" y="13">Confirmed by the CDN (right bar)</text>',
            "</g>"]


def _chart_totals(series: list[tuple[float, int, int]]) -> str:
    imports = sum(n for _, n, _ in series)
    confirms = sum(c for _, _, c in series)
    if not imports and not confirms:
        return "No imports and no confirmations in the last hour."
    busiest = max(series, key=lambda entry: entry[1])
    peak = (f"; busiest minute {time.strftime('%H:%M', time.localtime(busiest[0]))} with "
            f"{human_count(busiest[1])} imports" if busiest[1] else "")
    return f"{human_count(imports)} imports, {human_count(confirms)} confirmations{peak}."


def _chart_section(status: Mapping[str, Any], now: float) -> str:
    series = chart_series(status.get("chart"), now)
    return (
        '<section aria-labelledby="chart-h"><h2 id="chart-h">Last hour'
        f'<span class="aside">{esc(_chart_totals(series))}</span></h2>\n'
        f'{render_chart_svg(status.get("chart"), now)}\n</section>\n'
    )


# -- recent imports and problems -------------------------------------------

def badge(state: Any) -> str:
    """A state as a coloured pill with an icon and the word itself."""
    word = str(state or "unknown")
    kind = word if word in BADGE_ICON else "other"
    icon = BADGE_ICON.get(word, "\u2022")
    return f'<span class="badge b-{esc(kind)}"><span aria-hidden="true">{icon}</span> {esc(word)}</span>'


def _file_cell(item: Mapping[str, Any]) -> str:
    # The path is what the person who dropped the file knows; the CDN name only when it differs
    # (a name_prefix), because that is what they will search for in the CDN's panel.
    path, name = item.get("path") or item.get("name") or "?", item.get("name")
    cdn = f'<span class="cdn-name">in the CDN as {esc(name)}</span>' if name and name != path else ""
    return f'{esc(path)}{cdn}'


def _recent_section(status: Mapping[str, Any], now: float) -> str:
    recent = _items(status.get("recent"))[:RECENT_SHOWN]
    head = ('<section aria-labelledby="recent-h"><h2 id="recent-h">Latest imports'
            f'<span class="aside">newest first, up to {RECENT_SHOWN}</span></h2>\n')
    if not recent:
        folder = esc(status.get("folder") or "the folder")
        return (head + f'<p class="empty">No imports yet. Files dropped into {folder} appear here '
                "a few seconds after they are completely written.</p></section>\n")
    rows = "".join(
        f'<tr><td class="when">{esc(local_time(item.get("time")))}</td>'
        f'<td class="num size">{esc(human_bytes(item.get("size")))}</td>'
        f'<td class="name">{_file_cell(item)}</td><td>{badge(item.get("state"))}</td></tr>\n'
        for item in recent)
    return (head + '<table><thead><tr><th scope="col">Time</th><th scope="col" class="num">Size</th>'
            '<th scope="col">File</th><th scope="col">State</th></tr></thead>\n'
            f'<tbody>\n{rows}</tbody></table></section>\n')


PROBLEM_ADVICE = {
    "rejected": "Fix what the CDN says, then run cdn_push.py with --retry-rejected to send it again.",
    "failed": ("The CDN could not fetch or verify the file; check that the origin serves it "
               "(URL, credentials, firewall). It is tried again at the next pass."),
    "conflict": ("The file changed after it was imported and no_replace is set: rename it to import it "
                 "as a new file, or drop no_replace for it."),
    "unreadable": "cdn-push cannot read the file: check the file's permissions and owner.",
}


SKIPPED_ADVICE = (
    ("utf-8", "Rename the file to a name in UTF-8 to import it."),
    ("same file as", "A link to one of cdn-push's own files: remove it; it is never imported."),
    ("sparse file", "Mostly holes, not video: check the file, or set scan.allow_sparse: true."),
    ("scan.max_size", "Larger than scan.max_size: raise it to import the file."),
    ("symlink leads outside", "A link out of the folder: copy the file in instead."),
)


def render_problems_advice(state: str, reason: str) -> str:
    """What to do about one problem, in plain text. The CDN's reason sharpens the advice where
    cdn-push recognises it (the common origin failures), else the state decides."""
    text = reason.lower()
    if state == "failed" and ("wrong file size" in text or "404" in text):
        return ("The CDN fetched something other than the file: check that origin.base_url serves the "
                "folder at the same paths, with the configured credentials.")
    if state == "failed" and ("sha" in text or "checksum" in text or "chksum" in text):
        return ("The CDN received different bytes than cdn-push hashed: check that nothing rewrites "
                "files on the origin; the file is sent again at the next pass.")
    if state == "rejected" and "already exists" in text and "no_replace" in text:
        return PROBLEM_ADVICE["conflict"]
    if state == "unreadable":       # skipped on purpose: the reason says why, and this what to do
        for words, advice in SKIPPED_ADVICE:
            if words in text:
                return advice
    return PROBLEM_ADVICE.get(state, "See the reason above, and the service's log for details.")


def _problem_item(problem: Mapping[str, Any], now: float) -> str:
    state, reason = str(problem.get("state") or "problem"), str(problem.get("reason") or "")
    advice = problem.get("advice") or render_problems_advice(state, reason)
    shown_reason = f'<p class="reason">{esc(reason)}</p>' if reason else ""
    return (
        f'<li><div class="problem-head">{badge(state)}'
        f'<span class="name">{esc(problem.get("path") or "?")}</span>'
        f'<span class="when">{_when(problem.get("time"), now)}</span></div>'
        f'{shown_reason}<p class="advice"><b>What to do:</b> {esc(advice)}</p></li>\n'
    )


def _problems_section(status: Mapping[str, Any], now: float) -> str:
    problems = _items(status.get("problems"))
    head = (f'<section id="problems" aria-labelledby="problems-h"><h2 id="problems-h">Problems'
            f'<span class="aside">{human_count(len(problems))}</span></h2>\n')
    if not problems:
        return head + '<p class="all-good">\u2713 No problems: nothing was rejected or failed.</p></section>\n'
    items = "".join(_problem_item(problem, now) for problem in problems[:PAGE_PROBLEMS_SHOWN])
    more = (f'<p class="empty">and {human_count(len(problems) - PAGE_PROBLEMS_SHOWN)} more: '
            "<code>cdn_push.py status --state rejected</code> lists them all.</p>"
            if len(problems) > PAGE_PROBLEMS_SHOWN else "")
    return head + f'<ol class="problems">\n{items}</ol>{more}</section>\n'


# ----------------------------------------------------------------------------
# Monitor
# ----------------------------------------------------------------------------

def status_document(config: Config, activity: Mapping[str, Any], counts: Mapping[str, int],
                    sizes: Mapping[str, int], problems: Sequence[Mapping[str, Any]], now: float) -> dict[str, Any]:
    """/status.json: what the monitor shows, from plain data; pure. No secret or signed link in it."""
    running = activity["pass"]["running"]
    doing = ("first pass" if activity["pass"]["number"] <= 1 else "full pass") if running else (
        "watching" if activity["mode"] == "watch" else "idle")
    chart = activity["chart"]
    return {
        "version": __version__, "generated_at": now, "mode": activity["mode"],
        "folder": str(config.folder), "cdn": config.api.url,
        "activity": {"doing": doing, "pass": activity["pass"], "cdn": activity["cdn"],
                     "last_pass_end": activity["last_pass_end"], "watching": activity.get("watching")},
        "counts": {**{state: counts.get(state, 0) for state in STATES}, "waiting": activity["queues"]["waiting"]},
        "bytes": {state: sizes.get(state, 0) for state in STATES},
        "queues": {k: activity["queues"][k] for k in ("hash", "submit", "confirm")},
        "rates": {"hashed_bytes_per_second": activity["hash_rate"],
                  "imports_per_minute": sum(chart["imports"][-5:]) / 5},
        "now": activity["now"], "chart": chart, "recent": activity["recent"],
        "problems": [{**problem, "advice": render_problems_advice(problem["state"], problem["reason"])} for problem in
                     [*problems, *activity["unreadable"]]],
    }


def metric_families(status: Mapping[str, Any], activity: Mapping[str, Any]) -> Iterator[Any]:
    """The Prometheus view of one status document (and the counters behind it)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

    files = GaugeMetricFamily("cdn_push_files", "Files per ledger state, plus waiting to settle", labels=["state"])
    for state, count in status["counts"].items():
        files.add_metric([state], count)
    sizes = GaugeMetricFamily("cdn_push_bytes", "Bytes per ledger state", labels=["state"])
    for state, size in status["bytes"].items():
        sizes.add_metric([state], size)
    requests_ = CounterMetricFamily("cdn_push_requests", "file/add requests by outcome", labels=["outcome"])
    for outcome in ("accepted", "exists", "rejected", "retried", "failed"):
        requests_.add_metric([outcome], activity["requests"].get(outcome, 0))
    callbacks = CounterMetricFamily("cdn_push_callbacks", "Callbacks taken, by status", labels=["status"])
    for status_ in ("success", "fail"):
        callbacks.add_metric([status_], activity["callbacks"].get(status_, 0))
    queues = GaugeMetricFamily("cdn_push_queue_files", "Files in each stage's queue", labels=["stage"])
    for stage, count in status["queues"].items():
        queues.add_metric([stage], count)
    yield from (files, sizes, requests_, callbacks, queues)
    yield CounterMetricFamily("cdn_push_hashed_bytes", "Bytes hashed", value=activity["hashed_bytes"])
    yield GaugeMetricFamily("cdn_push_cdn_up", "1 while the CDN answers and takes the credentials",
                            value=1 if activity["cdn"]["up"] else 0)
    if activity.get("watching") is not None:
        yield GaugeMetricFamily("cdn_push_watching", "1 while the service watches the folder for new files",
                                value=1 if activity["watching"] else 0)
    yield GaugeMetricFamily("cdn_push_pass_running", "1 while a full pass runs",
                            value=1 if activity["pass"]["running"] else 0)
    yield GaugeMetricFamily("cdn_push_last_pass_end_timestamp_seconds", "When the last full pass ended",
                            value=activity["last_pass_end"] or 0)
    yield InfoMetricFamily("cdn_push_build", "cdn-push version", value={"version": __version__})


def reraise_in_thread(request: Any, client_address: Any) -> None:
    """socketserver's handle_error prints a raw traceback; re-raised, the error reaches the thread
    boundary (ThreadErrors), which logs it once per kind through the redacting formatter."""
    exc = sys.exc_info()[1]
    if isinstance(exc, (OSError, ValueError)):       # hang-ups and bad requests: normal on a network
        log.debug("monitor: connection from %s ended: %s", client_address, printable(str(exc)))
        return
    raise exc if exc is not None else RuntimeError("handle_error outside an exception")


def host_allowed(header: str | None, allowed: Sequence[str]) -> bool:
    """Whether a request's Host names this monitor: an IP address, localhost, or a name in
    monitor.allowed_hosts. Any other name is a page of some web site whose DNS now points here
    (DNS rebinding), reading the status through the visitor's browser. Pure."""
    if header is None:
        return True                 # an HTTP/1.0 client; browsers always send Host
    host = header.strip().lower()
    if host.startswith("["):
        name = host[1:host.find("]")] if "]" in host else host
    else:
        name = host.rpartition(":")[0] if host.count(":") == 1 else host
    name = name.rstrip(".")
    if name == "localhost" or name.endswith(".localhost") or name in allowed:
        return True
    import ipaddress

    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


MONITOR_MAX_CONNECTIONS = 16
STATUS_MAX_AGE = 1.0        # seconds one status document serves every page, scrape and poll


class MonitorServer:
    """A read-only HTTP listener apart from the origin: `/` (the page), `/status.json`, `/metrics`.

    At most MONITOR_MAX_CONNECTIONS at once (the rest get a quick 503), each on its own thread;
    one status document, made at most once a second under `_lock`, serves them all."""

    def __init__(self, config: Config, activity: Activity, clock: Callable[[], float] = time.monotonic) -> None:
        from http.server import ThreadingHTTPServer

        self.config = config
        self.activity = activity
        self.clock = clock
        self._lock = threading.Lock()
        self._held: set[Any] = set()
        self._shared: tuple[float, dict[str, Any], dict[str, Any]] | None = None
        host, port = config.monitor.listen_host or "127.0.0.1", config.monitor.listen_port
        try:
            self.httpd = ThreadingHTTPServer((host, port), monitor_handler_class())
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port} (monitor.listen): {exc.strerror or exc}"
                              f"{listen_advice(port, exc)}; or monitor.listen: null turns the page off") from None
        self.httpd.daemon_threads = True
        self.httpd.handle_error = reraise_in_thread          # type: ignore[method-assign]
        self.httpd.monitor = self                            # type: ignore[attr-defined]
        self.httpd.verify_request = self._admit              # type: ignore[method-assign]
        self._shutdown_request = self.httpd.shutdown_request
        self.httpd.shutdown_request = self._release          # type: ignore[method-assign]
        self._thread: threading.Thread | None = None

    def _admit(self, request: Any, client_address: Any) -> bool:
        with self._lock:
            if len(self._held) < MONITOR_MAX_CONNECTIONS:
                self._held.add(request)
                return True
        request.setblocking(False)
        with contextlib.suppress(OSError):
            request.send(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\n"
                         b"Content-Length: 0\r\nConnection: close\r\n\r\n")
        return False

    def _release(self, request: Any) -> None:
        with self._lock:
            self._held.discard(request)
        self._shutdown_request(request)

    def shared(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(activity, status document), made anew at most once every STATUS_MAX_AGE seconds: thirty
        scrapers cost what one does."""
        with self._lock:
            shared = self._shared
        if shared is not None and self.clock() - shared[0] < STATUS_MAX_AGE:
            return shared[1], shared[2]
        activity = self.activity.snapshot()
        status = self.status(activity)
        with self._lock:
            self._shared = (self.clock(), activity, status)
        return activity, status

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.httpd.server_address[0]}:{self.port}/"

    def start(self) -> "MonitorServer":
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.2,), daemon=True, name="monitor")
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def status(self, activity: Mapping[str, Any] | None = None) -> dict[str, Any]:
        activity = activity if activity is not None else self.activity.snapshot()
        counts, sizes, problems = {}, {}, []
        if self.config.ledger.exists():
            with contextlib.suppress(LedgerError), Ledger.reader(self.config.ledger) as ledger:
                counts, sizes = ledger.counts_and_sizes()
                problems = ledger.problems(PROBLEMS_SHOWN)
        return status_document(self.config, activity, counts, sizes, problems, time.time())

    def metrics(self) -> bytes:
        from prometheus_client import CollectorRegistry, generate_latest

        activity, status = self.shared()

        class Collector:
            def collect(self) -> Iterator[Any]:
                return metric_families(status, activity)

        registry = CollectorRegistry(auto_describe=False)     # our own, never the global one
        registry.register(Collector())
        return generate_latest(registry)


PROBLEMS_SHOWN = 100


MONITOR_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
                   "Content-Security-Policy": ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                                               "frame-ancestors 'none'")}


class MonitorRequests(PlainHTTP):
    """One connection to the monitor, mixed into http.server's handler by monitor_handler_class;
    `self.server.monitor` is the MonitorServer."""

    timeout = 10

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        monitor: MonitorServer = self.server.monitor     # type: ignore[attr-defined]
        length = self.headers.get("Content-Length", "0").strip() or "0"
        if self.headers.get("Transfer-Encoding") is not None or length != "0":
            self.refuse(400, b"request bodies are not accepted here\n")
            return False
        if not host_allowed(self.headers.get("Host"), monitor.config.monitor.allowed_hosts):
            self.refuse(421, b"this page answers only to its address, localhost, or monitor.allowed_hosts\n")
            return False
        return True

    def refuse(self, status: int, text: bytes) -> None:
        self.close_connection = True
        self.answer(status, text, "text/plain; charset=utf-8", {"Connection": "close"})

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        log.debug("monitor: %s %s", self.address_string(), printable(format % args))

    def answer(self, status: int, body: bytes, kind: str, headers: Mapping[str, str] | None = None) -> None:
        self.send_body(status, body, kind, {**MONITOR_HEADERS, **(headers or {})})

    def do_GET(self) -> None:
        monitor: MonitorServer = self.server.monitor     # type: ignore[attr-defined]
        path = self.path.partition("?")[0]
        if path == "/metrics":
            self.answer(200, monitor.metrics(), "text/plain; version=0.0.4; charset=utf-8")
        elif path == "/status.json":
            self.answer(200, json.dumps(monitor.shared()[1], indent=1).encode(), "application/json")
        elif path == "/":
            self.answer(200, render_status_page(monitor.shared()[1]).encode(), "text/html; charset=utf-8")
        else:
            self.answer(404, b"not found\n", "text/plain; charset=utf-8")

    do_HEAD = do_GET

    def do_POST(self) -> None:
        self.close_connection = True
        self.answer(405, b"read-only: GET or HEAD\n", "text/plain; charset=utf-8",
                    {"Allow": "GET, HEAD", "Connection": "close"})

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_POST


@functools.cache
def monitor_handler_class() -> type:
    """MonitorRequests on http.server's handler, made on first use."""
    from http.server import BaseHTTPRequestHandler

    class MonitorHandler(MonitorRequests, BaseHTTPRequestHandler):
        pass

    return MonitorHandler


@contextlib.contextmanager
def monitoring(config: Config, activity: Activity, *, service: bool) -> Iterator[MonitorServer | None]:
    """The monitor for as long as the block runs: always for the service (unless turned off), for a
    one-shot run only when monitor.listen is set."""
    if config.monitor.listen_host is None or not (service or config.monitor.chosen):
        yield None
        return
    server = MonitorServer(config, activity).start()
    try:
        yield server
    finally:
        server.stop()


# ----------------------------------------------------------------------------
# One-shot runs
# ----------------------------------------------------------------------------

@contextlib.contextmanager
def serving(config: Config) -> Iterator[tuple[UrlSigner | None, CallbackInbox | None]]:
    """Run the built-in origin / callback receiver for as long as the block runs, if configured."""
    if not config.serves_http:
        yield None, None
        return
    secret, warnings = load_origin_secret(config.origin.secret_file or Path(str(config.ledger) + ".secret"),
                                          os.environ)
    for warning in warnings:
        log.warning("%s", warning)
    signer, inbox = UrlSigner(secret), CallbackInbox()
    with OriginServer(config, signer, inbox) as server:
        log.info("serving %s on port %d as %s", "files and callbacks" if config.origin.serve else "callbacks",
                 server.port, config.callback.public_url)
        yield signer, inbox


def submit_problems(config: Config) -> list[str]:
    """What a real run needs beyond a valid file, and lacks; pure. A dry run shows them as warnings."""
    problems = []
    if not config.api.login:
        problems.append("'api.login' is required to submit")
    if not config.api.password:
        problems.append(f"no API password: set 'api.password_file' (a file of mode 600 holding it), "
                        f"'api.password', or {ENV_API_PASSWORD}")
    if not config.origin.base_url and config.origin.serve is None:
        problems.append("set 'origin.base_url' (the URL where the CDN can download the folder's files) or "
                        "'origin.serve' (cdn-push serves them itself)")
    for key, url in (("api.url", config.api.url), ("origin.base_url", config.origin.base_url),
                     ("origin.serve.public_url", config.origin.serve.public_url if config.origin.serve else ""),
                     ("callback.public_url", config.callback.public_url)):
        host = (urlsplit(url).hostname or "") if url else ""
        if host and (host.endswith(".invalid") or any(host == d or host.endswith("." + d) for d in PLACEHOLDERS)):
            problems.append(f"'{key}' still names the placeholder host {host}: set the real address"
                            + (" at which the CDN reaches this machine" if "public_url" in key else ""))
    return problems


def check_can_submit(config: Config) -> None:
    problems = submit_problems(config)
    if problems:
        raise ConfigError(f"{config.source}: {problems[0]}")
    if not config.api.verify_tls:
        log.warning("TLS certificate verification is off (api.verify_tls: false)")


PLACEHOLDERS = ("example.com", "example.org", "example.net")   # RFC 2606: never a real origin or API


def run_one_shot(config: Config, *, stop: threading.Event, show_progress: bool, dry_run: bool = False,
                 retry_rejected: bool = False, out: Callable[[str], None] = print) -> RunSummary:
    """One locked pass over the folder; the caller turns the summary into an exit code."""
    check_folder(config)        # before the ledger and its lock are made: a typo leaves nothing behind
    if dry_run:
        for problem in submit_problems(config):
            log.warning("a real run would stop here: %s: %s", config.source, problem)
        with Ledger.copy_of(config.ledger) if config.ledger.exists() else Ledger.open(":memory:") as ledger:
            pipeline = Pipeline(config, ledger, None, stop=stop, show_progress=show_progress,
                                dry_run=True, out=out)
            return pipeline.run_once()
    check_can_submit(config)
    activity = Activity()
    with LedgerLock(config.ledger), Ledger.open(config.ledger) as ledger, \
            serving(config) as (signer, inbox), monitoring(config, activity, service=False) as monitor:
        if monitor is not None:
            log.info("status page and metrics at %s", monitor.url)
        client = CdnClient(config.api, pool_size=config.submit_workers, stop=stop)
        try:
            pipeline = Pipeline(config, ledger, client, stop=stop, show_progress=show_progress,
                                retry_rejected=retry_rejected, out=out, signer=signer, inbox=inbox,
                                activity=activity)
            return pipeline.run_once()
        finally:
            client.close()


# ----------------------------------------------------------------------------
# Watch service
# ----------------------------------------------------------------------------

def run_watch(config: Config, *, stop: threading.Event, reload: threading.Event,
              load: Callable[[], Config]) -> int:
    check_can_submit(config)
    check_folder(config)        # before anything starts: a typo is said at once, alone
    with LedgerLock(config.ledger), Ledger.open(config.ledger) as ledger:
        return WatchService(config, ledger, stop=stop, reload=reload, load=load,
                            notifier=SystemdNotifier()).run()


RELOAD_WAIT = 60.0       # seconds `cdn_push.py reload` waits for the service to answer


class ReloadRecord:
    """'<ledger>.reload': the service writes each reload's outcome there for `cdn_push.py reload`."""

    def __init__(self, ledger: Path) -> None:
        self.path = Path(str(ledger) + ".reload")

    def read(self, owner: int | None = None) -> dict[str, Any]:
        """The last outcome; `owner`: the uid the service runs as, whose record alone is believed."""
        try:
            fd = os.open(self.path, os.O_RDONLY | STATE_OPEN)
            with os.fdopen(fd, "rb") as handle:
                st = os.fstat(handle.fileno())
                if not stat.S_ISREG(st.st_mode) or st.st_uid != (os.geteuid() if owner is None else owner):
                    return {"count": 0}
                data = json.loads(handle.read(65536).decode("utf-8"))
        except (OSError, ValueError):
            return {"count": 0}
        return data if isinstance(data, dict) and isinstance(data.get("count"), int) else {"count": 0}

    def write(self, ok: bool, message: str) -> None:
        """Written to a fresh temporary name (O_EXCL: nothing planted is reused), then renamed over."""
        record = {"count": self.read()["count"] + 1, "pid": os.getpid(), "ok": ok, "message": message}
        temporary = self.path.with_name(f"{self.path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | STATE_OPEN, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(record, handle)
            os.replace(temporary, self.path)
        except OSError as exc:
            log.warning("cannot record the reload's outcome in %s: %s", self.path, exc.strerror or exc)
            with contextlib.suppress(OSError):
                os.unlink(temporary)


def config_changes(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The settings (dotted keys) that differ between two configurations; pure. Names only: a value
    may be a secret."""
    changed = []
    for f in dataclasses.fields(old):
        before, after = getattr(old, f.name), getattr(new, f.name)
        if f.name in ("source", "private_files") or before == after:
            continue
        if dataclasses.is_dataclass(before) and dataclasses.is_dataclass(after):
            changed += config_changes(before, after, f"{prefix}{f.name}.")
        else:
            changed.append(prefix + f.name)
    return changed


class SystemdNotifier:
    """sd_notify over the UNIX datagram socket systemd names in NOTIFY_SOCKET; a no-op elsewhere."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        for_us = not pid or pid == str(os.getpid())
        # Ping at half the interval systemd expects, as sd_watchdog_enabled(3) advises.
        self.watchdog_interval = int(usec) / 2e6 if usec.isdigit() and int(usec) and for_us else 0.0

    def send(self, *fields: str) -> None:
        if not self.address:
            return
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto("\n".join(fields).encode(), self.address)

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def reloading(self) -> None:
        # MONOTONIC_USEC lets systemd >= 253 tell this reload from an earlier one.
        self.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")


@dataclass
class Candidate:
    """A path that had events, waiting until it stops changing."""
    last_event: float
    closed: bool = False
    seen: tuple[int, int, int] | None = None
    steady_since: float = 0.0           # when size, mtime and inode were last seen to change


class EventCollector:
    """watchdog's event handler: runs in its thread and only queues events for the service loop."""

    def __init__(self, wake: threading.Event | None = None) -> None:
        self.events: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.wake = wake

    def dispatch(self, event: Any) -> None:
        self.on_any_event(event)

    def on_any_event(self, event: Any) -> None:
        self.events.put(event)
        if self.wake is not None:
            self.wake.set()


class WatchdogTroubleHandler(logging.Handler):
    """watchdog reports a kernel queue overflow only by logging it: turn that into a rescan."""

    def __init__(self, flag: threading.Event) -> None:
        super().__init__(logging.WARNING)
        self.flag = flag

    def emit(self, record: logging.LogRecord) -> None:
        self.flag.set()


class Settler:
    """Files that had events, each waiting until it stops changing (debounced per path).

    Owned by the watch loop's thread: the watchdog thread only queues events, which the loop
    hands to `note`. `config` is replaced by a reload.
    """

    def __init__(self, config: Config, tuning: Tuning, clock: Callable[[], float],
                 wall: Callable[[], float], open_files: OpenFiles | None = None) -> None:
        self.config = config
        self.tuning = tuning
        self.clock, self.wall = clock, wall
        self.open_files = open_files or OpenFiles(max(1.0, tuning.close_grace))
        self.local = True           # watched through inotify: a writer would be on this machine
        self.candidates: dict[str, Candidate] = {}

    def __len__(self) -> int:
        return len(self.candidates)

    def __bool__(self) -> bool:
        return bool(self.candidates)

    def clear(self) -> None:
        self.candidates.clear()

    def still_writing(self, relpath: str) -> None:
        """A file too young for a pass: watch it until it settles, events or not."""
        self.candidates.setdefault(relpath, Candidate(last_event=0.0))

    def _relpath(self, path: str | bytes) -> str | None:
        path = os.fsdecode(path)
        rel = os.path.relpath(path, self.config.folder)
        if rel == "." or rel.startswith("../") or rel == "..":
            return None
        rel = rel.replace(os.sep, "/")
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:
            return None
        return rel

    def note(self, event: Any) -> None:
        """One watchdog event."""
        now = self.clock()
        kind = event.event_type
        src = self._relpath(event.src_path)
        dest = self._relpath(getattr(event, "dest_path", "") or "") if kind == "moved" else None
        if event.is_directory:
            if kind in ("created", "moved") and (dest or src):
                self._enumerate(dest if kind == "moved" else src)
            if kind in ("moved", "deleted") and src:
                for path in [p for p in self.candidates if p.startswith(src + "/")]:
                    del self.candidates[path]
            return
        if kind in ("deleted", "moved") and src:
            self.candidates.pop(src, None)
        target = dest if kind == "moved" else src
        if kind == "opened" and target in self.candidates:
            self.candidates[target].closed = False      # opened again: wait for its close
        if target is None or kind in ("deleted", "opened", "closed_no_write"):
            return
        if skip_reason(target, self.config.scan) is not None or any(
                skip_reason(part, self.config.scan, is_dir=True) for part in self._parents(target)):
            return
        candidate = self.candidates.setdefault(target, Candidate(last_event=now))
        candidate.last_event = now
        # A close after writing, or a rename into the final name, says the writer is done; a chmod
        # or touch after that (a "modified" event) does not take it back.
        candidate.closed = candidate.closed or kind in ("closed", "moved")

    @staticmethod
    def _parents(relpath: str) -> Iterator[str]:
        parts = relpath.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            yield "/".join(parts[:i])

    def _enumerate(self, reldir: str) -> None:
        """A folder appeared (mkdir + copy, or mv of a whole tree): its files may have no events."""
        if any(skip_reason(part, self.config.scan, is_dir=True) for part in [*self._parents(reldir), reldir]):
            return
        for _, entries in walk_folder(self.config.folder, self.config.scan, start=reldir,
                                      private=private_identities(self.config),
                                      own_names=dict(self.config.private_files)):
            for entry in entries:
                # last_event 0: no event seen, so the file's own mtime decides when it is settled
                self.candidates.setdefault(entry.relpath, Candidate(last_event=0.0))

    def settled_entries(self) -> list[FileEntry]:
        """Candidates no process holds open for writing whose size and mtime held still long
        enough: over the close grace once a writer is known done (a close or rename event, or no
        writer at all where every writer can be seen, as after a `mv`), else settle_seconds."""
        now, wall = self.clock(), self.wall()
        settle, grace = self.config.scan.settle_seconds, min(self.tuning.close_grace, self.config.scan.settle_seconds)
        ready: list[FileEntry] = []
        looked_now = False
        for relpath, candidate in list(self.candidates.items()):
            path = os.path.join(self.config.folder, relpath)
            found = current_stat(path)
            if found is None or (not self.config.scan.follow_symlinks and os.path.islink(path)):
                del self.candidates[relpath]
                continue
            if found != candidate.seen:          # still changing: watch it one more turn
                candidate.seen, candidate.steady_since = found, now
                continue
            if found[2] in self.open_files.writers(self.config.folder):
                continue                         # a writer still holds it, however long it pauses
            done = candidate.closed or (self.local and self.open_files.complete)
            if (done and now - candidate.steady_since >= grace and now - candidate.last_event >= grace) or (
                    now - candidate.last_event >= settle and wall - found[1] / 1e9 >= settle):
                # The shared look may be older than this file's writer: taking it needs a look from now.
                writers, looked_now = self.open_files.writers(self.config.folder, refresh=not looked_now), True
                if found[2] in writers:
                    continue
                del self.candidates[relpath]
                ready.append(FileEntry(relpath, path, *found))
        return ready



def watch_limit_message(exc: OSError) -> str:
    if exc.errno == errno.EMFILE:
        return ("inotify instance limit reached; raise it with "
                "'sysctl fs.inotify.max_user_instances=1024' (persist it in /etc/sysctl.d/); "
                "falling back to polling")
    return ("inotify watch limit reached for this folder tree; raise it with "
            "'sysctl fs.inotify.max_user_watches=524288' (persist it in /etc/sysctl.d/); "
            "falling back to polling")


# How to read each "restart" key of ON_RELOAD from a Config, to see whether a reload changes it.
RESTART_ONLY: dict[str, Callable[[Config], Any]] = {
    "ledger": lambda c: c.ledger,
    "workers.hash": lambda c: c.hash_workers,
    "workers.submit": lambda c: c.submit_workers,
    "origin.serve": lambda c: c.origin.serve,
    "origin.secret_file": lambda c: c.origin.secret_file,
    "callback.public_url": lambda c: c.callback.public_url,
    "callback.listen": lambda c: (c.callback.listen_host, c.callback.listen_port),
    "monitor": lambda c: c.monitor,
}


def wait_until_writable(ledger: Ledger, stop: threading.Event, ping: Callable[[], None]) -> bool:
    """Try the ledger with back-off (1 s, doubling to a minute) until it takes a write; False on a stop."""
    wait = 1.0
    while not stop.is_set() and not ledger.try_write():
        ping()
        stop.wait(wait)
        wait = min(wait * 2, 60.0)
    return not stop.is_set()


class WatchService:
    """Watch the folder and import each file once it stops changing, with full passes alongside.

    `iteration()` is one turn of the loop; `run()` repeats it until `stop` is set. Event
    intake, settling, the periodic rescan and confirmations all feed one Pipeline, whose
    `step()` each turn runs; a rescan is another producer for it, never a pause.
    """

    def __init__(self, config: Config, ledger: Ledger, *, stop: threading.Event,
                 reload: threading.Event | None = None,
                 load: Callable[[], Config] | None = None,
                 notifier: SystemdNotifier | None = None,
                 observer_factory: Callable[[bool, float], Any] | None = None,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 tuning: Tuning = Tuning(), open_files: OpenFiles | None = None,
                 client_factory: Callable[[Config], SubmitClient] | None = None) -> None:
        self.config = config
        self.ledger = ledger
        self.stop = stop
        self.reload = reload or threading.Event()
        self.load = load
        self.notifier = notifier or SystemdNotifier({})
        self.observer_factory = observer_factory or self._make_observer
        self.clock, self.wall = clock, wall
        self.tuning = tuning
        self.client_factory = client_factory or (
            lambda c: CdnClient(c.api, pool_size=c.submit_workers, stop=stop))
        self.activity = Activity(wall, mode="watch")
        self.monitor: MonitorServer | None = None
        self.settler = Settler(config, tuning, clock, wall, open_files)
        self.pipeline = self._make_pipeline(config)
        self.served: tuple[UrlSigner | None, CallbackInbox | None] = (None, None)
        self.collector = EventCollector(self.pipeline.wake)
        self.observer: Any = None
        self.polling = config.scan.poll
        self.rescan_now = threading.Event()
        self.rescan_after_pass = False
        self.passes = self.passes_done = self.turns = 0
        self.idle_turns = 0      # turns in a row that ended with nothing settling, hashed or sent (for tests)
        self.watched: tuple[int, int] | None = None     # the folder's (device, inode) when watching began
        self.watch_retry, self.next_watch_try = 1.0, 0.0
        self.next_rescan = math.inf
        self.last_ping = self.last_status = -math.inf
        self._trouble = WatchdogTroubleHandler(self.rescan_now)
        self.reloads = ReloadRecord(config.ledger)

    # -- life cycle ------------------------------------------------------------

    def _make_pipeline(self, config: Config) -> Pipeline:
        pipeline = Pipeline(config, self.ledger, self.client_factory(config), stop=self.stop, clock=self.wall,
                            monotonic=self.clock, tuning=self.tuning, on_waiting=self.settler.still_writing,
                            cdn_retry_pause=self.tuning.cdn_retry_pause, activity=self.activity)
        pipeline.on_pass_done = self._pass_done
        return pipeline

    def run(self) -> int:
        with serving(self.config) as self.served, \
                monitoring(self.config, self.activity, service=True) as self.monitor:
            self.pipeline.serve_with(*self.served)
            return self._run()

    def _run(self) -> int:
        logging.getLogger("watchdog").addHandler(self._trouble)
        try:
            self.start_watching()      # before the pass, so nothing written meanwhile is missed
            self.start_pass()
            self.notifier.ready(self.status_line())
            log.info("watching %s (%s); the first pass runs alongside%s", self.config.folder,
                     "polling every %gs" % self.config.scan.poll_interval if self.polling else "inotify",
                     f"; status page and metrics at {self.monitor.url}" if self.monitor else "")
            while not self.stop.is_set():
                try:
                    self.iteration()
                except LedgerError as exc:
                    self.ledger_failed(exc)
        finally:
            self.notifier.stopping()
            log.info("stopping: finishing requests in flight")
            self.stop_watching()
            self.pipeline.halt()
            logging.getLogger("watchdog").removeHandler(self._trouble)
        return EXIT_OK

    def ledger_failed(self, exc: LedgerError) -> None:
        """The ledger could not be written (most often a full disk). What the pipeline held in memory
        is let go and nothing is sent; the ledger is tried again with back-off (the watchdog still
        pinged); then a fresh pipeline and a full pass take up from where the ledger stands."""
        log.error("%s; the service goes on, sending nothing until the ledger can be written again", exc)
        self.activity.cdn_down("the ledger cannot be written: nothing is sent", None)
        with contextlib.suppress(Exception):        # its final commit fails too: that is known
            self.pipeline.halt()
        client = self.pipeline.submitter.client
        if client is not None:
            client.close()          # its kept connections go with the pipeline, not with the garbage collector
        if not wait_until_writable(self.ledger, self.stop, self.ping_if_due):
            return
        log.info("the ledger can be written again: a full pass takes up from where it stands")
        self.pipeline = self._make_pipeline(self.config)
        self.pipeline.serve_with(*self.served)
        if self.served[1] is not None:
            self.served[1].reopen()         # halting closed it: callbacks would be answered 503 for good
        self.collector.wake = self.pipeline.wake
        self.start_pass()

    @staticmethod
    def _make_observer(polling: bool, interval: float) -> Any:
        from watchdog.observers import Observer
        from watchdog.observers.polling import PollingObserver

        return PollingObserver(timeout=interval) if polling else Observer()

    def start_watching(self) -> None:
        folder = str(self.config.folder)
        check_folder(self.config)
        found = os.stat(folder)
        self.watched = (found.st_dev, found.st_ino)
        try:
            observer = self.observer_factory(self.polling, self.config.scan.poll_interval)
            observer.schedule(self.collector, folder, recursive=True)
            observer.start()
        except OSError as exc:
            if self.polling or exc.errno not in (errno.ENOSPC, errno.EMFILE):
                raise
            log.error("%s", watch_limit_message(exc))
            self.polling = True
            observer = self.observer_factory(True, self.config.scan.poll_interval)
            observer.schedule(self.collector, folder, recursive=True)
            observer.start()
        self.observer = observer
        self.settler.local = not self.polling

    def stop_watching(self) -> None:
        if self.observer is not None:
            self.observer.stop()
            self.observer.join(timeout=5)
            self.observer = None

    def start_pass(self) -> None:
        """A full pass over the folder, alongside everything else; after the running one if any."""
        try:
            started = self.pipeline.start_scan()
        except ConfigError as exc:           # the folder gone for a moment (a mount): try again later
            log.error("%s; trying again in %gs", exc, self.tuning.cdn_retry_pause)
            self.next_rescan = self.clock() + self.tuning.cdn_retry_pause
            return
        if started:
            self.passes += 1
        else:
            self.rescan_after_pass = True
        self.next_rescan = math.inf          # scheduled when this pass is done

    def _pass_done(self, before: RunSummary) -> None:
        self.passes_done += 1
        seen = self.pipeline.summary.since(before)
        log.info("pass done in %.1fs: %d files hashed, %d new, %d changed, %d unchanged, %d waiting, %d unreadable; "
                 "their imports go on as they are sent", time.monotonic() - before.started, seen.hashed_files,
                 seen.new, seen.changed, seen.unchanged, seen.waiting, seen.unreadable)
        interval = self.config.scan.rescan_interval
        self.next_rescan = self.clock() + interval * random.uniform(0.9, 1.1)
        if self.rescan_after_pass:
            self.rescan_after_pass = False
            self.next_rescan = self.clock()

    # -- one turn of the loop -------------------------------------------------------

    def iteration(self, tick: float | None = None) -> None:
        """Take events, hand settled files to the pipeline, start a rescan when due, step, ping."""
        self.turns += 1
        if self.reload.is_set():
            self.reload.clear()
            self.reload_config()
        self.drain_events()
        if not self.stop.is_set():
            self.keep_watching()
        if self.rescan_now.is_set():
            self.rescan_now.clear()
            log.warning("rescanning the whole folder: the watcher may have missed events")
            self.start_pass()
        elif self.clock() >= self.next_rescan:
            self.start_pass()
        ready = self.settler.settled_entries()
        if ready:
            self.pipeline.add_fresh(ready)
        self.activity.set_waiting(len(self.settler))
        self.pipeline.step(timeout=self.tuning.loop_tick if tick is None else tick)
        self.idle_turns = 0 if self.settler or self.pipeline.busy_here() else self.idle_turns + 1
        if isinstance(self.pipeline.summary.fatal, (CdnAuthError, CdnEndpointError)):
            raise self.pipeline.summary.fatal        # wrong credentials or addresses stop the service
        self.ping_if_due()

    def watcher_trouble(self) -> str:
        """Why the folder is not watched as it should be ("" when it is): watchdog stops an emitter,
        not the observer, when the folder goes; a folder moved away and made anew is another inode."""
        if self.observer is None:
            return "the folder is not watched"
        if not self.observer.is_alive() or not all(e.is_alive() for e in getattr(self.observer, "emitters", ())):
            return "the folder watcher stopped"
        try:
            found = os.stat(self.config.folder)
        except OSError:
            return "the folder is gone"
        return "" if (found.st_dev, found.st_ino) == self.watched else "the folder was replaced (moved, or a share re-mounted)"

    def keep_watching(self) -> None:
        """Lost watching: say so once, then try again with back-off; when back, look at everything."""
        if self.observer is not None:
            trouble = self.watcher_trouble()
            if not trouble:
                return
            log.error("%s: %s is not watched; watching it again as soon as it is back", trouble, self.config.folder)
            self.stop_watching()
            self.activity.set_watching(False)
            self.watch_retry, self.next_watch_try = 1.0, self.clock()
        if self.clock() < self.next_watch_try:
            return
        try:
            self.start_watching()
        except (ConfigError, OSError):
            self.next_watch_try = self.clock() + self.watch_retry
            self.watch_retry = min(60.0, self.watch_retry * 2)
            return
        log.warning("watching %s again; looking at every file it holds", self.config.folder)
        self.activity.set_watching(True)
        self.rescan_now.set()

    def drain_events(self) -> None:
        """Fold queued events into the settler's candidates."""
        while True:
            try:
                event = self.collector.events.get_nowait()
            except queue.Empty:
                return
            self.settler.note(event)

    def ping_if_due(self) -> None:
        """Tell systemd's watchdog we are alive (from the loop only), and what we are doing."""
        now = self.clock()
        interval = self.notifier.watchdog_interval
        if interval and now - self.last_ping >= interval:
            self.notifier.watchdog()
            self.last_ping = now
        if now - self.last_status >= self.tuning.status_every:
            self.notifier.status(self.status_line())
            self.last_status = now

    def status_line(self) -> str:
        summary = self.pipeline.summary
        doing = (f"{'first' if self.passes <= 1 else 'full'} pass: {summary.hashed_files} files hashed "
                 f"({summary.bytes_hashed / 1e9:.1f} GB)" if self.pipeline.scanning else "idle")
        paused = " | CDN unreachable, trying again soon" if self.pipeline.paused else ""
        return (f"watching {self.config.folder} | {doing} | {summary.submitted} submitted, "
                f"{summary.confirmed} confirmed, {len(self.settler)} settling{paused}")

    # -- reload (SIGHUP, or `cdn_push.py reload`) ------------------------------------

    def reload_config(self) -> None:
        self.notifier.reloading()
        try:
            ok, message = self._reload()
        finally:
            self.notifier.ready(self.status_line())
        (log.info if ok else log.error)("%s", message)
        self.reloads.write(ok, message)

    def _reload(self) -> tuple[bool, str]:
        if self.load is None:
            return False, "configuration not reloaded: this service was started without a file"
        try:
            new = self.load()
        except CdnPushError as exc:
            return False, f"configuration not reloaded, keeping the running one: {exc}"
        old = self.config
        fixed = {key: (read(new), read(old)) for key, read in RESTART_ONLY.items()}
        fixed["folder (served by the built-in origin)"] = (new.folder if new.origin.serve else None,
                                                           old.folder if new.origin.serve else None)
        for key, (after, before) in fixed.items():
            if after != before:
                return False, (f"configuration not reloaded, keeping the running one: '{key}' cannot change "
                               "while running; restart the service instead (systemctl restart cdn-push)")
        try:
            check_folder(new)
            client = self.client_factory(new)
        except CdnPushError as exc:
            return False, f"configuration not reloaded, keeping the running one: {exc}"
        changed = config_changes(old, new)
        restart = (new.folder, new.scan.poll, new.scan.poll_interval) != (
            self.config.folder, self.config.scan.poll, self.config.scan.poll_interval)
        self.config = self.settler.config = new
        self.pipeline.reconfigure(new, client)
        if restart:
            self.stop_watching()
            self.settler.clear()
            self.polling = new.scan.poll
            self.start_watching()
        if changed:
            self.start_pass()     # rules, names or the folder may now mean other files
        return True, (f"configuration reloaded from {new.source}: "
                      f"{', '.join(changed) + ' changed' if changed else 'nothing changed'}")


# ----------------------------------------------------------------------------
# Status, reload and demo
# ----------------------------------------------------------------------------

def lock_is_held(lock: Path) -> bool:
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def lock_holder(lock: Path) -> tuple[int | None, int]:
    """(the pid written in the lock file if a process holds the lock, else None; the file's owner)."""
    try:
        with os.fdopen(os.open(lock, os.O_RDONLY | STATE_OPEN), "rb") as handle:
            owner = os.fstat(handle.fileno()).st_uid
            text = handle.read(32).decode("ascii", "replace").strip()
    except OSError:
        return None, -1
    holder = int(text) if text.isascii() and text.isdigit() and len(text) <= 9 else None
    if holder is not None and not lock_is_held(lock):
        holder = None       # a pid left behind by a service that has ended: never signal it
    return holder, owner


def service_doubt(pid: int, lock: Path, owner: int, proc: str = "/proc") -> str:
    """Why `pid` may not be the cdn-push service holding `lock` ('' if it is): anyone who can write
    the lock file could name any process, and `reload` run as root would signal it. A lock file of
    our own, in a folder no one else can plant files in, names a process ours: believed as is (the
    service's own sandbox may hide its /proc entry from its ExecReload)."""
    if owner == os.geteuid():
        try:
            check_state_folder(lock.parent, "ledger")
            return ""
        except LedgerError as exc:
            return str(exc)
    try:
        status = Path(f"{proc}/{pid}/status").read_text(encoding="ascii", errors="replace")
        command = Path(f"{proc}/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return "no such process"
    uids = re.search(r"^Uid:\s+(\d+)\s+(\d+)", status, re.M)
    if uids is None or int(uids.group(2)) != owner:
        return "it does not run as the owner of the lock file"
    if os.geteuid() not in (0, owner):
        return "it belongs to another user: run this as the service's user (sudo -u ...)"
    if "cdn_push" not in command and "cdn-push" not in command:
        return "it is not cdn-push"
    want = os.stat(lock)
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"{proc}/{pid}/fd"):
            with contextlib.suppress(OSError):
                found = os.stat(f"{proc}/{pid}/fd/{fd}")
                if (found.st_dev, found.st_ino) == (want.st_dev, want.st_ino):
                    return ""
    return "it does not hold the lock file open"


def request_reload(config: Config, pid: int | None, *, out: Callable[[str], None] = print,
                   wait: float = RELOAD_WAIT) -> int:
    """`cdn_push.py reload`: SIGHUP to the running service, then wait for what it made of it.

    The configuration was already loaded (and found valid) by `main`, so a broken file fails here,
    before the service is disturbed; the service may still refuse a change (the ledger, listeners).
    """
    lock = Path(str(config.ledger) + ".lock")
    holder, owner = lock_holder(lock)
    if pid is not None and holder != pid:
        raise NoServiceError(f"process {pid} does not hold the lock of ledger {config.ledger} ("
                           f"{'process ' + str(holder) + ' does' if holder else 'nothing running does'}); "
                           "if you changed 'ledger', restart the service instead")
    if holder is None:
        raise NoServiceError(f"no running cdn-push uses ledger {config.ledger}; if you changed 'ledger', "
                           "restart the service instead")
    pid = holder
    refused = service_doubt(pid, lock, owner)
    if refused:
        raise CdnPushError(f"process {pid} named by {lock} was not signalled: {refused}")
    record = ReloadRecord(config.ledger)
    before = record.read(owner)["count"]
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise NoServiceError(f"no process {pid}: is the watch service running?") from None
    except PermissionError:
        raise CdnPushError(f"not allowed to signal process {pid}: run this as the service's user "
                           "(sudo -u cdn-push ...) or use 'systemctl reload cdn-push'") from None
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        answer = record.read(owner)
        if answer["count"] > before:
            out(printable(str(answer.get("message", ""))))
            return EXIT_OK if answer.get("ok") else EXIT_INCOMPLETE
        time.sleep(0.05)
    raise CdnPushError(f"process {pid} did not report a reload within {wait:g}s; see its log")


def show_status(config: Config, *, as_json: bool, state: str | None,
                out: Callable[[str], None] = print) -> int:
    if not config.ledger.exists():
        if as_json:
            out(json.dumps({"ledger": str(config.ledger), "counts": dict.fromkeys(STATES, 0), "files": []}))
        else:
            out(f"no ledger yet at {config.ledger}: nothing has been pushed")
        return EXIT_OK
    with Ledger.reader(config.ledger) as ledger:     # read-only: root may look at the service's ledger
        counts = ledger.counts()
        conflicts = ledger.count_conflicts()
        if as_json:
            files = [{**row.as_json(), "conflict": row.state in ACCEPTED_STATES and row.last_error is not None}
                     for row in ledger.all_rows(state)]
            out(json.dumps({"ledger": str(config.ledger), "counts": {**counts, CONFLICT: conflicts},
                            "files": files}, indent=2))
            return EXIT_OK
        total = sum(counts.values())
        waiting_note = (" (queued by the CDN; waiting for its callback)" if config.callback.enabled else
                        " (queued by the CDN; cdn-push asks it through file/list)" if config.confirm.poll else
                        " (queued by the CDN; not followed: confirm.poll is off)")
        out(f"{plural(total, 'file')} in {config.ledger}: " + ", ".join(
            f"{n} {s}{waiting_note if s == STATE_SUBMITTED and n else ''}" for s, n in counts.items())
            + (f"; {conflicts} of them in conflict (changed, and no_replace keeps the CDN's older copy: "
               "status --state conflict)" if conflicts else ""))
        for number, row in enumerate(ledger.all_rows(state)):
            if not number:
                out(f"{'state':<9} {'bytes':>12} {'tries':>5} {'sha-256':<64} name in the CDN  <- path in the folder")
            error = f"  ({printable(row.last_error)})" if row.last_error else ""
            shown = CONFLICT if row.state in ACCEPTED_STATES and row.last_error else row.state
            out(f"{shown:<9} {row.size:>12} {row.attempts:>5} {row.sha256 or '-':<64} {printable(row.name)}"
                f"{'  <- ' + printable(row.path) if row.name != row.path else ''}{error}")
    return EXIT_OK


def rows_matching(ledger: Ledger, patterns: Sequence[str]) -> tuple[list[LedgerRow], list[str]]:
    """Rows whose path or CDN name is one of `patterns`, or matches it as a glob (the rules' globs);
    and the patterns that matched nothing."""
    found: dict[str, LedgerRow] = {}
    matched: set[str] = set()
    for row in ledger.all_rows():
        for pattern in patterns:
            if pattern in (row.path, row.name) or glob_matches(pattern, row.path):
                found[row.path] = row
                matched.add(pattern)
    return sorted(found.values()), [p for p in patterns if p not in matched]


def as_resend(row: LedgerRow) -> LedgerRow:
    """A row to be submitted again as if new: what the CDN accepted before is no longer vouched for."""
    return row._replace(state=STATE_PENDING, attempts=0, last_error=None, retry_at=0.0,
                        accepted_name=None, accepted_size=None, accepted_sha256=None)


def change_rows(config: Config, patterns: Sequence[str], *, forget: bool,
                out: Callable[[str], None] = print) -> int:
    """`resend` (pending again, whatever the ledger said) or `forget` (rows dropped) for the rows
    the patterns name; a pattern that names nothing is refused before anything changes."""
    if not config.ledger.exists():
        raise ConfigError(f"no ledger yet at {config.ledger}: nothing has been pushed")
    with Ledger.open(config.ledger) as ledger:
        rows, unmatched = rows_matching(ledger, patterns)
        if unmatched:
            raise ConfigError(f"nothing in the ledger matches {printable(unmatched[0])!r} (a path relative to "
                              "'folder', a CDN name, or a glob such as 'series/**'); nothing was changed")
        missing = [row.path for row in rows if not forget and not os.path.lexists(config.folder / row.path)]
        if missing:
            raise ConfigError(f"{printable(missing[0])} is not in the folder, so there is nothing to send"
                              f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}; nothing was changed")
        for row in rows:
            if forget:
                ledger.forget(row.path)
            else:
                ledger.put(as_resend(row))
        ledger.commit()
    for row in rows:
        out(f"{'forgotten' if forget else 'to resend'}: {printable(row.path)}")
    if forget:
        out(f"{files(len(rows))} forgotten: the ledger no longer knows them; a file still in the folder is "
            "hashed and submitted as new by the next run")
    else:
        out(f"{files(len(rows))} marked to be submitted again by the next run (a running service takes "
            "them within a few seconds)")
    return EXIT_OK


class Difference(NamedTuple):
    path: str
    name: str
    problem: str
    detail: str = ""


def local_difference(row: LedgerRow | None, entry: FileEntry | None) -> Difference | None:
    """What the folder and the ledger disagree on for one path; pure."""
    if row is None:
        assert entry is not None
        return Difference(entry.relpath, "", "not imported yet", "new in the folder")
    if entry is None:
        return Difference(row.path, row.name, "deleted locally", "since the last run")
    if row.state not in ACCEPTED_STATES:
        return Difference(row.path, row.name, f"not imported: {row.state}", printable(row.last_error or ""))
    if (row.size, row.mtime_ns, row.inode) != (entry.size, entry.mtime_ns, entry.inode):
        return Difference(row.path, row.name, "changed locally since import",
                          f"size {row.size} -> {entry.size}" if row.size != entry.size else "modified")
    return None


def cdn_difference(row: LedgerRow, listing: Listing, confirm: ConfirmConfig) -> Difference | None:
    """What the ledger and the CDN disagree on for one imported file; pure."""
    name = row.accepted_name or row.name
    if not listing.found:
        return Difference(row.path, name, "missing at the CDN", "file/list does not list it")
    if listing.status in confirm.failed_states:
        return Difference(row.path, name, "failed at the CDN", f"file/list says {listing.status!r}")
    if listing.size is not None and listing.size != (row.accepted_size or row.size):
        return Difference(row.path, name, "size differs at the CDN",
                          f"the CDN has {listing.size} bytes, the file {row.accepted_size or row.size}")
    return None


def local_differences(config: Config, ledger: Ledger) -> tuple[list[Difference], list[LedgerRow]]:
    """Folder against ledger, one folder at a time; and the imported rows to ask the CDN about."""
    differences: list[Difference] = []
    to_ask: list[LedgerRow] = []
    walked: set[str] = set()
    for reldir, entries in walk_folder(config.folder, config.scan, private=private_identities(config),
                                       own_names=dict(config.private_files)):
        walked.add(reldir)
        rows = {row.path: row for row in ledger.rows_in_dir(reldir)}
        for entry in entries:
            if entry.relpath in dict(config.private_files):
                continue
            row = rows.pop(entry.relpath, None)
            found = local_difference(row, entry)
            if found is not None:
                differences.append(found)
            elif row is not None:
                to_ask.append(row)
        differences += [local_difference(row, None) for row in rows.values()   # type: ignore[misc]
                        if row.state != STATE_GONE]
    differences += [local_difference(row, None) for row in ledger.all_rows()   # type: ignore[misc]
                    if row.path.rpartition("/")[0] not in walked and row.state != STATE_GONE]
    return differences, to_ask


def ask_cdn(client: CdnClient, rows: Sequence[LedgerRow], workers: int,
            show_progress: bool) -> Iterator[tuple[LedgerRow, Listing]]:
    """file/list for each row, a few at a time within api.rate_limit, with a bar on a terminal."""
    bars = ProgressBars(show_progress, print)
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="check") as pool:
        for row, listing in zip(rows, pool.map(lambda r: client.list_file(r.accepted_name or r.name), rows)):
            bars.update("check", 1, total=len(rows), unit="file", desc="asking the CDN")
            yield row, listing
    bars.close()


def check_against_cdn(config: Config, *, fix: bool, sample: int | None, as_json: bool,
                      show_progress: bool, out: Callable[[str], None] = print) -> int:
    """`check`: folder, ledger and CDN compared; one line per difference; exit 0 when all agree."""
    check_can_submit(config)
    if sample is not None and sample < 1:
        raise ConfigError("--sample needs a number of files, at least 1")
    if not config.ledger.exists():
        raise ConfigError(f"no ledger yet at {config.ledger}: nothing has been pushed, so there is nothing to check")
    with Ledger.open(config.ledger) as ledger:
        if sample is None:
            differences, to_ask = local_differences(config, ledger)
        else:
            differences, to_ask = [], ledger.sample_accepted(sample)
        client = CdnClient(config.api, pool_size=config.submit_workers)
        try:
            for row, listing in ask_cdn(client, to_ask, config.submit_workers, show_progress):
                found = cdn_difference(row, listing, config.confirm)
                if found is None:
                    continue
                differences.append(found)
                if fix:        # one row at a time, committed: a kill keeps every fix made so far
                    ledger.put(as_resend(row))
        finally:
            client.close()
        gone = ledger.counts()[STATE_GONE]
    report_differences(differences, len(to_ask), gone, fix=fix, as_json=as_json, out=out)
    return EXIT_INCOMPLETE if differences else EXIT_OK


def report_differences(differences: Sequence[Difference], asked: int, gone: int, *, fix: bool, as_json: bool,
                       out: Callable[[str], None]) -> None:
    if as_json:
        out(json.dumps({"asked_cdn": asked, "gone": gone, "differences": [d._asdict() for d in differences]},
                       indent=2))
        return
    for found in differences:
        name = f" (CDN name {printable(found.name)})" if found.name and found.name != found.path else ""
        out(f"{found.problem}: {printable(found.path)}{name}{': ' + found.detail if found.detail else ''}")
    fixed = sum(1 for d in differences if d.problem in CDN_PROBLEMS) if fix else 0
    out(f"check: {len(differences)} differences; the CDN was asked about {files(asked)}"
        + (f"; {files(fixed)} marked to be submitted again by the next run" if fixed else "")
        + (f"; {files(gone)} gone from the folder may still be in the CDN (delete.enabled sends file/delete; "
           "'forget' drops them from the ledger)" if gone else ""))


CDN_PROBLEMS = ("missing at the CDN", "failed at the CDN", "size differs at the CDN")


DEMO_SAMPLES = {
    "welcome.mp4": 256 * 1024,
    "series/episode 01.mp4": 3 * 1024 * 1024 + 7,
    "series/épisode #2?.mp4": 300 * 1024,
    "trailers/100% + more.webm": 64 * 1024,
    "empty.txt": 0,
}
DEMO_LOGIN, DEMO_PASSWORD = "demo", "demo-secret"


def demo_folder(folder: Path) -> None:
    """Sample files with awkward names, an hour old, and one still being written (.part)."""
    rng = random.Random(7)
    for relpath, size in DEMO_SAMPLES.items():
        target = folder / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(rng.randbytes(size))
    (folder / "series" / "episode 03.mp4.part").write_bytes(b"still being written")
    old = time.time() - 3600
    for path in folder.rglob("*"):
        os.utime(path, (old, old))


@contextlib.contextmanager
def demo_emulator() -> Iterator[str]:
    """The CDN emulator (cdn_emulator.py, beside this module) as a process of its own; yields its API URL."""
    import shlex
    import subprocess

    script = Path(__file__).resolve().parent / "cdn_emulator.py"
    if not script.exists():
        raise ConfigError(f"the demo needs {script} (it ships beside cdn_push.py)")
    process = subprocess.Popen([sys.executable, str(script), "--port", "0", "--login", DEMO_LOGIN,
                                "--password", DEMO_PASSWORD], stdout=subprocess.PIPE, text=True,
                               stdin=subprocess.DEVNULL)
    try:
        first = process.stdout.readline() if process.stdout else ""
        fields = dict(part.split("=", 1) for part in shlex.split(first) if "=" in part)
        if "api.url" not in fields:
            raise CdnPushError(f"the CDN emulator did not start: {printable(first.strip()) or 'no output'}")
        yield fields["api.url"]
    finally:
        process.terminate()
        process.wait(10)


def demo_config(workdir: Path, api_url: str, port: int) -> dict[str, Any]:
    return {
        "folder": str(workdir / "drop"), "ledger": str(workdir / "ledger.sqlite3"),
        "api": {"url": api_url, "login": DEMO_LOGIN, "password": DEMO_PASSWORD, "retry": {"backoff_base": 0.1}},
        "origin": {"serve": {"listen": f"127.0.0.1:{port}", "public_url": f"http://127.0.0.1:{port}"}},
        "callback": {"wait_seconds": 60}, "monitor": {"listen": None},
        "name_prefix": "demo/", "scan": {"settle_seconds": 0},
        "rules": [{"match": "trailers/**", "fetch_prio": 1, "speed": "130%"}],
    }


def run_demo(out: Callable[[str], None] = print, *, keep: bool = False) -> int:
    """A full local round trip: sample folder -> built-in origin -> CDN emulator -> callbacks."""
    import shutil

    import tempfile

    workdir = Path(tempfile.mkdtemp(prefix="cdn-push-demo-"))
    demo_folder(workdir / "drop")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    try:
        with demo_emulator() as api_url:
            raw = demo_config(workdir, api_url, port)
            config = parse_config(raw, env={}, base_dir=workdir, source="embedded demo config")
            out(f"demo: pushing {config.folder}\n      built-in origin and callbacks on http://127.0.0.1:{port}, "
                f"CDN emulator at {api_url}")
            all_good = demo_round_trip(config, api_url, out)
        if keep:
            kept = workdir / "config.yaml"
            import yaml

            fd = os.open(kept, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                yaml.safe_dump(raw, handle, allow_unicode=True, sort_keys=False)
            out(f"demo: kept {workdir}; see its ledger with:\n      {sys.executable} {Path(__file__).resolve()} "
                f"status --config {kept}")
        return EXIT_OK if all_good else EXIT_INCOMPLETE
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


def demo_round_trip(config: Config, api_url: str, out: Callable[[str], None]) -> bool:
    """Two runs against the emulator: everything imported and confirmed, then nothing to do."""
    import requests

    stop = threading.Event()
    first = run_one_shot(config, stop=stop, show_progress=sys.stderr.isatty(), out=out)
    out(first.line())
    out("demo: what the CDN emulator downloaded and verified:")
    records = requests.get(api_url.rsplit("/", 1)[0] + "/_emulator/state", timeout=10).json()
    verified = 0
    for record in records:
        ok = record["state"] == "ready" and record["callback_result"] == "200"
        verified += ok
        out(f"  {record['state']:<7} {printable(record['name']):<36} {record['size']:>9} bytes  "
            f"sha-256 {record['sha256'][:16]}…  {record['streams']} stream(s), callback "
            f"{record['callback_result']}{'  ' + printable(record['message']) if record['message'] else ''}")
    with Ledger.open(config.ledger) as ledger:
        counts = ledger.counts()
    out("demo: the ledger: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    second = run_one_shot(config, stop=stop, show_progress=False, out=out)
    out("demo: second run (nothing changed): " + second.line())
    all_good = (first.exit_code() == EXIT_OK and verified == len(DEMO_SAMPLES) and second.submitted == 0
                and counts[STATE_CONFIRMED] == len(DEMO_SAMPLES))
    out(f"demo: {'OK' if all_good else 'FAILED'}: {verified} of {len(DEMO_SAMPLES)} files fetched, verified "
        "and confirmed")
    return all_good


# ----------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------

EXIT_CODES_HELP = f"""\
exit codes:
  {EXIT_OK} all done   {EXIT_INCOMPLETE} some files rejected/failed/unconfirmed   {EXIT_USAGE} usage or config error
  {EXIT_LOCKED} another instance running   {EXIT_CDN_UNAVAILABLE} CDN unreachable, credentials refused or api.url wrong
  {EXIT_LEDGER} ledger unusable   {EXIT_ORIGIN} the CDN cannot fetch from the origin   {EXIT_BUG} a bug in cdn-push

environment: {ENV_CONFIG}, {ENV_API_PASSWORD}, {ENV_ORIGIN_PASSWORD}, {ENV_ORIGIN_SECRET}
"""

RELOAD_EXIT_HELP = f"""\
exit codes:
  {EXIT_OK} the service applied the new configuration   {EXIT_INCOMPLETE} it refused it (the message says why)
  {EXIT_USAGE} the configuration file itself is invalid (the service was not disturbed)
  {EXIT_NO_SERVICE} no running service uses this configuration's ledger
"""

# What each command's exit status means: `run` and `check` report on files, the others on themselves.
COMMAND_EXIT_HELP = {
    "run": EXIT_CODES_HELP, "watch": f"""\
exit codes:
  {EXIT_OK} stopped on request   {EXIT_USAGE} usage or config error   {EXIT_LOCKED} another instance running
  {EXIT_CDN_UNAVAILABLE} credentials refused   {EXIT_LEDGER} ledger unusable   {EXIT_BUG} a bug in cdn-push
""", "status": f"""\
exit codes:
  {EXIT_OK} shown   {EXIT_USAGE} usage or config error   {EXIT_LEDGER} ledger unreadable
""", "reload": RELOAD_EXIT_HELP, "check": f"""\
exit codes:
  {EXIT_OK} folder, ledger and CDN agree   {EXIT_INCOMPLETE} differences found (listed)   {EXIT_USAGE} usage or config error
  {EXIT_CDN_UNAVAILABLE} CDN unreachable or credentials refused   {EXIT_LEDGER} ledger unusable
""", "resend": f"""\
exit codes:
  {EXIT_OK} marked   {EXIT_INCOMPLETE} a pattern matched nothing   {EXIT_USAGE} usage or config error
  {EXIT_LOCKED} another instance running   {EXIT_LEDGER} ledger unusable
""", "demo": f"""\
exit codes:
  {EXIT_OK} the round trip worked   {EXIT_INCOMPLETE} it did not (the output says where)
"""}
COMMAND_EXIT_HELP["forget"] = COMMAND_EXIT_HELP["resend"].replace("marked", "forgotten")

COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("one pass: hash the folder, submit new and changed files (the default)", """\
examples:
  cdn-push                                   # run with ./config.yaml
  cdn-push run --dry-run                     # what would be submitted; changes nothing
  # crontab: silent unless something needs you (api.password_file holds the password)
  */5 * * * * /usr/local/bin/cdn-push run -q --config /etc/cdn-push/config.yaml >> /var/log/cdn-push.log 2>&1
"""),
    "watch": ("service: watch the folder and import each file as it settles, full passes alongside", """\
examples:
  cdn-push watch --config /etc/cdn-push/config.yaml   # what the systemd unit runs
  cdn-push watch --poll            # NFS/SMB mounts, where inotify events do not arrive
"""),
    "status": ("show what the ledger knows", """\
examples:
  cdn-push status
  cdn-push status --state rejected
  cdn-push status --json | jq '.counts'
"""),
    "reload": ("make a running watch service reread its configuration and wait for the outcome", """\
examples:
  cdn-push reload --config /etc/cdn-push/config.yaml   # exit 0 applied, 1 refused
  systemctl reload cdn-push                  # the unit runs this command
"""),
    "check": ("compare folder, ledger and CDN (file/list); --fix marks what the CDN lacks to be sent again", """\
examples:
  cdn-push check                   # every imported file; exit 0 when all agree
  cdn-push check --sample 200      # 200 random imported files: a cheap daily audit
  cdn-push check --fix && cdn-push run
"""),
    "resend": ("submit files again on the next run, whatever the ledger says", """\
examples:
  cdn-push resend "series/episode 01.mp4"
  cdn-push resend 'trailers/**'    # a glob, as in rules (quote it for the shell)
"""),
    "forget": ("drop files from the ledger (a file still in the folder is then imported as new)", """\
examples:
  cdn-push forget 'old-site/**'
"""),
    "demo": ("local round trip: sample folder -> built-in origin -> CDN emulator -> callbacks", """\
examples:
  cdn-push demo
  cdn-push demo --keep             # keep the work folder, its config and ledger
"""),
    "help": ("show the help of cdn-push or of one command", """\
examples:
  cdn-push help run
"""),
}


def _common_options(parser: argparse.ArgumentParser, *, top: bool, config: bool = True) -> None:
    # On both levels, so they work before or after the command; SUPPRESS keeps one from erasing the other.
    default = None if top else argparse.SUPPRESS
    if config:
        parser.add_argument("-c", "--config", metavar="PATH", default=default,
                            help=f"configuration file (default: ${ENV_CONFIG} or ./{DEFAULT_CONFIG_NAME})")
    parser.add_argument("-v", "--verbose", action="count", default=0 if top else argparse.SUPPRESS,
                        help="more logging")
    parser.add_argument("-q", "--quiet", action="count", default=0 if top else argparse.SUPPRESS,
                        help="only warnings and errors")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cdn-push", description="Push a folder of video files into the video CDN and record "
        "what it accepted.", formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "".join(f"  {name:<8}  {text}\n" for name, (text, _) in COMMANDS.items())
        + "\n" + COMMANDS["run"][1] + "\n" + EXIT_CODES_HELP + "\n'cdn-push COMMAND --help' (or 'cdn-push help COMMAND') "
        "shows each command's options.")
    _common_options(parser, top=True)
    parser.add_argument("--version", action="version", version=f"cdn-push {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub = {name: commands.add_parser(name, help=text, description=text,
                                     epilog=examples + "\n" + COMMAND_EXIT_HELP.get(name, ""),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
           for name, (text, examples) in COMMANDS.items()}
    for name, command in sub.items():
        if name != "help":
            _common_options(command, top=False, config=name != "demo")     # the demo makes its own
    sub["help"].add_argument("topic", nargs="?", choices=[name for name in COMMANDS if name != "help"],
                             metavar="COMMAND", help="a command, such as run")
    sub["run"].add_argument("-n", "--dry-run", action="store_true",
                            help="hash and show what would be submitted; change nothing")
    sub["run"].add_argument("--retry-rejected", action="store_true",
                            help="submit files the CDN rejected before, even if unchanged")
    sub["watch"].add_argument("--poll", action="store_true",
                              help="poll instead of inotify (NFS/SMB mounts, where events do not arrive)")
    sub["status"].add_argument("--json", action="store_true", help="print JSON")
    sub["status"].add_argument("--state", choices=(*STATES, CONFLICT), help="only files in this state")
    sub["reload"].add_argument("--pid", type=int, help="the service's process id (default: from the ledger's lock)")
    sub["check"].add_argument("--fix", action="store_true",
                              help="mark files the CDN lacks, failed or holds at another size to be sent again")
    sub["check"].add_argument("--json", action="store_true", help="print JSON")
    sub["check"].add_argument("--sample", type=int, metavar="N", help="check N random imported files only")
    for name in ("resend", "forget"):
        sub[name].add_argument("patterns", nargs="+", metavar="PATH|GLOB",
                               help="a path relative to 'folder', a CDN name, or a glob such as 'series/**'")
    sub["demo"].add_argument("--keep", action="store_true", help="keep the work folder")
    parser.set_defaults(commands=sub, parser=parser)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """`run` is the command when none is named: `cdn_push.py --dry-run` means `cdn_push.py run --dry-run`."""
    argv = list(argv)
    takes_value = False
    for token in argv:
        if (token in COMMANDS and not takes_value) or token in ("-h", "--help", "--version"):
            break
        if not token.startswith("-") and not takes_value:
            parser.error(f"unknown command {token!r} (commands: {', '.join(COMMANDS)})")
        takes_value = token in ("-c", "--config")
    else:
        argv.insert(0, "run")
    args, extra = parser.parse_known_args(argv)
    if extra:       # said by the command's own parser, so the usage line shown is that command's
        (args.commands.get(args.command) or parser).error(f"unrecognized arguments: {' '.join(extra)}")
    return args


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event, reload: threading.Event | None = None) -> Iterator[None]:
    """SIGINT/SIGTERM only set the stop event, SIGHUP the reload event; the loops do the rest."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    wanted = (signal.SIGINT, signal.SIGTERM) + ((signal.SIGHUP,) if reload is not None else ())
    previous = {sig: signal.getsignal(sig) for sig in wanted}

    def handler(signum: int, frame: Any) -> None:
        if signum == signal.SIGHUP and reload is not None:
            reload.set()
        elif stop.is_set() and isinstance(stop, StopEvent):
            stop.now.set()          # a second stop: now, not once what is in flight is done
        else:
            stop.set()

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def venv_python(argv: Sequence[str]) -> None:
    """Run this script again with the .venv/bin/python install.sh made beside it, if that is not
    the Python running it: `python3 cdn_push.py` then works as `.venv/bin/python cdn_push.py`."""
    here = Path(__file__).resolve().parent
    python = here / ".venv" / "bin" / "python"
    if python.exists() and Path(sys.prefix).resolve() != (here / ".venv").resolve() and not os.environ.get(
            "CDN_PUSH_NO_REEXEC"):
        os.environ["CDN_PUSH_NO_REEXEC"] = "1"      # once: a broken venv must not loop
        os.execv(str(python), [str(python), str(Path(__file__).resolve()), *argv[1:]])


def main(argv: Sequence[str] | None = None) -> int:
    if sys.version_info < (3, 11):      # what CI tests; older Pythons are not claimed
        print(f"cdn-push needs Python 3.11 or newer; this is {sys.version.split()[0]}", file=sys.stderr)
        return EXIT_USAGE
    arguments = sys.argv[1:] if argv is None else list(argv)
    if arguments == ["--version"]:          # answered before anything else is needed
        print(f"cdn-push {__version__}")
        return EXIT_OK
    missing = missing_packages()
    if missing and argv is None:
        venv_python(sys.argv)               # a plain `python3 cdn_push.py` beside ./.venv: run with that
    if missing:
        print(f"cdn-push needs the Python packages {', '.join(missing)}, which this Python "
              f"({sys.executable}) lacks: run ./install.sh, then use cdn-push (or .venv/bin/cdn-push)",
              file=sys.stderr)
        return EXIT_USAGE
    parser = build_parser()
    try:
        args = parse_args(parser, arguments)
    except SystemExit as exc:
        return int(exc.code or 0)
    redactor = Redactor([os.environ.get(ENV_API_PASSWORD, ""), os.environ.get(ENV_ORIGIN_PASSWORD, "")])
    with logging_configured(args.verbose - args.quiet, redactor):
        try:
            code = run_command(args, redactor)
            if sys.stdout is not None:          # None where fd 1 was closed before the start
                sys.stdout.flush()              # a closed pipe shows here, not as a traceback at exit
            return code
        except LockedError as exc:      # cron's overlap with itself: harmless, said quietly
            log.info("%s", exc)
            return exit_code_for(exc)
        except CdnPushError as exc:
            log.error("%s", exc)
            return exit_code_for(exc)
        except BrokenPipeError:         # `status | head`: the reader has all it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_OK
        except Exception:  # noqa: BLE001 - the one boundary: a bug ends here, redacted, as exit 70
            log.critical("cdn-push stopped on a fault of its own (a bug: please report it with the lines "
                         "below; the ledger keeps everything recorded so far)", exc_info=True)
            return EXIT_BUG


def run_command(args: argparse.Namespace, redactor: Redactor) -> int:
    stop = StopEvent()
    if args.command == "help":
        target = args.commands[args.topic] if args.topic else args.parser
        target.print_help()
        return EXIT_OK
    if args.command == "demo":
        if args.config is not None:
            raise ConfigError("demo makes its own configuration in a temporary folder: leave out --config")
        with stop_on_signals(stop):
            return run_demo(keep=args.keep)
    config_path = config_path_from(args.config, os.environ)

    def load() -> Config:
        loaded, warnings = load_config(config_path, os.environ)
        redactor.add(loaded.secrets())
        for warning in warnings:
            log.warning("%s", warning)
        if getattr(args, "poll", False):
            loaded = dataclasses.replace(loaded, scan=dataclasses.replace(loaded.scan, poll=True))
        return loaded

    config = load()
    if args.command == "status":
        return show_status(config, as_json=args.json, state=args.state)
    if args.command == "reload":
        return request_reload(config, args.pid)
    if args.command in ("resend", "forget"):
        return change_rows(config, args.patterns, forget=args.command == "forget")
    if args.command == "check":
        with stop_on_signals(stop):
            return check_against_cdn(config, fix=args.fix, sample=args.sample, as_json=args.json,
                                     show_progress=sys.stderr.isatty() and args.quiet == 0)
    if args.command == "watch":
        reload = threading.Event()
        with stop_on_signals(stop, reload):
            return run_watch(config, stop=stop, reload=reload, load=load)
    with stop_on_signals(stop):
        summary = run_one_shot(config, stop=stop, dry_run=args.dry_run, retry_rejected=args.retry_rejected,
                               show_progress=sys.stderr.isatty() and args.quiet == 0)
    if summary.fatal is not None:
        log.error("%s", summary.fatal)
    code = summary.exit_code()
    if args.dry_run and code == EXIT_OK and submit_problems(config):
        log.error("a real run would not start: fix what the warnings above name in %s", config.source)
        code = EXIT_USAGE
    if not (args.quiet and code == EXIT_OK):       # -q: silent on success, as rsync -q is
        stamp = "" if sys.stdout.isatty() else time.strftime("%Y-%m-%d %H:%M:%S ")   # a log file's lines
        print(stamp + summary.line(), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
