"""Property tests: random JSON and random or mutated image bytes only ever give a result or a
4xx of docs/api.md, never another exception (which would be a 500), and never hang."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.errors import CutoutError
from pipeline.imageio import decode_base64, decode_image
from pipeline.request import parse_body
from tests.images import encode, product_photo, rgba_with_alpha

SEEDS = [
    encode(product_photo(48, 32), "JPEG", quality=90),
    encode(product_photo(48, 32), "PNG"),
    encode(product_photo(48, 32), "WEBP", quality=80),
    encode(rgba_with_alpha()[0], "PNG"),
    encode(product_photo(48, 32).convert("P"), "PNG", transparency=3),
]
ALLOWED = {400, 413, 415}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)
fields = st.sampled_from(["sku", "image_url", "file", "force_rmbg", "preserve_alpha", "content_moderation", "other"])


@settings(max_examples=300, deadline=1000, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(fields, json_values, max_size=6) | json_values)
def test_random_json_bodies(body):
    try:
        parse_body(json.dumps(body).encode())
    except CutoutError as exc:
        assert exc.status == 400


@settings(max_examples=200, deadline=1000)
@given(st.binary(max_size=2048))
def test_random_bytes_as_body_and_base64(raw):
    for call in (lambda: parse_body(raw), lambda: decode_base64(raw.decode("latin-1"), 10_000)):
        try:
            call()
        except CutoutError as exc:
            assert exc.status in ALLOWED


@settings(max_examples=400, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(SEEDS),
    st.lists(st.tuples(st.integers(min_value=0, max_value=10_000), st.integers(min_value=0, max_value=255)), max_size=8),
    st.integers(min_value=0, max_value=10_000),
)
def test_mutated_images_decode_or_give_a_4xx(seed, flips, cut):
    data = bytearray(seed)
    for position, value in flips:
        data[position % len(data)] = value
    data = bytes(data[: max(1, len(data) - cut % len(data))])
    try:
        image = decode_image(data, "file", 50_000_000)
    except CutoutError as exc:
        assert exc.status in ALLOWED, exc
    else:
        assert image.rgb.ndim == 3 and image.rgb.shape[2] == 3


@settings(max_examples=150, deadline=1000)
@given(st.binary(min_size=0, max_size=512))
def test_random_bytes_decode_or_give_a_4xx(raw):
    for data in (raw, b"\x89PNG\r\n\x1a\n" + raw, b"\xff\xd8\xff" + raw, b"RIFF\x00\x00\x00\x00WEBP" + raw):
        try:
            decode_image(data, "file", 50_000_000)
        except CutoutError as exc:
            assert exc.status in ALLOWED
