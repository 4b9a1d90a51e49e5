"""``timerctl doctor``: each backend's state, a malformed Redis or MongoDB URI, a store file others can read.

In-process through ``timerctl.cli.main`` (the ``cli`` fixture), but for the live backends, where ``doctor``
runs as a process on the distributed env (Kafka and Redis). A malformed URI is refused before any connection
is tried: exit 2, one line, no password in it, from ``doctor`` as from every other command.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from tests.factories import timerctl
from tests.fixtures_cli import Cli

SECRET = "s3cr3t-Pw"


def test_doctor_reports_each_backend_and_exits_3_when_one_is_down(
    distributed_env: dict[str, str], dead_redis_url: str
) -> None:
    env = distributed_env
    ok = timerctl(env, "doctor", "--json")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    report = json.loads(ok.stdout)
    assert set(report) == {"store", "queue", "cache"}
    assert all(part["ok"] and part["rttMs"] is not None for part in report.values())
    assert report["queue"]["backend"].startswith("kafka") and report["cache"]["backend"] == "redis"
    down = timerctl({**env, "TIMERCTL_REDIS_URL": dead_redis_url}, "doctor", "--json")
    assert down.returncode == 3
    assert json.loads(down.stdout)["cache"]["ok"] is False


# --- a malformed URI ---------------------------------------------------------------------------------------


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
    cli: Cli, monkeypatch: pytest.MonkeyPatch, variable: str, uri: str, fragment: str, as_json: bool
) -> None:
    monkeypatch.setenv(variable, uri)
    code, out, err = cli("doctor", *(["--json"] if as_json else []))
    assert (code, out) == (2, "")
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert fragment in err
    assert SECRET not in err


def test_other_commands_refuse_a_malformed_uri_the_same_way(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIMERCTL_REDIS_URL", f"redis://ops:{SECRET}@cache.example.com:notaport")
    code, out, err = cli("get", "some-id", "--json")
    assert (code, out, err.count("\n")) == (2, "", 1)
    assert SECRET not in err and "***@cache.example.com:notaport" in err


# --- the store file's mode --------------------------------------------------------------------------------


@pytest.mark.usefixtures("usual_umask")
def test_doctor_warns_about_a_store_file_others_can_read(cli: Cli, default_store: Path) -> None:
    code, _, err = cli("doctor", "--json")
    assert (code, err) == (0, "")  # the store doctor just created is private: nothing to say
    default_store.chmod(0o644)
    default_store.parent.chmod(0o755)
    code, out, err = cli("doctor", "--json")
    assert code == 0 and out.startswith("{")
    assert err == (
        f"warning: the store file {default_store} is readable by group and others (mode 0644); "
        f"chmod 600 {default_store}\n"
    )
    assert stat.S_IMODE(default_store.stat().st_mode) == 0o644  # pointed out, not changed
    default_store.parent.chmod(0o700)  # nobody else can reach it: no warning
    assert cli("doctor", "--json").err == ""
