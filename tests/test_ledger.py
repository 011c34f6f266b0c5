"""The SQLite ledger and its lock, on real files."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import pytest

import cdn_push
from cdn_push import Ledger, LedgerError, LedgerLock, LedgerRow, LockedError


def row(path, state=cdn_push.STATE_PENDING, priority=0, **kw):
    values = dict(path=path, size=10, mtime_ns=1, inode=2, sha256="a" * 64, name=path, state=state,
                  priority=priority)
    values.update(kw)
    return LedgerRow(**values)


def test_rows_survive_reopening_and_are_grouped_by_folder(tmp_path):
    path = tmp_path / "sub" / "ledger.sqlite3"
    with Ledger.open(path) as ledger:
        ledger.put_many([row("a.mp4"), row("d/b.mp4"), row("d/c.mp4"), row("d/e/f.mp4")])
    with Ledger.open(path) as ledger:
        assert set(ledger.quick_rows_in_dir("d")) == {"d/b.mp4", "d/c.mp4"}
        assert set(ledger.quick_rows_in_dir("")) == {"a.mp4"}
        assert ledger.get("d/e/f.mp4").sha256 == "a" * 64
        assert ledger.get("missing") is None


def test_put_updates_in_place_and_commits_at_once(tmp_path):
    path = tmp_path / "ledger.sqlite3"
    ledger = Ledger.open(path)
    ledger.put(row("a.mp4"))
    ledger.put(row("a.mp4", state=cdn_push.STATE_SUBMITTED, accepted_sha256="a" * 64))
    # Another connection sees it without the first one closing: the write is durable now.
    other = sqlite3.connect(path)
    assert other.execute("SELECT state, accepted_sha256 FROM files").fetchall() == [("submitted", "a" * 64)]
    other.close()
    ledger.close()


def test_pending_is_by_priority_then_path_across_pages(tmp_path):
    with Ledger.open(tmp_path / "l.sqlite3") as ledger:
        ledger.put_many([row("b"), row("a"), row("z", priority=2), row("y", priority=1), row("c"),
                         row("done", state=cdn_push.STATE_SUBMITTED), row("x", priority=1)])
        assert [r.path for r in ledger.pending(page=2)] == ["z", "x", "y", "a", "b", "c"]
        assert ledger.count_pending() == 6


def test_pending_pages_while_rows_change_state(tmp_path):
    """Rows marked submitted while paging neither repeat nor get skipped."""
    with Ledger.open(tmp_path / "l.sqlite3") as ledger:
        ledger.put_many([row(f"f{i:02}") for i in range(7)])
        seen = []
        for pending in ledger.pending(page=3):
            seen.append(pending.path)
            ledger.put(row(pending.path, state=cdn_push.STATE_SUBMITTED))
        assert seen == [f"f{i:02}" for i in range(7)]


def test_counts_and_forget(tmp_path):
    with Ledger.open(tmp_path / "l.sqlite3") as ledger:
        ledger.put_many([row("a"), row("b", state="submitted"), row("c", state="rejected")])
        ledger.forget("a")
        assert ledger.counts() == {"pending": 0, "submitted": 1, "confirmed": 0, "rejected": 1, "failed": 0,
                                   "gone": 0}
        assert [r.path for r in ledger.all_rows("rejected")] == ["c"]


def test_a_newer_schema_is_refused_with_the_file_named(tmp_path):
    path = tmp_path / "l.sqlite3"
    Ledger.open(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    db.commit()
    db.close()
    with pytest.raises(LedgerError, match=f"{path}.*newer cdn-push"):
        Ledger.open(path)


def test_a_damaged_file_is_refused_with_the_file_named(tmp_path):
    path = tmp_path / "l.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(LedgerError, match=f"{path}.*move it aside"):
        Ledger.open(path)
    assert path.read_bytes().startswith(b"this is not a database")


def test_lock_is_exclusive_and_released(tmp_path):
    ledger_path = tmp_path / "l.sqlite3"
    with LedgerLock(ledger_path):
        with pytest.raises(LockedError, match="another cdn-push"):
            LedgerLock(ledger_path).acquire()
    LedgerLock(ledger_path).acquire().release()


def test_lock_holds_against_another_process(tmp_path):
    ledger_path = tmp_path / "l.sqlite3"
    code = ("import sys, cdn_push\n"
            "try:\n    cdn_push.LedgerLock(sys.argv[1]).acquire()\n"
            "except cdn_push.LockedError as e:\n    print(e); sys.exit(3)\n")
    with LedgerLock(ledger_path):
        done = subprocess.run([sys.executable, "-c", code, str(ledger_path)], capture_output=True,
                              text=True, cwd=cdn_push.__file__.rsplit("/", 1)[0])
    assert done.returncode == 3
    assert "pid" in done.stdout


def test_the_schema_has_exactly_the_row_types_columns(tmp_path):
    with Ledger.open(tmp_path / "l.sqlite3") as ledger:
        ledger.commit()
    db = sqlite3.connect(tmp_path / "l.sqlite3")
    columns = [name for _, name, *_ in db.execute("PRAGMA table_info(files)")]
    db.close()
    assert [c for c in columns if c != "dir"] == list(cdn_push.LedgerRow._fields) == list(cdn_push.LEDGER_COLUMNS)


def test_the_send_queue_is_read_in_index_order_without_a_sort(tmp_path):
    """A first pass asks for the next pending rows thousands of times: a plan that sorts every pending
    row per call (SQLite's own pick, files_by_check) made it quadratic."""
    with Ledger.open(tmp_path / "l.sqlite3"):
        pass
    db = sqlite3.connect(tmp_path / "l.sqlite3")
    plan = " ".join(str(step) for step in db.execute("EXPLAIN QUERY PLAN " + cdn_push.NEXT_PENDING_SQL,
                                                      ("pending", 0.0)))
    assert "files_by_queue" in plan and "TEMP B-TREE" not in plan, plan


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the ledger to another user")
def test_a_ledger_that_cannot_be_opened_names_its_owner(tmp_path):
    """`status` by another user met a raw "unable to open database file"; it now says whose it is."""
    path = tmp_path / "l.sqlite3"
    path.write_bytes(b"")
    os.chown(path, 65534, 65534)
    advice = cdn_push.ledger_advice(str(path), sqlite3.OperationalError("unable to open database file"))
    assert "cannot be opened" in advice and "is owned by user" in advice and "sudo -u" in advice, advice
    assert "chown -R" in advice, advice


# -- what a rerun passes by on a stat alone (Ledger.folder_rows) ------------------------------------

def imported(path="d/a.mp4", **changes):
    """A row the CDN took as it is: confirmed, under its own name, nothing amiss."""
    values = dict(path=path, size=10, mtime_ns=1, inode=2, sha256="a" * 64, name=path,
                  state=cdn_push.STATE_CONFIRMED, accepted_name=path, accepted_size=10, accepted_sha256="a" * 64)
    values.update(changes)
    return LedgerRow(**values)


@pytest.mark.parametrize("changes, prefix, callbacks, vouched", [
    ({}, "", True, True),
    ({"state": cdn_push.STATE_SUBMITTED}, "", False, True),        # no callback awaited: nothing to ask
    ({"state": cdn_push.STATE_SUBMITTED}, "", True, False),        # a callback may be due: the pipeline judges
    ({"state": cdn_push.STATE_PENDING}, "", True, False),
    ({"state": cdn_push.STATE_REJECTED}, "", False, False),
    ({"state": cdn_push.STATE_FAILED}, "", False, False),
    ({"state": cdn_push.STATE_GONE}, "", False, False),
    ({"last_error": "kept by no_replace"}, "", True, False),
    ({"sha256": None}, "", True, False),
    ({"accepted_sha256": "b" * 64}, "", True, False),
    ({"accepted_size": 11}, "", True, False),
    ({"accepted_name": "d/other.mp4"}, "", True, False),
    ({}, "x/", True, False),                                       # name_prefix changed since
    ({"name": "x/d/a.mp4", "accepted_name": "x/d/a.mp4"}, "x/", True, True),
], ids=["confirmed", "submitted-no-callbacks", "submitted-callbacks", "pending", "rejected", "failed", "gone",
        "conflict", "not-hashed", "other-content", "other-size", "other-name", "prefix-changed", "prefix-kept"])
def test_a_folders_rows_vouch_only_for_files_imported_as_they_are_with_nothing_to_ask(
        tmp_path, changes, prefix, callbacks, vouched):
    with Ledger.open(tmp_path / "ledger.sqlite3") as ledger:
        ledger.put_many([imported(**changes), imported("d/e/b.mp4"), imported("c.mp4")])
        rows = ledger.folder_rows("d", prefix, callbacks)
        assert rows.vouched == ({"d/a.mp4": (10, 1, 2)} if vouched else {})
        # Every row of the folder is still there to be asked for, as a dict of them all would give it
        assert "d/a.mp4" in rows and "d/e/b.mp4" not in rows
        assert rows.get("d/a.mp4") == ledger.quick_row("d/a.mp4") and rows.get("d/e/b.mp4") is None
        assert [row.path for row in rows.gone(seen=set())] == ([] if changes.get("state") == "gone" else ["d/a.mp4"])
        assert rows.gone(seen={"d/a.mp4"}) == []


def test_the_rows_vouched_for_are_never_more_than_the_pipeline_would_pass_by(tmp_path):
    """A property over random rows: what VOUCHED_SQL lets a rerun pass by, the decide step's own
    judgement (same_file, accepted under its name, no callback due) would pass by too."""
    pytest.importorskip("hypothesis")
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    ledger = Ledger.open(tmp_path / "ledger.sqlite3")
    digests = st.sampled_from(["a" * 64, "b" * 64, None])
    names = st.sampled_from(["d/a.mp4", "x/d/a.mp4", "d/b.mp4", None])

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(state=st.sampled_from(cdn_push.STATES), sha256=digests, accepted_sha256=digests,
           name=names.filter(bool), accepted_name=names, accepted_size=st.sampled_from([10, 11, None]),
           last_error=st.sampled_from([None, "why"]), prefix=st.sampled_from(["", "x/"]), callbacks=st.booleans())
    def check(state, sha256, accepted_sha256, name, accepted_name, accepted_size, last_error, prefix, callbacks):
        ledger.put(imported(sha256=sha256, name=name, state=state, accepted_name=accepted_name,
                            accepted_size=accepted_size, accepted_sha256=accepted_sha256, last_error=last_error))
        quick = ledger.quick_row("d/a.mp4")
        entry = cdn_push.FileEntry("d/a.mp4", "/drop/d/a.mp4", 10, 1, 2)
        judged = (cdn_push.same_file(entry, quick) and quick.accepted and quick.name == prefix + "d/a.mp4"
                  and not (callbacks and quick.state == cdn_push.STATE_SUBMITTED))
        assert ("d/a.mp4" in ledger.folder_rows("d", prefix, callbacks).vouched) == bool(judged)

    try:
        check()
    finally:
        ledger.close()


def test_a_folder_whose_files_all_changed_has_its_rows_read_at_once_past_a_few(tmp_path):
    """A folder touched or emptied asks for every vouched row: one by one up to LAZY_ROWS, then
    the whole folder in one query; the rows are the same either way."""
    with Ledger.open(tmp_path / "ledger.sqlite3") as ledger:
        ledger.put_many([imported(f"d/{i:03}.mp4") for i in range(100)] + [imported("e/x.mp4")])
        rows = ledger.folder_rows("d", "", True)
        queries = []
        ledger._db.set_trace_callback(queries.append)
        got = [rows.get(f"d/{i:03}.mp4") for i in range(100)]
        ledger._db.set_trace_callback(None)
        assert got == [ledger.quick_row(f"d/{i:03}.mp4") for i in range(100)]
        assert len(queries) == cdn_push.FolderRows.LAZY_ROWS + 1, queries[-3:]
        assert rows.get("e/x.mp4") is None and [row.path for row in rows.gone(set())] == [f"d/{i:03}.mp4" for i in range(100)]
