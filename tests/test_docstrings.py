"""Every docstring example (`>>>`) in the package runs and gives the output it shows."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import crescendo

MODULES = sorted(m.name for m in pkgutil.walk_packages(crescendo.__path__, "crescendo.")
                 if not m.name.startswith("crescendo.cli.__main__"))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples failed in {name}"
