"""Run ASGI apps under a real uvicorn server, in a background thread, for tests.

Usage::

    with serve_in_thread(app) as url:  # url == "http://127.0.0.1:PORT"
        httpx.get(url + "/health")

The listening socket is bound (port 0, picked by the kernel) *before* uvicorn starts and handed to
``uvicorn.Server.run(sockets=[...])``, so there is no window in which another process can grab
the port. The server runs in its own thread with its own event loop (uvicorn's ``loop="auto"``:
uvloop when installed), so the app under test and a synchronous test body never share a loop.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

import uvicorn

__all__ = ["free_port", "serve_in_thread"]

HOST = "127.0.0.1"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    Racy by nature (the port is released before the caller uses it); prefer
    :func:`serve_in_thread`, which keeps the socket bound and hands it to uvicorn.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _bound_socket(port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, port))
        sock.set_inheritable(True)
    except BaseException:
        sock.close()
        raise
    return sock


class _ThreadedServer(uvicorn.Server):
    """A uvicorn server that signals (via an Event) the end of its startup, failed or not."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.startup_done = threading.Event()
        self.error: BaseException | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets=sockets)
        finally:
            self.startup_done.set()

    def run_in_thread(self, sock: socket.socket) -> None:
        try:
            self.run(sockets=[sock])
        except BaseException as exc:  # SystemExit on lifespan failure, bind errors, ...
            self.error = exc
        finally:
            self.startup_done.set()


@contextlib.contextmanager
def serve_in_thread(app: Any, port: int = 0, **uvicorn_kwargs: Any) -> Iterator[str]:
    """Serve ``app`` on a free 127.0.0.1 port in a background thread; yield its base URL.

    ``port`` asks for that port instead (to restart a server where a client expects it).

    ``uvicorn_kwargs`` are passed to :class:`uvicorn.Config` and override the defaults
    (``log_level="warning"``, ``lifespan="on"``, ``timeout_graceful_shutdown=3``). ``host`` and
    ``port`` are always 127.0.0.1 and the pre-bound port.

    Raises ``RuntimeError`` if the server has not started within 10 s (or failed to start), and,
    when the ``with`` body itself raised nothing, if it does not stop within 10 s of the exit.
    """
    sock = _bound_socket(port)
    port = sock.getsockname()[1]
    options: dict[str, Any] = {
        "log_level": "warning",
        "lifespan": "on",
        "timeout_graceful_shutdown": 3,
    }
    options.update(uvicorn_kwargs)
    options["host"] = HOST
    options["port"] = port
    server = _ThreadedServer(uvicorn.Config(app, **options))
    thread = threading.Thread(
        target=server.run_in_thread, args=(sock,), name=f"uvicorn-{port}", daemon=True
    )
    stopped = False
    try:
        thread.start()
        if not server.startup_done.wait(START_TIMEOUT):
            raise RuntimeError(f"uvicorn did not start within {START_TIMEOUT} s on port {port}")
        if not server.started:
            raise RuntimeError(f"uvicorn failed to start on port {port}") from server.error
        try:
            yield f"http://{HOST}:{port}"
        finally:
            stopped = _stop(server, thread)
    finally:
        if thread.is_alive():
            _stop(server, thread)
        sock.close()
    if not stopped:
        raise RuntimeError(f"uvicorn on port {port} did not stop within {STOP_TIMEOUT} s")


def _stop(server: _ThreadedServer, thread: threading.Thread) -> bool:
    server.should_exit = True
    thread.join(STOP_TIMEOUT)
    if thread.is_alive():
        server.force_exit = True
        thread.join(2.0)
        return False
    return True
