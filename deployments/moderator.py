"""Moderator deployment: NudeNet's detector behind the blocking policy."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from ray import serve

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

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Apply a new policy without reloading the model."""
        current = self.moderator.policy
        self.moderator.policy = Policy.of(config.get("block", current.block), config.get("threshold", current.threshold))

    async def check_input(self, loaded: LoadedImage) -> None:
        """422 if the input fails moderation."""
        await asyncio.to_thread(self.moderator.check_input, loaded)

    async def check_output(self, rgba: np.ndarray) -> None:
        """422 if the cutout fails moderation."""
        await asyncio.to_thread(self.moderator.check_output, rgba)

    async def ready(self) -> bool:
        """Used by ``/healthz``."""
        return True
