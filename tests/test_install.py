"""install.sh's options and the project metadata (pyproject.toml); fast, nothing is installed.

What install.sh installs is tried for real by tests/test_systemd.py (the plain and template
units, the cdn-push command, upgrade and uninstall in a booted container).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

import cdn_push

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def install_sh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(ROOT / "install.sh"), *args], capture_output=True, text=True, timeout=30)


def test_help_exits_0_with_the_usage_on_stdout() -> None:
    for option in ("--help", "-h"):
        done = install_sh(option)
        assert (done.returncode, done.stderr) == (0, ""), done
        assert done.stdout.startswith("usage: ./install.sh"), done.stdout
        for word in ("--dev", "--systemd NAME", "--uninstall", "--purge", "--print-unit"):
            assert word in done.stdout, word


@pytest.mark.parametrize("args, complaint", [
    (["--bogus"], "unknown option '--bogus'"),
    (["--dev", "--systemd", "web", "extra"], "unknown option 'extra'"),
    (["--purge"], "--purge goes with --uninstall"),
    (["--uninstall", "--systemd"], "--uninstall takes no other option"),
    (["--print-unit", "--dev"], "--print-unit takes no other option"),
    (["--systemd", "a.b"], "NAME must be"),
    (["--systemd", "config"], "NAME must be"),          # /etc/cdn-push/config.yaml is the plain unit's
])
def test_a_wrong_option_exits_2_with_the_usage_on_stderr(args: list[str], complaint: str) -> None:
    done = install_sh(*args)
    assert (done.returncode, done.stdout) == (2, ""), done
    assert done.stderr.startswith(f"install.sh: {complaint}"), done.stderr
    assert "usage: ./install.sh" in done.stderr


def test_the_template_unit_is_the_plain_one_per_instance() -> None:
    """cdn-push@.service: its own config, password file and ledger folder; the same sandbox."""
    plain = install_sh("--print-unit").stdout
    template = install_sh("--print-unit", "web").stdout
    for line in (f"ExecStart={ROOT}/.venv/bin/cdn-push watch --config /etc/cdn-push/%i.yaml",
                 f"ExecReload={ROOT}/.venv/bin/cdn-push reload --config /etc/cdn-push/%i.yaml "
                 "--pid $MAINPID",
                 "EnvironmentFile=-/etc/cdn-push/%i.env", "StateDirectory=cdn-push/%i",
                 "ReadWritePaths=/var/lib/cdn-push/%i"):
        assert line in template.splitlines(), line
    assert not re.search(r"@[A-Z_]+@", template)

    def settings(unit: str) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for line in unit.splitlines():
            if line and not line.startswith(("#", "[")):
                key, _, value = line.partition("=")
                found.setdefault(key, []).append(value)
        return found
    per_instance = {"Description", "ExecStart", "ExecReload", "EnvironmentFile", "StateDirectory", "ReadWritePaths"}
    mine, theirs = settings(template), settings(plain)
    assert {k: v for k, v in mine.items() if k not in per_instance} == \
        {k: v for k, v in theirs.items() if k not in per_instance}


def test_the_template_unit_verifies(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    (tmp_path / "cdn-push@.service").write_text(install_sh("--print-unit", "web").stdout)
    (tmp_path / "cdn-push@web.service").symlink_to("cdn-push@.service")
    done = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "cdn-push@web.service")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_pyproject_names_the_console_script_and_the_modules() -> None:
    project = PYPROJECT["project"]
    assert project["name"] == "cdn-push"
    assert project["scripts"] == {"cdn-push": "cdn_push:main"}
    assert callable(cdn_push.main)
    assert PYPROJECT["tool"]["setuptools"]["py-modules"] == ["cdn_push", "cdn_emulator"]
    assert project["dynamic"] == ["version"] and "version" not in project
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "cdn_push.__version__"}
    # setuptools reads it without importing cdn_push (no third-party package at build time) only
    # from a plain literal assignment.
    source = (ROOT / "cdn_push.py").read_text(encoding="utf-8")
    assert re.findall(r'^__version__ = "([^"]+)"$', source, re.M) == [cdn_push.__version__]


def test_pyproject_dependencies_are_requirements_txt() -> None:
    lines = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    assert sorted(PYPROJECT["project"]["dependencies"]) == sorted(line for line in lines if line)


def test_install_sh_installs_the_build_backend_pyproject_names() -> None:
    text = (ROOT / "install.sh").read_text()
    assert re.findall(r'^BUILD_REQUIREMENT="([^"]+)"$', text, re.M) == PYPROJECT["build-system"]["requires"]


def test_the_wheel_holds_both_modules_and_the_cdn_push_command(tmp_path: Path) -> None:
    """What pipx install . and install.sh build (without build isolation: no network here)."""
    try:
        from importlib.metadata import version
        major, minor = (int(part) for part in version("setuptools").split(".")[:2])
    except Exception:  # noqa: BLE001 - not installed, or an odd version string
        major, minor = 0, 0
    if (major, minor) < (70, 1):
        pytest.skip("setuptools>=70.1 is not in this venv (./install.sh --dev installs it)")
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "cdn_push.py", "cdn_emulator.py"):
        shutil.copy(ROOT / name, source / name)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                           "--disable-pip-version-check", "-w", str(tmp_path / "wheels"), str(source)],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    [wheel] = (tmp_path / "wheels").glob("*.whl")
    assert wheel.name == f"cdn_push-{cdn_push.__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        info = f"cdn_push-{cdn_push.__version__}.dist-info"
        assert {"cdn_push.py", "cdn_emulator.py"} <= names, names
        entry_points = archive.read(f"{info}/entry_points.txt").decode()
        metadata = archive.read(f"{info}/METADATA").decode()
    assert "[console_scripts]\ncdn-push = cdn_push:main" in entry_points, entry_points
    requires = [line.removeprefix("Requires-Dist: ") for line in metadata.splitlines()
                if line.startswith("Requires-Dist: ")]
    assert requirement_set(requires) == requirement_set(PYPROJECT["project"]["dependencies"]), requires


def requirement_set(requirements: list[str]) -> set[tuple[str, frozenset[str]]]:
    """{(name, {clauses})}: 'PyYAML<7,>=6.0.4' and 'PyYAML>=6.0.4,<7' are the same requirement."""
    found = set()
    for requirement in requirements:
        name, clauses = re.fullmatch(r"([A-Za-z0-9_.-]+)(.*)", requirement.replace(" ", "")).groups()
        found.add((name.lower(), frozenset(clauses.split(","))))
    return found


def test_the_installed_command_runs_from_any_folder(tmp_path: Path) -> None:
    """After ./install.sh (--dev too): .venv/bin/cdn-push, what /usr/local/bin/cdn-push links to."""
    command = ROOT / ".venv" / "bin" / "cdn-push"
    if not command.exists():
        pytest.skip(f"{command} is not there: ./install.sh has not run in this clone since issue 21")
    done = subprocess.run([str(command), "--version"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, f"cdn-push {cdn_push.__version__}"), done
