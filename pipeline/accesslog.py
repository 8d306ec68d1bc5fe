"""The access log: one line per answered request, as text or as a JSON object.

The record holds only what an operator needs to follow a request: its id, the organization,
the SKU, the status, the error reason and the stage times. It never holds a token, the
image (URL or bytes), or a result URL and its signature: a result's path is logged as
``/results/...``. ``CUTOUT_ACCESS_LOG_FORMAT`` picks the form (:mod:`pipeline.settings`).
"""

from __future__ import annotations

import json
import logging
import logging.handlers
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from pipeline.storage import RESULTS_ROUTE

MAX_PATH_CHARS = 200
# Rotation as Ray's own log files: 512 MiB, five old files kept.
ROTATE_BYTES = 512 * 1024 * 1024
ROTATE_BACKUPS = 5


@dataclass(frozen=True)
class AccessRecord:
    """What the access log says about one answered request.

    Attributes:
        request_id: The id also sent as ``X-Request-Id`` and used in the service's other lines.
        method: The HTTP method, or ``CALL`` for a call through the app handle.
        path: The HTTP path, or ``handle``.
        status: The status answered (the handle's: the status its error maps to, else 200).
        total_ms: Milliseconds from arrival to answer.
        org: The authenticated organization, None before authentication.
        sku: The request's ``sku``, when it was parsed and given.
        reason: The error body's ``reason``; None for a success.
        timings: Milliseconds by Server-Timing stage (successes only).
    """

    request_id: str
    method: str
    path: str
    status: int
    total_ms: float
    org: str | None = None
    sku: str | None = None
    reason: str | None = None
    timings: Mapping[str, float] = field(default_factory=dict)

    @property
    def logged_path(self) -> str:
        """The path as logged: a result URL's name is dropped, a long path is cut."""
        if self.path.startswith(RESULTS_ROUTE):
            return RESULTS_ROUTE + "..."
        return self.path[:MAX_PATH_CHARS]


def text_line(record: AccessRecord) -> str:
    """The human-readable line (the default form)."""
    reason = f" {record.reason}" if record.reason else ""
    return (
        f"request {record.request_id} org={record.org or '-'} {record.method} {record.logged_path}"
        f" -> {record.status}{reason} in {record.total_ms:.0f} ms"
    )


def json_line(record: AccessRecord, at: float) -> str:
    """One JSON object on one line (control characters in values are escaped).

    Args:
        at: The answer's Unix time, written as ISO 8601 UTC with milliseconds.
    """
    when = datetime.fromtimestamp(at, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    body = {
        "time": when,
        "request_id": record.request_id,
        "method": record.method,
        "path": record.logged_path,
        "org": record.org,
        "sku": record.sku,
        "status": record.status,
        "reason": record.reason,
        "stages_ms": {name: round(ms, 1) for name, ms in record.timings.items() if name != "total"},
        "total_ms": round(record.total_ms, 1),
    }
    return json.dumps(body, ensure_ascii=True, separators=(",", ":"))


def json_file_logger(path: Path) -> logging.Logger:
    """A logger that writes bare lines (no prefix) to ``path``, rotated like Ray's own logs.

    The logger does not propagate: its lines appear only in that file.
    """
    logger = logging.getLogger(f"cutout.access.{path.stem}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    if not logger.handlers:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(path, maxBytes=ROTATE_BYTES, backupCount=ROTATE_BACKUPS, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    return logger
