"""Walking the folder and hashing files, on real files (and pyfakefs where root cannot be denied)."""

from __future__ import annotations

import hashlib
import os
import threading

import pytest
from pyfakefs.helpers import reset_ids, set_uid

import cdn_push
from cdn_push import FileChangedError, FileEntry, ScanConfig
from conftest import write_files


@pytest.mark.parametrize("relpath, scan, reason", [
    ("a.mp4", ScanConfig(), None),
    (".hidden.mp4", ScanConfig(), "hidden"),
    (".hidden.mp4", ScanConfig(skip_hidden=False), None),
    ("dir/a.mp4.part", ScanConfig(), "temporary"),
    ("a.tmp", ScanConfig(), "temporary"),
    ("video.mp4.crdownload", ScanConfig(), "temporary"),
    ("~$report.docx", ScanConfig(), "temporary"),
    (".movie.mp4.AbC123", ScanConfig(skip_hidden=False), "temporary"),
    ("a.part", ScanConfig(skip_temporary=False), None),
    ("raw/a.mov", ScanConfig(exclude=("raw/**",)), "excluded"),
    ("a.mov", ScanConfig(include=("*.mp4",)), "not included"),
    ("x/a.mp4", ScanConfig(include=("*.mp4",)), None),
])
def test_skip_reason(relpath, scan, reason):
    assert cdn_push.skip_reason(relpath, scan) == reason


def walk(root, scan=ScanConfig()):
    problems = []
    found = {}
    for reldir, entries in cdn_push.walk_folder(root, scan, lambda p, why: problems.append((p, why))):
        for entry in entries:
            assert entry.relpath.rpartition("/")[0] == reldir
            found[entry.relpath] = entry
    return found, problems


def test_walk_yields_files_per_folder_and_skips_what_it_should(tmp_path):
    write_files(tmp_path, {"a.mp4": b"1", "s/b.mp4": b"22", "s/t/c.mp4": b"333", "s/.hid/d.mp4": b"4",
                           "s/x.part": b"5", ".e.mp4": b"6", "raw/f.mov": b"7"})
    (tmp_path / "emptydir").mkdir()
    found, problems = walk(tmp_path, ScanConfig(exclude=("raw",)))
    assert sorted(found) == ["a.mp4", "s/b.mp4", "s/t/c.mp4"]
    entry = found["s/t/c.mp4"]
    assert entry.size == 3 and entry.path == str(tmp_path / "s/t/c.mp4")
    st = os.stat(entry.path)
    assert (entry.mtime_ns, entry.inode) == (st.st_mtime_ns, st.st_ino)
    assert problems == []


def test_symlinks_are_ignored_by_default_and_never_lead_outside(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    write_files(root, {"real/a.mp4": b"a"})
    write_files(outside, {"secret.mp4": b"s"})
    os.symlink(outside / "secret.mp4", root / "link-out.mp4")
    os.symlink(outside, root / "dir-out")
    os.symlink(root / "real" / "a.mp4", root / "link-in.mp4")
    os.symlink(root, root / "real" / "loop")
    found, _ = walk(root)
    assert sorted(found) == ["real/a.mp4"]
    found, problems = walk(root, ScanConfig(follow_symlinks=True))
    assert sorted(found) == ["link-in.mp4", "real/a.mp4"]
    reasons = " ".join(why for _, why in problems)
    assert "outside the folder" in reasons and "loop" in reasons


def test_names_that_are_not_utf8_are_reported_not_fatal(tmp_path):
    write_files(tmp_path, {"good.mp4": b"g"})
    bad = os.path.join(os.fsencode(tmp_path), b"bad-\xff.mp4")
    with open(bad, "wb") as handle:
        handle.write(b"x")
    found, problems = walk(tmp_path)
    assert sorted(found) == ["good.mp4"]
    assert len(problems) == 1 and "not valid UTF-8" in problems[0][1]


def test_unreadable_folder_is_reported_and_the_rest_continues(fs):
    """Root reads everything, so permission denial is shown on pyfakefs as a normal user."""
    set_uid(1000)
    try:
        fs.create_file("/drop/ok/a.mp4", contents="a")
        fs.create_file("/drop/locked/b.mp4", contents="b")
        os.chmod("/drop/locked", 0o000)
        found, problems = walk("/drop")
    finally:
        reset_ids()
    assert sorted(found) == ["ok/a.mp4"]
    assert problems and problems[0][0] == "locked" and "cannot list folder" in problems[0][1]


def entry_for(path, relpath="f"):
    st = os.stat(path)
    return FileEntry(relpath, str(path), st.st_size, st.st_mtime_ns, st.st_ino)


@pytest.mark.parametrize("size", [0, 1, cdn_push.HASH_BUFFER_SIZE - 1, cdn_push.HASH_BUFFER_SIZE,
                                  cdn_push.HASH_BUFFER_SIZE + 1, 5 * 1024 * 1024 + 3])
def test_hash_matches_hashlib(tmp_path, size):
    content = os.urandom(size)
    path = tmp_path / "f"
    path.write_bytes(content)
    progress = []
    assert cdn_push.hash_file(entry_for(path), progress.append) == hashlib.sha256(content).hexdigest()
    assert sum(progress) == size


def test_a_file_that_grows_while_hashed_is_left_for_later(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(os.urandom(cdn_push.HASH_BUFFER_SIZE * 3))
    entry = entry_for(path)

    def writer_appends(_count):
        with open(path, "ab") as handle:
            handle.write(b"more")

    with pytest.raises(FileChangedError, match="changed while it was hashed"):
        cdn_push.hash_file(entry, writer_appends)


def test_a_file_replaced_since_listing_is_not_hashed(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"old")
    entry = entry_for(path)
    path.unlink()
    path.write_bytes(b"new!")
    with pytest.raises(FileChangedError, match="changed since it was listed"):
        cdn_push.hash_file(entry)


def test_a_fifo_swapped_in_for_a_listed_file_is_skipped_at_once_not_waited_on(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"a video")
    entry = entry_for(path)
    path.unlink()
    os.mkfifo(path)                               # no writer: a plain open() would block for good
    outcome = []
    hashing = threading.Thread(target=lambda: outcome.append(cdn_push.hash_outcome(entry)), daemon=True)
    hashing.start()
    hashing.join(5)
    assert not hashing.is_alive(), "hashing a FIFO blocked"
    assert isinstance(outcome[0], FileChangedError) and "not a regular file" in str(outcome[0])
