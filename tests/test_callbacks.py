import json

import pytest
from hydra._internal.callbacks import Callbacks
from omegaconf import OmegaConf

from cifar.errors import UserError
from cifar.results.report import sweep_verdict


def write_job(sweep, i, **summary):
    (sweep / str(i) / ".hydra").mkdir(parents=True)
    (sweep / str(i) / ".hydra" / "config.yaml").write_text(f"epochs: 1\nseed: {i}\n")  # Hydra writes it before the job starts
    (sweep / str(i) / "summary.json").write_text(json.dumps({"name": f"seed={i}", "train_seconds": 10.0, **summary}))


def test_sweep_verdict_reports_mean_and_std_over_finished_seeds(tmp_path, capsys):
    for i, acc in enumerate([0.70, 0.72, 0.74]):
        write_job(tmp_path, i, status="finished", best_val_acc=acc, test_acc=acc - 0.01)
    assert sweep_verdict(tmp_path) is True
    out = capsys.readouterr().out
    assert "72.00% ± 2.00%" in out and "71.00% ± 2.00%" in out


def test_sweep_verdict_names_jobs_that_did_not_finish(tmp_path, capsys):
    write_job(tmp_path, 0, status="diverged", best_val_acc=None, test_acc=None)
    write_job(tmp_path, 1, status="finished", best_val_acc=0.5, test_acc=0.5)
    (tmp_path / "2" / ".hydra").mkdir(parents=True)  # a job still running, or killed before it could write summary.json
    (tmp_path / "2" / ".hydra" / "config.yaml").write_text("epochs: 1\n")
    assert sweep_verdict(tmp_path) is False
    out = capsys.readouterr().out
    assert "2 of 3 jobs did not finish" in out and "0 (diverged)" in out and "2 (running or killed)" in out


def test_sweep_verdict_averages_over_seeds_only(tmp_path, capsys):
    for i, acc in enumerate([0.70, 0.72]):
        write_job(tmp_path, i, status="finished", best_val_acc=acc, test_acc=acc)
        (tmp_path / str(i) / ".hydra" / "config.yaml").write_text(f"epochs: 1\nseed: 0\noptim:\n  lr: {i + 1}\n")
    assert sweep_verdict(tmp_path) is True
    assert "±" not in capsys.readouterr().out  # two learning rates are two results, not one with a spread


def test_sweep_verdict_shows_the_tta_figure_where_the_runs_have_one(tmp_path, capsys):
    for i, acc in enumerate([0.90, 0.92]):  # a recipe tested with test_tta=flip_translate (fastnet94) reports both figures
        write_job(tmp_path, i, status="finished", best_val_acc=None, test_acc=acc, test_acc_tta=acc + 0.01, test_tta="flip_translate")
    assert sweep_verdict(tmp_path) is True
    out = capsys.readouterr().out
    assert "TTA" in out and "91.00% ± 1.41%" in out and "92.00% ± 1.41%" in out
    assert "best val" not in out, "no validation split (fastnet94 trains on all 50,000 images): no empty column"


def test_sweep_verdict_has_no_tta_column_without_tta(tmp_path, capsys):
    for i in range(2):
        write_job(tmp_path, i, status="finished", best_val_acc=0.5, test_acc=0.5, test_acc_tta=None, test_tta=None)
    sweep_verdict(tmp_path)
    assert "TTA" not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("hook", "callback", "check"),
    [
        ("on_run_start", "BeforeWriting", "check"),
        ("on_multirun_start", "BeforeWriting", "check"),
        ("on_run_start", "EvaluationChecks", "check_evaluate"),
    ],
)
def test_any_exception_in_a_check_stops_the_command_before_hydra_writes(monkeypatch, capsys, hook, callback, check):
    """Hydra's own dispatcher (what `@hydra.main` calls before it writes the run's folder) turns an exception raised in a
    callback into a warning and goes on: a check that fails with a bug must stop the command there all the same, with
    its traceback and exit status 1, and a user's mistake with one line and exit status 2."""

    def failing(error):
        def check_that_fails(config):
            raise error

        return check_that_fails

    config = OmegaConf.create({"plugins": [], "hydra": {"callbacks": {"checks": {"_target_": f"cifar.run.hydra_callbacks.{callback}"}}}})
    monkeypatch.setattr(f"cifar.run.hydra_callbacks.{check}", failing(ZeroDivisionError("a bug in a check")))
    with pytest.raises(SystemExit) as stopped:
        getattr(Callbacks(config), hook)(config=config)
    assert stopped.value.code == 1 and "ZeroDivisionError: a bug in a check" in capsys.readouterr().err
    monkeypatch.setattr(f"cifar.run.hydra_callbacks.{check}", failing(UserError("epochs=0: train for at least 1 epoch")))
    with pytest.raises(SystemExit) as stopped:
        getattr(Callbacks(config), hook)(config=config)
    assert stopped.value.code == 2 and "error: epochs=0: train for at least 1 epoch" in capsys.readouterr().out
