"""Models by name: ``get_model("resnet56")``, ``list_models()``.

Each model family is one module of this package that registers its own record
(:class:`FamilyInfo`): ``cnn`` (the baseline CNN), ``resnet`` (ResNets and PlainNets),
``preresnet`` (pre-activation ResNets). Every module here other than the registry's own is
imported below, so a new family is one new file and nothing else.
"""

import importlib as _importlib
import pkgutil as _pkgutil

from depthscape.core.models.registry import (
    DepthPair,
    FamilyInfo,
    ModelInfo,
    canonical_name,
    depth_forms,
    families,
    family_info,
    family_prefix,
    get_model,
    list_models,
    model_depth,
    model_family,
    model_info,
    model_kwargs_for,
    model_names_text,
    pairs,
    present_pairs,
    register_model,
    unregister,
)

#: Modules of this package that are not model families.
_NOT_FAMILIES = {"registry", "init"}
#: The family modules, in the order they register: the spec's CNN and ResNets/PlainNets
#: first (their fixed names fill list_models() in the spec's order), then any other.
FAMILY_MODULES = ["cnn", "resnet"] + sorted(
    m.name for m in _pkgutil.iter_modules(__path__)
    if m.name not in _NOT_FAMILIES | {"cnn", "resnet"} and not m.name.startswith("_"))
for _name in FAMILY_MODULES:
    _importlib.import_module(f"{__name__}.{_name}")

from depthscape.core.models.resnet import depth_to_blocks  # noqa: E402  (ResNet's 6n+2 rule)

__all__ = [
    "canonical_name",
    "FamilyInfo",
    "FAMILY_MODULES",
    "DepthPair",
    "ModelInfo",
    "depth_to_blocks",
    "depth_forms",
    "families",
    "family_info",
    "family_prefix",
    "get_model",
    "list_models",
    "model_depth",
    "model_family",
    "model_info",
    "model_kwargs_for",
    "model_names_text",
    "pairs",
    "present_pairs",
    "register_model",
    "unregister",
]
