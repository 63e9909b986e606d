"""Training throughput: depthscape's loop vs the usual torchvision pipeline, on one device.

Baseline (the seed-style loop): a torchvision-style dataset that hands out PIL images,
``RandomCrop(32, 4)`` + ``RandomHorizontalFlip`` + ``ToTensor`` + x255 + ``Normalize`` per
image, a shuffling ``DataLoader`` (workers; ``pin_memory`` on CUDA), an eager NCHW fp32
model on the same device (``cudnn.benchmark`` on CUDA), SGD steps and ``loss.item()``
every step. Ours: ``depthscape.training.loop.train`` itself (uint8 data on the device,
whole-batch crop/flip, metrics read once per log row):

* on CUDA, the device's defaults (the captured step, bf16, channels-last), or what
  ``--precision``/``--no-cuda-graph``/``--no-channels-last`` ask for;
* on the CPU, in one run: NCHW fp32 (the CPU path before channels-last), channels-last
  fp32 (the CPU default) and channels-last bf16 where the CPU has native bf16.

How it is timed. Ours: one untimed warm-up run (cuDNN's autotuning, first kernel loads,
the capture), then one run of ``--iterations`` timed steps plus a log window before and
after them; the rate is read from the run's own CSV rows (``elapsed_s`` at whole log
windows, each read after the window's metrics came back from the device), so start-up,
capture and the final evaluation are outside it. The baseline: ``--baseline-iterations``
steps after 20 untimed ones, each ending in its ``loss.item()``. Every measurement starts
from the same process-wide settings (``cudnn.benchmark``, TF32): training changes them,
and they are put back before the next one.

Then the cost of the layer statistics (gradient flow, on by default): the device's default
variant with and without them, in ``--layer-stats-repeats`` interleaved pairs, the median
rate of each and the difference in percent.

Each figure is printed with the runtime that produced it (captured or eager, precision,
layout) on the same line. Exits 1 if the captured step was asked for (the CUDA default)
(or ``--cuda-graph`` given) and a run did not use it.

    python benchmarks/bench_train.py [--device cuda] [--models resnet20 resnet56 resnet110]
        [--iterations 500] [--window 100] [--baseline-iterations 200]
        [--data-dir data/cifar10-jpeg.tar.gz]
    python benchmarks/bench_train.py --device cpu --iterations 4 --window 2 --synthetic 512
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from depthscape.core.data import Dataset, Split, load_dataset  # noqa: E402
from depthscape.core.models import get_model  # noqa: E402
from depthscape.core.recipes import recipe_for  # noqa: E402
from depthscape.core.runtime import cpu_bf16_supported, cpu_description  # noqa: E402
from depthscape.training.loop import TrainConfig, train  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = next((p for p in (REPO / "data" / "cifar10-jpeg.tar.gz",
                                 REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz")
                     if p.exists()), REPO / "data" / "cifar10-jpeg.tar.gz")
BATCH = 128


# ---- the machine and its process-wide settings -----------------------------------------


def describe(device: torch.device) -> str:
    """The first line: the device, the CPU and its flags, the versions."""
    cpu = f"CPU {cpu_description()}, {torch.get_num_threads()} threads"
    if device.type == "cuda":
        return (f"cuda: {torch.cuda.get_device_name(device)}; torch {torch.__version__}, "
                f"CUDA {torch.version.cuda}; host {cpu}; batch {BATCH}")
    return f"cpu: {cpu}; torch {torch.__version__}; batch {BATCH}"


@dataclass(frozen=True)
class ProcessFlags:
    """The process-wide settings training changes: cuDNN's benchmark and determinism, TF32.

    Read as they are and written back as they were (through the API each was read with:
    PyTorch refuses to mix the ``fp32_precision`` settings and the legacy ``allow_tf32``)."""

    benchmark: bool
    deterministic: bool
    conv_precision: str | None  # cudnn.conv.fp32_precision where this PyTorch has it
    matmul_precision: str | None
    conv_tf32: bool | None  # the legacy flags elsewhere
    matmul_tf32: bool | None

    @classmethod
    def read(cls) -> ProcessFlags:
        conv = getattr(torch.backends.cudnn, "conv", None)
        if conv is not None and hasattr(conv, "fp32_precision"):
            return cls(torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
                       conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision, None, None)
        return cls(torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic, None, None,
                   torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)

    def restore(self) -> None:
        torch.backends.cudnn.benchmark = self.benchmark
        torch.backends.cudnn.deterministic = self.deterministic
        if self.conv_precision is not None:
            torch.backends.cudnn.conv.fp32_precision = self.conv_precision
            torch.backends.cuda.matmul.fp32_precision = self.matmul_precision
        else:
            torch.backends.cudnn.allow_tf32 = self.conv_tf32
            torch.backends.cuda.matmul.allow_tf32 = self.matmul_tf32


# ---- data ------------------------------------------------------------------------------


def load(data_dir: Path | None, synthetic: int | None) -> tuple[Dataset, str]:
    """The training data and what it is: real CIFAR-10, or random images of its shape."""
    if synthetic is None and data_dir and data_dir.exists():
        return load_dataset("cifar10", data_dir=data_dir), f"CIFAR-10 from {data_dir.name}"
    size = synthetic or 50_000
    g = torch.Generator().manual_seed(0)

    def split(n):
        return Split(torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8),
                     torch.randint(0, 10, (n,), generator=g))
    return (Dataset("cifar10", split(size), split(256), [str(i) for i in range(10)]),
            f"{size} random images of CIFAR-10's shape (no archive)")


# ---- the seed-style loop ---------------------------------------------------------------


def baseline(dataset: Dataset, iterations: int, workers: int, model_name: str = "resnet20",
             device: str = "cpu", warmup: int = 20) -> float:
    """Images/s of the DataLoader + PIL transforms loop on ``device`` over ``iterations``
    steps after ``warmup`` untimed ones (each step ends in ``loss.item()``)."""
    from PIL import Image
    from torchvision import transforms

    class PilCifar(torch.utils.data.Dataset):
        def __init__(self, split: Split, transform):
            self.images = split.images.permute(0, 2, 3, 1).numpy()  # HWC, like torchvision's
            self.labels = split.labels.tolist()
            self.transform = transform

        def __len__(self):
            return len(self.labels)

        def __getitem__(self, i):
            return self.transform(Image.fromarray(self.images[i])), self.labels[i]

    transform = transforms.Compose([
        transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
        transforms.ToTensor(), transforms.Lambda(lambda x: x * 255),
        transforms.Normalize([125, 123, 114], [1, 1, 1]),
    ])
    cuda = torch.device(device).type == "cuda"
    full = len(dataset.train) >= BATCH  # (a tiny dry-run set gives one smaller batch)
    loader = torch.utils.data.DataLoader(PilCifar(dataset.train, transform), batch_size=BATCH,
                                         shuffle=True, num_workers=workers, drop_last=full,
                                         persistent_workers=workers > 0, pin_memory=cuda)
    if cuda:
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    model = get_model(model_name).to(device)
    recipe = recipe_for(model_name)
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=0.9, weight_decay=1e-4)
    criterion = torch.nn.CrossEntropyLoss()
    model.train()
    total = warmup + iterations
    steps, images, start = 0, 0, None
    while steps < total:
        for x, y in loader:
            if steps == warmup:  # the previous step's loss.item() waited for the device
                start, images = time.perf_counter(), 0
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = criterion(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss.item()  # the usual per-step read of the loss for logging
            steps += 1
            images += len(y)
            if steps >= total:
                break
    return images / (time.perf_counter() - start)


# ---- depthscape's loop -----------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One way of running depthscape's loop (None: the device's default)."""

    label: str
    precision: str | None = None
    channels_last: bool | None = None
    cuda_graph: bool | None = None
    layer_stats: bool = True  # gradient flow recorded (depthscape train's default)


@dataclass(frozen=True)
class Measured:
    """One measured run of depthscape's loop: the rate and the runtime that produced it."""

    images_per_s: float
    steps: int
    windows: int
    runtime: dict

    @property
    def runtime_text(self) -> str:
        rt = self.runtime
        kind = "captured" if rt.get("cuda_graph") else "eager"
        layout = "channels-last" if rt.get("channels_last") else "NCHW"
        return f"{kind} {rt.get('precision', 'fp32')} {layout}"


def window_rate(rows: list[dict], batch: int = BATCH) -> tuple[float, int, int]:
    """Images/s over whole log windows: from the first row to the second-to-last one.

    The first window holds the first steps after start-up, the last one the final
    evaluation; what lies between is steps only. Returns (img/s, steps, windows)."""
    if len(rows) < 3:
        raise ValueError(f"need at least 3 log rows to time whole windows, got {len(rows)}")
    first, last = rows[0], rows[-2]
    steps = int(last["iteration"]) - int(first["iteration"])
    seconds = float(last["elapsed_s"]) - float(first["elapsed_s"])
    if steps <= 0 or seconds <= 0:
        raise ValueError(f"no time measured between rows {first} and {last}")
    return steps * batch / seconds, steps, len(rows) - 2


def ours(dataset: Dataset, iterations: int, window: int, model_name: str, device: str,
         variant: Variant, flags: ProcessFlags) -> Measured:
    """Images/s of depthscape.training.loop: one untimed warm-up run, then ``iterations``
    (rounded up to whole windows) timed steps between a first and a last log window."""
    small_test = replace(dataset, test=dataset.test.subset(256))
    windows = max(1, math.ceil(iterations / window))
    result = None
    for length in (window, window * (windows + 2)):  # the warm-up run, then the timed one
        recipe = replace(recipe_for(model_name), length=length, milestones=(), warmup_lr=None,
                         warmup_length=0, log_every=window)
        flags.restore()
        with tempfile.TemporaryDirectory() as out:
            result = train(TrainConfig(model=model_name, out_dir=out, recipe=recipe, progress=False,
                                       device=device, precision=variant.precision,
                                       channels_last=variant.channels_last,
                                       cuda_graph=variant.cuda_graph, log_every=window,
                                       layer_stats=variant.layer_stats,
                                       eval_every=10**9, checkpoint_every=10**9),
                           dataset=small_test)
            runtime = json.loads(result.paths.config.read_text())["runtime"]
    flags.restore()
    rate, steps, measured = window_rate(result.rows)
    return Measured(rate, steps, measured, runtime)


def layer_stats_cost(dataset: Dataset, iterations: int, window: int, model_name: str,
                     device: str, variant: Variant, flags: ProcessFlags,
                     repeats: int) -> tuple[float, float]:
    """Median images/s of ``variant`` with and without the layer statistics, measured in
    ``repeats`` interleaved pairs (on, off, on, off, ...: a machine that slows down in
    between slows both sides)."""
    rates: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(repeats):
        for on in (True, False):
            rates[on].append(ours(dataset, iterations, window, model_name, device,
                                  replace(variant, layer_stats=on), flags).images_per_s)
    return statistics.median(rates[True]), statistics.median(rates[False])


def variants(device: torch.device, args: argparse.Namespace) -> list[Variant]:
    """What to measure of depthscape's loop on ``device``."""
    if device.type == "cuda":
        return [Variant("depthscape", args.precision, args.channels_last, args.cuda_graph)]
    graph = args.cuda_graph  # ignored on the CPU (with a notice), and then reported as not used
    chosen = [Variant("depthscape NCHW fp32 (the CPU path before channels-last)", "fp32", False,
                      graph),
              Variant("depthscape channels-last fp32 (the CPU default)", "fp32", True, graph)]
    if cpu_bf16_supported():
        chosen.append(Variant("depthscape channels-last bf16", "bf16", True, graph))
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where both loops run (default: cuda if available)")
    parser.add_argument("--models", nargs="+", default=None,
                        help="ResNets/PlainNets (iteration recipes); default: resnet20 resnet56 "
                             "resnet110 on CUDA, resnet20 on the CPU")
    parser.add_argument("--iterations", type=int, default=None,
                        help="timed steps of depthscape's loop (default 500 on CUDA, 200 on the CPU)")
    parser.add_argument("--window", type=int, default=None,
                        help="steps per log window, the unit of timing (default 100; 50 on the CPU)")
    parser.add_argument("--baseline-iterations", type=int, default=None,
                        help="timed steps of the seed-style loop (default: --iterations)")
    parser.add_argument("--baseline-warmup", type=int, default=20,
                        help="untimed steps of the seed-style loop before its timed ones")
    parser.add_argument("--workers", type=int, default=None,
                        help="DataLoader workers of the baseline (default: 8 on CUDA, 2 on the CPU)")
    parser.add_argument("--precision", choices=("fp32", "tf32", "bf16"), default=None,
                        help="depthscape's precision on CUDA (default: the device's, bf16)")
    parser.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--layer-stats-repeats", type=int, default=3, metavar="N",
                        help="interleaved pairs with and without the layer statistics, on the "
                             "device's default variant (0: skip)")
    parser.add_argument("--synthetic", type=int, default=None, metavar="N",
                        help="train on N random images instead of the archive (quick checks)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    models = args.models or (["resnet20", "resnet56", "resnet110"] if cuda else ["resnet20"])
    iterations = args.iterations or (500 if cuda else 200)
    window = args.window or (100 if cuda else 50)
    baseline_iterations = args.baseline_iterations or iterations
    workers = args.workers if args.workers is not None else (8 if cuda else 2)
    flags = ProcessFlags.read()
    print(describe(device), flush=True)
    dataset, what = load(args.data_dir, args.synthetic)
    print(f"data: {what}; depthscape: 1 untimed warm-up run, then {iterations} timed steps in "
          f"windows of {window}; baseline: {baseline_iterations} timed steps", flush=True)
    graph_asked = args.cuda_graph is True or (cuda and args.cuda_graph is None)
    fell_back = []
    for name in models:
        flags.restore()
        base = baseline(dataset, baseline_iterations, workers, name, args.device,
                        args.baseline_warmup)
        flags.restore()
        print(f"{name} | seed-style DataLoader loop (PIL transforms, {workers} workers, eager NCHW "
              f"fp32): {base:9.1f} img/s", flush=True)
        for variant in variants(device, args):
            fast = ours(dataset, iterations, window, name, args.device, variant, flags)
            print(f"{name} | {variant.label} [{fast.runtime_text}]: {fast.images_per_s:9.1f} img/s, "
                  f"{fast.images_per_s / base:.2f}x the DataLoader loop ({fast.steps} steps in "
                  f"{fast.windows} windows)", flush=True)
            if graph_asked and not fast.runtime.get("cuda_graph") and name not in fell_back:
                fell_back.append(name)
        if args.layer_stats_repeats > 0:
            default = variants(device, args)[-1 if cuda else 1]  # the device's default path
            on, off = layer_stats_cost(dataset, iterations, window, name, args.device, default,
                                       flags, args.layer_stats_repeats)
            print(f"{name} : layer statistics on / off ({default.label}): {on:9.1f} / "
                  f"{off:9.1f} img/s, cost {100 * (1 - on / off):+.1f} % (median of "
                  f"{args.layer_stats_repeats} interleaved pairs)", flush=True)
    if fell_back:
        print(f"FAILED: the captured step was asked for and not used for {', '.join(fell_back)} "
              "(see the notice above)", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
