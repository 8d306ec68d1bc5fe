"""Fetcher deployment: ``image_url`` download, base64 decoding, format sniffing, decoding, limits."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray
from ray import serve

from deployments.metrics import InputMetrics
from pipeline.cache import CacheRequest
from pipeline.service import ImageLoader
from pipeline.settings import Settings
from pipeline.timing import Timings


@dataclass
class Fetched:
    """What the fetcher hands back to the ingress: small things only.

    Attributes:
        image: Ray object reference to the :class:`LoadedImage` (full-resolution pixels stay
            in the object store; the uploader and moderator read them from there). This
            replica owns the object: should it be stopped while a request still needs the
            image, the request fails with ``OwnerDiedError``, which the ingress answers 503.
        model_input: (S, S, 3) uint8 for the segmenter, or None when the model is not needed.
        cache_name: The result's name in the result cache, or None when it is off.
        cached: On a cache hit, the answer (``result_url``, ``crop``...); ``image`` is then None.
        cached_bytes: On a cache hit where the file itself was asked for, its bytes.
        timings: On a cache hit, the stage timings (otherwise they travel with the image).
    """

    image: ray.ObjectRef | None
    model_input: np.ndarray | None
    cache_name: str | None = None
    cached: dict[str, Any] | None = None
    cached_bytes: bytes | None = None
    timings: Timings = field(default_factory=dict)


@serve.deployment(name="Fetcher")
class Fetcher:
    """Holds an :class:`ImageLoader`; one replica serves many downloads concurrently."""

    def __init__(self, settings: Settings) -> None:
        self.loader = ImageLoader(settings)
        self.metrics = InputMetrics()

    async def load(
        self,
        image_url: str | None,
        file: str | None,
        force_rmbg: bool,
        cache_request: CacheRequest | None = None,
        want_bytes: bool = False,
    ) -> Fetched:
        """Fetch the image and look its result up in the result cache; on a miss, decode it
        (the full-resolution result goes to the object store)."""
        loaded = await self.loader.load(image_url, file, force_rmbg, cache_request, want_bytes)
        if loaded.cached is not None:
            return Fetched(None, None, loaded.cache_name, loaded.cached, loaded.cached_bytes, loaded.timings)
        self.metrics.record(loaded.image.width, loaded.image.height, loaded.image.format)
        model_input, loaded.model_input = loaded.model_input, None
        return Fetched(await asyncio.to_thread(ray.put, loaded), model_input, loaded.cache_name)

    async def ready(self) -> bool:
        """Used by ``/healthz``."""
        return True
