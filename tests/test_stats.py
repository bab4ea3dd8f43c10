"""`tbx dataset stats` and the generic loader, checked against counts computed independently
(json / ElementTree over the files themselves)."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import pytest

from tbx.data.stats import dataset_stats, original_sizes, stats_of
from tbx.data.views import load_dataset

META = "tbx11k-meta"
TYPE_ROW = {frozenset({1}): "active TB", frozenset({2}): "latent TB", frozenset({1, 2}): "active & latent TB"}


def _json_counts(path: Path) -> tuple[Counter, Counter]:
    """Rows of the docs/dataset.md §1.2 table and boxes per category, straight from a COCO file."""
    data = json.loads(path.read_text())
    cats: dict[int, set[int]] = {}
    boxes = Counter()
    for a in data["annotations"]:
        cats.setdefault(a["image_id"], set()).add(a["category_id"])
        boxes[a["category_id"]] += 1
    rows = Counter()
    for im in data["images"]:
        folder = im["file_name"].split("/")[0]
        if folder == "health":
            rows["healthy"] += 1
        elif folder == "sick":
            rows["sick"] += 1
        elif folder == "tb":
            c = cats.get(im["id"], set())
            rows["uncertain TB" if 3 in c else TYPE_ROW.get(frozenset(c), "TB without box")] += 1
    return rows, boxes


def test_real_metadata_dir(shared_data: Path):
    s = stats_of(shared_data / META)
    assert s["splits"] == ["train"]
    got = {k: v["train"] for k, v in s["classes"].items()}
    assert got == {
        "healthy": 3000,
        "sick": 3000,
        "active TB": 473,
        "latent TB": 103,
        "active & latent TB": 23,
        "uncertain TB": 0,
        "TB without box": 1,
        "total": 6600,
    }
    rows, boxes = _json_counts(shared_data / META / "TBX11K_train.json")
    assert {k: got[k] for k in rows} == dict(rows)
    assert s["boxes"]["active"]["train"] == boxes[1] and s["boxes"]["latent"]["train"] == boxes[2]
    # the extra datasets of all_train.json are reported separately, not in the TBX11K table
    extra = json.loads((shared_data / META / "all_train.json").read_text())
    n_extra = sum(im["file_name"].startswith("extra/") for im in extra["images"])
    assert sum(c["total"] for lab in s["extra"].values() for c in lab.values()) == n_extra == 288


def test_real_tb_without_box_is_tb1199(shared_data: Path):
    recs = load_dataset(shared_data / META / "TBX11K_train.json")
    assert [r.file_name for r in recs if r.label == "tb" and not r.boxes] == ["tb/tb1199.png"]
    assert all(r.split == "train" for r in recs)


def test_real_area_histograms(shared_data: Path):
    """Paper bins at original resolution vs areas computed straight from the VOC XML files."""
    s = stats_of(shared_data / META / "TBX11K_train.json")
    expect = Counter()
    for f in sorted((shared_data / META / "xml").glob("*.xml")):
        for obj in ET.parse(f).getroot().findall("object"):
            bb = obj.find("bndbox")
            w = float(bb.find("xmax").text) - float(bb.find("xmin").text)
            h = float(bb.find("ymax").text) - float(bb.find("ymin").text)
            a = w * h
            expect["<=384^2" if a <= 384**2 else "(384^2,960^2]" if a <= 960**2 else ">960^2"] += 1
    got = s["area_original"]["all"]
    assert {k: got[k] for k in expect} == dict(expect) and got["no original size"] == 0
    # docs/dataset.md §1.1: most TB boxes lie in (384², 960²]
    assert got["(384^2,960^2]"] > sum(expect.values()) / 2
    data = json.loads((shared_data / META / "TBX11K_train.json").read_text())
    coco = Counter(
        "small"
        if a["bbox"][2] * a["bbox"][3] < 32**2
        else "medium"
        if a["bbox"][2] * a["bbox"][3] < 96**2
        else "large"
        for a in data["annotations"]
    )
    assert {k: s["area_512"]["all"][k] for k in coco} == dict(coco)


def test_only_tb_file(shared_data: Path):
    s = stats_of(shared_data / META / "TBX11K_train_only_tb.json")
    assert s["classes"]["total"]["train"] == 599 and s["classes"]["TB without box"]["train"] == 0


def test_synthetic_layout(synth_root: Path):
    """Stats of a synth layout vs counts built from the files on disk (lists + XML)."""
    s = stats_of(synth_root)
    expect: dict[str, Counter] = {}
    box_expect = Counter()
    for split in ("train", "val", "test"):
        for name in (synth_root / "lists" / f"TBX11K_{split}.txt").read_text().split():
            folder, file = name.split("/")
            if folder == "tb":
                root = ET.parse(synth_root / "annotations/xml" / f"{file[:-4]}.xml").getroot()
                names = [o.find("name").text for o in root.findall("object")]
                cats = {
                    {"ActiveTuberculosis": 1, "ObsoletePulmonaryTuberculosis": 2, "PulmonaryTuberculosis": 3}[
                        n
                    ]
                    for n in names
                }
                row = "uncertain TB" if 3 in cats else TYPE_ROW.get(frozenset(cats), "TB without box")
                for n in names:
                    box_expect[(split, n)] += 1
            else:
                row = {"health": "healthy", "sick": "sick"}[folder]
            expect.setdefault(row, Counter())[split] += 1
            expect.setdefault("total", Counter())[split] += 1
    for row, cols in s["classes"].items():
        for split in ("train", "val", "test"):
            assert cols.get(split, 0) == expect.get(row, Counter())[split], (row, split)
    assert s["classes"]["total"]["total"] == 48
    for split in ("train", "val", "test"):
        assert s["boxes"]["active"][split] == box_expect[(split, "ActiveTuberculosis")]
        assert s["boxes"]["latent"][split] == box_expect[(split, "ObsoletePulmonaryTuberculosis")]
        assert s["boxes"]["uncertain"][split] == box_expect[(split, "PulmonaryTuberculosis")]
    # XML frame = image frame (256) → every original area is ≤ 384²
    assert s["area_original"]["all"]["<=384^2"] == s["boxes"]["all"]["total"]


def test_lists_only_and_trainval(tmp_path: Path, synth_root: Path):
    root = tmp_path / "d"
    (root / "lists").mkdir(parents=True)
    shutil.copy(synth_root / "lists/TBX11K_val.txt", root / "lists")
    recs = load_dataset(root)
    names = (synth_root / "lists/TBX11K_val.txt").read_text().split()
    assert [r.file_name for r in recs] == names and {r.split for r in recs} == {"val"}
    js = tmp_path / "j"
    js.mkdir()
    shutil.copy(synth_root / "annotations/json/TBX11K_trainval.json", js)
    recs = load_dataset(js)
    assert {r.split for r in recs} == {None}
    assert dataset_stats(recs)["splits"] == ["unassigned"]
    assert original_sizes(js, recs) == {}


def test_cli_stats_json(cli, synth_root: Path, tmp_path: Path):
    out = tmp_path / "s" / "stats.json"
    code, text, _ = cli("dataset", "stats", synth_root, "--json", out)
    assert code == 0 and "active & latent TB" in text
    data = json.loads(out.read_text())
    assert data["classes"]["total"]["total"] == 48
    assert (out.parent / "stats.provenance.json").is_file()
    before = {p: p.stat().st_mtime_ns for p in synth_root.rglob("*")}
    code, _, _ = cli("dataset", "stats", synth_root)  # without --json nothing is written
    assert code == 0 and {p: p.stat().st_mtime_ns for p in synth_root.rglob("*")} == before


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_cli_stats_errors(cli, tmp_path: Path, make: str):
    target = tmp_path / "nothing"
    if make == "empty":
        target.mkdir()
    code, _, err = cli("dataset", "stats", target)
    assert code == 2 and len(err.strip().splitlines()) == 1 and str(target) in err
