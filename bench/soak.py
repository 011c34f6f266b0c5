#!/usr/bin/env python3
"""Chaos soak of the watch service (issue 19): the reliability figure.

    .venv/bin/python bench/soak.py --minutes 30            # the long run; figures at the end
    .venv/bin/python bench/soak.py --minutes 1 --keep      # keep the work folder (logs, ledger)

The real service (`cdn_push.py watch`, a subprocess, built-in origin, callbacks, status page) runs
against the CDN emulator (in this process) while producers keep dropping files into the folder:
`cp`, rsync's temp file + rename (real rsync when installed), `mv` from the same disk, writers that
pause mid-file for longer than `scan.settle_seconds`, writers that abort and delete. A fault script
goes through, in turn: a SIGKILL and restart, CDN 500/429 storms, a reload storm with valid and
invalid configurations, the folder moved away and made anew (its content moved back), the CDN API
down, the ledger's file system full then freed, the folder's tmpfs unmounted and mounted again,
SIGSTOP/SIGCONT. The faults needing root (the two mounts) are skipped, saying why, without it.

At the end (after waiting, with a deadline, until the service has caught up): every completed file
imported by the CDN exactly once with its sha-256 and confirmed in the ledger, no partial file (a
paused writer's first half, an aborted writer's bytes) ever imported, the ledger equal to the
emulator's record, the service's RSS, open descriptors and threads flat after warm-up, and a clean
exit on SIGTERM. `run_soak` returns the figures and the problems; tests/test_soak.py asserts on them.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import itertools
import json
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cdn_emulator import CdnEmulator  # noqa: E402

LOGIN, PASSWORD = "soak", "soak-Pa55-w0rd-otter"
STORM_FAULTS = ("500", "502", "503", "429", "429:1")
HASH_WORKERS, SUBMIT_WORKERS = 2, 4
WRITABLE_AGAIN = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) \w+ the ledger can be written again", re.M)
CONFIRMED_LINE = re.compile(r" INFO confirmed (.*) (?:by callback: the CDN verified|through file/list: the CDN lists it)")


# -- pacing: what a short and a long run do ------------------------------------------------

@dataclass(frozen=True)
class Profile:
    settle: float              # scan.settle_seconds
    rescan: float              # scan.rescan_interval
    confirm_wait: float        # confirm.wait_seconds: with callbacks, file/list is asked only after it
    pause: float               # how long a paused writer stops mid-file (more than settle)
    storm_seconds: float       # a 500/429 storm: this share of API requests fails for this long
    storm_rate: float
    down_seconds: float        # the CDN's API refuses connections this long
    stop_seconds: float        # SIGSTOP .. SIGCONT
    full_seconds: float        # the ledger's file system full this long
    unmounted_seconds: float   # the folder's tmpfs away this long
    moved_seconds: float       # the folder moved away (an empty one in its place) this long
    reloads: int               # SIGHUPs in one reload storm
    gap: tuple[float, float]   # seconds between two files of one producer
    sample_every: float        # resource samples of the service
    warmup: float              # seconds after the (last) start, or after the first round of faults, before
                               # the baseline window (the long run: every lazily made part exists by then)
    window: float              # length of the baseline and end windows
    recovery: float            # the last fault ends at least this long before the end window
    converge: float            # deadline for the service to catch up once producers stop
    bound: float               # allowed growth of RSS, descriptors and threads, in %


SHORT = Profile(settle=2, rescan=20, confirm_wait=12, pause=3.2, storm_seconds=4, storm_rate=0.5, down_seconds=3,
                stop_seconds=3, full_seconds=5, unmounted_seconds=2, moved_seconds=2, reloads=8, gap=(0.15, 0.5),
                sample_every=0.5, warmup=8, window=6, recovery=8, converge=90, bound=50)
# Long: the outage outlasts the retry budget (30 s; the service then pauses sending a minute),
# SIGSTOP outlasts the emulator's callback timeout (10 s: lost callbacks, file/list must confirm),
# the storm exhausts some files' retries (they fail and go again at a rescan).
LONG = Profile(settle=3, rescan=60, confirm_wait=30, pause=5, storm_seconds=20, storm_rate=0.8, down_seconds=45,
               stop_seconds=12, full_seconds=20, unmounted_seconds=10, moved_seconds=8, reloads=15, gap=(0.4, 1.6),
               sample_every=2, warmup=30, window=60, recovery=45, converge=300, bound=10)


def profile_for(minutes: float) -> Profile:
    return LONG if minutes >= 10 else SHORT


# -- the report ------------------------------------------------------------------------------

@dataclass
class SoakReport:
    minutes: float
    profile: str
    wall_seconds: float = 0.0
    dropped: collections.Counter = field(default_factory=collections.Counter)     # by producer kind
    completed: int = 0
    aborted: int = 0
    slow_aborts: int = 0            # closed, then deleted later than the close grace: not judged
    confirmed: int = 0              # completed files imported once, right sha-256, confirmed in the ledger
    duplicates: int = 0             # names the CDN imported (downloaded and verified) more than once
    partials_confirmed: int = 0     # a partial content the CDN imported
    partials_submitted: int = 0     # file/add requests carrying a partial content (imported or not)
    mismatches: int = 0             # ledger vs emulator differences
    converge_seconds: float | None = None
    resources: dict[str, tuple[float, float, float]] = field(default_factory=dict)   # warm-up, end, % change
    resources_idle: dict[str, float] = field(default_factory=dict)                    # after catching up
    faults: collections.Counter = field(default_factory=collections.Counter)
    skipped: dict[str, str] = field(default_factory=dict)
    starts: int = 0
    unexpected_exits: list[str] = field(default_factory=list)
    exit_status: int | None = None
    counts: collections.Counter = field(default_factory=collections.Counter)     # log lines, CDN answers, ...
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.dropped.items()))
        out = [f"soak: {self.minutes:g} min ({self.profile} profile), {self.wall_seconds:.0f} s wall",
               f"files dropped: {sum(self.dropped.values())} ({kinds})",
               f"completed: {self.completed}; aborted: {self.aborted} ({self.slow_aborts} slow, not judged)",
               f"confirmed exactly once with the right sha-256: {self.confirmed} of {self.completed}",
               f"duplicates: {self.duplicates}; partials confirmed: {self.partials_confirmed}; "
               f"partials submitted: {self.partials_submitted}",
               f"ledger vs emulator mismatches: {self.mismatches}",
               f"caught up {self.converge_seconds:.1f} s after the producers stopped" if self.converge_seconds
               is not None else "did not catch up within the deadline"]
        for metric, (warm, end, change) in self.resources.items():
            idle = self.resources_idle.get(metric)
            out.append(f"{metric}: {warm:g} at warm-up, {end:g} at the end ({change:+.1f}%)"
                       + (f", {idle:g} once idle" if idle is not None else ""))
        out.append("faults applied: " + ", ".join(f"{k} x{n}" for k, n in self.faults.items()))
        for name, why in self.skipped.items():
            out.append(f"fault skipped: {name}: {why}")
        out.append(f"service starts: {self.starts}; unexpected exits: {len(self.unexpected_exits)}; "
                   f"exit status on SIGTERM: {self.exit_status}")
        out.append("events: " + ", ".join(f"{k} {n}" for k, n in sorted(self.counts.items())))
        out += [f"note: {n}" for n in self.notes]
        out += [f"PROBLEM: {p}" for p in self.problems] or ["no problem found"]
        return out


# -- the folder, its mounts and the producers ---------------------------------------------------

class FolderGate:
    """Producers hold it shared for each file they write; a fault that takes the folder away holds it
    alone, so no file is half-written into the place of a missing folder (writer first)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = self._waiting = 0
        self._alone = False

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._alone or self._waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def alone(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            while self._alone or self._readers:
                self._cond.wait()
            self._waiting -= 1
            self._alone = True
        try:
            yield
        finally:
            with self._cond:
                self._alone = False
                self._cond.notify_all()


def run_quiet(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True)


class Layout:
    """workdir/vol holds the drop folder and the mv staging folder (one file system); with root,
    vol is a bind mount of a tmpfs (workdir/backing), so unmounting vol takes the folder away while
    the tmpfs keeps its files for the remount, and the ledger sits on a small tmpfs of its own."""

    LEDGER_FS_SIZE = "24m"

    def __init__(self, workdir: Path, cleanup: contextlib.ExitStack, report: SoakReport) -> None:
        self.workdir = workdir
        self.backing, self.vol, self.ledger_dir = workdir / "backing", workdir / "vol", workdir / "ledgerfs"
        self.src, self.logs = workdir / "src", workdir / "logs"
        for folder in (self.backing, self.vol, self.ledger_dir, self.src, self.logs):
            folder.mkdir(parents=True, exist_ok=True)
        self.mounts: list[Path] = []
        cleanup.callback(self.unmount_all)
        self.vol_mounted = self.ledger_fs = False
        if os.geteuid() != 0:
            why = "needs root (mount)"
            report.skipped["tmpfs_remount"] = report.skipped["ledger_full"] = why
        else:
            self.vol_mounted = self._mount(report, "tmpfs_remount", "-t", "tmpfs", "-o", "size=2g,mode=0755",
                                           "tmpfs", str(self.backing)) and \
                self._mount(report, "tmpfs_remount", "--bind", str(self.backing), str(self.vol))
            self.ledger_fs = self._mount(report, "ledger_full", "-t", "tmpfs", "-o",
                                         f"size={self.LEDGER_FS_SIZE},mode=0700", "tmpfs", str(self.ledger_dir))
        self.drop, self.staging = self.vol / "drop", self.vol / "staging"
        self.drop.mkdir(exist_ok=True)
        self.staging.mkdir(exist_ok=True)

    def _mount(self, report: SoakReport, fault: str, *args: str) -> bool:
        done = run_quiet("mount", *args)
        if done.returncode != 0:
            report.skipped[fault] = f"mount {' '.join(args)} failed: {done.stderr.strip() or done.returncode}"
            return False
        self.mounts.append(Path(args[-1]))
        return True

    def unmount_all(self) -> None:
        for point in reversed(self.mounts):
            if os.path.ismount(point):
                run_quiet("umount", "-l", str(point))
        self.mounts.clear()


@dataclass
class Dropped:
    relpath: str
    kind: str
    size: int
    sha256: str
    completed: bool
    slow_abort: bool = False


class Producers:
    """Threads that keep dropping files, each kind as a real writer does it."""

    KINDS = {"cp": 24, "rsync": 20, "mv": 20, "paused": 14, "abort": 22}

    def __init__(self, layout: Layout, gate: FolderGate, profile: Profile, seed: int, count: int = 3) -> None:
        self.layout, self.gate, self.profile = layout, gate, profile
        self.stop = threading.Event()
        self.dropped: list[Dropped] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._seq = itertools.count(1)
        self._rsync = shutil.which("rsync")
        self.threads = [threading.Thread(target=self._run, args=(random.Random(seed * 1000 + i),),
                                         name=f"producer-{i}", daemon=True) for i in range(count)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)

    def _run(self, rng: random.Random) -> None:
        kinds, weights = zip(*self.KINDS.items())
        while not self.stop.is_set():
            kind = rng.choices(kinds, weights)[0]
            try:
                self.produce(kind, rng)
            except OSError as exc:
                with self._lock:
                    self.errors.append(f"{kind}: {exc}")
            self.stop.wait(rng.uniform(*self.profile.gap))

    def _target(self, kind: str, rng: random.Random) -> tuple[int, str, bytes]:
        seq = next(self._seq)
        name = f"clip #{seq} ü.mp4" if seq % 9 == 0 else f"f{seq:05}.mp4"      # an awkward name now and then
        relpath = f"{kind}/d{seq // 15:03}/{name}"                               # new folders keep appearing
        roll = rng.random()
        size = rng.randint(1024, 64 * 1024) if roll < 0.7 else (
            rng.randint(64 * 1024, 512 * 1024) if roll < 0.95 else rng.randint(1024 * 1024, 3 * 1024 * 1024))
        return seq, relpath, rng.randbytes(size)

    def _record(self, item: Dropped) -> None:
        with self._lock:
            self.dropped.append(item)

    def batch(self, count: int, rng: random.Random) -> None:
        """A whole folder of small files written beside, then moved in at once (mv of a tree)."""
        seq = next(self._seq)
        staged = self.layout.staging / f"batch-{seq}"
        staged.mkdir()
        made = []
        for i in range(count):
            content = rng.randbytes(rng.randint(512, 4096))
            (staged / f"b{i:03}.mp4").write_bytes(content)
            made.append(Dropped(f"batch/{seq}/b{i:03}.mp4", "batch", len(content), hashlib.sha256(content).hexdigest(),
                                completed=True))
        with self.gate.shared():
            (self.layout.drop / "batch").mkdir(exist_ok=True)
            os.rename(staged, self.layout.drop / "batch" / str(seq))
        for item in made:
            self._record(item)

    def produce(self, kind: str, rng: random.Random) -> None:
        seq, relpath, content = self._target(kind, rng)
        digest = hashlib.sha256(content).hexdigest()
        if kind == "cp":                        # a writer that opens, writes and closes: cp
            source = self.layout.src / f"{seq}.src"
            source.write_bytes(content)
            try:
                with self.gate.shared():
                    final = self.layout.drop / relpath
                    final.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(source, final)
            finally:
                source.unlink()
        elif kind == "rsync":                   # a hidden temporary name, then a rename to the final one
            with self.gate.shared():
                final = self.layout.drop / relpath
                final.parent.mkdir(parents=True, exist_ok=True)
                if self._rsync:
                    source = self.layout.src / f"{seq}.src"
                    source.write_bytes(content)
                    try:
                        subprocess.run([self._rsync, str(source), str(final)], check=True, capture_output=True)
                    finally:
                        source.unlink()
                else:
                    temp = final.parent / f".{final.name}.{rng.randbytes(3).hex()}"
                    with open(temp, "wb") as handle:
                        for at in range(0, len(content), 64 * 1024):
                            handle.write(content[at:at + 64 * 1024])
                    os.rename(temp, final)
        elif kind == "mv":                      # written beside, on the same disk, then moved in
            with self.gate.shared():
                staged = self.layout.staging / f"{seq}.mp4"
                staged.write_bytes(content)
                final = self.layout.drop / relpath
                final.parent.mkdir(parents=True, exist_ok=True)
                os.rename(staged, final)
        elif kind == "paused":                  # half, a pause longer than settle_seconds, the rest
            with self.gate.shared():
                final = self.layout.drop / relpath
                final.parent.mkdir(parents=True, exist_ok=True)
                with open(final, "wb") as handle:
                    handle.write(content[: len(content) // 2])
                    handle.flush()
                    time.sleep(self.profile.pause)
                    handle.write(content[len(content) // 2:])
        else:                                   # abort: part of it, then deleted
            part = content[: max(1, len(content) // 3)]
            digest = hashlib.sha256(part).hexdigest()
            slow = False
            with self.gate.shared():
                final = self.layout.drop / relpath
                final.parent.mkdir(parents=True, exist_ok=True)
                if rng.random() < 0.5:          # deleted while still open
                    with open(final, "wb") as handle:
                        handle.write(part)
                        handle.flush()
                        time.sleep(rng.uniform(0.05, 0.4))
                        os.unlink(final)
                else:                           # closed, then deleted at once: before the close grace
                    with open(final, "wb") as handle:
                        handle.write(part)
                    closed = time.monotonic()
                    os.unlink(final)
                    slow = time.monotonic() - closed > 0.25
            self._record(Dropped(relpath, kind, len(part), digest, completed=False, slow_abort=slow))
            return
        self._record(Dropped(relpath, kind, len(content), digest, completed=True))


# -- the CDN and the service -------------------------------------------------------------------

class RecordingEmulator(CdnEmulator):
    """The emulator, also keeping every fetch outcome (superseded ones too): an import it verified
    and then replaced still counts as an import."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fetches: list[tuple[str, str, str]] = []        # (name, state, sha-256 or message)
        self.callbacks: list[tuple[str, str, str, float]] = []   # (name, state, cdn-push's answer, when)

    def _call_back(self, record: Any, outcome: dict[str, Any]) -> None:
        with self._lock:
            self.fetches.append((record.name, outcome["state"], outcome.get("sha256") or outcome.get("message", "")))
        super()._call_back(record, outcome)
        with self._lock:
            self.callbacks.append((record.name, outcome["state"], str(record.callback_result), time.time()))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Service:
    """`cdn_push.py watch` as a real process, its output in one log file per start."""

    def __init__(self, root: Path, python: str, config: Path, logs: Path, report: SoakReport) -> None:
        self.root, self.python, self.config, self.logs, self.report = root, python, config, logs, report
        self.process: subprocess.Popen | None = None
        self.started_at = 0.0
        self.log_files: list[Path] = []
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("CDN_PUSH_", "NOTIFY_SOCKET"))}

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self) -> None:
        path = self.logs / f"service-{len(self.log_files) + 1}.log"
        self.log_files.append(path)
        with open(path, "wb") as out:
            self.process = subprocess.Popen([self.python, str(self.root / "cdn_push.py"), "watch", "--config",
                                             str(self.config)], stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=self.env)
        self.started_at = time.monotonic()
        self.report.starts += 1
        deadline = time.monotonic() + 60
        while "watching " not in path.read_text(errors="replace"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the service did not start (exit {self.process.poll()}):\n"
                                   + path.read_text(errors="replace")[-3000:])
            time.sleep(0.05)

    def text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.log_files if p.exists())

    def count(self, needle: str) -> int:
        return self.text().count(needle)

    def signal(self, sig: int) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)

    def check_alive(self, why: str) -> None:
        """A service that ended on its own is a problem; like systemd (Restart=on-failure), start it again."""
        if self.process is None or self.process.poll() is None:
            return
        tail = self.log_files[-1].read_text(errors="replace").strip().splitlines()[-3:]
        self.report.unexpected_exits.append(f"exit {self.process.returncode} ({why}): {' | '.join(tail)}")
        self.start()

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGCONT)
            self.process.kill()
            self.process.wait(30)

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is not None:
            return self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.kill()
            return None


def proc_figures(pid: int) -> tuple[float, int, int] | None:
    """(RSS in MiB, open descriptors, threads) of a process, or None if it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    if fields.get("State", "").strip().startswith("Z"):
        return None
    return int(fields["VmRSS"].split()[0]) / 1024, fds, int(fields["Threads"])


class Sampler:
    """Every few seconds: the service's RSS, descriptors and threads, and a look at /status.json
    and /metrics as a monitoring system would; also notices a service that ended on its own."""

    def __init__(self, service: Service, monitor_url: str, every: float, t0: float) -> None:
        self.service, self.monitor_url, self.every, self.t0 = service, monitor_url, every, t0
        self.samples: list[tuple[float, int, float, int, int]] = []      # (t, pid, rss MiB, fds, threads)
        self.stop = threading.Event()
        self.scrapes = 0
        self.thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(self.every):
            self.take()

    def take(self) -> None:
        pid = self.service.pid
        figures = proc_figures(pid) if pid else None
        if figures:
            self.samples.append((time.monotonic() - self.t0, pid, *figures))
        for path in ("/status.json", "/metrics"):
            with contextlib.suppress(OSError, ValueError):
                with urllib.request.urlopen(self.monitor_url + path, timeout=2) as answer:
                    answer.read()
                self.scrapes += 1


# -- the faults ------------------------------------------------------------------------------

class Faults:
    def __init__(self, service: Service, emulator: RecordingEmulator, layout: Layout, gate: FolderGate,
                 profile: Profile, report: SoakReport, configs: "Configs", rng: random.Random,
                 producers: Producers) -> None:
        self.service, self.emulator, self.layout, self.gate = service, emulator, layout, gate
        self.profile, self.report, self.configs, self.rng = profile, report, configs, rng
        self.producers = producers
        self.full_since: list[float] = []           # wall clock: when each full-disk episode began
        self.moves = 0

    NAMES = ("sigkill_restart", "storm", "reload_storm", "folder_moved", "cdn_down", "ledger_full", "tmpfs_remount",
             "sigstop")

    def available(self) -> list[str]:
        return [n for n in self.NAMES[1:] if n not in self.report.skipped]

    def expected(self, name: str) -> float:
        """About how long one fault takes to apply."""
        p = self.profile
        return {"sigkill_restart": 3, "storm": p.storm_seconds, "reload_storm": p.reloads * 0.3 + 1,
                "folder_moved": p.moved_seconds, "cdn_down": p.down_seconds, "ledger_full": p.full_seconds,
                "tmpfs_remount": p.unmounted_seconds, "sigstop": p.stop_seconds}[name]

    def cycle_seconds(self) -> float:
        """About how long one round of every fault takes, with the service's recovery after each."""
        return sum(self.expected(name) + 10 for name in self.available())

    def apply(self, name: str) -> None:
        getattr(self, name)()
        self.report.faults[name] += 1
        self.service.check_alive(f"after {name}")

    def sigkill_restart(self) -> None:
        self.service.kill()
        self.service.start()

    def storm(self) -> None:
        """500/429 answers to a share of the API's requests, and the next few imports failed at the
        CDN's end (their callback says so): those files must be sent again and confirmed only then."""
        self.emulator.fault_choices = STORM_FAULTS
        self.emulator.inject(*(self.rng.choice(STORM_FAULTS) for _ in range(6)))
        with self.emulator._lock:
            self.emulator.fetch_faults.extend(["fetch error: storm"] * 3)
        self.emulator.fault_rate = self.profile.storm_rate
        try:
            time.sleep(self.profile.storm_seconds)
        finally:
            self.emulator.fault_rate = 0.0

    def cdn_down(self) -> None:
        self.emulator.go_down()
        try:
            time.sleep(self.profile.down_seconds)
        finally:
            self.emulator.come_up()

    def sigstop(self) -> None:
        self.service.signal(signal.SIGSTOP)
        try:
            time.sleep(self.profile.stop_seconds)
        finally:
            self.service.signal(signal.SIGCONT)

    def reload_storm(self) -> None:
        outcomes = lambda: self.service.count("configuration reloaded") + self.service.count(
            "configuration not reloaded")
        for _ in range(self.profile.reloads):
            self.configs.write(self.rng.choice(Configs.VARIANTS))
            self.service.signal(signal.SIGHUP)
            time.sleep(self.rng.uniform(0.05, 0.4))
            if self.service.process and self.service.process.poll() is not None:
                break                                   # check_alive() reports it
        before = outcomes()
        self.configs.write("base")
        self.service.signal(signal.SIGHUP)
        deadline = time.monotonic() + 20                # the last reload, of the valid file, is taken
        while outcomes() <= before and time.monotonic() < deadline and self.service.process.poll() is None:
            time.sleep(0.05)

    def folder_moved(self) -> None:
        self.moves += 1
        away = self.layout.vol / f"drop.away-{self.moves}"
        with self.gate.alone():
            os.rename(self.layout.drop, away)
            self.layout.drop.mkdir()
            time.sleep(self.profile.moved_seconds)
            for entry in sorted(away.iterdir()):        # the admin puts the files back: mv of whole trees
                os.rename(entry, self.layout.drop / entry.name)
            away.rmdir()

    def tmpfs_remount(self) -> None:
        with self.gate.alone():
            done = run_quiet("umount", "-l", str(self.layout.vol))
            if done.returncode != 0:
                raise RuntimeError(f"umount {self.layout.vol}: {done.stderr.strip()}")
            time.sleep(self.profile.unmounted_seconds)
            done = run_quiet("mount", "--bind", str(self.layout.backing), str(self.layout.vol))
            if done.returncode != 0:
                raise RuntimeError(f"mount --bind {self.layout.backing} {self.layout.vol}: {done.stderr.strip()}")

    def ledger_full(self) -> None:
        ballast = self.layout.ledger_dir / "ballast"
        try:
            with contextlib.suppress(OSError), open(ballast, "wb", buffering=0) as handle:
                while True:
                    handle.write(b"\0" * 65536)
            # Completely full, not one byte free, while a batch of files arrives that the service must
            # record (the other producers go on too). Whether a write then fails depends on whether
            # SQLite must grow a file (its WAL reuses its space), so a service that cannot ride out a
            # full disk is caught often, not always. Then room for the ledger's own writes, but less
            # than the 4 MiB under which cdn-push stops sending.
            full_since = time.monotonic()
            self.full_since.append(time.time())
            self.producers.batch(150, self.rng)
            time.sleep(max(0.0, full_since + 3 - time.monotonic()))
            os.truncate(ballast, max(0, ballast.stat().st_size - 1024 * 1024))
            time.sleep(max(0.0, self.profile.full_seconds - (time.monotonic() - full_since)))
        finally:
            with contextlib.suppress(FileNotFoundError):
                ballast.unlink()


class Configs:
    """The service's configuration file, and the variants a reload storm writes over it."""

    VARIANTS = ("base", "other_valid", "yaml_error", "unknown_key", "restart_only", "missing_folder")

    def __init__(self, path: Path, base: dict[str, Any]) -> None:
        self.path, self.base = path, base

    def text(self, variant: str) -> str:
        data = json.loads(json.dumps(self.base))
        if variant == "other_valid":                    # applied at once, means no other file
            data["api"]["timeout"] = 6
            data["callback"]["retry_delay"] = 1.5
        elif variant == "unknown_key":
            data["not_a_key"] = 1
        elif variant == "restart_only":
            data["workers"] = {"hash": 1, "submit": 2}
        elif variant == "missing_folder":
            data["folder"] = str(Path(data["folder"]).parent / "no-such-folder")
        text = yaml.safe_dump(data, allow_unicode=True)
        return "folder: [broken\n" + text if variant == "yaml_error" else text

    def write(self, variant: str) -> None:
        temp = self.path.with_suffix(".tmp")
        temp.write_text(self.text(variant), encoding="utf-8")
        temp.chmod(0o600)
        os.replace(temp, self.path)


# -- judging ---------------------------------------------------------------------------------

def read_ledger(path: Path) -> dict[str, dict[str, Any]]:
    """Every row of the ledger, read-only, by path."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        db.row_factory = sqlite3.Row
        return {row["path"]: dict(row) for row in
                db.execute("SELECT path, name, state, size, sha256, accepted_sha256, attempts, last_error FROM files")}
    finally:
        db.close()


def caught_up(expected: dict[str, Dropped], emulator: RecordingEmulator, ledger_path: Path) -> list[str]:
    """The completed files not yet imported with their content and confirmed in the ledger."""
    held = {f["name"]: f for f in emulator.snapshot()}
    try:
        rows = read_ledger(ledger_path)
    except sqlite3.Error as exc:
        return [f"ledger unreadable: {exc}"]
    behind = []
    for relpath, item in expected.items():
        cdn, row = held.get(relpath), rows.get(relpath)
        if not (cdn and cdn["state"] == "ready" and cdn["sha256"] == item.sha256 and row
                and row["state"] == "confirmed" and row["accepted_sha256"] == item.sha256):
            behind.append(f"{relpath}: CDN {cdn and (cdn['state'], cdn['message'])}, ledger "
                          f"{row and (row['state'], row['attempts'], row['last_error'])}")
    return behind


def judge(report: SoakReport, dropped: list[Dropped], emulator: RecordingEmulator, ledger_path: Path,
          unwritable: list[tuple[float, float]] = ()) -> None:
    """The figures and problems of the end state; `unwritable` are the (wall-clock) windows in which the
    ledger could not be written."""
    expected = {d.relpath: d for d in dropped if d.completed}
    aborted = {d.relpath: d for d in dropped if not d.completed}
    report.completed, report.aborted = len(expected), len(aborted)
    report.slow_aborts = sum(d.slow_abort for d in aborted.values())
    held = {f["name"]: f for f in emulator.snapshot()}
    rows = read_ledger(ledger_path)
    imports: dict[str, list[str]] = collections.defaultdict(list)
    for name, state, detail in emulator.fetches:
        report.counts["CDN fetch ready" if state == "ready" else f"CDN fetch failed ({detail})"] += 1
        if state == "ready":
            imports[name].append(detail)
    for status, number in collections.Counter(emulator.answers).items():
        report.counts[f"file/add answered {status}"] += number
    for _, state, answer, _ in emulator.callbacks:
        report.counts[f"{state} callbacks answered {answer}"] += 1
    # cdn-push answers a callback 503 ("call again later") only when it cannot record it: on its way
    # out (the soak stops the service once every file is confirmed) or while the ledger cannot be
    # written (the full-disk windows, until the service says it can write again). Any other 503 is a
    # callback lost by a running service (a SIGKILL or SIGSTOP shows as a connection error or timeout).
    refused = [name for name, _, answer, when in emulator.callbacks if answer == "503"
               and not any(start - 1.5 <= when <= end + 1.5 for start, end in unwritable)]
    if refused:
        report.problems.append(f"{len(refused)} callbacks answered 503 by the running service outside the "
                               f"full-disk windows (their files were left to file/list): {refused[:5]}")

    problems = report.problems
    behind = caught_up(expected, emulator, ledger_path)
    late = {line.split(": CDN ", 1)[0] for line in behind}
    report.confirmed = sum(1 for relpath, item in expected.items()
                           if imports[relpath] == [item.sha256] and relpath not in late)
    if behind:
        problems.append(f"{len(behind)} completed files not imported and confirmed: " + "; ".join(behind[:5]))
    dups = {name: shas for name, shas in imports.items() if len(shas) > 1}
    report.duplicates = len(dups)
    if dups:
        problems.append(f"{len(dups)} names imported more than once: " + "; ".join(
            f"{n} x{len(s)}" for n, s in list(dups.items())[:5]))
    partial = [name for name, shas in imports.items()
               if (name in expected and any(s != expected[name].sha256 for s in shas))
               or (name in aborted and not aborted[name].slow_abort)]
    report.partials_confirmed = len(partial)
    if partial:
        problems.append(f"partial content imported for {len(partial)} files: {partial[:5]}")
    taken_slow = [name for name in imports if name in aborted and aborted[name].slow_abort]
    if taken_slow:
        report.notes.append(f"{len(taken_slow)} aborted files closed and left longer than the close grace were "
                            "imported as they were (legitimate: they looked complete)")
    report.partials_submitted = sum(
        1 for request in emulator.requests
        if (request["name"] in expected and request.get("chksum") != expected[request["name"]].sha256)
        or (request["name"] in aborted and not aborted[request["name"]].slow_abort))
    unknown = sorted(set(held) - set(expected) - set(aborted))
    if unknown:
        problems.append(f"the CDN holds names no producer completed: {unknown[:5]}")

    # The ledger against the emulator's record, name by name, both ways.
    mismatches = []
    by_name = {row["name"]: row for row in rows.values()}
    for name, cdn in held.items():
        row = by_name.get(name)
        if cdn["state"] == "ready":
            if row is None or row["state"] not in ("confirmed", "gone") or row["accepted_sha256"] != cdn["sha256"]:
                mismatches.append(f"{name}: CDN ready {cdn['sha256'][:12]}, ledger "
                                  f"{row and (row['state'], (row['accepted_sha256'] or '')[:12])}")
        elif row is not None and row["state"] == "confirmed":
            mismatches.append(f"{name}: CDN {cdn['state']} ({cdn['message']}), ledger confirmed")
    for row in rows.values():
        if row["state"] == "confirmed" and row["name"] not in held:
            mismatches.append(f"{row['name']}: ledger confirmed, the CDN does not hold it")
        elif row["path"] in expected and row["state"] != "confirmed":
            mismatches.append(f"{row['name']}: ledger {row['state']} ({row['last_error']})")
        elif row["path"] in aborted and row["state"] not in ("gone",) and row["state"] != "confirmed":
            report.notes.append(f"aborted {row['path']} left in the ledger as {row['state']}")
    report.mismatches = len(mismatches)
    if mismatches:
        problems.append(f"{len(mismatches)} ledger/emulator mismatches: " + "; ".join(mismatches[:5]))


# Growth that bounded pools explain, whatever the percentage: the descriptors of the API's keep-alive
# connections (one session per submit worker and one for file/list questions, each open or not
# depending on which thread sent last and whether an outage dropped them), twice, since a client
# retired by a reload or by the recovery from a full ledger disk keeps its connections until it is
# closed or collected; and the hash pool's threads (a ThreadPoolExecutor of workers.hash + 1, grown on
# demand). With about 20 descriptors and 11 threads, 10% is 2 and 1: less than those pools move by.
# A leak grows past them.
POOL_SLACK = {"open fds": 2 * (SUBMIT_WORKERS + 1), "threads": HASH_WORKERS + 1}


def unwritable_windows(log_text: str, starts: list[float], profile: Profile) -> list[tuple[float, float]]:
    """From each full-disk episode's start to the service's first "can be written again" after it
    (its log's whole seconds), or, with no such line, to a while after the disk was freed."""
    recovered = sorted(time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S"))
                       for stamp in WRITABLE_AGAIN.findall(log_text))
    return [(start, next((t + 1.0 for t in recovered if t + 1.0 >= start), start + profile.full_seconds + 30))
            for start in starts]


def resource_figures(report: SoakReport, samples: list[tuple[float, int, float, int, int]], pid: int,
                     warm_from: float, end: float, profile: Profile) -> None:
    """Medians over a window from `warm_from` and over the last window before the producers stopped."""
    mine = [s for s in samples if s[1] == pid]
    warm = [s for s in mine if warm_from <= s[0] < warm_from + profile.window]
    last = [s for s in mine if end - profile.window <= s[0] < end]
    if not warm or not last or warm_from + profile.window > end - profile.window:
        report.notes.append("too few samples of the last service process for the resource figures")
        return
    for index, metric in ((2, "RSS MiB"), (3, "open fds"), (4, "threads")):
        before = statistics.median(s[index] for s in warm)
        after = statistics.median(s[index] for s in last)
        change = 100.0 * (after - before) / before
        report.resources[metric] = (round(before, 1), round(after, 1), change)
        allowed = max(before * profile.bound / 100.0, POOL_SLACK.get(metric, 0))
        if after - before > allowed:
            report.problems.append(f"{metric} grew {change:.1f}% after warm-up ({before:g} -> {after:g}; "
                                   f"bound {profile.bound:g}%, or {POOL_SLACK.get(metric, 0)} for bounded pools)")


# -- the run ----------------------------------------------------------------------------------

def run_soak(minutes: float, workdir: Path, *, seed: int = 19, root: Path = ROOT, python: str = sys.executable,
             skip: tuple[str, ...] = (), log: Callable[[str], None] = lambda line: None) -> SoakReport:
    """Run the soak for `minutes` of producing under faults, then let the service catch up and judge.
    `root` is the folder whose cdn_push.py runs; `skip` names faults to leave out (Faults.NAMES)."""
    profile = profile_for(minutes)
    report = SoakReport(minutes=minutes, profile="long" if profile is LONG else "short")
    unknown = set(skip) - set(Faults.NAMES)
    if unknown:
        raise ValueError(f"unknown faults {sorted(unknown)}; known: {', '.join(Faults.NAMES)}")
    for name in skip:
        report.skipped[name] = "left out on request"
    rng = random.Random(seed)
    t0 = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as cleanup:
        layout = Layout(workdir, cleanup, report)
        emulator = RecordingEmulator(login=LOGIN, password=PASSWORD, seed=seed).start()
        cleanup.callback(emulator.stop)
        origin_port, monitor_port = free_port(), free_port()
        ledger = layout.ledger_dir / "ledger.sqlite3"
        base = {
            "folder": str(layout.drop), "ledger": str(ledger),
            "api": {"url": emulator.api_url, "login": LOGIN, "password": PASSWORD, "timeout": 5,
                    "retry": {"attempts": 12, "backoff_base": 0.5, "backoff_max": 2, "max_seconds": 30}},
            "origin": {"serve": {"listen": f"127.0.0.1:{origin_port}", "public_url": f"http://127.0.0.1:{origin_port}"}},
            "workers": {"hash": HASH_WORKERS, "submit": SUBMIT_WORKERS},
            "scan": {"settle_seconds": profile.settle, "rescan_interval": profile.rescan},
            "confirm": {"wait_seconds": profile.confirm_wait, "poll_interval": 1},
            "callback": {"retry_delay": 1, "max_attempts": 5},
            "monitor": {"listen": f"127.0.0.1:{monitor_port}"},
        }
        configs = Configs(workdir / "config.yaml", base)
        configs.write("base")
        service = Service(root, python, configs.path, layout.logs, report)
        cleanup.callback(service.kill)
        service.start()
        log(f"service started (pid {service.pid}); producing for {minutes:g} min")
        gate = FolderGate()
        producers = Producers(layout, gate, profile, seed)
        sampler = Sampler(service, f"http://127.0.0.1:{monitor_port}", profile.sample_every, t0)
        faults = Faults(service, emulator, layout, gate, profile, report, configs, rng, producers)
        producers.start()
        sampler.thread.start()
        cleanup.callback(sampler.stop.set)
        cleanup.callback(producers.stop.set)

        start = time.monotonic()
        duration = minutes * 60
        first, last = start + 0.08 * duration, start + duration - profile.window - profile.recovery
        plan = [] if "sigkill_restart" in skip else ["sigkill_restart"]   # once, early: the baseline is after it
        cycles = max(1, int((last - first) / faults.cycle_seconds()))
        for _ in range(cycles):
            cycle = faults.available()
            if report.profile == "long":
                rng.shuffle(cycle)
            plan += cycle
        slot = (last - faults.expected(plan[-1]) - first) / max(1, len(plan) - 1)
        first_round_done = None
        for index, name in enumerate(plan):
            if index == len(faults.available()) + (plan[0] == "sigkill_restart"):
                first_round_done = time.monotonic() - t0
            wait = first + index * slot - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            if time.monotonic() + faults.expected(name) > last + slot and name != "sigkill_restart":
                report.notes.append(f"no time left for fault {name}")
                continue
            log(f"{time.monotonic() - start:6.1f}s fault {name}")
            faults.apply(name)
        time.sleep(max(0.0, start + duration - time.monotonic()))
        producers.finish()
        produced_until = time.monotonic() - t0
        log(f"{time.monotonic() - start:6.1f}s producers stopped: {len(producers.dropped)} files")
        if producers.errors:
            report.problems.append(f"{len(producers.errors)} producer errors: {producers.errors[:3]}")
        for item in producers.dropped:
            report.dropped[item.kind] += 1

        expected = {d.relpath: d for d in producers.dropped if d.completed}
        deadline = time.monotonic() + profile.converge
        stopped = time.monotonic()
        while time.monotonic() < deadline:
            service.check_alive("while catching up")
            if not caught_up(expected, emulator, ledger) and emulator.wait_idle(0.1):
                report.converge_seconds = time.monotonic() - stopped
                break
            time.sleep(0.5)
        log(f"caught up: {report.converge_seconds}")
        sampler.stop.set()
        sampler.thread.join(10)
        figures = proc_figures(service.pid) if service.pid else None
        if figures:
            report.resources_idle = {"RSS MiB": round(figures[0], 1), "open fds": figures[1], "threads": figures[2]}
        baseline_from = service.started_at - t0 + profile.warmup
        if report.profile == "long":
            baseline_from = max(baseline_from, (first_round_done or produced_until) + profile.warmup)
        resource_figures(report, sampler.samples, service.pid, baseline_from, produced_until, profile)
        with open(layout.logs / "resources.csv", "w") as out:
            out.write("seconds,pid,rss_mib,fds,threads\n")
            out.writelines(f"{t:.1f},{pid},{rss:.1f},{fds},{threads}\n" for t, pid, rss, fds, threads in sampler.samples)
        report.counts["status page scrapes"] = sampler.scrapes
        report.exit_status = service.stop()
        if report.exit_status != 0:
            report.problems.append(f"the service exited {report.exit_status} on SIGTERM")
        text = service.text()
        for label, needle in (("reloads applied", "configuration reloaded"),
                              ("reloads refused", "configuration not reloaded"),
                              ("folder losses noticed", "is not watched; watching it again"),
                              ("'trying again in' lines", "; trying again in"),
                              ("ledger-full pauses", "nothing more is sent")):
            report.counts[label] = text.count(needle)
        confirmed_names = collections.Counter(CONFIRMED_LINE.findall(text))
        report.counts["confirmations logged"] = sum(confirmed_names.values())
        report.counts["names confirmed twice in the log"] = sum(1 for n in confirmed_names.values() if n > 1)
        if "Traceback" in text:
            at = text.index("Traceback")
            report.problems.append("a traceback in the service's log: " + text[at:at + 800])
        for exit_line in report.unexpected_exits:
            report.problems.append(f"the service ended on its own: {exit_line}")
        report.counts["file/add requests"] = len(emulator.requests)
        judge(report, producers.dropped, emulator, ledger, unwritable_windows(text, faults.full_since, profile))
    report.wall_seconds = time.monotonic() - t0
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/soak.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0,
                        help="minutes of dropping files under faults (default 30; under 10 uses the short profile)")
    parser.add_argument("--seed", type=int, default=19, help="seed of the producers and the fault script (default 19)")
    parser.add_argument("--workdir", type=Path, default=None, help="work folder (default: a new temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, ledger, config)")
    parser.add_argument("--skip", action="append", default=[], metavar="FAULT", choices=Faults.NAMES,
                        help="leave out this fault (repeatable): " + ", ".join(Faults.NAMES))
    parser.add_argument("--root", type=Path, default=ROOT,
                        help="the folder whose cdn_push.py runs as the service (default: this tree)")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cdn-push-soak-"))
    try:
        report = run_soak(args.minutes, workdir, seed=args.seed, root=args.root.resolve(), skip=tuple(args.skip),
                          log=lambda line: print(line, flush=True))
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
        elif args.keep:
            print(f"work folder kept: {workdir}")
    print("\n".join(report.lines()))
    return 0 if not report.problems else 1


if __name__ == "__main__":
    raise SystemExit(main())
