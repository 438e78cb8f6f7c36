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
