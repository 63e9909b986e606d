"""The bottom layer: errors, atomic files, devices, data, models, recipes, checkpoints, runs,
process groups. Imports nothing above it."""
