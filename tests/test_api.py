"""The HTTP API: the route contract through FastAPI's TestClient on a SQLite store, then real processes.

The contract tests run the app in-process over a TimerService with a clock the test holds, so every
``timeLeft`` is exact (``client``, ``service`` and ``clock`` of ``tests/fixtures_api.py``). The end-to-end
tests start ``timerctl serve api`` (or ``serve all --api``) and runners as subprocesses on one store, talk to
them with httpx, and let the ``receiver`` take the webhooks. Tokens and malformed requests are in
``test_api_security.py``, the server's bounds in ``test_api_limits.py``, the routes that change a timer after
its create (update, fire, retry) and its deliveries in ``test_api_lifecycle.py``.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.factories import settings_for
from tests.fixtures_api import HOOK, OLD_BODY, api_client, created, rejected
from tests.fixtures_daemons import Daemons
from tests.fixtures_http import Receiver, wait_until
from tests.polling import free_port
from timerctl.api import create_app
from timerctl.clock import ManualClock
from timerctl.model import Status, format_instant
from timerctl.service import TimerService

# --- the route contract ---------------------------------------------------------------------------------


def test_create_with_the_old_service_body_answers_201_in_its_shape(client: TestClient, service: TimerService) -> None:
    response = client.post("/v1/timer", json=OLD_BODY)
    assert response.status_code == 201
    body = response.json()
    timer_id = body["timer"]["timerId"]
    assert body == {
        "code": 201,
        "message": "Timer Created!",
        "timer": {"timerId": timer_id, "timeLeft": 90, "timerStatus": "Scheduled"},
    }
    stored = service.store.get(timer_id)
    assert stored is not None and stored.webhook_url == HOOK
    assert stored.expiry_time == service.clock() + timedelta(seconds=90)


@pytest.mark.parametrize("prefix", ["", "/api"])
def test_get_answers_200_in_the_same_shape_with_time_counting_down(
    client: TestClient, clock: ManualClock, prefix: str
) -> None:
    timer_id = created(client, prefix)
    clock.advance(timedelta(seconds=30))
    response = client.get(f"{prefix}/v1/timer/{timer_id}")
    assert response.status_code == 200
    assert response.json() == {
        "code": 200,
        "message": "Timer Found!",
        "timer": {"timerId": timer_id, "timeLeft": 60, "timerStatus": "Scheduled"},
    }


@pytest.mark.parametrize("prefix", ["", "/api"])
def test_get_of_an_unknown_timer_is_404(client: TestClient, prefix: str) -> None:
    rejected(client.get(f"{prefix}/v1/timer/no-such-timer"), 404, "timer no-such-timer not found")


@pytest.mark.parametrize("bad_id", ["bad%20id%21", "x" * 129, "a%2Fb", "%C3%A9t%C3%A9"])
def test_a_malformed_id_is_400(client: TestClient, bad_id: str) -> None:
    rejected(client.get(f"/v1/timer/{bad_id}"), 400, "invalid timer id")
    rejected(client.delete(f"/api/v1/timer/{bad_id}"), 400, "invalid timer id")


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        pytest.param({"minutes": 60}, "minutes must be 0-59, got 60", id="minutes-60"),
        pytest.param({"seconds": 60}, "seconds must be 0-59, got 60", id="seconds-60"),
        pytest.param({"hours": -1}, "hours must be 0 or more, got -1", id="negative-hours"),
        pytest.param({"hours": "1"}, "hours must be an integer, got '1'", id="string-hours"),
        pytest.param({"minutes": 1.5}, "minutes must be an integer, got 1.5", id="float-minutes"),
        pytest.param({"seconds": True}, "seconds must be an integer, got True", id="boolean-seconds"),
        pytest.param({"hours": 10_000}, "beyond the horizon", id="beyond-horizon"),
        pytest.param({"webhookUrl": "ftp://example.com/x"}, "must start with http:// or https://", id="ftp-url"),
        pytest.param({"webhookUrl": "http://user:pw@example.com/"}, "credentials", id="url-credentials"),
        pytest.param({"webhookUrl": "/relative"}, "must start with http", id="relative-url"),
        pytest.param({"webhookUrl": 42}, "field 'url' must be a string, got int", id="url-not-a-string"),
        pytest.param({"webhookUrl": None}, "missing webhook URL", id="url-missing"),
        pytest.param({"colour": "red"}, "unknown field 'colour'", id="unknown-field"),
        pytest.param({"in": "90s"}, "give exactly one of", id="two-time-forms"),
        pytest.param({"timerId": "bad id!"}, "invalid timer id 'bad id!'", id="bad-timer-id"),
        pytest.param({"payload": "x" * 70_000}, "at most 65536 (64 KiB)", id="payload-too-big"),
    ],
)
def test_invalid_input_is_400_with_the_cli_reason(
    client: TestClient, service: TimerService, change: dict[str, Any], fragment: str
) -> None:
    body = {k: v for k, v in {**OLD_BODY, **change}.items() if v is not None}
    rejected(client.post("/v1/timer", json=body), 400, fragment)
    assert service.list() == []


@pytest.mark.parametrize(
    ("content", "headers", "fragment"),
    [
        pytest.param(b'{"seconds": 5,', {"content-type": "application/json"}, "not valid JSON", id="truncated"),
        pytest.param(b"{'seconds': 5}", {"content-type": "application/json"}, "not valid JSON", id="single-quotes"),
        pytest.param(b"not json", {"content-type": "text/plain"}, "not valid JSON", id="text-plain"),
        pytest.param(b"", {"content-type": "application/json"}, "missing request body", id="empty"),
        pytest.param(b"null", {"content-type": "application/json"}, "missing request body", id="null"),
        pytest.param(b"[1, 2]", {"content-type": "application/json"}, "must be a JSON object, got list", id="array"),
        pytest.param(b'"x"', {"content-type": "application/json"}, "must be a JSON object, got str", id="string"),
    ],
)
def test_a_malformed_body_is_400_not_422(
    client: TestClient, content: bytes, headers: dict[str, str], fragment: str
) -> None:
    rejected(client.post("/v1/timer", content=content, headers=headers), 400, fragment)


def test_json_sent_without_a_json_content_type_is_read_as_json(client: TestClient) -> None:
    """``curl -d`` sends form-encoded by default; the old service's clients do that."""
    response = client.post("/v1/timer", content=b'{"seconds": 5, "webhookUrl": "http://127.0.0.1:9/x"}')
    assert response.status_code == 201, response.text
    assert response.json()["timer"]["timeLeft"] == 5


def test_expiry_time_payload_and_timer_id_are_accepted(client: TestClient, service: TimerService) -> None:
    at = service.clock() + timedelta(hours=2)
    body = {"webhookUrl": HOOK, "expiryTime": format_instant(at), "payload": {"order": 42}, "timerId": "order-42"}
    response = client.post("/v1/timer", json=body)
    assert response.status_code == 201, response.text
    assert response.json()["timer"] == {"timerId": "order-42", "timeLeft": 7200, "timerStatus": "Scheduled"}
    stored = service.get("order-42")
    assert (stored.expiry_time, stored.payload) == (at, {"order": 42})


def test_the_cli_forms_in_url_and_id_are_accepted(client: TestClient, service: TimerService) -> None:
    response = client.post("/api/v1/timer", json={"url": HOOK, "in": "1h30m", "id": "short-names"})
    assert response.status_code == 201, response.text
    assert response.json()["timer"] == {"timerId": "short-names", "timeLeft": 5400, "timerStatus": "Scheduled"}


def test_a_past_expiry_time_is_400(client: TestClient, service: TimerService) -> None:
    past = format_instant(service.clock() - timedelta(seconds=1))
    rejected(client.post("/v1/timer", json={"webhookUrl": HOOK, "expiryTime": past}), 400, "is in the past")


def test_a_repeated_timer_id_with_the_same_spec_returns_the_existing_timer_with_200(
    client: TestClient, service: TimerService, clock: ManualClock
) -> None:
    body = {**OLD_BODY, "timerId": "retry-me", "payload": {"a": 1, "b": 2}}
    first = client.post("/v1/timer", json=body)
    assert first.status_code == 201
    clock.advance(timedelta(seconds=10))
    again = client.post("/v1/timer", json={**body, "payload": {"b": 2, "a": 1}})  # key order is no difference
    assert again.status_code == 200, again.text
    assert again.json() == {
        "code": 200,
        "message": "Timer Already Exists!",
        "timer": {"timerId": "retry-me", "timeLeft": 80, "timerStatus": "Scheduled"},
    }
    assert [t.timer_id for t in service.list()] == ["retry-me"]


def test_a_repeated_timer_id_with_a_different_spec_is_409(client: TestClient, service: TimerService) -> None:
    created(client, **OLD_BODY, timerId="taken")
    rejected(client.post("/v1/timer", json={**OLD_BODY, "seconds": 31, "timerId": "taken"}), 409, "different spec")
    assert service.get("taken").expiry_time == service.clock() + timedelta(seconds=90)


@pytest.mark.parametrize("prefix", ["", "/api"])
def test_delete_cancels_a_scheduled_timer_then_409_then_get_shows_cancelled(
    client: TestClient, service: TimerService, prefix: str
) -> None:
    timer_id = created(client)
    response = client.delete(f"{prefix}/v1/timer/{timer_id}")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "code": 200,
        "message": "Timer Cancelled!",
        "timer": {"timerId": timer_id, "timeLeft": 0, "timerStatus": "Cancelled"},  # nothing left to wait for
    }
    assert service.store.get(timer_id) is not None and service.get(timer_id).status is Status.CANCELLED
    rejected(client.delete(f"{prefix}/v1/timer/{timer_id}"), 409, "cannot be cancelled: it is Cancelled")
    assert client.get(f"{prefix}/v1/timer/{timer_id}").json()["timer"]["timerStatus"] == "Cancelled"


def test_delete_of_an_unknown_timer_is_404(client: TestClient) -> None:
    rejected(client.delete("/v1/timer/ghost"), 404, "timer ghost not found")


def test_unknown_routes_and_methods_answer_in_the_same_shape(client: TestClient) -> None:
    rejected(client.get("/v2/timer"), 404, "Not Found")
    response = client.put("/v1/timer/x")
    rejected(response, 405, "Method Not Allowed")
    assert "GET" in response.headers["allow"]


def test_docs_and_openapi_are_served_and_list_the_routes(client: TestClient) -> None:
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    spec = client.get("/openapi.json").json()
    methods = {path: set(ops) for path, ops in spec["paths"].items()}
    for prefix in ("", "/api"):
        assert methods[f"{prefix}/v1/timer"] == {"post"}
        assert methods[f"{prefix}/v1/timer/{{timerId}}"] == {"get", "patch", "delete"}
        assert methods[f"{prefix}/v1/timer/{{timerId}}/fire"] == {"post"}
        assert methods[f"{prefix}/v1/timer/{{timerId}}/retry"] == {"post"}
    assert methods["/health"] == {"get"}
    create = spec["paths"]["/v1/timer"]["post"]
    body_fields = create["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert {
        "webhookUrl",
        "hours",
        "minutes",
        "seconds",
        "in",
        "expiryTime",
        "payload",
        "timerId",
        "onFailureUrl",
    } <= set(body_fields)
    assert {"200", "201", "400", "409", "503"} <= set(create["responses"]) and "422" not in create["responses"]


def test_health_reports_each_backend_with_200_when_all_answer(client: TestClient, tmp_path: Path) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    report = response.json()
    assert set(report) == {"store", "queue", "cache"}
    assert report["store"]["backend"] == f"sqlite ({tmp_path / 'timers.db'})"
    assert (report["queue"]["backend"], report["cache"]["backend"]) == ("direct", "none")
    for part in report.values():
        assert part["ok"] is True and part["error"] is None and isinstance(part["rttMs"], int | float)


def test_health_is_503_naming_the_part_that_is_down(tmp_path: Path, dead_redis_url: str) -> None:
    settings = settings_for(tmp_path, redis_url=dead_redis_url)
    with TestClient(create_app(settings)) as client:
        response = client.get("/health")
        assert response.status_code == 503
        report = response.json()
        assert report["cache"]["ok"] is False and report["cache"]["rttMs"] is None
        assert "Redis" in report["cache"]["error"] and report["cache"]["backend"] == "redis"
        assert report["store"]["ok"] is True and report["queue"]["ok"] is True
        # A dead cache is only an accelerator gone: creates and reads still work from the store.
        timer_id = created(client)
        assert client.get(f"/v1/timer/{timer_id}").status_code == 200


def test_health_with_a_live_redis_is_200(tmp_path: Path, redis_url: str) -> None:
    with TestClient(create_app(settings_for(tmp_path, redis_url=redis_url))) as client:
        response = client.get("/health")
        assert response.status_code == 200, response.text
        cache = response.json()["cache"]
        assert (cache["backend"], cache["ok"], cache["error"]) == ("redis", True, None)


def test_an_unreachable_store_is_503(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, db=str(tmp_path))  # a directory
    with TestClient(create_app(settings)) as client:
        rejected(client.get("/v1/timer/some-id"), 503, "cannot open the timer store")
        rejected(client.post("/v1/timer", json=OLD_BODY), 503, "cannot open the timer store")
        health = client.get("/health")
        assert health.status_code == 503 and health.json()["store"]["ok"] is False


def test_an_unreachable_kafka_is_503_on_create(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, kafka_bootstrap=f"127.0.0.1:{free_port()}")
    with TestClient(create_app(settings)) as client:
        rejected(client.post("/v1/timer", json=OLD_BODY), 503, "Kafka at 127.0.0.1:")


def test_the_app_closes_the_service_it_opened(tmp_path: Path) -> None:
    app = create_app(settings_for(tmp_path))
    with TestClient(app) as client:
        created(client)
        service = app.state.backends.service
        assert service._closers
    assert service._closers == []


def test_cli_start_up_does_not_import_the_web_stack() -> None:
    code = "import sys, timerctl.cli; print(sorted({m.split('.')[0] for m in sys.modules} & {'fastapi', 'uvicorn'}))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# --- real processes -------------------------------------------------------------------------------------


def status_of(client: httpx.Client, timer_id: str) -> str:
    return str(client.get(f"/v1/timer/{timer_id}").json()["timer"]["timerStatus"])


def test_end_to_end_create_over_http_fire_by_a_runner_process(processes: Daemons, receiver: Receiver) -> None:
    port = free_port()
    api = processes.start("serve", "api", "--port", str(port))
    with api_client(processes, api, port) as client:
        body = {"hours": 0, "minutes": 0, "seconds": 1, "webhookUrl": receiver.url("/e2e")}
        response = client.post("/v1/timer", json={**body, "payload": {"order": 7}})
        assert response.status_code == 201, response.text
        timer_id = response.json()["timer"]["timerId"]
        # No runner yet, so nothing can have claimed it: the status is certain.
        assert status_of(client, timer_id) == "Scheduled"
        processes.start("serve", "runner")
        [hook] = receiver.wait_for(1, timeout=30, path="/e2e")
        assert hook.json["timerId"] == timer_id and hook.json["payload"] == {"order": 7}
        wait_until(lambda: status_of(client, timer_id) == "Finished", timeout=15, message="GET to show Finished")
        assert client.get("/health").status_code == 200
    assert processes.stop(api) == 0, processes.log(api)


def test_serve_all_with_api_serves_http_and_fires_in_one_process(processes: Daemons, receiver: Receiver) -> None:
    port = free_port()
    both = processes.start("serve", "all", "--api", "--api-port", str(port))
    with api_client(processes, both, port) as client:
        response = client.post("/api/v1/timer", json={"seconds": 1, "webhookUrl": receiver.url("/all")})
        assert response.status_code == 201, response.text
        timer_id = response.json()["timer"]["timerId"]
        [hook] = receiver.wait_for(1, timeout=30, path="/all")
        assert hook.json["timerId"] == timer_id
        wait_until(lambda: status_of(client, timer_id) == "Finished", timeout=15, message="GET to show Finished")
    assert processes.stop(both) == 0, processes.log(both)


def test_end_to_end_through_kafka_and_redis(daemons: Daemons, receiver: Receiver) -> None:
    port = free_port()
    api = daemons.start("serve", "api", "--port", str(port))
    with api_client(daemons, api, port) as client:
        health = client.get("/health")
        assert health.status_code == 200, health.text
        assert health.json()["queue"]["backend"].startswith("kafka") and health.json()["cache"]["backend"] == "redis"
        response = client.post("/v1/timer", json={"seconds": 1, "webhookUrl": receiver.url("/kafka"), "timerId": "k1"})
        assert response.status_code == 201, response.text
        # Not consumed yet (no consumer runs): the read comes from Redis, and the retry finds it there too.
        assert status_of(client, "k1") == "Scheduled"
        again = client.post("/v1/timer", json={"seconds": 1, "webhookUrl": receiver.url("/kafka"), "timerId": "k1"})
        assert (again.status_code, again.json()["message"]) == (200, "Timer Already Exists!")
        daemons.start("serve", "consumer")
        daemons.start("serve", "runner")
        [hook] = receiver.wait_for(1, timeout=30, path="/kafka")
        assert hook.json["timerId"] == "k1"
        wait_until(lambda: status_of(client, "k1") == "Finished", timeout=15, message="GET to show Finished")
    assert daemons.stop(api) == 0, daemons.log(api)


def test_serve_api_exits_3_when_the_port_is_taken(processes: Daemons) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        api = processes.start("serve", "api", "--port", str(port))
        assert api.wait(timeout=30) == 3
    assert "address already in use" in processes.log(api)
