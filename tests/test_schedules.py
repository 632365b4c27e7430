"""Schedule shapes: the learning rate at the start, the peak and the end of training."""

import itertools

import pytest
import torch

from cifar.core import schedules
from cifar.errors import UserError


def lrs(build, total=100, **params):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = build(opt, total_steps=total, **params)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_none_is_constant():
    assert set(lrs(schedules.none)) == {0.1}


def test_step_decays_at_the_milestones_after_warmup():
    lr = lrs(schedules.step, milestones=[0.5, 0.75], gamma=0.1, warmup=0.1)
    assert lr[0] == pytest.approx(0.01) and lr[9] == pytest.approx(0.1)  # linear warm-up over 10 steps
    assert lr[49] == pytest.approx(0.1) and lr[50] == pytest.approx(0.01) and lr[75] == pytest.approx(0.001)


def test_cosine_warms_up_peaks_and_ends_at_final():
    lr = lrs(schedules.cosine, warmup=0.05, final=0.0)
    assert lr[0] == pytest.approx(0.02) and lr[4] == pytest.approx(0.1) and max(lr) == pytest.approx(0.1)
    assert lr[-1] == pytest.approx(0.0, abs=1e-9)
    assert all(a >= b for a, b in itertools.pairwise(lr[5:]))  # never rises after the warm-up


def test_onecycle_rises_to_the_peak_then_falls_to_final():
    lr = lrs(schedules.onecycle, peak_at=0.25, start=0.1, final=0.0)
    assert lr[0] == pytest.approx(0.01) and lr[25] == pytest.approx(0.1) and max(lr) == pytest.approx(0.1)
    assert lr[-1] == pytest.approx(0.0, abs=1e-9) and lr.index(max(lr)) == 25


@pytest.mark.parametrize(
    "build, params, line",
    [
        (schedules.step, {"milestones": [0.5, 2]}, "sched.milestones=[0.5, 2]: fractions of training in (0, 1]"),
        (schedules.step, {"milestones": [0.5], "gamma": 0}, "sched.gamma=0: the lr multiplier must be positive (0.1 is the usual)"),
        (schedules.cosine, {"warmup": 1.0}, "sched.warmup=1.0: a fraction of training in [0, 1)"),
        (schedules.onecycle, {"start": -0.1}, "sched.start=-0.1: a fraction of optim.lr, 0 or more"),
    ],
)
def test_each_schedule_refuses_its_own_arguments_in_one_line(build, params, line):
    """A schedule checks its own arguments as it is built: the run's rehearsal shows the line before anything is written."""
    with pytest.raises(UserError) as e:
        lrs(build, **params)
    assert str(e.value) == line
