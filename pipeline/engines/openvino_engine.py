"""The OpenVINO engine: a record's shipped ONNX export on the CPU (numpy only, no torch)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import openvino as ov

from pipeline.models.registry import ModelSpec
from pipeline.models.weights import verified_packaged_file

# float32 throughout: on CPUs with AVX512-BF16 or AMX OpenVINO would otherwise run in bfloat16,
# which moves U²-Net-p's masks far past the quality bar (docs/benchmarks.md)
PRECISION = "f32"


class OpenVinoEngine:
    """The record's ``onnx`` file in OpenVINO's CPU plugin: one compiled model per thread count
    that the segmenter's workers use, one infer request per calling thread.

    A compiled model runs one request per stream at a time, so the model for ``t`` threads has
    as many streams as workers can run with ``t`` threads at once (``threads // t``: a lone
    image gets one stream of every thread, under the latency hint; two images side by side on
    two threads share a model of two one-thread streams, under the throughput hint). With a
    single stream the two side-by-side requests took turns: half the images per second
    (docs/benchmarks.md). Threads are not pinned to cores (the replica shares its cores with
    the other stages; pinning measured slower).

    Compiled models are cached in ``cache_dir`` (OpenVINO checks the model, its version and
    the CPU before it uses a cached blob, and recompiles when one does not fit).

    Args:
        spec: A registry record with an ``onnx`` file.
        cache_dir: Folder for compiled models; None, or a folder that cannot be written: no
            cache.
        threads: The CPU threads of the segmenter in all (its workers' shares add up to it).

    Raises:
        ValueError: Naming the setting, when the record ships no ONNX file or the file's
            SHA-256 is not the record's.
    """

    name = "openvino"
    device_type = "cpu"

    def __init__(self, spec: ModelSpec, cache_dir: Path | None = None, threads: int = 1) -> None:
        if spec.onnx is None:
            raise ValueError(f"CUTOUT_SEGMENTER_ENGINE: model {spec.name!r} ships no ONNX file for openvino")
        self.spec = spec
        self.threads = max(1, threads)
        self._core = ov.Core()
        if cache_dir is not None:
            try:
                cache_dir.mkdir(parents=True, exist_ok=True)
                writable = os.access(cache_dir, os.W_OK)
            except OSError:
                writable = False
            if writable:  # a read-only data folder only costs the compile at start
                self._core.set_property({"CACHE_DIR": str(cache_dir)})
        # read from the verified bytes, not the path again
        self._model = self._core.read_model(verified_packaged_file(spec.onnx).read_bytes())
        self._compiled: dict[int, ov.CompiledModel] = {}
        self._lock = threading.Lock()
        self._local = threading.local()

    def _request(self, threads: int) -> ov.InferRequest:
        requests: dict[int, ov.InferRequest] = self._local.__dict__.setdefault("requests", {})
        if threads not in requests:
            with self._lock:
                if threads not in self._compiled:
                    streams = max(1, self.threads // threads)
                    self._compiled[threads] = self._core.compile_model(
                        self._model,
                        "CPU",
                        {
                            "INFERENCE_PRECISION_HINT": PRECISION,
                            "PERFORMANCE_HINT": "LATENCY" if streams == 1 else "THROUGHPUT",
                            "NUM_STREAMS": streams,
                            "INFERENCE_NUM_THREADS": streams * threads,
                            "ENABLE_CPU_PINNING": False,
                        },
                    )
                compiled = self._compiled[threads]
            requests[threads] = compiled.create_infer_request()
        return requests[threads]

    def run(self, batch: np.ndarray, threads: int) -> np.ndarray:
        """See :meth:`pipeline.engines.Engine.run`."""
        request = self._request(max(1, threads))
        x = self.spec.normalise(batch)
        # the file's batch dimension is fixed at 1; infer() copies the output out of the request
        out = np.concatenate([request.infer({0: x[i : i + 1]})[0][:, 0] for i in range(len(x))])
        return np.clip(out, 0, 1)
