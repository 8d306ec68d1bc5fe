"""`make bench`: throughput, latency, CPU and memory, measured side by side in one run.

Everything runs on this machine, in one run, on the GrabCut photos of ../shared/eval:

- the model alone (the segmenter's forward, batch 1 and batch N; the service's engine and the
  other CPU engines beside it): the ceiling;
- the same pipeline in one process without Ray (decode, model, compose, encode, store);
- per-stage CPU time, wall time and memory against input size (1 to 50 megapixels);
- the Serve application over HTTP, started from serve_config.yaml as shipped (default
  settings), at each concurrency: throughput, p50/p95/p99, errors, CPU-seconds per image over
  every process of the Ray cluster, per-stage time from the service's own ``Server-Timing``
  header, and peak memory per replica;
- overload: open-loop arrivals at 4x the measured sustainable rate for a minute (admitted
  latency against unloaded, how fast the rest are refused, memory after);
- rembg's own server (`rembg s`, the same u2netp.onnx) at the same concurrencies, when
  `--rembg-python` names the python of a virtualenv with `rembg[cli]`: the two services take
  turns round by round (the order flipped each round), and a row gives ours over theirs.

    .venv/bin/python benchmarks/bench.py [--rembg-python /tmp/rembg-venv/bin/python] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

THREADS = 2  # what the Serve segmenter replica uses (torch_threads in serve_config.yaml)
SIZES_MP = (1, 2, 4, 12, 50)
STAGES = ("decode", "model", "compose", "encode", "store")


def images(limit: int, megapixels: float | None = None) -> list[tuple[str, bytes]]:
    """The first ``limit`` GrabCut photos; with ``megapixels``, each resized to about that many
    megapixels (aspect kept) and saved again as JPEG at quality 90, like a catalog photo."""
    from PIL import Image

    from pipeline.evaluation.evalsets import IMAGE_SUFFIXES, default_eval_dir

    folder = default_eval_dir() / "grabcut" / "images"
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if megapixels is None:
        return [(p.name, p.read_bytes()) for p in files]
    out = []
    for p in files:
        with Image.open(p) as im:
            scale = (megapixels * 1e6 / (im.width * im.height)) ** 0.5
            big = im.convert("RGB").resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        big.save(buf, "JPEG", quality=90)
        out.append((p.stem + ".jpg", buf.getvalue()))
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else float("nan")


def row(name: str, seconds: list[float], wall: float, errors: int = 0, cpu: float | None = None, extra: str = "") -> str:
    n = len(seconds)
    cpu_text = "-" if cpu is None else f"{cpu:.2f}"
    return (
        f"| {name} | {n} | {n / wall:.2f} | {1000 * statistics.median(seconds):.0f} | {1000 * pct(seconds, 0.95):.0f} | "
        f"{1000 * pct(seconds, 0.99):.0f} | {errors} | {cpu_text} | {extra} |"
    )


HEADER = (
    "| what | images | images/s | p50 ms | p95 ms | p99 ms | errors | CPU-s/image | notes |\n"
    "|---|---|---|---|---|---|---|---|---|"
)


# --- in one process, without Ray ---------------------------------------------------------


@dataclass
class Stages:
    """The pipeline's parts as the deployments hold them, in this process."""

    settings: Any
    segmenter: Any
    loader: Any
    finisher: Any


def make_stages(**args: Any) -> Stages:
    from pipeline.segment import Segmenter
    from pipeline.service import Finisher, ImageLoader
    from pipeline.settings import load_settings

    settings = load_settings({"data_dir": tempfile.mkdtemp(prefix="bench-"), **args}, environ={})
    segmenter = Segmenter(settings.segmenter_model, "cpu", settings.model_cache_dir, THREADS)
    return Stages(settings, segmenter, ImageLoader(settings), Finisher(settings))


def run_once(stages: Stages, raw: bytes) -> dict[str, tuple[float, float]]:
    """One image through the pipeline; (wall s, CPU s) per stage, as the deployments run them."""
    from pipeline import imageio
    from pipeline.service import CutoutOptions

    out: dict[str, tuple[float, float]] = {}

    def step(name: str, fn: Callable[[], Any]) -> Any:
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        out[name] = (time.perf_counter() - wall, time.process_time() - cpu)
        return result

    loaded = step("decode", lambda: stages.loader.decode(raw, "file", False))
    prob = step("model", lambda: stages.segmenter.predict(loaded.model_input[None])[0])
    options = CutoutOptions("bench", None, False, False, "bench")
    rgba, crop = step("compose", lambda: stages.finisher.compose(loaded, prob, options))
    png = step("encode", lambda: imageio.encode_png(rgba, stages.settings.png_compress_level))
    storage = stages.finisher.storage
    step("store", lambda: storage.signed_url(storage.put("bench", png, {"sku": None})))
    return out


def bench_model(stages: Stages, data: list[tuple[str, bytes]], batch_sizes: tuple[int, ...]) -> list[str]:
    """The segmenter's forward alone: the configured engine, and onnxruntime (rembg's runtime)
    and PyTorch beside it when the configured one is another (the same weights; which engine is
    faster decides the default; benchmarks/engines.py compares the CPU engines in detail)."""
    import numpy as np

    from pipeline.segment import Segmenter

    inputs = np.stack([stages.loader.decode(raw, "file", False).model_input for _, raw in data])
    segmenters = [stages.segmenter]
    for engine in ("onnxruntime", "torch"):
        if stages.segmenter.engine != engine:
            segmenters.append(
                Segmenter(stages.settings.segmenter_model, "cpu", stages.settings.model_cache_dir, THREADS, engine=engine)
            )
    rows = []
    for size in batch_sizes:
        for segmenter in segmenters:
            segmenter.predict(inputs[:size])  # warm-up
            times: list[float] = []
            wall, cpu = time.perf_counter(), time.process_time()
            for i in range(0, len(inputs) - size + 1, size):
                t = time.perf_counter()
                segmenter.predict(inputs[i : i + size])
                times.extend([(time.perf_counter() - t) / size] * size)
            cpu_per = (time.process_time() - cpu) / len(times)
            note = "the service's engine" if segmenter is stages.segmenter else ""
            rows.append(
                row(
                    f"model alone ({segmenter.engine}), batch {size} ({THREADS} threads)",
                    times,
                    time.perf_counter() - wall,
                    cpu=cpu_per,
                    extra=note,
                )
            )
    return rows


def bench_in_process(stages: Stages, data: list[tuple[str, bytes]]) -> tuple[list[str], dict[str, float]]:
    from pipeline.errors import CutoutError

    times, per_stage = [], {s: 0.0 for s in STAGES}
    wall, cpu = time.perf_counter(), time.process_time()
    errors = 0
    for _, raw in data:
        t = time.perf_counter()
        try:
            for name, (w, _) in run_once(stages, raw).items():
                per_stage[name] += 1000 * w / len(data)
        except CutoutError:
            errors += 1  # e.g. no product found: counted, as the service would answer 422
        times.append(time.perf_counter() - t)
    cpu_per = (time.process_time() - cpu) / len(data)
    return [
        row(f"pipeline in one process, no Ray ({THREADS} threads)", times, time.perf_counter() - wall, errors, cpu_per)
    ], per_stage


# --- per-stage cost against input size (a fresh process per size) -------------------------


def synthetic_jpeg(megapixels: float) -> bytes:
    """A GrabCut photo scaled to ``megapixels`` with a little sensor-like noise, as JPEG q90."""
    import numpy as np
    from PIL import Image

    from pipeline.evaluation.evalsets import default_eval_dir

    src = Image.open(default_eval_dir() / "grabcut" / "images" / "124080.jpg").convert("RGB")
    width = int(round((megapixels * 1e6 * src.width / src.height) ** 0.5))
    height = int(round(megapixels * 1e6 / width))
    big = np.asarray(src.resize((width, height), Image.BICUBIC), dtype=np.int16)
    noise = np.random.default_rng(0).normal(0, 3, big.shape).astype(np.int16)
    buf = io.BytesIO()
    Image.fromarray(np.clip(big + noise, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


class PeakRSS:
    """This process's peak resident memory since the last reset (Linux: VmHWM, reset through
    /proc/self/clear_refs), so that no sampling thread has to win the GIL to see a peak."""

    @staticmethod
    def _status(field: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        return 0

    def reset(self) -> int:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return self._status("VmRSS")

    @property
    def peak(self) -> int:
        return self._status("VmHWM")


def sweep_one(megapixels: float) -> dict[str, Any]:
    """Per-stage wall ms, CPU ms and peak memory growth (MB) for one image of ``megapixels``."""
    from pipeline import imageio

    stages = make_stages(max_src_resolution=500)
    raw = synthetic_jpeg(megapixels)
    run_once(stages, raw)  # warm-up (also loads the model's weights)
    memory: dict[str, float] = {}
    rss = PeakRSS()

    def watch(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            base = rss.reset()
            try:
                return fn(*args, **kwargs)
            finally:
                memory[name] = (rss.peak - base) / 2**20

        return wrapped

    stages.loader.decode = watch("decode", stages.loader.decode)
    stages.segmenter.predict = watch("model", stages.segmenter.predict)
    stages.finisher.compose = watch("compose", stages.finisher.compose)
    imageio.encode_png = watch("encode", imageio.encode_png)
    stages.finisher.storage.put = watch("store", stages.finisher.storage.put)
    best: dict[str, tuple[float, float]] = {}
    for _ in range(2):
        for name, (w, c) in run_once(stages, raw).items():
            best[name] = min(best.get(name, (w, c)), (w, c))
    width, height = imageio.decode_image(raw, "file", 10**9).rgb.shape[1::-1]
    return {
        "megapixels": megapixels,
        "width": width,
        "height": height,
        "bytes": len(raw),
        "wall_ms": {k: 1000 * v[0] for k, v in best.items()},
        "cpu_ms": {k: 1000 * v[1] for k, v in best.items()},
        "memory_mb": memory,
    }


def bench_sizes(sizes: tuple[float, ...]) -> list[dict[str, Any]]:
    results = []
    for mp in sizes:
        # a fixed mmap threshold: freed large buffers go back to the OS, so each stage's peak
        # memory shows up as growth instead of hiding in pages an earlier stage freed
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        out = subprocess.run(
            [sys.executable, __file__, "--sweep-one", str(mp)], capture_output=True, text=True, cwd=ROOT, env=env
        )
        if out.returncode != 0:
            raise RuntimeError(f"size sweep at {mp} MP failed:\n{out.stderr[-3000:]}")
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"  {mp} MP done", file=sys.stderr, flush=True)
    return results


def sizes_report(results: list[dict[str, Any]]) -> str:
    lines = [
        "| input | JPEG MB | "
        + " | ".join(f"{s} CPU ms" for s in STAGES)
        + " | non-model CPU ms | per MP | non-model / model CPU | non-model / model wall |",
        "|---|---|" + "---|" * (len(STAGES) + 4),
    ]
    for r in results:
        cpu, wall = r["cpu_ms"], r["wall_ms"]
        other = sum(v for k, v in cpu.items() if k != "model")
        lines.append(
            f"| {r['megapixels']:g} MP ({r['width']}x{r['height']}) | {r['bytes'] / 1e6:.1f} | "
            + " | ".join(f"{cpu[s]:.0f}" for s in STAGES)
            + f" | {other:.0f} | {other / r['megapixels']:.0f} | {other / cpu['model']:.2f} | {other / wall['model']:.2f} |"
        )
    lines += [
        "",
        "| input | " + " | ".join(f"{s} wall ms" for s in STAGES) + " | " + " | ".join(f"{s} peak +MB" for s in STAGES) + " |",
        "|---|" + "---|" * (2 * len(STAGES)),
    ]
    for r in results:
        lines.append(
            f"| {r['megapixels']:g} MP | "
            + " | ".join(f"{r['wall_ms'][s]:.0f}" for s in STAGES)
            + " | "
            + " | ".join(f"{r['memory_mb'].get(s, 0):.0f}" for s in STAGES)
            + " |"
        )
    return "\n".join(lines)


# --- over HTTP -------------------------------------------------------------------------------


def replica_name(title: str) -> str | None:
    """The deployment of a Serve replica process from its title, or None for other processes."""
    if "ServeReplica:" not in title:
        return None
    return title.split("ServeReplica:", 1)[1].split()[0].split(":")[-1]


class ClusterWatch:
    """CPU time of a process tree, and resident memory of each Serve replica in it."""

    def __init__(self, root_pid: int) -> None:
        self.root = psutil.Process(root_pid)
        self.peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def processes(self) -> list[psutil.Process]:
        try:
            return [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu_seconds(self) -> float:
        total = 0.0
        for p in self.processes():
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return total

    def replicas(self) -> dict[str, int]:
        """``Deployment#pid`` -> RSS bytes, for every Serve replica process."""
        out = {}
        for p in self.processes():
            try:
                name = replica_name(" ".join(p.cmdline()))
                if name:
                    out[f"{name}#{p.pid}"] = p.memory_info().rss
            except psutil.Error:
                pass
        return out

    def high_water(self) -> dict[str, int]:
        """``Deployment#pid`` -> the most resident memory (bytes) each Serve replica has had since
        it started (the kernel's ``VmHWM``): a peak read once, without sampling beside the load."""
        out = {}
        for key in self.replicas():
            try:
                status = Path(f"/proc/{key.split('#')[1]}/status").read_text()
                out[key] = 1024 * int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))
            except (OSError, StopIteration, ValueError):
                pass
        return out

    def start(self) -> None:
        self.peak = {}
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, rss in self.replicas().items():
                self.peak[key] = max(self.peak.get(key, 0), rss)
            time.sleep(0.2)

    def stop(self) -> dict[str, int]:
        self._stop.set()
        if self._thread:
            self._thread.join()
        return dict(self.peak)


@dataclass
class LoadResult:
    latencies: list[float]
    wall: float
    errors: int
    timings: list[dict[str, float]] = field(default_factory=list)
    retries: int = 0  # 503s with Retry-After that the client waited out and sent again

    def merge(self, other: LoadResult) -> LoadResult:
        """Both runs as one: their answers, and their walls added."""
        return LoadResult(
            self.latencies + other.latencies,
            self.wall + other.wall,
            self.errors + other.errors,
            self.timings + other.timings,
            self.retries + other.retries,
        )


MakeRequest = Callable[[Any, str, str, bytes], Awaitable[Any]]


async def closed_loop(
    url: str, make_request: MakeRequest, data: list[tuple[str, bytes]], concurrency: int, rounds: int
) -> LoadResult:
    import httpx

    from pipeline.timing import parse_server_timing

    queue: asyncio.Queue = asyncio.Queue()
    for _ in range(rounds):
        for item in data:
            queue.put_nowait(item)
    result = LoadResult([], 0.0, 0)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            name, raw = queue.get_nowait()
            t = time.perf_counter()
            try:
                response = await make_request(client, url, name, raw)
                while response.status_code == 503 and "retry-after" in response.headers:
                    # what a well-behaved client does; the latency counts the wait
                    result.retries += 1
                    await asyncio.sleep(float(response.headers["retry-after"]))
                    response = await make_request(client, url, name, raw)
                ok = response.status_code in (200, 422)
                if "server-timing" in response.headers:
                    result.timings.append(parse_server_timing(response.headers["server-timing"]))
            except httpx.HTTPError:
                ok = False
            result.latencies.append(time.perf_counter() - t)
            result.errors += 0 if ok else 1

    async with httpx.AsyncClient(timeout=120) as client:
        for item in data[:2]:
            await make_request(client, url, *item)  # warm-up
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        result.wall = time.perf_counter() - started
    return result


async def open_loop(
    url: str, make_request: MakeRequest, data: list[tuple[str, bytes]], rate: float, duration_s: float
) -> list[tuple[int, float, bool]]:
    """Requests at a fixed rate whatever the answers: (status, seconds, has Retry-After) each."""
    import httpx

    results: list[tuple[int, float, bool]] = []

    async def one(client: httpx.AsyncClient, name: str, raw: bytes) -> None:
        t = time.perf_counter()
        try:
            r = await make_request(client, url, name, raw)
            results.append((r.status_code, time.perf_counter() - t, "retry-after" in r.headers))
        except httpx.HTTPError:
            results.append((0, time.perf_counter() - t, False))

    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=200)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        tasks = [asyncio.create_task(one(client, *data[i % len(data)])) async for i in arrivals(rate, duration_s)]
        await asyncio.gather(*tasks)
    return results


async def arrivals(rate: float, duration_s: float):
    """Yields 0, 1, 2, ... at ``rate`` a second for ``duration_s``, whatever the answers (open loop)."""
    started = time.perf_counter()
    for i in range(int(rate * duration_s)):
        delay = started + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        yield i


def stage_report(name: str, timings: list[dict[str, float]]) -> tuple[str, list[str]]:
    keys = [
        k
        for k in ("admission", "fetch", "decode", "segment_queue", "segment", "compose", "encode", "store", "total")
        if any(k in t for t in timings)
    ]
    means = {k: statistics.mean(t.get(k, 0.0) for t in timings) for k in keys}
    overhead = means.get("total", 0.0) - sum(v for k, v in means.items() if k != "total")
    return f"| {name} | " + " | ".join(f"{means[k]:.1f}" for k in keys) + f" | {overhead:.1f} |", keys


def bench_service(
    data, concurrencies, rounds, overload_s: float, rembg_python: str | None = None
) -> tuple[list[str], list[str], list[str], dict[str, Any]]:
    """Our service over HTTP at each concurrency, and rembg's server beside it when ``rembg_python`` is given.

    Both services are up for the whole comparison and take turns: in each round every
    concurrency runs once against each, the order flipping from round to round, so that the
    other work on this shared machine falls on both alike (compare the two rows of one run).
    """
    from tests.harness import running_service

    rows, stage_rows, memory_rows, overload = [], [], [], {}
    from pipeline import tokens

    # the result cache off: every round runs the whole pipeline (bench_cache measures the cache);
    # the rate limit as shipped (the closed loops stay within it)
    with running_service(env_extra={"CUTOUT_RESULT_CACHE_S": "0"}, as_shipped=True) as svc:
        with rembg_server(rembg_python) if rembg_python else contextlib.nullcontext() as rembg:

            async def theirs(client, url, name, raw):
                return await client.post(url + "/api/remove", files={"file": (name, raw)}, data={"model": "u2netp"})

            watch = ClusterWatch(svc.head_pid)
            sides = {"ours": (svc.url, cutout_request(svc.token), watch)}
            if rembg:
                sides["rembg"] = (rembg[0], theirs, ClusterWatch(rembg[1]))
            results: dict[tuple[str, int], LoadResult] = {}
            cpu: dict[tuple[str, int], float] = {}
            peaks: dict[int, dict[str, int]] = {}
            for r in range(rounds):
                for c in concurrencies:
                    for side in sorted(sides, reverse=bool(r % 2)):
                        url, make_request, side_watch = sides[side]
                        before = side_watch.cpu_seconds()
                        res = asyncio.run(closed_loop(url, make_request, data, c, 1))
                        if side == "ours":  # nothing sampled while the load runs: the cores are the two sides' only
                            peaks[c] = watch.high_water()
                        cpu[side, c] = cpu.get((side, c), 0.0) + side_watch.cpu_seconds() - before
                        results[side, c] = results[side, c].merge(res) if (side, c) in results else res
                        print(f"round {r + 1}, {side}, concurrency {c}: {len(res.latencies) / res.wall:.2f} images/s", flush=True)
            rate = {key: len(res.latencies) / res.wall for key, res in results.items()}
            cpu_per = {key: cpu[key] / len(res.latencies) for key, res in results.items()}
            p50 = {key: statistics.median(res.latencies) for key, res in results.items()}
            names = {
                "ours": ("this service over HTTP", "crop + PNG stored + signed URL"),
                "rembg": ("rembg server (`rembg s`, u2netp)", "uncropped PNG in the response"),
            }
            for side in sides:
                for c in concurrencies:
                    res = results[side, c]
                    name, note = names[side]
                    if res.retries:
                        note += f"; {res.retries} retries after 503 + Retry-After"
                    rows.append(row(f"{name}, concurrency {c}", res.latencies, res.wall, res.errors, cpu_per[side, c], note))
            for c in concurrencies:
                res = results["ours", c]
                line, keys = stage_report(f"concurrency {c}", res.timings)
                stage_rows.append(line)
                by_stage: dict[str, int] = {}
                for key, rss in peaks.get(c, {}).items():
                    stage = key.split("#")[0]
                    by_stage[stage] = max(by_stage.get(stage, 0), rss)
                memory_rows.append(
                    f"| concurrency {c} | " + " | ".join(f"{by_stage.get(s, 0) / 2**20:.0f}" for s in REPLICAS) + " |"
                )
                if rembg:
                    ours, theirs_ = ("ours", c), ("rembg", c)
                    rows.append(
                        f"| this service / rembg's server, concurrency {c} | | **{rate[ours] / rate[theirs_]:.2f}x** | "
                        f"{p50[ours] / p50[theirs_]:.2f}x | | | | **{cpu_per[ours] / cpu_per[theirs_]:.2f}x** | "
                        "throughput, p50 and CPU per image, ours over theirs |"
                    )
            print("\n".join(rows), flush=True)
        stage_rows.insert(
            0, "| load | " + " | ".join(f"{k} ms" for k in keys) + " | Serve overhead ms |\n|---|" + "---|" * (len(keys) + 1)
        )
        if overload_s > 0:
            # the overload measures admission, not the rate limit: its organization has none
            unlimited = tokens.create_token(svc.data_dir / "tokens.json", "overload", rpm=0)
            results_ours = {c: results["ours", c] for c in concurrencies}
            overload = run_overload(svc, cutout_request(unlimited), data, results_ours, watch, overload_s)
    return rows, stage_rows, memory_rows, overload


def cutout_request(token: str) -> MakeRequest:
    """``POST /product/cutout`` of a photo by base64 with ``token``, for :func:`closed_loop` and :func:`open_loop`."""

    async def post(client, url, name, raw):
        body = {"sku": name, "file": base64.b64encode(raw).decode()}
        return await client.post(url + "/product/cutout", json=body, headers={"api_token": token})

    return post


REPLICAS = ("Ingress", "Fetcher", "Segmenter", "Uploader", "Moderator", "RateLimiter")
CACHE_IMAGES = 20
CACHE_CONCURRENCY = 4


def bench_cache(data: list[tuple[str, bytes]], concurrency: int = CACHE_CONCURRENCY) -> dict[str, Any]:
    """The result cache: a first pass over the images (misses), then the same images again (hits).

    Both passes through the service as shipped, with the result cache on (its default), over HTTP.

    Returns:
        Throughput of each pass, the ratio, and the ``X-Cache`` answers seen in each.
    """
    import httpx

    from tests.harness import running_service

    env = {"CUTOUT_RATE_LIMIT_RPM": "0", "CUTOUT_RESULT_CACHE_S": "3600"}  # the cache as shipped (the harness turns it off)
    with running_service(env_extra=env, as_shipped=True) as svc:
        states: dict[str, list[str]] = {"first": [], "repeat": []}
        urls: dict[str, dict[str, str]] = {"first": {}, "repeat": {}}

        post = cutout_request(svc.token)

        def make(pass_name: str):
            async def send(client, url, name, raw):
                response = await post(client, url, name, raw)
                states[pass_name].append(response.headers.get("x-cache", "-"))
                if response.status_code == 200:
                    urls[pass_name][name] = response.json()["result_url"]
                return response

            return send

        first = asyncio.run(closed_loop(svc.url, make("first"), data, concurrency, 1))
        repeat = asyncio.run(closed_loop(svc.url, make("repeat"), data, concurrency, 1))
        same = sum(
            1
            for name, url in urls["repeat"].items()
            if name in urls["first"] and httpx.get(url, timeout=30).content == httpx.get(urls["first"][name], timeout=30).content
        )
    first_rate, repeat_rate = len(first.latencies) / first.wall, len(repeat.latencies) / repeat.wall
    return {
        "images": len(data),
        "concurrency": concurrency,
        "first": first,
        "repeat": repeat,
        "first_rate": first_rate,
        "repeat_rate": repeat_rate,
        "ratio": repeat_rate / first_rate,
        "first_states": {s: states["first"].count(s) for s in sorted(set(states["first"]))},
        "repeat_states": {s: states["repeat"].count(s) for s in sorted(set(states["repeat"]))},
        "identical": same,
    }


def cache_report(c: dict[str, Any]) -> str:
    lines = [
        f"The same {c['images']} GrabCut images sent twice, concurrency {c['concurrency']}, the service as shipped "
        "(result cache on); the second pass finds every result in the cache. Each pass starts with the "
        "closed loop's two untimed warm-up requests, so the first pass's timed part also has two hits: "
        "the ratio understates the cache's gain a little.",
        "",
        HEADER,
        row(
            "first pass (cache misses: the whole pipeline)",
            c["first"].latencies,
            c["first"].wall,
            c["first"].errors,
            extra=f"X-Cache {c['first_states']}",
        ),
        row(
            "repeat pass (cache hits: no decode, no model)",
            c["repeat"].latencies,
            c["repeat"].wall,
            c["repeat"].errors,
            extra=f"X-Cache {c['repeat_states']}",
        ),
        "",
        f"Repeat pass / first pass throughput: **{c['ratio']:.1f}x** ({c['repeat_rate']:.1f} vs {c['first_rate']:.2f} images/s); "
        f"the file behind the repeat's URL is byte-identical to the first's for {c['identical']} of {c['images']} images.",
    ]
    return "\n".join(lines)


def write_section(out: Path, marker: str, text: str) -> None:
    """Replace the part of ``out`` between ``<!-- marker:start -->`` and ``<!-- marker:end -->`` (appended when absent)."""
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    previous = out.read_text() if out.exists() else ""
    block = f"{start}\n{text}\n{end}"
    if start in previous and end in previous:
        head, rest = previous.split(start, 1)
        out.write_text(head + block + rest.split(end, 1)[1])
    else:
        out.write_text(previous.rstrip("\n") + "\n\n" + block + "\n")


def run_overload(svc, make_request, data, results, watch: ClusterWatch, duration_s: float) -> dict[str, Any]:
    import httpx

    unloaded_p99 = pct(results[min(results)].latencies, 0.99)
    sustainable = max(len(r.latencies) / r.wall for r in results.values())
    rate = 4 * sustainable
    time.sleep(5)
    before = watch.replicas()
    watch.start()
    outcomes = asyncio.run(open_loop(svc.url, make_request, data, rate, duration_s))
    peak = watch.stop()
    time.sleep(20)  # let queues drain and memory settle
    after = watch.replicas()
    healthy = httpx.get(svc.url + "/healthz", timeout=10).status_code == 200
    ok = [s for status, s, _ in outcomes if status in (200, 422)]
    refused = [(s, ra) for status, s, ra in outcomes if status == 503]
    other = [status for status, _, _ in outcomes if status not in (200, 422, 503)]
    memory = []
    for key in sorted(before):
        memory.append(
            f"| {key.split('#')[0]} | {before[key] / 2**20:.0f} | {peak.get(key, 0) / 2**20:.0f} | "
            f"{after.get(key, 0) / 2**20:.0f} | {'yes' if key in after else 'NO (gone)'} |"
        )
    return {
        "rate": rate,
        "sustainable": sustainable,
        "duration_s": duration_s,
        "sent": len(outcomes),
        "admitted": len(ok),
        "admitted_p50_ms": 1000 * pct(ok, 0.5),
        "admitted_p99_ms": 1000 * pct(ok, 0.99),
        "unloaded_p99_ms": 1000 * unloaded_p99,
        "refused": len(refused),
        "refused_p50_ms": 1000 * pct([s for s, _ in refused], 0.5),
        "refused_p99_ms": 1000 * pct([s for s, _ in refused], 0.99),
        "refused_max_ms": 1000 * max((s for s, _ in refused), default=float("nan")),
        "refused_with_retry_after": sum(1 for _, ra in refused if ra),
        "other_errors": other,
        "healthy_after": healthy,
        "replicas_same": sorted(before) == sorted(after),
        "memory": memory,
    }


def overload_report(o: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"Open-loop arrivals at {o['rate']:.1f} requests/s (4x the sustainable {o['sustainable']:.2f}/s) for {o['duration_s']:.0f} s: "
            f"{o['sent']} sent.",
            "",
            "| what | value |",
            "|---|---|",
            f"| admitted (200/422) | {o['admitted']} |",
            f"| admitted p50 / p99 | {o['admitted_p50_ms']:.0f} / {o['admitted_p99_ms']:.0f} ms |",
            f"| unloaded p99 (concurrency 1) | {o['unloaded_p99_ms']:.0f} ms |",
            f"| admitted p99 / unloaded p99 | {o['admitted_p99_ms'] / o['unloaded_p99_ms']:.2f}x |",
            f"| refused with 503 | {o['refused']} ({o['refused_with_retry_after']} with Retry-After) |",
            f"| 503 latency p50 / p99 / max | {o['refused_p50_ms']:.0f} / {o['refused_p99_ms']:.0f} / {o['refused_max_ms']:.0f} ms |",
            f"| other statuses | {o['other_errors'] or 'none'} |",
            f"| healthy after, same replicas | {o['healthy_after']}, {o['replicas_same']} |",
            "",
            "| replica | RSS before MB | peak MB | 20 s after MB | still running |",
            "|---|---|---|---|---|",
            *o["memory"],
        ]
    )


@contextlib.contextmanager
def rembg_server(python: str):
    """rembg's own server (`rembg s`) on a free port, with the shipped u2netp.onnx: yields (url, pid)."""
    import httpx

    from pipeline.models.registry import get_spec
    from tests.harness import free_port

    port = free_port()
    env = {**os.environ, "U2NET_HOME": str(get_spec("u2netp").onnx.locate().parent), "OMP_NUM_THREADS": str(THREADS)}
    rembg = str(Path(python).parent / "rembg")
    proc = subprocess.Popen(
        [rembg, "s", "--host", "127.0.0.1", "--port", str(port), "--no-ui", "--log_level", "warning"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if httpx.get(url + "/api", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        else:
            raise RuntimeError("rembg's server did not start")
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def machine() -> str:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), platform.processor()
    )
    flags = next((line.split(":", 1)[1].split() for line in open("/proc/cpuinfo") if line.startswith("flags")), [])
    simd = ", ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags) or "none listed"
    gpu = "no GPU"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return f"{os.cpu_count()} CPUs ({cpu}; {simd}), {psutil.virtual_memory().total / 2**30:.0f} GiB, {platform.system()} {platform.machine()}, {gpu}"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3, help="rounds over the images at each concurrency (services take turns)")
    parser.add_argument("--concurrency", default="1,4")
    parser.add_argument("--batch", type=int, default=4, help="the larger batch of the model-alone rows")
    parser.add_argument("--sizes", default=",".join(str(s) for s in SIZES_MP), help="megapixels of the size sweep ('' to skip)")
    parser.add_argument("--overload-s", type=float, default=60, help="seconds of 4x overload (0 to skip)")
    parser.add_argument("--rembg-python", default=None)
    parser.add_argument("--service-only", action="store_true", help="skip the model-alone and in-process rows")
    parser.add_argument(
        "--megapixels", type=float, default=None, help="resize the photos to about this many megapixels (JPEG q90)"
    )
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--sweep-one", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cache-only", action="store_true", help="only the result-cache pass (its own section of --out)")
    args = parser.parse_args()
    if args.sweep_one is not None:
        print(json.dumps(sweep_one(args.sweep_one)))
        return 0
    if args.cache_only:
        return run_cache_pass(args.out)
    data = images(args.images, args.megapixels)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    rows: list[str] = []
    per_stage: dict[str, float] = {}
    if not args.service_only:
        stages = make_stages()
        rows += bench_model(stages, data, (1, args.batch))
        in_process, per_stage = bench_in_process(stages, data)
        rows += in_process
        del stages
    print("\n".join(rows), flush=True)
    sizes = bench_sizes(tuple(float(s) for s in args.sizes.split(",") if s)) if args.sizes else []
    service_rows, stage_rows, memory_rows, overload = bench_service(
        data, concurrencies, args.rounds, args.overload_s, args.rembg_python
    )
    rows += service_rows
    parts = [
        f"Machine: {machine()}; {len(data)} GrabCut images"
        + (f" resized to {args.megapixels:g} MP (JPEG q90)" if args.megapixels else "")
        + f" x {args.rounds} round(s); "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; default settings (serve_config.yaml as shipped)",
        "",
        HEADER,
        *rows,
        "",
        *(
            ["In-process pipeline, mean wall ms per stage: " + ", ".join(f"{k} {v:.1f}" for k, v in per_stage.items()), ""]
            if per_stage
            else []
        ),
        "Per-stage time inside the service (means of its `Server-Timing` header, ms; the overhead is",
        "the total minus the stages: HTTP, Serve routing between replicas, object transfer):",
        "",
        *stage_rows,
        "",
        "Peak resident memory per replica since it started, after the runs at each concurrency (MB, the largest replica of each deployment):",
        "",
        "| load | " + " | ".join(REPLICAS) + " |",
        "|---|" + "---|" * len(REPLICAS),
        *memory_rows,
    ]
    if sizes:
        parts += [
            "",
            "Cost per stage against input size (one JPEG q90 per size, in one process, best of 2):",
            "",
            sizes_report(sizes),
        ]
    if overload:
        parts += ["", overload_report(overload)]
    report = "\n".join(parts) + "\n"
    print(report)
    if args.out:
        write_section(args.out, "bench", report.rstrip("\n"))
    return 0


def run_cache_pass(out: Path | None) -> int:
    """Run :func:`bench_cache` on the first 20 images and write its section of ``out``."""
    report = cache_report(bench_cache(images(CACHE_IMAGES)))
    text = f"## Result cache\n\nMachine: {machine()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\n\n{report}"
    print(text)
    if out:
        write_section(out, "bench-cache", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
