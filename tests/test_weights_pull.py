"""``cutout weights pull`` against a stand-in for the Hugging Face hub, and the real GCS emulator.

The hub itself cannot be reached here: a small HTTP server on loopback (``HF_ENDPOINT``)
answers the two requests ``huggingface_hub`` makes for a file (HEAD for its metadata, GET for
its bytes) with a checkpoint each test makes. Everything else is real: ``huggingface_hub``'s
download, the hash check, the safetensors conversion, and the upload to gcp-storage-emulator.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pipeline import cli
from pipeline.models.registry import BIREFNET_GENERAL_HUB, REGISTRY
from pipeline.settings import load_settings

UNPINNED = "0123456789abcdef0123456789abcdef01234567"  # a commit this version pins no hash for


def small_state() -> dict[str, torch.Tensor]:
    return {"layer.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4), "layer.bias": torch.ones(3)}


def safetensors_bytes() -> bytes:
    buf = io.BytesIO()
    from safetensors.torch import save

    buf.write(save(small_state()))
    return buf.getvalue()


def torch_bytes() -> bytes:
    buf = io.BytesIO()
    torch.save({"state_dict": small_state()}, buf)
    return buf.getvalue()


class Hub:
    """Files by (repo, revision, filename); ``truncate`` drops GETs halfway; requests are logged."""

    def __init__(self) -> None:
        self.files: dict[tuple[str, str, str], bytes] = {}
        self.truncate = False
        self.requests: list[str] = []


@contextlib.contextmanager
def hub_server(hub: Hub):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def _file(self):
            hub.requests.append(f"{self.command} {self.path}")
            parts = self.path.split("?")[0].strip("/").split("/")
            if len(parts) >= 5 and parts[2] == "resolve":
                key = ("/".join(parts[:2]), parts[3], "/".join(parts[4:]))
                if key in hub.files:
                    return key[1], hub.files[key]
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None, None

        def _headers(self, revision: str, body: bytes) -> None:
            self.send_header("X-Repo-Commit", revision)
            self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()

        def do_HEAD(self):
            revision, body = self._file()
            if body is not None:
                self.send_response(200)
                self._headers(revision, body)

        def do_GET(self):
            revision, body = self._file()
            if body is None:
                return
            if hub.truncate:
                if self.headers.get("Range"):  # the library's attempt to resume: refuse it
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self._headers(revision, body)
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.send_response(200)
            self._headers(revision, body)
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def hub(monkeypatch):
    h = Hub()
    with hub_server(h) as url:
        monkeypatch.setenv("HF_ENDPOINT", url)
        monkeypatch.setenv("HF_TOKEN", "hf_test_token_not_real")
        monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        yield h


def pull(*args: str) -> int:
    return cli.main(["weights", "pull", *args])


def test_pull_stores_the_checkpoint_and_prints_settings_the_service_accepts(hub, tmp_path, capsys):
    body = safetensors_bytes()
    digest = hashlib.sha256(body).hexdigest()
    hub.files[("ZhengPeng7/BiRefNet", UNPINNED, "model.safetensors")] = body
    dest = tmp_path / "weights"
    assert pull("birefnet-general", "--revision", UNPINNED, "--sha256", digest, "--to", str(dest)) == 0
    out = capsys.readouterr().out
    stored = dest / f"birefnet-general-{UNPINNED[:12]}.safetensors"
    assert stored.read_bytes() == body  # a safetensors checkpoint is kept byte for byte
    assert f"CUTOUT_SEGMENTER_WEIGHTS_URI={stored}" in out
    assert f"CUTOUT_SEGMENTER_WEIGHTS_SHA256={digest}" in out
    assert "CUTOUT_SEGMENTER_MODEL=birefnet-general" in out and "MIT" in out
    assert sorted(p.name for p in dest.iterdir()) == [stored.name]  # no temporary file left
    # the printed settings are valid settings
    settings = {line.split("=", 1)[0].strip(): line.split("=", 1)[1] for line in out.splitlines() if "=" in line}
    env = {k: v for k, v in settings.items() if k.startswith("CUTOUT_")}
    loaded = load_settings({"data_dir": str(tmp_path / "data")}, environ=env)
    assert loaded.segmenter_weights_sha256 == digest
    assert any(r.startswith("GET /ZhengPeng7/BiRefNet/resolve/") for r in hub.requests)


def test_a_pytorch_checkpoint_is_converted_to_safetensors(hub, tmp_path, capsys):
    body = torch_bytes()
    hub.files[("briaai/RMBG-1.4", UNPINNED, "model.pth")] = body
    args = ["rmbg-1.4", "--revision", UNPINNED, "--sha256", hashlib.sha256(body).hexdigest(), "--to", str(tmp_path)]
    assert pull(*args, "--accept-licence") == 0
    out = capsys.readouterr().out
    stored = tmp_path / f"rmbg-1.4-{UNPINNED[:12]}.safetensors"
    tensors = load_file(str(stored))
    assert set(tensors) == set(small_state()) and torch.equal(tensors["layer.weight"], small_state()["layer.weight"])
    assert f"CUTOUT_SEGMENTER_WEIGHTS_SHA256={hashlib.sha256(stored.read_bytes()).hexdigest()}" in out
    assert "converted to safetensors" in out


def test_the_pinned_revision_is_checked_against_the_registry_and_a_wrong_file_is_refused(hub, tmp_path, capsys):
    pinned = BIREFNET_GENERAL_HUB.revision
    hub.files[("ZhengPeng7/BiRefNet", pinned, "model.safetensors")] = safetensors_bytes()  # not the published file
    assert pull("birefnet-general", "--to", str(tmp_path / "w")) == 2
    err = capsys.readouterr().err
    assert "expected " + BIREFNET_GENERAL_HUB.pinned_sha256(pinned) in err and "nothing stored" in err
    assert not (tmp_path / "w").exists() or not any((tmp_path / "w").iterdir())
    # an operator's hash cannot override the registry's pin
    assert pull("birefnet-general", "--sha256", "0" * 64, "--to", str(tmp_path / "w")) == 2
    assert "differs from the SHA-256 this version pins" in capsys.readouterr().err


def test_a_wrong_hash_is_refused_and_nothing_is_stored(hub, tmp_path, capsys):
    hub.files[("ZhengPeng7/BiRefNet_lite", UNPINNED, "model.safetensors")] = safetensors_bytes()
    assert pull("birefnet-lite", "--revision", UNPINNED, "--sha256", "ab" * 32, "--to", str(tmp_path)) == 2
    assert "refused, nothing stored" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_download_is_never_used(hub, tmp_path, capsys):
    body = safetensors_bytes() + bytes(4096)
    hub.files[("ZhengPeng7/BiRefNet", UNPINNED, "model.safetensors")] = body
    hub.truncate = True
    args = ["birefnet-general", "--revision", UNPINNED, "--sha256", hashlib.sha256(body).hexdigest(), "--to", str(tmp_path)]
    assert pull(*args) == 2
    assert "could not download" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # neither the partial file nor a temporary one


def test_refusals_before_any_download(hub, tmp_path, capsys):
    # a non-commercial licence needs --accept-licence; the hub is not even asked
    assert pull("rmbg-2.0", "--revision", UNPINNED, "--sha256", "ab" * 32, "--to", str(tmp_path)) == 2
    assert "--accept-licence" in capsys.readouterr().err
    # no pin and no --sha256
    assert pull("birefnet-general", "--revision", UNPINNED, "--to", str(tmp_path)) == 2
    assert "--sha256" in capsys.readouterr().err
    # a branch name is not a revision one can pin
    assert pull("birefnet-general", "--revision", "main", "--to", str(tmp_path)) == 2
    assert "40-hex-digit commit" in capsys.readouterr().err
    # a model with no hub checkpoint, an unknown model
    assert pull("isnet-general-use", "--to", str(tmp_path)) == 2
    assert pull("no-such-model", "--to", str(tmp_path)) == 2
    assert hub.requests == []
    assert list(tmp_path.iterdir()) == []


def test_the_hub_token_never_reaches_an_error(hub, tmp_path, capsys):
    assert pull("birefnet-general", "--revision", UNPINNED, "--sha256", "ab" * 32, "--to", str(tmp_path)) == 2
    captured = capsys.readouterr()
    assert "hf_test_token_not_real" not in captured.err + captured.out


def test_pull_to_gcs_uploads_once_and_verifies(hub, gcs_emulator, tmp_path, capsys):
    body = safetensors_bytes()
    digest = hashlib.sha256(body).hexdigest()
    hub.files[("ZhengPeng7/BiRefNet", UNPINNED, "model.safetensors")] = body
    prefix = f"pull-{secrets.token_hex(4)}/models"  # the emulator's bucket is shared with other tests
    dest = f"gs://{gcs_emulator.bucket}/{prefix}"
    args = ["birefnet-general", "--revision", UNPINNED, "--sha256", digest, "--to", dest]
    assert pull(*args) == 0
    uri = f"{dest}/birefnet-general-{UNPINNED[:12]}.safetensors"
    assert f"CUTOUT_SEGMENTER_WEIGHTS_URI={uri}" in capsys.readouterr().out
    blob = gcs_emulator.client().bucket(gcs_emulator.bucket).blob(f"{prefix}/birefnet-general-{UNPINNED[:12]}.safetensors")
    assert blob.download_as_bytes() == body
    # the service's own loader reads it back from gs:// with the printed hash
    from pipeline.models.weights import fetch_weights

    assert fetch_weights(uri, digest, tmp_path / "cache").read_bytes() == body
    # pulling again is a no-op; a wrong file is refused and leaves the stored one as it was
    assert pull(*args) == 0
    hub.files[("ZhengPeng7/BiRefNet", UNPINNED, "model.safetensors")] = body + b" "
    assert pull(*args) == 2
    assert blob.download_as_bytes() == body
    names = [b.name for b in gcs_emulator.client().list_blobs(gcs_emulator.bucket, prefix=prefix + "/")]
    assert names == [f"{prefix}/birefnet-general-{UNPINNED[:12]}.safetensors"]


def test_every_hub_pin_is_well_formed():
    for spec in REGISTRY.values():
        if spec.hub is None:
            continue
        for revision, sha in spec.hub.pins:
            assert len(revision) == 40 and len(sha) == 64 and int(revision, 16) >= 0 and int(sha, 16) >= 0
        assert spec.hub.revision is None or spec.hub.pinned_sha256(spec.hub.revision), spec.name
        assert spec.commercial_use == ("non-commercial" not in spec.licence), spec.name


def test_the_service_never_imports_the_hub_client():
    """Nothing is downloaded from the hub at start: only the pull command uses huggingface_hub."""
    root = Path(__file__).resolve().parents[1]
    users = [
        str(p.relative_to(root))
        for folder in ("pipeline", "deployments")
        for p in (root / folder).rglob("*.py")
        if "huggingface_hub" in p.read_text()
    ]
    assert users == ["pipeline/models/pull.py"]
