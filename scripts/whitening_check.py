"""What fastnet94's whitening stem sees in a copy of CIFAR-10, and what bfloat16 does to it (RESULTS.md).

    PYTHONPATH=. python scripts/whitening_check.py /tmp/cifar10

Prints the 12 eigenvalues of the 2x2-patch covariance of the first 5,000 training images (normalised
as in training; in a folder copy, listed class by class, they are airplanes only, which is why fastnet94
now draws its 5,000 at random: cifar/run/build.py's whitening_sample), how much of a pure colour difference the two finest directions are, and the relative
error bfloat16 autocast leaves in each whitened direction of FastNet's stem, on 500 of those images
(and float16 rounding, airbench's precision, for comparison).
"""

import sys

import torch
import torch.nn.functional as F

from cifar.core.data import load_dataset
from cifar.core.models import FastNet

MEAN, STD = torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1, 1), torch.tensor([0.2470, 0.2435, 0.2616]).view(3, 1, 1)

images = (load_dataset(sys.argv[1]).train.images[:5000].float() / 255 - MEAN) / STD
patches = images.unfold(2, 2, 1).unfold(3, 2, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, 12)  # (channel, row, column) each
values, vectors = torch.linalg.eigh(torch.cov(patches.T, correction=0))
print("eigenvalues, largest first:", " ".join(f"{v:.3g}" for v in values.flip(0)))
colour_sums = vectors[:, :2].view(3, 4, 2).sum(0).abs().sum(0)  # per pixel, summed over the channels: 0 = a pure colour difference
print("the two finest directions, |sum over channels| per pixel, added up:", " ".join(f"{s:.3f}" for s in colour_sums))

net = FastNet(whiten=True)
net.init_whitening(images)
stem, sample = net.stem[0], images[:500]
with torch.no_grad():
    exact = stem(sample)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        in_bf16 = stem(sample).float()
    in_fp16 = F.conv2d(sample.half().float(), stem.weight.half().float(), stem.bias.half().float())  # airbench's precision, rounded
for name, rounded in (("bfloat16", in_bf16), ("float16", in_fp16)):
    error = ((rounded - exact).pow(2).mean((0, 2, 3)) / exact.pow(2).mean((0, 2, 3))).sqrt()[:12]  # the other 12 are their negatives
    print(f"{name}'s relative error in the 12 whitened directions, largest eigenvalue first:", " ".join(f"{e:.1%}" for e in error))
