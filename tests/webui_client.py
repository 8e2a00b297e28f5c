"""A browser-like HTTP client for the web UI's JSON API: cookies, the CSRF header, same-origin
fetch metadata; used by the API tests over real sockets."""

from __future__ import annotations

from typing import Any

import httpx

from tests.conftest import PASSWORD


class WebClient(httpx.Client):
    def __init__(self, url: str) -> None:
        super().__init__(base_url=url, timeout=10, follow_redirects=False)
        self.csrf = ""

    def start(self) -> dict[str, Any]:
        data: dict[str, Any] = self.get("/ui/api/session").json()
        self.csrf = data["csrf"]
        return data

    def send_json(self, method: str, path: str, body: Any = None, **kwargs: Any) -> httpx.Response:
        headers = {"x-csrf-token": self.csrf, "sec-fetch-site": "same-origin"}
        headers.update(kwargs.pop("headers", {}))
        response = self.request(method, path, json=body, headers=headers, **kwargs)
        if response.headers.get("content-type", "").startswith("application/json"):
            data = response.json()
            if isinstance(data, dict) and isinstance(data.get("csrf"), str):
                self.csrf = data["csrf"]
        return response

    def login(self, name: str, password: str = PASSWORD) -> httpx.Response:
        self.start()
        return self.send_json("POST", "/ui/api/login", {"username": name, "password": password})


def logged_in(url: str, name: str, password: str = PASSWORD) -> WebClient:
    client = WebClient(url)
    response = client.login(name, password)
    assert response.status_code == 200, response.text
    return client
