"""The onnxruntime engine: a record's shipped ONNX export on the CPU (numpy only, no torch)."""

from __future__ import annotations

import threading

import numpy as np
import onnxruntime as ort

from pipeline.models.registry import ModelSpec
from pipeline.models.weights import verified_packaged_file

_SHARED_ARENA_LOCK = threading.Lock()
_shared_arena = False


def _register_shared_arena() -> None:
    """One CPU memory arena for every onnxruntime session of the process (registered once)."""
    global _shared_arena
    with _SHARED_ARENA_LOCK:
        if not _shared_arena:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))
            _shared_arena = True


class OnnxEngine:
    """The record's ``onnx`` file in onnxruntime, one session per thread count (sessions are
    thread-safe: workers with the same count share one).

    Memory: the sessions share one arena. Without an arena every forward maps and unmaps its
    ~270 MB of activations afresh (U²-Net-p), and the page faults cost 1.4x in wall time on a
    virtual machine (docs/benchmarks.md); one arena per session instead held 1.3 GB for the two
    layouts against 0.86 GB shared. The segmenter's warm-up grows it to its steady size at
    start, so a replica's memory after a load is the memory it had before.

    Args:
        spec: A registry record with an ``onnx`` file.

    Raises:
        ValueError: Naming the setting, when the record ships no ONNX file or the file's
            SHA-256 is not the record's.
    """

    name = "onnxruntime"
    device_type = "cpu"

    def __init__(self, spec: ModelSpec) -> None:
        if spec.onnx is None:
            raise ValueError(f"CUTOUT_SEGMENTER_ENGINE: model {spec.name!r} ships no ONNX file for onnxruntime")
        self.spec = spec
        self._bytes = verified_packaged_file(spec.onnx).read_bytes()
        self._sessions: dict[int, tuple[ort.InferenceSession, str]] = {}
        self._lock = threading.Lock()

    def _session(self, threads: int) -> tuple[ort.InferenceSession, str]:
        with self._lock:
            if threads not in self._sessions:
                _register_shared_arena()
                options = ort.SessionOptions()
                options.intra_op_num_threads = threads
                options.inter_op_num_threads = 1
                options.log_severity_level = 3
                # no busy-waiting between parallel sections: the replica shares its cores with the
                # other stages, and measured in the service this saved 60-70 CPU-ms per image
                # (docs/benchmarks.md)
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
                options.add_session_config_entry("session.use_env_allocators", "1")
                session = ort.InferenceSession(self._bytes, options, providers=["CPUExecutionProvider"])
                self._sessions[threads] = (session, session.get_inputs()[0].name)
            return self._sessions[threads]

    def run(self, batch: np.ndarray, threads: int) -> np.ndarray:
        """See :meth:`pipeline.engines.Engine.run`."""
        session, name = self._session(threads)
        x = self.spec.normalise(batch)
        # the file's batch dimension is fixed at 1
        out = np.concatenate([session.run(None, {name: x[i : i + 1]})[0][:, 0] for i in range(len(x))])
        return np.clip(out, 0, 1)
