"""Logging in and out, and what the page needs to know about its session.

GET  /ui/api/session   the session's user (if any) and CSRF token; starts an anonymous
                       session for the login form when there is none
POST /ui/api/login     {"username", "password"} -> a fresh session cookie
POST /ui/api/logout    ends the session
GET  /ui/api/me        the logged-in user's limits and quota, for the chat page
"""

from __future__ import annotations

import asyncio
from typing import Any

from gatewayctl.proxy import accounts
from gatewayctl.proxy.config import User
from gatewayctl.proxy.credentials import hash_password, verify_password
from gatewayctl.proxy.errors import BadRequest, Forbidden, RateLimited, Unauthorized
from gatewayctl.proxy.gateway import Gateway
from gatewayctl.webui.guard import Guard
from gatewayctl.webui.headers import route
from gatewayctl.webui.responses import api, json_body, ok
from gatewayctl.webui.sessions import COOKIE, Session, Sessions
from gatewayctl.webui.throttle import LoginThrottle
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

MAX_CREDENTIAL = 1024


def home_of(user: User) -> str:
    return "/admin" if user.role == "admin" else "/chat"


def set_session_cookie(request: Request, response: Response, value: str, max_age: int) -> None:
    response.set_cookie(
        COOKIE,
        value,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


class SessionApi:
    def __init__(self, gateway: Gateway, sessions: Sessions, guard: Guard) -> None:
        self.gateway = gateway
        self.sessions = sessions
        self.guard = guard
        self.throttle = LoginThrottle()
        # Unknown names are checked against this, so a wrong name costs as long as a wrong
        # password and the timing does not tell which names exist.
        self._decoy_hash = hash_password("decoy password")

    def routes(self) -> list[BaseRoute]:
        return [
            route("/ui/api/session", api(self.session), methods=["GET"]),
            route("/ui/api/login", api(self.login), methods=["POST"]),
            route("/ui/api/logout", api(self.logout), methods=["POST"]),
            route("/ui/api/me", api(self.me), methods=["GET"]),
        ]

    def _session_view(self, session: Session, user: User | None) -> dict[str, Any]:
        return {
            "user": user.name if user else None,
            "role": user.role if user else None,
            "home": home_of(user) if user else "/login",
            "csrf": self.sessions.csrf_token(session),
        }

    async def session(self, request: Request) -> Response:
        visitor = self.guard.visitor(request)
        if visitor.session is not None:
            return ok(self._session_view(visitor.session, visitor.user))
        cookie, session = self.sessions.issue()
        response = ok(self._session_view(session, None))
        set_session_cookie(request, response, cookie, self.sessions.ttl)
        return response

    async def login(self, request: Request) -> Response:
        visitor = self.guard.visitor(request)
        self.guard.check_csrf(request, visitor.session)
        payload = await json_body(request)
        name, password = payload.get("username"), payload.get("password")
        if not isinstance(name, str) or not isinstance(password, str) or not name or not password:
            raise BadRequest("Enter your user name and password.")
        if len(name) > MAX_CREDENTIAL or len(password) > MAX_CREDENTIAL:
            raise BadRequest("User name or password too long.")
        address = request.client.host if request.client else "unknown"
        refusal = self.throttle.attempt(name, address)
        if refusal is not None:
            wait = str(int(refusal.retry_after))
            raise RateLimited(refusal.message, headers={"retry-after": wait})
        user = self.gateway.config.users.get(name)
        stored = user.password_hash if user and user.password_hash else self._decoy_hash
        matches = await asyncio.to_thread(verify_password, password, stored)
        if user is None or not user.password_hash or not matches:
            raise Unauthorized("Wrong user name or password.", code="invalid_credentials")
        self.throttle.succeeded(name, address)
        if user.suspended:
            raise Forbidden(
                f"The account {user.name!r} is suspended: ask an admin to resume it.",
                code="account_suspended",
            )
        if visitor.session is not None:
            self.sessions.revoke(visitor.session)
        cookie, session = self.sessions.issue(user)
        response = ok(self._session_view(session, user))
        set_session_cookie(request, response, cookie, self.sessions.ttl)
        return response

    async def logout(self, request: Request) -> Response:
        visitor = self.guard.visitor(request)
        self.guard.check_csrf(request, visitor.session)
        if visitor.session is not None:
            self.sessions.revoke(visitor.session)
        response = ok({"home": "/login"})
        set_session_cookie(request, response, "", 0)
        return response

    async def me(self, request: Request) -> Response:
        user = self.guard.user(request)
        totals = self.gateway.ledger.totals(user.name)
        usage = accounts.usage_view(user, totals)
        return ok({**accounts.user_view(user), **usage, "home": home_of(user)})
