"""The command line end to end, as a user runs it: extract -> info -> train -> predict -> explain -> ablate."""

import json

from PIL import Image

from tgdfer.cli import main


def test_commands_end_to_end(tmp_path, dfew_root, tiny_clip_path, capsys):
    cache, run = tmp_path / "dfew.h5", tmp_path / "run"
    assert (
        main(
            [
                "extract",
                "--dataset",
                "dfew",
                "--root",
                str(dfew_root),
                "--out",
                str(cache),
                "--clip",
                str(tiny_clip_path),
                "--views",
                "1",
                "--workers",
                "0",
            ]
        )
        == 0
    )
    assert main(["info", str(cache)]) == 0
    assert "12 clips, 24 views" in capsys.readouterr().out
    assert (
        main(
            [
                "train",
                "--features",
                str(cache),
                "--fold",
                "2",
                "--out",
                str(run),
                "--set",
                "train.epochs=2",
                "--set",
                "train.batch_size=4",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert json.loads((run / "metrics.json").read_text())["fold"] == "2"
    clip_dir = dfew_root / "Clip" / "clip_224x224" / "00003"
    capsys.readouterr()
    assert main(["predict", str(clip_dir), "--run", str(run), "--no-face-crop", "--json"]) == 0
    [result] = json.loads(capsys.readouterr().out)
    assert result["ok"] and abs(sum(result["probabilities"].values()) - 1) < 1e-4
    assert main(["predict", str(clip_dir), str(tmp_path / "missing.mp4"), "--run", str(run), "--no-face-crop"]) == 1
    assert "1 of 2 clips predicted, 1 failed" in capsys.readouterr().out
    png = tmp_path / "explain.png"
    assert main(["explain", str(clip_dir), "--run", str(run), "--png", str(png), "--no-face-crop"]) == 0
    with Image.open(png) as img:
        assert img.size[0] > 600
    assert (
        main(
            [
                "ablate",
                "--table",
                "3",
                "--features",
                str(cache),
                "--folds",
                "1-2",
                "--seeds",
                "1,2",
                "--out",
                str(tmp_path / "ab"),
                "--dry-run",
            ]
        )
        == 0
    )
    assert "48 entries" in capsys.readouterr().out  # 12 rows x 2 folds x 2 seeds


def test_user_errors_are_one_line_and_exit_2(tmp_path, capsys):
    assert main(["train", "--features", str(tmp_path / "none.h5"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --features: expected a feature cache") and "Traceback" not in err
    assert main(["train", "--features", str(tmp_path / "none.h5"), "--set", "model.nope=1"]) == 2
    assert "unknown setting 'nope'" in capsys.readouterr().err
    assert main(["extract", "--dataset", "dfew", "--root", str(tmp_path / "absent")]) == 2
    assert "absent" in capsys.readouterr().err


def test_demo_runs_with_a_tiny_clip(tmp_path, tiny_clip_path, capsys):
    assert (
        main(
            [
                "demo",
                "--out",
                str(tmp_path / "demo"),
                "--clip",
                str(tiny_clip_path),
                "--per-class",
                "2",
                "--epochs",
                "1",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "demo done" in out and (tmp_path / "demo" / "explain.png").exists()
    assert (tmp_path / "demo" / "run" / "confusion.png").exists()
