"""--eval-every: the test set is scored after every N-th epoch and after the last; training is
the same whatever N is."""

import csv

import pytest
import torch

from ffint8.cli import config_from_args, parse_args
from ffint8.errors import ConfigError
from ffint8.train.config import FFConfig, TrainConfig
from ffint8.train.run import load_checkpoint, run_training


def small_cfg(**kw):
    base = dict(dataset="synthetic", hidden=(32, 32), epochs=4, limit_train=300, limit_test=50,
                ff=FFConfig(algo="ff-int8", look_ahead="chain"))
    base.update(kw)
    return TrainConfig(**base)


def quiet(*_):
    pass


def scored_epochs(out):
    rows = list(csv.DictReader(open(out / "epochs.csv")))
    return [int(r["epoch"]) for r in rows if r["test_accuracy"]]


@pytest.mark.parametrize("every,scored", [(1, [1, 2, 3, 4]), (3, [3, 4]), (10, [4])])
def test_scored_epochs(every, scored):
    cfg = small_cfg(eval_every=every)
    assert [e for e in range(1, 5) if cfg.evaluates_after(e, 4)] == scored


@pytest.mark.parametrize("algo", ["ff-int8", "bp-int8"])
def test_training_does_not_depend_on_eval_every(tmp_path, algo):
    ff = FFConfig(algo=algo, look_ahead="none" if algo.startswith("bp") else "chain")
    m1 = run_training(small_cfg(ff=ff), tmp_path / "a", progress=False, log=quiet)
    m3 = run_training(small_cfg(ff=ff, eval_every=3), tmp_path / "b", progress=False, log=quiet)
    assert scored_epochs(tmp_path / "a") == [1, 2, 3, 4]
    assert scored_epochs(tmp_path / "b") == [3, 4]
    assert [e["test_accuracy"] is None for e in m3["epochs"]] == [True, True, False, False]
    assert m3["test_accuracy"] == m1["test_accuracy"]
    w1 = load_checkpoint(tmp_path / "a" / "model.pt")[0].state_dict()
    w3 = load_checkpoint(tmp_path / "b" / "model.pt")[0].state_dict()
    assert w1.keys() == w3.keys() and all(torch.equal(w1[k], w3[k]) for k in w1)


def test_resume_may_change_eval_every(tmp_path):
    run_training(small_cfg(epochs=2, eval_every=2), tmp_path, progress=False, log=quiet)
    m = run_training(small_cfg(epochs=4, eval_every=1), tmp_path, progress=False, log=quiet,
                     resume=True)
    assert [e["test_accuracy"] is None for e in m["epochs"]] == [True, False, False, False]
    _, cfg, _ = load_checkpoint(tmp_path / "checkpoint.pt")
    assert cfg.eval_every == 1


def test_eval_every_flag():
    assert config_from_args(parse_args(["train", "--eval-every", "5"])).eval_every == 5
    with pytest.raises(ConfigError, match="--eval-every must be at least 1, got 0"):
        config_from_args(parse_args(["train", "--eval-every", "0"]))
