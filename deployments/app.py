"""The application builder: ``deployments.app:build_app`` in ``serve_config.yaml``."""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from deployments.fetcher import Fetcher
from deployments.ingress import Ingress
from deployments.moderator import Moderator
from deployments.ratelimiter import RateLimiter
from deployments.segmenter import Segmenter
from deployments.uploader import Uploader
from pipeline.settings import load_settings

APP_NAME = "product_cutout"


def build_app(args: dict[str, Any] | None = None) -> Application:
    """Validate the settings (``args`` overridden by ``CUTOUT_*``) and bind the graph.

    Raises:
        SettingsError: Naming every invalid setting, so a bad config stops the deploy.
    """
    settings = load_settings(args or {})
    segmenter = Segmenter
    if settings.segmenter_device == "cuda":
        # Used when serve_config.yaml gives the segmenter no ray_actor_options of its own.
        segmenter = Segmenter.options(ray_actor_options={"num_cpus": 1, "num_gpus": 1})
    moderator = Moderator.bind(settings)
    return Ingress.bind(
        settings,
        Fetcher.bind(settings),
        segmenter.bind(settings),
        moderator,
        Uploader.bind(settings, moderator),
        RateLimiter.bind(settings.rate_limit_burst_s),
    )
