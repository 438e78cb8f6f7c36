"""Operation counts of the CNNs: layer shapes read off the models, a hand count of a tiny ConvNet,
a 1x1 conv that counts as a dense layer, and the convolutions and quantisations the code runs."""

import json
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import ffint8.measure.counts as counts_mod
import ffint8.nn.conv as conv_mod
from ffint8.cli import main
from ffint8.measure.convshapes import conv_layers, describe_unit, shape_model
from ffint8.measure.counts import Conv, Dense, OpCounts, fp32
from ffint8.measure.opcount import epoch_ops, model_layers, run_ops, step_ops
from ffint8.models import create_model
from ffint8.nn.blocks import BasicBlock, ConvBlock, ConvNet, StemBlock
from ffint8.train import ff_units
from ffint8.train.config import FFConfig, TrainConfig
from ffint8.train.ff import SeedStream

CNNS = ("resnet18", "mobilenetv2", "efficientnet_b0")


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small convolutions


def tiny_net() -> ConvNet:
    """A 4x4 grey image -> stem 3x3 conv (1 -> 2 channels) -> one basic block (2 -> 2)."""
    return ConvNet([StemBlock((1, 4, 4), 2, 10), BasicBlock(2, 2)], 2, 10, classifier=True)


def tiny_model(name: str) -> torch.nn.Module:
    return create_model(name, in_features=3 * 8 * 8, image_shape=(3, 8, 8), width=0.125,
                        classifier=True)


@pytest.mark.parametrize("name", CNNS)
def test_parameters_of_the_described_units_match_the_model(name):
    model = shape_model(TrainConfig(model=name, ff=FFConfig(algo="bp-fp32")), 3072, 10)
    layers = model_layers(TrainConfig(model=name, ff=FFConfig(algo="bp-fp32")), 3072, 10, model)
    assert sum(layer.params for layer in layers) == sum(p.numel() for p in model.parameters())
    assert len(layers) == len(model.units) + 1


def test_resnet18_shapes():
    units, head = conv_layers(shape_model(TrainConfig(model="resnet18"), 784, 10))
    assert len(units) == 9 and units[0].in_shape == (1, 28, 28)
    assert units[0].entry == (Conv(1, 64, (3, 3), (28, 28), (28, 28)),)
    down = units[3]  # the first block of stage 2: strided 3x3 and a strided 1x1 shortcut
    assert down.entry == (Conv(64, 128, (3, 3), (28, 28), (14, 14), (2, 2)),
                          Conv(64, 128, (1, 1), (28, 28), (14, 14), (2, 2)))
    assert down.inner == (Conv(128, 128, (3, 3), (14, 14), (14, 14)),) and down.forks == 1
    assert units[-1].out_shape == (512, 4, 4) and head.in_features == 512 and head.spatial == 16


def test_depthwise_conv_is_counted_per_group():
    dw = Conv(8, 8, (3, 3), (4, 4), (4, 4), groups=8)  # one 3x3 filter per channel
    assert dw.macs(1) == 16 * 9 * 8 and dw.weights == 72
    assert Conv(8, 8, (3, 3), (4, 4), (4, 4)).macs(1) == 16 * 9 * 8 * 8
    units, _ = conv_layers(shape_model(TrainConfig(model="mobilenetv2"), 784, 10))
    first = units[1].entry[0]  # expansion 1: the depthwise conv reads the unit's input
    assert first.groups == first.in_channels == first.out_channels == 32
    assert first.macs(1) == 28 * 28 * 9 * 32


def test_hand_count_tiny_convnet_ff():
    # batch 1 -> 2 rows. Stem: 16 inputs, 3x3 conv 1 -> 2 at 4x4 (288 MACs a row), BN, ReLU,
    # 32 outputs, 22 parameters. Block: two 3x3 convs 2 -> 2 (576 MACs a row each), BN, ReLU,
    # BN, residual add, ReLU; 80 parameters. ff-int8, look-ahead none:
    # forward: rms norms 2*32 + 2*64 mul, 32 + 64 add; GEMMs 2*(288 + 576 + 576); quantise
    # inputs and weights (32 + 18) + (64 + 36) * 2; rescale 3 * 64 mul; BN 3 x (2, 3) * 64;
    # residual add 64; goodness 2 x (64 mul, 64 add); g_z 2 * 64 mul.
    # backward: g_W GEMMs 576 + 1152 + 1152, each conv's g_z quantised (3 * 64), rescaled
    # (18 + 36 + 36); the block's inner conv g_x 1152 (rescale 64); BN 3 x (4, 5) * 64; the
    # stem's and block's first g_x are not needed. Adam: 102 x (8, 4).
    units, _ = conv_layers(tiny_net())
    int8 = step_ops("ff-int8", units, 1, look_ahead="none")
    assert int8 == OpCounts(int8_mul=2880 + 4032, int32_add=2880 + 4032,
                            fp32_mul=192 + 192 + 384 + 128 + 128 + 90 + 64 + 768 + 816,
                            fp32_add=96 + 576 + 64 + 128 + 960 + 408, quantized=250 + 192)
    # float: the same GEMMs in fp32, nothing quantised or rescaled
    assert step_ops("ff-fp32", units, 1, look_ahead="none") == fp32(
        6912 + 192 + 384 + 128 + 128 + 768 + 816, 6912 + 2232)
    assert step_ops("ff-int8", units, 1, look_ahead="collab") == int8  # per-row work only


def test_hand_count_tiny_convnet_chain():
    # the block passes its loss down: a backward to its input (both g_x, 2 * 1152 MACs; BN
    # backward twice, 2 x (4, 5) * 64; the fork of its input, 64 adds; the rms norm's backward,
    # (3, 2) * 64); the stem adds lam * signal to its gradient (64 mul, 64 add).
    units, _ = conv_layers(tiny_net())
    none = step_ops("ff-fp32", units, 1, look_ahead="none")
    chain = step_ops("ff-fp32", units, 1, look_ahead="chain")
    assert chain - none == fp32(2304 + 512 + 192 + 64, 2304 + 640 + 64 + 128 + 64)
    # int8: the same signal. Int8Conv2d forms nothing autograd does not use: no entry g_x in
    # the backward to the parameters (the engine runs no node that reads it), no g_W in the
    # backward to the input (input_grads_only); its g_x quantise g again (128).
    none8 = step_ops("ff-int8", units, 1, look_ahead="none")
    chain8 = step_ops("ff-int8", units, 1, look_ahead="chain")
    assert chain8 - none8 == OpCounts(int8_mul=2304, int32_add=2304, quantized=128,
                                      fp32_mul=128 + 512 + 192 + 64,
                                      fp32_add=640 + 64 + 128 + 64)
    assert step_ops("ff-int8", units, 1, look_ahead="chain", lam_active=False) == none8


def test_hand_count_tiny_convnet_bp():
    # forward GEMMs 288 + 576 + 576, BN 3 x (2, 3) * 32, residual add 32, global pool 32 adds,
    # head 2 -> 10 (20 MACs, 10 bias adds), cross-entropy 30 mul 30 add; backward: head g_W
    # (20, g_b 10) and g_x (20), the pool's backward 32 mul, the block's g_W 1152, both its g_x
    # 1152, the fork 32 adds, BN 3 x (4, 5) * 32, the stem's g_W 288. Adam: 132 x (8, 4).
    net = tiny_net()
    units, head = conv_layers(net)
    macs = 1440 + 20 + 40 + 1152 + 1152 + 288
    assert step_ops("bp-fp32", [*units, head], 1) == fp32(
        macs + 192 + 30 + 32 + 384 + 1056, macs + 288 + 32 + 32 + 20 + 30 + 480 + 32 + 528)
    q = step_ops("bp-int8", [*units, head], 1)
    assert q.int8_mul == q.int32_add == macs
    # inputs and weights of every conv and the head, each output gradient once
    assert q.quantized == (16 + 18) + 2 * (32 + 36) + (2 + 20) + 3 * 32 + 10


def test_1x1_conv_on_1x1_image_counts_as_dense():
    tiny = [Dense(4, 3), Dense(3, 2)]  # tests/measure/test_opcount.py's 4-3-2 MLP
    units = [describe_unit(ConvBlock(4, 3, k=1, norm="none"), (4, 1, 1)),
             describe_unit(ConvBlock(3, 2, k=1, norm="none"), (3, 1, 1))]
    for algo in ("ff-int8", "ff-fp32"):
        for look in ("none", "collab"):
            assert step_ops(algo, units, 3, look_ahead=look) == step_ops(algo, tiny, 3, look_ahead=look)
    # chain: the dense path masks the signal into z (one multiply per output of unit 1, 2 rows);
    # autograd's signal to a conv unit comes through its ReLU already
    diff = step_ops("ff-fp32", tiny, 1, look_ahead="chain") - step_ops("ff-fp32", units, 1,
                                                                         look_ahead="chain")
    assert diff == fp32(mul=6)
    # backprop: the same but for the global pool in front of the head (1 position: 2 adds, 2 mul)
    from ffint8.measure.convunit import PoolHead

    for algo in ("bp-fp32", "bp-int8", "bp-gdai8"):
        conv = step_ops(algo, [*units, PoolHead(2, 2)], 1)
        assert conv - step_ops(algo, [*tiny, Dense(2, 2)], 1) == fp32(2, 2)


class ConvTrace(TorchDispatchMode):
    """Multiply-accumulates of every float convolution (forward and the backward outputs
    autograd asks for) and GEMM."""

    def __init__(self):
        super().__init__()
        self.macs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name == "convolution":
            out = func(*args, **(kwargs or {}))
            self.macs += out.numel() * math.prod(args[1].shape[1:])
            return out
        if name == "convolution_backward":
            g, w, mask = args[0], args[2], args[10]
            self.macs += (int(mask[0]) + int(mask[1])) * g.numel() * math.prod(w.shape[1:])
        if name in ("mm", "addmm"):
            a, b = (args[0], args[1]) if name == "mm" else (args[1], args[2])
            self.macs += a.shape[0] * a.shape[1] * b.shape[1]
        return func(*args, **(kwargs or {}))


def trace_int8(monkeypatch) -> dict:
    """Patch Int8Conv2d's convolutions and quantiser to record their MACs and elements."""
    seen = {"macs": 0, "quantized": 0}

    def record(real, grad_index):
        def conv(*args):
            out = real(*args)
            g = out if grad_index is None else args[grad_index]
            w_shape = args[4] if grad_index == 2 else args[2].shape
            seen["macs"] += g.numel() * math.prod(w_shape[1:])
            return out
        return conv

    def quantize(x, *args, **kw):
        seen["quantized"] += x.numel()
        return real_quantize(x, *args, **kw)

    real_quantize = conv_mod.quantize
    monkeypatch.setattr(conv_mod, "quantize", quantize)
    monkeypatch.setattr(conv_mod, "int8_conv2d_scaled", record(conv_mod.int8_conv2d_scaled, None))
    monkeypatch.setattr(conv_mod, "int8_conv2d_input_scaled",
                        record(conv_mod.int8_conv2d_input_scaled, 0))
    monkeypatch.setattr(conv_mod, "int8_conv2d_weight_scaled",
                        record(conv_mod.int8_conv2d_weight_scaled, 2))
    return seen


def counted_macs(monkeypatch, fn) -> OpCounts:
    """fn() with every counted multiply-accumulate booked as int8_mul (float ones included)."""
    with monkeypatch.context() as m:
        m.setattr(counts_mod, "macs", lambda n, int8: OpCounts(int8_mul=n))
        return fn()


@pytest.mark.parametrize("name,look,depth", [
    ("resnet18", "none", None), ("resnet18", "collab", None), ("resnet18", "chain", None),
    ("resnet18", "chain", 1), ("mobilenetv2", "chain", None), ("efficientnet_b0", "chain", 2)])
@pytest.mark.parametrize("algo", ["ff-int8", "ff-fp32"])
def test_counts_match_what_ff_units_runs(monkeypatch, name, look, depth, algo):
    model = tiny_model(name)
    units = list(model.units)
    cfg = FFConfig(algo=algo, look_ahead=look, chain_depth=depth)
    b = 2
    x, t = torch.rand(2 * b, 3 * 8 * 8), torch.cat([torch.ones(b), torch.zeros(b)])
    layers, _ = conv_layers(model)
    int8 = algo == "ff-int8"
    want = counted_macs(monkeypatch, lambda: step_ops(algo, layers, b, look_ahead=look,
                                                      chain_depth=depth, optimized_params=0))
    if int8:
        seen = trace_int8(monkeypatch)
        ff_units.ff_gradients(units, x, t, cfg, 0.1, SeedStream(0))
        ops = step_ops(algo, layers, b, look_ahead=look, chain_depth=depth)
        assert seen["macs"] == want.int8_mul == ops.int8_mul
        assert seen["quantized"] == ops.quantized
    else:
        trace = ConvTrace()
        with trace:
            ff_units.ff_gradients(units, x, t, cfg, 0.1, SeedStream(0))
        assert trace.macs == want.int8_mul


@pytest.mark.parametrize("name", CNNS)
def test_bp_counts_match_autograd(monkeypatch, name):
    model = tiny_model(name)
    x, y = torch.rand(3, 3 * 8 * 8), torch.randint(0, 10, (3,))
    trace = ConvTrace()
    with trace:
        torch.nn.functional.cross_entropy(model(x), y).backward()
    units, head = conv_layers(model)
    want = counted_macs(monkeypatch, lambda: step_ops("bp-fp32", [*units, head], 3))
    assert trace.macs == want.int8_mul


def test_epoch_and_run_counts_of_a_cnn():
    cfg = TrainConfig(model="resnet18", width=0.125, epochs=2, batch_size=4,
                      ff=FFConfig(look_ahead="chain", lambda_start=0.0, lambda_step=0.1))
    layers = model_layers(cfg, 784, 10)
    peer = cfg.ff.peer_weight > 0  # the default's peer normalisation
    step = step_ops("ff-int8", layers, 4, look_ahead="chain", peer=peer)
    assert epoch_ops("ff-int8", layers, 4, 10, look_ahead="chain", peer=peer) == (
        step * 2 + step_ops("ff-int8", layers, 2, look_ahead="chain", peer=peer))
    r = run_ops(cfg, n_train=12, in_features=784, num_classes=10)
    assert OpCounts(**r["per_step"]) == step and OpCounts(**r["per_epoch"]) == step * 3
    first = step_ops("ff-int8", layers, 4, look_ahead="chain", lam_active=False,  # lambda 0
                     peer=peer)
    assert OpCounts(**r["run"]) == first * 3 + step * 3
    bp = run_ops(TrainConfig(model="resnet18", width=0.125, batch_size=4, epochs=1,
                             ff=FFConfig(algo="bp-int8")), 8, 784, 10)
    assert bp["per_epoch"]["int8_mul"] == 2 * bp["per_step"]["int8_mul"] > 0


def test_metrics_of_a_cnn_run_carry_ops_and_footprint(tmp_path):
    out = tmp_path / "run"
    rc = main(["train", "--model", "resnet18", "--width", "0.125", "--dataset", "synthetic",
               "--limit-train", "32", "--limit-test", "16", "--epochs", "1", "--out", str(out),
               "--no-progress", "--threads", "1"])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    cfg = TrainConfig.from_dict(metrics["config"])
    want = run_ops(cfg, 32, 784, 10)
    assert metrics["ops"]["per_step"] == want["per_step"] and metrics["ops"]["per_step"]["int8_mul"] > 0
    assert metrics["arith_energy_j"] > 0
    fp = metrics["measurement"]["footprint"]
    assert fp["code"]["total_mb"] >= fp["minimal"]["total_mb"] > 0
    assert not any(n.startswith(("ops", "footprint")) for n in metrics["measurement"]["notes"])
