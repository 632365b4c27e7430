"""Weight EMA (ema_decay) and MixUp/CutMix (data.augment's Mix entry): what they compute, what a run with them
validates, checkpoints and tests, and that such a run resumes exactly."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_config, read_metrics, read_summary, tiny_overrides
from torch import nn

from cifar.core.augment import Mix
from cifar.core.distributed import ranks_from_environment
from cifar.core.ema import WeightEma
from cifar.core.scoring import score
from cifar.errors import UserError
from cifar.run.build import build_parts
from cifar.run.evaluation import evaluate
from cifar.run.lifecycle import TrainingInterrupted
from cifar.run.training import train


def test_the_average_follows_timms_warm_up_and_averages_batchnorm_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = WeightEma(model, decay=0.5)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    for n in range(4):
        with torch.no_grad():
            model[0].weight.add_(1.0)
        model.train()(torch.randn(8, 3))  # moves BatchNorm's running statistics
        keep = min(0.5, (1 + n + 1) / (10 + n + 1))  # after the (n+1)-th update: 2/11, 3/12, then the decay's 0.5
        for k, v in model.state_dict().items():
            expected[k] = v.clone() if not v.is_floating_point() else keep * expected[k] + (1 - keep) * v
        ema.on_train_batch_end(None)
    averaged = ema.module.state_dict()
    for k, v in expected.items():
        torch.testing.assert_close(averaged[k], v, msg=k)
    assert averaged["1.num_batches_tracked"] == 4, "a count is copied, not averaged"
    assert not torch.equal(averaged["0.weight"], model[0].weight), "the average lags the weights"


def test_mixing_hands_the_step_soft_labels_and_mixes_with_one_or_the_other():
    from torchvision.transforms import v2

    assert isinstance(Mix(10, mixup_alpha=0.8).mixer, v2.MixUp) and isinstance(Mix(10, cutmix_alpha=1.0).mixer, v2.CutMix)
    assert isinstance(Mix(10, mixup_alpha=0.8, cutmix_alpha=1.0).mixer, v2.RandomChoice)
    with pytest.raises(UserError, match="mixes nothing"):
        Mix(10)
    x, y = torch.rand(16, 3, 32, 32).contiguous(memory_format=torch.channels_last), torch.arange(16) % 10
    mixed, soft = Mix(10, mixup_alpha=0.8, cutmix_alpha=1.0)(x, y, torch.Generator())
    assert soft.shape == (16, 10) and soft.dtype == torch.float32
    torch.testing.assert_close(soft.sum(1), torch.ones(16))
    assert (soft > 0).sum(1).max() == 2, "each image's label mixes two classes"
    assert mixed.is_contiguous(memory_format=torch.channels_last) and not torch.equal(mixed, x)


def test_an_ema_run_validates_checkpoints_and_tests_the_average_and_resumes_exactly(tiny_folder, tmp_path):
    # FastNet for its BatchNorm statistics, which the average follows too, at a width that is not the point; 400 of the
    # tiny folder's images (320 to train on, 80 to validate): fewer steps an epoch, the same checks.
    small = ("model.widths=[16,32,32]", "data.subset=400")

    def run(name, *extra, wrap_step=None):
        overrides = tiny_overrides(tiny_folder, tmp_path / name, "ema_decay=0.9", "epochs=3", "model=fastnet", *small, *extra)
        return train(compose_config(overrides), wrap_step=wrap_step)

    straight = run("straight")
    ckpt = torch.load(tmp_path / "straight" / "ckpt.pt", weights_only=True)
    assert ckpt["ema_updates"] == 40 * ckpt["epoch"]  # 320 training images at batch 8: 40 steps an epoch
    raw, average = ckpt["raw_model_state_dict"], ckpt["model_state_dict"]
    assert raw.keys() == average.keys() and not all(torch.equal(raw[k], average[k]) for k in raw)

    # validation scored the average: the checkpoint's val_acc is the average's, not the raw weights'
    cfg = compose_config(tiny_overrides(tiny_folder, tmp_path / "scoring", "model=fastnet", *small))
    parts = build_parts(cfg, ranks_from_environment())
    scores = {}
    for name, weights in (("raw", raw), ("average", average)):
        parts.model.load_state_dict(weights)
        scores[name] = score(parts.model, parts.val_batches, parts.precision, len(parts.data.classes))
    assert (scores["average"].acc, scores["average"].loss) == (ckpt["val_acc"], ckpt["val_loss"])
    assert scores["raw"].loss != ckpt["val_loss"], "the check tells the raw weights from the average"
    # tested the average, as evaluate.py does on ckpt.pt
    evaluation = compose_config(
        [f"ckpt={tmp_path / 'straight' / 'ckpt.pt'}", f"data.root={straight['config']['data']['root']}", f"output_dir={tmp_path / 'eval'}"],
        "evaluate",
    )
    assert evaluate(evaluation)["acc"] == straight["test_acc"]

    calls = []

    def ctrl_c_in_epoch_2(step):
        def faulty(x, y):
            calls.append(1)
            if len(calls) == 60:
                raise KeyboardInterrupt
            return step(x, y)

        return faulty

    with pytest.raises(TrainingInterrupted):
        run("resumed", wrap_step=ctrl_c_in_epoch_2)
    resumed = run("x", f"resume={tmp_path / 'resumed' / 'last.pt'}")
    assert read_metrics(tmp_path / "resumed") == read_metrics(tmp_path / "straight")
    assert resumed["test_acc"] == straight["test_acc"]
    a, b = (torch.load(tmp_path / name / "last.pt", weights_only=True) for name in ("straight", "resumed"))
    for key in ("model_state_dict", "raw_model_state_dict"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key


def test_a_mixed_run_trains_on_soft_labels_with_smoothing_and_resumes_exactly(tiny_folder, tmp_path):
    def run(name, *extra):
        mixing = (
            "++data.augment.mix={_target_: cifar.core.augment.Mix, mixup_alpha: 0.4, cutmix_alpha: 1.0}",
            "loss.label_smoothing=0.1",
            "epochs=2",
        )
        return train(compose_config(tiny_overrides(tiny_folder, tmp_path / name, *mixing, *extra)))

    run("straight")
    plain = train(compose_config(tiny_overrides(tiny_folder, tmp_path / "plain", "loss.label_smoothing=0.1", "epochs=2")))
    assert read_metrics(tmp_path / "straight")[0]["train/loss"] > read_metrics(tmp_path / "plain")[0]["train/loss"]
    assert plain["status"] == read_summary(tmp_path / "straight")["status"] == "finished"

    run("resumed", "epochs=1")
    run("x", f"resume={tmp_path / 'resumed' / 'last.pt'}")  # torch's generator, saved in last.pt, draws the same mixes
    assert read_metrics(tmp_path / "resumed") == read_metrics(tmp_path / "straight")


@pytest.mark.parametrize(
    "override, message",
    [("ema_decay=1", "ema_decay=1.0: use 0 (off) or a value in (0, 1)"),
     ("++data.augment.mix={_target_: cifar.core.augment.Mix, mixup_alpha: -1, cutmix_alpha: 0}", "Mix's mixup_alpha=-1"),
     ("++data.augment.mix={_target_: cifar.core.augment.Mix, mixup_alpha: 0, cutmix_alpha: -0.5}", "Mix's cutmix_alpha=-0.5")],
)  # fmt: skip
def test_out_of_range_values_are_refused_in_one_line(tmp_path, override, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        train(compose_config(tiny_overrides(tmp_path / "none", tmp_path / "run", override)))
