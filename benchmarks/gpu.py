"""The GPU check: model-only throughput and the full HTTP path, one command, one GPU, within 8 minutes.

1. Model only: u2netp, birefnet-lite and birefnet-general with random weights (speed does not
   depend on the weights' values) at batch 1, 4, 8 and 16, in float16 and float32, each at its
   registry input size: milliseconds a batch and images a second, after a warm-up, synchronised.
   A configuration that runs out of GPU memory is reported as such and the rest go on.
2. The full HTTP path: the real service (a Ray head and `serve run`, tests/harness.py) with the
   GPU profile's model settings (cluster/serve_config.gpu.yaml: birefnet-general in float16 on
   one GPU per segmenter replica, random weights in a local safetensors file with their hash),
   32 closed-loop clients posting product photos as base64, rate limit off.

Prints a markdown table for docs/benchmarks.md (and writes it with --out).

    .venv/bin/python benchmarks/gpu.py [--out gpu-results.md]
    .venv/bin/python benchmarks/gpu.py --dry-run        # CPU, tiny sizes (tests/test_gpu_benchmark.py)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import io
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = ("u2netp", "birefnet-lite", "birefnet-general")
BATCHES = (1, 4, 8, 16)
DTYPES = ("float16", "float32")


@dataclass
class ModelRow:
    model: str
    dtype: str
    batch: int
    size: int
    ms_per_batch: float | None
    images_per_s: float | None
    peak_mib: float | None
    note: str = ""


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def bench_model(
    name: str, dtype: str, batches: tuple[int, ...], device: str, size: int | None, seconds: float, deadline: float
) -> list[ModelRow]:
    """Forward passes of ``name`` with random weights, one row per batch size."""
    import torch

    from pipeline.models.registry import get_spec

    spec = get_spec(name)
    side = size or spec.input_size
    torch.manual_seed(0)
    model = spec.build().eval().to(device=device, dtype=getattr(torch, dtype))
    rows = []
    for batch in batches:
        if time.monotonic() > deadline:
            rows.append(ModelRow(name, dtype, batch, side, None, None, None, "skipped: time budget"))
            continue
        x = torch.randn(batch, 3, side, side, device=device, dtype=getattr(torch, dtype))
        try:
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            with torch.inference_mode():
                for _ in range(2):  # warm-up: kernels chosen, memory pools filled
                    model(x)
                _sync(device)
                runs, started = 0, time.perf_counter()
                while runs < 2 or (time.perf_counter() - started < seconds and runs < 50):
                    model(x)
                    runs += 1
                _sync(device)
                elapsed = time.perf_counter() - started
            peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
            rows.append(ModelRow(name, dtype, batch, side, 1000 * elapsed / runs, batch * runs / elapsed, peak))
        except torch.OutOfMemoryError:
            rows.append(ModelRow(name, dtype, batch, side, None, None, None, "out of GPU memory"))
        finally:
            del x
            if device == "cuda":
                torch.cuda.empty_cache()
        print(_model_line(rows[-1]), flush=True)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return rows


def _model_line(r: ModelRow) -> str:
    if r.ms_per_batch is None:
        return f"| {r.model} | {r.dtype} | {r.batch} | {r.size} | – | – | – | {r.note} |"
    peak = f"{r.peak_mib:.0f}" if r.peak_mib is not None else "–"
    return f"| {r.model} | {r.dtype} | {r.batch} | {r.size} | {r.ms_per_batch:.1f} | {r.images_per_s:.1f} | {peak} | {r.note} |"


def random_weights(name: str, folder: Path) -> tuple[Path, str]:
    """A safetensors file of ``name``'s architecture with random weights, and its SHA-256."""
    import torch
    from safetensors.torch import save_file

    from pipeline.models.registry import get_spec

    torch.manual_seed(0)
    state = {k: v.contiguous() for k, v in get_spec(name).build().state_dict().items()}
    path = folder / f"{name}-random.safetensors"
    save_file(state, str(path))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def photos(count: int, side: int) -> list[tuple[str, bytes]]:
    """Product photos (tests/images.py) at ``side`` pixels wide, as JPEG."""
    from tests.images import product_photo

    out = []
    for i in range(count):
        im = product_photo(side + 16 * i, side * 3 // 4 + 8 * i)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=90)
        out.append((f"sku-{i}", buf.getvalue()))
    return out


def bench_http(device: str, concurrency: int, requests: int, photo_side: int, model: str, dtype: str) -> dict[str, Any]:
    """The full path over HTTP on a running service; latencies and statuses."""
    import yaml

    from benchmarks.bench import closed_loop, pct
    from tests.harness import running_service

    gpu_args = yaml.safe_load((ROOT / "cluster" / "serve_config.gpu.yaml").read_text())["applications"][0]["args"]
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
        args: dict[str, Any] = {"segmenter_model": model, "segmenter_device": device, "segmenter_dtype": dtype}
        deployments = None
        if model != "u2netp":
            path, sha = random_weights(model, Path(tmp))
            args.update(segmenter_weights_uri=str(path), segmenter_weights_sha256=sha)
        if device == "cuda":
            args.update(
                segmenter_batch_size=gpu_args["segmenter_batch_size"],
                segmenter_batch_wait_s=gpu_args["segmenter_batch_wait_s"],
                ingress_max_inflight=gpu_args["ingress_max_inflight"],
                torch_threads=4,
            )
            gpu_deployments = yaml.safe_load((ROOT / "cluster" / "serve_config.gpu.yaml").read_text())["applications"][0][
                "deployments"
            ]
            deployments = {d["name"]: d for d in gpu_deployments if d["name"] in ("Segmenter", "Ingress")}
            deployments["Segmenter"] = {**deployments["Segmenter"], "autoscaling_config": {"min_replicas": 1, "max_replicas": 1}}
        data = photos(8, photo_side)
        with running_service(args=args, env_extra={"CUTOUT_RATE_LIMIT_RPM": "0"}, deployments=deployments) as svc:

            async def post(client, url, name, raw):
                body = {"sku": name, "file": base64.b64encode(raw).decode()}
                return await client.post(url + "/product/cutout", json=body, headers={"api_token": svc.token})

            rounds = max(1, requests // len(data))
            res = asyncio.run(closed_loop(svc.url, post, data, concurrency, rounds))
    ok = len(res.latencies) - res.errors
    return {
        "model": model,
        "dtype": dtype,
        "concurrency": concurrency,
        "requests": len(res.latencies),
        "ok": ok,
        "p50_ms": 1000 * pct(res.latencies, 0.5),
        "p95_ms": 1000 * pct(res.latencies, 0.95),
        "images_per_s": len(res.latencies) / res.wall if res.wall else 0.0,
        "retries": res.retries,
        "weights": "shipped" if model == "u2netp" else "random",
    }


def device_name(device: str) -> str:
    import torch

    if device == "cuda":
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    return f"CPU ({platform.processor() or platform.machine()}), torch {torch.__version__}"


def report(device: str, rows: list[ModelRow], http: dict[str, Any] | None) -> str:
    lines = [
        f"GPU check (`benchmarks/gpu.py`) on {device_name(device)}.",
        "",
        "Model only, random weights, square input at the model's size, after a warm-up:",
        "",
        "| model | dtype | batch | input px | ms / batch | images / s | peak MiB | note |",
        "|---|---|---|---|---|---|---|---|",
        *(_model_line(r) for r in rows),
    ]
    if http:
        lines += [
            "",
            f"Full HTTP path ({http['model']}, {http['dtype']}, {http['weights']} weights; image as base64, moderation, "
            "segmentation, crop, PNG, store, signed URL):",
            "",
            "| concurrency | requests | answered 200/422 | p50 ms | p95 ms | images / s | retries after 503 |",
            "|---|---|---|---|---|---|---|",
            f"| {http['concurrency']} | {http['requests']} | {http['ok']} | {http['p50_ms']:.0f} | {http['p95_ms']:.0f} "
            f"| {http['images_per_s']:.1f} | {http['retries']} |",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="CPU, 64 px inputs, batches 1 and 2, float32, a short HTTP run")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per configuration (after warm-up)")
    parser.add_argument("--budget-s", type=float, default=330.0, help="model-only time budget; the rest is skipped after it")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--requests", type=int, default=256, help="HTTP requests in the timed run")
    parser.add_argument("--no-http", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this file")
    args = parser.parse_args(argv)

    import torch

    if args.dry_run:
        device, batches, dtypes, size, seconds = "cpu", (1, 2), ("float32",), 64, 0.0
        concurrency, requests, photo_side, http_model, http_dtype = 4, 8, 160, "u2netp", "float32"
        torch.set_num_threads(2)
    else:
        if not torch.cuda.is_available():
            print("benchmarks/gpu.py: no CUDA device (use --dry-run for the CPU check)", file=sys.stderr)
            return 2
        device, batches, dtypes, size, seconds = "cuda", BATCHES, DTYPES, None, args.seconds
        concurrency, requests, photo_side, http_model, http_dtype = (
            args.concurrency,
            args.requests,
            1200,
            "birefnet-general",
            "float16",
        )
        torch.backends.cudnn.benchmark = True
    deadline = time.monotonic() + args.budget_s
    rows: list[ModelRow] = []
    for name in args.models.split(","):
        for dtype in dtypes:
            rows += bench_model(name, dtype, batches, device, size, seconds, deadline)
    http = None if args.no_http else bench_http(device, concurrency, requests, photo_side, http_model, http_dtype)
    text = report(device, rows, http)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
