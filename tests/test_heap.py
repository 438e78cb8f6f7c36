"""ffint8.heap: the free heap goes back to the system every RELEASE_EVERY steps of either
training loop, and the call is harmless where there is no malloc_trim."""

import pytest
import torch

from ffint8 import heap
from ffint8.bp import BPConfig, BPTrainer
from ffint8.data import load_dataset, to_float_images
from ffint8.models import create_model
from ffint8.train.config import FFConfig, TrainConfig
from ffint8.train.loop import FFTrainer


@pytest.fixture(scope="module")
def data():
    d = load_dataset("synthetic", limit_train=25 * 16, limit_test=10)
    return to_float_images(d.train.images), d.train.labels


def ff_trainer():
    cfg = TrainConfig(hidden=(32,), batch_size=16, ff=FFConfig(algo="ff-int8"))
    return FFTrainer(create_model("mlp", hidden=(32,)), cfg, 10)


def bp_trainer():
    cfg = TrainConfig(hidden=(32,), batch_size=16)
    model = create_model("mlp", in_features=784, hidden=(32,), num_classes=10, classifier=True)
    return BPTrainer(model, cfg, 10, algo="bp-fp32", bp=BPConfig())


@pytest.mark.parametrize("make", [ff_trainer, bp_trainer], ids=["ff", "bp"])
def test_each_loop_releases_the_heap_every_few_steps(data, make, monkeypatch):
    calls = []
    monkeypatch.setattr(heap, "release_free_heap", lambda: calls.append(1) or True)
    x, y = data
    make().train_epoch(x, y)  # 25 steps
    assert len(calls) == 25 // heap.RELEASE_EVERY


def test_after_step_counts_from_zero(monkeypatch):
    calls = []
    monkeypatch.setattr(heap, "release_free_heap", lambda: calls.append(1) or True)
    for step in range(heap.RELEASE_EVERY - 1):
        heap.after_step(step)
    assert calls == []
    heap.after_step(heap.RELEASE_EVERY - 1)
    assert calls == [1]


def test_release_without_malloc_trim_does_nothing(monkeypatch):
    monkeypatch.setattr(heap, "_malloc_trim", lambda: None)  # musl, macOS, Windows
    assert heap.release_free_heap() is False
    heap.after_step(heap.RELEASE_EVERY - 1)  # no error


def test_release_returns_true_on_glibc():
    if heap._malloc_trim() is None:
        pytest.skip("no malloc_trim in this C library")
    torch.empty(1 << 20).fill_(1)  # something to free
    assert heap.release_free_heap() is True
