import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ffint8.nn.blocks import ConvNorm
from ffint8.nn.norm import batch_norm_act
from ffint8.quant import fastsr

needs_lib = pytest.mark.skipif(not fastsr.available(), reason="the C kernel is not built here")

ACT = {None: lambda z: z, "relu": F.relu, "relu6": F.relu6}


def norms(channels: int, momentum: float | None = 0.1) -> tuple[nn.BatchNorm2d, nn.BatchNorm2d]:
    a = nn.BatchNorm2d(channels, momentum=momentum)
    with torch.no_grad():
        a.weight.uniform_(0.5, 1.5)
        a.bias.uniform_(-1.0, 1.0)
        a.running_mean.uniform_(-1.0, 1.0)
        a.running_var.uniform_(0.5, 2.0)
    b = nn.BatchNorm2d(channels, momentum=momentum)
    b.load_state_dict(a.state_dict())
    return a, b


def close(u: torch.Tensor, v: torch.Tensor, rel: float = 2e-6) -> bool:
    u, v = u.detach(), v.detach()
    return float((u - v).abs().max()) <= rel * max(1.0, float(v.abs().max()))


@needs_lib
@pytest.mark.parametrize("act", [None, "relu", "relu6"])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", [(20, 5, 7, 7), (4, 24, 28, 28), (40, 19, 3, 5), (6, 3, 1, 1)])
def test_same_as_batch_norm_then_activation(act, channels_last, shape):
    # forward, the three gradients and the running statistics, against BatchNorm2d + the
    # activation by autograd; 20 and 40 images pass the kernel's float-to-double flush (16 rows)
    gen = torch.Generator().manual_seed(sum(shape))
    x0 = torch.randn(shape, generator=gen) * 3 + 2  # values on both sides of 0 and 6
    if channels_last:
        x0 = x0.contiguous(memory_format=torch.channels_last)
    g = torch.randn(shape, generator=gen)
    a, b = norms(shape[1])
    x, x_ref = x0.clone().requires_grad_(), x0.clone().requires_grad_()
    y = batch_norm_act(x, a, act)
    y_ref = ACT[act](b(x_ref))
    assert y.grad_fn is not None and "BatchNormAct" in type(y.grad_fn).__name__
    assert y.is_contiguous(memory_format=torch.channels_last) == channels_last or shape[2:] == (1, 1)
    y.backward(g)
    y_ref.backward(g)
    assert close(y, y_ref) and close(x.grad, x_ref.grad)
    assert close(a.weight.grad, b.weight.grad, 1e-5) and close(a.bias.grad, b.bias.grad, 1e-5)
    assert close(a.running_mean, b.running_mean) and close(a.running_var, b.running_var)
    assert int(a.num_batches_tracked) == int(b.num_batches_tracked) == 1
    if act is not None:  # the activation's mask is in play
        assert bool((y == 0).any())


@needs_lib
def test_cumulative_running_average_and_repeated_steps():
    a, b = norms(8, momentum=None)  # momentum None: the mean of all batches so far
    gen = torch.Generator().manual_seed(3)
    for _ in range(3):
        x = torch.randn(5, 8, 6, 6, generator=gen) * 2
        batch_norm_act(x, a, "relu")
        F.relu(b(x))
    assert int(a.num_batches_tracked) == 3
    assert close(a.running_mean, b.running_mean) and close(a.running_var, b.running_var)


@needs_lib
def test_parameter_gradients_only():
    # the unit's own backward takes the norm's parameters only: no dL/dx is asked for
    a, b = norms(4)
    x = torch.randn(3, 4, 5, 5)
    y = batch_norm_act(x, a, "relu6")
    gw, gb = torch.autograd.grad(y.square().sum(), (a.weight, a.bias))
    rw, rb = torch.autograd.grad(F.relu6(b(x)).square().sum(), (b.weight, b.bias))
    assert close(gw, rw, 1e-5) and close(gb, rb, 1e-5)


@needs_lib
def test_conv_norm_takes_the_kernel_when_training_only():
    block = ConvNorm(3, 8, 3, act="relu6")
    x = torch.randn(4, 3, 9, 9)
    assert "BatchNormAct" in type(block(x).grad_fn).__name__
    block.eval()  # inference: the running statistics, BatchNorm2d's own path
    ref = F.relu6(F.batch_norm(F.conv2d(x, block.conv.weight, None, 1, 1), block.norm.running_mean,
                               block.norm.running_var, block.norm.weight, block.norm.bias, False))
    assert torch.allclose(block(x), ref)


@pytest.mark.parametrize("case", ["eval", "group", "silu", "double", "one value", "strided", "env"])
def test_falls_back_where_the_kernel_does_not_apply(case, monkeypatch):
    norm = nn.BatchNorm2d(4)
    x, act = torch.randn(2, 4, 3, 3), "relu"
    if case == "eval":
        norm.eval()
    elif case == "group":
        norm = nn.GroupNorm(2, 4)
    elif case == "silu":
        act = "silu"
    elif case == "double":
        x, norm = x.double(), norm.double()
    elif case == "one value":  # BatchNorm2d refuses one value per channel when training
        x = torch.randn(1, 4, 1, 1)
    elif case == "env":
        monkeypatch.setenv("FFINT8_NO_FUSED_NORM", "1")
    else:
        x = x[:, :, ::2]
    assert batch_norm_act(x, norm, act) is None


@needs_lib
def test_backward_refuses_a_gradient_of_another_shape():
    x = torch.randn(2, 4, 3, 3)
    w, b = torch.ones(4), torch.zeros(4)
    _, mean, _, invstd = fastsr.bn_act_forward(x, w, b, 1e-5, "relu")
    with pytest.raises(ValueError, match="bn_act_backward"):
        fastsr.bn_act_backward(torch.ones(2, 4, 3, 2), x, w, b, mean, invstd, "relu", True)
