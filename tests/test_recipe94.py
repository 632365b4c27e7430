"""The parts of the 94% recipe (experiment=fastnet94), each on its own: what it does, and that it switches off."""

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from cifar.core import muon
from cifar.core.augment import Flip, random_crop
from cifar.core.batches import DeviceBatches
from cifar.core.data import Split
from cifar.core.hardware import Precision
from cifar.core.lookahead import Lookahead
from cifar.core.models import FastNet
from cifar.core.muon import Muon, orthogonalize
from cifar.core.scoring import predict
from cifar.run.build import build_optimizer
from cifar.run.training import train
from tests.conftest import tiny_overrides

CPU32 = Precision("fp32", "cpu")


def test_the_whitening_stem_decorrelates_patches_and_stays_frozen():
    g = torch.Generator().manual_seed(0)
    mixing = torch.randn(3, 3, generator=g)  # correlated colour channels
    noise = torch.randn(200, 3, 32, 32, generator=g)
    images = torch.einsum("ij,njhw->nihw", mixing, noise + 0.5 * noise.roll(1, -1))  # correlated in colour and space too
    net = FastNet(whiten=True)
    net.init_whitening(images)
    out = net.stem[0](images)[:, :12]  # the 12 directions (the other 12 are their negatives)
    flat = out.permute(1, 0, 2, 3).reshape(12, -1)
    covariance = torch.cov(flat)
    assert torch.allclose(covariance, torch.eye(12), atol=0.02), "every patch direction has unit variance, and none correlate"
    assert not net.stem[0].weight.requires_grad
    net.on_train_epoch_start(SimpleNamespace(epoch=3))  # as the loop calls it, with the run's state (its epoch)
    assert net.stem[0].bias.requires_grad, "the bias trains for whiten_bias_epochs=3 epochs"
    net.on_train_epoch_start(SimpleNamespace(epoch=4))
    assert not net.stem[0].bias.requires_grad
    assert not FastNet().stem[0].bias, "without whitening the stem is the plain bias-free convolution"


def test_dirac_initialised_convolutions_pass_their_input_through():
    net = FastNet(dirac=True)
    conv = net.blocks[4]  # the second convolution of block 1: 64 -> 64 channels
    x = torch.randn(2, 64, 8, 8)
    assert torch.allclose(conv(x), x, atol=1e-6)
    assert not torch.allclose(FastNet().blocks[4](x), x, atol=1e-2)


def test_batchnorm_without_a_scale_and_at_its_own_learning_rate(compose_cfg):
    net = FastNet(bn_scale=False, bn_momentum=0.4)
    cfg = compose_cfg(["output_dir=.", "model=fastnet", "norm_lr_scale=64", "optim.lr=1.5", "optim.weight_decay=0.002"])
    optimizer = build_optimizer(cfg, net)
    norm_biases = {id(m.bias) for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    (norm_group,) = [g for g in optimizer.param_groups if {id(p) for p in g["params"]} == norm_biases]
    assert norm_group["lr"] == 1.5 * 64 and norm_group["weight_decay"] == pytest.approx(0.002 / 64)
    scales = [m.weight for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert not any(id(w) in {id(p) for g in optimizer.param_groups for p in g["params"]} for w in scales), "fixed at 1"
    assert all(m.momentum == 0.4 for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_alternating_flips_mirror_each_image_on_every_other_epoch():
    g = torch.Generator().manual_seed(0)
    split = Split(torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=g), torch.arange(64) % 10)
    batches = DeviceBatches(split, 64, torch.device("cpu"), mean=[0] * 3, std=[1 / 255] * 3, shuffle=True, augment=[Flip(alternate=True)])

    def mirrored(epoch):  # by image: is what the batch holds the image's mirror?
        ((x, _),) = list(batches.epoch(epoch))
        order = torch.randperm(64, generator=torch.Generator().manual_seed(epoch))  # seed 0: the epoch's own order
        by_image = torch.zeros(64, dtype=torch.bool)
        for j, i in enumerate(order.tolist()):
            by_image[i] = torch.equal(x[j], split.images[i].flip(2).float())
        return by_image

    first, second, third = mirrored(1), mirrored(2), mirrored(3)
    assert torch.equal(first, ~second) and torch.equal(first, third), "every image alternates"
    assert 10 < int(first.sum()) < 54, "half of the images start mirrored"


def test_reflected_crops_are_torch_reflect_padding():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=g)
    shifts = torch.randint(0, 5, (6, 2), generator=g)
    padded = F.pad(images.float(), (2, 2, 2, 2), mode="reflect").to(torch.uint8)
    expected = torch.stack([padded[i, :, dy : dy + 32, dx : dx + 32] for i, (dy, dx) in enumerate(shifts.tolist())])
    assert torch.equal(random_crop(images, shifts, 2, black=None), expected)  # None: reflected


def test_six_view_tta_averages_flips_and_one_pixel_shifts():
    class Corner(torch.nn.Module):  # class 0's logit is the top-left pixel of channel 0
        def forward(self, x):
            return F.pad(x[:, 0, 0, 0:1], (0, 9))

    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).view(2, 3, 32, 32) % 97
    batches = DeviceBatches(Split((x % 256).to(torch.uint8), torch.zeros(2, dtype=torch.long)), 2, torch.device("cpu"),
                            mean=[0] * 3, std=[1 / 255] * 3, shuffle=False)  # fmt: skip
    images = next(iter(batches.epoch()))[0][:, 0]
    plain = predict(Corner(), batches, CPU32).loss
    tta = predict(Corner(), batches, CPU32, tta="flip_translate").loss
    # views: as is (0,0) and mirrored (0,31); shifted one pixel up-left or down-right, both reflect to (1,1) and (1,30)
    corner = (images[:, 0, 0] + images[:, 0, 31]) / 4 + (images[:, 1, 1] + images[:, 1, 30]) / 4
    expected = F.cross_entropy(F.pad(corner[:, None], (0, 9)), torch.zeros(2, dtype=torch.long))
    assert tta == pytest.approx(expected.item(), rel=1e-6) and plain != pytest.approx(tta)


def test_lookahead_pulls_the_weights_into_their_average_and_ends_on_it():
    net = torch.nn.Linear(3, 2, bias=False)
    start = net.weight.detach().clone()
    lookahead = Lookahead(net, every=2, decay=0.95, total_steps=4)
    with torch.no_grad():
        net.weight.add_(1.0)  # what an optimizer step would do
    lookahead.on_train_batch_end(None)  # step 1: no pull
    assert torch.equal(net.weight, start + 1)
    lookahead.on_train_batch_end(None)  # step 2 of 4: the average keeps 0.95**2 * (2/4)**3 of itself
    keep = 0.95**2 * 0.5**3
    pulled = keep * start + (1 - keep) * (start + 1)
    assert torch.allclose(net.weight, pulled)
    with torch.no_grad():
        net.weight.add_(1.0)
    lookahead.on_train_epoch_end(SimpleNamespace(epoch=1, epochs=2))  # not the last epoch: the weights stay
    assert torch.allclose(net.weight, pulled + 1)
    lookahead.on_train_epoch_end(SimpleNamespace(epoch=2, epochs=2))  # the average: a move since the last pull is not in it
    assert torch.allclose(net.weight, pulled)


def test_the_recipe_trains_resumes_exactly_and_reports_both_test_figures(compose_cfg, tiny_folder, tmp_path):
    """experiment=fastnet94 on the tiny folder; its lookahead state travels in last.pt, so a cut run resumes to the bit."""
    # FastNet narrowed from [64, 256, 256] channels: every part of the recipe (whitening, dirac, lookahead, TTA) works at any
    # width, and blocks at least as wide as the whitening stem's 24 channels keep dirac's identity whole.
    small = ("experiment=fastnet94", "batch_size=100", "epochs=3", "optim.lr=0.2", "model.widths=[32,64,64]")

    def run(name, *extra):
        return train(compose_cfg(tiny_overrides(tiny_folder, tmp_path / name, *small, *extra)))

    straight = run("straight")
    assert straight["status"] == "finished" and straight["test_tta"] == "flip_translate"
    assert 0 <= straight["test_acc"] <= 1 and 0 <= straight["test_acc_tta"] <= 1
    cut = run("cut2", "max_minutes=0.00001")
    assert cut["status"] == "out_of_time" and cut["epochs_completed"] == 1
    resumed = run("ignored", f"resume={tmp_path / 'cut2' / 'last.pt'}")
    assert (resumed["test_acc"], resumed["test_acc_tta"]) == (straight["test_acc"], straight["test_acc_tta"])
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "cut2" / "last.pt", weights_only=True)
    assert all(torch.equal(a["model_state_dict"][k], b["model_state_dict"][k]) for k in a["model_state_dict"])
    assert a["lookahead_state_dict"]["steps"] == b["lookahead_state_dict"]["steps"] == 30
    assert json.loads((tmp_path / "cut2" / "summary.json").read_text())["status"] == "finished"


def test_newton_schulz_brings_every_singular_value_near_one():
    g = torch.Generator().manual_seed(0)
    for rows, cols in ((64, 576), (576, 64)):  # wide and tall filter banks
        k = min(rows, cols)
        u, _ = torch.linalg.qr(torch.randn(rows, k, generator=g))
        v, _ = torch.linalg.qr(torch.randn(cols, k, generator=g))
        update = u @ torch.diag(torch.logspace(-1, 0, k)) @ v.T  # singular values spread over a decade
        out = orthogonalize(update, steps=3)
        singular = torch.linalg.svdvals(out.float())
        assert out.shape == (rows, cols) and out.dtype == update.dtype
        assert 0.6 < singular.min() and singular.max() < 1.25, ((rows, cols), singular.min(), singular.max())
        assert torch.allclose(torch.linalg.svdvals(update)[[0, -1]], torch.tensor([1.0, 0.1]), rtol=1e-3)


@pytest.mark.parametrize("native_bf16", [True, False])
def test_newton_schulz_runs_in_bf16_only_where_the_cpu_has_it_natively(monkeypatch, native_bf16):
    """On an AVX2-only CPU bf16 is emulated (27x slower here): the iteration runs in fp32 there, to the fp32 result."""
    monkeypatch.setattr(muon, "cpu_has_native_bf16", lambda: native_bf16)
    update = torch.randn(64, 576, generator=torch.Generator().manual_seed(0))
    dtype = torch.bfloat16 if native_bf16 else torch.float32
    a, b, c = muon.NEWTON_SCHULZ
    x = update.to(dtype)
    x = x / (x.norm() + 1e-7)
    for _ in range(3):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    assert torch.equal(orthogonalize(update, steps=3), x.float())


def test_muon_steps_filters_by_their_orthogonalized_gradient_and_the_rest_by_sgd():
    torch.manual_seed(0)
    net = FastNet(dirac=True)
    twin = FastNet(dirac=True)
    twin.load_state_dict(net.state_dict())
    filters = [p for p in net.parameters() if p.ndim == 4]
    others = [p for p in net.parameters() if p.ndim != 4 and p.requires_grad]
    muon = Muon(list(net.parameters()), lr=0.1, momentum=0.85, filter_lr=0.24, filter_momentum=0.6, weight_decay=0.01)
    sgd = torch.optim.SGD([p for p in twin.parameters() if p.ndim != 4], lr=0.1, momentum=0.85, weight_decay=0.01, nesterov=True)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    for model in (net, twin):
        F.cross_entropy(model(x), y).backward()
    before = [p.detach().clone() for p in filters]
    grads = [p.grad.clone() for p in filters]
    muon.step()
    sgd.step()
    twin_others = [p for p in twin.parameters() if p.ndim != 4 and p.requires_grad]
    assert all(torch.equal(a, b) for a, b in zip(others, twin_others, strict=True)), (
        "BatchNorm biases and the head move exactly as SGD moves them"
    )
    for w0, w1, grad in zip(before, filters, grads, strict=True):
        scaled = w0 * len(w0) ** 0.5 / w0.norm()  # each filter bank first goes to norm sqrt(out_channels)
        step = ((scaled - w1) / 0.24).reshape(len(w0), -1)
        expected = orthogonalize((grad * (1 + 0.6)).reshape(len(w0), -1), steps=3).float()  # first Nesterov step: g + 0.6 g
        assert torch.allclose(step, expected, atol=1e-6)
    assert [g["lr"] for g in muon.param_groups] == [0.1, 0.24] and muon.param_groups[1]["weight_decay"] == 0


def test_muon_takes_a_closure_as_sgd_does():
    net = FastNet(widths=(8, 8, 8), stem=8)
    muon = Muon(list(net.parameters()), lr=0.1, momentum=0.85, filter_lr=0.24, filter_momentum=0.6, weight_decay=0.0)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    before = net.blocks[0].weight.detach().clone()

    def closure():
        muon.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        return loss

    assert muon.step(closure).item() > 0 and not torch.equal(net.blocks[0].weight, before)


def test_the_muon_recipe_trains_and_resumes_exactly(compose_cfg, tiny_folder, tmp_path):
    """experiment=fastnet94_muon: Muon's momentum buffers travel in last.pt like SGD's."""
    small = ("experiment=fastnet94_muon", "batch_size=100", "epochs=3", "model.widths=[32,64,64]")  # narrow, as above

    def run(name, *extra):
        return train(compose_cfg(tiny_overrides(tiny_folder, tmp_path / name, *small, *extra)))

    straight = run("straight")
    assert straight["status"] == "finished" and 0.1 < straight["test_acc"] <= 1, "the tiny folder's colours are learnable"
    cut = run("cut", "max_minutes=0.00001")
    assert cut["status"] == "out_of_time"
    resumed = run("ignored", f"resume={tmp_path / 'cut' / 'last.pt'}")
    assert (resumed["test_acc"], resumed["test_acc_tta"]) == (straight["test_acc"], straight["test_acc_tta"])


def test_the_whitening_stem_sees_every_class_of_a_folder_copy(compose_cfg, tiny_folder, tmp_path, monkeypatch):
    """A folder copy lists its training images class by class: the stem is set from a draw over all of them, not the first ones."""
    from cifar.core.distributed import Ranks
    from cifar.run import build

    seen = []
    monkeypatch.setattr(build, "WHITENING_IMAGES", 200)  # of the tiny folder's 1,000 (100 a class, in class order)
    monkeypatch.setattr(FastNet, "init_whitening", lambda self, images: seen.append(images))
    cfg = compose_cfg(tiny_overrides(tiny_folder, tmp_path, "experiment=fastnet94", "data.val_split=0"))
    parts = build.build_parts(cfg, Ranks())
    (images,) = seen
    train = parts.train_batches.normalize(parts.train_set.images)
    labels = [int(parts.train_set.labels[(train - image).abs().flatten(1).amax(1).argmin()]) for image in images]
    assert len(images) == 200 and len(set(labels)) == 10, f"classes seen: {sorted(set(labels))}"
