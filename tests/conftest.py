"""Shared fixtures: real files in temporary folders, a real origin and CDN emulator on 127.0.0.1."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import cdn_push  # noqa: E402
from cdn_emulator import CdnEmulator, StaticOrigin  # noqa: E402

API_LOGIN = "tester"
API_PASSWORD = "api-Pa55-w0rd-zebra"
ORIGIN_USER = "fetcher"
ORIGIN_PASSWORD = "origin-S3cret-walrus/+@:"

# Names that break naive URL building: space, # ? % +, non-ASCII, nesting.
AWKWARD_FILES = {
    "plain.mp4": b"plain" * 1000,
    "with space.mp4": b"space" * 333,
    "hash#tag.mp4": b"#" * 4097,
    "question?.mp4": b"?" * 10,
    "100% + plus.mp4": b"%+" * 2000,
    "ünïcödé/ファイル.mp4": b"\xe3" * 70000,
    "deep/er/still/file.webm": os.urandom(300_000),
    "empty.bin": b"",
}


def write_files(folder: Path, files: dict[str, bytes], *, age: float = 3600.0) -> None:
    """Create files with an mtime `age` seconds ago, so they count as settled."""
    stamp = time.time() - age
    for relpath, content in files.items():
        target = folder / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        os.utime(target, (stamp, stamp))


@pytest.fixture(autouse=True)
def restore_logging():
    """Whatever a test does to cdn-push's logger (main sets it up), the next test starts clean."""
    saved = (cdn_push.log.handlers[:], cdn_push.log.level, cdn_push.log.propagate)
    yield
    cdn_push.log.handlers[:], cdn_push.log.level, cdn_push.log.propagate = saved


@pytest.fixture
def emulator():
    emu = CdnEmulator(login=API_LOGIN, password=API_PASSWORD).start()
    yield emu
    emu.stop()


@pytest.fixture
def drop(tmp_path: Path) -> Path:
    folder = tmp_path / "drop"
    folder.mkdir()
    return folder


@pytest.fixture
def origin(drop: Path):
    server = StaticOrigin(drop, username=ORIGIN_USER, password=ORIGIN_PASSWORD).start()
    yield server
    server.stop()


@pytest.fixture
def raw_config(tmp_path: Path, drop: Path, emulator: CdnEmulator, origin: StaticOrigin) -> dict[str, Any]:
    """A complete configuration dict pointing at the emulator and origin."""
    return {
        "folder": str(drop),
        "ledger": str(tmp_path / "state" / "ledger.sqlite3"),
        "api": {"url": emulator.api_url, "login": API_LOGIN, "password": API_PASSWORD,
                "timeout": 5, "retry": {"attempts": 4, "backoff_base": 0.01, "backoff_max": 0.05,
                                        "max_seconds": 10}},
        "origin": {"base_url": origin.url, "username": ORIGIN_USER, "password": ORIGIN_PASSWORD},
        "scan": {"settle_seconds": 5},
        # Suites about sending turn file/list questions off; tests of confirmation turn them on.
        "confirm": {"poll": False, "poll_interval": 0.2},
        "monitor": {"listen": None},     # tests that want the status page choose a free port
    }


@pytest.fixture
def write_config(tmp_path: Path, raw_config: dict[str, Any]) -> Callable[..., Path]:
    """Write raw_config (updated by keyword sections) to a 0600 YAML file and return its path."""

    def write(**sections: Any) -> Path:
        data = {**raw_config, **sections}
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
        path.chmod(0o600)
        return path

    return write


@pytest.fixture
def make_config(tmp_path: Path, raw_config: dict[str, Any]) -> Callable[..., cdn_push.Config]:
    def make(**sections: Any) -> cdn_push.Config:
        return cdn_push.parse_config({**raw_config, **sections}, env={}, base_dir=tmp_path)

    return make


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, message: str = "") -> Any:
    """Call `condition` until it returns something truthy, and return that.

    After `timeout` seconds without it, raise AssertionError naming `message` and the last value
    seen. The one wait of the suite: tests decide on conditions with a deadline, never on a sleep.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout:g}s: {message or getattr(condition, '__name__', 'condition')}"
                                 f" (last value: {repr(value)[:200]})")
        time.sleep(interval)


def free_port() -> int:
    """A port that is free now, for servers whose public URL must be known before they start."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def self_signed_cert(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate and key for 127.0.0.1, made by the openssl command (skipped without it)."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def start_cdn_push(*args: str):
    """cdn_push.py as a real process: no CDN_PUSH_* or systemd variables from this one, no stdin."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith(("CDN_PUSH_", "NOTIFY_SOCKET"))}
    return subprocess.Popen([sys.executable, str(ROOT / "cdn_push.py"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, stdin=subprocess.DEVNULL)


def assert_cdn_holds(emulator: CdnEmulator, files: dict[str, bytes], timeout: float = 60.0) -> None:
    """The emulator downloaded exactly these files and verified each one's sha-256."""
    import hashlib

    assert emulator.wait_idle(timeout)
    cdn = {f["name"]: f for f in emulator.snapshot()}
    assert set(cdn) == set(files)
    for name, content in files.items():
        assert (cdn[name]["state"], cdn[name]["sha256"]) == ("ready", hashlib.sha256(content).hexdigest()), name
