"""The web UI's server side over real sockets: sessions, login throttling, CSRF, role checks,
the admin API writing users.toml, and the chat route running the proxy pipeline."""

from __future__ import annotations

import json
import os
import re
import stat
import time
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest
from gatewayctl.proxy import accounts
from gatewayctl.proxy.app import create_app
from gatewayctl.proxy.store import Store
from gatewayctl.webui.sessions import COOKIE, KEY_FILE

from tests.conftest import PASSWORD, Running, StartGateway, key_of, write_config
from tests.fakes.ollama import REPLY_TOKENS, FakeOllama
from tests.servers import serve_in_thread
from tests.webui_client import WebClient, logged_in

Fake = tuple[FakeOllama, str]


def user_table(running: Running, name: str) -> dict[str, Any]:
    table: dict[str, Any] = tomllib.loads(running.config_path.read_text())["users"][name]
    return table


def wait_until(condition: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def sse_events(response: httpx.Response) -> list[Any]:
    events = []
    for line in response.text.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            events.append(json.loads(line[6:]))
    return events


# ---------------------------------------------------------------- sessions and login


def test_session_cookie_is_httponly_strict_and_expires(gw: Running) -> None:
    client = WebClient(gw.url)
    client.start()
    response = client.send_json("POST", "/ui/api/login", {"username": "root", "password": PASSWORD})
    assert response.status_code == 200
    assert response.json()["home"] == "/admin"
    cookie = response.headers["set-cookie"].lower()
    assert cookie.startswith(f"{COOKIE}=")
    for attribute in ("httponly", "samesite=strict", "path=/", "max-age=43200"):
        assert attribute in cookie
    key_file = gw.config_path.parent / KEY_FILE
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600


def test_wrong_password_and_unknown_user_get_the_same_answer(gw: Running) -> None:
    wrong = WebClient(gw.url).login("alice", "not-the-password")
    unknown = WebClient(gw.url).login("nobody", "whatever-pw")
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json()["error"]["message"] == unknown.json()["error"]["message"]
    assert "Wrong user name or password" in wrong.json()["error"]["message"]


def test_login_needs_the_csrf_token(gw: Running) -> None:
    client = WebClient(gw.url)
    client.start()
    body = {"username": "alice", "password": PASSWORD}
    missing = client.post("/ui/api/login", json=body)
    assert missing.status_code == 403
    assert missing.json()["error"]["code"] == "csrf_failed"
    cross_site = client.send_json(
        "POST", "/ui/api/login", body, headers={"sec-fetch-site": "cross-site"}
    )
    assert cross_site.status_code == 403
    assert client.send_json("POST", "/ui/api/login", body).status_code == 200


def test_login_routes_each_role_home(gw: Running) -> None:
    admin = logged_in(gw.url, "root")
    user = logged_in(gw.url, "alice")
    assert admin.get("/").headers["location"] == "/admin"
    assert user.get("/").headers["location"] == "/chat"
    assert WebClient(gw.url).get("/").headers["location"] == "/login"
    assert WebClient(gw.url).get("/admin").headers["location"] == "/login"
    assert admin.get("/admin").status_code == 200
    assert admin.get("/login").headers["location"] == "/admin"


def test_tampered_or_forged_cookies_are_rejected(gw: Running) -> None:
    client = logged_in(gw.url, "root")
    value = client.cookies[COOKIE]
    body, _, signature = value.partition(".")
    forged = body.replace(body[5], "A" if body[5] != "A" else "B") + "." + signature
    for bad in (forged, value + "x", "garbage", ""):
        other = WebClient(gw.url)
        other.cookies.set(COOKIE, bad)
        assert other.get("/ui/api/admin/state").status_code == 401


def test_logout_revokes_the_cookie_even_if_replayed(gw: Running) -> None:
    client = logged_in(gw.url, "root")
    stolen = client.cookies[COOKIE]
    assert client.send_json("POST", "/ui/api/logout").status_code == 200
    replay = WebClient(gw.url)
    replay.cookies.set(COOKIE, stolen)
    assert replay.get("/ui/api/admin/state").status_code == 401


def test_sessions_survive_a_restart(fake: Fake, tmp_path: Path) -> None:
    path = write_config(tmp_path / "users.toml", fake[1], {"root": {"role": "admin"}})
    with serve_in_thread(create_app(path)) as url:
        cookie = logged_in(url, "root").cookies[COOKIE]
    # The next gateway process on the same users.toml finds the same key file beside it.
    with serve_in_thread(create_app(path)) as url:
        client = WebClient(url)
        client.cookies.set(COOKIE, cookie)
        assert client.get("/ui/api/admin/state").status_code == 200


def test_password_change_ends_sessions_at_once(gw: Running) -> None:
    client = logged_in(gw.url, "alice")
    assert client.get("/ui/api/me").status_code == 200
    Store(gw.config_path).update(lambda c: accounts.set_password(c, "alice", "a-new-password"))
    assert wait_until(lambda: client.get("/ui/api/me").status_code == 401)
    assert WebClient(gw.url).login("alice").status_code == 401
    assert WebClient(gw.url).login("alice", "a-new-password").status_code == 200


def test_suspended_user_cannot_log_in_or_chat(gw: Running) -> None:
    client = logged_in(gw.url, "alice")
    Store(gw.config_path).update(lambda c: accounts.set_suspended(c, "alice", True))
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}

    def refused() -> bool:
        return client.send_json("POST", "/ui/api/chat/completions", body).status_code == 403

    assert wait_until(refused)
    answer = client.send_json("POST", "/ui/api/chat/completions", body).json()["error"]
    assert answer["code"] == "account_suspended"
    login = WebClient(gw.url).login("alice")
    assert login.status_code == 403
    assert "suspended" in login.json()["error"]["message"]


# ---------------------------------------------------------------- throttling


def test_login_is_slowed_then_refused_per_user(gw: Running) -> None:
    client = WebClient(gw.url)
    for _ in range(3):
        assert client.login("alice", "wrong-guess").status_code == 401
    throttled = client.login("alice", PASSWORD)  # even the right password waits now
    assert throttled.status_code == 429
    assert int(throttled.headers["retry-after"]) >= 1
    assert "Too many failed logins for this account" in throttled.json()["error"]["message"]
    assert WebClient(gw.url).login("root").status_code == 200  # other accounts are not held up


def test_login_is_throttled_per_address(gw: Running) -> None:
    client = WebClient(gw.url)
    for i in range(10):
        assert client.login(f"guess{i}", "wrong-guess").status_code == 401
    refused = client.login("guess-next", "wrong-guess")
    assert refused.status_code == 429
    assert "your address" in refused.json()["error"]["message"]


# ---------------------------------------------------------------- roles and CSRF on the admin API


def test_a_user_gets_403_from_the_dashboard_and_every_admin_route(gw: Running) -> None:
    client = logged_in(gw.url, "alice")
    page = client.get("/admin")
    assert page.status_code == 403
    assert "Admins only" in page.text
    calls = [
        ("GET", "/ui/api/admin/state", None),
        ("POST", "/ui/api/admin/users", {"name": "mallory"}),
        ("PATCH", "/ui/api/admin/users/alice", {"quota": ""}),
        ("POST", "/ui/api/admin/users/root/suspend", None),
        ("POST", "/ui/api/admin/users/root/rotate-key", None),
        ("POST", "/ui/api/admin/users/root/password", {"password": "owned-pw"}),
        ("DELETE", "/ui/api/admin/users/root", None),
    ]
    before = gw.config_path.read_text()
    for method, path, body in calls:
        response = client.send_json(method, path, body)
        assert response.status_code == 403, (method, path)
        assert response.json()["error"]["code"] == "admin_only"
    assert gw.config_path.read_text() == before


def test_state_changes_without_csrf_token_are_refused(gw: Running) -> None:
    client = logged_in(gw.url, "root")
    before = gw.config_path.read_text()
    for headers in ({"x-csrf-token": ""}, {"x-csrf-token": "forged"}):
        response = client.send_json("POST", "/ui/api/admin/users/alice/suspend", headers=headers)
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "csrf_failed"
    chat = client.post(
        "/ui/api/chat/completions",
        json={"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert chat.status_code == 403
    assert gw.config_path.read_text() == before


def test_not_logged_in_gets_401_from_the_api(gw: Running) -> None:
    client = WebClient(gw.url)
    client.start()
    assert client.get("/ui/api/admin/state").status_code == 401
    assert client.get("/ui/api/me").status_code == 401
    assert client.send_json("POST", "/ui/api/admin/users/alice/suspend").status_code == 401


# ---------------------------------------------------------------- admin changes


def test_editing_limits_writes_users_toml_and_reports_field_errors(gw: Running) -> None:
    client = logged_in(gw.url, "root")
    ok = client.send_json("PATCH", "/ui/api/admin/users/alice", {"rps": "2.5", "quota": "1_000"})
    assert ok.status_code == 200
    assert ok.json()["user"]["rps"] == 2.5
    assert user_table(gw, "alice")["rps"] == 2.5
    assert user_table(gw, "alice")["quota"] == 1000
    for body, field, words in (
        ({"rps": "-1"}, "rps", "must be >= 0"),
        ({"burst": "lots"}, "burst", "whole number"),
        ({"max_tokens": "0"}, "max_tokens", ">= 1"),
        ({"models": "bad pattern"}, "models", "not a model name pattern"),
        ({"quota": 10**30}, "quota", "must be <= "),
        ({"rps": 10**400}, "rps", "must be <= "),
    ):
        refused = client.send_json("PATCH", "/ui/api/admin/users/alice", body)
        assert refused.status_code == 400, body
        error = refused.json()["error"]
        assert error["param"] == field
        assert words in error["message"]
    lifted = client.send_json("PATCH", "/ui/api/admin/users/alice", {"quota": ""})
    assert lifted.json()["user"]["quota"] is None
    assert "quota" not in user_table(gw, "alice")
    models = client.send_json("PATCH", "/ui/api/admin/users/alice", {"models": "llama3.2:*"})
    assert models.json()["user"]["models"] == ["llama3.2:*"]
    assert user_table(gw, "alice")["models"] == ["llama3.2:*"]


def test_add_rotate_reset_remove(gw: Running) -> None:
    admin = logged_in(gw.url, "root")
    added = admin.send_json(
        "POST",
        "/ui/api/admin/users",
        {"name": "dora", "password": "dora-password", "max_tokens": "5"},
    )
    assert added.status_code == 201
    key = added.json()["key"]
    assert "key_hash" not in added.json()["user"]
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
    auth = {"authorization": f"Bearer {key}"}
    first = httpx.post(f"{gw.url}/v1/chat/completions", json=body, headers=auth)
    assert first.status_code == 200
    assert first.json()["usage"]["completion_tokens"] == 5
    duplicate = admin.send_json("POST", "/ui/api/admin/users", {"name": "dora"})
    assert duplicate.status_code == 400
    assert duplicate.json()["error"]["param"] == "name"

    rotated = admin.send_json("POST", "/ui/api/admin/users/dora/rotate-key").json()["key"]
    old = httpx.post(f"{gw.url}/v1/chat/completions", json=body, headers=auth)
    assert old.status_code == 401
    new = {"authorization": f"Bearer {rotated}"}
    assert httpx.post(f"{gw.url}/v1/chat/completions", json=body, headers=new).status_code == 200

    reset = admin.send_json("POST", "/ui/api/admin/users/dora/password", {"password": ""})
    generated = reset.json()["password"]
    assert generated
    assert WebClient(gw.url).login("dora", "dora-password").status_code == 401
    assert WebClient(gw.url).login("dora", generated).status_code == 200

    assert admin.send_json("DELETE", "/ui/api/admin/users/root").status_code == 400
    assert admin.send_json("POST", "/ui/api/admin/users/root/suspend").status_code == 400
    assert admin.send_json("DELETE", "/ui/api/admin/users/dora").status_code == 200
    assert httpx.post(f"{gw.url}/v1/chat/completions", json=body, headers=new).status_code == 401
    assert "dora" not in tomllib.loads(gw.config_path.read_text())["users"]


def test_resetting_your_own_password_keeps_you_logged_in(gw: Running) -> None:
    admin = logged_in(gw.url, "root")
    answer = admin.send_json("POST", "/ui/api/admin/users/root/password", {"password": "new-pw-1"})
    assert answer.status_code == 200
    assert admin.get("/ui/api/admin/state").status_code == 200
    assert admin.send_json("POST", "/ui/api/admin/users/alice/resume").status_code == 200


def test_suspend_blocks_the_api_key_when_the_answer_arrives(gw: Running) -> None:
    admin = logged_in(gw.url, "root")
    with gw.client("alice") as alice:
        assert alice.get("/v1/models").status_code == 200
        assert admin.send_json("POST", "/ui/api/admin/users/alice/suspend").status_code == 200
        refused = alice.get("/v1/models")
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "account_suspended"
        assert admin.send_json("POST", "/ui/api/admin/users/alice/resume").status_code == 200
        assert alice.get("/v1/models").status_code == 200
    assert "suspended" not in user_table(gw, "alice")


def test_state_reports_usage_windows_and_a_broken_config(gw: Running) -> None:
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    with gw.client("alice") as alice:
        for _ in range(2):
            assert alice.post("/v1/chat/completions", json=body).status_code == 200
    gw.wait_for_totals("alice", 2)
    admin = logged_in(gw.url, "root")

    def alice_row() -> dict[str, Any]:
        state = admin.get("/ui/api/admin/state").json()
        row: dict[str, Any] = next(u for u in state["users"] if u["user"] == "alice")
        return row

    assert wait_until(lambda: alice_row()["hour"]["requests"] == 2)
    row = alice_row()
    tokens = 2 * (11 + 3)  # the fake: 1 word + 10 per message, 3 completion tokens
    assert row["hour"] == {"requests": 2, "tokens": tokens}
    assert row["day"] == {"requests": 2, "tokens": tokens}
    assert sum(row["hourly"]) == tokens
    assert row["used"] == tokens
    assert row["last_seen"] is not None
    assert row["in_flight"] == 0

    state = admin.get("/ui/api/admin/state").json()
    assert state["config_error"] is None
    assert [u["healthy"] for u in state["upstreams"]] == [True]
    gw.config_path.write_text(gw.config_path.read_text() + "\n[users.bob]\nrps = -1\n")
    assert wait_until(lambda: admin.get("/ui/api/admin/state").json()["config_error"])
    error = admin.get("/ui/api/admin/state").json()["config_error"]
    assert "[users.bob].rps" in error


# ---------------------------------------------------------------- the chat route


def test_chat_runs_the_proxy_pipeline_as_the_logged_in_user(
    fake: Fake, start_gateway: StartGateway
) -> None:
    with start_gateway(fake[1], {"root": {"role": "admin"}, "alice": {"max_tokens": 4}}) as gw:
        client = logged_in(gw.url, "alice")
        body = {
            "model": "llama3.2",
            "messages": [{"role": "user", "content": "hello there"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        response = client.send_json("POST", "/ui/api/chat/completions", body)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)
        text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
        assert text == "".join(REPLY_TOKENS[:4])  # alice's max_tokens cap applied
        assert events[-1]["usage"]["completion_tokens"] == 4
        upstream = fake[0].requests_to("/v1/chat/completions")[-1]
        assert "cookie" not in upstream.headers
        assert "x-csrf-token" not in upstream.headers
        assert gw.wait_for_totals("alice", 1) == (1, 12, 4)
        assert gw.totals("root") == (0, 0, 0)


def test_chat_model_list_is_filtered_for_the_user(fake: Fake, start_gateway: StartGateway) -> None:
    users = {"root": {"role": "admin"}, "alice": {"models": ("qwen2.5:*",)}}
    with start_gateway(fake[1], users) as gw:
        listed = logged_in(gw.url, "alice").get("/ui/api/models").json()
        assert [m["id"] for m in listed["data"]] == ["qwen2.5:0.5b"]
        refused = logged_in(gw.url, "alice").send_json(
            "POST",
            "/ui/api/chat/completions",
            {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "model_not_allowed"


def test_me_reports_quota_left(fake: Fake, start_gateway: StartGateway) -> None:
    with start_gateway(fake[1], {"root": {"role": "admin"}, "alice": {"quota": 100}}) as gw:
        client = logged_in(gw.url, "alice")
        body = {
            "model": "llama3.2",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 5,
        }
        assert client.send_json("POST", "/ui/api/chat/completions", body).status_code == 200
        me = client.get("/ui/api/me").json()
        assert (me["quota"], me["total_tokens"], me["remaining"]) == (100, 16, 84)
        assert "key_hash" not in me and "password_hash" not in me


# ---------------------------------------------------------------- headers and assets


@pytest.mark.parametrize("path", ["/login", "/ui/api/session", "/ui/static/chat.js"])
def test_security_headers(gw: Running, path: str) -> None:
    response = httpx.get(gw.url + path)
    assert response.status_code == 200
    csp = response.headers["content-security-policy"]
    assert "script-src 'self';" in csp
    assert "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"


def test_pages_have_no_inline_script() -> None:
    static = Path(__file__).resolve().parent.parent / "webui" / "static"
    for page in static.glob("*.html"):
        text = page.read_text()
        assert "<script>" not in text and "onclick=" not in text and "style=" not in text, page
    html_sinks = re.compile(r"\.(inner|outer)HTML\b|insertAdjacentHTML|document\.write|eval\(")
    for script in static.glob("*.js"):
        assert not html_sinks.search(script.read_text()), script


def test_assets_are_served_by_exact_name_only(gw: Running) -> None:
    assert httpx.get(gw.url + "/ui/static/style.css").headers["content-type"].startswith("text/css")
    for path in ("/ui/static/..%2fsessions.py", "/ui/static/nope.js", "/ui/static/%2e%2e"):
        assert httpx.get(gw.url + path).status_code == 404


def test_api_key_users_are_unaffected_by_the_web_ui(gw: Running) -> None:
    response = httpx.get(
        gw.url + "/v1/models", headers={"authorization": f"Bearer {key_of('alice')}"}
    )
    assert response.status_code == 200
    assert "content-security-policy" not in response.headers


def test_state_counts_requests_in_flight(fake: Fake, gw: Running) -> None:
    upstream = fake[0]
    upstream.token_delay = 0.1
    admin = logged_in(gw.url, "root")

    def in_flight() -> int:
        state = admin.get("/ui/api/admin/state").json()
        return int(next(u for u in state["users"] if u["user"] == "alice")["in_flight"])

    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with gw.client("alice") as alice, alice.stream("POST", "/v1/chat/completions", json=body):
        assert upstream.first_token_sent.wait(5)
        assert in_flight() == 1
        state = admin.get("/ui/api/admin/state").json()
        assert state["upstreams"][0]["in_flight"] == 1
    assert wait_until(lambda: in_flight() == 0)


def test_state_shows_an_upstream_that_is_down(start_gateway: StartGateway) -> None:
    with start_gateway("http://127.0.0.1:9") as gw:  # the discard port: nothing listens
        admin = logged_in(gw.url, "root")

        def upstream() -> dict[str, Any]:
            found: dict[str, Any] = admin.get("/ui/api/admin/state").json()["upstreams"][0]
            return found

        assert wait_until(lambda: upstream()["healthy"] is False)
        assert upstream()["url"] == "http://127.0.0.1:9"
        assert "ConnectError" in upstream()["detail"]


def test_password_that_is_not_valid_unicode_is_a_field_error(gw: Running) -> None:
    admin = logged_in(gw.url, "root")
    bad = b'{"name": "zed", "password": "' + b"\\ud800" * 8 + b'"}'
    headers = {"x-csrf-token": admin.csrf, "content-type": "application/json"}
    added = admin.post("/ui/api/admin/users", content=bad, headers=headers)
    assert added.status_code == 400, added.text
    assert added.json()["error"]["param"] == "password"
    reset = admin.post(
        "/ui/api/admin/users/alice/password",
        content=b'{"password": "' + b"\\ud800" * 8 + b'"}',
        headers=headers,
    )
    assert reset.status_code == 400, reset.text
    assert reset.json()["error"]["param"] == "password"
    assert "zed" not in tomllib.loads(gw.config_path.read_text())["users"]


def test_json_nested_too_deeply_is_400(gw: Running) -> None:
    admin = logged_in(gw.url, "root")
    deep = b"[" * 30_000 + b"]" * 30_000  # under the 64 KiB body limit
    headers = {"x-csrf-token": admin.csrf, "content-type": "application/json"}
    for path in ("/ui/api/admin/users", "/ui/api/login"):
        response = admin.post(path, content=deep, headers=headers)
        assert response.status_code == 400, (path, response.text)
        assert response.json()["error"]["type"] == "invalid_request_error"
