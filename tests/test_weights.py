"""Model registry and weights: safe loading from a path and from gs://, hashes enforced."""

from __future__ import annotations

import dataclasses
import hashlib
import pickle

import pytest
import torch

from pipeline.models.registry import REGISTRY, PackagedFile, get_spec
from pipeline.models.u2netp import U2NetP
from pipeline.models.weights import WeightsError, fetch_weights, load_model, read_state_dict, verified_packaged_file


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A checkpoint in the published u2netp.pth key layout, saved from the model itself."""
    torch.manual_seed(3)
    model = U2NetP()
    path = tmp_path_factory.mktemp("ckpt") / "u2netp.pth"
    torch.save(model.state_dict(), path)
    return path, model


@pytest.fixture(scope="module")
def lite_checkpoint(tmp_path_factory):
    """A birefnet-lite checkpoint (178 MB) in the published key layout, saved from the model itself."""
    from pipeline.models.birefnet import BiRefNet

    torch.manual_seed(4)
    model = BiRefNet("swin_t")
    path = tmp_path_factory.mktemp("ckpt") / "birefnet_lite.pth"
    torch.save(model.state_dict(), path)
    return path, model


def test_registry_records_are_complete():
    for name in ("u2netp", "birefnet-general", "birefnet-lite", "rmbg-2.0", "isnet-general-use", "rmbg-1.4"):
        spec = get_spec(name)
        assert spec.input_size in (320, 1024) and spec.licence and len(spec.mean) == 3
    assert set(REGISTRY) >= {"u2netp", "birefnet-general", "birefnet-lite", "isnet-general-use"}
    with pytest.raises(ValueError, match="CUTOUT_SEGMENTER_MODEL"):
        get_spec("nope")


def test_every_shipped_weights_file_resolves_with_its_hash_and_has_a_loader():
    shipped = [spec for spec in REGISTRY.values() if spec.onnx is not None]
    assert [spec.name for spec in shipped] == ["u2netp"]
    for spec in shipped:
        assert verified_packaged_file(spec.onnx).is_file(), spec.name
        assert spec.loader, f"{spec.name}: shipped ONNX weights need a loader for PyTorch"
    assert all(spec.loader is None for spec in REGISTRY.values() if spec.onnx is None)


def test_a_missing_package_names_what_to_install():
    missing = PackagedFile("no_such_package_here", "model.onnx", "some-distribution", "0" * 64)
    with pytest.raises(FileNotFoundError, match="some-distribution"):
        missing.locate()


def load_marker(spec, cache_dir):
    return ("loaded by the record", spec.name, cache_dir)


def test_a_records_own_loader_gives_its_default_weights_and_a_configured_uri_bypasses_it(checkpoint, tmp_path):
    spec = dataclasses.replace(get_spec("u2netp"), loader=f"{__name__}:load_marker")
    assert load_model(spec, None, None, tmp_path) == ("loaded by the record", "u2netp", tmp_path)
    path, model = checkpoint
    loaded = load_model(spec, str(path), sha(path.read_bytes()), tmp_path)
    assert torch.equal(loaded.state_dict()["outconv.weight"], model.state_dict()["outconv.weight"])


def test_loads_a_published_layout_checkpoint_from_a_path(checkpoint, tmp_path):
    path, model = checkpoint
    loaded = load_model(get_spec("u2netp"), str(path), sha(path.read_bytes()), tmp_path)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_wrong_hash_or_missing_hash_is_refused(checkpoint, tmp_path):
    path, _ = checkpoint
    with pytest.raises(WeightsError, match="CUTOUT_SEGMENTER_WEIGHTS_SHA256"):
        load_model(get_spec("u2netp"), str(path), "0" * 64, tmp_path)
    with pytest.raises(WeightsError, match="CUTOUT_SEGMENTER_WEIGHTS_SHA256"):
        fetch_weights(str(path), "", tmp_path)


def test_model_without_shipped_weights_names_the_setting(tmp_path):
    with pytest.raises(WeightsError, match="CUTOUT_SEGMENTER_WEIGHTS_URI"):
        load_model(get_spec("birefnet-lite"), None, None, tmp_path)


def test_unsafe_pickle_is_refused_not_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"x": Evil()}))
    with pytest.raises(WeightsError):
        read_state_dict(path)
    assert not marker.exists()


@pytest.mark.parametrize("name, checkpoint_fixture", [("u2netp", "checkpoint"), ("birefnet-lite", "lite_checkpoint")])
def test_loads_from_gs_uri_served_by_the_emulator(name, checkpoint_fixture, request, gcs_emulator, tmp_path):
    path, model = request.getfixturevalue(checkpoint_fixture)
    data = path.read_bytes()
    gcs_emulator.client().bucket(gcs_emulator.bucket).blob(f"models/{name}.pth").upload_from_string(data)
    uri = f"gs://{gcs_emulator.bucket}/models/{name}.pth"
    loaded = load_model(get_spec(name), uri, sha(data), tmp_path / "cache")
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert len(list((tmp_path / "cache").glob("weights-*"))) == 1  # cached for the next start
    with pytest.raises(WeightsError, match="sha256"):
        load_model(get_spec(name), uri, "1" * 64, tmp_path / "other")
    assert not list((tmp_path / "other").glob("weights-*"))  # a mismatching download is deleted


def test_every_registered_architecture_builds():
    for spec in REGISTRY.values():
        with torch.device("meta"):  # structure only: the Swin-L BiRefNets have 220M parameters
            assert isinstance(spec.build(), torch.nn.Module), spec.name


def test_an_architecture_this_version_lacks_names_the_setting():
    spec = dataclasses.replace(get_spec("birefnet-lite"), builder="pipeline.models.not_shipped:build")
    with pytest.raises(ValueError, match="CUTOUT_SEGMENTER_MODEL"):
        spec.build()
