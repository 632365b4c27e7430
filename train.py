"""Train a CIFAR-10 model: `python train.py [overrides]`, `python train.py -m optim.lr=0.01,0.001` (or `cifar-train ...`)."""

import signal
import sys


def interrupted_outside_a_run(signum, frame):
    print("interrupted: no run was training (nothing to save)", flush=True)
    sys.exit(130)  # the shell's code for Ctrl-C


# Ctrl-C or SIGTERM from the first line on: the imports below take seconds, and Hydra starts (and a sweep moves between
# jobs) outside any run. Inside a run, train() takes over and stops it as interrupted, saying how to resume.
for stop_signal in (signal.SIGINT, signal.SIGTERM):
    if signal.getsignal(stop_signal) is not signal.SIG_IGN:  # a background job's ignored Ctrl-C stays ignored
        signal.signal(stop_signal, interrupted_outside_a_run)

from pathlib import Path

import hydra
from omegaconf import DictConfig

# Only module-level names here: parallel launchers (joblib) pickle this function with what it refers to.
from cifar.core.distributed import quiet_hydra_on_other_ranks
from cifar.run.config import refuse_moved_keys, register
from cifar.run.console import print_interrupted, user_errors_as_one_line
from cifar.run.lifecycle import in_sweep, search_value, sweep_and_search
from cifar.run.search import fail_unfinished_trials
from cifar.run.training import TrainingInterrupted, train

# conf/ beside this file, as an absolute path: Hydra then finds it however this module is started (python train.py, or
# cifar-train, which imports it as a module and would look for a `conf` package).
CONF = str(Path(__file__).resolve().parent / "conf")
register()  # the schema and resolvers conf/ uses, before Hydra composes it


@hydra.main(version_base="1.3", config_path=CONF, config_name="config")
def main(cfg: DictConfig) -> float:
    with user_errors_as_one_line():
        try:
            summary = train(cfg)
        except TrainingInterrupted as e:
            sweep, search = sweep_and_search()
            if search:
                fail_unfinished_trials()
            print_interrupted(e.epoch, e.last, sweep, search)
            sys.exit(130)
        except KeyboardInterrupt:  # between the signal handlers' hand-overs, outside any run
            interrupted_outside_a_run(None, None)
        if summary["status"] != "finished" and not in_sweep():
            # As a sweep with such a job does: a script or scheduler chained on this run must not take a diverged run (or one
            # cut by max_minutes) for a finished one. Its summary.json and the lines above say what happened.
            sys.exit(1)
        return search_value(summary)


def cli() -> None:
    """`python train.py ...` and `cifar-train ...` (pyproject.toml's console script)."""
    quiet_hydra_on_other_ranks()  # under torchrun, one run folder (rank 0's), not one per process
    with user_errors_as_one_line():  # before Hydra, whose own words for a key it lacks take four lines
        refuse_moved_keys(sys.argv[1:])
    main()


if __name__ == "__main__":
    cli()
