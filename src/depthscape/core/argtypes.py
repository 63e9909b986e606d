"""The kinds of numeric command-line argument (argparse types), one definition each.

In ``core`` so that the modules that declare their own options (the Hessian measures of
:mod:`depthscape.analysis.measures`) and the CLI share them.
"""

from __future__ import annotations

import argparse
import math

#: Upper bounds of counts and seeds: what every library below can represent (a torch
#: generator seed is 64-bit and seeds are multiplied by ~1e6; counts index tensors).
MAX_COUNT = 2**31 - 1
MAX_SEED = 2**31 - 1


def int_in(lo: int, hi: int = MAX_COUNT):
    """An argparse type: an integer in ``[lo, hi]``, written as digits (no 1e3, inf, nan)."""

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be between {lo} and {hi}, got {text}")
        return value

    parse.__name__ = "integer"  # what argparse names in its own messages
    return parse


def float_in(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False):
    """An argparse type: a finite number in the interval from ``lo`` to ``hi``.

    ``lo_open``/``hi_open`` exclude the bound. Infinity and NaN are refused, as is a
    number whose text overflows to infinity (``1e999``).
    """
    left, right = "(" if lo_open else "[", ")" if hi_open else "]"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        above = value > lo if lo_open else value >= lo
        below = value < hi if hi_open else value <= hi
        if not (above and below):
            raise argparse.ArgumentTypeError(f"must be in {left}{lo:g}, {hi:g}{right}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


#: The shared kinds of numeric argument, one definition each.
positive_int = int_in(1)
seed_int = int_in(0, MAX_SEED)
positive_float = float_in(0.0, 1e6, lo_open=True)
finite_float = float_in(-1e12, 1e12)
