"""``cutout weights pull``: a model's published checkpoint, verified, as safetensors, where the
service loads it from.

The service never talks to the model hub: at start-up it reads weights from a path or from
``gs://`` (:mod:`pipeline.models.weights`). This module is the one step, run by an operator
before deploying, that fetches a checkpoint from the Hugging Face hub:

1. the model's record (:mod:`pipeline.models.registry`) names the hub repository, the file
   and the SHA-256 pinned for each revision; weights whose licence forbids commercial use
   are refused unless the operator accepts it;
2. the file is downloaded with ``huggingface_hub`` (``HF_ENDPOINT`` and ``HF_TOKEN`` as
   everywhere else) into a temporary folder, and refused unless its SHA-256 is the pin;
3. a safetensors file is kept byte for byte (its hash stays the published one); a PyTorch
   checkpoint is read with ``torch.load(weights_only=True)`` and written as safetensors;
4. the result is stored under a local folder (renamed into place) or a ``gs://`` prefix
   (a create-only upload, which appears whole or not at all).

Nothing reaches the destination before the hash has been checked, and a failed or
interrupted download leaves nothing there.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.models.registry import HubCheckpoint, ModelSpec, get_spec
from pipeline.models.weights import WeightsError, read_state_dict, sha256_of

_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class PullError(ValueError):
    """The pull was refused or failed; the message says why and what to do. Nothing was stored."""


@dataclass(frozen=True)
class PullResult:
    """What was stored and the settings that make the service load it.

    Attributes:
        model: Registry name.
        repo: Hub repository.
        revision: Hub commit downloaded.
        source_sha256: SHA-256 of the downloaded file (the pinned one).
        uri: Where the safetensors file now is (a path or ``gs://``).
        sha256: SHA-256 of the stored file (``CUTOUT_SEGMENTER_WEIGHTS_SHA256``).
        licence: Licence of the weights.
        converted: Whether the published file was converted (False: stored as published).
    """

    model: str
    repo: str
    revision: str
    source_sha256: str
    uri: str
    sha256: str
    licence: str
    converted: bool

    def settings(self) -> dict[str, str]:
        """The ``CUTOUT_*`` settings that make the service load these weights."""
        return {
            "CUTOUT_SEGMENTER_MODEL": self.model,
            "CUTOUT_SEGMENTER_WEIGHTS_URI": self.uri,
            "CUTOUT_SEGMENTER_WEIGHTS_SHA256": self.sha256,
        }


def stored_name(spec: ModelSpec, revision: str) -> str:
    """The file name a pull stores: the model and the first 12 digits of the hub commit."""
    return f"{spec.name}-{revision[:12]}.safetensors"


def _expected_sha256(spec: ModelSpec, hub: HubCheckpoint, revision: str, sha256: str | None) -> str:
    pinned = hub.pinned_sha256(revision)
    given = (sha256 or "").strip().lower() or None
    if given is not None and not _SHA256.match(given):
        raise PullError("--sha256: a 64-hex-digit SHA-256 is required")
    if pinned and given and given != pinned:
        raise PullError(
            f"--sha256 {given} differs from the SHA-256 this version pins for {hub.repo}@{revision} ({pinned}); refusing"
        )
    expected = pinned or given
    if not expected:
        raise PullError(
            f"{spec.name}: no SHA-256 is pinned for {hub.repo}@{revision}; check the hash of {hub.filename} "
            "on the hub's file page at that commit and pass it with --sha256"
        )
    return expected


def _download(hub: HubCheckpoint, revision: str, folder: Path, endpoint: str | None, token: str | None) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        path = hf_hub_download(
            repo_id=hub.repo,
            filename=hub.filename,
            revision=revision,
            cache_dir=folder,
            endpoint=endpoint,
            token=token,
        )
    except GatedRepoError:
        raise PullError(
            f"{hub.repo} is gated: accept its terms on the hub, then set HF_TOKEN to a token of that account"
        ) from None
    except RevisionNotFoundError:
        raise PullError(f"{hub.repo} has no revision {revision}") from None
    except RepositoryNotFoundError:
        raise PullError(f"{hub.repo} not found on {endpoint or 'the hub'} (or HF_TOKEN may not read it)") from None
    except Exception as exc:  # network, truncated transfer, server errors: nothing is kept
        raise PullError(f"could not download {hub.repo}@{revision}/{hub.filename}: {type(exc).__name__}: {exc}") from None
    return Path(path).resolve()


def _is_safetensors(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def _as_safetensors(path: Path, folder: Path, source: str) -> tuple[Path, bool]:
    """``path`` itself when it is a readable safetensors file, else a converted copy in ``folder``."""
    if _is_safetensors(path):
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                if not list(f.keys()):
                    raise PullError(f"{source} holds no tensors")
        except PullError:
            raise
        except Exception as exc:
            raise PullError(f"{source} is not a readable safetensors file ({type(exc).__name__}: {exc})") from None
        return path, False
    try:
        state = read_state_dict(path)
    except WeightsError as exc:
        raise PullError(str(exc).replace("CUTOUT_SEGMENTER_WEIGHTS_URI: ", f"{source}: ")) from None
    import torch
    from safetensors.torch import save_file

    tensors: dict[str, Any] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise PullError(f"{source}: entry {key!r} is not a tensor; cannot convert to safetensors")
        tensors[key] = value.detach().contiguous().clone()  # shared storage cannot be saved
    if not tensors:
        raise PullError(f"{source} holds no tensors")
    out = folder / "converted.safetensors"
    save_file(tensors, str(out), metadata={"source": source})
    return out, True


def _store_local(path: Path, folder: Path, name: str) -> str:
    target = folder / name
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".part")
    os.close(fd)
    try:
        shutil.copyfile(path, tmp)
        os.replace(tmp, target)  # atomic: the old file or the new one, never half of it
    finally:
        Path(tmp).unlink(missing_ok=True)
    return str(target)


def _store_gcs(path: Path, uri: str, name: str, sha256: str, source: str) -> str:
    from google.api_core.exceptions import PreconditionFailed

    from pipeline.storage.gcs import parse_gs_uri, storage_client

    bucket_name, prefix = parse_gs_uri(uri)
    object_name = f"{prefix}/{name}" if prefix else name
    blob = storage_client().bucket(bucket_name).blob(object_name)
    blob.metadata = {"sha256": sha256, "source": source}
    try:
        # create-only: never replaces an object the service may be loading
        blob.upload_from_filename(str(path), content_type="application/octet-stream", if_generation_match=0, timeout=600)
    except PreconditionFailed:
        blob.reload()
        if (blob.metadata or {}).get("sha256") != sha256:
            raise PullError(f"gs://{bucket_name}/{object_name} exists with other content; refusing to replace it") from None
    except Exception as exc:
        raise PullError(f"could not upload to gs://{bucket_name}/{object_name}: {type(exc).__name__}: {exc}") from None
    return f"gs://{bucket_name}/{object_name}"


def pull_weights(
    model: str,
    to: str,
    revision: str | None = None,
    accept_licence: bool = False,
    sha256: str | None = None,
    endpoint: str | None = None,
    token: str | None = None,
) -> PullResult:
    """Download, verify, convert and store ``model``'s published checkpoint.

    Args:
        model: Registry name (``birefnet-general``, ...).
        to: A local folder, or ``gs://BUCKET/PREFIX``.
        revision: Hub commit (40 hex digits); default: the one the registry pins.
        accept_licence: Required for weights whose licence forbids commercial use.
        sha256: The file's SHA-256 for a revision the registry does not pin.
        endpoint: Hub base URL; default ``HF_ENDPOINT``, else the public hub.
        token: Hub token; default ``HF_TOKEN`` (or the hub library's stored login).

    Raises:
        PullError: For anything refused or failed; nothing is stored then.
    """
    try:
        spec = get_spec(model)
    except ValueError as exc:
        raise PullError(str(exc).replace("CUTOUT_SEGMENTER_MODEL: ", "")) from None
    hub = spec.hub
    if hub is None:
        raise PullError(f"{model}: its weights are not published on the Hugging Face hub; see docs/models.md")
    if not spec.commercial_use and not accept_licence:
        raise PullError(
            f"{model}: the weights' licence forbids commercial use ({spec.licence}); pass --accept-licence to accept it"
        )
    revision = (revision or hub.revision or "").lower()
    if not revision:
        raise PullError(f"{model}: no revision is pinned; pass --revision COMMIT (40 hex digits) and --sha256")
    if not _COMMIT.match(revision):
        raise PullError(f"--revision: {revision!r} is not a 40-hex-digit commit (branch names move; pins are per commit)")
    expected = _expected_sha256(spec, hub, revision, sha256)
    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or None
    token = token or os.environ.get("HF_TOKEN") or None

    gcs = to.startswith("gs://")
    if gcs:
        from pipeline.storage.gcs import parse_gs_uri

        if not parse_gs_uri(to)[0]:
            raise PullError(f"--to: {to!r} is not gs://BUCKET/PREFIX")
        local_folder = None
    elif "://" in to:
        raise PullError(f"--to: unsupported destination {to!r} (use a folder or gs://BUCKET/PREFIX)")
    else:
        local_folder = Path(to).expanduser().resolve()
        local_folder.mkdir(parents=True, exist_ok=True)

    source = f"{hub.repo}@{revision}/{hub.filename}"
    name = stored_name(spec, revision)
    with tempfile.TemporaryDirectory(prefix="cutout-pull-") as tmp:
        downloaded = _download(hub, revision, Path(tmp), endpoint, token)
        actual = sha256_of(downloaded)
        if actual != expected:
            raise PullError(f"{source} has sha256 {actual}, expected {expected}; refused, nothing stored")
        out, converted = _as_safetensors(downloaded, Path(tmp), source)
        out_sha = sha256_of(out) if converted else actual
        uri = _store_gcs(out, to, name, out_sha, source) if gcs else _store_local(out, local_folder, name)
    return PullResult(
        model=spec.name,
        repo=hub.repo,
        revision=revision,
        source_sha256=actual,
        uri=uri,
        sha256=out_sha,
        licence=spec.licence,
        converted=converted,
    )
