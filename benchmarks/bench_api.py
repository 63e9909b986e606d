"""The Python API's path against the CLI's on the same model and data: is the API as fast?

    python benchmarks/bench_api.py [--model resnet20] [--images 1000] [--resolution 3]
        [--repeats 3] [--device cpu] [--size 32]

One depthscape checkpoint (the model's seeded initial weights, BatchNorm statistics
measured on the images) and one ImageFolder of synthetic CIFAR-shaped images are written
to a temporary folder; then, after one untimed warm-up call of each, the same loss
surface (``resolution`` x ``resolution`` points over [-0.3, 0.3]^2, the same seed, batch
size and device) is computed ``repeats`` times by each path, alternately:

* CLI: ``depthscape landscape CHECKPOINT --dataset FOLDER`` in this process
  (``depthscape.cli.main``): the checkpoint and the decoded data read from disk, the
  surface written to an HDF5 file;
* API: ``ds.loss_surface(run.model, (inputs, labels))`` after ``ds.load_run(CHECKPOINT)``,
  the inputs normalised as the run's preprocessing does, the surface written to an HDF5
  file too (``output=``).

Both run :func:`depthscape.analysis.landscape.surface.fill_surface` (the same evaluator,
BatchNorm folding, workers). Prints on its first line the CPU, then per path the best of
the repeats, the speed ratio API/CLI (``CLI time / API time``; >= 0.95: the API is as fast)
and the largest difference of the two surfaces' losses (0: the same values).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import depthscape as ds  # noqa: E402
from depthscape.cli import main as cli_main  # noqa: E402
from depthscape.core.checkpoint import save_checkpoint  # noqa: E402
from depthscape.core.data import Preprocess  # noqa: E402
from depthscape.core.datasets import dataset_info  # noqa: E402
from depthscape.core.models import canonical_name, get_model  # noqa: E402
from depthscape.core.runtime import cpu_description  # noqa: E402

CLASSES = 10
SPAN = 0.3


def describe(device: torch.device) -> str:
    """The first line: the CPU (and GPU), the threads and versions."""
    cpu = f"CPU {cpu_description()}, {torch.get_num_threads()} threads"
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}; host {cpu}; torch {torch.__version__}"
    return f"cpu: {cpu}; torch {torch.__version__}"


def write_images(root: Path, count: int, size: int, seed: int = 0) -> Path:
    """About ``count`` synthetic test images (a multiple of the classes; and a few training
    ones) as an ImageFolder of PNGs, each image a random colour plus noise; returns root."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, per_class in (("train", 2), ("test", -(-count // CLASSES))):
        for k in range(CLASSES):
            folder = root / split / f"class{k}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                colour = rng.uniform(30, 220, 3)
                pixels = np.clip(rng.normal(colour, 40, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:05d}.png")
    return root


def write_run(path: Path, name: str, images: torch.Tensor, preprocess: Preprocess) -> Path:
    """A depthscape checkpoint of ``name`` at its seeded initial weights, BatchNorm
    statistics measured on ``images``."""
    torch.manual_seed(0)
    model = get_model(name, in_channels=3, num_classes=CLASSES)
    model.train()
    with torch.no_grad():
        model(preprocess.normalize(images[:256]))
    save_checkpoint(path, {
        "model": name, "model_kwargs": {"in_channels": 3, "num_classes": CLASSES},
        "config": {"model": name,
                   "preprocess": {"scale": preprocess.scale, "mean": list(preprocess.mean),
                                  "augment": False, "crop_padding": 4},
                   "train": {"dataset": None, "data_dir": None, "cache_dir": None, "seed": 0}},
        "state_dict": model.eval().state_dict()})
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--size", type=int, default=32, help="image side (CIFAR: 32)")
    parser.add_argument("--resolution", type=int, default=3, help="points per axis")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per path")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=None,
                        help="points evaluated at once (default: one per CPU thread)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    name = canonical_name(args.model)
    print(describe(device), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_api_") as tmp:
        root = Path(tmp)
        folder = write_images(root / "images", args.images, args.size)
        cache = root / "cache"
        from depthscape.core.data import load_dataset

        test = load_dataset(str(folder), cache_dir=cache).test  # decoded once, then cached
        preprocess = Preprocess(scale=255.0, mean=dataset_info("cifar10").pixel_mean_255)
        checkpoint = write_run(root / "models" / f"{name}.pth", name, test.images, preprocess)
        grid = ["--resolution", str(args.resolution), "--xrange", str(-SPAN), str(SPAN),
                "--yrange", str(-SPAN), str(SPAN), "--batch-size", str(args.batch_size),
                "--device", args.device] + (["--workers", str(args.workers)] if args.workers else [])

        def cli(index: int) -> Path:
            out = root / f"cli{index}.h5"
            with contextlib.redirect_stdout(io.StringIO()):  # its "surface: FILE" line
                code = cli_main(["landscape", str(checkpoint), "--dataset", str(folder), "--cache-dir",
                                 str(cache), *grid, "--output", str(out), "--no-plots",
                                 "--no-progress"])
            if code != 0:
                raise SystemExit(f"the CLI failed (exit {code})")
            return out

        def api(index: int) -> Path:
            run = ds.load_run(checkpoint)
            out = root / f"api{index}.h5"
            ds.loss_surface(run.model, (run.preprocess.normalize(test.images), test.labels),
                            resolution=args.resolution, span=(-SPAN, SPAN),
                            batch_size=args.batch_size, device=args.device, output=out,
                            progress=False)
            return out

        times = {"CLI": [], "API": []}
        files = {"CLI": cli(0), "API": api(0)}  # warm-up: caches, threads, allocator
        for index in range(1, args.repeats + 1):
            for label, call in (("CLI", cli), ("API", api)):
                start = time.perf_counter()
                files[label] = call(index)
                times[label].append(time.perf_counter() - start)
        loss = {label: ds.Surface.load(path).loss for label, path in files.items()}
        diff = float(np.max(np.abs(loss["API"] - loss["CLI"])))
        best = {label: min(values) for label, values in times.items()}
        points = args.resolution ** 2
        print(f"{name} | {len(test)} images {args.size}x{args.size} | {points} points | "
              f"CLI (depthscape landscape) {best['CLI']:.3f} s | API (ds.loss_surface) "
              f"{best['API']:.3f} s | API/CLI speed {best['CLI'] / best['API']:.3f} | "
              f"max |loss difference| {diff:.3g} | best of {args.repeats}", flush=True)
    return 0 if diff == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
