"""The report's building blocks: headings, paragraphs, tables, figures and interactive
surfaces, and the records of a landscape and of a trajectory or curvature map.

Stages return lists of these (``Stage.blocks``); :mod:`depthscape.study.render` turns one
list into Markdown and into HTML, so both formats always say the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from depthscape.analysis.tables import Table


@dataclass
class Landscape:
    """One model's loss surface and the files drawn from it."""

    model: str
    run_name: str
    surface: Path  # HDF5 surface file
    plots: list[Path] = field(default_factory=list)  # PNG/PDF drawings
    html: Path | None = None  # standalone interactive page

    def plot(self, kind: str) -> Path | None:
        """The PNG of ``kind`` (``contour``, ``surface3d``, ...), if drawn."""
        for path in self.plots:
            if path.suffix == ".png" and path.stem.endswith(f"_{kind}"):
                return path
        return None


@dataclass
class View:
    """One run's trajectory or curvature map: its data file and its drawing."""

    model: str
    run_name: str
    data: Path  # HDF5 file
    png: Path


# ---------------------------------------------------------------------------------------
# Blocks


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Paragraph:
    text: str  # plain text; `code` spans allowed


@dataclass
class Bullets:
    items: list[str]


@dataclass
class TableBlock:
    table: Table
    caption: str = ""


@dataclass
class FigureBlock:
    path: Path  # PNG
    caption: str
    links: list[tuple[str, Path]] = field(default_factory=list)  # other formats


@dataclass
class FigureGrid:
    figures: list[FigureBlock]


@dataclass
class SurfaceBlock:
    landscape: Landscape
    caption: str


def figure_block(figure, caption: str) -> FigureBlock:
    """A curves.Figure as a block: its PNG, with its other formats linked."""
    png = next(p for p in figure.paths if p.suffix == ".png")
    others = [(p.suffix[1:].upper(), p) for p in figure.paths if p.suffix != ".png"]
    return FigureBlock(png, caption, others)
