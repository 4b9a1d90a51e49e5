"""The HTTP API's routes for a timer's life after its create (``api.py``): ``PATCH /v1/timer/{id}``,
``POST /v1/timer/{id}/fire``, ``POST /v1/timer/{id}/retry``, ``GET /v1/timer/{id}?deliveries=true``, and a create's
``onFailureUrl``.

The route contract runs in-process over a TimerService whose clock the test holds (``tests/fixtures_api.py``), on
the test's SQLite file; a runner's part (claim, start, an attempt's outcome) is written through the store as a
runner writes it (``tests/fixtures_cli.plant``/``attempt``). Then the same routes behind API tokens, in the
OpenAPI schema, and through ``timerctl serve api`` as a process.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from tests.factories import api_token, settings_for, token_line
from tests.fixtures_api import HOOK, OLD_BODY, api_client, app_client, created, rejected
from tests.fixtures_cli import DETAIL_KEYS, attempt, plant
from tests.fixtures_daemons import Daemons
from tests.polling import free_port
from timerctl.attempts import MAX_DELIVERIES_KEPT
from timerctl.model import Status, Timer, format_instant
from timerctl.service import TimerService

OTHER = "http://127.0.0.1:9/other"
CALLBACK = "http://127.0.0.1:9/failed"
HOUR = timedelta(hours=1)


def reply(message: str, timer_id: str, time_left: int, status: str) -> dict[str, Any]:
    return {
        "code": 200,
        "message": message,
        "timer": {"timerId": timer_id, "timeLeft": time_left, "timerStatus": status},
    }


def make(client: TestClient, timer_id: str = "p-1", **body: Any) -> str:
    """A timer created through the API: ``OLD_BODY`` (90 s out) with ``timerId`` and ``body``."""
    return created(client, **{**OLD_BODY, "timerId": timer_id, **body})


def stored(service: TimerService, timer_id: str) -> Timer:
    timer = service.store.get(timer_id)
    assert timer is not None
    return timer


# --- PATCH ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "/api"])
def test_patch_changes_a_timer_in_place(client: TestClient, service: TimerService, prefix: str) -> None:
    make(client, payload={"v": 1})
    response = client.patch(f"{prefix}/v1/timer/p-1", json={"in": "2h", "url": OTHER, "payload": {"v": 2}})
    assert response.status_code == 200, response.text
    assert response.json() == reply("Timer Updated!", "p-1", 7200, "Scheduled")
    timer = stored(service, "p-1")
    assert (timer.webhook_url, timer.payload, timer.revision) == (OTHER, {"v": 2}, 1)
    assert timer.expiry_time == timer.due_at == service.clock() + 2 * HOUR


@pytest.mark.parametrize(
    ("body", "time_left", "check"),
    [
        pytest.param({"hours": 1, "minutes": 30}, 5400, {}, id="old-service-form"),
        pytest.param({"seconds": 0}, 0, {}, id="due-now"),
        pytest.param({"expiryTime": "+3h"}, 10800, {}, id="expiry-time"),
        pytest.param({"at": "+3h"}, 10800, {}, id="at"),
        pytest.param({"webhookUrl": OTHER}, 90, {"webhook_url": OTHER}, id="webhook-url-only"),
        pytest.param({"payload": None}, 90, {"payload": None}, id="payload-removed"),
        pytest.param({"payload": [1, {"a": None}]}, 90, {"payload": [1, {"a": None}]}, id="payload"),
        pytest.param({"onFailureUrl": CALLBACK}, 90, {"on_failure_url": CALLBACK}, id="callback"),
        pytest.param({"onFailureUrl": None}, 90, {"on_failure_url": None}, id="callback-removed"),
        pytest.param({"timerId": "p-1", "in": "1m"}, 60, {}, id="same-id-repeated"),
    ],
)
def test_patch_takes_any_field_of_a_create(
    client: TestClient, service: TimerService, body: dict[str, Any], time_left: int, check: dict[str, Any]
) -> None:
    make(client, payload={"v": 1}, onFailureUrl=CALLBACK)
    for key in ("expiryTime", "at"):
        if body.get(key) == "+3h":
            body = {**body, key: format_instant(service.clock() + 3 * HOUR)}
    response = client.patch("/v1/timer/p-1", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["timer"]["timeLeft"] == time_left
    timer = stored(service, "p-1")
    assert {name: getattr(timer, name) for name in check} == check


def past(service: TimerService) -> str:
    return format_instant(service.clock() - timedelta(seconds=1))


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        pytest.param({}, "nothing to change; give any of at, expiryTime, hours, in, minutes", id="nothing"),
        pytest.param({"in": None}, "nothing to change", id="only-nulls"),
        pytest.param({"in": "1s", "seconds": 5}, "give at most one of --in", id="two-time-forms"),
        pytest.param({"minutes": 60}, "minutes must be 0-59, got 60", id="minutes-60"),
        pytest.param({"hours": "1"}, "hours must be an integer, got '1'", id="string-hours"),
        pytest.param({"in": "-5s"}, "is negative", id="negative-in"),
        pytest.param({"in": "366d"}, "beyond the horizon", id="beyond-horizon"),
        pytest.param({"in": 90}, "field 'in' must be a string, got int", id="in-not-a-string"),
        pytest.param({"webhookUrl": "ftp://example.com/x"}, "must start with http:// or https://", id="ftp-url"),
        pytest.param({"url": None}, "the webhook URL cannot be removed", id="url-removed"),
        pytest.param({"url": OTHER, "webhookUrl": OTHER}, "give either 'url' or 'webhookUrl', not both", id="url-2"),
        pytest.param({"onFailureUrl": 5}, "field 'onFailureUrl' must be a string, got int", id="callback-int"),
        pytest.param({"onFailureUrl": "ftp://x/y"}, "must start with http:// or https://", id="callback-ftp"),
        pytest.param({"colour": "red"}, "unknown field 'colour'", id="unknown-field"),
        pytest.param({"timerId": "other", "in": "1m"}, "the timer updated is 'p-1'; ids cannot change", id="new-id"),
        pytest.param({"payload": "x" * 70_000}, "at most 65536 (64 KiB)", id="payload-too-big"),
        pytest.param({"at": "yesterday"}, "invalid time 'yesterday'", id="garbage-at"),
    ],
)
def test_patch_refuses_bad_input_with_400_and_changes_nothing(
    client: TestClient, service: TimerService, body: dict[str, Any], fragment: str
) -> None:
    make(client)
    before = stored(service, "p-1")
    rejected(client.patch("/v1/timer/p-1", json=body), 400, fragment)
    assert stored(service, "p-1") == before


def test_patch_to_a_past_instant_is_400(client: TestClient, service: TimerService) -> None:
    make(client)
    rejected(client.patch("/v1/timer/p-1", json={"at": past(service)}), 400, "is in the past")


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        pytest.param(b"", "missing request body; expected a JSON object of what to change", id="empty"),
        pytest.param(b"null", "missing request body", id="null"),
        pytest.param(b"[1]", "an update must be a JSON object, got list", id="array"),
        pytest.param(b'{"in": "1m",', "request body is not valid JSON", id="truncated"),
        pytest.param(b'{"payload":' + b"[" * 200 + b"]" * 200 + b"}", "at most 128 levels", id="too-deep"),
    ],
)
def test_patch_refuses_a_malformed_body_with_400(client: TestClient, content: bytes, fragment: str) -> None:
    make(client)
    rejected(client.patch("/v1/timer/p-1", content=content), 400, fragment)


TIME_FIELDS = {"in", "at", "expiryTime", "hours", "minutes", "seconds"}


@pytest.mark.parametrize(
    "field",
    [
        pytest.param({"minutes": 75}, id="minutes-75"),
        pytest.param({"hours": 1.5}, id="float-hours"),
        pytest.param({"in": "5m1h"}, id="misordered-units"),
        pytest.param({"in": "-5s"}, id="negative-in"),
        pytest.param({"at": "yesterday"}, id="garbage-at"),
        pytest.param({"expiryTime": "9000-01-01T00:00:00Z"}, id="beyond-horizon"),
        pytest.param({"webhookUrl": "http://user:pw@example.com/"}, id="url-credentials"),
        pytest.param({"payload": "x" * 70_000}, id="payload-too-big"),
        pytest.param({"onFailureUrl": "ftp://example.com/x"}, id="ftp-callback"),
    ],
)
def test_patch_and_create_refuse_a_field_alike(client: TestClient, field: dict[str, Any]) -> None:
    make(client)
    create = {"webhookUrl": HOOK, **({} if TIME_FIELDS & set(field) else {"in": "1h"}), **field}
    as_create = client.post("/v1/timer", json=create)
    as_update = client.patch("/v1/timer/p-1", json=field)
    assert (as_create.status_code, as_update.status_code) == (400, 400), as_create.text
    assert as_create.json() == as_update.json()


# --- fire -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "/api"])
def test_fire_makes_a_timer_due_now(client: TestClient, service: TimerService, prefix: str) -> None:
    make(client)
    response = client.post(f"{prefix}/v1/timer/p-1/fire")
    assert response.status_code == 200, response.text
    assert response.json() == reply("Timer Due Now!", "p-1", 0, "Scheduled")
    timer = stored(service, "p-1")
    assert (timer.due_at, timer.expiry_time) == (service.clock(), service.clock() + timedelta(seconds=90))


def test_fire_brings_a_retrying_timer_forward(client: TestClient, service: TimerService) -> None:
    plant(service.store, Status.RETRYING, "r-1", service.clock())
    assert client.get("/v1/timer/r-1").json() == reply("Timer Found!", "r-1", 3600, "Retrying")
    assert client.post("/v1/timer/r-1/fire").json() == reply("Timer Due Now!", "r-1", 0, "Retrying")


# --- retry ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "time_left"),
    [
        pytest.param({}, 0, id="no-body"),
        pytest.param({"json": {}}, 0, id="empty-object"),
        pytest.param({"content": b"null"}, 0, id="null"),
        pytest.param({"json": {"in": "10m"}}, 600, id="in"),
        pytest.param({"json": {"in": "0s"}}, 0, id="in-0s"),
        pytest.param({"json": {"at": "+1h"}}, 3600, id="at"),
    ],
)
@pytest.mark.parametrize("prefix", ["", "/api"])
def test_retry_schedules_a_failed_timer_again(
    client: TestClient, service: TimerService, kwargs: dict[str, Any], time_left: int, prefix: str
) -> None:
    plant(service.store, Status.FAILED, "x-1", service.clock() - HOUR)
    if kwargs.get("json", {}).get("at") == "+1h":
        kwargs = {"json": {"at": format_instant(service.clock() + HOUR)}}
    response = client.post(f"{prefix}/v1/timer/x-1/retry", **kwargs)
    assert response.status_code == 200, response.text
    assert response.json() == reply("Timer Retried!", "x-1", time_left, "Scheduled")
    timer = stored(service, "x-1")
    assert (timer.attempts, timer.delivery_count, timer.ended_at) == (0, 1, None)
    assert timer.due_at == service.clock() + timedelta(seconds=time_left)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        pytest.param(b'{"in": "soon"}', "invalid duration 'soon'", id="bad-in"),
        pytest.param(b'{"in": "-1m"}', "is negative", id="negative-in"),
        pytest.param(b'{"in": 5}', "field 'in' must be a string, got int", id="in-int"),
        pytest.param(b'{"in": "1m", "at": "2030-01-01T00:00:00Z"}', "give at most one of --in", id="in-and-at"),
        pytest.param(b'{"hours": 1}', "unknown field 'hours'; accepted: at, in", id="unknown-field"),
        pytest.param(b"[1]", "a retry must be a JSON object, got list", id="array"),
        pytest.param(b"{", "request body is not valid JSON", id="truncated"),
    ],
)
def test_retry_refuses_bad_input_with_400(
    client: TestClient, service: TimerService, content: bytes, fragment: str
) -> None:
    before = plant(service.store, Status.FAILED, "x-2", service.clock() - HOUR)
    rejected(client.post("/v1/timer/x-2/retry", content=content), 400, fragment)
    assert stored(service, "x-2") == before


def test_retry_at_a_past_instant_is_400(client: TestClient, service: TimerService) -> None:
    plant(service.store, Status.FAILED, "x-3", service.clock() - HOUR)
    rejected(client.post("/v1/timer/x-3/retry", json={"at": past(service)}), 400, "is in the past")


# --- wrong state, unknown and malformed ids ------------------------------------------------------------------


def refusal(status: Status, action: str) -> str:
    why = "its POST has already started" if status is Status.RUNNING else f"it is {status.value}"
    return f"timer w-1 cannot be {action}: {why}; only a Scheduled or Retrying timer can"


@pytest.mark.parametrize(
    "status", [pytest.param(s, id=s.value) for s in (Status.RUNNING, Status.FINISHED, Status.FAILED, Status.CANCELLED)]
)
def test_changes_of_a_running_or_ended_timer_are_409(client: TestClient, service: TimerService, status: Status) -> None:
    before = plant(service.store, status, "w-1", service.clock())
    rejected(client.patch("/v1/timer/w-1", json={"in": "1h"}), 409, refusal(status, "updated"))
    rejected(client.post("/v1/timer/w-1/fire"), 409, refusal(status, "fired now"))
    rejected(client.delete("/v1/timer/w-1"), 409, refusal(status, "cancelled"))
    assert stored(service, "w-1") == before


def changed_total(op: str) -> float:
    return REGISTRY.get_sample_value("timerctl_timers_changed_total", {"op": op}) or 0.0


def test_changes_made_are_counted_by_op_and_refused_ones_are_not(client: TestClient, service: TimerService) -> None:
    before = {op: changed_total(op) for op in ("update", "fire", "cancel", "retry")}
    make(client)
    assert client.patch("/v1/timer/p-1", json={"in": "1h"}).status_code == 200
    assert client.post("/v1/timer/p-1/fire").status_code == 200
    assert client.delete("/v1/timer/p-1").status_code == 200
    assert client.post("/v1/timer/p-1/retry").status_code == 409
    after = {op: changed_total(op) - before[op] for op in before}
    assert after == {"update": 1, "fire": 1, "cancel": 1, "retry": 0}


@pytest.mark.parametrize("status", [pytest.param(s, id=s.value) for s in Status if s is not Status.FAILED])
def test_retry_of_a_timer_that_is_not_failed_is_409(client: TestClient, service: TimerService, status: Status) -> None:
    before = plant(service.store, status, "w-2", service.clock())
    message = f"timer w-2 cannot be retried: it is {status.value}; only a Failed timer can"
    rejected(client.post("/v1/timer/w-2/retry"), 409, message)
    assert stored(service, "w-2") == before


def test_unknown_timers_are_404_and_malformed_ids_400(client: TestClient) -> None:
    for method, suffix, body in (("PATCH", "", {"in": "1m"}), ("POST", "/fire", None), ("POST", "/retry", None)):
        rejected(client.request(method, f"/v1/timer/ghost{suffix}", json=body), 404, "timer ghost not found")
        rejected(client.request(method, f"/v1/timer/bad%20id{suffix}", json=body), 400, "invalid timer id")
        rejected(client.request(method, f"/v1/timer/a%2Fb{suffix}", json=body), 400, "invalid timer id")
    rejected(client.get("/v1/timer/ghost?deliveries=true"), 404, "timer ghost not found")


# --- deliveries ------------------------------------------------------------------------------------------


def test_get_with_deliveries_answers_every_field_and_the_attempts(client: TestClient, service: TimerService) -> None:
    start = service.clock() - HOUR
    plant(service.store, Status.SCHEDULED, "d-1", start)
    second, third = start + timedelta(seconds=1), start + timedelta(seconds=3)
    attempt(service.store, "d-1", Status.RETRYING, start, code=500, response="oops", retry_at=second)
    attempt(service.store, "d-1", Status.RETRYING, second, error="timed out after 10s", retry_at=third)
    attempt(service.store, "d-1", Status.FINISHED, third, code=200, response="ok")
    plain = client.get("/v1/timer/d-1")
    assert plain.json() == reply("Timer Found!", "d-1", 0, "Finished")
    assert client.get("/v1/timer/d-1?deliveries=false").json() == plain.json()
    response = client.get("/api/v1/timer/d-1", params={"deliveries": "true"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["code"], body["message"]) == (200, "Timer Found!")
    detail = body["timer"]
    assert set(detail) == DETAIL_KEYS
    assert detail["deliveries"] == [
        {
            "attempt": 1,
            "at": format_instant(start),
            "durationMs": 25,
            "statusCode": 500,
            "error": "HTTP 500",
            "response": "oops",
        },
        {
            "attempt": 2,
            "at": format_instant(second),
            "durationMs": 25,
            "statusCode": None,
            "error": "timed out after 10s",
            "response": None,
        },
        {
            "attempt": 3,
            "at": format_instant(third),
            "durationMs": 25,
            "statusCode": 200,
            "error": None,
            "response": "ok",
        },
    ]
    assert (detail["deliveriesOmitted"], detail["deliveryCount"], detail["attempts"]) == (0, 3, 3)
    assert (detail["timerStatus"], detail["endedAt"], detail["firedAt"]) == (
        "Finished",
        format_instant(third),
        format_instant(third),
    )
    assert detail == {
        **service.get("d-1").to_json(service.clock()),
        "deliveries": detail["deliveries"],
        "deliveriesOmitted": 0,
    }


def test_get_with_deliveries_keeps_the_most_recent_and_counts_the_rest(
    client: TestClient, service: TimerService
) -> None:
    start = service.clock() - HOUR
    plant(service.store, Status.SCHEDULED, "d-2", start)
    total = MAX_DELIVERIES_KEPT + 3
    for n in range(1, total):
        at = start + timedelta(seconds=n)
        attempt(service.store, "d-2", Status.RETRYING, at, code=502, retry_at=at + timedelta(seconds=1))
    attempt(service.store, "d-2", Status.FAILED, start + timedelta(seconds=total), code=500)
    detail = client.get("/v1/timer/d-2?deliveries=1").json()["timer"]
    assert [d["attempt"] for d in detail["deliveries"]] == list(range(4, total + 1))
    assert (detail["deliveriesOmitted"], detail["deliveryCount"], detail["timerStatus"]) == (3, total, "Failed")


def test_get_with_deliveries_of_a_timer_never_attempted(client: TestClient) -> None:
    make(client, "d-3")
    detail = client.get("/v1/timer/d-3?deliveries=true").json()["timer"]
    assert (detail["deliveries"], detail["deliveriesOmitted"], detail["nextAttemptAt"]) == ([], 0, detail["expiryTime"])
    rejected(client.get("/v1/timer/d-3?deliveries=perhaps"), 400, "deliveries")


# --- create with a failure callback -------------------------------------------------------------------------


def test_create_takes_a_failure_callback(client: TestClient, service: TimerService) -> None:
    make(client, "cb-1", onFailureUrl=CALLBACK)
    assert stored(service, "cb-1").on_failure_url == CALLBACK
    again = client.post("/v1/timer", json={**OLD_BODY, "timerId": "cb-1", "onFailureUrl": CALLBACK})
    assert again.status_code == 200, again.text
    rejected(client.post("/v1/timer", json={**OLD_BODY, "timerId": "cb-1"}), 409, "different spec")
    rejected(client.post("/v1/timer", json={**OLD_BODY, "onFailureUrl": "ftp://x/y"}), 400, "http:// or https://")
    rejected(
        client.post("/v1/timer", json={**OLD_BODY, "onFailureUrl": 1}), 400, "field 'onFailureUrl' must be a string"
    )
    assert client.get("/v1/timer/cb-1?deliveries=true").json()["timer"]["onFailureUrl"] == CALLBACK


# --- tokens and the schema ---------------------------------------------------------------------------------


def test_the_new_routes_need_a_write_token(tmp_path: Path) -> None:
    read, write = api_token(), api_token()
    (tmp_path / "tokens").write_text(f"{token_line(read, 'read')}\n{token_line(write, 'write')}\n")
    with app_client(settings_for(tmp_path, api_tokens_file=str(tmp_path / "tokens"))) as client:
        as_reader, as_writer = ({"Authorization": f"Bearer {t}"} for t in (read, write))
        assert client.post("/v1/timer", json={**OLD_BODY, "timerId": "k-1"}, headers=as_writer).status_code == 201
        changes = [
            ("PATCH", "/v1/timer/k-1", {"in": "1h"}),
            ("POST", "/v1/timer/k-1/fire", None),
            ("POST", "/v1/timer/k-1/retry", None),
        ]
        for method, path, body in changes:
            rejected(client.request(method, path, json=body), 401, "missing API token")
            response = client.request(method, path, json=body, headers=as_reader)
            rejected(response, 403, f"this API token has scope read; {method} needs scope write")
        detail = client.get("/v1/timer/k-1?deliveries=true", headers=as_reader)
        assert detail.status_code == 200 and detail.json()["timer"]["timerId"] == "k-1"
        assert client.patch("/v1/timer/k-1", json={"in": "1h"}, headers=as_writer).status_code == 200
        assert client.post("/v1/timer/k-1/fire", headers=as_writer).status_code == 200
        rejected(client.post("/v1/timer/k-1/retry", headers=as_writer), 409, "only a Failed timer can")


def test_the_schema_documents_the_new_routes(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for prefix in ("", "/api"):
        patch = spec["paths"][f"{prefix}/v1/timer/{{timerId}}"]["patch"]
        fields = patch["requestBody"]["content"]["application/json"]["schema"]["properties"]
        assert {"webhookUrl", "hours", "minutes", "seconds", "in", "expiryTime", "payload", "onFailureUrl"} <= set(
            fields
        )
        assert {"200", "400", "404", "409", "503"} <= set(patch["responses"]) and "422" not in patch["responses"]
        retry = spec["paths"][f"{prefix}/v1/timer/{{timerId}}/retry"]["post"]
        assert retry["requestBody"]["required"] is False
        assert set(retry["requestBody"]["content"]["application/json"]["schema"]["properties"]) == {"in", "at"}
        assert (
            "409" in retry["responses"]
            and "409" in spec["paths"][f"{prefix}/v1/timer/{{timerId}}/fire"]["post"]["responses"]
        )
        get = spec["paths"][f"{prefix}/v1/timer/{{timerId}}"]["get"]
        assert [p["name"] for p in get["parameters"] if p["in"] == "query"] == ["deliveries"]
    detail = spec["components"]["schemas"]["TimerDetail"]["properties"]
    assert {"deliveries", "deliveriesOmitted", "nextAttemptAt", "endedAt", "deliveryCount", "onFailureUrl"} <= set(
        detail
    )
    assert set(spec["components"]["schemas"]["DeliveryOut"]["properties"]) == {
        "attempt",
        "at",
        "durationMs",
        "statusCode",
        "error",
        "response",
    }


# --- as a process -----------------------------------------------------------------------------------------


def test_serve_api_updates_fires_and_shows_a_timer(processes: Daemons) -> None:
    port = free_port()
    api = processes.start("serve", "api", "--port", str(port))
    with api_client(processes, api, port) as client:
        assert client.post("/v1/timer", json={"in": "1h", "url": HOOK, "id": "e-1"}).status_code == 201
        patched = client.patch("/v1/timer/e-1", json={"in": "2h", "payload": {"v": 2}, "onFailureUrl": CALLBACK})
        assert patched.status_code == 200, patched.text
        assert 7195 <= patched.json()["timer"]["timeLeft"] <= 7200
        fired = client.post("/v1/timer/e-1/fire")
        assert fired.json()["timer"] == {"timerId": "e-1", "timeLeft": 0, "timerStatus": "Scheduled"}
        detail = client.get("/v1/timer/e-1", params={"deliveries": "true"}).json()["timer"]
        assert (detail["payload"], detail["onFailureUrl"], detail["deliveries"]) == ({"v": 2}, CALLBACK, [])
        assert client.post("/v1/timer/e-1/retry").status_code == 409
    assert processes.stop(api) == 0, processes.log(api)
