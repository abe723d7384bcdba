"""recfast's models: thin ``torch.nn.Module``s over the kernels, registered by name."""

from .base import Recommender
from .classic import EASE, ItemKNN, Popularity
from .lightgcn import LightGCN
from .mf import BPRMF
from .ncf import GMF, MLP, NeuMF
from .biased_mf import BiasedMF
from .autoencoders import DAE, MultVAE
from .hybrid import HybridMF
from .ngcf import NGCF

__all__ = ["Recommender", "Popularity", "EASE", "ItemKNN", "BPRMF", "LightGCN", "GMF", "MLP", "NeuMF", "BiasedMF",
           "MultVAE", "DAE", "HybridMF", "NGCF"]
