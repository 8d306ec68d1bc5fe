"""``cutout batch CATALOG.csv --out results.jsonl``: a catalog cut out inside the Ray cluster.

A Ray Data job: the rows of the catalog (``sku,image_url``) become a dataset whose rows are
mapped, on the cluster's nodes, by a pool of actors that call the running application through
its handle (``Ingress.cutout``) — no HTTP, no API token: the caller is inside the cluster and
names its organization. At most ``concurrency`` rows are in the application at once. Each answer
is appended to the output as one JSON line as soon as it comes back, so a run that stops can be
started again: rows whose last line is a 200 or a final error are skipped, rows refused for the
moment (429/503) or never answered are run again.

The driver may run anywhere that reaches the cluster (``--address``, or ``RAY_ADDRESS``), or as
a Ray job: ``ray job submit -- cutout batch catalog.csv --out results.jsonl``.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

APP_NAME = "product_cutout"
RETRYABLE = (429, 503)
ATTEMPTS = 3  # per row: a 429/503 is retried after its Retry-After, at most this many times in all
MAX_WAIT_S = 30.0  # the longest Retry-After honoured within a row
ROWS_PER_ACTOR = 8  # rows one mapping actor keeps in the application at once


@dataclass
class Summary:
    """What a run did: rows done, failed by reason, skipped as already in the output."""

    total: int = 0
    skipped: int = 0
    done: int = 0
    failed: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    def line(self) -> str:
        failed = sum(self.failed.values())
        reasons = ", ".join(f"{reason} {n}" for reason, n in self.failed.most_common())
        rate = (self.done + failed) / self.seconds if self.seconds > 0 else 0.0
        return (
            f"{self.total} rows: {self.done} done, {failed} failed{f' ({reasons})' if reasons else ''}, "
            f"{self.skipped} already in the output; {rate:.1f} rows/s"
        )


def finished_skus(out: Path) -> set[str]:
    """SKUs whose last line in ``out`` is final: a 200, or an error that a retry would not change."""
    last: dict[str, int] = {}
    if out.exists():
        for line in out.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
                last[str(row["sku"])] = int(row["status"])
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a crash: that row runs again
    return {sku for sku, status in last.items() if status and status not in RETRYABLE}


def cutout_row(handle: Any, org: str, row: dict[str, str]) -> dict[str, Any]:
    """One catalog row through the handle, retrying a 429/503 after its Retry-After.

    Returns:
        The output line: ``sku``, ``image_url``, ``status``, and ``result_url`` (200) or
        ``reason`` (an error); ``status`` 0 when the application could not be reached.
    """
    from pipeline.errors import CutoutError

    out: dict[str, Any] = {"sku": row["sku"], "image_url": row["image_url"]}
    for attempt in range(ATTEMPTS):
        try:
            body = handle.cutout.remote(org=org, sku=row["sku"], image_url=row["image_url"]).result()
            return {**out, "status": 200, "result_url": body["result_url"], "crop": body.get("crop")}
        except CutoutError as exc:
            if exc.status not in RETRYABLE or attempt == ATTEMPTS - 1:
                return {**out, "status": exc.status, "reason": exc.reason}
            time.sleep(min(MAX_WAIT_S, float(exc.retry_after or 1)))
        except Exception as exc:  # the application itself unreachable: run again on resume
            return {**out, "status": 0, "reason": type(exc).__name__}
    raise AssertionError("unreachable")


class _Caller:
    """A Ray Data mapping actor: calls the application for a batch of rows at once."""

    def __init__(self, org: str) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from ray import serve

        self.org = org
        self.handle = serve.get_app_handle(APP_NAME)
        self.pool = ThreadPoolExecutor(max_workers=ROWS_PER_ACTOR)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        rows = [{"sku": str(s), "image_url": str(u)} for s, u in zip(batch["sku"], batch["image_url"])]
        lines = list(self.pool.map(lambda r: cutout_row(self.handle, self.org, r), rows))
        return {"line": [json.dumps(line) for line in lines]}


def run(
    rows: Iterable[tuple[str, str]],
    out: Path,
    org: str,
    concurrency: int = 8,
    address: str | None = None,
    progress: Any = sys.stderr,
) -> Summary:
    """Cut out every row not already finished in ``out``, appending one JSON line per row.

    Args:
        rows: ``(sku, image_url)`` pairs; a SKU that comes twice is run once.
        out: The JSON Lines output, appended to.
        org: The organization the results are stored under (and rate-limited as).
        concurrency: Most rows in the application at once.
        address: The Ray cluster; None: ``RAY_ADDRESS`` or the local one.
        progress: Where the progress line and the summary are written (None: nowhere).
    """
    import ray
    import ray.data

    catalog = dict(rows)
    done_before = finished_skus(out)
    todo = [{"sku": sku, "image_url": url} for sku, url in catalog.items() if sku not in done_before]
    summary = Summary(total=len(catalog), skipped=len(catalog) - len(todo))
    started = time.monotonic()
    if todo:
        if not ray.is_initialized():
            ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # one progress line of our own instead
        actors = max(1, math.ceil(concurrency / ROWS_PER_ACTOR))
        per_actor = max(1, math.ceil(concurrency / actors))
        dataset = ray.data.from_items(todo, override_num_blocks=max(1, math.ceil(len(todo) / per_actor)))
        mapped = dataset.map_batches(
            _Caller,
            fn_constructor_kwargs={"org": org},
            batch_size=per_actor,
            concurrency=actors,
            num_cpus=0.25,
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        shown = 0.0
        with out.open("a", encoding="utf-8") as f:
            for item in mapped.iter_rows():
                line = json.loads(item["line"])
                f.write(item["line"] + "\n")
                f.flush()
                if line["status"] == 200:
                    summary.done += 1
                else:
                    summary.failed[line.get("reason") or str(line["status"])] += 1
                now = time.monotonic()
                if progress is not None and now - shown >= 1.0:
                    shown = now
                    finished = summary.done + sum(summary.failed.values())
                    print(f"\r{finished}/{len(todo)} rows ({summary.done} done)", end="", file=progress, flush=True)
    summary.seconds = time.monotonic() - started
    if progress is not None:
        print(("\r" if todo else "") + summary.line(), file=progress)
    return summary


def command(catalog: Path, out: Path, org: str, concurrency: int, address: str | None) -> int:
    """``cutout batch``: exit status 0 when every row is done, 1 when some failed, 2 on bad input."""
    from pipeline.remove import InputError, collect

    if catalog.suffix.lower() != ".csv":
        print(f"cutout batch: {catalog}: expected a .csv of sku,image_url", file=sys.stderr)
        return 2
    try:
        items = collect([str(catalog)])
    except InputError as exc:
        print(f"cutout batch: {exc}", file=sys.stderr)
        return 2
    summary = run(((i.sku, i.image_url) for i in items), out, org, concurrency, address)
    return 0 if not summary.failed else 1
