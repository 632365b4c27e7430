"""The networks: the study's two (PyTorch's tutorial `Net` and a CIFAR-adapted VGG16), FastNet (the fast recipes'
network) and the residual networks CIFAR results are usually compared against (ResNet-18, PreAct ResNet-18, WRN-16-8)."""

import torch
import torch.nn.functional as F
from torch import nn

from cifar.core.callbacks import Callback, RunState
from cifar.errors import refuse_broken


class Net(nn.Module):
    """The CIFAR-10 tutorial network, attribute for attribute.

    Keeping the tutorial's names (`conv1`, `pool`, `conv2`, `fc1`, `fc2`, `fc3`) means a
    `model_state_dict` saved here loads into the tutorial's own class unchanged.
    """

    def __init__(self, num_classes: int = 10):
        super().__init__()
        refuse_broken([(num_classes >= 2, f"model.num_classes={num_classes}: a classifier needs 2 classes or more")])
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
        refuse_broken([
            (num_classes >= 2, f"model.num_classes={num_classes}: a classifier needs 2 classes or more"),
            (hidden >= 1, f"model.hidden={hidden}: use 1 or more units (512 here, 4096 in torchvision's)"),
            (0 <= dropout < 1, f"model.dropout={dropout}: a probability in [0, 1)"),
        ])  # fmt: skip
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


class FastNet(nn.Module, Callback):
    """A small conv net built for speed on small hardware, after the ideas of the fastest CIFAR-10 trainers.

    A narrow 2x2 stem, then three blocks of (conv, max-pool, BatchNorm, GELU, conv, BatchNorm,
    GELU) that halve the resolution and widen the channels, a global max-pool and a bias-free
    linear head whose logits are scaled down (`head_scale`), which keeps early training stable at
    high learning rates. About 2M parameters with the default widths.

    The options beyond the defaults are the parts of Keller Jordan's airbench recipe that live in
    the network, each switchable so that its worth can be measured:
    - `whiten`: the stem is a frozen whitening transform of 2x2 patches, set from training images
      by `init_whitening` (the `from_data` hook); its bias trains for the first `whiten_bias_epochs` epochs, then freezes too;
    - `dirac`: each block convolution starts as the identity on its input channels;
    - `bn_scale=False`: BatchNorm without a trainable scale; `bn_momentum`: how fast its running
      statistics follow the batches (PyTorch's convention: the weight of the newest batch).
    """

    def __init__(
        self, num_classes: int = 10, widths: tuple[int, int, int] = (64, 256, 256), stem: int = 24, head_scale: float = 1 / 9,
        whiten: bool = False, whiten_bias_epochs: int = 3, dirac: bool = False, bn_scale: bool = True, bn_momentum: float = 0.1,
        bn_eps: float = 1e-5,
    ):  # fmt: skip
        super().__init__()
        refuse_broken([
            (not whiten or stem == 2 * 3 * 2 * 2,
             f"model.stem={stem} with model.whiten=true: a whitening stem has 24 channels (12 directions of 2x2x3 patches, both signs)"),
            (len(widths) == 3 and all(w >= 1 for w in widths), f"model.widths={list(widths)}: three positive channel counts, one a block"),
            (stem >= 1 and head_scale > 0, f"model.stem={stem}, model.head_scale={head_scale}: both must be positive"),
            (0 <= bn_momentum <= 1 and bn_eps > 0, f"model.bn_momentum={bn_momentum}, model.bn_eps={bn_eps}: a momentum in [0, 1], a positive eps"),
            (num_classes >= 2, f"model.num_classes={num_classes}: a classifier needs 2 classes or more"),
            (whiten_bias_epochs >= 0, f"model.whiten_bias_epochs={whiten_bias_epochs}: 0 or more epochs"),
        ])  # fmt: skip
        self.stem = nn.Sequential(nn.Conv2d(3, stem, 2, padding=0, bias=whiten), nn.GELU())  # 32x32 -> 31x31
        blocks, in_ch = [], stem
        for out_ch in widths:
            blocks += [
                nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
                nn.MaxPool2d(2),
                nn.BatchNorm2d(out_ch, momentum=bn_momentum, eps=bn_eps),
                nn.GELU(),
                nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
                nn.BatchNorm2d(out_ch, momentum=bn_momentum, eps=bn_eps),
                nn.GELU(),
            ]
            in_ch = out_ch
        self.blocks = nn.Sequential(*blocks)  # 31 -> 15 -> 7 -> 3
        self.head = nn.Linear(in_ch, num_classes, bias=False)
        self.head_scale = head_scale
        self.whiten, self.whiten_bias_epochs = whiten, whiten_bias_epochs
        for m in self.blocks:
            if isinstance(m, nn.BatchNorm2d):
                m.weight.requires_grad_(bn_scale)  # frozen at 1 without a trainable scale
            if dirac and isinstance(m, nn.Conv2d):
                nn.init.dirac_(m.weight.data[: m.in_channels])  # the first in_channels filters pass their input through
        if whiten:
            self.stem[0].weight.requires_grad_(False)

    @torch.no_grad()
    def init_whitening(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the stem to whiten 2x2 patches of `images` (N, 3, H, W, normalised as in training).

        The filters are the eigenvectors of the patches' covariance, each divided by the square root
        of its eigenvalue (plus `eps`), with both signs: after them every patch direction has unit variance.
        """
        patches = images.float().unfold(2, 2, 1).unfold(3, 2, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, 3 * 2 * 2)
        patches = patches - patches.mean(0)
        eigenvalues, eigenvectors = torch.linalg.eigh(patches.T @ patches / len(patches))
        filters = (eigenvectors.T / torch.sqrt(eigenvalues + eps)[:, None]).flip(0).reshape(-1, 3, 2, 2)  # largest first
        conv = self.stem[0]
        conv.weight.copy_(torch.cat([filters, -filters]).to(conv.weight))
        conv.bias.zero_()

    def from_data(self, images: torch.Tensor) -> None:
        """Before training (cifar/run/build.py calls a model's from_data, where it has one, with training images
        normalised as training sees them, before the lookahead and EMA copy the weights): a whitening stem is set from them."""
        if self.whiten:
            self.init_whitening(images)

    def on_train_epoch_start(self, state: RunState) -> None:
        """Before each epoch (a callback, cifar/core/callbacks.py): the whitening stem's bias trains for its first epochs only."""
        if self.whiten:
            self.stem[0].bias.requires_grad_(state.epoch <= self.whiten_bias_epochs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        x = torch.amax(x, dim=(2, 3))  # global max-pool over the last 3x3 map
        return self.head(x) * self.head_scale


class BasicBlock(nn.Module):
    """He et al.'s basic residual block: (3x3 conv, BatchNorm, ReLU, 3x3 conv, BatchNorm) plus the input, then ReLU.
    Where the block changes the resolution or the width, the input passes through a strided 1x1 conv and BatchNorm."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, dropout: float = 0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        reshape = stride != 1 or in_ch != out_ch
        self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)) if reshape else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.dropout(F.relu(self.bn1(self.conv1(x))))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class PreActBlock(nn.Module):
    """He et al.'s pre-activation block (and Zagoruyko & Komodakis' wide one): BatchNorm and ReLU come before each conv,
    and the sum is left un-activated. A reshaping shortcut (strided 1x1 conv) reads the pre-activated input."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        reshape = stride != 1 or in_ch != out_ch
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1, stride, bias=False) if reshape else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = F.relu(self.bn1(x))
        skip = self.shortcut(activated) if self.shortcut is not None else x
        out = self.conv1(activated)
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        return out + skip


RESIDUAL_BLOCKS = {"basic": BasicBlock, "preact": PreActBlock}


class ResNet(nn.Module):
    """A residual network in its CIFAR form: a 3x3 stem conv with no max-pool (32x32 images have no pixels to spare),
    stages of residual blocks, the first at stride 1 and each later one halving the resolution, then global average
    pooling and a linear head. One class for the three families compared on CIFAR (conf/model/ gives each its numbers):

    - ResNet-18: `block=basic`, widths 64-128-256-512, 2 blocks a stage (11.2M parameters);
    - PreAct ResNet-18: the same with `block=preact`, and BatchNorm + ReLU before the pooling;
    - WRN-16-8: `block=preact`, a 16-channel stem, widths 128-256-512 (16, 32, 64 times 8), 2 blocks a stage.
    """

    def __init__(
        self, num_classes: int = 10, block: str = "basic", widths: tuple[int, ...] = (64, 128, 256, 512),
        depths: tuple[int, ...] = (2, 2, 2, 2), stem: int = 64, dropout: float = 0.0,
    ):  # fmt: skip
        super().__init__()
        refuse_broken([
            (block in RESIDUAL_BLOCKS, f"model.block={block}: one of {' | '.join(RESIDUAL_BLOCKS)}"),
            (len(widths) == len(depths) >= 1, f"model.widths={list(widths)}, model.depths={list(depths)}: one width and one depth a stage"),
            (all(w >= 1 for w in [*widths, stem]) and all(d >= 1 for d in depths), "model.widths, model.depths, model.stem: positive numbers"),
            (0 <= dropout < 1, f"model.dropout={dropout}: a probability in [0, 1)"),
            (num_classes >= 2, f"model.num_classes={num_classes}: a classifier needs 2 classes or more"),
        ])  # fmt: skip
        make_block, preact = RESIDUAL_BLOCKS[block], block == "preact"
        # A pre-activation network normalises inside its blocks, so its stem is a bare conv.
        self.stem = nn.Conv2d(3, stem, 3, padding=1, bias=False)
        self.stem_norm = nn.Identity() if preact else nn.Sequential(nn.BatchNorm2d(stem), nn.ReLU(inplace=True))
        stages, in_ch = [], stem
        for i, (width, depth) in enumerate(zip(widths, depths, strict=True)):
            blocks = []
            for j in range(depth):
                blocks.append(make_block(in_ch, width, stride=2 if i > 0 and j == 0 else 1, dropout=dropout))
                in_ch = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        # The last pre-activation block's sum is not yet normalised: BatchNorm + ReLU before pooling (He et al. 2016).
        self.final_norm = nn.Sequential(nn.BatchNorm2d(in_ch), nn.ReLU(inplace=True)) if preact else nn.Identity()
        self.head = nn.Linear(in_ch, num_classes)
        for m in self.modules():  # torchvision's ResNet initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.final_norm(self.stages(self.stem_norm(self.stem(x))))
        return self.head(torch.mean(x, dim=(2, 3)))  # global average pooling
