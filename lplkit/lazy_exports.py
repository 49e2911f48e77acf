"""Package attributes resolved on first use (PEP 562), so that importing a package stays cheap.

`lplkit.lpl`, `lplkit.stats` and `lplkit.store` re-export their submodules' public names, but the CLI imports
their torch-free submodules (e.g. `lplkit.lpl.config` for the train flags) while building `--help`,
which must not import torch. Eager re-exports in the package `__init__` would import it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, exports: dict[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`(__getattr__, __dir__)` for `package`, where `exports` maps a name to its submodule."""

    def __getattr__(name: str) -> Any:
        sub = exports.get(name)
        if sub is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{sub}"), name)

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__
