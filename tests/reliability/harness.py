"""The processes and measurements the fault scenarios are made of: daemons, a receiver, Redis, the store.

``Fleet`` runs ``timerctl serve ...`` daemons by name (SIGKILL, restart, SIGTERM), ``Receiver`` is
``bench/receiver.py`` on a port that survives restarts, ``RedisServer`` a ``redis-server`` of our own;
the rest reads what happened back from the SQLite store, the daemons' JSON logs and the receipts. A
scenario's environment is ``tests.factories.process_env`` and its commands ``tests.factories.timerctl``.
Nothing here imports pytest, so ``bench/chaos.py`` uses it as well.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.factories import TIMERCTL, stored_timers, timerctl
from tests.polling import accepts_connections, free_port, wait_for
from timerctl.model import Status, parse_instant
from timerctl.stores.sqlite import SqliteStore

REPO = Path(__file__).resolve().parents[2]
RECEIVER_SCRIPT = REPO / "bench" / "receiver.py"


# -- waiting and small helpers -----------------------------------------------------------------------


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


def write_specs(path: Path, specs: Iterable[dict[str, Any]]) -> Path:
    """Write one JSON timer spec per line (the ``create --from-file`` format)."""
    with path.open("w") as fh:
        for spec in specs:
            fh.write(json.dumps(spec) + "\n")
    return path


def spread_specs(url: str, prefix: str, count: int, first: float, window: float) -> Iterator[dict[str, Any]]:
    """``count`` specs for ``url`` due evenly from unix time ``first`` over ``window`` s; ids ``prefix-000000``."""
    for i in range(count):
        yield {"url": url, "at": iso(first + window * i / count), "id": f"{prefix}-{i:06d}"}


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


def end_process(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 30) -> int:
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
            end_process(self.proc, signal.SIGKILL)
            raise RuntimeError(f"the receiver did not start on port {self.port}")

    def stop(self) -> None:
        """SIGTERM: stop listening and keep this incarnation's receipts."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        end_process(proc)
        if self._out.exists():
            for line in self._out.read_text().splitlines():
                self.receipts.append({**json.loads(line), "incarnation": self.incarnation})

    def kill(self) -> None:
        """SIGKILL: gone at once, this incarnation's receipts with it."""
        proc, self.proc = self.proc, None
        if proc is not None:
            end_process(proc, signal.SIGKILL)


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
        end_process(self.current[name], signal.SIGKILL)

    def stop(self, name: str, timeout: float = 30) -> int:
        return end_process(self.current[name], signal.SIGTERM, timeout)

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

    def close(self) -> None:
        """SIGTERM every process still running, all at once, then wait for each (SIGKILL after 30 s)."""
        for proc in self.all:
            if proc.poll() is None:
                with suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        for proc in self.all:
            end_process(proc)


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
            return accepts_connections("127.0.0.1", self.port)

        wait_for(up, 10, f"redis-server on port {self.port}", interval=0.02)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            end_process(proc, signal.SIGKILL)
            wait_for(lambda: not accepts_connections("127.0.0.1", self.port), 10, f"port {self.port} to close")


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
        return wait_for(done, timeout, what, interval=0.25)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; store has {status_counts(db)}") from None


def timers_by_id(db: str) -> dict[str, Any]:
    return {t.timer_id: t for t in stored_timers(db)}


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
    done = timerctl(
        env, "create", "--url", receiver.url("/warm-up"), "--in", "0s", "--id", timer_id, "--json", timeout=60
    )
    assert done.returncode == 0, f"warm-up create exited {done.returncode}: {done.stderr}"

    def finished() -> bool:
        store = SqliteStore(db)
        try:
            timer = store.get(timer_id)
        finally:
            store.close()
        return timer is not None and timer.status is Status.FINISHED

    wait_for(finished, timeout, "the warm-up timer to fire (are the daemons up?)", interval=0.1)
    return time.time() - started
