"""Settings: defaults, env overrides, all problems reported at once, docs/settings.md kept in step."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.settings import Settings, SettingsError, load_settings
from pipeline.settings_doc import COMMAND, settings_document

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_the_documented_ones(tmp_path):
    s = load_settings({"data_dir": str(tmp_path)}, environ={})
    assert s.result_url_ttl_s == 3600
    assert s.max_src_file_size == 12 * 1024 * 1024
    assert s.max_src_resolution == 50
    assert s.allowed_source_networks == ()
    assert "FEMALE_GENITALIA_EXPOSED" in s.moderation_block
    assert s.tokens_file == tmp_path / "tokens.json"
    assert s.max_request_body > s.max_src_file_size * 4 // 3


def test_environment_overrides_args(tmp_path):
    env = {
        "CUTOUT_RESULT_URL_TTL_S": "60",
        "CUTOUT_ALLOWED_SOURCE_NETWORKS": "127.0.0.0/8, 10.1.0.0/16",
        "CUTOUT_MODERATION_BLOCK": "face_female,FACE_MALE",
    }
    s = load_settings({"data_dir": str(tmp_path), "result_url_ttl_s": 100}, environ=env)
    assert s.result_url_ttl_s == 60
    assert s.allowed_source_networks == ("127.0.0.0/8", "10.1.0.0/16")
    assert s.moderation_block == ("FACE_FEMALE", "FACE_MALE")


def test_every_bad_value_is_reported_at_once_by_name():
    env = {"CUTOUT_MAX_SRC_FILE_SIZE": "lots", "CUTOUT_ALLOWED_SOURCE_NETWORKS": "not-a-cidr"}
    with pytest.raises(SettingsError) as info:
        load_settings({"moderation_block": ["NOPE"], "no_such_setting": 1}, environ=env)
    message = str(info.value)
    for name in ("CUTOUT_MAX_SRC_FILE_SIZE", "CUTOUT_ALLOWED_SOURCE_NETWORKS", "args.moderation_block", "args.no_such_setting"):
        assert name in message


def test_secret_is_not_printed():
    s = load_settings({"url_signing_key": "k" * 40}, environ={})
    assert "kkkk" not in repr(s) and "kkkk" not in str(s)
    with pytest.raises(SettingsError) as info:
        load_settings({"url_signing_key": "short-secret"}, environ={})
    assert "short-secret" not in str(info.value)


def test_settings_doc_is_generated_from_the_settings():
    doc = (ROOT / "docs" / "settings.md").read_text()
    assert doc == settings_document(), f"docs/settings.md is stale: run `{COMMAND}`"
    assert all(f"`CUTOUT_{name.upper()}`" in doc for name in Settings.model_fields)


def test_unknown_variable_is_reported_not_silently_ignored(tmp_path, caplog):
    with caplog.at_level("WARNING"):
        load_settings({"data_dir": str(tmp_path)}, environ={"CUTOUT_RESULT_URL_TTL": "60"})
    assert "CUTOUT_RESULT_URL_TTL" in caplog.text
