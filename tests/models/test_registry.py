import pytest

from ffint8.errors import ConfigError
from ffint8.models import create_model, list_models


def test_mlp_parameter_count_matches_paper():
    m = create_model("mlp")
    n = sum(p.numel() for p in m.parameters())
    assert n == 784 * 1000 + 1000 + 1000 * 1000 + 1000  # 1.79 M, as the paper's MLP
    assert [u.out_features for u in m.units] == [1000, 1000]


def test_unknown_model_lists_choices():
    with pytest.raises(ConfigError, match="unknown model 'resnet99'.*mlp"):
        create_model("resnet99")
    assert "mlp" in list_models()


def test_mlp_classifier_head_is_the_backprop_network():
    import torch
    from torch.nn import functional as F

    m = create_model("mlp", in_features=6, hidden=(5, 4), num_classes=3, classifier=True)
    x = torch.randn(7, 6)
    expect = F.linear(F.relu(F.linear(F.relu(F.linear(x, *[p for p in (m.units[0].weight,
                                                                       m.units[0].bias)])),
                                      m.units[1].weight, m.units[1].bias)),
                      m.head.weight, m.head.bias)
    assert torch.equal(m(x), expect)
    calls = []

    def op(x, w, b):
        calls.append(tuple(w.shape))
        return F.linear(x, w, b)

    m(x, ops=[op] * 3)
    assert calls == [(5, 6), (4, 5), (3, 4)]
    with pytest.raises(RuntimeError, match="without a classifier head"):
        create_model("mlp", hidden=(4,))(x)
