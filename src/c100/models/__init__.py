"""The networks: `create_model(name)` builds a registered one (registry.py); importing the architecture
modules registers their builders."""

from c100.models import resnet, seed, vgg  # noqa: F401
from c100.models.registry import count_parameters, create_model, list_models, register

__all__ = ["count_parameters", "create_model", "list_models", "register"]
