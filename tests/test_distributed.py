"""Distributed mode end to end with real processes: Kafka (Tansu), Redis, consumer and runner daemons.

The shared store is the embedded SQLite file (no MongoDB server runs here); the broker is the
session's Tansu and the cache the real Redis on its own DB.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures_http import Receiver, wait_until
from tests.fixtures_kafka import TansuBroker, free_port
from timerctl.model import Status
from timerctl.stores.sqlite import SqliteStore

TIMERCTL = str(Path(sys.executable).parent / "timerctl")


@pytest.fixture
def env(tmp_path: Path, kafka_bootstrap: str, kafka_topic: str, redis_url: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TIMERCTL_")}
    base.update(
        TIMERCTL_DB=str(tmp_path / "timers.db"),
        TIMERCTL_KAFKA_BOOTSTRAP=kafka_bootstrap,
        TIMERCTL_TOPIC=kafka_topic,
        TIMERCTL_REDIS_URL=redis_url,
        TIMERCTL_POLL_INTERVAL="0.2",
        TIMERCTL_RETRY_FIRST_DELAY="0.2",
    )
    return base


def run(env: dict[str, str], *args: str, stdin: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
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
def daemons(env: dict[str, str], tmp_path: Path) -> Iterator[Daemons]:
    d = Daemons(env, tmp_path)
    yield d
    d.stop_all()


@pytest.fixture
def store(env: dict[str, str]) -> Iterator[SqliteStore]:
    """The shared store, opened by the test to look at what the daemons wrote."""
    s = SqliteStore(env["TIMERCTL_DB"])
    yield s
    s.close()


def test_thousand_timers_from_file_fire_exactly_once(
    env: dict[str, str], daemons: Daemons, receiver: Receiver, tmp_path: Path, store: SqliteStore
) -> None:
    lines = [json.dumps({"url": receiver.url("/bulk"), "in": "3s", "payload": {"n": i}}) for i in range(1000)]
    spec_file = tmp_path / "timers.jsonl"
    spec_file.write_text("\n".join(lines) + "\n")
    result = run(env, "create", "--from-file", str(spec_file))
    assert result.returncode == 0, result.stderr
    created = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(created) == 1000 and all(c["timerStatus"] == "Scheduled" for c in created)
    ids = {c["timerId"] for c in created}

    daemons.start("consumer")
    daemons.start("runner")
    got = receiver.wait_for(1000, timeout=60, path="/bulk")
    wait_until(lambda: store.counts()[Status.FINISHED] == 1000, timeout=20, message="1000 Finished")
    counts = Counter(r.json["timerId"] for r in receiver.requests)
    assert set(counts) == ids
    assert max(counts.values()) == 1, "a timer fired twice"
    assert len(got) == 1000
    for request in got:
        expiry = next(c["expiryTime"] for c in created if c["timerId"] == request.json["timerId"])
        assert request.json["expiryTime"] == expiry


def test_get_right_after_create_before_any_consumer(
    env: dict[str, str], receiver: Receiver, store: SqliteStore
) -> None:
    created = run(env, "create", "--url", receiver.url(), "--in", "1h", "--json")
    assert created.returncode == 0, created.stderr
    timer_id = json.loads(created.stdout)["timerId"]
    got = run(env, "get", timer_id, "--json")
    assert got.returncode == 0, got.stderr
    data = json.loads(got.stdout)
    assert data["timerId"] == timer_id and data["timerStatus"] == "Scheduled"
    assert 3590 <= data["timeLeft"] <= 3600
    assert store.get(timer_id) is None, "nothing consumed yet: the read came from Redis"


def test_cancel_before_the_consumer_saw_the_create_never_fires(
    env: dict[str, str], daemons: Daemons, receiver: Receiver, store: SqliteStore
) -> None:
    doomed = json.loads(run(env, "create", "--url", receiver.url("/doomed"), "--in", "2s", "--json").stdout)
    cancelled = run(env, "cancel", doomed["timerId"], "--json")
    assert cancelled.returncode == 0, cancelled.stderr
    assert json.loads(cancelled.stdout)["timerStatus"] == "Cancelled"
    # A sentinel due at the same time, created after: once it fired, the doomed one had its chance too.
    sentinel = json.loads(run(env, "create", "--url", receiver.url("/sentinel"), "--in", "2s", "--json").stdout)
    daemons.start("consumer")
    daemons.start("runner")
    receiver.wait_for(1, timeout=30, path="/sentinel")
    wait_until(lambda: store.get(sentinel["timerId"]) is not None, message="sentinel stored")
    assert [r for r in receiver.requests if r.path == "/doomed"] == []
    timer = store.get(doomed["timerId"])
    assert timer is not None and timer.status is Status.CANCELLED
    got = json.loads(run(env, "get", doomed["timerId"], "--json").stdout)
    assert got["timerStatus"] == "Cancelled"


def test_status_changes_by_runners_are_visible_through_the_cache(
    env: dict[str, str], daemons: Daemons, receiver: Receiver
) -> None:
    timer = json.loads(run(env, "create", "--url", receiver.url(), "--in", "1s", "--json").stdout)
    daemons.start("consumer")
    daemons.start("runner")
    receiver.wait_for(1, timeout=30)

    def finished() -> bool:
        got = run(env, "get", timer["timerId"], "--json")
        return json.loads(got.stdout)["timerStatus"] == "Finished"

    wait_until(finished, timeout=15, interval=0.2, message="get to show Finished")


def test_create_exits_3_fast_when_kafka_is_down(env: dict[str, str], private_kafka_broker: TansuBroker) -> None:
    private_kafka_broker.stop()
    env = {**env, "TIMERCTL_KAFKA_BOOTSTRAP": f"127.0.0.1:{private_kafka_broker.port}"}
    started = time.monotonic()
    result = run(env, "create", "--url", "http://127.0.0.1:9/x", "--in", "1m", "--json")
    elapsed = time.monotonic() - started
    assert result.returncode == 3
    assert elapsed < 10
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error:")


def test_kafka_never_there_exits_3(env: dict[str, str]) -> None:
    env = {**env, "TIMERCTL_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}"}
    result = run(env, "create", "--url", "http://127.0.0.1:9/x", "--in", "1m")
    assert result.returncode == 3 and result.stderr.startswith("error:")


def test_redis_down_create_and_get_work_with_one_warning(env: dict[str, str], dead_redis_url: str) -> None:
    env = {**env, "TIMERCTL_REDIS_URL": dead_redis_url}
    del env["TIMERCTL_KAFKA_BOOTSTRAP"]  # straight into the store, so get can find it without a consumer
    created = run(env, "create", "--url", "http://127.0.0.1:9/x", "--in", "1m", "--json")
    assert created.returncode == 0, created.stderr
    warnings = created.stderr.strip().splitlines()
    assert len(warnings) == 1 and "Redis" in warnings[0] and warnings[0].startswith("warning")
    timer_id = json.loads(created.stdout)["timerId"]
    got = run(env, "get", timer_id, "--json")
    assert got.returncode == 0 and json.loads(got.stdout)["timerId"] == timer_id
    assert len(got.stderr.strip().splitlines()) == 1


def test_doctor_reports_each_backend_and_exits_3_when_one_is_down(env: dict[str, str], dead_redis_url: str) -> None:
    ok = run(env, "doctor", "--json")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    report = json.loads(ok.stdout)
    assert set(report) == {"store", "queue", "cache"}
    assert all(part["ok"] and part["rttMs"] is not None for part in report.values())
    assert report["queue"]["backend"].startswith("kafka") and report["cache"]["backend"] == "redis"
    down = run({**env, "TIMERCTL_REDIS_URL": dead_redis_url}, "doctor", "--json")
    assert down.returncode == 3
    assert json.loads(down.stdout)["cache"]["ok"] is False
