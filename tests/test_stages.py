"""The pipeline's stages, the settler and the watch loop, one behaviour at a time: the tests the
mutation pass (tests/mutants.py) found missing. Real files in temporary folders, the real ledger,
the fake CDN client, injected clocks; every wait is for a condition, and the path table is checked
after every step."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import threading
import time

import pytest

import cdn_push
from cdn_push import (CallbackInbox, CallbackReport, CdnAnswer, FileEntry, Ledger, LedgerRow, Pipeline, Settler,
                      Stage, Tuning, UrlSigner, WatchService)
from conftest import write_files
from fakes import Clock, FakeCdnClient, FakeOpenFiles, step_until


def cfg(make_config, raw_config, **sections):
    """No origin probe before the first request: the fake client fetches nothing."""
    return make_config(origin={**raw_config["origin"], "check": False}, **sections)


def callbacks(**settings):
    """Callbacks on, to a receiver nobody calls: the tests put reports in the inbox themselves."""
    return {"public_url": "http://127.0.0.1:9/cb", "listen": "127.0.0.1:0", **settings}


def sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def entry_for(drop, relpath):
    return FileEntry(relpath, str(drop / relpath), *cdn_push.current_stat(str(drop / relpath)))


def imported_row(drop, relpath, content, *, state="submitted", attempts=1):
    """The ledger row of a file the CDN accepted as it is on disk now."""
    digest = sha(content)
    size, mtime_ns, inode = cdn_push.current_stat(str(drop / relpath))
    return LedgerRow(relpath, size, mtime_ns, inode, digest, relpath, state, attempts=attempts,
                     accepted_name=relpath, accepted_size=size, accepted_sha256=digest)


# -- the decide step's record (pure) ----------------------------------------------------------------

ENTRY = FileEntry("p", "/drop/p", 1, 7, 1)          # touched since: a new mtime, the same content
SHA_A, SHA_B = "a" * 64, "b" * 64


def test_a_resend_rehashed_at_the_same_content_keeps_its_attempts():
    """A failed callback left the row pending for a resend; a touch makes it hashed again. Its
    attempts still count towards callback.max_attempts; new content starts again from 0."""
    waiting = LedgerRow("p", 1, 5, 1, SHA_A, "n", "pending", attempts=2, last_error="the CDN could not import it")
    same = cdn_push.row_after_decision(cdn_push.DECISION_NEW, ENTRY, waiting, "n", SHA_A, 0)
    assert (same.state, same.attempts, same.last_error, same.mtime_ns) == ("pending", 2, None, 7)
    other = cdn_push.row_after_decision(cdn_push.DECISION_NEW, ENTRY, waiting, "n", SHA_B, 0)
    assert other.attempts == 0


@pytest.mark.parametrize("state", ["failed", "rejected"])
def test_a_failed_or_rejected_file_sent_again_starts_a_new_count_of_attempts(state):
    done = LedgerRow("p", 1, 5, 1, SHA_A, "n", state, attempts=3, last_error="gave up")
    again = cdn_push.row_after_decision(cdn_push.DECISION_NEW, ENTRY, done, "n", SHA_A, 0)
    assert (again.state, again.attempts) == ("pending", 0)


# -- the decider: files accepted but never confirmed -----------------------------------------------

def test_an_unconfirmed_file_is_asked_again_once_wait_seconds_have_passed_to_the_second(
        drop, make_config, raw_config):
    write_files(drop, {"a.mp4": b"a"})
    config = cfg(make_config, raw_config, callback=callbacks(wait_seconds=100, max_attempts=3))
    accepted_at = float(int(time.time()) - 600)
    with Ledger.open(config.ledger, clock=lambda: accepted_at) as ledger:
        ledger.put(imported_row(drop, "a.mp4", b"a"))
    with Ledger.open(config.ledger) as ledger:
        early = Pipeline(config, ledger, None, clock=lambda: accepted_at + 99.5)
        early.scan_and_hash()
        assert (early.summary.unchanged, early.summary.resent) == (1, 0)
        due = Pipeline(config, ledger, None, clock=lambda: accepted_at + 100)
        due.scan_and_hash()
        assert (due.summary.unchanged, due.summary.resent) == (0, 1)
        assert ledger.get("a.mp4").state == "pending"


# -- intake: young files, renamed files, batched decisions ---------------------------------------------

def test_a_young_file_the_ledger_vouches_for_is_unchanged_not_waiting(drop, make_config, raw_config):
    write_files(drop, {"a.mp4": b"just imported by the watcher"}, age=0)
    config = cfg(make_config, raw_config)
    waiting = []
    with Ledger.open(config.ledger) as ledger:
        ledger.put(imported_row(drop, "a.mp4", b"just imported by the watcher"))
        pipeline = Pipeline(config, ledger, None, on_waiting=waiting.append)
        pipeline.scan_and_hash()
    assert (pipeline.summary.unchanged, pipeline.summary.waiting, waiting) == (1, 0, [])


def counting_hashes(hashed):
    def counting(entry, progress, cancel):
        hashed.append(entry.relpath)
        return cdn_push.hash_outcome(entry, progress, cancel)
    return counting


def imported_folder(drop, ledger, contents):
    """Files the CDN took as they are, and their rows: a rerun passes them by on a stat alone."""
    write_files(drop, contents)
    ledger.put_many([imported_row(drop, relpath, content) for relpath, content in contents.items()])


def test_a_rerun_passes_by_files_the_ledger_vouches_for_and_hashes_one_changed_since(
        drop, make_config, raw_config):
    config = cfg(make_config, raw_config)
    hashed = []
    with Ledger.open(config.ledger) as ledger:
        imported_folder(drop, ledger, {f"d/{i}.mp4": b"%d" % i for i in range(5)})
        write_files(drop, {"d/3.mp4": b"new content"})
        pipeline = Pipeline(config, ledger, None, hash_function=counting_hashes(hashed))
        pipeline.scan_and_hash()
        assert (hashed, pipeline.summary.unchanged, pipeline.summary.changed) == (["d/3.mp4"], 4, 1)


def test_a_pass_says_once_which_symlinks_it_passed_by_and_counts_them_as_nothing_amiss(
        tmp_path, drop, make_config, raw_config, caplog):
    write_files(drop, {"a.mp4": b"video"})
    write_files(tmp_path / "elsewhere", {f"{i}.mp4": b"%d" % i for i in range(7)})
    for i in range(7):
        os.symlink(tmp_path / "elsewhere" / f"{i}.mp4", drop / f"link{i}.mp4")
    config = cfg(make_config, raw_config)
    with Ledger.open(config.ledger) as ledger, caplog.at_level(logging.INFO, logger="cdn_push"):
        pipeline = Pipeline(config, ledger, None)
        pipeline.scan_and_hash()
        told = [r for r in caplog.records if "symlink" in r.getMessage()]
        assert pipeline.summary.unreadable == 0 and pipeline.summary.new == 1     # nothing amiss, no exit 1
        caplog.clear()
        pipeline.scan_and_hash()              # a second pass counts its own
        assert [r.getMessage() for r in caplog.records if "symlink" in r.getMessage()] == [told[0].getMessage()]
    head = "passed by 7 symlinks (scan.follow_symlinks is off; turn it on to import what they lead to): "
    assert len(told) == 1 and told[0].getMessage().startswith(head) and told[0].getMessage().endswith(" and 2 more")
    named = told[0].getMessage()[len(head):-len(" and 2 more")].split(", ")      # in the order listed
    assert len(set(named)) == 5 and set(named) <= {f"link{i}.mp4" for i in range(7)}
    assert told[0].levelno == logging.INFO         # a cron run with -q says nothing of links kept on purpose


def test_a_reload_in_the_middle_of_a_pass_voids_what_the_folders_read_before_it_vouched_for(
        drop, make_config, raw_config):
    """The walk read d1's rows under the old name_prefix; the new one names every file anew."""
    config = cfg(make_config, raw_config)
    with Ledger.open(config.ledger) as ledger:
        imported_folder(drop, ledger, {"d1/a.mp4": b"one", "d2/b.mp4": b"two"})
        pipeline = Pipeline(config, ledger, None)
        pipeline.start_scan()
        pipeline.ctx.config = cfg(make_config, raw_config, name_prefix="x/")      # as reconfigure does
        pipeline.scan_and_hash()
        assert pipeline.summary.unchanged == 0 and pipeline.summary.changed + pipeline.summary.new == 2


def test_a_file_replaced_by_another_known_one_is_hashed_and_recorded_as_changed(drop, make_config, raw_config):
    """`mv b a`: a's row is not taken for a move of b's (a is known), so a is hashed and is a change."""
    config = cfg(make_config, raw_config)
    hashed = []
    with Ledger.open(config.ledger) as ledger:
        imported_folder(drop, ledger, {"a.mp4": b"first", "b.mp4": b"second"})
        os.replace(drop / "b.mp4", drop / "a.mp4")
        pipeline = Pipeline(config, ledger, None, hash_function=counting_hashes(hashed))
        pipeline.scan_and_hash()
        assert (hashed, pipeline.summary.changed, pipeline.summary.new) == (["a.mp4"], 1, 0)
        assert ledger.get("a.mp4").sha256 == sha(b"second")


def test_a_deleted_file_the_ledger_vouched_for_is_gone_and_one_gone_before_is_not_told_again(
        drop, make_config, raw_config, caplog):
    config = cfg(make_config, raw_config)
    with Ledger.open(config.ledger) as ledger:
        imported_folder(drop, ledger, {"a.mp4": b"kept", "b.mp4": b"deleted now", "c.mp4": b"deleted before"})
        ledger.put(imported_row(drop, "c.mp4", b"deleted before", state="gone"))
        (drop / "b.mp4").unlink()
        (drop / "c.mp4").unlink()
        with caplog.at_level(logging.INFO, logger="cdn_push"):
            pipeline = Pipeline(config, ledger, None)
            pipeline.scan_and_hash()
        assert ledger.get("b.mp4").state == "gone" and pipeline.summary.unchanged == 1
    told = [r.getMessage() for r in caplog.records if "no longer in the folder" in r.getMessage()]
    assert told == ["1 file no longer in the folder: b.mp4"]


def test_a_file_the_ledger_vouches_for_is_left_to_its_stage_while_a_question_about_it_is_out(
        drop, make_config, raw_config):
    config = cfg(make_config, raw_config)
    with Ledger.open(config.ledger) as ledger:
        imported_folder(drop, ledger, {"a.mp4": b"asked about", "b.mp4": b"idle"})
        pipeline = Pipeline(config, ledger, None)
        pipeline.ctx.table.move("a.mp4", None, Stage.CHECKING)
        pipeline.scan_and_hash()
        assert pipeline.summary.unchanged == 1 and pipeline.ctx.table.stage("a.mp4") is Stage.CHECKING


def test_a_file_the_ledger_vouches_for_that_became_one_of_cdn_pushs_own_is_skipped_with_a_warning(
        drop, make_config, raw_config, caplog):
    """Imported once, then named api.password_file: a rerun says so, and never counts it as done."""
    config = cfg(make_config, raw_config)
    with Ledger.open(config.ledger) as ledger:
        imported_folder(drop, ledger, {"a.mp4": b"video", "secret.txt": b"hunter2"})
        secret = {**raw_config["api"], "password": None, "password_file": str(drop / "secret.txt")}
        with caplog.at_level(logging.WARNING, logger="cdn_push"):
            pipeline = Pipeline(cfg(make_config, raw_config, api=secret), ledger, None)
            pipeline.scan_and_hash()
    assert pipeline.summary.unchanged == 1
    assert any("skipped secret.txt" in r.getMessage() and "api.password_file" in r.getMessage()
               for r in caplog.records)


def test_a_file_renamed_in_the_folder_is_recorded_under_its_new_path_without_hashing(
        drop, make_config, raw_config):
    write_files(drop, {"a.mp4": b"renamed later"})
    config = cfg(make_config, raw_config)
    hashed = []

    def counting(entry, progress, cancel):
        hashed.append(entry.relpath)
        return cdn_push.hash_outcome(entry, progress, cancel)

    with Ledger.open(config.ledger) as ledger:
        Pipeline(config, ledger, None).scan_and_hash()
        (drop / "a.mp4").rename(drop / "b.mp4")
        Pipeline(config, ledger, None, hash_function=counting).scan_and_hash()
        assert hashed == []
        assert ledger.get("b.mp4").sha256 == sha(b"renamed later")


def test_decisions_are_written_as_soon_as_commit_every_of_them_wait(drop, make_config, raw_config):
    write_files(drop, {f"{i}.mp4": b"%d" % i for i in range(3)})
    config = cfg(make_config, raw_config)
    with Ledger.open(config.ledger) as ledger:
        # one file per step; the flush interval never passes on this clock
        pipeline = Pipeline(config, ledger, None, monotonic=Clock(0.0),
                            tuning=Tuning(scan_slice=0.0, flush_every=3600.0, commit_every=2))
        pipeline.start_scan()
        step_until(pipeline, lambda: pipeline.summary.hashed_files == 2, "two files hashed")
        assert pipeline.scanning and pipeline.table.count(Stage.DECIDED) == 0
        assert sum(1 for _ in ledger.all_rows()) == 2
        pipeline.halt()


def test_a_prio_file_is_written_at_once_while_the_scan_batches_the_rest(drop, make_config, raw_config):
    write_files(drop, {"plain.mp4": b"plain", "urgent/x.mp4": b"urgent"})
    config = cfg(make_config, raw_config, rules=[{"match": "urgent/**", "fetch_prio": 2}])
    with Ledger.open(config.ledger) as ledger:
        pipeline = Pipeline(config, ledger, None, monotonic=Clock(0.0),
                            tuning=Tuning(scan_slice=0.0, flush_every=3600.0))
        pipeline.start_scan()
        step_until(pipeline, lambda: pipeline.summary.hashed_files == 1, "plain.mp4 hashed")
        assert ledger.get("plain.mp4") is None                 # the scan goes on: batched
        step_until(pipeline, lambda: pipeline.summary.hashed_files == 2, "urgent/x.mp4 hashed")
        assert ledger.get("urgent/x.mp4").priority == 2         # written in the same step
        pipeline.halt()


# -- the hasher: fresh drops go first, and have a lane of their own ---------------------------------

def test_a_fresh_drop_is_hashed_before_the_files_a_pass_has_waiting(drop, make_config, raw_config):
    write_files(drop, {f"{i}.mp4": b"%d" % i for i in range(5)})
    config = cfg(make_config, raw_config)
    with Ledger.open(config.ledger) as ledger:
        pipeline = Pipeline(config, ledger, None, monotonic=Clock(0.0), tuning=Tuning(scan_slice=0.0))
        pipeline.start_scan()
        step_until(pipeline, lambda: pipeline.table.count(Stage.TO_HASH) == 5, "the folder listed")
        write_files(drop, {"drops/new.mp4": b"fresh"})
        pipeline.add_fresh([entry_for(drop, "drops/new.mp4")])
        pipeline.step(0)
        pipeline.check_invariants()
        assert pipeline.summary.hashed_files == 1 and ledger.get("drops/new.mp4") is not None
        assert pipeline.table.count(Stage.TO_HASH) == 5
        pipeline.halt()


def test_a_fresh_drop_takes_the_spare_hash_lane_while_the_pass_holds_the_others(drop, make_config, raw_config):
    write_files(drop, {"big.mp4": b"b" * 1000})
    config = cfg(make_config, raw_config, workers={"hash": 1, "submit": 1})
    release = threading.Event()

    def big_held(entry, progress, cancel):
        if entry.relpath == "big.mp4":
            release.wait(20)
        return cdn_push.hash_outcome(entry, progress, cancel)

    with Ledger.open(config.ledger) as ledger:
        # every file counts as large here: each goes to a hash thread
        pipeline = Pipeline(config, ledger, None, hash_function=big_held, tuning=Tuning(hash_inline_size=1))
        try:
            pipeline.start_scan()
            step_until(pipeline, lambda: pipeline.table.stage("big.mp4") is Stage.HASHING, "the pass hashing big.mp4")
            write_files(drop, {"drops/new.mp4": b"fresh"})
            pipeline.add_fresh([entry_for(drop, "drops/new.mp4")])
            step_until(pipeline, lambda: ledger.get("drops/new.mp4") is not None, "the fresh drop hashed", timeout=5)
            assert pipeline.table.stage("big.mp4") is Stage.HASHING
        finally:
            release.set()
        step_until(pipeline, lambda: not pipeline.busy_here(), "the pass")
        pipeline.halt()
        assert ledger.get("big.mp4") is not None


# -- the feeder: memory bound, the CDN failing, files gone before they are sent -------------------------

def test_fresh_drops_beyond_queued_max_wait_in_the_ledger_not_in_memory(drop, make_config, raw_config):
    names = [f"{i}.mp4" for i in range(4)]
    write_files(drop, {name: name.encode() for name in names})
    config = cfg(make_config, raw_config, workers={"hash": 1, "submit": 1})
    client = FakeCdnClient().hold()
    with Ledger.open(config.ledger) as ledger:
        pipeline = Pipeline(config, ledger, client, tuning=Tuning(queued_max=1))

        def bounded():
            assert len(pipeline.submitter.queue) <= 1, "more jobs held in memory than queued_max"

        pipeline.add_fresh([entry_for(drop, name) for name in names])
        step_until(pipeline, lambda: pipeline.table.count(Stage.SUBMITTING) == 2, "one request out, one queued",
             each=bounded)
        assert ledger.counts()["pending"] == 4
        client.release(len(names))
        step_until(pipeline, lambda: len(client.sent) == 4 and not pipeline.busy(), "every file sent", each=bounded)
        pipeline.halt()
    assert sorted(client.sent) == names


def test_three_failures_in_a_row_end_a_one_shot_run_as_the_cdn_unavailable(drop, make_config, raw_config):
    write_files(drop, {f"{i}.mp4": b"%d" % i for i in range(3)})
    config = cfg(make_config, raw_config, workers={"hash": 1, "submit": 1})
    client = FakeCdnClient(answer=lambda params: cdn_push.CdnError("HTTP 500: internal error"))
    with Ledger.open(config.ledger) as ledger:
        summary = Pipeline(config, ledger, client).run_once()
    assert summary.failed == 3 and isinstance(summary.fatal, cdn_push.CdnUnavailableError), summary.line()


def test_an_imported_file_changed_then_deleted_before_its_resend_keeps_its_import_on_record(
        drop, make_config, raw_config):
    write_files(drop, {"a.mp4": b"second version"})
    config = cfg(make_config, raw_config)
    with Ledger.open(config.ledger) as ledger:
        # the CDN holds the first version; the second is hashed and waits to be sent
        second = imported_row(drop, "a.mp4", b"second version")
        ledger.put(second._replace(state="pending", accepted_size=5, accepted_sha256=sha(b"first")))
        (drop / "a.mp4").unlink()
        client = FakeCdnClient()
        pipeline = Pipeline(config, ledger, client)
        pipeline.feeder.feed()
        pipeline.check_invariants()
        pipeline.halt()
        row = ledger.get("a.mp4")
    assert client.sent == []
    assert row is not None and (row.state, row.sha256, row.size) == ("submitted", sha(b"first"), 5)


# -- the recorder: answers and callbacks --------------------------------------------------------------

def test_a_file_already_in_the_cdn_with_no_replace_set_is_rejected_with_the_reason(drop, make_config, raw_config):
    write_files(drop, {"a.mp4": b"a"})
    config = cfg(make_config, raw_config, defaults={"no_replace": True})
    client = FakeCdnClient(answer=lambda params: CdnAnswer("exists", 200, "file already exists", "{}"))
    with Ledger.open(config.ledger) as ledger:
        summary = Pipeline(config, ledger, client).run_once()
        row = ledger.get("a.mp4")
    assert client.requests[0]["no_replace"] == "true"
    assert summary.rejected == 1 and row.state == "rejected" and "no_replace is set" in row.last_error


def test_a_callback_that_overtakes_the_answer_is_applied_once_the_answer_is_recorded(
        drop, make_config, raw_config):
    write_files(drop, {"a.mp4": b"a" * 100})
    config = cfg(make_config, raw_config, callback=callbacks(wait_seconds=60))
    inbox, client, clock = CallbackInbox(), FakeCdnClient().hold(), Clock(time.time())
    with Ledger.open(config.ledger) as ledger:
        pipeline = Pipeline(config, ledger, client, signer=UrlSigner(b"k" * 32), inbox=inbox, clock=clock)
        pipeline.add_fresh([entry_for(drop, "a.mp4")])
        step_until(pipeline, lambda: client.sent, "the request out")
        inbox.put(CallbackReport("a.mp4", 1, True, 100, sha(b"a" * 100), "", clock()))
        step_until(pipeline, lambda: inbox.deferred, "the early report held back")
        client.release()
        step_until(pipeline, lambda: ledger.get("a.mp4").state == "confirmed", "the confirmation", timeout=5)
        assert pipeline.table.count(cdn_push.Stage.AWAITING) == 0 and pipeline.summary.confirmed == 1
        pipeline.halt()


@pytest.mark.parametrize("success, state", [(True, "confirmed"), (False, "submitted")])
def test_a_late_report_on_an_earlier_attempt_confirms_only_if_it_is_a_success(
        drop, make_config, raw_config, success, state):
    write_files(drop, {"a.mp4": b"a"})
    config = cfg(make_config, raw_config, callback=callbacks())
    inbox = CallbackInbox()
    with Ledger.open(config.ledger) as ledger:
        ledger.put(imported_row(drop, "a.mp4", b"a", attempts=2))        # sent a second time
        inbox.put(CallbackReport("a.mp4", 1, success, 1, sha(b"a"), "" if success else "timeout", time.time()))
        pipeline = Pipeline(config, ledger, None, signer=UrlSigner(b"k" * 32), inbox=inbox)
        pipeline.step(0)
        pipeline.check_invariants()
        assert ledger.get("a.mp4").state == state
        pipeline.halt()


@pytest.mark.parametrize("attempts, state", [(2, "pending"), (3, "failed")])
def test_a_failed_fetch_is_final_on_the_last_allowed_attempt(drop, make_config, raw_config, attempts, state):
    write_files(drop, {"a.mp4": b"a"})
    config = cfg(make_config, raw_config, callback=callbacks(max_attempts=3))
    inbox = CallbackInbox()
    with Ledger.open(config.ledger) as ledger:
        ledger.put(imported_row(drop, "a.mp4", b"a", attempts=attempts))
        inbox.put(CallbackReport("a.mp4", attempts, False, None, "", "download failed", time.time()))
        pipeline = Pipeline(config, ledger, None, signer=UrlSigner(b"k" * 32), inbox=inbox)
        pipeline.step(0)
        pipeline.check_invariants()
        row = ledger.get("a.mp4")
        pipeline.halt()
    assert row.state == state and "download failed" in row.last_error


# -- the settler: when a file that had events counts as written --------------------------------------

class Event:
    def __init__(self, event_type, src_path, dest_path=""):
        self.event_type, self.src_path, self.dest_path = event_type, str(src_path), str(dest_path)
        self.is_directory = False


@pytest.fixture
def settler(drop, make_config, raw_config):
    config = cfg(make_config, raw_config, scan={"settle_seconds": 30})
    clock, wall = Clock(1000.0), Clock(time.time())
    # every writer on the machine would be seen, and no process holds a file open
    return Settler(config, Tuning(close_grace=0.5), clock, wall, FakeOpenFiles()), clock, wall


def ready(settler):
    return [entry.relpath for entry in settler.settled_entries()]


def test_the_settler_takes_a_file_only_once_two_looks_find_it_the_same(drop, settler):
    settler, clock, wall = settler
    write_files(drop, {"a.mp4": b"old, no events (a folder moved in)"})
    settler.still_writing("a.mp4")
    assert ready(settler) == []                       # the first look only notes size and mtime
    write_files(drop, {"a.mp4": b"old, no events (a folder moved in), still growing"})   # its old mtime kept
    clock.advance(60)
    assert ready(settler) == []
    clock.advance(60)
    assert ready(settler) == ["a.mp4"] and len(settler) == 0


def test_where_writers_cannot_be_seen_a_young_file_waits_until_it_is_settle_seconds_old(drop, settler):
    settler, clock, wall = settler
    settler.local = False                             # a polled folder: a writer may be on another machine
    write_files(drop, {"young.mp4": b"written a moment ago"}, age=0)
    settler.still_writing("young.mp4")                # left by a pass: no event seen for it
    for _ in range(3):
        clock.advance(60)
        assert ready(settler) == []
    wall.advance(31)
    assert ready(settler) == ["young.mp4"]


def test_where_writers_cannot_be_seen_a_file_deleted_and_written_again_waits_for_its_new_writer(drop, settler):
    settler, clock, wall = settler
    settler.local = False
    path = drop / "a.mp4"
    write_files(drop, {"a.mp4": b"first"}, age=0)
    for kind in ("created", "modified", "closed", "deleted"):
        settler.note(Event(kind, path))
    write_files(drop, {"a.mp4": b"second writer, still at it"}, age=0)
    for kind in ("created", "modified"):
        settler.note(Event(kind, path))
    assert ready(settler) == []
    clock.advance(1.0)                                  # past the close grace, but nobody closed it
    assert ready(settler) == [] and "a.mp4" in settler.candidates


def test_a_symlink_dropped_into_the_folder_is_not_taken(tmp_path, drop, settler):
    settler, clock, wall = settler
    (tmp_path / "outside.mp4").write_bytes(b"not ours")
    (drop / "link.mp4").symlink_to(tmp_path / "outside.mp4")
    for kind in ("created", "closed"):
        settler.note(Event(kind, drop / "link.mp4"))
    for _ in range(3):
        clock.advance(60)
        wall.advance(60)
        assert ready(settler) == []
    assert len(settler) == 0


class StaleOpenFiles(FakeOpenFiles):
    """A shared look taken before the writer opened its file: it shows the writer only when asked
    for a look from now."""

    def writers(self, under: object = "/", *, refresh: bool = False) -> frozenset[int]:
        return frozenset(self.inodes) if refresh else frozenset()


@pytest.mark.parametrize("close_event", [False, True])
def test_a_paused_writer_unseen_by_an_old_look_is_seen_by_a_fresh_one(drop, make_config, raw_config, close_event):
    """A file opened after the shared look was taken, half written, then left alone past the close
    grace: taking it needs a look from now, which finds its writer (the soak caught half files)."""
    write_files(drop, {"half.mp4": b"first half"}, age=0)
    open_files = StaleOpenFiles(complete=True, writers={(drop / "half.mp4").stat().st_ino})
    clock, wall = Clock(1000.0), Clock(time.time())
    settler = Settler(cfg(make_config, raw_config, scan={"settle_seconds": 30}), Tuning(close_grace=0.5), clock,
                      wall, open_files)
    for kind in ("created", "modified", *(["closed"] if close_event else [])):
        settler.note(Event(kind, drop / "half.mp4"))
    for _ in range(4):
        clock.advance(1.0)
        assert ready(settler) == []
    open_files.inodes.clear()                         # the writer finished and closed it
    clock.advance(1.0)
    assert ready(settler) == ["half.mp4"]


def test_a_pass_looks_anew_for_writers_of_a_recently_written_file(drop, make_config, raw_config):
    """A pass (cron, or the service's rescan) meets a file just past settle_seconds whose writer paused:
    the shared look may predate that writer, so a fresh one decides; the file waits, unhashed."""
    write_files(drop, {"paused.mp4": b"first half"}, age=3)
    open_files = StaleOpenFiles(complete=True, writers={(drop / "paused.mp4").stat().st_ino})
    config = cfg(make_config, raw_config, scan={"settle_seconds": 1})
    with Ledger.open(config.ledger) as ledger:
        summary = Pipeline(config, ledger, FakeCdnClient(), open_files=open_files).run_once()
        assert ledger.get("paused.mp4") is None
    assert summary.waiting == 1 and summary.new == 0


# -- the watch loop: reloads and a folder that goes away ------------------------------------------------

class FakeObserver:
    def schedule(self, handler, path, recursive):
        pass

    def start(self):
        pass

    def stop(self):
        pass

    def join(self, timeout=None):
        pass

    def is_alive(self):
        return True


@pytest.fixture
def service(drop, make_config, raw_config):
    made = []

    def make(load=None, tuning=Tuning()):
        config = cfg(make_config, raw_config, scan={"settle_seconds": 30, "rescan_interval": 3600})
        ledger = Ledger.open(config.ledger)
        client, clock = FakeCdnClient(), Clock(1000.0)
        watch = WatchService(config, ledger, stop=threading.Event(), reload=threading.Event(), load=load,
                             observer_factory=lambda polling, interval: FakeObserver(), clock=clock,
                             wall=time.time, tuning=tuning, client_factory=lambda c: client)
        made.append(watch)
        watch.start_watching()
        watch.start_pass()
        loop(watch, lambda: watch.passes_done == 1, "the first pass")
        return watch, client, clock

    yield make
    for watch in made:
        watch.pipeline.halt()
        watch.ledger.close()


def loop(watch, predicate, what, turns=300):
    for _ in range(turns):
        if predicate():
            return
        watch.iteration(tick=0.01)
        watch.pipeline.check_invariants()
    raise AssertionError(f"{what} did not happen in {turns} turns")


def test_a_reload_that_changes_the_names_looks_at_the_whole_folder_again(drop, make_config, raw_config, service):
    write_files(drop, {"a.mp4": b"a"})
    renamed = cfg(make_config, raw_config, name_prefix="v2/", scan={"settle_seconds": 30, "rescan_interval": 3600})
    watch, client, clock = service(load=lambda: renamed)
    loop(watch, lambda: client.sent == ["a.mp4"] and not watch.pipeline.busy(), "a.mp4 sent")
    watch.reload.set()
    loop(watch, lambda: "v2/a.mp4" in client.sent, "a.mp4 sent under its new name")
    assert watch.passes == 2 and client.sent == ["a.mp4", "v2/a.mp4"]


def test_a_rescan_that_finds_the_folder_gone_is_tried_again_after_the_retry_pause_not_every_turn(
        tmp_path, drop, service, caplog):
    watch, client, clock = service(tuning=Tuning(cdn_retry_pause=60.0))
    away = tmp_path / "unmounted"
    drop.rename(away)
    clock.advance(watch.next_rescan - clock())          # the periodic rescan is due
    with caplog.at_level(logging.ERROR, logger="cdn_push"):
        for _ in range(5):
            watch.iteration(tick=0)
            clock.advance(1)
    retries = [record for record in caplog.records if "trying again in 60s" in record.getMessage()]
    assert len(retries) == 1 and watch.passes == 1
    away.rename(drop)
    write_files(drop, {"missed.mp4": b"written while the folder was away"})
    clock.advance(60)
    loop(watch, lambda: client.sent == ["missed.mp4"], "the pass once the folder is back")
    assert watch.passes == 2


# -- the fetch window: hashing stays within the page cache's reach of the CDN's fetch (issue 22) -----

GIB = 1 << 30


def reader(files):
    def read(name):
        if name not in files:
            raise FileNotFoundError(name)
        return files[name]
    return read


MEMINFO = "MemTotal:       24000000 kB\nMemAvailable:    8388608 kB\n"       # 8 GiB
STATM = f"1000 {64 * 1024 * 1024 // os.sysconf('SC_PAGE_SIZE')} 10 1 0 1 0\n"   # 64 MiB resident


@pytest.mark.parametrize("files, room", [
    ({"/proc/meminfo": MEMINFO}, 8 * GIB),
    ({"/proc/meminfo": MEMINFO, "/proc/self/statm": STATM, "/proc/self/cgroup": "4:memory:/svc\n0::/\n",
      "/sys/fs/cgroup/memory/svc/memory.limit_in_bytes": str(512 << 20)}, (512 - 64) << 20),
    ({"/proc/meminfo": MEMINFO, "/proc/self/statm": STATM, "/proc/self/cgroup": "0::/system.slice/x.service\n",
      "/sys/fs/cgroup/system.slice/x.service/memory.max": str(GIB)}, GIB - (64 << 20)),
    ({"/proc/meminfo": MEMINFO, "/proc/self/statm": STATM, "/proc/self/cgroup": "0::/system.slice/x.service\n",
      "/sys/fs/cgroup/system.slice/x.service/memory.max": "max\n"}, 8 * GIB),
    ({"/proc/meminfo": MEMINFO, "/proc/self/statm": STATM, "/proc/self/cgroup": "4:memory:/\n",
      "/sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n"}, 8 * GIB),    # v1's "no limit"
    ({"/proc/meminfo": MEMINFO, "/proc/self/statm": STATM, "/proc/self/cgroup": "4:memory:/svc\n"}, 8 * GIB),
    ({"/proc/self/statm": STATM, "/proc/self/cgroup": "4:memory:/svc\n",
      "/sys/fs/cgroup/memory/svc/memory.limit_in_bytes": str(GIB)}, GIB - (64 << 20)),
    ({"/proc/meminfo": "MemTotal: 1 kB\n"}, None),
    ({}, None),
])
def test_the_page_cache_room_is_the_memory_available_or_the_cgroups_limit_beside_our_own(files, room):
    assert cdn_push.page_cache_room(reader(files)) == room


def test_the_fetch_window_admits_files_while_their_bytes_fit_and_always_one(caplog):
    mib = 1 << 20
    window = cdn_push.FetchWindow(100 * mib)
    assert window.room_for(500 * mib)                # nothing held: even a file larger than the window
    window.hold("big", 500 * mib)
    with caplog.at_level(logging.INFO, logger="cdn_push"):
        assert not window.room_for(1) and not window.room_for(1)
    assert [r.getMessage() for r in caplog.records] == [      # said once
        "hashing waits while the CDN fetches: 500 MiB hashed are not fetched yet, and 100 MiB is half of what "
        "the page cache can hold here; so the fetch reads them from memory, not from disk again"]
    window.release("big")
    for name in "abc":
        assert window.room_for(30 * mib)
        window.hold(name, 30 * mib)
    assert not window.room_for(11 * mib) and window.room_for(10 * mib) and window.held_bytes == 90 * mib
    window.hold("a", 30 * mib)                       # held once, whatever asks twice
    window.release("b")
    window.release("b")
    assert window.held_bytes == 60 * mib and len(window) == 2
    unbounded = cdn_push.FetchWindow(None)
    unbounded.hold("x", 10 ** 15)
    assert unbounded.room_for(10 ** 15) and unbounded.held_bytes == 0


def test_the_fetch_window_lets_go_of_what_it_held_once_the_origin_sent_nothing_for_a_while():
    clock, idle = Clock(100.0), [0.0]
    window = cdn_push.FetchWindow(100, clock, lambda: idle[0], idle_release=10)
    window.hold("old", 80)
    clock.advance(6)
    window.hold("new", 20)
    idle[0] = 9.9
    clock.advance(4)
    assert not window.room_for(50)                   # the CDN fetched from us 9.9 s ago: keep waiting
    idle[0] = 10
    assert window.room_for(50) and window.held_bytes == 20 and len(window) == 1   # "new" is 4 s old
    clock.advance(6)
    assert window.room_for(100) and window.held_bytes == 0
    window.hold("slow", 90)          # a long hash: its wait for the fetch starts when it is done
    clock.advance(60)
    window.hashed("slow")
    clock.advance(9)
    assert not window.room_for(20)
    clock.advance(1)
    assert window.room_for(20)


def test_the_inbox_says_a_file_is_fetched_once_its_ranges_add_up_to_it():
    clock = Clock(50.0)
    inbox = CallbackInbox(clock)
    inbox.wake = threading.Event()
    assert inbox.idle_seconds() == float("inf")
    assert not inbox.served("a.mp4", 40, 100) and not inbox.served("a.mp4", 30, 100)
    assert not inbox.wake.is_set() and inbox.take_fetched() == []
    clock.advance(3)
    assert inbox.served("a.mp4", 30, 100) and inbox.wake.is_set()
    assert inbox.take_fetched() == ["a.mp4"] and inbox.take_fetched() == []
    assert inbox.idle_seconds() == 0
    clock.advance(2)
    assert inbox.idle_seconds() == 2
    assert not inbox.served("a.mp4", 99, 100)        # a second fetch counts from nothing
    with inbox.sending():                            # a slow fetch between two chunks is no idleness
        clock.advance(30)
        assert inbox.idle_seconds() == 0
    clock.advance(4)
    assert inbox.idle_seconds() == 4


def served_config(make_config, raw_config, **sections):
    return make_config(origin={"check": False, "serve": {"listen": "127.0.0.1:0", "public_url": "http://127.0.0.1:9"}},
                       **sections)


@pytest.mark.parametrize("inline_below", [4096, 500], ids=["hashed inline", "on the hash threads"])
def test_hashing_waits_while_the_window_holds_what_the_cdn_has_not_fetched(drop, make_config, raw_config,
                                                                           inline_below):
    """Five 1000-byte files, a 2500-byte window: two are hashed and sent; the third waits until the
    origin has sent one whole, and the rest until the origin idles (the CDN then fetches later)."""
    write_files(drop, {f"v{i}.mp4": bytes([i]) * 1000 for i in range(5)})
    config = served_config(make_config, raw_config)
    clock = Clock(1000.0)
    inbox, client = CallbackInbox(clock), FakeCdnClient()
    with Ledger.open(config.ledger) as ledger:
        pipeline = Pipeline(config, ledger, client, signer=UrlSigner(b"k" * 32), inbox=inbox, monotonic=clock,
                            tuning=Tuning(fetch_window=2500, hash_inline_size=inline_below))
        pipeline.start_scan()
        step_until(pipeline, lambda: len(client.sent) == 2, "two files sent")
        for _ in range(20):
            pipeline.step(0)
        assert pipeline.summary.hashed_files == 2 and pipeline.ctx.window.held_bytes == 2000
        inbox.served(client.sent[0], 600, 1000)
        inbox.served(client.sent[0], 400, 1000)       # a second range completes it
        step_until(pipeline, lambda: len(client.sent) == 3, "a third file sent")
        for _ in range(20):
            pipeline.step(0)
        assert pipeline.summary.hashed_files == 3 and pipeline.ctx.window.held_bytes == 2000
        clock.advance(cdn_push.FetchWindow(None)._idle_release)    # the origin idles: the CDN is not fetching now
        step_until(pipeline, lambda: len(client.sent) == 5, "every file sent")
        pipeline.halt()


def test_a_file_with_nothing_to_fetch_leaves_the_window_at_once(drop, make_config, raw_config):
    """Rejected, or already in the CDN: no fetch follows, so the next file is hashed without waiting."""
    write_files(drop, {f"v{i}.mp4": bytes([i]) * 1000 for i in range(3)})
    config = served_config(make_config, raw_config)
    answers = iter([CdnAnswer("rejected", 200, "no", "{}"), CdnAnswer("exists", 200, "there", "{}"),
                    CdnAnswer("accepted", 200, "ok", "{}")])
    client = FakeCdnClient(lambda params: next(answers))
    with Ledger.open(config.ledger) as ledger:
        pipeline = Pipeline(config, ledger, client, signer=UrlSigner(b"k" * 32), inbox=CallbackInbox(),
                            tuning=Tuning(fetch_window=1000))
        pipeline.start_scan()
        step_until(pipeline, lambda: len(client.sent) == 3, "every file sent, one after the other")
        step_until(pipeline, lambda: pipeline.ctx.window.held_bytes == 1000, "only the accepted one held")
        pipeline.halt()


def test_without_the_built_in_origin_or_in_a_dry_run_nothing_bounds_the_hashing(drop, make_config, raw_config):
    config = cfg(make_config, raw_config)
    with Ledger.open(config.ledger) as ledger:
        assert Pipeline(config, ledger, None, tuning=Tuning(fetch_window=1)).ctx.window.budget is None
    config = served_config(make_config, raw_config)
    with Ledger.open(config.ledger) as ledger:
        assert Pipeline(config, ledger, None, dry_run=True, tuning=Tuning(fetch_window=1)).ctx.window.budget is None
        assert Pipeline(config, ledger, None, tuning=Tuning(fetch_window=1)).ctx.window.budget == 1


@pytest.mark.parametrize("defaults, rules, expected", [
    ({}, [], False),
    ({"speed": "100%"}, [{"match": "a/**", "no_replace": True}], False),
    ({}, [{"match": "trailers/**", "fetch_prio": 1}], True),
    ({"fetch_prio": 2}, [], True),
    ({"fetch_prio": 2}, [{"match": "x/**", "fetch_prio": None}], True),
])
def test_whether_a_row_may_rank_above_the_backlog(make_config, defaults, rules, expected):
    assert cdn_push.may_rank_higher(make_config(defaults=defaults, rules=rules)) is expected


def test_the_feeder_asks_the_ledger_only_when_a_worker_would_go_idle(drop, make_config, raw_config, monkeypatch):
    """Each step used to read the next pending rows; with no fetch_prio rule nothing can overtake
    the queue, so the ledger is read when fewer jobs than workers are left, several rows at once."""
    write_files(drop, {f"b/{i:02}.mp4": b"%d" % i for i in range(30)})
    config = cfg(make_config, raw_config, workers={"submit": 2})
    client = FakeCdnClient().hold()
    reads = []
    with Ledger.open(config.ledger) as ledger:
        real = ledger.next_pending
        monkeypatch.setattr(ledger, "next_pending", lambda *a, **k: (reads.append(a[0]), real(*a, **k))[1])
        pipeline = Pipeline(config, ledger, client)
        pipeline.start_scan()
        step_until(pipeline, lambda: not pipeline.scanning and len(client.sent) == 2, "the scan and two requests")
        before = len(reads)
        for _ in range(30):
            pipeline.step(0)
        assert len(reads) == before and len(pipeline.submitter.queue) == 6 - 2     # 3 per worker, 2 out
        client.release(3)
        step_until(pipeline, lambda: len(client.sent) == 5, "three more sent")
        step_until(pipeline, lambda: len(pipeline.submitter.queue) == 6, "the queue refilled")
        assert max(reads) >= 3      # refilled a few rows at a time
        client.release(100)
        step_until(pipeline, lambda: len(client.sent) == 30, "every file sent")
        pipeline.halt()


def test_a_file_hashed_again_to_the_same_content_leaves_the_window(drop, make_config, raw_config):
    """Touched, not changed: hashed, found unchanged, nothing to fetch; it holds no room."""
    write_files(drop, {"v.mp4": b"v" * 1000})
    config = served_config(make_config, raw_config)
    client = FakeCdnClient()
    with Ledger.open(config.ledger) as ledger:
        ledger.put(imported_row(drop, "v.mp4", b"v" * 1000, state="confirmed"))
        os.utime(drop / "v.mp4", ns=(10**18, 10**18))
        pipeline = Pipeline(config, ledger, client, signer=UrlSigner(b"k" * 32), inbox=CallbackInbox(),
                            tuning=Tuning(fetch_window=10_000))
        pipeline.start_scan()
        step_until(pipeline, lambda: not pipeline.scanning and pipeline.summary.hashed_files == 1, "the rehash")
        pipeline.intake.flush(force=True)
        assert pipeline.ctx.window.held_bytes == 0 and not client.sent
        pipeline.halt()


def test_a_file_gone_before_it_was_sent_leaves_the_window(drop, make_config, raw_config):
    write_files(drop, {f"v{i}.mp4": bytes([i]) * 1000 for i in range(6)})
    config = served_config(make_config, raw_config, workers={"submit": 1})
    client = FakeCdnClient().hold()
    with Ledger.open(config.ledger) as ledger:
        pipeline = Pipeline(config, ledger, client, signer=UrlSigner(b"k" * 32), inbox=CallbackInbox(),
                            tuning=Tuning(fetch_window=10_000))
        pipeline.start_scan()
        step_until(pipeline, lambda: not pipeline.scanning and client.sent == ["v0.mp4"], "the scan, one request out")
        assert pipeline.ctx.window.held_bytes == 6000 and ledger.get("v5.mp4").state == "pending"
        (drop / "v5.mp4").unlink()
        client.release(10)
        step_until(pipeline, lambda: len(client.sent) == 5 and not pipeline.submitter.sending(), "the rest sent")
        step_until(pipeline, lambda: ledger.get("v5.mp4") is None, "v5.mp4 forgotten")
        assert pipeline.ctx.window.held_bytes == 5000      # the five sent wait for their fetch
        pipeline.halt()


def test_a_file_already_in_the_cdn_leaves_the_window_with_callbacks_off_too(drop, make_config, raw_config):
    write_files(drop, {f"v{i}.mp4": bytes([i]) * 1000 for i in range(2)})
    config = served_config(make_config, raw_config)
    client = FakeCdnClient(lambda params: CdnAnswer("exists", 200, "there", "{}"))
    with Ledger.open(config.ledger) as ledger:     # no inbox: no callbacks; a clock that stands: no idle release
        pipeline = Pipeline(config, ledger, client, tuning=Tuning(fetch_window=1000), monotonic=Clock(1000.0))
        pipeline.start_scan()
        step_until(pipeline, lambda: len(client.sent) == 2, "both sent, one after the other")
        pipeline.halt()


def test_a_file_removed_after_it_was_sent_and_before_its_fetch_leaves_the_window(drop, make_config, raw_config):
    write_files(drop, {"v.mp4": b"v" * 1000, "w.mp4": b"w" * 300})      # an empty folder proves nothing
    config = served_config(make_config, raw_config)
    client = FakeCdnClient()
    with Ledger.open(config.ledger) as ledger:
        pipeline = Pipeline(config, ledger, client, signer=UrlSigner(b"k" * 32), inbox=CallbackInbox(),
                            tuning=Tuning(fetch_window=10_000), monotonic=Clock(1000.0))
        pipeline.start_scan()
        step_until(pipeline, lambda: [getattr(ledger.get(p), "state", None) for p in ("v.mp4", "w.mp4")]
                   == ["submitted", "submitted"], "both accepted")
        assert pipeline.ctx.window.held_bytes == 1300
        step_until(pipeline, lambda: pipeline.pass_started is None, "the first pass over")
        (drop / "v.mp4").unlink()
        assert pipeline.start_scan()
        step_until(pipeline, lambda: ledger.get("v.mp4").state == "gone", "marked gone")
        assert pipeline.ctx.window.held_bytes == 300
        pipeline.halt()


@pytest.mark.skipif(not shutil.which("fincore"), reason="fincore (util-linux) is not installed")
def test_the_owner_drops_a_fetched_files_pages_that_the_origins_socket_kept(tmp_path, make_config, raw_config):
    """The origin drops a file's pages as it sends the last bytes, but those still in its socket's
    buffer stay; told of the fetch, the owner thread drops them (issue 22)."""
    folder = tmp_path / "disk-drop"          # the pytest folder: a real file system, unlike tmpfs
    folder.mkdir()
    content = os.urandom(4 << 20)
    with open(folder / "v.mp4", "wb") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())
    (folder / "v.mp4").read_bytes()
    if cached_bytes(folder / "v.mp4") < len(content) // 2:
        pytest.skip("this file system keeps no page cache of its own (tmpfs?)")
    config = make_config(folder=str(folder), origin={"check": False, "serve": {"listen": "127.0.0.1:0",
                                                                               "public_url": "http://127.0.0.1:9"}})
    inbox = CallbackInbox()
    with Ledger.open(config.ledger) as ledger:
        pipeline = Pipeline(config, ledger, None, signer=UrlSigner(b"k" * 32), inbox=inbox)
        assert inbox.served("v.mp4", len(content), len(content))
        pipeline.step(0)
        pipeline.halt()
    assert cached_bytes(folder / "v.mp4") == 0


def cached_bytes(path) -> int:
    done = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                          capture_output=True, text=True, check=True)
    return int(done.stdout.split()[0])


def test_a_resend_not_due_yet_that_is_hashed_again_leaves_the_window(drop, make_config, raw_config):
    """A failed fetch made it pending again, due in minutes; touched meanwhile, it is hashed again,
    and it holds no room until then."""
    write_files(drop, {"v.mp4": b"v" * 1000})
    config = served_config(make_config, raw_config)
    with Ledger.open(config.ledger) as ledger:
        ledger.put(imported_row(drop, "v.mp4", b"v" * 1000, state="pending")._replace(    # as _confirm leaves it
            retry_at=time.time() + 300, last_error="the CDN could not import it", accepted_name=None,
            accepted_size=None, accepted_sha256=None))
        os.utime(drop / "v.mp4", ns=(10**18, 10**18))
        pipeline = Pipeline(config, ledger, FakeCdnClient(), signer=UrlSigner(b"k" * 32), inbox=CallbackInbox(),
                            tuning=Tuning(fetch_window=10_000), monotonic=Clock(1000.0))
        pipeline.start_scan()
        step_until(pipeline, lambda: not pipeline.scanning and pipeline.summary.hashed_files == 1, "the rehash")
        pipeline.intake.flush(force=True)
        assert ledger.get("v.mp4").state == "pending" and pipeline.ctx.window.held_bytes == 0
        pipeline.halt()
