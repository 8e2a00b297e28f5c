"""gatewayctl: the command line. Commands parse, call the store or the ledger, and print."""

from __future__ import annotations

from gatewayctl.cli.main import app


def main() -> None:
    app(prog_name="gatewayctl")


__all__ = ["app", "main"]
