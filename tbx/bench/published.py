"""Published numbers placed beside ours by ``tbx report --reference paper`` (docs/protocol.md §4.4).

All values are **percentages** exactly as printed in the papers (one decimal), never recomputed.
Reports mark every row built from here as "(published)" with a footnote citing :data:`CITATION`
(or :data:`CVPR_CITATION` for the CVPR 2020 baselines).

Beyond the §4.4 headline rows, the complexity table uses the paper's parameter / FLOP accounting
(docs/models.md §2.5: mmcv counts multiply-accumulates at 512×512, classifier included) and the TP/TN/FP/FN
counts of docs/protocol.md §4.2 (SymFormer-RetinaNet on the 3,302-image ``all_test`` list).
"""

from __future__ import annotations

from dataclasses import dataclass, field

CITATION = (
    'Y. Liu, Y.-H. Wu, S.-C. Zhang, L. Liu, M. Wu, M.-M. Cheng, "Revisiting Computer-Aided '
    'Tuberculosis Diagnosis", IEEE TPAMI, 2023'
)
CVPR_CITATION = (
    'Y. Liu, Y.-H. Wu, Y. Ban, H. Wang, M.-M. Cheng, "Rethinking Computer-aided '
    'Tuberculosis Diagnosis", CVPR, 2020'
)

CLS_KEYS = ("accuracy", "auc", "sensitivity", "specificity", "ap", "ar")
DET_MODES = ("all_cxr", "tb_only")
DET_CATEGORIES = ("agnostic", "active", "latent")


@dataclass(frozen=True)
class PublishedRow:
    """One published method: classification (%), detection {(mode, category): (AP50, AP)} (%),
    complexity and the citation it comes from."""

    method: str
    citation: str
    classification: dict[str, float] = field(default_factory=dict)
    detection: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)
    fps: float | None = None
    fps_note: str | None = None
    params_paper_m: float | None = None  # paper accounting (docs/models.md §2.5), millions
    gmacs: float | None = None  # "GFLOPs" in the paper = multiply-accumulates (docs/models.md §2.5)
    f1: float | None = None
    shares: dict[str, float] | None = None  # tp/tn/fp/fn as % of all images (docs/protocol.md §4.2)


def _cls(values: tuple[float, ...]) -> dict[str, float]:
    return dict(zip(CLS_KEYS, values))


Pair = tuple[float, float]


def _det(all_cxr: tuple[Pair, ...], tb_only: tuple[Pair, ...] | None = None) -> dict[tuple[str, str], Pair]:
    out = {("all_cxr", c): v for c, v in zip(DET_CATEGORIES, all_cxr)}
    if tb_only:
        out.update({("tb_only", c): v for c, v in zip(DET_CATEGORIES, tb_only)})
    return out


# docs/protocol.md §4.2: TP 589, FN 58, FP 86, TN 2,569 over 3,302 images → shares of the total.
_SYM_COUNTS = {"tp": 589, "tn": 2569, "fp": 86, "fn": 58}
_SYM_SHARES = {k: round(100.0 * v / 3302, 1) for k, v in _SYM_COUNTS.items()}

# docs/protocol.md §4.4 (TPAMI; P2T-Small: docs/models.md §2.5) and the CVPR 2020 baselines; params / GMACs
# from docs/models.md §2.5.
PUBLISHED_ROWS: tuple[PublishedRow, ...] = (
    PublishedRow(
        "SymFormer w/ RetinaNet R50",
        CITATION,
        _cls((94.5, 98.9, 91.0, 96.8, 93.3, 94.0)),
        _det(((68.0, 29.5), (62.0, 27.3), (13.3, 4.4)), ((73.4, 31.5), (67.1, 29.2), (14.7, 4.8))),
        fps=24.3,
        fps_note="one TITAN XP",
        params_paper_m=50.03,
        gmacs=59.14,
        f1=89.0,
        shares=_SYM_SHARES,
    ),
    # the paper's best row, the official README's example backbone (docs/models.md §2.5)
    PublishedRow(
        "SymFormer w/ RetinaNet P2T-Small",
        CITATION,
        _cls((94.6, 99.1, 92.1, 96.7, 93.4, 94.2)),
        _det(((70.4, 30.0), (63.6, 26.9), (11.4, 4.3)), ((75.7, 32.1), (68.9, 28.9), (13.0, 4.7))),
        fps=17.9,
        fps_note="one TITAN XP",
        params_paper_m=45.10,
        gmacs=55.46,
    ),
    PublishedRow(
        "Deformable DETR R50",
        CITATION,
        _cls((91.3, 97.6, 89.2, 95.3, 89.8, 91.0)),
        _det(((51.7, 22.0), (48.9, 21.2), (7.1, 1.9))),
        params_paper_m=52.67,
        gmacs=54.07,
    ),
    PublishedRow(
        "SymFormer w/ Deformable DETR R50",
        CITATION,
        _cls((94.3, 98.5, 87.3, 97.3, 93.2, 93.2)),
        _det(((57.0, 23.3), (52.1, 22.7), (7.1, 2.0))),
        params_paper_m=52.69,
        gmacs=54.08,
    ),
    PublishedRow("SSD VGG16", CVPR_CITATION, _cls((84.7, 93.0, 78.1, 89.4, 82.1, 83.8))),
    PublishedRow("RetinaNet R50", CVPR_CITATION, _cls((87.4, 91.8, 81.6, 89.8, 84.8, 86.8))),
    PublishedRow("Faster R-CNN R50", CVPR_CITATION, _cls((89.7, 93.6, 91.2, 89.9, 87.7, 90.5))),
    PublishedRow("FCOS R50", CVPR_CITATION, _cls((88.9, 92.4, 87.3, 89.9, 86.6, 89.2))),
)

# docs/dataset.md §1.5 / docs/protocol.md §4.4: one radiologist on 400 test images.
PUBLISHED_RADIOLOGIST = {
    "name": "Radiologist",
    "accuracy_3class": 84.8,
    "accuracy_types": 68.7,
    "citation": CITATION,
}
