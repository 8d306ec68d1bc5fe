"""BiRefNet in PyTorch: checkpoint layout, loading, and equality with the reference code.

The reference is ``models/birefnet.py`` of ZhengPeng7/BiRefNet at ``REFERENCE_COMMIT``, built
with its ``config.py`` defaults (the released general model's settings) and, for the lite
variant, with the backbone switched to ``swin_v1_t``. It is not available in CI, so facts
recorded from it live in ``tests/data`` for each variant: the key/shape list of its state
dict (``birefnet_<variant>_keys.json``, in its order) and its float32 outputs for the
weights of ``tests.deterministic.deterministic_state`` and the input of
:func:`deterministic_input` (``birefnet_<variant>_expected.npz``).

When recorded, our network matched the reference to 1e-13 in float64 on the same weights and
input, so the float32 tolerances below only absorb rounding: the probabilities agreed within
1.5e-5 (3e-5 with channels-last tensors), the logits within 1.4e-4 (float32 itself is
about 5e-4 away from the float64 logits of either implementation).

The reference changed the order of the decoder's image patches in commit 5198d3f; the
published weights need the order before it (``patch_order="legacy"``). Its parent,
``LEGACY_COMMIT``, built the same way for Swin-T, gave ``birefnet_swin_t_legacy_expected.npz``
(logits only, for the smaller ``LEGACY_INPUT_SHAPE``; the encoder does not depend on the
order). There our legacy order matched it within 5.2e-14 in float64 and 4.1e-6 in float32
probabilities (2.2e-5 in logits); the current order was 0.67 away in probabilities.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.models.birefnet import (
    BiRefNet,
    build_birefnet,
    image_patches,
    map_published_keys,
)
from pipeline.models.registry import get_spec
from pipeline.models.weights import WeightsError, load_model
from tests.deterministic import deterministic_state

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DATA = Path(__file__).resolve().parent / "data"
REFERENCE_COMMIT = "25cb9309bacf3dde954e4584594e16e142c51de5"
LEGACY_COMMIT = "e65bfa0514c13dd2994157fc844337ea7674b991"  # parent of 5198d3f
VARIANTS = ("swin_l", "swin_t")
INPUT_SEED = 1
# 224x160: Swin windows are padded on both axes at every stage (window 12 and 7), patch
# merging pads odd sizes (7x5 -> 4x3 in the half-size pass), and the decoder's patches are
# non-square.
INPUT_SHAPE = (1, 3, 224, 160)
# 96x64: non-square patches (3x2 at the deepest level) at a fraction of the cost.
LEGACY_INPUT_SHAPE = (1, 3, 96, 64)


def fill_description(shape: tuple[int, ...]) -> str:
    """The stored description of the weights and the input of shape ``shape``."""
    return (
        "tests.deterministic.deterministic_state(reference.state_dict(), seed=0): one "
        "torch.Generator seeded with 0 (CPU), state-dict keys visited in sorted() order, one draw "
        "per floating tensor: keys ending 'weight' with 2+ dims randn*sqrt(2/fan_in) with fan_in "
        "the product of all dims but the first; 1-D keys ending 'weight' (LayerNorm, BatchNorm) "
        "1+0.1*randn; keys ending 'running_var' 1+0.5*rand; keys ending "
        "'relative_position_bias_table' randn; every other floating tensor 0.05*randn; integer "
        "tensors (num_batches_tracked, relative_position_index) kept. Input: torch.Generator "
        f"seeded with 1, randn({','.join(map(str, shape))}), float32, eval mode, torch.set_num_threads(1)."
    )


FILL_DESCRIPTION = fill_description(INPUT_SHAPE)
LEGACY_FILL_DESCRIPTION = fill_description(LEGACY_INPUT_SHAPE)
PROB_TOLERANCE = 1e-4
LOGIT_TOLERANCE = 1e-3
FEATURE_TOLERANCE = 1e-4


def deterministic_input(shape: tuple[int, ...] = INPUT_SHAPE) -> torch.Tensor:
    """The input the stored reference outputs were computed from."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(INPUT_SEED))


def feature_summary(features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """What is stored of the decoder's inputs ``x1`` ... ``x4``: channel mean and std maps."""
    summary = {}
    for i, f in enumerate(features, start=1):
        summary[f"x{i}_mean"] = f.mean(1)
        summary[f"x{i}_std"] = f.std(1)
    return summary


def keys_and_shapes(net: torch.nn.Module) -> list[list]:
    return [[k, list(v.shape)] for k, v in net.state_dict().items()]


@pytest.fixture(scope="module")
def lite() -> BiRefNet:
    torch.manual_seed(0)
    return BiRefNet("swin_t").eval()


def test_the_records_feed_the_weights_as_the_reference_does():
    # the reference's config.py: 1024 x 1024, [0, 1] pixels, ImageNet mean and std
    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    for name in ("birefnet-general", "birefnet-lite", "rmbg-2.0"):
        spec = get_spec(name)
        assert (spec.input_size, (spec.mean, spec.std), spec.normalisation) == (1024, imagenet, "unit")


def test_registry_builds_each_variant_and_refuses_an_unknown_one():
    with torch.device("meta"):  # shapes only, no 220M-parameter allocation
        built = {name: get_spec(name).build() for name in ("birefnet-general", "rmbg-2.0", "birefnet-lite")}
    assert {name: net.variant for name, net in built.items()} == {
        "birefnet-general": "swin_l",
        "rmbg-2.0": "swin_l",
        "birefnet-lite": "swin_t",
    }
    # Every published weights set predates the reference's commit 5198d3f (see the registry).
    assert {net.patch_order for net in built.values()} == {"legacy"}
    assert all(net.decoder.patch_order == "legacy" for net in built.values())
    with pytest.raises(ValueError, match="swin_b"):
        build_birefnet("swin_b")
    with pytest.raises(ValueError, match="'newest'.*current, legacy"):
        build_birefnet("swin_t", patch_order="newest")


@pytest.mark.parametrize(
    "order, channel_of",
    [
        ("current", lambda c, row, col, channels, rows, cols: c * rows * cols + row * cols + col),
        ("legacy", lambda c, row, col, channels, rows, cols: (col * rows + row) * channels + c),
    ],
)
def test_image_patches_stack_each_patch_where_its_order_says(order, channel_of):
    channels, rows, cols, h, w = 3, 2, 4, 3, 5  # rows != cols tells row from column
    image = torch.arange(2 * channels * rows * h * cols * w, dtype=torch.float32)
    image = image.reshape(2, channels, rows * h, cols * w)
    stacked = image_patches(image, (h, w), order)
    assert stacked.shape == (2, channels * rows * cols, h, w)
    for c in range(channels):
        for row in range(rows):
            for col in range(cols):
                patch = image[:, c, row * h : (row + 1) * h, col * w : (col + 1) * w]
                assert torch.equal(stacked[:, channel_of(c, row, col, channels, rows, cols)], patch), (c, row, col)


@pytest.mark.parametrize("variant", VARIANTS)
def test_state_dict_keys_and_shapes_equal_the_reference(variant):
    recorded = json.loads((DATA / f"birefnet_{variant}_keys.json").read_text())
    assert (recorded["reference"]["commit"], recorded["variant"]) == (REFERENCE_COMMIT, variant)
    with torch.device("meta"):
        net = BiRefNet(variant)
    assert keys_and_shapes(net) == recorded["keys"]


def test_prefixed_published_checkpoints_load_strictly(lite):
    state = lite.state_dict()
    for prefix in ("module.", "_orig_mod.", "module._orig_mod.", "_orig_mod.module."):
        mapped = map_published_keys({prefix + k: v for k, v in state.items()})
        assert list(mapped) == list(state)
        assert all(mapped[k] is state[k] for k in state)
    again = BiRefNet("swin_t")
    again.load_state_dict(map_published_keys({"module._orig_mod." + k: v for k, v in state.items()}), strict=True)
    assert map_published_keys(state) == state  # an unprefixed checkpoint is left as it is


@pytest.mark.parametrize("variant", VARIANTS)
def test_deterministic_weights_reproduce_the_reference_outputs(variant):
    expected = np.load(DATA / f"birefnet_{variant}_expected.npz")
    assert str(expected["fill"]) == FILL_DESCRIPTION
    assert str(expected["reference"]) == f"ZhengPeng7/BiRefNet@{REFERENCE_COMMIT}"
    net = BiRefNet(variant).eval()
    net.load_state_dict(deterministic_state(net.state_dict()), strict=True)
    x = deterministic_input()
    with torch.inference_mode():  # what forward() runs, once (Swin-L takes seconds per pass)
        features = net.encode(x)
        logits = net.decoder(x, features)
    probs = torch.sigmoid(logits)
    summary = feature_summary(features)
    reference_logits = torch.from_numpy(expected["logits"])
    diff = float((probs - torch.sigmoid(reference_logits)).abs().max())
    assert diff <= PROB_TOLERANCE, f"probabilities: max abs difference {diff}"
    diff = float((logits - reference_logits).abs().max())
    assert diff <= LOGIT_TOLERANCE, f"logits: max abs difference {diff}"
    for name, value in summary.items():
        diff = float((value - torch.from_numpy(expected[name])).abs().max())
        assert diff <= FEATURE_TOLERANCE, f"{name}: max abs difference {diff}"


def test_legacy_patch_order_reproduces_the_reference_before_5198d3f():
    expected = np.load(DATA / "birefnet_swin_t_legacy_expected.npz")
    assert str(expected["fill"]) == LEGACY_FILL_DESCRIPTION
    assert str(expected["reference"]) == f"ZhengPeng7/BiRefNet@{LEGACY_COMMIT}"
    net = BiRefNet("swin_t", patch_order="legacy").eval()
    net.load_state_dict(deterministic_state(net.state_dict()), strict=True)
    x = deterministic_input(LEGACY_INPUT_SHAPE)
    with torch.inference_mode():
        features = net.encode(x)
        logits = net.decoder(x, features)
        net.decoder.patch_order = "current"  # same weights and features, the other order
        current = net.decoder(x, features)
    reference_logits = torch.from_numpy(expected["logits"])
    reference = torch.sigmoid(reference_logits)
    diff = float((torch.sigmoid(logits) - reference).abs().max())
    assert diff <= PROB_TOLERANCE, f"probabilities: max abs difference {diff}"
    diff = float((logits - reference_logits).abs().max())
    assert diff <= LOGIT_TOLERANCE, f"logits: max abs difference {diff}"
    # The stored output tells the orders apart: the current one is far from it.
    assert float((torch.sigmoid(current) - reference).abs().max()) > 0.1


def test_random_weights_forward_batch_of_two(lite):
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        probs = lite.predict(x)
        logits = lite(x)
        alone = lite.predict(x[1:])
    assert probs.shape == (2, 1, 64, 96)
    assert torch.equal(probs, torch.sigmoid(logits))
    assert not torch.isnan(probs).any() and probs.min() >= 0 and probs.max() <= 1
    assert float((probs[1:] - alone).abs().max()) <= 1e-5  # samples do not interact
    with pytest.raises(ValueError, match="multiples of 32"):
        lite.predict(torch.zeros(1, 3, 64, 80))


def test_own_checkpoint_loads_through_the_registry_and_a_wrong_hash_is_refused(lite, tmp_path):
    path = tmp_path / "birefnet_lite.pth"
    torch.save(lite.state_dict(), path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    loaded = load_model(get_spec("birefnet-lite"), str(path), sha, tmp_path / "cache")
    assert isinstance(loaded, BiRefNet) and not loaded.training
    saved = lite.state_dict()
    assert list(loaded.state_dict()) == list(saved)
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, saved[key]), key
    with pytest.raises(WeightsError, match="CUTOUT_SEGMENTER_WEIGHTS_SHA256"):
        load_model(get_spec("birefnet-lite"), str(path), "0" * 64, tmp_path / "cache")
