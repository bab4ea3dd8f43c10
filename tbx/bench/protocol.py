"""The TBX11K evaluation protocol (docs/protocol.md §4): which images, which boxes, which rows.

``evaluate(gt_path, pred_dir, cfg)`` scores a prediction folder (``cls_result.txt`` and/or
``bbox_result.json``, docs/protocol.md §4.1) against a COCO annotation file and returns the JSON-ready dict;
``compare(gt_path, pred_a, pred_b, cfg)`` gives paired differences.

Protocol decisions (docs/protocol.md §4.2–4.3):

- Classification runs over every image of the annotation file, in its order; the image label comes
  from the path rules (:func:`tbx.data.layout.label_from_path`), extra-dataset non-TB images count
  as healthy.
- Detection runs on TBX11K images only (extras have no boxes).  Rows: ``agnostic`` (all box
  categories merged, uncertain-type boxes included, every image of the mode), ``active``
  (category 1) and ``latent`` (category 2); images of uncertain-type TB are left out of the
  active/latent rows unless ``keep_uncertain`` (the authors' script kept them).
- Modes: ``all_cxr`` — every TBX11K image; all boxes of an image are discarded when its arg-max
  class is not TB (needs ``cls_result.txt``); ``tb_only`` — only TB images, no filtering.  With
  ``mode="both"`` and no ``cls_result.txt`` the all-cxr mode is skipped with a note; asking for
  ``all-cxr`` explicitly without it is an error.
- Bootstrap: one resample of *all* images of the file (counts per image) is shared by every
  metric — classification, operating points and each detection row (which sees the counts of its
  own images) — and, in :func:`compare`, by both prediction sets (paired bootstrap).  Percentile
  intervals.  The AUC also gets a DeLong interval (always) and, in ``compare``, DeLong's paired
  test.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tbx.bench.classification import ClassificationEval, sorted_unique
from tbx.bench.detection import IOU_THRS, LOC_IOU, GroundTruth, RankedDetections, RowEval, match
from tbx.bench.results_io import BBOX_RESULT, CLS_RESULT, Detections, read_bbox_arrays, read_cls_result
from tbx.bench.schema import DET_ROWS, SCHEMA
from tbx.bench.stats import bootstrap_counts, ci_tree, delong_ci, delong_test
from tbx.data.coco import load_json, records_from_coco
from tbx.data.records import ACTIVE, CATEGORIES, CLASS_INDEX, LATENT, UNCERTAIN, Record
from tbx.errors import TbxError
from tbx.io import atomic_write_json

MODES = {"all-cxr": ("all_cxr",), "tb-only": ("tb_only",), "both": ("all_cxr", "tb_only")}


@dataclass
class BenchConfig:
    """Options of ``tbx bench`` (docs/protocol.md §4)."""

    mode: Literal["all-cxr", "tb-only", "both"] = "both"
    bootstrap: int = 0  # number of bootstrap resamples (0 = no percentile CIs)
    seed: int = 0
    keep_uncertain: bool = False  # keep uncertain-type TB images in the active/latent rows
    ci_level: float = 0.95
    max_curve_points: int = 500  # ROC / FROC curves are downsampled to at most this many points

    def check(self) -> None:
        if self.mode not in MODES:
            raise TbxError(f"unknown mode '{self.mode}'", fix="use all-cxr, tb-only or both")
        if self.bootstrap < 0:
            raise TbxError("--bootstrap must be ≥ 0")
        if not 0.5 <= self.ci_level < 1:
            raise TbxError("ci_level must be in [0.5, 1)")


# ------------------------------------------------------------------------------------ the truth
class GroundTruthSet:
    """Everything derived from the annotation file once (shared by every prediction set)."""

    def __init__(self, gt_path: str | Path):
        self.path = Path(gt_path)
        data = load_json(self.path)
        self.records: list[Record] = records_from_coco(data, self.path)
        if not self.records:
            raise TbxError("the annotation file has no images", self.path)
        self.category_ids = sorted({int(c["id"]) for c in data.get("categories") or CATEGORIES})
        self.image_ids = np.array([r.image_id for r in self.records], dtype=np.int64)
        if sorted_unique(self.image_ids).size != self.image_ids.size:
            raise TbxError("duplicate image ids in the annotation file", self.path)
        self.y_true = np.array([CLASS_INDEX[r.label] for r in self.records], dtype=np.int64)
        # detection universe: TBX11K images, in ascending id order (COCOeval's order)
        tbx = [i for i, r in enumerate(self.records) if r.source == "tbx11k"]
        self.gt = GroundTruth.build(
            (self.records[i].image_id, [(b.x, b.y, b.w, b.h, b.category) for b in self.records[i].boxes])
            for i in tbx
        )
        pos = {int(iid): k for k, iid in enumerate(self.gt.image_ids)}
        self.univ_to_rec = np.zeros(len(tbx), dtype=np.int64)  # universe index → record index
        for i in tbx:
            self.univ_to_rec[pos[self.records[i].image_id]] = i
        recs = [self.records[i] for i in self.univ_to_rec]
        self.u_is_tb = np.array([r.label == "tb" for r in recs], dtype=bool)
        self.u_uncertain = np.array([r.tb_type == "uncertain" for r in recs], dtype=bool)

    def row_masks(
        self, mode: str, row: str, keep_uncertain: bool, pred_tb: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(images in the evaluated set, images whose detections are kept) over the universe."""
        n = self.univ_to_rec.shape[0]
        img_in = np.ones(n, bool) if mode == "all_cxr" else self.u_is_tb.copy()
        if row != "agnostic" and not keep_uncertain:
            img_in &= ~self.u_uncertain
        det_keep = pred_tb[self.univ_to_rec] if mode == "all_cxr" else np.ones(n, bool)
        return img_in, det_keep


# ---------------------------------------------------------------------------- one prediction set
class _Scored:
    """One prediction folder scored against a :class:`GroundTruthSet` (point + resample hooks)."""

    def __init__(self, truth: GroundTruthSet, pred_dir: str | Path, cfg: BenchConfig):
        self.truth, self.cfg = truth, cfg
        self.notes: list[str] = []
        pred_dir = Path(pred_dir)
        if not pred_dir.is_dir():
            raise TbxError(
                "prediction folder not found",
                pred_dir,
                f"give the folder holding {CLS_RESULT} and/or {BBOX_RESULT}",
            )
        cls_path, det_path = pred_dir / CLS_RESULT, pred_dir / BBOX_RESULT
        if not cls_path.exists() and not det_path.exists():
            raise TbxError(
                f"neither {CLS_RESULT} nor {BBOX_RESULT} found",
                pred_dir,
                "run `tbx predict` or copy the authors' result files there",
            )
        self.cls: ClassificationEval | None = None
        self.pred_tb: np.ndarray | None = None
        if cls_path.exists():
            probs = read_cls_result(cls_path, len(truth.records))
            self.cls = ClassificationEval(probs, truth.y_true)
            self.pred_tb = self.cls.y_pred == 2
        else:
            self.notes.append(f"{CLS_RESULT} absent: classification and operating points skipped")
        self.modes = list(MODES[cfg.mode])
        self.rows: dict[str, dict[str, RowEval]] = {}
        if not det_path.exists():
            self.notes.append(f"{BBOX_RESULT} absent: detection skipped")
            return
        if self.pred_tb is None and "all_cxr" in self.modes:
            if cfg.mode == "all-cxr":
                raise TbxError(
                    f"all-cxr detection needs {CLS_RESULT} (boxes are kept only on images predicted TB)",
                    pred_dir,
                    f"add {CLS_RESULT} or use --mode tb-only",
                )
            self.modes.remove("all_cxr")
            self.notes.append(f"{CLS_RESULT} absent: all-cxr detection skipped (needs the class prediction)")
        dets = read_bbox_arrays(det_path, truth.image_ids.tolist(), truth.category_ids)
        self.n_dets_file = len(dets)
        n_extra = int((~np.isin(dets.image_id, truth.gt.image_ids)).sum())
        if n_extra:
            self.notes.append(
                f"{n_extra} detections on extra-dataset images ignored (detection is "
                "scored on TBX11K images only, docs/protocol.md §4.3)"
            )
        self._build_rows(dets)

    def _build_rows(self, dets: Detections) -> None:
        gt = self.truth.gt
        thrs = np.r_[IOU_THRS, LOC_IOU]
        all_cats = set(self.truth.category_ids)
        ranked = RankedDetections.build(gt, dets)  # sorted once for the five matchings
        m = {
            "agnostic": match(gt, ranked, None, None, iou_thrs=thrs),
            "active": match(gt, ranked, {ACTIVE}, {ACTIVE}, iou_thrs=thrs),
            "latent": match(gt, ranked, {LATENT}, {LATENT}, iou_thrs=thrs),
        }
        oth = {
            "agnostic": None,
            "active": match(
                gt,
                ranked,
                {ACTIVE},
                {ACTIVE},
                (all_cats | {UNCERTAIN}) - {ACTIVE},
                iou_thrs=np.array([LOC_IOU]),
            ),
            "latent": match(
                gt,
                ranked,
                {LATENT},
                {LATENT},
                (all_cats | {UNCERTAIN}) - {LATENT},
                iou_thrs=np.array([LOC_IOU]),
            ),
        }
        for mode in self.modes:
            self.rows[mode] = {}
            for row in DET_ROWS:
                img_in, det_keep = self.truth.row_masks(mode, row, self.cfg.keep_uncertain, self.pred_tb)
                self.rows[mode][row] = RowEval(m[row], img_in, det_keep, oth[row])

    # -- point estimates
    def point(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.cls is not None:
            cls, ops = self.cls.point(self.cfg.max_curve_points)
            if cls["n_tb"] >= 2 and cls["n_images"] - cls["n_tb"] >= 2:
                cls["auc_delong"] = delong_ci(self.cls.score, self.cls.y_tb, self.cfg.ci_level)
            else:
                cls["auc_delong"] = None
            out["classification"] = cls
            out["operating_points"] = ops
        if self.rows:
            out["detection"] = {
                mode: {row: ev.point(self.cfg.max_curve_points) for row, ev in rows.items()}
                for mode, rows in self.rows.items()
            }
        return out

    # -- bootstrap samples (same tree shape as the CI block)
    def samples(self, counts: np.ndarray) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.cls is not None:
            out["classification"], out["operating_points"] = self.cls.samples(counts)
        if self.rows:
            cu = np.take(counts, self.truth.univ_to_rec, axis=1)  # the universe's columns
            out["detection"] = {
                mode: {row: ev.samples(cu) for row, ev in rows.items()} for mode, rows in self.rows.items()
            }
        return out


def _tree_map2(f, a, b):
    if isinstance(a, dict):
        return {k: _tree_map2(f, a[k], b[k]) for k in a if k in b}
    if isinstance(a, list):
        return [_tree_map2(f, x, y) for x, y in zip(a, b)]
    return f(a, b)


def _point_like(point: dict, samples: dict):
    """The point estimates at the paths of a samples tree."""
    if isinstance(samples, dict):
        return {
            k: _point_like(point.get(k) if isinstance(point, dict) else None, v) for k, v in samples.items()
        }
    if isinstance(samples, list):
        return [_point_like(point[i] if isinstance(point, list) else None, v) for i, v in enumerate(samples)]
    return point


def _header(truth: GroundTruthSet, cfg: BenchConfig) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "gt": str(truth.path),
        "n_images": len(truth.records),
        "n_tbx11k_images": int(truth.univ_to_rec.shape[0]),
        "config": dataclasses.asdict(cfg),
    }


def evaluate(
    gt_path: str | Path,
    pred_dir: str | Path,
    cfg: BenchConfig | None = None,
    truth: GroundTruthSet | None = None,
) -> dict[str, Any]:
    """Score one prediction folder; returns the JSON dict (fractions in [0, 1], see module doc)."""
    cfg = cfg or BenchConfig()
    cfg.check()
    truth = truth or GroundTruthSet(gt_path)
    scored = _Scored(truth, pred_dir, cfg)
    out = _header(truth, cfg)
    out["pred"] = str(pred_dir)
    out.update(scored.point())
    out["notes"] = scored.notes
    if cfg.bootstrap > 0:
        counts = bootstrap_counts(len(truth.records), cfg.bootstrap, cfg.seed)
        ci = ci_tree(scored.samples(counts), cfg.ci_level)
        out["ci"] = {
            "level": cfg.ci_level,
            "n_bootstrap": cfg.bootstrap,
            "seed": cfg.seed,
            "method": "percentile, image-level resampling",
            **ci,
        }
    return out


def compare(
    gt_path: str | Path, pred_a: str | Path, pred_b: str | Path, cfg: BenchConfig | None = None
) -> dict[str, Any]:
    """Paired comparison A − B on the same images: differences, paired-bootstrap CIs, DeLong test."""
    cfg = cfg or BenchConfig()
    cfg.check()
    truth = GroundTruthSet(gt_path)
    a, b = _Scored(truth, pred_a, cfg), _Scored(truth, pred_b, cfg)
    pa, pb = a.point(), b.point()
    out = _header(truth, cfg)
    out.update(
        {
            "a": str(pred_a),
            "b": str(pred_b),
            "notes": [*("A: " + n for n in a.notes), *("B: " + n for n in b.notes)],
        }
    )
    n_boot = cfg.bootstrap if cfg.bootstrap > 0 else 1000
    counts = bootstrap_counts(len(truth.records), n_boot, cfg.seed)
    sa, sb = a.samples(counts), b.samples(counts)
    diff_samples = _tree_map2(lambda x, y: np.asarray(x) - np.asarray(y), sa, sb)

    def sub(x, y):
        return None if x is None or y is None else float(x) - float(y)

    va, vb = _point_like(pa, sa), _point_like(pb, sb)
    out["metrics_a"], out["metrics_b"] = va, vb
    out["diff"] = _tree_map2(sub, va, vb)
    out["ci"] = {
        "level": cfg.ci_level,
        "n_bootstrap": n_boot,
        "seed": cfg.seed,
        "method": "paired percentile bootstrap (same image resamples for A and B)",
        **ci_tree(diff_samples, cfg.ci_level),
    }
    if a.cls is not None and b.cls is not None:
        out["delong"] = delong_test(a.cls.score, b.cls.score, a.cls.y_tb, cfg.ci_level)
    else:
        out["delong"] = None
    return out


def write_result(result: dict[str, Any], json_path: str | Path, cfg: BenchConfig) -> Path:
    """Write the result JSON (atomic) and ``<stem>.provenance.json`` beside it (one per result, so
    a second ``--json`` into the same folder keeps the first one's record)."""
    from tbx.provenance import write_provenance  # not at import: keeps `tbx bench` start-up small

    json_path = Path(json_path)
    atomic_write_json(json_path, result)
    write_provenance(
        json_path.parent,
        cfg,
        cfg.seed,
        name=f"{json_path.stem}.provenance.json",
        output=json_path.name,
        gt=result.get("gt"),
    )
    return json_path
