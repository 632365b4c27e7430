"""The two networks of the study: PyTorch's tutorial `Net` and a CIFAR-adapted VGG16."""

import torch
import torch.nn.functional as F
from torch import nn


class Net(nn.Module):
    """The CIFAR-10 tutorial network, attribute for attribute.

    Keeping the tutorial's names (`conv1`, `pool`, `conv2`, `fc1`, `fc2`, `fc3`) means a
    `model_state_dict` saved here loads into the tutorial's own class unchanged.
    """

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


# VGG16 is configuration "D" of Simonyan & Zisserman: 13 3x3 convolutions, "M" = 2x2 max-pool.
VGG16_LAYOUT = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG16(nn.Module):
    """VGG16 adapted to 32x32 input.

    The five poolings take 32x32 down to 1x1, so the feature vector is 512 wide and the
    classifier keeps torchvision's shape (two hidden layers with dropout) at CIFAR scale
    (512 units instead of 4096) and drops the 7x7 adaptive pooling that 224x224 needs.
    `batch_norm=False` is plain VGG16, as torchvision's `vgg16` and as the study used.
    """

    def __init__(self, num_classes: int = 10, batch_norm: bool = False, hidden: int = 512, dropout: float = 0.5):
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for v in VGG16_LAYOUT:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            layers.append(nn.Conv2d(in_channels, v, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(v))
            layers.append(nn.ReLU(inplace=True))
            in_channels = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(512, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's VGG initialisation: without it a plain (no BatchNorm) 16-layer net
        # starts with vanishing activations and barely moves at the study's small learning rates.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class FastNet(nn.Module):
    """A small conv net built for speed on small hardware, after the ideas of the fastest CIFAR-10 trainers.

    A narrow 2x2 stem, then three blocks of (conv, max-pool, BatchNorm, GELU, conv, BatchNorm,
    GELU) that halve the resolution and widen the channels, a global max-pool and a bias-free
    linear head whose logits are scaled down (`head_scale`), which keeps early training stable at
    high learning rates. About 2M parameters with the default widths.
    """

    def __init__(self, num_classes: int = 10, widths: tuple[int, int, int] = (64, 256, 256), stem: int = 24, head_scale: float = 1 / 9):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, stem, 2, padding=0, bias=False), nn.GELU())  # 32x32 -> 31x31
        blocks, in_ch = [], stem
        for out_ch in widths:
            blocks += [
                nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
                nn.MaxPool2d(2),
                nn.BatchNorm2d(out_ch),
                nn.GELU(),
                nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
                nn.BatchNorm2d(out_ch),
                nn.GELU(),
            ]
            in_ch = out_ch
        self.blocks = nn.Sequential(*blocks)  # 31 -> 15 -> 7 -> 3
        self.head = nn.Linear(in_ch, num_classes, bias=False)
        self.head_scale = head_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        x = torch.amax(x, dim=(2, 3))  # global max-pool over the last 3x3 map
        return self.head(x) * self.head_scale
