"""Interaction data: the ``Interactions`` container, file loaders, splits, synthetic data and
the training loaders that feed the kernels."""

from .interactions import *  # noqa: F401,F403
from .interactions import __all__ as _interactions_all
from .io import *  # noqa: F401,F403
from .io import __all__ as _io_all
from .loaders import *  # noqa: F401,F403
from .loaders import __all__ as _loaders_all
from .split import *  # noqa: F401,F403
from .split import __all__ as _split_all
from .synthetic import *  # noqa: F401,F403
from .synthetic import __all__ as _synthetic_all

__all__ = [*_interactions_all, *_io_all, *_split_all, *_synthetic_all, *_loaders_all]
