"""Prometheus metrics of one app, in its own registry (never the process-global one, so
two apps in one process, as in tests, keep separate counts).

Exposed at ``GET /metrics`` in the Prometheus text format:

=========================================  =========  =====================================
name                                       type       labels / meaning
=========================================  =========  =====================================
captioner_http_requests_total              counter    route, method, status
captioner_http_request_duration_seconds    histogram  route (time to the response's end)
captioner_http_requests_in_flight          gauge      requests being handled now
captioner_queue_depth                      gauge      images waiting for the model
captioner_queue_rejections_total           counter    requests refused with 503 (queue full)
captioner_batch_size                       histogram  images per model run
captioner_batch_duration_seconds           histogram  time of one model run (encode+generate)
captioner_images_captioned_total           counter    images that got a caption
captioner_image_errors_total               counter    error (per-image failures by code)
captioner_model_info                       gauge      model_id, encoder, device, backend (value 1)
=========================================  =========  =====================================
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """All metrics of one app instance."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "captioner_http_requests",
            "HTTP requests by route, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "captioner_http_request_duration_seconds",
            "Time to answer a request.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("captioner_http_requests_in_flight", "Requests being handled now.", registry=r)
        self.queue_depth = Gauge("captioner_queue_depth", "Images waiting for the model.", registry=r)
        self.rejections = Counter(
            "captioner_queue_rejections", "Requests refused because the queue was full.", registry=r
        )
        self.batch_size = Histogram("captioner_batch_size", "Images per model run.", buckets=BATCH_BUCKETS, registry=r)
        self.batch_duration = Histogram(
            "captioner_batch_duration_seconds", "Time of one model run.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.images = Counter("captioner_images_captioned", "Images that got a caption.", registry=r)
        self.image_errors = Counter(
            "captioner_image_errors", "Images that failed, by error code.", ["error"], registry=r
        )
        self.model_info = Gauge(
            "captioner_model_info",
            "The loaded model (value is always 1).",
            ["model_id", "encoder", "device", "backend"],
            registry=r,
        )

    def track_queue(self, depth: Callable[[], float]) -> None:
        """Read the queue depth from ``depth()`` at every scrape."""
        self.queue_depth.set_function(depth)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_duration.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
