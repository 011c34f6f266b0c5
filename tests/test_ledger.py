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
