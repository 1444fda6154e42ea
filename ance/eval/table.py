"""Results tables: several systems over several datasets, paired tests against a baseline, Holm's
correction, written as Markdown, CSV, LaTeX or JSON (``ance eval --run ...``, ``ance benchmark``).

The input is per-query values (:func:`ance.eval.metrics.evaluate_per_query`) of each system on each
dataset. A system is tested against the baseline on the queries both rank (paired, two-sided t-test
or Wilcoxon signed-rank). When several pairs are tested, the p-values of one measure (every system
against the baseline, on every dataset) form one family and are Holm-adjusted; a cell is marked
significant when its adjusted p-value is below ``alpha``.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np

from ance.eval.compare import paired_comparison

FORMATS = ("md", "csv", "latex", "json")
TESTS = ("t", "wilcoxon")


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm–Bonferroni adjusted p-values, in the order given (None stays None, outside the family).

    With the m p-values sorted ascending, ``p_(i)`` adjusted is ``max_{j<=i} min(1, (m - j + 1) p_(j))``
    (1-based i): a step-down correction that controls the family-wise error rate, uniformly more
    powerful than Bonferroni.
    """
    idx = [i for i, p in enumerate(pvalues) if p is not None]
    for i in idx:
        if not 0.0 <= float(pvalues[i]) <= 1.0:
            raise ValueError(f"p-value {pvalues[i]!r} at position {i} is not in [0, 1]")
    order = sorted(idx, key=lambda i: float(pvalues[i]))
    m = len(order)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(pvalues[i])))
        out[i] = running
    return out


@dataclass
class Cell:
    """One system on one dataset for one measure; the test fields are None for the baseline."""

    dataset: str
    system: str
    measure: str
    mean: float
    n: int
    n_missing: int
    diff: float | None = None       # mean(system - baseline) over the queries both rank
    n_paired: int | None = None
    p: float | None = None
    p_holm: float | None = None
    significant: bool | None = None


PerQuery = tuple[Sequence[str], Mapping[str, np.ndarray]]  # (query ids, {measure: values})


def build_table(per_query: Mapping[str, Mapping[str, PerQuery]], measures: Sequence[str], *,
                baseline: str | None = None, test: str = "t", alpha: float = 0.05,
                n_missing: Mapping[str, Mapping[str, int]] | None = None) -> dict:
    """The table of ``per_query[dataset][system] = (query ids, {measure: values})``.

    ``baseline`` (default: the first system) is tested against every other system on each dataset,
    over the query ids both have. Returns a JSON-ready dict: ``measures``, ``datasets``,
    ``systems``, ``baseline``, ``test``, ``alpha``, ``correction`` and ``cells`` (:class:`Cell`)."""
    if test not in TESTS:
        raise ValueError(f"test must be one of {', '.join(TESTS)}, got {test!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    datasets = list(per_query)
    systems = list(dict.fromkeys(s for d in datasets for s in per_query[d]))
    if not systems:
        raise ValueError("no system to tabulate")
    baseline = systems[0] if baseline is None else baseline
    if baseline not in systems:
        raise ValueError(f"baseline {baseline!r} is not one of the systems: {', '.join(systems)}")
    cells: list[Cell] = []
    n_tests = 0
    for measure in measures:
        family: list[Cell] = []
        for d in datasets:
            base = per_query[d].get(baseline)
            for s in systems:
                if s not in per_query[d]:
                    continue
                qids, values = per_query[d][s]
                v = np.asarray(values[measure], dtype=np.float64)
                miss = (n_missing or {}).get(d, {}).get(s, 0)
                cell = Cell(d, s, measure, float(v.mean()), int(v.size), int(miss))
                if s != baseline and base is not None:
                    _test(cell, qids, v, base[0], np.asarray(base[1][measure], dtype=np.float64), test)
                    family.append(cell)
                cells.append(cell)
        tested = [c for c in family if c.p is not None]
        n_tests = max(n_tests, len(tested))
        for c, adj in zip(tested, holm([c.p for c in tested])):
            c.p_holm = adj
            c.significant = adj < alpha
    return {"measures": list(measures), "datasets": datasets, "systems": systems, "baseline": baseline,
            "test": test, "alpha": alpha, "correction": "holm" if n_tests > 1 else "none",
            "cells": [asdict(c) for c in cells]}


def _test(cell: Cell, qids, v, base_qids, b, test: str) -> None:
    pos = {q: i for i, q in enumerate(base_qids)}
    pairs = [(i, pos[q]) for i, q in enumerate(qids) if q in pos]
    cell.n_paired = len(pairs)
    if len(pairs) < 2:
        return
    a_i, b_i = (np.array(x) for x in zip(*pairs))
    res = paired_comparison(v[a_i], b[b_i], n_boot=1)
    cell.diff = res["diff"]
    cell.p = float(res["p_t"] if test == "t" else res["p_wilcoxon"])


# --------------------------------------------------------------------------- rendering


def render(table: dict, fmt: str, digits: int = 4) -> str:
    """The table as ``md``, ``csv``, ``latex`` or ``json`` text."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "json":
        return json.dumps(table, indent=1) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        names = list(Cell.__dataclass_fields__)
        w = csv.DictWriter(buf, fieldnames=names, lineterminator="\n")
        w.writeheader()
        for c in table["cells"]:
            w.writerow(c)
        return buf.getvalue()
    return "\n".join(_grid(table, m, fmt, digits) for m in table["measures"])


def _lookup(table: dict) -> dict[tuple[str, str, str], dict]:
    return {(c["measure"], c["dataset"], c["system"]): c for c in table["cells"]}


def _grid(table: dict, measure: str, fmt: str, digits: int) -> str:
    """One measure, BEIR-style: a row per system, a column per dataset, then their average."""
    cells = _lookup(table)
    datasets, systems = table["datasets"], table["systems"]
    best = {d: max((cells[measure, d, s]["mean"] for s in systems if (measure, d, s) in cells), default=None)
            for d in datasets}
    rows = []
    for s in systems:
        row, means = [], []
        for d in datasets:
            c = cells.get((measure, d, s))
            if c is None:
                row.append("–" if fmt == "md" else "--")
                continue
            means.append(c["mean"])
            text = f"{c['mean']:.{digits}f}"
            if c["mean"] == best[d] and len(systems) > 1:
                text = f"**{text}**" if fmt == "md" else rf"\textbf{{{text}}}"
            if c["significant"]:
                text += "†" if fmt == "md" else r"$^\dagger$"
            if c["n_missing"]:
                text += f" ({c['n_missing']} missing)"
            row.append(text)
        avg = f"{np.mean(means):.{digits}f}" if len(means) == len(datasets) and len(datasets) > 1 else ""
        rows.append([s, *row] + ([avg] if len(datasets) > 1 else []))
    head = [measure, *datasets] + (["avg"] if len(datasets) > 1 else [])
    n_tests = _family(table, measure)
    holm_note = f" after Holm correction over the {n_tests} tests" if n_tests > 1 else ""
    note = (f"† paired {table['test']}-test against {table['baseline']}, p < {table['alpha']}{holm_note}."
            if n_tests else "")
    if fmt == "md":
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines) + "\n\n" + note + "\n"
    esc = _latex_escape
    lines = [r"\begin{tabular}{l" + "r" * (len(head) - 1) + "}", r"\toprule",
             " & ".join(esc(h) for h in head) + r" \\", r"\midrule"]
    lines += [" & ".join([esc(r[0]), *[x.replace("**", "") for x in r[1:]]]) + r" \\" for r in rows]
    lines += [r"\bottomrule", r"\end{tabular}",
              "% " + note.replace("†", r"$^\dagger$")]
    return "\n".join(lines) + "\n"


def _family(table: dict, measure: str) -> int:
    return sum(1 for c in table["cells"] if c["measure"] == measure and c["p"] is not None)


def _latex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                 ("$", r"\$"), ("{", r"\{"), ("}", r"\}")):
        text = text.replace(a, b)
    return text.replace(r"\textbackslash\{\}", r"\textbackslash{}")
