"""The segmentation model behind one small interface: model-sized uint8 in, probabilities out."""

from __future__ import annotations

import concurrent.futures
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.engines import Engine, resolve_engine
from pipeline.matting import flip_batch, merge_flips
from pipeline.models.registry import get_spec

if TYPE_CHECKING:
    from pipeline.settings import Settings


def split_threads(images: int, threads: int) -> list[tuple[slice, int]]:
    """How a CPU batch is spread over the replica's cores: (images, threads) per worker.

    A lone image gets every thread. Several images run side by side, each worker with its
    share of the threads: independent single-thread forwards never wait for each other at a
    parallel region's barrier, which on a small CPU makes two of them 1.15-1.3x faster than one
    two-thread forward after another (docs/benchmarks.md).
    """
    workers = max(1, min(images, threads))
    bounds = np.linspace(0, images, workers + 1).round().astype(int)
    shares = [threads // workers + (1 if k < threads % workers else 0) for k in range(workers)]
    return [(slice(int(a), int(b)), share) for a, b, share in zip(bounds[:-1], bounds[1:], shares)]


class Segmenter:
    """Runs a registered salient-object model on batches of model-sized images, in the engine
    :func:`~pipeline.engines.resolve_engine` picks, CPU batches spread over threads.

    Args:
        model: Registry name.
        device: ``cpu`` or ``cuda``.
        cache_dir: Where weights are downloaded and converted, and OpenVINO's compiled models
            are cached (its ``openvino`` folder).
        threads: CPU threads for inference (0 = every CPU of the machine).
        weights_uri: Weights overriding the model's default (path, gs:// or https://).
        weights_sha256: Their SHA-256.
        dtype: ``float32``, ``float16`` (CUDA) or ``bfloat16``.
        engine: ``auto``, ``torch``, ``onnxruntime`` or ``openvino`` (see :func:`~pipeline.engines.resolve_engine`).
        input_size: The input side configured (0 = the model's own); decides ``auto``.

    Attributes:
        engine: The name of the engine that runs the model.

    Raises:
        ValueError: For an unknown model, unusable weights, or ``cuda`` without a GPU; the
            message names the setting.
    """

    def __init__(
        self,
        model: str,
        device: str,
        cache_dir: Path,
        threads: int = 0,
        weights_uri: str | None = None,
        weights_sha256: str | None = None,
        dtype: str = "float32",
        engine: str = "auto",
        input_size: int = 0,
    ) -> None:
        self.spec = get_spec(model)
        self.name = model
        self.engine = resolve_engine(engine, model, device, weights_uri, input_size, dtype)
        self.input_size = input_size or self.spec.input_size
        self.threads = threads if threads > 0 else (os.cpu_count() or 1)
        self._runner: Engine
        if self.engine == "openvino":
            from pipeline.engines.openvino_engine import OpenVinoEngine

            self._runner = OpenVinoEngine(self.spec, Path(cache_dir) / "openvino", self.threads)
        elif self.engine == "onnxruntime":
            from pipeline.engines.onnx_engine import OnnxEngine

            self._runner = OnnxEngine(self.spec)
        else:
            from pipeline.engines.torch_engine import TorchEngine

            self._runner = TorchEngine(self.spec, device, dtype, Path(cache_dir), weights_uri, weights_sha256)
        self.device_type = self._runner.device_type
        # Long-lived CPU workers: an OpenMP team belongs to the thread that starts it, so the
        # same few threads run every forward.
        self._workers = (
            concurrent.futures.ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="forward")
            if self.device_type == "cpu"
            else None
        )
        self._started = False  # whether a CPU forward has run (see _forward)

    def warm_up(self, batch_size: int) -> None:
        """Run every layout :meth:`predict` uses for batches up to ``batch_size`` once (a lone
        image on every thread, then the side-by-side workers), so that sessions, thread teams
        and memory reach their steady state before the first request."""
        side = self.input_size
        widest = max(1, batch_size if self.device_type != "cpu" else min(batch_size, self.threads))
        # twice: onnxruntime plans a session's memory on its first run and uses the plan after
        for n in sorted({1, widest}) * 2:
            self.predict(np.zeros((n, side, side, 3), np.uint8))

    def predict(self, batch: np.ndarray, flip: np.ndarray | None = None) -> np.ndarray:
        """Foreground probabilities for a batch.

        Args:
            batch: (N, S, S, 3) uint8 RGB at the model's input size.
            flip: (N,) bool: the rows that also run mirrored, their two maps averaged (flip
                test-time augmentation, the ``best`` quality); None: none. The mirrored rows
                join the same batch, so a batch mixing both qualities is still one forward.

        Returns:
            (N, S, S) float32 probabilities in [0, 1].
        """
        if flip is not None and flip.any():
            return merge_flips(self._forward(flip_batch(batch, flip)), flip)
        return self._forward(batch)

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        if self._workers is None:
            return self._runner.run(batch, 0)
        parts = []
        for rows, share in split_threads(len(batch), self.threads):
            parts.append(self._workers.submit(self._runner.run, batch[rows], share))
            if not self._started:
                # The first forward's first part runs alone: OpenVINO's Python binding sets up
                # shared state on its first inference, and two threads making that first call
                # at once deadlocked (one holding the set-up's guard and waiting for the GIL,
                # the other holding the GIL and waiting for the guard; seen in a test run).
                parts[0].result()
                self._started = True
        return np.concatenate([p.result() for p in parts]).astype(np.float32, copy=False)


def segmenter_from_settings(settings: Settings, cpus: int = 0) -> Segmenter:
    """The segmenter that ``settings`` describe: what a Serve replica runs and what
    ``cutout eval`` scores (model, weights, device, dtype, engine, input size, threads).

    Args:
        settings: The service's settings.
        cpus: CPUs given to this process, used when ``torch_threads`` is 0 (0 = every CPU of
            the machine).
    """
    return Segmenter(
        settings.segmenter_model,
        settings.segmenter_device,
        settings.model_cache_dir,
        settings.torch_threads or cpus,
        weights_uri=settings.segmenter_weights_uri,
        weights_sha256=settings.segmenter_weights_sha256,
        dtype=settings.segmenter_dtype,
        engine=settings.segmenter_engine,
        input_size=settings.segmenter_input_size,
    )
