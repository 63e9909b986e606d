"""Training throughput: depthscape's loop vs the usual torchvision pipeline, on one device.

Baseline (the seed-style loop): a torchvision-style dataset that hands out PIL images,
``RandomCrop(32, 4)`` + ``RandomHorizontalFlip`` + ``ToTensor`` + x255 + ``Normalize`` per
image, a shuffling ``DataLoader`` (workers; ``pin_memory`` on CUDA), an eager model on the
same device (``cudnn.benchmark`` on CUDA), SGD steps and ``loss.item()`` every step. Ours:
``depthscape.training.loop.train`` itself with the device's defaults (uint8 data on the
device, whole-batch crop/flip, metrics read once per row; on CUDA the captured step, bf16
and channels-last). Same model, recipe, batch size and device; prints both rates and the
ratio per model.

    python benchmarks/bench_train.py [--device cuda] [--models resnet20 resnet56 resnet110]
        [--iterations 40] [--data-dir ../shared/data/cifar10-jpeg.tar.gz]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from depthscape.core.data import Dataset, Split, load_dataset
from depthscape.core.models import get_model
from depthscape.core.recipes import recipe_for
from depthscape.training.loop import TrainConfig, train

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"


def load(data_dir: Path | None) -> Dataset:
    if data_dir and data_dir.exists():
        return load_dataset("cifar10", data_dir=data_dir)
    print("real CIFAR-10 not found: using random images of the same shape")
    g = torch.Generator().manual_seed(0)
    def split(n):
        return Split(torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8),
                     torch.randint(0, 10, (n,), generator=g))
    return Dataset("cifar10", split(50_000), split(1_000), [str(i) for i in range(10)])


def baseline(dataset: Dataset, iterations: int, workers: int, model_name: str = "resnet20",
             device: str = "cpu") -> float:
    """Images/s of the DataLoader + PIL transforms loop on ``device`` (after 3 warm-up steps)."""
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
    loader = torch.utils.data.DataLoader(PilCifar(dataset.train, transform), batch_size=128,
                                         shuffle=True, num_workers=workers, drop_last=True,
                                         persistent_workers=workers > 0, pin_memory=cuda)
    if cuda:
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    model = get_model(model_name).to(device)
    recipe = recipe_for(model_name)
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=0.9, weight_decay=1e-4)
    criterion = torch.nn.CrossEntropyLoss()
    model.train()
    steps, images, start = 0, 0, None
    while steps < iterations + 3:
        for x, y in loader:
            if steps == 3:
                start, images = time.perf_counter(), 0
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = criterion(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss.item()  # the usual per-step read of the loss for logging
            steps += 1
            images += len(y)
            if steps >= iterations + 3:
                break
    return images / (time.perf_counter() - start)


def ours(dataset: Dataset, iterations: int, model_name: str = "resnet20", device: str = "cpu",
         precision: str | None = None) -> float:
    """Images/s of depthscape.training.loop for the same number of iterations (after a warm-up run)."""
    small_test = replace(dataset, test=dataset.test.subset(256))
    rates = []
    for length in (3, iterations + 3):
        recipe = replace(recipe_for(model_name), length=length, milestones=(), warmup_lr=None,
                         warmup_length=0)
        with tempfile.TemporaryDirectory() as out:
            if torch.device(device).type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            train(TrainConfig(model=model_name, out_dir=out, recipe=recipe, progress=False,
                              device=device, precision=precision,
                              eval_every=10**9, checkpoint_every=10**9), dataset=small_test)
            rates.append(time.perf_counter() - start)
    # The difference of the two runs removes start-up, capture and the final evaluation.
    if rates[1] <= rates[0]:
        raise SystemExit("the two timed runs differ by less than their noise: use more --iterations")
    return iterations * 128 / (rates[1] - rates[0])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where both loops run (default: cuda if available)")
    parser.add_argument("--models", nargs="+", default=None,
                        help="default: resnet20 resnet56 resnet110 on CUDA, resnet20 on the CPU")
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--workers", type=int, default=None,
                        help="DataLoader workers of the baseline (default: 8 on CUDA, 2 on the CPU)")
    parser.add_argument("--precision", choices=("fp32", "tf32", "bf16"), default=None,
                        help="depthscape's precision (default: the device's, bf16 on CUDA)")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args(argv)
    cuda = torch.device(args.device).type == "cuda"
    models = args.models or (["resnet20", "resnet56", "resnet110"] if cuda else ["resnet20"])
    workers = args.workers if args.workers is not None else (8 if cuda else 2)
    dataset = load(args.data_dir)
    where = torch.cuda.get_device_name(args.device) if cuda else f"cpu, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}, batch 128, {args.iterations} iterations each")
    for name in models:
        base = baseline(dataset, args.iterations, workers, name, args.device)
        fast = ours(dataset, args.iterations, name, args.device, args.precision)
        print(f"{name}: baseline (DataLoader + PIL transforms, {workers} workers) {base:8.1f} img/s, "
              f"depthscape.training.loop {fast:8.1f} img/s, ratio {fast / base:.2f}x", flush=True)


if __name__ == "__main__":
    main()
