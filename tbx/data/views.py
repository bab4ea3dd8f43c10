"""The official annotation views of a split dataset: list files and COCO JSONs (docs/dataset.md §1.3).

Given records whose ``split`` is set, :func:`annotation_views` names every official file and the
records it holds, in order; :func:`write_views` writes them all.  Image ids are positional within
each file (1..N in file order), as in the release, so ``cls_result.txt`` line *i* ↔ image id *i*.

Order inside a file (docs/dataset.md §1.3): the order of the release's list file for that view when
one is given (``list_order``, e.g. ``lists/TBX11K_trainval.txt`` of an official release root),
otherwise the official rule (:func:`official_order_key`): by class folder — ``tb/``, ``health/``,
``sick/``, ``test/``, then ``extra/…`` — and by path within a folder.  This is the order of every
published file: ``TBX11K_train.json`` starts ``tb/tb0005.png``, ``TBX11K_trainval.json`` starts
``tb/tb0003.png`` (a val image), i.e. trainval is *not* train followed by val.

Reading them back, :func:`load_dataset` takes the records of anything that looks like TBX11K
annotations:

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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

from tbx.data.coco import read_coco, write_coco
from tbx.data.layout import (
    ANN_JSON,
    JSON_NAME,
    LIST_NAME,
    LISTS,
    all_json_name,
    label_from_path,
    list_name,
    tbx_json_name,
)
from tbx.data.records import SPLITS, Record
from tbx.errors import TbxError
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


def annotation_views(
    records: list[Record], list_order: Mapping[str, Sequence[str]] | None = None
) -> dict[str, list[Record]]:
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


def write_views(
    root: str | Path, records: list[Record], list_order: Mapping[str, Sequence[str]] | None = None
) -> list[Path]:
    """Write ``lists/*.txt`` and ``annotations/json/*.json`` for every non-empty view (atomic);
    ``list_order`` as in :func:`annotation_views`."""
    return [
        p
        for name, recs in annotation_views(records, list_order).items()
        for p in write_view(root, name, recs)
    ]


# ----------------------------------------------------------------------------------------------
# reading


def split_of_name(name: str) -> str | None:
    """``TBX11K_val_only_tb.json`` → ``"val"``; ``None`` for trainval or unofficial names."""
    m = JSON_NAME.match(name) or LIST_NAME.match(name)
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
        records.append(
            Record(
                image_id=i,
                file_name=name,
                width=0,
                height=0,
                label=label,
                tb_type="unknown" if label == "tb" else "none",
                source=source,
                split=split,
            )
        )
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
        raise TbxError(
            "dataset not found", path, "give a TBX11K layout root, an annotation folder or a COCO JSON file"
        )
    json_dir = path / ANN_JSON if (path / ANN_JSON).is_dir() else path
    list_dir = path / LISTS if (path / LISTS).is_dir() else path
    groups: list[list[Record]] = []

    def read(name: str, split: str | None) -> list[Record]:
        return [r.replace(split=split) for r in read_coco(json_dir / name, strict_labels=False)]

    found_any = False
    for split in SPLITS:
        full = [n for n in (tbx_json_name(split), all_json_name(split)) if (json_dir / n).is_file()]
        lists = [n for n in (list_name(split), list_name(split, "all")) if (list_dir / n).is_file()]
        only_tb = tbx_json_name(split, only_tb=True)
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
        for name in (tbx_json_name("trainval"), all_json_name("trainval"), tbx_json_name("trainval", True)):
            if (json_dir / name).is_file():
                groups.append(read(name, None))
                found_any = True
                break
    if not found_any:
        raise TbxError(
            "no TBX11K annotation files found",
            path,
            "give a layout root (annotations/json/TBX11K_<split>.json), an annotation "
            "folder or one COCO JSON file",
        )
    return _renumber(_union(groups))
