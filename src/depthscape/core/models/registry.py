"""A minimal model registry: build a model by name, list the names.

Everything specific to a model family lives in one :class:`FamilyInfo` record, registered
by the family's own module (as timm keeps ``default_cfgs`` beside each model): its name
pattern and depth rule, factory, recipes (with their preprocessing), memory estimate,
display names, initialisation and what it is compared with in the study. The registry,
the recipes, the memory limits, the tables and the study read the records; none of them
tests a model's name.

The seven models of the study are registered by name (``cnn``, ``resnet20``, ``resnet56``,
``resnet110``, ``plain20``, ``plain56``, ``plain110``); a depth family (``resnet{D}``,
``plain{D}``, ``preresnet{D}``) also builds at any depth its rule accepts without being
listed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from torch import nn

from depthscape.core.errors import UserError
from depthscape.core.models.init import initialise

_FACTORIES: dict[str, Callable[..., nn.Module]] = {}
_NAME_DEPTH_RE = re.compile(r"^([a-z]+?)(\d+)$")


class _FamilyPattern:
    """``{prefix}{depth}`` for the registered depth families (``resnet56``, ``plain110``)."""

    @staticmethod
    def match(text: str):
        match = _NAME_DEPTH_RE.match(text)
        if not match:
            return None
        family = _FAMILIES.get(match.group(1))
        return match if family is not None and family.has_depth else None


_FAMILY_RE = _FamilyPattern()


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator that registers a model factory under ``name``; a duplicate name raises."""

    def decorate(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _FACTORIES:
            raise ValueError(f"model {name!r} is registered twice")
        _FACTORIES[name] = factory
        return factory

    return decorate


def list_models() -> list[str]:
    """The registered model names, in registration order."""
    return list(_FACTORIES)


def canonical_name(name: str, depth: int | str | None = None) -> str:
    """Normalise the spellings users type into a model name.

    ``("resnet", 56)``, ``"resnet 56"``, ``"resnet-56"`` and ``"resnet56"`` give ``"resnet56"``;
    ``"plainnet 110"`` gives ``"plain110"`` (a family's ``aliases``); ``"cnn"`` stays ``"cnn"``.
    """
    text = name.strip().lower()
    if depth is not None:
        text = f"{text}{depth}"
    text = re.sub(r"[\s_\-]+", "", text)
    text = _unalias(text)
    if text in _FACTORIES:
        return text
    match = _FAMILY_RE.match(text)
    if match:
        _FAMILIES[match.group(1)].check_depth(int(match.group(2)))
        return f"{match.group(1)}{int(match.group(2))}"
    if family_prefix(text) is not None:
        raise UserError(f"{name!r} needs a depth, e.g. '{name} 56'")
    known = ", ".join(list_models())
    by_form: dict[str, list[str]] = {}  # "6n+2" -> ["resnet", "plainnet", ...]
    for family in families(with_depth=True):
        by_form.setdefault(family.depth_form, []).append((family.aliases or (family.prefix,))[0])
    depth_names = " or ".join(f"{'/'.join(names)} with a depth {form}".replace("  ", " ")
                              for form, names in by_form.items())
    raise UserError(f"unknown model {name!r}: choose one of {known}"
                    + (f", or {depth_names}" if depth_names else ""))


def _unalias(text: str) -> str:
    """``text`` with a family's alias at its start replaced by the family's prefix."""
    for family in _FAMILIES.values():
        for alias in family.aliases:
            if text.startswith(alias) and alias != family.prefix:
                return family.prefix + text[len(alias):]
    return text


def family_prefix(text: str) -> str | None:
    """The prefix of the depth family a bare name (``resnet``, ``plainnet``) names, else None."""
    text = _unalias(re.sub(r"[\s_\-]+", "", text.strip().lower()))
    family = _FAMILIES.get(text)
    return text if family is not None and family.has_depth else None


def model_family(name: str) -> str:
    """The family prefix of a model name: ``"cnn"``, ``"resnet"``, ``"plain"``, ..."""
    name = canonical_name(name)
    match = _FAMILY_RE.match(name)
    return match.group(1) if match else name


def model_depth(name: str) -> int | None:
    """The depth of a depth family's model (``resnet56``: 56), or None for a fixed model."""
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
    plural: str = ""  # the family in the plural, e.g. "PlainNets" (default: label + "s")
    aliases: tuple[str, ...] = ()  # spellings of the prefix users type, e.g. "plainnet";
    # the first is the name shown in messages ("plainnet with a depth 6n+2"; default prefix)
    # A depth family (built as {prefix}{depth} at any depth the rule accepts) has both:
    depth_rule: Callable[[int], object] | None = None  # raises UserError for a bad depth
    depth_form: str = ""  # the rule in words for messages and help, e.g. "6n+2"
    factory: Callable[..., nn.Module] | None = None  # factory(depth, in_channels=, num_classes=)
    # (a fixed model's factory is registered by name with @register_model)
    #: The recipes written for it, by the depth they were written for (None: a fixed model);
    #: other depths take the nearest (ties: the shallower). Each carries its preprocessing
    #: (pixel scale, mean subtraction, augmentation).
    recipes: Mapping[int | None, object] = field(default_factory=dict, repr=False, compare=False)
    #: Memory of training at (depth, batch_size) in bytes, checked before building it; None:
    #: not known in advance, nothing refused.
    training_bytes: Callable[[int, int], int] | None = None
    paired_with: str | None = None  # prefix of the family it is compared with at each
    # depth in the study (a ResNet with its PlainNet): curves, report, trajectories
    figure: int | None = None  # number of its training-curve figure in the spec's report

    @property
    def has_depth(self) -> bool:
        """True for a depth family, False for a model of fixed depth (the CNN)."""
        return self.depth_rule is not None

    @property
    def plural_label(self) -> str:
        return self.plural or f"{self.label}s"

    def check_depth(self, depth: int) -> None:
        """Raise the family's UserError where ``depth`` breaks its rule."""
        if self.depth_rule is not None:
            self.depth_rule(depth)


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
    """Register the record of a model family (or of one fixed model); a duplicate raises."""
    if info.prefix in _FAMILIES:
        raise ValueError(f"model family {info.prefix!r} is described twice")
    if info.has_depth and info.factory is None:
        raise ValueError(f"depth family {info.prefix!r} has no factory")
    _FAMILIES[info.prefix] = info


def unregister(name: str) -> None:
    """Remove a model registered for a while (a plug-in model's record and factory, see
    :func:`depthscape.core.plugins.registered`); an unknown name is ignored."""
    _FAMILIES.pop(name, None)
    _FACTORIES.pop(name, None)


def depth_forms() -> dict[str, list[str]]:
    """Each depth rule (``"6n+2"``) and the names users type of the families it applies to."""
    forms: dict[str, list[str]] = {}
    for family in families(with_depth=True):
        forms.setdefault(family.depth_form, []).append((family.aliases or (family.prefix,))[0])
    return forms


def model_names_text() -> str:
    """The model names users type, from the records, for help texts: ``cnn, resnet,
    plainnet, preresnet (with a depth 6n+2)``."""
    fixed = [f.prefix for f in families(with_depth=False)]
    forms = depth_forms()
    depth = "; ".join(f"{', '.join(names)} (with a depth {form})" for form, names in forms.items())
    return ", ".join(fixed + ([depth] if depth else []))


def family_info(prefix: str) -> FamilyInfo:
    """The record registered under ``prefix`` (``"resnet"``, ``"cnn"``)."""
    return _FAMILIES[prefix]


def pairs() -> list[tuple[FamilyInfo, FamilyInfo]]:
    """The study's comparisons of two depth families at each depth, e.g. (ResNet, PlainNet),
    in the order of the first family; a partner that is not registered is left out."""
    return [(f, _FAMILIES[f.paired_with]) for f in families(with_depth=True)
            if f.paired_with in _FAMILIES]


class DepthPair(NamedTuple):
    """One pairing of :func:`pairs` at one depth: ResNet-56 beside PlainNet-56."""

    first: FamilyInfo
    second: FamilyInfo
    depth: int

    @property
    def names(self) -> tuple[str, str]:
        """The two models' canonical names (``("resnet56", "plain56")``)."""
        return f"{self.first.prefix}{self.depth}", f"{self.second.prefix}{self.depth}"

    @property
    def stem(self) -> str:
        """The start of the pair's file names (``resnet_vs_plain_56``)."""
        return f"{self.first.prefix}_vs_{self.second.prefix}_{self.depth}"


def present_pairs(names: Iterable[str]) -> list[DepthPair]:
    """The pairings at each depth where both models are among ``names`` (canonical model
    names, e.g. a study's runs): pairing by pairing in :func:`pairs`' order, depths rising."""
    names = set(names)
    depths = sorted({d for d in map(model_depth, names) if d is not None})
    every = (DepthPair(first, second, depth) for first, second in pairs() for depth in depths)
    return [pair for pair in every if all(n in names for n in pair.names)]


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
    return [f for f in chosen if f.has_depth == with_depth]


def model_kwargs_for(name: str, dataset) -> dict:
    """The keyword arguments that build model ``name`` for ``dataset`` (as stored in checkpoints)."""
    kwargs = {"in_channels": dataset.in_channels, "num_classes": dataset.num_classes}
    for prop in model_info(name).family.data_kwargs:
        kwargs[prop] = getattr(dataset, prop)
    return kwargs


def get_model(name: str, in_channels: int = 3, num_classes: int = 10, **kwargs) -> nn.Module:
    """Build the model called ``name`` (any spelling :func:`canonical_name` accepts)."""
    name = canonical_name(name)
    if name in _FACTORIES:
        model = _FACTORIES[name](in_channels=in_channels, num_classes=num_classes, **kwargs)
    else:
        family, depth = _FAMILY_RE.match(name).groups()
        model = _FAMILIES[family].factory(int(depth), in_channels=in_channels,
                                          num_classes=num_classes, **kwargs)
    return initialise(model, model_info(name).family.init)
