"""A hyperparameter search (`hparams_search=...`, Hydra's Optuna sweeper) cut short: its trials left unfinished are told
as failed, so that a study kept in a database (`hydra.sweeper.storage=sqlite:///search.db`) holds no trial RUNNING
forever, and a search continued on it counts them as the failures they were.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

from hydra.core.hydra_config import HydraConfig

from cifar.run.folders import LOCK_NAME

log = logging.getLogger(__name__)


def fail_unfinished_trials() -> None:
    """In a search with a stored study: every trial still RUNNING that this search asked for (started since the sweep
    took its folder, whose lock it wrote first) becomes FAIL. A study that several searches share at once is not
    told apart by this; in-memory studies end with the process anyway."""
    hc = HydraConfig.get()
    if hc.runtime.choices.get("hydra/sweeper") != "optuna" or not hc.sweeper.get("storage"):
        return
    import optuna  # the sweeper's own dependency, loaded only here

    began = datetime.fromtimestamp((Path(hc.sweep.dir) / LOCK_NAME).stat().st_mtime)  # optuna's times are local, naive
    study = optuna.load_study(study_name=hc.sweeper.study_name, storage=hc.sweeper.storage)
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    ours = [t for t in running if t.datetime_start and t.datetime_start >= began]
    for trial in ours:
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    if ours:
        log.info("the search's unfinished trials %s are recorded as failed in %s", [t.number for t in ours], hc.sweeper.storage)
