"""--trim-heap: freed heap goes back to the system after every optimiser step, FF and BP alike;
training is the same with it."""

import pytest
import torch

from ffint8.cli import config_from_args, parse_args
from ffint8.data import load_dataset, to_float_images
from ffint8.models import create_model
from ffint8.train import loop
from ffint8.train.config import FFConfig, TrainConfig
from ffint8.train.run import make_trainer


@pytest.fixture(scope="module")
def data():
    d = load_dataset("synthetic", limit_train=96, limit_test=10)
    return to_float_images(d.train.images), d.train.labels


def trainer(algo: str, trim: bool):
    cfg = TrainConfig(hidden=(24, 16), batch_size=32, seed=1, epochs=1, trim_heap=trim,
                      ff=FFConfig(algo=algo, look_ahead="none" if algo[:2] == "bp" else "chain"))
    torch.manual_seed(1)
    return make_trainer(create_model("mlp", hidden=(24, 16), classifier=algo[:2] == "bp"), cfg, 10)


@pytest.mark.parametrize("algo", ["ff-int8", "bp-fp32"])
def test_released_after_every_optimiser_step(data, algo, monkeypatch):
    calls, steps = [], []
    monkeypatch.setattr(loop, "release_free_heap", lambda: calls.append(1) or True)
    tr = trainer(algo, trim=True)
    tr.optimizer.register_step_pre_hook(lambda *_: steps.append(1))
    tr.train_epoch(*data)
    per_batch = 2 if algo.startswith("ff") else 1  # FF steps each of its two units in turn
    assert len(steps) == 3 * per_batch and len(calls) == len(steps)


def test_off_by_default(data, monkeypatch):
    calls = []
    monkeypatch.setattr(loop, "release_free_heap", lambda: calls.append(1) or True)
    trainer("ff-int8", trim=False).train_epoch(*data)
    assert calls == []


@pytest.mark.parametrize("algo", ["ff-int8", "bp-fp32"])
def test_same_weights_with_and_without(data, algo):
    a, b = trainer(algo, trim=True), trainer(algo, trim=False)
    a.train_epoch(*data)
    b.train_epoch(*data)
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(pa, pb)


def test_flag():
    assert config_from_args(parse_args(["train", "--trim-heap"])).trim_heap
    assert not config_from_args(parse_args(["train"])).trim_heap
