"""Concurrency regressions of the streaming pipeline, found in review: each failed before its fix."""
from __future__ import annotations

import os
import threading
import time

import cdn_push
from cdn_push import CallbackInbox, CallbackReport, CdnAnswer, FileEntry, Ledger, Pipeline, UrlSigner
from conftest import write_files


class FakeClient:
    """Stands in for CdnClient: records every file/add, answers 'accepted'."""

    def __init__(self, gate=None, delay=0.0):
        self.sent, self.on_retry = [], lambda: None
        self.gate, self.delay = gate, delay

    def prepare(self):
        pass

    def cancel(self):
        pass

    def close(self):
        pass

    def add_file(self, params):
        if self.gate is not None:
            self.gate.wait()
        time.sleep(self.delay)
        self.sent.append(params["name"])
        return CdnAnswer("accepted", 200, "ok", '{"status":"ok"}')


def cfg(make_config, raw_config, **kw):
    origin = {**raw_config["origin"], "check": False}
    return make_config(origin=origin, **kw)


def callbacks(**settings):
    """Callbacks on, to a receiver nobody calls: the tests put reports in the inbox themselves."""
    return {"public_url": "http://127.0.0.1:9/cb", "listen": "127.0.0.1:0", **settings}


def wait_for(pred, timeout=10):
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end
        time.sleep(0.01)


# 1. The walk's triage decides a pending row that is in flight; the answer is recorded, then the
#    (batched, up to FLUSH_EVERY later) flush of the stale decision turns it back to pending -> sent twice.
def test_triage_of_in_flight_row_reverts_answer(make_config, raw_config, drop):
    write_files(drop, {"a.mp4": b"x" * 1000})
    config = cfg(make_config, raw_config)
    with Ledger.open(config.ledger) as ledger:
        Pipeline(config, ledger, None).scan_and_hash()          # a pending row, as a killed run leaves it
        gate = threading.Event()
        client = FakeClient(gate)
        p = Pipeline(config, ledger, client)
        assert p._feed() == 1                                   # step N: feeder sends it
        entries = next(cdn_push.walk_folder(config.folder, config.scan))[1]
        p._triage(entries, ledger.quick_rows_in_dir(""), fresh=False)   # step N: walk reaches the folder
        gate.set()
        wait_for(lambda: client.sent)
        time.sleep(0.1)
        p._collect_answers()                                    # step N+1: answer recorded first ...
        assert ledger.get("a.mp4").state == "submitted"
        p._flush_decided(force=True)                            # ... then the batched decision is flushed
        row = ledger.get("a.mp4")
        p._feed()
        wait_for(lambda: not p._queued or len(client.sent) > 1, 2)
        p.halt()
        assert row.state == "submitted", f"answer overwritten: row is {row.state}, accepted={row.accepted_sha256}"
        assert client.sent == ["a.mp4"]


# 2. Same path hashed twice (watch fresh drop + the pass walking the folder): the second hash has
#    job.known None, so _hashed decides against row=None and wipes the recorded import -> sent twice.
def test_fresh_and_scan_hash_of_same_file_submit_twice(make_config, raw_config, drop, monkeypatch):
    write_files(drop, {"big.mp4": b"y" * (3 * 1024 * 1024)})
    config = cfg(make_config, raw_config)
    calls = []
    real = cdn_push.hash_outcome

    def slow_second(entry, *a):
        calls.append(entry.relpath)
        if len(calls) == 2:
            time.sleep(1.0)       # the pass's hash of the same file ends after the fresh one was answered
        return real(entry, *a)

    monkeypatch.setattr(cdn_push, "hash_outcome", slow_second)
    with Ledger.open(config.ledger) as ledger:
        client = FakeClient()
        p = Pipeline(config, ledger, client, cdn_retry_pause=60)
        st = (drop / "big.mp4").stat()
        p.add_fresh([FileEntry("big.mp4", str(drop / "big.mp4"), st.st_size, st.st_mtime_ns, st.st_ino)])
        p.start_scan()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (p.busy() or p.pass_started is not None):
            p.step(0.05)
        p.halt()
        assert calls == ["big.mp4"]          # the pass leaves a file on its way already alone
        assert client.sent == ["big.mp4"], client.sent


# 3. One-shot: the CDN called back "fail" (attempt 1 of 3); the retry is due after wait_seconds, so
#    the run ends with the file pending, and exits 0 ("every file is imported").
def test_failed_callback_then_deadline_exits_ok(make_config, raw_config, drop):
    write_files(drop, {"a.mp4": b"x" * 1000})
    config = cfg(make_config, raw_config, callback=callbacks(wait_seconds=1, retry_delay=30))
    inbox = CallbackInbox()

    class CallsBack(FakeClient):
        def add_file(self, params):
            answer = super().add_file(params)
            threading.Timer(0.2, lambda: inbox.put(CallbackReport(
                "a.mp4", 1, False, None, "", "download failed: 404", time.time()))).start()
            return answer

    with Ledger.open(config.ledger) as ledger:
        summary = Pipeline(config, ledger, CallsBack(), signer=UrlSigner(b"k" * 32), inbox=inbox).run_once()
        row = ledger.get("a.mp4")
    assert row.state == "pending" and "could not import" in row.last_error
    assert summary.exit_code() != cdn_push.EXIT_OK, summary.line()


# 1b. The same race through plain run_once() steps: a killed run left pending rows in two folders;
#     the feeder sends c/ rows while the walk is still hashing b/, then the walk reaches c/.
def test_run_once_resubmits_rows_answered_while_walk_reaches_them(make_config, raw_config, drop):
    files = {f"a/{i:03}.mp4": b"a%d" % i for i in range(8)}
    files.update({f"c/{i:03}.mp4": b"c%d" % i for i in range(8)})
    write_files(drop, files)
    config = cfg(make_config, raw_config)
    with Ledger.open(config.ledger) as ledger:
        Pipeline(config, ledger, None).scan_and_hash()           # pending rows left by a killed run
        write_files(drop, {f"b/{i:04}.mp4": b"b" * 200_000 + b"%d" % i for i in range(300)})  # new files to hash
        client = FakeClient(delay=0.01)
        summary = Pipeline(config, ledger, client).run_once()
    dupes = sorted({n for n in client.sent if client.sent.count(n) > 1})
    assert not dupes, f"sent more than once: {dupes} ({summary.line()})"


# 4. CDN-down pause (watch): the feeder stops, but fresh drops are enqueued by _flush_decided anyway.
def test_fresh_drop_sent_while_cdn_paused(make_config, raw_config, drop):
    write_files(drop, {"new.mp4": b"n" * 1000})
    config = cfg(make_config, raw_config)
    with Ledger.open(config.ledger) as ledger:
        client = FakeClient()
        p = Pipeline(config, ledger, client, cdn_retry_pause=60)
        p._cdn_down(cdn_push.CdnUnavailableError("cannot reach"))
        assert p.paused
        st = (drop / "new.mp4").stat()
        p.add_fresh([FileEntry("new.mp4", str(drop / "new.mp4"), st.st_size, st.st_mtime_ns, st.st_ino)])
        for _ in range(10):
            p.step(0.05)
        p.halt()
        assert client.sent == [], "sent during the CDN-down pause"


# 5. One-shot waits the whole callback.wait_seconds for a file that is already confirmed: a failed
#    callback, the resend answered 'exists' (confirmed at once), but `awaiting` keeps the path.
def test_finished_waits_for_path_already_confirmed(make_config, raw_config, drop):
    write_files(drop, {"a.mp4": b"x" * 1000})
    config = cfg(make_config, raw_config, callback=callbacks(wait_seconds=6, retry_delay=0.3))
    inbox = CallbackInbox()

    class FailThenExists(FakeClient):
        def add_file(self, params):
            self.sent.append(params["name"])
            if len(self.sent) == 1:
                threading.Timer(0.2, lambda: inbox.put(CallbackReport(
                    "a.mp4", 1, False, None, "", "timeout", time.time()))).start()
                return CdnAnswer("accepted", 200, "ok", "{}")
            return CdnAnswer("exists", 200, "file already exists with the same size and chksum", "{}")

    with Ledger.open(config.ledger) as ledger:
        started = time.monotonic()
        p = Pipeline(config, ledger, FailThenExists(), signer=UrlSigner(b"k" * 32), inbox=inbox)
        summary = p.run_once()
        took = time.monotonic() - started
        assert ledger.get("a.mp4").state == "confirmed"
    assert summary.exit_code() == 0
    assert took < 3, f"run_once took {took:.1f}s although everything was confirmed after ~1s ({p.awaiting})"


# 6. halt() after a fatal answer (credentials refused) joins workers whose retry back-off waits on the
#    run's stop event, which nobody sets: the run (or the service, after raising) hangs for the back-off.
def test_halt_after_fatal_waits_out_other_workers_backoff(make_config, raw_config, drop):
    write_files(drop, {"a.mp4": b"a" * 10, "b.mp4": b"b" * 10})
    config = cfg(make_config, raw_config, workers={"submit": 2},
                 api={**raw_config["api"], "retry": {"attempts": 3, "max_seconds": 60, "backoff_base": 1}})

    class Client(cdn_push.CdnClient):
        def _post_once(self, method, params):
            if params["name"] == "a.mp4":
                time.sleep(0.3)
                raise cdn_push.CdnAuthError("credentials refused")
            raise cdn_push._TransientError("503", retry_after=8.0)

    stop = threading.Event()
    with Ledger.open(config.ledger) as ledger:
        client = Client(config.api, stop=stop)
        started = time.monotonic()
        summary = Pipeline(config, ledger, client, stop=stop).run_once()
        took = time.monotonic() - started
    assert isinstance(summary.fatal, cdn_push.CdnAuthError)
    assert took < 3, f"run_once took {took:.1f}s to give up after the credentials were refused"


# 7. A rescan requested while the previous pass still hashes its last large files: start_scan() only
#    looks at `scanning`, so a second pass starts, the first pass never reports done, and the file is
#    hashed (and decided, and with #2 possibly submitted) twice.
def test_rescan_during_pass_tail(make_config, raw_config, drop, monkeypatch):
    write_files(drop, {"big.mp4": b"y" * (3 * 1024 * 1024)})
    config = cfg(make_config, raw_config)
    calls, real = [], cdn_push.hash_outcome

    def slow(entry, *a):
        calls.append(entry.relpath)
        time.sleep(0.5)
        return real(entry, *a)

    monkeypatch.setattr(cdn_push, "hash_outcome", slow)
    with Ledger.open(config.ledger) as ledger:
        p = Pipeline(config, ledger, FakeClient(), cdn_retry_pause=60)
        done = []
        p.on_pass_done = done.append
        assert p.start_scan()
        while p.scanning:
            p.step(0.01)
        assert p._hashing                     # the pass's big file is still hashing
        started_again = p.start_scan()        # WatchService.start_pass (rescan_now / reload)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and (p.busy() or p.pass_started):
            p.step(0.05)
        p.halt()
    assert not started_again and len(done) == 1 and calls == ["big.mp4"], (started_again, len(done), calls)


# 8. A pending row set aside (file changed after hashing) whose file is then deleted: nothing ever
#    clears _set_aside, the feeder skips the row forever, the pending row for a gone file stays.
def test_set_aside_then_deleted_is_stuck(make_config, raw_config, drop):
    write_files(drop, {"a.mp4": b"x" * 1000})
    config = cfg(make_config, raw_config)
    with Ledger.open(config.ledger) as ledger:
        Pipeline(config, ledger, None).scan_and_hash()
        p = Pipeline(config, ledger, FakeClient(), cdn_retry_pause=60)
        os.utime(drop / "a.mp4", (time.time() - 100, time.time() - 100))    # changed after hashing
        p._feed()
        (drop / "a.mp4").unlink()                                          # ... then removed
        p.start_scan()
        for _ in range(20):
            p.step(0.01)
        p.halt()
        assert ledger.get("a.mp4") is None and not p._set_aside, (ledger.get("a.mp4").state, p._set_aside)
