"""The method registry. Importing this package registers every built-in method, explicitly."""

from .base import METHODS, MethodConfig, MethodSpec, Sparsity, register_method
from . import formats, pruning, quantization, structural  # noqa: F401  (registration by import, listed explicitly)

__all__ = ["METHODS", "MethodConfig", "MethodSpec", "Sparsity", "register_method"]
