"""The web UI's routes, for ``create_app`` to add beside the proxy's.

Everything the web UI keeps (signing key, login throttle, caches) lives in the objects made
here, once per app.
"""

from __future__ import annotations

from gatewayctl.proxy.gateway import Gateway
from gatewayctl.webui.activity import ActivityCache
from gatewayctl.webui.admin_api import AdminApi
from gatewayctl.webui.chat import chat_routes
from gatewayctl.webui.guard import Guard
from gatewayctl.webui.pages import Pages
from gatewayctl.webui.session_api import SessionApi
from gatewayctl.webui.sessions import Sessions, load_or_create_key
from starlette.routing import BaseRoute


def webui_routes(gateway: Gateway) -> list[BaseRoute]:
    sessions = Sessions(load_or_create_key(gateway.config_path.resolve().parent))
    guard = Guard(gateway, sessions)
    admin = AdminApi(gateway, guard, activity=ActivityCache(gateway.ledger.path))
    return [
        *Pages(guard).routes(),
        *SessionApi(gateway, sessions, guard).routes(),
        *admin.routes(),
        *chat_routes(gateway, guard),
    ]
