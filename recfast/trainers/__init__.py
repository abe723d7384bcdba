"""Training loops: ``Trainer`` (single- and multi-process), its optimizers and distributed helpers."""

from .trainer import Trainer, epoch_seed

__all__ = ["Trainer", "epoch_seed"]
