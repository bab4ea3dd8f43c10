"""The records index — the one in-memory shape of a dataset (ARCHITECTURE.md).

Every command reads a dataset into a list of :class:`Record` and writes from it; COCO JSON, VOC XML
and list files are views of it.  Boxes are kept in the frame of the record's image (``width`` ×
``height``), ``(x, y, w, h)`` COCO-style.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field

# Image-level labels and TB types (docs/dataset.md §1.1).  "unknown" = a TB image without any box (the real
# data has one: tb/tb1199.png), whose type therefore cannot be derived.
LABELS = ("healthy", "sick", "tb")
TB_TYPES = ("none", "active", "latent", "active+latent", "uncertain", "unknown")
# the docs/dataset.md §1.2 table row of a TB image of each type ("unknown": a TB image without boxes)
TB_TYPE_ROWS = {
    "active": "active TB",
    "latent": "latent TB",
    "active+latent": "active & latent TB",
    "uncertain": "uncertain TB",
    "unknown": "TB without box",
}
SPLITS = ("train", "val", "test")

# Box categories (docs/dataset.md §1.1): official COCO ids and names.
ACTIVE, LATENT, UNCERTAIN = 1, 2, 3
CATEGORIES = (
    {"id": ACTIVE, "name": "ActiveTuberculosis", "supercategory": "Tuberculosis"},
    {"id": LATENT, "name": "ObsoletePulmonaryTuberculosis", "supercategory": "Tuberculosis"},
    {"id": UNCERTAIN, "name": "PulmonaryTuberculosis", "supercategory": "Tuberculosis"},
)
CATEGORY_BY_NAME = {c["name"]: c["id"] for c in CATEGORIES}
CATEGORY_SHORT = {ACTIVE: "active", LATENT: "latent", UNCERTAIN: "uncertain"}

# Class index used by the classification head and cls_result.txt (docs/protocol.md §4.1): healthy, sick, TB.
CLASS_INDEX = {"healthy": 0, "sick": 1, "tb": 2}


@dataclass(frozen=True)
class Box:
    """A TB area, COCO ``[x, y, w, h]`` in the image's pixel frame, with its category id."""

    x: float
    y: float
    w: float
    h: float
    category: int

    @property
    def xyxy(self) -> tuple[float, float, float, float]:
        return (self.x, self.y, self.x + self.w, self.y + self.h)

    @property
    def area(self) -> float:
        return self.w * self.h


@dataclass
class Record:
    """One image of a dataset.  ``file_name`` is relative to ``imgs/`` (official convention)."""

    image_id: int
    file_name: str
    width: int
    height: int
    label: str  # healthy | sick | tb
    tb_type: str = "none"  # see TB_TYPES
    source: str = "tbx11k"
    patient_id: str | None = None
    split: str | None = None  # train | val | test | None (unassigned)
    boxes: list[Box] = field(default_factory=list)

    @property
    def is_tb(self) -> bool:
        return self.label == "tb"

    @property
    def stratum(self) -> str:
        """The stratification key: class (+ TB type) within a source."""
        base = f"tb:{self.tb_type}" if self.is_tb else self.label
        return base if self.source == "tbx11k" else f"{self.source}:{base}"

    def replace(self, **changes) -> Record:
        """Shallow copy with changed fields (no re-validation; ~10× faster than
        ``dataclasses.replace``, which matters when 11,200 records are copied per view)."""
        unknown = set(changes) - _RECORD_FIELDS
        if unknown:
            raise TypeError(f"Record has no field(s) {sorted(unknown)}")
        new = Record.__new__(Record)
        new.__dict__.update(self.__dict__)
        new.__dict__.update(changes)
        return new


_RECORD_FIELDS = {f.name for f in dataclasses.fields(Record)}


def tb_type_from_categories(categories: Iterable[int]) -> str:
    """TB type of a TB image from its box categories (docs/dataset.md §1.1)."""
    cats = set(categories)
    if not cats:
        return "unknown"
    if UNCERTAIN in cats:
        return "uncertain"
    if cats == {ACTIVE}:
        return "active"
    if cats == {LATENT}:
        return "latent"
    return "active+latent"


def categories_for_tb_type(tb_type: str) -> set[int]:
    """Which box categories a TB type implies (used by the reading study and validation)."""
    return {
        "active": {ACTIVE},
        "latent": {LATENT},
        "active+latent": {ACTIVE, LATENT},
        "uncertain": {UNCERTAIN},
    }.get(tb_type, set())
