"""Weight initialisation shared by every model."""

from torch import nn


def kaiming_init(model: nn.Module) -> None:
    """Kaiming-normal weights for every Conv2d and Linear layer, as in He et al. (2015/2016)."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight)
