import re

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from cifar.core.models import VGG16, FastNet, Net, ResNet
from cifar.errors import UserError
from tests.conftest import CONF


class TutorialNet(nn.Module):
    """Verbatim from PyTorch's "Training a classifier" tutorial."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        x = self.fc3(x)
        return x


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_net_is_the_tutorial_network():
    assert n_params(Net()) == 62_006
    assert Net()(torch.zeros(5, 3, 32, 32)).shape == (5, 10)


def test_net_state_dict_loads_into_the_tutorial_class_unchanged():
    ours = Net()
    theirs = TutorialNet()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(theirs(x), ours(x), rtol=0, atol=0)


def test_vgg16_has_thirteen_convolutions_and_fits_32x32():
    for bn in (False, True):
        m = VGG16(batch_norm=bn)
        convs = [layer for layer in m.modules() if isinstance(layer, nn.Conv2d)]
        assert len(convs) == 13
        assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
        assert any(isinstance(layer, nn.BatchNorm2d) for layer in m.modules()) == bn
        assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    # 13 convolutions (14,714,688) + classifier 512-512-512-10 (530,442)
    assert n_params(VGG16()) == 14_714_688 + 530_442


def test_vgg16_default_is_plain_like_torchvisions_vgg16():
    from torchvision.models.vgg import cfgs, make_layers  # torchvision's own builder of vgg16's feature layers

    ours, theirs = VGG16().features, make_layers(cfgs["D"], batch_norm=False)
    assert [type(m) for m in ours] == [type(m) for m in theirs] and not any(isinstance(m, nn.BatchNorm2d) for m in ours)
    assert [p.shape for p in ours.parameters()] == [p.shape for p in theirs.parameters()]  # the same 13 convolutions


def test_fastnet_is_about_two_million_parameters_and_scales_its_head():
    m = FastNet()
    assert 1.9e6 < n_params(m) < 2.1e6
    assert m(torch.zeros(3, 3, 32, 32)).shape == (3, 10)
    assert any(isinstance(layer, nn.BatchNorm2d) for layer in m.modules()) and any(isinstance(layer, nn.GELU) for layer in m.modules())
    x = torch.randn(4, 3, 32, 32)
    m.eval()
    unscaled = FastNet(head_scale=1.0)
    unscaled.load_state_dict(m.state_dict())
    unscaled.eval()
    torch.testing.assert_close(m(x), unscaled(x) / 9)


def test_resnet18_is_torchvisions_resnet18_with_the_cifar_stem():
    """Weights copied over in order, ours and torchvision's resnet18 (its 7x7 stem conv made 3x3, its max-pool removed)
    compute the same logits: the same layers, in the same order, wired the same way."""
    from torchvision.models import resnet18

    theirs = resnet18(num_classes=10)
    theirs.conv1, theirs.maxpool = nn.Conv2d(3, 64, 3, padding=1, bias=False), nn.Identity()
    ours = ResNet()
    assert [p.shape for p in ours.parameters()] == [p.shape for p in theirs.parameters()]
    assert n_params(ours) == 11_173_962  # kuangliu/pytorch-cifar's ResNet18 count
    with torch.no_grad():
        for mine, their in zip(ours.state_dict().values(), theirs.state_dict().values(), strict=True):
            mine.copy_(their)
    ours.eval(), theirs.eval()
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(ours(x), theirs(x))


def test_each_residual_config_has_the_parameter_count_its_comment_gives():
    """conf/model/<name>.yaml's first line states the count; instantiating the config gives it."""
    for name in ["resnet18", "preact_resnet18", "wrn16_8"]:
        path = CONF / "model" / f"{name}.yaml"
        model = instantiate(OmegaConf.load(path))
        stated = re.search(r"([\d,]{9,}) parameters", path.read_text().splitlines()[0]).group(1)
        assert f"{n_params(model):,}" == stated, name
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_preact_blocks_normalise_before_each_conv_and_wrn_is_wide_and_shallow():
    preact = ResNet(block="preact")
    first = preact.stages[0][0]
    assert list(first._modules)[:2] == ["bn1", "conv1"] and isinstance(preact.final_norm[0], nn.BatchNorm2d)
    wrn = instantiate(OmegaConf.load(CONF / "model" / "wrn16_8.yaml"))
    convs = [m for m in wrn.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 1 + 3 * 2 * 2  # stem + 2 blocks of 2 convs in each of 3 stages: depth 16 with the head and 3 shortcuts
    feature_sizes = []
    wrn.stages.register_forward_hook(lambda m, i, o: feature_sizes.append(o.shape[1:]))
    wrn(torch.zeros(1, 3, 32, 32))
    assert feature_sizes == [torch.Size([512, 8, 8])]  # 64 x 8 channels at 8x8: two halvings, no max-pool


def test_a_residual_network_refuses_a_broken_shape_in_one_line():
    for kwargs, message in [({"block": "dense"}, "model.block=dense"), ({"depths": (2, 2)}, "one width and one depth a stage")]:
        with pytest.raises(UserError, match=message):
            ResNet(**kwargs)
