"""``cutout eval`` scores what the service runs: the segmenter built from the settings by the
factory the Serve replica uses, fed at its input size."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import cli, segment
from pipeline.models.registry import get_spec
from pipeline.settings import load_settings
from tests.images import product_photo


class RecordingSegmenter:
    """Stands in for :class:`pipeline.segment.Segmenter`: records how it was built and the
    batches it is given, and finds a centred product in each."""

    signature = inspect.signature(segment.Segmenter)

    def __init__(self, *args, **kwargs) -> None:
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        self.args = dict(bound.arguments)
        self.spec = get_spec(self.args["model"])
        self.name = self.args["model"]
        self.engine = "torch"
        self.threads = self.args["threads"]
        self.input_size = self.args["input_size"] or self.spec.input_size
        self.batches: list[tuple[int, ...]] = []

    def warm_up(self, batch_size: int) -> None:
        pass

    def predict(self, batch: np.ndarray, flip: np.ndarray | None = None) -> np.ndarray:
        self.batches.append(batch.shape)
        n, side = batch.shape[0], batch.shape[1]
        prob = np.zeros((n, side, side), np.float32)
        prob[:, side // 4 : 3 * side // 4, side // 4 : 3 * side // 4] = 1.0
        return prob


@pytest.fixture
def built(monkeypatch) -> list[RecordingSegmenter]:
    made: list[RecordingSegmenter] = []

    def record(*args, **kwargs) -> RecordingSegmenter:
        made.append(RecordingSegmenter(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(segment, "Segmenter", record)
    return made


def one_sample_eval_dir(root: Path) -> Path:
    (root / "grabcut" / "images").mkdir(parents=True)
    (root / "grabcut" / "gt").mkdir(parents=True)
    photo = product_photo(96, 72)
    photo.save(root / "grabcut" / "images" / "product.png")
    gt = (np.asarray(photo)[..., 1] < 100).astype(np.uint8) * 255
    Image.fromarray(gt).save(root / "grabcut" / "gt" / "product.png")
    return root


def test_cutout_eval_runs_the_segmenter_the_settings_describe_at_its_input_size(built, monkeypatch, tmp_path, capsys):
    for name, value in {
        "DATA_DIR": str(tmp_path / "data"),
        "SEGMENTER_INPUT_SIZE": "256",
        "SEGMENTER_DEVICE": "cuda",
        "SEGMENTER_DTYPE": "float16",
        "SEGMENTER_ENGINE": "torch",
        "TORCH_THREADS": "3",
    }.items():
        monkeypatch.setenv(f"CUTOUT_{name}", value)
    eval_dir = one_sample_eval_dir(tmp_path / "eval")

    code = cli.main(["--config", str(tmp_path / "absent.yaml"), "eval", "--eval-dir", str(eval_dir), "--set", "grabcut"])

    assert code == 0, capsys.readouterr().err
    (segmenter,) = built
    args = segmenter.args
    assert (args["model"], args["device"], args["dtype"], args["engine"]) == ("u2netp", "cuda", "float16", "torch")
    assert (args["input_size"], args["threads"]) == (256, 3)
    assert segmenter.batches and set(segmenter.batches) == {(1, 256, 256, 3)}
    assert "256 px" in capsys.readouterr().out


def test_the_factory_passes_every_segmenter_setting(built, tmp_path):
    uri, sha = str(tmp_path / "w.safetensors"), "ab" * 32
    settings = load_settings(
        {
            "data_dir": str(tmp_path),
            "segmenter_model": "isnet-general-use",
            "segmenter_weights_uri": uri,
            "segmenter_weights_sha256": sha,
            "segmenter_dtype": "bfloat16",
            "segmenter_input_size": 512,
        },
        environ={},
    )
    segment.segmenter_from_settings(settings, cpus=5)
    segment.segmenter_from_settings(settings.model_copy(update={"torch_threads": 2}), cpus=5)
    first, second = built
    assert first.args == {
        "model": "isnet-general-use",
        "device": "cpu",
        "cache_dir": settings.model_cache_dir,
        "threads": 5,
        "weights_uri": uri,
        "weights_sha256": sha,
        "dtype": "bfloat16",
        "engine": "auto",
        "input_size": 512,
    }
    assert second.args["threads"] == 2  # CUTOUT_TORCH_THREADS wins over the CPUs given
