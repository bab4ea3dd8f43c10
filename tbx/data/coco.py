"""COCO JSON ↔ records (the official TBX11K annotation format, docs/dataset.md §1.3)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from tbx.data.layout import check_relpath_text, label_from_path
from tbx.data.records import CATEGORIES, Box, Record, tb_type_from_categories
from tbx.errors import TbxError
from tbx.io import atomic_write_json

INFO = {
    "contributor": "tbx",
    "description": "TBX11K-layout dataset written by tbx",
    "url": "https://mmcheng.net/tb",
    "version": "1.0",
    "year": 2020,
}
LICENSES = [
    {
        "id": 1,
        "name": "Attribution-NonCommercial-ShareAlike License",
        "url": "http://creativecommons.org/licenses/by-nc-sa/2.0/",
    }
]


def load_json(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise TbxError("annotation file not found", path, "check the path (annotations/json/*.json)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise TbxError(f"invalid JSON: {e.msg}", f"{path}:{e.lineno}", "regenerate the file") from None
    if not isinstance(data, dict) or "images" not in data:
        raise TbxError("not a COCO annotation file (no 'images')", path)
    return data


def records_from_coco(
    data: dict[str, Any], path: str | Path = "<coco>", strict_labels: bool = True
) -> list[Record]:
    """Records in the file's image order; labels from the path rules, TB type from box categories.

    With ``strict_labels=False`` images whose label cannot be derived from the path (``test/``)
    get label ``"unknown"`` instead of raising.
    """
    boxes: dict[int, list[Box]] = {}
    for ann in data.get("annotations", []):
        x, y, w, h = (float(v) for v in ann["bbox"])
        boxes.setdefault(int(ann["image_id"]), []).append(Box(x, y, w, h, int(ann["category_id"])))
    records = []
    for img in data["images"]:
        check_relpath_text(img.get("file_name"), path)  # paths from data files never escape imgs/
        try:
            label, source = label_from_path(img["file_name"])
        except TbxError:
            if strict_labels:
                raise TbxError(
                    f"cannot derive the label of image '{img['file_name']}'",
                    path,
                    "images must live under health/, sick/, tb/ or extra/<group>/",
                ) from None
            label, source = "unknown", "tbx11k"
        bxs = boxes.get(int(img["id"]), [])
        tb_type = tb_type_from_categories(b.category for b in bxs) if label == "tb" else "none"
        records.append(
            Record(
                image_id=int(img["id"]),
                file_name=img["file_name"],
                width=int(img["width"]),
                height=int(img["height"]),
                label=label,
                tb_type=tb_type,
                source=source,
                patient_id=img.get("patient_id"),
                split=img.get("split"),
                boxes=bxs,
            )
        )
    return records


def read_coco(path: str | Path, strict_labels: bool = True) -> list[Record]:
    return records_from_coco(load_json(path), path, strict_labels)


def official_area(w: float, h: float) -> int:
    """``area`` as the release computes it: int of the float32 product of the float32 w and h.

    Equals ``int(w * h)`` for 901 of the 902 boxes of TBX11K_train.json; the exception (tb0862,
    w·h = 59895.9993 in float64, 59896.0 in float32, published 59896) shows the float32 product.
    """
    return int(np.float32(w) * np.float32(h))


def coco_from_records(
    records: list[Record], date_captured: str = "", positional_ids: bool = False
) -> dict[str, Any]:
    """The official COCO dict for ``records`` (order as given, annotation ids 1..N).

    Image ids are the records' own, or 1..N in file order with ``positional_ids`` (the release's
    convention per file, so that line *i* of ``cls_result.txt`` ↔ image id *i*).

    A record's ``patient_id`` (a pseudonymous hash written by ``tbx dataset build``) is kept as an
    extra image key when set; the official files have none.
    """
    images, annotations = [], []
    for pos, r in enumerate(records, start=1):
        image_id = pos if positional_ids else r.image_id
        img = {
            "id": image_id,
            "file_name": r.file_name,
            "width": r.width,
            "height": r.height,
            "date_captured": date_captured,
            "license": 1,
            "coco_url": "",
            "flickr_url": "",
        }
        if r.patient_id is not None:
            img["patient_id"] = r.patient_id
        images.append(img)
        for b in r.boxes:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": b.category,
                    "iscrowd": 0,
                    "area": official_area(b.w, b.h),
                    "bbox": [b.x, b.y, b.w, b.h],
                    "width": r.width,
                    "height": r.height,
                }
            )
    return {
        "info": [INFO],
        "licenses": LICENSES,
        "categories": [dict(c) for c in CATEGORIES],
        "images": images,
        "annotations": annotations,
    }


def write_coco(path: str | Path, records: list[Record], positional_ids: bool = False) -> None:
    """Write records as an official-format COCO JSON (atomic, compact like the release)."""
    atomic_write_json(path, coco_from_records(records, positional_ids=positional_ids), indent=None)
