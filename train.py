"""Train a CIFAR-10 model: `python train.py [overrides]`, `python train.py -m optim.lr=0.01,0.001`."""

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

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

# Only module-level names here: parallel launchers (joblib) pickle this function with what it refers to.
from cifar.console import print_interrupted, user_errors_as_one_line
from cifar.distributed import quiet_hydra_on_other_ranks
from cifar.folders import resume_in_its_own_folder
from cifar.lifecycle import search_value
from cifar.training import TrainingInterrupted, train


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    with user_errors_as_one_line():
        try:
            return search_value(train(cfg))
        except TrainingInterrupted as e:
            print_interrupted(e.epoch, e.last)
            sys.exit(130)
        except KeyboardInterrupt:  # between the signal handlers' hand-overs, outside any run
            interrupted_outside_a_run(None, None)


if __name__ == "__main__":
    # Launcher workers (submitit, here or on SLURM) start a fresh Python that must import `cifar` from this checkout.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parent), os.environ.get("PYTHONPATH")]))
    quiet_hydra_on_other_ranks()  # under torchrun, one run folder (rank 0's), not one per process
    with user_errors_as_one_line():
        sys.argv = resume_in_its_own_folder(sys.argv)  # a resumed run's .hydra/ and train.log stay in its folder
    main()
