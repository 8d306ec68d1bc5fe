"""Moderator deployment: NudeNet's detector behind the blocking policy."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np
from ray import serve

from deployments.metrics import ModerationMetrics
from pipeline.errors import CutoutError
from pipeline.moderation import Policy
from pipeline.service import ContentModerator, LoadedImage
from pipeline.settings import Settings


@serve.deployment(name="Moderator")
class Moderator:
    """Checks inputs and outputs; the policy can change live through ``user_config``.

    ``user_config`` keys: ``block`` (list of categories), ``threshold`` (score).
    """

    def __init__(self, settings: Settings) -> None:
        policy = Policy.of(settings.moderation_block, settings.moderation_threshold)
        self.moderator = ContentModerator(policy, threads=1)
        self.metrics = ModerationMetrics()

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Apply a new policy without reloading the model."""
        current = self.moderator.policy
        self.moderator.policy = Policy.of(config.get("block", current.block), config.get("threshold", current.threshold))

    async def check_input(self, loaded: LoadedImage) -> None:
        """422 if the input fails moderation."""
        await self._check(self.moderator.check_input, loaded)

    async def check_output(self, rgba: np.ndarray) -> None:
        """422 if the cutout fails moderation."""
        await self._check(self.moderator.check_output, rgba)

    async def _check(self, check: Callable[[Any], None], image: Any) -> None:
        try:
            await asyncio.to_thread(check, image)
        except CutoutError as exc:  # a refusal: counted by stage and category
            self.metrics.record(exc.details.get("stage", ""), exc.details.get("categories", ()))
            raise

    async def ready(self) -> bool:
        """Used by ``/healthz``."""
        return True
