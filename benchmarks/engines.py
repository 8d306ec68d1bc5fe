"""`make bench-engines`: the CPU engines of the shipped U²-Net-p side by side, in one run.

On the GrabCut photos of ../shared/eval, at the model's input size, through the segmenter
(:class:`pipeline.segment.Segmenter`, two threads as the Serve replica has them):

- each engine (onnxruntime, OpenVINO) with a lone image on both threads, and with 2 and 4
  images waiting, which the segmenter runs side by side (one worker per thread, each with its
  share of the threads), and OpenVINO's own throughput mode beside it (two streams of one
  thread, asynchronous infer requests), on the same images;
- rounds interleaved (every row once per round, in turn), so that the load of other work on
  a shared machine falls on every row alike: compare the ratios;
- CPU-seconds per image (the process's CPU time: every thread of the runtime) and images/s;
- the outputs against onnxruntime's on every photo of the evaluation sets: the largest
  probability difference and the mask pixels (probability >= 0.5) that differ;
- OpenVINO's start: compiling the model with an empty cache folder, and from the cache.

    .venv/bin/python benchmarks/engines.py [--images 24] [--rounds 3] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench import machine, write_section  # noqa: E402

THREADS = 2
ENGINES = ("onnxruntime", "openvino")


def model_inputs(limit: int | None, which: str = "grabcut") -> tuple[list[str], np.ndarray]:
    """Photos of the evaluation sets at the model's input size, as the service feeds them."""
    from PIL import Image

    from pipeline import imageio
    from pipeline.evaluation.evalsets import IMAGE_SUFFIXES, default_eval_dir, samples
    from pipeline.models.registry import get_spec

    side = get_spec("u2netp").input_size
    ids, xs = [], []
    for sample in samples(default_eval_dir(), "grabcut" if which == "grabcut" else "all"):
        ids.append(sample.id)
        xs.append(imageio.model_input(sample.rgb, side))
    if which == "all":
        folder = default_eval_dir() / "products-white"
        for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            ids.append(f"products-white/{path.stem}")
            xs.append(imageio.model_input(np.asarray(Image.open(path).convert("RGB")), side))
    return ids[:limit], np.stack(xs[:limit])


def throughput_mode(cache: Path) -> Callable[[np.ndarray], np.ndarray]:
    """OpenVINO's own way to run several images at once: the throughput hint with one stream
    per thread and an asynchronous request per stream (the alternative to the segmenter's
    side-by-side workers)."""
    import openvino as ov

    from pipeline.models.registry import get_spec
    from pipeline.models.weights import verified_packaged_file

    spec = get_spec("u2netp")
    core = ov.Core()
    core.set_property({"CACHE_DIR": str(cache)})
    compiled = core.compile_model(
        core.read_model(verified_packaged_file(spec.onnx).read_bytes()),
        "CPU",
        {
            "INFERENCE_PRECISION_HINT": "f32",
            "PERFORMANCE_HINT": "THROUGHPUT",
            "NUM_STREAMS": THREADS,
            "ENABLE_CPU_PINNING": False,
        },
    )
    queue = ov.AsyncInferQueue(compiled, THREADS)

    def run(batch: np.ndarray) -> np.ndarray:
        x = spec.normalise(batch)
        out = np.empty((len(x), *x.shape[2:]), np.float32)

        def done(request: ov.InferRequest, i: int) -> None:
            out[i] = request.get_output_tensor(0).data[0, 0]

        queue.set_callback(done)
        for i in range(len(x)):
            queue.start_async({0: x[i : i + 1]}, i)
        queue.wait_all()
        return np.clip(out, 0, 1)

    return run


def timing(inputs: np.ndarray, rounds: int, cache: Path) -> list[str]:
    """Every (engine, layout) over the same images, rounds interleaved."""
    from pipeline.segment import Segmenter

    segmenters = {e: Segmenter("u2netp", "cpu", cache, THREADS, engine=e) for e in ENGINES}
    for segmenter in segmenters.values():
        segmenter.warm_up(4)
    cases: dict[tuple[str, int], Callable[[np.ndarray], np.ndarray]] = {}
    for size in (1, 2, 4):
        for name, segmenter in segmenters.items():
            cases[(name, size)] = segmenter.predict
        if size > 1:
            cases[("openvino, throughput hint", size)] = throughput_mode(cache)
    for (_, size), fn in cases.items():
        fn(inputs[:size])  # warm-up
    totals = {key: [0.0, 0.0, 0] for key in cases}
    for _ in range(rounds):
        for (name, size), fn in cases.items():
            wall, cpu = time.perf_counter(), time.process_time()
            n = 0
            for i in range(0, len(inputs) - size + 1, size):
                fn(inputs[i : i + size])
                n += size
            t = totals[(name, size)]
            t[0] += time.perf_counter() - wall
            t[1] += time.process_time() - cpu
            t[2] += n
    rows = [
        "| images waiting | engine | layout | images | images/s | CPU-s/image | CPU against onnxruntime |",
        "|---|---|---|---|---|---|---|",
    ]
    for (name, size), (wall, cpu, n) in totals.items():
        base = totals[("onnxruntime", size)]
        layout = (
            f"one image on {THREADS} threads"
            if size == 1
            else f"{THREADS} streams, async requests"
            if "throughput" in name
            else f"side by side, {THREADS} workers of 1 thread"
        )
        rows.append(
            f"| {size} | {name} | {layout} | {n} | {n / wall:.2f} | {cpu / n:.3f} | {(cpu / n) / (base[1] / base[2]):.2f}x |"
        )
    return rows


def agreement(cache: Path) -> str:
    """OpenVINO's probabilities against onnxruntime's on every photo of the evaluation sets."""
    from pipeline.segment import Segmenter

    ids, inputs = model_inputs(None, "all")
    onnx = Segmenter("u2netp", "cpu", cache, THREADS, engine="onnxruntime")
    ov = Segmenter("u2netp", "cpu", cache, THREADS, engine="openvino")
    worst, worst_pixels, differing = 0.0, 0, 0
    for i in range(0, len(inputs), 2):  # pairs side by side, a lone image at the end if odd
        a, b = onnx.predict(inputs[i : i + 2]), ov.predict(inputs[i : i + 2])
        worst = max(worst, float(np.abs(a - b).max()))
        pixels = ((a >= 0.5) != (b >= 0.5)).reshape(len(a), -1).sum(axis=1)
        worst_pixels = max(worst_pixels, int(pixels.max()))
        differing += int((pixels > 0).sum())
    side = inputs.shape[1]
    return (
        f"Outputs on all {len(ids)} photos of the evaluation sets (GrabCut, composites, product shots): "
        f"largest probability difference {worst:.1e}; masks (>= 0.5) differing on {differing} photos, "
        f"by at most {worst_pixels} of {side * side} pixels."
    )


def start_up() -> str:
    """Constructing the OpenVINO engine and its first forward, empty cache and from the cache."""
    from pipeline.segment import Segmenter

    times = []
    with tempfile.TemporaryDirectory(prefix="ov-cache-") as folder:
        for _ in range(2):
            t = time.perf_counter()
            Segmenter("u2netp", "cpu", Path(folder), THREADS, engine="openvino").warm_up(THREADS)
            times.append(time.perf_counter() - t)
    return f"OpenVINO engine built and warmed up ({THREADS} layouts): {times[0]:.2f} s with an empty cache, {times[1]:.2f} s from the cache."


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    _, inputs = model_inputs(args.images)
    with tempfile.TemporaryDirectory(prefix="bench-engines-") as cache:
        startup = start_up()
        rows = timing(inputs, args.rounds, Path(cache))
        agree = agreement(Path(cache))
    import onnxruntime
    import openvino

    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = "\n".join(
        [
            f"`benchmarks/engines.py --images {args.images} --rounds {args.rounds}`, {stamp}; {machine()}; "
            f"onnxruntime {onnxruntime.__version__}, OpenVINO {openvino.__version__.split('-')[0]}; "
            f"{len(inputs)} GrabCut photos x {args.rounds} interleaved rounds, u2netp at 320x320 in float32:",
            "",
            *rows,
            "",
            agree,
            startup,
        ]
    )
    print(text)
    if args.out:
        write_section(args.out, "engines", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
