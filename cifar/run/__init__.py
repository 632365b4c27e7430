"""One training run and its machinery: the config and its checks, the build, the loop (training.py), the state and
its checkpoints, the run's folder, its record (metrics.jsonl, summary.json, W&B) and how it ends. Imports cifar.core."""
