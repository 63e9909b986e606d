"""Models by name: ``get_model("resnet56")``, ``list_models()``."""

from depthscape.core.models import cnn as _cnn  # noqa: F401  (registers "cnn")
from depthscape.core.models import resnet as _resnet  # noqa: F401  (registers resnet*/plain*)
from depthscape.core.models.registry import (
    FamilyInfo,
    ModelInfo,
    canonical_name,
    depth_to_blocks,
    families,
    get_model,
    list_models,
    model_depth,
    model_family,
    model_info,
    model_kwargs_for,
    register_model,
)

__all__ = [
    "canonical_name",
    "FamilyInfo",
    "ModelInfo",
    "depth_to_blocks",
    "families",
    "get_model",
    "list_models",
    "model_depth",
    "model_family",
    "model_info",
    "model_kwargs_for",
    "register_model",
]
