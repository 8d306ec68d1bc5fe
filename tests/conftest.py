"""Session fixtures shared by unit and integration tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.harness import free_port

BIN = Path(sys.executable).parent


@dataclass
class Emulator:
    """A real gcp-storage-emulator server on loopback (a subprocess, restartable)."""

    host: str
    port: int
    data_dir: Path
    bucket: str
    proc: subprocess.Popen | None = None

    def start(self, deadline_s: float = 30.0) -> None:
        """Start the server and wait until it answers (see :meth:`wait_ready`)."""
        self.proc = subprocess.Popen(
            [
                str(BIN / "gcp-storage-emulator"),
                "--data-dir",
                str(self.data_dir),
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--default-bucket",
                self.bucket,
                "--quiet",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.wait_ready(deadline_s)

    def wait_ready(self, deadline_s: float = 30.0, poll_s: float = 0.2) -> None:
        """Poll ``host`` until it answers 200, sleeping ``poll_s`` after every other outcome.

        Raises:
            RuntimeError: When ``deadline_s`` passes first, or the server process has exited.
        """
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"gcp-storage-emulator exited with code {self.proc.returncode}")
            try:
                if requests.get(self.host + "/", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(poll_s)
        raise RuntimeError(f"gcp-storage-emulator did not answer 200 within {deadline_s} s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def client(self):
        """A storage client for the emulator (anonymous: the emulator checks no credentials)."""
        from pipeline.storage import storage_client

        return storage_client(self.host)


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory):
    """A gcp-storage-emulator for the session; STORAGE_EMULATOR_HOST points at it meanwhile."""
    port = free_port()
    emulator = Emulator(f"http://127.0.0.1:{port}", port, tmp_path_factory.mktemp("gcs"), "cutout-test")
    emulator.start()
    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = emulator.host
    yield emulator
    emulator.stop()
    if previous is None:
        os.environ.pop("STORAGE_EMULATOR_HOST", None)
    else:
        os.environ["STORAGE_EMULATOR_HOST"] = previous


@pytest.fixture(scope="session")
def eval_dir() -> Path:
    """The evaluation photos: skipped when absent, failed under CI (``tests.images.require_eval_data``).

    Session-scoped, so that it is checked before any module fixture that reads the photos.
    """
    from tests.images import require_eval_data

    return require_eval_data()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Runs a model test module's convolutions on one intra-op thread.

    On a busy 2-core machine two OpenMP threads competing with another process made the
    IS-Net tests about seven times slower than one thread did. Use with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
