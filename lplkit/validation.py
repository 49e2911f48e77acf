"""Validate untrusted JSON documents (store manifest, run.json, checkpoint meta.json, stats attrs)
against the JSON Schemas shipped in `lplkit/schemas/` (a link to the repository's `schemas/`, whose
files the build backend copies into the wheel), so a damaged or hand-edited file fails with one clear message instead of a `KeyError`
deep inside lplkit.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

from lplkit.errors import LplkitError

SCHEMAS = ("store", "index", "run", "checkpoint-state", "stats")
_MAX_SHOWN = 3


@functools.cache
def _validator(name: str) -> Any:
    import jsonschema

    if name not in SCHEMAS:
        raise ValueError(f"unknown schema {name!r}; one of {SCHEMAS}")
    text = resources.files("lplkit").joinpath("schemas", f"{name}.schema.json").read_text()
    return jsonschema.Draft202012Validator(json.loads(text))


def schema_problems(doc: Any, name: str) -> list[str]:
    """Human-readable violations of `schemas/<name>.schema.json` (`field.path: message`), sorted by
    location; empty when `doc` is valid."""
    errors = sorted(_validator(name).iter_errors(doc), key=lambda e: list(map(str, e.path)))
    out = []
    for e in errors:
        where = ".".join(str(p) for p in e.absolute_path) or "(top level)"
        msg = e.message if len(e.message) <= 160 else e.message[:157] + "..."
        out.append(f"{where}: {msg}")
    return out


def require_valid(
    doc: Any, name: str, *, what: str, error: type[LplkitError], fix: str
) -> dict[str, Any]:
    """Return `doc` if it is valid against schema `name`, else raise `error` with one line:
    `<what> is invalid (<first problems>); <fix>`."""
    problems = schema_problems(doc, name)
    if problems:
        shown = "; ".join(problems[:_MAX_SHOWN])
        more = f" (+{len(problems) - _MAX_SHOWN} more)" if len(problems) > _MAX_SHOWN else ""
        raise error(f"{what} is invalid ({shown}{more}); {fix}")
    return doc


def load_json_document(
    text: str | bytes, name: str, *, what: str, error: type[LplkitError], fix: str
) -> dict[str, Any]:
    """Parse JSON text and validate it against schema `name` (both failures raise `error`)."""
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise error(f"{what} is not valid JSON ({exc}); {fix}") from None
    return require_valid(doc, name, what=what, error=error, fix=fix)
