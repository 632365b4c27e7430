"""User mistakes end in one line that says what to fix, a non-zero exit, and no traceback."""

import pytest

from cifar.console import user_errors_as_one_line
from cifar.errors import UserError
from tests.conftest import one_clear_line, run_script, write_image_folder


def test_missing_data_names_the_folder_and_both_ways_out(tmp_path):
    proc = run_script("train.py", "data.download=false", "wandb.mode=disabled", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stdout + proc.stderr
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("error:")]
    assert str(tmp_path / "data") in line and "data.download=true" in line and "data.root" in line
    assert not list(tmp_path.glob("outputs/*/*/ckpt.pt"))


@pytest.mark.parametrize(
    ("message", "shown"),
    [
        ("test holds class folders [cat] (1); train/ holds [cat, dog] (2): missing [dog] (1)", None),  # lists vanished
        ("acc_thresholds=[nan]: accuracies are fractions in (0, 1]", None),  # printed as 'acc_thresholds=:'
        ("/data/[draft]/cifar is missing", None),  # printed as another path
        ("/data/[/old]/cifar is missing", None),  # crashed the handler itself
        ("[bold red]not styled[/bold red]", None),
        ("a name\x1b]0;retitled\x07 with a\nnew line", "a name\\x1b]0;retitled\\x07 with a\\nnew line"),  # one line, no escape
    ],
    ids=["lists", "nan", "draft", "closing_tag", "tags", "control"],
)
def test_a_refusal_is_printed_as_the_text_it_is(capsys, message, shown):
    with pytest.raises(SystemExit) as stop, user_errors_as_one_line():
        raise UserError(message)
    assert stop.value.code == 2
    assert capsys.readouterr().out == f"error: {shown or message}\n"


def test_a_class_folder_with_brackets_is_named_whole_in_a_real_refusal(tmp_path):
    root = write_image_folder(tmp_path / "clothes", {"train": 2}, classes=("cat", "t-shirt [v2]"))
    write_image_folder(root, {"test": 2}, classes=("cat",))
    proc = run_script("train.py", "data=folder", f"data.root={root}", "wandb.mode=disabled", "device=cpu", cwd=tmp_path, check=False)
    one_clear_line(proc, 2, "holds class folders [cat] (1); train/ holds [cat, t-shirt [v2]] (2): missing [t-shirt [v2]] (1)")
