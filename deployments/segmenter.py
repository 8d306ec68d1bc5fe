"""Segmenter deployment: the model, batched (:class:`~pipeline.batching.Batcher`); GPU when configured."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time

import numpy as np
from ray import serve

from deployments.metrics import SegmenterMetrics
from pipeline.batching import Batcher
from pipeline.service import Segmentation
from pipeline.settings import Settings


@serve.deployment(name="Segmenter")
class Segmenter:
    """Receives model-sized inputs only and returns low-resolution probability maps."""

    def __init__(self, settings: Settings) -> None:
        import ray

        from pipeline.segment import segmenter_from_settings

        cpus = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
        self.model = segmenter_from_settings(settings, cpus)
        # Waits on the model's own long-lived workers (pipeline.segment), off the event loop.
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="segmenter")
        self._batcher = Batcher(
            self._infer, settings.segmenter_batch_size, settings.segmenter_batch_wait_s, settings.segmenter_partner_wait_s
        )
        # the widest forward: a full batch of `best` requests, each with its mirror
        self.model.warm_up(2 * settings.segmenter_batch_size)
        self.metrics = SegmenterMetrics()

    async def _infer(self, inputs: list[tuple[np.ndarray, float, bool]]) -> list[Segmentation]:
        started = time.perf_counter()
        self.metrics.record(1000.0 * (started - arrived) for _, arrived, _ in inputs)
        batch = np.stack([x for x, _, _ in inputs])
        # `best` requests also run mirrored, in the same forward as the batch's `fast` ones
        flip = np.array([f for _, _, f in inputs], dtype=bool)
        probabilities = await asyncio.get_running_loop().run_in_executor(self._executor, self.model.predict, batch, flip)
        forward_ms = 1000.0 * (time.perf_counter() - started)
        return [
            Segmentation(p, {"segment_queue": 1000.0 * (started - arrived), "segment": forward_ms})
            for p, (_, arrived, _) in zip(probabilities, inputs)
        ]

    async def segment(self, model_input: np.ndarray | None, quality: str = "fast", more_coming: bool = False) -> Segmentation:
        """The low-resolution probability map (None when the output alpha needs no model).

        Args:
            model_input: (S, S, 3) uint8 at the model's input size; never the full image.
            quality: ``best`` also runs the model on the mirrored input and averages the two.
            more_coming: Other requests of the caller's ingress replica hold pipeline slots, so
                another image comes soon: this one may wait up to ``segmenter_partner_wait_s``
                to run beside it.
        """
        if model_input is None:
            return Segmentation(None)
        return await self._batcher.submit((model_input, time.perf_counter(), quality == "best"), more_coming)

    async def ready(self) -> bool:
        """Used by ``/healthz``."""
        return True
