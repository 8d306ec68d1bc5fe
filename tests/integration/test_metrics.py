"""What an operator sees: the Prometheus metrics on Ray's export port, every one the Grafana
dashboard queries among them, and the JSON access log (one line per request, no secrets).

One service with its metrics exported on a free port (as ``make serve`` does on 8080), the
JSON access log on, and Ray's metrics reported every second instead of every ten; one round of
traffic (successes, a validation error, a wrong token, a moderation refusal, a burst over the
rate limit), then the checks read what it left.
"""

from __future__ import annotations

import json
import re
import time
from collections import defaultdict
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import Service, access_log_lines, running_service
from tests.images import b64, encode, eval_image, product_photo

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "cluster" / "grafana" / "cutout-dashboard.json"
SUCCESSES = 3
SCRAPE_DEADLINE_S = 90
Samples = dict[str, list[tuple[dict[str, str], float]]]


@pytest.fixture(scope="module")
def metered(eval_dir) -> Service:
    env = {"CUTOUT_ACCESS_LOG_FORMAT": "json", "RAY_metrics_report_interval_ms": "1000"}
    with running_service(env_extra=env, metrics=True) as svc:
        yield svc


@pytest.fixture(scope="module")
def traffic(metered: Service) -> dict:
    """Send one round of requests; what came back, by kind."""
    sent: dict[str, list[requests.Response]] = defaultdict(list)
    for i in range(SUCCESSES):
        photo = b64(encode(product_photo(320 + 32 * i, 240), "JPEG", quality=90))
        sent["ok"].append(metered.post({"file": photo, "sku": f"MUG-{i}"}))
    sent["invalid"].append(metered.post({"file": "AAAA", "sku": 5}))
    sent["unauthorized"].append(metered.post({"file": "AAAA"}, token="ct_wrong-token-for-the-metrics-test"))
    face = b64(eval_image("person1.jpg").read_bytes())
    sent["moderated"].append(metered.post({"file": face, "content_moderation": True, "sku": "FACE-1"}))
    # burst of 5 for this token: the sixth and later are refused before the body is read
    for _ in range(7):
        sent["limited"].append(metered.post({"file": "AAAA"}, token=metered.limited_token))
    sent["results"] = [requests.get(r.json()["result_url"], timeout=30) for r in sent["ok"]]
    assert [r.status_code for r in sent["ok"]] == [200] * SUCCESSES
    assert [r.status_code for r in sent["results"]] == [200] * SUCCESSES
    assert sent["invalid"][0].status_code == 400 and sent["unauthorized"][0].status_code == 401
    assert sent["moderated"][0].status_code == 422
    assert 429 in [r.status_code for r in sent["limited"]]
    return sent


def dashboard_metric_names() -> set[str]:
    """Every metric name in the dashboard's PromQL expressions."""
    exprs = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                exprs.append(node["expr"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(DASHBOARD.read_text()))
    assert exprs, "the dashboard has no queries"
    # metric names: identifiers not followed by '(' (functions) and not inside {...} or by/without (...)
    names = set()
    for expr in exprs:
        bare = re.sub(r"\{[^}]*\}|\b(by|without)\s*\([^)]*\)|\[[^\]]*\]", " ", expr)
        names |= {m for m in re.findall(r"\b[A-Za-z_:][A-Za-z0-9_:]*\b(?!\s*\()", bare) if m.startswith("ray_")}
    return names


def scrape(url: str) -> Samples:
    samples: Samples = defaultdict(list)
    for family in text_string_to_metric_families(requests.get(url, timeout=10).text):
        for sample in family.samples:
            samples[sample.name].append((sample.labels, sample.value))
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name`` over the series whose labels include ``labels``."""
    return sum(v for have, v in samples.get(name, []) if all(have.get(k) == x for k, x in labels.items()))


def scrape_until(url: str, done) -> Samples:
    """Scrape until ``done(samples)`` (Ray exports with a delay), or the deadline."""
    deadline = time.monotonic() + SCRAPE_DEADLINE_S
    while True:
        samples = scrape(url)
        if done(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(2)


def test_every_metric_the_dashboard_queries_is_exported(metered, traffic):
    wanted = dashboard_metric_names()
    assert any(n.startswith("ray_serve_") for n in wanted) and any(n.startswith("ray_cutout_") for n in wanted)
    samples = scrape_until(metered.metrics_url, lambda s: wanted <= set(s))
    exported = sorted(n for n in samples if n.startswith("ray_serve_") or n.startswith("ray_cutout_"))
    assert sorted(wanted - set(samples)) == [], f"queried by the dashboard but not exported; exported: {exported}"


def test_counters_and_histograms_count_the_traffic(metered, traffic):
    url, ok = metered.metrics_url, SUCCESSES
    stored = sum(len(r.content) for r in traffic["results"])

    def settled(s: Samples) -> bool:
        return (
            total(s, "ray_cutout_requests_total", route="/product/cutout", status="200", reason="ok") >= ok
            and total(s, "ray_cutout_stored_bytes_total", backend="local") >= stored
            and total(s, "ray_cutout_refusals_total", status="429", reason="rate_limited") >= 1
            and total(s, "ray_cutout_moderation_refusals_total") >= 1
        )

    s = scrape_until(url, settled)
    assert total(s, "ray_cutout_requests_total", route="/product/cutout", status="200", reason="ok") == ok
    assert total(s, "ray_cutout_requests_total", route="/results", status="200", reason="ok") == ok
    assert total(s, "ray_cutout_requests_total", route="/product/cutout", status="400", reason="invalid_parameter") == 1
    assert total(s, "ray_cutout_refusals_total", status="401", reason="unauthorized") == 1
    limited = sum(r.status_code == 429 for r in traffic["limited"])
    assert total(s, "ray_cutout_refusals_total", status="429", reason="rate_limited") == limited
    assert total(s, "ray_cutout_moderation_refusals_total", stage="input", category="FACE_FEMALE") == 1
    # the bytes stored are the bytes the result URLs serve
    assert total(s, "ray_cutout_stored_bytes_total", backend="local") == stored
    assert total(s, "ray_cutout_stored_results_total", backend="local") == ok
    # every success observed once per stage (the moderated photo never reached the segmenter)
    assert total(s, "ray_cutout_stage_duration_ms_count", stage="segment") == ok
    assert total(s, "ray_cutout_stage_duration_ms_count", stage="total") == ok
    # the segmenter's own: at least once per success (a retry inside the graph runs it again)
    batches = total(s, "ray_cutout_segmenter_batch_size_count")
    assert batches >= ok and total(s, "ray_cutout_segmenter_queue_wait_ms_count") == batches
    # one request at a time: every batch held one input
    assert [v for labels, v in s["ray_cutout_segmenter_batch_size_bucket"] if float(labels["le"]) == 1] == [batches]
    assert total(s, "ray_cutout_input_megapixels_count", format="jpeg") == ok + 1
    # no organization or sku ever becomes a label
    for series in s.values():
        for labels, _ in series:
            assert not {"acme", "limited", "MUG-0", "FACE-1"} & set(labels.values()), labels


def test_json_access_log_has_one_line_per_request_and_no_secret(metered, traffic):
    answered = [r for kind, rs in traffic.items() for r in rs]
    ids = {r.headers["X-Request-Id"] for r in answered}
    deadline = time.monotonic() + 30  # the file handler writes as each request ends; allow for slow disks
    while not ids <= {json.loads(x)["request_id"] for x in access_log_lines(metered.log_dir)} and time.monotonic() < deadline:
        time.sleep(1)
    lines = access_log_lines(metered.log_dir)
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    by_id = defaultdict(list)
    for record in records:
        by_id[record["request_id"]].append(record)
    assert all(len(by_id[i]) == 1 for i in ids), "one line per request"

    ok = [by_id[r.headers["X-Request-Id"]][0] for r in traffic["ok"]]
    assert [(x["org"], x["sku"], x["status"], x["reason"]) for x in ok] == [
        ("acme", f"MUG-{i}", 200, None) for i in range(SUCCESSES)
    ]
    for x in ok:
        assert {"fetch", "decode", "segment", "compose", "encode", "store"} <= set(x["stages_ms"])
        assert x["total_ms"] >= max(x["stages_ms"].values())
    moderated = by_id[traffic["moderated"][0].headers["X-Request-Id"]][0]
    assert (moderated["status"], moderated["reason"], moderated["sku"]) == (422, "content_moderation_failed", "FACE-1")
    wrong = by_id[traffic["unauthorized"][0].headers["X-Request-Id"]][0]
    assert (wrong["status"], wrong["org"]) == (401, None)
    limited = [by_id[r.headers["X-Request-Id"]][0] for r in traffic["limited"] if r.status_code == 429]
    assert limited and all((x["org"], x["reason"]) == ("limited", "rate_limited") for x in limited)
    result = by_id[traffic["results"][0].headers["X-Request-Id"]][0]
    assert result["path"] == "/results/..." and result["status"] == 200

    text = "\n".join(lines)
    for secret in (metered.token, metered.limited_token, "ct_wrong-token-for-the-metrics-test"):
        assert secret not in text
    assert "signature" not in text and "expires=" not in text
    assert "/9j/" not in text  # the start of a base64 JPEG: no image bytes
