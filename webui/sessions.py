"""Browser sessions: a signed cookie, its CSRF token, and the key that signs both.

The cookie holds ``base64url(json) "." base64url(hmac_sha256(key, json))`` with a random
session id, the user name (empty before login), an absolute expiry, and a *binding*: an HMAC of
the user's current ``password_hash``. Every request checks the binding against the config as it
is now, so changing a password (CLI, dashboard or by hand) ends that user's sessions at once,
and removing, suspending or demoting a user takes effect on the next request.

The CSRF token is an HMAC of the session id, handed to the page by a JSON GET (which other
origins cannot read) and sent back in the ``X-CSRF-Token`` header of every state-changing
request, login included (the login form runs under an anonymous session).

The signing key lives beside users.toml in ``.gatewayctl-session-key`` (mode 0600) so sessions
survive a restart; deleting that file logs everyone out. If the directory is not writable the
key is made per process instead.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from gatewayctl.proxy.config import User

COOKIE = "gatewayctl_session"
CSRF_HEADER = "x-csrf-token"
KEY_FILE = ".gatewayctl-session-key"
SESSION_TTL = 12 * 3600
log = logging.getLogger("gatewayctl.webui")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def load_or_create_key(directory: Path) -> bytes:
    """The signing key from ``directory/.gatewayctl-session-key``, created (0600) if absent."""
    path = directory / KEY_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    except OSError as exc:
        log.warning("cannot create %s (%s): sessions will end when the gateway stops", path, exc)
        return secrets.token_bytes(32)
    else:
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32) + "\n")
    try:
        if path.stat().st_mode & 0o077:
            log.warning("%s is readable by other users: run chmod 600 on it", path)
        key = bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError) as exc:
        log.warning("cannot read %s (%s): sessions will end when the gateway stops", path, exc)
        return secrets.token_bytes(32)
    if len(key) < 16:
        log.warning("%s holds a key shorter than 16 bytes: using a per-process key", path)
        return secrets.token_bytes(32)
    return key


@dataclass(frozen=True, slots=True)
class Session:
    sid: str
    user: str  # "" until login
    expires: int
    binding: str  # "" until login

    @property
    def anonymous(self) -> bool:
        return not self.user


class Sessions:
    """Issues, reads and revokes session cookies; holds no per-session state but revocations."""

    def __init__(
        self, key: bytes, *, ttl: int = SESSION_TTL, clock: Callable[[], float] = time.time
    ) -> None:
        self._key = key
        self.ttl = ttl
        self._clock = clock
        # Logged-out session ids until they would have expired anyway.
        self._revoked: dict[str, int] = {}

    def _mac(self, purpose: bytes, data: bytes) -> bytes:
        return hmac.new(self._key, purpose + b"\0" + data, hashlib.sha256).digest()

    def binding_for(self, user: User) -> str:
        return _b64(self._mac(b"password", (user.password_hash or "").encode()))[:22]

    def issue(self, user: User | None = None) -> tuple[str, Session]:
        session = Session(
            sid=secrets.token_urlsafe(16),
            user=user.name if user else "",
            expires=int(self._clock()) + self.ttl,
            binding=self.binding_for(user) if user else "",
        )
        payload = json.dumps(
            {"s": session.sid, "u": session.user, "e": session.expires, "b": session.binding},
            separators=(",", ":"),
        ).encode()
        return f"{_b64(payload)}.{_b64(self._mac(b'cookie', payload))}", session

    def read(self, cookie: str | None) -> Session | None:
        """The session a cookie carries, or None when forged, malformed, expired or revoked."""
        if not cookie or len(cookie) > 1024:
            return None
        body, _, signature = cookie.partition(".")
        try:
            payload = _unb64(body)
            if not hmac.compare_digest(_unb64(signature), self._mac(b"cookie", payload)):
                return None
            data = json.loads(payload)
            session = Session(
                sid=str(data["s"]),
                user=str(data["u"]),
                expires=int(data["e"]),
                binding=str(data["b"]),
            )
        except (ValueError, KeyError, TypeError):
            return None
        if session.expires <= self._clock() or session.sid in self._revoked:
            return None
        return session

    def user_of(self, session: Session, users: Mapping[str, User]) -> User | None:
        """The session's user as configured now; None once the password changed or they left."""
        if session.anonymous:
            return None
        user = users.get(session.user)
        if user is None or not user.password_hash:
            return None
        if not hmac.compare_digest(self.binding_for(user), session.binding):
            return None
        return user

    def csrf_token(self, session: Session) -> str:
        return _b64(self._mac(b"csrf", session.sid.encode()))

    def csrf_ok(self, session: Session, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf_token(session), token or "")

    def revoke(self, session: Session) -> None:
        if session.anonymous:
            # Nothing to take away (a new anonymous session is free for the asking), and anyone
            # could otherwise fill this dict with a GET and a logout per entry.
            return
        now = self._clock()
        for sid, expires in list(self._revoked.items()):
            if expires <= now:
                del self._revoked[sid]
        self._revoked[session.sid] = session.expires
