"""Walking the folder and hashing files, on real files (and pyfakefs where root cannot be denied)."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

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
    os.symlink(root / "real" / "a.mp4", root / ".hidden.mp4")      # skipped by name anyway: not told
    os.symlink(root / "real" / "a.mp4", root / "part.tmp")
    links = []
    found = {e.relpath for _, entries in cdn_push.walk_folder(root, ScanConfig(), on_link=links.append)
             for e in entries}
    assert found == {"real/a.mp4"}
    assert sorted(links) == ["dir-out", "link-in.mp4", "link-out.mp4", "real/loop"]     # each heard of
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


# -- cdn-push's own files under other names, and unusual sizes (issue 20) -------------------------------

MIB = 1024 * 1024


def test_walk_reports_a_hard_link_or_symlink_to_a_private_file_by_its_key(tmp_path):
    root = tmp_path / "root"
    write_files(root, {"video.mp4": b"v", "site.yaml": b"api: {password: x}"})
    key = tmp_path / "signing.secret"
    key.write_text("k" * 64)
    os.link(key, root / "holiday.mp4")                        # the key under another name
    os.link(root / "site.yaml", root / "sub-config.mp4")       # the config, hard-linked
    os.symlink(root / "site.yaml", root / "config-link.mp4")   # and symlinked
    config, signing = os.stat(root / "site.yaml"), os.stat(key)
    private = {(config.st_dev, config.st_ino): "the configuration file",
               (signing.st_dev, signing.st_ino): "the signing key ('origin.secret_file')"}
    for follow in (False, True):
        problems = []
        found = {entry.relpath for _, entries in cdn_push.walk_folder(
            root, ScanConfig(follow_symlinks=follow), lambda p, why: problems.append((p, why)), private=private,
            own_names={"site.yaml"}) for entry in entries}
        # under its own name it is listed, for the caller to skip with its once-only warning
        assert found == {"video.mp4", "site.yaml"}, follow
        reasons = dict(problems)
        expected = {"holiday.mp4", "sub-config.mp4"} | ({"config-link.mp4"} if follow else set())
        assert set(reasons) == expected, problems
        assert "origin.secret_file" in reasons["holiday.mp4"]
        assert "the configuration file" in reasons["sub-config.mp4"]
        assert all("never imported" in why for why in reasons.values())


def test_private_identities_are_the_files_that_exist(tmp_path, make_config):
    config = make_config(origin={"serve": {"listen": "127.0.0.1:1", "public_url": "http://127.0.0.1:1"}})
    assert cdn_push.private_identities(config) == {}                        # nothing made yet
    config.ledger.parent.mkdir(parents=True, exist_ok=True)
    config.ledger.write_bytes(b"")
    Path(str(config.origin.secret_file)).write_text("s" * 64)
    found = cdn_push.private_identities(config)
    ledger, secret = os.stat(config.ledger), os.stat(config.origin.secret_file)
    assert found == {(ledger.st_dev, ledger.st_ino): "the ledger ('ledger')",
                     (secret.st_dev, secret.st_ino): "the signing key ('origin.secret_file')"}


def stat_of(size, blocks):
    """What unusual_size reads of a stat result."""
    return SimpleNamespace(st_size=size, st_blocks=blocks)


DENSE = lambda size: (size + 511) // 512      # noqa: E731 - blocks of a file with no holes


@pytest.mark.parametrize("size, blocks, scan, problem", [
    (2 * MIB, DENSE(2 * MIB), ScanConfig(), None),
    (2 * MIB, 0, ScanConfig(), "sparse"),                                      # all holes
    (2 * MIB, 0, ScanConfig(allow_sparse=True), None),
    (2 * MIB, (2 * MIB // 8) // 512, ScanConfig(), None),                      # an eighth on disk: compressed, taken
    (2 * MIB, (2 * MIB // 8) // 512 - 1, ScanConfig(), "sparse"),              # just under an eighth
    (2 * MIB, DENSE(2 * MIB), ScanConfig(max_size=MIB), "over scan.max_size"),
    (2 * MIB, DENSE(2 * MIB), ScanConfig(max_size=2 * MIB), None),             # at the limit: taken
    (2 * MIB, DENSE(2 * MIB), ScanConfig(max_size=2 * MIB + 1), None),
    (2 * MIB + 1, DENSE(2 * MIB + 1), ScanConfig(max_size=2 * MIB), "over scan.max_size"),
    (2 * MIB, 0, ScanConfig(max_size=MIB, allow_sparse=True), "over scan.max_size"),
    (2 * MIB, 0, ScanConfig(max_size=MIB), "over scan.max_size"),             # the size is said first
    (5000, DENSE(5000), ScanConfig(max_size=1000), "over scan.max_size"),
    (0, 0, ScanConfig(), None),
])
def test_unusual_size(size, blocks, scan, problem):
    why = cdn_push.unusual_size(stat_of(size, blocks), scan)
    if problem is None:
        assert why is None
    else:
        assert why is not None and problem in why, why


def sparse_file(path, size):
    """A file of `size` bytes and no blocks, or a skip where the filesystem has no holes."""
    with open(path, "wb"):
        pass
    os.truncate(path, size)
    if os.stat(path).st_blocks * 512 >= size // 8:
        pytest.skip(f"{path.parent} does not keep holes (st_blocks {os.stat(path).st_blocks})")
    old = time.time() - 3600
    os.utime(path, (old, old))


def run_main(capsys, *args):
    code = cdn_push.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def skipped_lines(err, name):
    return [line for line in err.splitlines() if "WARNING" in line and f"skipped {name}:" in line]


def test_a_sparse_file_is_skipped_and_reported_unless_allowed(drop, emulator, write_config, capsys):
    write_files(drop, {"dense.mp4": b"d" * 5000})
    sparse_file(drop / "holes.mp4", 2 * MIB)
    code, out, err = run_main(capsys, "--config", str(write_config()))
    assert [r["name"] for r in emulator.requests] == ["dense.mp4"], err
    assert code == cdn_push.EXIT_INCOMPLETE and "1 unreadable" in out, out + err
    [line] = skipped_lines(err, "holes.mp4")
    assert "sparse" in line and "scan.allow_sparse" in line
    code, out, err = run_main(capsys, "--config", str(write_config(scan={"settle_seconds": 5, "allow_sparse": True})))
    assert code == cdn_push.EXIT_OK, out + err
    assert [r["name"] for r in emulator.requests] == ["dense.mp4", "holes.mp4"]
    assert emulator.requests[-1]["size"] == str(2 * MIB) and not skipped_lines(err, "holes.mp4")


def test_max_size_skips_a_larger_file_and_reports_it(drop, emulator, write_config, capsys):
    write_files(drop, {"large.mp4": os.urandom(2 * MIB), "fits.mp4": os.urandom(MIB + 5), "small.mp4": b"s"})
    code, out, err = run_main(capsys, "--config", str(write_config(scan={"settle_seconds": 5,
                                                                          "max_size": 3 * MIB // 2})))
    assert sorted(r["name"] for r in emulator.requests) == ["fits.mp4", "small.mp4"], err
    assert code == cdn_push.EXIT_INCOMPLETE and "1 unreadable" in out, out + err
    [line] = skipped_lines(err, "large.mp4")
    assert "scan.max_size" in line and f"{2 * MIB:,}" in line


def test_max_size_below_one_mebibyte_skips_a_larger_file(drop, emulator, write_config, capsys):
    write_files(drop, {"over.mp4": b"o" * 5000, "under.mp4": b"u" * 500})
    code, out, err = run_main(capsys, "--config", str(write_config(scan={"settle_seconds": 5, "max_size": 1000})))
    assert [r["name"] for r in emulator.requests] == ["under.mp4"], err
    assert skipped_lines(err, "over.mp4")


def test_listing_problem_names_the_private_file_first_then_the_size():
    private = {(7, 42): "the signing key ('origin.secret_file')"}

    def st(dev, ino, size, blocks):
        return SimpleNamespace(st_dev=dev, st_ino=ino, st_size=size, st_blocks=blocks)

    assert "origin.secret_file" in cdn_push.listing_problem(st(7, 42, 64, 8), ScanConfig(), private)
    assert "origin.secret_file" in cdn_push.listing_problem(st(7, 42, 2 * MIB, 0), ScanConfig(), private)
    assert cdn_push.listing_problem(st(8, 42, 64, 8), ScanConfig(), private) is None        # another device
    assert cdn_push.listing_problem(st(7, 43, 64, 8), ScanConfig(), private) is None
    assert "sparse" in cdn_push.listing_problem(st(7, 43, 2 * MIB, 0), ScanConfig(), private)
    assert cdn_push.listing_problem(st(7, 43, 2 * MIB, 0), ScanConfig(allow_sparse=True), private) is None


# -- the walk's file filter says what skip_reason says (issue 22: one pattern per walk) -------------

SKIP_NAMES = [".hidden.mp4", "a.mp4", "movie.part", "x.tmp", "dl.crdownload", "~$doc.mp4", ".clip.mp4.AbC123",
              "clip.mp4.AbC123", ".x.Ab12", "a.part.mp4", "part", ".", "..", "t.TMP", "e\u0301.mp4", "line\nbreak.tmp",
              "trailing.tmp\n", "tmp", "~$", ".~$x"]
SKIP_SCANS = [dict(), dict(skip_hidden=False), dict(skip_temporary=False), dict(skip_hidden=False, skip_temporary=False),
              dict(exclude=("*.tmp",)), dict(exclude=("**/a.mp4",)), dict(include=("sub/**",)),
              dict(include=("**/*.mp4",), skip_hidden=False)]


@pytest.mark.parametrize("settings", SKIP_SCANS, ids=str)
def test_the_walks_file_filter_agrees_with_skip_reason(settings):
    scan = cdn_push.ScanConfig(**settings)
    skipped = cdn_push.file_skipper(scan)
    for name in SKIP_NAMES:
        for relpath in (name, f"sub/{name}", f".dir/{name}"):
            assert skipped(relpath, name) == (cdn_push.skip_reason(relpath, scan) is not None), (relpath, settings)


def test_the_walks_file_filter_agrees_with_skip_reason_on_any_name():
    from hypothesis import given, settings, strategies as st

    scans = [cdn_push.ScanConfig(**s) for s in SKIP_SCANS[:4]]

    @settings(max_examples=300, deadline=None)
    @given(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"), min_size=1, max_size=20))
    def agrees(name):
        for scan in scans:
            assert cdn_push.file_skipper(scan)(name, name) == (cdn_push.skip_reason(name, scan) is not None)

    agrees()
