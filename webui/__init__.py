"""The browser side of gatewayctl, served by the gateway itself: login, the admin dashboard and
the chat page (``routes.webui_routes``), with plain HTML/CSS/JS modules under ``static/``."""
