"""Loss landscapes of trained runs (Li et al. 2018, as the spec's section 7.2).

* :func:`compute_landscape` evaluates the loss and accuracy on a grid around a checkpoint's
  weights along filter-normalised random directions (or along the line to a second
  checkpoint) into an HDF5 surface file, resumably and shardable over torchrun ranks;
* :func:`plot_landscape` draws it (contour, filled contour, heatmap, 3-D surface, 1-D
  curve; PNG and PDF), plus a ParaView ``.vtp`` and an interactive HTML page;
* :func:`read_surface` reads a surface file back as arrays.
"""

from depthscape.analysis.landscape.directions import (
                                             interpolation_direction,
                                             normalize_direction,
                                             random_directions,
)
from depthscape.analysis.landscape.plots import export_vtp, plot_landscape, write_interactive_html
from depthscape.analysis.landscape.surface import (
                                             LandscapeConfig,
                                             compute_landscape,
                                             default_surface_path,
                                             read_directions,
                                             read_surface,
)

__all__ = [
    "LandscapeConfig",
    "compute_landscape",
    "default_surface_path",
    "export_vtp",
    "interpolation_direction",
    "normalize_direction",
    "plot_landscape",
    "random_directions",
    "read_directions",
    "read_surface",
    "write_interactive_html",
]
