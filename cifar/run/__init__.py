"""One training run and its machinery: the config's checks, the build, the run's assembly (training.py) and its loop (engine.py), the state and its
checkpoints, the run's folder, its record (metrics.jsonl, summary.json, W&B) and how it ends; evaluate.py's evaluation
and your own images classified (a checkpoint rebuilt and run). Imports cifar.core, cifar.config and cifar.results."""
