"""Training: one recipe -> one run directory (state, step, loop, GPU fast path). Imports core."""
