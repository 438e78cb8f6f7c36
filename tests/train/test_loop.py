"""The training loop: learning, determinism, divergence, the greedy schedule, lambda."""

import pytest
import torch

from ffint8.cli import main
from ffint8.data import load_dataset, to_float_images
from ffint8.errors import ConfigError, DivergenceError
from ffint8.models import create_model
from ffint8.train.config import FFConfig, TrainConfig
from ffint8.train.loop import FFTrainer, make_optimizer


@pytest.fixture(scope="module")
def data():
    d = load_dataset("synthetic", limit_train=512, limit_test=200)
    return (to_float_images(d.train.images), d.train.labels,
            to_float_images(d.test.images), d.test.labels)


def trainer(algo="ff-int8", look="collab", schedule="simultaneous", seed=0, epochs=2):
    torch.manual_seed(seed)
    cfg = TrainConfig(hidden=(64, 64), batch_size=32, lr=0.003, seed=seed, epochs=epochs,
                      ff=FFConfig(algo=algo, look_ahead=look, schedule=schedule,
                                  lambda_start=0.05))
    return FFTrainer(create_model("mlp", hidden=(64, 64)), cfg, 10)


@pytest.mark.parametrize("algo", ["ff-int8", "ff-fp32"])
@pytest.mark.parametrize("look", ["none", "collab", "chain"])
def test_loss_falls_and_accuracy_beats_chance(data, algo, look):
    x, y, xt, yt = data
    tr = trainer(algo, look, epochs=3)
    logs = tr.fit(x, y, xt, yt)
    assert logs[-1].train_loss < logs[0].train_loss
    assert logs[-1].test_accuracy > 0.6


def test_same_seed_same_weights(data):
    x, y, _, _ = data
    a, b = trainer(seed=3), trainer(seed=3)
    a.train_epoch(x, y)
    b.train_epoch(x, y)
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(pa, pb)


def test_nan_weight_stops_with_clear_error(data):
    x, y, _, _ = data
    tr = trainer(look="none")
    with torch.no_grad():
        tr.units[1].weight[0, 0] = float("nan")
    with pytest.raises(DivergenceError, match=r"epoch 1, step 1: the loss of unit 2"):
        tr.train_epoch(x, y)


def test_greedy_trains_one_unit_per_phase(data):
    x, y, xt, yt = data
    tr = trainer(schedule="greedy", epochs=1)
    before = [u.weight.detach().clone() for u in tr.units]
    tr.train_epoch(x, y, unit=0)
    assert not torch.equal(tr.units[0].weight, before[0])
    assert torch.equal(tr.units[1].weight, before[1])
    tr2 = trainer(schedule="greedy", epochs=1)
    logs = tr2.fit(x, y, xt, yt)
    assert [log.unit for log in logs] == [0, 1]


def test_lambda_schedule():
    cfg = FFConfig(lambda_start=0.0, lambda_step=0.001)
    assert cfg.lam(0) == 0.0
    assert cfg.lam(10) == pytest.approx(0.01)


def test_lambda_stops_rising_at_lambda_max(capsys):
    cfg = FFConfig(lambda_start=0.2, lambda_step=0.2, lambda_max=0.8)
    assert [round(cfg.lam(e), 6) for e in range(6)] == [0.2, 0.4, 0.6, 0.8, 0.8, 0.8]
    assert FFConfig(lambda_start=1.0, lambda_max=0.5).lam(0) == 0.5  # a cap below the start
    # a run saved before the field existed keeps rising, as it did
    saved = TrainConfig(ff=FFConfig(lambda_step=0.3)).to_dict()
    del saved["ff"]["lambda_max"]
    assert TrainConfig.from_saved(saved).ff.lam(9) == pytest.approx(2.7)
    with pytest.raises(ConfigError, match="--lambda-max"):
        FFConfig(lambda_max=-0.1)
    assert main(["train", "--lambda-max", "-1", "--out", "/nonexistent/x"]) == 2
    assert "--lambda-max" in capsys.readouterr().err


def test_lr_schedules():
    base = TrainConfig(lr=0.01, lr_schedule="constant")
    assert base.lr_at(0.9) == 0.01
    cool = TrainConfig(lr=0.01, lr_schedule="cooldown")
    assert cool.lr_at(0.25) == 0.01 and cool.lr_at(0.5) == pytest.approx(0.01)
    assert cool.lr_at(0.75) == pytest.approx(0.005) and cool.lr_at(0.999) < 1e-4
    cos = TrainConfig(lr=0.01, lr_schedule="cosine")
    assert cos.lr_at(0.0) == pytest.approx(0.01) and cos.lr_at(0.5) == pytest.approx(0.005)


def test_trainer_applies_the_schedule(data):
    x, y, _, _ = data
    torch.manual_seed(0)
    cfg = TrainConfig(hidden=(16,), batch_size=64, lr=0.01, epochs=2, lr_schedule="cooldown")
    tr = FFTrainer(create_model("mlp", hidden=(16,)), cfg, 10)
    tr.train_epoch(x, y)
    tr.epoch = 1
    tr.train_epoch(x, y)
    # 8 steps an epoch: the last step sits at progress (1 + 7/8) / 2 = 15/16, so lr * 2 / 16
    assert tr.optimizer.param_groups[0]["lr"] == pytest.approx(0.01 / 8)


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_weight_decay_coupled_or_decoupled(optimizer):
    """A weight whose gradient is zero: AdamW shrinks it by exactly 1 - lr * wd a step; Adam's
    L2 term becomes its gradient, which Adam's normalisation turns into a step of about lr."""
    cfg = TrainConfig(optimizer=optimizer, lr=0.01, weight_decay=0.1)
    w = torch.nn.Parameter(torch.full((4,), 0.5))
    opt = make_optimizer([w], cfg)
    w.grad = torch.zeros(4)
    opt.step()
    if optimizer == "adamw":
        assert isinstance(opt, torch.optim.AdamW)
        torch.testing.assert_close(w.detach(), torch.full((4,), 0.5 * (1 - 0.01 * 0.1)))
    else:
        assert not isinstance(opt, torch.optim.AdamW)
        torch.testing.assert_close(w.detach(), torch.full((4,), 0.5 - 0.01), atol=1e-6, rtol=0)


@pytest.mark.parametrize("c_kernel", [True, False], ids=["c-pass", "pieces"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_all_finite_finds_every_non_finite_value(monkeypatch, c_kernel, dtype):
    from ffint8.quant import fastsr
    from ffint8.train import loop

    if not c_kernel:
        monkeypatch.setattr(fastsr, "absmax", lambda x: None)
        monkeypatch.setattr(loop, "FINITE_CHUNK", 1000)  # several pieces, the last one short
    p = torch.randn(70, 53, dtype=dtype) * 1e30  # large but finite: no overflow to inf
    assert loop.all_finite(p) and loop.all_finite(p.t()) and loop.all_finite(p[:0])
    for bad in (float("nan"), float("inf"), -float("inf")):
        for at in (0, 1234, p.numel() - 1):  # the first piece, a middle one, the last value
            q = p.clone()
            q.view(-1)[at] = bad
            assert not loop.all_finite(q), (bad, at)
            assert not loop.all_finite(q.t())  # not contiguous
