"""The HTTP API in-process: FastAPI's TestClient over a TimerService on the test's SQLite file, and how its
answers look.

``client`` serves ``create_app`` over ``service``, whose clock (``clock``) the test holds, so every
``timeLeft`` is exact; ``app_client`` does the same for settings of the test's own. ``processes`` starts
``timerctl serve api`` (and runners) as processes on the test's store, and ``api_client`` talks to one.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.factories import process_env, settings_for
from tests.polling import wait_for
from timerctl.api import create_app
from timerctl.clock import ManualClock
from timerctl.config import Settings
from timerctl.service import TimerService

if TYPE_CHECKING:  # a plugin loaded after this one: imported here, pytest could not rewrite its asserts
    from tests.fixtures_daemons import Daemons

HOOK = "http://127.0.0.1:9/hook"
#: A create in the shape the old HTTP service took: 90 s from now.
OLD_BODY = {"hours": 0, "minutes": 1, "seconds": 30, "webhookUrl": HOOK}


@pytest.fixture
def clock() -> ManualClock:
    """A clock the test moves by hand, from the real now in whole seconds."""
    return ManualClock(datetime.now(UTC).replace(microsecond=0))


@pytest.fixture
def service(tmp_path: Path, clock: ManualClock) -> Iterator[TimerService]:
    svc = TimerService(settings_for(tmp_path), clock=clock)
    yield svc
    svc.close()


@pytest.fixture
def client(service: TimerService) -> Iterator[TestClient]:
    with TestClient(create_app(service.settings, service)) as c:
        yield c


@contextmanager
def app_client(settings: Settings) -> Iterator[TestClient]:
    """A client of the app over a TimerService of ``settings`` (the real clock); both closed on exit."""
    with TimerService(settings) as service, TestClient(create_app(settings, service)) as client:
        yield client


def created(client: TestClient, prefix: str = "", **body: Any) -> str:
    """The id of a timer created through ``client`` (``OLD_BODY`` unless ``body``), which must answer 201."""
    response = client.post(f"{prefix}/v1/timer", json=body or OLD_BODY)
    assert response.status_code == 201, response.text
    timer_id: str = response.json()["timer"]["timerId"]
    return timer_id


def rejected(response: httpx.Response, status: int, fragment: str) -> None:
    """``status`` with the one-line ``{"code", "message"}`` body, the message holding ``fragment``."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"code", "message"} and body["code"] == status
    assert fragment in body["message"] and "\n" not in body["message"]


# --- the API as a process ------------------------------------------------------------------------------


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Daemons]:
    from tests.fixtures_daemons import Daemons

    procs = Daemons(process_env(tmp_path, poll_interval="0.2", retry_first_delay="0.2"), tmp_path)
    yield procs
    procs.stop_all()


@contextlib.contextmanager
def api_client(procs: Daemons, proc: subprocess.Popen[str], port: int) -> Iterator[httpx.Client]:
    """A client for the API at ``port`` once its /health answers; fails with the server's log if it died."""
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:

        def answers() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"the API exited with {proc.returncode}: {procs.log(proc)}")
            try:
                return client.get("/health").status_code in (200, 503)
            except httpx.TransportError:
                return False

        wait_for(answers, 30, f"the API on port {port} to answer")
        yield client
