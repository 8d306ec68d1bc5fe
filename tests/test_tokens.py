"""Tokens: only hashes on disk, one org per token, picked up without a restart, revocable."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from pipeline import tokens


def test_create_lookup_revoke(tmp_path):
    path = tmp_path / "tokens.json"
    store = tokens.TokenStore(path)
    assert store.lookup("anything") is None
    t1 = tokens.create_token(path, "acme")
    t2 = tokens.create_token(path, "other")
    assert store.lookup(t1) == "acme" and store.lookup(t2) == "other"  # no restart needed
    assert store.lookup(t1 + "x") is None and store.lookup("") is None and store.lookup(None) is None
    text = path.read_text()
    assert t1 not in text and t2 not in text  # hashes only
    assert json.loads(text)["tokens"][0]["sha256"] == tokens.hash_token(t1)
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    assert tokens.revoke(path, t1) == 1
    assert store.lookup(t1) is None and store.lookup(t2) == "other"


def test_cli_prints_token_alone_on_one_line(tmp_path):
    env = {**os.environ, "CUTOUT_DATA_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "--config", str(tmp_path / "none.yaml"), "token", "create", "acme"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    lines = out.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith(tokens.TOKEN_PREFIX)
    assert tokens.TokenStore(tmp_path / "tokens.json").lookup(lines[0]) == "acme"
    bad = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "--config", str(tmp_path / "none.yaml"), "token", "create", "../etc"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert bad.returncode == 2 and "organization" in bad.stderr
