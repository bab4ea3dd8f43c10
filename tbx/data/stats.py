"""Dataset statistics (docs/dataset.md §1.2 table, box counts, box-area histograms).

Records come from :func:`tbx.data.views.load_dataset` (any layout root, annotation folder or
COCO JSON).

:func:`dataset_stats` summarises records:

* ``classes`` — docs/dataset.md §1.2 Table 2 for TBX11K images: rows healthy, sick, active TB, latent TB,
  active & latent TB, uncertain TB, TB without box (a TB image with no box; the real train set has
  one, ``tb/tb1199.png``), unlabelled (only if present) and total; columns = splits + total;
* ``extra`` — images of the extra datasets (DA, DB, Montgomery, Shenzhen) per source × label;
* ``boxes`` — boxes per category (active, latent, uncertain) × split;
* ``area_512`` — COCO-style area bins in the 512 frame of the JSON boxes: small < 32²,
  medium [32², 96²), large ≥ 96² (pycocotools' ``areaRng``);
* ``area_original`` — the paper's bins at the *original* scanner resolution (docs/dataset.md §1.1): ≤ 384²,
  (384², 960²], > 960².  An original area is the box's JSON area × (W/w)·(H/h), with W×H the
  original size read from the image's VOC XML ``<size>`` (``annotations/xml/<stem>.xml`` or
  ``xml/<stem>.xml`` beside the JSON); boxes of images without an XML are counted under
  ``"no original size"``.  For a dataset built at 512 (e.g. synthetic), the XML frame is 512, so
  every box falls in ≤ 384².
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Any

from tbx.data.layout import ANN_XML
from tbx.data.records import (
    ACTIVE,
    CATEGORY_SHORT,
    LATENT,
    SPLITS,
    TB_TYPE_ROWS,
    UNCERTAIN,
    Record,
    tb_type_from_categories,
)
from tbx.data.views import load_dataset
from tbx.data.voc import read_voc

CLASS_ROWS = ("healthy", "sick", *TB_TYPE_ROWS.values())
COCO_BINS = (
    ("small", 0.0, 32.0**2),
    ("medium", 32.0**2, 96.0**2),
    ("large", 96.0**2, float("inf")),
)  # [lo, hi) in the 512 frame
PAPER_BINS = (
    ("<=384^2", 0.0, 384.0**2),
    ("(384^2,960^2]", 384.0**2, 960.0**2),
    (">960^2", 960.0**2, float("inf")),
)  # (lo, hi] at original resolution, docs/dataset.md §1.1
NO_SIZE = "no original size"


def original_sizes(path: str | Path, records: list[Record]) -> dict[str, tuple[int, int]]:
    """``file_name`` → original ``(width, height)`` from the VOC XML of each TB image, when present
    (``annotations/xml/<stem>.xml`` under a layout root, or ``xml/<stem>.xml`` beside the JSON)."""
    path = Path(path)
    base = path.parent if path.is_file() else path
    candidates = [base / ANN_XML, base / "xml"]
    if path.is_file() and base.name == "json" and base.parent.name == "annotations":
        candidates.append(base.parent / "xml")
    xml_dirs = [d for d in candidates if d.is_dir()]
    out: dict[str, tuple[int, int]] = {}
    if not xml_dirs:
        return out
    for r in records:
        if not r.boxes:
            continue
        stem = PurePosixPath(r.file_name).stem
        for d in xml_dirs:
            f = d / f"{stem}.xml"
            if f.is_file():
                voc = read_voc(f)
                out[r.file_name] = (voc.width, voc.height)
                break
    return out


# ----------------------------------------------------------------------------------------------
# statistics


def class_row(r: Record) -> str:
    """The docs/dataset.md §1.2 row of a record ("unlabelled" for images without a label); the TB type comes
    from the record's box categories (docs/dataset.md §1.1), so a TB image without boxes is "TB without
    box"."""
    if r.label in ("healthy", "sick"):
        return r.label
    if r.label == "tb":
        return TB_TYPE_ROWS[tb_type_from_categories(b.category for b in r.boxes)]
    return "unlabelled"


def _bin(bins, area: float, right_closed: bool) -> str:
    for name, lo, hi in bins:
        if (lo < area <= hi) if right_closed else (lo <= area < hi):
            return name
    return bins[0][0] if area <= bins[0][1] else bins[-1][0]


def dataset_stats(records: list[Record], sizes: dict[str, tuple[int, int]] | None = None) -> dict[str, Any]:
    """The statistics of ``records`` (see the module docstring); ``sizes`` = :func:`original_sizes`."""
    present = {r.split for r in records}
    splits = [s for s in SPLITS if s in present] + (["unassigned"] if None in present else [])

    def col(r: Record) -> str:
        return r.split if r.split in SPLITS else "unassigned"

    tbx = [r for r in records if r.source == "tbx11k"]
    rows = list(CLASS_ROWS) + (["unlabelled"] if any(class_row(r) == "unlabelled" for r in tbx) else [])
    table = {row: {s: 0 for s in splits} for row in rows + ["total"]}
    for r in tbx:
        table[class_row(r)][col(r)] += 1
        table["total"][col(r)] += 1
    for row in table.values():
        row["total"] = sum(row[s] for s in splits)

    extra: dict[str, dict[str, dict[str, int]]] = {}
    for r in records:
        if r.source != "tbx11k":
            cell = extra.setdefault(r.source, {}).setdefault(r.label, {s: 0 for s in splits})
            cell[col(r)] += 1
    for labels in extra.values():
        for cell in labels.values():
            cell["total"] = sum(cell[s] for s in splits)

    cats = [ACTIVE, LATENT, UNCERTAIN]
    boxes = {CATEGORY_SHORT[c]: {s: 0 for s in splits} for c in cats}
    area_512 = {CATEGORY_SHORT[c]: {b[0]: 0 for b in COCO_BINS} for c in cats}
    orig_names = [b[0] for b in PAPER_BINS] + [NO_SIZE]
    area_orig = {CATEGORY_SHORT[c]: {b: 0 for b in orig_names} for c in cats}
    sizes = sizes or {}
    unknown_cats: Counter[int] = Counter()
    degenerate = 0
    for r in records:
        for b in r.boxes:
            if b.category not in CATEGORY_SHORT:
                unknown_cats[b.category] += 1
                continue
            if not (b.w > 0 and b.h > 0):  # empty or negative-size: not a box (tbx dataset validate)
                degenerate += 1
                continue
            name = CATEGORY_SHORT[b.category]
            boxes[name][col(r)] += 1
            area = b.w * b.h
            area_512[name][_bin(COCO_BINS, area, right_closed=False)] += 1
            if r.file_name in sizes and r.width > 0 and r.height > 0:
                ow, oh = sizes[r.file_name]
                a0 = area * (ow / r.width) * (oh / r.height)
                area_orig[name][_bin(PAPER_BINS, a0, right_closed=True)] += 1
            else:
                area_orig[name][NO_SIZE] += 1
    for table_ in (boxes,):
        for row in table_.values():
            row["total"] = sum(row[s] for s in splits)
    boxes["all"] = {k: sum(boxes[CATEGORY_SHORT[c]][k] for c in cats) for k in [*splits, "total"]}
    for hist in (area_512, area_orig):
        hist["all"] = {k: sum(hist[CATEGORY_SHORT[c]][k] for c in cats) for k in hist["active"]}
    if not any(area_orig["all"][b] for b in orig_names[:-1]):
        area_orig = None  # no original sizes known for any box
    out: dict[str, Any] = {
        "n_images": len(records),
        "splits": splits,
        "classes": table,
        "extra": extra,
        "boxes": boxes,
        "area_512": area_512,
        "area_512_bins": {n: [lo, None if hi == float("inf") else hi] for n, lo, hi in COCO_BINS},
        "area_original": area_orig,
        "area_original_bins": {n: [lo, None if hi == float("inf") else hi] for n, lo, hi in PAPER_BINS},
    }
    if unknown_cats:
        out["unknown_categories"] = {str(k): v for k, v in sorted(unknown_cats.items())}
    if degenerate:
        out["degenerate_boxes"] = degenerate
    return out


def stats_of(path: str | Path) -> dict[str, Any]:
    """Load ``path`` (:func:`load_dataset`) and summarise it, with original sizes from XML."""
    records = load_dataset(path)
    out = dataset_stats(records, original_sizes(path, records))
    out["source"] = str(path)
    return out


__all__ = [
    "dataset_stats",
    "original_sizes",
    "stats_of",
    "class_row",
    "CLASS_ROWS",
    "COCO_BINS",
    "PAPER_BINS",
]
