"""The backprop baselines through the CLI: same outputs as the FF algorithms."""

import json

import pytest

from ffint8.cli import main

SMALL = ["--dataset", "synthetic", "--hidden", "32", "--limit-train", "400", "--limit-test", "100",
         "--no-progress", "--epochs", "1"]


@pytest.mark.parametrize("algo", ["bp-fp32", "bp-gdai8"])
def test_bp_train_eval_and_metrics(tmp_path, capsys, algo):
    out = tmp_path / algo
    assert main(["train", *SMALL, "--algo", algo, "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["algo"] == algo and m["look_ahead"] is None
    assert m["test_accuracy"] > 0.5 and (m["kernel"] == "float32") == (algo == "bp-fp32")
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out / "model.pt")]) == 0
    assert json.loads(capsys.readouterr().out)["test_accuracy"] == pytest.approx(m["test_accuracy"])
    # A BP checkpoint is not an FF one: asking for another algorithm is a clear error.
    assert main(["eval", "--checkpoint", str(out / "model.pt"), "--algo", "ff-int8"]) == 2
    assert "trained with " + algo in capsys.readouterr().err


def test_bp_resume_matches(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    args = [*SMALL[:-2], "--algo", "bp-ui8", "--lr-schedule", "constant", "--epochs"]
    assert main(["train", *args, "2", "--out", str(a)]) == 0
    assert main(["train", *args, "1", "--out", str(b)]) == 0
    assert main(["train", "--resume", str(b), "--epochs", "2", "--no-progress"]) == 0
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert [e["train_loss"] for e in ma["epochs"]] == [e["train_loss"] for e in mb["epochs"]]
    assert ma["test_accuracy"] == mb["test_accuracy"]
