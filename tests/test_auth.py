"""API tokens: the ``timerctl.auth`` module (making, hashing, the tokens file, reloads).

``api-token new`` is tested in ``tests/test_cli_tokens.py``, the routes that use the tokens in
``tests/test_api_security.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from timerctl import auth
from timerctl.auth import TokenStore, new_token, parse_tokens, token_line
from timerctl.model import InvalidInput

# --- the tokens file --------------------------------------------------------------------------------------


def test_a_new_token_is_prefixed_random_and_its_line_holds_only_its_hash() -> None:
    token, other = new_token(), new_token()
    assert token != other and token.startswith("tmr_") and len(token) >= 4 + 43
    line = token_line(token, "write", "ci deployer")
    assert token not in line and token[4:] not in line
    assert line.startswith("write sha256:") and line.endswith(" ci deployer")
    [entry] = parse_tokens(line)
    assert (entry.scope, entry.label) == ("write", "ci deployer")


def test_the_file_format_allows_comments_blank_lines_tabs_and_labels() -> None:
    read, write = new_token(), new_token()
    digest = auth.token_digest(write).hex().upper()  # upper-case hex, as some tools print it
    text = f"# the API's tokens\n\n  {token_line(read, 'read')}  \nwrite\tsha256:{digest}\tdeploy bot (2026)\n"
    entries = parse_tokens(text)
    assert [(e.scope, e.label) for e in entries] == [("read", ""), ("write", "deploy bot (2026)")]


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        pytest.param("admin sha256:" + "0" * 64, "line 2: unknown scope 'admin'; expected read or write", id="scope"),
        pytest.param("write md5:" + "0" * 32, "line 2: 'md5:" + "0" * 32 + "' is not a token digest", id="algo"),
        pytest.param("write sha256:abc", "expected sha256: and 64 hex digits", id="short"),
        pytest.param("write sha256:" + "g" * 64, "is not a token digest", id="not-hex"),
        pytest.param("write", "line 2: '' is not a token digest", id="no-digest"),
        pytest.param("tmr_" + "x" * 43, "unknown scope 'tmr_", id="a-raw-token"),
    ],
)
def test_a_malformed_line_is_refused_naming_the_line(line: str, fragment: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_tokens(f"# header\n{line}\n", "tokens file /etc/t")
    message = str(info.value)
    assert message.startswith("tokens file /etc/t line 2: ") and fragment in message and "\n" not in message


def test_a_token_listed_twice_is_refused() -> None:
    token = new_token()
    with pytest.raises(InvalidInput, match="line 3: the same token as line 1"):
        parse_tokens(f"{token_line(token, 'read')}\n\n{token_line(token, 'write')}\n")


def test_scope_of_knows_only_listed_tokens(tmp_path: Path) -> None:
    read, write = new_token(), new_token()
    path = tmp_path / "tokens"
    path.write_text(f"{token_line(read, 'read')}\n{token_line(write, 'write')}\n")
    tokens = TokenStore(str(path))
    assert (tokens.scope_of(read), tokens.scope_of(write)) == ("read", "write")
    assert tokens.scope_of(new_token()) is None and tokens.scope_of(None) is None and tokens.scope_of("") is None
    assert tokens.scope_of(auth.token_digest(write).hex()) is None, "the digest is not a token"


@pytest.mark.parametrize("content", [None, b"write sha256:nope\n", b"\xff\xfe"], ids=["missing", "bad", "not-utf8"])
def test_a_tokens_file_that_cannot_be_read_at_start_is_invalid_input(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "tokens"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InvalidInput, match=f"tokens file {path}"):
        TokenStore(str(path))


def test_edits_are_picked_up_and_a_broken_edit_keeps_the_last_good_tokens(tmp_path: Path) -> None:
    first, second = new_token(), new_token()
    path = tmp_path / "tokens"
    path.write_text(token_line(first, "write") + "\n")
    warnings: list[str] = []
    tokens = TokenStore(str(path), warn=warnings.append)
    assert tokens.scope_of(first) == "write"
    # An atomic replace, as editors and `mv` do: a new inode.
    replacement = tmp_path / "tokens.new"
    replacement.write_text(token_line(second, "read") + "\n")
    os.replace(replacement, path)
    assert (tokens.scope_of(first), tokens.scope_of(second)) == (None, "read")
    path.write_text("read sha256:broken\n")  # an in-place edit gone wrong
    assert tokens.scope_of(second) == "read" and tokens.scope_of(second) == "read"
    assert len(warnings) == 1, "warned once per broken version, not per request"
    assert f"tokens file {path} line 1" in warnings[0] and "keeping the 1 token(s) read before" in warnings[0]
    path.unlink()
    assert tokens.scope_of(second) == "read" and "it is gone" in warnings[-1]
    path.write_text(token_line(first, "read") + "\n")
    assert (tokens.scope_of(first), tokens.scope_of(second)) == ("read", None)
