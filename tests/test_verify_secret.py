"""``timerctl verify`` takes its secret from exactly one source, so it need not be typed on the command line.

Precedence: ``--secret`` or ``--secret-file`` (never both), else ``TIMERCTL_SIGNING_SECRET`` (then the config
file), as the runner reads it. Messages are signed by the spec implementation in ``tests/test_signing.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.test_signing import PREVIOUS, SECRET, header_args, message, run_verify


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("TIMERCTL_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))


def secret_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "secret"
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return str(path)


def test_secret_from_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    body, headers = message()
    path = secret_file(tmp_path, SECRET + "\n")  # as an editor or `echo` leaves it
    assert run_verify(monkeypatch, capsys, body, "--secret-file", path, *header_args(headers)) == (0, "valid\n", "")
    wrong = secret_file(tmp_path, PREVIOUS)
    code, out, err = run_verify(monkeypatch, capsys, body, "--secret-file", wrong, *header_args(headers))
    assert (code, out) == (1, "") and err.startswith("invalid:")


def test_secret_from_the_environment(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    body, headers = message()
    monkeypatch.setenv("TIMERCTL_SIGNING_SECRET", SECRET)
    assert run_verify(monkeypatch, capsys, body, *header_args(headers)) == (0, "valid\n", "")


def test_secret_from_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    body, headers = message()
    (tmp_path / "c.toml").write_text(f'signing_secret = "{SECRET}"\n', encoding="utf-8")
    monkeypatch.setenv("TIMERCTL_CONFIG", str(tmp_path / "c.toml"))
    assert run_verify(monkeypatch, capsys, body, *header_args(headers)) == (0, "valid\n", "")


@pytest.mark.parametrize("flag", ["--secret", "--secret-file"])
def test_a_flag_wins_over_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], flag: str
) -> None:
    body, headers = message()
    monkeypatch.setenv("TIMERCTL_SIGNING_SECRET", PREVIOUS)
    value = SECRET if flag == "--secret" else secret_file(tmp_path, SECRET)
    assert run_verify(monkeypatch, capsys, body, flag, value, *header_args(headers)) == (0, "valid\n", "")


@pytest.mark.parametrize(
    ("setup", "fragment"),
    [
        pytest.param("none", "no signing secret: give --secret-file PATH, set TIMERCTL_SIGNING_SECRET", id="none"),
        pytest.param("both", "give --secret or --secret-file, not both", id="both"),
        pytest.param("missing-file", "cannot be read: No such file or directory", id="missing-file"),
        pytest.param("empty-file", "secret': signing secret is empty", id="empty-file"),
        pytest.param("bad-env", "TIMERCTL_SIGNING_SECRET: signing secret is not whsec_<base64>", id="bad-env"),
    ],
)
def test_a_missing_or_ambiguous_secret_is_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], setup: str, fragment: str
) -> None:
    body, headers = message()
    args: list[str] = []
    if setup == "both":
        args = ["--secret", SECRET, "--secret-file", secret_file(tmp_path, SECRET)]
    elif setup == "missing-file":
        args = ["--secret-file", str(tmp_path / "absent")]
    elif setup == "empty-file":
        args = ["--secret-file", secret_file(tmp_path, "\n")]
    elif setup == "bad-env":
        monkeypatch.setenv("TIMERCTL_SIGNING_SECRET", "whsec_not base64!")
    code, out, err = run_verify(monkeypatch, capsys, body, *args, *header_args(headers))
    assert (code, out) == (2, "")
    assert err.startswith("error: ") and err.count("\n") == 1 and fragment in err
    assert SECRET.removeprefix("whsec_") not in err
