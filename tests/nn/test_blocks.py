"""FF convolutional units: length normalisation, shapes, the dense equivalence, label planes and
the int8 arithmetic."""

import pytest
import torch
import torch.nn.functional as F

from ffint8.nn import functional as FF
from ffint8.nn.blocks import (
    Arith,
    BasicBlock,
    ConvBlock,
    InvertedResidual,
    StemBlock,
    make_divisible,
    mbconv,
)
from ffint8.nn.dense import FFDense

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small convolutions


def all_units():
    return {
        "conv": ConvBlock(4, 6),
        "basic": BasicBlock(4, 4),
        "basic-down": BasicBlock(4, 8, stride=2),
        "inverted": InvertedResidual(4, 4, 1, expand=6),
        "inverted-down": InvertedResidual(4, 8, 2, expand=1),
        "mbconv": mbconv(4, 4, 1, expand=6, kernel=5),
    }


@pytest.mark.parametrize("name", list(all_units()))
def test_each_unit_sees_only_the_direction_of_its_input(name):
    """Length normalisation per sample over C*H*W: scaling a sample changes nothing."""
    torch.manual_seed(0)
    unit = all_units()[name].double().eval()
    h = torch.randn(3, 4, 6, 6, dtype=torch.float64)
    scale = torch.tensor([0.5, 1.0, 300.0], dtype=torch.float64).view(3, 1, 1, 1)
    # equal up to the normaliser's eps (1e-8 against a norm of about 1)
    torch.testing.assert_close(unit(h * scale), unit(h), rtol=1e-7, atol=1e-9)
    raw = unit(h * scale, norm=None)  # the backprop network's view: no normalisation
    assert not torch.allclose(raw, unit(h))


@pytest.mark.parametrize("name,shape", [("conv", (2, 6, 6, 6)), ("basic", (2, 4, 6, 6)),
                                        ("basic-down", (2, 8, 3, 3)), ("inverted", (2, 4, 6, 6)),
                                        ("inverted-down", (2, 8, 3, 3)), ("mbconv", (2, 4, 6, 6))])
def test_output_shapes_and_autograd(name, shape):
    unit = all_units()[name]
    h = torch.randn(2, 4, 6, 6)
    y = unit(h)
    assert y.shape == shape
    FF.goodness(y.flatten(1)).sum().backward()
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in unit.parameters())


def test_residual_and_projection_structure():
    """Shortcut convs only where the shape changes; residual adds only where it is kept."""
    assert BasicBlock(4, 4).shortcut is None and BasicBlock(4, 8).shortcut is not None
    assert InvertedResidual(4, 4, 1, 6).residual and not InvertedResidual(4, 4, 2, 6).residual
    assert InvertedResidual(4, 4, 1, 1).expand is None
    m = mbconv(8, 8, 1, 6, 5)
    assert m.se is not None and m.se.reduce.conv.out_channels == 2  # a quarter of the input
    assert m.depthwise.conv.kernel_size == (5, 5) and m.depthwise.conv.groups == 48
    assert mbconv(8, 8, 1, 6, 3, se_ratio=0.0).se is None
    h = torch.randn(2, 4, 5, 5)
    unit = BasicBlock(4, 4).eval()
    a = FF.normalize(h.flatten(1))[0].view_as(h)
    want = F.relu(unit.conv2(unit.conv1(a)) + a)
    torch.testing.assert_close(unit(h), want)


def test_1x1_conv_block_without_norm_is_a_dense_unit():
    torch.manual_seed(0)
    dense = FFDense(12, 7).double()
    conv = ConvBlock(12, 7, k=1, norm="none").double()
    with torch.no_grad():
        conv.block.conv.weight.copy_(dense.weight[:, :, None, None])
        conv.block.conv.bias.copy_(dense.bias)
    h = torch.rand(5, 12, dtype=torch.float64)
    for norm in ("rms", "l2"):
        want = dense.forward_record(h, norm).y
        torch.testing.assert_close(conv(h[:, :, None, None], norm)[:, :, 0, 0], want,
                                   rtol=0, atol=1e-14)


def test_stem_reads_flat_images_and_label_planes():
    stem = StemBlock((1, 6, 6), 8, num_classes=3, label_plane=True)
    assert stem.block.conv.in_channels == 4
    x = torch.rand(2, 36)
    x[:, :3] = torch.tensor([[0.0, 1.0, 0.0], [1 / 3, 1 / 3, 1 / 3]])  # one-hot, neutral label
    img = stem.prepare(x)
    assert img.shape == (2, 4, 6, 6)
    assert torch.equal(img[:, 0], x.view(2, 6, 6))
    assert torch.equal(img[:, 1:], x[:, :3, None, None].expand(2, 3, 6, 6))
    assert stem(x).shape == (2, 8, 6, 6)
    plain = StemBlock((1, 6, 6), 8, num_classes=3)
    assert plain.block.conv.in_channels == 1 and torch.equal(plain.prepare(x), x.view(2, 1, 6, 6))
    with pytest.raises(ValueError, match=r"flattened images \(B, 36\)"):
        stem(torch.rand(2, 35))


def test_int8_units_agree_with_float_and_infer_per_sample():
    """INT8 convolutions inside a unit: close to float (>= 25 dB), and at inference (no seed,
    no grad) one scale per sample, so a sample's output does not depend on its batch."""
    torch.manual_seed(1)
    unit = BasicBlock(8, 8).eval()
    h = torch.randn(4, 8, 7, 7)
    h[0] *= 50.0  # a loud sample must not coarsen the others' quantisation at inference
    with torch.no_grad():
        yf = unit(h)
        yq = unit(h, arith=Arith(int8=True))
        alone = unit(h[1:2], arith=Arith(int8=True))
    snr = 10 * torch.log10(yf.square().sum() / (yq - yf).square().sum())
    assert snr >= 25.0
    torch.testing.assert_close(alone, yq[1:2], rtol=1e-5, atol=1e-6)
    y = unit(h, arith=Arith(int8=True, seed=7))  # training: stochastic rounding, autograd
    y.square().mean().backward()
    assert unit.conv1.conv.weight.grad is not None


def test_arith_streams_and_kernel_names():
    a = Arith(int8=True, seed=5)
    assert a.sub(0).seed != a.sub(1).seed and a.sub(0).seed == Arith(int8=True, seed=5).sub(0).seed
    assert Arith(int8=True).sub(3).seed is None
    x, conv = torch.randn(2, 3, 5, 5), torch.nn.Conv2d(3, 4, 3, padding=1)
    with torch.no_grad():
        ref = Arith(int8=True, kernel="reference").conv2d(x, conv)
        torch.testing.assert_close(Arith(int8=True, kernel="float-exact").conv2d(x, conv), ref)
        torch.testing.assert_close(Arith(int8=True, kernel="int_mm").conv2d(x, conv), ref)


@pytest.mark.parametrize("norm", ["group", "none"])
def test_per_sample_norms_do_not_mix_the_batch(norm):
    """GroupNorm (and no norm) compute each sample alone, in training mode too; BatchNorm in
    training mode does not."""
    torch.manual_seed(0)
    h = torch.randn(4, 4, 6, 6)
    for unit in (BasicBlock(4, 16, norm=norm), InvertedResidual(4, 4, 1, 6, norm=norm)):
        torch.testing.assert_close(unit(h[1:2]), unit(h)[1:2], rtol=1e-5, atol=1e-6)
    bn = BasicBlock(4, 16)
    assert not torch.allclose(bn(h[:2]), bn(h)[:2])


def test_make_divisible():
    assert [make_divisible(v) for v in (32, 4, 12, 20, 1280 * 0.1)] == [32, 8, 16, 24, 128]
    assert make_divisible(36, 16) == 48  # 32 would lose more than 10%
