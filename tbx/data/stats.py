"""Dataset statistics (SPEC §1.2 table, box counts, box-area histograms) and the generic loader.

:func:`load_dataset` reads the records of anything that looks like TBX11K annotations:

* a layout root (``ROOT/annotations/json/*.json``, ``ROOT/lists/*.txt``),
* a bare annotation folder such as the real metadata dir (``TBX11K_train.json``,
  ``TBX11K_train_only_tb.json``, ``all_train.json`` at top level),
* one COCO JSON file.

Splits come from the official file names (``TBX11K_<split>[_only_tb].json``, ``all_<split>.json``,
``lists/<prefix>_<split>.txt``).  For each split the full views are read and united by
``file_name`` (``TBX11K_<split>.json`` ∪ ``all_<split>.json``; TBX11K entries first); list files
are used (labels from paths, no boxes, TB type ``unknown``) only for splits without a full JSON,
and ``*_only_tb.json`` only when nothing else describes the split.  A ``*_trainval*`` file is read
only when neither train nor val is available (its images get split ``None``).  A single JSON keeps
the split of its name (``None`` for other names).  Labels always come from the paths
(:func:`tbx.data.layout.label_from_path`); images of ``test/`` (labels withheld) get label
``unknown``.  Image ids are renumbered 1..N over the union (file-level ids repeat across files).

:func:`dataset_stats` summarises records:

* ``classes`` — SPEC §1.2 Table 2 for TBX11K images: rows healthy, sick, active TB, latent TB,
  active & latent TB, uncertain TB, TB without box (a TB image with no box; the real train set has
  one, ``tb/tb1199.png``), unlabelled (only if present) and total; columns = splits + total;
* ``extra`` — images of the extra datasets (DA, DB, Montgomery, Shenzhen) per source × label;
* ``boxes`` — boxes per category (active, latent, uncertain) × split;
* ``area_512`` — COCO-style area bins in the 512 frame of the JSON boxes: small < 32²,
  medium [32², 96²), large ≥ 96² (pycocotools' ``areaRng``);
* ``area_original`` — the paper's bins at the *original* scanner resolution (SPEC §1.1): ≤ 384²,
  (384², 960²], > 960².  An original area is the box's JSON area × (W/w)·(H/h), with W×H the
  original size read from the image's VOC XML ``<size>`` (``annotations/xml/<stem>.xml`` or
  ``xml/<stem>.xml`` beside the JSON); boxes of images without an XML are counted under
  ``"no original size"``.  For a dataset built at 512 (e.g. synthetic), the XML frame is 512, so
  every box falls in ≤ 384².
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Any

from tbx.data.coco import read_coco
from tbx.data.layout import ANN_JSON, ANN_XML, LISTS, label_from_path
from tbx.data.records import (ACTIVE, CATEGORY_SHORT, LATENT, SPLITS, UNCERTAIN, Record,
                              tb_type_from_categories)
from tbx.data.voc import read_voc
from tbx.errors import TbxError

_JSON_NAME = re.compile(r"^(TBX11K|all)_(train|val|trainval|test)(_only_tb)?\.json$")
_LIST_NAME = re.compile(r"^(TBX11K|all)_(train|val|trainval|test)\.txt$")

CLASS_ROWS = ("healthy", "sick", "active TB", "latent TB", "active & latent TB", "uncertain TB",
              "TB without box")
_ROW_OF_TB_TYPE = {"active": "active TB", "latent": "latent TB", "active+latent": "active & latent TB",
                   "uncertain": "uncertain TB", "unknown": "TB without box"}
COCO_BINS = (("small", 0.0, 32.0 ** 2), ("medium", 32.0 ** 2, 96.0 ** 2),
             ("large", 96.0 ** 2, float("inf")))  # [lo, hi) in the 512 frame
PAPER_BINS = (("<=384^2", 0.0, 384.0 ** 2), ("(384^2,960^2]", 384.0 ** 2, 960.0 ** 2),
              (">960^2", 960.0 ** 2, float("inf")))  # (lo, hi] at original resolution, SPEC §1.1
NO_SIZE = "no original size"


# ----------------------------------------------------------------------------------------------
# loading


def split_of_name(name: str) -> str | None:
    """``TBX11K_val_only_tb.json`` → ``"val"``; ``None`` for trainval or unofficial names."""
    m = _JSON_NAME.match(name) or _LIST_NAME.match(name)
    if not m or m.group(2) not in SPLITS:
        return None
    return m.group(2)


def _read_list(path: Path, split: str | None) -> list[Record]:
    records = []
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        name = line.strip()
        if not name:
            continue
        try:
            label, source = label_from_path(name)
        except TbxError:
            label, source = "unknown", "tbx11k"
        records.append(Record(image_id=i, file_name=name, width=0, height=0, label=label,
                              tb_type="unknown" if label == "tb" else "none", source=source,
                              split=split))
    return records


def _union(groups: list[list[Record]]) -> list[Record]:
    seen: set[str] = set()
    out = []
    for recs in groups:
        for r in recs:
            if r.file_name not in seen:
                seen.add(r.file_name)
                out.append(r)
    return out


def _renumber(records: list[Record]) -> list[Record]:
    return [r.replace(image_id=i + 1) for i, r in enumerate(records)]


def load_dataset(path: str | Path) -> list[Record]:
    """Records of a layout root, an annotation folder or one COCO JSON (see the module docstring)."""
    path = Path(path)
    if path.is_file():
        split = split_of_name(path.name)
        return _renumber([r.replace(split=split) for r in read_coco(path, strict_labels=False)])
    if not path.is_dir():
        raise TbxError("dataset not found", path,
                       "give a TBX11K layout root, an annotation folder or a COCO JSON file")
    json_dir = path / ANN_JSON if (path / ANN_JSON).is_dir() else path
    list_dir = path / LISTS if (path / LISTS).is_dir() else path
    groups: list[list[Record]] = []

    def read(name: str, split: str | None) -> list[Record]:
        return [r.replace(split=split) for r in read_coco(json_dir / name, strict_labels=False)]

    found_any = False
    for split in SPLITS:
        full = [n for n in (f"TBX11K_{split}.json", f"all_{split}.json") if (json_dir / n).is_file()]
        lists = [n for n in (f"TBX11K_{split}.txt", f"all_{split}.txt") if (list_dir / n).is_file()]
        only_tb = f"TBX11K_{split}_only_tb.json"
        if full:
            groups += [read(n, split) for n in full]
        elif lists:
            groups += [_read_list(list_dir / n, split) for n in lists]
        elif (json_dir / only_tb).is_file():
            groups.append(read(only_tb, split))
        else:
            continue
        found_any = True
    if not found_any:
        for name in ("TBX11K_trainval.json", "all_trainval.json", "TBX11K_trainval_only_tb.json"):
            if (json_dir / name).is_file():
                groups.append(read(name, None))
                found_any = True
                break
    if not found_any:
        raise TbxError("no TBX11K annotation files found", path,
                       "give a layout root (annotations/json/TBX11K_<split>.json), an annotation "
                       "folder or one COCO JSON file")
    return _renumber(_union(groups))


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
    """The SPEC §1.2 row of a record ("unlabelled" for images without a label); the TB type comes
    from the record's box categories (SPEC §1.1), so a TB image without boxes is "TB without box"."""
    if r.label in ("healthy", "sick"):
        return r.label
    if r.label == "tb":
        return _ROW_OF_TB_TYPE[tb_type_from_categories(b.category for b in r.boxes)]
    return "unlabelled"


def _bin(bins, area: float, right_closed: bool) -> str:
    for name, lo, hi in bins:
        if (lo < area <= hi) if right_closed else (lo <= area < hi):
            return name
    return bins[0][0] if area <= bins[0][1] else bins[-1][0]


def dataset_stats(records: list[Record],
                  sizes: dict[str, tuple[int, int]] | None = None) -> dict[str, Any]:
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


__all__ = ["load_dataset", "dataset_stats", "original_sizes", "stats_of", "class_row", "split_of_name",
           "CLASS_ROWS", "COCO_BINS", "PAPER_BINS"]
