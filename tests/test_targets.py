"""Target safety: which resolved addresses a webhook may reach, decided at fire time and never retried.

The pure decision (``TargetPolicy.refusal``) is table-driven over every blocked range; ``TargetGuard``
is driven through an injected resolver (and the system one for ``localhost`` and numeric host forms);
the end-to-end tests run an in-process runner built as ``serve`` builds it against the real receiver.
That a redirect never takes a delivery elsewhere is in ``test_delivery.py``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import signal
import subprocess
from pathlib import Path

import pytest

from tests.factories import FAST, TIMERCTL, make_timer, now, process_env, settings_for, settled
from tests.fixtures_daemons import running
from tests.fixtures_http import FakeDns, Receiver
from timerctl.daemons.runner import make_deliverer
from timerctl.model import Status
from timerctl.stores.sqlite import SqliteStore
from timerctl.targets import RefusedTarget, TargetGuard, TargetPolicy

#: Refused whatever the settings, with the range the refusal must name.
ALWAYS_BLOCKED = [
    ("169.254.169.254", "169.254.0.0/16"),  # cloud metadata
    ("169.254.1.1", "169.254.0.0/16"),
    ("0.0.0.0", "0.0.0.0/8"),
    ("224.0.0.1", "224.0.0.0/4"),
    ("239.255.255.250", "224.0.0.0/4"),
    ("240.0.0.1", "240.0.0.0/4"),
    ("255.255.255.255", "240.0.0.0/4"),
    ("100.64.0.1", "100.64.0.0/10"),
    ("198.18.0.1", "198.18.0.0/15"),
    ("192.0.0.1", "192.0.0.0/24"),
    ("fe80::1", "fe80::/10"),
    ("ff02::1", "ff00::/8"),
    ("::", "::/128"),
    ("fec0::1", "fec0::/10"),
    ("100::1", "100::/64"),
    ("::ffff:169.254.169.254", "169.254.0.0/16"),  # IPv4-mapped: judged as the IPv4 address it carries
]
#: Allowed by default, refused with TIMERCTL_BLOCK_PRIVATE_TARGETS=1.
PRIVATE = ["127.0.0.1", "127.8.9.10", "10.1.2.3", "172.16.0.1", "192.168.1.1", "::1", "fc00::1", "::ffff:10.0.0.1"]
PUBLIC = ["93.184.216.34", "8.8.8.8", "2606:4700::1", "2001:4860:4860::8888"]


def refusal(policy: TargetPolicy, address: str, host: str = "hook.example") -> str | None:
    return policy.refusal(host, ipaddress.ip_address(address))


@pytest.mark.parametrize(("address", "network"), ALWAYS_BLOCKED)
@pytest.mark.parametrize("block_private", [False, True], ids=["default", "block_private"])
def test_always_blocked_ranges_are_refused_naming_the_range(address: str, network: str, block_private: bool) -> None:
    reason = refusal(TargetPolicy(block_private=block_private), address)

    assert reason is not None
    assert f"blocked range {network}" in reason
    assert "hook.example" in reason


@pytest.mark.parametrize("address", PRIVATE)
def test_loopback_and_private_are_allowed_unless_blocked(address: str) -> None:
    assert refusal(TargetPolicy(), address) is None

    reason = refusal(TargetPolicy(block_private=True), address)
    assert reason is not None and "TIMERCTL_BLOCK_PRIVATE_TARGETS" in reason


@pytest.mark.parametrize("address", PUBLIC)
@pytest.mark.parametrize("block_private", [False, True], ids=["default", "block_private"])
def test_public_addresses_are_allowed(address: str, block_private: bool) -> None:
    assert refusal(TargetPolicy(block_private=block_private), address) is None


def test_the_allow_list_wins_over_every_block_by_cidr_or_host_name() -> None:
    policy = TargetPolicy.from_settings(True, " 127.0.0.1/32, 169.254.169.254,fd00::/8, Hooks.Internal. ,")

    assert refusal(policy, "127.0.0.1") is None
    assert refusal(policy, "169.254.169.254") is None
    assert refusal(policy, "::ffff:169.254.169.254") is None
    assert refusal(policy, "fd00::1") is None
    assert refusal(policy, "10.0.0.5", host="hooks.internal") is None
    assert refusal(policy, "169.254.1.1", host="HOOKS.INTERNAL.") is None
    # Only what is listed: neighbours and other names stay refused.
    assert refusal(policy, "127.0.0.2") is not None
    assert refusal(policy, "169.254.169.253") is not None
    assert refusal(policy, "fc00::1") is not None
    assert refusal(policy, "10.0.0.5", host="other.internal") is not None
    assert refusal(policy, "10.0.0.5", host="evil.hooks.internal") is not None


DNS = {
    "metadata.internal": ["169.254.169.254"],
    "mapped.example": ["::ffff:169.254.169.254"],
    "multi.example": ["93.184.216.34", "10.0.0.1", "169.254.169.254"],
    "public.example": ["93.184.216.34", "2606:4700::1"],
    "private.example": ["10.0.0.7"],
    "scoped.example": ["fe80::1%eth0"],
}


def check(guard: TargetGuard, url: str) -> str:
    return asyncio.run(guard.check(url))


@pytest.mark.parametrize(
    ("url", "network"),
    [
        ("http://metadata.internal/latest/meta-data", "169.254.0.0/16"),
        ("http://mapped.example/", "169.254.0.0/16"),
        ("https://multi.example/hook", "169.254.0.0/16"),
        ("http://scoped.example/", "fe80::/10"),
        ("http://169.254.169.254/latest", "169.254.0.0/16"),
        ("http://[fe80::1]:8080/", "fe80::/10"),
        ("http://[::ffff:169.254.169.254]/", "169.254.0.0/16"),
    ],
)
def test_the_guard_refuses_names_and_literals_that_reach_a_blocked_range(url: str, network: str) -> None:
    with pytest.raises(RefusedTarget, match=f"blocked range {network}"):
        check(TargetGuard(TargetPolicy(), FakeDns(DNS)), url)


def test_the_guard_asks_the_resolver_once_for_names_and_never_for_literals() -> None:
    dns = FakeDns(DNS)
    guard = TargetGuard(TargetPolicy(), dns)

    assert check(guard, "http://public.example:8080/x?token=1") == "93.184.216.34"
    assert check(guard, "https://public.example/x") == "93.184.216.34"
    assert check(guard, "http://93.184.216.34/x") == "93.184.216.34"
    assert check(guard, "http://[2606:4700::1]/x") == "2606:4700::1"
    assert dns.asked == [("public.example", 8080), ("public.example", 443)]


def test_the_guard_applies_block_private_and_the_allow_list_to_resolved_names() -> None:
    dns = FakeDns(DNS)

    assert check(TargetGuard(TargetPolicy(), dns), "http://private.example/") == "10.0.0.7"
    with pytest.raises(RefusedTarget, match="TIMERCTL_BLOCK_PRIVATE_TARGETS"):
        check(TargetGuard(TargetPolicy(block_private=True), dns), "http://private.example/")
    allowed = TargetGuard(TargetPolicy.from_settings(True, "metadata.internal,private.example"), dns)
    assert check(allowed, "http://metadata.internal/") == "169.254.169.254"
    assert check(allowed, "http://private.example/") == "10.0.0.7"


def test_a_name_that_does_not_resolve_is_a_retryable_failure_not_a_refusal() -> None:
    guard = TargetGuard(TargetPolicy(), FakeDns(DNS))

    with pytest.raises(ConnectionError, match=r"nowhere\.example") as info:
        check(guard, "http://nowhere.example/")
    assert not isinstance(info.value, RefusedTarget)


def test_the_system_resolver_with_localhost_obeys_block_private() -> None:
    assert ipaddress.ip_address(check(TargetGuard(TargetPolicy()), "http://localhost:9/")).is_loopback
    with pytest.raises(RefusedTarget, match="TIMERCTL_BLOCK_PRIVATE_TARGETS"):
        check(TargetGuard(TargetPolicy(block_private=True)), "http://localhost:9/")


@pytest.mark.parametrize("host", ["2852039166", "0xa9fea9fe", "0251.0376.0251.0376"])
def test_numeric_spellings_of_the_metadata_address_are_refused(host: str) -> None:
    # Not IP literals to ipaddress, but getaddrinfo (and so a connect) reads them as 169.254.169.254.
    with pytest.raises(RefusedTarget, match=r"blocked range 169\.254\.0\.0/16"):
        check(TargetGuard(TargetPolicy()), f"http://{host}/latest")


# -- end to end: an in-process runner built from settings ------------------------------------------


def test_a_metadata_target_fails_after_one_attempt_naming_the_range(tmp_path: Path, store: SqliteStore) -> None:
    store.insert(make_timer("t-metadata", now(), url="http://169.254.169.254/latest/meta-data"))

    with running(settings_for(tmp_path, FAST, max_attempts=8)):
        failed = settled(store, "t-metadata", Status.FAILED)

    assert failed.attempts == 1, "a refusal is never retried"
    assert failed.last_error is not None
    assert "169.254.169.254" in failed.last_error and "blocked range 169.254.0.0/16" in failed.last_error
    assert failed.fired_at is None and failed.lease_owner is None


def test_a_name_resolving_to_a_blocked_address_fails_at_fire_time(
    tmp_path: Path, store: SqliteStore, receiver: Receiver
) -> None:
    settings = settings_for(tmp_path, FAST)
    deliverer = make_deliverer(settings)
    deliverer.guard = TargetGuard(TargetPolicy(), FakeDns({"rebound.example": ["127.0.0.1", "169.254.169.254"]}))
    store.insert(make_timer("t-rebound", now(), url=f"http://rebound.example:{receiver.port}/x"))

    with running(settings, deliverer):
        failed = settled(store, "t-rebound", Status.FAILED)

    assert failed.attempts == 1
    assert failed.last_error is not None and "rebound.example" in failed.last_error
    assert receiver.requests == []


def test_block_private_refuses_the_local_receiver(tmp_path: Path, store: SqliteStore, receiver: Receiver) -> None:
    store.insert(make_timer("t-private", now(), url=receiver.url("/private")))

    with running(settings_for(tmp_path, FAST, block_private_targets="1")):
        failed = settled(store, "t-private", Status.FAILED)

    assert failed.attempts == 1
    assert failed.last_error is not None and "TIMERCTL_BLOCK_PRIVATE_TARGETS" in failed.last_error
    assert receiver.requests == []


def test_the_allow_list_lets_a_blocked_private_target_through(
    tmp_path: Path, store: SqliteStore, receiver: Receiver
) -> None:
    store.insert(make_timer("t-allowed", now(), url=receiver.url("/allowed")))

    with running(settings_for(tmp_path, FAST, block_private_targets="1", allowed_targets="127.0.0.1/32")):
        done = settled(store, "t-allowed", Status.FINISHED)

    assert done.attempts == 1
    assert [r.path for r in receiver.requests] == ["/allowed"]


def test_an_allowed_host_name_is_called_on_the_checked_address_with_its_host_header(
    tmp_path: Path, store: SqliteStore, receiver: Receiver
) -> None:
    settings = settings_for(tmp_path, FAST, block_private_targets="1", allowed_targets="hooks.internal")
    deliverer = make_deliverer(settings)
    assert isinstance(deliverer.guard, TargetGuard)
    deliverer.guard.resolver = FakeDns({"hooks.internal": ["127.0.0.1"]})
    store.insert(make_timer("t-named", now(), url=f"http://hooks.internal:{receiver.port}/named"))

    with running(settings, deliverer):
        settled(store, "t-named", Status.FINISHED)

    (got,) = receiver.wait_for(1, timeout=1)
    assert got.headers["host"] == f"hooks.internal:{receiver.port}"


def test_the_guard_resolves_a_name_again_on_every_check() -> None:
    """Decisions about an address are remembered; what a name resolves to is not (it may change)."""
    dns = FakeDns(dict(DNS))
    guard = TargetGuard(TargetPolicy(), dns)

    for _ in range(3):
        assert check(guard, "http://public.example/x") == "93.184.216.34"
    assert dns.asked == [("public.example", 80)] * 3
    dns.names["public.example"] = ["169.254.169.254"]
    with pytest.raises(RefusedTarget, match=r"169\.254\.0\.0/16"):
        check(guard, "http://public.example/x")


# -- IPv6: metadata endpoints and IPv4 carried inside IPv6 ------------------------------------------------

#: The clouds' IPv6 metadata endpoints and IPv6 forms that carry 169.254.169.254: refused by default.
IPV6_METADATA = [
    ("fd00:ec2::254", "cloud metadata address"),  # AWS IMDS over IPv6
    ("fd20:ce::254", "cloud metadata address"),  # GCP metadata over IPv6
    ("2002:a9fe:a9fe::1", "carried by 6to4 address"),
    ("2001:0:4136:e378:8000:63bf:5601:5601", "carried by Teredo address"),  # client 169.254.169.254, obfuscated
    ("64:ff9b::a9fe:a9fe", "carried by NAT64 address"),
    ("::169.254.169.254", "carried by IPv4-compatible address"),
    ("::ffff:0:a9fe:a9fe", "carried by IPv4-translated address"),
    ("::ffff:169.254.169.254", "carried by IPv4-mapped address"),
]
#: IPv6 forms carrying a private IPv4 address: allowed by default, refused with block_private like the IPv4.
IPV6_CARRYING_PRIVATE = ["2002:a00:1::1", "64:ff9b::a00:1", "::ffff:10.0.0.1", "2002:7f00:1::1"]


@pytest.mark.parametrize(("address", "why"), IPV6_METADATA)
@pytest.mark.parametrize("block_private", [False, True], ids=["default", "block_private"])
def test_ipv6_metadata_and_ipv4_carried_in_ipv6_are_refused(address: str, why: str, block_private: bool) -> None:
    reason = refusal(TargetPolicy(block_private=block_private), address)

    assert reason is not None and why in reason
    if "carried" in why:
        assert "169.254.169.254" in reason and "blocked range 169.254.0.0/16" in reason


@pytest.mark.parametrize("address", IPV6_CARRYING_PRIVATE)
def test_ipv4_rules_apply_to_the_ipv4_address_an_ipv6_address_carries(address: str) -> None:
    assert refusal(TargetPolicy(), address) is None
    reason = refusal(TargetPolicy(block_private=True), address)
    assert reason is not None and "TIMERCTL_BLOCK_PRIVATE_TARGETS" in reason and "carried by" in reason


def test_nat64_of_a_public_address_is_allowed_and_the_allow_list_covers_the_carried_address() -> None:
    # An IPv6-only network reaches public hosts through NAT64: 64:ff9b::808:808 is 8.8.8.8.
    assert refusal(TargetPolicy(block_private=True), "64:ff9b::808:808") is None
    policy = TargetPolicy.from_settings(True, "10.0.0.0/8")
    assert refusal(policy, "2002:a00:1::1") is None
    assert refusal(policy, "2002:a9fe:a9fe::1") is not None


def test_the_guard_refuses_ipv6_metadata_names_without_connecting() -> None:
    dns = FakeDns({"imds.example": ["fd00:ec2::254"], "tunnel.example": ["2002:a9fe:a9fe::1"]})
    guard = TargetGuard(TargetPolicy(), dns)

    with pytest.raises(RefusedTarget, match="cloud metadata"):
        check(guard, "http://imds.example/latest/meta-data")
    with pytest.raises(RefusedTarget, match="6to4"):
        check(guard, "http://tunnel.example/")
    with pytest.raises(RefusedTarget, match="cloud metadata"):
        check(guard, "http://[fd20:ce::254]/computeMetadata/v1/")


def _in_private_netns() -> bool:
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _in_private_netns(), reason="needs unshare -n (a network namespace of its own)")
def test_a_runner_refuses_ipv6_metadata_targets_once_and_never_connects(tmp_path: Path, store: SqliteStore) -> None:
    """A real runner in a network namespace with only loopback: had it tried to connect, the attempt
    would fail with "Network is unreachable" and be retried, not refused once naming the rule."""
    urls = {
        "t-aws": "http://[fd00:ec2::254]/latest/meta-data/",
        "t-gcp": "http://[fd20:ce::254]/computeMetadata/v1/",
        "t-6to4": "http://[2002:a9fe:a9fe::1]/latest/",
        "t-nat64": "http://[64:ff9b::a9fe:a9fe]/latest/",
    }
    for timer_id, url in urls.items():
        store.insert(make_timer(timer_id, now(), url=url))
    env = process_env(tmp_path, max_attempts="3", retry_first_delay="0.1")
    script = f"ip link set lo up; exec {TIMERCTL} serve runner --log-format json --log-level INFO"
    proc = subprocess.Popen(["unshare", "-n", "sh", "-c", script], env=env, stderr=subprocess.PIPE, text=True)
    try:
        for timer_id in urls:
            failed = settled(store, timer_id, Status.FAILED, timeout=15)
            assert failed.attempts == 1, f"{timer_id} was retried: {failed.last_error}"
            assert failed.last_error is not None and "unreachable" not in failed.last_error
            assert "metadata" in failed.last_error or "169.254.169.254" in failed.last_error
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err[-2000:]
    assert "Network is unreachable" not in err
