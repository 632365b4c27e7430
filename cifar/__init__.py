# Registers the training config's schema with Hydra's ConfigStore on any import of the package,
# so conf/config.yaml's `train_schema` default resolves for train.py, the tests and the benchmark alike.
from cifar import config as _config  # noqa: F401
