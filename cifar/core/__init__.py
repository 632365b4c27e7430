"""The machine-learning core: CIFAR-10 as device tensors, the networks, optimizers, schedules, the loop's callbacks, one
training step, how a model is scored. Imports torch, torchvision, cifar.errors and cifar.hold only: nothing of a run."""
