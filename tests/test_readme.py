"""The README's commands, tried as a newcomer would (issue 21).

Every command line of the README's ``sh`` and ``cron`` blocks (split at a top-level ``&&``) is
either run here, as written, or named in COVERED with the test that runs it elsewhere (the system
test boots a real systemd for install.sh --systemd, systemctl and journalctl). A README command
that is neither fails test_every_readme_command_is_run_here_or_covered_elsewhere.

The commands run in README order against one site: a scratch folder standing for the clone, a drop
folder and the CDN emulator as the CDN. System paths in a command are swapped for the site's
(/usr/local/bin/cdn-push, /etc/cdn-push/config.yaml, /var/lib/cdn-push, /var/log/cdn-push.log,
/root/) and a leading ``sudo`` is dropped; a command still naming a system path is refused.
``cdn-push`` is this tree's cdn_push.py. No fixed sleeps: each command is waited for.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import sqlite3
import stat
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

import pytest
import requests
import yaml

from cdn_emulator import CdnEmulator
from conftest import API_LOGIN, API_PASSWORD, ROOT, free_port, wait_for, write_files

README = ROOT / "README.md"
SYSTEM = "tests/test_systemd.py"

# Commands the README shows that no test here runs, and the test that runs them (or what they
# rely on). An entry names the README's text exactly: a changed command must be looked at again.
COVERED: dict[str, str] = {
    "./install.sh": f"{SYSTEM}::test_upgrade_by_running_install_sh_again_keeps_the_ledgers (cd /opt/cdn-push && "
                    "./install.sh) and ::test_cdn_push_is_a_command_on_path (cdn-push from any folder)",
    "./install.sh --dev": ".ci/run (test_the_test_command_is_what_ci_runs)",
    ".venv/bin/python -m pytest": ".ci/run (test_the_test_command_is_what_ci_runs)",
    "cd /opt/cdn-push": f"{SYSTEM}::test_upgrade_by_running_install_sh_again_keeps_the_ledgers (the clone is "
                        "/opt/cdn-push in the container)",
    "sudo ./install.sh --systemd": f"{SYSTEM}::test_install_sh_writes_the_unit_world_readable_and_is_idempotent",
    "sudo systemctl enable --now cdn-push": f"{SYSTEM}::test_two_template_instances_run_side_by_side "
                                            "(systemctl enable --now) and "
                                            "::test_active_within_seconds_although_the_first_pass_takes_longer",
    "journalctl -u cdn-push -f": f"{SYSTEM}::test_a_file_dropped_later_ends_confirmed (Box.journal reads "
                                 "journalctl -u cdn-push)",
    "sudo systemctl reload cdn-push": f"{SYSTEM}::test_reload_applies_a_valid_config_and_fails_for_an_invalid_one",
    "sudo ./install.sh --systemd site2": f"{SYSTEM}::test_two_template_instances_run_side_by_side",
    "sudo systemctl enable --now cdn-push@site2": f"{SYSTEM}::test_two_template_instances_run_side_by_side",
    "ssh -L 8765:127.0.0.1:8765 videos-host": "tests/test_monitor.py::test_a_foreign_host_gets_421_and_no_status "
                                              "(the page answers the Host 127.0.0.1:PORT a browser sends through "
                                              "the tunnel); ssh is OpenSSH's",
    "sudo sh -c 'set -a; . /etc/cdn-push/env; exec runuser -u cdn-push -- cdn-push check -c "
    "/etc/cdn-push/config.yaml'": f"{SYSTEM}::test_upgrade_by_running_install_sh_again_keeps_the_ledgers "
                                  "(the same form, with run and site-a)",
    "sudo git pull": f"{SYSTEM}::test_upgrade_by_running_install_sh_again_keeps_the_ledgers (changes the "
                     "installed copy as a pull would)",
    "sudo ./install.sh": f"{SYSTEM}::test_upgrade_by_running_install_sh_again_keeps_the_ledgers",
    "sudo systemctl restart cdn-push": f"{SYSTEM}::test_upgrade_by_running_install_sh_again_keeps_the_ledgers",
    "sudo ./install.sh --uninstall": f"{SYSTEM}::test_uninstall_leaves_no_unit_user_or_command, and "
                                     "test_uninstall_and_purge_as_the_readme_says here",
    "sudo systemctl stop cdn-push": f"{SYSTEM}::test_stop_during_a_batch_is_clean_and_loses_no_confirmation",
    "sudo systemctl start cdn-push": f"{SYSTEM}::test_active_within_seconds_although_the_first_pass_takes_longer",
}

# Run by a test of this file other than the walk through the README.
RUN_BY: dict[str, str] = {
    "sudo ./install.sh --uninstall": "test_uninstall_and_purge_as_the_readme_says",
    "sudo ./install.sh --uninstall --purge": "test_uninstall_and_purge_as_the_readme_says",
}

LANGUAGES = {"sh", "cron", "logrotate", "text"}      # a new kind of block needs a decision here
CRON_LINE = re.compile(r"^(\S+\s+){5}(?P<command>.+)$")
STAMPED = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ")
SUMMARY = re.compile(r"^summary: \d+ new, \d+ changed, \d+ unchanged, \d+ waiting, \d+ submitted, \d+ rejected, "
                     r"\d+ failed(, \d+ confirmed)? in [\d.]+s$")


# -- reading the README -----------------------------------------------------------------------------

def blocks(text: str) -> list[tuple[str, int, list[str]]]:
    """(language, line number of the opening fence, lines) of every fenced block."""
    found, language, start, lines = [], None, 0, []
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            if language is None:
                language, start, lines = line[3:].strip(), number, []
            else:
                found.append((language, start, lines))
                language = None
        elif language is not None:
            lines.append(line)
    assert language is None, f"README.md: the block opened on line {start} is never closed"
    return found


def without_comment(line: str) -> str:
    """A shell line without its trailing `# comment` (a '#' outside quotes, after a space)."""
    quote = None
    for index, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1] in " \t"):
            return line[:index].rstrip()
    return line.rstrip()


def split_and(line: str) -> list[str]:
    """The commands of a line joined by `&&` outside quotes and parentheses."""
    parts, quote, depth, start, index = [], None, 0, 0, 0
    while index < len(line):
        char = line[index]
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif line.startswith("&&", index) and depth == 0:
            parts.append(line[start:index].strip())
            start = index + 2
            index += 1
        index += 1
    parts.append(line[start:].strip())
    return [part for part in parts if part]


def readme_commands(text: str | None = None) -> list[tuple[int, str, str]]:
    """(line number, language, command) for each command of the sh and cron blocks, in order.
    A cron line is one command: the whole line, schedule included."""
    return [(number, language, command) for number, language, command, _ in chained_commands(text)]


def chained_commands(text: str | None = None) -> list[tuple[int, str, str, bool]]:
    """readme_commands, each with whether `&&` follows it on its line."""
    text = README.read_text(encoding="utf-8") if text is None else text
    found = []
    for language, start, lines in blocks(text):
        assert language in LANGUAGES, (f"README.md line {start}: a ```{language} block; tests/test_readme.py "
                                       f"knows {sorted(LANGUAGES)}")
        for offset, line in enumerate(lines, 1):
            if language == "cron" and line.strip() and not line.startswith("#"):
                found.append((start + offset, language, line.strip(), False))
            elif language == "sh":
                parts = split_and(without_comment(line))
                for index, part in enumerate(parts):
                    found.append((start + offset, language, part, index < len(parts) - 1))
    return found


# -- the site the README's commands run in -----------------------------------------------------------

class Site:
    """A scratch clone, a drop folder and the CDN emulator, with the README's system paths mapped."""

    def __init__(self, root: Path, emulator: CdnEmulator) -> None:
        self.root, self.emulator = root, emulator
        self.clone, self.bin, self.home = root / "clone", root / "bin", root / "home"
        self.drop, self.state, self.backups = root / "drop", root / "state", root / "backups"
        self.config, self.log = self.clone / "config.yaml", root / "cdn-push.log"
        self.ledger = self.state / "ledger.sqlite3"
        self.port = free_port()
        self.files = dict(FILES)                  # what the drop folder holds that the CDN should too
        self.exit_codes: list[int] = []
        for folder in (self.clone, self.bin, self.home, self.drop, self.backups):
            folder.mkdir()
        shutil.copy(ROOT / "config.example.yaml", self.clone)
        # `cdn-push` on PATH is this tree's cdn_push.py, as /usr/local/bin/cdn-push would be.
        wrapper = self.bin / "cdn-push"
        wrapper.write_text(f"#!/bin/sh\nexec '{sys.executable}' '{ROOT / 'cdn_push.py'}' \"$@\"\n")
        wrapper.chmod(0o755)
        (self.clone / ".venv" / "bin").mkdir(parents=True)
        (self.clone / ".venv" / "bin" / "cdn-push").symlink_to(wrapper)     # as install.sh leaves it
        self.substitutions = [("/usr/local/bin/cdn-push", str(wrapper)),
                              ("/etc/cdn-push/config.yaml", str(self.config)),
                              ("/var/log/cdn-push.log", str(self.log)),
                              ("/var/lib/cdn-push", str(self.state)),
                              ("/root/", f"{self.backups}/")]

    def local(self, command: str) -> str:
        """The command with the site's paths; refused if it still names a system path."""
        local = command.removeprefix("sudo ")
        for system, mine in self.substitutions:
            local = local.replace(system, mine)
        outside = re.findall(r"(?<![\w.~-])/(?:etc|var|usr|root|opt|srv|home)\b\S*", local.replace(str(self.root), ""))
        assert not outside, f"{command!r} would touch {outside} outside the test's folder"
        return local

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("CDN_PUSH_", "NOTIFY_SOCKET", "JOURNAL_STREAM", "PYTEST"))}
        env.update(PATH=f"{self.bin}:{env.get('PATH', '/usr/bin:/bin')}", HOME=str(self.home))
        return env

    def sh(self, command: str, *, stdin: str | None = None, timeout: float = 90.0) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", self.local(command)], cwd=self.clone, env=self.env(), text=True,
                              capture_output=True, timeout=timeout,
                              **({"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}))

    def readme(self, command: str, **kwargs: Any) -> subprocess.CompletedProcess:
        """A README command: how it ended is kept, for the `&&` that may follow it."""
        result = self.sh(command, **kwargs)
        self.exit_codes.append(result.returncode)
        return result

    def imports(self) -> dict[str, int]:
        """CDN name -> how many times the emulator took it in (a download each)."""
        return {f["name"]: f["imports"] for f in self.emulator.snapshot()}

    def ledger_states(self) -> dict[str, str]:
        with contextlib.closing(sqlite3.connect(f"file:{self.ledger}?mode=ro", uri=True)) as db:
            return dict(db.execute("SELECT path, state FROM files"))


def done(result: subprocess.CompletedProcess, code: int = 0) -> subprocess.CompletedProcess:
    assert result.returncode == code, (f"{result.args[-1]!r} exited {result.returncode}, not {code}\n"
                                       f"stdout: {result.stdout}\nstderr: {result.stderr}")
    return result


def summary(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stdout.splitlines() if "summary: " in line]
    assert len(lines) == 1, result.stdout + result.stderr
    return lines[0]


# The files of the drop folder, an hour old (settled); the README's examples name some of them.
FILES = {
    "series/episode 01.mp4": os.urandom(300_000),
    "series/épisode #2?.mp4": os.urandom(70_000),
    "trailers/teaser.mp4": b"teaser" * 1000,
    "old-site/intro.mp4": b"intro" * 500,
}


# -- each command the walk runs, with what the README says of it -------------------------------------

def demo(site: Site, command: str) -> None:
    result = done(site.readme(command))
    assert "demo: OK: 5 of 5 files fetched, verified and confirmed" in result.stdout, result.stdout


def copy_example(site: Site, command: str) -> None:
    done(site.readme(command))
    assert site.config.read_bytes() == (ROOT / "config.example.yaml").read_bytes()
    # "then set the keys below in it": those of the table, with the built-in origin (callbacks).
    data = yaml.safe_load(site.config.read_text())
    data["folder"] = str(site.drop)
    data["ledger"] = str(site.ledger)                  # stands for the service's /var/lib/cdn-push
    data["api"].update(url=site.emulator.api_url, login=API_LOGIN, password_file="api-password")
    data["api"].pop("password", None)
    data["origin"].pop("base_url")
    data["origin"]["serve"] = {"listen": f"127.0.0.1:{site.port}", "public_url": f"http://127.0.0.1:{site.port}"}
    data["monitor"]["listen"] = None                   # the service below would take 127.0.0.1:8765
    site.config.write_text(yaml.safe_dump(data, sort_keys=False))
    write_files(site.drop, {**FILES, "series/episode 03.mp4.part": b"still being written"})


def password_file(site: Site, command: str) -> None:
    done(site.readme(command, stdin=f"{API_PASSWORD}\n"))
    path = site.clone / "api-password"
    assert path.read_text() == f"{API_PASSWORD}\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def dry_run(site: Site, command: str) -> None:
    result = done(site.readme(command))
    for name in FILES:
        assert f"would submit (new): {name} size={len(FILES[name])} sha256=" in result.stdout, result.stdout
    assert ".part" not in result.stdout
    assert SUMMARY.match(summary(result).split(" ", 2)[2]) and not site.emulator.requests
    assert not site.ledger.exists(), "a dry run made the ledger"


def first_run(site: Site, command: str) -> None:
    result = done(site.readme(command))
    assert f"{len(FILES)} new, " in summary(result) and f"{len(FILES)} confirmed" in summary(result), result.stderr
    assert STAMPED.match(summary(result))                  # not a terminal: the summary is stamped too
    assert set(site.ledger_states().values()) == {"confirmed"} and len(site.ledger_states()) == len(FILES)
    assert site.imports() == {name: 1 for name in FILES}


def status(site: Site, command: str) -> None:
    result = done(site.readme(command))
    first = result.stdout.splitlines()[0]
    assert first.startswith(f"{len(FILES)} files in {site.ledger}: ") and f"{len(FILES)} confirmed" in first, first


def cron(site: Site, line: str) -> None:
    command = CRON_LINE.match(line)["command"]
    assert line.startswith("*/5 * * * * ")
    # Three runs with nothing to do: silent, exit 0 (the issue's "done when").
    for _ in range(3):
        done(site.readme(command))
        assert site.log.read_text() == "", site.log.read_text()
    # A run that finds another one going: exit 3, still silent.
    lock = os.open(f"{site.ledger}.lock", os.O_RDWR)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        done(site.readme(command), 3)
        assert site.log.read_text() == ""
    finally:
        os.close(lock)
    # Something that needs you: the log says it, each line with the date and time.
    password = site.clone / "api-password"
    password.write_text("a-wrong-Pa55word\n")
    site.files["series/episode 04.mp4"] = b"four" * 100
    write_files(site.drop, {"series/episode 04.mp4": site.files["series/episode 04.mp4"]})
    sent = len(site.emulator.requests)
    done(site.readme(command), 4)
    logged = site.log.read_text().splitlines()
    assert logged and all(STAMPED.match(line) for line in logged), logged
    assert "refused the API credentials" in logged[0] and "api.password_file" in logged[0], logged
    assert len(site.emulator.requests) == sent
    password.write_text(f"{API_PASSWORD}\n")
    site.log.write_text("")
    done(site.readme(command))                                 # the next run sends it, silently
    assert site.log.read_text() == "" and site.ledger_states()["series/episode 04.mp4"] == "confirmed"


def status_failed(site: Site, command: str) -> None:
    result = done(site.readme(command))
    count = len(site.files)
    assert result.stdout.splitlines() == [
        f"{count} files in {site.ledger}: 0 pending, 0 submitted, {count} confirmed, 0 rejected, 0 failed, "
        "0 gone"], result.stdout


def check(site: Site, command: str) -> None:
    result = done(site.readme(command))
    assert result.stdout.strip() == f"check: 0 differences; the CDN was asked about {len(site.files)} files", \
        result.stdout


def check_sample(site: Site, command: str) -> None:
    result = done(site.readme(command))
    assert f"asked about {len(site.files)} files" in result.stdout, result.stdout     # fewer than 200: all


def check_fix(site: Site, command: str) -> None:
    lost = "series/episode 01.mp4"
    answer = requests.post(site.emulator.api_url + "/file/delete", data={"name": lost},
                           auth=(API_LOGIN, API_PASSWORD), timeout=10)
    assert answer.status_code == 200, answer.text
    result = done(site.readme(command), 1)
    assert f"missing at the CDN: {lost}" in result.stdout, result.stdout
    assert "1 file marked to be submitted again by the next run" in result.stdout, result.stdout


def run_after_fix(site: Site, command: str) -> None:
    sent = len(site.emulator.requests)
    result = done(site.readme(command))
    assert [r["name"] for r in site.emulator.requests[sent:]] == ["series/episode 01.mp4"], summary(result)
    assert site.imports()["series/episode 01.mp4"] == 1          # imported anew, after the CDN lost it
    assert site.ledger_states()["series/episode 01.mp4"] == "confirmed"


def resend(site: Site, command: str) -> None:
    result = done(site.readme(command))
    assert "to resend: trailers/teaser.mp4" in result.stdout, result.stdout
    before, sent = site.imports(), len(site.emulator.requests)
    done(site.sh("cdn-push"))
    # Sent again; the CDN holds it unchanged, so it says so and downloads nothing.
    assert [r["name"] for r in site.emulator.requests[sent:]] == ["trailers/teaser.mp4"]
    assert site.imports() == before and site.ledger_states()["trailers/teaser.mp4"] == "confirmed"


def forget(site: Site, command: str) -> None:
    done(site.readme(command))
    assert "old-site/intro.mp4" not in site.ledger_states()
    result = done(site.sh("cdn-push"))                     # still in the folder: imported as new
    assert summary(result).split(" ", 2)[2].startswith("summary: 1 new, "), summary(result)
    assert site.ledger_states()["old-site/intro.mp4"] == "confirmed"
    before = site.ledger_states()
    done(site.sh("cdn-push forget 'no-such-folder/**'"), 2)      # matches nothing: exit 2, changes nothing
    assert site.ledger_states() == before


def sqlite_backup(site: Site, command: str) -> None:
    if shutil.which("sqlite3") is None:
        warnings.warn(f"sqlite3 is not installed: README command not run: {command}")
        return
    # "The first works while cdn-push runs": the service holds the ledger meanwhile.
    with (site.root / "watch.log").open("w") as log:
        service = subprocess.Popen([str(site.bin / "cdn-push"), "watch"], cwd=site.clone, env=site.env(),
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        lock = Path(f"{site.ledger}.lock")
        holding = lambda: lock.exists() and lock.read_text().strip() == str(service.pid)  # noqa: E731
        wait_for(lambda: service.poll() is not None or holding(), 30, message="the service holds the ledger")
        assert service.poll() is None, (site.root / "watch.log").read_text()
        done(site.readme(command))
        copy = site.backups / "cdn-push-ledger.sqlite3"
        query = "SELECT path, state, sha256 FROM files ORDER BY path"
        with contextlib.closing(sqlite3.connect(f"file:{copy}?mode=ro", uri=True)) as backup, \
                contextlib.closing(sqlite3.connect(f"file:{site.ledger}?mode=ro", uri=True)) as ledger:
            assert backup.execute(query).fetchall() == ledger.execute(query).fetchall()
            assert len(ledger.execute(query).fetchall()) == len(site.files)
    finally:
        service.terminate()
        assert service.wait(30) == 0, (site.root / "watch.log").read_text()
    # The restore the README describes, after a file was imported since the backup: that file is
    # sent again and the CDN says it holds it (nothing downloaded twice).
    site.files["after-backup.mp4"] = b"later" * 100
    write_files(site.drop, {"after-backup.mp4": site.files["after-backup.mp4"]})
    done(site.sh("cdn-push"))
    before = site.imports()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{site.ledger}{suffix}").unlink(missing_ok=True)
    shutil.copy(copy, site.ledger)
    site.ledger.chmod(0o600)
    result = done(site.sh("cdn-push"))
    assert summary(result).split(" ", 2)[2].startswith("summary: 1 new, "), summary(result)
    assert site.imports() == before and set(site.ledger_states().values()) == {"confirmed"}


def copy_state(site: Site, command: str) -> None:
    done(site.readme(command))
    copied = site.backups / "cdn-push-state"
    assert (copied / "ledger.sqlite3").is_file() and (copied / "ledger.sqlite3.secret").is_file(), \
        sorted(p.name for p in copied.iterdir())
    assert stat.S_IMODE((copied / "ledger.sqlite3").stat().st_mode) == 0o600
    # Losing the ledger costs time, not imports: everything is hashed and sent again, and the CDN
    # answers that it holds each file.
    before = site.imports()
    assert set(before) == set(site.files)
    shutil.rmtree(site.state)
    result = done(site.sh("cdn-push"))
    assert summary(result).split(" ", 2)[2].startswith(f"summary: {len(before)} new, "), summary(result)
    assert site.imports() == before and set(site.ledger_states().values()) == {"confirmed"}


STEPS: dict[str, Callable[[Site, str], None]] = {
    ".venv/bin/cdn-push demo": demo,
    "cp config.example.yaml config.yaml": copy_example,
    "(umask 077 && read -rsp 'API password: ' pw && echo && printf '%s\\n' \"$pw\" > api-password)": password_file,
    "cdn-push run --dry-run": dry_run,
    "cdn-push": first_run,
    "cdn-push status": status,
    "*/5 * * * * /usr/local/bin/cdn-push run -q --config /etc/cdn-push/config.yaml >> /var/log/cdn-push.log 2>&1":
        cron,
    "cdn-push status --state failed": status_failed,
    "cdn-push check": check,
    "cdn-push check --sample 200": check_sample,
    "cdn-push check --fix": check_fix,
    "cdn-push run": run_after_fix,
    "cdn-push resend 'trailers/**'": resend,
    "cdn-push forget 'old-site/**'": forget,
    "sudo sqlite3 /var/lib/cdn-push/ledger.sqlite3 \".backup /root/cdn-push-ledger.sqlite3\"": sqlite_backup,
    "sudo cp -a /var/lib/cdn-push /root/cdn-push-state": copy_state,
}


# -- the tests -------------------------------------------------------------------------------------

def test_every_readme_command_is_run_here_or_covered_elsewhere() -> None:
    commands = readme_commands()
    missing = [f"README.md line {number}: {command}" for number, _, command in commands
               if command not in STEPS and command not in RUN_BY and command not in COVERED]
    assert not missing, ("README commands that no test runs: run them in tests/test_readme.py (STEPS) or name "
                         "the test that does in COVERED:\n" + "\n".join(missing))
    shown = {command for _, _, command in commands}
    stale = sorted((set(STEPS) | set(RUN_BY) | set(COVERED)) - shown)
    assert not stale, f"tests/test_readme.py lists commands the README no longer shows: {stale}"


def test_a_command_nobody_runs_is_caught() -> None:
    """The check above, on a README with a made-up command in it."""
    text = README.read_text(encoding="utf-8").replace("cdn-push status --state failed",
                                                      "cdn-push status --state failed\ncdn-push frobnicate --all", 1)
    commands = {command for _, _, command in readme_commands(text)}
    assert "cdn-push frobnicate --all" in commands
    assert not ({"cdn-push frobnicate --all"} & (set(STEPS) | set(RUN_BY) | set(COVERED)))


def test_the_tests_named_in_covered_exist() -> None:
    """`tests/FILE.py::test_a ... ::test_b` name tests of FILE; a bare test_c is one of this file."""
    for where in {*COVERED.values(), *RUN_BY.values()}:
        path = None
        for file, colons, name in re.findall(r"(tests/\w+\.py)?(::)?\b(test_\w+)", where):
            path = file or (path if colons else None)
            source = (ROOT / path) if path else Path(__file__)
            assert re.search(rf"^def {name}\(", source.read_text(), re.M), f"{source.name}::{name} ({where})"


def test_the_test_command_is_what_ci_runs() -> None:
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.lstrip().startswith("#")]
    shown = [without_comment(line) for language, _, lines in blocks(README.read_text()) if language == "sh"
             for line in lines if "pytest" in line]
    assert shown == [ci[-1]] == ["./install.sh --dev && .venv/bin/python -m pytest"], (shown, ci[-1])


def test_the_cron_line_is_the_one_cdn_push_help_run_shows() -> None:
    [line] = [command for _, language, command in readme_commands() if language == "cron"]
    shown = subprocess.run([sys.executable, str(ROOT / "cdn_push.py"), "help", "run"], capture_output=True,
                           text=True, timeout=60)
    assert shown.returncode == 0 and f"  {line}\n" in shown.stdout, shown.stdout


def test_the_logrotate_snippet_rotates_the_cron_log(tmp_path: Path) -> None:
    [(_, _, snippet)] = [block for block in blocks(README.read_text()) if block[0] == "logrotate"]
    [line] = [command for _, language, command in readme_commands() if language == "cron"]
    log = re.search(r">> (\S+)", line)[1]
    assert snippet[0] == f"{log} {{" and snippet[-1] == "}", snippet
    if shutil.which("logrotate") is None:
        pytest.skip("logrotate is not installed; the snippet's path was checked")
    (tmp_path / "cdn-push.log").write_text("2026-01-01 00:00:00 ERROR something\n")
    config = tmp_path / "cdn-push"
    config.write_text("\n".join(snippet).replace(log, str(tmp_path / "cdn-push.log")) + "\n")
    config.chmod(0o644)
    rotated = subprocess.run(["logrotate", "--force", "--state", str(tmp_path / "state"), str(config)],
                             capture_output=True, text=True, timeout=60)
    assert rotated.returncode == 0, rotated.stderr
    assert (tmp_path / "cdn-push.log.1").is_file() and not (tmp_path / "cdn-push.log").exists()


def test_the_text_blocks_are_what_cdn_push_prints() -> None:
    for language, start, lines in blocks(README.read_text()):
        if language == "text":
            for line in lines:
                assert SUMMARY.match(line), f"README.md line {start}: {line!r} is not a summary line"


def test_the_readme_in_order(tmp_path: Path) -> None:
    """Each command the README shows, run as written in README order, and what it says it does."""
    emulator = CdnEmulator(login=API_LOGIN, password=API_PASSWORD).start()
    try:
        site = Site(tmp_path, emulator)
        ran = []
        for number, _, command, chained in chained_commands():
            if command in STEPS:
                site.exit_codes.clear()
                try:
                    STEPS[command](site, command)
                except AssertionError as exc:
                    raise AssertionError(f"README.md line {number}: {command}\n{exc}") from None
                assert site.exit_codes, f"README.md line {number}: its step did not run {command!r}"
                # `a && b`: b runs only when a exits 0.
                assert not chained or site.exit_codes[0] == 0, (
                    f"README.md line {number}: {command!r} exits {site.exit_codes[0]}, so the command after its "
                    "'&&' would not run")
                ran.append(command)
        assert sorted(ran) == sorted(STEPS), f"run twice or not at all: {set(ran) ^ set(STEPS)}"
    finally:
        emulator.stop()


# -- uninstall, in a mount namespace so that nothing of this machine changes -------------------------

NAMESPACE = r"""
set -eu
for pair in /etc:etc /var/lib:varlib /usr/local/bin:bin; do
    target=${pair%%:*} name=${pair##*:}
    mkdir -p "$LAYERS/$name/upper" "$LAYERS/$name/work"
    mount -t overlay overlay -o "lowerdir=$target,upperdir=$LAYERS/$name/upper,workdir=$LAYERS/$name/work" \
        "$target" || exit 77
done
if [ -d /run/systemd ]; then mount -t tmpfs tmpfs /run/systemd || exit 77; fi    # no systemctl here
mkdir -p /etc/cdn-push /var/lib/cdn-push
echo "folder: /srv/x" > /etc/cdn-push/config.yaml
echo ledger > /var/lib/cdn-push/ledger.sqlite3
ln -sfn "$CLONE/.venv/bin/cdn-push" /usr/local/bin/cdn-push
cd "$CLONE"
if [ "$SERVICE" = 1 ]; then
    mkdir -p /etc/systemd/system
    ./install.sh --print-unit > /etc/systemd/system/cdn-push.service
fi
set +e
bash -c "$COMMAND"
echo "exit $?"
for path in /etc/cdn-push /var/lib/cdn-push /usr/local/bin/cdn-push "$CLONE/.venv"; do
    if [ -e "$path" ] || [ -L "$path" ]; then echo "there $path"; else echo "gone $path"; fi
done
"""
@pytest.mark.parametrize("purge", [False, True], ids=["uninstall", "purge"])
@pytest.mark.parametrize("service", [True, False],
                         ids=["with-the-service", "command-only"])
def test_uninstall_and_purge_as_the_readme_says(tmp_path: Path, service: bool, purge: bool) -> None:
    """install.sh --uninstall removes the link and keeps the configuration, the ledgers and .venv;
    with --purge it removes those too. Run as root in a mount namespace whose /etc, /var/lib and
    /usr/local/bin are overlays, so that this machine keeps its own."""
    commands = [command for _, _, command in readme_commands() if command in RUN_BY]
    assert commands == ["sudo ./install.sh --uninstall", "sudo ./install.sh --uninstall --purge"], commands
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare (a mount namespace keeps /etc and /var/lib as they are)")
    clone = tmp_path / "clone"
    (clone / ".venv" / "bin").mkdir(parents=True)
    for name in ("install.sh", "cdn-push.service", "cdn-push@.service"):
        shutil.copy(ROOT / name, clone)
    (clone / ".venv" / "bin" / "cdn-push").write_text("#!/bin/sh\n")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "LAYERS": str(tmp_path / "layers"),
           "CLONE": str(clone), "COMMAND": commands[purge].removeprefix("sudo "), "SERVICE": str(int(service))}

    def machine() -> list[tuple[str, bool]]:
        paths = ("/etc/cdn-push", "/var/lib/cdn-push", "/usr/local/bin/cdn-push", "/etc/systemd/system/cdn-push.service")
        return [(path, os.path.lexists(path)) for path in paths]
    untouched = machine()
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c", NAMESPACE], env=env,
                            capture_output=True, text=True, timeout=120)
    assert machine() == untouched
    if result.returncode == 77:
        pytest.skip(f"overlay or tmpfs mounts are not allowed here: {result.stderr.strip()}")
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "exit 0\n" in result.stdout, output
    left = [line for line in result.stdout.splitlines() if line.startswith(("there ", "gone "))]
    kept = "gone" if purge else "there"
    assert left == [f"{kept} /etc/cdn-push", f"{kept} /var/lib/cdn-push", "gone /usr/local/bin/cdn-push",
                    f"{kept} {clone}/.venv"], output
    if purge:
        assert f"this folder, {clone}, is yours to delete" in output, output
    else:
        assert "kept /etc/cdn-push (the configuration)" in output and "kept /var/lib/cdn-push" in output, output


def anchor(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_the_links_of_the_readme_and_docs_lead_somewhere() -> None:
    """Sections moved between the README and docs/ keep their links working."""
    pages = [README, *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue                                    # http(s), mailto: not checked here
            path, _, fragment = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif fragment and file.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", file.read_text(encoding="utf-8"),
                                                             flags=re.S), re.M)
                if fragment not in {anchor(h) for h in headings}:
                    broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)
