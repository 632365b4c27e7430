"""User mistakes end in one line that says what to fix, a non-zero exit, and no traceback."""

from tests.conftest import run_script


def test_missing_data_names_the_folder_and_both_ways_out(tmp_path):
    proc = run_script("train.py", "data.download=false", "wandb.mode=disabled", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stdout + proc.stderr
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("error:")]
    assert str(tmp_path / "data") in line and "data.download=true" in line and "data.root" in line
    assert not list(tmp_path.glob("outputs/*/*/ckpt.pt"))
