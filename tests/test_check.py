"""`check`, `resend` and `forget`: the folder, the ledger and the CDN compared, and put right."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import requests

import cdn_push
from conftest import API_LOGIN, API_PASSWORD, ROOT, wait_for, write_files

POLLING = {"poll": True, "poll_interval": 0.2, "wait_seconds": 20}
FILES = {f"d{i % 3}/{i}.mp4": b"%d" % i * 999 for i in range(9)}


def main(capsys, config, *args):
    code = cdn_push.main(["--config", str(config), *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def imported(drop, emulator, write_config, capsys):
    """A folder imported and confirmed; returns the config path."""
    write_files(drop, FILES)
    config = write_config(confirm=POLLING)
    code, out, err = main(capsys, config)
    assert code == 0 and "9 confirmed" in out, err
    return config


def cdn_delete(emulator, name):
    answer = requests.post(emulator.api_url + "/file/delete", data={"name": name}, auth=(API_LOGIN, API_PASSWORD),
                           timeout=10)
    assert answer.status_code == 200, answer.text


def test_check_finds_what_the_cdn_lost_or_failed_and_fix_then_run_makes_it_whole(imported, emulator, capsys):
    assert main(capsys, imported, "check")[0] == 0
    cdn_delete(emulator, "d0/0.mp4")
    emulator.files["d1/4.mp4"].state = "failed"
    code, out, _ = main(capsys, imported, "check")
    assert code == cdn_push.EXIT_INCOMPLETE
    assert "missing at the CDN: d0/0.mp4" in out and "failed at the CDN: d1/4.mp4" in out
    assert "2 differences; the CDN was asked about 9 files" in out
    code, out, _ = main(capsys, imported, "check", "--fix")
    assert code == cdn_push.EXIT_INCOMPLETE and "2 files marked to be submitted again" in out
    sent = len(emulator.requests)
    code, out, err = main(capsys, imported)
    assert code == 0, err
    assert sorted(r["name"] for r in emulator.requests[sent:]) == ["d0/0.mp4", "d1/4.mp4"]
    code, out, _ = main(capsys, imported, "check")
    assert code == 0 and "0 differences" in out


def test_check_names_local_changes_and_speaks_json(imported, drop, emulator, capsys):
    (drop / "d0/3.mp4").unlink()
    (drop / "d1/1.mp4").write_bytes(b"new content")
    write_files(drop, {"d2/new.mp4": b"fresh"})
    code, out, _ = main(capsys, imported, "check", "--json")
    assert code == cdn_push.EXIT_INCOMPLETE
    found = {(d["path"], d["problem"]) for d in json.loads(out)["differences"]}
    assert found == {("d0/3.mp4", "deleted locally"), ("d1/1.mp4", "changed locally since import"),
                     ("d2/new.mp4", "not imported yet")}
    assert json.loads(out)["asked_cdn"] == 7                 # the unchanged imported files only
    main(capsys, imported)                                   # the run notes the delete: d0/3.mp4 is gone
    (drop / "d1/1.mp4").write_bytes(FILES["d1/1.mp4"])
    code, out, _ = main(capsys, imported, "check")
    assert "1 file gone from the folder may still be in the CDN" in out and "deleted locally" not in out


def test_check_sample_asks_about_that_many_files(imported, emulator, capsys):
    code, out, _ = main(capsys, imported, "check", "--sample", "3")
    assert code == 0 and "asked about 3 files" in out
    assert main(capsys, imported, "check", "--sample", "0")[0] == cdn_push.EXIT_USAGE


def test_resend_submits_the_matching_files_again_and_refuses_a_pattern_that_matches_nothing(imported, emulator,
                                                                                            capsys):
    code, out, _ = main(capsys, imported, "resend", "d2/**", "nothing/*.mp4")
    assert code == cdn_push.EXIT_USAGE and out == ""
    code, out, _ = main(capsys, imported, "resend", "d2/**", "d0/0.mp4")
    assert code == 0 and "4 files marked to be submitted again" in out and "to resend: d2/8.mp4" in out
    sent = len(emulator.requests)
    code, out, err = main(capsys, imported)
    assert code == 0, err
    assert sorted(r["name"] for r in emulator.requests[sent:]) == ["d0/0.mp4", "d2/2.mp4", "d2/5.mp4", "d2/8.mp4"]


def test_forget_drops_rows_and_the_next_run_imports_the_files_as_new(imported, emulator, capsys):
    code, out, _ = main(capsys, imported, "forget", "d1/*")
    assert code == 0 and "3 files forgotten" in out
    code, shown, _ = main(capsys, imported, "status", "--json")
    assert json.loads(shown)["counts"]["confirmed"] == 6
    code, out, err = main(capsys, imported)
    assert code == 0 and "3 new" in out, err


def test_a_check_fix_killed_half_way_keeps_its_fixes_and_a_second_one_finishes(imported, emulator, capsys):
    for name in FILES:
        cdn_delete(emulator, name)
    emulator.answer_delay = 0.2                   # slow enough to kill the check half way
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDN_PUSH_")}
    check = subprocess.Popen([sys.executable, str(ROOT / "cdn_push.py"), "--config", str(imported), "check", "--fix"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env)
    ledger_path = cdn_push.parse_config(__import__("yaml").safe_load(imported.read_text()), env={},
                                        base_dir=imported.parent).ledger

    def pending() -> int:
        with cdn_push.Ledger.reader(ledger_path) as ledger:
            return ledger.counts()["pending"]

    wait_for(lambda: pending() >= 2 or check.poll() is not None, 30, message="some fixes recorded")
    check.send_signal(signal.SIGKILL)
    check.wait(10)
    kept = pending()
    assert 2 <= kept < len(FILES)
    emulator.answer_delay = 0
    code, out, _ = main(capsys, imported, "check", "--fix")
    assert code == cdn_push.EXIT_INCOMPLETE and pending() == len(FILES)
    code, out, err = main(capsys, imported)
    assert code == 0, err
    assert main(capsys, imported, "check")[0] == 0


# -- deletes and renames ----------------------------------------------------------------------------

def counts(capsys, config):
    code, shown, _ = main(capsys, config, "status", "--json")
    return json.loads(shown)["counts"]


def test_a_deleted_file_becomes_gone_and_is_no_longer_counted_as_confirmed(imported, drop, emulator, capsys):
    (drop / "d0/3.mp4").unlink()
    code, out, _ = main(capsys, imported, "resend", "d0/3.mp4")
    assert code == cdn_push.EXIT_USAGE                        # nothing to send: refused, not silently dropped
    code, out, err = main(capsys, imported)
    assert code == 0 and "1 gone from the folder" in out, err
    assert counts(capsys, imported)["confirmed"] == 8 and counts(capsys, imported)["gone"] == 1
    assert "d0/3.mp4" in emulator.files                      # deletes are not sent unless asked for
    code, out, _ = main(capsys, imported)
    assert code == 0 and "gone" not in out                    # said once


def test_a_renamed_file_is_imported_under_its_new_name_without_hashing_and_the_old_name_is_gone(
        imported, drop, emulator, capsys):
    os.rename(drop / "d0/0.mp4", drop / "d1/zero.mp4")
    code, out, err = main(capsys, imported)
    assert code == 0, err
    assert "1 new" in out and "1 gone from the folder" in out and "1 confirmed" in out
    assert emulator.requests[-1]["name"] == "d1/zero.mp4"
    code, shown, _ = main(capsys, imported, "status", "--json")
    states = {f["path"]: f["state"] for f in json.loads(shown)["files"]}
    assert states["d0/0.mp4"] == "gone" and states["d1/zero.mp4"] == "confirmed"


def test_with_delete_enabled_a_local_delete_reaches_the_cdn_after_the_grace_period(
        drop, emulator, write_config, capsys):
    write_files(drop, FILES)
    waiting = write_config(confirm=POLLING, delete={"enabled": True, "grace_seconds": 3600})
    assert main(capsys, waiting)[0] == 0
    (drop / "d2/2.mp4").unlink()
    code, out, err = main(capsys, waiting)
    assert code == 0 and "1 gone from the folder" in out and "deleted" not in out, err
    assert "d2/2.mp4" in emulator.files                       # within the grace period
    now = write_config(confirm=POLLING, delete={"enabled": True, "grace_seconds": 0})
    code, out, _ = main(capsys, now, "--dry-run")
    assert "would delete from the CDN: d2/2.mp4" in out and "d2/2.mp4" in emulator.files
    code, out, err = main(capsys, now)
    assert code == 0 and "1 deleted from the CDN" in out, err
    assert "d2/2.mp4" not in emulator.files and len(emulator.files) == 8
    assert counts(capsys, now)["gone"] == 0                   # the row went with the CDN's copy


def test_a_folder_that_suddenly_looks_empty_deletes_nothing_and_says_why(drop, emulator, write_config, capsys):
    write_files(drop, FILES)
    config = write_config(confirm=POLLING, delete={"enabled": True, "grace_seconds": 0})
    assert main(capsys, config)[0] == 0
    os.rename(drop, drop.with_name("unmounted"))
    drop.mkdir()                                              # the mount point, empty
    code, out, err = main(capsys, config)
    assert code == cdn_push.EXIT_INCOMPLETE
    assert "lists no files at all (an unmounted share?)" in err and "nothing is deleted" in err
    assert len(emulator.files) == 9 and counts(capsys, config)["gone"] == 0


def test_more_files_gone_than_max_per_pass_deletes_none_of_them_until_the_limit_is_raised(
        drop, emulator, write_config, capsys):
    write_files(drop, FILES)
    config = write_config(confirm=POLLING, delete={"enabled": True, "grace_seconds": 0, "max_per_pass": 2})
    assert main(capsys, config)[0] == 0
    for name in ("d0/0.mp4", "d1/1.mp4", "d2/2.mp4"):
        (drop / name).unlink()
    code, out, err = main(capsys, config)
    assert code == cdn_push.EXIT_INCOMPLETE and "3 files disappeared from the folder at once" in err
    assert len(emulator.files) == 9
    assert main(capsys, config)[0] == cdn_push.EXIT_INCOMPLETE          # refused again, not forgotten
    raised = write_config(confirm=POLLING, delete={"enabled": True, "grace_seconds": 0, "max_per_pass": 3})
    code, out, err = main(capsys, raised)
    assert code == 0 and "3 deleted from the CDN" in out, err
    assert len(emulator.files) == 6


def test_a_no_replace_conflict_is_shown_by_status_as_its_own_state(drop, emulator, write_config, capsys):
    write_files(drop, {"keep.mp4": b"first version", "other.mp4": b"other"})
    config = write_config(confirm=POLLING, defaults={"no_replace": True})
    assert main(capsys, config)[0] == 0
    write_files(drop, {"keep.mp4": b"second version"})
    code, out, err = main(capsys, config)
    assert code == cdn_push.EXIT_INCOMPLETE and "1 conflict in" in out, err
    code, out, _ = main(capsys, config, "status")
    assert "1 of them in conflict" in out
    code, out, _ = main(capsys, config, "status", "--state", "conflict")
    lines = [line for line in out.splitlines() if line.startswith("conflict")]
    assert len(lines) == 1 and "keep.mp4" in lines[0] and "no_replace" in lines[0]
    code, shown, _ = main(capsys, config, "status", "--json")
    document = json.loads(shown)
    assert document["counts"]["conflict"] == 1
    assert [f["path"] for f in document["files"] if f["conflict"]] == ["keep.mp4"]
