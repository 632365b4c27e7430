"""Train a CIFAR-10 model: `python train.py [overrides]`, `python train.py -m optim.lr=0.01,0.001` (or `cifar-train ...`)."""

import sys

from cifar.signals import stop_with_line

# Ctrl-C or SIGTERM from the first line on: the imports below take seconds, and Hydra starts (and a sweep moves between
# jobs) outside any run. Inside a run, train() takes over and stops it as interrupted, saying how to resume.
interrupted_outside_a_run = stop_with_line("interrupted: no run was training (nothing to save)")

from pathlib import Path

import hydra
from omegaconf import DictConfig

from cifar.config.compose import register
from cifar.config.old_keys import refuse_old_keys
from cifar.console import print_interrupted, user_errors_as_one_line

# Only module-level names here: parallel launchers (joblib) pickle this function with what it refers to.
from cifar.core.distributed import quiet_hydra_on_other_ranks
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
            interrupted_outside_a_run()
        if summary["status"] != "finished" and not in_sweep():
            # As a sweep with such a job does: a script or scheduler chained on this run must not take a diverged run (or one
            # cut by max_minutes) for a finished one. Its summary.json and the lines above say what happened.
            sys.exit(1)
        return search_value(summary)


def cli() -> None:
    """`python train.py ...` and `cifar-train ...` (pyproject.toml's console script)."""
    quiet_hydra_on_other_ranks()  # under torchrun, one run folder (rank 0's), not one per process
    with user_errors_as_one_line():  # before Hydra, whose refusal of a key the config lacks would not say today's form
        refuse_old_keys(sys.argv[1:])
    main()


if __name__ == "__main__":
    cli()
