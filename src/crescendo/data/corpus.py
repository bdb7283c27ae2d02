"""The `Corpus` value: a named pair of text splits (test, calibration)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import DataError


@dataclass(frozen=True, eq=False)  # eq=False: never hash or compare megabytes of text
class Corpus:
    """A named pair of splits.

    Calibration comes either as one text (`calibration_text`; samples are windows cut anywhere in its
    token ids) or as separate documents (`calibration_documents`; each sample is a window inside one
    randomly drawn document, the GPTQ/SparseGPT C4 convention). Exactly one of the two is set.
    """

    name: str
    test_text: str
    calibration_text: str | None = None
    calibration_documents: Sequence[str] | None = None

    def __post_init__(self) -> None:
        if (self.calibration_text is None) == (self.calibration_documents is None):
            raise DataError(
                f"corpus {self.name!r} needs exactly one of calibration_text and calibration_documents"
            )
