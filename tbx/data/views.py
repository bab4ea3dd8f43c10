"""The official annotation views of a split dataset: list files and COCO JSONs (SPEC §1.3).

Given records whose ``split`` is set, :func:`annotation_views` names every official file and the
records it holds, in order; :func:`write_views` writes them all.  Image ids are positional within
each file (1..N in file order), as in the release, so ``cls_result.txt`` line *i* ↔ image id *i*.
"""

from __future__ import annotations

from pathlib import Path

from tbx.data.coco import write_coco
from tbx.data.layout import ANN_JSON, LISTS, all_json_name, tbx_json_name
from tbx.data.records import Record
from tbx.io import atomic_write_text

PARTS = {"train": ("train",), "val": ("val",), "trainval": ("train", "val"), "test": ("test",)}


def _pick(records: list[Record], splits: tuple[str, ...]) -> list[Record]:
    # train before val inside trainval, each in record order
    return [r for s in splits for r in records if r.split == s]


def annotation_views(records: list[Record]) -> dict[str, list[Record]]:
    """``{"TBX11K_train": [...], "TBX11K_train_only_tb": [...], "all_test": [...], ...}``.

    TBX11K_* views hold TBX11K images only; ``*_only_tb`` keeps TB images with ≥ 1 box; ``all_*``
    add the extra datasets.  Views that would be empty are omitted.
    """
    tbx = [r for r in records if r.source == "tbx11k"]
    views: dict[str, list[Record]] = {}
    for name, splits in PARTS.items():
        main = _pick(tbx, splits)
        views[tbx_json_name(name)[:-5]] = main
        views[tbx_json_name(name, only_tb=True)[:-5]] = [r for r in main if r.is_tb and r.boxes]
        views[all_json_name(name)[:-5]] = _pick(records, splits)
    return {k: v for k, v in views.items() if v}


def write_view(root: str | Path, name: str, records: list[Record]) -> list[Path]:
    """Write one view: ``annotations/json/NAME.json`` (positional ids) and, except for
    ``*_only_tb`` views, ``lists/NAME.txt`` (one path relative to ``imgs/`` per line)."""
    root = Path(root)
    path = root / ANN_JSON / f"{name}.json"
    write_coco(path, records, positional_ids=True)
    if name.endswith("_only_tb"):
        return [path]
    lpath = root / LISTS / f"{name}.txt"
    atomic_write_text(lpath, "".join(f"{r.file_name}\n" for r in records))
    return [path, lpath]


def write_views(root: str | Path, records: list[Record]) -> list[Path]:
    """Write ``lists/*.txt`` and ``annotations/json/*.json`` for every non-empty view (atomic)."""
    return [p for name, recs in annotation_views(records).items() for p in write_view(root, name, recs)]
