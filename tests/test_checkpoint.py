import pytest
import torch

from cifar.checkpoint import atomic_save, load_checkpoint
from cifar.errors import UserError


def a_checkpoint():
    return {"epoch": 3, "model_state_dict": {"w": torch.ones(2)}, "optimizer_state_dict": {}, "loss": 0.5, "config": {"seed": 0}}


def test_round_trip_with_weights_only(tmp_path):
    atomic_save(a_checkpoint(), tmp_path / "ckpt.pt")
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert ckpt["epoch"] == 3 and torch.equal(ckpt["model_state_dict"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary file left behind


def test_a_failed_write_leaves_the_previous_file_intact(tmp_path):
    path = tmp_path / "last.pt"
    atomic_save(a_checkpoint(), path)
    before = path.read_bytes()

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom mid-write")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_save({"x": Unpicklable()}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such checkpoint"),
        (b"definitely not a checkpoint", "not a readable checkpoint"),
        ("truncated", "not a readable checkpoint"),
        ({"weights": torch.ones(1)}, "not a checkpoint of this project"),
    ],
)
def test_bad_files_give_one_clear_error_naming_the_file(tmp_path, content, message):
    path = tmp_path / "x.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "truncated":
        atomic_save(a_checkpoint(), path)
        path.write_bytes(path.read_bytes()[:100])
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(UserError, match=message) as e:
        load_checkpoint(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_a_file_that_would_run_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "evil.pt"
    torch.save({**a_checkpoint(), "payload": Evil()}, path)
    with pytest.raises(UserError, match="not a readable checkpoint"):
        load_checkpoint(path)
