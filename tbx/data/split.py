"""Stratified, patient-grouped train/val/test split of a TBX11K-layout dataset (docs/dataset.md §1.2, §1.4).

Strata (the *allocation stratum* of a record, see :func:`allocation_stratum`):

* ``healthy``, ``sick`` (TBX11K) — split by ``non_tb_ratio`` (default 15:4:6 = the published
  3000/800/1200, docs/dataset.md §1.2).
* ``tb:active``, ``tb:latent``, ``tb:active+latent`` (TBX11K TB with known type) — split by
  ``ratio`` (default 3:2:1 as the user asked, each TB type on its own; :meth:`SplitConfig.published`
  gives the published table's totals).
* ``tb:uncertain`` — always test (its type cannot be learned, docs/dataset.md §1.2).
* TB images without any box (type ``unknown``; the release has one, ``tb/tb1199.png``) are
  allocated with the latent stratum by default (``unknown_tb_as="latent"``): the published table
  counts tb1199 among the 104 latent training images (the real train metadata holds 103 latent-only
  images with boxes plus tb1199).  ``"own"`` gives them their own TB stratum, ``"test"`` sends them
  to test like uncertain TB.
* every extra source × label (``da:healthy``, ``shenzhen:tb``, …) — split by ``extra_ratio``; by
  default half of each to train+val (in ``ratio``'s train:val proportion) and half to test, as the
  authors did (docs/dataset.md §1.4): ``3:2:1`` → ``3:2:5``, ``3:1:2`` → ``3:1:4``.

How counts are decided (exact up to rounding):

1. A stratum of ``n`` images split by weights ``w`` gets the largest-remainder (Hamilton)
   apportionment: ``floor(n·w_s/Σw)`` per split, then the leftover images one each to the splits
   with the largest fractional parts; ties go to the earlier split (train < val < test).
   Arithmetic is exact (fractions), so the rule is reproducible by hand.
2. TB quota (``tb_quota``).  Default ``"type"`` — the user's rule (docs/dataset.md §1.2): every TB
   type is split on its own by ``ratio`` with the largest remainder, so every cell is within ±1 of
   n·share (3:2:1 on the release's counts: active 924 → 462/308/154), and the uncertain images are
   added to test on top of the quota.  ``"class"`` apportions the TB class *as a whole* (all TBX11K
   TB images, uncertain included) by ``ratio`` — this is how the published table is built: TB =
   600/200/400 = 3:1:2 exactly, with the 10 uncertain images inside the 400 test images
   (:meth:`SplitConfig.published` = ``ratio 3:1:2``, ``non_tb_ratio 15:4:6``, class quota).  With
   the class quota the uncertain images take their share of the test quota first; the remaining
   quota (train, val, test − #uncertain) is then spread over the TB types
   proportionally by *controlled rounding*: every cell gets the floor of its proportional share and
   the leftover units are placed (at most one per cell) so that every TB type keeps its size and
   every split keeps its TB total, maximising the summed fractional parts; ties are broken by the
   preference order (fractional part desc, stratum size desc, split order).
   Hence with :meth:`SplitConfig.published` on a dataset with the published class counts every row
   total (healthy, sick, TB, uncertain TB) and every column total (6600/1800/2800) of docs/dataset.md §1.2 is
   reproduced exactly.  The individual active/latent/both cells of
   the published table (473/157/294, 104/36/72, 23/7/24) are *not* proportional to any ratio
   (active 51.2 % train vs both 42.6 %), i.e. the authors' split was not exactly stratified per type;
   no deterministic stratified rule reproduces them — ours gives 466/155/303, 107/36/69, 27/9/18.
   The type quota's TB column totals are the sums of the per-type cells (3:1:2 on the published
   counts: 595/198/407 instead of 600/200/400).
3. Images are assigned in *groups* (one group per ``patient_id``, else one per image): groups are
   shuffled with the seed, ordered largest first, and each goes to the split with the best fit to
   the remaining per-stratum deficits (a split never separates a patient).  With singleton groups
   the counts are exactly the targets; with multi-image patients the result is as close as the
   greedy gets and the deviation is reported.  A group that contains an uncertain-type TB image
   goes to test as a whole.

Folds (``SplitConfig.folds = K``; :attr:`SplitPlan.folds`, :func:`fold_records`): the train+val
images are divided into K folds with the same machinery (equal weights, the split's TB quota,
patients grouped); fold k's val is fold k, its train the other K−1 folds (the paper's 4-fold
robustness study).  Written as ``lists/fold{k}_{train,val}.txt`` and
``annotations/json/fold{k}_{train,val}[_only_tb].json`` (+ ``fold{k}_all_{train,val}`` when extra
datasets are present).

Public API: :class:`SplitConfig`, :func:`split_records` (records → copies with ``split`` set),
:func:`plan_split` (the same plus the per-stratum report and folds), :func:`run_split` (the
command: read a root, split, write everything all-or-nothing).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import tempfile
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from tbx.data.apportion import controlled_rounding, largest_remainder
from tbx.data.layout import ANN_JSON, LISTS
from tbx.data.records import LABELS, SPLITS, TB_TYPE_ROWS, TB_TYPES, Record
from tbx.data.views import annotation_views, load_dataset, write_view, write_views
from tbx.errors import TbxError
from tbx.io import atomic_write_json
from tbx.provenance import write_provenance

TB_KNOWN_TYPES = ("active", "latent", "active+latent")
UNKNOWN_TB_CHOICES = ("latent", "own", "test")


@dataclass
class SplitConfig:
    """Options of ``tbx dataset split`` (ratios are ``train:val:test`` strings)."""

    ratio: str = (
        "3:2:1"  # TB (docs/dataset.md §1.2 "the ratio question": the user's 3:2:1; 3:1:2 = published)
    )
    non_tb_ratio: str = "15:4:6"  # healthy and sick (docs/dataset.md §1.2: 3000/800/1200)
    extra_ratio: str | None = None  # extra sources; None → half to test, train:val as in `ratio`
    seed: int = 0
    folds: int = 0  # K > 1: stratified K-fold of train+val
    unknown_tb_as: str = "latent"  # TB without box: latent | own | test
    tb_quota: str = "type"  # type: ratio on each TB type (the user's rule) | class: on the TB class

    def check(self) -> None:
        """The choice options → one-line :class:`TbxError` (checked before anything is written)."""
        if self.tb_quota not in ("class", "type"):
            raise TbxError(f"tb_quota '{self.tb_quota}' is not valid", fix="use --tb-quota type or class")
        if self.unknown_tb_as not in UNKNOWN_TB_CHOICES:
            raise TbxError(
                f"unknown_tb_as '{self.unknown_tb_as}' is not valid",
                fix=f"use --unknown-tb-as {' | '.join(UNKNOWN_TB_CHOICES)}",
            )

    @classmethod
    def published(cls, **options: Any) -> SplitConfig:
        """The published table's rule (docs/dataset.md §1.2): TB 3:1:2 with the class quota,
        healthy/sick 15:4:6; ``options`` set the other fields (seed, folds, extra ratio, …)."""
        return cls(**{**options, **PUBLISHED})

    @classmethod
    def from_options(cls, published: bool = False, **options: Any) -> SplitConfig:
        """The config of the command line: ``None`` options keep their defaults; with ``published``
        an option that :data:`PUBLISHED` fixes to another value is an error."""
        given = {k: v for k, v in options.items() if v is not None}
        if not published:
            return cls(**given)
        clash = [k for k in PUBLISHED if k in given and str(given[k]) != PUBLISHED[k]]
        if clash:
            opts = ", ".join(f"--{k.replace('_', '-')} {given[k]}" for k in clash)
            fixed = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in PUBLISHED.items())
            raise TbxError(
                f"--published fixes {fixed}; it cannot be combined with {opts}",
                fix="drop --published to choose your own ratios",
            )
        return cls.published(**given)


# the published split (docs/dataset.md §1.2 Table 2): every row and column total reproduced exactly
PUBLISHED = {"ratio": "3:1:2", "non_tb_ratio": "15:4:6", "tb_quota": "class"}


# ----------------------------------------------------------------------------------------------
# ratios and apportionment


_NUM = re.compile(r"^\d+(\.\d+)?$")


def parse_ratio(text: str, option: str = "--ratio") -> tuple[Fraction, Fraction, Fraction]:
    """``"3:2:1"`` → ``(3, 2, 1)`` as exact fractions; a clear :class:`TbxError` otherwise."""
    parts = str(text).strip().split(":")
    fix = f"write {option} as three non-negative numbers train:val:test, e.g. 3:2:1"
    if len(parts) != 3:
        raise TbxError(f"{option} '{text}' must have three parts (train:val:test)", fix=fix)
    if any(p.strip().startswith("-") for p in parts):
        raise TbxError(f"{option} '{text}' has a negative share", fix=fix)
    if not all(_NUM.match(p.strip()) for p in parts):
        raise TbxError(f"{option} '{text}' is not numeric", fix=fix)
    values = tuple(Fraction(p.strip()) for p in parts)
    if sum(values) == 0:
        raise TbxError(f"{option} '{text}' is all zero", fix=fix)
    return values  # type: ignore[return-value]


def format_ratio(r: Sequence[Fraction]) -> str:
    return ":".join(str(v) if v.denominator != 1 else str(v.numerator) for v in map(Fraction, r))


def default_extra_ratio(ratio: Sequence[Fraction]) -> tuple[Fraction, Fraction, Fraction]:
    """Half to train+val (in ``ratio``'s train:val proportion), half to test (docs/dataset.md §1.4)."""
    tr, va = Fraction(ratio[0]), Fraction(ratio[1])
    if tr + va == 0:
        return (Fraction(0), Fraction(0), Fraction(1))
    return (tr, va, tr + va)


# ----------------------------------------------------------------------------------------------
# strata


def allocation_stratum(r: Record, unknown_tb_as: str = "latent") -> str:
    """The stratum a record is allocated in (see module docstring)."""
    if r.label not in LABELS:
        raise TbxError(
            f"image '{r.file_name}' has unknown label '{r.label}'",
            fix="unlabelled images (e.g. imgs/test/) cannot be split; remove them from "
            "the annotation files or fix their folder",
        )
    if r.source != "tbx11k":
        return f"{r.source}:{r.label}"
    if not r.is_tb:
        return r.label
    t = r.tb_type
    if t not in TB_TYPES:
        raise TbxError(
            f"image '{r.file_name}' has unknown TB type '{t}'", fix=f"TB types are {', '.join(TB_TYPES)}"
        )
    if t in ("unknown", "none"):
        t = {"latent": "latent", "own": "unknown", "test": "uncertain"}[unknown_tb_as]
    return f"tb:{t}"


def _kind(stratum: str) -> str:
    if stratum in ("healthy", "sick"):
        return "non_tb"
    if stratum == "tb:uncertain":
        return "test_only"
    if stratum.startswith("tb:"):
        return "tb"
    return "extra"


# ----------------------------------------------------------------------------------------------
# group assignment


def _group_keys(records: Sequence[Record]) -> list[str]:
    return [
        f"patient:{r.source}:{r.patient_id}"
        if r.patient_id not in (None, "")
        else f"image:{r.source}:{r.file_name}:{i}"
        for i, r in enumerate(records)
    ]


def assign_groups(
    records: Sequence[Record],
    strata: Sequence[str],
    targets: dict[str, list[int]],
    rng: random.Random,
    forced: dict[str, int] | None = None,
) -> list[int]:
    """Column index per record; all records of one group (patient) get the same column.

    Groups are taken in a seeded random order, largest first; each goes to the column whose
    remaining per-stratum deficits it fits best (score = images that fit − images that overflow;
    ties → larger remaining deficit relative to the target, then the earlier column), so a shortfall
    forced by a large patient is spread in proportion to the targets.  ``forced`` maps a stratum to the
    column every group containing it must go to.
    """
    n_cols = len(next(iter(targets.values()))) if targets else 1
    keys = _group_keys(records)
    members: dict[str, list[int]] = defaultdict(list)
    for i, k in enumerate(keys):
        members[k].append(i)
    # canonical order (independent of the input order), then seeded shuffle, then largest first
    canon = sorted(members, key=lambda k: min((records[i].source, records[i].file_name) for i in members[k]))
    rng.shuffle(canon)
    canon.sort(key=lambda k: -len(members[k]))
    deficit = {s: list(t) for s, t in targets.items()}
    scale = {s: [1.0 / max(t, 1) for t in tt] for s, tt in targets.items()}
    out = [0] * len(records)
    forced = forced or {}
    all_cols = list(range(n_cols))
    for g in canon:
        idx = members[g]
        comp = Counter(strata[i] for i in idx) if len(idx) > 1 else {strata[idx[0]]: 1}
        cols = all_cols
        forced_cols = {forced[s] for s in comp if s in forced}
        if forced_cols:
            cols = [min(forced_cols)]
        best_c, best_key = 0, None
        size = len(idx)
        for c in cols:
            fit = 0
            rel = 0.0
            for s, n in comp.items():
                d = deficit[s][c]
                fit += n if n < d else (d if d > 0 else 0)
                rel += d * scale[s][c]
            key = (2 * fit - size, rel, -c)  # fit − overflow
            if best_key is None or key > best_key:
                best_c, best_key = c, key
        for s, n in comp.items():
            deficit[s][best_c] -= n
        for i in idx:
            out[i] = best_c
    return out


# ----------------------------------------------------------------------------------------------
# the split


@dataclass
class StratumReport:
    stratum: str
    n: int
    ratio: str
    requested: list[int]
    achieved: list[int]
    notes: list[str] = field(default_factory=list)

    @property
    def deviation(self) -> list[int]:
        return [a - r for a, r in zip(self.achieved, self.requested)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "stratum": self.stratum,
            "n": self.n,
            "ratio": self.ratio,
            "requested": dict(zip(SPLITS, self.requested)),
            "achieved": dict(zip(SPLITS, self.achieved)),
            "deviation": dict(zip(SPLITS, self.deviation)),
            "notes": self.notes,
        }


@dataclass
class SplitPlan:
    """The result of :func:`plan_split`: split records plus the per-stratum accounting."""

    records: list[Record]
    strata: list[StratumReport]
    warnings: list[str]
    ratios: dict[str, str]
    alloc_strata: list[str] = field(default_factory=list)  # allocation stratum per record
    folds: list[int | None] | None = None  # fold index per record (train+val only) when K > 1
    fold_strata: list[dict[str, Any]] | None = None

    def table(self) -> dict[str, dict[str, int]]:
        """``{row: {train, val, test, total}}`` in the layout of docs/dataset.md §1.2 (TBX11K + extras).

        Rows are allocation strata, so TB images without boxes appear in the row they were
        allocated with (latent by default, as tb1199 in the published table)."""
        rows: dict[str, Counter] = {}
        strata = self.alloc_strata or [""] * len(self.records)
        for r, s in zip(self.records, strata):
            row = ROW_NAMES.get(s, s.replace(":", " ")) if s else display_row(r)
            rows.setdefault(row, Counter())[r.split] += 1
        order = list(ROW_NAMES.values())
        names = [n for n in order if n in rows] + sorted(n for n in rows if n not in order)
        out = {n: {s: rows[n][s] for s in SPLITS} for n in names}
        for v in out.values():
            v["total"] = sum(v[s] for s in SPLITS)
        tot = {s: sum(out[n][s] for n in names) for s in (*SPLITS, "total")}
        out["total"] = tot
        return out

    def report(self) -> dict[str, Any]:
        rep: dict[str, Any] = {
            "ratios": self.ratios,
            "n_images": len(self.records),
            "table": self.table(),
            "strata": [s.to_dict() for s in self.strata],
            "warnings": self.warnings,
            "patients": _patient_summary(self.records),
        }
        if self.fold_strata is not None:
            rep["folds"] = self.fold_strata
        return rep


ROW_NAMES = {"healthy": "healthy", "sick": "sick", **{f"tb:{t}": row for t, row in TB_TYPE_ROWS.items()}}


def display_row(r: Record) -> str:
    if r.source != "tbx11k":
        return f"{r.source} {r.label}"
    if not r.is_tb:
        return {"healthy": "healthy", "sick": "sick"}.get(r.label, r.label)
    return TB_TYPE_ROWS.get(r.tb_type, TB_TYPE_ROWS["unknown"])


def _patient_summary(records: Sequence[Record]) -> dict[str, Any]:
    by: dict[str, set[str]] = defaultdict(set)
    for r in records:
        if r.patient_id not in (None, ""):
            by[f"{r.source}:{r.patient_id}"].add(r.split or "")
    return {
        "n_patients": len(by),
        "multi_image_patients": None
        if not by
        else sum(1 for r in records if r.patient_id not in (None, "")) - len(by),
        "patients_in_several_splits": sum(1 for v in by.values() if len(v) > 1),
    }


def _targets(
    counts: dict[str, int], ratios: dict[str, tuple[Fraction, ...]], n_cols: int, tb_quota: str = "class"
) -> tuple[dict[str, list[int]], list[str]]:
    """Per-stratum target counts per column (see module docstring), plus warnings."""
    warnings: list[str] = []
    targets: dict[str, list[int]] = {}
    tb_w = ratios["tb"]
    tb_rows = {s: n for s, n in counts.items() if _kind(s) == "tb"}
    n_unc = counts.get("tb:uncertain", 0)
    n_tb = sum(tb_rows.values()) + n_unc
    if n_tb:
        class_q = largest_remainder(n_tb, tb_w)
        if n_unc:
            if n_cols != 3 or tb_w[2] == 0:
                raise TbxError(
                    f"{n_unc} uncertain-type TB image(s) must go to test but the TB "
                    f"ratio {format_ratio(tb_w)} has no test share",
                    fix="give --ratio a non-zero test share, e.g. 3:2:1",
                )
            targets["tb:uncertain"] = [0, 0, n_unc]
            if tb_quota == "class" and class_q[2] < n_unc:
                warnings.append(
                    f"the {n_unc} uncertain-type TB images exceed the TB test quota "
                    f"({class_q[2]}); all of them go to test, so test holds more TB "
                    "than the ratio asks"
                )
        rest_w = list(class_q)
        rest_w[-1] = max(0, rest_w[-1] - n_unc) if n_unc else rest_w[-1]
        n_rest = n_tb - n_unc
        if tb_quota == "type":  # every TB type on its own by the ratio; uncertain on top in test
            for s, n in tb_rows.items():
                targets[s] = largest_remainder(n, tb_w)
        elif n_rest:
            col = largest_remainder(n_rest, rest_w if sum(rest_w) else tb_w)
            targets.update(controlled_rounding(tb_rows, col))
    for s, n in counts.items():
        kind = _kind(s)
        if kind in ("tb", "test_only"):
            continue
        targets[s] = largest_remainder(n, ratios[kind])
    for s in sorted(counts):
        w = ratios["tb" if _kind(s) == "test_only" else _kind(s)]
        empty = [
            SPLITS[c] if n_cols == 3 else f"fold{c}"
            for c in range(n_cols)
            if w[c] > 0 and targets[s][c] == 0 and _kind(s) != "test_only"
        ]
        if empty and counts[s] > 0:
            warnings.append(
                f"stratum '{s}' ({counts[s]} image(s)) is too small for ratio "
                f"{format_ratio(w)}: {', '.join(empty)} get(s) none of it; "
                f"allocated {targets[s]} by largest remainder"
            )
    return targets, warnings


def _check_records(records: Sequence[Record]) -> None:
    seen: dict[tuple[str, str], int] = {}
    for i, r in enumerate(records):
        key = (r.source, r.file_name)
        if key in seen:
            raise TbxError(
                f"image '{r.file_name}' appears twice in the records", fix="each image must be listed once"
            )
        seen[key] = i


def plan_split(records: Sequence[Record], cfg: SplitConfig | None = None) -> SplitPlan:
    """Split ``records`` (see the module docstring); returns copies with ``split`` set + report."""
    cfg = cfg or SplitConfig()
    cfg.check()
    if not records:
        raise TbxError("no images to split", fix="check that the dataset root has annotation files")
    _check_records(records)
    tb_w = parse_ratio(cfg.ratio, "--ratio")
    non_w = parse_ratio(cfg.non_tb_ratio, "--non-tb-ratio")
    ex_w = parse_ratio(cfg.extra_ratio, "--extra-ratio") if cfg.extra_ratio else default_extra_ratio(tb_w)
    ratios = {
        "tb": tb_w,
        "non_tb": non_w,
        "extra": ex_w,
        "test_only": (Fraction(0), Fraction(0), Fraction(1)),
    }
    strata = [allocation_stratum(r, cfg.unknown_tb_as) for r in records]
    counts = dict(sorted(Counter(strata).items()))
    targets, warnings = _targets(counts, ratios, 3, cfg.tb_quota)
    rng = random.Random(f"tbx-split:{cfg.seed}")
    cols = assign_groups(records, strata, targets, rng, forced={"tb:uncertain": 2})
    out = [r.replace(split=SPLITS[c]) for r, c in zip(records, cols)]

    achieved: dict[str, list[int]] = {s: [0, 0, 0] for s in counts}
    for s, c in zip(strata, cols):
        achieved[s][c] += 1
    reports = []
    n_unknown = Counter(
        s
        for s, r in zip(strata, records)
        if r.source == "tbx11k" and r.is_tb and r.tb_type in ("unknown", "none")
    )
    for s in counts:
        kind = _kind(s)
        rep = StratumReport(
            s,
            counts[s],
            format_ratio(ratios[kind]) if kind != "tb" else f"{format_ratio(tb_w)} (TB {cfg.tb_quota})",
            targets[s],
            achieved[s],
        )
        if kind == "test_only":
            rep.notes.append("uncertain TB type: always test (docs/dataset.md §1.2)")
        if n_unknown.get(s):
            rep.notes.append(
                f"includes {n_unknown[s]} TB image(s) without boxes (type unknown), "
                f"allocated as '{s}' (unknown_tb_as={cfg.unknown_tb_as})"
            )
        if rep.achieved != rep.requested:
            rep.notes.append(
                f"patient grouping forced a deviation of {rep.deviation} "
                "(train, val, test) from the requested counts"
            )
            warnings.append(
                f"stratum '{s}': achieved {rep.achieved} instead of {rep.requested} "
                "because patients cannot be separated"
            )
        reports.append(rep)
    plan = SplitPlan(
        out,
        reports,
        warnings,
        {
            "tb": format_ratio(tb_w),
            "non_tb": format_ratio(non_w),
            "extra": format_ratio(ex_w),
            "unknown_tb_as": cfg.unknown_tb_as,
            "tb_quota": cfg.tb_quota,
            "seed": str(cfg.seed),
        },
        alloc_strata=strata,
    )
    if cfg.folds:
        folds, fold_rep = _folds(out, strata, cfg.folds, cfg.seed, cfg.tb_quota)
        plan.folds, plan.fold_strata = folds, fold_rep
    return plan


def split_records(records: list[Record], cfg: SplitConfig | None = None) -> list[Record]:
    """Copies of ``records`` (same order) with ``.split`` set to train / val / test."""
    return plan_split(records, cfg).records


def _folds(
    records: Sequence[Record], strata: Sequence[str], k: int, seed: int, tb_quota: str
) -> tuple[list[int | None], list[dict[str, Any]]]:
    if k < 2:
        raise TbxError(f"--folds {k} must be at least 2", fix="use e.g. --folds 4 (0 = no folds)")
    idx = [i for i, r in enumerate(records) if r.split in ("train", "val")]
    sub = [records[i] for i in idx]
    sub_strata = [strata[i] for i in idx]
    counts = dict(sorted(Counter(sub_strata).items()))
    if len({r.patient_id or f"img{i}" for i, r in enumerate(sub)}) < k:
        raise TbxError(f"--folds {k}: train+val has fewer than {k} patients/images")
    eq = tuple(Fraction(1) for _ in range(k))
    targets, _ = _targets(counts, {"tb": eq, "non_tb": eq, "extra": eq}, k, tb_quota)
    cols = assign_groups(sub, sub_strata, targets, random.Random(f"tbx-folds:{seed}:{k}"))
    folds: list[int | None] = [None] * len(records)
    for i, c in zip(idx, cols):
        folds[i] = c
    achieved = {s: [0] * k for s in counts}
    for s, c in zip(sub_strata, cols):
        achieved[s][c] += 1
    rep = [{"stratum": s, "n": counts[s], "requested": targets[s], "achieved": achieved[s]} for s in counts]
    return folds, rep


def fold_records(records: Sequence[Record], folds: Sequence[int | None], k: int) -> list[Record]:
    """Copies of the train+val records of fold ``k``: split = "val" in fold k, "train" otherwise."""
    return [r.replace(split="val" if f == k else "train") for r, f in zip(records, folds) if f is not None]


# ----------------------------------------------------------------------------------------------
# reading a dataset root and writing the split (all-or-nothing)

# Files a split owns (docs/dataset.md §1.3 official names + fold files); --force replaces/removes only these.
_SPLIT_JSON = re.compile(
    r"^(TBX11K_(train|val|trainval|test)(_only_tb)?|all_(train|val|trainval|test)"
    r"|fold\d+_(all_)?(train|val)(_only_tb)?)\.json$"
)
_SPLIT_LIST = re.compile(
    r"^(TBX11K_(train|val|trainval|test)|all_(train|val|trainval|test)"
    r"|fold\d+_(all_)?(train|val))\.txt$"
)
REPORT_NAME = "split_report.json"
PROVENANCE_NAME = "provenance_split.json"


def load_root_records(root: str | Path) -> list[Record]:
    """The labelled images of a dataset (layout root, annotation folder or one COCO JSON) via
    :func:`tbx.data.views.load_dataset`, sorted by (source, file name) so that the split does not
    depend on which files the root happens to hold or their order.  Unlabelled images (``test/``)
    are an error: they cannot be stratified."""
    recs = load_dataset(root)
    bad = [r.file_name for r in recs if r.label not in LABELS]
    if bad:
        raise TbxError(
            f"{len(bad)} image(s) without a derivable label (e.g. '{bad[0]}')",
            root,
            "unlabelled images (imgs/test/) cannot be split; remove the annotation "
            "file that lists them (e.g. all_test.json) or give a labelled source",
        )
    recs = [r.replace(split=None) for r in recs]
    if len({(r.source, r.file_name) for r in recs}) != len(recs):
        raise TbxError("an image is listed twice", root, "each file name must appear once")
    return sorted(recs, key=lambda r: (r.source, r.file_name))


@dataclass
class SplitResult:
    plan: SplitPlan
    out: Path
    written: list[Path]
    removed: list[Path]


def _stage_files(tmp: Path, plan: SplitPlan, cfg: SplitConfig) -> None:
    write_views(tmp, plan.records)
    if plan.folds is not None:
        has_extra = any(r.source != "tbx11k" for r in plan.records)
        for k in range(cfg.folds):
            views = annotation_views(fold_records(plan.records, plan.folds, k))
            for name, recs in views.items():
                prefix, rest = name.split("_", 1)
                if rest.startswith("trainval"):
                    continue
                if prefix == "all" and not has_extra:
                    continue
                stem = f"fold{k}_{rest}" if prefix == "TBX11K" else f"fold{k}_all_{rest}"
                write_view(tmp, stem, recs)


def _existing_split_files(out: Path) -> list[Path]:
    found = []
    for sub, pat in ((ANN_JSON, _SPLIT_JSON), (LISTS, _SPLIT_LIST)):
        d = out / sub
        if d.is_dir():
            found += [p for p in sorted(d.iterdir()) if p.is_file() and pat.match(p.name)]
    if (out / REPORT_NAME).is_file():
        found.append(out / REPORT_NAME)
    return found


def _commit(staged: list[tuple[Path, Path]], remove: list[Path]) -> None:
    """Move staged files into place; on any error restore every previous file."""
    backups: list[tuple[Path, Path]] = []
    placed: list[Path] = []
    try:
        for dest in [d for _, d in staged if d.exists()] + remove:
            bak = dest.with_name(f".{dest.name}.tbx-split-bak")
            os.replace(dest, bak)
            backups.append((bak, dest))
        for src, dest in staged:
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dest)
            placed.append(dest)
    except BaseException:
        for d in placed:
            d.unlink(missing_ok=True)
        for bak, dest in backups:
            os.replace(bak, dest)
        raise
    for bak, _ in backups:
        bak.unlink(missing_ok=True)


def run_split(
    root: str | Path,
    cfg: SplitConfig | None = None,
    out: str | Path | None = None,
    force: bool = False,
    records: list[Record] | None = None,
) -> SplitResult:
    """``tbx dataset split``: read ROOT's annotations, split, write the official views.

    ``root`` is anything :func:`tbx.data.views.load_dataset` reads (layout root, annotation folder,
    one COCO JSON); ``records`` (optional) replaces reading it.

    Writes ``lists/*.txt`` + ``annotations/json/*.json`` (TBX11K_*, all_*, fold*), ``split_report.json``
    and ``provenance_split.json`` into ``out`` (default ``root``; a separate name so the build's
    ``provenance.json`` of the same root is kept).  Existing split files are replaced only
    with ``force`` (stale ones, e.g. fold files of an earlier K, are then removed); everything is
    written to a temporary folder first and moved into place at the end, so on any error nothing
    changes.
    """
    cfg = cfg or SplitConfig()
    root = Path(root)
    if out is None and root.exists() and not (root / ANN_JSON).is_dir():
        raise TbxError(
            "--out is required when the source is not a layout root (a single "
            "annotation file or a bare annotation folder)",
            root,
            "give --out DATASET_ROOT",
        )
    out = Path(out) if out is not None else root
    recs = records if records is not None else load_root_records(root)
    plan = plan_split(recs, cfg)
    existing = _existing_split_files(out)
    if existing and not force:
        names = ", ".join(str(p.relative_to(out)) for p in existing[:4])
        more = f" and {len(existing) - 4} more" if len(existing) > 4 else ""
        raise TbxError(f"split files already exist ({names}{more})", out, "pass --force to replace them")
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tbx-split-", dir=out))
    try:
        _stage_files(tmp, plan, cfg)
        report = plan.report()
        atomic_write_json(tmp / REPORT_NAME, report)
        write_provenance(
            tmp,
            cfg,
            cfg.seed,
            name=PROVENANCE_NAME,
            root=str(root.resolve()),
            n_images=len(recs),
            report=REPORT_NAME,
        )
        staged = sorted((p, out / p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        new = {d for _, d in staged}
        stale = [p for p in existing if p not in new]
        _commit(staged, stale)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return SplitResult(plan, out, [d for _, d in staged], stale)
