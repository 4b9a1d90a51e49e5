"""``timerctl serve``: an API on an address other hosts reach needs API tokens, unless told ``--no-auth``.

Runs the CLI entry point in-process with the servers and runner loops patched out: ``serve`` stops before
anything listens, and the test asserts on what it would have started (fastapi-cli's way). The routes
with tokens are tested in ``test_api_security.py``; real ``serve`` processes in ``test_api.py``,
``test_runner_processes.py`` and ``test_ops.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.factories import api_token, token_line
from tests.fixtures_cli import Cli
from timerctl.daemons.lifecycle import StopFlag


@pytest.fixture
def served(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """What ``serve`` asked the API to do, with nothing started: no server, no runner loop, and no
    process-wide logging or signal handlers (``_start``). Even a build that should refuse cannot listen."""
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr("timerctl.cli.serve._start", lambda *args: StopFlag())
    monkeypatch.setattr("timerctl.daemons.api.serve", lambda settings, stop, **kw: calls.append(kw) or 0)
    monkeypatch.setattr("timerctl.daemons.runner.serve", lambda settings, stop: 0)
    return calls


@pytest.mark.parametrize(
    "args",
    [
        ["serve", "api", "--host", "0.0.0.0"],
        ["serve", "api", "--host", "::"],
        ["serve", "api", "--host", "api.example.com"],
        ["serve", "all", "--api", "--api-host", "10.1.2.3"],
    ],
)
def test_serve_refuses_a_non_loopback_address_without_tokens(
    cli: Cli, served: list[dict[str, Any]], args: list[str]
) -> None:
    code, out, err = cli(*args)
    assert (code, out, served) == (2, "", []) and err.count("\n") == 1, err
    assert "without authentication; set TIMERCTL_API_TOKENS_FILE" in err and "--no-auth" in err


@pytest.mark.parametrize(
    ("args", "host"),
    [
        (["serve", "api", "--host", "0.0.0.0", "--no-auth"], "0.0.0.0"),
        (["serve", "api", "--host", "::1"], "::1"),
        (["serve", "api", "--host", "localhost"], "localhost"),
    ],
)
def test_serve_api_starts_on_loopback_or_with_no_auth(
    cli: Cli, served: list[dict[str, Any]], args: list[str], host: str
) -> None:
    assert cli(*args)[0] == 0
    assert served == [{"host": host, "port": 3000, "tokens": None}]


def test_serve_with_a_tokens_file_listens_anywhere_and_refuses_no_auth_with_it(
    cli: Cli, served: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "tokens"
    path.write_text(token_line(api_token(), "write") + "\n")
    monkeypatch.setenv("TIMERCTL_API_TOKENS_FILE", str(path))
    assert cli("serve", "api", "--host", "0.0.0.0")[0] == 0
    assert len(served) == 1 and served[0]["tokens"].path == str(path)
    code, _, err = cli("serve", "api", "--host", "0.0.0.0", "--no-auth")
    assert code == 2 and "--no-auth contradicts TIMERCTL_API_TOKENS_FILE" in err and err.count("\n") == 1


@pytest.mark.parametrize("args", [["serve", "api"], ["serve", "all", "--api"]])
@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "cannot be read: No such file or directory"),
        ("write sha256:" + "0" * 64 + "\nadmin sha256:" + "1" * 64, "line 2: unknown scope 'admin'"),
    ],
    ids=["missing", "malformed"],
)
def test_serve_exits_2_with_one_line_when_the_tokens_file_is_unusable_at_start(
    cli: Cli,
    served: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    args: list[str],
    content: str | None,
    reason: str,
) -> None:
    path = tmp_path / "tokens"
    if content is not None:
        path.write_text(content)
    monkeypatch.setenv("TIMERCTL_API_TOKENS_FILE", str(path))
    code, out, err = cli(*args)
    assert (code, out, served) == (2, "", [])
    assert err.startswith(f"error: tokens file {path} ") and reason in err and err.count("\n") == 1, err
