"""The watch service under a real systemd (issue 12).

A minimal Debian bookworm tree (debootstrap, cached in /var/cache/cdn-push-tests) boots with
systemd as PID 1 under systemd-nspawn, with a private network. This clone and a wheelhouse of
requirements.txt (and setuptools) go in; ``install.sh --systemd`` installs the service from the
wheelhouse; the CDN emulator runs inside on 127.0.0.1; everything is checked through systemctl
and journalctl. The last tests run two instances of the template unit beside the plain one
(issue 21), upgrade the installed copy and uninstall it all.

The tests share one container and run in file order, each leaving the service usable for the
next. Skipped, with the reason, when not root or when systemd-nspawn/debootstrap are missing or
the tree cannot be built. ``-m "not system"`` leaves them out.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import sys
import time
import tomllib
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent / "systemd"))
import systemd_container as sc  # noqa: E402
from conftest import wait_for  # noqa: E402

pytestmark = pytest.mark.system

APP = "/opt/cdn-push"
WHEELS = "/opt/wheels"
PY = f"{APP}/.venv/bin/python"
INSIDE = f"/usr/bin/python3 {APP}/tests/systemd/inside.py"
CONFIG = "/etc/cdn-push/config.yaml"
ENV_FILE = "/etc/cdn-push/env"
UNIT = "cdn-push"
UNIT_FILE = "/etc/systemd/system/cdn-push.service"
DROP = "/srv/drop"
EMULATOR_PORT = 9000
ORIGIN_PORT = 8800
LOGIN, PASSWORD = "tester", "api-Pa55-w0rd-zebra"
ACTIVE_WITHIN = 8.0          # seconds `systemctl start` may take, first pass or not

T = TypeVar("T")


def config(**changes: Any) -> str:
    data: dict[str, Any] = {
        "folder": DROP,
        "ledger": "/var/lib/cdn-push/ledger.sqlite3",
        "workers": {"hash": 2, "submit": 2},
        "api": {"url": f"http://127.0.0.1:{EMULATOR_PORT}/api2", "login": LOGIN, "timeout": 10,
                "retry": {"attempts": 3, "max_seconds": 20, "backoff_base": 0.2, "backoff_max": 1}},
        "origin": {"serve": {"listen": f"127.0.0.1:{ORIGIN_PORT}",
                             "public_url": f"http://127.0.0.1:{ORIGIN_PORT}"}},
        "callback": {"wait_seconds": 60, "retry_delay": 1},
        "scan": {"settle_seconds": 2},
    }
    data.update(changes)
    return yaml.safe_dump(data, sort_keys=False)


class Box:
    """The booted container with the service installed, and what the tests ask of it."""

    def __init__(self, container: sc.Container) -> None:
        self.c = container
        self.install_output = ""
        self.emulator_unit = ""            # the transient unit of the emulator running now, if any
        self._emulator_starts = itertools.count(1)

    def run(self, command: Any, **kwargs: Any):
        return self.c.run(command, **kwargs)

    def systemctl(self, *args: str, timeout: float = 150.0):
        return self.c.run(["systemctl", *args], timeout=timeout)

    def show(self, *props: str, unit: str = UNIT) -> dict[str, str]:
        out = self.c.run(["systemctl", "show", unit, *[f"--property={p}" for p in props]]).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, since: float, unit: str = UNIT) -> str:
        return self.c.run(["journalctl", "--no-pager", "-u", unit, "--since", f"@{since:.0f}",
                           "-o", "short-precise"]).stdout

    def explain(self, since: float, units: tuple[str, ...] = (UNIT,)) -> str:
        text = ""
        for unit in units:
            props = self.show("ActiveState", "SubState", "Result", "MainPID", "NRestarts", "ExecMainStatus",
                              unit=unit)
            text += f"\n{unit}: {props}\njournal:\n" + "\n".join(self.journal(since, unit).splitlines()[-25:])
        return text

    def wait_for(self, what: str, probe: Callable[[], T], timeout: float, since: float,
                 interval: float = 0.2, units: tuple[str, ...] = (UNIT,)) -> T:
        """conftest's wait_for, with the units' state and journal since `since` when it times out."""
        try:
            return wait_for(probe, timeout=timeout, interval=interval, message=what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}{self.explain(since, units)}") from None

    def ledger(self, config: str = CONFIG) -> dict[str, str]:
        """CDN name -> state, as `status --json` run by the service user shows it."""
        result = self.c.run(["runuser", "-u", "cdn-push", "--", PY, f"{APP}/cdn_push.py", "status", "--json",
                             "--config", config])
        assert result.returncode == 0, f"status --json exited {result.returncode}: {result.stderr}"
        return {f["name"]: f["state"] for f in json.loads(result.stdout)["files"]}

    def emulator(self, answer_delay: float = 0.0) -> None:
        """(Re)start the CDN emulator inside, answering each API call after `answer_delay` s.

        Each start is a transient unit of its own name: reusing one name right after `systemctl
        stop` fails with "Unit ... was already loaded" while systemd still holds the old one."""
        if self.emulator_unit:
            stopped = self.systemctl("stop", self.emulator_unit)
            assert stopped.returncode == 0, f"systemctl stop {self.emulator_unit}: {stopped.stderr}"
        unit = f"cdn-emulator-{next(self._emulator_starts)}-{uuid.uuid4().hex[:8]}"
        self.c.run(["systemd-run", "--quiet", "--collect", f"--unit={unit}", PY, "-u",
                    f"{APP}/cdn_emulator.py", "--port", str(EMULATOR_PORT), "--login", LOGIN,
                    "--password", PASSWORD, "--answer-delay", str(answer_delay)], check=True)
        self.emulator_unit = unit
        # A fresh emulator holds no file: an answer with files would come from the one before.
        assert self.emulator_state(wait=20) == [], f"port {EMULATOR_PORT} answered, but not by {unit}"
        state = self.c.run(["systemctl", "is-active", unit]).stdout.strip()
        assert state == "active", f"{unit} is {state}: {self.c.run(['journalctl', '--no-pager', '-u', unit]).stdout}"

    def emulator_state(self, wait: float = 0.0) -> list[dict[str, Any]]:
        result = self.c.run(f"{INSIDE} get http://127.0.0.1:{EMULATOR_PORT}/_emulator/state --wait {wait}")
        assert result.returncode == 0, f"the emulator does not answer: {result.stderr}"
        return json.loads(result.stdout)

    def files(self, folder: str, count: int, size: int = 4096, *, age: float = 0.0, prefix: str = "clip-") -> None:
        self.c.run(f"umask 022 && {INSIDE} files {folder} {count} {size} --age {age} --prefix {prefix}",
                   check=True)

    def set_config(self, text: str) -> None:
        self.c.write(CONFIG, text, mode="0640", owner="root:cdn-push")

    def set_password(self, password: str) -> None:
        self.c.write(ENV_FILE, f"CDN_PUSH_API_PASSWORD={password}\n", mode="0600")

    def active(self, unit: str = UNIT) -> dict[str, str] | None:
        props = self.show("ActiveState", "SubState", "MainPID", "NRestarts", unit=unit)
        return props if props.get("ActiveState") == "active" and props.get("MainPID", "0") != "0" else None

    def ensure_running(self) -> dict[str, str]:
        since = time.time()
        if not self.active():
            self.systemctl("reset-failed", UNIT)
            self.systemctl("start", UNIT)
        return self.wait_for("the service is active", self.active, 120, since)

    def settled(self, prefix: str = "", timeout: float = 120.0) -> dict[str, str]:
        """Wait until no file (under `prefix`) is pending or submitted; the ledger then."""
        def done() -> dict[str, str] | None:
            states = {n: s for n, s in self.ledger().items() if n.startswith(prefix)}
            return states if not any(s in ("pending", "submitted") for s in states.values()) else None
        return self.wait_for(f"every file under {prefix or '/'} confirmed or failed", done, timeout, time.time(),
                             interval=0.5)


@pytest.fixture(scope="module")
def box() -> Iterator[Box]:
    if os.geteuid() != 0:
        pytest.skip("system test: needs root (debootstrap, mount, systemd-nspawn)")
    missing = sc.missing_tools()
    if missing:
        pytest.skip(f"system test: {', '.join(missing)} missing (Debian: apt-get install systemd-container "
                    "debootstrap)")
    stack = contextlib.ExitStack()
    try:
        rootfs = sc.build_rootfs(log=lambda m: print(m, file=sys.stderr))
        build_backend = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
        wheels = sc.build_wheelhouse(ROOT / "requirements.txt", sc.container_python(rootfs),
                                     log=lambda m: print(m, file=sys.stderr), extra=build_backend)
        container = stack.enter_context(sc.booted(rootfs, [(ROOT, APP), (wheels, WHEELS)]))
    except sc.Unavailable as exc:
        stack.close()
        pytest.skip(f"system test: {exc}")
    with stack:
        box = Box(container)
        result = container.run([f"{APP}/install.sh", "--systemd"], timeout=300,
                               env={"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": WHEELS})
        box.install_output = result.stdout + result.stderr
        assert result.returncode == 0, f"install.sh --systemd exited {result.returncode}:\n{box.install_output}"
        container.run(["mkdir", "-p", DROP], check=True)
        box.set_config(config())
        box.set_password(PASSWORD)
        yield box


def test_install_sh_writes_the_unit_world_readable_and_is_idempotent(box: Box) -> None:
    """(h) The unit file is 0644 (the env file's umask does not leak), the env file 0600."""
    noise = [line for line in box.install_output.splitlines()
             if re.search(r"warn|error|deprecat|notice|traceback", line, re.I)]
    assert not noise, f"install.sh printed tool noise:\n{box.install_output}"
    modes = box.run(["stat", "-c", "%a %U:%G %n", UNIT_FILE, ENV_FILE, CONFIG]).stdout.split("\n")
    assert modes[0].startswith("644 root:root"), modes
    assert modes[1].startswith("600 root:root"), modes
    assert modes[2].startswith("640 root:cdn-push"), modes
    again = box.run([f"{APP}/install.sh", "--systemd"], timeout=300,
                    env={"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": WHEELS})
    assert again.returncode == 0, again.stdout + again.stderr
    assert "created system user" not in again.stdout and "wrote " not in again.stdout, again.stdout
    assert box.run(["stat", "-c", "%a", UNIT_FILE]).stdout.strip() == "644"
    assert box.run(["runuser", "-u", "cdn-push", "--", PY, "-c", "import yaml, requests"]).returncode == 0
    # systemd itself does not complain about the unit's permissions.
    assert "world-inaccessible" not in box.run(["journalctl", "--no-pager", "-b"]).stdout


def test_install_sh_rebuilds_a_venv_the_service_user_cannot_run(box: Box) -> None:
    """A venv made from a Python under /root (pyenv) is rebuilt from the system's Python."""
    private = "/root/private-python/bin"
    box.run(f"mkdir -p {private} && cp /usr/bin/python3 {private}/python3 && chmod 0700 /root", check=True)
    box.run(["rm", "-rf", f"{APP}/.venv"], check=True)
    env = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": WHEELS, "PYTHON": f"{private}/python3"}
    result = box.run([f"{APP}/install.sh", "--systemd"], timeout=300, env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "rebuilding .venv from /usr/bin/python3" in output, output
    assert box.run(["runuser", "-u", "cdn-push", "--", PY, "-c", "import yaml, requests, watchdog"]).returncode == 0
    assert box.run(["readlink", "-f", PY]).stdout.startswith("/usr/bin/"), output


def test_cdn_push_is_a_command_on_path(box: Box) -> None:
    """(issue 21) install.sh links /usr/local/bin/cdn-push: it runs from any folder, for any user."""
    import cdn_push
    expected = f"cdn-push {cdn_push.__version__}"
    assert box.run(["readlink", "/usr/local/bin/cdn-push"]).stdout.strip() == f"{APP}/.venv/bin/cdn-push"
    for command in ("cd / && cdn-push --version", "cd /tmp && runuser -u nobody -- cdn-push --version"):
        result = box.run(command)
        assert (result.returncode, result.stdout.strip()) == (0, expected), (command, result.stdout, result.stderr)


def test_sandbox_exposure_is_at_most_2(box: Box) -> None:
    """(i) systemd-analyze security rates the installed unit 2.0 or better."""
    result = box.run(["systemd-analyze", "security", "--no-pager", UNIT])
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match[1]) <= 2.0, "\n".join(result.stdout.splitlines()[-40:])


def test_active_within_seconds_although_the_first_pass_takes_longer(box: Box) -> None:
    """(a) READY comes once watching starts, not after the first pass."""
    first_pass = 60
    delay = 0.5                  # 60 files x 0.5 s per answer / 2 workers: a 15 s first pass
    box.files(f"{DROP}/first", first_pass, 2048, age=3600, prefix="a-")
    box.emulator(answer_delay=delay)
    since = time.time()
    started = time.monotonic()
    result = box.systemctl("start", UNIT)
    took = time.monotonic() - started
    assert result.returncode == 0, f"systemctl start exited {result.returncode}: {result.stderr}{box.explain(since)}"
    assert box.show("ActiveState")["ActiveState"] == "active", box.explain(since)
    imported = [f for f in box.emulator_state() if f["name"].startswith("first/")]
    assert took <= ACTIVE_WITHIN, (
        f"systemctl start took {took:.1f}s (limit {ACTIVE_WITHIN:.0f}s; the first pass needs about "
        f"{first_pass * delay / 2:.0f}s; {len(imported)} of {first_pass} files had reached the CDN by then)")
    assert len(imported) < first_pass, "the first pass was over before READY: this check proves nothing"


def test_a_file_dropped_later_ends_confirmed(box: Box) -> None:
    """(b) A file written after start is imported and confirmed by the CDN's callback."""
    box.ensure_running()
    box.files(f"{DROP}/later", 1, 100_000, prefix="b-")
    since = time.time()
    box.wait_for("later/b-0000.mp4 confirmed in the ledger",
                 lambda: box.ledger().get("later/b-0000.mp4") == "confirmed", 90, since, interval=0.5)


def test_reload_applies_a_valid_config_and_fails_for_an_invalid_one(box: Box) -> None:
    """(c) systemctl reload is synchronous: 0 when applied, non-zero for an invalid config."""
    before = box.ensure_running()
    since = time.time()
    changed = config(defaults={"fetch_prio": 7})       # visible in the next import request
    try:
        box.set_config(changed)
        valid = box.systemctl("reload", UNIT, timeout=60)
        after_valid = box.show("ActiveState", "MainPID")
        # Applied: a file dropped after the reload returned goes out with the new setting.
        box.files(f"{DROP}/reload", 1, 1000, prefix="c-")
        sent: dict[str, Any] | None = None
        with contextlib.suppress(AssertionError):              # not sent: reported with the rest below
            sent = wait_for(lambda: next((f for f in box.emulator_state() if f["name"] == "reload/c-0000.mp4"),
                                         None), timeout=30, interval=0.2)
        box.set_config(config(defaults={"fetch_prio": 7}, no_such_key=1))
        invalid = box.systemctl("reload", UNIT, timeout=60)
        after_invalid = box.show("ActiveState", "MainPID")
    finally:
        box.set_config(config())
        box.systemctl("reload", UNIT, timeout=60)
    problems = []
    if valid.returncode != 0:
        problems.append(f"reload of a valid config exited {valid.returncode}: {valid.stderr.strip()}")
    if sent is None:
        problems.append("a file dropped after the valid reload did not reach the CDN within 30s")
    elif sent["params"].get("fetch_prio") != "7":
        problems.append(f"a file dropped after the valid reload went out without the new defaults.fetch_prio: "
                        f"{sent['params']}")
    if invalid.returncode == 0:
        problems.append("reload of an invalid config (unknown key) exited 0")
    for label, props in (("valid", after_valid), ("invalid", after_invalid)):
        if props != {"ActiveState": "active", "MainPID": before["MainPID"]}:
            problems.append(f"after the {label} reload: {props}, was MainPID={before['MainPID']}")
    assert not problems, "\n".join(problems) + box.explain(since)


def test_stop_during_a_batch_is_clean_and_loses_no_confirmation(box: Box) -> None:
    """(d) systemctl stop mid-batch exits 0; every callback answered 200 is in the ledger."""
    box.ensure_running()
    box.settled()
    box.emulator(answer_delay=0.05)
    batch = 300
    since = time.time()
    box.files(f"{DROP}/batch", batch, 32 * 1024, prefix="d-")

    def answered() -> int:
        return sum(1 for f in box.emulator_state()
                   if f["name"].startswith("batch/") and f.get("callback_result") == "200")
    box.wait_for("the CDN has called back for part of the batch", lambda: answered() >= 30, 90, since,
                 interval=0.1)
    result = box.systemctl("stop", UNIT)
    props = box.show("ActiveState", "Result", "ExecMainStatus")
    cdn = box.emulator_state()
    ledger = box.ledger()
    told = sorted(f["name"] for f in cdn if f["name"].startswith("batch/") and f.get("callback_result") == "200")
    confirmed = {n for n, s in ledger.items() if n.startswith("batch/") and s == "confirmed"}
    lost = [n for n in told if n not in confirmed]
    assert result.returncode == 0, f"systemctl stop exited {result.returncode}{box.explain(since)}"
    assert props == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}, \
        f"not a clean stop: {props}{box.explain(since)}"
    assert len(confirmed) < batch, "the batch was over before the stop: this check proves nothing"
    assert not lost, (f"{len(lost)} of {len(told)} callbacks the CDN was answered 200 for are not confirmed in "
                      f"the ledger: {lost[:5]} (states: {[ledger.get(n) for n in lost[:5]]})")


def test_kill_9_gets_the_service_restarted(box: Box) -> None:
    """(e) Restart=on-failure brings the service back after SIGKILL."""
    before = box.ensure_running()
    since = time.time()
    box.run(["kill", "-9", before["MainPID"]], check=True)

    def restarted() -> dict[str, str] | None:
        now = box.active()
        return now if now and now["MainPID"] != before["MainPID"] and \
            int(now["NRestarts"]) > int(before["NRestarts"]) else None
    box.wait_for("the service is restarted after kill -9", restarted, 60, since)


def test_the_watchdog_fires_when_the_service_hangs(box: Box) -> None:
    """(f) With WatchdogSec=3, a SIGSTOPped service is killed by the watchdog and restarted."""
    dropin = f"{UNIT_FILE}.d/50-test-watchdog.conf"
    box.c.write(dropin, "[Service]\nWatchdogSec=3\n")
    try:
        box.systemctl("daemon-reload")
        box.systemctl("restart", UNIT)
        before = box.ensure_running()
        since = time.time()
        # A working service keeps pinging: still the same process after two intervals.
        _alive_for(box, before, 6.5)
        box.run(["kill", "-STOP", before["MainPID"]], check=True)
        box.wait_for("systemd reports a watchdog timeout",
                     lambda: "Watchdog timeout" in box.journal(since), 20, since)

        def restarted() -> dict[str, str] | None:
            now = box.active()
            return now if now and now["MainPID"] != before["MainPID"] else None
        box.wait_for("the service is restarted after the watchdog fired", restarted, 60, since)
    finally:
        box.run(["rm", "-f", dropin])
        box.systemctl("daemon-reload")
        box.systemctl("restart", UNIT)


def _alive_for(box: Box, before: dict[str, str], seconds: float) -> None:
    """Fails unless the same main process stays active for `seconds` (checked throughout)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        now = box.active()
        if not now or now["MainPID"] != before["MainPID"]:
            raise AssertionError(f"the service did not survive its own watchdog: {box.show('Result', 'MainPID')}")
        time.sleep(0.5)


def test_refused_credentials_leave_the_unit_failed_without_restarts(box: Box) -> None:
    """(g) Exit 4 (credentials refused) is not restarted: RestartPreventExitStatus."""
    _permanent_error(box, lambda: box.set_password("wrong-password"), expect_status="4")


def test_a_config_error_leaves_the_unit_failed_without_restarts(box: Box) -> None:
    """(g) Exit 2 (configuration error) is not restarted either."""
    _permanent_error(box, lambda: box.set_config(config(no_such_key=1)), expect_status="2")


def _permanent_error(box: Box, break_it: Callable[[], None], expect_status: str) -> None:
    box.systemctl("stop", UNIT)
    box.systemctl("reset-failed", UNIT)
    box.emulator()
    since = time.time()
    try:
        break_it()
        box.files(f"{DROP}/refused-{expect_status}", 1, 1000, prefix="g-")   # something to submit
        box.systemctl("start", UNIT)

        def ended() -> dict[str, str] | None:
            props = box.show("ActiveState", "SubState", "ExecMainStatus", "NRestarts", "Result")
            gave_up = props["ActiveState"] == "failed"
            will_restart = props["SubState"] == "auto-restart"
            return props if gave_up or will_restart else None
        props = box.wait_for(f"the service exits {expect_status}", ended, 60, since)
        assert props["ExecMainStatus"] == expect_status, f"exit status {props}{box.explain(since)}"
        assert props["ActiveState"] == "failed" and props["NRestarts"] == "0", \
            f"restarts after exit {expect_status}: {props}{box.explain(since)}"
    finally:
        box.set_password(PASSWORD)
        box.set_config(config())
        box.systemctl("reset-failed", UNIT)


# -- several drop folders, upgrade, uninstall (issue 21) ---------------------------------------------
# Two instances of cdn-push@.service run beside the plain unit, each with its folder, config,
# password file, ledger and status page, against the one emulator (names apart by name_prefix).

INSTANCES = ("site-a", "site-b")
INSTANCE_ORIGIN_PORTS = {"site-a": 8801, "site-b": 8802}


def _instance_units() -> tuple[str, ...]:
    return tuple(f"cdn-push@{name}.service" for name in INSTANCES)


def _instance_config(box: Box, name: str) -> dict[str, Any]:
    return yaml.safe_load(box.run(["cat", f"/etc/cdn-push/{name}.yaml"], check=True).stdout)


def _instance_ledger(box: Box, name: str) -> dict[str, str]:
    return box.ledger(f"/etc/cdn-push/{name}.yaml")


def _all_confirmed(box: Box, name: str, count: int) -> dict[str, str] | None:
    states = _instance_ledger(box, name)
    return states if len(states) >= count and set(states.values()) == {"confirmed"} else None


def test_two_template_instances_run_side_by_side(box: Box) -> None:
    """install.sh --systemd NAME twice: two folders, configs, ledgers and status pages, both import."""
    env = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": WHEELS}
    for name in INSTANCES:
        result = box.run([f"{APP}/install.sh", "--systemd", name], timeout=300, env=env)
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        assert not re.search(r"warn|error|deprecat|notice|traceback", output, re.I), output
        assert f"wrote /etc/cdn-push/{name}.yaml" in result.stdout, result.stdout
        assert f"systemctl enable --now cdn-push@{name}" in result.stdout, result.stdout
    starters = {name: _instance_config(box, name) for name in INSTANCES}
    ports = {name: starters[name]["monitor"]["listen"] for name in INSTANCES}
    for name, starter in starters.items():
        assert starter["ledger"] == f"/var/lib/cdn-push/{name}/ledger.sqlite3", starter["ledger"]
    assert len(set(ports.values()) | {"127.0.0.1:8765"}) == 3, f"status pages not apart: {ports}"
    modes = box.run(["stat", "-c", "%a %U:%G %n", "/etc/systemd/system/cdn-push@.service",
                     *[f"/etc/cdn-push/{n}.{ext}" for n in INSTANCES for ext in ("yaml", "env")]]).stdout.split("\n")
    assert modes[0].startswith("644 root:root"), modes
    assert [m.split()[0:2] for m in modes[1:5]] == [["640", "root:cdn-push"], ["600", "root:root"]] * 2, modes

    # The starter configs with the test's folder, CDN and origin: ledger and monitor as written.
    box.ensure_running()                                   # the plain unit runs alongside
    if not box.emulator_unit:
        box.emulator()
    for name in INSTANCES:
        data = yaml.safe_load(config(name_prefix=f"{name}/", folder=f"/srv/drop-{name}",
                                     origin={"serve": {"listen": f"127.0.0.1:{INSTANCE_ORIGIN_PORTS[name]}",
                                                       "public_url": f"http://127.0.0.1:{INSTANCE_ORIGIN_PORTS[name]}"}}))
        data.update(ledger=starters[name]["ledger"], monitor=starters[name]["monitor"])
        box.run(["mkdir", "-p", f"/srv/drop-{name}"], check=True)
        box.c.write(f"/etc/cdn-push/{name}.yaml", yaml.safe_dump(data, sort_keys=False), mode="0640",
                    owner="root:cdn-push")
        box.c.write(f"/etc/cdn-push/{name}.env", f"CDN_PUSH_API_PASSWORD={PASSWORD}\n", mode="0600")
        box.files(f"/srv/drop-{name}", 3, 4096, age=3600, prefix=f"{name}-")
    since = time.time()
    units = _instance_units()
    started = box.systemctl("enable", "--now", *units)
    assert started.returncode == 0, started.stderr + box.explain(since, units)
    for name in INSTANCES:
        box.wait_for(f"{name}: its 3 files confirmed in its own ledger", lambda: _all_confirmed(box, name, 3),
                     90, since, interval=0.5, units=units)
    held = sorted(f["name"] for f in box.emulator_state() if f["name"].startswith(INSTANCES))
    assert held == sorted(f"{n}/{n}-{i:04d}.mp4" for n in INSTANCES for i in range(3)), held
    for name in INSTANCES:
        assert box.run(["test", "-s", f"/var/lib/cdn-push/{name}/ledger.sqlite3"]).returncode == 0
        def page(name: str = name) -> dict[str, Any] | None:         # refreshed once a second
            answer = box.run(f"{INSIDE} get http://{ports[name]}/status.json")
            assert answer.returncode == 0, f"{name}'s status page on {ports[name]}: {answer.stderr}"
            document = json.loads(answer.stdout)
            return document if document["counts"]["confirmed"] == 3 else None
        document = box.wait_for(f"{name}'s status page shows its 3 files", page, 10, since, units=units)
        assert document["folder"] == f"/srv/drop-{name}", document["folder"]
    assert box.active(), f"the plain unit stopped: {box.explain(since)}"
    security = box.run(["systemd-analyze", "security", "--no-pager", units[0]]).stdout
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", security)
    assert match and float(match[1]) <= 2.0, "\n".join(security.splitlines()[-40:])


def test_upgrade_by_running_install_sh_again_keeps_the_ledgers(box: Box) -> None:
    """git pull && ./install.sh, then systemctl restart: the new version runs, nothing is sent again."""
    units = _instance_units()
    if not all(box.active(unit) for unit in units):
        pytest.skip("needs the instances of test_two_template_instances_run_side_by_side")
    before = {name: _instance_ledger(box, name) for name in INSTANCES}
    pids = {unit: box.active(unit)["MainPID"] for unit in (*units, UNIT)}
    # What a git pull brings: a new version, and a changed template unit.
    source = box.run(["cat", f"{APP}/cdn_push.py"], check=True).stdout
    upgraded, count = re.subn(r'^__version__ = "(.*)"$', r'__version__ = "\1+upgraded"', source, count=1, flags=re.M)
    assert count == 1, "no __version__ line in cdn_push.py"
    box.c.write(f"{APP}/cdn_push.py", upgraded)
    box.run(f"echo '# changed by an upgrade' >> {APP}/cdn-push@.service", check=True)
    result = box.run(f"cd {APP} && ./install.sh", timeout=300,
                     env={"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": WHEELS})
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "updated /etc/systemd/system/cdn-push@.service" in output, output
    assert "updated /etc/systemd/system/cdn-push.service" not in output, output    # unchanged
    hint = re.search(r"next: systemctl restart (.*) \(to run the new version\)", output)
    assert hint and set(hint[1].split()) == {"cdn-push.service", *units}, output
    assert not re.search(r"warn|error|deprecat|traceback", output, re.I), output
    assert box.run("cd / && cdn-push --version").stdout.strip().endswith("+upgraded")
    assert box.run(["tail", "-n", "1", "/etc/systemd/system/cdn-push@.service"]).stdout == "# changed by an upgrade\n"

    since = time.time()
    restarted = box.systemctl("restart", *units, UNIT)
    assert restarted.returncode == 0, restarted.stderr + box.explain(since, units)
    for unit in (*units, UNIT):
        box.wait_for(f"{unit} runs again, in a new process",
                     lambda: (box.active(unit) or {}).get("MainPID") not in (None, pids[unit]), 60, since,
                     units=(unit,))
    for name in INSTANCES:
        port = _instance_config(box, name)["monitor"]["listen"]
        page = box.run(f"{INSIDE} get http://{port}/status.json --wait 20")
        assert json.loads(page.stdout)["version"].endswith("+upgraded"), page.stdout[:300]
        assert _instance_ledger(box, name) == before[name], f"{name}: the ledger changed across the upgrade"
    # The README's way to run a command on a service's ledger (its user, its environment): the
    # service holds the ledger, so this run stops at once with exit 3.
    by_hand = box.run("sh -c 'set -a; . /etc/cdn-push/site-a.env; exec runuser -u cdn-push -- cdn-push run "
                      "-c /etc/cdn-push/site-a.yaml'")
    assert by_hand.returncode == 3 and "another cdn-push" in by_hand.stderr, by_hand
    # Still working after the restart, and nothing imported before was sent again.
    box.files("/srv/drop-site-a", 1, 2048, prefix="after-upgrade-")
    box.wait_for("a file dropped after the upgrade is confirmed",
                 lambda: _instance_ledger(box, "site-a").get("site-a/after-upgrade-0000.mp4") == "confirmed",
                 90, since, interval=0.5, units=units)
    imports = {f["name"]: f["imports"] for f in box.emulator_state() if f["name"].startswith(INSTANCES)}
    assert set(imports.values()) == {1}, f"sent again after the upgrade: {imports}"


def test_uninstall_leaves_no_unit_user_or_command(box: Box) -> None:
    """install.sh --uninstall: no unit, user or command left; configs and ledgers kept, and said so."""
    result = box.run([f"{APP}/install.sh", "--uninstall"], timeout=180)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "kept /etc/cdn-push" in output and "kept /var/lib/cdn-push" in output, output
    left = {
        "units": box.run("systemctl list-units --all --plain --no-legend 'cdn-push*'").stdout.strip(),
        "unit files": box.run("systemctl list-unit-files --plain --no-legend 'cdn-push*'").stdout.strip(),
        "files": box.run("ls -d /etc/systemd/system/cdn-push* /etc/systemd/system/*.wants/cdn-push* "
                         "/usr/local/bin/cdn-push 2>/dev/null").stdout.strip(),
        "user": box.run(["getent", "passwd", "cdn-push"]).stdout.strip(),
        "group": box.run(["getent", "group", "cdn-push"]).stdout.strip(),
        "command": box.run("command -v cdn-push").stdout.strip(),
        "processes": box.run(["pgrep", "-af", "cdn-push watch"]).stdout.strip(),
    }
    assert not any(left.values()), f"left behind: { {k: v for k, v in left.items() if v} }\n{output}"
    kept = box.run(["ls", "/etc/cdn-push", *[f"/var/lib/cdn-push/{n}" for n in INSTANCES]]).stdout.split()
    for name in INSTANCES:
        assert f"{name}.yaml" in kept and f"{name}.env" in kept, kept
    assert kept.count("ledger.sqlite3") == 2, kept
    assert box.run(["test", "-x", PY]).returncode == 0, ".venv removed without --purge"
