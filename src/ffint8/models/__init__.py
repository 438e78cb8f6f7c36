"""Models: a registry and one file per architecture; each exposes its FF units in order."""

from ffint8.models import mlp as _mlp  # noqa: F401  (registers "mlp")
from ffint8.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
