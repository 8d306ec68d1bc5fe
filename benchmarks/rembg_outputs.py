"""Write rembg's cutouts of the evaluation samples, for `cutout eval --predictions`.

Run with the python of a throwaway virtualenv that has `rembg` installed, and U2NET_HOME
pointing at the folder of the shipped u2netp.onnx (the same file our service uses), so rembg
finds the model and downloads nothing:

    U2NET_HOME=$(dirname $(.venv/bin/python -c 'from pipeline.models.registry import get_spec; print(get_spec("u2netp").onnx.locate())')) \\
      /tmp/rembg-venv/bin/python benchmarks/rembg_outputs.py OUT_DIR [--alpha-matting]

Outputs are uncropped RGBA PNGs named like the sample ids (`/` replaced by `__`). With
`--images FILE...` it cuts out those files instead, each saved as `<stem>.png`
(benchmarks/pictures.py uses this). On the evaluation samples it prints the CPU time its
`remove` calls took per image (process time: every thread of the process, not wall time), for
docs/quality.md's cost column.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image  # noqa: E402
from rembg import new_session, remove  # noqa: E402

from pipeline.evaluation.evalsets import default_eval_dir, samples  # noqa: E402  (numpy + Pillow only)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--alpha-matting", action="store_true")
    parser.add_argument("--images", type=Path, nargs="*", default=None)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    session = new_session("u2netp")
    if args.images:
        for path in args.images:
            cut = remove(Image.open(path).convert("RGB"), session=session, alpha_matting=args.alpha_matting)
            cut.convert("RGBA").save(args.out / (path.stem + ".png"))
        return 0
    cpu: dict[str, list[float]] = {}
    for sample in samples(default_eval_dir()):
        started = time.process_time()
        cut = remove(Image.fromarray(sample.rgb), session=session, alpha_matting=args.alpha_matting)
        cpu.setdefault(sample.id.split("/")[0], []).append(time.process_time() - started)
        cut.convert("RGBA").save(args.out / (sample.id.replace("/", "__") + ".png"))
    for subset, seconds in cpu.items():
        print(f"{subset}: {len(seconds)} images, {sum(seconds) / len(seconds):.3f} CPU-s/image")
    return 0


if __name__ == "__main__":
    sys.exit(main())
