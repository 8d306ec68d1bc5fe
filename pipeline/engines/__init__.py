"""Inference engines: one small class per runtime behind one interface, :class:`Engine`.

- ``onnxruntime`` (:mod:`pipeline.engines.onnx_engine`): a record's shipped ONNX export on the
  CPU; never imports torch.
- ``torch`` (:mod:`pipeline.engines.torch_engine`): every model, weights and device.

The segmenter (:mod:`pipeline.segment`) picks one with :func:`resolve_engine`, imports only
that engine's module (and runtime), and spreads CPU batches over threads itself.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from pipeline.models.registry import REGISTRY, get_spec

ENGINES = ("auto", "torch", "onnxruntime")


@runtime_checkable
class Engine(Protocol):
    """What the segmenter needs of an inference engine.

    Attributes:
        name: ``torch`` or ``onnxruntime``.
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


def resolve_engine(engine: str, model: str, device: str, weights_uri: str | None, input_size: int, dtype: str) -> str:
    """The inference engine a configuration runs on.

    ``auto`` picks onnxruntime where it applies: a model whose record ships an ONNX export, with
    those weights, in float32, at the record's input size, on the CPU (for U²-Net-p measured
    faster than PyTorch there, docs/benchmarks.md); PyTorch everywhere else (GPUs, the other
    models, custom weights, other input sizes or dtypes).

    Raises:
        ValueError: Naming the setting, when ``onnxruntime`` is asked for where it cannot run.
    """
    spec = get_spec(model)
    fits = (
        spec.onnx is not None
        and not weights_uri
        and device == "cpu"
        and input_size in (0, spec.input_size)
        and dtype == "float32"
    )
    if engine == "auto":
        return "onnxruntime" if fits else "torch"
    if engine == "onnxruntime" and not fits:
        shipped = ", ".join(name for name, record in REGISTRY.items() if record.onnx is not None)
        raise ValueError(
            f"CUTOUT_SEGMENTER_ENGINE: onnxruntime runs only the shipped weights of {shipped}, in float32, "
            "at the model's own input size, on the CPU; use torch for this configuration"
        )
    if engine not in ENGINES:
        raise ValueError(f"CUTOUT_SEGMENTER_ENGINE: unknown engine {engine!r}; one of {', '.join(ENGINES)}")
    return engine
