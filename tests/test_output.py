"""The output options (pipeline/output.py and their parsing in pipeline/request.py), on pixels."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipeline import imageio, output
from pipeline.errors import CutoutError
from pipeline.request import Frame, OutputOptions, parse_output

RED = (200, 30, 40)


def product(width: int = 30, height: int = 20) -> np.ndarray:
    rgba = np.zeros((height, width, 4), np.uint8)
    rgba[...] = (*RED, 255)
    return rgba


def decode(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def render(rgba: np.ndarray, **fields) -> output.Rendered:
    return output.render(rgba, parse_output(fields), 2)


def test_no_options_parse_to_the_default():
    assert parse_output({}).is_default and parse_output({"format": "png", "channels": "rgba"}).is_default


def test_margin_in_pixels_and_percent_of_the_box():
    im = decode(render(product(), crop_margin="12px").data)
    assert im.size == (54, 44)
    alpha = np.asarray(im.getchannel("A"))
    assert alpha[12:32, 12:42].min() == 255 and alpha.sum() == 255 * 600
    assert decode(render(product(), crop_margin="10%").data).size == (36, 24)
    assert decode(render(product(), crop_margin=0).data).size == (30, 20)


def test_canvas_fits_without_enlarging_unless_asked():
    place = output.layout(30, 20, parse_output({"canvas": {"width": 200, "height": 100}}))
    assert (place.left, place.top, place.width, place.height, place.scale) == (85, 40, 30, 20, 1.0)
    place = output.layout(30, 20, parse_output({"canvas": {"width": 200, "height": 100, "upscale": True}}))
    assert (place.width, place.height) == (150, 100) and place.left == 25
    place = output.layout(300, 200, parse_output({"canvas": {"width": 100, "height": 100, "padding": 10}}))
    assert (place.width, place.height, place.left, place.top) == (80, 53, 10, 23)  # scaled down to the free area


def test_canvas_bottom_rests_on_the_padding():
    place = output.layout(30, 20, parse_output({"canvas": {"width": 100, "height": 100, "position": "bottom", "padding": 5}}))
    assert place.top + place.height == 95 and place.left == 35


def test_margin_counts_inside_the_canvas_fit():
    place = output.layout(100, 100, parse_output({"canvas": {"width": 100, "height": 100}, "crop_margin": "50%"}))
    assert (place.width, place.height, place.left, place.top) == (50, 50, 25, 25)


def test_downscaling_keeps_transparent_pixels_black_and_edges_unfringed():
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[:, :20] = (255, 255, 255, 255)  # white product, transparent (RGB 0) right half
    small = output.resize_rgba(rgba, 20, 20)
    edge = small[:, 9:11]
    assert (edge[..., :3][edge[..., 3] > 0] == 255).all()  # premultiplied: no grey fringe from the black
    assert (small[small[..., 3] == 0, :3] == 0).all()


def test_bg_color_jpeg_white_and_alpha_only():
    im = decode(render(product(), bg_color="#0f0", crop_margin="2px").data)
    assert im.mode == "RGBA" and im.getpixel((0, 0)) == (0, 255, 0, 255) and im.getpixel((10, 10)) == (*RED, 255)
    half = decode(render(product(), bg_color="#00ff0080", crop_margin="2px").data)
    assert half.getpixel((0, 0)) == (0, 255, 0, 128)
    jpg = decode(render(product(), format="jpg", crop_margin="2px").data)
    assert jpg.format == "JPEG" and min(jpg.getpixel((0, 0))) >= 240  # white where nothing was given
    mask = decode(render(product(), channels="alpha", crop_margin="2px").data)
    assert mask.mode == "L" and np.asarray(mask)[2:22, 2:32].min() == 255 and np.asarray(mask)[0].max() == 0


def test_webp_decodes_with_alpha():
    im = decode(render(product(), format="webp", crop_margin="3px").data)
    assert im.format == "WEBP" and im.mode == "RGBA"
    assert im.getpixel((0, 0))[3] == 0 and im.getpixel((15, 10))[3] == 255


def test_max_size_only_downscales():
    assert decode(render(product(), max_size=15).data).size == (15, 10)
    assert decode(render(product(), max_size=100).data).size == (30, 20)


def test_frame_keeps_the_source_grid_or_centres_and_scales():
    rgba = product()
    options = OutputOptions(frame=Frame())
    pixels, place = output.compose_output(rgba, options, (5, 7), (100, 50))
    assert pixels.shape == (50, 100, 4) and (place.left, place.top) == (5, 7)
    assert pixels[7:27, 5:35, 3].min() == 255 and pixels[..., 3].sum() == 255 * 600
    _, place = output.compose_output(rgba, OutputOptions(frame=Frame("center", 0.5)), (5, 7), (100, 50))
    assert (place.width, place.height) == (38, 25) and (place.left, place.top) == (31, 12)
    _, place = output.compose_output(rgba, OutputOptions(frame=Frame(), max_pixels=1250), (10, 10), (100, 50))
    assert (place.output_width, place.output_height) == (50, 25)


def test_default_png_is_todays_encoder():
    rgba = product()
    assert output.encode(rgba, "png", 2) == imageio.encode_png(rgba, 2)


@pytest.mark.parametrize(
    ("fields", "parameter"),
    [
        ({"crop_margin": "12"}, "crop_margin"),
        ({"crop_margin": "2049px"}, "crop_margin"),
        ({"crop_margin": "101%"}, "crop_margin"),
        ({"crop_margin": True}, "crop_margin"),
        ({"canvas": [1, 2]}, "canvas"),
        ({"canvas": {"width": 10}}, "canvas.height"),
        ({"canvas": {"width": 8193, "height": 10}}, "canvas.width"),
        ({"canvas": {"width": 10, "height": 10, "padding": 5}}, "canvas.padding"),
        ({"canvas": {"width": 10, "height": 10, "position": "left"}}, "canvas.position"),
        ({"canvas": {"width": 10, "height": 10, "upscale": "yes"}}, "canvas.upscale"),
        ({"canvas": {"width": 10, "height": 10, "colour": 1}}, "canvas.colour"),
        ({"bg_color": "white"}, "bg_color"),
        ({"bg_color": "#12345"}, "bg_color"),
        ({"format": "gif"}, "format"),
        ({"channels": "rgb"}, "channels"),
        ({"channels": "alpha", "bg_color": "#fff"}, "bg_color"),
        ({"max_size": 0}, "max_size"),
        ({"max_size": 1.5}, "max_size"),
        ({"max_size": 100, "canvas": {"width": 10, "height": 10}}, "max_size"),
    ],
)
def test_invalid_values_and_combinations_name_the_field(fields, parameter):
    with pytest.raises(CutoutError) as err:
        parse_output(fields)
    assert err.value.status == 400 and err.value.parameter == parameter


def test_a_margin_that_makes_the_output_huge_is_400():
    with pytest.raises(CutoutError) as err:
        output.layout(8000, 8000, parse_output({"crop_margin": "100%"}))
    assert err.value.parameter == "crop_margin"
