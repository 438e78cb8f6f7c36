"""Analytic footprints of the CNNs: a hand count, and the saved tensors against what autograd keeps."""

import pytest
import torch

from ffint8.errors import ConfigError
from ffint8.measure.convshapes import conv_layers
from ffint8.measure.footprint import conv_footprint, run_footprint
from ffint8.measure.opcount import model_layers
from ffint8.models import create_model
from ffint8.nn.blocks import BasicBlock, ConvNet, StemBlock
from ffint8.quant import fastsr
from ffint8.train import ff_units
from ffint8.train.config import FFConfig, TrainConfig
from ffint8.train.ff import SeedStream

CNNS = ("resnet18", "mobilenetv2", "efficientnet_b0")


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small convolutions


def tiny_layers(bp: bool = False):
    """A 4x4 grey image -> stem 3x3 conv (1 -> 2 channels) -> one basic block (2 -> 2)."""
    units, head = conv_layers(ConvNet([StemBlock((1, 4, 4), 2, 10), BasicBlock(2, 2)], 2, 10,
                                      classifier=True))
    return [*units, head] if bp else units


def test_hand_count_ff():
    # per sample, float32: stem: its input 16 (the conv's), BN input 32, ReLU output 32 (= the
    # unit's output, kept by the goodness too); block: input 32, BN input 32, ReLU output 32
    # (= conv2's input), BN input 32, output 32. 102 parameters, Adam. 2 rows; the input batch 2*16.
    # Gradients: the per-unit update holds the larger unit's only, the block's 2 * 36 + 2 * 4.
    fp = conv_footprint("ff-fp32", tiny_layers(), 1, in_features=16, kept="code")
    assert (fp.parameters, fp.gradients, fp.optimizer) == (408, 80 * 4, 816)
    assert fp.activations == 2 * 4 * (80 + 160) + 2 * 16 * 4 and fp.weight_copies == 0
    # int8: every conv keeps an int8 copy of its input (16; 32 and 32) and of its weight (18 +
    # 36 + 36); the float tensors stay, but for the block's first ReLU output, which only the
    # ReLU kept (conv2 keeps its int8 copy): where the C kernel fuses BatchNorm and ReLU
    # (ffint8.nn.norm), nothing keeps it
    fused = 32 if fastsr.available() else 0
    q = conv_footprint("ff-int8", tiny_layers(), 1, in_features=16, kept="code")
    assert q.activations == 2 * ((16 + 4 * 64) + (64 + 4 * (128 - fused))) + 128
    assert q.weight_copies == 90
    # minimal (none, collab): one unit at a time, the block's (the larger); int8 weights only of
    # convs whose input gradient is needed (the block's inner conv)
    m = conv_footprint("ff-int8", tiny_layers(), 1, in_features=16, kept="minimal", look_ahead="none")
    assert m.activations == 2 * (64 + 4 * (128 - fused)) + 128 and m.weight_copies == 36


def test_hand_count_bp():
    # one row; the block's input is the stem's output (kept once); the head's input (2 pooled
    # values) and the log-softmax output (10). 132 parameters.
    fp = conv_footprint("bp-fp32", tiny_layers(bp=True), 1, in_features=16, optimizer="sgd")
    assert (fp.parameters, fp.optimizer) == (528, 528)
    assert fp.activations == 4 * (16 + 64 + 128 + 2 + 10) and fp.weight_copies == 0
    # int8 copies of the convs' and the head's inputs; the float ReLU outputs that only the
    # ReLUs kept (the stem's and the block's first) go where the C kernel fuses norm and ReLU
    fused = 32 if fastsr.available() else 0
    q = conv_footprint("bp-gdai8", tiny_layers(bp=True), 1, in_features=16)
    assert q.activations == (16 + 32 + 32 + 2) + 4 * (64 - fused + 128 - fused + 10)
    assert q.weight_copies == 90 + 20


def test_chain_keeps_the_later_units():
    layers = model_layers(TrainConfig(model="resnet18", width=0.125), 784, 10)
    kw = dict(in_features=784, kept="minimal")
    none = conv_footprint("ff-int8", layers, 32, look_ahead="none", **kw)
    one = conv_footprint("ff-int8", layers, 32, look_ahead="chain", chain_depth=1, **kw)
    every = conv_footprint("ff-int8", layers, 32, look_ahead="chain", **kw)
    code = conv_footprint("ff-int8", layers, 32, in_features=784)
    assert none.activations < one.activations < every.activations == code.activations
    assert none.total < one.total < every.total <= code.total


class SavedBytes:
    """Bytes of the tensors autograd saves (each storage once), parameters and buffers aside,
    split into int8 and the rest."""

    def __init__(self, model: torch.nn.Module):
        self.skip = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
        self.seen: dict[int, tuple[bool, int]] = {}
        self.keep = []  # alive, so no storage is reused within one measurement

    def pack(self, t):
        s = t.untyped_storage()
        if s.data_ptr() not in self.skip:
            self.seen[s.data_ptr()] = (t.dtype == torch.int8, s.nbytes())
            self.keep.append(t)
        return t

    def measure(self, fn) -> tuple[int, int]:
        with torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t):
            fn()
        int8 = sum(n for q, n in self.seen.values() if q)
        return int8, sum(n for q, n in self.seen.values() if not q)


def tiny_model(name: str) -> torch.nn.Module:
    return create_model(name, in_features=3 * 8 * 8, image_shape=(3, 8, 8), width=0.125,
                        classifier=True)


def ff_saved(model, rows: int, algo: str) -> tuple[int, int]:
    # float-exact: the int8 kernel whose outputs are contiguous; the others return channels_last
    # maps, which unit_goodness's reshape copies (docs/measurement.md: not in the footprint)
    cfg = FFConfig(algo=algo, int8_kernel="float-exact")

    def forward():
        _, ys = ff_units.forward_units(list(model.units), torch.rand(rows, 3 * 8 * 8), cfg,
                                       SeedStream(0))
        [ff_units.unit_goodness(y, cfg.goodness) for y in ys]

    return SavedBytes(model).measure(forward)


@pytest.mark.parametrize("name", CNNS)
@pytest.mark.parametrize("algo", ["ff-int8", "ff-fp32"])
def test_ff_saved_tensors_match_autograd(name, algo):
    """Saved bytes grow with the batch as the footprint says (per-tensor scales and batch
    statistics, which do not, cancel); the int8 weight copies are what does not grow."""
    model = tiny_model(name)
    (q1, f1), (q2, f2) = ff_saved(model, 4, algo), ff_saved(model, 8, algo)
    fps = [conv_footprint(algo, conv_layers(model)[0], b, in_features=192) for b in (2, 4)]
    batch = [2 * b * 192 * 4 for b in (2, 4)]  # the input batch: not saved by autograd
    assert (q2 + f2) - (q1 + f1) == (fps[1].activations - batch[1]) - (fps[0].activations - batch[0])
    int8_weights = q1 - (q2 - q1)  # 4 rows of int8 activations = (8 rows - 4 rows)
    assert int8_weights == fps[0].weight_copies


@pytest.mark.parametrize("name", CNNS)
def test_bp_saved_tensors_match_autograd(name):
    model = tiny_model(name)

    def saved(rows):
        x = torch.rand(rows, 3 * 8 * 8)
        return SavedBytes(model).measure(lambda: torch.log_softmax(model(x), dim=1))[1]

    layers, head = conv_layers(model)
    fps = [conv_footprint("bp-fp32", [*layers, head], b, in_features=192) for b in (3, 5)]
    assert saved(5) - saved(3) == fps[1].activations - fps[0].activations


def test_run_footprint_of_every_model_and_bad_names():
    for name in ("mlp", *CNNS):
        for algo in ("ff-int8", "bp-fp32"):
            cfg = TrainConfig(model=name, ff=FFConfig(algo=algo))
            assert run_footprint(cfg, 784, 10).total > 0
    with pytest.raises(ConfigError, match="kept"):
        conv_footprint("ff-int8", tiny_layers(), 1, 16, kept="all")
    with pytest.raises(ConfigError, match="algorithm"):
        conv_footprint("ff-int4", tiny_layers(), 1, 16)
