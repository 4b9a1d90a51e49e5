"""Daemons as real processes: the ``timerctl`` CLI and ``timerctl serve ...`` with a distributed env."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from timerctl.stores.sqlite import SqliteStore

TIMERCTL = str(Path(sys.executable).parent / "timerctl")


@pytest.fixture
def distributed_env(tmp_path: Path, kafka_bootstrap: str, kafka_topic: str, redis_url: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TIMERCTL_")}
    base.update(
        TIMERCTL_DB=str(tmp_path / "timers.db"),
        TIMERCTL_KAFKA_BOOTSTRAP=kafka_bootstrap,
        TIMERCTL_TOPIC=kafka_topic,
        # Groups of this test's own: a member killed by another test can wedge a shared group on Tansu.
        TIMERCTL_GROUP_PREFIX=kafka_topic,
        TIMERCTL_REDIS_URL=redis_url,
        TIMERCTL_POLL_INTERVAL="0.2",
        TIMERCTL_RETRY_FIRST_DELAY="0.2",
    )
    return base


def run(
    env: dict[str, str], *args: str, stdin: str | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """``timerctl ARGS`` as a subprocess with ``env``."""
    return subprocess.run([TIMERCTL, *args], env=env, input=stdin, capture_output=True, text=True, timeout=timeout)


class Daemons:
    """Starts ``timerctl serve ...`` processes and always stops them."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, role: str) -> subprocess.Popen[str]:
        with (self.logs / f"{role}-{len(self.procs)}.log").open("w") as log:
            proc = subprocess.Popen(
                [TIMERCTL, "serve", role, "--log-format", "json", "--log-level", "WARNING"],
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=log,
                text=True,
            )
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
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
def daemons(distributed_env: dict[str, str], tmp_path: Path) -> Iterator[Daemons]:
    d = Daemons(distributed_env, tmp_path)
    yield d
    d.stop_all()


@pytest.fixture
def shared_store(distributed_env: dict[str, str]) -> Iterator[SqliteStore]:
    """The shared store, opened by the test to look at what the daemons wrote."""
    s = SqliteStore(distributed_env["TIMERCTL_DB"])
    yield s
    s.close()
