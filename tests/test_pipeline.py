"""The decide step (pure) and whole passes against the real origin and CDN emulator."""

from __future__ import annotations

import hashlib
import os
import threading
import time

import pytest

import cdn_push
from cdn_push import (DECISION_CHANGED, DECISION_CONFLICT, DECISION_NEW, DECISION_STILL_REJECTED,
                      DECISION_UNCHANGED, FileEntry, Ledger, LedgerRow, Pipeline)
from conftest import AWKWARD_FILES, write_files
from fakes import FakeCdnClient, step_until

SHA_A, SHA_B = "a" * 64, "b" * 64


def accepted(state="submitted", name="n", size=1, sha=SHA_A, **kw):
    values = dict(path="p", size=size, mtime_ns=1, inode=1, sha256=sha, name=name, state=state,
                  accepted_name=name, accepted_size=size, accepted_sha256=sha)
    values.update(kw)
    return LedgerRow(**values)


NEVER_ACCEPTED = LedgerRow(path="p", size=1, mtime_ns=1, inode=1, sha256=SHA_A, name="n", state="pending")
REJECTED = LedgerRow(path="p", size=1, mtime_ns=1, inode=1, sha256=SHA_A, name="n", state="rejected")
FAILED = LedgerRow(path="p", size=1, mtime_ns=1, inode=1, sha256=SHA_A, name="n", state="failed")


@pytest.mark.parametrize("row, name, size, sha, no_replace, retry_rejected, expected", [
    (None, "n", 1, SHA_A, False, False, DECISION_NEW),
    (None, "n", 1, SHA_A, True, False, DECISION_NEW),
    (NEVER_ACCEPTED, "n", 1, SHA_A, False, False, DECISION_NEW),          # a killed run's leftover
    (FAILED, "n", 1, SHA_A, False, False, DECISION_NEW),                  # failed: the CDN takes it again
    (accepted(), "n", 1, SHA_A, False, False, DECISION_UNCHANGED),
    (accepted(state="confirmed"), "n", 1, SHA_A, True, False, DECISION_UNCHANGED),
    (accepted(), "n", 2, SHA_A, False, False, DECISION_CHANGED),          # size differs
    (accepted(), "n", 1, SHA_B, False, False, DECISION_CHANGED),          # sha-256 differs
    (accepted(), "n", 1, SHA_B, True, False, DECISION_CONFLICT),          # no_replace blocks it
    (accepted(), "other/n", 1, SHA_A, True, False, DECISION_NEW),         # new CDN name: a new file
    (REJECTED, "n", 1, SHA_A, False, False, DECISION_STILL_REJECTED),
    (REJECTED, "n", 1, SHA_A, False, True, DECISION_NEW),
    (REJECTED, "n", 1, SHA_B, False, False, DECISION_NEW),               # fixed content goes again
])
def test_decide(row, name, size, sha, no_replace, retry_rejected, expected):
    assert cdn_push.decide(row, name, size, sha, no_replace=no_replace,
                           retry_rejected=retry_rejected) == expected


def test_row_after_decision_keeps_what_the_cdn_accepted():
    entry = FileEntry("p", "/x/p", 2, 5, 6)
    row = accepted()
    changed = cdn_push.row_after_decision(DECISION_CHANGED, entry, row, "n", SHA_B, 0)
    assert (changed.state, changed.sha256, changed.size, changed.accepted_sha256) == ("pending", SHA_B, 2, SHA_A)
    conflict = cdn_push.row_after_decision(DECISION_CONFLICT, entry, row, "n", SHA_B, 0)
    assert conflict.state == "submitted" and "no_replace" in conflict.last_error
    assert (conflict.sha256, conflict.mtime_ns) == (SHA_B, 5)   # not hashed again next time
    unchanged = cdn_push.row_after_decision(DECISION_UNCHANGED, entry, accepted(state="pending"), "n", SHA_A, 0)
    assert unchanged.state == "submitted"


# -- whole passes -------------------------------------------------------------------

def run(config, **kwargs):
    with Ledger.open(config.ledger) as ledger:
        client = cdn_push.CdnClient(config.api, pool_size=config.submit_workers)
        try:
            return Pipeline(config, ledger, client, **kwargs).run_once()
        finally:
            client.close()


def rows(config):
    with Ledger.open(config.ledger) as ledger:
        return {row.path: row for row in ledger.all_rows()}


def test_awkward_folder_is_imported_verified_and_recorded(drop, emulator, make_config):
    write_files(drop, AWKWARD_FILES)
    config = make_config(name_prefix="site/", defaults={"speed": "300K"},
                         rules=[{"match": "deep/**", "fetch_prio": 1, "buffer": "5.0"}])
    summary = run(config)
    assert (summary.new, summary.submitted, summary.rejected, summary.failed) == (len(AWKWARD_FILES),) * 2 + (0, 0)
    assert summary.exit_code() == cdn_push.EXIT_OK
    assert emulator.wait_idle(30)
    cdn = {f["name"]: f for f in emulator.snapshot()}
    assert set(cdn) == {"site/" + p for p in AWKWARD_FILES}
    for relpath, content in AWKWARD_FILES.items():
        record = cdn["site/" + relpath]
        assert record["state"] == "ready", (relpath, record["message"])
        assert record["sha256"] == hashlib.sha256(content).hexdigest()
        assert record["params"]["chksum"] == record["sha256"]
        assert record["params"]["speed"] == "300K"
        if len(content) >= 3:
            assert record["streams"] == 3
    assert cdn["site/deep/er/still/file.webm"]["params"]["fetch_prio"] == "1"
    assert cdn["site/deep/er/still/file.webm"]["params"]["buffer"] == "5.0"
    assert "fetch_prio" not in cdn["site/plain.mp4"]["params"]
    ledger = rows(config)
    assert {r.state for r in ledger.values()} == {"submitted"}
    assert all(r.accepted_sha256 == hashlib.sha256(AWKWARD_FILES[p]).hexdigest() for p, r in ledger.items())


def test_second_pass_reads_nothing_and_submits_nothing(drop, emulator, make_config):
    write_files(drop, AWKWARD_FILES)
    config = make_config()
    run(config)
    summary = run(config)
    assert (summary.unchanged, summary.new, summary.submitted) == (len(AWKWARD_FILES), 0, 0)
    assert summary.hashed_files == 0 and summary.bytes_hashed == 0
    assert len(emulator.requests) == len(AWKWARD_FILES)


def test_changed_file_is_imported_again_and_touched_file_is_not(drop, emulator, make_config):
    write_files(drop, {"a.mp4": b"first", "b.mp4": b"same"})
    config = make_config()
    run(config)
    assert emulator.wait_idle(30)       # rewriting a file the emulator is still fetching would stall its fetch
    write_files(drop, {"a.mp4": b"second version", "b.mp4": b"same"})   # b: new mtime, same bytes
    summary = run(config)
    assert (summary.changed, summary.unchanged, summary.submitted) == (1, 1, 1)
    names = [r["name"] for r in emulator.requests]
    assert sorted(names[:2]) == ["a.mp4", "b.mp4"] and names[2:] == ["a.mp4"]
    assert emulator.wait_idle(10)
    assert emulator.files["a.mp4"].sha256 == hashlib.sha256(b"second version").hexdigest()


def test_no_replace_reports_a_conflict_and_submits_nothing(drop, emulator, make_config):
    write_files(drop, {"a.mp4": b"first"})
    config = make_config(defaults={"no_replace": True})
    run(config)
    assert emulator.wait_idle(30)
    write_files(drop, {"a.mp4": b"edited"})
    summary = run(config)
    assert summary.conflicts == 1 and summary.submitted == 0
    assert summary.exit_code() == cdn_push.EXIT_INCOMPLETE
    assert len(emulator.requests) == 1
    assert "no_replace" in rows(config)["a.mp4"].last_error


def test_young_files_wait_and_go_in_a_later_pass(drop, emulator, make_config):
    write_files(drop, {"old.mp4": b"old"})
    write_files(drop, {"young.mp4": b"young"}, age=0)
    config = make_config(scan={"settle_seconds": 60})
    summary = run(config)
    assert (summary.submitted, summary.waiting) == (1, 1)
    assert summary.exit_code() == cdn_push.EXIT_OK
    later = run(config, clock=lambda: time.time() + 120)
    assert (later.submitted, later.waiting, later.unchanged) == (1, 0, 1)


def test_files_with_fetch_prio_are_submitted_first(drop, emulator, make_config):
    write_files(drop, {f"{c}.mp4": c.encode() for c in "abcdef"} | {"urgent/z.mp4": b"z"})
    config = make_config(workers={"hash": 2, "submit": 1},
                         rules=[{"match": "urgent/**", "fetch_prio": 1}, {"match": "e.mp4", "fetch_prio": 5}])
    run(config)
    assert [r["name"] for r in emulator.requests] == ["e.mp4", "urgent/z.mp4", "a.mp4", "b.mp4",
                                                       "c.mp4", "d.mp4", "f.mp4"]


def test_rejected_file_is_recorded_and_not_sent_again_unless_asked(drop, emulator, make_config):
    write_files(drop, {"a.mp4": b"a"})
    config = make_config(name_prefix="bad//")          # the emulator refuses names with //
    summary = run(config)
    assert summary.rejected == 1 and summary.exit_code() == cdn_push.EXIT_INCOMPLETE
    row = rows(config)["a.mp4"]
    assert row.state == "rejected" and "invalid name" in row.last_error and "invalid name" in row.response
    assert emulator.answers == [400]
    again = run(config)
    assert again.rejected == 1 and again.exit_code() == cdn_push.EXIT_INCOMPLETE
    assert emulator.answers == [400]                       # not sent again
    forced = run(config, retry_rejected=True)
    assert forced.rejected == 1 and forced.new == 1
    assert emulator.answers == [400, 400]


def test_dry_run_hashes_but_changes_nothing(drop, emulator, make_config):
    write_files(drop, {"a b.mp4": b"a"})
    config = make_config(name_prefix="v/")
    lines = []
    with Ledger.open(":memory:") as ledger:
        summary = Pipeline(config, ledger, None, dry_run=True, out=lines.append).run_once()
    assert summary.new == 1 and summary.submitted == 0
    assert emulator.requests == [] and not config.ledger.exists()
    assert lines == [f"would submit (new): v/a b.mp4 size=1 sha256={hashlib.sha256(b'a').hexdigest()} "
                     f"location={config.origin.base_url.replace('http://', 'http://fetcher:***@')}/a%20b.mp4"]


def test_file_changed_or_deleted_between_hash_and_submit(drop, emulator, make_config):
    write_files(drop, {"keep.mp4": b"k", "edit.mp4": b"e", "gone.mp4": b"g"})
    config = make_config()
    with Ledger.open(config.ledger) as ledger:
        client = cdn_push.CdnClient(config.api)
        pipeline = Pipeline(config, ledger, client)
        pipeline.scan_and_hash()
        write_files(drop, {"edit.mp4": b"edited"})
        (drop / "gone.mp4").unlink()
        pipeline.submit_pending()
        client.close()
    assert [r["name"] for r in emulator.requests] == ["keep.mp4"]
    assert pipeline.summary.waiting == 1
    left = rows(config)
    assert "gone.mp4" not in left and left["edit.mp4"].state == "pending"
    summary = run(config)
    assert summary.changed + summary.new == 1 and summary.submitted == 1


def test_stop_event_ends_the_pass_between_files(drop, emulator, make_config):
    write_files(drop, {f"f{i}.mp4": b"x" * i for i in range(20)})
    emulator.answer_delay = 0.05
    config = make_config(workers={"hash": 1, "submit": 1})
    stop = threading.Event()
    emulator_requests = emulator.requests

    def stop_after_three():
        while len(emulator_requests) < 3:
            time.sleep(0.005)
        stop.set()

    threading.Thread(target=stop_after_three, daemon=True).start()
    summary = run(config, stop=stop)
    assert summary.interrupted and summary.exit_code() == cdn_push.EXIT_INCOMPLETE
    assert 3 <= summary.submitted < 20
    assert sum(r.state == "submitted" for r in rows(config).values()) == summary.submitted
    emulator.answer_delay = 0
    rest = run(config)
    assert rest.submitted == 20 - summary.submitted and len(emulator.requests) == 20


def test_a_stop_during_a_retry_wait_ends_the_pass_quickly_as_interrupted(drop, emulator, make_config):
    write_files(drop, {"a.mp4": b"a"})
    emulator.inject(*["503"] * 20)
    config = make_config(api={"url": emulator.api_url, "login": "tester", "password": "api-Pa55-w0rd-zebra",
                              "retry": {"attempts": 10, "backoff_base": 5, "backoff_max": 30, "max_seconds": 120}})
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    started = time.monotonic()
    with Ledger.open(config.ledger) as ledger:
        client = cdn_push.CdnClient(config.api, stop=stop)
        summary = Pipeline(config, ledger, client, stop=stop).run_once()
        client.close()
    assert time.monotonic() - started < 5
    assert summary.interrupted and summary.fatal is None
    assert summary.exit_code() == cdn_push.EXIT_INCOMPLETE


@pytest.mark.parametrize("state, attempts, age, callbacks, expected", [
    ("submitted", 1, 1000, True, "resent"),         # accepted, never confirmed, waited long enough
    ("submitted", 1, 10, True, "unchanged"),        # still within callback.wait_seconds
    ("submitted", 3, 1000, True, "unchanged"),      # asked max_attempts times: left alone
    ("confirmed", 1, 1000, True, "unchanged"),
    ("submitted", 1, 1000, False, "unchanged"),     # no callbacks: nothing to wait for
])
def test_unconfirmed_files_are_submitted_again_within_bounds(drop, make_config, state, attempts, age,
                                                             callbacks, expected):
    write_files(drop, {"a.mp4": b"a"})
    extra = {"callback": {"public_url": "http://127.0.0.1:9", "listen": "127.0.0.1:9", "wait_seconds": 100,
                          "max_attempts": 3}} if callbacks else {}
    config = make_config(**extra)
    st = (drop / "a.mp4").stat()
    digest = hashlib.sha256(b"a").hexdigest()
    now = time.time()
    with Ledger.open(config.ledger, clock=lambda: now - age) as ledger:
        ledger.put(LedgerRow("a.mp4", 1, st.st_mtime_ns, st.st_ino, digest, "a.mp4", state, attempts=attempts,
                             accepted_name="a.mp4", accepted_size=1, accepted_sha256=digest))
    with Ledger.open(config.ledger) as ledger:
        pipeline = Pipeline(config, ledger, None)
        pipeline.scan_and_hash()
        row = ledger.get("a.mp4")
    summary = pipeline.summary
    assert (summary.resent, summary.unchanged) == ((1, 0) if expected == "resent" else (0, 1))
    assert row.state == ("pending" if expected == "resent" else state)
    assert row.attempts == attempts


# -- the stages: queue order, streaming, the halt path (deterministic) ------------------------------

def job(path, priority=0, fresh=False):
    row = LedgerRow(path=path, size=1, mtime_ns=1, inode=1, sha256=SHA_A, name=path, state="pending",
                    priority=priority)
    return cdn_push.SubmitJob(row, {"name": path}, fresh)


def test_submit_queue_order_is_prio_then_fresh_then_backlog_in_order():
    queue = cdn_push.SubmitQueue()
    for item in (job("b1"), job("b2"), job("fresh1", fresh=True), job("p1", priority=1), job("b3"),
                 job("p5", priority=5), job("fresh2", fresh=True), job("p1-fresh", priority=1, fresh=True)):
        queue.put(item)
    order = [queue.get(timeout=0).row.path for _ in range(len(queue))]
    assert order == ["p5", "p1-fresh", "p1", "fresh1", "fresh2", "b1", "b2", "b3"]
    assert queue.get(timeout=0) is None


def test_a_closed_submit_queue_hands_back_what_it_held_and_releases_waiting_workers():
    queue = cdn_push.SubmitQueue()
    got = []
    waiter = threading.Thread(target=lambda: got.append(queue.get()))
    waiter.start()
    queue.close()
    waiter.join(5)
    assert got == [None]
    queue = cdn_push.SubmitQueue()
    queue.put(job("a"))
    assert [j.row.path for j in queue.close()] == ["a"] and queue.get(timeout=0) is None


@pytest.mark.parametrize("priority, fresh, rank", [(0, False, (0, 1)), (0, True, (0, 0)), (3, False, (-3, 1))])
def test_queue_rank(priority, fresh, rank):
    assert cdn_push.queue_rank(priority, fresh) == rank


def test_the_first_request_leaves_before_the_pass_ends_and_a_fresh_file_overtakes_the_backlog(drop, make_config):
    write_files(drop, {f"backlog/{i:02}.mp4": b"b%d" % i for i in range(20)})
    config = make_config(workers={"hash": 1, "submit": 1}, rules=[{"match": "urgent/**", "fetch_prio": 2}])
    client = FakeCdnClient().hold()
    with Ledger.open(config.ledger) as ledger:
        pipeline = Pipeline(config, ledger, client)
        pipeline.start_scan()
        step_until(pipeline, lambda: client.sent, "the first request")
        assert client.sent == ["backlog/00.mp4"]
        step_until(pipeline, lambda: not pipeline.scanning, "the scan")
        write_files(drop, {"fresh.mp4": b"fresh", "urgent/x.mp4": b"x"})
        pipeline.add_fresh([cdn_push.FileEntry("fresh.mp4", str(drop / "fresh.mp4"),
                                               *cdn_push.current_stat(str(drop / "fresh.mp4")))])
        pipeline.start_scan()       # a rescan finds urgent/x.mp4, which a fetch_prio rule matches
        step_until(pipeline, lambda: not pipeline.scanning and "urgent/x.mp4" in ledger_paths(ledger), "rescan")
        for expected_length in range(2, 5):
            client.release()
            step_until(pipeline, lambda: len(client.sent) >= expected_length, "the next request")
        assert client.sent[:4] == ["backlog/00.mp4", "urgent/x.mp4", "fresh.mp4", "backlog/01.mp4"]
        for _ in range(30):
            client.release()
        step_until(pipeline, lambda: not pipeline.busy(), "everything sent")
        pipeline.halt()
        assert pipeline.summary.submitted == 22
        assert {row.state for row in ledger.all_rows()} == {"submitted"}


def ledger_paths(ledger):
    return {row.path for row in ledger.all_rows()}


def test_stop_during_the_scan_keeps_what_was_hashed_and_a_rerun_finishes(drop, emulator, make_config):
    write_files(drop, {f"d{i // 50}/f{i:03}.mp4": b"x%d" % i for i in range(300)})
    config = make_config(workers={"hash": 1, "submit": 1})
    stop = threading.Event()
    with Ledger.open(config.ledger) as ledger:
        # one file per step: the stop lands mid-scan
        pipeline = Pipeline(config, ledger, None, stop=stop, tuning=cdn_push.Tuning(scan_slice=0.0))
        pipeline.start_scan()
        step_until(pipeline, lambda: pipeline.summary.hashed_files >= 120, "some hashing")
        stop.set()
        pipeline.halt()
        kept = ledger_paths(ledger)
        assert pipeline.scanning is False
    assert len(kept) == pipeline.summary.hashed_files and 120 <= len(kept) < 300
    summary = run(config)
    assert summary.hashed_files == 300 - len(kept) and summary.submitted == 300
    assert_names(emulator, {f"d{i // 50}/f{i:03}.mp4" for i in range(300)})


def assert_names(emulator, names):
    assert {r["name"] for r in emulator.requests} == names


def test_stop_while_a_large_file_is_hashed_cuts_the_hash_short(drop, make_config):
    big = drop / "big.mp4"
    with open(big, "wb") as handle:
        handle.truncate(512 * 1024 * 1024)      # sparse: reads fast, but takes many buffers
    old = time.time() - 3600
    import os
    os.utime(big, (old, old))
    config = make_config(workers={"hash": 1, "submit": 1}, scan={"settle_seconds": 5, "allow_sparse": True})
    started = threading.Event()

    def hash_and_tell(entry, progress, cancel):
        return cdn_push.hash_outcome(entry, lambda n: (started.set(), progress(n)), cancel)

    with Ledger.open(config.ledger) as ledger:
        pipeline = Pipeline(config, ledger, None, hash_function=hash_and_tell)
        pipeline.start_scan()
        step_until(pipeline, started.is_set, "hashing under way")
        began = time.monotonic()
        pipeline.stop.set()
        pipeline.halt()
        assert time.monotonic() - began < 2.0
        assert ledger.get("big.mp4") is None and pipeline.summary.hashed_files == 0


def test_stop_while_requests_are_out_lets_them_finish_and_records_their_answers(drop, make_config):
    write_files(drop, {f"{i}.mp4": b"%d" % i for i in range(6)})
    config = make_config(workers={"hash": 1, "submit": 2})
    client = FakeCdnClient().hold()
    with Ledger.open(config.ledger) as ledger:
        pipeline = Pipeline(config, ledger, client)
        pipeline.start_scan()
        step_until(pipeline, lambda: len(client.sent) == 2, "two requests out")
        pipeline.stop.set()
        halted = threading.Thread(target=pipeline.halt)
        halted.start()
        client.release(2)
        halted.join(10)
        assert not halted.is_alive()
        states = {row.path: row.state for row in ledger.all_rows()}
    assert client.sent == ["0.mp4", "1.mp4"]
    assert [states[f"{i}.mp4"] for i in range(6)] == ["submitted"] * 2 + ["pending"] * 4


def test_a_full_queue_gives_way_to_a_more_urgent_job_only():
    queue = cdn_push.SubmitQueue()
    for item in (job("b1"), job("fresh", fresh=True), job("b2")):
        queue.put(item)
    assert queue.give_way(cdn_push.queue_rank(0, False)) is None          # same rank: no
    assert queue.give_way(cdn_push.queue_rank(1, False)).row.path == "b2"  # the last of the backlog
    assert [queue.get(timeout=0).row.path for _ in range(2)] == ["fresh", "b1"]


def test_a_big_folder_is_taken_in_chunks_so_one_turn_stays_short(drop, make_config):
    write_files(drop, {f"f{i:03}.mp4": b"%d" % i for i in range(35)})
    config = make_config()
    with Ledger.open(config.ledger) as ledger:
        # one unit of work per step, ten files a chunk
        pipeline = Pipeline(config, ledger, None, tuning=cdn_push.Tuning(scan_slice=0.0, folder_chunk=10))
        pipeline.start_scan()
        pipeline.step(timeout=0)                              # the folder is listed, its first chunk looked at
        pipeline.check_invariants()
        assert pipeline.table.count(cdn_push.Stage.TO_HASH) == 10 and pipeline.summary.hashed_files == 0
        pipeline.step(timeout=0)                              # one file hashed: the walk waits for the rest
        pipeline.check_invariants()
        assert pipeline.table.count(cdn_push.Stage.TO_HASH) == 9 and pipeline.summary.hashed_files == 1
        step_until(pipeline, lambda: not pipeline.scanning, "the pass")
        pipeline.halt()
        assert pipeline.summary.hashed_files == 35 and len(ledger_paths(ledger)) == 35


def test_the_fake_and_the_real_client_offer_what_the_pipeline_needs(make_config):
    assert isinstance(FakeCdnClient(), cdn_push.SubmitClient)
    assert isinstance(cdn_push.CdnClient(make_config().api), cdn_push.SubmitClient)
    assert not isinstance(object(), cdn_push.SubmitClient)


def test_a_run_leaves_a_file_another_process_holds_open_for_writing(drop, emulator, make_config):
    write_files(drop, {"done.mp4": b"done", "open.mp4": b"half of it"})    # an hour old: settled by mtime
    config = make_config()
    with open(drop / "open.mp4", "ab") as writer:
        summary = run(config)
        assert (summary.submitted, summary.waiting) == (1, 1)
        assert [r["name"] for r in emulator.requests] == ["done.mp4"]
        writer.write(b" and the rest")
    old = time.time() - 3600
    os.utime(drop / "open.mp4", (old, old))                 # settled by mtime too, once closed
    summary = run(config)
    assert summary.submitted == 1 and emulator.requests[-1]["name"] == "open.mp4"
    assert int(emulator.requests[-1]["size"]) == len(b"half of it and the rest")
