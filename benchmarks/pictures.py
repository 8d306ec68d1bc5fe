"""Side-by-side pictures for docs/quality.md: input, our cutout, rembg's, on a checkerboard.

The photos are ones that may be published with this repository (the evaluation photos of
../shared/eval may not): CC0 or public-domain images bundled in the scikit-image wheel. Get
them without installing anything into the project:

    pip download --no-deps -d /tmp/skimage scikit-image
    unzip -o -d /tmp/skimage /tmp/skimage/scikit_image-*.whl 'skimage/data/*'

then cut them out with rembg (throwaway venv, the same u2netp.onnx, see rembg_outputs.py)
and draw the pictures:

    U2NET_HOME=... /tmp/rembg-venv/bin/python benchmarks/rembg_outputs.py /tmp/rembg-pics --images /tmp/skimage/skimage/data/{coffee.png,chelsea.png,rocket.jpg}
    U2NET_HOME=... /tmp/rembg-venv/bin/python benchmarks/rembg_outputs.py /tmp/rembg-pics-am --alpha-matting --images ...
    .venv/bin/python benchmarks/pictures.py docs/pictures /tmp/skimage/skimage/data/{coffee.png,chelsea.png,rocket.jpg} \\
        --other rembg=/tmp/rembg-pics --other rembg+alpha-matting=/tmp/rembg-pics-am

Ours is the service's default configuration (settings as shipped), shown uncropped like rembg's.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.evaluation import evaluate  # noqa: E402
from pipeline.evaluation.evalsets import Sample  # noqa: E402
from pipeline.segment import segmenter_from_settings  # noqa: E402
from pipeline.settings import load_settings  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("images", type=Path, nargs="+")
    parser.add_argument("--other", action="append", default=[], help="NAME=DIR of another tool's <stem>.png cutouts")
    args = parser.parse_args()
    settings = load_settings({"data_dir": tempfile.mkdtemp(prefix="pictures-")}, environ={})
    segmenter = segmenter_from_settings(settings, cpus=2)
    config = evaluate.Config.from_settings("default", settings)
    args.out.mkdir(parents=True, exist_ok=True)
    for path in args.images:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        sample = Sample(path.stem, rgb, np.zeros(rgb.shape[:2], np.uint8))
        alpha, colours = evaluate.run_pipeline(segmenter, sample, config)
        panels = [(colours, alpha)]
        for spec in args.other:
            folder = Path(spec.split("=", 1)[1])
            out = np.asarray(Image.open(folder / f"{path.stem}.png").convert("RGBA"))
            panels.append((out[..., :3], out[..., 3]))
        labels = ["input", "ours (default)"] + [spec.split("=", 1)[0] for spec in args.other]
        evaluate.side_by_side(sample, panels, height=300, labels=labels).save(args.out / f"{path.stem}.jpg", quality=85)
        print(args.out / f"{path.stem}.jpg")
    return 0


if __name__ == "__main__":
    sys.exit(main())
