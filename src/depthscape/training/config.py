"""A training run's identity: its settings, what is stored of them, and when two are one run.

:class:`TrainConfig` is everything one run depends on; :func:`run_settings` the part
stored beside (and inside) its files; :func:`first_difference` names the first setting
where a saved run differs from this one (None: the same run, which may resume).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from depthscape.core.data import Dataset, Preprocess
from depthscape.core.datasets import DEFAULT_DATASET
from depthscape.core.recipe import Recipe
from depthscape.core.runtime import recorded_precision


@dataclass
class TrainConfig:
    """Everything one training run depends on. The recipe defaults to the spec's."""

    model: str
    dataset: str = DEFAULT_DATASET
    data_dir: str | None = None
    cache_dir: str | None = None
    out_dir: str = "."
    seed: int = 0
    device: str | None = None
    recipe: Recipe | None = None  # None: recipe_for(model)
    scale: float = 1.0  # multiplies length, warm-up and decay points
    train_subset: int | None = None
    test_subset: int | None = None
    eval_every: int | None = None  # iterations between test evaluations; None: once per epoch
    log_every: int | None = None  # iterations between CSV rows (iteration recipes); None: 100
    checkpoint_every: int = 1000  # iterations between resumable checkpoints
    eval_batch_size: int | None = None  # None: 1000 on the CPU, 5000 on CUDA (one read per evaluation)
    resume: bool = False
    overwrite: bool = False
    stop_after: int | None = None  # stop (resumably) once this many iterations are done
    progress: bool = True
    # GPU fast-path switches: act only on CUDA, ignored (with a notice) elsewhere; None is
    # the device's default (on CUDA: bf16, channels-last, the captured step; docs/scaling.md).
    compile: bool = False  # torch.compile the training model
    channels_last: bool | None = None  # NHWC weights and inputs
    precision: str | None = None  # fp32 | tf32 | bf16
    cuda_graph: bool | None = None  # the step captured as one CUDA graph and replayed
    # weight snapshots every N iterations (epochs for epoch recipes) into
    # models/<checkpoint>.snapshots.h5, for trajectories; None: none (training/snapshots.py)
    snapshot_every: int | None = None
    # gradient flow: per-layer gradient and weight norms and update ratios, averaged over
    # each log row's steps, into logs/<run>_layers.csv (training/layerstats.py); a resumed
    # run keeps what it started with (runs from before the layer file resume without one)
    layer_stats: bool = True
    # a model from outside the package (--model-from): {"spec", "kwargs", "weights_sha256"},
    # part of the run's identity; ``model`` is then the plug-in run's name
    # (training/plugin.py). None: one of the package's models.
    plugin: dict | None = None


def run_settings(config: TrainConfig, recipe: Recipe, dataset: Dataset, preprocess: Preprocess,
                 model_name: str) -> dict:
    """The settings stored beside (and inside) the run's files: its identity, which
    :func:`first_difference` compares on resume."""
    settings = asdict(config)
    for transient in ("resume", "overwrite", "stop_after", "progress", "device", "recipe",
                      "compile", "channels_last", "precision",
                      "cuda_graph"):  # switches in effect: "runtime"
        settings.pop(transient)
    return {
        "model": model_name,
        "recipe": recipe.to_dict(),
        "train": settings,
        "dataset": {"name": dataset.name, "classes": list(dataset.classes),
                    "train_size": len(dataset.train), "test_size": len(dataset.test),
                    "in_channels": dataset.in_channels, "image_size": dataset.image_size,
                    "content_sha256": dataset.content_sha256()},
        "preprocess": {"scale": preprocess.scale, "mean": list(preprocess.mean),
                       "augment": preprocess.augment, "crop_padding": preprocess.crop_padding},
    }


def first_difference(saved: dict, current: dict) -> str | None:
    """The first setting where a saved run (its :func:`run_settings`) differs from this one,
    or None where the two are the same run (it may resume)."""
    keys = ("model", "recipe", "dataset", "preprocess")
    for key in keys:
        if key == "dataset":
            stored, here = dict(saved.get(key) or {}), dict(current.get(key) or {})
            content = stored.pop("content_sha256", None), here.pop("content_sha256", None)
            if stored != here:
                return key
            # runs from before the data's content was recorded resume as before
            if content[0] is not None and content[0] != content[1]:
                return "dataset content: its images or labels changed since the run started"
            continue
        if saved.get(key) != current.get(key):
            return key
    # what only says where files are, or which extra files are written (a resumed run keeps
    # the layer statistics it started with: training/loop.py)
    ignore = {"data_dir", "cache_dir", "out_dir", "checkpoint_every", "eval_batch_size",
              "layer_stats"}
    for key, value in current["train"].items():
        if key not in ignore and saved.get("train", {}).get(key) != value:
            return key
    # The precision changes the arithmetic; the other runtime settings (layout, graph,
    # compile, process count) only change speed and rounding, so a run may resume with others.
    if recorded_precision(saved.get("runtime")) != recorded_precision(current.get("runtime")):
        return "precision"
    return None
