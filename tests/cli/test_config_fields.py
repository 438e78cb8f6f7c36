"""Every config field reaches the run's TrainConfig, from its flag or from a --config file
(eval_batch_size had no flag, so a config file's value was dropped without a word), and
--eval-batch-size itself."""

import argparse
import dataclasses
import shutil

import pytest

from ffint8.cli import build_parser, config_file_keys, config_from_args, parse_args
from ffint8.errors import ConfigError
from ffint8.train.config import FFConfig, TrainConfig
from ffint8.train.run import load_checkpoint, run_training


def test_every_config_file_key_has_a_flag():
    dests = set(vars(build_parser().parse_args(["train"])))
    assert set(config_file_keys()) - dests == set()


def test_config_from_args_reads_every_field(monkeypatch):
    # every destination holds its own marker; with the value checks off, each must arrive
    monkeypatch.setattr(TrainConfig, "__post_init__", lambda self: None)
    monkeypatch.setattr(FFConfig, "__post_init__", lambda self: None)
    ns = vars(parse_args(["train"]))
    fields = {"weight_per_channel": "weight_channel"}  # the one flag spelled otherwise
    marked = {dest: f"<{fields.get(dest, dest)}>" for dest in ns}
    cfg = config_from_args(argparse.Namespace(**marked))
    for obj in (cfg, cfg.ff):
        for f in dataclasses.fields(obj):
            if f.name != "ff":
                assert getattr(obj, f.name) == f"<{f.name}>", f.name


def test_eval_batch_size_from_a_config_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("eval_batch_size: 250\n")
    assert config_from_args(parse_args(["train", "--config", str(path)])).eval_batch_size == 250
    # a flag still overrides the file
    cfg = config_from_args(parse_args(["train", "--config", str(path), "--eval-batch-size", "8"]))
    assert cfg.eval_batch_size == 8


def test_eval_batch_size_flag_checked():
    assert config_from_args(parse_args(["train"])).eval_batch_size == TrainConfig.eval_batch_size
    with pytest.raises(ConfigError, match="--eval-batch-size must be at least 1, got 0"):
        config_from_args(parse_args(["train", "--eval-batch-size", "0"]))


def quiet(*_):
    pass


def test_resume_may_change_eval_batch_size_and_scores_alike(tmp_path):
    """A score does not depend on the images scored with it, so a resumed run may score in
    batches of another size and gets the same accuracy."""
    cfg = TrainConfig(dataset="synthetic", hidden=(32, 32), epochs=1, limit_train=300,
                      limit_test=90, eval_batch_size=90,
                      ff=FFConfig(algo="ff-int8", look_ahead="chain"))
    run_training(cfg, tmp_path / "a", progress=False, log=quiet)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    results = {}
    for name, size in (("a", 90), ("b", 7)):
        resumed = dataclasses.replace(cfg, epochs=2, eval_batch_size=size)
        m = run_training(resumed, tmp_path / name, progress=False, log=quiet, resume=True)
        results[name] = m["test_accuracy"]
        assert load_checkpoint(tmp_path / name / "checkpoint.pt")[1].eval_batch_size == size
    assert results["a"] == results["b"]
