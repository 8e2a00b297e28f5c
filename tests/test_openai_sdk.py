"""The official openai SDK (sync and async, streaming and not) against the gateway, over real
sockets: every route works, and each refusal raises the exception class its status maps to."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.conftest import Running, Served, StartGateway, key_of
from tests.fakes import REPLY_TEXT, REPLY_TOKENS, FakeOllama
from tests.proxy_helpers import EMBED_MODEL, MODEL, wait_for_rows
from tests.servers import free_port

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello"}]


def sdk(gw: Running, user: str = "alice", key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{gw.url}/v1", api_key=key or key_of(user), max_retries=0, timeout=10
    )


def async_sdk(gw: Running, user: str = "alice") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"{gw.url}/v1", api_key=key_of(user), max_retries=0, timeout=10
    )


@pytest.fixture
def client(served: Served) -> Iterator[openai.OpenAI]:
    with sdk(served[1]) as c:
        yield c


@pytest.fixture
async def aclient(served: Served) -> AsyncIterator[openai.AsyncOpenAI]:
    async with async_sdk(served[1]) as c:
        yield c


# --------------------------------------------------------------------------- happy paths, sync


def test_chat(client: openai.OpenAI, served: Served) -> None:
    reply = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5)
    assert reply.choices[0].message.content == "".join(REPLY_TOKENS[:5])
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 5
    assert reply.usage.prompt_tokens == served[0].prompt_tokens_for({"messages": MESSAGES})


def test_chat_stream_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == REPLY_TEXT
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len(REPLY_TOKENS)


def test_chat_stream_without_usage(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks), "the injected usage-only chunk must stay hidden"


def test_completion_and_stream(client: openai.OpenAI) -> None:
    reply = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=4)
    assert reply.choices[0].text == "".join(REPLY_TOKENS[:4])
    streamed = client.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=4, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == reply.choices[0].text


def test_embeddings(client: openai.OpenAI) -> None:
    reply = client.embeddings.create(model=EMBED_MODEL, input=["one", "two words"])
    assert [d.index for d in reply.data] == [0, 1]
    assert all(len(d.embedding) == 8 for d in reply.data)
    assert reply.usage.prompt_tokens == 3


def test_models(client: openai.OpenAI, served: Served) -> None:
    assert [m.id for m in client.models.list()] == list(served[0].models)
    assert client.models.retrieve(MODEL).id == MODEL


# --------------------------------------------------------------------------- happy paths, async


async def test_async_chat_and_stream(aclient: openai.AsyncOpenAI) -> None:
    reply = await aclient.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3)
    assert reply.choices[0].message.content == "".join(REPLY_TOKENS[:3])
    stream = await aclient.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=3, stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "".join(REPLY_TOKENS[:3])


async def test_async_completions_embeddings_models(aclient: openai.AsyncOpenAI) -> None:
    completion = await aclient.completions.create(model=MODEL, prompt="Hi", max_tokens=2)
    assert completion.usage is not None and completion.usage.completion_tokens == 2
    stream = await aclient.completions.create(
        model=MODEL, prompt="Hi", max_tokens=2, stream=True, stream_options={"include_usage": True}
    )
    usages = [c.usage async for c in stream if c.usage is not None and c.usage.total_tokens]
    assert [u.completion_tokens for u in usages] == [2]
    embedding = await aclient.embeddings.create(model=EMBED_MODEL, input="hello there")
    assert embedding.usage.prompt_tokens == 2
    assert MODEL in [m.id async for m in aclient.models.list()]


# --------------------------------------------------------------------------- exception classes


def _status_error(exc: pytest.ExceptionInfo[openai.APIStatusError], status: int) -> dict[str, Any]:
    """The status, and the ``error`` object of the body (the SDK unwraps it)."""
    assert exc.value.status_code == status
    body = exc.value.body
    assert isinstance(body, dict)
    return body


def test_unknown_key_raises_authentication_error(served: Served) -> None:
    with sdk(served[1], key="sk-wrong") as client:
        with pytest.raises(openai.AuthenticationError) as exc:
            client.chat.completions.create(model=MODEL, messages=MESSAGES)
        assert exc.value.code == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            client.models.list()


def test_bad_request_raises_bad_request_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(
            model=MODEL, messages=MESSAGES, extra_body={"max_tokens": "lots"}
        )
    assert exc.value.param == "max_tokens"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="", messages=MESSAGES)


def test_unknown_model_raises_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert "no-such-model" in exc.value.message
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=MESSAGES, stream=True)
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


async def test_async_errors(served: Served) -> None:
    async with openai.AsyncOpenAI(
        base_url=f"{served[1].url}/v1", api_key="sk-wrong", max_retries=0
    ) as wrong:
        with pytest.raises(openai.AuthenticationError):
            await wrong.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    async with async_sdk(served[1]) as client:
        with pytest.raises(openai.NotFoundError):
            await client.embeddings.create(model="no-such-model", input="x")


def test_suspended_and_quota_raise_permission_denied(
    fake: tuple[FakeOllama, str], start_gateway: StartGateway
) -> None:
    users: dict[str, dict[str, Any]] = {"alice": {"suspended": True}, "bob": {"quota": 0}}
    with start_gateway(fake[1], users=users) as gw:
        with sdk(gw, "alice") as alice, pytest.raises(openai.PermissionDeniedError) as suspended:
            alice.chat.completions.create(model=MODEL, messages=MESSAGES)
        with sdk(gw, "bob") as bob, pytest.raises(openai.PermissionDeniedError) as quota:
            bob.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    assert _status_error(suspended, 403)["type"] == "permission_error"
    assert quota.value.code == "insufficient_quota"
    assert quota.value.response.headers["x-should-retry"] == "false"


def test_rate_limit_raises_rate_limit_error(
    fake: tuple[FakeOllama, str], start_gateway: StartGateway
) -> None:
    with (
        start_gateway(fake[1], users={"alice": {"rps": 0.5, "burst": 1}}) as gw,
        sdk(gw) as client,
    ):
        client.embeddings.create(model=EMBED_MODEL, input="x")
        with pytest.raises(openai.RateLimitError) as exc:
            client.embeddings.create(model=EMBED_MODEL, input="x")
    assert exc.value.code == "rate_limit_exceeded"
    assert int(exc.value.response.headers["retry-after"]) >= 1


def test_upstream_down_raises_internal_server_error_502(start_gateway: StartGateway) -> None:
    with start_gateway(f"http://127.0.0.1:{free_port()}") as gw, sdk(gw) as client:
        with pytest.raises(openai.InternalServerError) as exc:
            client.chat.completions.create(model=MODEL, messages=MESSAGES)
        assert _status_error(exc, 502)["code"] == "upstream_unavailable"
        with pytest.raises(openai.InternalServerError) as streamed:
            client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
        assert streamed.value.status_code == 502


def test_upstream_timeout_raises_internal_server_error_504(
    fake: tuple[FakeOllama, str], start_gateway: StartGateway
) -> None:
    fake[0].header_delay = 1.5
    with start_gateway(fake[1], read_timeout=0.5) as gw, sdk(gw) as client:
        with pytest.raises(openai.InternalServerError) as exc:
            client.embeddings.create(model=EMBED_MODEL, input="x")
        assert _status_error(exc, 504)["code"] == "upstream_timeout"
        wait_for_rows(gw, "alice", 1)


def test_stream_cut_by_upstream_raises_in_the_sdk(served: Served) -> None:
    served[0].mode = "drop"
    with sdk(served[1]) as client:
        stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
        received: list[str] = []
        with pytest.raises(openai.APIError) as exc:
            for chunk in stream:
                received.append(chunk.choices[0].delta.content or "")
    assert received == list(REPLY_TOKENS[:3])
    assert "upstream" in exc.value.message
