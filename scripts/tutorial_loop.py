"""PyTorch's CIFAR-10 tutorial loop as a program of its own: the baseline that cifar-bench's tutorial path is held to.

The loop is the one in "Training a Classifier" (https://pytorch.org/tutorials/beginner/blitz/cifar10_tutorial.html,
PyTorch's 60-minute blitz), written here in our words: torchvision's CIFAR10 dataset, which keeps the images as one
uint8 array (N, 32, 32, 3) made by transposing the files' (N, 3, 32, 32) layout (a view, not a copy) and turns each
into a PIL image; ToTensor and Normalize((0.5,) * 3, (0.5,) * 3) per image; DataLoader(batch_size=4, shuffle=True,
num_workers=2); the tutorial's Net (cifar.core.models.Net, the same layers); CrossEntropyLoss; SGD(lr=0.001,
momentum=0.9); `loss.item()` added to a running loss every step; fp32, torch's default threads. What differs: the
images come from a local copy (the real JPEG copy, read once into that array), and the loop trains `--warmup` steps
untimed, then `--steps` timed ones, and prints their images per second.

    python scripts/tutorial_loop.py --data /tmp/cifar10 --steps 3000
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from cifar.core.data import load_dataset
from cifar.core.models import Net


class TutorialCIFAR10(Dataset):
    """torchvision.datasets.CIFAR10's item: the image's HWC uint8 slice as a PIL image, through the transform. Written
    again here rather than imported from cifar-bench, whose tutorial path this program is the reference for."""

    def __init__(self, images_nchw: np.ndarray, labels: list[int], transform):
        self.data = images_nchw.transpose((0, 2, 3, 1))  # HWC, a strided view: what torchvision's class holds
        self.targets, self.transform = labels, transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return self.transform(Image.fromarray(self.data[index])), self.targets[index]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a copy of CIFAR-10 (a folder copy or torchvision's files)")
    parser.add_argument("--steps", type=int, default=3000, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=100, help="untimed steps first (the workers start, the caches fill)")
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps takes 1 or more timed steps, --warmup 0 or more")

    train = load_dataset(args.data, download=False).train
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
    trainset = TutorialCIFAR10(train.images.numpy(), train.labels.tolist(), transform)
    trainloader = DataLoader(trainset, batch_size=4, shuffle=True, num_workers=2)
    torch.manual_seed(0)
    net = Net()
    criterion = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9)

    running_loss, step, start = 0.0, 0, None
    while step < args.warmup + args.steps:
        for inputs, labels in trainloader:  # a new epoch starts the workers again, as in the tutorial
            if step == args.warmup:
                start = time.perf_counter()
            optimizer.zero_grad()
            loss = criterion(net(inputs), labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
            step += 1
            if step == args.warmup + args.steps:
                break
    seconds = time.perf_counter() - start
    print(f"tutorial loop: {4 * args.steps / seconds:,.0f} img/s over {args.steps} steps ({torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
