"""Apportionment: integers that add up, as close as possible to given proportions.

Used by the split (docs/dataset.md §1.4: per-stratum counts, the TB-type table) and by the reading study's
case sampling (docs/dataset.md §1.5).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from fractions import Fraction


def largest_remainder(n: int, weights: Sequence[Fraction | int]) -> list[int]:
    """Hamilton apportionment of ``n`` items by ``weights``; ties → the earlier index."""
    w = [Fraction(x) for x in weights]
    total = sum(w)
    if n == 0:
        return [0] * len(w)
    if total <= 0:
        raise ValueError("weights must have a positive sum")
    quotas = [n * x / total for x in w]
    counts = [int(q) for q in quotas]  # floor (quotas ≥ 0)
    left = n - sum(counts)
    order = sorted(range(len(w)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in order[:left]:
        counts[i] += 1
    return counts


def controlled_rounding(rows: dict[str, int], totals: Sequence[int]) -> dict[str, list[int]]:
    """Integer table with the given row sums (``rows``) and column sums (``totals``), closest to
    the proportional table ``n_r · T_c / N``: floors plus at most one extra unit per cell, placed to
    maximise the summed fractional parts.  Ties: lexicographic on the preference order of cells
    (fractional part desc, row size desc, row name, column index).
    """
    names = sorted(rows)
    n_total = sum(rows.values())
    if n_total != sum(totals):
        raise ValueError("row and column sums differ")
    if n_total == 0:
        return {k: [0] * len(totals) for k in names}
    exact = {k: [Fraction(rows[k] * t, n_total) for t in totals] for k in names}
    floor = {k: [int(q) for q in exact[k]] for k in names}
    frac = {k: [exact[k][c] - floor[k][c] for c in range(len(totals))] for k in names}
    need_row = {k: rows[k] - sum(floor[k]) for k in names}
    need_col = [totals[c] - sum(floor[k][c] for k in names) for c in range(len(totals))]
    cells = [(k, c) for k in names for c in range(len(totals))]
    pref = sorted(cells, key=lambda kc: (-frac[kc[0]][kc[1]], -rows[kc[0]], kc[0], kc[1]))
    rank = {kc: i for i, kc in enumerate(pref)}

    best: tuple[Fraction, tuple[int, ...]] | None = None
    best_choice: list[tuple[str, int]] = []
    options = [list(itertools.combinations(range(len(totals)), need_row[k])) for k in names]

    # Search is tiny (≤ 3^#TB-types combinations); prune on column capacity.
    def search(i: int, cols: list[int], chosen: list[tuple[str, int]]) -> None:
        nonlocal best, best_choice
        if i == len(names):
            if any(cols):
                return
            score = sum((frac[k][c] for k, c in chosen), Fraction(0))
            key = (score, tuple(-r for r in sorted(rank[kc] for kc in chosen)))
            if best is None or key > best:
                best, best_choice = key, list(chosen)
            return
        k = names[i]
        for combo in options[i]:
            if any(cols[c] <= 0 for c in combo):
                continue
            for c in combo:
                cols[c] -= 1
            search(i + 1, cols, chosen + [(k, c) for c in combo])
            for c in combo:
                cols[c] += 1

    search(0, list(need_col), [])
    if best is None:  # cannot happen for consistent sums (transportation problem is feasible)
        raise RuntimeError("controlled rounding found no table")
    out = {k: list(floor[k]) for k in names}
    for k, c in best_choice:
        out[k][c] += 1
    return out
