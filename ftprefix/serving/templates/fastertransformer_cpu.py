"""Triton python model `fastertransformer` (CPU twin): the FT backend's interface on ftprefix.engine."""

import ftprefix_site  # noqa: F401  (before numpy: the serving virtualenv goes on sys.path)

from ftprefix.serving.triton_model import TritonPythonModel  # noqa: F401
