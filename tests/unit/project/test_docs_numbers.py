"""Every table in README.md and docs/ names where its numbers come from, and equals that raw file.

A table is preceded by a marker line:
    <!-- raw: docs/results/x.json [more files] -->   measured numbers, each backed by those files
    <!-- raw: none, REASON -->                       not a measurement (an option list, a file layout)
A file may be narrowed to JSON subtrees with ``path.json#key.key,key`` so that a changed cell cannot hide
among unrelated numbers of a large file; ``per-row`` checks the i-th body row against the i-th file
only. ``render=NAME`` (a function in RENDERERS below, calling the report script that made the table)
marks a table regenerated from its raw files: it must equal that output line for line.

The check: every number in a table's body (outside code spans) equals a number of its raw files at the
precision shown (``19.7`` matches any raw value in [19.65, 19.75]; ``2%`` also matches 0.02). So a cell
edited to a value the run did not produce fails. It does not check which raw value a cell came from (a
cell swapped with another number of the same file passes); the per-file subtrees keep that pool small.
"""

from __future__ import annotations

import bisect
import importlib
import json
import re
import sys
from dataclasses import dataclass

import pytest
from helpers.cli import REPO

ROOT = REPO
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = re.compile(r"^<!--\s*raw:\s*(.*?)\s*-->$")
SEPARATOR = re.compile(r"^\|(\s*:?-{3,}:?\s*\|)+$")
# a number not glued to a word on its left (so "DiT-B/2" gives 2 but "4x32" gives 4 only, "x1e3" nothing)
CELL_NUMBER = re.compile(
    r"(?<![\w.])([-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?(?:[eE]([-+]?\d+))?)(%?)"
)
RAW_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def _report_module(name: str):
    sys.path.insert(0, str(ROOT / "pipelines/openmoji-lpl"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


def _report_base(path: str) -> str:
    """docs/results.md's ablation tables: report_base.py over the committed result.json of each run."""
    rb = _report_module("report_base")
    summary = rb.summarize(rb.load(ROOT / path))
    return "\n".join([rb.markdown(summary), *rb.relative_lines(summary)])


def _report_base_eval_noise(path: str) -> str:
    return _report_module("report_base").eval_noise(ROOT / path)


def _lpl_effect(flow: str, eps: str) -> str:
    """docs/results.md's answer table: LPL - baseline of both objectives, from the same summaries."""
    rb = _report_module("report_base")
    lines = [
        "| objective | post-training | 64 px | lower in | 32 px | 16 px |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for objective, path in (("flow", flow), ("eps", eps)):
        summary = rb.summarize(rb.load(ROOT / path))
        for steps, share in ((400, "1/5"), (667, "1/3")):  # of the base's 2,000 pre-training steps
            p = summary[steps]["paired"]["lpl"]
            n, (rel, rel_std) = len(p["seeds"]), p["rel_64px_pct"]
            cells = [
                objective,
                f"{steps} ({share})",
                f"{rel:+.2f}% ± {rel_std:.2f}%",
                f"{p['wins']['swd_64px']}/{n}",
            ]
            for m in ("swd_32px", "swd_16px"):
                cells.append(
                    f"{p['delta'][m][0]:+.1f} ± {p['delta'][m][1]:.1f} ({p['wins'][m]}/{n})"
                )
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _report_dit_t(path: str) -> str:
    """The DiT-T/2 ablation table: report.py over the per-run numbers its JSON keeps."""
    report = _report_module("report")
    return report.markdown(
        report.summarize(json.loads((ROOT / path).read_text())["runs"], "lpl"), "lpl"
    )


RENDERERS = {
    "report_base": _report_base,
    "report_base.eval_noise": _report_base_eval_noise,
    "report_base.lpl_effect": _lpl_effect,
    "report.dit_t": _report_dit_t,
}


@dataclass
class Table:
    doc: str
    line: int  # 1-based line of the header
    marker: str | None
    rows: list[list[str]]  # body rows, cells stripped
    text: list[
        str
    ]  # the table's lines (header, separator, body) and the lines after it up to a blank one

    @property
    def paths(self) -> list[str]:
        return [x for x in (self.marker or "").split() if "=" not in x and x != "per-row"]

    @property
    def render(self) -> str | None:
        return next(
            (x.split("=", 1)[1] for x in (self.marker or "").split() if x.startswith("render=")),
            None,
        )

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}"


def find_tables(text: str, doc: str) -> list[Table]:
    """Markdown tables of `text` (outside fenced code), each with the marker on the line above it."""
    lines = text.splitlines()
    tables, fenced, i = [], False, 0
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith("```"):
            fenced = not fenced
        elif (
            not fenced
            and line.startswith("|")
            and i + 1 < len(lines)
            and SEPARATOR.match(lines[i + 1].strip())
        ):
            j = i + 2
            while j < len(lines) and lines[j].strip().startswith("|"):
                j += 1
            prev = next((lines[k].strip() for k in range(i - 1, -1, -1) if lines[k].strip()), "")
            m = MARKER.match(prev)
            rows = [[c.strip() for c in r.strip().strip("|").split("|")] for r in lines[i + 2 : j]]
            end = next((k for k in range(j, len(lines)) if not lines[k].strip()), len(lines))
            tables.append(Table(doc, i + 1, m.group(1) if m else None, rows, lines[i:end]))
            i = j
            continue
        i += 1
    return tables


def raw_numbers(paths: list[str]) -> list[float]:
    """Sorted numbers of the files a marker names (``file`` or ``file.json#key.key``)."""
    values: list[float] = []
    for item in paths:
        path, _, subs = item.partition("#")
        text = (ROOT / path).read_text()
        if subs:
            parts = []
            for sub in subs.split(","):
                node = json.loads(text)
                for key in sub.split("."):
                    node = node[int(key)] if isinstance(node, list) else node[key]
                parts.append(json.dumps(node))
            text = " ".join(parts)
        values += [float(x) for x in RAW_NUMBER.findall(text)]
    return sorted(values)


def cell_numbers(cell: str) -> list[tuple[str, float, float, bool]]:
    """(text, value, tolerance, is_percent) of each number in a cell, code spans removed."""
    out = []
    cell = re.sub(r"`[^`]*`", "", cell)
    cell = re.sub(r"(\d)-(\d[\d.]*%)", r"\1% to \2", cell)  # "2-3%": both ends are percentages
    for m in CELL_NUMBER.finditer(cell):
        text, decimals, exponent, pct = m.groups()
        value = float(text.replace(",", ""))
        tol = 0.5 * 10.0 ** (-len(decimals or "") + int(exponent or 0))
        out.append((text + pct, value, tol * (1 + 1e-9), pct == "%"))
    return out


def _has(values: list[float], lo: float, hi: float) -> bool:
    i = bisect.bisect_left(values, lo)
    return i < len(values) and values[i] <= hi


def mismatches(table: Table, values: list[float], rows: list[int] | None = None) -> list[str]:
    """Cells of `table` (of `rows`, default all) with a number that no raw value gives at the precision
    shown."""
    bad = []
    for r, row in enumerate(table.rows):
        if rows is not None and r not in rows:
            continue
        for cell in row:
            for text, v, tol, pct in cell_numbers(cell):
                ok = _has(values, v - tol, v + tol) or (
                    pct and _has(values, (v - tol) / 100, (v + tol) / 100)
                )
                if not ok:
                    bad.append(f"{table} body row {r + 1}: {text!r} in {cell!r}")
    return bad


ALL_TABLES = [t for doc in DOCS for t in find_tables(doc.read_text(), str(doc.relative_to(ROOT)))]
RAW_TABLES = [t for t in ALL_TABLES if t.marker and not t.marker.startswith("none")]


def test_every_table_says_where_its_numbers_come_from():
    unmarked = [str(t) for t in ALL_TABLES if t.marker is None]
    assert not unmarked, f"tables without a <!-- raw: ... --> marker on the line above: {unmarked}"
    no_reason = [str(t) for t in ALL_TABLES if t.marker and re.fullmatch(r"none[,\s]*", t.marker)]
    assert not no_reason, f"'raw: none' needs a reason: {no_reason}"


@pytest.mark.parametrize("table", [t for t in RAW_TABLES if not t.render], ids=str)
def test_table_numbers_are_in_its_raw_files(table):
    for item in table.paths:
        assert (ROOT / item.partition("#")[0]).is_file(), f"{table}: raw file {item} is missing"
    if "per-row" in table.marker.split():  # the i-th body row comes from the i-th file
        assert len(table.paths) == len(table.rows), f"{table}: per-row needs one file per row"
        bad = [
            b
            for i, p in enumerate(table.paths)
            for b in mismatches(table, raw_numbers([p]), rows=[i])
        ]
    else:
        bad = mismatches(table, raw_numbers(table.paths))
    assert not bad, "numbers not in the raw files:\n" + "\n".join(bad)


def rendered(table: Table) -> list[str]:
    """The table's lines (and the report's lines right after it) as its report script prints them."""
    return [
        x
        for x in RENDERERS[table.render](*table.paths).splitlines()
        if x.startswith(("|", "post "))
    ]


@pytest.mark.parametrize("table", [t for t in RAW_TABLES if t.render], ids=str)
def test_table_equals_its_rendering_from_raw_files(table):
    expected = rendered(table)
    assert table.text[: len(expected)] == expected


def _bump_last_digit(cell: str) -> str:
    """`cell` with its last number raised by two units of its last shown digit (1.06 -> 1.08)."""
    m = list(CELL_NUMBER.finditer(cell))[-1]
    text = m.group(1)
    digits = text.replace(",", "").lstrip("+-")
    bumped = str(int(digits.replace(".", "")) + 2).rjust(len(digits.replace(".", "")), "0")
    if "." in digits:
        k = len(digits.split(".")[1])
        bumped = bumped[:-k] + "." + bumped[-k:]
    return (
        cell[: m.start(1)] + text[: len(text) - len(text.lstrip("+-"))] + bumped + cell[m.end(1) :]
    )


def test_a_planted_edit_of_one_cell_fails():
    """The check can fail: one cell of a real table edited by two units of its last digit is caught."""
    doc = ROOT / "docs/base-model.md"
    table = next(
        t for t in find_tables(doc.read_text(), "docs/base-model.md") if t.rows[0][0] == "0"
    )
    values = raw_numbers(table.paths)
    assert mismatches(table, values) == []
    planted = Table(table.doc, table.line, table.marker, [list(r) for r in table.rows], table.text)
    planted.rows[0][3] = _bump_last_digit(planted.rows[0][3])  # samples / floor at eval seed 0
    assert planted.rows[0][3] != table.rows[0][3]
    assert len(mismatches(planted, values)) == 1


def test_snr_table_equals_diffusers():
    """docs/objectives.md's SNR(199) / SNR(500) per schedule, recomputed with diffusers' own scheduler."""
    from diffusers import DDPMScheduler

    doc = ROOT / "docs/objectives.md"
    table = next(
        t
        for t in find_tables(doc.read_text(), "docs/objectives.md")
        if t.rows[0][0].startswith("linear")
    )
    for name, *cells in table.rows:
        kwargs = {"beta_schedule": name.split()[0], "num_train_timesteps": 1000}
        if ".." in name:
            lo, hi = name.split()[1].split("..")
            kwargs |= {"beta_start": float(lo), "beta_end": float(hi)}
        abar = DDPMScheduler(**kwargs).alphas_cumprod.double()
        for t, cell in zip((199, 500), cells, strict=True):
            ((_, shown, tol, _),) = cell_numbers(cell)
            snr = float(abar[t] / (1 - abar[t]))
            assert abs(snr - shown) <= tol, f"{name}: SNR({t}) = {snr:.4f}, the doc says {cell}"


def test_a_planted_edit_of_a_regenerated_table_fails():
    doc = ROOT / "docs/results.md"
    table = next(
        t for t in find_tables(doc.read_text(), "docs/results.md") if t.render == "report_base"
    )
    expected = rendered(table)
    assert table.text[: len(expected)] == expected
    planted = list(table.text)
    planted[2] = planted[2].replace("19.7 ± 4.5", "19.8 ± 4.5", 1)  # baseline SWD 64px at 400 steps
    assert planted[2] != table.text[2] and planted[: len(expected)] != expected
