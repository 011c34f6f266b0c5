"""A Debian bookworm container that boots a real systemd, for tests/test_systemd.py.

* ``build_rootfs()`` makes a minimal root file system with debootstrap (mirror taken from this
  machine's apt sources) and caches it under ``CACHE`` keyed by a hash of the package list.
* ``build_wheelhouse()`` downloads wheels of ``requirements.txt`` and of the build backend
  pyproject.toml names, for the container's Python, into the cache: the container runs with
  ``--private-network`` and installs with ``PIP_NO_INDEX=1 PIP_FIND_LINKS=...``.
* ``Container`` boots the cached tree through an overlay (the cache stays clean) with
  ``systemd-nspawn -b --register=no --keep-unit --private-network`` and runs commands in it
  with ``nsenter -t <its PID 1> -a``: there is no host systemd here, so no machinectl or
  ``systemd-run --machine``.

Every failure to prepare raises ``Unavailable`` with a reason the test turns into a skip.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, Sequence

from conftest import wait_for     # tests/ is on sys.path: this module is loaded by tests/test_systemd.py

CACHE = Path(os.environ.get("CDN_PUSH_TEST_CACHE", "/var/cache/cdn-push-tests"))
SUITE = "bookworm"
VARIANT = "minbase"
PACKAGES = ("python3", "python3-venv", "systemd", "systemd-sysv", "dbus", "ca-certificates", "procps")
RECIPE = 1          # bump when the way the tree is made changes
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The project files a container needs; everything else in the clone stays out.
SKIP_NAMES = {".git", ".venv", "__pycache__", ".pytest_cache", ".hypothesis", "config.yaml"}


class Unavailable(Exception):
    """The container cannot be had here; the message says why."""


def missing_tools() -> list[str]:
    return [tool for tool in ("systemd-nspawn", "debootstrap", "nsenter", "mount")
            if shutil.which(tool) is None]


# -- apt sources ----------------------------------------------------------------------------

def apt_mirror(suite: str = SUITE) -> tuple[str, str | None]:
    """(mirror URI, keyring or None) of the first apt source that carries `suite` itself."""
    files = [Path("/etc/apt/sources.list")]
    folder = Path("/etc/apt/sources.list.d")
    if folder.is_dir():
        files += sorted(p for p in folder.iterdir() if p.suffix in (".list", ".sources"))
    for path in files:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line:
                        continue
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
                if (fields.get("enabled", "yes").lower() != "no" and "deb" in fields.get("types", "").split()
                        and suite in fields.get("suites", "").split()):
                    for uri in fields.get("uris", "").split():
                        if uri.startswith(("http://", "https://")):
                            keyring = fields.get("signed-by")
                            return uri, keyring if keyring and keyring.startswith("/") else None
        else:
            for line in text.splitlines():
                match = re.match(r"\s*deb\s+(?:\[(?P<opts>[^\]]*)\]\s+)?(?P<uri>\S+)\s+(?P<suite>\S+)", line)
                if match and match["suite"] == suite and match["uri"].startswith(("http://", "https://")):
                    keyring = re.search(r"signed-by=(\S+)", match["opts"] or "")
                    return match["uri"], keyring[1] if keyring else None
    raise Unavailable(f"no apt source for Debian {suite} in /etc/apt/sources.list(.d) to debootstrap from")


# -- caches ---------------------------------------------------------------------------------

def _key(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


@contextlib.contextmanager
def _cache_lock(name: str) -> Iterator[None]:
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def build_rootfs(log=print) -> Path:
    """The cached root file system, built first if the package list changed."""
    key = _key(SUITE, VARIANT, sorted(PACKAGES), RECIPE)
    target = CACHE / f"rootfs-{SUITE}-{key}"
    with _cache_lock("rootfs"):
        if (target / "etc" / "os-release").exists() and (target / ".complete").exists():
            return target
        mirror, keyring = apt_mirror()
        work = CACHE / f"rootfs-{SUITE}-{key}.partial"
        shutil.rmtree(work, ignore_errors=True)
        command = ["debootstrap", f"--variant={VARIANT}", "--include=" + ",".join(PACKAGES)]
        if keyring and Path(keyring).exists():
            command.append(f"--keyring={keyring}")
        command += [SUITE, str(work), mirror]
        log(f"building the container's root file system (once): {shlex.join(command)}")
        started = time.monotonic()
        result = subprocess.run(command, capture_output=True, text=True, timeout=1200)
        if result.returncode != 0:
            shutil.rmtree(work, ignore_errors=True)
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-5:])
            raise Unavailable(f"debootstrap failed (exit {result.returncode}): {tail}")
        # No downloaded .debs in the cache; a machine-id made at each boot.
        for deb in (work / "var" / "cache" / "apt" / "archives").glob("*.deb"):
            deb.unlink()
        (work / "etc" / "machine-id").write_text("")
        (work / "etc" / "hostname").write_text("cdn-push-test\n")
        (work / ".complete").write_text(f"{shlex.join(command)}\n")
        shutil.rmtree(target, ignore_errors=True)
        work.rename(target)
        log(f"root file system ready in {time.monotonic() - started:.0f}s: {target}")
        # Older trees (another package list) are not used any more.
        for old in CACHE.glob(f"rootfs-{SUITE}-*"):
            if old != target and not old.name.endswith(".partial"):
                shutil.rmtree(old, ignore_errors=True)
        return target


def container_python(rootfs: Path) -> str:
    """'3.11' for the Python in the tree."""
    versions = sorted(p.name[len("python"):] for p in (rootfs / "usr" / "lib").glob("python3.*")
                      if re.fullmatch(r"python3\.\d+", p.name) and (rootfs / "usr" / "bin" / p.name).exists())
    if not versions:
        raise Unavailable(f"no python3.X in {rootfs}/usr/bin")
    return versions[-1]


def build_wheelhouse(requirements: Path, python_version: str, log=print, extra: Sequence[str] = ()) -> Path:
    """Wheels of `requirements` and `extra` (and what they need) for CPython `python_version` here."""
    machine = platform.machine()
    content = requirements.read_text() + "".join(f"{line}\n" for line in extra)
    key = _key(content, python_version, machine)
    target = CACHE / f"wheels-{key}"
    with _cache_lock("wheels"):
        if (target / ".complete").exists():
            return target
        work = CACHE / f"wheels-{key}.partial"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        nodot = python_version.replace(".", "")
        glibc = [f"manylinux_2_{minor}_{machine}" for minor in range(36, 4, -1)]
        legacy = [f"manylinux2014_{machine}", f"manylinux2010_{machine}", f"manylinux1_{machine}"]
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                   "--only-binary=:all:", "--implementation", "cp", "--python-version", python_version,
                   "--abi", f"cp{nodot}", "--abi", "abi3", "--abi", "none", "--dest", str(work),
                   "-r", str(requirements), *extra]
        for tag in glibc + legacy + [f"linux_{machine}"]:
            command += ["--platform", tag]
        log(f"downloading wheels of {requirements.name} for Python {python_version} (once)")
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            shutil.rmtree(work, ignore_errors=True)
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-5:])
            raise Unavailable(f"could not download the wheels for the container: {tail}")
        (work / ".complete").write_text(content)
        shutil.rmtree(target, ignore_errors=True)
        work.rename(target)
        for old in CACHE.glob("wheels-*"):
            if old != target and not old.name.endswith(".partial"):
                shutil.rmtree(old, ignore_errors=True)
        return target


# -- the container ----------------------------------------------------------------------------

def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                found += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    return found


def _is_namespace_init(pid: int) -> bool:
    """PID 1 of a PID namespace, once it runs systemd (before that, nspawn still sets it up)."""
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/comm").read_text().strip() != "systemd":
            return False
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                ids = line.split()[1:]
                return len(ids) > 1 and ids[-1] == "1"
    return False


class Container:
    """One booted container: an overlay over the cached tree, gone after stop()."""

    def __init__(self, rootfs: Path, workdir: Path) -> None:
        self.rootfs = rootfs
        self.workdir = workdir
        self.name = f"cdn-push-test-{os.getpid()}"
        self.root = workdir / "merged"
        self.console_log = workdir / "console.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.leader = 0
        self._mounted: list[Path] = []

    # Files go in before boot, straight into the overlay's upper layer.
    def mount(self) -> None:
        upper_fs = self.workdir / "layer"
        upper_fs.mkdir(parents=True, exist_ok=True)
        # The upper layer may not itself be on overlayfs (a containerised CI): give it a tmpfs.
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "cdn-push-upper", str(upper_fs)],
                          capture_output=True).returncode == 0:
            self._mounted.insert(0, upper_fs)
        (upper_fs / "upper").mkdir(exist_ok=True)
        (upper_fs / "work").mkdir(exist_ok=True)
        self.root.mkdir(exist_ok=True)
        options = f"lowerdir={self.rootfs},upperdir={upper_fs / 'upper'},workdir={upper_fs / 'work'}"
        result = subprocess.run(["mount", "-t", "overlay", "cdn-push-root", "-o", options, str(self.root)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            self.unmount()
            raise Unavailable(f"cannot mount an overlay over {self.rootfs}: {result.stderr.strip()}")
        self._mounted.insert(0, self.root)

    def copy_in(self, source: Path, dest: str, *, skip: set[str] = SKIP_NAMES) -> None:
        def ignore(folder: str, names: list[str]) -> set[str]:
            return {n for n in names if n in skip or n.endswith((".pyc", ".ledger.sqlite3"))
                    or ".ledger.sqlite3" in n}
        target = self.root / dest.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(source, target, ignore=ignore, symlinks=True, dirs_exist_ok=True)

    def boot(self, timeout: float = 60.0) -> None:
        command = ["systemd-nspawn", "--quiet", "--boot", "--register=no", "--keep-unit", "--private-network",
                   f"--machine={self.name}", "--console=read-only", f"--directory={self.root}"]
        with open(self.console_log, "wb") as console:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=console,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout

        def namespace_init() -> int:
            assert self.process is not None
            if self.process.poll() is not None:
                raise Unavailable(f"systemd-nspawn exited {self.process.returncode}: {self.console_tail()}")
            pending = _children(self.process.pid)
            while pending:
                pid = pending.pop()
                if _is_namespace_init(pid):
                    return pid
                pending += _children(pid)
            return 0

        try:
            self.leader = wait_for(namespace_init, timeout=timeout, interval=0.05)
        except AssertionError:
            raise Unavailable(f"no container init after {timeout:.0f}s: {self.console_tail()}") from None
        # `--wait` returns once boot is over: running, or degraded if some unit failed;
        # "offline" while the manager does not take connections yet.
        seen = [""]

        def boot_over() -> str | None:
            result = self.run(["systemctl", "is-system-running", "--wait"],
                              timeout=max(1.0, deadline - time.monotonic()))
            seen[0] = result.stdout.strip() or result.stderr.strip()
            return None if seen[0] in ("offline", "") or "Failed to connect to bus" in seen[0] else seen[0]

        with contextlib.suppress(AssertionError):       # still booting at the deadline: said below
            wait_for(boot_over, timeout=max(0.0, deadline - time.monotonic()), interval=0.05)
        state = seen[0]
        if state not in ("running", "degraded"):
            raise Unavailable(f"the container's systemd did not finish booting ({state!r}): {self.console_tail()}")

    def console_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.console_log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def run(self, command: Sequence[str] | str, *, input: str | None = None, timeout: float = 120.0,
            env: dict[str, str] | None = None, check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run a command inside (a string goes through sh -c), with a clean environment."""
        if isinstance(command, str):
            command = ["sh", "-c", command]
        environment = [f"PATH={PATH}", "LANG=C.UTF-8", "HOME=/root", "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0"]
        environment += [f"{k}={v}" for k, v in (env or {}).items()]
        full = ["nsenter", "--target", str(self.leader), "--all", "--root", "--wd",
                "env", "-i", *environment, *command]
        result = subprocess.run(full, input=input, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{shlex.join(command)} exited {result.returncode}:\n{result.stdout}{result.stderr}")
        return result

    def write(self, path: str, content: str, *, mode: str = "0644", owner: str = "root:root") -> None:
        self.run(f"umask 077 && mkdir -p \"$(dirname {shlex.quote(path)})\" && cat > {shlex.quote(path)} "
                 f"&& chown {owner} {shlex.quote(path)} && chmod {mode} {shlex.quote(path)}",
                 input=content, check=True)

    def stop(self, timeout: float = 30.0) -> None:
        if self.process is not None and self.process.poll() is None:
            # SIGTERM asks nspawn to power the container off cleanly.
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self.unmount()

    def unmount(self) -> None:
        for path in self._mounted:
            try:                                        # busy for a moment after the container stops
                wait_for(lambda: subprocess.run(["umount", str(path)], capture_output=True).returncode == 0,
                         timeout=2.0, interval=0.1)
            except AssertionError:
                subprocess.run(["umount", "--lazy", str(path)], capture_output=True)
        self._mounted.clear()


@contextlib.contextmanager
def booted(rootfs: Path, copies: Sequence[tuple[Path, str]]) -> Iterator[Container]:
    with tempfile.TemporaryDirectory(prefix="cdn-push-nspawn-") as workdir:
        container = Container(rootfs, Path(workdir))
        try:
            container.mount()
            for source, dest in copies:
                container.copy_in(source, dest)
            container.boot()
            yield container
        finally:
            container.stop()
