"""The medrae command line (Typer), through CliRunner."""
from __future__ import annotations

from typer.testing import CliRunner

from medrae.cli import app

runner = CliRunner()


def test_unknown_training_task_is_a_usage_error():
    r = runner.invoke(app, ["train", "bogus"])
    assert r.exit_code == 2 and "unknown task 'bogus'" in r.output


def test_train_forwards_help():
    r = runner.invoke(app, ["train", "segmenter", "--help"])
    assert r.exit_code == 0 and "--data" in r.output and "--epochs" in r.output


def test_train_missing_data_is_a_clear_error(tmp_path):
    r = runner.invoke(app, ["train", "classifier", "--data", str(tmp_path), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert f"error: {tmp_path / 'train'}: no <class>/images folders" in r.output


def test_demo_round_trips(tmp_path):
    r = runner.invoke(app, ["demo", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert "all round trips bit-exact" in r.output
    assert len(list((tmp_path / "protected").glob("*.png"))) == 7
    assert len(list((tmp_path / "restored").glob("*.png"))) == 7
