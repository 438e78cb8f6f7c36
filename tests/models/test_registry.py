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
