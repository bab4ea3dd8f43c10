"""The bench-result schema ``tbx.bench/1``: what ``tbx bench`` writes and ``tbx report`` reads.

One spelling for everything (fractions in [0, 1])::

    schema: "tbx.bench/1"
    gt, pred, n_images, n_tbx11k_images, config, notes
    classification: accuracy auc sensitivity specificity ap ar f1 confusion (3×3) tp tn fp fn …
                    roc: {fpr, tpr, thresholds}, auc_delong: {auc, se, ci: [lo, hi]} | None
    operating_points: {sensitivity_at_specificity: {…}, specificity_at_sensitivity: {…}}
    detection: {all_cxr | tb_only: {agnostic | active | latent: DetectionRow}}
    ci: {level, n_bootstrap, seed, method, <the paths above>: [lo, hi]}   (with --bootstrap)

:func:`check_bench_result` is the reader's gate: a file with another schema, another mode or row
name, or an interval that is not ``[lo, hi]`` is a :class:`TbxError` naming the file and the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypedDict

from tbx.errors import TbxError

SCHEMA = "tbx.bench/1"
DET_MODES = ("all_cxr", "tb_only")  # detection modes (docs/protocol.md §4.3)
DET_ROWS = ("agnostic", "active", "latent")  # detection rows of each mode
DET_ROW_LABELS = {"agnostic": "Category-agnostic TB", "active": "Active TB", "latent": "Latent TB"}


class Froc(TypedDict):
    fppi: list[float]
    sensitivity: list[float | None]


class DetectionRow(TypedDict, total=False):
    ap: float | None
    ap50: float | None
    ap75: float | None
    ar100: float | None
    froc: Froc
    froc_curve: Froc
    pr: dict[str, list[float]]
    analysis: dict[str, dict[str, Any]] | None
    n_images: int
    n_gt: int
    n_dets: int


class BenchResult(TypedDict, total=False):
    schema: str
    gt: str
    pred: str
    n_images: int
    n_tbx11k_images: int
    config: dict[str, Any]
    notes: list[str]
    classification: dict[str, Any]
    operating_points: dict[str, dict[str, float | None]]
    detection: dict[str, dict[str, DetectionRow]]
    ci: dict[str, Any]


def _check_modes(det: Any, path: Path, key: str) -> None:
    if not isinstance(det, dict):
        raise TbxError(f"'{key}' must be a mapping of detection modes", path)
    for mode, rows in det.items():
        if mode not in DET_MODES:
            raise TbxError(
                f"unknown detection mode '{key}.{mode}'",
                path,
                f"use {' / '.join(DET_MODES)} (schema {SCHEMA}; re-run `tbx bench`)",
            )
        if not isinstance(rows, dict):
            raise TbxError(f"'{key}.{mode}' must be a mapping of detection rows", path)
        for row in rows:
            if row not in DET_ROWS:
                raise TbxError(
                    f"unknown detection row '{key}.{mode}.{row}'",
                    path,
                    f"use {' / '.join(DET_ROWS)} (schema {SCHEMA}; re-run `tbx bench`)",
                )


def _check_intervals(tree: Any, path: Path, key: str) -> None:
    """Every leaf of a CI tree is ``[lo, hi]`` (numbers or None); lists of them (FROC) allowed."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            _check_intervals(v, path, f"{key}.{k}")
    elif isinstance(tree, list) and tree and all(isinstance(v, list) for v in tree):
        for i, v in enumerate(tree):
            _check_intervals(v, path, f"{key}[{i}]")
    elif not (
        isinstance(tree, list)
        and len(tree) == 2
        and all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in tree)
    ):
        raise TbxError(
            f"'{key}' is not an interval [lo, hi]", path, f"write intervals as [lo, hi] ({SCHEMA})"
        )


def check_bench_result(data: Any, path: Path) -> BenchResult:
    """``data`` (a parsed bench JSON) as a :class:`BenchResult`, or a TbxError saying what is off."""
    if not isinstance(data, dict):
        raise TbxError("bench JSON must be an object", path, "use the output of `tbx bench --json`")
    if data.get("schema") != SCHEMA:
        raise TbxError(
            f"bench JSON of schema {data.get('schema')!r}, expected {SCHEMA!r}",
            path,
            "re-run `tbx bench` with this version of tbx",
        )
    if "detection" in data:
        _check_modes(data["detection"], path, "detection")
    ci = data.get("ci")
    if ci is not None:
        if not isinstance(ci, dict):
            raise TbxError("'ci' must be a mapping", path)
        if "detection" in ci:
            _check_modes(ci["detection"], path, "ci.detection")
        for part in ("classification", "operating_points", "detection"):
            if part in ci:
                _check_intervals(ci[part], path, f"ci.{part}")
    return data  # type: ignore[return-value]
