"""Who is calling: the API key in ``Authorization: Bearer sk-...``.

The key is hashed and looked up by its hash, so no stored secret is compared byte by byte
against attacker input; the final compare_digest guards against a hash collision in the map.
The key itself is never logged and never forwarded upstream.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from gatewayctl.proxy.asgi import Scope, header
from gatewayctl.proxy.config import User
from gatewayctl.proxy.credentials import hash_api_key
from gatewayctl.proxy.errors import Forbidden, Unauthorized


def bearer_token(scope: Scope) -> str | None:
    value = header(scope, b"authorization")
    if value is None:
        return None
    scheme, _, token = value.decode("latin-1").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def user_for_key(users_by_key: Mapping[str, User], key: str | None) -> User:
    if not key:
        raise Unauthorized(
            "You didn't provide an API key. Send it as 'Authorization: Bearer sk-...'."
        )
    hashed = hash_api_key(key)
    user = users_by_key.get(hashed)
    # The dict lookup found the hash; compare_digest guards against a collision in the map
    # (hashing the key a second time, as verify_api_key would, adds nothing).
    if user is None or user.key_hash is None or not hmac.compare_digest(hashed, user.key_hash):
        raise Unauthorized("Incorrect API key provided.")
    if user.suspended:
        raise Forbidden(f"The account {user.name!r} is suspended.", code="account_suspended")
    return user


def require_admin(user: User) -> None:
    if user.role != "admin":
        raise Forbidden(
            f"{user.name!r} is not an admin: this route is for admins only.", code="admin_only"
        )
