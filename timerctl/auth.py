"""API tokens for the HTTP API: make one, hash it, read the tokens file, tell a token's scope — no web code.

The tokens file (``TIMERCTL_API_TOKENS_FILE``) has one token per line, ``<scope> sha256:<hex digest>
[label]``; blank lines and lines starting with ``#`` are ignored::

    # who                               added
    write sha256:6f03f0c96ffbc3c8cc6d99eeab4745a9f33b1cd9bef748e6a583f5d377257ca4 ci-deployer 2026-11-27
    read  sha256:25378cdbe4f776cf6cbd55be045beb468970ca38a5a09704560ddf816cb3a273 dashboard

``read`` may GET; ``write`` may also POST and DELETE. The label is free text for people. The file holds
only digests, so reading it does not reveal a token; the token itself is shown once, by
``timerctl api-token new``.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from timerctl.model import InvalidInput

log = logging.getLogger(__name__)

Scope = Literal["read", "write"]
SCOPES: tuple[Scope, ...] = ("read", "write")
#: Every token starts with this, so one found in a log, a repository or a paste is recognisable as ours.
TOKEN_PREFIX = "tmr_"
ALGORITHM = "sha256"
_HEX_DIGITS = frozenset("0123456789abcdef")
_DIGEST_HEX_LENGTH = 64


def new_token() -> str:
    """A fresh token: the prefix and 32 random bytes, URL-safe base64 (256 bits from ``secrets``)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_digest(token: str) -> bytes:
    """The SHA-256 of ``token``, which is what the tokens file stores.

    A plain fast hash is the right one here: a token carries 256 random bits, so its digest cannot be
    reversed or brute-forced. Slow, salted hashes (bcrypt, scrypt, argon2) exist for passwords people
    pick, with little entropy; on a random token they would only add milliseconds to every request.
    """
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def token_line(token: str, scope: Scope, label: str = "") -> str:
    """The tokens-file line for ``token``: scope, digest and the optional label."""
    check_label(label)
    line = f"{scope} {ALGORITHM}:{token_digest(token).hex()}"
    return f"{line} {label.strip()}" if label.strip() else line


def check_label(label: str) -> str:
    """``label`` when it fits on the token's line: printable, no line breaks."""
    if not label.isprintable():
        raise InvalidInput(f"token label {label!r} must be printable text on one line")
    return label


@dataclass(frozen=True, slots=True)
class TokenEntry:
    """One line of the tokens file."""

    scope: Scope
    digest: bytes
    label: str = ""


def parse_tokens(text: str, source: str = "tokens file") -> tuple[TokenEntry, ...]:
    """The entries of a tokens file's ``text``; InvalidInput naming ``source``, the line and what is wrong."""
    entries: list[TokenEntry] = []
    seen: dict[bytes, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source} line {number}"
        scope, hashed, label = [*line.split(maxsplit=2), "", ""][:3]
        if scope not in SCOPES:
            raise InvalidInput(f"{where}: unknown scope {scope!r}; expected read or write, then {ALGORITHM}:<digest>")
        algorithm, _, hex_digest = hashed.partition(":")
        well_formed = len(hex_digest) == _DIGEST_HEX_LENGTH and set(hex_digest.lower()) <= _HEX_DIGITS
        if algorithm != ALGORITHM or not well_formed:
            shown = hashed if len(hashed) <= 80 else hashed[:77] + "..."
            raise InvalidInput(f"{where}: {shown!r} is not a token digest; expected {ALGORITHM}: and 64 hex digits")
        digest = bytes.fromhex(hex_digest)
        if digest in seen:
            raise InvalidInput(f"{where}: the same token as line {seen[digest]}; list each token once")
        seen[digest] = number
        entries.append(TokenEntry("read" if scope == "read" else "write", digest, label))
    return tuple(entries)


def read_tokens(path: str) -> tuple[TokenEntry, ...]:
    """The entries in the file at ``path``; InvalidInput when it cannot be read or parsed."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise InvalidInput(f"tokens file {path} cannot be read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"tokens file {path} is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    return parse_tokens(text, f"tokens file {path}")


def allows(scope: Scope, write: bool) -> bool:
    """Whether a token of ``scope`` may make a request that writes (POST, DELETE) or only reads."""
    return scope == "write" or not write


#: What identifies one version of a file without reading it: device, inode, size, modification time.
_Signature = tuple[int, int, int, int]


def _signature(path: str) -> _Signature:
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class TokenStore:
    """The tokens of one file, re-read when the file changes, so a revoked token stops working at once.

    Each ``scope_of`` costs one ``stat``: the file is re-read only when its inode, size or modification
    time changed (an edit in place or an atomic rename both show; only a same-size rewrite within one
    tick of the file system's clock would not). A file that cannot be read at start is an InvalidInput;
    later, a broken edit keeps the last good tokens and is warned about once.
    """

    def __init__(self, path: str, warn: Callable[[str], None] = log.warning) -> None:
        self.path = path
        self.warn = warn
        try:
            self._seen: _Signature | None = _signature(path)
        except OSError as exc:
            raise InvalidInput(f"tokens file {path} cannot be read: {exc.strerror or exc}") from None
        self._entries = read_tokens(path)
        self._lock = threading.Lock()

    def entries(self) -> tuple[TokenEntry, ...]:
        """The current tokens: the file's, or the last good ones while it cannot be read."""
        try:
            current: _Signature | None = _signature(self.path)
        except OSError:
            current = None
        if current == self._seen:
            return self._entries
        with self._lock:
            if current != self._seen:  # another request may have reloaded it meanwhile
                self._reload(current)
        return self._entries

    def _reload(self, current: _Signature | None) -> None:
        # Remembered before reading: a change made while reading shows as one more change next time.
        self._seen = current
        try:
            if current is None:
                raise InvalidInput(f"tokens file {self.path} cannot be read: it is gone")
            self._entries = read_tokens(self.path)
        except InvalidInput as exc:
            self.warn(f"{exc}; keeping the {len(self._entries)} token(s) read before")
        else:
            log.info("tokens file %s re-read: %d token(s)", self.path, len(self._entries))

    def scope_of(self, token: str | None) -> Scope | None:
        """The scope of ``token``, or None when it is missing or not in the file.

        Every entry is compared, in constant time, so the answer's timing does not depend on which
        entry (if any) matched.
        """
        if not token:
            return None
        digest = token_digest(token)
        found: Scope | None = None
        for entry in self.entries():
            if hmac.compare_digest(entry.digest, digest):
                found = entry.scope
        return found


def is_loopback(host: str) -> bool:
    """Whether ``host`` is only reachable from this machine: ``localhost`` or a loopback address."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # any other name may resolve to an exposed address


def check_exposure(host: str, tokens_file: str, no_auth: bool) -> None:
    """InvalidInput when the API would listen on ``host`` in a way the operator did not ask for.

    Off loopback the API needs a tokens file unless ``--no-auth`` says the lack is deliberate (a proxy in
    front authenticates); asking for both is refused as contradictory rather than guessed at.
    """
    if no_auth and tokens_file:
        raise InvalidInput(
            f"--no-auth contradicts TIMERCTL_API_TOKENS_FILE={tokens_file}; unset the setting or drop --no-auth"
        )
    if not tokens_file and not no_auth and not is_loopback(host):
        raise InvalidInput(
            f"refusing to serve the HTTP API on {host} without authentication; set TIMERCTL_API_TOKENS_FILE "
            "(make tokens with `timerctl api-token new`), listen on 127.0.0.1, or pass --no-auth"
        )
