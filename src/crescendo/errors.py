"""Typed exceptions. Everything a user can get wrong raises a subclass of CrescendoError;
the CLI turns these into a one-line message and exit code 2."""


class CrescendoError(Exception):
    """Base class for errors caused by user input (recipes, paths, models, data)."""

    exit_code = 2  # what the CLI exits with: bad input, refused before the run did anything


class RecipeError(CrescendoError, ValueError):
    """A recipe string or YAML file is malformed, names an unknown method or has bad settings."""


class ConfigError(CrescendoError, ValueError):
    """A method configuration is out of range (ratio outside [0, 1), bits outside 2..8, N >= M, ...)."""


class ModelError(CrescendoError):
    """A model cannot be found, loaded, or has an architecture crescendo has no adapter for."""


class DataError(CrescendoError):
    """A corpus or protocol is unknown, unreachable, or too short for the requested samples."""


class StoreError(CrescendoError):
    """The results store cannot be opened or holds rows from an incompatible schema."""


class VerifyError(CrescendoError):
    """A saved compressed model does not match its recorded recipe (grid, sparsity, NaN/Inf)."""


class StorageError(CrescendoError):
    """Files a run that had started could not read or write: a weight shard removed or truncated
    under it, a disk that filled up. The run stops, leaves no half-written output, and exits 1."""

    exit_code = 1


def one_line(error: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, at most `limit` characters (libraries raise multi-line
    messages; a CLI error is always one line)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
