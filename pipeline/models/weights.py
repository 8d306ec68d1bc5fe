"""Fetching, verifying and loading model weights safely.

A weights URI is a local path, ``gs://BUCKET/OBJECT`` or ``https://...``, always with a
SHA-256. Remote files are downloaded once into the cache folder (atomically) and verified
before use. Files load from safetensors, or with ``torch.load(weights_only=True)``: never an
unsafe pickle, and no silent fallback to one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from pipeline.models.registry import ModelSpec, PackagedFile

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
MAX_WEIGHTS_BYTES = 4 * 1024**3


class WeightsError(ValueError):
    """Weights that cannot be used; the message names the setting at fault."""


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verified_packaged_file(packaged: PackagedFile, path: Path | None = None) -> Path:
    """The shipped file, or ``path`` standing in for it, once its SHA-256 is the record's.

    Raises:
        FileNotFoundError: If the package or the file is missing.
        WeightsError: If the file's SHA-256 differs.
    """
    path = packaged.locate() if path is None else Path(path)
    actual = sha256_of(path)
    if actual != packaged.sha256:
        raise WeightsError(
            f"CUTOUT_SEGMENTER_MODEL: {path} has sha256 {actual}, expected {packaged.sha256} "
            f"({packaged.filename} of {packaged.distribution})"
        )
    return path


def _atomic_download(cache_dir: Path, name: str, write: Any) -> Path:
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / name
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".dl-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return target


def _download_gs(uri: str, cache_dir: Path, name: str) -> Path:
    from pipeline.storage.gcs import storage_client

    bucket_name, _, blob_name = uri[len("gs://") :].partition("/")
    if not bucket_name or not blob_name:
        raise WeightsError(f"CUTOUT_SEGMENTER_WEIGHTS_URI: {uri!r} is not gs://BUCKET/OBJECT")
    blob = storage_client().bucket(bucket_name).blob(blob_name)
    return _atomic_download(cache_dir, name, lambda f: blob.download_to_file(f, timeout=300))


def _download_https(uri: str, cache_dir: Path, name: str) -> Path:
    import httpx

    def write(f: Any) -> None:
        total = 0
        with httpx.stream("GET", uri, follow_redirects=True, timeout=httpx.Timeout(30.0, read=300.0)) as response:
            response.raise_for_status()
            for chunk in response.iter_bytes():
                total += len(chunk)
                if total > MAX_WEIGHTS_BYTES:
                    raise WeightsError(f"CUTOUT_SEGMENTER_WEIGHTS_URI: {uri} is larger than {MAX_WEIGHTS_BYTES} bytes")
                f.write(chunk)

    return _atomic_download(cache_dir, name, write)


def fetch_weights(uri: str, sha256: str, cache_dir: Path) -> Path:
    """A verified local copy of the weights at ``uri``.

    Raises:
        WeightsError: For a missing or malformed hash, an unsupported URI, a failed download or
            a hash mismatch (a mismatching download is deleted).
    """
    sha256 = (sha256 or "").lower()
    if not _SHA256.match(sha256):
        raise WeightsError("CUTOUT_SEGMENTER_WEIGHTS_SHA256: a 64-hex-digit SHA-256 of the weights is required")
    suffix = ".safetensors" if uri.endswith(".safetensors") else ".pt"
    if uri.startswith("gs://") or uri.startswith("https://"):
        cached = Path(cache_dir) / f"weights-{sha256[:16]}{suffix}"
        if cached.exists() and sha256_of(cached) == sha256:
            return cached
        try:
            path = (
                _download_gs(uri, Path(cache_dir), cached.name)
                if uri.startswith("gs://")
                else _download_https(uri, Path(cache_dir), cached.name)
            )
        except WeightsError:
            raise
        except Exception as exc:
            raise WeightsError(f"CUTOUT_SEGMENTER_WEIGHTS_URI: could not download {uri}: {type(exc).__name__}: {exc}") from None
    elif "://" in uri:
        raise WeightsError(f"CUTOUT_SEGMENTER_WEIGHTS_URI: unsupported scheme in {uri!r} (use a path, gs:// or https://)")
    else:
        path = Path(uri).expanduser()
        if not path.is_file():
            raise WeightsError(f"CUTOUT_SEGMENTER_WEIGHTS_URI: no such file {path}")
    actual = sha256_of(path)
    if actual != sha256:
        if path.parent == Path(cache_dir):
            path.unlink(missing_ok=True)
        raise WeightsError(f"CUTOUT_SEGMENTER_WEIGHTS_SHA256: {uri} has sha256 {actual}, expected {sha256}")
    return path


def read_state_dict(path: Path) -> dict[str, Any]:
    """Tensors from safetensors, or ``torch.load(weights_only=True)`` for PyTorch checkpoints.

    A checkpoint that nests its weights under ``state_dict`` or ``model`` is unwrapped.

    Raises:
        WeightsError: When the file is neither (an unsafe pickle is refused, never loaded).
    """
    import torch

    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) >= 9 and head[8:9] == b"{":  # safetensors: u64 header length, then JSON
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for anything but plain tensors and containers
        raise WeightsError(
            f"CUTOUT_SEGMENTER_WEIGHTS_URI: {path.name} is not a safetensors file or a weights-only checkpoint ({type(exc).__name__})"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise WeightsError(f"CUTOUT_SEGMENTER_WEIGHTS_URI: {path.name} holds no state dict")
    return state


def load_model(spec: ModelSpec, weights_uri: str | None, sha256: str | None, cache_dir: Path) -> Any:
    """Build ``spec``'s architecture and load its weights (strict: every key, every shape).

    Without ``weights_uri`` the record's default weights come through its own loader (the
    shipped U²-Net-p ONNX file, converted).

    Args:
        spec: The registry record.
        weights_uri: Overrides the record's default weights.
        sha256: The weights' SHA-256 (required with ``weights_uri``).
        cache_dir: Download and conversion cache.

    Raises:
        WeightsError: Naming the setting, for any problem with the weights.
    """
    if not weights_uri:
        if spec.loader:
            return spec.load_default(Path(cache_dir))
        raise WeightsError(
            f"CUTOUT_SEGMENTER_WEIGHTS_URI: model {spec.name!r} ships no weights here; "
            "set a path, gs:// or https:// URI and CUTOUT_SEGMENTER_WEIGHTS_SHA256"
        )
    path = fetch_weights(weights_uri, sha256 or "", Path(cache_dir))
    model = spec.build()
    state = spec.map_keys(read_state_dict(path))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:3]
        raise WeightsError(f"CUTOUT_SEGMENTER_WEIGHTS_URI: weights do not fit {spec.name}: {' '.join(first)}") from None
    return model.eval()
