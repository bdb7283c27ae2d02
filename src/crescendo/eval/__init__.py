"""Evaluation: perplexity under a protocol."""

from .perplexity import PerplexityResult, causal_lm_window_losses, perplexity

__all__ = ["PerplexityResult", "causal_lm_window_losses", "perplexity"]
