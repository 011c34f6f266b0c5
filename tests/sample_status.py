"""Sample /status.json documents for the renderer's tests and for looking at the page.

    python sample_status.py OUT_DIR     # writes busy.html, down.html, empty.html (+ .png with chromium)
"""

from __future__ import annotations

import math
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HOSTILE = "<img src=x onerror=alert(1)>.mp4"
NEWLINE_ANSI = "line one\nline two \x1b[31mred\x1b[0m.mp4"
NOW = 1_717_236_000.0          # 2024-06-01, a fixed time so renders are reproducible


def busy(now: float = NOW) -> dict[str, Any]:
    rng = random.Random(7)
    starts = [math.floor(now / 60) * 60 - 60 * (59 - i) for i in range(60)]
    imports = [max(0, int(6 + 5 * math.sin(i / 6) + rng.randint(-2, 3))) if i > 8 else 0 for i in range(60)]
    confirms = [max(0, n - rng.randint(0, 2)) for n in imports[1:]] + [1]
    names = ["news/2024-06-01 evening bulletin.mp4", "series/épisode #2?.mp4", HOSTILE,
             "sport/match highlights 1080p.mp4", "trailers/summer-teaser.webm", NEWLINE_ANSI]
    states = ["confirmed", "submitted", "rejected", "confirmed", "pending", "failed"]
    recent = [{"time": now - 40 * i - 7, "path": names[i % len(names)],
               "name": "site/" + names[i % len(names)], "size": 1_000_000 * (17 + 31 * i) + 123,
               "state": states[i % len(states)]} for i in range(50)]
    return {
        "version": "0.2.0", "generated_at": now, "mode": "watch",
        "folder": "/srv/drop", "cdn": "https://cp.example.net/api2",
        "activity": {"doing": "first pass",
                     "pass": {"running": True, "number": 1, "files_hashed": 12_840,
                              "bytes_hashed": 1_234_567_890_123, "started_at": now - 3 * 3600 - 125},
                     "cdn": {"up": True, "problem": None, "since": None, "next_try_at": None},
                     "last_pass_end": None},
        "counts": {"pending": 1_532, "submitted": 87, "confirmed": 11_209, "rejected": 2, "failed": 1,
                   "waiting": 3},
        "bytes": {"pending": 402_000_000_000, "submitted": 23_100_000_000, "confirmed": 2_870_000_000_000,
                  "rejected": 1_400_000_000, "failed": 730_000_000},
        "queues": {"hash": 1_420, "submit": 112, "confirm": 87},
        "rates": {"hashed_bytes_per_second": 412_300_000.0, "imports_per_minute": 7.4},
        "now": {"hashing": [{"path": "archive/2019/full concert (4K).mov", "size": 48_300_000_000},
                            {"path": HOSTILE, "size": 5_000}],
                "sending": [{"path": "news/2024-06-01 evening bulletin.mp4", "size": 1_830_000_000}]},
        "chart": {"minute_starts": starts, "imports": imports, "confirmations": confirms},
        "recent": recent,
        "problems": [
            {"path": "bad//name.mp4", "state": "rejected", "reason": 'HTTP 400: {"status": "error", '
             '"message": "invalid name"}', "time": now - 900},
            {"path": HOSTILE, "state": "rejected", "reason": "HTTP 400: <b>unsupported</b> codec & container",
             "time": now - 800},
            {"path": "sport/match highlights 1080p.mp4", "state": "failed",
             "reason": "callback status=fail: wrong file size (expected 1830000000, got 0)", "time": now - 300},
            {"path": "promo/teaser.mp4", "state": "conflict",
             "reason": "changed after import and no_replace is set", "time": now - 200},
            {"path": NEWLINE_ANSI, "state": "unreadable", "reason": "Permission denied", "time": now - 100},
        ],
    }


def down(now: float = NOW) -> dict[str, Any]:
    status = busy(now)
    status["activity"] = {"doing": "watching",
                          "pass": {"running": False, "number": 4, "files_hashed": 0, "bytes_hashed": 0,
                                   "started_at": None},
                          "cdn": {"up": False, "problem": "unreachable", "since": now - 754,
                                  "next_try_at": now + 46},
                          "last_pass_end": now - 1800}
    return status


def empty(now: float = NOW) -> dict[str, Any]:
    return {
        "version": "0.2.0", "generated_at": now, "mode": "watch",
        "folder": "/srv/drop", "cdn": "https://cp.example.net/api2",
        "activity": {"doing": "watching",
                     "pass": {"running": False, "number": 1, "files_hashed": 0, "bytes_hashed": 0,
                              "started_at": now - 5},
                     "cdn": {"up": True, "problem": None, "since": None, "next_try_at": None},
                     "last_pass_end": now - 4},
        "counts": {state: 0 for state in ("pending", "submitted", "confirmed", "rejected", "failed", "waiting")},
        "bytes": {state: 0 for state in ("pending", "submitted", "confirmed", "rejected", "failed")},
        "queues": {"hash": 0, "submit": 0, "confirm": 0},
        "rates": {"hashed_bytes_per_second": 0.0, "imports_per_minute": 0.0},
        "now": {"hashing": [], "sending": []},
        "chart": {"minute_starts": [math.floor(now / 60) * 60 - 60 * (59 - i) for i in range(60)],
                  "imports": [0] * 60, "confirmations": [0] * 60},
        "recent": [], "problems": [],
    }


def screenshot(page: Path, png: Path, height: int = 1600) -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                        "--no-first-run", "--disable-background-networking", "--disable-component-update",
                        "--disable-sync", f"--user-data-dir={profile}", "--hide-scrollbars",
                        f"--screenshot={png}", f"--window-size=1280,{height}", page.as_uri()],
                       check=True, capture_output=True, timeout=120)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    from monitor_page import render_status_page

    out = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    out.mkdir(parents=True, exist_ok=True)
    for name, make in (("busy", busy), ("down", down), ("empty", empty)):
        page = out / f"{name}.html"
        page.write_text(render_status_page(make()), encoding="utf-8")
        if shutil.which("chromium"):
            screenshot(page, out / f"{name}.png", 2900 if name != "empty" else 1300)
        print(page)
