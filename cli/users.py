"""``gatewayctl user ...``: manage users and their limits in users.toml."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from gatewayctl.cli.common import (
    DEFAULT_CONFIG,
    ConfigOption,
    JsonOption,
    clean_errors,
    limit_changes,
    print_json,
    print_table,
)
from gatewayctl.proxy import accounts
from gatewayctl.proxy.config import Role
from gatewayctl.proxy.models import parse_patterns
from gatewayctl.proxy.store import Store

app = typer.Typer(help="Manage users, keys and limits.", no_args_is_help=False)

RpsOption = Annotated[
    str | None, typer.Option("--rps", help="Requests per second (a number, or 'none').")
]
BurstOption = Annotated[
    str | None, typer.Option("--burst", help="Bucket size: requests at once (default max(1, rps)).")
]
QuotaOption = Annotated[
    str | None, typer.Option("--quota", help="Lifetime token quota, prompt + completion.")
]
MaxTokensOption = Annotated[
    str | None, typer.Option("--max-tokens", help="Cap on max_tokens of each request.")
]
ConcurrencyOption = Annotated[
    str | None,
    typer.Option(
        "--concurrency", help="Requests in flight at once, queued ones included (or 'none')."
    ),
]
ModelsOption = Annotated[
    str | None,
    typer.Option(
        "--models",
        help="Models the user may use: comma-separated globs such as 'llama3.2:*,qwen2.5:0.5b'"
        " ('none': all models).",
    ),
]


def _limits(
    rps: str | None,
    burst: str | None,
    quota: str | None,
    max_tokens: str | None,
    models: str | None = None,
    concurrency: str | None = None,
) -> dict[str, Any]:
    limits = limit_changes(
        rps=(rps, float),
        burst=(burst, int),
        quota=(quota, int),
        max_tokens=(max_tokens, int),
        concurrency=(concurrency, int),
    )
    if models is not None:
        limits["models"] = parse_patterns(models)
    return limits


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list | tuple):
        return ",".join(value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


@app.callback(invoke_without_command=True)
def user_root(ctx: typer.Context, config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Manage users, keys and limits (bare `gatewayctl user` lists them)."""
    if ctx.invoked_subcommand is None:
        user_list(config=config, as_json=False)


@app.command("list")
@clean_errors
def user_list(config: ConfigOption = DEFAULT_CONFIG, as_json: JsonOption = False) -> None:
    """List users and their limits."""
    users = [accounts.user_view(u) for _, u in sorted(Store(config).load().users.items())]
    if as_json:
        print_json(users)
        return
    columns = [
        *("user", "role", "status", "rps", "burst", "quota", "max_tokens", "concurrency"),
        "models",
    ]
    rows = [
        [
            u["user"],
            u["role"],
            "suspended" if u["suspended"] else "active",
            *(_fmt(u[k]) for k in ("rps", "burst", "quota", "max_tokens", "concurrency")),
            "all" if u["models"] is None else _fmt(u["models"]),
        ]
        for u in users
    ]
    print_table(columns, rows)


@app.command("show")
@clean_errors
def user_show(
    name: str, config: ConfigOption = DEFAULT_CONFIG, as_json: JsonOption = False
) -> None:
    """Show one user's settings."""
    view = accounts.user_view(accounts.get_user(Store(config).load(), name))
    if as_json:
        print_json(view)
        return
    for key, value in view.items():
        typer.echo(f"{key:<13} {_fmt(value)}")


@app.command("add")
@clean_errors
def user_add(
    name: str,
    role: Annotated[str, typer.Option("--role", help="user or admin.")] = "user",
    password: Annotated[
        str | None, typer.Option("--password", help="Password for the web UI (optional).")
    ] = None,
    rps: RpsOption = None,
    burst: BurstOption = None,
    quota: QuotaOption = None,
    max_tokens: MaxTokensOption = None,
    models: ModelsOption = None,
    concurrency: ConcurrencyOption = None,
    config: ConfigOption = DEFAULT_CONFIG,
) -> None:
    """Add a user and print their new API key (shown this once)."""
    if role not in ("user", "admin"):
        raise accounts.AccountError(f"--role must be 'user' or 'admin', got {role!r}")
    chosen: Role = "admin" if role == "admin" else "user"
    limits = _limits(rps, burst, quota, max_tokens, models, concurrency)
    key = Store(config).update(
        lambda c: accounts.add_user(c, name, role=chosen, password=password, limits=limits)
    )
    typer.echo(f"added {chosen} {name!r}. API key (shown once, store it now):")
    typer.echo(key)


@app.command("set-limit")
@clean_errors
def user_set_limit(
    name: str,
    rps: RpsOption = None,
    burst: BurstOption = None,
    quota: QuotaOption = None,
    max_tokens: MaxTokensOption = None,
    models: ModelsOption = None,
    concurrency: ConcurrencyOption = None,
    config: ConfigOption = DEFAULT_CONFIG,
) -> None:
    """Change limits or allowed models; 'none' lifts one. The running gateway applies it within
    a second."""
    limits = _limits(rps, burst, quota, max_tokens, models, concurrency)
    if not limits:
        raise accounts.AccountError(
            "nothing to change: give --rps, --burst, --quota, --max-tokens, --concurrency or "
            "--models"
        )
    user = Store(config).update(lambda c: accounts.set_limits(c, name, limits))
    changes = ", ".join(f"{k}={_fmt(getattr(user, k))}" for k in limits)
    typer.echo(f"{name}: {changes}")


@app.command("suspend")
@clean_errors
def user_suspend(name: str, config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Refuse every request of this user (403) until resumed."""
    Store(config).update(lambda c: accounts.set_suspended(c, name, True))
    typer.echo(f"{name}: suspended")


@app.command("resume")
@clean_errors
def user_resume(name: str, config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Lift a suspension."""
    Store(config).update(lambda c: accounts.set_suspended(c, name, False))
    typer.echo(f"{name}: active")


@app.command("rotate-key")
@clean_errors
def user_rotate_key(name: str, config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Replace the user's API key; the old one stops working at once."""
    key = Store(config).update(lambda c: accounts.rotate_key(c, name))
    typer.echo(f"new API key for {name!r} (shown once, store it now):")
    typer.echo(key)


@app.command("passwd")
@clean_errors
def user_passwd(
    name: str,
    password: Annotated[
        str | None,
        typer.Option("--password", help="The new password (asked for when not given)."),
    ] = None,
    config: ConfigOption = DEFAULT_CONFIG,
) -> None:
    """Set the user's web UI password."""
    store = Store(config)
    accounts.get_user(store.load(), name)  # an unknown user is told before being asked twice
    if password is None:
        password = str(typer.prompt("Password", hide_input=True, confirmation_prompt=True))
    new_password = password
    store.update(lambda c: accounts.set_password(c, name, new_password))
    typer.echo(f"{name}: password changed")


@app.command("remove")
@clean_errors
def user_remove(name: str, config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Remove a user (their usage history stays in the ledger)."""
    Store(config).update(lambda c: accounts.remove_user(c, name))
    typer.echo(f"{name}: removed")
