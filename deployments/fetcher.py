"""Fetcher deployment: ``image_url`` download, base64 decoding, format sniffing, decoding, limits."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
import ray
from ray import serve

from deployments.metrics import InputMetrics
from pipeline.service import ImageLoader
from pipeline.settings import Settings


@dataclass
class Fetched:
    """What the fetcher hands back to the ingress: small things only.

    Attributes:
        image: Ray object reference to the :class:`LoadedImage` (full-resolution pixels stay
            in the object store; the uploader and moderator read them from there). This
            replica owns the object: should it be stopped while a request still needs the
            image, the request fails with ``OwnerDiedError``, which the ingress answers 503.
        model_input: (S, S, 3) uint8 for the segmenter, or None when the model is not needed.
    """

    image: ray.ObjectRef
    model_input: np.ndarray | None


@serve.deployment(name="Fetcher")
class Fetcher:
    """Holds an :class:`ImageLoader`; one replica serves many downloads concurrently."""

    def __init__(self, settings: Settings) -> None:
        self.loader = ImageLoader(settings)
        self.metrics = InputMetrics()

    async def load(self, image_url: str | None, file: str | None, force_rmbg: bool) -> Fetched:
        """Fetch or decode the image; the full-resolution result goes to the object store."""
        loaded = await self.loader.load(image_url, file, force_rmbg)
        self.metrics.record(loaded.image.width, loaded.image.height, loaded.image.format)
        model_input, loaded.model_input = loaded.model_input, None
        return Fetched(await asyncio.to_thread(ray.put, loaded), model_input)

    async def ready(self) -> bool:
        """Used by ``/healthz``."""
        return True
