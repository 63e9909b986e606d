"""What each fast-path switch buys on this machine: training img/s and landscape points/s.

    python benchmarks/bench_switches.py [--device cuda] [--model resnet20] [--steps 40]
        [--points 6] [--skip compile] [--no-landscape]

One run, one process, one device (the best found, or ``--device``): the training step of
``depthscape train`` itself (:func:`depthscape.training.step.make_train_step`; device-resident
uint8 data, batched crop+flip on the device, SGD with the recipe's settings, metrics summed
on the device) is timed with each switch alone
and with all together, against the plain eager path; then the landscape evaluator
(:class:`depthscape.analysis.landscape.points.PointEvaluator`) the same way. Prints img/s (or
points/s) and the ratio to the plain path for each.

On CUDA the variants are exactly what training uses: ``plain`` has everything off,
``cudnn.benchmark`` and ``fused optimizer`` are on in every real run, ``--precision bf16``,
``--channels-last`` and ``--compile`` are the optional switches. Elsewhere (CPU, MPS)
``depthscape train`` ignores every switch, so the rows there are marked ``forced``: they
show what the switch would do if it were allowed, not what training does.

Synthetic CIFAR-sized images are used: speed does not depend on pixel values.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from depthscape.core.data import Preprocess, Split  # noqa: E402
from depthscape.core.datasets import dataset_info  # noqa: E402
from depthscape.core.device import get_device  # noqa: E402
from depthscape.core.models import canonical_name, get_model  # noqa: E402
from depthscape.core.recipes import recipe_for  # noqa: E402
from depthscape.training.fastpath import FastPath  # noqa: E402
from depthscape.training.loop import BatchSchedule, make_optimizer  # noqa: E402
from depthscape.training.step import (  # noqa: E402
    MetricSums,
    make_loss,
    make_train_step,
    set_learning_rate,
)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def variants(device: torch.device, skip: set[str]) -> list[tuple[str, FastPath]]:
    """(label, fast path) pairs: plain first, then each switch alone, then all together."""
    kind = device.type
    plain = FastPath(device_type=kind)
    on_cuda = kind == "cuda"
    rows = [("plain eager", plain)]
    if on_cuda:
        rows += [("cudnn.benchmark", replace(plain, cudnn_benchmark=True)),
                 ("fused optimizer", replace(plain, fused_optimizer=True))]
    forced = "" if on_cuda else " (forced)"
    rows += [(f"--channels-last{forced}", replace(plain, channels_last=True)),
             (f"--precision bf16{forced}", replace(plain, precision="bf16"))]
    compiler = on_cuda or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if "compile" not in skip and compiler:
        rows.append((f"--compile{forced}", replace(plain, compile=True)))
    base = replace(plain, cudnn_benchmark=on_cuda, fused_optimizer=on_cuda)
    rows.append((f"all switches{forced}", replace(base, channels_last=True, precision="bf16",
                                                  compile="compile" not in skip and bool(compiler))))
    return [(label, fast) for label, fast in rows if label.split()[0].lstrip("-") not in skip]


def time_training(model_name: str, fast: FastPath, device: torch.device, images: torch.Tensor,
                  labels: torch.Tensor, batch: int, steps: int, warmup: int) -> float:
    """Images per second of the training step under ``fast`` (after ``warmup`` steps)."""
    torch.backends.cudnn.benchmark = fast.cudnn_benchmark
    torch.manual_seed(0)
    recipe = replace(recipe_for(model_name), batch_size=batch)
    model = get_model(model_name, in_channels=3, num_classes=10).to(device)
    fast.prepare_model(model)
    optimizer = make_optimizer(recipe, model, fused=fast.fused_optimizer)
    net = fast.compiled(model)
    preprocess = Preprocess(scale=255.0, mean=dataset_info("cifar10").pixel_mean_255, augment=True)
    schedule = BatchSchedule(len(labels), batch, seed=0, stream=True, device=device)
    generator = torch.Generator(device=device).manual_seed(1)
    sums = MetricSums.on(device)
    step = make_train_step(net, optimizer, make_loss(), sums, fast.autocast)  # the real step
    model.train()
    started = 0.0
    for iteration in range(warmup + steps):
        if iteration == warmup:
            synchronize(device)
            started = time.perf_counter()
        set_learning_rate(optimizer, recipe.lr_at(iteration))
        index = schedule.indices(iteration)
        step(fast.prepare_input(preprocess.train_batch(images[index], generator)), labels[index])
    float(sums.loss)  # the one read per log row
    synchronize(device)
    return steps * batch / (time.perf_counter() - started)


def time_landscape(model_name: str, fast: FastPath, device: torch.device, split: Split,
                   points: int, warmup: int, per_call: int = 1) -> float | None:
    """Grid points per second of the landscape evaluator under ``fast`` (None: no evaluator).

    ``per_call > 1``: that many points per batched call (:mod:`depthscape.analysis.landscape.batched`).
    """
    try:
        from depthscape.analysis.landscape.batched import evaluate_points
        from depthscape.analysis.landscape.directions import random_directions
        from depthscape.analysis.landscape.points import PointEvaluator
    except ImportError:
        return None
    torch.backends.cudnn.benchmark = fast.cudnn_benchmark
    torch.manual_seed(0)
    model = get_model(model_name, in_channels=3, num_classes=10).eval()
    directions = random_directions(model, 2, 0, "filter")
    preprocess = Preprocess(scale=255.0, mean=dataset_info("cifar10").pixel_mean_255, augment=False)
    evaluator = PointEvaluator(model, directions, split, preprocess, batch_size=1000,
                               device=device, compile=fast.compile,
                               channels_last=fast.channels_last)
    calls = warmup + max(1, points // per_call)
    grid = torch.linspace(-1, 1, calls * per_call).view(calls, per_call).tolist()
    started = 0.0
    for i, chunk in enumerate(grid):
        if i == warmup:
            synchronize(device)
            started = time.perf_counter()
        with fast.autocast():
            if per_call == 1:
                evaluator.evaluate((chunk[0], -chunk[0]))
            else:
                evaluate_points(evaluator, [(a, -a) for a in chunk]).tolist()
    synchronize(device)
    return (calls - warmup) * per_call / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: best)")
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--batch", type=int, default=128, help="training batch (recipe: 128)")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed training steps per variant (default 50 on CUDA, 6 elsewhere)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed steps first (default 10 on CUDA, 2 elsewhere; compile needs some)")
    parser.add_argument("--points", type=int, default=None,
                        help="timed landscape points per variant (default 20 on CUDA, 2 elsewhere)")
    parser.add_argument("--eval-images", type=int, default=None,
                        help="images per landscape point (default 10000 on CUDA, 1000 elsewhere)")
    parser.add_argument("--skip", nargs="*", default=None,
                        help="variants to leave out, e.g. compile amp channels-last "
                             "(default: compile off CUDA, where its warm-up takes minutes)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="measure every variant this many times, interleaved, and keep the "
                             "best (evens out other load on the machine; default 2)")
    parser.add_argument("--points-per-call", type=int, default=4,
                        help="grid points per batched landscape call in the vmap rows (default 4)")
    parser.add_argument("--no-landscape", action="store_true")
    args = parser.parse_args(argv)

    device = get_device(args.device)
    cuda = device.type == "cuda"
    steps = args.steps or (50 if cuda else 4)
    warmup = args.warmup if args.warmup is not None else (10 if cuda else 1)
    points = args.points or (20 if cuda else 2)
    eval_images = args.eval_images or (10_000 if cuda else 1000)
    model_name = canonical_name(args.model)
    name = torch.cuda.get_device_name(device) if cuda else device.type
    print(f"device: {name}; torch {torch.__version__}; {torch.get_num_threads()} CPU threads; "
          f"model {model_name}")
    if not cuda:
        print(f"note: on {device.type} `depthscape train` ignores every switch; rows marked "
              "(forced) show what a switch would do if it were allowed")

    generator = torch.Generator().manual_seed(0)
    train_images = torch.randint(0, 256, (max(4 * args.batch, 2048), 3, 32, 32), dtype=torch.uint8,
                                 generator=generator).to(device)
    train_labels = torch.randint(0, 10, (len(train_images),), generator=generator).to(device)
    skip = {s.lstrip("-") for s in (args.skip if args.skip is not None else
                                   ([] if cuda else ["compile"]))}
    rows = variants(device, skip)

    print(f"\ntraining, batch {args.batch}, {steps} timed steps after {warmup} warm-up, "
          f"best of {args.rounds}:")
    best = best_of(args.rounds, rows, lambda fast, label: time_training(
        model_name, fast, device, train_images, train_labels, args.batch, steps, warmup))
    report(rows, best, "img/s", 1)

    if args.no_landscape:
        return 0
    split = Split(torch.randint(0, 256, (eval_images, 3, 32, 32), dtype=torch.uint8, generator=generator),
                  torch.randint(0, 10, (eval_images,), generator=generator))
    print(f"\nlandscape evaluation, {eval_images} images per point, {points} timed points "
          f"after {warmup} warm-up (BatchNorm folded):")
    # no optimizer here; cudnn.benchmark is part of every CUDA row
    rows = [(label, replace(fast, cudnn_benchmark=cuda)) for label, fast in rows
            if not label.startswith(("fused", "cudnn"))]
    k = args.points_per_call
    if k > 1 and "vmap" not in skip:
        rows += [(f"{k} points/call, plain", rows[0][1]),
                 (f"{k} points/call, all", rows[-1][1])]
    best = best_of(args.rounds, rows, lambda fast, label: time_landscape(
        model_name, fast, device, split, max(points, k), warmup,
        per_call=k if "points/call" in label else 1))
    report(rows, best, "points/s", 2)
    return 0


def best_of(rounds: int, rows: list[tuple[str, FastPath]], measure) -> dict[str, float | str | None]:
    """The highest rate of each variant over ``rounds`` interleaved rounds (or its error)."""
    best: dict[str, float | str | None] = {}
    for _ in range(max(1, rounds)):
        for label, fast in rows:
            if isinstance(best.get(label), str):
                continue
            try:
                rate = measure(fast, label)
            except Exception as error:  # noqa: BLE001 - a switch this machine cannot run
                best[label] = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:100]}"
                continue
            if rate is not None:
                best[label] = max(rate, best.get(label) or 0.0)
            else:
                best.setdefault(label, None)
    return best


def report(rows, best, unit: str, digits: int) -> None:
    base = best.get(rows[0][0])
    for label, _ in rows:
        rate = best.get(label)
        if rate is None:
            print(f"  {label:<28} (not available in this checkout)")
        elif isinstance(rate, str):
            print(f"  {label:<28} {rate}")
        else:
            ratio = f"x{rate / base:.2f}" if isinstance(base, float) else ""
            print(f"  {label:<28} {rate:9.{digits}f} {unit:<9} {ratio}")


if __name__ == "__main__":
    raise SystemExit(main())
