"""The segmenter core: which engine runs, how a CPU batch is spread over the cores, and that
the engines give the same probabilities for the same images."""

from __future__ import annotations

import platform

import numpy as np
import psutil
import pytest
from PIL import Image

from pipeline.engines import Engine, resolve_engine
from pipeline.segment import Segmenter, split_threads
from pipeline.settings import load_settings
from tests.images import eval_image

X86 = platform.machine().lower() in ("x86_64", "amd64")
ENGINE_NAMES = ("torch", "onnxruntime", "openvino")


@pytest.mark.skipif(not X86, reason="auto picks openvino on x86-64 only (where it was measured)")
def test_auto_engine_is_openvino_only_for_the_shipped_u2netp_in_float32_on_cpu():
    assert resolve_engine("auto", "u2netp", "cpu", None, 0, "float32") == "openvino"
    assert resolve_engine("auto", "u2netp", "cpu", None, 320, "float32") == "openvino"
    assert load_settings({}, environ={}).segmenter_engine == "auto"
    assert resolve_engine("auto", "u2netp", "cuda", None, 0, "float32") == "torch"
    assert resolve_engine("auto", "u2netp", "cpu", "/w.safetensors", 0, "float32") == "torch"
    assert resolve_engine("auto", "u2netp", "cpu", None, 512, "float32") == "torch"
    assert resolve_engine("auto", "u2netp", "cpu", None, 0, "bfloat16") == "torch"
    assert resolve_engine("auto", "birefnet-lite", "cpu", None, 0, "float32") == "torch"
    assert resolve_engine("torch", "u2netp", "cpu", None, 0, "float32") == "torch"
    assert resolve_engine("onnxruntime", "u2netp", "cpu", None, 0, "float32") == "onnxruntime"
    assert resolve_engine("openvino", "u2netp", "cpu", None, 0, "float32") == "openvino"


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
@pytest.mark.parametrize(
    "env",
    [
        {"CUTOUT_SEGMENTER_INPUT_SIZE": "512"},
        {"CUTOUT_SEGMENTER_DTYPE": "bfloat16"},
        {"CUTOUT_SEGMENTER_DEVICE": "cuda"},
        {"CUTOUT_SEGMENTER_MODEL": "isnet-general-use"},
    ],
)
def test_an_onnx_engine_where_it_cannot_run_is_refused_at_startup_naming_the_setting(tmp_path, engine, env):
    with pytest.raises(Exception, match="CUTOUT_SEGMENTER_ENGINE"):
        load_settings({"data_dir": str(tmp_path)}, environ={"CUTOUT_SEGMENTER_ENGINE": engine, **env})


def test_an_onnx_engine_for_a_model_without_an_onnx_file_is_refused():
    for engine in ("onnxruntime", "openvino"):
        with pytest.raises(ValueError, match="CUTOUT_SEGMENTER_ENGINE"):
            resolve_engine(engine, "isnet-general-use", "cpu", None, 0, "float32")


def test_an_unknown_engine_is_refused_at_startup_naming_the_setting(tmp_path):
    with pytest.raises(Exception, match="CUTOUT_SEGMENTER_ENGINE: .*'openvino'"):
        load_settings({"data_dir": str(tmp_path)}, environ={"CUTOUT_SEGMENTER_ENGINE": "openvino-gpu"})
    with pytest.raises(ValueError, match="CUTOUT_SEGMENTER_ENGINE"):
        resolve_engine("tensorrt", "u2netp", "cpu", None, 0, "float32")


@pytest.mark.parametrize(
    ("images", "threads", "expected"),
    [
        (1, 2, [(0, 1, 2)]),  # a lone image gets every thread
        (2, 2, [(0, 1, 1), (1, 2, 1)]),  # two side by side, one thread each
        (4, 2, [(0, 2, 1), (2, 4, 1)]),
        (3, 4, [(0, 1, 2), (1, 2, 1), (2, 3, 1)]),
        (5, 1, [(0, 5, 1)]),
    ],
)
def test_a_cpu_batch_is_spread_over_the_threads(images, threads, expected):
    parts = split_threads(images, threads)
    assert [(p.start, p.stop, t) for p, t in parts] == expected
    assert sum(t for _, t in parts) <= max(threads, 1)


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    cache = tmp_path_factory.mktemp("weights")
    return {e: Segmenter("u2netp", "cpu", cache, threads=2, engine=e) for e in ENGINE_NAMES}


@pytest.mark.parametrize("name", ENGINE_NAMES)
def test_each_engine_keeps_the_engine_contract(engines, name):
    runner = engines[name]._runner
    assert isinstance(runner, Engine) and runner.name == name and runner.device_type == "cpu"
    batch = np.random.default_rng(0).integers(0, 256, (2, 320, 320, 3), dtype=np.uint8)
    out = runner.run(batch, 1)
    assert out.shape == (2, 320, 320) and out.dtype == np.float32
    assert not np.isnan(out).any() and 0.0 <= out.min() and out.max() <= 1.0


def _photos() -> np.ndarray:
    names = ["banana1.png", "person1.jpg", "teddy.jpg"]
    return np.stack([np.asarray(Image.open(eval_image(n)).convert("RGB").resize((320, 320), Image.LANCZOS)) for n in names])


@pytest.mark.usefixtures("eval_dir")
def test_both_engines_give_the_same_probabilities_whole_batch_or_split(engines):
    batch = _photos()
    torch_out = engines["torch"].predict(batch)
    onnx_out = engines["onnxruntime"].predict(batch)
    assert engines["onnxruntime"].engine == "onnxruntime" and engines["torch"].engine == "torch"
    assert torch_out.shape == onnx_out.shape == (3, 320, 320) and onnx_out.dtype == np.float32
    assert float(np.abs(torch_out - onnx_out).max()) <= 3e-4
    # spreading the batch over workers changes nothing: each image as if run alone
    for engine in engines.values():
        alone = np.concatenate([engine.predict(batch[i : i + 1]) for i in range(3)])
        assert float(np.abs(alone - engine.predict(batch)).max()) <= 1e-5
    assert 0.0 <= onnx_out.min() and onnx_out.max() <= 1.0
    assert onnx_out[1].mean() > 0.05  # a person is found, not an empty map


def _rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


# Measured (benchmarks/engines.py, docs/benchmarks.md): at most 6.5e-5 apart on the photos of
# the evaluation sets, one image at a time and side by side; 2e-4 leaves room for other CPUs'
# kernels while any real divergence (a layer in bfloat16 moves them by up to 0.9) fails.
OPENVINO_TOLERANCE = 2e-4


@pytest.mark.usefixtures("eval_dir")
def test_openvino_gives_onnxruntimes_probabilities_on_real_photos(engines):
    names = ["banana1.png", "person1.jpg", "teddy.jpg", "flower.jpg", "sheep.jpg", "llama.png"]
    batch = np.stack([np.asarray(Image.open(eval_image(n)).convert("RGB").resize((320, 320), Image.LANCZOS)) for n in names])
    onnx_out = engines["onnxruntime"].predict(batch)
    for layout in (batch[:1], batch[:2], batch):  # a lone image on two threads, side by side on one each
        ov_out = engines["openvino"].predict(layout)
        assert ov_out.shape == (len(layout), 320, 320) and ov_out.dtype == np.float32
        assert float(np.abs(ov_out - onnx_out[: len(layout)]).max()) <= OPENVINO_TOLERANCE
    assert np.array_equal(ov_out >= 0.5, onnx_out >= 0.5)


def test_openvino_runs_images_side_by_side_at_once_not_in_turn(engines):
    # A compiled model runs one request per stream at a time: two images side by side on one
    # thread each need a model with two streams, or they take turns (half the images per
    # second, measured: docs/benchmarks.md). A lone image gets one stream of both threads.
    segmenter = engines["openvino"]
    segmenter.predict(np.zeros((2, 320, 320, 3), np.uint8))
    segmenter.predict(np.zeros((1, 320, 320, 3), np.uint8))
    layouts = {
        t: (int(c.get_property("NUM_STREAMS")), int(c.get_property("INFERENCE_NUM_THREADS")))
        for t, c in segmenter._runner._compiled.items()
    }
    assert layouts == {2: (1, 2), 1: (2, 2)}


def test_the_first_cpu_forward_runs_its_first_part_alone_then_parts_run_side_by_side(tmp_path):
    # OpenVINO's Python binding sets up shared state on its first inference; two threads making
    # that first call at once deadlocked now and then (3 fresh processes in 52 here, 0 in 80
    # with the first part run alone). The engine is a stand-in that records when each part runs.
    import threading
    import time

    class Recording:
        spans: list[tuple[float, float]] = []
        lock = threading.Lock()

        def run(self, batch, threads):
            start = time.perf_counter()
            time.sleep(0.05)
            with self.lock:
                self.spans.append((start, time.perf_counter()))
            return np.zeros((len(batch), 320, 320), np.float32)

    segmenter = Segmenter("u2netp", "cpu", tmp_path, threads=2, engine="openvino")
    segmenter._runner = runner = Recording()
    batch = np.zeros((2, 320, 320, 3), np.uint8)
    assert segmenter.predict(batch).shape == (2, 320, 320)
    (a_start, a_end), (b_start, _) = sorted(runner.spans)
    assert b_start >= a_end  # the first forward: one part after the other
    runner.spans.clear()
    segmenter.predict(batch)
    (a_start, a_end), (b_start, _) = sorted(runner.spans)
    assert b_start < a_end  # afterwards side by side


def test_openvino_compiles_once_into_the_cache_and_starts_from_it(tmp_path):
    batch = np.random.default_rng(1).integers(0, 256, (1, 320, 320, 3), dtype=np.uint8)
    first = Segmenter("u2netp", "cpu", tmp_path, threads=1, engine="openvino")
    out = first.predict(batch)
    blobs = list((tmp_path / "openvino").glob("*.blob"))
    assert blobs, "no compiled model was cached"
    stamps = {b: b.stat().st_mtime_ns for b in blobs}
    again = Segmenter("u2netp", "cpu", tmp_path, threads=1, engine="openvino")
    assert np.array_equal(again.predict(batch), out)
    assert {b: b.stat().st_mtime_ns for b in (tmp_path / "openvino").glob("*.blob")} == stamps


@pytest.mark.usefixtures("eval_dir")
@pytest.mark.parametrize("name", ["onnxruntime", "openvino"])
def test_after_warm_up_the_cpu_engine_holds_its_memory_steady_under_every_layout(engines, name):
    # The onnxruntime sessions share one arena, OpenVINO keeps each compiled model's buffers;
    # warm_up brings them to their steady size, so a replica's memory after a load is what
    # it was before.
    engine = engines[name]
    engine.warm_up(batch_size=2)
    before = _rss_mb()
    batch = _photos()
    for _ in range(3):
        engine.predict(batch[:1])
        engine.predict(batch[:2])
        engine.predict(batch)
    assert _rss_mb() - before < 40, "memory grew after warm-up"


def test_openvino_runs_without_its_cache_where_the_cache_folder_cannot_be_made(tmp_path):
    # a path under a plain file: no folder can be made there, whoever runs the test (root too)
    blocked = tmp_path / "models"
    blocked.write_text("not a folder")
    segmenter = Segmenter("u2netp", "cpu", blocked, threads=1, engine="openvino")
    out = segmenter.predict(np.zeros((1, 320, 320, 3), np.uint8))
    assert out.shape == (1, 320, 320) and blocked.read_text() == "not a folder"
