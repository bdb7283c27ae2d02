"""The method registry. Importing this package registers every built-in method, explicitly."""

from .base import METHODS, LinearRecord, MethodSpec, register_method
from . import formats, pruning, quantization, structural  # noqa: F401  (registration by import, listed explicitly)

__all__ = ["METHODS", "LinearRecord", "MethodSpec", "register_method"]
