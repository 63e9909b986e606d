"""The whole comparison in one call: train, plot, measure, tabulate, report.

:func:`run_study` trains the seven models (through :func:`depthscape.study.launcher.run_trainings`,
skipping finished runs and resuming interrupted ones), draws the training curves, computes
each model's loss landscape, Tables 1 and 2 and the sharpness of every minimum, and writes
``report.md`` and a self-contained ``report.html``. Every step keeps its results on disk
and reuses them, so running the same study again only does what is missing.

A :class:`Budget` says how much of the spec's work to do: ``paper`` is the spec's full
recipes, ``quick`` a scaled-down study for a laptop CPU, ``smoke`` a seconds-long check.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from depthscape.core.atomic import (
    atomic_write_text,
    ensure_writable_dir,
    remove_stale_temporaries,
    remove_stale_temporaries_in,
)
from depthscape.core.errors import UserError
from depthscape.core.models import canonical_name

#: The seven models of the spec, in its order.
STUDY_MODELS = ("cnn", "resnet20", "resnet56", "resnet110", "plain20", "plain56", "plain110")


@dataclass(frozen=True)
class Budget:
    """How much of the spec's work a study does. ``None`` means "all of it"."""

    name: str
    description: str
    scale: float  # ResNet/PlainNet: multiplies the 64,000 iterations, warm-up and decays
    cnn_scale: float  # CNN: multiplies its 50 epochs and cosine period
    train_subset: int | None  # training images (fixed random subset)
    test_subset: int | None  # test images evaluated during training
    eval_every: int | None  # iterations between test evaluations (None: once per epoch)
    log_every: int | None  # iterations between CSV rows (None: the recipe's 100)
    checkpoint_every: int  # iterations between resumable checkpoints
    table_train_limit: int | None  # training images evaluated for Table 1 (None: the run's split)
    table_test_limit: int | None  # test images evaluated for Table 1 (None: all)
    landscape_resolution: int  # grid points per axis over [-1, 1]
    landscape_subset: int | None  # test images each grid point is evaluated on
    sharpness_subset: int  # training images the Hessian is measured on
    sharpness_power_iters: int
    sharpness_trace_samples: int
    sharpness_power_tol: float = 1e-3
    sharpness_trace_tol: float = 0.05
    # Iterations every ResNet/PlainNet starts at a tenth of its learning rate (the spec's
    # warm-up lr); None keeps each recipe's own warm-up, scaled with the schedule.
    warmup_iterations: int | None = None
    # Views beyond random slices (Li et al. s. 6-7): weight snapshots per run for the
    # optimization trajectories (None: no snapshots, no trajectories), the trajectory
    # contour's grid, and the curvature map's grid, images and Lanczos steps per point.
    snapshots: int | None = None
    trajectory_resolution: int = 11
    trajectory_subset: int | None = None
    curvature_resolution: int = 11
    curvature_subset: int = 256
    curvature_iters: int = 20
    # Issue 18: the Hessian's eigenvalue density (SLQ: runs x steps Hessian-vector products
    # on the sharpness subset, each ResNet/PlainNet; 0 runs: none) and flatness with error
    # bars (K random 1-D slices of `flatness_points` steps over [-1, 1] through every
    # minimum, on `flatness_subset` test images; 0 directions: none).
    density_runs: int = 0
    density_steps: int = 0
    flatness_directions: int = 0
    flatness_points: int = 11
    flatness_subset: int | None = 200
    models: tuple[str, ...] = STUDY_MODELS

    def recipe(self, model: str):
        """The recipe ``model`` trains with under this budget (already scaled)."""
        from depthscape.core.recipes import recipe_for

        recipe = recipe_for(canonical_name(model))
        # cnn_scale is the budget's factor for epoch recipes (the CNN's), scale for the rest
        recipe = recipe.scaled(self.cnn_scale if recipe.unit == "epoch" else self.scale)
        if self.warmup_iterations and recipe.unit == "iteration":
            recipe = replace(recipe, warmup_length=self.warmup_iterations,
                             warmup_lr=recipe.warmup_lr or recipe.lr / 10)
        return recipe

    def snapshot_every(self, model: str) -> int | None:
        """Iterations (epochs for the CNN) between weight snapshots: about ``snapshots`` per run."""
        if not self.snapshots:
            return None
        return max(1, self.recipe(model).length // self.snapshots)

    def snapshot_count(self, model: str) -> int:
        """How many snapshots a finished run of ``model`` keeps (0 without snapshots)."""
        every = self.snapshot_every(model)
        if every is None:
            return 0
        length = self.recipe(model).length  # the initial weights, every ``every``, the last
        return 1 + length // every + (1 if length % every else 0)

    def iterations(self, model: str) -> str:
        """Human-readable training length of ``model`` under this budget."""
        recipe = self.recipe(model)
        return f"{recipe.length} {recipe.unit}{'' if recipe.length == 1 else 's'}"


#: The quick budget's new views (set from timings of single stages, docs/study.md).
QUICK_TRAJECTORY_RESOLUTION = 7
QUICK_CURVATURE_RESOLUTION = 5
QUICK_CURVATURE_ITERS = 4
# density and flatness sized so the quick study stays near its 45 minutes (docs/study.md)
QUICK_DENSITY_RUNS, QUICK_DENSITY_STEPS = 2, 8
QUICK_FLATNESS_SUBSET = 100
QUICK_FLATNESS_DIRECTIONS, QUICK_FLATNESS_POINTS = 5, 11

BUDGETS: dict[str, Budget] = {
    # The spec's recipes: 64,000 iterations (ResNet/PlainNet), 50 epochs (CNN), all of the
    # data; Li et al.'s 51x51 grid on the whole test set. Days on a CPU, hours on a GPU.
    "paper": Budget(
        name="paper", description="the spec's full recipes and data",
        scale=1.0, cnn_scale=1.0, train_subset=None, test_subset=None,
        eval_every=None, log_every=None, checkpoint_every=1000,
        table_train_limit=None, table_test_limit=None,
        landscape_resolution=51, landscape_subset=None,
        sharpness_subset=2000, sharpness_power_iters=50, sharpness_trace_samples=100,
        sharpness_trace_tol=0.02, snapshots=40, trajectory_resolution=25, trajectory_subset=None,
        curvature_resolution=11, curvature_subset=1000, curvature_iters=20,
        density_runs=3, density_steps=80, flatness_directions=10, flatness_points=41,
        flatness_subset=None),
    # Sized for a 2-core CPU on real CIFAR-10 (numbers and timings in docs/study.md): all
    # six ResNets/PlainNets train the same 400 iterations (the spec's schedule scaled by
    # 1/160: lr decays at 200 and 300) on a fixed 10,000-image subset, so depth and the
    # shortcut are the only differences; the CNN trains 5 epochs on the same subset. The
    # first phase (200 iterations) runs at the spec's warm-up rate, a tenth of the base
    # lr: at lr 0.1 ResNet-56's first steps blow up (with or without a 40-iteration
    # warm-up) and a 400-iteration run sits at chance level, while ResNet-20 is fine.
    "quick": Budget(
        name="quick", description="scaled schedules, subsets and grids for a 2-core CPU (<45 min)",
        scale=0.00625, cnn_scale=0.1, train_subset=10_000, test_subset=1000,
        eval_every=100, log_every=20, checkpoint_every=100,
        table_train_limit=5000, table_test_limit=None,
        landscape_resolution=11, landscape_subset=200,
        sharpness_subset=128, sharpness_power_iters=8, sharpness_trace_samples=6,
        sharpness_power_tol=1e-2, sharpness_trace_tol=0.1, warmup_iterations=200,
        # trajectories and curvature maps sized to ~5 min together (docs/study.md)
        snapshots=40, trajectory_resolution=QUICK_TRAJECTORY_RESOLUTION, trajectory_subset=100,
        curvature_resolution=QUICK_CURVATURE_RESOLUTION, curvature_subset=16,
        curvature_iters=QUICK_CURVATURE_ITERS,
        # the density and flatness sized from the sharpness and landscape steps' measured
        # costs (docs/study.md): about 2.5 and 1 min
        density_runs=QUICK_DENSITY_RUNS, density_steps=QUICK_DENSITY_STEPS,
        flatness_directions=QUICK_FLATNESS_DIRECTIONS, flatness_points=QUICK_FLATNESS_POINTS,
        flatness_subset=QUICK_FLATNESS_SUBSET),
    # Seconds per model on tiny data: for tests and for trying the pipeline. The CNN trains
    # 2 epochs, not 1: its snapshots are taken per epoch, and a trajectory needs 3 of them
    # (the initial weights and two more); tests/test_study.py checks every budget for that.
    "smoke": Budget(
        name="smoke", description="a few iterations on a few images, to check the pipeline",
        scale=1 / 8000, cnn_scale=0.04, train_subset=256, test_subset=64,
        eval_every=4, log_every=2, checkpoint_every=4,
        table_train_limit=128, table_test_limit=64,
        landscape_resolution=5, landscape_subset=32,
        sharpness_subset=16, sharpness_power_iters=2, sharpness_trace_samples=2,
        sharpness_power_tol=1e-2, sharpness_trace_tol=0.5, snapshots=4,
        trajectory_resolution=3, trajectory_subset=32, curvature_resolution=2,
        curvature_subset=8, curvature_iters=3, density_runs=2, density_steps=3,
        flatness_directions=2, flatness_points=3, flatness_subset=32),
}


def get_budget(name: str) -> Budget:
    """The budget called ``name``; an unknown name is a UserError listing the known ones."""
    if name not in BUDGETS:
        raise UserError(f"unknown budget {name!r}: choose one of {', '.join(BUDGETS)}")
    return BUDGETS[name]


@dataclass
class StudyConfig:
    """Everything one study depends on."""

    budget: str = "quick"
    seeds: int = 1
    out_dir: str = "study"
    dataset: str = "cifar10"
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
    # landscape_precision goes to the landscapes and trajectories; see docs/scaling.md
    precision: str | None = None
    cuda_graph: bool | None = None
    channels_last: bool | None = None
    compile: bool = False
    runs_per_gpu: int | None = None  # concurrent trainings per GPU (None: $DEPTHSCAPE_RUNS_PER_GPU or 1)
    landscape_precision: str = "fp32"


@dataclass
class StudyResult:
    """What a study produced: the report files and every artifact behind them."""

    out_dir: Path
    report_md: Path
    report_html: Path
    metrics: list = field(default_factory=list)  # tables.RunMetrics
    figures: list = field(default_factory=list)  # curves.Figure
    landscapes: list = field(default_factory=list)  # report.Landscape
    sharpness: list = field(default_factory=list)  # (RunInfo, SharpnessResult)
    timings: dict = field(default_factory=dict)  # step -> seconds in this call
    notes: list = field(default_factory=list)
    trajectories: list = field(default_factory=list)  # report.View (one per run)
    trajectory_pairs: list = field(default_factory=list)  # (depth, PNG of ResNet | PlainNet)
    trajectory_titles: dict = field(default_factory=dict)  # PNG -> "ResNet-20 (left) vs ..."
    curvature: list = field(default_factory=list)  # report.View (one per run)
    curvature_grid: Path | None = None  # PNG: every map on one colour scale
    densities: list = field(default_factory=list)  # (RunInfo, SpectralDensity), seed 0
    density_pairs: list = field(default_factory=list)  # (depth, PNG of ResNet and PlainNet)
    flatness: list = field(default_factory=list)  # (RunInfo, FlatnessResult)
    flatness_figure: Path | None = None  # PNG: both measures by depth, with error bars


def _settings(config: StudyConfig, budget: Budget, models: list[str]) -> dict:
    numbers = asdict(budget)
    numbers.pop("models")  # the models studied may change between calls; the numbers may not
    return json.loads(json.dumps({"budget": numbers, "seeds": config.seeds, "models": models,
                                  "dataset": config.dataset}))


def _check_folder(out: Path, settings: dict) -> None:
    """Refuse a folder that holds a study with another budget (its runs would not match)."""
    marker = out / "study.json"
    if not marker.exists():
        return
    try:
        saved = json.loads(marker.read_text())
    except (OSError, ValueError):
        return
    old = saved.get("budget", {})
    new = settings["budget"]
    # a number the saved study has not heard of (a stage added since) is no conflict: that
    # stage's results are new either way
    if old and {key: new.get(key) for key in old} != old:
        raise UserError(f"{out} holds a study with the {old.get('name', 'another')!r} budget "
                        f"(or other budget numbers); use another --out for the "
                        f"{settings['budget']['name']!r} budget")


def training_configs(config: StudyConfig, budget: Budget, models: Sequence[str]) -> list:
    """One resumable TrainConfig per model and seed, as the budget says."""
    from depthscape.training.loop import TrainConfig

    configs = []
    for seed in range(config.seeds):
        for model in models:
            # an epoch recipe (the CNN's) logs once per epoch and is evaluated at its end
            per_epoch = budget.recipe(model).unit == "epoch"
            configs.append(TrainConfig(
                model=model, dataset=config.dataset, data_dir=config.data_dir,
                cache_dir=config.cache_dir, out_dir=str(config.out_dir), seed=seed,
                device=config.device, recipe=budget.recipe(model), scale=1.0,
                train_subset=budget.train_subset, test_subset=budget.test_subset,
                eval_every=None if per_epoch else budget.eval_every,
                log_every=None if per_epoch else budget.log_every,
                checkpoint_every=budget.checkpoint_every, resume=True,
                progress=config.progress, precision=config.precision,
                cuda_graph=config.cuda_graph, channels_last=config.channels_last,
                compile=config.compile,
                snapshot_every=budget.snapshot_every(model) if config.trajectories else None))
    return configs


def _say(progress: bool, message: str) -> None:
    if progress:
        print(f"[study] {message}", flush=True)


def run_study(config: StudyConfig) -> StudyResult:
    """Run (or finish) the study ``config`` describes and write its report; see the module doc.

    The study folder is locked while it runs: a second study in it is refused (one line
    naming the holder); the temporaries an interrupted write left in it are removed.
    """
    from depthscape.core.locking import claim

    out = ensure_writable_dir(config.out_dir)
    with claim(out / ".study.lock", f"study folder {out}"):
        remove_stale_temporaries([*study_paths(out).values(), out / "study.json"])
        # the folders the study itself writes (a killed study leaves temporaries there)
        remove_stale_temporaries_in([out / sub for sub in STUDY_FOLDERS])
        return _run_study(config)


def _run_study(config: StudyConfig) -> StudyResult:
    from depthscape.analysis.curves import standard_figures
    from depthscape.analysis.tables import evaluate_runs, table1, table2, write_table
    from depthscape.core.data import load_dataset
    from depthscape.core.runs import RunInfo, run_paths
    from depthscape.study.launcher import run_trainings
    from depthscape.study.report import write_report

    budget = get_budget(config.budget)
    if config.seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {config.seeds}")
    models = [canonical_name(m) for m in (config.models or budget.models)]
    if len(set(models)) != len(models):
        raise UserError("a model is listed twice")
    out = ensure_writable_dir(config.out_dir)
    config = replace(config, out_dir=str(out))
    settings = _settings(config, budget, models)
    _check_folder(out, settings)
    atomic_write_text(out / "study.json", json.dumps(settings, indent=2) + "\n")
    timings: dict[str, float] = {}
    notes: list[str] = []

    def step(name: str):
        return _Timer(timings, name, config.progress)

    with step("data"):
        dataset = load_dataset(config.dataset, config.data_dir, config.cache_dir)
    runs = [RunInfo(m, s, dataset.name, run_paths(out, m, s, dataset.name))
            for s in range(config.seeds) for m in models]

    with step("training"):
        _say(config.progress, f"training {len(runs)} run(s) ({budget.name} budget)")
        try:
            # runs per GPU only where asked: else run_trainings' own default ($DEPTHSCAPE_RUNS_PER_GPU)
            per_gpu = {} if config.runs_per_gpu is None else {"runs_per_device": config.runs_per_gpu}
            run_trainings(training_configs(config, budget, models), dataset=dataset, **per_gpu)
        except UserError as error:
            if error.exit_code != 130:
                raise
            where = str(error).split(";")[0]  # "interrupted at iteration N"
            raise UserError(f"{where}; the run is saved: run the same study command again "
                            "to continue", exit_code=130) from None

    with step("curves"):
        figures = standard_figures(out, out / "plots", models=models, seed=0,
                                   dataset=dataset.name, reuse=True)

    with step("tables"):
        _say(config.progress, "evaluating the final checkpoints for Tables 1 and 2")
        metrics = evaluate_runs(runs, dataset, config.device, train_limit=budget.table_train_limit,
                                test_limit=budget.table_test_limit,
                                cache_dir=out / "tables" / "metrics", progress=config.progress)
        for table, stem in ((table1(metrics), "table1"), (table2(metrics), "table2")):
            write_table(table, out / "tables", stem)

    landscapes = []
    if config.landscapes:
        with step("landscapes"):
            landscapes = _landscapes(runs, budget, dataset, config, out, notes)

    sharpness = []
    if config.sharpness:
        with step("sharpness"):
            sharpness = _sharpness(runs, budget, dataset, config, out)

    result = StudyResult(out, out / "report.md", out / "report.html", metrics, figures,
                         landscapes, sharpness, timings, notes)
    if config.trajectories and budget.snapshots:
        with step("trajectories"):
            _trajectories(runs, budget, dataset, config, out, result)
    if config.curvature and landscapes:
        with step("curvature"):
            _curvature(runs, landscapes, budget, dataset, config, out, result)
    if config.density and budget.density_runs and budget.density_steps:
        with step("density"):
            _density(runs, budget, dataset, config, out, result)
    if config.flatness and budget.flatness_directions:
        with step("flatness"):
            _flatness(runs, budget, dataset, config, out, result)
    with step("report"):
        write_report(result, budget, settings)
    _write_timings(out, timings)
    _say(config.progress, f"report: {result.report_md} and {result.report_html}")
    return result


class _Timer:
    def __init__(self, timings: dict, name: str, progress: bool):
        self.timings, self.name, self.progress = timings, name, progress

    def __enter__(self):
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.timings[self.name] = time.perf_counter() - self.started
        if exc[0] is None:
            _say(self.progress, f"{self.name}: {self.timings[self.name]:.0f} s")


def _write_timings(out: Path, timings: dict) -> None:
    """Append this call's step times to ``timings.json`` (one entry per study call)."""
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


def _landscapes(runs, budget: Budget, dataset, config: StudyConfig, out: Path,
                notes: list[str]) -> list:
    """Each model's (seed 0) surface, its plots and its interactive 3-D page."""
    from depthscape.study.report import Landscape

    try:
        from depthscape.analysis.landscape import (
            LandscapeConfig,
            compute_landscape,
            plot_landscape,
            write_interactive_html,
        )
    except ImportError as error:
        notes.append(f"loss landscapes skipped: the landscape module is unavailable ({error})")
        return []
    results = []
    for run in runs:
        if run.seed != 0 or not run.paths.final.exists():
            continue
        surface_config = LandscapeConfig(
            resolution=budget.landscape_resolution, xrange=(-1.0, 1.0), yrange=(-1.0, 1.0),
            split="test", subset=budget.landscape_subset, seed=0, norm="filter",
            device=config.device, precision=config.landscape_precision)
        target = out / "landscapes" / f"{run.paths.run_name}.h5"
        _say(config.progress, f"landscape of {run.paths.run_name} "
                              f"({budget.landscape_resolution}x{budget.landscape_resolution})")
        surface = Path(compute_landscape(run.paths.final, surface_config, output=target,
                                         dataset=dataset, progress=config.progress))
        plot_dir = out / "plots" / "landscapes"
        plots = _fresh_landscape_plots(surface, plot_dir) or [
            Path(p) for p in plot_landscape(surface, plot_dir, kinds=list(LANDSCAPE_KINDS),
                                            log_scale=True)]
        html = out / "landscapes" / f"{run.paths.run_name}_3d.html"
        if not _newer(html, surface):
            html = Path(write_interactive_html(surface, html, log_scale=True))
        results.append(Landscape(run.model, run.paths.run_name, surface, plots, html))
    return results


#: The landscape drawings a study makes: the spec's contour (Figure 4) and 3-D surface
#: (Figure 5), plus filled contours. All of log10(loss): away from the minimum the loss
#: grows by many orders of magnitude (1e7 at the corners of a short-trained ResNet-110's
#: grid, 1e20 for PlainNet-110), which on a linear scale flattens every basin to one colour.
LANDSCAPE_KINDS = ("contour", "contourf", "surface3d")


def _newer(target: Path, source: Path) -> bool:
    return target.exists() and target.stat().st_mtime_ns >= source.stat().st_mtime_ns


def _fresh_landscape_plots(surface: Path, plot_dir: Path) -> list[Path] | None:
    """The drawings of ``surface`` when every kind exists as PNG newer than the surface."""
    found = sorted(plot_dir.glob(f"{surface.stem}_loss_log_*"))
    pngs = {p.stem.rsplit("_", 1)[-1]: p for p in found if p.suffix == ".png"}
    if all(kind in pngs and _newer(pngs[kind], surface) for kind in LANDSCAPE_KINDS):
        return [p for p in found if p.stem.rsplit("_", 1)[-1] in LANDSCAPE_KINDS]
    return None


def _sharpness_config(budget: Budget, config: StudyConfig):
    from depthscape.analysis.sharpness import SharpnessConfig

    return SharpnessConfig(
        split="train", subset=budget.sharpness_subset,
        batch_size=min(budget.sharpness_subset, 512),  # bounds the double-backward's memory
        power_iters=budget.sharpness_power_iters, power_tol=budget.sharpness_power_tol,
        trace_samples=budget.sharpness_trace_samples, trace_tol=budget.sharpness_trace_tol,
        min_trace_samples=min(5, budget.sharpness_trace_samples), seed=0, device=config.device)


def _sharpness(runs, budget: Budget, dataset, config: StudyConfig, out: Path) -> list:
    from tqdm.auto import tqdm

    from depthscape.analysis.sharpness import measure_sharpness, sharpness_table
    from depthscape.analysis.tables import write_table

    sharp_config = _sharpness_config(budget, config)
    results = []
    finished = [r for r in runs if r.paths.final.exists()]
    for run in tqdm(finished, desc="sharpness", unit="run", disable=not config.progress,
                    dynamic_ncols=True):
        results.append((run, measure_sharpness(run.paths.final, sharp_config, dataset,
                                               out / "sharpness" / f"{run.paths.run_name}.json")))
    if results:
        write_table(sharpness_table(results), out / "sharpness", "sharpness")
    return results


def _trajectories(runs, budget: Budget, dataset, config: StudyConfig, out: Path, result) -> None:
    """Each run's (seed 0) trajectory surface and plot, and ResNet | PlainNet at each depth."""
    from depthscape.analysis.trajectory import (
        MIN_SNAPSHOTS,
        TrajectoryConfig,
        compute_trajectory,
        plot_trajectory,
    )
    from depthscape.core.models import model_depth, model_info, pairs
    from depthscape.study.report import View
    from depthscape.training.snapshots import read_snapshot_steps, snapshot_path

    plot_dir = out / "plots" / "trajectories"
    by_model = {}
    for run in runs:
        if run.seed != 0 or not run.paths.final.exists() or not snapshot_path(run.paths.final).exists():
            continue
        kept = len(read_snapshot_steps(snapshot_path(run.paths.final)))
        if kept < MIN_SNAPSHOTS:
            # the study chose the snapshot interval, so its user has no option to change:
            # say so in the report and go on (the budgets are sized to keep enough)
            note = (f"no trajectory for {run.paths.run_name}: the {budget.name} budget kept "
                    f"{kept} weight snapshot(s) of its {budget.iterations(run.model)}, and a "
                    f"trajectory needs at least {MIN_SNAPSHOTS}")
            _say(config.progress, note)
            result.notes.append(note)
            continue
        _say(config.progress, f"trajectory of {run.paths.run_name} "
                              f"({budget.trajectory_resolution}x{budget.trajectory_resolution})")
        surface = Path(compute_trajectory(
            run.paths.final, TrajectoryConfig(resolution=budget.trajectory_resolution,
                                              subset=budget.trajectory_subset, device=config.device,
                                              precision=config.landscape_precision),
            output=out / "trajectories" / f"{run.paths.run_name}.h5", dataset=dataset,
            progress=config.progress))
        png = plot_dir / f"{surface.stem}_path.png"
        if not _newer(png, surface):
            plot_trajectory(surface, plot_dir)
        view = View(run.model, run.paths.run_name, surface, png)
        result.trajectories.append(view)
        by_model[run.model] = view
    depths = sorted({model_depth(m) for m in by_model if model_depth(m) is not None})
    for first, second in pairs():  # the families' pairings in the study (ResNet | PlainNet)
        for depth in depths:
            names = (f"{first.prefix}{depth}", f"{second.prefix}{depth}")
            pair = [by_model.get(n) for n in names]
            if all(pair):
                from depthscape.analysis.trajectory import plot_trajectory_pair

                labels = [model_info(n).display_name for n in names]
                png = plot_dir / f"{first.prefix}_vs_{second.prefix}_{depth}_path.png"
                if not (_newer(png, pair[0].data) and _newer(png, pair[1].data)):
                    plot_trajectory_pair([v.data for v in pair], png.with_suffix(""),
                                         titles=labels)
                result.trajectory_pairs.append((depth, png))
                result.trajectory_titles[png] = f"{labels[0]} (left) vs {labels[1]} (right)"


def _curvature(runs, landscapes, budget: Budget, dataset, config: StudyConfig, out: Path,
               result) -> None:
    """Curvature maps in each landscape's file, and all of them on one colour scale."""
    from depthscape.analysis.landscape.curvature import (
        CurvatureConfig,
        compute_curvature,
        plot_curvature,
        plot_curvature_grid,
    )
    from depthscape.study.report import View

    finals = {run.paths.run_name: run.paths.final for run in runs}
    curvature_config = CurvatureConfig(
        resolution=budget.curvature_resolution, split="train", subset=budget.curvature_subset,
        iterations=budget.curvature_iters, batch_size=min(budget.curvature_subset, 256),
        device=config.device)
    plot_dir = out / "plots" / "curvature"
    for landscape in landscapes:
        _say(config.progress, f"curvature map of {landscape.run_name} "
                              f"({budget.curvature_resolution}x{budget.curvature_resolution})")
        # the study owns its surface files: a map of other settings (an earlier version's,
        # another budget's) is recomputed, one with these settings kept or finished
        surface = Path(compute_curvature(landscape.surface, finals[landscape.run_name],
                                         curvature_config, dataset, progress=config.progress,
                                         overwrite="other-settings"))
        png = plot_dir / f"{surface.stem}_curvature.png"
        if not _newer(png, surface):
            plot_curvature(surface, plot_dir)
        result.curvature.append(View(landscape.model, landscape.run_name, surface, png))
    if result.curvature:
        png = plot_dir / "curvature_maps.png"
        if not all(_newer(png, v.data) for v in result.curvature):
            plot_curvature_grid([(v.model, v.data) for v in result.curvature], png.with_suffix(""))
        result.curvature_grid = png


def _density(runs, budget: Budget, dataset, config: StudyConfig, out: Path, result) -> None:
    """The eigenvalue density of each ResNet/PlainNet (seed 0) on the sharpness subset, and
    ResNet vs PlainNet on one axis at each depth."""
    from depthscape.analysis.curves import display_name
    from depthscape.analysis.sharpness import DensityConfig, measure_density
    from depthscape.analysis.spectrum import plot_densities
    from depthscape.core.models import model_depth, pairs

    sharp_config = _sharpness_config(budget, config)
    density_config = DensityConfig(runs=budget.density_runs, steps=budget.density_steps)
    by_model = {}
    for run in runs:
        # ResNets and PlainNets (a model of fixed depth, the CNN, has no pair to face)
        if run.seed != 0 or not run.paths.final.exists() or model_depth(run.model) is None:
            continue
        _say(config.progress, f"eigenvalue density of {run.paths.run_name} "
                              f"({budget.density_runs} x {budget.density_steps} Lanczos steps)")
        density = measure_density(run.paths.final, sharp_config, density_config, dataset,
                                  out / "sharpness" / f"{run.paths.run_name}.density.json",
                                  label=display_name(run.model))
        result.densities.append((run, density))
        by_model[run.model] = (run, density)
    plot_dir = out / "plots" / "density"
    for (first, second), depth in ((p, d) for p in pairs()
                                   for d in sorted({model_depth(m) for m in by_model})):
        pair = [by_model[m] for m in (f"{first.prefix}{depth}", f"{second.prefix}{depth}")
                if m in by_model]
        drawn = [(display_name(run.model), d) for run, d in pair if d.density]
        if len(pair) < 2 or not drawn:  # a figure of the pairing needs both of its models
            continue
        png = plot_dir / f"{first.prefix}_vs_{second.prefix}_{depth}_density.png"
        sources = [out / "sharpness" / f"{run.paths.run_name}.density.json" for run, _ in pair]
        if not all(_newer(png, source) for source in sources):
            plot_dir.mkdir(parents=True, exist_ok=True)
            plot_densities(drawn, png, title=f"Hessian eigenvalue density at depth {depth}")
        result.density_pairs.append((depth, png))


def _flatness(runs, budget: Budget, dataset, config: StudyConfig, out: Path, result) -> None:
    """K random 1-D slices through every finished minimum: the table, each run's band and
    both measures by depth with their error bars."""
    from depthscape.analysis.landscape.flatness import (
        FlatnessConfig,
        flatness_table,
        measure_run_flatness,
        plot_flatness_by_depth,
    )
    from depthscape.analysis.tables import write_table

    finished = [r for r in runs if r.paths.final.exists()]
    if not finished:
        return
    flat_config = FlatnessConfig(
        directions=budget.flatness_directions, points=budget.flatness_points, split="test",
        subset=budget.flatness_subset, batch_size=min(budget.flatness_subset or 1000, 1000),
        seed=0, device=config.device)
    _say(config.progress, f"flatness: {budget.flatness_directions} random 1-D slices of "
                          f"{budget.flatness_points} points per run")
    results = measure_run_flatness(out, out / "flatness", sorted({r.model for r in finished}),
                                   flat_config, {"dataset": dataset}, progress=config.progress)
    wanted = {(r.model, r.seed) for r in finished}
    result.flatness = [(run, f) for run, f in results if (run.model, run.seed) in wanted]
    if not result.flatness:
        return
    write_table(flatness_table(result.flatness), out / "flatness", "flatness")
    png = out / "plots" / "flatness" / "flatness_by_depth.png"
    sources = [out / "flatness" / f"{run.paths.run_name}.flatness.json"
               for run, _ in result.flatness]
    if not all(_newer(png, source) for source in sources):
        png.parent.mkdir(parents=True, exist_ok=True)
        plot_flatness_by_depth(result.flatness, png)
    result.flatness_figure = png


def describe_budgets() -> str:
    """One paragraph per budget with its numbers (for ``--help`` and the docs)."""
    lines = []
    for budget in BUDGETS.values():
        lines.append(f"{budget.name}: {budget.description}; ResNet/PlainNet "
                     f"{budget.iterations('resnet20')}, CNN {budget.iterations('cnn')}, "
                     f"train subset {budget.train_subset or 'all'}, landscape "
                     f"{budget.landscape_resolution}x{budget.landscape_resolution} on "
                     f"{budget.landscape_subset or 'all'} test images, density "
                     f"{budget.density_runs}x{budget.density_steps} Lanczos steps, flatness "
                     f"{budget.flatness_directions} slices x {budget.flatness_points} points")
    return "\n".join(lines)


#: The folders a study writes its own files into (runs' files have their own locks).
STUDY_FOLDERS = (".", "plots", "plots/landscapes", "plots/trajectories", "plots/curvature",
                 "plots/density", "plots/flatness", "tables", "tables/metrics", "landscapes",
                 "trajectories", "sharpness", "flatness")


def study_paths(out_dir: str | os.PathLike) -> dict[str, Path]:
    """Where a study's outputs lie under ``out_dir``."""
    out = Path(out_dir)
    return {"report_md": out / "report.md", "report_html": out / "report.html",
            "plots": out / "plots", "tables": out / "tables", "landscapes": out / "landscapes",
            "sharpness": out / "sharpness", "flatness": out / "flatness", "logs": out / "logs",
            "models": out / "models"}
