"""Daemons for tests: a runner in a thread of the test, and ``timerctl serve ...`` as real processes.

``running`` runs a ``Runner`` in-process on its own connection to the test's store file. ``Daemons``
starts ``timerctl`` processes with their JSON logs in files (``daemons`` with the distributed env of
Kafka and Redis); ``spawn`` starts ``timerctl serve runner`` processes (``RunnerProcess``).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.factories import TIMERCTL, process_env
from tests.polling import wait_for
from timerctl.config import Settings
from timerctl.daemons.lifecycle import StopFlag
from timerctl.daemons.runner import Runner
from timerctl.delivery import Deliverer
from timerctl.stores.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parents[1]

# --- a runner in-process ---------------------------------------------------------------------------------


def all_held(store: SqliteStore, ids: list[str]) -> bool:
    """True when a runner's lease holds every timer of ``ids`` (a claim leaves the status as it was)."""
    return all((t := store.get(tid)) is not None and t.lease_owner is not None for tid in ids)


@contextmanager
def running(
    settings: Settings,
    deliverer: Deliverer | type[Deliverer] | None = None,
    runner_class: type[Runner] = Runner,
) -> Iterator[Runner]:
    """A daemon runner on its own store connection, in a thread; stopped and joined on exit (exit code 0).

    ``deliverer`` is an instance, or a Deliverer class built with ``settings``; without one the runner
    builds its own as ``timerctl serve runner`` does (signer and target guard from the settings).
    """
    if isinstance(deliverer, type):
        deliverer = deliverer(settings)  # type: ignore[arg-type]  # a Deliverer of the test's that takes Settings
    runner = runner_class(settings, SqliteStore(settings.db_path), deliverer=deliverer)
    stop = StopFlag()
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(runner.run(stop)), name="test-runner", daemon=True)
    thread.start()
    try:
        yield runner
    finally:
        stop.request()
        thread.join(timeout=15)
        runner.store.close()
        assert not thread.is_alive(), "runner did not stop within 15s"
    assert codes == [0]


# --- timerctl as processes -------------------------------------------------------------------------------


class Daemons:
    """``timerctl ARGS`` processes (``serve ROLE``...) with their stderr in files; always stopped (SIGTERM, SIGKILL)."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env  # the caller's own dict: a change to it applies to the processes started after
        self.logs = logs
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        """``timerctl ARGS --log-format json --log-level WARNING`` with ``env`` (else the fixture's)."""
        with (self.logs / f"proc-{len(self.procs)}.log").open("w") as log:
            proc = subprocess.Popen(
                [TIMERCTL, *args, "--log-format", "json", "--log-level", "WARNING"],
                env=env or self.env,
                stdout=subprocess.DEVNULL,
                stderr=log,
                text=True,
            )
        self.procs.append(proc)
        return proc

    def log(self, proc: subprocess.Popen[str]) -> str:
        return (self.logs / f"proc-{self.procs.index(proc)}.log").read_text()

    def stop(self, proc: subprocess.Popen[str], timeout: float = 20) -> int:
        """``proc``'s exit code after SIGTERM; AssertionError (and SIGKILL) when it outlives ``timeout``."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"{proc.args} did not stop within {timeout}s of SIGTERM") from None

    def stop_all(self) -> None:
        """SIGTERM to every process still running, then wait for each (SIGKILL after 20 s): a teardown."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def distributed_env(tmp_path: Path, kafka_bootstrap: str, kafka_topic: str, redis_url: str) -> dict[str, str]:
    return process_env(
        tmp_path,
        kafka_bootstrap=kafka_bootstrap,
        topic=kafka_topic,
        # Groups of this test's own: a member killed by another test can wedge a shared group on Tansu.
        group_prefix=kafka_topic,
        redis_url=redis_url,
        poll_interval="0.2",
        retry_first_delay="0.2",
    )


@pytest.fixture
def daemons(distributed_env: dict[str, str], tmp_path: Path) -> Iterator[Daemons]:
    d = Daemons(distributed_env, tmp_path)
    yield d
    d.stop_all()


class RunnerProcess:
    """One ``timerctl serve runner`` with its JSON log in a file (at ``level``, else the default INFO).

    ``this_tree``: ``python -m timerctl`` from this checkout rather than the installed console script.
    """

    def __init__(self, env: dict[str, str], log: Path, level: str | None = None, this_tree: bool = False) -> None:
        self.log = log
        command = [sys.executable, "-m", "timerctl"] if this_tree else [TIMERCTL]
        levels = ["--log-level", level] if level else []
        with open(log, "wb") as err:
            self.proc = subprocess.Popen(
                [*command, "serve", "runner", "--log-format", "json", *levels],
                cwd=ROOT if this_tree else None,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )

    def events(self) -> list[dict[str, Any]]:
        lines = self.log.read_text(encoding="utf-8", errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def wait_ready(self, timeout: float = 15) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"runner exited {self.proc.returncode}: {self.log.read_text()}")
            return any(e.get("event") == "runner_started" for e in self.events())

        wait_for(ready, timeout, "the runner to start")

    def fired(self) -> int:
        return sum(1 for e in self.events() if e.get("event") == "fired")

    def stop(self, signum: int, timeout: float) -> tuple[int, float]:
        """Send ``signum``; the exit code and how long the process took to exit."""
        sent = time.monotonic()
        self.proc.send_signal(signum)
        code = self.proc.wait(timeout=timeout)
        return code, time.monotonic() - sent


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., RunnerProcess]]:
    """Start ``timerctl serve runner`` processes (``RunnerProcess``'s arguments but the log); whatever still runs at
    the end of the test is killed."""
    started: list[RunnerProcess] = []

    def start(env: dict[str, str], level: str | None = None, this_tree: bool = False) -> RunnerProcess:
        runner = RunnerProcess(env, tmp_path / f"runner-{len(started)}.log", level, this_tree)
        started.append(runner)
        return runner

    yield start
    for runner in started:
        if runner.proc.poll() is None:
            runner.proc.kill()
        runner.proc.wait(timeout=10)
