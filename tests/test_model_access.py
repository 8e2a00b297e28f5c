"""Per-user model access: glob patterns in users.toml, 403 on both dialects, lists filtered per
user, single-model lookups, hot reload, and ``gatewayctl user ... --models``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ollama
import openai
import pytest
from gatewayctl.cli import app as cli_app
from gatewayctl.proxy.accounts import add_user, set_limits
from gatewayctl.proxy.config import (
    Config,
    ConfigError,
    User,
    config_to_toml,
    load_config,
    parse_config,
    parse_config_text,
)
from gatewayctl.proxy.models import canonical, filter_model_list, model_allowed, parse_patterns
from gatewayctl.proxy.store import Store
from typer.testing import CliRunner

from tests.conftest import Running, StartGateway, key_of
from tests.fakes import FakeOllama
from tests.proxy_helpers import chat_body, openai_error, proxied, wait_for_rows, wait_until

ALLOWED = ["llama3.2:*", "nomic-embed-text"]
USERS: dict[str, dict[str, Any]] = {
    "root": {"role": "admin"},
    "alice": {"models": tuple(ALLOWED)},
}


@pytest.fixture
def restricted(fake: tuple[FakeOllama, str], start_gateway: StartGateway) -> Any:
    with start_gateway(fake[1], users=USERS) as running:
        yield running


def ollama_client(running: Running, user: str = "alice") -> ollama.Client:
    return ollama.Client(
        host=running.url, headers={"Authorization": f"Bearer {key_of(user)}"}, timeout=10
    )


def openai_client(running: Running, user: str = "alice") -> openai.OpenAI:
    return openai.OpenAI(base_url=running.url + "/v1", api_key=key_of(user), max_retries=0)


# --------------------------------------------------------------------------- matching rules


@pytest.mark.parametrize(
    ("patterns", "model", "allowed"),
    [
        (["llama3.2"], "llama3.2", True),
        (["llama3.2"], "llama3.2:latest", True),  # no tag means :latest
        (["llama3.2"], "LLaMA3.2", True),  # Ollama names are case-insensitive
        (["llama3.2"], "library/llama3.2", True),  # the default namespace is implied
        (["llama3.2"], "llama3.2:1b", False),
        (["llama3.2:latest"], "llama3.2", True),
        (["llama3.2:*"], "llama3.2", True),
        (["llama3.2:*"], "llama3.2:1b", True),
        (["llama3.2:*"], "llama3.2-vision:11b", False),
        (["llama3.2*"], "llama3.2-vision:11b", True),  # a trailing * reaches across the tag
        (["qwen2.5:0.5b"], "qwen2.5:0.5b", True),
        (["qwen2.5:0.5b"], "qwen2.5", False),
        (["*:0.5b"], "qwen2.5:0.5b", True),
        (["hf.co/org/model:Q4_K_M"], "hf.co/org/model:q4_k_m", True),
        ([], "llama3.2", False),
        (None, "anything-at-all", True),
    ],
)
def test_pattern_semantics(patterns: list[str] | None, model: str, allowed: bool) -> None:
    user = User("u", models=None if patterns is None else tuple(patterns))
    assert model_allowed(user, model) is allowed


def test_canonical_names() -> None:
    assert canonical("llama3.2") == "llama3.2:latest"
    assert canonical("registry.ollama.ai/library/Llama3.2:1B") == "llama3.2:1b"
    assert canonical("localhost:5000/me/model") == "localhost:5000/me/model:latest"


def test_filter_keeps_the_shape_of_both_lists() -> None:
    user = User("u", models=("llama3.2",))
    openai_list = {"object": "list", "data": [{"id": "llama3.2:latest"}, {"id": "qwen2.5:0.5b"}]}
    ollama_list = {"models": [{"name": "qwen2.5:0.5b"}, {"name": "llama3.2", "size": 1}]}
    assert filter_model_list(user, openai_list) == {
        "object": "list",
        "data": [{"id": "llama3.2:latest"}],
    }
    assert filter_model_list(user, ollama_list) == {"models": [{"name": "llama3.2", "size": 1}]}
    assert filter_model_list(User("v"), ollama_list) is ollama_list


def test_parse_patterns() -> None:
    assert parse_patterns(" llama3.2:* , qwen2.5:0.5b ") == ("llama3.2:*", "qwen2.5:0.5b")
    assert parse_patterns("none") is None
    with pytest.raises(ConfigError):
        parse_patterns(" , ")


# --------------------------------------------------------------------------- users.toml


def test_models_round_trip_through_users_toml() -> None:
    config = Config(users={"alice": User("alice", models=("llama3.2:*", "qwen2.5:0.5b"))})
    text = config_to_toml(config)
    assert "models = [" in text
    assert parse_config_text(text).users["alice"].models == ("llama3.2:*", "qwen2.5:0.5b")
    assert "models" not in config_to_toml(Config(users={"bob": User("bob")}))


@pytest.mark.parametrize(
    "models", ["llama3.2", [1], ["two words"], ["a,b"], [""], ["x" * 201]], ids=repr
)
def test_invalid_models_are_rejected_naming_the_field(models: Any) -> None:
    with pytest.raises(ConfigError, match=r"\[users\.alice\]\.models"):
        parse_config({"users": {"alice": {"models": models}}})


def test_accounts_take_models_as_a_list_or_as_typed() -> None:
    config, _key = add_user(Config(), "alice", limits={"models": ["llama3.2:*"]})
    assert config.users["alice"].models == ("llama3.2:*",)
    config, user = set_limits(config, "alice", {"models": "qwen2.5:0.5b, nomic-embed-text"})
    assert user.models == ("qwen2.5:0.5b", "nomic-embed-text")
    config, user = set_limits(config, "alice", {"models": None})
    assert user.models is None
    with pytest.raises(ConfigError):
        set_limits(config, "alice", {"models": ["bad pattern"]})


# --------------------------------------------------------------------------- the gateway


def test_openai_request_for_another_model_is_403_model_not_allowed(
    restricted: Running, fake: tuple[FakeOllama, str]
) -> None:
    with restricted.client() as client:
        refused = client.post("/v1/chat/completions", json=chat_body(model="qwen2.5:0.5b"))
        allowed = client.post("/v1/chat/completions", json=chat_body(model="llama3.2"))
    error = openai_error(refused, 403)
    assert (error["code"], error["type"]) == ("model_not_allowed", "permission_error")
    assert "qwen2.5:0.5b" in error["message"]
    assert refused.headers["x-should-retry"] == "false"
    assert allowed.status_code == 200
    assert [r.body["model"] for r in proxied(fake[0])] == ["llama3.2"]
    with pytest.raises(openai.PermissionDeniedError) as raised:
        openai_client(restricted).embeddings.create(model="qwen2.5:0.5b", input="x")
    assert raised.value.code == "model_not_allowed"


def test_ollama_request_for_another_model_is_403(
    restricted: Running, fake: tuple[FakeOllama, str]
) -> None:
    client = ollama_client(restricted)
    for call in (
        lambda: client.chat(model="qwen2.5:0.5b", messages=[{"role": "user", "content": "hi"}]),
        lambda: list(client.generate(model="qwen2.5:0.5b", prompt="hi", stream=True)),
        lambda: client.embed(model="nomic-embed-text:v1.5", input="hi"),
        lambda: client.embeddings(model="qwen2.5:0.5b", prompt="hi"),
        lambda: client.show("qwen2.5:0.5b"),
    ):
        with pytest.raises(ollama.ResponseError) as raised:
            call()
        assert raised.value.status_code == 403
        assert "is not available to 'alice'" in raised.value.error
    assert proxied(fake[0]) == []
    assert client.embed(model="nomic-embed-text:latest", input="hi").embeddings
    assert client.show("llama3.2").details is not None
    # Refusals never reach the ledger; the one embedding does.
    [row] = wait_for_rows(restricted, "alice", 1)
    assert row["endpoint"] == "api.embed"


def test_lists_show_only_the_users_models(
    restricted: Running, fake: tuple[FakeOllama, str]
) -> None:
    expected = ["llama3.2", "nomic-embed-text"]
    assert [m.model for m in ollama_client(restricted).list().models] == expected
    assert [m.id for m in openai_client(restricted).models.list()] == expected
    everything = list(fake[0].models)
    assert [m.model for m in ollama_client(restricted, "root").list().models] == everything
    assert [m.id for m in openai_client(restricted, "root").models.list()] == everything
    # /api/ps too: root's loaded qwen does not show in alice's list.
    ollama_client(restricted, "root").generate(model="qwen2.5:0.5b", prompt="hi")
    ollama_client(restricted).generate(model="llama3.2", prompt="hi")
    assert {m.model for m in ollama_client(restricted, "root").ps().models} == {
        "llama3.2",
        "qwen2.5:0.5b",
    }
    assert [m.model for m in ollama_client(restricted).ps().models] == ["llama3.2"]


def test_retrieving_another_model_on_v1_is_404(restricted: Running) -> None:
    client = openai_client(restricted)
    assert client.models.retrieve("llama3.2").id == "llama3.2"
    with pytest.raises(openai.NotFoundError) as raised:
        client.models.retrieve("qwen2.5:0.5b")
    assert raised.value.code == "model_not_found"
    assert openai_client(restricted, "root").models.retrieve("qwen2.5:0.5b").id == "qwen2.5:0.5b"


def test_model_list_change_is_hot_reloaded(restricted: Running) -> None:
    client = ollama_client(restricted)
    store = Store(restricted.config_path)

    def change(models: Any) -> None:
        reloads = restricted.gateway.reloads
        store.update(lambda c: set_limits(c, "alice", {"models": models}))
        wait_until(lambda: restricted.gateway.reloads > reloads)

    change("qwen2.5:*")
    assert client.chat(model="qwen2.5:0.5b", messages=[{"role": "user", "content": "hi"}]).done
    with pytest.raises(ollama.ResponseError) as raised:
        client.chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}])
    assert raised.value.status_code == 403
    assert [m.model for m in client.list().models] == ["qwen2.5:0.5b"]
    change(None)
    assert client.chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}]).done
    assert len(client.list().models) == 3


# --------------------------------------------------------------------------- the CLI


def test_cli_sets_shows_and_lifts_models(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(cli_app, [*args, "--config", str(path)])
        assert result.exit_code == 0, result.output
        return result.output

    run("init")
    run("user", "add", "bob", "--models", "llama3.2:*,qwen2.5:0.5b")
    assert load_config(path).users["bob"].models == ("llama3.2:*", "qwen2.5:0.5b")
    shown = json.loads(run("user", "show", "bob", "--json"))
    assert shown["models"] == ["llama3.2:*", "qwen2.5:0.5b"]
    assert "llama3.2:*,qwen2.5:0.5b" in run("user", "list")
    assert "models=nomic-embed-text" in run(
        "user", "set-limit", "bob", "--models", "nomic-embed-text"
    )
    assert load_config(path).users["bob"].models == ("nomic-embed-text",)
    run("user", "set-limit", "bob", "--models", "none")
    assert load_config(path).users["bob"].models is None
    bob_line = next(line for line in run("user", "list").splitlines() if line.startswith("bob"))
    assert bob_line.rstrip().endswith("all")

    bad = runner.invoke(
        cli_app, ["user", "set-limit", "bob", "--models", "a b", "--config", str(path)]
    )
    assert bad.exit_code == 1
    assert "models" in bad.output and "Traceback" not in bad.output
    empty = runner.invoke(
        cli_app, ["user", "set-limit", "bob", "--models", ",", "--config", str(path)]
    )
    assert empty.exit_code == 1 and "none" in empty.output
