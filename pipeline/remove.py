"""``cutout remove INPUTS... -o DIR``: cut out many images through the HTTP API.

Inputs are image files, folders (their JPEG, PNG and WebP files, recursively), http(s) URLs, and
CSV files of ``sku,image_url`` rows (a header row of exactly those names is skipped). Each
result is downloaded into ``DIR`` as ``<name>.png`` (the SKU, else the file's or URL's name),
and a line about each input, done or failed, is appended to ``DIR/manifest.jsonl``. A second run
skips every input the manifest says is done whose PNG is still there, and tries the failed
ones again. A PNG is written under a temporary name and renamed, so a run that is stopped
leaves no partial file behind.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime as dt
import hashlib
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from pipeline.client import DEFAULT_URL, AsyncCutoutClient, CutoutAPIError, CutoutClientError, RetryPolicy

MANIFEST = "manifest.jsonl"
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp"})
_URL = re.compile(r"^https?://", re.IGNORECASE)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_NAME = 100


class InputError(ValueError):
    """An input that names nothing usable (a missing path, a malformed CSV row)."""


@dataclass(frozen=True)
class Item:
    """One image to cut out.

    Attributes:
        key: Its identity in the manifest: the absolute path, the URL, or ``sku:<SKU>`` for a CSV row.
        name: The stem of its PNG in the output folder.
        sku: Sent as ``sku``.
        image_url: Sent as ``image_url`` (URLs and CSV rows).
        path: The file to send as ``file`` (files and folders).
    """

    key: str
    name: str
    sku: str | None = None
    image_url: str | None = None
    path: Path | None = None

    @property
    def label(self) -> str:
        """How the summary names it."""
        return str(self.path) if self.path else (f"{self.sku} ({self.image_url})" if self.sku else str(self.image_url))


def safe_name(text: str) -> str:
    """A file stem made of letters, digits, ``.``, ``_`` and ``-`` only (never a path)."""
    name = _UNSAFE.sub("_", text).strip("._-")[:MAX_NAME]
    return name or "image"


def _from_csv(path: Path) -> Iterable[Item]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: cannot read it as CSV ({exc})") from None
    for line, row in enumerate(rows, start=1):
        cells = [c.strip() for c in row]
        if not any(cells):
            continue
        if line == 1 and [c.lower() for c in cells] == ["sku", "image_url"]:
            continue
        if len(cells) != 2 or not cells[0] or not _URL.match(cells[1]):
            raise InputError(f"{path}:{line}: expected 'sku,image_url' with an http(s) URL, got {row!r}")
        yield Item(key=f"sku:{cells[0]}", name=safe_name(cells[0]), sku=cells[0], image_url=cells[1])


def _from_url(url: str) -> Item:
    stem = Path(unquote(urlsplit(url).path)).stem
    return Item(key=url, name=safe_name(stem), image_url=url)


def _from_file(path: Path) -> Item:
    return Item(key=str(path.resolve()), name=safe_name(path.stem), path=path)


def collect(inputs: Iterable[str]) -> list[Item]:
    """The images the inputs name, each once, in the order given.

    Raises:
        InputError: An input is neither a file, a folder, an http(s) URL nor a readable CSV.
    """
    items: dict[str, Item] = {}
    for given in inputs:
        if _URL.match(given):
            found: Iterable[Item] = [_from_url(given)]
        else:
            path = Path(given)
            if path.is_dir():
                found = [_from_file(p) for p in sorted(path.rglob("*")) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
            elif path.is_file() and path.suffix.lower() == ".csv":
                found = list(_from_csv(path))
            elif path.is_file():
                found = [_from_file(path)]
            else:
                raise InputError(f"{given}: no such file or folder, and not an http(s) URL")
        for item in found:
            items.setdefault(item.key, item)
    return list(items.values())


@dataclass
class Manifest:
    """``DIR/manifest.jsonl``: one JSON line per finished attempt; the last line of a key wins."""

    path: Path
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, out_dir: Path) -> Manifest:
        """Read the manifest of ``out_dir`` (empty when there is none; unreadable lines are skipped)."""
        manifest = cls(out_dir / MANIFEST)
        if manifest.path.exists():
            for line in manifest.path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a stopped run
                if isinstance(entry, dict) and isinstance(entry.get("key"), str):
                    manifest.entries[entry["key"]] = entry
        return manifest

    def done(self, key: str) -> bool:
        """Whether ``key`` was cut out and its PNG is still in the folder."""
        entry = self.entries.get(key)
        return bool(entry and entry.get("status") == "done" and (self.path.parent / str(entry.get("file"))).is_file())

    def files(self) -> set[str]:
        """The PNG names that finished inputs own."""
        return {str(e["file"]) for k, e in self.entries.items() if self.done(k)}

    def append(self, entry: dict[str, Any]) -> None:
        """Add one line and flush it (a run stopped later keeps it)."""
        self.entries[entry["key"]] = entry
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(entry, ensure_ascii=False) + "\n")


def assign_files(items: list[Item], taken: set[str]) -> dict[str, str]:
    """A PNG name for each item: its name, or its name plus a hash of its key when that is taken."""
    files: dict[str, str] = {}
    used = set(taken)
    for item in items:
        name = f"{item.name}.png"
        if name in used:
            name = f"{item.name}-{hashlib.sha256(item.key.encode()).hexdigest()[:10]}.png"
        used.add(name)
        files[item.key] = name
    return files


@dataclass
class Summary:
    """What a run did."""

    done: int = 0
    skipped: int = 0
    failed: list[tuple[Item, str]] = field(default_factory=list)

    def lines(self, manifest: Path) -> list[str]:
        """The summary for people."""
        out = [f"{self.done} cut out, {self.skipped} already done, {len(self.failed)} failed; manifest: {manifest}"]
        out += [f"  failed: {item.label}: {why}" for item, why in self.failed]
        return out


def _describe(exc: Exception) -> tuple[str, dict[str, Any]]:
    if isinstance(exc, CutoutAPIError):
        return f"{exc.status} {exc.reason}: {exc.message}", {"status": exc.status, "reason": exc.reason, "message": exc.message}
    return str(exc), {"status": None, "reason": type(exc).__name__, "message": str(exc)}


async def run(
    items: list[Item],
    out_dir: Path,
    client: AsyncCutoutClient,
    options: dict[str, bool],
    concurrency: int = 4,
    on_progress: Callable[[], None] | None = None,
) -> Summary:
    """Cut out every item not done yet, ``concurrency`` at a time.

    Args:
        options: ``force_rmbg``, ``preserve_alpha`` and ``content_moderation`` for every request.
        on_progress: Called once for each item finished (done or failed).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = Manifest.load(out_dir)
    summary = Summary()
    todo = [item for item in items if not manifest.done(item.key)]
    summary.skipped = len(items) - len(todo)
    files = assign_files(todo, manifest.files())
    slots = asyncio.Semaphore(max(1, concurrency))

    async def one(item: Item) -> None:
        name = files[item.key]
        entry: dict[str, Any] = {"key": item.key, "sku": item.sku, "input": str(item.path or item.image_url)}
        async with slots:
            try:
                data = await asyncio.to_thread(item.path.read_bytes) if item.path else None
                result = await client.cutout(image_url=item.image_url, file=data, sku=item.sku, **options)
                png = await client.download(result.result_url)
                part = out_dir / f".{name}.part"
                await asyncio.to_thread(part.write_bytes, png)
                os.replace(part, out_dir / name)
            except (CutoutClientError, OSError) as exc:
                why, error = _describe(exc)
                entry.update(status="failed", error=error)
                summary.failed.append((item, why))
            else:
                entry.update(status="done", file=name, **result.model_dump(include={"crop", "source"}))
                summary.done += 1
        entry["at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        manifest.append(entry)
        if on_progress:
            on_progress()

    await asyncio.gather(*(one(item) for item in todo))
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``cutout remove``."""
    parser.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="image files, folders, http(s) URLs, CSV files of sku,image_url"
    )
    parser.add_argument("-o", "--out", type=Path, required=True, help="folder for the PNGs and manifest.jsonl")
    parser.add_argument("--url", default=None, help=f"the service (default: $CUTOUT_URL, else {DEFAULT_URL})")
    parser.add_argument("--token", default=None, help="API token (default: $CUTOUT_TOKEN, else the token file)")
    parser.add_argument(
        "--token-file",
        type=Path,
        default=None,
        help="file holding the token (default: <data_dir>/local.token, written by make serve)",
    )
    parser.add_argument("-j", "--concurrency", type=int, default=4, help="requests at once (default 4)")
    parser.add_argument("--force-rmbg", action="store_true", help="run background removal on inputs with alpha too")
    parser.add_argument("--preserve-alpha", action="store_true", help="keep the input's alpha values")
    parser.add_argument("--content-moderation", action="store_true", help="moderate input and output")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for one answer (default 120)")
    parser.add_argument("--max-attempts", type=int, default=8, help="attempts per image, retries of 429/503 included (default 8)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def resolve_token(flag: str | None, token_file: Path | None, default_file: Path, environ: Mapping[str, str]) -> str | None:
    """The token: the flag, else ``CUTOUT_TOKEN``, else the first line of the token file."""
    token = flag or environ.get("CUTOUT_TOKEN")
    if token:
        return token.strip()
    path = token_file or default_file
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def command(args: argparse.Namespace, default_token_file: Path, environ: Mapping[str, str] | None = None) -> int:
    """Run ``cutout remove``; 0 when every input is done, 1 when any failed, 2 for bad usage."""
    environ = os.environ if environ is None else environ
    url = args.url or environ.get("CUTOUT_URL") or DEFAULT_URL
    token = resolve_token(args.token, args.token_file, default_token_file, environ)
    if not token:
        where = args.token_file or default_token_file
        print(
            f"cutout remove: no API token: pass --token, set CUTOUT_TOKEN, or put one in {where} (make serve does)",
            file=sys.stderr,
        )
        return 2
    try:
        items = collect(args.inputs)
    except InputError as exc:
        print(f"cutout remove: {exc}", file=sys.stderr)
        return 2
    if not items:
        print("cutout remove: the inputs name no JPEG, PNG or WebP file", file=sys.stderr)
        return 2
    options = {
        "force_rmbg": args.force_rmbg,
        "preserve_alpha": args.preserve_alpha,
        "content_moderation": args.content_moderation,
    }
    summary = asyncio.run(_run_with_progress(items, args, url, token, options))
    for line in summary.lines(args.out / MANIFEST):
        print(line, file=sys.stderr if line.startswith("  failed") else sys.stdout)
    return 1 if summary.failed else 0


async def _run_with_progress(
    items: list[Item], args: argparse.Namespace, url: str, token: str, options: dict[str, bool]
) -> Summary:
    from tqdm import tqdm

    retry = RetryPolicy(max_attempts=max(1, args.max_attempts))
    manifest = Manifest.load(args.out)
    skipped = sum(manifest.done(item.key) for item in items)
    with tqdm(total=len(items), initial=skipped, unit="image", disable=args.no_progress or None, desc="cutout") as bar:
        async with AsyncCutoutClient(url, token, timeout_s=args.timeout, retry=retry) as client:
            return await run(items, args.out, client, options, args.concurrency, on_progress=lambda: bar.update(1))
