"""Prometheus metrics of one app, in its own CollectorRegistry (so several apps in one
process keep separate numbers). Under `--workers` (workers.py) the numbers go to
prometheus_client's multiprocess files instead, and `exposition` adds up every worker's."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from .stores.spool import all_spool_bytes, spool_bytes
from .workers import multiprocess_metrics

_METHODS = frozenset({"OPTIONS", "POST", "HEAD", "PATCH", "DELETE", "GET"})
_UPLOAD_COUNTERS = {"post-create": "created", "post-finish": "finished", "post-terminate": "terminated"}
_S3_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "tusserver_requests", "HTTP requests answered, by method and status", ["method", "status"], registry=r
        )
        self.received_bytes = Counter("tusserver_received_bytes", "Upload bytes received in request bodies", registry=r)
        self.uploads = {
            name: Counter(f"tusserver_uploads_{name}", f"Uploads {name}", registry=r)
            for name in _UPLOAD_COUNTERS.values()
        }
        self.active_uploads = Gauge(
            "tusserver_active_uploads",
            "Requests receiving upload bytes right now",
            registry=r,
            multiprocess_mode="livesum",  # under --workers: the sum over live workers
        )
        self.s3_seconds = Histogram(
            "tusserver_s3_request_seconds",
            "S3 request durations (retries included), by operation",
            ["operation"],
            buckets=_S3_BUCKETS,
            registry=r,
        )
        self.s3_errors = Counter(
            "tusserver_s3_request_errors",
            "S3 requests that failed (5xx or no answer), by operation",
            ["operation"],
            registry=r,
        )
        self.temp_dir: str | None = None
        # Under --workers, exposition() measures every worker's spool instead.
        self.temp_bytes = None
        if multiprocess_metrics() is None:
            self.temp_bytes = Gauge(
                "tusserver_temp_bytes", "Bytes in this process's spool files in the temp directory", registry=r
            )
        self.hook_invocations = Counter(
            "tusserver_hook_invocations",
            "Hook calls, by event and source (python, http)",
            ["event", "source"],
            registry=r,
        )
        self.hook_errors = Counter(
            "tusserver_hook_errors", "Hook calls that failed, by event and source", ["event", "source"], registry=r
        )
        self.hook_dropped = Counter(
            "tusserver_hook_dropped",
            "post-* webhook events dropped because the delivery queue was full, by event",
            ["event"],
            registry=r,
        )

    def upload_event(self, event: str) -> None:
        name = _UPLOAD_COUNTERS.get(event)
        if name is not None:
            self.uploads[name].inc()

    def watch_store(self, store: Any) -> None:
        """Time the store's S3 requests and measure its spool, when it has them. Call after store.start()."""
        client = getattr(store, "client", None)
        events = getattr(getattr(client, "meta", None), "events", None)
        if events is not None:
            events.register("before-call.s3", self._s3_started)
            events.register("after-call.s3", self._s3_finished)
            events.register("after-call-error.s3", self._s3_failed)
        if hasattr(store, "temp_dir"):
            temp_dir = self.temp_dir = store.temp_dir
            if self.temp_bytes is not None:
                self.temp_bytes.set_function(lambda: spool_bytes(temp_dir))

    def exposition(self) -> bytes:
        """The Prometheus text of /metrics: this app's, or every worker's under --workers."""
        directory = multiprocess_metrics()
        if directory is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, directory)
        if self.temp_dir is not None:
            registry.register(_WorkersSpool(self.temp_dir))
        return generate_latest(registry)

    # botocore event handlers: `context` is the same dict from before-call to after-call.
    def _s3_started(self, model: Any, context: dict[str, Any], **_: Any) -> None:
        context["tusserver_started"] = time.monotonic()

    def _s3_finished(self, model: Any, context: dict[str, Any], http_response: Any = None, **_: Any) -> None:
        started = context.pop("tusserver_started", None)
        if started is not None:
            self.s3_seconds.labels(model.name).observe(time.monotonic() - started)
        # 4xx answers are part of normal work (a missing .part is a 404); 5xx are failures.
        if http_response is not None and http_response.status_code >= 500:
            self.s3_errors.labels(model.name).inc()

    def _s3_failed(self, context: dict[str, Any], event_name: str = "", **_: Any) -> None:
        started = context.pop("tusserver_started", None)
        operation = event_name.rsplit(".", 1)[-1]
        if started is not None:
            self.s3_seconds.labels(operation).observe(time.monotonic() - started)
        self.s3_errors.labels(operation).inc()

    def count(self, method: str, status: int, received: int) -> None:
        """One answered request, with the upload bytes its body brought."""
        self.requests.labels(method if method in _METHODS else "other", str(status)).inc()
        if received:
            self.received_bytes.inc(received)


class _WorkersSpool:
    """tusserver_temp_bytes under --workers: the spool files of every process, read at
    scrape time (a function gauge has no multiprocess form)."""

    def __init__(self, temp_dir: str | None) -> None:
        self.temp_dir = temp_dir

    def collect(self) -> Any:
        yield GaugeMetricFamily(
            "tusserver_temp_bytes", "Bytes in the spool files of every worker", value=all_spool_bytes(self.temp_dir)
        )
