"""Weight initialisation schemes; each model family names its own in its record.

* ``pytorch-default``: the layers keep the initialisation PyTorch gives them when built
  (the spec's CNN is a plain PyTorch module, so this is its scheme);
* ``kaiming-normal``: Kaiming-normal weights for every Conv2d and Linear layer (the final
  classifier included), as in He et al. (2015/2016) and the common CIFAR ResNet code.
"""

from torch import nn


def kaiming_init(model: nn.Module) -> None:
    """Kaiming-normal weights for every Conv2d and Linear layer, as in He et al. (2015/2016)."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight)


def _pytorch_default(model: nn.Module) -> None:
    """Leave the weights as the layers' constructors drew them."""


INIT_SCHEMES = {"pytorch-default": _pytorch_default, "kaiming-normal": kaiming_init}


def initialise(model: nn.Module, scheme: str) -> nn.Module:
    """Apply the named scheme to ``model`` in place (drawing from torch's global RNG); returns it."""
    try:
        INIT_SCHEMES[scheme](model)
    except KeyError:
        raise ValueError(f"unknown initialisation {scheme!r}: use one of "
                         f"{', '.join(INIT_SCHEMES)}") from None
    return model
