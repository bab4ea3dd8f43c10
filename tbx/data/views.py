"""The official annotation views of a split dataset: list files and COCO JSONs (SPEC §1.3).

Given records whose ``split`` is set, :func:`annotation_views` names every official file and the
records it holds, in order; :func:`write_views` writes them all.  Image ids are positional within
each file (1..N in file order), as in the release, so ``cls_result.txt`` line *i* ↔ image id *i*.

Order inside a file (docs/dataset.md §1.3): the order of the release's list file for that view when
one is given (``list_order``, e.g. ``lists/TBX11K_trainval.txt`` of an official release root),
otherwise the official rule (:func:`official_order_key`): by class folder — ``tb/``, ``health/``,
``sick/``, ``test/``, then ``extra/…`` — and by path within a folder.  This is the order of every
published file: ``TBX11K_train.json`` starts ``tb/tb0005.png``, ``TBX11K_trainval.json`` starts
``tb/tb0003.png`` (a val image), i.e. trainval is *not* train followed by val.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

from tbx.data.coco import write_coco
from tbx.data.layout import ANN_JSON, LISTS, all_json_name, tbx_json_name
from tbx.data.records import Record
from tbx.io import atomic_write_text

PARTS = {"train": ("train",), "val": ("val",), "trainval": ("train", "val"), "test": ("test",)}
FOLDER_ORDER = {"tb": 0, "health": 1, "sick": 2, "test": 3, "extra": 4}  # the release's file order


def official_order_key(file_name: str) -> tuple[int, str]:
    """Sort key of the official rule: class folder (tb, health, sick, test, extra, others), then
    the path as a string (the release sorts ``n11 < n3``, not numerically)."""
    head = PurePosixPath(file_name).parts[0] if file_name else ""
    return FOLDER_ORDER.get(head, len(FOLDER_ORDER)), file_name


def _pick(records: list[Record], splits: tuple[str, ...], listed: Sequence[str] | None) -> list[Record]:
    chosen = [r for r in records if r.split in splits]
    if listed is None:
        return sorted(chosen, key=lambda r: official_order_key(r.file_name))
    pos = {fn: i for i, fn in enumerate(listed)}
    # images missing from the list (callers check lists beforehand) go last, in the official order
    return sorted(chosen, key=lambda r: (pos.get(r.file_name, len(pos)), official_order_key(r.file_name)))


def annotation_views(records: list[Record],
                     list_order: Mapping[str, Sequence[str]] | None = None) -> dict[str, list[Record]]:
    """``{"TBX11K_train": [...], "TBX11K_train_only_tb": [...], "all_test": [...], ...}``.

    TBX11K_* views hold TBX11K images only; ``*_only_tb`` keeps TB images with ≥ 1 box (in the
    order of its view); ``all_*`` add the extra datasets.  ``list_order`` maps a view name (e.g.
    ``"TBX11K_trainval"``) to the file names of its list in order; views without one follow the
    official rule (module docstring).  Views that would be empty are omitted.
    """
    order = list_order or {}
    tbx = [r for r in records if r.source == "tbx11k"]
    views: dict[str, list[Record]] = {}
    for name, splits in PARTS.items():
        tbx_name, all_name = tbx_json_name(name)[:-5], all_json_name(name)[:-5]
        main = _pick(tbx, splits, order.get(tbx_name))
        views[tbx_name] = main
        views[tbx_json_name(name, only_tb=True)[:-5]] = [r for r in main if r.is_tb and r.boxes]
        views[all_name] = _pick(records, splits, order.get(all_name))
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


def write_views(root: str | Path, records: list[Record],
                list_order: Mapping[str, Sequence[str]] | None = None) -> list[Path]:
    """Write ``lists/*.txt`` and ``annotations/json/*.json`` for every non-empty view (atomic);
    ``list_order`` as in :func:`annotation_views`."""
    return [p for name, recs in annotation_views(records, list_order).items()
            for p in write_view(root, name, recs)]
