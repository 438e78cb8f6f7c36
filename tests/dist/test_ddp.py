"""Data-parallel FF: row sharding, the shared-scale int8 gradient exchange, and two gloo ranks on
loopback against one process with the same effective batch."""

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from ffint8.cli import main
from ffint8.data import load_dataset, to_float_images
from ffint8.dist.ddp import (
    INT32_MAX,
    DataParallel,
    init_process_group,
    quantize_shared,
    rank_seed,
    shard_rows,
    shutdown,
    torchrun_env,
)
from ffint8.errors import ConfigError
from ffint8.models import create_model
from ffint8.quant import QMAX
from ffint8.train.config import FFConfig, TrainConfig
from ffint8.train.loop import FFTrainer
from ffint8.train.run import run_training

WORLD = 2
BATCH = 16  # per rank; the one-process reference uses BATCH * WORLD
HIDDEN = (32, 32)
SEED = 5
N_TRAIN = 256


@pytest.mark.parametrize("m", [1, 2, 3, 16, 17, 33])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_shard_rows_partition_the_batch(m, world):
    parts = [shard_rows(m, r, world) for r in range(world)]
    covered = [i for s in parts for i in range(m)[s]]
    assert covered == list(range(m))  # disjoint, in order, nothing left out
    sizes = [s.stop - s.start for s in parts]
    assert max(sizes) - min(sizes) <= 1


def test_rank_seeds_rank0_keeps_the_run_seed():
    assert rank_seed(7, 0) == 7
    assert len({rank_seed(7, r) for r in range(8)}) == 8


def test_int32_sum_capacity_is_checked_exactly():
    largest = INT32_MAX // QMAX  # 127 * W must fit int32
    DataParallel(0, largest, grad_int8=True)
    with pytest.raises(ConfigError, match="int32"):
        DataParallel(0, largest + 1, grad_int8=True)


def test_quantize_shared_uses_the_shared_scale_and_is_unbiased():
    x = torch.randn(4000) * 0.01
    amax = torch.tensor(0.2)  # another rank's gradient was larger
    qt = quantize_shared(x, amax, seed=1)
    assert torch.allclose(qt.scale, amax / QMAX)
    assert qt.q.dtype == torch.int8 and qt.q.abs().max() <= QMAX
    err = (qt.q.float() * qt.scale - x).abs()
    assert err.max() <= qt.scale  # stochastic rounding: within one step
    mean = torch.stack([quantize_shared(x, amax, seed=s).q.float() for s in range(400)]).mean(0)
    # E[q] = x / scale; 400 draws of a Bernoulli step: standard error <= 0.5 / 20 per element
    assert (mean * qt.scale - x).abs().max() < 5 * 0.025 * qt.scale


def test_check_data_rejects_an_empty_rank():
    dp = DataParallel(0, 2)
    dp.check_data(66, 32)  # last global batch of 2: one row each
    with pytest.raises(ConfigError, match="--limit-train 64"):
        dp.check_data(65, 32)


def test_without_torchrun_a_clear_error(monkeypatch, capsys):
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(ConfigError, match="torchrun"):
        torchrun_env()
    assert main(["train", "--distributed", "--dataset", "synthetic"]) == 2
    assert "torchrun" in capsys.readouterr().err
    assert main(["train", "--grad-int8", "--dataset", "synthetic"]) == 2
    assert "--grad-int8 needs --distributed" in capsys.readouterr().err


# ---- two ranks on loopback (gloo), one spawn for all the checks below ---------------------------

def _data():
    d = load_dataset("synthetic", limit_train=N_TRAIN, limit_test=200, seed=SEED)
    return (to_float_images(d.train.images), d.train.labels,
            to_float_images(d.test.images), d.test.labels)


def _trainer(algo: str, batch: int, init_seed: int, parallel=None) -> FFTrainer:
    torch.manual_seed(init_seed)
    cfg = TrainConfig(hidden=HIDDEN, batch_size=batch, lr=0.003, seed=SEED, epochs=2,
                      lr_schedule="constant",
                      ff=FFConfig(algo=algo, look_ahead="collab", lambda_start=0.05, lambda_step=0.001,
                                  peer_weight=0.03))  # peer: the global batch's means, all-reduced
    return FFTrainer(create_model("mlp", hidden=HIDDEN), cfg, 10, parallel=parallel)


def _worker(rank: int, world: int, port: int, tmp: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    _, _, backend = init_process_group("cpu")
    try:
        x, y, xt, yt = _data()
        for name, algo, grad_int8 in (("fp32", "ff-fp32", False), ("int8", "ff-int8", False),
                                      ("gradint8", "ff-int8", True)):
            dp = DataParallel(rank, world, grad_int8, backend)
            tr = _trainer(algo, BATCH, SEED + rank, dp)  # rank 1 starts elsewhere: broadcast
            dp.setup(tr)
            logs = tr.fit(x, y, xt, yt)
            torch.save({"state": tr.model.state_dict(), "logs": [e.to_dict() for e in logs]},
                       f"{tmp}/{name}{rank}.pt")
        # the int8 exchange on known gradients: rank r's gradient is randn seeded by r
        dp = DataParallel(rank, world, True, backend)
        dp.seeds = _trainer("ff-int8", BATCH, 0).seeds
        lin = torch.nn.Linear(300, 200)
        lin.weight.grad = torch.randn(200, 300, generator=torch.Generator().manual_seed(rank))
        lin.bias.grad = torch.randn(200, generator=torch.Generator().manual_seed(100 + rank))
        losses = dp.reduce(lin, torch.tensor([1.0 + rank, 2.0]), m=2 * BATCH)
        torch.save({"w": lin.weight.grad, "b": lin.bias.grad, "losses": losses},
                   f"{tmp}/reduce{rank}.pt")
        cfg = TrainConfig(dataset="synthetic", hidden=HIDDEN, batch_size=BATCH, epochs=1,
                          limit_train=N_TRAIN, limit_test=100, seed=SEED)
        run_training(cfg, f"{tmp}/run{rank}", progress=False, log=lambda s: None,
                     parallel=DataParallel(rank, world, False, backend))
    finally:
        shutdown()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # fork: the children inherit the imported torch (importing it again costs seconds per rank)
    mp.start_processes(_worker, args=(WORLD, port, str(tmp)), nprocs=WORLD, start_method="fork")
    return tmp


def _load(tmp, name):
    return [torch.load(tmp / f"{name}{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.mark.parametrize("name", ["fp32", "int8", "gradint8"])
def test_weights_stay_identical_across_ranks(ranks, name):
    a, b = _load(ranks, name)
    for k in a["state"]:
        assert torch.equal(a["state"][k], b["state"][k]), k
    for ea, eb in zip(a["logs"], b["logs"]):  # same global losses and accuracy on every rank
        assert ea | {"seconds": 0} == eb | {"seconds": 0}


def test_float_path_matches_one_process_with_the_effective_batch(ranks):
    """Same global batches, same negatives, gradients summed by share: only the order of float
    additions differs (rank sums, then the all_reduce), so 2 epochs agree to ~1e-5."""
    x, y, xt, yt = _data()
    torch.set_num_threads(1)
    one = _trainer("ff-fp32", BATCH * WORLD, SEED)
    logs = one.fit(x, y, xt, yt)
    two = _load(ranks, "fp32")[0]
    for k, v in one.model.state_dict().items():
        assert torch.allclose(two["state"][k], v, rtol=1e-4, atol=1e-5), k
    for e1, e2 in zip(logs, two["logs"]):
        assert e2["train_loss"] == pytest.approx(e1.train_loss, rel=1e-5)
        assert e2["test_accuracy"] == pytest.approx(e1.test_accuracy, abs=0.01)


def test_int8_ranks_learn_as_well_as_one_process(ranks):
    """INT8 ranks quantise their own rows (own activation scales and rounding streams), so they
    are not bit-comparable with one process; accuracy is."""
    x, y, xt, yt = _data()
    one = _trainer("ff-int8", BATCH * WORLD, SEED).fit(x, y, xt, yt)[-1].test_accuracy
    for name in ("int8", "gradint8"):
        acc = _load(ranks, name)[0]["logs"][-1]["test_accuracy"]
        assert acc > 0.45 and abs(acc - one) < 0.15, (name, acc, one)


def test_int8_gradient_exchange_error_is_within_one_step_per_rank(ranks):
    a, b = _load(ranks, "reduce")
    share = 0.5  # BATCH of 2 * BATCH rows each
    g = [torch.randn(200, 300, generator=torch.Generator().manual_seed(r)) for r in range(WORLD)]
    exact = share * (g[0] + g[1])
    step = max(share * t.abs().max() for t in g) / QMAX
    err = a["w"] - exact
    assert torch.equal(a["w"], b["w"]) and torch.equal(a["b"], b["b"])
    assert err.abs().max() <= WORLD * step * (1 + 1e-5)
    assert abs(err.mean()) < 0.01 * step  # unbiased: 60000 elements average the rounding out
    assert torch.allclose(a["losses"], torch.tensor([0.5 * 1 + 0.5 * 2, 2.0]))


def test_only_rank0_writes_files(ranks):
    assert (ranks / "run0" / "metrics.json").is_file() and (ranks / "run0" / "model.pt").is_file()
    assert list((ranks / "run1").glob("*")) == []
    m = json.loads((ranks / "run0" / "metrics.json").read_text())
    assert m["distributed"]["effective_batch"] == BATCH * WORLD
