"""The streaming pipeline's concurrency: one stage per path, whatever order answers, hashes, passes
and callbacks come in. Each test drives the stages through their public surface and checks the
path table after every turn."""
from __future__ import annotations

import os
import threading
import time

import pytest

import cdn_push
from cdn_push import (CallbackInbox, CallbackReport, CdnAnswer, FileEntry, Ledger, PathTable, Pipeline, Stage,
                      Tuning, UrlSigner)
from conftest import write_files
from fakes import Clock, FakeCdnClient, step_until


def cfg(make_config, raw_config, **kw):
    origin = {**raw_config["origin"], "check": False}
    return make_config(origin=origin, **kw)


def callbacks(**settings):
    """Callbacks on, to a receiver nobody calls: the tests put reports in the inbox themselves."""
    return {"public_url": "http://127.0.0.1:9/cb", "listen": "127.0.0.1:0", **settings}


def entry_for(drop, relpath):
    return FileEntry(relpath, str(drop / relpath), *cdn_push.current_stat(str(drop / relpath)))


# -- the path table ----------------------------------------------------------------------

@pytest.mark.parametrize("moves, allowed", [
    ([(None, Stage.TO_HASH), (Stage.TO_HASH, Stage.HASHING), (Stage.HASHING, Stage.DECIDED),
      (Stage.DECIDED, None), (None, Stage.SUBMITTING), (Stage.SUBMITTING, Stage.AWAITING),
      (Stage.AWAITING, None)], True),
    ([(None, Stage.HASHING)], False),                         # hashed without being listed
    ([(None, Stage.TO_HASH), (Stage.TO_HASH, Stage.SUBMITTING)], False),    # sent unhashed
    ([(None, Stage.SUBMITTING), (Stage.SUBMITTING, Stage.DECIDED)], False),  # decided while out
    ([(None, Stage.TO_HASH), (None, Stage.TO_HASH)], False),  # in a stage twice
    ([(None, Stage.TO_HASH), (Stage.HASHING, None)], False),  # left a stage it was not in
])
def test_the_path_table_allows_only_the_moves_the_pipeline_makes(moves, allowed):
    table = PathTable()
    try:
        for source, target in moves:
            table.move("a.mp4", source, target)
    except AssertionError:
        assert not allowed
    else:
        assert allowed
        table.check()
        assert len(table) == 0


def test_the_path_table_counts_each_stage():
    table = PathTable()
    for path in ("a", "b", "c"):
        table.move(path, None, Stage.TO_HASH)
    table.move("b", Stage.TO_HASH, Stage.HASHING)
    assert (table.count(Stage.TO_HASH), table.count(Stage.HASHING), table.count(Stage.TO_HASH, Stage.HASHING)) == (2, 1, 3)
    assert sorted(table.paths(Stage.TO_HASH)) == ["a", "c"] and table.stage("b") is Stage.HASHING
    assert table.leave("b", Stage.TO_HASH) is False and table.leave("b", Stage.HASHING) is True
    table.check()


# -- orders of events ----------------------------------------------------------------------

def test_a_pass_reaching_a_row_that_is_being_sent_leaves_it_to_its_answer(make_config, raw_config, drop):
    write_files(drop, {"a.mp4": b"x" * 1000})
    config = cfg(make_config, raw_config)
    with Ledger.open(config.ledger) as ledger:
        Pipeline(config, ledger, None).scan_and_hash()          # a pending row, as a killed run leaves it
        client = FakeCdnClient().hold()
        p = Pipeline(config, ledger, client)
        assert p.feeder.feed() == 1                             # the feeder sends it ...
        entries = next(cdn_push.walk_folder(config.folder, config.scan))[1]
        p.intake.look_at(entries, ledger.quick_rows_in_dir(""), fresh=False)   # ... as the walk reaches its folder
        p.check_invariants()
        assert p.table.stage("a.mp4") is Stage.SUBMITTING and not p.table.recheck
        client.release()
        step_until(p, lambda: ledger.get("a.mp4").state == "submitted", "the answer")
        for _ in range(5):
            p.step(0.01)
            p.check_invariants()
        p.halt()
        assert ledger.get("a.mp4").state == "submitted" and client.sent == ["a.mp4"]


def test_a_file_that_changes_while_its_request_is_out_is_sent_again_at_its_new_content(
        make_config, raw_config, drop):
    write_files(drop, {"a.mp4": b"first" * 100})
    config = cfg(make_config, raw_config)
    with Ledger.open(config.ledger) as ledger:
        client = FakeCdnClient().hold()
        p = Pipeline(config, ledger, client)
        p.add_fresh([entry_for(drop, "a.mp4")])
        step_until(p, lambda: client.sent, "the first request")
        write_files(drop, {"a.mp4": b"second version" * 100})
        p.add_fresh([entry_for(drop, "a.mp4")])                 # the watcher saw it settle again
        p.check_invariants()
        assert p.table.recheck == {"a.mp4"}
        client.release(2)
        step_until(p, lambda: len(client.sent) == 2 and not p.busy(), "the second request")
        p.halt()
    sizes = [int(r["size"]) for r in client.requests]
    assert sizes == [500, 1400], sizes


def test_a_file_dropped_while_the_pass_hashes_it_is_hashed_and_sent_once(make_config, raw_config, drop):
    write_files(drop, {"big.mp4": b"y" * (3 * 1024 * 1024)})
    config = cfg(make_config, raw_config)
    calls, first_done = [], threading.Event()

    def hash_second_late(entry, progress, cancel):
        calls.append(entry.relpath)
        if len(calls) == 2:
            first_done.wait(10)
        return cdn_push.hash_outcome(entry, progress, cancel)

    with Ledger.open(config.ledger) as ledger:
        client = FakeCdnClient(answer=lambda params: (first_done.set(), cdn_push.CdnAnswer(
            "accepted", 200, "ok", "{}"))[1])
        p = Pipeline(config, ledger, client, cdn_retry_pause=60, hash_function=hash_second_late)
        p.add_fresh([entry_for(drop, "big.mp4")])
        p.start_scan()
        step_until(p, lambda: not (p.busy() or p.pass_started is not None), "the pass and the import")
        p.halt()
    assert calls == ["big.mp4"]          # the pass leaves a file on its way already alone
    assert client.sent == ["big.mp4"], client.sent


def test_a_failed_callback_whose_resend_is_not_due_yet_keeps_the_exit_code_non_zero(make_config, raw_config, drop):
    write_files(drop, {"a.mp4": b"x" * 1000})
    config = cfg(make_config, raw_config, callback=callbacks(wait_seconds=1, retry_delay=30))
    inbox = CallbackInbox()

    def call_back_failure(params):
        inbox.put(CallbackReport("a.mp4", 1, False, None, "", "download failed: 404", time.time() + 1))
        return CdnAnswer("accepted", 200, "ok", '{"status":"ok"}')

    with Ledger.open(config.ledger) as ledger:
        summary = Pipeline(config, ledger, FakeCdnClient(call_back_failure), signer=UrlSigner(b"k" * 32),
                           inbox=inbox).run_once()
        row = ledger.get("a.mp4")
    assert row.state == "pending" and "could not import" in row.last_error
    assert summary.exit_code() != cdn_push.EXIT_OK, summary.line()


def test_rows_answered_while_the_walk_reaches_them_are_sent_once(make_config, raw_config, drop):
    files = {f"a/{i:03}.mp4": b"a%d" % i for i in range(8)}
    files.update({f"c/{i:03}.mp4": b"c%d" % i for i in range(8)})
    write_files(drop, files)
    config = cfg(make_config, raw_config)
    with Ledger.open(config.ledger) as ledger:
        Pipeline(config, ledger, None).scan_and_hash()           # pending rows left by a killed run
        write_files(drop, {f"b/{i:04}.mp4": b"b" * 200_000 + b"%d" % i for i in range(300)})  # new files to hash
        client = FakeCdnClient()
        summary = Pipeline(config, ledger, client).run_once()
    dupes = sorted({n for n in client.sent if client.sent.count(n) > 1})
    assert not dupes, f"sent more than once: {dupes} ({summary.line()})"
    assert len(client.sent) == 316


def test_nothing_is_sent_during_the_cdn_down_pause_and_the_pause_ends_on_the_clock(make_config, raw_config, drop):
    write_files(drop, {"new.mp4": b"n" * 1000})
    config = cfg(make_config, raw_config)
    monotonic = Clock(100.0)
    with Ledger.open(config.ledger) as ledger:
        client = FakeCdnClient()
        p = Pipeline(config, ledger, client, cdn_retry_pause=60, monotonic=monotonic)
        p.feeder.cdn_down(cdn_push.CdnUnavailableError("cannot reach"))
        assert p.paused
        p.add_fresh([entry_for(drop, "new.mp4")])
        for _ in range(10):
            p.step(0.01)
            p.check_invariants()
        assert client.sent == [], "sent during the CDN-down pause"
        monotonic.now += 59
        p.step(0.01)
        assert p.paused and client.sent == []
        monotonic.now += 2
        step_until(p, lambda: client.sent == ["new.mp4"], "the request after the pause")
        p.halt()


def test_a_run_ends_once_a_resent_file_is_confirmed(make_config, raw_config, drop):
    write_files(drop, {"a.mp4": b"x" * 1000})
    config = cfg(make_config, raw_config, callback=callbacks(wait_seconds=6, retry_delay=0.3))
    inbox = CallbackInbox()

    def fail_then_exists(params):
        if len(client.sent) == 1:
            inbox.put(CallbackReport("a.mp4", 1, False, None, "", "timeout", time.time() + 1))
            return CdnAnswer("accepted", 200, "ok", "{}")
        return CdnAnswer("exists", 200, "file already exists with the same size and chksum", "{}")

    client = FakeCdnClient(fail_then_exists)
    with Ledger.open(config.ledger) as ledger:
        clock = Clock(time.time())
        p = Pipeline(config, ledger, client, signer=UrlSigner(b"k" * 32), inbox=inbox, clock=clock)
        p.start_scan()
        step_until(p, lambda: ledger.get("a.mp4") is not None and ledger.get("a.mp4").state == "pending"
             and ledger.get("a.mp4").last_error, "the failed callback")
        assert not p.finished(), "the run would end before the resend"
        clock.now += 120                                       # the resend is due
        step_until(p, lambda: p.finished(), "the end of the run")
        p.halt()
        assert ledger.get("a.mp4").state == "confirmed" and client.sent == ["a.mp4", "a.mp4"]


def test_refused_credentials_end_a_run_without_waiting_out_other_retries(make_config, raw_config, drop):
    write_files(drop, {"a.mp4": b"a" * 10, "b.mp4": b"b" * 10})
    config = cfg(make_config, raw_config, workers={"submit": 2},
                 api={**raw_config["api"], "retry": {"attempts": 3, "max_seconds": 60, "backoff_base": 1}})
    refused = threading.Event()

    class Client(cdn_push.CdnClient):
        def _post_once(self, method, params):
            if params["name"] == "a.mp4":
                raise cdn_push.CdnAuthError("credentials refused")
            refused.wait(10)
            raise cdn_push._TransientError("503", retry_after=30.0)

    stop = threading.Event()
    with Ledger.open(config.ledger) as ledger:
        client = Client(config.api, stop=stop)
        p = Pipeline(config, ledger, client, stop=stop)
        p.start_scan()
        step_until(p, lambda: p.summary.fatal is not None, "the refusal")
        refused.set()
        halted = threading.Thread(target=p.halt)
        halted.start()
        halted.join(5)
        assert not halted.is_alive(), "halt waited for another worker's back-off"
    assert isinstance(p.summary.fatal, cdn_push.CdnAuthError)


def test_a_rescan_asked_for_while_the_pass_still_hashes_does_not_start_a_second_pass(
        make_config, raw_config, drop):
    write_files(drop, {"big.mp4": b"y" * (3 * 1024 * 1024)})
    config = cfg(make_config, raw_config)
    calls, release = [], threading.Event()

    def held(entry, progress, cancel):
        calls.append(entry.relpath)
        release.wait(10)
        return cdn_push.hash_outcome(entry, progress, cancel)

    with Ledger.open(config.ledger) as ledger:
        p = Pipeline(config, ledger, FakeCdnClient(), cdn_retry_pause=60, hash_function=held)
        done = []
        p.on_pass_done = done.append
        assert p.start_scan()
        step_until(p, lambda: not p.scanning, "the walk")
        assert p.table.count(Stage.HASHING) == 1       # the pass's big file is still hashing
        started_again = p.start_scan()                  # WatchService.start_pass (rescan_now / reload)
        release.set()
        step_until(p, lambda: not (p.busy() or p.pass_started), "the pass")
        p.halt()
    assert not started_again and len(done) == 1 and calls == ["big.mp4"], (started_again, len(done), calls)


def test_a_row_set_aside_whose_file_is_then_deleted_is_forgotten_by_the_next_pass(make_config, raw_config, drop):
    write_files(drop, {"a.mp4": b"x" * 1000})
    config = cfg(make_config, raw_config)
    with Ledger.open(config.ledger) as ledger:
        Pipeline(config, ledger, None).scan_and_hash()
        p = Pipeline(config, ledger, FakeCdnClient(), cdn_retry_pause=60)
        os.utime(drop / "a.mp4", (time.time() - 100, time.time() - 100))    # changed after hashing
        p.feeder.feed()
        assert p.table.stage("a.mp4") is Stage.SET_ASIDE
        (drop / "a.mp4").unlink()                                          # ... then removed
        p.start_scan()
        step_until(p, lambda: p.pass_started is None and not p.busy(), "the pass")
        p.halt()
        assert ledger.get("a.mp4") is None and p.table.count(Stage.SET_ASIDE) == 0


def test_decisions_wait_for_the_flush_interval_on_the_injected_clock(make_config, raw_config, drop):
    write_files(drop, {f"{i}.mp4": b"%d" % i for i in range(3)})
    config = cfg(make_config, raw_config)
    monotonic = Clock(0.0)
    with Ledger.open(config.ledger) as ledger:
        p = Pipeline(config, ledger, None, monotonic=monotonic, tuning=Tuning(scan_slice=0.0, flush_every=5.0))
        p.start_scan()
        p.step(0)                 # the folder listed and looked at
        p.step(0)                 # one file hashed; the scan goes on, so its decision waits
        p.check_invariants()
        assert p.table.count(Stage.DECIDED) == 1 and ledger.get("0.mp4") is None
        monotonic.now += 5
        p.step(0)                 # the next file hashed, and the interval is up: both written
        p.check_invariants()
        assert p.table.count(Stage.DECIDED) == 0 and ledger.get("0.mp4").state == "pending"
        p.halt()
