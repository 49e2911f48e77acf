"""What a package docstring names as its public API is exported by it."""

from __future__ import annotations

import importlib
import re

import pytest


@pytest.mark.parametrize("package", ["lplkit.store"])
def test_docstring_public_api_is_exported(package):
    mod = importlib.import_module(package)
    line = re.search(r"Public API:(.*?)\.\s", mod.__doc__ or "", re.S)
    assert line, f"{package} docstring has no 'Public API:' line"
    names = re.findall(r"`(\w+)`", line.group(1))
    assert names
    missing = [n for n in names if n not in mod.__all__ or not hasattr(mod, n)]
    assert not missing, missing


def test_train_docstring_lists_every_submodule():
    import pkgutil

    import lplkit.train as train

    listed = set(re.findall(r"`(\w+)`", train.__doc__.split("Submodules:")[1]))
    present = {m.name for m in pkgutil.iter_modules(train.__path__)}
    assert present <= listed, sorted(present - listed)
