"""recfast's ops: compiled kernels with Python-side validation, dispatch and autograd.

Each op has a plain torch reference in ``recfast.ops.reference`` modules (``_<op>_ref``) that tests
compare against, and that runs where the extension lacks the tensor's device.
"""

from .bpr import *  # noqa: F401,F403
from .bpr import __all__ as _bpr_all
from .sampling import *  # noqa: F401,F403
from .sampling import __all__ as _sampling_all
from .spmm import *  # noqa: F401,F403
from .spmm import __all__ as _spmm_all
from .topk import *  # noqa: F401,F403
from .topk import __all__ as _topk_all

__all__ = [*_sampling_all, *_bpr_all, *_spmm_all, *_topk_all]
