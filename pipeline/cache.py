"""The result cache: the same image bytes with the same options, model and weights give the stored result.

The index is the result storage itself. A cached result is stored under a name derived from a
SHA-256 key (:func:`pipeline.storage.cache_object_name`): looking it up is asking the storage
whether that name exists, so the cache survives restarts, works across replicas, and a hit
can never point at a file the storage no longer has. The key covers:

- the organization (one organization's upload never finds another's result),
- the SHA-256 of the image bytes as uploaded or downloaded,
- every request field that changes the file (``force_rmbg``, ``preserve_alpha``,
  ``content_moderation`` and the output options),
- the model, its weights' SHA-256, and every setting that changes the pixels (input size,
  precision, engine, device, edge refinement, cut-offs, PNG level), and the moderation policy
  for moderated requests,
- the *window* of ``CUTOUT_RESULT_CACHE_S`` seconds the result was made in.

Lifetime: a lookup asks for the names of the current and the previous window and takes a file
only while it is at most ``CUTOUT_RESULT_CACHE_S`` old, so a result is found again for that long
after it was made, whatever the window boundaries. A hit's fresh URL lives
``CUTOUT_RESULT_URL_TTL_S``, and the storage keeps cached files
``CUTOUT_RESULT_CACHE_S + CUTOUT_RESULT_URL_TTL_S`` (local storage's cleanup; on Cloud Storage the
bucket's one-day lifecycle rule, which the settings check is long enough). So no URL handed out, on
a miss or a hit, outlives its file. An older result is not overwritten (the storage never
overwrites): the next miss stores a new one under the current window's name, and the old one
expires on the ordinary schedule.

Concurrent identical requests: each that misses computes the result, and each stores it
create-only (local: a hard link; Cloud Storage: ``ifGenerationMatch=0``). The first write wins
whole; the others' writes are refused and they answer with the URL of that same object. No
reader ever sees part of a file, because both backends make an object visible only once complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from typing import Any

from pipeline.contract import CutoutResult, Placement
from pipeline.request import OutputOptions
from pipeline.settings import Settings
from pipeline.storage import ResultStorage, cache_object_name

# Bump when a code change alters the files produced for the same inputs and settings.
CACHE_FORMAT_VERSION = 1
HIT = "cache_hit"
MISS = "cache_miss"


def model_fingerprint(settings: Settings) -> dict[str, Any]:
    """Everything in the settings that changes a result's pixels or bytes."""
    from pipeline.models.registry import get_spec

    spec = get_spec(settings.segmenter_model)
    weights = settings.segmenter_weights_sha256 or (spec.onnx.sha256 if spec.onnx else None)
    return {
        "version": CACHE_FORMAT_VERSION,
        "model": settings.segmenter_model,
        "weights": weights,
        "input_size": settings.model_input_size,
        "dtype": settings.segmenter_dtype,
        "engine": settings.segmenter_engine,
        "device": settings.segmenter_device,
        "min_confidence": settings.segmenter_min_confidence,
        "alpha_cutoff": settings.segmenter_alpha_cutoff,
        "refine_edges": settings.refine_edges,
        "refine_foreground": settings.refine_foreground,
        "png_compress_level": settings.png_compress_level,
    }


@dataclasses.dataclass(frozen=True)
class CacheRequest:
    """The parts of a request that pick its cached result (what the fetcher is told).

    Attributes:
        org: The organization.
        force_rmbg: As in the request.
        preserve_alpha: As in the request.
        content_moderation: As in the request (a moderated result only serves moderated requests).
        output: The output options.
        quality: ``fast`` or ``best`` (the request's, or the service's default).
    """

    org: str
    force_rmbg: bool
    preserve_alpha: bool
    content_moderation: bool
    output: OutputOptions = dataclasses.field(default_factory=OutputOptions)
    quality: str = "fast"


def cache_key(digest: str, request: CacheRequest, fingerprint: dict[str, Any], window: int) -> str:
    """The 64-hex-digit key of a result.

    Args:
        digest: SHA-256 (hex) of the image bytes.
        request: The request's fields that change the result.
        fingerprint: :func:`model_fingerprint` (plus the moderation policy where it applies).
        window: Index of the current cache window.
    """
    material = {
        "image": digest,
        "request": dataclasses.asdict(request),
        "model": fingerprint,
        "window": window,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=list).encode()).hexdigest()


class ResultCache:
    """Finds and stores cached results in a :class:`ResultStorage`.

    Args:
        storage: The result storage (the index and the files).
        settings: Service settings (``result_cache_s``, the model's fingerprint, moderation policy).
    """

    def __init__(self, storage: ResultStorage, settings: Settings) -> None:
        self.storage = storage
        self.period_s = settings.result_cache_s
        self.fingerprint = model_fingerprint(settings)
        self.policy = {"block": sorted(settings.moderation_block), "threshold": settings.moderation_threshold}

    @property
    def enabled(self) -> bool:
        """Whether the cache is on (``CUTOUT_RESULT_CACHE_S`` > 0)."""
        return self.period_s > 0

    def names(self, digest: str, request: CacheRequest, now: float | None = None) -> tuple[str, str]:
        """The storage names of this image and request's result in the current and the previous window."""
        now = time.time() if now is None else now
        fingerprint = {**self.fingerprint, "policy": self.policy} if request.content_moderation else self.fingerprint
        window = int(now // self.period_s)
        return tuple(  # type: ignore[return-value]
            cache_object_name(request.org, cache_key(digest, request, fingerprint, w), request.output.format)
            for w in (window, window - 1)
        )

    def lookup(self, names: tuple[str, ...], now: float | None = None) -> tuple[str, str, dict[str, Any]] | None:
        """The first of ``names`` stored at most ``CUTOUT_RESULT_CACHE_S`` ago: its name, a signed
        URL valid from now, and its stored answer; None on a miss.

        Raises:
            CutoutError: 503 when the storage is unavailable.
        """
        now = time.time() if now is None else now
        for name in names:
            meta = self.storage.find(name)
            if meta is not None and "answer" in meta and now - float(meta.get("created", 0)) <= self.period_s:
                return name, self.storage.signed_url(self.storage.stored_name(name)), json.loads(meta["answer"])
        return None

    def read(self, name: str) -> bytes:
        """The bytes of a cached result (for answers that carry the file itself)."""
        return self.storage.read(self.storage.stored_name(name))

    def store(self, name: str, data: bytes, answer: dict[str, Any], metadata: dict[str, Any]) -> str:
        """Store a result under its cache name unless it is there already; return the stored name.

        Args:
            answer: What a hit answers besides the URL (``crop``, ``source``, ``placement``).
            metadata: Stored with the file as for any result (sku, request id, model).
        """
        self.storage.put_named(name, data, {**metadata, "answer": json.dumps(answer, sort_keys=True)})
        return self.storage.stored_name(name)


def cache_state(timings: dict[str, float]) -> str | None:
    """``hit`` or ``miss`` for the ``X-Cache`` header, from the stage timings; None when no lookup ran."""
    if HIT in timings:
        return "hit"
    if MISS in timings:
        return "miss"
    return None


def hit_body(cached: dict[str, Any], sku: str | None, data: bytes | None = None, with_placement: bool = True) -> dict[str, Any]:
    """The 200 body of ``POST /product/cutout`` from an answer (stored or just made), built through
    :class:`pipeline.contract.CutoutResult`: ``result_url``, ``sku``, ``crop``, ``source``, then
    ``placement`` when asked for (a request without output options gets today's four keys).

    With ``data`` (the remove.bg endpoint, which answers with the file itself) it is that
    endpoint's record instead: the file and its :class:`pipeline.contract.Placement`, no URL.
    """
    if data is not None:
        return {"placement": Placement.model_validate(cached["placement"]).model_dump(), "data": data}
    result = CutoutResult(
        result_url=cached["result_url"],
        sku=sku,
        crop=cached["crop"],
        source=cached["source"],
        placement=cached["placement"] if with_placement else None,
    )
    return result.model_dump(mode="json")
