"""Tools beside the training: the benchmark (`python -m cifar.tools.bench`). May import any layer."""
