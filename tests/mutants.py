#!/usr/bin/env python3
"""A mutation pass over the pipeline, the watch service and the decide step (issue 17).

Each mutant below is one small hand-made change to cdn_push.py: an exact source snippet, what
replaces it, and the tests that ought to notice. The script copies the tree (cdn_push.py,
cdn_emulator.py, tests/, pytest.ini and the few files tests read) into a temporary folder once;
for each mutant it writes the mutated module there, runs the chosen tests (pytest -x, no
bytecode written, so no stale .pyc can hide a mutant), puts the original back, and reports

    KILLED    a test failed: the tests notice the change
    SURVIVED  every chosen test passed: a missing test, unless the mutant is equivalent
    TIMEOUT   the tests ran past --timeout (usually a mutant that makes a loop never end)

The cdn_push.py of the tree it runs from is never touched. Each snippet must occur exactly once
in the current cdn_push.py; the script stops before running anything if one does not, so the
list has to be kept true as the code changes. Mutants judged equivalent carry the reason in
`equivalent` (printed with the result); if one of those is ever KILLED the note is stale.

    .venv/bin/python tests/mutants.py                 # every mutant (baseline run first)
    .venv/bin/python tests/mutants.py --only NAME ... # some of them
    .venv/bin/python tests/mutants.py --list          # names, selections, notes

Not collected by pytest (its name does not start with test_). Exit status: 0 when every mutant
was killed or judged equivalent, 1 otherwise, 2 when the list no longer matches the code.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
COPIED = ("cdn_push.py", "cdn_emulator.py", "pytest.ini", "tests",
          # read by some tests (the unit check runs install.sh, the config test the example)
          "install.sh", "cdn-push.service", "config.example.yaml", "requirements.txt", "requirements-dev.txt")
PYTEST = ["-m", "pytest", "-x", "-q", "-m", "not system", "-p", "no:cacheprovider"]

# Test selections, the fast deterministic stage tests first (with -x a killed mutant stops early).
PURE = "tests/test_stages.py tests/test_pipeline.py"
PIPE = "tests/test_stages.py tests/test_pipeline_races.py tests/test_pipeline.py"
CALLBACKS = PIPE + " tests/test_origin.py"
WATCH = "tests/test_stages.py tests/test_watch.py"


class Mutant(NamedTuple):
    name: str
    original: str          # occurs exactly once in cdn_push.py
    replacement: str
    tests: str             # pytest selection
    equivalent: str = ""   # why no test can tell it from the real code (judged by hand)


MUTANTS: list[Mutant] = [
    # -- decide (pure) --------------------------------------------------------------------
    Mutant("decide-retry-rejected-ignored",
           "row.state == STATE_REJECTED and not retry_rejected and (",
           "row.state == STATE_REJECTED and (", PURE),
    # Equivalent: accepted_name/size/sha256 are always written together (Recorder.answered) and
    # cleared together (Recorder._confirm), so accepted_sha256 None means accepted_name None,
    # which differs from any name: the `accepted_name != name` branch below answers NEW anyway.
    Mutant("decide-never-accepted-branch-dropped",
           "    if row is None or row.accepted_sha256 is None:\n        return DECISION_NEW",
           "    if row is None:\n        return DECISION_NEW", PURE,
           equivalent="accepted_* are set and cleared together: accepted_sha256 None implies "
                      "accepted_name None != name, so the next branch answers NEW as well"),
    Mutant("decide-no-replace-ignored",
           "    if no_replace:\n        return DECISION_CONFLICT\n", "", PURE),
    # -- row_after_decision (pure) ----------------------------------------------------------
    Mutant("row-after-attempts-never-carried",
           "attempts=row.attempts if resend else 0", "attempts=0", PURE),
    Mutant("row-after-attempts-carried-from-any-state",
           "== (name, entry.size, sha256) and row.state == STATE_PENDING",
           "== (name, entry.size, sha256)", PURE),
    Mutant("row-after-conflict-not-noted",
           "    if decision == DECISION_CONFLICT:\n        return row._replace(\n",
           "    if False:\n        return row._replace(\n", PURE),
    # -- Decider ----------------------------------------------------------------------------
    Mutant("unconfirmed-asked-once-too-often",
           "attempts < callback.max_attempts", "attempts <= callback.max_attempts", PIPE),
    Mutant("unconfirmed-wait-boundary",
           "self.ctx.clock() - updated_at >= callback.wait_seconds",
           "self.ctx.clock() - updated_at > callback.wait_seconds", PIPE),
    Mutant("unconfirmed-stale-links-not-resent",
           "updated_at < self.resend_before or ", "", PIPE + " tests/test_cli.py"),
    Mutant("quick-unchanged-ignores-unconfirmed",
           "                and not self.unconfirmed_due(row.state, row.attempts, row.updated_at)):",
           "                ):", PIPE),
    Mutant("hashed-unchanged-never-resent",
           "        if decision == DECISION_UNCHANGED and row is not None and self.unconfirmed_due(",
           "        if False and row is not None and self.unconfirmed_due(", PIPE),
    # -- Intake -----------------------------------------------------------------------------
    Mutant("take-chunk-settle-check-removed",
           "            if entry.mtime_ns <= settle_before_ns or entry.relpath in self.private:",
           "            if True:", PIPE),
    Mutant("take-chunk-young-vouched-file-counted-waiting",
           "            elif not self.decider.unchanged(entry, chunk.known.get(entry.relpath)):",
           "            else:", PIPE),
    Mutant("look-at-moved-file-hashed-again",
           "            if entry.relpath in moved:", "            if False:", PIPE),
    Mutant("look-at-file-on-its-way-not-left-alone",
           "            if stage in (Stage.TO_HASH, Stage.HASHING, Stage.DECIDED):\n                continue\n",
           "", PIPE),
    Mutant("flush-commit-every-ignored",
           "or len(self._decided) >= tuning.commit_every", "", PIPE),
    Mutant("flush-prio-not-urgent",
           "any(fresh or row.priority for row, fresh in self._decided)",
           "any(fresh for row, fresh in self._decided)", PIPE),
    # -- Hasher -----------------------------------------------------------------------------
    Mutant("hasher-fresh-is-not-fresh",
           "(self._fresh_jobs if job.fresh else self._scan_jobs).append(job)",
           "(self._fresh_jobs if not job.fresh else self._scan_jobs).append(job)", PIPE),
    Mutant("hasher-no-spare-lane-for-fresh-drops",
           "(self._fresh_jobs, self.workers + 1) if self._fresh_jobs",
           "(self._fresh_jobs, self.workers) if self._fresh_jobs", PIPE),
    Mutant("hasher-pass-tail-ignored",
           "        return any(not job.fresh for job in self._running.values())",
           "        return False", PIPE),
    # -- Feeder -----------------------------------------------------------------------------
    Mutant("enqueue-queued-max-ignored",
           "        if not self.can_send() or len(self.submitter.queue) >= self.ctx.tuning.queued_max:",
           "        if not self.can_send():", PIPE),
    Mutant("feed-full-queue-never-gives-way",
           "                displaced = self.submitter.queue.give_way(queue_rank(row.priority, False))",
           "                displaced = None", PIPE),
    Mutant("due-rows-awaiting-resend-never-due",
           "limit, lambda path: path in table and table.stage(path) is not Stage.AWAITING, now=self.ctx.clock()",
           "limit, lambda path: path in table, now=self.ctx.clock()", PIPE),
    Mutant("gone-file-forgets-its-import",
           "            if row.accepted_sha256 is None:\n                ctx.ledger.forget(row.path)",
           "            if True:\n                ctx.ledger.forget(row.path)", PIPE),
    Mutant("failure-streak-boundary",
           "if self._consecutive_failures >= max(3, self.ctx.config.submit_workers * 2):",
           "if self._consecutive_failures > max(3, self.ctx.config.submit_workers * 2):", PIPE),
    # -- Recorder ---------------------------------------------------------------------------
    # Equivalent: the sha-256 is compared too, and equal sha-256 means equal content, so equal size.
    Mutant("exists-with-no-replace-not-rejected",
           '        if answer.outcome == OUTCOME_EXISTS and params.get("no_replace") == "true":',
           "        if False:", PIPE),
    Mutant("early-callback-dropped-not-deferred",
           "                if ctx.clock() - report.received < ANSWER_GRACE:",
           "                if False:", CALLBACKS),
    Mutant("old-attempt-success-ignored",
           "not (current or (report.success and report.attempt < row.attempts))",
           "not current", CALLBACKS),
    Mutant("callback-failure-final-one-attempt-late",
           "final = row.attempts >= ctx.config.callback.max_attempts",
           "final = row.attempts > ctx.config.callback.max_attempts", CALLBACKS),
    # -- Pipeline ---------------------------------------------------------------------------
    Mutant("release-recheck-skipped",
           "        if path in self.table.recheck and not self._halting:",
           "        if False:", PIPE),
    Mutant("pass-end-set-aside-kept",
           "            self.table.move(path, Stage.SET_ASIDE, None)", "            pass", PIPE),
    Mutant("busy-ignores-the-ledger-backlog",
           "self.busy_here() or bool(self.feeder.due_rows(1)", "self.busy_here() or bool(0", PIPE),
    # -- Settler ----------------------------------------------------------------------------
    Mutant("settle-close-grace-removed",
           "(done and now - candidate.steady_since >= grace and now - candidate.last_event >= grace) or (",
           "False or (", WATCH),
    Mutant("settle-still-changing-recheck-deleted",
           "                candidate.seen, candidate.steady_since = found, now\n                continue\n",
           "                candidate.seen, candidate.steady_since = found, now\n", WATCH),
    Mutant("settle-age-check-removed",
           "now - candidate.last_event >= settle and wall - found[1] / 1e9 >= settle):",
           "now - candidate.last_event >= settle):", WATCH),
    Mutant("settle-open-writer-ignored",
           "if found[2] in self.open_files.writers(", "if False and self.open_files.writers(", WATCH),
    Mutant("settle-polling-trusts-local-writers",
           "done = candidate.closed or (self.local and self.open_files.complete)",
           "done = candidate.closed or self.open_files.complete", WATCH),
    Mutant("note-reopen-not-noted",
           "            self.candidates[target].closed = False      # opened again: wait for its close",
           "            pass", WATCH),
    Mutant("note-deleted-file-keeps-its-candidate",
           '        if kind in ("deleted", "moved") and src:\n            self.candidates.pop(src, None)',
           "        if False:\n            pass", WATCH),
    Mutant("settle-symlink-taken",
           "if found is None or (not self.config.scan.follow_symlinks and os.path.islink(path)):",
           "if found is None:", WATCH),
    # -- WatchService -----------------------------------------------------------------------
    Mutant("reload-change-starts-no-pass",
           "        if changed:\n            self.start_pass()", "        if False:\n            self.start_pass()",
           WATCH),
    Mutant("folder-gone-retry-pause-ignored",
           "            self.next_rescan = self.clock() + self.tuning.cdn_retry_pause\n            return",
           "            return", WATCH),
]


class Outcome(NamedTuple):
    verdict: str     # KILLED, SURVIVED, TIMEOUT
    seconds: float
    detail: str


def check_list(source: str, mutants: list[Mutant]) -> list[str]:
    """Everything wrong with the list against the current source (empty when it holds)."""
    problems = []
    names = [m.name for m in mutants]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"{name}: the name is used twice")
    for mutant in mutants:
        found = source.count(mutant.original)
        if found != 1:
            problems.append(f"{mutant.name}: the snippet occurs {found} times in cdn_push.py (must be once): "
                            f"{mutant.original[:80]!r}")
            continue
        mutated = source.replace(mutant.original, mutant.replacement)
        try:
            compile(mutated, "cdn_push.py", "exec")
        except SyntaxError as exc:
            problems.append(f"{mutant.name}: the mutated module does not compile: {exc}")
    return problems


def copy_tree(workdir: Path) -> None:
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, workdir / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif source.exists():
            shutil.copy2(source, workdir / name)
    venv = ROOT / ".venv"
    if venv.exists():          # the unit check names <tree>/.venv/bin/python
        (workdir / ".venv").symlink_to(venv.resolve())


def run_tests(workdir: Path, selection: str, timeout: float) -> tuple[int | None, str, float]:
    """pytest in `workdir`; (exit code or None on timeout, its output, seconds)."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}     # a stale .pyc must never hide a mutant
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, *PYTEST, *shlex.split(selection)], cwd=workdir, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
        return process.returncode, output, time.monotonic() - started
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)       # the pytest we started, and what it started
        output, _ = process.communicate()
        return None, output, time.monotonic() - started


def first_failure(output: str) -> str:
    found = re.search(r"^(?:FAILED|ERROR) (\S+)", output, re.MULTILINE)
    return found.group(1) if found else ""


def run_mutant(workdir: Path, source: str, mutant: Mutant, timeout: float) -> Outcome:
    target = workdir / "cdn_push.py"
    target.write_text(source.replace(mutant.original, mutant.replacement), encoding="utf-8")
    try:
        code, output, seconds = run_tests(workdir, mutant.tests, timeout)
    finally:
        target.write_text(source, encoding="utf-8")
    if code is None:
        return Outcome("TIMEOUT", seconds, f"after {timeout:.0f}s")
    if code == 0:
        return Outcome("SURVIVED", seconds, "")
    if code in (1, 2):        # tests failed, or collection broke on the mutated module
        return Outcome("KILLED", seconds, first_failure(output) or output.strip().splitlines()[-1])
    raise SystemExit(f"{mutant.name}: pytest exited {code} (not a test failure):\n{output[-3000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutants")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per mutant (default 600)")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the run of the unmutated tests (which must pass for the verdicts to mean anything)")
    args = parser.parse_args(argv)

    source = (ROOT / "cdn_push.py").read_text(encoding="utf-8")
    problems = check_list(source, MUTANTS)
    if problems:
        print("the mutant list no longer matches cdn_push.py:", *problems, sep="\n  ", file=sys.stderr)
        return 2
    chosen = MUTANTS
    if args.only:
        unknown = sorted(set(args.only) - {m.name for m in MUTANTS})
        if unknown:
            print(f"no such mutant: {', '.join(unknown)}", file=sys.stderr)
            return 2
        chosen = [m for m in MUTANTS if m.name in args.only]
    if args.list:
        for mutant in chosen:
            note = f"  [equivalent: {mutant.equivalent}]" if mutant.equivalent else ""
            print(f"{mutant.name:48} {mutant.tests}{note}")
        print(f"{len(chosen)} mutants")
        return 0

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cdn-push-mutants-") as tmp:
        workdir = Path(tmp)
        copy_tree(workdir)
        if not args.no_baseline:
            selection = " ".join(dict.fromkeys(part for m in chosen for part in shlex.split(m.tests)))
            code, output, seconds = run_tests(workdir, selection, args.timeout * 2)
            if code != 0:
                print(f"baseline: the unmutated tests do not pass ({first_failure(output) or code}); "
                      f"fix that first:\n{output[-3000:]}", file=sys.stderr)
                return 2
            print(f"baseline passes ({seconds:.0f}s): {selection}", flush=True)
        results: list[tuple[Mutant, Outcome]] = []
        for number, mutant in enumerate(chosen, 1):
            outcome = run_mutant(workdir, source, mutant, args.timeout)
            results.append((mutant, outcome))
            note = ""
            if outcome.verdict == "SURVIVED" and mutant.equivalent:
                note = f"  (equivalent: {mutant.equivalent})"
            elif outcome.verdict == "KILLED" and mutant.equivalent:
                note = "  (marked equivalent, but a test kills it: the note is stale)"
            detail = f"  {outcome.detail}" if outcome.detail else ""
            print(f"[{number:2}/{len(chosen)}] {outcome.verdict:8} {mutant.name} ({outcome.seconds:.0f}s){detail}{note}",
                  flush=True)

    count = {verdict: sum(1 for _, o in results if o.verdict == verdict) for verdict in ("KILLED", "SURVIVED", "TIMEOUT")}
    equivalent = sum(1 for m, o in results if o.verdict == "SURVIVED" and m.equivalent)
    unexplained = [m.name for m, o in results if (o.verdict == "SURVIVED" and not m.equivalent)
                   or o.verdict == "TIMEOUT"]
    print(f"summary: {len(results)} mutants: {count['KILLED']} killed, {count['SURVIVED']} survived "
          f"({equivalent} judged equivalent), {count['TIMEOUT']} timeout in {time.monotonic() - started:.0f}s")
    if unexplained:
        print(f"not killed and not judged equivalent: {', '.join(unexplained)}")
    return 1 if unexplained else 0


if __name__ == "__main__":
    sys.exit(main())
