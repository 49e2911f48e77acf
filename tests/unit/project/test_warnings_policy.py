"""The pytest warnings policy (pyproject.toml): a warning at a line of lplkit fails the test; the
same warning from another package does not."""

from __future__ import annotations

import warnings

import pytest


@pytest.mark.parametrize("module", ["lplkit", "lplkit.store.lock", "lplkit.cli.app"])
def test_a_warning_at_an_lplkit_line_is_an_error(module):
    with pytest.raises(DeprecationWarning, match="old call"):
        warnings.warn_explicit("old call", DeprecationWarning, "x.py", 1, module=module)


@pytest.mark.parametrize("module", ["torch.nn.modules", "lplkit_plugin", "tests.helper"])
def test_a_warning_elsewhere_is_not_an_error(module):
    with warnings.catch_warnings(record=True) as caught:
        warnings.warn_explicit("old call", DeprecationWarning, "x.py", 1, module=module)
    assert [str(w.message) for w in caught] == ["old call"]
