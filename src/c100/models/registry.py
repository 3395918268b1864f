"""Model registry: `@register` a builder, `create_model(name)` builds it (as timm does). Its own module, so
that the architectures take `register` from a module that imports none of them (the package's __init__
imports them all: a cycle while they took it from there)."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

from c100 import UserError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    _REGISTRY[fn.__name__.replace("_", "-")] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def create_model(name: str, num_classes: int = 100) -> nn.Module:
    if name not in _REGISTRY:
        raise UserError(f"unknown model '{name}'; choose one of: {', '.join(list_models())}")
    return _REGISTRY[name](num_classes=num_classes)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
