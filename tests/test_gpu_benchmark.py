"""benchmarks/gpu.py runs end to end: its CPU dry run (tiny inputs, every model, the real service
over HTTP) prints the table docs/benchmarks.md takes. The GPU run itself needs a GPU."""

from __future__ import annotations

import pytest

from benchmarks import gpu

pytestmark = pytest.mark.integration


def test_gpu_benchmark_dry_run_prints_every_row(tmp_path, capsys):
    out = tmp_path / "gpu.md"
    assert gpu.main(["--dry-run", "--out", str(out)]) == 0
    table = out.read_text()
    for model in gpu.MODELS:
        for batch in (1, 2):
            row = next(line for line in table.splitlines() if line.startswith(f"| {model} | float32 | {batch} | 64 |"))
            cells = [c.strip() for c in row.strip("|").split("|")]
            assert float(cells[5]) > 0, row  # images a second, measured
    http = table.split("| concurrency | requests |", 1)[1].splitlines()[2]
    concurrency, requests, answered = (int(c) for c in http.strip("|").split("|")[:3])
    assert (concurrency, requests) == (4, 8) and answered == requests  # every request answered 200 or 422
