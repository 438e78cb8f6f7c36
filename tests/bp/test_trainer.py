"""BPTrainer: learning, the float path against autograd, lr scaling, resume, errors."""

import copy
import io
import math

import pytest
import torch
from torch.nn import functional as F

from ffint8.bp import BP_ALGOS, BPConfig, BPTrainer
from ffint8.bp.clip import lr_scale
from ffint8.bp.linear import int8_linear_inference
from ffint8.data import load_dataset, to_float_images
from ffint8.errors import CheckpointError, ConfigError, DivergenceError
from ffint8.models import create_model
from ffint8.train.config import FFConfig, TrainConfig

HIDDEN = (32, 32)


@pytest.fixture(scope="module")
def data():
    d = load_dataset("synthetic", limit_train=256, limit_test=100)
    return (to_float_images(d.train.images), d.train.labels,
            to_float_images(d.test.images), d.test.labels)


SEARCH_OFTEN = BPConfig(search_period=3)  # 8 steps an epoch: searches run within each epoch


def make(algo, seed=0, epochs=3, bp=SEARCH_OFTEN, init_seed=None, **cfg_kw):
    torch.manual_seed(seed if init_seed is None else init_seed)
    kw = {"hidden": HIDDEN, "batch_size": 32, "lr": 0.003, "seed": seed, "epochs": epochs, **cfg_kw}
    model = create_model("mlp", in_features=784, hidden=HIDDEN, num_classes=10, classifier=True)
    return BPTrainer(model, TrainConfig(**kw), 10, algo=algo, bp=bp)


def weights(tr):
    return [p.detach().clone() for pair in tr.model.linear_layers() for p in pair]


@pytest.mark.parametrize("algo", BP_ALGOS)
def test_each_algorithm_lowers_the_loss(data, algo):
    x, y, xt, yt = data
    logs = make(algo).fit(x, y, xt, yt)
    assert [l.epoch for l in logs] == [1, 2, 3]
    assert logs[-1].train_loss < 0.5 * logs[0].train_loss
    assert logs[-1].test_accuracy > 0.8  # chance is 0.1
    assert all(l.lam == 0.0 and l.unit is None and l.seconds > 0 for l in logs)


def test_fp32_step_matches_float64_autograd(data):
    x, y, _, _ = data
    x, y = x[:32], y[:32]  # one batch: one SGD step, whose first update is exactly lr * grad
    tr = make("bp-fp32", optimizer="sgd", lr=1.0)
    before = weights(tr)
    params = [p.double().requires_grad_(True) for p in before]
    h = x.double()
    for i in range(0, len(params), 2):
        h = F.linear(h, params[i], params[i + 1])
        if i < len(params) - 2:
            h = h.relu()
    F.cross_entropy(h, y).backward()
    loss, _ = tr.train_epoch(x, y)
    assert loss == pytest.approx(F.cross_entropy(h, y).item(), rel=1e-5)
    for b, a, p in zip(before, weights(tr), params):
        torch.testing.assert_close((b - a).double(), p.grad, rtol=1e-4, atol=1e-6)


def test_same_seed_same_weights_and_other_seed_differs(data):
    x, y, _, _ = data
    a, b, c = make("bp-ui8", seed=3), make("bp-ui8", seed=3), make("bp-ui8", seed=4)
    for t in (a, b, c):
        t.train_epoch(x, y)
    assert all(torch.equal(p, q) for p, q in zip(weights(a), weights(b)))
    assert not torch.equal(weights(a)[0], weights(c)[0])


@pytest.mark.parametrize("algo", BP_ALGOS)
def test_state_dict_round_trip_gives_identical_next_steps(data, algo):
    x, y, _, _ = data
    a = make(algo)
    a.train_epoch(x, y)
    a.epoch = 1
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)  # as a checkpoint stores it, read back as run.py reads it
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    b = make(algo, init_seed=9)  # other initial weights, fresh generator and seed counter
    b.load_state_dict(state)
    a.train_epoch(x, y)
    b.train_epoch(x, y)
    assert all(torch.equal(p, q) for p, q in zip(weights(a), weights(b)))
    assert b.epoch == 1 and b.seeds.counter == a.seeds.counter
    for la, lb in zip(a.layers, b.layers):
        sa, sb = la.grad.state_dict(), lb.grad.state_dict()
        assert sa.keys() == sb.keys()
        assert all(sa[k] == sb[k] or (math.isnan(sa[k]) and math.isnan(sb[k])) for k in sa)


def test_ui8_scales_each_layers_lr_by_its_deviation(data):
    x, y, _, _ = data
    tr = make("bp-ui8", lr=0.002)
    tr.train_epoch(x, y)
    for group, layer in zip(tr.optimizer.param_groups, tr.layers):
        assert layer.grad.deviation > 0
        assert group["lr"] == pytest.approx(0.002 * lr_scale(layer.grad.deviation))
        assert group["lr"] < 0.002
    off = make("bp-ui8", lr=0.002, bp=BPConfig(lr_scaling=False))
    off.train_epoch(x, y)
    assert [g["lr"] for g in off.optimizer.param_groups] == [0.002] * 3


def test_int8_predict_uses_the_round_to_nearest_int8_forward(data):
    _, _, xt, _ = data
    tr = make("bp-int8")
    h = xt[:10]
    layers = tr.model.linear_layers()
    for i, (w, b) in enumerate(layers):
        h = int8_linear_inference(h, w, b)
        if i < len(layers) - 1:
            h = h.relu()
    scores = tr.predict_scores(xt[:10])
    assert scores.shape == (10, 10)
    assert torch.equal(scores, h)
    assert torch.equal(make("bp-fp32").predict_scores(xt[:10]), tr.model(xt[:10]).detach())


def test_nan_weight_stops_with_a_clear_error(data):
    x, y, _, _ = data
    tr = make("bp-int8")
    with torch.no_grad():
        tr.model.linear_layers()[1][0][0, 0] = float("nan")
    with pytest.raises(DivergenceError, match=r"epoch 1, step 1: the loss is nan"):
        tr.train_epoch(x, y)


def test_bad_algorithm_unit_and_foreign_state(data):
    with pytest.raises(ConfigError, match="bp-fp32, bp-int8, bp-ui8, bp-gdai8"):
        make("ff-int8")
    with pytest.raises(ConfigError, match="bp-"):  # algo defaults to cfg.ff.algo (ff-int8)
        BPTrainer(create_model("mlp", hidden=HIDDEN, classifier=True), TrainConfig(), 10)
    ff = FFConfig()
    object.__setattr__(ff, "algo", "bp-ui8")  # until config.ALGOS lists the bp algorithms
    tr = BPTrainer(create_model("mlp", hidden=HIDDEN, classifier=True), TrainConfig(ff=ff), 10)
    assert tr.algo == "bp-ui8"
    x, y, _, _ = data
    with pytest.raises(ConfigError, match="greedy"):
        tr.train_epoch(x, y, unit=0)
    state = copy.deepcopy(make("bp-int8").state_dict())
    with pytest.raises(CheckpointError, match="bp-int8, not bp-ui8"):
        tr.load_state_dict(state)
