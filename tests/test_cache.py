"""The result cache (pipeline/cache.py) over real local storage: keys, hits, lifetimes."""

from __future__ import annotations

import dataclasses

from pipeline.cache import CacheRequest, ResultCache, cache_key, cache_state, hit_body
from pipeline.request import OutputOptions, parse_output
from pipeline.settings import load_settings
from pipeline.storage import LocalStorage, load_or_create_key

DIGEST = "0" * 64
PLACEMENT = {"left": 0, "top": 0, "width": 3, "height": 4, "scale": 1.0, "output": {"width": 3, "height": 4}}
ANSWER = {"crop": {"left": 1, "top": 2, "width": 3, "height": 4}, "source": {"width": 9, "height": 9}, "placement": PLACEMENT}


def make_cache(tmp_path, **args):
    settings = load_settings({"data_dir": str(tmp_path), **args}, environ={})
    storage = LocalStorage(
        tmp_path / "results", load_or_create_key(tmp_path / "key"), settings.result_url_ttl_s, "http://t", settings.result_cache_s
    )
    return ResultCache(storage, settings), storage


def request(org="acme", **kw) -> CacheRequest:
    return CacheRequest(org, False, False, False, **kw)


def test_the_key_changes_with_org_options_model_and_window():
    fingerprint = {"model": "u2netp", "weights": "a"}
    base = cache_key(DIGEST, request(), fingerprint, 7)
    assert base == cache_key(DIGEST, request(), dict(fingerprint), 7)
    others = [
        cache_key("1" * 64, request(), fingerprint, 7),
        cache_key(DIGEST, request("other"), fingerprint, 7),
        cache_key(DIGEST, dataclasses.replace(request(), force_rmbg=True), fingerprint, 7),
        cache_key(DIGEST, request(output=parse_output({"crop_margin": "1px"})), fingerprint, 7),
        cache_key(DIGEST, request(), {**fingerprint, "weights": "b"}, 7),
        cache_key(DIGEST, request(), fingerprint, 8),
    ]
    assert len({base, *others}) == 7


def test_settings_that_change_pixels_change_the_names(tmp_path):
    a, _ = make_cache(tmp_path)
    b, _ = make_cache(tmp_path, refine_edges="bilinear")
    c, _ = make_cache(tmp_path, png_compress_level=6)
    assert (
        len(
            {
                a.names(DIGEST, request(), now=1000)[0],
                b.names(DIGEST, request(), now=1000)[0],
                c.names(DIGEST, request(), now=1000)[0],
            }
        )
        == 3
    )


def test_miss_store_hit_with_a_fresh_url(tmp_path):
    cache, storage = make_cache(tmp_path)
    names = cache.names(DIGEST, request())
    assert names[0].startswith("acme/cache/") and cache.lookup(names) is None
    cache.store(names[0], b"PNG", ANSWER, {"sku": "s"})
    name, url, answer = cache.lookup(names)
    assert name == names[0] and answer == ANSWER and "/results/acme/cache/" in url
    assert cache.read(name) == b"PNG"
    assert cache.names(DIGEST, request("other"))[0].startswith("other/cache/")


def test_a_result_is_found_for_the_whole_period_across_a_window_boundary(tmp_path):
    cache, storage = make_cache(tmp_path, result_cache_s=100)
    made = 1000 * 100 - 10  # ten seconds before a window ends
    names = cache.names(DIGEST, request(), now=made)
    storage.put_named(names[0], b"PNG", {"answer": '{"crop": 1}'}, now=made)
    import os

    os.utime(storage.root / names[0], (made, made))
    assert cache.lookup(cache.names(DIGEST, request(), now=made + 50), now=made + 50) is not None  # next window
    assert cache.lookup(cache.names(DIGEST, request(), now=made + 101), now=made + 101) is None  # older than the period


def test_cached_files_outlive_every_url_handed_out_for_them(tmp_path):
    cache, storage = make_cache(tmp_path, result_cache_s=100, result_url_ttl_s=50)
    import os

    names = cache.names(DIGEST, request(), now=0)
    cache.store(names[0], b"PNG", ANSWER, {})
    plain = storage.put("acme", b"PNG", {})
    for name in (names[0], plain):
        os.utime(storage.root / name, (0, 0))
        os.utime((storage.root / name).with_suffix(".json"), (0, 0))
    storage.cleanup(now=60)  # the plain result's URL has expired; a hit at 100 still hands out a URL until 150
    assert not (storage.root / plain).exists() and (storage.root / names[0]).exists()
    storage.cleanup(now=151)
    assert not (storage.root / names[0]).exists()


def test_the_result_cache_setting_is_checked_against_the_bucket_lifecycle(tmp_path):
    import json
    from pathlib import Path

    import pytest

    from pipeline.settings import GCS_LIFECYCLE_AGE_S, SettingsError

    rule = json.loads((Path(__file__).parents[1] / "cluster" / "gcs" / "lifecycle.json").read_text())["rule"][0]
    assert rule["condition"]["age"] * 86400 == GCS_LIFECYCLE_AGE_S
    with pytest.raises(SettingsError, match="result_cache_s"):
        load_settings({"storage_uri": "gs://bucket/cutouts", "result_cache_s": 86000, "result_url_ttl_s": 3600}, environ={})


def test_hit_body_has_todays_keys_without_options_and_the_state_header():
    body = hit_body({"result_url": "u", **ANSWER}, "S", with_placement=False)
    assert list(body) == ["result_url", "sku", "crop", "source"]
    assert list(hit_body({"result_url": "u", **ANSWER}, None)) == ["result_url", "sku", "crop", "source", "placement"]
    assert hit_body({"result_url": None, **ANSWER}, "S", b"file") == {"placement": PLACEMENT, "data": b"file"}  # remove.bg's
    assert cache_state({"cache_hit": 1.0}) == "hit" and cache_state({"cache_miss": 1.0}) == "miss" and cache_state({}) is None
    assert OutputOptions().is_default
