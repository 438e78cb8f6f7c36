"""The backprop baselines on the CNNs: the int8 conv Function (exact against an int64 reference,
close to float autograd, per-channel g_W), the CNN forward with per-layer ops, training, resume,
and eval / predict of a CNN checkpoint through the CLI."""

import copy
import io
import json
import re

import pytest
import torch
from torch.nn import functional as F

from ffint8.bp import BP_ALGOS, BPConfig, BPTrainer
from ffint8.bp import clip as C
from ffint8.bp.conv import ConvWeightDistance, rows_to_map
from ffint8.bp.grad import make_grad_quantizer
from ffint8.bp.linear import Int8Layer, int8_linear_inference
from ffint8.cli import main
from ffint8.data import to_float_images
from ffint8.models import create_model
from ffint8.nn.blocks import Arith
from ffint8.quant import quantize
from ffint8.quant.conv import ConvSpec, int8_conv2d, int8_conv2d_input, int8_conv2d_weight
from ffint8.train.config import TrainConfig
from ffint8.train.ff import SeedStream
from ffint8.train.run import load_checkpoint, make_trainer

CNNS = ("resnet18", "mobilenetv2", "efficientnet_b0")
INT8_ALGOS = ("bp-int8", "bp-ui8", "bp-gdai8")
SMALL_SEARCH = BPConfig(search_grid=8, search_refine=4)  # the search is not what these test
# (in, out, kernel, stride, groups): plain 3x3, strided, depthwise, 1x1
CONVS = [(6, 8, 3, 1, 1), (6, 8, 3, 2, 1), (8, 8, 3, 1, 8), (8, 6, 1, 1, 1)]

def conv_case(shape, seed=0, heavy=False, bias=True):
    """An nn.Conv2d, a non-negative input (B, C, 7, 7) needing a gradient, and an upstream
    gradient for its output; heavy: long-tailed, so bp-gdai8 goes per channel."""
    cin, cout, k, stride, groups = shape
    torch.manual_seed(seed)
    conv = torch.nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=bias)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(4, cin, 7, 7, generator=gen).relu().requires_grad_(True)
    out = F.conv2d(x.detach(), conv.weight.detach(), None, stride, k // 2, 1, groups).shape
    g = torch.randn(out, generator=gen) * 1e-2
    if heavy:
        g = g / torch.rand(out, generator=gen).clamp_min(1e-3)
    return conv, x, g


def spec_of(conv):
    return ConvSpec(conv.stride, conv.padding, conv.groups)


def scaled(acc, scale):
    """The float scaling int8_conv2d_*_scaled apply to an exact accumulator."""
    return acc.float().mul_(scale)


# --------------------------------------------------------------------------------------------
# the int8 conv Function


@pytest.mark.parametrize("kernel", ["float-exact", "int_mm", "reference"])
@pytest.mark.parametrize("algo, heavy", [("bp-int8", False), ("bp-ui8", False),
                                         ("bp-gdai8", False), ("bp-gdai8", True)])
@pytest.mark.parametrize("shape", CONVS[:3])
def test_convolutions_are_exact_against_an_int64_reference(kernel, algo, heavy, shape, recorder):
    """Rounding to nearest everywhere, so the operands can be rebuilt: z, g_x and g_W equal the
    reference kernel's exact int64 accumulators of the same int8 operands, scaled alike."""
    conv, x, g = conv_case(shape, 1, heavy)
    # gaussian_threshold 0.2: a few hundred Gaussian draws are clearly Gaussian-like (0.317 on
    # average), while the default 0.3 lies within their sampling noise
    cfg = BPConfig(search_period=1, act_rounding="nearest", grad_rounding="nearest",
                   gaussian_threshold=0.2)
    rec = recorder(make_grad_quantizer(algo, cfg))
    layer = Int8Layer(rec, SeedStream(0), kernel, act_rounding="nearest")
    z = layer.conv2d(x, conv)
    z.backward(g)
    spec, w = spec_of(conv), conv.weight.detach()
    x_q, w_q = quantize(x.detach(), "nearest"), quantize(w, "nearest")
    z_ref = scaled(int8_conv2d(x_q.q, w_q.q, spec, "reference"), x_q.scale * w_q.scale)
    assert torch.equal(z.detach(), z_ref + conv.bias.detach().view(1, -1, 1, 1))
    gx, gw = rec.ops.for_input, rec.ops.for_weight  # (B * Ho * Wo, O)
    assert gx.q.shape == (g.numel() // g.shape[1], g.shape[1])
    gx_acc = int8_conv2d_input(rows_to_map(gx.q, g.shape), w_q.q, x.shape, spec, "reference")
    assert torch.equal(x.grad, scaled(gx_acc, gx.scale * w_q.scale))
    gw_acc = int8_conv2d_weight(x_q.q, rows_to_map(gw.q, g.shape), w.shape, spec, "reference")
    assert torch.equal(conv.weight.grad, scaled(gw_acc, x_q.scale * gw.scale.reshape(-1, 1, 1, 1)))
    assert torch.equal(conv.bias.grad, g.sum(dim=(0, 2, 3)))  # float: not quantised
    if algo == "bp-gdai8":
        assert (gw.scale.dim() == 2) is heavy  # (1, O): per output channel when long-tailed


@pytest.mark.parametrize("algo", INT8_ALGOS)
@pytest.mark.parametrize("shape", CONVS)
def test_forward_and_gradients_are_close_to_float64_autograd(algo, shape):
    """Default settings (stochastic rounding, kernel auto): each result within 5% (relative L2)."""
    conv, x, g = conv_case(shape, 2)
    ref = [t.detach().double().requires_grad_(True) for t in (x, conv.weight, conv.bias)]
    z_ref = F.conv2d(*ref, conv.stride, conv.padding, 1, conv.groups)
    z_ref.backward(g.double())
    z = Int8Layer(make_grad_quantizer(algo, BPConfig()), SeedStream(0)).conv2d(x, conv)
    z.backward(g)
    for got, want in ((z.detach(), z_ref.detach()), (x.grad, ref[0].grad),
                      (conv.weight.grad, ref[1].grad), (conv.bias.grad, ref[2].grad)):
        assert float((got.double() - want).norm() / want.norm()) < 0.05


def test_per_channel_weight_gradient_is_the_dequantised_float_product(recorder):
    """bp-gdai8 on a long-tailed g: the g_W operand has one scale per output channel, and g_W is
    the float64 weight gradient of the dequantised operands (q * scale, exact in float64), up to
    the float32 rounding of the result."""
    conv, x, g = conv_case(CONVS[1], 3, heavy=True, bias=False)
    rec = recorder(make_grad_quantizer("bp-gdai8", BPConfig()))
    layer = Int8Layer(rec, SeedStream(5))
    layer.conv2d(x, conv).backward(g)
    gw = rec.ops.for_weight
    assert gw.scale.shape == (1, conv.out_channels) and len(set(gw.scale.flatten().tolist())) > 1
    assert gw is not rec.ops.for_input and rec.ops.for_input.scale.dim() == 0
    x_q = quantize(x.detach(), "stochastic", seed=SeedStream(5).next())  # the forward's draw
    gw_float = gw.q.double() * gw.scale.double()  # (B * Ho * Wo, O), a scale per column
    want = torch.nn.grad.conv2d_weight(x_q.q.double() * x_q.scale.double(), conv.weight.shape,
                                       rows_to_map(gw_float, g.shape), conv.stride, conv.padding,
                                       1, conv.groups)
    torch.testing.assert_close(conv.weight.grad.double(), want, rtol=1e-6, atol=0)


def test_conv_weight_distance_is_the_cosine_distance_of_float64_weight_gradients():
    conv, x, g = conv_case(CONVS[2], 4)
    spec, x_q = spec_of(conv), quantize(x.detach(), "nearest")
    rows = g.permute(0, 2, 3, 1).reshape(-1, g.shape[1])
    dist = ConvWeightDistance(x_q.q, x_q.scale, tuple(conv.weight.shape), spec, tuple(g.shape))
    g_hat = quantize(rows, "nearest").dequantize()
    want = [torch.nn.grad.conv2d_weight(x_q.dequantize().double(), conv.weight.shape,
                                        rows_to_map(t, g.shape).double(), conv.stride,
                                        conv.padding, 1, conv.groups) for t in (rows, g_hat)]
    assert dist(rows, g_hat) == pytest.approx(C.cosine_distance(*want), rel=1e-9, abs=1e-15)
    assert 0 < dist(rows, g_hat) < 1e-3 and dist(rows, rows) == pytest.approx(0.0, abs=1e-12)


def test_no_input_gradient_when_the_input_needs_none(recorder):
    conv, x, g = conv_case(CONVS[0])
    x = x.detach()
    rec = recorder(make_grad_quantizer("bp-int8", BPConfig()))
    Int8Layer(rec, SeedStream(0)).conv2d(x, conv).backward(g)
    assert x.grad is None and conv.weight.grad is not None and conv.bias.grad is not None


# --------------------------------------------------------------------------------------------
# the CNN forward with per-layer ops, and BPTrainer on the CNNs


def cnn(name, seed=0):
    torch.manual_seed(seed)
    return create_model(name, in_features=784, width=0.125, classifier=True, num_classes=10)


def norm_parameters(model):
    """ids of the batch norms' parameters."""
    return {id(p) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)
            for p in m.parameters()}


def trainer(name, algo, seed=0, bp=SMALL_SEARCH, init_seed=None, **cfg_kw):
    kw = {"model": name, "batch_size": 8, "lr": 0.01, "seed": seed, "epochs": 10, **cfg_kw}
    return BPTrainer(cnn(name, seed if init_seed is None else init_seed), TrainConfig(**kw), 10,
                     algo=algo, bp=bp)


@pytest.fixture(scope="module")
def batch():
    gen = torch.Generator().manual_seed(1)
    return torch.rand(8, 784, generator=gen), torch.arange(8) % 10


@pytest.mark.parametrize("name", CNNS)
def test_linear_layers_are_every_conv_then_the_head(name):
    m = cnn(name)
    layers = m.linear_layers()
    convs = [mod for mod in m.modules() if isinstance(mod, torch.nn.Conv2d)]
    assert [id(w) for w, _ in layers] == [id(c.weight) for c in convs] + [id(m.head.weight)]
    assert [id(b) for _, b in layers] == [id(c.bias) for c in convs] + [id(m.head.bias)]
    assert any(b is not None for _, b in layers[:-1]) is (name == "efficientnet_b0")  # SE convs
    quantised = {id(p) for wb in layers for p in wb if p is not None}
    assert {id(p) for p in m.parameters()} == quantised | norm_parameters(m)


@pytest.mark.parametrize("name", CNNS)
def test_every_layer_runs_through_its_own_quantiser(name, batch):
    """One int8 step: each layer's quantiser is called once, every parameter gets a gradient; the
    float groups (the norms) come last, at the unscaled learning rate."""
    x, y = batch
    tr = trainer(name, "bp-ui8")
    tr.train_epoch(x, y)
    assert [layer.grad.step for layer in tr.layers] == [1] * len(tr.model.linear_layers())
    assert all(p.grad is not None for p in tr.model.parameters())
    groups = tr.optimizer.param_groups
    assert len(groups) == len(tr.layers) + 1
    assert {id(p) for p in groups[-1]["params"]} == norm_parameters(tr.model)
    assert groups[-1]["lr"] == 0.01 and all(g["lr"] < 0.01 for g in groups[:-1])
    with pytest.raises(ValueError, match="ops"):
        tr.model(x, tr.layers[:-1])


@pytest.mark.parametrize("algo", BP_ALGOS)
@pytest.mark.parametrize("name", CNNS)
def test_each_algorithm_lowers_the_loss_of_each_cnn(name, algo, batch):
    """Eight steps on one fixed batch of 8 (batch norm in train mode): the loss at least halves
    (the float32 run: from 2.2-2.4 to below 0.2)."""
    x, y = batch
    tr = trainer(name, algo)
    losses = [tr.train_epoch(x, y)[0] for _ in range(8)]
    assert losses[0] > 2.0  # about log(10): the head starts near uniform
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("name", CNNS)
def test_predict_is_int8_round_to_nearest_in_eval_mode(name, batch):
    x, y = batch
    tr = trainer(name, "bp-int8")
    tr.train_epoch(x, y)  # moves the running statistics off their initial values
    assert tr.model.training
    scores = tr.predict_scores(x[:3])
    assert not tr.model.training  # running statistics: a sample's scores ignore its batch
    assert torch.equal(scores[1:], tr.predict_scores(x[1:3]))
    ops = [Arith(int8=True) if w.dim() == 4 else int8_linear_inference
           for w, _ in tr.model.linear_layers()]
    with torch.no_grad():
        assert torch.equal(scores, tr.model(x[:3], ops))
        float_scores = tr.model(x[:3])
    assert C.cosine_distance(scores, float_scores) < 1e-2
    assert torch.equal(trainer(name, "bp-fp32").predict_scores(x[:3]),
                       cnn(name).eval()(x[:3]).detach())


def test_state_dict_round_trip_gives_identical_next_steps():
    """Two epochs straight, or one, a checkpoint (read back as run.py reads it) into a trainer
    with other weights, and one more: identical weights, norm statistics and quantiser state."""
    gen = torch.Generator().manual_seed(2)
    x, y = torch.rand(24, 784, generator=gen), torch.arange(24) % 10
    bp = BPConfig(search_period=2, search_grid=8, search_refine=4)  # searches in both epochs
    a = trainer("resnet18", "bp-gdai8", bp=bp)
    a.train_epoch(x, y)
    a.epoch = 1
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = trainer("resnet18", "bp-gdai8", bp=bp, init_seed=9)
    b.load_state_dict(torch.load(buf, weights_only=True))
    a.train_epoch(x, y)
    b.train_epoch(x, y)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert any("running_mean" in k for k in sa)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert [la.grad.state_dict() for la in a.layers] == [lb.grad.state_dict() for lb in b.layers]
    fresh = trainer("resnet18", "bp-gdai8", bp=bp, init_seed=9)
    assert not torch.equal(fresh.model.linear_layers()[0][0], a.model.linear_layers()[0][0])


def test_cnn_checkpoint_trains_evaluates_and_predicts_through_the_cli(tmp_path, capsys):
    Image = pytest.importorskip("PIL.Image")
    out = tmp_path / "run"
    args = ["--model", "resnet18", "--width", "0.125", "--dataset", "synthetic", "--limit-train",
            "64", "--limit-test", "16", "--batch-size", "16", "--threads", "1", "--no-progress"]
    assert main(["train", *args, "--algo", "bp-ui8", "--epochs", "1", "--out", str(out)]) == 0
    assert main(["train", "--resume", str(out), "--epochs", "2", "--no-progress"]) == 0
    capsys.readouterr()
    m = json.loads((out / "metrics.json").read_text())
    assert m["model"] == "resnet18" and m["algo"] == "bp-ui8" and len(m["epochs"]) == 2
    assert main(["eval", "--checkpoint", str(out / "model.pt"), "--limit-test", "16"]) == 0
    assert json.loads(capsys.readouterr().out)["test_accuracy"] == m["test_accuracy"]

    model, cfg, blob = load_checkpoint(out / "model.pt")
    images = torch.randint(0, 256, (2, 28, 28), dtype=torch.uint8)
    paths = []
    for i, img in enumerate(images):
        paths.append(tmp_path / f"img{i}.png")
        Image.fromarray(img.numpy()).save(paths[-1])
    assert main(["predict", "--checkpoint", str(out / "model.pt"), *map(str, paths)]) == 0
    labels = [int(v) for v in re.findall(r": label (\d+)", capsys.readouterr().out)]
    expected = make_trainer(copy.deepcopy(model), cfg, blob["num_classes"]).predict_scores(
        to_float_images(images))
    assert labels == expected.argmax(1).tolist()
