"""recfast's models: thin ``torch.nn.Module``s over the kernels, registered by name."""

from .base import Recommender

__all__ = ["Recommender"]
