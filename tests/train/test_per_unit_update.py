"""The per-unit update: units (dense and convolutional) step as soon as their gradients are
final, one unit's gradients alive at a time, with the same weights as stepping all units
together."""

import pytest
import torch

from ffint8.data import load_dataset, to_float_images
from ffint8.models import create_model
from ffint8.train.config import FFConfig, TrainConfig
from ffint8.train.loop import FFTrainer


@pytest.fixture(scope="module")
def data():
    d = load_dataset("synthetic", limit_train=160, limit_test=10)
    return to_float_images(d.train.images), d.train.labels


def trainer(per_unit: bool, algo="ff-int8", look="chain", optimizer="adam", predict="goodness",
            schedule="simultaneous", weight_decay=0.0) -> FFTrainer:
    hidden = (48, 40, 32)
    cfg = TrainConfig(hidden=hidden, batch_size=32, seed=5, epochs=2, optimizer=optimizer,
                      weight_decay=weight_decay,
                      ff=FFConfig(algo=algo, look_ahead=look, predict=predict, schedule=schedule,
                                  lambda_start=0.1))
    torch.manual_seed(5)
    tr = FFTrainer(create_model("mlp", hidden=hidden, readout=predict == "softmax"), cfg, 10)
    assert tr.per_unit_update  # dense units, one process: the default
    tr.per_unit_update = per_unit
    return tr


def assert_same_weights(a: FFTrainer, b: FFTrainer) -> None:
    for (name, pa), pb in zip(a.model.named_parameters(), b.model.parameters()):
        assert torch.equal(pa, pb), name


@pytest.mark.parametrize("algo", ["ff-int8", "ff-fp32"])
@pytest.mark.parametrize("look", ["none", "collab", "chain"])
def test_same_weights_as_stepping_together(data, algo, look):
    x, y = data
    a, b = trainer(True, algo, look), trainer(False, algo, look)
    a.train_epoch(x, y)
    b.train_epoch(x, y)
    assert_same_weights(a, b)
    assert not torch.equal(a.units[0].weight, trainer(True, algo, look).units[0].weight)


@pytest.mark.parametrize("kw", [dict(optimizer="sgd", weight_decay=1e-3),
                                dict(predict="softmax", look="none"),
                                dict(schedule="greedy")])
def test_same_weights_other_settings(data, kw):
    x, y = data
    a, b = trainer(True, **kw), trainer(False, **kw)
    unit = 1 if kw.get("schedule") == "greedy" else None
    a.train_epoch(x, y, unit=unit)
    b.train_epoch(x, y, unit=unit)
    assert_same_weights(a, b)


@pytest.mark.parametrize("factored", [True, False])
def test_one_unit_of_gradients_alive_at_each_step(data, monkeypatch, factored):
    """At each optimiser step only one unit has gradients: its bias and, without the factored
    weight step (train/factored.py; off where the C kernel is not built), its weight."""
    if not factored:
        monkeypatch.setattr("ffint8.quant.fastsr.available", lambda: False)
    x, y = data
    tr = trainer(True, look="chain")
    if factored and not tr.factored:
        pytest.skip("the C kernel is not built here")
    seen = []
    step_unit = tr._step_unit

    def record(*args, **kwargs):  # as each unit's update begins
        seen.append(sum(p.grad is not None for p in tr.model.parameters()))
        return step_unit(*args, **kwargs)

    tr._step_unit = record
    tr.train_epoch(x, y)
    steps = -(-x.shape[0] // 32)
    # three units, each with its bias and (not factored) its weight
    assert seen == [1 if factored else 2] * (3 * steps)
    assert all(p.grad is None for p in tr.model.parameters())


def test_greedy_frozen_units_do_not_move(data):
    x, y = data
    tr = trainer(True, schedule="greedy")
    before = [u.weight.detach().clone() for u in tr.units]
    tr.train_epoch(x, y, unit=1)
    assert torch.equal(tr.units[0].weight, before[0])
    assert not torch.equal(tr.units[1].weight, before[1])
    assert torch.equal(tr.units[2].weight, before[2])  # above the trained unit: not run


def test_data_parallel_steps_together():
    from ffint8.dist.ddp import DataParallel  # noqa: F401  (the trainer's parallel field)

    cfg = TrainConfig(hidden=(16,), batch_size=8, seed=0, epochs=1)

    class OneRank:  # stands in for a DataParallel: only its presence matters here
        world_size = 1

    tr = FFTrainer(create_model("mlp", hidden=(16,)), cfg, 10, parallel=OneRank())
    assert not tr.per_unit_update


def cnn_trainer(per_unit: bool, algo: str, look: str, schedule="simultaneous") -> FFTrainer:
    cfg = TrainConfig(model="resnet18", batch_size=8, lr=0.01, seed=3, epochs=2,
                      ff=FFConfig(algo=algo, look_ahead=look, lambda_start=0.1, schedule=schedule))
    torch.manual_seed(3)
    tr = FFTrainer(create_model("resnet18", width=0.0625), cfg, 10)
    assert not tr.dense and tr.per_unit_update
    tr.per_unit_update = per_unit
    return tr


@pytest.mark.parametrize("algo,look", [("ff-int8", "none"), ("ff-fp32", "none"), ("ff-int8", "collab"),
                                       ("ff-int8", "chain"), ("ff-fp32", "chain")])
def test_cnn_units_same_weights_as_stepping_together(algo, look):
    """Convolutional units (autograd unit by unit) step one at a time: the same weights. Chain
    steps a unit only after its signals are passed down, as their backward reads the unit's
    parameters (stepping before them changes the weights, silently: checked)."""
    d = load_dataset("synthetic", limit_train=16, limit_test=4)
    x, y = to_float_images(d.train.images), d.train.labels
    a, b = cnn_trainer(True, algo, look), cnn_trainer(False, algo, look)
    steps = []
    a._step_unit = lambda l, trained, f=a._step_unit: (steps.append(l), f(l, trained))
    a.train_epoch(x, y)
    b.train_epoch(x, y)
    assert steps[: len(a.units)] == list(range(len(a.units) - 1, -1, -1))
    assert_same_weights(a, b)
    assert not torch.equal(a.units[0].conv.weight if hasattr(a.units[0], "conv")
                           else next(a.units[0].parameters()),
                           next(cnn_trainer(True, algo, look).units[0].parameters()))
