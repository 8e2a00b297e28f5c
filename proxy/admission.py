"""Letting a request in: rate limit, model access, per-request cap, quota reservation; and
settling after.

``admit`` decides synchronously (the check and the in-memory reservation happen in one step
on the event loop, so concurrent requests cannot both take the last tokens), then waits for the
reservation to be durable. ``settle`` replaces the reservation with the real usage.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from gatewayctl.proxy.asgi import Headers
from gatewayctl.proxy.config import User
from gatewayctl.proxy.errors import LedgerUnavailable, QuotaExhausted, RateLimited
from gatewayctl.proxy.forward import Outcome
from gatewayctl.proxy.gateway import Gateway
from gatewayctl.proxy.ledger import LedgerError, UsageRecord
from gatewayctl.proxy.limits import rate_headers
from gatewayctl.proxy.models import ensure_model_allowed


@dataclass(slots=True)
class Ticket:
    user: User
    model: str
    endpoint: str
    request_id: str
    started: float  # perf_counter()
    prompt_estimate: int
    completion_limit: int | None  # per choice; None: the request and user set none
    reserved: int = 0
    reservation: int | None = None


def check_rate(gateway: Gateway, user: User) -> Headers:
    decision = gateway.limiter.acquire(user)
    if decision is None:
        return []
    headers = rate_headers(decision)
    if not decision.allowed:
        wait = decision.retry_after
        gateway.metrics.rejected(user.name, "rate_limit")
        raise RateLimited(
            f"Rate limit reached for {user.name}: {user.rps:g} requests per second "
            f"(burst {decision.limit}). Try again in {wait:.2f}s.",
            headers={
                "retry-after": str(max(1, math.ceil(wait))),
                "retry-after-ms": str(max(1, math.ceil(wait * 1000))),
                **{k.decode(): v.decode() for k, v in headers},
            },
        )
    return headers


def _smallest(*values: int | None) -> int | None:
    present = [v for v in values if v is not None]
    return min(present) if present else None


async def admit(
    gateway: Gateway,
    user: User,
    *,
    model: str,
    endpoint: str,
    request_id: str,
    started: float,
    prompt_estimate: int,
    requested_limit: int | None,
    choices: int = 1,
    generates: bool = True,
) -> Ticket:
    ensure_model_allowed(user, model)
    limit = _smallest(requested_limit, user.max_tokens) if generates else None
    ticket = Ticket(user, model, endpoint, request_id, started, prompt_estimate, limit)
    available = gateway.quotas.available(user)
    if available is None:
        return ticket
    room = available - prompt_estimate
    if room < (choices if generates else 0):
        used = gateway.ledger.totals(user.name).total_tokens
        if available <= 0:
            message = f"You exceeded your token quota: {used} of {user.quota} tokens used."
        else:
            message = (
                f"This request needs about {prompt_estimate} prompt tokens plus its answer, "
                f"but only {available} of your {user.quota} tokens are left."
            )
        gateway.metrics.rejected(user.name, "quota")
        raise QuotaExhausted(message)
    if generates:
        per_choice = room // choices
        ticket.completion_limit = _smallest(limit, per_choice)
    ticket.reserved = prompt_estimate + (ticket.completion_limit or 0) * choices
    gateway.quotas.reserve(user, ticket.reserved)
    try:
        ticket.reservation = await gateway.ledger.reserve(
            user.name, ticket.reserved, model=model, endpoint=endpoint, request_id=request_id
        )
    except BaseException as exc:
        gateway.quotas.release(user.name, ticket.reserved)
        if isinstance(exc, LedgerError):  # disk full, file removed: already logged
            raise LedgerUnavailable(
                "The gateway cannot record usage right now; try again later."
            ) from None
        raise
    return ticket


def settle(gateway: Gateway, ticket: Ticket, outcome: Outcome) -> UsageRecord:
    """Charge what the request really used and drop its reservation."""
    usage = outcome.usage
    if usage is not None:
        # An engine's numbers are taken as they come, except a negative one: a credit would
        # lift the user's quota.
        prompt, completion = max(0, usage.prompt_tokens), max(0, usage.completion_tokens)
        estimated = False
    elif outcome.status == 200:
        # The engine worked but said nothing (llama.cpp streams, a cut stream, a disconnect):
        # count what was streamed and estimate the prompt.
        prompt, completion, estimated = ticket.prompt_estimate, outcome.counted_tokens, True
    else:
        prompt, completion, estimated = 0, 0, False
    now = time.perf_counter()
    record = UsageRecord(
        ts=time.time(),
        user=ticket.user.name,
        model=ticket.model,
        endpoint=ticket.endpoint,
        prompt_tokens=prompt,
        completion_tokens=completion,
        estimated=estimated,
        status=outcome.status,
        outcome=outcome.outcome,
        latency_ms=(now - ticket.started) * 1000,
        ttft_ms=None if outcome.ttft is None else (outcome.ttft - ticket.started) * 1000,
        request_id=ticket.request_id,
    )
    gateway.ledger.record(record, ticket.reservation)
    gateway.metrics.settled(record)
    gateway.quotas.release(ticket.user.name, ticket.reserved)
    return record
