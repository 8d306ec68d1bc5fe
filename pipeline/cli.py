"""The ``cutout`` command: tokens, settings and evaluation (:mod:`pipeline.evaluation.cli`).

    cutout token create ORG [--rpm N]  print a new token for ORG (alone on one line)
    cutout token revoke TOKEN_OR_ID    remove a token
    cutout token list                  ids, organizations and dates (never tokens)
    cutout token init-local [ORG]      first start of `make serve`: a token for ORG in a 0600 file
    cutout remove INPUTS... -o DIR     cut out files, folders, URLs or a CSV of sku,image_url through
                                       the API (a progress bar, DIR/manifest.jsonl, resumable)
    cutout settings [--check]          the settings table, or validate the current settings
    cutout eval [--set S] [--predictions NAME=DIR ...]
                                       quality of the real pipeline on the evaluation set (see docs/quality.md)
    cutout weights pull MODEL --to PATH|gs://BUCKET/PREFIX [--revision COMMIT] [--sha256 HEX] [--accept-licence]
                                       a model's published checkpoint from the Hugging Face hub, verified
                                       and stored as safetensors; prints the settings to use

The tokens file is the one the service uses: ``args`` of ``serve_config.yaml`` (``--config``)
overridden by ``CUTOUT_*`` environment variables.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from pipeline import remove, tokens
from pipeline.evaluation import cli as evaluation_cli
from pipeline.settings import Settings, SettingsError, load_settings, settings_table

APP_NAME = "product_cutout"


def config_args(config: Path) -> dict[str, Any]:
    """The ``args:`` of the product_cutout application in a Serve config file ({} if absent)."""
    if not config.exists():
        return {}
    import yaml

    data = yaml.safe_load(config.read_text()) or {}
    for app in data.get("applications", []):
        if app.get("name") == APP_NAME:
            return dict(app.get("args") or {})
    return {}


def _settings(config: Path) -> Settings:
    return load_settings(config_args(config))


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cutout`` console script."""
    parser = argparse.ArgumentParser(prog="cutout", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path("serve_config.yaml"), help="Serve config to read args from")
    sub = parser.add_subparsers(dest="command", required=True)
    tok = sub.add_parser("token", help="manage API tokens").add_subparsers(dest="action", required=True)
    create = tok.add_parser("create", help="create a token")
    create.add_argument("org")
    create.add_argument("--rpm", type=int, default=None, help="rate limit override for this token (requests per minute)")
    tok.add_parser("revoke", help="revoke a token (by token or id)").add_argument("token_or_id")
    tok.add_parser("list", help="list token records")
    init = tok.add_parser("init-local", help="create a token for ORG once, kept in <data_dir>/<ORG>.token")
    init.add_argument("org", nargs="?", default="local")
    st = sub.add_parser("settings", help="print the settings table or check the current settings")
    st.add_argument("--check", action="store_true")
    evaluation_cli.add_arguments(sub.add_parser("eval", help="score the pipeline on images with ground truth"))
    weights = sub.add_parser("weights", help="model weights").add_subparsers(dest="action", required=True)
    pull = weights.add_parser("pull", help="download a published checkpoint (HF_ENDPOINT, HF_TOKEN), verify and store it")
    pull.add_argument("model", help="registry name, e.g. birefnet-general")
    pull.add_argument("--to", required=True, help="a local folder or gs://BUCKET/PREFIX")
    pull.add_argument("--revision", default=None, help="hub commit (40 hex digits); default: the one this version pins")
    pull.add_argument("--sha256", default=None, help="the file's SHA-256, for a revision this version does not pin")
    pull.add_argument("--accept-licence", action="store_true", help="accept a licence that forbids commercial use")
    remove.add_arguments(sub.add_parser("remove", help="cut out files, folders, URLs or a CSV of sku,image_url through the API"))
    batch = sub.add_parser("batch", help="cut out a CSV of sku,image_url inside the Ray cluster (a Ray Data job)")
    batch.add_argument("catalog", type=Path, help="CSV with rows of sku,image_url (a header row is allowed)")
    batch.add_argument("--out", type=Path, required=True, help="JSON Lines output, appended to; finished rows are skipped")
    batch.add_argument("--org", default="local", help="organization the results are stored and rate-limited under")
    batch.add_argument("--concurrency", type=int, default=8, help="most rows in the application at once")
    batch.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, or the local cluster)")
    args = parser.parse_args(argv)
    if args.command == "batch":  # a Ray driver (deployments.batch), loaded by name only when asked for
        return _batch(args)
    if args.command == "weights":
        return _weights_pull(args)

    if args.command == "remove":  # a client: the service's settings only say where `make serve` keeps its token
        return remove.command(args, _local_token_file(args.config))

    try:
        if args.command == "settings":
            if args.check:
                s = _settings(args.config)
                print(f"settings are valid (data_dir={s.data_dir})")
            else:
                print(settings_table())
            return 0
        settings = _settings(args.config)
    except SettingsError as exc:
        print(f"cutout: {exc}", file=sys.stderr)
        return 2
    if args.command == "eval":
        return evaluation_cli.run(args, settings)
    path = Path(settings.tokens_file or "")
    try:
        if args.action == "create":
            print(tokens.create_token(path, args.org, args.rpm))
        elif args.action == "revoke":
            removed = tokens.revoke(path, args.token_or_id)
            print(f"revoked {removed} token(s)", file=sys.stderr)
            return 0 if removed else 1
        elif args.action == "list":
            for r in tokens.read_records(path):
                print(f"{r.id}\t{r.org}\t{r.created}")
        elif args.action == "init-local":
            return _init_local(settings, path, args.org)
    except ValueError as exc:
        print(f"cutout: {exc}", file=sys.stderr)
        return 2
    return 0


def _batch(args: argparse.Namespace) -> int:
    import importlib

    if args.concurrency < 1:
        print("cutout batch: --concurrency must be at least 1", file=sys.stderr)
        return 2
    batch = importlib.import_module("deployments.batch")
    return batch.command(args.catalog, args.out, args.org, args.concurrency, args.address)


def _weights_pull(args: argparse.Namespace) -> int:
    from pipeline.models.pull import PullError, pull_weights

    try:
        result = pull_weights(args.model, args.to, revision=args.revision, accept_licence=args.accept_licence, sha256=args.sha256)
    except PullError as exc:
        print(f"cutout: {exc}", file=sys.stderr)
        return 2
    how = "converted to safetensors" if result.converted else "stored as published"
    print(f"{result.repo}@{result.revision}: sha256 {result.source_sha256} verified, {how}: {result.uri}")
    print(f"Licence: {result.licence}")
    print("Settings:")
    for name, value in result.settings().items():
        print(f"  {name}={value}")
    return 0


def _local_token_file(config: Path, org: str = "local") -> Path:
    """The token file ``make serve`` writes (``cutout token init-local``)."""
    try:
        data_dir = _settings(config).data_dir
    except SettingsError:
        data_dir = Path("var")
    return data_dir / f"{org}.token"


def _init_local(settings: Settings, path: Path, org: str) -> int:
    token_file = settings.data_dir / f"{org}.token"
    if token_file.exists() and tokens.TokenStore(path).lookup(token_file.read_text().strip()) == org:
        print(f"API token for org '{org}': {token_file}")
        return 0
    token = tokens.create_token(path, org)
    token_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    print(f"Created an API token for org '{org}' in {token_file} (its hash is in {path}).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
