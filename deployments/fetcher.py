"""Fetcher deployment: ``image_url`` download, base64 decoding, format sniffing, decoding, limits."""

from __future__ import annotations

import numpy as np
from ray import serve

from pipeline.service import ImageLoader, LoadedImage
from pipeline.settings import Settings


@serve.deployment(name="Fetcher")
class Fetcher:
    """Holds an :class:`ImageLoader`; one replica serves many downloads concurrently."""

    def __init__(self, settings: Settings) -> None:
        self.loader = ImageLoader(settings)

    async def load(self, image_url: str | None, file: str | None, force_rmbg: bool) -> LoadedImage:
        """Fetch or decode the image and prepare the model input."""
        return await self.loader.load(image_url, file, force_rmbg)

    async def model_input(self, loaded: LoadedImage) -> np.ndarray | None:
        """Only the model-sized input, so full-resolution pixels never reach the segmenter.

        ``loaded`` arrives through Ray's object store (zero-copy on the same node).
        """
        return loaded.model_input

    async def ready(self) -> bool:
        """Used by ``/healthz``."""
        return True
