"""The segmentation model behind one small interface: model-sized uint8 in, probabilities out."""

from __future__ import annotations

import concurrent.futures
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.models.registry import ModelSpec, get_spec

if TYPE_CHECKING:
    from pipeline.settings import Settings

_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}


def normalise(batch: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """Normalise (N, H, W, 3) uint8 RGB as the model was trained; returns (N, 3, H, W) float32
    (numpy only: the onnxruntime engine never imports torch)."""
    x = np.asarray(batch, dtype=np.uint8).astype(np.float32)
    if spec.normalisation == "image_max":
        x /= np.maximum(x.max(axis=(1, 2, 3), keepdims=True), np.float32(1.0))
    else:
        x /= np.float32(255.0)
    x -= np.asarray(spec.mean, np.float32)
    x /= np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def preprocess(batch: np.ndarray, spec: ModelSpec):
    """:func:`normalise` as a torch tensor."""
    import torch

    return torch.from_numpy(normalise(batch, spec))


def fuse_conv_bn(model):
    """Fold each ``conv_s1`` + ``bn_s1`` pair (U²-Net, IS-Net blocks) into one convolution.

    Inference only (eval mode); the outputs are unchanged (measured max difference 0.0), and a
    BatchNorm pass per block is saved.
    """
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model.eval()
    for module in model.modules():
        conv, bn = getattr(module, "conv_s1", None), getattr(module, "bn_s1", None)
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            module.conv_s1 = fuse_conv_bn_eval(conv, bn)
            module.bn_s1 = nn.Identity()
    return model


ENGINES = ("auto", "torch", "onnxruntime")


def resolve_engine(engine: str, model: str, device: str, weights_uri: str | None, input_size: int, dtype: str) -> str:
    """The inference engine a configuration runs on.

    ``auto`` picks onnxruntime where it applies, the shipped U²-Net-p file in float32 on the CPU
    (measured faster than PyTorch there, docs/benchmarks.md); PyTorch everywhere else (GPUs,
    the other models, custom weights, other input sizes or dtypes).

    Raises:
        ValueError: Naming the setting, when ``onnxruntime`` is asked for where it cannot run.
    """
    fits = model == "u2netp" and not weights_uri and device == "cpu" and input_size in (0, 320) and dtype == "float32"
    if engine == "auto":
        return "onnxruntime" if fits else "torch"
    if engine == "onnxruntime" and not fits:
        raise ValueError(
            "CUTOUT_SEGMENTER_ENGINE: onnxruntime runs only the shipped u2netp weights, in float32, at 320 pixels, "
            "on the CPU; use torch for this configuration"
        )
    if engine not in ENGINES:
        raise ValueError(f"CUTOUT_SEGMENTER_ENGINE: unknown engine {engine!r}; one of {', '.join(ENGINES)}")
    return engine


_SHARED_ARENA_LOCK = threading.Lock()
_shared_arena = False


def _register_shared_arena(ort) -> None:
    """One CPU memory arena for every onnxruntime session of the process (registered once)."""
    global _shared_arena
    with _SHARED_ARENA_LOCK:
        if not _shared_arena:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))
            _shared_arena = True


class _OnnxU2NetP:
    """The shipped ``u2netp.onnx`` in onnxruntime, one session per thread count (sessions are
    thread-safe: workers with the same count share one).

    Memory: the sessions share one arena. Without an arena every forward maps and unmaps its
    ~270 MB of activations afresh, and the page faults cost 1.4x in wall time on a virtual
    machine (docs/benchmarks.md); one arena per session instead held 1.3 GB for the two layouts
    against 0.86 GB shared. :meth:`warm_up` grows it to its steady size at start, so a replica's
    memory after a load is the memory it had before.
    """

    def __init__(self) -> None:
        from pipeline.models.weights import U2NETP_ONNX_SHA256, sha256_of, shipped_onnx_path

        path = shipped_onnx_path()
        if sha256_of(path) != U2NETP_ONNX_SHA256:
            raise ValueError(f"CUTOUT_SEGMENTER_MODEL: {path} is not the expected u2netp.onnx (sha256 differs)")
        self._bytes = path.read_bytes()
        self._sessions: dict[int, tuple[object, str]] = {}
        self._lock = threading.Lock()

    def session(self, threads: int):
        import onnxruntime as ort

        with self._lock:
            if threads not in self._sessions:
                _register_shared_arena(ort)
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

    def __call__(self, x: np.ndarray, threads: int) -> np.ndarray:
        session, name = self.session(threads)
        # the file's batch dimension is fixed at 1
        return np.concatenate([session.run(None, {name: x[i : i + 1]})[0][:, 0] for i in range(len(x))])


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
    """Runs a registered salient-object model on batches of model-sized images.

    Args:
        model: Registry name.
        device: ``cpu`` or ``cuda``.
        cache_dir: Where weights are downloaded and converted.
        threads: CPU threads for inference (0 = every CPU of the machine).
        weights_uri: Weights overriding the model's default (path, gs:// or https://).
        weights_sha256: Their SHA-256.
        dtype: ``float32``, ``float16`` (CUDA) or ``bfloat16``.
        engine: ``auto``, ``torch`` or ``onnxruntime`` (see :func:`resolve_engine`).
        input_size: The input side configured (0 = the model's own); decides ``auto``.

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
        self._torch = None
        self.model = None
        self._onnx = None
        if self.engine == "onnxruntime":
            self.device_type = "cpu"
            self._onnx = _OnnxU2NetP()
        else:
            import torch

            from pipeline.models.weights import load_model

            if device == "cuda" and not torch.cuda.is_available():
                raise ValueError("CUTOUT_SEGMENTER_DEVICE is 'cuda' but no CUDA device is visible to this replica")
            self._torch = torch
            self.device = torch.device(device)
            self.device_type = self.device.type
            self.dtype = getattr(torch, _DTYPES[dtype])
            self._autocast = self.dtype != torch.float32
            net = fuse_conv_bn(load_model(self.spec, weights_uri, weights_sha256, Path(cache_dir)))
            net = net.to(self.device, dtype=self.dtype if self.device.type == "cuda" else torch.float32)
            self.model = net.to(memory_format=torch.channels_last).eval()
        # Long-lived CPU workers: an OpenMP team belongs to the thread that starts it, so the
        # same few threads run every forward.
        self._workers = (
            concurrent.futures.ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="forward")
            if self.device_type == "cpu" else None
        )

    def _torch_forward(self, x):
        torch = self._torch
        x = x.to(self.device).to(memory_format=torch.channels_last)
        if self._autocast:
            with torch.autocast(self.device.type, dtype=self.dtype):
                out = self.model.predict(x) if hasattr(self.model, "predict") else self.model(x)
        else:
            out = self.model.predict(x) if hasattr(self.model, "predict") else self.model(x)
        return out[:, 0].float().clamp_(0, 1).cpu().numpy()

    def _run(self, batch: np.ndarray, threads: int) -> np.ndarray:
        if self._onnx is not None:
            return np.clip(self._onnx(normalise(batch, self.spec), threads), 0, 1)
        torch = self._torch
        if self.device_type == "cpu":
            torch.set_num_threads(threads)  # this worker's OpenMP team (a per-thread setting)
        with torch.inference_mode():
            return self._torch_forward(preprocess(batch, self.spec))

    def warm_up(self, batch_size: int) -> None:
        """Run every layout :meth:`predict` uses for batches up to ``batch_size`` once (a lone
        image on every thread, then the side-by-side workers), so that sessions, thread teams
        and memory reach their steady state before the first request."""
        side = self.input_size
        widest = max(1, batch_size if self.device_type != "cpu" else min(batch_size, self.threads))
        # twice: onnxruntime plans a session's memory on its first run and uses the plan after
        for n in sorted({1, widest}) * 2:
            self.predict(np.zeros((n, side, side, 3), np.uint8))

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Foreground probabilities for a batch.

        Args:
            batch: (N, S, S, 3) uint8 RGB at the model's input size.

        Returns:
            (N, S, S) float32 probabilities in [0, 1].
        """
        if self._workers is None:
            return self._run(batch, 0)
        parts = [self._workers.submit(self._run, batch[rows], share) for rows, share in split_threads(len(batch), self.threads)]
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
