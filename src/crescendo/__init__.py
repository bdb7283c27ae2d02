"""crescendo: order-aware joint model compression."""

__version__ = "0.1.0"
