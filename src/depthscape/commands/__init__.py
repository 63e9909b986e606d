"""Subcommands of the ``depthscape`` CLI, one module each (discovered by depthscape.cli)."""
