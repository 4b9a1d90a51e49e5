"""Metrics scraped from a running runner, and its JSON log lines."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from pathlib import Path

from tests.factories import TIMERCTL, process_env, timerctl
from tests.fixtures_http import Receiver, wait_until
from tests.polling import free_port

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def scrape(port: int) -> dict[str, float]:
    """The samples of /metrics as {'name{labels}': value}, or {} while the server is not up."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return {}
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_runner_metrics_move_and_json_logs_parse_without_secrets(receiver: Receiver, tmp_path: Path) -> None:
    port = free_port()
    db = tmp_path / "t.db"
    env = process_env(tmp_path, db=str(db), poll_interval="0.1", signing_secret=SECRET)
    log_path = tmp_path / "runner.log"
    with log_path.open("w") as log:
        runner = subprocess.Popen(
            [TIMERCTL, "serve", "runner", "--metrics-port", str(port), "--log-format", "json", "--log-level", "INFO"],
            env=env,
            stderr=log,
        )
    try:
        before = wait_until(lambda: scrape(port), timeout=15, message="/metrics to answer")
        assert before.get('timerctl_timers_fired_total{result="ok"}', 0.0) == 0.0
        assert before["timerctl_firing_lateness_seconds_count"] == 0.0
        ids = []
        for n in range(3):
            created = timerctl(
                env, "create", "--url", receiver.url(f"/m{n}") + "?token=hush-hush", "--in", "0s", "--json"
            )
            assert created.returncode == 0, created.stderr
            ids.append(json.loads(created.stdout)["timerId"])
        receiver.wait_for(3, timeout=15)
        after = wait_until(
            lambda: (m := scrape(port)).get("timerctl_timers_finished_total") == 3.0 and m,
            timeout=10,
            message="finished counter at 3",
        )
        assert after['timerctl_timers_fired_total{result="ok"}'] == 3.0
        assert after["timerctl_firing_lateness_seconds_count"] == 3.0
        assert after['timerctl_firing_lateness_seconds_bucket{le="+Inf"}'] == 3.0
        assert after["timerctl_delivery_duration_seconds_count"] == 3.0
        assert after["timerctl_deliveries_in_flight"] == 0.0
    finally:
        runner.terminate()
        assert runner.wait(timeout=20) == 0
    lines = log_path.read_text().splitlines()
    events = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= set(e) for e in events)
    fired = [e for e in events if e.get("event") == "fired"]
    assert sorted(e["timer_id"] for e in fired) == sorted(ids)
    text = log_path.read_text()
    assert "hush-hush" not in text, "webhook query strings must not be logged"
    assert SECRET not in text and SECRET.removeprefix("whsec_") not in text
    assert re.search(r"/m0\b", text), "the URL path is logged"
