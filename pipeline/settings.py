"""Service settings: one typed, documented, validated record.

Values come from three layers, later ones winning: the defaults below, the ``args:`` of the
application in ``serve_config.yaml``, and environment variables ``CUTOUT_<NAME>`` (upper-case
field name). Every problem is reported at once, naming the setting, when the application is
built, so a bad value stops the start-up instead of failing a request later.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

ENV_PREFIX = "CUTOUT_"
# Read by the client side (`cutout remove`), not settings of the service.
CLIENT_ENV = frozenset({"CUTOUT_URL", "CUTOUT_TOKEN"})
# The age at which cluster/gcs/lifecycle.json deletes results (one day).
GCS_LIFECYCLE_AGE_S = 24 * 3600
MIB = 1024 * 1024

# NudeNet 3.x detector labels (the shipped 320n model).
MODERATION_LABELS = (
    "FEMALE_GENITALIA_COVERED",
    "FACE_FEMALE",
    "BUTTOCKS_EXPOSED",
    "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED",
    "MALE_BREAST_EXPOSED",
    "ANUS_EXPOSED",
    "FEET_EXPOSED",
    "BELLY_COVERED",
    "FEET_COVERED",
    "ARMPITS_COVERED",
    "ARMPITS_EXPOSED",
    "FACE_MALE",
    "BELLY_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
    "ANUS_COVERED",
    "FEMALE_BREAST_COVERED",
    "BUTTOCKS_COVERED",
)
DEFAULT_MODERATION_BLOCK = (
    "FEMALE_GENITALIA_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
    "FEMALE_BREAST_EXPOSED",
    "BUTTOCKS_EXPOSED",
    "ANUS_EXPOSED",
)


class SettingsError(ValueError):
    """One or more settings are invalid; the message lists every problem, by setting name."""


def _doc(description: str, unit: str | None = None, secret: bool = False) -> dict[str, Any]:
    extra: dict[str, Any] = {"unit": unit or ""}
    if secret:
        extra["secret"] = True
    return {"description": description, "json_schema_extra": extra}


class Settings(BaseModel):
    """Every setting of the service. docs/settings.md is generated from this class."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data_dir: Path = Field(
        Path("var"),
        **_doc(
            "Folder for local state: tokens, results, URL signing key, converted weights. Relative paths are resolved against the working directory at start-up.",
            "path",
        ),
    )
    tokens_file: Path | None = Field(
        None,
        **_doc("Tokens file (hashes only, one organization per token). Default: `<data_dir>/tokens.json`.", "path"),
    )
    storage_uri: str | None = Field(
        None,
        **_doc(
            "Where results are stored: `gs://BUCKET/PREFIX` (Google Cloud Storage, V4 signed URLs) or a local folder (the embedded default, `<data_dir>/results`, served by the service itself).",
            "URI or path",
        ),
    )
    public_base_url: str = Field(
        "http://127.0.0.1:8000",
        **_doc(
            "Base of the result URLs that the service serves itself (local storage). Set it to the address clients use.", "URL"
        ),
    )
    url_signing_key: SecretStr | None = Field(
        None,
        **_doc(
            "HMAC key that signs result URLs (at least 32 characters). Default: a random key generated at first start and kept in `<data_dir>/url-signing.key`.",
            "secret",
            secret=True,
        ),
    )
    gcs_timeout_s: float = Field(10.0, gt=0, le=300, **_doc("Timeout of one request to Cloud Storage.", "seconds"))
    gcs_deadline_s: float = Field(
        20.0,
        gt=0,
        le=600,
        **_doc(
            "Deadline of an upload to Cloud Storage including retries; past it the answer is 503 with Retry-After.", "seconds"
        ),
    )
    gcs_signing_service_account: str | None = Field(
        None,
        **_doc(
            "Service account that signs URLs through IAM signBlob when there is no key file (Workload Identity). Default: the one the credentials belong to.",
            "email",
        ),
    )
    gcs_iam_endpoint: str = Field(
        "https://iamcredentials.googleapis.com", **_doc("IAM Credentials API used for signBlob.", "URL")
    )
    result_url_ttl_s: int = Field(
        3600, ge=1, le=7 * 24 * 3600, **_doc("Lifetime of a result URL; the stored result is deleted after it.", "seconds")
    )
    result_cache_s: int = Field(
        3600,
        ge=0,
        le=7 * 24 * 3600,
        **_doc(
            "How long a result is handed out again for the same image bytes, options, model and weights, without running the model; 0 turns the result cache off. Cached files are kept this plus `CUTOUT_RESULT_URL_TTL_S` (with Cloud Storage, the bucket's lifecycle rule must keep objects at least that long: cluster/gcs/lifecycle.json keeps them a day).",
            "seconds",
        ),
    )
    max_src_file_size: int = Field(
        12 * MIB, ge=1024, le=512 * MIB, **_doc("Largest accepted image, after base64 decoding or as downloaded.", "bytes")
    )
    max_src_resolution: float = Field(
        50.0, gt=0, le=500, **_doc("Largest accepted image, checked from the header before decoding.", "megapixels")
    )
    max_request_body: int = Field(
        0,
        ge=0,
        **_doc("Largest accepted request body. 0 means base64 of `max_src_file_size` plus 64 KiB for the other fields.", "bytes"),
    )
    allowed_source_networks: tuple[str, ...] = Field(
        (),
        **_doc(
            "CIDRs that `image_url` may reach although they are not public (internal CDN; `127.0.0.0/8` for tests). Comma-separated in the environment. **Weakens SSRF protection**: open only what you must.",
            "CIDR list",
        ),
    )
    allowed_sources: tuple[str, ...] = Field(
        (),
        **_doc(
            "If set, `image_url` hosts must be one of these names (or a subdomain of an entry that starts with `.`). Empty: any public host.",
            "host list",
        ),
    )
    max_redirects: int = Field(5, ge=0, le=20, **_doc("Redirects followed for `image_url`, each one checked again.", "count"))
    download_connect_timeout_s: float = Field(5.0, gt=0, le=60, **_doc("Connect timeout for `image_url`.", "seconds"))
    download_timeout_s: float = Field(
        20.0, gt=0, le=300, **_doc("Deadline for the whole download of `image_url`, redirects included.", "seconds")
    )
    rate_limit_rpm: int = Field(
        600,
        ge=0,
        le=1_000_000,
        **_doc(
            "Requests per minute per organization, across all ingress replicas; over it the answer is 429 with Retry-After. A token's `rpm` in the tokens file overrides it. 0 = no limit.",
            "requests/minute",
        ),
    )
    rate_limit_burst_s: float = Field(
        10.0, gt=0, le=3600, **_doc("How many seconds of the rate an organization may save up and spend at once.", "seconds")
    )
    moderation_block: tuple[str, ...] = Field(
        DEFAULT_MODERATION_BLOCK,
        **_doc("NudeNet categories that fail moderation. Comma-separated in the environment.", "category list"),
    )
    moderation_threshold: float = Field(
        0.5, gt=0, lt=1, **_doc("Detector score at or above which a blocking category counts.", "score 0..1")
    )
    segmenter_model: str = Field(
        "u2netp",
        **_doc(
            "Segmentation model from the registry: `u2netp` (weights shipped), `birefnet-general`, `birefnet-lite`, `rmbg-2.0`, `isnet-general-use`, `rmbg-1.4` (these need `CUTOUT_SEGMENTER_WEIGHTS_URI`).",
            "name",
        ),
    )
    segmenter_weights_uri: str | None = Field(
        None,
        **_doc(
            "Weights for the model: a local path, `gs://BUCKET/OBJECT` or `https://` URL (safetensors or a weights-only PyTorch checkpoint). Default: the model's shipped weights.",
            "URI",
        ),
    )
    segmenter_weights_sha256: str | None = Field(
        None, **_doc("SHA-256 of those weights; required with `CUTOUT_SEGMENTER_WEIGHTS_URI`, checked before loading.", "hex")
    )
    segmenter_input_size: int = Field(
        0,
        ge=0,
        le=4096,
        **_doc("Square side the model sees; 0 = the model's own (320 for u2netp, 1024 for the others).", "pixels"),
    )
    segmenter_dtype: Literal["float32", "float16", "bfloat16"] = Field(
        "float32", **_doc("Inference precision; float16 only on `cuda`.", "dtype")
    )
    segmenter_engine: Literal["auto", "torch", "onnxruntime", "openvino"] = Field(
        "auto",
        **_doc(
            "Inference engine: `torch`, or for the shipped `u2netp` in float32 on the CPU (the shipped ONNX file, rembg's) `openvino` "
            "or `onnxruntime` (both measured faster than torch there; openvino 10-20% less CPU per image than onnxruntime on x86-64, "
            "docs/benchmarks.md); `auto` = openvino where it applies on x86-64, onnxruntime where it applies on other CPUs, torch elsewhere.",
            "name",
        ),
    )
    segmenter_device: Literal["cpu", "cuda"] = Field(
        "cpu",
        **_doc("Where the segmenter runs. `cuda` also makes the segmenter replica ask Ray for one GPU.", "device"),
    )
    segmenter_min_confidence: float = Field(
        0.5,
        gt=0,
        lt=1,
        **_doc(
            "If the model's highest foreground probability stays below this, the answer is 422 `no_product_found`.", "probability"
        ),
    )
    segmenter_alpha_cutoff: float = Field(
        0.04,
        ge=0,
        lt=0.5,
        **_doc(
            "Mask values below this become fully transparent and values above 1 minus this fully opaque, so the crop is tight and the product solid.",
            "fraction",
        ),
    )
    segmenter_batch_size: int = Field(
        4,
        ge=1,
        le=256,
        **_doc(
            "Most images the segmenter takes at once: one forward pass on a GPU; on the CPU they run side by side, one per thread (docs/benchmarks.md).",
            "images",
        ),
    )
    segmenter_batch_wait_s: float = Field(0.005, ge=0, le=1, **_doc("How long the segmenter waits to fill a batch.", "seconds"))
    segmenter_partner_wait_s: float = Field(
        0.05,
        ge=0,
        le=1,
        **_doc(
            "Longest the segmenter keeps a batch open, past `CUTOUT_SEGMENTER_BATCH_WAIT_S`, for an image the ingress has said is coming (the batch's newest image came with other requests in the pipeline of its ingress replica, being fetched or about to pass their slot on), so that they run together: on the CPU side by side, one thread each, for less CPU per image than one after another (docs/benchmarks.md). A lone client's images never wait. 0 = never wait for them.",
            "seconds",
        ),
    )
    refine_edges: Literal["auto", "guided", "bilinear"] = Field(
        "auto",
        **_doc(
            "How the model's low-resolution mask becomes full-resolution alpha: `guided` (a fast guided filter in the uncertain edge band, so edges follow the photo), `bilinear` (plain resize), or `auto`: guided when the image's long side is at least three times the model's input, bilinear otherwise (what docs/quality.md measured best).",
            "mode",
        ),
    )
    default_quality: Literal["fast", "best"] = Field(
        "fast",
        **_doc(
            "Edge quality of requests that do not say (their `quality` field): `fast`, one model pass; or `best`, the model also on the mirrored image (averaged) and closed-form matting along the product's edge, just under 2x the CPU of `fast` for the mask and alpha (docs/quality.md).",
            "mode",
        ),
    )
    refine_foreground: bool = Field(
        False,
        **_doc(
            "Re-estimate the colour of semi-transparent edge pixels (blur-fusion foreground estimation). Off by default: with U²-Net-p masks it measured worse (docs/quality.md).",
            "on/off",
        ),
    )
    torch_threads: int = Field(
        0,
        ge=0,
        le=256,
        **_doc(
            "CPU threads per segmenter replica (every engine): a lone image runs on all of them, waiting images side by side with a share each; 0 = one per CPU that Ray gives the replica (at least 1).",
            "threads",
        ),
    )
    ingress_max_inflight: int = Field(
        2,
        ge=1,
        le=100000,
        **_doc(
            "Cutout requests one ingress replica lets into the pipeline at once, each until the segmenter has answered it (then it hands its slot on while its cutout is stored, with at most this many being stored at once); more wait in a fair queue (start-time fair queueing over organizations; docs/api.md, Admission). Enough to keep the segmenters busy and no more: more only lengthens the queues inside the stages, where the fair order does not hold (serve_config.yaml sets 1 for `make serve`, where the ingress answers HTTP itself: a polite organization beside a flood then waits behind one image, not two; 2 through Serve's HTTP proxy gave the same 4-client throughput as 3; docs/benchmarks.md; see cluster/serve_config.gpu.yaml).",
            "requests",
        ),
    )
    ingress_max_inflight_alone: int = Field(
        0,
        ge=0,
        le=100000,
        **_doc(
            "Cutout requests one ingress replica lets into the pipeline at once while a single organization has it to itself (no request of another organization in the pipeline or queued, or in the last second); as soon as another organization's request comes, it goes next and waits only for `CUTOUT_INGRESS_MAX_INFLIGHT`'s worth of slots to free. On a CPU, 2 lets one organization's images reach the segmenter together and run side by side (serve_config.yaml sets 2 for `make serve`: four clients 1.07-1.11x rembg's server's images per second at 0.93-0.97x its CPU per image, against parity with 1; docs/benchmarks.md). A value below `CUTOUT_INGRESS_MAX_INFLIGHT` (0 among them) means `CUTOUT_INGRESS_MAX_INFLIGHT`: no more while alone.",
            "requests",
        ),
    )
    admission_max_wait_s: float = Field(
        5.0,
        gt=0,
        le=600,
        **_doc(
            "Longest wait in the ingress queue that a request is queued for; a request expected to wait longer (its place in the queue over the measured rate at which the pipeline finishes requests, calibrated by the waits queued requests really had; times 1.2 for the estimate's error while requests are being refused) is refused at once with 503 `overloaded` and a `Retry-After` of when the queue should have room. Bounds the latency of admitted requests under overload.",
            "seconds",
        ),
    )
    overload_refusal_delay_s: float = Field(
        0.75,
        ge=0,
        le=0.9,
        **_doc(
            "Most a refusal (429 or 503) is held before it is answered when refusals come faster than the service's budget (4 per image it finishes a second, at least 5/s): a client that retries without waiting for `Retry-After` then costs a few requests a second instead of the CPU that admitted requests need (0.75 against 0.5: a quarter fewer refusals to answer in a storm of 32 such clients on 2 cores, docs/benchmarks.md); at most 0.9, so that every refusal is answered within a second. Clients that honour `Retry-After` are answered at once. 0 = never held.",
            "seconds",
        ),
    )
    request_timeout_s: float = Field(
        60.0,
        gt=0,
        le=600,
        **_doc("Longest a cutout request may take end to end; past it the answer is 503 and the work is cancelled.", "seconds"),
    )
    png_compress_level: int = Field(
        2,
        ge=0,
        le=9,
        **_doc(
            "zlib-ng level of the result PNG (rows Up-filtered). 2 measured about 4x faster than Pillow's level 3 for files 5% larger; 3 gives files 8% smaller than 2 for 20% more time (docs/benchmarks.md).",
            "0..9",
        ),
    )
    access_log_format: Literal["text", "json"] = Field(
        "text",
        **_doc(
            "Form of the access log, one line per request answered by the ingress. `text`: a readable line in the ingress replica's Serve log. `json`: one JSON object per line (request id, organization, sku, status, reason, stage times in ms, total ms; never a token, an image or a result URL) in `access_<replica>.jsonl` beside that log (`<Ray session>/logs/serve/`).",
            "text or json",
        ),
    )

    @field_validator("segmenter_model")
    @classmethod
    def _model(cls, value: str) -> str:
        from pipeline.models.registry import REGISTRY

        if value not in REGISTRY:
            raise ValueError(f"unknown model {value!r}; registered: {', '.join(REGISTRY)}")
        return value

    @field_validator("segmenter_weights_sha256")
    @classmethod
    def _sha(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[0-9a-fA-F]{64}$", value):
            raise ValueError("must be 64 hex digits")
        return value.lower() if value else value

    @field_validator("allowed_source_networks")
    @classmethod
    def _cidrs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = []
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                bad.append(cidr)
        if bad:
            raise ValueError(f"not a CIDR: {', '.join(bad)}")
        return value

    @field_validator("allowed_sources")
    @classmethod
    def _hosts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        pattern = re.compile(r"^\.?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")
        bad = [h for h in value if not pattern.match(h.lower())]
        if bad:
            raise ValueError(f"not a host name: {', '.join(bad)}")
        return tuple(h.lower() for h in value)

    @field_validator("moderation_block")
    @classmethod
    def _labels(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        upper = tuple(v.strip().upper() for v in value if v.strip())
        bad = [v for v in upper if v not in MODERATION_LABELS]
        if bad:
            raise ValueError(f"unknown category {', '.join(bad)}; known: {', '.join(MODERATION_LABELS)}")
        return upper

    @field_validator("public_base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/?#\s]+(/[^?#\s]*)?$", value):
            raise ValueError("must be an http(s) URL without query or fragment")
        return value.rstrip("/")

    @field_validator("url_signing_key")
    @classmethod
    def _key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters")
        return value

    @field_validator("storage_uri")
    @classmethod
    def _storage(cls, value: str | None) -> str | None:
        if value and value.startswith("gs://"):
            if not re.match(r"^gs://[a-z0-9][a-z0-9._-]{1,220}[a-z0-9](/[^\s]*)?$", value):
                raise ValueError("must be gs://BUCKET or gs://BUCKET/PREFIX")
        elif value and "://" in value and not value.startswith("file://"):
            raise ValueError("must be gs://BUCKET/PREFIX or a local folder")
        return value

    @model_validator(mode="after")
    def _resolve(self) -> Settings:
        data_dir = self.data_dir.expanduser().resolve()
        object.__setattr__(self, "data_dir", data_dir)
        tokens = (self.tokens_file or data_dir / "tokens.json").expanduser().resolve()
        object.__setattr__(self, "tokens_file", tokens)
        storage = self.storage_uri or str(data_dir / "results")
        if not storage.startswith("gs://"):
            storage = str(Path(storage.removeprefix("file://")).expanduser().resolve())
        object.__setattr__(self, "storage_uri", storage)
        if self.segmenter_weights_uri and not self.segmenter_weights_sha256:
            raise ValueError("segmenter_weights_uri needs segmenter_weights_sha256")
        if self.segmenter_dtype == "float16" and self.segmenter_device != "cuda":
            raise ValueError("segmenter_dtype float16 needs segmenter_device cuda")
        from pipeline.engines import resolve_engine

        resolve_engine(
            self.segmenter_engine,
            self.segmenter_model,
            self.segmenter_device,
            self.segmenter_weights_uri,
            self.segmenter_input_size,
            self.segmenter_dtype,
        )
        if self.uses_gcs and self.result_cache_s + self.result_url_ttl_s > GCS_LIFECYCLE_AGE_S:
            raise ValueError(
                "result_cache_s + result_url_ttl_s must be at most a day with Cloud Storage (its lifecycle rule deletes results after one)"
            )
        if self.max_request_body == 0:
            object.__setattr__(self, "max_request_body", 4 * ((self.max_src_file_size + 2) // 3) + 64 * 1024)
        return self

    @property
    def max_src_pixels(self) -> int:
        """The pixel limit as a pixel count."""
        return int(self.max_src_resolution * 1_000_000)

    @property
    def uses_gcs(self) -> bool:
        """Whether results go to Cloud Storage."""
        return str(self.storage_uri).startswith("gs://")

    @property
    def results_dir(self) -> Path:
        """The local results folder."""
        return Path(self.storage_uri or "")

    @property
    def model_input_size(self) -> int:
        """The square side the segmenter's input is resized to."""
        from pipeline.models.registry import get_spec

        return self.segmenter_input_size or get_spec(self.segmenter_model).input_size

    @property
    def model_cache_dir(self) -> Path:
        """Where converted weights are cached."""
        return self.data_dir / "models"


LIST_FIELDS = {name for name, f in Settings.model_fields.items() if "tuple" in str(f.annotation)}


def _from_env(environ: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    values: dict[str, Any] = {}
    unknown = []
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX) or key in CLIENT_ENV:
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name not in Settings.model_fields:
            unknown.append(key)
            continue
        if name in LIST_FIELDS:
            values[name] = tuple(p.strip() for p in raw.split(",") if p.strip())
        elif raw == "" and Settings.model_fields[name].default is None:
            values[name] = None
        else:
            values[name] = raw
    return values, unknown


def load_settings(args: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Build the settings from ``args`` and the environment, reporting every problem at once.

    Args:
        args: The application's ``args:`` from ``serve_config.yaml``.
        environ: Environment to read ``CUTOUT_*`` overrides from (default: ``os.environ``).

    Raises:
        SettingsError: Naming each invalid or unknown setting.
    """
    environ = os.environ if environ is None else environ
    merged: dict[str, Any] = {}
    for key, value in (args or {}).items():
        merged[key] = tuple(value) if key in LIST_FIELDS and isinstance(value, list) else value
    env_values, unknown = _from_env(environ)
    if unknown:  # most likely a typo: say so instead of silently running on the default
        logging.getLogger(__name__).warning("ignoring unknown setting variables: %s", ", ".join(sorted(unknown)))
    merged.update(env_values)
    try:
        return Settings(**merged)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"]) or "settings"
            source = f"{ENV_PREFIX}{name.upper()}" if name in env_values else f"args.{name}"
            problems.append(f"{source}: {err['msg']}")
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None


def settings_table() -> str:
    """The settings table of docs/settings.md, generated from the model so that the two stay in step."""
    rows = ["| environment variable | meaning | unit | default |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        extra = field.json_schema_extra or {}
        default = field.default
        if isinstance(default, tuple):
            default = ",".join(default) if default else "(empty)"
        elif default is None:
            default = "(see meaning)"
        elif name == "max_request_body" and default == 0:
            default = "0 (auto)"
        rows.append(f"| `{ENV_PREFIX}{name.upper()}` | {field.description} | {extra.get('unit', '')} | `{default}` |")
    return "\n".join(rows)
