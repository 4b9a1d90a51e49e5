"""Target safety: which addresses a webhook may reach, decided at fire time on the resolved address.

The decision (``refusal``) is pure; ``TargetGuard`` adds the DNS lookup. The runner connects to the
address that was checked (pinning it, with the original Host header and TLS server name), so a name
that resolves to a public address at check time cannot be re-resolved to 169.254.169.254 for the POST.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]]]


class RefusedTarget(Exception):
    """The target must not be called (blocked address); the timer fails without retries."""


class TargetChecker(Protocol):
    """What a Deliverer asks before each POST: where to connect, or why not at all."""

    async def check(self, url: str) -> str:
        """The address to connect to; raises RefusedTarget (never retried) or ConnectionError (retried)."""
        ...


#: Ranges no webhook may ever reach, whatever the settings (unless explicitly allowed).
ALWAYS_BLOCKED: tuple[Network, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",  # "this network", includes the unspecified address
        "169.254.0.0/16",  # link-local, includes cloud metadata 169.254.169.254
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, includes broadcast
        "100.64.0.0/10",  # carrier-grade NAT, shared address space
        "192.0.0.0/24",  # IETF protocol assignments
        "198.18.0.0/15",  # benchmarking
        "::/128",
        "fe80::/10",  # link-local
        "ff00::/8",  # multicast
        "fec0::/10",  # deprecated site-local
        "100::/64",  # discard
    )
)
#: The clouds' IPv6 instance-metadata endpoints (AWS, GCP), refused by default like 169.254.169.254.
METADATA_V6: tuple[ipaddress.IPv6Network, ...] = (
    ipaddress.IPv6Network("fd00:ec2::254/128"),
    ipaddress.IPv6Network("fd20:ce::254/128"),
)
#: The well-known NAT64 prefix (RFC 6052): the last 32 bits are the IPv4 destination.
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
#: Embeddings that stand for their IPv4 address alone (no tunnel): allowed when that address is.
TRANSLATIONS = frozenset({"IPv4-mapped", "IPv4-translated", "NAT64"})
#: Blocked only with TIMERCTL_BLOCK_PRIVATE_TARGETS=1.
PRIVATE: tuple[Network, ...] = tuple(
    ipaddress.ip_network(n)
    for n in ("127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "::1/128", "fc00::/7")
)


@dataclass(frozen=True, slots=True)
class TargetPolicy:
    """Which addresses are refused; ``allowed_*`` entries win over every block."""

    block_private: bool = False
    allowed_networks: tuple[Network, ...] = ()
    allowed_hosts: frozenset[str] = frozenset()

    @classmethod
    def from_settings(cls, block_private: bool, allowed: str) -> TargetPolicy:
        """A policy from ``TIMERCTL_ALLOWED_TARGETS``: comma-separated CIDRs, addresses or host names."""
        networks: list[Network] = []
        hosts: set[str] = set()
        for item in (part.strip() for part in allowed.split(",")):
            if not item:
                continue
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                hosts.add(item.lower().rstrip("."))
        return cls(block_private, tuple(networks), frozenset(hosts))

    def refusal(self, host: str, address: IPAddress) -> str | None:
        """Why ``address`` (resolved from ``host``) is refused, or None when it may be called.

        An IPv6 address that carries an IPv4 address (mapped, compatible, 6to4, Teredo, NAT64) is judged
        by the IPv4 rules too: ``2002:a9fe:a9fe::1`` reaches 169.254.169.254 through a 6to4 relay.
        """
        if host.lower().rstrip(".") in self.allowed_hosts:
            return None
        if any(address in net for net in self.allowed_networks if net.version == address.version):
            return None
        for network in METADATA_V6:
            if address in network:
                return f"target {host} resolves to {address}, a cloud metadata address ({network})"
        if isinstance(address, ipaddress.IPv6Address):
            carried = embedded_ipv4(address)
            for kind, embedded in carried:
                if any(embedded in net for net in self.allowed_networks if net.version == 4):
                    return None
                reason = self._refusal(host, embedded)
                if reason is not None:
                    return f"{reason} (carried by {kind} address {address})"
            if any(kind in TRANSLATIONS for kind, _ in carried):
                # Exactly its IPv4 address (a NAT64 network's way to reach a public host): judged above, and
                # not refused for lying in the IETF-reserved ::/8 the way the IPv6 rules would.
                return None
        return self._refusal(host, address)

    def _refusal(self, host: str, candidate: IPAddress) -> str | None:
        for net in ALWAYS_BLOCKED:
            if net.version == candidate.version and candidate in net:
                return f"target {host} resolves to {candidate}, in blocked range {net}"
        # ::1 lies in the IETF-reserved ::/8, so is_reserved would refuse it: loopback is block_private's call.
        if not candidate.is_loopback and (
            candidate.is_multicast or candidate.is_unspecified or candidate.is_reserved or candidate.is_link_local
        ):
            return f"target {host} resolves to {candidate}, a reserved/link-local/multicast address"
        if self.block_private:
            setting = "blocked by TIMERCTL_BLOCK_PRIVATE_TARGETS"
            for net in PRIVATE:
                if net.version == candidate.version and candidate in net:
                    return f"target {host} resolves to {candidate}, in private range {net} {setting}"
            if candidate.is_private or candidate.is_loopback:
                return f"target {host} resolves to {candidate}, a private address {setting}"
        return None


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[tuple[str, ipaddress.IPv4Address]]:
    """The IPv4 addresses an IPv6 address carries, each with the name of the embedding."""
    found: list[tuple[str, ipaddress.IPv4Address]] = []
    if address.ipv4_mapped is not None:
        found.append(("IPv4-mapped", address.ipv4_mapped))
    value = int(address)
    if value >> 32 == 0 and value > 1:  # ::a.b.c.d, deprecated but still routed by some stacks
        found.append(("IPv4-compatible", ipaddress.IPv4Address(value & 0xFFFFFFFF)))
    if value >> 32 == 0xFFFF0000:  # ::ffff:0:a.b.c.d, SIIT's IPv4-translated form
        found.append(("IPv4-translated", ipaddress.IPv4Address(value & 0xFFFFFFFF)))
    if address.sixtofour is not None:
        found.append(("6to4", address.sixtofour))
    if address.teredo is not None:
        server, client = address.teredo
        found.extend((("Teredo", client), ("Teredo server", server)))
    if address in NAT64:
        found.append(("NAT64", ipaddress.IPv4Address(value & 0xFFFFFFFF)))
    return found


async def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, through the event loop's getaddrinfo."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class TargetGuard:
    """Resolves a webhook's host and refuses it when any of its addresses is blocked."""

    def __init__(self, policy: TargetPolicy, resolver: Resolver = system_resolver) -> None:
        self.policy = policy
        self.resolver = resolver
        # Per guard, so the policy is not hashed on every lookup.
        self._verdict = functools.lru_cache(maxsize=4096)(functools.partial(_verdict, policy))

    async def check(self, url: str) -> str:
        """The address to connect to; RefusedTarget when the host is blocked, ConnectionError when it does not
        resolve (a retryable failure: it may resolve later)."""
        host, port = _host_port(url)
        literal = _literal(host)
        if literal is not None:
            addresses = [literal]
        else:
            try:
                addresses = await self.resolver(host, port)
            except (OSError, UnicodeError) as exc:
                # A name that does not resolve may resolve later: let the attempt fail and be retried.
                raise ConnectionError(f"cannot resolve {host}: {exc}") from exc
        if not addresses:
            raise ConnectionError(f"cannot resolve {host}: no addresses")
        for text in addresses:
            reason = self._verdict(host, text)
            if reason:
                raise RefusedTarget(reason)
        return addresses[0]


# The pure steps of a check, remembered: parsing URLs and addresses and walking the network lists cost
# ~10 us per delivery, the same answer every time for the same webhook. The DNS lookup is not cached.


@functools.lru_cache(maxsize=4096)
def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


@functools.lru_cache(maxsize=4096)
def _literal(host: str) -> str | None:
    """``host`` as an address when it is an IP literal, else None (a name to resolve)."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def _verdict(policy: TargetPolicy, host: str, address: str) -> str | None:
    return policy.refusal(host, ipaddress.ip_address(address.split("%")[0]))
