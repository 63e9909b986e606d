"""ResNet-20 training throughput: depthscape's loop vs the usual torchvision pipeline.

Baseline: what the spec's scripts do - a torchvision-style dataset that hands out PIL
images, ``RandomCrop(32, 4)`` + ``RandomHorizontalFlip`` + ``ToTensor`` + x255 +
``Normalize`` per image, a shuffling ``DataLoader``, SGD steps. Ours: ``depthscape.training.loop``
itself (uint8 data on the device, whole-batch crop/flip, metrics read once per row).
Same model, recipe, batch size and machine, one run; prints both rates and the ratio.

    python benchmarks/bench_train.py [--iterations 40] [--data-dir ../shared/data/cifar10-jpeg.tar.gz]
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


def baseline(dataset: Dataset, iterations: int, workers: int) -> float:
    """Images/s of the DataLoader + PIL transforms loop (after 3 warm-up steps)."""
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
    loader = torch.utils.data.DataLoader(PilCifar(dataset.train, transform), batch_size=128,
                                         shuffle=True, num_workers=workers, drop_last=True,
                                         persistent_workers=workers > 0)
    torch.manual_seed(0)
    model = get_model("resnet20")
    recipe = recipe_for("resnet20")
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=0.9, weight_decay=1e-4)
    criterion = torch.nn.CrossEntropyLoss()
    model.train()
    steps, images, start = 0, 0, None
    while steps < iterations + 3:
        for x, y in loader:
            if steps == 3:
                start, images = time.perf_counter(), 0
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


def ours(dataset: Dataset, iterations: int) -> float:
    """Images/s of depthscape.training.loop for the same number of iterations (after a warm-up run)."""
    small_test = replace(dataset, test=dataset.test.subset(256))
    rates = []
    for length in (3, iterations + 3):
        recipe = replace(recipe_for("resnet20"), length=length, milestones=())
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            train(TrainConfig(model="resnet20", out_dir=out, recipe=recipe, progress=False,
                              eval_every=10**9, checkpoint_every=10**9), dataset=small_test)
            rates.append(time.perf_counter() - start)
    # The difference of the two runs removes start-up and the final evaluation.
    return iterations * 128 / (rates[1] - rates[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the baseline")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    dataset = load(args.data_dir)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, ResNet-20, batch 128, "
          f"{args.iterations} iterations each")
    base = baseline(dataset, args.iterations, args.workers)
    print(f"baseline (DataLoader + PIL transforms, {args.workers} workers): {base:8.1f} img/s")
    fast = ours(dataset, args.iterations)
    print(f"depthscape.training.loop:                                {fast:8.1f} img/s")
    print(f"ratio: {fast / base:.2f}x")


if __name__ == "__main__":
    main()
