"""What every command shares: the --config option, clean error lines, limit values."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer
from gatewayctl.proxy.config import ConfigError
from gatewayctl.proxy.ledger import LedgerError

P = ParamSpec("P")
R = TypeVar("R")


def _typed(source: Enum | None) -> bool:
    """Whether a parameter came from the command line (not the environment or a default)."""
    return source is not None and source.name == "COMMANDLINE"


def _group_config(ctx: typer.Context, value: Path) -> Path:
    """`gatewayctl user --config X list` acts on X, not on the subcommand's own default.

    The group and each subcommand both take --config; without this, a --config given before
    the subcommand was silently ignored and ./users.toml (or $GATEWAYCTL_CONFIG) changed instead.
    """
    parent = ctx.parent
    if (
        parent is not None
        and _typed(parent.get_parameter_source("config"))
        and not _typed(ctx.get_parameter_source("config"))
    ):
        return Path(parent.params["config"])
    return value


ConfigOption = Annotated[
    Path,
    typer.Option(
        "--config",
        "-c",
        envvar="GATEWAYCTL_CONFIG",
        callback=_group_config,
        help="Path of users.toml (default: $GATEWAYCTL_CONFIG, else ./users.toml).",
        show_default=False,
    ),
]
DEFAULT_CONFIG = Path("users.toml")
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


def clean_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn domain errors into one line on stderr and exit status 1, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except (ConfigError, LedgerError) as exc:
            raise fail(str(exc)) from None
        except OSError as exc:
            raise fail(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": ")) from None

    return wrapper


def parse_limit(name: str, raw: str | None, kind: type[int] | type[float]) -> Any:
    """``none`` lifts a limit (returns None); a number sets it."""
    if raw is None:
        raise ValueError("no value")
    if raw.strip().lower() in ("none", "unlimited"):
        return None
    try:
        return kind(raw)
    except ValueError:
        word = "an integer" if kind is int else "a number"
        raise fail(f"--{name.replace('_', '-')}: expected {word} or 'none', got {raw!r}") from None


def limit_changes(**raw: tuple[str | None, type[int] | type[float]]) -> dict[str, Any]:
    return {
        name: parse_limit(name, value, kind)
        for name, (value, kind) in raw.items()
        if value is not None
    }


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    for line in [headers, *rows]:
        typer.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        )
