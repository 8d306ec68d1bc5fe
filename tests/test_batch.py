"""``cutout batch`` without a cluster: what a row becomes, and which rows a resumed run skips.

The application handle is a stand-in here; tests/integration/test_multinode.py runs the job on
the multi-node cluster.
"""

from __future__ import annotations

import json

from deployments import batch
from pipeline.cli import main
from pipeline.errors import CutoutError, unavailable


class _Response:
    def __init__(self, answer):
        self.answer = answer

    def result(self):
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


class _Handle:
    def __init__(self, *answers):
        self.answers, self.calls = list(answers), []
        self.cutout = self

    def remote(self, **kwargs):
        self.calls.append(kwargs)
        return _Response(self.answers.pop(0))


def test_a_row_becomes_one_line_with_the_result_or_the_reason(monkeypatch):
    monkeypatch.setattr(batch.time, "sleep", lambda s: None)
    row = {"sku": "A-1", "image_url": "http://x/a.jpg"}
    ok = batch.cutout_row(_Handle({"result_url": "u", "crop": [0, 0, 1, 1]}), "acme", row)
    assert ok == {**row, "status": 200, "result_url": "u", "crop": [0, 0, 1, 1]}
    missing = CutoutError(460, "failed_to_download_image", "The image could not be downloaded.", "image_url")
    assert batch.cutout_row(_Handle(missing), "acme", row) == {**row, "status": 460, "reason": "failed_to_download_image"}
    # a 503 is retried after its Retry-After; three in a row are reported as such
    busy = unavailable("busy", retry_after=2)
    handle = _Handle(busy, {"result_url": "u"})
    assert batch.cutout_row(handle, "acme", row)["status"] == 200 and len(handle.calls) == 2
    assert handle.calls[0] == {"org": "acme", **row}
    assert batch.cutout_row(_Handle(busy, busy, busy), "acme", row)["status"] == 503
    assert batch.cutout_row(_Handle(RuntimeError("gone")), "acme", row) == {**row, "status": 0, "reason": "RuntimeError"}


def test_a_resumed_run_skips_rows_finished_before_and_reruns_refused_ones(tmp_path):
    out = tmp_path / "results.jsonl"
    lines = [
        {"sku": "done", "status": 200},
        {"sku": "gone", "status": 460, "reason": "failed_to_download_image"},
        {"sku": "busy", "status": 503, "reason": "overloaded"},
        {"sku": "later", "status": 503},
        {"sku": "later", "status": 200},  # the last line of a SKU wins
        {"sku": "lost", "status": 0},
    ]
    out.write_text("\n".join(json.dumps(x) for x in lines) + '\n{"sku": "cut', encoding="utf-8")
    assert batch.finished_skus(out) == {"done", "gone", "later"}
    summary = batch.run([("done", "http://x/1"), ("gone", "http://x/2"), ("later", "http://x/3")], out, "acme", progress=None)
    assert (summary.total, summary.skipped, summary.done, sum(summary.failed.values())) == (3, 3, 0, 0)


def test_the_command_refuses_a_catalog_it_cannot_read(tmp_path, capsys):
    bad = tmp_path / "catalog.csv"
    bad.write_text("sku,image_url\nA-1,not a url\n", encoding="utf-8")
    assert main(["batch", str(bad), "--out", str(tmp_path / "r.jsonl")]) == 2
    assert "expected 'sku,image_url'" in capsys.readouterr().err
    assert main(["batch", str(tmp_path / "catalog.txt"), "--out", str(tmp_path / "r.jsonl")]) == 2
    assert main(["batch", str(bad), "--out", str(tmp_path / "r.jsonl"), "--concurrency", "0"]) == 2
