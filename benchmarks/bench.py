"""`make bench`: throughput and latency, measured side by side in one run.

Rows, all on the same GrabCut images (../shared/eval), on this machine, in one process run:
- the model alone (U²-Net-p forward, batch 1 and batch 4): the ceiling;
- the same pipeline in one process without Ray (decode, model, compose, encode, store);
- the Serve application over HTTP at concurrency 1 and 4 (started here from serve_config.yaml);
- rembg's own server (`rembg s`, same u2netp.onnx) at the same concurrency, when
  `--rembg-python` names the python of a virtualenv with `rembg[cli]`.

    .venv/bin/python benchmarks/bench.py [--rembg-python /tmp/rembg-venv/bin/python] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def images(limit: int) -> list[tuple[str, bytes]]:
    from pipeline.evalsets import IMAGE_SUFFIXES, default_eval_dir

    folder = default_eval_dir() / "grabcut" / "images"
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    return [(p.name, p.read_bytes()) for p in files]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def row(name: str, seconds: list[float], wall: float, errors: int = 0, extra: str = "") -> str:
    n = len(seconds)
    return (
        f"| {name} | {n} | {n / wall:.2f} | {1000 * statistics.median(seconds):.0f} | {1000 * pct(seconds, 0.95):.0f} | "
        f"{1000 * pct(seconds, 0.99):.0f} | {errors} | {extra} |"
    )


HEADER = "| what | images | images/s | p50 ms | p95 ms | p99 ms | errors | notes |\n|---|---|---|---|---|---|---|---|"


def bench_in_process(data: list[tuple[str, bytes]]) -> list[str]:
    import numpy as np

    from pipeline.segment import Segmenter
    from pipeline.service import CutoutOptions, Finisher, ImageLoader
    from pipeline.settings import load_settings

    settings = load_settings({"data_dir": tempfile.mkdtemp(prefix="bench-")}, environ={})
    threads = 2  # what the Serve segmenter replica uses (torch_threads in serve_config.yaml)
    segmenter = Segmenter("u2netp", "cpu", settings.model_cache_dir, threads)
    loader, finisher = ImageLoader(settings), Finisher(settings)
    inputs = [loader.decode(raw, "file", False) for _, raw in data]
    batch = np.stack([li.model_input for li in inputs])
    segmenter.predict(batch[:1])  # warm-up
    rows = []
    for size in (1, 4):
        times = []
        started = time.perf_counter()
        for i in range(0, len(batch) - size + 1, size):
            t = time.perf_counter()
            segmenter.predict(batch[i : i + size])
            times.extend([(time.perf_counter() - t) / size] * size)
        rows.append(row(f"model alone, batch {size} (2 threads)", times, time.perf_counter() - started))
    times = []
    started = time.perf_counter()
    for _, raw in data:
        t = time.perf_counter()
        li = loader.decode(raw, "file", False)
        prob = segmenter.predict(li.model_input[None])[0]
        options = CutoutOptions("bench", None, False, False, "b")
        try:
            rgba, crop = finisher.compose(li, prob, options)
            finisher.store(li, rgba, crop, options)
        except Exception:
            pass
        times.append(time.perf_counter() - t)
    rows.append(row("pipeline in one process, no Ray (2 threads)", times, time.perf_counter() - started))
    return rows


async def load(url: str, make_request, data: list[tuple[str, bytes]], concurrency: int, rounds: int) -> tuple[list[float], float, int]:
    import httpx

    queue: asyncio.Queue = asyncio.Queue()
    for _ in range(rounds):
        for item in data:
            queue.put_nowait(item)
    latencies: list[float] = []
    errors = 0

    async def worker(client):
        nonlocal errors
        while not queue.empty():
            name, raw = queue.get_nowait()
            t = time.perf_counter()
            try:
                response = await make_request(client, url, name, raw)
                ok = response.status_code in (200, 422)
            except Exception:
                ok = False
            latencies.append(time.perf_counter() - t)
            errors += 0 if ok else 1

    async with httpx.AsyncClient(timeout=120) as client:
        await make_request(client, url, *data[0])  # warm-up
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        return latencies, time.perf_counter() - started, errors


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_service(data, concurrencies, rounds) -> list[str]:
    from tests.integration.conftest import running_service

    rows = []
    with running_service(env_extra={"CUTOUT_RATE_LIMIT_RPM": "0"}) as svc:
        async def ours(client, url, name, raw):
            body = {"sku": name, "file": base64.b64encode(raw).decode()}
            return await client.post(url + "/product/cutout", json=body, headers={"api_token": svc.token})

        for c in concurrencies:
            lat, wall, errors = asyncio.run(load(svc.url, ours, data, c, rounds))
            rows.append(row(f"this service over HTTP, concurrency {c}", lat, wall, errors, "crop + PNG stored + signed URL"))
    return rows


def bench_rembg(python: str, data, concurrencies, rounds) -> list[str]:
    from pipeline.models.u2netp_weights import shipped_onnx_path

    port = free_port()
    env = {**os.environ, "U2NET_HOME": str(shipped_onnx_path().parent), "OMP_NUM_THREADS": "2"}
    rembg = str(Path(python).parent / "rembg")
    proc = subprocess.Popen([rembg, "s", "--host", "127.0.0.1", "--port", str(port), "--no-ui", "--log_level", "warning"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        for _ in range(120):
            try:
                if httpx.get(url + "/api", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)

        async def theirs(client, url, name, raw):
            return await client.post(url + "/api/remove", files={"file": (name, raw)}, data={"model": "u2netp"})

        rows = []
        for c in concurrencies:
            lat, wall, errors = asyncio.run(load(url, theirs, data, c, rounds))
            rows.append(row(f"rembg server (`rembg s`, u2netp), concurrency {c}", lat, wall, errors, "uncropped PNG in the response"))
        return rows
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--concurrency", default="1,4")
    parser.add_argument("--rembg-python", default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    data = images(args.images)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    rows = bench_in_process(data)
    print("\n".join(rows), flush=True)
    rows += bench_service(data, concurrencies, args.rounds)
    print("\n".join(rows[-len(concurrencies):]), flush=True)
    if args.rembg_python:
        rows += bench_rembg(args.rembg_python, data, concurrencies, args.rounds)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), platform.processor())
    report = (
        f"Machine: {os.cpu_count()} CPUs ({cpu}), {platform.system()} {platform.machine()}, no GPU; "
        f"{len(data)} GrabCut images x {args.rounds} round(s); {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\n"
        + HEADER + "\n" + "\n".join(rows) + "\n"
    )
    print(report)
    if args.out:
        args.out.write_text(args.out.read_text().split("<!-- bench:start -->")[0] + "<!-- bench:start -->\n" + report if args.out.exists() else report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
