"""A registry of model builders: create_model(name, **kw) and list_models()."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

from ffint8.errors import ConfigError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: make a builder available as create_model(name, ...)."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = fn
        return fn

    return deco


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def model_options(name: str) -> frozenset[str]:
    """The options a registered builder names (the rest of what create_model passes, it ignores)."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")
    params = inspect.signature(_REGISTRY[name]).parameters.values()
    return frozenset(p.name for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD)


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model; an unknown name is a ConfigError listing the valid ones."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")
    return _REGISTRY[name](**kwargs)
