"""A run's name (W&B's, summary.json's, the report's run column) tells its experiment: two experiments' `seed=1` runs
must not share one name in a W&B project."""

import pytest

from tests.conftest import read_summary, run_script, tiny_overrides


@pytest.mark.slow  # two or more real processes in a row
def test_a_run_name_leads_with_its_experiment_single_or_swept(tiny_folder, tmp_path):
    quick = ["epochs=1", "data.subset=100", "batch_size=50", "data.augment.flip=null"]
    single = tmp_path / "single"
    run_script("train.py", "experiment=fastnet", "seed=1", *tiny_overrides(tiny_folder, single, *quick), cwd=tmp_path)
    sweep = tmp_path / "sweep"
    each_job_its_folder = [o for o in tiny_overrides(tiny_folder, sweep, *quick) if not o.startswith("output_dir=")]
    run_script("train.py", "-m", "experiment=net_fast", "seed=1,2", *each_job_its_folder, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    first, *rest = read_summary(single)["name"].split(",")  # a single run is named by all its overrides
    assert first == "experiment=fastnet" and "seed=1" in rest
    assert [read_summary(sweep / job)["name"] for job in ("0", "1")] == ["experiment=net_fast,seed=1", "experiment=net_fast,seed=2"]
