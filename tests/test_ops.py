"""Operations: /healthz, /readyz, /metrics (admins only, parsed as Prometheus text), the JSON
access log, and x-request-id on every response."""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gatewayctl.proxy.app import create_app
from gatewayctl.proxy.ledger import UsageRecord
from gatewayctl.proxy.metrics import MAX_MODEL_LABELS, Metrics
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import (
    DEFAULT_USERS,
    PASSWORD,
    Running,
    StartGateway,
    key_of,
    write_config,
)
from tests.fakes import FakeOllama
from tests.proxy_helpers import (
    chat_body,
    openai_error,
    wait_for_request,
    wait_for_rows,
    wait_until,
)
from tests.servers import serve_in_thread

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(gw: Running) -> Samples:
    with gw.client("root") as admin:
        response = admin.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


# --------------------------------------------------------------------------- health


def test_healthz_needs_no_key(gw: Running) -> None:
    with httpx.Client(base_url=gw.url) as anonymous:
        response = anonymous.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])


@contextlib.contextmanager
def _another_gateway(directory: Path, upstream: str, **server: Any) -> Iterator[Running]:
    """A second gateway next to the ``gw`` fixture's, with a users.toml and ledger of its own."""
    directory.mkdir()
    path = write_config(directory / "users.toml", upstream, DEFAULT_USERS, **server)
    app = create_app(path)
    with serve_in_thread(app) as url:
        yield Running(url, path, app.state.gateway)


def test_readyz_is_ready_with_a_healthy_upstream_and_503_without(
    gw: Running, tmp_path: Path
) -> None:
    with httpx.Client(base_url=gw.url) as anonymous:
        ready = wait_until(lambda: (r := anonymous.get("/readyz")).status_code == 200 and r)
    assert ready.json()["status"] == "ready"
    with (
        _another_gateway(tmp_path / "down", "http://127.0.0.1:9", health_interval=0.1) as down,
        httpx.Client(base_url=down.url) as anonymous,
    ):
        refused = wait_until(lambda: (r := anonymous.get("/readyz")).status_code == 503 and r)
        assert refused.json()["status"] == "unavailable"
        assert "127.0.0.1" not in refused.text  # no key, so no upstream address either


# --------------------------------------------------------------------------- metrics


def test_metrics_are_for_admins_only(gw: Running) -> None:
    with httpx.Client(base_url=gw.url) as anonymous:
        assert openai_error(anonymous.get("/metrics"), 401)["code"] == "invalid_api_key"
    with gw.client("alice") as user:
        assert openai_error(user.get("/metrics"), 403)["code"] == "admin_only"
    assert value(scrape(gw), "gatewayctl_upstream_healthy", upstream=gw.gateway.upstream) in (0, 1)


def test_counters_move_as_requests_are_made(
    fake: tuple[FakeOllama, str], start_gateway: StartGateway
) -> None:
    users: dict[str, dict[str, Any]] = {
        "root": {"role": "admin"},
        "alice": {"rps": 0.001, "burst": 3},
        "bob": {"quota": 0},
    }
    with start_gateway(fake[1], users) as gw:
        before = scrape(gw)
        chat = {"user": "alice", "model": "llama3.2", "route": "/v1/chat/completions"}
        assert value(before, "gatewayctl_requests_total", **chat, status="200") == 0
        with gw.client() as client:
            assert client.post("/v1/chat/completions", json=chat_body()).status_code == 200
            streamed = client.post("/v1/chat/completions", json=chat_body(stream=True))
            assert b"[DONE]" in streamed.content
            native = client.post("/api/chat", json=chat_body(stream=False))
            assert native.status_code == 200
            limited = client.post("/v1/chat/completions", json=chat_body())
            assert openai_error(limited, 429)["code"] == "rate_limit_exceeded"
        with gw.client("bob") as bob:
            assert openai_error(bob.post("/v1/chat/completions", json=chat_body()), 403)
        wait_for_rows(gw, "alice", 3)
        requests, prompt, completion = gw.totals("alice")
        after = scrape(gw)

        assert value(after, "gatewayctl_requests_total", **chat, status="200") == 2
        # Refused before its body was read: the model is not known, and not a label.
        limited_labels = {**chat, "model": "-", "status": "429"}
        assert value(after, "gatewayctl_requests_total", **limited_labels) == 1
        native_labels = {**chat, "route": "/api/chat"}
        assert value(after, "gatewayctl_requests_total", **native_labels, status="200") == 1
        # bob's refusal is counted, with the model name he sent left out of the labels.
        refused = {"user": "bob", "model": "-", "route": "/v1/chat/completions"}
        assert value(after, "gatewayctl_requests_total", **refused, status="403") == 1
        tokens = {"user": "alice", "model": "llama3.2"}
        assert value(after, "gatewayctl_tokens_total", **tokens, kind="prompt") == prompt > 0
        assert value(after, "gatewayctl_tokens_total", **tokens, kind="completion") == completion
        assert requests == 3 and completion > 0
        assert value(after, "gatewayctl_time_to_first_token_seconds_count", model="llama3.2") == 3
        route = "/v1/chat/completions"
        assert value(after, "gatewayctl_request_duration_seconds_count", route=route) == 4
        assert value(after, "gatewayctl_rejections_total", user="alice", reason="rate_limit") == 1
        assert value(after, "gatewayctl_rejections_total", user="bob", reason="quota") == 1
        assert value(after, "gatewayctl_queue_depth") == 0
        assert not any(
            name == "gatewayctl_requests_total" and ("route", "/metrics") in labels
            for name, labels in after
        )  # scrapes are not counted
        wait_until(lambda: value(scrape(gw), "gatewayctl_upstream_healthy", upstream=fake[1]))

        # A good reload, then a rejected file.
        write_config(gw.config_path, fake[1], {**users, "carol": {}})
        wait_until(lambda: "carol" in gw.gateway.config.users)
        gw.config_path.write_text("[server]\nport = 'x'\n")
        wait_until(lambda: gw.gateway.config_error is not None)
        reloaded = scrape(gw)
        assert value(reloaded, "gatewayctl_config_reloads_total") == 1
        assert value(reloaded, "gatewayctl_config_reload_failures_total") >= 1


def test_a_registry_per_app(fake: tuple[FakeOllama, str], gw: Running, tmp_path: Path) -> None:
    with gw.client() as client:
        assert client.post("/v1/chat/completions", json=chat_body()).status_code == 200
    with _another_gateway(tmp_path / "other", fake[1]) as other:
        labels = {"user": "alice", "model": "llama3.2", "route": "/v1/chat/completions"}
        assert value(scrape(gw), "gatewayctl_requests_total", **labels, status="200") == 1
        assert value(scrape(other), "gatewayctl_requests_total", **labels, status="200") == 0


# --------------------------------------------------------------------------- access log


def _access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "gatewayctl.access"]


def test_one_access_line_per_request_without_secrets(
    gw: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gatewayctl.access")
    prompt = "the secret plans for tomorrow"
    with gw.client() as client:
        answer = client.post(
            "/v1/chat/completions",
            json=chat_body(prompt),
            headers={"x-request-id": "trace-123"},
        )
        assert answer.status_code == 200
        assert client.get("/nope").status_code == 404
    with httpx.Client(base_url=gw.url) as stranger:
        bad_key = stranger.post(
            "/api/chat",
            json=chat_body(prompt),
            headers={"authorization": "Bearer sk-not-a-real-key"},
        )
        assert bad_key.status_code == 401
    row = wait_for_request(gw, "trace-123")
    wait_until(lambda: len(_access_lines(caplog)) >= 3)
    lines = _access_lines(caplog)
    assert len(lines) == 3
    ok, missing, refused = lines
    assert set(ok) == {
        "request_id",
        "method",
        "route",
        "status",
        "user",
        "model",
        "upstream",
        "outcome",
        "prompt_tokens",
        "completion_tokens",
        "latency_ms",
        "ttft_ms",
        "queued_ms",
    }
    assert ok["request_id"] == "trace-123" and ok["method"] == "POST"
    assert (ok["route"], ok["status"], ok["user"], ok["model"]) == (
        "/v1/chat/completions",
        200,
        "alice",
        "llama3.2",
    )
    assert (ok["prompt_tokens"], ok["completion_tokens"]) == (
        row["prompt_tokens"],
        row["completion_tokens"],
    )
    assert ok["upstream"] == gw.gateway.upstream and ok["outcome"] == "ok"
    assert ok["latency_ms"] >= ok["ttft_ms"] > 0 and ok["queued_ms"] is None
    assert (missing["route"], missing["status"], missing["user"]) == ("unmatched", 404, None)
    assert (refused["route"], refused["status"], refused["user"]) == ("/api/chat", 401, None)
    assert refused["prompt_tokens"] is None
    everything = caplog.text + "".join(r.getMessage() for r in caplog.records)
    for secret in (key_of("alice"), "sk-not-a-real-key", PASSWORD, prompt, "secret plans"):
        assert secret not in everything


def test_the_access_log_can_be_switched_off(gw: Running, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="gatewayctl.access")
    with gw.client() as client:
        assert client.post("/v1/chat/completions", json=chat_body()).status_code == 200
    wait_for_rows(gw, "alice", 1)
    assert _access_lines(caplog) == []


# --------------------------------------------------------------------------- x-request-id


def test_x_request_id_is_on_every_response_and_kept_when_given(gw: Running) -> None:
    with gw.client() as client, httpx.Client(base_url=gw.url) as anonymous:
        given = {"x-request-id": "client-id-42"}
        responses = [
            client.post("/v1/chat/completions", json=chat_body(), headers=given),
            client.post("/api/chat", json=chat_body(stream=False), headers=given),
            client.post("/api/chat", json={"model": 3}, headers=given),  # 400
            client.get("/api/tags", headers=given),
            client.get("/v1/models", headers=given),
            client.get("/v1/nothing-here", headers=given),  # 404
            client.put("/v1/chat/completions", headers=given),  # 405
            anonymous.post("/v1/chat/completions", json=chat_body(), headers=given),  # 401
            anonymous.get("/healthz", headers=given),
            anonymous.get("/readyz", headers=given),
        ]
        assert [r.headers.get("x-request-id") for r in responses] == ["client-id-42"] * 10
        assert [r.headers.get_list("x-request-id") for r in responses] == [["client-id-42"]] * 10
        fresh = [client.post("/v1/chat/completions", json=chat_body()) for _ in range(2)]
        too_long = client.get("/api/tags", headers={"x-request-id": "x" * 200})
    ids = [r.headers["x-request-id"] for r in [*fresh, too_long]]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids) and len(set(ids)) == 3
    for request_id in ids[:2]:
        assert wait_for_request(gw, request_id)["user"] == "alice"


def test_the_metric_families_and_their_types(gw: Running) -> None:
    with gw.client("root") as admin:
        text = admin.get("/metrics").text
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert families["gatewayctl_requests"] == "counter"
    assert families["gatewayctl_request_duration_seconds"] == "histogram"
    assert families["gatewayctl_time_to_first_token_seconds"] == "histogram"
    assert families["gatewayctl_queue_wait_seconds"] == "histogram"
    assert families["gatewayctl_queue_depth"] == "gauge"
    assert families["gatewayctl_upstream_healthy"] == "gauge"
    assert families["gatewayctl_upstream_in_flight_requests"] == "gauge"
    assert families["gatewayctl_in_flight_requests"] == "gauge"
    assert families["gatewayctl_config_reloads"] == "counter"
    assert families["gatewayctl_rejections"] == "counter"
    assert families["gatewayctl_tokens"] == "counter"


def test_model_names_made_up_by_clients_cannot_grow_the_metrics_without_bound() -> None:
    # An OpenAI-compatible engine such as llama.cpp's server answers 200 to any model name, so
    # a status check alone cannot tell a real model from an invented one.
    metrics = Metrics()
    for i in range(MAX_MODEL_LABELS * 3):
        model = f"made-up-{i}"
        metrics.answered("alice", model, "/v1/chat/completions", 200, 0.01)
        metrics.settled(
            UsageRecord(0.0, "alice", model, "chat", 3, 4, False, 200, "ok", 10.0, 5.0, "r")
        )
    models: set[str] = set()
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            if "model" in sample.labels:
                models.add(sample.labels["model"])
    assert len(models) <= MAX_MODEL_LABELS + 1
    assert "made-up-0" in models  # the first ones keep their own series
