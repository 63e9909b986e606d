"""`python -m depthscape` runs the command-line interface."""

from depthscape.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
