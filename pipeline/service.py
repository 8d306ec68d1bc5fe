"""The stages of one cutout as plain Python, shared by the Serve deployments and by in-process use.

Each class is what one deployment holds: :class:`ImageLoader` (fetcher), :class:`Finisher`
(uploader). The segmenter and moderator wrap :mod:`pipeline.segment` and
:mod:`pipeline.moderation` directly.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline import compose, imageio, matting, output, refine
from pipeline.cache import HIT, MISS, CacheRequest, ResultCache, hit_body
from pipeline.errors import moderation_failed
from pipeline.fetch import Fetcher, FetchLimits, Resolver
from pipeline.moderation import NudityDetector, Policy, over_white
from pipeline.netguard import AddressPolicy
from pipeline.request import OutputOptions
from pipeline.settings import Settings
from pipeline.storage import open_storage
from pipeline.timing import Timings, timed


@dataclass
class LoadedImage:
    """A decoded input and, when the model is needed, its model-sized copy.

    Attributes:
        image: Full-resolution pixels (None on a cache hit: nothing was decoded).
        model_input: (S, S, 3) uint8 for the segmenter, or None when the model is not needed.
        timings: Milliseconds spent fetching and decoding (see :mod:`pipeline.timing`).
        cache_name: The storage name of this result in the result cache, or None when off.
        cached: On a cache hit, the stored answer with a fresh ``result_url`` (no ``sku``).
        cached_bytes: On a cache hit for a caller that wants the file itself, its bytes.
    """

    image: imageio.DecodedImage | None
    model_input: np.ndarray | None
    timings: Timings = field(default_factory=dict)
    cache_name: str | None = None
    cached: dict[str, Any] | None = None
    cached_bytes: bytes | None = None


@dataclass
class Segmentation:
    """What the segmenter returns: the low-resolution mask and the time it took.

    Attributes:
        probability: (S, S) float32 foreground probabilities, or None when the output alpha
            needs no model (the input's own alpha is used).
        timings: ``segment_queue`` (waiting for a batch) and ``segment`` (the batch's forward).
    """

    probability: np.ndarray | None
    timings: Timings = field(default_factory=dict)


class ImageLoader:
    """Fetches or decodes the request's image under the configured limits.

    Args:
        settings: Service settings.
        resolver: DNS resolver for ``image_url`` (tests inject one).
        verify: TLS verification for downloads.
    """

    def __init__(self, settings: Settings, resolver: Resolver | None = None, verify: bool | str = True) -> None:
        self.settings = settings
        self.model_size = settings.model_input_size
        limits = FetchLimits(
            max_bytes=settings.max_src_file_size,
            connect_timeout_s=settings.download_connect_timeout_s,
            total_timeout_s=settings.download_timeout_s,
            max_redirects=settings.max_redirects,
            allowed_hosts=settings.allowed_sources,
        )
        self.fetcher = Fetcher(AddressPolicy(settings.allowed_source_networks), limits, resolver, verify)
        self.cache = ResultCache(open_storage(settings), settings) if settings.result_cache_s > 0 else None

    async def load(
        self,
        image_url: str | None,
        file: str | None,
        force_rmbg: bool,
        cache_request: CacheRequest | None = None,
        want_bytes: bool = False,
    ) -> LoadedImage:
        """Download or decode, look the result up in the result cache, then decode and prepare
        the model input on a miss (decoding runs in a worker thread).

        Args:
            cache_request: The request's fields that pick its cached result; None: no lookup.
            want_bytes: On a hit, read the cached file's bytes too.

        Raises:
            CutoutError: Any input error of docs/api.md (400, 404, 413, 415, 460).
        """
        timings: Timings = {}
        with timed(timings, "fetch"):
            if image_url:
                data, parameter = await self.fetcher.fetch(image_url), "image_url"
            else:
                text, limit = file or "", self.settings.max_src_file_size
                # up to 16 MB of base64: decoded off the event loop that serves other downloads
                decoded = (
                    await asyncio.to_thread(imageio.decode_base64, text, limit)
                    if len(text) > 65536
                    else imageio.decode_base64(text, limit)
                )
                data, parameter = decoded, "file"
        cache_name = None
        if self.cache is not None and cache_request is not None:
            cached_bytes = None
            with timed(timings, MISS):
                names = self.cache.names(hashlib.sha256(data).hexdigest(), cache_request)
                cache_name = names[0]  # where a miss stores its result
                found = await asyncio.to_thread(self.cache.lookup, names)
                if found is not None and want_bytes:
                    cached_bytes = await asyncio.to_thread(self.cache.read, found[0])
            if found is not None:
                timings[HIT] = timings.pop(MISS)
                cache_name, url, answer = found
                return LoadedImage(None, None, timings, cache_name, {"result_url": url, **answer}, cached_bytes)
        with timed(timings, "decode"):
            loaded = await asyncio.to_thread(self.decode, data, parameter, force_rmbg)
        loaded.timings.update(timings)
        loaded.cache_name = cache_name
        return loaded

    def decode(self, data: bytes, parameter: str, force_rmbg: bool) -> LoadedImage:
        """Decode bytes and prepare the model input (CPU-bound)."""
        image = imageio.decode_image(data, parameter, self.settings.max_src_pixels)
        model_input = None
        if compose.needs_model(image, force_rmbg):
            preview = imageio.jpeg_preview(data, self.model_size) if image.alpha is None else None
            source = compose.segmentation_source(image) if preview is None else preview
            model_input = imageio.model_input(source, self.model_size)
        return LoadedImage(image, model_input)


class ContentModerator:
    """The moderation policy applied to inputs and outputs.

    Args:
        policy: Blocking categories and threshold.
        threads: onnxruntime threads.
    """

    def __init__(self, policy: Policy, threads: int = 1) -> None:
        self.policy = policy
        self.detector = NudityDetector(threads)

    def check_input(self, loaded: LoadedImage) -> None:
        """Raise a 422 if the input, as a viewer sees it, fails the policy."""
        image = loaded.image
        rgb = image.rgb if image.alpha is None else imageio.composite_over_white(image.rgb, image.alpha)
        self._check(rgb, "input")

    def check_output(self, rgba: np.ndarray) -> None:
        """Raise a 422 if the cutout, shown on white, fails the policy."""
        self._check(over_white(rgba), "output")

    def _check(self, rgb: np.ndarray, stage: str) -> None:
        violations = self.policy.violations(self.detector.detect(rgb))
        if violations:
            raise moderation_failed(stage, violations)


@dataclass(frozen=True)
class CutoutOptions:
    """The per-request choices the finishing stage needs."""

    org: str
    sku: str | None
    force_rmbg: bool
    preserve_alpha: bool
    request_id: str
    output: OutputOptions = field(default_factory=OutputOptions)
    cache_name: str | None = None
    return_bytes: bool = False
    quality: str = "fast"

    @property
    def with_placement(self) -> bool:
        """Whether the answer says where the product sits (not in today's answer without options)."""
        return self.return_bytes or not self.output.is_default


class Finisher:
    """Turns an image and a model mask into a stored, signed cutout.

    Args:
        settings: Service settings.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.storage = open_storage(settings)
        self.cache = ResultCache(self.storage, settings)
        # pymatting's kernels (the `best` quality) are compiled or loaded now, not on a request
        matting.warm_up()

    def compose(
        self, loaded: LoadedImage, probability: np.ndarray | None, options: CutoutOptions
    ) -> tuple[np.ndarray, compose.Crop]:
        """The cropped RGBA cutout (CPU-bound): mask to full-resolution alpha, alpha table, crop.

        Raises:
            CutoutError: 422 no_product_found.
        """
        image = loaded.image
        s = self.settings
        model_alpha = None
        if probability is not None:
            mask = compose.normalize_probability(probability, s.segmenter_min_confidence)
            if mask is not None:
                model_alpha = compose.full_alpha(
                    mask, image, s.refine_edges, s.segmenter_alpha_cutoff, s.model_input_size, matte=options.quality == "best"
                )
        alpha = compose.output_alpha(image, model_alpha, options.force_rmbg, options.preserve_alpha)
        estimate = refine.estimate_foreground if s.refine_foreground and model_alpha is not None else None
        return compose.cutout(image, alpha, estimate)

    def store(
        self, loaded: LoadedImage, rgba: np.ndarray, crop: compose.Crop, options: CutoutOptions, timings: Timings | None = None
    ) -> tuple[dict[str, Any], int]:
        """Encode, store and sign (CPU- and disk-bound).

        With output options the file is rendered by :mod:`pipeline.output` and the body gains
        ``placement``; without, it is exactly the tight RGBA PNG. With a ``cache_name`` the file
        is stored under it (create-only). With ``return_bytes`` the answer is the file under
        ``data`` and its ``placement`` (the remove.bg endpoint's record); without a cache
        nothing is stored then.

        Args:
            timings: Where ``encode`` and ``store`` milliseconds are added, if given.

        Returns:
            The 200 body of docs/api.md (built through :class:`pipeline.contract.CutoutResult`),
            or the remove.bg record; and the size of the file.
        """
        timings = {} if timings is None else timings
        height, width = rgba.shape[:2]
        placement = output.Placement(0, 0, width, height, 1.0, width, height).as_dict()
        with timed(timings, "encode"):
            if options.output.is_default:
                data, fmt = imageio.encode_png(rgba, self.settings.png_compress_level), "png"
            else:
                source = (loaded.image.width, loaded.image.height)
                level = self.settings.png_compress_level
                rendered = output.render(rgba, options.output, level, (crop.left, crop.top), source)
                data, fmt, placement = rendered.data, rendered.format, rendered.placement.as_dict()
        image = loaded.image
        answer = {"crop": crop.as_dict(), "source": {"width": image.width, "height": image.height}, "placement": placement}
        metadata = {"sku": options.sku, "request_id": options.request_id, "model": self.settings.segmenter_model}
        url = None
        if options.cache_name is not None or not options.return_bytes:
            with timed(timings, "store"):
                if options.cache_name is not None:
                    name = self.cache.store(options.cache_name, data, answer, metadata)
                else:
                    name = self.storage.put(options.org, data, metadata, fmt=fmt)
                url = self.storage.signed_url(name)
        file = data if options.return_bytes else None
        body = hit_body({"result_url": url, **answer}, options.sku, file, with_placement=options.with_placement)
        return body, len(data)

    def read(self, name: str, expires: str | None, signature: str | None) -> bytes:
        """A stored result, if its URL's signature is valid and unexpired."""
        return self.storage.read_signed(name, expires, signature)

    def cleanup(self) -> int:
        """Delete expired results."""
        return self.storage.cleanup()

    def check(self) -> str:
        """Start-up check of the storage (GCS: bucket permissions and signing); returns a description."""
        return self.storage.check()
