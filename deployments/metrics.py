"""The service's Prometheus metrics: every definition and every label vocabulary, in one place.

Metrics are made with ``ray.serve.metrics``, so each series also carries Serve's
``deployment``, ``replica`` and ``application`` labels, and they are exported beside Serve's
own ``ray_serve_*`` metrics on each node's Ray metrics port. Ray prefixes every name with
``ray_`` and adds ``_total`` to counters: ``cutout_requests`` is scraped as
``ray_cutout_requests_total``.

Label values come only from the closed vocabularies below; anything else is counted as
``other``. Organizations and SKUs are never labels: they are unbounded (every customer or
product would be a new series) and belong in the access log, not in Prometheus.

Each deployment creates its recorder in ``__init__`` (inside the replica, where Ray is up).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ray.serve import metrics

from pipeline.settings import MODERATION_LABELS
from pipeline.web import OPENAPI_ROUTE, PAGES, UI_ROUTE

OTHER = "other"
OK = "ok"

ROUTES = ("/product/cutout", "/results", "/healthz", "handle", *PAGES, OPENAPI_ROUTE, UI_ROUTE.rstrip("/"))
"""``handle`` is :meth:`deployments.ingress.Ingress.cutout`, called through the app handle; the
pages (``/``, ``/docs``, the OpenAPI document, the page's assets) have one label each."""
STATUSES = ("200", "400", "401", "403", "404", "405", "413", "415", "422", "429", "460", "500", "503")
REASONS = (
    OK,
    "malformed_json",
    "invalid_parameter",
    "missing_image",
    "invalid_base64",
    "corrupt_image",
    "invalid_url",
    "url_not_allowed",
    "unauthorized",
    "invalid_signature",
    "url_expired",
    "image_not_found",
    "not_found",
    "result_not_found",
    "method_not_allowed",
    "request_too_large",
    "file_too_large",
    "resolution_too_large",
    "unsupported_format",
    "content_moderation_failed",
    "no_product_found",
    "rate_limited",
    "failed_to_download_image",
    "overloaded",
    "unavailable",
    "internal_error",
)
"""``ok`` for a success, else the ``reason`` of the JSON error body (docs/api.md, Errors)."""
STAGES = ("admission", "fetch", "decode", "segment_queue", "segment", "compose", "moderate_output", "encode", "store", "total")
"""The ``Server-Timing`` entries (pipeline/timing.py) that get a latency histogram."""
IMAGE_FORMATS = ("jpeg", "png", "webp")
MODERATION_STAGES = ("input", "output")
STORAGE_BACKENDS = ("local", "gcs")

# Bucket upper bounds.
LATENCY_MS_BUCKETS = [1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 120000]
BATCH_SIZE_BUCKETS = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64]
MEGAPIXEL_BUCKETS = [0.1, 0.25, 0.5, 1, 2, 4, 8, 12, 16, 24, 36, 50, 100, 500]


def label(value: object, vocabulary: Iterable[str]) -> str:
    """``value`` as a label value when it is in ``vocabulary``, else ``other``."""
    text = str(value)
    return text if text in vocabulary else OTHER


def route_of(path: str) -> str:
    """The route label of an HTTP path (a result's name and signature are never a label)."""
    if path.startswith("/results/"):
        return "/results"
    if path.startswith(UI_ROUTE):
        return UI_ROUTE.rstrip("/")
    return label(path, ROUTES)


class RequestMetrics:
    """The ingress's: requests and refusals by route, status and reason; stage latencies."""

    def __init__(self) -> None:
        self.requests = metrics.Counter(
            "cutout_requests",
            description="Requests answered by the ingress, by route, HTTP status and error reason (ok for a success).",
            tag_keys=("route", "status", "reason"),
        )
        self.refusals = metrics.Counter(
            "cutout_refusals",
            description="Cutouts refused or failed (any answer but 200 to POST /product/cutout or the handle), by reason.",
            tag_keys=("status", "reason"),
        )
        self.stage_ms = metrics.Histogram(
            "cutout_stage_duration_ms",
            description="Milliseconds of each Server-Timing stage of successful cutouts (total: the whole request).",
            boundaries=LATENCY_MS_BUCKETS,
            tag_keys=("stage",),
        )

    def record(self, route: str, status: int, reason: str | None, timings: Mapping[str, float]) -> None:
        """Count one answered request and observe its stage times.

        Args:
            route: A value of :data:`ROUTES` (others count as ``other``).
            reason: The error's reason, or None for a success.
            timings: Milliseconds by Server-Timing stage (empty when the request failed).
        """
        tags = {"status": label(status, STATUSES), "reason": label(reason or OK, REASONS)}
        self.requests.inc(1, {"route": label(route, ROUTES), **tags})
        if route in ("/product/cutout", "handle") and status != 200:
            self.refusals.inc(1, tags)
        for stage, ms in timings.items():
            if stage in STAGES:
                self.stage_ms.observe(max(0.0, ms), {"stage": stage})


class SegmenterMetrics:
    """The segmenter's: how full its batches are and how long an input waits for one."""

    def __init__(self) -> None:
        self.batch_size = metrics.Histogram(
            "cutout_segmenter_batch_size",
            description="Inputs per forward pass of the segmenter.",
            boundaries=BATCH_SIZE_BUCKETS,
        )
        self.queue_ms = metrics.Histogram(
            "cutout_segmenter_queue_wait_ms",
            description="Milliseconds an input waited in the segmenter replica before its batch ran.",
            boundaries=LATENCY_MS_BUCKETS,
        )

    def record(self, waits_ms: Iterable[float]) -> None:
        """Observe one batch, given each of its inputs' wait."""
        waits = list(waits_ms)
        self.batch_size.observe(len(waits))
        for ms in waits:
            self.queue_ms.observe(max(0.0, ms))


class ModerationMetrics:
    """The moderator's: refusals by stage and by category found."""

    def __init__(self) -> None:
        self.refusals = metrics.Counter(
            "cutout_moderation_refusals",
            description="Images refused by content moderation, by stage (input or output) and category found; "
            "an image with two categories counts once in each.",
            tag_keys=("stage", "category"),
        )

    def record(self, stage: str, categories: Iterable[str]) -> None:
        """Count one refused image."""
        for category in categories:
            self.refusals.inc(1, {"stage": label(stage, MODERATION_STAGES), "category": label(category, MODERATION_LABELS)})


class InputMetrics:
    """The fetcher's: the size of accepted inputs."""

    def __init__(self) -> None:
        self.megapixels = metrics.Histogram(
            "cutout_input_megapixels",
            description="Megapixels of each decoded input image, by format.",
            boundaries=MEGAPIXEL_BUCKETS,
            tag_keys=("format",),
        )

    def record(self, width: int, height: int, image_format: str) -> None:
        """Observe one decoded input."""
        self.megapixels.observe(width * height / 1e6, {"format": label(image_format, IMAGE_FORMATS)})


class StorageMetrics:
    """The uploader's: results and bytes written to the result storage."""

    def __init__(self, backend: str) -> None:
        self.backend = label(backend, STORAGE_BACKENDS)
        self.stored_bytes = metrics.Counter(
            "cutout_stored_bytes",
            description="Bytes of result PNGs written to the result storage, by backend.",
            tag_keys=("backend",),
        )
        self.stored = metrics.Counter(
            "cutout_stored_results",
            description="Result PNGs written to the result storage, by backend.",
            tag_keys=("backend",),
        )

    def record(self, size: int) -> None:
        """Count one stored result of ``size`` bytes."""
        self.stored.inc(1, {"backend": self.backend})
        self.stored_bytes.inc(size, {"backend": self.backend})
