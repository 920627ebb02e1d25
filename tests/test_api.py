"""The README's "Python API" example, run exactly as written (with the tiny random CLIP through $TGDFER_CLIP)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_block(heading: str, language: str) -> str:
    """The first ```language block after the line ``heading`` in README.md."""
    text = README.read_text()
    start = text.index(f"\n{heading}\n")
    match = re.compile(rf"```{language}\n(.*?)```", re.S).search(text, start)
    assert match is not None, f"no {language} block after {heading!r}"
    return match.group(1)


@pytest.mark.integration
def test_the_readme_example_runs(tmp_path, tiny_clip_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TGDFER_CLIP", str(tiny_clip_path))
    scope: dict = {}
    exec(compile(readme_block("## Python API", "python"), "README.md (Python API)", "exec"), scope)
    cache, run, out = scope["cache"], scope["run"], scope["out"]
    assert cache.class_names == run.class_names == ("happiness", "sadness", "surprise")
    assert scope["metrics"]["class_names"] == list(cache.class_names) and (tmp_path / "cache/api/run").is_dir()
    [on_disk], [in_memory] = scope["on_disk"], scope["in_memory"]
    assert on_disk["ok"] and in_memory["ok"] and in_memory["path"] == "frames[0]"
    assert list(in_memory["probabilities"]) == list(cache.class_names)
    features, labels, ids = scope["features"], scope["labels"], scope["ids"]
    assert (
        features.shape == (12, 16, cache.dim)
        and ids == list(cache.clip_ids)
        and labels.tolist() == [int(x) for x in cache.labels]
    )
    assert out["probabilities"].shape == (12, 3) and out["influence"].shape == (12, 16, 3)
    np.testing.assert_allclose(out["probabilities"].sum(1), 1.0, atol=1e-5)
    # The same clip through the file path and through its cached test view: one code path, one answer.
    row = ids.index("clips/sad_000")
    cached = out["probabilities"][row]
    np.testing.assert_allclose(list(on_disk["probabilities"].values()), cached, atol=2e-3)
    assert "('happiness', 'sadness', 'surprise') 12 clips, 36 views" in capsys.readouterr().out


@pytest.mark.integration
def test_predict_features_refuses_another_shape(tmp_path, tiny_clip_path, tiny_clip):
    import tgdfer
    from tgdfer.backbone import load_clip
    from tgdfer.errors import ConfigError
    from tgdfer.testing.synthetic import write_feature_cache

    sha = load_clip(str(tiny_clip_path)).sha256
    path = tmp_path / "g.h5"
    write_feature_cache(path, str(tiny_clip_path), sha, n_clips=20, views=1, folds=2, classes=("a", "b"))
    cfg = tgdfer.apply_overrides(
        tgdfer.RunConfig(features=str(path), out=str(tmp_path / "r"), device="cpu"), ["train.epochs=1"]
    )
    tgdfer.fit(cfg, log=lambda _: None)
    run = tgdfer.load_run(tmp_path / "r", device="cpu")
    with pytest.raises(ConfigError, match=r"features: expected \(N, T=16, D=32\) for this run, found \(2, 8, 32\)"):
        tgdfer.predict_features(np.zeros((2, 8, 32), np.float32), run)
    features, labels, _ = tgdfer.test_view_features(tgdfer.load_cache(path))
    out = tgdfer.predict_features(features, run)
    assert features.shape == (20, 16, 32) and labels.shape == (20,)
    assert out["class_names"] == ("a", "b") and len(out["predicted"]) == 20 and set(out["predicted"]) <= {"a", "b"}
