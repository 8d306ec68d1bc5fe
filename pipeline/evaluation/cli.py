"""``cutout eval``: the quality of what the service runs, scored on ``../shared/eval``.

The segmenter is the one the settings describe, built by the factory the Serve replica uses
(:func:`pipeline.segment.segmenter_from_settings`). Only argparse is imported until the
command runs, so that the other ``cutout`` commands stay light.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.evaluation.evaluate import Config
    from pipeline.segment import Segmenter
    from pipeline.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``cutout eval``."""
    parser.add_argument("--eval-dir", type=Path, default=None, help="default: ../shared/eval beside the checkout")
    parser.add_argument("--set", choices=("grabcut", "composites", "all"), default="all")
    parser.add_argument(
        "--predictions", action="append", default=[], metavar="NAME=DIR", help="score another tool's RGBA outputs"
    )
    parser.add_argument(
        "--configs", default="", metavar="NAME,...", help="only these configurations (default: all of evaluate.CONFIGS)"
    )
    parser.add_argument("--limit", type=int, default=0, help="at most this many images per set (0: all)")
    parser.add_argument(
        "--pictures", type=Path, default=None, help="write side-by-side pictures (input | ours | predictions) here"
    )
    parser.add_argument(
        "--picture-ids",
        default="grabcut/llama,grabcut/flower,grabcut/teddy,composite/lemur_cutout+beach,composite/shoe_tilt_2+0002",
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Score the pipeline that ``settings`` describe; prints markdown tables. Returns the exit code."""
    import itertools

    from pipeline.evaluation import evalsets, evaluate
    from pipeline.segment import segmenter_from_settings

    root = args.eval_dir or evalsets.default_eval_dir()
    if not root.is_dir():
        print(f"cutout: no evaluation folder at {root}", file=sys.stderr)
        return 2
    try:
        segmenter = segmenter_from_settings(settings)
    except ValueError as exc:
        print(f"cutout: {exc}", file=sys.stderr)
        return 2
    sets = ("grabcut", "composites") if args.set == "all" else (args.set,)
    samples = itertools.chain.from_iterable(itertools.islice(evalsets.samples(root, s), args.limit or None) for s in sets)
    predictions = dict(p.split("=", 1) for p in args.predictions)
    if args.pictures:
        _pictures(args, root, segmenter, evaluate.Config.from_settings("default", settings), predictions)
    configs = evaluate.CONFIGS
    if args.configs:
        wanted = [name.strip() for name in args.configs.split(",") if name.strip()]
        known = {c.name: c for c in evaluate.CONFIGS}
        unknown = [name for name in wanted if name not in known]
        if unknown:
            print(f"cutout: unknown configuration {unknown[0]!r}; known: {', '.join(known)}", file=sys.stderr)
            return 2
        configs = tuple(known[name] for name in wanted)
    segmenter.warm_up(2)  # sessions and thread teams at their steady state (flip runs pairs)
    if any(c.matte for c in configs):
        from pipeline import matting

        matting.warm_up()  # pymatting's kernels compiled or loaded before the clock runs
    results = evaluate.evaluate(
        segmenter,
        samples,
        configs,
        predictions={k: Path(v) for k, v in predictions.items()},
        progress=lambda sid: print(f"  {sid}", file=sys.stderr),
    )
    print(
        f"model: {segmenter.name} ({segmenter.engine} on {settings.segmenter_device}, {settings.segmenter_dtype}, "
        f"{segmenter.input_size} px, {segmenter.threads} threads)\n"
    )
    print(evaluate.report(results))
    return 0


def _pictures(args: argparse.Namespace, root: Path, segmenter: Segmenter, config: Config, predictions: dict[str, str]) -> None:
    import numpy as np
    from PIL import Image

    from pipeline.evaluation import evalsets, evaluate

    wanted = set(args.picture_ids.split(","))
    args.pictures.mkdir(parents=True, exist_ok=True)
    for sample in evalsets.samples(root):
        if sample.id not in wanted:
            continue
        alpha, rgb = evaluate.run_pipeline(segmenter, sample, config)
        panels = [(rgb, alpha)]
        for folder in predictions.values():
            out = np.asarray(Image.open(Path(folder) / (sample.id.replace("/", "__") + ".png")).convert("RGBA"))
            panels.append((out[..., :3], out[..., 3]))
        name = sample.id.replace("/", "__") + ".jpg"
        evaluate.side_by_side(sample, panels).save(args.pictures / name, quality=90)
