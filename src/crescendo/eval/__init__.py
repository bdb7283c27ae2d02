"""Evaluation: perplexity under a protocol; top-1 accuracy of image classifiers."""

from .accuracy import AccuracyResult, accuracy
from .perplexity import PerplexityResult, causal_lm_window_losses, perplexity

__all__ = ["AccuracyResult", "PerplexityResult", "accuracy", "causal_lm_window_losses", "perplexity"]
