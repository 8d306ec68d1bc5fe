"""Example pictures of the output options for docs/api.md (docs/pictures/options/).

The input is the photo panel of docs/pictures/coffee.jpg (a CC0 photo from scikit-image's
data, see benchmarks/pictures.py). It runs through the pipeline in this process as the service
runs it (settings as shipped, CPU), and each option set is rendered by pipeline/output.py:

    .venv/bin/python benchmarks/option_pictures.py docs/pictures/options
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline import output  # noqa: E402
from pipeline.request import Frame, OutputOptions, parse_output  # noqa: E402

PANEL_GAP = 8
PANELS = 4
CAPTION = 22
# file name -> the request's output fields (docs/api.md shows each next to its request)
EXAMPLES: dict[str, dict] = {
    "input.jpg": {},
    "default.png": {"max_size": 240},
    "crop_margin.png": {"crop_margin": "10%", "max_size": 240},
    "canvas.png": {"canvas": {"width": 240, "height": 240, "padding": 12}},
    "canvas_bottom.png": {"canvas": {"width": 240, "height": 240, "position": "bottom", "padding": 12}},
    "bg_color.png": {"bg_color": "#e8f0ff", "crop_margin": "5%", "max_size": 240},
    "format_jpg.jpg": {"format": "jpg", "max_size": 240},
    "format_webp.webp": {"format": "webp", "max_size": 240},
    "channels_alpha.png": {"channels": "alpha", "max_size": 240},
    "max_size.png": {"max_size": 120},
    "removebg_uncropped.png": {},
}


def input_photo() -> bytes:
    """The input panel of docs/pictures/coffee.jpg, as JPEG bytes."""
    sheet = Image.open(ROOT / "docs" / "pictures" / "coffee.jpg").convert("RGB")
    width = (sheet.width - PANEL_GAP * (PANELS - 1)) // PANELS
    buffer = io.BytesIO()
    sheet.crop((0, CAPTION, width, sheet.height)).save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    from pipeline.segment import Segmenter
    from pipeline.service import CutoutOptions, Finisher, ImageLoader
    from pipeline.settings import load_settings

    settings = load_settings({"data_dir": tempfile.mkdtemp(prefix="pictures-")}, environ={})
    segmenter = Segmenter(settings.segmenter_model, "cpu", settings.model_cache_dir, 2)
    raw = input_photo()
    loaded = ImageLoader(settings).decode(raw, "file", False)
    probability = segmenter.predict(loaded.model_input[None])[0]
    rgba, crop = Finisher(settings).compose(loaded, probability, CutoutOptions("docs", None, False, False, "docs"))
    args.out.mkdir(parents=True, exist_ok=True)
    source = (loaded.image.width, loaded.image.height)
    for name, fields in EXAMPLES.items():
        if name == "input.jpg":
            (args.out / name).write_bytes(raw)
            continue
        options = parse_output(fields)
        if name == "removebg_uncropped.png":
            options = OutputOptions(frame=Frame(), max_size=240)
        rendered = output.render(rgba, options, settings.png_compress_level, (crop.left, crop.top), source)
        (args.out / name).write_bytes(rendered.data)
        print(args.out / name, rendered.placement.as_dict())
    return 0


if __name__ == "__main__":
    sys.exit(main())
