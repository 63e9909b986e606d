"""Grid points per second: depthscape's landscape evaluator vs the original tool's way.

    python benchmarks/bench_landscape.py [--models resnet20 resnet56] [--images 1000]
        [--points 4] [--data PATH] [--device cpu] [--precision fp32|tf32|bf16]

For each model, on the same 1,000 test images (real CIFAR-10 if the JPEG archive is
found, else synthetic images), the same two filter-normalised directions and the same
grid points, one after the other on this machine in one run:

* baseline, written the way tomgoldstein/loss-landscape evaluates a point: copy
  ``theta + a d1 + b d2`` into the model's parameters, iterate a ``DataLoader`` (batch 128,
  per-sample normalisation, as its ``--batch_size`` default) over the split, eager model
  with BatchNorm, one ``.item()`` per batch;
* depthscape: :class:`depthscape.analysis.landscape.points.PointEvaluator` as
  ``depthscape landscape`` runs it (data on the device as one tensor, inference mode,
  BatchNorm folded, channels-last and cache-sized batches on the CPU, one point per CPU
  thread through :class:`~depthscape.analysis.landscape.points.PointPool`).

Prints each rate, its ratio to the baseline and the largest absolute difference of the
losses. The baseline always computes exact fp32 (TF32 off). On the CPU one run times
depthscape's evaluator in three variants: NCHW fp32 (the layout before channels-last),
channels-last fp32 (what ``depthscape landscape`` runs) and channels-last bf16 (where the
CPU has native bf16); ``--precision`` picks one variant instead (on CUDA: fp32, tf32 or
bf16). fp32 variants must stay within 1e-4 of the baseline; bf16/tf32 print their
difference. The first line names the CPU and its bf16 flags.
The weights are a trained run's (``--runs DIR``, points over [-1, 1]^2) or else the seeded
initial ones with BatchNorm statistics measured on the images (points over [-0.3, 0.3]^2,
where the losses stay moderate). The speed does not depend on the values.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from depthscape.analysis.landscape.directions import random_directions  # noqa: E402
from depthscape.analysis.landscape.points import PointEvaluator, PointPool, full_float32  # noqa: E402
from depthscape.core.data import Preprocess, Split, load_dataset  # noqa: E402
from depthscape.core.datasets import dataset_info  # noqa: E402
from depthscape.core.models import get_model  # noqa: E402
from depthscape.core.runs import run_paths  # noqa: E402
from depthscape.core.runtime import PRECISIONS, cpu_bf16_supported, cpu_description  # noqa: E402
from depthscape.core.trained import load_trained_run  # noqa: E402

REAL_CIFAR10 = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"


class PerSampleDataset(TorchDataset):
    """Images normalised one at a time in ``__getitem__``, as a torchvision transform does."""

    def __init__(self, split: Split, preprocess: Preprocess):
        self.split, self.preprocess = split, preprocess

    def __len__(self):
        return len(self.split)

    def __getitem__(self, index):
        image = self.split.images[index:index + 1]
        return self.preprocess.normalize(image)[0], self.split.labels[index]


def baseline_point(model, base, directions, loader, coords, device):
    """One grid point the original tool's way (set_weights + eval_loss)."""
    with torch.no_grad():
        for (name, parameter) in model.named_parameters():
            change = directions[0][name] * coords[0] + directions[1][name] * coords[1]
            parameter.data = base[name] + change.to(device)
    model.eval()
    total_loss, correct, total = 0.0, 0, 0
    with torch.no_grad():
        for inputs, targets in loader:
            inputs, targets = inputs.to(device), targets.to(device)
            outputs = model(inputs)
            loss = F.cross_entropy(outputs, targets)
            total_loss += loss.item() * inputs.size(0)
            correct += outputs.max(1)[1].eq(targets).sum().item()
            total += inputs.size(0)
    return total_loss / total, 100.0 * correct / total


def calibrate_batchnorm(model, split: Split, preprocess: Preprocess) -> None:
    """Set BatchNorm's running statistics to the data's (as training would), so the losses
    are of a trained network's size rather than the huge ones of untouched statistics."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a plain average over the batches below
    model.train()
    with torch.no_grad():
        for start in range(0, len(split), 250):
            model(preprocess.normalize(split.images[start:start + 250]))
    model.eval()


def load_split(images: int, data: str | None) -> tuple[Split, str]:
    path = Path(data) if data else REAL_CIFAR10
    if path.exists():
        dataset = load_dataset("cifar10", data_dir=path)
        return dataset.test.subset(images, seed=0), f"real CIFAR-10 test images ({path.name})"
    generator = torch.Generator().manual_seed(0)
    split = Split(torch.randint(0, 256, (images, 3, 32, 32), dtype=torch.uint8, generator=generator),
                  torch.randint(0, 10, (images,), generator=generator))
    return split, "synthetic images (CIFAR-10 archive not found)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet20", "resnet56"])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--points", type=int, default=6, help="grid points timed per method")
    parser.add_argument("--data", default=None, help="CIFAR-10 JPEG archive (default ../shared/data)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="one variant of depthscape's arithmetic (default: on the CPU NCHW "
                             "fp32, channels-last fp32 and bf16; on CUDA fp32); the baseline is "
                             "always exact fp32")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--compile", action="store_true", help="torch.compile the folded network")
    parser.add_argument("--workers", type=int, default=None,
                        help="points evaluated at once (default: one per CPU thread)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for both methods (default: torch's, here one per core)")
    parser.add_argument("--runs", default=None,
                        help="output root of trained runs (models/resnet-20_cifar10.pth, ...) "
                             "to use their weights; default: initial weights")
    parser.add_argument("--verbose", action="store_true", help="print every point's losses")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    split, source = load_split(args.images, args.data)
    preprocess = Preprocess(scale=255.0, mean=dataset_info("cifar10").pixel_mean_255, augment=False)
    print(f"CPU {cpu_description()}; device {device}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {len(split)} {source}")
    if args.precision is not None:
        variants = [(args.precision, None, args.precision)]
    elif device.type == "cpu":
        variants = [("NCHW fp32", False, "fp32"), ("channels-last fp32", True, "fp32")]
        variants += [("channels-last bf16", True, "bf16")] if cpu_bf16_supported() else []
    else:
        variants = [("fp32", None, "fp32")]
    for name in args.models:
        final = run_paths(args.runs, name).final if args.runs else None
        if final is not None and final.exists():
            model = load_trained_run(final).model
            span, origin = 1.0, f"trained weights {final}"
        else:
            torch.manual_seed(0)
            model = get_model(name).eval()
            calibrate_batchnorm(model, split, preprocess)
            # Untrained weights: far from the origin the loss reaches the thousands, where
            # float32 itself differs by more than 1e-4; stay where losses are moderate.
            span, origin = 0.3, "initial weights, BatchNorm statistics from the images"
        coords = [(span * (-1.0 + 2.0 * k / max(1, args.points - 1)), span * (0.5 - 0.3 * k))
                  for k in range(args.points)]
        print(f"{name}: {origin}; points over [-{span}, {span}]^2")
        directions = random_directions(model, 2, seed=0)
        base = {k: v.detach().clone().to(device) for k, v in model.named_parameters()}

        workers = args.workers or (torch.get_num_threads() if device.type == "cpu" else 1)
        timed = []  # (label, evaluator, losses, seconds)
        for label, channels_last, precision in variants:
            fast = PointEvaluator(model, directions, split, preprocess, args.batch_size, device,
                                  compile=args.compile, channels_last=channels_last,
                                  precision=precision)
            with PointPool(fast, workers) as pool:
                pool.evaluate(coords[:workers])  # warm-up (and compilation)
                start = time.perf_counter()
                losses = [value[0] for k in range(0, len(coords), workers)
                          for value in pool.evaluate(coords[k:k + workers])]
                timed.append((label, fast, losses, time.perf_counter() - start))

        eager = get_model(name).to(device)
        eager.load_state_dict(model.state_dict())
        loader = DataLoader(PerSampleDataset(split, preprocess), batch_size=128, shuffle=False,
                            num_workers=0)
        with full_float32():  # the exact reference: no TF32 (PyTorch's default for convolutions)
            baseline_point(eager, base, directions, loader, coords[0], device)  # warm-up
            start = time.perf_counter()
            base_losses = [baseline_point(eager, base, directions, loader, c, device)[0] for c in coords]
            base_time = time.perf_counter() - start

        base_rate = len(coords) / base_time
        print(f"{name}: baseline (the original tool's way) {base_rate:.3f} points/s")
        failed = False
        for label, fast, losses, seconds in timed:
            diff = max(abs(a - b) for a, b in zip(losses, base_losses))
            if args.verbose:
                for c, a, b in zip(coords, losses, base_losses):
                    print(f"  {label} {c}: depthscape {a:.8f} baseline {b:.8f} diff {a - b:.2e}")
            rate = len(coords) / seconds
            print(f"{name}: depthscape {label}: {rate:.3f} points/s, ratio {rate / base_rate:.2f}x, "
                  f"max |loss difference| {diff:.2e} (precision {fast.precision.name}, "
                  f"{len(fast.folded_pairs)} BatchNorms folded, {workers} workers)")
            if diff >= 1e-4 and fast.precision.is_default:
                print(f"{name}: {label} loss difference {diff:.2e} is not below 1e-4",
                      file=sys.stderr)
                failed = True
        if failed:
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
