"""``timerctl api-token new``: a new API token, shown once, and the tokens-file line that accepts it.

The tokens file itself (``timerctl.auth``) is tested in ``tests/test_auth.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fixtures_cli import Cli
from timerctl import auth
from timerctl.auth import TokenStore, parse_tokens


def test_api_token_new_json_prints_a_token_and_the_line_that_accepts_it(cli: Cli, tmp_path: Path) -> None:
    code, out, err = cli("api-token", "new", "--scope", "write", "--label", "ci", "--json")
    assert (code, err) == (0, "") and out.count("\n") == 1
    printed = json.loads(out)
    assert set(printed) == {"token", "line"} and printed["token"].startswith("tmr_")
    assert printed["token"] not in printed["line"] and printed["line"].endswith(" ci")
    path = tmp_path / "tokens"
    path.write_text(printed["line"] + "\n")
    assert TokenStore(str(path)).scope_of(printed["token"]) == "write"
    again = json.loads(cli("api-token", "new", "--json")[1])
    assert again["token"] != printed["token"] and again["line"].startswith("read sha256:"), "read by default"


def test_api_token_new_for_people_shows_the_token_once_and_the_line(cli: Cli) -> None:
    code, out, err = cli("api-token", "new", "--scope", "read")
    assert (code, err) == (0, "")
    [token] = [word for word in out.split() if word.startswith("tmr_")]
    assert out.count(token) == 1 and "Authorization: Bearer" in out
    [line] = [text.strip() for text in out.splitlines() if text.strip().startswith("read sha256:")]
    assert parse_tokens(line)[0].digest == auth.token_digest(token)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [(["--scope", "admin"], "--scope must be read or write, got 'admin'"), (["--label", "a\nb"], "one line")],
)
def test_api_token_new_refuses_a_bad_scope_or_label(cli: Cli, args: list[str], fragment: str) -> None:
    code, out, err = cli("api-token", "new", *args)
    assert (code, out) == (2, "") and err.count("\n") == 1 and err.startswith("error: ") and fragment in err
