"""An independent ResNet-20 of the spec's recipe, in plain PyTorch: a check on depthscape's.

    python benchmarks/reference_resnet20.py DATA.tar.gz [--scale 0.05] [--seed 0]
        [--precision bf16|fp32] [--threads N]

Imports nothing from depthscape: its own reading of the ImageFolder archive (PIL), its own
model (He et al.'s ResNet-20, the spec's ResBlockA: avg_pool2d subsampling and zero channel
padding on the shortcut where the shape changes; Kaiming-normal convolutions, ``--init``
fan-out as torchvision or fan-in with the linear layer too as depthscape), torchvision's
own ``RandomCrop(32, padding=4)`` and ``RandomHorizontalFlip()`` image by image, x255 and the
mean [125, 123, 114] subtracted, SGD (momentum 0.9, weight decay 1e-4 on every parameter),
lr 0.1 divided by 10 at half and three quarters of the iterations, batch 128, a fresh
permutation each epoch. ``--scale`` multiplies the spec's 64,000 iterations and decay
points, as ``depthscape train --scale`` does. Prints the final training and test accuracy
and loss in eval mode over every image, in float32, as ``depthscape tables`` evaluates.

Where this and depthscape land within a seed's spread of each other at the same scale, a
gap to the spec's numbers is not depthscape's code (docs/results.md).
"""

from __future__ import annotations

import argparse
import io
import math
import tarfile
import time
from pathlib import PurePosixPath

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision import transforms

MEAN = torch.tensor([125.0, 123.0, 114.0]).view(1, 3, 1, 1)


def read_archive(path: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{"train"|"test": (uint8 images (N, 3, 32, 32), labels)} from an ImageFolder .tar.gz."""
    found: dict[str, list[tuple[str, str, bytes]]] = {"train": [], "test": []}
    with tarfile.open(path) as archive:
        for member in archive:
            parts = PurePosixPath(member.name).parts
            if not member.isfile() or len(parts) < 3 or parts[-3] not in found:
                continue
            found[parts[-3]].append((parts[-2], member.name, archive.extractfile(member).read()))
    classes = sorted({c for c, _, _ in found["train"]})
    splits = {}
    for split, items in found.items():
        items.sort(key=lambda item: item[1])
        images = np.stack([np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
                           for _, _, data in items])
        labels = torch.tensor([classes.index(c) for c, _, _ in items])
        splits[split] = (torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), labels)
    return splits


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.stride, self.extra = stride, cout - cin

    def forward(self, x):
        out = self.b2(self.c2(F.relu(self.b1(self.c1(x)))))
        short = x
        if self.stride != 1 or self.extra:
            short = F.avg_pool2d(x, 1, self.stride)
            short = F.pad(short, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))
        return F.relu(out + short)


class ResNet20(nn.Module):
    def __init__(self, n: int = 3, init: str = "fan-in"):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        layers, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                layers.append(Block(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(64, 10)
        for m in self.modules():
            if init == "fan-out" and isinstance(m, nn.Conv2d):  # torchvision's ResNets
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif init == "fan-in" and isinstance(m, (nn.Conv2d, nn.Linear)):  # akamaster's
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x):
        x = self.layers(F.relu(self.bn(self.conv(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    model.eval()
    correct, loss = 0, 0.0
    with torch.no_grad():
        for start in range(0, len(images), 1000):
            x = (images[start:start + 1000].float() - MEAN).contiguous(
                memory_format=torch.channels_last)
            logits = model(x)
            y = labels[start:start + 1000]
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
    model.train()
    return 100.0 * correct / len(images), loss / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--scale", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--init", choices=("fan-out", "fan-in"), default="fan-in",
                        help="fan-out: Kaiming-normal (fan out) convolutions, PyTorch's default "
                        "linear layer (torchvision's ResNets); fan-in (default): Kaiming-normal "
                        "(fan in) convolutions and linear layer (akamaster's CIFAR ResNets, "
                        "depthscape's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    total = round(64000 * args.scale)
    milestones = [round(32000 * args.scale), round(48000 * args.scale)]
    splits = read_archive(args.data)
    train_x, train_y = splits["train"]
    model = ResNet20(init=args.init).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1)
    augment = transforms.Compose([transforms.RandomCrop(32, padding=4),
                                  transforms.RandomHorizontalFlip()])
    print(f"# reference ResNet-20: {total} iterations (decays at {milestones}), {args.precision}, "
          f"init {args.init}, seed {args.seed}, {torch.get_num_threads()} threads, {len(train_x)} training images",
          flush=True)
    order, at, start = torch.randperm(len(train_x)), 0, time.perf_counter()
    for step in range(total):
        if at + 128 > len(order):  # drop the last partial batch; a new permutation each epoch
            order, at = torch.randperm(len(train_x)), 0
        index = order[at:at + 128]
        at += 128
        batch = torch.stack([augment(train_x[i]) for i in index.tolist()])
        x = (batch.float() - MEAN).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            loss = F.cross_entropy(model(x), train_y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % 400 == 0 or step + 1 == total:
            print(f"iteration {step + 1}: loss {float(loss.detach()):.4f}, "
                  f"{(step + 1) * 128 / (time.perf_counter() - start):.0f} img/s", flush=True)
    train_acc, train_loss = evaluate(model, train_x, train_y)
    test_acc, test_loss = evaluate(model, *splits["test"])
    assert math.isfinite(train_loss) and math.isfinite(test_loss)
    print(f"reference resnet20 scale {args.scale} seed {args.seed} {args.precision} init {args.init}: "
          f"train {train_acc:.2f} % (loss {train_loss:.4f}), test {test_acc:.2f} % "
          f"(loss {test_loss:.4f}), {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
