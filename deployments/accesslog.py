"""What the ingress reports for each answered request: its metrics and its access-log line."""

from __future__ import annotations

import logging
import logging.handlers
import time
from pathlib import Path

from ray import serve

from deployments.metrics import RequestMetrics, route_of
from pipeline.accesslog import AccessRecord, json_file_logger, json_line, text_line

logger = logging.getLogger("ray.serve")
HEALTH_ROUTE = "/healthz"


def serve_log_dir() -> Path | None:
    """The folder of this replica's Serve log file (``logging_config.logs_dir`` honoured)."""
    for handler in logging.getLogger("ray.serve").handlers:
        target = handler.target if isinstance(handler, logging.handlers.MemoryHandler) else handler
        if isinstance(target, logging.FileHandler):
            return Path(target.baseFilename).parent
    return None


class RequestReporter:
    """Counts each answered request and writes its access-log line.

    Args:
        log_format: ``text`` (a line in the replica's Serve log) or ``json`` (one JSON object
            per line in ``access_<deployment>_<replica>.jsonl`` beside that log).
    """

    def __init__(self, log_format: str) -> None:
        self.metrics = RequestMetrics()
        self.json_log: logging.Logger | None = None
        if log_format == "json":
            folder = serve_log_dir()
            if folder is None:
                logger.warning("no Serve log folder found; the JSON access log falls back to text lines")
            else:
                replica = serve.get_replica_context()
                self.json_log = json_file_logger(folder / f"access_{replica.deployment}_{replica.replica_id.unique_id}.jsonl")

    def report(self, record: AccessRecord) -> None:
        """Record the metrics of one request and log its line (health checks are only counted:
        a load balancer polls them every few seconds)."""
        self.metrics.record(route_of(record.path), record.status, record.reason, record.timings)
        if record.path == HEALTH_ROUTE:
            return
        if self.json_log is not None:
            self.json_log.info(json_line(record, time.time()))
        else:
            logger.info(text_line(record))
