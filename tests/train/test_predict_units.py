"""Goodness prediction over a chosen set of units (--predict-units): all, or all but the first."""

import pytest
import torch

from ffint8.cli import config_from_args, parse_args
from ffint8.errors import ConfigError
from ffint8.models import create_model
from ffint8.nn import functional as FF
from ffint8.train.config import PRESETS, FFConfig, TrainConfig, scored_units
from ffint8.train.ff import forward_records
from ffint8.train.loop import FFTrainer


def test_scored_units_rule():
    assert scored_units(3, "all") == [0, 1, 2]
    assert scored_units(3, "skip-first") == [1, 2]
    assert scored_units(1, "skip-first") == [0]  # one unit: nothing else to score with
    assert FFConfig(predict_units="skip-first").scored_units(2) == [1]


def test_default_and_paper_preset_sum_every_unit():
    assert FFConfig().predict_units == "all"
    assert PRESETS["paper"]["predict_units"] == "all"


def test_unknown_choice_names_the_flag():
    with pytest.raises(ConfigError, match="--predict-units"):
        FFConfig(predict_units="first")


def test_flag_reaches_the_config():
    cfg = config_from_args(parse_args(["train", "--predict-units", "skip-first"]))
    assert cfg.ff.predict_units == "skip-first"


@pytest.mark.parametrize("algo", ["ff-fp32", "ff-int8"])
@pytest.mark.parametrize("units", ["all", "skip-first"])
def test_scores_sum_the_goodness_of_the_chosen_units(algo, units):
    torch.manual_seed(0)
    hidden = (32, 24, 16)
    cfg = TrainConfig(hidden=hidden, ff=FFConfig(algo=algo, predict_units=units))
    tr = FFTrainer(create_model("mlp", hidden=hidden), cfg, 10)
    x = torch.rand(5, 784)
    got = tr.predict_scores(x)
    per_unit = []  # (units, labels, rows)
    for label in range(10):
        xs = x.clone()
        xs[:, :10] = 0.0
        xs[:, label] = 1.0
        recs = forward_records(tr.units, xs, cfg.ff, None)
        per_unit.append(torch.stack([FF.goodness(r.y, cfg.ff.goodness) for r in recs]))
    g = torch.stack(per_unit, dim=1)  # (3, 10, 5)
    want = g[[0, 1, 2] if units == "all" else [1, 2]].sum(0).t()
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
    other = g[[1, 2] if units == "all" else [0, 1, 2]].sum(0).t()
    assert not torch.allclose(got, other, rtol=1e-3, atol=1e-4)  # the choice matters


def test_cnn_scores_follow_the_choice():
    torch.manual_seed(0)
    base = dict(model="resnet18", width=0.125)
    x = torch.rand(2, 784)
    scores = {}
    for units in ("all", "skip-first"):
        cfg = TrainConfig(**base, ff=FFConfig(algo="ff-fp32", predict_units=units))
        torch.manual_seed(0)
        model = create_model("resnet18", in_features=784, width=0.125)
        scores[units] = FFTrainer(model, cfg, 10).predict_scores(x)
    assert scores["all"].shape == scores["skip-first"].shape == (2, 10)
    assert not torch.allclose(scores["all"], scores["skip-first"])


def test_eval_can_score_a_saved_model_with_other_units(tmp_path, capsys):
    """`ffint8 eval --predict-units` rescored a trained model: the same as a model trained with
    that choice (training does not depend on it), and refused where it means nothing."""
    import json

    from ffint8.cli import main

    small = ["--dataset", "synthetic", "--hidden", "32,32", "--limit-train", "300",
             "--limit-test", "60", "--epochs", "1", "--no-progress"]
    assert main(["train", *small, "--out", str(tmp_path / "all")]) == 0
    assert main(["train", *small, "--predict-units", "skip-first", "--out", str(tmp_path / "sk")]) == 0
    capsys.readouterr()
    scores = {}
    for run, units in [("all", None), ("all", "skip-first"), ("sk", None)]:
        argv = ["eval", "--checkpoint", str(tmp_path / run / "model.pt"), "--limit-test", "60"]
        assert main(argv + (["--predict-units", units] if units else [])) == 0
        scores[run, units] = json.loads(capsys.readouterr().out)["test_accuracy"]
    assert scores["all", "skip-first"] == scores["sk", None]
    sk = json.loads((tmp_path / "sk" / "metrics.json").read_text())["test_accuracy"]
    assert scores["sk", None] == sk

    assert main(["train", *small, "--algo", "bp-fp32", "--out", str(tmp_path / "bp")]) == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(tmp_path / "bp" / "model.pt"),
                 "--predict-units", "skip-first"]) == 2
    assert "--predict-units" in capsys.readouterr().err
