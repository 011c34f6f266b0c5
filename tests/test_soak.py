"""The chaos soak of the watch service (issue 19): the real `watch` process under producers and faults.

The engine is bench/soak.py. The short run (54 s of producing, about a minute in all) is part
of the default suite. The long one runs only when asked:

    CDN_PUSH_SOAK_MINUTES=30 .venv/bin/python -m pytest -m soak -s      # or: bench/soak.py --minutes 30

Faults that need root (mounts) are skipped, each saying why, and the rest still runs.
CDN_PUSH_SOAK_SKIP=ledger_full,sigstop leaves faults out (names in soak.Faults.NAMES).
"""

from __future__ import annotations

import os
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import soak  # noqa: E402

SOAK_MINUTES = float(os.environ.get("CDN_PUSH_SOAK_MINUTES", "0") or 0)
SKIP = tuple(name for name in os.environ.get("CDN_PUSH_SOAK_SKIP", "").split(",") if name)


def run_and_show(minutes: float, tmp_path) -> soak.SoakReport:
    report = soak.run_soak(minutes, tmp_path / "soak", skip=SKIP, log=lambda line: print(line, flush=True))
    print("\n".join(report.lines()))
    return report


def test_short_soak_every_completed_file_confirmed_once_and_nothing_partial(tmp_path):
    report = run_and_show(0.9, tmp_path)
    assert report.completed >= 50 and report.aborted >= 5, report.lines()      # the producers did produce
    assert report.faults["sigkill_restart"] == ("sigkill_restart" not in SKIP)
    assert sum(report.faults.values()) + len(report.skipped) == len(soak.Faults.NAMES), report.lines()
    # Every figure the issue asks for is judged in run_soak; each failed one is a line in `problems`.
    # The resource bound there is loose in the short run (50%): its windows are a few seconds of a
    # minute-old process whose pools are still filling (a hash thread, an API connection per submit
    # worker, made on first use) and whose RSS still settles; the long run holds them to 10% (or the
    # size of those bounded pools: soak.POOL_SLACK), measured after a first round of every fault.
    assert report.problems == [], "\n".join(report.lines())
    assert report.confirmed == report.completed


@pytest.mark.soak
@pytest.mark.skipif(not SOAK_MINUTES, reason="the long soak runs with CDN_PUSH_SOAK_MINUTES=N (e.g. 30)")
def test_long_soak(tmp_path):
    report = run_and_show(SOAK_MINUTES, tmp_path)
    assert report.problems == [], "\n".join(report.lines())
    assert report.confirmed == report.completed
    assert set(report.resources) == {"RSS MiB", "open fds", "threads"}, report.lines()   # measured, and flat
