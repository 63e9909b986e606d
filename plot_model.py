"""The spec's entry point: ``python plot_model.py <model_name> [<depth>] [options]``.

Same as ``depthscape landscape ...``: loads ``models/<run>.pth`` (e.g. ``python plot_model.py
resnet 56``, ``python plot_model.py plainnet 110``, ``python plot_model.py cnn``), computes
the filter-normalised loss surface and saves its plots to ``plots/``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from depthscape.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(["landscape", *sys.argv[1:]]))
