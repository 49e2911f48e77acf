"""tests/unit mirrors the package: `tests/unit/<sub>/test_<module>[_aspect].py` tests
`lplkit/<sub>/<module>.py` (and `tests/unit/test_<module>...` a root module), so a module's tests
are found by its path. tests/unit/project/ holds the checks of the repository as a whole."""

from __future__ import annotations

from helpers.cli import REPO

UNIT = REPO / "tests" / "unit"
PACKAGE = REPO / "lplkit"


def _module_names(folder) -> set[str]:
    return {p.stem for p in folder.glob("*.py") if p.stem != "__init__"}


def test_every_unit_test_file_is_named_after_a_module_of_its_folder():
    wrong = []
    for test in sorted(UNIT.rglob("test_*.py")):
        sub = test.parent.relative_to(UNIT)
        if sub.parts[:1] == ("project",):
            continue
        modules = _module_names(PACKAGE / sub)
        name = test.stem.removeprefix("test_")
        if not any(name == m or name.startswith(m + "_") for m in modules):
            wrong.append(f"{test.relative_to(REPO)}: no lplkit/{sub}/<module>.py for {name!r}")
    assert not wrong, "\n".join(wrong)


def test_the_test_layout_check_can_fail():
    modules = _module_names(PACKAGE / "store")
    assert "writer" in modules
    assert not any(
        m == "decoder_features" or "decoder_features".startswith(m + "_") for m in modules
    )
