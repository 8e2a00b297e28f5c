"""The one shared HTTP client a gateway process uses to talk to its engines.

It keeps httpx's API (the relay builds requests and streams responses with it) but trims what
a proxy pays for on every request, which measured here was most of its CPU:

* the transport is our own small HTTP/1.1 one (``http1.py``): httpx's default transport costs
  about 1 ms of CPU per request on this kind of machine, the ``httpx-aiohttp`` one 0.25 ms;
* ``send`` skips the auth, redirect, cookie and logging steps of ``httpx.AsyncClient.send``.
  The client has no auth and never follows redirects; cookies must not be kept at all (one
  client serves every user, so an engine's Set-Cookie would be replayed for the next user);
  and a log line per request belongs to the gateway's own access log, not to httpx's INFO;
* ``build_request`` parses each engine URL once and merges headers once: together these were
  most of httpx's own cost per request.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx
from gatewayctl.proxy.config import ServerSettings
from gatewayctl.proxy.http1 import Http1Transport

# Distinct engine URLs (origin + path + query) remembered parsed; past this, start over.
_URL_CACHE_SIZE = 512


class EngineClient(httpx.AsyncClient):
    """An httpx client for talking to engines on behalf of many users (see the module doc)."""

    def __init__(self, *, timeout: httpx.Timeout) -> None:
        # trust_env=False: HTTP(S)_PROXY from the environment would send engine traffic
        # through httpx's own transport to a proxy meant for the outside world.
        self._engines = Http1Transport()
        super().__init__(
            transport=self._engines, timeout=timeout, follow_redirects=False, trust_env=False
        )
        self._urls: dict[str, httpx.URL] = {}

    def build_request(
        self,
        method: str,
        url: httpx.URL | str,
        *,
        content: Any = None,
        headers: Any = None,
        timeout: Any = httpx.USE_CLIENT_DEFAULT,
        extensions: Any = None,
        **other: Any,
    ) -> httpx.Request:
        """httpx's build_request for what the relay sends (bytes and a dict of headers), with
        the headers merged once instead of normalised three times; anything else (params,
        json, files, cookies, streamed content) goes the usual way."""
        target = self._parsed(url)
        if (
            any(value is not None for value in other.values())
            or not isinstance(content, bytes | None)
            or not isinstance(headers, Mapping | None)
            or target.is_relative_url
        ):
            return super().build_request(
                method,
                url,
                content=content,
                headers=headers,
                timeout=timeout,
                extensions=extensions,
                **other,
            )
        merged = {name.lower(): (name, value) for name, value in self.headers.raw}
        for name, text in (headers or {}).items():
            key = name.encode("ascii")
            # latin-1 round-trips any header byte a client sent (httpx's ascii would raise).
            merged[key.lower()] = (key, text.encode("latin-1"))
        raw = [] if b"host" in merged else [(b"Host", target.netloc)]
        raw += merged.values()
        if b"content-length" not in merged and b"transfer-encoding" not in merged:
            if content:
                raw.append((b"Content-Length", str(len(content)).encode()))
            elif method in ("POST", "PUT", "PATCH"):
                raw.append((b"Content-Length", b"0"))
        extensions = dict(extensions or {})
        if "timeout" not in extensions:
            chosen = self.timeout if timeout is httpx.USE_CLIENT_DEFAULT else httpx.Timeout(timeout)
            extensions["timeout"] = chosen.as_dict()
        request = httpx.Request(
            method,
            target,
            headers=raw,
            stream=httpx.ByteStream(content or b""),
            extensions=extensions,
        )
        request.read()
        return request

    def _parsed(self, url: httpx.URL | str) -> httpx.URL:
        if not isinstance(url, str):
            return url
        parsed = self._urls.get(url)
        if parsed is None:
            if len(self._urls) >= _URL_CACHE_SIZE:
                self._urls.clear()
            parsed = self._urls[url] = httpx.URL(url)
        return parsed

    async def send(
        self,
        request: httpx.Request,
        *,
        stream: bool = False,
        auth: Any = httpx.USE_CLIENT_DEFAULT,
        follow_redirects: Any = httpx.USE_CLIENT_DEFAULT,
    ) -> httpx.Response:
        if auth is not httpx.USE_CLIENT_DEFAULT or follow_redirects is True:
            return await super().send(
                request, stream=stream, auth=auth, follow_redirects=follow_redirects
            )
        if self.is_closed:
            raise RuntimeError("Cannot send a request, as the client has been closed.")
        request.extensions.setdefault("timeout", self.timeout.as_dict())
        response = await self._engines.handle_async_request(request)
        if not stream:
            try:
                await response.aread()
            finally:
                await response.aclose()
        return response


def make_upstream_client(server: ServerSettings) -> httpx.AsyncClient:
    timeout = httpx.Timeout(
        connect=server.connect_timeout,
        read=server.read_timeout,
        write=server.read_timeout,
        pool=server.connect_timeout,
    )
    return EngineClient(timeout=timeout)
