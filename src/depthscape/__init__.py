"""depthscape: why residual connections let deep networks train, measured.

Train a baseline CNN, ResNets and PlainNets on CIFAR-10 at any depth 6n+2, log and plot
their training, and draw and measure their loss landscapes.
"""

__version__ = "0.1.0"
