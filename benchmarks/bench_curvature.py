"""Curvature-map points per second, and one point's cost in forward-pass equivalents.

    python benchmarks/bench_curvature.py [--models resnet20 resnet56] [--images 32]
        [--iterations 6] [--points 2] [--data PATH] [--device cpu] [--threads N]

For each model, on the same images (real CIFAR-10 training images if the JPEG archive is
found, else synthetic ones) and the same two filter-normalised directions, in one run on
this machine:

* one forward pass of the batch (eval mode, with gradients enabled as the Hessian needs,
  the median of a few), the unit of cost;
* ``--points`` curvature points as ``depthscape landscape --curvature`` computes them
  (:func:`depthscape.analysis.landscape.curvature.curvature_at`: ``--iterations`` Lanczos
  steps, each one Hessian-vector product, with ``tol=0`` so every point does them all).

Prints points per second, the cost of one point and of one Hessian-vector product in
forward-pass equivalents, and the eigenvalue extremes found (a sanity check). The speed
does not depend on the weights, so seeded initial weights are used.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from depthscape.analysis.landscape.curvature import CurvatureConfig, curvature_at  # noqa: E402
from depthscape.analysis.landscape.directions import random_directions  # noqa: E402
from depthscape.core.data import Preprocess, load_dataset  # noqa: E402
from depthscape.core.datasets import dataset_info  # noqa: E402
from depthscape.core.models import get_model  # noqa: E402

REAL_CIFAR10 = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"


def _images(count: int, data: str | None):
    path = Path(data) if data else REAL_CIFAR10
    if path.exists():
        split = load_dataset("cifar10", str(path), None).train.subset(count, 0)
        return split.images, split.labels, f"real CIFAR-10 ({path.name})"
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, 3, 32, 32), generator=generator, dtype=torch.uint8)
    return images, torch.randint(0, 10, (count,), generator=generator), "synthetic images"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet20", "resnet56", "resnet110"])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--points", type=int, default=2)
    parser.add_argument("--data", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    images, labels, source = _images(args.images, args.data)
    preprocess = Preprocess(scale=255.0, mean=dataset_info("cifar10").pixel_mean_255, augment=False)
    inputs, labels = preprocess.normalize(images.to(device)), labels.to(device)
    print(f"{source}, {args.images} images, {args.iterations} Lanczos steps per point, "
          f"{torch.get_num_threads()} thread(s), device {device}")
    config = CurvatureConfig(iterations=args.iterations, tol=0.0, batch_size=args.images)
    for name in args.models:
        torch.manual_seed(0)
        model = get_model(name).to(device).eval()
        directions = random_directions(model, 2, seed=0)
        base = {k: v.detach().clone() for k, v in model.state_dict().items()}
        forwards = []
        for _ in range(5):  # the unit: one forward pass of the same batch, as the HVP's
            start = time.perf_counter()
            F.cross_entropy(model(inputs), labels).item()
            forwards.append(time.perf_counter() - start)
        forward = statistics.median(forwards[1:])
        curvature_at(model, base, directions, (0.0, 0.0), inputs, labels,
                     CurvatureConfig(iterations=2, tol=0.0, batch_size=args.images))  # warm-up
        start = time.perf_counter()
        for k in range(args.points):
            found = curvature_at(model, base, directions, (0.1 * k, -0.1 * k), inputs, labels, config)
        per_point = (time.perf_counter() - start) / args.points
        print(f"{name}: {1 / per_point:.3f} points/s ({per_point:.2f} s/point); one forward "
              f"{forward * 1000:.1f} ms; one point = {per_point / forward:.0f} forward passes "
              f"({per_point / forward / found.iterations:.1f} per Hessian-vector product); "
              f"lambda_max {found.largest:.3g}, lambda_min {found.smallest:.3g}")


if __name__ == "__main__":
    main()
