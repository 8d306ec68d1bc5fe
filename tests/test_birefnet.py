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
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.models.birefnet import INPUT_SIZE, MEAN, STD, BiRefNet, build_birefnet, map_published_keys
from pipeline.models.registry import get_spec
from pipeline.models.weights import WeightsError, load_model
from tests.deterministic import deterministic_state

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DATA = Path(__file__).resolve().parent / "data"
REFERENCE_COMMIT = "25cb9309bacf3dde954e4584594e16e142c51de5"
VARIANTS = ("swin_l", "swin_t")
INPUT_SEED = 1
# 224x160: Swin windows are padded on both axes at every stage (window 12 and 7), patch
# merging pads odd sizes (7x5 -> 4x3 in the half-size pass), and the decoder's patch grids
# are non-square.
INPUT_SHAPE = (1, 3, 224, 160)
FILL_DESCRIPTION = (
    "tests.deterministic.deterministic_state(reference.state_dict(), seed=0): one "
    "torch.Generator seeded with 0 (CPU), state-dict keys visited in sorted() order, one draw "
    "per floating tensor: keys ending 'weight' with 2+ dims randn*sqrt(2/fan_in) with fan_in "
    "the product of all dims but the first; 1-D keys ending 'weight' (LayerNorm, BatchNorm) "
    "1+0.1*randn; keys ending 'running_var' 1+0.5*rand; keys ending "
    "'relative_position_bias_table' randn; every other floating tensor 0.05*randn; integer "
    "tensors (num_batches_tracked, relative_position_index) kept. Input: torch.Generator "
    "seeded with 1, randn(1,3,224,160), float32, eval mode, torch.set_num_threads(1)."
)
PROB_TOLERANCE = 1e-4
LOGIT_TOLERANCE = 1e-3
FEATURE_TOLERANCE = 1e-4


def deterministic_input() -> torch.Tensor:
    """The input the stored reference outputs were computed from."""
    return torch.randn(INPUT_SHAPE, generator=torch.Generator().manual_seed(INPUT_SEED))


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


def test_preprocessing_constants_match_the_registry():
    for name in ("birefnet-general", "birefnet-lite", "rmbg-2.0"):
        spec = get_spec(name)
        assert (spec.input_size, spec.mean, spec.std, spec.normalisation) == (INPUT_SIZE, MEAN, STD, "unit")


def test_registry_builds_each_variant_and_refuses_an_unknown_one():
    with torch.device("meta"):  # shapes only, no 220M-parameter allocation
        assert get_spec("birefnet-general").build().variant == "swin_l"
        assert get_spec("rmbg-2.0").build().variant == "swin_l"
        assert get_spec("birefnet-lite").build().variant == "swin_t"
    with pytest.raises(ValueError, match="swin_b"):
        build_birefnet("swin_b")


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

