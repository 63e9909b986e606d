"""The whole comparison in one call: train, plot, measure, tabulate, report.

:func:`run_study` runs the study's stages (:mod:`depthscape.study.stages`) in order: the
data, the trainings (through :func:`depthscape.study.launcher.run_trainings`, skipping
finished runs and resuming interrupted ones), the training curves, Tables 1 and 2, each
model's loss landscape, the sharpness of every minimum, the trajectories, curvature maps,
eigenvalue densities and flatness slices, and last ``report.md`` and a self-contained
``report.html``. Every stage keeps its results on disk and reuses them, so running the
same study again only does what is missing.

A :class:`~depthscape.study.budgets.Budget` says how much of the spec's work to do:
``paper`` is the spec's full recipes, ``quick`` a scaled-down study for a laptop CPU,
``smoke`` a seconds-long check.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from depthscape.core import runtime
from depthscape.core.atomic import (
    atomic_write_text,
    ensure_writable_dir,
    remove_stale_temporaries,
    remove_stale_temporaries_in,
)
from depthscape.core.datasets import DEFAULT_DATASET
from depthscape.core.device import get_device, torch_threads
from depthscape.core.errors import UserError
from depthscape.core.locking import claim
from depthscape.core.models import canonical_name

# the budgets and the training's configs, importable from here as before
from depthscape.study.budgets import (  # noqa: F401
    BUDGETS,
    STUDY_MODELS,
    Budget,
    budget_numbers,
    describe_budgets,
    get_budget,
)
from depthscape.study.jobs import refuse_if_in_flight
from depthscape.study.stages import Stage, Study, all_stages, switchable_stages
from depthscape.study.stages.training import training_configs  # noqa: F401

#: The stages that have a switch of their own in StudyConfig (the others: ``skip``).
SWITCHES = ("landscapes", "sharpness", "trajectories", "curvature", "density", "flatness")


@dataclass
class StudyConfig:
    """Everything one study depends on."""

    budget: str = "quick"
    seeds: int = 1
    out_dir: str = "study"
    dataset: str = DEFAULT_DATASET
    data_dir: str | None = None
    cache_dir: str | None = None
    device: str | None = None
    models: Sequence[str] | None = None  # default: the budget's (the seven of the spec)
    landscapes: bool = True
    sharpness: bool = True
    trajectories: bool = True  # where the budget keeps snapshots
    curvature: bool = True  # curvature maps on the landscapes' planes
    density: bool = True  # the Hessian's eigenvalue density (where the budget has one)
    flatness: bool = True  # K random 1-D slices with error bars (where the budget has them)
    progress: bool = True
    # switches passed to every training (None: the device's defaults; on CUDA the captured
    # step, bf16 and channels-last, on the CPU channels-last fp32; bf16 where asked);
    # landscape_precision goes to the landscapes and trajectories; see docs/scaling.md.
    # The two precisions left None are the folder's (the arithmetic it was made with) or,
    # for a new folder, the budget's: bf16 on a CPU with native bf16 for `quick`, else
    # fp32 (training: the device's default); see _arithmetic
    precision: str | None = None
    cuda_graph: bool | None = None
    channels_last: bool | None = None
    compile: bool = False
    runs_per_gpu: int | None = None  # concurrent trainings per GPU (None: $DEPTHSCAPE_RUNS_PER_GPU or 1)
    landscape_precision: str | None = None
    skip: tuple[str, ...] = ()  # stages not to run, by name (`depthscape study --no-<name>`)
    # torch's intra-op threads for the whole study and for every Slurm unit (None: torch's
    # default here, the unit's CPUs on Slurm); float sums depend on it, so a study compared
    # across launchers sets it
    threads: int | None = None

    def __post_init__(self):
        # a stage is off where `skip` names it; the stages with a switch of their own say
        # the same through it (either way round)
        off = [name for name in SWITCHES if not getattr(self, name)]
        self.skip = tuple(dict.fromkeys((*self.skip, *off)))
        for name in set(self.skip) & set(SWITCHES):
            setattr(self, name, False)


@dataclass
class StudyResult:
    """What a study produced: the report files and every artifact behind them."""

    out_dir: Path
    report_md: Path
    report_html: Path
    metrics: list = field(default_factory=list)  # tables.RunMetrics
    figures: list = field(default_factory=list)  # curves.Figure
    landscapes: list = field(default_factory=list)  # blocks.Landscape
    sharpness: list = field(default_factory=list)  # (RunInfo, SharpnessResult)
    timings: dict = field(default_factory=dict)  # stage -> seconds in this call
    notes: list = field(default_factory=list)
    trajectories: list = field(default_factory=list)  # blocks.View (one per run)
    trajectory_pairs: list = field(default_factory=list)  # (depth, PNG of ResNet | PlainNet)
    trajectory_titles: dict = field(default_factory=dict)  # PNG -> "ResNet-20 (left) vs ..."
    curvature: list = field(default_factory=list)  # blocks.View (one per run)
    curvature_grid: Path | None = None  # PNG: every map on one colour scale
    densities: list = field(default_factory=list)  # (RunInfo, SpectralDensity), seed 0
    density_pairs: list = field(default_factory=list)  # (depth, PNG of ResNet and PlainNet)
    flatness: list = field(default_factory=list)  # (RunInfo, FlatnessResult)
    flatness_figure: Path | None = None  # PNG: both measures by depth, with error bars
    gradient_flow: list = field(default_factory=list)  # stages.depth.PairFlow, per depth
    block_profiles: list = field(default_factory=list)  # stages.depth.PairBlocks, per depth
    outputs: dict = field(default_factory=dict)  # stage name -> what a later stage found
    # the arithmetic used: "training" {run name: "bf16, channels-last"} (as each run's config
    # records it), "landscapes" (the landscapes' and trajectories' precision)
    arithmetic: dict = field(default_factory=dict)


def _settings(config: StudyConfig, budget: Budget, models: list[str]) -> dict:
    # the models studied may change between calls; the budget's numbers may not
    return json.loads(json.dumps({"budget": budget_numbers(budget), "seeds": config.seeds,
                                  "models": models, "dataset": config.dataset}))


def _saved_study(out: Path) -> dict | None:
    """The folder's ``study.json`` as saved (None: the folder holds no study yet). One that
    cannot be read, or is not a JSON object, is refused (one line) rather than overwritten:
    the folder's runs could not be matched to a budget."""
    path = out / "study.json"
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} cannot be read ({exc}); move it away or use another --out") \
            from None
    if not isinstance(saved, dict):
        raise UserError(f"{path} is not a study's settings (not a JSON object); move it away "
                        "or use another --out")
    return saved


def _check_folder(out: Path, saved: dict | None, settings: dict) -> None:
    """Refuse a folder whose saved study (``saved``) has another budget (its runs would not
    match)."""
    if saved is None:
        return
    new = settings["budget"]
    # the numbers of stages that recompute on their own where their settings change do not
    # make it another budget (Stage.recomputes)
    free = {key for stage in all_stages() if stage.recomputes for key in stage.numbers}
    old = {k: v for k, v in saved.get("budget", {}).items() if k not in free}
    # a number the saved study has not heard of (a stage added since) is no conflict: that
    # stage's results are new either way
    if old and {key: new.get(key) for key in old} != old:
        raise UserError(f"{out} holds a study with the {old.get('name', 'another')!r} budget "
                        f"(or other budget numbers); use another --out for the "
                        f"{settings['budget']['name']!r} budget")


def run_study(config: StudyConfig) -> StudyResult:
    """Run (or finish) the study ``config`` describes and write its report; see the module doc.

    The study folder is locked while it runs: a second study in it is refused (one line
    naming the holder), as is any study while Slurm units of the folder are queued or running
    (:mod:`depthscape.study.jobs`); the temporaries an interrupted write left in it are removed.
    """
    out = ensure_writable_dir(config.out_dir)
    with claim_study(out):
        return finish_study(config)


@contextlib.contextmanager
def claim_study(out: Path):
    """Hold the study folder ``out`` (this process's lock, and no Slurm unit of it in flight)
    and remove the temporaries an interrupted write left in it."""
    with claim(out / ".study.lock", f"study folder {out}"):
        refuse_if_in_flight(out)
        remove_stale_temporaries([*study_paths(out).values(), out / "study.json"])
        # the folders the study itself writes (a killed study leaves temporaries there)
        remove_stale_temporaries_in([out / sub for sub in study_folders()])
        yield


def finish_study(config: StudyConfig) -> StudyResult:
    """Every stage of the study in this process, on a folder already held (:func:`run_study`;
    the Slurm launcher's final unit, whose submitter holds it): what earlier calls or units
    finished is reused."""
    study = start_study(config)
    run_stages(study, all_stages())
    _write_timings(study.out, study.result.timings)
    study.say(f"report: {study.result.report_md} and {study.result.report_html}")
    return study.result


def run_stages(study: Study, stages: Sequence[Stage]) -> None:
    """Run each of ``stages`` that is wanted, in order, timing each: the one loop of the study,
    for a whole study and for one unit's part of it alike (:mod:`depthscape.study.units`)."""
    with torch_threads(study.config.threads):
        for stage in stages:
            if stage.wanted(study):
                with _Timer(study, stage.name):
                    stage.run(study)


def start_study(config: StudyConfig, write: bool = True) -> Study:
    """The study ``config`` asks for, checked, with its folder claimed for its budget
    (``study.json`` written where ``write``; a unit reads the one its submitter wrote)."""
    budget = get_budget(config.budget)
    if config.seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {config.seeds}")
    unknown = sorted(set(config.skip) - {stage.name for stage in switchable_stages()})
    if unknown:
        raise UserError(f"no study stage to skip called {', '.join(map(repr, unknown))}")
    models = [canonical_name(m) for m in (config.models or budget.models)]
    if len(set(models)) != len(models):
        raise UserError("a model is listed twice")
    out = ensure_writable_dir(config.out_dir)
    config = replace(config, out_dir=str(out))
    settings = _settings(config, budget, models)
    saved = _saved_study(out)
    _check_folder(out, saved, settings)
    config, chosen_by = _arithmetic(config, budget, saved)
    settings["arithmetic"] = {"precision": config.precision,
                              "landscape_precision": config.landscape_precision,
                              "chosen_by": chosen_by}
    if config.threads is not None and config.threads < 1:
        raise UserError(f"--threads must be at least 1, got {config.threads}")
    if write:
        atomic_write_text(out / "study.json", json.dumps(settings, indent=2) + "\n")
    result = StudyResult(out, out / "report.md", out / "report.html",
                         arithmetic={"landscapes": config.landscape_precision,
                                     "chosen_by": chosen_by})
    return Study(config, budget, out, models, settings, result)


#: The two precisions a study resolves, and who chose each one's value (``study.json``'s
#: ``arithmetic["chosen_by"]``; the report's bf16 sentence reads it): "asked" (a switch, now
#: or when the folder was made), "budget" (the budget's CPU bf16), "default" (the device's
#: default training, fp32 landscapes) or "unknown" (a folder from before it was recorded).
PRECISIONS = ("precision", "landscape_precision")


def _arithmetic(config: StudyConfig, budget: Budget,
                saved: dict | None) -> tuple[StudyConfig, dict[str, str]]:
    """``config`` with the precisions it leaves open (None) filled in, and who chose each
    (:data:`PRECISIONS`).

    A folder keeps the arithmetic it was made with (``saved``, its ``study.json``: the
    ``arithmetic`` entry; a folder made before that was recorded: the device's default
    training and fp32 landscapes), so its runs and surfaces stay valid; a new folder takes
    the budget's (:data:`~depthscape.study.budgets.CPU_BF16`: bf16 training and landscapes
    on a CPU with native bf16, else fp32). A precision given explicitly always wins (a
    surface of other arithmetic is recomputed)."""
    if saved is not None:
        kept = saved.get("arithmetic")
        if isinstance(kept, dict):
            chosen = kept.get("chosen_by") if isinstance(kept.get("chosen_by"), dict) else {}
            by = {key: chosen.get(key, "unknown") for key in PRECISIONS}
        else:  # made before the arithmetic was recorded: the defaults of that time
            kept, by = {"precision": None, "landscape_precision": "fp32"}, dict.fromkeys(
                PRECISIONS, "default")
    else:
        bf16 = (budget.cpu_bf16 and get_device(config.device).type == "cpu"
                and runtime.cpu_bf16_supported())
        kept = {"precision": "bf16" if bf16 else None,
                "landscape_precision": "bf16" if bf16 else "fp32"}
        by = dict.fromkeys(PRECISIONS, "budget" if bf16 else "default")
    values = {}
    for key in PRECISIONS:
        asked = getattr(config, key)
        values[key] = asked if asked is not None else kept.get(key)
        if asked is not None:
            by[key] = "asked"
    values["landscape_precision"] = values["landscape_precision"] or "fp32"
    return replace(config, **values), by


class _Timer:
    def __init__(self, study: Study, name: str):
        self.study, self.timings, self.name = study, study.result.timings, name

    def __enter__(self):
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.timings[self.name] = time.perf_counter() - self.started
        if exc[0] is None:
            self.study.say(f"{self.name}: {self.timings[self.name]:.0f} s")


def _write_timings(out: Path, timings: dict) -> None:
    """Append this call's stage times to ``timings.json`` (one entry per study call)."""
    path = out / "timings.json"
    history = []
    if path.exists():
        try:
            history = json.loads(path.read_text())
        except (OSError, ValueError):
            history = []
    history.append({"finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    "steps_s": {k: round(v, 1) for k, v in timings.items()},
                    "total_s": round(sum(timings.values()), 1)})
    atomic_write_text(path, json.dumps(history, indent=2) + "\n")


def study_folders() -> tuple[str, ...]:
    """The folders a study writes its own files into (runs' files have their own locks)."""
    return (".", "plots", *(sub for stage in all_stages() for sub in stage.folders))


def study_paths(out_dir: str | os.PathLike) -> dict[str, Path]:
    """Where a study's outputs lie under ``out_dir``."""
    out = Path(out_dir)
    return {"report_md": out / "report.md", "report_html": out / "report.html",
            "plots": out / "plots", "tables": out / "tables", "landscapes": out / "landscapes",
            "sharpness": out / "sharpness", "flatness": out / "flatness", "logs": out / "logs",
            "models": out / "models"}
