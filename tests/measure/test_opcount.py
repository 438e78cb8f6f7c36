"""Operation counts: a hand count for a tiny MLP, and the GEMMs and quantisations the code runs."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import ffint8.nn.dense as dense_mod
import ffint8.train.ff as ff_mod
from ffint8.errors import ConfigError
from ffint8.measure.opcount import (
    Dense,
    OpCounts,
    bp_step_ops,
    epoch_ops,
    ff_step_ops,
    mlp_layers,
    optimizer_ops,
    run_ops,
    step_ops,
)
from ffint8.models import create_model
from ffint8.quant import fastsr
from ffint8.train.config import FFConfig, TrainConfig
from ffint8.train.ff import SeedStream, ff_gradients
from ffint8.train.loop import FFTrainer

TINY = [Dense(4, 3), Dense(3, 2)]  # 4-3-2, 23 parameters


def test_hand_count_ff_int8_none():
    # batch 1 -> 2 rows (positive, negative). Unit 1 (D=4, N=3): rms norm 2*8 mul + 8 add; int8
    # GEMM 2*4*3 = 24; quantise 8 inputs + 12 weights; rescale 6 mul; bias 6 add; goodness and
    # g_z 2*6 mul + 6 add. Unit 2 (D=3, N=2): norm 12 mul + 6 add; GEMM 12; quantise 6 + 6;
    # rescale 4; bias 4; goodness and g_z 8 mul + 4 add. Backward, unit 2: quantise g_z (4),
    # g_W GEMM 2*2*3 = 12, rescale 6 mul, g_b 4 add; unit 1: quantise 6, GEMM 24, rescale 12,
    # g_b 6 add. Adam: 23 parameters x (8 mul, 4 add).
    ops = step_ops("ff-int8", TINY, 1, look_ahead="none")
    assert ops == OpCounts(int8_mul=72, int32_add=72, fp32_mul=34 + 24 + 18 + 184,
                           fp32_add=20 + 14 + 10 + 92, quantized=42)


def test_hand_count_ff_fp32_none():
    # as above in float: GEMMs 24 + 12 + 12 + 24 = 72 MACs; no quantising, no rescaling.
    ops = step_ops("ff-fp32", TINY, 1, look_ahead="none")
    assert ops == OpCounts(fp32_mul=72 + (16 + 12) + (12 + 8) + 184,
                           fp32_add=72 + (8 + 6 + 6) + (6 + 4 + 4) + (4 + 6) + 92)


def test_hand_count_chain_adds_the_input_gradient():
    # chain: unit 2 passes its loss down: quantise its g_z (4), GEMM 2*2*3 = 12, rescale 6 mul,
    # norm backward 3*6 mul + 2*6 add; unit 1 then masks the signal, scales it by lambda and
    # adds it to its g_z: 2*6 mul + 6 add.
    none = step_ops("ff-int8", TINY, 1, look_ahead="none")
    chain = step_ops("ff-int8", TINY, 1, look_ahead="chain")
    extra = OpCounts(int8_mul=12, int32_add=12, fp32_mul=6 + 18 + 12, fp32_add=12 + 6, quantized=4)
    assert chain == none + extra
    assert step_ops("ff-int8", TINY, 1, look_ahead="chain", lam_active=False) == none
    assert step_ops("ff-int8", TINY, 1, look_ahead="collab") == none  # per-row work only


def test_hand_count_bp_fp32():
    # forward GEMMs 1*4*3 + 1*3*2, biases 3 + 2; cross-entropy 3 mul + 3 add per logit (2);
    # g_W GEMMs 12 + 6, g_b 3 + 2; g_x of layer 2 only: 6; Adam 23 x (8, 4).
    ops = step_ops("bp-fp32", TINY, 1)
    assert ops == OpCounts(fp32_mul=12 + 6 + 6 + 12 + 6 + 6 + 184,
                           fp32_add=12 + 6 + 5 + 6 + 12 + 6 + 5 + 6 + 92)


def test_bp_int8_counts_int8_gemms_and_one_gradient_quantisation_per_layer():
    ops = bp_step_ops(TINY, 1, "bp-int8")
    assert ops.int8_mul == ops.int32_add == 12 + 6 + 12 + 6 + 6
    # inputs 4 + 3, weights 12 + 6, output gradients 3 + 2
    assert ops.quantized == 7 + 18 + 5
    ui8, gd = bp_step_ops(TINY, 1, "bp-ui8"), bp_step_ops(TINY, 1, "bp-gdai8")
    assert ui8.int8_mul == gd.int8_mul == ops.int8_mul
    assert ui8.fp32_mul > ops.fp32_mul and gd.fp32_mul > ui8.fp32_mul


def test_epoch_counts_the_last_short_batch():
    kw = dict(look_ahead="none")
    assert epoch_ops("ff-int8", TINY, 2, 5, **kw) == (step_ops("ff-int8", TINY, 2, **kw) * 2
                                                      + step_ops("ff-int8", TINY, 1, **kw))


def test_optimizer_and_weight_decay():
    assert optimizer_ops(10, "sgd") == OpCounts(fp32_mul=20, fp32_add=20)
    assert optimizer_ops(10, "adam", weight_decay=0.1) == OpCounts(fp32_mul=90, fp32_add=50)
    # AdamW decays with one multiply by the step's factor (1 - lr * wd): no add per parameter
    assert optimizer_ops(10, "adamw", weight_decay=0.1) == OpCounts(fp32_mul=90, fp32_add=40)
    with pytest.raises(ConfigError, match="optimizer"):
        optimizer_ops(10, "lion")


def test_unknown_algorithm_and_layer_type():
    with pytest.raises(ConfigError, match="bp-magic"):
        step_ops("bp-magic", TINY, 1)

    class Conv:  # not registered yet
        params = 1

    with pytest.raises(ConfigError, match="Conv"):
        ff_step_ops([Conv()], 1, True)


def test_run_counts_follow_the_lambda_schedule_and_greedy_plan():
    cfg = TrainConfig(hidden=(3, 2), epochs=2, batch_size=2,
                      ff=FFConfig(look_ahead="chain", lambda_start=0.0, lambda_step=0.1))
    layers = mlp_layers(4, (3, 2))
    r = run_ops(cfg, n_train=6, in_features=4, num_classes=10)
    peer = cfg.ff.peer_weight > 0  # the default's peer normalisation
    first = epoch_ops("ff-int8", layers, 2, 6, look_ahead="chain", lam_active=False,  # lambda 0
                      peer=peer)
    later = epoch_ops("ff-int8", layers, 2, 6, look_ahead="chain", lam_active=True, peer=peer)
    assert OpCounts(**r["run"]) == first + later
    assert OpCounts(**r["per_epoch"]) == later and r["steps_per_epoch"] == 3
    greedy = TrainConfig(hidden=(3, 2), epochs=1, batch_size=2,
                         ff=FFConfig(look_ahead="none", schedule="greedy"))
    g = run_ops(greedy, n_train=2, in_features=4, num_classes=10)
    # unit 1 alone (its optimiser), then both units forward and backward, unit 2's optimiser
    want = (ff_step_ops(layers[:1], 2, True, peer=peer) + optimizer_ops(layers[0].params)
            + ff_step_ops(layers, 2, True, peer=peer) + optimizer_ops(layers[1].params))
    assert OpCounts(**g["run"]) == want


class GemmTrace(TorchDispatchMode):
    """Multiply-accumulates of every mm / addmm, by operand dtype."""

    def __init__(self):
        super().__init__()
        self.macs = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in ("mm", "addmm"):
            a, b = (args[0], args[1]) if name == "mm" else (args[1], args[2])
            self.macs[a.dtype] = self.macs.get(a.dtype, 0) + a.shape[0] * a.shape[1] * b.shape[1]
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("algo", ["ff-int8", "ff-fp32"])
@pytest.mark.parametrize("look,depth", [("none", None), ("collab", None), ("chain", None),
                                        ("chain", 1), ("chain", 2)])
def test_counts_match_what_ff_gradients_runs(monkeypatch, algo, look, depth):
    hidden = (12, 10, 8, 6)
    model = create_model("mlp", in_features=20, hidden=hidden)
    cfg = FFConfig(algo=algo, look_ahead=look, chain_depth=depth, int8_kernel="reference")
    quantized = []

    def counting(real):
        def quantize(x, *args, **kw):
            out = real(x, *args, **kw)
            if out is not None:  # the fused kernels give None where they are not built
                quantized.append(x.numel())
            return out

        return quantize

    for mod in (ff_mod, dense_mod):
        monkeypatch.setattr(mod, "quantize", counting(mod.quantize))
    # the fused C step (FFDense.forward_fused, fastsr.ff_unit_grad) quantises through these
    for name in ("normalize_quantize", "quantize_stochastic_with_absmax"):
        monkeypatch.setattr(fastsr, name, counting(getattr(fastsr, name)))
    x, t = torch.randn(10, 20), torch.cat([torch.ones(5), torch.zeros(5)])
    trace = GemmTrace()
    with trace:
        ff_gradients(list(model.units), x, t, cfg, 0.1, SeedStream(0))
    ops = ff_step_ops(mlp_layers(20, hidden), 5, algo == "ff-int8", look, True, depth)
    if algo == "ff-int8":  # the reference kernel multiplies int8 values in int64
        assert trace.macs == {torch.int64: ops.int8_mul}
    else:  # the same GEMM shapes as the int8 path, in float
        int8_twin = ff_step_ops(mlp_layers(20, hidden), 5, True, look, True, depth)
        assert ops.int8_mul == 0 and trace.macs == {torch.float32: int8_twin.int8_mul}
    assert sum(quantized) == ops.quantized


def test_hand_count_softmax_readout_and_hard_negatives():
    base = step_ops("ff-int8", TINY, 1, look_ahead="none")
    # softmax (C = 2): a neutral pass on 1 row (norms 8 + 6 mul, 4 + 3 add; GEMMs 12 + 6;
    # quantise 4 + 12 and 3 + 6; rescale 3 + 2; biases 3 + 2), the readout reads unit 2 (F = 2):
    # normalise 4 mul 2 add, logits 1*2*2 MACs + 2 bias, cross-entropy 6 and 6, g_W 2*1*2 MACs
    # + g_b 2; Adam for its 6 parameters 48 mul, 24 add.
    soft = step_ops("ff-int8", TINY, 1, look_ahead="none", num_classes=2, predict="softmax")
    assert soft - base == OpCounts(int8_mul=18, int32_add=18, fp32_mul=85, fp32_add=56, quantized=25)
    # hard negatives by goodness: the forward of both labels (2 rows) with goodness, no g_z.
    # Unit 1 forms the image once: norm 8 mul 4 add, GEMM 12, label columns 2*3 MACs, quantise
    # 4 + 12, rescale 6, bias 6, goodness 6 and 6; unit 2 on both rows: norm 12 and 6, GEMM 12,
    # quantise 6 + 6, rescale 4, bias 4, goodness 4 and 4.
    hard = step_ops("ff-int8", TINY, 1, look_ahead="none", num_classes=2, negatives="hard")
    assert hard - base == OpCounts(int8_mul=30, int32_add=30, fp32_mul=40, fp32_add=30, quantized=28)


@pytest.mark.parametrize("predict,negatives", [("goodness", "random"), ("softmax", "random"),
                                               ("goodness", "hard"), ("softmax", "hard")])
def test_gemms_of_a_whole_training_step_match(predict, negatives):
    hidden, b = (12, 10, 8), 6
    cfg = TrainConfig(hidden=hidden, batch_size=b, ff=FFConfig(
        look_ahead="none", predict=predict, negatives=negatives, int8_kernel="reference"))
    model = create_model("mlp", in_features=20, hidden=hidden, readout=predict == "softmax")
    trainer = FFTrainer(model, cfg, 10)
    x, y = torch.rand(b, 20), torch.randint(0, 10, (b,))
    trace = GemmTrace()
    with trace:
        trainer.train_epoch(x, y)
    ops = step_ops("ff-int8", mlp_layers(20, hidden), b, look_ahead="none", num_classes=10,
                   predict=predict, negatives=negatives)
    # goodness prediction's first unit adds each label's column, one MAC per row and output of
    # its 10 * b rows, outside any GEMM
    labels = 10 * b * hidden[0] if (predict, negatives) == ("goodness", "hard") else 0
    assert trace.macs.get(torch.int64) == ops.int8_mul - labels
    readout = 2 * b * (10 + 8) * 10 if predict == "softmax" else 0  # logits and g_W, in float
    assert trace.macs.get(torch.float32, 0) == readout


@pytest.mark.parametrize("algo", ["bp-fp32", "bp-int8", "bp-ui8"])
def test_gemms_of_a_backprop_step_match(algo):
    from ffint8.bp import BPTrainer

    hidden, b = (12, 10), 6
    cfg = TrainConfig(hidden=hidden, batch_size=b, ff=FFConfig(algo=algo, int8_kernel="reference"))
    model = create_model("mlp", in_features=20, hidden=hidden, classifier=True)
    trainer = BPTrainer(model, cfg, 10)
    trainer.train_epoch(torch.rand(b, 20), torch.randint(0, 10, (b,)))  # bp-ui8: its first search
    trace = GemmTrace()
    with trace:
        trainer.train_epoch(torch.rand(b, 20), torch.randint(0, 10, (b,)))
    layers = mlp_layers(20, hidden, 10)
    # forward and g_W of every layer, g_x of all but the first: (2 + 3 + 3) GEMMs here
    macs = b * (2 * 20 * 12 + 3 * 12 * 10 + 3 * 10 * 10)
    assert bp_step_ops(layers, b, "bp-int8").int8_mul == macs
    if algo == "bp-fp32":
        assert trace.macs == {torch.float32: macs}
    else:
        assert trace.macs == {torch.int64: bp_step_ops(layers, b, algo).int8_mul}
