"""The study: budgets, the multi-run launcher and the report, over training and analysis."""
