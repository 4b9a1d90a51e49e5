"""The SQLite store holds webhook URLs and payloads: made ``0600`` (with ``-wal``/``-shm``) in folders made ``0700``.

What exists already keeps the mode its owner gave it; ``doctor`` points out a store file other users can read.
Every test fixes the umask to the usual 022, under which SQLite alone would create a world-readable file.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from timerctl.cli import main
from timerctl.stores.sqlite import SqliteStore


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    previous = os.umask(0o022)
    yield
    os.umask(previous)


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A CLI environment with no TIMERCTL_* settings and the default store under ``tmp_path/data``."""
    for name in [n for n in os.environ if n.startswith("TIMERCTL_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    return tmp_path / "data" / "timerctl" / "timers.db"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(list(args))
    captured = capsys.readouterr()
    assert isinstance(info.value.code, int)
    return info.value.code, captured.out, captured.err


def test_a_new_store_is_private_with_its_wal_and_shm(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    db = tmp_path / "new" / "deeper" / "timers.db"
    store = SqliteStore(str(db))
    store.ping()  # nothing written: the WAL files exist from the first connection on
    for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        assert path.exists(), path
        assert mode(path) == 0o600, f"{path.name} is {mode(path):04o}"
    assert mode(db.parent) == 0o700
    assert mode(db.parent.parent) == 0o700
    assert mode(tmp_path) == 0o755  # it existed: not ours to change
    store.close()


def test_existing_folders_and_files_keep_their_modes(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    store = SqliteStore(str(shared / "timers.db"))
    store.close()
    assert mode(shared) == 0o755
    assert mode(shared / "timers.db") == 0o600

    (shared / "group.db").touch()
    (shared / "group.db").chmod(0o640)
    store = SqliteStore(str(shared / "group.db"))
    store.ping()
    store.close()
    assert mode(shared / "group.db") == 0o640


def test_the_default_store_made_by_a_command_is_private(
    capsys: pytest.CaptureFixture[str], cli_env: Path, tmp_path: Path
) -> None:
    code, _, err = run(capsys, "create", "--url", "https://hooks.example.com/x", "--in", "1h", "--json")
    assert (code, err) == (0, "")
    assert mode(cli_env) == 0o600
    assert mode(cli_env.parent) == 0o700  # data/timerctl
    assert mode(tmp_path / "data") == 0o700  # XDG_DATA_HOME did not exist either


def test_doctor_warns_about_a_store_file_others_can_read(capsys: pytest.CaptureFixture[str], cli_env: Path) -> None:
    code, _, err = run(capsys, "doctor", "--json")
    assert (code, err) == (0, "")  # the store doctor just created is private: nothing to say
    cli_env.chmod(0o644)
    cli_env.parent.chmod(0o755)
    code, out, err = run(capsys, "doctor", "--json")
    assert code == 0 and out.startswith("{")
    assert err == (
        f"warning: the store file {cli_env} is readable by group and others (mode 0644); chmod 600 {cli_env}\n"
    )
    assert mode(cli_env) == 0o644  # pointed out, not changed
    cli_env.parent.chmod(0o700)  # nobody else can reach it: no warning
    assert run(capsys, "doctor", "--json")[2] == ""
