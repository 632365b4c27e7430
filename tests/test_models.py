import torch
import torch.nn.functional as F
from torch import nn

from cifar.core.models import VGG16, FastNet, Net


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
