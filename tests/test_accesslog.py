"""The access-log line and the metrics' label vocabularies, without a cluster."""

from __future__ import annotations

import json
import re
from pathlib import Path

from deployments import metrics
from pipeline.accesslog import AccessRecord, json_file_logger, json_line, text_line

ROOT = Path(__file__).resolve().parents[1]
AT = 1795560181.25  # 2026-11-24T22:43:01.250Z


def test_json_line_holds_the_request_and_nothing_else():
    record = AccessRecord(
        "abc123",
        "POST",
        "/product/cutout",
        200,
        412.34,
        org="acme",
        sku="MUG-1",
        timings={"fetch": 1.23, "segment": 300.06, "total": 412.34},
    )
    line = json_line(record, AT)
    assert "\n" not in line
    assert json.loads(line) == {
        "time": "2026-11-24T22:43:01.250Z",
        "request_id": "abc123",
        "method": "POST",
        "path": "/product/cutout",
        "org": "acme",
        "sku": "MUG-1",
        "status": 200,
        "reason": None,
        "stages_ms": {"fetch": 1.2, "segment": 300.1},
        "total_ms": 412.3,
    }


def test_a_result_url_is_logged_without_its_name_and_signature():
    record = AccessRecord("r1", "GET", "/results/local/2026/11/24/816fa2.png", 403, 3.0, reason="invalid_signature")
    body = json.loads(json_line(record, AT))
    assert body["path"] == "/results/..." and body["reason"] == "invalid_signature" and body["org"] is None
    assert "816fa2" not in text_line(record)


def test_a_hostile_path_or_sku_stays_on_one_line():
    record = AccessRecord("r2", "POST", '/x\n{"forged": 1}' + "a" * 1000, 404, 1.0, sku="A\u2028B", reason="not_found")
    line = json_line(record, AT)
    assert len(line.splitlines()) == 1 and "\u2028" not in line  # escaped: ASCII only
    body = json.loads(line)
    assert body["path"].startswith("/x\n{") and len(body["path"]) == 200
    assert body["sku"] == "A\u2028B"
    assert "\n" not in text_line(AccessRecord("r3", "GET", "/ok", 404, 1.0))


def test_text_line_reads_as_before_with_the_reason():
    record = AccessRecord("r4", "POST", "/product/cutout", 429, 2.4, org="limited", reason="rate_limited")
    assert text_line(record) == "request r4 org=limited POST /product/cutout -> 429 rate_limited in 2 ms"
    assert text_line(AccessRecord("r5", "POST", "/product/cutout", 401, 1.0)).startswith("request r5 org=- ")


def test_json_file_logger_writes_bare_lines(tmp_path):
    path = tmp_path / "serve" / "access_Ingress_x.jsonl"
    log = json_file_logger(path)
    log.info('{"a":1}')
    log.info('{"a":2}')
    for handler in log.handlers:
        handler.flush()
    assert path.read_text().splitlines() == ['{"a":1}', '{"a":2}']


def test_reasons_are_exactly_those_of_the_api_reference():
    table = (ROOT / "docs" / "api.md").read_text().split("| status | `reason` | when |", 1)[1].split("\n\n", 1)[0]
    documented = {m for row in table.splitlines()[2:] for m in re.findall(r"`([a-z0-9_]+)`", row.split("|")[2])}
    assert documented == set(metrics.REASONS) - {metrics.OK}
    statuses = {row.split("|")[1].strip() for row in table.splitlines()[2:]}
    assert statuses == set(metrics.STATUSES) - {"200"}


def test_label_values_are_bounded():
    assert metrics.label("rate_limited", metrics.REASONS) == "rate_limited"
    assert metrics.label("ct_secret-token", metrics.REASONS) == "other"
    assert metrics.label(418, metrics.STATUSES) == "other"
    assert metrics.route_of("/results/local/2026/x.png") == "/results"
    assert metrics.route_of("/product/cutout") == "/product/cutout"
    assert metrics.route_of("/wp-admin/" + "x" * 50) == "other"


def test_every_server_timing_stage_has_a_histogram_label():
    names = set()
    for path in [*(ROOT / "pipeline").glob("*.py"), *(ROOT / "deployments").glob("*.py")]:
        code = path.read_text()
        names |= set(re.findall(r'timed\(timings, "([a-z_]+)"\)', code))  # fetch, decode, compose...
        names |= set(re.findall(r'timings\["([a-z_]+)"\] =', code))  # the ingress's total
        for entries in re.findall(r"Segmentation\(p, \{(.*?)\}\)", code, re.S):  # the segmenter's
            names |= set(re.findall(r'"([a-z_]+)":', entries))
    assert {"fetch", "segment_queue", "segment", "store", "total"} <= names
    assert names <= set(metrics.STAGES)
