"""Uploader deployment: full-resolution finishing, output moderation, PNG encoding, storage, URL signing."""

from __future__ import annotations

import asyncio
import logging

import ray
from ray import serve
from ray.serve._private.constants import SERVE_NAMESPACE
from ray.serve.handle import DeploymentHandle

from deployments.metrics import StorageMetrics
from pipeline.errors import unavailable
from pipeline.service import CutoutOptions, Finisher, LoadedImage, Segmentation
from pipeline.settings import Settings
from pipeline.timing import Timings, timed

logger = logging.getLogger("ray.serve")


def actor_alive(name: str) -> bool:
    """Whether the named Serve actor is alive (one lookup in Ray's GCS; its death shows within
    milliseconds). When the lookup itself fails for another reason, it counts as alive."""
    try:
        ray.get_actor(name, namespace=SERVE_NAMESPACE)
    except ValueError:  # no live actor by that name
        return False
    except Exception:
        return True
    return True


@serve.deployment(name="Uploader")
class Uploader:
    """Owns the result storage; asks the moderator before it stores anything."""

    def __init__(self, settings: Settings, moderator: DeploymentHandle) -> None:
        self.finisher = Finisher(settings)
        self.moderator = moderator
        self.metrics = StorageMetrics("gcs" if settings.uses_gcs else "local")
        self._storage_error: str | None = None
        try:
            logger.info("result storage ready: %s", self.finisher.check())
        except Exception as exc:  # reported by check_health, so Serve marks the replica unhealthy
            self._storage_error = f"result storage start-up check failed: {exc}"
            logger.error(self._storage_error)
        self._cleaner = asyncio.get_event_loop().create_task(self._clean_forever(min(300, settings.result_url_ttl_s / 4)))

    async def _clean_forever(self, period_s: float) -> None:
        while True:
            try:
                removed = await asyncio.to_thread(self.finisher.cleanup)
                if removed:
                    logger.info("deleted %d expired result files", removed)
            except Exception:  # the next round tries again; the replica keeps serving
                logger.exception("deleting expired results failed; next try in %.0f s", period_s)
            await asyncio.sleep(period_s)

    async def finish(
        self,
        loaded: LoadedImage,
        segmentation: Segmentation,
        options: CutoutOptions,
        moderate: bool,
        caller: str | None = None,
    ) -> tuple[dict, Timings]:
        """Compose the cutout, moderate it if asked, then store it.

        Args:
            caller: The Ray actor name of the ingress replica that asks. When it has died by the
                time the result is ready (``kill -9``, its node lost), nothing is stored: its
                client has been answered 503 and will send the request again; the object would be
                one nobody is ever given the URL of.

        Returns:
            The 200 body, and every stage's milliseconds so far (for ``Server-Timing``).
        """
        if self._storage_error:
            raise unavailable("Result storage is unavailable; try again.", retry_after=10, internal=self._storage_error)
        timings = {**loaded.timings, **segmentation.timings}
        with timed(timings, "compose"):
            rgba, crop = await asyncio.to_thread(self.finisher.compose, loaded, segmentation.probability, options)
        if moderate:
            with timed(timings, "moderate_output"):
                await self.moderator.check_output.remote(rgba)
        if caller is not None and not await asyncio.to_thread(actor_alive, caller):
            raise unavailable("The request's replica stopped.", internal=f"caller {caller} died before the upload")
        body, size = await asyncio.to_thread(self.finisher.store, loaded, rgba, crop, options, timings)
        self.metrics.record(size)
        return body, timings

    async def read(self, name: str, expires: str | None, signature: str | None) -> bytes:
        """A stored result for ``GET /results/...``."""
        return await asyncio.to_thread(self.finisher.read, name, expires, signature)

    def check_health(self) -> None:
        """Serve's health check: fails while the start-up check of the storage has failed."""
        if self._storage_error:
            raise RuntimeError(self._storage_error)

    async def ready(self) -> bool:
        """Used by ``/healthz``."""
        self.check_health()
        return True
