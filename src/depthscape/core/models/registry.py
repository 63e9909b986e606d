"""A minimal model registry: build a model by name, list the names.

The seven models of the study are registered by name (``cnn``, ``resnet20``, ``resnet56``,
``resnet110``, ``plain20``, ``plain56``, ``plain110``); ``resnet{D}`` and ``plain{D}`` also
build for any other depth D = 6n+2 without being listed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from depthscape.core.errors import UserError

_FACTORIES: dict[str, Callable[..., nn.Module]] = {}
#: Families built at any depth 6n+2: prefix -> factory(depth, in_channels=, num_classes=).
_DEPTH_FAMILIES: dict[str, Callable[..., nn.Module]] = {}
_NAME_DEPTH_RE = re.compile(r"^([a-z]+?)(\d+)$")


class _FamilyPattern:
    """``{prefix}{depth}`` for the registered depth families (``resnet56``, ``plain110``)."""

    @staticmethod
    def match(text: str):
        match = _NAME_DEPTH_RE.match(text)
        return match if match and match.group(1) in _DEPTH_FAMILIES else None


_FAMILY_RE = _FamilyPattern()


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator that registers a model factory under ``name``; a duplicate name raises."""

    def decorate(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _FACTORIES:
            raise ValueError(f"model {name!r} is registered twice")
        _FACTORIES[name] = factory
        return factory

    return decorate


def register_depth_family(prefix: str, factory: Callable[..., nn.Module]) -> None:
    """Register ``factory(depth, ...)`` as the builder of ``{prefix}{D}`` for any depth D."""
    if prefix in _DEPTH_FAMILIES:
        raise ValueError(f"model family {prefix!r} is registered twice")
    _DEPTH_FAMILIES[prefix] = factory


def list_models() -> list[str]:
    """The registered model names, in registration order."""
    return list(_FACTORIES)


def depth_to_blocks(depth: int) -> int:
    """Blocks per group n for a ResNet/PlainNet of ``depth`` = 6n+2; a bad depth is a UserError."""
    if depth < 8 or (depth - 2) % 6 != 0:
        raise UserError(
            f"depth {depth} is not of the form 6n+2 with n >= 1 (e.g. 20, 32, 44, 56, 110)"
        )
    return (depth - 2) // 6


def canonical_name(name: str, depth: int | str | None = None) -> str:
    """Normalise the spellings users type into a model name.

    ``("resnet", 56)``, ``"resnet 56"``, ``"resnet-56"`` and ``"resnet56"`` give ``"resnet56"``;
    ``"plainnet 110"`` gives ``"plain110"``; ``"cnn"`` stays ``"cnn"``.
    """
    text = name.strip().lower()
    if depth is not None:
        text = f"{text}{depth}"
    text = re.sub(r"[\s_\-]+", "", text)
    text = text.replace("plainnet", "plain")
    if text in _FACTORIES:
        return text
    match = _FAMILY_RE.match(text)
    if match:
        depth_to_blocks(int(match.group(2)))
        return f"{match.group(1)}{int(match.group(2))}"
    if text in _DEPTH_FAMILIES:
        raise UserError(f"{name!r} needs a depth, e.g. '{name} 56'")
    known = ", ".join(list_models())
    raise UserError(f"unknown model {name!r}: choose one of {known}, or resnet/plainnet with a depth 6n+2")


def model_family(name: str) -> str:
    """``"cnn"``, ``"resnet"`` or ``"plain"`` for a canonical model name."""
    name = canonical_name(name)
    match = _FAMILY_RE.match(name)
    return match.group(1) if match else name


def model_depth(name: str) -> int | None:
    """The depth of a ResNet/PlainNet name, or None for the CNN."""
    match = _FAMILY_RE.match(canonical_name(name))
    return int(match.group(2)) if match else None


@dataclass(frozen=True)
class FamilyInfo:
    """What is specific to a model family, as torchvision's weights metadata and timm's
    default configs carry it: the analyses read these instead of testing model names."""

    prefix: str  # canonical name (a fixed model) or name prefix (a depth family)
    label: str  # display name, e.g. "PlainNet"
    file_name: str  # in file names and CSV columns, e.g. "plainnet"
    run_name: str  # run-name template, fields {depth}: e.g. "plainnet{depth}"
    checkpoint_name: str  # final-checkpoint stem, fields {depth}, {dataset}
    order: int  # position in the spec's tables and figures (CNN, ResNets, PlainNets)
    curve_unit: str = "iteration"  # x-axis of its training curves: "iteration" or "epoch"
    data_kwargs: tuple[str, ...] = ()  # dataset properties its factory takes beyond
    # channels and classes (e.g. the CNN's image_size)
    init: str = "pytorch-default"  # weight initialisation (core/models/init.py INIT_SCHEMES),
    # applied by get_model after the factory builds the layers


@dataclass(frozen=True)
class ModelInfo:
    """One model's entry: its family's metadata plus its depth."""

    name: str  # canonical, e.g. "resnet56"
    family: FamilyInfo
    depth: int | None  # None for a model of fixed depth (the CNN)

    @property
    def display_name(self) -> str:
        """``ResNet-56``, ``PlainNet-110``, ``CNN``."""
        return self.family.label if self.depth is None else f"{self.family.label}-{self.depth}"

    @property
    def curve_unit(self) -> str:
        return self.family.curve_unit

    @property
    def sort_key(self) -> tuple[int, int]:
        """The spec's order: CNN, then ResNets, then PlainNets, each by depth."""
        return self.family.order, self.depth or 0

    def run_name(self) -> str:
        return self.family.run_name.format(depth=self.depth)

    def checkpoint_name(self, dataset: str) -> str:
        return self.family.checkpoint_name.format(depth=self.depth, dataset=dataset)


_FAMILIES: dict[str, FamilyInfo] = {}


def register_family(info: FamilyInfo) -> None:
    """Register the metadata of a model family (or of one fixed model); a duplicate raises."""
    if info.prefix in _FAMILIES:
        raise ValueError(f"model family {info.prefix!r} is described twice")
    _FAMILIES[info.prefix] = info


def model_info(name: str) -> ModelInfo:
    """The registry entry of model ``name`` (any spelling :func:`canonical_name` accepts)."""
    name = canonical_name(name)
    return ModelInfo(name, _FAMILIES[model_family(name)], model_depth(name))


def families(with_depth: bool | None = None) -> list[FamilyInfo]:
    """The registered families in the spec's order; ``with_depth`` keeps only the depth
    families (True) or only the fixed models (False)."""
    chosen = sorted(_FAMILIES.values(), key=lambda f: f.order)
    if with_depth is None:
        return chosen
    return [f for f in chosen if (f.prefix in _DEPTH_FAMILIES) == with_depth]


def model_kwargs_for(name: str, dataset) -> dict:
    """The keyword arguments that build model ``name`` for ``dataset`` (as stored in checkpoints)."""
    kwargs = {"in_channels": dataset.in_channels, "num_classes": dataset.num_classes}
    for prop in model_info(name).family.data_kwargs:
        kwargs[prop] = getattr(dataset, prop)
    return kwargs


def get_model(name: str, in_channels: int = 3, num_classes: int = 10, **kwargs) -> nn.Module:
    """Build the model called ``name`` (any spelling :func:`canonical_name` accepts)."""
    from depthscape.core.models.init import initialise

    name = canonical_name(name)
    if name in _FACTORIES:
        model = _FACTORIES[name](in_channels=in_channels, num_classes=num_classes, **kwargs)
    else:
        family, depth = _FAMILY_RE.match(name).groups()
        model = _DEPTH_FAMILIES[family](int(depth), in_channels=in_channels,
                                        num_classes=num_classes, **kwargs)
    return initialise(model, model_info(name).family.init)
