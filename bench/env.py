"""The processes of one bench run: the fake engine and everything that proxies it.

    direct    the fast fake engine itself (bench/upstream.py)
    gateway   `gatewayctl serve` on a real users.toml, every feature on
    baseline  bare Starlette + httpx-aiohttp pass-through (bench/baseline.py)
    nginx     plain reverse proxy, when installed

All of them are started once, on free ports, in their own processes, and stopped at the end.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.fixtures import BENCH_KEY, write_users
from bench.nginx import nginx_argv, nginx_path
from bench.procs import HOST, Server, free_port, python, running


@dataclass
class Target:
    name: str
    url: str
    key: str | None  # the API key to send, when the target checks one
    pid: int


@dataclass
class Env:
    workdir: Path
    users_path: Path
    targets: dict[str, Target] = field(default_factory=dict)

    @property
    def gateway(self) -> Target:
        return self.targets["gateway"]

    @property
    def direct(self) -> Target:
        return self.targets["direct"]


def gatewayctl() -> list[str]:
    beside = Path(sys.executable).with_name("gatewayctl")  # the venv's script, first
    found = str(beside) if beside.exists() else shutil.which("gatewayctl")
    if found is None:
        raise RuntimeError("gatewayctl is not installed (pip install -e .)")
    return [found]


@contextlib.contextmanager
def started(workdir: Path, *, baseline: bool = True, nginx: bool = True) -> Iterator[Env]:
    with contextlib.ExitStack() as stack:
        logs = workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)

        def start(name: str, argv: list[str], port: int, key: str | None = None) -> Server:
            server = stack.enter_context(running(name, argv, port, log=logs / f"{name}.log"))
            env.targets[name] = Target(name, server.url, key, server.pid)
            return server

        up_port = free_port()
        users = write_users(workdir / "gateway" / "users.toml", f"http://{HOST}:{up_port}")
        env = Env(workdir, users)
        start("direct", python("bench.upstream", "--port", str(up_port)), up_port)
        upstream_url = env.direct.url

        port = free_port()
        argv = [*gatewayctl(), "serve", "--config", str(users), "--port", str(port)]
        start("gateway", [*argv, "--log-level", "warning"], port, BENCH_KEY)

        if baseline:
            port = free_port()
            argv = python("bench.baseline", "--port", str(port), "--upstream", upstream_url)
            start("baseline", argv, port)

        binary = nginx_path() if nginx else None
        if binary:
            port = free_port()
            start("nginx", nginx_argv(binary, workdir / "nginx", port, f"{HOST}:{up_port}"), port)
        try:
            yield env
        except BaseException:
            _show_logs(logs)
            raise


def _show_logs(logs: Path, lines: int = 30) -> None:
    """The end of every server's log, so a failed run says why."""
    for log in sorted(logs.glob("*.log")):
        tail = log.read_text(errors="replace").splitlines()[-lines:]
        if tail:
            print(f"--- {log.name} (last {len(tail)} lines)", *tail, sep="\n", file=sys.stderr)
