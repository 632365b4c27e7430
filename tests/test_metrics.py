"""The config's `metrics` (name -> a torchmetrics class): computed on the validation split each epoch with the logits
validation already computes, recorded as val/<name> in metrics.jsonl, W&B, TensorBoard and the report; refused in one
line, before anything is written, where the config names what is not a metric."""

import pytest
import torch

from cifar.config.identity import differing_settings
from cifar.core.distributed import Ranks
from cifar.errors import UserError
from cifar.records import EpochRecord
from cifar.results.report import report
from cifar.run.build import build_model, eval_batches, load_data
from cifar.run.checks import check, unused_settings
from cifar.run.metrics import build_metrics
from cifar.run.targets import build_each
from tests.conftest import one_clear_line, read_metrics, read_summary, run_script, tiny_overrides, wandb_run_of

TOP3 = ("+metrics.top3._target_=torchmetrics.classification.MulticlassAccuracy", "+metrics.top3.top_k=3")


def top3_of_checkpoint(cfg, ckpt: dict) -> float:
    """torchmetrics' MulticlassAccuracy(top_k=3) as it defaults (average="macro"), in plain torch: each class's share of
    validation images whose class is among the checkpoint's 3 largest logits, averaged over the classes."""
    _, _, val_set, _ = load_data(cfg, Ranks())
    model = build_model(cfg, torch.device("cpu"), 10)
    model.load_state_dict(ckpt["model_state_dict"])
    model.eval()
    with torch.no_grad():
        pairs = [(model(x), y) for x, y in eval_batches(cfg, val_set, torch.device("cpu"), 1000).epoch()]
    logits, labels = torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])
    hit = (logits.topk(3, dim=1).indices == labels[:, None]).any(1).double()
    return torch.stack([hit[labels == c].mean() for c in labels.unique()]).mean().item()


def test_a_torchmetrics_class_named_on_the_command_line_is_each_epochs_val_figure_everywhere(tiny_folder, tmp_path, compose_cfg):
    out = tmp_path / "run"
    overrides = tiny_overrides(tiny_folder, out, "amp=false", *TOP3)
    run_script("train.py", *overrides, "wandb.mode=offline", "tensorboard=true", f"hydra.run.dir={out}", cwd=tmp_path)
    rows = read_metrics(out)
    assert all(0 <= row["val/top3"] <= 1 and row["val/top3"] >= row["val/acc"] - 1e-6 for row in rows), rows
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    (best,) = [row for row in rows if row["epoch"] == ckpt["epoch"]]
    assert best["val/top3"] == pytest.approx(top3_of_checkpoint(compose_cfg(overrides), ckpt), abs=1e-6)
    assert wandb_run_of(out)["summary"]["val/top3"] == pytest.approx(rows[-1]["val/top3"])  # W&B keeps the last epoch's
    from tests.test_loggers import read_board

    scalars, _ = read_board(out)
    assert scalars["val/top3"] == [(row["epoch"], pytest.approx(row["val/top3"])) for row in rows]
    assert "test_acc" in read_summary(out)
    md = report([str(out)], tmp_path / "report").read_text()  # a column of the runs' table, at the best epoch
    assert "| val top3 |" in md and f"| {best['val/top3']:.4g} |" in md


def test_a_bad_metric_target_is_refused_in_one_line_with_nothing_written(tiny_folder, tmp_path):
    out = tmp_path / "run"
    proc = run_script(
        "train.py",
        *tiny_overrides(tiny_folder, out, "+metrics.copy._target_=shutil.copyfile"),
        f"hydra.run.dir={out}",
        cwd=tmp_path,
        check=False,
    )
    one_clear_line(proc, 2, "metrics.copy._target_=shutil.copyfile", "refused, nothing was imported or called")
    assert not out.exists()


@pytest.mark.parametrize(
    ("overrides", "needles"),
    [
        (["+metrics.m._target_=cifar.core.models.Net"], ["metrics.m._target_=cifar.core.models.Net", "update(preds, target)"]),
        (["+metrics.m._target_=torchmetrics.functional.accuracy"], ["metrics.m._target_", "a metric class"]),
        (["+metrics.m._target_=os.system"], ["metrics.m._target_=os.system", "nothing was imported"]),
        (["+metrics.loss._target_=torchmetrics.classification.MulticlassAccuracy"], ["metrics.loss", "val/loss"]),
        (["+metrics.m._target_=torchmetrics.classification.MulticlassAccuracy", "+metrics.m.top_k=three"], ["metrics.m.top_k=three"]),
    ],
)
def test_what_is_not_a_metric_is_refused_before_anything_is_built(compose_cfg, overrides, needles):
    with pytest.raises(UserError) as e:
        check(compose_cfg(overrides))
    assert all(n in str(e.value) for n in needles), str(e.value)


def test_the_run_offers_num_classes_to_a_class_that_takes_it_and_refuses_a_metric_of_many_numbers(compose_cfg):
    cpu = torch.device("cpu")
    built = build_each(
        compose_cfg([*TOP3, "+metrics.binary._target_=torchmetrics.classification.BinaryAccuracy"]).metrics, "metric", num_classes=10
    )
    assert built["top3"].num_classes == 10 and built["top3"].top_k == 3 and "binary" in built  # BinaryAccuracy takes none
    with pytest.raises(UserError, match=r"metrics.binary: .*Predictions and targets are expected to have the same shape"):
        build_metrics(compose_cfg(["+metrics.binary._target_=torchmetrics.classification.BinaryAccuracy"]).metrics, 10, cpu)
    with pytest.raises(UserError, match=r"metrics.top3: .*Unexpected keyword arguments: `topk`"):  # **kwargs: torchmetrics judges
        build_metrics(compose_cfg([TOP3[0], "+metrics.top3.topk=3"]).metrics, 10, cpu)
    with pytest.raises(UserError, match=r"metrics.top3.num_classes=5 but this run's is 10"):
        build_metrics(compose_cfg([*TOP3, "+metrics.top3.num_classes=5"]).metrics, 10, cpu)
    with pytest.raises(UserError, match=r"metrics.top3: .*top_k"):
        build_metrics(compose_cfg([TOP3[0], "+metrics.top3.top_k=11"]).metrics, 10, cpu)
    with pytest.raises(UserError, match=r"metrics.cm: MulticlassConfusionMatrix.compute\(\) gives a tensor of shape \(10, 10\)"):
        build_metrics(compose_cfg(["+metrics.cm._target_=torchmetrics.classification.MulticlassConfusionMatrix"]).metrics, 10, cpu)
    assert build_metrics(compose_cfg(["+metrics.top3=null"]).metrics, 10, cpu) == {}


def test_metrics_are_bookkeeping_and_unused_without_a_validation_split(compose_cfg):
    cfg = compose_cfg(["data.val_split=0", *TOP3])
    (line,) = unused_settings(cfg, {"data.val_split", "metrics.top3._target_", "metrics.top3.top_k"}, {}, False)
    assert line.startswith("metrics=") and "data.val_split=0 has no validation split" in line
    # what the run computes besides its figures: a run resumed, or a sweep continued, with other metrics is the same experiment
    assert differing_settings({"metrics": {}, "epochs": 1}, {"metrics": {"top3": {"top_k": 3}}, "epochs": 1}) == ""


def test_an_epochs_metrics_travel_in_its_row_and_rows_without_them_read_as_before():
    record = EpochRecord(
        epoch=1, train_loss=1.0, lr=0.1, epoch_seconds=2.0, images_per_sec=3.0, val_loss=0.5, val_acc=0.4, metrics={"top3": 0.9}
    )
    assert record.row()["val/top3"] == 0.9 and record.row()["val/acc"] == 0.4
    assert EpochRecord.from_row(record.row()) == record
    old = {"epoch": 1, "train/loss": 1.0, "lr": 0.1, "time/epoch_seconds": 2.0, "time/images_per_sec": 3.0, "val/acc": 0.4}
    assert EpochRecord.from_row(old).metrics == {} and EpochRecord.from_row(old).row() == old
