"""One payload rule on every path: the compact JSON encoding may be 64 KiB; raw text is read up to 1 MiB only.

Whitespace is not payload: pretty-printed JSON over 64 KiB whose compact form fits is accepted, and a payload
whose compact form is over 64 KiB is refused with the same message whether it came from ``--payload``,
``--payload @file``, a ``--from-file`` line, the HTTP API or a Kafka record.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from timerctl.api import create_app
from timerctl.cli import main
from timerctl.config import load_settings
from timerctl.model import MAX_PAYLOAD_BYTES, InvalidInput, Timer, parse_payload
from timerctl.queue.kafka import decode
from timerctl.service import TimerService

URL = "https://hooks.example.com/p"
#: The documented bound on payload text read at all (``timerctl.model.MAX_PAYLOAD_TEXT_BYTES``).
MAX_PAYLOAD_TEXT_BYTES = 1024 * 1024
#: Compact: 6,000 strings of 9 letters, quoted and comma-separated: 6000 * 12 + 1 = 72,001 bytes (> 64 KiB).
OVER = ["abcdefghi"] * 6000
#: Compact: 5,000 of them: 60,001 bytes (fits); pretty-printed with indent=4 it is over 100 KiB.
FITS = ["abcdefghi"] * 5000


def pretty(payload: Any) -> str:
    return json.dumps(payload, indent=4)


def compact_size(payload: Any) -> int:
    return len(json.dumps(payload, separators=(",", ":")).encode())


def test_the_sizes_are_what_the_tests_need() -> None:
    assert compact_size(FITS) <= MAX_PAYLOAD_BYTES < len(pretty(FITS).encode()) < MAX_PAYLOAD_TEXT_BYTES
    assert compact_size(OVER) > MAX_PAYLOAD_BYTES


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in [n for n in os.environ if n.startswith("TIMERCTL_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("TIMERCTL_DB", str(tmp_path / "timers.db"))
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(list(args))
    captured = capsys.readouterr()
    assert isinstance(info.value.code, int)
    return info.value.code, captured.out, captured.err


def via_cli_text(capsys: pytest.CaptureFixture[str], tmp_path: Path, payload: Any) -> str | None:
    code, out, err = run(capsys, "create", "--url", URL, "--in", "1h", "--payload", pretty(payload), "--json")
    return None if code == 0 and json.loads(out)["payload"] == payload else err


def via_cli_file(capsys: pytest.CaptureFixture[str], tmp_path: Path, payload: Any) -> str | None:
    (tmp_path / "payload.json").write_text(pretty(payload), encoding="utf-8")
    code, out, err = run(
        capsys, "create", "--url", URL, "--in", "1h", "--payload", f"@{tmp_path / 'payload.json'}", "--json"
    )
    return None if code == 0 and json.loads(out)["payload"] == payload else err


def via_from_file(capsys: pytest.CaptureFixture[str], tmp_path: Path, payload: Any) -> str | None:
    # One line, but spaced out: the line's text is far larger than the payload's compact form.
    line = json.dumps({"url": URL, "in": "1h", "payload": payload}, separators=(" ,    ", " :  "))
    (tmp_path / "specs.jsonl").write_text(line + "\n", encoding="utf-8")
    code, out, _ = run(capsys, "create", "--from-file", str(tmp_path / "specs.jsonl"))
    result = json.loads(out)
    return None if code == 0 and result["payload"] == payload else result["error"]


def via_api(capsys: pytest.CaptureFixture[str], tmp_path: Path, payload: Any) -> str | None:
    settings = load_settings({"TIMERCTL_DB": str(tmp_path / "api.db"), "XDG_CONFIG_HOME": str(tmp_path / "xdg")})
    with TimerService(settings) as service, TestClient(create_app(settings, service)) as client:
        body = json.dumps({"webhookUrl": URL, "seconds": 30, "payload": payload}, indent=4)
        response = client.post("/v1/timer", content=body, headers={"content-type": "application/json"})
        if response.status_code == 201:
            assert service.get(response.json()["timer"]["timerId"]).payload == payload
            return None
    assert response.status_code == 400, response.text
    message: str = response.json()["message"]
    return message


def via_kafka_record(capsys: pytest.CaptureFixture[str], tmp_path: Path, payload: Any) -> str | None:
    now = datetime.now(UTC)
    record = Timer("k", URL, now + timedelta(hours=1), now).to_record() | {"payload": payload}
    try:
        message = decode(json.dumps({"v": 1, "op": "create", "timer": record}, indent=4).encode())
    except InvalidInput as exc:
        return str(exc)
    assert message.timer is not None and message.timer.payload == payload
    return None


PATHS = [via_cli_text, via_cli_file, via_from_file, via_api, via_kafka_record]


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.__name__)
def test_pretty_json_whose_compact_form_fits_is_accepted(
    capsys: pytest.CaptureFixture[str], cli_env: Path, path: Any
) -> None:
    assert path(capsys, cli_env, FITS) is None


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.__name__)
def test_a_compact_form_over_64KiB_is_refused_with_the_same_message(
    capsys: pytest.CaptureFixture[str], cli_env: Path, path: Any
) -> None:
    refused = path(capsys, cli_env, OVER)
    assert refused is not None
    size = compact_size(OVER)
    expected = f"payload is {size} bytes as compact JSON, over {MAX_PAYLOAD_BYTES} bytes; at most 65536 (64 KiB)"
    assert expected in refused


def test_payload_text_over_1MiB_is_refused_before_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_parse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the text was parsed")

    monkeypatch.setattr("timerctl.model.json.loads", no_parse)
    with pytest.raises(InvalidInput, match=r"^payload text is over 1048576 bytes \(1 MiB\)"):
        parse_payload("[" + " " * MAX_PAYLOAD_TEXT_BYTES + "1]")
    with pytest.raises(InvalidInput, match="over 1048576 bytes"):
        parse_payload('"' + "é" * (MAX_PAYLOAD_TEXT_BYTES // 2) + '"')  # counted in bytes, not characters


@pytest.fixture
def endless(tmp_path: Path) -> Iterator[tuple[Path, list[int]]]:
    """A FIFO a thread keeps writing to (8 MiB at most) until its reader goes; ``written`` says how much went in."""
    fifo = tmp_path / "endless"
    os.mkfifo(fifo)
    written = [0]

    def feed() -> None:
        chunk = b" " * 65536
        with open(fifo, "wb") as out:  # blocks until a reader opens it
            try:
                while written[0] < 8 * MAX_PAYLOAD_TEXT_BYTES:
                    out.write(chunk)
                    out.flush()
                    written[0] += len(chunk)
            except BrokenPipeError:
                pass

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    yield fifo, written
    if thread.is_alive():  # the reader never came or stopped early: let the writer finish
        with open(fifo, "rb") as drain:
            while drain.read(1 << 20):
                pass
    thread.join(timeout=10)


def test_payload_file_is_read_only_up_to_the_text_limit(
    capsys: pytest.CaptureFixture[str], cli_env: Path, endless: tuple[Path, list[int]]
) -> None:
    """``--payload @/dev/zero`` read everything before the fix; an endless FIFO stands in for it here."""
    fifo, written = endless
    code, out, err = run(capsys, "create", "--url", URL, "--in", "1h", "--payload", f"@{fifo}", "--json")
    assert (code, out) == (2, "")
    assert err == f"error: payload file '{fifo}' is over {MAX_PAYLOAD_TEXT_BYTES} bytes (1 MiB); not read further\n"
    # What the writer got in before the reader closed: the limit plus what a pipe buffers, never all of it.
    assert written[0] < 2 * MAX_PAYLOAD_TEXT_BYTES


def test_a_from_file_line_over_the_limit_is_one_invalid_line(capsys: pytest.CaptureFixture[str], cli_env: Path) -> None:
    good = json.dumps({"url": URL, "in": "1h", "id": "after"})
    huge = json.dumps({"url": URL, "in": "1h", "payload": " " * (MAX_PAYLOAD_TEXT_BYTES + 20_000)})
    (cli_env / "specs.jsonl").write_text(f"{huge}\n{good}\n", encoding="utf-8")
    code, out, err = run(capsys, "create", "--from-file", str(cli_env / "specs.jsonl"))
    first, second = (json.loads(line) for line in out.splitlines())
    assert first["line"] == 1 and first["error"].startswith("line is over ") and "not parsed" in first["error"]
    assert second["timerId"] == "after"
    assert code == 2 and "1 line(s) were invalid" in err
