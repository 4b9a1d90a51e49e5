"""The ``timerctl`` command line as a whole: its commands and help, ``--version``, usage and configuration errors.

Run in-process through ``timerctl.cli.main`` (the ``cli`` fixture of ``tests/fixtures_cli.py``) on a throw-away
SQLite file. Each command has its own file: ``test_cli_timers.py`` (create, get, list, cancel),
``test_cli_lifecycle.py`` (update, fire, retry, purge, and what get and list show of a timer's life),
``test_cli_views.py`` (watch, stats), ``test_cli_doctor.py``, ``test_cli_verify.py``, ``test_cli_serve.py`` and
``test_cli_tokens.py`` (api-token). Each rejected input must give its exit code, exactly one ``error:`` line on
stderr and nothing on stdout.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from tests.fixtures_cli import Cli, assert_rejected
from timerctl import __version__
from timerctl.cli import app

URL = "https://hooks.example.com/fire"

pytestmark = pytest.mark.usefixtures("wide_terminal")


def test_bad_configuration_is_one_error_line(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIMERCTL_MAX_HORIZON", "forever")
    assert_rejected(cli("create", "--url", URL, "--in", "1s", "--json"), 2, "TIMERCTL_MAX_HORIZON='forever'")
    assert_rejected(cli("list", "--json"), 2, "TIMERCTL_MAX_HORIZON")


def test_unreachable_store_exits_3(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a-file").write_text("not a folder", encoding="utf-8")
    monkeypatch.setenv("TIMERCTL_DB", str(tmp_path / "a-file" / "timers.db"))
    assert_rejected(cli("create", "--url", URL, "--in", "1s", "--json"), 3, "cannot open the timer store")
    assert_rejected(cli("get", "x"), 3, "cannot open the timer store")


# --- the command tree, help, version and usage errors ---------------------------------------------------


def walk(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, command
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from walk(sub, (*path, name))


COMMANDS = list(walk(typer.main.get_command(app)))


def test_the_command_tree_has_the_documented_commands() -> None:
    paths = {" ".join(path) for path, _ in COMMANDS}
    documented = {"", "create", "get", "list", "cancel", "update", "fire", "retry", "purge", "watch", "stats"}
    assert documented | {"doctor", "demo", "verify", "serve", "serve runner", "api-token new"} <= paths


@pytest.mark.parametrize(("path", "command"), [pytest.param(p, c, id=" ".join(p) or "timerctl") for p, c in COMMANDS])
def test_every_command_has_help(path: tuple[str, ...], command: Any) -> None:
    assert (command.help or "").strip(), f"{' '.join(path) or 'timerctl'} has no help text"
    for param in command.params:
        if getattr(param, "param_type_name", "") == "option" and not param.hidden:
            assert (param.help or "").strip(), f"{' '.join(path)} {param.opts[0]} has no help text"
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_version(cli: Cli) -> None:
    result = cli("--version")
    assert (result.code, result.out, result.err) == (0, f"timerctl {__version__}\n", "")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        pytest.param(["--bogus"], "No such option: --bogus", id="unknown-root-option"),
        pytest.param(["create", "--bogus"], "No such option: --bogus", id="unknown-create-option"),
        pytest.param(["list", "--json", "--colour"], "No such option: --colour", id="unknown-list-option"),
        pytest.param(["frobnicate"], "No such command 'frobnicate'", id="unknown-command"),
        pytest.param(["get"], "Missing argument 'ID'", id="missing-argument"),
        pytest.param(["get", "a", "b"], "unexpected extra argument", id="extra-argument"),
        pytest.param(["serve", "sideways"], "No such command 'sideways'", id="unknown-sub-command"),
    ],
)
def test_usage_errors_are_one_error_line(cli: Cli, args: list[str], fragment: str) -> None:
    assert_rejected(cli(*args), 2, fragment)
