#!/usr/bin/env python3
"""cdn-push benchmark: every target beside a baseline measured in the same run, as ratios.

    .venv/bin/python bench/bench.py              # all rows (needs ~8 GB free in $TMPDIR)
    .venv/bin/python bench/bench.py --quick      # small sizes, a smoke run
    .venv/bin/python bench/bench.py --rows 1,4,6 --million

Not part of the test suite: timings are only compared with each other, never asserted.
A row whose baseline tool is missing is skipped and says so. Row 13 needs root, cgroup v1's memory
controller and /proc/sys/vm/drop_caches (else it is skipped, saying why); it drops the whole
machine's page cache and writes 3 GiB to a disk (the work folder, or /var/tmp if that is tmpfs).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import resource
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import cdn_push  # noqa: E402
from cdn_push import Ledger, Pipeline  # noqa: E402


@dataclass
class Row:
    number: int
    target: str
    baseline: str
    baseline_s: float | None
    ours_s: float | None
    ratio: float | None
    limit: str
    ok: bool | None
    rss_mb: float | None = None
    note: str = ""


def timed(fn, repeat: int = 3) -> float:
    """Best wall time of `repeat` runs: the run least disturbed by the rest of the machine."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def sh(command: str) -> None:
    subprocess.run(command, shell=True, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def make_config(folder: Path, ledger: Path, **extra) -> cdn_push.Config:
    data = {"folder": str(folder), "ledger": str(ledger), "scan": {"settle_seconds": 0},
            "origin": {"base_url": "http://origin.example.com/v", "check": False},
            "api": {"login": "bench", "password": "bench-secret", "retry": {"backoff_base": 0.05}},
            # The rows measure sending; the emulator is held, so no file/list question would ever see "ready".
            "confirm": {"poll": False}}
    for key, value in extra.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return cdn_push.parse_config(data, env={}, base_dir=folder.parent)


# -- child process: one scan pass, measured from outside ------------------------------------

def child_scan(folder: str, ledger: str, hash_workers: int) -> None:
    config = make_config(Path(folder), Path(ledger), workers={"hash": hash_workers})
    with Ledger.open(config.ledger) as db:
        pipeline = Pipeline(config, db, None)
        pipeline.scan_and_hash()
        summary = pipeline.summary
    print(json.dumps({"new": summary.new, "unchanged": summary.unchanged, "bytes_hashed": summary.bytes_hashed,
                      "maxrss_mb": peak_rss_mb()}))


def peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM). Not ru_maxrss: Linux folds the memory of the process that
    forked this one into it at exec (subprocess's vfork shares the parent's), so a child of a bench
    that has hashed 2 GiB reported the bench's peak, not its own."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def installed_env() -> dict[str, str]:
    """The environment without PYTHONDONTWRITEBYTECODE: modules run from cached bytecode, as
    install.sh leaves them (it precompiles); otherwise each run would compile cdn_push.py first."""
    return {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}


def run_child(folder: Path, ledger: Path, hash_workers: int = 2) -> tuple[float, dict]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--child-scan", str(folder), str(ledger), str(hash_workers)],
                          capture_output=True, text=True, check=True, env=installed_env())
    return time.perf_counter() - start, json.loads(done.stdout.strip().splitlines()[-1])


# Python's own floor for rows 3 and 4, a child with no imports: the same walk as a bare loop of
# os.scandir and DirEntry.stat (row 4), and reading and hashing each file too (row 3). What no
# design in one CPython process gets under; each row's note gives it beside the baseline.
PYTHON_FLOOR = r"""
import os, sys
hashing = sys.argv[2] == "hash"
if hashing:
    from hashlib import sha256
stack = [sys.argv[1]]
while stack:
    with os.scandir(stack.pop()) as it:
        for e in it:
            if e.is_dir(follow_symlinks=False):
                stack.append(e.path)
                continue
            e.stat(follow_symlinks=False)
            if hashing:
                with open(e.path, "rb") as f:
                    sha256(f.read()).hexdigest()
"""


def python_floor(tree: Path, hashing: bool) -> float:
    return timed(lambda: subprocess.run([sys.executable, "-c", PYTHON_FLOOR, str(tree), "hash" if hashing else "stat"],
                                        check=True))


# -- workloads -----------------------------------------------------------------------------

def write_random(path: Path, size: int) -> None:
    chunk = os.urandom(16 * 1024 * 1024)
    with open(path, "wb") as handle:
        left = size
        while left:
            handle.write(chunk[:min(left, len(chunk))])
            left -= min(left, len(chunk))


def small_tree(root: Path, count: int, per_dir: int = 100, empty: bool = False) -> None:
    rng = random.Random(1)
    blob = os.urandom(8192)
    for i in range(count):
        folder = root / f"d{i // per_dir:05}"
        if i % per_dir == 0:
            folder.mkdir(parents=True, exist_ok=True)
        size = 0 if empty else rng.randint(1024, 8192)
        with open(folder / f"f{i:07}.mp4", "wb") as handle:
            handle.write(blob[:size])


def entry_for(path: Path) -> cdn_push.FileEntry:
    st = path.stat()
    return cdn_push.FileEntry(path.name, str(path), st.st_size, st.st_mtime_ns, st.st_ino)


# -- rows ------------------------------------------------------------------------------------

def rows_hashing(work: Path, big_mib: int, wanted: set[int]) -> list[Row]:
    rows = []
    big = work / "big"
    big.mkdir(exist_ok=True)
    files = [big / "one.bin", big / "two.bin"]
    for path in files:
        if not path.exists():
            write_random(path, big_mib * 1024 * 1024)
    for path in files:
        cdn_push.hash_file(entry_for(path))              # warm the page cache
    if 1 in wanted:
        if shutil.which("openssl"):
            base = timed(lambda: sh(f"openssl dgst -sha256 {files[0]}"))
            ours = timed(lambda: cdn_push.hash_file(entry_for(files[0])))
            rows.append(Row(1, f"hash one {big_mib} MiB file", "openssl dgst -sha256", base, ours, ours / base,
                            "<= 1.00", ours / base <= 1.0))
        else:
            rows.append(Row(1, "hash one file", "openssl", None, None, None, "<= 1.00", None, note="openssl missing"))
    if 2 in wanted:
        sequential = timed(lambda: [cdn_push.hash_file(entry_for(p)) for p in files], repeat=2)

        def parallel():
            ledger = fresh_ledger(work, "two.sqlite3")
            config = make_config(big, ledger, workers={"hash": 2})
            with Ledger.open(ledger) as db:
                Pipeline(config, db, None).scan_and_hash()

        ours = timed(parallel, repeat=2)
        rows.append(Row(2, f"hash two {big_mib} MiB files", "the same two, one after the other", sequential, ours,
                        ours / sequential, "<= 0.55", ours / sequential <= 0.55))
    return rows


def rows_tree(work: Path, count: int, million: bool, wanted: set[int]) -> list[Row]:
    rows = []
    tree = work / f"tree{count}"
    if not tree.exists():
        print(f"  making {count} small files ...", flush=True)
        small_tree(tree, count)
    sh(f"find {tree} -type f -print0 | xargs -0 cat > /dev/null")   # page cache
    ledger = work / "tree.sqlite3"
    first_rss = None
    if wanted & {3, 4, 5}:
        if not shutil.which("sha256sum") or not shutil.which("xargs"):
            rows.append(Row(3, "first pass", "find | xargs sha256sum", None, None, None, "<= 1.50", None,
                            note="sha256sum or xargs missing"))
        base = timed(lambda: sh(f"find {tree} -type f -print0 | xargs -0 -P2 sha256sum > /dev/null"))
        firsts = []
        for _ in range(2):
            elapsed, report = run_child(tree, fresh_ledger(work, "tree.sqlite3"))
            firsts.append((elapsed, report))
        elapsed, report = min(firsts, key=lambda item: item[0])
        first_rss = report["maxrss_mb"]
        # As after a real run: the CDN accepted every file, so a rerun finds them all unchanged.
        with Ledger.open(ledger) as db:
            db.mark_all_accepted()
        if 3 in wanted:
            floor = python_floor(tree, hashing=True)
            rows.append(Row(3, f"first pass, {count} small files (scan+hash+ledger)",
                            "find | xargs -0 -P2 sha256sum", base, elapsed, elapsed / base, "<= 1.50",
                            elapsed / base <= 1.5, first_rss,
                            f"{report['new']} new; Python's floor (scandir, stat, read, sha256 on one core, no "
                            f"ledger) {floor:.3f}s = {floor / base:.2f}x"))
        if 4 in wanted:
            base = timed(lambda: sh(f"find {tree} -type f -printf '%s %T@\\n' > /dev/null"))
            reruns = [run_child(tree, ledger) for _ in range(3)]
            elapsed, report = min(reruns, key=lambda item: item[0])
            floor = python_floor(tree, hashing=False)
            rows.append(Row(4, f"rerun, {count} unchanged files", "find -printf '%s %T@'", base, elapsed,
                            elapsed / base, "<= 3.00 and 0 bytes read",
                            elapsed / base <= 3.0 and report["bytes_hashed"] == 0, report["maxrss_mb"],
                            f"{report['bytes_hashed']} bytes of content read, {report['unchanged']} unchanged; "
                            f"Python's floor (scandir and stat, no ledger) {floor:.3f}s = {floor / base:.2f}x"))
    if 5 in wanted:
        rows.append(Row(5, f"peak RSS, first pass over {count} files", "limit 100 MB", 100.0, first_rss,
                        first_rss / 100.0 if first_rss else None, "<= 1.00",
                        first_rss is not None and first_rss <= 100, first_rss))
        if million:
            huge = work / "tree1M"
            if not huge.exists():
                print("  making 1,000,000 empty files ...", flush=True)
                small_tree(huge, 1_000_000, per_dir=1000, empty=True)
            elapsed, report = run_child(huge, fresh_ledger(work, "huge.sqlite3"))
            ratio = report["maxrss_mb"] / first_rss
            rows.append(Row(5, "peak RSS, first pass over 1,000,000 files", f"the {count}-file figure", first_rss,
                            report["maxrss_mb"], ratio, "< 1.50", ratio < 1.5, report["maxrss_mb"],
                            f"took {elapsed:.1f}s"))
        else:
            rows.append(Row(5, "peak RSS over 1,000,000 files", "", None, None, None, "< 1.50", None,
                            note="skipped: pass --million"))
    return rows


def start_emulator(delay: float) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, str(ROOT / "cdn_emulator.py"), "--port", str(port),
                                "--login", "bench", "--password", "bench-secret", "--answer-delay", str(delay)],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    process.stdout.readline()
    return process, f"http://127.0.0.1:{port}/api2"


def fresh_ledger(work: Path, name: str) -> Path:
    for leftover in work.glob(f"{name}*"):
        leftover.unlink()
    return work / name


def timed_submit(folder: Path, ledger: Path, workers: int, **api) -> tuple[int, float]:
    """Scan a folder into a fresh ledger, then time submitting everything: (files submitted, seconds)."""
    config = make_config(folder, ledger, api=api, workers={"submit": workers})
    with Ledger.open(ledger) as db:
        pipeline = Pipeline(config, db, cdn_push.CdnClient(config.api, pool_size=workers))
        pipeline.scan_and_hash()
        start = time.perf_counter()
        pipeline.submit_pending()
        return pipeline.summary.submitted, time.perf_counter() - start


def rows_api(work: Path, wanted: set[int]) -> list[Row]:
    rows = []
    folder = work / "api"
    if not folder.exists():
        small_tree(folder, 1000, per_dir=100)
    workers = 8
    if 6 in wanted:
        emulator, url = start_emulator(0.05)
        try:
            submitted, elapsed = timed_submit(folder, fresh_ledger(work, "api.sqlite3"), workers, url=url)
            ideal = workers / 0.05
            rate = submitted / elapsed
            rows.append(Row(6, f"submit 1000 files, API answers after 50 ms, {workers} workers",
                            f"ideal {ideal:.0f} req/s", 1000 / ideal, elapsed, rate / ideal, ">= 0.80",
                            rate / ideal >= 0.8, note=f"{rate:.0f} req/s"))
        finally:
            emulator.terminate()
        emulator, url = start_emulator(0.0)
        try:
            limit = 40.0
            submitted, elapsed = timed_submit(folder / "d00000", fresh_ledger(work, "rate.sqlite3"), workers,
                                              url=url, rate_limit=limit)
            rate = (submitted - 1) / elapsed       # n requests spaced 1/limit apart take (n - 1)/limit s
            rows.append(Row(6, f"rate limit {limit:g} req/s", "configured rate", limit, rate, rate / limit,
                            "0.95 .. 1.05", 0.95 <= rate / limit <= 1.05, note=f"{rate:.1f} req/s"))
        finally:
            emulator.terminate()
    return rows


def row_watch(work: Path, files: int = 200) -> Row:
    folder = work / "watch"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    emulator, url = start_emulator(0.0)
    config = make_config(folder, fresh_ledger(work, "watch.sqlite3"), api={"url": url}, scan={"settle_seconds": 2})
    stop = threading.Event()
    ledger = Ledger.open(config.ledger)
    service = cdn_push.WatchService(config, ledger, stop=stop)
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    time.sleep(1.0)
    last_write: dict[str, float] = {}
    rng = random.Random(3)

    def writer(names: list[str]) -> None:
        for name in names:
            time.sleep(rng.uniform(0, 0.15))
            with open(folder / name, "wb") as handle:
                for _ in range(3):
                    handle.write(os.urandom(4096))
                    handle.flush()
                    time.sleep(rng.uniform(0, 0.05))
                last_write[name] = time.time()

    names = [f"w{i:03}.mp4" for i in range(files)]
    writers = [threading.Thread(target=writer, args=(names[i::4],)) for i in range(4)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    import requests
    deadline = time.time() + 30
    while time.time() < deadline:
        state = requests.get(url.rsplit("/", 1)[0] + "/_emulator/state", timeout=5).json()
        if len(state) >= files:
            break
        time.sleep(0.2)
    stop.set()
    thread.join(30)
    ledger.close()
    emulator.terminate()
    latencies = sorted(f["queued_at"] - last_write[f["name"]] for f in state if f["name"] in last_write)
    p95 = latencies[int(len(latencies) * 0.95) - 1] if latencies else float("nan")
    return Row(7, f"watch: last write -> import request, {files} files, settle 2 s", "limit 3 s (p95)", 3.0, p95,
               p95 / 3.0, "<= 1.00", p95 <= 3.0 and len(latencies) == files,
               note=f"median {statistics.median(latencies):.2f}s, {len(latencies)} of {files} imported")


def row_origin(work: Path, big_mib: int) -> list[Row]:
    path = work / "big" / "one.bin"
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if not shutil.which("curl"):
        return [Row(8, "built-in origin vs nginx", "nginx", None, None, None, ">= 0.80", None, note="curl missing")]
    port = free_port()
    config = make_config(path.parent, fresh_ledger(work, "origin.sqlite3"),
                         origin={"base_url": None, "serve": {"listen": f"127.0.0.1:{port}",
                                                             "public_url": f"http://127.0.0.1:{port}"}})
    with Ledger.open(config.ledger) as db:
        Pipeline(config, db, None).scan_and_hash()
    signer = cdn_push.UrlSigner(b"bench-secret-bench-secret-bench!")
    url = signer.location(config.origin.serve.public_url, "one.bin", int(time.time()) + 3600)
    server = cdn_push.OriginServer(config, signer, cdn_push.CallbackInbox()).start()
    rows = []
    try:
        ours = timed(lambda: sh(f"curl -sf -o /dev/null '{url}'"))
        size = path.stat().st_size
        expected = hashlib.sha256(path.read_bytes()).hexdigest()
        third = size // 3
        parts = [(0, third - 1), (third, 2 * third - 1), (2 * third, size - 1)]
        outs = [work / f"part{i}" for i in range(3)]
        procs = [subprocess.Popen(["curl", "-sf", "-r", f"{a}-{b}", "-o", str(out), url])
                 for (a, b), out in zip(parts, outs)]
        codes = [p.wait() for p in procs]
        digest = hashlib.sha256()
        for out in outs:
            digest.update(out.read_bytes())
            out.unlink()
        ranges_ok = codes == [0, 0, 0] and digest.hexdigest() == expected
        if not nginx:
            rows.append(Row(8, f"origin: download {big_mib} MiB", "nginx (sendfile on)", None, ours, None, ">= 0.80",
                            None, note="nginx missing (apt-get install nginx-light); "
                                       f"3 range streams {'correct' if ranges_ok else 'WRONG'}"))
            return rows
        nport = free_port()
        conf = work / "nginx.conf"
        user = "user root;" if os.getuid() == 0 else ""   # its workers must read our temporary folder
        conf.write_text(f"""daemon off; {user} worker_processes 1; pid {work}/nginx.pid; error_log /dev/null;
events {{ worker_connections 64; }}
http {{ access_log off; sendfile on; tcp_nopush on;
  server {{ listen 127.0.0.1:{nport}; root {path.parent}; }} }}
""")
        proc = subprocess.Popen([nginx, "-c", str(conf), "-p", str(work)], stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        try:
            base = timed(lambda: sh(f"curl -sf -o /dev/null http://127.0.0.1:{nport}/one.bin"))
        finally:
            proc.terminate()
            proc.wait()
        throughput_ratio = base / ours
        rows.append(Row(8, f"origin: one client downloads {big_mib} MiB", "nginx (sendfile on)", base, ours,
                        throughput_ratio, ">= 0.80 (throughput)", throughput_ratio >= 0.8 and ranges_ok,
                        note=f"3 concurrent range downloads {'correct' if ranges_ok else 'WRONG'}"))
    finally:
        server.stop()
    return rows


# -- rows 9-11: the streaming pipeline ---------------------------------------------------------

def in_process_emulator(delay: float):
    from cdn_emulator import CdnEmulator

    emulator = CdnEmulator(login="bench", password="bench-secret", answer_delay=delay).start()
    emulator.hold()            # the fetch queue waits: only the API's answers are measured
    return emulator


def big_files(folder: Path, count: int, size: int) -> None:
    if folder.exists() and len(list(folder.iterdir())) == count:
        return
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    old = time.time() - 3600
    for i in range(count):
        write_random(folder / f"v{i:02}.mp4", size)
        os.utime(folder / f"v{i:02}.mp4", (old, old))


def one_shot(folder: Path, ledger: Path, url: str, **sections) -> tuple[float, cdn_push.RunSummary]:
    config = make_config(folder, ledger, api={"url": url}, **sections)
    with Ledger.open(ledger) as db:
        client = cdn_push.CdnClient(config.api, pool_size=config.submit_workers)
        start = time.time()
        summary = Pipeline(config, db, client).run_once()
        client.close()
    return start, summary


def row_first_import(work: Path, size_mib: int) -> Row:
    folder = work / "first"
    big_files(folder, 24, size_mib * 1024 * 1024)
    emulator = in_process_emulator(0.0)
    try:
        start, summary = one_shot(folder, fresh_ledger(work, "first.sqlite3"), emulator.api_url)
        end = time.time()
        first = min(f["queued_at"] for f in emulator.snapshot())
    finally:
        emulator.stop()
    share = (first - start) / (end - start)
    return Row(9, f"first pass, 24 x {size_mib} MiB: first import request", "whole pass", end - start,
               first - start, share, "<= 0.10", share <= 0.10 and summary.submitted == 24,
               note=f"first request after {first - start:.2f}s of {end - start:.2f}s")


def row_drop_during_backlog(work: Path, backlog: int = 200, drops: int = 20) -> Row:
    folder = work / "backlog"
    shutil.rmtree(folder, ignore_errors=True)
    small_tree(folder, backlog, per_dir=backlog)
    old = time.time() - 3600
    for path in folder.rglob("*.mp4"):
        os.utime(path, (old, old))
    emulator = in_process_emulator(0.2)
    settle = 1.0
    config = make_config(folder, fresh_ledger(work, "backlog.sqlite3"), api={"url": emulator.api_url},
                         scan={"settle_seconds": settle}, workers={"submit": 2})
    stop = threading.Event()
    ledger = Ledger.open(config.ledger)
    service = cdn_push.WatchService(config, ledger, stop=stop)
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    closed: dict[str, float] = {}
    try:
        while len(emulator.requests) < 10:          # the backlog is being sent
            time.sleep(0.01)
        for i in range(drops):
            name = f"drop{i:02}.mp4"
            with open(folder / name, "wb") as handle:
                handle.write(os.urandom(50_000))
            closed[name] = time.time()
            time.sleep(0.4)
        deadline = time.time() + 60
        while time.time() < deadline and not set(closed) <= {f["name"] for f in emulator.snapshot()}:
            time.sleep(0.05)
        arrived = {f["name"]: f["queued_at"] for f in emulator.snapshot()}
        left = backlog + drops - len(arrived)
    finally:
        stop.set()
        thread.join(60)
        ledger.close()
        emulator.stop()
    latencies = sorted(arrived[name] - at for name, at in closed.items() if name in arrived)
    p95 = latencies[max(0, int(len(latencies) * 0.95) - 1)] if latencies else float("nan")
    limit = settle + 1.5
    return Row(10, f"watch: drop during a {backlog}-file backlog (0.2 s API, 2 workers), p95 of {drops}",
               "settle + 1.5 s", limit, p95, p95 / limit, "<= 1.00",
               p95 <= limit and len(latencies) == drops,
               note=f"median {statistics.median(latencies):.2f}s; {left} backlog files still queued at the end")


def row_overlap(work: Path, size_mib: int) -> Row:
    folder = work / "overlap"
    big_files(folder, 16, size_mib * 1024 * 1024)
    emulator, url = start_emulator(0.25)        # a process of its own, as a real CDN would be
    try:
        sections = {"workers": {"hash": 2, "submit": 4}}
        hash_config = make_config(folder, fresh_ledger(work, "overlap-hash.sqlite3"), **sections)
        with Ledger.open(hash_config.ledger) as db:
            started = time.perf_counter()
            Pipeline(hash_config, db, None).scan_and_hash()
            hash_only = time.perf_counter() - started
        submit_config = make_config(folder, hash_config.ledger, api={"url": url}, **sections)
        with Ledger.open(submit_config.ledger) as db:
            pipeline = Pipeline(submit_config, db, cdn_push.CdnClient(submit_config.api, pool_size=4))
            started = time.perf_counter()
            pipeline.submit_pending()
            submit_only = time.perf_counter() - started
        started = time.perf_counter()
        _, summary = one_shot(folder, fresh_ledger(work, "overlap.sqlite3"), url, **sections)
        both = time.perf_counter() - started
    finally:
        emulator.terminate()
    ratio = both / max(hash_only, submit_only)
    return Row(11, f"overlap: 16 x {size_mib} MiB, 0.25 s API, 4 workers", "max(hash only, submit only)",
               max(hash_only, submit_only), both, ratio, "<= 1.15", ratio <= 1.15 and summary.submitted == 16,
               note=f"hash only {hash_only:.2f}s, submit only {submit_only:.2f}s, sum {hash_only + submit_only:.2f}s")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def plain_posts(url: str, forms: list[dict[str, str]], connections: int) -> None:
    """The floor: a minimal keep-alive http.client loop per connection, posting the same forms."""
    import base64
    import http.client
    from urllib.parse import urlencode, urlsplit

    parts = urlsplit(url)
    headers = {"Authorization": "Basic " + base64.b64encode(b"bench:bench-secret").decode(),
               "Content-Type": "application/x-www-form-urlencoded"}

    def post_all(share: list[dict[str, str]]) -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port)
        for form in share:
            conn.request("POST", parts.path + "/file/add", urlencode(form), headers)
            conn.getresponse().read()
        conn.close()

    threads = [threading.Thread(target=post_all, args=(forms[i::connections],)) for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def urllib3_posts(url: str, forms: list[dict[str, str]], connections: int) -> None:
    """The transport's floor: the same loop through urllib3's pool (what cdn-push's client drives)."""
    import base64
    from urllib.parse import urlencode, urlsplit

    import urllib3

    parts = urlsplit(url)
    pool = urllib3.HTTPConnectionPool(parts.hostname, parts.port, maxsize=connections)
    headers = {"Authorization": "Basic " + base64.b64encode(b"bench:bench-secret").decode(),
               "Content-Type": "application/x-www-form-urlencoded"}

    def post_all(share: list[dict[str, str]]) -> None:
        for form in share:
            pool.urlopen("POST", parts.path + "/file/add", body=urlencode(form), headers=headers).data

    threads = [threading.Thread(target=post_all, args=(forms[i::connections],)) for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    pool.close()


def row_submit_cpu(work: Path, count: int) -> Row:
    """A real first pass into the emulator (its own process; nothing fetched back): cdn-push's CPU
    per import against the floor of the same requests sent by plain http.client."""
    folder = work / f"submit{count}"
    if not folder.exists():
        small_tree(folder, count, per_dir=1000)
    workers = 4
    emulator, url = start_emulator(0.0)
    try:
        config = make_config(folder, fresh_ledger(work, "submit.sqlite3"), api={"url": url},
                             workers={"submit": workers})
        forms = []
        for path in sorted(folder.rglob("*.mp4")):
            relpath = path.relative_to(folder).as_posix()
            forms.append(cdn_push.build_request(config, "floor/" + relpath, path.stat().st_size, "0" * 64, {}))
        cpu, wall = cpu_seconds(), time.perf_counter()
        plain_posts(url, forms, workers)
        floor_cpu, floor_wall = cpu_seconds() - cpu, time.perf_counter() - wall
        cpu = cpu_seconds()
        urllib3_posts(url, [{**form, "name": "urllib3/" + form["name"]} for form in forms], workers)
        transport_cpu = cpu_seconds() - cpu
        with Ledger.open(config.ledger) as db:
            client = cdn_push.CdnClient(config.api, pool_size=workers)
            cpu, wall = cpu_seconds(), time.perf_counter()
            summary = Pipeline(config, db, client).run_once()
            ours_cpu, ours_wall = cpu_seconds() - cpu, time.perf_counter() - wall
            client.close()
    finally:
        emulator.terminate()
    ratio = ours_cpu / floor_cpu
    return Row(12, f"real first pass, {count} small files into the emulator: CPU", "http.client loop, same forms",
               floor_cpu, ours_cpu, ratio, "CPU <= 2.00, wall <= 1.50",
               ratio <= 2.0 and ours_wall / floor_wall <= 1.5 and summary.submitted == count,
               note=f"{ours_cpu / count * 1e6:.0f} vs {floor_cpu / count * 1e6:.0f} us CPU per import; wall "
                    f"{ours_wall:.1f}s vs {floor_wall:.1f}s ({ours_wall / floor_wall:.2f}x); the hashing included; "
                    f"the same loop through urllib3 alone {transport_cpu / count * 1e6:.0f} us "
                    f"= {transport_cpu / floor_cpu:.2f}x")


# -- row 13: disk reads per imported byte under memory pressure ---------------------------------

MEMORY_CGROUP = Path("/sys/fs/cgroup/memory")          # cgroup v1's memory controller
DROP_CACHES = Path("/proc/sys/vm/drop_caches")
MEMORY_BACKED = {"tmpfs", "ramfs", "devtmpfs", "hugetlbfs"}
MIB = 1024 * 1024

# Runs in the cgroup: cdn-push's real CLI entry point, then the process's own I/O counters (all its
# threads, live and ended) on stderr. `before` is taken after the imports, so start-up reads show apart.
DISK_LAUNCHER = r"""
import json, resource, sys, time
started = time.time()
sys.path.insert(0, sys.argv[1])
import cdn_push

def io():
    with open("/proc/self/io") as handle:
        return {key: int(value) for key, value in (line.split(":") for line in handle)}

before, main_at = io(), time.time()
code = cdn_push.main(sys.argv[2:])
after = io()
print("ROW13 " + json.dumps({"code": code, "started": started, "main_at": main_at, "ended": time.time(),
                             "before": before, "after": after,
                             "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}),
      file=sys.stderr, flush=True)
sys.exit(code)
"""


def fs_type(path: Path) -> str:
    """The type of the file system holding `path` (the longest mount point above it)."""
    real, best, kind = os.path.realpath(path), "", "?"
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            point, fstype = line.split()[1:3]
            point = point.replace("\\040", " ")
            if (real == point or real.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
                best, kind = point, fstype
    return kind


def disk_reads_unavailable() -> str | None:
    """Why row 13 cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (a memory cgroup and drop_caches)"
    if not (MEMORY_CGROUP / "memory.limit_in_bytes").exists():
        return f"no cgroup v1 memory controller at {MEMORY_CGROUP}"
    probe = MEMORY_CGROUP / f"cdn-push-bench-probe-{os.getpid()}"
    try:
        probe.mkdir()
        try:
            (probe / "memory.limit_in_bytes").write_text(str(512 * MIB))
        finally:
            probe.rmdir()
    except OSError as exc:
        return f"cannot make a memory cgroup in {MEMORY_CGROUP} ({exc.strerror or exc})"
    try:
        with open(DROP_CACHES, "w"):       # opened only: nothing dropped yet
            pass
    except OSError as exc:
        return f"{DROP_CACHES} is not writable ({exc.strerror or exc})"
    return None


def drop_caches() -> None:
    os.sync()
    DROP_CACHES.write_text("3\n")


def disk_folder(work: Path, count: int, size: int) -> tuple[Path | None, bool]:
    """A folder of `count` settled files of `size` random bytes on a block device (the page cache must
    matter): in `work` if that is on one, else under /var/tmp. (None, _) if neither is; the flag says
    whether the folder is outside `work` (then the row removes it after its runs)."""
    for base, outside in ((work, False), (Path("/var/tmp"), True)):
        if fs_type(base) not in MEMORY_BACKED:
            folder = base / f"{'cdn-push-bench-' if outside else ''}disk13-{count}x{size // MIB}"
            if not (folder.exists() and sorted(p.stat().st_size for p in folder.iterdir()) == [size] * count):
                print(f"  writing {count} x {size // MIB} MiB to {folder} ({fs_type(base)}) ...", flush=True)
                shutil.rmtree(folder, ignore_errors=True)
                big_files(folder, count, size)
            return folder, outside
    return None, False


def run_in_memory_cgroup(work: Path, folder: Path, emulator_url: str, limit: int | None, name: str) -> dict:
    """One one-shot `cdn-push run` (its real main(), a config file, built-in origin and callbacks on
    127.0.0.1) in a fresh memory cgroup of its own, `limit` bytes or none, page cache dropped first.
    Returns the launcher's report plus the cgroup's peak, read_bytes samples and the ledger's counts."""
    ledger = fresh_ledger(work, f"{name}.sqlite3")
    port = free_port()
    config = work / f"{name}.yaml"
    config.write_text(json.dumps({       # JSON is YAML
        "folder": str(folder), "ledger": str(ledger),
        "api": {"url": emulator_url, "login": "bench"},
        "origin": {"serve": {"listen": f"127.0.0.1:{port}", "public_url": f"http://127.0.0.1:{port}"}},
        "confirm": {"wait_seconds": 150}}, indent=1))
    group = MEMORY_CGROUP / f"cdn-push-bench-{name}-{os.getpid()}"
    group.mkdir()
    samples: list[tuple[float, int]] = []
    process = None
    try:
        if limit is not None:
            (group / "memory.limit_in_bytes").write_text(str(limit))
        drop_caches()
        env = {**os.environ, "CDN_PUSH_API_PASSWORD": "bench-secret"}
        started = time.time()
        process = subprocess.Popen(
            ["sh", "-c", 'echo $$ > "$0" || exit 97; exec "$@"', str(group / "cgroup.procs"),
             sys.executable, "-c", DISK_LAUNCHER, str(ROOT), "run", "-c", str(config)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        out_lines: list[str] = []
        stdout_lines: list[str] = []
        readers = [threading.Thread(target=lambda: out_lines.extend(process.stderr), daemon=True),
                   threading.Thread(target=lambda: stdout_lines.extend(process.stdout), daemon=True)]
        for reader in readers:
            reader.start()
        while process.poll() is None:          # read_bytes as it grows: what was read when
            try:
                text = Path(f"/proc/{process.pid}/io").read_text()
                samples.append((time.time(), int(text.split("read_bytes:")[1].split()[0])))
            except (OSError, IndexError, ValueError):
                pass
            if time.time() - started > 240:      # confirm.wait_seconds is 150: something is stuck
                process.kill()
            time.sleep(0.1)
        for reader in readers:
            reader.join(10)
        stdout = "".join(stdout_lines)
        peak = int((group / "memory.max_usage_in_bytes").read_text())
        failcnt = int((group / "memory.failcnt").read_text())
    finally:
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        try:
            group.rmdir()
        except OSError as exc:
            print(f"  could not remove {group}: {exc}", flush=True)
    marks = [line for line in out_lines if line.startswith("ROW13 ")]
    if not marks:
        raise RuntimeError(f"cdn-push ({name}) exited {process.returncode} without its report:\n"
                           + "".join(out_lines[-20:]) + stdout)
    report = json.loads(marks[-1][len("ROW13 "):])
    with contextlib.closing(sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)) as db:
        count, imported = db.execute("SELECT count(*), coalesce(sum(size), 0) FROM files "
                                     "WHERE state = 'confirmed'").fetchone()
    report.update(spawned=started, peak=peak, failcnt=failcnt, samples=samples, confirmed=count, imported=imported,
                  summary=stdout.strip().splitlines()[-1] if stdout.strip() else "",
                  log_tail="".join(line for line in out_lines[-6:] if not line.startswith("ROW13 ")))
    return report


def disk_reads_once(work: Path, folder: Path, limit: int | None, name: str) -> dict:
    """A run against a fresh emulator (a process of its own, 3 fetch workers x 3 Range streams): the
    figures, and the timeline from the emulator's record of the same run."""
    emulator, url = start_emulator(0.0)
    try:
        report = run_in_memory_cgroup(work, folder, url, limit, name)
        import requests
        state = requests.get(url.rsplit("/", 1)[0] + "/_emulator/state", timeout=10).json()
    finally:
        emulator.terminate()
        emulator.wait()
    t0 = report["spawned"]                    # just before the launcher was started
    read = report["after"]["read_bytes"]
    report["startup_read"] = report["before"]["read_bytes"]
    report["ratio"] = read / report["imported"] if report["imported"] else float("inf")
    report["wall"] = report["ended"] - t0
    report["hashed"] = max(f["queued_at"] for f in state) - t0 if state else float("nan")   # last file/add
    done = [f["finished_at"] for f in state if f["finished_at"]]
    report["fetched"] = max(done) - t0 if done else float("nan")
    report["ready"] = sum(f["state"] == "ready" and f["callback_result"] == "200" for f in state)
    # read_bytes when hashing ended (the first sample after the last file/add), the rest is the origin's
    at_hash = next((value for when, value in report["samples"] if when - t0 >= report["hashed"]), read)
    report["read_by_hash_end"] = at_hash
    return report


def row_disk_reads(work: Path, quick: bool) -> Row:
    # cdn-push itself takes 50-65 MiB of the group; what is left for the page cache is about 15% of the
    # folder either way (~450 of 3072 MiB; ~35-45 of 300 MiB under --quick: 64 MiB would leave it ~5 MiB,
    # and its own code pages would be evicted and read again, which is not what the row measures).
    count, size, limit = (12, 25 * MIB, 96 * MIB) if quick else (24, 128 * MIB, 512 * MIB)
    target = (f"disk bytes read per imported byte, {count} x {size // MIB} MiB through the built-in origin, "
              f"cdn-push in a {limit // MIB} MiB memory cgroup")
    why = disk_reads_unavailable()
    if why:
        return Row(13, target, "same run, no memory limit", None, None, None, "<= 1.10", None,
                   note=f"skipped: {why}")
    folder, outside = disk_folder(work, count, size)
    if folder is None:
        return Row(13, target, "same run, no memory limit", None, None, None, "<= 1.10", None,
                   note=f"skipped: {work} and /var/tmp are both in memory ({fs_type(work)}); "
                        "pass --work on a disk")
    try:
        runs = {}
        for name, bytes_limit in (("free", None), ("limited", limit)):
            print(f"  {name}: cdn-push run, {'no limit' if bytes_limit is None else f'{limit // MIB} MiB'}, "
                  "caches dropped ...", flush=True)
            runs[name] = r = disk_reads_once(work, folder, bytes_limit, f"row13-{name}")
            print(f"    read {r['after']['read_bytes'] / MIB:.0f} MiB (start-up {r['startup_read'] / MIB:.1f}, "
                  f"{r['read_by_hash_end'] / MIB:.0f} by the hash end) for {r['imported'] / MIB:.0f} MiB "
                  f"confirmed: {r['ratio']:.3f}; last file/add {r['hashed']:.1f}s, last fetch {r['fetched']:.1f}s, "
                  f"exit {r['code']} after {r['wall']:.1f}s; cgroup peak {r['peak'] / MIB:.0f} MiB "
                  f"(limit hit {r['failcnt']}x); {r['summary']}", flush=True)
    finally:
        if outside:        # never left behind outside the work folder
            shutil.rmtree(folder, ignore_errors=True)
    free, limited = runs["free"], runs["limited"]
    complete = all(r["confirmed"] == count and r["ready"] == count and r["code"] == 0 for r in runs.values())
    ok = limited["ratio"] <= 1.10 and complete

    def figures(r: dict) -> str:
        return (f"{r['after']['read_bytes'] / MIB:.0f} MiB read ({r['read_by_hash_end'] / MIB:.0f} by the hash end, "
                f"{r['startup_read'] / MIB:.0f} start-up) for {r['imported'] / MIB:.0f} MiB imported "
                f"({r['confirmed']}/{count} confirmed); hashing done (last file/add) at {r['hashed']:.1f}s, "
                f"last fetch at {r['fetched']:.1f}s, run {r['wall']:.1f}s, exit {r['code']}; cgroup peak "
                f"{r['peak'] / MIB:.0f} MiB" + (f" ({r['log_tail'].strip().splitlines()[-1]})"
                                               if r["code"] and r["log_tail"].strip() else ""))
    note = (f"limited: {figures(limited)}; no limit ({free['ratio']:.2f}): {figures(free)}; "
            f"files on {fs_type(folder)}"
            + (f"; --quick: {count * size // MIB} MiB under {limit // MIB} MiB, the same share of page cache "
               f"(start-up reads alone are {limited['startup_read'] / max(1, limited['imported']):.2f} of the figure)"
               if quick else ""))
    return Row(13, target, "same run, no memory limit", free["ratio"], limited["ratio"], limited["ratio"],
               "<= 1.10", ok, limited["maxrss_mb"], note)


# pip's console script, as it writes it for `cdn-push = "cdn_push:main"` (pyproject.toml)
CONSOLE_SCRIPT = """#!{python}
import sys
from cdn_push import main
if __name__ == '__main__':
    sys.argv[0] = sys.argv[0].removesuffix('.exe')
    sys.exit(main())
"""


def installed_copy(work: Path) -> Path:
    """A venv with cdn_push.py copied into site-packages, compiled, and pip's console script: the
    layout ./install.sh leaves (not editable: --dev's finder is loaded by every start, `python -c
    pass` too). --version needs none of the dependencies. Returns the venv."""
    venv = work / "installed-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    shutil.copy(ROOT / "cdn_push.py", site)
    subprocess.run([str(python), "-m", "compileall", "-q", str(Path(site) / "cdn_push.py")],
                   env=installed_env(), check=True)
    script = venv / "bin" / "cdn-push"
    script.write_text(CONSOLE_SCRIPT.format(python=python))
    script.chmod(0o755)
    return venv


def median_runs(commands: dict[str, list[str]], repeat: int) -> dict[str, float]:
    """Median wall time of each command, run in turn `repeat` times (alternating: drift hits all alike)."""
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(repeat):
        for name, argv in commands.items():
            start = time.perf_counter()
            subprocess.run(argv, env=installed_env(), check=True, stdout=subprocess.DEVNULL)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def row_startup(work: Path, repeat: int = 21) -> Row:
    """Start-up: `cdn-push --version` through the command as installed, against `python -c pass` of
    the same Python (medians of alternating runs, bytecode cached). The note gives the floor of the
    standard modules the one module's records and logging need."""
    venv = installed_copy(work)
    python = str(venv / "bin" / "python")
    medians = median_runs({"pass": [python, "-c", "pass"], "version": [str(venv / "bin" / "cdn-push"), "--version"],
                           "stdlib": [python, "-c", "import dataclasses, logging, re, typing"]}, repeat)
    base, ours = medians["pass"], medians["version"]
    return Row(14, "start-up: cdn-push --version", "python -c pass", base, ours, ours / base, "<= 3.00",
               ours / base <= 3.0, note=f"medians of {repeat} alternating runs, bytecode cached, installed as "
                                        f"./install.sh does; `import dataclasses, logging, re, typing` alone "
                                        f"{medians['stdlib'] / base:.2f}x")


def print_table(rows: list[Row]) -> None:
    def fmt(value, digits=3):
        return "-" if value is None else f"{value:.{digits}f}"

    header = ["#", "target", "baseline", "baseline s", "cdn-push s", "ratio", "limit", "pass", "peak RSS MB", "note"]
    lines = [[str(r.number), r.target, r.baseline, fmt(r.baseline_s), fmt(r.ours_s), fmt(r.ratio, 2), r.limit,
              {True: "PASS", False: "FAIL", None: "skip"}[r.ok], fmt(r.rss_mb, 1), r.note] for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for line in lines:
        print("| " + " | ".join(cell.ljust(w) for cell, w in zip(line, widths)) + " |")


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--child-scan":
        child_scan(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="1,2,3,4,5,6,7,8,9,10,11,12,13,14", help="which targets to run")
    parser.add_argument("--big-mib", type=int, default=2048, help="size of each large file")
    parser.add_argument("--files", type=int, default=100_000, help="small files for rows 3-5")
    parser.add_argument("--million", action="store_true", help="row 5 over 1,000,000 files too")
    parser.add_argument("--quick", action="store_true", help="small sizes: 64 MiB, 5,000 files")
    parser.add_argument("--work", help="keep workloads in this folder (default: a temporary one)")
    args = parser.parse_args()
    if args.quick:
        args.big_mib, args.files = 64, 5000
    wanted = {int(n) for n in args.rows.split(",")}
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="cdn-push-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    cdn_push.configure_logging(-1, cdn_push.Redactor())
    print(f"cdn-push {cdn_push.__version__} benchmark: {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
          f"{os.uname().sysname} {os.uname().release}, work folder {work}", flush=True)
    rows: list[Row] = []
    try:
        if wanted & {1, 2, 8}:
            print("rows 1-2: hashing", flush=True)
            rows += rows_hashing(work, args.big_mib, wanted)
        if wanted & {3, 4, 5}:
            print("rows 3-5: folder of small files", flush=True)
            rows += rows_tree(work, args.files, args.million, wanted)
        if 6 in wanted:
            print("row 6: API latency", flush=True)
            rows += rows_api(work, wanted)
        if 7 in wanted:
            print("row 7: watch latency", flush=True)
            rows.append(row_watch(work))
        if 8 in wanted:
            print("row 8: built-in origin", flush=True)
            rows += row_origin(work, args.big_mib)
        if 9 in wanted:
            print("row 9: time to the first import request", flush=True)
            rows.append(row_first_import(work, 8 if args.quick else 192))
        if 10 in wanted:
            print("row 10: a drop during a backlog", flush=True)
            rows.append(row_drop_during_backlog(work))
        if 11 in wanted:
            print("row 11: hashing and submitting overlap", flush=True)
            rows.append(row_overlap(work, 8 if args.quick else 128))
        if 12 in wanted:
            print("row 12: the submit path's CPU", flush=True)
            rows.append(row_submit_cpu(work, 2000 if args.quick else 20_000))
        if 13 in wanted:
            print("row 13: disk reads per imported byte under memory pressure", flush=True)
            rows.append(row_disk_reads(work, args.quick))
        if 14 in wanted:
            print("row 14: start-up", flush=True)
            rows.append(row_startup(work))
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print_table(sorted(rows, key=lambda r: r.number))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
