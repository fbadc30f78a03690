"""`/metrics` in Prometheus' text format: jobs and rows from the job store, HTTP request latency.

Job figures are read from the store at scrape time (they survive restarts and count every
replica's work), aggregated by the database (`JobStore.totals`: one GROUP BY, never every job
read into Python); each app has its own registry, so several apps in one process do not collide.

    batchpredict_jobs{state}                       jobs in the store, by state
    batchpredict_job_rows{result}                  committed rows of those jobs: succeeded, failed,
                                                   incomplete
    batchpredict_job_tokens{kind}                  tokens of successful rows: prompt, candidates
    batchpredict_running_jobs                      runners in this process (and its capacity:
    batchpredict_max_running_jobs                  more jobs than this wait in PENDING)
    batchpredict_http_request_duration_seconds     histogram by method, route template, status
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from batchpredict.jobs import JobState
from batchpredict.scheduler import Scheduler
from batchpredict.store.base import JobStore

__all__ = ["CONTENT_TYPE", "LatencyMiddleware", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _JobCollector(Collector):
    def __init__(self, store: JobStore, scheduler: Scheduler) -> None:
        self.store = store
        self.scheduler = scheduler

    def collect(self) -> Iterator[Metric]:
        totals = self.store.totals()
        by_state = totals.jobs
        states = GaugeMetricFamily("batchpredict_jobs", "Jobs in the job store, by state.",
                                   labels=["state"])
        for state in JobState:
            if state in by_state or state.short in ("PENDING", "RUNNING", "SUCCEEDED", "FAILED",
                                                    "CANCELLING", "CANCELLED"):
                states.add_metric([state.value], by_state.get(state, 0))
        yield states
        rows = GaugeMetricFamily("batchpredict_job_rows",
                                 "Committed rows of the jobs in the store, by result.",
                                 labels=["result"])
        rows.add_metric(["succeeded"], totals.counts.succeeded)
        rows.add_metric(["failed"], totals.counts.failed)
        rows.add_metric(["incomplete"], totals.incomplete)
        yield rows
        tokens = GaugeMetricFamily("batchpredict_job_tokens",
                                   "Tokens of the successful rows of the jobs in the store.",
                                   labels=["kind"])
        tokens.add_metric(["prompt"], totals.counts.prompt_tokens)
        tokens.add_metric(["candidates"], totals.counts.candidates_tokens)
        yield tokens
        yield GaugeMetricFamily("batchpredict_running_jobs", "Jobs running in this process.",
                                value=len(self.scheduler.running))
        yield GaugeMetricFamily("batchpredict_max_running_jobs",
                                "Jobs all servers on the store run at once; more wait in "
                                "PENDING.",
                                value=self.scheduler.capacity)


class Metrics:
    def __init__(self, store: JobStore, scheduler: Scheduler) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_JobCollector(store, scheduler))
        self.latency = Histogram(
            "batchpredict_http_request_duration_seconds",
            "Time to answer an HTTP request, by method, route template and status code.",
            ["method", "route", "code"],
            buckets=_BUCKETS,
            registry=self.registry,
        )

    def render(self) -> bytes:
        """The exposition text (blocking: reads the job store)."""
        return generate_latest(self.registry)


class LatencyMiddleware:
    """ASGI middleware observing each request's latency under its route template."""

    def __init__(self, app: Any, histogram: Histogram) -> None:
        self.app = app
        self.histogram = histogram

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            # The router leaves the matched route in the scope: label by its template, so
            # /jobs/1 and /jobs/2 are one series.
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.histogram.labels(scope["method"], route, str(status)).observe(
                time.perf_counter() - started
            )
