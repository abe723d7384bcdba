"""recfast's models: thin ``torch.nn.Module``s over the kernels, registered by name."""

from .base import Recommender
from .classic import EASE, ItemKNN, Popularity
from .lightgcn import LightGCN
from .mf import BPRMF

__all__ = ["Recommender", "Popularity", "EASE", "ItemKNN", "BPRMF", "LightGCN"]
