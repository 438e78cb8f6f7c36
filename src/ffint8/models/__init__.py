"""Models: a registry and one file per architecture; each exposes its FF units in order."""

from ffint8.models import efficientnet as _efficientnet  # noqa: F401  (registers "efficientnet_b0")
from ffint8.models import mlp as _mlp  # noqa: F401  (registers "mlp")
from ffint8.models import mobilenet as _mobilenet  # noqa: F401  (registers "mobilenetv2")
from ffint8.models import resnet as _resnet  # noqa: F401  (registers "resnet18")
from ffint8.models.registry import create_model, list_models, model_options, register_model

__all__ = ["create_model", "list_models", "model_options", "register_model"]
