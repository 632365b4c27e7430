"""profile_steps > 0 (debug=profile): torch.profiler over a few training steps. The operators that took the time are
printed (and kept in profile/table.txt); the trace, for https://ui.perfetto.dev or chrome://tracing, is written to
profile/trace.json in the run folder. The first steps are not recorded: they pick cuDNN algorithms, allocate
memory and capture the CUDA graph, which later steps do not. Costs nothing once the recorded steps are done.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function, schedule

from cifar.console import console
from cifar.core.steps import Stepped
from cifar.errors import UserError

log = logging.getLogger(__name__)

UNRECORDED_STEPS = 4  # CapturedStep runs 3 eager warm-up steps and captures on the 4th
ROWS = 20  # operators in the printed table


def too_few_steps_advice(steps: int, steps_in_run: int, limit_batches: int | None) -> str:
    """What would give the profiler its steps: each option only where it would change something."""
    options = []
    if (fits := steps_in_run - UNRECORDED_STEPS) >= 1:
        options.append(f"lower profile_steps to {fits}")
    if limit_batches:
        options.append(f"raise limit_batches (now {limit_batches}) so that the run takes {UNRECORDED_STEPS + steps} steps")
    else:
        options.append(f"give the run {UNRECORDED_STEPS + steps} steps or more (more epochs, a smaller batch_size or a larger data.subset)")
    return " or ".join(options)


class ProfiledSteps:
    """`step` under torch.profiler: steps UNRECORDED_STEPS + 1 to UNRECORDED_STEPS + `steps` are recorded."""

    def __init__(self, step, steps: int, folder: Path, device: torch.device, steps_in_run: int, limit_batches: int | None = None):
        if UNRECORDED_STEPS + steps > steps_in_run:
            raise UserError(
                f"profile_steps={steps} records steps {UNRECORDED_STEPS + 1}-{UNRECORDED_STEPS + steps} and this run takes "
                f"{steps_in_run}: {too_few_steps_advice(steps, steps_in_run, limit_batches)}"
            )
        self.step, self.folder, self.on_gpu = step, folder / "profile", device.type == "cuda"
        self.profiler = profile(
            activities=[ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if self.on_gpu else [])],
            schedule=schedule(wait=UNRECORDED_STEPS // 2, warmup=UNRECORDED_STEPS - UNRECORDED_STEPS // 2, active=steps, repeat=1),
            on_trace_ready=self._report,
            record_shapes=True,
        )
        self.profiler.start()
        self.steps_left = UNRECORDED_STEPS + steps

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> Stepped:
        with record_function("train_step"):
            out = self.step(x, y)
        if self.steps_left:
            self.steps_left -= 1
            self.profiler.step()  # after the last recorded step: _report
            if not self.steps_left:
                self.profiler.stop()
        return out

    def _report(self, prof: profile) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(self.folder / "trace.json"))
        table = prof.key_averages().table(sort_by="self_cuda_time_total" if self.on_gpu else "self_cpu_time_total", row_limit=ROWS)
        (self.folder / "table.txt").write_text(table)
        console.print(table, markup=False, highlight=False, soft_wrap=True)
        log.info("Profiled %d training steps: %s, %s", prof.step_num, self.folder / "table.txt", self.folder / "trace.json")
