"""``cutout remove``: which images the inputs name, their file names, and the resumable manifest.
Runs against the real service are in tests/integration/test_tools.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline import cli
from pipeline.remove import Manifest, assign_files, collect, resolve_token, safe_name


def test_files_folders_urls_and_csv_rows_each_once(tmp_path):
    (tmp_path / "shots" / "deep").mkdir(parents=True)
    for name in ("a.jpg", "b.PNG", "deep/c.webp", "notes.txt", "d.gif"):
        (tmp_path / "shots" / name).write_bytes(b"x")
    single = tmp_path / "single.heic"  # named on its own: sent, and the service decides
    single.write_bytes(b"x")
    catalog = tmp_path / "catalog.csv"
    catalog.write_text("sku,image_url\nMUG-1,https://cdn.example.com/mug.jpg\n\nCUP/2,http://cdn.example.com/cup.png\n")
    items = collect(
        [str(tmp_path / "shots"), str(single), str(catalog), "https://cdn.example.com/p/shoe%20red.jpg", str(tmp_path / "shots")]
    )
    names = [i.name for i in items]
    assert names == ["a", "b", "c", "single", "MUG-1", "CUP_2", "shoe_red"]
    assert [i.sku for i in items][4:6] == ["MUG-1", "CUP/2"]
    assert items[4].image_url == "https://cdn.example.com/mug.jpg" and items[0].path is not None


@pytest.mark.parametrize("text", ["sku,image_url\nMUG-1\n", "MUG-1,ftp://x/y.jpg\n", ",https://x/y.jpg\n", "a,b,c\n"])
def test_a_malformed_csv_row_is_named_with_its_line(tmp_path, text):
    catalog = tmp_path / "c.csv"
    catalog.write_text(text)
    with pytest.raises(ValueError, match=r"c\.csv:\d"):
        collect([str(catalog)])


def test_a_missing_input_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        collect([str(tmp_path / "nope.jpg")])


def test_names_never_leave_the_folder_and_never_collide():
    assert safe_name("../../etc/passwd") == "etc_passwd" and safe_name("...") == "image"
    items = collect(["https://a.example.com/x/mug.jpg", "https://b.example.com/y/mug.jpg"])
    files = assign_files(items, taken={"other.png"})
    assert files[items[0].key] == "mug.png" and files[items[1].key].startswith("mug-") and len(set(files.values())) == 2
    assert assign_files(items[:1], taken={"mug.png"})[items[0].key] != "mug.png"  # a finished input owns it


def test_manifest_done_needs_the_png_and_the_last_line_wins(tmp_path):
    path = tmp_path / "manifest.jsonl"
    lines = [
        {"key": "a", "status": "failed"},
        {"key": "a", "status": "done", "file": "a.png"},
        {"key": "b", "status": "done", "file": "b.png"},
        {"key": "c", "status": "done", "file": "c.png"},
        {"key": "c", "status": "failed"},
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + '\n{"key": "d", "stat')  # cut short by a stopped run
    (tmp_path / "a.png").write_bytes(b"png")
    (tmp_path / "c.png").write_bytes(b"png")
    manifest = Manifest.load(tmp_path)
    assert [manifest.done(k) for k in "abcd"] == [True, False, False, False]  # b's PNG is gone: again


def test_token_from_flag_env_or_the_file_make_serve_writes(tmp_path, monkeypatch):
    file = tmp_path / "local.token"
    file.write_text("from-file\n")
    assert resolve_token("flag", None, file, {"CUTOUT_TOKEN": "env"}) == "flag"
    assert resolve_token(None, None, file, {"CUTOUT_TOKEN": "env"}) == "env"
    assert resolve_token(None, None, file, {}) == "from-file"
    assert resolve_token(None, None, tmp_path / "none", {}) is None
    monkeypatch.setenv("CUTOUT_DATA_DIR", str(tmp_path))  # as `make serve` exports it
    assert cli._local_token_file(Path("serve_config.yaml")) == tmp_path / "local.token"


def test_without_a_token_the_command_says_where_to_get_one(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("CUTOUT_TOKEN", raising=False)
    monkeypatch.setenv("CUTOUT_DATA_DIR", str(tmp_path))
    assert cli.main(["remove", "https://cdn.example.com/a.jpg", "-o", str(tmp_path / "out")]) == 2
    assert "CUTOUT_TOKEN" in capsys.readouterr().err
