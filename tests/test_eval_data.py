"""The tests that read the evaluation photos skip locally when they are absent, and fail under CI."""

from __future__ import annotations

import pytest

from tests.images import require_eval_data


@pytest.mark.parametrize(
    ("ci", "outcome"),
    [
        ("true", pytest.fail.Exception),
        ("TRUE", pytest.fail.Exception),
        ("false", pytest.skip.Exception),
        ("", pytest.skip.Exception),
        (None, pytest.skip.Exception),
    ],
)
def test_absent_evaluation_photos_fail_under_ci_and_skip_locally_with_the_reason(ci, outcome, monkeypatch, tmp_path):
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="evaluation photos are absent: no folder .*absent/grabcut/images"):
        require_eval_data(tmp_path / "absent")


def test_present_evaluation_photos_are_used_under_ci(monkeypatch, tmp_path):
    monkeypatch.setenv("CI", "true")
    (tmp_path / "grabcut" / "images").mkdir(parents=True)
    assert require_eval_data(tmp_path) == tmp_path
