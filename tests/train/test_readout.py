"""The softmax readout (one neutral-label pass) and hard negatives."""

import pytest
import torch

from ffint8.data import embed_neutral, hard_negative_labels, load_dataset, to_float_images
from ffint8.errors import ConfigError
from ffint8.export import FFInference
from ffint8.models import create_model
from ffint8.train.config import FFConfig, TrainConfig
from ffint8.train.ff import readout_gradients
from ffint8.train.loop import FFTrainer


@pytest.fixture(scope="module")
def data():
    d = load_dataset("synthetic", limit_train=512, limit_test=200)
    return (to_float_images(d.train.images), d.train.labels,
            to_float_images(d.test.images), d.test.labels)


def make(algo="ff-int8", predict="softmax", negatives="random", hidden=(64, 64), seed=0):
    torch.manual_seed(seed)
    cfg = TrainConfig(hidden=hidden, batch_size=32, seed=seed, epochs=3,
                      ff=FFConfig(algo=algo, predict=predict, negatives=negatives))
    model = create_model("mlp", hidden=hidden, readout=predict == "softmax")
    return FFTrainer(model, cfg, 10)


def test_embed_neutral_writes_one_over_c():
    x = torch.rand(4, 20)
    e = embed_neutral(x, 10)
    assert torch.equal(e[:, :10], torch.full((4, 10), 0.1))
    assert torch.equal(e[:, 10:], x[:, 10:])
    with pytest.raises(ValueError, match="D >= num_classes"):
        embed_neutral(torch.rand(4, 5), 10)


def test_hard_negatives_never_true_and_follow_the_scores():
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 1, 2, 3] * 5000)
    scores = torch.zeros(len(labels), 4)
    scores[:, 3] = 2.0  # class 3 is what the model prefers; for label 3, the rest are equal
    neg = hard_negative_labels(scores, labels, g)
    assert not bool((neg == labels).any())
    rows = labels == 0
    frac3 = (neg[rows] == 3).double().mean().item()
    want = torch.e**2 / (torch.e**2 + 2)  # softmax over the wrong labels {1, 2, 3}
    assert abs(frac3 - want) < 0.02
    counts = torch.bincount(neg[labels == 3], minlength=4)[:3].double()
    assert (counts / counts.sum() - 1 / 3).abs().max() < 0.03
    # Non-finite scores fall back to uniform over the wrong labels.
    bad = hard_negative_labels(torch.full((1000, 4), float("nan")), torch.zeros(1000, dtype=torch.long), g)
    assert not bool((bad == 0).any()) and set(bad.tolist()) == {1, 2, 3}


def test_readout_gradients_match_autograd():
    torch.manual_seed(0)
    lin = torch.nn.Linear(12, 5).double()
    feats = torch.randn(7, 12, dtype=torch.float64)
    labels = torch.randint(0, 5, (7,))
    loss, logits = readout_gradients(lin, feats, labels)
    gw, gb = lin.weight.grad.clone(), lin.bias.grad.clone()
    lin.weight.grad = lin.bias.grad = None
    ref = torch.nn.functional.cross_entropy(lin(feats), labels)
    ref.backward()
    assert torch.allclose(loss, ref.detach(), atol=1e-12)
    assert torch.allclose(gw, lin.weight.grad, atol=1e-12)
    assert torch.allclose(gb, lin.bias.grad, atol=1e-12)
    assert logits.shape == (7, 5)


@pytest.mark.parametrize("algo", ["ff-int8", "ff-fp32"])
@pytest.mark.parametrize("negatives", ["random", "hard"])
def test_softmax_readout_learns(data, algo, negatives):
    x, y, xt, yt = data
    tr = make(algo, "softmax", negatives)
    before = tr.evaluate(xt, yt)
    logs = tr.fit(x, y, xt, yt)
    assert logs[-1].test_accuracy > 0.8 > before


def test_hard_negatives_with_goodness_prediction_learn(data):
    x, y, xt, yt = data
    tr = make("ff-int8", "goodness", "hard")
    assert tr.fit(x, y, xt, yt)[-1].test_accuracy > 0.8


def test_readout_gets_no_gradient_into_units(data):
    x, y, _, _ = data
    tr = make("ff-fp32", "softmax")
    ref = make("ff-fp32", "goodness")  # same seed: same units, same random negatives
    ref.model.units.load_state_dict(tr.model.units.state_dict())
    tr.train_epoch(x[:64], y[:64])
    ref.train_epoch(x[:64], y[:64])
    for a, b in zip(tr.units, ref.units):
        assert torch.equal(a.weight, b.weight)


def test_softmax_prediction_is_one_pass(data, monkeypatch):
    import ffint8.train.loop as loop

    tr = make("ff-int8", "softmax")
    rows = []
    real = loop.forward_records
    monkeypatch.setattr(loop, "forward_records", lambda u, x, *a: rows.append(len(x)) or real(u, x, *a))
    tr.predict_scores(data[2][:50])
    assert rows == [50]


def test_softmax_without_readout_is_a_config_error():
    cfg = TrainConfig(hidden=(8,), ff=FFConfig(predict="softmax"))
    with pytest.raises(ConfigError, match="--predict softmax needs a model built with a readout"):
        FFTrainer(create_model("mlp", hidden=(8,)), cfg, 10)
    with pytest.raises(ConfigError, match="--negatives"):
        FFConfig(negatives="easy")


@pytest.mark.parametrize("hidden", [(16,), (16, 12, 8)])
def test_export_softmax_matches_trainer(data, hidden):
    tr = make("ff-fp32", "softmax", hidden=hidden)
    x = data[2][:20]
    with torch.no_grad():
        got = FFInference(tr.model, tr.cfg.ff, 10)(x)
    assert torch.allclose(got, tr.predict_scores(x), atol=1e-5)
