"""Batch-norm statistics re-estimated before evaluation (ff_units.estimate_norm_statistics and
FFTrainer.refresh_norm_statistics): the plain average of the batches' statistics, the modules
left as they were found, deterministic and apart from training's random draws, and a CNN run
that resumes exactly with it."""

import json

import pytest
import torch

from ffint8.cli import main
from ffint8.data import load_dataset, to_float_images
from ffint8.errors import ConfigError
from ffint8.models import create_model
from ffint8.nn import blocks
from ffint8.nn.blocks import ConvBlock
from ffint8.train import ff_units
from ffint8.train.config import FFConfig, TrainConfig
from ffint8.train.loop import FFTrainer


@pytest.fixture(autouse=True)
def _one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def two_blocks(seed=0):
    torch.manual_seed(seed)
    return [ConvBlock(3, 5, k=3), ConvBlock(5, 4, k=3, stride=2)]


def norm_inputs(units, batches, cfg, monkeypatch):
    """Every norm's input for each batch, in one training-mode forward per batch: recorded where
    ConvNorm hands it to the norm (the fused kernel, or the module where that does not apply)."""
    seen = {id(u.block.norm): [] for u in units}
    fused = blocks.batch_norm_act

    def record(z, norm, act):
        seen[id(norm)].append(z.detach().clone())
        return fused(z, norm, act)

    with monkeypatch.context() as m, torch.no_grad():  # no_grad: INT8 scales as inference's
        m.setattr(blocks, "batch_norm_act", record)
        for x in batches:
            ff_units.forward_units(units, x, cfg, seeds=None)
    return seen


@pytest.mark.parametrize("algo", ["ff-fp32", "ff-int8"])
def test_statistics_are_the_plain_average_of_the_batches(algo, monkeypatch):
    units = two_blocks()
    cfg = FFConfig(algo=algo)
    batches = [torch.rand(6, 3, 8, 8) * (1 + i) for i in range(3)]  # differing statistics
    for u in units:  # training-mode forwards to see the norm inputs, then stats from elsewhere
        u.train()
    seen = norm_inputs(units, batches, cfg, monkeypatch)
    for u in units:
        u.block.norm.running_mean.fill_(7.0)
        u.block.norm.running_var.fill_(9.0)
    assert ff_units.estimate_norm_statistics(units, batches, cfg) == 3
    for u in units:
        maps = seen[id(u.block.norm)]
        mean = torch.stack([m.double().mean((0, 2, 3)) for m in maps]).mean(0)
        var = torch.stack([m.double().var((0, 2, 3), unbiased=True) for m in maps]).mean(0)
        torch.testing.assert_close(u.block.norm.running_mean.double(), mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(u.block.norm.running_var.double(), var, rtol=1e-4, atol=1e-6)
        assert int(u.block.norm.num_batches_tracked) == 3


def test_modules_are_left_as_found_and_no_batch_changes_nothing():
    units = two_blocks()
    units[0].eval()
    units[1].train()
    units[1].block.norm.momentum = 0.3
    before = [u.block.norm.running_mean.clone() for u in units]
    assert ff_units.estimate_norm_statistics(units, [], FFConfig()) == 0
    assert all(torch.equal(b, u.block.norm.running_mean) for b, u in zip(before, units))
    ff_units.estimate_norm_statistics(units, [torch.rand(4, 3, 8, 8)], FFConfig())
    assert not units[0].training and units[1].training
    assert units[0].block.norm.momentum == 0.1 and units[1].block.norm.momentum == 0.3
    assert not torch.equal(before[0], units[0].block.norm.running_mean)
    assert not any(p.grad is not None for u in units for p in u.parameters())


def small_cnn_trainer(norm_batches=4, algo="ff-int8", model="mobilenetv2"):
    d = load_dataset("synthetic", limit_train=96, limit_test=8)
    cfg = TrainConfig(model=model, width=0.25, batch_size=16, epochs=1, norm_batches=norm_batches,
                      ff=FFConfig(algo=algo, look_ahead="chain", lambda_start=0.1))
    torch.manual_seed(0)
    tr = FFTrainer(create_model(model, width=0.25), cfg, 10)
    return tr, to_float_images(d.train.images), d.train.labels, d


def running_stats(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k}


def test_refresh_is_deterministic_and_leaves_training_draws_alone():
    tr, x, y, _ = small_cnn_trainer()
    tr.train_epoch(x, y)
    moving = running_stats(tr.model)
    state = tr.generator.get_state()
    counter = tr.seeds.counter
    assert tr.refresh_norm_statistics(x, y) == 4
    first = running_stats(tr.model)
    assert torch.equal(state, tr.generator.get_state()) and tr.seeds.counter == counter
    assert any(not torch.equal(moving[k], first[k]) for k in first)
    tr.refresh_norm_statistics(x, y)
    assert all(torch.equal(first[k], v) for k, v in running_stats(tr.model).items())
    tr.epoch += 1  # another epoch draws other batches
    tr.refresh_norm_statistics(x, y)
    assert any(not torch.equal(first[k], v) for k, v in running_stats(tr.model).items())


def test_uint8_images_give_the_same_statistics_as_float():
    tr, x, y, d = small_cnn_trainer()
    tr.refresh_norm_statistics(x, y)
    a = running_stats(tr.model)
    tr.refresh_norm_statistics(d.train.images, y)
    assert all(torch.equal(a[k], v) for k, v in running_stats(tr.model).items())


@pytest.mark.parametrize("case", ["zero", "dense", "bp"])
def test_nothing_to_refresh(case):
    if case == "dense":
        cfg = TrainConfig(model="mlp", hidden=(20,), norm_batches=4)
        tr = FFTrainer(create_model("mlp", hidden=(20,)), cfg, 10)
        x, y = torch.rand(32, 784), torch.randint(0, 10, (32,))
        assert tr.refresh_norm_statistics(x, y) == 0
        return
    tr, x, y, _ = small_cnn_trainer(norm_batches=0 if case == "zero" else 4)
    before = running_stats(tr.model)
    if case == "bp":  # a model without batch norm: ConvBlocks with norm="none"
        tr.units = [ConvBlock(1, 4, k=3, norm="none")]
    assert tr.refresh_norm_statistics(x, y) == 0
    assert all(torch.equal(before[k], v) for k, v in running_stats(tr.model).items())


def test_more_batches_than_the_data_hold_uses_whole_batches_only():
    tr, x, y, _ = small_cnn_trainer(norm_batches=50)
    assert tr.refresh_norm_statistics(x, y) == 96 // 16


def test_negative_norm_batches_is_a_clear_error(capsys):
    with pytest.raises(ConfigError, match="--norm-batches"):
        TrainConfig(norm_batches=-1)
    assert main(["train", "--norm-batches", "-2", "--out", "/nonexistent/x"]) == 2
    assert "--norm-batches" in capsys.readouterr().err


def test_evaluation_after_training_uses_refreshed_statistics():
    """fit refreshes before it scores: the statistics it leaves are those a refresh at that
    epoch gives, not training's moving averages."""
    tr, x, y, d = small_cnn_trainer()
    tr.fit(x, y, to_float_images(d.test.images), d.test.labels)
    after = running_stats(tr.model)
    tr.epoch -= 1  # the epoch the refresh ran at
    tr.refresh_norm_statistics(x, y)
    assert all(torch.equal(after[k], v) for k, v in running_stats(tr.model).items())


def test_cnn_run_resumes_exactly_and_may_change_norm_batches(tmp_path):
    common = ["--model", "mobilenetv2", "--width", "0.25", "--dataset", "synthetic",
              "--limit-train", "64", "--limit-test", "16", "--batch-size", "16",
              "--look-ahead", "chain", "--lambda-start", "0.1", "--lr-schedule", "constant",
              "--norm-batches", "3", "--threads", "1", "--no-progress"]
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(["train", *common, "--epochs", "2", "--out", str(full)]) == 0
    assert main(["train", *common, "--epochs", "1", "--out", str(part)]) == 0
    assert main(["train", "--resume", str(part), "--epochs", "2", "--no-progress"]) == 0
    a = torch.load(full / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(part / "model.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    acc = [e["test_accuracy"] for e in json.loads((full / "metrics.json").read_text())["epochs"]]
    assert acc == [e["test_accuracy"]
                   for e in json.loads((part / "metrics.json").read_text())["epochs"]]
    # an evaluation setting: a resume may change it
    assert main(["train", "--resume", str(part), "--epochs", "3", "--norm-batches", "0",
                 "--no-progress"]) == 0
