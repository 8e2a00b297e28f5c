"""Malformed requests on every route, both dialects and the web UI API: never a 5xx made by the
gateway itself.

A real gateway in front of the fake Ollama, both on real sockets. Each app is wrapped in a
recorder of the exceptions that escape it: a request fails the test when an exception escaped
the gateway, or when the gateway answered 500 without the fake having failed first (a 500 the
engine itself sent passes through, as it should). 502 and 504 are the gateway's word for an
engine that failed, so a request the fake could not digest may end that way.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from gatewayctl.proxy.app import create_app
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import PASSWORD, key_of, write_config
from tests.fakes import FakeOllama
from tests.servers import serve_in_thread
from tests.webui_client import WebClient, logged_in

USERS: dict[str, dict[str, Any]] = {
    "root": {"role": "admin"},
    "alice": {},
    "bob": {"quota": 10**12, "max_tokens": 16, "concurrency": 4},
    "carol": {},  # the web UI fuzz edits this one
}
FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class Recorder:
    """An ASGI app that notes every exception escaping the app it wraps."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.errors: list[BaseException] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await self.app(scope, receive, send)
        except Exception as exc:
            self.errors.append(exc)
            raise


@dataclass
class Target:
    url: str
    gateway: Recorder
    engine: Recorder
    admin: WebClient
    user: WebClient
    problems: list[str] = field(default_factory=list)

    def check(self, response: httpx.Response | None, what: str, engine_errors: int) -> None:
        if self.gateway.errors:
            error = self.gateway.errors.pop()
            self.problems.append(f"{what}: {type(error).__name__}: {error}")
        elif response is not None and response.status_code == 500:
            if len(self.engine.errors) == engine_errors:
                self.problems.append(f"{what}: 500 {response.text[:200]}")
        elif response is not None and response.status_code > 500:
            assert response.status_code in (502, 504), (what, response.text)

    def send(self, client: httpx.Client, method: str, path: str, **kwargs: Any) -> None:
        engine_errors = len(self.engine.errors)
        what = f"{method} {path} {str(kwargs)[:300]}"
        try:
            response: httpx.Response | None = client.request(method, path, **kwargs)
        except httpx.TransportError:
            response = None  # the connection was dropped: check() reports what the app raised
            self.problems.append(f"{what}: connection dropped")
        self.check(response, what, engine_errors)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    fake = FakeOllama()
    engine = Recorder(fake.app)
    with serve_in_thread(engine) as upstream:
        path = write_config(tmp_path_factory.mktemp("fuzz") / "users.toml", upstream, USERS)
        gateway = Recorder(create_app(Path(path)))
        with serve_in_thread(gateway) as url:
            admin = logged_in(url, "root")
            user = logged_in(url, "bob")
            yield Target(url, gateway, engine, admin, user)
            admin.close()
            user.close()


def api_client(url: str, user: str) -> httpx.Client:
    return httpx.Client(
        base_url=url, headers={"authorization": f"Bearer {key_of(user)}"}, timeout=20
    )


# ---------------------------------------------------------------- values

ODD_TEXT = st.sampled_from(["", " ", "\ud800", "x" * 3000, "<img src=x onerror=alert(1)>", "∞"])
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.sampled_from([0, -1, -2, 10**30, -(10**30), 2**63, 10**300]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    ODD_TEXT,
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
# Python's json refuses nesting deeper than its recursion limit (about 1000) with RecursionError.
NESTED = st.sampled_from([10, 880, 900, 990, 2_000, 30_000]).map(lambda n: "[" * n + "]" * n)


def encode(value: Any) -> bytes:
    # allow_nan: NaN and Infinity are not JSON, which is also worth sending.
    return json.dumps(value, allow_nan=True).encode("utf-8", "surrogatepass")


GENERATION_FIELDS = (
    "model",
    "messages",
    "prompt",
    "input",
    "n",
    "stream",
    "max_tokens",
    "max_completion_tokens",
    "stream_options",
    "options",
    "system",
    "name",
    "keep_alive",
)
BASE: dict[str, Any] = {
    "model": "llama3.2",
    "messages": [{"role": "user", "content": "hi"}],
    "prompt": "hi",
    "input": "hi",
}


def bodies() -> st.SearchStrategy[bytes]:
    """A valid-looking body with some fields replaced by odd values, or odd bytes altogether."""
    changed = st.dictionaries(st.sampled_from(GENERATION_FIELDS), JSON, min_size=1, max_size=4)
    return st.one_of(
        changed.map(lambda fields: encode({**BASE, **fields})),
        changed.map(lambda fields: encode({k: v for k, v in BASE.items() if k not in fields})),
        JSON.map(encode),
        NESTED.map(lambda s: f'{{"model": "llama3.2", "messages": {s}}}'.encode()),
        NESTED.map(lambda s: f'{{"model": "llama3.2", "messages": [{{"content": {s}}}]}}'.encode()),
        NESTED.map(str.encode),
        st.binary(max_size=64),
        st.sampled_from([b"", b"\xff\xfe", b"9" * 5000, b"1e999", b"{" * 50, b"null"]),
    )


GENERATING = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/api/chat",
    "/api/generate",
    "/api/embed",
    "/api/embeddings",
    "/api/show",
]


@FUZZ
@given(
    path=st.sampled_from(GENERATING),
    user=st.sampled_from(["alice", "bob"]),
    body=bodies(),
)
def test_generating_routes_never_fail_on_bad_bodies(
    target: Target, path: str, user: str, body: bytes
) -> None:
    target.problems.clear()
    with api_client(target.url, user) as client:
        target.send(client, "POST", path, content=body)
    assert target.problems == []


# What HTTP allows in a field value (control bytes are refused by the server's parser, before
# the app): visible ASCII, space, tab, and obs-text (0x80-0xff, often not valid UTF-8).
FIELD_BYTE = st.sampled_from([b"\t", *(bytes([i]) for i in range(0x20, 0x7F))]) | st.integers(
    min_value=0x80, max_value=0xFF
).map(lambda i: bytes([i]))
HEADER_BYTES = st.one_of(
    st.lists(FIELD_BYTE, min_size=1, max_size=40).map(b"".join),
    st.sampled_from([b"Bearer \xff\xfe", b"Bearer", b"Bearer  ", b"bearer sk-" + b"x" * 5000]),
)


@FUZZ
@given(
    method_path=st.sampled_from(
        [
            ("GET", "/v1/models"),
            ("GET", "/v1/models/llama3.2"),
            ("GET", "/api/tags"),
            ("GET", "/api/ps"),
            ("GET", "/api/version"),
            ("POST", "/v1/chat/completions"),
            ("POST", "/api/pull"),
            ("GET", "/metrics"),
            ("GET", "/ui/api/session"),
            ("GET", "/ui/api/me"),
            ("GET", "/admin"),
            ("GET", "/"),
            ("POST", "/ui/api/logout"),
        ]
    ),
    name=st.sampled_from(["authorization", "x-request-id", "cookie", "sec-fetch-site"]),
    value=HEADER_BYTES,
)
def test_odd_header_bytes_never_fail(
    target: Target, method_path: tuple[str, str], name: str, value: bytes
) -> None:
    target.problems.clear()
    method, path = method_path
    with httpx.Client(base_url=target.url, timeout=20) as client:
        headers = [(name.encode(), value.strip(b" \t") or b"x")]
        if name == "cookie":
            headers = [(b"cookie", b"gatewayctl_session=" + value.strip(b" \t;"))]
        content = encode(BASE) if method == "POST" else None
        target.send(client, method, path, headers=headers, content=content)
    assert target.problems == []


UI_ROUTES = [
    ("admin", "POST", "/ui/api/admin/users"),
    ("admin", "PATCH", "/ui/api/admin/users/carol"),
    ("admin", "POST", "/ui/api/admin/users/carol/password"),
    ("admin", "POST", "/ui/api/admin/users/carol/suspend"),
    ("admin", "POST", "/ui/api/admin/users/carol/resume"),
    ("user", "POST", "/ui/api/chat/completions"),
    ("anonymous", "POST", "/ui/api/login"),
]
UI_FIELDS = (
    "name",
    "role",
    "password",
    "username",
    "rps",
    "burst",
    "quota",
    "max_tokens",
    "concurrency",
    "models",
    *GENERATION_FIELDS,
)


def ui_bodies() -> st.SearchStrategy[bytes]:
    fields = st.dictionaries(st.sampled_from(UI_FIELDS), JSON, max_size=4)
    return st.one_of(
        fields.map(encode),
        fields.map(lambda f: encode({**BASE, **f})),
        JSON.map(encode),
        NESTED.map(str.encode),
        st.binary(max_size=64),
    )


@FUZZ
@given(route=st.sampled_from(UI_ROUTES), body=ui_bodies())
def test_web_ui_api_never_fails_on_bad_bodies(
    target: Target, route: tuple[str, str, str], body: bytes
) -> None:
    target.problems.clear()
    who, method, path = route
    if who == "anonymous":
        with WebClient(target.url) as client:
            client.start()
            headers = {"x-csrf-token": client.csrf, "sec-fetch-site": "same-origin"}
            target.send(client, method, path, content=body, headers=headers)
    else:
        client = target.admin if who == "admin" else target.user
        headers = {"x-csrf-token": client.csrf, "sec-fetch-site": "same-origin"}
        target.send(client, method, path, content=body, headers=headers)
    assert target.problems == []


def test_the_gateway_still_serves_after_the_fuzzing(target: Target) -> None:
    with api_client(target.url, "alice") as client:
        response = client.post("/v1/chat/completions", json=BASE)
    assert response.status_code == 200, response.text
    admin = logged_in(target.url, "root", PASSWORD)
    try:
        assert admin.get("/ui/api/admin/state").status_code == 200
    finally:
        admin.close()
