"""Who is this browser: the session check every web UI route goes through, on the server.

``Guard`` reads the session cookie, checks it against the *current* config (so password changes,
suspensions, removals and role changes apply on the next request), and enforces CSRF on
state-changing requests. ``authenticate`` plugs the same checks into the proxy pipeline, so the
chat page runs as the logged-in user with that user's limits, quota and accounting.
"""

from __future__ import annotations

from dataclasses import dataclass

from gatewayctl.proxy.asgi import Scope
from gatewayctl.proxy.config import User
from gatewayctl.proxy.errors import Forbidden, Unauthorized
from gatewayctl.proxy.gateway import Gateway
from gatewayctl.webui.sessions import COOKIE, CSRF_HEADER, Session, Sessions
from starlette.requests import HTTPConnection

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class SessionExpired(Unauthorized):
    code = "session_expired"


class CsrfRejected(Forbidden):
    def __init__(self, message: str) -> None:
        super().__init__(message, code="csrf_failed")


class AdminOnly(Forbidden):
    def __init__(self) -> None:
        super().__init__("This page is for admins only.", code="admin_only")


@dataclass(frozen=True, slots=True)
class Visitor:
    session: Session | None
    user: User | None


class Guard:
    def __init__(self, gateway: Gateway, sessions: Sessions) -> None:
        self.gateway = gateway
        self.sessions = sessions

    def visitor(self, conn: HTTPConnection) -> Visitor:
        session = self.sessions.read(conn.cookies.get(COOKIE))
        if session is None:
            return Visitor(None, None)
        return Visitor(session, self.sessions.user_of(session, self.gateway.config.users))

    def check_csrf(self, conn: HTTPConnection, session: Session | None) -> None:
        """Refuse a state-changing request that did not come from our own pages."""
        if conn.scope["method"] in SAFE_METHODS:
            return
        # Browsers label every request; only our own pages send same-origin ones.
        site = conn.headers.get("sec-fetch-site")
        if site is not None and site not in ("same-origin", "none"):
            raise CsrfRejected("Cross-site request refused.")
        if session is None:
            raise SessionExpired("Your session has expired: reload the page and log in again.")
        if not self.sessions.csrf_ok(session, conn.headers.get(CSRF_HEADER)):
            raise CsrfRejected("Missing or wrong CSRF token: reload the page and try again.")

    def user(self, conn: HTTPConnection, *, admin: bool = False) -> User:
        """The logged-in user allowed to make this request, or a GatewayError saying why not."""
        visitor = self.visitor(conn)
        self.check_csrf(conn, visitor.session)
        user = visitor.user
        if user is None:
            raise SessionExpired("You are not logged in, or your session has expired.")
        if user.suspended:
            raise Forbidden(
                f"The account {user.name!r} is suspended: ask an admin to resume it.",
                code="account_suspended",
            )
        if admin and user.role != "admin":
            raise AdminOnly()
        return user

    def authenticate(self, scope: Scope) -> User:
        """The proxy pipeline's authenticator for routes the browser calls with its cookie."""
        return self.user(HTTPConnection(scope))
