"""The method registry. Importing this package registers every built-in method, explicitly."""

from . import coarse, finetune, formats, lora, mixact, pruning, quantization, sharing, structural  # noqa: F401  (registration by import, listed explicitly)
from .base import METHODS, MethodConfig, MethodSpec, Sparsity, register_method

__all__ = ["METHODS", "MethodConfig", "MethodSpec", "Sparsity", "register_method"]
