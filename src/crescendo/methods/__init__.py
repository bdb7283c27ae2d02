"""The method registry. Importing this package registers every built-in method, explicitly."""

from . import coarse, formats, mixact, pruning, quantization, structural  # noqa: F401  (registration by import, listed explicitly)
from .base import METHODS, MethodConfig, MethodSpec, Sparsity, register_method

__all__ = ["METHODS", "MethodConfig", "MethodSpec", "Sparsity", "register_method"]
