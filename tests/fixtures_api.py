"""The HTTP API in-process: FastAPI's TestClient over a TimerService on the test's SQLite file, and how its
answers look.

``client`` serves ``create_app`` over ``service``, whose clock (``clock``) the test holds, so every
``timeLeft`` is exact; ``app_client`` does the same for settings of the test's own.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.factories import settings_for
from timerctl.api import create_app
from timerctl.clock import ManualClock
from timerctl.config import Settings
from timerctl.service import TimerService

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
