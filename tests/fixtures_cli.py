"""The ``timerctl`` command line in-process, through ``timerctl.cli.main``, on the test's own SQLite file.

The ``cli`` fixture clears every ``TIMERCTL_*`` variable and points the config folder into ``tmp_path``, so
the machine's own settings are never read; ``TIMERCTL_DB`` is ``tmp_path/timers.db``.
"""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from tests.factories import stored_timers
from timerctl.cli import main
from timerctl.model import Timer


class Result(NamedTuple):
    """What a command did: exit code, stdout, stderr (unpacks as ``code, out, err``)."""

    code: int
    out: str
    err: str

    @property
    def json(self) -> Any:
        return json.loads(self.out)


class Cli:
    """Runs ``timerctl`` in-process and reads what it stored."""

    def __init__(self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, db: Path) -> None:
        self.capsys = capsys
        self.monkeypatch = monkeypatch
        self.db = db

    def __call__(self, *args: str, stdin: bytes | None = None) -> Result:
        """``timerctl ARGS`` with ``stdin`` as its standard input: the exit code, stdout and stderr."""
        if stdin is not None:
            self.monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
        self.capsys.readouterr()
        with pytest.raises(SystemExit) as info:
            main(list(args))
        captured = self.capsys.readouterr()
        code = info.value.code
        assert isinstance(code, int), f"exit code {code!r} is not an int"
        return Result(code, captured.out, captured.err)

    def ok_json(self, *args: str) -> Any:
        """The JSON of ``timerctl ARGS --json``, which must exit 0 with one line and nothing on stderr."""
        result = self(*args, "--json")
        assert (result.code, result.err) == (0, ""), result
        assert result.out.endswith("\n") and result.out.count("\n") == 1, result.out
        return result.json

    def stored(self) -> list[Timer]:
        return stored_timers(self.db)


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Cli:
    for name in [n for n in os.environ if n.startswith("TIMERCTL_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    db = tmp_path / "timers.db"
    monkeypatch.setenv("TIMERCTL_DB", str(db))
    return Cli(capsys, monkeypatch, db)


@pytest.fixture
def default_store(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The store commands use when no TIMERCTL_DB is set: the default, under ``XDG_DATA_HOME=tmp_path/data``."""
    monkeypatch.delenv("TIMERCTL_DB")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    return tmp_path / "data" / "timerctl" / "timers.db"


@pytest.fixture
def wide_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Commands run from ``tmp_path`` (relative ``@file`` payloads) on a terminal wide enough that rich
    tables never fold ids and URLs in the assertions."""
    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.chdir(tmp_path)


def assert_rejected(result: Result, code: int, fragment: str) -> None:
    """Exit ``code``, nothing on stdout, and exactly one ``error:`` line on stderr holding ``fragment``."""
    assert result.code == code, result
    assert result.out == "", result
    lines = result.err.splitlines()
    assert len(lines) == 1 and result.err.endswith("\n"), result.err
    assert lines[0].startswith("error: "), lines[0]
    assert fragment in lines[0], lines[0]
