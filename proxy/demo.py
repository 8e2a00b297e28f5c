"""The demo users shipped in the repository's users.toml, whose secrets are public.

``gatewayctl serve`` refuses to expose them beyond loopback unless told to.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from gatewayctl.proxy.config import Config
from gatewayctl.proxy.credentials import hash_api_key, verify_password

# name -> (password, API key), as printed in the README.
DEMO_USERS: Mapping[str, tuple[str, str]] = MappingProxyType(
    {
        "admin": ("admin123", "sk-admin-001"),
        "alice": ("alice123", "sk-alice-123"),
        "bob": ("bob123", "sk-bob-456"),
        "charlie": ("char123", "sk-char-789"),
    }
)


def demo_credentials_in(config: Config) -> list[str]:
    """Names of users that still have a demo key or a demo password."""
    demo_hashes = {hash_api_key(key) for _, key in DEMO_USERS.values()}
    found = []
    for user in config.users.values():
        if user.key_hash in demo_hashes:
            found.append(user.name)
            continue
        demo = DEMO_USERS.get(user.name)
        if demo and verify_password(demo[0], user.password_hash):
            found.append(user.name)
    return found
