"""Several upstreams: configuration, routing by model and load, failover before the first byte
(never after), health checks and recovery, merged model lists, hot reload of the pool.

Every upstream here is a real server (the fake Ollama under uvicorn) or a port nobody listens
on, so "down" means a refused connection, as in production.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest
from gatewayctl.proxy.app import create_app
from gatewayctl.proxy.config import (
    Config,
    ConfigError,
    ServerSettings,
    UpstreamSettings,
    config_to_toml,
    parse_config_text,
)

from tests.conftest import DEFAULT_USERS, Running, key_of, make_user
from tests.fakes import FakeOllama
from tests.proxy_helpers import chat_body, openai_error, wait_for_rows, wait_until
from tests.servers import free_port, serve_in_thread

# --------------------------------------------------------------------------- configuration


def test_upstreams_parse_and_round_trip() -> None:
    text = """
[server]
max_in_flight = 4
health_interval = 2.5

[[upstreams]]
url = "http://gpu1:11434/"
models = ["llama3.2:*", "qwen2.5:0.5b"]
max_in_flight = 2

[[upstreams]]
url = "http://gpu2:8080"
kind = "openai"
"""
    config = parse_config_text(text)
    assert config.upstreams == (
        UpstreamSettings("http://gpu1:11434", ("llama3.2:*", "qwen2.5:0.5b"), 2, "ollama"),
        UpstreamSettings("http://gpu2:8080", (), None, "openai"),
    )
    assert config.server.max_in_flight == 4 and config.server.health_interval == 2.5
    written = config_to_toml(config)
    assert "[[upstreams]]" in written and "upstream =" not in written
    assert parse_config_text(written) == config


def test_a_single_server_upstream_is_still_one_upstream() -> None:
    config = parse_config_text('[server]\nupstream = "http://engine:11434/"\n')
    assert config.upstreams == ()
    assert config.effective_upstreams() == (UpstreamSettings("http://engine:11434"),)
    assert parse_config_text(config_to_toml(config)) == config


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[upstreams]]\nmodels = ["x"]\n', "[[upstreams]] #1.url: missing"),
        ('[[upstreams]]\nurl = "ftp://x"\n', "[[upstreams]] #1.url: must start with http://"),
        ('[[upstreams]]\nurl = "http://x"\nweight = 2\n', "[[upstreams]] #1.weight: unknown field"),
        ('[[upstreams]]\nurl = "http://x"\nkind = "vllm"\n', "must be 'ollama' or 'openai'"),
        ('[[upstreams]]\nurl = "http://x"\nmodels = []\n', "#1.models: must not be empty"),
        ('[[upstreams]]\nurl = "http://x"\nmodels = "x"\n', "#1.models: must be a list"),
        ('[[upstreams]]\nurl = "http://x"\nmax_in_flight = 0\n', "#1.max_in_flight: must be >="),
        (
            '[[upstreams]]\nurl = "http://x"\n[[upstreams]]\nurl = "http://x/"\n',
            "#2.url: http://x is listed twice",
        ),
        (
            '[server]\nupstream = "http://x"\n[[upstreams]]\nurl = "http://y"\n',
            "[server].upstream: not allowed together with [[upstreams]]",
        ),
        ("upstreams = 3\n", "upstreams: must be one or more [[upstreams]] tables"),
        ("[server]\nmax_queue = 0\n", "[server].max_queue: must be >= 1"),
        ("[server]\nqueue_timeout = -1\n", "[server].queue_timeout: must be >="),
        ('[server]\nhealth_interval = "5s"\n', "[server].health_interval: must be a number"),
        ("[users.a]\nconcurrency = 0\n", "[users.a].concurrency: must be >= 1"),
    ],
)
def test_bad_upstream_settings_name_the_field(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config_text(text)
    assert message in str(caught.value)


# --------------------------------------------------------------------------- harness


def _write(
    path: Path,
    upstreams: list[UpstreamSettings],
    users: dict[str, dict[str, Any]] | None = None,
    **server: Any,
) -> None:
    config = Config(
        server=ServerSettings(**server),
        users={
            name: make_user(name, **limits) for name, limits in (users or DEFAULT_USERS).items()
        },
        upstreams=tuple(upstreams),
    )
    # Replaced in one step, as the store does, so the watcher never reads half a file.
    temporary = path.with_suffix(".tmp")
    temporary.write_text(config_to_toml(config))
    os.replace(temporary, path)


@contextlib.contextmanager
def _gateway(tmp_path: Path, upstreams: list[UpstreamSettings], **server: Any) -> Iterator[Running]:
    path = tmp_path / "users.toml"
    _write(path, upstreams, **server)
    app = create_app(path)
    with serve_in_thread(app) as url:
        yield Running(url, path, app.state.gateway)


class _Engine:
    """A fake Ollama the test stops and starts again, always on the same port."""

    def __init__(self, stack: contextlib.ExitStack) -> None:
        self.fake = FakeOllama()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: contextlib.AbstractContextManager[str] | None = None
        stack.callback(self.stop)

    def start(self) -> _Engine:
        self._server = serve_in_thread(self.fake.app, port=self.port)
        self._server.__enter__()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.__exit__(None, None, None)


@contextlib.contextmanager
def _fakes(*models: tuple[str, ...]) -> Iterator[list[tuple[FakeOllama, str]]]:
    with contextlib.ExitStack() as stack:
        fakes = [FakeOllama(models=m) for m in models]
        yield [(f, stack.enter_context(serve_in_thread(f.app))) for f in fakes]


def _nobody() -> str:
    return f"http://127.0.0.1:{free_port()}"


def _chats(fake: FakeOllama) -> int:
    return len(fake.requests_to("/v1/chat/completions")) + len(fake.requests_to("/api/chat"))


def _healthy(gw: Running) -> list[bool]:
    return [u.healthy and u.checked for u in gw.gateway.pool.upstreams]


def _connect_failures(gw: Running, url: str) -> float | None:
    return gw.gateway.metrics.registry.get_sample_value(
        "gatewayctl_upstream_connect_failures_total", {"upstream": url}
    )


MODELS = ("llama3.2", "qwen2.5:0.5b", "nomic-embed-text")


# --------------------------------------------------------------------------- routing


def test_requests_go_to_an_upstream_serving_their_model(tmp_path: Path) -> None:
    with _fakes(MODELS, MODELS) as [(llama, a), (qwen, b)]:
        upstreams = [
            UpstreamSettings(a, models=("llama3.2:*",)),
            UpstreamSettings(b, models=("qwen2.5:*", "nomic-embed-text")),
        ]
        with _gateway(tmp_path, upstreams) as gw, gw.client() as client:
            for _ in range(3):
                assert client.post("/v1/chat/completions", json=chat_body()).status_code == 200
            qwen_chat = chat_body(model="qwen2.5:0.5b")
            assert client.post("/v1/chat/completions", json=qwen_chat).status_code == 200
            assert client.post("/api/chat", json={**qwen_chat, "stream": False}).status_code == 200
            embed = {"model": "nomic-embed-text", "input": "hi"}
            assert client.post("/v1/embeddings", json=embed).status_code == 200
            unknown = client.post("/v1/chat/completions", json=chat_body(model="mistral"))
            assert openai_error(unknown, 404)["code"] == "model_not_found"
            native = client.post("/api/chat", json=chat_body(model="mistral", stream=False))
            assert native.status_code == 404 and native.json() == {
                "error": "model 'mistral' not found"
            }
            shown = client.post("/api/show", json={"model": "qwen2.5:0.5b"})
            assert shown.status_code == 200
            assert client.get("/v1/models/qwen2.5:0.5b").status_code == 200
    assert (_chats(llama), _chats(qwen)) == (3, 2)
    assert qwen.requests_to("/v1/embeddings") and not llama.requests_to("/v1/embeddings")
    assert qwen.requests_to("/api/show") and not llama.requests_to("/api/show")
    assert qwen.requests_to("/v1/models/qwen2.5:0.5b")


def test_the_least_loaded_upstream_gets_the_next_request(tmp_path: Path) -> None:
    with _fakes(MODELS, MODELS) as [(first, a), (second, b)]:
        first.token_delay = second.token_delay = 0.2
        upstreams = [UpstreamSettings(a), UpstreamSettings(b)]
        with (
            _gateway(tmp_path, upstreams) as gw,
            gw.client() as client,
            client.stream("POST", "/v1/chat/completions", json=chat_body(stream=True)) as held,
        ):
            assert held.status_code == 200
            both = [first, second]
            busy = wait_until(lambda: next((f for f in both if f.streams_started == 1), None))
            idle = second if busy is first else first
            embed = {"model": "nomic-embed-text", "input": "x"}
            for _ in range(2):
                assert client.post("/v1/embeddings", json=embed).status_code == 200
            assert len(idle.requests_to("/v1/embeddings")) == 2
            assert busy.requests_to("/v1/embeddings") == []


def test_native_routes_only_go_to_ollama_upstreams(tmp_path: Path) -> None:
    with _fakes(MODELS, MODELS) as [(openai_like, a), (real_ollama, b)]:
        upstreams = [UpstreamSettings(a, kind="openai"), UpstreamSettings(b)]
        with _gateway(tmp_path, upstreams) as gw, gw.client() as client:
            native = client.post("/api/chat", json=chat_body(stream=False))
            assert native.status_code == 200
            assert client.get("/api/tags").status_code == 200
            assert client.get("/api/version").status_code == 200
            wait_until(lambda: openai_like.health_probes > 0 and real_ollama.health_probes > 0)
    assert openai_like.requests == []
    assert real_ollama.requests_to("/api/chat") and real_ollama.requests_to("/api/tags")


# --------------------------------------------------------------------------- failover


def test_requests_succeed_on_the_other_upstream_when_one_is_down(tmp_path: Path) -> None:
    with _fakes(MODELS) as [(alive, url)]:
        upstreams = [UpstreamSettings(_nobody()), UpstreamSettings(url)]
        with _gateway(tmp_path, upstreams) as gw:
            with gw.client() as client:
                for _ in range(3):
                    answer = client.post("/v1/chat/completions", json=chat_body())
                    assert answer.status_code == 200 and answer.json()["choices"]
            sdk = openai.OpenAI(base_url=gw.url + "/v1", api_key=key_of("alice"), max_retries=0)
            stream = sdk.chat.completions.create(
                model="llama3.2", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
            native = ollama.Client(
                host=gw.url, headers={"Authorization": f"Bearer {key_of('alice')}"}, timeout=10
            )
            assert native.chat(model="llama3.2", messages=[{"role": "user", "content": "x"}])
            assert [m.model for m in native.list().models] == list(MODELS)
            wait_until(lambda: _healthy(gw) == [False, True])
            rows = wait_for_rows(gw, "alice", 5)
    assert _chats(alive) == 5
    assert {(r["status"], r["outcome"]) for r in rows} == {(200, "ok")}


def test_a_refused_connection_moves_the_request_before_anything_is_sent(tmp_path: Path) -> None:
    """The first upstream was healthy at its last probe, then went away: the next request is
    refused there, which marks it down, and is served by the second."""
    with _fakes(MODELS) as [(spare, spare_url)], contextlib.ExitStack() as stack:
        engine = _Engine(stack).start()
        upstreams = [UpstreamSettings(engine.url), UpstreamSettings(spare_url)]
        gw = stack.enter_context(_gateway(tmp_path, upstreams, health_interval=600.0))
        wait_until(lambda: _healthy(gw) == [True, True])
        engine.stop()  # no probe will notice for ten minutes

        def failures() -> float | None:
            return _connect_failures(gw, engine.url)

        with gw.client() as client:
            streamed = client.post("/v1/chat/completions", json=chat_body(stream=True))
            assert streamed.status_code == 200 and b"[DONE]" in streamed.content
            assert failures() == 1
            assert _healthy(gw) == [False, True]
            for _ in range(3):  # the down one is skipped now: no new failure
                assert client.post("/v1/chat/completions", json=chat_body()).status_code == 200
            assert failures() == 1
        rows = wait_for_rows(gw, "alice", 4)
    assert _chats(spare) == 4 and _chats(engine.fake) == 0
    assert {(r["status"], r["outcome"]) for r in rows} == {(200, "ok")}


def test_the_engine_that_started_answering_is_never_retried(tmp_path: Path) -> None:
    with _fakes(MODELS, MODELS) as [(dropping, a), (spare, b)]:
        dropping.mode = "drop"  # 3 tokens (or half the JSON), then the connection is cut
        with _gateway(tmp_path, [UpstreamSettings(a), UpstreamSettings(b)]) as gw:
            wait_until(lambda: _healthy(gw) == [True, True])
            with gw.client() as client:
                streamed = client.post("/v1/chat/completions", json=chat_body(stream=True))
                assert streamed.status_code == 200
                assert b"upstream_unavailable" in streamed.content
                assert b"[DONE]" not in streamed.content
                whole = client.post("/v1/chat/completions", json=chat_body())
                assert openai_error(whole, 502)["code"] == "upstream_unavailable"
    assert _chats(dropping) == 2
    assert _chats(spare) == 0


def test_an_engine_too_slow_to_answer_is_not_retried_elsewhere(tmp_path: Path) -> None:
    with _fakes(MODELS, MODELS) as [(slow, a), (spare, b)]:
        slow.header_delay = 1.0
        upstreams = [UpstreamSettings(a), UpstreamSettings(b)]
        with _gateway(tmp_path, upstreams, read_timeout=0.3) as gw, gw.client() as client:
            wait_until(lambda: _healthy(gw) == [True, True])
            late = client.post("/v1/chat/completions", json=chat_body())
            assert openai_error(late, 504)["code"] == "upstream_timeout"
    assert (_chats(slow), _chats(spare)) == (1, 0)


# --------------------------------------------------------------------------- health


def test_a_stopped_upstream_is_marked_down_then_healthy_again_on_the_same_port(
    tmp_path: Path,
) -> None:
    with _fakes(MODELS) as [(spare, spare_url)], contextlib.ExitStack() as stack:
        engine = _Engine(stack).start()
        upstreams = [UpstreamSettings(engine.url), UpstreamSettings(spare_url)]
        gw = stack.enter_context(_gateway(tmp_path, upstreams, health_interval=0.1))
        wait_until(lambda: _healthy(gw) == [True, True])
        engine.stop()
        wait_until(lambda: _healthy(gw) == [False, True])  # seen by the probes alone
        with gw.client() as client:
            for _ in range(4):  # skipped while down: no request even tries it
                assert client.post("/v1/chat/completions", json=chat_body()).status_code == 200
            assert _connect_failures(gw, engine.url) is None
            engine.start()
            wait_until(lambda: _healthy(gw) == [True, True])
            for _ in range(4):
                assert client.post("/v1/chat/completions", json=chat_body()).status_code == 200
    assert _chats(spare) + _chats(engine.fake) == 8
    assert _chats(engine.fake) >= 1  # back in the rotation


def test_readyz_follows_the_health_of_the_upstreams(tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        engine = _Engine(stack).start()
        gw = stack.enter_context(
            _gateway(tmp_path, [UpstreamSettings(engine.url)], health_interval=0.1)
        )
        anonymous = stack.enter_context(httpx.Client(base_url=gw.url))

        def readiness(status: int) -> httpx.Response | None:
            response = anonymous.get("/readyz")
            return response if response.status_code == status else None

        ready = wait_until(lambda: readiness(200))
        assert ready.json() == {
            "status": "ready",
            "upstreams": 1,
            "healthy_upstreams": 1,
            "config_error": False,
        }
        engine.stop()
        down = wait_until(lambda: readiness(503))
        assert down.json()["status"] == "unavailable" and down.json()["healthy_upstreams"] == 0
        assert anonymous.get("/healthz").status_code == 200  # alive all the same
        engine.start()
        wait_until(lambda: readiness(200))


# --------------------------------------------------------------------------- model lists


def test_model_lists_merge_the_upstreams_and_keep_per_user_filters(tmp_path: Path) -> None:
    with _fakes(("llama3.2", "shared:1b", "hidden"), ("qwen2.5:0.5b", "shared:1b")) as [
        (_, a),
        (_, b),
    ]:
        upstreams = [UpstreamSettings(a, models=("llama3.2", "shared:*")), UpstreamSettings(b)]
        with _gateway(tmp_path, upstreams) as gw:
            with gw.client() as client:
                v1 = client.get("/v1/models").json()
                tags = client.get("/api/tags").json()
            # "hidden" is not served by a, and "shared:1b" is listed once.
            assert v1["object"] == "list"
            assert [m["id"] for m in v1["data"]] == ["llama3.2", "shared:1b", "qwen2.5:0.5b"]
            assert [m["name"] for m in tags["models"]] == ["llama3.2", "shared:1b", "qwen2.5:0.5b"]
            users = {**DEFAULT_USERS, "alice": {"models": ("qwen*",)}}
            _write(gw.config_path, upstreams, users)
            wait_until(lambda: gw.gateway.config.users["alice"].models == ("qwen*",))
            with gw.client() as client:
                only = client.get("/v1/models").json()
                only_tags = client.get("/api/tags").json()
            assert [m["id"] for m in only["data"]] == ["qwen2.5:0.5b"]
            assert [m["name"] for m in only_tags["models"]] == ["qwen2.5:0.5b"]


def test_a_model_list_with_one_upstream_down_lists_the_other(tmp_path: Path) -> None:
    with (
        _fakes(("qwen2.5:0.5b",)) as [(_, url)],
        _gateway(tmp_path, [UpstreamSettings(_nobody()), UpstreamSettings(url)]) as gw,
        gw.client() as client,
    ):
        listed = client.get("/v1/models")
        assert [m["id"] for m in listed.json()["data"]] == ["qwen2.5:0.5b"]


# --------------------------------------------------------------------------- hot reload


def test_the_pool_follows_users_toml(tmp_path: Path) -> None:
    with (
        _fakes(MODELS, MODELS) as [(old, a), (new, b)],
        _gateway(tmp_path, [UpstreamSettings(a)]) as gw,
        gw.client() as client,
    ):
        pool = gw.gateway.pool
        assert client.post("/v1/chat/completions", json=chat_body()).status_code == 200
        old.token_delay = 0.05
        with client.stream("POST", "/v1/chat/completions", json=chat_body(stream=True)) as held:
            assert held.status_code == 200
            # Reloaded while a request is in flight on the upstream that stays.
            _write(gw.config_path, [UpstreamSettings(b), UpstreamSettings(a, max_in_flight=1)])
            wait_until(lambda: [u.url for u in pool.upstreams] == [b, a])
            assert [u.in_flight for u in pool.upstreams] == [0, 1]
            assert pool.upstreams[1].cap == 1
            assert b"[DONE]" in held.read()
        assert [u.in_flight for u in pool.upstreams] == [0, 0]
        _write(gw.config_path, [UpstreamSettings(b, max_in_flight=3)])
        wait_until(lambda: [u.url for u in pool.upstreams] == [b])
        assert pool.upstreams[0].cap == 3
        for _ in range(2):
            assert client.post("/v1/chat/completions", json=chat_body()).status_code == 200
    assert (_chats(old), _chats(new)) == (2, 2)
