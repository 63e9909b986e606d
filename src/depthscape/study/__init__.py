"""The study: its stages (``stages/``, one module each), the budgets built from them, the
runner, the multi-run launcher and the report, over training and analysis."""
