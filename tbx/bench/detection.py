"""TB-area detection metrics: COCO AP/AP50/AR@100 exactly as pycocotools, FROC, error analysis.

Why not call ``COCOeval`` directly?  Its pure-Python matching loop and its accumulate step would
be re-run for each of the six protocol rows and, worse, for every bootstrap resample.  Instead:

1. :func:`match` reproduces ``COCOeval.evaluate`` for bounding boxes (area range "all",
   ``maxDets`` 100, IoU bit for bit as ``pycocotools.mask.iou``): per image, detections sorted by
   score (stable, file order on ties) and cut at 100, ground truths with *ignored* ones last, the
   same greedy matching (a detection takes the unmatched ground truth of highest IoU ≥ t, the last
   one on ties; ignored ground truths only when no regular one qualifies; a detection matched to an
   ignored ground truth is ignored), vectorised over images × IoU thresholds (the greedy step runs
   over a detection's rank among those that overlap some ground truth; the sort is shared by the
   rows of one prediction set, :class:`RankedDetections`).  Its output are flat
   arrays in the global order of ``COCOeval.accumulate`` (images by ascending id, then
   ``mergesort`` on −score): per detection its image, score and TP/FP flags per IoU threshold.
2. :func:`accumulate` reproduces ``COCOeval.accumulate`` (cumulated TP/FP, precision made
   monotone, 101-point interpolation with ``searchsorted(..., 'left')``) with *image weights*:
   weight 1 everywhere is COCOeval on the full set (tested to 1e-9), weight 0 drops an image
   (an evaluation subset or the all-cxr filter) and a bootstrap count ``c`` counts the image ``c``
   times — so a resample costs a few vectorised cumulative sums instead of a new COCOeval.
   (Tested against COCOeval on a dataset with the images physically copied.  One convention: when
   an image with *tied* scores is drawn c times, its tied detections stay together, whereas
   COCOeval on copies would list copy 1 then copy 2 — both are valid orders of tied detections.)

FROC (IoU ≥ 0.5, detections ranked by score): the curve runs over score thresholds (between tie
groups only); *false positives per image* = cumulated FP / number of images of the evaluated set
(for all-cxr: every TBX11K image of the file, including those whose boxes were discarded by the
class filter; for tb-only: the TB images); sensitivity = lesion-level recall (matched ground-truth
boxes / all ground-truth boxes).  Sensitivity at a rate *f* is that of the lowest threshold whose
FP/image ≤ *f* (0 when none).  ``mean`` = average over the 7 standard rates 1/8 … 8
(the CPM / LUNA16 score).

Error analysis (after pycocotools' ``analyze`` — the Matlab ``CocoEval.analyze`` and the Python
port in mmdetection's ``coco_error_analysis.py``): 101-point PR curves
``C75`` (IoU .75), ``C50`` (IoU .50), ``Loc`` (IoU .10: localisation errors ignored, duplicates
still count), ``Oth`` (IoU .10 after class confusions are removed: ground-truth boxes of the other
TB categories on the evaluated images become *ignored* boxes of the evaluated category, so a
detection on them is neither TP nor FP), ``BG`` (all background FPs removed too: precision 1 at
every recall level ``Oth`` reaches, 0 beyond) and ``FN`` (1 everywhere).  The COCO "Sim"
(super-category confusion) step coincides with ``Oth`` here — the three TB categories share one
super-category — so it is not reported separately; for the category-agnostic row ``Oth`` equals
``Loc``.  Note: mmdetection's port marks those boxes with a key COCOeval never reads
(``ignored_split``), which turns them into extra *positive* ground truths; we follow the Matlab
original (they are ignored).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from tbx.bench.classification import downsample_curve, least_int, sorted_unique
from tbx.bench.results_io import Detections

# COCOeval defaults (Params.setDetParams) — IoU .50:.05:.95, 101 recall points, 100 dets, area "all"
IOU_THRS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
REC_THRS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
LOC_IOU = 0.1  # error analysis "Loc"/"Oth" threshold
MAX_DETS = 100
AREA_ALL = (0**2, 1e5**2)
FROC_FPPI = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
EPS = np.spacing(1)


@dataclass
class GroundTruth:
    """Ground-truth boxes of the evaluation universe, flat, grouped by image (file order within)."""

    image_ids: np.ndarray  # (n_img,) ascending — COCOeval sorts params.imgIds
    img: np.ndarray  # (M,) image index of each box, non-decreasing
    boxes: np.ndarray  # (M, 4) xywh
    cats: np.ndarray  # (M,) category ids

    @staticmethod
    def build(items: Iterable[tuple[int, list[tuple[float, float, float, float, int]]]]) -> GroundTruth:
        """From ``(image_id, [(x, y, w, h, category), ...])`` pairs (any image order)."""
        items = sorted(items, key=lambda t: t[0])
        ids = np.array([i for i, _ in items], dtype=np.int64)
        if ids.size and np.any(ids[1:] == ids[:-1]):
            raise ValueError("duplicate image ids in the ground truth")
        rows = [(k, *b) for k, (_, bxs) in enumerate(items) for b in bxs]
        a = np.asarray(rows, dtype=np.float64).reshape(-1, 6)
        return GroundTruth(ids, a[:, 0].astype(np.int64), a[:, 1:5].copy(), a[:, 5].astype(np.int64))


@dataclass
class Matches:
    """Per-detection matching results in the global accumulate order (see module doc)."""

    iou_thrs: np.ndarray  # (T,)
    img: np.ndarray  # (D,) image index into GroundTruth.image_ids
    score: np.ndarray  # (D,)
    tp: np.ndarray  # (T, D) bool: matched to a regular ground truth
    fp: np.ndarray  # (T, D) bool: unmatched and not ignored
    n_gt: np.ndarray  # (n_img,) regular (non-ignored) ground truths per image


def bbox_iou(d: np.ndarray, g: np.ndarray) -> np.ndarray:
    """IoU of box pairs ``d[i]``, ``g[i]`` (xywh), bit for bit ``pycocotools.mask.iou`` (non-crowd).

    The same operations in the same order as its C ``bbIou`` (``fmin``/``fmax`` of the corners,
    no overlap → 0, ``u = da + ga - i``), element-wise over pairs instead of a (D, G) loop.
    """
    w = np.minimum(d[:, 2] + d[:, 0], g[:, 2] + g[:, 0]) - np.maximum(d[:, 0], g[:, 0])
    h = np.minimum(d[:, 3] + d[:, 1], g[:, 3] + g[:, 1]) - np.maximum(d[:, 1], g[:, 1])
    inter = w * h
    union = d[:, 2] * d[:, 3] + g[:, 2] * g[:, 3] - inter
    ok = (w > 0) & (h > 0)
    out = np.zeros(d.shape[0])
    np.divide(inter, union, out=out, where=ok)
    return out


def _match_all(
    boxes: np.ndarray,
    img: np.ndarray,
    g_box: np.ndarray,
    g_img: np.ndarray,
    g_ig: np.ndarray,
    n_img: int,
    thrs: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """COCOeval.evaluateImg's greedy matching for every image at once → ``(matched, to_ignored)`` (T, D).

    Detections are grouped by image (descending score within), ground truths by image (regular
    first).  A detection takes the untaken ground truth of highest IoU ≥ t (the last one on ties),
    ignored ones only when no regular one qualifies.  Only detections that overlap some ground
    truth by the lowest threshold can match, so the sequential greedy step runs over their rank
    within the image (a few dozen steps), vectorised over images × thresholds × ground truths.
    """
    D, T = boxes.shape[0], thrs.shape[0]
    dtm = np.zeros((T, D), dtype=bool)
    dtig = np.zeros((T, D), dtype=bool)
    if D == 0 or g_img.size == 0:
        return dtm, dtig
    g_bounds = np.searchsorted(g_img, np.arange(n_img + 1))
    g_count = np.diff(g_bounds)
    per_det = g_count[img]  # ground truths on each detection's image
    pair_d = np.repeat(np.arange(D), per_det)
    if pair_d.size == 0:
        return dtm, dtig
    first_pair = np.cumsum(per_det) - per_det
    pair_j = np.arange(pair_d.size) - first_pair[pair_d]  # rank of the ground truth in its image
    iou = bbox_iou(boxes[pair_d], g_box[g_bounds[img[pair_d]] + pair_j])
    thr = np.minimum(thrs, 1 - 1e-10)
    has = per_det > 0
    best = np.full(D, -1.0)
    best[has] = np.maximum.reduceat(iou, first_pair[has])
    cand = np.flatnonzero(best >= thr.min())  # detections that can match anything
    if cand.size == 0:
        return dtm, dtig
    c_img = img[cand]
    u_img, c_slot, c_n = np.unique(c_img, return_inverse=True, return_counts=True)
    c_rank = np.arange(cand.size) - (np.cumsum(c_n) - c_n)[c_slot]
    n_u, K, G = u_img.size, int(c_n.max()), int(g_count[u_img].max())
    dense = np.full((n_u, K, G), -1.0)  # IoU[image, candidate rank, ground truth]; −1 = padding
    det_at = np.zeros((n_u, K), dtype=np.int64)
    det_at[c_slot, c_rank] = cand
    sel = np.isin(pair_d, cand)
    slot_of_det = np.zeros(D, dtype=np.int64)
    slot_of_det[cand] = c_slot
    rank_of_det = np.zeros(D, dtype=np.int64)
    rank_of_det[cand] = c_rank
    pd = pair_d[sel]
    dense[slot_of_det[pd], rank_of_det[pd], pair_j[sel]] = iou[sel]
    ig = np.zeros((n_u, G), dtype=bool)
    gj = np.arange(G)[None, :]
    gidx = np.minimum(g_bounds[u_img][:, None] + gj, g_ig.size - 1)
    valid = gj < g_count[u_img][:, None]
    ig[valid] = g_ig[gidx[valid]]
    reg = (~ig & valid)[:, None, :]
    igm = (ig & valid)[:, None, :]
    taken = np.zeros((n_u, T, G), dtype=bool)
    ar_n = np.arange(n_u)[:, None]
    ar_t = np.arange(T)[None, :]
    for k in range(K):
        row = dense[:, k, :][:, None, :]  # (n_u, 1, G)
        ok = ~taken & (row >= thr[None, :, None])
        okr = ok & reg
        mr = G - 1 - np.argmax(np.where(okr, row, -1.0)[..., ::-1], axis=2)
        hr = okr[ar_n, ar_t, mr]
        oki = ok & igm
        mi = G - 1 - np.argmax(np.where(oki, row, -1.0)[..., ::-1], axis=2)
        hi = oki[ar_n, ar_t, mi] & ~hr
        m = np.where(hr, mr, mi)
        hit = hr | hi  # (n_u, T)
        if not hit.any():
            continue
        nn, tt = np.nonzero(hit)
        d_idx = det_at[nn, k]
        dtm[tt, d_idx] = True
        dtig[tt, d_idx] = ig[nn, m[nn, tt]]
        taken[nn, tt, m[nn, tt]] = True
    return dtm, dtig


@dataclass
class RankedDetections:
    """Detections of the universe's images, sorted once for every :func:`match` of a prediction set.

    Grouped by image index (ascending id), by descending score within (stable: file order on ties);
    ``g_order`` is COCOeval.accumulate's global order (stable sort on −score) of these rows, so a
    category subset keeps both orders by filtering — no sort per protocol row.
    """

    img: np.ndarray  # (N,) image index into GroundTruth.image_ids
    cats: np.ndarray  # (N,)
    boxes: np.ndarray  # (N, 4)
    score: np.ndarray  # (N,)
    g_order: np.ndarray  # (N,) rows by descending score, stable

    @staticmethod
    def build(gt: GroundTruth, dets: Detections) -> RankedDetections:
        """Drop detections on images outside ``gt`` (as COCOeval does outside ``params.imgIds``)."""
        n_img = gt.image_ids.shape[0]
        pos = np.searchsorted(gt.image_ids, dets.image_id)
        pos_c = np.minimum(pos, max(n_img - 1, 0))
        keep = (pos < n_img) & (gt.image_ids[pos_c] == dets.image_id) if n_img else np.zeros(len(dets), bool)
        idx = np.flatnonzero(keep)
        img, score = pos_c[idx], dets.scores[idx]
        order = np.lexsort((-score, img))
        idx, img, score = idx[order], img[order], score[order]
        return RankedDetections(
            img, dets.category_id[idx], dets.boxes[idx], score, np.argsort(-score, kind="mergesort")
        )


def match(
    gt: GroundTruth,
    dets: Detections | RankedDetections,
    det_cats: set[int] | None,
    gt_cats: set[int] | None,
    ignored_gt_cats: set[int] = frozenset(),
    iou_thrs: np.ndarray = IOU_THRS,
    max_dets: int = MAX_DETS,
) -> Matches:
    """Match ``dets`` of categories ``det_cats`` (None = all, merged) to ground truths.

    Ground truths of ``gt_cats`` (None = all, merged) are regular; those of ``ignored_gt_cats``
    are ignored (error analysis "Oth").  Detections on images outside ``gt.image_ids`` are dropped,
    as COCOeval does for images outside ``params.imgIds``.  Pass :class:`RankedDetections` (built
    once from the same ``gt``) when matching one prediction set several times.
    """
    iou_thrs = np.asarray(iou_thrs, dtype=np.float64)
    n_img = gt.image_ids.shape[0]
    r = dets if isinstance(dets, RankedDetections) else RankedDetections.build(gt, dets)
    # per image: by descending score (already), cut at max_dets among the selected categories
    sel = np.ones(r.img.shape, bool) if det_cats is None else np.isin(r.cats, list(det_cats))
    rows = np.flatnonzero(sel)
    img = r.img[rows]
    starts = np.flatnonzero(np.r_[True, img[1:] != img[:-1]]) if img.size else np.zeros(0, int)
    rank = np.arange(img.size) - np.repeat(starts, np.diff(np.r_[starts, img.size]))
    cut = rank < max_dets
    if not cut.all():
        rows, img = rows[cut], img[cut]
        sel = np.zeros(r.img.shape, bool)
        sel[rows] = True
    score, boxes = r.score[rows], r.boxes[rows]
    # COCOeval.accumulate's global order of the kept rows, by filtering the shared one
    g_order = (np.cumsum(sel) - 1)[r.g_order[sel[r.g_order]]]
    # ground truths: regular / ignored flags, then per image regular first (file order within)
    gc = gt.cats
    reg = np.ones(gc.shape, bool) if gt_cats is None else np.isin(gc, list(gt_cats))
    ign = (np.isin(gc, list(ignored_gt_cats)) & ~reg) if ignored_gt_cats else np.zeros(gc.shape, bool)
    area = gt.boxes[:, 2] * gt.boxes[:, 3]
    out_rng = (area < AREA_ALL[0]) | (area > AREA_ALL[1])
    g_ignore = ign | (reg & out_rng)
    used = np.flatnonzero(reg | ign)
    used = used[np.lexsort((used, g_ignore[used], gt.img[used]))]
    g_img, g_ig, g_box = gt.img[used], g_ignore[used], gt.boxes[used]
    n_gt = np.bincount(g_img[~g_ig], minlength=n_img).astype(np.int64)
    dtm, dtig = _match_all(boxes, img, g_box, g_img, g_ig, n_img, iou_thrs)
    # unmatched detections outside the area range are ignored (irrelevant for "all" but faithful)
    darea = boxes[:, 2] * boxes[:, 3]
    dtig |= ~dtm & ((darea < AREA_ALL[0]) | (darea > AREA_ALL[1]))[None, :]
    tp = dtm & ~dtig
    fp = ~dtm & ~dtig
    return Matches(iou_thrs, img[g_order], score[g_order], tp[:, g_order], fp[:, g_order], n_gt)


def _interp_precision(tpc: np.ndarray, fpc: np.ndarray, npig: float) -> tuple[np.ndarray, np.ndarray]:
    """COCOeval.accumulate for one category/area/maxDet: (precision (T, R), recall (T,))."""
    T, nd = tpc.shape
    R = REC_THRS.shape[0]
    if npig <= 0:
        return -np.ones((T, R)), -np.ones(T)
    if nd == 0:
        return np.zeros((T, R)), np.zeros(T)
    rc = tpc / npig
    pr = tpc / (fpc + tpc + EPS)
    pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
    q = np.zeros((T, R))
    for t in range(T):
        inds = np.searchsorted(rc[t], REC_THRS, side="left")
        ok = inds < nd
        q[t, ok] = pr[t, inds[ok]]
    return q, rc[:, -1].copy()


def accumulate(
    m: Matches, img_weight: np.ndarray | None = None, det_weight: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted COCOeval.accumulate → ``(precision (T, 101), recall (T,))``; −1 when no GT.

    ``img_weight`` (n_img,) weights the ground truths of each image, ``det_weight`` (n_img,) its
    detections (default: ``img_weight``).  All ones = COCOeval on the full universe.
    """
    n_img = m.n_gt.shape[0]
    wi = np.ones(n_img) if img_weight is None else np.asarray(img_weight, dtype=np.float64)
    wd = wi if det_weight is None else np.asarray(det_weight, dtype=np.float64)
    w = wd[m.img]
    tpc = np.cumsum(m.tp * w, axis=1)
    fpc = np.cumsum(m.fp * w, axis=1)
    return _interp_precision(tpc, fpc, float(m.n_gt @ wi))


def summarize_ap(precision: np.ndarray) -> float | None:
    """COCO summarize: mean over the defined (> −1) entries; None when none is defined."""
    s = precision[precision > -1]
    return float(np.mean(s)) if s.size else None


def froc_points(
    m: Matches, t_index: int, img_weight: np.ndarray, det_weight: np.ndarray, n_images: float
) -> tuple[np.ndarray, np.ndarray]:
    """FROC curve (fppi, sensitivity) at score-group boundaries, starting at (0, 0)."""
    npig = float(m.n_gt @ img_weight)
    w = det_weight[m.img]
    tpc = np.cumsum(m.tp[t_index] * w)
    fpc = np.cumsum(m.fp[t_index] * w)
    if m.score.size:
        ends = np.flatnonzero(np.r_[m.score[1:] != m.score[:-1], True])
        tpc, fpc = tpc[ends], fpc[ends]
    fppi = np.r_[0.0, fpc / n_images] if n_images > 0 else np.r_[0.0, fpc * np.nan]
    sens = np.r_[0.0, tpc / npig] if npig > 0 else np.r_[np.nan, tpc * np.nan]
    return fppi, sens


def froc_at(fppi: np.ndarray, sens: np.ndarray, rates=FROC_FPPI) -> np.ndarray:
    """Sensitivity at each FP/image rate: that of the last curve point with fppi ≤ rate."""
    if not np.isfinite(sens).all() or not np.isfinite(fppi).all():
        return np.full(len(rates), np.nan)
    i = np.searchsorted(fppi, np.asarray(rates), side="right") - 1
    return sens[np.maximum(i, 0)]


def _opt(x) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if np.isfinite(x) else None


def _opt_list(a: np.ndarray) -> list[float | None]:
    """``[_opt(v) for v in a]`` in one pass (non-finite → None)."""
    a = np.asarray(a, dtype=np.float64)
    out = a.astype(object)
    out[~np.isfinite(a)] = None
    return out.tolist()


def _row_searchsorted(a: np.ndarray, v: np.ndarray, side: str) -> np.ndarray:
    """``searchsorted(a[b], v[b], side)`` for every row ``b`` of integer-valued ``a`` (nb, n).

    One flat search: row ``b`` is shifted by ``b·off`` (exact: integers below 2⁵³), with ``off``
    larger than the spread of both ``a`` and ``v``.  Returns (nb, len(v[b])).
    """
    nb, n = a.shape
    spread = max(a.max(initial=0), -a.min(initial=0), v.max(initial=0), -v.min(initial=0))
    off = float(spread * 2 + 4)
    shift = off * np.arange(nb)[:, None]
    pos = np.searchsorted((a + shift).ravel(), (v + shift).ravel(), side=side)  # type: ignore[call-overload]
    return pos.reshape(v.shape) - n * np.arange(nb)[:, None]


@dataclass
class _BootPlan:
    """Index arrays of :meth:`RowEval._samples_batched` for one row (built once, reused per block).

    Positions are into the row's compressed detection list; ``q_pos`` are the positions where the
    total detection weight is needed (every true positive, and the score-group end of each IoU-.5
    true positive).  Total weight up to ``q_pos[k]`` = cumulated segment sums, segment ``k`` = the
    detections in ``(q_pos[k-1], q_pos[k]]``, each a sum over its (image, multiplicity) pairs — per
    block of resamples one gather and one cumulative sum along each resample's row (integers:
    exact; numpy only, no sparse-matrix import).
    """

    u_img: np.ndarray  # (n_u,) images with detections in the row
    dw_u: np.ndarray  # (n_u,) their (integer) detection weight
    tp_u: list[np.ndarray]  # per IoU threshold: image slot (into u_img) of each true positive
    tp_q: list[np.ndarray]  # per IoU threshold: index into q_pos of each true positive
    t50: int  # index of IoU .5 in tp_u
    last_tp: np.ndarray  # per IoU-.5 TP: index of the last IoU-.5 TP of its score group
    e_q: np.ndarray  # per IoU-.5 TP: index into q_pos of its score-group end
    pair_u: np.ndarray  # (n_pairs,) image slot of each (segment, image) pair, by segment
    pair_multi: np.ndarray  # pairs holding more than one detection
    pair_mult: np.ndarray  # their multiplicity
    seg_end: np.ndarray  # (n_q,) last pair of each segment (segments are never empty)
    n_upto: int  # detections up to the last q_pos

    @staticmethod
    def build(ev: RowEval) -> _BootPlan:
        tp_idx, ends, t50 = ev._tp_idx, ev._ends, ev._t50c
        tp50 = tp_idx[t50]
        e_of = ends[np.searchsorted(ends, tp50, side="left")] if tp50.size else np.zeros(0, np.int64)
        last_tp = np.searchsorted(tp50, e_of, side="right") - 1
        q_pos = sorted_unique(np.concatenate([*tp_idx, e_of])).astype(np.int64)
        u_img, u_of = np.unique(ev._img, return_inverse=True)
        upto = int(q_pos[-1]) + 1 if q_pos.size else 0
        seg = np.searchsorted(q_pos, np.arange(upto), side="left")
        key = np.sort(seg * max(u_img.size, 1) + u_of[:upto])
        first = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if key.size else np.zeros(0, np.int64)
        mult = np.diff(np.r_[first, key.size])
        key = key[first]
        multi = np.flatnonzero(mult > 1)
        return _BootPlan(
            u_img=u_img,
            dw_u=np.round(ev.det_w[u_img]).astype(np.int64),
            tp_u=[u_of[idx] for idx in tp_idx],
            tp_q=[np.searchsorted(q_pos, idx) for idx in tp_idx],
            t50=t50,
            last_tp=last_tp,
            e_q=np.searchsorted(q_pos, e_of),
            pair_u=key % max(u_img.size, 1),
            pair_multi=multi,
            pair_mult=mult[multi],
            seg_end=np.searchsorted(key // max(u_img.size, 1), np.arange(q_pos.size), side="right") - 1,
            n_upto=upto,
        )

    def weights(self, c: np.ndarray) -> np.ndarray:
        """(nb, n_u) detection weight of each image for resample counts ``c`` (nb, n_img): int32
        when every cumulated weight fits (a sum over at most ``n_upto`` detections), else int64."""
        w = np.take(c, self.u_img, axis=1, mode="wrap")
        big = int(w.max(initial=0)) * int(self.dw_u.max(initial=0)) * max(self.n_upto, 1) >= 2**31
        return np.multiply(w, self.dw_u, dtype=np.int64 if big else np.int32)

    def cum_weight(self, w: np.ndarray) -> np.ndarray:
        """(nb, n_q) total detection weight up to each ``q_pos`` for image weights ``w`` (nb, n_u)."""
        g = np.take(w, self.pair_u, axis=1, mode="wrap")  # valid indices; "wrap" is the fastest mode
        if self.pair_multi.size:
            g[:, self.pair_multi] *= self.pair_mult
        np.cumsum(g, axis=1, out=g)
        return np.take(g, self.seg_end, axis=1)


class RowEval:
    """One protocol row (e.g. all-cxr × active): an image subset and a detection filter.

    ``img_in`` (n_img,) 0/1: images of the evaluated set; ``det_keep`` (n_img,) 0/1: images whose
    detections are kept (all-cxr: predicted TB).  ``oth`` optionally holds the "others ignored"
    matches at IoU .1 for the error analysis.
    """

    def __init__(
        self,
        m: Matches,
        img_in: np.ndarray,
        det_keep: np.ndarray,
        oth: Matches | None = None,
        froc_rates=FROC_FPPI,
    ):
        self.m, self.oth = m, oth
        self.img_in = np.asarray(img_in, dtype=np.float64)
        self.det_w = self.img_in * np.asarray(det_keep, dtype=np.float64)
        self.rates = tuple(froc_rates)
        thr = m.iou_thrs
        self.t_std = np.flatnonzero(np.isin(np.round(thr, 6), np.round(IOU_THRS, 6)))
        self.t50 = int(np.flatnonzero(np.isclose(thr, 0.5))[0])
        self.t75 = int(np.flatnonzero(np.isclose(thr, 0.75))[0])
        loc = np.flatnonzero(np.isclose(thr, LOC_IOU))
        self.t_loc = int(loc[0]) if loc.size else None
        # compressed view: only detections that can carry weight (zero-weight ones change nothing)
        sel = self.det_w[m.img] > 0
        self.c = Matches(thr, m.img[sel], m.score[sel], m.tp[:, sel], m.fp[:, sel], m.n_gt)
        self._img = self.c.img
        self._tp = self.c.tp[self.t_std].astype(np.float64)
        self._fp = self.c.fp[self.t_std].astype(np.float64)
        sc = self.c.score
        self._ends = np.flatnonzero(np.r_[sc[1:] != sc[:-1], True]) if sc.size else np.zeros(0, int)
        self._t50c = int(np.flatnonzero(np.isclose(thr[self.t_std], 0.5))[0])
        # Fast bootstrap path (no ignored detections, the usual case): precision only matters at
        # true positives — rc rises only there and an FP run after a TP has lower precision — and
        # FP(i) = (all weight up to i) − TP(i), so a resample needs one cumulative sum over all
        # detections plus, per IoU threshold, one over its (few) true positives.
        self._fast = bool((self._tp + self._fp == 1).all())
        self._tp_idx = [np.flatnonzero(row) for row in self.c.tp[self.t_std]]
        tp50 = self._tp_idx[self._t50c]
        self._ends_ntp = np.searchsorted(tp50, self._ends, side="right")  # TPs up to each group end
        self._plan: _BootPlan | None = None  # index arrays of the batched bootstrap, built on first use

    def point(self, max_curve_points: int = 500) -> dict:
        m = self.c
        prec, rec = accumulate(m, self.img_in, self.det_w)
        p_std = prec[self.t_std]
        r_std = rec[self.t_std]
        ap = summarize_ap(p_std)
        ap50 = summarize_ap(prec[self.t50])
        ap75 = summarize_ap(prec[self.t75])
        ar = summarize_ap(r_std)  # COCO AR@100: mean recall over the IoU thresholds
        n_images = float(self.img_in.sum())
        fppi, sens = froc_points(m, self.t50, self.img_in, self.det_w, n_images)
        at = froc_at(fppi, sens, self.rates)
        keep = downsample_curve(fppi.shape[0], max_curve_points)
        out = {
            "ap": ap,
            "ap50": ap50,
            "ap75": ap75,
            "ar100": ar,
            "froc": {
                "fppi": list(self.rates),
                "sensitivity": [_opt(v) for v in at],
                "mean": _opt(np.mean(at)) if np.isfinite(at).all() else None,
            },
            "n_images": int(n_images),
            "n_gt": int(m.n_gt @ self.img_in),
            "n_dets": int(m.img.size),
            "pr": {
                "recall": REC_THRS.tolist(),
                "iou50": prec[self.t50].tolist(),
                "iou75": prec[self.t75].tolist(),
            },
            "froc_curve": {"fppi": _opt_list(fppi[keep]), "sensitivity": _opt_list(sens[keep])},
        }
        out["analysis"] = self._analysis(prec)
        return out

    def _analysis(self, prec: np.ndarray) -> dict | None:
        if self.t_loc is None:
            return None
        curves = {"C75": prec[self.t75], "C50": prec[self.t50], "Loc": prec[self.t_loc]}
        if self.oth is not None:
            p_oth, _ = accumulate(self.oth, self.img_in, self.det_w)
            curves["Oth"] = p_oth[0]
        else:
            curves["Oth"] = prec[self.t_loc]
        curves = {k: np.where(v == -1, 0.0, v) for k, v in curves.items()}  # analyze: ps[ps==-1]=0
        if (prec[self.t50] == -1).all():
            return None  # no ground truth in this row
        curves["BG"] = (curves["Oth"] > 0).astype(np.float64)
        curves["FN"] = np.ones_like(curves["Oth"])
        return {k: {"ap": float(v.mean()), "precision": v.tolist()} for k, v in curves.items()}

    def samples(self, counts: np.ndarray) -> dict:
        """Per-resample ap, ap50, ar100, FROC for image ``counts`` (B, n_img)."""
        counts = np.ascontiguousarray(counts)  # a column subset of the record counts: make rows contiguous
        B = counts.shape[0]
        ap = np.full(B, np.nan)
        ap50 = np.full(B, np.nan)
        ar = np.full(B, np.nan)
        froc = np.full((B, len(self.rates)), np.nan)
        n_gt = self.m.n_gt.astype(np.float64)
        batched = self._fast and np.issubdtype(counts.dtype, np.integer) and bool((counts >= 0).all())
        if batched:  # integer counts (a bootstrap): every resample at once, see _samples_batched
            self._samples_batched(counts, n_gt, ap, ap50, ar, froc)
        elif self._fast:
            self._samples_fast(counts, n_gt, ap, ap50, ar, froc)
        for b in range(B if not self._fast else 0):
            c = counts[b].astype(np.float64)
            wi = c * self.img_in
            npig = float(n_gt @ wi)
            if npig <= 0:
                continue
            w = (c * self.det_w)[self._img]
            tpc = np.cumsum(self._tp * w, axis=1)
            fpc = np.cumsum(self._fp * w, axis=1)
            prec, rec = _interp_precision(tpc, fpc, npig)
            ap[b] = prec.mean()
            ap50[b] = prec[self._t50c].mean()
            ar[b] = rec.mean()
            n_images = float(wi.sum())
            if self._ends.size:
                fppi = np.r_[0.0, fpc[self._t50c, self._ends] / n_images]
                sens = np.r_[0.0, tpc[self._t50c, self._ends] / npig]
            else:
                fppi = sens = np.zeros(1)
            froc[b] = froc_at(fppi, sens, self.rates)
        return {
            "ap": ap,
            "ap50": ap50,
            "ar100": ar,
            "froc": {"sensitivity": [froc[:, j] for j in range(froc.shape[1])], "mean": froc.mean(axis=1)},
        }

    def _boot_plan(self) -> _BootPlan:
        if self._plan is None:
            self._plan = _BootPlan.build(self)
        return self._plan

    def _samples_batched(
        self,
        counts: np.ndarray,
        n_gt: np.ndarray,
        ap: np.ndarray,
        ap50: np.ndarray,
        ar: np.ndarray,
        froc: np.ndarray,
        chunk: int = 128,
    ) -> None:
        """:meth:`_samples_fast` for integer counts, vectorised over resamples (same numbers).

        With integer image counts every cumulated TP/FP weight is an integer, so each
        ``searchsorted`` on a ratio (recall ≥ a recall threshold, FP/image ≤ a rate) becomes one on
        integers against the exact integer boundary of that ratio, found once per block of
        resamples.  The recall one is a count — #{k: TP(k) < c*} — read off a per-resample
        histogram of the (small) cumulated TP counts.  The total weight up to each true positive
        comes from segment sums (:class:`_BootPlan`).  The FROC only needs the FP count at the
        group end of each true positive at IoU .5 (sensitivity changes only there).
        """
        R = REC_THRS.shape[0]
        p = self._boot_plan()
        T = len(p.tp_u)
        rates = np.asarray(self.rates, dtype=np.float64)
        img_in = self.img_in
        gt_in = np.flatnonzero(n_gt * img_in > 0)
        gt_n = np.round(n_gt * img_in)[gt_in].astype(np.int64)
        # per resample: regular ground truths and images of the evaluated set (exact integer sums)
        npig_all = (
            np.multiply(np.take(counts, gt_in, axis=1), gt_n).sum(axis=1, dtype=np.int64).astype(np.float64)
        )
        im_in, im_out = np.flatnonzero(img_in > 0), np.flatnonzero(img_in <= 0)
        if im_out.size < im_in.size:  # the cheaper side: a contiguous row sum minus a few columns
            n_img_all = counts.sum(axis=1, dtype=np.int64) - np.take(counts, im_out, axis=1).sum(
                axis=1, dtype=np.int64
            )
        else:
            n_img_all = np.take(counts, im_in, axis=1).sum(axis=1, dtype=np.int64)
        n_img_all = n_img_all.astype(np.float64)
        for lo in range(0, counts.shape[0], chunk):
            c = counts[lo : lo + chunk]
            nb = c.shape[0]
            rows = np.arange(nb)[:, None]
            npig, n_images = npig_all[lo : lo + nb], n_img_all[lo : lo + nb]
            ok = npig > 0
            if not ok.any():
                continue
            safe = np.where(ok, npig, 1.0)
            # c*[b, r]: the least integer with c* / npig ≥ REC_THRS[r] (one per block, all thresholds)
            cstar = least_int(
                lambda k, s=safe: k / s[:, None] >= REC_THRS[None, :],
                np.ceil(REC_THRS[None, :] * safe[:, None]),
            ).astype(np.int64)
            # layout (resamples, detections): gathers and cumulative sums run along contiguous rows
            w = p.weights(c)  # (nb, n_u)
            cum_q = p.cum_weight(w)  # (nb, n_q): total weight up to each q_pos
            den_q = cum_q + EPS  # COCOeval's precision denominator fp + tp + EPS (fp + tp = cum_q)
            q = np.zeros((nb, T, R))
            rec = np.zeros((nb, T))
            ctp50 = np.zeros((nb, 0), w.dtype)
            for t in range(T):
                n_t = p.tp_u[t].size
                if n_t == 0:
                    continue
                ctp = np.take(w, p.tp_u[t], axis=1, mode="wrap")
                np.cumsum(ctp, axis=1, out=ctp)  # (nb, n_t) cumulated TP weight
                pr = np.take(den_q, p.tp_q[t], axis=1)
                np.divide(ctp, pr, out=pr)  # precision at each true positive, as COCOeval
                np.maximum.accumulate(pr[:, ::-1], axis=1, out=pr[:, ::-1])
                # inds = searchsorted(ctp / npig, REC_THRS, 'left') = #{k: ctp_k < c*}: a histogram
                # of each resample's ctp values, cumulated (ctp is a small integer)
                top = int(ctp[:, -1].max())
                width = top + 2
                hist = np.bincount((ctp + (rows * width + 1)).ravel(), minlength=nb * width)
                below = np.cumsum(hist.reshape(nb, width), axis=1)  # below[b, v] = #{k: ctp_k < v}
                inds = np.take(below.ravel(), np.minimum(cstar, top + 1) + rows * width)  # (nb, R)
                hit = inds < n_t
                q[:, t, :] = np.where(hit, np.take(pr.ravel(), np.minimum(inds, n_t - 1) + rows * n_t), 0.0)
                rec[:, t] = ctp[:, -1] / safe
                if t == p.t50:
                    ctp50 = ctp
            ap[lo : lo + nb] = np.where(ok, q.mean(axis=(1, 2)), np.nan)
            ap50[lo : lo + nb] = np.where(ok, q[:, p.t50].mean(axis=1), np.nan)
            ar[lo : lo + nb] = np.where(ok, rec.mean(axis=1), np.nan)
            if p.last_tp.size:
                tpe = np.take(ctp50, p.last_tp, axis=1)  # (nb, n_tp50) TP weight at each TP's group end
                fpc = np.take(cum_q, p.e_q, axis=1) - tpe  # nondecreasing along each row
                ni = np.where(n_images > 0, n_images, 1.0)
                # #{p: fpc_p / n_images ≤ rate} = #{p: fpc_p ≤ c**}, c** the largest such integer
                cmax = (
                    least_int(
                        lambda k, n=ni: k / n[:, None] > rates[None, :],
                        np.floor(rates[None, :] * ni[:, None]),
                    )
                    - 1
                )
                j = _row_searchsorted(fpc, cmax, side="right")  # (nb, n_rates)
                sens = np.where(j > 0, tpe[rows, np.maximum(j - 1, 0)], 0.0) / safe[:, None]
            else:
                sens = np.zeros((nb, rates.size))
            froc[lo : lo + nb] = np.where(ok[:, None], sens, np.nan)

    def _samples_fast(self, counts, n_gt, ap, ap50, ar, froc) -> None:
        R = REC_THRS.shape[0]
        T = len(self._tp_idx)
        for b in range(counts.shape[0]):
            c = counts[b].astype(np.float64)
            wi = c * self.img_in
            npig = float(n_gt @ wi)
            if npig <= 0:
                continue
            w = (c * self.det_w)[self._img]
            cum = np.cumsum(w)
            q = np.zeros((T, R))
            rec = np.zeros(T)
            ctp50 = None
            for t, idx in enumerate(self._tp_idx):
                if idx.size == 0:
                    if t == self._t50c:
                        ctp50 = np.zeros(0)
                    continue
                ctp = np.cumsum(w[idx])
                rc = ctp / npig
                pr = ctp / ((cum[idx] - ctp) + ctp + EPS)
                pr = np.maximum.accumulate(pr[::-1])[::-1]
                inds = np.searchsorted(rc, REC_THRS, side="left")
                ok = inds < idx.size
                q[t, ok] = pr[inds[ok]]
                rec[t] = rc[-1]
                if t == self._t50c:
                    ctp50 = ctp
            ap[b] = q.mean()
            ap50[b] = q[self._t50c].mean()
            ar[b] = rec.mean()
            n_images = float(wi.sum())
            if self._ends.size:
                tpe = np.r_[0.0, ctp50][self._ends_ntp]
                fppi = np.r_[0.0, (cum[self._ends] - tpe) / n_images]
                sens = np.r_[0.0, tpe / npig]
            else:
                fppi = sens = np.zeros(1)
            froc[b] = froc_at(fppi, sens, self.rates)
