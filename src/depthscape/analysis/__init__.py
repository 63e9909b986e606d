"""Analyses of trained runs: curves, tables, sharpness, loss landscapes. Imports core and training."""
