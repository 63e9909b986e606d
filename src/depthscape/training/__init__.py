"""Training: one recipe -> one run directory. ``state`` (what a checkpoint holds), ``step``
(one batch -> one update), ``loop`` (set-up and events), ``fastpath`` (CUDA switches). Imports core."""
