"""IS-Net in PyTorch: shapes, checkpoint layout, and equality with the reference DIS code.

The reference (``IS-Net/models/isnet.py`` of xuebinqin/DIS) is not available in CI, so
two facts recorded from it live in ``tests/data``: the key/shape list of its state dict
(``isnet_keys.json``) and its outputs for a deterministic set of weights and a
deterministic input (``isnet_expected.npz``). ``tests.deterministic.deterministic_state``
rebuilds exactly those weights (its rules reduce to ``FILL_DESCRIPTION`` for IS-Net), so our
network must reproduce those outputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.models.isnet import ISNetDIS
from pipeline.models.registry import get_spec
from tests.deterministic import deterministic_state

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DATA = Path(__file__).resolve().parent / "data"
KEYS_FILE = DATA / "isnet_keys.json"
EXPECTED_FILE = DATA / "isnet_expected.npz"

FILL_SEED = 0
INPUT_SEED = 1
INPUT_SHAPE = (1, 3, 64, 64)
FILL_DESCRIPTION = (
    "One torch.Generator seeded with 0 (CPU), state-dict keys visited in sorted() order, "
    "one draw per floating tensor: 4-D conv weights randn*sqrt(2/fan_in) with "
    "fan_in=in_ch*kh*kw; keys ending 'bn_s1.weight' 1+0.1*randn; keys ending "
    "'running_var' 1+0.5*rand; every other floating tensor (conv biases, BN biases, "
    "running_mean) 0.05*randn; integer tensors (num_batches_tracked) set to 0 without a "
    "draw. Input: torch.Generator seeded with 1, rand(1,3,64,64)-0.5, float32, eval mode."
)
# At 64x64 every block's deepest level is 1x1, where dilated convolutions only see their
# centre tap; these single blocks (same filled weights) run on inputs whose deepest
# level is at least 3x3 (9x9+ for RSU-4F's dilation 8), and odd sizes exercise the
# round-up pooling. Input i: torch.Generator seeded with 10+i, rand(shape)-0.5.
BLOCK_CASES = (
    ("stage1d", (1, 128, 65, 65)),
    ("stage2", (1, 64, 33, 33)),
    ("stage3", (1, 128, 17, 17)),
    ("stage4", (1, 256, 9, 9)),
    ("stage6", (1, 512, 12, 12)),
)


def deterministic_input() -> torch.Tensor:
    """The input the stored reference outputs were computed from."""
    gen = torch.Generator().manual_seed(INPUT_SEED)
    return torch.rand(INPUT_SHAPE, generator=gen) - 0.5


def block_input(index: int) -> torch.Tensor:
    """The input of ``BLOCK_CASES[index]``."""
    gen = torch.Generator().manual_seed(10 + index)
    return torch.rand(BLOCK_CASES[index][1], generator=gen) - 0.5


def block_summary(out: torch.Tensor) -> dict[str, torch.Tensor]:
    """What is stored of a block's output: the channel mean and the first channel."""
    return {"mean": out.mean(1), "first": out[:, 0]}


@pytest.fixture(scope="module")
def model() -> ISNetDIS:
    torch.manual_seed(0)
    return ISNetDIS().eval()


def test_the_records_feed_the_weights_as_dis_does():
    # IS-Net/Inference.py: 1024 x 1024, [0, 1] pixels, mean 0.5 and std 1.0 (RMBG-1.4 the same)
    for name in ("isnet-general-use", "rmbg-1.4"):
        spec = get_spec(name)
        assert (spec.input_size, spec.mean, spec.std, spec.normalisation) == (1024, (0.5, 0.5, 0.5), (1.0, 1.0, 1.0), "unit")


def test_random_weights_forward_shapes_batch_and_odd_sizes(model):
    with torch.inference_mode():
        maps, features = model(torch.randn(2, 3, 64, 96))
        single = model.predict(torch.randn(1, 3, 50, 75))
    assert len(maps) == 6 and len(features) == 6
    for m in maps:
        assert m.shape == (2, 1, 64, 96)
        assert not torch.isnan(m).any() and m.min() >= 0 and m.max() <= 1
    channels = [64, 64, 128, 256, 512, 512]
    sizes = [(32, 48), (16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]
    assert [tuple(f.shape) for f in features] == [(2, c, *s) for c, s in zip(channels, sizes)]
    assert single.shape == (1, 1, 50, 75) and not torch.isnan(single).any()


def test_predict_equals_first_side_output_and_batch_is_per_sample(model):
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        maps, _ = model(x)
        pred = model.predict(x)
        alone = model.predict(x[1:])
    assert float((pred - maps[0]).abs().max()) <= 1e-6
    assert float((pred[1:] - alone).abs().max()) <= 1e-5


def test_state_dict_keys_and_shapes_equal_the_reference(model):
    recorded = json.loads(KEYS_FILE.read_text())
    ours = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    assert ours == recorded["keys"]


def test_deterministic_weights_reproduce_the_reference_outputs():
    expected = np.load(EXPECTED_FILE)
    assert str(expected["fill"]) == FILL_DESCRIPTION
    net = ISNetDIS().eval()
    net.load_state_dict(deterministic_state(net.state_dict(), seed=FILL_SEED), strict=True)
    x = deterministic_input()
    with torch.inference_mode():
        maps, features = net(x)
        pred = net.predict(x)
    assert float((pred - torch.from_numpy(expected["side0"])).abs().max()) <= 1e-4
    for i, m in enumerate(maps):
        diff = float((m - torch.from_numpy(expected[f"side{i}"])).abs().max())
        assert diff <= 1e-4, f"side output {i}: max abs difference {diff}"
    for i in (3, 4, 5):
        diff = float((features[i] - torch.from_numpy(expected[f"feature{i}"])).abs().max())
        assert diff <= 1e-4, f"feature {i}: max abs difference {diff}"
    for index, (name, _) in enumerate(BLOCK_CASES):
        with torch.inference_mode():
            summary = block_summary(getattr(net, name)(block_input(index)))
        for part, value in summary.items():
            diff = float((value - torch.from_numpy(expected[f"{name}_{part}"])).abs().max())
            assert diff <= 1e-4, f"block {name} ({part}): max abs difference {diff}"


def test_own_checkpoint_round_trips_with_weights_only(model, tmp_path):
    path = tmp_path / "isnet.pth"
    torch.save(model.state_dict(), path)
    again = ISNetDIS().eval()
    again.load_state_dict(torch.load(path, weights_only=True), strict=True)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        assert torch.equal(again.predict(x), model.predict(x))
