"""The official release round trip (docs/dataset.md §1.3): every regenerated JSON equals the
published one in image order, ids and boxes, trainval included (ordered by class folder, not train
then val).  Reference values are the real published files in ../shared/data/tbx11k-meta."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tbx.data.build import BuildConfig, build_dataset
from tbx.data.records import Record
from tbx.data.validate import validate_dataset
from tbx.data.views import annotation_views
from tbx.errors import TbxError

# Val images of the fixture: names absent from the published train split (tb0003 is the first
# image of the real TBX11K_trainval.json, the example), so train ∪ val interleave per folder.
VAL = [
    "tb/tb0003.png",
    "tb/tb0004.png",
    "health/h0002.png",
    "sick/s0007.png",
    "extra/da+db/val/n1.png",
    "extra/mc+shenzhen/val/CHNCXR_0001_0.png",
]


def _official(shared_data: Path, name: str) -> dict:
    return json.loads((shared_data / "tbx11k-meta" / f"{name}.json").read_text())


def _class_folder_order(names: list[str]) -> list[str]:
    """The release's order, written out independently of tbx: tb, health, sick, then the extra
    folders, each sorted as strings."""
    rank = {"tb": 0, "health": 1, "sick": 2}
    return sorted(names, key=lambda n: (rank.get(n.split("/")[0], 3), n))


def _release(
    tmp_path: Path, shared_data: Path, trainval_lists: bool = True, trainval_order=_class_folder_order
) -> Path:
    """A metadata-only release root made of the real train lists/XMLs plus the VAL fixture."""
    root = tmp_path / "release"
    (root / "lists").mkdir(parents=True)
    train = [i["file_name"] for i in _official(shared_data, "TBX11K_train")["images"]]
    all_train = [i["file_name"] for i in _official(shared_data, "all_train")["images"]]
    assert not set(VAL) & set(all_train)
    val_tbx = [v for v in VAL if not v.startswith("extra/")]
    lists = {"TBX11K_train": train, "all_train": all_train, "TBX11K_val": val_tbx, "all_val": VAL}
    if trainval_lists:
        lists["TBX11K_trainval"] = trainval_order(train + val_tbx)
        lists["all_trainval"] = trainval_order(all_train + VAL)
    for name, files in lists.items():
        (root / "lists" / f"{name}.txt").write_text("".join(f"{f}\n" for f in files))
    shutil.copytree(shared_data / "tbx11k-meta" / "xml", root / "annotations" / "xml")
    return root


def _json(out: Path, name: str) -> dict:
    return json.loads((out / "annotations" / "json" / f"{name}.json").read_text())


def _image_rows(data: dict) -> list[dict]:
    # date_captured is the authors' wall-clock time of writing (not reproducible, not used)
    return [{k: v for k, v in i.items() if k != "date_captured"} for i in data["images"]]


@pytest.mark.parametrize("trainval_lists", [True, False], ids=["lists", "rule"])
def test_release_round_trip_is_exact(tmp_path, shared_data, trainval_lists):
    root = _release(tmp_path, shared_data, trainval_lists)
    out = tmp_path / "out"
    build_dataset(root, out, BuildConfig(no_images=True))
    # the three published files: equal in every image field, every annotation field (bit-exact
    # boxes, areas, ids), categories and licence
    for name in ("TBX11K_train", "TBX11K_train_only_tb", "all_train"):
        off, mine = _official(shared_data, name), _json(out, name)
        assert _image_rows(mine) == _image_rows(off), name
        assert mine["annotations"] == off["annotations"], name
        assert mine["categories"] == off["categories"] and mine["licenses"] == off["licenses"]
        assert [i["id"] for i in mine["images"]] == list(range(1, len(off["images"]) + 1))
    # trainval: class-folder order (the list's, or the official rule without lists)
    train = [i["file_name"] for i in _official(shared_data, "TBX11K_train")["images"]]
    want = _class_folder_order(train + [v for v in VAL if not v.startswith("extra/")])
    tv = _json(out, "TBX11K_trainval")
    assert [i["file_name"] for i in tv["images"]] == want
    assert tv["images"][0]["id"] == 1 and tv["images"][0]["file_name"] == "tb/tb0003.png"
    assert (out / "lists" / "TBX11K_trainval.txt").read_text().split() == want
    all_tv = [i["file_name"] for i in _json(out, "all_trainval")["images"]]
    assert all_tv == _class_folder_order(
        [i["file_name"] for i in _official(shared_data, "all_train")["images"]] + VAL
    )
    # the boxes inside trainval are the published train boxes, re-keyed to the trainval ids
    off = _official(shared_data, "TBX11K_train")
    name_of = {i["id"]: i["file_name"] for i in off["images"]}
    pub = sorted((name_of[a["image_id"]], a["category_id"], a["bbox"], a["area"]) for a in off["annotations"])
    tv_name = {i["id"]: i["file_name"] for i in tv["images"]}
    got = sorted((tv_name[a["image_id"]], a["category_id"], a["bbox"], a["area"]) for a in tv["annotations"])
    assert got == pub
    only = _json(out, "TBX11K_trainval_only_tb")
    assert [i["file_name"] for i in only["images"]] == [
        f for f in want if f.startswith("tb/") and f in {n for n, *_ in pub}
    ]
    # the regenerated folder is consistent (lists = JSON order, trainval = train ∪ val)
    rep = validate_dataset(out)
    assert [f for f in rep.errors if f.check in ("lists", "splits")] == []


def test_release_trainval_follows_its_list(tmp_path, shared_data):
    """A list file is the truth for its view's order, whatever that order is."""

    def reverse(names: list[str]) -> list[str]:
        return list(reversed(names))

    root = _release(tmp_path, shared_data, trainval_order=reverse)
    build_dataset(root, tmp_path / "out", BuildConfig(no_images=True))
    listed = (root / "lists" / "TBX11K_trainval.txt").read_text().split()
    assert [i["file_name"] for i in _json(tmp_path / "out", "TBX11K_trainval")["images"]] == listed


def test_release_trainval_list_must_match_train_and_val(tmp_path, shared_data):
    root = _release(tmp_path, shared_data)
    lp = root / "lists" / "TBX11K_trainval.txt"
    lp.write_text(lp.read_text().replace("tb/tb0003.png\n", ""))
    with pytest.raises(TbxError, match=r"TBX11K_trainval.txt differs .*1 missing, e.g. 'tb/tb0003.png'"):
        build_dataset(root, tmp_path / "out", BuildConfig(no_images=True))
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_views_follow_the_official_rule_without_lists():
    """Raw builds and splits (no list files): every view by class folder, then path as a string."""

    def rec(i: int, fn: str, split: str) -> Record:
        label = {"tb": "tb", "health": "healthy", "sick": "sick"}.get(fn.split("/")[0], "healthy")
        source = "da" if fn.startswith("extra/") else "tbx11k"
        return Record(i, fn, 512, 512, label, "none", source, None, split, [])

    recs = [
        rec(1, "sick/s0002.png", "train"),
        rec(2, "extra/da+db/train/n3.png", "train"),
        rec(3, "health/h0001.png", "val"),
        rec(4, "tb/tb0009.png", "train"),
        rec(5, "extra/da+db/train/n11.png", "train"),
        rec(6, "tb/tb0001.png", "val"),
    ]
    views = annotation_views(recs)
    names = {k: [r.file_name for r in v] for k, v in views.items()}
    assert names["TBX11K_trainval"] == [
        "tb/tb0001.png",
        "tb/tb0009.png",
        "health/h0001.png",
        "sick/s0002.png",
    ]
    assert names["all_train"] == [
        "tb/tb0009.png",
        "sick/s0002.png",
        "extra/da+db/train/n11.png",
        "extra/da+db/train/n3.png",
    ]
    # a given list wins for its view only
    views = annotation_views(
        recs, {"TBX11K_trainval": ["sick/s0002.png", "health/h0001.png", "tb/tb0009.png", "tb/tb0001.png"]}
    )
    assert [r.image_id for r in views["TBX11K_trainval"]] == [1, 3, 4, 6]
    assert [r.image_id for r in views["TBX11K_train"]] == [4, 1]
