"""The spec's entry point: ``python plot_curves.py <model_name> [options]``.

Same as ``depthscape curves ...`` (e.g. ``python plot_curves.py resnet56``,
``python plot_curves.py plainnet 110``, ``python plot_curves.py all``).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from depthscape.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["curves", *sys.argv[1:]]))
