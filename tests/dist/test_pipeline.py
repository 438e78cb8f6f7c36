"""Layer-pipelined FF: stages in threads against one process, the stale variant, the message links
over gloo, and a whole two-rank run against `run_training`."""

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from ffint8.data import load_dataset, to_float_images
from ffint8.dist.ddp import init_process_group, shutdown
from ffint8.dist.launch import run_pipeline_training
from ffint8.dist.pipeline import DistLink, ThreadedPipeline, check_pipeline
from ffint8.errors import ConfigError, DivergenceError
from ffint8.models import create_model
from ffint8.train.config import FFConfig, TrainConfig
from ffint8.train.loop import FFTrainer
from ffint8.train.run import load_checkpoint, run_training


@pytest.fixture(scope="module")
def data():
    d = load_dataset("synthetic", limit_train=320, limit_test=200)
    return (to_float_images(d.train.images), d.train.labels,
            to_float_images(d.test.images), d.test.labels)


def config(algo="ff-fp32", look="collab", hidden=(32, 32), lr=0.003, **ff) -> TrainConfig:
    return TrainConfig(hidden=hidden, batch_size=32, lr=lr, seed=1, epochs=2,
                       ff=FFConfig(algo=algo, look_ahead=look, lambda_start=0.05, **ff))


def model(hidden=(32, 32)):
    torch.manual_seed(1)
    return create_model("mlp", hidden=hidden)


@pytest.mark.parametrize("look", ["none", "collab"])
@pytest.mark.parametrize("hidden", [(32, 32), (32, 24, 16)])
def test_float_pipeline_is_one_process_exactly(data, look, hidden):
    """Each forward uses weights updated through the previous batch and collab waits for the later
    units' goodness of the same batch: one process's float operations, bit for bit, except that
    collab sums the other units' goodness in another order (G_0 + G_2 against (G_0 + G_1 + G_2)
    - G_1), which rounds differently from three units on."""
    x, y, _, _ = data
    cfg = config(look=look, hidden=hidden)
    one, piped = model(hidden), model(hidden)
    trainer = FFTrainer(one, cfg, 10)
    pipe = ThreadedPipeline(piped, cfg, 10)
    for _ in range(cfg.epochs):
        loss1, _ = trainer.train_epoch(x, y)
        trainer.epoch += 1
        loss2, _ = pipe.train_epoch(x, y)
        assert loss2 == pytest.approx(loss1, rel=1e-6)
    for a, b in zip(one.parameters(), piped.parameters()):
        if look == "none" or len(hidden) == 2:
            assert torch.equal(a, b)
        else:
            assert torch.allclose(a, b, rtol=0, atol=1e-6)


def test_int8_pipeline_trains(data):
    x, y, xt, yt = data
    net = model()
    cfg = config(algo="ff-int8")
    pipe = ThreadedPipeline(net, cfg, 10)
    losses = [pipe.train_epoch(x, y)[0] for _ in range(3)]
    assert losses[2] < losses[0]
    assert FFTrainer(net, cfg, 10).evaluate(xt, yt) > 0.6


def test_stale_collab_three_ranks_runs_and_lags(data):
    """stale: rank r applies its updates R-1-r batches late, so it is no longer one process."""
    x, y, _, _ = data
    hidden = (32, 24, 16)
    exact, stale = model(hidden), model(hidden)
    ThreadedPipeline(exact, config(hidden=hidden), 10).train_epoch(x, y)
    loss, _ = ThreadedPipeline(stale, config(hidden=hidden), 10, stale=True).train_epoch(x, y)
    assert loss == loss  # finished: no NaN, no deadlock
    assert not torch.equal(exact.units[0].weight, stale.units[0].weight)


def test_a_failing_stage_stops_the_pipeline(data):
    x, y, _, _ = data
    net = model()
    with torch.no_grad():
        net.units[1].weight[0, 0] = float("nan")
    with pytest.raises(DivergenceError, match="unit 2"):
        ThreadedPipeline(net, config(look="none"), 10).train_epoch(x, y)


@pytest.mark.parametrize("change, match", [
    ({"look": "chain"}, "pass --look-ahead collab"),
    ({"schedule": "greedy"}, "simultaneous"),
    ({"negatives": "hard"}, "random"),
])
def test_unsupported_settings_are_rejected(change, match):
    look = change.pop("look", "collab")
    with pytest.raises(ConfigError, match=match):
        check_pipeline(config(look=look, **change), 2, 2)
    with pytest.raises(ConfigError, match="one rank per unit"):
        check_pipeline(config(), 3, 2)


# ---- two processes over gloo (forked: they inherit the imported torch) -------------------------

def _worker(rank: int, port: int, tmp: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE="2")
    torch.set_num_threads(1)
    init_process_group("cpu")
    try:
        # rank 0 sends (at most 2 in flight: a send completes once rank 1 has received it),
        # rank 1 echoes every tensor back
        link = DistLink(1 - rank, depth=2)
        sent = [torch.randn(5, 7), torch.randn(3), torch.randn(0, 4), torch.randn(64, 33)]
        if rank == 0:
            for t in sent:
                link.send(t)
            got = [link.recv() for _ in sent]
        else:
            got = [link.recv() for _ in sent]
            for t in got:
                link.send(t)
        link.flush()
        torch.save({"sent": sent, "got": got}, f"{tmp}/link{rank}.pt")
        cfg = TrainConfig(dataset="synthetic", hidden=(32, 32), batch_size=32, epochs=2,
                          limit_train=320, limit_test=100, seed=1,
                          ff=FFConfig(algo="ff-fp32", look_ahead="collab", lambda_start=0.05))
        run_pipeline_training(cfg, f"{tmp}/pipe", rank, 2, log=lambda s: None)
    finally:
        shutdown()


def test_two_processes_over_gloo(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_worker, args=(port, str(tmp_path)), nprocs=2, start_method="fork")
    a, b = (torch.load(tmp_path / f"link{r}.pt", weights_only=True) for r in range(2))
    for got, echoed, sent in zip(b["got"], a["got"], a["sent"], strict=True):
        assert torch.equal(got, sent) and torch.equal(echoed, sent)  # whole, in order, shapes kept
    cfg = TrainConfig(dataset="synthetic", hidden=(32, 32), batch_size=32, epochs=2,
                      limit_train=320, limit_test=100, seed=1,
                      ff=FFConfig(algo="ff-fp32", look_ahead="collab", lambda_start=0.05))
    torch.set_num_threads(1)
    ref = run_training(cfg, tmp_path / "one", progress=False, log=lambda s: None)
    piped, _, _ = load_checkpoint(tmp_path / "pipe" / "model.pt")
    one, _, _ = load_checkpoint(tmp_path / "one" / "model.pt")
    for p, q in zip(piped.parameters(), one.parameters()):
        assert torch.equal(p, q)
    m = json.loads((tmp_path / "pipe" / "metrics.json").read_text())
    assert m["test_accuracy"] == ref["test_accuracy"]
    assert m["predict_units"] == ref["predict_units"]  # auto chose alike
    assert m["distributed"]["mode"] == "pipeline"
