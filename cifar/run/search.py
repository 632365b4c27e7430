"""A hyperparameter search (`hparams_search=...`, Hydra's Optuna sweeper) cut short: its trials left unfinished are told
as failed, so that a study kept in a database (`hydra.sweeper.storage=sqlite:///search.db`) holds no trial RUNNING
forever, and a search continued on it counts them as the failures they were.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

from hydra.core.hydra_config import HydraConfig

from cifar.errors import first_line
from cifar.run.folders import LOCK_NAME

log = logging.getLogger(__name__)


def fail_unfinished_trials() -> None:
    """In a search with a stored study: this job's trial, if still RUNNING, becomes FAIL. It is the RUNNING trial of the
    study whose parameters are this job's command-line values, asked for since the sweep took its folder (whose lock it
    wrote first). Anything optuna says against it is one warning: the run's own record is already written."""
    hc = HydraConfig.get()
    if hc.runtime.choices.get("hydra/sweeper") != "optuna" or not hc.sweeper.get("storage"):
        return
    try:
        import optuna  # the sweeper's own dependency, loaded only here

        began = datetime.fromtimestamp((Path(hc.sweep.dir) / LOCK_NAME).stat().st_mtime)  # optuna's times are local, naive
        study = optuna.load_study(study_name=hc.sweeper.study_name, storage=hc.sweeper.storage)
        given = set(hc.overrides.task)
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if trial.datetime_start and trial.datetime_start >= began and {f"{k}={v}" for k, v in trial.params.items()} <= given:
                study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
                log.info("the search's trial %d is recorded as failed in %s", trial.number, hc.sweeper.storage)
    except Exception as e:  # optuna and its database raise many types
        log.warning("could not record this job's trial as failed in %s (%s)", hc.sweeper.storage, first_line(e))
