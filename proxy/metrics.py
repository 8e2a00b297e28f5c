"""Prometheus metrics, in a registry of the app's own (never prometheus-client's global one, so
two apps in one process, as in tests, keep separate counts).

Counters and histograms are updated where things happen: once per request by the access
middleware (``observe.py``), at settlement, and where a request is refused. Gauges (in flight,
queue depth, upstream health) cost nothing per request: they are read from the scheduler and
the upstream pool when /metrics is scraped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from gatewayctl.proxy.ledger import UsageRecord
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import Metric

# From a cached embedding to a long generation.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
UNKNOWN = "-"  # label value when the user or model is not known (refused before auth, ...)
# Model names come from clients, and some engines (llama.cpp's server) answer 200 whatever the
# name: past this many distinct names, new ones share one label value so the series stay bounded.
MAX_MODEL_LABELS = 200
OTHER_MODEL = "(other)"


M = TypeVar("M", Counter, Histogram)


class _Children(Generic[M]):
    """A metric's children by label values. ``labels()`` validates its arguments and takes a
    lock on every call; on the request path a dict lookup is enough once a child exists."""

    def __init__(self, metric: M) -> None:
        self._metric: M = metric
        self._children: dict[tuple[str, ...], M] = {}

    def __call__(self, *values: str) -> M:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


class _Gauges:
    """A collector that builds its metric families at scrape time."""

    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self.collect = collect


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "gatewayctl_requests",
            "HTTP requests answered, by user, model, route and status.",
            ["user", "model", "route", "status"],
            registry=r,
        )
        self.tokens = Counter(
            "gatewayctl_tokens",
            "Tokens charged to users, by kind (prompt or completion).",
            ["user", "model", "kind"],
            registry=r,
        )
        self.latency = Histogram(
            "gatewayctl_request_duration_seconds",
            "Time from the request's arrival to the end of its response.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "gatewayctl_time_to_first_token_seconds",
            "Time from the request's arrival to the first byte of the engine's answer.",
            ["model"],
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "gatewayctl_queue_wait_seconds",
            "Time queued requests waited for an upstream slot before being served.",
            buckets=_WAIT_BUCKETS,
            registry=r,
        )
        self.rejections = Counter(
            "gatewayctl_rejections",
            "Requests refused by a limit: rate_limit, quota, concurrency, queue_full, "
            "queue_timeout.",
            ["user", "reason"],
            registry=r,
        )
        self.reloads = Counter(
            "gatewayctl_config_reloads", "users.toml changes applied.", registry=r
        )
        self.reload_failures = Counter(
            "gatewayctl_config_reload_failures",
            "users.toml changes rejected (the last good config kept serving).",
            registry=r,
        )
        self.connect_failures = Counter(
            "gatewayctl_upstream_connect_failures",
            "Connections to an upstream that failed (the request moved to another one if any).",
            ["upstream"],
            registry=r,
        )

        self._requests = _Children(self.requests)
        self._latency = _Children(self.latency)
        self._tokens = _Children(self.tokens)
        self._ttft = _Children(self.ttft)

        self._models: set[str] = set()

    def _model(self, model: str) -> str:
        if model not in self._models:
            if len(self._models) >= MAX_MODEL_LABELS:
                return OTHER_MODEL
            self._models.add(model)
        return model

    def add_gauges(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self.registry.register(_Gauges(collect))

    def answered(self, user: str, model: str, route: str, status: int, seconds: float) -> None:
        self._requests(user, self._model(model), route, str(status)).inc()
        self._latency(route).observe(seconds)

    def rejected(self, user: str, reason: str) -> None:
        self.rejections.labels(user, reason).inc()

    def settled(self, record: UsageRecord) -> None:
        model = self._model(record.model)
        if record.prompt_tokens:
            self._tokens(record.user, model, "prompt").inc(record.prompt_tokens)
        if record.completion_tokens:
            self._tokens(record.user, model, "completion").inc(record.completion_tokens)
        if record.ttft_ms is not None and record.status == 200:
            self._ttft(model).observe(record.ttft_ms / 1000)

    def render(self) -> bytes:
        return generate_latest(self.registry)
