"""End to end through main([...]) and through a real subprocess, with the emulator as the CDN."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import cdn_push
from cdn_push import main
from conftest import (API_PASSWORD, AWKWARD_FILES, ORIGIN_PASSWORD, ROOT, assert_cdn_holds, free_port, start_cdn_push,
                      wait_for, write_files)


def run_main(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in (cdn_push.ENV_API_PASSWORD, cdn_push.ENV_ORIGIN_PASSWORD, cdn_push.ENV_CONFIG, "JOURNAL_STREAM"):
        monkeypatch.delenv(name, raising=False)


def test_version_and_help(capsys):
    code, out, _ = run_main(capsys, "--version")
    assert code == 0 and out.strip() == f"cdn-push {cdn_push.__version__}"
    code, out, _ = run_main(capsys, "--help")
    assert code == 0 and "exit codes" in out and "examples" in out


def test_unknown_option_is_a_usage_error(capsys):
    code, _, err = run_main(capsys, "--frobnicate")
    assert code == cdn_push.EXIT_USAGE and "--frobnicate" in err


def test_full_run_then_nothing_then_status(capsys, drop, emulator, write_config):
    write_files(drop, AWKWARD_FILES)
    config = write_config()
    code, out, err = run_main(capsys, "--config", str(config))
    assert code == cdn_push.EXIT_OK, err
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d summary: ", out)     # a log file's line: stamped
    assert out.strip().split(" ", 2)[2].startswith(f"summary: {len(AWKWARD_FILES)} new, 0 changed, 0 unchanged, 0 waiting, "
                                  f"{len(AWKWARD_FILES)} submitted, 0 rejected, 0 failed")
    assert " submitted " not in err          # a line per file only with -v: a million files, a million lines
    code, out, _ = run_main(capsys, "--config", str(config))
    assert code == 0 and f"{len(AWKWARD_FILES)} unchanged" in out and "0 submitted" in out
    assert len(emulator.requests) == len(AWKWARD_FILES)

    code, out, _ = run_main(capsys, "--config", str(config), "status", "--json")
    status = json.loads(out)
    assert code == 0 and status["counts"]["submitted"] == len(AWKWARD_FILES)
    by_path = {f["path"]: f for f in status["files"]}
    assert by_path["ünïcödé/ファイル.mp4"]["sha256"] == hashlib.sha256(AWKWARD_FILES["ünïcödé/ファイル.mp4"]).hexdigest()
    code, out, _ = run_main(capsys, "--config", str(config), "status")
    assert code == 0 and f"{len(AWKWARD_FILES)} submitted" in out.splitlines()[0]
    assert out.splitlines()[1].split()[:4] == ["state", "bytes", "tries", "sha-256"]      # the columns named
    assert emulator.wait_idle(30)
    assert all(f["state"] == "ready" for f in emulator.snapshot())


def test_config_from_environment_variable(capsys, drop, emulator, write_config, monkeypatch):
    write_files(drop, {"a.mp4": b"a"})
    monkeypatch.setenv(cdn_push.ENV_CONFIG, str(write_config()))
    code, out, _ = run_main(capsys)
    assert code == 0 and "1 submitted" in out


def test_config_errors_exit_2_and_name_the_key(capsys, write_config):
    code, _, err = run_main(capsys, "--config", str(write_config(sacn={"include": []})))
    assert code == cdn_push.EXIT_USAGE and "unknown key 'sacn'" in err and "config.yaml" in err
    code, _, err = run_main(capsys, "--config", "/nonexistent/config.yaml")
    assert code == cdn_push.EXIT_USAGE and "config.example.yaml" in err


def test_missing_login_or_password_is_a_config_error(capsys, raw_config, write_config):
    code, _, err = run_main(capsys, "--config", str(write_config(api={**raw_config["api"], "login": ""})))
    assert code == cdn_push.EXIT_USAGE and "'api.login' is required" in err
    code, _, err = run_main(capsys, "--config", str(write_config(api={**raw_config["api"], "password": ""})))
    assert code == cdn_push.EXIT_USAGE and cdn_push.ENV_API_PASSWORD in err


def test_second_instance_exits_3(capsys, drop, write_config, raw_config):
    config = write_config()
    with cdn_push.LedgerLock(Path(raw_config["ledger"])):
        code, out, err = run_main(capsys, "--config", str(config))
    assert code == cdn_push.EXIT_LOCKED and "another cdn-push" in err and out == ""
    assert len(err.strip().splitlines()) == 1


def test_refused_credentials_exit_4_without_retrying(capsys, drop, emulator, write_config, monkeypatch):
    write_files(drop, {f"f{i}.mp4": b"x" for i in range(10)})
    monkeypatch.setenv(cdn_push.ENV_API_PASSWORD, "Wrong-Pa55word-env")
    code, out, err = run_main(capsys, "--config", str(write_config()))
    assert code == cdn_push.EXIT_CDN_UNAVAILABLE
    assert "refused the API credentials" in err
    assert "Wrong-Pa55word-env" not in out + err
    assert "0 submitted" in out and emulator.requests == []


def test_a_wrong_password_costs_one_failed_login_per_run(capsys, drop, emulator, write_config, monkeypatch):
    """Until one answer shows the credentials work, requests go one at a time: under cron, 4 workers
    must not mean 4-5 failed logins every 5 minutes (an account lock). The summary says it aborted."""
    write_files(drop, {f"f{i}.mp4": b"x%d" % i for i in range(10)})
    logins = []
    checked = emulator._authenticated
    monkeypatch.setattr(emulator, "_authenticated", lambda *args: logins.append(1) or checked(*args))
    monkeypatch.setenv(cdn_push.ENV_API_PASSWORD, "Wrong-Pa55word-env")
    config = write_config(workers={"submit": 4})
    for run in (1, 2):
        code, out, err = run_main(capsys, "--config", str(config))
        assert code == cdn_push.EXIT_CDN_UNAVAILABLE and len(logins) == run, (logins, err)
        assert "(aborted: see the error above)" in out, out


def test_quiet_runs_say_nothing_when_all_is_well_and_an_overlap_is_no_error(capsys, drop, emulator, write_config):
    """-q as cron wants it (rsync -q, aws s3 sync --only-show-errors): silent on exit 0; a run that
    meets another one still going (exit 3) is harmless, so it is not an ERROR line either."""
    write_files(drop, {"a.mp4": b"a"})
    config = write_config()
    assert run_main(capsys, "--config", str(config))[0] == cdn_push.EXIT_OK
    for _ in range(3):
        assert run_main(capsys, "-q", "--config", str(config)) == (cdn_push.EXIT_OK, "", "")
    with cdn_push.LedgerLock(cdn_push.load_config(config, {})[0].ledger):
        code, out, err = run_main(capsys, "-q", "--config", str(config))
        assert (code, out, err) == (cdn_push.EXIT_LOCKED, "", "")
        code, out, err = run_main(capsys, "--config", str(config))
        assert code == cdn_push.EXIT_LOCKED and " INFO another cdn-push" in err and "ERROR" not in err, err


def test_unreachable_cdn_exits_4(capsys, drop, write_config, raw_config):
    write_files(drop, {"a.mp4": b"a"})
    api = {**raw_config["api"], "url": f"http://127.0.0.1:{free_port()}/api2"}
    code, _, err = run_main(capsys, "--config", str(write_config(api=api)))
    assert code == cdn_push.EXIT_CDN_UNAVAILABLE and "cannot reach" in err
    ledger = cdn_push.Ledger.open(raw_config["ledger"])
    assert ledger.get("a.mp4").state == "pending"        # kept for the next run
    ledger.close()


def test_faults_are_retried_and_the_run_ends_well(capsys, drop, emulator, write_config):
    write_files(drop, {f"f{i}.mp4": os.urandom(100 + i) for i in range(12)})
    emulator.inject("500", "429:1", "drop", "503", "502", "error200")
    code, out, err = run_main(capsys, "--config", str(write_config()))
    # error200 is a rejection (a 200 reporting an error); the rest are retried and succeed.
    assert code == cdn_push.EXIT_INCOMPLETE, err
    assert "11 submitted, 1 rejected, 0 failed" in out
    code, out, _ = run_main(capsys, "--config", str(write_config()), "--retry-rejected")
    assert code == 0 and "1 submitted" in out
    assert emulator.wait_idle(30)
    assert len(emulator.snapshot()) == 12 and all(f["state"] == "ready" for f in emulator.snapshot())


def test_dry_run_prints_and_changes_nothing(capsys, drop, emulator, write_config, raw_config):
    write_files(drop, {"a.mp4": b"a", "b/c.mp4": b"c"})
    code, out, _ = run_main(capsys, "--config", str(write_config()), "--dry-run")
    assert code == 0
    lines = [line for line in out.splitlines() if line.startswith("would submit")]
    assert len(lines) == 2 and all("fetcher:***@" in line for line in lines)
    assert emulator.requests == [] and not Path(raw_config["ledger"]).exists()


def test_status_before_any_run(capsys, write_config):
    code, out, _ = run_main(capsys, "--config", str(write_config()), "status")
    assert code == 0 and "nothing has been pushed" in out


def test_no_secret_leaks_anywhere(capsys, tmp_path, drop, emulator, write_config, raw_config, monkeypatch):
    """Every command, with distinctive passwords from file and environment, never shows them."""
    write_files(drop, {"a.mp4": b"a", "b.mp4": b"b", "c.mp4": b"c"})
    env_api = API_PASSWORD            # the emulator's password, given through the environment
    file_origin = ORIGIN_PASSWORD     # in the config file, with characters that need encoding
    wrong = "Wr0ng-Distinctive-Secret"
    api_without = {k: v for k, v in raw_config["api"].items() if k != "password"}
    config = write_config(api=api_without)
    monkeypatch.setenv(cdn_push.ENV_API_PASSWORD, env_api)
    emulator.inject("echo400")        # an answer that repeats the location, origin password included
    outputs = []
    for args in (["-v"], ["-v"], ["--dry-run", "-v"], ["status"], ["status", "--json"], []):
        code, out, err = run_main(capsys, "--config", str(config), *args)
        outputs.append(out + err)
    assert "1 rejected" in outputs[0]
    monkeypatch.setenv(cdn_push.ENV_API_PASSWORD, wrong)
    write_files(drop, {"d.mp4": b"d"})
    code, out, err = run_main(capsys, "--config", str(config))
    assert code == cdn_push.EXIT_CDN_UNAVAILABLE
    outputs.append(out + err)
    code, out, err = run_main(capsys, "--config", str(write_config(api=api_without, bogus=1)))
    outputs.append(out + err)
    ledger_bytes = b"".join(p.read_bytes() for p in Path(raw_config["ledger"]).parent.glob("ledger.sqlite3*")
                            if p.is_file())
    everything = "\n".join(outputs)
    assert "***" in everything and b"***" in ledger_bytes    # the echoed location, masked
    for secret in (env_api, file_origin, wrong):
        for form in {secret, secret.replace("/", "%2F"), cdn_push.quote(secret, safe="")}:
            assert form not in everything, form
            assert form.encode() not in ledger_bytes, form


# -- real subprocesses --------------------------------------------------------------

def start_process(config: Path, *args: str) -> subprocess.Popen:
    return start_cdn_push("--config", str(config), *args)


def test_kill_mid_run_then_rerun_imports_everything_once(drop, emulator, write_config, raw_config):
    files = {f"batch/f{i:03}.mp4": os.urandom(1000 + i) for i in range(40)}
    write_files(drop, files)
    emulator.answer_delay = 0.05
    config = write_config(workers={"hash": 2, "submit": 2})
    process = start_process(config)
    wait_for(lambda: len(emulator.requests) >= 8, timeout=30, message="8 requests sent before the kill")
    process.kill()
    process.wait(10)
    assert process.returncode == -signal.SIGKILL
    emulator.answer_delay = 0
    rerun = start_process(config)
    out, err = rerun.communicate(timeout=60)
    assert rerun.returncode == 0, err
    assert_cdn_holds(emulator, files)
    # Only requests in flight at the kill (at most one per submit worker) were sent twice.
    assert len(emulator.requests) <= len(files) + 2
    ledger = cdn_push.Ledger.open(raw_config["ledger"])
    assert {r.state for r in ledger.all_rows()} == {"submitted"} and len(list(ledger.all_rows())) == 40
    ledger.close()


def test_sigterm_stops_cleanly_and_the_summary_says_so(drop, emulator, write_config):
    write_files(drop, {f"f{i:03}.mp4": os.urandom(100) for i in range(60)})
    emulator.answer_delay = 0.05
    process = start_process(write_config(workers={"hash": 1, "submit": 1}))
    wait_for(lambda: len(emulator.requests) >= 3, timeout=30, message="3 requests sent before SIGTERM")
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=30)
    assert process.returncode == cdn_push.EXIT_INCOMPLETE, err
    assert "(interrupted)" in out and "Traceback" not in err
    assert len(emulator.requests) < 60


def test_demo_round_trip_in_a_subprocess():
    done = subprocess.run([sys.executable, str(ROOT / "cdn_push.py"), "demo"], capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    assert "demo: OK: 5 of 5 files fetched, verified and confirmed" in done.stdout
    assert "demo-api-secret" not in done.stdout + done.stderr


# -- operators' mistakes end well -------------------------------------------------------------------------

def serve_section(public_port, listen_port):
    return {"serve": {"listen": f"127.0.0.1:{listen_port}", "public_url": f"http://127.0.0.1:{public_port}"}}


def ledger_states(raw_config):
    with cdn_push.Ledger.open(raw_config["ledger"]) as ledger:
        return {row.path: row.state for row in ledger.all_rows()}


def test_a_wrong_public_url_sends_nothing_and_says_which_key(capsys, drop, emulator, write_config, raw_config):
    write_files(drop, {f"f{i}.mp4": os.urandom(500) for i in range(5)})
    listen, wrong = free_port(), free_port()
    code, out, err = run_main(capsys, "--config", str(write_config(origin=serve_section(wrong, listen))))
    assert code == cdn_push.EXIT_ORIGIN, err
    assert "origin.serve.public_url" in err and f"127.0.0.1:{wrong}" in err and "origin.check" in err
    assert emulator.requests == [] and set(ledger_states(raw_config).values()) == {"pending"}
    started = time.monotonic()
    code, out, err = run_main(capsys, "--config", str(write_config(origin=serve_section(listen, listen),
                                                                   callback={"wait_seconds": 120})))
    assert code == cdn_push.EXIT_OK, err
    assert set(ledger_states(raw_config).values()) == {"confirmed"} and time.monotonic() - started < 60


def test_links_that_can_no_longer_work_are_sent_again_at_once(capsys, drop, emulator, write_config, raw_config):
    """origin.check off and a wrong public_url: the CDN cannot fetch; fixed, the next run resends at once."""
    write_files(drop, {f"f{i}.mp4": os.urandom(500) for i in range(3)})
    listen, wrong = free_port(), free_port()
    origin = {**serve_section(wrong, listen), "check": False}
    code, out, err = run_main(capsys, "--config", str(write_config(origin=origin, callback={"wait_seconds": 1})))
    assert code == cdn_push.EXIT_INCOMPLETE and "3 unconfirmed" in out       # never reported as done
    assert set(ledger_states(raw_config).values()) == {"submitted"}
    code, out, err = run_main(capsys, "--config", str(write_config(origin=serve_section(listen, listen),
                                                                   callback={"wait_seconds": 120})))
    assert code == cdn_push.EXIT_OK and "3 resent unconfirmed" in out, out + err
    assert set(ledger_states(raw_config).values()) == {"confirmed"}


def test_a_wrong_api_path_rejects_no_file_and_a_fixed_rerun_imports_all(capsys, drop, emulator, write_config,
                                                                       raw_config):
    write_files(drop, {f"f{i}.mp4": b"%d" % i for i in range(5)})
    api = {**raw_config["api"], "url": emulator.api_url.removesuffix("/api2") + "/api"}
    code, out, err = run_main(capsys, "--config", str(write_config(api=api)))
    assert code == cdn_push.EXIT_CDN_UNAVAILABLE and "'api.url'" in err, err
    assert "rejected" not in set(ledger_states(raw_config).values())
    code, out, err = run_main(capsys, "--config", str(write_config()))
    assert code == cdn_push.EXIT_OK and "5 submitted" in out, out + err


def test_placeholder_hosts_are_config_errors(capsys, drop, write_config, raw_config):
    origin = {"base_url": "https://videos.example.com/drop"}
    code, _, err = run_main(capsys, "--config", str(write_config(origin=origin)))
    assert code == cdn_push.EXIT_USAGE and "'origin.base_url'" in err and "videos.example.com" in err


@pytest.mark.parametrize("args, shown", [
    (["watch", "--help"], ["--poll", "examples:", "exit codes:"]),
    (["status", "--help"], ["--json", "--state", "examples:"]),
    (["run", "--help"], ["--dry-run", "--retry-rejected", "examples:"]),
    (["--help"], ["watch", "status", "reload", "demo", "COMMAND --help"]),
    (["help"], ["watch", "status", "reload", "demo", "COMMAND --help"]),
    (["help", "reload"], ["--pid", "7 no running service"]),
    (["help", "status"], ["0 shown"]),
])
def test_every_command_has_its_own_help(capsys, args, shown):
    assert main(args) == 0
    out = capsys.readouterr().out
    assert all(word in out for word in shown), out


@pytest.mark.parametrize("command, not_shown", [("status", "rejected/failed"), ("demo", "--config"),
                                                ("reload", "rejected/failed")])
def test_a_command_lists_only_what_applies_to_it(capsys, command, not_shown):
    assert main([command, "--help"]) == 0
    assert not_shown not in capsys.readouterr().out


def test_demo_refuses_a_config_it_would_ignore(capsys):
    assert main(["--config", "x.yaml", "demo"]) == cdn_push.EXIT_USAGE
    assert "leave out --config" in capsys.readouterr().err


def test_version_needs_no_third_party_package():
    """`--version` answers before the packages are looked for: a bare Python without them."""
    found = subprocess.run([sys.executable, "-S", "-c", "import sys; sys.argv = ['cdn_push.py', '--version']; "
                            f"sys.path.insert(0, {str(ROOT)!r}); import cdn_push; sys.exit(cdn_push.main())"],
                           capture_output=True, text=True, timeout=60, env={"PATH": os.environ["PATH"],
                                                                             "CDN_PUSH_NO_REEXEC": "1"})
    assert found.returncode == 0 and found.stdout.strip() == f"cdn-push {cdn_push.__version__}", found


@pytest.mark.parametrize("args", [["watch", "--dry-run"], ["run", "--json"], ["status", "--poll"],
                                  ["demo", "--retry-rejected"]])
def test_options_are_tied_to_their_commands(capsys, emulator, write_config, args):
    assert main([*args, "--config", str(write_config())]) == cdn_push.EXIT_USAGE
    assert "unrecognized arguments" in capsys.readouterr().err and emulator.requests == []


@pytest.mark.parametrize("where", ["before", "after"])
def test_options_work_before_or_after_the_command(capsys, drop, write_config, where):
    """--config, -q and -v take effect on either side of the command name."""
    config = str(write_config(scan={"settle_seconds": 3600}))
    write_files(drop, {"settled.mp4": b"settled"})
    write_files(drop, {"young.mp4": b"still being written"}, age=0)    # an INFO line; with -v a DEBUG one too

    def dry_run(*options):
        return run_main(capsys, *([*options, "run", "--dry-run"] if where == "before"
                                  else ["run", "--dry-run", *options]))

    code, out, err = dry_run("--config", config)                 # neither -q nor -v: INFO, no DEBUG
    assert code == 0 and "would submit (new): settled.mp4" in out, out + err     # this config's folder
    assert " INFO " in err and " DEBUG " not in err, err
    code, out, err = dry_run("-q", "--config", config)
    assert code == 0 and "would submit (new): settled.mp4" in out, out + err
    assert " INFO " not in err and " DEBUG " not in err, err       # -q: warnings and errors only
    code, out, err = dry_run("-v", "--config", config)
    assert code == 0 and "would submit (new): settled.mp4" in out, out + err
    assert " DEBUG waiting: young.mp4" in err, err


@pytest.mark.parametrize("as_json", [[], ["--json"]], ids=["text", "json"])
def test_status_into_a_closed_pipe_exits_quietly(write_config, raw_config, drop, as_json):
    """`status | head`: the JSON is one write, which fails only when Python flushes it at the end."""
    with cdn_push.Ledger.open(raw_config["ledger"]) as ledger:
        ledger.put_many([cdn_push.LedgerRow(f"f{i:05}.mp4", 1, 1, i, "a" * 64, f"f{i:05}.mp4", "submitted")
                         for i in range(3000)])
    process = start_cdn_push("status", *as_json, "--config", str(write_config()))
    assert process.stdout.readline()
    process.stdout.close()
    err = process.stderr.read()
    assert process.wait(30) == 0 and "Traceback" not in err and "BrokenPipe" not in err


def test_a_short_status_into_a_pipe_closed_before_it_is_written_exits_quietly(write_config, raw_config, drop):
    """Output that fits Python's buffer is written only when it is flushed: that must fail inside
    main too, not as an 'Exception ignored' at exit (status 120)."""
    with cdn_push.Ledger.open(raw_config["ledger"]) as ledger:
        ledger.put(cdn_push.LedgerRow("a.mp4", 1, 1, 1, "a" * 64, "a.mp4", "submitted"))
    # As a user's shell runs it: stdout buffered (this suite's environment may say PYTHONUNBUFFERED)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CDN_PUSH_", "PYTHONUNBUFFERED"))}
    process = subprocess.Popen([sys.executable, str(ROOT / "cdn_push.py"), "status", "--json", "--config",
                                str(write_config())], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=env, stdin=subprocess.DEVNULL)
    process.stdout.close()
    err = process.stderr.read()
    assert process.wait(30) == 0 and "Exception ignored" not in err and "BrokenPipe" not in err, err


def test_a_command_started_with_its_output_closed_is_no_fault_of_its_own():
    """`cdn-push help >&-` (a daemon's closed stdout): Python has no sys.stdout at all then."""
    done = subprocess.run(["sh", "-c", 'exec "$0" "$1" help >&-', sys.executable, str(ROOT / "cdn_push.py")],
                          capture_output=False, stderr=subprocess.PIPE, text=True, timeout=60)
    assert done.returncode == 0 and "fault of its own" not in done.stderr, done.stderr


def test_retry_waits_are_said_while_the_api_is_down(capsys, drop, write_config, raw_config):
    write_files(drop, {"a.mp4": b"a"})
    api = {**raw_config["api"], "url": f"http://127.0.0.1:{free_port()}/api2",
           "retry": {"attempts": 3, "backoff_base": 0.01, "backoff_max": 0.02, "max_seconds": 5}}
    code, _, err = run_main(capsys, "--config", str(write_config(api=api, origin={"base_url": raw_config["origin"]["base_url"],
                                                                                 "username": "fetcher",
                                                                                 "password": ORIGIN_PASSWORD})))
    assert code == cdn_push.EXIT_CDN_UNAVAILABLE
    # Said once (with what happens next), then quiet; every retry with -v.
    assert "try 2 of 3" in err and "try 3 of 3" not in err and "Connection refused" in err, err
    assert err.count("did not answer well") == 1 and "further retries are logged with -v" in err, err
    code, _, err = run_main(capsys, "-v", "--config", str(write_config(api=api)))
    assert code == cdn_push.EXIT_CDN_UNAVAILABLE and "try 2 of 3" in err and "try 3 of 3" in err, err


def test_waiting_files_are_named_with_the_reason(capsys, drop, emulator, write_config):
    write_files(drop, {"old.mp4": b"old"})
    write_files(drop, {"young.mp4": b"young"}, age=0)
    code, out, err = run_main(capsys, "--config", str(write_config(scan={"settle_seconds": 60})))
    assert code == 0 and "1 waiting" in out
    assert "young.mp4 (modified 0s ago, scan.settle_seconds is 60)" in err


def test_yaml_mistakes_name_the_real_line_and_say_what_is_wrong(capsys, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text('folder: /tmp\napi:\n  login: x\n  password: "abc\n  timeout: 3\nscan:\n  x: 1\n')
    assert main(["status", "--config", str(config)]) == cdn_push.EXIT_USAGE
    err = capsys.readouterr().err
    assert f"{config}: line 4, column 13: a quote opened here is not closed on its line" in err
    assert '    4 |   password: ***\n      |             ^' in err and "abc" not in err     # the value masked
    config.write_text("folder: /tmp\napi:\n\tlogin: x\n")
    assert main(["status", "--config", str(config)]) == cdn_push.EXIT_USAGE
    assert "line 3, column 1: a tab character" in capsys.readouterr().err


def test_the_config_path_is_shown_whole_from_anywhere(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["status", "--config", "missing.yaml"]) == cdn_push.EXIT_USAGE
    assert str(tmp_path / "missing.yaml") in capsys.readouterr().err


def test_an_unknown_command_is_named(capsys):
    assert main(["frobnicate"]) == cdn_push.EXIT_USAGE
    assert "unknown command 'frobnicate' (commands: run, watch, status, reload, check, resend, forget, demo, help)" in capsys.readouterr().err


def test_a_dry_run_warns_of_what_a_real_run_would_refuse(capsys, drop, write_config):
    write_files(drop, {"a.mp4": b"a"})
    code, out, err = run_main(capsys, "run", "--dry-run", "--config",
                              str(write_config(origin={"base_url": "https://videos.example.com/drop"})))
    assert code == cdn_push.EXIT_USAGE and "would submit (new): a.mp4" in out     # a script can tell
    assert "a real run would stop here" in err and "'origin.base_url' still names the placeholder" in err
    assert "ERROR a real run would not start: fix what the warnings above name in" in err


@pytest.mark.parametrize("dry", [[], ["--dry-run"]], ids=["run", "dry-run"])
def test_a_folder_that_does_not_exist_leaves_no_ledger_or_lock_behind(capsys, tmp_path, write_config, raw_config, dry):
    config = write_config(folder=str(tmp_path / "no-such-folder"))
    code, _, err = run_main(capsys, "run", *dry, "--config", str(config))
    assert code == cdn_push.EXIT_USAGE and "no-such-folder does not exist" in err
    assert not Path(raw_config["ledger"]).exists() and not Path(raw_config["ledger"] + ".lock").exists()


def test_a_ledger_that_is_a_folder_is_a_config_error_naming_the_key(capsys, tmp_path, write_config):
    config = write_config(ledger=str(tmp_path))
    code, _, err = run_main(capsys, "status", "--config", str(config))
    assert code == cdn_push.EXIT_USAGE
    assert f"'ledger' ({tmp_path}) is a folder: give the path of a file in it, such as {tmp_path}/" in err


def test_refused_credentials_say_where_the_password_came_from(capsys, drop, emulator, write_config, monkeypatch):
    write_files(drop, {"a.mp4": b"a"})
    monkeypatch.setenv(cdn_push.ENV_API_PASSWORD, "Stale-Env-Pa55word")
    code, _, err = run_main(capsys, "--config", str(write_config()))
    assert code == cdn_push.EXIT_CDN_UNAVAILABLE
    assert "came from CDN_PUSH_API_PASSWORD (which wins over api.password)" in err
    assert "Stale-Env-Pa55word" not in err


def test_a_password_is_masked_only_where_it_stands_alone(capsys, drop, write_config, raw_config, monkeypatch):
    monkeypatch.setenv(cdn_push.ENV_API_PASSWORD, "add")
    config = write_config()
    config.chmod(0o644)
    code, _, err = run_main(capsys, "status", "--config", str(config))
    assert "holds a password" in err and "h***s" not in err and "***ress" not in err
