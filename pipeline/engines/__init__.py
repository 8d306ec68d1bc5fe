"""Inference engines: one small class per runtime behind one interface, :class:`Engine`.

- ``openvino`` (:mod:`pipeline.engines.openvino_engine`): a record's shipped ONNX export in
  OpenVINO's CPU plugin; never imports torch.
- ``onnxruntime`` (:mod:`pipeline.engines.onnx_engine`): the same file in onnxruntime (rembg's
  runtime); never imports torch.
- ``torch`` (:mod:`pipeline.engines.torch_engine`): every model, weights and device.

The segmenter (:mod:`pipeline.segment`) picks one with :func:`resolve_engine`, imports only
that engine's module (and runtime), and spreads CPU batches over threads itself.
"""

from __future__ import annotations

import importlib.util
import platform
from typing import Protocol, runtime_checkable

import numpy as np

from pipeline.models.registry import REGISTRY, get_spec

ENGINES = ("auto", "torch", "onnxruntime", "openvino")
ONNX_ENGINES = ("onnxruntime", "openvino")


@runtime_checkable
class Engine(Protocol):
    """What the segmenter needs of an inference engine.

    Attributes:
        name: ``torch``, ``onnxruntime`` or ``openvino``.
        device_type: ``cpu`` or ``cuda``: where :meth:`run` computes.
    """

    name: str
    device_type: str

    def run(self, batch: np.ndarray, threads: int) -> np.ndarray:
        """Foreground probabilities for model-sized images.

        Safe to call from several threads at once, each with its own ``threads``.

        Args:
            batch: (N, S, S, 3) uint8 RGB.
            threads: CPU threads for this call (ignored off the CPU).

        Returns:
            (N, S, S) float32 in [0, 1].
        """
        ...


def _openvino_fits() -> bool:
    """Whether OpenVINO is installed on an x86-64 machine (where it was measured)."""
    return platform.machine().lower() in ("x86_64", "amd64") and importlib.util.find_spec("openvino") is not None


def resolve_engine(engine: str, model: str, device: str, weights_uri: str | None, input_size: int, dtype: str) -> str:
    """The inference engine a configuration runs on.

    The shipped ONNX export runs in OpenVINO or onnxruntime: a model whose record ships one,
    with those weights, in float32, at the record's input size, on the CPU. ``auto`` picks
    OpenVINO there on x86-64 (for U²-Net-p measured 10-20% less CPU per image than
    onnxruntime at equal outputs, docs/benchmarks.md), onnxruntime on other CPUs, and PyTorch
    everywhere else (GPUs, the other models, custom weights, other input sizes or dtypes).

    Raises:
        ValueError: Naming the setting, when an ONNX engine is asked for where it cannot run,
            or the engine is unknown.
    """
    if engine not in ENGINES:
        raise ValueError(f"CUTOUT_SEGMENTER_ENGINE: unknown engine {engine!r}; one of {', '.join(ENGINES)}")
    spec = get_spec(model)
    fits = (
        spec.onnx is not None
        and not weights_uri
        and device == "cpu"
        and input_size in (0, spec.input_size)
        and dtype == "float32"
    )
    if engine == "auto":
        if not fits:
            return "torch"
        return "openvino" if _openvino_fits() else "onnxruntime"
    if engine in ONNX_ENGINES and not fits:
        shipped = ", ".join(name for name, record in REGISTRY.items() if record.onnx is not None)
        raise ValueError(
            f"CUTOUT_SEGMENTER_ENGINE: {engine} runs only the shipped weights of {shipped}, in float32, "
            "at the model's own input size, on the CPU; use torch for this configuration"
        )
    if engine == "openvino" and importlib.util.find_spec("openvino") is None:
        raise ValueError("CUTOUT_SEGMENTER_ENGINE: openvino is not installed; install the package openvino or use onnxruntime")
    return engine
