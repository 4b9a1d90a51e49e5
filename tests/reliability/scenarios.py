"""Fault scenarios with real processes, shared by ``test_faults.py`` (CI sizes) and ``bench/chaos.py`` (full size).

Every scenario runs ``timerctl serve ...`` daemons and ``timerctl`` CLI commands as subprocesses against one
embedded SQLite store, a Kafka-protocol broker and Redis, with ``bench/receiver.py`` as the webhook target.
Each returns a flat dict of what it measured (timers lost, duplicates, lateness, ...): the tests assert on
it and the bench prints it. Nothing here imports pytest; every process a scenario starts is ended in its
``finally``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any, TypeVar

from timerctl.model import Status, parse_instant
from timerctl.stores.sqlite import SqliteStore

REPO = Path(__file__).resolve().parents[2]
RECEIVER_SCRIPT = REPO / "bench" / "receiver.py"
TIMERCTL = str(Path(sys.executable).with_name("timerctl"))

T = TypeVar("T")


# -- waiting and small helpers -----------------------------------------------------------------------


def wait_until(probe: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """The first truthy result of ``probe``, polled until ``timeout`` seconds; AssertionError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {result!r})")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def percentile(values: list[float], pct: float) -> float:
    """The nearest-rank percentile (NaN for no values)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered) + 0.5) - 1))]


def new_seed() -> int:
    """``$TIMERCTL_CHAOS_SEED`` when set (to replay a run), else a fresh random seed."""
    given = os.environ.get("TIMERCTL_CHAOS_SEED")
    return int(given) if given else random.SystemRandom().randrange(1 << 32)


def scenario_env(workdir: Path, **settings: str) -> dict[str, str]:
    """This process's environment without TIMERCTL_*/systemd variables, plus ``TIMERCTL_<NAME>`` settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TIMERCTL_") and k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")
    }
    env["TIMERCTL_DB"] = str(workdir / "timers.db")
    env.update({f"TIMERCTL_{name.upper()}": value for name, value in settings.items() if value})
    return env


def run_cli(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``timerctl ARGS`` as a subprocess with ``env``."""
    return subprocess.run(
        [TIMERCTL, *args], env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def write_specs(path: Path, specs: Iterable[dict[str, Any]]) -> Path:
    """Write one JSON timer spec per line (the ``create --from-file`` format)."""
    with path.open("w") as fh:
        for spec in specs:
            fh.write(json.dumps(spec) + "\n")
    return path


def acknowledged(done: subprocess.CompletedProcess[str]) -> dict[str, float]:
    """``timerId -> expiryTime`` (unix seconds) of a ``create --from-file`` that exited 0."""
    assert done.returncode == 0, f"create --from-file exited {done.returncode}: {done.stderr[-2000:]}"
    created = {}
    for line in done.stdout.splitlines():
        data = json.loads(line)
        created[data["timerId"]] = parse_instant(data["expiryTime"]).timestamp()
    return created


def iso(at: float) -> str:
    """A unix time as an ISO-8601 UTC instant with milliseconds."""
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- processes -----------------------------------------------------------------------------------------


def _end(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 30) -> int:
    """``proc``'s exit code, once signalled (if alive) and gone: SIGKILL after ``timeout``; its pipes closed."""
    if proc.poll() is None:
        with suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()
    return proc.returncode


class Receiver:
    """``bench/receiver.py`` as a process on a fixed port: it can be killed and started again on that port.

    The receiver writes its receipts when it gets SIGTERM, so ``stop`` (SIGTERM) keeps them and ``kill``
    (SIGKILL) loses them; ``receipts`` collects every stopped incarnation's, tagged ``incarnation``.
    """

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.proc: subprocess.Popen[str] | None = None
        self.incarnation = 0
        self.receipts: list[dict[str, Any]] = []

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def _out(self) -> Path:
        return self.workdir / f"received-{self.incarnation}.jsonl"

    def start(self) -> None:
        self.incarnation += 1
        self.proc = subprocess.Popen(
            [sys.executable, str(RECEIVER_SCRIPT), str(self.port), str(self._out)],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            _end(self.proc, signal.SIGKILL)
            raise RuntimeError(f"the receiver did not start on port {self.port}")

    def stop(self) -> None:
        """SIGTERM: stop listening and keep this incarnation's receipts."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        _end(proc)
        if self._out.exists():
            for line in self._out.read_text().splitlines():
                self.receipts.append({**json.loads(line), "incarnation": self.incarnation})

    def kill(self) -> None:
        """SIGKILL: gone at once, this incarnation's receipts with it."""
        proc, self.proc = self.proc, None
        if proc is not None:
            _end(proc, signal.SIGKILL)


class Fleet:
    """``timerctl serve ROLE`` processes by name, each incarnation logging JSON to its own file.

    ``kill`` is SIGKILL (a crash), ``stop`` SIGTERM (a drain); ``close`` ends every process still running.
    """

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.current: dict[str, subprocess.Popen[bytes]] = {}
        self.roles: dict[str, tuple[str, str, dict[str, str]]] = {}
        self.incarnations: dict[str, int] = defaultdict(int)
        self.all: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, role: str, log_level: str = "WARNING", **settings: str) -> subprocess.Popen[bytes]:
        """Start ``timerctl serve ROLE`` as ``name`` (``settings`` add TIMERCTL_* for this process)."""
        self.roles[name] = (role, log_level, settings)
        self.incarnations[name] += 1
        env = {**self.env, **{f"TIMERCTL_{k.upper()}": v for k, v in settings.items()}}
        with (self.logs / f"{name}-{self.incarnations[name]}.log").open("wb") as log:
            proc = subprocess.Popen(
                [TIMERCTL, "serve", role, "--log-format", "json", "--log-level", log_level],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        self.current[name] = proc
        self.all.append(proc)
        return proc

    def restart(self, name: str) -> subprocess.Popen[bytes]:
        role, level, settings = self.roles[name]
        return self.start(name, role, level, **settings)

    def kill(self, name: str) -> None:
        _end(self.current[name], signal.SIGKILL)

    def stop(self, name: str, timeout: float = 30) -> int:
        return _end(self.current[name], signal.SIGTERM, timeout)

    def alive(self, name: str) -> bool:
        return self.current[name].poll() is None

    def events(self, name: str) -> list[dict[str, Any]]:
        """Every JSON log record of every incarnation of ``name``."""
        found = []
        for n in range(1, self.incarnations[name] + 1):
            path = self.logs / f"{name}-{n}.log"
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith("{"):
                    with suppress(ValueError):
                        found.append(json.loads(line))
        return found

    def log_tail(self, name: str, chars: int = 3000) -> str:
        return (self.logs / f"{name}-{self.incarnations[name]}.log").read_text(errors="replace")[-chars:]

    def close(self) -> None:
        """SIGTERM every process still running, all at once, then wait for each (SIGKILL after 30 s)."""
        for proc in self.all:
            if proc.poll() is None:
                with suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        for proc in self.all:
            _end(proc)


@contextmanager
def cluster(env: dict[str, str], workdir: Path) -> Iterator[tuple[Fleet, Receiver]]:
    """A Fleet and a started Receiver, both ended on exit however the block ends."""
    fleet = Fleet(env, workdir)
    receiver = Receiver(workdir)
    try:
        receiver.start()
        yield fleet, receiver
    finally:
        try:
            fleet.close()
        finally:
            receiver.stop()


class RedisServer:
    """A ``redis-server`` of our own on a free port (memory only), to stop and start again on that port."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        proc = self.proc

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited {proc.returncode} on port {self.port}")
            return accepts_connections(self.port)

        wait_until(up, 10, f"redis-server on port {self.port}", interval=0.02)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            _end(proc, signal.SIGKILL)
            wait_until(lambda: not accepts_connections(self.port), 10, f"port {self.port} to close")


def redis_server_binary() -> str | None:
    return shutil.which("redis-server")


# -- reading the outcome ---------------------------------------------------------------------------------


def status_counts(db: str) -> dict[str, int]:
    store = SqliteStore(db)
    try:
        return {s.value: n for s, n in store.counts().items()}
    finally:
        store.close()


def wait_all_final(db: str, expected: int, timeout: float, what: str) -> dict[str, int]:
    """Poll the store until ``expected`` timers are Finished or Failed; the status counts."""

    def done() -> dict[str, int] | None:
        counts = status_counts(db)
        return counts if counts["Finished"] + counts["Failed"] >= expected else None

    try:
        return wait_until(done, timeout, what, interval=0.25)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; store has {status_counts(db)}") from None


def timers_by_id(db: str) -> dict[str, Any]:
    store = SqliteStore(db)
    try:
        return {t.timer_id: t for t in store.list(limit=10_000_000)}
    finally:
        store.close()


@dataclass
class Deliveries:
    """What the receiver saw, per timer id."""

    receipts: list[dict[str, Any]]
    by_id: dict[str, list[float]] = field(init=False)

    def __post_init__(self) -> None:
        self.by_id = defaultdict(list)
        for r in self.receipts:
            self.by_id[r["timerId"]].append(r["receivedAt"])
        for times in self.by_id.values():
            times.sort()

    def duplicates(self) -> dict[str, int]:
        """Timer id -> extra receipts beyond the first."""
        return {tid: len(times) - 1 for tid, times in self.by_id.items() if len(times) > 1}

    def lateness_ms(self, expiry: dict[str, float]) -> list[float]:
        """First receipt - expiryTime of every delivered timer in ``expiry``, in milliseconds."""
        return [(self.by_id[tid][0] - at) * 1000 for tid, at in expiry.items() if tid in self.by_id]


def run_tag() -> str:
    """A short random tag for timer ids, so no two runs share an id (not even in a Redis they share)."""
    return uuid.uuid4().hex[:6]


def warm_up(env: dict[str, str], receiver: Receiver, db: str, timeout: float = 40) -> float:
    """Create one timer due at once and wait until it is Finished: the daemons are up and in their groups.

    Returns the seconds it took. The timer is ``warm-up-<tag>`` in the store and in the receipts.
    """
    started = time.time()
    timer_id = f"warm-up-{run_tag()}"
    done = run_cli(env, "create", "--url", receiver.url("/warm-up"), "--in", "0s", "--id", timer_id, "--json")
    assert done.returncode == 0, f"warm-up create exited {done.returncode}: {done.stderr}"

    def finished() -> bool:
        store = SqliteStore(db)
        try:
            timer = store.get(timer_id)
        finally:
            store.close()
        return timer is not None and timer.status is Status.FINISHED

    wait_until(finished, timeout, "the warm-up timer to fire (are the daemons up?)", interval=0.1)
    return time.time() - started


# -- 1. crashes -------------------------------------------------------------------------------------------

#: A delivery received up to this long before a runner's SIGKILL may not have been recorded yet, so the
#: next runner repeats it: it was in flight, or delivered with its outcome waiting for the runner's next
#: batched store write (tens of milliseconds; up to ~0.4 s measured while two cores run seven processes).
RECORD_WINDOW = 1.0


def crash_scenario(
    env: dict[str, str],
    workdir: Path,
    *,
    target: str,
    timers: int,
    kills: int,
    seed: int,
    lead: float = 2.0,
    spread: float = 5.0,
    settle_timeout: float = 90.0,
) -> dict[str, Any]:
    """SIGKILL ``target`` (consumer, runner or both) ``kills`` times at seeded random instants while
    ``timers`` timers are created through Kafka and fire, restarting it each time.

    Expiries are spread over ``spread`` seconds starting ``lead`` seconds after the create starts; kill
    instants are uniform over the create and the firing window. Returns what was lost and duplicated.
    """
    rnd = random.Random(seed)
    tag = run_tag()
    names = {"consumer": ["consumer"], "runner": ["runner"], "both": ["consumer", "runner"]}[target]
    db = env["TIMERCTL_DB"]
    spec_file = workdir / "crash.jsonl"
    with cluster(env, workdir) as (fleet, receiver):
        write_specs(
            spec_file,
            (
                {"url": receiver.url(), "in": f"{lead + spread * i / timers:.3f}s", "id": f"crash-{tag}-{i:06d}"}
                for i in range(timers)
            ),
        )
        fleet.start("consumer", "consumer")
        fleet.start("runner", "runner")
        warmed = warm_up(env, receiver, db)
        plan = sorted((rnd.uniform(0, lead + spread), rnd.uniform(0, 1.0)) for _ in range(kills))
        started = time.time()
        create = subprocess.Popen(
            [TIMERCTL, "create", "--from-file", str(spec_file)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        kill_times: list[float] = []
        try:
            for at, down_for in plan:
                # The schedule of the scenario itself, not a wait for some state: crash at this instant.
                time.sleep(max(0.0, started + at - time.time()))
                for name in names:
                    fleet.kill(name)
                kill_times.append(time.time())
                time.sleep(down_for)
                for name in names:
                    fleet.restart(name)
            out, err = create.communicate(timeout=120)
        finally:
            _end(create, signal.SIGKILL)
        expiry = acknowledged(subprocess.CompletedProcess(create.args, create.returncode, out, err))
        last_kill = kill_times[-1] if kill_times else started
        counts = wait_all_final(db, len(expiry) + 1, settle_timeout, f"{len(expiry)} timers to finish after the kills")
        settled = time.time()
        stored = timers_by_id(db)
        fleet.close()
        receiver.stop()
        deliveries = Deliveries(receiver.receipts)
        closed = time.time() - settled

    not_finished = sorted(t for t in expiry if t not in stored or stored[t].status is not Status.FINISHED)
    lost = sorted(t for t in expiry if t not in deliveries.by_id)
    runner_kills = kill_times if "runner" in names else []
    per_kill: Counter[int] = Counter()
    before_kill: list[float] = []
    unexplained: list[str] = []
    for tid, extra in deliveries.duplicates().items():
        first = deliveries.by_id[tid][0]
        near = [k for k, at in enumerate(runner_kills) if at - RECORD_WINDOW <= first <= at + 1.0]
        if near:
            per_kill[near[0]] += extra
            before_kill.append(runner_kills[near[0]] - first)
        else:
            unexplained.append(tid)
    late = deliveries.lateness_ms(expiry)
    return {
        "scenario": f"crash {target}",
        "seed": seed,
        "timers": len(expiry),
        "kills": len(kill_times),
        "kill_at_s": [round(at - started, 2) for at in kill_times],
        "finished": counts["Finished"],
        "failed": counts["Failed"],
        "not_finished": len(not_finished),
        "lost": len(lost),
        "lost_ids": lost[:20],
        "duplicates": sum(deliveries.duplicates().values()),
        "duplicated_timers": len(deliveries.duplicates()),
        "max_receipts": max((len(times) for times in deliveries.by_id.values()), default=0),
        "duplicates_per_kill": [per_kill[k] for k in range(len(runner_kills))],
        "unexplained_duplicates": unexplained[:20],
        # How long before its kill the earliest duplicated delivery had been received (ms).
        "duplicate_received_before_kill_ms": round(max(before_kill) * 1000, 1) if before_kill else None,
        "warm_up_s": round(warmed, 2),
        "recovery_s": round(settled - last_kill, 2),
        "stop_s": round(closed, 2),
        "p50_ms": percentile(late, 50),
        "p99_ms": percentile(late, 99),
        "max_ms": max(late, default=float("nan")),
    }


# -- 2a. the webhook receiver down and back ----------------------------------------------------------------


def fired_attempts(events: list[dict[str, Any]]) -> dict[str, list[tuple[int, float, str]]]:
    """Timer id -> [(attempt, unix time, status after it)] from a runner's INFO ``fired`` log records."""
    found: dict[str, list[tuple[int, float, str]]] = defaultdict(list)
    for e in events:
        if e.get("event") != "fired":
            continue
        attempt = int(e["message"].split(" attempt ", 1)[1].split(" ", 1)[0])
        at = datetime.fromisoformat(e["time"]).timestamp()
        found[e["timer_id"]].append((attempt, at, e["status"]))
    for attempts in found.values():
        attempts.sort()
    return found


def receiver_outage_scenario(
    env: dict[str, str],
    workdir: Path,
    *,
    timers: int,
    down: float,
    spread: float = 1.0,
    first_delay: float = 0.5,
    max_delay: float = 4.0,
) -> dict[str, Any]:
    """Kill the receiver just before ``timers`` timers fall due (over ``spread`` seconds), keep it down
    ``down`` seconds, start it again on the same port; the timers are retried with backoff and delivered
    once it is back.

    Creates go straight into the store (this scenario is about delivery); one runner logs every attempt.
    Returns the gaps between attempts (from the runner's log) per attempt number, and those outside the
    retry policy: ``early`` (sooner than the policy allows: a real violation) and ``late`` (later than the
    policy plus a second: the runner could not keep up, as when ~1,000 refused POSTs a second saturate it).
    """
    env = {
        **env,
        "TIMERCTL_RETRY_FIRST_DELAY": str(first_delay),
        "TIMERCTL_RETRY_MAX_DELAY": str(max_delay),
        "TIMERCTL_MAX_ATTEMPTS": "50",
    }
    env.pop("TIMERCTL_KAFKA_BOOTSTRAP", None)
    db = env["TIMERCTL_DB"]
    tag = run_tag()
    with cluster(env, workdir) as (fleet, receiver):
        fleet.start("runner", "runner", log_level="INFO")
        due = time.time() + 3.0
        spec_file = write_specs(
            workdir / "outage.jsonl",
            (
                {"url": receiver.url(), "at": iso(due + spread * i / timers), "id": f"out-{tag}-{i:05d}"}
                for i in range(timers)
            ),
        )
        expiry = acknowledged(run_cli(env, "create", "--from-file", str(spec_file)))
        time.sleep(max(0.0, due - 0.5 - time.time()))  # the scenario: down from just before they fall due
        receiver.stop()
        went_down = time.time()
        wait_until(
            lambda: _all_attempted(db, timers),
            down,
            "every timer to have failed its first attempt while the receiver is down",
        )
        time.sleep(max(0.0, went_down + down - time.time()))  # the scenario: the receiver stays down
        receiver.start()
        back = time.time()
        counts = wait_all_final(db, timers, max_delay * 2 + 30, "every timer delivered after the receiver is back")
        delivered = time.time()
        stored = timers_by_id(db)
        fleet.close()
        receiver.stop()
        attempts = fired_attempts(fleet.events("runner"))

    deliveries = Deliveries([r for r in receiver.receipts if r["incarnation"] == 2])
    early = [r for r in receiver.receipts if r["incarnation"] == 1]
    gaps: dict[int, list[float]] = defaultdict(list)
    early: list[str] = []
    late: list[str] = []
    for tid, tries in attempts.items():
        for (n, at, _), (_, next_at, _) in pairwise(tries):
            # Log line to log line: each is written as its attempt ends, and the next attempt's due time is
            # set from that instant, so a gap is never below the drawn delay; above it by the next
            # attempt's lateness and duration (a poll tick, scheduling, a queue at the host's bound).
            gap = next_at - at
            gaps[n].append(gap)
            base = min(max_delay, first_delay * 2 ** (n - 1))
            text = f"{tid} attempt {n}->{n + 1}: {gap:.2f}s, policy {base / 2:.2f}-{base:.2f}s"
            if gap < base / 2 - 0.01:
                early.append(text)
            elif gap > base + 1.0:
                late.append(text)
    receipt_attempt = {r["timerId"]: r["attempt"] for r in deliveries.receipts}
    mismatched = [t for t, timer in stored.items() if receipt_attempt.get(t) != timer.attempts]
    delivered_after_back = [at - back for times in deliveries.by_id.values() for at in times]
    return {
        "scenario": f"receiver down {down:.0f}s",
        "timers": len(expiry),
        "delivered": len(deliveries.by_id),
        "lost": len(set(expiry) - set(deliveries.by_id)),
        "duplicates": sum(deliveries.duplicates().values()),
        "received_before_down": len(early),
        "finished": counts["Finished"],
        "failed": counts["Failed"],
        "attempts_max": max((t.attempts for t in stored.values()), default=0),
        "attempts_min": min((t.attempts for t in stored.values()), default=0),
        "median_gap_s": {n: round(percentile(g, 50), 3) for n, g in sorted(gaps.items())},
        "early_retries": len(early),
        "early_examples": early[:10],
        "late_retries": len(late),
        "late_examples": late[:10],
        "store_vs_receipt_attempts_mismatched": len(mismatched),
        "first_delivery_after_back_s": min(delivered_after_back, default=float("nan")),
        "all_delivered_after_back_s": delivered - back,
        "max_delay_s": max_delay,
    }


def _all_attempted(db: str, count: int) -> bool:
    return sum(1 for t in timers_by_id(db).values() if t.attempts >= 1) >= count


# -- 2b. Redis down and back ---------------------------------------------------------------------------


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def redis_outage_scenario(env: dict[str, str], workdir: Path, redis_binary: str) -> dict[str, Any]:
    """Stop a Redis of our own under a Kafka setup with no consumer running, then start it again.

    While it is down: ``create`` exits 0 with one warning line; ``get`` of a timer the consumer has not
    stored yet is "not found" (Redis only accelerates reads); once a consumer stored it, ``get`` works
    with one warning line and the runner fires it. Once it is back, a ``get`` right after a create, with
    no consumer running, is answered from the cache again, without a warning.
    """
    redis = RedisServer(redis_binary, workdir)
    env = {**env, "TIMERCTL_REDIS_URL": redis.url}
    db = env["TIMERCTL_DB"]
    result: dict[str, Any] = {"scenario": "redis down and back"}
    try:
        redis.start()
        with cluster(env, workdir) as (fleet, receiver):
            before = _create_and_get(env, receiver.url(), "1h")
            result["up: get right after create"] = before
            redis.stop()
            down = _create_and_get(env, receiver.url(), "2s")
            result["down: get right after create"] = down
            fleet.start("consumer", "consumer")
            fleet.start("runner", "runner")
            started = time.time()

            def readable() -> subprocess.CompletedProcess[str] | None:
                got = run_cli(env, "get", down["id"], "--json")
                return got if got.returncode == 0 else None

            got = wait_until(readable, 60, "get to find the timer once the consumer stored it", interval=0.2)
            result["down: get once stored"] = {
                "exit": got.returncode,
                "stderr_lines": _lines(got.stderr),
                "after_s": round(time.time() - started, 2),
            }
            wait_all_final(db, 1, 30, "the timer created while Redis was down to fire")
            result["down: fired"] = timers_by_id(db)[down["id"]].status.value
            fleet.stop("consumer")
            redis.start()
            result["back: get right after create"] = _create_and_get(env, receiver.url(), "1h")
            fleet.close()
            result["runner_redis_warnings"] = sum(
                1 for e in fleet.events("runner") if "Redis" in e.get("message", "") and e["level"] == "warning"
            )
    finally:
        redis.stop()
    return result


def _create_and_get(env: dict[str, str], url: str, delay: str) -> dict[str, Any]:
    """``create --in DELAY`` then at once ``get``: exit codes, stderr lines, and whether the store has it."""
    created = run_cli(env, "create", "--url", url, "--in", delay, "--json")
    assert created.returncode == 0, f"create exited {created.returncode}: {created.stderr}"
    timer_id = json.loads(created.stdout)["timerId"]
    got = run_cli(env, "get", timer_id, "--json")
    store = SqliteStore(env["TIMERCTL_DB"])
    try:
        in_store = store.get(timer_id) is not None
    finally:
        store.close()
    return {
        "id": timer_id,
        "create_exit": created.returncode,
        "create_stderr": _lines(created.stderr),
        "get_exit": got.returncode,
        "get_stderr": _lines(got.stderr),
        "get_status": json.loads(got.stdout)["timerStatus"] if got.returncode == 0 else None,
        "in_store": in_store,
    }


# -- 2c. the broker down and back ------------------------------------------------------------------------


def broker_outage_scenario(
    env: dict[str, str],
    workdir: Path,
    broker: Any,
    make_topics: Callable[[], None],
    *,
    timers: int,
    down: float,
) -> dict[str, Any]:
    """Stop the broker while ``timers`` acknowledged and consumed timers wait to fire, then start it again.

    ``broker`` has ``stop()``/``start()`` keeping its port (``TansuBroker``); ``make_topics`` creates the
    topic again after a restart, as an operator would on an empty broker. The consumer and the runner
    started before the outage keep running throughout.
    """
    db = env["TIMERCTL_DB"]
    tag = run_tag()
    far_id = f"after-far-{tag}"
    result: dict[str, Any] = {"scenario": f"broker down {down:.0f}s", "timers": timers}
    with cluster(env, workdir) as (fleet, receiver):
        consumer = fleet.start("consumer", "consumer")
        runner = fleet.start("runner", "runner")
        warm_up(env, receiver, db)
        lead = down / 2 + 2
        spec_file = write_specs(
            workdir / "before.jsonl",
            (
                {"url": receiver.url(), "in": f"{lead + i / timers:.3f}s", "id": f"before-{tag}-{i:05d}"}
                for i in range(timers)
            ),
        )
        before = acknowledged(run_cli(env, "create", "--from-file", str(spec_file)))
        wait_until(lambda: sum(status_counts(db).values()) >= timers + 1, 30, "the consumer to store every timer")
        broker.stop()
        went_down = time.time()
        started = time.monotonic()
        refused = run_cli(env, "create", "--url", receiver.url(), "--in", "1m", "--json")
        result["down: create exit"] = refused.returncode
        result["down: create seconds"] = round(time.monotonic() - started, 2)
        result["down: create stderr"] = _lines(refused.stderr)
        result["down: create stdout"] = refused.stdout
        wait_all_final(db, timers + 1, down + lead + 30, "the consumed timers to fire with the broker down")
        result["fired while down"] = sum(
            1 for t in timers_by_id(db).values() if t.fired_at is not None and t.fired_at.timestamp() < went_down + down
        )
        time.sleep(max(0.0, went_down + down - time.time()))  # the scenario: the broker stays down
        broker.start()
        make_topics()
        back = time.time()
        after_near = write_specs(
            workdir / "after.jsonl",
            (
                {"url": receiver.url(), "in": f"{2 + i / timers:.3f}s", "id": f"after-{tag}-{i:05d}"}
                for i in range(timers)
            ),
        )
        after = acknowledged(run_cli(env, "create", "--from-file", str(after_near)))
        # Due beyond the runners' near-term feed window: only the consumer stores this one.
        far = run_cli(env, "create", "--url", receiver.url(), "--in", "1h", "--id", far_id, "--json")
        assert far.returncode == 0, far.stderr
        result["after: create exit"] = far.returncode

        def stored_far() -> bool:
            store = SqliteStore(db)
            try:
                return store.get(far_id) is not None
            finally:
                store.close()

        wait_until(stored_far, 60, "the consumer (not restarted) to store a create made after the restart")
        result["after: consumer stored a new create after_s"] = round(time.time() - back, 2)
        wait_all_final(db, 2 * timers + 1, 60, "the timers created after the restart to fire")
        result["consumer restarted"] = consumer.poll() is not None or fleet.current["consumer"] is not consumer
        result["runner restarted"] = runner.poll() is not None or fleet.current["runner"] is not runner
        stored = timers_by_id(db)
        fleet.close()
        receiver.stop()
        deliveries = Deliveries(receiver.receipts)
    for name, expiry in (("before", before), ("after", after)):
        result[f"{name}: finished"] = sum(1 for t in expiry if stored[t].status is Status.FINISHED)
        result[f"{name}: lost"] = sum(1 for t in expiry if t not in deliveries.by_id)
    result["duplicates"] = sum(deliveries.duplicates().values())
    return result


# -- 3. load ------------------------------------------------------------------------------------------------


def load_scenario(
    env: dict[str, str], workdir: Path, *, timers: int, window: float, runners: int = 3, consumers: int = 2
) -> dict[str, Any]:
    """``runners`` runners and ``consumers`` consumers sharing ``timers`` timers due within ``window`` seconds.

    The timers are created through Kafka (``create --from-file`` with absolute times) after the daemons are
    up, first due once the create should be done. Returns deliveries, duplicates and lateness (receipt -
    expiryTime) percentiles.
    """
    db = env["TIMERCTL_DB"]
    tag = run_tag()
    with cluster(env, workdir) as (fleet, receiver):
        for n in range(consumers):
            fleet.start(f"consumer{n + 1}", "consumer")
        for n in range(runners):
            fleet.start(f"runner{n + 1}", "runner")
        warm_up(env, receiver, db, timeout=60)
        # Kafka creates run at ~3,500/s here: start the window once the whole file should be on the topic.
        first_due = time.time() + 3.0 + timers / 2500
        spec_file = write_specs(
            workdir / "load.jsonl",
            (
                {"url": receiver.url(), "at": iso(first_due + window * i / timers), "id": f"load-{tag}-{i:06d}"}
                for i in range(timers)
            ),
        )
        started = time.time()
        expiry = acknowledged(run_cli(env, "create", "--from-file", str(spec_file), timeout=300))
        created = time.time()
        counts = wait_all_final(db, timers + 1, first_due + window - time.time() + 120, f"{timers} timers to fire")
        exited = {name: proc.poll() for name, proc in fleet.current.items() if proc.poll() is not None}
        fleet.close()
        receiver.stop()
        deliveries = Deliveries([r for r in receiver.receipts if r["timerId"] in expiry])
    late = deliveries.lateness_ms(expiry)
    return {
        "scenario": f"load {runners} runners {consumers} consumers",
        "timers": len(expiry),
        "window_s": window,
        "create_s": round(created - started, 2),
        "create_done_before_first_due_s": round(first_due - created, 2),
        "delivered": len(deliveries.by_id),
        "lost": len(set(expiry) - set(deliveries.by_id)),
        "duplicates": sum(deliveries.duplicates().values()),
        "finished": counts["Finished"],
        "failed": counts["Failed"],
        "daemons_exited": exited,
        "p50_ms": percentile(late, 50),
        "p99_ms": percentile(late, 99),
        "max_ms": max(late, default=float("nan")),
        "min_ms": min(late, default=float("nan")),
    }


# -- 2d. the store stalled for longer than the lease -------------------------------------------------------


def store_stall_scenario(
    env: dict[str, str], workdir: Path, *, timers: int, stalls: int, hold: float, lease: float = 2.0
) -> dict[str, Any]:
    """One runner firing ``timers`` timers while another connection holds the SQLite write lock ``hold``
    seconds (longer than the ``lease``), ``stalls`` times: every store call of the runner waits meanwhile,
    so its leases lapse while its deliveries go on. Nothing may be lost and, with no second runner to take
    the lapsed leases, nothing delivered twice.
    """
    env = {**env, "TIMERCTL_LEASE": str(lease)}
    env.pop("TIMERCTL_KAFKA_BOOTSTRAP", None)
    db = env["TIMERCTL_DB"]
    tag = run_tag()
    window = stalls * (hold + 1.5)
    with cluster(env, workdir) as (fleet, receiver):
        fleet.start("runner", "runner")
        first_due = time.time() + 3.0
        spec_file = write_specs(
            workdir / "stall.jsonl",
            (
                {"url": receiver.url(), "at": iso(first_due + window * i / timers), "id": f"stall-{tag}-{i:05d}"}
                for i in range(timers)
            ),
        )
        expiry = acknowledged(run_cli(env, "create", "--from-file", str(spec_file)))
        for n in range(stalls):
            # The scenario's schedule: each stall starts half a second into its share of the window.
            time.sleep(max(0.0, first_due + n * (hold + 1.5) + 0.5 - time.time()))
            lock = sqlite3.connect(db, isolation_level=None)
            try:
                lock.execute("BEGIN IMMEDIATE")
                time.sleep(hold)  # the scenario: the store stays locked
                lock.execute("COMMIT")
            finally:
                lock.close()
        counts = wait_all_final(db, timers, 60, f"{timers} timers to fire after the store stalls")
        fleet.close()
        receiver.stop()
        deliveries = Deliveries(receiver.receipts)
    return {
        "scenario": f"store locked {hold:.0f}s x{stalls}, lease {lease:.0f}s",
        "timers": len(expiry),
        "delivered": len(deliveries.by_id),
        "lost": len(set(expiry) - set(deliveries.by_id)),
        "duplicates": sum(deliveries.duplicates().values()),
        "finished": counts["Finished"],
        "failed": counts["Failed"],
        "p50_ms": percentile(deliveries.lateness_ms(expiry), 50),
        "p99_ms": percentile(deliveries.lateness_ms(expiry), 99),
        "max_ms": max(deliveries.lateness_ms(expiry), default=float("nan")),
    }
