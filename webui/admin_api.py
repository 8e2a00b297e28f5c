"""The admin dashboard's JSON API; every route checks the admin role on the server.

    GET    /ui/api/admin/state                     users, usage, health, config problems
    POST   /ui/api/admin/users                     add a user (the key is in the answer, once)
    PATCH  /ui/api/admin/users/{name}              change limits: {"rps": "2", "quota": ""}
    POST   /ui/api/admin/users/{name}/suspend      and /resume
    POST   /ui/api/admin/users/{name}/rotate-key   a new key, in the answer, once
    POST   /ui/api/admin/users/{name}/password     {"password"}; empty: a generated one
    DELETE /ui/api/admin/users/{name}

Changes go through ``Store.update`` with the same ``accounts`` functions as the CLI, then the
gateway re-reads the file at once instead of waiting for the file watcher, so what the admin
just did is in force when the answer arrives.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, TypeVar

from gatewayctl.proxy import accounts
from gatewayctl.proxy.config import Config, User
from gatewayctl.proxy.credentials import new_password
from gatewayctl.proxy.errors import BadRequest
from gatewayctl.proxy.gateway import Gateway
from gatewayctl.proxy.store import Store
from gatewayctl.webui.activity import Activity, ActivityCache, Window
from gatewayctl.webui.forms import field_error, parse_limits
from gatewayctl.webui.guard import Guard
from gatewayctl.webui.headers import route
from gatewayctl.webui.health import upstream_views
from gatewayctl.webui.responses import api, json_body, ok
from gatewayctl.webui.session_api import set_session_cookie
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

T = TypeVar("T")


class AdminApi:
    def __init__(
        self,
        gateway: Gateway,
        guard: Guard,
        *,
        activity: ActivityCache,
    ) -> None:
        self.gateway = gateway
        self.guard = guard
        self.store = Store(gateway.config_path)
        self.activity = activity

    def routes(self) -> list[BaseRoute]:
        one = "/ui/api/admin/users/{name}"
        return [
            route("/ui/api/admin/state", api(self.state), methods=["GET"]),
            route("/ui/api/admin/users", api(self.add), methods=["POST"]),
            route(one, api(self.update), methods=["PATCH"]),
            route(one, api(self.remove), methods=["DELETE"]),
            route(one + "/suspend", api(self.suspend), methods=["POST"]),
            route(one + "/resume", api(self.resume), methods=["POST"]),
            route(one + "/rotate-key", api(self.rotate_key), methods=["POST"]),
            route(one + "/password", api(self.password), methods=["POST"]),
        ]

    async def _write(self, change: Callable[[Config], tuple[Config, T]]) -> T:
        # The lock and fsync block: keep them off the event loop.
        result = await asyncio.to_thread(self.store.update, change)
        self.gateway.reload()
        return result

    def _row(self, user: User, activity: Activity) -> dict[str, Any]:
        totals = self.gateway.ledger.totals(user.name)
        usage = accounts.usage_view(user, totals)
        return {
            **accounts.user_view(user),
            "used": usage["total_tokens"],
            "remaining": usage["remaining"],
            "requests_total": usage["requests"],
            "reserved": self.gateway.quotas.reserved(user.name),
            "hour": asdict(activity.last_hour.get(user.name, Window())),
            "day": asdict(activity.last_day.get(user.name, Window())),
            "in_flight": self.gateway.scheduler.in_flight(user.name),
            "last_seen": activity.last_seen.get(user.name),
            "hourly": activity.hourly.get(user.name, [0] * activity.hours),
        }

    async def state(self, request: Request) -> Response:
        admin = self.guard.user(request, admin=True)
        config = self.gateway.config
        names = sorted(config.users)
        activity = await self.activity.get(names)
        return ok(
            {
                "now": time.time(),
                "me": admin.name,
                "config_path": str(self.gateway.config_path),
                "config_error": self.gateway.config_error,
                "limit_fields": list(accounts.LIMIT_FIELDS),
                "users": [self._row(config.users[name], activity) for name in names],
                "chart": {
                    "start": activity.start,
                    "hours": activity.hours,
                    "total": activity.total_hourly(),
                },
                "upstreams": upstream_views(self.gateway),
            }
        )

    def _view(self, name: str) -> dict[str, Any]:
        return accounts.user_view(accounts.get_user(self.gateway.config, name))

    async def add(self, request: Request) -> Response:
        self.guard.user(request, admin=True)
        payload = await json_body(request)
        name = str(payload.pop("name", "") or "").strip()
        role = payload.pop("role", "user")
        password = payload.pop("password", None) or None
        if not name:
            raise field_error("name", "enter a user name")
        if role not in ("user", "admin"):
            raise field_error("role", "must be 'user' or 'admin'")
        if password is not None and not isinstance(password, str):
            raise field_error("password", "must be text")
        limits = parse_limits(payload)
        try:
            key = await self._write(
                lambda c: accounts.add_user(c, name, role=role, password=password, limits=limits)
            )
        except accounts.AccountError as exc:
            message = str(exc)
            field = None
            if message.startswith(("invalid user name", "user ")):
                field = "name"
            elif message.startswith("password"):
                field = "password"
            raise field_error(field, message) from None
        return ok({"user": self._view(name), "key": key}, 201)

    async def update(self, request: Request) -> Response:
        self.guard.user(request, admin=True)
        name = request.path_params["name"]
        limits = parse_limits(await json_body(request))
        if not limits:
            raise BadRequest("Nothing to change.")
        await self._write(lambda c: accounts.set_limits(c, name, limits))
        return ok({"user": self._view(name)})

    async def _set_suspended(self, request: Request, suspended: bool) -> Response:
        admin = self.guard.user(request, admin=True)
        name = request.path_params["name"]
        if suspended and name == admin.name:
            raise BadRequest("You cannot suspend your own account.")
        await self._write(lambda c: accounts.set_suspended(c, name, suspended))
        return ok({"user": self._view(name)})

    async def suspend(self, request: Request) -> Response:
        return await self._set_suspended(request, True)

    async def resume(self, request: Request) -> Response:
        return await self._set_suspended(request, False)

    async def rotate_key(self, request: Request) -> Response:
        self.guard.user(request, admin=True)
        name = request.path_params["name"]
        key = await self._write(lambda c: accounts.rotate_key(c, name))
        return ok({"user": self._view(name), "key": key})

    async def password(self, request: Request) -> Response:
        admin = self.guard.user(request, admin=True)
        name = request.path_params["name"]
        given = (await json_body(request)).get("password") or None
        if given is not None and not isinstance(given, str):
            raise field_error("password", "must be text")
        password = given or new_password()
        try:
            user = await self._write(lambda c: accounts.set_password(c, name, password))
        except accounts.AccountError as exc:
            field = "password" if str(exc).startswith("password") else None
            raise field_error(field, str(exc)) from None
        answer: dict[str, Any] = {"user": self._view(name), "password": None if given else password}
        if name != admin.name:
            return ok(answer)
        # A new password ends every session of that user: keep the admin's own one going.
        sessions = self.guard.sessions
        cookie, session = sessions.issue(user)
        response = ok({**answer, "csrf": sessions.csrf_token(session)})
        set_session_cookie(request, response, cookie, sessions.ttl)
        return response

    async def remove(self, request: Request) -> Response:
        admin = self.guard.user(request, admin=True)
        name = request.path_params["name"]
        if name == admin.name:
            raise BadRequest("You cannot remove your own account.")
        await self._write(lambda c: accounts.remove_user(c, name))
        return ok({"removed": name})
