"""Grid points per second: depthscape's landscape evaluator vs the original tool's way.

    python benchmarks/bench_landscape.py [--models resnet20 resnet56] [--images 1000]
        [--points 4] [--data PATH] [--device cpu]

For each model, on the same 1,000 test images (real CIFAR-10 if the JPEG archive is
found, else synthetic images), the same two filter-normalised directions and the same
grid points, one after the other on this machine in one run:

* baseline, written the way tomgoldstein/loss-landscape evaluates a point: copy
  ``theta + a d1 + b d2`` into the model's parameters, iterate a ``DataLoader`` (batch 128,
  per-sample normalisation, as its ``--batch_size`` default) over the split, eager model
  with BatchNorm, one ``.item()`` per batch;
* depthscape: :class:`depthscape.landscape.evaluator.PointEvaluator` (data on the device
  as one tensor, batches of 1,000, inference mode, BatchNorm folded, channels-last on CPU).

Prints both rates, their ratio and the largest absolute difference of the losses.
Untrained weights with random BatchNorm statistics are used where no checkpoint is given:
the speed does not depend on the values, and the loss comparison is harder than at a
trained minimum (larger losses).
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

from depthscape.data import PIXEL_MEANS_255, Preprocess, Split, load_dataset  # noqa: E402
from depthscape.landscape.directions import random_directions  # noqa: E402
from depthscape.landscape.evaluator import PointEvaluator  # noqa: E402
from depthscape.models import get_model  # noqa: E402

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


def randomize_batchnorm(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=generator) * 0.2 - 0.1)


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
    parser.add_argument("--points", type=int, default=4, help="grid points timed per method")
    parser.add_argument("--data", default=None, help="CIFAR-10 JPEG archive (default ../shared/data)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    split, source = load_split(args.images, args.data)
    preprocess = Preprocess(scale=255.0, mean=PIXEL_MEANS_255["cifar10"], augment=False)
    print(f"{len(split)} {source}; device {device}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    coords = [(-1.0 + 2.0 * k / max(1, args.points - 1), 0.5 - 0.25 * k) for k in range(args.points)]
    for name in args.models:
        torch.manual_seed(0)
        model = get_model(name).eval()
        randomize_batchnorm(model)
        directions = random_directions(model, 2, seed=0)
        base = {k: v.detach().clone().to(device) for k, v in model.named_parameters()}

        fast = PointEvaluator(model, directions, split, preprocess, args.batch_size, device,
                              compile=args.compile)
        fast.evaluate(coords[0])  # warm-up (and compilation)
        start = time.perf_counter()
        fast_losses = [fast.evaluate(c)[0] for c in coords]
        fast_time = time.perf_counter() - start

        eager = get_model(name).to(device)
        eager.load_state_dict(model.state_dict())
        loader = DataLoader(PerSampleDataset(split, preprocess), batch_size=128, shuffle=False,
                            num_workers=0)
        baseline_point(eager, base, directions, loader, coords[0], device)  # warm-up
        start = time.perf_counter()
        base_losses = [baseline_point(eager, base, directions, loader, c, device)[0] for c in coords]
        base_time = time.perf_counter() - start

        diff = max(abs(a - b) for a, b in zip(fast_losses, base_losses))
        base_rate, fast_rate = len(coords) / base_time, len(coords) / fast_time
        print(f"{name}: baseline {base_rate:.3f} points/s, depthscape {fast_rate:.3f} points/s, "
              f"ratio {fast_rate / base_rate:.2f}x, max |loss difference| {diff:.2e} "
              f"({len(fast.folded_pairs)} BatchNorms folded)")
        if diff >= 1e-4:
            print(f"{name}: loss difference {diff:.2e} is not below 1e-4", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
