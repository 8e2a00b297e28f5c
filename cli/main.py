"""Top-level commands: init, serve, check, usage; ``user`` is its own group."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from gatewayctl.cli import users
from gatewayctl.cli.common import (
    DEFAULT_CONFIG,
    ConfigOption,
    JsonOption,
    clean_errors,
    fail,
    print_json,
    print_table,
)
from gatewayctl.proxy import accounts
from gatewayctl.proxy.config import (
    DEFAULT_UPSTREAM,
    Config,
    ServerSettings,
    User,
    ledger_path,
    load_config,
    parse_config,
)
from gatewayctl.proxy.credentials import new_password
from gatewayctl.proxy.demo import demo_credentials_in
from gatewayctl.proxy.ledger import Totals, read_totals
from gatewayctl.proxy.store import Store

app = typer.Typer(
    help="A gateway for self-hosted LLMs: keys, limits, quotas and accounting in front of Ollama.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(users.app, name="user")


@app.command("init")
@clean_errors
def init(
    admin: Annotated[str, typer.Option("--admin", help="Name of the first admin.")] = "admin",
    upstream: Annotated[str, typer.Option("--upstream", help="Engine URL.")] = DEFAULT_UPSTREAM,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
    config: ConfigOption = DEFAULT_CONFIG,
) -> None:
    """Write a fresh users.toml with one admin; prints the admin's password and key once."""
    password = new_password()
    fresh = Config(server=ServerSettings(upstream=upstream.rstrip("/")))
    fresh, key = accounts.add_user(fresh, admin, role="admin", password=password)
    Store(config).create(fresh, overwrite=force)
    typer.echo(f"wrote {config}")
    typer.echo(f"admin user: {admin}")
    typer.echo(f"password:   {password}")
    typer.echo(f"API key:    {key}")
    typer.echo("(shown once: store them now)")


LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def _is_loopback(host: str) -> bool:
    import ipaddress  # imported here, like logging and uvicorn: only serve needs them

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _tune_gc() -> None:
    """The relay allocates a few dozen short-lived objects per streamed chunk, and a thousand
    held streams keep a large live set: with Python's default thresholds a full collection
    ran every few seconds and stopped every stream for over 100 ms (measured with bench/).
    A larger young generation lets per-chunk objects die before they are ever collected,
    and full collections become rare; what startup built is frozen out of them."""
    import gc

    gc.freeze()
    gc.set_threshold(10_000, 50, 1000)


@app.command("serve")
@clean_errors
def serve(
    host: Annotated[
        str | None,
        typer.Option("--host", help="Address to bind (default from users.toml, 127.0.0.1)."),
    ] = None,
    port: Annotated[
        int | None, typer.Option("--port", help="Port (default from users.toml, 8000).")
    ] = None,
    upstream: Annotated[
        str | None,
        typer.Option(
            "--upstream", help="Engine URL (default from users.toml, http://127.0.0.1:11434)."
        ),
    ] = None,
    workers: Annotated[
        int, typer.Option("--workers", help="Worker processes (only 1 until limits are shared).")
    ] = 1,
    allow_demo_credentials: Annotated[
        bool,
        typer.Option(
            "--allow-demo-credentials",
            help="Bind a non-loopback address although the demo keys and passwords are present.",
        ),
    ] = False,
    log_level: Annotated[str, typer.Option("--log-level", help=", ".join(LOG_LEVELS))] = "info",
    config: ConfigOption = DEFAULT_CONFIG,
) -> None:
    """Run the gateway."""
    if workers != 1:
        raise fail(
            "--workers must be 1: rate limits and quota reservations live in this process, and "
            "several workers would each keep their own (a shared backend is not there yet)"
        )
    # Checked here: logging and uvicorn would fail on them with a traceback, after startup.
    log_level = log_level.lower()
    if log_level not in LOG_LEVELS:
        raise fail(f"--log-level must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}")
    if port is not None and not 1 <= port <= 65535:
        raise fail(f"--port must be between 1 and 65535, got {port}")
    if upstream is not None:
        parse_config({"server": {"upstream": upstream}})  # the rule users.toml follows
    loaded = load_config(config)
    bind = host or loaded.server.host
    demo = demo_credentials_in(loaded)
    if demo and not _is_loopback(bind):
        if not allow_demo_credentials:
            raise fail(
                f"refusing to bind {bind}: users.toml still has the demo credentials of "
                f"{', '.join(demo)}. Rotate them, or pass --allow-demo-credentials."
            )
        typer.echo(
            f"warning: serving on {bind} with the publicly known demo credentials of "
            f"{', '.join(demo)}",
            err=True,
        )
    import logging

    import uvicorn  # imported late: every other command starts faster without it
    from gatewayctl.proxy.app import create_app

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # httpx logs each request at INFO: the upstream health probes would fill the log.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))
    application = create_app(config, upstream=upstream)
    _tune_gc()
    uvicorn.run(
        application,
        host=bind,
        port=port or loaded.server.port,
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=10,
        # A thousand streaming clients may connect within a second.
        backlog=4096,
        # Nothing for a client to learn from "server: uvicorn", and bytes on every answer.
        server_header=False,
    )


@app.command("check")
@clean_errors
def check(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Validate users.toml; exits 1 with the offending line or field."""
    loaded = load_config(config)
    urls = [u.url for u in loaded.effective_upstreams()]
    where = f"upstream {urls[0]}" if len(urls) == 1 else f"upstreams {', '.join(urls)}"
    typer.echo(f"{config}: ok ({len(loaded.users)} users, {where})")


@app.command("usage")
@clean_errors
def usage(
    name: Annotated[str | None, typer.Argument(help="Only this user.")] = None,
    as_json: JsonOption = False,
    show_all: Annotated[
        bool, typer.Option("--all", help="Also users removed from users.toml but in the ledger.")
    ] = False,
    config: ConfigOption = DEFAULT_CONFIG,
) -> None:
    """Requests and tokens per user, against their quota."""
    loaded = load_config(config)
    totals = read_totals(ledger_path(loaded, Path(config)))
    users = dict(loaded.users)
    if show_all:  # a removed user keeps their history; shown without limits
        users.update({n: User(name=n) for n in totals if n not in users})
    selected = [accounts.get_user(loaded, name)] if name else [u for _, u in sorted(users.items())]
    rows: list[dict[str, Any]] = [
        accounts.usage_view(u, totals.get(u.name, Totals())) for u in selected
    ]
    if as_json:
        print_json(rows)
        return
    columns = [
        "user",
        "requests",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "quota",
        "remaining",
    ]
    print_table(columns, [[("-" if r[c] is None else str(r[c])) for c in columns] for r in rows])
