"""Goodness prediction over a chosen set of units (--predict-units): all, all but the first, or
auto (whichever of the two labels a training sample better, chosen at every evaluation)."""

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
    assert FFConfig(predict_units="auto").scored_units(2) == [0, 1]  # before any choice: all


def test_default_chooses_and_paper_preset_sums_every_unit():
    assert FFConfig().predict_units == "auto"
    assert PRESETS["paper"]["predict_units"] == "all"
    with pytest.raises(ValueError, match="auto"):
        scored_units(2, "auto")  # a trainer resolves it; nothing may read it as a set of units


def test_unknown_choice_names_the_flag():
    with pytest.raises(ConfigError, match="--predict-units"):
        FFConfig(predict_units="first")


def test_flag_reaches_the_config():
    cfg = config_from_args(parse_args(["train", "--predict-units", "skip-first"]))
    assert cfg.ff.predict_units == "skip-first"


def test_auto_takes_uint8_images_as_their_float_rows():
    # eval --predict-units auto hands over the data set's uint8 images, so that only the sampled
    # rows are ever converted: the same choice and the same counts as the float inputs give.
    cfg = TrainConfig(hidden=(16, 16), ff=FFConfig(algo="ff-fp32", predict_units="auto"))
    tr = FFTrainer(create_model("mlp", hidden=(16, 16)), cfg, 10)
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (300, 28, 28), generator=gen, dtype=torch.uint8)
    y = torch.randint(0, 10, (300,), generator=gen)
    seen = []
    real = tr.goodness_per_unit

    def spy(xb):
        seen.append(xb)
        return real(xb)

    tr.goodness_per_unit = spy
    tr.use_for_selection(images, y, 200)
    choice_u8, rows_u8 = tr.choose_predict_units(), torch.cat(seen)
    seen.clear()
    tr.use_for_selection(images.flatten(1).float() / 255, y, 200)
    assert tr.choose_predict_units() == choice_u8
    assert rows_u8.dtype == torch.float32 and rows_u8.shape == (200, 784)
    assert torch.equal(torch.cat(seen), rows_u8)


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


@pytest.mark.parametrize("algo", ["ff-fp32", "ff-int8"])
def test_cnn_scores_do_not_depend_on_how_rows_are_split(algo, monkeypatch):
    # CNN goodness prediction forwards its (image, label) rows in pieces of CNN_EVAL_ROWS; pieces
    # that cut through a label's rows must give the scores one forward of all rows gives.
    from ffint8.train import loop

    cfg = TrainConfig(model="mobilenetv2", width=0.125, ff=FFConfig(algo=algo))
    torch.manual_seed(0)
    tr = FFTrainer(create_model("mobilenetv2", in_features=784, width=0.125), cfg, 10)
    x = torch.rand(3, 784)
    whole = tr.predict_scores(x)
    monkeypatch.setattr(loop, "CNN_EVAL_ROWS", 7)
    pieces = tr.predict_scores(x)
    assert whole.shape == (3, 10)
    if algo == "ff-int8":  # one scale per sample and exact int32 sums: bit-equal
        assert torch.equal(pieces, whole)
    else:  # float32 convolutions may block differently for another batch size
        assert torch.allclose(pieces, whole, rtol=1e-5, atol=1e-6)


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


def _auto_trainer(first_right: bool, silent_rows: int = 0) -> FFTrainer:
    """A 2-unit trainer with 1000 selection rows and made-up unit goodness: one unit scores the
    true label 2, the other scores label (y + 1) % 10 3, except on the first `silent_rows` rows,
    where it scores nothing. Summing both units is then right on the silent rows only."""
    cfg = TrainConfig(hidden=(16, 16), ff=FFConfig(algo="ff-fp32", predict_units="auto"))
    tr = FFTrainer(create_model("mlp", hidden=(16, 16)), cfg, 10)
    n = 1000
    x = torch.zeros(n, 784)
    x[:, 0] = torch.arange(n, dtype=torch.float32)  # the row's number, read back below
    y = torch.arange(n) % 10
    tr.use_for_selection(x, y)

    def made_up(xb):
        rows = xb[:, 0].long()
        right = torch.nn.functional.one_hot(y[rows], 10) * 2.0
        wrong = torch.nn.functional.one_hot((y[rows] + 1) % 10, 10) * 3.0
        wrong[rows < silent_rows] = 0.0
        return [right, wrong] if first_right else [wrong, right]

    tr.goodness_per_unit = made_up
    return tr


def test_auto_drops_a_misleading_first_unit_and_keeps_an_informative_one():
    assert _auto_trainer(first_right=False).choose_predict_units() == "skip-first"
    tr = _auto_trainer(first_right=True)
    assert tr.choose_predict_units() == "all" and tr.predict_units == "all"


def test_auto_needs_skip_first_to_win_by_the_margin():
    from ffint8.train.loop import SELECTION_MARGIN

    m = int(SELECTION_MARGIN * 1000)  # rows skip-first must win by, of 1000
    # skip-first is right on every row, all on the silent ones: it wins by 1000 - silent_rows
    assert _auto_trainer(False, silent_rows=1000 - m).choose_predict_units() == "all"
    assert _auto_trainer(False, silent_rows=1000 - m - 1).choose_predict_units() == "skip-first"
    assert _auto_trainer(False, silent_rows=1000).choose_predict_units() == "all"  # a tie


@pytest.mark.parametrize("algo", ["ff-fp32", "ff-int8"])
def test_auto_does_not_change_training_and_records_its_choice(tmp_path, algo, capsys):
    """The same weights as a run that sums all units (the sample has its own generator); the
    test accuracy equals scoring model.pt with the units it records; checkpoint.pt keeps auto."""
    import json

    from ffint8.cli import main

    small = ["--dataset", "synthetic", "--hidden", "32,32", "--limit-train", "300",
             "--limit-test", "60", "--epochs", "2", "--no-progress", "--algo", algo]
    assert main(["train", *small, "--out", str(tmp_path / "auto")]) == 0
    assert main(["train", *small, "--predict-units", "all", "--out", str(tmp_path / "all")]) == 0
    a = torch.load(tmp_path / "auto" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "all" / "model.pt", weights_only=True)
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    m = json.loads((tmp_path / "auto" / "metrics.json").read_text())
    assert m["config"]["ff"]["predict_units"] == "auto"
    chosen = m["predict_units"]
    assert chosen in ("all", "skip-first") and a["config"]["ff"]["predict_units"] == chosen
    ck = torch.load(tmp_path / "auto" / "checkpoint.pt", weights_only=True)
    assert ck["config"]["ff"]["predict_units"] == "auto" and ck["trainer"]["predict_units"] == chosen
    capsys.readouterr()
    for name in ("model.pt", "checkpoint.pt"):
        argv = ["eval", "--checkpoint", str(tmp_path / "auto" / name), "--limit-test", "60"]
        assert main(argv) == 0
        assert json.loads(capsys.readouterr().out)["test_accuracy"] == m["test_accuracy"]


def test_a_config_saved_before_the_fields_existed_keeps_its_behaviour():
    old = TrainConfig().to_dict()
    for key in ("predict_units", "peer_weight"):
        del old["ff"][key]
    cfg = TrainConfig.from_saved(old)
    assert cfg.ff.predict_units == "all" and cfg.ff.peer_weight == 0.0
    assert TrainConfig.from_saved(TrainConfig().to_dict()) == TrainConfig()  # today's round trip
    assert TrainConfig.from_dict(old) == TrainConfig()  # a config file: today's defaults


def test_eval_with_auto_chooses_as_the_run_did(tmp_path, capsys):
    """`ffint8 eval --predict-units auto` on a model trained to sum all units: the same choice
    and accuracy as a run trained with auto (training does not depend on it)."""
    import json

    from ffint8.cli import main

    small = ["--dataset", "synthetic", "--hidden", "32,32", "--limit-test", "100", "--epochs", "1",
             "--no-progress"]
    assert main(["train", *small, "--predict-units", "all", "--out", str(tmp_path / "all")]) == 0
    assert main(["train", *small, "--out", str(tmp_path / "auto")]) == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(tmp_path / "all" / "model.pt"), "--limit-test", "100",
                 "--predict-units", "auto"]) == 0
    got = json.loads(capsys.readouterr().out)
    run = json.loads((tmp_path / "auto" / "metrics.json").read_text())
    assert got["predict_units"] == run["predict_units"] in ("all", "skip-first")
    assert got["test_accuracy"] == run["test_accuracy"]
