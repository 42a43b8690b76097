"""What a coordinator running a Crunch for months wants to watch, as Prometheus metrics
(`pip install 'model-runner-client[metrics]'`): per-model call latency, calls by outcome,
reports by code, models ready / pending / cooling down, tick durations.

    from model_runner_client.metrics import PrometheusMetrics
    metrics = PrometheusMetrics()            # prometheus_client's default registry
    client = ModelRunnerClient(..., metrics=metrics)
    prometheus_client.start_http_server(9100)   # or your framework's /metrics endpoint

Why Prometheus's client: it is the format both Prometheus and New Relic (the deployed CrunchDAO
stack's monitoring, through its Prometheus integration) scrape, it needs no SDK or exporter
set-up, and it is a small, maintained library. A client without `metrics=` records nothing (one
`is None` test per call; benchmarks/README.md has the measured cost of recording).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .results import CallResults

__all__ = ["Metrics", "PrometheusMetrics"]


class Metrics(Protocol):
    """What the client records, if it is given a recorder."""

    def watch(self, models: Callable[[], int], pending: Callable[[], int],
              cooling: Callable[[], int]) -> None:
        """Gauges read when scraped: models ready, still being set up, cooling down."""

    def tick(self, method: str, seconds: float, results: CallResults[Any],
             kinds: list[str]) -> None:
        """One `call`: its duration, and each model's outcome (`kinds[i]`: how results[i]
        ended, from the client's one classification) and latency."""

    def report(self, code: str) -> None:
        """A model reported to the orchestrator."""

    def forget(self, model_id: str) -> None:
        """A model left (its LEFT event) and is no longer held: drop what is kept per model,
        so that months of churn keep it bounded by the models held, not every model seen."""


#: Latency buckets (seconds): models answer in a millisecond to tens of seconds.
_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class PrometheusMetrics:
    """`Metrics` as prometheus_client collectors in `registry` (default: the global one).

    model_runner_client_call_latency_seconds{model_id, method}  histogram (answered calls;
                                                                removed when the model leaves)
    model_runner_client_calls_total{method, status, kind}       counter
    model_runner_client_reports_total{code}                     counter
    model_runner_client_tick_seconds{method}                    histogram
    model_runner_client_models{state="ready"|"pending"|"cooling"} gauge
    """

    def __init__(self, registry: Any = None, namespace: str = "model_runner_client") -> None:
        try:
            import prometheus_client as prom
        except ModuleNotFoundError:
            raise ModuleNotFoundError(
                "PrometheusMetrics needs prometheus_client: pip install "
                "'model-runner-client[metrics]'") from None
        registry = prom.REGISTRY if registry is None else registry
        self.registry = registry
        self._latency = prom.Histogram(f"{namespace}_call_latency_seconds",
                                       "Latency of answered calls, per model",
                                       ["model_id", "method"], buckets=_LATENCY,
                                       registry=registry)
        self._calls = prom.Counter(f"{namespace}_calls_total",
                                   "Calls by outcome: status (SUCCESS, FAILURE, TIMEOUT) and "
                                   "kind (success, model failure, timeout, skipped, ...)",
                                   ["method", "status", "kind"], registry=registry)
        self._reports = prom.Counter(f"{namespace}_reports_total",
                                     "Models reported to the orchestrator, by code", ["code"],
                                     registry=registry)
        self._ticks = prom.Histogram(f"{namespace}_tick_seconds",
                                     "Duration of each call() across its models", ["method"],
                                     buckets=_LATENCY, registry=registry)
        self._models = prom.Gauge(f"{namespace}_models", "Models held, by state", ["state"],
                                  registry=registry)
        # Labelled children, looked up once each (prometheus_client's labels() cost ~5 µs a
        # call); one per model and method, removed by forget() when the model leaves, so
        # bounded by the models held.
        self._latency_of: dict[tuple[str, str], Any] = {}
        self._calls_of: dict[tuple[str, str, str], Any] = {}

    def watch(self, models: Callable[[], int], pending: Callable[[], int],
              cooling: Callable[[], int]) -> None:
        self._models.labels("ready").set_function(models)
        self._models.labels("pending").set_function(pending)
        self._models.labels("cooling").set_function(cooling)

    def tick(self, method: str, seconds: float, results: CallResults[Any],
             kinds: list[str]) -> None:
        self._ticks.labels(method).observe(seconds)
        counts: dict[tuple[str, str], int] = {}
        latency_of = self._latency_of
        for result, kind in zip(results, kinds, strict=True):
            status = result.status.value
            counts[status, kind] = counts.get((status, kind), 0) + 1
            if result.latency_us and status != "TIMEOUT":
                key = (result.model_id, method)
                histogram = latency_of.get(key)
                if histogram is None:
                    histogram = latency_of[key] = self._latency.labels(result.model_id, method)
                histogram.observe(result.latency_us / 1e6)
        for (status, kind), count in counts.items():
            counter = self._calls_of.get((method, status, kind))
            if counter is None:
                counter = self._calls_of[method, status, kind] = self._calls.labels(
                    method, status, kind)
            counter.inc(count)

    def report(self, code: str) -> None:
        self._reports.labels(str(code)).inc()

    def forget(self, model_id: str) -> None:
        for key in [key for key in self._latency_of if key[0] == model_id]:
            del self._latency_of[key]
            self._latency.remove(*key)  # the series is no longer exported
