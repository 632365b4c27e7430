"""What reaches the terminal: tables sized for it, names shown as the text they are."""

from cifar.console import MATRIX_MOST_CLASSES, print_evaluation


def evaluation_of(classes: list[str]) -> dict:
    """An evaluation.json's figures for a model that gets every test image of `classes` (2 each) right."""
    n = len(classes)
    return {"classes": classes, "n": 2 * n, "acc": 1.0, "per_class_acc": dict.fromkeys(classes, 1.0),
            "confusion": [[2 if i == j else 0 for j in range(n)] for i in range(n)]}  # fmt: skip


def test_a_200_class_evaluation_prints_no_matrix_a_terminal_cannot_show(capsys):
    print_evaluation(evaluation_of([f"class_{i:03d}" for i in range(200)]))
    out = capsys.readouterr().out
    assert "The confusion matrix of 200 classes is too wide for a terminal: it is in evaluation.json" in out
    assert "Confusion matrix (rows" not in out and len(out) < 30_000  # it printed 134 KB
    print_evaluation(evaluation_of([f"c{i}" for i in range(MATRIX_MOST_CLASSES)]))
    assert "Confusion matrix (rows: true class, columns: predicted)" in capsys.readouterr().out


def test_class_names_in_tables_are_text(capsys):
    print_evaluation(evaluation_of(["t-shirt [v2]", "cat[/bold]", "dog\x1b[2J"]))
    out = capsys.readouterr().out
    assert "t-shirt [v2]" in out and "cat[/bold]" in out and "dog\\x1b[2J" in out and "\x1b[2J" not in out
