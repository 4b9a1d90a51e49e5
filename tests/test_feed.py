"""Precision through Kafka (``daemons/feed.py``): runners learn of near-term timers from the topic, not the next
store poll."""

from __future__ import annotations

import json

from tests.factories import timerctl
from tests.fixtures_daemons import Daemons
from tests.fixtures_http import Receiver, wait_until
from timerctl.model import parse_instant
from timerctl.stores.sqlite import SqliteStore


def test_in_1s_through_kafka_fires_on_time_with_no_persisting_consumer(
    distributed_env: dict[str, str],
    daemons: Daemons,
    receiver: Receiver,
    store: SqliteStore,
) -> None:
    env = distributed_env
    # Only a runner: nothing but its Kafka feed can bring these timers into the store in time.
    env["TIMERCTL_POLL_INTERVAL"] = "5"
    daemons.start("serve", "runner")
    warm = json.loads(timerctl(env, "create", "--url", receiver.url("/warm"), "--in", "0s", "--json").stdout)
    receiver.wait_for(1, timeout=30, path="/warm")  # the feed's group has joined
    assert receiver.requests[0].json["timerId"] == warm["timerId"]

    far = json.loads(timerctl(env, "create", "--url", receiver.url("/far"), "--in", "1h", "--json").stdout)
    for n in range(5):
        created = timerctl(env, "create", "--url", receiver.url(f"/p{n}"), "--in", "1s", "--json")
        assert created.returncode == 0, created.stderr
        timer = json.loads(created.stdout)
        got = receiver.wait_for(1, timeout=5, path=f"/p{n}")[0]
        expiry = parse_instant(timer["expiryTime"]).timestamp()
        assert got.received_at >= expiry, "fired before its expiryTime"
        started = parse_instant(timer["createdAt"]).timestamp()
        assert abs((got.received_at - started) - 1.0) <= 0.3, f"fired {got.received_at - started:.3f}s after create"
    wait_until(lambda: store.get(timer["timerId"]) is not None, message="the feed stored the timer")
    assert store.get(far["timerId"]) is None, "the feed stores only near-term timers"
