"""``doctor`` (and every command) with a malformed Redis or MongoDB URI: exit 2, one line, no password in it.

Run in-process through ``timerctl.cli.main`` as ``tests/test_cli.py`` does; nothing here needs a server
(a malformed URI is refused before any connection is tried).
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest

from timerctl.cache.redis import RedisCache
from timerctl.cli import main

SECRET = "s3cr3t-Pw"


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("TIMERCTL_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("TIMERCTL_DB", str(tmp_path / "timers.db"))


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(list(args))
    captured = capsys.readouterr()
    assert isinstance(info.value.code, int)
    return info.value.code, captured.out, captured.err


@pytest.mark.parametrize(
    ("variable", "uri", "fragment"),
    [
        pytest.param(
            "TIMERCTL_REDIS_URL",
            "redis://:x@host:notaport",
            "Redis URL 'redis://***@host:notaport' is invalid: "
            "ValueError: Port could not be cast to integer value as 'notaport'",
            id="redis-port",
        ),
        pytest.param("TIMERCTL_REDIS_URL", f"redis://ops:{SECRET}@[bad", "Invalid IPv6 URL", id="redis-unparseable"),
        pytest.param(
            "TIMERCTL_REDIS_URL",
            f"redis://ops:{SECRET}@cache.example.com/0?password={SECRET}2&db=zero",
            "Invalid value for 'db'",
            id="redis-query-password",
        ),
        pytest.param("TIMERCTL_REDIS_URL", "http://cache.example.com", "must specify one of", id="redis-scheme"),
        pytest.param("TIMERCTL_MONGO_URI", "mongodb://[bad", "invalid MongoDB URI: an IPv6 address", id="mongo-ipv6"),
        pytest.param(
            "TIMERCTL_MONGO_URI",
            f"mongodb://ops:{SECRET}@db.example.com:notaport/t",
            "invalid MongoDB URI",
            id="mongo-port",
        ),
        pytest.param(
            "TIMERCTL_MONGO_URI",
            f"mongodb://ops:{SECRET}@db.example.com/t?tls=ture",
            "invalid MongoDB URI: The value of tls must be 'true' or 'false'",
            id="mongo-bad-option",
        ),
    ],
)
@pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
def test_doctor_with_a_malformed_uri_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    uri: str,
    fragment: str,
    as_json: bool,
) -> None:
    monkeypatch.setenv(variable, uri)
    code, out, err = run(capsys, "doctor", *(["--json"] if as_json else []))
    assert (code, out) == (2, "")
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert fragment in err
    assert SECRET not in err


def test_other_commands_refuse_a_malformed_uri_the_same_way(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIMERCTL_REDIS_URL", f"redis://ops:{SECRET}@cache.example.com:notaport")
    code, out, err = run(capsys, "get", "some-id", "--json")
    assert (code, out, err.count("\n")) == (2, "", 1)
    assert SECRET not in err and "***@cache.example.com:notaport" in err


def test_redis_errors_mask_the_password_in_every_form() -> None:
    encoded = "p%40ss%2Fword"  # p@ss/word, percent-encoded as a URL needs it
    url = f"redis://u:{encoded}@127.0.0.1:1/0?password=other"
    cache = RedisCache(url, grace=timedelta(seconds=1), warn=lambda _: None)
    assert cache._reason(ValueError(f"echo p@ss/word {encoded} other")) == "ValueError: echo *** *** ***"
    cache.close()
