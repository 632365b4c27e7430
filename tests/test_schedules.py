"""Schedule shapes: the learning rate at the start, the peak and the end of training."""

import itertools

import pytest
import torch

from cifar.core import schedules


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
