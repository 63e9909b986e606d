"""The spec's entry point: ``python main.py cnn | resnet DEPTH | plainnet DEPTH [options]``.

Same as ``depthscape train ...``; every option of that command works here too.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from depthscape.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(["train", *sys.argv[1:]]))
