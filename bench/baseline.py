"""The bare pass-through the gateway is compared with: Starlette + httpx over the httpx-aiohttp
transport, no auth, no limits, no accounting; the proxy core from the design notes.

Run: ``python -m bench.baseline --port 9001 --upstream http://127.0.0.1:9000``.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route


def create_app(upstream: str) -> Starlette:
    clients: list[httpx.AsyncClient] = []

    async def proxy(request: Request) -> StreamingResponse:
        client = clients[0]
        body = await request.body()
        outgoing = client.build_request(
            request.method,
            upstream + request.url.path,
            content=body,
            headers={"content-type": request.headers.get("content-type", "application/json")},
        )
        response = await client.send(outgoing, stream=True)
        return StreamingResponse(
            response.aiter_raw(),
            status_code=response.status_code,
            media_type=response.headers.get("content-type"),
            background=BackgroundTask(response.aclose),
        )

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        # aiohttp's default connector allows 100 connections: lift it as the gateway does.
        transport = AiohttpTransport(
            client=lambda: aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        )
        async with httpx.AsyncClient(transport=transport, timeout=300) as client:
            clients.append(client)
            yield

    return Starlette(
        routes=[Route("/v1/chat/completions", proxy, methods=["POST"])], lifespan=lifespan
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    import uvicorn

    uvicorn.run(
        create_app(args.upstream.rstrip("/")),
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
