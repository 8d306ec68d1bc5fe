"""U²-Net-p in PyTorch: shapes, rembg's preprocessing, ONNX import equality, weights cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.models import u2netp_weights
from pipeline.models.u2netp import INPUT_SIZE, MEAN, STD, U2NetP, preprocess
from pipeline.models.u2netp_weights import U2NETP_ONNX_SHA256, load_u2netp, sha256_of, shipped_onnx_path

EVAL = Path(__file__).resolve().parents[1].parent / "shared" / "eval"
# A fruit (PNG), a person, a natural scene, a soft toy and a thin object (upper-case suffix).
PHOTOS = ["banana1.png", "person1.jpg", "106024.jpg", "teddy.jpg", "scissors.JPG"]


def rembg_normalize(im: np.ndarray) -> np.ndarray:
    """rembg's ``BaseSession.normalize`` after the resize, written out per image as rembg does."""
    im_ary = im / np.max(im)
    tmp = np.zeros((im_ary.shape[0], im_ary.shape[1], 3))
    for c in range(3):
        tmp[:, :, c] = (im_ary[:, :, c] - MEAN[c]) / STD[c]
    return tmp.transpose((2, 0, 1)).astype(np.float32)


def test_random_weights_forward_shapes_and_range():
    torch.manual_seed(0)
    model = U2NetP().eval()
    with torch.inference_mode():
        y = model(torch.randn(2, 3, INPUT_SIZE, INPUT_SIZE))
        outputs = model.forward_all(torch.randn(1, 3, 200, 300))  # 200 and 300 are not multiples of 32
    assert y.shape == (2, 1, INPUT_SIZE, INPUT_SIZE) and y.dtype == torch.float32
    assert len(outputs) == 7
    for out in (y, *outputs):
        assert not torch.isnan(out).any()
        assert out.min() >= 0 and out.max() <= 1
    assert all(out.shape == (1, 1, 200, 300) for out in outputs)


def test_preprocess_matches_rembg_and_never_nan():
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (3, 16, 24, 3), dtype=np.uint8)
    batch[1] //= 3  # a dark image: its own maximum is well below 255
    x = preprocess(batch)
    assert x.dtype == torch.float32 and x.shape == (3, 3, 16, 24)
    for i in range(len(batch)):
        np.testing.assert_array_equal(x[i].numpy(), rembg_normalize(batch[i]))
    black = preprocess(np.zeros((2, 8, 8, 3), np.uint8)).numpy()
    assert np.isfinite(black).all()
    np.testing.assert_allclose(black[:, :, 0, 0], np.tile(-np.array(MEAN) / np.array(STD), (2, 1)), rtol=1e-6)


def test_torch_model_equals_onnxruntime_on_real_photos(tmp_path, record_property):
    images = EVAL / "grabcut" / "images"
    if not images.is_dir():
        pytest.skip(f"the shared eval folder is absent ({EVAL}): no real photos to compare on")
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(shipped_onnx_path()), options, providers=["CPUExecutionProvider"])
    model = load_u2netp(tmp_path)
    worst = {}
    for name in PHOTOS:
        with Image.open(images / name) as im:
            rgb = im.convert("RGB").resize((INPUT_SIZE, INPUT_SIZE), Image.LANCZOS)
        x = preprocess(np.asarray(rgb)[None])
        reference = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        with torch.inference_mode():
            ours = model.forward_all(x)
        assert len(ours) == len(reference) == 7
        diffs = [float(np.abs(a.numpy() - b).max()) for a, b in zip(ours, reference)]
        worst[name] = max(diffs)
        for k, diff in enumerate(diffs):
            assert diff <= 1e-4, f"{name}: output d{k} differs from onnxruntime by {diff:.3g}"
    record_property("max_abs_diff", worst)


def test_weights_cached_once_reused_and_hash_checked(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    load_u2netp(cache)
    files = sorted(p.name for p in cache.iterdir())
    assert files == [f"u2netp-{U2NETP_ONNX_SHA256[:12]}.safetensors"]  # no temporary left behind
    cached = cache / files[0]
    before = os.stat(cached)

    def must_not_convert(path):
        raise AssertionError(f"converted {path} again instead of reading the cache")

    monkeypatch.setattr(u2netp_weights, "state_dict_from_onnx", must_not_convert)
    model = load_u2netp(cache)
    after = os.stat(cached)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert not model.training

    bad = tmp_path / "u2netp.onnx"
    bad.write_bytes(shipped_onnx_path().read_bytes() + b"\0")
    actual = sha256_of(bad)
    with pytest.raises(ValueError, match=f"expected {U2NETP_ONNX_SHA256}, got {actual}"):
        load_u2netp(tmp_path / "other", onnx_path=bad)
    assert not (tmp_path / "other").exists()
