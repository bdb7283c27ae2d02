"""Vision reference models: training recipes and the supervised loop (data in crescendo.data.images,
architectures in crescendo.models.vision, accuracy in crescendo.eval.accuracy)."""

from .train import (
    REFERENCE_RECIPES,
    ReferenceRecipe,
    ReferenceResult,
    TrainConfig,
    reference_recipe,
    train_classifier,
    train_reference,
)

__all__ = [
    "REFERENCE_RECIPES",
    "ReferenceRecipe",
    "ReferenceResult",
    "TrainConfig",
    "reference_recipe",
    "train_classifier",
    "train_reference",
]
