"""Analytic footprints: a hand count, and FF's kept tensors against what the code really keeps."""

import pytest
import torch

from ffint8.errors import ConfigError
from ffint8.measure.footprint import footprint
from ffint8.models import create_model
from ffint8.train.config import FFConfig
from ffint8.train.ff import SeedStream, forward_records


def test_hand_count_ff_int8():
    # MLP 4-3-2, batch 1 (2 rows). 23 parameters: 92 bytes of weights, Adam 184; gradients of
    # one unit at a time (the per-unit update), the larger unit 1's 12 + 3: 60 bytes. Kept:
    # input batch 2*4*4 = 32; unit 1: a_q 8, y 24, r 8, g_z 24; unit 2: a_q 6, y 16, r 8,
    # g_z 16; int8 weights 12 + 6.
    fp = footprint("ff-int8", 4, (3, 2), batch_size=1, optimizer="adam")
    assert (fp.parameters, fp.gradients, fp.optimizer) == (92, 60, 184)
    assert fp.activations == 32 + (8 + 24 + 8 + 24) + (6 + 16 + 8 + 16)
    assert fp.weight_copies == 18
    assert fp.total == 92 + 60 + 184 + 142 + 18
    # adam8: per parameter 2 bytes of codes and 2 float32 scales per 256 values
    assert footprint("ff-int8", 4, (3, 2), 1, optimizer="adam8").optimizer == round(23 * 2.03125)
    minimal = footprint("ff-int8", 4, (3, 2), batch_size=1, kept="minimal")
    assert minimal.activations == 32 + (8 + 24 + 8) + (6 + 16 + 8) + 24  # one g_z, the largest
    assert minimal.weight_copies == 0


def test_hand_count_bp():
    # 4-3-2 plus a 2-class head: 15 + 8 + 6 = 29 parameters; SGD keeps one float each.
    fp = footprint("bp-fp32", 4, (3, 2), batch_size=1, num_classes=2, optimizer="sgd")
    assert (fp.parameters, fp.optimizer) == (116, 116)
    assert fp.activations == (4 + 3 + 2) * 4 + 2 * 4  # layer inputs, log-softmax output
    q = footprint("bp-gdai8", 4, (3, 2), batch_size=1, num_classes=2, optimizer="sgd")
    # int8 layer inputs, float ReLU outputs (3 + 2), log-softmax; int8 weights 12 + 6 + 4
    assert q.activations == (4 + 3 + 2) + (3 + 2) * 4 + 2 * 4 and q.weight_copies == 22


@pytest.mark.parametrize("algo", ["ff-int8", "ff-fp32"])
def test_ff_kept_bytes_match_the_records(algo):
    hidden, b, d = (12, 10), 5, 20
    model = create_model("mlp", in_features=d, hidden=hidden)
    cfg = FFConfig(algo=algo)
    x = torch.randn(2 * b, d)
    recs = forward_records(list(model.units), x, cfg, SeedStream(0))
    seen, total = set(), 0
    params = {p.data_ptr() for p in model.parameters()}
    for r in recs:
        tensors = [r.h_in, r.r_in, r.a, r.w, r.y, r.a_q and r.a_q.q, r.w_q and r.w_q.q]
        for t in tensors:
            if t is not None and t.data_ptr() not in seen and t.data_ptr() not in params:
                seen.add(t.data_ptr())
                total += t.numel() * t.element_size()
        total += r.y.numel() * 4  # its g_z, kept in ff_gradients' `local` list
    fp = footprint(algo, d, hidden, batch_size=b)
    assert fp.activations + fp.weight_copies == total


def test_bad_names():
    with pytest.raises(ConfigError, match="algorithm"):
        footprint("ff-int4", 4, (3,), 1)
    with pytest.raises(ConfigError, match="optimizer"):
        footprint("ff-int8", 4, (3,), 1, optimizer="lion")
    with pytest.raises(ConfigError, match="kept"):
        footprint("ff-int8", 4, (3,), 1, kept="all")


def test_factored_gradient_is_one_accumulator_block():
    # 784-1000-1000: Adam's block (4 MB) holds the whole 1000 x 1000 accumulator; adam8's
    # (256 KB) 64 of its rows (a multiple of 256 / gcd(1000, 256) = 32: 256 KB / 4000 bytes a
    # row = 65 rows) and 80 of the first unit's (a multiple of 16: 256 KB / 3136 bytes = 83)
    def grads(algo, opt):
        return footprint(algo, 784, (1000, 1000), 32, optimizer=opt).gradients

    assert grads("ff-int8", "adam") == grads("ff-fp32", "adam") == 1001 * 1000 * 4
    assert grads("ff-int8", "adam8") == max(64 * 1000, 80 * 784) * 4 + 1000 * 4
    assert grads("ff-fp32", "adam8") == 1001 * 1000 * 4  # the float path forms g_W
    assert grads("ff-int8", "sgd") == 1001 * 1000 * 4  # not factored
    from ffint8.train.adam8 import ADAM8_BLOCK_BYTES, Adam8

    assert Adam8.block_bytes == ADAM8_BLOCK_BYTES  # what the footprint assumes
