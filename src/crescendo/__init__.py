"""crescendo: order-aware joint model compression."""

__version__ = "0.1.0"


def compress(*args, **kwargs):
    """`crescendo.api.compress`: apply a recipe to a model in place (see its docstring)."""
    from .api import compress as _compress

    return _compress(*args, **kwargs)


def load(directory, device="cpu"):
    """Rebuild a model saved with `--format packed`: returns (model, tokenizer, metadata)."""
    from .export import load as _load

    return _load(directory, device=device)


__all__ = ["__version__", "compress", "load"]
