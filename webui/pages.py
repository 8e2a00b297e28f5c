"""The HTML pages and their static assets.

Pages are plain HTML files; which one a visitor gets is decided here, on the server: the
dashboard only for admins, the chat for anyone logged in, the login form otherwise. Assets are
read from the package once, at startup, and served from memory by exact name, so no path from
the URL ever reaches the file system.
"""

from __future__ import annotations

import hashlib
import importlib.resources
from dataclasses import dataclass

from gatewayctl.webui.guard import Guard
from gatewayctl.webui.headers import route
from gatewayctl.webui.session_api import home_of
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def load_assets() -> dict[str, Asset]:
    assets: dict[str, Asset] = {}
    folder = importlib.resources.files(__package__) / "static"
    if not folder.is_dir():  # an install without package data: the API still works
        return assets
    for entry in folder.iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in CONTENT_TYPES:
            body = entry.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
            assets[entry.name] = Asset(body, CONTENT_TYPES[suffix], etag)
    return assets


class Pages:
    def __init__(self, guard: Guard) -> None:
        self.guard = guard
        self.assets = load_assets()

    def routes(self) -> list[BaseRoute]:
        return [
            route("/", self.root, methods=["GET", "HEAD"]),
            route("/login", self.login, methods=["GET", "HEAD"]),
            route("/admin", self.admin, methods=["GET", "HEAD"]),
            route("/chat", self.chat, methods=["GET", "HEAD"]),
            route("/ui/static/{name}", self.asset, methods=["GET", "HEAD"]),
        ]

    def _page(self, name: str, status: int = 200) -> Response:
        asset = self.assets[name]
        return Response(asset.body, status, media_type=asset.content_type)

    async def root(self, request: Request) -> Response:
        user = self.guard.visitor(request).user
        return RedirectResponse(home_of(user) if user else "/login", 303)

    async def login(self, request: Request) -> Response:
        user = self.guard.visitor(request).user
        if user is not None and not user.suspended:
            return RedirectResponse(home_of(user), 303)
        return self._page("login.html")

    async def admin(self, request: Request) -> Response:
        user = self.guard.visitor(request).user
        if user is None:
            return RedirectResponse("/login", 303)
        if user.role != "admin" or user.suspended:
            return self._page("forbidden.html", 403)
        return self._page("admin.html")

    async def chat(self, request: Request) -> Response:
        if self.guard.visitor(request).user is None:
            return RedirectResponse("/login", 303)
        return self._page("chat.html")

    async def asset(self, request: Request) -> Response:
        asset = self.assets.get(request.path_params["name"])
        if asset is None:
            return Response("Not found", 404, media_type="text/plain")
        headers = {"etag": asset.etag, "cache-control": "no-cache"}
        if request.headers.get("if-none-match") == asset.etag:
            return Response(status_code=304, headers=headers)
        return Response(asset.body, media_type=asset.content_type, headers=headers)
