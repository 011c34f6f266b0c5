"""Stand-ins shared by the pipeline and watch tests: the CDN client, a clock, a loop driver."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Mapping

import cdn_push


def accepted(params: Mapping[str, str]) -> cdn_push.CdnAnswer:
    return cdn_push.CdnAnswer(cdn_push.OUTCOME_ACCEPTED, 200, "ok", '{"status":"ok"}')


class FakeCdnClient:
    """Stands in for cdn_push.CdnClient (a cdn_push.SubmitClient): records every file/add in the order
    sent and answers with `answer(params)` (accepted by default), or raises what it returns if that
    is an exception. After `hold()`, each request waits until the test `release()`s it. file/list
    answers `listing(name)`: by default every name sent is `ready` at the size sent."""

    def __init__(self, answer: Callable[[Mapping[str, str]], object] = accepted,
                 listing: Callable[[str], object] | None = None) -> None:
        self.answer = answer
        self.listing = listing or self._listed_as_sent
        self.listed: list[str] = []
        self.sent: list[str] = []
        self.requests: list[dict[str, str]] = []
        self.on_retry: Callable[[BaseException | None, float], None] = lambda exc, wait: None
        self.closed = self.cancelled = False
        self._lock = threading.Lock()
        self._gate: threading.Semaphore | None = None

    def hold(self) -> "FakeCdnClient":
        self._gate = threading.Semaphore(0)
        return self

    def release(self, count: int = 1) -> None:
        assert self._gate is not None, "release() without hold()"
        self._gate.release(count)

    def prepare(self) -> None:
        pass

    def cancel(self) -> None:
        self.cancelled = True

    def close(self) -> None:
        self.closed = True

    def add_file(self, params: Mapping[str, str]) -> cdn_push.CdnAnswer:
        with self._lock:
            self.sent.append(params["name"])
            self.requests.append(dict(params))
        if self._gate is not None:
            self._gate.acquire()
        outcome = self.answer(params)
        if isinstance(outcome, BaseException):
            raise outcome
        assert isinstance(outcome, cdn_push.CdnAnswer)
        return outcome

    def list_file(self, name: str) -> cdn_push.Listing:
        with self._lock:
            self.listed.append(name)
        outcome = self.listing(name)
        if isinstance(outcome, BaseException):
            raise outcome
        assert isinstance(outcome, cdn_push.Listing)
        return outcome

    def _listed_as_sent(self, name: str) -> cdn_push.Listing:
        with self._lock:
            sizes = [int(r["size"]) for r in self.requests if r["name"] == name]
        return cdn_push.Listing(True, "ready", sizes[-1]) if sizes else cdn_push.Listing(False)


class Clock:
    """An injected clock that moves only when the test says so."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def step_until(pipeline: Any, predicate: Callable[[], Any], what: str, timeout: float = 10.0,
               each: Callable[[], Any] = lambda: None) -> None:
    """Turn the pipeline's loop until `predicate` holds, checking its path table (and `each`) after
    every turn."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        pipeline.step(timeout=0.01)
        pipeline.check_invariants()
        each()


class FakeOpenFiles:
    """Stands in for cdn_push.OpenFiles: the inodes a test says are open for writing, and whether
    every writer on the machine would be seen."""

    max_age = 5.0

    def __init__(self, complete=True, writers=()):
        self.complete, self.inodes = complete, set(writers)

    def writers(self, under: object = "/", *, refresh: bool = False) -> frozenset[int]:
        return frozenset(self.inodes)
